/**
 * Postcopy live migration end to end: two real processes over TCP, the destination running
 * the guest while its RAM is still arriving, missing pages caught by userfaultfd.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, freePort, migrate, tracedMigration, waitHttp } from './support/procs.js';
import { QmpClient } from './support/qmp.js';

const SCRIBBLE = path.join(ROOT, 'test/fixtures/scribble-guest.mjs');
/** The benchmarks' guest: RAM full of page-unique data, idle vCPUs (bench/guests/fill.mjs). */
const FILL = path.join(ROOT, 'bench/guests/fill.mjs');

describe('postcopy migration between two processes', function () {
  this.timeout(180_000);

  it('moves a 512 MiB ab guest dirtying at full speed: completes, 0 bad pages, the guest progressed on the destination, requests > 0', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--json');
    const addr = await recv.listening();
    // 1.5 s first: the guest populates all of its RAM (a first touch costs ~10 µs a page on this
    // VM), so precopy leaves pages with data behind for the destination to ask for.
    const send = migrate('send', '--to', addr, '--ram', '512M', '--vcpus', '2', '--migrate-after', '1500', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '300', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    const rr = recv.report();
    expect(sr.mode).to.equal('postcopy');
    expect(rr.mode).to.equal('postcopy');
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
    expect(rr.integrity.pages).to.equal(131072);
    expect(rr.postcopy.requests).to.be.greaterThan(0);
    expect(sr.postcopy.requests).to.equal(rr.postcopy.requests);
    // Every request and every zero page filled locally began as a fault the report counts.
    expect(rr.postcopy.faults).to.be.at.least(rr.postcopy.requests + rr.postcopy.zeroFaults);
    expect(rr.postcopy.guestProgress).to.be.greaterThan(0);
    // Pages precopy sent and the guest wrote again were taken out by DISCARD and placed again
    // in the same pages (recycle.ts), and the guest still verifies.
    expect(rr.postcopy.recycledPages).to.be.greaterThan(0);
    expect(rr.postcopy.latencyUs).to.have.keys('p50', 'p99', 'max');
    expect(rr.postcopy.vcpuBlocktimeMs).to.have.length(2);
    expect(rr.postcopy.blocktimeMs).to.be.a('number');
    // Each vCPU's postcopy as the scheduler saw it: it ran, and its time on a CPU and in a run
    // queue fit in the postcopy's duration (read at RUN and END, a moment apart from the
    // duration's own ends: a few ms of slack).
    expect(rr.postcopy.vcpuRunMs).to.have.length(2);
    expect(rr.postcopy.vcpuRunqueueMs).to.have.length(2);
    for (let v = 0; v < 2; v++) {
      expect(rr.postcopy.vcpuRunMs[v], `vCPU ${v} ran`).to.be.greaterThan(0);
      expect(rr.postcopy.vcpuRunqueueMs[v]).to.be.at.least(0);
      expect(rr.postcopy.vcpuRunMs[v] + rr.postcopy.vcpuRunqueueMs[v], JSON.stringify(rr.postcopy)).to.be.at.most(rr.postcopy.durationMs + 5);
    }
    expect(Object.values(rr.postcopy.latencyHistogram as Record<string, number>).reduce((a, b) => a + b, 0)).to.be.greaterThan(0);
    expect(sr.ram.postcopyBytes).to.be.greaterThan(0);
    // The ab guest's pages (one non-zero byte each) travel trimmed, and are placed whole.
    expect(rr.ram.pagesTrimmed).to.be.greaterThan(0);
    expect(rr.ram.pagesTrimmed).to.equal(sr.ram.pagesTrimmed);
    expect(sr.downtimeMs).to.be.lessThan(1000);
    // The guest's pause leaves out the acknowledgement's way back, and nothing else.
    expect(sr.downtimeMs).to.be.greaterThan(0);
    expect(sr.downtimeAckedMs).to.be.at.least(sr.downtimeMs);
  });

  it('without a preempt channel both ends bound the main channel\'s kernel queues in postcopy (default 1M: Linux keeps 2 MiB); --postcopy-queue 0 leaves them to the kernel', async () => {
    const MiB = 1024 * 1024;
    for (const [queue, want] of [[undefined, 2 * MiB], ['3M', 6 * MiB], ['0', undefined]] as const) {
      const extra = queue === undefined ? [] : ['--postcopy-queue', queue];
      const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json', ...extra);
      const addr = await recv.listening();
      // Whole pages: trimmed, a 64 MiB ab guest can finish in precopy before the switch.
      const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '300', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '100', '--no-trim-pages', '--json', ...extra);
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code, send.stderr).to.equal(0);
      expect(r.code, recv.stderr).to.equal(0);
      expect(send.report().mode).to.equal('postcopy');
      expect(send.report().postcopy.mainQueueBytes, `source, --postcopy-queue ${queue}`).to.equal(want);
      expect(recv.report().postcopy.mainQueueBytes, `destination, --postcopy-queue ${queue}`).to.equal(want);
    }
  });

  it('the downtime the source reports agrees within 1 ms (or 5% of a long pause) with the pause read off the host clock both ends share (first vCPU parked → last vCPU stepping there)', async () => {
    // Whole pages: trimmed, a 128 MiB ab guest can finish in precopy before the switch.
    const { report: sr, clockMs } = await tracedMigration(['--ram', '128M', '--vcpus', '1', '--migrate-after', '500', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '200', '--no-trim-pages']);
    expect(sr.mode).to.equal('postcopy');
    expect(clockMs).to.be.greaterThan(0);
    expect(Math.abs(sr.downtimeMs - clockMs), `reported ${sr.downtimeMs} ms, clock ${clockMs.toFixed(2)} ms`).to.be.at.most(Math.max(1, clockMs * 0.05));
  });

  it('the source keeps dirty tracking on its RAM through postcopy (ending it holds the source for a long moment, just when the first page requests come)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livemig-pc-e2e-'));
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    const sock = path.join(dir, 'send.sock');
    // 64 MiB of whole pages at 16 MB/s: postcopy lasts a few seconds.
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '300', '--downtime-limit', '1',
      '--postcopy', '--postcopy-after', '100', '--max-postcopy-bandwidth', '16M', '--no-trim-pages', '--control', sock, '--json');
    const qmp = await QmpClient.forProcess(send, sock);
    try {
      await qmp.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'postcopy-active', 30_000);
      // The guest's 64 MiB mapping in the source: VmFlags "uw" = registered for userfaultfd write-protect.
      const ram = wpRegisteredMappings(send.child.pid!, 64 * 1024 * 1024);
      expect(ram, 'RAM mappings of 64 MiB, and how many are write-protect registered').to.deep.equal({ all: 1, uw: 1 });
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code, send.stderr).to.equal(0);
      expect(r.code, recv.stderr).to.equal(0);
      expect(send.report().mode).to.equal('postcopy');
      expect(recv.report().integrity.bad).to.equal(0);
    } finally {
      qmp.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the destination allocates the pages still to come while it is idle and places them like recycled pages; --no-prefill allocates none', async () => {
    for (const prefill of [true, false]) {
      const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json', ...(prefill ? [] : ['--no-prefill']));
      const addr = await recv.listening();
      // A guest whose RAM is full of data and whose vCPU idles (it asks for no page), most of
      // it never sent in precopy (32 MB/s for 100 ms), and a slow postcopy stream: the
      // destination waits for it. The guest's verify() checks every word of every page.
      const send = migrate('send', '--to', addr, '--guest', FILL, '--ram', '32M', '--vcpus', '1', '--migrate-after', '300',
        '--max-bandwidth', '32M', '--postcopy', '--postcopy-after', '100', '--max-postcopy-bandwidth', '32M', '--json');
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code, send.stderr).to.equal(0);
      expect(r.code, recv.stderr).to.equal(0);
      const rr = recv.report();
      expect(rr.mode).to.equal('postcopy');
      expect(rr.integrity).to.include({ checked: true, bad: 0 });
      if (prefill) {
        expect(rr.postcopy.prefilledPages, 'pages allocated ahead').to.be.greaterThan(4096);
        expect(rr.postcopy.recycledPages, 'pages moved in from the area').to.be.greaterThan(4096);
      } else {
        expect(rr.postcopy.prefilledPages).to.equal(0);
      }
    }
  });

  it('discards exactly the pages re-dirtied after they were sent, at most 12 ranges a command', async () => {
    // 30 runs of 1–3 pages, scattered: 30 ranges, 3 commands.
    const pages: number[] = [];
    const runs: number[][] = [];
    for (let i = 0; i < 30; i++) {
      const start = 100 + i * 97;
      const len = 1 + (i % 3);
      const run = Array.from({ length: len }, (_, k) => start + k);
      runs.push(run);
      pages.push(...run);
    }
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '200', '--json');
    const addr = await recv.listening();
    // The rate limit keeps every later round (the scribbled pages) longer than the downtime
    // limit, so precopy cannot converge and postcopy starts after round 1 has sent every page.
    const send = migrate(
      'send', '--to', addr, '--guest', SCRIBBLE, '--guest-config', JSON.stringify({ pages }), '--ram', '16M', '--vcpus', '1',
      '--migrate-after', '100', '--max-bandwidth', '8M', '--no-trim-pages', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '2600', '--json',
    );
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    const rr = recv.report();
    expect(sr.mode).to.equal('postcopy');
    const want = { ranges: runs.length, commands: Math.ceil(runs.length / 12), pages: pages.length };
    expect(sr.discard).to.deep.equal(want);
    expect(rr.discard).to.deep.include(want);
    expect(rr.discard.maxRangesPerCommand).to.be.at.most(12);
    expect(rr.integrity).to.include({ checked: true, bad: 0 });
  });

  it('serves every kv key on the destination during and after postcopy', async () => {
    const srcPort = await freePort();
    const dstPort = await freePort();
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--guest-port', String(dstPort), '--run-after', '1500', '--json');
    const addr = await recv.listening();
    const send = migrate(
      'send', '--to', addr, '--guest', 'kv', '--ram', '512M', '--vcpus', '1', '--guest-port', String(srcPort),
      '--migrate-after', '1500', '--postcopy', '--postcopy-after', '0', '--max-bandwidth', '1G', '--json',
    );
    const keys = Array.from({ length: 64 }, (_, i) => [`k${i}`, `v${i}-${'y'.repeat(1000 + i * 50)}`] as const);
    await waitHttp(srcPort);
    for (const [k, v] of keys) {
      const res = await fetch(`http://127.0.0.1:${srcPort}/kv/${k}`, { method: 'PUT', body: v });
      expect(res.status).to.be.oneOf([200, 201, 204]);
    }
    let sendDone = false;
    void send.exited.then(() => (sendDone = true));
    await waitHttp(dstPort, 30_000);
    let readDuring = 0;
    while (!sendDone) {
      for (const [k, v] of keys) {
        const res = await fetch(`http://127.0.0.1:${dstPort}/kv/${k}`);
        expect(res.status, `GET ${k} during postcopy`).to.equal(200);
        expect(await res.text()).to.equal(v);
        if (!sendDone) readDuring++;
      }
    }
    expect((await send.done()).code, send.stderr).to.equal(0);
    expect(send.report().mode).to.equal('postcopy');
    expect(readDuring, 'keys read while postcopy was running').to.be.greaterThan(0);
    for (const [k, v] of keys) {
      const res = await fetch(`http://127.0.0.1:${dstPort}/kv/${k}`);
      expect(await res.text()).to.equal(v);
    }
    expect((await recv.done()).code, recv.stderr).to.equal(0);
    expect(recv.report().integrity.bad).to.equal(0);
  });

  it('completes as precopy when precopy converges before the postcopy trigger, and both ends exit', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '100', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '100000', '--downtime-limit', '1000', '--json');
    const [s, r] = await Promise.all([send.done(30_000), recv.done(30_000)]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    expect(send.report().mode).to.equal('precopy');
    expect(recv.report().integrity.bad).to.equal(0);
  });

  it('falls back to precopy when the destination host cannot do postcopy, and says why', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--refuse-feature', 'userfaultfd', '--run-after', '200', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '0', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    expect(sr.mode).to.equal('precopy');
    expect(sr.postcopyRefused).to.match(/postcopy is not possible on the destination: userfaultfd/);
    expect(recv.report().integrity.bad).to.equal(0);
  });

  it('keeps the source guest running when the destination refuses ADVISE and postcopy is required', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--refuse-feature', 'UFFDIO_COPY', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-fallback', 'fail', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done(20_000)]);
    expect(s.code).to.equal(1);
    expect(r.code).to.equal(1);
    const sr = send.report();
    expect(sr.status).to.equal('failed');
    expect(sr.error).to.match(/UFFDIO_COPY/);
    expect(sr.ram.pagesNormal).to.equal(0);
    expect(sr.sourceGuest).to.deep.equal({ running: true });
    expect(sr.integrity).to.include({ checked: true, bad: 0 });
  });
});

/** Mappings of exactly `bytes` in process `pid`, and how many are registered for userfaultfd write-protect (VmFlags uw). */
function wpRegisteredMappings(pid: number, bytes: number): { all: number; uw: number } {
  let all = 0;
  let uw = 0;
  let size = -1;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) size = Number(BigInt(`0x${range[2]}`) - BigInt(`0x${range[1]}`));
    else if (line.startsWith('VmFlags:') && size === bytes) {
      all++;
      if (line.split(' ').includes('uw')) uw++;
    }
  }
  return { all, uw };
}
