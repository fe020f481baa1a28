/**
 * handshake.ts — owns opening a channel: dialling (`connectChannel`) or accepting
 * (`acceptChannel`) a TCP connection and exchanging the 32-byte hellos, so both ends know
 * they speak the same protocol version about the same migration before any frame moves.
 *
 * The accepting side always answers with its own hello (even when it is about to refuse), so
 * the dialler can name the mismatch; a refusal follows as an ERROR frame and a close.
 *
 * With `tls` credentials, TLS (tls.ts) runs between the TCP connect/accept and the hello
 * exchange, and every TLS mismatch fails both calls before a frame moves: a refusal during a
 * TLS handshake is written as hello + ERROR in one record, and `connectChannel` rejects with
 * its reason instead of returning a channel.
 */
import net from 'node:net';
import {
  HELLO_BYTES,
  MsgType,
  PROTOCOL_VERSION,
  ProtocolError,
  decodeHello,
  encodeHeader,
  encodeHello,
  type ChannelRole,
  type Hello,
  type Limits,
  type ProtocolErrorCode,
} from '@livemig/protocol';
import { Channel } from './channel.js';
import { formatEndpoint, type Endpoint } from './address.js';
import {
  TlsError,
  checkCredentials,
  clientFailure,
  isTlsErrorCode,
  labelled,
  leadingError,
  looksLikeTls,
  peekFirstBytes,
  secureClient,
  secureServer,
  type TlsCredentials,
} from './tls.js';

const NO_UUID = '00000000-0000-0000-0000-000000000000';

/**
 * Bytes a channel queues in user space before `send()` asks the caller to wait for drain.
 * Queued page payloads are views of guest RAM, not copies, so this costs no memory; it lets
 * a page range leave in a few large writev calls instead of many small ones.
 */
export const WRITE_HIGH_WATER_MARK = 4 * 1024 * 1024;

/** The role a peer answers with: the destination's side of a main connection is the return path. */
export function replyRole(role: ChannelRole): ChannelRole {
  return role === 'main' ? 'return' : role;
}

export interface ConnectOptions {
  endpoint: Endpoint;
  role: ChannelRole;
  uuid: string;
  /** Gives up dialling and waiting for the peer's hello after this long (default 10 s). */
  timeoutMs?: number;
  limits?: Partial<Limits>;
  /** Client-side TLS credentials (`loadTlsCredentials(opts, 'client')`): TLS 1.3 before the hello. */
  tls?: TlsCredentials;
}

