import { expect } from 'chai';
import { pack } from 'msgpackr';
import { DEFAULT_LIMITS, FrameDecoder, MsgType, encodeFrame, encodeHeader, type Frame } from '@livemig/protocol';
import {
  MiB, chunk, concatFrames, decodeAll, expectProtocolError, pattern, prefix, protocolError, rawFrame, rng, sampleMessages,
} from './helpers.js';

const pageRun = (count: number, seed = 1) => ({
  msg: { type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 0, count } as const,
  payload: pattern(count * 4096, seed),
});

function sameFrames(frames: Frame[], samples = sampleMessages()): void {
  expect(frames.map((f) => f.msg)).to.deep.equal(samples.map((s) => s.msg));
  frames.forEach((f, i) => expect(Buffer.concat(f.payload.segments).equals(samples[i]!.payload ?? Buffer.alloc(0))).to.equal(true));
}

describe('FrameDecoder: chunking', () => {
  it('decodes a stream fed one byte at a time', () => {
    sameFrames(decodeAll(chunk(concatFrames(sampleMessages()), () => 1)));
  });

  it('decodes a stream cut at random places', () => {
    const stream = concatFrames(sampleMessages());
    for (let seed = 1; seed <= 50; seed++) {
      const r = rng(seed);
      sameFrames(decodeAll(chunk(stream, () => 1 + Math.floor(r() * 300))));
    }
  });

  it('decodes many frames from a single chunk', () => {
    sameFrames(decodeAll([concatFrames(sampleMessages())]));
  });

  it('returns null until a frame is complete, and counts buffered bytes', () => {
    const bytes = Buffer.concat(encodeFrame(pageRun(2).msg, pageRun(2).payload));
    const d = new FrameDecoder();
    d.push(bytes.subarray(0, bytes.length - 1));
    expect(d.next()).to.equal(null);
    expect(d.next()).to.equal(null);
    expect(d.bufferedBytes).to.equal(8192 - 1); // prefix and header consumed, payload waiting
    d.push(bytes.subarray(bytes.length - 1));
    expect(d.next()?.msg.type).to.equal(MsgType.PAGE_RUN);
    expect(d.bufferedBytes).to.equal(0);
    expect(d.next()).to.equal(null);
  });

  it('accepts Uint8Array chunks', () => {
    const bytes = concatFrames(sampleMessages());
    const u8 = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
    sameFrames(decodeAll([u8 as Buffer]));
  });

  it('ignores empty chunks', () => {
    const bytes = concatFrames(sampleMessages());
    sameFrames(decodeAll([Buffer.alloc(0), bytes, Buffer.alloc(0)]));
  });
});

describe('FrameDecoder: zero-copy payloads', () => {
  it('a payload inside one chunk is a single view of that chunk', () => {
    const chunkBuf = Buffer.concat(encodeFrame(pageRun(4).msg, pageRun(4).payload));
    const [f] = decodeAll([chunkBuf]);
    expect(f!.payload.segments).to.have.length(1);
    const seg = f!.payload.segments[0]!;
    expect(seg.buffer).to.equal(chunkBuf.buffer);
    expect(seg.byteOffset).to.equal(chunkBuf.byteOffset + chunkBuf.length - 4 * 4096);
    chunkBuf[chunkBuf.length - 1] ^= 0xff; // writes through: the same memory
    expect(seg[seg.length - 1]).to.equal(chunkBuf[chunkBuf.length - 1]);
  });

  it('a payload straddling chunks is one segment per chunk, each a view, never concatenated', () => {
    const bytes = Buffer.concat(encodeFrame(pageRun(16).msg, pageRun(16).payload)); // 64 KiB payload
    const chunks = chunk(bytes, () => 10000).map((c) => Buffer.from(c)); // separate ArrayBuffers, like socket reads
    const [f] = decodeAll(chunks);
    const segs = f!.payload.segments;
    expect(segs.length).to.be.greaterThan(1);
    expect(segs.reduce((n, s) => n + s.length, 0)).to.equal(f!.payload.length);
    const buffers = new Set(chunks.map((c) => c.buffer));
    for (const s of segs) expect(buffers.has(s.buffer as ArrayBuffer)).to.equal(true);
    expect(Buffer.concat(segs).equals(pageRun(16).payload)).to.equal(true);
  });

  it('a whole chunk that is payload is handed out as is', () => {
    const head = encodeHeader(pageRun(1).msg);
    const body = pattern(4096);
    const [f] = decodeAll([head, body]);
    expect(f!.payload.segments[0]).to.equal(body);
  });
});

