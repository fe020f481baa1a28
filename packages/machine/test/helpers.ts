/** Shared test helpers: timing and cleanup of machines and mappings a test created. */
import { Machine, type MachineOptions } from '@livemig/machine';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` until true or `timeoutMs` passes. */
export async function waitFor(cond: () => boolean, timeoutMs = 2000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const live: Machine[] = [];

/** Machine.create, destroyed after the test by `destroyMachines`. */
export async function machine(opts: MachineOptions): Promise<Machine> {
  const m = await Machine.create(opts);
  live.push(m);
  return m;
}

export async function destroyMachines(): Promise<void> {
  await Promise.all(live.splice(0).map((m) => m.destroy()));
}

export const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;

export const total = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

export const MiB = 1024 * 1024;
