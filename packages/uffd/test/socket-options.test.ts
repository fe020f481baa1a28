/** setSocketInt / getSocketInt: int socket options on a real TCP socket's descriptor. */
import { expect } from 'chai';
import net from 'node:net';
import { SOL_SOCKET, SO_RCVBUF, IPPROTO_TCP, TCP_NOTSENT_LOWAT, SyscallError, createEventfd, getSocketInt, setSocketInt } from '@livemig/uffd';

async function connected(): Promise<{ client: net.Socket; close: () => void }> {
  const server = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', r));
  return {
    client,
    close: () => {
      client.destroy();
      server.close();
    },
  };
}

const fdOf = (s: net.Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;

describe('socket options', () => {
  it('sets an int option and reads back what the kernel keeps (SO_RCVBUF: twice the figure)', async () => {
    const { client, close } = await connected();
    try {
      setSocketInt(fdOf(client), SOL_SOCKET, SO_RCVBUF, 256 * 1024);
      expect(getSocketInt(fdOf(client), SOL_SOCKET, SO_RCVBUF)).to.equal(512 * 1024);
      setSocketInt(fdOf(client), IPPROTO_TCP, TCP_NOTSENT_LOWAT, 128 * 1024);
      expect(getSocketInt(fdOf(client), IPPROTO_TCP, TCP_NOTSENT_LOWAT)).to.equal(128 * 1024);
    } finally {
      close();
    }
  });

  it('names the call, errno and object when the descriptor is not a socket', () => {
    const e = createEventfd();
    try {
      expect(() => setSocketInt(e.fd, SOL_SOCKET, SO_RCVBUF, 4096, 'the eventfd'))
        .to.throw(SyscallError, /setsockopt\(SO_RCVBUF\) failed: ENOTSOCK.*the eventfd/);
      expect(() => getSocketInt(e.fd, SOL_SOCKET, SO_RCVBUF)).to.throw(SyscallError, /getsockopt\(SO_RCVBUF\) failed: ENOTSOCK/);
    } finally {
      e.close();
    }
  });
});
