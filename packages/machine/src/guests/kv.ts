/**
 * guests/kv.ts — owns the `kv` guest: a key-value store whose table and data live only in
 * guest RAM (see kv-table.ts), served over HTTP (PUT/GET/DELETE /kv/<key>) by a server on the
 * main thread. The server never touches RAM: it forwards each request to vCPU 0, which runs it
 * against RAM in its step and posts the reply. While the guest is stopped requests wait in the
 * queue. Idle vCPUs sleep in ≤ 1 ms slices and wake on a request or a stop.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TextEncoder } from 'node:util';
import { defineGuest, type GuestHost, type HostService, type VcpuContext } from '../guest.js';
import { KV_MAX_KEY, KvTable, kvGeometry } from './kv-table.js';

export const KV_BLOCK = 'kv';
export const KV_DEFAULT_RAM = 16 * 1024 * 1024;
export const KV_DEFAULT_MAX_VALUE = 1024 * 1024;
/** Time a serving step may keep taking requests (ms). */
const STEP_BUDGET_MS = 0.05;

export interface KvConfig {
  /** TCP port of the HTTP server (default 0: any free port; see `machine.hostInfo.port`). */
  guestPort?: number;
  /** Address to listen on (default 127.0.0.1). */
  guestHost?: string;
  /** Largest value accepted, in bytes (default 1 MiB). */
  maxValue?: number;
}

/** vCPU device slot: whether the table was formatted (vCPU 0) and requests served. */
export interface KvSlot {
  formatted: boolean;
  served: number;
}

export type KvOp = 'get' | 'put' | 'delete';

/** A request the host posts to vCPU 0. */
export interface KvRequest {
  id: number;
  op: KvOp;
  key: string;
  value?: Uint8Array;
}

/** vCPU 0's reply. */
export interface KvReply {
  id: number;
  status: number;
  value?: Uint8Array;
  error?: string;
}

interface Local {
  table: KvTable | null;
  maxValue: number;
  enc: TextEncoder;
}

function maxValueOf(config: KvConfig): number {
  const m = config.maxValue ?? KV_DEFAULT_MAX_VALUE;
  if (!Number.isSafeInteger(m) || m < 0) throw new RangeError(`kv: maxValue ${m} must be a non-negative integer`);
  return m;
}

/** Runs one request against the table (vCPU side). */
export function serveKv(table: KvTable, req: KvRequest, enc: TextEncoder, maxValue: number): KvReply {
  const key = enc.encode(req.key);
  if (key.length === 0 || key.length > KV_MAX_KEY) return { id: req.id, status: 400, error: `key must be 1..${KV_MAX_KEY} bytes` };
  switch (req.op) {
    case 'get': {
      const value = table.get(key);
      return value ? { id: req.id, status: 200, value } : { id: req.id, status: 404 };
    }
    case 'put': {
      const value = req.value ?? new Uint8Array(0);
      if (value.length > maxValue) return { id: req.id, status: 413, error: `value larger than ${maxValue} bytes` };
      const r = table.put(key, value);
      return { id: req.id, status: r === 'created' ? 201 : r === 'replaced' ? 204 : 507, ...(r === 'full' ? { error: 'guest RAM full' } : {}) };
    }
    case 'delete':
      return { id: req.id, status: table.delete(key) ? 204 : 404 };
    default:
      return { id: req.id, status: 400, error: `unknown op ${String((req as { op: unknown }).op)}` };
  }
}

