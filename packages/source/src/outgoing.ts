/**
 * outgoing.ts — owns one outgoing migration from start to end: dial the destination, send
 * the guest's description, track dirty pages, run precopy rounds, then either
 *   - precopy: once the rest fits in the downtime limit, stop the guest, send the last dirty
 *     pages and the device state, and wait for the destination to confirm it runs the guest; or
 *   - postcopy (QEMU's order): stop the guest, last dirty sync, DISCARD every page written
 *     since it was sent, device state, LISTEN, RUN; then serve the destination's page requests
 *     ahead of a background stream of every page not yet sent, and END.
 *
 * The failure promise: until the destination runs the guest, any error leaves the source
 * guest running (vCPUs are resumed if it came during the switchover), its RAM untouched, and
 * the report says why. After RUN the guest lives on the destination and is never resumed here.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { pack } from 'msgpackr';
import { BlockTable, DiscardBatcher, MsgType, msgTypeName, newMigrationId, payloadToBuffer, type Frame, type Message } from '@livemig/protocol';
import {
  ChannelClosedError,
  connectChannel,
  startKeepalive,
  LINK_DEAD,
  LINK_PAUSED,
  emptyRamReport,
  DEFAULT_POSTCOPY_QUEUE_BYTES,
  mbps,
  parseEndpoint,
  type Channel,
  type Endpoint,
  type MigrationReport,
  type RoundReport,
  type TlsCredentials,
  round1,
  trace,
} from '@livemig/transport';
import { PagemapScanner, hostHasSwap, type Mapping } from '@livemig/uffd';
import { turnEventLoop } from './event-loop.js';
import { PageBitmap } from './page-bitmap.js';
import { PageSender, type SendBlock } from './page-sender.js';
import { RateLimiter } from './rate-limiter.js';
import { DirtySync, type DirtyMethod } from './dirty-sync.js';
import { PostcopyServer } from './postcopy-server.js';
import { PlaceWindow } from './place-window.js';
import { PreemptThread } from './preempt-thread.js';
import type { SourceMachine } from './source-machine.js';

export interface OutgoingOptions {
  /** Destination address, `HOST:PORT` or an endpoint. */
  to: string | Endpoint;
  /** Page-data rate limit in bytes per second; 0 = unlimited (default). Precopy only. */
  maxBandwidth?: number;
  /**
   * Rate limit of the background stream in postcopy, bytes per second (QEMU's
   * max-postcopy-bandwidth); 0 = unlimited (default). Requested pages on the preempt channel
   * are never limited.
   */
  maxPostcopyBandwidth?: number;
  /**
   * Postcopy without a preempt channel: a requested page leaves behind whatever the main
   * channel's kernel send queue holds, which Linux grows to 4 MiB here (~3 ms of pages). During
   * postcopy the queue is bounded to this many bytes (the kernel keeps twice the figure); 0
   * leaves it to the kernel. Default 1 MiB.
   */
  postcopyQueueBytes?: number;
  /**
   * Send a data page that ends in zero bytes without them (TRIMMED_RUN) when that leaves at
   * most half of it: less on the wire for partly used pages, for one more comparison per
   * such page. Default true; false sends every data page whole.
   */
  trimPages?: boolean;
  /** Largest acceptable stop-and-copy time in ms (default 300, like QEMU). */
  downtimeLimitMs?: number;
  /** Fail (guest runs on) when not completed after this many ms; 0 = never (default). */
  timeoutMs?: number;
  /** Migration UUID (default: a new random one). */
  uuid?: string;
  /** Dirty tracking method (default auto: WP-async + PAGEMAP_SCAN, soft-dirty fallback). */
  dirtyMethod?: DirtyMethod;
  /** Enable postcopy: advised at the start, switched to after `postcopyAfter` (default false). */
  postcopy?: boolean;
  /**
   * When to switch to postcopy: ms after precopy began, or `auto` (when a round sends no
   * less than the one before it: precopy is not converging). Default `auto`. Precopy that
   * converges first completes as precopy.
   */
  postcopyAfter?: number | 'auto';
  /** What to do when the destination cannot do postcopy: carry on with precopy (default) or fail. */
  postcopyFallback?: 'precopy' | 'fail';
  /**
   * Postcopy preempt channel (default false): a second connection, set up right after ADVISE,
   * on which requested pages travel, never behind the background stream. Failing to set it
   * up fails the migration before switchover (the guest runs on here).
   */
  preempt?: boolean;
  /**
   * Run the thread that answers page requests on the preempt channel as a realtime thread
   * (SCHED_FIFO at the lowest priority): it answers at once even while every CPU is busy with
   * the background stream and the guest (with it on both ends, on the random-access guest here:
   * request p50 130–169 µs instead of 163–191, p99 0.7–1.2 ms instead of 3.1–3.4 ms; the guest
   * makes ~2× the requests, and the background stream gets less CPU). It sleeps between requests
   * and does a bounded amount of work per request. Needs CAP_SYS_NICE; where the kernel refuses,
   * the thread gets a short scheduler slice, as without this option. The report says which
   * (`postcopy.preempt.scheduling`). Default false.
   */
  preemptRealtime?: boolean;
  /**
   * Postcopy recovery: after a channel fails in postcopy, reconnect by itself, with backoff,
   * for `autoRecoverMs` (default false: wait for `resume()`). Either way the migration pauses
   * instead of failing, and nothing is lost as long as both processes live.
   */
  autoRecover?: boolean;
  /** How long automatic recovery keeps trying before it waits for `resume()` (default 60 000 ms). */
  autoRecoverMs?: number;
  /** Keepalive of every channel: a link silent this long is dead (default 4000 ms). */
  keepaliveTimeoutMs?: number;
  /**
   * TLS on every channel (client side: `loadTlsCredentials(opts, 'client')`): the destination's
   * certificate must be signed by the CA and name the host dialled; or a pre-shared key.
   */
  tls?: TlsCredentials;
  /** Called after every round and phase change. */
  onProgress?: (p: Progress) => void;
}

export type Phase = 'setup' | 'precopy' | 'stop-and-copy' | 'postcopy' | 'postcopy-paused' | 'completed' | 'failed' | 'cancelled';

export interface Progress {
  phase: Phase;
  round: number;
  /** Bytes of RAM not yet known to be sent in its current state. */
  remainingBytes: number;
  totalBytes: number;
  transferredBytes: number;
  /** Bytes per second measured over the last round. */
  bandwidth: number;
  /** Bytes dirtied per second during the last round. */
  dirtyRate: number;
  /** Postcopy recovery: why the migration is paused (phase `postcopy-paused`). */
  pausedReason?: string;
  /** Recoveries completed so far. */
  recoveries?: number;
}

/** The link failed in postcopy: the migration waits for a recovery. */
export class PausedError extends Error {
  constructor(why: string) {
    super(why);
    this.name = 'PausedError';
  }
}

