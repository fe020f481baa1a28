/**
 * prefill.ts — owns preparing fresh pages for postcopy in the destination main thread's idle
 * moments.
 *
 * A page that never came in precopy has no recycled page to go to: UFFDIO_COPY allocates,
 * charges and fills a fresh one when it arrives, ~1.1 µs a page here and several times that in
 * memory the host has not backed yet. While the guest runs here, the main thread is often idle,
 * waiting for the source's next batch. Prefill spends those moments allocating fresh pages
 * into the recycler's area (MADV_POPULATE_WRITE, a chunk at a time), so that those pages are
 * later written and moved in like recycled ones.
 *
 * Idle means: no vCPU waits for a page it asked the source for (a chunk would delay that
 * request's answer), and no frame came in since it last looked, one turn of the event loop
 * ago. When frames keep coming (the destination is the bottleneck) it allocates nothing, since
 * allocating ahead and moving in later costs more than UFFDIO_COPY; while a request is out it
 * sleeps until the next frame.
 *
 * How many: never more than the pages still missing minus the recycled ones, so guest RAM and
 * the area together never hold more pages than the guest has. And a missing page may well come
 * as a zero page, which needs no page at all: of those, only the share of data pages among
 * the pages placed since RUN (plus one chunk). A guest whose RAM comes back with data gets
 * them all as soon as the first frames show it; one whose missing RAM is mostly zero gets few.
 * Whatever is left unused is freed at END.
 */
import type { PageRecycler } from './recycle.js';

/** Pages allocated at a time: ~0.1 ms here, the longest a frame waits behind it. */
export const PREFILL_CHUNK = 256;

export interface PrefillOptions {
  /** At most this many pages in all: the pages still missing, less the recycled ones. */
  want: number;
  /** Frames received so far: when it moved since the last look, the thread is busy. */
  activity: () => number;
  /** Whether a vCPU waits for a page it asked the source for. */
  waiting: () => boolean;
  /**
   * Data pages and zero pages placed since RUN: of `want`, only the data pages' share (plus
   * one chunk) is allocated.
   */
  dataPages: () => number;
  zeroPages: () => number;
  /** Pages a step allocates (default PREFILL_CHUNK). */
  chunk?: number;
}

export class Prefill {
  private readonly rec: PageRecycler;
  private readonly opts: PrefillOptions;
  private readonly chunk: number;
  /** Pages to allocate at most (PrefillOptions.want), and allocated so far. */
  private readonly want: number;
  private allocated = 0;
  private seen = -1;
  private stopped = false;
  /** Asleep until the next `poke`. */
  private parked = true;

  /** Allocates fresh pages into `rec` in quiet turns of the event loop (see the header). */
  constructor(rec: PageRecycler, opts: PrefillOptions) {
    this.rec = rec;
    this.opts = opts;
    this.want = opts.want;
    this.chunk = opts.chunk ?? PREFILL_CHUNK;
  }

  /** Pages still to allocate at most. */
  get pending(): number {
    return this.stopped ? 0 : Math.max(0, this.want - this.allocated);
  }

  start(): void {
    this.seen = this.opts.activity();
    this.poke();
  }

  /** Something came in (a frame, a requested page): look again after this turn's I/O. */
  poke(): void {
    if (!this.parked || this.pending === 0) return;
    this.parked = false;
    setImmediate(this.step);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Pages worth allocating in all, from what came since RUN (see the header). */
  private budget(): number {
    const data = this.opts.dataPages();
    const seen = data + this.opts.zeroPages();
    return (seen === 0 ? 0 : Math.ceil((this.want * data) / seen)) + this.chunk;
  }

  private readonly step = (): void => {
    if (this.pending === 0) return;
    const allowed = Math.min(this.chunk, this.pending, this.budget() - this.allocated);
    if (allowed <= 0 || this.opts.waiting()) {
      this.parked = true;
      return;
    }
    const now = this.opts.activity();
    if (now !== this.seen) {
      // Busy: look again after the next turn's I/O.
      this.seen = now;
      setImmediate(this.step);
      return;
    }
    const n = this.rec.populate(allowed);
    if (n === 0) {
      this.stopped = true; // the area is full or the kernel refused: UFFDIO_COPY as before
      return;
    }
    this.allocated += n;
    setImmediate(this.step);
  };
}
