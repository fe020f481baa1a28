/**
 * control.ts — owns the control socket's generic core (`--control PATH`): a Unix-socket server
 * speaking JSON lines in the style of QEMU's QMP. It knows nothing about migrations: it greets
 * each client, parses requests, dispatches them to the handlers it was given, answers with
 * `return` or `error` (echoing `id`), and pushes events to every connected client. The commands
 * of `migrate send` and `migrate recv` live in control-commands.ts.
 *
 * Wire format (one JSON value per line, `\n`-terminated, UTF-8):
 *   greeting  {"QMP": {"version": {"livemig": "0.1.0"}, "capabilities": []}}
 *   request   {"execute": "query-migrate", "arguments": {...}, "id": 1}     (arguments, id optional)
 *   reply     {"return": {...}, "id": 1}
 *   error     {"error": {"class": "GenericError" | "CommandNotFound", "desc": "why"}, "id": 1}
 *   event     {"event": "MIGRATION", "data": {...}, "timestamp": {"seconds": s, "microseconds": us}}
 *
 * A bad request never ends the connection, except a line longer than 1 MiB (error, then
 * close). Requests on one connection are answered in order, one at a time, like QMP.
 * The socket file is created with mode 0600, a stale socket file is replaced, anything
 * else at the path is refused, and the file is removed on close().
 */
import fs from 'node:fs';
import net from 'node:net';

/** A command: gets the request's `arguments` (an object, `{}` when absent); its result is the `return`. */
export type CommandHandler = (args: Record<string, unknown>) => unknown | Promise<unknown>;

export type ErrorClass = 'GenericError' | 'CommandNotFound';

/** Thrown by a handler to choose the error class (any other error is a GenericError). */
export class CommandError extends Error {
  readonly errorClass: ErrorClass;

  constructor(message: string, errorClass: ErrorClass = 'GenericError') {
    super(message);
    this.name = 'CommandError';
    this.errorClass = errorClass;
  }
}

/** Longest request line accepted, in bytes: a longer one gets an error and the connection is closed. */
export const MAX_LINE_BYTES = 1024 * 1024;
/** A client that leaves this much unread (events it never reads) is disconnected. */
const MAX_UNREAD_BYTES = 16 * 1024 * 1024;
/** On close(), clients get this long to take their last events before they are cut off. */
const CLOSE_GRACE_MS = 500;

/** The version of @livemig/cli, for the greeting. */
export const CLI_VERSION: string = readVersion();

