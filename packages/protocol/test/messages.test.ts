import { expect } from 'chai';
import {
  ALL_MSG_TYPES, MsgType, allowedOn, encodeFrame, msgTypeName, FrameDecoder, type ChannelRole,
} from '@livemig/protocol';
import { concatFrames, decodeAll, decodeOne, payloadBytes, sampleMessages, expectProtocolError, rawFrame } from './helpers.js';

describe('messages', () => {
  it('the samples cover every message type', () => {
    expect(sampleMessages().map((s) => s.msg.type).sort((a, b) => a - b)).to.deep.equal([...ALL_MSG_TYPES]);
  });

  it('a PING with ready round-trips, and one without it decodes without the field', () => {
    expect(decodeOne(Buffer.concat(encodeFrame({ type: MsgType.PING, id: 9, ready: true }))).msg).to.deep.equal({ type: MsgType.PING, id: 9, ready: true });
    expect(decodeOne(Buffer.concat(encodeFrame({ type: MsgType.PING, id: 9 }))).msg).to.deep.equal({ type: MsgType.PING, id: 9 });
  });

  for (const s of sampleMessages()) {
    it(`${msgTypeName(s.msg.type)} round-trips through encode and decode`, () => {
      const f = decodeOne(Buffer.concat(encodeFrame(s.msg, s.payload)));
      expect(f.msg).to.deep.equal(s.msg);
      expect(payloadBytes(f).equals(s.payload ?? Buffer.alloc(0))).to.equal(true);
    });
  }

  it('a stream of every message type decodes back in order', () => {
    const samples = sampleMessages();
    const frames = decodeAll([concatFrames(samples)]);
    expect(frames.map((f) => f.msg)).to.deep.equal(samples.map((s) => s.msg));
  });

  it('optional fields that are absent stay absent', () => {
    for (const msg of [
      { type: MsgType.ACK, of: MsgType.ADVISE },
      { type: MsgType.SHUT, status: 'ok' },
      { type: MsgType.ERROR, reason: 'x' },
    ] as const) {
      const f = decodeOne(Buffer.concat(encodeFrame(msg)));
      expect(f.msg).to.deep.equal(msg);
      expect(Object.keys(f.msg)).to.deep.equal(Object.keys(msg));
    }
  });

  it('SHUT carries the destination\'s start time (startedAfterUs), alone or with a reason', () => {
    for (const msg of [
      { type: MsgType.SHUT, status: 'ok', startedAfterUs: 1234 },
      { type: MsgType.SHUT, status: 'failed', reason: 'x', startedAfterUs: 0 },
    ] as const) {
      expect(decodeOne(Buffer.concat(encodeFrame(msg))).msg).to.deep.equal(msg);
    }
  });

  it('PONG carries the answering end\'s clock (clockUs) and SHUT the destination\'s start in that clock (startedAtUs)', () => {
    for (const msg of [
      { type: MsgType.PONG, id: 3, clockUs: 29_761_819_665_123 },
      { type: MsgType.PONG, id: 4 },
      { type: MsgType.SHUT, status: 'ok', startedAfterUs: 1234, startedAtUs: 29_761_820_000_001 },
    ] as const) {
      expect(decodeOne(Buffer.concat(encodeFrame(msg))).msg).to.deep.equal(msg);
    }
  });

  it('msgTypeName names known and unknown types', () => {
    expect(msgTypeName(MsgType.REQ_PAGES)).to.equal('REQ_PAGES');
    expect(msgTypeName(99)).to.equal('type 99');
  });
});

describe('channel roles (allowedOn)', () => {
  const T = MsgType;
  const table: Record<ChannelRole, number[]> = {
    main: [T.SETUP, T.PAGES, T.PAGE_RUN, T.TRIMMED_RUN, T.ZERO, T.DEVICE, T.ROUND, T.ADVISE, T.DISCARD, T.LISTEN, T.RUN, T.END, T.COMPLETE, T.RESUME, T.PING, T.PONG, T.ERROR, T.STOPPED],
    return: [T.ACK, T.REQ_PAGES, T.SHUT, T.RECV_BITMAP, T.RESUME_ACK, T.PING, T.PONG, T.ERROR],
    preempt: [T.PAGES, T.PAGE_RUN, T.ZERO, T.REQ_PAGES, T.PING, T.PONG, T.ERROR],
  };
  for (const role of ['main', 'return', 'preempt'] as const) {
    it(`the ${role} channel carries exactly ${table[role].map(msgTypeName).join(', ')}`, () => {
      expect(ALL_MSG_TYPES.filter((t) => allowedOn(role, t))).to.deep.equal([...table[role]].sort((a, b) => a - b));
    });
  }

  it('a decoder with a role rejects a message not allowed on that channel', () => {
    const bytes = rawFrame({ t: MsgType.REQ_PAGES, b: 'ram0', o: 0, l: 4096 });
    expectProtocolError(() => decodeOne(bytes, { role: 'main' }), 'UNEXPECTED', 'REQ_PAGES is not allowed on the main channel');
  });

  it('a decoder with a role accepts messages allowed on that channel', () => {
    const bytes = rawFrame({ t: MsgType.REQ_PAGES, b: 'ram0', o: 0, l: 4096 });
    expect(decodeOne(bytes, { role: 'return' }).msg.type).to.equal(MsgType.REQ_PAGES);
  });

  it('a decoder without a role accepts any message type', () => {
    const d = new FrameDecoder();
    d.push(concatFrames(sampleMessages()));
    let n = 0;
    while (d.next()) n++;
    expect(n).to.equal(ALL_MSG_TYPES.length);
  });
});
