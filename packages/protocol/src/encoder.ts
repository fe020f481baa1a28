/**
 * encoder.ts — owns turning messages into frame bytes: validates the message,
 * packs its header with one reused msgpackr Packr, and writes the 12-byte prefix
 * in front of it in the same buffer. Payload bytes are never copied or packed:
 * the caller writes them after the header (cork/writev).
 */
import { Packr, RESERVE_START_SPACE } from 'msgpackr';
import { ProtocolError } from './errors.js';
import { PREFIX_BYTES, resolveLimits, type Limits } from './frame.js';
import { msgTypeName, type Message } from './messages.js';
import { expectedPayloadLength, validateMessage } from './validate.js';
import { toWire } from './wire.js';

const packr = new Packr({ useRecords: false, structuredClone: false });

export class FrameEncoder {
  readonly limits: Limits;
  constructor(limits?: Partial<Limits>) {
    this.limits = resolveLimits(limits);
  }

  /**
   * Prefix + header bytes for `msg`. `payloadLength` defaults to what the
   * message implies (PAGES: offsets × pageSize, PAGE_RUN: count × pageSize,
   * RECV_BITMAP: ceil(pages / 8), others 0); it is required for DEVICE.
   * Throws ProtocolError if the message is invalid or exceeds the limits.
   */
  encodeHeader(msg: Message, payloadLength?: number): Buffer {
    const implied = expectedPayloadLength(msg);
    const len = payloadLength ?? (implied < 0 ? 0 : implied);
    if (!Number.isSafeInteger(len) || len < 0) throw new ProtocolError('RANGE', `payload length ${len} is not a non-negative integer`);
    validateMessage(msg, len);
    if (len > this.limits.maxPayloadBytes)
      throw new ProtocolError('OVERSIZED', `${msgTypeName(msg.type)}: payload of ${len} bytes exceeds limit of ${this.limits.maxPayloadBytes}`);
    let buf: Buffer;
    try {
      buf = packr.pack(toWire(msg), RESERVE_START_SPACE | PREFIX_BYTES);
    } catch (e) {
      throw new ProtocolError('MALFORMED', `${msgTypeName(msg.type)}: cannot encode header: ${(e as Error)?.message ?? e}`);
    }
    const headerLength = buf.length - PREFIX_BYTES;
    if (headerLength > this.limits.maxHeaderBytes)
      throw new ProtocolError('OVERSIZED', `${msgTypeName(msg.type)}: header of ${headerLength} bytes exceeds limit of ${this.limits.maxHeaderBytes}`);
    buf.writeUInt32LE(headerLength, 0);
    buf.writeUInt32LE(len, 4);
    buf.writeUInt32LE(0, 8);
    return buf;
  }

  /** `[header, ...payload]`, ready for writev; checks the payload size matches. */
  encodeFrame(msg: Message, payload?: Buffer | readonly Buffer[]): Buffer[] {
    if (payload === undefined) return [this.encodeHeader(msg)];
    if (Buffer.isBuffer(payload)) return [this.encodeHeader(msg, payload.length), payload];
    let len = 0;
    for (let i = 0; i < payload.length; i++) len += payload[i]!.length;
    const out: Buffer[] = new Array(payload.length + 1);
    out[0] = this.encodeHeader(msg, len);
    for (let i = 0; i < payload.length; i++) out[i + 1] = payload[i]!;
    return out;
  }
}

const defaultEncoder = new FrameEncoder();

/** Prefix + header for `msg` with default limits; see FrameEncoder.encodeHeader. */
export function encodeHeader(msg: Message, payloadLength?: number): Buffer {
  return defaultEncoder.encodeHeader(msg, payloadLength);
}

/** `[header, ...payload]` with default limits; see FrameEncoder.encodeFrame. */
export function encodeFrame(msg: Message, payload?: Buffer | readonly Buffer[]): Buffer[] {
  return defaultEncoder.encodeFrame(msg, payload);
}
