/**
 * postcopy-server.ts — owns the source's side of postcopy after RUN: serving the
 * destination's page requests ahead of a background stream of every page not yet sent.
 *
 * A request is served at the next batch boundary, before any more background pages, and the
 * background scan then continues just after the requested pages (QEMU: spatial locality, the
 * guest is likely to touch the next pages soon). Pages already sent are not sent again: a
 * request for one is for a page still in flight.
 *
 * With a preempt channel, requests are answered by the preempt thread (preempt-worker.ts), at
 * once and on that channel, whatever the background stream is doing; this side learns which
 * pages it sent (`urgentSent`), drops them from the background stream and carries on after
 * them.
 */
import { ChannelClosedError, type Channel } from '@livemig/transport';
import type { PageSender } from './page-sender.js';
import { turnEventLoop } from './event-loop.js';
import type { BlockState } from './outgoing.js';

/** Background batch: 1 MiB of 4 KiB pages. */
const BACKGROUND_BATCH = 256;
/**
 * Background batches allowed in user space at once. Without a preempt channel a request is
 * sent as soon as it arrives but leaves after what is queued here, so this bounds its wait
 * (plus what the kernel holds) while keeping the stream busy. With one, requests do not wait
 * for this thread at all, and the batches stay large: 64-page batches × 64 measured no better
 * than 256 × 2 (median of 5, twice: random-access guest blocktime 803–838 vs 667–697 ms; the
 * sweep's 524–580 vs 436–567 ms).
 */
const BACKGROUND_WINDOW = 2;
/**
 * The preempt channel, on its own thread (preempt-thread.ts): requests that come on the
 * return path go there while it is up.
 */
export interface UrgentLink {
  readonly ready: boolean;
  request(block: number, first: number, end: number): void;
}

interface Request {
  block: number;
  first: number;
  end: number;
}

export class PostcopyServer {
  readonly stats = { requests: 0, requestedPages: 0, backgroundPages: 0, urgentRequests: 0, urgentPages: 0, urgentBytes: 0 };
  readonly blocks: BlockState[];
  private ch: Channel;
  private readonly urgent: UrgentLink | null;
  private readonly sender: PageSender;
  /** Postcopy recovery: set while paused; resolved by resume(). */
  private pauseGate: { promise: Promise<void>; resolve: () => void } | null = null;
  private readonly onLinkError: (e: Error) => void;
  private readonly byName = new Map<string, number>();
  private readonly queue: Request[] = [];
  private wake: (() => void) | null = null;
  private aborted: Error | null = null;
  private readonly inFlight: Array<Promise<void>> = [];
  private cursorBlock = 0;
  private cursor = 0;

  /**
   * `onLinkError` is told when sending fails because a channel broke; the migration then
   * pauses (see `pause`), and the stream waits for `resume`.
   */
  constructor(ch: Channel, sender: PageSender, blocks: BlockState[], urgent: UrgentLink | null = null, onLinkError: (e: Error) => void = () => undefined) {
    this.ch = ch;
    this.urgent = urgent;
    this.onLinkError = onLinkError;
    this.sender = sender;
    this.blocks = blocks;
    blocks.forEach((b, i) => this.byName.set(b.name, i));
  }

  /** The destination needs [offset, offset+length) of `block` (already validated), asked on the return path. */
  request(block: string, offset: number, length: number): void {
    const i = this.byName.get(block);
    if (i === undefined) throw new Error(`page request for unknown RAM block "${block}"`);
    const ps = this.blocks[i]!.pageSize;
    const first = offset / ps;
    const end = (offset + length) / ps;
    this.stats.requests++;
    if (this.urgent?.ready && !this.pauseGate) {
      this.urgent.request(i, first, end);
      return;
    }
    this.queue.push({ block: i, first, end });
    this.wake?.();
  }

  /**
   * The preempt thread served a request (`onChannel`: one it read from its channel) and sent
   * the pages in `ranges` (block, first, end triples): the background stream skips them and
   * carries on after them.
   */
  urgentSent(ranges: Float64Array, onChannel: boolean, pages: number, bytes: number): void {
    if (onChannel) {
      this.stats.requests++;
      this.stats.urgentRequests++;
    }
    this.stats.urgentPages += pages;
    this.stats.urgentBytes += bytes;
    for (let k = 0; k < ranges.length; k += 3) {
      const bi = ranges[k]!;
      const first = ranges[k + 1]!;
      const end = ranges[k + 2]!;
      this.blocks[bi]!.dirty.clearRange(first, end);
      this.stats.requestedPages += end - first;
      this.cursorBlock = bi;
      this.cursor = end;
    }
  }

  abort(err: Error): void {
    this.aborted = err;
    this.pauseGate?.resolve();
    this.wake?.();
  }

  /**
   * Postcopy recovery: stop sending until `resume`. Queued requests are dropped (the
   * destination asks again for every page it still waits for once reconnected).
   */
  pause(): void {
    if (this.pauseGate) return;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.pauseGate = { promise, resolve };
    this.queue.length = 0;
    this.inFlight.length = 0;
    this.wake?.();
  }

  /** Carries on over the reconnected channels. */
  resume(ch: Channel): void {
    this.ch = ch;
    const gate = this.pauseGate;
    this.pauseGate = null;
    gate?.resolve();
  }

  /**
   * Postcopy recovery: every page the destination has not received (`bitmap`, one bit a
   * page, set = received) is to be sent again. Returns how many.
   */
  markUnreceived(b: BlockState, bitmap: Buffer): number {
    let n = 0;
    for (let p = 0; p < b.pages; p++) {
      if ((bitmap[p >> 3]! & (1 << (p & 7))) !== 0) continue;
      n++;
      if (!b.dirty.test(p)) b.dirty.setRange(p, p + 1);
    }
    return n;
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
      if (this.pauseGate) {
        await this.pauseGate.promise;
        continue;
      }
      try {
        const r = this.queue.shift();
        if (r) {
          const b = this.blocks[r.block]!;
          this.stats.requestedPages += await this.sendNeeded(b, r.first, r.end);
          this.cursorBlock = r.block;
          this.cursor = r.end;
          continue;
        }
        if (!(await this.sendBackground())) {
          if (this.pauseGate) continue; // paused while the last batch left: it may be lost
          return;
        }
      } catch (e) {
        if (this.aborted) throw this.aborted;
        if (!(e instanceof ChannelClosedError)) throw e;
        // A channel broke: the migration pauses; pages lost with it are found missing on resume.
        this.onLinkError(e);
        this.pause();
      }
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
        await this.sender.sendRange(b, p, q - p, { paced: false });
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
      // Page requests are read in the I/O phase: let it run between two batches.
      await turnEventLoop();
      return true;
    }
    return false;
  }
}
