/**
 * page-placer.ts — owns putting received pages into guest RAM on the destination.
 *
 * Every block is registered with userfaultfd (MISSING) from the start, so a page that has
 * not arrived yet is placed with UFFDIO_COPY straight from the socket buffer: one ioctl a
 * contiguous run. A page that arrives again during precopy is already present and is
 * overwritten with a plain copy; during postcopy the guest owns it and a second arrival is
 * dropped.
 *
 * Postcopy's DISCARD hands the present pages of anonymous 4 KiB blocks to the recycler
 * (recycle.ts) rather than freeing them, and long runs placed during postcopy are written into
 * those pages and moved back in: no page allocated anew.
 *
 * A zero page costs nothing: it is only recorded (PAGE_ZERO) and left missing, in precopy and
 * in postcopy. When userfaultfd lets go of the block (precopy complete, postcopy END) a missing
 * page reads as zero; while postcopy runs, a fault on one makes the fault thread fill the
 * window around it with zeros, without asking the source. A zero page that must be placed now
 * (a vCPU waits for it) is filled at once.
 *
 * Zeros are placed as real pages (UFFDIO_COPY from a zero buffer), not as the shared zero page
 * (UFFDIO_ZEROPAGE): the guest's first write to a shared zero page copies it and flushes the
 * TLB of every CPU the process runs on. Measured on the 1 GiB sweep with half its pages zero:
 * the destination vCPU spent ~20 µs a page in those flushes, and the migration took 6.0–6.6 s;
 * with real pages, 2.0–3.3 s (four runs, same day).
 *
 * The placer never reads guest RAM; it writes only to pages it knows are present, and never
 * during postcopy.
 */
import { ALREADY_PRESENT, HOST_PAGE_SIZE, bufferAddress, hex, type Mapping, type Userfaultfd } from '@livemig/uffd';
import { MIN_RUN, PAGE_UNITS, type PageRecycler } from './recycle.js';

export interface PlacerBlock {
  readonly name: string;
  readonly pageSize: number;
  readonly pages: number;
  readonly mapping: Mapping;
  /**
   * Per page: PAGE_MISSING, PAGE_PRESENT, PAGE_REQUESTED or PAGE_ZERO. Backed by a
   * SharedArrayBuffer: the fault thread reads it, marks pages requested and resolves zero
   * pages.
   */
  readonly state: Uint8Array;
  readonly stateBuffer: SharedArrayBuffer;
  /**
   * Zero-copy Buffer over the block, for overwriting present pages in precopy. Written with
   * `set`, never `Buffer#copy`: into such an external buffer `copy` costs ~6–10 µs a call
   * (measured for 4 KiB; `set` 0.2 µs).
   */
  readonly buffer: Buffer;
  /**
   * Once pages may be recycled (recyclable blocks only), per page: how many leading
   * TRIM_UNIT-byte units may hold data, the rest being zero (PAGE_UNITS when not known). Kept
   * for pages placed before the guest runs here, handed to the recycler with the page.
   */
  dataUnits: Uint8Array | null;
}

/** Nothing received yet. */
export const PAGE_MISSING = 0;
/** Data (or the zero page) is mapped. */
export const PAGE_PRESENT = 1;
/** Missing, and the fault thread has asked the source for it (postcopy). */
export const PAGE_REQUESTED = 2;
/** Received as a zero page but not mapped (reads as zero once userfaultfd lets go). */
export const PAGE_ZERO = 3;

export interface PlaceStats {
  pagesNormal: number;
  pagesZero: number;
  /** Page payload bytes received. */
  dataBytes: number;
  /** Pages written by UFFDIO_COPY. */
  copied: number;
  /** Pages that arrived when already present (overwritten in precopy, dropped in postcopy). */
  overwritten: number;
  /** Pages received in their current state (present, or known zero). */
  received: number;
}

