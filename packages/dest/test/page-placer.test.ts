/**
 * PagePlacer against the real kernel: a 16-page anonymous mapping registered MISSING with a
 * real userfaultfd. The test only ever reads pages the kernel holds, or reads after
 * unregistering (a read of a registered missing page on this thread would block forever);
 * "missing in the kernel" is checked with UFFDIO_ZEROPAGE, which fails with EEXIST on a
 * present page.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { ALREADY_PRESENT, Userfaultfd, mapAnonymous, type Mapping } from '@livemig/uffd';
import { PAGE_MISSING, PAGE_PRESENT, PAGE_REQUESTED, PAGE_ZERO, PagePlacer, type PlacerBlock } from '@livemig/dest';

const PS = 4096;
const PAGES = 16;

let uffd: Userfaultfd;
let ram: Mapping;
let placer: PagePlacer;
let b: PlacerBlock;

/** `n` pages whose bytes all differ from zero and depend on `seed` and the page. */
function pages(n: number, seed: number): Buffer {
  const buf = Buffer.alloc(n * PS);
  for (let i = 0; i < buf.length; i++) buf[i] = ((i >> 12) * 17 + seed * 31 + (i % 251)) % 255 + 1;
  return buf;
}

/** Guest RAM of pages [first, first+n), read through the mapping (they must be present). */
const read = (first: number, n = 1): Buffer => Buffer.from(ram.bytes(first * PS, n * PS));

const states = (): number[] => Array.from(b.state);

/** Lets userfaultfd go of the block: from then on a missing page reads as zero. */
function release(): void {
  uffd.unregister(ram.addr, ram.length, 'ram0');
}

/** Whether the kernel has page `p` (maps the zero page over it if not, so use last). */
function kernelHas(p: number): boolean {
  const r = uffd.zeropage(ram.addr + p * PS, PS);
  return r === ALREADY_PRESENT;
}

/** The page frame number behind `addr` from /proc/self/pagemap (0 when not present; needs root). */
function pageFrame(addr: number): bigint {
  const fd = fs.openSync('/proc/self/pagemap', 'r');
  try {
    const entry = Buffer.alloc(8);
    fs.readSync(fd, entry, 0, 8, (addr / PS) * 8);
    const v = entry.readBigUInt64LE(0);
    return v >> 63n ? v & ((1n << 55n) - 1n) : 0n;
  } finally {
    fs.closeSync(fd);
  }
}

beforeEach(() => {
  ram = mapAnonymous(PAGES * PS, { name: 'ram0' });
  uffd = new Userfaultfd();
  uffd.register(ram.addr, ram.length, { missing: true }, 'ram0');
  placer = new PagePlacer(uffd, [ram]);
  b = placer.block('ram0');
});

afterEach(() => {
  uffd.close();
  ram.unmap();
});

