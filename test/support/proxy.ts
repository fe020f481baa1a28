/**
 * proxy.ts — test support: a TCP proxy between `migrate send` and `migrate recv` that injects
 * faults: refuse chosen connections (closed at once, nothing forwarded), cut a chosen
 * connection after some bytes (a broken handshake), cut every live connection on demand, or
 * freeze them (stop forwarding without closing: a silent dead link), or hold a connection back
 * while the test does something first (`beforeForward`).
 */
import net from 'node:net';

export interface ProxyOptions {
  /** Where connections are forwarded, `HOST:PORT`. */
  target: string;
  /** Decides per connection (0 = the first) whether it is forwarded; default: all are. */
  accept?: (index: number) => boolean;
  /** Per connection: cut it after forwarding this many bytes from the dialler (undefined: never). */
  cutAfter?: (index: number) => number | undefined;
  /** Per connection: awaited before it is forwarded (the dialler's bytes wait meanwhile). */
  beforeForward?: (index: number) => Promise<void> | void;
}

export class FaultProxy {
  private readonly server: net.Server;
  private readonly live = new Set<net.Socket>();
  /** Connections seen so far (forwarded or refused). */
  connections = 0;

  private constructor(server: net.Server) {
    this.server = server;
  }

  static async start(opts: ProxyOptions): Promise<FaultProxy> {
    const [host, port] = splitHostPort(opts.target);
    const server = net.createServer({ pauseOnConnect: true });
    const proxy = new FaultProxy(server);
    server.on('connection', async (client) => {
      const index = proxy.connections++;
      client.on('error', () => undefined);
      if (opts.accept && !opts.accept(index)) {
        client.destroy();
        return;
      }
      await opts.beforeForward?.(index);
      if (client.destroyed) return;
      const upstream = net.connect(port, host);
      // A link, not a buffer: forward each write as it comes, as both ends' own sockets do
      // (with Nagle on, a small write waits here for the peer's delayed ACK, ~40 ms).
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      for (const s of [client, upstream]) {
        proxy.live.add(s);
        s.once('close', () => proxy.live.delete(s));
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      const limit = opts.cutAfter?.(index);
      if (limit === undefined) {
        client.pipe(upstream);
      } else {
        let passed = 0;
        client.on('data', (chunk: Buffer) => {
          const room = limit - passed;
          if (room > 0) upstream.write(chunk.subarray(0, room));
          passed += chunk.length;
          if (passed >= limit) setTimeout(() => (client.destroy(), upstream.destroy()), 20);
        });
      }
      upstream.pipe(client);
      client.resume();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  /** `HOST:PORT` to dial instead of the target. */
  get address(): string {
    const a = this.server.address() as net.AddressInfo;
    return `127.0.0.1:${a.port}`;
  }

  /** Cuts every live connection (both directions, at once). */
  cut(): void {
    for (const s of this.live) s.destroy();
  }

  /**
   * Stops forwarding on every live connection without closing anything, as a dead network
   * path would: bytes in flight are dropped, neither end hears a reset.
   */
  freeze(): void {
    for (const s of this.live) {
      s.unpipe();
      s.removeAllListeners('data');
      s.on('data', () => undefined);
    }
  }

  close(): void {
    this.cut();
    this.server.close();
  }
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
}
