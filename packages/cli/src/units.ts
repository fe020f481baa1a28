/**
 * units.ts — owns the CLI's human units: sizes (`256M`, `1G`, `4096`, `1.5G`) and rates
 * (`500M` bytes per second), binary multiples (K = 1024), with errors quoting the input.
 */
const MULT: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new Error(`bad ${what} ${text}`);
    return Math.floor(text);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new Error(`bad ${what} "${text}": expected a number with an optional K, M, G or T suffix (e.g. 256M, 1G)`);
  return Math.floor(Number(m[1]) * MULT[m[2]!.toUpperCase()]!);
}

/** A rate in bytes per second; an optional `/s` suffix is accepted. */
export function parseRate(text: string | number, what = 'rate'): number {
  return parseSize(typeof text === 'string' ? text.replace(/\/s$/i, '') : text, what);
}

export { formatBytes } from '@livemig/transport';
