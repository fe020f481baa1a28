/** Decoding `uffd_msg` records (32 bytes, packed) built by hand. */
import { expect } from 'chai';
import {
  UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP, UFFD_MSG_SIZE,
  UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE, Userfaultfd,
  decodeMessages, faultAddress, faultFlags, faultTid, msgEvent,
} from '@livemig/uffd';

function msgs(...fill: Array<(b: Buffer, off: number) => void>): Buffer {
  const b = Buffer.alloc(fill.length * UFFD_MSG_SIZE);
  fill.forEach((f, i) => f(b, i * UFFD_MSG_SIZE));
  return b;
}

describe('uffd_msg decoding', () => {
  const buf = msgs(
    (b, o) => { b[o] = UFFD_EVENT_PAGEFAULT; b.writeBigUInt64LE(BigInt(UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP), o + 8); b.writeBigUInt64LE(0x7f12_3456_7000n, o + 16); b.writeUInt32LE(4242, o + 24); },
    (b, o) => { b[o] = UFFD_EVENT_FORK; b.writeUInt32LE(17, o + 8); },
    (b, o) => { b[o] = UFFD_EVENT_REMAP; b.writeBigUInt64LE(0x10000n, o + 8); b.writeBigUInt64LE(0x7fff_0000_0000n, o + 16); b.writeBigUInt64LE(0x3000n, o + 24); },
    (b, o) => { b[o] = UFFD_EVENT_REMOVE; b.writeBigUInt64LE(0x20000n, o + 8); b.writeBigUInt64LE(0x24000n, o + 16); },
    (b, o) => { b[o] = UFFD_EVENT_UNMAP; b.writeBigUInt64LE(0x30000n, o + 8); b.writeBigUInt64LE(0x31000n, o + 16); },
    (b, o) => { b[o] = 0x42; },
    (b, o) => { b[o] = UFFD_EVENT_PAGEFAULT; b.writeBigUInt64LE(BigInt(UFFD_PAGEFAULT_FLAG_MINOR), o + 8); b.writeBigUInt64LE(0x1000n, o + 16); },
  );

  it('reads page-fault fields with the allocation-free helpers', () => {
    expect(msgEvent(buf, 0)).to.equal(UFFD_EVENT_PAGEFAULT);
    expect(faultAddress(buf, 0)).to.equal(0x7f12_3456_7000);
    expect(faultTid(buf, 0)).to.equal(4242);
    expect(faultFlags(buf, 0)).to.equal(UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP);
    expect(Userfaultfd.faultAddress).to.equal(faultAddress);
  });

  it('decodes PAGEFAULT, FORK, REMAP, REMOVE, UNMAP and unknown events', () => {
    expect(decodeMessages(buf, 7)).to.deep.equal([
      { event: 'pagefault', flags: 3, address: 0x7f12_3456_7000, ptid: 4242, write: true, wp: true, minor: false },
      { event: 'fork', ufd: 17 },
      { event: 'remap', from: 0x10000, to: 0x7fff_0000_0000, len: 0x3000 },
      { event: 'remove', start: 0x20000, end: 0x24000 },
      { event: 'unmap', start: 0x30000, end: 0x31000 },
      { event: 'unknown', code: 0x42 },
      { event: 'pagefault', flags: 4, address: 0x1000, ptid: 0, write: false, wp: false, minor: true },
    ]);
  });
});
