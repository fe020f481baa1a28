/**
 * blocks.ts — owns `BlockTable`, the agreed RAM layout (from SETUP), and the
 * layout checks the stateless decoder cannot do: block exists, page size
 * matches, ranges lie inside the block and are aligned to its page size.
 */
import { ProtocolError, hex } from './errors.js';
import { MsgType, msgTypeName, type BlockInfo, type Message, type SetupMessage } from './messages.js';
import { validateMessage } from './validate.js';

export class BlockTable implements Iterable<BlockInfo> {
  private readonly byName = new Map<string, BlockInfo>();

  /** Blocks are checked with the SETUP rules (names, sizes, duplicates). */
  constructor(blocks: readonly BlockInfo[]) {
    validateMessage({ type: MsgType.SETUP, guest: { kind: 'x', config: null }, blocks, caps: [], vcpus: 1 }, 0);
    for (const b of blocks) this.byName.set(b.name, Object.freeze({ name: b.name, length: b.length, pageSize: b.pageSize }));
  }

  static fromSetup(msg: SetupMessage): BlockTable {
    return new BlockTable(msg.blocks);
  }

  get size(): number {
    return this.byName.size;
  }

  get names(): string[] {
    return [...this.byName.keys()];
  }

  [Symbol.iterator](): Iterator<BlockInfo> {
    return this.byName.values();
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The block called `name`; throws ProtocolError('UNKNOWN_BLOCK'). */
  get(name: string): BlockInfo {
    const b = this.byName.get(name);
    if (b === undefined) throw new ProtocolError('UNKNOWN_BLOCK', `unknown RAM block ${JSON.stringify(name)}`);
    return b;
  }

  /** Pages in a block. */
  pageCount(name: string): number {
    const b = this.get(name);
    return b.length / b.pageSize;
  }

  /**
   * Check [offset, offset+length) lies in block `name` and is aligned to its
   * page size; if `pageSize` is given it must equal the block's. Returns the block.
   */
  checkRange(name: string, offset: number, length: number, pageSize?: number): BlockInfo {
    const b = this.get(name);
    if (pageSize !== undefined && pageSize !== b.pageSize)
      throw new ProtocolError('ALIGN', `page size ${hex(pageSize)} does not match block ${JSON.stringify(name)} page size ${hex(b.pageSize)}`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0)
      throw new ProtocolError('RANGE', `offset ${offset} / length ${length} must be non-negative integers`);
    if (offset % b.pageSize !== 0 || length % b.pageSize !== 0)
      throw new ProtocolError('ALIGN', `offset ${hex(offset)} + length ${hex(length)} not aligned to page size ${hex(b.pageSize)} of block ${JSON.stringify(name)}`);
    if (offset + length > b.length)
      throw new ProtocolError('RANGE', `offset ${hex(offset)} + length ${hex(length)} out of range for block ${JSON.stringify(name)} (length ${hex(b.length)})`);
    return b;
  }

  /** Layout checks for a decoded message that names a block (others pass). */
  checkMessage(msg: Message): void {
    switch (msg.type) {
      case MsgType.PAGES: {
        const b = this.checkRange(msg.block, 0, 0, msg.pageSize);
        const last = b.length - b.pageSize;
        const offs = msg.offsets;
        for (let i = 0; i < offs.length; i++) if (offs[i]! > last) this.checkRange(msg.block, offs[i]!, b.pageSize);
        break;
      }
      case MsgType.PAGE_RUN:
      case MsgType.TRIMMED_RUN:
        this.checkRange(msg.block, msg.offset, msg.count * msg.pageSize, msg.pageSize);
        break;
      case MsgType.ZERO:
        for (const [o, n] of msg.runs) this.checkRange(msg.block, o, n * msg.pageSize, msg.pageSize);
        break;
      case MsgType.DISCARD:
        for (const [s, l] of msg.ranges) this.checkRange(msg.block, s, l);
        break;
      case MsgType.REQ_PAGES:
        this.checkRange(msg.block, msg.offset, msg.length);
        break;
      case MsgType.RECV_BITMAP: {
        const pages = this.pageCount(msg.block);
        if (msg.pages !== pages)
          throw new ProtocolError('RANGE', `${msgTypeName(msg.type)}: ${msg.pages} pages for block ${JSON.stringify(msg.block)}, which has ${pages}`);
        break;
      }
    }
  }
}
