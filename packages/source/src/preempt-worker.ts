/**
 * preempt-worker.ts — the source's preempt thread (a worker). It dials the preempt channel
 * (hello, TLS) itself, reads the destination's page requests from it and answers each at once
 * from guest RAM (urgent-pages.ts), whatever the main thread is doing: the main thread keeps
 * the background stream busy and would read a request only between two of its batches
 * (measured on postcopy-random-preempt: a request waited ~400 µs there at the median). It
 * tells the main thread which pages it sent, so the background stream skips them and carries
 * on after them.
 *
 * Messages are typed in preempt-messages.ts; the main thread's side is preempt-thread.ts.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { BlockTable, MsgType, type Frame, type ReqPagesMessage } from '@livemig/protocol';
import { connectChannel, startKeepalive, type Channel } from '@livemig/transport';
import { viewAt, promptScheduling } from '@livemig/uffd';
import { UrgentPages, type UrgentBlock } from './urgent-pages.js';
import type { PreemptIn, PreemptOut, PreemptWorkerData, ServeBlock } from './preempt-messages.js';

function post(m: PreemptOut): void {
  parentPort!.postMessage(m);
}

class PreemptWorker {
  private ch: Channel | null = null;
  /** Id of the connection `ch` came from (the main thread ignores news of older ones). */
  private conn = 0;
  private blocks: UrgentBlock[] | null = null;
  private table: BlockTable | null = null;
  private byName = new Map<string, number>();
  private pages: UrgentPages | null = null;
  /** PINGs the main thread asked for, by id: the connection each went on. */
  private readonly pings = new Map<number, number>();

  onMessage(m: PreemptIn): void {
    switch (m.type) {
      case 'connect':
        void this.connect(m);
        return;
      case 'serve':
        this.serveBlocks(m.blocks);
        return;
      case 'request':
        this.request(m.block, m.first, m.end, false);
        return;
      case 'ping':
        if (!this.ch || this.ch.closed) post({ type: 'pong', id: m.id, error: 'the preempt channel is closed' });
        else {
          this.pings.set(m.id, this.conn);
          this.ch.send({ type: MsgType.PING, id: m.id });
        }
        return;
      case 'drop':
        this.drop(m.reason);
        return;
    }
  }

  private async connect(m: Extract<PreemptIn, { type: 'connect' }>): Promise<void> {
    if (!this.blocks) {
      post({ type: 'connect-failed', id: m.id, message: 'the preempt thread was asked to connect before it had the blocks' });
      return;
    }
    this.drop();
    let ch: Channel;
    try {
      ch = await connectChannel({ endpoint: m.endpoint, role: 'preempt', uuid: m.uuid, timeoutMs: m.timeoutMs, ...(m.tls ? { tls: m.tls } : {}) });
    } catch (e) {
      post({ type: 'connect-failed', id: m.id, message: (e as Error).message });
      return;
    }
    if (m.id < this.conn) {
      ch.close();
      post({ type: 'connect-failed', id: m.id, message: 'superseded by a later connection while dialling' });
      return;
    }
    this.ch = ch;
    this.conn = m.id;
    // Anything sent on an earlier connection may be lost with it: nothing is in flight here.
    this.pages = new UrgentPages(this.blocks!, ch);
    ch.setHandler((f) => this.onFrame(f));
    const conn = m.id;
    void ch.whenClosed().then((err) => {
      // The main thread fails its PINGs on this connection when told it closed.
      for (const [id, c] of this.pings) if (c === conn) this.pings.delete(id);
      post({ type: 'closed', conn, message: err?.message ?? `${ch.info.label}: closed by the destination` });
    });
    startKeepalive(ch, { timeoutMs: m.keepaliveTimeoutMs });
    post({ type: 'connected', id: m.id, label: ch.info.label });
  }

  private drop(reason?: { message: string; code?: string }): void {
    const ch = this.ch;
    this.ch = null;
    this.pages = null;
    if (!ch || ch.closed) return;
    ch.close(reason ? Object.assign(new Error(reason.message), reason.code ? { code: reason.code } : {}) : undefined);
  }

  private serveBlocks(blocks: ServeBlock[]): void {
    if (this.blocks) throw new Error('serve came twice');
    this.blocks = blocks.map((b) => ({
      name: b.name,
      pageSize: b.pageSize,
      pages: b.pages,
      buffer: Buffer.from(viewAt(b.addr, b.pages * b.pageSize)),
      populated: new Uint8Array(b.populated),
      dirty: new Uint8Array(b.dirty),
    }));
    this.table = new BlockTable(blocks.map((b) => ({ name: b.name, length: b.pages * b.pageSize, pageSize: b.pageSize })));
    blocks.forEach((b, i) => this.byName.set(b.name, i));
  }

  private onFrame(f: Frame): void {
    const m = f.msg;
    switch (m.type) {
      case MsgType.REQ_PAGES:
        this.onRequestFrame(m);
        return;
      case MsgType.PING:
        this.ch?.send({ type: MsgType.PONG, id: m.id });
        return;
      case MsgType.PONG: {
        if (!this.pings.delete(m.id)) return; // keepalive's
        post({ type: 'pong', id: m.id });
        return;
      }
      case MsgType.ERROR:
        throw new Error(`the destination closed the preempt channel: ${m.reason}`);
      default:
        throw new Error(`unexpected message type ${m.type} on the preempt channel`);
    }
  }

  /** A request read from the channel: validated here (the main thread never sees it). */
  private onRequestFrame(m: ReqPagesMessage): void {
    this.table!.checkMessage(m);
    const bi = this.byName.get(m.block)!;
    const ps = this.blocks![bi]!.pageSize;
    this.request(bi, m.offset / ps, (m.offset + m.length) / ps, true);
  }

  private request(bi: number, first: number, end: number, onChannel: boolean): void {
    const ranges: number[] = [];
    const before = this.pages ? { ...this.pages.stats } : { pages: 0, bytes: 0 };
    this.pages?.serve(bi, first, end, (b, p, q) => ranges.push(b, p, q));
    const after = this.pages?.stats ?? before;
    post({
      type: 'sent',
      conn: this.conn,
      onChannel,
      ranges: Float64Array.from(ranges),
      pages: after.pages - before.pages,
      bytes: after.bytes - before.bytes,
    });
  }
}

if (!isMainThread) {
  // Woken by a request while both CPUs run bulk work: ask to run at once (realtime if the
  // user chose it and the kernel allows, else a short EEVDF slice), not at the end of another
  // thread's slice.
  post({ type: 'scheduling', scheduling: promptScheduling((workerData as PreemptWorkerData).realtime) });
  const w = new PreemptWorker();
  parentPort!.on('message', (m: PreemptIn) => {
    try {
      w.onMessage(m);
    } catch (e) {
      post({ type: 'error', message: (e as Error).message });
    }
  });
}
