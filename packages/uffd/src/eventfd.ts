/**
 * eventfd.ts — owns eventfd(2) counters: the cheap cross-thread doorbell a fault-handler
 * worker polls next to its userfaultfd (to be told to stop or that work is queued) and that
 * `watchFd` can watch on the main loop. Signal and drain reuse one preallocated 8-byte buffer.
 */
import { c, errno } from './libc.js';
import { SyscallError, errnoValue } from './errors.js';
import { Struct } from './struct.js';

export const EFD_SEMAPHORE = 0x1;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

const EAGAIN = errnoValue('EAGAIN');

export interface EventfdOptions {
  /** Reads return EAGAIN instead of blocking when the counter is zero. Default true. */
  nonblock?: boolean;
  /** Each read takes 1 from the counter instead of all of it. Default false. */
  semaphore?: boolean;
}

export class EventFd {
  private fdValue: number;
  private readonly owned: boolean;
  private readonly cell = new Struct(8);

  /** @internal use createEventfd / EventFd.fromFd */
  constructor(fd: number, owned: boolean) {
    this.fdValue = fd;
    this.owned = owned;
  }

  /** Wraps an eventfd created elsewhere in this process (e.g. by the main thread, used in a worker). */
  static fromFd(fd: number, opts: { owned?: boolean } = {}): EventFd {
    return new EventFd(fd, opts.owned ?? false);
  }

  /** The descriptor (-1 after close). */
  get fd(): number {
    return this.fdValue;
  }

  /** Adds `n` (default 1) to the counter, waking pollers. */
  signal(n = 1): void {
    this.cell.set64(0, n);
    if (c.write(this.fdValue, this.cell.buf, 8) !== 8) throw new SyscallError('write', errno(), `eventfd ${this.fdValue}`);
  }

  /**
   * Reads the counter (resetting it, or taking 1 in semaphore mode). Returns 0 when it was zero
   * (non-blocking eventfd); a blocking eventfd waits instead.
   */
  drain(): number {
    if (c.read(this.fdValue, this.cell.buf, 8) !== 8) {
      const e = errno();
      if (e === EAGAIN) return 0;
      throw new SyscallError('read', e, `eventfd ${this.fdValue}`);
    }
    return this.cell.getU64(0);
  }

  /** Closes the descriptor if this object owns it; otherwise only forgets it. Idempotent. */
  close(): void {
    const fd = this.fdValue;
    if (fd < 0) return;
    this.fdValue = -1;
    if (this.owned && c.close(fd) !== 0) throw new SyscallError('close', errno(), `eventfd ${fd}`);
  }
}

/** eventfd(init, EFD_CLOEXEC | …). */
export function createEventfd(init = 0, opts: EventfdOptions = {}): EventFd {
  const flags = EFD_CLOEXEC | ((opts.nonblock ?? true) ? EFD_NONBLOCK : 0) | (opts.semaphore ? EFD_SEMAPHORE : 0);
  const fd = c.eventfd(init, flags);
  if (fd < 0) throw new SyscallError('eventfd', errno(), `initial value ${init}`);
  return new EventFd(fd, true);
}
