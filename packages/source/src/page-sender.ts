/**
 * page-sender.ts — owns putting pages on the wire: a page range of a block becomes PAGE_RUN
 * frames (header + the guest memory itself as payload, not copied) for runs of data pages,
 * PAGES frames (the pages copied into one buffer) for short scattered runs, TRIMMED_RUN
 * frames for runs of pages that end in zeros (each page without its zero tail, when that
 * leaves at most half of it), and ZERO run frames (no payload) for zero pages, honouring the
 * rate limiter and socket backpressure. Pages the kernel said were never populated when the
 * migration began (and not written since) are zero without being read — reading them would
 * fault in the zero page, one fault each; the others are measured (`keptUnits`: one read for
 * a page whose last bytes are not zero).
 */
import { MsgType, TRIM_UNIT, MAX_TRIMMED_RUN_BYTES, keptUnits, writeTrimmedRun } from '@livemig/protocol';
import type { Channel } from '@livemig/transport';
import type { PageBitmap } from './page-bitmap.js';
import type { RateLimiter } from './rate-limiter.js';

/** The part of a RAM block the sender needs. */
export interface SendBlock {
  name: string;
  pageSize: number;
  pages: number;
  /** Zero-copy Buffer over the whole block. */
  buffer: Buffer;
  /** Pages that may hold data: populated when the migration began, or written since. */
  populated: PageBitmap;
}

export interface SendStats {
  pagesNormal: number;
  pagesZero: number;
  /** Page payload bytes (a trimmed page counts whole). */
  dataBytes: number;
  /** Data pages sent trimmed (TRIMMED_RUN), part of pagesNormal. */
  pagesTrimmed: number;
  /** Payload bytes of the TRIMMED_RUN frames (tables and kept bytes). */
  trimmedBytes: number;
}

export interface PageSenderOptions {
  /**
   * Send pages that end in zeros without them (TRIMMED_RUN) when that leaves at most half of
   * the page. Default true; false sends every data page whole.
   */
  trim?: boolean;
}

/** Largest PAGE_RUN payload and ZERO frame span. */
const MAX_RUN_BYTES = 1024 * 1024;
const MAX_ZERO_RUNS = 1024;
/** Data runs shorter than this many pages go into a PAGES frame with other short runs. */
const SPARSE_RUN = 8;
/** Most pages in one PAGES frame. */
const MAX_SPARSE = 256;
/** Largest PAGES payload, well under the protocol's frame limit (16 MiB). */
const MAX_SPARSE_BYTES = 2 * 1024 * 1024;
/** Full-size PAGES buffers kept for reuse (4 KiB pages: 1 MiB each). */
const SPARE_BUFFERS = 8;
/** Most pages in one TRIMMED_RUN frame. */
const MAX_TRIMMED = 256;
/** Page data gathered under cork before it is let go (see flushIfLarge). */
const FLUSH_BYTES = 1024 * 1024;

const zeroPages = new Map<number, Buffer>();
/** A shared all-zero page of `pageSize` bytes, to compare pages with. */
export function zeroPage(pageSize: number): Buffer {
  let z = zeroPages.get(pageSize);
  if (!z) {
    z = Buffer.alloc(pageSize);
    zeroPages.set(pageSize, z);
  }
  return z;
}

export class PageSender {
  private corkedBytes = 0;

  /**
   * Lets corked data go once FLUSH_BYTES have gathered: zero runs and small frames still
   * share a writev, but page data does not wait for the end of a large batch (the
   * destination starts placing it sooner).
   */
  private flushIfLarge(bytes: number): void {
    this.corkedBytes += bytes;
    if (this.corkedBytes < FLUSH_BYTES) return;
    this.corkedBytes = 0;
    this.ch.uncork();
    this.ch.cork();
  }

  /** Whether the current range obeys the rate limiter (requested pages do not). */
  private paced = true;

  /** Waits for the rate limiter; what is corked leaves first, so a limited stream stays smooth. */
  private async pace(bytes: number): Promise<void> {
    if (!this.paced || this.limiter.limit <= 0) return;
    this.ch.uncork();
    try {
      await this.limiter.take(bytes);
    } finally {
      this.ch.cork();
    }
  }

  /** Lets the corked frames go and waits for the socket to drain, then corks again. */
  private async drain(): Promise<void> {
    this.corkedBytes = 0;
    this.ch.uncork();
    try {
      await this.ch.drained();
    } finally {
      this.ch.cork();
    }
  }

