#!/usr/bin/env node
// Shim for the `migrate` command: the compiled CLI lives in ../dist (built by `pnpm install`).
//
// The CLI and the packages it imports are compiled eagerly (V8's --no-lazy while they load).
// By default V8 compiles a function on its first call, and much of the switchover's code —
// the last discards, saving and loading the device state, starting the vCPUs — is first called
// while the guest is paused (same-hour A/B on this 2-core host, median of 5: postcopy-sweep
// downtime 3.0–3.7 → 2.5–3.3 ms, precopy 3.1 → 2.3–2.4 ms). --no-flush-bytecode keeps that
// bytecode: V8 otherwise drops a function's bytecode after 5 full garbage collections without
// a call, and a long precopy would bring the cost back. The price: ~1.1 MiB more bytecode and
// ~40 ms more start-up (import 85–115 → 125–180 ms here), before any migration begins.
// Modules loaded later (the guest, worker threads) compile lazily as usual.
import v8 from 'node:v8';

v8.setFlagsFromString('--no-flush-bytecode');
v8.setFlagsFromString('--no-lazy');
let cli;
try {
  cli = await import('../dist/main.js');
} finally {
  v8.setFlagsFromString('--lazy');
}
cli.main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
