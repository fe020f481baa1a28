/**
 * incoming.ts — owns one incoming migration on the destination: accept the main connection,
 * check the source's description (guest kind, RAM layout, size limit) before any page is
 * accepted, create the guest's RAM, place pages as they arrive, load the device state and
 * start the guest, then confirm to the source.
 *
 * Anything going wrong before the guest starts (garbage on the wire, a refused layout, the
 * source vanishing) discards the half-received guest and ends with a failed report naming
 * the reason; the source is told why when the connection still works.
 */
import net from 'node:net';
import os from 'node:os';
import { unpack } from 'msgpackr';
import {
  BlockTable,
  MsgType,
  forEachPageRun,
  expandTrimmedRun,
  clearTrimmedRun,
  payloadToBuffer,
  type AdviseMessage,
  type DiscardMessage,
  type Frame,
  type SetupMessage,
} from '@livemig/protocol';
import {
  acceptChannel,
  emptyRamReport,
  DEFAULT_POSTCOPY_QUEUE_BYTES,
  formatEndpoint,
  mbps,
  parseEndpoint,
  type Channel,
  type Endpoint,
  type MigrationReport,
  formatBytes,
  round1,
  trace,
  WRITE_HIGH_WATER_MARK,
  startKeepalive,
  LINK_PAUSED,
  type TlsCredentials,
} from '@livemig/transport';
import { Userfaultfd, DEFAULT_FEATURES, UFFD_FEATURE_MOVE, threadCpuTimes, type ThreadCpuTimes, adoptMapping, mapAnonymous, createMemfd, probeHost, type Mapping } from '@livemig/uffd';
import { PAGE_PRESENT, PAGE_REQUESTED, PAGE_ZERO, PagePlacer, type PlacerBlock } from './page-placer.js';
import { Blocktime, LatencyStats, nowUs } from './blocktime.js';
import { FaultHandler } from './fault-handler.js';
import { PageRecycler } from './recycle.js';
import { Prefill } from './prefill.js';
import { DestState, DestStateMachine } from './dest-state.js';
import { defaultMachineFactory, type DestMachine, type MachineFactory } from './dest-machine.js';

/** RAM the caller already mapped, to receive a block into. */
export interface ExternalRam {
  name: string;
  addr: number | bigint;
  length: number;
  pageSize?: number;
}

export interface IncomingOptions {
  /** Where to listen, `HOST:PORT` (port 0 picks one; see `address`). */
  listen: string | Endpoint;
  /** Refuse guests with more RAM than this (default: the host's free memory). */
  maxRam?: number;
  /** Receive into these caller-mapped regions instead of creating RAM (matched by block name). */
  ram?: ExternalRam[];
  /** Back created RAM with memfd instead of anonymous memory. */
  backing?: 'anonymous' | 'memfd';
  /** Builds the guest from the source's description (default: @livemig/machine). */
  machineFactory?: MachineFactory;
  /**
   * vCPU threads to start while waiting for the source, before its guest is known (default 2;
   * 0: none). A guest with more vCPUs starts the rest when it arrives; the unused ones end with
   * the migration. Each costs a worker thread's memory (~10 MiB) while it waits.
   */
  spareVcpus?: number;
  /** Options for the guest's host services, e.g. the kv guest's HTTP port. */
  guestPort?: number;
  /** Fail when the source sends nothing for this long (default 30 s). */
  idleTimeoutMs?: number;
  /**
   * Host checks to treat as failed when postcopy is advised (names from `probeHost`, e.g.
   * `userfaultfd`, `UFFDIO_COPY`): simulates a host that cannot do postcopy.
   */
  refuseFeatures?: string[];
  /**
   * When the source uses a preempt channel: run the fault thread, which owns that channel and
   * places the pages it brings, as a realtime thread (SCHED_FIFO at the lowest priority), so an
   * urgent page is placed at once even while every CPU is busy. It sleeps between pages and
   * does a bounded amount of work per wake. Needs CAP_SYS_NICE; where the kernel refuses, the
   * thread gets a short scheduler slice, as without this option. The report says which
   * (`postcopy.preempt.scheduling`). Default false.
   */
  preemptRealtime?: boolean;
  /**
   * Postcopy without a preempt channel: a requested page arrives behind whatever the main
   * channel's kernel receive queue holds, which Linux grows to 11–32 MiB here (10–30 ms of
   * pages). From LISTEN on the queue is bounded to this many bytes (the kernel keeps twice the
   * figure); 0 leaves it to the kernel. Default 1 MiB.
   */
  postcopyQueueBytes?: number;
  /**
   * Postcopy: allocate the pages still to come ahead, in moments when no frame is waiting
   * (prefill.ts), so that they are placed like recycled pages rather than allocated by
   * UFFDIO_COPY on arrival. Default true.
   */
  prefill?: boolean;
  /**
   * Postcopy recovery: keep listening on this address after a channel fails in postcopy, so
   * the source can reconnect by itself (default false: `recover()` opens a listener).
   */
  autoRecover?: boolean;
  /** Keepalive of every channel: a link silent this long is dead (default 4000 ms). */
  keepaliveTimeoutMs?: number;
  /**
   * TLS on every channel (server side: `loadTlsCredentials(opts, 'server')`): the source must
   * present a certificate signed by the CA (and, with `authz`, one of those subjects); or a
   * pre-shared key.
   */
  tls?: TlsCredentials;
  onProgress?: (p: IncomingProgress) => void;
}

export interface IncomingProgress {
  state: DestState;
  receivedBytes: number;
  totalBytes: number;
  round: number;
  /** Postcopy recovery: why the migration is paused (state `paused`). */
  pausedReason?: string;
  /** Recoveries completed so far. */
  recoveries?: number;
}

export interface IncomingResult {
  report: MigrationReport;
  /** The running guest when the migration completed. */
  machine: DestMachine | null;
}

/**
 * This process's monotonic clock (performance.now(), or the given reading of it) in whole µs:
 * what PONG.clockUs and the guest's start time carry to the source (see PongMessage).
 */
function clockUs(at = performance.now()): number {
  return Math.round(at * 1000);
}

/** vCPU threads started ahead by default (see IncomingOptions.spareVcpus). */
const DEFAULT_SPARE_VCPUS = 2;

export class IncomingMigration {
  private readonly server: net.Server;
  private readonly opts: IncomingOptions;
  private session: IncomingSession | null = null;

  private constructor(server: net.Server, opts: IncomingOptions) {
    this.server = server;
    this.opts = opts;
  }

  /** Starts listening. */
  static async listen(opts: IncomingOptions): Promise<IncomingMigration> {
    const ep = typeof opts.listen === 'string' ? parseEndpoint(opts.listen) : opts.listen;
    return new IncomingMigration(await listenOn(ep), opts);
  }

