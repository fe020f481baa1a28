/**
 * thread.ts — owns what the calling OS thread is to the kernel: its id (`gettid`), as
 * userfaultfd reports it, and how promptly the scheduler runs it when it wakes
 * (`requestShortSlice`).
 */
import { c } from './libc.js';

/** sched_setattr(2) on x86_64, like the other syscall numbers here. */
export const SYS_sched_setattr = 314;
/** sizeof(struct sched_attr), SCHED_ATTR_SIZE_VER1. */
const SCHED_ATTR_SIZE = 56;
const SCHED_OTHER = 0;

/** The kernel thread id of the calling thread (main thread or worker). */
export function gettid(): number {
  return c.gettid();
}

/**
 * Asks the scheduler to run the calling thread promptly when it wakes: a short EEVDF slice
 * (sched_setattr with SCHED_OTHER and `sched_runtime`, Linux 6.12+) gives a woken thread an
 * early deadline, so it preempts a thread that is running instead of waiting for the end of
 * that thread's slice (the base slice: 1.4 ms on a 2-CPU host). For a thread that sleeps on
 * a socket and answers in microseconds. Returns false when the kernel refuses (older
 * kernel): nothing changes then.
 */
export function requestShortSlice(sliceNs = 100_000): boolean {
  const attr = Buffer.alloc(SCHED_ATTR_SIZE);
  attr.writeUInt32LE(SCHED_ATTR_SIZE, 0); // size
  attr.writeUInt32LE(SCHED_OTHER, 4); // sched_policy
  attr.writeBigUInt64LE(0n, 8); // sched_flags
  attr.writeInt32LE(0, 16); // sched_nice
  attr.writeUInt32LE(0, 20); // sched_priority
  attr.writeBigUInt64LE(BigInt(sliceNs), 24); // sched_runtime: the custom slice
  return c.syscall3Buf(SYS_sched_setattr, 0, attr, 0) === 0;
}
