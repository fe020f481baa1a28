/**
 * place-worker.ts — the destination's placing thread (a worker). It takes runs of received
 * pages from the job ring the main thread fills (place-thread.ts), in order, and places each
 * with `placePages` (page-placer.ts): UFFDIO_COPY for missing pages straight from the main
 * channel's read ring, where the payload still lies; a present page overwritten in precopy,
 * dropped in postcopy. It writes each job's counts back into its slot, publishes how many jobs
 * are done, and tells the main thread which requested pages it placed (postcopy latency and
 * blocktime), with the time. It sleeps in Atomics.wait when there is nothing to do: it has no
 * event loop to keep responsive. It writes guest RAM only by ioctl, or into pages the kernel
 * says are present.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { Userfaultfd } from '@livemig/uffd';
import { placePages, type PlaceCounts, type RunTarget } from './page-placer.js';
import {
  CTRL_BELL,
  CTRL_DONE,
  CTRL_ENQUEUED,
  CTRL_STOP,
  JOB_BLOCK,
  JOB_COPIED,
  JOB_COUNT,
  JOB_FIELDS,
  JOB_FIRST,
  JOB_FRESH,
  JOB_OVERWRITTEN,
  JOB_POSTCOPY,
  JOB_SRC,
  JOB_SLOTS,
  type PlaceWorkerData,
} from './place-jobs.js';

function run(data: PlaceWorkerData): void {
  const uffd = Userfaultfd.fromFd(data.uffdFd, data.features);
  const ctrl = new Int32Array(data.ctrl);
  const jobs = new Float64Array(data.jobs);
  const blocks: RunTarget[] = data.blocks.map((b) => ({ name: b.name, addr: b.addr, pageSize: b.pageSize, state: new Uint8Array(b.state) }));
  const counts: PlaceCounts = { copied: 0, overwritten: 0, fresh: 0 };
  let placed: number[] = [];
  let bi = 0;
  const requested = (page: number): void => {
    placed.push(bi, page, Number(process.hrtime.bigint() / 1000n));
  };
  let done = 0;
  parentPort!.postMessage({ type: 'ready' });
  for (;;) {
    // The bell rings on every job and on stop: read it before looking, so that a ring after
    // the look ends the wait at once.
    const bell = Atomics.load(ctrl, CTRL_BELL);
    if (Atomics.load(ctrl, CTRL_ENQUEUED) === done) {
      if (Atomics.load(ctrl, CTRL_STOP) !== 0) break;
      Atomics.wait(ctrl, CTRL_BELL, bell);
      continue;
    }
    const j = (done % JOB_SLOTS) * JOB_FIELDS;
    bi = jobs[j + JOB_BLOCK]!;
    const first = jobs[j + JOB_FIRST]!;
    counts.copied = counts.overwritten = counts.fresh = 0;
    placePages(uffd, blocks[bi]!, first, first + jobs[j + JOB_COUNT]!, jobs[j + JOB_SRC]!, jobs[j + JOB_POSTCOPY] !== 0, counts, requested);
    jobs[j + JOB_COPIED] = counts.copied;
    jobs[j + JOB_OVERWRITTEN] = counts.overwritten;
    jobs[j + JOB_FRESH] = counts.fresh;
    done++;
    Atomics.store(ctrl, CTRL_DONE, done);
    Atomics.notify(ctrl, CTRL_DONE);
    if (placed.length > 0) {
      parentPort!.postMessage({ type: 'placed', placed: Float64Array.from(placed) });
      placed = [];
    }
  }
  parentPort!.postMessage({ type: 'stopped' });
}

if (!isMainThread) {
  try {
    run(workerData as PlaceWorkerData);
  } catch (e) {
    parentPort!.postMessage({ type: 'error', message: (e as Error).message });
  }
}