  /** The address actually listened on. */
  get address(): Endpoint {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  close(): void {
    this.server.close();
  }

  /** The migration's current state and figures (null before a source connected). */
  status(): IncomingProgress | null {
    return this.session?.status() ?? null;
  }

  /**
   * Postcopy recovery, on purpose: drops every channel as if the link had failed. Both ends
   * pause; the guest runs on here. Throws unless postcopy is running.
   */
  pause(reason = 'paused by request'): void {
    if (!this.session) throw new Error('no migration is running');
    this.session.pause(new Error(reason), true);
  }

  /**
   * Postcopy recovery: listens on `listen` (`HOST:PORT`, port 0 picks one) for the source to
   * reconnect; resolves with the address. Throws unless the migration is paused.
   */
  recover(listen: string | Endpoint): Promise<Endpoint> {
    if (!this.session) return Promise.reject(new Error('no migration is running'));
    return this.session.recover(listen);
  }

  /** Waits for one migration and runs it to its end; never throws: failures are in the report. */
  async accept(): Promise<IncomingResult> {
    const factory = this.opts.machineFactory ?? defaultMachineFactory;
    factory.startSpares?.(this.opts.spareVcpus ?? DEFAULT_SPARE_VCPUS);
    try {
      return await this.acceptOne();
    } finally {
      await factory.dropSpares?.().catch(() => undefined);
    }
  }

  private async acceptOne(): Promise<IncomingResult> {
    const session = new IncomingSession(this.opts);
    const socket = await new Promise<net.Socket | null>((resolve) => {
      if (!this.server.listening) return resolve(null);
      const onClose = (): void => resolve(null);
      this.server.once('close', onClose);
      this.server.once('connection', (s: net.Socket) => {
        this.server.off('close', onClose);
        resolve(s);
      });
    });
    if (!socket) return session.refuse(new Error('the listener was closed before a migration arrived'));
    this.session = session;
    // Later connections belong to this migration (its preempt channel, a reconnecting source)
    // or are turned away; the session closes the listener once it expects none.
    session.adoptListener(this.server);
    return session.run(socket);
  }
}

class IncomingSession {
  private readonly opts: IncomingOptions;
  private readonly state = new DestStateMachine();
  private ch: Channel | null = null;
  private table: BlockTable | null = null;
  private placer: PlacerBlockSet | null = null;
  private machine: DestMachine | null = null;
  private uffd: Userfaultfd | null = null;
  private mappings: Mapping[] = [];
  private device: Buffer | null = null;
  private preparing: Promise<void> | null = null;
  private readonly bounce = Buffer.alloc(2 * 1024 * 1024);
  private round = 0;
  private totalBytes = 0;
  private t0 = performance.now();
  private setupTimeMs = 0;
  /**
   * When STOPPED was read (0: not yet): the guest's pause is timed here from that read, in
   * this clock, so whatever follows (the last pages, queued in socket buffers; this thread
   * busy when they arrive) counts, and the source adds only STOPPED's own one-way time.
   */
  private stoppedReadAt = 0;
  private lastData = performance.now();
  private done!: (r: IncomingResult) => void;
  private readonly report: MigrationReport;
  private faults: FaultHandler | null = null;
  private blocktime: Blocktime | null = null;
  private readonly latency = new LatencyStats();
  /** Page key (address) → µs when its fault was read. */
  private readonly requestedAt = new Map<number, number>();
  /** Page key → µs it was placed, for requested pages placed before their fault was read here. */
  private readonly placedBeforeFault = new Map<number, number>();
  private requests = 0;
  private zeroFaults = 0;
  private discardRanges = 0;
  private discardCommands = 0;
  private discardPages = 0;
  private discardMaxRanges = 0;
  private runAt = 0;
  /**
   * Where the guest's pause starts as timed here: the read that brought STOPPED, or, from a
   * source that sends none, the read that brought COMPLETE (precopy) or RUN (postcopy).
   */
  private pausedFrom = 0;
  private progressAtRun = 0;
  private postcopyBytesAtRun = 0;
  /** The source announced a preempt channel (SETUP caps). */
  private preemptWanted = false;
  /**
   * Preempt candidates: every further connection while no preempt channel is up is one, and
   * the first whose handshake succeeds (role preempt, this migration's UUID, TLS if required)
   * becomes the channel. A stray connection (a port scan, a health check) is refused on its
   * own and does not take the place of the real one. Before ADVISE they wait here.
   */
  private preemptSockets: net.Socket[] = [];
  /** Candidates whose handshake is under way in the fault thread. */
  private preemptPending = 0;
  /** A preempt channel is up. */
  private preemptUp = false;
  /** Why the last candidate was refused. */
  private preemptError: Error | null = null;
  /** Waits at LISTEN for a candidate still shaking hands. */
  private preemptWaiters: Array<() => void> = [];
  /** Listeners whose connections belong to this migration: the first one, and recover()'s. */
  private readonly listeners = new Map<string, net.Server>();
  /** The listener the migration arrived on. */
  private firstListener: net.Server | null = null;
  /** Bytes read on channels that have been replaced (recovery). */
  private readBefore = 0;
  private pausedAt = 0;
  private pausedReason: string | undefined;
  private pausedMs = 0;
  private recoveries = 0;

  constructor(opts: IncomingOptions) {
    this.opts = opts;
    this.report = {
      role: 'destination',
      status: 'failed',
      mode: 'precopy',
      uuid: '',
      guest: { kind: '', vcpus: 0 },
      totalTimeMs: 0,
      setupTimeMs: 0,
      downtimeMs: 0,
      precopyRounds: 0,
      ram: emptyRamReport(0),
    };
  }

  /** Ends without a connection (the listener closed): a failed report. */
  refuse(err: Error): Promise<IncomingResult> {
    return new Promise<IncomingResult>((resolve) => {
      this.done = resolve;
      void this.fail(err);
    });
  }

  /** Whether the migration still waits for its preempt channel. */
  private get expectsPreempt(): boolean {
    if (this.state.terminal) return false;
    // Until SETUP is read, a preempt channel may still be announced.
    if (this.state.current === DestState.NONE) return true;
    return this.preemptWanted && !this.preemptUp;
  }

  /**
   * Whether the listener the migration arrived on is still needed: for the preempt channel,
   * or (with autoRecover) for a source reconnecting after a failure in postcopy.
   */
  private get needsFirstListener(): boolean {
    if (this.state.terminal) return false;
    if (this.expectsPreempt) return true;
    // A reconnection can only come in postcopy, but until precopy completes it may still go there.
    return (this.opts.autoRecover ?? false) && this.state.current !== DestState.COMPLETING && this.state.current !== DestState.END;
  }

  /** Routes the further connections of `server` (the one the migration arrived on) to this migration. */
  adoptListener(server: net.Server): void {
    this.firstListener = server;
    this.addListener(server);
    this.updateListeners();
  }

  private addListener(server: net.Server): void {
    const a = server.address() as net.AddressInfo;
    this.listeners.set(`${a.address}:${a.port}`, server);
    server.on('connection', (s: net.Socket) => {
      if (!this.extraConnection(s)) s.destroy();
      this.updateListeners();
    });
  }

