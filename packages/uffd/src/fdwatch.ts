/**
 * fdwatch.ts — owns watching a descriptor from the Node event loop: `watchFd` wraps koffi's
 * uv_poll handle (`koffi.node.poll`), so readiness of a userfaultfd or eventfd arrives as a
 * callback on the loop thread without blocking it and without occupying the libuv threadpool.
 *
 * uv_poll is level-triggered: the callback fires again on the next loop turn for as long as the
 * descriptor stays readable, so it must read until EAGAIN (or stop the watch). Close the watch
 * before closing the descriptor, and keep at most one watch per descriptor per thread.
 */
import { koffi } from './libc.js';
import { SyscallError } from './errors.js';

/** What koffi's `node.poll` really returns and calls back with (its d.ts has the callback wrong). */
interface UvPollHandle {
  start(opts: { readable?: boolean; writable?: boolean; disconnect?: boolean }, cb: (status: number, events: PollEvents) => void): void;
  stop(): void;
  close(): void;
  ref(): void;
  unref(): void;
}
interface PollEvents { readable: boolean; writable: boolean; disconnect: boolean }
type NodePoll = (fd: number, opts: { readable?: boolean }, cb: (status: number, events: PollEvents) => void) => UvPollHandle | null;

export interface FdWatch {
  readonly fd: number;
  /** True while the watch is started. */
  readonly active: boolean;
  /** Stops callbacks; `start()` resumes them. */
  stop(): void;
  start(): void;
  /** Stops for good and releases the uv handle. Idempotent. */
  close(): void;
  /** Lets the process exit while the watch is active (`unref`), or not (`ref`, the default). */
  unref(): void;
  ref(): void;
}

export interface WatchOptions {
  /** Start unref'd (the watch alone does not keep the process alive). */
  unref?: boolean;
}

/**
 * Calls `onReadable()` on the event loop whenever `fd` is readable. On a poll error the
 * callback gets a SyscallError (`uv_poll failed: EBADF (fd 12)`) and the watch keeps going
 * unless the callback closes it.
 */
export function watchFd(fd: number, onReadable: (error?: SyscallError) => void, opts: WatchOptions = {}): FdWatch {
  const cb = (status: number, _events: PollEvents): void => {
    if (status < 0) onReadable(new SyscallError('uv_poll', -status, `fd ${fd}`));
    else onReadable();
  };
  const handle = (koffi.node.poll as unknown as NodePoll)(fd, { readable: true }, cb);
  if (!handle) throw new Error(`watchFd: uv_poll could not watch fd ${fd}`);
  if (opts.unref) handle.unref();
  let active = true;
  let closed = false;
  return {
    fd,
    get active() {
      return active;
    },
    stop() {
      if (!active) return;
      handle.stop();
      active = false;
    },
    start() {
      if (closed) throw new Error(`watchFd: watch of fd ${fd} is closed`);
      if (active) return;
      handle.start({ readable: true }, cb);
      active = true;
    },
    close() {
      if (closed) return;
      closed = true;
      active = false;
      handle.close();
    },
    unref() {
      if (!closed) handle.unref();
    },
    ref() {
      if (!closed) handle.ref();
    },
  };
}
