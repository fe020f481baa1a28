/**
 * RateLimiter (--max-bandwidth): 0 is unlimited; otherwise the average rate over many takes
 * stays under the limit; the limit can change at any time.
 */
import { expect } from 'chai';
import { RateLimiter } from '@livemig/source';

const MB = 1_000_000;
const CHUNK = 64 * 1024;

/** ms to take `total` bytes in CHUNK-sized takes. */
async function timeTakes(l: RateLimiter, total: number): Promise<number> {
  const t0 = performance.now();
  for (let done = 0; done < total; done += CHUNK) await l.take(Math.min(CHUNK, total - done));
  return performance.now() - t0;
}

describe('RateLimiter', function () {
  this.timeout(5000);

  it('a limit of 0 is unlimited: 1 GB of takes return at once', async () => {
    const l = new RateLimiter(0);
    expect(l.limit).to.equal(0);
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) await l.take(MB);
    expect(performance.now() - t0).to.be.below(50);
  });

  it('the default is unlimited', async () => {
    const l = new RateLimiter();
    expect(l.limit).to.equal(0);
    const ms = await timeTakes(l, 64 * MB);
    expect(ms).to.be.below(50);
  });

  it('at 20 MB/s, taking 4 MB takes at least ~150 ms (4 MB / 20 MB/s = 200 ms, less one burst)', async () => {
    const l = new RateLimiter(20 * MB);
    const ms = await timeTakes(l, 4 * MB);
    expect(ms).to.be.at.least(150);
    expect(ms).to.be.below(600);
  });

  it('one take larger than a burst goes at once and the next take pays for it', async () => {
    const l = new RateLimiter(20 * MB);
    const t0 = performance.now();
    await l.take(4 * MB);
    const first = performance.now() - t0;
    await l.take(1);
    const second = performance.now() - t0 - first;
    expect(first).to.be.below(50);
    expect(second).to.be.at.least(150);
  });

  it('setLimit(0) lifts the limit at once', async () => {
    const l = new RateLimiter(1 * MB);
    await l.take(4 * MB); // in debt for 4 s at 1 MB/s
    l.setLimit(0);
    expect(l.limit).to.equal(0);
    const ms = await timeTakes(l, 16 * MB);
    expect(ms).to.be.below(50);
  });

  it('setLimit raises and lowers the rate', async () => {
    const l = new RateLimiter(20 * MB);
    l.setLimit(200 * MB);
    expect(l.limit).to.equal(200 * MB);
    const fast = await timeTakes(l, 4 * MB); // ~20 ms
    l.setLimit(10 * MB);
    const slow = await timeTakes(l, 2 * MB); // ~200 ms
    expect(fast).to.be.below(120);
    expect(slow).to.be.at.least(150);
  });

  it('setLimit from unlimited to limited starts limiting', async () => {
    const l = new RateLimiter(0);
    l.setLimit(20 * MB);
    expect(await timeTakes(l, 4 * MB)).to.be.at.least(150);
  });
});
