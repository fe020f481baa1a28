/**
 * PreemptThread: the source's preempt thread, driven from the main thread against an in-test
 * destination (acceptChannel over loopback TCP, role preempt). The thread dials the channel,
 * answers requests read on it from guest RAM in shared memory, and reports what it sent.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { MsgType, type Frame } from '@livemig/protocol';
import { acceptChannel, type Channel } from '@livemig/transport';
import { mapAnonymous, type Mapping } from '@livemig/uffd';
import { PageBitmap, PREFETCH_MIN } from '@livemig/source';
import { PreemptThread, type PreemptThreadEvents, type PreemptThreadOptions } from '../dist/preempt-thread.js';

const PS = 4096;
const PAGES = 1024;
const UUID = '0d9b5f0e-8a4c-4d43-9d55-3f2a8b7c6e10';

const servers: net.Server[] = [];
const channels: Channel[] = [];
const threads: PreemptThread[] = [];
const mappings: Mapping[] = [];

afterEach(async () => {
  await Promise.all(threads.splice(0).map((t) => t.end()));
  for (const c of channels.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  for (const m of mappings.splice(0)) m.unmap();
});

/** A destination listening for the preempt channel; `frames` collects what arrives on it. It answers PINGs unless told not to. */
/** A frame as received: its message, and a copy of its payload (payload buffers are reused after the handler). */
interface Got {
  msg: Frame['msg'];
  data: Buffer;
}