/** Reads exactly HELLO_BYTES bytes from a socket; resolves with the hello bytes and any bytes after them. */
export function readHelloBytes(socket: net.Socket, timeoutMs: number, label: string): Promise<{ bytes: Buffer; leftover: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      have += chunk.length;
      if (have >= HELLO_BYTES) {
        cleanup();
        socket.pause();
        const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, have);
        resolve({ bytes: all.subarray(0, HELLO_BYTES), leftover: all.subarray(HELLO_BYTES) });
      }
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new Error(`${label}: ${(err as NodeJS.ErrnoException).code ?? err.message} while waiting for the hello`));
    };
    const onClose = (): void => {
      cleanup();
      reject(new ProtocolError('TRUNCATED', `${label}: connection closed after ${have} of the ${HELLO_BYTES} hello bytes`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new ProtocolError('TRUNCATED', `${label}: no hello within ${timeoutMs} ms (got ${have} of ${HELLO_BYTES} bytes)`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.resume();
  });
}

/**
 * Dials `endpoint` (over TLS with `opts.tls`), sends our hello and checks the answer. Rejects
 * on any mismatch; over TLS also when the listener refused us (its ERROR frame's reason).
 */
export async function connectChannel(opts: ConnectOptions): Promise<Channel> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const where = formatEndpoint(opts.endpoint);
  const label = `${opts.role} channel to ${where}`;
  if (opts.tls) checkCredentials(opts.tls, 'client', 'connectChannel');
  const raw = await dial(opts.endpoint, timeoutMs, label);
  let socket: net.Socket = raw;
  let closeGently = false;
  let tlsError: Error | undefined;
  const noteTlsError = (e: Error): void => {
    tlsError ??= e;
  };
  try {
    if (opts.tls) {
      const secured = await secureClient(raw, opts.tls, opts.endpoint.host, { timeoutMs, highWaterMark: WRITE_HIGH_WATER_MARK }).catch((e: Error) => {
        throw e instanceof TlsError ? labelled(label, e) : e;
      });
      socket = secured.socket;
      if (secured.rejection) {
        // Tell the listener why (it reads our hello, then this ERROR), without our migration UUID.
        closeGently = true;
        refuseWith(socket, opts.role, NO_UUID, secured.rejection.remote);
        throw labelled(label, secured.rejection.local);
      }
      // An alert after the handshake (TLS 1.3: the listener refusing our certificate) surfaces here.
      socket.on('error', noteTlsError);
    }
    socket.write(encodeHello({ role: opts.role, uuid: opts.uuid }));
    let bytes: Buffer;
    let leftover: Buffer;
    try {
      ({ bytes, leftover } = await readHelloBytes(socket, timeoutMs, label));
    } catch (e) {
      if (opts.tls && tlsError && /^ERR_SSL_/.test((tlsError as NodeJS.ErrnoException).code ?? '')) throw labelled(label, clientFailure(tlsError, opts.tls));
      throw e;
    } finally {
      socket.off('error', noteTlsError);
    }
    if (bytes.subarray(0, 4).toString('latin1') === 'LVMG' && bytes.readUInt16LE(4) !== PROTOCOL_VERSION) {
      throw new ProtocolError('VERSION', `${label}: the peer speaks protocol version ${bytes.readUInt16LE(4)}, this side speaks ${PROTOCOL_VERSION}`);
    }
    let hello: Hello;
    try {
      hello = decodeHello(bytes);
    } catch (e) {
      throw new ProtocolError((e as ProtocolError).code ?? 'MALFORMED', `${label}: the peer is not a livemig destination: ${(e as Error).message}`);
    }
    const want = replyRole(opts.role);
    // A refusal that came with the hello fails the call: always over TLS (it is written in the
    // same record), and in plaintext when a TLS listener says it needs TLS.
    const refused = leadingError(leftover, want);
    if (refused && (opts.tls || refused.code === 'TLS_PLAINTEXT')) {
      const message = `${label}: the destination refused the connection: ${refused.reason}`;
      if (isTlsErrorCode(refused.code)) throw new TlsError(refused.code, message);
      throw new ProtocolError((refused.code ?? 'UNEXPECTED') as ProtocolErrorCode, message);
    }
    if (hello.role !== want) throw new ProtocolError('ROLE', `${label}: role mismatch: expected ${want}, got ${hello.role}`);
    if (hello.uuid.toLowerCase() !== opts.uuid.toLowerCase()) throw new ProtocolError('UUID', `${label}: migration UUID mismatch: expected ${opts.uuid}, got ${hello.uuid}`);
    return new Channel(socket, { role: opts.role, uuid: opts.uuid, label }, { limits: opts.limits, leftover, readRole: want });
  } catch (e) {
    if (!closeGently) socket.destroy();
    throw e;
  }
}

function dial(endpoint: Endpoint, timeoutMs: number, label: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    // Node's Duplex honours writableHighWaterMark; @types/node does not list it for sockets.
    const socket = new net.Socket({ writableHighWaterMark: WRITE_HIGH_WATER_MARK } as net.SocketConstructorOpts);
    socket.connect({ host: endpoint.host, port: endpoint.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${label}: connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      socket.on('error', ignore); // see acceptChannel
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(`${label}: connect failed: ${err.code ?? err.message}`));
    });
  });
}

