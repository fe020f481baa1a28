/**
 * thread.ts — owns what the calling OS thread is to the kernel: its id (`gettid`), as
 * userfaultfd reports it, and how promptly the scheduler runs it when it wakes
 * (`requestShortSlice`, `requestRealtime`, and `promptScheduling`, which picks the best the
 * kernel grants), and how its time went so far (`threadCpuTimes`: on a CPU, or runnable and
 * waiting for one).
 */
import { readFileSync } from 'node:fs';
import { c } from './libc.js';

/** sched_setattr(2) on x86_64, like the other syscall numbers here. */
export const SYS_sched_setattr = 314;
/** sizeof(struct sched_attr), SCHED_ATTR_SIZE_VER1. */
const SCHED_ATTR_SIZE = 56;
const SCHED_OTHER = 0;
const SCHED_FIFO = 1;
/** Threads this thread creates start with the default policy, not realtime. */
const SCHED_FLAG_RESET_ON_FORK = 1n;

/** How a thread asked to be run promptly is scheduled: what `promptScheduling` got. */
export type ThreadScheduling = 'realtime' | 'short-slice' | 'default';

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
  return setAttr(SCHED_OTHER, 0n, 0, BigInt(sliceNs));
}

/**
 * Makes the calling thread a realtime thread (SCHED_FIFO, `priority` 1–99, default 1, the
 * lowest): when it wakes it runs at once, ahead of every ordinary thread, and keeps the CPU
 * until it sleeps again. Only for a thread that sleeps on a descriptor and does a bounded
 * amount of work per wake. The kernel still keeps 5% of each second for ordinary threads
 * (sched_rt_runtime_us). Threads it creates start ordinary (SCHED_RESET_ON_FORK). Needs
 * CAP_SYS_NICE or an RLIMIT_RTPRIO allowance; returns false when refused, nothing changed.
 */
export function requestRealtime(priority = 1): boolean {
  return setAttr(SCHED_FIFO, SCHED_FLAG_RESET_ON_FORK, priority, 0n);
}

/**
 * Asks for the most prompt scheduling the kernel grants the calling thread: realtime when
 * `realtime` is set and allowed, else a short slice, else nothing changes. Returns which.
 */
export function promptScheduling(realtime: boolean): ThreadScheduling {
  if (realtime && requestRealtime()) return 'realtime';
  return requestShortSlice() ? 'short-slice' : 'default';
}

function setAttr(policy: number, flags: bigint, priority: number, runtimeNs: bigint): boolean {
  const attr = Buffer.alloc(SCHED_ATTR_SIZE);
  attr.writeUInt32LE(SCHED_ATTR_SIZE, 0); // size
  attr.writeUInt32LE(policy, 4); // sched_policy
  attr.writeBigUInt64LE(flags, 8); // sched_flags
  attr.writeInt32LE(0, 16); // sched_nice
  attr.writeUInt32LE(priority, 20); // sched_priority
  attr.writeBigUInt64LE(runtimeNs, 24); // sched_runtime: the custom slice (SCHED_OTHER)
  return c.syscall3Buf(SYS_sched_setattr, 0, attr, 0) === 0;
}

/** A thread's time as the scheduler accounts it (/proc/PID/task/TID/schedstat), ms since it began. */
export interface ThreadCpuTimes {
  /** Running on a CPU. */
  runMs: number;
  /** Runnable but waiting for a CPU (in a run queue). */
  runqueueMs: number;
}

/**
 * The scheduler's account of thread `tid` of this process (or of `pid`): time on a CPU and
 * time spent runnable in a run queue. What is left of a stretch of wall time is time asleep
 * (blocked, e.g. on a missing page). Null when the thread is gone or the kernel keeps no such
 * account (CONFIG_SCHED_INFO off).
 */
export function threadCpuTimes(tid: number, pid = process.pid): ThreadCpuTimes | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8');
  } catch {
    return null;
  }
  const f = text.trim().split(/\s+/);
  const run = Number(f[0]);
  const wait = Number(f[1]);
  if (f.length < 2 || !Number.isFinite(run) || !Number.isFinite(wait)) return null;
  return { runMs: run / 1e6, runqueueMs: wait / 1e6 };
}
