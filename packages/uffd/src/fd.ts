/**
 * fd.ts — owns plain file descriptors: the open flags this package uses and `close`, which
 * reports failure as a SyscallError instead of a silent -1.
 */
import { c, errno } from './libc.js';
import { SyscallError } from './errors.js';

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

/** close(fd); `object` names the descriptor in the error (default `fd N`). */
export function close(fd: number, object?: string): void {
  if (c.close(fd) !== 0) throw new SyscallError('close', errno(), object ?? `fd ${fd}`);
}

/** open(path, flags, mode) returning the descriptor; throws `open failed: ENOENT (/path)`. */
export function openPath(path: string, flags: number, mode = 0): number {
  const fd = c.open(path, flags | O_CLOEXEC, mode);
  if (fd < 0) throw new SyscallError('open', errno(), path);
  return fd;
}

const F_DUPFD_CLOEXEC = 1030;

/**
 * A new descriptor for the same open file as `fd` (fcntl F_DUPFD_CLOEXEC): lets another
 * thread own a connection after this thread's handle on it is closed.
 */
export function dupFd(fd: number, object?: string): number {
  const d = c.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) throw new SyscallError('fcntl(F_DUPFD_CLOEXEC)', errno(), object ?? `fd ${fd}`);
  return d;
}

/** Socket option levels and names used with `setSocketInt` / `getSocketInt` (Linux). */
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const IPPROTO_TCP = 6;
export const TCP_NOTSENT_LOWAT = 25;

const OPTION_NAMES: Record<string, string> = {
  [`${SOL_SOCKET}:${SO_SNDBUF}`]: 'SO_SNDBUF',
  [`${SOL_SOCKET}:${SO_RCVBUF}`]: 'SO_RCVBUF',
  [`${IPPROTO_TCP}:${TCP_NOTSENT_LOWAT}`]: 'TCP_NOTSENT_LOWAT',
};
const optionName = (level: number, name: number): string => OPTION_NAMES[`${level}:${name}`] ?? `${level}, ${name}`;

/** setsockopt(fd, level, name, &int) on a socket descriptor. */
export function setSocketInt(fd: number, level: number, name: number, value: number, object?: string): void {
  const v = Buffer.alloc(4);
  v.writeInt32LE(value, 0);
  if (c.setsockopt(fd, level, name, v, 4) !== 0) throw new SyscallError(`setsockopt(${optionName(level, name)})`, errno(), object ?? `fd ${fd}`);
}

/** getsockopt(fd, level, name) of an int option. */
export function getSocketInt(fd: number, level: number, name: number, object?: string): number {
  const v = Buffer.alloc(4);
  const len = [4];
  if (c.getsockopt(fd, level, name, v, len) !== 0) throw new SyscallError(`getsockopt(${optionName(level, name)})`, errno(), object ?? `fd ${fd}`);
  return v.readInt32LE(0);
}
