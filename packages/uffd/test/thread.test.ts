/**
 * thread.test.ts — the calling thread as the kernel sees it: its id, its scheduler slice and
 * policy. Scheduling is changed in a worker of their own, never on the test runner's thread.
 */
import { Worker } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { gettid, threadCpuTimes } from '@livemig/uffd';

/** The test runner's thread as /proc says it is scheduled. */
function ownSched(): string {
  return readFileSync('/proc/thread-self/sched', 'utf8').match(/^(policy|prio|se\.slice)\s*:.*$/gm)!.join('\n');
}

const UFFD = new URL('../dist/index.js', import.meta.url).href;

/** Runs `body` (an async function of the package) in a fresh worker and returns what it posts. */
function inWorker<T>(body: string): Promise<T> {
  const code = `
    const { parentPort } = require('node:worker_threads');
    const { readFileSync } = require('node:fs');
    const field = (name) => Number(new RegExp('^' + name + '\\\\s*:\\\\s*(\\\\d+)', 'm').exec(readFileSync('/proc/thread-self/sched', 'utf8'))[1]);
    const slice = () => field('se\\\\.slice');
    const sched = () => ({ policy: field('policy'), prio: field('prio') });
    import(${JSON.stringify(UFFD)}).then(async (u) => parentPort.postMessage(await (${body})(u, slice, sched)));
  `;
  return new Promise<T>((resolve, reject) => {
    const w = new Worker(code, { eval: true });
    w.once('message', (m: T) => {
      resolve(m);
      void w.terminate();
    });
    w.once('error', reject);
  });
}

