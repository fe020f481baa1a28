/**
 * The control socket end to end (`--control PATH`): `migrate send` and `migrate recv` as two
 * real processes over TCP on loopback, driven and watched through their QMP-style control
 * sockets: migrate-cancel, migrate-set-parameters, migrate-start-postcopy, query-migrate and
 * the MIGRATION / MIGRATION_PASS events.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { migrate, type MigrateProcess } from './support/procs.js';
import { QmpClient } from './support/qmp.js';

const MiB = 1024 * 1024;

describe('control socket (--control) between two processes', function () {
  this.timeout(60_000);

  let dir: string;
  let procs: MigrateProcess[] = [];
  let clients: QmpClient[] = [];

  const start = (...args: string[]): MigrateProcess => {
    const p = migrate(...args);
    procs.push(p);
    return p;
  };

  /** Waits for `p` to announce its control socket, then connects to it. */
  const control = async (p: MigrateProcess, sock: string): Promise<QmpClient> => {
    const c = await QmpClient.forProcess(p, sock);
    clients.push(c);
    return c;
  };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-ctl-e2e-'));
  });

  afterEach(() => {
    for (const c of clients) c.close();
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.kill();
    clients = [];
    procs = [];
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('migrate-cancel during precopy: the source reports cancelled and its guest runs on and verifies; the destination fails cleanly', async () => {
    const sock = path.join(dir, 'src.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    const send = start('send', '--to', addr, '--ram', '512M', '--vcpus', '1', '--migrate-after', '200', '--max-bandwidth', '50M', '--no-trim-pages', '--control', sock, '--json');
    const qmp = await control(send, sock);
    expect(fs.lstatSync(sock).mode & 0o777).to.equal(0o600);
    await qmp.waitStatus((r) => r.status === 'active');
    await sleep(300);
    // Postcopy was not enabled: refused, and the migration goes on.
    const pc = await qmp.execute('migrate-start-postcopy');
    expect(pc.error?.class).to.equal('GenericError');
    expect(pc.error?.desc).to.match(/postcopy was not enabled/);
    expect((await qmp.ok('query-migrate')).status).to.equal('active');

    expect(await qmp.ok('migrate-cancel')).to.deep.equal({});
    await qmp.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'cancelled');
    expect(qmp.statuses()).to.deep.equal(['setup', 'active', 'cancelling', 'cancelled']);

    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(1);
    const sr = send.report();
    expect(sr.status).to.equal('cancelled');
    expect(sr.error).to.match(/migrate-cancel/);
    expect(sr.sourceGuest).to.deep.equal({ running: true });
    expect(sr.integrity).to.include({ checked: true, bad: 0 });
    expect(r.code, recv.stderr).to.equal(1);
    expect(recv.report().status).to.equal('failed');
    expect(recv.stderr).to.match(/migrate recv: migration failed: /);
    expect(recv.stderr + send.stderr).to.not.match(/\n\s+at /);
    await qmp.closed;
    expect(fs.existsSync(sock), 'socket file removed at the end').to.equal(false);
  });

  it('migrate-set-parameters max-bandwidth 0 lifts the rate limit and precopy completes; query-migrate has the figures before', async () => {
    const sock = path.join(dir, 'src.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    // 256 MiB at 20 MiB/s would take ~13 s.
    const send = start('send', '--to', addr, '--ram', '256M', '--vcpus', '1', '--migrate-after', '200', '--max-bandwidth', '20M', '--no-trim-pages', '--downtime-limit', '1000', '--control', sock, '--json');
    const qmp = await control(send, sock);
    const q = await qmp.waitStatus((x) => x.status === 'active');
    await sleep(500);
    const info = await qmp.ok('query-migrate');
    expect(info).to.include({ status: 'active', phase: 'precopy' });
    expect(info.ram.total).to.equal(256 * MiB);
    expect(info.ram.remaining).to.be.within(1, 256 * MiB);
    expect(info.ram.transferred).to.be.at.least(0);
    expect(info['total-time']).to.be.at.least(q['total-time'] + 400);
    for (const k of ['round', 'bandwidth', 'dirty-rate']) expect(info[k], k).to.be.a('number').and.at.least(0);
    expect(info.ram['dirty-sync-count']).to.equal(info.round);

    // Bad arguments are refused, and change nothing.
    for (const bad of [{ 'max-bandwidth': -1 }, { 'max-bandwidth': '0' }, { 'downtime-limit': null }, { 'max-bandwidth': 0, speed: 1 }]) {
      const r = await qmp.execute('migrate-set-parameters', bad);
      expect(r.error?.class, JSON.stringify(bad)).to.equal('GenericError');
    }
    expect((await qmp.ok('query-migrate')).status).to.equal('active');

    const liftedAt = Date.now();
    expect(await qmp.ok('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 1000 })).to.deep.equal({});
    await qmp.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'completed');
    expect(Date.now() - liftedAt).to.be.lessThan(8000);
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    expect(send.report().status).to.equal('completed');
    expect(send.report().totalTimeMs).to.be.lessThan(10_000);
    expect(recv.report().integrity).to.include({ checked: true, bad: 0 });
  });

  it('migrate-start-postcopy switches a precopy that would not yet switch to postcopy; 0 bad pages', async () => {
    const sock = path.join(dir, 'src.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--json');
    const addr = await recv.listening();
    const send = start(
      'send', '--to', addr, '--ram', '256M', '--vcpus', '1', '--migrate-after', '200', '--max-bandwidth', '20M', '--no-trim-pages',
      '--postcopy', '--postcopy-after', '100000', '--control', sock, '--json',
    );
    const qmp = await control(send, sock);
    await qmp.waitStatus((x) => x.status === 'active');
    await sleep(300);
    expect(await qmp.ok('migrate-start-postcopy')).to.deep.equal({});
    await qmp.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'postcopy-active');
    // Past the point of no return a cancel is refused with the library's reason.
    const c = await qmp.execute('migrate-cancel');
    expect(c.error?.class).to.equal('GenericError');
    expect(c.error?.desc).to.match(/cannot cancel|already ended/);
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    expect(send.report().mode).to.equal('postcopy');
    const rr = recv.report();
    expect(rr.mode).to.equal('postcopy');
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    await qmp.closed;
    expect(qmp.statuses()).to.deep.equal(['setup', 'active', 'device', 'postcopy-active', 'completed']);
  });

  it('events: clients connected from the start see every status change, ending with completed, on both ends', async () => {
    const srcSock = path.join(dir, 'src.sock');
    const dstSock = path.join(dir, 'dst.sock');
    const recv = start('recv', '--listen', '127.0.0.1:0', '--run-after', '1000', '--control', dstSock, '--json');
    const dst = await control(recv, dstSock);
    const addr = await recv.listening();
    expect(await dst.ok('query-migrate')).to.deep.equal({ status: 'none' });
    const cmds = ((await dst.ok('query-commands')) as Array<{ name: string }>).map((x) => x.name);
    expect(cmds).to.include('query-migrate').and.not.include('migrate-cancel');
    expect((await dst.execute('migrate-cancel')).error?.class).to.equal('CommandNotFound');

    const send = start('send', '--to', addr, '--ram', '128M', '--vcpus', '1', '--migrate-after', '500', '--downtime-limit', '1000', '--control', srcSock, '--json');
    const src = await control(send, srcSock);
    // A second client on the source sees the same events.
    const src2 = await QmpClient.connect(srcSock);
    clients.push(src2);
    expect(src.greeting?.QMP.version.livemig).to.match(/^\d+\.\d+\.\d+/);
    expect(await src.ok('qmp_capabilities')).to.deep.equal({});
    expect(await src.ok('query-migrate')).to.deep.equal({ status: 'none' });

    await dst.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'completed');
    const d = await dst.ok('query-migrate');
    expect(d).to.include({ status: 'completed', state: 'completed' });
    expect(d.ram.total).to.equal(128 * MiB);
    expect(d.ram.received).to.be.at.least(1 * MiB);
    expect(d.round).to.be.at.least(1);

    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    await Promise.all([src.closed, src2.closed, dst.closed]);
    const rounds = send.report().precopyRounds as number;
    for (const c of [src, src2]) {
      expect(c.statuses()).to.deep.equal(['setup', 'active', 'device', 'completed']);
      const passes = c.events.filter((e) => e.event === 'MIGRATION_PASS').map((e) => e.data?.pass);
      expect(passes).to.deep.equal(Array.from({ length: rounds }, (_, i) => i + 1));
      for (const e of c.events) expect(e.timestamp.seconds).to.be.a('number');
    }
    expect(dst.statuses()).to.deep.equal(['active', 'completed']);
    expect(fs.existsSync(srcSock)).to.equal(false);
    expect(fs.existsSync(dstSock)).to.equal(false);
  });
});
