/**
 * @livemig/source — outgoing migration: dirty tracking, precopy rounds, switchover.
 */
export * from './outgoing.js';
export * from './source-machine.js';
export * from './rate-limiter.js';
export * from './page-bitmap.js';
export * from './dirty-sync.js';
export { UrgentPages, PREFETCH_MIN, PREFETCH_MAX, URGENT_FRAME_PAGES, type UrgentBlock, type FrameSink, type UrgentStats } from './urgent-pages.js';
