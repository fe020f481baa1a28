/**
 * PageBitmap: one flag a page with a running count and run iteration (the source's dirty map).
 */
import { expect } from 'chai';
import { PageBitmap } from '@livemig/source';

describe('PageBitmap', () => {
  it('starts all clear by default and all set with initial = true', () => {
    const clear = new PageBitmap(100);
    expect(clear.pages).to.equal(100);
    expect(clear.count).to.equal(0);
    expect(clear.test(0)).to.equal(false);
    expect(clear.test(99)).to.equal(false);
    const full = new PageBitmap(100, true);
    expect(full.count).to.equal(100);
    expect(full.test(0)).to.equal(true);
    expect(full.test(99)).to.equal(true);
  });

  it('set and clear change the count once per page, however often they are repeated', () => {
    const b = new PageBitmap(16);
    b.set(3);
    b.set(3);
    b.set(7);
    expect(b.count).to.equal(2);
    expect(b.test(3)).to.equal(true);
    expect(b.test(4)).to.equal(false);
    b.clear(3);
    b.clear(3);
    b.clear(4); // already clear
    expect(b.count).to.equal(1);
    expect(b.test(3)).to.equal(false);
    expect(b.test(7)).to.equal(true);
  });

  it('setRange marks [first, end) and counts only pages that were clear', () => {
    const b = new PageBitmap(64);
    b.set(10);
    b.setRange(8, 16);
    expect(b.count).to.equal(8);
    expect(b.test(7)).to.equal(false);
    expect(b.test(8)).to.equal(true);
    expect(b.test(15)).to.equal(true);
    expect(b.test(16)).to.equal(false);
  });

  it('clearRange clears [first, end) and counts only pages that were set', () => {
    const b = new PageBitmap(64, true);
    b.clear(20);
    b.clearRange(16, 32);
    expect(b.count).to.equal(48);
    expect(b.test(15)).to.equal(true);
    expect(b.test(16)).to.equal(false);
    expect(b.test(31)).to.equal(false);
    expect(b.test(32)).to.equal(true);
  });

  it('an empty range changes nothing', () => {
    const b = new PageBitmap(8);
    b.setRange(4, 4);
    expect(b.count).to.equal(0);
    b.setRange(0, 8);
    b.clearRange(5, 5);
    expect(b.count).to.equal(8);
  });

  it('nextSet finds the first set page at or after `from`, or -1', () => {
    const b = new PageBitmap(100);
    expect(b.nextSet(0)).to.equal(-1);
    b.set(5);
    b.set(50);
    expect(b.nextSet(0)).to.equal(5);
    expect(b.nextSet(5)).to.equal(5);
    expect(b.nextSet(6)).to.equal(50);
    expect(b.nextSet(51)).to.equal(-1);
    expect(b.nextSet(100)).to.equal(-1);
  });

  it('nextClear finds the first clear page at or after `from`, or `pages` when none is left', () => {
    const b = new PageBitmap(100, true);
    expect(b.nextClear(0)).to.equal(100);
    b.clear(0);
    b.clear(70);
    expect(b.nextClear(0)).to.equal(0);
    expect(b.nextClear(1)).to.equal(70);
    expect(b.nextClear(71)).to.equal(100);
    expect(b.nextClear(100)).to.equal(100);
  });

  it('nextSet with a limit searches only [from, limit) and answers `limit` when nothing is set there', () => {
    const b = new PageBitmap(100);
    b.set(40);
    expect(b.nextSet(0, 100)).to.equal(40);
    expect(b.nextSet(0, 41)).to.equal(40);
    expect(b.nextSet(0, 40)).to.equal(40); // none in [0, 40): the limit
    expect(b.nextSet(10, 30)).to.equal(30);
    expect(b.nextSet(41, 100)).to.equal(100);
  });

  it('nextClear with a limit searches only [from, limit) and answers `limit` when all are set there', () => {
    const b = new PageBitmap(100, true);
    b.clear(60);
    expect(b.nextClear(0, 100)).to.equal(60);
    expect(b.nextClear(0, 61)).to.equal(60);
    expect(b.nextClear(0, 50)).to.equal(50);
    expect(b.nextClear(61, 90)).to.equal(90);
    expect(b.nextClear(61, 1000)).to.equal(100); // never past the end
  });

  it('endAfterSet ends a range once it holds n set pages, or at the limit when it holds fewer', () => {
    const b = new PageBitmap(100);
    for (const p of [3, 10, 11, 50, 99]) b.set(p);
    expect(b.endAfterSet(0, 1)).to.equal(4);
    expect(b.endAfterSet(0, 3)).to.equal(12);
    expect(b.endAfterSet(4, 2)).to.equal(12);
    expect(b.endAfterSet(12, 2)).to.equal(100);
    expect(b.endAfterSet(12, 3)).to.equal(100); // fewer than 3 left: the end of the bitmap
    expect(b.endAfterSet(0, 4, 40)).to.equal(40); // fewer than 4 before the limit
    expect(b.endAfterSet(0, 2, 1000)).to.equal(11);
    expect(b.endAfterSet(60, 1, 1000)).to.equal(100); // never past the end
  });

  it('a limit bounds a run to a batch: runs of at most N pages', () => {
    const b = new PageBitmap(10, true);
    const batches: Array<[number, number]> = [];
    for (let p = b.nextSet(0); p >= 0; ) {
      const end = b.nextClear(p, p + 4);
      batches.push([p, end]);
      p = b.nextSet(end);
    }
    expect(batches).to.deep.equal([[0, 4], [4, 8], [8, 10]]);
  });

  it('nextSet and nextClear together walk the runs of set pages', () => {
    const b = new PageBitmap(40);
    b.setRange(2, 5);
    b.setRange(10, 11);
    b.setRange(30, 40);
    const runs: Array<[number, number]> = [];
    for (let p = b.nextSet(0); p >= 0; ) {
      const end = b.nextClear(p);
      runs.push([p, end]);
      p = b.nextSet(end);
    }
    expect(runs).to.deep.equal([[2, 5], [10, 11], [30, 40]]);
  });

  it('a shared bitmap exposes its flags as shared memory that sees every later change', () => {
    const bm = new PageBitmap(64, false, { shared: true });
    const flags = new Uint8Array(bm.shared);
    bm.setRange(3, 6);
    bm.clear(4);
    expect(Array.from(flags.subarray(2, 7))).to.deep.equal([0, 1, 0, 1, 0]);
  });

  it('a bitmap not made shared refuses to hand out shared memory', () => {
    expect(() => new PageBitmap(8).shared).to.throw(/not made shared/);
  });

  it('union is shared when asked, and holds the pages set in either bitmap', () => {
    const a = new PageBitmap(16);
    const b = new PageBitmap(16);
    a.setRange(0, 2);
    b.setRange(8, 10);
    const u = a.union(b, { shared: true });
    expect(u.count).to.equal(4);
    expect(Array.from(new Uint8Array(u.shared)).map((x, p) => (x ? p : -1)).filter((p) => p >= 0)).to.deep.equal([0, 1, 8, 9]);
  });

  it('forEachRunAnd reports the maximal runs set in both bitmaps, across word boundaries and at the end', () => {
    const a = new PageBitmap(23);
    const b = new PageBitmap(23);
    a.setRange(2, 23);
    b.setRange(0, 5);
    b.setRange(7, 13);
    b.setRange(20, 23);
    const runs: number[][] = [];
    a.forEachRunAnd(b, (f, e) => runs.push([f, e]));
    expect(runs).to.deep.equal([[2, 5], [7, 13], [20, 23]]);
  });

  it('forEachRunAndIn reports the same runs as forEachRunAnd, cut to [first, end)', () => {
    const a = new PageBitmap(40);
    const b = new PageBitmap(40);
    a.setRange(0, 40);
    b.setRange(3, 9);
    b.setRange(15, 30);
    const runs: number[][] = [];
    a.forEachRunAndIn(b, 5, 20, (f, e) => runs.push([f, e]));
    expect(runs).to.deep.equal([[5, 9], [15, 20]]);
    const none: number[][] = [];
    a.forEachRunAndIn(b, 10, 15, (f, e) => none.push([f, e]));
    expect(none).to.deep.equal([]);
  });

  it('forEachRunAndIn refuses a range outside the bitmap', () => {
    const a = new PageBitmap(8);
    expect(() => a.forEachRunAndIn(a, 4, 9, () => undefined)).to.throw(RangeError, 'pages [4, 9) outside 0..8');
  });
});
