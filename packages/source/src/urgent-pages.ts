/**
 * urgent-pages.ts — owns what the source sends on the preempt channel for one page request:
 * the requested pages at once, each as its own small frame, then a prefetch window of the next
 * pages not sent yet. It runs on the preempt thread (preempt-worker.ts), reads guest RAM (the
 * guest is stopped on the source during postcopy, so it does not change) and the main thread's
 * bitmaps through shared memory, and reports which pages it sent.
 *
 * A page already sent on the main channel is sent again when requested: it may sit behind
 * megabytes of bulk data there, and the destination drops whichever copy comes second.
 */
import { MsgType, type Message } from '@livemig/protocol';
import { zeroPage } from './page-sender.js';
import { PageBitmap } from './page-bitmap.js';

/**
 * Prefetch window on the preempt channel, in pages: none after a jump; 128 KiB once a request
 * follows the last one, doubling while they keep following, up to 2 MiB. (Measured on the
 * 1 GiB sweep, when this ran on the main thread: no prefetch 11 500 requests and 1.19 s
 * blocktime; 32–512 pages 7 000 and 0.87 s. With the preempt thread, starting at 0 instead
 * of 32 after a jump took the random-access guest's request p50 from 255–277 to 179–180 µs
 * and the sweep's blocktime from 502–525 to 406–483 ms: after a jump the prefetched pages
 * are mostly not wanted, and the next request waits behind their placement.)
 */
export const PREFETCH_MIN = 32;
export const PREFETCH_MAX = 512;
/** Largest PAGE_RUN on the preempt channel, in pages (64 KiB of 4 KiB pages). */
export const URGENT_FRAME_PAGES = 16;

/** What the preempt thread knows of a block. */
export interface UrgentBlock {
  name: string;
  pageSize: number;
  pages: number;
  /** Zero-copy view of the source guest's RAM. */
  buffer: Buffer;
  /**
   * The main thread's flags, one byte a page (1 = set), read here only: "may hold data" (a
   * page never populated is zero without reading it) and "still to send on the main channel".
   */
  populated: Uint8Array;
  dirty: Uint8Array;
}

/** Where frames go: the preempt channel (a Channel has this shape). */
export interface FrameSink {
  cork(): void;
  uncork(): void;
  send(msg: Message, payload?: Buffer): void;
}

export interface UrgentStats {
  /** Pages sent on the preempt channel (requested and prefetched). */
  pages: number;
  /** Page data bytes sent on it (zero pages travel without data). */
  bytes: number;
}

export class UrgentPages {
  readonly stats: UrgentStats = { pages: 0, bytes: 0 };
  private readonly blocks: UrgentBlock[];
  private readonly out: FrameSink;
  /** Per block: pages sent on this connection. */
  private readonly sent: PageBitmap[];
  /** The last prefetch window, in pages (0: none, after a jump). */
  private prefetchWindow = 0;
  private last = { block: -1, end: 0 };

  constructor(blocks: UrgentBlock[], out: FrameSink) {
    this.blocks = blocks;
    this.out = out;
    this.sent = blocks.map((b) => new PageBitmap(b.pages));
  }

  /**
   * Serves a request for pages [first, end) of block `bi`; calls `sent(bi, p, q)` for each
   * range it sent. A page already sent on this channel is on its way, ahead of anything sent
   * now: asking again only means the guest outran it.
   */
  serve(bi: number, first: number, end: number, sent: (bi: number, first: number, end: number) => void): void {
    const done = this.sent[bi]!;
    let p = first;
    while (p < end && done.test(p)) p++;
    if (p < end) {
      this.send(bi, p, end);
      sent(bi, p, end);
    }
    this.prefetch(bi, first, end, sent);
  }

  /**
   * After an urgent page, the next pages still unsent go too while the guest's requests
   * follow each other (a sequential walk: its next faults would be for those pages), in a
   * window that doubles as long as they do; a jump elsewhere ends it. The background stream on
   * the main channel has a deep queue and would bring them too late. A request "follows" when
   * it starts within the last window or up to PREFETCH_MAX pages after it.
   */
  private prefetch(bi: number, first: number, from: number, sent: (bi: number, first: number, end: number) => void): void {
    const last = this.last;
    const sequential = last.block === bi && first >= last.end - this.prefetchWindow && first < last.end + PREFETCH_MAX;
    this.prefetchWindow = sequential ? Math.min(PREFETCH_MAX, Math.max(PREFETCH_MIN, this.prefetchWindow * 2)) : 0;
    const b = this.blocks[bi]!;
    const done = this.sent[bi]!;
    const limit = Math.min(b.pages, from + this.prefetchWindow);
    let end = from;
    let p = from;
    while (p < limit) {
      // Still to send on the main channel, and not sent here yet.
      while (p < limit && (b.dirty[p] !== 1 || done.test(p))) p++;
      let q = p;
      while (q < limit && b.dirty[q] === 1 && !done.test(q)) q++;
      if (q > p) {
        this.send(bi, p, q);
        sent(bi, p, q);
        end = q;
      }
      p = q;
    }
    this.last = { block: bi, end: Math.max(end, from) };
  }

  /** Sends pages [first, end) of block `bi` now: zero runs without data, the rest in small frames. */
  private send(bi: number, first: number, end: number): void {
    const b = this.blocks[bi]!;
    const ps = b.pageSize;
    const zero = zeroPage(ps);
    const isZero = (p: number): boolean => b.populated[p] !== 1 || zero.compare(b.buffer, p * ps, (p + 1) * ps) === 0;
    this.out.cork();
    try {
      let p = first;
      while (p < end) {
        const z = isZero(p);
        let q = p + 1;
        while (q < end && isZero(q) === z) q++;
        if (z) this.out.send({ type: MsgType.ZERO, block: b.name, pageSize: ps, runs: [[p * ps, q - p]] });
        else {
          // Small frames: the destination places a frame once all of it has arrived, and the
          // guest may already wait for the first pages of a prefetch window.
          for (let a = p; a < q; a += URGENT_FRAME_PAGES) {
            const e = Math.min(q, a + URGENT_FRAME_PAGES);
            this.out.send({ type: MsgType.PAGE_RUN, block: b.name, pageSize: ps, offset: a * ps, count: e - a }, b.buffer.subarray(a * ps, e * ps));
          }
          this.stats.bytes += (q - p) * ps;
        }
        this.stats.pages += q - p;
        p = q;
      }
    } finally {
      this.out.uncork();
    }
    this.sent[bi]!.setRange(first, end);
  }
}
