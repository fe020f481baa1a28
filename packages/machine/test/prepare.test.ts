import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import {
  HOST_PAGE_SIZE, UFFD_EVENT_PAGEFAULT, Userfaultfd, faultAddress, faultTid, mapAnonymous, msgEvent, watchFd,
} from '@livemig/uffd';
import { Machine, VcpuError, type AbSlot } from '@livemig/machine';
import { MiB, destroyMachines, fixture, machine, sleep, waitFor } from './helpers.js';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Waits until this host is nearly idle: two 50 ms windows in a row with at most 1 tick of CPU
 * busy (of /proc/stat), at most `maxMs`. Freshly spawned workers keep the cores busy for a while
 * after they are ready (under tsx each also boots the loader); on a small host that would be
 * measured as start latency. A destination prepares long before the last page arrives.
 */
async function quiesce(maxMs = 1000): Promise<void> {
  const busy = () => {
    const f = readFileSync('/proc/stat', 'utf8').slice(0, 200).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return f[0]! + f[1]! + f[2]! + f[5]! + f[6]!; // user nice system irq softirq
  };
  const end = performance.now() + maxMs;
  let quiet = 0;
  while (quiet < 2 && performance.now() < end) {
    const b0 = busy();
    await sleep(50);
    quiet = busy() - b0 <= 1 ? quiet + 1 : 0;
  }
}

