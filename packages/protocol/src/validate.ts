/**
 * validate.ts — owns the field-by-field rules for every message: exact types,
 * integer ranges, string charsets and lengths, array sizes, page alignment, and
 * the payload length each message implies. Used on decode (always) and encode.
 * Block layout (does the block exist, is the range inside it) is blocks.ts.
 */
import { ProtocolError, describe, hex, type ProtocolErrorCode } from './errors.js';
import {
  MsgType, isMsgType, msgTypeName, type Message,
  MIN_PAGE_SIZE, MAX_PAGE_SIZE, MAX_OFFSET, MAX_BLOCKS, MAX_BLOCK_NAME, MAX_PAGES_PER_FRAME, MAX_ZERO_RUNS,
  MAX_DISCARDS_PER_COMMAND, MAX_REQUEST_BYTES, MAX_REASON_CHARS, MAX_CAPS, MAX_VCPUS, MAX_ADVISE_PAGE_SIZES,
  MAX_VALUE_DEPTH, TRIM_UNIT, MAX_TRIMMED_RUN_BYTES,
} from './messages.js';

const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const CAP_RE = /^[a-z0-9][a-z0-9-]{0,31}$/;
const CODE_RE = /^[A-Za-z0-9._-]{1,64}$/;
const U32 = 0xffffffff;

function fail(code: ProtocolErrorCode, message: string): never {
  throw new ProtocolError(code, message);
}

/** Non-negative safe integer ≤ max. */
function uint(v: unknown, what: string, max: number, min = 0): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) fail('MALFORMED', `${what}: expected an integer, got ${describe(v)}`);
  if (v < min || v > max) fail('RANGE', `${what}: ${hex(v)} out of range ${hex(min)}..${hex(max)}`);
  return v;
}

function pageSize(v: unknown, what: string): number {
  const ps = uint(v, what, MAX_PAGE_SIZE);
  if (ps < MIN_PAGE_SIZE || (ps & (ps - 1)) !== 0)
    fail('RANGE', `${what}: ${ps} is not a power of two in ${MIN_PAGE_SIZE}..${MAX_PAGE_SIZE}`);
  return ps;
}

function aligned(v: number, ps: number, what: string): void {
  if (v % ps !== 0) fail('ALIGN', `${what}: ${hex(v)} not aligned to page size ${hex(ps)}`);
}

/** A guest module reference: a path or file URL, printable, no NUL or control characters. */
const MODULE_RE = /^[^\u0000-\u001f\u007f]+$/;
const MAX_MODULE_CHARS = 4096;

function str(v: unknown, what: string, maxChars: number, re?: RegExp, minChars = 0): string {
  if (typeof v !== 'string') fail('MALFORMED', `${what}: expected a string, got ${describe(v)}`);
  if (v.length > maxChars) fail('OVERSIZED', `${what}: ${v.length} chars exceeds ${maxChars}`);
  if (v.length < minChars) fail('MALFORMED', `${what}: must not be empty`);
  if (re && !re.test(v)) fail('MALFORMED', `${what}: ${describe(v)} has characters outside ${re.source}`);
  return v;
}

function blockName(v: unknown, what: string): string {
  if (typeof v !== 'string') fail('MALFORMED', `${what}: expected a block name string, got ${describe(v)}`);
  if (v.length === 0 || v.length > MAX_BLOCK_NAME) fail('MALFORMED', `${what}: block name must be 1..${MAX_BLOCK_NAME} chars, got ${v.length}`);
  if (!NAME_RE.test(v)) fail('MALFORMED', `${what}: block name ${describe(v)} may only contain [A-Za-z0-9._-]`);
  return v;
}

function arr(v: unknown, what: string, min: number, max: number): unknown[] {
  if (!Array.isArray(v)) fail('MALFORMED', `${what}: expected an array, got ${describe(v)}`);
  if (v.length > max) fail('OVERSIZED', `${what}: ${v.length} entries exceeds ${max}`);
  if (v.length < min) fail('MALFORMED', `${what}: needs at least ${min} entr${min === 1 ? 'y' : 'ies'}, got ${v.length}`);
  return v;
}

