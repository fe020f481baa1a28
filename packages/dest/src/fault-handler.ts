/**
 * fault-handler.ts — owns fault handling on the destination during postcopy, on the main
 * thread's side: it starts the fault thread (fault-worker.ts), turns each new vCPU fault into
 * a page request (through the callback the migration gives it), feeds blocktime and latency,
 * and stops the fault thread through an eventfd when every page has arrived.
 */
import { Worker } from 'node:worker_threads';
import { createEventfd, type EventFd, type Userfaultfd } from '@livemig/uffd';
import { FAULT_DUPLICATE, FAULT_FIELDS, FAULT_LOCAL_ZERO, FAULT_OUTSIDE, type FaultWorkerBlock, type FaultWorkerData } from './fault-messages.js';

export interface FaultHandlerBlock extends FaultWorkerBlock {}

export interface FaultEvents {
  /** A vCPU needs a page nobody asked for yet: request it. */
  request(block: number, page: number, tid: number, tUs: number): void;
  /** Another thread faulted on a page already requested. */
  duplicate(block: number, page: number, tid: number, tUs: number): void;
  /** A thread faulted on a known-zero page that the fault thread mapped at `doneUs`. */
  localZero(block: number, page: number, tid: number, tUs: number, doneUs: number): void;
  /** A fault outside every registered block, or the fault thread failed: fatal. */
  fatal(err: Error): void;
}

export class FaultHandler {
  private readonly worker: Worker;
  private readonly stopFd: EventFd;
  private stopped: Promise<void> | null = null;
  private readonly exited: Promise<void>;
  faults = 0;

  constructor(uffd: Userfaultfd, blocks: FaultHandlerBlock[], events: FaultEvents) {
    this.stopFd = createEventfd(0, { nonblock: true });
    const data: FaultWorkerData = { uffdFd: uffd.fd, features: uffd.features, stopFd: this.stopFd.fd, blocks };
    this.worker = new Worker(new URL('./fault-worker.js', import.meta.url), { workerData: data });
    this.worker.on('message', (m: { type: string; faults?: Float64Array; message?: string }) => {
      if (m.type === 'faults') {
        const f = m.faults!;
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
          else events.request(b, f[i + 1]!, f[i + 2]!, f[i + 3]!);
        }
      } else if (m.type === 'error') {
        events.fatal(new Error(`fault thread failed: ${m.message}`));
      }
    });
    this.worker.on('error', (e) => events.fatal(new Error(`fault thread failed: ${e.message}`)));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
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