export class PagePlacer {
  readonly blocks = new Map<string, PlacerBlock>();
  readonly stats: PlaceStats = { pagesNormal: 0, pagesZero: 0, dataBytes: 0, copied: 0, overwritten: 0, received: 0 };
  /** Total pages of all blocks. */
  readonly totalPages: number;
  /**
   * Postcopy: the guest runs here and owns every present page, so a page arriving again is
   * dropped instead of overwritten, and zero pages are mapped at once (a vCPU may wait).
   */
  postcopy = false;
  /** Called for each requested page right after it was placed (postcopy latency, blocktime). */
  onRequestedPlaced: ((b: PlacerBlock, page: number) => void) | null = null;
  private readonly uffd: Userfaultfd;
  /**
   * Postcopy: where DISCARD puts the pages it takes out of anonymous blocks of 4 KiB pages,
   * and where long runs of new contents are placed from (recycle.ts). Null: dropped and
   * allocated anew.
   */
  recycler: PageRecycler | null = null;

  constructor(uffd: Userfaultfd, mappings: readonly Mapping[]) {
    this.uffd = uffd;
    let total = 0;
    for (const m of mappings) {
      const pages = m.length / m.pageSize;
      const stateBuffer = new SharedArrayBuffer(pages);
      this.blocks.set(m.name, {
        name: m.name,
        pageSize: m.pageSize,
        pages,
        mapping: m,
        state: new Uint8Array(stateBuffer),
        stateBuffer,
        buffer: Buffer.from(m.view()),
        dataUnits: null,
      });
      total += pages;
    }
    this.totalPages = total;
  }

  /**
   * Pages received and counted by another thread (the preempt channel's), shared with it:
   * one Int32 at index 0.
   */
  readonly receivedElsewhere = new Int32Array(new SharedArrayBuffer(4));

  /** Pages not received yet. */
  get missing(): number {
    return this.totalPages - this.stats.received - Atomics.load(this.receivedElsewhere, 0);
  }

  /** Pages of the recyclable blocks (see recycle.ts) neither received nor known to be zero. */
  missingRecyclable(): number {
    let n = 0;
    for (const b of this.blocks.values()) {
      if (!recyclable(b)) continue;
      const state = b.state;
      for (let p = 0; p < b.pages; p++) if (state[p] === PAGE_MISSING || state[p] === PAGE_REQUESTED) n++;
    }
    return n;
  }

  block(name: string): PlacerBlock {
    const b = this.blocks.get(name);
    if (!b) throw new Error(`unknown RAM block "${name}"`);
    return b;
  }

  /**
   * Places `count` pages from `src` (starting `srcBase` bytes in) at page index `first` of
   * `block`. `table`: when the pages came trimmed, each page's kept units (TRIMMED_RUN's u16 LE
   * table; `src` holds the pages filled out, zero after those units).
   */
  placeRun(b: PlacerBlock, first: number, count: number, src: Buffer, srcBase = 0, table: Buffer | null = null): void {
    const ps = b.pageSize;
    const state = b.state;
    this.stats.pagesNormal += count;
    this.stats.dataBytes += count * ps;
    // Before the guest runs here: what each page holds, should DISCARD hand it to the recycler.
    if (!this.postcopy && this.recycler && recyclable(b)) recordDataUnits(b, first, count, table);
    let p = first;
    const end = first + count;
    while (p < end) {
      const present = state[p] === PAGE_PRESENT;
      let q = p + 1;
      while (q < end && (state[q] === PAGE_PRESENT) === present) q++;
      const srcOff = srcBase + (p - first) * ps;
      if (present) {
        if (!this.postcopy) src.copy(b.buffer, p * ps, srcOff, srcOff + (q - p) * ps);
        this.stats.overwritten += q - p;
      } else {
        this.copyIn(b, p, q, src, srcOff, table, 2 * (p - first));
        this.markPresent(b, p, q);
        this.stats.copied += q - p;
      }
      p = q;
    }
  }

  private copyIn(b: PlacerBlock, first: number, end: number, src: Buffer, srcOff: number, table: Buffer | null, tableAt: number): void {
    const ps = b.pageSize;
    const rec = this.recycler;
    if (this.postcopy && rec && end - first >= MIN_RUN && recyclable(b) && rec.available >= MIN_RUN) {
      const n = Math.min(end - first, rec.available);
      const at = rec.take(n);
      rec.write(at, n, src, srcOff, table, tableAt);
      const r = rec.place(at, b.mapping.addr + first * ps, n, () => `block ${b.name}, offset ${hex(first * ps)}`);
      // The rest (recycled pages ran out, or the kernel refused a move) the usual way.
      first += r.done;
      srcOff += r.done * ps;
      if (first === end) return;
    }
    // Something placed a page already (the fault thread's zero page, the preempt channel, a
    // racing copy): precopy overwrites it with the newer data, postcopy keeps what the guest sees.
    const onPresent = this.postcopy
      ? undefined
      : (page: number): void => {
          const at = (page - first) * ps;
          src.copy(b.buffer, page * ps, srcOff + at, srcOff + at + ps);
        };
    copyPages(this.uffd, b.name, b.mapping.addr, ps, first, end, bufferAddress(src) + srcOff, onPresent);
  }

