/**
 * @livemig/uffd — the kernel side of livemig through koffi: userfaultfd, mapped memory,
 * eventfd/poll, PAGEMAP_SCAN dirty tracking and the host probe. Nothing here knows about
 * migration.
 */
export * from './errors.js';
export * from './memory.js';
export { bufferAddress } from './libc.js';
export { gettid } from './thread.js';
