/**
 * progress.ts — owns the one-line progress display on stderr: shown when stderr is a
 * terminal (or with --progress), redrawn in place, never written to stdout.
 */
import type { Progress } from '@livemig/source';
import type { IncomingProgress } from '@livemig/dest';
import { formatBytes } from './units.js';

export class ProgressLine {
  private readonly enabled: boolean;
  private readonly tty: boolean;
  private last = 0;

  constructor(force: boolean) {
    this.tty = Boolean(process.stderr.isTTY);
    this.enabled = force || this.tty;
  }

  source(p: Progress): void {
    const pct = p.totalBytes > 0 ? Math.min(100, (100 * (p.totalBytes - p.remainingBytes)) / p.totalBytes) : 0;
    this.write(
      `${p.phase} round ${p.round} ${pct.toFixed(1)}% rate ${formatBytes(p.bandwidth)}/s remaining ${formatBytes(p.remainingBytes)} dirty ${formatBytes(p.dirtyRate)}/s`,
      p.phase !== 'precopy',
    );
  }

  dest(p: IncomingProgress): void {
    const pct = p.totalBytes > 0 ? Math.min(100, (100 * p.receivedBytes) / p.totalBytes) : 0;
    this.write(`${p.state} round ${p.round} received ${formatBytes(p.receivedBytes)} (${pct.toFixed(1)}% of RAM)`, false);
  }

  private write(line: string, force: boolean): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    if (this.tty) process.stderr.write(`\r\x1b[K${line}`);
    else process.stderr.write(`${line}\n`);
  }

  end(): void {
    if (this.enabled && this.tty) process.stderr.write('\n');
  }
}

/**
 * One line on stderr (terminal or not) when postcopy pauses and when it runs again: a paused
 * migration waits for a recovery, and whoever runs the command must know.
 */
export class PauseNotice {
  private paused = false;
  private readonly who: string;
  /** What will end the pause, given how the command was started. */
  private readonly hint: string;

  constructor(side: 'send' | 'recv', how: { autoRecover: boolean; control: boolean }) {
    this.who = `migrate ${side}`;
    const command = side === 'send' ? 'migrate-resume' : 'migrate-recover';
    this.hint = how.autoRecover
      ? side === 'send'
        ? `reconnecting by itself (--auto-recover), then waiting for ${command} on the control socket`
        : 'waiting for the source to reconnect (--auto-recover)'
      : how.control
        ? `${side === 'send' ? 'resume' : 'recover'} with ${command} on the control socket`
        : `nothing can resume it: start ${side} with --control or --auto-recover`;
  }

  update(paused: boolean, reason: string | undefined): void {
    if (paused === this.paused) return;
    this.paused = paused;
    process.stderr.write(paused ? `${this.who}: postcopy paused: ${reason ?? 'link failure'}; ${this.hint}\n` : `${this.who}: postcopy resumed\n`);
  }
}
