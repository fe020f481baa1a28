/**
 * pagemap.ts — owns reading page categories of this process's memory with the PAGEMAP_SCAN
 * ioctl on /proc/self/pagemap (Linux 6.7+), without write-protecting anything: which pages of
 * a range are populated (present in RAM or swapped out). A page that was never populated
 * reads as zero, so a migration source can send it as a zero page without touching it (a
 * read would fault in the shared zero page, one fault per page).
 *
 * On kernels without PAGEMAP_SCAN every page is reported populated (correct, only slower).
 */
import { readFileSync } from 'node:fs';
import { c, errno } from './libc.js';
import { SyscallError, errnoValue, hex } from './errors.js';
import { O_RDONLY, openPath } from './fd.js';
import { Struct } from './struct.js';
import { PAGEMAP_SCAN, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED } from './dirty.js';

const PM_SCAN_ARG_SIZE = 96;
const PAGE_REGION_SIZE = 24;
const ENOTTY = errnoValue('ENOTTY');
const EINVAL = errnoValue('EINVAL');

/** True when the host has swap space configured (pages can be swapped out). */
export function hostHasSwap(): boolean {
  try {
    const m = /^SwapTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) > 0 : true;
  } catch {
    return true;
  }
}

export class PagemapScanner {
  private fd = -1;
  private supported = true;
  private readonly arg = new Struct(PM_SCAN_ARG_SIZE);
  private readonly vec: Struct;
  private readonly vecLen: number;

  constructor(batch = 1024) {
    this.vecLen = batch;
    this.vec = new Struct(PAGE_REGION_SIZE * batch);
  }

  /** Whether PAGEMAP_SCAN works here (false after the first ENOTTY/EINVAL). */
  get available(): boolean {
    return this.supported;
  }

  /**
   * Calls `cb(firstPage, endPage)` for each run of pages of [addr, addr+length) that hold
   * data: present (not the shared zero page) or, with `swapped` (default true), swapped out.
   * `pageSize` sets the page unit of the callback; a huge page counts whole.
   *
   * Beware: a userfaultfd write-protect marker on a never-populated page (WP_UNPOPULATED)
   * reads as "swapped". On a host without swap, pass `swapped: false` to see only real data.
   */
  populated(addr: number, length: number, pageSize: number, cb: (firstPage: number, endPage: number) => void, opts: { swapped?: boolean } = {}): void {
    const anyOf = PAGE_IS_PRESENT | ((opts.swapped ?? true) ? PAGE_IS_SWAPPED : 0);
    if (!this.supported || !this.open()) {
      cb(0, Math.ceil(length / pageSize));
      return;
    }
    const a = this.arg;
    const vec = this.vec;
    const end = addr + length;
    let start = addr;
    for (;;) {
      a.set64(0, PM_SCAN_ARG_SIZE);
      a.set64(8, 0); // no write-protect matching: read only
      a.set64(16, start);
      a.set64(24, end);
      a.set64(32, 0);
      a.set64(40, vec.addr);
      a.set64(48, this.vecLen);
      a.set64(56, 0);
      a.set64(64, PAGE_IS_PFNZERO); // category_inverted: require "not the zero page"
      a.set64(72, PAGE_IS_PFNZERO); // category_mask
      a.set64(80, anyOf); // category_anyof_mask
      a.set64(88, anyOf); // return_mask
      const n = c.ioctlAddr(this.fd, PAGEMAP_SCAN, a.addr);
      if (n < 0) {
        const e = errno();
        if ((e === ENOTTY || e === EINVAL) && start === addr) {
          this.supported = false;
          cb(0, Math.ceil(length / pageSize));
          return;
        }
        throw new SyscallError('PAGEMAP_SCAN', e, `${hex(start)}..${hex(end)}`);
      }
      for (let i = 0; i < n; i++) {
        const rs = vec.getU64(i * PAGE_REGION_SIZE);
        const re = vec.getU64(i * PAGE_REGION_SIZE + 8);
        cb(Math.floor((rs - addr) / pageSize), Math.ceil((re - addr) / pageSize));
      }
      const walkEnd = a.getU64(32);
      if (walkEnd >= end) return;
      if (walkEnd <= start) throw new Error(`PAGEMAP_SCAN made no progress at ${hex(start)}`);
      start = walkEnd;
    }
  }

  private open(): boolean {
    if (this.fd < 0) this.fd = openPath('/proc/self/pagemap', O_RDONLY);
    return true;
  }

  close(): void {
    if (this.fd >= 0) {
      if (c.close(this.fd) !== 0) throw new SyscallError('close', errno(), '/proc/self/pagemap');
      this.fd = -1;
    }
  }
}
