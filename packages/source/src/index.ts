/**
 * @livemig/source — outgoing migration: dirty tracking, precopy rounds, switchover.
 */
export * from './outgoing.js';
export * from './source-machine.js';
export * from './rate-limiter.js';
export * from './page-bitmap.js';
export * from './dirty-sync.js';
