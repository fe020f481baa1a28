/**
 * @livemig/dest — incoming migration: accept a guest from a source, place its pages with
 * UFFDIO_COPY, load its device state and run it.
 */
export * from './incoming.js';
export * from './dest-state.js';
export * from './dest-machine.js';
export * from './page-placer.js';
export { PageRecycler, MIN_RUN as RECYCLE_MIN_RUN } from './recycle.js';
export { Prefill, PREFILL_CHUNK } from './prefill.js';
export { PreemptEndpoint, type PreemptBlock, type PreemptEvents } from './preempt-channel.js';
