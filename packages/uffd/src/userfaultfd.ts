/**
 * userfaultfd.ts — owns one userfaultfd: opening it (syscall 323, falling back to
 * /dev/userfaultfd), the one-shot UFFDIO_API handshake, registering ranges and resolving faults
 * on them (COPY, ZEROPAGE, WAKE, WRITEPROTECT, CONTINUE), and reading its messages.
 *
 * The resolving ioctls are the destination's hot path: each Userfaultfd owns one preallocated
 * struct buffer whose address is computed once, fields are written as 32-bit halves, and the
 * error object (a string or a function producing one) is only formatted when a call fails.
 * A Userfaultfd is used from one thread; the descriptor itself is process-wide, so another
 * thread can wrap the same number with `Userfaultfd.fromFd`.
 */
import { bufferAddress, c, errno } from './libc.js';
import { SyscallError, errnoName, errnoValue, hex } from './errors.js';
import { Struct } from './struct.js';
import { O_CLOEXEC, O_NONBLOCK, O_RDWR } from './fd.js';
import { UFFD_MSG_SIZE, decodeMessages, faultAddress, faultFlags, faultTid, msgEvent, type UffdMessage } from './messages.js';

export const SYS_userfaultfd = 323;
export const UFFD_USER_MODE_ONLY = 1;
export const USERFAULTFD_IOC_NEW = 0xaa00;
export const UFFD_API = 0xaa;

// Feature bits (UFFDIO_API.features).
export const UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0;
export const UFFD_FEATURE_EVENT_FORK = 1 << 1;
export const UFFD_FEATURE_EVENT_REMAP = 1 << 2;
export const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
export const UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4;
export const UFFD_FEATURE_MISSING_SHMEM = 1 << 5;
export const UFFD_FEATURE_EVENT_UNMAP = 1 << 6;
export const UFFD_FEATURE_SIGBUS = 1 << 7;
export const UFFD_FEATURE_THREAD_ID = 1 << 8;
export const UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9;
export const UFFD_FEATURE_MINOR_SHMEM = 1 << 10;
export const UFFD_FEATURE_EXACT_ADDRESS = 1 << 11;
export const UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12;
export const UFFD_FEATURE_WP_UNPOPULATED = 1 << 13;
export const UFFD_FEATURE_POISON = 1 << 14;
export const UFFD_FEATURE_WP_ASYNC = 1 << 15;
export const UFFD_FEATURE_MOVE = 1 << 16;

/** Feature names by bit, as the report and `featureNames` print them. */
export const UFFD_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  PAGEFAULT_FLAG_WP: UFFD_FEATURE_PAGEFAULT_FLAG_WP,
  EVENT_FORK: UFFD_FEATURE_EVENT_FORK,
  EVENT_REMAP: UFFD_FEATURE_EVENT_REMAP,
  EVENT_REMOVE: UFFD_FEATURE_EVENT_REMOVE,
  MISSING_HUGETLBFS: UFFD_FEATURE_MISSING_HUGETLBFS,
  MISSING_SHMEM: UFFD_FEATURE_MISSING_SHMEM,
  EVENT_UNMAP: UFFD_FEATURE_EVENT_UNMAP,
  SIGBUS: UFFD_FEATURE_SIGBUS,
  THREAD_ID: UFFD_FEATURE_THREAD_ID,
  MINOR_HUGETLBFS: UFFD_FEATURE_MINOR_HUGETLBFS,
  MINOR_SHMEM: UFFD_FEATURE_MINOR_SHMEM,
  EXACT_ADDRESS: UFFD_FEATURE_EXACT_ADDRESS,
  WP_HUGETLBFS_SHMEM: UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
  WP_UNPOPULATED: UFFD_FEATURE_WP_UNPOPULATED,
  POISON: UFFD_FEATURE_POISON,
  WP_ASYNC: UFFD_FEATURE_WP_ASYNC,
  MOVE: UFFD_FEATURE_MOVE,
});

