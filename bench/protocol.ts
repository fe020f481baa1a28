// bench/protocol.ts — throughput of @livemig/protocol on 4 KiB page batches.
//
//   encode PAGES     header for N scattered pages + gathering N page views of "RAM"
//   encode PAGE_RUN  header for N contiguous pages + one view
//   decode           FrameDecoder over the stream in 64 KiB chunks (prefix, msgpack
//                    header, validation, zero-copy payload segments)
//   decode+walk      decode plus forEachPageRun over each payload (straddling pages
//                    copied to a bounce buffer) — what the destination does before
//                    UFFDIO_COPY
//
// Each is run for pagesPerFrame-page frames (the goals apply to these) and for
// single-page frames (per-frame overhead, as on the preempt channel).
// Figures are GB/s (1e9 bytes) of page payload on one core, median of `runs`.
// Payload bytes are never copied by the protocol, so these measure framing,
// msgpack headers and validation: the socket and UFFDIO_COPY are not included.
// Run: `npx tsc -b packages/protocol && node --import tsx bench/protocol.ts [--json]`.
import { pathToFileURL } from 'node:url';
import {
  FrameDecoder, MsgType, encodeFrame, forEachPageRun, type Message,
} from '../packages/protocol/dist/index.js';

export interface ProtocolBenchOptions {
  pageSize?: number; // default 4096
  pagesPerFrame?: number; // default 256 (1 MiB frames)
  chunkBytes?: number; // decoder input chunk size, default 64 KiB
  encodeBytes?: number; // payload bytes encoded per call, default 1 GiB (views, not copies)
  streamBytes?: number; // size of the pre-built stream, default 64 MiB
  decodeBytes?: number; // payload bytes decoded per call, default 1 GiB (stream re-fed)
  runs?: number; // default 5
  minMs?: number; // minimum duration of one timed run, default 100
}

export interface ProtocolBenchCase {
  name: string;
  gbps: number; // median
  min: number;
  max: number;
  framesPerSec: number; // at the median
}

export interface ProtocolBenchResult {
  bench: 'protocol';
  pageSize: number;
  pagesPerFrame: number;
  chunkBytes: number;
  runs: number;
  cases: ProtocolBenchCase[];
  goals: { decodeGBps: number; encodeGBps: number };
  ok: boolean; // both goals met by the batch cases (the first four)
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Median of `runs` timed runs; each run repeats fn until it has taken ≥ minMs (so tiny cases are not timer noise). */
function measure(name: string, runs: number, bytesPerCall: number, framesPerCall: number, fn: () => void, minMs = 100): ProtocolBenchCase {
  const t = process.hrtime.bigint();
  fn(); // warm up and calibrate
  const once = Math.max(1e-6, Number(process.hrtime.bigint() - t) / 1e6);
  const reps = Math.max(1, Math.ceil(minMs / once));
  const rates: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < reps; k++) fn();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    rates.push((bytesPerCall * reps) / s / 1e9);
  }
  const gbps = median(rates);
  return { name, gbps, min: Math.min(...rates), max: Math.max(...rates), framesPerSec: (gbps * 1e9 * framesPerCall) / bytesPerCall };
}

