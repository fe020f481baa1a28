/**
 * qmp.ts — test support: a tiny client for the control socket of `migrate send|recv
 * --control PATH` (JSON lines, QMP style). It reads the greeting, matches replies to requests
 * by id, and keeps every event it receives.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrateProcess } from './procs.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, any>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpReply {
  return?: any;
  error?: { class: string; desc: string };
  id?: unknown;
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  greeting: Record<string, any> | null = null;
  private readonly socket: net.Socket;
  private buf = '';
  private nextId = 1;
  private readonly waiting = new Map<unknown, (r: QmpReply) => void>();
  private eventListeners: Array<() => void> = [];
  private greeted!: Promise<void>;
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.greeted = new Promise((resolve) => {
      this.onGreeting = resolve;
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setEncoding('utf8');
    socket.on('data', (s: string) => {
      this.buf += s;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.onLine(JSON.parse(line) as Record<string, any>);
      }
    });
    socket.on('error', () => undefined);
  }

  private onGreeting: () => void = () => undefined;

  /** Waits for `p` (migrate send/recv --control PATH) to announce its control socket, then connects to it. */
  static async forProcess(p: MigrateProcess, path: string): Promise<QmpClient> {
    await p.waitStderr(/control socket on (\S+)/);
    return QmpClient.connect(path);
  }

  /** Connects to `path`, retrying until the socket is there (up to `timeoutMs`), and waits for the greeting. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const c = new QmpClient(socket);
        await c.greeted;
        return c;
      } catch (e) {
        if (Date.now() > until) throw new Error(`cannot connect to the control socket ${path}: ${(e as Error).message}`);
        await sleep(20);
      }
    }
  }

  private onLine(msg: Record<string, any>): void {
    if (msg.QMP) {
      this.greeting = msg;
      this.onGreeting();
    } else if (typeof msg.event === 'string') {
      this.events.push(msg as QmpEvent);
      for (const l of this.eventListeners) l();
    } else {
      const w = this.waiting.get(msg.id);
      if (w) {
        this.waiting.delete(msg.id);
        w(msg as QmpReply);
      }
    }
  }

  /** Runs `command` and resolves with its reply (`return` or `error`). */
  execute(command: string, args?: Record<string, unknown>): Promise<QmpReply> {
    const id = this.nextId++;
    const p = new Promise<QmpReply>((resolve) => this.waiting.set(id, resolve));
    this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    return p;
  }

  /** Runs `command` and resolves with its `return`; rejects on an error reply. */
  async ok(command: string, args?: Record<string, unknown>): Promise<any> {
    const r = await this.execute(command, args);
    if (r.error) throw new Error(`${command}: ${r.error.class}: ${r.error.desc}`);
    return r.return;
  }

  /** Resolves with the first event (already received or to come) that `pred` accepts. */
  waitEvent(pred: (e: QmpEvent) => boolean, timeoutMs = 20_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const e = this.events.find(pred);
        if (!e) return false;
        cleanup();
        resolve(e);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no matching event within ${timeoutMs} ms; events: ${JSON.stringify(this.events)}`));
      }, timeoutMs);
      const listener = (): void => void check();
      const cleanup = (): void => {
        clearTimeout(timer);
        this.eventListeners = this.eventListeners.filter((l) => l !== listener);
      };
      if (check()) return;
      this.eventListeners.push(listener);
    });
  }

  /** Polls `query-migrate` until `pred` accepts its return. */
  async waitStatus(pred: (r: Record<string, any>) => boolean, timeoutMs = 20_000): Promise<Record<string, any>> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = (await this.ok('query-migrate')) as Record<string, any>;
      if (pred(r)) return r;
      if (Date.now() > until) throw new Error(`query-migrate never matched; last: ${JSON.stringify(r)}`);
      await sleep(50);
    }
  }

  /** The statuses of the MIGRATION events received so far, in order. */
  statuses(): string[] {
    return this.events.filter((e) => e.event === 'MIGRATION').map((e) => String(e.data?.status));
  }

  close(): void {
    this.socket.destroy();
  }
}
