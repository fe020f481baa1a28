import { expect } from 'chai';
import { resolveGuest } from '@livemig/machine';
import { destroyMachines, fixture, machine, waitFor } from './helpers.js';

describe('user guests', () => {
  afterEach(destroyMachines);

  it('resolveGuest() loads a guest module from a path, like the built-ins', async () => {
    const g = await resolveGuest(fixture('counter-guest.mjs'));
    expect(g.kind).to.equal('counter');
    expect(g.url).to.match(/^file:.*counter-guest\.mjs$/);
    expect((await resolveGuest('ab')).kind).to.equal('ab');
    expect((await resolveGuest('kv')).kind).to.equal('kv');
  });

  it('a module path runs as a guest: layout, vCPU steps, device state, verify and host services', async () => {
    const vm = await machine({ guest: fixture('counter-guest.mjs'), vcpus: 2 });
    expect(vm.kind).to.equal('counter');
    expect(vm.layout.map((b) => [b.name, b.length])).to.deep.equal([['mem', 65536]]);
    await vm.start();
    expect(vm.hostInfo).to.deep.equal({ guest: 'counter', vcpus: 2 });
    await waitFor(() => vm.progress().every((n) => n > 100), 3000, 'counter progress');
    await vm.stop();
    const device = vm.saveDevice();
    const slots = device.state as Array<{ n: number }>;
    expect(slots.map((s) => s.n)).to.deep.equal(vm.progress());
    expect(await vm.verify()).to.deep.equal({ checked: true, pages: 1, bad: 0 });
    vm.blocks[0]!.bytes()[8] ^= 1;
    expect((await vm.verify()).firstBad).to.include({ block: 'mem', offset: 8 });
  });

  it('a module that does not export a GuestDefinition is refused with a clear error', async () => {
    let err: unknown;
    await machine({ guest: fixture('not-a-guest.mjs') }).catch((e) => (err = e));
    expect(String(err)).to.match(/vcpu\.step/);
  });
});
