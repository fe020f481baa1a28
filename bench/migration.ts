// bench/migration.ts — live migration over loopback between two real processes
// (`migrate recv` and `migrate send`), median of `runs`:
//
//   precopy-full   1 GiB guest full of non-zero data, idle vCPUs (bench/guests/fill.mjs)
//   precopy-zero   1 GiB guest that is mostly zero (1 page in 64 has data)
//   postcopy-sweep DESIGN.md §5: 1 GiB ab guest, one vCPU sweeping 1–1000 MiB, postcopy
//                  500 ms after the migration starts (QEMU 7.2 here: 2.57 s total, 5 ms
//                  downtime, 322 ms blocktime)
//   postcopy-sweep-whole the same with --no-trim-pages: every data page sent whole (the ab
//                  guest's pages hold one non-zero byte each; trimmed, each goes as 64 bytes)
//   postcopy-preempt the same with --preempt: requested pages on their own connection
//   postcopy-random  page-request latency under a saturated background stream: 1 GiB guest
//                  full of data whose vCPU reads random pages (bench/guests/fill.mjs with
//                  touch: random), postcopy 500 ms after the migration starts
//   postcopy-random-preempt the same with --preempt
//   postcopy-random-preempt-rt the same with --preempt-realtime on both ends (the threads at both
//                  ends of the preempt channel run SCHED_FIFO)
//   precopy-tls      precopy-full with TLS 1.3 (x509 certificates) on every channel
//   postcopy-recovery postcopy-sweep with --auto-recover on both ends, through a proxy that
//                  cuts every connection 150 ms into postcopy (postcopy-sweep's postcopy
//                  lasts ~250–400 ms: a cut after END cannot be recovered, see the source
//                  README); "recovery ms" is the time the source spent paused (cut → running
//                  again)
//
// The sweep scenarios pass --downtime-limit 10 so that precopy cannot complete before the switch
// to postcopy at 500 ms (QEMU's run never converged: its wire was the limit). With trimmed
// pages, our precopy of that guest may converge within QEMU's default limit of 300 ms, with a
// pause of ~200 ms, which is not what they measure. "pc" counts the runs that went postcopy.
//
// Page-data rate = page bytes moved / (total time − setup time); the zero guest's figure is
// "effective": RAM size / (total − setup). Downtime: what the source reports (from the stop
// to the destination's vCPUs running, without the confirmation's way back), "(acked)" with
// it, and "(clock)" the same pause read off the host's monotonic clock from both ends' trace
// lines: a check on the reported figure. Run: `node --import tsx bench/migration.ts`.
//
// A second table says where the vCPU's postcopy went (the destination's report: its duration,
// and the vCPU threads' time on a CPU and waiting for one, from the scheduler): blocktime is
// roughly what is left, so a vCPU starved of CPU shows a lower blocktime without running any
// more. It also gives each figure's range over the runs: on this 2-core VM single runs stray
// far from the median (identical runs of postcopy-sweep gave blocktimes from ~110 to ~380 ms).
//
// Warm memory: this machine is a Firecracker VM whose RAM the host backs lazily and takes
// back (free page reporting, 2 s after a page is freed): the first write to a guest-physical
// page the host does not back costs a host fault (~0.4–0.7 GB/s here, against ~3 GB/s for
// UFFDIO_COPY into backed memory). On bare metal there is no such cost. By default a throwaway
// process touches 3 GiB and frees it about half a second before the migration starts (the
// source's `--migrate-after`; before the processes start when that is under a second): the
// destination then allocates pages the host still backs, and the figures measure livemig
// rather than the VM. (Freeing it earlier is not enough: the host takes it back within 2 s.)
// `--cold` skips that and shows the VM's first-touch cost.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FaultProxy } from '../test/support/proxy.js';
import { traceTimeMs } from '../test/support/procs.js';
import { QmpClient } from '../test/support/qmp.js';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MIGRATE = path.join(ROOT, 'packages/cli/bin/migrate.js');
const FILL = path.join(ROOT, 'bench/guests/fill.mjs');

