/**
 * fault-handler.ts — owns fault handling on the destination during postcopy, on the main
 * thread's side: it starts the fault thread (fault-worker.ts), turns each new vCPU fault into
 * a page request (through the callback the migration gives it), feeds blocktime and latency,
 * hands the preempt connection to the fault thread when preempt is on, and stops the fault
 * thread through an eventfd when every page has arrived.
 */
import type net from 'node:net';
import { Worker } from 'node:worker_threads';
import { createEventfd, dupFd, type EventFd, type Userfaultfd } from '@livemig/uffd';
import {
  FAULT_DUPLICATE,
  FAULT_FIELDS,
  FAULT_LOCAL_ZERO,
  FAULT_NEW_SENT,
  FAULT_OUTSIDE,
  PLACED_FIELDS,
  type FaultWorkerBlock,
  type FaultWorkerData,
  type FaultWorkerMessage,
  type PreemptAttachMessage,
  type PreemptDropMessage,
  type PreemptStats,
} from './fault-messages.js';

export interface FaultHandlerBlock extends FaultWorkerBlock {}

export interface FaultEvents {
  /**
   * A vCPU needs a page nobody asked for yet: request it (`sent`: the fault thread already
   * requested it on the preempt channel).
   */
  request(block: number, page: number, tid: number, tUs: number, sent: boolean): void;
  /** Another thread faulted on a page already requested. */
  duplicate(block: number, page: number, tid: number, tUs: number): void;
  /** A thread faulted on a known-zero page that the fault thread mapped at `doneUs`. */
  localZero(block: number, page: number, tid: number, tUs: number, doneUs: number): void;
  /** A fault outside every registered block, or the fault thread failed: fatal. */
  fatal(err: Error): void;
  /** Preempt: a requested page was placed from the preempt channel at `tUs`. */
  placed?(block: number, page: number, tUs: number): void;
  /** Preempt: the preempt channel closed while fault handling still ran. */
  preemptClosed?(err: Error): void;
}

export interface FaultHandlerOptions {
  /** The fault thread will own the preempt channel (see `attachPreempt`). */
  preempt?: boolean;
  /**
   * Preempt: run the fault thread as a realtime thread (SCHED_FIFO, lowest priority) so a
   * page arriving on the preempt channel is placed at once even while every CPU is busy;
   * a short scheduler slice where the kernel refuses (see `requestRealtime`). Default false.
   */
  realtime?: boolean;
}

export class FaultHandler {
  private readonly worker: Worker;
  private readonly stopFd: EventFd;
  private stopped: Promise<void> | null = null;
  private readonly exited: Promise<void>;
  /** Preempt handshakes under way in the thread, by attach id. */
  private readonly preemptWaits = new Map<number, { resolve: (label: string) => void; reject: (e: Error) => void }>();
  faults = 0;
  /** Preempt channel figures, once the thread has stopped (null without preempt). */
  preemptStats: PreemptStats | null = null;

