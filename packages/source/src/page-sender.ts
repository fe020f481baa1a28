/**
 * page-sender.ts — owns putting pages on the wire: a page range of a block becomes PAGE_RUN
 * frames (header + the guest memory itself as payload, never copied) for data pages and ZERO
 * run frames (no payload) for zero pages, honouring the rate limiter and socket backpressure.
 */
import { MsgType } from '@livemig/protocol';
import type { Channel } from '@livemig/transport';
import type { RateLimiter } from './rate-limiter.js';

/** The part of a RAM block the sender needs. */
export interface SendBlock {
  name: string;
  pageSize: number;
  pages: number;
  /** Zero-copy Buffer over the whole block. */
  buffer: Buffer;
}

export interface SendStats {
  pagesNormal: number;
  pagesZero: number;
  /** Page payload bytes. */
  dataBytes: number;
}

/** Largest PAGE_RUN payload and ZERO frame span. */
const MAX_RUN_BYTES = 1024 * 1024;
const MAX_ZERO_RUNS = 1024;

const zeroPages = new Map<number, Buffer>();
function zeroPage(pageSize: number): Buffer {
  let z = zeroPages.get(pageSize);
  if (!z) {
    z = Buffer.alloc(pageSize);
    zeroPages.set(pageSize, z);
  }
  return z;
}

export class PageSender {
  readonly stats: SendStats = { pagesNormal: 0, pagesZero: 0, dataBytes: 0 };
  private readonly ch: Channel;
  private readonly limiter: RateLimiter;

  constructor(ch: Channel, limiter: RateLimiter) {
    this.ch = ch;
    this.limiter = limiter;
  }

  /**
   * Sends pages [first, first + count) of `block`, reading them now. Returns the payload
   * bytes sent.
   */
  async sendRange(block: SendBlock, first: number, count: number): Promise<number> {
    const ps = block.pageSize;
    const buf = block.buffer;
    const zero = zeroPage(ps);
    const maxRun = Math.max(1, Math.floor(MAX_RUN_BYTES / ps));
    const end = first + count;
    let sent = 0;
    let dataStart = -1;
    let zeroRuns: Array<[number, number]> = [];
    let zeroStart = -1;

    const flushZero = async (): Promise<void> => {
      if (zeroStart >= 0) {
        zeroRuns.push([zeroStart * ps, pZero - zeroStart]);
        zeroStart = -1;
      }
      if (zeroRuns.length === 0) return;
      let n = 0;
      for (const r of zeroRuns) n += r[1];
      this.stats.pagesZero += n;
      const ok = this.ch.send({ type: MsgType.ZERO, block: block.name, pageSize: ps, runs: zeroRuns });
      zeroRuns = [];
      if (!ok) await this.ch.drained();
    };
    let pZero = 0;

    const flushData = async (to: number): Promise<void> => {
      if (dataStart < 0) return;
      const n = to - dataStart;
      const bytes = n * ps;
      await this.limiter.take(bytes);
      const ok = this.ch.send(
        { type: MsgType.PAGE_RUN, block: block.name, pageSize: ps, offset: dataStart * ps, count: n },
        buf.subarray(dataStart * ps, to * ps),
      );
      this.stats.pagesNormal += n;
      this.stats.dataBytes += bytes;
      sent += bytes;
      dataStart = -1;
      if (!ok) await this.ch.drained();
    };

    for (let p = first; p < end; p++) {
      const off = p * ps;
      if (zero.compare(buf, off, off + ps) === 0) {
        if (dataStart >= 0) await flushData(p);
        if (zeroStart < 0) zeroStart = p;
      } else {
        if (zeroStart >= 0) {
          zeroRuns.push([zeroStart * ps, p - zeroStart]);
          zeroStart = -1;
          if (zeroRuns.length >= MAX_ZERO_RUNS) {
            pZero = p;
            await flushZero();
          }
        }
        if (dataStart < 0) dataStart = p;
        else if (p - dataStart >= maxRun) {
          await flushData(p);
          dataStart = p;
        }
      }
    }
    await flushData(end);
    pZero = end;
    await flushZero();
    return sent;
  }
}
