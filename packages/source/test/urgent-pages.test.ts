/**
 * UrgentPages: what the source's preempt thread sends for one page request — the requested
 * pages first, in frames of their own, then a prefetch window of pages still to send.
 * Frames go to an in-test sink; the RAM is an ordinary Buffer.
 */
import { expect } from 'chai';
import { MsgType, type Message } from '@livemig/protocol';
import { UrgentPages, PREFETCH_MIN, PREFETCH_MAX, URGENT_FRAME_PAGES, type UrgentBlock, type FrameSink } from '@livemig/source';

const PS = 4096;

interface Sent {
  type: 'page' | 'zero';
  first: number;
  count: number;
  payload?: Buffer;
}

/** A sink that records frames as page ranges, and checks cork/uncork pair up. */
class Sink implements FrameSink {
  readonly frames: Sent[] = [];
  corked = 0;
  cork(): void {
    this.corked++;
  }
  uncork(): void {
    this.corked--;
  }
  send(m: Message, payload?: Buffer): void {
    if (m.type === MsgType.PAGE_RUN) this.frames.push({ type: 'page', first: m.offset / PS, count: m.count, payload: Buffer.from(payload!) });
    else if (m.type === MsgType.ZERO) for (const [off, n] of m.runs) this.frames.push({ type: 'zero', first: off / PS, count: n });
    else throw new Error(`unexpected message ${m.type}`);
  }
  /** Every page sent, in order. */
  pages(): number[] {
    return this.frames.flatMap((f) => Array.from({ length: f.count }, (_, k) => f.first + k));
  }
}

/** A block of `pages` pages, every page populated, non-zero (page p holds p+1) and dirty. */
function block(pages: number, name = 'ram0'): UrgentBlock {
  const buffer = Buffer.alloc(pages * PS);
  for (let p = 0; p < pages; p++) buffer.fill((p % 255) + 1, p * PS, (p + 1) * PS);
  return { name, pageSize: PS, pages, buffer, populated: new Uint8Array(pages).fill(1), dirty: new Uint8Array(pages).fill(1) };
}

function serve(u: UrgentPages, bi: number, first: number, end: number): Array<[number, number, number]> {
  const ranges: Array<[number, number, number]> = [];
  u.serve(bi, first, end, (b, p, q) => ranges.push([b, p, q]));
  return ranges;
}