  /** Records (precopy) or maps (postcopy) `count` zero pages from page index `first`. */
  placeZero(b: PlacerBlock, first: number, count: number): void {
    const ps = b.pageSize;
    const state = b.state;
    this.stats.pagesZero += count;
    const end = first + count;
    let p = first;
    while (p < end) {
      const present = state[p] === PAGE_PRESENT;
      let q = p + 1;
      while (q < end && (state[q] === PAGE_PRESENT) === present) q++;
      if (present) {
        if (!this.postcopy) b.buffer.fill(0, p * ps, q * ps);
        else this.stats.overwritten += q - p;
      } else if (this.postcopy) {
        this.zeroWhenTouched(b, p, q);
      } else {
        for (let i = p; i < q; i++) {
          if (state[i] !== PAGE_ZERO) {
            state[i] = PAGE_ZERO;
            this.stats.received++;
          }
        }
      }
      p = q;
    }
  }

  /**
   * Postcopy: records the not-present pages [first, end) as zero, left missing (the fault
   * thread fills them when touched). A page a vCPU already waits for is filled now. Claimed by
   * compare-and-swap: the fault thread may mark a page requested at the same moment.
   */
  private zeroWhenTouched(b: PlacerBlock, first: number, end: number): void {
    const state = b.state;
    let waited = -1;
    for (let p = first; p <= end; p++) {
      const prev = p < end ? Atomics.compareExchange(state, p, PAGE_MISSING, PAGE_ZERO) : PAGE_MISSING;
      if (prev === PAGE_REQUESTED) {
        if (waited < 0) waited = p;
        continue;
      }
      if (waited >= 0) {
        this.zeroIn(b, waited, p);
        waited = -1;
      }
      if (prev === PAGE_MISSING && p < end) this.stats.received++;
    }
  }

  /** Fills the missing pages [first, end) of a block with zeros and marks them present. */
  zeroIn(b: PlacerBlock, first: number, end: number): void {
    mapZeroPages(this.uffd, b.name, b.mapping.addr, b.pageSize, first, end);
    this.markPresent(b, first, end);
  }

  /** Marks [first, end) present, counting newly received pages and reporting requested ones. */
  private markPresent(b: PlacerBlock, first: number, end: number): void {
    const state = b.state;
    const hook = this.onRequestedPlaced;
    let fresh = 0;
    for (let p = first; p < end; p++) {
      // Atomic: the preempt channel's thread may mark the same page at the same moment, and
      // only the first of the two counts it.
      const s = Atomics.exchange(state, p, PAGE_PRESENT);
      if (s === PAGE_PRESENT) continue;
      if (s !== PAGE_ZERO) fresh++;
      if (s === PAGE_REQUESTED && hook) hook(b, p);
    }
    this.stats.received += fresh;
  }

  /**
   * Drops pages [first, end) of a block so they are missing again (postcopy DISCARD): the
   * next guest access faults and the page is fetched anew. Anonymous memory: MADV_DONTNEED;
   * memfd: punch a hole in the file.
   */
  discard(b: PlacerBlock, first: number, end: number): void {
    const ps = b.pageSize;
    const off = first * ps;
    const len = (end - first) * ps;
    const rec = this.recycler;
    if (rec && recyclable(b)) {
      // Present pages go to the recycler (missing here all the same); what it did not take is
      // dropped below with the rest.
      let p = first;
      while (p < end) {
        if (b.state[p] !== PAGE_PRESENT) {
          p++;
          continue;
        }
        let q = p + 1;
        while (q < end && b.state[q] === PAGE_PRESENT) q++;
        rec.stash(b.mapping.addr + p * ps, q - p, () => `block ${b.name}, offset ${hex(p * ps)}`, b.dataUnits?.subarray(p, q));
        p = q;
      }
    }
    if (b.mapping.backing === 'memfd') b.mapping.punchHole(off, len);
    else b.mapping.madvise('dontneed', off, len);
    let dropped = 0;
    for (let p = first; p < end; p++) if (b.state[p] === PAGE_PRESENT || b.state[p] === PAGE_ZERO) dropped++;
    b.state.fill(PAGE_MISSING, first, end);
    this.stats.received -= dropped;
  }

