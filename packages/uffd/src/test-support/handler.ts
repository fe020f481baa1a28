/**
 * test-support/handler.ts — a worker that plays the destination's fault-handler thread: it
 * blocks in poll() on [userfaultfd, stop eventfd], reads fault messages without allocating,
 * and resolves each missing page once (UFFDIO_COPY from a pattern source, or UFFDIO_ZEROPAGE),
 * then reports what it did when told to stop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import {
  ALREADY_PRESENT, FdWaiter, UFFD_EVENT_PAGEFAULT, Userfaultfd, bufferAddress, faultAddress, faultTid, msgEvent,
} from '../index.js';
import { fillPattern } from './pattern.js';

export interface HandlerData {
  uffdFd: number;
  features: number;
  stopFd: number;
  addr: number;
  length: number;
  pageSize: number;
  mode: 'copy' | 'zeropage';
  seed?: number;
}

export interface HandlerReport {
  type: 'report';
  faults: number;
  placed: number;
  duplicates: number;
  alreadyPresent: number;
  retries: number;
  others: number;
  maxPlacementsPerPage: number;
  tids: number[];
}

const d = workerData as HandlerData;
const uffd = Userfaultfd.fromFd(d.uffdFd, d.features);
const pages = d.length / d.pageSize;
const src = Buffer.from(new ArrayBuffer(d.length));
for (let p = 0; p < pages; p++) fillPattern(new Uint32Array(src.buffer, p * d.pageSize, d.pageSize / 4), p, d.seed ?? 0);
const srcAddr = bufferAddress(src);
const placements = new Uint8Array(pages);
const waiter = new FdWaiter([d.uffdFd, d.stopFd]);
const msgs = Buffer.from(new ArrayBuffer(32 * 64));
const tids = new Set<number>();
let faults = 0, placed = 0, duplicates = 0, alreadyPresent = 0, retries = 0, others = 0;

parentPort!.postMessage({ type: 'ready' });
for (;;) {
  const ready = waiter.wait(5000);
  if (ready & 1) {
    let n: number;
    while ((n = uffd.readRaw(msgs)) > 0) {
      for (let i = 0; i < n; i++) {
        if (msgEvent(msgs, i) !== UFFD_EVENT_PAGEFAULT) {
          others++;
          continue;
        }
        faults++;
        tids.add(faultTid(msgs, i));
        const page = Math.floor((faultAddress(msgs, i) - d.addr) / d.pageSize);
        if (placements[page]) {
          duplicates++;
          continue;
        }
        const dst = d.addr + page * d.pageSize;
        let r: number;
        for (;;) {
          r = d.mode === 'copy' ? uffd.copy(dst, srcAddr + page * d.pageSize, d.pageSize) : uffd.zeropage(dst, d.pageSize);
          if (r !== 0) break;
          retries++;
        }
        if (r === ALREADY_PRESENT) alreadyPresent++;
        else placed++;
        placements[page]!++;
      }
    }
  }
  if (ready & 2) break;
}
parentPort!.postMessage({
  type: 'report', faults, placed, duplicates, alreadyPresent, retries, others,
  maxPlacementsPerPage: placements.reduce((a, b) => Math.max(a, b), 0), tids: [...tids],
} satisfies HandlerReport);
