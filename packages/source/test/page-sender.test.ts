/**
 * PageSender over a real loopback channel: which frame each kind of page travels in (PAGE_RUN
 * for runs, PAGES for short scattered runs, TRIMMED_RUN for pages that end in zeros, ZERO for
 * zero pages and never-populated ones), and
 * that a destination rebuilding memory from the frames gets the block byte for byte.
 */
import { expect } from 'chai';
import net from 'node:net';
import { MsgType, TRIM_UNIT, expandTrimmedRun, payloadToBuffer, newMigrationId, type Frame } from '@livemig/protocol';
import { acceptChannel, connectChannel, type Channel } from '@livemig/transport';
import { PageBitmap } from '../src/page-bitmap.js';
import { RateLimiter } from '../src/rate-limiter.js';
import { PageSender, type SendBlock } from '../src/page-sender.js';

const PS = 4096;

const servers: net.Server[] = [];
const channels: Channel[] = [];

afterEach(async () => {
  for (const c of channels.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A connected pair: `out` (the source's main channel) and `in` (the destination's end). */
async function pair(): Promise<{ out: Channel; in: Channel }> {
  const server = net.createServer({ pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<Channel>((resolve, reject) => {
    server.once('connection', (s) => acceptChannel(s).then(({ channel }) => resolve(channel), reject));
  });
  const uuid = newMigrationId();
  const [out, inn] = await Promise.all([connectChannel({ endpoint: { host: '127.0.0.1', port }, role: 'main', uuid }), accepted]);
  channels.push(out, inn);
  return { out, in: inn };
}

/** A destination's view: frames by type, and the memory they rebuild (zero where nothing came). */
function rebuild(ch: Channel, pages: number): { frames: Frame[]; memory: Buffer; pagesSeen: Set<number> } {
  const frames: Frame[] = [];
  const memory = Buffer.alloc(pages * PS, 0xee); // not zero: a page no frame covers stays visible
  const pagesSeen = new Set<number>();
  ch.setHandler((f) => {
    frames.push({ msg: f.msg, payload: { length: f.payload.length, segments: [] } });
    const m = f.msg;
    if (m.type === MsgType.PAGE_RUN) {
      memory.set(payloadToBuffer(f.payload), m.offset);
      for (let i = 0; i < m.count; i++) pagesSeen.add(m.offset / PS + i);
    } else if (m.type === MsgType.PAGES) {
      const data = payloadToBuffer(f.payload);
      m.offsets.forEach((off, i) => {
        memory.set(data.subarray(i * PS, (i + 1) * PS), off);
        pagesSeen.add(off / PS);
      });
    } else if (m.type === MsgType.TRIMMED_RUN) {
      expandTrimmedRun(payloadToBuffer(f.payload), m.count, PS, memory.subarray(m.offset, m.offset + m.count * PS));
      for (let i = 0; i < m.count; i++) pagesSeen.add(m.offset / PS + i);
    } else if (m.type === MsgType.ZERO) {
      for (const [off, count] of m.runs) {
        memory.fill(0, off, off + count * PS);
        for (let i = 0; i < count; i++) pagesSeen.add(off / PS + i);
      }
    }
  });
  return { frames, memory, pagesSeen };
}

/** A block whose page p holds data when `data(p)`: its index in every byte but the first. */
function block(pages: number, data: (p: number) => boolean, populated = new PageBitmap(pages, true)): SendBlock {
  const buffer = Buffer.alloc(pages * PS);
  for (let p = 0; p < pages; p++) if (data(p)) buffer.fill((p % 251) + 1, p * PS + 1, (p + 1) * PS);
  return { name: 'ram0', pageSize: PS, pages, buffer, populated };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('PageSender', function () {
  this.timeout(10_000);

  it('scattered data pages travel in PAGES frames, and the destination rebuilds them byte for byte', async () => {
    const { out, in: inn } = await pair();
    const pages = 4096;
    // Runs of 1, 2 and 3 data pages between zero gaps: all shorter than a PAGE_RUN's minimum.
    const b = block(pages, (p) => p % 9 === 0 || p % 9 === 4 || p % 9 === 5 || (p % 9 >= 6 && p % 9 <= 8 && p % 2 === 0));
    const seen = rebuild(inn, pages);
    const sender = new PageSender(out, new RateLimiter());
    const sent = await sender.sendRange(b, 0, pages);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    expect(seen.memory.equals(b.buffer), 'rebuilt memory').to.equal(true);
    expect(sent).to.equal(sender.stats.pagesNormal * PS);
    const types = new Set(seen.frames.map((f) => f.msg.type));
    expect(types.has(MsgType.PAGES), 'PAGES frames').to.equal(true);
    expect(types.has(MsgType.PAGE_RUN), 'no run here is long enough for PAGE_RUN').to.equal(false);
    // A batch is sent once it holds 256 pages or more; the run that got it there has at most 7.
    for (const f of seen.frames) if (f.msg.type === MsgType.PAGES) expect(f.msg.offsets.length).to.be.at.most(255 + 7);
  });

  it('a PAGES buffer comes back once the socket has taken it and carries a later batch, each frame still with its own pages', async () => {
    const { out, in: inn } = await pair();
    const pages = 4096;
    const b = block(pages, (p) => p % 4 === 0); // isolated data pages: 512 per half, two PAGES frames
    const seen = rebuild(inn, pages);
    const buffers: ArrayBufferLike[] = [];
    const send = out.send.bind(out);
    out.send = ((msg, payload, written) => {
      if (msg.type === MsgType.PAGES) buffers.push((payload as Buffer).buffer);
      return send(msg, payload, written);
    }) as Channel['send'];
    const sender = new PageSender(out, new RateLimiter());
    await sender.sendRange(b, 0, pages / 2);
    await out.flushed();
    const first = buffers.splice(0);
    await sender.sendRange(b, pages / 2, pages / 2);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    expect(seen.memory.equals(b.buffer), 'rebuilt memory').to.equal(true);
    expect(first).to.have.length(2);
    expect(buffers).to.have.length(2);
    for (const buf of buffers) expect(first.includes(buf), 'the second half reuses the first half\'s buffers').to.equal(true);
  });

  it('scattered 2 MiB pages (hugetlb) travel as PAGE_RUN frames of their own, not copied into a PAGES frame', async () => {
    const { out, in: inn } = await pair();
    const HPS = 2 * 1024 * 1024;
    const pages = 8;
    const buffer = Buffer.alloc(pages * HPS);
    for (const p of [1, 3, 4, 6]) buffer.fill(p + 1, p * HPS + 1, (p + 1) * HPS);
    const frames: Frame['msg'][] = [];
    const memory = Buffer.alloc(pages * HPS, 0xee);
    let covered = 0;
    inn.setHandler((f) => {
      frames.push(f.msg);
      if (f.msg.type === MsgType.PAGE_RUN) {
        memory.set(payloadToBuffer(f.payload), f.msg.offset);
        covered += f.msg.count;
      } else if (f.msg.type === MsgType.ZERO) {
        for (const [off, count] of f.msg.runs) {
          memory.fill(0, off, off + count * HPS);
          covered += count;
        }
      }
    });
    const sender = new PageSender(out, new RateLimiter());
    await sender.sendRange({ name: 'ram0', pageSize: HPS, pages, buffer, populated: new PageBitmap(pages, true) }, 0, pages);
    await until(() => covered === pages, 'every page');
    expect(frames.some((m) => m.type === MsgType.PAGES)).to.equal(false);
    expect(frames.filter((m) => m.type === MsgType.PAGE_RUN).map((m) => (m as { offset: number }).offset / HPS)).to.deep.equal([1, 3, 4, 6]);
    expect(memory.equals(buffer)).to.equal(true);
  });

  it('long data runs travel as PAGE_RUN, zero pages as ZERO runs without payload, and never-populated pages are not read', async () => {
    const { out, in: inn } = await pair();
    const pages = 1024;
    const populated = new PageBitmap(pages, true);
    populated.clearRange(512, 768); // these hold "data" but the kernel said they were never populated
    const b = block(pages, (p) => (p >= 100 && p < 300) || (p >= 512 && p < 768), populated);
    const seen = rebuild(inn, pages);
    const sender = new PageSender(out, new RateLimiter());
    await sender.sendRange(b, 0, pages);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    const expected = Buffer.from(b.buffer);
    expected.fill(0, 512 * PS, 768 * PS); // sent as zero without being read
    expect(seen.memory.equals(expected), 'rebuilt memory').to.equal(true);
    const runs = seen.frames.filter((f) => f.msg.type === MsgType.PAGE_RUN);
    expect(runs.map((f) => (f.msg as { offset: number }).offset)).to.deep.equal([100 * PS]);
    expect(seen.frames.filter((f) => f.msg.type === MsgType.ZERO).every((f) => f.payload.length === 0)).to.equal(true);
    expect(sender.stats).to.deep.include({ pagesNormal: 200, pagesZero: pages - 200 });
  });

  /** A block of `pages` pages: page p has data up to byte `end(p)` (exclusive; 0 = a zero page). */
  function ending(pages: number, end: (p: number) => number): SendBlock {
    const buffer = Buffer.alloc(pages * PS);
    for (let p = 0; p < pages; p++) if (end(p) > 0) buffer.fill((p % 251) + 1, p * PS, p * PS + end(p));
    return { name: 'ram0', pageSize: PS, pages, buffer, populated: new PageBitmap(pages, true) };
  }

  it('pages that end in zeros travel trimmed (TRIMMED_RUN) with only their kept units, and arrive byte for byte', async () => {
    const { out, in: inn } = await pair();
    const pages = 1024;
    // One data byte a page (the ab guest's pages), 100 bytes, half a page: all trimmed.
    const b = ending(pages, (p) => [1, 100, PS / 2][p % 3]!);
    const seen = rebuild(inn, pages);
    const sender = new PageSender(out, new RateLimiter());
    const sent = await sender.sendRange(b, 0, pages);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    expect(seen.memory.equals(b.buffer), 'rebuilt memory').to.equal(true);
    expect(seen.frames.every((f) => f.msg.type === MsgType.TRIMMED_RUN), 'only TRIMMED_RUN frames').to.equal(true);
    const keptBytes = Array.from({ length: pages }, (_, p) => [1, 2, PS / 2 / TRIM_UNIT][p % 3]! * TRIM_UNIT).reduce((a, n) => a + n, 0);
    const payload = seen.frames.reduce((a, f) => a + f.payload.length, 0);
    expect(payload).to.equal(2 * pages + keptBytes);
    expect(sender.stats).to.deep.include({ pagesNormal: pages, pagesTrimmed: pages, trimmedBytes: payload, dataBytes: pages * PS });
    expect(sent, 'a trimmed page counts whole').to.equal(pages * PS);
    for (const f of seen.frames) expect((f.msg as { count: number }).count).to.be.at.most(256);
  });

  it('a range mixing whole, trimmed and zero pages is split by kind and arrives byte for byte', async () => {
    const { out, in: inn } = await pair();
    const pages = 2048;
    // 40 pages ending in data, 30 ending in zeros after 64 bytes, 20 zero pages, repeated;
    // a page ending past its middle goes whole.
    const b = ending(pages, (p) => (p % 90 < 40 ? PS : p % 90 < 70 ? (p % 2 ? 64 : PS / 2 + 1) : 0));
    const seen = rebuild(inn, pages);
    const sender = new PageSender(out, new RateLimiter());
    await sender.sendRange(b, 0, pages);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    expect(seen.memory.equals(b.buffer), 'rebuilt memory').to.equal(true);
    const types = new Set(seen.frames.map((f) => f.msg.type));
    expect([...types].sort()).to.deep.equal([MsgType.PAGES, MsgType.PAGE_RUN, MsgType.ZERO, MsgType.TRIMMED_RUN].sort());
    const trimmed = Array.from({ length: pages }, (_, p) => p % 90 >= 40 && p % 90 < 70 && p % 2 === 1).filter(Boolean).length;
    expect(sender.stats.pagesTrimmed).to.equal(trimmed);
  });

  it('with trim: false every data page travels whole', async () => {
    const { out, in: inn } = await pair();
    const pages = 512;
    const b = ending(pages, () => 1);
    const seen = rebuild(inn, pages);
    const sender = new PageSender(out, new RateLimiter(), { trim: false });
    await sender.sendRange(b, 0, pages);
    await until(() => seen.pagesSeen.size === pages, 'every page');
    expect(seen.memory.equals(b.buffer), 'rebuilt memory').to.equal(true);
    expect(seen.frames.map((f) => f.msg.type)).to.deep.equal([MsgType.PAGE_RUN, MsgType.PAGE_RUN]);
    expect(sender.stats.pagesTrimmed).to.equal(0);
  });
});
