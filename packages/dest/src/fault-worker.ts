/**
 * fault-worker.ts — the destination's fault thread (a worker). It blocks in poll() on the
 * userfaultfd and a stop eventfd, reads fault messages in batches and, for each vCPU fault on
 * a page:
 *   - already present (a racing placement woke the thread): UFFDIO_WAKE, nothing else;
 *   - known zero (sent as a zero page, left unmapped): fills it with zeros itself, no request,
 *     and with it every other known-zero page of the same 2 MiB window (a guest that touches
 *     one page of a zero area touches its neighbours next: one fault instead of 512);
 *   - missing: marks it requested in the shared page-state array and reports it as new (with
 *     preempt, it sends the request on the preempt channel itself first);
 *   - already requested: reports it as a duplicate (for blocktime), no second request.
 * Reports go to the main thread in one message per read batch. Without preempt the thread
 * blocks in poll(); with preempt it runs an event loop that also drives the preempt channel
 * (preempt-channel.ts), asking to run promptly when it wakes (promptScheduling: realtime when
 * the user chose it and the kernel allows, else a short scheduler slice). This thread never
 * touches guest RAM: it reads fault messages and the page-state arrays, and places pages only
 * by ioctl.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  EventFd,
  promptScheduling,
  type ThreadScheduling,
  FdWaiter,
  watchFd,
  UFFD_EVENT_PAGEFAULT,
  UFFD_MSG_SIZE,
  Userfaultfd,
  faultAddress,
  faultTid,
  msgEvent,
} from '@livemig/uffd';

import { mapZeroPages } from './page-placer.js';
import {
  FAULT_DUPLICATE,
  FAULT_FIELDS,
  FAULT_LOCAL_ZERO,
  FAULT_NEW,
  FAULT_NEW_SENT,
  FAULT_OUTSIDE,
  type FaultWorkerData,
  type PreemptAttachMessage,
  type PreemptDropMessage,
} from './fault-messages.js';
import type { PreemptEndpoint as PreemptEndpointClass } from './preempt-channel.js';

const MISSING = 0;
const PRESENT = 1;
const REQUESTED = 2;
const ZERO = 3;

/** Pages in the window filled at once around a fault on a known-zero page. */
const ZERO_WINDOW_BYTES = 2 * 1024 * 1024;

/**
 * Fills every known-zero page in the aligned window around `page` with zeros (claiming
 * each by compare-and-swap, so the main thread and this thread never both place one).
 */
function mapZeroWindow(uffd: Userfaultfd, b: { name: string; addr: number; pageSize: number; states: Uint8Array }, page: number): void {
  const per = Math.max(1, Math.floor(ZERO_WINDOW_BYTES / b.pageSize));
  const first = Math.floor(page / per) * per;
  const end = Math.min(b.states.length, first + per);
  let p = first;
  while (p < end) {
    if (Atomics.compareExchange(b.states, p, ZERO, PRESENT) !== ZERO) {
      p++;
      continue;
    }
    let q = p + 1;
    while (q < end && Atomics.compareExchange(b.states, q, ZERO, PRESENT) === ZERO) q++;
    mapZeroPages(uffd, b.name, b.addr, b.pageSize, p, q);
    p = q;
  }
}

/** One read batch of fault messages, classified; `request` asks for a new page itself when it can. */
class FaultReader {
  readonly buf = new Uint8Array(UFFD_MSG_SIZE * 128);
  private readonly uffd: Userfaultfd;
  private readonly blocks: Array<{ name: string; addr: number; end: number; pageSize: number; states: Uint8Array }>;
  /** Sends a request on the preempt channel; false when there is none (the main thread asks). */
  request: (bi: number, page: number) => boolean = () => false;

  constructor(uffd: Userfaultfd, data: FaultWorkerData) {
    this.uffd = uffd;
    this.blocks = data.blocks.map((b) => ({ ...b, end: b.addr + b.length, states: new Uint8Array(b.state) }));
  }

  /** Reads and handles one batch; false when there was nothing to read (EAGAIN). */
  readBatch(): boolean {
    const n = this.uffd.readRaw(this.buf);
    if (n <= 0) return false; // EAGAIN: a racing UFFDIO_COPY already woke the thread
    this.handle(n);
    return true;
  }

  private handle(n: number): void {
    const { buf, blocks, uffd } = this;
    const out = new Float64Array(n * FAULT_FIELDS);
    let k = 0;
    const t = Number(process.hrtime.bigint() / 1000n);
    for (let i = 0; i < n; i++) {
      if (msgEvent(buf, i) !== UFFD_EVENT_PAGEFAULT) continue;
      const addr = faultAddress(buf, i);
      const tid = faultTid(buf, i);
      let bi = -1;
      for (let j = 0; j < blocks.length; j++) {
        if (addr >= blocks[j]!.addr && addr < blocks[j]!.end) {
          bi = j;
          break;
        }
      }
      if (bi < 0) {
        out[k++] = FAULT_OUTSIDE;
        out[k++] = addr;
        out[k++] = tid;
        out[k++] = t;
        out[k++] = 0;
        out[k++] = 0;
        continue;
      }
      const b = blocks[bi]!;
      const page = Math.floor((addr - b.addr) / b.pageSize);
      const prev = Atomics.compareExchange(b.states, page, MISSING, REQUESTED);
      if (prev === PRESENT) {
        uffd.wake(b.addr + page * b.pageSize, b.pageSize);
        continue;
      }
      if (prev === ZERO) {
        mapZeroWindow(uffd, b, page);
        out[k++] = bi;
        out[k++] = page;
        out[k++] = tid;
        out[k++] = t;
        out[k++] = FAULT_LOCAL_ZERO;
        out[k++] = Number(process.hrtime.bigint() / 1000n);
        continue;
      }
      out[k++] = bi;
      out[k++] = page;
      out[k++] = tid;
      out[k++] = t;
      out[k++] = prev === REQUESTED ? FAULT_DUPLICATE : this.request(bi, page) ? FAULT_NEW_SENT : FAULT_NEW;
      out[k++] = 0;
    }
    if (k > 0) parentPort!.postMessage({ type: 'faults', faults: k === out.length ? out : out.slice(0, k) });
  }
}

