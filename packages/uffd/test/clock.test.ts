/** monotonicOffsetMs: performance.now() read in CLOCK_MONOTONIC, the clock a host's processes share. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { monotonicOffsetMs } from '@livemig/uffd/clock';

describe('monotonicOffsetMs', () => {
  it('performance.now() plus the offset is CLOCK_MONOTONIC now: between two process.hrtime readings around it', () => {
    const hr0 = Number(process.hrtime.bigint()) / 1e6;
    const mono = performance.now() + monotonicOffsetMs();
    const hr1 = Number(process.hrtime.bigint()) / 1e6;
    expect(mono).to.be.within(hr0 - 0.01, hr1 + 0.01);
  });

  it('another process reads the same clock: its converted time falls between two readings here', () => {
    const before = performance.now() + monotonicOffsetMs();
    const url = new URL('../dist/clock.js', import.meta.url).href;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `const { monotonicOffsetMs } = await import(${JSON.stringify(url)}); console.log(performance.now() + monotonicOffsetMs());`], { encoding: 'utf8' });
    const after = performance.now() + monotonicOffsetMs();
    const theirs = Number(r.stdout.trim());
    expect(theirs).to.be.within(before, after);
  });
});
