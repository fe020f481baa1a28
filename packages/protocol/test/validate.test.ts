// Every validation rule, exercised through the decoder on raw frames built
// without the encoder's checks: each must raise ProtocolError with the right
// code and a message naming the problem.
import { expect } from 'chai';
import { pack } from 'msgpackr';
import { MsgType, type ProtocolErrorCode } from '@livemig/protocol';
import { decodeOne, expectProtocolError, rawFrame } from './helpers.js';

const T = MsgType;
const GiB = 2 ** 30;
const setup = (over: Record<string, unknown> = {}) => ({
  t: T.SETUP, k: 'toy', c: null, b: [['ram0', GiB, 4096]], cp: ['postcopy'], v: 1, ...over,
});
const block = (name: unknown, length: unknown = GiB, pageSize: unknown = 4096) => setup({ b: [[name, length, pageSize]] });

interface Rule {
  what: string;
  header?: unknown;
  headerBytes?: Buffer;
  payload?: number;
  code: ProtocolErrorCode;
  message: string | RegExp;
}

const rules: Rule[] = [
  // header structure
  { what: 'a header that is not a map', header: [1, 2], code: 'MALFORMED', message: 'frame header is not a map (got array(2))' },
  { what: 'a header without "t"', header: { b: 'ram0' }, code: 'MALFORMED', message: 'no message type field "t"' },
  { what: 'an unknown message type', header: { t: 99 }, code: 'MALFORMED', message: 'unknown message type 99' },
  { what: 'a non-integer message type', header: { t: 1.5 }, code: 'MALFORMED', message: 'unknown message type 1.5' },
  { what: 'a string message type', header: { t: '1' }, code: 'MALFORMED', message: 'unknown message type "1"' },
  { what: 'an unknown extra header field', header: { t: T.END, x: 1 }, code: 'MALFORMED', message: 'END: unknown header field "x"' },
  { what: 'a "__proto__" header field', headerBytes: Buffer.from([0x82, 0xa1, 0x74, T.END, 0xa9, ...Buffer.from('__proto__'), 0x80]), code: 'MALFORMED', message: 'unknown header field' },
  { what: 'a missing required field', header: { t: T.PAGE_RUN, b: 'ram0', p: 4096, o: 0 }, code: 'MALFORMED', message: 'PAGE_RUN: missing header field "n"' },
  { what: 'trailing bytes after the header map', headerBytes: Buffer.concat([pack({ t: T.END }), Buffer.from([0])]), code: 'MALFORMED', message: 'undecodable msgpack header' },
  { what: 'a header cut inside a value', headerBytes: pack({ t: T.ERROR, r: 'hello' }).subarray(0, 6), code: 'MALFORMED', message: 'undecodable msgpack header' },
  { what: 'a payload on a message that has none', header: { t: T.END }, payload: 1, code: 'MALFORMED', message: 'END: payload is 1 bytes, message implies 0' },

  // SETUP
  { what: 'SETUP guest kind with bad characters', header: setup({ k: 'a b' }), code: 'MALFORMED', message: 'SETUP.guest.kind' },
  { what: 'SETUP guest config holding a Date', header: setup({ c: { at: new Date(0) } }), code: 'MALFORMED', message: 'SETUP.guest.config: unsupported value object Date' },
  { what: 'SETUP guest config nested too deep', header: setup({ c: JSON.parse('['.repeat(40) + ']'.repeat(40)) }), code: 'OVERSIZED', message: 'nested deeper than 32' },
  { what: 'SETUP with no blocks', header: setup({ b: [] }), code: 'MALFORMED', message: 'SETUP.blocks: needs at least 1 entry' },
  { what: 'SETUP with more than 256 blocks', header: setup({ b: Array.from({ length: 257 }, (_, i) => [`b${i}`, 4096, 4096]) }), code: 'OVERSIZED', message: 'SETUP.blocks: 257 entries exceeds 256' },
  { what: 'a SETUP block that is not a triple', header: setup({ b: [['ram0', GiB]] }), code: 'MALFORMED', message: 'SETUP.blocks[0]: expected [name, length, pageSize]' },
  { what: 'an empty block name', header: block(''), code: 'MALFORMED', message: 'SETUP.blocks[0].name: block name must be 1..64 chars, got 0' },
  { what: 'a 65-char block name', header: block('x'.repeat(65)), code: 'MALFORMED', message: 'block name must be 1..64 chars, got 65' },
  { what: 'a block name with a slash', header: block('ram/0'), code: 'MALFORMED', message: 'block name "ram/0" may only contain [A-Za-z0-9._-]' },
  { what: 'a block name that is a number', header: block(5), code: 'MALFORMED', message: 'expected a block name string, got 5' },
  { what: 'duplicate block names', header: setup({ b: [['ram0', 4096, 4096], ['ram0', 8192, 4096]] }), code: 'MALFORMED', message: 'SETUP.blocks[1].name: duplicate block name "ram0"' },
  { what: 'a block of length 0', header: block('ram0', 0), code: 'RANGE', message: 'SETUP.blocks[0].length: 0x0 out of range' },
  { what: 'a block length that is not a multiple of its page size', header: block('ram0', 6144), code: 'ALIGN', message: 'SETUP.blocks[0].length: 0x1800 not aligned to page size 0x1000' },
  { what: 'a block longer than 2^48', header: block('ram0', 2 ** 49), code: 'RANGE', message: 'SETUP.blocks[0].length' },
  { what: 'a page size that is not a power of two', header: block('ram0', 3 * 8192, 12288), code: 'RANGE', message: 'SETUP.blocks[0].pageSize: 12288 is not a power of two in 4096..1073741824' },
  { what: 'a page size below 4 KiB', header: block('ram0', 4096, 2048), code: 'RANGE', message: 'pageSize: 2048 is not a power of two' },
  { what: 'a page size above 1 GiB', header: block('ram0', 2 ** 31, 2 ** 31), code: 'RANGE', message: 'pageSize: 0x80000000 out of range' },
  { what: 'a capability that is not a string', header: setup({ cp: [1] }), code: 'MALFORMED', message: 'SETUP.caps[0]: expected a string, got 1' },
  { what: 'a duplicate capability', header: setup({ cp: ['postcopy', 'postcopy'] }), code: 'MALFORMED', message: 'duplicate capability "postcopy"' },
  { what: 'more than 32 capabilities', header: setup({ cp: Array.from({ length: 33 }, (_, i) => `c${i}`) }), code: 'OVERSIZED', message: 'SETUP.caps: 33 entries exceeds 32' },
  { what: 'zero vCPUs', header: setup({ v: 0 }), code: 'RANGE', message: 'SETUP.vcpus: 0x0 out of range 0x1..0x1000' },

  // PAGES
  { what: 'a PAGES offset not aligned to the page size', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [0, 100] }, payload: 8192, code: 'ALIGN', message: 'PAGES.offsets[1]: 0x64 not aligned to page size 0x1000' },
  { what: 'a negative PAGES offset', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [-4096] }, payload: 4096, code: 'RANGE', message: 'PAGES.offsets[0]: -4096 out of range' },
  { what: 'a PAGES offset beyond 2^48', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [2 ** 48] }, payload: 4096, code: 'RANGE', message: 'PAGES.offsets[0]: 0x1000000000000 out of range' },
  { what: 'a fractional PAGES offset', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [0.5] }, payload: 4096, code: 'MALFORMED', message: 'PAGES.offsets[0]: expected an integer, got 0.5' },
  { what: 'a string PAGES offset', header: { t: T.PAGES, b: 'ram0', p: 4096, o: ['0'] }, payload: 4096, code: 'MALFORMED', message: 'expected an integer, got "0"' },
  { what: 'a PAGES offset that is a float64 NaN', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [NaN] }, payload: 4096, code: 'MALFORMED', message: 'expected an integer, got NaN' },
  { what: 'PAGES with no offsets', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [] }, code: 'MALFORMED', message: 'PAGES.offsets: needs at least 1 entry' },
  { what: 'PAGES with more than 4096 offsets', header: { t: T.PAGES, b: 'ram0', p: 4096, o: Array.from({ length: 4097 }, (_, i) => i * 4096) }, code: 'OVERSIZED', message: 'PAGES.offsets: 4097 entries exceeds 4096' },
  { what: 'PAGES offsets that are not an array', header: { t: T.PAGES, b: 'ram0', p: 4096, o: 0 }, payload: 4096, code: 'MALFORMED', message: 'PAGES.offsets: expected an array, got 0' },
  { what: 'a PAGES payload that is not offsets × pageSize', header: { t: T.PAGES, b: 'ram0', p: 4096, o: [0, 4096] }, payload: 4096, code: 'MALFORMED', message: 'PAGES: payload is 4096 bytes, message implies 8192' },
  { what: 'a PAGES block name with bad characters', header: { t: T.PAGES, b: 'ram 0', p: 4096, o: [0] }, payload: 4096, code: 'MALFORMED', message: 'PAGES.block' },

  // PAGE_RUN
  { what: 'a PAGE_RUN of 0 pages', header: { t: T.PAGE_RUN, b: 'ram0', p: 4096, o: 0, n: 0 }, code: 'RANGE', message: 'PAGE_RUN.count: 0x0 out of range' },
  { what: 'a PAGE_RUN offset not aligned', header: { t: T.PAGE_RUN, b: 'ram0', p: 2 ** 21, o: 4096, n: 1 }, payload: 2 ** 21, code: 'ALIGN', message: 'PAGE_RUN.offset: 0x1000 not aligned to page size 0x200000' },
  { what: 'a PAGE_RUN payload that is not count × pageSize', header: { t: T.PAGE_RUN, b: 'ram0', p: 4096, o: 0, n: 2 }, payload: 8191, code: 'MALFORMED', message: 'PAGE_RUN: payload is 8191 bytes, message implies 8192' },
  { what: 'a PAGE_RUN running past 2^48', header: { t: T.PAGE_RUN, b: 'ram0', p: 4096, o: 2 ** 48 - 4096, n: 2 }, payload: 8192, code: 'RANGE', message: 'PAGE_RUN.count' },

  // ZERO
  { what: 'a ZERO run that is not a pair', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[0, 1, 2]] }, code: 'MALFORMED', message: 'ZERO.runs[0]: expected a [number, number] pair' },
  { what: 'a ZERO run of 0 pages', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[0, 0]] }, code: 'RANGE', message: 'ZERO.runs[0][1] count' },
  { what: 'a ZERO run offset not aligned', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[1, 1]] }, code: 'ALIGN', message: 'ZERO.runs[0][0] offset: 0x1 not aligned' },
  { what: 'a fractional ZERO run count after valid runs', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[0, 1], [8192, 1.5]] }, code: 'MALFORMED', message: 'ZERO.runs[1][1] count: expected an integer' },
  { what: 'a negative ZERO run offset', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[-4096, 1]] }, code: 'RANGE', message: 'ZERO.runs[0][0] offset' },
  { what: 'a ZERO run offset given as a string', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [['4096', 1]] }, code: 'MALFORMED', message: 'ZERO.runs[0][0] offset: expected an integer' },
  { what: 'a ZERO run running past 2^48', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[2 ** 48 - 4096, 2]] }, code: 'RANGE', message: 'ZERO.runs[0][1] count' },
  { what: 'more than 4096 ZERO runs', header: { t: T.ZERO, b: 'ram0', p: 4096, r: Array.from({ length: 4097 }, (_, i) => [i * 8192, 1]) }, code: 'OVERSIZED', message: 'ZERO.runs: 4097 entries exceeds 4096' },
  { what: 'a ZERO with a payload', header: { t: T.ZERO, b: 'ram0', p: 4096, r: [[0, 1]] }, payload: 4096, code: 'MALFORMED', message: 'ZERO: payload is 4096 bytes, message implies 0' },

  // ROUND, ADVISE
  { what: 'a negative ROUND number', header: { t: T.ROUND, r: -1, d: 0 }, code: 'RANGE', message: 'ROUND.round' },
  { what: 'a fractional ROUND dirtyBytes', header: { t: T.ROUND, r: 1, d: 0.25 }, code: 'MALFORMED', message: 'ROUND.dirtyBytes: expected an integer' },
  { what: 'ADVISE with no page sizes', header: { t: T.ADVISE, p: [] }, code: 'MALFORMED', message: 'ADVISE.pageSizes: needs at least 1 entry' },
  { what: 'ADVISE with a bad page size', header: { t: T.ADVISE, p: [4096, 5000] }, code: 'RANGE', message: 'ADVISE.pageSizes[1]: 5000 is not a power of two' },

  // TRIMMED_RUN (its table is checked by expandTrimmedRun: trimmed.test.ts)
  { what: 'a TRIMMED_RUN payload shorter than its table', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 4096, o: 0, n: 3 }, payload: 5, code: 'MALFORMED', message: 'TRIMMED_RUN: payload is 5 bytes, 3 pages of 4096 bytes trimmed need 6..12294' },
  { what: 'a TRIMMED_RUN payload longer than its pages whole', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 4096, o: 0, n: 1 }, payload: 2 + 4096 + 64, code: 'MALFORMED', message: 'TRIMMED_RUN: payload is 4162 bytes' },
  { what: 'a TRIMMED_RUN payload that is not whole units after the table', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 4096, o: 0, n: 1 }, payload: 2 + 65, code: 'MALFORMED', message: 'not a 2-byte table and whole 64-byte units' },
  { what: 'a TRIMMED_RUN spanning more than 4 MiB', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 4096, o: 0, n: 1025 }, payload: 2050, code: 'RANGE', message: 'TRIMMED_RUN.count: 0x401 out of range 0x1..0x400' },
  { what: 'a TRIMMED_RUN of pages larger than 4 MiB', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 2 ** 23, o: 0, n: 1 }, payload: 2, code: 'RANGE', message: 'TRIMMED_RUN.pageSize: 8388608 is larger than a trimmed run may span' },
  { what: 'a TRIMMED_RUN offset not aligned', header: { t: T.TRIMMED_RUN, b: 'ram0', p: 4096, o: 100, n: 1 }, payload: 2, code: 'ALIGN', message: 'TRIMMED_RUN.offset: 0x64 not aligned' },

  // DISCARD
  { what: 'DISCARD with 13 ranges', header: { t: T.DISCARD, b: 'ram0', r: Array.from({ length: 13 }, (_, i) => [i * 8192, 4096]) }, code: 'OVERSIZED', message: 'DISCARD.ranges: 13 entries exceeds 12' },
  { what: 'DISCARD with no ranges', header: { t: T.DISCARD, b: 'ram0', r: [] }, code: 'MALFORMED', message: 'DISCARD.ranges: needs at least 1 entry' },
  { what: 'an empty DISCARD range', header: { t: T.DISCARD, b: 'ram0', r: [[0, 0]] }, code: 'RANGE', message: 'DISCARD.ranges[0][1] length: 0x0 out of range' },
  { what: 'a DISCARD range start not page aligned', header: { t: T.DISCARD, b: 'ram0', r: [[512, 4096]] }, code: 'ALIGN', message: 'DISCARD.ranges[0][0] start: 0x200 not aligned to page size 0x1000' },
  { what: 'a DISCARD range length not page aligned', header: { t: T.DISCARD, b: 'ram0', r: [[0, 5000]] }, code: 'ALIGN', message: 'DISCARD.ranges[0][1] length: 0x1388 not aligned' },

  // PING/PONG, ACK
  { what: 'a PING id above u32', header: { t: T.PING, i: 2 ** 32 }, code: 'RANGE', message: 'PING.id: 0x100000000 out of range' },
  { what: 'a PING ready that is not a boolean', header: { t: T.PING, i: 1, y: 1 }, code: 'MALFORMED', message: 'PING.ready: expected a boolean, got 1' },
  { what: 'a PONG carrying ready (PING only)', header: { t: T.PONG, i: 1, y: true }, code: 'MALFORMED', message: 'PONG' },
  { what: 'a fractional PONG clockUs', header: { t: T.PONG, i: 1, c: 1.5 }, code: 'MALFORMED', message: 'PONG.clockUs: expected an integer' },
  { what: 'a negative PONG clockUs', header: { t: T.PONG, i: 1, c: -1 }, code: 'RANGE', message: 'PONG.clockUs' },
  { what: 'a SHUT startedAtUs that is a string', header: { t: T.SHUT, s: 'ok', a: '5' }, code: 'MALFORMED', message: 'SHUT.startedAtUs: expected an integer' },
  { what: 'a PONG id that is a string', header: { t: T.PONG, i: 'x' }, code: 'MALFORMED', message: 'PONG.id: expected an integer, got "x"' },
  { what: 'an ACK of an unknown type', header: { t: T.ACK, o: 42 }, code: 'MALFORMED', message: 'ACK.of: unknown message type 42' },
  { what: 'an ACK info holding a timestamp', header: { t: T.ACK, o: T.SETUP, i: [new Date(0)] }, code: 'MALFORMED', message: 'ACK.info: unsupported value object Date' },

  // REQ_PAGES
  { what: 'a REQ_PAGES of length 0', header: { t: T.REQ_PAGES, b: 'ram0', o: 0, l: 0 }, code: 'RANGE', message: 'REQ_PAGES.length: 0x0 out of range' },
  { what: 'a REQ_PAGES longer than 1 GiB', header: { t: T.REQ_PAGES, b: 'ram0', o: 0, l: GiB + 4096 }, code: 'RANGE', message: 'REQ_PAGES.length: 0x40001000 out of range 0x1..0x40000000' },
  { what: 'a REQ_PAGES offset not page aligned', header: { t: T.REQ_PAGES, b: 'ram0', o: 100, l: 4096 }, code: 'ALIGN', message: 'REQ_PAGES.offset: 0x64 not aligned' },
  { what: 'a REQ_PAGES with a negative offset', header: { t: T.REQ_PAGES, b: 'ram0', o: -4096, l: 4096 }, code: 'RANGE', message: 'REQ_PAGES.offset: -4096 out of range' },

  // SHUT, RECV_BITMAP, ERROR
  { what: 'a SHUT status other than ok/failed', header: { t: T.SHUT, s: 'maybe' }, code: 'MALFORMED', message: 'SHUT.status: expected "ok" or "failed", got "maybe"' },
  { what: 'a SHUT reason over 4096 chars', header: { t: T.SHUT, s: 'failed', r: 'x'.repeat(4097) }, code: 'OVERSIZED', message: 'SHUT.reason: 4097 chars exceeds 4096' },
  { what: 'a negative SHUT startedAfterUs', header: { t: T.SHUT, s: 'ok', u: -5 }, code: 'RANGE', message: 'SHUT.startedAfterUs' },
  { what: 'a RECV_BITMAP payload that is not ceil(pages/8)', header: { t: T.RECV_BITMAP, b: 'ram0', n: 9 }, payload: 1, code: 'MALFORMED', message: 'RECV_BITMAP: payload is 1 bytes, message implies 2' },
  { what: 'a RECV_BITMAP of 0 pages', header: { t: T.RECV_BITMAP, b: 'ram0', n: 0 }, code: 'RANGE', message: 'RECV_BITMAP.pages' },
  { what: 'an ERROR with an empty reason', header: { t: T.ERROR, r: '' }, code: 'MALFORMED', message: 'ERROR.reason: must not be empty' },
  { what: 'an ERROR reason over 4096 chars', header: { t: T.ERROR, r: 'x'.repeat(4097) }, code: 'OVERSIZED', message: 'ERROR.reason: 4097 chars exceeds 4096' },
  { what: 'an ERROR code with spaces', header: { t: T.ERROR, r: 'x', c: 'BAD CODE' }, code: 'MALFORMED', message: 'ERROR.code' },
  { what: 'an ERROR reason that is nil', header: { t: T.ERROR, r: null }, code: 'MALFORMED', message: 'ERROR.reason: expected a string, got null' },
];

