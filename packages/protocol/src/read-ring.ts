/**
 * read-ring.ts — owns `ReadRing`, the receive buffer of a connection that reads into memory the
 * caller supplies (node:net's `onread`) instead of a fresh allocation per read.
 *
 * Each read lands right after the one before, so consecutive reads form one contiguous span
 * and a frame's payload is usually a single segment (one UFFDIO_COPY for a whole run), and
 * nothing is allocated per read (no garbage for the collector at gigabytes a second). The
 * bytes the FrameDecoder still holds — always the most recent `retained` bytes read — are never
 * overwritten: the next read goes after them, wraps to the start of the buffer when they leave
 * room there, or goes to a fresh buffer (the old one lives on until the decoder lets go of it).
 *
 * Frames handed out by the decoder point into the ring: use them before the next read (a
 * handler that returns a promise holds reading back until it settles, so that one is safe too).
 */

export interface ReadRingOptions {
  /** Bytes of each buffer (default 8 MiB). */
  capacity?: number;
  /** Smallest space offered to a read (default 512 KiB); less than that and the ring wraps or moves on. */
  minRead?: number;
  /**
   * Largest space offered to a read (default a quarter of the capacity). A read that filled
   * all the free space would leave none for the next one while the decoder still holds a
   * partial frame, and the ring would have to move to a fresh buffer every other read.
   */
  maxRead?: number;
}

export class ReadRing {
  readonly capacity: number;
  readonly minRead: number;
  readonly maxRead: number;
  private buf: Buffer;
  /** Commits in `buf`, oldest first, as [start, length] pairs; older ones are dropped once no longer retained. */
  private spans: number[] = [];
  /** Where the read offered by the last `next()` starts in `buf`. */
  private offered = 0;
  /** Buffers allocated (the first included): how often the ring had to move on. */
  buffers = 1;

  constructor(opts: ReadRingOptions = {}) {
    this.capacity = opts.capacity ?? 8 * 1024 * 1024;
    this.minRead = Math.min(opts.minRead ?? 512 * 1024, this.capacity);
    this.maxRead = Math.max(this.minRead, Math.min(opts.maxRead ?? Math.floor(this.capacity / 4), this.capacity));
    if (!Number.isInteger(this.capacity) || this.capacity < 1) throw new RangeError(`ReadRing capacity must be a positive integer, got ${opts.capacity}`);
    if (!Number.isInteger(this.minRead) || this.minRead < 1) throw new RangeError(`ReadRing minRead must be a positive integer, got ${opts.minRead}`);
    this.buf = Buffer.allocUnsafeSlow(this.capacity);
  }

  /**
   * The space the next read is to fill. `retained`: how many of the bytes read so far the
   * consumer still holds (they are the most recent ones); they stay untouched.
   */
  next(retained: number): Buffer {
    const spans = this.spans;
    // Walk back from the newest commit to find where the retained bytes of this buffer start.
    let keep = retained;
    let i = spans.length - 2;
    let oldest = -1;
    for (; i >= 0; i -= 2) {
      const start = spans[i]!;
      const len = spans[i + 1]!;
      if (keep <= len) {
        if (keep > 0) oldest = start + len - keep;
        break;
      }
      keep -= len;
      oldest = start;
    }
    if (i > 0) spans.splice(0, i); // commits before span i hold nothing retained
    if (oldest < 0) {
      // Nothing of this buffer is held: start over at its beginning.
      spans.length = 0;
      return this.offer(0, this.capacity);
    }
    // Commits go up the buffer until a wrap, and never over held bytes: the held bytes end
    // with the newest commit, so they wrapped iff that commit ends at or below the oldest one.
    const end = spans[spans.length - 2]! + spans[spans.length - 1]!;
    if (oldest < end) {
      // Held: [oldest, end). Free: [end, capacity) and [0, oldest).
      if (this.capacity - end >= this.minRead) return this.offer(end, this.capacity);
      if (oldest >= this.minRead) return this.offer(0, oldest);
    } else if (oldest - end >= this.minRead) {
      // Wrapped: held [oldest, …) and [0, end). Free: [end, oldest).
      return this.offer(end, oldest);
    }
    // No room left: a fresh buffer. The decoder keeps the old one alive while it needs it.
    this.buf = Buffer.allocUnsafeSlow(this.capacity);
    this.buffers++;
    spans.length = 0;
    return this.offer(0, this.capacity);
  }

  /** `n` bytes were read into the space `next()` offered; returns them. */
  commit(n: number): Buffer {
    const at = this.offered;
    if (n > 0) this.spans.push(at, n);
    this.offered = at + n;
    return this.buf.subarray(at, at + n);
  }

  private offer(start: number, end: number): Buffer {
    this.offered = start;
    return this.buf.subarray(start, Math.min(end, start + this.maxRead));
  }
}