export interface Scenario {
  name: string;
  send: string[];
  recv: string[];
  /** TLS on every channel (certificates from `migrate certs`, made once per bench run). */
  tls?: boolean;
  /** Through a proxy that cuts every connection this many ms after postcopy began (recovery). */
  cutAfterMs?: number;
}

export const SCENARIOS: Scenario[] = [
  {
    name: 'precopy-full',
    send: ['--guest', FILL, '--ram', '1G', '--vcpus', '1', '--migrate-after', '100'],
    recv: [],
  },
  {
    name: 'precopy-zero',
    send: ['--guest', FILL, '--guest-config', '{"dataEvery":64}', '--ram', '1G', '--vcpus', '1', '--migrate-after', '100'],
    recv: [],
  },
  {
    name: 'postcopy-sweep',
    send: ['--ram', '1G', '--vcpus', '1', '--sweep', '1M-1000M', '--migrate-after', '2000', '--downtime-limit', '10', '--postcopy', '--postcopy-after', '500'],
    recv: [],
  },
  {
    name: 'postcopy-sweep-whole',
    send: ['--ram', '1G', '--vcpus', '1', '--sweep', '1M-1000M', '--migrate-after', '2000', '--downtime-limit', '10', '--postcopy', '--postcopy-after', '500', '--no-trim-pages'],
    recv: [],
  },
  {
    name: 'postcopy-preempt',
    send: ['--ram', '1G', '--vcpus', '1', '--sweep', '1M-1000M', '--migrate-after', '2000', '--downtime-limit', '10', '--postcopy', '--postcopy-after', '500', '--preempt'],
    recv: [],
  },
  {
    name: 'postcopy-random',
    send: ['--guest', FILL, '--guest-config', '{"touch":"random"}', '--ram', '1G', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '500'],
    recv: [],
  },
  {
    name: 'postcopy-random-preempt',
    send: ['--guest', FILL, '--guest-config', '{"touch":"random"}', '--ram', '1G', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '500', '--preempt'],
    recv: [],
  },
  {
    name: 'postcopy-random-preempt-rt',
    send: ['--guest', FILL, '--guest-config', '{"touch":"random"}', '--ram', '1G', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '500', '--preempt', '--preempt-realtime'],
    recv: ['--preempt-realtime'],
  },
  {
    name: 'precopy-tls',
    send: ['--guest', FILL, '--ram', '1G', '--vcpus', '1', '--migrate-after', '100'],
    recv: [],
    tls: true,
  },
  {
    name: 'postcopy-recovery',
    send: ['--ram', '1G', '--vcpus', '1', '--sweep', '1M-1000M', '--migrate-after', '2000', '--downtime-limit', '10', '--postcopy', '--postcopy-after', '500', '--auto-recover'],
    recv: ['--auto-recover'],
    cutAfterMs: 150,
  },
];

type Report = Record<string, any>;

function run(args: string[]): { done: Promise<{ code: number | null; out: string; err: string }>; onErr: (re: RegExp) => Promise<string>; kill: () => void } {
  // Traced (buffered in memory, written after the switchover): the downtime on the host's clock.
  const child = spawn(process.execPath, [MIGRATE, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LIVEMIG_TRACE: '1' } });
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    err += s;
    for (const w of waiters) w();
  });
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => child.once('exit', (code) => resolve({ code, out, err })));
  const onErr = (re: RegExp): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const m = err.match(re);
        if (m) resolve(m[1]!);
      };
      waiters.push(check);
      check();
      void done.then(() => reject(new Error(`exited before ${re}: ${err}`)));
    });
  return { done, onErr, kill: () => child.kill('SIGKILL') };
}

/** A run that takes longer than this is killed and reported, rather than hanging the bench. */
const RUN_TIMEOUT_MS = 120_000;

function last(out: string): Report {
  const lines = out.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Report;
}