  /** Closes the first listener once nothing more is expected on it, and every listener at the end. */
  private updateListeners(): void {
    for (const [key, server] of this.listeners) {
      const keep = !this.state.terminal && (server !== this.firstListener || this.needsFirstListener || this.state.current === DestState.NONE);
      if (!keep) {
        server.close();
        this.listeners.delete(key);
      }
    }
  }

  /** A further connection: the preempt channel, a source reconnecting in postcopy recovery, or refused (false). */
  extraConnection(socket: net.Socket): boolean {
    if (this.state.terminal || this.state.current === DestState.NONE) return false;
    socket.on('error', () => undefined);
    if (this.state.current === DestState.PAUSED) {
      // The source reconnecting. An earlier attempt still waiting for its RESUME is stale: the
      // source makes one attempt at a time, so the newest wins.
      const stale = this.ch;
      if (stale) {
        this.ch = null;
        this.readBefore += stale.bytesRead;
        stale.close(new Error('replaced by a newer reconnection'));
      }
      this.acceptResume(socket);
      return true;
    }
    if (!this.expectsPreempt) return false;
    // Bounded: a flood of connections must not hold unbounded descriptors and handshakes.
    if (this.preemptSockets.length + this.preemptPending >= MAX_PREEMPT_CANDIDATES) return false;
    if (this.faults) this.attachPreempt(socket);
    else this.preemptSockets.push(socket); // handed over once ADVISE has started the fault thread
    return true;
  }

  /** Current state and figures. */
  status(): IncomingProgress {
    return {
      state: this.state.current,
      receivedBytes: this.readBefore + (this.ch?.bytesRead ?? 0),
      totalBytes: this.totalBytes,
      round: this.round,
      ...(this.state.current === DestState.PAUSED ? { pausedReason: this.pausedReason } : {}),
      recoveries: this.recoveries,
    };
  }

  /**
   * Postcopy recovery: a channel failed (or `onPurpose`: migrate-pause) while the guest runs
   * here. Every channel is dropped; the guest runs on, vCPUs that need a missing page wait,
   * and the fault thread keeps marking their pages requested until the source is back.
   */
  pause(err: Error, onPurpose = false): void {
    if (this.state.current !== DestState.RUNNING) {
      if (onPurpose) throw new Error(`cannot pause in state ${this.state.current} (only while postcopy runs)`);
      return;
    }
    this.state.to(DestState.PAUSED, 'pause');
    this.pausedAt = performance.now();
    this.pausedReason = err.message;
    trace('dest', `paused: ${err.message}`);
    const ch = this.ch;
    this.ch = null;
    if (ch) {
      this.readBefore += ch.bytesRead;
      // On purpose, the source learns why and that it is a pause (it pauses too).
      ch.close(onPurpose ? Object.assign(new Error(err.message), { code: LINK_PAUSED }) : undefined);
    }
    this.faults?.dropPreempt();
    this.preemptUp = false;
    this.dropPreemptCandidates();
    this.updateListeners();
    this.progress();
  }

  /** Postcopy recovery: listen on `listen` for the source to reconnect. */
  async recover(listen: string | Endpoint): Promise<Endpoint> {
    if (this.state.current !== DestState.PAUSED) throw new Error(`cannot recover in state ${this.state.current} (only when paused)`);
    const ep = typeof listen === 'string' ? parseEndpoint(listen) : listen;
    for (const server of this.listeners.values()) {
      const a = server.address() as net.AddressInfo;
      if (ep.port !== 0 && a.port === ep.port) return { host: a.address, port: a.port };
    }
    const server = await listenOn(ep);
    if (this.state.terminal) {
      server.close();
      throw new Error('the migration ended while the listener opened');
    }
    this.addListener(server);
    const a = server.address() as net.AddressInfo;
    trace('dest', `listening for recovery on ${a.address}:${a.port}`);
    return { host: a.address, port: a.port };
  }

  /** A connection while paused: the source reconnecting. Its hello must carry this migration's UUID. */
  private acceptResume(socket: net.Socket): void {
    // A refused reconnection (wrong UUID, bad credentials) leaves the migration paused.
    acceptChannel(socket, { ...this.acceptOptions(), roles: ['main'], uuid: this.report.uuid }).then(
      ({ channel }) => {
        if (this.state.current !== DestState.PAUSED || this.ch) {
          channel.close(new Error('the migration is not paused any more'));
          return;
        }
        trace('dest', 'source reconnected: waiting for RESUME');
        this.useChannel(channel);
      },
      (err: Error) => trace('dest', `reconnection refused: ${err.message}`),
    );
  }

  /** Makes `channel` the main channel: frames, loss handling, keepalive. */
  private useChannel(channel: Channel): void {
    this.ch = channel;
    channel.setHandler((f) => this.onFrame(f));
    void channel.whenClosed().then((err) => this.onChannelLost(channel, err ?? new Error('connection to the source closed')));
    startKeepalive(channel, { timeoutMs: this.opts.keepaliveTimeoutMs });
  }

  /**
   * A channel closed. While postcopy runs that pauses the migration (recovery); a failed
   * reconnection leaves it paused; before postcopy it fails the migration.
   */
  private onChannelLost(channel: Channel | null, err: Error): void {
    if (channel !== null && channel !== this.ch) return; // a channel already replaced
    const st = this.state.current;
    trace('dest', `channel lost in state ${st}: ${err.message}`);
    if (this.state.terminal || st === DestState.COMPLETED) return;
    // END: every page is here; the guest is complete whatever happens to the link.
    if (st === DestState.END) return;
    if (st === DestState.RUNNING) this.pause(err);
    else if (st === DestState.PAUSED) {
      if (channel) this.readBefore += channel.bytesRead;
      this.ch = null; // the reconnection failed: still paused
      trace('dest', `recovery attempt failed: ${err.message}`);
    } else void this.fail(err);
  }

  /** RESUME from the reconnected source: say what arrived, ask again for what is pending, run on. */
  private resume(): void {
    const ch = this.ch!;
    const placer = this.placer!.placer;
    for (const b of placer.blocks.values()) {
      const bitmap = Buffer.alloc(Math.ceil(b.pages / 8));
      const st = b.state;
      for (let p = 0; p < b.pages; p++) {
        const v = st[p];
        if (v === PAGE_PRESENT || v === PAGE_ZERO) bitmap[p >> 3]! |= 1 << (p & 7);
      }
      ch.send({ type: MsgType.RECV_BITMAP, block: b.name, pages: b.pages }, bitmap);
    }
    ch.send({ type: MsgType.RESUME_ACK });
    this.boundMainQueue();
    this.state.to(DestState.RUNNING, 'RESUME');
    this.recoveries++;
    this.pausedMs += performance.now() - this.pausedAt;
    this.pausedReason = undefined;
    this.lastData = performance.now();
    // Faults that came while paused (and requests lost with the old channels) are asked again.
    let again = 0;
    for (const b of placer.blocks.values()) {
      const st = b.state;
      for (let p = 0; p < b.pages; p++) {
        if (Atomics.load(st, p) === PAGE_REQUESTED) {
          ch.send({ type: MsgType.REQ_PAGES, block: b.name, offset: p * b.pageSize, length: b.pageSize });
          again++;
        }
      }
    }
    trace('dest', `resumed; ${again} pending requests sent again`);
    this.updateListeners();
    this.progress();
  }

