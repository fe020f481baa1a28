/** thread.ts — owns the identity of the calling OS thread (`gettid`), as userfaultfd reports it. */
import { c } from './libc.js';

/** The kernel thread id of the calling thread (main thread or worker). */
export function gettid(): number {
  return c.gettid();
}

