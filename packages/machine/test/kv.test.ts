import { expect } from 'chai';
import { KV_BLOCK, type Machine } from '@livemig/machine';
import { destroyMachines, machine, sleep } from './helpers.js';

async function kvMachine(vcpus = 2): Promise<{ vm: Machine; url: string }> {
  const vm = await machine({ guest: 'kv', vcpus });
  await vm.start();
  return { vm, url: vm.hostInfo.url as string };
}

describe('kv guest', () => {
  afterEach(destroyMachines);

  it('serves PUT, GET and DELETE on /kv/<key> over HTTP', async () => {
    const { url } = await kvMachine();
    expect((await fetch(`${url}/kv/alpha`, { method: 'PUT', body: 'one' })).status).to.equal(201);
    const got = await fetch(`${url}/kv/alpha`);
    expect(got.status).to.equal(200);
    expect(await got.text()).to.equal('one');
    expect((await fetch(`${url}/kv/alpha`, { method: 'PUT', body: 'two, longer than one' })).status).to.equal(204);
    expect(await (await fetch(`${url}/kv/alpha`)).text()).to.equal('two, longer than one');
    expect((await fetch(`${url}/kv/alpha`, { method: 'DELETE' })).status).to.equal(204);
    expect((await fetch(`${url}/kv/alpha`)).status).to.equal(404);
    expect((await fetch(`${url}/kv/alpha`, { method: 'DELETE' })).status).to.equal(404);
  });

  it('keeps binary values and URL-encoded keys intact', async () => {
    const { url } = await kvMachine(1);
    const value = new Uint8Array(70_000).map((_, i) => (i * 31) & 255);
    const key = encodeURIComponent('a key/with ünïcode');
    expect((await fetch(`${url}/kv/${key}`, { method: 'PUT', body: value })).status).to.equal(201);
    const got = new Uint8Array(await (await fetch(`${url}/kv/${key}`)).arrayBuffer());
    expect(Buffer.compare(got, value)).to.equal(0);
  });

  it('stores the data in guest RAM, not in the host', async () => {
    const { vm, url } = await kvMachine(1);
    await fetch(`${url}/kv/needle`, { method: 'PUT', body: 'haystack-marker-1234' });
    await vm.stop();
    const ram = Buffer.from(vm.block(KV_BLOCK).bytes());
    expect(ram.indexOf('haystack-marker-1234')).to.be.greaterThan(0);
  });

  it('rejects other paths and methods', async () => {
    const { url } = await kvMachine(1);
    expect((await fetch(`${url}/other`)).status).to.equal(404);
    expect((await fetch(`${url}/kv/x`, { method: 'POST', body: 'x' })).status).to.equal(405);
  });

  it('requests made while the guest is stopped are served after cont()', async () => {
    const { vm, url } = await kvMachine();
    await vm.stop();
    let settled = false;
    const put = fetch(`${url}/kv/later`, { method: 'PUT', body: 'v' }).then((r) => {
      settled = true;
      return r.status;
    });
    await sleep(100);
    expect(settled, 'answered while stopped').to.equal(false);
    vm.cont();
    expect(await put).to.equal(201);
    expect(await (await fetch(`${url}/kv/later`)).text()).to.equal('v');
  });

  it('verify() finds a consistent table after many writes and deletes', async () => {
    const { vm, url } = await kvMachine();
    for (let i = 0; i < 120; i++) await fetch(`${url}/kv/k${i}`, { method: 'PUT', body: 'x'.repeat(i * 7) });
    for (let i = 0; i < 120; i += 3) await fetch(`${url}/kv/k${i}`, { method: 'DELETE' });
    for (let i = 0; i < 120; i += 5) await fetch(`${url}/kv/k${i}`, { method: 'PUT', body: 'y'.repeat(i * 11) });
    const r = await vm.verify();
    expect(r).to.include({ checked: true, bad: 0 });
    expect(r.detail).to.equal(`${120 - 40 + 8} entries`);
  });

  it('verify() reports a corrupted record with its offset', async () => {
    const { vm, url } = await kvMachine(1);
    await fetch(`${url}/kv/victim`, { method: 'PUT', body: 'payload' });
    await vm.stop();
    const ram = Buffer.from(vm.block(KV_BLOCK).bytes().buffer, vm.block(KV_BLOCK).bytes().byteOffset);
    const at = ram.indexOf('victim');
    ram[at] = 'V'.charCodeAt(0); // the key no longer matches its slot's hash
    const r = await vm.verify();
    expect(r.bad).to.be.greaterThan(0);
    expect(r.firstBad!.block).to.equal(KV_BLOCK);
    expect(r.firstBad!.detail).to.match(/hash/);
  });

  it('answers 503 to requests still pending when the machine is destroyed', async () => {
    const { vm, url } = await kvMachine(1);
    await vm.stop();
    const pending = fetch(`${url}/kv/x`).then((r) => r.status, () => 'network error');
    await sleep(20);
    await vm.destroy();
    expect(await pending).to.be.oneOf([503, 'network error']);
  });
});
