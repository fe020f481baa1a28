/**
 * trace.ts — owns the optional timing trace of a migration: with LIVEMIG_TRACE=1 in the
 * environment, each side prints `[trace source +12.345 ms] what` lines on stderr at its
 * phase boundaries. Off by default; costs one branch when off.
 */
const enabled = process.env.LIVEMIG_TRACE === '1';
const t0 = performance.now();

export function trace(side: string, what: string): void {
  if (enabled) process.stderr.write(`[trace ${side} +${(performance.now() - t0).toFixed(3)} ms] ${what}\n`);
}