/** A block as the source migrates it. */
export interface BlockState extends SendBlock {
  /** Pages to (re)send: all at first, then the pages written since they were sent. */
  dirty: PageBitmap;
  /** Pages sent at least once (the destination holds a copy that may need discarding). */
  sent: PageBitmap;
}

const ACK_TIMEOUT_MS = 30_000;
/** Round trips just before the stop, for the offset between the two ends' clocks. */
const CLOCK_PINGS = 3;
/**
 * Precopy: page data (trimmed pages counted whole) sent but maybe not placed yet by the
 * destination, past which the source waits for it. The kernel's socket queues bound bytes on
 * the wire, not the destination's work: their ~36 MiB hold ~2 GiB of trimmed pages. Unbounded,
 * the source ran up to 250 ms of placing ahead of the destination here, the switchover then
 * waited that long for it to catch up, and a round's measured bandwidth was the queues'.
 * Whole pages rarely reach the bound (the queues hold less).
 */
const PRECOPY_WINDOW_BYTES = 64 * 1024 * 1024;
/** Pages that may hold data in one precopy batch (4 MiB of 4 KiB pages). */
const PRECOPY_BATCH = 1024;
/**
 * Most pages one precopy batch spans: never-populated pages cost neither a read nor a byte,
 * so in sparse RAM a batch reaches over them (up to 128 MiB of 4 KiB pages).
 */
const PRECOPY_BATCH_SPAN = 32768;

export class CancelledError extends Error {
  constructor(why = 'migration cancelled') {
    super(why);
    this.name = 'CancelledError';
  }
}

export class OutgoingMigration {
  readonly uuid: string;
  private readonly machine: SourceMachine;
  private endpoint: Endpoint;
  private readonly limiter: RateLimiter;
  private downtimeLimitMs: number;
  private readonly opts: OutgoingOptions;
  private ch: Channel | null = null;
  private phase: Phase = 'setup';
  private abortError: Error | null = null;
  /** The preempt channel being dialled at ADVISE (awaited before the guest stops). */
  private preemptConnecting: Promise<void> | null = null;
  private abortWaiters: Array<(e: Error) => void> = [];
  private waiters: Waiters = new Map();
  private progress: Progress;
  private readonly rounds: RoundReport[] = [];
  private postcopyWanted = false;
  /** Set once the destination may be running the guest: the source never resumes it then. */
  private pointOfNoReturn = false;
  private postcopyRequested = false;
  private server: PostcopyServer | null = null;
  private table: BlockTable | null = null;
  /** The preempt thread, which owns the preempt channel (when enabled). */
  private preempt: PreemptThread | null = null;
  /** END was sent: the preempt channel may close now. */
  private ending = false;
  /** Postcopy recovery: set while paused. */
  private paused: { at: number; reason: string } | null = null;
  private resuming = false;
  private resumeWaiters: Array<() => void> = [];
  private pausedMs = 0;
  private recoveries = 0;
  /** Bytes written on channels that have been replaced (recovery). */
  private writtenBefore = 0;
  /** RECV_BITMAP payloads received during a recovery handshake, by block. */
  private bitmaps = new Map<string, Buffer>();
  private sender: PageSender | null = null;

  constructor(machine: SourceMachine, opts: OutgoingOptions) {
    this.machine = machine;
    this.opts = opts;
    this.endpoint = typeof opts.to === 'string' ? parseEndpoint(opts.to) : opts.to;
    this.uuid = opts.uuid ?? newMigrationId();
    this.limiter = new RateLimiter(opts.maxBandwidth ?? 0);
    this.downtimeLimitMs = opts.downtimeLimitMs ?? 300;
    const total = machine.blocks.reduce((n, b) => n + b.length, 0);
    this.progress = { phase: 'setup', round: 0, remainingBytes: total, totalBytes: total, transferredBytes: 0, bandwidth: 0, dirtyRate: 0 };
  }

  /** Current phase and figures. */
  status(): Progress {
    return {
      ...this.progress,
      phase: this.phase,
      ...(this.paused ? { pausedReason: this.paused.reason } : {}),
      recoveries: this.recoveries,
    };
  }

  /** Sets the precopy rate limit (postcopy has its own, `maxPostcopyBandwidth`). */
  setMaxBandwidth(bytesPerSecond: number): void {
    if (this.phase === 'postcopy' || this.phase === 'postcopy-paused') return;
    this.limiter.setLimit(bytesPerSecond);
  }

  setDowntimeLimit(ms: number): void {
    this.downtimeLimitMs = ms;
  }

  /** Asks for the switch to postcopy now (QEMU's migrate-start-postcopy); needs `postcopy: true`. */
  startPostcopy(): void {
    if (!this.opts.postcopy) throw new Error('postcopy was not enabled for this migration');
    this.postcopyRequested = true;
  }

  /**
   * Cancels before switchover: the source guest runs on. After RUN (postcopy) the guest lives
   * on the destination and a cancel is refused.
   */
  cancel(reason = 'migration cancelled'): void {
    if (this.pointOfNoReturn) throw new Error('cannot cancel: the guest already runs on the destination (postcopy)');
    this.abort(new CancelledError(reason));
  }

  private abort(err: Error): void {
    if (this.abortError) return;
    this.abortError = err;
    this.limiter.abort(err);
    for (const w of this.abortWaiters) w(err);
    this.abortWaiters = [];
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    this.server?.abort(err);
    this.ch?.close(err instanceof CancelledError ? undefined : err);
    this.preempt?.drop();
  }

  private checkAbort(): void {
    if (this.abortError) throw this.abortError;
  }

  private setPhase(p: Phase): void {
    this.phase = p;
    this.progress.phase = p;
    this.opts.onProgress?.(this.status());
  }

