/**
 * recycle.ts — owns the pages postcopy's DISCARD takes out of guest RAM, kept to be placed
 * again rather than freed and allocated anew.
 *
 * A discarded page must become missing again, so that the guest's next access faults. Dropping
 * it (MADV_DONTNEED) frees it, and placing its new contents with UFFDIO_COPY allocates, charges
 * and maps a fresh page: ~1.1 µs a page here. Instead, DISCARD moves the page, page-table entry
 * and all, into this module's own area (UFFDIO_MOVE: the guest address becomes missing just
 * the same), and a run of new contents is written into recycled pages and moved back in:
 * ~0.25 µs to write a 4 KiB page and ~0.15 µs to move it, in runs of 256 pages.
 *
 * Moves come in long runs only: each UFFDIO_MOVE ioctl flushes the TLB of every CPU running a
 * thread of this process, ~12 µs with a vCPU running on the other CPU. So runs shorter than
 * MIN_RUN pages (a requested page, say) are left to UFFDIO_COPY.
 *
 * Most of a page's new contents need not be written at all. The placer knows, of every page it
 * placed before the guest ran here, how many leading TRIM_UNIT-byte units may hold data (a
 * trimmed page: its kept units; the rest is zero), and DISCARD hands that over with the page.
 * A trimmed page written into a recycled one then writes only as many units as the larger of
 * the two: for a guest that writes a few bytes a page, a cache line instead of 4 KiB.
 *
 * The area can also take fresh pages allocated ahead (`populate`, prefill.ts): they follow the
 * stashed ones. All stashing (DISCARD, before RUN) comes before any taking (postcopy), and
 * allocating ahead only after RUN: the area fills from its start and is emptied in the same
 * order. A page of the area is written only after it was moved in or allocated there, so this
 * thread never touches a page of the area that is not there. The area is registered with the
 * userfaultfd (UFFDIO_MOVE needs its destination registered) for write-protection only, never
 * for missing pages: a stray touch of an empty slot would map a zero page rather than wait on
 * our own fault thread.
 */
import { TRIM_UNIT } from '@livemig/protocol';
import { ALREADY_PRESENT, HOST_PAGE_SIZE, UFFD_FEATURE_MOVE, mapAnonymous, type Mapping, type Userfaultfd } from '@livemig/uffd';

/** Runs shorter than this many pages are not worth a move (see the header). */
export const MIN_RUN = 64;
/** TRIM_UNIT-byte units in a page: a page whose data units are not known may hold data in all. */
export const PAGE_UNITS = HOST_PAGE_SIZE / TRIM_UNIT;
/** Units up to this many are copied 4 bytes at a time rather than by a call (see trimmed.ts). */
const SMALL_UNITS = 4;

export class PageRecycler {
  private readonly uffd: Userfaultfd;
  private readonly area: Mapping;
  readonly buffer: Buffer;
  /** Per slot: how many leading units of its page may hold data (the rest is zero). */
  private readonly dataUnits: Uint8Array;
  /** Slots [taken, filled) hold recycled pages. */
  private filled = 0;
  private taken = 0;
  private readonly slots: number;
  /** Why recycling stopped, when it did (a move the kernel refused). */
  off: string | null = null;
  /** Pages stashed into the area, allocated into it ahead (`populate`), and moved in from it. */
  readonly stats = { stashed: 0, populated: 0, reused: 0 };

  constructor(uffd: Userfaultfd, pages: number) {
    this.uffd = uffd;
    this.slots = pages;
    this.area = mapAnonymous(pages * HOST_PAGE_SIZE, { name: 'recycled pages' });
    try {
      uffd.register(this.area.addr, this.area.length, { wp: true }, 'recycled pages');
    } catch (e) {
      this.area.unmap();
      throw e;
    }
    this.buffer = Buffer.from(this.area.view());
    this.dataUnits = new Uint8Array(pages);
  }

  /** Whether the kernel offers UFFDIO_MOVE on `uffd`. */
  static possible(uffd: Userfaultfd): boolean {
    return uffd.has(UFFD_FEATURE_MOVE);
  }

  /** Recycled pages ready to be taken. */
  get available(): number {
    return this.off ? 0 : this.filled - this.taken;
  }

  /**
   * Moves the `count` present pages at `addr` (guest RAM) into the area: they are missing
   * there afterwards. `dataUnits[i]`: how many leading units of page i may hold data (all of
   * them when not given). Returns the pages moved; fewer (and recycling off) when the kernel
   * refused part of it, and the caller drops the rest itself.
   */
  stash(addr: number, count: number, object: () => string, dataUnits?: Uint8Array): number {
    if (this.off || this.filled + count > this.slots) return 0;
    const { moved } = this.move(this.area.addr + this.filled * HOST_PAGE_SIZE, addr, count, object);
    if (dataUnits) this.dataUnits.set(dataUnits.subarray(0, moved), this.filled);
    else this.dataUnits.fill(PAGE_UNITS, this.filled, this.filled + moved);
    this.filled += moved;
    this.stats.stashed += moved;
    return moved;
  }

