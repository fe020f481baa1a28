/**
 * rate-limiter.ts — owns `--max-bandwidth`: a token bucket that the page sender awaits before
 * each write, so the average rate stays under the limit with bursts of at most ~10 ms.
 * A limit of 0 means unlimited; the limit can change while a migration runs.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export class RateLimiter {
  private bytesPerSecond: number;
  private tokens = 0;
  private last = performance.now();

  constructor(bytesPerSecond = 0) {
    this.bytesPerSecond = bytesPerSecond;
  }

  get limit(): number {
    return this.bytesPerSecond;
  }

  setLimit(bytesPerSecond: number): void {
    this.bytesPerSecond = bytesPerSecond;
    this.tokens = 0;
    this.last = performance.now();
  }

  /** Waits until `bytes` may be sent. */
  async take(bytes: number): Promise<void> {
    if (this.bytesPerSecond <= 0) return;
    for (;;) {
      const now = performance.now();
      const burst = Math.max(this.bytesPerSecond / 100, 64 * 1024);
      this.tokens = Math.min(burst, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
      this.last = now;
      if (this.tokens >= 0) {
        this.tokens -= bytes;
        return;
      }
      await sleep(Math.max(1, Math.ceil((-this.tokens / this.bytesPerSecond) * 1000)));
    }
  }
}
