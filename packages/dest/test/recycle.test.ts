/**
 * Recycling discarded pages (recycle.ts, through PagePlacer) against the real kernel: a
 * 256-page anonymous block registered MISSING with a userfaultfd that can move pages. Pages
 * are read only while present ("missing in the kernel" is checked with UFFDIO_ZEROPAGE, last).
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { ALREADY_PRESENT, UFFD_FEATURE_MOVE, Userfaultfd, mapAnonymous, type Mapping } from '@livemig/uffd';
import { TRIM_UNIT } from '@livemig/protocol';
import { PAGE_PRESENT, PageRecycler, PagePlacer, RECYCLE_MIN_RUN, type PlacerBlock } from '@livemig/dest';

const PS = 4096;
const PAGES = 256;
const RUN = 2 * RECYCLE_MIN_RUN;

let uffd: Userfaultfd;
let ram: Mapping;
let placer: PagePlacer;
let rec: PageRecycler;
let b: PlacerBlock;

function pages(n: number, seed: number): Buffer {
  const buf = Buffer.alloc(n * PS);
  for (let i = 0; i < buf.length; i++) buf[i] = ((i >> 12) * 17 + seed * 31 + (i % 251)) % 255 + 1;
  return buf;
}

/**
 * A trimmed run as TRIMMED_RUN brings it: each page's kept units (the u16 LE table) and the
 * pages filled out (data in the kept units, zero after them), as the destination passes them.
 */
function trimmed(kept: number[], seed: number): { src: Buffer; table: Buffer } {
  const src = pages(kept.length, seed);
  const table = Buffer.alloc(2 * kept.length);
  kept.forEach((k, i) => {
    table.writeUInt16LE(k, 2 * i);
    src.fill(0, i * PS + k * TRIM_UNIT, (i + 1) * PS);
  });
  return { src, table };
}

const read = (first: number, n = 1): Buffer => Buffer.from(ram.bytes(first * PS, n * PS));

function kernelHas(p: number): boolean {
  return uffd.zeropage(ram.addr + p * PS, PS) === ALREADY_PRESENT;
}

/** The page frames behind pages [first, first+n) of the block (/proc/self/pagemap; needs root). */
function frames(first: number, n: number): bigint[] {
  const fd = fs.openSync('/proc/self/pagemap', 'r');
  try {
    const buf = Buffer.alloc(8 * n);
    fs.readSync(fd, buf, 0, buf.length, ((ram.addr + first * PS) / PS) * 8);
    return Array.from({ length: n }, (_, i) => buf.readBigUInt64LE(8 * i) & ((1n << 55n) - 1n));
  } finally {
    fs.closeSync(fd);
  }
}

beforeEach(() => {
  ram = mapAnonymous(PAGES * PS, { name: 'ram0' });
  uffd = new Userfaultfd({ features: UFFD_FEATURE_MOVE, requiredFeatures: UFFD_FEATURE_MOVE });
  uffd.register(ram.addr, ram.length, { missing: true }, 'ram0');
  placer = new PagePlacer(uffd, [ram]);
  rec = new PageRecycler(uffd, PAGES);
  placer.recycler = rec;
  b = placer.block('ram0');
});

afterEach(() => {
  rec.close();
  uffd.close();
  ram.unmap();
});

