/**
 * channels.ts — owns the three channel roles (main, return, preempt), their
 * one-byte wire codes, and which message types each channel may carry.
 */
import { ProtocolError } from './errors.js';
import { MsgType } from './messages.js';

/** main: source → destination; return: destination → source (reverse of main's
 *  connection); preempt: its own connection, urgent pages source → destination and the
 *  page requests that asked for them destination → source. */
export type ChannelRole = 'main' | 'return' | 'preempt';

export const ROLE_CODES: Readonly<Record<ChannelRole, number>> = { main: 1, return: 2, preempt: 3 };
export const ROLES: readonly ChannelRole[] = ['main', 'return', 'preempt'];

export function isChannelRole(r: unknown): r is ChannelRole {
  return r === 'main' || r === 'return' || r === 'preempt';
}

/** Role for a wire code; throws ProtocolError('ROLE') for unknown codes. */
export function roleFromCode(code: number): ChannelRole {
  const r = ROLES[code - 1];
  if (r === undefined || !Number.isInteger(code)) throw new ProtocolError('ROLE', `unknown channel role code ${code} (expected 1 main, 2 return, 3 preempt)`);
  return r;
}

const T = MsgType;
const ANY = [T.PING, T.PONG, T.ERROR];
const ALLOWED: Record<ChannelRole, Set<number>> = {
  main: new Set<number>([
    T.SETUP, T.PAGES, T.PAGE_RUN, T.TRIMMED_RUN, T.ZERO, T.DEVICE, T.ROUND, T.ADVISE, T.DISCARD,
    T.LISTEN, T.RUN, T.END, T.COMPLETE, T.STOPPED, T.RESUME, ...ANY,
  ]),
  return: new Set<number>([T.ACK, T.REQ_PAGES, T.SHUT, T.RECV_BITMAP, T.RESUME_ACK, ...ANY]),
  preempt: new Set<number>([T.PAGES, T.PAGE_RUN, T.ZERO, T.REQ_PAGES, ...ANY]),
};

/** Whether a message type may be sent on a channel of the given role. */
export function allowedOn(role: ChannelRole, type: MsgType): boolean {
  return ALLOWED[role].has(type);
}
