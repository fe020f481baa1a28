// bench/run.ts — `pnpm bench`: every benchmark, each printing a short table, then one JSON
// line with all results (medians; for the migration also each figure's range over the runs).
// Benchmarks are not tests: they measure, they do not assert.
//
//   node --import tsx bench/run.ts [--only protocol,uffd,migration] [--runs N] [--scenarios a,b] [--cold]
import { runProtocolBench, printTable as printProtocol } from './protocol.js';
import { printPlaceAfterDiscard, runUffdBench } from './uffd.js';
import { runMigrationBench, printMigrationTable } from './migration.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const only = opt('--only')?.split(',');
const runs = Number(opt('--runs') ?? 5);
const want = (name: string): boolean => !only || only.includes(name);
const all: Record<string, unknown> = {};

if (want('protocol')) {
  console.log('\n== protocol: encode/decode of 4 KiB page batches (one core) ==');
  const r = runProtocolBench({ runs });
  printProtocol(r);
  all.protocol = r;
}
if (want('uffd')) {
  console.log('\n== uffd: fault round trip, UFFDIO_COPY, placing after a discard ==');
  const r = await runUffdBench();
  const rt = r.faultRoundTrip;
  console.log(`fault round trip, handler worker in poll(): p50 ${rt.handlerWorker.p50Us.toFixed(1)} µs, p99 ${rt.handlerWorker.p99Us.toFixed(1)} µs`);
  console.log(`fault round trip, handler on the main loop:  p50 ${rt.mainLoop.p50Us.toFixed(1)} µs, p99 ${rt.mainLoop.p99Us.toFixed(1)} µs`);
  for (const [k, c] of Object.entries(r.copy)) console.log(`UFFDIO_COPY ${k} per ioctl: ${c.gbPerS.toFixed(2)} GB/s, ${c.usPerCall.toFixed(2)} µs a call`);
  printPlaceAfterDiscard(r.placeAfterDiscard);
  all.uffd = r;
}
if (want('migration')) {
  const cold = args.includes('--cold');
  console.log(`\n== migration over loopback, two processes, median of ${runs}, ${cold ? 'cold memory (--cold)' : 'host-backed memory (see bench/migration.ts)'} ==`);
  const r = await runMigrationBench({ runs, only: opt('--scenarios')?.split(','), cold });
  printMigrationTable(r);
  all.migration = r.map((x) => ({ name: x.name, runs: x.runs, postcopyRuns: x.postcopyRuns, median: x.median, range: x.range }));
}
console.log(JSON.stringify(all));
