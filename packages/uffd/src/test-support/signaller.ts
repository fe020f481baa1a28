/** test-support/signaller.ts — a worker that signals an eventfd after a delay (cross-thread wake-ups). */
import { workerData } from 'node:worker_threads';
import { EventFd } from '../index.js';

const d = workerData as { fd: number; delayMs: number; value: number };
setTimeout(() => EventFd.fromFd(d.fd).signal(d.value), d.delayMs);
