/**
 * spare-vcpus.ts — owns vCPU threads started before any machine needs them: worker threads
 * that have booted and imported the vCPU runtime (koffi included), and wait, running nothing,
 * for the machine that takes one. A destination starts them while it waits for the source:
 * a vCPU thread's boot (~30 ms here) and imports (~25 ms, several times that on a host busy
 * receiving pages) then no longer compete with the incoming migration for the CPUs.
 *
 * A spare does not keep the process alive (unref'd until taken). What it is bound to (vCPU
 * index, control buffers, guest, blocks, ports) arrives in one message: vcpu-worker.ts.
 */
import { Worker } from 'node:worker_threads';
import type { VcpuWorkerData } from './vcpu.js';

/** The vCPU thread's module. */
export const VCPU_WORKER_URL = new URL('./vcpu-worker.js', import.meta.url);

/** workerData of a spare, until it is bound. */
export interface SpareWorkerData {
  spare: true;
}

/** The one message a spare gets: its vCPU (vcpu.ts), or to end. */
export type SpareMessage = { type: 'bind'; data: VcpuWorkerData } | { type: 'exit' };

/** How long a spare may take to end by itself before it is terminated. */
const EXIT_GRACE_MS = 10_000;

const spares: Worker[] = [];

function forget(w: Worker): void {
  const i = spares.indexOf(w);
  if (i >= 0) spares.splice(i, 1);
}

/**
 * Starts spare vCPU threads until `count` are waiting (those already waiting count). Returns
 * at once: they boot in the background.
 */
export function startSpareVcpus(count: number): void {
  while (spares.length < count) {
    const data: SpareWorkerData = { spare: true };
    const w = new Worker(VCPU_WORKER_URL, { workerData: data });
    w.unref();
    // A spare that fails to boot is dropped; the vCPU that would have taken it spawns its own.
    w.on('error', () => forget(w));
    w.on('exit', () => forget(w));
    spares.push(w);
  }
}

/** Spare vCPU threads waiting now. */
export function spareVcpuCount(): number {
  return spares.length;
}

/**
 * Takes a spare (the caller binds it at once, see Vcpu.prepare), or undefined when none is
 * waiting. The spare's own listeners are removed and it keeps the process alive again.
 */
export function takeSpareVcpu(): Worker | undefined {
  const w = spares.shift();
  if (!w) return undefined;
  w.removeAllListeners('error');
  w.removeAllListeners('exit');
  w.ref();
  return w;
}

/**
 * Ends every spare not taken. Each is asked to exit, which it does once it has booted: a
 * thread terminated while it loads a native addon (koffi) can abort the whole process.
 */
export async function dropSpareVcpus(): Promise<void> {
  await Promise.all(
    spares.splice(0).map(
      (w) =>
        new Promise<void>((resolve) => {
          const grace = setTimeout(() => void w.terminate(), EXIT_GRACE_MS);
          w.once('exit', () => {
            clearTimeout(grace);
            resolve();
          });
          const bye: SpareMessage = { type: 'exit' };
          w.postMessage(bye);
        }),
    ),
  );
}
