/** @livemig/cli — the `migrate` command; `main(argv)` returns the exit code. */
export { main } from './main.js';
export { parseSize, parseRate, formatBytes } from './units.js';
