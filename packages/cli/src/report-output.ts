/**
 * report-output.ts — owns printing a migration report: one JSON line on stdout with --json
 * (always the last line), otherwise a short human summary.
 */
import type { MigrationReport } from '@livemig/transport';
import { formatBytes } from './units.js';

export function printReport(report: MigrationReport, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  const lines = [
    `${report.role}: migration ${report.status} (${report.mode}, guest ${report.guest.kind}, ${report.guest.vcpus} vCPUs)`,
    `  total ${report.totalTimeMs} ms, setup ${report.setupTimeMs} ms, downtime ${report.downtimeMs} ms, ${report.precopyRounds} precopy rounds`,
    `  RAM ${formatBytes(report.ram.totalBytes)}: ${formatBytes(report.ram.transferredBytes)} on the wire, ${report.ram.pagesNormal} pages with data${report.ram.pagesTrimmed ? ` (${report.ram.pagesTrimmed} trimmed)` : ''}, ${report.ram.pagesZero} zero pages, ${report.ram.mbps} Mbit/s`,
  ];
  if (report.integrity) {
    const i = report.integrity;
    lines.push(`  integrity: ${i.checked ? `${i.pages} pages checked, ${i.bad} bad` : 'not checked'}${i.firstBad ? ` (first bad: block ${i.firstBad.block} offset 0x${i.firstBad.offset.toString(16)}: ${i.firstBad.detail})` : ''}`);
  }
  if (report.error) lines.push(`  error: ${report.error}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}
