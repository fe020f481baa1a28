/**
 * probe-cli.ts — owns the `livemig-probe` command line: prints the host report (`--json` for
 * JSON, `--refuse a,b` to simulate missing checks) and answers with exit status 1 when
 * postcopy cannot work here. bin/probe.js calls `main`.
 */
import { formatReport, probeHost } from './probe.js';

const USAGE = 'usage: livemig-probe [--json] [--refuse NAME[,NAME...]]\n  exit status 0 when postcopy works on this host, 1 when not, 2 on bad usage';

export function main(argv: readonly string[], out: (s: string) => void = (s) => process.stdout.write(s)): number {
  let json = false;
  const refuse: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--refuse' && i + 1 < argv.length) refuse.push(...argv[++i]!.split(','));
    else if (a.startsWith('--refuse=')) refuse.push(...a.slice('--refuse='.length).split(','));
    else if (a === '-h' || a === '--help') {
      out(`${USAGE}\n`);
      return 0;
    } else {
      out(`unknown argument ${a}\n${USAGE}\n`);
      return 2;
    }
  }
  const report = probeHost({ refuse: refuse.filter(Boolean) });
  out(json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReport(report)}\n`);
  return report.ok ? 0 : 1;
}
