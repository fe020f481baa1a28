/**
 * place-window.ts — owns how far the source may run ahead of the destination's placing.
 *
 * The kernel's socket queues bound the bytes on the wire, not the destination's work: ~36 MiB
 * of trimmed pages (TRIMMED_RUN) are ~2 GiB to place. So the source counts page data the way
 * the destination spends it (whole pages, a trimmed one too) and sends a PING every quarter
 * window; the destination answers once it has handled every frame before it. With more than
 * the window sent past the last answered PING, the source waits for the next answer.
 *
 * Used in precopy. Tried in postcopy's background stream too (16 MiB): request latency p50
 * fell from ~2.6 to ~0.9 ms on the sweep, but the stream slowed and blocktime rose from
 * 190–210 to 290–350 ms (same-hour A/B), so postcopy keeps the kernel's queues only.
 */
export class PlaceWindow {
  /** PINGs in flight, oldest first, with the page data sent before each. */
  private readonly marks: Array<{ mark: number; pong: Promise<unknown>; answered: boolean }> = [];
  /** Page data the destination has handled, as far as its answers tell. */
  private placed = 0;

  /**
   * `ping` sends a PING and resolves with its PONG; `wait` awaits a promise (the caller's way
   * to give up when the migration is aborted). A PONG that fails fails the wait.
   */
  constructor(
    readonly bytes: number,
    private readonly ping: () => Promise<unknown>,
    private readonly wait: <T>(p: Promise<T>) => Promise<T> = (p) => p,
  ) {}

  /** `sent`: page data sent so far (a running total). Returns once it is within the window. */
  async keep(sent: number): Promise<void> {
    const last = this.marks[this.marks.length - 1];
    if (sent - (last?.mark ?? this.placed) >= this.bytes / 4) {
      const entry = { mark: sent, pong: this.ping(), answered: false };
      entry.pong.then(
        () => (entry.answered = true),
        () => undefined, // awaited below when it matters
      );
      this.marks.push(entry);
    }
    while (this.marks.length > 0 && (this.marks[0]!.answered || sent - this.placed > this.bytes)) {
      const e = this.marks.shift()!;
      if (!e.answered) await this.wait(e.pong);
      this.placed = e.mark;
    }
  }
}
