/**
 * page-bitmap.ts — owns a block's per-page flags (one byte a page, so marking and testing
 * are single array accesses) with a running count and run iteration. Used for "dirty: must
 * be (re)sent" on the source.
 */
export class PageBitmap {
  readonly pages: number;
  private readonly bits: Uint8Array;
  private setCount = 0;

  constructor(pages: number, initial = false) {
    this.pages = pages;
    this.bits = new Uint8Array(pages);
    if (initial) {
      this.bits.fill(1);
      this.setCount = pages;
    }
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

  /** First clear page in [from, limit) (default: to the end), or `limit`. */
  nextClear(from: number, limit = this.pages): number {
    const b = this.bits;
    const end = Math.min(limit, this.pages);
    for (let i = from; i < end; i++) if (b[i] === 0) return i;
    return end;
  }
}