  /** Hands a preempt candidate to the fault thread, which runs its handshake. */
  private attachPreempt(socket: net.Socket): void {
    this.preemptPending++;
    this.faults!.attachPreempt(socket, this.report.uuid, { ...this.acceptOptions(), keepaliveTimeoutMs: this.opts.keepaliveTimeoutMs }).then(
      (label) => {
        this.preemptPending--;
        this.preemptUp = true;
        trace('dest', `${label} ready`);
        this.preemptSettled();
      },
      (e: Error) => {
        this.preemptPending--;
        this.preemptError = e;
        trace('dest', `preempt candidate refused: ${e.message}`);
        this.preemptSettled();
      },
    );
  }

  private preemptSettled(): void {
    for (const w of this.preemptWaiters.splice(0)) w();
    this.updateListeners();
  }

  /** Destroys the candidates still waiting for ADVISE (those in the fault thread go with dropPreempt). */
  private dropPreemptCandidates(): void {
    for (const s of this.preemptSockets.splice(0)) s.destroy();
  }

  /**
   * Resolves once a preempt channel is up; rejects when none is and no candidate is still
   * shaking hands (the source connects its preempt channel before LISTEN, so one should be).
   */
  private async preemptChannelUp(): Promise<void> {
    while (!this.preemptUp) {
      if (this.preemptPending === 0) {
        throw new Error(this.preemptError ? `preempt channel: ${this.preemptError.message}` : 'LISTEN before the preempt channel was set up (the source announced one)');
      }
      await new Promise<void>((r) => this.preemptWaiters.push(r));
    }
  }

  /** Options for the handshake of every channel of this migration (TLS). */
  private acceptOptions(): { tls?: TlsCredentials } {
    return this.opts.tls ? { tls: this.opts.tls } : {};
  }

  run(socket: net.Socket): Promise<IncomingResult> {
    return new Promise<IncomingResult>((resolve) => {
      this.done = (r) => {
        for (const server of this.listeners.values()) server.close();
        this.listeners.clear();
        resolve(r);
      };
      this.t0 = performance.now();
      acceptChannel(socket, { ...this.acceptOptions(), roles: ['main'] }).then(
        ({ channel, hello }) => {
          this.report.uuid = hello.uuid;
          this.useChannel(channel);
          this.watchIdle();
        },
        (err: Error) => void this.fail(err),
      );
    });
  }

  private watchIdle(): void {
    const limit = this.opts.idleTimeoutMs ?? 30_000;
    const timer = setInterval(() => {
      if (this.state.terminal) {
        clearInterval(timer);
        return;
      }
      if (this.state.current === DestState.PAUSED) {
        this.lastData = performance.now(); // recovery waits as long as it takes
        return;
      }
      if (this.ch && this.ch.bytesRead !== this.lastRead) {
        this.lastRead = this.ch.bytesRead;
        this.lastData = performance.now();
      } else if (performance.now() - this.lastData > limit) {
        clearInterval(timer);
        void this.fail(new Error(`the source sent nothing for ${limit / 1000} s`));
      }
    }, Math.min(1000, limit / 4));
    timer.unref();
  }
  private lastRead = 0;

  private onFrame(f: Frame): void | Promise<void> {
    this.framesIn++;
    this.prefill?.poke();
    const m = f.msg;
    switch (m.type) {
      case MsgType.SETUP:
        this.state.to(DestState.SETUP, 'SETUP');
        return this.setup(m).then(() => this.updateListeners());
      case MsgType.ROUND:
        this.state.expect(PRECOPY_STATES, 'ROUND');
        this.round = m.round;
        this.report.precopyRounds = m.round;
        this.progress();
        return;
      case MsgType.PAGE_RUN: {
        this.state.expect(PAGE_STATES, 'PAGE_RUN');
        this.table!.checkMessage(m);
        const b = this.placer!.get(m.block);
        const first = m.offset / b.pageSize;
        forEachPageRun(f.payload, b.pageSize, this.bounceFor(b), (src, idx, n) => this.placer!.placer.placeRun(b, first + idx, n, src));
        return;
      }
      case MsgType.TRIMMED_RUN: {
        this.state.expect(PAGE_STATES, 'TRIMMED_RUN');
        this.table!.checkMessage(m);
        const b = this.placer!.get(m.block);
        const out = this.trimmedOut(m.count * b.pageSize);
        const payload = payloadToBuffer(f.payload);
        expandTrimmedRun(payload, m.count, b.pageSize, out, true);
        try {
          this.placer!.placer.placeRun(b, m.offset / b.pageSize, m.count, out, 0, payload);
        } finally {
          clearTrimmedRun(payload, m.count, b.pageSize, out);
        }
        this.pagesTrimmed += m.count;
        return;
      }
      case MsgType.PAGES: {
        this.state.expect(PAGE_STATES, 'PAGES');
        this.table!.checkMessage(m);
        const b = this.placer!.get(m.block);
        const offs = m.offsets;
        forEachPageRun(f.payload, b.pageSize, this.bounceFor(b), (src, idx, n) => {
          for (let i = 0; i < n; i++) this.placer!.placer.placeRun(b, offs[idx + i]! / b.pageSize, 1, src, i * b.pageSize);
        });
        return;
      }
      case MsgType.ZERO: {
        this.state.expect(PAGE_STATES, 'ZERO');
        this.table!.checkMessage(m);
        const b = this.placer!.get(m.block);
        for (const [offset, count] of m.runs) this.placer!.placer.placeZero(b, offset / b.pageSize, count);
        return;
      }
      case MsgType.DEVICE:
        this.state.expect([DestState.SETUP, DestState.ADVISE, DestState.DISCARD], 'DEVICE');
        this.device = Buffer.from(payloadToBuffer(f.payload));
        return;
      case MsgType.COMPLETE:
        this.state.to(DestState.COMPLETING, 'COMPLETE');
        // From the read that brought STOPPED (or, from a source that sends none, COMPLETE):
        // placing the last pages and loading DEVICE are part of the pause.
        this.pausedFrom = this.stoppedReadAt || this.ch!.lastReadAt || performance.now();
        trace('dest', 'COMPLETE');
        return this.complete();
      case MsgType.STOPPED:
        // A timing mark only: the switchover's commands follow.
        this.state.expect([DestState.SETUP, DestState.ADVISE, DestState.DISCARD], 'STOPPED');
        this.stoppedReadAt = this.ch!.lastReadAt || performance.now();
        trace('dest', 'the source stopped the guest');
        return;
      case MsgType.ADVISE:
        this.state.expect([DestState.SETUP], 'ADVISE');
        this.advise(m);
        return;
      case MsgType.DISCARD:
        if (this.state.current !== DestState.DISCARD) {
          this.state.to(DestState.DISCARD, 'DISCARD');
          trace('dest', 'first DISCARD');
        }
        this.discard(m);
        return;
      case MsgType.LISTEN:
        this.state.to(DestState.LISTENING, 'LISTEN');
        trace('dest', `LISTEN after ${this.discardRanges} discard ranges`);
        return this.listen();
      case MsgType.RUN:
        this.state.to(DestState.RUNNING, 'RUN');
        return this.runGuest();
      case MsgType.END:
        this.state.to(DestState.END, 'END');
        this.updateListeners();
        return this.end();
      case MsgType.RESUME:
        this.state.expect([DestState.PAUSED], 'RESUME');
        this.resume();
        return;
      case MsgType.PING:
        if (m.ready && this.preparing) return this.pongWhenPrepared(m.id);
        this.pong(m.id);
        return;
      case MsgType.PONG:
        return;
      case MsgType.ERROR:
        // In postcopy this closes the channel and pauses (recovery); before, it fails.
        throw new Error(this.state.current === DestState.RUNNING ? `the source dropped the connection: ${m.reason}` : `the source aborted the migration: ${m.reason}`);
      default:
        throw new Error(`${this.state.describe()}: unexpected ${MsgType[m.type as unknown as keyof typeof MsgType] ?? m.type} from the source`);
    }
  }