  /**
   * Full-size PAGES buffers the kernel has taken, to be filled again. A fresh buffer's memory
   * is first touched as the pages are copied in, which costs a page fault per 4 KiB (several
   * times the copy here, see DESIGN.md); a reused one's is not.
   */
  private readonly spare: Buffer[] = [];

  /**
   * A buffer for a PAGES batch: a spare full-size one, else a new one, full-size unless the
   * range can bring only `need` bytes (a single requested page does not cost a full batch).
   */
  private takeSparse(fullBytes: number, need: number): Buffer {
    const b = this.spare.pop();
    if (b && b.length === fullBytes) return b;
    return Buffer.allocUnsafeSlow(Math.min(fullBytes, need));
  }

  private giveBack(b: Buffer, err?: Error | null): void {
    if (!err && this.spare.length < SPARE_BUFFERS) this.spare.push(b);
  }

  readonly stats: SendStats = { pagesNormal: 0, pagesZero: 0, dataBytes: 0, pagesTrimmed: 0, trimmedBytes: 0 };
  private ch: Channel;
  private readonly limiter: RateLimiter;
  private readonly trim: boolean;
  /** Kept units of the pages of the trimmed run being classified. */
  private readonly kept = new Uint16Array(MAX_TRIMMED);

  constructor(ch: Channel, limiter: RateLimiter, opts: PageSenderOptions = {}) {
    this.ch = ch;
    this.limiter = limiter;
    this.trim = opts.trim ?? true;
  }

  /** Sends on `ch` from now on (postcopy recovery replaced the channel); the figures go on. */
  rebind(ch: Channel): void {
    this.ch = ch;
    this.corkedBytes = 0;
  }



  /**
   * Sends pages [first, first + count) of `block`, reading them now. Returns the payload
   * bytes sent. `paced: false`: the rate limit does not apply (pages a vCPU waits for).
   */
  async sendRange(block: SendBlock, first: number, count: number, opts: { paced?: boolean } = {}): Promise<number> {
    // All frames of the range leave in one writev; backpressure waits uncork first.
    this.ch.cork();
    this.paced = opts.paced ?? true;
    try {
      return await this.sendRangeCorked(block, first, count);
    } finally {
      this.paced = true;
      this.ch.uncork();
    }
  }

