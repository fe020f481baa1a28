#!/usr/bin/env node
// livemig-probe: can this host do userfaultfd postcopy? (`--json` for JSON). Exit 1 when not.
// A checked-in shim so the bin works before the build; the code is in dist/probe-cli.js.
import { main } from '../dist/probe-cli.js';

process.exitCode = main(process.argv.slice(2));
