/**
 * OutgoingMigration against small in-test destinations (acceptChannel over loopback TCP) and a
 * real 4 MiB `ab` Machine: whatever ends the migration before switchover, run() resolves with
 * a report saying why, the guest runs on, and dirty tracking lets go of its RAM.
 */
import { expect } from 'chai';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { MsgType, type Frame, type Message } from '@livemig/protocol';
import { acceptChannel, type Channel, type MigrationReport } from '@livemig/transport';
import { Machine } from '@livemig/machine';
import { DirtyTracker } from '@livemig/uffd';
import { OutgoingMigration, type Phase } from '@livemig/source';

const MiB = 1024 * 1024;

// ---- an in-test destination ---------------------------------------------------------------

type Behaviour = (f: Frame, ch: Channel, dest: FakeDest) => void | Promise<void>;

interface FakeDest {
  address: string;
  /** Message types received, in order. */
  types: number[];
  /** The SETUP received. */
  setup: Message | null;
  /** Page payload bytes received. */
  pageBytes: number;
  /** Resolves with the channel once the source's hello was accepted. */
  channel: Promise<Channel>;
  /** Resolves with the error (or null) the channel closed with. */
  closed: Promise<Error | null>;
}

const servers: net.Server[] = [];
const channels: Channel[] = [];
const machines: Machine[] = [];

