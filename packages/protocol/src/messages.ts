/**
 * messages.ts — owns the message vocabulary: the `MsgType` codes, the TypeScript
 * shape of every message (a discriminated union on `type`), and protocol-wide
 * constants bounding message contents. Wire encoding lives in wire.ts, checks in
 * validate.ts.
 */

/** Message type codes (the `t` field of every header). */
export const MsgType = {
  // main channel, source → destination
  SETUP: 1,
  PAGES: 2,
  PAGE_RUN: 3,
  ZERO: 4,
  DEVICE: 5,
  ROUND: 6,
  ADVISE: 7,
  DISCARD: 8,
  LISTEN: 9,
  RUN: 10,
  END: 11,
  COMPLETE: 12,
  // any channel
  PING: 13,
  PONG: 14,
  // return path, destination → source
  ACK: 15,
  REQ_PAGES: 16,
  SHUT: 17,
  RECV_BITMAP: 18,
  // recovery
  RESUME: 19,
  RESUME_ACK: 20,
  // any channel
  ERROR: 21,
  // main channel, source → destination
  STOPPED: 22,
  TRIMMED_RUN: 23,
} as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];
export type MsgTypeName = keyof typeof MsgType;

const NAMES: string[] = [];
for (const [k, v] of Object.entries(MsgType)) NAMES[v] = k;

/** All message type codes, ascending. */
export const ALL_MSG_TYPES: readonly MsgType[] = Object.values(MsgType);

/** True when `t` is a known message type code. */
export function isMsgType(t: unknown): t is MsgType {
  return typeof t === 'number' && NAMES[t] !== undefined && Number.isInteger(t);
}

/** Name of a message type code ("PAGES"), or `type 99` for unknown codes. */
export function msgTypeName(t: number): string {
  return (Number.isInteger(t) && NAMES[t]) || `type ${t}`;
}

// ---- protocol-wide bounds -------------------------------------------------
export const MIN_PAGE_SIZE = 4096;
export const MAX_PAGE_SIZE = 1 << 30;
/** Largest byte offset/length in a block (2^48). */
export const MAX_OFFSET = 2 ** 48;
export const MAX_BLOCKS = 256;
export const MAX_BLOCK_NAME = 64;
/** TRIMMED_RUN: kept lengths count in units of this many bytes. */
export const TRIM_UNIT = 64;
/** TRIMMED_RUN: most bytes its pages span once filled out (count × pageSize). */
export const MAX_TRIMMED_RUN_BYTES = 4 * 1024 * 1024;
/** Offsets in one PAGES frame; runs in one ZERO frame. */
export const MAX_PAGES_PER_FRAME = 4096;
export const MAX_ZERO_RUNS = 4096;
/** QEMU's MAX_DISCARDS_PER_COMMAND. */
export const MAX_DISCARDS_PER_COMMAND = 12;
/** Largest REQ_PAGES length (1 GiB). */
export const MAX_REQUEST_BYTES = 1 << 30;
export const MAX_REASON_CHARS = 4096;
export const MAX_CAPS = 32;
export const MAX_VCPUS = 4096;
export const MAX_ADVISE_PAGE_SIZES = 16;
/** Nesting depth allowed in free-form values (SETUP guest config, ACK info). */
export const MAX_VALUE_DEPTH = 32;

/** Capabilities this implementation knows about (others are allowed on the wire). */
export const Capability = {
  POSTCOPY: 'postcopy',
  PREEMPT: 'preempt',
  ZERO_RUNS: 'zero-runs',
} as const;

// ---- message shapes -------------------------------------------------------
export interface BlockInfo {
  /** 1–64 chars of [A-Za-z0-9._-], unique within SETUP. */
  name: string;
  /** Bytes; > 0, multiple of pageSize. */
  length: number;
  /** Power of two, 4 KiB .. 1 GiB. */
  pageSize: number;
}

export interface GuestInfo {
  /** Guest implementation name, same charset as block names. */
  kind: string;
  /** Free-form msgpack-able data (plain objects, arrays, scalars, bytes). */
  config: unknown;
  /**
   * Where a user guest's module lives (a path or file URL, ≤ 4096 chars); absent for
   * built-in guests. The destination loads the same module from its own file system.
   */
  module?: string;
}

/** Initial description of the migration: guest, RAM layout, capabilities. */
export interface SetupMessage {
  type: typeof MsgType.SETUP;
  guest: GuestInfo;
  blocks: readonly BlockInfo[];
  caps: readonly string[];
  vcpus: number;
}
/** Pages at arbitrary offsets; payload = offsets.length × pageSize bytes, in order. */
export interface PagesMessage {
  type: typeof MsgType.PAGES;
  block: string;
  pageSize: number;
  offsets: readonly number[];
}
/** `count` contiguous pages from `offset`; payload = count × pageSize bytes. */
export interface PageRunMessage {
  type: typeof MsgType.PAGE_RUN;
  block: string;
  pageSize: number;
  offset: number;
  count: number;
}
/**
 * `count` contiguous pages from `offset`, each without its trailing zero bytes. Payload: a
 * table of `count` u16 LE, each page's kept length in TRIM_UNIT-byte units (0 ..
 * pageSize / TRIM_UNIT), then the kept bytes of each page, in order. The destination fills
 * the rest of each page with zeros. Layout and checks: trimmed.ts.
 */
