/**
 * The control socket's generic core (ControlServer, control.ts) in-process, over real Unix
 * sockets in a temporary directory, with simple handlers: greeting, replies, errors, events,
 * ids, the socket file's mode and life cycle.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DestState } from '@livemig/dest';
import type { OutgoingMigration, Progress } from '@livemig/source';
import { CLI_VERSION, CommandError, ControlServer, MAX_LINE_BYTES } from '../src/control.js';
import { DestControl, SourceControl } from '../src/control-commands.js';

/** A raw JSON-lines client: what it sends is exactly what the test writes. */
class LineClient {
  private buf = '';
  private readonly lines: Array<Record<string, any>> = [];
  private wake: (() => void) | null = null;
  readonly closed: Promise<void>;

  constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (s: string) => {
      this.buf += s;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(this.buf.slice(0, nl)) as Record<string, any>);
        this.buf = this.buf.slice(nl + 1);
      }
      this.wake?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static connect(p: string): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p);
      s.once('connect', () => resolve(new LineClient(s)));
      s.once('error', reject);
    });
  }

  /** The next line received (waits up to 2 s). */
  async next(): Promise<Record<string, any>> {
    const until = Date.now() + 2000;
    while (this.lines.length === 0) {
      if (Date.now() > until) throw new Error('no line within 2 s');
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    return this.lines.shift()!;
  }

  send(line: string): void {
    this.socket.write(`${line}\n`);
  }

  /** Sends a request and returns the next line (the reply: no events are emitted meanwhile). */
  async request(req: unknown): Promise<Record<string, any>> {
    this.send(JSON.stringify(req));
    return this.next();
  }

  close(): void {
    this.socket.destroy();
  }
}

