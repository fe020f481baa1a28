/**
 * fault-messages.ts — owns what the fault thread and the main thread exchange: the data the
 * thread starts with and the layout of the fault batches it posts.
 */
export interface FaultWorkerBlock {
  name: string;
  addr: number;
  length: number;
  pageSize: number;
  /** Shared per-page state (page-placer.ts): 0 missing, 1 present, 2 requested, 3 known zero. */
  state: SharedArrayBuffer;
}

export interface FaultWorkerData {
  uffdFd: number;
  features: number;
  stopFd: number;
  blocks: FaultWorkerBlock[];
}

/** Fields per reported fault in the Float64Array batch: block index, page index, tid, fault time µs, kind, resolved time µs. */
export const FAULT_FIELDS = 6;
/** In the block-index field: the fault lies outside every block (page field holds the address). */
export const FAULT_OUTSIDE = -1;
/** Kinds: a page nobody asked for yet (request it). */
export const FAULT_NEW = 0;
/** A page already requested (another vCPU waits too). */
export const FAULT_DUPLICATE = 1;
/** A known-zero page the fault thread mapped itself (resolved time is set). */
export const FAULT_LOCAL_ZERO = 2;