describe('prepare(): vCPU workers spawned ahead of start', () => {
  afterEach(destroyMachines);

  it('parks every worker before init: no steps, tids known, RAM untouched, not started', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    await vm.prepare();
    expect(vm.prepared).to.equal(true);
    expect(vm.started).to.equal(false);
    expect(vm.running).to.equal(false);
    const tids = vm.vcpuTids;
    expect(tids).to.have.length(2);
    for (const t of tids) expect(t).to.be.greaterThan(0);
    await sleep(20);
    expect(vm.progress()).to.deep.equal([0, 0]);
    expect(vm.blocks[0]!.bytes().every((b) => b === 0)).to.equal(true);
    await vm.start();
    expect(vm.vcpuTids).to.deep.equal(tids); // the same threads run the guest
    await waitFor(() => vm.progress().every((n) => n > 10), 2000, 'steps after start');
  });

  it('is idempotent, and refused once start() was called', async () => {
    const vm = await machine({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
    const a = vm.prepare();
    expect(vm.prepare()).to.equal(a);
    await a;
    await vm.prepare();
    await vm.start();
    expect(() => vm.prepare()).to.throw(/before start/);
  });

  it('runs no guest init: a failing init surfaces only at start(), as a VcpuError', async () => {
    const vm = await machine({ guest: fixture('counter-guest.mjs'), vcpus: 2, config: { failInit: true } });
    await vm.prepare();
    expect(vm.errors).to.deep.equal([]);
    let err: unknown;
    await vm.start().catch((e) => (err = e));
    expect(err).to.be.instanceOf(VcpuError);
    expect(String(err)).to.match(/init failed on purpose/);
    expect(vm.errors.length).to.be.within(1, 2);
  });

  it('start({fresh: false}) after prepare() takes < 5 ms (median of 5, 2-vCPU ab) and the guest verifies', async () => {
    const ram = 8 * MiB;
    const src = await machine({ guest: 'ab', vcpus: 2, ram });
    await src.start();
    await waitFor(() => src.progress().every((n) => n > 200), 3000, 'ab progress');
    await src.stop();
    const saved = src.saveDevice();
    const before = (saved.state as AbSlot[]).map((s) => s.pos);
    // Timing on a shared host: a round whose median misses (other load) is retried, up to 3.
    const rounds: number[][] = [];
    while (rounds.length < 3 && !(rounds.length && median(rounds.at(-1)!) < 5)) {
      const dsts = await Promise.all(Array.from({ length: 5 }, () => machine({ guest: 'ab', vcpus: 2, ram })));
      await Promise.all(dsts.map((d) => d.prepare())); // like a destination: while pages still arrive
      await quiesce(); // a destination prepares long before the last page: let the new threads' boot work finish
      const took: number[] = [];
      for (const dst of dsts) {
        dst.blocks[0]!.bytes().set(src.blocks[0]!.bytes());
        dst.loadDevice(saved);
        const t0 = performance.now();
        await dst.start({ fresh: false });
        took.push(performance.now() - t0);
        expect(dst.running).to.equal(true);
        await dst.stop(); // the host may have 2 cores: keep this copy from competing with the next start
      }
      rounds.push(took);
      for (const dst of dsts) dst.cont();
      await waitFor(() => dsts.every((d) => d.progress().every((n) => n > 50)), 3000, 'progress on the copies');
      await Promise.all(dsts.map((d) => d.stop()));
      for (const dst of dsts) expect((dst.saveDevice().state as AbSlot[]).map((s) => s.pos)).to.not.deep.equal(before);
      for (const r of await Promise.all(dsts.map((d) => d.verify()))) expect(r).to.include({ checked: true, bad: 0 });
      await Promise.all(dsts.map((d) => d.destroy()));
    }
    const shown = rounds.map((r) => r.map((t) => t.toFixed(2)).join(' ')).join(' | ');
    expect(Math.min(...rounds.map(median)), `start after prepare (ms, by round): ${shown}`).to.be.lessThan(5);
  });

  it('touches no guest RAM before start (userfaultfd MISSING sees no fault), the vCPUs fault after', async function () {
    const length = 4 * MiB;
    const mem = mapAnonymous(length, { name: 'ram0' });
    const uffd = new Userfaultfd();
    uffd.register(mem.addr, mem.length, { missing: true }, 'ram0');
    const faults: { addr: number; tid: number }[] = [];
    const buf = Buffer.alloc(32 * 16);
    const watch = watchFd(uffd.fd, (err) => {
      if (err) throw err;
      let n: number;
      while ((n = uffd.readRaw(buf)) > 0) {
        for (let i = 0; i < n; i++) {
          if (msgEvent(buf, i) !== UFFD_EVENT_PAGEFAULT) continue;
          const addr = faultAddress(buf, i);
          faults.push({ addr, tid: faultTid(buf, i) });
          const page = addr - (addr % HOST_PAGE_SIZE);
          uffd.zeropage(page, HOST_PAGE_SIZE);
        }
      }
    });
    const vm = await Machine.create({ guest: 'ab', vcpus: 2, blocks: [mem] });
    try {
      await vm.prepare();
      await sleep(30);
      expect(faults, 'faults during prepare').to.deep.equal([]);
      await vm.start();
      await waitFor(() => faults.length >= 2, 3000, 'faults from the running vCPUs');
      const tids = new Set(vm.vcpuTids);
      for (const f of faults) {
        expect(tids.has(f.tid), `fault tid ${f.tid}`).to.equal(true);
        expect(f.addr - mem.addr).to.be.within(0, length - 1);
      }
      await vm.stop();
    } finally {
      await vm.destroy();
      watch.close();
      uffd.unregister(mem.addr, mem.length);
      uffd.close();
      mem.unmap();
    }
  });

  it('destroy() works on a prepared machine that never started', async () => {
    const vm = await Machine.create({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    await vm.prepare();
    const mapping = vm.blocks[0]!.mapping;
    const t0 = performance.now();
    await vm.destroy();
    expect(performance.now() - t0).to.be.lessThan(1000);
    expect(mapping.mapped).to.equal(false);
    expect(vm.destroyed).to.equal(true);
    expect(vm.errors).to.deep.equal([]);
    expect(() => vm.start()).to.throw(/destroyed/);
  });

  it('destroy() while prepare() is in flight ends it cleanly', async () => {
    const vm = await Machine.create({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    const p = vm.prepare().catch((e: unknown) => e);
    await vm.destroy();
    await p;
    expect(vm.destroyed).to.equal(true);
  });

  it('when one vCPU fails to boot, prepare() lets the others finish importing their guest before it ends them (a worker terminated mid-import can abort the process)', async () => {
    // The main thread imports the guest once as the machine is made (400 ms); vCPU 0's worker
    // then fails its import at once, vCPU 1's takes 400 ms.
    const vm = await Machine.create({ guest: fixture('slow-import-guest.mjs'), vcpus: 2, ram: 64 * 1024 });
    try {
      const t0 = performance.now();
      const err = await vm.prepare().then(() => null, (e: unknown) => e);
      const took = performance.now() - t0;
      expect(err).to.be.instanceOf(VcpuError);
      expect((err as Error).message).to.match(/import failed on purpose/);
      expect(took, 'prepare() waited for vCPU 1 to boot').to.be.at.least(300);
      expect(took).to.be.lessThan(5000);
    } finally {
      await vm.destroy();
    }
  });

  it('a prepared kv guest starts its HTTP service after release and serves', async () => {
    const vm = await machine({ guest: 'kv', vcpus: 2 });
    await vm.prepare();
    expect(vm.hostInfo).to.deep.equal({});
    await vm.start();
    const url = vm.hostInfo.url as string;
    expect((await fetch(`${url}/kv/k`, { method: 'PUT', body: 'v' })).status).to.equal(201);
    expect(await (await fetch(`${url}/kv/k`)).text()).to.equal('v');
  });
});
