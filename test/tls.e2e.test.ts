/**
 * TLS end to end: certificates from `migrate certs`, checked by the real openssl; postcopy
 * with preempt over TLS between two real processes; and every bad-credential case failing the
 * handshake on both ends with its own message, before any RAM moves, the source guest running
 * on and verifying.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createCertificates } from '@livemig/transport/certs';
import { ROOT, migrate } from './support/procs.js';

const MIGRATE = path.join(ROOT, 'packages/cli/bin/migrate.js');
const DAY = 24 * 3600 * 1000;

describe('TLS between two processes', function () {
  this.timeout(120_000);

  let dir: string;
  /** Certificates for 127.0.0.1 made by `migrate certs`. */
  let good: string;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-tls-e2e-'));
    good = path.join(dir, 'good');
    const r = spawnSync(process.execPath, [MIGRATE, 'certs', '--dir', good, '--hosts', '127.0.0.1,localhost', '--days', '30'], { encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const certs = (name: string, opts: { hosts?: string[]; notBefore?: Date; days?: number; clientCn?: string } = {}): string => {
    const d = path.join(dir, name);
    createCertificates({ dir: d, hosts: opts.hosts ?? ['127.0.0.1'], notBefore: opts.notBefore, days: opts.days, clientCn: opts.clientCn });
    return d;
  };
  const psk = (name: string, line: string): string => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, `${line}\n`, { mode: 0o600 });
    return f;
  };

  it('writes certificates that openssl verifies against the CA, with private keys mode 0600', () => {
    for (const cert of ['server-cert.pem', 'client-cert.pem']) {
      const r = spawnSync('openssl', ['verify', '-CAfile', path.join(good, 'ca-cert.pem'), path.join(good, cert)], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.contain(': OK');
    }
    for (const key of ['server-key.pem', 'client-key.pem']) expect(fs.statSync(path.join(good, key)).mode & 0o777).to.equal(0o600);
  });

  it('completes a TLS 1.3 handshake with openssl s_client and the client certificate against migrate recv --tls-dir', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--tls-dir', good, '--json');
    const addr = await recv.listening();
    const client = spawn('openssl', [
      's_client', '-connect', addr, '-tls1_3', '-CAfile', path.join(good, 'ca-cert.pem'),
      '-cert', path.join(good, 'client-cert.pem'), '-key', path.join(good, 'client-key.pem'), '-verify_return_error',
    ], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    client.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    client.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
    await new Promise<void>((resolve) => {
      const check = (): void => {
        if (/Verify return code/.test(out)) resolve();
      };
      client.stdout.on('data', check);
      client.stderr.on('data', check);
    });
    client.stdin.end();
    await new Promise((resolve) => client.once('exit', resolve));
    expect(out).to.match(/TLSv1\.3/);
    expect(out).to.match(/Verify return code: 0 \(ok\)/);
    recv.child.kill('SIGKILL');
    await recv.exited;
  });

  it('moves a 512 MiB ab guest in postcopy with preempt over TLS: 0 bad pages, requests on the preempt channel', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--tls-dir', good, '--run-after', '200', '--json');
    const addr = await recv.listening();
    // 1.5 s first: the guest populates all of its RAM (a first touch costs ~10 µs a page on this
    // VM), so precopy leaves pages with data behind for the destination to ask for.
    const send = migrate('send', '--to', addr, '--tls-dir', good, '--ram', '512M', '--vcpus', '2', '--migrate-after', '1500', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '300', '--preempt', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const rr = recv.report();
    expect(rr.mode).to.equal('postcopy');
    expect(rr.integrity).to.include({ checked: true, pages: 131072, bad: 0 });
    expect(rr.postcopy.requests).to.be.greaterThan(0);
    expect(rr.postcopy.preempt.requests).to.be.at.least(Math.floor(rr.postcopy.requests * 0.99));
    expect(send.report().postcopy.preempt.pages).to.be.greaterThan(0);
  });

  /** Runs a migration that must fail in the handshake; returns both ends' errors after checking the source guest. */
  async function refused(sendTls: string[], recvTls: string[]): Promise<{ source: string; dest: string }> {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', ...recvTls, '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, ...sendTls, '--ram', '32M', '--vcpus', '1', '--migrate-after', '100', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(1);
    expect(r.code, recv.stderr).to.equal(1);
    const sr = send.report();
    const rr = recv.report();
    expect(sr.status).to.equal('failed');
    expect(sr.sourceGuest).to.deep.equal({ running: true });
    expect(sr.integrity).to.include({ checked: true, bad: 0 });
    // Not a byte of guest RAM moved.
    expect(sr.ram.pagesNormal).to.equal(0);
    expect(rr.ram.pagesNormal).to.equal(0);
    if (process.env.SHOW_TLS_ERRORS) console.log(`source: ${sr.error}\n  dest: ${rr.error}`);
    return { source: sr.error, dest: rr.error };
  }

  it('refuses a destination certificate signed by another CA, on both ends', async () => {
    const other = certs('other-ca');
    const e = await refused(['--tls-dir', other], ['--tls-dir', good]);
    expect(e.source).to.match(/not signed by the CA/);
    expect(e.dest).to.match(/CA|not signed|trust/i);
  });

  it('refuses an expired certificate, on both ends', async () => {
    const old = certs('expired', { notBefore: new Date(Date.now() - 40 * DAY), days: 10 });
    const e = await refused(['--tls-dir', old], ['--tls-dir', old]);
    expect(e.source).to.match(/has expired/);
    expect(e.dest).to.match(/expired/);
  });

  it('refuses a certificate that is not valid yet, on both ends', async () => {
    const early = certs('future', { notBefore: new Date(Date.now() + 10 * DAY), days: 30 });
    const e = await refused(['--tls-dir', early], ['--tls-dir', early]);
    expect(e.source).to.match(/not valid yet/);
    expect(e.dest).to.match(/not valid yet/);
  });

  it('refuses a destination whose certificate does not name the host dialled, on both ends', async () => {
    const elsewhere = certs('wrong-host', { hosts: ['migration.example.invalid'] });
    const e = await refused(['--tls-dir', elsewhere], ['--tls-dir', elsewhere]);
    expect(e.source).to.match(/127\.0\.0\.1/);
    expect(e.source).to.match(/host|name|IP/i);
    expect(e.dest).to.match(/host|name|IP/i);
  });

  it('refuses a client subject --tls-authz does not allow, on both ends', async () => {
    const e = await refused(['--tls-dir', good], ['--tls-dir', good, '--tls-authz', 'CN=someone-else']);
    expect(e.source).to.match(/not allowed|authz/i);
    expect(e.dest).to.match(/not allowed|authz/i);
  });

  it('refuses a wrong pre-shared key, on both ends', async () => {
    const a = psk('a.psk', `qemu:${'11'.repeat(32)}`);
    const b = psk('b.psk', `qemu:${'22'.repeat(32)}`);
    const e = await refused(['--tls-psk', b], ['--tls-psk', a]);
    expect(e.source).to.match(/pre-shared key/);
    expect(e.dest).to.match(/pre-shared key|PSK/i);
  });

  it('refuses a plaintext source talking to a TLS destination, on both ends', async () => {
    const e = await refused([], ['--tls-dir', good]);
    expect(e.source).to.match(/TLS/);
    expect(e.dest).to.match(/plaintext/);
  });

  it('refuses a TLS source talking to a plaintext destination, on both ends', async () => {
    const e = await refused(['--tls-dir', good], []);
    expect(e.source).to.match(/does not speak TLS/);
    expect(e.dest).to.match(/TLS/);
  });
});