export interface AcceptOptions {
  /** Roles accepted on this listener (default: any). */
  roles?: ChannelRole[];
  /** The migration UUID this connection must belong to (recovery, preempt); default: any. */
  uuid?: string;
  timeoutMs?: number;
  limits?: Partial<Limits>;
  /**
   * Server-side TLS credentials (`loadTlsCredentials(opts, 'server')`): the connection must
   * start with a TLS 1.3 handshake; with x509, a client certificate signed by the CA (and
   * allowed by `authz`, if set) is required.
   */
  tls?: TlsCredentials;
}

/**
 * Reads the dialler's hello on an accepted socket, answers it and returns the channel.
 * On any mismatch the peer gets our hello and an ERROR frame naming the problem, and this
 * rejects with the same message.
 */
export async function acceptChannel(socket: net.Socket, opts: AcceptOptions = {}): Promise<{ channel: Channel; hello: Hello }> {
  // A peer may reset the connection at any moment; an 'error' without a listener would be
  // an uncaught exception. The Channel adds its own listener once it takes over.
  socket.on('error', ignore);
  const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (opts.tls) {
    try {
      checkCredentials(opts.tls, 'server', 'acceptChannel');
    } catch (e) {
      socket.destroy();
      throw e;
    }
    return acceptTls(socket, opts, opts.tls, peer, timeoutMs);
  }
  const label = `connection from ${peer}`;
  const { bytes, leftover } = await readHelloBytes(socket, timeoutMs, label).catch((e: Error) => {
    socket.destroy();
    throw e;
  });
  if (looksLikeTls(bytes)) {
    const e = new TlsError('TLS_NOT_EXPECTED', `${label}: the peer started a TLS handshake, but this listener is plaintext (enable TLS on both ends, or on neither)`);
    refuse(socket, e, undefined);
    throw e;
  }
  let hello: Hello;
  try {
    hello = decodeHello(bytes);
  } catch (e) {
    refuse(socket, e as Error, undefined);
    throw e;
  }
  return answerHello(socket, hello, opts, `${hello.role} channel from ${peer}`, leftover);
}

/** Checks the dialler's hello against `opts` (refusing it with a reason), answers it and makes the channel. */
function answerHello(socket: net.Socket, hello: Hello, opts: AcceptOptions, label: string, leftover: Buffer): { channel: Channel; hello: Hello } {
  try {
    checkHello(hello, opts, label);
  } catch (e) {
    refuse(socket, e as Error, hello);
    throw e;
  }
  socket.write(encodeHello({ role: replyRole(hello.role), uuid: hello.uuid }));
  // Page data flows towards the accepting end: read it into a ring (plaintext only; see ring-socket.ts).
  const channel = new Channel(socket, { role: replyRole(hello.role), uuid: hello.uuid, label }, { limits: opts.limits, leftover, readRole: hello.role, readRing: true });
  return { channel, hello };
}

function checkHello(hello: Hello, opts: AcceptOptions, label: string): void {
  if (opts.roles && !opts.roles.includes(hello.role)) {
    throw new ProtocolError('ROLE', `${label}: unexpected role ${hello.role} (expected ${opts.roles.join(' or ')})`);
  }
  if (opts.uuid && hello.uuid.toLowerCase() !== opts.uuid.toLowerCase()) {
    throw new ProtocolError('UUID', `${label}: migration UUID mismatch: expected ${opts.uuid}, got ${hello.uuid}`);
  }
}

