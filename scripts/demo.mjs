#!/usr/bin/env node
// The loopback demo: `migrate recv` and `migrate send` as two processes on this machine,
// migrating a running 256 MiB `ab` guest (2 vCPUs writing all the time) over TCP, then
// verifying every page on the destination. By default postcopy is enabled with
// `--postcopy-after auto`: precopy if it converges, postcopy as soon as it stops converging
// (two vCPUs writing all the time on a busy 2-core machine may outrun the wire). Arguments
// replace that default and go to `migrate send` (e.g. `--postcopy --postcopy-after 300`, or
// `--downtime-limit 1000` for precopy only).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const migrate = path.join(root, 'packages/cli/bin/migrate.js');
const extra = process.argv.length > 2 ? process.argv.slice(2) : ['--postcopy', '--postcopy-after', 'auto'];

function start(args, label) {
  const child = spawn(process.execPath, [migrate, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s) => {
    err += s;
    for (const line of s.split('\n')) if (line.trim()) process.stderr.write(`[${label}] ${line}\n`);
  });
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, exited, out: () => out, err: () => err };
}

const recv = start(['recv', '--listen', '127.0.0.1:0', '--run-after', '500'], 'recv');
const addr = await new Promise((resolve, reject) => {
  const timer = setInterval(() => {
    const m = /listening on (\S+)/.exec(recv.err());
    if (m) {
      clearInterval(timer);
      resolve(m[1]);
    }
  }, 20);
  recv.exited.then((code) => reject(new Error(`migrate recv exited early (${code})`)));
});
const send = start(['send', '--to', addr, '--ram', '256M', '--vcpus', '2', '--migrate-after', '500', ...extra], 'send');
// A source that fails before connecting leaves the destination waiting: stop it then.
send.exited.then((code) => {
  if (code !== 0) setTimeout(() => recv.child.kill('SIGTERM'), 2000).unref();
});
const [sendCode, recvCode] = await Promise.all([send.exited, recv.exited]);
process.stdout.write(`\n--- source (migrate send, exit ${sendCode}) ---\n${send.out()}`);
process.stdout.write(`\n--- destination (migrate recv, exit ${recvCode}) ---\n${recv.out()}`);
process.exitCode = sendCode === 0 && recvCode === 0 ? 0 : 1;
