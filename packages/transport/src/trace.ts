/**
 * trace.ts — owns the optional timing trace of a migration: with LIVEMIG_TRACE=1 in the
 * environment, each side prints `[trace source 4281.234567 s] what` lines on stderr at its
 * phase boundaries. The time is CLOCK_MONOTONIC, the same for every process of a host: the
 * lines of both ends sort into one timeline, and line up with `perf record -k mono`. Off by
 * default; costs one branch when off.
 *
 * Lines are kept in memory and written 50 ms after the first one of a burst (and at exit), not
 * one write each: a write to a pipe wakes its reader, and on a 2-core host that wakeup alone
 * took ~0.1–0.3 ms from the thread being traced, in the middle of the switchover it measures.
 */
import { monotonicOffsetMs } from '@livemig/uffd/clock';
const enabled = process.env.LIVEMIG_TRACE === '1';
const FLUSH_AFTER_MS = 50;

let pending: string[] = [];
let timer: NodeJS.Timeout | null = null;

function flush(): void {
  timer = null;
  if (pending.length === 0) return;
  const text = pending.join('');
  pending = [];
  process.stderr.write(text);
}

if (enabled) process.once('exit', flush);

/** Traces `what` now, or at `atMs` (a performance.now() time) for a moment measured elsewhere. */
export function trace(side: string, what: string, atMs?: number): void {
  if (!enabled) return;
  // Converted with the offset between the clocks now, valid for a time taken a moment ago.
  const seconds = ((atMs ?? performance.now()) + monotonicOffsetMs()) / 1000;
  pending.push(`[trace ${side} ${seconds.toFixed(6)} s] ${what}\n`);
  timer ??= setTimeout(flush, FLUSH_AFTER_MS).unref();
}
