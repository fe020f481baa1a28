/**
 * postcopy-server.ts — owns the source's side of postcopy after RUN: serving the
 * destination's page requests ahead of a background stream of every page not yet sent.
 *
 * A request is served at the next batch boundary, before any more background pages, and the
 * background scan then continues just after the requested pages (QEMU: spatial locality, the
 * guest is likely to touch the next pages soon). Pages already sent are not sent again: a
 * request for one is for a page still in flight.
 */
import type { Channel } from '@livemig/transport';
import type { PageSender } from './page-sender.js';
import type { BlockState } from './outgoing.js';

/** Background batch: 1 MiB of 4 KiB pages. */
const BACKGROUND_BATCH = 256;
/**
 * Background batches allowed in user space at once. A request is sent as soon as it
 * arrives but leaves after what is queued here, so this bounds its wait (plus what the
 * kernel holds) while keeping the stream busy.
 */
const BACKGROUND_WINDOW = 2;

interface Request {
  block: number;
  first: number;
  end: number;
}

export class PostcopyServer {
  readonly stats = { requests: 0, requestedPages: 0, backgroundPages: 0 };
  private readonly ch: Channel;
  private readonly sender: PageSender;
  private readonly blocks: BlockState[];
  private readonly byName = new Map<string, number>();
  private readonly queue: Request[] = [];
  private wake: (() => void) | null = null;
  private aborted: Error | null = null;
  private readonly inFlight: Array<Promise<void>> = [];
  private cursorBlock = 0;
  private cursor = 0;

  constructor(ch: Channel, sender: PageSender, blocks: BlockState[]) {
    this.ch = ch;
    this.sender = sender;
    this.blocks = blocks;
    blocks.forEach((b, i) => this.byName.set(b.name, i));
  }

  /** The destination needs [offset, offset+length) of `block` (already validated). */
  request(block: string, offset: number, length: number): void {
    const i = this.byName.get(block);
    if (i === undefined) throw new Error(`page request for unknown RAM block "${block}"`);
    const ps = this.blocks[i]!.pageSize;
    this.queue.push({ block: i, first: offset / ps, end: (offset + length) / ps });
    this.stats.requests++;
    this.wake?.();
  }

  abort(err: Error): void {
    this.aborted = err;
    this.wake?.();
  }

  /** Pages still to send. */
  get remaining(): number {
    let n = 0;
    for (const b of this.blocks) n += b.dirty.count;
    return n;
  }

  /** Sends every remaining page, requested ones first; resolves when none is left. */
  async run(): Promise<void> {
    for (;;) {
      if (this.aborted) throw this.aborted;
      const r = this.queue.shift();
      if (r) {
        const b = this.blocks[r.block]!;
        this.stats.requestedPages += await this.sendNeeded(b, r.first, r.end);
        this.cursorBlock = r.block;
        this.cursor = r.end;
        continue;
      }
      if (!(await this.sendBackground())) return;
    }
  }

  /** Sends the still-dirty pages of [first, end); returns how many. */
  private async sendNeeded(b: BlockState, first: number, end: number): Promise<number> {
    let sent = 0;
    let p = first;
    while (p < end) {
      while (p < end && !b.dirty.test(p)) p++;
      let q = p;
      while (q < end && b.dirty.test(q)) q++;
      if (q > p) {
        b.dirty.clearRange(p, q);
        await this.sender.sendRange(b, p, q - p);
        sent += q - p;
      }
      p = q;
    }
    return sent;
  }

  /** Sends the next background batch from the cursor; false when nothing is left. */
  private async sendBackground(): Promise<boolean> {
    const n = this.blocks.length;
    for (let k = 0; k <= n; k++) {
      const bi = (this.cursorBlock + k) % n;
      const b = this.blocks[bi]!;
      const from = k === 0 ? this.cursor : 0;
      let p = b.dirty.nextSet(from);
      if (p < 0 && k === 0 && from > 0) p = b.dirty.nextSet(0);
      if (p < 0) continue;
      const end = b.dirty.nextClear(p, p + BACKGROUND_BATCH);
      // Bound the background data queued in user space (see BACKGROUND_WINDOW).
      while (this.inFlight.length >= BACKGROUND_WINDOW) await this.inFlight.shift();
      if (this.queue.length > 0) return true;
      b.dirty.clearRange(p, end);
      this.cursorBlock = bi;
      this.cursor = end;
      await this.sender.sendRange(b, p, end - p);
      this.inFlight.push(this.ch.flushed().catch(() => undefined));
      this.stats.backgroundPages += end - p;
      return true;
    }
    return false;
  }
}
