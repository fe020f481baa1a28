import { expect } from 'chai';
import { mapAnonymous, HOST_PAGE_SIZE } from '@livemig/uffd';
import { RamBlock, createRamBlock, viewBlocks } from '@livemig/machine';
import { MiB, destroyMachines, machine, waitFor } from './helpers.js';

describe('RAM blocks', () => {
  afterEach(destroyMachines);

  it('an anonymous block is named, page-sized, zero-filled and owns its mapping', () => {
    const b = createRamBlock({ name: 'ram0', length: 2 * MiB, backing: 'anonymous' });
    try {
      expect(b.name).to.equal('ram0');
      expect(b.length).to.equal(2 * MiB);
      expect(b.pageSize).to.equal(HOST_PAGE_SIZE);
      expect(b.backing).to.equal('anonymous');
      expect(b.owned).to.equal(true);
      expect(b.addr % b.pageSize).to.equal(0);
      expect(b.bytes().every((x) => x === 0)).to.equal(true);
    } finally {
      b.unmap();
    }
    expect(b.mapping.mapped).to.equal(false);
  });

  it('a memfd block has a file descriptor behind it', () => {
    const b = createRamBlock({ name: 'vram', length: 1 * MiB, backing: 'memfd' });
    try {
      expect(b.backing).to.equal('memfd');
      expect(b.mapping.fd).to.be.greaterThanOrEqual(0);
    } finally {
      b.unmap();
    }
  });

  it('views are zero-copy: a write through one is seen through another', () => {
    const b = createRamBlock({ name: 'ram0', length: 64 * 1024 });
    try {
      b.bytes(4096, 16)[3] = 0xab;
      expect(new Uint8Array(b.view())[4096 + 3]).to.equal(0xab);
      expect(viewBlocks([b.info()]).ram0![4099]).to.equal(0xab);
    } finally {
      b.unmap();
    }
  });

  it('rejects a length that is not a multiple of the page size, and bad names', () => {
    expect(() => createRamBlock({ name: 'ram0', length: 5000 })).to.throw(RangeError);
    expect(() => createRamBlock({ name: 'has space', length: 4096 })).to.throw(RangeError);
  });

  it('an adopted block uses the caller\'s memory and never unmaps it', () => {
    const m = mapAnonymous(1 * MiB, { name: 'caller' });
    try {
      const b = RamBlock.adopt('ram0', m);
      expect(b.addr).to.equal(m.addr);
      expect(b.owned).to.equal(false);
      b.bytes()[0] = 7;
      expect(m.bytes()[0]).to.equal(7);
      b.unmap();
      expect(m.mapped).to.equal(true);
    } finally {
      m.unmap();
    }
  });

  it('a machine runs its guest in adopted memory and leaves it mapped on destroy', async () => {
    const m = mapAnonymous(4 * MiB, { name: 'ram0' });
    try {
      const vm = await machine({ guest: 'ab', blocks: [m] });
      expect(vm.layout).to.deep.equal([{ name: 'ram0', length: 4 * MiB, pageSize: HOST_PAGE_SIZE, addr: m.addr }]);
      await vm.start();
      await waitFor(() => vm.progress()[0]! > 10, 2000, 'ab progress');
      await vm.stop();
      expect(m.bytes()[0]).to.be.greaterThan(0);
      await vm.destroy();
      expect(m.mapped).to.equal(true);
    } finally {
      m.unmap();
    }
  });

  it('a machine refuses adopted blocks that do not match the guest layout', async () => {
    const m = mapAnonymous(1 * MiB, { name: 'other' });
    try {
      let err: unknown;
      await machine({ guest: 'ab', blocks: [m] }).catch((e) => (err = e));
      expect(String(err)).to.match(/needs block ram0/);
    } finally {
      m.unmap();
    }
  });

  it('a machine creates its RAM from the guest layout, memfd-backed on request', async () => {
    const vm = await machine({ guest: 'ab', ram: 8 * MiB, backing: 'memfd' });
    expect(vm.blocks.map((b) => [b.name, b.length, b.backing])).to.deep.equal([['ram0', 8 * MiB, 'memfd']]);
    expect(vm.layout[0]!.addr).to.equal(vm.blocks[0]!.addr);
  });
});