  /** Runs the migration to its end; never throws: failures are in the report. */
  async run(): Promise<MigrationReport> {
    const t0 = performance.now();
    const totalBytes = this.progress.totalBytes;
    const report: MigrationReport = {
      role: 'source',
      status: 'failed',
      mode: 'precopy',
      uuid: this.uuid,
      guest: { kind: this.machine.kind, vcpus: this.machine.vcpus },
      totalTimeMs: 0,
      setupTimeMs: 0,
      downtimeMs: 0,
      precopyRounds: 0,
      ram: emptyRamReport(totalBytes),
      rounds: this.rounds,
    };
    let timer: NodeJS.Timeout | undefined;
    if (this.opts.timeoutMs && this.opts.timeoutMs > 0) {
      const ms = this.opts.timeoutMs;
      // The timeout guards the phases where the source can still take the guest back.
      timer = setTimeout(() => {
        if (!this.pointOfNoReturn) this.abort(new Error(`migration timed out after ${ms / 1000} s`));
      }, ms);
    }
    let dirty: DirtySync | null = null;
    /** When the destination confirmed the migration complete (the total time ends there). */
    let completedAt = 0;
    let sender: PageSender | null = null;
    let guestStopped = false;
    let precopyBytes = 0;
    try {
      // The preempt thread boots while the migration sets up.
      if (this.opts.postcopy && this.opts.preempt) this.preempt = this.startPreemptThread();
      // --- setup: connect, describe the guest, wait for the destination to accept.
      const connecting = connectChannel({ ...this.channelOptions(), endpoint: this.endpoint, role: 'main', uuid: this.uuid });
      // A channel that connects after an abort (cancel, timeout) is closed, not left open.
      connecting.then((c) => this.abortError && c.close(), () => undefined);
      const ch = await this.race(connecting);
      this.ch = ch;
      trace('source', 'connected');
      this.useMainChannel(ch);
      const setup = {
        type: MsgType.SETUP,
        guest: {
          kind: this.machine.kind,
          config: this.machine.config ?? null,
          ...(this.machine.module !== undefined ? { module: this.machine.module } : {}),
        },
        blocks: this.machine.blocks.map((b) => ({ name: b.name, length: b.length, pageSize: b.pageSize })),
        caps: this.opts.postcopy ? (this.opts.preempt ? ['zero-runs', 'postcopy', 'preempt'] : ['zero-runs', 'postcopy']) : ['zero-runs'],
        vcpus: this.machine.vcpus,
      } as const;
      this.table = new BlockTable(setup.blocks);
      this.send(setup);
      // While the destination sets up, arm dirty tracking (write-protecting all of RAM takes
      // tens of ms for a GiB): the two overlap. Undone in `finally` if the migration fails.
      // The preempt thread reads "populated" and "dirty" too: in shared memory then.
      const shared = { shared: this.preempt !== null };
      const blocks: BlockState[] = this.machine.blocks.map((b) => ({
        name: b.name,
        pageSize: b.pageSize,
        pages: b.length / b.pageSize,
        buffer: Buffer.from(b.mapping.view()),
        populated: new PageBitmap(b.length / b.pageSize, true, shared),
        dirty: new PageBitmap(b.length / b.pageSize, true, shared),
        sent: new PageBitmap(b.length / b.pageSize),
      }));
      // Pages never populated read as zero and need not be read. Two scans, for anonymous RAM
      // only (a memfd may be written through another mapping): one before tracking starts
      // counts present and swap-type entries (swapped or migrating pages); one after catches
      // pages populated in between (then present only: a never-populated page under
      // write-protection also shows as a swap-type entry). Writes after that are tracked.
      const before = blocks.map((b, i) => populatedNow(this.machine.blocks[i]!.mapping, b, true));
      dirty = new DirtySync(this.machine.blocks, this.opts.dirtyMethod ?? 'auto');
      dirty.start();
      trace('source', 'dirty tracking armed');
      blocks.forEach((b, i) => {
        const pre = before[i];
        const post = pre ? populatedNow(this.machine.blocks[i]!.mapping, b, false) : null;
        if (pre && post) b.populated = pre.union(post, shared);
      });
      await this.expect(MsgType.SETUP);
      trace('source', 'setup accepted');
      if (this.opts.postcopy) {
        // ADVISE first, so a destination that cannot do postcopy says so before any page moves.
        this.send({ type: MsgType.ADVISE, pageSizes: [...new Set(this.machine.blocks.map((b) => b.pageSize))] });
        const ack = (await this.expect(MsgType.ADVISE)).msg as { info?: { ok?: boolean; reason?: string } };
        if (ack.info?.ok === true) {
          this.postcopyWanted = true;
          if (this.preempt) {
            // The blocks' bitmaps are final objects from here on (their flags keep changing):
            // the thread takes them now, so nothing of this runs at switchover.
            this.preempt.serve(blocks);
            // Dialled now, waited for only before the guest stops: its threads at both ends
            // take ~200 ms to start and shake hands here, and precopy need not wait for that.
            // A failure fails the migration at once, the guest running on here.
            this.preemptConnecting = this.connectPreempt();
            this.preemptConnecting.catch((e: Error) => this.abort(e));
          }
        } else {
          const reason = ack.info?.reason ?? 'the destination refused postcopy';
          await this.preempt?.end();
          this.preempt = null;
          if ((this.opts.postcopyFallback ?? 'precopy') === 'fail') throw new Error(reason);
          report.postcopyRefused = reason;
        }
      }
      report.setupTimeMs = round1(performance.now() - t0);

      sender = new PageSender(ch, this.limiter, { trim: this.opts.trimPages ?? true });
      this.sender = sender;
      await this.sendUnused(blocks);

      // --- precopy rounds
      this.setPhase('precopy');
      const precopyStart = performance.now();
      const after = this.opts.postcopyAfter ?? 'auto';
      const timeToSwitch = (): boolean =>
        this.postcopyWanted && (this.postcopyRequested || (typeof after === 'number' && performance.now() - precopyStart >= after));
      let roundNo = 0;
      let goPostcopy = false;
      for (;;) {
        this.checkAbort();
        roundNo++;
        const rt0 = performance.now();
        const dirtyBefore = countDirty(blocks);
        this.send({ type: MsgType.ROUND, round: roundNo, dirtyBytes: dirtyBefore.bytes });
        const { bytes, interrupted } = await this.sendDirty(sender, blocks, timeToSwitch);
        trace('source', `round ${roundNo} sent ${bytes} bytes${interrupted ? ' (interrupted)' : ''}`);
        const rt1 = performance.now();
        const found = dirty.sync(blocks);
        const ms = Math.max(rt1 - rt0, 0.001);
        const remaining = countDirty(blocks);
        const r: RoundReport = {
          round: roundNo,
          bytes,
          pages: dirtyBefore.pages,
          durationMs: round1(ms),
          bandwidth: Math.round((bytes / ms) * 1000),
          dirtyRate: Math.round((found.bytes / ms) * 1000),
          dirtyBytes: remaining.bytes,
        };
        this.rounds.push(r);
        report.precopyRounds = roundNo;
        this.progress.round = roundNo;
        this.progress.bandwidth = r.bandwidth;
        this.progress.dirtyRate = r.dirtyRate;
        this.progress.remainingBytes = remaining.bytes;
        this.progress.transferredBytes = this.writtenBefore + ch.bytesWritten;
        this.opts.onProgress?.(this.status());
        // Precopy completes once the rest would take no longer than the downtime limit at
        // the measured bandwidth (the best round's rate is the best estimate we have).
        const bandwidth = bestBandwidth(this.rounds, this.limiter.limit);
        const expectedMs = bandwidth > 0 ? (remaining.bytes / bandwidth) * 1000 : Infinity;
        if (!interrupted && expectedMs <= this.downtimeLimitMs) break;
        const prev = this.rounds[this.rounds.length - 2];
        const notConverging = after === 'auto' && prev !== undefined && r.bytes >= prev.bytes;
        if (this.postcopyWanted && (interrupted || timeToSwitch() || notConverging)) {
          goPostcopy = true;
          break;
        }
      }
      precopyBytes = sender.stats.dataBytes;

      // The preempt channel is up before the guest stops (or the migration fails here).
      if (this.preemptConnecting) await this.race(this.preemptConnecting);
      this.checkAbort();
      // Postcopy: the pages already known to be re-dirtied since they were sent are dropped on
      // the destination now, while the guest still runs here, rather than during the downtime
      // (they have to be sent again anyway). Only what the guest writes from now until it
      // stops is left for the discard after the stop.
      let earlyDiscard: DiscardCounts | null = null;
      if (goPostcopy) earlyDiscard = this.sendDiscards(blocks);
      // Let the destination catch up with everything queued so far before the guest stops:
      // the switchover messages would otherwise wait behind megabytes of buffered pages,
      // and that wait would count as downtime. It answers once its vCPU threads are up too
      // (`ready`): on a short migration they may still be booting, and that would count too.
      await this.roundTrip({ ready: true });
      trace('source', 'destination caught up');
      if (goPostcopy) {
        // What the guest wrote while the destination caught up (tens of ms of writes) goes in
        // a second early discard, so the sync and discard after the stop have only the last
        // moment's writes to handle.
        dirty.sync(blocks);
        const second = this.sendDiscards(blocks);
        earlyDiscard = addDiscards(earlyDiscard!, second);
        await this.roundTrip();
        trace('source', `second early discard: ${second.pages} pages`);
      }
      // A few more round trips over the idle link, for the downtime figure: the offset between
      // the two ends' clocks (the PONG with the shortest round trip gives it best; a waking
      // thread at either end skews one sample by its wake-up time) and, for a destination that
      // sends no clock, the shortest round trip. Nothing is sent after them until STOPPED.
      let rttMs = Infinity;
      for (let i = 0; i < CLOCK_PINGS; i++) rttMs = Math.min(rttMs, await this.roundTrip());
      if (!goPostcopy) {
        // --- stop and copy
        this.setPhase('stop-and-copy');
        const { pausedAt, markAt } = await this.pauseGuest();
        trace('source', 'guest stopped');
        guestStopped = true;
        this.checkAbort();
        dirty.sync(blocks, { last: true });
        trace('source', 'final dirty sync');
        // The guest is stopped: no turns of the event loop between batches, nothing to wait for.
        await this.sendDirty(sender, blocks, () => false, false);
        trace('source', 'last pages sent');
        // The destination stops its fault thread (and with it the preempt channel) on COMPLETE.
        this.ending = true;
        // DEVICE and COMPLETE in one write: one wakeup of the destination, not two.
        ch.cork();
        try {
          this.send({ type: MsgType.DEVICE }, pack(this.machine.saveDevice()));
          this.send({ type: MsgType.COMPLETE });
        } finally {
          ch.uncork();
        }
        // From here the destination may start the guest at any moment: if the answer is lost,
        // resuming here could run it twice. Only an explicit refusal gives it back.
        this.pointOfNoReturn = true;
        const shut = await this.expect(MsgType.SHUT);
        trace('source', 'destination runs the guest');
        if (shut.msg.type !== MsgType.SHUT || shut.msg.status !== 'ok') {
          this.pointOfNoReturn = false; // the destination says it did not start the guest
          throw new Error(`destination failed to start the guest: ${(shut.msg as { reason?: string }).reason ?? 'no reason given'}`);
        }
        const ackedAt = performance.now();
        report.downtimeAckedMs = round1(ackedAt - pausedAt);
        report.downtimeMs = round1(guestPauseMs({ pausedAt, markAt, ackedAt, rttMs, startedAfterUs: shut.msg.startedAfterUs, startedAtUs: shut.msg.startedAtUs, destClock: this.destClock }));
        precopyBytes = sender.stats.dataBytes;
      } else {
        // --- postcopy switchover, in QEMU's order
        this.setPhase('stop-and-copy');
        report.mode = 'postcopy';
        const { pausedAt, markAt } = await this.pauseGuest();
        trace('source', 'guest stopped (postcopy)');
        guestStopped = true;
        this.checkAbort();
        // After the second early discard no page is both dirty and sent, and none has been sent
        // since: only the pages this sync finds can be. The discard scans just those.
        const written: number[][] = blocks.map(() => []);
        dirty.sync(blocks, { last: true, found: (bi, first, end) => written[bi]!.push(first, end) });
        trace('source', 'final dirty sync');
        // Postcopy runs at full speed unless told otherwise: the guest waits for these pages.
        this.limiter.setLimit(this.opts.maxPostcopyBandwidth ?? 0);
        // The last discards, the device state, LISTEN and RUN leave in one write: each write on
        // its own wakes the destination, and on this 2-core machine the wakeup costs the sender
        // its CPU for ~0.4 ms — three times over, in the middle of the downtime.
        ch.cork();
        let late: DiscardCounts;
        try {
          late = this.sendDiscards(blocks, written);
          this.send({ type: MsgType.DEVICE }, pack(this.machine.saveDevice()));
          this.send({ type: MsgType.LISTEN });
          this.send({ type: MsgType.RUN });
        } finally {
          ch.uncork();
        }
        // Made after RUN left, not in the downtime: the first request can only come later.
        this.server = new PostcopyServer(ch, sender, blocks, this.preempt, (e) => this.onLinkLost(null, e));
        this.boundMainQueue(ch);
        this.pointOfNoReturn = true; // from RUN on, the guest lives on the destination
        report.discard = earlyDiscard ? addDiscards(earlyDiscard, late) : late;
        trace('source', `discards (${report.discard.ranges} ranges), device state, LISTEN and RUN sent`);
        let startedAfterUs: unknown;
        let startedAtUs: unknown;
        try {
          const ack = await this.expect(MsgType.RUN);
          const info = (ack.msg as { info?: { startedAfterUs?: unknown; startedAtUs?: unknown } }).info;
          startedAfterUs = info?.startedAfterUs;
          startedAtUs = info?.startedAtUs;
        } catch (e) {
          // The link broke before RUN's acknowledgement: the migration pauses (and recovers
          // later, if the destination got RUN); the downtime figure then ends here.
          if (this.abortError || !(this.paused || isLinkError(e))) throw e;
          if (!this.paused) this.onLinkLost(null, e as Error);
        }
        trace('source', 'destination runs the guest (postcopy)');
        const ackedAt = performance.now();
        report.downtimeAckedMs = round1(ackedAt - pausedAt);
        // A link lost before the acknowledgement leaves no start time: the figure ends here.
        report.downtimeMs = round1(guestPauseMs({ pausedAt, markAt, ackedAt, rttMs, startedAfterUs, startedAtUs, destClock: this.destClock }));
        // Dirty tracking stays armed until postcopy is over (nothing writes: the guest is
        // stopped here). Ending it means write-unprotecting all of RAM, which holds this thread
        // 150–220 ms for 1 GiB on this VM: the destination's first page requests, which come
        // right now, would wait that long.
        if (!this.paused) this.setPhase('postcopy');
        const postStart = performance.now();
        let shut: Frame;
        for (;;) {
          try {
            await this.race(this.server.run());
            trace('source', 'every page sent');
            // Urgent pages travel on their own connection: END (on the main one) must not
            // overtake them. The destination answers this PING after placing everything sent
            // before it.
            if (this.preempt) await this.race(this.preempt.ping());
            this.ending = true; // the destination closes the preempt channel when it ends
            this.send({ type: MsgType.END });
            shut = await this.expect(MsgType.SHUT);
            break;
          } catch (e) {
            // A link failure pauses postcopy: wait for the recovery, then carry on.
            if (this.abortError || !(this.paused || isLinkError(e))) throw e;
            if (!this.paused) this.onLinkLost(null, e as Error);
            this.ending = false;
            await this.race(this.whenResumed());
          }
        }
        if (shut.msg.type !== MsgType.SHUT || shut.msg.status !== 'ok') {
          throw new Error(`destination failed to finish postcopy: ${(shut.msg as { reason?: string }).reason ?? 'no reason given'}`);
        }
        const st = this.server.stats;
        report.postcopy = {
          requests: st.requests,
          durationMs: round1(performance.now() - postStart),
          ...(this.preempt
            ? { preempt: { requests: st.urgentRequests, pages: st.urgentPages, bytes: st.urgentBytes, ...(this.preempt.scheduling ? { scheduling: this.preempt.scheduling } : {}) } }
            : {}),
          ...(this.mainQueueBytes !== undefined ? { mainQueueBytes: this.mainQueueBytes } : {}),
        };
        report.ram.postcopyBytes = sender.stats.dataBytes - precopyBytes;
        report.recoveries = this.recoveries;
        report.pausedMs = round1(this.pausedMs);
      }
      completedAt = performance.now();
      // Tracking ends off the critical path: the guest is stopped, nothing writes any more.
      // (Write-unprotecting all of RAM takes 150–220 ms for 1 GiB on this VM; like QEMU's
      // cleanup, it is not part of the total time.)
      dirty?.stop();
      trace('source', `dirty tracking stopped in ${round1(performance.now() - completedAt)} ms`);
      dirty = null;
      this.progress.remainingBytes = 0;
      this.setPhase('completed');
      report.status = 'completed';
    } catch (e) {
      // The first cause wins: a cancel or timeout also makes the next write fail with
      // "channel closed", which is a consequence, not the reason.
      const err = this.abortError ?? (e instanceof Error ? e : new Error(String(e)));
      this.abort(err);
      if (guestStopped && !this.pointOfNoReturn) await this.machine.cont();
      report.status = err instanceof CancelledError ? 'cancelled' : 'failed';
      report.error = !this.pointOfNoReturn
        ? err.message
        : report.mode === 'postcopy'
          ? `${err.message} (after switchover to postcopy: the guest's RAM is split between both hosts)`
          : `${err.message} (after the last page was sent: the destination may be running the guest, so it stays paused here)`;
      if (this.pointOfNoReturn) report.sourceGuest = { running: false };
      this.setPhase(report.status);
    } finally {
      if (timer) clearTimeout(timer);
      dirty?.stop();
      if (this.ch && !this.ch.closed && report.status === 'completed') {
        await this.ch.flushed().catch(() => undefined);
        this.ch.close();
      }
      await this.preempt?.end();
    }
    report.totalTimeMs = round1((completedAt || performance.now()) - t0);
    if (sender) {
      report.ram.pagesNormal = sender.stats.pagesNormal;
      report.ram.pagesZero = sender.stats.pagesZero;
      report.ram.pagesTrimmed = sender.stats.pagesTrimmed;
      report.ram.precopyBytes = report.mode === 'postcopy' ? precopyBytes : sender.stats.dataBytes;
    }
    report.ram.transferredBytes = this.writtenBefore + (this.ch?.bytesWritten ?? 0);
    report.ram.mbps = mbps(report.ram.transferredBytes, report.totalTimeMs);
    return report;
  }

