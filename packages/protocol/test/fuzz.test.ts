// Fuzzing the decoder: valid frames must round-trip under random chunking;
// mutated and random input must only ever raise ProtocolError (no other
// exception, no hang), and anything it does accept must be a valid message.
import { expect } from 'chai';
import { isDeepStrictEqual } from 'node:util';
import { Unpackr, pack } from 'msgpackr';
import { FrameDecoder, MsgType, ProtocolError, encodeFrame, type Frame, type Message } from '@livemig/protocol';
import { rng } from './helpers.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 20240611);
const POOL = Buffer.alloc(1 << 20);
{
  const r = rng(SEED ^ 0x5eed);
  for (let i = 0; i < POOL.length; i++) POOL[i] = (r() * 256) | 0;
}

type Rand = () => number;
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;
const NAMES = ['ram0', 'vram', 'rom.bios', 'pc-ram_1', 'x'];
const PAGE_SIZES = [4096, 8192, 65536, 2 * 1024 * 1024];

/** A random valid message and its payload. */
function randomMessage(r: Rand): { msg: Message; payload?: Buffer } {
  const ps = r() < 0.8 ? 4096 : pick(r, PAGE_SIZES);
  const off = () => int(r, 2 ** 20) * ps;
  const bytes = (n: number) => {
    const at = int(r, POOL.length - n);
    return POOL.subarray(at, at + n);
  };
  switch (int(r, 23) + 1) {
    case MsgType.SETUP:
      return { msg: {
        type: MsgType.SETUP,
        guest: { kind: pick(r, NAMES), config: r() < 0.5 ? null : { n: int(r, 1e9), s: 'x'.repeat(int(r, 20)), a: [1.5, true, null] } },
        blocks: Array.from({ length: 1 + int(r, 3) }, (_, i) => ({ name: `b${i}`, length: (1 + int(r, 1000)) * ps, pageSize: ps })),
        caps: r() < 0.5 ? ['postcopy'] : [], vcpus: 1 + int(r, 64),
      } };
    case MsgType.PAGES: {
      const n = 1 + int(r, 3);
      return { msg: { type: MsgType.PAGES, block: pick(r, NAMES), pageSize: 4096, offsets: Array.from({ length: n }, () => int(r, 2 ** 36) * 4096) }, payload: bytes(n * 4096) };
    }
    case MsgType.PAGE_RUN: {
      const n = 1 + int(r, 3);
      return { msg: { type: MsgType.PAGE_RUN, block: pick(r, NAMES), pageSize: 4096, offset: off(), count: n }, payload: bytes(n * 4096) };
    }
    case MsgType.TRIMMED_RUN: {
      const n = 1 + int(r, 3);
      const table = Buffer.alloc(2 * n);
      let units = 0;
      for (let i = 0; i < n; i++) {
        const k = int(r, 5);
        table.writeUInt16LE(k, 2 * i);
        units += k;
      }
      return { msg: { type: MsgType.TRIMMED_RUN, block: pick(r, NAMES), pageSize: 4096, offset: off(), count: n }, payload: Buffer.concat([table, bytes(units * 64)]) };
    }
    case MsgType.ZERO:
      return { msg: { type: MsgType.ZERO, block: pick(r, NAMES), pageSize: ps, runs: Array.from({ length: 1 + int(r, 5) }, () => [off(), 1 + int(r, 1000)] as [number, number]) } };
    case MsgType.DEVICE:
      return { msg: { type: MsgType.DEVICE }, payload: bytes(int(r, 300)) };
    case MsgType.ROUND:
      return { msg: { type: MsgType.ROUND, round: int(r, 100), dirtyBytes: int(r, 2 ** 40) } };
    case MsgType.ADVISE:
      return { msg: { type: MsgType.ADVISE, pageSizes: [4096, ps] } };
    case MsgType.DISCARD:
      return { msg: { type: MsgType.DISCARD, block: pick(r, NAMES), ranges: Array.from({ length: 1 + int(r, 12) }, () => [off(), (1 + int(r, 50)) * ps] as [number, number]) } };
    case MsgType.LISTEN: return { msg: { type: MsgType.LISTEN } };
    case MsgType.RUN: return { msg: { type: MsgType.RUN } };
    case MsgType.END: return { msg: { type: MsgType.END } };
    case MsgType.COMPLETE: return { msg: { type: MsgType.COMPLETE } };
    case MsgType.STOPPED: return { msg: { type: MsgType.STOPPED } };
    case MsgType.PING: return { msg: { type: MsgType.PING, id: int(r, 2 ** 32) } };
    case MsgType.PONG: return { msg: { type: MsgType.PONG, id: int(r, 2 ** 32) } };
    case MsgType.ACK: return { msg: r() < 0.5 ? { type: MsgType.ACK, of: MsgType.SETUP } : { type: MsgType.ACK, of: MsgType.ADVISE, info: { ok: true } } };
    case MsgType.REQ_PAGES: return { msg: { type: MsgType.REQ_PAGES, block: pick(r, NAMES), offset: off(), length: (1 + int(r, 256)) * 4096 } };
    case MsgType.SHUT: return { msg: r() < 0.5 ? { type: MsgType.SHUT, status: 'ok' } : { type: MsgType.SHUT, status: 'failed', reason: 'boom' } };
    case MsgType.RECV_BITMAP: {
      const pages = 1 + int(r, 2000);
      return { msg: { type: MsgType.RECV_BITMAP, block: pick(r, NAMES), pages }, payload: bytes(Math.ceil(pages / 8)) };
    }
    case MsgType.RESUME: return { msg: { type: MsgType.RESUME } };
    case MsgType.RESUME_ACK: return { msg: { type: MsgType.RESUME_ACK } };
    default: return { msg: { type: MsgType.ERROR, reason: 'no such block', code: 'UNKNOWN_BLOCK' } };
  }
}

