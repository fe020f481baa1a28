/**
 * outgoing.ts — owns one outgoing migration from start to end: dial the destination, send
 * the guest's description, track dirty pages, run precopy rounds until the rest fits in the
 * downtime limit, then stop the guest, send the last dirty pages and the device state and
 * wait for the destination to confirm it runs the guest.
 *
 * The failure promise: until the destination confirms, any error leaves the source guest
 * running (vCPUs are resumed if the failure came during stop-and-copy), its RAM untouched,
 * and the report says why.
 */
import { pack } from 'msgpackr';
import { MsgType, newMigrationId, type Frame, type Message } from '@livemig/protocol';
import {
  connectChannel,
  emptyRamReport,
  mbps,
  parseEndpoint,
  type Channel,
  type Endpoint,
  type MigrationReport,
  type RoundReport,
} from '@livemig/transport';
import { PageBitmap } from './page-bitmap.js';
import { PageSender, type SendBlock } from './page-sender.js';
import { RateLimiter } from './rate-limiter.js';
import { DirtySync, type DirtyMethod } from './dirty-sync.js';
import type { SourceMachine } from './source-machine.js';

export interface OutgoingOptions {
  /** Destination address, `HOST:PORT` or an endpoint. */
  to: string | Endpoint;
  /** Page-data rate limit in bytes per second; 0 = unlimited (default). */
  maxBandwidth?: number;
  /** Largest acceptable stop-and-copy time in ms (default 300, like QEMU). */
  downtimeLimitMs?: number;
  /** Fail (guest runs on) when not completed after this many ms; 0 = never (default). */
  timeoutMs?: number;
  /** Migration UUID (default: a new random one). */
  uuid?: string;
  /** Dirty tracking method (default auto: WP-async + PAGEMAP_SCAN, soft-dirty fallback). */
  dirtyMethod?: DirtyMethod;
  /** Called after every round and phase change. */
  onProgress?: (p: Progress) => void;
}

export type Phase = 'setup' | 'precopy' | 'stop-and-copy' | 'completed' | 'failed' | 'cancelled';

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
}

interface BlockState extends SendBlock {
  dirty: PageBitmap;
}

const ACK_TIMEOUT_MS = 30_000;

export class CancelledError extends Error {
  constructor(why = 'migration cancelled') {
    super(why);
    this.name = 'CancelledError';
  }
}

