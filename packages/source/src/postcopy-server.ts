/**
 * postcopy-server.ts — owns the source's side of postcopy after RUN: serving the
 * destination's page requests ahead of a background stream of every page not yet sent.
 *
 * A request is served at the next batch boundary, before any more background pages, and the
 * background scan then continues just after the requested pages (QEMU: spatial locality, the
 * guest is likely to touch the next pages soon). Pages already sent are not sent again: a
 * request for one is for a page still in flight.
 *
 * With a preempt channel, a request is answered at once on that channel, whatever the
 * background stream is doing, and even when the page already left on the main channel: it may
 * sit behind megabytes of bulk data there, and the destination drops whichever copy comes
 * second.
 */
import { MsgType } from '@livemig/protocol';
import { ChannelClosedError, type Channel } from '@livemig/transport';
import { zeroPage, type PageSender } from './page-sender.js';
import { turnEventLoop } from './event-loop.js';
import { PageBitmap } from './page-bitmap.js';
import type { BlockState } from './outgoing.js';

/** Background batch: 1 MiB of 4 KiB pages. */
const BACKGROUND_BATCH = 256;
/**
 * Background batches allowed in user space at once. A request is sent as soon as it
 * arrives but leaves after what is queued here, so this bounds its wait (plus what the
 * kernel holds) while keeping the stream busy.
 */
const BACKGROUND_WINDOW = 2;
/**
 * With a preempt channel, requests never wait behind the background stream's bytes, but they
 * do wait for this thread: it reads them only between two background writes, and one
 * `writev` of a 4 MiB batch holds it for about a millisecond. So the background goes out in
 * 256 KiB batches with many queued (16 MiB, as before), and the event loop turns between two.
 * Measured on the 1 GiB sweep (median of 3): 1024 pages × 4, request p50 427 µs and 1755 ms in
 * all; 128 × 32, 225 µs and 1837 ms; 64 × 64, 138 µs and 1983 ms. Preempt is for latency.
 */
const PREEMPT_BATCH = 64;
const PREEMPT_WINDOW = 64;
/**
 * Prefetch window on the preempt channel, in pages: from 128 KiB after a jump, doubling up to
 * 2 MiB. (Measured on the 1 GiB sweep: none 11 500 requests and 1.19 s blocktime; 32–512
 * pages 7 000 and 0.87 s.)
 */
const PREFETCH_MIN = 32;
const PREFETCH_MAX = 512;
/** Largest PAGE_RUN on the preempt channel, in pages (64 KiB of 4 KiB pages). */
const URGENT_FRAME_PAGES = 16;

interface Request {
  block: number;
  first: number;
  end: number;
}

export class PostcopyServer {
  readonly stats = { requests: 0, requestedPages: 0, backgroundPages: 0, urgentRequests: 0, urgentPages: 0, urgentBytes: 0 };
  readonly blocks: BlockState[];
  private ch: Channel;
  private urgent: Channel | null;
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

  /** Per block: pages sent on the preempt channel. */
  private readonly urgentSent: PageBitmap[];

  /**
   * `onLinkError` is told when sending fails because a channel broke; the migration then
   * pauses (see `pause`), and the stream waits for `resume`.
   */
  constructor(ch: Channel, sender: PageSender, blocks: BlockState[], urgent: Channel | null = null, onLinkError: (e: Error) => void = () => undefined) {
    this.ch = ch;
    this.urgent = urgent;
    this.onLinkError = onLinkError;
    this.urgentSent = urgent ? blocks.map((b) => new PageBitmap(b.pages)) : [];
    this.sender = sender;
    this.blocks = blocks;
    blocks.forEach((b, i) => this.byName.set(b.name, i));
  }

  /**
   * The destination needs [offset, offset+length) of `block` (already validated); `onPreempt`:
   * the request came on the preempt channel.
   */
  request(block: string, offset: number, length: number, onPreempt = false): void {
    const i = this.byName.get(block);
    if (i === undefined) throw new Error(`page request for unknown RAM block "${block}"`);
    const ps = this.blocks[i]!.pageSize;
    const first = offset / ps;
    const end = (offset + length) / ps;
    this.stats.requests++;
    if (this.urgent && !this.urgent.closed && !this.pauseGate) {
      if (onPreempt) this.stats.urgentRequests++;
      // A page already sent on the preempt channel is on its way there, ahead of anything
      // sent now: asking again only means the guest outran it.
      const urgentSent = this.urgentSent[i]!;
      let p = first;
      while (p < end && urgentSent.test(p)) p++;
      if (p < end) this.sendUrgent(i, p, end);
      this.prefetch(i, end);
      return;
    }
    this.queue.push({ block: i, first, end });
    this.wake?.();
  }

