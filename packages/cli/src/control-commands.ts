/**
 * control-commands.ts — owns the commands and events of the control socket of `migrate send`
 * (SourceControl) and `migrate recv` (DestControl), over the generic ControlServer of
 * control.ts: the mapping from the libraries' phases and states to QEMU's migration status
 * names, the `query-migrate` figures, argument validation, and the MIGRATION and
 * MIGRATION_PASS events.
 *
 * Status names (QEMU's MigrationStatus where one fits):
 *   source phase      → status          destination state            → status
 *   (not started)       none            none (no connection yet)       none
 *   setup               setup           setup, advise                  active
 *   precopy             active          discard, listening, completing device
 *   stop-and-copy       device          running, end                   postcopy-active
 *   postcopy            postcopy-active completed                      completed
 *   postcopy-paused     postcopy-paused paused                         postcopy-paused
 *   completed           completed       failed                         failed
 *   failed              failed
 *   cancelled           cancelled
 * and `cancelling` on the source between an accepted migrate-cancel and the end.
 */
import type { IncomingMigration, IncomingProgress } from '@livemig/dest';
import type { OutgoingMigration, Phase, Progress } from '@livemig/source';
import { CommandError, ControlServer } from './control.js';

export type ControlStatus =
  | 'none'
  | 'setup'
  | 'active'
  | 'device'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'completed'
  | 'failed'
  | 'cancelling'
  | 'cancelled';

const SOURCE_STATUS: Record<Phase, ControlStatus> = {
  setup: 'setup',
  precopy: 'active',
  'stop-and-copy': 'device',
  postcopy: 'postcopy-active',
  'postcopy-paused': 'postcopy-paused',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'cancelled',
};

/** Destination states (DestState values) → status. */
const DEST_STATUS: Record<string, ControlStatus> = {
  none: 'none',
  setup: 'active',
  advise: 'active',
  discard: 'device',
  listening: 'device',
  completing: 'device',
  running: 'postcopy-active',
  paused: 'postcopy-paused',
  end: 'postcopy-active',
  completed: 'completed',
  failed: 'failed',
};

const TERMINAL: ReadonlySet<ControlStatus> = new Set(['completed', 'failed', 'cancelled']);

/** Throws a GenericError when `args` has a key not in `allowed`. */
function onlyKeys(args: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(args)) {
    if (!allowed.includes(k)) {
      throw new CommandError(allowed.length === 0 ? `unexpected argument "${k}": this command takes none` : `unexpected argument "${k}" (expected ${allowed.map((a) => `"${a}"`).join(', ')})`);
    }
  }
}

/** A non-negative finite number argument, or undefined when absent. */
function nonNegative(args: Record<string, unknown>, key: string, what: string): number | undefined {
  if (!Object.hasOwn(args, key)) return undefined;
  const v = args[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new CommandError(`"${key}" must be a non-negative number (${what}), not ${JSON.stringify(v)}`);
  }
  return v;
}

/** Bookkeeping shared by both ends: the current status and its MIGRATION events. */
abstract class MigrationControl {
  readonly server: ControlServer;
  protected status: ControlStatus = 'none';
  /** performance.now() when the status became terminal. */
  protected endedAt: number | null = null;

  protected constructor(handlers: Record<string, (args: Record<string, unknown>) => unknown>) {
    this.server = new ControlServer(handlers);
  }

  /** Moves to `s`, with a MIGRATION event when it changed. */
  protected setStatus(s: ControlStatus): void {
    if (s === this.status) return;
    this.status = s;
    if (TERMINAL.has(s)) this.endedAt ??= performance.now();
    this.server.emit('MIGRATION', { status: s });
  }

  close(): Promise<void> {
    return this.server.close();
  }
}

/**
 * The control socket of `migrate send`. Created (and listening) before the migration exists;
 * `attach` hands it the migration, `progress` is fed from its onProgress. Parameters set and
 * requests made before `attach` apply as soon as the migration exists.
 */
export class SourceControl extends MigrationControl {
  private mig: OutgoingMigration | null = null;
  private readonly postcopy: boolean;
  private startedAt = 0;
  private round = 0;
  private pending: { maxBandwidth?: number; downtimeLimit?: number; postcopy?: boolean; cancel?: boolean } = {};