describe('thread', () => {
  it('gettid on the main thread is the process id', () => {
    expect(gettid()).to.equal(process.pid);
  });

  it('gettid in a worker is a thread id of this process, not the process id', async () => {
    const tid = await inWorker<number>('(u) => u.gettid()');
    expect(tid).to.not.equal(process.pid);
    expect(readFileSync(`/proc/${process.pid}/task/${tid}/comm`, 'utf8').length).to.be.greaterThan(0);
  });

  it('requestShortSlice sets the calling thread\'s scheduler slice (se.slice) to the one asked for', async () => {
    const r = await inWorker<{ ok: boolean; before: number; after: number }>(
      '(u, slice) => { const before = slice(); const ok = u.requestShortSlice(150000); return { ok, before, after: slice() }; }',
    );
    expect(r.ok).to.equal(true);
    expect(r.before).to.not.equal(150000);
    expect(r.after).to.equal(150000);
  });

  it('requestShortSlice changes only the calling thread', async () => {
    const before = readFileSync('/proc/thread-self/sched', 'utf8').match(/^se\.slice\s*:\s*(\d+)/m)![1];
    const r = await inWorker<boolean>('(u) => u.requestShortSlice(120000)');
    expect(r).to.equal(true);
    expect(readFileSync('/proc/thread-self/sched', 'utf8').match(/^se\.slice\s*:\s*(\d+)/m)![1]).to.equal(before);
  });

  it('requestRealtime makes the calling thread SCHED_FIFO at priority 1', async () => {
    const r = await inWorker<{ ok: boolean; before: { policy: number }; after: { policy: number; prio: number } }>(
      '(u, slice, sched) => { const before = sched(); const ok = u.requestRealtime(); return { ok, before, after: sched() }; }',
    );
    expect(r.ok).to.equal(true);
    expect(r.before.policy).to.equal(0);
    expect(r.after.policy).to.equal(1); // SCHED_FIFO
    expect(r.after.prio).to.equal(98); // the kernel's prio for rt_priority 1: 99 - 1
  });

  it('requestRealtime refused (priority out of range) returns false and leaves the thread ordinary', async () => {
    const r = await inWorker<{ ok: boolean; after: { policy: number } }>('(u, slice, sched) => ({ ok: u.requestRealtime(100), after: sched() })');
    expect(r.ok).to.equal(false);
    expect(r.after.policy).to.equal(0);
  });

  it('promptScheduling(true) gets realtime where it is allowed', async () => {
    const r = await inWorker<{ got: string; policy: number }>('(u, slice, sched) => ({ got: u.promptScheduling(true), policy: sched().policy })');
    expect(r).to.deep.equal({ got: 'realtime', policy: 1 });
  });

  it('promptScheduling(false) gets a short slice and stays SCHED_OTHER', async () => {
    const r = await inWorker<{ got: string; policy: number; slice: number }>('(u, slice, sched) => ({ got: u.promptScheduling(false), policy: sched().policy, slice: slice() })');
    expect(r).to.deep.equal({ got: 'short-slice', policy: 0, slice: 100000 });
  });

  it('requestRealtime changes only the calling thread', async () => {
    const before = ownSched();
    expect(await inWorker<boolean>('(u) => u.requestRealtime()')).to.equal(true);
    expect(ownSched()).to.equal(before);
  });

  it('a thread created by a realtime thread starts ordinary (reset on fork)', async () => {
    const r = await inWorker<{ ok: boolean; child: number }>(`async (u) => {
      const ok = u.requestRealtime();
      const { Worker } = require('node:worker_threads');
      const child = await new Promise((resolve, reject) => {
        const w = new Worker("require('node:worker_threads').parentPort.postMessage(Number(/^policy\\\\s*:\\\\s*(\\\\d+)/m.exec(require('node:fs').readFileSync('/proc/thread-self/sched', 'utf8'))[1]))", { eval: true });
        w.once('message', (m) => { resolve(m); void w.terminate(); });
        w.once('error', reject);
      });
      return { ok, child };
    }`);
    expect(r).to.deep.equal({ ok: true, child: 0 });
  });

  describe('threadCpuTimes', () => {
    it('counts the time a busy thread spends on a CPU', () => {
      const before = threadCpuTimes(gettid())!;
      const t0 = performance.now();
      while (performance.now() - t0 < 60) {
        // spin
      }
      const wall = performance.now() - t0;
      const after = threadCpuTimes(gettid())!;
      const run = after.runMs - before.runMs;
      const queued = after.runqueueMs - before.runqueueMs;
      expect(run).to.be.greaterThan(10);
      expect(run + queued).to.be.at.most(wall + 5);
    });

    it('does not count the time a thread sleeps', async () => {
      // A worker says its id, then sleeps in Atomics.wait until told to go on.
      const word = new Int32Array(new SharedArrayBuffer(4));
      const code = `
        const { parentPort, workerData } = require('node:worker_threads');
        import(${JSON.stringify(UFFD)}).then((u) => {
          parentPort.postMessage(u.gettid());
          Atomics.wait(workerData, 0, 0, 10000);
        });
      `;
      const w = new Worker(code, { eval: true, workerData: word });
      try {
        const tid = await new Promise<number>((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
        });
        await new Promise((r) => setTimeout(r, 20)); // into its wait
        const before = threadCpuTimes(tid)!;
        await new Promise((r) => setTimeout(r, 100));
        const after = threadCpuTimes(tid)!;
        expect(after.runMs - before.runMs).to.be.lessThan(5);
        expect(after.runqueueMs - before.runqueueMs).to.be.lessThan(5);
      } finally {
        Atomics.notify(word, 0);
        await w.terminate();
      }
    });

    it('reads another thread of the process by its id', async () => {
      // The worker spins ~40 ms, says its id, then sleeps until it is terminated.
      const code = `
        const { parentPort } = require('node:worker_threads');
        import(${JSON.stringify(UFFD)}).then((u) => {
          const t0 = Date.now();
          while (Date.now() - t0 < 40);
          parentPort.postMessage(u.gettid());
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10000);
        });
      `;
      const w = new Worker(code, { eval: true });
      try {
        const tid = await new Promise<number>((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
        });
        expect(tid).to.not.equal(gettid());
        const times = threadCpuTimes(tid)!;
        expect(times.runMs).to.be.greaterThan(10);
        expect(threadCpuTimes(gettid())!.runMs).to.not.equal(times.runMs);
      } finally {
        await w.terminate();
      }
    });

    it('is null for a thread that does not exist', () => {
      expect(threadCpuTimes(2 ** 30)).to.equal(null);
    });
  });
});