/** Random msgpack-able junk, biased towards edge values. */
function junk(r: Rand, depth = 0): unknown {
  switch (int(r, depth > 2 ? 8 : 11)) {
    case 0: return pick(r, [0, -1, 1, 4095, 4096, 2 ** 31, 2 ** 32, 2 ** 32 - 1, 2 ** 48, 2 ** 53, -(2 ** 53), 2 ** 64]);
    case 1: return int(r, 2 ** 20) * 4096;
    case 2: return pick(r, [0.5, NaN, Infinity, -Infinity, -0, 1e300]);
    case 3: return 'x'.repeat(pick(r, [0, 1, 64, 65, 4096, 4097]));
    case 4: return pick(r, ['ram0', 'ok', 'failed', '', '__proto__', 'ram 0', '\u0000']);
    case 5: return pick(r, [null, true, false, undefined]);
    case 6: return Buffer.from([1, 2, 3]);
    case 7: return BigInt(2) ** BigInt(int(r, 64)) - BigInt(1);
    case 8: return Array.from({ length: int(r, 14) }, () => junk(r, depth + 1));
    case 9: return Object.fromEntries(Array.from({ length: int(r, 4) }, () => [pick(r, ['t', 'b', 'o', 'p', 'n', 'r', 'i', 'zz']), junk(r, depth + 1)]));
    default: return [int(r, 2 ** 20) * 4096, pick(r, [0, 1, 4096, 8192, -4096])];
  }
}

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xc0, 0xc1, 0xc4, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd8, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff];

/** One mutated frame (or stream fragment) derived from a valid one. */
function mutate(r: Rand, valid: Buffer, payload?: Buffer): Buffer {
  const headerEnd = 12 + valid.readUInt32LE(0);
  const b = Buffer.from(valid);
  switch (int(r, 9)) {
    case 0: { // flip bits, mostly in prefix + header
      for (let k = 1 + int(r, 4); k > 0; k--) b[int(r, Math.min(b.length, headerEnd + 8))]! ^= 1 << int(r, 8);
      return b;
    }
    case 1: { // interesting byte values in the header
      for (let k = 1 + int(r, 3); k > 0; k--) b[12 + int(r, headerEnd - 12)] = pick(r, INTERESTING);
      return b;
    }
    case 2: // truncate
      return b.subarray(0, int(r, b.length));
    case 3: { // insert random bytes
      const at = int(r, b.length);
      const ins = POOL.subarray(int(r, 1000), int(r, 1000) + 1 + int(r, 20));
      return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
    }
    case 4: { // random header bytes with a consistent prefix
      const h = POOL.subarray(int(r, 100000), int(r, 100000) + 1 + int(r, 64));
      const p = Buffer.alloc(12);
      p.writeUInt32LE(h.length, 0);
      p.writeUInt32LE(int(r, 3) === 0 ? int(r, 5000) : 0, 4);
      return Buffer.concat([p, h, POOL.subarray(0, p.readUInt32LE(4))]);
    }
    case 5: { // random prefix values
      b.writeUInt32LE(pick(r, [0, 1, 11, 65535, 65536, 65537, 2 ** 24, 0xffffffff, int(r, 2 ** 32)]), 4 * int(r, 3));
      return b;
    }
    case 6: { // a header field replaced by junk (type confusion), re-packed
      const wire = { ...(decodeHeader(valid) as Record<string, unknown>) };
      const keys = Object.keys(wire);
      const k = r() < 0.15 ? pick(r, ['zz', 't', '__proto__']) : pick(r, keys);
      if (r() < 0.1) delete wire[k];
      else Object.defineProperty(wire, k, { value: junk(r), enumerable: true, writable: true, configurable: true }); // own "__proto__" too
      return frameOf(pack(wire), payload);
    }
    case 7: { // payload length off by a little
      b.writeUInt32LE(Math.max(0, b.readUInt32LE(4) + pick(r, [-1, 1, -4096, 4096])), 4);
      return b;
    }
    default: { // whole-header junk
      return frameOf(pack(junk(r)), r() < 0.5 ? undefined : payload);
    }
  }
}

