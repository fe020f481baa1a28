/**
 * preempt-thread.ts — owns the source's preempt thread from the main thread's side: starts the
 * worker (preempt-worker.ts), hands it the blocks, asks it to dial the preempt channel (again
 * after a recovery), forwards the requests that come on the return path, and
 * turns its reports into events: pages it sent, its channel closing.
 */
import { Worker } from 'node:worker_threads';
import { bufferAddress, type ThreadScheduling } from '@livemig/uffd';
import { ChannelClosedError, type Endpoint, type TlsCredentials } from '@livemig/transport';
import type { PreemptIn, PreemptOut, PreemptWorkerData } from './preempt-messages.js';
import type { PageBitmap } from './page-bitmap.js';

export interface PreemptThreadEvents {
  /**
   * The thread served one request: `ranges` holds (block, first, end) triples of the pages it
   * sent; `onChannel`: the request came on the preempt channel.
   */
  sent(ranges: Float64Array, onChannel: boolean, pages: number, bytes: number): void;
  /** The channel closed by itself (peer gone, bad frame, dead link), not through `drop`. */
  closed(err: Error): void;
  /** The thread failed: the migration cannot go on with it. */
  fatal(err: Error): void;
}

export interface PreemptThreadOptions {
  /**
   * Run the thread realtime (SCHED_FIFO, lowest priority; see `requestRealtime`): it answers
   * a request at once even while every CPU is busy. Falls back to a short scheduler slice
   * where the kernel refuses. Default false: a short slice.
   */
  realtime?: boolean;
}

export interface PreemptConnectOptions {
  endpoint: Endpoint;
  uuid: string;
  tls?: TlsCredentials;
  timeoutMs?: number;
  keepaliveTimeoutMs?: number;
}

/** A block the thread serves from. */
export interface PreemptServeBlock {
  name: string;
  pageSize: number;
  pages: number;
  buffer: Buffer;
  populated: PageBitmap;
  dirty: PageBitmap;
}

export class PreemptThread {
  private readonly worker: Worker;
  private readonly events: PreemptThreadEvents;
  /** Id of the latest connection asked for. */
  private conn = 0;
  /** The latest connection is up (and not dropped). */
  private up = false;
  private readonly connects = new Map<number, { resolve: (label: string) => void; reject: (e: Error) => void }>();
  private readonly pings = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private pingId = 0;
  private ended = false;
  private readonly exited: Promise<void>;
  /** How the kernel schedules the thread, once it has started (null before). */
  scheduling: ThreadScheduling | null = null;

  /** Starts the thread now; it boots (~0.1 s of CPU here) while the migration sets up. */
  constructor(events: PreemptThreadEvents, opts: PreemptThreadOptions = {}) {
    this.events = events;
    const data: PreemptWorkerData = { realtime: opts.realtime ?? false };
    this.worker = new Worker(new URL('./preempt-worker.js', import.meta.url), { workerData: data });
    this.worker.on('message', (m: PreemptOut) => this.onMessage(m));
    this.worker.on('error', (e) => this.fail(new Error(`preempt thread failed: ${e.message}`)));
    this.exited = new Promise((resolve) =>
      this.worker.once('exit', () => {
        this.ended = true;
        this.up = false;
        this.rejectAll(new Error('the preempt thread has ended'));
        resolve();
      }),
    );
  }

  /** True while the channel is up: requests go to the thread. */
  get ready(): boolean {
    return this.up;
  }

  /** Dials the preempt channel (replacing any earlier one); resolves with its label. */
  connect(opts: PreemptConnectOptions): Promise<string> {
    if (this.ended) return Promise.reject(new Error('the preempt thread has ended'));
    const id = ++this.conn;
    this.up = false;
    return new Promise<string>((resolve, reject) => {
      this.connects.set(id, { resolve, reject });
      this.post({ type: 'connect', id, ...opts });
    });
  }

  /**
   * The blocks requests will be served from, once, before the first `connect`; their
   * `populated` and `dirty` bitmaps must be `shared` and stay the same objects.
   */
  serve(blocks: PreemptServeBlock[]): void {
    this.post({
      type: 'serve',
      blocks: blocks.map((b) => ({
        name: b.name,
        pageSize: b.pageSize,
        pages: b.pages,
        addr: bufferAddress(b.buffer),
        populated: b.populated.shared,
        dirty: b.dirty.shared,
      })),
    });
  }

  /** A request that came on the return path: the thread sends the pages on its channel. */
  request(block: number, first: number, end: number): void {
    this.post({ type: 'request', block, first, end });
  }

  /** Resolves once the destination answered a PING sent on the channel after everything before it. */
  ping(): Promise<void> {
    const id = ++this.pingId;
    return new Promise<void>((resolve, reject) => {
      this.pings.set(id, { resolve, reject });
      this.post({ type: 'ping', id });
    });
  }

  /** Closes the channel (telling the destination `reason`, with its code); no `closed` event follows. */
  drop(reason?: Error): void {
    this.up = false;
    this.rejectPings('the preempt channel was dropped');
    const code = (reason as { code?: string } | undefined)?.code;
    this.post({ type: 'drop', ...(reason ? { reason: { message: reason.message, ...(code ? { code } : {}) } } : {}) });
  }

  /** Closes the channel and ends the thread. */
  async end(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      this.up = false;
      this.rejectAll(new Error('the preempt thread has ended'));
      await this.worker.terminate();
    }
    await this.exited;
  }

  private post(m: PreemptIn): void {
    if (!this.ended) this.worker.postMessage(m);
  }

  private onMessage(m: PreemptOut): void {
    switch (m.type) {
      case 'scheduling':
        this.scheduling = m.scheduling;
        return;
      case 'connected': {
        const w = this.connects.get(m.id);
        this.connects.delete(m.id);
        if (m.id === this.conn) this.up = true;
        w?.resolve(m.label);
        return;
      }
      case 'connect-failed': {
        const w = this.connects.get(m.id);
        this.connects.delete(m.id);
        w?.reject(new Error(m.message));
        return;
      }
      case 'sent':
        // Pages sent on a connection that is gone (or dropped) may have been lost with it:
        // they stay to send (recovery marks every page the destination lacks anyway; this
        // closes the race with a report still on its way).
        if (m.conn !== this.conn || !this.up) return;
        this.events.sent(m.ranges, m.onChannel, m.pages, m.bytes);
        return;
      case 'pong': {
        const w = this.pings.get(m.id);
        this.pings.delete(m.id);
        if (m.error) w?.reject(new ChannelClosedError('preempt channel', m.error));
        else w?.resolve();
        return;
      }
      case 'closed':
        if (m.conn !== this.conn || !this.up) return; // an older connection, or dropped on purpose
        this.up = false;
        this.rejectPings(m.message);
        this.events.closed(new Error(m.message));
        return;
      case 'error':
        this.fail(new Error(`preempt thread failed: ${m.message}`));
        return;
    }
  }

  private fail(err: Error): void {
    this.up = false;
    this.rejectAll(err);
    this.events.fatal(err);
  }

  private rejectPings(why: string): void {
    for (const w of this.pings.values()) w.reject(new ChannelClosedError('preempt channel', why));
    this.pings.clear();
  }

  private rejectAll(err: Error): void {
    for (const w of this.connects.values()) w.reject(err);
    this.connects.clear();
    for (const w of this.pings.values()) w.reject(err);
    this.pings.clear();
  }
}
