/**
 * verify-worker.ts — owns the body of the verification thread: load the guest module, view
 * the blocks, run its verify() and post the report back. A guest without verify() reports
 * `checked: false`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { IntegrityReport } from './guest.js';
import { viewBlocks } from './ram-block.js';
import { loadGuestDefinition } from './resolve-guest.js';
import type { VerifyJob } from './verify.js';

const job = workerData as VerifyJob;
const def = await loadGuestDefinition(job.guestUrl);
const report: IntegrityReport = def.verify
  ? def.verify({ config: job.config, blocks: viewBlocks(job.blocks), layout: job.blocks, vcpus: job.vcpus, device: job.device })
  : { checked: false, pages: 0, bad: 0 };
parentPort!.postMessage({ report });