export interface TrimmedRunMessage {
  type: typeof MsgType.TRIMMED_RUN;
  block: string;
  pageSize: number;
  offset: number;
  count: number;
}
/** Runs of zero pages, [offset, pageCount]; no payload. */
export interface ZeroMessage {
  type: typeof MsgType.ZERO;
  block: string;
  pageSize: number;
  runs: ReadonlyArray<readonly [offset: number, count: number]>;
}
/** Device state; payload = the caller's encoded device state. */
export interface DeviceMessage {
  type: typeof MsgType.DEVICE;
}
/** Informational marker at the start of a precopy round. */
export interface RoundMessage {
  type: typeof MsgType.ROUND;
  round: number;
  dirtyBytes: number;
}
/** Postcopy advise: page sizes in use, so the destination can fail early. */
export interface AdviseMessage {
  type: typeof MsgType.ADVISE;
  pageSizes: readonly number[];
}
/** Discard 1..12 byte ranges [start, length] of one block. */
export interface DiscardMessage {
  type: typeof MsgType.DISCARD;
  block: string;
  ranges: ReadonlyArray<readonly [start: number, length: number]>;
}
export interface ListenMessage {
  type: typeof MsgType.LISTEN;
}
export interface RunMessage {
  type: typeof MsgType.RUN;
}
export interface EndMessage {
  type: typeof MsgType.END;
}
/** Precopy finished: all pages and device state sent. */
export interface CompleteMessage {
  type: typeof MsgType.COMPLETE;
}
/**
 * The source has just stopped the guest for the switchover (sent at once, on a link left
 * idle for it): the destination times the guest's pause from reading this, in its own clock,
 * to its vCPUs running, and reports that time (SHUT `startedAfterUs`, or ACK of RUN).
 */
export interface StoppedMessage {
  type: typeof MsgType.STOPPED;
}
export interface PingMessage {
  type: typeof MsgType.PING;
  id: number;
  /**
   * Source → destination: answer only once the guest could start there at once (its vCPU
   * threads are up), so the source stops the guest only then and their boot time is not
   * downtime.
   */
  ready?: boolean;
}
export interface PongMessage {
  type: typeof MsgType.PONG;
  id: number;
  /**
   * The answering end's monotonic clock when it answered, µs (its own origin): with the
   * times the PING left and the PONG came back, the other end estimates the offset between
   * the two clocks (as NTP does) and reads the answerer's later time stamps in its own clock.
   */
  clockUs?: number;
}
/** Destination accepted a command (SETUP, ADVISE, …). */
export interface AckMessage {
  type: typeof MsgType.ACK;
  of: MsgType;
  info?: unknown;
}
/** Destination demands [offset, offset+length) of a block. */
export interface ReqPagesMessage {
  type: typeof MsgType.REQ_PAGES;
  block: string;
  offset: number;
  length: number;
}
export interface ShutMessage {
  type: typeof MsgType.SHUT;
  status: 'ok' | 'failed';
  reason?: string;
  /** Precopy completion: µs from COMPLETE's arrival to running vCPUs (the source's downtime figure). */
  startedAfterUs?: number;
  /** Precopy completion: when the vCPUs ran, in the destination's clock (as PONG.clockUs), µs. */
  startedAtUs?: number;
}
/** Received-pages bitmap of a block (recovery); payload = ceil(pages/8) bytes, LSB-first. */
export interface RecvBitmapMessage {
  type: typeof MsgType.RECV_BITMAP;
  block: string;
  pages: number;
}
export interface ResumeMessage {
  type: typeof MsgType.RESUME;
}
export interface ResumeAckMessage {
  type: typeof MsgType.RESUME_ACK;
}
export interface ErrorMessage {
  type: typeof MsgType.ERROR;
  reason: string;
  code?: string;
}

export type Message =
  | SetupMessage
  | PagesMessage
  | PageRunMessage
  | TrimmedRunMessage
  | ZeroMessage
  | DeviceMessage
  | RoundMessage
  | AdviseMessage
  | DiscardMessage
  | ListenMessage
  | RunMessage
  | EndMessage
  | CompleteMessage
  | StoppedMessage
  | PingMessage
  | PongMessage
  | AckMessage
  | ReqPagesMessage
  | ShutMessage
  | RecvBitmapMessage
  | ResumeMessage
  | ResumeAckMessage
  | ErrorMessage;

/** The message shape for a given type code. */
export type MessageOf<T extends MsgType> = Extract<Message, { type: T }>;
