/**
 * channel.ts — owns one migration connection: the hello exchange, framed reads through the
 * protocol's incremental decoder, framed writes with backpressure, and closing with a reason.
 *
 * Reads are push-driven: every decoded frame goes to `onFrame`. A handler that returns a
 * promise pauses the socket until it settles, so a slow consumer never makes the decoder
 * buffer without bound. A handler that throws closes the channel with that error (after
 * telling the peer with an ERROR frame). Writes never copy page data: the header is encoded
 * and the payload buffers follow it in one corked batch.
 */
import type { Socket } from 'node:net';
import {
  FrameDecoder,
  MsgType,
  ProtocolError,
  encodeHeader,
  type ChannelRole,
  type Frame,
  type Limits,
  type Message,
  ReadRing,
  type ReadRingOptions,
} from '@livemig/protocol';
import { SOL_SOCKET, SO_RCVBUF, SO_SNDBUF, getSocketInt, setSocketInt } from '@livemig/uffd';
import { moveToReadRing } from './ring-socket.js';
import { trace } from './trace.js';

/**
 * Default bound of a postcopy main channel's kernel queue at each end, without a preempt
 * channel (`boundPostcopyQueue`; the sources' and destinations' `postcopyQueueBytes`).
 */
export const DEFAULT_POSTCOPY_QUEUE_BYTES = 1024 * 1024;

export type FrameHandler = (frame: Frame) => void | Promise<void>;

export interface ChannelInfo {
  /** The role of this connection (main, return, preempt) as named in its hello. */
  role: ChannelRole;
  /** Migration UUID both ends agreed on. */
  uuid: string;
  /** A label for error messages, e.g. `main channel to 10.0.0.2:4444`. */
  label: string;
}

export class ChannelClosedError extends Error {
  constructor(label: string, why: string) {
    super(`${label}: ${why}`);
    this.name = 'ChannelClosedError';
  }
}

export class Channel {
  readonly socket: Socket;
  readonly info: ChannelInfo;
  /** Bytes written (headers and payloads) and read, for reports. */
  bytesWritten = 0;
  bytesRead = 0;
  /**
   * When the latest bytes were read from the socket (performance.now()). A frame handler sees
   * when the read that brought its frame arrived, not when its turn came: the frames before it
   * in the same read were processed in between.
   */
  lastReadAt = 0;
  private readonly decoder: FrameDecoder;
  private handler: FrameHandler | null = null;
  private paused = false;
  private closedError: Error | null = null;
  private isClosed = false;
  private closeWaiters: Array<(err: Error | null) => void> = [];
  private drainWaiters: Array<(err?: Error) => void> = [];

