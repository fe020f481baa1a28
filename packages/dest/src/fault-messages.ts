/**
 * fault-messages.ts — owns what the fault thread and the main thread exchange: the data the
 * thread starts with and the layout of the fault batches it posts.
 */
export interface FaultWorkerBlock {
  name: string;
  addr: number;
  length: number;
  pageSize: number;
  /** Shared per-page state: 0 missing, 1 present, 2 requested. */
  state: SharedArrayBuffer;
}

export interface FaultWorkerData {
  uffdFd: number;
  features: number;
  stopFd: number;
  blocks: FaultWorkerBlock[];
}

/** Fields per reported fault in the Float64Array batch. */
export const FAULT_FIELDS = 5; // block index, page index, tid, time µs, 1 if duplicate
export const FAULT_OUTSIDE = -1;

