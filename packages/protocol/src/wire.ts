/**
 * wire.ts — owns the header map layout: the short msgpack field names of each
 * message and the mapping between them and the readable TypeScript shapes.
 * Decoding here is structural only (known type, exact key set); field values are
 * checked by validate.ts.
 *
 *   every header      t: MsgType
 *   SETUP             k: guest kind, c: guest config, m: guest module (optional), b: [[name, length, pageSize]…], cp: caps[], v: vcpus
 *   PAGES             b: block, p: pageSize, o: offsets[]
 *   PAGE_RUN          b, p, o: offset, n: count
 *   TRIMMED_RUN       b, p, o: offset, n: count
 *   ZERO              b, p, r: [[offset, count]…]
 *   ROUND             r: round, d: dirtyBytes
 *   ADVISE            p: pageSizes[]
 *   DISCARD           b, r: [[start, length]…]
 *   PING / PONG       i: id; PING y?: ready; PONG c?: clockUs
 *   ACK               o: of, i?: info
 *   REQ_PAGES         b, o: offset, l: length
 *   SHUT              s: status, r?: reason, u?: startedAfterUs, a?: startedAtUs
 *   RECV_BITMAP       b, n: pages
 *   ERROR             r: reason, c?: code
 *   DEVICE LISTEN RUN END COMPLETE STOPPED RESUME RESUME_ACK: t only
 */
import { ProtocolError, describe } from './errors.js';
import { MsgType, isMsgType, msgTypeName, MAX_BLOCKS, type Message, type BlockInfo } from './messages.js';

type WireHeader = Record<string, unknown>;

/** [required keys, optional keys] per type, excluding `t`. */
const KEYS: Record<number, [string[], string[]]> = {
  [MsgType.SETUP]: [['k', 'c', 'b', 'cp', 'v'], ['m']],
  [MsgType.PAGES]: [['b', 'p', 'o'], []],
  [MsgType.PAGE_RUN]: [['b', 'p', 'o', 'n'], []],
  [MsgType.TRIMMED_RUN]: [['b', 'p', 'o', 'n'], []],
  [MsgType.ZERO]: [['b', 'p', 'r'], []],
  [MsgType.DEVICE]: [[], []],
  [MsgType.ROUND]: [['r', 'd'], []],
  [MsgType.ADVISE]: [['p'], []],
  [MsgType.DISCARD]: [['b', 'r'], []],
  [MsgType.LISTEN]: [[], []],
  [MsgType.RUN]: [[], []],
  [MsgType.END]: [[], []],
  [MsgType.COMPLETE]: [[], []],
  [MsgType.PING]: [['i'], ['y']],
  [MsgType.PONG]: [['i'], ['c']],
  [MsgType.ACK]: [['o'], ['i']],
  [MsgType.REQ_PAGES]: [['b', 'o', 'l'], []],
  [MsgType.SHUT]: [['s'], ['r', 'u', 'a']],
  [MsgType.RECV_BITMAP]: [['b', 'n'], []],
  [MsgType.RESUME]: [[], []],
  [MsgType.RESUME_ACK]: [[], []],
  [MsgType.ERROR]: [['r'], ['c']],
  [MsgType.STOPPED]: [[], []],
};
const ALLOWED_KEYS: Record<number, Set<string>> = {};
for (const [t, [req, opt]] of Object.entries(KEYS)) ALLOWED_KEYS[Number(t)] = new Set(['t', ...req, ...opt]);

/** Header map for a message (no checks; validate first). */
export function toWire(msg: Message): WireHeader {
  switch (msg.type) {
    case MsgType.SETUP:
      return {
        t: msg.type, k: msg.guest.kind, c: msg.guest.config,
        b: msg.blocks.map((b) => [b.name, b.length, b.pageSize]), cp: msg.caps, v: msg.vcpus,
        ...(msg.guest.module !== undefined ? { m: msg.guest.module } : {}),
      };
    case MsgType.PAGES:
      return { t: msg.type, b: msg.block, p: msg.pageSize, o: msg.offsets };
    case MsgType.PAGE_RUN:
    case MsgType.TRIMMED_RUN:
      return { t: msg.type, b: msg.block, p: msg.pageSize, o: msg.offset, n: msg.count };
    case MsgType.ZERO:
      return { t: msg.type, b: msg.block, p: msg.pageSize, r: msg.runs };
    case MsgType.ROUND:
      return { t: msg.type, r: msg.round, d: msg.dirtyBytes };
    case MsgType.ADVISE:
      return { t: msg.type, p: msg.pageSizes };
    case MsgType.DISCARD:
      return { t: msg.type, b: msg.block, r: msg.ranges };
    case MsgType.PING:
      return msg.ready === undefined ? { t: msg.type, i: msg.id } : { t: msg.type, i: msg.id, y: msg.ready };
    case MsgType.PONG:
      return msg.clockUs === undefined ? { t: msg.type, i: msg.id } : { t: msg.type, i: msg.id, c: msg.clockUs };
    case MsgType.ACK:
      return msg.info === undefined ? { t: msg.type, o: msg.of } : { t: msg.type, o: msg.of, i: msg.info };
    case MsgType.REQ_PAGES:
      return { t: msg.type, b: msg.block, o: msg.offset, l: msg.length };
    case MsgType.SHUT:
      return {
        t: msg.type,
        s: msg.status,
        ...(msg.reason === undefined ? {} : { r: msg.reason }),
        ...(msg.startedAfterUs === undefined ? {} : { u: msg.startedAfterUs }),
        ...(msg.startedAtUs === undefined ? {} : { a: msg.startedAtUs }),
      };
    case MsgType.RECV_BITMAP:
      return { t: msg.type, b: msg.block, n: msg.pages };
    case MsgType.ERROR:
      return msg.code === undefined ? { t: msg.type, r: msg.reason } : { t: msg.type, r: msg.reason, c: msg.code };
    default:
      return { t: msg.type };
  }
}