async function listener(opts: { answerPings?: boolean } = {}): Promise<{ port: number; channel: Promise<Channel>; frames: Got[] }> {
  const server = net.createServer({ pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const frames: Got[] = [];
  const channel = new Promise<Channel>((resolve) =>
    server.once('connection', (socket) => {
      void acceptChannel(socket, { roles: ['preempt'], uuid: UUID }).then(({ channel: ch }) => {
        channels.push(ch);
        ch.setHandler((f) => {
          frames.push({ msg: f.msg, data: Buffer.concat(f.payload.segments) });
          if (f.msg.type === MsgType.PING && opts.answerPings !== false) ch.send({ type: MsgType.PONG, id: f.msg.id });
        });
        resolve(ch);
      });
    }),
  );
  return { port: (server.address() as net.AddressInfo).port, channel, frames };
}

interface Recorded {
  sent: Array<{ ranges: number[]; onChannel: boolean; pages: number; bytes: number }>;
  closed: Error[];
  fatal: Error[];
}

/** A thread serving one 4 MiB block whose page p holds the byte p % 251 + 1, all dirty. */
function thread(opts: PreemptThreadOptions = {}): { t: PreemptThread; rec: Recorded; ram: Mapping; dirty: PageBitmap } {
  const rec: Recorded = { sent: [], closed: [], fatal: [] };
  const events: PreemptThreadEvents = {
    sent: (ranges, onChannel, pages, bytes) => rec.sent.push({ ranges: Array.from(ranges), onChannel, pages, bytes }),
    closed: (e) => rec.closed.push(e),
    fatal: (e) => rec.fatal.push(e),
  };
  const t = new PreemptThread(events, opts);
  threads.push(t);
  const ram = mapAnonymous(PAGES * PS, { name: 'ram0' });
  mappings.push(ram);
  const buffer = Buffer.from(ram.view());
  for (let p = 0; p < PAGES; p++) buffer.fill((p % 251) + 1, p * PS, (p + 1) * PS);
  const dirty = new PageBitmap(PAGES, true, { shared: true });
  t.serve([{ name: 'ram0', pageSize: PS, pages: PAGES, buffer, populated: new PageBitmap(PAGES, true, { shared: true }), dirty }]);
  return { t, rec, ram, dirty };
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const pageRuns = (frames: Got[]): Got[] => frames.filter((f) => f.msg.type === MsgType.PAGE_RUN);

describe('PreemptThread', function () {
  this.timeout(10_000);

  it('runs with a short scheduler slice by default, and says so', async () => {
    const { t } = thread();
    await until(() => t.scheduling !== null, 'the thread to start');
    expect(t.scheduling).to.equal('short-slice');
  });

  it('runs realtime when asked (the kernel allows it here, as root), and says so', async () => {
    const fifoThreads = (): number =>
      fs.readdirSync('/proc/self/task').filter((tid) => /^policy\s*:\s*1$/m.test(fs.readFileSync(`/proc/self/task/${tid}/sched`, 'utf8'))).length;
    const before = fifoThreads();
    const { t } = thread({ realtime: true });
    await until(() => t.scheduling !== null, 'the thread to start');
    expect(t.scheduling).to.equal('realtime');
    // And the kernel agrees: one more thread of this process is SCHED_FIFO now.
    expect(fifoThreads()).to.equal(before + 1);
  });

  it('dials the preempt channel with the migration UUID and resolves with its label', async () => {
    const dest = await listener();
    const { t } = thread();
    const label = await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    expect(label).to.be.a('string').and.not.equal('');
    await dest.channel;
    expect(t.ready).to.equal(true);
  });

  it('rejects connect with the reason when nothing listens there', async () => {
    const dest = await listener();
    await new Promise((r) => servers.pop()!.close(r));
    const { t } = thread();
    let err: Error | null = null;
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID }).catch((e: Error) => (err = e));
    expect(err).to.be.an('error');
    expect(err!.message).to.match(/ECONNREFUSED/);
    expect(t.ready).to.equal(false);
  });

  it('answers a request read on its channel with the page from guest RAM, then reports it sent', async () => {
    const dest = await listener();
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    const ch = await dest.channel;
    ch.send({ type: MsgType.REQ_PAGES, block: 'ram0', offset: 100 * PS, length: PS });
    await until(() => rec.sent.length === 1, 'the sent report');
    await until(() => pageRuns(dest.frames).length > 0, 'the page');
    const first = pageRuns(dest.frames)[0]!;
    expect(first.msg).to.include({ block: 'ram0', offset: 100 * PS, count: 1 });
    expect(first.data.equals(Buffer.alloc(PS, (100 % 251) + 1))).to.equal(true);
    expect(rec.sent[0]).to.deep.equal({ ranges: [0, 100, 101], onChannel: true, pages: 1, bytes: PS });
  });

  it('sends a request forwarded by the main thread (request()) on its channel, reported as not from it', async () => {
    const dest = await listener();
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    t.request(0, 7, 8);
    await until(() => rec.sent.length === 1, 'the sent report');
    await until(() => pageRuns(dest.frames).length > 0, 'the page');
    expect(pageRuns(dest.frames)[0]!.msg).to.include({ offset: 7 * PS, count: 1 });
    expect(rec.sent[0]!.onChannel).to.equal(false);
  });

  it('reads the main thread\'s dirty flags live: pages cleared there are not prefetched', async () => {
    const dest = await listener();
    const { t, rec, dirty } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    t.request(0, 199, 200);
    await until(() => rec.sent.length === 1, 'the first sent report');
    dirty.clearRange(210, PAGES); // the background stream sent everything from page 210 on
    t.request(0, 200, 201); // follows page 199: a prefetch window goes with it
    await until(() => rec.sent.length === 2, 'the second sent report');
    expect(rec.sent[1]!.ranges).to.deep.equal([0, 200, 201, 0, 201, 210]);
    expect(PREFETCH_MIN).to.be.greaterThan(10);
  });

  it('ping resolves once the destination answered, after the pages sent before it', async () => {
    const dest = await listener();
    const { t } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    t.request(0, 0, 1);
    await t.ping();
    const types = dest.frames.map((f) => f.msg.type);
    expect(types).to.include(MsgType.PAGE_RUN);
    expect(types.lastIndexOf(MsgType.PING)).to.be.greaterThan(types.indexOf(MsgType.PAGE_RUN));
  });

  it('reports closed when the destination closes the channel, and fails pending pings', async () => {
    const dest = await listener();
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    (await dest.channel).close();
    await until(() => rec.closed.length === 1, 'the closed event');
    expect(t.ready).to.equal(false);
    let err: Error | null = null;
    await t.ping().catch((e: Error) => (err = e));
    expect(err).to.be.an('error');
  });

  it('drop() closes the channel without a closed event and fails pending pings', async () => {
    const dest = await listener({ answerPings: false });
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    const ch = await dest.channel;
    const pong = t.ping().then(() => null, (e: Error) => e);
    t.drop();
    expect(await pong).to.be.an('error');
    await ch.whenClosed();
    await sleep(50);
    expect(rec.closed).to.deep.equal([]);
    expect(t.ready).to.equal(false);
  });

  it('reports nothing sent on a connection that was dropped', async () => {
    const dest = await listener();
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    await dest.channel;
    t.drop();
    t.request(0, 5, 6);
    await t.ping().catch(() => undefined);
    await sleep(100);
    expect(rec.sent).to.deep.equal([]);
  });

  it('closes the channel on a request outside the block, naming it', async () => {
    const dest = await listener();
    const { t, rec } = thread();
    await t.connect({ endpoint: { host: '127.0.0.1', port: dest.port }, uuid: UUID });
    (await dest.channel).send({ type: MsgType.REQ_PAGES, block: 'ram0', offset: PAGES * PS, length: PS });
    await until(() => rec.closed.length === 1, 'the closed event');
    expect(rec.closed[0]!.message).to.match(/ram0/);
    expect(rec.sent).to.deep.equal([]);
  });

  it('end() stops the thread: connect is refused afterwards', async () => {
    const { t } = thread();
    await t.end();
    let err: Error | null = null;
    await t.connect({ endpoint: { host: '127.0.0.1', port: 1 }, uuid: UUID }).catch((e: Error) => (err = e));
    expect(err!.message).to.match(/ended/);
  });
});