describe('UrgentPages', () => {
  it('sends the requested page first, in a frame of its own, with its data', () => {
    const b = block(4096);
    const sink = new Sink();
    serve(new UrgentPages([b], sink), 0, 100, 101);
    expect(sink.frames[0]).to.include({ type: 'page', first: 100, count: 1 });
    expect(sink.frames[0]!.payload!.equals(b.buffer.subarray(100 * PS, 101 * PS))).to.equal(true);
  });

  it('sends only the requested page after a jump: no prefetch', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    serve(u, 0, 100, 101);
    serve(u, 0, 3000, 3001);
    expect(sink.pages()).to.deep.equal([100, 3000]);
  });

  it('follows a request that comes right after the last one with a prefetch window of PREFETCH_MIN pages', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    serve(u, 0, 100, 101);
    serve(u, 0, 101, 102);
    expect(sink.pages()).to.deep.equal(Array.from({ length: 2 + PREFETCH_MIN }, (_, k) => 100 + k));
  });

  it('sends no frame larger than URGENT_FRAME_PAGES pages', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    for (let p = 0; p < 2048; p += 64) serve(u, 0, p, p + 1);
    serve(u, 0, 3000, 3000 + 3 * URGENT_FRAME_PAGES);
    expect(sink.frames.length).to.be.greaterThan(0);
    for (const f of sink.frames) expect(f.count).to.be.at.most(URGENT_FRAME_PAGES);
  });

  it('reports every range it sent, requested and prefetched, with the block index', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(16, 'a'), block(4096, 'b')], sink);
    expect(serve(u, 1, 10, 12)).to.deep.equal([[1, 10, 12]]);
    expect(serve(u, 1, 12, 13)).to.deep.equal([[1, 12, 13], [1, 13, 13 + PREFETCH_MIN]]);
  });

  it('prefetches only dirty pages: pages the main channel sent already are skipped', () => {
    const b = block(4096);
    b.dirty.fill(0, 105, 110);
    const sink = new Sink();
    const u = new UrgentPages([b], sink);
    serve(u, 0, 99, 100);
    serve(u, 0, 100, 101);
    const pages = sink.pages();
    for (let p = 105; p < 110; p++) expect(pages).to.not.include(p);
    expect(pages).to.include(104).and.to.include(110);
  });

  it('sends a requested page even when it is not dirty (it may sit behind bulk data on the main channel)', () => {
    const b = block(4096);
    b.dirty.fill(0);
    const sink = new Sink();
    serve(new UrgentPages([b], sink), 0, 7, 8);
    expect(sink.pages()).to.deep.equal([7]);
  });

  it('does not send a page twice on the same connection, requested or prefetched', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    serve(u, 0, 100, 101);
    serve(u, 0, 101, 102); // prefetches 102..134
    serve(u, 0, 110, 111); // inside that window: nothing new for 110
    serve(u, 0, 100, 101); // asked again
    const pages = sink.pages();
    expect(new Set(pages).size).to.equal(pages.length);
  });

  it('a new UrgentPages (a new connection after recovery) sends pages again', () => {
    const b = block(4096);
    const first = new Sink();
    serve(new UrgentPages([b], first), 0, 100, 101);
    const second = new Sink();
    serve(new UrgentPages([b], second), 0, 100, 101);
    expect(second.pages()[0]).to.equal(100);
  });

  it('doubles the prefetch window while requests follow each other, up to PREFETCH_MAX', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    const windows: number[] = [];
    serve(u, 0, 0, 1);
    let next = 1;
    for (let k = 0; k < 8; k++) {
      const ranges = serve(u, 0, next, next + 1);
      const end = ranges[ranges.length - 1]![2];
      windows.push(end - (next + 1));
      next = end; // the guest faults on the first page after the window
    }
    expect(windows).to.deep.equal([PREFETCH_MIN, 2 * PREFETCH_MIN, 4 * PREFETCH_MIN, 8 * PREFETCH_MIN, PREFETCH_MAX, PREFETCH_MAX, PREFETCH_MAX, PREFETCH_MAX]);
  });

  it('ends the prefetch after a jump elsewhere, and starts again from PREFETCH_MIN', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    serve(u, 0, 0, 1);
    serve(u, 0, 1, 2); // follows: PREFETCH_MIN
    serve(u, 0, 2 + PREFETCH_MIN, 3 + PREFETCH_MIN); // follows: doubled
    expect(serve(u, 0, 3500, 3501)).to.deep.equal([[0, 3500, 3501]]);
    expect(serve(u, 0, 3501, 3502)).to.deep.equal([[0, 3501, 3502], [0, 3502, 3502 + PREFETCH_MIN]]);
  });

  it('prefetches on a different block only once requests follow each other there', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096, 'a'), block(4096, 'b')], sink);
    serve(u, 0, 10, 11);
    expect(serve(u, 1, 11, 12)).to.deep.equal([[1, 11, 12]]);
  });

  it('sends zero pages and never-populated pages as a ZERO run without data', () => {
    const b = block(4096);
    b.buffer.fill(0, 101 * PS, 103 * PS); // zero
    b.populated.fill(0, 103, 105); // never populated (its bytes are not read)
    const sink = new Sink();
    const u = new UrgentPages([b], sink);
    serve(u, 0, 99, 100);
    sink.frames.length = 0;
    serve(u, 0, 100, 101);
    expect(sink.frames.slice(0, 3)).to.deep.equal([
      { type: 'page', first: 100, count: 1, payload: b.buffer.subarray(100 * PS, 101 * PS) },
      { type: 'zero', first: 101, count: 4 },
      { type: 'page', first: 105, count: URGENT_FRAME_PAGES, payload: b.buffer.subarray(105 * PS, (105 + URGENT_FRAME_PAGES) * PS) },
    ]);
  });

  it('counts pages and data bytes sent (zero pages carry no bytes)', () => {
    const b = block(4096);
    b.populated.fill(0, 101, 111);
    const u = new UrgentPages([b], new Sink());
    serve(u, 0, 99, 100);
    serve(u, 0, 100, 101);
    expect(u.stats).to.deep.equal({ pages: 2 + PREFETCH_MIN, bytes: (2 + PREFETCH_MIN - 10) * PS });
  });

  it('stops the prefetch window at the end of the block', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(64)], sink);
    serve(u, 0, 59, 60);
    serve(u, 0, 60, 61);
    expect(sink.pages()).to.deep.equal([59, 60, 61, 62, 63]);
  });

  it('leaves the sink uncorked after every request', () => {
    const sink = new Sink();
    const u = new UrgentPages([block(4096)], sink);
    serve(u, 0, 0, 1);
    serve(u, 0, 2000, 2003);
    expect(sink.corked).to.equal(0);
  });
});