  /**
   * Pages the guest declared unused (QEMU's RamDiscardManager case) are never sent with data:
   * they go as zero runs up front, so the destination maps them as zero pages and never asks.
   */
  private async sendUnused(blocks: BlockState[]): Promise<void> {
    const ranges = this.machine.unusedRanges?.() ?? [];
    for (const r of ranges) {
      const b = blocks.find((x) => x.name === r.block);
      if (!b) continue;
      const first = Math.ceil(r.offset / b.pageSize);
      const end = Math.floor((r.offset + r.length) / b.pageSize);
      if (end <= first) continue;
      b.dirty.clearRange(first, end);
      // Sent (as zero): a later write makes the page dirty and sent, so postcopy discards it.
      b.sent.setRange(first, end);
      for (let p = first; p < end; p += 1 << 20) {
        const n = Math.min(1 << 20, end - p);
        this.send({ type: MsgType.ZERO, block: b.name, pageSize: b.pageSize, runs: [[p * b.pageSize, n]] });
      }
    }
  }

  /**
   * Stops the guest for the switchover and sends STOPPED. Returns when it paused (its first
   * vCPU parked, as the vCPU stamped it) and when STOPPED left. The link is idle (a round trip
   * just before): STOPPED reaches the destination in half a round trip, and it times the rest
   * of the pause itself. Sent once the vCPUs are parked: until then they hold a CPU, and the
   * destination might wait for one to read it.
   */
  private async pauseGuest(): Promise<{ pausedAt: number; markAt: number }> {
    const stoppedAt = performance.now();
    trace('source', 'stopping the guest');
    await this.machine.stop();
    const pausedAt = this.machine.parkedAt ?? stoppedAt;
    this.send({ type: MsgType.STOPPED });
    const markAt = performance.now();
    trace('source', 'guest paused', pausedAt);
    return { pausedAt, markAt };
  }