export function runProtocolBench(opts: ProtocolBenchOptions = {}): ProtocolBenchResult {
  const pageSize = opts.pageSize ?? 4096;
  const pagesPerFrame = opts.pagesPerFrame ?? 256;
  const chunkBytes = opts.chunkBytes ?? 64 * 1024;
  const runs = opts.runs ?? 5;
  const minMs = opts.minMs ?? 100;
  const ramBytes = 256 * 1024 * 1024;
  const ramPages = ramBytes / pageSize;
  const ram = Buffer.alloc(ramBytes, 0x5a);
  let sink = 0;

  /** The four cases for frames of n pages. */
  function cases(n: number, suffix: string): ProtocolBenchCase[] {
    const frameBytes = n * pageSize;
    const maxFrames = 16384; // bounds the work per call for small frames
    // scattered page offsets (every 3rd page, wrapping), one array per frame slot
    const slots = 64;
    const offsetSets = Array.from({ length: slots }, (_, s) =>
      Array.from({ length: n }, (_, i) => (((s * n + i) * 3) % ramPages) * pageSize));

    // ---- encode -----------------------------------------------------------
    const encFrames = Math.max(1, Math.min(maxFrames, Math.floor((opts.encodeBytes ?? 1024 ** 3) / frameBytes)));
    const encPages = measure(`encode PAGES${suffix}`, runs, encFrames * frameBytes, encFrames, () => {
      for (let f = 0; f < encFrames; f++) {
        const offsets = offsetSets[f % slots]!;
        const views: Buffer[] = new Array(n);
        for (let i = 0; i < n; i++) views[i] = ram.subarray(offsets[i]!, offsets[i]! + pageSize);
        const msg: Message = { type: MsgType.PAGES, block: 'ram0', pageSize, offsets };
        sink += encodeFrame(msg, views).length;
      }
    }, minMs);
    const encRun = measure(`encode PAGE_RUN${suffix}`, runs, encFrames * frameBytes, encFrames, () => {
      for (let f = 0; f < encFrames; f++) {
        const offset = ((f * n) % (ramPages - n)) * pageSize;
        const msg: Message = { type: MsgType.PAGE_RUN, block: 'ram0', pageSize, offset, count: n };
        sink += encodeFrame(msg, ram.subarray(offset, offset + frameBytes)).length;
      }
    }, minMs);

    // ---- decode -----------------------------------------------------------
    const streamFrames = Math.max(1, Math.min(maxFrames, Math.floor((opts.streamBytes ?? 64 * 1024 * 1024) / frameBytes)));
    const parts: Buffer[] = [];
    for (let f = 0; f < streamFrames; f++) {
      const offsets = offsetSets[f % slots]!;
      parts.push(...encodeFrame({ type: MsgType.PAGES, block: 'ram0', pageSize, offsets }, ram.subarray(0, frameBytes)));
    }
    const stream = Buffer.concat(parts);
    // separate chunk buffers, as a socket delivers them
    const chunks: Buffer[] = [];
    for (let at = 0; at < stream.length; at += chunkBytes) chunks.push(Buffer.from(stream.subarray(at, at + chunkBytes)));
    const repeats = Math.max(1, Math.round((opts.decodeBytes ?? 1024 ** 3) / (streamFrames * frameBytes) / (n < 16 ? 16 : 1)));
    const decBytes = repeats * streamFrames * frameBytes;
    const decFrames = repeats * streamFrames;

    const dec = measure(`decode${suffix}`, runs, decBytes, decFrames, () => {
      const d = new FrameDecoder();
      let frames = 0;
      for (let r = 0; r < repeats; r++) {
        for (let i = 0; i < chunks.length; i++) {
          d.push(chunks[i]!);
          for (let fr = d.next(); fr !== null; fr = d.next()) frames++;
        }
      }
      d.end();
      if (frames !== decFrames) throw new Error(`decoded ${frames} frames, expected ${decFrames}`);
    }, minMs);

    const bounce = Buffer.alloc(pageSize);
    const walk = measure(`decode+walk${suffix}`, runs, decBytes, decFrames, () => {
      const d = new FrameDecoder();
      let pages = 0;
      const cb = (_src: Buffer, _first: number, count: number) => {
        pages += count;
      };
      for (let r = 0; r < repeats; r++) {
        for (let i = 0; i < chunks.length; i++) {
          d.push(chunks[i]!);
          for (let fr = d.next(); fr !== null; fr = d.next()) forEachPageRun(fr.payload, pageSize, bounce, cb);
        }
      }
      d.end();
      if (pages !== decFrames * n) throw new Error(`walked ${pages} pages, expected ${decFrames * n}`);
    }, minMs);
    return [encPages, encRun, dec, walk];
  }

  const batch = cases(pagesPerFrame, '');
  const single = pagesPerFrame === 1 ? [] : cases(1, ' (1 page)');
  if (sink < 0) console.log(sink);

  const [encPages, encRun, dec, walk] = batch as [ProtocolBenchCase, ProtocolBenchCase, ProtocolBenchCase, ProtocolBenchCase];
  const goals = { decodeGBps: 3, encodeGBps: 2 };
  return {
    bench: 'protocol', pageSize, pagesPerFrame, chunkBytes, runs,
    cases: [...batch, ...single],
    goals,
    ok: Math.min(encPages.gbps, encRun.gbps) >= goals.encodeGBps && Math.min(dec.gbps, walk.gbps) >= goals.decodeGBps,
  };
}

export function printTable(r: ProtocolBenchResult): void {
  const rows = r.cases.map((c) => [c.name, c.gbps.toFixed(2), `${c.min.toFixed(2)}–${c.max.toFixed(2)}`, Math.round(c.framesPerSec).toString()]);
  const head = ['case', 'GB/s (median)', 'range', 'frames/s'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  console.log(`protocol: ${r.pagesPerFrame} × ${r.pageSize} B pages a frame, ${r.chunkBytes / 1024} KiB chunks, median of ${r.runs}; goals decode ≥ ${r.goals.decodeGBps}, encode ≥ ${r.goals.encodeGBps} GB/s: ${r.ok ? 'met' : 'NOT met'}`);
  console.log(line(head));
  for (const row of rows) console.log(line(row));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = runProtocolBench();
  console.log(JSON.stringify(result));
  if (!process.argv.includes('--json')) printTable(result);
}
