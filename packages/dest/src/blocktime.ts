/**
 * blocktime.ts — owns postcopy's two measurements of how much the guest suffered from
 * missing pages.
 *
 * Blocktime as QEMU defines it (`postcopy-blocktime`): from the faulting thread ids, per vCPU
 * the time it spent blocked on a missing page, and in total the time during which *all*
 * vCPUs were blocked at once. And the page-request latency (QEMU 10.1's
 * `postcopy-latency-dist`): time from reading a fault to placing its page, as p50/p99/max and
 * a log2 histogram in microseconds.
 *
 * Times are microseconds on one clock shared by every thread (see `nowUs`).
 */

/** Monotonic microseconds, comparable across worker threads of this process. */
export function nowUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

export class Blocktime {
  private readonly tidToVcpu = new Map<number, number>();
  private readonly vcpus: number;
  /** Per vCPU: address (page-aligned) it waits for, or -1. */
  private readonly waitingFor: Float64Array;
  private readonly since: Float64Array;
  private readonly total: Float64Array;
  private blocked = 0;
  private allSince = 0;
  private allTotal = 0;
  /** address → vCPUs waiting on it */
  private readonly waiters = new Map<number, number[]>();

  constructor(vcpuTids: readonly number[]) {
    this.vcpus = vcpuTids.length;
    vcpuTids.forEach((tid, i) => this.tidToVcpu.set(tid, i));
    this.waitingFor = new Float64Array(this.vcpus).fill(-1);
    this.since = new Float64Array(this.vcpus);
    this.total = new Float64Array(this.vcpus);
  }

  /** A thread `tid` faulted on page `addr` at time `t` (µs). Threads that are not vCPUs are ignored. */
  fault(tid: number, addr: number, t: number): void {
    const v = this.tidToVcpu.get(tid);
    if (v === undefined) return;
    const prev = this.waitingFor[v]!;
    if (prev === addr) return;
    // A vCPU that faults again was running: its previous wait ended by now at the latest.
    if (prev >= 0) this.end(v, prev, t);
    this.waitingFor[v] = addr;
    this.since[v] = t;
    let list = this.waiters.get(addr);
    if (!list) {
      list = [];
      this.waiters.set(addr, list);
    }
    list.push(v);
    this.blocked++;
    if (this.blocked === this.vcpus) this.allSince = t;
  }

  /** Ends vCPU `v`'s wait for `addr` at `t`. */
  private end(v: number, addr: number, t: number): void {
    const list = this.waiters.get(addr);
    if (list) {
      const i = list.indexOf(v);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.waiters.delete(addr);
    }
    if (this.blocked === this.vcpus) this.allTotal += Math.max(0, t - this.allSince);
    this.total[v]! += Math.max(0, t - this.since[v]!);
    this.waitingFor[v] = -1;
    this.blocked--;
  }

  /** The page at `addr` was placed at time `t`: every vCPU waiting on it runs again. */
  placed(addr: number, t: number): void {
    const list = this.waiters.get(addr);
    if (!list) return;
    this.waiters.delete(addr);
    if (this.blocked === this.vcpus) this.allTotal += Math.max(0, t - this.allSince);
    for (const v of list) {
      this.total[v]! += Math.max(0, t - this.since[v]!);
      this.waitingFor[v] = -1;
      this.blocked--;
    }
  }

  /** True when some vCPU waits for a page (used to place waiting pages first). */
  get anyBlocked(): boolean {
    return this.blocked > 0;
  }

  /** Per-vCPU blocktime in ms (waits still open counted up to `t`). */
  vcpuMs(t = nowUs()): number[] {
    return Array.from(this.total, (us, v) => round3((us + (this.waitingFor[v]! >= 0 ? t - this.since[v]! : 0)) / 1000));
  }

  /** Time all vCPUs were blocked at once, ms. */
  totalMs(t = nowUs()): number {
    return round3((this.allTotal + (this.blocked === this.vcpus && this.vcpus > 0 ? t - this.allSince : 0)) / 1000);
  }
}

/** Latency samples (µs): exact percentiles over the samples kept, and a log2 histogram. */
export class LatencyStats {
  private readonly samples: number[] = [];
  /** histogram[i] counts samples in [2^i, 2^(i+1)) µs; bucket 0 also holds < 1 µs. */
  readonly histogram: number[] = [];
  count = 0;
  max = 0;

  add(us: number): void {
    this.count++;
    if (us > this.max) this.max = us;
    this.samples.push(us);
    const b = us < 1 ? 0 : Math.floor(Math.log2(us));
    while (this.histogram.length <= b) this.histogram.push(0);
    this.histogram[b]!++;
  }

  percentile(p: number): number {
    if (this.samples.length === 0) return 0;
    const s = [...this.samples].sort((a, b) => a - b);
    const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
    return s[i]!;
  }

  summary(): { p50: number; p99: number; max: number } {
    return { p50: Math.round(this.percentile(50)), p99: Math.round(this.percentile(99)), max: Math.round(this.max) };
  }

  /** The histogram as `{"<lo>-<hi>us": count}` with power-of-two bounds. */
  histogramObject(): Record<string, number> {
    const out: Record<string, number> = {};
    this.histogram.forEach((n, i) => {
      if (n > 0) out[`${i === 0 ? 0 : 2 ** i}-${2 ** (i + 1)}us`] = n;
    });
    return out;
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
