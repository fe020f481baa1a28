/**
 * event-loop.ts — owns giving the event loop its turn from inside a send loop.
 *
 * A socket write the kernel takes at once completes without the event loop: its callback and
 * every `await` after it run as microtasks. A loop of such writes (a precopy round, the
 * postcopy background stream) would then never reach the I/O phase, and frames from the
 * destination (page requests, PONGs, SHUT) would wait until the socket buffer filled. A 1 MiB
 * page run does not fill a socket at once and waits for 'drain' (the loop turns there), but
 * zero runs and sparse pages are small frames. Measured with 8 KB frames: a byte from the
 * peer waited ~50 ms (about 500 frames, until the kernel's buffer was full); with a turn
 * between frames, ~1.5 ms.
 */

/** Resolves after the event loop has polled for I/O once (setImmediate runs after that phase). */
export function turnEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