  /**
   * Adds up to `count` fresh pages after those the area holds: zero pages, allocated now
   * (MADV_POPULATE_WRITE), placed later like recycled ones (prefill.ts). Returns how many; 0
   * when the area is full or the kernel refused (`populateError` says why).
   */
  populate(count: number): number {
    const n = Math.min(count, this.slots - this.filled);
    if (this.off || n <= 0) return 0;
    try {
      this.area.madvise('populate-write', this.filled * HOST_PAGE_SIZE, n * HOST_PAGE_SIZE);
    } catch (e) {
      this.populateError = (e as Error).message;
      return 0;
    }
    this.dataUnits.fill(0, this.filled, this.filled + n);
    this.filled += n;
    this.stats.populated += n;
    return n;
  }

  /** Why `populate` stopped allocating, when the kernel refused. */
  populateError: string | null = null;

  /** The next `count` recycled pages (count ≤ available): the offset of the first in `buffer`. */
  take(count: number): number {
    const at = this.taken * HOST_PAGE_SIZE;
    this.taken += count;
    return at;
  }

  /**
   * Writes the new contents of `count` pages, from `src` at `srcOff` (whole pages, one after
   * the other), into the recycled pages taken at `bufferOffset`. `table`: for trimmed pages,
   * each page's kept units (u16 LE from `tableAt`), zero in `src` after them; only the units
   * that hold data in the new page or in the old one are written then. Null: whole pages.
   */
  write(bufferOffset: number, count: number, src: Buffer, srcOff: number, table: Buffer | null, tableAt = 0): void {
    const ps = HOST_PAGE_SIZE;
    const slot = bufferOffset / ps;
    if (!table) {
      this.buffer.set(src.subarray(srcOff, srcOff + count * ps), bufferOffset);
      this.dataUnits.fill(PAGE_UNITS, slot, slot + count);
      return;
    }
    // Word views over this run's pages only: small views, small offsets.
    const to = new Int32Array(this.buffer.buffer, this.buffer.byteOffset + bufferOffset, (count * ps) / 4);
    const from = (src.byteOffset + srcOff) % 4 === 0 ? new Int32Array(src.buffer, src.byteOffset + srcOff, (count * ps) / 4) : null;
    const units = this.dataUnits;
    for (let i = 0; i < count; i++) {
      const kept = table.readUInt16LE(tableAt + 2 * i);
      const n = Math.max(kept, units[slot + i]!);
      units[slot + i] = kept;
      if (n === 0) continue;
      if (from && n <= SMALL_UNITS) {
        const w = (i * ps) / 4;
        const end = w + (n * TRIM_UNIT) / 4;
        for (let j = w; j < end; j++) to[j] = from[j]!;
      } else {
        const o = srcOff + i * ps;
        this.buffer.set(src.subarray(o, o + n * TRIM_UNIT), bufferOffset + i * ps);
      }
    }
  }

  /**
   * Moves `count` recycled pages from `bufferOffset` into guest RAM at `addr` (every page there
   * missing) and wakes the threads waiting there. A page found present there (the fault thread
   * or the preempt channel placed it meanwhile) is left as it is, and its recycled page stays
   * in the area. Returns false, having moved what it could, when the kernel refused a move:
   * recycling is off then, and the caller places the pages from `done` on another way.
   */
  place(bufferOffset: number, addr: number, count: number, object: () => string): { ok: boolean; done: number } {
    const r = this.move(addr, this.area.addr + bufferOffset, count, object, true);
    this.stats.reused += r.moved;
    return { ok: r.done === count, done: r.done };
  }

  /**
   * UFFDIO_MOVE of `count` pages from `src` to `dst`, resumed after a partial move; with
   * `skipPresent`, past a page present at the destination. `done`: pages dealt with from the
   * start (moved or skipped), `moved`: pages moved. Stops early (recycling off) when the kernel
   * refuses or makes no progress.
   */
  private move(dst: number, src: number, count: number, object: () => string, skipPresent = false): { done: number; moved: number } {
    const len = count * HOST_PAGE_SIZE;
    let at = 0;
    let moved = 0;
    let stalls = 0;
    while (at < len) {
      let r: number;
      try {
        r = this.uffd.move(dst + at, src + at, len - at, 0, object);
      } catch (e) {
        this.off = (e as Error).message;
        break;
      }
      if (r === ALREADY_PRESENT && skipPresent) {
        at += HOST_PAGE_SIZE;
        continue;
      }
      if (r <= 0) {
        if (r === 0 && ++stalls <= 100) continue; // EAGAIN: the layout is changing, try again
        this.off = `UFFDIO_MOVE made no progress (${object()})`;
        break;
      }
      at += r;
      moved += r / HOST_PAGE_SIZE;
    }
    return { done: at / HOST_PAGE_SIZE, moved };
  }

  close(): void {
    try {
      this.uffd.unregister(this.area.addr, this.area.length, 'recycled pages');
    } catch {
      // the descriptor may be gone already
    }
    this.area.unmap();
  }
}

