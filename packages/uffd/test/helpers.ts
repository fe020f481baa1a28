/**
 * helpers.ts — test plumbing: start the compiled worker fixtures (dist/test-support), wait for
 * their messages, serve faults on the main loop, and clean up in a safe order (close watches
 * and userfaultfds first, which wakes any blocked worker, then end workers, then unmap).
 */
import { Worker } from 'node:worker_threads';
import {
  type FdWatch, type Mapping, type Userfaultfd, type EventFd, watchFd,
} from '@livemig/uffd';

const SUPPORT = new URL('../dist/test-support/', import.meta.url);

export interface Started<T = unknown> {
  worker: Worker;
  /** Resolves with the next message whose `type` is `type` (buffered). */
  next<M = T>(type: string, timeoutMs?: number): Promise<M>;
  exited: Promise<number>;
}

const closers: Array<() => void> = [];
const workers: Worker[] = [];
const mappings: Mapping[] = [];

export const track = {
  uffd(u: Userfaultfd): Userfaultfd {
    closers.push(() => u.close());
    return u;
  },
  eventfd(e: EventFd): EventFd {
    closers.push(() => e.close());
    return e;
  },
  watch(w: FdWatch): FdWatch {
    closers.push(() => w.close());
    return w;
  },
  mapping<M extends Mapping>(m: M): M {
    mappings.push(m);
    return m;
  },
  fn(f: () => void): void {
    closers.push(f);
  },
};

/** Runs in afterEach: closers (newest first), then workers, then mappings. */
export async function cleanup(): Promise<void> {
  const errors: unknown[] = [];
  for (const f of closers.splice(0).reverse()) {
    try {
      f();
    } catch (e) {
      errors.push(e);
    }
  }
  await Promise.all(workers.splice(0).map((w) => w.terminate()));
  for (const m of mappings.splice(0).reverse()) m.unmap();
  if (errors.length) throw errors[0];
}

export function startWorker<T = unknown>(name: string, workerData: unknown): Started<T> {
  const worker = new Worker(new URL(`${name}.js`, SUPPORT), { workerData, execArgv: [] });
  workers.push(worker);
  const queue: Array<{ type: string }> = [];
  const waiters: Array<{ type: string; resolve: (m: never) => void; reject: (e: Error) => void }> = [];
  let failure: Error | null = null;
  const fail = (e: Error): void => {
    failure = e;
    for (const w of waiters.splice(0)) w.reject(e);
  };
  worker.on('message', (m: { type: string }) => {
    const i = waiters.findIndex((w) => w.type === m.type);
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(m as never);
    else queue.push(m);
  });
  worker.on('error', fail);
  const exited = new Promise<number>((resolve) => worker.on('exit', (code) => {
    fail(new Error(`worker ${name} exited (${code})`));
    resolve(code);
  }));
  return {
    worker,
    exited,
    next<M>(type: string, timeoutMs = 5000): Promise<M> {
      const i = queue.findIndex((m) => m.type === type);
      if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0] as M);
      if (failure) return Promise.reject(failure);
      return new Promise<M>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no '${type}' message from ${name} within ${timeoutMs} ms`)), timeoutMs);
        waiters.push({
          type,
          resolve: (m: never) => { clearTimeout(timer); resolve(m as M); },
          reject: (e: Error) => { clearTimeout(timer); reject(e); },
        });
      });
    },
  };
}

/**
 * Serves a userfaultfd on the main loop: `onMessage(buf, i)` for each message, read without
 * allocating. The watch is closed by cleanup() before the userfaultfd.
 */
export function serveOnLoop(uffd: Userfaultfd, onMessage: (buf: Buffer, i: number) => void): FdWatch {
  const buf = Buffer.from(new ArrayBuffer(32 * 16));
  return track.watch(watchFd(uffd.fd, (err) => {
    if (err) throw err;
    let n: number;
    while ((n = uffd.readRaw(buf)) > 0) for (let i = 0; i < n; i++) onMessage(buf, i);
  }));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
