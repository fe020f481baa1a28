import { expect } from 'chai';
import { EMPTY_PAYLOAD, forEachPageRun, payloadToBuffer, toPayload, type Payload } from '@livemig/protocol';
import { expectProtocolError, pattern, rng } from './helpers.js';

const PS = 4096;

interface Call { src: Buffer; first: number; count: number; bytes: Buffer }
function walk(p: Payload, pageSize = PS, bounce = Buffer.alloc(pageSize)): Call[] {
  const calls: Call[] = [];
  forEachPageRun(p, pageSize, bounce, (src, first, count) => calls.push({ src, first, count, bytes: Buffer.from(src) }));
  return calls;
}

/** Split `data` into segments at the given cut points, each in its own ArrayBuffer. */
function segmented(data: Buffer, cuts: number[]): Payload {
  const points = [0, ...cuts, data.length];
  return toPayload(points.slice(1).map((end, i) => Buffer.from(data.subarray(points[i], end))));
}

describe('forEachPageRun', () => {
  it('reports a single segment as one run, passing the segment itself', () => {
    const data = pattern(8 * PS);
    const calls = walk(toPayload(data));
    expect(calls.map((c) => [c.first, c.count])).to.deep.equal([[0, 8]]);
    expect(calls[0]!.src).to.equal(data);
  });

  it('reports whole pages inside each segment as zero-copy runs and a straddling page via the bounce buffer', () => {
    const data = pattern(8 * PS);
    const p = segmented(data, [3 * PS + 100]); // page 3 straddles
    const bounce = Buffer.alloc(PS);
    const calls = walk(p, PS, bounce);
    expect(calls.map((c) => [c.first, c.count])).to.deep.equal([[0, 3], [3, 1], [4, 4]]);
    expect(calls[0]!.src.buffer).to.equal(p.segments[0]!.buffer); // zero copy
    expect(calls[1]!.src).to.equal(bounce); // copied
    expect(calls[2]!.src.buffer).to.equal(p.segments[1]!.buffer); // zero copy
    expect(Buffer.concat(calls.map((c) => c.bytes)).equals(data)).to.equal(true);
  });

  it('assembles a page that straddles three segments', () => {
    const data = pattern(2 * PS, 5);
    const calls = walk(segmented(data, [1000, 2000, PS + 10]));
    expect(calls.map((c) => [c.first, c.count])).to.deep.equal([[0, 1], [1, 1]]);
    expect(Buffer.concat(calls.map((c) => c.bytes)).equals(data)).to.equal(true);
  });

  it('segments cut on page boundaries need no copies', () => {
    const data = pattern(6 * PS);
    const p = segmented(data, [2 * PS, 5 * PS]);
    const calls = walk(p);
    expect(calls.map((c) => [c.first, c.count])).to.deep.equal([[0, 2], [2, 3], [5, 1]]);
    calls.forEach((c, i) => expect(c.src.buffer).to.equal(p.segments[i]!.buffer));
  });

  it('covers every page exactly once, in order, under random segmentation', () => {
    const r = rng(42);
    for (let trial = 0; trial < 200; trial++) {
      const pages = 1 + Math.floor(r() * 20);
      const data = pattern(pages * PS, trial);
      const cuts = [...new Set(Array.from({ length: Math.floor(r() * 10) }, () => 1 + Math.floor(r() * (data.length - 1))))].sort((a, b) => a - b);
      const calls = walk(segmented(data, cuts));
      let next = 0;
      for (const c of calls) {
        expect(c.first).to.equal(next);
        expect(c.src.length).to.equal(c.count * PS);
        expect(c.bytes.equals(data.subarray(c.first * PS, (c.first + c.count) * PS))).to.equal(true);
        next += c.count;
      }
      expect(next).to.equal(pages);
    }
  });

  it('works with huge pages and a larger bounce buffer', () => {
    const ps = 2 * 1024 * 1024;
    const data = pattern(2 * ps);
    const calls = walk(segmented(data, [ps + 5]), ps, Buffer.alloc(ps + 100));
    expect(calls.map((c) => [c.first, c.count, c.src.length])).to.deep.equal([[0, 1, ps], [1, 1, ps]]);
    expect(Buffer.concat(calls.map((c) => c.bytes)).equals(data)).to.equal(true);
  });

  it('does nothing for an empty payload', () => {
    expect(walk(EMPTY_PAYLOAD)).to.deep.equal([]);
  });

  it('rejects a payload that is not a whole number of pages', () => {
    expectProtocolError(() => walk(toPayload(Buffer.alloc(PS + 1))), 'ALIGN', 'not a whole number of 4096-byte pages');
  });

  it('rejects a bounce buffer smaller than a page', () => {
    expectProtocolError(() => walk(toPayload(Buffer.alloc(PS)), PS, Buffer.alloc(100)), 'RANGE', 'bounce buffer of 100 bytes');
  });
});

describe('payloadToBuffer', () => {
  it('returns a single segment without copying', () => {
    const b = pattern(100);
    expect(payloadToBuffer(toPayload(b))).to.equal(b);
  });

  it('concatenates several segments', () => {
    const data = pattern(1000);
    expect(payloadToBuffer(segmented(data, [10, 500])).equals(data)).to.equal(true);
  });

  it('gives an empty buffer for an empty payload', () => {
    expect(payloadToBuffer(EMPTY_PAYLOAD).length).to.equal(0);
  });
});

describe('toPayload', () => {
  it('wraps buffers as segments without copying, skipping empty ones', () => {
    const a = pattern(10);
    const b = pattern(20);
    const p = toPayload([a, Buffer.alloc(0), b]);
    expect(p.length).to.equal(30);
    expect(p.segments).to.have.length(2);
    expect(p.segments[0]).to.equal(a);
    expect(p.segments[1]).to.equal(b);
  });
});