export class OutgoingMigration {
  readonly uuid: string;
  private readonly machine: SourceMachine;
  private readonly endpoint: Endpoint;
  private readonly limiter: RateLimiter;
  private downtimeLimitMs: number;
  private readonly opts: OutgoingOptions;
  private ch: Channel | null = null;
  private phase: Phase = 'setup';
  private abortError: Error | null = null;
  private abortWaiters: Array<(e: Error) => void> = [];
  private waiters = new Map<number, { resolve: (f: Frame) => void; reject: (e: Error) => void }>();
  private progress: Progress;
  private readonly rounds: RoundReport[] = [];

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
    return { ...this.progress, phase: this.phase };
  }

  setMaxBandwidth(bytesPerSecond: number): void {
    this.limiter.setLimit(bytesPerSecond);
  }

  setDowntimeLimit(ms: number): void {
    this.downtimeLimitMs = ms;
  }

  /** Cancels before switchover: the source guest runs on. */
  cancel(reason = 'migration cancelled'): void {
    this.abort(new CancelledError(reason));
  }

  private abort(err: Error): void {
    if (this.abortError) return;
    this.abortError = err;
    for (const w of this.abortWaiters) w(err);
    this.abortWaiters = [];
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    this.ch?.close(err instanceof CancelledError ? undefined : err);
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
      timer = setTimeout(() => this.abort(new Error(`migration timed out after ${ms / 1000} s`)), ms);
    }
    let dirty: DirtySync | null = null;
    let sender: PageSender | null = null;
    let stoppedAt = 0;
    let guestStopped = false;
    try {
      // --- setup: connect, describe the guest, wait for the destination to accept.
      const ch = await this.race(connectChannel({ endpoint: this.endpoint, role: 'main', uuid: this.uuid }));
      this.ch = ch;
      ch.setHandler((f) => this.onReturnFrame(f));
      void ch.whenClosed().then((err) => {
        if (this.phase !== 'completed') this.abort(err ?? new Error('channel to the destination closed'));
      });
      this.send({
        type: MsgType.SETUP,
        guest: {
          kind: this.machine.kind,
          config: this.machine.config ?? null,
          ...(this.machine.module !== undefined ? { module: this.machine.module } : {}),
        },
        blocks: this.machine.blocks.map((b) => ({ name: b.name, length: b.length, pageSize: b.pageSize })),
        caps: ['zero-runs'],
        vcpus: this.machine.vcpus,
      });
      await this.expect(MsgType.SETUP);
      report.setupTimeMs = round1(performance.now() - t0);

      // --- precopy rounds
      const blocks: BlockState[] = this.machine.blocks.map((b) => ({
        name: b.name,
        pageSize: b.pageSize,
        pages: b.length / b.pageSize,
        buffer: Buffer.from(b.mapping.view()),
        dirty: new PageBitmap(b.length / b.pageSize, true),
      }));
      dirty = new DirtySync(this.machine.blocks, this.opts.dirtyMethod ?? 'auto');
      dirty.start();
      sender = new PageSender(ch, this.limiter);
      this.setPhase('precopy');
      let roundNo = 0;
      for (;;) {
        this.checkAbort();
        roundNo++;
        const rt0 = performance.now();
        const dirtyBefore = countDirty(blocks);
        this.send({ type: MsgType.ROUND, round: roundNo, dirtyBytes: dirtyBefore.bytes });
        const bytes = await this.sendDirty(sender, blocks);
        const rt1 = performance.now();
        const found = dirty.sync(blocks.map((b) => b.dirty));
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
        this.progress.transferredBytes = ch.bytesWritten;
        this.opts.onProgress?.(this.status());
        // Switchover once the rest would take no longer than the downtime limit at the
        // measured bandwidth (the first round's rate is the best estimate we have).
        const bandwidth = bestBandwidth(this.rounds, this.limiter.limit);
        const expectedMs = bandwidth > 0 ? (remaining.bytes / bandwidth) * 1000 : Infinity;
        if (expectedMs <= this.downtimeLimitMs) break;
      }

      // --- stop and copy
      this.checkAbort();
      this.setPhase('stop-and-copy');
      stoppedAt = performance.now();
      await this.machine.stop();
      guestStopped = true;
      this.checkAbort();
      dirty.sync(blocks.map((b) => b.dirty));
      await this.sendDirty(sender, blocks);
      const device = pack(this.machine.saveDevice());
      this.send({ type: MsgType.DEVICE }, device);
      this.send({ type: MsgType.COMPLETE });
      const shut = await this.expect(MsgType.SHUT);
      if (shut.msg.type !== MsgType.SHUT || shut.msg.status !== 'ok') {
        throw new Error(`destination failed to start the guest: ${(shut.msg as { reason?: string }).reason ?? 'no reason given'}`);
      }
      report.downtimeMs = round1(performance.now() - stoppedAt);
      // Tracking ends off the critical path: the guest is stopped, nothing writes any more.
      dirty.stop();
      dirty = null;
      this.setPhase('completed');
      report.status = 'completed';
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      this.abort(err);
      if (guestStopped) await this.machine.cont();
      report.status = err instanceof CancelledError ? 'cancelled' : 'failed';
      report.error = err.message;
      this.setPhase(report.status);
    } finally {
      if (timer) clearTimeout(timer);
      dirty?.stop();
      if (this.ch && !this.ch.closed) {
        if (report.status === 'completed') {
          await this.ch.flushed().catch(() => undefined);
          this.ch.close();
        }
      }
    }
    report.totalTimeMs = round1(performance.now() - t0);
    if (sender) {
      report.ram.pagesNormal = sender.stats.pagesNormal;
      report.ram.pagesZero = sender.stats.pagesZero;
      report.ram.precopyBytes = sender.stats.dataBytes;
    }
    report.ram.transferredBytes = this.ch?.bytesWritten ?? 0;
    report.ram.mbps = mbps(report.ram.transferredBytes, report.totalTimeMs);
    return report;
  }

  /** Sends every dirty page of every block, clearing its dirty flag first. */
  private async sendDirty(sender: PageSender, blocks: BlockState[]): Promise<number> {
    let bytes = 0;
    const maxBatch = 256;
    for (const b of blocks) {
      let p = b.dirty.nextSet(0);
      while (p >= 0) {
        this.checkAbort();
        const end = Math.min(b.dirty.nextClear(p), p + maxBatch);
        b.dirty.clearRange(p, end);
        bytes += await sender.sendRange(b, p, end - p);
        p = b.dirty.nextSet(end);
      }
    }
    return bytes;
  }

  private send(msg: Message, payload?: Buffer): void {
    this.checkAbort();
    this.ch!.send(msg, payload);
  }

  /** Waits for the destination's ACK of `of` (or SHUT for completion); an ERROR rejects. */
  private expect(of: MsgType): Promise<Frame> {
    return this.race(
      new Promise<Frame>((resolve, reject) => {
        this.waiters.set(of, { resolve, reject });
        setTimeout(() => {
          if (this.waiters.get(of)) {
            this.waiters.delete(of);
            reject(new Error(`destination did not answer within ${ACK_TIMEOUT_MS / 1000} s`));
          }
        }, ACK_TIMEOUT_MS).unref();
      }),
    );
  }

  private onReturnFrame(f: Frame): void {
    const m = f.msg;
    switch (m.type) {
      case MsgType.ACK: {
        const w = this.waiters.get(m.of);
        if (w) {
          this.waiters.delete(m.of);
          w.resolve(f);
        }
        return;
      }
      case MsgType.SHUT: {
        const w = this.waiters.get(MsgType.SHUT);
        if (w) {
          this.waiters.delete(MsgType.SHUT);
          w.resolve(f);
        } else if (m.status !== 'ok') {
          this.abort(new Error(`destination failed: ${m.reason ?? 'no reason given'}`));
        }
        return;
      }
      case MsgType.ERROR:
        this.abort(new Error(`destination refused: ${m.reason}`));
        return;
      case MsgType.PING:
        this.ch?.send({ type: MsgType.PONG, id: m.id });
        return;
      case MsgType.PONG:
        return;
      default:
        throw new Error(`unexpected ${MsgType[m.type as unknown as keyof typeof MsgType] ?? m.type} on the return path`);
    }
  }

  /** Rejects when the migration is aborted, whichever comes first. */
  private race<T>(p: Promise<T>): Promise<T> {
    if (this.abortError) return Promise.reject(this.abortError);
    return new Promise<T>((resolve, reject) => {
      this.abortWaiters.push(reject);
      p.then(resolve, reject);
    });
  }
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

function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}