  private constructor(opts: { postcopy: boolean }) {
    super({
      'query-migrate': (a) => this.queryMigrate(a),
      'migrate-set-parameters': (a) => this.setParameters(a),
      'migrate-start-postcopy': (a) => this.startPostcopy(a),
      'migrate-cancel': (a) => this.cancel(a),
      'migrate-pause': (a) => this.pause(a),
      'migrate-resume': (a) => this.resume(a),
    });
    this.postcopy = opts.postcopy;
  }

  /** Starts the control socket at `path`. */
  static async start(path: string, opts: { postcopy: boolean }): Promise<SourceControl> {
    const c = new SourceControl(opts);
    await c.server.listen(path);
    return c;
  }

  /** The migration now exists (it has not run yet): status setup. */
  attach(mig: OutgoingMigration): void {
    this.mig = mig;
    this.startedAt = performance.now();
    this.setStatus('setup');
    const p = this.pending;
    this.pending = {};
    if (p.maxBandwidth !== undefined) mig.setMaxBandwidth(p.maxBandwidth);
    if (p.downtimeLimit !== undefined) mig.setDowntimeLimit(p.downtimeLimit);
    if (p.postcopy) mig.startPostcopy();
    if (p.cancel) this.cancelNow(mig);
  }

  /** From the migration's onProgress: status changes and finished rounds become events. */
  progress(p: Progress): void {
    if (p.phase === 'postcopy-paused' && this.status !== 'postcopy-paused') this.server.emit('MIGRATION_PAUSED', { reason: p.pausedReason ?? '' });
    if (p.phase === 'postcopy' && this.status === 'postcopy-paused') this.server.emit('MIGRATION_RESUMED', { recoveries: p.recoveries ?? 0 });
    if (p.round > this.round && p.phase === 'precopy') {
      for (let n = this.round + 1; n <= p.round; n++) this.server.emit('MIGRATION_PASS', { pass: n });
    }
    this.round = Math.max(this.round, p.round);
    const s = SOURCE_STATUS[p.phase];
    // A cancel was accepted: the phases until the end are still the migration's, the status says cancelling.
    if (this.status === 'cancelling' && !TERMINAL.has(s)) return;
    this.setStatus(s);
  }

  /** The migration ended with this report status (in case no progress call said so). */
  finished(status: 'completed' | 'failed' | 'cancelled'): void {
    this.setStatus(status);
  }

  private queryMigrate(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    if (!this.mig) return { status: this.status };
    const p = this.mig.status();
    return {
      status: this.status,
      phase: p.phase,
      round: p.round,
      'total-time': Math.round((this.endedAt ?? performance.now()) - this.startedAt),
      ram: {
        total: p.totalBytes,
        transferred: p.transferredBytes,
        remaining: p.remainingBytes,
        'dirty-sync-count': p.round,
        mbps: Math.round((p.bandwidth * 8) / 1e4) / 100,
      },
      bandwidth: p.bandwidth,
      'dirty-rate': p.dirtyRate,
      recoveries: p.recoveries ?? 0,
      ...(p.pausedReason !== undefined ? { 'paused-reason': p.pausedReason } : {}),
    };
  }

