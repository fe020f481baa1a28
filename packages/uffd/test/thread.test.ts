/**
 * thread.test.ts — the calling thread as the kernel sees it: its id and its scheduler slice.
 * Slices are changed in a worker of their own, never on the test runner's thread.
 */
import { Worker } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { gettid } from '@livemig/uffd';

const UFFD = new URL('../dist/index.js', import.meta.url).href;

/** Runs `body` (an async function of the package) in a fresh worker and returns what it posts. */
function inWorker<T>(body: string): Promise<T> {
  const code = `
    const { parentPort } = require('node:worker_threads');
    const { readFileSync } = require('node:fs');
    const slice = () => Number(/^se\\.slice\\s*:\\s*(\\d+)/m.exec(readFileSync('/proc/thread-self/sched', 'utf8'))[1]);
    import(${JSON.stringify(UFFD)}).then(async (u) => parentPort.postMessage(await (${body})(u, slice)));
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
});
