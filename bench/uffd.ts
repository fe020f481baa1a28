/**
 * bench/uffd.ts — userfaultfd figures on this host: the fault round trip (a worker faults, the
 * handler — another worker blocked in poll(), or the main loop through watchFd — reads the
 * message and places the page with UFFDIO_COPY, the worker resumes), p50/p99; and UFFDIO_COPY
 * throughput at 4 KiB and 1 MiB per ioctl; and placing pages again after a postcopy discard two
 * ways (`placeAfterDiscard`): anonymous memory, dropped with MADV_DONTNEED and placed with
 * UFFDIO_COPY (what the destination does today: each page is allocated again), against a memfd
 * registered for minor faults whose registered view alone is dropped (the page cache keeps the
 * pages), the data written through a second mapping, then UFFDIO_CONTINUE. `runUffdBench()`
 * returns the figures; run this file
 * directly (`npx tsx bench/uffd.ts`, after `npx tsc -b packages/uffd`) to print them.
 */
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import {
  HOST_PAGE_SIZE, Userfaultfd, bufferAddress, createEventfd, createMemfd, faultAddress, mapAnonymous, mapShared, watchFd,
} from '../packages/uffd/dist/index.js';

const PS = HOST_PAGE_SIZE;
const SUPPORT = new URL('../packages/uffd/dist/test-support/', import.meta.url);

export interface LatencyFigures { n: number; p50Us: number; p99Us: number; meanUs: number }
export interface CopyFigures { bytes: number; perCall: number; calls: number; gbPerS: number; usPerCall: number }
export interface PlaceFigures { bytes: number; usPerPage: number; gbPerS: number }
export interface UffdBenchResult {
  faultRoundTrip: { handlerWorker: LatencyFigures; mainLoop: LatencyFigures };
  copy: { '4KiB': CopyFigures; '1MiB': CopyFigures };
  /** Placing every page again after a discard, 1 MiB at a time (see the header). */
  placeAfterDiscard: { anonCopy: PlaceFigures; memfdWriteContinue: PlaceFigures; memfdContinueOnly: PlaceFigures };
}

export interface UffdBenchOptions {
  /** Faults measured per round-trip variant. Default 2000. */
  faults?: number;
  /** Bytes placed per throughput run. Default 256 MiB. */
  copyBytes?: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function latency(ns: number[]): LatencyFigures {
  const us = ns.map((t) => t / 1000).sort((a, b) => a - b);
  return { n: us.length, p50Us: percentile(us, 50), p99Us: percentile(us, 99), meanUs: us.reduce((a, b) => a + b, 0) / us.length };
}

function worker(name: string, workerData: unknown): { w: Worker; next: (type: string) => Promise<any> } {
  const w = new Worker(new URL(`${name}.js`, SUPPORT), { workerData, execArgv: [] });
  const queue: any[] = [];
  const waiting: Array<[string, (m: any) => void]> = [];
  w.on('message', (m) => {
    const i = waiting.findIndex(([t]) => t === m.type);
    if (i >= 0) waiting.splice(i, 1)[0]![1](m);
    else queue.push(m);
  });
  w.on('error', (e) => { throw e; });
  return {
    w,
    next: (type) => {
      const i = queue.findIndex((m) => m.type === type);
      if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
      return new Promise((resolve) => waiting.push([type, resolve]));
    },
  };
}

async function roundTrip(faults: number, handler: 'worker' | 'main'): Promise<LatencyFigures> {
  const m = mapAnonymous(faults * PS, { name: 'bench' });
  const u = new Userfaultfd();
  const stop = createEventfd();
  const src = Buffer.from(new ArrayBuffer(PS));
  src.fill(0x5a);
  const srcAddr = bufferAddress(src);
  let watch: ReturnType<typeof watchFd> | null = null;
  let h: ReturnType<typeof worker> | null = null;
  try {
    u.register(m.addr, m.length, { missing: true }, 'bench');
    if (handler === 'worker') {
      h = worker('handler', { uffdFd: u.fd, features: u.features, stopFd: stop.fd, addr: m.addr, length: m.length, pageSize: PS, mode: 'copy' });
      await h.next('ready');
    } else {
      const msgs = Buffer.from(new ArrayBuffer(32 * 64));
      watch = watchFd(u.fd, () => {
        let n: number;
        while ((n = u.readRaw(msgs)) > 0) for (let i = 0; i < n; i++) u.copy(faultAddress(msgs, i), srcAddr, PS);
      });
    }
    const pages = Array.from({ length: faults }, (_, p) => p);
    const t = worker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages, op: 'read', time: true });
    const done = await t.next('done');
    await t.w.terminate();
    return latency(done.times.slice(Math.min(50, faults >> 4))); // drop warm-up
  } finally {
    watch?.close();
    if (h) {
      stop.signal();
      await h.next('report');
      await h.w.terminate();
    }
    u.close();
    stop.close();
    m.unmap();
  }
}