describe('ControlServer (control socket core)', () => {
  let dir: string;
  let sock: string;
  let server: ControlServer;
  const clients: LineClient[] = [];

  const connect = async (): Promise<LineClient> => {
    const c = await LineClient.connect(sock);
    clients.push(c);
    return c;
  };

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-control-'));
    sock = path.join(dir, 'ctl.sock');
    server = new ControlServer({
      echo: (args) => ({ got: args }),
      later: async () => {
        await new Promise((r) => setTimeout(r, 20));
        return { done: true };
      },
      nothing: () => undefined,
      boom: () => {
        throw new Error('the handler failed on purpose');
      },
      missing: () => {
        throw new CommandError('no such thing', 'CommandNotFound');
      },
    });
    await server.listen(sock);
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('greets a client with the QMP banner and the cli version', async () => {
    const c = await connect();
    const g = await c.next();
    expect(g).to.deep.equal({ QMP: { version: { livemig: CLI_VERSION }, capabilities: [] } });
    expect(CLI_VERSION).to.match(/^\d+\.\d+\.\d+/);
  });

  it('answers a command with its return value, and echoes the id', async () => {
    const c = await connect();
    await c.next();
    expect(await c.request({ execute: 'echo', arguments: { a: 1 }, id: 'x-7' })).to.deep.equal({ return: { got: { a: 1 } }, id: 'x-7' });
    expect(await c.request({ execute: 'echo', id: { nested: [1, 2] } })).to.deep.equal({ return: { got: {} }, id: { nested: [1, 2] } });
    expect(await c.request({ execute: 'nothing' })).to.deep.equal({ return: {} });
    expect(await c.request({ execute: 'later', id: 3 })).to.deep.equal({ return: { done: true }, id: 3 });
    expect(await c.request({ execute: 'qmp_capabilities', id: 0 })).to.deep.equal({ return: {}, id: 0 });
  });

  it('answers requests in the order they were sent, even when an earlier one takes longer', async () => {
    const c = await connect();
    await c.next();
    c.send(JSON.stringify({ execute: 'later', id: 1 }));
    c.send(JSON.stringify({ execute: 'echo', id: 2 }));
    expect((await c.next()).id).to.equal(1);
    expect((await c.next()).id).to.equal(2);
  });

  it('answers an unknown command with CommandNotFound', async () => {
    const c = await connect();
    await c.next();
    const r = await c.request({ execute: 'migrate-pause', id: 5 });
    expect(r.id).to.equal(5);
    expect(r.error.class).to.equal('CommandNotFound');
    expect(r.error.desc).to.contain('migrate-pause');
  });

  it('answers malformed requests with an error and keeps the connection usable', async () => {
    const c = await connect();
    await c.next();
    const bad = async (line: string, re: RegExp): Promise<void> => {
      c.send(line);
      const r = await c.next();
      expect(r.error, line).to.include({ class: 'GenericError' });
      expect(r.error.desc, line).to.match(re);
    };
    await bad('{"execute": "echo"', /malformed JSON/);
    await bad('not json at all', /malformed JSON/);
    await bad('[1, 2]', /must be a JSON object/);
    await bad('42', /must be a JSON object/);
    await bad('null', /must be a JSON object/);
    await bad('{"id": 1}', /no "execute"/);
    await bad('{"execute": 3}', /must be a string/);
    await bad('{"execute": "echo", "arguments": [1]}', /"arguments" must be a JSON object/);
    await bad('{"execute": "echo", "arguments": 3}', /"arguments" must be a JSON object/);
    await bad('{"execute": "echo", "extra": true}', /unexpected member "extra"/);
    // id is still echoed when the request is an object
    c.send('{"id": 9}');
    expect((await c.next()).id).to.equal(9);
    // blank lines are ignored; the connection answers the next command
    c.send('');
    expect(await c.request({ execute: 'echo', arguments: { still: 'here' }, id: 1 })).to.deep.equal({ return: { got: { still: 'here' } }, id: 1 });
  });

  it('survives an id nested too deep to encode: an error reply without it, and the connection goes on', async () => {
    const c = await connect();
    await c.next();
    const depth = 200_000; // JSON.parse takes it, JSON.stringify runs out of stack
    c.send(`{"execute": "echo", "id": ${'['.repeat(depth)}${']'.repeat(depth)}}`);
    const r = await c.next();
    expect(r.error).to.include({ class: 'GenericError' });
    expect(r.error.desc).to.match(/could not be encoded/);
    expect(await c.request({ execute: 'echo', id: 2 })).to.deep.equal({ return: { got: {} }, id: 2 });
  });

  it('turns a handler error into a GenericError with its message (or the class it chose)', async () => {
    const c = await connect();
    await c.next();
    expect(await c.request({ execute: 'boom', id: 1 })).to.deep.equal({ error: { class: 'GenericError', desc: 'the handler failed on purpose' }, id: 1 });
    expect(await c.request({ execute: 'missing', id: 2 })).to.deep.equal({ error: { class: 'CommandNotFound', desc: 'no such thing' }, id: 2 });
    expect(await c.request({ execute: 'echo', id: 3 })).to.deep.equal({ return: { got: {} }, id: 3 });
  });

  it('sends events to every connected client, with a timestamp', async () => {
    const a = await connect();
    const b = await connect();
    await a.next();
    await b.next();
    expect(server.clientCount).to.equal(2);
    const before = Date.now();
    server.emit('MIGRATION', { status: 'active' });
    server.emit('MIGRATION_PASS', { pass: 1 });
    for (const c of [a, b]) {
      const e1 = await c.next();
      expect(e1.event).to.equal('MIGRATION');
      expect(e1.data).to.deep.equal({ status: 'active' });
      expect(e1.timestamp.seconds).to.be.a('number');
      expect(e1.timestamp.microseconds).to.be.within(0, 999_999);
      const ms = e1.timestamp.seconds * 1000 + e1.timestamp.microseconds / 1000;
      expect(ms).to.be.within(before - 5, Date.now() + 5);
      expect(await c.next()).to.deep.include({ event: 'MIGRATION_PASS', data: { pass: 1 } });
    }
  });

  it('closes a connection that sends a line longer than 1 MiB, after an error reply', async () => {
    const c = await connect();
    await c.next();
    const other = await connect();
    await other.next();
    c.socket.write('"' + 'x'.repeat(MAX_LINE_BYTES + 10));
    const r = await c.next();
    expect(r.error.class).to.equal('GenericError');
    expect(r.error.desc).to.match(/longer than/);
    await c.closed;
    // the server and its other clients carry on
    expect(await other.request({ execute: 'echo', id: 1 })).to.deep.equal({ return: { got: {} }, id: 1 });
  });

  it('creates the socket file with mode 0600', () => {
    const st = fs.lstatSync(sock);
    expect(st.isSocket()).to.equal(true);
    expect(st.mode & 0o777).to.equal(0o600);
  });

  it('replaces a stale socket file, refuses a live one and refuses a file that is not a socket', async () => {
    // A stale socket: bound by a server that is gone, the file left behind.
    const stale = path.join(dir, 'stale.sock');
    const old = net.createServer();
    await new Promise<void>((r) => old.listen(stale, () => r()));
    // Closing a Node server removes its file; copy the situation of a killed process instead.
    const keep = path.join(dir, 'keep.sock');
    fs.linkSync(stale, keep);
    await new Promise<void>((r) => old.close(() => r()));
    fs.renameSync(keep, stale);
    expect(fs.lstatSync(stale).isSocket()).to.equal(true);
    const s2 = new ControlServer({ echo: () => ({ ok: 1 }) });
    await s2.listen(stale);
    const c = await LineClient.connect(stale);
    clients.push(c);
    expect((await c.next()).QMP).to.be.an('object');
    expect(await c.request({ execute: 'echo' })).to.deep.equal({ return: { ok: 1 } });
    await s2.close();
    // A socket another server answers on is not taken over.
    let err: Error | null = null;
    await new ControlServer({}).listen(sock).catch((e: Error) => (err = e));
    expect(err, 'listen on a live socket').to.be.instanceOf(Error);
    expect(err!.message).to.match(/another process is listening/);
    // A regular file is not replaced.
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'keep me');
    err = null;
    await new ControlServer({}).listen(file).catch((e: Error) => (err = e));
    expect(err, 'listen on a regular file').to.be.instanceOf(Error);
    expect(err!.message).to.match(/not a socket/);
    expect(fs.readFileSync(file, 'utf8')).to.equal('keep me');
  });

  it('removes the socket file on close and disconnects the clients', async () => {
    const c = await connect();
    await c.next();
    await server.close();
    expect(fs.existsSync(sock)).to.equal(false);
    await c.closed;
    await server.close(); // closing twice is harmless
  });
});

