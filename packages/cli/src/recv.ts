/**
 * recv.ts — `migrate recv`: wait for one incoming migration, run the guest, optionally let it
 * run and verify it, optionally send it on (--then-send-to). Exit 0 only when the migration
 * completed and the guest verified.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { IncomingMigration } from '@livemig/dest';
import type { Machine } from '@livemig/machine';
import { formatEndpoint, type MigrationReport, type TlsCredentials } from '@livemig/transport';
import { tlsFromArgs } from './tls-args.js';
import { PauseNotice, ProgressLine } from './progress.js';
import { printReport } from './report-output.js';
import { parseSize } from './units.js';
import { sendMachine } from './send.js';
import { DestControl } from './control-commands.js';

export interface RecvArgs {
  listen: string;
  maxRam?: string;
  runAfter: number;
  guestPort?: number;
  thenSendTo?: string;
  refuseFeature?: string;
  json: boolean;
  progress: boolean;
  /** Unix socket path of the control socket (control.ts), served from before listening to the end. */
  control?: string;
  tlsDir?: string;
  tlsPsk?: string;
  tlsPskIdentity?: string;
  tlsAuthz?: string[];
  autoRecover: boolean;
  preemptRealtime: boolean;
  postcopyQueue?: string;
  prefill: boolean;
}

export interface ReceiveResult {
  report: MigrationReport;
  machine: Machine | null;
  ok: boolean;
}

/** Receives one guest, runs it `runAfter` ms, verifies it. */
export async function receiveOnce(a: {
  listen: string;
  maxRam?: string;
  guestPort?: number;
  runAfter: number;
  progress: boolean;
  refuseFeature?: string;
  autoRecover?: boolean;
  preemptRealtime?: boolean;
  postcopyQueue?: string;
  prefill?: boolean;
  tls?: TlsCredentials;
  ctl?: DestControl;
}): Promise<ReceiveResult> {
  const progress = new ProgressLine(a.progress);
  const pauseNotice = new PauseNotice('recv', { autoRecover: a.autoRecover ?? false, control: a.ctl !== undefined });
  const inc = await IncomingMigration.listen({
    listen: a.listen,
    maxRam: a.maxRam !== undefined ? parseSize(a.maxRam, '--max-ram') : undefined,
    guestPort: a.guestPort,
    refuseFeatures: a.refuseFeature ? a.refuseFeature.split(',').map((x) => x.trim()).filter(Boolean) : undefined,
    autoRecover: a.autoRecover ?? false,
    preemptRealtime: a.preemptRealtime ?? false,
    ...(a.postcopyQueue !== undefined ? { postcopyQueueBytes: parseSize(a.postcopyQueue, '--postcopy-queue') } : {}),
    prefill: a.prefill ?? true,
    tls: a.tls,
    onProgress: (p) => {
      progress.dest(p);
      a.ctl?.progress(p);
      pauseNotice.update(p.state === 'paused', p.pausedReason);
    },
  });
  a.ctl?.attach(inc);
  process.stderr.write(`migrate recv: listening on ${formatEndpoint(inc.address)}\n`);
  const { report, machine } = await inc.accept();
  progress.end();
  a.ctl?.finished(report.status);
  const out: MigrationReport = report;
  const m = machine as Machine | null;
  if (report.status !== 'completed' || !m) return { report: out, machine: null, ok: false };
  if (a.runAfter > 0) await sleep(a.runAfter);
  out.integrity = await m.verify();
  return { report: out, machine: m, ok: out.integrity.bad === 0 };
}

export async function runRecv(a: RecvArgs): Promise<number> {
  let ctl: DestControl | undefined;
  if (a.control !== undefined) {
    try {
      ctl = await DestControl.start(a.control);
    } catch (e) {
      process.stderr.write(`migrate recv: ${(e as Error).message}\n`);
      return 1;
    }
    process.stderr.write(`migrate recv: control socket on ${a.control}\n`);
  }
  try {
    return await receiveAndReport(a, ctl);
  } finally {
    await ctl?.close();
  }
}

async function receiveAndReport(a: RecvArgs, ctl: DestControl | undefined): Promise<number> {
  let result: ReceiveResult;
  try {
    result = await receiveOnce({ ...a, ctl, tls: tlsFromArgs(a, 'server') });
  } catch (e) {
    process.stderr.write(`migrate recv: ${(e as Error).message}\n`);
    return 1;
  }
  const { report, machine } = result;
  let ok = result.ok;
  try {
    if (ok && machine && a.thenSendTo) {
      await machine.cont();
      const onward = await sendMachine(machine, a.thenSendTo, {
        maxBandwidth: '0',
        downtimeLimit: 300,
        timeout: 0,
        progress: a.progress,
        tls: a.tlsDir !== undefined || a.tlsPsk !== undefined ? tlsFromArgs({ ...a, tlsAuthz: undefined }, 'client') : undefined,
      });
      report.onward = onward;
      ok = onward.status === 'completed';
    }
    printReport(report, a.json);
    if (report.error) process.stderr.write(`migrate recv: migration failed: ${report.error}\n`);
    return ok ? 0 : 1;
  } finally {
    await machine?.destroy().catch(() => undefined);
  }
}
