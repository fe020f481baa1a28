/**
 * The `migrate` shim (bin/migrate.js) compiles the CLI and the packages it imports eagerly,
 * so that the switchover's code is not compiled for the first time while the guest is paused.
 * Checked by the bytecode V8 holds after `migrate --help`, through the shim and without it.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SHIM = fileURLToPath(new URL('../bin/migrate.js', import.meta.url));
const MAIN = new URL('../dist/main.js', import.meta.url).href;
const PRELOAD = new URL('./fixtures/bytecode-on-exit.mjs', import.meta.url).href;

/** Bytecode bytes held when `args` (node arguments) exit, and what they printed. */
function bytecodeAfter(args: string[]): { bytes: number; out: string } {
  const r = spawnSync(process.execPath, ['--import', PRELOAD, ...args], { encoding: 'utf8' });
  const m = /BYTECODE (\d+)/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { bytes: Number(m[1]), out: r.stdout };
}

describe('the migrate shim', () => {
  it('compiles the CLI eagerly: after `migrate --help` V8 holds several hundred KiB more bytecode than the same command imported lazily', () => {
    const shim = bytecodeAfter([SHIM, '--help']);
    const lazy = bytecodeAfter(['--input-type=module', '-e', `const m = await import(${JSON.stringify(MAIN)}); process.exitCode = await m.main(['--help']);`]);
    expect(shim.out).to.include('migrate send');
    expect(lazy.out).to.include('migrate send');
    expect(shim.bytes - lazy.bytes, `shim ${shim.bytes} B, lazy ${lazy.bytes} B`).to.be.greaterThan(300 * 1024);
  });
});
