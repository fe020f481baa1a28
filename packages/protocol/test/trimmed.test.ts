// The trimmed page (TRIMMED_RUN): how much of a page the source keeps, the payload it writes,
// and the destination's checks and fill-out.
import { expect } from 'chai';
import { ProtocolError, TRIM_UNIT, clearTrimmedRun, expandTrimmedRun, keptUnits, writeTrimmedRun } from '@livemig/protocol';
import { expectProtocolError, pattern } from './helpers.js';

const PS = 4096;

/** A page whose last non-zero byte is at `last` (-1: a zero page). */
function pageEndingAt(last: number, pageSize = PS): Buffer {
  const p = Buffer.alloc(pageSize);
  if (last >= 0) {
    p[0] = 1;
    p[last] = 0xa5;
  }
  return p;
}

describe('trimmed pages: keptUnits', () => {
  it('keeps nothing of a zero page', () => {
    expect(keptUnits(pageEndingAt(-1), 0, PS)).to.equal(0);
  });

  it('keeps the whole page when its last bytes are not zero', () => {
    expect(keptUnits(pageEndingAt(PS - 1), 0, PS)).to.equal(PS / TRIM_UNIT);
  });

  it('keeps exactly the units up to the last non-zero byte, for every such byte position up to half the page', () => {
    for (let last = 0; last < PS / 2; last += 7) {
      expect(keptUnits(pageEndingAt(last), 0, PS), `last non-zero byte at ${last}`).to.equal(Math.floor(last / TRIM_UNIT) + 1);
    }
  });

  it('keeps the whole page when more than half of it would be kept', () => {
    expect(keptUnits(pageEndingAt(PS / 2), 0, PS)).to.equal(PS / TRIM_UNIT);
    expect(keptUnits(pageEndingAt(PS - 5), 0, PS)).to.equal(PS / TRIM_UNIT);
  });

  it('keeps one unit of a page whose only non-zero byte is anywhere in its first unit (the ab guest\'s pages), at any offset', () => {
    for (let at = 0; at < TRIM_UNIT; at++) {
      const page = Buffer.alloc(PS);
      page[at] = 0x80;
      const buf = Buffer.concat([pattern(PS), page, pattern(PS, 3)]);
      expect(keptUnits(buf, PS, PS), `non-zero byte at ${at}`).to.equal(1);
    }
  });

  it('keeps nothing of a zero page between pages of data', () => {
    const buf = Buffer.concat([pattern(PS), Buffer.alloc(PS), pattern(PS, 5)]);
    expect(keptUnits(buf, PS, PS)).to.equal(0);
  });

  it('reads the page at the offset given, not its neighbours', () => {
    const buf = Buffer.concat([pattern(PS), pageEndingAt(100), pattern(PS, 9)]);
    expect(keptUnits(buf, PS, PS)).to.equal(2);
  });

  it('measures pages larger than 4 KiB', () => {
    const ps = 2 * 1024 * 1024;
    expect(keptUnits(pageEndingAt(300_000, ps), 0, ps)).to.equal(Math.floor(300_000 / TRIM_UNIT) + 1);
  });
});

