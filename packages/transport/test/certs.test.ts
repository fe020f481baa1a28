/**
 * Certificate authoring: the files createCertificates writes pass the real `openssl verify`,
 * carry the extensions TLS needs (CA, serverAuth with the SANs, clientAuth), keep private keys
 * mode 0600, are not overwritten without force, and `openssl s_client` completes a TLS 1.3
 * handshake with them against an acceptChannel listener.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { PROTOCOL_VERSION, encodeHello, newMigrationId, type Hello } from '@livemig/protocol';
import { acceptChannel, loadTlsCredentials, type Channel } from '@livemig/transport';
import { createCertificates } from '@livemig/transport/certs';

const OPENSSL = '/usr/bin/openssl';
const FILES = ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'];

describe('certificates', function () {
  let tmp: string;
  let dir: string;

  before(function () {
    this.timeout(30_000);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-certs-'));
    dir = path.join(tmp, 'pki', 'qemu');
    createCertificates({ dir, hosts: ['dest.example.com', '127.0.0.1', '::1'], days: 30, cn: 'test' });
  });

  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  const file = (f: string): string => path.join(dir, f);

  describe('createCertificates', function () {
    this.timeout(30_000);

    it('writes the QEMU layout: private keys 0600, the directory 0700', () => {
      for (const f of FILES) expect(fs.existsSync(file(f)), f).to.equal(true);
      expect(fs.statSync(file('server-key.pem')).mode & 0o777).to.equal(0o600);
      expect(fs.statSync(file('client-key.pem')).mode & 0o777).to.equal(0o600);
      expect(fs.statSync(dir).mode & 0o777).to.equal(0o700);
    });

    it('the server and client certificates pass `openssl verify` against the CA', () => {
      for (const f of ['server-cert.pem', 'client-cert.pem']) {
        const r = spawnSync(OPENSSL, ['verify', '-CAfile', file('ca-cert.pem'), file(f)], { encoding: 'utf8' });
        expect(r.status, `${r.stdout}${r.stderr}`).to.equal(0);
        expect(r.stdout).to.contain(`${file(f)}: OK`);
      }
      const r = spawnSync(OPENSSL, ['verify', '-purpose', 'sslserver', '-CAfile', file('ca-cert.pem'), file('server-cert.pem')], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      const c = spawnSync(OPENSSL, ['verify', '-purpose', 'sslclient', '-CAfile', file('ca-cert.pem'), file('client-cert.pem')], { encoding: 'utf8' });
      expect(c.status, c.stderr).to.equal(0);
    });

    it('CA, server and client certificates carry the right names and extensions (RSA 2048, SHA-256)', () => {
      const ca = new X509Certificate(fs.readFileSync(file('ca-cert.pem')));
      const server = new X509Certificate(fs.readFileSync(file('server-cert.pem')));
      const client = new X509Certificate(fs.readFileSync(file('client-cert.pem')));
      expect(ca.ca).to.equal(true);
      expect(ca.subject).to.equal('CN=test-ca');
      expect(server.ca).to.equal(false);
      expect(server.subjectAltName).to.equal('DNS:dest.example.com, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
      expect(server.checkIssued(ca)).to.equal(true);
      expect(server.keyUsage).to.include('1.3.6.1.5.5.7.3.1'); // serverAuth
      expect(client.subject).to.equal('CN=test-client');
      expect(client.keyUsage).to.include('1.3.6.1.5.5.7.3.2'); // clientAuth
      expect(client.checkIssued(ca)).to.equal(true);
      const text = spawnSync(OPENSSL, ['x509', '-in', file('server-cert.pem'), '-noout', '-text'], { encoding: 'utf8' }).stdout;
      expect(text).to.contain('Public-Key: (2048 bit)');
      expect(text).to.contain('Signature Algorithm: sha256WithRSAEncryption');
      const caText = spawnSync(OPENSSL, ['x509', '-in', file('ca-cert.pem'), '-noout', '-text'], { encoding: 'utf8' }).stdout;
      expect(caText).to.match(/Basic Constraints: critical\s+CA:TRUE/);
      expect(caText).to.match(/Key Usage: critical\s+Certificate Sign/);
      const days = (Date.parse(server.validTo) - Date.parse(server.validFrom)) / 86_400_000;
      expect(days).to.equal(30);
      // the key files load as the right sides' credentials (their keys match their certificates)
      expect(loadTlsCredentials({ dir }, 'server').kind).to.equal('x509');
      expect(loadTlsCredentials({ dir }, 'client').kind).to.equal('x509');
    });

    it('refuses to overwrite an existing file without force, naming it; overwrites with force', () => {
      const before = fs.readFileSync(file('ca-cert.pem'), 'utf8');
      expect(() => createCertificates({ dir, hosts: ['127.0.0.1'] })).to.throw(`${file('ca-cert.pem')}`);
      expect(fs.readFileSync(file('ca-cert.pem'), 'utf8')).to.equal(before);
      const lone = path.join(tmp, 'lone');
      fs.mkdirSync(lone);
      fs.writeFileSync(path.join(lone, 'client-key.pem'), 'mine\n', { mode: 0o644 });
      expect(() => createCertificates({ dir: lone, hosts: ['127.0.0.1'] })).to.throw(/client-key\.pem already exists \(use force/);
      expect(fs.readdirSync(lone)).to.deep.equal(['client-key.pem']);
      const { files } = createCertificates({ dir: lone, hosts: ['127.0.0.1'], force: true });
      expect(files).to.deep.equal(FILES.map((f) => path.join(lone, f)));
      expect(fs.readFileSync(path.join(lone, 'client-key.pem'), 'utf8')).to.contain('PRIVATE KEY');
      expect(fs.statSync(path.join(lone, 'client-key.pem')).mode & 0o777).to.equal(0o600);
    });

    it('rejects bad input: no hosts, a host that is neither a name nor an IP, a bad day count', () => {
      expect(() => createCertificates({ dir: path.join(tmp, 'x'), hosts: [] })).to.throw(/at least one host/);
      expect(() => createCertificates({ dir: path.join(tmp, 'x'), hosts: ['bad host!'] })).to.throw(/"bad host!" is neither an IP address nor a DNS name/);
      expect(() => createCertificates({ dir: path.join(tmp, 'x'), hosts: ['a'], days: 0 })).to.throw(/days must be a whole number/);
      expect(fs.existsSync(path.join(tmp, 'x'))).to.equal(false);
    });

    it('openssl s_client completes a TLS 1.3 handshake with the client certificate against an acceptChannel listener', async () => {
      const server = net.createServer({ pauseOnConnect: true });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      const creds = loadTlsCredentials({ dir }, 'server');
      const uuid = newMigrationId();
      const accepted = new Promise<{ channel: Channel; hello: Hello } | Error>((resolve) =>
        server.once('connection', (s) => resolve(acceptChannel(s, { tls: creds, timeoutMs: 5000 }).catch((e: Error) => e))),
      );
      let channel: Channel | undefined;
      try {
        const child = spawn(
          OPENSSL,
          ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', file('ca-cert.pem'), '-cert', file('client-cert.pem'), '-key', file('client-key.pem'), '-tls1_3', '-verify_return_error', '-verify_ip', '127.0.0.1'],
          { stdio: ['pipe', 'pipe', 'pipe'] },
        );
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
        child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
        const exited = new Promise<void>((r) => child.on('close', () => r()));
        const killer = setTimeout(() => child.kill(), 8000);
        // s_client forwards stdin over TLS: a livemig hello, so acceptChannel completes (all TLS and certificate checks passed).
        child.stdin.write(encodeHello({ role: 'main', uuid }));
        const result = await accepted;
        if (result instanceof Error) throw result;
        channel = result.channel;
        expect(result.hello).to.deep.equal({ version: PROTOCOL_VERSION, role: 'main', uuid });
        expect(result.channel.info.label).to.contain('client certificate CN=test-client');
        child.stdin.end();
        await exited;
        clearTimeout(killer);
        expect(out).to.contain('TLSv1.3');
        expect(out).to.contain('Verify return code: 0 (ok)');
        expect(out).to.match(/Cipher is TLS_AES_128_GCM_SHA256/);
        expect(out).to.contain('LVMG'); // our hello, answered over TLS
      } finally {
        channel?.close();
        await new Promise((r) => server.close(r));
      }
    });
  });
});
