/**
 * preempt-channel.ts — owns the destination's end of the preempt channel, on the fault thread
 * (QEMU's postcopy preempt): the second connection from the source that carries only urgent
 * pages, so a page a vCPU waits for never queues behind the bulk stream on the main channel.
 *
 * The fault thread takes the connection over from the main thread (a duplicate of the socket's
 * descriptor), runs the handshake (hello, TLS) itself, sends each new page request on it
 * straight from the fault it read, and places the pages that come back with UFFDIO_COPY as
 * soon as they arrive — while the main thread may still be placing a large bulk batch. The
 * same page may also arrive on the main channel: whichever placement comes second finds it
 * present (EEXIST) and drops it; the page-state array, changed atomically, counts it once.
 *
 * It never touches guest RAM itself: pages go in by ioctl from its own receive buffer.
 */
import net from 'node:net';
import { BlockTable, MsgType, forEachPageRun, type Frame } from '@livemig/protocol';
import { acceptChannel, startKeepalive, type AcceptOptions, type Channel } from '@livemig/transport';
import { bufferAddress, type Userfaultfd } from '@livemig/uffd';
import { copyPages, mapZeroPages } from './page-placer.js';
import type { PreemptStats } from './fault-messages.js';

const PRESENT = 1;
const REQUESTED = 2;
const ZERO = 3;

export interface PreemptBlock {
  name: string;
  addr: number;
  length: number;
  pageSize: number;
  states: Uint8Array;
}

export interface PreemptEvents {
  /** A requested page was placed from the preempt channel at `tUs`. */
  placed(block: number, page: number, tUs: number): void;
  /** The channel closed (peer gone, bad frame) before `close()`. */
  closed(err: Error): void;
}

export class PreemptEndpoint {
  readonly stats: PreemptStats = { requests: 0, pages: 0, bytes: 0, placed: 0 };
  private readonly uffd: Userfaultfd;
  private readonly blocks: PreemptBlock[];
  private readonly byName = new Map<string, number>();
  private readonly table: BlockTable;
  private readonly received: Int32Array;
  private readonly events: PreemptEvents;
  private readonly bounce: Buffer;
  private ch: Channel | null = null;
  private closing = false;
  /** Bumped by every close: a handshake that finishes after one is stale. */
  private generation = 0;
  /** Candidates still shaking hands: close() ends them (a silent one would wait for its timeout). */
  private readonly handshaking = new Set<net.Socket>();

  constructor(uffd: Userfaultfd, blocks: PreemptBlock[], received: Int32Array, events: PreemptEvents) {
    this.uffd = uffd;
    this.blocks = blocks;
    blocks.forEach((b, i) => this.byName.set(b.name, i));
    this.table = new BlockTable(blocks.map((b) => ({ name: b.name, length: b.length, pageSize: b.pageSize })));
    this.received = received;
    this.events = events;
    this.bounce = Buffer.alloc(Math.max(...blocks.map((b) => b.pageSize)));
  }

  /** True once the handshake is done: requests go on this channel from then on. */
  get ready(): boolean {
    return this.ch !== null && !this.ch.closed;
  }

  /**
   * Takes over a preempt candidate whose descriptor is `fd` (a duplicate owned by this
   * thread), runs the handshake and starts reading. Several may shake hands at once: the first
   * to succeed becomes the channel, and a later one is closed and refused while it is up.
   * Resolves with the channel's label.
   */
  async attach(fd: number, uuid: string, accept: Omit<AcceptOptions, 'roles' | 'uuid'> & { keepaliveTimeoutMs?: number }): Promise<string> {
    const socket = new net.Socket({ fd, readable: true, writable: true });
    const { keepaliveTimeoutMs, ...opts } = accept;
    const generation = this.generation;
    this.handshaking.add(socket);
    let channel: Channel;
    try {
      ({ channel } = await acceptChannel(socket, { ...opts, roles: ['preempt'], uuid }));
    } finally {
      this.handshaking.delete(socket);
    }
    if (generation !== this.generation) {
      // close() (a pause, the end) came during the handshake.
      channel.close();
      throw new Error('the preempt channel was dropped during its handshake');
    }
    if (this.ch && !this.ch.closed) {
      channel.close();
      throw new Error(`${channel.info.label}: a preempt channel is already up`);
    }
    // A channel dropped before (postcopy recovery) is replaced.
    this.ch = channel;
    this.closing = false;
    channel.setHandler((f) => this.onFrame(f));
    void channel.whenClosed().then((err) => {
      if (!this.closing && this.ch === channel) this.events.closed(err ?? new Error(`${channel.info.label}: closed`));
    });
    startKeepalive(channel, { timeoutMs: keepaliveTimeoutMs });
    return channel.info.label;
  }