  /** Postcopy advised: check this host can do it; arm the fault thread ahead of time. */
  private advise(m: AdviseMessage): void {
    const reasons: string[] = [];
    for (const ps of m.pageSizes) {
      if (ps !== 4096 && ps !== 2 * 1024 * 1024) reasons.push(`page size ${ps} is not supported for postcopy here`);
    }
    const report = probeHost({ refuse: this.opts.refuseFeatures });
    if (!report.ok) {
      for (const c of report.checks) if (c.required && !c.ok) reasons.push(`${c.name}: ${c.reason ?? c.detail}`);
      if (reasons.length === 0) reasons.push('the host probe failed');
    }
    if (reasons.length > 0) {
      // Refused: precopy carries on (the source decides whether that is acceptable).
      this.ch!.send({ type: MsgType.ACK, of: MsgType.ADVISE, info: { ok: false, reason: `postcopy is not possible on the destination: ${reasons.join('; ')}` } });
      return;
    }
    this.state.to(DestState.ADVISE, 'ADVISE');
    // Transparent huge pages would fault in 2 MiB at a time and hide 4 KiB discards: off for
    // postcopy, and now rather than at the first DISCARD or LISTEN, where madvise over all of
    // RAM (~0.3 ms here) would count as downtime. Pages placed in precopy are 4 KiB pages
    // either way (UFFDIO_COPY). END turns them back on.
    this.adviseHugepages('nohugepage');
    const placer = this.placer!.placer;
    placer.recycler = this.makeRecycler(placer);
    this.faults = new FaultHandler(
      this.uffd!,
      [...placer.blocks.values()].map((b) => ({ name: b.name, addr: b.mapping.addr, length: b.mapping.length, pageSize: b.pageSize, state: b.stateBuffer })),
      {
        request: (bi, page, tid, t, sent) => this.onFault(bi, page, tid, t, true, sent),
        duplicate: (bi, page, tid, t) => this.onFault(bi, page, tid, t, false, false),
        placed: (bi, page, t) => this.onRequestedPlaced(this.blockAt(bi), page, t),
        preemptClosed: (err) => this.onChannelLost(null, new Error(`preempt channel: ${err.message}`)),
        localZero: (bi, page, tid, t, done) => {
          this.zeroFaults++;
          const b = this.blockAt(bi);
          const key = b.mapping.addr + page * b.pageSize;
          this.blocktime?.fault(tid, key, t);
          this.blocktime?.placed(key, done);
        },
        // A fault outside every block, or the fault thread dying: the guest cannot go on.
        fatal: (err) => void this.fail(err),
      },
      { preempt: this.preemptWanted, realtime: this.opts.preemptRealtime ?? false, received: placer.receivedElsewhere },
    );
    for (const s of this.preemptSockets.splice(0)) this.attachPreempt(s);
    this.ch!.send({ type: MsgType.ACK, of: MsgType.ADVISE, info: { ok: true } });
  }

  private blockList: PlacerBlock[] | null = null;

  private blockAt(bi: number): PlacerBlock {
    this.blockList ??= [...this.placer!.placer.blocks.values()];
    return this.blockList[bi]!;
  }

  private onFault(bi: number, page: number, tid: number, t: number, isNew: boolean, sent: boolean): void {
    const b = this.blockAt(bi);
    const key = b.mapping.addr + page * b.pageSize;
    this.blocktime?.fault(tid, key, t);
    if (sent) {
      // The fault thread asked on the preempt channel itself. The page may be placed already:
      // by the main channel (then its placement time was recorded here), or by the preempt
      // channel, whose report of it always comes after this fault report.
      this.requests++;
      const at = this.placedBeforeFault.get(key);
      if (at === undefined) {
        this.requestedAt.set(key, t);
        return;
      }
      this.placedBeforeFault.delete(key);
      this.latency.add(at - t);
      this.blocktime?.placed(key, at);
      return;
    }
    if (b.state[page] === PAGE_PRESENT) {
      // The page arrived between the fault and this message (the background stream often
      // brings the very next page): the thread ran again from its placement, nothing to ask.
      const at = this.placedBeforeFault.get(key);
      this.placedBeforeFault.delete(key);
      this.blocktime?.placed(key, at ?? nowUs());
      return;
    }
    if (!isNew) return;
    if (this.state.terminal) return; // failing: fail() releases the waiting threads
    this.requests++;
    this.requestedAt.set(key, t);
    // With preempt the fault thread has already asked on the preempt channel. While paused
    // the page stays requested and is asked for again on RESUME.
    if (!sent && this.ch && !this.ch.closed) this.ch.send({ type: MsgType.REQ_PAGES, block: b.name, offset: page * b.pageSize, length: b.pageSize });
  }

  /** A requested page was placed (here, or by the preempt channel at `t`). */
  private onRequestedPlaced(b: PlacerBlock, page: number, t = nowUs()): void {
    this.prefill?.poke();
    const key = b.mapping.addr + page * b.pageSize;
    const at = this.requestedAt.get(key);
    if (at !== undefined) {
      this.requestedAt.delete(key);
      this.latency.add(t - at);
      this.blocktime?.placed(key, t);
    } else {
      // The fault thread marked it requested but its message is still queued: remember when
      // the page came, so the wait ends there and not when the message is read.
      this.placedBeforeFault.set(key, t);
    }
  }

