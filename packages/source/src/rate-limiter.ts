/**
 * rate-limiter.ts — owns `--max-bandwidth`: a token bucket that the page sender awaits before
 * each write, so the average rate stays under the limit with bursts of at most ~10 ms.
 * A limit of 0 means unlimited; the limit can change while a migration runs.
 */

export class RateLimiter {
  private bytesPerSecond: number;
  private tokens = 0;
  private last = performance.now();
  private aborted: Error | null = null;
  private readonly sleepers = new Set<() => void>();

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

  /** Wakes every waiting `take()` with `err` and makes later ones fail at once. */
  abort(err: Error): void {
    this.aborted = err;
    for (const wake of this.sleepers) wake();
  }

  /** Would `take(bytes)` wait now? */
  wouldWait(): boolean {
    return this.bytesPerSecond > 0 && this.tokens < 0;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }

  /** Waits until `bytes` may be sent; rejects once the limiter is aborted. */
  async take(bytes: number): Promise<void> {
    if (this.aborted) throw this.aborted;
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
      await this.sleep(Math.max(1, Math.ceil((-this.tokens / this.bytesPerSecond) * 1000)));
      if (this.aborted) throw this.aborted;
    }
  }
}
