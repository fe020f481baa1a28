/**
 * hello.ts — owns the connection preamble: a fixed 32-byte binary hello sent
 * first on every connection (not msgpack), its checks, and `HelloReader`, which
 * collects it across chunks and hands back the bytes that follow.
 *
 *   offset 0   4 bytes  magic "LVMG"
 *   offset 4   u16 LE   protocol version (PROTOCOL_VERSION)
 *   offset 6   u8       channel role (1 main, 2 return, 3 preempt)
 *   offset 7   u8       flags (0)
 *   offset 8   16 bytes migration UUID (binary)
 *   offset 24  8 bytes  reserved (0)
 */
import { randomUUID } from 'node:crypto';
import { ROLE_CODES, isChannelRole, roleFromCode, type ChannelRole } from './channels.js';
import { ProtocolError } from './errors.js';

/**
 * The wire format's version: both ends must speak the same one (headers are checked key by
 * key, so a field one end adds, the other refuses). 2: PONG.clockUs and SHUT.startedAtUs.
 * 3: TRIMMED_RUN.
 */
export const PROTOCOL_VERSION = 3;
export const HELLO_BYTES = 32;
export const HELLO_MAGIC = 'LVMG';
const MAGIC = Buffer.from(HELLO_MAGIC, 'latin1');
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface Hello {
  version: number;
  role: ChannelRole;
  /** Canonical lowercase 8-4-4-4-12 form. */
  uuid: string;
}

/** A fresh migration id (random UUID). */
export function newMigrationId(): string {
  return randomUUID();
}

export function encodeHello(h: { version?: number; role: ChannelRole; uuid: string }): Buffer {
  const version = h.version ?? PROTOCOL_VERSION;
  if (!Number.isInteger(version) || version < 0 || version > 0xffff) throw new ProtocolError('VERSION', `protocol version ${version} is not a u16`);
  if (!isChannelRole(h.role)) throw new ProtocolError('ROLE', `unknown channel role ${JSON.stringify(h.role)}`);
  const uuid = typeof h.uuid === 'string' ? h.uuid.toLowerCase() : '';
  if (!UUID_RE.test(uuid)) throw new ProtocolError('UUID', `migration UUID ${JSON.stringify(h.uuid)} is not in 8-4-4-4-12 hex form`);
  const buf = Buffer.alloc(HELLO_BYTES);
  MAGIC.copy(buf, 0);
  buf.writeUInt16LE(version, 4);
  buf.writeUInt8(ROLE_CODES[h.role], 6);
  buf.write(uuid.replace(/-/g, ''), 8, 16, 'hex');
  return buf;
}

function showBytes(b: Buffer): string {
  const hex = '0x' + b.toString('hex');
  for (const c of b) if (c < 0x20 || c > 0x7e) return hex;
  return `${hex} (${JSON.stringify(b.toString('latin1'))})`;
}

/** Check the first n (≤ 4) magic bytes. */
function checkMagic(buf: Buffer, n = 4): void {
  if (!buf.subarray(0, n).equals(MAGIC.subarray(0, n)))
    throw new ProtocolError('BAD_MAGIC', `bad magic: expected "${HELLO_MAGIC}", got ${showBytes(buf.subarray(0, n))}`);
}

/** Parse a 32-byte hello. Throws ProtocolError on bad magic, version, role, flags or reserved bytes. */
export function decodeHello(buf: Buffer): Hello {
  if (buf.length < HELLO_BYTES) throw new ProtocolError('TRUNCATED', `truncated hello: got ${buf.length} of ${HELLO_BYTES} bytes`);
  checkMagic(buf);
  const version = buf.readUInt16LE(4);
  if (version !== PROTOCOL_VERSION)
    throw new ProtocolError('VERSION', `unsupported protocol version ${version} (this side speaks ${PROTOCOL_VERSION})`);
  const role = roleFromCode(buf[6]!);
  if (buf[7] !== 0) throw new ProtocolError('MALFORMED', `hello flags must be 0, got 0x${buf[7]!.toString(16)}`);
  for (let i = 24; i < HELLO_BYTES; i++)
    if (buf[i] !== 0) throw new ProtocolError('MALFORMED', `hello reserved bytes must be 0, got 0x${buf.toString('hex', 24, 32)}`);
  const h = buf.toString('hex', 8, 24);
  const uuid = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  return { version, role, uuid };
}

/** Check a received hello against what this side expects; throws ProtocolError naming the mismatch. */
export function checkHello(hello: Hello, expected: { role?: ChannelRole; uuid?: string }): void {
  if (expected.uuid !== undefined && hello.uuid !== expected.uuid.toLowerCase())
    throw new ProtocolError('UUID', `migration UUID mismatch: expected ${expected.uuid.toLowerCase()}, got ${hello.uuid}`);
  if (expected.role !== undefined && hello.role !== expected.role)
    throw new ProtocolError('ROLE', `role mismatch: expected ${expected.role}, got ${hello.role}`);
}

/**
 * Collects the 32-byte hello across chunks. push() returns null until it has
 * all of it, then `{ hello, rest }` where `rest` is the rest of that chunk
 * (zero-copy, possibly empty) to feed to a FrameDecoder. The magic is checked
 * byte by byte as it arrives, so a wrong peer fails fast.
 */
export class HelloReader {
  private readonly buf = Buffer.alloc(HELLO_BYTES);
  private got = 0;
  private result: { hello: Hello; rest: Buffer } | null = null;

  get done(): boolean {
    return this.result !== null;
  }

  push(chunk: Buffer): { hello: Hello; rest: Buffer } | null {
    if (this.result) throw new Error('HelloReader: hello already read; feed further bytes to the frame decoder');
    const take = Math.min(HELLO_BYTES - this.got, chunk.length);
    chunk.copy(this.buf, this.got, 0, take);
    const before = this.got;
    this.got += take;
    if (before < 4) checkMagic(this.buf, Math.min(this.got, 4));
    if (this.got < HELLO_BYTES) return null;
    this.result = { hello: decodeHello(this.buf), rest: chunk.subarray(take) };
    return this.result;
  }

  /** Declare the stream finished; throws ProtocolError('TRUNCATED') if the hello is incomplete. */
  end(): void {
    if (this.got < HELLO_BYTES) throw new ProtocolError('TRUNCATED', `truncated hello: got ${this.got} of ${HELLO_BYTES} bytes`);
  }
}
