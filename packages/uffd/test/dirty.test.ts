/** Dirty tracking: wp-async (userfaultfd WP_ASYNC + PAGEMAP_SCAN) and the soft-dirty fallback. */
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirtyTracker, HOST_PAGE_SIZE, createMemfd, mapAnonymous, type Mapping } from '@livemig/uffd';
import { startWorker, cleanup, track } from './helpers.js';

const PS = HOST_PAGE_SIZE;

function write(m: Mapping, pages: number[]): void {
  const b = m.bytes();
  for (const p of pages) b[p * PS + 100] = (b[p * PS + 100]! + 1) & 0xff;
}

describe('DirtyTracker', function () {
  this.timeout(10000);
  afterEach(cleanup);

  it('reports which methods work here, with a reason for those that do not', () => {
    const s = DirtyTracker.supported();
    for (const method of ['wp-async', 'soft-dirty'] as const) {
      if (!s[method].ok) {
        expect(s[method].reason, method).to.be.a('string').and.not.empty;
        console.log(`      ${method} unavailable here: ${s[method].reason}`);
      }
    }
    expect(s.best).to.equal(s['wp-async'].ok ? 'wp-async' : s['soft-dirty'].ok ? 'soft-dirty' : null);
  });

  describe('wp-async', () => {
    before(function () {
      const s = DirtyTracker.supported()['wp-async'];
      if (!s.ok) {
        console.log(`      skipped: wp-async unavailable: ${s.reason}`);
        this.skip();
      }
    });

    it('returns exactly the pages written between two scans, then none after a scan with no writes', () => {
      const m = track.mapping(mapAnonymous(256 * PS, { name: 'ram0' }));
      m.bytes(0, 128 * PS).fill(1); // half populated before tracking starts, half never touched
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'ram0' }], { method: 'wp-async' });
      track.fn(() => t.stop());
      t.start();
      expect(t.method).to.equal('wp-async');
      expect(t.concurrentSafe).to.equal(true);
      expect(t.scan()[0]!.count).to.equal(0);
      write(m, [3, 4, 5, 10, 127, 128, 200, 255]);
      const set = t.scan()[0]!;
      expect(set.toArray()).to.deep.equal([[3, 6], [10, 11], [127, 129], [200, 201], [255, 256]]);
      expect(set.pages).to.equal(8);
      expect(set.name).to.equal('ram0');
      expect(t.scan()[0]!.toArray()).to.deep.equal([]);
      write(m, [4]);
      expect(t.scan('ram0')[0]!.toArray()).to.deep.equal([[4, 5]]);
    });

    it('a scan with rearm: false reports the written pages and leaves them written: the next scan reports them again, with new writes', () => {
      const m = track.mapping(mapAnonymous(64 * PS, { name: 'ram0' }));
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'ram0' }], { method: 'wp-async' });
      track.fn(() => t.stop());
      t.start();
      write(m, [1, 2, 40]);
      expect(t.scan(undefined, { rearm: false })[0]!.toArray()).to.deep.equal([[1, 3], [40, 41]]);
      write(m, [50]);
      expect(t.scan(undefined, { rearm: false })[0]!.toArray()).to.deep.equal([[1, 3], [40, 41], [50, 51]]);
      // A rearming scan reports them once more and starts a new round.
      expect(t.scan()[0]!.toArray()).to.deep.equal([[1, 3], [40, 41], [50, 51]]);
      expect(t.scan()[0]!.toArray()).to.deep.equal([]);
    });

    it('scans regions separately and loops over a small result buffer until the walk ends', () => {
      const a = track.mapping(mapAnonymous(64 * PS, { name: 'a' }));
      const b = track.mapping(mapAnonymous(64 * PS, { name: 'b' }));
      const t = new DirtyTracker([{ addr: a.addr, length: a.length, name: 'a' }, { addr: b.addr, length: b.length, name: 'b' }], { method: 'wp-async', batch: 2 });
      track.fn(() => t.stop());
      t.start();
      const evens = Array.from({ length: 32 }, (_, i) => 2 * i);
      write(a, evens);
      write(b, [7]);
      expect(t.scan('b')[0]!.toArray()).to.deep.equal([[7, 8]]);
      const [sa, sb] = t.scan();
      expect(sa!.toArray()).to.deep.equal(evens.map((p) => [p, p + 1]));
      expect(sb!.count).to.equal(0);
    });

    it('sees writes made by another thread', async () => {
      const m = track.mapping(mapAnonymous(32 * PS, { name: 'ram0' }));
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'ram0' }], { method: 'wp-async' });
      track.fn(() => t.stop());
      t.start();
      const w = startWorker('toucher', { addr: m.addr, length: m.length, pageSize: PS, pages: [1, 2, 30], op: 'write' });
      await w.next('done');
      expect(t.scan()[0]!.toArray()).to.deep.equal([[1, 3], [30, 31]]);
    });

    it('tracks a memfd-backed (shared) region the same way', () => {
      const m = track.mapping(createMemfd(64 * PS, { name: 'shm' }));
      m.bytes(0, 16 * PS).fill(1);
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'shm' }], { method: 'wp-async' });
      track.fn(() => t.stop());
      t.start();
      write(m, [1, 2, 40]);
      expect(t.scan()[0]!.toArray()).to.deep.equal([[1, 3], [40, 41]]);
      expect(t.scan()[0]!.count).to.equal(0);
    });

    it('stops: unregisters so writes no longer matter and the tracker can be dropped', () => {
      const m = track.mapping(mapAnonymous(8 * PS, { name: 'ram0' }));
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'ram0' }], { method: 'wp-async' });
      t.start();
      t.stop();
      t.stop();
      write(m, [1]);
      expect(() => t.scan()).to.throw(/not started/);
    });
  });

  describe('soft-dirty', () => {
    it('finds written pages of a small region with the real kernel bits', function () {
      const s = DirtyTracker.supported()['soft-dirty'];
      if (!s.ok) {
        console.log(`      skipped: soft-dirty unavailable: ${s.reason}`);
        this.skip();
      }
      const m = track.mapping(mapAnonymous(16 * PS, { name: 'small' }));
      m.bytes().fill(1);
      const t = new DirtyTracker([{ addr: m.addr, length: m.length, name: 'small' }], { method: 'soft-dirty' });
      track.fn(() => t.stop());
      t.start();
      expect(t.concurrentSafe).to.equal(false);
      write(m, [2, 3, 9]);
      expect(t.scan()[0]!.toArray()).to.deep.equal([[2, 4], [9, 10]]);
      expect(t.scan()[0]!.toArray()).to.deep.equal([]);
    });

    it('reads pagemap bit 55 into ranges and keeps another tracker\'s bits across the shared clear (files standing in for /proc)', () => {
      // Regions need no memory here: only their pagemap entries are read.
      const dir = mkdtempSync(join(tmpdir(), 'livemig-softdirty-'));
      track.fn(() => rmSync(dir, { recursive: true, force: true }));
      const files = { pagemap: join(dir, 'pagemap'), clearRefs: join(dir, 'clear_refs') };
      writeFileSync(files.clearRefs, '');
      const base = 0x100000; // page 256
      writeFileSync(files.pagemap, Buffer.alloc((256 + 64) * 8));
      const setBits = (pages: number[]): void => {
        const fd = openSync(files.pagemap, 'r+');
        const zero = Buffer.alloc(64 * 8);
        writeSync(fd, zero, 0, zero.length, 256 * 8);
        const e = Buffer.alloc(8);
        e.writeBigUInt64LE((1n << 55n) | (1n << 63n));
        for (const p of pages) writeSync(fd, e, 0, 8, (256 + p) * 8);
        closeSync(fd);
      };
      const a = new DirtyTracker([{ addr: base, length: 32 * PS, name: 'a' }], { method: 'soft-dirty', softDirtyFiles: files });
      const b = new DirtyTracker([{ addr: base + 32 * PS, length: 32 * PS, name: 'b' }], { method: 'soft-dirty', softDirtyFiles: files });
      track.fn(() => { a.stop(); b.stop(); });
      a.start();
      b.start();
      setBits([1, 2, 3, 31, 32 + 7]);
      expect(a.scan()[0]!.toArray()).to.deep.equal([[1, 4], [31, 32]]);
      setBits([]); // what the kernel's clear did
      expect(b.scan()[0]!.toArray(), 'b lost the bit harvested before a\'s clear').to.deep.equal([[7, 8]]);
      expect(a.scan()[0]!.count).to.equal(0);
    });
  });

  it('refuses regions that are not page-aligned', () => {
    expect(() => new DirtyTracker([{ addr: 0x1001, length: PS, name: 'odd' }], { method: 'wp-async' })).to.throw(RangeError, /odd/);
  });
});
