import { expect } from 'chai';
import { FrameEncoder, MsgType, encodeFrame, encodeHeader, expectedPayloadLength } from '@livemig/protocol';
import { decodeOne, expectProtocolError, pattern } from './helpers.js';

const pages = { type: MsgType.PAGES, block: 'ram0', pageSize: 4096, offsets: [0, 8192, 4096] } as const;

describe('encoder', () => {
  it('writes a 12-byte prefix: header length, payload length, zero flags (u32 LE)', () => {
    const h = encodeHeader(pages);
    expect(h.readUInt32LE(0)).to.equal(h.length - 12);
    expect(h.readUInt32LE(4)).to.equal(3 * 4096);
    expect(h.readUInt32LE(8)).to.equal(0);
  });

  it('derives the payload length of PAGES, PAGE_RUN and RECV_BITMAP from the header', () => {
    expect(encodeHeader(pages).readUInt32LE(4)).to.equal(12288);
    expect(encodeHeader({ type: MsgType.PAGE_RUN, block: 'r', pageSize: 2 * 1024 * 1024, offset: 0, count: 3 }).readUInt32LE(4)).to.equal(6 * 1024 * 1024);
    expect(encodeHeader({ type: MsgType.RECV_BITMAP, block: 'r', pages: 17 }).readUInt32LE(4)).to.equal(3);
    expect(expectedPayloadLength({ type: MsgType.DEVICE })).to.equal(-1);
  });

  it('takes the payload length of DEVICE from the caller', () => {
    expect(encodeHeader({ type: MsgType.DEVICE }, 1234).readUInt32LE(4)).to.equal(1234);
  });

  it('rejects a declared payload length that disagrees with the message', () => {
    expectProtocolError(() => encodeHeader(pages, 4096), 'MALFORMED', 'PAGES: payload is 4096 bytes, message implies 12288');
  });

  it('encodeFrame returns the header followed by the caller\'s own payload buffers, uncopied', () => {
    const a = pattern(8192);
    const b = pattern(4096, 3);
    const out = encodeFrame(pages, [a, b]);
    expect(out).to.have.length(3);
    expect(out[1]).to.equal(a);
    expect(out[2]).to.equal(b);
    const f = decodeOne(Buffer.concat(out));
    expect(Buffer.concat(f.payload.segments).equals(Buffer.concat([a, b]))).to.equal(true);
  });

  it('encodeFrame rejects a payload of the wrong size', () => {
    expectProtocolError(() => encodeFrame(pages, pattern(4096)), 'MALFORMED', 'implies 12288');
  });

  it('validates outgoing messages', () => {
    expectProtocolError(() => encodeHeader({ ...pages, offsets: [100] }), 'ALIGN', 'PAGES.offsets[0]: 0x64 not aligned to page size 0x1000');
  });

  it('enforces its header limit', () => {
    const enc = new FrameEncoder({ maxHeaderBytes: 64 });
    expectProtocolError(() => enc.encodeHeader({ type: MsgType.ERROR, reason: 'x'.repeat(100) }), 'OVERSIZED', 'header of');
  });

  it('enforces its payload limit', () => {
    const enc = new FrameEncoder({ maxPayloadBytes: 8192 });
    expectProtocolError(() => enc.encodeHeader(pages), 'OVERSIZED', 'payload of 12288 bytes exceeds limit of 8192');
  });

  it('headers encoded one after another stay intact', () => {
    const a = encodeHeader({ type: MsgType.PING, id: 1 });
    const copy = Buffer.from(a);
    for (let i = 0; i < 2000; i++) encodeHeader({ type: MsgType.PING, id: i });
    expect(a.equals(copy)).to.equal(true);
  });
});
