import net from 'node:net';
import { expect } from 'chai';
import { turnEventLoop } from '../src/event-loop.js';

describe('turnEventLoop', () => {
  it('lets bytes from the peer be read inside a loop of writes the kernel takes at once', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as net.AddressInfo;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect(port, '127.0.0.1');
    await new Promise<void>((r) => client.once('connect', () => r()));
    const peer = await accepted;
    try {
      let seen = false;
      client.on('data', () => (seen = true));
      peer.write('x');
      await new Promise((r) => setTimeout(r, 20)); // the byte is in the client's socket now
      const small = Buffer.alloc(64);
      let writes = 0;
      while (!seen && writes < 200) {
        await new Promise<void>((r) => client.write(small, () => r()));
        await turnEventLoop();
        writes++;
      }
      expect(seen, 'the byte from the peer was read during the loop').to.equal(true);
      expect(writes).to.be.below(200);
    } finally {
      client.destroy();
      peer.destroy();
      server.close();
    }
  });
});