  constructor(uffd: Userfaultfd, blocks: FaultHandlerBlock[], events: FaultEvents, opts: FaultHandlerOptions & { received?: Int32Array } = {}) {
    this.stopFd = createEventfd(0, { nonblock: true });
    const data: FaultWorkerData = {
      uffdFd: uffd.fd,
      features: uffd.features,
      stopFd: this.stopFd.fd,
      blocks,
      preempt: opts.preempt ?? false,
      realtime: opts.realtime ?? false,
      received: (opts.received?.buffer as SharedArrayBuffer | undefined) ?? new SharedArrayBuffer(4),
    };
    this.worker = new Worker(new URL('./fault-worker.js', import.meta.url), { workerData: data });
    this.worker.on('message', (m: FaultWorkerMessage) => {
      if (m.type === 'faults') {
        const f = m.faults;
        for (let i = 0; i < f.length; i += FAULT_FIELDS) {
          this.faults++;
          const b = f[i]!;
          if (b === FAULT_OUTSIDE) {
            events.fatal(new Error(`fault at 0x${f[i + 1]!.toString(16)} (thread ${f[i + 2]}) lies outside every RAM block`));
            continue;
          }
          const kind = f[i + 4];
          if (kind === FAULT_DUPLICATE) events.duplicate(b, f[i + 1]!, f[i + 2]!, f[i + 3]!);
          else if (kind === FAULT_LOCAL_ZERO) events.localZero(b, f[i + 1]!, f[i + 2]!, f[i + 3]!, f[i + 5]!);
          else events.request(b, f[i + 1]!, f[i + 2]!, f[i + 3]!, kind === FAULT_NEW_SENT);
        }
      } else if (m.type === 'placed') {
        const p = m.placed;
        for (let i = 0; i < p.length; i += PLACED_FIELDS) events.placed?.(p[i]!, p[i + 1]!, p[i + 2]!);
      } else if (m.type === 'preempt-ready' || m.type === 'preempt-failed') {
        const w = this.preemptWaits.get(m.id);
        this.preemptWaits.delete(m.id);
        if (m.type === 'preempt-ready') w?.resolve(m.label);
        else w?.reject(new Error(m.message));
      } else if (m.type === 'preempt-closed') {
        events.preemptClosed?.(new Error(m.message));
      } else if (m.type === 'stopped') {
        this.preemptStats = m.preempt;
      } else if (m.type === 'error') {
        events.fatal(new Error(`fault thread failed: ${m.message}`));
      }
    });
    this.worker.on('error', (e) => events.fatal(new Error(`fault thread failed: ${e.message}`)));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
  }

  /**
   * Hands an accepted preempt connection (paused, nothing read yet) to the fault thread, which
   * runs its handshake (`accept`: the acceptChannel options, e.g. TLS) and from then on sends
   * page requests on it and places the pages it brings. The socket here is released; the
   * thread owns a duplicate of its descriptor. Resolves with the channel's label.
   */
  attachPreempt(socket: net.Socket, uuid: string, accept: Record<string, unknown> = {}): Promise<string> {
    const handle = (socket as unknown as { _handle?: { fd?: number } })._handle;
    const fd = handle?.fd;
    if (fd === undefined || fd < 0 || this.stopped) {
      socket.destroy();
      return Promise.reject(new Error(this.stopped ? 'preempt connection: fault handling has stopped' : 'preempt connection: no socket descriptor to hand to the fault thread'));
    }
    let dup: number;
    try {
      dup = dupFd(fd, 'preempt connection');
    } catch (e) {
      return Promise.reject(e as Error);
    } finally {
      // Closes this thread's descriptor only; the connection lives on in the duplicate.
      socket.destroy();
    }
    // Several may shake hands at once; the thread takes the first that succeeds and refuses
    // the others.
    const id = ++this.attachId;
    return new Promise<string>((resolve, reject) => {
      this.preemptWaits.set(id, { resolve, reject });
      const msg: PreemptAttachMessage = { type: 'preempt', id, fd: dup, uuid, accept };
      this.worker.postMessage(msg);
    });
  }
  private attachId = 0;

  /** Postcopy recovery: the fault thread closes its preempt channel (a new one may be attached later). */
  dropPreempt(): void {
    for (const w of this.preemptWaits.values()) w.reject(new Error('the migration paused'));
    this.preemptWaits.clear();
    this.worker.postMessage({ type: 'preempt-drop' } satisfies PreemptDropMessage);
  }

  /** Stops the fault thread (through the eventfd) and waits for it to exit. */
  stop(): Promise<void> {
    if (!this.stopped) {
      this.stopFd.signal(1);
      this.stopped = this.exited.then(() => this.stopFd.close());
    }
    return this.stopped;
  }

  /**
   * Stops the thread on a failure path. A worker blocked in poll() cannot be terminated
   * from outside, so it is woken through the eventfd first; terminate() then ends it even if
   * it was busy.
   */
  async kill(): Promise<void> {
    if (!this.stopped) {
      try {
        this.stopFd.signal(1);
      } catch {
        // already closed
      }
      await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
      await this.worker.terminate();
      try {
        this.stopFd.close();
      } catch {
        // already closed
      }
      this.stopped = Promise.resolve();
    }
    await this.stopped;
  }
}