function pair(v: unknown, what: string): [unknown, unknown] {
  if (!Array.isArray(v) || v.length !== 2) fail('MALFORMED', `${what}: expected a [number, number] pair, got ${describe(v)}`);
  return v as [unknown, unknown];
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Object.getPrototypeOf(v) !== Object.prototype)
    fail('MALFORMED', `${what}: expected a map, got ${describe(v)}`);
  return v as Record<string, unknown>;
}

/** Free-form data: null, boolean, number, string, bytes, arrays and plain maps, bounded depth. */
export function checkPlainValue(v: unknown, what: string, depth = 0): void {
  if (depth > MAX_VALUE_DEPTH) fail('OVERSIZED', `${what}: nested deeper than ${MAX_VALUE_DEPTH}`);
  if (v === null || v === undefined) return;
  switch (typeof v) {
    case 'boolean':
    case 'number':
    case 'string':
      return;
    case 'object':
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) checkPlainValue(v[i], what, depth + 1);
        return;
      }
      if (v instanceof Uint8Array) return;
      if (Object.getPrototypeOf(v) === Object.prototype) {
        for (const k in v) checkPlainValue((v as Record<string, unknown>)[k], what, depth + 1);
        return;
      }
  }
  fail('MALFORMED', `${what}: unsupported value ${describe(v)} (allowed: null, boolean, number, string, bytes, array, map)`);
}

/** Payload length implied by a message; -1 when any length is allowed (DEVICE). */
export function expectedPayloadLength(msg: Message): number {
  switch (msg.type) {
    case MsgType.PAGES:
      return msg.offsets.length * msg.pageSize;
    case MsgType.PAGE_RUN:
      return msg.count * msg.pageSize;
    case MsgType.TRIMMED_RUN:
      return -1;
    case MsgType.RECV_BITMAP:
      return Math.ceil(msg.pages / 8);
    case MsgType.DEVICE:
      return -1;
    default:
      return 0;
  }
}

/**
 * Check every field of a message (given as a candidate object: decoded headers
 * are checked before they are trusted) and that `payloadLength` is what the
 * message implies. Throws ProtocolError naming the field and the problem.
 */
