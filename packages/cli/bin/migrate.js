#!/usr/bin/env node
// Shim for the `migrate` command: the compiled CLI lives in ../dist (built by `pnpm install`).
//
// The CLI and the packages it imports are compiled eagerly (V8's --no-lazy while they load).
// By default V8 compiles a function on its first call, and much of the switchover's code —
// the last discards, saving and loading the device state, starting the vCPUs — is first called
// while the guest is paused: on this 2-core host that cost 1–2 ms of a 3.5–4.5 ms postcopy
// downtime. Eager compilation of these modules adds ~2 MiB of bytecode and no measurable
// start-up time. Modules loaded later (the guest, worker threads) compile lazily as usual.
import v8 from 'node:v8';

v8.setFlagsFromString('--no-lazy');
let cli;
try {
  cli = await import('../dist/main.js');
} finally {
  v8.setFlagsFromString('--lazy');
}
cli.main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