describe('FrameDecoder: limits', () => {
  it('defaults to 64 KiB headers and 16 MiB payloads', () => {
    expect(DEFAULT_LIMITS).to.deep.equal({ maxHeaderBytes: 64 * 1024, maxPayloadBytes: 16 * MiB });
  });

  it('rejects a 4 GiB payload claim as soon as the 12 prefix bytes arrive', () => {
    const d = new FrameDecoder();
    const before = process.memoryUsage().arrayBuffers;
    d.push(prefix(20, 0xffffffff));
    expectProtocolError(() => d.next(), 'OVERSIZED', 'frame payload of 4294967295 bytes exceeds limit of 16777216');
    expect(process.memoryUsage().arrayBuffers - before).to.be.lessThan(1 * MiB);
  });

  it('rejects a header length over maxHeaderBytes before reading the header', () => {
    const d = new FrameDecoder();
    d.push(prefix(64 * 1024 + 1, 0));
    expectProtocolError(() => d.next(), 'OVERSIZED', 'frame header of 65537 bytes exceeds limit of 65536');
  });

  it('rejects a header length of 0', () => {
    const d = new FrameDecoder();
    d.push(prefix(0, 0));
    expectProtocolError(() => d.next(), 'MALFORMED', 'frame header length is 0');
  });

  it('rejects nonzero prefix flags', () => {
    const d = new FrameDecoder();
    d.push(rawFrame({ t: MsgType.END }, undefined, { flags: 4 }));
    expectProtocolError(() => d.next(), 'MALFORMED', 'frame flags must be 0, got 0x4');
  });

  it('applies limits given to the constructor', () => {
    const d = new FrameDecoder({ maxPayloadBytes: 1 * MiB });
    d.push(Buffer.concat(encodeFrame(pageRun(257).msg, pageRun(257).payload)));
    expectProtocolError(() => d.next(), 'OVERSIZED', 'exceeds limit of 1048576');
  });

  it('rejects invalid limits at construction', () => {
    expect(() => new FrameDecoder({ maxHeaderBytes: 0 })).to.throw(RangeError);
    expect(() => new FrameDecoder({ maxPayloadBytes: 2 ** 32 })).to.throw(RangeError);
  });

  it('validates a header before its payload arrives', () => {
    // PAGES claiming 2 pages with a 3-page payload: rejected on the header, payload never awaited
    const bytes = rawFrame({ t: MsgType.PAGES, b: 'ram0', p: 4096, o: [0, 4096] }, Buffer.alloc(3 * 4096));
    const d = new FrameDecoder();
    d.push(bytes.subarray(0, bytes.length - 3 * 4096));
    expectProtocolError(() => d.next(), 'MALFORMED', 'payload is 12288 bytes, message implies 8192');
  });

  it('rejects a msgpack array32 header claiming 2^32 elements without allocating them', () => {
    const before = process.memoryUsage();
    const bytes = rawFrame(null, undefined, { headerBytes: Buffer.from([0x81, 0xa1, 0x74, 0xdd, 0xff, 0xff, 0xff, 0xff, 0, 0]) });
    expectProtocolError(() => decodeAll([bytes]), 'MALFORMED', 'undecodable msgpack header');
    const after = process.memoryUsage();
    expect(after.heapUsed - before.heapUsed).to.be.lessThan(32 * MiB);
  });

  it('rejects map32, str32, bin32 and ext32 claims larger than the header', () => {
    for (const head of [
      [0xdf, 0xff, 0xff, 0xff, 0xff], // map32
      [0x81, 0xa1, 0x74, 0xdb, 0xff, 0xff, 0xff, 0xff, 0x41], // str32
      [0x81, 0xa1, 0x74, 0xc6, 0xff, 0xff, 0xff, 0xff, 0x41], // bin32
      [0x81, 0xa1, 0x74, 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 0x41], // ext32
    ]) {
      const e = protocolError(() => decodeAll([rawFrame(null, undefined, { headerBytes: Buffer.from(head) })]));
      expect(e.code).to.equal('MALFORMED');
    }
  });

  it('rejects nested arrays whose claimed lengths sum far beyond the header size', () => {
    // 20 000 nested array16 headers each claiming 20 000 elements: 60 KB of header, billions of claimed slots
    const head = Buffer.alloc(60000);
    for (let i = 0; i < 60000; i += 3) head.set([0xdc, 0x4e, 0x20], i);
    const before = process.memoryUsage().heapUsed;
    const e = protocolError(() => decodeAll([rawFrame(null, undefined, { headerBytes: head })]));
    expect(e.code).to.equal('MALFORMED');
    expect(process.memoryUsage().heapUsed - before).to.be.lessThan(64 * MiB);
  });

  it('rejects pathologically deep nesting with a ProtocolError', () => {
    const head = Buffer.alloc(65000, 0x91); // [[[[…]]]]
    head[head.length - 1] = 0x80;
    const e = protocolError(() => decodeAll([rawFrame(null, undefined, { headerBytes: head })]));
    expect(e.code).to.be.oneOf(['MALFORMED', 'OVERSIZED']);
  });
});

describe('FrameDecoder: end of stream and failures', () => {
  const bytes = Buffer.concat(encodeFrame(pageRun(1).msg, pageRun(1).payload));
  const total = bytes.length;
  const headerEnd = total - 4096;

  it('end() on a frame boundary is fine', () => {
    const d = new FrameDecoder();
    d.push(bytes);
    d.next();
    expect(() => d.end()).not.to.throw();
  });

  for (const [where, cut] of [['prefix', 5], ['header', headerEnd - 3], ['payload', total - 100]] as const) {
    it(`end() inside a frame's ${where} reports how many bytes of the frame arrived`, () => {
      const d = new FrameDecoder();
      d.push(bytes.subarray(0, cut));
      expect(d.next()).to.equal(null);
      const want = where === 'prefix' ? 12 : total;
      expectProtocolError(() => d.end(), 'TRUNCATED', `truncated frame: got ${cut} of ${want} bytes`);
    });
  }

  it('after an error the decoder keeps failing with the same error', () => {
    const d = new FrameDecoder();
    d.push(rawFrame({ t: 99 }));
    const e = protocolError(() => d.next());
    expect(protocolError(() => d.next())).to.equal(e);
    expect(protocolError(() => d.push(bytes))).to.equal(e);
    expect(protocolError(() => d.end())).to.equal(e);
  });

  it('frames before a malformed one are still delivered', () => {
    const good = concatFrames(sampleMessages());
    const d = new FrameDecoder();
    d.push(Buffer.concat([good, rawFrame(pack([1, 2]))]));
    let n = 0;
    const e = protocolError(() => {
      while (d.next()) n++;
    });
    expect(n).to.equal(sampleMessages().length);
    expect(e.message).to.match(/not a map/);
  });
});