  /** Source stopped: drop the pages it re-dirtied since it sent them. */
  private discard(m: DiscardMessage): void {
    this.table!.checkMessage(m);
    const b = this.placer!.get(m.block);
    for (const [start, length] of m.ranges) {
      this.placer!.placer.discard(b, start / b.pageSize, (start + length) / b.pageSize);
      this.discardRanges++;
      this.discardPages += length / b.pageSize;
    }
    this.discardCommands++;
    this.discardMaxRanges = Math.max(this.discardMaxRanges, m.ranges.length);
  }

  /** THP advice for the 4 KiB-page RAM created here (a caller's RAM keeps its owner's setting). */
  private adviseHugepages(advice: 'hugepage' | 'nohugepage'): void {
    for (const mp of this.mappings) if (mp.backing === 'anonymous' && mp.pageSize === 4096) mp.madvise(advice);
  }

  /**
   * Arm fault handling: from now on a guest access to a missing page becomes a request. With
   * preempt, the preempt channel must be up first: only while it is not does this return a
   * promise (reading waits for it). Otherwise it is done at once, and RUN, which came in the
   * same write, is handled without the channel pausing and resuming its socket (~0.2 ms of the
   * downtime here).
   */
  private listen(): void | Promise<void> {
    if (!this.faults) throw new Error('LISTEN without an accepted ADVISE');
    if (this.preemptWanted && !this.preemptUp) return this.preemptChannelUp().then(() => this.armPlacement());
    this.armPlacement();
  }

  private armPlacement(): void {
    const placer = this.placer!.placer;
    placer.postcopy = true;
    placer.onRequestedPlaced = (b, page) => this.onRequestedPlaced(b, page);
    this.boundMainQueue();
  }

  /** The main channel's receive queue in postcopy, as bounded by boundMainQueue (bytes). */
  private mainQueueBytes: number | undefined;

  /** Postcopy without a preempt channel: bounds the main channel's kernel receive queue (`postcopyQueueBytes`). */
  private boundMainQueue(): void {
    if (this.preemptWanted || !this.ch) return;
    const r = this.ch.boundPostcopyQueue('receive', this.opts.postcopyQueueBytes ?? DEFAULT_POSTCOPY_QUEUE_BYTES);
    if (r !== undefined) this.mainQueueBytes = r;
  }

  /** Start the guest while pages are still missing; confirm so the source can measure downtime. */
  private async runGuest(): Promise<void> {
    // The guest's pause, as seen here, runs from the read that brought STOPPED (or, from a
    // source that sends none, RUN) to its vCPUs running.
    this.pausedFrom = this.stoppedReadAt || this.ch!.lastReadAt || performance.now();
    if (!this.device) throw new Error('RUN without device state');
    const machine = this.machine!;
    machine.loadDevice(unpack(this.device));
    if (this.preparing) await this.preparing;
    this.blocktime = new Blocktime(machine.vcpuTids ?? []);
    trace('dest', 'RUN: device loaded, vCPUs prepared');
    await machine.start({ fresh: false });
    this.runAt = machine.steppingSince ? await machine.steppingSince() : performance.now();
    trace('dest', 'guest started (postcopy)', this.runAt);
    this.vcpuTimesAtRun = (machine.vcpuTids ?? []).map((tid) => threadCpuTimes(tid));
    this.progressAtRun = sum(machine.progress?.() ?? []);
    this.postcopyBytesAtRun = this.placer!.placer.stats.dataBytes;
    this.report.mode = 'postcopy';
    // The pause as timed here (from STOPPED, or RUN, to the vCPUs stepping): with half a round
    // trip, the source works out the guest's pause without the way back of this acknowledgement.
    this.ch!.send({ type: MsgType.ACK, of: MsgType.RUN, info: { startedAfterUs: Math.round((this.runAt - this.pausedFrom) * 1000), startedAtUs: clockUs(this.runAt) } });
    this.progress();
    this.startPrefill();
  }

  /** Frames received so far: Prefill's sign of a busy main thread. */
  private framesIn = 0;
  private prefill: Prefill | null = null;

  /** Postcopy: pages still to come are allocated ahead while this thread is idle (prefill.ts). */
  private startPrefill(): void {
    const placer = this.placer!.placer;
    const rec = placer.recycler;
    if (!rec || this.opts.prefill === false) return;
    const dataAtRun = placer.stats.pagesNormal;
    const zeroAtRun = placer.stats.pagesZero;
    this.prefill = new Prefill(rec, {
      want: placer.missingRecyclable() - rec.available,
      activity: () => this.framesIn,
      waiting: () => this.requestedAt.size > 0,
      dataPages: () => placer.stats.pagesNormal - dataAtRun,
      zeroPages: () => placer.stats.pagesZero - zeroAtRun,
    });
    this.prefill.start();
  }

  /** Each vCPU's scheduler account at RUN (null where the kernel keeps none). */
  private vcpuTimesAtRun: Array<ThreadCpuTimes | null> = [];

  /** Per vCPU, time on a CPU and in a run queue since RUN (postcopy's report), if known for all. */
  private vcpuTimesSinceRun(): { vcpuRunMs?: number[]; vcpuRunqueueMs?: number[] } {
    const tids = this.machine?.vcpuTids ?? [];
    const now = tids.map((tid) => threadCpuTimes(tid));
    const at = this.vcpuTimesAtRun;
    if (tids.length === 0 || now.some((t, i) => !t || !at[i])) return {};
    return {
      vcpuRunMs: now.map((t, i) => round1(t!.runMs - at[i]!.runMs)),
      vcpuRunqueueMs: now.map((t, i) => round1(t!.runqueueMs - at[i]!.runqueueMs)),
    };
  }

