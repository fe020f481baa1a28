/**
 * place-jobs.ts — owns the memory the main thread and the placing thread share
 * (place-thread.ts, place-worker.ts): a control word array and a ring of job slots.
 *
 * Control (Int32): how many jobs were enqueued, how many are done, a stop flag, and a bell
 * the placing thread sleeps on (rung for every job and for stop). Job slot (Float64): which
 * block, first page, page count, the address of the pages' bytes, whether postcopy runs; the
 * thread writes back what placing did (copied, overwritten, fresh).
 */

export const CTRL_ENQUEUED = 0;
export const CTRL_DONE = 1;
export const CTRL_STOP = 2;
export const CTRL_BELL = 3;
export const CTRL_WORDS = 4;

export const JOB_BLOCK = 0;
export const JOB_FIRST = 1;
export const JOB_COUNT = 2;
export const JOB_SRC = 3;
export const JOB_POSTCOPY = 4;
export const JOB_COPIED = 5;
export const JOB_OVERWRITTEN = 6;
export const JOB_FRESH = 7;
export const JOB_FIELDS = 8;
/** Jobs in flight at most. */
export const JOB_SLOTS = 256;

export interface PlaceWorkerBlock {
  name: string;
  addr: number;
  pageSize: number;
  /** The placer's shared per-page state (page-placer.ts). */
  state: SharedArrayBuffer;
}

export interface PlaceWorkerData {
  uffdFd: number;
  features: number;
  blocks: PlaceWorkerBlock[];
  ctrl: SharedArrayBuffer;
  jobs: SharedArrayBuffer;
}

export type PlaceWorkerMessage =
  | { type: 'ready' }
  | { type: 'placed'; placed: Float64Array }
  | { type: 'stopped' }
  | { type: 'error'; message: string };