  /** Records every page never received as zero (the source sends all; this is a safety net). */
  zeroUnreceived(): number {
    if (this.missing === 0) return 0;
    let n = 0;
    for (const b of this.blocks.values()) {
      const state = b.state;
      for (let p = 0; p < b.pages; p++) {
        if (state[p] === PAGE_MISSING) {
          state[p] = PAGE_ZERO;
          n++;
        }
      }
    }
    this.stats.received += n;
    return n;
  }
}

/** Records the data units of pages [first, first + count) of `b` just placed (see PlacerBlock). */
function recordDataUnits(b: PlacerBlock, first: number, count: number, table: Buffer | null): void {
  const units = (b.dataUnits ??= new Uint8Array(b.pages).fill(PAGE_UNITS));
  if (!table) units.fill(PAGE_UNITS, first, first + count);
  else for (let i = 0; i < count; i++) units[first + i] = table.readUInt16LE(2 * i);
}

/** A block whose pages can be recycled: private anonymous memory of 4 KiB pages. */
function recyclable(b: PlacerBlock): boolean {
  return b.pageSize === HOST_PAGE_SIZE && b.mapping.backing === 'anonymous';
}

/**
 * UFFDIO_COPY of pages [first, end) of the block at `addr` from `srcAddr` (the pages in order),
 * in as few ioctls as the kernel allows. A page already present (EEXIST) is skipped, after
 * `onPresent(page)` when given; a short copy (EAGAIN) resumes where the kernel stopped, and one
 * that makes no progress again and again fails with an error naming the block and offset.
 * Shared by the placer and the preempt channel's thread.
 */
export function copyPages(
  uffd: Userfaultfd,
  name: string,
  addr: number,
  pageSize: number,
  first: number,
  end: number,
  srcAddr: number,
  onPresent?: (page: number) => void,
): void {
  const dst = addr + first * pageSize;
  const len = (end - first) * pageSize;
  let done = 0;
  let stalls = 0;
  while (done < len) {
    const at = done;
    const r = uffd.copy(dst + done, srcAddr + done, len - done, 0, () => `block ${name}, offset ${hex(first * pageSize + at)}`);
    if (r === ALREADY_PRESENT) {
      const pageOff = Math.floor(done / pageSize) * pageSize;
      onPresent?.(first + pageOff / pageSize);
      done = pageOff + pageSize;
    } else {
      if (r === 0 && ++stalls > 1000) {
        throw new Error(`UFFDIO_COPY made no progress (EAGAIN) (block ${name}, offset ${hex(first * pageSize + done)})`);
      }
      done += r;
    }
  }
}

/** Zeros to place from: 1 MiB, or one page where pages are larger. */
const zeroSources = new Map<number, Buffer>();

/**
 * Fills pages [first, end) of the block at `addr` with zeros (used by the placer, the fault
 * thread and the preempt channel's thread): UFFDIO_COPY from a zero buffer, so each page is a
 * page of its own (see the header: a write to the shared zero page costs a TLB flush on every
 * CPU). Pages already present are left as they are; a short copy resumes, and one that makes no
 * progress again and again fails with an error naming the block and offset.
 */
export function mapZeroPages(uffd: Userfaultfd, name: string, addr: number, pageSize: number, first: number, end: number): void {
  let zero = zeroSources.get(pageSize);
  if (!zero) {
    zero = Buffer.alloc(Math.max(1024 * 1024, pageSize));
    zeroSources.set(pageSize, zero);
  }
  const per = zero.length / pageSize;
  const src = bufferAddress(zero);
  for (let p = first; p < end; p += per) copyPages(uffd, name, addr, pageSize, p, Math.min(end, p + per), src);
}
