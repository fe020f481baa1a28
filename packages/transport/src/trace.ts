/**
 * trace.ts — owns the optional timing trace of a migration: with LIVEMIG_TRACE=1 in the
 * environment, each side prints `[trace source 4281.234567 s] what` lines on stderr at its
 * phase boundaries. The time is CLOCK_MONOTONIC, the same for every process of a host: the
 * lines of both ends sort into one timeline, and line up with `perf record -k mono`. Off by
 * default; costs one branch when off.
 */
const enabled = process.env.LIVEMIG_TRACE === '1';

export function trace(side: string, what: string): void {
  if (enabled) process.stderr.write(`[trace ${side} ${(Number(process.hrtime.bigint() / 1000n) / 1e6).toFixed(6)} s] ${what}\n`);
}
