/**
 * decoder.ts — owns `FrameDecoder`, the incremental stream decoder: accepts TCP
 * chunks of any size, parses prefix and header (copying only those, and only
 * when they straddle chunks), validates them, and hands out payloads as
 * zero-copy segments of the pushed chunks. Pull-based: push() then next().
 */
import { Unpackr } from 'msgpackr';
import { allowedOn, isChannelRole, type ChannelRole } from './channels.js';
import { ProtocolError } from './errors.js';
import { PREFIX_BYTES, checkPrefix, resolveLimits, type Frame, type Limits } from './frame.js';
import { msgTypeName, type Message } from './messages.js';
import { EMPTY_PAYLOAD, type Payload } from './payload.js';
import { validateMessage } from './validate.js';
import { fromWire } from './wire.js';

export interface DecoderOptions extends Partial<Limits> {
  /** When set, messages not allowed on this channel role are rejected ('UNEXPECTED'). */
  role?: ChannelRole;
}

// copyBuffers: a `bin` in a header must not alias a reusable scratch buffer.
// structuredClone: false disables msgpackr's reference extensions.
const unpackr = new Unpackr({
  useRecords: false, mapsAsObjects: true, int64AsType: 'number', copyBuffers: true, structuredClone: false,
});

const STAGE_PREFIX = 0;
const STAGE_HEADER = 1;
const STAGE_PAYLOAD = 2;

/** Decode a complete msgpack header held in buf[start, end). Only ProtocolError escapes. */
export function decodeHeaderBytes(buf: Buffer, start: number, end: number): unknown {
  try {
    return unpackr.unpack(buf, { start, end });
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new ProtocolError('MALFORMED', `undecodable msgpack header: ${why.slice(0, 200)}`);
  }
}

export class FrameDecoder {
  readonly limits: Limits;
  readonly role: ChannelRole | undefined;
  private chunks: (Buffer | undefined)[] = [];
  private head = 0; // index of the first unconsumed chunk
  private off = 0; // bytes of chunks[head] already consumed
  private buffered = 0; // unconsumed bytes in the queue
  private stage = STAGE_PREFIX;
  private headerLength = 0;
  private payloadLength = 0;
  private msg: Message | null = null;
  private failure: ProtocolError | null = null;
  private readonly prefix = Buffer.alloc(PREFIX_BYTES);
  private scratch = Buffer.alloc(0);

  constructor(options?: DecoderOptions) {
    this.limits = resolveLimits(options);
    if (options?.role !== undefined && !isChannelRole(options.role)) throw new TypeError(`unknown channel role ${String(options.role)}`);
    this.role = options?.role;
  }