describe('validation of decoded headers', () => {
  for (const r of rules) {
    it(`rejects ${r.what}`, () => {
      const bytes = rawFrame(r.header, Buffer.alloc(r.payload ?? 0), r.headerBytes ? { headerBytes: r.headerBytes } : {});
      expectProtocolError(() => decodeOne(bytes), r.code, r.message);
    });
  }

  it('accepts integers msgpack-encoded as uint64 and float64', () => {
    // offset 2^40 as uint64 (0xcf) and as float64 (0xcb)
    const u64 = Buffer.from([0xcf, 0, 0, 1, 0, 0, 0, 0, 0]);
    const f64 = Buffer.from([0xcb, 0x42, 0x70, 0, 0, 0, 0, 0, 0]);
    for (const num of [u64, f64]) {
      const head = Buffer.concat([Buffer.from([0x85, 0xa1, 0x74, T.PAGE_RUN, 0xa1, 0x62, 0xa1, 0x72, 0xa1, 0x70, 0xcd, 0x10, 0x00, 0xa1, 0x6f]), num, Buffer.from([0xa1, 0x6e, 1])]);
      const f = decodeOne(rawFrame(null, Buffer.alloc(4096), { headerBytes: head }));
      expect(f.msg).to.deep.equal({ type: T.PAGE_RUN, block: 'r', pageSize: 4096, offset: 2 ** 40, count: 1 });
    }
  });
});
