/**
 * unused.ts — owns the record of RAM the guest declared unused (QEMU's RamDiscardManager):
 * per-block byte ranges, kept sorted and merged. Migration may skip them; nothing here frees
 * memory.
 */

export interface UnusedRange {
  block: string;
  offset: number;
  length: number;
}

export class UnusedRanges {
  private readonly byBlock = new Map<string, Array<[number, number]>>();

  /** Adds [offset, offset+length) of `block`, merging with touching or overlapping ranges. */
  add(block: string, offset: number, length: number): void {
    if (length === 0) return;
    const list = this.byBlock.get(block) ?? [];
    let start = offset;
    let end = offset + length;
    const kept: Array<[number, number]> = [];
    for (const [s, e] of list) {
      if (e < start || s > end) kept.push([s, e]);
      else {
        start = Math.min(start, s);
        end = Math.max(end, e);
      }
    }
    kept.push([start, end]);
    kept.sort((a, b) => a[0] - b[0]);
    this.byBlock.set(block, kept);
  }

  /** All ranges, by block (in the order blocks were first declared) then offset. */
  list(): UnusedRange[] {
    const out: UnusedRange[] = [];
    for (const [block, list] of this.byBlock) for (const [s, e] of list) out.push({ block, offset: s, length: e - s });
    return out;
  }
}