  /** Every page has arrived: stop fault handling, let userfaultfd go, restore huge pages. */
  private async end(): Promise<void> {
    const placer = this.placer!.placer;
    trace('dest', `END with ${placer.missing} pages missing`);
    if (placer.missing > 0) throw new Error(`END while ${placer.missing} pages are still missing`);
    const endAt = performance.now();
    // Counted once the fault thread has stopped: every fault it read has been reported by then
    // (zero faults too, which are counted as their reports come).
    await this.faults!.stop();
    const faultsSeen = this.faults!.faults;
    const preempt = this.faults!.preemptStats;
    this.faults = null;
    this.releaseUffd();
    // Huge pages back on (QEMU does the same).
    this.adviseHugepages('hugepage');
    this.state.to(DestState.COMPLETED, 'END');
    const machine = this.machine!;
    const r = this.report;
    const bt = this.blocktime!;
    r.postcopy = {
      requests: this.requests,
      faults: faultsSeen,
      zeroFaults: this.zeroFaults,
      blocktimeMs: bt.totalMs(),
      vcpuBlocktimeMs: bt.vcpuMs(),
      latencyUs: this.latency.summary(),
      latencyHistogram: this.latency.histogramObject(),
      durationMs: round1(endAt - this.runAt),
      ...this.vcpuTimesSinceRun(),
      recycledPages: this.recycledPages,
      prefilledPages: this.prefilledPages,
      guestProgress: sum(machine.progress?.() ?? []) - this.progressAtRun,
      ...(preempt
        ? { preempt: { requests: preempt.requests, pages: preempt.pages, bytes: preempt.bytes, ...(preempt.scheduling ? { scheduling: preempt.scheduling } : {}) } }
        : {}),
      ...(this.mainQueueBytes !== undefined ? { mainQueueBytes: this.mainQueueBytes } : {}),
    };
    r.recoveries = this.recoveries;
    r.pausedMs = round1(this.pausedMs);
    r.discard = { ranges: this.discardRanges, commands: this.discardCommands, pages: this.discardPages, maxRangesPerCommand: this.discardMaxRanges };
    // Every page is here: the migration is complete even if the link fails now (the source,
    // not hearing this, pauses and cannot reconnect; see the README's limits).
    try {
      this.ch!.send({ type: MsgType.SHUT, status: 'ok' });
      await this.ch!.flushed();
    } catch {
      trace('dest', 'SHUT could not be sent: the link failed after END');
    }
    this.finishReport(this.runAt, this.runAt - this.pausedFrom);
    r.ram.postcopyBytes = placer.stats.dataBytes - this.postcopyBytesAtRun;
    r.ram.precopyBytes = this.postcopyBytesAtRun;
    this.done({ report: r, machine });
  }

  /** Pages received trimmed (TRIMMED_RUN). */
  private pagesTrimmed = 0;
  private trimmed: Buffer | null = null;

  /**
   * A zero buffer of at least `bytes` (≤ MAX_TRIMMED_RUN_BYTES, checked on decode) to fill the
   * pages of a TRIMMED_RUN out in before they are placed; kept for the next one, zeroed again
   * where the last one wrote.
   */
  private trimmedOut(bytes: number): Buffer {
    if (!this.trimmed || this.trimmed.length < bytes) this.trimmed = Buffer.alloc(Math.max(bytes, 1024 * 1024));
    return this.trimmed;
  }

  private bounceFor(b: PlacerBlock): Buffer {
    return b.pageSize <= this.bounce.length ? this.bounce.subarray(0, b.pageSize) : Buffer.alloc(b.pageSize);
  }

  private progress(): void {
    this.opts.onProgress?.(this.status());
  }

  /** Checks the source's description and creates the guest's RAM; answers ACK or refuses. */
  private async setup(m: SetupMessage): Promise<void> {
    this.table = new BlockTable(m.blocks);
    this.preemptWanted = m.caps.includes('preempt') && m.caps.includes('postcopy');
    this.report.guest = { kind: m.guest.kind, vcpus: m.vcpus };
    const total = m.blocks.reduce((n, b) => n + b.length, 0);
    this.totalBytes = total;
    this.report.ram.totalBytes = total;
    const maxRam = this.opts.maxRam ?? os.freemem();
    if (total > maxRam) {
      throw new Error(`guest RAM of ${formatBytes(total)} exceeds the limit of ${formatBytes(maxRam)} (--max-ram)`);
    }
    const factory = this.opts.machineFactory ?? defaultMachineFactory;
    // The guest kind must be known here before any RAM is created.
    await factory.check(m.guest.kind, m.guest.module, m.guest.config);
    // The migration may have failed while we waited (the source went away): create nothing.
    if (this.state.terminal) return;
    // Each mapping is recorded as soon as it exists, so fail() frees it even if a later one fails.
    for (const b of m.blocks) this.mappings.push(this.mapBlock(b.name, b.length, b.pageSize));
    const uffd = new Userfaultfd({ features: DEFAULT_FEATURES | UFFD_FEATURE_MOVE });
    this.uffd = uffd;
    for (const mp of this.mappings) uffd.register(mp.addr, mp.length, { missing: true }, `block ${mp.name}`);
    this.placer = new PlacerBlockSet(new PagePlacer(uffd, this.mappings));
    const machine = await factory.create({
      kind: m.guest.kind,
      module: m.guest.module,
      config: m.guest.config,
      vcpus: m.vcpus,
      mappings: this.mappings,
      guestPort: this.opts.guestPort,
    });
    if (this.state.terminal) {
      // fail() ran while the guest was being built: it freed the RAM; free the guest too.
      await machine.destroy().catch(() => undefined);
      return;
    }
    this.machine = machine;
    // Spawn the vCPU workers now, parked, while pages arrive: starting them later would add
    // their boot time to the downtime.
    if (machine.prepare) {
      this.preparing = machine.prepare();
      this.preparing.catch(() => undefined); // surfaced when complete() awaits it
    }
    this.setupTimeMs = performance.now() - this.t0;
    this.ch!.send({ type: MsgType.ACK, of: MsgType.SETUP });
    trace('dest', 'setup accepted');
  }

  /**
   * A PING with `ready`: the source stops its guest once this answers, so answer once the
   * vCPU threads spawned at SETUP are up and the guest could start at once. Their boot
   * (tens of ms, more on a busy host) then runs while the guest still runs on the source, not
   * in the downtime. A failed preparation answers too: COMPLETE or RUN reports it.
   */
  private async pongWhenPrepared(id: number): Promise<void> {
    await this.preparing!.catch(() => undefined);
    this.pong(id);
  }

  /** Answers PING `id`, with this process's clock for the source's downtime figure (PongMessage). */
  private pong(id: number): void {
    this.ch?.send({ type: MsgType.PONG, id, clockUs: clockUs() });
  }

  private mapBlock(name: string, length: number, pageSize: number): Mapping {
    const ext = this.opts.ram?.find((r) => r.name === name);
    if (ext) {
      const ps = ext.pageSize ?? 4096;
      if (ext.length !== length || ps !== pageSize) {
        throw new Error(`block "${name}": the source sends ${formatBytes(length)} in ${pageSize}-byte pages but the RAM given is ${formatBytes(ext.length)} in ${ps}-byte pages`);
      }
      const mapping = adoptMapping({ addr: ext.addr, length, pageSize, name });
      // Every page starts missing: drop whatever the caller's memory held (a previous attempt,
      // say), or a page received as zero would keep old bytes. (The RAM must be private
      // anonymous memory; see the README.)
      mapping.madvise('dontneed');
      return mapping;
    }
    if (this.opts.ram) throw new Error(`block "${name}" has no RAM given for it (blocks given: ${this.opts.ram.map((r) => r.name).join(', ')})`);
    const hugetlb = pageSize === 2 * 1024 * 1024;
    if (pageSize !== 4096 && !hugetlb) throw new Error(`block "${name}": page size ${pageSize} is not supported here`);
    return this.opts.backing === 'memfd' ? createMemfd(length, { name, hugetlb }) : mapAnonymous(length, { name, hugetlb });
  }

