/**
 * ring-socket.ts — owns moving a plaintext TCP connection onto a socket that reads into a
 * ReadRing (node:net's `onread` with a buffer per read chosen by us), for channels that
 * receive page data at gigabytes a second.
 *
 * A default socket allocates a fresh 64 KiB buffer for every read. At 1 GB/s that is 16 000
 * allocations a second of memory the garbage collector must account for, and V8 answers with a
 * full mark-compact every ~40 ms, on the main thread and on helper threads that take CPU from
 * the guest. Reading into a ring allocates nothing per read, reads up to megabytes at once,
 * and keeps consecutive reads contiguous.
 *
 * Node offers `onread` only to sockets it creates, not to the ones a server accepts, so the
 * connection moves: its descriptor is duplicated, a new socket reads the duplicate, and the
 * accepted socket (its descriptor only: the connection lives on) is destroyed. Bytes the
 * accepted socket had already read come back as `pending`, to be decoded first. TLS sockets,
 * and sockets with writes still queued, are left as they are (null).
 */
import net from 'node:net';
import tls from 'node:tls';
import { dupFd } from '@livemig/uffd';
import { ReadRing } from '@livemig/protocol';

export interface RingSocket {
  socket: net.Socket;
  /** Bytes read by the old socket and not consumed yet: decode these before anything read later. */
  pending: Buffer | null;
}

interface TcpHandle {
  fd?: number;
  writeQueueSize?: number;
}

/**
 * Moves `socket` onto a ring-reading socket whose reads go to `onRead(bytes)` (valid until the
 * next read). `retained()` must say how many of the bytes delivered so far are still held.
 * Returns null when the socket cannot move (TLS, no descriptor, writes queued).
 */
export function moveToReadRing(socket: net.Socket, ring: ReadRing, retained: () => number, onRead: (bytes: Buffer) => void): RingSocket | null {
  if (socket instanceof tls.TLSSocket || socket.destroyed || socket.connecting) return null;
  const handle = (socket as unknown as { _handle?: TcpHandle | null })._handle;
  const fd = handle?.fd;
  if (fd === undefined || fd < 0) return null;
  // Bytes libuv has not handed to the kernel would be lost with the old socket.
  if (socket.writableLength > 0 || (handle!.writeQueueSize ?? 0) > 0) return null;
  let dup: number;
  try {
    dup = dupFd(fd, 'channel socket');
  } catch {
    return null;
  }
  // What the old socket read and nobody consumed (it may read ahead while paused).
  const pending = socket.read() as Buffer | null;
  socket.removeAllListeners('data');
  socket.on('error', () => undefined);
  // Closes the old descriptor only; no FIN, no RST: the connection lives on in the duplicate.
  socket.destroy();
  // @types/node lists `onread` for net.connect() only; the Socket constructor takes it too.
  const options: net.SocketConstructorOpts & { onread: net.OnReadOpts } = {
    fd: dup,
    readable: true,
    writable: true,
    onread: {
      buffer: () => ring.next(retained()),
      callback: (n: number) => {
        onRead(ring.commit(n));
        return true;
      },
    },
  };
  const moved = new net.Socket(options);
  return { socket: moved, pending: pending && pending.length > 0 ? pending : null };
}
