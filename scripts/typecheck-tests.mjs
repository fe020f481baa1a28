#!/usr/bin/env node
// Type-checks every test directory (packages/*/test and test/) with its tsconfig.json:
// tests run through tsx, which strips types without checking them.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
const dirs = readdirSync(path.join(root, 'packages')).map((p) => path.join('packages', p, 'test'));
dirs.push('test');
let failed = false;
for (const dir of dirs) {
  if (!existsSync(path.join(root, dir, 'tsconfig.json'))) continue;
  try {
    execFileSync(process.execPath, [tsc, '-p', dir], { cwd: root, stdio: 'inherit' });
  } catch {
    failed = true;
  }
}
process.exitCode = failed ? 1 : 0;
