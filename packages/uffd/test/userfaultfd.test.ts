/** Opening a userfaultfd, the API handshake, registration and the errors its calls report. */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import {
  DEFAULT_FEATURES, HOST_PAGE_SIZE, SyscallError, UFFD_FEATURE_EVENT_REMOVE, UFFD_FEATURE_THREAD_ID, UFFD_FEATURE_WP_ASYNC,
  Userfaultfd, featureNames, ioctlNames, mapAnonymous,
} from '@livemig/uffd';
import { cleanup, track } from './helpers.js';

const PS = HOST_PAGE_SIZE;

describe('Userfaultfd', () => {
  afterEach(cleanup);

  it('opens by the userfaultfd syscall when it is allowed', () => {
    const u = track.uffd(new Userfaultfd({ via: 'syscall' }));
    expect(u.how).to.equal('syscall');
    expect(u.fd).to.be.greaterThan(2);
  });

  it('opens through /dev/userfaultfd and USERFAULTFD_IOC_NEW', function () {
    if (!existsSync('/dev/userfaultfd')) {
      console.log('      skipped: /dev/userfaultfd does not exist (Linux < 6.1)');
      this.skip();
    }
    const u = track.uffd(new Userfaultfd({ via: 'dev' }));
    expect(u.how).to.equal('dev');
    expect(u.ioctls & 1n).to.equal(1n); // UFFDIO_REGISTER
  });

  it('probes the available features on a throwaway descriptor and names them', () => {
    const available = Userfaultfd.availableFeatures();
    expect(available & UFFD_FEATURE_THREAD_ID).to.equal(UFFD_FEATURE_THREAD_ID);
    expect(featureNames(available)).to.include('THREAD_ID');
    expect(featureNames(UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_REMOVE)).to.deep.equal(['EVENT_REMOVE', 'THREAD_ID']);
  });

  it('grants exactly the requested features the kernel offers (default THREAD_ID, MISSING_SHMEM, MISSING_HUGETLBFS)', () => {
    const available = Userfaultfd.availableFeatures();
    const u = track.uffd(new Userfaultfd());
    expect(u.features).to.equal(DEFAULT_FEATURES & available);
    expect(u.availableFeatures).to.equal(available);
    expect(ioctlNames(u.ioctls)).to.include.members(['UFFDIO_API', 'UFFDIO_REGISTER', 'UFFDIO_UNREGISTER']);
    const v = track.uffd(new Userfaultfd({ features: UFFD_FEATURE_WP_ASYNC | (1 << 30) }));
    expect(v.features).to.equal(UFFD_FEATURE_WP_ASYNC & available);
  });

  it('refuses to open when a required feature is missing, naming it', () => {
    expect(() => new Userfaultfd({ requiredFeatures: 1 << 30 })).to.throw(/lacks required features bit30/);
  });

  it('returns the ioctls allowed on a range registered MISSING, as a mask and by name', () => {
    const m = track.mapping(mapAnonymous(4 * PS, { name: 'ram0' }));
    const u = track.uffd(new Userfaultfd());
    const r = u.register(m.addr, m.length, { missing: true });
    expect(r.names).to.include.members(['UFFDIO_COPY', 'UFFDIO_ZEROPAGE', 'UFFDIO_WAKE']);
    expect(ioctlNames(r.ioctls)).to.deep.equal(r.names);
    u.unregister(m.addr, m.length);
  });

  it('throws "UFFDIO_REGISTER failed: EINVAL (...)" for an unaligned address', () => {
    const m = track.mapping(mapAnonymous(4 * PS, { name: 'ram0' }));
    const u = track.uffd(new Userfaultfd());
    let called = 0;
    expect(() => u.register(m.addr + 1, PS, { missing: true }, () => `ram0, offset 0x1 (${++called})`))
      .to.throw(SyscallError, /^UFFDIO_REGISTER failed: EINVAL \(ram0, offset 0x1 \(1\)\)$/);
    expect(called).to.equal(1);
  });

  it('throws a SyscallError naming the call, errno and object when UFFDIO_COPY targets an unregistered range', () => {
    const m = track.mapping(mapAnonymous(2 * PS, { name: 'ram1' }));
    const u = track.uffd(new Userfaultfd());
    try {
      u.copy(m.addr, Buffer.alloc(PS), PS, 0, 'block ram1, offset 0x0');
      expect.fail('copy succeeded');
    } catch (e) {
      expect(e).to.be.instanceOf(SyscallError);
      const err = e as SyscallError;
      expect(err.call).to.equal('UFFDIO_COPY');
      expect(err.code).to.equal('ENOENT');
      expect(err.message).to.equal('UFFDIO_COPY failed: ENOENT (block ram1, offset 0x0)');
    }
  });

  it('refuses a Buffer source shorter than the copy', () => {
    const u = track.uffd(new Userfaultfd());
    expect(() => u.copy(0x100000, Buffer.alloc(16), PS)).to.throw(RangeError, /source has 16 bytes/);
  });

  it('reads no messages (not an error) when none are pending', () => {
    const u = track.uffd(new Userfaultfd());
    expect(u.readEvents()).to.deep.equal([]);
    expect(u.readRaw(Buffer.alloc(64))).to.equal(0);
  });

  it('wraps a descriptor from elsewhere with fromFd without taking ownership', () => {
    const u = track.uffd(new Userfaultfd());
    const m = track.mapping(mapAnonymous(2 * PS));
    const w = Userfaultfd.fromFd(u.fd, u.features);
    expect(w.how).to.equal('fd');
    w.register(m.addr, m.length, { missing: true });
    expect(w.copy(m.addr, Buffer.alloc(PS, 3), PS)).to.equal(PS);
    w.close();
    expect(w.fd).to.equal(-1);
    expect(u.zeropage(m.addr + PS, PS)).to.equal(PS); // still open through u
  });

  it('fails calls after close with EBADF instead of touching a reused descriptor', () => {
    const u = new Userfaultfd();
    u.close();
    u.close();
    expect(() => u.wake(0x100000, PS)).to.throw(SyscallError, /^UFFDIO_WAKE failed: EBADF/);
  });
});
