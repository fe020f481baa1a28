/**
 * Postcopy with the preempt channel, end to end: two real processes over TCP; requested pages
 * travel on their own connection, never behind the background stream.
 */
import { expect } from 'chai';
import { migrate } from './support/procs.js';
import { FaultProxy } from './support/proxy.js';

describe('postcopy with a preempt channel between two processes', function () {
  this.timeout(180_000);

  it('moves a 512 MiB ab guest: 0 bad pages, and every page request and its page travelled on the preempt channel', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '512M', '--vcpus', '2', '--migrate-after', '200', '--postcopy', '--postcopy-after', '300', '--preempt', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    const rr = recv.report();
    expect(rr.mode).to.equal('postcopy');
    expect(rr.integrity).to.include({ checked: true, pages: 131072, bad: 0 });
    expect(rr.postcopy.requests).to.be.greaterThan(0);
    // The requests left on the preempt channel (a handful may go on the return path when a
    // fault is read in the instant before the channel is up), and the source took them there.
    // Requests and pages still in flight when every page had arrived are not counted at the
    // receiving end: the counts may differ by those few.
    const near = (x: number, of: number): boolean => x <= of && x >= Math.floor(of * 0.99);
    expect(near(rr.postcopy.preempt.requests, rr.postcopy.requests), 'preempt requests').to.equal(true);
    expect(near(sr.postcopy.preempt.requests, rr.postcopy.preempt.requests), 'requests received on preempt').to.equal(true);
    expect(rr.postcopy.preempt.pages).to.be.at.least(1);
    expect(near(rr.postcopy.preempt.pages, sr.postcopy.preempt.pages), 'pages that arrived on preempt').to.equal(true);
    expect(rr.postcopy.guestProgress).to.be.greaterThan(0);
  });

  it('completes as precopy when precopy converges first, the preempt channel closing without harm', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '100', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '100000', '--preempt', '--downtime-limit', '1000', '--json');
    const [s, r] = await Promise.all([send.done(30_000), recv.done(30_000)]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    expect(send.report().mode).to.equal('precopy');
    expect(recv.report().integrity.bad).to.equal(0);
  });

  it('fails before switchover when the preempt channel cannot be set up, and the source guest runs on and verifies', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    // The proxy forwards the main connection and refuses every other one.
    const proxy = await FaultProxy.start({ target: addr, accept: (i) => i === 0 });
    try {
      const send = migrate('send', '--to', proxy.address, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--postcopy', '--postcopy-after', '200', '--preempt', '--json');
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code).to.equal(1);
      expect(r.code).to.equal(1);
      const sr = send.report();
      expect(sr.status).to.equal('failed');
      expect(sr.error).to.match(/preempt channel could not be set up/);
      expect(sr.sourceGuest).to.deep.equal({ running: true });
      expect(sr.integrity).to.include({ checked: true, bad: 0 });
      expect(recv.report().error).to.match(/preempt/);
    } finally {
      proxy.close();
    }
  });
});
