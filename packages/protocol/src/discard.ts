/**
 * discard.ts — owns `DiscardBatcher`, QEMU's postcopy_discard_send_range /
 * _finish: turns one block's re-dirtied pages into DISCARD commands of at most
 * MAX_DISCARDS_PER_COMMAND byte ranges, merging contiguous ranges, and counts
 * ranges and commands sent.
 */
import { ProtocolError, hex } from './errors.js';
import { MAX_DISCARDS_PER_COMMAND, MAX_OFFSET, MsgType, type DiscardMessage } from './messages.js';

export { MAX_DISCARDS_PER_COMMAND };

export class DiscardBatcher {
  /** Totals over the batcher's life: ranges sent (after merging) and DISCARD commands sent. */
  readonly stats = { ranges: 0, commands: 0 };
  private block: string | null = null;
  private ranges: Array<[number, number]> = [];
  private curStart = -1; // pending range not yet placed in `ranges`
  private curEnd = -1;

  constructor(
    private readonly send: (msg: DiscardMessage) => void,
    private readonly maxRangesPerCommand = MAX_DISCARDS_PER_COMMAND,
  ) {
    if (!Number.isInteger(maxRangesPerCommand) || maxRangesPerCommand < 1 || maxRangesPerCommand > MAX_DISCARDS_PER_COMMAND)
      throw new RangeError(`maxRangesPerCommand must be 1..${MAX_DISCARDS_PER_COMMAND}, got ${maxRangesPerCommand}`);
  }

  /** Begin a block; a block still open is finished first. */
  start(block: string): void {
    if (this.block !== null) this.finish();
    this.block = block;
  }

  /** Add a byte range; ranges must come in ascending, non-overlapping order.
   *  A range starting where the previous one ended extends it. */
  addRange(offset: number, length: number): void {
    if (this.block === null) throw new Error('DiscardBatcher.addRange called before start(block)');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > MAX_OFFSET)
      throw new ProtocolError('RANGE', `discard range offset ${hex(offset)} length ${hex(length)} is invalid`);
    if (offset === this.curEnd) {
      this.curEnd += length;
      return;
    }
    if (offset < this.curEnd)
      throw new ProtocolError('ORDER', `discard range at ${hex(offset)} overlaps or precedes the previous one ending at ${hex(this.curEnd)}`);
    if (this.curStart >= 0) this.place();
    this.curStart = offset;
    this.curEnd = offset + length;
  }

  /** Add pages by index (ascending); contiguous indices merge into one range. */
  addPages(pageIndices: ArrayLike<number>, pageSize: number): void {
    for (let i = 0; i < pageIndices.length; i++) this.addRange(pageIndices[i]! * pageSize, pageSize);
  }

  /** Flush the partial command of the current block and close it. */
  finish(): void {
    if (this.block === null) return;
    if (this.curStart >= 0) this.place();
    if (this.ranges.length > 0) this.flush();
    this.block = null;
    this.curStart = this.curEnd = -1;
  }

  private place(): void {
    this.ranges.push([this.curStart, this.curEnd - this.curStart]);
    this.curStart = this.curEnd = -1;
    if (this.ranges.length >= this.maxRangesPerCommand) this.flush();
  }

  private flush(): void {
    const ranges = this.ranges;
    this.ranges = [];
    this.stats.ranges += ranges.length;
    this.stats.commands++;
    this.send({ type: MsgType.DISCARD, block: this.block!, ranges });
  }
}
