/**
 * PlaceThread against the real kernel: a 16-page anonymous mapping registered MISSING with a
 * real userfaultfd, a PagePlacer over it, and the placing thread started on it. The test reads
 * only pages the thread reports placed (or after unregistering).
 */
import { expect } from 'chai';
import { Userfaultfd, mapAnonymous, type Mapping } from '@livemig/uffd';
import { PAGE_PRESENT, PAGE_REQUESTED, PagePlacer, PlaceThread, type PlacerBlock } from '@livemig/dest';

const PS = 4096;
const PAGES = 16;

let uffd: Userfaultfd;
let ram: Mapping;
let placer: PagePlacer;
let b: PlacerBlock;
let thread: PlaceThread;
let placed: Array<[number, number, number]>;
let fatal: Error[];
/** Stands for the channel the payloads came on. */
const channel = {};

function pages(n: number, seed: number): Buffer {
  const buf = Buffer.alloc(n * PS);
  for (let i = 0; i < buf.length; i++) buf[i] = ((i >> 12) * 17 + seed * 31 + (i % 251)) % 255 + 1;
  return buf;
}

const read = (first: number, n = 1): Buffer => Buffer.from(ram.bytes(first * PS, n * PS));

async function started(): Promise<void> {
  const end = Date.now() + 5000;
  while (!thread.ready) {
    if (Date.now() > end) throw new Error('the placing thread did not start');
    await new Promise((r) => setTimeout(r, 2));
  }
}

beforeEach(async () => {
  ram = mapAnonymous(PAGES * PS, { name: 'ram0' });
  uffd = new Userfaultfd();
  uffd.register(ram.addr, ram.length, { missing: true }, 'ram0');
  placer = new PagePlacer(uffd, [ram]);
  b = placer.block('ram0');
  placed = [];
  fatal = [];
  thread = new PlaceThread(uffd, [b], { placed: (bi, page, t) => placed.push([bi, page, t]), fatal: (e) => fatal.push(e) });
  placer.attachThread(thread);
  await started();
});

afterEach(async () => {
  await thread.kill();
  uffd.close();
  ram.unmap();
});

describe('PlaceThread', () => {
  it('places a run it is given: the bytes arrive, the pages are present, and the placer counts them once retired', async () => {
    const src = pages(4, 1);
    placer.placeRunLater(b, 3, 4, src, channel, 0);
    await thread.idle();
    expect(read(3, 4).equals(src)).to.equal(true);
    expect(Array.from(b.state.subarray(2, 8))).to.deep.equal([0, 1, 1, 1, 1, 0]);
    expect(placer.stats).to.deep.include({ pagesNormal: 4, pagesOnThread: 4, copied: 4, overwritten: 0, received: 4 });
    expect(placer.missing).to.equal(PAGES - 4);
    expect(fatal).to.deep.equal([]);
  });

  it('places runs in the order given: in precopy a page given twice ends with the later contents', async () => {
    const older = pages(8, 1);
    const newer = pages(8, 2);
    placer.placeRunLater(b, 0, 8, older, channel, 0);
    placer.placeRunLater(b, 0, 8, newer, channel, older.length);
    await thread.idle();
    expect(read(0, 8).equals(newer)).to.equal(true);
    expect(placer.stats).to.deep.include({ copied: 8, overwritten: 8, received: 8 });
  });

  it('in postcopy drops a page given again: the contents placed first stay', async () => {
    const first = pages(2, 1);
    placer.placeRunLater(b, 5, 2, first, channel, 0);
    await thread.idle();
    placer.postcopy = true;
    placer.placeRunLater(b, 5, 2, pages(2, 9), channel, first.length);
    await thread.idle();
    expect(read(5, 2).equals(first)).to.equal(true);
    expect(placer.stats).to.deep.include({ copied: 2, overwritten: 2, received: 2 });
  });

  it('tells of each page a vCPU asked for that it placed, with the block, the page and the time', async () => {
    b.state[9] = PAGE_REQUESTED;
    const before = Number(process.hrtime.bigint() / 1000n);
    placer.postcopy = true;
    placer.placeRunLater(b, 8, 3, pages(3, 4), channel, 0);
    await thread.idle();
    const end = Date.now() + 2000;
    while (placed.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
    expect(placed.map(([bi, page]) => [bi, page])).to.deep.equal([[0, 9]]);
    expect(placed[0]![2]).to.be.within(before, Number(process.hrtime.bigint() / 1000n));
    expect(b.state[9]).to.equal(PAGE_PRESENT);
  });

  it('names the oldest payload still in use of the channel asked about, and none once idle', async () => {
    // A thread just created has not started yet: what it is given stays pending meanwhile.
    const fresh = new PlaceThread(uffd, [b], { placed: () => undefined, fatal: (e) => fatal.push(e) });
    try {
      const other = {};
      fresh.enqueue(0, 0, 8, pages(8, 1), other, 5000, false);
      fresh.enqueue(0, 8, 4, pages(4, 2), channel, 700, false);
      fresh.enqueue(0, 12, 4, pages(4, 3), channel, 900, false);
      expect(fresh.oldestHeld(other)).to.equal(5000);
      expect(fresh.oldestHeld(channel)).to.equal(700);
      expect(fresh.oldestHeld({})).to.equal(Infinity);
      expect(fresh.pendingBytes).to.equal(16 * PS);
      await fresh.idle();
      expect(fresh.oldestHeld(channel)).to.equal(Infinity);
      expect(fresh.pendingBytes).to.equal(0);
    } finally {
      await fresh.kill();
    }
  });

  it('fails with the failing call, errno and block offset when a run cannot be placed, and its waits reject', async () => {
    uffd.unregister(ram.addr, ram.length, 'ram0');
    placer.placeRunLater(b, 2, 1, pages(1, 3), channel, 0);
    let err: Error | null = null;
    await thread.idle().catch((e: Error) => (err = e));
    expect(err, 'idle() rejects').to.be.an('error');
    expect(err!.message).to.match(/placing thread failed: UFFDIO_COPY failed: E[A-Z]+ \(block ram0, offset 0x2000\)/);
    expect(fatal.map((e) => e.message)).to.deep.equal([err!.message]);
    expect(thread.ready, 'no more runs go to it').to.equal(false);
  });

  it('stop() resolves once what it was given is placed, and the thread then exits', async () => {
    const src = pages(16, 5);
    placer.placeRunLater(b, 0, 16, src, channel, 0);
    await thread.stop();
    expect(thread.pendingBytes).to.equal(0);
    expect(read(0, 16).equals(src)).to.equal(true);
    expect(thread.ready).to.equal(false);
    await thread.exited;
    expect(fatal).to.deep.equal([]);
  });
});