  /**
   * DISCARD every page written since it was sent (dirty and sent); at most 12 ranges a
   * command. Those pages count as unsent afterwards. `within` (per block: first, end, first,
   * end… ascending): only those pages can be dirty and sent, so only they are scanned.
   */
  private sendDiscards(blocks: BlockState[], within?: ReadonlyArray<readonly number[]>): DiscardCounts {
    const batcher = new DiscardBatcher((msg) => this.send(msg));
    let pages = 0;
    blocks.forEach((b, i) => {
      batcher.start(b.name);
      const run = (first: number, end: number): void => {
        batcher.addRange(first * b.pageSize, (end - first) * b.pageSize);
        pages += end - first;
        // The destination no longer holds these pages: they are unsent again (and still
        // dirty). A run is reported once the scan has passed it, so clearing it is safe.
        b.sent.clearRange(first, end);
      };
      if (!within) b.dirty.forEachRunAnd(b.sent, run);
      else {
        const r = within[i] ?? [];
        for (let k = 0; k < r.length; k += 2) b.dirty.forEachRunAndIn(b.sent, r[k]!, r[k + 1]!, run);
      }
      batcher.finish();
    });
    return { ranges: batcher.stats.ranges, commands: batcher.stats.commands, pages };
  }

  /**
   * Sends every dirty page of every block, clearing its dirty flag first. Stops early (and
   * says so) when `interrupt()` turns true between batches. With `turns`, the event loop polls
   * for I/O between batches (see event-loop.ts).
   */
  private async sendDirty(sender: PageSender, blocks: BlockState[], interrupt: () => boolean, turns = true): Promise<{ bytes: number; interrupted: boolean }> {
    let bytes = 0;
    for (const b of blocks) {
      let p = b.dirty.nextSet(0);
      while (p >= 0) {
        this.checkAbort();
        if (interrupt()) return { bytes, interrupted: true };
        const end = b.populated.endAfterSet(p, PRECOPY_BATCH, b.dirty.nextClear(p, p + PRECOPY_BATCH_SPAN));
        b.dirty.clearRange(p, end);
        b.sent.setRange(p, end);
        bytes += await sender.sendRange(b, p, end - p);
        if (turns) await this.precopyWindow.keep(sender.stats.dataBytes);
        // Frames from the destination (PONG, SHUT) and control commands are read in the I/O phase.
        if (turns) await turnEventLoop();
        p = b.dirty.nextSet(end);
      }
    }
    return { bytes, interrupted: false };
  }