/** Names of the feature bits set in `mask` (unknown bits as `bit<n>`). */
export function featureNames(mask: number): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 32; bit++) {
    if (Math.floor(mask / 2 ** bit) % 2 !== 1) continue;
    const name = Object.keys(UFFD_FEATURES).find((k) => UFFD_FEATURES[k] === 2 ** bit);
    out.push(name ?? `bit${bit}`);
  }
  return out;
}

/** The feature bit for a name (`THREAD_ID` or `UFFD_FEATURE_THREAD_ID`); undefined if unknown. */
export function featureBit(name: string): number | undefined {
  return UFFD_FEATURES[name.replace(/^UFFD_FEATURE_/, '')];
}

// ioctl request numbers.
export const UFFDIO_API = 0xc018aa3f;
export const UFFDIO_REGISTER = 0xc020aa00;
export const UFFDIO_UNREGISTER = 0x8010aa01;
export const UFFDIO_WAKE = 0x8010aa02;
export const UFFDIO_COPY = 0xc028aa03;
export const UFFDIO_ZEROPAGE = 0xc020aa04;
export const UFFDIO_MOVE = 0xc028aa05;
export const UFFDIO_WRITEPROTECT = 0xc018aa06;
export const UFFDIO_CONTINUE = 0xc020aa07;
export const UFFDIO_POISON = 0xc020aa08;

/** Bit numbers of the ioctls in the `ioctls` masks UFFDIO_API and UFFDIO_REGISTER report. */
export const UFFDIO_IOCTL_BITS: Readonly<Record<string, number>> = Object.freeze({
  UFFDIO_REGISTER: 0,
  UFFDIO_UNREGISTER: 1,
  UFFDIO_WAKE: 2,
  UFFDIO_COPY: 3,
  UFFDIO_ZEROPAGE: 4,
  UFFDIO_MOVE: 5,
  UFFDIO_WRITEPROTECT: 6,
  UFFDIO_CONTINUE: 7,
  UFFDIO_POISON: 8,
  UFFDIO_API: 0x3f,
});

/** Names of the ioctls in an `ioctls` mask. */
export function ioctlNames(mask: bigint): string[] {
  return Object.entries(UFFDIO_IOCTL_BITS)
    .filter(([, bit]) => (mask >> BigInt(bit)) & 1n)
    .map(([name]) => name);
}

export const UFFDIO_REGISTER_MODE_MISSING = 1;
export const UFFDIO_REGISTER_MODE_WP = 2;
export const UFFDIO_REGISTER_MODE_MINOR = 4;
export const UFFDIO_COPY_MODE_DONTWAKE = 1;
export const UFFDIO_COPY_MODE_WP = 2;
export const UFFDIO_MOVE_MODE_DONTWAKE = 1;
export const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 2;
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1;
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2;
export const UFFDIO_CONTINUE_MODE_DONTWAKE = 1;
export const UFFDIO_CONTINUE_MODE_WP = 2;

/**
 * What `copy`, `zeropage` and `continue` return when the target page is already present
 * (the kernel's EEXIST): the page is in place, treat it as resolved.
 */
export const ALREADY_PRESENT = -17;

const EAGAIN = errnoValue('EAGAIN');
const EEXIST = errnoValue('EEXIST');
const ENOSYS = errnoValue('ENOSYS');
const EPERM = errnoValue('EPERM');

/** Names the object of a call in its error message; a function is only called on failure. */
export type ErrorObject = string | (() => string);

export type UffdHow = 'syscall' | 'dev' | 'fd';

export interface UserfaultfdOptions {
  /**
   * Features to ask for (UFFD_FEATURE_* bits); only those the kernel offers are requested.
   * Default: THREAD_ID | MISSING_SHMEM | MISSING_HUGETLBFS. EVENT_REMOVE is off by default:
   * with it, madvise(DONTNEED) on a registered range blocks until the event is read.
   */
  features?: number;
  /** Features that must be granted; the constructor throws naming the missing ones. */
  requiredFeatures?: number;
  /** UFFD_USER_MODE_ONLY: only faults from user mode (what unprivileged users may get). */
  userModeOnly?: boolean;
  /** O_NONBLOCK (default true): reads return no messages instead of blocking. */
  nonblock?: boolean;
  /** How to open: try the syscall then /dev/userfaultfd (`auto`, default), or only one way. */
  via?: 'auto' | 'syscall' | 'dev';
}