/** acceptChannel over TLS: first bytes, handshake, the dialler's certificate, then the hello rules. */
async function acceptTls(raw: net.Socket, opts: AcceptOptions, creds: TlsCredentials, peer: string, timeoutMs: number): Promise<{ channel: Channel; hello: Hello }> {
  let label = `connection from ${peer}`;
  const first = await peekFirstBytes(raw, timeoutMs, label).catch((e: Error) => {
    raw.destroy();
    throw e;
  });
  if (!looksLikeTls(first)) {
    const head = first.subarray(0, 4).toString('latin1');
    if ('LVMG'.startsWith(head)) {
      // A plaintext livemig dialler: read its hello so that the refusal echoes it and the dialler reads the reason.
      const { bytes } = await readHelloBytes(raw, timeoutMs, label).catch((e: Error) => {
        raw.destroy();
        throw e;
      });
      let hello: Hello | undefined;
      try {
        hello = decodeHello(bytes);
        label = `${hello.role} channel from ${peer}`;
      } catch {
        hello = undefined;
      }
      const e = new TlsError('TLS_PLAINTEXT', `${label}: the peer spoke plaintext to a TLS listener (enable TLS on both ends, or on neither)`);
      refuse(raw, e, hello, 'the destination requires TLS, and this side dialled in plaintext (enable TLS on both ends, or on neither)');
      throw e;
    }
    raw.destroy();
    throw new TlsError('TLS_PLAINTEXT', `${label}: the peer does not speak TLS (it sent ${first.subarray(0, 8).toString('hex')}…), and this listener requires it`);
  }
  let securing: ReturnType<typeof secureServer>;
  try {
    securing = secureServer(raw, creds, { timeoutMs, highWaterMark: WRITE_HIGH_WATER_MARK });
  } catch (e) {
    // OpenSSL may refuse credentials synchronously (a key too small, say): the peer must not wait.
    raw.destroy();
    throw e;
  }
  const hs = await securing.catch((e: Error) => {
    throw e instanceof TlsError ? labelled(label, e) : e;
  });
  const socket = hs.socket;
  const who = hs.peerSubject ? ` (client certificate ${hs.peerSubject})` : hs.pskIdentity !== undefined ? ` (PSK identity "${hs.pskIdentity}")` : '';
  label = `connection from ${peer}${who}`;
  const { bytes, leftover } = await readHelloBytes(socket, timeoutMs, label).catch((e: Error) => {
    socket.destroy();
    throw e;
  });
  let hello: Hello | undefined;
  try {
    hello = decodeHello(bytes);
  } catch (e) {
    refuse(socket, e as Error, undefined);
    throw new ProtocolError((e as ProtocolError).code ?? 'MALFORMED', `${label}: ${(e as Error).message}`);
  }
  label = `${hello.role} channel from ${peer}${who}`;
  // The dialler refused our certificate: it says why right after its hello (and has given up).
  const told = leadingError(leftover, hello.role);
  if (told) {
    socket.destroy();
    const also = hs.rejection ? `; this side refuses the dialler too: ${hs.rejection.local.message}` : '';
    const message = `${label}: the dialler refused the connection: ${told.reason}${also}`;
    throw isTlsErrorCode(told.code) ? new TlsError(told.code, message) : new TlsError('TLS_HANDSHAKE', message);
  }
  if (hs.rejection) {
    const e = labelled(label, hs.rejection.local);
    refuse(socket, e, hello, hs.rejection.remote.reason);
    throw e;
  }
  return answerHello(socket, hello, opts, label, leftover);
}

/**
 * Answers with a hello echoing the dialler's UUID and role (so it reads the ERROR frame that
 * follows), then closes. `reason` is what the peer is told (default: the error's message).
 */
function refuse(socket: net.Socket, err: Error, hello: Hello | undefined, reason?: string): void {
  refuseWith(socket, replyRole(hello?.role ?? 'main'), hello?.uuid ?? NO_UUID, { reason: reason ?? err.message, code: (err as { code?: string }).code });
}

/** Writes a hello and an ERROR frame in one write (one TLS record), ends the socket and destroys it shortly after. */
function refuseWith(socket: net.Socket, role: ChannelRole, uuid: string, why: { reason: string; code?: string }): void {
  try {
    const error = encodeHeader({ type: MsgType.ERROR, reason: why.reason.slice(0, 4000), code: why.code }, 0);
    socket.write(Buffer.concat([encodeHello({ role, uuid }), error]));
    socket.end();
  } catch {
    // best effort
  }
  setTimeout(() => socket.destroy(), 200).unref();
}

function ignore(): void {
  // errors are reported through the channel's own listener or the hello reader
}
