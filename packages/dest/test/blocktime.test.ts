/**
 * Postcopy blocktime (QEMU's definition) and page-request latency, with explicit microsecond
 * times. Blocktime and LatencyStats are internal to @livemig/dest (not exported), hence the
 * import from the source file.
 */
import { expect } from 'chai';
import { Blocktime, LatencyStats, nowUs } from '../src/blocktime.js';

const A = 0x7f00_0000_0000;
const B = A + 4096;
const C = A + 8192;
const T1 = 101; // vCPU 0
const T2 = 102; // vCPU 1
const T3 = 103; // vCPU 2

describe('Blocktime', () => {
  it('counts per vCPU the time from its fault to the placement of the page', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000);
    bt.placed(A, 1_500);
    bt.fault(T2, B, 10_000);
    bt.placed(B, 12_000);
    expect(bt.vcpuMs(50_000)).to.deep.equal([0.5, 2]);
  });

  it('sums several waits of the same vCPU', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000);
    bt.placed(A, 1_250);
    bt.fault(T1, B, 2_000);
    bt.placed(B, 2_750);
    expect(bt.vcpuMs(9_000)).to.deep.equal([1, 0]);
  });

  it('total is zero when the vCPUs were never all blocked at once', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000);
    bt.placed(A, 2_000);
    bt.fault(T2, B, 2_000);
    bt.placed(B, 3_000);
    expect(bt.totalMs(10_000)).to.equal(0);
    expect(bt.vcpuMs(10_000)).to.deep.equal([1, 1]);
  });

  it('total counts only the overlap during which ALL vCPUs were blocked', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000); // vCPU 0 blocked 1000..3000
    bt.fault(T2, B, 1_800); // vCPU 1 blocked 1800..2500 → all blocked 1800..2500
    bt.placed(B, 2_500);
    bt.placed(A, 3_000);
    expect(bt.totalMs(10_000)).to.equal(0.7);
    expect(bt.vcpuMs(10_000)).to.deep.equal([2, 0.7]);
  });

  it('total adds up separate all-blocked periods, and needs every one of three vCPUs', () => {
    const bt = new Blocktime([T1, T2, T3]);
    bt.fault(T1, A, 0);
    bt.fault(T2, B, 100); // two of three: not all
    bt.placed(B, 400);
    expect(bt.totalMs(400)).to.equal(0);
    bt.fault(T2, B, 500);
    bt.fault(T3, C, 600); // all three from 600
    bt.placed(C, 900); // … to 900: 300 µs
    bt.fault(T3, C, 1_000); // all three again from 1000
    bt.placed(A, 1_200); // … to 1200: 200 µs
    bt.placed(B, 1_300);
    bt.placed(C, 1_400);
    expect(bt.totalMs(5_000)).to.equal(0.5);
    expect(bt.vcpuMs(5_000)).to.deep.equal([1.2, 1.1, 0.7]);
  });

  it('vCPUs waiting on the same page are all released by its placement', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000);
    bt.fault(T2, A, 1_100);
    expect(bt.anyBlocked).to.equal(true);
    bt.placed(A, 1_600);
    expect(bt.anyBlocked).to.equal(false);
    expect(bt.vcpuMs(2_000)).to.deep.equal([0.6, 0.5]);
    expect(bt.totalMs(2_000)).to.equal(0.5);
  });

  it('with one vCPU the total equals that vCPU\'s blocktime', () => {
    const bt = new Blocktime([T1]);
    bt.fault(T1, A, 100);
    bt.placed(A, 400);
    bt.fault(T1, B, 1_000);
    bt.placed(B, 1_050);
    expect(bt.vcpuMs(2_000)).to.deep.equal([0.35]);
    expect(bt.totalMs(2_000)).to.equal(0.35);
  });

  it('ignores faults from threads that are not vCPUs', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(999, A, 1_000);
    expect(bt.anyBlocked).to.equal(false);
    bt.fault(T1, B, 1_000);
    bt.fault(T2, B, 1_000);
    bt.placed(A, 5_000);
    bt.placed(B, 2_000);
    expect(bt.vcpuMs(9_000)).to.deep.equal([1, 1]);
    expect(bt.totalMs(9_000)).to.equal(1);
  });

  it('a repeated fault of a vCPU already blocked does not restart its wait', () => {
    const bt = new Blocktime([T1]);
    bt.fault(T1, A, 1_000);
    bt.fault(T1, A, 1_700); // duplicate fault message for the same wait
    bt.placed(A, 2_000);
    expect(bt.vcpuMs(3_000)).to.deep.equal([1]);
  });

  it('placing a page nobody waits for changes nothing', () => {
    const bt = new Blocktime([T1]);
    bt.fault(T1, A, 1_000);
    bt.placed(B, 1_500);
    expect(bt.anyBlocked).to.equal(true);
    bt.placed(A, 2_000);
    expect(bt.vcpuMs(3_000)).to.deep.equal([1]);
  });

  it('counts waits still open up to the time asked', () => {
    const bt = new Blocktime([T1, T2]);
    bt.fault(T1, A, 1_000);
    bt.fault(T2, B, 2_000);
    expect(bt.vcpuMs(4_000)).to.deep.equal([3, 2]);
    expect(bt.totalMs(4_000)).to.equal(2);
  });

  it('with no vCPUs everything is zero', () => {
    const bt = new Blocktime([]);
    bt.fault(T1, A, 0);
    expect(bt.vcpuMs(1_000)).to.deep.equal([]);
    expect(bt.totalMs(1_000)).to.equal(0);
  });

  it('nowUs is a monotonic microsecond clock', async () => {
    const a = nowUs();
    await new Promise((r) => setTimeout(r, 20));
    const b = nowUs();
    expect(b - a).to.be.within(15_000, 2_000_000);
  });
});

