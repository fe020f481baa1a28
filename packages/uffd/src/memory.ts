/**
 * memory.ts — owns mapped memory: anonymous and memfd-backed mappings (hugetlb where the host
 * has huge pages), madvise, fallocate punch-hole, mlock, and zero-copy views. A `Mapping`
 * records whether it is still mapped and refuses to hand out views after `unmap()`; views
 * handed out earlier must not be used after it (the memory is gone and touching it kills the
 * process), so owners unmap only after every user has let go.
 */
import { c, errno, viewOf } from './libc.js';
import { SyscallError, hex } from './errors.js';

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;

export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_POPULATE_WRITE = 23;

export const MFD_CLOEXEC = 0x1;
export const MFD_HUGETLB = 0x4;
export const MFD_HUGE_2MB = 21 << 26;

export const FALLOC_FL_KEEP_SIZE = 0x1;
export const FALLOC_FL_PUNCH_HOLE = 0x2;

export type Advice = 'dontneed' | 'remove' | 'hugepage' | 'nohugepage' | 'populate-write';
const adviceValue: Record<Advice, number> = {
  dontneed: MADV_DONTNEED,
  remove: MADV_REMOVE,
  hugepage: MADV_HUGEPAGE,
  nohugepage: MADV_NOHUGEPAGE,
  'populate-write': MADV_POPULATE_WRITE,
};
const adviceName: Record<Advice, string> = {
  dontneed: 'MADV_DONTNEED',
  remove: 'MADV_REMOVE',
  hugepage: 'MADV_HUGEPAGE',
  nohugepage: 'MADV_NOHUGEPAGE',
  'populate-write': 'MADV_POPULATE_WRITE',
};

/** The base page size of this host (4096 on x86_64). */
export const HOST_PAGE_SIZE = 4096;
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

export interface MapOptions {
  /** A name for error messages (`ram0`). */
  name?: string;
  /** Back the mapping with 2 MiB huge pages (needs reserved pages: /proc/sys/vm/nr_hugepages). */
  hugetlb?: boolean;
  /** Do not reserve swap/commit for the mapping (MAP_NORESERVE). Default true. */
  noreserve?: boolean;
}

export type Backing = 'anonymous' | 'memfd' | 'external';

/** A region of mapped memory. */
export class Mapping {
  readonly addr: number;
  readonly length: number;
  readonly name: string;
  readonly pageSize: number;
  readonly backing: Backing;
  /** The memfd behind a memfd mapping, else -1. */
  readonly fd: number;
  private cachedView: ArrayBuffer | null = null;
  private live = true;

  /** @internal use mapAnonymous / createMemfd / adoptMapping */
  constructor(addr: number, length: number, name: string, pageSize: number, backing: Backing, fd = -1) {
    this.addr = addr;
    this.length = length;
    this.name = name;
    this.pageSize = pageSize;
    this.backing = backing;
    this.fd = fd;
  }

  get mapped(): boolean {
    return this.live;
  }

  private assertMapped(what: string): void {
    if (!this.live) throw new Error(`${what} on unmapped memory (${this.name})`);
  }

  private assertRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length) {
      throw new RangeError(`${what}: range ${hex(offset)}+${hex(length)} outside ${this.name} (length ${hex(this.length)})`);
    }
  }

  /** A zero-copy ArrayBuffer over the whole mapping (created once). */
  view(): ArrayBuffer {
    this.assertMapped('view');
    if (!this.cachedView) this.cachedView = viewOf(this.addr, this.length);
    return this.cachedView;
  }

  /** Zero-copy bytes of [offset, offset+length). */
  bytes(offset = 0, length = this.length - offset): Uint8Array {
    this.assertRange(offset, length, 'bytes');
    return new Uint8Array(this.view(), offset, length);
  }

  /** madvise over [offset, offset+length) (whole mapping by default). */
  madvise(advice: Advice, offset = 0, length = this.length - offset): void {
    this.assertMapped('madvise');
    this.assertRange(offset, length, 'madvise');
    madvise(this.addr + offset, length, advice, `${this.name}, offset ${hex(offset)}, length ${hex(length)}`);
  }

  /** Frees the backing pages of [offset, offset+length) of a memfd mapping (fallocate punch-hole). */
  punchHole(offset: number, length: number): void {
    this.assertMapped('punchHole');
    this.assertRange(offset, length, 'punchHole');
    if (this.fd < 0) throw new Error(`punchHole needs a memfd mapping (${this.name} is ${this.backing})`);
    fallocatePunchHole(this.fd, offset, length, this.name);
  }

  /** Locks the mapping's pages in RAM. */
  mlock(): void {
    this.assertMapped('mlock');
    if (c.mlock(this.addr, this.length) !== 0) throw new SyscallError('mlock', errno(), this.name);
  }

  munlock(): void {
    this.assertMapped('munlock');
    if (c.munlock(this.addr, this.length) !== 0) throw new SyscallError('munlock', errno(), this.name);
  }

  /**
   * Unmaps the memory (and closes its memfd). Idempotent. An adopted (external) mapping is
   * only forgotten: its owner unmaps it.
   */
  unmap(): void {
    if (!this.live) return;
    this.live = false;
    this.cachedView = null;
    if (this.backing === 'external') return;
    if (c.munmap(this.addr, this.length) !== 0) throw new SyscallError('munmap', errno(), this.name);
    if (this.fd >= 0 && c.close(this.fd) !== 0) throw new SyscallError('close', errno(), `memfd of ${this.name}`);
  }
}

