import { expect } from 'chai';
import { AB_PAGE, abShare, decodeDevice, encodeDevice, type AbSlot } from '@livemig/machine';
import { MiB, destroyMachines, machine, sleep, waitFor } from './helpers.js';

/** A machine whose ab guest has swept its RAM for a while, then stopped. */
async function sweptAb(opts: { vcpus?: number; ram?: number; config?: Record<string, unknown> } = {}) {
  const vm = await machine({ guest: 'ab', vcpus: opts.vcpus ?? 2, ram: opts.ram ?? 8 * MiB, config: opts.config });
  await vm.start();
  await waitFor(() => vm.progress().every((n) => n > 200), 3000, 'ab progress');
  await vm.stop();
  return vm;
}

describe('ab guest', () => {
  afterEach(destroyMachines);

  it('verify() passes on a guest that ran and was stopped', async () => {
    const vm = await sweptAb();
    const r = await vm.verify();
    expect(r).to.deep.equal({ checked: true, pages: (8 * MiB) / AB_PAGE, bad: 0 });
  });

  it('verify() stops a running guest first and leaves it stopped', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    await vm.start();
    await sleep(10);
    const r = await vm.verify();
    expect(r.bad).to.equal(0);
    expect(vm.running).to.equal(false);
  });

  it('each share holds first bytes v+1…v+1, v…v with the step at the vCPU position', async () => {
    const vm = await sweptAb({ vcpus: 2 });
    const ram = vm.blocks[0]!.bytes();
    const slots = vm.saveDevice().state as AbSlot[];
    slots.forEach((slot, i) => {
      const share = abShare({ start: 0, end: 8 * MiB }, i, 2);
      for (let p = share.start; p < share.end; p += AB_PAGE) {
        expect(ram[p]).to.equal(p < slot.pos ? slot.value : (slot.value + 255) & 255);
      }
    });
  });

  it('detects a first byte changed in the middle of a share and reports the first bad offset', async () => {
    const vm = await sweptAb({ vcpus: 2 });
    const ram = vm.blocks[0]!.bytes();
    const at = 2 * MiB + 17 * AB_PAGE; // inside vCPU 0's share [0, 4 MiB)
    ram[at] = (ram[at]! + 100) & 255;
    const r = await vm.verify();
    expect(r.checked).to.equal(true);
    expect(r.bad).to.equal(1);
    expect(r.firstBad).to.include({ block: 'ram0', offset: at });
    expect(r.firstBad!.detail).to.match(/first byte/);
  });

  it('detects a non-zero byte inside a page, at its exact offset', async () => {
    const vm = await sweptAb({ vcpus: 2 });
    const at = 5 * MiB + 3 * AB_PAGE + 1234; // inside vCPU 1's share
    vm.blocks[0]!.bytes()[at] = 0x5a;
    const r = await vm.verify();
    expect(r.bad).to.equal(1);
    expect(r.firstBad).to.include({ block: 'ram0', offset: at });
  });

  it('reports RAM that does not match the saved vCPU positions (a lost page copy)', async () => {
    const src = await sweptAb({ vcpus: 1, ram: 4 * MiB });
    const dst = await machine({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
    dst.loadDevice(src.saveDevice()); // device state arrives, RAM does not
    const r = await dst.verify();
    expect(r.bad).to.be.greaterThan(0);
    expect(r.firstBad!.offset).to.be.lessThan(4 * MiB);
  });

  it('device state round trip (msgpack): a copy resumes mid-sweep and the pattern stays valid', async () => {
    const src = await sweptAb({ vcpus: 2, ram: 8 * MiB });
    const saved = src.saveDevice();
    const wire = encodeDevice(saved);
    expect(wire).to.be.instanceOf(Uint8Array);

    const dst = await machine({ guest: 'ab', vcpus: 2, ram: 8 * MiB });
    dst.blocks[0]!.bytes().set(src.blocks[0]!.bytes()); // what migration does, while dst is not running
    dst.loadDevice(decodeDevice(wire));
    await dst.start({ fresh: false });
    const before = (saved.state as AbSlot[]).map((s) => s.pos);
    await waitFor(() => dst.progress().every((n) => n > 50), 3000, 'progress on the copy');
    await dst.stop();
    const after = dst.saveDevice().state as AbSlot[];
    expect(after.map((s) => s.pos)).to.not.deep.equal(before);
    expect(await dst.verify()).to.include({ checked: true, bad: 0 });
  });

  it('the sweep option restricts writes to its range, divided among the vCPUs', async () => {
    const sweep = { start: 1 * MiB, end: 3 * MiB };
    const vm = await sweptAb({ vcpus: 2, ram: 4 * MiB, config: { sweep } });
    const ram = vm.blocks[0]!.bytes();
    const touched = (from: number, to: number) => {
      for (let p = from; p < to; p += AB_PAGE) if (ram[p] !== 0) return true;
      return false;
    };
    expect(touched(0, sweep.start)).to.equal(false);
    expect(touched(sweep.end, 4 * MiB)).to.equal(false);
    expect(touched(sweep.start, sweep.start + MiB)).to.equal(true); // vCPU 0's share
    expect(touched(sweep.start + MiB, sweep.end)).to.equal(true); // vCPU 1's share
    const slots = vm.saveDevice().state as AbSlot[];
    expect(slots[0]!.pos).to.be.within(sweep.start, sweep.start + MiB - AB_PAGE);
    expect(slots[1]!.pos).to.be.within(sweep.start + MiB, sweep.end - AB_PAGE);
    expect((await vm.verify()).bad).to.equal(0);
  });

  it('a write outside the sweep is corruption', async () => {
    const vm = await sweptAb({ vcpus: 1, ram: 4 * MiB, config: { sweep: { start: 1 * MiB, end: 2 * MiB } } });
    vm.blocks[0]!.bytes()[3 * MiB] = 1;
    const r = await vm.verify();
    expect(r.bad).to.equal(1);
    expect(r.firstBad).to.include({ offset: 3 * MiB });
  });

  it('rejects a sweep that is unaligned or outside RAM', async () => {
    for (const sweep of [{ start: 100, end: 4096 * 4 }, { start: 0, end: 8 * MiB }, { start: MiB, end: MiB }]) {
      let err: unknown;
      await machine({ guest: 'ab', ram: 4 * MiB, config: { sweep } }).catch((e) => (err = e));
      expect(err, JSON.stringify(sweep)).to.be.instanceOf(RangeError);
    }
  });

  it('refuses device state from another guest or vCPU count', async () => {
    const src = await sweptAb({ vcpus: 2, ram: 4 * MiB });
    const saved = src.saveDevice();
    const other = await machine({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
    expect(() => other.loadDevice(saved)).to.throw(/2 vCPUs/);
    const kv = await machine({ guest: 'kv', vcpus: 2 });
    expect(() => kv.loadDevice(saved)).to.throw(/guest ab/);
  });
});
