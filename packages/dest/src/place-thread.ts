/**
 * place-thread.ts — owns the destination's placing thread on the main thread's side: it starts
 * the worker (place-worker.ts), hands it runs of received pages through a ring of job slots in
 * shared memory, retires the jobs it finished (counts back to the placer, payloads let go),
 * says which received bytes are still in use (the main channel's read ring must not overwrite
 * them), and lets the main thread wait until the thread is below a backlog or idle.
 *
 * Why a thread: UFFDIO_COPY is most of the destination's work (a fresh page, and 4 KiB copied
 * into it, for every page). On the main thread it runs between socket reads; on its own thread
 * the main thread reads and decodes the next frames while the pages of the last ones are
 * placed, on the other core.
 */
import { Worker } from 'node:worker_threads';
import type { Userfaultfd } from '@livemig/uffd';
import { bufferAddress } from '@livemig/uffd';
import type { PlaceCounts, PlacerBlock } from './page-placer.js';
import {
  CTRL_BELL,
  CTRL_DONE,
  CTRL_ENQUEUED,
  CTRL_STOP,
  CTRL_WORDS,
  JOB_BLOCK,
  JOB_COPIED,
  JOB_COUNT,
  JOB_FIELDS,
  JOB_FIRST,
  JOB_FRESH,
  JOB_OVERWRITTEN,
  JOB_POSTCOPY,
  JOB_SLOTS,
  JOB_SRC,
  type PlaceWorkerData,
  type PlaceWorkerMessage,
} from './place-jobs.js';

export interface PlaceThreadEvents {
  /** A page a vCPU asked for was placed, at `tUs` (µs, the hrtime clock). */
  placed(block: number, page: number, tUs: number): void;
  /** The thread failed (an ioctl error, or it died): the migration cannot go on. */
  fatal(err: Error): void;
}

/** A job's payload, kept alive (and its bytes held in the read ring) until the job is done. */
interface Held {
  src: Buffer | null;
  /** The channel it came on, and where it begins in that channel's stream. */
  owner: object | null;
  from: number;
  bytes: number;
}

export class PlaceThread {
  /** True once the worker runs; before that the placer places on the main thread. */
  ready = false;
  /** Told of each finished job's counts (the placer adds them to its figures). */
  onRetired: ((c: PlaceCounts) => void) | null = null;
  /** Bytes of page data enqueued and not placed yet. */
  pendingBytes = 0;
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly jobs: Float64Array;
  private readonly held: Held[] = Array.from({ length: JOB_SLOTS }, () => ({ src: null, owner: null, from: 0, bytes: 0 }));
  private readonly counts: PlaceCounts = { copied: 0, overwritten: 0, fresh: 0 };
  private enqueued = 0;
  private retired = 0;
  private failure: Error | null = null;
  private stopping: Promise<void> | null = null;
  private readonly exit: Promise<void>;
  private readonly events: PlaceThreadEvents;

  constructor(uffd: Userfaultfd, blocks: readonly PlacerBlock[], events: PlaceThreadEvents) {
    this.events = events;
    const ctrl = new SharedArrayBuffer(CTRL_WORDS * 4);
    const jobs = new SharedArrayBuffer(JOB_SLOTS * JOB_FIELDS * 8);
    this.ctrl = new Int32Array(ctrl);
    this.jobs = new Float64Array(jobs);
    const data: PlaceWorkerData = {
      uffdFd: uffd.fd,
      features: uffd.features,
      blocks: blocks.map((b) => ({ name: b.name, addr: b.addr, pageSize: b.pageSize, state: b.stateBuffer })),
      ctrl,
      jobs,
    };
    this.worker = new Worker(new URL('./place-worker.js', import.meta.url), { workerData: data });
    this.worker.on('message', (m: PlaceWorkerMessage) => {
      if (m.type === 'ready') this.ready = this.failure === null && this.stopping === null;
      else if (m.type === 'placed') {
        const p = m.placed;
        for (let i = 0; i < p.length; i += 3) events.placed(p[i]!, p[i + 1]!, p[i + 2]!);
      } else if (m.type === 'error') this.fail(new Error(`placing thread failed: ${m.message}`));
    });
    this.worker.on('error', (e) => this.fail(new Error(`placing thread failed: ${e.message}`)));
    this.exit = new Promise((resolve) =>
      this.worker.once('exit', (code) => {
        if (!this.stopping) this.fail(new Error(`placing thread exited (code ${code})`));
        resolve();
      }),
    );
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.ready = false;
    // Waits in whenBelow() end now, not at their next timeout.
    Atomics.notify(this.ctrl, CTRL_DONE);
    this.events.fatal(err);
  }

  /** Jobs enqueued and not retired yet. */
  get pendingJobs(): number {
    this.retire();
    return this.enqueued - this.retired;
  }

