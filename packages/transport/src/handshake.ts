/**
 * handshake.ts — owns opening a channel: dialling (`connectChannel`) or accepting
 * (`acceptChannel`) a TCP connection and exchanging the 32-byte hellos, so both ends know
 * they speak the same protocol version about the same migration before any frame moves.
 *
 * The accepting side always answers with its own hello (even when it is about to refuse), so
 * the dialler can name the mismatch; a refusal follows as an ERROR frame and a close.
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
} from '@livemig/protocol';
import { Channel } from './channel.js';
import { formatEndpoint, type Endpoint } from './address.js';

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

/** Dials `endpoint`, sends our hello and checks the answer. */
export async function connectChannel(opts: ConnectOptions): Promise<Channel> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const where = formatEndpoint(opts.endpoint);
  const label = `${opts.role} channel to ${where}`;
  const socket = await dial(opts.endpoint, timeoutMs, label);
  try {
    socket.write(encodeHello({ role: opts.role, uuid: opts.uuid }));
    const { bytes, leftover } = await readHelloBytes(socket, timeoutMs, label);
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
    if (hello.role !== want) throw new ProtocolError('ROLE', `${label}: role mismatch: expected ${want}, got ${hello.role}`);
    if (hello.uuid.toLowerCase() !== opts.uuid.toLowerCase()) throw new ProtocolError('UUID', `${label}: migration UUID mismatch: expected ${opts.uuid}, got ${hello.uuid}`);
    return new Channel(socket, { role: opts.role, uuid: opts.uuid, label }, { limits: opts.limits, leftover, readRole: want });
  } catch (e) {
    socket.destroy();
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
  let label = `connection from ${peer}`;
  const { bytes, leftover } = await readHelloBytes(socket, opts.timeoutMs ?? 10_000, label).catch((e: Error) => {
    socket.destroy();
    throw e;
  });
  let hello: Hello | undefined;
  try {
    hello = decodeHello(bytes);
    label = `${hello.role} channel from ${peer}`;
    if (opts.roles && !opts.roles.includes(hello.role)) {
      throw new ProtocolError('ROLE', `${label}: unexpected role ${hello.role} (expected ${opts.roles.join(' or ')})`);
    }
    if (opts.uuid && hello.uuid.toLowerCase() !== opts.uuid.toLowerCase()) {
      throw new ProtocolError('UUID', `${label}: migration UUID mismatch: expected ${opts.uuid}, got ${hello.uuid}`);
    }
  } catch (e) {
    refuse(socket, e as Error, hello);
    throw e;
  }
  socket.write(encodeHello({ role: replyRole(hello.role), uuid: hello.uuid }));
  const channel = new Channel(socket, { role: replyRole(hello.role), uuid: hello.uuid, label }, { limits: opts.limits, leftover, readRole: hello.role });
  return { channel, hello };
}

/** Answers with a hello echoing the dialler's UUID and role (so it reads the ERROR frame that follows), then closes. */
function refuse(socket: net.Socket, err: Error, hello: Hello | undefined): void {
  try {
    socket.write(encodeHello({ role: replyRole(hello?.role ?? 'main'), uuid: hello?.uuid ?? '00000000-0000-0000-0000-000000000000' }));
    socket.write(encodeHeader({ type: MsgType.ERROR, reason: err.message.slice(0, 4000), code: (err as ProtocolError).code }, 0));
    socket.end();
  } catch {
    // best effort
  }
  setTimeout(() => socket.destroy(), 200).unref();
}

function ignore(): void {
  // errors are reported through the channel's own listener or the hello reader
}
