/**
 * errors.ts — owns `ProtocolError`, the only exception type the protocol package
 * throws for bad input (hello, frames, headers, block layout, discard ordering).
 */

/** Machine-readable reason attached to every ProtocolError. */
export type ProtocolErrorCode =
  | 'BAD_MAGIC' // hello does not start with "LVMG"
  | 'VERSION' // unsupported protocol version
  | 'UUID' // migration UUID malformed or mismatched
  | 'ROLE' // channel role invalid or mismatched
  | 'TRUNCATED' // stream ended inside a hello or frame
  | 'OVERSIZED' // a length or count exceeds a limit
  | 'MALFORMED' // wrong type, unknown field, undecodable msgpack
  | 'UNEXPECTED' // message type not allowed on this channel
  | 'UNKNOWN_BLOCK' // RAM block name not in the block table
  | 'RANGE' // number out of its allowed range
  | 'ALIGN' // offset/length not aligned to the page size
  | 'ORDER'; // out-of-order input (e.g. discard ranges going backwards)

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

/** Hex formatting used in error messages (`0x1000`). */
export function hex(n: number): string {
  return Number.isFinite(n) && Number.isInteger(n) && n >= 0 ? '0x' + n.toString(16) : String(n);
}

/** Short, safe rendering of an arbitrary decoded value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  switch (typeof v) {
    case 'number':
      return String(v);
    case 'bigint':
      return `${v}n`;
    case 'boolean':
      return String(v);
    case 'string':
      return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
    case 'object':
      if (Array.isArray(v)) return `array(${v.length})`;
      if (v instanceof Uint8Array) return `bytes(${v.length})`;
      return Object.getPrototypeOf(v) === Object.prototype ? 'map' : `object ${(v as object).constructor?.name ?? '?'}`;
    default:
      return typeof v;
  }
}