  private pingId = 0;

  /**
   * Sends a PING (with `ready`: answer once the guest could start at once). `answer` resolves
   * with the PONG and when the read that brought it happened (this clock).
   */
  private ping(ready = false): { sentAt: number; answer: Promise<{ frame: Frame; readAt: number }> } {
    const id = ++this.pingId;
    const answer = reply(this.pongWaiters, id, 'PING').then((frame) => {
      const readAt = this.pongReadAt.get(id) ?? performance.now();
      this.pongReadAt.delete(id);
      return { frame, readAt };
    });
    const sentAt = performance.now();
    this.ch!.send(ready ? { type: MsgType.PING, id, ready: true } : { type: MsgType.PING, id });
    return { sentAt, answer };
  }

  /** Precopy: how far the source may run ahead of the destination's placing (PRECOPY_WINDOW_BYTES). */
  private readonly precopyWindow = new PlaceWindow(PRECOPY_WINDOW_BYTES, () => this.ping().answer, (p) => this.race(p));

  /**
   * PING the destination and wait for its PONG: it has processed every frame sent before
   * (and with `ready`, its guest could start at once). Returns the round trip (ms, to the read
   * that brought the PONG); a PONG with the destination's clock also updates `destClock`.
   */
  private async roundTrip(opts: { ready?: boolean } = {}): Promise<number> {
    this.checkAbort();
    const { sentAt, answer } = this.ping(opts.ready);
    const { frame, readAt } = await this.race(answer);
    const clockUs = (frame.msg as { clockUs?: number }).clockUs;
    const rttMs = readAt - sentAt;
    // The answer was made halfway through the round trip, as far as this end can tell; the
    // shortest round trip bounds that guess best.
    if (typeof clockUs === 'number' && rttMs >= 0 && (!this.destClock || rttMs < this.destClock.rttMs)) {
      this.destClock = { rttMs, offsetMs: clockUs / 1000 - (sentAt + readAt) / 2 };
    }
    return rttMs;
  }

  /** When the read that brought each awaited PONG happened (this clock), by PING id. */
  private readonly pongReadAt = new Map<number, number>();
  /**
   * The destination's clock minus this one (ms), from the PONG with the shortest round trip
   * (its error is at most half that round trip): reads the destination's time stamps here.
   */
  private destClock: { rttMs: number; offsetMs: number } | null = null;

  /** Starts the preempt thread; its reports reach the postcopy server and the link handling. */
  private startPreemptThread(): PreemptThread {
    return new PreemptThread(
      {
        sent: (ranges, onChannel, pages, bytes) => this.server?.urgentSent(ranges, onChannel, pages, bytes),
        closed: (err) => {
          if (this.phase !== 'completed' && !this.ending) this.onLinkLost('preempt', new Error(`preempt channel: ${err.message}`));
        },
        fatal: (err) => this.onLinkLost('preempt', err),
      },
      { realtime: this.opts.preemptRealtime ?? false },
    );
  }

  /**
   * Has the preempt thread dial the preempt channel (same migration UUID). The destination's
   * fault thread takes it over; requests arrive on it and their pages leave on it, both ends
   * off their main threads.
   */
  private async connectPreempt(endpoint = this.endpoint): Promise<void> {
    const connecting = this.preempt!.connect({
      ...this.channelOptions(),
      endpoint,
      uuid: this.uuid,
      ...(this.opts.keepaliveTimeoutMs !== undefined ? { keepaliveTimeoutMs: this.opts.keepaliveTimeoutMs } : {}),
    });
    connecting.then(() => this.abortError && this.preempt?.drop(), () => undefined);
    try {
      await this.race(connecting);
    } catch (e) {
      throw this.abortError ?? new Error(`preempt channel could not be set up: ${(e as Error).message}`);
    }
    trace('source', 'preempt channel connected');
  }

  /** Options common to every channel this migration dials (TLS). */
  private channelOptions(): { tls?: TlsCredentials } {
    return this.opts.tls ? { tls: this.opts.tls } : {};
  }

  /** The main channel's send queue in postcopy, as bounded by boundMainQueue (bytes). */
  private mainQueueBytes: number | undefined;

  /** Postcopy without a preempt channel: bounds the main channel's kernel send queue (`postcopyQueueBytes`). */
  private boundMainQueue(ch: Channel): void {
    if (this.preempt) return;
    const r = ch.boundPostcopyQueue('send', this.opts.postcopyQueueBytes ?? DEFAULT_POSTCOPY_QUEUE_BYTES);
    if (r !== undefined) this.mainQueueBytes = r;
  }

  /** Makes `ch` the main channel: return-path frames, loss handling, keepalive. */
  private useMainChannel(ch: Channel): void {
    ch.setHandler((f) => this.onReturnFrame(f));
    void ch.whenClosed().then((err) => {
      if (this.phase !== 'completed') this.onLinkLost(ch, err ?? new Error('channel to the destination closed'));
    });
    startKeepalive(ch, { timeoutMs: this.opts.keepaliveTimeoutMs });
  }

