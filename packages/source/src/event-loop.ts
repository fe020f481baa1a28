/**
 * event-loop.ts — owns giving the event loop its turn from inside a send loop.
 *
 * A socket write the kernel takes at once completes without the event loop: its callback and
 * every `await` after it run as microtasks. A loop of such writes (a precopy round, the
 * postcopy background stream) would then never reach the I/O phase, and frames from the
 * destination (page requests, PONGs, SHUT) would wait until the socket buffer filled. Measured
 * on the 1 GiB postcopy sweep: a page request sat unread for 228 ms.
 */

/** Resolves after the event loop has polled for I/O once (setImmediate runs after that phase). */
export function turnEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
