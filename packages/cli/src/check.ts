/**
 * check.ts — `migrate check`: the host probe (can live migration with postcopy work here?),
 * printed for people or as JSON; exit 1 when it cannot, with the reasons.
 */
import { formatReport, probeHost } from '@livemig/uffd';

export async function runCheck(a: { json: boolean }): Promise<number> {
  const report = probeHost();
  if (a.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(`${formatReport(report)}\n`);
  return report.ok ? 0 : 1;
}
