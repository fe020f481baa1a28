import net from 'node:net';
import { expect } from 'chai';
import { turnEventLoop } from '../src/event-loop.js';

/**
 * A send loop like the source's: small frames the kernel takes at once (no drain wait), a
 * window of two "flushed" promises. Returns how many frames went out before a byte the peer
 * wrote just before the loop began was read (or `limit` when it never was).
 */
async function framesUntilPeerByteRead(between: () => Promise<void>, limit: number): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', () => r()));
  const peer = await accepted;
  peer.on('data', () => undefined);
  try {
    let seen = false;
    client.on('data', () => (seen = true));
    const frame = Buffer.alloc(8000);
    const inFlight: Array<Promise<void>> = [];
    let frames = 0;
    // On loopback the byte is in the client's socket once write() returns; reading it takes
    // the event loop's I/O phase.
    peer.write('x');
    while (!seen && frames < limit) {
      client.cork();
      client.write(frame);
      client.uncork();
      inFlight.push(new Promise<void>((r) => client.write(Buffer.alloc(0), () => r())));
      while (inFlight.length >= 2) await inFlight.shift();
      await between();
      frames++;
    }
    return frames;
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
}

describe('turnEventLoop', () => {
  it('lets a byte from the peer be read within a few frames of a send loop the kernel never slows down', async () => {
    const frames = await framesUntilPeerByteRead(turnEventLoop, 2000);
    expect(frames).to.be.below(50);
  });

  it('(why it exists) without it, the same loop reads nothing for hundreds of frames', async () => {
    const frames = await framesUntilPeerByteRead(() => Promise.resolve(), 2000);
    expect(frames, String(frames)).to.be.at.least(200);
  });
});