  /**
   * A channel failed (`ch` null: a send or a wait on one failed). In postcopy, once the guest
   * runs on the destination, that pauses the migration (recovery); before, it fails it and
   * the guest runs on here.
   */
  private onLinkLost(ch: Channel | 'preempt' | null, err: Error): void {
    if (ch !== null && ch !== 'preempt' && ch !== this.ch) return; // replaced already
    if (this.abortError || this.phase === 'completed') return;
    // From RUN on the guest may run on the destination: a broken link pauses (recovery).
    if (this.pointOfNoReturn && this.server) {
      if (this.resuming && ch !== null) {
        // The recovery handshake itself broke: it fails, and the migration stays paused.
        for (const w of this.waiters.values()) w.reject(new PausedError(err.message));
        this.waiters.clear();
        return;
      }
      this.pauseLink(err);
      return;
    }
    this.abort(err);
  }

  /** Postcopy recovery: drop every channel and wait; the guest runs on the destination. */
  private pauseLink(err: Error, onPurpose = false): void {
    if (this.paused) return;
    this.paused = { at: performance.now(), reason: err.message };
    trace('source', `paused: ${err.message}`);
    const why = onPurpose ? Object.assign(new Error(err.message), { code: LINK_PAUSED }) : undefined;
    if (this.ch) {
      this.writtenBefore += this.ch.bytesWritten;
      this.ch.close(why);
    }
    this.preempt?.drop(why);
    this.server?.pause();
    const paused = new PausedError(err.message);
    for (const w of this.waiters.values()) w.reject(paused);
    this.waiters.clear();
    for (const w of this.pongWaiters.values()) w.reject(paused);
    this.pongWaiters.clear();
    this.setPhase('postcopy-paused');
    if (this.opts.autoRecover) void this.autoRecover();
  }

  /** Resolves once the migration is no longer paused. */
  private whenResumed(): Promise<void> {
    if (!this.paused) return Promise.resolve();
    return new Promise((resolve) => this.resumeWaiters.push(resolve));
  }

  /**
   * Postcopy recovery on purpose (QEMU's migrate-pause): drops every channel as if the link
   * had failed. Both ends pause; the guest runs on the destination. Throws unless postcopy runs.
   */
  pause(reason = 'paused by request'): void {
    if (this.phase !== 'postcopy') throw new Error(`cannot pause in phase ${this.phase} (only while postcopy runs)`);
    if (this.ending) throw new Error('cannot pause: every page was sent and the migration is finishing');
    this.pauseLink(new Error(reason), true);
  }

  /**
   * Postcopy recovery: reconnects to the destination (`to`, default the address used so far)
   * with the same migration UUID, learns which pages it holds, marks every other page unsent,
   * re-establishes the preempt channel, and carries on. A failure leaves the migration paused
   * (and rejects with the reason).
   */
  async resume(to?: string | Endpoint): Promise<void> {
    if (!this.paused) throw new Error(`cannot resume in phase ${this.phase} (only when paused)`);
    if (this.resuming) throw new Error('a recovery is already in progress');
    const endpoint = to === undefined ? this.endpoint : typeof to === 'string' ? parseEndpoint(to) : to;
    this.resuming = true;
    let ch: Channel | null = null;
    try {
      ch = await connectChannel({ ...this.channelOptions(), endpoint, role: 'main', uuid: this.uuid, timeoutMs: 5000 });
      this.ch = ch;
      this.useMainChannel(ch);
      this.boundMainQueue(ch);
      this.bitmaps.clear();
      const ack = reply(this.waiters, MsgType.RESUME_ACK, 'RESUME', 10_000);
      ch.send({ type: MsgType.RESUME });
      await ack;
      const blocks = this.server!.blocks;
      let missing = 0;
      for (const b of blocks) {
        const bm = this.bitmaps.get(b.name);
        if (!bm) throw new Error(`the destination sent no received-page bitmap for block "${b.name}"`);
        missing += this.server!.markUnreceived(b, bm);
      }
      trace('source', `recovery: ${missing} pages not received, sending them again`);
      if (this.preempt) await this.connectPreempt(endpoint);
      this.sender!.rebind(ch);
      this.server!.resume(ch);
      this.endpoint = endpoint;
      this.pausedMs += performance.now() - this.paused.at;
      this.recoveries++;
      this.paused = null;
      this.setPhase('postcopy');
      for (const w of this.resumeWaiters.splice(0)) w();
    } catch (e) {
      if (ch && this.ch === ch) {
        this.writtenBefore += ch.bytesWritten;
        ch.close();
      }
      this.preempt?.drop();
      if (this.abortError) throw this.abortError;
      throw new Error(`recovery failed: ${(e as Error).message}`);
    } finally {
      this.resuming = false;
    }
  }