describe('trimmed pages: payload', () => {
  const pages = Buffer.concat([pageEndingAt(10), pageEndingAt(-1), pageEndingAt(200), pageEndingAt(2000)]);
  const kept = [0, 0, 0, 0].map((_, i) => keptUnits(pages, i * PS, PS));

  function payloadOf(): Buffer {
    const dst = Buffer.alloc(2 * 4 + 4 * PS);
    const n = writeTrimmedRun(dst, 0, pages, 0, PS, kept, 4);
    return dst.subarray(0, n);
  }

  it('writes a u16 table of kept units and then only the kept bytes', () => {
    const p = payloadOf();
    expect(kept).to.deep.equal([1, 0, 4, 32]);
    expect([0, 1, 2, 3].map((i) => p.readUInt16LE(2 * i))).to.deep.equal(kept);
    expect(p.length).to.equal(8 + (1 + 0 + 4 + 32) * TRIM_UNIT);
  });

  it('fills the pages out again byte for byte, over whatever the buffer held', () => {
    const out = Buffer.alloc(4 * PS, 0xee);
    expandTrimmedRun(payloadOf(), 4, PS, out);
    expect(out.equals(pages)).to.equal(true);
  });

  it('into a zero buffer writes only the kept bytes, and clearTrimmedRun makes it zero again', () => {
    const out = Buffer.alloc(4 * PS);
    const p = payloadOf();
    expandTrimmedRun(p, 4, PS, out, true);
    expect(out.equals(pages)).to.equal(true);
    clearTrimmedRun(p, 4, PS, out);
    expect(out.equals(Buffer.alloc(4 * PS))).to.equal(true);
  });

  describe('at any byte offset (pages kept 0, 1, 4, 5 and 32 units: either side of the small-copy limit)', () => {
    const five = Buffer.concat([pages, pageEndingAt(300)]);
    const units = [0, 1, 2, 3, 4].map((i) => keptUnits(five, i * PS, PS));
    const reference = (): Buffer => {
      const dst = Buffer.alloc(2 * 5 + 5 * PS);
      return dst.subarray(0, writeTrimmedRun(dst, 0, five, 0, PS, units, 5));
    };

    it('writes the same payload whatever the offsets of the pages and of the payload', () => {
      expect(units).to.deep.equal([1, 0, 4, 32, 5]);
      const want = reference();
      for (let srcShift = 0; srcShift < 4; srcShift++) {
        for (let dstOff = 0; dstOff < 4; dstOff++) {
          const src = Buffer.alloc(srcShift + five.length);
          five.copy(src, srcShift);
          const dst = Buffer.alloc(dstOff + want.length, 0xee);
          const n = writeTrimmedRun(dst, dstOff, src, srcShift, PS, units, 5);
          expect(n, `src +${srcShift}, dst +${dstOff}`).to.equal(want.length);
          expect(dst.subarray(dstOff).equals(want), `src +${srcShift}, dst +${dstOff}`).to.equal(true);
        }
      }
    });

    it('fills out and clears again byte for byte whatever the offsets of the payload and of the buffer', () => {
      const want = reference();
      for (let payloadShift = 0; payloadShift < 4; payloadShift++) {
        for (let outShift = 0; outShift < 4; outShift++) {
          const at = Buffer.alloc(payloadShift + want.length);
          want.copy(at, payloadShift);
          const payload = at.subarray(payloadShift);
          const out = Buffer.alloc(outShift + 5 * PS, 0xee).subarray(outShift);
          expandTrimmedRun(payload, 5, PS, out);
          expect(out.equals(five), `payload +${payloadShift}, out +${outShift}`).to.equal(true);
          out.fill(0);
          expandTrimmedRun(payload, 5, PS, out, true);
          expect(out.equals(five), `payload +${payloadShift}, out +${outShift}, zero buffer`).to.equal(true);
          clearTrimmedRun(payload, 5, PS, out);
          expect(out.every((b) => b === 0), `payload +${payloadShift}, out +${outShift}, cleared`).to.equal(true);
        }
      }
    });
  });

  it('refuses a table entry larger than a page, naming the page, and writes nothing', () => {
    const p = Buffer.from(payloadOf());
    p.writeUInt16LE(PS / TRIM_UNIT + 1, 2 * 2);
    const out = Buffer.alloc(4 * PS, 0xee);
    expectProtocolError(() => expandTrimmedRun(p, 4, PS, out), 'RANGE', 'TRIMMED_RUN: page 2 keeps 65 units of 64 bytes, more than its 4096-byte page');
    expect(out.every((b) => b === 0xee)).to.equal(true);
  });

  it('refuses a table whose sum is not what the payload carries', () => {
    const p = Buffer.from(payloadOf());
    p.writeUInt16LE(2, 0);
    expectProtocolError(() => expandTrimmedRun(p, 4, PS, Buffer.alloc(4 * PS)), 'MALFORMED', 'TRIMMED_RUN: the table keeps 2432 bytes, the payload carries 2368 after it');
  });

  it('refuses a payload shorter than its table', () => {
    expectProtocolError(() => expandTrimmedRun(Buffer.alloc(3), 2, PS, Buffer.alloc(2 * PS)), 'TRUNCATED', 'shorter than the 4-byte table of 2 pages');
  });

  it('refuses an output buffer smaller than the pages', () => {
    expect(() => expandTrimmedRun(payloadOf(), 4, PS, Buffer.alloc(3 * PS))).to.throw(ProtocolError, '12288-byte buffer for 4 pages');
  });
});