  /**
   * Hands the thread pages [first, first + count) of block `bi` to place from `src` (one
   * contiguous Buffer, kept as it is until the job is done), which begins at `streamFrom` in
   * the stream of the channel `owner`. The caller keeps the backlog bounded (`whenBelow`): with every
   * slot taken this throws.
   */
  enqueue(bi: number, first: number, count: number, src: Buffer, owner: object, streamFrom: number, postcopy: boolean): void {
    if (this.failure) throw this.failure;
    if (this.pendingJobs >= JOB_SLOTS) throw new Error(`placing thread: all ${JOB_SLOTS} job slots are taken`);
    const slot = this.enqueued % JOB_SLOTS;
    const j = slot * JOB_FIELDS;
    const jobs = this.jobs;
    jobs[j + JOB_BLOCK] = bi;
    jobs[j + JOB_FIRST] = first;
    jobs[j + JOB_COUNT] = count;
    jobs[j + JOB_SRC] = bufferAddress(src);
    jobs[j + JOB_POSTCOPY] = postcopy ? 1 : 0;
    const h = this.held[slot]!;
    h.src = src;
    h.owner = owner;
    h.from = streamFrom;
    h.bytes = src.length;
    this.pendingBytes += src.length;
    this.enqueued++;
    Atomics.store(this.ctrl, CTRL_ENQUEUED, this.enqueued);
    Atomics.add(this.ctrl, CTRL_BELL, 1);
    Atomics.notify(this.ctrl, CTRL_BELL);
  }

  /** Retires the jobs the thread has finished: their counts to `onRetired`, their payloads let go. */
  retire(): void {
    const done = Atomics.load(this.ctrl, CTRL_DONE);
    if (done === this.retired) return;
    const c = this.counts;
    c.copied = c.overwritten = c.fresh = 0;
    const jobs = this.jobs;
    for (; this.retired < done; this.retired++) {
      const slot = this.retired % JOB_SLOTS;
      const j = slot * JOB_FIELDS;
      c.copied += jobs[j + JOB_COPIED]!;
      c.overwritten += jobs[j + JOB_OVERWRITTEN]!;
      c.fresh += jobs[j + JOB_FRESH]!;
      const h = this.held[slot]!;
      this.pendingBytes -= h.bytes;
      h.src = null;
      h.owner = null;
    }
    this.onRetired?.(c);
  }

  /**
   * Where in the stream of channel `owner` the oldest payload from it still in use begins
   * (Infinity: none). A reconnected channel's stream starts again at 0, while runs from the
   * lost one may still be placed.
   */
  oldestHeld(owner: object): number {
    this.retire();
    for (let i = this.retired; i < this.enqueued; i++) {
      const h = this.held[i % JOB_SLOTS]!;
      if (h.owner === owner) return h.from;
    }
    return Infinity;
  }

  /**
   * Resolves once at most `bytes` of page data and `jobs` jobs are waiting (every job retired
   * for 0); rejects if the thread fails meanwhile.
   */
  async whenBelow(bytes: number, jobs = bytes === 0 ? 0 : JOB_SLOTS / 2): Promise<void> {
    for (;;) {
      if (this.failure) throw this.failure;
      this.retire();
      if (this.pendingBytes <= bytes && this.enqueued - this.retired <= jobs) return;
      const seen = Atomics.load(this.ctrl, CTRL_DONE);
      if (seen !== this.retired) continue;
      // Wakes when the thread finishes a job; the timeout only re-checks for a thread that died.
      const w = Atomics.waitAsync(this.ctrl, CTRL_DONE, seen, 100);
      if (w.async) await w.value;
    }
  }

  /** Resolves when every job enqueued so far is placed. */
  idle(): Promise<void> {
    return this.whenBelow(0, 0);
  }

  /** True while jobs are waiting or being placed. */
  get busy(): boolean {
    return this.pendingJobs > 0;
  }

  /**
   * Stops the thread once it has placed what it was given: resolves when every job is retired
   * and the thread was told to end (it exits by itself a moment later, see `exited`; waiting
   * for that would lengthen the guest's pause). On a failure path, `kill()`.
   */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.ready = false;
      this.stopping = (async () => {
        try {
          if (!this.failure) await this.idle();
        } finally {
          this.ring();
        }
      })();
    }
    return this.stopping;
  }

  /** Resolves when the thread has exited. */
  get exited(): Promise<void> {
    return this.exit;
  }

  /** Ends the thread now, whatever it was doing (the migration failed). */
  async kill(): Promise<void> {
    if (!this.stopping) {
      this.ready = false;
      this.stopping = this.exit;
      this.ring();
      await Promise.race([this.exit, new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
      await this.worker.terminate();
    }
    await this.exit;
  }

  private ring(): void {
    Atomics.store(this.ctrl, CTRL_STOP, 1);
    Atomics.add(this.ctrl, CTRL_BELL, 1);
    Atomics.notify(this.ctrl, CTRL_BELL);
  }
}