afterEach(async () => {
  for (const c of channels.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  await Promise.all(machines.splice(0).map((m) => m.destroy()));
});

async function fakeDest(behaviour: Behaviour, opts: { pong?: (id: number, ch: Channel) => void } = {}): Promise<FakeDest> {
  const server = net.createServer({ pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  let gotChannel!: (c: Channel) => void;
  const dest: FakeDest = {
    address: `127.0.0.1:${port}`,
    types: [],
    setup: null,
    pageBytes: 0,
    channel: new Promise((r) => (gotChannel = r)),
    closed: Promise.resolve(null),
  };
  dest.closed = dest.channel.then((c) => c.whenClosed());
  server.once('connection', (socket) => {
    void acceptChannel(socket, { roles: ['main'] }).then(({ channel }) => {
      channels.push(channel);
      channel.setHandler((f) => {
        dest.types.push(f.msg.type);
        // Every livemig destination answers PING (the source checks it caught up before stopping).
        if (f.msg.type === MsgType.PING) {
          if (opts.pong) opts.pong(f.msg.id, channel);
          else channel.send({ type: MsgType.PONG, id: f.msg.id });
        }
        if (f.msg.type === MsgType.SETUP) dest.setup = f.msg;
        if (f.msg.type === MsgType.PAGE_RUN || f.msg.type === MsgType.PAGES) dest.pageBytes += f.payload.length;
        return behaviour(f, channel, dest);
      });
      gotChannel(channel);
    });
  });
  return dest;
}

/** Accepts SETUP, swallows pages, confirms COMPLETE with SHUT ok: a destination that works. */
const working: Behaviour = (f, ch) => {
  if (f.msg.type === MsgType.SETUP) ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
  if (f.msg.type === MsgType.COMPLETE) ch.send({ type: MsgType.SHUT, status: 'ok' });
};

/** A frame carrying page data (PAGE_RUN, or PAGES for sparse pages). */
const isPageData = (f: Frame): boolean => f.msg.type === MsgType.PAGE_RUN || f.msg.type === MsgType.PAGES;

/**
 * A running 4 MiB ab guest with one vCPU. Every page holds data from the start (the last byte
 * of each page is set before boot), so each precopy round sends the whole 4 MiB whatever the
 * guest managed to touch: rate-limited rounds take a predictable time.
 */
async function runningGuest(): Promise<Machine> {
  const m = await Machine.create({ guest: 'ab', vcpus: 1, ram: 4 * MiB });
  machines.push(m);
  const ram = m.block('ram0').bytes();
  for (let off = 4095; off < ram.length; off += 4096) ram[off] = 0x5a;
  await m.start({ fresh: true });
  return m;
}

const steps = (m: Machine): number => m.progress().reduce((a, b) => a + b, 0);

/** The guest is running and makes progress. */
async function expectGuestRuns(m: Machine): Promise<void> {
  expect(m.running, 'machine.running').to.equal(true);
  const before = steps(m);
  await sleep(60);
  expect(steps(m), 'guest steps did not increase').to.be.greaterThan(before);
}

/** A dirty tracker on the guest's RAM can start: no userfaultfd registration was left behind. */
function expectRamUntracked(m: Machine): void {
  const t = new DirtyTracker(m.blocks.map((b) => ({ addr: b.mapping.addr, length: b.length, name: b.name, pageSize: b.pageSize })), { method: 'auto' });
  try {
    t.start();
  } finally {
    t.stop();
  }
}

// ---- tests -----------------------------------------------------------------------------------

describe('OutgoingMigration', function () {
  this.timeout(10_000);

  it('(precondition) a second dirty tracker on RAM that is already tracked is refused', async function () {
    // Makes the "no leaked registration" checks below meaningful on this kernel.
    const m = await runningGuest();
    const first = new DirtyTracker(m.blocks.map((b) => ({ addr: b.mapping.addr, length: b.length, name: b.name })), { method: 'auto' });
    if (first.method !== 'wp-async') this.skip(); // soft-dirty has no per-range registration to leak
    first.start();
    try {
      expect(() => expectRamUntracked(m)).to.throw(/EBUSY|EEXIST|register/i);
    } finally {
      first.stop();
    }
    expectRamUntracked(m);
  });

  it('completes against a destination that acknowledges SETUP and confirms COMPLETE, describing the guest in SETUP', async () => {
    const m = await runningGuest();
    const dest = await fakeDest(working);
    const mig = new OutgoingMigration(m, { to: dest.address });
    const r = await mig.run();
    expect(r.status, r.error).to.equal('completed');
    expect(r.mode).to.equal('precopy');
    expect(dest.setup).to.deep.include({
      type: MsgType.SETUP,
      guest: { kind: 'ab', config: {} },
      blocks: [{ name: 'ram0', length: 4 * MiB, pageSize: 4096 }],
      vcpus: 1,
    });
    expect(dest.types[0]).to.equal(MsgType.SETUP);
    expect(dest.types).to.include(MsgType.DEVICE);
    expect(dest.types[dest.types.length - 1]).to.equal(MsgType.COMPLETE);
    expect(r.ram.pagesNormal + r.ram.pagesZero).to.be.at.least(1024);
    expect(m.running, 'the source guest stays stopped after a completed migration').to.equal(false);
    expectRamUntracked(m);
  });

  it('in precopy, the page data sent past the destination\'s last PONG stays within 64 MiB (and one batch): the source waits for it', async function () {
    this.timeout(20_000);
    const m = await Machine.create({ guest: 'ab', vcpus: 1, ram: 256 * MiB });
    machines.push(m);
    const ram = m.block('ram0').bytes();
    for (let off = 4095; off < ram.length; off += 4096) ram[off] = 0x5a; // whole pages
    await m.start({ fresh: true });
    // Reads every frame at once, but answers no PING until told.
    const held: Array<[number, Channel]> = [];
    let holding = true;
    const dest = await fakeDest(working, {
      pong: (id, ch) => {
        if (holding) held.push([id, ch]);
        else ch.send({ type: MsgType.PONG, id });
      },
    });
    const run = new OutgoingMigration(m, { to: dest.address, downtimeLimitMs: 1000 }).run();
    await sleep(1500);
    const whileHeld = dest.pageBytes;
    expect(whileHeld, 'page data before the first PONG').to.be.within(64 * MiB, 68 * MiB);
    holding = false;
    for (const [id, ch] of held.splice(0)) ch.send({ type: MsgType.PONG, id });
    const r = await run;
    expect(r.status, r.error).to.equal('completed');
    expect(dest.pageBytes).to.be.at.least(256 * MiB);
  });

  it('a destination answering SETUP with an ERROR frame makes run() resolve failed with its reason, before any page, guest running', async () => {
    const m = await runningGuest();
    const dest = await fakeDest((f, ch) => {
      if (f.msg.type === MsgType.SETUP) ch.send({ type: MsgType.ERROR, reason: 'guest RAM of 4 MiB exceeds the limit of 1 MiB (--max-ram)' });
    });
    const r: MigrationReport = await new OutgoingMigration(m, { to: dest.address }).run();
    expect(r.status).to.equal('failed');
    expect(r.error).to.contain('guest RAM of 4 MiB exceeds the limit of 1 MiB (--max-ram)');
    expect(r.ram.pagesNormal + r.ram.pagesZero).to.equal(0);
    expect(dest.types).to.deep.equal([MsgType.SETUP]);
    await expectGuestRuns(m);
    expectRamUntracked(m);
  });

  it('a destination that closes the socket mid-precopy makes run() fail, the guest runs on and dirty tracking is stopped', async () => {
    const m = await runningGuest();
    let phaseAtClose: Phase | undefined;
    let mig!: OutgoingMigration;
    const dest = await fakeDest((f, ch) => {
      if (f.msg.type !== MsgType.SETUP) return;
      ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
      setTimeout(() => {
        phaseAtClose = mig.status().phase;
        ch.socket.destroy();
      }, 150);
    });
    // 2 MB/s: the first round of 4 MiB takes ~1.5 s, so the close lands in it.
    mig = new OutgoingMigration(m, { to: dest.address, maxBandwidth: 2_000_000 });
    const t0 = performance.now();
    const r = await mig.run();
    expect(phaseAtClose).to.equal('precopy');
    expect(r.status).to.equal('failed');
    expect(r.error).to.match(/connection closed|ECONNRESET|EPIPE/);
    expect(mig.status().phase).to.equal('failed');
    expect(performance.now() - t0).to.be.below(4000);
    await expectGuestRuns(m);
    expectRamUntracked(m);
  });

  it('after a failed migration, a second one from the same guest to a working destination completes', async () => {
    const m = await runningGuest();
    const broken = await fakeDest((f, ch) => {
      if (f.msg.type !== MsgType.SETUP) return;
      ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
      setTimeout(() => ch.socket.destroy(), 100);
    });
    const first = await new OutgoingMigration(m, { to: broken.address, maxBandwidth: 2_000_000 }).run();
    expect(first.status).to.equal('failed');
    const dest = await fakeDest(working);
    const second = await new OutgoingMigration(m, { to: dest.address }).run();
    expect(second.status, second.error).to.equal('completed');
    expect(dest.pageBytes).to.be.greaterThan(0);
  });

  /** Starts a rate-limited migration and calls cancel(reason) 150 ms after SETUP was accepted. */
  async function cancelDuringPrecopy(m: Machine, maxBandwidth: number, reason: string) {
    let mig!: OutgoingMigration;
    let cancelledIn: Phase | undefined;
    let cancelledAt = 0;
    const dest = await fakeDest((f, ch) => {
      if (f.msg.type !== MsgType.SETUP) return;
      ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
      setTimeout(() => {
        cancelledIn = mig.status().phase;
        cancelledAt = performance.now();
        mig.cancel(reason);
      }, 150);
    });
    const phases: Phase[] = [];
    mig = new OutgoingMigration(m, { to: dest.address, maxBandwidth, onProgress: (p) => phases.push(p.phase) });
    const r = await mig.run();
    return { r, dest, phases, cancelledIn, msAfterCancel: performance.now() - cancelledAt };
  }

  it('cancel() during precopy ends run() without stop-and-copy: guest running, tracking stopped, channel closed', async () => {
    const m = await runningGuest();
    const { r, dest, phases, cancelledIn } = await cancelDuringPrecopy(m, 4_000_000, 'operator cancelled');
    expect(cancelledIn).to.equal('precopy');
    expect(r.status).to.not.equal('completed');
    expect(phases).to.not.include('stop-and-copy');
    expect(await dest.closed).to.be.instanceOf(Error);
    await expectGuestRuns(m);
    expectRamUntracked(m);
  });

  // Regression, fixed: it used to be that cancel() closes the channel cleanly (closedError = null), so the PageSender's next
  // direct `ch.send()` throws a fresh ChannelClosedError("main channel to …: channel closed")
  // (or `drained()` rejects with one); run()'s catch classifies *that* error instead of the
  // CancelledError already in `abortError`, so the report says status 'failed', error
  // "main channel to 127.0.0.1:P: channel closed". Any cancel while pages are being sent
  // (i.e. nearly always during precopy) is reported as a failure. Fix: in run()'s catch use
  // `this.abortError ?? e`.
  it('cancel() during precopy reports status "cancelled" with the reason given', async () => {
    const m = await runningGuest();
    const { r, phases, cancelledIn } = await cancelDuringPrecopy(m, 4_000_000, 'operator cancelled');
    expect(cancelledIn).to.equal('precopy');
    expect(r.status, r.error).to.equal('cancelled');
    expect(r.error).to.equal('operator cancelled');
    expect(phases[phases.length - 1]).to.equal('cancelled');
  });

  // Regression, fixed: it used to be that an abort (cancel(), timeoutMs, the destination going away) does not interrupt the rate
  // limiter's sleep: PageSender awaits `limiter.take()` for the debt of the previous 1 MiB run,
  // which at 200 kB/s is ~5 s, and only then notices. run() resolves ~5 s after cancel().
  // The delay is up to (1 MiB / maxBandwidth): unbounded for low limits.
  it('cancel() ends run() promptly even under a low bandwidth limit', async function () {
    this.timeout(15_000);
    const m = await runningGuest();
    const { msAfterCancel } = await cancelDuringPrecopy(m, 200_000, 'operator cancelled');
    expect(msAfterCancel).to.be.below(1000);
  });

  // Regression, fixed (since bb2dbe5, corked writev batches): it used to be that PageSender.sendRange corks the channel for a
  // whole batch (PRECOPY_BATCH = 4 MiB) and only uncorks at its end or when the 4 MiB write
  // high-water mark is hit, while it paces the *queueing* with the rate limiter. Under
  // --max-bandwidth the wire therefore sees nothing for a whole batch and then 4 MiB at line
  // rate: at 4 MB/s the destination gets its first page ~0.8 s after SETUP, then 4 MiB every
  // ~1 s, instead of a steady ~4 MB/s with ~10 ms bursts (RateLimiter's contract).
  it('under maxBandwidth page data flows steadily: the first pages arrive within 300 ms at 4 MB/s', async () => {
    const m = await runningGuest();
    let ackAt = 0;
    let firstDataAt = 0;
    const dest = await fakeDest((f, ch) => {
      if (f.msg.type === MsgType.SETUP) {
        ackAt = performance.now();
        ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
      }
      if (isPageData(f) && !firstDataAt) firstDataAt = performance.now();
    });
    const mig = new OutgoingMigration(m, { to: dest.address, maxBandwidth: 4_000_000 });
    setTimeout(() => mig.cancel(), 1200);
    await mig.run();
    expect(firstDataAt, 'no page data at all').to.be.greaterThan(0);
    expect(firstDataAt - ackAt).to.be.below(300);
  });

  it('timeoutMs: a migration not done in time fails with "timed out", guest running', async () => {
    const m = await runningGuest();
    const dest = await fakeDest((f, ch) => {
      if (f.msg.type === MsgType.SETUP) ch.send({ type: MsgType.ACK, of: MsgType.SETUP });
    });
    // 4 MB/s: the 4 MiB first round alone needs ~1 s.
    const mig = new OutgoingMigration(m, { to: dest.address, maxBandwidth: 4_000_000, timeoutMs: 300 });
    const t0 = performance.now();
    const r = await mig.run();
    const ms = performance.now() - t0;
    expect(r.status).to.equal('failed');
    expect(r.error).to.contain('timed out');
    expect(r.error).to.equal('migration timed out after 0.3 s');
    expect(ms).to.be.at.least(290);
    expect(ms).to.be.below(3000);
    const err = await dest.closed;
    expect(err?.message).to.contain('connection closed');
    await expectGuestRuns(m);
    expectRamUntracked(m);
  });

  it('timeoutMs also covers a destination that never answers SETUP', async () => {
    const m = await runningGuest();
    const dest = await fakeDest(() => undefined);
    const r = await new OutgoingMigration(m, { to: dest.address, timeoutMs: 250 }).run();
    expect(r.status).to.equal('failed');
    expect(r.error).to.equal('migration timed out after 0.25 s');
    expect(dest.types).to.deep.equal([MsgType.SETUP]);
    await expectGuestRuns(m);
  });

  it('a destination that is not listening fails the migration with ECONNREFUSED, guest running', async () => {
    const m = await runningGuest();
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const { port } = s.address() as net.AddressInfo;
    await new Promise((r) => s.close(r));
    const r = await new OutgoingMigration(m, { to: `127.0.0.1:${port}` }).run();
    expect(r.status).to.equal('failed');
    expect(r.error).to.contain('ECONNREFUSED');
    await expectGuestRuns(m);
  });
});