  constructor(
    socket: Socket,
    info: ChannelInfo,
    opts: { limits?: Partial<Limits>; leftover?: Buffer; readRole?: ChannelRole; readRing?: boolean | ReadRingOptions } = {},
  ) {
    this.info = info;
    this.decoder = new FrameDecoder({ ...opts.limits, role: opts.readRole });
    // A plaintext connection that brings page data reads into a ring (ring-socket.ts): no
    // allocation per read, and a payload is one contiguous segment. One that cannot move (TLS)
    // copies what it reads into the ring instead (copyIntoRing).
    const ring = opts.readRing ? new ReadRing(opts.readRing === true ? {} : opts.readRing) : null;
    const moved = ring ? moveToReadRing(socket, ring, () => this.decoder.bufferedBytes, (b) => this.onData(b)) : null;
    if (moved) socket = moved.socket;
    this.socket = socket;
    this.readsIntoRing = moved !== null;
    socket.setNoDelay(true);
    if (!moved) socket.on('data', ring ? (chunk: Buffer) => this.copyIntoRing(ring, chunk) : (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.flushDrainWaiters());
    socket.on('error', (err) => this.fail(new ChannelClosedError(info.label, `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`.trim())));
    // The peer going away does not discard what it sent before: frames already received (an
    // ERROR saying why, typically) are delivered first, even if the handler is busy.
    socket.on('end', () => this.onPeerGone('connection closed by peer'));
    socket.on('close', () => this.onPeerGone('connection closed'));
    // Bytes that arrived with the hello (and, for a moved socket, what the old one read ahead):
    // decode them once a handler is set, before anything read later.
    const early = [opts.leftover, moved?.pending].filter((b): b is Buffer => b !== undefined && b !== null && b.length > 0);
    if (early.length > 0) queueMicrotask(() => early.forEach((b) => this.onData(b)));
    // The hello reader paused the socket; a 'data' listener alone does not resume it.
    socket.resume();
  }

  /** True when reads go into a ReadRing (a plaintext connection moved by ring-socket.ts). */
  readonly readsIntoRing: boolean;

  /** Sets the frame handler; frames that arrived before are delivered now. */
  setHandler(handler: FrameHandler): void {
    this.handler = handler;
    this.pump();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** True while a handler's promise holds reading back (the peer is not to blame for silence). */
  get readPaused(): boolean {
    return this.paused;
  }

  /** The error that closed the channel, if any. */
  get error(): Error | null {
    return this.closedError;
  }

  /**
   * Postcopy without a preempt channel: requested pages share the main channel with the
   * background stream and wait behind what its kernel queues hold, so each end bounds its own
   * (the source its send queue, `'send'`; the destination its receive queue, `'receive'`) to
   * `bytes` (0: left to the kernel). Returns the size the kernel reports, or undefined when
   * left alone or refused: a refusal only costs latency, so it is traced, not thrown.
   */
  boundPostcopyQueue(direction: 'send' | 'receive', bytes: number): number | undefined {
    if (bytes <= 0) return undefined;
    try {
      const r = this.limitKernelQueues(direction === 'send' ? { sendBytes: bytes } : { receiveBytes: bytes });
      return r ? (direction === 'send' ? r.sendBytes : r.receiveBytes) : undefined;
    } catch (e) {
      trace(direction === 'send' ? 'source' : 'dest', `main channel queue left as it is: ${(e as Error).message}`);
      return undefined;
    }
  }

  /**
   * Bounds the kernel's queues of this connection (SO_SNDBUF, SO_RCVBUF): Linux then stops
   * growing them by itself and keeps twice the figure (half for its own bookkeeping). For a
   * connection that carries bulk data and urgent messages alike (postcopy without a preempt
   * channel): a message waits behind at most what these queues hold. Returns the sizes the
   * kernel reports afterwards, or null when the socket has no descriptor to set them on.
   */
  limitKernelQueues(opts: { sendBytes?: number; receiveBytes?: number }): { sendBytes: number; receiveBytes: number } | null {
    const fd = socketFd(this.socket);
    if (fd === null) return null;
    const what = `${this.info.label} socket`;
    if (opts.sendBytes !== undefined) setSocketInt(fd, SOL_SOCKET, SO_SNDBUF, opts.sendBytes, what);
    if (opts.receiveBytes !== undefined) setSocketInt(fd, SOL_SOCKET, SO_RCVBUF, opts.receiveBytes, what);
    return { sendBytes: getSocketInt(fd, SOL_SOCKET, SO_SNDBUF, what), receiveBytes: getSocketInt(fd, SOL_SOCKET, SO_RCVBUF, what) };
  }

  /** True while the socket's write buffer is over its high-water mark. */
  get congested(): boolean {
    return this.socket.writableNeedDrain;
  }

  /**
   * Writes one frame: header, then the payload buffers as they are (no copy). Returns
   * false when the caller should `await drained()` before writing more. `written` is called
   * once the kernel has taken the whole frame (the payload may then be reused), with an error
   * if it never will.
   */
  send(msg: Message, payload?: Buffer | readonly Buffer[], written?: (err?: Error | null) => void): boolean {
    if (this.isClosed) throw this.closedError ?? new ChannelClosedError(this.info.label, 'channel closed');
    let payloadLength = 0;
    if (payload) {
      if (Buffer.isBuffer(payload)) payloadLength = payload.length;
      else for (const p of payload) payloadLength += p.length;
    }
    const header = encodeHeader(msg, payloadLength);
    this.bytesWritten += header.length + payloadLength;
    if (!payload || payloadLength === 0) return this.socket.write(header, written);
    this.socket.cork();
    this.socket.write(header);
    let ok = true;
    if (Buffer.isBuffer(payload)) ok = this.socket.write(payload, written);
    else {
      let last = payload.length - 1;
      while (payload[last]!.length === 0) last--;
      for (let i = 0; i <= last; i++) if (payload[i]!.length > 0) ok = this.socket.write(payload[i]!, i === last ? written : undefined);
    }
    this.socket.uncork();
    return ok;
  }

  /**
   * Holds writes back until the matching `uncork()`, so the frames written in between leave
   * in one writev (one syscall) instead of one each. Nests.
   */
  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  /** Resolves when the write buffer has drained (at once if it is not congested). */
  drained(): Promise<void> {
    if (this.isClosed) return Promise.reject(this.closedError ?? new ChannelClosedError(this.info.label, 'channel closed'));
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.drainWaiters.push((err) => (err ? reject(err) : resolve()));
    });
  }

