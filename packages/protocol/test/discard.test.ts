import { expect } from 'chai';
import { DiscardBatcher, MAX_DISCARDS_PER_COMMAND, MsgType, encodeFrame, type DiscardMessage } from '@livemig/protocol';
import { decodeAll, expectProtocolError } from './helpers.js';

const PS = 4096;
function batcher(max?: number) {
  const sent: DiscardMessage[] = [];
  const b = new DiscardBatcher((m) => sent.push(m), max);
  return { b, sent };
}
const every = (n: number, step = 2) => Array.from({ length: n }, (_, i) => i * step); // non-contiguous pages

describe('DiscardBatcher', () => {
  it('allows at most 12 ranges per command, as QEMU', () => {
    expect(MAX_DISCARDS_PER_COMMAND).to.equal(12);
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages(every(30), PS);
    b.finish();
    expect(sent.map((m) => m.ranges.length)).to.deep.equal([12, 12, 6]);
  });

  it('merges contiguous pages into one range', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages([0, 1, 2, 5, 6, 9], PS);
    b.finish();
    expect(sent).to.deep.equal([{ type: MsgType.DISCARD, block: 'ram0', ranges: [[0, 3 * PS], [5 * PS, 2 * PS], [9 * PS, PS]] }]);
  });

  it('merges a range that starts where the previous one ended', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addRange(0, 8192);
    b.addRange(8192, 4096);
    b.finish();
    expect(sent[0]!.ranges).to.deep.equal([[0, 12288]]);
  });

  it('still merges into the 12th range of a command', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages([...every(12), 23, 24, 25], PS); // 22 is the 12th; 23..25 extend it
    b.finish();
    expect(sent).to.have.length(1);
    expect(sent[0]!.ranges.at(-1)).to.deep.equal([22 * PS, 4 * PS]);
  });

  it('sends nothing until 12 ranges are ready or finish() is called', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages(every(11), PS);
    expect(sent).to.have.length(0);
    b.finish();
    expect(sent).to.have.length(1);
  });

  it('finish() flushes the partial command', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages(every(13), PS);
    expect(sent.map((m) => m.ranges.length)).to.deep.equal([12]);
    b.finish();
    expect(sent.map((m) => m.ranges.length)).to.deep.equal([12, 1]);
  });

  it('a block with nothing to discard sends no command', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.finish();
    expect(sent).to.have.length(0);
    expect(b.stats).to.deep.equal({ ranges: 0, commands: 0 });
  });

  it('counts ranges and commands across blocks', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages(every(25), PS);
    b.finish();
    b.start('vram');
    b.addPages([0, 1, 2, 3], PS);
    b.finish();
    expect(b.stats).to.deep.equal({ ranges: 26, commands: 4 });
    expect(sent.map((m) => m.block)).to.deep.equal(['ram0', 'ram0', 'ram0', 'vram']);
  });

  it('starting a new block finishes the previous one', () => {
    const { b, sent } = batcher();
    b.start('a');
    b.addRange(0, PS);
    b.start('b');
    b.addRange(0, PS);
    b.finish();
    expect(sent.map((m) => [m.block, m.ranges])).to.deep.equal([['a', [[0, PS]]], ['b', [[0, PS]]]]);
  });

  it('rejects ranges that go backwards or overlap', () => {
    const { b } = batcher();
    b.start('ram0');
    b.addRange(8 * PS, PS);
    expectProtocolError(() => b.addRange(4 * PS, PS), 'ORDER', 'discard range at 0x4000 overlaps or precedes the previous one ending at 0x9000');
  });

  it('rejects an empty range', () => {
    const { b } = batcher();
    b.start('ram0');
    expectProtocolError(() => b.addRange(0, 0), 'RANGE', 'is invalid');
  });

  it('refuses ranges before start()', () => {
    expect(() => batcher().b.addRange(0, PS)).to.throw(/before start/);
  });

  it('honours a smaller maxRangesPerCommand and refuses more than 12', () => {
    const { b, sent } = batcher(4);
    b.start('ram0');
    b.addPages(every(10), PS);
    b.finish();
    expect(sent.map((m) => m.ranges.length)).to.deep.equal([4, 4, 2]);
    expect(() => new DiscardBatcher(() => {}, 13)).to.throw(RangeError);
  });

  it('produces commands that pass the decoder\'s validation', () => {
    const { b, sent } = batcher();
    b.start('ram0');
    b.addPages(every(40, 3), PS);
    b.finish();
    const frames = decodeAll([Buffer.concat(sent.flatMap((m) => encodeFrame(m)))]);
    expect(frames.map((f) => f.msg)).to.deep.equal(sent);
  });
});
