/** Mappings: views are refused once unmapped, and failing calls throw SyscallError. */
import { expect } from 'chai';
import { HOST_PAGE_SIZE, SyscallError, createMemfd, madvise, mapAnonymous, mapShared } from '@livemig/uffd';

describe('Mapping', () => {
  it('refuses views after unmap', () => {
    const m = mapAnonymous(2 * HOST_PAGE_SIZE, { name: 'ram0' });
    m.bytes()[0] = 1;
    m.unmap();
    expect(m.mapped).to.equal(false);
    expect(() => m.view()).to.throw(/view on unmapped memory \(ram0\)/);
    expect(() => m.bytes(0, 1)).to.throw(/unmapped memory/);
    m.unmap();
  });

  it('throws "madvise(MADV_DONTNEED) failed: EINVAL (...)" for an unaligned address', () => {
    const m = mapAnonymous(HOST_PAGE_SIZE);
    try {
      expect(() => madvise(m.addr + 1, HOST_PAGE_SIZE, 'dontneed', 'ram0, offset 0x1'))
        .to.throw(SyscallError, /^madvise\(MADV_DONTNEED\) failed: EINVAL \(ram0, offset 0x1\)$/);
    } finally {
      m.unmap();
    }
  });

  it('maps a second view of a memfd that sees the same bytes', () => {
    const a = createMemfd(HOST_PAGE_SIZE, { name: 'shm' });
    const b = mapShared(a.fd, a.length, { name: 'shm view' });
    try {
      a.bytes()[10] = 99;
      expect(b.bytes()[10]).to.equal(99);
    } finally {
      b.unmap();
      a.unmap();
    }
  });
});
