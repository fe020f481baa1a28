/** eventfd counters, synchronous poll/FdWaiter, and watchFd on the main loop. */
import { expect } from 'chai';
import { EventFd, FdWaiter, POLLIN, SyscallError, createEventfd, poll, watchFd, close } from '@livemig/uffd';
import { cleanup, sleep, startWorker, track } from './helpers.js';

describe('eventfd, poll and watchFd', () => {
  afterEach(cleanup);

  it('adds signals to the counter and drains it to zero', () => {
    const e = track.eventfd(createEventfd(2));
    e.signal(3);
    expect(e.drain()).to.equal(5);
    expect(e.drain()).to.equal(0);
  });

  it('takes one at a time from a semaphore eventfd', () => {
    const e = track.eventfd(createEventfd(0, { semaphore: true }));
    e.signal(2);
    expect([e.drain(), e.drain(), e.drain()]).to.deep.equal([1, 1, 0]);
  });

  it('poll() reports readiness per descriptor and all zero on timeout', () => {
    const a = track.eventfd(createEventfd());
    const b = track.eventfd(createEventfd());
    expect(poll([{ fd: a.fd }, { fd: b.fd, events: POLLIN }], 0)).to.deep.equal([0, 0]);
    b.signal();
    expect(poll([{ fd: a.fd }, { fd: b.fd }], 10)).to.deep.equal([0, POLLIN]);
  });

  it('FdWaiter.wait() returns a bitmask of the ready descriptors, 0 on timeout', () => {
    const a = track.eventfd(createEventfd());
    const b = track.eventfd(createEventfd());
    const w = new FdWaiter([a.fd, b.fd]);
    const t0 = Date.now();
    expect(w.wait(30)).to.equal(0);
    expect(Date.now() - t0).to.be.at.least(25);
    a.signal();
    b.signal();
    expect(w.wait(0)).to.equal(0b11);
    a.drain();
    expect(w.wait(0)).to.equal(0b10);
    expect(w.revents(1)).to.equal(POLLIN);
  });

  it('watchFd calls back on the main loop when another thread signals, while the loop keeps running', async () => {
    const e = track.eventfd(createEventfd());
    let ticks = 0;
    const timer = setInterval(() => ticks++, 2);
    track.fn(() => clearInterval(timer));
    const got = new Promise<number>((resolve) => {
      const w = track.watch(watchFd(e.fd, (err) => {
        if (err) throw err;
        w.stop();
        resolve(e.drain());
      }));
    });
    startWorker('signaller', { fd: e.fd, delayMs: 60, value: 7 });
    expect(await got).to.equal(7);
    expect(ticks, 'the event loop was blocked while waiting').to.be.at.least(5);
  });

  it('watchFd stops calling back after stop() and resumes after start()', async () => {
    const e = track.eventfd(createEventfd());
    let calls = 0;
    const w = track.watch(watchFd(e.fd, () => {
      calls++;
      e.drain();
    }));
    e.signal();
    await sleep(20);
    expect(calls).to.equal(1);
    w.stop();
    expect(w.active).to.equal(false);
    e.signal();
    await sleep(20);
    expect(calls).to.equal(1);
    w.start();
    await sleep(20);
    expect(calls).to.equal(2);
    w.close();
    w.close();
  });

  it('close() of a bad descriptor reports EBADF as a SyscallError', () => {
    const bad = 0x3fffffff; // never open: closing a just-closed number could hit a reused one
    expect(() => close(bad, 'eventfd')).to.throw(SyscallError, /^close failed: EBADF \(eventfd\)$/);
    expect(() => EventFd.fromFd(bad).signal()).to.throw(SyscallError, /^write failed: EBADF \(eventfd 1073741823\)$/);
  });
});
