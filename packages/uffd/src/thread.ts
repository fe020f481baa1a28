/**
 * thread.ts — owns OS-thread identity and scheduling: `gettid` (as userfaultfd reports the
 * faulting thread) and per-thread nice values (a thread id is a valid `who` for
 * setpriority on Linux).
 */
import { c, errno } from './libc.js';
import { SyscallError } from './errors.js';

const PRIO_PROCESS = 0;

/** The kernel thread id of the calling thread (main thread or worker). */
export function gettid(): number {
  return c.gettid();
}

/** Sets the nice value (-20..19) of one thread of this process. */
export function setThreadNice(tid: number, nice: number): void {
  if (c.setpriority(PRIO_PROCESS, tid, nice) !== 0) throw new SyscallError('setpriority', errno(), `thread ${tid}, nice ${nice}`);
}

/** The nice value of one thread of this process. */
export function threadNice(tid: number): number {
  errno();
  const v = c.getpriority(PRIO_PROCESS, tid);
  return v;
}