async function startHttp(h: GuestHost): Promise<HostService> {
  const config = h.config as KvConfig;
  const maxValue = maxValueOf(config);
  const pending = new Map<number, ServerResponse>();
  let nextId = 1;

  const off = h.onVcpuMessage((_index, message) => {
    const reply = message as KvReply;
    const res = pending.get(reply.id);
    if (!res) return;
    pending.delete(reply.id);
    if (reply.value) {
      res.writeHead(reply.status, { 'content-type': 'application/octet-stream', 'content-length': reply.value.length });
      res.end(reply.value);
    } else {
      res.writeHead(reply.status, reply.error ? { 'content-type': 'text/plain' } : {});
      res.end(reply.error ?? undefined);
    }
  });

  const forward = (res: ServerResponse, req: Omit<KvRequest, 'id'>) => {
    const id = nextId++;
    pending.set(id, res);
    res.on('close', () => pending.delete(id));
    h.postToVcpu(0, { id, ...req }, req.value ? [req.value.buffer as ArrayBuffer] : undefined);
  };

  const fail = (res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': 'text/plain', ...headers });
    res.end(text);
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (!path.startsWith('/kv/')) return fail(res, 404, 'not found: use /kv/<key>');
    let key: string;
    try {
      key = decodeURIComponent(path.slice(4));
    } catch {
      return fail(res, 400, 'bad key encoding');
    }
    if (key.length === 0) return fail(res, 400, 'empty key');
    switch (req.method) {
      case 'GET':
        return forward(res, { op: 'get', key });
      case 'DELETE':
        return forward(res, { op: 'delete', key });
      case 'PUT': {
        const chunks: Buffer[] = [];
        let size = 0;
        let tooBig = false;
        req.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxValue) tooBig = true;
          else chunks.push(c);
        });
        req.on('end', () => {
          if (tooBig) return fail(res, 413, `value larger than ${maxValue} bytes`);
          const value = new Uint8Array(size);
          let at = 0;
          for (const c of chunks) {
            value.set(c, at);
            at += c.length;
          }
          forward(res, { op: 'put', key, value });
        });
        return;
      }
      default:
        return fail(res, 405, 'method not allowed', { allow: 'GET, PUT, DELETE' });
    }
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.guestPort ?? 0, config.guestHost ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    info: { port: addr.port, url: `http://${host}:${addr.port}` },
    close: () => new Promise<void>((resolve) => {
      off();
      for (const res of pending.values()) if (!res.headersSent) fail(res, 503, 'guest shut down');
      pending.clear();
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

export default defineGuest<KvConfig, KvSlot>({
  kind: 'kv',

  layout(config, { ram }) {
    const length = ram ?? KV_DEFAULT_RAM;
    kvGeometry(length);
    maxValueOf(config);
    return [{ name: KV_BLOCK, length }];
  },

  vcpu: {
    init(ctx: VcpuContext<KvConfig, KvSlot, Local>) {
      const mem = ctx.blocks[KV_BLOCK];
      if (!mem) throw new Error(`kv: no block ${KV_BLOCK}`);
      ctx.local = { table: ctx.index === 0 ? new KvTable(mem) : null, maxValue: maxValueOf(ctx.config), enc: new TextEncoder() };
      if (ctx.fresh) {
        // Only a fresh boot writes RAM here; a resume must not touch it (pages may be missing).
        if (ctx.index === 0) ctx.local.table!.format();
        ctx.device = { formatted: ctx.index === 0, served: 0 };
      }
    },

    step(ctx: VcpuContext<KvConfig, KvSlot, Local>) {
      const { table, enc, maxValue } = ctx.local;
      if (!table) {
        ctx.idle(1);
        return;
      }
      const t0 = performance.now();
      let handled = 0;
      for (;;) {
        const req = ctx.receive() as KvRequest | undefined;
        if (req === undefined) break;
        const reply = serveKv(table, req, enc, maxValue);
        ctx.send(reply, reply.value ? [reply.value.buffer as ArrayBuffer] : undefined);
        handled++;
        if (performance.now() - t0 >= STEP_BUDGET_MS) break;
      }
      ctx.device.served += handled;
      if (handled === 0) ctx.idle(1);
    },
  },

  verify(ctx) {
    const mem = ctx.blocks[KV_BLOCK];
    if (!mem) throw new Error(`kv: no block ${KV_BLOCK}`);
    const table = new KvTable(mem);
    const formatted = ctx.device?.[0]?.formatted ?? false;
    if (!formatted && !table.formatted) {
      return { checked: true, pages: 1, bad: 0, detail: 'unformatted (never booted)' };
    }
    const r = table.check();
    return {
      checked: true,
      pages: Math.ceil(r.used / 4096),
      bad: r.problems,
      ...(r.first ? { firstBad: { block: KV_BLOCK, ...r.first } } : {}),
      detail: `${r.entries} entries`,
    };
  },

  host: startHttp,
});
