/**
 * Postcopy recovery end to end: `migrate send` and `migrate recv` as two real processes, a
 * fault-injecting TCP proxy between them that cuts, freezes or breaks their connections in
 * the middle of postcopy, and the control sockets to watch and drive them. Nothing may be
 * lost: the guest verifies with 0 bad pages after every recovery.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MsgType, newMigrationId } from '@livemig/protocol';
import { connectChannel, parseEndpoint } from '@livemig/transport';
import { createCertificates } from '@livemig/transport/certs';
import { freePort, migrate, waitHttp, type MigrateProcess } from './support/procs.js';
import { FaultProxy, type ProxyOptions } from './support/proxy.js';
import { QmpClient } from './support/qmp.js';

/** Postcopy of a 256 MiB guest at 64 MB/s lasts about 4 s: long enough to break it in the middle. */
// Whole pages (--no-trim-pages): trimmed, the ab guest's pages would go at ~60× the rate limit.
const SLOW_POSTCOPY = ['--ram', '256M', '--vcpus', '2', '--migrate-after', '200', '--postcopy', '--postcopy-after', '200', '--max-postcopy-bandwidth', '64M', '--no-trim-pages'];

describe('postcopy recovery between two processes', function () {
  this.timeout(120_000);

  let dir: string;
  let procs: MigrateProcess[] = [];
  let clients: QmpClient[] = [];
  let proxies: FaultProxy[] = [];

  const start = (...args: string[]): MigrateProcess => {
    const p = migrate(...args);
    procs.push(p);
    return p;
  };
  const control = async (p: MigrateProcess, sock: string): Promise<QmpClient> => {
    const c = await QmpClient.forProcess(p, sock);
    clients.push(c);
    return c;
  };
  const proxy = async (target: string, opts: Omit<ProxyOptions, 'target'> = {}): Promise<FaultProxy> => {
    const p = await FaultProxy.start({ target, ...opts });
    proxies.push(p);
    return p;
  };
  const paused = (c: QmpClient): Promise<Record<string, any>> => c.waitStatus((r) => r.status === 'postcopy-paused', 15_000);

  /** recv and send (through a proxy) with control sockets; resolves once postcopy runs. */
  async function startPair(sendArgs: string[], recvArgs: string[] = [], proxyOpts: Omit<ProxyOptions, 'target'> = {}) {
    const rsock = path.join(dir, 'recv.sock');
    const ssock = path.join(dir, 'send.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--control', rsock, '--run-after', '200', '--json', ...recvArgs);
    const addr = await recv.listening();
    const px = await proxy(addr, proxyOpts);
    const send = start('send', '--to', px.address, '--control', ssock, '--json', ...sendArgs);
    const [rc, sc] = await Promise.all([control(recv, rsock), control(send, ssock)]);
    await sc.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'postcopy-active', 30_000);
    return { recv, send, px, rc, sc };
  }

  async function finish(send: MigrateProcess, recv: MigrateProcess) {
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    return { sr: send.report(), rr: recv.report() };
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-recovery-'));
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    for (const p of proxies) p.close();
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    procs = [];
    clients = [];
    proxies = [];
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('pauses both ends when every connection is cut mid-postcopy, and recovers through migrate-recover and migrate-resume: 0 bad pages', async () => {
    const { recv, send, px, rc, sc } = await startPair(SLOW_POSTCOPY);
    await sleep(300);
    px.cut();
    const [sp, rp] = await Promise.all([paused(sc), paused(rc)]);
    expect(sp['paused-reason']).to.be.a('string');
    expect(rp['paused-reason']).to.be.a('string');
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    await sc.ok('migrate-resume', { to: listen });
    const { sr, rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, pages: 65536, bad: 0 });
    expect(sr.recoveries).to.equal(1);
    expect(rr.recoveries).to.equal(1);
    expect(sr.pausedMs).to.be.greaterThan(0);
    expect(rr.pausedMs).to.be.greaterThan(0);
    expect(sc.events.map((e) => e.event)).to.include.members(['MIGRATION_PAUSED', 'MIGRATION_RESUMED']);
  });

  it('recovers by itself with --auto-recover on both ends: 0 bad pages', async () => {
    const { recv, send, px } = await startPair([...SLOW_POSTCOPY, '--auto-recover'], ['--auto-recover']);
    await sleep(300);
    px.cut();
    const { sr, rr } = await finish(send, recv).catch((e: Error) => {
      throw new Error(`${e.message}\nSEND ${send.stderr.slice(-4000)}\nRECV ${recv.stderr.slice(-4000)}`);
    });
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(sr.recoveries).to.be.at.least(1);
    expect(rr.recoveries).to.be.at.least(1);
  });

  it('pauses both ends on migrate-pause at the destination, and recovers: 0 bad pages', async () => {
    const { recv, send, rc, sc } = await startPair(SLOW_POSTCOPY);
    await sleep(300);
    await rc.ok('migrate-pause');
    const [, rp] = await Promise.all([paused(sc), paused(rc)]);
    expect(rp['paused-reason']).to.match(/migrate-pause/);
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    await sc.ok('migrate-resume', { to: listen });
    const { sr, rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(sr.recoveries).to.equal(1);
    expect(rr.recoveries).to.equal(1);
  });

  it('recovers with the preempt channel on and TLS on every channel, re-establishing both: 0 bad pages', async () => {
    const certs = path.join(dir, 'certs');
    createCertificates({ dir: certs, hosts: ['127.0.0.1'] });
    const tls = ['--tls-dir', certs];
    const { recv, send, px } = await startPair([...SLOW_POSTCOPY, ...tls, '--preempt', '--auto-recover'], [...tls, '--auto-recover']);
    await sleep(300);
    px.cut();
    const { sr, rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(rr.recoveries).to.be.at.least(1);
    // Main and preempt before the cut, and again after: at least four connections.
    expect(px.connections).to.be.at.least(4);
    expect(sr.postcopy.preempt.requests).to.be.greaterThan(0);
  });

  it('detects a silent dead link within 5 s on both ends (keepalive), then recovers', async () => {
    const { recv, send, px, rc, sc } = await startPair(SLOW_POSTCOPY);
    await sleep(300);
    const t0 = Date.now();
    px.freeze();
    await Promise.all([paused(sc), paused(rc)]);
    expect(Date.now() - t0).to.be.at.most(5500);
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    await sc.ok('migrate-resume', { to: listen });
    const { rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
  });

  it('stays paused through a failed reconnect and a cut recovery handshake, and a further recovery completes', async () => {
    // Connection 0 is the main channel; 1 is the first recovery attempt: cut after 10 bytes of its hello.
    const { recv, send, px, rc, sc } = await startPair(SLOW_POSTCOPY, [], { cutAfter: (i: number) => (i === 1 ? 10 : undefined) });
    await sleep(300);
    px.cut();
    await Promise.all([paused(sc), paused(rc)]);
    // A failed reconnect first: nothing listens at that address yet.
    const nowhere = `127.0.0.1:${await freePort()}`;
    const refusedResume = await sc.execute('migrate-resume', { to: nowhere });
    expect(refusedResume.error?.desc).to.match(/recovery failed.*(ECONNREFUSED|connect)/);
    expect((await sc.ok('query-migrate')).status).to.equal('postcopy-paused');
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    const retry = await proxy(listen, { cutAfter: (i: number) => (i === 0 ? 10 : undefined) });
    const failed = await sc.execute('migrate-resume', { to: retry.address });
    expect(failed.error?.desc).to.match(/recovery failed/);
    await Promise.all([paused(sc), paused(rc)]);
    await sc.ok('migrate-resume', { to: retry.address });
    const { sr, rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(sr.recoveries).to.equal(1);
  });

  it('refuses a reconnection with the wrong migration UUID and stays paused for the right one', async () => {
    const { recv, send, px, rc, sc } = await startPair(SLOW_POSTCOPY);
    await sleep(300);
    px.cut();
    await Promise.all([paused(sc), paused(rc)]);
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    // The refusal comes as an ERROR frame right after the destination's hello.
    const ch = await connectChannel({ endpoint: parseEndpoint(listen), role: 'main', uuid: newMigrationId(), timeoutMs: 5000 });
    const refusal = await new Promise<string>((resolve) => {
      ch.setHandler((f) => {
        if (f.msg.type === MsgType.ERROR) resolve(f.msg.reason);
      });
      void ch.whenClosed().then((e) => resolve(e?.message ?? 'closed without a reason'));
    });
    ch.close();
    expect(refusal).to.match(/migration UUID mismatch/);
    expect((await rc.ok('query-migrate')).status).to.equal('postcopy-paused');
    await sc.ok('migrate-resume', { to: listen });
    const { rr } = await finish(send, recv);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
  });

  it('loses no kv key across migrate-pause and resume while the guest serves requests', async () => {
    const srcPort = await freePort();
    const dstPort = await freePort();
    const rsock = path.join(dir, 'recv.sock');
    const ssock = path.join(dir, 'send.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--control', rsock, '--guest-port', String(dstPort), '--run-after', '500', '--json');
    const addr = await recv.listening();
    const send = start(
      'send', '--to', addr, '--control', ssock, '--guest', 'kv', '--ram', '256M', '--vcpus', '1', '--guest-port', String(srcPort),
      '--migrate-after', '5000', '--postcopy', '--postcopy-after', '0', '--max-postcopy-bandwidth', '8M', '--no-trim-pages', '--json',
    );
    // 40 MB of values: at 8 MB/s postcopy lasts about 5 s.
    const keys = Array.from({ length: 48 }, (_, i) => [`k${i}`, `v${i}-${String.fromCharCode(97 + (i % 26)).repeat(800_000 + i * 97)}`] as const);
    await waitHttp(srcPort);
    for (const [k, v] of keys) {
      const r = await fetch(`http://127.0.0.1:${srcPort}/kv/${k}`, { method: 'PUT', body: v });
      expect(r.status).to.be.oneOf([200, 201]);
    }
    const [rc, sc] = await Promise.all([control(recv, rsock), control(send, ssock)]);
    await sc.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'postcopy-active', 30_000);
    await waitHttp(dstPort);
    await sc.ok('migrate-pause');

    await Promise.all([paused(sc), paused(rc)]);
    // Requests while paused: the guest answers those whose pages are here, the others wait.
    const reads = keys.map(async ([k, v]) => {
      const r = await fetch(`http://127.0.0.1:${dstPort}/kv/${k}`);
      expect(r.status, k).to.equal(200);
      expect(await r.text(), k).to.equal(v);
    });
    await sleep(300);
    const { listen } = await rc.ok('migrate-recover', { listen: '127.0.0.1:0' });
    await sc.ok('migrate-resume', { to: listen });
    await Promise.all(reads);
    const { sr, rr } = await finish(send, recv);
    expect(sr.recoveries).to.equal(1);
    expect(rr.mode).to.equal('postcopy');
  });
});
