/**
 * Precopy live migration end to end: `migrate recv` and `migrate send` as two real processes
 * over TCP on loopback, against the real kernel.
 */
import { expect } from 'chai';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { PROTOCOL_VERSION, encodeHello, newMigrationId } from '@livemig/protocol';
import { freePort, migrate, tracedMigration, waitHttp } from './support/procs.js';

describe('precopy migration between two processes', function () {
  this.timeout(120_000);

  it('moves a 256 MiB ab guest with 2 vCPUs dirtying memory and it verifies on the destination with 0 bad pages', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '256M', '--vcpus', '2', '--migrate-after', '300', '--downtime-limit', '1000', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    const rr = recv.report();
    expect(sr.status).to.equal('completed');
    expect(sr.role).to.equal('source');
    expect(sr.precopyRounds).to.be.at.least(1);
    expect(sr.ram.totalBytes).to.equal(256 * 1024 * 1024);
    expect(sr.ram.pagesNormal + sr.ram.pagesZero).to.be.at.least(65536);
    expect(rr.status).to.equal('completed');
    expect(rr.role).to.equal('destination');
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(rr.integrity.pages).to.equal(65536);
    // The ab guest's data pages hold one non-zero byte: they travel trimmed, counted alike at both ends.
    expect(sr.ram.pagesTrimmed).to.be.greaterThan(0);
    expect(rr.ram.pagesTrimmed).to.equal(sr.ram.pagesTrimmed);
    for (const k of ['mode', 'totalTimeMs', 'setupTimeMs', 'downtimeMs', 'precopyRounds']) expect(sr).to.have.property(k);
    for (const k of ['totalBytes', 'transferredBytes', 'pagesNormal', 'pagesZero', 'pagesTrimmed', 'precopyBytes', 'postcopyBytes', 'mbps']) expect(sr.ram).to.have.property(k);
    // The guest's pause leaves out SHUT's way back, and nothing else.
    expect(sr.downtimeMs).to.be.greaterThan(0);
    expect(sr.downtimeAckedMs).to.be.at.least(sr.downtimeMs);
  });

  it('with --no-trim-pages sends every data page whole, and the guest verifies with 0 bad pages', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '200', '--downtime-limit', '1000', '--no-trim-pages', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    expect(sr.ram.pagesTrimmed).to.equal(0);
    expect(sr.ram.pagesNormal).to.be.greaterThan(0);
    // Whole pages: at least a page of payload for each.
    expect(sr.ram.transferredBytes).to.be.at.least(sr.ram.pagesNormal * 4096);
    expect(recv.report().integrity).to.include({ checked: true, bad: 0, pages: 16384 });
  });

  it('the downtime the source reports agrees within 1 ms (or 5% of a long pause) with the pause read off the host clock both ends share (first vCPU parked → last vCPU stepping there)', async () => {
    const { report: sr, clockMs } = await tracedMigration(['--ram', '128M', '--vcpus', '1', '--migrate-after', '300', '--downtime-limit', '1000']);
    expect(sr.mode).to.equal('precopy');
    expect(clockMs).to.be.greaterThan(0);
    expect(Math.abs(sr.downtimeMs - clockMs), `reported ${sr.downtimeMs} ms, clock ${clockMs.toFixed(2)} ms`).to.be.at.most(Math.max(1, clockMs * 0.05));
  });

  it('serves on the destination the kv keys written over HTTP before migration', async () => {
    const srcPort = await freePort();
    const dstPort = await freePort();
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--guest-port', String(dstPort), '--run-after', '3000', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--guest', 'kv', '--ram', '16M', '--vcpus', '1', '--guest-port', String(srcPort), '--migrate-after', '1500', '--json');
    const keys = Array.from({ length: 50 }, (_, i) => [`key-${i}`, `value-${i}-${'x'.repeat(i * 10)}`] as const);
    await waitHttp(srcPort);
    for (const [k, v] of keys) {
      const res = await fetch(`http://127.0.0.1:${srcPort}/kv/${k}`, { method: 'PUT', body: v });
      expect(res.status, `PUT ${k}`).to.be.oneOf([200, 201, 204]);
    }
    const s = await send.done();
    expect(s.code, send.stderr).to.equal(0);
    for (const [k, v] of keys) {
      const res = await fetch(`http://127.0.0.1:${dstPort}/kv/${k}`);
      expect(res.status, `GET ${k}`).to.equal(200);
      expect(await res.text()).to.equal(v);
    }
    const r = await recv.done();
    expect(r.code, recv.stderr).to.equal(0);
    expect(recv.report().integrity.bad).to.equal(0);
  });

  it('keeps the source guest running and consistent when the destination is killed mid-precopy', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '256M', '--vcpus', '2', '--migrate-after', '200', '--max-bandwidth', '40M', '--no-trim-pages', '--json');
    await sleep(1500);
    recv.kill('SIGKILL');
    const s = await send.done();
    expect(s.code).to.equal(1);
    const sr = send.report();
    expect(sr.status).to.equal('failed');
    expect(sr.error).to.be.a('string').and.not.empty;
    expect(sr.sourceGuest).to.deep.equal({ running: true });
    expect(sr.integrity).to.include({ checked: true, bad: 0 });
    expect(send.stderr).to.not.match(/\n\s+at /);
  });

  it('refuses garbage on the wire with a clear error, no stack trace and no hang', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const [host, port] = splitAddr(await recv.listening());
    const sock = net.connect(port, host);
    await new Promise((r) => sock.once('connect', r));
    sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\nsome more garbage to fill the hello');
    const r = await recv.done(15_000);
    sock.destroy();
    expect(r.code).to.equal(1);
    expect(recv.stderr).to.match(/bad magic/);
    expect(recv.stderr).to.not.match(/\n\s+at /);
    expect(recv.report()).to.include({ status: 'failed' });
  });

  it('refuses a hello with the wrong protocol version with a clear error on both ends', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const [host, port] = splitAddr(await recv.listening());
    const sock = net.connect(port, host);
    await new Promise((r) => sock.once('connect', r));
    let answer = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => (answer = Buffer.concat([answer, d])));
    sock.write(encodeHello({ version: 99, role: 'main', uuid: newMigrationId() }));
    const r = await recv.done(15_000);
    await sleep(100);
    sock.destroy();
    expect(r.code).to.equal(1);
    expect(recv.stderr).to.match(/unsupported protocol version 99/);
    expect(recv.stderr).to.not.match(/\n\s+at /);
    // The dialler got the destination's hello (its version) and an ERROR frame naming the cause.
    expect(answer.subarray(0, 4).toString()).to.equal('LVMG');
    expect(answer.readUInt16LE(4)).to.equal(PROTOCOL_VERSION);
    expect(answer.toString('latin1')).to.match(/unsupported protocol version 99/);
  });

  it('migrates a guest A → B and back B → A, and it verifies', async () => {
    const backPort = await freePort();
    const b = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--then-send-to', `127.0.0.1:${backPort}`, '--json');
    const addr = await b.listening();
    const a = migrate('send', '--to', addr, '--ram', '128M', '--vcpus', '2', '--migrate-after', '300', '--downtime-limit', '1000', '--return-listen', `127.0.0.1:${backPort}`, '--run-after', '300', '--json');
    const [ea, eb] = await Promise.all([a.done(), b.done()]);
    expect(eb.code, b.stderr).to.equal(0);
    expect(ea.code, a.stderr).to.equal(0);
    const ra = a.report();
    expect(ra.status).to.equal('completed');
    expect(ra.returned.status).to.equal('completed');
    expect(ra.returned.integrity).to.include({ checked: true, bad: 0 });
    expect(b.report().onward.status).to.equal('completed');
  });
});

function splitAddr(a: string): [string, number] {
  const i = a.lastIndexOf(':');
  return [a.slice(0, i), Number(a.slice(i + 1))];
}
