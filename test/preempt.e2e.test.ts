/**
 * Postcopy with the preempt channel, end to end: two real processes over TCP; requested pages
 * travel on their own connection, never behind the background stream.
 */
import net from 'node:net';
import { expect } from 'chai';
import { migrate, migrateTraced, traceTimeMs } from './support/procs.js';
import { FaultProxy } from './support/proxy.js';

describe('postcopy with a preempt channel between two processes', function () {
  this.timeout(180_000);

  it('moves a 512 MiB ab guest: 0 bad pages, and every page request and its page travelled on the preempt channel', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--json');
    const addr = await recv.listening();
    // 1.5 s first: the guest populates all of its RAM (a first touch costs ~10 µs a page on this
    // VM), so precopy leaves pages with data behind for the destination to ask for.
    const send = migrate('send', '--to', addr, '--ram', '512M', '--vcpus', '2', '--migrate-after', '1500', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '300', '--preempt', '--json');
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
    // Requested pages do not wait behind the background stream: its queues stay as the kernel sizes them.
    expect(sr.postcopy.mainQueueBytes).to.equal(undefined);
    expect(rr.postcopy.mainQueueBytes).to.equal(undefined);
    expect(near(rr.postcopy.preempt.pages, sr.postcopy.preempt.pages), 'pages that arrived on preempt').to.equal(true);
    expect(rr.postcopy.guestProgress).to.be.greaterThan(0);
    // By default the threads at both ends of the channel run with a short scheduler slice.
    expect(sr.postcopy.preempt.scheduling).to.equal('short-slice');
    expect(rr.postcopy.preempt.scheduling).to.equal('short-slice');
  });

  it('with --preempt-realtime on both ends, the threads that serve and place requested pages run realtime, and the guest verifies', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--run-after', '300', '--preempt-realtime', '--json');
    const addr = await recv.listening();
    const send = migrate('send', '--to', addr, '--ram', '256M', '--vcpus', '2', '--migrate-after', '1000', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '300', '--preempt', '--preempt-realtime', '--json');
    const [s, r] = await Promise.all([send.done(), recv.done()]);
    expect(s.code, send.stderr).to.equal(0);
    expect(r.code, recv.stderr).to.equal(0);
    const sr = send.report();
    const rr = recv.report();
    expect(rr.mode).to.equal('postcopy');
    expect(rr.integrity).to.include({ checked: true, pages: 65536, bad: 0 });
    expect(rr.postcopy.preempt.requests).to.be.greaterThan(0);
    expect(sr.postcopy.preempt.scheduling).to.equal('realtime');
    expect(rr.postcopy.preempt.scheduling).to.equal('realtime');
    expect(rr.postcopy.guestProgress).to.be.greaterThan(0);
  });

  it('send refuses --preempt-realtime without --preempt, with a usage error (exit 2)', async () => {
    const send = migrate('send', '--to', '127.0.0.1:9', '--ram', '16M', '--postcopy', '--preempt-realtime');
    const s = await send.done(30_000);
    expect(s.code).to.equal(2);
    expect(send.stderr).to.include('--preempt-realtime needs --preempt');
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

  it('a stray connection to the destination before the preempt channel does not take its place: the migration completes with preempt', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
    const strays: net.Socket[] = [];
    // Connection 1 is the source's preempt channel: before it reaches the destination, one
    // stray connection sends garbage and another says nothing at all.
    const proxy = await FaultProxy.start({
      target: addr,
      beforeForward: async (i) => {
        if (i !== 1) return;
        for (const hello of [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), null]) {
          const s = net.connect(port, host);
          s.on('error', () => undefined);
          await new Promise((r) => s.once('connect', r));
          if (hello) s.write(hello);
          strays.push(s);
        }
        await new Promise((r) => setTimeout(r, 300));
      },
    });
    try {
      // Whole pages: trimmed, a 64 MiB ab guest can finish in precopy before the switch.
      const send = migrate('send', '--to', proxy.address, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '200', '--preempt', '--no-trim-pages', '--json');
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code, send.stderr).to.equal(0);
      expect(r.code, recv.stderr).to.equal(0);
      expect(recv.report().mode).to.equal('postcopy');
      expect(recv.report().integrity.bad).to.equal(0);
      expect(strays.length).to.equal(2);
    } finally {
      for (const s of strays) s.destroy();
      proxy.close();
    }
  });

  it('precopy does not wait for the preempt channel: with its connection held back 1.5 s, pages flow meanwhile, and postcopy waits for it', async () => {
    const recv = migrate('recv', '--listen', '127.0.0.1:0', '--json');
    const addr = await recv.listening();
    // Connection 1 is the source's preempt channel.
    const proxy = await FaultProxy.start({ target: addr, beforeForward: (i) => (i === 1 ? new Promise((r) => setTimeout(r, 1500)) : undefined) });
    try {
      const send = migrateTraced('send', '--to', proxy.address, '--ram', '64M', '--vcpus', '1', '--migrate-after', '100', '--downtime-limit', '1', '--postcopy', '--postcopy-after', '200', '--preempt', '--no-trim-pages', '--json');
      const [s, r] = await Promise.all([send.done(), recv.done()]);
      expect(s.code, send.stderr).to.equal(0);
      expect(r.code, recv.stderr).to.equal(0);
      const sr = send.report();
      expect(sr.mode).to.equal('postcopy');
      expect(sr.setupTimeMs, 'setup does not include the wait for the preempt channel').to.be.below(1000);
      const firstRound = traceTimeMs(send.stderr, 'source', 'round 1 sent');
      const preempt = traceTimeMs(send.stderr, 'source', 'preempt channel connected');
      const stopped = traceTimeMs(send.stderr, 'source', 'guest stopped');
      expect(firstRound, 'a precopy round ended before the preempt channel was up').to.be.below(preempt);
      expect(preempt, 'the guest stopped only once it was up').to.be.below(stopped);
      expect(recv.report().integrity.bad).to.equal(0);
    } finally {
      proxy.close();
    }
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