describe('SourceControl and DestControl (the commands of migrate send / recv)', () => {
  let dir: string;
  const clients: LineClient[] = [];
  const closers: Array<() => Promise<void>> = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-control-'));
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const close of closers.splice(0)) await close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A stand-in for OutgoingMigration that records the calls made on it. */
  const fakeMigration = (opts: { noReturn?: boolean } = {}) => {
    const calls: string[] = [];
    let progress: Progress = { phase: 'setup', round: 0, remainingBytes: 100, totalBytes: 100, transferredBytes: 0, bandwidth: 0, dirtyRate: 0 };
    const mig = {
      status: () => ({ ...progress }),
      setMaxBandwidth: (n: number) => calls.push(`max-bandwidth ${n}`),
      setDowntimeLimit: (n: number) => calls.push(`downtime-limit ${n}`),
      startPostcopy: () => calls.push('postcopy'),
      cancel: () => {
        if (opts.noReturn) throw new Error('cannot cancel: the guest already runs on the destination (postcopy)');
        calls.push('cancel');
      },
    };
    return { calls, mig: mig as unknown as OutgoingMigration, set: (p: Partial<Progress>) => (progress = { ...progress, ...p }) };
  };

  const open = async (ctl: { server: ControlServer; close(): Promise<void> }, sock: string): Promise<LineClient> => {
    closers.push(() => ctl.close());
    const c = await LineClient.connect(sock);
    clients.push(c);
    await c.next();
    return c;
  };

  it('source: maps phases to QEMU status names, sends MIGRATION_PASS per round and query-migrate figures', async () => {
    const sock = path.join(dir, 'src.sock');
    const ctl = await SourceControl.start(sock, { postcopy: false });
    const c = await open(ctl, sock);
    expect(await c.request({ execute: 'query-migrate' })).to.deep.equal({ return: { status: 'none' } });
    const f = fakeMigration();
    ctl.attach(f.mig);
    expect((await c.next()).data).to.deep.equal({ status: 'setup' });
    f.set({ phase: 'precopy' });
    ctl.progress(f.mig.status());
    expect((await c.next()).data).to.deep.equal({ status: 'active' });
    f.set({ round: 1, remainingBytes: 40, transferredBytes: 70, bandwidth: 1_000_000, dirtyRate: 5000 });
    ctl.progress(f.mig.status());
    expect(await c.next()).to.deep.include({ event: 'MIGRATION_PASS', data: { pass: 1 } });
    const q = await c.request({ execute: 'query-migrate', arguments: {} });
    expect(q.return).to.deep.include({ status: 'active', phase: 'precopy', round: 1, bandwidth: 1_000_000, 'dirty-rate': 5000 });
    expect(q.return.ram).to.deep.equal({ total: 100, transferred: 70, remaining: 40, 'dirty-sync-count': 1, mbps: 8 });
    expect((await c.request({ execute: 'query-migrate', arguments: { x: 1 } })).error.desc).to.match(/unexpected argument "x"/);
    f.set({ phase: 'stop-and-copy' });
    ctl.progress(f.mig.status());
    expect((await c.next()).data).to.deep.equal({ status: 'device' });
    f.set({ phase: 'completed', remainingBytes: 0 });
    ctl.progress(f.mig.status());
    ctl.finished('completed'); // the same status again: no second event
    expect((await c.next()).data).to.deep.equal({ status: 'completed' });
    expect((await c.request({ execute: 'migrate-cancel' })).error.desc).to.match(/already ended \(completed\)/);
  });

  it('source: migrate-set-parameters validates its arguments; settings and requests made before the migration apply when it starts', async () => {
    const sock = path.join(dir, 'src.sock');
    const ctl = await SourceControl.start(sock, { postcopy: true });
    const c = await open(ctl, sock);
    for (const args of [{ 'max-bandwidth': -1 }, { 'max-bandwidth': '5M' }, { 'downtime-limit': Infinity }, { 'downtime-limit': true }, { speed: 1 }]) {
      const r = await c.request({ execute: 'migrate-set-parameters', arguments: args });
      expect(r.error?.class, JSON.stringify(args)).to.equal('GenericError');
    }
    expect((await c.request({ execute: 'migrate-set-parameters', arguments: { 'max-bandwidth': 1e6, 'downtime-limit': 500 } })).return).to.deep.equal({});
    expect((await c.request({ execute: 'migrate-start-postcopy' })).return).to.deep.equal({});
    const f = fakeMigration();
    ctl.attach(f.mig);
    expect(f.calls).to.deep.equal(['max-bandwidth 1000000', 'downtime-limit 500', 'postcopy']);
    expect((await c.next()).data).to.deep.equal({ status: 'setup' });
    expect((await c.request({ execute: 'migrate-set-parameters', arguments: { 'max-bandwidth': 0 } })).return).to.deep.equal({});
    expect(f.calls).to.include('max-bandwidth 0');
  });

  it('source: migrate-cancel says cancelling; after the point of no return the reply is the library\'s error; start-postcopy needs --postcopy', async () => {
    const sock = path.join(dir, 'src.sock');
    const ctl = await SourceControl.start(sock, { postcopy: false });
    const c = await open(ctl, sock);
    const f = fakeMigration();
    ctl.attach(f.mig);
    await c.next(); // setup
    const pc = await c.request({ execute: 'migrate-start-postcopy' });
    expect(pc.error).to.deep.equal({ class: 'GenericError', desc: 'postcopy was not enabled for this migration (migrate send --postcopy)' });
    c.send(JSON.stringify({ execute: 'migrate-cancel', id: 1 }));
    const first = await c.next();
    const second = await c.next();
    const [ev, reply] = first.event ? [first, second] : [second, first];
    expect(reply).to.deep.equal({ return: {}, id: 1 });
    expect(ev.data).to.deep.equal({ status: 'cancelling' });
    expect(f.calls).to.deep.equal(['cancel']);
    f.set({ phase: 'precopy' });
    ctl.progress(f.mig.status()); // still cancelling until the end
    f.set({ phase: 'cancelled' });
    ctl.progress(f.mig.status());
    expect((await c.next()).data).to.deep.equal({ status: 'cancelled' });

    const sock2 = path.join(dir, 'src2.sock');
    const ctl2 = await SourceControl.start(sock2, { postcopy: true });
    const c2 = await open(ctl2, sock2);
    const g = fakeMigration({ noReturn: true });
    ctl2.attach(g.mig);
    await c2.next();
    const r = await c2.request({ execute: 'migrate-cancel', id: 2 });
    expect(r).to.deep.equal({ error: { class: 'GenericError', desc: 'cannot cancel: the guest already runs on the destination (postcopy)' }, id: 2 });
  });

  it('destination: query-migrate from the progress data, MIGRATION, MIGRATION_PAUSED and MIGRATION_RESUMED events, no migrate-cancel', async () => {
    const sock = path.join(dir, 'dst.sock');
    const ctl = await DestControl.start(sock);
    const c = await open(ctl, sock);
    expect(await c.request({ execute: 'query-migrate' })).to.deep.equal({ return: { status: 'none' } });
    expect((await c.request({ execute: 'migrate-cancel' })).error.class).to.equal('CommandNotFound');
    ctl.progress({ state: DestState.SETUP, receivedBytes: 10, totalBytes: 100, round: 1 });
    expect((await c.next()).data).to.deep.equal({ status: 'active' });
    expect((await c.request({ execute: 'query-migrate' })).return).to.deep.equal({ status: 'active', state: 'setup', round: 1, ram: { total: 100, received: 10 }, recoveries: 0 });
    ctl.progress({ state: DestState.RUNNING, receivedBytes: 50, totalBytes: 100, round: 2 });
    expect((await c.next()).data).to.deep.equal({ status: 'postcopy-active' });
    ctl.progress({ state: DestState.PAUSED, receivedBytes: 60, totalBytes: 100, round: 2, pausedReason: 'link cut', recoveries: 0 });
    expect(await c.next()).to.deep.include({ event: 'MIGRATION_PAUSED', data: { reason: 'link cut' } });
    expect((await c.next()).data).to.deep.equal({ status: 'postcopy-paused' });
    expect((await c.request({ execute: 'query-migrate' })).return).to.deep.include({ status: 'postcopy-paused', 'paused-reason': 'link cut' });
    expect((await c.request({ execute: 'migrate-recover', arguments: { listen: 42 } })).error.desc).to.match(/"listen" must be a HOST:PORT string/);
    expect((await c.request({ execute: 'migrate-recover', arguments: { listen: '127.0.0.1:0' } })).error.desc).to.match(/no migration is running/);
    ctl.progress({ state: DestState.RUNNING, receivedBytes: 70, totalBytes: 100, round: 2, recoveries: 1 });
    expect(await c.next()).to.deep.include({ event: 'MIGRATION_RESUMED', data: { recoveries: 1 } });
    expect((await c.next()).data).to.deep.equal({ status: 'postcopy-active' });
    ctl.progress({ state: DestState.COMPLETED, receivedBytes: 120, totalBytes: 100, round: 2 });
    expect((await c.next()).data).to.deep.equal({ status: 'completed' });
  });
});
