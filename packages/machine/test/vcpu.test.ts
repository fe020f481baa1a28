import { expect } from 'chai';
import { VcpuError } from '@livemig/machine';
import { MiB, destroyMachines, fixture, machine, sleep, total, waitFor } from './helpers.js';

describe('vCPUs', () => {
  afterEach(destroyMachines);

  it('run guest code and make progress on every vCPU', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 8 * MiB });
    expect(vm.progress()).to.deep.equal([0, 0]);
    await vm.start();
    expect(vm.running).to.equal(true);
    await waitFor(() => vm.progress().every((n) => n > 10), 2000, 'steps on both vCPUs');
  });

  it('report their kernel thread ids once started', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    expect(vm.vcpuTids).to.deep.equal([]);
    await vm.start();
    const tids = vm.vcpuTids;
    expect(tids).to.have.length(2);
    for (const t of tids) expect(t).to.be.a('number').greaterThan(0).and.not.equal(process.pid);
    expect(new Set(tids).size).to.equal(2);
  });

  it('stop() parks all vCPUs within 1 ms (median of 20) and nothing runs while stopped', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 16 * MiB });
    await vm.start();
    await sleep(20);
    const took: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      await vm.stop();
      took.push(performance.now() - t0);
      expect(vm.running).to.equal(false);
      const before = vm.progress();
      const ram = vm.blocks[0]!.bytes();
      const sample = [0, 4096, 8 * MiB, 16 * MiB - 4096].map((o) => ram[o]);
      await sleep(5);
      expect(vm.progress()).to.deep.equal(before);
      expect([0, 4096, 8 * MiB, 16 * MiB - 4096].map((o) => ram[o])).to.deep.equal(sample);
      vm.cont();
      await sleep(3);
    }
    took.sort((a, b) => a - b);
    expect(took[10], `stop latencies ${took.map((t) => t.toFixed(3)).join(' ')} ms`).to.be.lessThan(1);
  });

  it('parkedAt is when the first vCPU parked at the latest stop(): after stop() was called, before it resolved', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 8 * MiB });
    expect(vm.parkedAt).to.equal(null);
    await vm.start();
    await sleep(10);
    const t0 = performance.now();
    await vm.stop();
    const t1 = performance.now();
    const parked = vm.parkedAt!;
    expect(parked).to.be.a('number');
    expect(parked).to.be.within(t0, t1);
    vm.cont();
    await sleep(5);
    const t2 = performance.now();
    await vm.stop();
    expect(vm.parkedAt!, 'the latest stop').to.be.at.least(t2);
  });

  it('steppingSince() resolves with when the last vCPU took its first step: after start() was called, and the guest progresses from then on', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 8 * MiB });
    const t0 = performance.now();
    await vm.start();
    const since = await vm.steppingSince();
    expect(since).to.be.within(t0, performance.now());
    await waitFor(() => vm.progress().every((n) => n > 0), 2000, 'steps on both vCPUs');
  });

  it('steppingSince() before start() is refused', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
    let err: Error | null = null;
    await vm.steppingSince().catch((e: Error) => (err = e));
    expect(err!.message).to.contain('steppingSince() before start()');
  });

  it('cont() resumes every vCPU', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    await vm.start();
    await vm.stop();
    const parked = vm.progress();
    vm.cont();
    expect(vm.running).to.equal(true);
    await waitFor(() => vm.progress().every((n, i) => n > parked[i]!), 2000, 'steps after cont');
  });

  it('an idle guest does not burn a core yet still parks promptly', async () => {
    const vm = await machine({ guest: 'kv', vcpus: 2 });
    await vm.start();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(200);
    const used = (process.cpuUsage(cpu0).user + process.cpuUsage(cpu0).system) / 1000;
    const wall = performance.now() - t0;
    expect(used / wall, 'CPU share of two idle vCPUs').to.be.lessThan(0.5);
    const s0 = performance.now();
    await vm.stop();
    expect(performance.now() - s0).to.be.lessThan(20);
  });

  it('a crash in guest code is reported as a VcpuError, and stop() still completes', async () => {
    const vm = await machine({ guest: fixture('counter-guest.mjs'), vcpus: 2, config: { crashAfter: 1000 } });
    const seen: VcpuError[] = [];
    vm.on('vcpu-error', (e) => seen.push(e));
    await vm.start();
    await waitFor(() => vm.errors.length > 0, 5000, 'the vCPU error');
    expect(seen).to.have.length(1);
    expect(vm.errors[0]).to.be.instanceOf(VcpuError);
    expect(vm.errors[0]!.vcpu).to.equal(0);
    expect(vm.errors[0]!.message).to.match(/vCPU 0: .*guest crashed on purpose/);
    await vm.stop();
  });

  it('a failing guest init makes start() reject with the vCPU error', async () => {
    const vm = await machine({ guest: fixture('counter-guest.mjs'), config: { failInit: true } });
    let err: unknown;
    await vm.start().catch((e) => (err = e));
    expect(err).to.be.instanceOf(VcpuError);
    expect(String(err)).to.match(/init failed on purpose/);
    expect(vm.errors).to.have.length(1);
  });

  it('progress counts steps per vCPU and is monotonic', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
    await vm.start();
    const a = total(vm.progress());
    await sleep(20);
    const b = total(vm.progress());
    expect(b).to.be.greaterThan(a);
  });
});
