/**
 * probe.ts — owns the host report: can this host do userfaultfd postcopy (our
 * postcopy_ram_supported_by_host) and what else it offers (THREAD_ID for blocktime, huge
 * pages, dirty tracking for precopy). Every check is run for real on scratch memory; `refuse`
 * makes named checks or features count as missing, to test how callers handle a refusal.
 */
import { readFileSync } from 'node:fs';
import { arch, release } from 'node:os';
import { c, errno } from './libc.js';
import { SyscallError, errnoName, hex } from './errors.js';
import { HOST_PAGE_SIZE, MFD_CLOEXEC, MFD_HUGETLB, MFD_HUGE_2MB, mapAnonymous } from './memory.js';
import {
  Userfaultfd, UFFD_API, UFFD_FEATURES, featureNames,
} from './userfaultfd.js';
import { DirtyTracker, type DirtyMethod, type MethodSupport } from './dirty.js';

export interface HostCheck {
  name: string;
  ok: boolean;
  /** Postcopy is impossible when a required check fails. */
  required: boolean;
  /** What was found. */
  detail: string;
  /** Why it is missing and what that means, in plain language (only when not ok). */
  reason?: string;
}

export interface HostReport {
  /** Postcopy is possible: every required check passed. */
  ok: boolean;
  /** How a userfaultfd opens here, or null when it does not. */
  how: 'syscall' | 'dev' | null;
  kernel: string;
  arch: string;
  pageSize: number;
  /** userfaultfd API features the kernel offers, by name (less any refused). */
  features: string[];
  featureMask: number;
  /** ioctls allowed on an anonymous range registered MISSING. */
  ioctls: string[];
  hugepages: { sizeKiB: number; total: number; free: number; mfdHugetlb: boolean };
  dirtyTracking: { wpAsync: boolean; softDirty: boolean; method: DirtyMethod | null };
  checks: HostCheck[];
}

export interface ProbeOptions {
  /** Check or feature names (`userfaultfd`, `UFFDIO_COPY`, `THREAD_ID`, …) to treat as missing. */
  refuse?: readonly string[];
}

/** What each check's absence means, for `reason`. */
const MEANING: Record<string, string> = {
  userfaultfd: 'without userfaultfd there is no postcopy: the destination cannot catch the guest\'s accesses to pages that have not arrived',
  UFFDIO_API: 'without the API handshake no userfaultfd can be used',
  register: 'guest RAM cannot be registered for missing-page faults, so postcopy cannot start',
  UFFDIO_COPY: 'pages cannot be placed atomically into registered memory, so postcopy cannot resolve faults',
  UFFDIO_ZEROPAGE: 'zero pages cannot be placed without copying a zero buffer',
  UFFDIO_WAKE: 'faulting threads cannot be woken after batched placement',
  THREAD_ID: 'fault messages will not say which vCPU thread faulted, so per-vCPU blocktime cannot be measured (needs Linux 4.14)',
  MISSING_SHMEM: 'memfd/shmem-backed RAM cannot be used with postcopy (anonymous RAM still can; needs Linux 4.11)',
  MISSING_HUGETLBFS: 'huge-page-backed RAM cannot be used with postcopy',
  hugepages: 'RAM cannot be backed by 2 MiB huge pages; 4 KiB pages still work',
  WP_ASYNC: 'the source cannot track dirty pages with write-protection; the soft-dirty fallback is slower and needs writers paused during scans (needs Linux 6.7)',
  PAGEMAP_SCAN: 'the source cannot collect written pages in one ioctl per batch (needs Linux 6.7)',
  'soft-dirty': 'the soft-dirty fallback for dirty tracking is unavailable',
  'dirty-tracking': 'the source cannot find pages written during precopy, so only postcopy (or a paused guest) can migrate',
};

const REQUIRED = new Set(['userfaultfd', 'UFFDIO_API', 'register', 'UFFDIO_COPY', 'UFFDIO_ZEROPAGE', 'UFFDIO_WAKE']);

function plainOpenReason(e: unknown): string {
  if (e instanceof SyscallError) {
    if (e.code === 'EPERM' || e.code === 'EACCES') {
      return 'userfaultfd is not permitted for this user: run as root, set vm.unprivileged_userfaultfd=1, or give this user read/write access to /dev/userfaultfd';
    }
    if (e.code === 'ENOSYS') return 'the kernel has no userfaultfd (built without CONFIG_USERFAULTFD)';
    if (e.code === 'ENOENT') return 'the syscall was refused and /dev/userfaultfd does not exist (needs Linux 6.1)';
  }
  return e instanceof Error ? e.message : String(e);
}

function readMeminfo(): { total: number; free: number; sizeKiB: number } {
  let text = '';
  try {
    text = readFileSync('/proc/meminfo', 'utf8');
  } catch {
    return { total: 0, free: 0, sizeKiB: 0 };
  }
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { total: field('HugePages_Total'), free: field('HugePages_Free'), sizeKiB: field('Hugepagesize') };
}

