/** The host probe: a real report on this host, simulated refusals, and the CLI. */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { formatReport, probeHost } from '@livemig/uffd';

const BIN = fileURLToPath(new URL('../bin/probe.js', import.meta.url));

describe('probeHost', function () {
  this.timeout(20000);

  it('says postcopy is possible on this host, with every required check passing', () => {
    const r = probeHost();
    expect(r.ok, formatReport(r)).to.equal(true);
    expect(r.how).to.be.oneOf(['syscall', 'dev']);
    expect(r.pageSize).to.equal(4096);
    expect(r.features).to.include('THREAD_ID');
    expect(r.ioctls).to.include.members(['UFFDIO_COPY', 'UFFDIO_ZEROPAGE', 'UFFDIO_WAKE']);
    for (const name of ['userfaultfd', 'UFFDIO_API', 'register', 'UFFDIO_COPY', 'UFFDIO_ZEROPAGE', 'UFFDIO_WAKE']) {
      const k = r.checks.find((c) => c.name === name)!;
      expect(k, name).to.include({ ok: true, required: true });
    }
    for (const k of r.checks) if (!k.ok) expect(k.reason, k.name).to.be.a('string').and.not.empty;
    expect(r.kernel).to.be.a('string').and.not.empty;
  });

  it('is not ok when userfaultfd is refused, and says why in plain language', () => {
    const r = probeHost({ refuse: ['userfaultfd'] });
    expect(r.ok).to.equal(false);
    expect(r.how).to.equal(null);
    const k = r.checks.find((c) => c.name === 'userfaultfd')!;
    expect(k.ok).to.equal(false);
    expect(k.reason).to.match(/refused .*simulated.*no postcopy/);
    expect(r.checks.find((c) => c.name === 'UFFDIO_COPY')!.ok).to.equal(false);
    expect(formatReport(r)).to.match(/postcopy: NOT possible \(userfaultfd/);
  });

  it('is not ok when UFFDIO_COPY is refused', () => {
    const r = probeHost({ refuse: ['UFFDIO_COPY'] });
    expect(r.ok).to.equal(false);
    expect(r.ioctls).to.not.include('UFFDIO_COPY');
    expect(r.checks.find((c) => c.name === 'UFFDIO_COPY')!.reason).to.match(/cannot resolve faults/);
  });

  it('stays ok with a refused optional feature (THREAD_ID) but drops it and explains the loss', () => {
    const r = probeHost({ refuse: ['THREAD_ID'] });
    expect(r.ok).to.equal(true);
    expect(r.features).to.not.include('THREAD_ID');
    const k = r.checks.find((c) => c.name === 'THREAD_ID')!;
    expect(k).to.include({ ok: false, required: false });
    expect(k.reason).to.match(/blocktime/);
  });

  it('bin/probe.js prints JSON with --json and exits 1 when postcopy cannot work', () => {
    const json = JSON.parse(execFileSync(process.execPath, [BIN, '--json'], { encoding: 'utf8' })) as { ok: boolean };
    expect(json.ok).to.equal(true);
    const refused = spawnSync(process.execPath, [BIN, '--refuse', 'register'], { encoding: 'utf8' });
    expect(refused.status).to.equal(1);
    expect(refused.stdout).to.match(/postcopy: NOT possible \(register/);
  });
});
