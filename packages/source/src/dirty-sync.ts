/**
 * dirty-sync.ts — owns the source's view of dirty tracking: it arms the kernel tracker
 * (@livemig/uffd DirtyTracker: WP-async + PAGEMAP_SCAN, soft-dirty fallback) over every
 * block and, at each sync, folds the pages written since the last sync into the blocks'
 * dirty bitmaps.
 */
import { DirtyTracker } from '@livemig/uffd';
import type { PageBitmap } from './page-bitmap.js';
import type { SourceBlock } from './source-machine.js';

export type DirtyMethod = 'auto' | 'wp-async' | 'soft-dirty';

export class DirtySync {
  private readonly tracker: DirtyTracker;
  private readonly blocks: readonly SourceBlock[];
  private active = false;

  constructor(blocks: readonly SourceBlock[], method: DirtyMethod) {
    this.blocks = blocks;
    this.tracker = new DirtyTracker(
      blocks.map((b) => ({ addr: b.mapping.addr, length: b.length, name: b.name, pageSize: b.pageSize })),
      { method },
    );
  }

  get method(): string {
    return this.tracker.method;
  }

  start(): void {
    this.tracker.start();
    this.active = true;
  }

  /**
   * Marks every page of block i written since the last sync as dirty (to send) and
   * populated (it holds data now: read it when sending). `last`: the guest is stopped for
   * good here, nothing is written after this sync: the kernel need not write-protect the
   * written pages again (DirtyTracker.scan with `rearm: false`; a later sync would still
   * find them, so this is safe even if the guest ran on). `found` gets each range of pages
   * written since the last sync (block index, first page, end page).
   */
  sync(
    bitmaps: ReadonlyArray<{ dirty: PageBitmap; populated: PageBitmap }>,
    opts: { last?: boolean; found?: (block: number, first: number, end: number) => void } = {},
  ): { pages: number; bytes: number } {
    let pages = 0;
    let bytes = 0;
    for (const set of this.tracker.scan(undefined, { rearm: !opts.last })) {
      const { dirty, populated } = bitmaps[set.index]!;
      const pageSize = this.blocks[set.index]!.pageSize;
      set.forEach((first, end) => {
        pages += end - first;
        bytes += (end - first) * pageSize;
        dirty.setRange(first, end);
        populated.setRange(first, end);
        opts.found?.(set.index, first, end);
      });
    }
    return { pages, bytes };
  }

  stop(): void {
    if (!this.active) return;
    this.active = false;
    this.tracker.stop();
  }
}
