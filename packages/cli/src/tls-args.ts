/**
 * tls-args.ts — owns turning the `--tls-*` options of `send` and `recv` into the TLS
 * credentials of @livemig/transport (or none, without them).
 */
import { loadTlsCredentials, type TlsCredentials } from '@livemig/transport';

export interface TlsArgs {
  tlsDir?: string;
  tlsPsk?: string;
  tlsPskIdentity?: string;
  /** recv only: client certificate subjects allowed (each a DN or a CN). */
  tlsAuthz?: string[];
}

/** The credentials for `side`, or undefined when no --tls-dir / --tls-psk was given. Throws naming what is wrong. */
export function tlsFromArgs(a: TlsArgs, side: 'client' | 'server'): TlsCredentials | undefined {
  if (a.tlsDir === undefined && a.tlsPsk === undefined) {
    if (a.tlsAuthz !== undefined) throw new Error('--tls-authz needs --tls-dir');
    if (a.tlsPskIdentity !== undefined) throw new Error('--tls-psk-identity needs --tls-psk');
    return undefined;
  }
  return loadTlsCredentials(
    {
      dir: a.tlsDir,
      pskFile: a.tlsPsk,
      pskIdentity: a.tlsPskIdentity,
      authz: a.tlsAuthz?.map((x) => x.trim()),
    },
    side,
  );
}
