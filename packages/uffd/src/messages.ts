/**
 * messages.ts — owns the layout of `struct uffd_msg` (32 bytes, packed) as read from a
 * userfaultfd: the event codes, the page-fault flags, the zero-allocation field readers for hot
 * loops, and the decoder into plain objects for everything else.
 */

/** Size of one `uffd_msg`. */
export const UFFD_MSG_SIZE = 32;

export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;

export const UFFD_PAGEFAULT_FLAG_WRITE = 1;
export const UFFD_PAGEFAULT_FLAG_WP = 2;
export const UFFD_PAGEFAULT_FLAG_MINOR = 4;

const TWO32 = 4294967296;

function u64(buf: Uint8Array, off: number): number {
  const b = buf;
  const lo = (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
  const hi = (b[off + 4]! | (b[off + 5]! << 8) | (b[off + 6]! << 16) | (b[off + 7]! << 24)) >>> 0;
  return hi * TWO32 + lo;
}

function u32(buf: Uint8Array, off: number): number {
  return (buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24)) >>> 0;
}

/** Event code (`UFFD_EVENT_*`) of message `i` in `buf`. */
export function msgEvent(buf: Uint8Array, i: number): number {
  return buf[i * UFFD_MSG_SIZE]!;
}

/** Faulting address of page-fault message `i` (page-aligned unless EXACT_ADDRESS was granted). */
export function faultAddress(buf: Uint8Array, i: number): number {
  return u64(buf, i * UFFD_MSG_SIZE + 16);
}

/** Faulting thread id of page-fault message `i` (0 unless THREAD_ID was granted). */
export function faultTid(buf: Uint8Array, i: number): number {
  return u32(buf, i * UFFD_MSG_SIZE + 24);
}

/** Flags (`UFFD_PAGEFAULT_FLAG_*`) of page-fault message `i`. */
export function faultFlags(buf: Uint8Array, i: number): number {
  return u32(buf, i * UFFD_MSG_SIZE + 8);
}

/** First u64 argument of a non-fault message (`remove.start`, `unmap.start`, `remap.from`, `fork.ufd`). */
export function msgArg0(buf: Uint8Array, i: number): number {
  return u64(buf, i * UFFD_MSG_SIZE + 8);
}

/** Second u64 argument (`remove.end`, `unmap.end`, `remap.to`). */
export function msgArg1(buf: Uint8Array, i: number): number {
  return u64(buf, i * UFFD_MSG_SIZE + 16);
}

/** Third u64 argument (`remap.len`). */
export function msgArg2(buf: Uint8Array, i: number): number {
  return u64(buf, i * UFFD_MSG_SIZE + 24);
}

export interface PagefaultMessage {
  event: 'pagefault';
  /** `UFFD_PAGEFAULT_FLAG_*` bits. */
  flags: number;
  address: number;
  /** Faulting thread id (0 without THREAD_ID). */
  ptid: number;
  write: boolean;
  wp: boolean;
  minor: boolean;
}
export interface ForkMessage { event: 'fork'; /** The child's new userfaultfd, now open in this process: close it. */ ufd: number }
export interface RemapMessage { event: 'remap'; from: number; to: number; len: number }
export interface RemoveMessage { event: 'remove'; start: number; end: number }
export interface UnmapMessage { event: 'unmap'; start: number; end: number }
export interface UnknownMessage { event: 'unknown'; code: number }
export type UffdMessage = PagefaultMessage | ForkMessage | RemapMessage | RemoveMessage | UnmapMessage | UnknownMessage;

/** Decodes message `i` of `buf` into a plain object. */
export function decodeMessage(buf: Uint8Array, i: number): UffdMessage {
  const code = msgEvent(buf, i);
  switch (code) {
    case UFFD_EVENT_PAGEFAULT: {
      const flags = faultFlags(buf, i);
      return {
        event: 'pagefault',
        flags,
        address: faultAddress(buf, i),
        ptid: faultTid(buf, i),
        write: (flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0,
        wp: (flags & UFFD_PAGEFAULT_FLAG_WP) !== 0,
        minor: (flags & UFFD_PAGEFAULT_FLAG_MINOR) !== 0,
      };
    }
    case UFFD_EVENT_FORK:
      return { event: 'fork', ufd: u32(buf, i * UFFD_MSG_SIZE + 8) };
    case UFFD_EVENT_REMAP:
      return { event: 'remap', from: msgArg0(buf, i), to: msgArg1(buf, i), len: msgArg2(buf, i) };
    case UFFD_EVENT_REMOVE:
      return { event: 'remove', start: msgArg0(buf, i), end: msgArg1(buf, i) };
    case UFFD_EVENT_UNMAP:
      return { event: 'unmap', start: msgArg0(buf, i), end: msgArg1(buf, i) };
    default:
      return { event: 'unknown', code };
  }
}

/** Decodes the first `count` messages of `buf`. */
export function decodeMessages(buf: Uint8Array, count: number): UffdMessage[] {
  const out: UffdMessage[] = new Array(count);
  for (let i = 0; i < count; i++) out[i] = decodeMessage(buf, i);
  return out;
}