function frameOf(header: Buffer, payload?: Buffer): Buffer {
  const p = Buffer.alloc(12);
  p.writeUInt32LE(header.length, 0);
  p.writeUInt32LE(payload?.length ?? 0, 4);
  return Buffer.concat([p, header, payload ?? Buffer.alloc(0)]);
}

const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' });
function decodeHeader(frame: Buffer): unknown {
  return unpackr.unpack(frame.subarray(12, 12 + frame.readUInt32LE(0)));
}

/** Feed bytes to a fresh decoder in random chunks; returns frames, or the ProtocolError. Any other throw fails the test. */
function feed(r: Rand, bytes: Buffer, ctx: () => string): { frames: Frame[]; error?: ProtocolError } {
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  // 1-byte chunks only for short inputs (they cost one segment per payload byte)
  const maxChunk = bytes.length < 2000 && r() < 0.2 ? 1 : pick(r, [7, 64, 1000, 100000]);
  try {
    for (let at = 0; at < bytes.length;) {
      const n = 1 + int(r, maxChunk);
      d.push(bytes.subarray(at, at + n));
      at += n;
      for (let f = d.next(); f; f = d.next()) frames.push(f);
    }
    d.end();
    return { frames };
  } catch (e) {
    if (e instanceof ProtocolError) return { frames, error: e };
    throw new Error(`non-ProtocolError ${(e as Error)?.name}: ${(e as Error)?.message} on input ${bytes.subarray(0, 200).toString('hex')} (${ctx()})`);
  }
}

describe('fuzz', function () {
  this.timeout(60000);
  let total = 0;

  it(`valid frames round-trip under random chunking (seed ${SEED})`, () => {
    const r = rng(SEED);
    const BATCH = 400;
    let n = 0;
    for (let batch = 0; batch < 100; batch++) {
      const items = Array.from({ length: BATCH }, () => randomMessage(r));
      const stream = Buffer.concat(items.flatMap((s) => encodeFrame(s.msg, s.payload)));
      const { frames, error } = feed(r, stream, () => `valid batch ${batch}`);
      expect(error, error?.message).to.equal(undefined);
      expect(frames.length).to.equal(BATCH);
      for (let i = 0; i < BATCH; i++) {
        const f = frames[i]!;
        const want = items[i]!;
        if (!isDeepStrictEqual(f.msg, want.msg)) expect(f.msg).to.deep.equal(want.msg);
        const got = f.payload.segments.length === 1 ? f.payload.segments[0]! : Buffer.concat(f.payload.segments);
        if (!got.equals(want.payload ?? Buffer.alloc(0))) expect.fail(`payload of frame ${i} in batch ${batch} differs`);
      }
      n += BATCH;
    }
    total += n;
    expect(n).to.be.at.least(40000);
  });

  it(`mutated frames raise only ProtocolError, and whatever decodes is valid (seed ${SEED})`, () => {
    const r = rng(SEED + 1);
    let rejected = 0;
    let accepted = 0;
    const codes = new Map<string, number>();
    const N = 50000;
    for (let i = 0; i < N; i++) {
      const s = randomMessage(r);
      const valid = Buffer.concat(encodeFrame(s.msg, s.payload));
      const bytes = mutate(r, valid, s.payload);
      const { frames, error } = feed(r, bytes, () => `mutation ${i}`);
      if (error) {
        rejected++;
        codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
      }
      for (const f of frames) {
        accepted++;
        encodeFrame(f.msg, f.payload.segments); // re-validates: throws if an invalid message got through
      }
    }
    total += N;
    expect(rejected).to.be.greaterThan(N / 2);
    expect(accepted).to.be.greaterThan(0);
    expect([...codes.keys()]).to.include.members(['MALFORMED', 'OVERSIZED', 'TRUNCATED', 'RANGE', 'ALIGN']);
  });

  it(`random byte streams raise only ProtocolError (seed ${SEED})`, () => {
    const r = rng(SEED + 2);
    const N = 15000;
    for (let i = 0; i < N; i++) {
      const len = 1 + int(r, 200);
      const at = int(r, POOL.length - len);
      const bytes = Buffer.from(POOL.subarray(at, at + len));
      if (r() < 0.7 && len >= 4) bytes.writeUInt32LE(int(r, len + 4), 0); // plausible header length
      if (r() < 0.7 && len >= 12) bytes.writeUInt32LE(int(r, 64), 4);
      if (r() < 0.7 && len >= 12) bytes.writeUInt32LE(0, 8);
      feed(r, bytes, () => `random ${i}`);
    }
    total += N;
  });

  it('fed at least 100 000 frames in total', () => {
    expect(total).to.be.at.least(100000);
  });
});
