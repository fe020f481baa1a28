import { expect } from 'chai';
import { Machine } from '@livemig/machine';
import { MiB, destroyMachines, machine, sleep } from './helpers.js';

describe('Machine lifecycle', () => {
  afterEach(destroyMachines);

  it('create() makes RAM but runs nothing until start()', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    expect(vm.started).to.equal(false);
    expect(vm.running).to.equal(false);
    await sleep(10);
    expect(vm.progress()).to.deep.equal([0]);
    expect(vm.blocks[0]!.bytes().every((b) => b === 0)).to.equal(true);
  });

  it('ab is the default guest with 1 vCPU', async () => {
    const vm = await machine({});
    expect(vm.kind).to.equal('ab');
    expect(vm.vcpus).to.equal(1);
    expect(vm.layout.map((b) => b.name)).to.deep.equal(['ram0']);
  });

  it('saveDevice() refuses a running machine', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    await vm.start();
    expect(() => vm.saveDevice()).to.throw(/stopped/);
  });

  it('loadDevice() refuses a started machine', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    await vm.start();
    await vm.stop();
    const d = vm.saveDevice();
    expect(() => vm.loadDevice(d)).to.throw(/before start/);
  });

  it('start({fresh: false}) needs loaded device state', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    expect(() => vm.start({ fresh: false })).to.throw(/loadDevice/);
  });

  it('declareUnused() records page-aligned ranges, merged per block', async () => {
    const vm = await machine({ guest: 'ab', ram: 4 * MiB });
    vm.declareUnused('ram0', 2 * MiB, 4096);
    vm.declareUnused('ram0', 0, 8192);
    vm.declareUnused('ram0', 8192, 4096);
    expect(vm.unusedRanges()).to.deep.equal([
      { block: 'ram0', offset: 0, length: 12288 },
      { block: 'ram0', offset: 2 * MiB, length: 4096 },
    ]);
    expect(() => vm.declareUnused('ram0', 100, 4096)).to.throw(/aligned/);
    expect(() => vm.declareUnused('ram0', 4 * MiB, 4096)).to.throw(/outside/);
    expect(() => vm.declareUnused('nope', 0, 4096)).to.throw(/no RAM block/);
  });

  it('destroy() terminates the vCPUs and unmaps the RAM it created', async () => {
    const vm = await Machine.create({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    await vm.start();
    const mapping = vm.blocks[0]!.mapping;
    await vm.destroy();
    expect(mapping.mapped).to.equal(false);
    expect(vm.destroyed).to.equal(true);
    expect(() => vm.cont()).to.throw(/destroyed/);
  });
});
