/**
 * send.ts — `migrate send`: start a guest, let it run, migrate it, report. On failure the
 * guest is shown to be still running on the source and is verified there. With
 * --return-listen the same process then receives the guest back (ping-pong).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Machine } from '@livemig/machine';
import { OutgoingMigration } from '@livemig/source';
import type { MigrationReport, TlsCredentials } from '@livemig/transport';
import { tlsFromArgs } from './tls-args.js';
import { startGuest } from './guest-setup.js';
import { PauseNotice, ProgressLine } from './progress.js';
import { printReport } from './report-output.js';
import { parseRate, parseSize } from './units.js';
import { receiveOnce } from './recv.js';
import { SourceControl } from './control-commands.js';

export interface SendArgs {
  to: string;
  guest: string;
  ram: string;
  vcpus: number;
  migrateAfter: number;
  maxBandwidth: string;
  downtimeLimit: number;
  timeout: number;
  guestPort?: number;
  sweep?: string;
  guestConfig?: string;
  returnListen?: string;
  postcopy: boolean;
  postcopyAfter: string;
  postcopyFallback: 'precopy' | 'fail';
  preempt: boolean;
  preemptRealtime: boolean;
  runAfter: number;
  json: boolean;
  progress: boolean;
  /** Unix socket path of the control socket (control.ts), served from before the migration to the end. */
  control?: string;
  tlsDir?: string;
  tlsPsk?: string;
  tlsPskIdentity?: string;
  autoRecover: boolean;
  recoverTimeout: number;
  maxPostcopyBandwidth: string;
  postcopyQueue: string;
  trimPages: boolean;
}

export async function runSend(a: SendArgs): Promise<number> {
  if (a.preempt && !a.postcopy) {
    process.stderr.write('migrate send: --preempt needs --postcopy\n');
    return 2;
  }
  if (a.preemptRealtime && !a.preempt) {
    process.stderr.write('migrate send: --preempt-realtime needs --preempt\n');
    return 2;
  }
  let tls: TlsCredentials | undefined;
  try {
    tls = tlsFromArgs(a, 'client');
  } catch (e) {
    process.stderr.write(`migrate send: ${(e as Error).message}\n`);
    return 1;
  }
  let ctl: SourceControl | undefined;
  if (a.control !== undefined) {
    try {
      ctl = await SourceControl.start(a.control, { postcopy: a.postcopy });
    } catch (e) {
      process.stderr.write(`migrate send: ${(e as Error).message}\n`);
      return 1;
    }
    process.stderr.write(`migrate send: control socket on ${a.control}\n`);
  }
  let machine: Machine;
  try {
    machine = await startGuest(a);
  } catch (e) {
    process.stderr.write(`migrate send: cannot start the guest: ${(e as Error).message}\n`);
    await ctl?.close();
    return 1;
  }
  try {
    await sleep(a.migrateAfter);
    const report = await sendMachine(machine, a.to, { ...a, ctl, tls });
    const out: MigrationReport = report;
    let ok = report.status === 'completed';
    if (!ok) {
      out.sourceGuest = { running: await isRunning(machine) };
      out.integrity = await machine.verify();
    } else if (a.returnListen) {
      await machine.destroy();
      const back = await receiveOnce({
        listen: a.returnListen,
        guestPort: a.guestPort,
        runAfter: a.runAfter,
        progress: a.progress,
        tls: tls ? tlsFromArgs(a, 'server') : undefined,
      });
      out.returned = back.report;
      ok = back.ok;
      if (back.machine) await back.machine.destroy();
    }
    printReport(out, a.json);
    return ok ? 0 : 1;
  } finally {
    await machine.destroy().catch(() => undefined);
    await ctl?.close();
  }
}

/** Migrates a running guest to `to`; SIGINT/SIGTERM cancel it (the guest runs on). */
export async function sendMachine(
  machine: Machine,
  to: string,
  a: {
    maxBandwidth: string;
    downtimeLimit: number;
    timeout: number;
    progress: boolean;
    postcopy?: boolean;
    postcopyAfter?: string;
    postcopyFallback?: 'precopy' | 'fail';
    preempt?: boolean;
    preemptRealtime?: boolean;
    autoRecover?: boolean;
    maxPostcopyBandwidth?: string;
    postcopyQueue?: string;
    /** Default true: see OutgoingOptions.trimPages. */
    trimPages?: boolean;
    /** With autoRecover: seconds to keep trying. */
    recoverTimeout?: number;
    tls?: TlsCredentials;
    /** The control socket: it gets the migration and its progress. */
    ctl?: SourceControl;
  },
): Promise<MigrationReport> {
  const progress = new ProgressLine(a.progress);
  const pauseNotice = new PauseNotice('send', { autoRecover: a.autoRecover ?? false, control: a.ctl !== undefined });
  let postcopyAfter: number | 'auto' = 'auto';
  if (a.postcopyAfter !== undefined && a.postcopyAfter !== 'auto') {
    postcopyAfter = Number(a.postcopyAfter);
    if (!Number.isFinite(postcopyAfter) || postcopyAfter < 0) throw new Error(`bad --postcopy-after "${a.postcopyAfter}": give milliseconds or auto`);
  }
  const mig = new OutgoingMigration(machine, {
    to,
    postcopy: a.postcopy ?? false,
    postcopyAfter,
    postcopyFallback: a.postcopyFallback ?? 'precopy',
    preempt: a.preempt ?? false,
    preemptRealtime: a.preemptRealtime ?? false,
    autoRecover: a.autoRecover ?? false,
    autoRecoverMs: (a.recoverTimeout ?? 60) * 1000,
    tls: a.tls,
    maxBandwidth: parseRate(a.maxBandwidth, '--max-bandwidth'),
    maxPostcopyBandwidth: parseRate(a.maxPostcopyBandwidth ?? '0', '--max-postcopy-bandwidth'),
    ...(a.postcopyQueue !== undefined ? { postcopyQueueBytes: parseSize(a.postcopyQueue, '--postcopy-queue') } : {}),
    trimPages: a.trimPages ?? true,
    downtimeLimitMs: a.downtimeLimit,
    timeoutMs: a.timeout * 1000,
    onProgress: (p) => {
      progress.source(p);
      a.ctl?.progress(p);
      pauseNotice.update(p.phase === 'postcopy-paused', p.pausedReason);
    },
  });
  a.ctl?.attach(mig);
  const onSignal = (): void => {
    try {
      mig.cancel('interrupted by signal');
    } catch (e) {
      // After the point of no return the guest lives on the destination: nothing to cancel.
      process.stderr.write(`migrate send: ${(e as Error).message}\n`);
    }
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const report = await mig.run();
    a.ctl?.finished(report.status);
    return report;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    progress.end();
  }
}

/** True when the guest's vCPUs make progress over 200 ms. */
export async function isRunning(machine: Machine): Promise<boolean> {
  const sum = (): number => machine.progress().reduce((n, x) => n + x, 0);
  const before = sum();
  await sleep(200);
  return sum() > before;
}
