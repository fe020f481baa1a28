/**
 * control.ts — owns the vCPU control block: the SharedArrayBuffer words through which the main
 * thread and each vCPU worker agree on running, parking and exiting, and the per-vCPU step
 * counters. One 64-byte line per vCPU (no false sharing between vCPUs):
 *
 *   CMD       written by the main thread: HOLD, RUN, STOP or EXIT. The worker parks on it
 *             (Atomics.wait). HOLD keeps a prepared worker parked before the guest's init.
 *   STATE     written by the worker: STARTING, PREPARED, RUNNING, PARKED or EXITED. The main
 *             thread waits on it with Atomics.waitAsync, so the main event loop never blocks.
 *   DOORBELL  a sequence number bumped by the main thread to wake a vCPU idling in `ctx.idle()`
 *             (host messages, stop requests). Waiting on a sequence loses no wake-up.
 *   TID       the worker's kernel thread id (gettid), written before anything else.
 *   INIT      written by the worker once released: OK after the guest's init returned, FAILED
 *             if it threw (the main thread also writes FAILED when the worker exits before
 *             it stepped), then STEPPING once it took its first step. The main thread waits on
 *             it to acknowledge a start.
 *
 * Step counters live in a second SharedArrayBuffer of 64-bit integers, one line per vCPU,
 * with two timestamps beside them (CLOCK_MONOTONIC µs, written by the worker, 0 = not yet):
 *
 *   STEPPING_SINCE  when the worker, released, took its first step (the guest runs on it);
 *   PARKED_AT       when it parked at its latest stop (the guest no longer runs on it).
 *
 * They time the guest's pause on the vCPUs themselves: the main thread learns of a park or a
 * start only when its event loop next runs, up to a scheduler slice later on a busy host.
 */
import { monotonicOffsetMs } from '@livemig/uffd/clock';

export const CMD = 0;
export const STATE = 1;
export const DOORBELL = 2;
export const TID = 3;
export const INIT = 4;

/** Int32 words per vCPU (64 bytes). */
export const CONTROL_STRIDE = 16;
/** BigInt64 words per vCPU in the progress buffer (64 bytes). */
export const PROGRESS_STRIDE = 8;

export const Cmd = { RUN: 0, STOP: 1, EXIT: 2, HOLD: 3 } as const;
export const State = { STARTING: 0, RUNNING: 1, PARKED: 2, EXITED: 3, PREPARED: 4 } as const;
/** INIT: PENDING → OK (init returned) → STEPPING (first step taken); FAILED instead of either. */
export const Init = { PENDING: 0, OK: 1, FAILED: 2, STEPPING: 3 } as const;

/** Slots of the 64-bit line (after the step counter at 0). */
export const STEPPING_SINCE = 1;
export const PARKED_AT = 2;

/** The shared buffers of one machine's vCPUs. */
export interface ControlBuffers {
  control: SharedArrayBuffer;
  progress: SharedArrayBuffer;
}

export function createControlBuffers(vcpus: number): ControlBuffers {
  return {
    control: new SharedArrayBuffer(vcpus * CONTROL_STRIDE * 4),
    progress: new SharedArrayBuffer(vcpus * PROGRESS_STRIDE * 8),
  };
}

/** Typed views of one vCPU's control line and step counter. */
export class ControlLine {
  private readonly words: Int32Array;
  private readonly counter: BigInt64Array;
  private readonly base: number;
  private readonly pbase: number;

  constructor(buffers: ControlBuffers, readonly index: number) {
    this.words = new Int32Array(buffers.control);
    this.counter = new BigInt64Array(buffers.progress);
    this.base = index * CONTROL_STRIDE;
    this.pbase = index * PROGRESS_STRIDE;
  }

  load(word: number): number {
    return Atomics.load(this.words, this.base + word);
  }

  /** Stores a word and wakes every waiter on it. */
  set(word: number, value: number): void {
    Atomics.store(this.words, this.base + word, value);
    Atomics.notify(this.words, this.base + word);
  }

  /** Bumps the doorbell and wakes a vCPU idling on it. */
  ring(): void {
    Atomics.add(this.words, this.base + DOORBELL, 1);
    Atomics.notify(this.words, this.base + DOORBELL);
  }

  /** Blocks the calling (worker) thread while `word` holds `value`, at most `timeoutMs`. */
  waitSync(word: number, value: number, timeoutMs = Infinity): 'ok' | 'not-equal' | 'timed-out' {
    return Atomics.wait(this.words, this.base + word, value, timeoutMs);
  }

  /** Resolves once `word` no longer holds `value` (main thread; never blocks the event loop). */
  async waitChange(word: number, value: number): Promise<number> {
    for (;;) {
      const now = this.load(word);
      if (now !== value) return now;
      const r = Atomics.waitAsync(this.words, this.base + word, value);
      if (r.async) await r.value;
    }
  }

  /** Counts one guest step (worker side). */
  tick(): void {
    Atomics.add(this.counter, this.pbase, 1n);
  }

  steps(): number {
    return Number(Atomics.load(this.counter, this.pbase));
  }

  /** Writes the current CLOCK_MONOTONIC time (µs) in `slot` (worker side). */
  stamp(slot: typeof STEPPING_SINCE | typeof PARKED_AT): void {
    Atomics.store(this.counter, this.pbase + slot, process.hrtime.bigint() / 1000n);
  }

  /** Clears `slot` (main thread, before asking for what sets it). */
  clearStamp(slot: typeof STEPPING_SINCE | typeof PARKED_AT): void {
    Atomics.store(this.counter, this.pbase + slot, 0n);
  }

  /** The time in `slot` on the calling thread's performance.now() timeline, or null if unset. */
  stampedAt(slot: typeof STEPPING_SINCE | typeof PARKED_AT): number | null {
    const us = Atomics.load(this.counter, this.pbase + slot);
    return us === 0n ? null : Number(us) / 1000 - monotonicOffsetMs();
  }
}
