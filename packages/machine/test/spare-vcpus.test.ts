import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { dropSpareVcpus, spareVcpuCount, startSpareVcpus } from '@livemig/machine';
import { MiB, destroyMachines, machine, sleep, waitFor } from './helpers.js';

/** Threads of this process (/proc/self/status). */
const threads = (): number => Number(/^Threads:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]);

/**
 * Runs `source` as an ES module in a new process; its exit code (or why it did not exit within
 * 10 s) and stdout. A script file, not `-e`: workers inherit the process's flags, and
 * --input-type would make their module loading fail.
 */
async function runScript(source: string): Promise<{ code: number | null | string; out: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'spares-'));
  const script = path.join(dir, 'script.mjs');
  writeFileSync(script, source);
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  const code = await Promise.race([
    new Promise<number | null | string>((r) => child.once('exit', (c, sig) => r(sig ?? c))),
    sleep(10_000).then(() => {
      child.kill();
      return 'still running after 10 s';
    }),
  ]);
  rmSync(dir, { recursive: true, force: true });
  return { code, out };
}

describe('spare vCPU threads (started before any machine needs them)', () => {
  afterEach(async () => {
    await destroyMachines();
    await dropSpareVcpus();
  });

  it('startSpareVcpus tops up to the count asked, not beyond', () => {
    startSpareVcpus(2);
    expect(spareVcpuCount()).to.equal(2);
    startSpareVcpus(1);
    expect(spareVcpuCount()).to.equal(2);
    startSpareVcpus(3);
    expect(spareVcpuCount()).to.equal(3);
  });

  it('a machine takes spares first and spawns the vCPUs it still needs', async () => {
    startSpareVcpus(2);
    const vm = await machine({ guest: 'ab', vcpus: 3, ram: 6 * MiB });
    await vm.prepare();
    expect(spareVcpuCount()).to.equal(0);
    expect(new Set(vm.vcpuTids).size).to.equal(3);
    await vm.start();
    await waitFor(() => vm.progress().every((n) => n > 10), 3000, 'every vCPU stepping');
  });

  it('a guest run on spare threads stops, saves its device state and verifies', async () => {
    startSpareVcpus(2);
    await sleep(300); // booted and waiting, as on a destination before the source connects
    const vm = await machine({ guest: 'ab', vcpus: 2, ram: 4 * MiB });
    await vm.start();
    await waitFor(() => vm.progress().every((n) => n > 20), 3000, 'steps');
    await vm.stop();
    expect(vm.saveDevice()).to.include({ kind: 'ab', vcpus: 2 });
    const r = await vm.verify();
    expect(r.bad).to.equal(0);
    expect(r.pages).to.be.greaterThan(0);
  });

  it('dropSpareVcpus ends the threads no machine took', async () => {
    const before = threads();
    startSpareVcpus(2);
    await waitFor(() => threads() >= before + 2, 3000, 'spare threads running');
    await dropSpareVcpus();
    expect(spareVcpuCount()).to.equal(0);
    await waitFor(() => threads() <= before, 3000, 'spare threads gone');
  });

  it('spares dropped while still booting end without aborting the process (a thread terminated while it loads koffi can)', async () => {
    const url = new URL('../dist/index.js', import.meta.url).href;
    const { code, out } = await runScript(`const m = await import(${JSON.stringify(url)});
for (let i = 0; i < 40; i++) {
  m.startSpareVcpus(2);
  await new Promise((r) => setTimeout(r, i * 1.5));
  await m.dropSpareVcpus();
}
console.log(m.spareVcpuCount());
`);
    expect(code).to.equal(0);
    expect(out.trim()).to.equal('0');
  });

  it('spares do not keep a process alive', async () => {
    const url = new URL('../dist/index.js', import.meta.url).href;
    const { code, out } = await runScript(`const m = await import(${JSON.stringify(url)}); m.startSpareVcpus(2); setTimeout(() => console.log(m.spareVcpuCount()), 300);\n`);
    expect(code).to.equal(0);
    expect(out.trim()).to.equal('2'); // both were up and waiting when it exited
  });
});