  private prefetchWindow = PREFETCH_MIN;
  private lastUrgent = { block: -1, end: 0 };

  /**
   * After an urgent page, the next still-unsent pages go on the preempt channel too, in a
   * window that doubles while the guest's requests keep following each other (a sequential
   * walk: the next fault would be for those pages) and shrinks back on a jump elsewhere. The
   * background stream on the main channel has a deep queue and would bring them too late.
   */
  private prefetch(bi: number, from: number): void {
    const last = this.lastUrgent;
    const sequential = last.block === bi && from > last.end - this.prefetchWindow && from <= last.end + PREFETCH_MAX;
    this.prefetchWindow = sequential ? Math.min(PREFETCH_MAX, this.prefetchWindow * 2) : PREFETCH_MIN;
    const b = this.blocks[bi]!;
    const limit = Math.min(b.pages, from + this.prefetchWindow);
    let p = b.dirty.nextSet(from, limit);
    let end = from;
    while (p >= 0 && p < limit) {
      const q = b.dirty.nextClear(p, limit);
      this.sendUrgent(bi, p, q);
      end = q;
      p = q < limit ? b.dirty.nextSet(q, limit) : -1;
    }
    this.lastUrgent = { block: bi, end: Math.max(end, from) };
  }

  /** Sends pages [first, end) of block `bi` on the preempt channel now, and moves the background scan after them. */
  private sendUrgent(bi: number, first: number, end: number): void {
    const b = this.blocks[bi]!;
    const ps = b.pageSize;
    const zero = zeroPage(ps);
    const ch = this.urgent!;
    ch.cork();
    try {
      let p = first;
      while (p < end) {
        const isZero = !b.populated.test(p) || zero.compare(b.buffer, p * ps, (p + 1) * ps) === 0;
        let q = p + 1;
        while (q < end && (!b.populated.test(q) || zero.compare(b.buffer, q * ps, (q + 1) * ps) === 0) === isZero) q++;
        if (isZero) ch.send({ type: MsgType.ZERO, block: b.name, pageSize: ps, runs: [[p * ps, q - p]] });
        else {
          // Small frames: the destination places a frame once all of it has arrived, and the
          // guest is waiting for the first pages of a prefetch window already.
          for (let a = p; a < q; a += URGENT_FRAME_PAGES) {
            const e = Math.min(q, a + URGENT_FRAME_PAGES);
            ch.send({ type: MsgType.PAGE_RUN, block: b.name, pageSize: ps, offset: a * ps, count: e - a }, b.buffer.subarray(a * ps, e * ps));
          }
          this.stats.urgentBytes += (q - p) * ps;
        }
        this.stats.urgentPages += q - p;
        p = q;
      }
    } finally {
      ch.uncork();
    }
    b.dirty.clearRange(first, end);
    this.urgentSent[bi]!.setRange(first, end);
    this.stats.requestedPages += end - first;
    this.cursorBlock = bi;
    this.cursor = end;
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
  resume(ch: Channel, urgent: Channel | null): void {
    this.ch = ch;
    this.urgent = urgent;
    const gate = this.pauseGate;
    this.pauseGate = null;
    gate?.resolve();
  }

  /**
   * Postcopy recovery: every page the destination has not received (`bitmap`, one bit a
   * page, set = received) is to be sent again. Returns how many.
   */
  markUnreceived(b: BlockState, bitmap: Buffer): number {
    const urgentSent = this.urgentSent[this.byName.get(b.name)!];
    let n = 0;
    for (let p = 0; p < b.pages; p++) {
      if ((bitmap[p >> 3]! & (1 << (p & 7))) !== 0) continue;
      n++;
      if (!b.dirty.test(p)) b.dirty.setRange(p, p + 1);
      if (urgentSent?.test(p)) urgentSent.clearRange(p, p + 1);
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
      const end = b.dirty.nextClear(p, p + (this.urgent ? PREEMPT_BATCH : BACKGROUND_BATCH));
      // Bound the background data queued in user space (see BACKGROUND_WINDOW).
      while (this.inFlight.length >= (this.urgent ? PREEMPT_WINDOW : BACKGROUND_WINDOW)) await this.inFlight.shift();
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