  private setParameters(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, ['max-bandwidth', 'downtime-limit']);
    const bw = nonNegative(args, 'max-bandwidth', 'bytes per second, 0 = unlimited');
    const dl = nonNegative(args, 'downtime-limit', 'milliseconds');
    if (TERMINAL.has(this.status)) throw new CommandError(`the migration has already ended (${this.status})`);
    if (this.mig) {
      if (bw !== undefined) this.mig.setMaxBandwidth(bw);
      if (dl !== undefined) this.mig.setDowntimeLimit(dl);
    } else {
      if (bw !== undefined) this.pending.maxBandwidth = bw;
      if (dl !== undefined) this.pending.downtimeLimit = dl;
    }
    return {};
  }

  private startPostcopy(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    if (!this.postcopy) throw new CommandError('postcopy was not enabled for this migration (migrate send --postcopy)');
    if (TERMINAL.has(this.status) || this.status === 'cancelling') throw new CommandError(`the migration has already ended (${this.status})`);
    if (this.status === 'postcopy-active' || this.status === 'postcopy-paused') throw new CommandError('the migration is already in postcopy');
    if (this.mig) this.mig.startPostcopy();
    else this.pending.postcopy = true;
    return {};
  }

  private cancel(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    if (TERMINAL.has(this.status)) throw new CommandError(`the migration has already ended (${this.status})`);
    if (this.mig) this.cancelNow(this.mig);
    else this.pending.cancel = true;
    return {};
  }

  /** Postcopy recovery on purpose: drop every channel; both ends pause. */
  private pause(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    if (!this.mig) throw new CommandError('the migration has not started');
    this.mig.pause('paused by migrate-pause on the control socket');
    return {};
  }

  /**
   * Postcopy recovery: reconnect to `to` (default: the address used so far). Replies once the
   * migration runs again, or with the reason the attempt failed (it stays paused then).
   */
  private async resume(args: Record<string, unknown>): Promise<Record<string, unknown>> {
    onlyKeys(args, ['to']);
    const to = args['to'];
    if (to !== undefined && typeof to !== 'string') throw new CommandError(`"to" must be a HOST:PORT string, not ${JSON.stringify(to)}`);
    if (!this.mig) throw new CommandError('the migration has not started');
    await this.mig.resume(to);
    return {};
  }

  /** Cancels (the library throws after the point of no return: that becomes the error reply). */
  private cancelNow(mig: OutgoingMigration): void {
    mig.cancel('migration cancelled by migrate-cancel on the control socket');
    this.setStatus('cancelling');
  }
}

/** The control socket of `migrate recv`: query-migrate and the MIGRATION events. */
export class DestControl extends MigrationControl {
  private last: IncomingProgress | null = null;
  private inc: IncomingMigration | null = null;

  private constructor() {
    super({
      'query-migrate': (a) => this.queryMigrate(a),
      'migrate-pause': (a) => this.pause(a),
      'migrate-recover': (a) => this.recover(a),
    });
  }

  /** The incoming migration (listening). */
  attach(inc: IncomingMigration): void {
    this.inc = inc;
  }

  /** Postcopy recovery on purpose: drop every channel; both ends pause. */
  private pause(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    if (!this.inc) throw new CommandError('no migration is running');
    this.inc.pause('paused by migrate-pause on the control socket');
    return {};
  }

  /** Postcopy recovery: listen on `listen` (HOST:PORT, port 0 picks one) for the source; returns the address. */
  private async recover(args: Record<string, unknown>): Promise<Record<string, unknown>> {
    onlyKeys(args, ['listen']);
    const listen = args['listen'];
    if (typeof listen !== 'string') throw new CommandError(`"listen" must be a HOST:PORT string, not ${JSON.stringify(listen)}`);
    if (!this.inc) throw new CommandError('no migration is running');
    const ep = await this.inc.recover(listen);
    return { listen: `${ep.host.includes(':') ? `[${ep.host}]` : ep.host}:${ep.port}` };
  }

  static async start(path: string): Promise<DestControl> {
    const c = new DestControl();
    await c.server.listen(path);
    return c;
  }

  /** From the incoming migration's onProgress. */
  progress(p: IncomingProgress): void {
    if (p.state === 'paused' && this.status !== 'postcopy-paused') this.server.emit('MIGRATION_PAUSED', { reason: p.pausedReason ?? '' });
    if (p.state === 'running' && this.status === 'postcopy-paused') this.server.emit('MIGRATION_RESUMED', { recoveries: p.recoveries ?? 0 });
    this.last = p;
    this.setStatus(DEST_STATUS[p.state] ?? 'active');
  }

  /** The migration ended with this report status. */
  finished(status: 'completed' | 'failed' | 'cancelled'): void {
    this.setStatus(status);
  }

  private queryMigrate(args: Record<string, unknown>): Record<string, unknown> {
    onlyKeys(args, []);
    const p = this.last;
    if (!p) return { status: this.status };
    return {
      status: this.status,
      state: p.state,
      round: p.round,
      ram: { total: p.totalBytes, received: p.receivedBytes },
      recoveries: p.recoveries ?? 0,
      ...(p.pausedReason !== undefined ? { 'paused-reason': p.pausedReason } : {}),
    };
  }
}