export interface RunFigures {
  totalMs: number;
  downtimeMs: number;
  /** Source: stop → the destination's confirmation arrived (downtimeMs leaves out its way back). */
  downtimeAckedMs: number;
  /**
   * The same pause read off the host's monotonic clock, which both ends share here: the
   * source's trace line "guest paused" → the destination's "guest started" (each stamped by
   * the vCPU threads: first to park, last to step). A check on
   * downtimeMs, which each end works out from its own clock and a measured round trip.
   */
  downtimeClockMs?: number;
  setupMs: number;
  /** 1 when the migration went postcopy, else 0. */
  postcopy: number;
  /** Bytes on the wire (source's transferredBytes), MB. */
  wireMB: number;
  pageDataGBps: number;
  effectiveGBps: number;
  destPeakRssMiB: number;
  ramMiB: number;
  blocktimeMs?: number;
  /** Postcopy's duration on the destination (RUN to END), ms. */
  postcopyMs?: number;
  /** The vCPUs' time in that stretch on a CPU, and runnable waiting for one (summed over vCPUs), ms. */
  vcpuRunMs?: number;
  vcpuRunqueueMs?: number;
  requests?: number;
  latencyP50Us?: number;
  latencyP99Us?: number;
  /** Recovery: time paused from the cut to running again (source's pausedMs). */
  recoveryMs?: number;
  bad: number;
}

/**
 * A child process that touches `gib` GiB and holds it until `release()`, which frees it (the
 * child exits). `ready` resolves once it is touched.
 */
export function holdWarmMemory(gib = 3): { ready: Promise<void>; release: () => Promise<void> } {
  const uffd = pathToFileURL(path.join(ROOT, 'packages/uffd/dist/index.js')).href;
  const script = `import(${JSON.stringify(uffd)}).then((u) => { for (let i = 0; i < ${gib}; i++) u.mapAnonymous(2 ** 30).madvise('populate-write'); process.stdout.write('ready\\n'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0)); })`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    void exited.then((code) => reject(new Error(`warm-up exited ${code} before it was ready`)));
  });
  return {
    ready,
    release: async () => {
      child.stdin!.end();
      await exited;
    },
  };
}

let certDir: string | null = null;