function copyThroughput(bytes: number, perCall: number): CopyFigures {
  const m = mapAnonymous(bytes, { name: 'copy bench' });
  const u = new Userfaultfd();
  const src = Buffer.from(new ArrayBuffer(1 << 20));
  for (let i = 0; i < src.length; i += 4) src.writeUInt32LE(i * 2654435761 >>> 0, i);
  const srcAddr = bufferAddress(src);
  try {
    u.register(m.addr, m.length, { missing: true }, 'copy bench');
    const run = (): number => {
      const t0 = process.hrtime.bigint();
      for (let off = 0; off < bytes; off += perCall) {
        const n = u.copy(m.addr + off, srcAddr + (off & ((1 << 20) - 1)), perCall, 0, 'copy bench');
        if (n !== perCall) throw new Error(`UFFDIO_COPY placed ${n} of ${perCall} at ${off}`);
      }
      return Number(process.hrtime.bigint() - t0) / 1e9;
    };
    run(); // warm-up (also faults in the page tables)
    m.madvise('dontneed');
    const s = run();
    return { bytes, perCall, calls: bytes / perCall, gbPerS: bytes / s / 1e9, usPerCall: (s * 1e6) / (bytes / perCall) };
  } finally {
    u.close();
    m.unmap();
  }
}

function placeFigures(bytes: number, ns: bigint): PlaceFigures {
  const s = Number(ns) / 1e9;
  return { bytes, usPerPage: (s * 1e6) / (bytes / PS), gbPerS: bytes / s / 1e9 };
}

/** Placing `bytes` again after a discard, anonymous + UFFDIO_COPY against memfd + UFFDIO_CONTINUE. */
function placeAfterDiscard(bytes: number): UffdBenchResult['placeAfterDiscard'] {
  const MiB = 1 << 20;
  const src = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i += PS) src[i] = 7; // one byte a page, like the ab guest
  const srcAddr = bufferAddress(src);
  let anonCopy: PlaceFigures;
  {
    const m = mapAnonymous(bytes, { name: 'anon place bench' });
    const u = new Userfaultfd();
    try {
      u.register(m.addr, bytes, { missing: true }, 'anon place bench');
      for (let o = 0; o < bytes; o += MiB) u.copy(m.addr + o, srcAddr, MiB, 0, 'anon place bench');
      m.madvise('dontneed'); // the discard: the pages are freed
      const t0 = process.hrtime.bigint();
      for (let o = 0; o < bytes; o += MiB) u.copy(m.addr + o, srcAddr, MiB, 0, 'anon place bench');
      anonCopy = placeFigures(bytes, process.hrtime.bigint() - t0);
    } finally {
      u.close();
      m.unmap();
    }
  }
  const m = createMemfd(bytes, { name: 'memfd place bench' });
  const alias = mapShared(m.fd!, bytes, { name: 'memfd place bench alias' });
  const u = new Userfaultfd();
  try {
    const view = Buffer.from(alias.view());
    view.fill(1); // in the page cache
    u.register(m.addr, bytes, { minor: true }, 'memfd place bench');
    m.madvise('dontneed'); // the discard: the registered view's PTEs go, the page cache stays
    let t0 = process.hrtime.bigint();
    for (let o = 0; o < bytes; o += MiB) {
      view.set(src, o);
      u.continue(m.addr + o, MiB, 0, 'memfd place bench');
    }
    const memfdWriteContinue = placeFigures(bytes, process.hrtime.bigint() - t0);
    m.madvise('dontneed');
    t0 = process.hrtime.bigint();
    for (let o = 0; o < bytes; o += MiB) u.continue(m.addr + o, MiB, 0, 'memfd place bench');
    const memfdContinueOnly = placeFigures(bytes, process.hrtime.bigint() - t0);
    return { anonCopy, memfdWriteContinue, memfdContinueOnly };
  } finally {
    u.close();
    alias.unmap();
    m.unmap();
  }
}

export async function runUffdBench(opts: UffdBenchOptions = {}): Promise<UffdBenchResult> {
  const faults = opts.faults ?? 2000;
  const copyBytes = opts.copyBytes ?? 256 << 20;
  const handlerWorker = await roundTrip(faults, 'worker');
  const mainLoop = await roundTrip(faults, 'main');
  return {
    faultRoundTrip: { handlerWorker, mainLoop },
    copy: { '4KiB': copyThroughput(copyBytes, 4096), '1MiB': copyThroughput(copyBytes, 1 << 20) },
    placeAfterDiscard: placeAfterDiscard(copyBytes),
  };
}

/** The placing-after-discard lines of the table. */
export function printPlaceAfterDiscard(p: UffdBenchResult['placeAfterDiscard']): void {
  const line = (what: string, f: PlaceFigures): string => `place after discard, ${what}: ${f.usPerPage.toFixed(2)} µs a page (${f.gbPerS.toFixed(2)} GB/s)`;
  console.log(line('anonymous, UFFDIO_COPY (today)', p.anonCopy));
  console.log(line('memfd, write + UFFDIO_CONTINUE', p.memfdWriteContinue));
  console.log(line('memfd, UFFDIO_CONTINUE only', p.memfdContinueOnly));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await runUffdBench();
  const f = (x: number): string => x.toFixed(1);
  const rt = r.faultRoundTrip;
  console.log(`fault round trip, handler worker in poll(): p50 ${f(rt.handlerWorker.p50Us)} µs, p99 ${f(rt.handlerWorker.p99Us)} µs (n=${rt.handlerWorker.n})`);
  console.log(`fault round trip, handler on main loop (watchFd): p50 ${f(rt.mainLoop.p50Us)} µs, p99 ${f(rt.mainLoop.p99Us)} µs (n=${rt.mainLoop.n})`);
  for (const [k, c] of Object.entries(r.copy)) {
    console.log(`UFFDIO_COPY ${k} per ioctl: ${c.gbPerS.toFixed(2)} GB/s, ${c.usPerCall.toFixed(2)} µs per call (${c.calls} calls)`);
  }
  printPlaceAfterDiscard(r.placeAfterDiscard);
  console.log(JSON.stringify(r));
}