  /** Resolves when every byte written so far has been handed to the kernel. */
  flushed(): Promise<void> {
    if (this.isClosed) return Promise.reject(this.closedError ?? new ChannelClosedError(this.info.label, 'channel closed'));
    return new Promise((resolve, reject) => {
      this.socket.write(Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Resolves with the closing error (null for a clean local close) once closed. */
  whenClosed(): Promise<Error | null> {
    if (this.isClosed) return Promise.resolve(this.closedError);
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  /**
   * Closes the channel. With an error, the peer is first told the reason in an ERROR
   * frame (best effort) and the error becomes this channel's closing error.
   */
  close(err?: Error): void {
    if (this.isClosed) return;
    if (err && !this.socket.destroyed && this.socket.writable) {
      try {
        this.socket.write(encodeHeader({ type: MsgType.ERROR, reason: truncate(err.message, 4000), code: (err as { code?: string }).code }, 0));
      } catch {
        // The error frame is a courtesy; the close below is what matters.
      }
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 200).unref();
    } else {
      this.socket.destroy();
    }
    this.finish(err ?? null);
  }

  private peerGone: string | null = null;

  private onPeerGone(why: string): void {
    if (this.peerGone === null) this.peerGone = why;
    this.settlePeerGone();
  }

  /** Once the peer has gone and every complete frame was handled, close with the reason. */
  private settlePeerGone(): void {
    if (this.peerGone === null || this.isClosed || this.paused) return;
    this.pump();
    if (this.isClosed || this.paused) return;
    const buffered = this.decoder.bufferedBytes;
    if (buffered > 0) {
      this.fail(new ChannelClosedError(this.info.label, `connection closed by peer in the middle of a frame (${buffered} bytes of it received)`));
    } else {
      this.fail(new ChannelClosedError(this.info.label, this.peerGone));
    }
  }

  private fail(err: Error): void {
    if (this.isClosed) return;
    this.socket.destroy();
    this.finish(err);
  }

  private finish(err: Error | null): void {
    this.isClosed = true;
    this.closedError = err;
    const waiters = this.closeWaiters;
    this.closeWaiters = [];
    for (const w of waiters) w(err);
    this.flushDrainWaiters(err ?? new ChannelClosedError(this.info.label, 'channel closed'));
  }

  private flushDrainWaiters(err?: Error): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w(err);
  }

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    this.bytesRead += chunk.length;
    this.lastReadAt = performance.now();
    try {
      this.decoder.push(chunk);
    } catch (e) {
      this.close(asError(e));
      return;
    }
    this.pump();
  }

  /**
   * Copies a chunk read by a socket that cannot read into the ring itself (TLS: node:tls
   * decrypts into a fresh buffer of at most one 16 KiB record per 'data' event). Without the
   * copy a 1 MiB run of pages arrives as 64 segments, a page straddles two of them, and the
   * destination places it with one UFFDIO_COPY per piece: 8 KiB a call on average, where 4 KiB
   * calls run at half the rate of 1 MiB calls here (`pnpm bench`, uffd: 1.6 against 3.3 GB/s).
   * The copy is of bytes still in the cache.
   * While a handler's promise holds reading back, the frame it holds may point into the ring:
   * the rest goes to the decoder as it is, and the ring is not written until reading resumes.
   */
  private copyIntoRing(ring: ReadRing, chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.paused && !this.isClosed) {
      const space = ring.next(this.decoder.bufferedBytes);
      const n = chunk.copy(space, 0, at);
      at += n;
      this.onData(ring.commit(n));
    }
    if (at < chunk.length) this.onData(at === 0 ? chunk : chunk.subarray(at));
  }

  private pump(): void {
    if (!this.handler) return;
    while (!this.paused && !this.isClosed) {
      let frame: Frame | null;
      try {
        frame = this.decoder.next();
      } catch (e) {
        this.close(asError(e));
        return;
      }
      if (!frame) return;
      let r: void | Promise<void>;
      try {
        r = this.handler(frame);
      } catch (e) {
        this.close(asError(e));
        return;
      }
      if (r && typeof (r as Promise<void>).then === 'function') {
        this.paused = true;
        this.socket.pause();
        (r as Promise<void>).then(
          () => {
            this.paused = false;
            if (this.isClosed) return;
            this.socket.resume();
            this.pump();
            this.settlePeerGone();
          },
          (e) => this.close(asError(e)),
        );
        return;
      }
    }
  }
}

function asError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new ProtocolError('MALFORMED', String(e));
}

function truncate(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`;
}

/**
 * The descriptor under a socket: a plain one's handle, or for TLS the TCP handle (or socket)
 * it wraps. null when there is none (closed, or a stream that is not a socket).
 */
function socketFd(socket: Socket): number | null {
  type WithFd = { fd?: number; _handle?: { fd?: number } | null };
  const s = socket as unknown as { _handle?: { fd?: number } | null; _parent?: WithFd | null };
  for (const fd of [s._handle?.fd, s._parent?.fd, s._parent?._handle?.fd]) {
    if (typeof fd === 'number' && fd >= 0) return fd;
  }
  return null;
}
