/**
 * PlaceWindow: how far the source may run ahead of the destination's placing, counted in page
 * data and bounded by the PINGs the destination has answered.
 */
import { expect } from 'chai';
import { PlaceWindow } from '../src/place-window.js';

const MiB = 1024 * 1024;

/** A ping function whose PONGs the test answers (or fails) by hand. */
function pings(): { ping: () => Promise<unknown>; sent: Array<{ answer: () => void; fail: (e: Error) => void }> } {
  const sent: Array<{ answer: () => void; fail: (e: Error) => void }> = [];
  return {
    sent,
    ping: () =>
      new Promise<void>((resolve, reject) => {
        sent.push({ answer: () => resolve(), fail: reject });
      }),
  };
}

/** Whether `p` settles within a few turns of the event loop. */
async function settles(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
}

describe('PlaceWindow', () => {
  it('sends a PING every quarter window of page data', async () => {
    const { ping, sent } = pings();
    const w = new PlaceWindow(64 * MiB, ping);
    for (let s = 4 * MiB; s <= 64 * MiB; s += 4 * MiB) await w.keep(s);
    expect(sent).to.have.length(4); // at 16, 32, 48 and 64 MiB
  });

  it('does not wait while at most the window is unanswered, and waits past it until the oldest PING is answered', async () => {
    const { ping, sent } = pings();
    const w = new PlaceWindow(64 * MiB, ping);
    for (let s = 16 * MiB; s <= 64 * MiB; s += 16 * MiB) expect(await settles(w.keep(s)), `at ${s / MiB} MiB`).to.equal(true);
    const past = w.keep(68 * MiB);
    expect(await settles(past), 'past the window with nothing answered').to.equal(false);
    sent[0]!.answer(); // the destination has placed the first 16 MiB
    expect(await settles(past)).to.equal(true);
  });

  it('an answered PING moves the window on: later page data does not wait', async () => {
    const { ping, sent } = pings();
    const w = new PlaceWindow(64 * MiB, ping);
    for (let s = 16 * MiB; s <= 64 * MiB; s += 16 * MiB) await w.keep(s);
    for (const p of sent.splice(0)) p.answer();
    await settles(Promise.resolve());
    expect(await settles(w.keep(120 * MiB))).to.equal(true);
  });

  it('a failed PING that is waited for fails the wait', async () => {
    const { ping, sent } = pings();
    const w = new PlaceWindow(16 * MiB, ping);
    await w.keep(4 * MiB);
    const waiting = w.keep(24 * MiB);
    sent[0]!.fail(new Error('destination did not answer PING within 30 s'));
    let err: unknown;
    try {
      await waiting;
    } catch (e) {
      err = e;
    }
    expect(String(err)).to.contain('did not answer PING');
  });
});