  /** Unconsumed bytes held (including the unread part of a frame in progress). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /**
   * Queue a received chunk. It is referenced, not copied: do not modify it afterwards. A chunk
   * that continues the previous one in memory (reads into a ReadRing) joins it, so a payload
   * spanning several reads is still one segment.
   */
  push(chunk: Buffer | Uint8Array): void {
    if (this.failure) throw this.failure;
    const len = chunk.length;
    if (len === 0) return;
    const chunks = this.chunks;
    const last = chunks.length > this.head ? chunks[chunks.length - 1]! : undefined;
    if (last !== undefined && last.buffer === chunk.buffer && last.byteOffset + last.length === chunk.byteOffset) {
      chunks[chunks.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + len);
    } else {
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, len));
    }
    this.buffered += len;
  }

  /**
   * The next complete frame, or null if more bytes are needed. Throws
   * ProtocolError on malformed input; after that the decoder stays failed and
   * rethrows the same error.
   */
  next(): Frame | null {
    if (this.failure) throw this.failure;
    try {
      return this.step();
    } catch (e) {
      this.failure = e instanceof ProtocolError ? e : new ProtocolError('MALFORMED', `decoder failure: ${(e as Error)?.message ?? e}`);
      throw this.failure;
    }
  }

  /** Declare the stream finished (after next() returned null): throws
   *  ProtocolError('TRUNCATED') if a partial frame remains. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.stage === STAGE_PREFIX && this.buffered === 0) return;
    let got: number;
    let want: number;
    if (this.stage === STAGE_PREFIX) {
      got = this.buffered;
      want = PREFIX_BYTES;
    } else if (this.stage === STAGE_HEADER) {
      got = PREFIX_BYTES + this.buffered;
      want = PREFIX_BYTES + this.headerLength + this.payloadLength;
    } else {
      got = PREFIX_BYTES + this.headerLength + this.buffered;
      want = PREFIX_BYTES + this.headerLength + this.payloadLength;
    }
    this.failure = new ProtocolError('TRUNCATED', `truncated frame: got ${got} of ${want} bytes`);
    throw this.failure;
  }

  private step(): Frame | null {
    if (this.stage === STAGE_PREFIX) {
      if (this.buffered < PREFIX_BYTES) return null;
      const c = this.chunks[this.head]!;
      let hl: number, pl: number, fl: number;
      if (c.length - this.off >= PREFIX_BYTES) {
        const o = this.off;
        hl = c.readUInt32LE(o);
        pl = c.readUInt32LE(o + 4);
        fl = c.readUInt32LE(o + 8);
        this.skip(PREFIX_BYTES);
      } else {
        this.copyOut(this.prefix, PREFIX_BYTES);
        hl = this.prefix.readUInt32LE(0);
        pl = this.prefix.readUInt32LE(4);
        fl = this.prefix.readUInt32LE(8);
      }
      checkPrefix(hl, pl, fl, this.limits); // before any allocation sized by these
      this.headerLength = hl;
      this.payloadLength = pl;
      this.stage = STAGE_HEADER;
    }
    if (this.stage === STAGE_HEADER) {
      const hl = this.headerLength;
      if (this.buffered < hl) return null;
      const c = this.chunks[this.head]!;
      let raw: unknown;
      if (c.length - this.off >= hl) {
        raw = decodeHeaderBytes(c, this.off, this.off + hl);
        this.skip(hl);
      } else {
        if (this.scratch.length < hl) this.scratch = Buffer.allocUnsafe(Math.max(hl, 4096));
        this.copyOut(this.scratch, hl);
        raw = decodeHeaderBytes(this.scratch, 0, hl);
      }
      const msg = fromWire(raw);
      if (this.role !== undefined && !allowedOn(this.role, msg.type))
        throw new ProtocolError('UNEXPECTED', `${msgTypeName(msg.type)} is not allowed on the ${this.role} channel`);
      validateMessage(msg, this.payloadLength);
      this.msg = msg;
      this.stage = STAGE_PAYLOAD;
    }
    const pl = this.payloadLength;
    if (this.buffered < pl) return null;
    const payload = pl === 0 ? EMPTY_PAYLOAD : this.takeSegments(pl);
    const msg = this.msg!;
    this.msg = null;
    this.stage = STAGE_PREFIX;
    return { msg, payload };
  }

  /** Advance n bytes (n ≤ bytes left in the head chunk). */
  private skip(n: number): void {
    this.off += n;
    this.buffered -= n;
    if (this.off === this.chunks[this.head]!.length) this.dropHead();
  }

  private dropHead(): void {
    this.chunks[this.head++] = undefined;
    this.off = 0;
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }

  /** Copy the next n buffered bytes into dst[0, n) and consume them. */
  private copyOut(dst: Buffer, n: number): void {
    let at = 0;
    while (at < n) {
      const c = this.chunks[this.head]!;
      const take = Math.min(c.length - this.off, n - at);
      c.copy(dst, at, this.off, this.off + take);
      at += take;
      this.skip(take);
    }
  }

  /** The next n buffered bytes as zero-copy views of the chunks, consumed. */
  private takeSegments(n: number): Payload {
    const segments: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const c = this.chunks[this.head]!;
      const avail = c.length - this.off;
      if (avail <= need) {
        segments.push(this.off === 0 ? c : c.subarray(this.off));
        need -= avail;
        this.buffered -= avail;
        this.dropHead();
      } else {
        segments.push(c.subarray(this.off, this.off + need));
        this.off += need;
        this.buffered -= need;
        need = 0;
      }
    }
    return { length: n, segments };
  }
}
