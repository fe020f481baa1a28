/**
 * test-support/toucher.ts — a worker that plays a vCPU: it touches pages of memory mapped by
 * the main thread (read, write, or madvise them away) so that faults happen on its own thread,
 * then reports its tid, what it read, and how long each touch took.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { gettid, madvise, viewAt } from '../index.js';
import { checkPattern } from './pattern.js';

export interface ToucherData {
  addr: number;
  length: number;
  pageSize: number;
  /** Page indexes to touch, in this order. */
  pages: number[];
  op: 'read' | 'write' | 'dontneed';
  /** What read pages must hold. Default 'none' (no check). */
  expect?: 'pattern' | 'zero' | 'none';
  seed?: number;
  /** Value written into the first word of each page by 'write'. */
  value?: number;
  /** Int32Array[0]: set to 1 by the main thread to start (all touchers at once). */
  gate?: SharedArrayBuffer;
  /** Int32Array[0]: incremented after each page. */
  progress?: SharedArrayBuffer;
  /** Record each touch's duration. */
  time?: boolean;
}

export interface ToucherReady { type: 'ready'; tid: number }
export interface ToucherDone { type: 'done'; tid: number; bad: number[]; firstWords: number[]; times: number[] }

const d = workerData as ToucherData;
const tid = gettid();
parentPort!.postMessage({ type: 'ready', tid } satisfies ToucherReady);
if (d.gate) Atomics.wait(new Int32Array(d.gate), 0, 0);

const words = new Uint32Array(viewAt(d.addr, d.length));
const wpp = d.pageSize / 4;
const progress = d.progress ? new Int32Array(d.progress) : null;
const bad: number[] = [];
const firstWords: number[] = [];
const times: number[] = [];
for (const p of d.pages) {
  const t0 = d.time ? process.hrtime.bigint() : 0n;
  if (d.op === 'read') {
    const first = words[p * wpp]!; // the fault happens here
    if (d.time) times.push(Number(process.hrtime.bigint() - t0));
    firstWords.push(first);
    const page = words.subarray(p * wpp, (p + 1) * wpp);
    if (d.expect === 'pattern' && !checkPattern(page, p, d.seed ?? 0)) bad.push(p);
    if (d.expect === 'zero' && page.some((w) => w !== 0)) bad.push(p);
  } else if (d.op === 'write') {
    words[p * wpp] = d.value ?? 0xabcdef;
    if (d.time) times.push(Number(process.hrtime.bigint() - t0));
  } else {
    madvise(d.addr + p * d.pageSize, d.pageSize, 'dontneed');
  }
  if (progress) Atomics.add(progress, 0, 1);
}
parentPort!.postMessage({ type: 'done', tid, bad, firstWords, times } satisfies ToucherDone);
