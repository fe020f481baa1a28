/**
 * poll.ts — owns synchronous readiness waits with poll(2). These block the calling thread, so
 * they are for worker threads only (on the main thread use `watchFd`). `FdWaiter` is the
 * allocation-free form for a fault-handler thread: it waits on a fixed set of descriptors
 * (typically [userfaultfd, stop eventfd]) with a timeout and says which are ready.
 */
import { c, errno } from './libc.js';
import { SyscallError, errnoValue } from './errors.js';
import { Struct } from './struct.js';

export const POLLIN = 0x1;
export const POLLPRI = 0x2;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;

const EINTR = errnoValue('EINTR');
const POLLFD_SIZE = 8; // struct pollfd { int fd; short events; short revents; }

export interface PollFd {
  fd: number;
  /** POLL* bits to wait for; default POLLIN. */
  events?: number;
}

/**
 * poll(2) on `fds` for up to `timeoutMs` (-1: forever). Returns the revents of each entry, all
 * zero on timeout or when interrupted by a signal. Blocks the calling thread.
 */
export function poll(fds: readonly PollFd[], timeoutMs: number): number[] {
  const buf = Buffer.alloc(fds.length * POLLFD_SIZE);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * POLLFD_SIZE);
    buf.writeInt16LE(p.events ?? POLLIN, i * POLLFD_SIZE + 4);
  });
  const n = c.poll(buf, fds.length, timeoutMs);
  if (n < 0) {
    const e = errno();
    if (e === EINTR) return fds.map(() => 0);
    throw new SyscallError('poll', e, fds.map((p) => `fd ${p.fd}`).join(', '));
  }
  return fds.map((_, i) => buf.readUInt16LE(i * POLLFD_SIZE + 6));
}

/**
 * Blocks in poll(2) on a fixed list of descriptors, reusing one preallocated pollfd array.
 * `wait()` returns a bitmask with bit i set when descriptor i has any revents (readable, error
 * or hang-up); 0 on timeout. It does not own the descriptors.
 */
export class FdWaiter {
  readonly fds: readonly number[];
  private readonly pfd: Struct;
  private readonly events: Int16Array;

  constructor(fds: readonly number[], events = POLLIN) {
    if (fds.length === 0 || fds.length > 31) throw new RangeError(`FdWaiter takes 1 to 31 descriptors, got ${fds.length}`);
    this.fds = [...fds];
    this.pfd = new Struct(fds.length * POLLFD_SIZE);
    this.events = new Int16Array(this.pfd.buf.buffer, this.pfd.buf.byteOffset, fds.length * 4);
    fds.forEach((fd, i) => {
      this.pfd.buf.writeInt32LE(fd, i * POLLFD_SIZE);
      this.events[i * 4 + 2] = events;
    });
  }

  /** Waits up to `timeoutMs` (-1: forever); bit i of the result set when `fds[i]` is ready. */
  wait(timeoutMs: number): number {
    const ev = this.events;
    const count = this.fds.length;
    for (let i = 0; i < count; i++) ev[i * 4 + 3] = 0;
    const n = c.poll(this.pfd.buf, count, timeoutMs);
    if (n <= 0) {
      if (n === 0) return 0;
      const e = errno();
      if (e === EINTR) return 0;
      throw new SyscallError('poll', e, this.fds.map((fd) => `fd ${fd}`).join(', '));
    }
    let mask = 0;
    for (let i = 0; i < count; i++) if (ev[i * 4 + 3] !== 0) mask |= 1 << i;
    return mask;
  }

  /** The revents (POLL* bits) of `fds[i]` from the last `wait()`. */
  revents(i: number): number {
    return this.events[i * 4 + 3]! & 0xffff;
  }
}