  /** Asks the source for one page of block `bi` on this channel. */
  request(bi: number, page: number): void {
    const b = this.blocks[bi]!;
    this.stats.requests++;
    this.ch!.send({ type: MsgType.REQ_PAGES, block: b.name, offset: page * b.pageSize, length: b.pageSize });
  }

  /** Closes the channel (the migration is over, or failing, or pausing); a handshake under way is dropped. */
  close(): void {
    this.generation++;
    this.closing = true;
    this.ch?.close();
    for (const s of this.handshaking) s.destroy();
  }

  private onFrame(f: Frame): void {
    const m = f.msg;
    switch (m.type) {
      case MsgType.PAGE_RUN: {
        this.table.checkMessage(m);
        const bi = this.blockIndex(m.block);
        const b = this.blocks[bi]!;
        const first = m.offset / b.pageSize;
        this.stats.pages += m.count;
        this.stats.bytes += m.count * b.pageSize;
        forEachPageRun(f.payload, b.pageSize, this.bounce.subarray(0, b.pageSize), (src, idx, n) => this.placeData(bi, first + idx, n, src));
        return;
      }
      case MsgType.PAGES: {
        this.table.checkMessage(m);
        const bi = this.blockIndex(m.block);
        const b = this.blocks[bi]!;
        const offs = m.offsets;
        this.stats.pages += offs.length;
        this.stats.bytes += offs.length * b.pageSize;
        forEachPageRun(f.payload, b.pageSize, this.bounce.subarray(0, b.pageSize), (src, idx, n) => {
          for (let i = 0; i < n; i++) this.placeData(bi, offs[idx + i]! / b.pageSize, 1, src, i * b.pageSize);
        });
        return;
      }
      case MsgType.ZERO: {
        this.table.checkMessage(m);
        const bi = this.blockIndex(m.block);
        const b = this.blocks[bi]!;
        for (const [offset, count] of m.runs) {
          this.stats.pages += count;
          const first = offset / b.pageSize;
          forEachNotPresentRun(b.states, first, first + count, (p, q) => {
            mapZeroPages(this.uffd, b.name, b.addr, b.pageSize, p, q);
            this.markPresent(bi, p, q);
          });
        }
        return;
      }
      case MsgType.PING:
        // The source waits for this before END: every urgent page sent before it is placed.
        this.ch!.send({ type: MsgType.PONG, id: m.id });
        return;
      case MsgType.PONG:
        return;
      case MsgType.ERROR:
        throw new Error(`the source closed the preempt channel: ${m.reason}`);
      default:
        throw new Error(`unexpected message type ${m.type} on the preempt channel`);
    }
  }

  private blockIndex(name: string): number {
    const i = this.byName.get(name);
    if (i === undefined) throw new Error(`unknown RAM block "${name}" on the preempt channel`);
    return i;
  }

  /** Places the pages [first, first + count) not present yet from `src`, starting `srcOff` bytes in. */
  private placeData(bi: number, first: number, count: number, src: Buffer, srcOff = 0): void {
    const b = this.blocks[bi]!;
    const ps = b.pageSize;
    const base = bufferAddress(src) + srcOff;
    forEachNotPresentRun(b.states, first, first + count, (p, q) => {
      copyPages(this.uffd, b.name, b.addr, ps, p, q, base + (p - first) * ps);
      this.markPresent(bi, p, q);
    });
  }

  private markPresent(bi: number, first: number, end: number): void {
    const b = this.blocks[bi]!;
    let fresh = 0;
    let t = 0;
    for (let p = first; p < end; p++) {
      const s = Atomics.exchange(b.states, p, PRESENT);
      if (s === PRESENT) continue;
      this.stats.placed++;
      if (s !== ZERO) fresh++;
      if (s === REQUESTED) {
        if (t === 0) t = Number(process.hrtime.bigint() / 1000n);
        this.events.placed(bi, p, t);
      }
    }
    if (fresh > 0) Atomics.add(this.received, 0, fresh);
  }
}

/** Calls `cb(p, q)` for each run [p, q) of pages in [first, end) not present (read atomically). */
function forEachNotPresentRun(states: Uint8Array, first: number, end: number, cb: (p: number, q: number) => void): void {
  let p = first;
  while (p < end) {
    while (p < end && Atomics.load(states, p) === PRESENT) p++;
    let q = p;
    while (q < end && Atomics.load(states, q) !== PRESENT) q++;
    if (q > p) cb(p, q);
    p = q;
  }
}