  private async sendRangeCorked(block: SendBlock, first: number, count: number): Promise<number> {
    const ps = block.pageSize;
    const buf = block.buffer;
    const zero = zeroPage(ps);
    const maxRun = Math.max(1, Math.floor(MAX_RUN_BYTES / ps));
    const end = first + count;
    const populated = block.populated;
    let sent = 0;
    const zeroRuns: Array<[number, number]> = [];
    // Short data runs are gathered into one PAGES frame (offsets + the pages themselves),
    // copied into one buffer: a Buffer view and a socket write per page (and the garbage they
    // make) cost more than copying 4 KiB.
    const sparseOffsets: number[] = [];
    let sparse: Buffer | null = null;
    // Pages of 1 MiB or more (hugetlb) go as runs, without a copy: a few of them fill a frame.
    const sparseFits = ps * (MAX_SPARSE + SPARSE_RUN) <= MAX_SPARSE_BYTES;
    // A full batch: flushed at MAX_SPARSE pages or more, so at most MAX_SPARSE - 1 + SPARSE_RUN - 1.
    const fullBytes = (MAX_SPARSE + SPARSE_RUN - 2) * ps;

    const flushZero = async (): Promise<void> => {
      if (zeroRuns.length === 0) return;
      let n = 0;
      for (const r of zeroRuns) n += r[1];
      this.stats.pagesZero += n;
      const ok = this.ch.send({ type: MsgType.ZERO, block: block.name, pageSize: ps, runs: zeroRuns.splice(0) });
      if (!ok) await this.drain();
    };
    const flushSparse = async (): Promise<void> => {
      const n = sparseOffsets.length;
      if (n === 0) return;
      const bytes = n * ps;
      await this.pace(bytes);
      // The buffer goes to the socket as it is (written later): the next batch takes another
      // one, and a full-size one comes back to the pool once the kernel has taken it.
      const full = sparse!;
      const payload = full.subarray(0, bytes);
      sparse = null;
      const back = full.length === fullBytes ? (err?: Error | null) => this.giveBack(full, err) : undefined;
      const ok = this.ch.send({ type: MsgType.PAGES, block: block.name, pageSize: ps, offsets: sparseOffsets.splice(0) }, payload, back);
      this.stats.pagesNormal += n;
      this.stats.dataBytes += bytes;
      sent += bytes;
      if (!ok) await this.drain();
      else this.flushIfLarge(bytes);
    };
    const sendRun = async (from: number, to: number): Promise<void> => {
      if (to - from < SPARSE_RUN && sparseFits) {
        sparse ??= this.takeSparse(fullBytes, (end - from) * ps);
        buf.copy(sparse, sparseOffsets.length * ps, from * ps, to * ps);
        for (let p = from; p < to; p++) sparseOffsets.push(p * ps);
        if (sparseOffsets.length >= MAX_SPARSE) await flushSparse();
        return;
      }
      for (let a = from; a < to; a += maxRun) {
        const b = Math.min(to, a + maxRun);
        const bytes = (b - a) * ps;
        await this.pace(bytes);
        const ok = this.ch.send({ type: MsgType.PAGE_RUN, block: block.name, pageSize: ps, offset: a * ps, count: b - a }, buf.subarray(a * ps, b * ps));
        this.stats.pagesNormal += b - a;
        this.stats.dataBytes += bytes;
        sent += bytes;
        if (!ok) await this.drain();
        else this.flushIfLarge(bytes);
      }
    };
    // Trimmed pages: one TRIMMED_RUN per run, at most MAX_TRIMMED pages (and 4 MiB) each.
    const maxTrimmed = Math.min(MAX_TRIMMED, Math.floor(MAX_TRIMMED_RUN_BYTES / ps));
    const trimFits = this.trim && ps <= MAX_TRIMMED_RUN_BYTES && 2 * maxTrimmed + (maxTrimmed * ps) / 2 <= fullBytes;
    const units = ps / TRIM_UNIT;
    const sendTrimmed = async (from: number, to: number): Promise<void> => {
      const n = to - from;
      let keptBytes = 0;
      for (let i = 0; i < n; i++) keptBytes += this.kept[i]! * TRIM_UNIT;
      const bytes = 2 * n + keptBytes;
      // Copied before any wait: the kept lengths were measured just now (this.kept is reused).
      const full = this.takeSparse(fullBytes, bytes);
      writeTrimmedRun(full, 0, buf, from * ps, ps, this.kept, n);
      await this.pace(bytes);
      const back = full.length === fullBytes ? (err?: Error | null) => this.giveBack(full, err) : undefined;
      const ok = this.ch.send({ type: MsgType.TRIMMED_RUN, block: block.name, pageSize: ps, offset: from * ps, count: n }, full.subarray(0, bytes), back);
      this.stats.pagesNormal += n;
      this.stats.pagesTrimmed += n;
      this.stats.dataBytes += n * ps;
      this.stats.trimmedBytes += bytes;
      sent += n * ps;
      if (!ok) await this.drain();
      else this.flushIfLarge(bytes);
    };
    /** Page kinds while classifying: zero, data sent whole, data sent trimmed. */
    const ZERO = 0;
    const WHOLE = 1;
    const TRIMMED = 2;
    const kindOf = (k: number): number => (k === 0 ? ZERO : 2 * k > units ? WHOLE : TRIMMED);
    // Units to keep of page q; without trimming, zero or the whole page.
    const measure = trimFits ? (q: number): number => keptUnits(buf, q * ps, ps) : (q: number): number => (zero.compare(buf, q * ps, (q + 1) * ps) === 0 ? 0 : units);

    const addZero = async (from: number, to: number): Promise<void> => {
      const last = zeroRuns[zeroRuns.length - 1];
      if (last && last[0] + last[1] * ps === from * ps) last[1] += to - from;
      else zeroRuns.push([from * ps, to - from]);
      if (zeroRuns.length >= MAX_ZERO_RUNS) await flushZero();
    };

    let p = first;
    while (p < end) {
      if (!populated.test(p)) {
        // Never populated: zero without reading it.
        const q = populated.nextSet(p, end);
        await addZero(p, q);
        p = q;
        continue;
      }
      // Populated: classify page by page until the next never-populated page.
      const limit = populated.nextClear(p, end);
      while (p < limit) {
        let k = measure(p);
        const kind = kindOf(k);
        let q = p;
        for (;;) {
          if (kind === TRIMMED) this.kept[q - p] = k;
          q++;
          if (q >= limit || (kind === TRIMMED && q - p >= maxTrimmed)) break;
          k = measure(q);
          if (kindOf(k) !== kind) break;
        }
        if (kind === ZERO) await addZero(p, q);
        else if (kind === WHOLE) await sendRun(p, q);
        else await sendTrimmed(p, q);
        p = q;
      }
    }
    await flushSparse();
    await flushZero();
    return sent;
  }
}