describe('recycling discarded pages', () => {
  it('DISCARD moves the present pages out of guest RAM: missing there, and ready to be placed again', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    expect(rec.available).to.equal(RUN);
    expect(rec.stats.stashed).to.equal(RUN);
    expect(placer.stats.received).to.equal(0);
    expect([0, 1, RUN - 1].map(kernelHas)).to.deep.equal([false, false, false]);
  });

  it('in postcopy a long run is placed in the recycled pages themselves: the guest reads the new contents, and no page is allocated anew', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    const before = frames(0, RUN);
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = pages(RUN, 9);
    placer.placeRun(b, 0, RUN, fresh);
    expect(read(0, RUN).equals(fresh)).to.equal(true);
    expect(rec.stats.reused).to.equal(RUN);
    expect(rec.available).to.equal(0);
    expect(new Set(frames(0, RUN))).to.deep.equal(new Set(before));
    expect(Array.from(b.state.subarray(0, RUN)).every((s) => s === PAGE_PRESENT)).to.equal(true);
    expect(placer.stats.received).to.equal(RUN);
  });

  it(`leaves a run shorter than ${RECYCLE_MIN_RUN} pages to UFFDIO_COPY (a move flushes every CPU's TLB), keeping the recycled pages`, () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = pages(8, 5);
    placer.placeRun(b, 0, 8, fresh);
    expect(read(0, 8).equals(fresh)).to.equal(true);
    expect(rec.stats.reused).to.equal(0);
    expect(rec.available).to.equal(RUN);
  });

  it('is not used outside postcopy, where a page found present must be overwritten rather than kept', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    const fresh = pages(RUN, 3);
    placer.placeRun(b, 0, RUN, fresh);
    expect(read(0, RUN).equals(fresh)).to.equal(true);
    expect(rec.stats.reused).to.equal(0);
  });

  it('keeps a page another thread placed in the kernel meanwhile as it is, and places the rest of the run from recycled pages', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    // Placed in the kernel, not yet marked in the page states: a racing thread's placement.
    expect(uffd.copy(ram.addr + 10 * PS, Buffer.alloc(PS), PS)).to.equal(PS);
    const fresh = pages(RUN, 4);
    placer.placeRun(b, 0, RUN, fresh);
    expect(read(10).equals(Buffer.alloc(PS))).to.equal(true);
    expect(read(0, 10).equals(fresh.subarray(0, 10 * PS))).to.equal(true);
    expect(read(11, RUN - 11).equals(fresh.subarray(11 * PS))).to.equal(true);
    expect(rec.stats.reused).to.equal(RUN - 1);
  });

  it('places the rest of a run with UFFDIO_COPY when the recycled pages run out', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RECYCLE_MIN_RUN);
    placer.discard(b, RECYCLE_MIN_RUN, RUN); // pages dropped one way or the other are missing all the same
    expect(rec.available).to.equal(RUN);
    placer.postcopy = true;
    const fresh = pages(PAGES, 6);
    placer.placeRun(b, 0, PAGES, fresh);
    expect(read(0, PAGES).equals(fresh)).to.equal(true);
    expect(rec.stats.reused).to.equal(RUN);
    expect(placer.stats.received).to.equal(PAGES);
  });

  it('a trimmed page written into a recycled page that held more data reads zero after its own kept units', () => {
    const old = trimmed(Array.from({ length: RUN }, (_, i) => 1 + (i % 7)), 1);
    placer.placeRun(b, 0, RUN, old.src, 0, old.table);
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = trimmed(Array.from({ length: RUN }, (_, i) => i % 2), 2);
    placer.placeRun(b, 0, RUN, fresh.src, 0, fresh.table);
    expect(rec.stats.reused).to.equal(RUN);
    expect(read(0, RUN).equals(fresh.src)).to.equal(true);
  });

  it('a trimmed page written into a recycled page that held less data gets every one of its kept units', () => {
    const old = trimmed(Array.from({ length: RUN }, () => 1), 1);
    placer.placeRun(b, 0, RUN, old.src, 0, old.table);
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = trimmed(Array.from({ length: RUN }, (_, i) => [1, 3, 9, 32][i % 4]!), 2);
    placer.placeRun(b, 0, RUN, fresh.src, 0, fresh.table);
    expect(rec.stats.reused).to.equal(RUN);
    expect(read(0, RUN).equals(fresh.src)).to.equal(true);
  });

  it('a trimmed page written into a recycled page that came whole is zeroed after its kept units', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = trimmed(Array.from({ length: RUN }, () => 1), 2);
    placer.placeRun(b, 0, RUN, fresh.src, 0, fresh.table);
    expect(rec.stats.reused).to.equal(RUN);
    expect(read(0, RUN).equals(fresh.src)).to.equal(true);
  });

  it('what a page holds is taken from its last placement before the guest ran: a page sent trimmed and then again whole is written whole', () => {
    const first = trimmed(Array.from({ length: RUN }, () => 1), 1);
    placer.placeRun(b, 0, RUN, first.src, 0, first.table);
    placer.placeRun(b, 0, RUN, pages(RUN, 3)); // present: overwritten in precopy
    placer.discard(b, 0, RUN);
    placer.postcopy = true;
    const fresh = trimmed(Array.from({ length: RUN }, () => 2), 4);
    placer.placeRun(b, 0, RUN, fresh.src, 0, fresh.table);
    expect(read(0, RUN).equals(fresh.src)).to.equal(true);
  });

  it('pages allocated ahead follow the stashed ones and take trimmed and whole runs like recycled pages', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    expect(rec.populate(RUN)).to.equal(RUN);
    expect(rec.available).to.equal(2 * RUN);
    placer.postcopy = true;
    const t = trimmed(Array.from({ length: RUN }, (_, i) => i % 5), 2);
    placer.placeRun(b, 0, RUN, t.src, 0, t.table); // into the stashed pages
    const fresh = trimmed(Array.from({ length: RUN / 2 }, (_, i) => [0, 1, 7][i % 3]!), 3);
    placer.placeRun(b, RUN, RUN / 2, fresh.src, 0, fresh.table); // into pages allocated ahead
    const whole = pages(RUN / 2, 4);
    placer.placeRun(b, RUN + RUN / 2, RUN / 2, whole);
    expect(rec.stats.reused).to.equal(2 * RUN);
    expect(read(0, RUN).equals(t.src)).to.equal(true);
    expect(read(RUN, RUN / 2).equals(fresh.src)).to.equal(true);
    expect(read(RUN + RUN / 2, RUN / 2).equals(whole)).to.equal(true);
  });

  it('allocates no more pages ahead than the area has slots for', () => {
    placer.placeRun(b, 0, RUN, pages(RUN, 1));
    placer.discard(b, 0, RUN);
    expect(rec.populate(PAGES)).to.equal(PAGES - RUN);
    expect(rec.populate(1)).to.equal(0);
    expect(rec.available).to.equal(PAGES);
  });

  it('takes no more pages than it has room for: the rest are dropped as before', () => {
    const small = new PageRecycler(uffd, RECYCLE_MIN_RUN);
    try {
      placer.recycler = small;
      placer.placeRun(b, 0, RUN, pages(RUN, 1));
      placer.discard(b, 0, RUN);
      expect(small.available).to.equal(0);
      expect(small.stats.stashed).to.equal(0);
      expect([0, RUN - 1].map(kernelHas)).to.deep.equal([false, false]);
    } finally {
      small.close();
    }
  });
});
