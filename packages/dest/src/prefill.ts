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
 * sleeps until the next frame. It never allocates more than the pages still missing minus the
 * recycled ones, so guest RAM and the area together never hold more pages than the guest has;
 * the area is freed at END.
 */
import type { PageRecycler } from './recycle.js';

/** Pages allocated at a time: ~0.1 ms here, the longest a frame waits behind it. */
export const PREFILL_CHUNK = 256;

export class Prefill {
  private readonly rec: PageRecycler;
  private readonly activity: () => number;
  private readonly waiting: () => boolean;
  private readonly chunk: number;
  private want: number;
  private seen = -1;
  private stopped = false;
  /** Asleep until the next `poke`. */
  private parked = true;

  /**
   * Allocates up to `want` fresh pages into `rec` while `activity()` (frames received so far)
   * stays the same from one turn of the event loop to the next and `waiting()` (a vCPU waits
   * for a requested page) is false.
   */
  constructor(rec: PageRecycler, want: number, activity: () => number, waiting: () => boolean, chunk = PREFILL_CHUNK) {
    this.rec = rec;
    this.want = want;
    this.activity = activity;
    this.waiting = waiting;
    this.chunk = chunk;
  }

  /** Pages still to allocate. */
  get pending(): number {
    return this.stopped ? 0 : Math.max(0, this.want);
  }

  start(): void {
    this.seen = this.activity();
    this.poke();
  }

  /** Something came in (a frame, a requested page): look again after this turn's I/O. */
  poke(): void {
    if (!this.parked || this.stopped || this.want <= 0) return;
    this.parked = false;
    setImmediate(this.step);
  }

  stop(): void {
    this.stopped = true;
  }

  private readonly step = (): void => {
    if (this.stopped || this.want <= 0) return;
    if (this.waiting()) {
      this.parked = true;
      return;
    }
    const now = this.activity();
    if (now !== this.seen) {
      // Busy: look again after the next turn's I/O.
      this.seen = now;
      setImmediate(this.step);
      return;
    }
    const n = this.rec.populate(Math.min(this.chunk, this.want));
    if (n === 0) {
      this.stopped = true; // the area is full or the kernel refused: UFFDIO_COPY as before
      return;
    }
    this.want -= n;
    setImmediate(this.step);
  };
}
