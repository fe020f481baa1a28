/**
 * procs.ts — test support: run `migrate` as a real child process (the checked-in bin shim
 * over the built CLI), collect its output, wait for its listening line, read its JSON report.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MIGRATE = path.join(ROOT, 'packages/cli/bin/migrate.js');

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class MigrateProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;
  private listeners: Array<() => void> = [];

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, [MIGRATE, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      this.stdout += s;
      this.notify();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.stderr += s;
      this.notify();
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  private notify(): void {
    for (const l of this.listeners) l();
  }

  /** Resolves with the first match of `re` in stderr, or rejects after `timeoutMs` or at exit. */
  waitStderr(re: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = this.stderr.match(re);
        if (m) {
          cleanup();
          resolve(m);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no ${re} on stderr within ${timeoutMs} ms; stderr: ${this.stderr}`));
      }, timeoutMs);
      const onExit = (): void => {
        if (!check()) {
          cleanup();
          reject(new Error(`process exited before ${re}; stderr: ${this.stderr}`));
        }
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        this.listeners = this.listeners.filter((l) => l !== listener);
        this.child.off('exit', onExit);
      };
      const listener = (): void => void check();
      if (check()) return;
      this.listeners.push(listener);
      this.child.once('exit', onExit);
    });
  }

  /** The `HOST:PORT` a `recv` announced. */
  async listening(): Promise<string> {
    const m = await this.waitStderr(/listening on (\S+)/);
    return m[1]!;
  }

  /** Waits for exit (killing the process after `timeoutMs`). */
  async done(timeoutMs = 120_000): Promise<Exit> {
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The JSON report: the last line of stdout. */
  report(): Record<string, any> {
    const lines = this.stdout.trim().split('\n');
    const last = lines[lines.length - 1] ?? '';
    try {
      return JSON.parse(last) as Record<string, any>;
    } catch {
      throw new Error(`last stdout line is not JSON: ${JSON.stringify(last)}\nstderr: ${this.stderr}`);
    }
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }
}

export function migrate(...args: string[]): MigrateProcess {
  return new MigrateProcess(args);
}

/** `migrate` with LIVEMIG_TRACE=1: its phase lines, stamped with the host's monotonic clock, on stderr. */
export function migrateTraced(...args: string[]): MigrateProcess {
  return new MigrateProcess(args, { LIVEMIG_TRACE: '1' });
}

/** The time (ms, host monotonic clock) of the first trace line of `side` starting with `what`. */
export function traceTimeMs(stderr: string, side: 'source' | 'dest', what: string): number {
  for (const line of stderr.split('\n')) {
    const m = /^\[trace (\w+) ([\d.]+) s\] (.*)$/.exec(line);
    if (m && m[1] === side && m[3]!.startsWith(what)) return Number(m[2]) * 1000;
  }
  throw new Error(`no trace line "${what}" of the ${side} in: ${stderr}`);
}

/**
 * Runs a traced migration `recv` ← `send` (sendArgs after `--to`), checks both ends exit 0,
 * and returns the source's report with the guest's pause read off the host clock both ends
 * share: the source's "guest paused" → the destination's "guest started".
 */
export async function tracedMigration(sendArgs: string[]): Promise<{ report: Record<string, any>; clockMs: number }> {
  const recv = migrateTraced('recv', '--listen', '127.0.0.1:0', '--json');
  const addr = await recv.listening();
  const send = migrateTraced('send', '--to', addr, ...sendArgs, '--json');
  const [s, r] = await Promise.all([send.done(), recv.done()]);
  if (s.code !== 0 || r.code !== 0) throw new Error(`send exit ${s.code}, recv exit ${r.code}\n${send.stderr}\n${recv.stderr}`);
  const clockMs = traceTimeMs(recv.stderr, 'dest', 'guest started') - traceTimeMs(send.stderr, 'source', 'guest paused');
  return { report: send.report(), clockMs };
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Resolves once an HTTP server answers on 127.0.0.1:`port` (a guest's kv service). */
export async function waitHttp(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      await fetch(`http://127.0.0.1:${port}/kv/__probe__`);
      return;
    } catch {
      await sleep(20);
    }
  }
  throw new Error(`guest HTTP server on port ${port} never answered`);
}
