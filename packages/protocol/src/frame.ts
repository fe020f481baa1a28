/**
 * frame.ts — owns the frame layout and its size limits.
 *
 * A frame is a 12-byte prefix, a msgpack header, then a raw payload:
 *
 *   offset 0  u32 LE  headerLength   (1 .. limits.maxHeaderBytes)
 *   offset 4  u32 LE  payloadLength  (0 .. limits.maxPayloadBytes)
 *   offset 8  u32 LE  flags          (must be 0; reserved)
 *   offset 12 headerLength bytes: msgpack map with numeric `t` = MsgType
 *   then      payloadLength raw bytes (page contents, device state, bitmap)
 *
 * Payload bytes never go through msgpack.
 */
import { ProtocolError } from './errors.js';
import type { Message } from './messages.js';
import type { Payload } from './payload.js';

export const PREFIX_BYTES = 12;

export interface Limits {
  /** Largest msgpack header accepted (default 64 KiB). */
  maxHeaderBytes: number;
  /** Largest raw payload accepted (default 16 MiB). */
  maxPayloadBytes: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxHeaderBytes: 64 * 1024,
  maxPayloadBytes: 16 * 1024 * 1024,
});

/** A decoded frame: validated message plus zero-copy payload segments. */
export interface Frame<M extends Message = Message> {
  msg: M;
  payload: Payload;
}

/** Fill in defaults and check a (partial) limits object. */
export function resolveLimits(l?: Partial<Limits>): Limits {
  const r: Limits = {
    maxHeaderBytes: l?.maxHeaderBytes ?? DEFAULT_LIMITS.maxHeaderBytes,
    maxPayloadBytes: l?.maxPayloadBytes ?? DEFAULT_LIMITS.maxPayloadBytes,
  };
  if (!Number.isInteger(r.maxHeaderBytes) || r.maxHeaderBytes < 16 || r.maxHeaderBytes > 16 * 1024 * 1024)
    throw new RangeError(`maxHeaderBytes must be an integer in 16 .. 16 MiB, got ${r.maxHeaderBytes}`);
  if (!Number.isInteger(r.maxPayloadBytes) || r.maxPayloadBytes < 0 || r.maxPayloadBytes > 0xffffffff)
    throw new RangeError(`maxPayloadBytes must be an integer in 0 .. 2^32-1, got ${r.maxPayloadBytes}`);
  return r;
}

/** Check a decoded prefix against limits; throws before anything is allocated. */
export function checkPrefix(headerLength: number, payloadLength: number, flags: number, limits: Limits): void {
  if (flags !== 0) throw new ProtocolError('MALFORMED', `frame flags must be 0, got 0x${flags.toString(16)}`);
  if (headerLength === 0) throw new ProtocolError('MALFORMED', 'frame header length is 0');
  if (headerLength > limits.maxHeaderBytes)
    throw new ProtocolError('OVERSIZED', `frame header of ${headerLength} bytes exceeds limit of ${limits.maxHeaderBytes}`);
  if (payloadLength > limits.maxPayloadBytes)
    throw new ProtocolError('OVERSIZED', `frame payload of ${payloadLength} bytes exceeds limit of ${limits.maxPayloadBytes}`);
}
