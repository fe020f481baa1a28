/**
 * ram-block.ts — owns guest RAM blocks: named, page-aligned regions of mapped memory
 * (anonymous or memfd-backed, 4 KiB or 2 MiB pages) and the zero-copy views guest code uses.
 * A block created here owns its mapping; an adopted block wraps memory the caller mapped and
 * never unmaps it. `viewBlocks` rebuilds the views inside a worker thread from addresses only.
 */
import { createMemfd, mapAnonymous, viewAt, HOST_PAGE_SIZE, type Mapping } from '@livemig/uffd/memory';

export type RamBacking = 'anonymous' | 'memfd';

export interface RamBlockOptions {
  name: string;
  length: number;
  backing?: RamBacking;
  /** 2 MiB pages from hugetlbfs (the host must have huge pages reserved). */
  hugetlb?: boolean;
}

/** Where a block lives: enough to rebuild a view of it in another thread of this process. */
export interface BlockInfo {
  name: string;
  length: number;
  pageSize: number;
  addr: number;
}

const NAME_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

export function checkBlockName(name: string): void {
  if (!NAME_RE.test(name)) throw new RangeError(`invalid RAM block name ${JSON.stringify(name)} (1–64 of [A-Za-z0-9_.:-])`);
}

export class RamBlock {
  readonly name: string;
  readonly length: number;
  readonly pageSize: number;
  readonly mapping: Mapping;
  /** True when this block created (and will unmap) its memory. */
  readonly owned: boolean;

  private constructor(name: string, mapping: Mapping, owned: boolean) {
    checkBlockName(name);
    if (mapping.length % mapping.pageSize !== 0 || mapping.addr % mapping.pageSize !== 0) {
      throw new RangeError(`RAM block ${name}: mapping is not aligned to its page size ${mapping.pageSize}`);
    }
    this.name = name;
    this.length = mapping.length;
    this.pageSize = mapping.pageSize;
    this.mapping = mapping;
    this.owned = owned;
  }

  /** @internal use createRamBlock */
  static create(opts: RamBlockOptions): RamBlock {
    checkBlockName(opts.name);
    const map = opts.backing === 'memfd' ? createMemfd : mapAnonymous;
    return new RamBlock(opts.name, map(opts.length, { name: opts.name, hugetlb: opts.hugetlb }), true);
  }

  /**
   * Wraps memory the caller mapped. By default `unmap()` of the block leaves it mapped; with
   * `owned` the block takes the mapping over and unmaps it.
   */
  static adopt(name: string, mapping: Mapping, owned = false): RamBlock {
    return new RamBlock(name, mapping, owned);
  }

  get addr(): number {
    return this.mapping.addr;
  }

  get backing(): Mapping['backing'] {
    return this.mapping.backing;
  }

  get pages(): number {
    return this.length / this.pageSize;
  }

  /** Zero-copy bytes of [offset, offset+length). Main-thread use blocks on missing pages in postcopy. */
  bytes(offset = 0, length = this.length - offset): Uint8Array {
    return this.mapping.bytes(offset, length);
  }

  /** A zero-copy ArrayBuffer over the whole block. */
  view(): ArrayBuffer {
    return this.mapping.view();
  }

  info(): BlockInfo {
    return { name: this.name, length: this.length, pageSize: this.pageSize, addr: this.addr };
  }

  /** Releases the memory if this block owns it (adopted memory is only forgotten). */
  unmap(): void {
    if (this.owned) this.mapping.unmap();
  }
}

/** Creates a RAM block with fresh (zero) memory. */
export function createRamBlock(opts: RamBlockOptions): RamBlock {
  return RamBlock.create(opts);
}

/**
 * Zero-copy byte views of blocks mapped elsewhere in this process, by name (for worker
 * threads). Creating a view does not touch the memory.
 */
export function viewBlocks(blocks: readonly BlockInfo[]): Record<string, Uint8Array> {
  const views: Record<string, Uint8Array> = Object.create(null);
  for (const b of blocks) views[b.name] = new Uint8Array(viewAt(b.addr, b.length));
  return views;
}

export { HOST_PAGE_SIZE };
