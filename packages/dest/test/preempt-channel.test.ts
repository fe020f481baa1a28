/**
 * The destination's end of the preempt channel against the real kernel and a real loopback
 * connection: pages that arrive on it are placed by UFFDIO_COPY into a registered mapping, and
 * a page placed from both channels (the main channel's placer and the preempt channel) is
 * placed once, counted once, and keeps the bytes of the first placement.
 */
import { expect } from 'chai';
import net from 'node:net';
import { MsgType, newMigrationId } from '@livemig/protocol';
import { connectChannel, type Channel } from '@livemig/transport';
import { Userfaultfd, dupFd, mapAnonymous, type Mapping } from '@livemig/uffd';
import { PAGE_PRESENT, PAGE_REQUESTED, PagePlacer, PreemptEndpoint, type PlacerBlock } from '@livemig/dest';

const PS = 4096;
const PAGES = 16;

function pages(n: number, seed: number): Buffer {
  const buf = Buffer.alloc(n * PS);
  for (let i = 0; i < buf.length; i++) buf[i] = ((i >> 12) * 17 + seed * 31 + (i % 251)) % 255 + 1;
  return buf;
}

let uffd: Userfaultfd;
let ram: Mapping;
let placer: PagePlacer;
let b: PlacerBlock;
let endpoint: PreemptEndpoint;
let source: Channel;
let server: net.Server;
let placed: Array<[number, number]>;

beforeEach(async () => {
  ram = mapAnonymous(PAGES * PS, { name: 'ram0' });
  uffd = new Userfaultfd();
  uffd.register(ram.addr, ram.length, { missing: true }, 'ram0');
  placer = new PagePlacer(uffd, [ram]);
  placer.postcopy = true;
  b = placer.block('ram0');
  placed = [];
  endpoint = new PreemptEndpoint(uffd, [{ name: 'ram0', addr: ram.addr, length: ram.length, pageSize: PS, states: b.state }], placer.receivedElsewhere, {
    placed: (bi, page) => placed.push([bi, page]),
    closed: () => undefined,
  });
  const uuid = newMigrationId();
  server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const attached = new Promise<string>((resolve, reject) => {
    server.once('connection', (s: net.Socket) => {
      const fd = dupFd((s as unknown as { _handle: { fd: number } })._handle.fd);
      s.destroy();
      endpoint.attach(fd, uuid, {}).then(resolve, reject);
    });
  });
  source = await connectChannel({ endpoint: { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port }, role: 'preempt', uuid });
  await attached;
});

afterEach(() => {
  endpoint.close();
  source.close();
  server.close();
  uffd.close();
  ram.unmap();
});

/** Sends a PING on the preempt channel and waits for the PONG: everything sent before is placed. */
function roundTrip(): Promise<void> {
  return new Promise((resolve) => {
    source.setHandler((f) => {
      if (f.msg.type === MsgType.PONG) resolve();
    });
    source.send({ type: MsgType.PING, id: 1 });
  });
}

describe('PreemptEndpoint', () => {
  it('places the pages that arrive on the preempt channel and counts them as received', async () => {
    const data = pages(4, 1);
    source.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: PS, offset: 2 * PS, count: 4 }, data);
    await roundTrip();
    expect(Array.from(b.state.subarray(2, 6))).to.deep.equal([PAGE_PRESENT, PAGE_PRESENT, PAGE_PRESENT, PAGE_PRESENT]);
    expect(placer.missing).to.equal(PAGES - 4);
    expect(Buffer.from(ram.bytes(2 * PS, 4 * PS)).equals(data)).to.equal(true);
    expect(endpoint.stats).to.deep.include({ pages: 4, bytes: 4 * PS, placed: 4 });
  });

  it('places scattered pages sent as one PAGES frame, each at its own offset', async () => {
    const data = pages(3, 4);
    source.send({ type: MsgType.PAGES, block: 'ram0', pageSize: PS, offsets: [9 * PS, 1 * PS, 12 * PS] }, data);
    await roundTrip();
    expect(Buffer.from(ram.bytes(9 * PS, PS)).equals(data.subarray(0, PS))).to.equal(true);
    expect(Buffer.from(ram.bytes(1 * PS, PS)).equals(data.subarray(PS, 2 * PS))).to.equal(true);
    expect(Buffer.from(ram.bytes(12 * PS, PS)).equals(data.subarray(2 * PS))).to.equal(true);
    expect(endpoint.stats).to.deep.include({ pages: 3, placed: 3 });
  });

  it('reports a requested page it placed, and only that one', async () => {
    b.state[7] = PAGE_REQUESTED;
    source.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: PS, offset: 6 * PS, count: 2 }, pages(2, 2));
    await roundTrip();
    expect(placed).to.deep.equal([[0, 7]]);
  });

  it('places a page sent on both channels once, counts it once and keeps the first copy', async () => {
    const first = pages(3, 3);
    const second = pages(3, 4);
    placer.placeRun(b, 4, 3, first); // the main channel's copy arrives first
    source.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: PS, offset: 3 * PS, count: 3 }, second); // pages 3, 4, 5
    await roundTrip();
    expect(placer.missing).to.equal(PAGES - 4); // pages 3..6, each counted once
    expect(Buffer.from(ram.bytes(4 * PS, 3 * PS)).equals(first)).to.equal(true);
    expect(Buffer.from(ram.bytes(3 * PS, PS)).equals(second.subarray(0, PS))).to.equal(true);
    // And the other way round: the main channel's later copy of a preempt page is dropped.
    placer.placeRun(b, 3, 1, pages(1, 9));
    expect(placer.missing).to.equal(PAGES - 4);
    expect(Buffer.from(ram.bytes(3 * PS, PS)).equals(second.subarray(0, PS))).to.equal(true);
  });

  it('maps zero pages sent as zero runs', async () => {
    source.send({ type: MsgType.ZERO, block: 'ram0', pageSize: PS, runs: [[8 * PS, 2]] });
    await roundTrip();
    expect(Array.from(b.state.subarray(8, 10))).to.deep.equal([PAGE_PRESENT, PAGE_PRESENT]);
    expect(Buffer.from(ram.bytes(8 * PS, 2 * PS)).every((x) => x === 0)).to.equal(true);
    expect(placer.missing).to.equal(PAGES - 2);
  });

  it('closes the channel with an error naming the problem on a page outside the block', async () => {
    const reason = new Promise<string>((resolve) => {
      source.setHandler((f) => {
        if (f.msg.type === MsgType.ERROR) resolve(f.msg.reason);
      });
    });
    source.send({ type: MsgType.PAGE_RUN, block: 'ram0', pageSize: PS, offset: PAGES * PS, count: 1 }, pages(1, 5));
    expect(await reason).to.match(/ram0/).and.to.match(/offset|range|beyond|outside/i);
    expect(placer.missing).to.equal(PAGES);
  });
});