  /** All pages and device state are here: start the guest and confirm. */
  private async complete(): Promise<void> {
    if (!this.machine || !this.placer) throw new Error('COMPLETE before SETUP');
    if (!this.device) throw new Error('COMPLETE without device state');
    // Every page is sent in precopy; any the source left out reads as zero, like the zero pages.
    this.placer.placer.zeroUnreceived();
    trace('dest', 'unreceived pages recorded');
    this.machine.loadDevice(unpack(this.device));
    trace('dest', 'device loaded');
    // Postcopy was advised but precopy converged first: the fault thread has nothing to do.
    if (this.faults) {
      await this.faults.stop();
      this.faults = null;
    }
    // Zero pages were left missing: userfaultfd lets go first, so they read as zeros.
    this.releaseUffd();
    trace('dest', 'userfaultfd released');
    if (this.preparing) await this.preparing;
    trace('dest', 'device loaded, vCPUs prepared');
    await this.machine.start({ fresh: false });
    const startedAt = this.machine.steppingSince ? await this.machine.steppingSince() : performance.now();
    trace('dest', 'guest started', startedAt);
    this.state.to(DestState.COMPLETED, 'start');
    // With its time from STOPPED (or COMPLETE) to the vCPUs stepping, for the source's downtime figure.
    this.ch!.send({ type: MsgType.SHUT, status: 'ok', startedAfterUs: Math.min(0xffffffff, Math.round((startedAt - this.pausedFrom) * 1000)), startedAtUs: clockUs(startedAt) });
    await this.ch!.flushed().catch(() => undefined);
    this.finishReport(startedAt, startedAt - this.pausedFrom);
    this.done({ report: this.report, machine: this.machine });
  }

  /** Unregisters every block and closes the userfaultfd: from now on missing pages read as zero. */
  /**
   * Where DISCARD puts the pages it takes out, to place new contents from (recycle.ts): for
   * the anonymous blocks of 4 KiB pages, when the kernel can move pages. Null otherwise.
   */
  private makeRecycler(placer: PagePlacer): PageRecycler | null {
    if (!this.uffd || !PageRecycler.possible(this.uffd)) return null;
    let pages = 0;
    for (const b of placer.blocks.values()) if (b.pageSize === 4096 && b.mapping.backing === 'anonymous') pages += b.pages;
    if (pages === 0) return null;
    try {
      return new PageRecycler(this.uffd, pages);
    } catch (e) {
      trace('dest', `pages dropped by DISCARD are freed, not recycled: ${(e as Error).message}`);
      return null;
    }
  }

  /** Pages placed from the recycler's area, and pages allocated ahead into it: kept once it is closed. */
  private recycledPages = 0;
  private prefilledPages = 0;

  private closeRecycler(): void {
    const placer = this.placer?.placer;
    const rec = placer?.recycler;
    if (!rec) return;
    placer!.recycler = null;
    this.prefill?.stop();
    this.prefill = null;
    this.recycledPages = rec.stats.reused;
    this.prefilledPages = rec.stats.populated;
    trace('dest', `recycled pages: ${rec.stats.stashed} stashed, ${rec.stats.populated} allocated ahead, ${rec.stats.reused} placed${rec.off ? `; off: ${rec.off}` : ''}${rec.populateError ? `; allocating ahead stopped: ${rec.populateError}` : ''}`);
    rec.close();
  }

  private releaseUffd(): void {
    this.closeRecycler();
    if (!this.uffd) return;
    for (const mp of this.mappings) this.uffd.unregister(mp.addr, mp.length, `block ${mp.name}`);
    this.uffd.close();
    this.uffd = null;
  }

  /** Fills the report's common figures once the guest runs here. */
  private finishReport(startedAt: number, downtimeMs: number): void {
    const s = this.placer!.placer.stats;
    const r = this.report;
    r.status = 'completed';
    r.setupTimeMs = round1(this.setupTimeMs);
    r.totalTimeMs = round1(performance.now() - this.t0);
    r.downtimeMs = round1(downtimeMs);
    r.ram.pagesNormal = s.pagesNormal;
    r.ram.pagesZero = s.pagesZero;
    r.ram.pagesTrimmed = this.pagesTrimmed;
    r.ram.precopyBytes = s.dataBytes;
    r.ram.transferredBytes = this.readBefore + this.ch!.bytesRead;
    r.ram.mbps = mbps(r.ram.transferredBytes, r.totalTimeMs);
    r.peakRssBytes = process.resourceUsage().maxRSS * 1024;
    void startedAt;
    this.progress();
  }

  private async fail(err: Error): Promise<void> {
    if (this.state.terminal) return;
    this.state.fail();
    this.ch?.close(err);
    this.dropPreemptCandidates();
    // Postcopy: the guest may be blocked on pages that will never come. Closing the
    // userfaultfd below releases those threads so the guest can be torn down.
    await this.faults?.kill();
    this.faults = null;
    try {
      this.closeRecycler();
      this.uffd?.close();
    } catch {
      // discarding; the original error is what matters
    }
    this.uffd = null;
    try {
      await this.machine?.destroy();
    } catch {
      // ditto
    }
    this.machine = null;
    for (const mp of this.mappings) mp.unmap();
    this.mappings = [];
    const r = this.report;
    r.status = 'failed';
    r.error = err.message;
    r.totalTimeMs = round1(performance.now() - this.t0);
    r.ram.transferredBytes = this.readBefore + (this.ch?.bytesRead ?? 0);
    r.peakRssBytes = process.resourceUsage().maxRSS * 1024;
    this.done({ report: r, machine: null });
  }
}

/** A listener on `ep` whose connections start paused (nothing read until a handshake takes them). */
async function listenOn(ep: Endpoint): Promise<net.Server> {
  const server = net.createServer({ pauseOnConnect: true, highWaterMark: WRITE_HIGH_WATER_MARK });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`listen on ${formatEndpoint(ep)} failed: ${e.code ?? e.message}`)));
    server.listen(ep.port, ep.host, () => resolve());
  });
  return server;
}

/** The placer plus a name lookup that throws a clear error. */
class PlacerBlockSet {
  constructor(readonly placer: PagePlacer) {}
  get(name: string): PlacerBlock {
    return this.placer.block(name);
  }
}

/** Preempt candidates held or shaking hands at once, at most (see `preemptSockets`). */
const MAX_PREEMPT_CANDIDATES = 8;

/** States in which precopy page data may arrive; postcopy pages arrive while LISTENING and RUNNING. */
const PRECOPY_STATES: readonly DestState[] = [DestState.SETUP, DestState.ADVISE];
const PAGE_STATES: readonly DestState[] = [DestState.SETUP, DestState.ADVISE, DestState.LISTENING, DestState.RUNNING];

function sum(xs: readonly number[]): number {
  let n = 0;
  for (const x of xs) n += x;
  return n;
}

