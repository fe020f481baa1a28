/**
 * ReadRing: where reads land, and the one property everything rests on — bytes the decoder
 * still holds are never overwritten, however reads and consumption interleave.
 */
import { expect } from 'chai';
import { FrameDecoder, MsgType, ReadRing, encodeFrame, type Frame } from '@livemig/protocol';
import { KiB, pattern, rng } from './helpers.js';

/** Writes `n` bytes of `src` (from `at`) into the ring's next space as a read would; returns the committed view. */
function read(ring: ReadRing, retained: number, src: Buffer, at: number, n: number): Buffer {
  const space = ring.next(retained);
  const len = Math.min(n, space.length, src.length - at);
  src.copy(space, 0, at, at + len);
  return ring.commit(len);
}

describe('ReadRing', () => {
  it('puts a read right after the previous one while the decoder holds bytes', () => {
    const ring = new ReadRing({ capacity: 64 * KiB, minRead: 4 * KiB });
    const a = ring.commit(ring.next(0).subarray(0, 1000).length);
    const b = ring.commit(ring.next(300).subarray(0, 500).length);
    expect(b.buffer).to.equal(a.buffer);
    expect(b.byteOffset).to.equal(a.byteOffset + 1000);
  });

  it('starts again at the beginning of its buffer once nothing is held', () => {
    const ring = new ReadRing({ capacity: 64 * KiB, minRead: 4 * KiB });
    const a = ring.commit(ring.next(0).subarray(0, 1000).length);
    const next = ring.next(0);
    expect(next.buffer).to.equal(a.buffer);
    expect(next.byteOffset).to.equal(a.byteOffset);
  });

  it('wraps to the start when the tail is short and the held bytes leave room before them', () => {
    const ring = new ReadRing({ capacity: 64 * KiB, minRead: 4 * KiB, maxRead: 64 * KiB });
    ring.next(0);
    const first = ring.commit(62 * KiB);
    const space = ring.next(2 * KiB); // held: the last 2 KiB; 2 KiB left at the end
    expect(space.buffer).to.equal(first.buffer);
    expect(space.byteOffset).to.equal(first.byteOffset);
    expect(space.length).to.equal(60 * KiB); // up to the held bytes, not over them
    expect(ring.buffers).to.equal(1);
  });

  it('moves to a fresh buffer when no room is left, and the old bytes stay as they were', () => {
    const ring = new ReadRing({ capacity: 16 * KiB, minRead: 4 * KiB, maxRead: 16 * KiB });
    const space = ring.next(0);
    pattern(16 * KiB, 3).copy(space);
    const held = ring.commit(16 * KiB);
    const next = ring.next(16 * KiB);
    expect(next.buffer).not.to.equal(held.buffer);
    next.fill(0xee);
    expect(held.equals(pattern(16 * KiB, 3))).to.equal(true);
    expect(ring.buffers).to.equal(2);
  });

  it('offers at most maxRead bytes to one read', () => {
    const ring = new ReadRing({ capacity: 1024 * KiB, minRead: 4 * KiB, maxRead: 256 * KiB });
    expect(ring.next(0).length).to.equal(256 * KiB);
  });

  it('rejects a capacity that is not a positive integer', () => {
    expect(() => new ReadRing({ capacity: 0 })).to.throw(RangeError, /capacity/);
  });

  it('never overwrites bytes the decoder holds: random reads, pauses and frame sizes decode intact', () => {
    for (let seed = 1; seed <= 50; seed++) {
      const r = rng(seed);
      // Half the runs let one read fill the whole buffer.
      const maxRead = seed % 2 ? 24 * KiB : 64 * KiB;
      // Frames of 0–40 KiB payloads through a small ring, so it wraps and moves on often.
      const frames: Buffer[] = [];
      const payloads: Buffer[] = [];
      for (let i = 0; i < 120; i++) {
        const count = 1 + Math.floor(r() * 10);
        const payload = pattern(count * 4 * KiB, seed * 1000 + i);
        payloads.push(payload);
        frames.push(...encodeFrame({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: i * 40 * KiB, count }, payload));
      }
      const stream = Buffer.concat(frames);
      const ring = new ReadRing({ capacity: 64 * KiB, minRead: 2 * KiB, maxRead });
      const decoder = new FrameDecoder();
      const got: Frame[] = [];
      let at = 0;
      let checked = 0;
      while (at < stream.length) {
        const view = read(ring, decoder.bufferedBytes, stream, at, 1 + Math.floor(r() * 70 * KiB));
        at += view.length;
        decoder.push(view);
        // Sometimes a handler pauses: frames stay in the decoder across later reads.
        if (r() < 0.3) continue;
        for (let f = decoder.next(); f; f = decoder.next()) got.push(f);
        // A frame is used before the next read: check each one now.
        for (; checked < got.length; checked++) {
          const f = got[checked]!;
          expect(Buffer.concat(f.payload.segments).equals(payloads[checked]!), `seed ${seed} frame ${checked}`).to.equal(true);
        }
      }
      for (let f = decoder.next(); f; f = decoder.next()) got.push(f);
      for (; checked < got.length; checked++) {
        expect(Buffer.concat(got[checked]!.payload.segments).equals(payloads[checked]!), `seed ${seed} frame ${checked}`).to.equal(true);
      }
      expect(got.length).to.equal(120);
    }
  });
});

describe('FrameDecoder: reads that continue each other in memory', () => {
  it('joins them, so a payload spread over several reads is one segment', () => {
    const payload = pattern(64 * KiB, 9);
    const stream = Buffer.concat(encodeFrame({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 0, count: 16 }, payload));
    const d = new FrameDecoder();
    for (let at = 0; at < stream.length; at += 5000) d.push(stream.subarray(at, Math.min(stream.length, at + 5000)));
    const f = d.next()!;
    expect(f.payload.segments).to.have.length(1);
    expect(f.payload.segments[0]!.equals(payload)).to.equal(true);
  });

  it('keeps chunks from different buffers apart', () => {
    const payload = pattern(8 * KiB, 4);
    const stream = Buffer.concat(encodeFrame({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 0, count: 2 }, payload));
    const d = new FrameDecoder();
    d.push(Buffer.from(stream.subarray(0, 5000)));
    d.push(Buffer.from(stream.subarray(5000)));
    const f = d.next()!;
    expect(f.payload.segments.length).to.equal(2);
    expect(Buffer.concat(f.payload.segments).equals(payload)).to.equal(true);
  });
});
