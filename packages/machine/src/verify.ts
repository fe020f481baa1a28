/**
 * verify.ts — owns running a guest's integrity check. The check reads RAM, so it runs in a
 * worker thread (verify-worker.js), never on the main thread: after a postcopy migration a
 * main-thread read of a missing page would block the event loop.
 */
import { Worker } from 'node:worker_threads';
import { assertIntegrityReport, type IntegrityReport } from './guest.js';
import type { BlockInfo } from './ram-block.js';

export interface VerifyJob {
  guestUrl: string;
  config: unknown;
  blocks: BlockInfo[];
  vcpus: number;
  device: unknown[] | undefined;
}

/** Runs the guest's verify() in a worker; `track` sees the worker (to terminate it on destroy). */
export function verifyInWorker(job: VerifyJob, track?: (w: Worker, done: Promise<void>) => void): Promise<IntegrityReport> {
  const worker = new Worker(new URL('./verify-worker.js', import.meta.url), { workerData: job });
  const result = new Promise<IntegrityReport>((resolve, reject) => {
    let settled = false;
    worker.once('message', (m: { report: unknown }) => {
      try {
        assertIntegrityReport(m.report, `guest ${job.guestUrl}`);
        settled = true;
        resolve(m.report);
      } catch (e) {
        reject(e);
      }
    });
    worker.once('error', (e) => {
      settled = true;
      reject(e);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`verify worker exited (code ${code}) without a report`));
    });
  });
  track?.(worker, result.then(() => undefined, () => undefined));
  return result;
}
