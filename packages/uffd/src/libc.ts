/**
 * libc.ts — owns the koffi binding to the C library: one declaration per libc function the
 * package calls, typed with plain numbers (addresses fit in 47 bits on x86_64, so a JS number
 * holds them exactly). Nothing outside this package calls these directly; the typed wrappers
 * in the other modules check every result and throw `SyscallError`.
 *
 * Variadic C functions (ioctl, open, syscall) are declared with fixed arguments, which is what
 * koffi needs and what the x86_64 ABI allows for integer and pointer arguments.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');

export const c = {
  syscall1: lib.func('long syscall(long nr, long a1)') as (nr: number, a1: number) => number,
  syscall6: lib.func('long syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6)') as (
    nr: number, a1: number, a2: number, a3: number, a4: number, a5: number, a6: number) => number,
  syscall3Buf: lib.func('long syscall(long nr, long a1, void *a2, long a3)') as (nr: number, a1: number, a2: Buffer, a3: number) => number,
  ioctlPtr: lib.func('int ioctl(int fd, unsigned long req, void *arg)') as (fd: number, req: number, arg: Buffer) => number,
  ioctlInt: lib.func('int ioctl(int fd, unsigned long req, unsigned long arg)') as (fd: number, req: number, arg: number) => number,
  /** ioctl with the argument struct given by address (a preallocated stable buffer): no per-call marshalling. */
  ioctlAddr: lib.func('int ioctl(int fd, unsigned long req, intptr_t arg)') as (fd: number, req: number, arg: number) => number,
  open: lib.func('int open(const char *path, int flags, int mode)') as (path: string, flags: number, mode: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  fcntl: lib.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number,
  read: lib.func('intptr_t read(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number,
  readAddr: lib.func('intptr_t read(int fd, intptr_t buf, size_t len)') as (fd: number, addr: number, len: number) => number,
  pread: lib.func('intptr_t pread(int fd, void *buf, size_t len, int64_t off)') as (fd: number, buf: Buffer, len: number, off: number) => number,
  write: lib.func('intptr_t write(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number,
  mmap: lib.func('int64_t mmap(intptr_t addr, size_t len, int prot, int flags, int fd, int64_t off)') as (
    addr: number, len: number, prot: number, flags: number, fd: number, off: number) => number,
  munmap: lib.func('int munmap(intptr_t addr, size_t len)') as (addr: number, len: number) => number,
  madvise: lib.func('int madvise(intptr_t addr, size_t len, int advice)') as (addr: number, len: number, advice: number) => number,
  mlock: lib.func('int mlock(intptr_t addr, size_t len)') as (addr: number, len: number) => number,
  munlock: lib.func('int munlock(intptr_t addr, size_t len)') as (addr: number, len: number) => number,
  munlockall: lib.func('int munlockall()') as () => number,
  memfdCreate: lib.func('int memfd_create(const char *name, unsigned int flags)') as (name: string, flags: number) => number,
  ftruncate: lib.func('int ftruncate(int fd, int64_t len)') as (fd: number, len: number) => number,
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t off, int64_t len)') as (fd: number, mode: number, off: number, len: number) => number,
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as (init: number, flags: number) => number,
  poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)') as (fds: Buffer, nfds: number, timeout: number) => number,
  gettid: lib.func('int gettid()') as () => number,
  setsockopt: lib.func('int setsockopt(int fd, int level, int name, void *val, unsigned int len)') as (fd: number, level: number, name: number, val: Buffer, len: number) => number,
  getsockopt: lib.func('int getsockopt(int fd, int level, int name, void *val, _Inout_ unsigned int *len)') as (fd: number, level: number, name: number, val: Buffer, len: number[]) => number,
  memcpyFromBuf: lib.func('intptr_t memcpy(intptr_t dst, void *src, size_t n)') as (dst: number, src: Buffer, n: number) => number,
  memcpyToBuf: lib.func('intptr_t memcpy(void *dst, intptr_t src, size_t n)') as (dst: Buffer, src: number, n: number) => number,
};

/** errno of the last failed call on this thread. */
export function errno(): number {
  return koffi.errno();
}

/** The address of a Buffer's first byte (includes its byteOffset), as a number. */
export function bufferAddress(buf: Buffer | Uint8Array): number {
  return Number(koffi.address(buf));
}

/**
 * A Buffer over its own ArrayBuffer. V8 may keep a small typed array's bytes on the JS heap,
 * where the GC can move them; an explicit ArrayBuffer always has an off-heap backing store, so
 * its address stays valid for the Buffer's life and can be handed to ioctls by number.
 */
export function stableBuffer(size: number): Buffer {
  return Buffer.from(new ArrayBuffer(size));
}

/** A zero-copy ArrayBuffer over `length` bytes of mapped memory at `addr`. */
export function viewOf(addr: number, length: number): ArrayBuffer {
  return koffi.view(addr, length);
}

export { koffi };