  /** With autoRecover: reconnect with backoff until it works or the time is up. */
  private async autoRecover(): Promise<void> {
    const deadline = performance.now() + (this.opts.autoRecoverMs ?? 60_000);
    let delay = 100;
    while (this.paused && !this.abortError && performance.now() < deadline) {
      await sleep(delay);
      if (!this.paused || this.abortError) return;
      if (this.resuming) continue;
      try {
        await this.resume();
        return;
      } catch (e) {
        trace('source', (e as Error).message);
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  private readonly pongWaiters: Waiters = new Map();

  private send(msg: Message, payload?: Buffer): void {
    this.checkAbort();
    this.ch!.send(msg, payload);
  }

  /** Waits for the destination's ACK of `of` (or SHUT for completion); an ERROR rejects. */
  private expect(of: MsgType): Promise<Frame> {
    return this.race(reply(this.waiters, of, msgTypeName(of)));
  }

  /** A frame from the destination on the return path. */
  private onReturnFrame(f: Frame): void {
    const m = f.msg;
    switch (m.type) {
      case MsgType.REQ_PAGES: {
        if (!this.server) throw new Error('REQ_PAGES before postcopy');
        this.table!.checkMessage(m);
        this.server.request(m.block, m.offset, m.length);
        return;
      }
      case MsgType.ACK:
        answer(this.waiters, m.of, f);
        return;
      case MsgType.SHUT: {
        if (!answer(this.waiters, MsgType.SHUT, f) && m.status !== 'ok') {
          this.abort(new Error(`destination failed: ${m.reason ?? 'no reason given'}`));
        }
        return;
      }
      case MsgType.RECV_BITMAP: {
        const b = this.machine.blocks.find((x) => x.name === m.block);
        if (!b) throw new Error(`received-page bitmap for unknown RAM block "${m.block}"`);
        if (m.pages !== b.length / b.pageSize) throw new Error(`received-page bitmap for block "${m.block}" covers ${m.pages} pages, the block has ${b.length / b.pageSize}`);
        this.bitmaps.set(m.block, Buffer.from(payloadToBuffer(f.payload)));
        return;
      }
      case MsgType.RESUME_ACK:
        answer(this.waiters, MsgType.RESUME_ACK, f);
        return;
      case MsgType.ERROR:
        if ((m.code === LINK_DEAD || m.code === LINK_PAUSED) && this.pointOfNoReturn && this.server) {
          // The destination dropped the link (its keepalive, or migrate-pause): recovery, not failure.
          this.onLinkLost(null, new Error(`the destination dropped the connection: ${m.reason}`));
          return;
        }
        if (this.resuming || this.paused) {
          // The destination refused a recovery attempt: that attempt fails, the pause goes on.
          for (const w of this.waiters.values()) w.reject(new Error(`destination refused: ${m.reason}`));
          this.waiters.clear();
          return;
        }
        this.abort(new Error(`destination refused: ${m.reason}`));
        return;
      case MsgType.PING:
        this.ch?.send({ type: MsgType.PONG, id: m.id });
        return;
      case MsgType.PONG:
        if (this.pongWaiters.has(m.id)) this.pongReadAt.set(m.id, this.ch?.lastReadAt || performance.now());
        answer(this.pongWaiters, m.id, f);
        return;
      default:
        throw new Error(`unexpected message type ${m.type} on the return path`);
    }
  }

  /** Rejects when the migration is aborted, whichever comes first. */
  private race<T>(p: Promise<T>): Promise<T> {
    if (this.abortError) return Promise.reject(this.abortError);
    return new Promise<T>((resolve, reject) => {
      const onAbort = (e: Error): void => reject(e);
      this.abortWaiters.push(onAbort);
      p.then(
        (v) => {
          this.abortWaiters = this.abortWaiters.filter((w) => w !== onAbort);
          resolve(v);
        },
        (e) => {
          this.abortWaiters = this.abortWaiters.filter((w) => w !== onAbort);
          reject(e);
        },
      );
    });
  }
}

/**
 * The pages of an anonymous block that hold data now (`swapped`: count swap-type entries too),
 * or null when the answer cannot be trusted: memfd or caller memory, or a host with swap
 * where write-protect markers and swapped pages look alike.
 */
function populatedNow(mapping: Mapping, b: BlockState, swapped: boolean): PageBitmap | null {
  if (mapping.backing !== 'anonymous' || (!swapped && hostHasSwap())) return null;
  const bm = new PageBitmap(b.pages);
  const scanner = new PagemapScanner();
  try {
    scanner.populated(mapping.addr, b.pages * b.pageSize, b.pageSize, (first, end) => bm.setRange(first, end), { swapped });
  } finally {
    scanner.close();
  }
  return bm;
}

/** Answers awaited from the destination, by message type (ACK, SHUT) or PING id. */
type Waiters = Map<number, { resolve: (f: Frame) => void; reject: (e: Error) => void }>;

/** A promise for the answer registered under `key`; it rejects after `timeoutMs`. */
function reply(waiters: Waiters, key: number, what: string, timeoutMs = ACK_TIMEOUT_MS): Promise<Frame> {
  return new Promise<Frame>((resolve, reject) => {
    waiters.set(key, { resolve, reject });
    setTimeout(() => {
      if (waiters.get(key)?.reject === reject && waiters.delete(key)) reject(new Error(`destination did not answer ${what} within ${timeoutMs / 1000} s`));
    }, timeoutMs).unref();
  });
}

/** Whether `e` says a channel broke (rather than the destination refusing something). */
function isLinkError(e: unknown): boolean {
  return e instanceof ChannelClosedError || e instanceof PausedError;
}

/** Settles the wait registered under `key` with `f`; false when nobody waited. */
function answer(waiters: Waiters, key: number, f: Frame): boolean {
  const w = waiters.get(key);
  if (!w) return false;
  waiters.delete(key);
  w.resolve(f);
  return true;
}

function countDirty(blocks: BlockState[]): { pages: number; bytes: number } {
  let pages = 0;
  let bytes = 0;
  for (const b of blocks) {
    pages += b.dirty.count;
    bytes += b.dirty.count * b.pageSize;
  }
  return { pages, bytes };
}

/** The bandwidth estimate for the switchover decision: the best round rate seen, capped by the limit. */
function bestBandwidth(rounds: RoundReport[], limit: number): number {
  let best = 0;
  for (const r of rounds) if (r.bytes >= 1024 * 1024 && r.bandwidth > best) best = r.bandwidth;
  if (best === 0 && rounds.length > 0) best = rounds[rounds.length - 1]!.bandwidth;
  return limit > 0 ? Math.min(best, limit) : best;
}

type DiscardCounts = { ranges: number; commands: number; pages: number };

function addDiscards(a: DiscardCounts, b: DiscardCounts): DiscardCounts {
  return { ranges: a.ranges + b.ranges, commands: a.commands + b.commands, pages: a.pages + b.pages };
}

/**
 * The guest's pause, from `pausedAt` (its first vCPU parked here, as the vCPU stamped it) to
 * its last vCPU's first step on the destination, which the destination stamps in its own clock
 * (`startedAtUs`): read here through `destClock`, the offset between the clocks that the PONG
 * with the shortest round trip gave (off by at most half that round trip). That counts
 * whatever held STOPPED or the last pages up on the way (a sleeping CPU on a busy host can take
 * milliseconds to wake), which no estimate of the one-way time sees.
 *
 * It never runs past `ackedAt` (the confirmation came back then), nor below the time until
 * STOPPED left at `markAt` plus the destination's own time from reading STOPPED to its vCPUs
 * stepping (`startedAfterUs`): STOPPED cannot arrive before it left. Without the clocks (a
 * destination that sends none) the one-way time of STOPPED counts as half the round trip
 * `rttMs` measured just before the stop; without the destination's times at all (a lost link)
 * the pause runs to `ackedAt`.
 */
function guestPauseMs(t: {
  pausedAt: number;
  markAt: number;
  ackedAt: number;
  rttMs: number;
  startedAfterUs: unknown;
  startedAtUs: unknown;
  destClock: { rttMs: number; offsetMs: number } | null;
}): number {
  const untilAck = t.ackedAt - t.pausedAt;
  if (typeof t.startedAfterUs !== 'number' || !(t.startedAfterUs >= 0)) return untilAck;
  const atLeast = t.markAt - t.pausedAt + t.startedAfterUs / 1000;
  const estimate =
    t.destClock && typeof t.startedAtUs === 'number'
      ? t.startedAtUs / 1000 - t.destClock.offsetMs - t.pausedAt
      : atLeast + t.rttMs / 2;
  return Math.min(untilAck, Math.max(atLeast, estimate));
}