describe('PagePlacer', () => {
  it('starts with every page missing', () => {
    expect(placer.totalPages).to.equal(PAGES);
    expect(placer.missing).to.equal(PAGES);
    expect(b.pages).to.equal(PAGES);
    expect(states().every((s) => s === PAGE_MISSING)).to.equal(true);
    expect(() => placer.block('ram9')).to.throw('unknown RAM block "ram9"');
  });

  describe('placeRun', () => {
    it('copies the pages into guest RAM and marks exactly them present and received', () => {
      const src = pages(3, 1);
      placer.placeRun(b, 2, 3, src);
      expect(read(2, 3).equals(src)).to.equal(true);
      expect(states()).to.deep.equal([0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      expect(placer.stats).to.deep.include({ pagesNormal: 3, dataBytes: 3 * PS, copied: 3, overwritten: 0, received: 3 });
      expect(placer.missing).to.equal(PAGES - 3);
      expect(kernelHas(4)).to.equal(true);
      expect(kernelHas(5)).to.equal(false);
    });

    it('in precopy overwrites a page that arrives again with the new contents', () => {
      placer.placeRun(b, 0, 2, pages(2, 1));
      const again = pages(2, 2);
      placer.placeRun(b, 0, 2, again);
      expect(read(0, 2).equals(again)).to.equal(true);
      expect(placer.stats).to.deep.include({ copied: 2, overwritten: 2, received: 2, pagesNormal: 4 });
    });

    it('takes the pages from an offset into the source buffer (a PAGES frame\'s payload), for missing and present pages alike', () => {
      placer.placeRun(b, 6, 1, pages(1, 9)); // present: overwritten from the offset too
      const payload = pages(4, 3);
      placer.placeRun(b, 5, 2, payload, 2 * PS);
      expect(read(5, 2).equals(payload.subarray(2 * PS, 4 * PS))).to.equal(true);
      expect(placer.stats).to.deep.include({ copied: 2, overwritten: 1, received: 2 });
    });

    it('copies the missing pages and overwrites the present ones of a mixed run', () => {
      placer.placeRun(b, 3, 2, pages(2, 1));
      const src = pages(8, 5);
      placer.placeRun(b, 0, 8, src);
      expect(read(0, 8).equals(src)).to.equal(true);
      expect(placer.stats).to.deep.include({ copied: 8, overwritten: 2, received: 8 });
    });

    it("in postcopy drops a page that arrives again: the guest's contents stay", () => {
      const first = pages(2, 1);
      placer.placeRun(b, 4, 2, first);
      placer.postcopy = true;
      placer.placeRun(b, 4, 2, pages(2, 9));
      expect(read(4, 2).equals(first)).to.equal(true);
      expect(placer.stats).to.deep.include({ received: 2, overwritten: 2, copied: 2 });
    });

    it('in postcopy still places a missing page', () => {
      placer.postcopy = true;
      const src = pages(1, 3);
      placer.placeRun(b, 7, 1, src);
      expect(read(7).equals(src)).to.equal(true);
      expect(b.state[7]).to.equal(PAGE_PRESENT);
    });

    it('in precopy overwrites a page the kernel already holds although its state says missing (a racing placement)', () => {
      expect(uffd.copy(ram.addr + 2 * PS, pages(1, 4), PS)).to.equal(PS); // page 2 present behind the placer's back
      const src = pages(4, 6);
      placer.placeRun(b, 0, 4, src);
      expect(read(0, 4).equals(src)).to.equal(true);
      expect(states().slice(0, 5)).to.deep.equal([1, 1, 1, 1, 0]);
      expect(placer.stats.received).to.equal(4);
    });

    it('in postcopy keeps what the guest sees in a page placed behind its back (a racing zero page)', () => {
      const racing = pages(1, 4);
      expect(uffd.copy(ram.addr + 2 * PS, racing, PS)).to.equal(PS);
      placer.postcopy = true;
      const src = pages(4, 6);
      placer.placeRun(b, 0, 4, src);
      expect(read(0, 2).equals(src.subarray(0, 2 * PS))).to.equal(true);
      expect(read(2).equals(racing)).to.equal(true);
      expect(read(3).equals(src.subarray(3 * PS))).to.equal(true);
      expect(states().slice(0, 4)).to.deep.equal([1, 1, 1, 1]);
    });

    it('places data over a page recorded as zero without counting it received twice', () => {
      placer.placeZero(b, 0, 4);
      const src = pages(2, 2);
      placer.placeRun(b, 1, 2, src);
      expect(states().slice(0, 4)).to.deep.equal([PAGE_ZERO, PAGE_PRESENT, PAGE_PRESENT, PAGE_ZERO]);
      expect(placer.stats.received).to.equal(4);
      expect(read(1, 2).equals(src)).to.equal(true);
    });
  });

  describe('placeZero', () => {
    it('in precopy records missing pages as zero, counts them received and maps nothing', () => {
      placer.placeZero(b, 8, 4);
      expect(states().slice(7, 13)).to.deep.equal([PAGE_MISSING, PAGE_ZERO, PAGE_ZERO, PAGE_ZERO, PAGE_ZERO, PAGE_MISSING]);
      expect(placer.stats).to.deep.include({ pagesZero: 4, received: 4, pagesNormal: 0, copied: 0 });
      expect(placer.missing).to.equal(PAGES - 4);
      expect(kernelHas(9), 'a zero page must not be mapped in precopy').to.equal(false);
    });

    it('recording the same zero page twice counts it once', () => {
      placer.placeZero(b, 0, 2);
      placer.placeZero(b, 1, 2);
      expect(placer.stats.received).to.equal(3);
      expect(placer.stats.pagesZero).to.equal(4);
    });

    it('pages recorded as zero read as zeros once userfaultfd lets go', () => {
      const src = pages(1, 5);
      placer.placeRun(b, 0, 1, src);
      placer.placeZero(b, 1, 15);
      release();
      expect(read(0).equals(src)).to.equal(true);
      expect(read(1, 15).equals(Buffer.alloc(15 * PS))).to.equal(true);
    });

    it('in postcopy records missing pages as zero and maps nothing (the fault thread fills them when touched)', () => {
      placer.postcopy = true;
      placer.placeZero(b, 8, 4);
      expect(states().slice(7, 13)).to.deep.equal([PAGE_MISSING, PAGE_ZERO, PAGE_ZERO, PAGE_ZERO, PAGE_ZERO, PAGE_MISSING]);
      expect(placer.stats).to.deep.include({ pagesZero: 4, received: 4 });
      expect(kernelHas(9), 'a zero page must not be mapped before it is touched').to.equal(false);
    });

    it('in postcopy fills a page a vCPU waits for (requested) with zeros at once and reports it placed', () => {
      placer.postcopy = true;
      const placed: number[] = [];
      placer.onRequestedPlaced = (_b, page) => placed.push(page);
      b.state[9] = PAGE_REQUESTED;
      b.state[10] = PAGE_REQUESTED;
      placer.placeZero(b, 8, 4);
      expect(states().slice(8, 12)).to.deep.equal([PAGE_ZERO, PAGE_PRESENT, PAGE_PRESENT, PAGE_ZERO]);
      expect(placed).to.deep.equal([9, 10]);
      expect(placer.stats.received).to.equal(4);
      expect(kernelHas(8)).to.equal(false);
      expect(kernelHas(9)).to.equal(true);
      release();
      expect(read(8, 4).equals(Buffer.alloc(4 * PS))).to.equal(true);
    });

    it('in postcopy does not count again a page recorded as zero in precopy', () => {
      placer.placeZero(b, 0, 2);
      placer.postcopy = true;
      placer.placeZero(b, 0, 2);
      expect(states().slice(0, 2)).to.deep.equal([PAGE_ZERO, PAGE_ZERO]);
      expect(placer.stats.received).to.equal(2);
    });

    it('in precopy clears a present page', () => {
      placer.placeRun(b, 0, 1, pages(1, 1));
      placer.placeZero(b, 0, 1);
      expect(read(0).equals(Buffer.alloc(PS))).to.equal(true);
      expect(b.state[0]).to.equal(PAGE_PRESENT);
      expect(placer.stats.received).to.equal(1);
    });

    it('zeroIn places each zero page as a page of its own, not the shared zero page', () => {
      placer.zeroIn(b, 4, 8);
      expect(states().slice(4, 8)).to.deep.equal([1, 1, 1, 1]);
      const frames = [4, 5, 6, 7].map((p) => pageFrame(ram.addr + p * PS));
      expect(frames.every((f) => f !== 0n), 'every page present').to.equal(true);
      expect(new Set(frames).size, 'four distinct page frames').to.equal(4);
      release();
      expect(read(4, 4).equals(Buffer.alloc(4 * PS))).to.equal(true);
    });

    it('in postcopy leaves a present page alone', () => {
      const src = pages(1, 1);
      placer.placeRun(b, 0, 1, src);
      placer.postcopy = true;
      placer.placeZero(b, 0, 1);
      expect(read(0).equals(src)).to.equal(true);
      expect(placer.stats.overwritten).to.equal(1);
    });
  });

  describe('discard', () => {
    it('makes present pages missing again, in the state array and in the kernel', () => {
      placer.placeRun(b, 0, 4, pages(4, 1));
      placer.discard(b, 1, 3);
      expect(states().slice(0, 5)).to.deep.equal([1, 0, 0, 1, 0]);
      expect(placer.stats.received).to.equal(2);
      expect(placer.missing).to.equal(PAGES - 2);
      expect(kernelHas(0)).to.equal(true);
      expect(kernelHas(1)).to.equal(false);
      expect(kernelHas(2)).to.equal(false);
      expect(kernelHas(3)).to.equal(true);
    });

    it('makes pages recorded as zero missing again', () => {
      placer.placeZero(b, 0, 4);
      placer.discard(b, 2, 4);
      expect(states().slice(0, 4)).to.deep.equal([PAGE_ZERO, PAGE_ZERO, PAGE_MISSING, PAGE_MISSING]);
      expect(placer.stats.received).to.equal(2);
    });

    it('of pages never received leaves the received count alone', () => {
      placer.placeRun(b, 0, 1, pages(1, 1));
      placer.discard(b, 4, 8);
      expect(placer.stats.received).to.equal(1);
      expect(placer.missing).to.equal(PAGES - 1);
    });

    it('lets a discarded page be placed again with UFFDIO_COPY, holding the new contents', () => {
      placer.placeRun(b, 0, 4, pages(4, 1));
      placer.discard(b, 1, 3);
      placer.postcopy = true; // as in postcopy: the re-sent page must not be dropped
      const fresh = pages(2, 7);
      placer.placeRun(b, 1, 2, fresh);
      expect(read(1, 2).equals(fresh)).to.equal(true);
      expect(states().slice(0, 4)).to.deep.equal([1, 1, 1, 1]);
      expect(placer.stats).to.deep.include({ copied: 6, overwritten: 0, received: 4 });
    });
  });

  describe('zeroUnreceived', () => {
    it('records every page never received as zero, keeps the placed ones, and they read as zeros once released', () => {
      const p3 = pages(1, 3);
      const p7 = pages(1, 7);
      placer.placeRun(b, 3, 1, p3);
      placer.placeRun(b, 7, 1, p7);
      placer.placeZero(b, 10, 1);
      expect(placer.zeroUnreceived()).to.equal(PAGES - 3);
      expect(placer.missing).to.equal(0);
      expect(states().filter((s) => s === PAGE_ZERO)).to.have.length(PAGES - 2);
      expect(placer.zeroUnreceived()).to.equal(0);
      release();
      expect(read(3).equals(p3)).to.equal(true);
      expect(read(7).equals(p7)).to.equal(true);
      const zero = Buffer.alloc(PS);
      for (const p of [0, 1, 2, 4, 5, 6, 8, 10, 15]) expect(read(p).equals(zero), `page ${p}`).to.equal(true);
    });
  });

  describe('onRequestedPlaced', () => {
    it('fires once for each placed page that was PAGE_REQUESTED, and for no other', () => {
      const fired: Array<[string, number]> = [];
      placer.onRequestedPlaced = (blk, page) => fired.push([blk.name, page]);
      placer.postcopy = true;
      b.state[5] = PAGE_REQUESTED;
      b.state[6] = PAGE_REQUESTED;
      b.state[12] = PAGE_REQUESTED;
      expect(placer.missing).to.equal(PAGES); // requested pages are still missing
      placer.placeRun(b, 4, 4, pages(4, 2));
      expect(fired).to.deep.equal([['ram0', 5], ['ram0', 6]]);
      expect(b.state[5]).to.equal(PAGE_PRESENT);
      placer.placeZero(b, 10, 4);
      expect(fired).to.deep.equal([['ram0', 5], ['ram0', 6], ['ram0', 12]]);
      placer.placeRun(b, 4, 4, pages(4, 3)); // present now: no second report
      expect(fired).to.have.length(3);
      expect(placer.stats.received).to.equal(8);
    });

    it('sees the page already present when it fires', () => {
      const seen: number[] = [];
      placer.onRequestedPlaced = (blk, page) => seen.push(blk.state[page]!);
      b.state[0] = PAGE_REQUESTED;
      const src = pages(1, 1);
      placer.placeRun(b, 0, 1, src);
      expect(seen).to.deep.equal([PAGE_PRESENT]);
      expect(read(0).equals(src)).to.equal(true);
    });
  });

  it('keeps separate state for each block', () => {
    const ram1 = mapAnonymous(4 * PS, { name: 'ram1' });
    try {
      uffd.register(ram1.addr, ram1.length, { missing: true }, 'ram1');
      const two = new PagePlacer(uffd, [ram, ram1]);
      expect(two.totalPages).to.equal(PAGES + 4);
      const b1 = two.block('ram1');
      const src = pages(2, 8);
      two.placeRun(b1, 2, 2, src);
      expect(Buffer.from(ram1.bytes(2 * PS, 2 * PS)).equals(src)).to.equal(true);
      expect(Array.from(b1.state)).to.deep.equal([0, 0, 1, 1]);
      expect(Array.from(two.block('ram0').state).every((s) => s === PAGE_MISSING)).to.equal(true);
      expect(two.missing).to.equal(PAGES + 2);
      expect(two.zeroUnreceived()).to.equal(PAGES + 2);
    } finally {
      uffd.unregister(ram1.addr, ram1.length);
      ram1.unmap();
    }
  });
});
