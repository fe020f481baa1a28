/**
 * Faults on registered memory, taken by worker threads (a vCPU faulting with its handler on the
 * same thread would deadlock) and resolved by a handler on the main loop (watchFd) or in a
 * handler worker blocked in poll().
 */
import { expect } from 'chai';
import {
  ALREADY_PRESENT, HOST_PAGE_SIZE, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE, UFFD_FEATURE_EVENT_REMOVE,
  UFFD_FEATURE_MINOR_SHMEM, UFFD_FEATURE_MISSING_HUGETLBFS, UFFD_FEATURE_THREAD_ID, UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE, Userfaultfd, createEventfd, createMemfd, decodeMessage, faultAddress, faultFlags,
  faultTid, mapAnonymous, mapShared, msgEvent, HUGE_PAGE_SIZE, type RemoveMessage,
} from '@livemig/uffd';
import { readFileSync, writeFileSync } from 'node:fs';
import { fillPattern, checkPattern } from '../dist/test-support/pattern.js';
import type { ToucherDone, ToucherReady } from '../dist/test-support/toucher.js';
import type { HandlerReport } from '../dist/test-support/handler.js';
import { cleanup, serveOnLoop, sleep, startWorker, track } from './helpers.js';

const PS = HOST_PAGE_SIZE;
const SEED = 0x1234;

/** A source buffer holding the pattern of `pages` pages. */
function patternSource(pages: number, seed = SEED, pageSize = PS): Buffer {
  const b = Buffer.from(new ArrayBuffer(pages * pageSize));
  for (let p = 0; p < pages; p++) fillPattern(new Uint32Array(b.buffer, p * pageSize, pageSize / 4), p, seed);
  return b;
}

function registered(pages: number, opts: ConstructorParameters<typeof Userfaultfd>[0] = {}) {
  const m = track.mapping(mapAnonymous(pages * PS, { name: 'ram0' }));
  const u = track.uffd(new Userfaultfd(opts));
  u.register(m.addr, m.length, { missing: true }, 'ram0');
  return { m, u };
}