export function validateMessage(msg: Message, payloadLength: number): void {
  const m = msg as unknown as Record<string, unknown>;
  const type = m['type'];
  if (!isMsgType(type)) fail('MALFORMED', `unknown message type ${describe(type)}`);
  const name = msgTypeName(type);
  const f = (field: string) => `${name}.${field}`;
  switch (type) {
    case MsgType.SETUP: {
      const g = obj(m['guest'], f('guest'));
      str(g['kind'], f('guest.kind'), 64, NAME_RE, 1);
      checkPlainValue(g['config'], f('guest.config'));
      if (g['module'] !== undefined) str(g['module'], f('guest.module'), MAX_MODULE_CHARS, MODULE_RE, 1);
      const blocks = arr(m['blocks'], f('blocks'), 1, MAX_BLOCKS);
      const seen = new Set<string>();
      for (let i = 0; i < blocks.length; i++) {
        const w = `${name}.blocks[${i}]`;
        const b = obj(blocks[i], w);
        const bn = blockName(b['name'], `${w}.name`);
        if (seen.has(bn)) fail('MALFORMED', `${w}.name: duplicate block name "${bn}"`);
        seen.add(bn);
        const ps = pageSize(b['pageSize'], `${w}.pageSize`);
        const len = uint(b['length'], `${w}.length`, MAX_OFFSET, 1);
        aligned(len, ps, `${w}.length`);
      }
      const caps = arr(m['caps'], f('caps'), 0, MAX_CAPS);
      const cs = new Set<string>();
      for (let i = 0; i < caps.length; i++) {
        const c = str(caps[i], `${name}.caps[${i}]`, 32, CAP_RE, 1);
        if (cs.has(c)) fail('MALFORMED', `${name}.caps[${i}]: duplicate capability "${c}"`);
        cs.add(c);
      }
      uint(m['vcpus'], f('vcpus'), MAX_VCPUS, 1);
      break;
    }
    case MsgType.PAGES: {
      blockName(m['block'], f('block'));
      const ps = pageSize(m['pageSize'], f('pageSize'));
      const offs = arr(m['offsets'], f('offsets'), 1, MAX_PAGES_PER_FRAME);
      const max = MAX_OFFSET - ps;
      for (let i = 0; i < offs.length; i++) {
        const o = offs[i];
        // fast path: the common valid case costs two comparisons and a modulo
        if (typeof o === 'number' && o >= 0 && o <= max && o % ps === 0) continue;
        const w = `${name}.offsets[${i}]`;
        aligned(uint(o, w, max), ps, w);
      }
      break;
    }
    case MsgType.PAGE_RUN: {
      blockName(m['block'], f('block'));
      const ps = pageSize(m['pageSize'], f('pageSize'));
      const off = uint(m['offset'], f('offset'), MAX_OFFSET - ps);
      aligned(off, ps, f('offset'));
      uint(m['count'], f('count'), (MAX_OFFSET - off) / ps, 1);
      break;
    }
    case MsgType.TRIMMED_RUN: {
      blockName(m['block'], f('block'));
      const ps = pageSize(m['pageSize'], f('pageSize'));
      if (ps > MAX_TRIMMED_RUN_BYTES) fail('RANGE', `${f('pageSize')}: ${ps} is larger than a trimmed run may span (${MAX_TRIMMED_RUN_BYTES})`);
      const off = uint(m['offset'], f('offset'), MAX_OFFSET - ps);
      aligned(off, ps, f('offset'));
      const count = uint(m['count'], f('count'), Math.min((MAX_OFFSET - off) / ps, MAX_TRIMMED_RUN_BYTES / ps), 1);
      // The table, then at most every page whole; trimmed.ts checks the table itself.
      if (payloadLength < 2 * count || payloadLength > 2 * count + count * ps)
        fail('MALFORMED', `${name}: payload is ${payloadLength} bytes, ${count} pages of ${ps} bytes trimmed need ${2 * count}..${2 * count + count * ps}`);
      if ((payloadLength - 2 * count) % TRIM_UNIT !== 0)
        fail('MALFORMED', `${name}: payload is ${payloadLength} bytes, not a ${2 * count}-byte table and whole ${TRIM_UNIT}-byte units`);
      break;
    }
    case MsgType.ZERO: {
      blockName(m['block'], f('block'));
      const ps = pageSize(m['pageSize'], f('pageSize'));
      const runs = arr(m['runs'], f('runs'), 1, MAX_ZERO_RUNS);
      const maxOff = MAX_OFFSET - ps;
      for (let i = 0; i < runs.length; i++) {
        // fast path as for PAGES: a valid run builds no strings (a frame holds up to 1024)
        const r = runs[i];
        if (Array.isArray(r) && r.length === 2) {
          const [o, n] = r as [unknown, unknown];
          if (typeof o === 'number' && typeof n === 'number' && o >= 0 && o <= maxOff && o % ps === 0 && Number.isInteger(n) && n >= 1 && n <= (MAX_OFFSET - o) / ps) continue;
        }
        const w = `${name}.runs[${i}]`;
        const [o, n] = pair(runs[i], w);
        const off = uint(o, `${w}[0] offset`, MAX_OFFSET - ps);
        aligned(off, ps, `${w}[0] offset`);
        uint(n, `${w}[1] count`, (MAX_OFFSET - off) / ps, 1);
      }
      break;
    }
    case MsgType.ROUND:
      uint(m['round'], f('round'), U32);
      uint(m['dirtyBytes'], f('dirtyBytes'), Number.MAX_SAFE_INTEGER);
      break;
    case MsgType.ADVISE: {
      const ps = arr(m['pageSizes'], f('pageSizes'), 1, MAX_ADVISE_PAGE_SIZES);
      for (let i = 0; i < ps.length; i++) pageSize(ps[i], `${name}.pageSizes[${i}]`);
      break;
    }
    case MsgType.DISCARD: {
      blockName(m['block'], f('block'));
      const ranges = arr(m['ranges'], f('ranges'), 1, MAX_DISCARDS_PER_COMMAND);
      for (let i = 0; i < ranges.length; i++) {
        const w = `${name}.ranges[${i}]`;
        const [s, l] = pair(ranges[i], w);
        const start = uint(s, `${w}[0] start`, MAX_OFFSET - MIN_PAGE_SIZE);
        aligned(start, MIN_PAGE_SIZE, `${w}[0] start`);
        const len = uint(l, `${w}[1] length`, MAX_OFFSET - start, 1);
        aligned(len, MIN_PAGE_SIZE, `${w}[1] length`);
      }
      break;
    }
    case MsgType.PING:
      uint(m['id'], f('id'), U32);
      if (m['ready'] !== undefined && typeof m['ready'] !== 'boolean') fail('MALFORMED', `${f('ready')}: expected a boolean, got ${describe(m['ready'])}`);
      break;
    case MsgType.PONG:
      uint(m['id'], f('id'), U32);
      if (m['clockUs'] !== undefined) uint(m['clockUs'], f('clockUs'), Number.MAX_SAFE_INTEGER);
      break;
    case MsgType.ACK: {
      const of = m['of'];
      if (!isMsgType(of)) fail('MALFORMED', `${name}.of: unknown message type ${describe(of)}`);
      checkPlainValue(m['info'], f('info'));
      break;
    }
    case MsgType.REQ_PAGES: {
      blockName(m['block'], f('block'));
      const off = uint(m['offset'], f('offset'), MAX_OFFSET - MIN_PAGE_SIZE);
      aligned(off, MIN_PAGE_SIZE, f('offset'));
      const len = uint(m['length'], f('length'), Math.min(MAX_REQUEST_BYTES, MAX_OFFSET - off), 1);
      aligned(len, MIN_PAGE_SIZE, f('length'));
      break;
    }
    case MsgType.SHUT: {
      const s = m['status'];
      if (s !== 'ok' && s !== 'failed') fail('MALFORMED', `${name}.status: expected "ok" or "failed", got ${describe(s)}`);
      if (m['reason'] !== undefined) str(m['reason'], f('reason'), MAX_REASON_CHARS);
      if (m['startedAfterUs'] !== undefined) uint(m['startedAfterUs'], f('startedAfterUs'), U32);
      if (m['startedAtUs'] !== undefined) uint(m['startedAtUs'], f('startedAtUs'), Number.MAX_SAFE_INTEGER);
      break;
    }
    case MsgType.RECV_BITMAP:
      blockName(m['block'], f('block'));
      uint(m['pages'], f('pages'), MAX_OFFSET / MIN_PAGE_SIZE, 1);
      break;
    case MsgType.ERROR:
      str(m['reason'], f('reason'), MAX_REASON_CHARS, undefined, 1);
      if (m['code'] !== undefined) str(m['code'], f('code'), 64, CODE_RE, 1);
      break;
    // DEVICE, LISTEN, RUN, END, COMPLETE, STOPPED, RESUME, RESUME_ACK: no fields
  }
  const expected = expectedPayloadLength(msg);
  if (expected >= 0 ? payloadLength !== expected : !(payloadLength >= 0))
    fail('MALFORMED', `${name}: payload is ${payloadLength} bytes, message implies ${expected}`);
}
