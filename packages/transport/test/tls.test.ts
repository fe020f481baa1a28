/**
 * TLS on channels over real loopback TCP: loading credentials, TLS 1.3 channels (x509 and PSK)
 * carrying frames both ways, and every mismatch failing both connectChannel and acceptChannel
 * with its own message before a frame moves: wrong CA (both directions), expired and
 * not-yet-valid certificates, wrong host, authz, no client certificate, wrong PSK key, unknown
 * PSK identity, plaintext against TLS (both directions), and handshakes that never complete.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type tls from 'node:tls';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { MsgType, PROTOCOL_VERSION, newMigrationId, payloadToBuffer, type Frame, type Hello } from '@livemig/protocol';
import { createCertificates } from '@livemig/transport/certs';
import {
  TlsError,
  acceptChannel,
  connectChannel,
  loadTlsCredentials,
  subjectMatchesAuthz,
  type Channel,
  type TlsCredentials,
} from '@livemig/transport';

const MiB = 1024 * 1024;
const DAY = 86_400_000;

describe('TLS (certificates made once for this file)', function () {
  // ---- fixtures: certificate sets made once --------------------------------------------------

  let tmp: string;
  /** hosts localhost, 127.0.0.1 */
  let good: string;
  /** another CA; server certificate for other.invalid only; client CN "intruder" */
  let other: string;
  /** valid from 10 days ago for 1 day */
  let expired: string;
  /** valid from 2 days from now */
  let future: string;

  const read = (dir: string, f: string): string => fs.readFileSync(path.join(dir, f), 'utf8');
  /** Credentials put together from files of different sets (they are plain data). */
  function mix(side: 'client' | 'server', caDir: string, ownDir: string, extra: Partial<TlsCredentials> = {}): TlsCredentials {
    return { kind: 'x509', side, ca: read(caDir, 'ca-cert.pem'), cert: read(ownDir, `${side}-cert.pem`), key: read(ownDir, `${side}-key.pem`), ...extra };
  }

  before(function () {
    this.timeout(60_000);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-tls-'));
    good = path.join(tmp, 'good');
    other = path.join(tmp, 'other');
    expired = path.join(tmp, 'expired');
    future = path.join(tmp, 'future');
    createCertificates({ dir: good, hosts: ['localhost', '127.0.0.1'] });
    createCertificates({ dir: other, hosts: ['other.invalid'], cn: 'other', clientCn: 'intruder' });
    createCertificates({ dir: expired, hosts: ['127.0.0.1'], notBefore: new Date(Date.now() - 10 * DAY), days: 1 });
    createCertificates({ dir: future, hosts: ['127.0.0.1'], notBefore: new Date(Date.now() + 2 * DAY), days: 30 });
  });

  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  // ---- plumbing --------------------------------------------------------------------------

  const servers: net.Server[] = [];
  const channels: Channel[] = [];
  const sockets: net.Socket[] = [];

  afterEach(async () => {
    for (const c of channels.splice(0)) c.close();
    for (const s of sockets.splice(0)) s.destroy();
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  async function listen(host = '127.0.0.1'): Promise<{ port: number; nextSocket: () => Promise<net.Socket> }> {
    const server = net.createServer({ pauseOnConnect: true });
    servers.push(server);
    const queue: net.Socket[] = [];
    const waiting: Array<(s: net.Socket) => void> = [];
    server.on('connection', (s) => {
      sockets.push(s);
      const w = waiting.shift();
      if (w) w(s);
      else queue.push(s);
    });
    await new Promise<void>((r) => server.listen(0, host, r));
    const port = (server.address() as net.AddressInfo).port;
    return {
      port,
      nextSocket: () => {
        const s = queue.shift();
        return s ? Promise.resolve(s) : new Promise((r) => waiting.push(r));
      },
    };
  }

  type Outcome<T> = { ok: true; value: T } | { ok: false; error: Error };
  const settle = <T>(p: Promise<T>): Promise<Outcome<T>> =>
    p.then(
      (value) => ({ ok: true as const, value }),
      (error: Error) => ({ ok: false as const, error }),
    );

  /** Dials with `client` and accepts with `server` (either may be undefined: plaintext); both outcomes. */
  async function attempt(
    client: TlsCredentials | undefined,
    server: TlsCredentials | undefined,
    opts: { host?: string; timeoutMs?: number; uuid?: string; acceptUuid?: string } = {},
  ): Promise<{ dial: Outcome<Channel>; accept: Outcome<{ channel: Channel; hello: Hello }> }> {
    const { port, nextSocket } = await listen();
    const uuid = opts.uuid ?? newMigrationId();
    const [dial, accept] = await Promise.all([
      settle(connectChannel({ endpoint: { host: opts.host ?? '127.0.0.1', port }, role: 'main', uuid, tls: client, timeoutMs: opts.timeoutMs ?? 5000 })),
      settle(nextSocket().then((s) => acceptChannel(s, { tls: server, timeoutMs: opts.timeoutMs ?? 5000, uuid: opts.acceptUuid }))),
    ]);
    if (dial.ok) channels.push(dial.value);
    if (accept.ok) channels.push(accept.value.channel);
    return { dial, accept };
  }

  /** Both ends failed, with a TlsError of `code`; returns the two messages. */
  function bothFailed(r: Awaited<ReturnType<typeof attempt>>, code: string): { dial: string; accept: string } {
    expect(r.dial.ok, 'connectChannel should have rejected').to.equal(false);
    expect(r.accept.ok, 'acceptChannel should have rejected').to.equal(false);
    const d = (r.dial as { error: Error }).error;
    const a = (r.accept as { error: Error }).error;
    expect(d, `dialler: ${d.message}`).to.be.instanceOf(TlsError);
    expect(a, `listener: ${a.message}`).to.be.instanceOf(TlsError);
    expect((d as TlsError).code, `dialler: ${d.message}`).to.equal(code);
    expect((a as TlsError).code, `listener: ${a.message}`).to.equal(code);
    return { dial: d.message, accept: a.message };
  }

  function collect(ch: Channel): Array<{ frame: Frame; bytes: Buffer }> {
    const got: Array<{ frame: Frame; bytes: Buffer }> = [];
    ch.setHandler((frame) => {
      got.push({ frame, bytes: Buffer.from(payloadToBuffer(frame.payload)) });
    });
    return got;
  }

  async function until(cond: () => boolean, timeoutMs = 3000, what = 'condition'): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(2);
    }
  }

  function pattern(n: number, seed: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 12)) & 0xff;
    return b;
  }
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  /** Frames both ways on an open pair, including a multi-MiB corked batch of several buffers. */
  async function exchange(main: Channel, ret: Channel): Promise<void> {
    const atRet = collect(ret);
    const atMain = collect(main);
    const a = pattern(3 * MiB, 1);
    const b = pattern(5 * 4096, 2);
    main.cork();
    main.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 0, count: 768 }, [a.subarray(0, MiB), a.subarray(MiB)]);
    main.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 4 * MiB, count: 5 }, b);
    main.send({ type: MsgType.PING, id: 1 });
    main.uncork();
    ret.send({ type: MsgType.REQ_PAGES, block: 'ram0', offset: 8192, length: 4096 });
    await until(() => atRet.length === 3 && atMain.length === 1, 5000, 'frames both ways');
    expect(sha(atRet[0]!.bytes)).to.equal(sha(a));
    expect(atRet[1]!.bytes.equals(b)).to.equal(true);
    expect(atRet[2]!.frame.msg).to.deep.equal({ type: MsgType.PING, id: 1 });
    expect(atMain[0]!.frame.msg).to.deep.equal({ type: MsgType.REQ_PAGES, block: 'ram0', offset: 8192, length: 4096 });
    expect(ret.bytesRead).to.equal(main.bytesWritten);
  }

  // ---- credentials -----------------------------------------------------------------------------

  describe('loadTlsCredentials', () => {
    it('loads the QEMU x509 layout for each side as plain, structured-cloneable data', () => {
      const s = loadTlsCredentials({ dir: good, authz: ['CN=livemig-client'] }, 'server');
      expect(s).to.deep.include({ kind: 'x509', side: 'server', authz: ['CN=livemig-client'] });
      expect(s.cert).to.equal(read(good, 'server-cert.pem'));
      expect(s.key).to.equal(read(good, 'server-key.pem'));
      expect(s.ca).to.equal(read(good, 'ca-cert.pem'));
      const c = loadTlsCredentials({ dir: good }, 'client');
      expect(c.cert).to.equal(read(good, 'client-cert.pem'));
      expect(structuredClone(c)).to.deep.equal(c);
    });

    it('names a missing file, a bad PEM, a key that does not match, and conflicting options', () => {
      const dir = path.join(tmp, 'broken');
      fs.mkdirSync(dir, { recursive: true });
      fs.copyFileSync(path.join(good, 'ca-cert.pem'), path.join(dir, 'ca-cert.pem'));
      const err = (f: () => unknown): TlsError => {
        try {
          f();
        } catch (e) {
          expect(e).to.be.instanceOf(TlsError);
          expect((e as TlsError).code).to.equal('TLS_CONFIG');
          return e as TlsError;
        }
        throw new Error('expected a TlsError');
      };
      expect(err(() => loadTlsCredentials({ dir }, 'server')).message).to.contain(`${path.join(dir, 'server-cert.pem')} does not exist`);
      expect(err(() => loadTlsCredentials({ dir: path.join(tmp, 'nope') }, 'server')).message).to.contain(`${path.join(tmp, 'nope')} does not exist`);
      fs.writeFileSync(path.join(dir, 'server-cert.pem'), 'hello\n');
      expect(err(() => loadTlsCredentials({ dir }, 'server')).message).to.match(/server-cert\.pem is not a PEM certificate/);
      fs.copyFileSync(path.join(good, 'server-cert.pem'), path.join(dir, 'server-cert.pem'));
      fs.writeFileSync(path.join(dir, 'server-key.pem'), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
      expect(err(() => loadTlsCredentials({ dir }, 'server')).message).to.match(/server-key\.pem is not a valid PEM private key/);
      fs.copyFileSync(path.join(other, 'server-key.pem'), path.join(dir, 'server-key.pem'));
      expect(err(() => loadTlsCredentials({ dir }, 'server')).message).to.match(/server-cert\.pem and .*server-key\.pem do not belong together/);
      expect(err(() => loadTlsCredentials({ dir: good, pskFile: '/x/keys.psk' }, 'client')).message).to.contain('not both');
      expect(err(() => loadTlsCredentials({}, 'client')).message).to.contain('no credentials');
      expect(err(() => loadTlsCredentials({ dir: good, authz: ['CN=x'] }, 'client')).message).to.contain('no meaning when dialling');
    });

    it('connectChannel and acceptChannel refuse credentials of the wrong side before any byte moves', async () => {
      const { port, nextSocket } = await listen();
      const e = await connectChannel({ endpoint: { host: '127.0.0.1', port }, role: 'main', uuid: newMigrationId(), tls: loadTlsCredentials({ dir: good }, 'server') }).then(
        () => null,
        (err: Error) => err,
      );
      expect((e as TlsError).code).to.equal('TLS_CONFIG');
      expect(e!.message).to.contain("connectChannel needs client-side credentials (loadTlsCredentials(opts, 'client')), got server-side ones");
      const raw = net.connect(port, '127.0.0.1');
      sockets.push(raw);
      raw.on('error', () => undefined);
      const a = await nextSocket().then((s) => acceptChannel(s, { tls: loadTlsCredentials({ dir: good }, 'client') })).then(
        () => null,
        (err: Error) => err,
      );
      expect((a as TlsError).code).to.equal('TLS_CONFIG');
      expect(a!.message).to.contain('acceptChannel needs server-side credentials');
    });

    it('reads keys.psk (identity:hexkey lines) and names the line of a bad one without echoing it', () => {
      const file = path.join(tmp, 'keys.psk');
      fs.writeFileSync(file, '# comment\n\nqemu:00112233445566778899aabbccddeeff\nalice:FFEEDDCCBBAA99887766554433221100\n');
      expect(loadTlsCredentials({ pskFile: file }, 'client')).to.deep.equal({ kind: 'psk', side: 'client', psk: { identity: 'qemu', key: '00112233445566778899aabbccddeeff' } });
      expect(loadTlsCredentials({ pskFile: file, pskIdentity: 'alice' }, 'server').psk).to.deep.equal({ identity: 'alice', key: 'ffeeddccbbaa99887766554433221100' });
      expect(() => loadTlsCredentials({ pskFile: file, pskIdentity: 'bob' }, 'client')).to.throw(/no key for identity "bob" \(it has "qemu", "alice"\)/);
      fs.writeFileSync(file, 'qemu:0011\nsecretsecret\n');
      expect(() => loadTlsCredentials({ pskFile: file }, 'client')).to.throw(/keys\.psk line 2: expected identity:hexkey \(no ':' found\)$/);
      fs.writeFileSync(file, 'qemu:0011\nbob:xyz123\n');
      expect(() => loadTlsCredentials({ pskFile: file }, 'client')).to.throw(/line 2: the key is not hex/);
      fs.writeFileSync(file, 'qemu:0011\nqemu:2233\n');
      expect(() => loadTlsCredentials({ pskFile: file }, 'client')).to.throw(/line 2: identity "qemu" appears again \(first on line 1\)/);
      expect(() => loadTlsCredentials({ pskFile: path.join(tmp, 'missing.psk') }, 'client')).to.throw(/missing\.psk does not exist/);
    });
  });

  describe('subjectMatchesAuthz', () => {
    it('matches a full subject in QEMU or OpenSSL order, or a bare CN', () => {
      const subject = 'C=GB\nO=Example Org\nCN=laptop.example.com';
      expect(subjectMatchesAuthz(subject, ['CN=laptop.example.com,O=Example Org,C=GB'])).to.equal(true);
      expect(subjectMatchesAuthz(subject, ['C=GB, O=Example Org, CN=laptop.example.com'])).to.equal(true);
      expect(subjectMatchesAuthz(subject, ['laptop.example.com'])).to.equal(true);
      expect(subjectMatchesAuthz(subject, ['CN=laptop.example.com'])).to.equal(false); // the whole subject must match
      expect(subjectMatchesAuthz(subject, ['cn=laptop.example.com,o=Example Org,c=GB'])).to.equal(true);
      expect(subjectMatchesAuthz(subject, ['CN=Laptop.example.com,O=Example Org,C=GB'])).to.equal(false);
      expect(subjectMatchesAuthz(subject, ['desktop', 'CN=x'])).to.equal(false);
    });
  });

  // ---- channels over TLS -----------------------------------------------------------------------

  describe('TLS channels', function () {
    this.timeout(20_000);

    it('x509: a TLS 1.3 channel (AES-128-GCM) carries frames both ways, corked batches included', async () => {
      const uuid = newMigrationId();
      const r = await attempt(loadTlsCredentials({ dir: good }, 'client'), loadTlsCredentials({ dir: good, authz: ['CN=livemig-client'] }, 'server'), { uuid });
      expect(r.dial.ok, r.dial.ok ? '' : r.dial.error.message).to.equal(true);
      expect(r.accept.ok, r.accept.ok ? '' : r.accept.error.message).to.equal(true);
      if (!r.dial.ok || !r.accept.ok) return;
      const main = r.dial.value;
      const ret = r.accept.value.channel;
      const ms = main.socket as tls.TLSSocket;
      const rs = ret.socket as tls.TLSSocket;
      expect(ms.getProtocol()).to.equal('TLSv1.3');
      expect(rs.getProtocol()).to.equal('TLSv1.3');
      expect(ms.getCipher().name).to.equal('TLS_AES_128_GCM_SHA256');
      expect(r.accept.value.hello).to.deep.equal({ version: PROTOCOL_VERSION, role: 'main', uuid });
      expect(ret.info.label).to.contain('client certificate CN=livemig-client');
      // the TLS socket wraps the TCP handle itself, not a JS stream
      expect((ms as unknown as { _handle?: { constructor: { name: string } } })._handle?.constructor.name).to.equal('TLSWrap');
      // OpenSSL owns the connection's reads: the accepting side does not read into the receive
      // ring itself (it copies what OpenSSL decrypted into it; see the next test)
      expect(ret.readsIntoRing).to.equal(false);
      await exchange(main, ret);
    });

    /** An open x509 pair: the dialler's channel and the acceptor's. */
    async function x509Pair(): Promise<{ main: Channel; ret: Channel }> {
      const r = await attempt(loadTlsCredentials({ dir: good }, 'client'), loadTlsCredentials({ dir: good }, 'server'));
      if (!r.dial.ok) throw r.dial.error;
      if (!r.accept.ok) throw r.accept.error;
      return { main: r.dial.value, ret: r.accept.value.channel };
    }

    it('x509: a 1 MiB page run, 64 TLS records, reaches the acceptor as one contiguous segment (one UFFDIO_COPY, not one per record)', async () => {
      const { main, ret } = await x509Pair();
      const got = collect(ret);
      // A round trip first, so that no part of the run arrives with the hello.
      main.send({ type: MsgType.PING, id: 1 });
      await until(() => got.length === 1, 5000, 'the ping');
      const run = pattern(MiB, 3);
      main.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 0, count: 256 }, run);
      await until(() => got.length === 2, 5000, 'the run');
      expect(got[1]!.frame.payload.segments.length).to.equal(1);
      expect(sha(got[1]!.bytes)).to.equal(sha(run));
    });

    it('x509: limitKernelQueues reaches the TCP socket under TLS on both sides', async () => {
      const { main, ret } = await x509Pair();
      expect(main.limitKernelQueues({ sendBytes: 1024 * 1024 })).to.include({ sendBytes: 2 * 1024 * 1024 });
      expect(ret.limitKernelQueues({ receiveBytes: 1024 * 1024 })).to.include({ receiveBytes: 2 * 1024 * 1024 });
      await exchange(main, ret);
    });

    it('x509 by host name: the name dialled (localhost) is checked against the SANs', async () => {
      const { port, nextSocket } = await listen('localhost');
      const r = await Promise.all([
        settle(connectChannel({ endpoint: { host: 'localhost', port }, role: 'main', uuid: newMigrationId(), tls: loadTlsCredentials({ dir: good }, 'client') })),
        settle(nextSocket().then((s) => acceptChannel(s, { tls: loadTlsCredentials({ dir: good }, 'server') }))),
      ]);
      if (r[0].ok) channels.push(r[0].value);
      if (r[1].ok) channels.push(r[1].value.channel);
      expect(r[0].ok, r[0].ok ? '' : r[0].error.message).to.equal(true);
      expect(r[1].ok, r[1].ok ? '' : r[1].error.message).to.equal(true);
      if (r[0].ok) expect((r[0].value.socket as tls.TLSSocket).servername).to.equal('localhost');
    });

    it('PSK: a TLS 1.3 channel keyed from keys.psk carries frames both ways', async () => {
      const file = path.join(tmp, 'good.psk');
      fs.writeFileSync(file, 'qemu:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n');
      const r = await attempt(loadTlsCredentials({ pskFile: file }, 'client'), loadTlsCredentials({ pskFile: file }, 'server'));
      expect(r.dial.ok && r.accept.ok, `${r.dial.ok ? '' : r.dial.error.message} ${r.accept.ok ? '' : r.accept.error.message}`).to.equal(true);
      if (!r.dial.ok || !r.accept.ok) return;
      expect((r.dial.value.socket as tls.TLSSocket).getProtocol()).to.equal('TLSv1.3');
      expect((r.accept.value.channel.socket as tls.TLSSocket).getProtocol()).to.equal('TLSv1.3');
      expect(r.accept.value.channel.info.label).to.contain('PSK identity "qemu"');
      await exchange(r.dial.value, r.accept.value.channel);
    });

    it('the hello rules still apply over TLS, and the dialler now rejects with the refusal', async () => {
      const expected = newMigrationId();
      const r = await attempt(loadTlsCredentials({ dir: good }, 'client'), loadTlsCredentials({ dir: good }, 'server'), { acceptUuid: expected });
      expect(r.dial.ok || r.accept.ok).to.equal(false);
      const d = (r.dial as { error: Error & { code?: string } }).error;
      expect(d.code).to.equal('UUID');
      expect(d.message).to.contain('the destination refused the connection: ');
      expect(d.message).to.contain(`migration UUID mismatch: expected ${expected}`);
    });

    it('no byte is lost when the ClientHello arrives one byte at a time (the listener peeks at the first bytes)', async () => {
      const { port, nextSocket } = await listen();
      // A relay that forwards the dialler's first 40 bytes one at a time, then the rest as it comes.
      const relay = net.createServer((inbound) => {
        sockets.push(inbound);
        const outbound = net.connect(port, '127.0.0.1');
        sockets.push(outbound);
        outbound.setNoDelay(true);
        outbound.pipe(inbound);
        let dribbled = 0;
        inbound.on('data', async (chunk: Buffer) => {
          if (dribbled >= 40) {
            outbound.write(chunk);
            return;
          }
          inbound.pause();
          for (const byte of chunk) {
            outbound.write(Buffer.of(byte));
            if (dribbled++ < 40) await sleep(2);
          }
          inbound.resume();
        });
        inbound.on('error', () => undefined);
        outbound.on('error', () => undefined);
      });
      servers.push(relay);
      await new Promise<void>((res) => relay.listen(0, '127.0.0.1', res));
      const relayPort = (relay.address() as net.AddressInfo).port;
      const [dial, accept] = await Promise.all([
        settle(connectChannel({ endpoint: { host: '127.0.0.1', port: relayPort }, role: 'main', uuid: newMigrationId(), tls: loadTlsCredentials({ dir: good }, 'client') })),
        settle(nextSocket().then((s) => acceptChannel(s, { tls: loadTlsCredentials({ dir: good }, 'server') }))),
      ]);
      if (dial.ok) channels.push(dial.value);
      if (accept.ok) channels.push(accept.value.channel);
      expect(dial.ok, dial.ok ? '' : dial.error.message).to.equal(true);
      expect(accept.ok, accept.ok ? '' : accept.error.message).to.equal(true);
      if (!dial.ok || !accept.ok) return;
      await exchange(dial.value, accept.value.channel);
    });
  });

  describe('TLS mismatches fail both ends with the cause', function () {
    this.timeout(20_000);

    it('wrong CA: the destination certificate is not signed by the CA the dialler trusts', async () => {
      const r = await attempt(mix('client', other, good), loadTlsCredentials({ dir: good }, 'server'));
      const m = bothFailed(r, 'TLS_UNTRUSTED');
      expect(m.dial).to.match(/main channel to 127\.0\.0\.1:\d+: the destination's certificate \(subject CN=localhost, issuer CN=livemig-ca\) is not signed by the CA this side trusts \(CN=other-ca\)/);
      expect(m.accept).to.match(/the dialler refused the connection: this listener's certificate .* is not signed by the CA the dialler trusts/);
    });

    it("wrong CA: the client certificate is not signed by the listener's CA", async () => {
      const r = await attempt(mix('client', good, other), loadTlsCredentials({ dir: good }, 'server'));
      const m = bothFailed(r, 'TLS_UNTRUSTED');
      expect(m.accept).to.match(/the client certificate CN=intruder \(subject CN=intruder, issuer CN=other-ca\) is not signed by the CA this side trusts \(CN=livemig-ca\)/);
      expect(m.dial).to.match(/the destination refused the connection: the client certificate CN=intruder .* is not signed by the CA the listener trusts/);
    });

    it('expired server certificate', async () => {
      const r = await attempt(loadTlsCredentials({ dir: expired }, 'client'), loadTlsCredentials({ dir: expired }, 'server'));
      const m = bothFailed(r, 'TLS_EXPIRED');
      expect(m.dial).to.match(/the destination's certificate .* has expired \(not valid after .*\): renew it/);
      expect(m.accept).to.match(/the dialler refused the connection: this listener's certificate .* has expired/);
    });

    it('expired client certificate', async () => {
      const r = await attempt(mix('client', good, expired), mix('server', expired, good));
      const m = bothFailed(r, 'TLS_EXPIRED');
      expect(m.accept).to.match(/the client certificate CN=livemig-client .* has expired/);
      expect(m.dial).to.match(/the destination refused the connection: the client certificate CN=livemig-client .* has expired/);
    });

    it('not-yet-valid certificate', async () => {
      const r = await attempt(loadTlsCredentials({ dir: future }, 'client'), loadTlsCredentials({ dir: future }, 'server'));
      const m = bothFailed(r, 'TLS_NOT_YET_VALID');
      expect(m.dial).to.match(/the destination's certificate .* is not valid yet \(not before .*\): check the clocks/);
      expect(m.accept).to.match(/this listener's certificate .* is not valid yet/);
    });

    it('wrong host: the dialled IP is not in the server certificate SANs', async () => {
      const r = await attempt(loadTlsCredentials({ dir: other }, 'client'), loadTlsCredentials({ dir: other }, 'server'));
      const m = bothFailed(r, 'TLS_HOST');
      expect(m.dial).to.contain("the destination's certificate is not valid for 127.0.0.1: it names DNS:other.invalid");
      expect(m.accept).to.contain('the dialler reached this listener as 127.0.0.1, which is not in this listener\'s certificate (it names DNS:other.invalid)');
    });

    it("authz: the client subject is not in the listener's list", async () => {
      const r = await attempt(loadTlsCredentials({ dir: good }, 'client'), loadTlsCredentials({ dir: good, authz: ['CN=someone-else', 'CN=admin,O=Example'] }, 'server'));
      const m = bothFailed(r, 'TLS_AUTHZ');
      expect(m.accept).to.contain('client certificate subject "CN=livemig-client" is not allowed by the listener\'s authz list');
      expect(m.dial).to.contain('the destination refused the connection: client certificate subject "CN=livemig-client" is not allowed by the listener\'s authz list');
    });

    it('no client certificate', async () => {
      const client: TlsCredentials = { kind: 'x509', side: 'client', ca: read(good, 'ca-cert.pem') };
      const r = await attempt(client, loadTlsCredentials({ dir: good }, 'server'));
      const m = bothFailed(r, 'TLS_NO_CLIENT_CERT');
      expect(m.dial).to.contain('the destination requires a client certificate signed by its CA, and this side sent none');
      expect(m.accept).to.contain('the peer sent no client certificate');
    });

    it('PSK: both ends know the identity but the keys differ', async () => {
      const a = path.join(tmp, 'a.psk');
      const b = path.join(tmp, 'b.psk');
      fs.writeFileSync(a, 'qemu:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n');
      fs.writeFileSync(b, 'qemu:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n');
      const r = await attempt(loadTlsCredentials({ pskFile: a }, 'client'), loadTlsCredentials({ pskFile: b }, 'server'));
      const m = bothFailed(r, 'TLS_PSK_KEY');
      expect(m.dial).to.contain('the destination rejected our pre-shared key for identity "qemu"');
      expect(m.accept).to.contain('the peer\'s pre-shared key for identity "qemu" differs from this listener\'s');
    });

    it('PSK: the listener does not know the identity', async () => {
      const file = path.join(tmp, 'ids.psk');
      fs.writeFileSync(file, 'qemu:00112233445566778899aabbccddeeff\nalice:00112233445566778899aabbccddeeff\n');
      const r = await attempt(loadTlsCredentials({ pskFile: file, pskIdentity: 'alice' }, 'client'), loadTlsCredentials({ pskFile: file }, 'server'));
      const m = bothFailed(r, 'TLS_PSK_IDENTITY');
      expect(m.dial).to.contain('the destination does not know PSK identity "alice"');
      expect(m.accept).to.contain('the peer offered PSK identity "alice", which this listener does not know (it knows "qemu")');
    });

    it('a plaintext dialler meets a TLS listener', async () => {
      const r = await attempt(undefined, loadTlsCredentials({ dir: good }, 'server'));
      const m = bothFailed(r, 'TLS_PLAINTEXT');
      expect(m.accept).to.contain('the peer spoke plaintext to a TLS listener (enable TLS on both ends, or on neither)');
      expect(m.dial).to.contain('the destination refused the connection: the destination requires TLS, and this side dialled in plaintext');
    });

    it('a TLS dialler meets a plaintext listener', async () => {
      const r = await attempt(loadTlsCredentials({ dir: good }, 'client'), undefined);
      const m = bothFailed(r, 'TLS_NOT_EXPECTED');
      expect(m.dial).to.contain('the destination does not speak TLS: it answered in plaintext');
      expect(m.accept).to.contain('the peer started a TLS handshake, but this listener is plaintext');
    });

    it('certificates against a pre-shared key', async () => {
      const file = path.join(tmp, 'mode.psk');
      fs.writeFileSync(file, 'qemu:00112233445566778899aabbccddeeff\n');
      const r = await attempt(loadTlsCredentials({ pskFile: file }, 'client'), loadTlsCredentials({ dir: good }, 'server'));
      expect(r.dial.ok || r.accept.ok).to.equal(false);
      const d = (r.dial as { error: Error }).error as TlsError;
      expect(d.code, d.message).to.equal('TLS_MODE');
    });
  });

  describe('TLS handshake timeouts', function () {
    this.timeout(20_000);

    it('connectChannel gives up on a listener that never answers the ClientHello', async () => {
      const { port, nextSocket } = await listen();
      void nextSocket().then((s) => s.resume()); // reads and ignores
      const t0 = Date.now();
      const e = await connectChannel({ endpoint: { host: '127.0.0.1', port }, role: 'main', uuid: newMigrationId(), tls: loadTlsCredentials({ dir: good }, 'client'), timeoutMs: 300 }).then(
        () => null,
        (err: Error) => err,
      );
      expect(e).to.be.instanceOf(TlsError);
      expect((e as TlsError).code).to.equal('TLS_TIMEOUT');
      expect(e!.message).to.match(/main channel to 127\.0\.0\.1:\d+: the TLS handshake did not complete within 300 ms/);
      expect(Date.now() - t0).to.be.lessThan(3000);
    });

    it('acceptChannel gives up on a dialler that sends nothing, or stops in the middle of its ClientHello', async () => {
      const { port, nextSocket } = await listen();
      const silent = net.connect(port, '127.0.0.1');
      sockets.push(silent);
      silent.on('error', () => undefined);
      const e1 = await nextSocket().then((s) => acceptChannel(s, { tls: loadTlsCredentials({ dir: good }, 'server'), timeoutMs: 300 })).then(
        () => null,
        (err: Error) => err,
      );
      expect((e1 as TlsError).code, e1?.message).to.equal('TLS_TIMEOUT');
      expect(e1!.message).to.contain('no TLS handshake within 300 ms');
      const partial = net.connect(port, '127.0.0.1', () => partial.write(Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00, 0x01])));
      sockets.push(partial);
      partial.on('error', () => undefined);
      const e2 = await nextSocket().then((s) => acceptChannel(s, { tls: loadTlsCredentials({ dir: good }, 'server'), timeoutMs: 300 })).then(
        () => null,
        (err: Error) => err,
      );
      expect((e2 as TlsError).code, e2?.message).to.equal('TLS_TIMEOUT');
      expect(e2!.message).to.contain('the TLS handshake did not complete within 300 ms');
    });
  });
});