describe('userfaultfd faults from worker threads', function () {
  this.timeout(15000);
  afterEach(cleanup);

  it("resolves a worker\'s missing-page faults by UFFDIO_COPY with the data intact", async () => {
    const { m, u } = registered(8);
    const src = patternSource(8);
    const faulted: number[] = [];
    serveOnLoop(u, (buf, i) => {
      const page = (faultAddress(buf, i) - m.addr) / PS;
      faulted.push(page);
      expect(u.copy(m.addr + page * PS, src.subarray(page * PS), PS)).to.equal(PS);
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [5, 0, 7, 2], op: 'read', expect: 'pattern', seed: SEED });
    const done = await w.next<ToucherDone>('done');
    expect(done.bad).to.deep.equal([]);
    expect(faulted).to.deep.equal([5, 0, 7, 2]);
    expect(checkPattern(new Uint32Array(m.view(), 5 * PS, PS / 4), 5, SEED)).to.equal(true);
  });

  it("resolves a worker\'s faults by UFFDIO_ZEROPAGE with zero-filled pages", async () => {
    const { m, u } = registered(4);
    let zeroed = 0;
    serveOnLoop(u, (buf, i) => {
      expect(u.zeropage(faultAddress(buf, i), PS)).to.equal(PS);
      zeroed++;
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [0, 1, 2, 3], op: 'read', expect: 'zero' });
    const done = await w.next<ToucherDone>('done');
    expect(done.bad).to.deep.equal([]);
    expect(zeroed).to.equal(4);
  });

  it("places each page exactly once when several workers fault on the same pages at once (handler worker in poll)", async () => {
    const pages = 64;
    const { m, u } = registered(pages);
    const stop = track.eventfd(createEventfd());
    const handler = startWorker('handler', {
      uffdFd: u.fd, features: u.features, stopFd: stop.fd, addr: m.addr, length: m.length, pageSize: PS, mode: 'copy', seed: SEED,
    });
    await handler.next('ready');
    const gate = new SharedArrayBuffer(4);
    // Two workers walk the pages upwards and two downwards, in step: they meet on the same
    // pages at the same time, so some pages get several fault messages.
    const up = Array.from({ length: pages }, (_, p) => p);
    const down = [...up].reverse();
    const touchers = [up, up, down, down].map((order) =>
      startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: order, op: 'read', expect: 'pattern', seed: SEED, gate }));
    await Promise.all(touchers.map((t) => t.next('ready')));
    Atomics.store(new Int32Array(gate), 0, 1);
    Atomics.notify(new Int32Array(gate), 0);
    const dones = await Promise.all(touchers.map((t) => t.next<ToucherDone>('done', 10000)));
    stop.signal();
    const report = await handler.next<HandlerReport>('report');
    if (process.env.UFFD_TEST_VERBOSE) console.log(report);
    for (const d of dones) expect(d.bad, `worker ${d.tid} read wrong pages`).to.deep.equal([]);
    expect(report.placed).to.equal(pages);
    expect(report.maxPlacementsPerPage).to.equal(1);
    expect(report.alreadyPresent).to.equal(0);
    expect(report.faults).to.equal(pages + report.duplicates);
    expect(report.faults).to.be.at.least(pages);
    for (const t of report.tids) expect(dones.map((d) => d.tid)).to.include(t);
  });

  it("keeps a worker blocked after a DONTWAKE copy until UFFDIO_WAKE", async () => {
    const { m, u } = registered(2);
    const src = patternSource(2);
    let placedAt = 0;
    serveOnLoop(u, (buf, i) => {
      const addr = faultAddress(buf, i);
      expect(u.copy(addr, src.subarray(addr - m.addr), PS, { dontwake: true })).to.equal(PS);
      placedAt = Date.now();
    });
    const progress = new SharedArrayBuffer(4);
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [1], op: 'read', expect: 'pattern', seed: SEED, progress });
    while (!placedAt) await sleep(5);
    await sleep(100);
    expect(Atomics.load(new Int32Array(progress), 0), 'the worker ran on before WAKE').to.equal(0);
    u.wake(m.addr + PS, PS);
    const done = await w.next<ToucherDone>('done');
    expect(done.bad).to.deep.equal([]);
    expect(Atomics.load(new Int32Array(progress), 0)).to.equal(1);
  });

  it("reports the faulting worker's thread id in fault messages (THREAD_ID)", async function () {
    if (!(Userfaultfd.availableFeatures() & UFFD_FEATURE_THREAD_ID)) {
      console.log('      skipped: the kernel does not offer UFFD_FEATURE_THREAD_ID');
      this.skip();
    }
    const { m, u } = registered(1, { features: UFFD_FEATURE_THREAD_ID });
    expect(u.has(UFFD_FEATURE_THREAD_ID)).to.equal(true);
    const tids: number[] = [];
    serveOnLoop(u, (buf, i) => {
      tids.push(faultTid(buf, i));
      u.zeropage(faultAddress(buf, i), PS);
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [0], op: 'read' });
    const ready = await w.next<ToucherReady>('ready');
    await w.next<ToucherDone>('done');
    expect(tids).to.deep.equal([ready.tid]);
    expect(ready.tid).to.not.equal(process.pid);
  });

  it("flags a write fault as WRITE and decodes it as a pagefault message", async () => {
    const { m, u } = registered(1);
    const seen: Array<{ flags: number; event: number; decoded: ReturnType<typeof decodeMessage> }> = [];
    serveOnLoop(u, (buf, i) => {
      seen.push({ flags: faultFlags(buf, i), event: msgEvent(buf, i), decoded: decodeMessage(buf, i) });
      u.zeropage(faultAddress(buf, i), PS);
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [0], op: 'write', value: 77 });
    await w.next('done');
    expect(seen).to.have.length(1);
    expect(seen[0]!.event).to.equal(UFFD_EVENT_PAGEFAULT);
    expect(seen[0]!.flags & UFFD_PAGEFAULT_FLAG_WRITE).to.equal(UFFD_PAGEFAULT_FLAG_WRITE);
    expect(seen[0]!.decoded).to.include({ event: 'pagefault', address: m.addr, write: true, wp: false, minor: false });
    expect(new Uint32Array(m.view(), 0, 1)[0]).to.equal(77);
  });

  it("stops a worker's write on a write-protected page until UFFDIO_WRITEPROTECT lifts it", async () => {
    const m = track.mapping(mapAnonymous(4 * PS, { name: 'wp-area' }));
    m.bytes().fill(1);
    const u = track.uffd(new Userfaultfd({ features: 0 }));
    u.register(m.addr, m.length, { wp: true }, 'wp-area');
    u.writeprotect(m.addr, m.length, { wp: true });
    const flags: number[] = [];
    serveOnLoop(u, (buf, i) => {
      flags.push(faultFlags(buf, i));
      u.writeprotect(faultAddress(buf, i), PS, { wp: false });
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [2], op: 'write', value: 0x55 });
    await w.next('done');
    expect(flags).to.have.length(1);
    expect(flags[0]! & UFFD_PAGEFAULT_FLAG_WP).to.equal(UFFD_PAGEFAULT_FLAG_WP);
    expect(new Uint32Array(m.view(), 2 * PS, 1)[0]).to.equal(0x55);
  });

  it("resolves a minor fault on a second view of a memfd by UFFDIO_CONTINUE", async function () {
    if (!(Userfaultfd.availableFeatures() & UFFD_FEATURE_MINOR_SHMEM)) {
      console.log('      skipped: the kernel does not offer UFFD_FEATURE_MINOR_SHMEM');
      this.skip();
    }
    const a = track.mapping(createMemfd(4 * PS, { name: 'shm' }));
    const src = patternSource(4);
    a.bytes().set(src);
    const b = track.mapping(mapShared(a.fd, a.length, { name: 'shm view' }));
    const u = track.uffd(new Userfaultfd({ features: UFFD_FEATURE_MINOR_SHMEM, requiredFeatures: UFFD_FEATURE_MINOR_SHMEM }));
    const reg = u.register(b.addr, b.length, { minor: true }, 'shm view');
    expect(reg.names).to.include('UFFDIO_CONTINUE');
    const minors: boolean[] = [];
    serveOnLoop(u, (buf, i) => {
      minors.push(decodeMessage(buf, i).event === 'pagefault' && (decodeMessage(buf, i) as { minor: boolean }).minor);
      expect(u.continue(faultAddress(buf, i), PS)).to.equal(PS);
    });
    const w = startWorker('toucher', { addr: b.addr, length: b.length, pageSize: PS, pages: [3, 1], op: 'read', expect: 'pattern', seed: SEED });
    const done = await w.next<ToucherDone>('done');
    expect(done.bad).to.deep.equal([]);
    expect(minors).to.deep.equal([true, true]);
  });

  it("reports madvise(DONTNEED) on a range registered with EVENT_REMOVE as a REMOVE event", async () => {
    const { m, u } = registered(8, { features: UFFD_FEATURE_EVENT_REMOVE, requiredFeatures: UFFD_FEATURE_EVENT_REMOVE });
    expect(u.copy(m.addr, patternSource(8), 8 * PS)).to.equal(8 * PS);
    const events: RemoveMessage[] = [];
    serveOnLoop(u, (buf, i) => {
      if (msgEvent(buf, i) === UFFD_EVENT_REMOVE) events.push(decodeMessage(buf, i) as RemoveMessage);
    });
    // The madvise caller blocks until the event is read, so it must not be the thread reading it.
    const w = startWorker('toucher', { addr: m.addr + 2 * PS, length: 3 * PS, pageSize: PS, pages: [0], op: 'dontneed' });
    await w.next('done');
    expect(events).to.deep.equal([{ event: 'remove', start: m.addr + 2 * PS, end: m.addr + 3 * PS }]);
  });

  it("returns ALREADY_PRESENT from a second UFFDIO_COPY of the same page", () => {
    const { m, u } = registered(2);
    const src = patternSource(1);
    expect(u.copy(m.addr, src, PS)).to.equal(PS);
    expect(u.copy(m.addr, src, PS)).to.equal(ALREADY_PRESENT);
    expect(u.zeropage(m.addr, PS)).to.equal(ALREADY_PRESENT);
  });

  it("returns the bytes placed before a present page from a multi-page UFFDIO_COPY, so the caller resumes", () => {
    const { m, u } = registered(4);
    const src = patternSource(4);
    expect(u.copy(m.addr + PS, src.subarray(PS), PS)).to.equal(PS);
    const n = u.copy(m.addr, src, 4 * PS);
    expect(n).to.equal(PS); // page 0 placed, stopped at page 1
    expect(u.copy(m.addr + n, src.subarray(n), 4 * PS - n)).to.equal(ALREADY_PRESENT);
    expect(u.copy(m.addr + 2 * PS, src.subarray(2 * PS), 2 * PS)).to.equal(2 * PS);
    for (const p of [0, 2, 3]) expect(checkPattern(new Uint32Array(m.view(), p * PS, PS / 4), p, SEED), `page ${p}`).to.equal(true);
  });

  it("places a 2 MiB huge page of a hugetlb memfd by UFFDIO_COPY on a worker's fault", async function () {
    if (!(Userfaultfd.availableFeatures() & UFFD_FEATURE_MISSING_HUGETLBFS)) {
      console.log('      skipped: the kernel does not offer UFFD_FEATURE_MISSING_HUGETLBFS');
      this.skip();
    }
    const sysctl = '/proc/sys/vm/nr_hugepages';
    const before = Number(readFileSync(sysctl, 'utf8'));
    try {
      writeFileSync(sysctl, String(before + 2));
    } catch (e) {
      console.log(`      skipped: cannot reserve huge pages (${(e as Error).message})`);
      this.skip();
    }
    track.fn(() => writeFileSync(sysctl, String(before)));
    if (Number(readFileSync(sysctl, 'utf8')) < before + 2) {
      console.log('      skipped: the kernel could not reserve 2 huge pages');
      this.skip();
    }
    const m = track.mapping(createMemfd(2 * HUGE_PAGE_SIZE, { name: 'huge', hugetlb: true }));
    const u = track.uffd(new Userfaultfd({ requiredFeatures: UFFD_FEATURE_MISSING_HUGETLBFS }));
    u.register(m.addr, m.length, { missing: true }, 'huge');
    const src = patternSource(2, SEED, HUGE_PAGE_SIZE);
    serveOnLoop(u, (buf, i) => {
      const off = faultAddress(buf, i) - m.addr;
      expect(off % HUGE_PAGE_SIZE).to.equal(0);
      expect(u.copy(m.addr + off, src.subarray(off), HUGE_PAGE_SIZE)).to.equal(HUGE_PAGE_SIZE);
    });
    const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: HUGE_PAGE_SIZE, pages: [1], op: 'read', expect: 'pattern', seed: SEED });
    const done = await w.next<ToucherDone>('done');
    expect(done.bad).to.deep.equal([]);
  });
});
