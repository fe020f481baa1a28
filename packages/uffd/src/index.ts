/**
 * @livemig/uffd — the kernel side of livemig through koffi: userfaultfd, mapped memory,
 * eventfd/poll, PAGEMAP_SCAN dirty tracking and the host probe. Nothing here knows about
 * migration.
 */
export * from './errors.js';
export * from './memory.js';
export { bufferAddress } from './libc.js';
export { gettid, requestShortSlice, requestRealtime, promptScheduling, threadCpuTimes, type ThreadScheduling, type ThreadCpuTimes } from './thread.js';
export * from './fd.js';
export * from './messages.js';
export * from './userfaultfd.js';
export * from './eventfd.js';
export * from './poll.js';
export * from './fdwatch.js';
export * from './dirty.js';
export * from './probe.js';
export * from './pagemap.js';
export { monotonicOffsetMs } from './clock.js';
