/**
 * report.ts — owns the shape of the migration report both ends print (`--json`) and return
 * from their library calls. Field names are a public contract: later features add fields,
 * never rename these.
 */
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
  precopyBytes: number;
  postcopyBytes: number;
  /** Page-data rate over the whole migration, megabits per second. */
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

export interface MigrationReport {
  role: 'source' | 'destination';
  status: MigrationStatus;
  mode: MigrationMode;
  uuid: string;
  guest: { kind: string; vcpus: number };
  totalTimeMs: number;
  setupTimeMs: number;
  downtimeMs: number;
  precopyRounds: number;
  ram: RamReport;
  rounds?: RoundReport[];
  integrity?: IntegrityReport;
  /** Destination: peak resident set size of the process, bytes. */
  peakRssBytes?: number;
  error?: string;
  /** Source after a failed migration: whether the guest still runs there. */
  sourceGuest?: { running: boolean };
  /** CLI ping-pong: the report of the guest coming back (`send --return-listen`). */
  returned?: MigrationReport;
  /** CLI: the report of sending the guest on (`recv --then-send-to`). */
  onward?: MigrationReport;
}

export function emptyRamReport(totalBytes = 0): RamReport {
  return { totalBytes, transferredBytes: 0, pagesNormal: 0, pagesZero: 0, precopyBytes: 0, postcopyBytes: 0, mbps: 0 };
}

/** Megabits per second for `bytes` moved in `ms` milliseconds. */
export function mbps(bytes: number, ms: number): number {
  return ms > 0 ? Math.round((bytes * 8) / (ms * 1000) * 10) / 10 : 0;
}
