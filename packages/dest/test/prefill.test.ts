/**
 * Prefill (prefill.ts) against the real kernel: fresh pages allocated into a PageRecycler's
 * area in the turns of the event loop where nothing came in and no vCPU waits for a requested
 * page.
 */
import { expect } from 'chai';
import { UFFD_FEATURE_MOVE, Userfaultfd } from '@livemig/uffd';
import { PageRecycler, Prefill } from '@livemig/dest';

const SLOTS = 4096;
const CHUNK = 64;

let uffd: Userfaultfd;
let rec: PageRecycler;

/** Resolves after `n` turns of the event loop. */
async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

beforeEach(() => {
  uffd = new Userfaultfd({ features: UFFD_FEATURE_MOVE, requiredFeatures: UFFD_FEATURE_MOVE });
  rec = new PageRecycler(uffd, SLOTS);
});

afterEach(() => {
  rec.close();
  uffd.close();
});

describe('Prefill: fresh pages allocated while the destination is idle', () => {
  it('allocates a chunk in each quiet turn of the event loop, up to what it was asked for', async () => {
    const p = new Prefill(rec, { want: 5 * CHUNK + 3, activity: () => 0, waiting: () => false, dataPages: () => SLOTS, zeroPages: () => 0, chunk: CHUNK });
    p.start();
    await turns(3);
    expect(rec.available).to.be.within(CHUNK, 3 * CHUNK);
    await turns(20);
    expect(rec.available).to.equal(5 * CHUNK + 3);
    expect(rec.stats.populated).to.equal(5 * CHUNK + 3);
    expect(p.pending).to.equal(0);
  });

  it('allocates nothing while a frame comes in every turn, and goes on when they stop', async () => {
    let frames = 0;
    let busy = true;
    const p = new Prefill(rec, { want: CHUNK, activity: () => (busy ? ++frames : frames), waiting: () => false, dataPages: () => SLOTS, zeroPages: () => 0, chunk: CHUNK });
    p.start();
    await turns(50);
    expect(rec.available).to.equal(0);
    busy = false;
    await turns(5);
    expect(rec.available).to.equal(CHUNK);
  });

  it('allocates nothing while a vCPU waits for a requested page, and goes on when poked after the page came', async () => {
    let waiting = true;
    const p = new Prefill(rec, { want: 2 * CHUNK, activity: () => 0, waiting: () => waiting, dataPages: () => SLOTS, zeroPages: () => 0, chunk: CHUNK });
    p.start();
    await turns(20);
    expect(rec.available).to.equal(0);
    waiting = false;
    await turns(20);
    expect(rec.available, 'parked until poked').to.equal(0);
    p.poke();
    await turns(20);
    expect(rec.available).to.equal(2 * CHUNK);
  });

  it('allocates one chunk before anything came, then the share of what it was asked for that came as data pages', async () => {
    let data = 0;
    let zero = 0;
    const p = new Prefill(rec, { want: 2048, activity: () => 0, waiting: () => false, dataPages: () => data, zeroPages: () => zero, chunk: CHUNK });
    p.start();
    await turns(20);
    expect(rec.available, 'nothing came yet').to.equal(CHUNK);
    data = 10;
    zero = 30; // a quarter data: 512 pages of the 2048, plus one chunk
    await turns(20);
    expect(rec.available, 'parked until poked').to.equal(CHUNK);
    p.poke();
    await turns(40);
    expect(rec.available).to.equal(512 + CHUNK);
    zero = 0; // all data: the 2048 asked for
    p.poke();
    await turns(60);
    expect(rec.available).to.equal(2048);
  });

  it('allocates nothing more once stopped', async () => {
    const p = new Prefill(rec, { want: SLOTS, activity: () => 0, waiting: () => false, dataPages: () => SLOTS, zeroPages: () => 0, chunk: CHUNK });
    p.start();
    await turns(2);
    p.stop();
    const had = rec.available;
    await turns(20);
    expect(rec.available).to.equal(had);
    expect(had).to.be.below(SLOTS);
  });

  it('stops at the end of the area', async () => {
    const p = new Prefill(rec, { want: 2 * SLOTS, activity: () => 0, waiting: () => false, dataPages: () => 2 * SLOTS, zeroPages: () => 0, chunk: 1000 });
    p.start();
    await turns(20);
    expect(rec.available).to.equal(SLOTS);
  });
});
