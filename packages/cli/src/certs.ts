/**
 * certs.ts — `migrate certs`: writes a CA, a server certificate for the destination's names
 * and IPs, and a client certificate, in QEMU's x509 layout (a thin layer over
 * `createCertificates` from @livemig/transport). Prints the files written; exit 1 on failure.
 */
import { createCertificates } from '@livemig/transport/certs';

export interface CertsArgs {
  dir: string;
  hosts: string;
  days: number;
  cn: string;
  force: boolean;
}

/** Splits `--hosts a,b,[::1]` into names and IPs (brackets around an IPv6 address are allowed). */
export function parseHosts(text: string): string[] {
  return text
    .split(',')
    .map((h) => h.trim())
    .filter((h) => h !== '')
    .map((h) => (h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h));
}

/** What is wrong with the arguments (a usage error), or null. */
export function checkCertsArgs(a: CertsArgs): string | null {
  if (a.dir.trim() === '') return '--dir is empty';
  if (parseHosts(a.hosts).length === 0) return '--hosts needs at least one DNS name or IP address';
  if (!Number.isInteger(a.days) || a.days < 1) return `--days must be a whole number ≥ 1, got ${a.days}`;
  if (a.cn.trim() === '') return '--cn is empty';
  return null;
}

/** Exit code: 0 written, 1 failed (e.g. a file exists without --force), 2 bad arguments. */
export async function runCerts(a: CertsArgs): Promise<number> {
  const usage = checkCertsArgs(a);
  if (usage) {
    process.stderr.write(`migrate certs: ${usage} (see migrate certs --help)\n`);
    return 2;
  }
  try {
    const { files } = createCertificates({ dir: a.dir, hosts: parseHosts(a.hosts), days: a.days, cn: a.cn, force: a.force });
    for (const f of files) process.stdout.write(`wrote ${f}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`migrate certs: ${(e as Error).message.replace(/^certificates: /, '')}\n`);
    return 1;
  }
}