function readSysctl(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Probes the host. Never throws for a missing capability: it is reported as a failed check. */
export function probeHost(opts: ProbeOptions = {}): HostReport {
  const refuse = new Set(opts.refuse ?? []);
  const checks: HostCheck[] = [];
  const add = (name: string, ok: boolean, detail: string, reason?: string): HostCheck => {
    const required = REQUIRED.has(name);
    let check: HostCheck;
    if (refuse.has(name)) {
      check = { name, ok: false, required, detail: `${detail} — refused (simulated)`, reason: `refused by the caller (simulated): ${MEANING[name] ?? name}` };
    } else if (ok) check = { name, ok, required, detail };
    else check = { name, ok, required, detail, reason: `${reason ?? 'missing'}: ${MEANING[name] ?? name}` };
    checks.push(check);
    return check;
  };
  const passed = (name: string): boolean => checks.some((k) => k.name === name && k.ok);

  // 1. userfaultfd: the syscall, else /dev/userfaultfd.
  let how: 'syscall' | 'dev' | null = null;
  let available = 0;
  let sysErr: unknown = null;
  let openErr: unknown = null;
  const unpriv = readSysctl('/proc/sys/vm/unprivileged_userfaultfd');
  const who = process.getuid?.() === 0 ? 'running as root' : `uid ${process.getuid?.()}`;
  try {
    available = Userfaultfd.probe({ via: 'syscall' }).features;
    how = 'syscall';
  } catch (e) {
    sysErr = e;
    try {
      available = Userfaultfd.probe({ via: 'dev' }).features;
      how = 'dev';
    } catch (e2) {
      openErr = e2;
    }
  }
  const sysCode = sysErr instanceof SyscallError ? sysErr.code : '';
  const uffdCheck = add(
    'userfaultfd',
    how !== null,
    how === 'syscall' ? `syscall 323 (${who}, vm.unprivileged_userfaultfd=${unpriv ?? '?'})`
      : how === 'dev' ? `/dev/userfaultfd (the syscall said ${sysCode}; ${who})`
      : `syscall: ${(sysErr as Error | null)?.message ?? '?'}; /dev/userfaultfd: ${(openErr as Error | null)?.message ?? '?'}`,
    plainOpenReason(openErr ?? sysErr),
  );
  const uffdOk = uffdCheck.ok;
  if (!uffdOk) how = null;

  // Features, less refused ones.
  let mask = uffdOk ? available : 0;
  for (const name of refuse) {
    const bit = UFFD_FEATURES[name.replace(/^UFFD_FEATURE_/, '')];
    if (bit !== undefined) mask &= ~bit;
  }
  add('UFFDIO_API', uffdOk, uffdOk ? `API ${hex(UFFD_API)}, features ${hex(available)} (${featureNames(available).length} features)` : 'not tried', 'needs userfaultfd');

  // 2. Register a scratch area MISSING, place pages, unregister.
  let ioctls: string[] = [];
  if (passed('UFFDIO_API')) {
    let detail = '';
    let failure: string | undefined;
    const m = mapAnonymous(16 * HOST_PAGE_SIZE, { name: 'probe area' });
    let u: Userfaultfd | null = null;
    try {
      u = new Userfaultfd({ features: 0 });
      const r = u.register(m.addr, m.length, { missing: true }, 'probe area');
      ioctls = r.names;
      const steps: string[] = [`registered ${m.length / 1024} KiB of anonymous memory (MISSING)`];
      const page = Buffer.alloc(HOST_PAGE_SIZE, 0x5a);
      if (r.names.includes('UFFDIO_COPY')) {
        const n = u.copy(m.addr, page, HOST_PAGE_SIZE, 0, 'probe area, page 0');
        if (n !== HOST_PAGE_SIZE || m.bytes(0, HOST_PAGE_SIZE).some((b) => b !== 0x5a)) throw new Error(`UFFDIO_COPY placed ${n} bytes, content wrong`);
        steps.push('placed a page by COPY');
      }
      if (r.names.includes('UFFDIO_ZEROPAGE')) {
        const n = u.zeropage(m.addr + HOST_PAGE_SIZE, HOST_PAGE_SIZE, 0, 'probe area, page 1');
        if (n !== HOST_PAGE_SIZE || m.bytes(HOST_PAGE_SIZE, HOST_PAGE_SIZE).some((b) => b !== 0)) throw new Error(`UFFDIO_ZEROPAGE placed ${n} bytes, content wrong`);
        steps.push('one by ZEROPAGE');
      }
      if (r.names.includes('UFFDIO_WAKE')) {
        u.wake(m.addr + 2 * HOST_PAGE_SIZE, HOST_PAGE_SIZE, 'probe area, page 2');
        steps.push('woke a range');
      }
      u.unregister(m.addr, m.length, 'probe area');
      steps.push('unregistered');
      detail = steps.join(', ');
    } catch (e) {
      failure = (e as Error).message;
      detail = failure;
    } finally {
      u?.close();
      m.unmap();
    }
    add('register', failure === undefined, detail, failure);
  } else {
    add('register', false, 'not tried', 'needs the userfaultfd API');
  }
  for (const name of ['UFFDIO_COPY', 'UFFDIO_ZEROPAGE', 'UFFDIO_WAKE']) {
    const have = passed('register') && ioctls.includes(name);
    add(name, have, have ? 'allowed on registered anonymous memory and works' : passed('register') ? 'not in the registered range\'s ioctls' : 'not tried', passed('register') ? 'the kernel does not offer it' : 'needs a registered range');
  }

  // 3. Features that matter beyond the minimum.
  for (const name of ['THREAD_ID', 'MISSING_SHMEM', 'MISSING_HUGETLBFS']) {
    const have = (mask & UFFD_FEATURES[name]!) !== 0;
    add(name, have, have ? `UFFD_FEATURE_${name} offered` : `UFFD_FEATURE_${name} not offered`, uffdOk ? 'the kernel does not offer it' : 'needs userfaultfd');
  }

  // 4. Huge pages.
  const mi = readMeminfo();
  let mfdHugetlb = false;
  let mfdError = '';
  const hfd = c.memfdCreate('livemig:probe-hugetlb', MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
  if (hfd >= 0) {
    mfdHugetlb = true;
    c.close(hfd);
  } else mfdError = `memfd_create(MFD_HUGETLB) failed: ${errnoName(errno())}`;
  const hugeOk = mfdHugetlb && mi.total > 0 && mi.free > 0 && (mask & UFFD_FEATURES['MISSING_HUGETLBFS']!) !== 0;
  add('hugepages', hugeOk,
    `${mi.total} reserved, ${mi.free} free (${mi.sizeKiB} KiB); MFD_HUGETLB ${mfdHugetlb ? 'works' : mfdError}`,
    !mfdHugetlb ? mfdError : mi.total === 0 ? 'no huge pages reserved (as root: echo N > /proc/sys/vm/nr_hugepages)' : mi.free === 0 ? 'all reserved huge pages are in use' : 'MISSING_HUGETLBFS is not offered');

  // 5. Dirty tracking (the source side of precopy).
  const wpFeatures = (mask & UFFD_FEATURES['WP_ASYNC']!) !== 0 && (mask & UFFD_FEATURES['WP_UNPOPULATED']!) !== 0;
  add('WP_ASYNC', wpFeatures, wpFeatures ? 'UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED offered' : 'WP_ASYNC or WP_UNPOPULATED not offered', uffdOk ? 'the kernel does not offer it' : 'needs userfaultfd');
  let support: { 'wp-async': MethodSupport; 'soft-dirty': MethodSupport };
  try {
    support = DirtyTracker.supported();
  } catch (e) {
    support = { 'wp-async': { ok: false, reason: (e as Error).message }, 'soft-dirty': { ok: false, reason: (e as Error).message } };
  }
  const scanOk = passed('WP_ASYNC') && support['wp-async'].ok;
  add('PAGEMAP_SCAN', scanOk, scanOk ? 'wrote one page of a write-protected area, one scan found exactly it' : 'not working',
    !passed('WP_ASYNC') ? 'needs WP_ASYNC' : support['wp-async'].reason);
  const sd = add('soft-dirty', support['soft-dirty'].ok, support['soft-dirty'].ok ? 'clear_refs + pagemap bit 55 found exactly the written page' : 'not working', support['soft-dirty'].reason);
  const method: DirtyMethod | null = passed('PAGEMAP_SCAN') ? 'wp-async' : sd.ok ? 'soft-dirty' : null;
  add('dirty-tracking', method !== null, method ? `method ${method}` : 'no method works', 'neither wp-async nor soft-dirty works');

  return {
    ok: checks.every((k) => k.ok || !k.required),
    how,
    kernel: release(),
    arch: arch(),
    pageSize: HOST_PAGE_SIZE,
    features: featureNames(mask),
    featureMask: mask,
    ioctls: passed('register') ? ioctls.filter((n) => !refuse.has(n)) : [],
    hugepages: { ...mi, mfdHugetlb },
    dirtyTracking: { wpAsync: passed('PAGEMAP_SCAN'), softDirty: sd.ok, method },
    checks,
  };
}

/** The report as text for humans. */
export function formatReport(r: HostReport): string {
  const lines: string[] = [];
  lines.push(`livemig host probe: Linux ${r.kernel} (${r.arch}), page size ${r.pageSize}, huge pages ${r.hugepages.sizeKiB} KiB`);
  const width = Math.max(...r.checks.map((k) => k.name.length));
  for (const k of r.checks) {
    const mark = k.ok ? 'ok  ' : k.required ? 'FAIL' : 'no  ';
    lines.push(`  ${mark} ${k.name.padEnd(width)}  ${k.detail}${k.required ? '' : ' (optional)'}`);
    if (!k.ok && k.reason) lines.push(`       ${' '.repeat(width)}  → ${k.reason}`);
  }
  lines.push(`  features: ${r.features.join(' ') || '(none)'}`);
  lines.push(r.ok
    ? `postcopy: possible (userfaultfd via ${r.how}; dirty tracking: ${r.dirtyTracking.method ?? 'none'})`
    : `postcopy: NOT possible (${r.checks.filter((k) => k.required && !k.ok).map((k) => k.name).join(', ')})`);
  return lines.join('\n');
}


