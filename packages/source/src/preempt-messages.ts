/**
 * preempt-messages.ts — owns the messages between the source's main thread and its preempt
 * thread (preempt-thread.ts ↔ preempt-worker.ts).
 */
import type { Endpoint, TlsCredentials } from '@livemig/transport';
import type { ThreadScheduling } from '@livemig/uffd';

/** The thread's workerData. */
export interface PreemptWorkerData {
  /** Ask to run as a realtime thread (falls back to a short slice when refused). */
  realtime: boolean;
}

/** A block as the preempt thread sees it: guest RAM by address, bitmaps by shared memory. */
export interface ServeBlock {
  name: string;
  pageSize: number;
  pages: number;
  /** Address of the block's guest RAM in this process. */
  addr: number;
  /**
   * The main thread's "may hold data" and "still to send" flags, one byte a page
   * (PageBitmap.shared): the thread reads them, only the main thread writes them.
   */
  populated: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
}

/** Main thread → preempt thread. */
export type PreemptIn =
  /** Dial the preempt channel (dropping any earlier one); answered by connected / connect-failed. */
  | { type: 'connect'; id: number; endpoint: Endpoint; uuid: string; tls?: TlsCredentials; timeoutMs?: number; keepaliveTimeoutMs?: number }
  /**
   * The blocks to serve requests from, posted once before the channel is first dialled (so
   * nothing of it runs at switchover). Requests come only once postcopy runs.
   */
  | { type: 'serve'; blocks: ServeBlock[] }
  /** A request that came on the main channel's return path (already validated). */
  | { type: 'request'; block: number; first: number; end: number }
  /** Send a PING on the channel; answered by pong once the destination answered. */
  | { type: 'ping'; id: number }
  /** Close the channel, telling the destination `reason` (with its code) if given. */
  | { type: 'drop'; reason?: { message: string; code?: string } };

/** Preempt thread → main thread. */
export type PreemptOut =
  /** How the kernel schedules the thread, posted once as it starts. */
  | { type: 'scheduling'; scheduling: ThreadScheduling }
  | { type: 'connected'; id: number; label: string }
  | { type: 'connect-failed'; id: number; message: string }
  /**
   * One request served: the ranges sent (block, first, end triples), with their page and
   * byte counts; `onChannel`: the request came on the preempt channel (not forwarded).
   */
  | { type: 'sent'; conn: number; onChannel: boolean; ranges: Float64Array; pages: number; bytes: number }
  | { type: 'pong'; id: number; error?: string }
  /** Connection `conn` closed (peer gone, bad frame, keepalive) or was dropped. */
  | { type: 'closed'; conn: number; message: string }
  | { type: 'error'; message: string };