export const DEFAULT_FEATURES = UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS;

export interface RegisterModes {
  missing?: boolean;
  wp?: boolean;
  minor?: boolean;
}

export interface RegisterResult {
  /** The ioctls allowed on the range (bits from UFFDIO_IOCTL_BITS). */
  ioctls: bigint;
  /** The same, by name (`UFFDIO_COPY`, …). */
  names: string[];
}

export interface CopyOptions {
  /** Place the page but do not wake the faulting threads (batch, then `wake`). */
  dontwake?: boolean;
  /** Place the page write-protected (needs a WP registration). */
  wp?: boolean;
}

export interface WriteprotectOptions {
  /** true: protect; false: unprotect (and wake, unless dontwake). */
  wp: boolean;
  dontwake?: boolean;
}

interface AdoptedFd { fd: number; features: number; ioctls: bigint; owned: boolean }

interface OpenResult { fd: number; how: 'syscall' | 'dev' }

function openFd(opts: UserfaultfdOptions): OpenResult {
  const flags = O_CLOEXEC | ((opts.nonblock ?? true) ? O_NONBLOCK : 0) | (opts.userModeOnly ? UFFD_USER_MODE_ONLY : 0);
  const via = opts.via ?? 'auto';
  let sysErr = 0;
  if (via !== 'dev') {
    const fd = c.syscall1(SYS_userfaultfd, flags);
    if (fd >= 0) return { fd, how: 'syscall' };
    sysErr = errno();
    if (via === 'syscall' || (sysErr !== ENOSYS && sysErr !== EPERM)) {
      throw new SyscallError('userfaultfd', sysErr, `flags ${hex(flags)}`);
    }
  }
  const after = sysErr ? `, after userfaultfd() failed with ${errnoName(sysErr)}` : '';
  const dev = c.open('/dev/userfaultfd', O_RDWR | O_CLOEXEC, 0);
  if (dev < 0) throw new SyscallError('open', errno(), `/dev/userfaultfd${after}`);
  const fd = c.ioctlInt(dev, USERFAULTFD_IOC_NEW, flags);
  const e = errno();
  c.close(dev);
  if (fd < 0) throw new SyscallError('USERFAULTFD_IOC_NEW', e, `/dev/userfaultfd${after}`);
  return { fd, how: 'dev' };
}

interface ApiResult { available: number; ioctls: bigint }

function apiHandshake(fd: number, features: number, s: Struct): ApiResult {
  s.clear();
  s.set64(0, UFFD_API);
  s.set64(8, features);
  if (c.ioctlAddr(fd, UFFDIO_API, s.addr) !== 0) {
    throw new SyscallError('UFFDIO_API', errno(), `features ${hex(features)}`);
  }
  return { available: s.getU64(8), ioctls: s.getBig(16) };
}

let availableCache: { features: number; ioctls: bigint; how: 'syscall' | 'dev' } | null = null;

function objectText(object: ErrorObject | undefined, dst: number, len: number): string {
  if (typeof object === 'function') return object();
  return object ?? `${hex(dst)}+${hex(len)}`;
}

export class Userfaultfd {
  private fdValue: number;
  /** How the descriptor was obtained. */
  readonly how: UffdHow;
  /** Features granted (requested ∩ available). */
  readonly features: number;
  /** Features the kernel offers (as the handshake reported them; equals `features` for fromFd). */
  readonly availableFeatures: number;
  /** ioctls the kernel supports on this descriptor (bit 63 is UFFDIO_API, hence bigint). */
  readonly ioctls: bigint;
  private readonly owned: boolean;
  /** The one struct buffer every ioctl of this instance fills (40 bytes: the largest, uffdio_copy). */
  private readonly s = new Struct(40);
  private readonly sAddr: number;
  private readBuf: Buffer | null = null;

