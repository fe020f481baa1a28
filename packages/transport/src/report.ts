/**
 * report.ts — owns the shape of the migration report both ends print (`--json`) and return
 * from their library calls. Field names are a public contract: later features add fields,
 * never rename these.
 */
import type { ThreadScheduling } from '@livemig/uffd';

export type MigrationStatus = 'completed' | 'failed' | 'cancelled';
export type MigrationMode = 'precopy' | 'postcopy';

export interface RamReport {
  totalBytes: number;
  /** Bytes of page data and headers sent or received on the wire. */
  transferredBytes: number;
  /** Pages sent with their data. */
  pagesNormal: number;
  /** Pages sent as zero runs (no payload). */
  pagesZero: number;
  /** Of pagesNormal, the pages sent without their trailing zero bytes (TRIMMED_RUN). */
  pagesTrimmed: number;
  precopyBytes: number;
  postcopyBytes: number;
  /** Wire rate over the whole migration (transferredBytes / totalTimeMs), megabits per second. */
  mbps: number;
}

export interface IntegrityReport {
  checked: boolean;
  pages: number;
  bad: number;
  firstBad?: { block: string; offset: number; detail: string };
}

export interface RoundReport {
  round: number;
  /** Page-data bytes sent in the round. */
  bytes: number;
  pages: number;
  durationMs: number;
  /** Measured send rate, bytes per second. */
  bandwidth: number;
  /** Bytes dirtied per second during the round. */
  dirtyRate: number;
  /** Dirty bytes found at the end of the round. */
  dirtyBytes: number;
}

export interface PostcopyReport {
  /** Page requests sent (destination) or served (source). */
  requests: number;
  /** Destination: fault messages read (including duplicates and zero faults). */
  faults?: number;
  /** Destination: faults on known-zero pages, resolved locally without asking the source. */
  zeroFaults?: number;
  /** Destination: time during which all vCPUs were blocked at once (QEMU's blocktime), ms. */
  blocktimeMs?: number;
  /** Destination: per-vCPU time blocked on missing pages, ms. */
  vcpuBlocktimeMs?: number[];
  /** Destination: fault-to-placement latency of requested pages, µs. */
  latencyUs?: { p50: number; p99: number; max: number };
  /** Destination: latency histogram, log2 µs buckets (`"64-128us": n`). */
  latencyHistogram?: Record<string, number>;
  /** Time from the guest starting here (RUN) to the last page (END), ms. */
  durationMs?: number;
  /**
   * Destination: per vCPU, the scheduler's account of the same stretch (RUN to END): time on a
   * CPU, and time runnable but waiting for one, ms. With `vcpuBlocktimeMs` it says where a
   * vCPU's time went; what is left is other sleep. Blocktime alone hides a vCPU that waits for
   * a CPU instead of for pages. Absent when the kernel keeps no such account.
   */
  vcpuRunMs?: number[];
  vcpuRunqueueMs?: number[];
  /**
   * Destination: pages placed by moving in a page of the destination's own (UFFDIO_MOVE)
   * rather than by UFFDIO_COPY allocating one: the very pages DISCARD had taken out of guest
   * RAM, then pages allocated ahead while the destination was idle (`prefilledPages`).
   */
  recycledPages?: number;
  /** Destination: fresh pages allocated ahead in idle moments of postcopy, used or not. */
  prefilledPages?: number;
  /** Destination: guest steps run during postcopy (the guest made progress while pages were missing). */
  guestProgress?: number;
  /** The preempt channel, when it was used: what it carried. */
  preempt?: PreemptReport;
  /**
   * Without a preempt channel: the size of this end's kernel queue on the main channel while
   * requested pages shared it with the background stream (the source's send queue, the
   * destination's receive queue; bytes, as the kernel reports them). Absent when left to the
   * kernel's own sizing.
   */
  mainQueueBytes?: number;
}

export interface PreemptReport {
  /** Page requests sent on it (destination) or received on it (source). */
  requests: number;
  /** Pages it carried (data and zero). */
  pages: number;
  /** Page payload bytes it carried. */
  bytes: number;
  /**
   * How the kernel scheduled the thread that served it on this end: `realtime` (asked for
   * and granted), `short-slice` (the default, or realtime refused), `default` (neither granted).
   */
  scheduling?: ThreadScheduling;
}

export interface MigrationReport {
  role: 'source' | 'destination';
  status: MigrationStatus;
  mode: MigrationMode;
  uuid: string;
  guest: { kind: string; vcpus: number };
  totalTimeMs: number;
  setupTimeMs: number;
  /**
   * Time the guest ran nowhere. Source: from stopping its vCPUs until the last command
   * (COMPLETE in precopy, RUN in postcopy) left, plus half a round trip measured just before
   * the stop, plus the destination's own time from that command to running vCPUs (sent back
   * in SHUT or the ACK of RUN); never more than `downtimeAckedMs`. Destination: from the socket
   * read that brought the last command (and what came in the same write) until its vCPUs ran.
   */
  downtimeMs: number;
  /** Source: from stopping its vCPUs until the destination's confirmation (SHUT or the ACK of RUN) arrived. */
  downtimeAckedMs?: number;
  precopyRounds: number;
  ram: RamReport;
  rounds?: RoundReport[];
  integrity?: IntegrityReport;
  /** Destination: peak resident set size of the process, bytes. */
  peakRssBytes?: number;
  error?: string;
  /** Postcopy figures (destination: faults and latency; source: requests served). */
  postcopy?: PostcopyReport;
  /** Postcopy discards: byte ranges dropped on the destination, the commands that carried them, the pages they covered. */
  discard?: { ranges: number; commands: number; pages: number; /** destination: most ranges seen in one command */ maxRangesPerCommand?: number };
  /** Postcopy recovery: times the migration was paused by a failure and resumed. */
  recoveries?: number;
  /** Postcopy recovery: total time spent paused, ms. */
  pausedMs?: number;
  /** Source: why postcopy was not used although asked for (the destination refused ADVISE). */
  postcopyRefused?: string;
  /** Source after a failed migration: whether the guest still runs there. */
  sourceGuest?: { running: boolean };
  /** CLI ping-pong: the report of the guest coming back (`send --return-listen`). */
  returned?: MigrationReport;
  /** CLI: the report of sending the guest on (`recv --then-send-to`). */
  onward?: MigrationReport;
}

export function emptyRamReport(totalBytes = 0): RamReport {
  return { totalBytes, transferredBytes: 0, pagesNormal: 0, pagesZero: 0, pagesTrimmed: 0, precopyBytes: 0, postcopyBytes: 0, mbps: 0 };
}

/** Megabits per second for `bytes` moved in `ms` milliseconds. */
export function mbps(bytes: number, ms: number): number {
  return ms > 0 ? Math.round((bytes * 8) / (ms * 1000) * 10) / 10 : 0;
}

/** Milliseconds rounded to 0.1 for reports. */
export function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** A byte count for people: `256.0 MiB`. */
export function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}
