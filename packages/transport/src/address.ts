/**
 * address.ts — owns parsing of `HOST:PORT` endpoints (`127.0.0.1:4444`, `[::1]:4444`,
 * `localhost:0`) into a typed address, with errors that quote what was given.
 */
export interface Endpoint {
  host: string;
  port: number;
}

export function parseEndpoint(text: string): Endpoint {
  const m = /^\[([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\]:(\d+)$/.exec(text) ?? /^([^:\s[\]]+):(\d+)$/.exec(text);
  if (!m) throw new Error(`bad address "${text}": expected HOST:PORT (for IPv6, [ADDR]:PORT)`);
  const port = Number(m[2]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad port in "${text}": ${m[2]} is not 0..65535`);
  return { host: m[1]!, port };
}

export function formatEndpoint(e: Endpoint): string {
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