/**
 * Message candidate from a decoded header: checks it is a map with a known `t`,
 * no unknown keys and all required keys, and renames fields. Field values are
 * NOT checked here (validateMessage does that).
 */
export function fromWire(h: unknown): Message {
  if (typeof h !== 'object' || h === null || Object.getPrototypeOf(h) !== Object.prototype)
    throw new ProtocolError('MALFORMED', `frame header is not a map (got ${describe(h)})`);
  const w = h as WireHeader;
  const t = w['t'];
  if (t === undefined) throw new ProtocolError('MALFORMED', 'frame header has no message type field "t"');
  if (!isMsgType(t)) throw new ProtocolError('MALFORMED', `unknown message type ${describe(t)}`);
  const allowed = ALLOWED_KEYS[t]!;
  for (const k in w) {
    if (!allowed.has(k)) throw new ProtocolError('MALFORMED', `${msgTypeName(t)}: unknown header field ${JSON.stringify(k.slice(0, 32))}`);
  }
  for (const k of KEYS[t]![0]) {
    if (!(k in w)) throw new ProtocolError('MALFORMED', `${msgTypeName(t)}: missing header field "${k}"`);
  }
  switch (t) {
    case MsgType.SETUP: {
      const b = w['b'];
      let blocks: unknown = b;
      if (Array.isArray(b) && b.length <= MAX_BLOCKS) {
        blocks = b.map((e: unknown, i): BlockInfo => {
          if (!Array.isArray(e) || e.length !== 3)
            throw new ProtocolError('MALFORMED', `SETUP.blocks[${i}]: expected [name, length, pageSize], got ${describe(e)}`);
          return { name: e[0], length: e[1], pageSize: e[2] };
        });
      }
      const guest: Record<string, unknown> = { kind: w['k'], config: w['c'] };
      if ('m' in w) guest['module'] = w['m'];
      return { type: t, guest, blocks, caps: w['cp'], vcpus: w['v'] } as unknown as Message;
    }
    case MsgType.PAGES:
      return { type: t, block: w['b'], pageSize: w['p'], offsets: w['o'] } as Message;
    case MsgType.PAGE_RUN:
    case MsgType.TRIMMED_RUN:
      return { type: t, block: w['b'], pageSize: w['p'], offset: w['o'], count: w['n'] } as Message;
    case MsgType.ZERO:
      return { type: t, block: w['b'], pageSize: w['p'], runs: w['r'] } as Message;
    case MsgType.ROUND:
      return { type: t, round: w['r'], dirtyBytes: w['d'] } as Message;
    case MsgType.ADVISE:
      return { type: t, pageSizes: w['p'] } as Message;
    case MsgType.DISCARD:
      return { type: t, block: w['b'], ranges: w['r'] } as Message;
    case MsgType.PING:
      return ('y' in w ? { type: t, id: w['i'], ready: w['y'] } : { type: t, id: w['i'] }) as Message;
    case MsgType.PONG:
      return ('c' in w ? { type: t, id: w['i'], clockUs: w['c'] } : { type: t, id: w['i'] }) as Message;
    case MsgType.ACK:
      return ('i' in w ? { type: t, of: w['o'], info: w['i'] } : { type: t, of: w['o'] }) as Message;
    case MsgType.REQ_PAGES:
      return { type: t, block: w['b'], offset: w['o'], length: w['l'] } as Message;
    case MsgType.SHUT:
      return { type: t, status: w['s'], ...('r' in w ? { reason: w['r'] } : {}), ...('u' in w ? { startedAfterUs: w['u'] } : {}), ...('a' in w ? { startedAtUs: w['a'] } : {}) } as Message;
    case MsgType.RECV_BITMAP:
      return { type: t, block: w['b'], pages: w['n'] } as Message;
    case MsgType.ERROR:
      return ('c' in w ? { type: t, reason: w['r'], code: w['c'] } : { type: t, reason: w['r'] }) as Message;
    default:
      return { type: t } as Message;
  }
}
