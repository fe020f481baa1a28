/**
 * page-placer.ts — owns putting received pages into guest RAM on the destination.
 *
 * Every block is registered with userfaultfd (MISSING) from the start, so a page that has
 * not arrived yet is placed with UFFDIO_COPY straight from the socket buffer: one ioctl a
 * contiguous run, ~25× faster here than a first-touch memcpy. A page that arrives again (a
 * later precopy round) is already present and is overwritten with a plain copy. Zero pages
 * that have not arrived are left missing: unregistering later makes them read as zeros, and
 * in postcopy they are placed locally with UFFDIO_ZEROPAGE if touched.
 *
 * The placer never reads guest RAM; it writes only to pages it knows are present.
 */
import { ALREADY_PRESENT, bufferAddress, hex, type Mapping, type Userfaultfd } from '@livemig/uffd';

export interface PlacerBlock {
  readonly name: string;
  readonly pageSize: number;
  readonly pages: number;
  readonly mapping: Mapping;
  /** 1 = page data placed (present), 2 = known zero (not placed), 0 = nothing yet. */
  readonly state: Uint8Array;
  /** Zero-copy Buffer over the block, for overwriting present pages. */
  readonly buffer: Buffer;
}

export const PAGE_NONE = 0;
export const PAGE_PRESENT = 1;
export const PAGE_ZERO = 2;

export interface PlaceStats {
  pagesNormal: number;
  pagesZero: number;
  /** Page payload bytes received. */
  dataBytes: number;
  /** Pages written by UFFDIO_COPY. */
  copied: number;
  /** Pages overwritten in place (already present). */
  overwritten: number;
}

export class PagePlacer {
  readonly blocks = new Map<string, PlacerBlock>();
  readonly stats: PlaceStats = { pagesNormal: 0, pagesZero: 0, dataBytes: 0, copied: 0, overwritten: 0 };
  private readonly uffd: Userfaultfd;

  constructor(uffd: Userfaultfd, mappings: readonly Mapping[]) {
    this.uffd = uffd;
    for (const m of mappings) {
      this.blocks.set(m.name, {
        name: m.name,
        pageSize: m.pageSize,
        pages: m.length / m.pageSize,
        mapping: m,
        state: new Uint8Array(m.length / m.pageSize),
        buffer: Buffer.from(m.view()),
      });
    }
  }

  block(name: string): PlacerBlock {
    const b = this.blocks.get(name);
    if (!b) throw new Error(`unknown RAM block "${name}"`);
    return b;
  }

  /** Places `count` pages from `src` at page index `first` of `block`. */
  placeRun(b: PlacerBlock, first: number, count: number, src: Buffer): void {
    const ps = b.pageSize;
    const state = b.state;
    this.stats.pagesNormal += count;
    this.stats.dataBytes += count * ps;
    let p = first;
    const end = first + count;
    while (p < end) {
      const present = state[p] === PAGE_PRESENT;
      let q = p + 1;
      while (q < end && (state[q] === PAGE_PRESENT) === present) q++;
      const srcOff = (p - first) * ps;
      const len = (q - p) * ps;
      if (present) {
        src.copy(b.buffer, p * ps, srcOff, srcOff + len);
        this.stats.overwritten += q - p;
      } else {
        this.copyIn(b, p, q, src, srcOff);
        state.fill(PAGE_PRESENT, p, q);
        this.stats.copied += q - p;
      }
      p = q;
    }
  }

  private copyIn(b: PlacerBlock, first: number, end: number, src: Buffer, srcOff: number): void {
    const ps = b.pageSize;
    const dst = b.mapping.addr + first * ps;
    const srcAddr = bufferAddress(src) + srcOff;
    const len = (end - first) * ps;
    let done = 0;
    let stalls = 0;
    while (done < len) {
      const at = done;
      const r = this.uffd.copy(dst + done, srcAddr + done, len - done, 0, () => `block ${b.name}, offset ${hex(first * ps + at)}`);
      if (r === ALREADY_PRESENT) {
        // Someone placed part of this range already (a racing fault); overwrite page by page.
        const pageOff = Math.floor(done / ps) * ps;
        src.copy(b.buffer, first * ps + pageOff, srcOff + pageOff, srcOff + pageOff + ps);
        done = pageOff + ps;
      } else {
        // A short copy (EAGAIN) resumes where the kernel stopped; one that copies nothing
        // again and again means the mapping is changing under us.
        if (r === 0 && ++stalls > 1000) {
          throw new Error(`UFFDIO_COPY made no progress (EAGAIN) (block ${b.name}, offset ${hex(first * ps + done)})`);
        }
        done += r;
      }
    }
  }

  /** Records `count` zero pages from page index `first`. */
  placeZero(b: PlacerBlock, first: number, count: number): void {
    const ps = b.pageSize;
    const state = b.state;
    this.stats.pagesZero += count;
    const end = first + count;
    for (let p = first; p < end; p++) {
      if (state[p] === PAGE_PRESENT) b.buffer.fill(0, p * ps, (p + 1) * ps);
      else state[p] = PAGE_ZERO;
    }
  }
}
