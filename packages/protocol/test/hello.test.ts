import { expect } from 'chai';
import {
  FrameDecoder, MsgType, encodeFrame, HELLO_BYTES, HelloReader, PROTOCOL_VERSION, checkHello, decodeHello, encodeHello, newMigrationId, ProtocolError,
} from '@livemig/protocol';
import { expectProtocolError } from './helpers.js';

const UUID = '3f2b8c1e-9a4d-4e6f-8b7a-0123456789ab';
const OTHER = '00000000-1111-4222-8333-444444444444';

describe('hello', () => {
  it('is 32 bytes: "LVMG", u16 LE version, role byte, zero flags, binary UUID, zero reserved', () => {
    const b = encodeHello({ role: 'preempt', uuid: UUID });
    expect(b.length).to.equal(HELLO_BYTES).and.to.equal(32);
    expect(b.subarray(0, 4).toString('latin1')).to.equal('LVMG');
    expect(b.readUInt16LE(4)).to.equal(PROTOCOL_VERSION);
    expect(b[6]).to.equal(3);
    expect(b[7]).to.equal(0);
    expect(b.toString('hex', 8, 24)).to.equal(UUID.replace(/-/g, ''));
    expect(b.subarray(24).equals(Buffer.alloc(8))).to.equal(true);
  });

  it('round-trips every role', () => {
    for (const role of ['main', 'return', 'preempt'] as const) {
      expect(decodeHello(encodeHello({ role, uuid: UUID }))).to.deep.equal({ version: PROTOCOL_VERSION, role, uuid: UUID });
    }
  });

  it('normalises an upper-case UUID to lower case', () => {
    expect(decodeHello(encodeHello({ role: 'main', uuid: UUID.toUpperCase() })).uuid).to.equal(UUID);
  });

  it('refuses to encode a UUID that is not 8-4-4-4-12 hex', () => {
    expectProtocolError(() => encodeHello({ role: 'main', uuid: 'not-a-uuid' }), 'UUID', 'not in 8-4-4-4-12');
  });

  it('reports bad magic with the bytes received, printable when ASCII', () => {
    const b = Buffer.from('GET / HTTP/1.1\r\nHost: example\r\n\r\n');
    expectProtocolError(() => decodeHello(b), 'BAD_MAGIC', 'bad magic: expected "LVMG", got 0x47455420 ("GET ")');
  });

  it('reports non-printable bad magic as hex only', () => {
    const b = encodeHello({ role: 'main', uuid: UUID });
    b.writeUInt32BE(0x16030100, 0); // a TLS ClientHello
    const e = expectProtocolError(() => decodeHello(b), 'BAD_MAGIC', 'got 0x16030100');
    expect(e.message).not.to.include('(');
  });

  it('rejects another protocol version, naming both', () => {
    const b = encodeHello({ role: 'main', uuid: UUID, version: 7 });
    expectProtocolError(() => decodeHello(b), 'VERSION', `unsupported protocol version 7 (this side speaks ${PROTOCOL_VERSION})`);
  });

  it('rejects an unknown role code', () => {
    const b = encodeHello({ role: 'main', uuid: UUID });
    b[6] = 9;
    expectProtocolError(() => decodeHello(b), 'ROLE', 'unknown channel role code 9');
  });

  it('rejects nonzero flags', () => {
    const b = encodeHello({ role: 'main', uuid: UUID });
    b[7] = 1;
    expectProtocolError(() => decodeHello(b), 'MALFORMED', 'flags must be 0');
  });

  it('rejects nonzero reserved bytes', () => {
    const b = encodeHello({ role: 'main', uuid: UUID });
    b[31] = 1;
    expectProtocolError(() => decodeHello(b), 'MALFORMED', 'reserved bytes must be 0');
  });

  it('rejects a hello shorter than 32 bytes', () => {
    expectProtocolError(() => decodeHello(Buffer.from('LVMG')), 'TRUNCATED', 'truncated hello: got 4 of 32 bytes');
  });

  it('checkHello names a UUID mismatch with both values', () => {
    const h = decodeHello(encodeHello({ role: 'main', uuid: UUID }));
    expectProtocolError(() => checkHello(h, { uuid: OTHER }), 'UUID', `migration UUID mismatch: expected ${OTHER}, got ${UUID}`);
  });

  it('checkHello names a role mismatch', () => {
    const h = decodeHello(encodeHello({ role: 'preempt', uuid: UUID }));
    expectProtocolError(() => checkHello(h, { role: 'main' }), 'ROLE', 'role mismatch: expected main, got preempt');
  });

  it('checkHello accepts a matching hello', () => {
    const h = decodeHello(encodeHello({ role: 'return', uuid: UUID }));
    expect(() => checkHello(h, { role: 'return', uuid: UUID.toUpperCase() })).not.to.throw();
  });

  it('a UUID mismatch is an error on both ends of a connection', () => {
    // source (main) and destination (return) each send their hello, then check the peer's
    const fromSource = decodeHello(encodeHello({ role: 'main', uuid: UUID }));
    const fromDest = decodeHello(encodeHello({ role: 'return', uuid: OTHER }));
    expectProtocolError(() => checkHello(fromSource, { role: 'main', uuid: OTHER }), 'UUID', 'mismatch'); // at the destination
    expectProtocolError(() => checkHello(fromDest, { role: 'return', uuid: UUID }), 'UUID', 'mismatch'); // at the source
  });

  it('newMigrationId returns distinct canonical UUIDs', () => {
    const a = newMigrationId();
    expect(a).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(newMigrationId()).not.to.equal(a);
    expect(decodeHello(encodeHello({ role: 'main', uuid: a })).uuid).to.equal(a);
  });
});

