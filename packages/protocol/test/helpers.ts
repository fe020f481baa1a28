// Shared fixtures for the protocol tests: sample messages of every type, a
// seeded PRNG, raw-frame builders that bypass the encoder's checks, and a
// decode-everything helper.
import { pack } from 'msgpackr';
import { expect } from 'chai';
import {
  FrameDecoder, MsgType, ProtocolError, encodeFrame, payloadToBuffer,
  type DecoderOptions, type Frame, type Message, type ProtocolErrorCode,
} from '@livemig/protocol';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(n: number, rand: () => number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rand() * 256) | 0;
  return b;
}

/** Bytes 0..n-1 with a recognisable pattern per page. */
export function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed + (i >> 12)) & 0xff;
  return b;
}

export interface Sample {
  msg: Message;
  payload?: Buffer;
}

/** One valid instance of every message type (with payloads where the type has one). */
export function sampleMessages(): Sample[] {
  return [
    {
      msg: {
        type: MsgType.SETUP,
        guest: { kind: 'toy-guest', config: { mem: 1073741824, nested: { list: [1, 'two', true, null], f: 1.5 } } },
        blocks: [
          { name: 'ram0', length: 1 * GiB, pageSize: 4096 },
          { name: 'vram.1', length: 64 * MiB, pageSize: 2 * MiB },
        ],
        caps: ['postcopy', 'preempt', 'zero-runs'],
        vcpus: 2,
      },
    },
    { msg: { type: MsgType.PAGES, block: 'ram0', pageSize: 4096, offsets: [0, 40960, 8192] }, payload: pattern(3 * 4096) },
    { msg: { type: MsgType.PAGE_RUN, block: 'ram0', pageSize: 4096, offset: 2 ** 40, count: 4 }, payload: pattern(4 * 4096, 2) },
    {
      msg: { type: MsgType.TRIMMED_RUN, block: 'ram0', pageSize: 4096, offset: 8192, count: 3 },
      // kept units 1, 0, 2: a 6-byte table, then 64 + 128 bytes
      payload: Buffer.concat([Buffer.from([1, 0, 0, 0, 2, 0]), pattern(3 * 64, 3)]),
    },
    { msg: { type: MsgType.ZERO, block: 'ram0', pageSize: 4096, runs: [[0, 1], [8192, 300], [2 ** 47, 1]] } },
    { msg: { type: MsgType.DEVICE }, payload: pack({ cpu: [{ pc: 1234 }], tick: 99 }) },
    { msg: { type: MsgType.ROUND, round: 3, dirtyBytes: 123 * 4096 } },
    { msg: { type: MsgType.ADVISE, pageSizes: [4096, 2 * MiB] } },
    { msg: { type: MsgType.DISCARD, block: 'ram0', ranges: [[0, 4096], [81920, 3 * 4096]] } },
    { msg: { type: MsgType.LISTEN } },
    { msg: { type: MsgType.RUN } },
    { msg: { type: MsgType.END } },
    { msg: { type: MsgType.COMPLETE } },
    { msg: { type: MsgType.STOPPED } },
    { msg: { type: MsgType.PING, id: 7 } },
    { msg: { type: MsgType.PONG, id: 0xffffffff } },
    { msg: { type: MsgType.ACK, of: MsgType.SETUP, info: { uffd: true, features: 0x1ffff } } },
    { msg: { type: MsgType.REQ_PAGES, block: 'ram0', offset: 4096 * 77, length: 64 * KiB } },
    { msg: { type: MsgType.SHUT, status: 'failed', reason: 'guest crashed' } },
    { msg: { type: MsgType.RECV_BITMAP, block: 'ram0', pages: 21 }, payload: Buffer.from([0xff, 0x0f, 0x1f]) },
    { msg: { type: MsgType.RESUME } },
    { msg: { type: MsgType.RESUME_ACK } },
    { msg: { type: MsgType.ERROR, reason: 'unknown RAM block "foo"', code: 'UNKNOWN_BLOCK' } },
  ];
}

export function concatFrames(samples: Sample[]): Buffer {
  return Buffer.concat(samples.flatMap((s) => encodeFrame(s.msg, s.payload)));
}

/** Split a buffer into chunks of the given sizes (cycling), as subarrays. */
export function chunk(buf: Buffer, sizeOf: (i: number) => number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0, i = 0; at < buf.length; i++) {
    const n = Math.max(1, sizeOf(i));
    out.push(buf.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** Push all chunks, collecting frames as they complete; calls end(). */
export function decodeAll(chunks: Buffer[], opts?: DecoderOptions): Frame[] {
  const d = new FrameDecoder(opts);
  const frames: Frame[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let f = d.next(); f; f = d.next()) frames.push(f);
  }
  d.end();
  return frames;
}

/** A frame built from an arbitrary header value, bypassing the encoder's checks. */
export function rawFrame(header: unknown, payload: Buffer = Buffer.alloc(0), opts: { flags?: number; headerBytes?: Buffer } = {}): Buffer {
  const h = opts.headerBytes ?? pack(header);
  const prefix = Buffer.alloc(12);
  prefix.writeUInt32LE(h.length, 0);
  prefix.writeUInt32LE(payload.length, 4);
  prefix.writeUInt32LE(opts.flags ?? 0, 8);
  return Buffer.concat([prefix, h, payload]);
}

export function prefix(headerLength: number, payloadLength: number, flags = 0): Buffer {
  const p = Buffer.alloc(12);
  p.writeUInt32LE(headerLength, 0);
  p.writeUInt32LE(payloadLength, 4);
  p.writeUInt32LE(flags, 8);
  return p;
}

/** Run fn and return the ProtocolError it throws (failing if it throws anything else or nothing). */
export function protocolError(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e;
    throw new Error(`expected a ProtocolError, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
  throw new Error('expected a ProtocolError, nothing was thrown');
}

export function expectProtocolError(fn: () => unknown, code: ProtocolErrorCode, message: RegExp | string): ProtocolError {
  const e = protocolError(fn);
  expect(e.code, `code of "${e.message}"`).to.equal(code);
  if (typeof message === 'string') expect(e.message).to.include(message);
  else expect(e.message).to.match(message);
  return e;
}

/** Decode a single raw frame with a fresh decoder. */
export function decodeOne(bytes: Buffer, opts?: DecoderOptions): Frame {
  const d = new FrameDecoder(opts);
  d.push(bytes);
  const f = d.next();
  if (!f) throw new Error('no frame decoded');
  return f;
}

export function payloadBytes(f: Frame): Buffer {
  return payloadToBuffer(f.payload);
}