  /** Opens a userfaultfd and does the API handshake. (`adopt` is internal: see `fromFd`.) */
  constructor(opts: UserfaultfdOptions = {}, adopt?: AdoptedFd) {
    this.sAddr = this.s.addr;
    if (adopt) {
      this.fdValue = adopt.fd;
      this.how = 'fd';
      this.features = adopt.features;
      this.availableFeatures = adopt.features;
      this.ioctls = adopt.ioctls;
      this.owned = adopt.owned;
      return;
    }
    const wanted = opts.features ?? DEFAULT_FEATURES;
    const available = Userfaultfd.availableFeatures(opts);
    const required = opts.requiredFeatures ?? 0;
    const missing = required & ~available;
    if (missing) throw new Error(`userfaultfd: the kernel lacks required features ${featureNames(missing).join(', ')}`);
    const request = (wanted | required) & available;
    const { fd, how } = openFd(opts);
    try {
      const api = apiHandshake(fd, request, this.s);
      this.availableFeatures = api.available;
      this.ioctls = api.ioctls;
    } catch (e) {
      c.close(fd);
      throw e;
    }
    this.fdValue = fd;
    this.how = how;
    this.features = request;
    this.owned = true;
  }

  /**
   * The features this kernel offers, probed once per thread on a throwaway descriptor (the API
   * handshake is one-shot per descriptor).
   */
  static availableFeatures(opts: Pick<UserfaultfdOptions, 'via' | 'userModeOnly'> = {}): number {
    return Userfaultfd.probe(opts).features;
  }

  /** Opens a throwaway descriptor and reports how it opened, the available features and ioctls. */
  static probe(opts: Pick<UserfaultfdOptions, 'via' | 'userModeOnly'> = {}): { how: 'syscall' | 'dev'; features: number; ioctls: bigint } {
    const cacheable = !opts.via && !opts.userModeOnly;
    if (cacheable && availableCache) return availableCache;
    const { fd, how } = openFd(opts);
    try {
      const api = apiHandshake(fd, 0, new Struct(24));
      const result = { how, features: api.available, ioctls: api.ioctls };
      if (cacheable) availableCache = result;
      return result;
    } finally {
      c.close(fd);
    }
  }

  /**
   * Wraps a userfaultfd whose handshake was done elsewhere (the main thread, say, for a handler
   * worker: descriptors are process-wide). `features` are the granted ones. Unless `owned`,
   * `close()` only forgets the descriptor.
   */
  static fromFd(fd: number, features: number, opts: { owned?: boolean; ioctls?: bigint } = {}): Userfaultfd {
    return new Userfaultfd({}, { fd, features, ioctls: opts.ioctls ?? 0n, owned: opts.owned ?? false });
  }

  /** The descriptor (-1 after close). */
  get fd(): number {
    return this.fdValue;
  }

  /** True when every bit of `feature` was granted. */
  has(feature: number): boolean {
    return (this.features & feature) === feature;
  }

  /**
   * UFFDIO_REGISTER of [addr, addr+len) (page-aligned) for the given modes (default: missing).
   * Returns the ioctls allowed on the range.
   */
  register(addr: number, len: number, modes: RegisterModes | number = { missing: true }, object?: ErrorObject): RegisterResult {
    const mode = typeof modes === 'number' ? modes
      : (modes.missing ? UFFDIO_REGISTER_MODE_MISSING : 0) | (modes.wp ? UFFDIO_REGISTER_MODE_WP : 0) | (modes.minor ? UFFDIO_REGISTER_MODE_MINOR : 0);
    const s = this.s;
    s.set64(0, addr);
    s.set64(8, len);
    s.set64(16, mode);
    s.set64(24, 0);
    if (c.ioctlAddr(this.fdValue, UFFDIO_REGISTER, this.sAddr) !== 0) {
      throw new SyscallError('UFFDIO_REGISTER', errno(), objectText(object, addr, len));
    }
    const ioctls = s.getBig(24);
    return { ioctls, names: ioctlNames(ioctls) };
  }

