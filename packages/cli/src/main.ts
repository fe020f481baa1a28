/**
 * main.ts — owns the `migrate` command line: parsing (yargs), dispatch to the subcommands
 * and exit codes. Each subcommand is a thin layer over the library packages.
 */
import yargs from 'yargs';
import { runSend } from './send.js';
import { runRecv } from './recv.js';
import { runCheck } from './check.js';

/** A command-line mistake: usage and the message on stderr, exit 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const parser = yargs(argv)
    .scriptName('migrate')
    .usage('$0 <command> [options]')
    .strict()
    .command(
      'send',
      'start a guest and migrate it to a destination',
      (y) =>
        y
          .option('to', { type: 'string', demandOption: true, describe: 'destination HOST:PORT' })
          .option('guest', { type: 'string', default: 'ab', describe: 'ab, kv, or the path of a guest module' })
          .option('ram', { type: 'string', default: '256M', describe: 'guest RAM size (256M, 1G)' })
          .option('vcpus', { type: 'number', default: 2, describe: 'number of vCPUs' })
          .option('migrate-after', { type: 'number', default: 500, describe: 'let the guest run this many ms before migrating' })
          .option('max-bandwidth', { type: 'string', default: '0', describe: 'page-data rate limit, bytes/s (500M); 0 = unlimited' })
          .option('downtime-limit', { type: 'number', default: 300, describe: 'largest stop-and-copy time, ms' })
          .option('timeout', { type: 'number', default: 0, describe: 'fail if not completed after this many seconds (0 = never)' })
          .option('guest-port', { type: 'number', describe: 'port of the guest service (kv: HTTP)' })
          .option('guest-config', { type: 'string', describe: 'guest configuration as JSON (merged with --sweep and --guest-port)' })
          .option('sweep', { type: 'string', describe: 'ab guest: byte range the vCPUs write, START-END (1M-1000M)' })
          .option('postcopy', { type: 'boolean', default: false, describe: 'enable postcopy: the destination runs the guest before all RAM has arrived' })
          .option('postcopy-after', { type: 'string', default: 'auto', describe: 'switch to postcopy after this many ms of precopy, or auto (when precopy stops converging)' })
          .option('postcopy-fallback', { choices: ['precopy', 'fail'] as const, default: 'precopy' as const, describe: 'when the destination cannot do postcopy' })
          .option('max-postcopy-bandwidth', { type: 'string', default: '0', describe: 'postcopy background stream rate limit, bytes/s (500M); 0 = unlimited' })
          .option('postcopy-queue', { type: 'string', default: '1M', describe: 'postcopy without --preempt: bound the kernel send queue of the main channel to SIZE (requested pages wait behind it); 0 = the kernel\'s own sizing' })
          .option('trim-pages', { type: 'boolean', default: true, describe: 'send a page that ends in zero bytes without them when that leaves at most half of it (--no-trim-pages: every data page whole)' })
          .option('preempt', { type: 'boolean', default: false, describe: 'postcopy: requested pages travel on their own connection, never behind the background stream' })
          .option('preempt-realtime', { type: 'boolean', default: false, describe: 'with --preempt: answer page requests from a realtime (SCHED_FIFO) thread; a short scheduler slice where refused' })
          .option('return-listen', { type: 'string', describe: 'after the guest left, wait for it to come back on HOST:PORT, then verify it' })
          .option('run-after', { type: 'number', default: 0, describe: 'with --return-listen: let the returned guest run this many ms before verifying' })
          .option('tls-dir', { type: 'string', describe: 'TLS with x509 certificates from DIR (ca-cert.pem, client-cert.pem, client-key.pem; see migrate certs)' })
          .option('tls-psk', { type: 'string', describe: 'TLS with a pre-shared key from FILE (lines identity:hexkey, like QEMU keys.psk)' })
          .option('tls-psk-identity', { type: 'string', describe: 'the PSK identity to use (default qemu)' })
          .option('auto-recover', { type: 'boolean', default: false, describe: 'postcopy recovery: after a link failure, reconnect by itself with backoff' })
          .option('recover-timeout', { type: 'number', default: 60, describe: 'with --auto-recover: keep trying this many seconds, then wait for migrate-resume' })
          .option('control', { type: 'string', describe: 'serve a QMP-style control socket (JSON lines) on this Unix socket path' })
          .option('json', { type: 'boolean', default: false, describe: 'print the report as one JSON line' })
          .option('progress', { type: 'boolean', default: false, describe: 'show progress on stderr even when it is not a terminal' }),
      async (a) => {
        code = await runSend(a);
      },
    )
    .command(
      'recv',
      'wait for one incoming migration and run the guest',
      (y) =>
        y
          .option('listen', { type: 'string', demandOption: true, describe: 'HOST:PORT to listen on (port 0 picks one)' })
          .option('max-ram', { type: 'string', describe: 'refuse guests with more RAM (default: free memory)' })
          .option('run-after', { type: 'number', default: 0, describe: 'let the guest run this many ms, then verify it' })
          .option('guest-port', { type: 'number', describe: 'port of the guest service (kv: HTTP)' })
          .option('refuse-feature', { type: 'string', describe: 'treat these host checks as failed when postcopy is advised (comma-separated, e.g. userfaultfd): for testing' })
          .option('then-send-to', { type: 'string', describe: 'after running, migrate the guest on to HOST:PORT' })
          .option('tls-dir', { type: 'string', describe: 'TLS with x509 certificates from DIR (ca-cert.pem, server-cert.pem, server-key.pem): the source must present a client certificate signed by the CA' })
          .option('tls-psk', { type: 'string', describe: 'TLS with a pre-shared key from FILE (lines identity:hexkey, like QEMU keys.psk)' })
          .option('tls-psk-identity', { type: 'string', describe: 'the PSK identity to accept (default qemu)' })
          .option('tls-authz', { type: 'string', array: true, describe: 'with --tls-dir: a client certificate subject allowed to migrate in (a DN like "CN=src,O=Example" or a CN); repeat for more' })
          .option('preempt-realtime', { type: 'boolean', default: false, describe: 'when the source uses a preempt channel: place its pages from a realtime (SCHED_FIFO) thread; a short scheduler slice where refused' })
          .option('postcopy-queue', { type: 'string', default: '1M', describe: 'postcopy without a preempt channel: bound the kernel receive queue of the main channel to SIZE (requested pages wait behind it); 0 = the kernel\'s own sizing' })
          .option('prefill', { type: 'boolean', default: true, describe: 'postcopy: allocate the pages still to come while idle, so they are moved in on arrival rather than allocated (--no-prefill: allocated on arrival)' })
          .option('auto-recover', { type: 'boolean', default: false, describe: 'postcopy recovery: after a link failure, keep listening on the same address for the source' })
          .option('control', { type: 'string', describe: 'serve a QMP-style control socket (JSON lines) on this Unix socket path' })
          .option('json', { type: 'boolean', default: false, describe: 'print the report as one JSON line' })
          .option('progress', { type: 'boolean', default: false, describe: 'show progress on stderr even when it is not a terminal' }),
      async (a) => {
        code = await runRecv(a);
      },
    )
    .command(
      'check',
      'probe this host for live migration with postcopy',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' }),
      async (a) => {
        code = await runCheck(a);
      },
    )
    .command(
      'certs',
      "create a CA, a server and a client certificate for TLS channels (QEMU's x509 layout)",
      (y) =>
        y
          .option('dir', { type: 'string', demandOption: true, describe: 'directory to write ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem to' })
          .option('hosts', { type: 'string', demandOption: true, describe: "the destination's DNS names and IPs, comma-separated (the server certificate's SANs)" })
          .option('days', { type: 'number', default: 365, describe: 'validity in days' })
          .option('cn', { type: 'string', default: 'livemig', describe: 'common-name prefix: the CA is <cn>-ca, the client <cn>-client' })
          .option('force', { type: 'boolean', default: false, describe: 'overwrite existing files' }),
      async (a) => {
        // Loaded only for this command: node-forge slows every process that loads it (transport's certs.ts).
        const { runCerts } = await import('./certs.js');
        code = await runCerts(a);
      },
    )
    .demandCommand(1, 'give a command: send, recv, check or certs')
    .fail((msg, err) => {
      if (err) throw err;
      // Throwing stops yargs here: the command's handler must not run with bad flags.
      throw new UsageError(msg);
    })
    .help()
    .version(false);
  try {
    await parser.parseAsync();
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${await parser.getHelp()}\n\n${e.message}\n`);
      return 2;
    }
    process.stderr.write(`migrate: ${(e as Error).message}\n`);
    return 1;
  }
  return code;
}