function readVersion(): string {
  try {
    // ../package.json from both src/ (tests) and dist/ (the built CLI).
    const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

interface Client {
  socket: net.Socket;
  /** The request being handled: the next one waits for it (answers stay in order). */
  queue: Promise<void>;
}

export class ControlServer {
  private readonly handlers: Map<string, CommandHandler>;
  private readonly clients = new Set<Client>();
  private server: net.Server | null = null;
  private path: string | null = null;
  /** The socket file's inode, so close() removes only the file this server created. */
  private ino: number | null = null;
  private closing: Promise<void> | null = null;
  private readonly onExit = (): void => this.unlinkOwn();

  constructor(handlers: Record<string, CommandHandler>) {
    this.handlers = new Map(Object.entries(handlers));
    // QMP clients negotiate capabilities first; there are none to negotiate.
    if (!this.handlers.has('qmp_capabilities')) this.handlers.set('qmp_capabilities', () => ({}));
    if (!this.handlers.has('query-commands')) {
      this.handlers.set('query-commands', () => [...this.handlers.keys()].sort().map((name) => ({ name })));
    }
  }

  /** Number of connected clients. */
  get clientCount(): number {
    return this.clients.size;
  }

  /**
   * Listens on the Unix socket `path` (mode 0600). A stale socket file there is replaced; a
   * socket some process still answers on, or a file that is not a socket, is refused.
   */
  async listen(path: string): Promise<void> {
    if (this.server) throw new Error('the control socket is already listening');
    await clearStaleSocket(path);
    const server = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`control socket ${path}: ${e.code ?? e.message}`)));
      // The socket file is created by bind() inside listen(), synchronously: a umask set
      // around the call makes it 0600 from the start, with no window where others could connect.
      const old = process.umask(0o177);
      try {
        server.listen(path, () => resolve());
      } finally {
        process.umask(old);
      }
    });
    server.on('error', () => undefined); // after listening, errors belong to connections
    fs.chmodSync(path, 0o600);
    this.ino = fs.lstatSync(path).ino;
    this.server = server;
    this.path = path;
    process.once('exit', this.onExit);
  }

  /** Sends an event to every connected client. */
  emit(event: string, data?: Record<string, unknown>): void {
    const t = performance.timeOrigin + performance.now();
    const seconds = Math.floor(t / 1000);
    const microseconds = Math.min(999_999, Math.floor((t - seconds * 1000) * 1000));
    const msg = { event, ...(data !== undefined ? { data } : {}), timestamp: { seconds, microseconds } };
    for (const c of this.clients) this.send(c, msg);
  }

  /**
   * Stops listening, lets clients take what was already sent to them (briefly), disconnects
   * them and removes the socket file.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const c of this.clients) c.socket.end();
    const cut = setTimeout(() => {
      for (const c of this.clients) c.socket.destroy();
    }, CLOSE_GRACE_MS);
    await closed;
    clearTimeout(cut);
    this.unlinkOwn();
    process.off('exit', this.onExit);
  }

  /** Removes the socket file if it is still the one this server created. */
  private unlinkOwn(): void {
    if (!this.path || this.ino === null) return;
    try {
      const st = fs.lstatSync(this.path);
      if (st.isSocket() && st.ino === this.ino) fs.unlinkSync(this.path);
    } catch {
      // already gone
    }
  }

  private accept(socket: net.Socket): void {
    const client: Client = { socket, queue: Promise.resolve() };
    this.clients.add(client);
    socket.on('error', () => undefined);
    socket.once('close', () => this.clients.delete(client));
    this.send(client, { QMP: { version: { livemig: CLI_VERSION }, capabilities: [] } });
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const tooLong = (): void => {
      pending = [];
      this.send(client, errorReply('GenericError', `request line longer than ${MAX_LINE_BYTES} bytes: closing the connection`));
      socket.removeAllListeners('data');
      socket.end();
    };
    socket.on('data', (chunk: Buffer) => {
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const part = chunk.subarray(start, nl);
        if (pendingBytes + part.length > MAX_LINE_BYTES) return tooLong();
        const line = pendingBytes > 0 ? Buffer.concat([...pending, part]) : part;
        pending = [];
        pendingBytes = 0;
        const text = line.toString('utf8');
        client.queue = client.queue.then(() => this.request(client, text)).catch(() => undefined);
        start = nl + 1;
      }
      if (start < chunk.length) {
        const rest = chunk.subarray(start);
        if (pendingBytes + rest.length > MAX_LINE_BYTES) return tooLong();
        pending.push(rest);
        pendingBytes += rest.length;
      }
    });
  }

  /** Handles one request line; never throws. */
  private async request(client: Client, line: string): Promise<void> {
    if (line.trim() === '') return;
    const reply = await this.execute(line);
    try {
      this.send(client, reply);
    } catch (e) {
      // A reply that cannot be encoded (an `id` nested too deep for JSON.stringify, say):
      // answer without the echo rather than let the error escape.
      this.send(client, errorReply('GenericError', `the reply could not be encoded: ${(e as Error).message}`));
    }
  }

  private async execute(line: string): Promise<Record<string, unknown>> {
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch (e) {
      return errorReply('GenericError', `malformed JSON: ${(e as Error).message}`);
    }
    if (req === null || typeof req !== 'object' || Array.isArray(req)) {
      return errorReply('GenericError', 'a request must be a JSON object: {"execute": "<command>", "arguments": {...}, "id": ...}');
    }
    const r = req as Record<string, unknown>;
    const id = Object.hasOwn(r, 'id') ? { id: r.id } : {};
    const withId = (x: Record<string, unknown>): Record<string, unknown> => ({ ...x, ...id });
    if (!Object.hasOwn(r, 'execute')) return withId(errorReply('GenericError', 'the request has no "execute" member'));
    if (typeof r.execute !== 'string') return withId(errorReply('GenericError', '"execute" must be a string (the command name)'));
    for (const k of Object.keys(r)) {
      if (k !== 'execute' && k !== 'arguments' && k !== 'id') return withId(errorReply('GenericError', `unexpected member "${k}" in the request`));
    }
    const handler = this.handlers.get(r.execute);
    if (!handler) return withId(errorReply('CommandNotFound', `the command ${r.execute} has not been found`));
    let args: Record<string, unknown> = {};
    if (r.arguments !== undefined) {
      if (r.arguments === null || typeof r.arguments !== 'object' || Array.isArray(r.arguments)) {
        return withId(errorReply('GenericError', '"arguments" must be a JSON object'));
      }
      args = r.arguments as Record<string, unknown>;
    }
    try {
      const result = await handler(args);
      return withId({ return: result === undefined ? {} : result });
    } catch (e) {
      const cls = e instanceof CommandError ? e.errorClass : 'GenericError';
      return withId(errorReply(cls, e instanceof Error ? e.message : String(e)));
    }
  }

  private send(client: Client, msg: unknown): void {
    const s = client.socket;
    if (s.destroyed || !s.writable) return;
    if (s.writableLength > MAX_UNREAD_BYTES) {
      s.destroy(); // a client that never reads must not make this process hold its events forever
      return;
    }
    s.write(`${JSON.stringify(msg)}\n`);
  }
}

function errorReply(cls: ErrorClass, desc: string): Record<string, unknown> {
  return { error: { class: cls, desc } };
}

/**
 * Makes `path` free for a new socket: nothing there is fine; a socket nobody answers on (left
 * by a process that died) is removed; a live socket or any other file is refused.
 */
async function clearStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`control socket ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!st.isSocket()) throw new Error(`control socket ${path}: the path exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`control socket ${path}: another process is listening on it`);
  fs.unlinkSync(path);
}