  /** UFFDIO_UNREGISTER of [addr, addr+len); threads blocked on it are woken. */
  unregister(addr: number, len: number, object?: ErrorObject): void {
    this.range(addr, len);
    if (c.ioctlAddr(this.fdValue, UFFDIO_UNREGISTER, this.sAddr) !== 0) {
      throw new SyscallError('UFFDIO_UNREGISTER', errno(), objectText(object, addr, len));
    }
  }

  private range(addr: number, len: number): void {
    this.s.set64(0, addr);
    this.s.set64(8, len);
  }

  /**
   * UFFDIO_COPY: atomically fills the missing pages at [dst, dst+len) from `src` (an address, or
   * a Buffer of at least `len` bytes) and wakes the threads faulting there. Returns:
   *   len                 done;
   *   0 < n < len         partial (the kernel stopped, e.g. at a present page): resume at dst+n;
   *   0                   nothing done yet (EAGAIN: the layout is changing; read events, retry);
   *   ALREADY_PRESENT     the first page is already there (EEXIST): treat it as placed.
   * Any other failure throws `UFFDIO_COPY failed: <errno> (<object>)`.
   * Allocation-free when `src` is a number and `mode` a number or omitted.
   */
  copy(dst: number, src: number | Uint8Array, len: number, mode: CopyOptions | number = 0, object?: ErrorObject): number {
    let srcAddr: number;
    if (typeof src === 'number') srcAddr = src;
    else {
      if (src.byteLength < len) throw new RangeError(`UFFDIO_COPY: source has ${src.byteLength} bytes, copying ${len}`);
      srcAddr = bufferAddress(src);
    }
    const m = typeof mode === 'number' ? mode
      : (mode.dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0) | (mode.wp ? UFFDIO_COPY_MODE_WP : 0);
    const s = this.s;
    s.set64(0, dst);
    s.set64(8, srcAddr);
    s.set64(16, len);
    s.set64(24, m);
    s.set64(32, 0);
    if (c.ioctlAddr(this.fdValue, UFFDIO_COPY, this.sAddr) === 0) return len;
    return this.resolveFailure('UFFDIO_COPY', s.getS64(32), dst, len, object);
  }

  /** Shared failure path of COPY / ZEROPAGE / CONTINUE: partial, retry, present, or throw. */
  private resolveFailure(call: string, done: number, dst: number, len: number, object: ErrorObject | undefined): number {
    const e = errno();
    if (e === EAGAIN) return done > 0 ? done : 0;
    if (e === EEXIST) return ALREADY_PRESENT;
    throw new SyscallError(call, e, objectText(object, dst, len));
  }

  /**
   * UFFDIO_MOVE (needs UFFD_FEATURE_MOVE, Linux 6.8+): moves the pages mapped at
   * [src, src+len) of this process's private anonymous memory to [dst, dst+len), which must be
   * registered with this userfaultfd and missing, and wakes the threads faulting there. No
   * page is copied or allocated: the page-table entries change hands, and `src` is left
   * missing. Each call flushes the TLB of every CPU running a thread of this process: move
   * long runs. Returns like `copy`: len, a partial count (resume at dst+n), 0 (EAGAIN, no
   * progress) or ALREADY_PRESENT (the first destination page is present).
   */
  move(dst: number, src: number, len: number, mode = 0, object?: ErrorObject): number {
    const s = this.s;
    s.set64(0, dst);
    s.set64(8, src);
    s.set64(16, len);
    s.set64(24, mode);
    s.set64(32, 0);
    if (c.ioctlAddr(this.fdValue, UFFDIO_MOVE, this.sAddr) === 0) return len;
    return this.resolveFailure('UFFDIO_MOVE', s.getS64(32), dst, len, object);
  }