describe('HelloReader', () => {
  it('collects the hello from 1-byte chunks', () => {
    const r = new HelloReader();
    const b = encodeHello({ role: 'main', uuid: UUID });
    for (let i = 0; i < 31; i++) expect(r.push(b.subarray(i, i + 1))).to.equal(null);
    const res = r.push(b.subarray(31));
    expect(res?.hello).to.deep.equal({ version: PROTOCOL_VERSION, role: 'main', uuid: UUID });
    expect(res?.rest.length).to.equal(0);
    expect(r.done).to.equal(true);
  });

  it('returns the bytes after the hello as a zero-copy view of the chunk', () => {
    const chunk = Buffer.concat([encodeHello({ role: 'main', uuid: UUID }), Buffer.from('frames…')]);
    const res = new HelloReader().push(chunk)!;
    expect(res.rest.toString()).to.equal('frames…');
    expect(res.rest.buffer).to.equal(chunk.buffer);
    expect(res.rest.byteOffset).to.equal(chunk.byteOffset + 32);
  });

  it('hands the bytes after the hello to a FrameDecoder intact', () => {
    const stream = Buffer.concat([encodeHello({ role: 'main', uuid: UUID }), ...encodeFrame({ type: MsgType.PING, id: 5 })]);
    const r = new HelloReader();
    const d = new FrameDecoder({ role: 'main' });
    for (let at = 0; at < stream.length; at += 5) {
      const c = stream.subarray(at, at + 5);
      if (!r.done) {
        const res = r.push(c);
        if (res) d.push(res.rest);
      } else d.push(c);
    }
    expect(d.next()?.msg).to.deep.equal({ type: MsgType.PING, id: 5 });
  });

  it('fails on the first wrong byte without waiting for 32 bytes', () => {
    const r = new HelloReader();
    expectProtocolError(() => r.push(Buffer.from('G')), 'BAD_MAGIC', 'got 0x47 ("G")');
  });

  it('end() reports a truncated hello', () => {
    const r = new HelloReader();
    r.push(encodeHello({ role: 'main', uuid: UUID }).subarray(0, 10));
    expectProtocolError(() => r.end(), 'TRUNCATED', 'truncated hello: got 10 of 32 bytes');
  });

  it('refuses more input once the hello is read', () => {
    const r = new HelloReader();
    r.push(encodeHello({ role: 'main', uuid: UUID }));
    expect(() => r.push(Buffer.from('x'))).to.throw(Error, /already read/);
    expect(() => r.push(Buffer.from('x'))).not.to.throw(ProtocolError);
  });
});