/** Certificates for 127.0.0.1, made once per bench run. */
function tlsArgs(): string[] {
  if (!certDir) {
    certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-bench-tls-'));
    fs.rmdirSync(certDir);
    const r = spawnSync(process.execPath, [MIGRATE, 'certs', '--dir', certDir, '--hosts', '127.0.0.1'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`migrate certs failed: ${r.stderr}`);
    process.once('exit', () => fs.rmSync(certDir!, { recursive: true, force: true }));
  }
  return ['--tls-dir', certDir];
}

export async function runOnce(s: Scenario, warm = true): Promise<RunFigures> {
  const at = s.send.indexOf('--migrate-after');
  const migrateAfter = at >= 0 ? Number(s.send[at + 1]) : 0;
  let held = warm ? holdWarmMemory() : null;
  await held?.ready;
  if (held && migrateAfter < 1000) {
    // A migration that starts soon after the processes: free the memory before they start,
    // so that freeing 3 GiB takes no CPU from the migration.
    await held.release();
    held = null;
  }
  const tls = s.tls ? tlsArgs() : [];
  const recv = run(['recv', '--listen', '127.0.0.1:0', '--json', ...tls, ...s.recv]);
  const addr = await recv.onErr(/listening on (\S+)/);
  let proxy: FaultProxy | null = null;
  let to = addr;
  if (s.cutAfterMs !== undefined) {
    proxy = await FaultProxy.start({ target: addr });
    to = proxy.address;
  }
  // The recovery scenario watches the source's control socket for postcopy to begin.
  const controlPath = proxy ? path.join(os.tmpdir(), `livemig-bench-${process.pid}.sock`) : null;
  const send = run(['send', '--to', to, '--json', ...(controlPath ? ['--control', controlPath] : []), ...tls, ...s.send]);
  const ctl = controlPath ? await QmpClient.connect(controlPath) : null;
  if (held) {
    // The warm memory goes back to the allocator about half a second before the migration
    // starts: late enough that the host still backs it while the destination fills its RAM,
    // early enough that freeing 3 GiB takes no CPU from the migration itself.
    await new Promise((r) => setTimeout(r, migrateAfter - 500));
    await held.release();
  }
  if (proxy && ctl && s.cutAfterMs !== undefined) {
    await ctl.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'postcopy-active', 60_000);
    await new Promise((r) => setTimeout(r, s.cutAfterMs));
    proxy.cut();
  }
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    send.kill();
    recv.kill();
  }, RUN_TIMEOUT_MS);
  const [so, ro] = await Promise.all([send.done, recv.done]);
  clearTimeout(timer);
  ctl?.close();
  proxy?.close();
  if (so.code !== 0 || ro.code !== 0) {
    const why = killed ? `no end after ${RUN_TIMEOUT_MS / 1000} s, both killed: ` : '';
    throw new Error(`${s.name}: ${why}send exit ${so.code}, recv exit ${ro.code}\n${so.err}\n${ro.err}\n${so.out}\n${ro.out}`);
  }
  if (process.env.LIVEMIG_BENCH_LOG) {
    // Each run's stderr (with LIVEMIG_TRACE=1, the phase timings of both ends) for later reading.
    fs.mkdirSync(process.env.LIVEMIG_BENCH_LOG, { recursive: true });
    const stem = path.join(process.env.LIVEMIG_BENCH_LOG, `${s.name}-${Date.now()}`);
    fs.writeFileSync(`${stem}.send.err`, so.err);
    fs.writeFileSync(`${stem}.recv.err`, ro.err);
  }
  const sr = last(so.out);
  const rr = last(ro.out);
  let downtimeClockMs: number | undefined;
  try {
    downtimeClockMs = Math.round((traceTimeMs(ro.err, 'dest', 'guest started') - traceTimeMs(so.err, 'source', 'guest paused')) * 10) / 10;
  } catch {
    downtimeClockMs = undefined; // a run without both trace lines has no clock figure
  }
  const moveMs = sr.totalTimeMs - sr.setupTimeMs;
  const dataBytes = sr.ram.precopyBytes + sr.ram.postcopyBytes;
  return {
    totalMs: sr.totalTimeMs,
    downtimeMs: sr.downtimeMs,
    downtimeAckedMs: sr.downtimeAckedMs ?? sr.downtimeMs,
    downtimeClockMs,
    setupMs: sr.setupTimeMs,
    postcopy: sr.mode === 'postcopy' ? 1 : 0,
    wireMB: Math.round(sr.ram.transferredBytes / 1e6),
    pageDataGBps: dataBytes / moveMs / 1e6,
    effectiveGBps: sr.ram.totalBytes / moveMs / 1e6,
    destPeakRssMiB: Math.round((rr.peakRssBytes ?? 0) / 1048576),
    ramMiB: sr.ram.totalBytes / 1048576,
    blocktimeMs: rr.postcopy?.blocktimeMs,
    postcopyMs: rr.postcopy?.durationMs,
    vcpuRunMs: rr.postcopy?.vcpuRunMs ? sumOf(rr.postcopy.vcpuRunMs) : undefined,
    vcpuRunqueueMs: rr.postcopy?.vcpuRunqueueMs ? sumOf(rr.postcopy.vcpuRunqueueMs) : undefined,
    requests: rr.postcopy?.requests,
    latencyP50Us: rr.postcopy?.latencyUs?.p50,
    latencyP99Us: rr.postcopy?.latencyUs?.p99,
    recoveryMs: s.cutAfterMs !== undefined ? sr.pausedMs : undefined,
    bad: rr.integrity?.bad ?? 0,
  };
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function sumOf(xs: number[]): number {
  return Math.round(xs.reduce((a, b) => a + b, 0) * 10) / 10;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface ScenarioResult {
  name: string;
  runs: number;
  median: Partial<Record<keyof RunFigures, number>>;
  /** Smallest and largest value of each figure over the runs: how far one run may stray. */
  range: Partial<Record<keyof RunFigures, [number, number]>>;
  /** Runs that went postcopy. */
  postcopyRuns: number;
  all: RunFigures[];
}

export async function runMigrationBench(opts: { runs?: number; only?: string[]; cold?: boolean } = {}): Promise<ScenarioResult[]> {
  const runs = opts.runs ?? 5;
  const out: ScenarioResult[] = [];
  for (const s of SCENARIOS) {
    if (opts.only && !opts.only.includes(s.name)) continue;
    const all: RunFigures[] = [];
    for (let i = 0; i < runs; i++) all.push(await runOnce(s, !opts.cold));
    const med: Partial<Record<keyof RunFigures, number>> = {};
    const range: Partial<Record<keyof RunFigures, [number, number]>> = {};
    for (const k of Object.keys(all[0]!) as Array<keyof RunFigures>) {
      const xs = all.map((r) => r[k]).filter((x): x is number => typeof x === 'number');
      if (!xs.length) continue;
      med[k] = round2(median(xs));
      range[k] = [round2(Math.min(...xs)), round2(Math.max(...xs))];
    }
    out.push({ name: s.name, runs, median: med, range, postcopyRuns: all.reduce((n, r) => n + r.postcopy, 0), all });
  }
  return out;
}

export function printMigrationTable(results: ScenarioResult[]): void {
  const w = Math.max(18, ...results.map((r) => r.name.length));
  console.log(`${'scenario'.padEnd(w)}  pc  total ms  downtime ms  (acked)  (clock)  wire MB  data GB/s  eff GB/s  blocktime ms    req  lat p50/p99 µs  recovery ms  dest RSS/RAM MiB  bad`);
  for (const r of results) {
    const m = r.median;
    const lat = m.latencyP50Us !== undefined ? `${m.latencyP50Us}/${m.latencyP99Us}` : '-';
    console.log(
      `${r.name.padEnd(w)} ${`${r.postcopyRuns}/${r.runs}`.padStart(3)}  ${String(m.totalMs).padStart(8)}  ${String(m.downtimeMs).padStart(11)}  ${String(m.downtimeAckedMs ?? '-').padStart(7)}  ${String(m.downtimeClockMs ?? '-').padStart(7)}  ${String(m.wireMB).padStart(7)}  ${String(m.pageDataGBps).padStart(9)}  ${String(m.effectiveGBps).padStart(8)}  ${String(m.blocktimeMs ?? '-').padStart(12)}  ${String(m.requests ?? '-').padStart(5)}  ${lat.padStart(14)}  ${String(m.recoveryMs ?? '-').padStart(11)}  ${`${m.destPeakRssMiB}/${m.ramMiB}`.padStart(16)}  ${m.bad}`,
    );
  }
  // Where the vCPU's postcopy went, and how far single runs strayed from the medians.
  const span = (r: ScenarioResult, k: keyof RunFigures): string => {
    const x = r.range[k];
    return x ? `${x[0]}–${x[1]}` : '-';
  };
  console.log(`\n${'scenario'.padEnd(w)}  postcopy ms  vCPU run ms  vCPU runqueue ms   | range over the runs: total ms   downtime ms   data GB/s   eff GB/s   blocktime ms`);
  for (const r of results) {
    const m = r.median;
    console.log(
      `${r.name.padEnd(w)}  ${String(m.postcopyMs ?? '-').padStart(11)}  ${String(m.vcpuRunMs ?? '-').padStart(11)}  ${String(m.vcpuRunqueueMs ?? '-').padStart(16)}   | ${span(r, 'totalMs').padStart(28)}  ${span(r, 'downtimeMs').padStart(12)}  ${span(r, 'pageDataGBps').padStart(10)}  ${span(r, 'effectiveGBps').padStart(9)}  ${span(r, 'blocktimeMs').padStart(13)}`,
    );
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const runsArg = args.indexOf('--runs');
  const onlyArg = args.indexOf('--only');
  const results = await runMigrationBench({
    runs: runsArg >= 0 ? Number(args[runsArg + 1]) : 5,
    only: onlyArg >= 0 ? args[onlyArg + 1]!.split(',') : undefined,
    cold: args.includes('--cold'),
  });
  printMigrationTable(results);
  console.log(JSON.stringify({ migration: results.map((r) => ({ name: r.name, runs: r.runs, postcopyRuns: r.postcopyRuns, median: r.median, range: r.range })) }));
}
