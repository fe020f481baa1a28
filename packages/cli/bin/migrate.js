#!/usr/bin/env node
// Shim for the `migrate` command: the compiled CLI lives in ../dist (built by `pnpm install`).
import { main } from '../dist/main.js';

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
