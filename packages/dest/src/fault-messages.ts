/**
 * fault-messages.ts — owns what the fault thread and the main thread exchange: the data the
 * thread starts with, the layout of the fault batches it posts, and the messages about the
 * preempt channel the thread owns when preempt is on.
 */
import type { ThreadScheduling } from '@livemig/uffd';

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
  /**
   * Preempt mode: the thread runs an event loop (not a blocking poll), takes over the preempt
   * connection when it arrives, sends page requests on it itself and places the urgent pages
   * it brings.
   */
  preempt: boolean;
  /** Preempt mode: ask to run as a realtime thread (a short slice where refused). */
  realtime: boolean;
  /** Int32 counter shared with the placer: pages this thread placed and counted as received. */
  received: SharedArrayBuffer;
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
/** A page nobody asked for yet, and the thread already requested it on the preempt channel. */
export const FAULT_NEW_SENT = 3;

/** Fields per entry of a `placed` batch: block index, page index, placement time µs. */
export const PLACED_FIELDS = 3;

/** Main thread → fault thread: take over the accepted preempt connection (a dup of its socket). */
export interface PreemptAttachMessage {
  type: 'preempt';
  /** Matches the answer (preempt-ready / preempt-failed) to this attach. */
  id: number;
  fd: number;
  uuid: string;
  /** Options for the handshake on the worker's side (`acceptChannel`: TLS credentials) and `keepaliveTimeoutMs`. */
  accept: Record<string, unknown>;
}

/** Main thread → fault thread: close the preempt channel (postcopy recovery pauses). */
export interface PreemptDropMessage {
  type: 'preempt-drop';
}

/** Fault thread → main thread. */
export type FaultWorkerMessage =
  | { type: 'faults'; faults: Float64Array }
  /** Requested pages the preempt channel placed. */
  | { type: 'placed'; placed: Float64Array }
  | { type: 'preempt-ready'; id: number; label: string }
  | { type: 'preempt-failed'; id: number; message: string }
  /** The preempt channel closed before the thread was stopped. */
  | { type: 'preempt-closed'; message: string }
  | { type: 'stopped'; preempt: PreemptStats | null }
  | { type: 'error'; message: string };

export interface PreemptStats {
  /** REQ_PAGES sent on the preempt channel. */
  requests: number;
  /** Pages that arrived on it (data and zero). */
  pages: number;
  /** Page payload bytes that arrived on it. */
  bytes: number;
  /** Of those, pages that were still missing and were placed from it. */
  placed: number;
  /** How the kernel scheduled the fault thread (set by the thread, not the channel). */
  scheduling?: ThreadScheduling;
}