  /**
   * UFFDIO_ZEROPAGE: maps zero pages at [addr, addr+len) and wakes (not on hugetlbfs: copy from
   * a zero buffer there). Returns like `copy`.
   */
  zeropage(addr: number, len: number, mode: { dontwake?: boolean } | number = 0, object?: ErrorObject): number {
    const m = typeof mode === 'number' ? mode : mode.dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;
    const s = this.s;
    s.set64(0, addr);
    s.set64(8, len);
    s.set64(16, m);
    s.set64(24, 0);
    if (c.ioctlAddr(this.fdValue, UFFDIO_ZEROPAGE, this.sAddr) === 0) return len;
    return this.resolveFailure('UFFDIO_ZEROPAGE', s.getS64(24), addr, len, object);
  }

  /** UFFDIO_WAKE: wakes threads blocked on faults in [addr, addr+len) (after DONTWAKE fills). */
  wake(addr: number, len: number, object?: ErrorObject): void {
    this.range(addr, len);
    if (c.ioctlAddr(this.fdValue, UFFDIO_WAKE, this.sAddr) !== 0) {
      throw new SyscallError('UFFDIO_WAKE', errno(), objectText(object, addr, len));
    }
  }

  /** UFFDIO_WRITEPROTECT: protects (`wp: true`) or unprotects-and-wakes [addr, addr+len). */
  writeprotect(addr: number, len: number, opts: WriteprotectOptions, object?: ErrorObject): void {
    const s = this.s;
    s.set64(0, addr);
    s.set64(8, len);
    s.set64(16, (opts.wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (opts.dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0));
    if (c.ioctlAddr(this.fdValue, UFFDIO_WRITEPROTECT, this.sAddr) !== 0) {
      throw new SyscallError('UFFDIO_WRITEPROTECT', errno(), objectText(object, addr, len));
    }
  }

  /**
   * UFFDIO_CONTINUE: resolves minor faults on [addr, addr+len) by mapping the pages already in
   * the page cache (shmem/hugetlbfs registered with `minor`). Returns like `copy`.
   */
  continue(addr: number, len: number, mode: { dontwake?: boolean; wp?: boolean } | number = 0, object?: ErrorObject): number {
    const m = typeof mode === 'number' ? mode
      : (mode.dontwake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0) | (mode.wp ? UFFDIO_CONTINUE_MODE_WP : 0);
    const s = this.s;
    s.set64(0, addr);
    s.set64(8, len);
    s.set64(16, m);
    s.set64(24, 0);
    if (c.ioctlAddr(this.fdValue, UFFDIO_CONTINUE, this.sAddr) === 0) return len;
    return this.resolveFailure('UFFDIO_CONTINUE', s.getS64(24), addr, len, object);
  }

  /**
   * Reads pending messages into `buf` (a multiple of 32 bytes; use a buffer you keep) and
   * returns how many arrived: 0 when none are pending (EAGAIN, which also happens right after
   * poll said readable when a racing COPY already woke the faulting thread). Allocation-free;
   * decode with `msgEvent`, `faultAddress`, `faultTid`, `faultFlags`.
   */
  readRaw(buf: Uint8Array): number {
    const len = buf.byteLength - (buf.byteLength % UFFD_MSG_SIZE);
    const n = c.read(this.fdValue, buf as Buffer, len);
    if (n >= 0) return n / UFFD_MSG_SIZE;
    const e = errno();
    if (e === EAGAIN) return 0;
    throw new SyscallError('read', e, `userfaultfd ${this.fdValue}`);
  }

  /** Reads pending messages and decodes them (empty when none are pending). */
  readEvents(buf?: Uint8Array): UffdMessage[] {
    const b = buf ?? (this.readBuf ??= Buffer.alloc(UFFD_MSG_SIZE * 64));
    return decodeMessages(b, this.readRaw(b));
  }

  /** Closes the descriptor (if owned; `fromFd` wrappers only forget it). Threads blocked on its ranges are woken. Idempotent. */
  close(): void {
    const fd = this.fdValue;
    if (fd < 0) return;
    this.fdValue = -1;
    if (this.owned && c.close(fd) !== 0) throw new SyscallError('close', errno(), `userfaultfd ${fd}`);
  }

  static readonly msgEvent = msgEvent;
  static readonly faultAddress = faultAddress;
  static readonly faultTid = faultTid;
  static readonly faultFlags = faultFlags;
}