/** Without preempt: block in poll() on the userfaultfd and the stop eventfd; the main thread sends requests. */
function runBlocking(data: FaultWorkerData): void {
  const uffd = Userfaultfd.fromFd(data.uffdFd, data.features);
  const stop = EventFd.fromFd(data.stopFd);
  const reader = new FaultReader(uffd, data);
  const waiter = new FdWaiter([data.uffdFd, data.stopFd]);
  for (;;) {
    const ready = waiter.wait(-1);
    if (ready & 2) {
      stop.drain();
      parentPort!.postMessage({ type: 'stopped', preempt: null });
      return;
    }
    if (ready & 1) reader.readBatch();
  }
}

/**
 * With preempt: an event loop watches the userfaultfd and the stop eventfd (uv_poll) and
 * drives the preempt channel's socket; a new fault's request leaves on the preempt channel
 * from here, without a hop through the main thread.
 */
async function runLoop(data: FaultWorkerData, scheduling: ThreadScheduling): Promise<void> {
  // Loaded only in preempt mode: the channel code (transport, TLS) stays out of the common path.
  const { PreemptEndpoint } = (await import('./preempt-channel.js')) as { PreemptEndpoint: typeof PreemptEndpointClass };
  const uffd = Userfaultfd.fromFd(data.uffdFd, data.features);
  const stop = EventFd.fromFd(data.stopFd);
  const reader = new FaultReader(uffd, data);
  const blocks = data.blocks.map((b) => ({ name: b.name, addr: b.addr, length: b.length, pageSize: b.pageSize, states: new Uint8Array(b.state) }));
  let placed: number[] = [];
  const flushPlaced = (): void => {
    if (placed.length === 0) return;
    parentPort!.postMessage({ type: 'placed', placed: Float64Array.from(placed) });
    placed = [];
  };
  const preempt = new PreemptEndpoint(uffd, blocks, new Int32Array(data.received), {
    placed: (bi, page, t) => {
      if (placed.length === 0) queueMicrotask(flushPlaced);
      placed.push(bi, page, t);
    },
    closed: (err) => parentPort!.postMessage({ type: 'preempt-closed', message: err.message }),
  });
  reader.request = (bi, page) => {
    if (!preempt.ready) return false;
    preempt.request(bi, page);
    return true;
  };
  // An exception thrown in a uv_poll callback would not reach the worker's 'error' event:
  // report it to the main thread (fatal there) and stop watching.
  const fail = (e: unknown): void => {
    faults.close();
    stopWatch.close();
    parentPort!.postMessage({ type: 'error', message: (e as Error).message ?? String(e) });
  };
  const faults = watchFd(data.uffdFd, (err) => {
    try {
      if (err) throw err;
      while (reader.readBatch());
    } catch (e) {
      fail(e);
    }
  });
  const stopWatch = watchFd(data.stopFd, () => {
    try {
      stop.drain();
      stopWatch.close();
    } catch (e) {
      fail(e);
      return;
    }
    // Frames the source sent on the preempt channel before END are in its receive buffer by
    // now, but this poll round may have woken for the stop alone. One more non-blocking round
    // reads them, so the channel's figures count every page that arrived before the end.
    setImmediate(() =>
      setImmediate(() => {
        try {
          faults.close();
          preempt.close();
          flushPlaced();
          parentPort!.postMessage({ type: 'stopped', preempt: { ...preempt.stats, scheduling } });
          parentPort!.close();
        } catch (e) {
          fail(e);
        }
      }),
    );
  });
  parentPort!.on('message', (m: PreemptAttachMessage | PreemptDropMessage) => {
    if (m.type === 'preempt-drop') {
      preempt.close();
      return;
    }
    if (m.type !== 'preempt') return;
    preempt.attach(m.fd, m.uuid, m.accept).then(
      (label) => parentPort!.postMessage({ type: 'preempt-ready', id: m.id, label }),
      (e: Error) => parentPort!.postMessage({ type: 'preempt-failed', id: m.id, message: e.message }),
    );
  });
}

if (!isMainThread) {
  try {
    const data = workerData as FaultWorkerData;
    // With preempt this thread answers a page arriving on its channel in microseconds: ask
    // to run as soon as it wakes, not at the end of a busy thread's slice (request p50 on
    // the random-access guest 144–149 µs with a short slice, 149–179 µs without; median of 5,
    // twice). Realtime (opt-in, both ends), same day: p50 130–169 µs against 163–191, p99
    // 0.7–1.2 ms against 3.1–3.4 ms.
    if (data.preempt) {
      const scheduling = promptScheduling(data.realtime);
      runLoop(data, scheduling).catch((e: Error) => parentPort!.postMessage({ type: 'error', message: e.message }));
    } else runBlocking(data);
  } catch (e) {
    parentPort!.postMessage({ type: 'error', message: (e as Error).message });
  }
}