function checkLength(length: number, pageSize: number, name: string): void {
  if (!Number.isSafeInteger(length) || length <= 0 || length % pageSize !== 0) {
    throw new RangeError(`${name}: length ${length} is not a positive multiple of the page size ${pageSize}`);
  }
}

/** Maps anonymous private memory (zero-filled on first touch). */
export function mapAnonymous(length: number, opts: MapOptions = {}): Mapping {
  const name = opts.name ?? 'anonymous';
  const pageSize = opts.hugetlb ? HUGE_PAGE_SIZE : HOST_PAGE_SIZE;
  checkLength(length, pageSize, name);
  let flags = MAP_PRIVATE | MAP_ANONYMOUS;
  if (opts.noreserve ?? true) flags |= MAP_NORESERVE;
  if (opts.hugetlb) flags |= MAP_HUGETLB;
  const addr = c.mmap(0, length, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (addr === -1) throw new SyscallError('mmap', errno(), `${name}, length ${hex(length)}${opts.hugetlb ? ', hugetlb' : ''}`);
  return new Mapping(addr, length, name, pageSize, 'anonymous');
}

/** Creates a memfd of `length` bytes and maps it shared. The Mapping owns the fd. */
export function createMemfd(length: number, opts: MapOptions = {}): Mapping {
  const name = opts.name ?? 'memfd';
  const pageSize = opts.hugetlb ? HUGE_PAGE_SIZE : HOST_PAGE_SIZE;
  checkLength(length, pageSize, name);
  const fd = c.memfdCreate(`livemig:${name}`, MFD_CLOEXEC | (opts.hugetlb ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
  if (fd < 0) throw new SyscallError('memfd_create', errno(), name);
  try {
    if (c.ftruncate(fd, length) !== 0) throw new SyscallError('ftruncate', errno(), `memfd ${name}, length ${hex(length)}`);
    let flags = MAP_SHARED;
    if (opts.noreserve ?? true) flags |= MAP_NORESERVE;
    const addr = c.mmap(0, length, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (addr === -1) throw new SyscallError('mmap', errno(), `memfd ${name}, length ${hex(length)}`);
    return new Mapping(addr, length, name, pageSize, 'memfd', fd);
  } catch (e) {
    c.close(fd);
    throw e;
  }
}

/**
 * Maps `length` bytes of an existing descriptor (a memfd, say) shared, as a second view of
 * the same pages — what minor-fault (UFFDIO_CONTINUE) handling needs. The Mapping does not own
 * the descriptor: `unmap()` unmaps only.
 */
export function mapShared(fd: number, length: number, opts: MapOptions = {}): Mapping {
  const name = opts.name ?? `fd ${fd}`;
  const pageSize = opts.hugetlb ? HUGE_PAGE_SIZE : HOST_PAGE_SIZE;
  checkLength(length, pageSize, name);
  let flags = MAP_SHARED;
  if (opts.noreserve ?? true) flags |= MAP_NORESERVE;
  const addr = c.mmap(0, length, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (addr === -1) throw new SyscallError('mmap', errno(), `${name}, fd ${fd}, length ${hex(length)}`);
  return new Mapping(addr, length, name, pageSize, 'memfd');
}

export interface AdoptOptions {
  addr: number | bigint;
  length: number;
  pageSize?: number;
  name?: string;
}

/**
 * Wraps memory the caller already mapped (address, length, page size) without taking
 * ownership: `unmap()` on it only forgets it.
 */
export function adoptMapping(opts: AdoptOptions): Mapping {
  const name = opts.name ?? 'external';
  const pageSize = opts.pageSize ?? HOST_PAGE_SIZE;
  const addr = Number(opts.addr);
  if (!Number.isSafeInteger(addr) || addr <= 0 || addr % pageSize !== 0) {
    throw new RangeError(`${name}: address ${hex(opts.addr)} is not aligned to the page size ${pageSize}`);
  }
  checkLength(opts.length, pageSize, name);
  return new Mapping(addr, opts.length, name, pageSize, 'external');
}

/** madvise(addr, length, advice); `object` names the memory in errors. */
export function madvise(addr: number, length: number, advice: Advice, object = hex(addr)): void {
  if (c.madvise(addr, length, adviceValue[advice]) !== 0) {
    throw new SyscallError(`madvise(${adviceName[advice]})`, errno(), object);
  }
}

/** fallocate(fd, PUNCH_HOLE|KEEP_SIZE, offset, length). */
export function fallocatePunchHole(fd: number, offset: number, length: number, object = `fd ${fd}`): void {
  if (c.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) !== 0) {
    throw new SyscallError('fallocate(PUNCH_HOLE)', errno(), `${object}, offset ${hex(offset)}, length ${hex(length)}`);
  }
}

export function munlockall(): void {
  if (c.munlockall() !== 0) throw new SyscallError('munlockall', errno());
}

/**
 * A zero-copy ArrayBuffer over memory mapped elsewhere in this process (for instance by the
 * main thread, handed to a worker as an address). The caller guarantees it stays mapped.
 */
export function viewAt(addr: number, length: number): ArrayBuffer {
  return viewOf(addr, length);
}
