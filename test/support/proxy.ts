/**
 * proxy.ts — test support: a TCP proxy between `migrate send` and `migrate recv` that can
 * inject faults: refuse chosen connections (closed at once, nothing forwarded) and cut every
 * live connection on demand.
 */
import net from 'node:net';

export interface ProxyOptions {
  /** Where connections are forwarded, `HOST:PORT`. */
  target: string;
  /** Decides per connection (0 = the first) whether it is forwarded; default: all are. */
  accept?: (index: number) => boolean;
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
    server.on('connection', (client) => {
      const index = proxy.connections++;
      client.on('error', () => undefined);
      if (opts.accept && !opts.accept(index)) {
        client.destroy();
        return;
      }
      const upstream = net.connect(port, host);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      for (const s of [client, upstream]) {
        proxy.live.add(s);
        s.once('close', () => proxy.live.delete(s));
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
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

  close(): void {
    this.cut();
    this.server.close();
  }
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
}
