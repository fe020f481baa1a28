/**
 * keepalive.ts — owns detecting a dead link on a channel within seconds, whatever is in
 * flight: each end PINGs when it has written nothing for a while, and declares the link dead
 * when it has read nothing for `timeoutMs` (QEMU relied on TCP keepalive, whose default takes
 * two hours). Any frame counts as a sign of life; the PINGs (id 0) only fill silence, and the
 * peer's PONG to them is ignored by whoever reads it.
 */
import { MsgType } from '@livemig/protocol';
import { ChannelClosedError, type Channel } from './channel.js';

export interface KeepaliveOptions {
  /** Send a PING when nothing was written for this long (default 1000 ms). */
  intervalMs?: number;
  /** Close the channel as dead when nothing was read for this long (default 4000 ms). */
  timeoutMs?: number;
}

export const KEEPALIVE_PING_ID = 0;

/**
 * ERROR codes saying "this end dropped the link, it did not fail": a dead link found by
 * keepalive, or a deliberate pause (migrate-pause). In postcopy the peer pauses on them.
 */
export const LINK_DEAD = 'LINK_DEAD';
export const LINK_PAUSED = 'LINK_PAUSED';

/**
 * Starts keepalive on `ch` until it closes. A dead link closes the channel with a
 * ChannelClosedError saying how long the peer was silent. Returns a function that stops it.
 */
export function startKeepalive(ch: Channel, opts: KeepaliveOptions = {}): () => void {
  const interval = opts.intervalMs ?? 1000;
  const timeout = opts.timeoutMs ?? 4000;
  let lastRead = ch.bytesRead;
  let lastWritten = ch.bytesWritten;
  let readAt = performance.now();
  let wroteAt = performance.now();
  const tick = Math.max(10, Math.min(interval, timeout) / 4);
  const timer = setInterval(() => {
    if (ch.closed) {
      clearInterval(timer);
      return;
    }
    const now = performance.now();
    if (ch.bytesRead !== lastRead || ch.readPaused) {
      lastRead = ch.bytesRead;
      readAt = now;
    } else if (now - readAt >= timeout) {
      clearInterval(timer);
      const dead = new ChannelClosedError(ch.info.label, `the link is dead: nothing received for ${Math.round((now - readAt) / 100) / 10} s`);
      // The peer, if it still reads us, learns that this end dropped the link (it may pause
      // and recover) rather than failed.
      (dead as ChannelClosedError & { code: string }).code = LINK_DEAD;
      ch.close(dead);
      return;
    }
    if (ch.bytesWritten !== lastWritten) {
      lastWritten = ch.bytesWritten;
      wroteAt = now;
    } else if (now - wroteAt >= interval) {
      try {
        ch.send({ type: MsgType.PING, id: KEEPALIVE_PING_ID });
      } catch {
        // closing; the close is reported through the channel
      }
      lastWritten = ch.bytesWritten;
      wroteAt = now;
    }
  }, tick);
  timer.unref();
  void ch.whenClosed().then(() => clearInterval(timer));
  return () => clearInterval(timer);
}