describe('LatencyStats', () => {
  it('percentiles are exact over the samples (nearest rank), whatever their order', () => {
    const s = new LatencyStats();
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    for (const x of [...xs].reverse()) s.add(x);
    expect(s.count).to.equal(100);
    expect(s.percentile(50)).to.equal(50);
    expect(s.percentile(99)).to.equal(99);
    expect(s.percentile(100)).to.equal(100);
    expect(s.percentile(0)).to.equal(1);
    expect(s.max).to.equal(100);
  });

  it('summary gives rounded p50, p99 and max', () => {
    const s = new LatencyStats();
    for (const x of [10.4, 20.6, 30.2, 4000.7]) s.add(x);
    expect(s.summary()).to.deep.equal({ p50: 21, p99: 4001, max: 4001 });
  });

  it('is all zero without samples', () => {
    const s = new LatencyStats();
    expect(s.percentile(50)).to.equal(0);
    expect(s.summary()).to.deep.equal({ p50: 0, p99: 0, max: 0 });
    expect(s.histogramObject()).to.deep.equal({});
  });

  it('puts samples in log2 buckets [2^i, 2^(i+1)) µs, with everything under 2 µs in the first', () => {
    const s = new LatencyStats();
    for (const x of [0, 0.5, 1, 1.99, 2, 3.9, 64, 127.9, 128, 1_000_000]) s.add(x);
    expect(s.histogram.slice(0, 8)).to.deep.equal([4, 2, 0, 0, 0, 0, 2, 1]);
    expect(s.histogram.length).to.equal(20); // 2^19 ≤ 1e6 < 2^20
    expect(s.histogram[19]).to.equal(1);
    expect(s.histogramObject()).to.deep.equal({
      '0-2us': 4,
      '2-4us': 2,
      '64-128us': 2,
      '128-256us': 1,
      '524288-1048576us': 1,
    });
  });
});

describe('Blocktime when fault reports overtake placements', () => {
  it('a vCPU faulting on another page ends its previous wait (it was running again)', () => {
    const bt = new Blocktime([100]);
    bt.fault(100, 0x1000, 0);
    // the page at 0x1000 was placed but its placement was not reported; the vCPU faults on the next page
    bt.fault(100, 0x2000, 300);
    bt.placed(0x2000, 400);
    expect(bt.vcpuMs(1000)).to.deep.equal([0.4]);
    expect(bt.totalMs(1000)).to.equal(0.4);
  });
});
