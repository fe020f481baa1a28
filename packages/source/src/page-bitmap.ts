/**
 * page-bitmap.ts — owns a block's per-page flags (one byte a page, so marking and testing
 * are single array accesses) with a running count and run iteration. Used for "dirty: must
 * be (re)sent" on the source.
 *
 * A bitmap made `shared` keeps its flags in a SharedArrayBuffer, so the preempt thread can read
 * them (`shared`, as raw flags) while the main thread changes them; only the owner writes.
 */
export class PageBitmap {
  readonly pages: number;
  private readonly bits: Uint8Array;
  private setCount = 0;

  constructor(pages: number, initial = false, opts: { shared?: boolean } = {}) {
    this.pages = pages;
    this.bits = new Uint8Array(opts.shared ? new SharedArrayBuffer(pages) : new ArrayBuffer(pages));
    if (initial) {
      this.bits.fill(1);
      this.setCount = pages;
    }
  }

  /** The shared memory holding the flags of a `shared` bitmap, to hand to another thread. */
  get shared(): SharedArrayBuffer {
    if (!(this.bits.buffer instanceof SharedArrayBuffer)) throw new Error('PageBitmap: not made shared');
    return this.bits.buffer;
  }

  /** The raw flags, one byte a page (1 = set). Read-only for callers. */
  get bytes(): Uint8Array {
    return this.bits;
  }

  /**
   * Calls `cb(first, end)` for each maximal run of pages set in both this bitmap and `other`
   * (same size). Skips four pages at a time where either is clear.
   */
  forEachRunAnd(other: PageBitmap, cb: (first: number, end: number) => void): void {
    this.forEachRunAndIn(other, 0, this.pages, cb);
  }

  /**
   * As `forEachRunAnd`, within pages [first, end) only: for a few short ranges, where a scan
   * of the whole bitmap would cost more than the ranges hold. Runs end at `end`.
   */
  forEachRunAndIn(other: PageBitmap, first: number, end: number, cb: (first: number, end: number) => void): void {
    if (!(Number.isInteger(first) && Number.isInteger(end) && 0 <= first && first <= end && end <= this.pages)) {
      throw new RangeError(`PageBitmap: pages [${first}, ${end}) outside 0..${this.pages}`);
    }
    const a = this.bits;
    const b = other.bits;
    let runStart = -1;
    const page = (p: number): void => {
      if (a[p]! & b[p]!) {
        if (runStart < 0) runStart = p;
      } else if (runStart >= 0) {
        cb(runStart, p);
        runStart = -1;
      }
    };
    // Whole words of four pages from the first one at or after `first` to the last before `end`.
    const wordTo = end >> 2;
    const wordFrom = Math.min((first + 3) >> 2, wordTo);
    let p = first;
    for (; p < wordFrom << 2; p++) page(p);
    if (wordTo > wordFrom) {
      const a32 = new Uint32Array(a.buffer, a.byteOffset, wordTo);
      const b32 = new Uint32Array(b.buffer, b.byteOffset, wordTo);
      for (let w = wordFrom; w < wordTo; w++) {
        const x = a32[w]! & b32[w]!;
        if (x === 0) {
          if (runStart >= 0) {
            cb(runStart, w << 2);
            runStart = -1;
          }
          continue;
        }
        if (x === 0x01010101) {
          if (runStart < 0) runStart = w << 2;
          continue;
        }
        for (let q = w << 2; q < (w << 2) + 4; q++) page(q);
      }
      p = wordTo << 2;
    }
    for (; p < end; p++) page(p);
    if (runStart >= 0) cb(runStart, end);
  }

  /** A new bitmap with the pages set in this one or in `other` (same size). */
  union(other: PageBitmap, opts: { shared?: boolean } = {}): PageBitmap {
    const u = new PageBitmap(this.pages, false, opts);
    const a = this.bits;
    const b = other.bits;
    for (let p = 0; p < this.pages; p++) if (a[p]! | b[p]!) u.set(p);
    return u;
  }

  get count(): number {
    return this.setCount;
  }

  test(page: number): boolean {
    return this.bits[page] === 1;
  }

  set(page: number): void {
    if (this.bits[page] === 0) {
      this.bits[page] = 1;
      this.setCount++;
    }
  }

  clear(page: number): void {
    if (this.bits[page] === 1) {
      this.bits[page] = 0;
      this.setCount--;
    }
  }

  /** Marks [first, end). */
  setRange(first: number, end: number): void {
    const b = this.bits;
    for (let p = first; p < end; p++) {
      if (b[p] === 0) {
        b[p] = 1;
        this.setCount++;
      }
    }
  }

  /** Clears [first, end). */
  clearRange(first: number, end: number): void {
    const b = this.bits;
    for (let p = first; p < end; p++) {
      if (b[p] === 1) {
        b[p] = 0;
        this.setCount--;
      }
    }
  }

  /**
   * First set page at or after `from`: -1 when there is none, or with `limit` given, the
   * first in [from, limit) or `limit`.
   */
  nextSet(from: number, limit?: number): number {
    if (limit === undefined) return this.bits.indexOf(1, from);
    const i = this.bits.subarray(0, limit).indexOf(1, from);
    return i < 0 ? limit : i;
  }

  /**
   * The end of the shortest range [from, end) holding `n` set pages, or min(limit, pages)
   * when [from, limit) holds fewer.
   */
  endAfterSet(from: number, n: number, limit = this.pages): number {
    const b = this.bits;
    const end = Math.min(limit, this.pages);
    let seen = 0;
    for (let i = from; i < end; i++) if (b[i] === 1 && ++seen === n) return i + 1;
    return end;
  }

  /** First clear page in [from, min(limit, pages)), or min(limit, pages) when there is none. */
  nextClear(from: number, limit = this.pages): number {
    const b = this.bits;
    const end = Math.min(limit, this.pages);
    for (let i = from; i < end; i++) if (b[i] === 0) return i;
    return end;
  }
}
