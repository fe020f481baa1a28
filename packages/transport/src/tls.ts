/**
 * tls.ts — owns TLS for migration channels: loading credentials (QEMU's x509 directory layout
 * or its `keys.psk` file) into plain data, wrapping a connected TCP socket on either end in
 * `node:tls` (OpenSSL, TLS 1.3 only, AES-128-GCM first), checking the peer (CA, validity,
 * host name, authz list, PSK identity), and turning every failure into a message that names
 * its cause on the end that saw it.
 *
 * The TLS socket wraps the native TCP handle (no JS stream in between), so a channel over TLS
 * costs the cipher and little else. handshake.ts calls `secureClient`/`secureServer` between
 * the TCP connect/accept and the hello exchange.
 *
 * Telling the other end why: OpenSSL aborts a handshake with an alert only for what it checks
 * itself (PSK binders, a missing client certificate). Node checks certificates after the
 * handshake has completed, without an alert, so the end that rejects a certificate tells its
 * peer in the protocol's own terms instead: a hello and an ERROR frame naming the cause, written
 * as one TLS record so the peer reads both before it builds a channel.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { FrameDecoder, MsgType, type ChannelRole } from '@livemig/protocol';

export interface TlsOptions {
  /** QEMU x509 layout: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem. */
  dir?: string;
  /** QEMU `keys.psk`: lines `identity:hexkey`. */
  pskFile?: string;
  /** The PSK identity to use (client) or accept (server); default 'qemu', QEMU's default username. */
  pskIdentity?: string;
  /** Server side, x509: the client certificate subjects allowed (default: any certificate the CA signed). */
  authz?: string[];
}

/** Plain data (structured-cloneable so it can be handed to worker threads). */
export interface TlsCredentials {
  kind: 'x509' | 'psk';
  side: 'client' | 'server';
  /** PEM: the CA certificate(s) the peer's certificate must be signed by. */
  ca?: string;
  /** PEM: this side's own certificate and private key. */
  cert?: string;
  key?: string;
  /** `key` is hex. */
  psk?: { identity: string; key: string };
  /** Server side: client certificate subjects allowed. */
  authz?: string[];
}

export type TlsErrorCode =
  | 'TLS_CONFIG' // credentials missing, unreadable or malformed
  | 'TLS_UNTRUSTED' // a certificate is not signed by the CA this end trusts
  | 'TLS_EXPIRED' // a certificate's notAfter has passed
  | 'TLS_NOT_YET_VALID' // a certificate's notBefore is in the future
  | 'TLS_HOST' // the dialled host name or IP is not in the server certificate's SANs
  | 'TLS_AUTHZ' // the client certificate's subject is not in the listener's authz list
  | 'TLS_NO_CLIENT_CERT' // the dialler sent no client certificate
  | 'TLS_PSK_KEY' // both ends know the PSK identity but their keys differ
  | 'TLS_PSK_IDENTITY' // the listener does not know the dialler's PSK identity
  | 'TLS_MODE' // one end uses certificates, the other a pre-shared key
  | 'TLS_PLAINTEXT' // a plaintext dialler met a TLS listener
  | 'TLS_NOT_EXPECTED' // a TLS dialler met a plaintext listener
  | 'TLS_TIMEOUT' // the TLS handshake did not complete in time
  | 'TLS_HANDSHAKE'; // any other TLS failure

export class TlsError extends Error {
  readonly code: TlsErrorCode;
  constructor(code: TlsErrorCode, message: string) {
    super(message);
    this.name = 'TlsError';
    this.code = code;
  }
}

/** TLS 1.3 suites, AES-128-GCM first: with AES-NI it is the cheapest one here. */
export const TLS_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
/** A TLS 1.3 PSK must go with a SHA-256 suite. */
export const TLS_PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
export const DEFAULT_PSK_IDENTITY = 'qemu';

const X509_FILES = {
  client: ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'],
  server: ['ca-cert.pem', 'server-cert.pem', 'server-key.pem'],
} as const;

/**
 * Reads the credentials of one side into plain data, checking them on the way: every file
 * exists and is PEM of the right kind, the key belongs to the certificate, the PSK file is
 * well-formed. Throws a `TlsError('TLS_CONFIG')` naming the file (and line) otherwise.
 */
export function loadTlsCredentials(opts: TlsOptions, side: 'client' | 'server'): TlsCredentials {
  if (side !== 'client' && side !== 'server') throw new TlsError('TLS_CONFIG', `TLS: side must be 'client' or 'server', not ${String(side)}`);
  if (opts.dir !== undefined && opts.pskFile !== undefined) {
    throw new TlsError('TLS_CONFIG', `TLS: give either a certificate directory (${opts.dir}) or a PSK file (${opts.pskFile}), not both`);
  }
  if (opts.dir === undefined && opts.pskFile === undefined) {
    throw new TlsError('TLS_CONFIG', 'TLS: no credentials: give a certificate directory (QEMU x509 layout) or a PSK file (keys.psk)');
  }
  let authz: string[] | undefined;
  if (opts.authz !== undefined) {
    if (side === 'client') throw new TlsError('TLS_CONFIG', 'TLS: authz lists the client certificate subjects a listener accepts; it has no meaning when dialling');
    if (opts.pskFile !== undefined) throw new TlsError('TLS_CONFIG', 'TLS: authz applies to client certificates; with a PSK file the identity is what is checked');
    authz = opts.authz.map((a) => a.trim());
    const empty = authz.findIndex((a) => a === '');
    if (empty >= 0) throw new TlsError('TLS_CONFIG', `TLS: authz entry ${empty + 1} is empty`);
    if (authz.length === 0) throw new TlsError('TLS_CONFIG', 'TLS: the authz list is empty: it would refuse every client (leave it out to accept any certificate the CA signed)');
  }
  if (opts.pskFile !== undefined) {
    const identity = opts.pskIdentity ?? DEFAULT_PSK_IDENTITY;
    return { kind: 'psk', side, psk: { identity, key: readPskKey(opts.pskFile, identity) } };
  }
  const dir = opts.dir!;
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new TlsError('TLS_CONFIG', `TLS: certificate directory ${dir} ${errnoText(e)}`);
  }
  if (!st.isDirectory()) throw new TlsError('TLS_CONFIG', `TLS: ${dir} is not a directory (expected QEMU's x509 layout: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem)`);
  const [caName, certName, keyName] = X509_FILES[side];
  const read = (name: string): { file: string; text: string } => {
    const file = path.join(dir, name);
    try {
      return { file, text: fs.readFileSync(file, 'utf8') };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new TlsError('TLS_CONFIG', `TLS: ${file} does not exist (the ${side} side needs ${X509_FILES[side].join(', ')} in ${dir}; \`migrate certs\` creates them)`);
      }
      throw new TlsError('TLS_CONFIG', `TLS: cannot read ${file}: ${errnoText(e)}`);
    }
  };
  const ca = read(caName);
  parseCertificates(ca.file, ca.text);
  const cert = read(certName);
  const own = parseCertificates(cert.file, cert.text)[0]!;
  const key = read(keyName);
  const keyObject = parsePrivateKey(key.file, key.text);
  if (!own.checkPrivateKey(keyObject)) {
    throw new TlsError('TLS_CONFIG', `TLS: ${cert.file} and ${key.file} do not belong together (the key does not match the certificate's public key)`);
  }
  const creds: TlsCredentials = { kind: 'x509', side, ca: ca.text, cert: cert.text, key: key.text };
  if (authz) creds.authz = authz;
  return creds;
}

function errnoText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'EACCES') return 'is not readable (EACCES)';
  return code ?? (e as Error).message;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function parseCertificates(file: string, text: string): X509Certificate[] {
  const blocks = text.match(PEM_CERT);
  if (!blocks) throw new TlsError('TLS_CONFIG', `TLS: ${file} is not a PEM certificate (no "-----BEGIN CERTIFICATE-----" block)`);
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (e) {
      throw new TlsError('TLS_CONFIG', `TLS: ${file}: certificate ${i + 1} is not valid PEM: ${(e as Error).message}`);
    }
  });
}

function parsePrivateKey(file: string, text: string): KeyObject {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
    throw new TlsError('TLS_CONFIG', `TLS: ${file} is not a PEM private key (no "-----BEGIN … PRIVATE KEY-----" block)`);
  }
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    throw new TlsError('TLS_CONFIG', `TLS: ${file} is encrypted; livemig needs an unencrypted key (keep it mode 0600 instead)`);
  }
  try {
    return createPrivateKey(text);
  } catch (e) {
    throw new TlsError('TLS_CONFIG', `TLS: ${file} is not a valid PEM private key: ${(e as Error).message}`);
  }
}

/** Parses QEMU's keys.psk (`identity:hexkey` per line; blank lines and `#` comments skipped). */
function readPskKey(file: string, identity: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new TlsError('TLS_CONFIG', `TLS: PSK file ${file} ${errnoText(e)}`);
  }
  const seen = new Map<string, { line: number; key: string }>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    const n = i + 1;
    if (line === '' || line.startsWith('#')) continue;
    // Never echo the line: it holds key material.
    const colon = line.indexOf(':');
    if (colon < 0) throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: expected identity:hexkey (no ':' found)`);
    const id = line.slice(0, colon);
    const key = line.slice(colon + 1).trim();
    if (id === '') throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: the identity before ':' is empty`);
    if (key === '') throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: the key after ':' is empty`);
    if (!/^[0-9a-fA-F]+$/.test(key) || key.length % 2 !== 0) {
      throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: the key is not hex (an even number of digits 0-9, a-f)`);
    }
    if (key.length / 2 > 256) throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: the key is ${key.length / 2} bytes; at most 256 are allowed`);
    const before = seen.get(id);
    if (before) throw new TlsError('TLS_CONFIG', `TLS: ${file} line ${n}: identity "${id}" appears again (first on line ${before.line})`);
    seen.set(id, { line: n, key: key.toLowerCase() });
  }
  if (seen.size === 0) throw new TlsError('TLS_CONFIG', `TLS: PSK file ${file} holds no identity:hexkey line`);
  const found = seen.get(identity);
  if (!found) throw new TlsError('TLS_CONFIG', `TLS: PSK file ${file} has no key for identity "${identity}" (it has ${[...seen.keys()].map((k) => `"${k}"`).join(', ')})`);
  return found.key;
}

// ---- authz ---------------------------------------------------------------------------------

/**
 * Whether a client certificate subject is allowed by an authz list. An entry with an `=` is a
 * distinguished name (`CN=laptop,O=Example`, QEMU's form, or OpenSSL's `O=Example, CN=laptop`)
 * and must name exactly the subject's attributes, in any order (attribute names are not case
 * sensitive, values are; `\,` escapes a comma). An entry without `=` matches the subject's CN.
 * `subject` is Node's form: one `KEY=value` a line (`X509Certificate.subject`).
 */
export function subjectMatchesAuthz(subject: string, authz: readonly string[]): boolean {
  const have = subject.split('\n').filter((l) => l !== '').map(normalizeRdn).sort();
  const cns = have.filter((a) => a.startsWith('CN=')).map((a) => a.slice(3));
  for (const entry of authz) {
    if (!entry.includes('=')) {
      if (cns.includes(entry)) return true;
      continue;
    }
    const want = splitDn(entry).map(normalizeRdn).sort();
    if (want.length === have.length && want.every((w, i) => w === have[i])) return true;
  }
  return false;
}

/** A subject in QEMU's one-line form, `CN=…,O=…` (most specific first), for messages. */
export function formatSubject(subject: string): string {
  return subject
    .split('\n')
    .filter((l) => l !== '')
    .reverse()
    .map((l) => l.replace(/,/g, '\\,'))
    .join(',');
}

function splitDn(dn: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < dn.length; i++) {
    const c = dn[i]!;
    if (c === '\\' && i + 1 < dn.length) {
      cur += dn[++i];
    } else if (c === ',' || c === '/') {
      if (cur.trim() !== '') parts.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur.trim() !== '') parts.push(cur);
  return parts;
}

function normalizeRdn(rdn: string): string {
  const eq = rdn.indexOf('=');
  if (eq < 0) return rdn.trim();
  return `${rdn.slice(0, eq).trim().toUpperCase()}=${rdn.slice(eq + 1).trim()}`;
}

// ---- secure contexts -----------------------------------------------------------------------

const contexts = new WeakMap<TlsCredentials, tls.SecureContext>();

function secureContext(creds: TlsCredentials): tls.SecureContext {
  let ctx = contexts.get(creds);
  if (!ctx) {
    const common = { minVersion: 'TLSv1.3' as const, honorCipherOrder: true };
    try {
      ctx =
        creds.kind === 'psk'
          ? tls.createSecureContext({ ...common, ciphers: TLS_PSK_CIPHERS })
          : tls.createSecureContext({ ...common, ciphers: TLS_CIPHERS, ca: creds.ca, cert: creds.cert, key: creds.key });
    } catch (e) {
      throw new TlsError('TLS_CONFIG', `TLS: the ${creds.side} credentials are not usable: ${(e as Error).message}`);
    }
    contexts.set(creds, ctx);
  }
  return ctx;
}

/** Throws a TlsError('TLS_CONFIG') unless `creds` are usable on `side` (checked before any connection is made). */
export function checkCredentials(creds: TlsCredentials, side: 'client' | 'server', fn: string): void {
  if (creds.side !== side) {
    throw new TlsError('TLS_CONFIG', `TLS: ${fn} needs ${side}-side credentials (loadTlsCredentials(opts, '${side}')), got ${creds.side}-side ones`);
  }
  if (creds.kind === 'psk') {
    if (!creds.psk) throw new TlsError('TLS_CONFIG', 'TLS: PSK credentials without psk { identity, key }');
  } else if (creds.kind === 'x509') {
    if (!creds.ca) throw new TlsError('TLS_CONFIG', 'TLS: x509 credentials without a CA certificate (ca)');
    if (side === 'server' && (!creds.cert || !creds.key)) throw new TlsError('TLS_CONFIG', 'TLS: a listener needs its certificate and key (cert, key)');
  } else {
    throw new TlsError('TLS_CONFIG', `TLS: unknown credentials kind ${String((creds as { kind: unknown }).kind)}`);
  }
}

// ---- messages ------------------------------------------------------------------------------

const UNTRUSTED_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
]);

function caSubjects(creds: TlsCredentials): string {
  try {
    return (creds.ca ?? '').match(PEM_CERT)!.map((b) => formatSubject(new X509Certificate(b).subject)).join(' or ');
  } catch {
    return 'the configured CA';
  }
}

function describeCert(cert: X509Certificate | undefined): string {
  if (!cert) return '';
  return ` (subject ${formatSubject(cert.subject)}, issuer ${formatSubject(cert.issuer)})`;
}

/**
 * A certificate that failed verification: the cause in words. `whose` is e.g. "the
 * destination's certificate"; `code` is OpenSSL's verify result.
 */
function certificateProblem(code: string, whose: string, cert: X509Certificate | undefined, creds: TlsCredentials, trustedBy = 'this side'): TlsError {
  if (code === 'CERT_HAS_EXPIRED') {
    return new TlsError('TLS_EXPIRED', `${whose}${describeCert(cert)} has expired${cert ? ` (not valid after ${cert.validTo})` : ''}: renew it (\`migrate certs\`) or check the clocks`);
  }
  if (code === 'CERT_NOT_YET_VALID') {
    return new TlsError('TLS_NOT_YET_VALID', `${whose}${describeCert(cert)} is not valid yet${cert ? ` (not before ${cert.validFrom})` : ''}: check the clocks of both hosts`);
  }
  if (UNTRUSTED_CODES.has(code)) {
    return new TlsError('TLS_UNTRUSTED', `${whose}${describeCert(cert)} is not signed by the CA ${trustedBy} trusts (${caSubjects(creds)}): both ends need the same ca-cert.pem [${code}]`);
  }
  return new TlsError('TLS_UNTRUSTED', `${whose}${describeCert(cert)} failed verification: ${code}`);
}

const PLAINTEXT_ANSWER = new Set([
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_SSL_PACKET_LENGTH_TOO_LONG',
  'ERR_SSL_RECORD_LAYER_FAILURE',
  'ERR_SSL_HTTP_REQUEST',
  'ERR_SSL_UNKNOWN_PROTOCOL',
]);

function opensslReason(err: Error): string {
  const m = /SSL routines:[^:]*:([^:]+):/.exec(err.message) ?? /routines:[^:]*:([^:]+):/.exec(err.message);
  return m ? m[1]! : ((err as NodeJS.ErrnoException).code ?? err.message);
}

/** A TLS failure seen by the dialler (before or right after the handshake), in words. */
export function clientFailure(err: Error, creds: TlsCredentials): TlsError {
  if (err instanceof TlsError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (PLAINTEXT_ANSWER.has(code)) {
    return new TlsError('TLS_NOT_EXPECTED', 'the destination does not speak TLS: it answered in plaintext (enable TLS on both ends, or on neither)');
  }
  if (creds.kind === 'psk') {
    const id = creds.psk!.identity;
    if (code === 'ERR_SSL_SSLV3_ALERT_ILLEGAL_PARAMETER' || code === 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR' || code === 'ERR_SSL_SSLV3_ALERT_BAD_RECORD_MAC') {
      return new TlsError('TLS_PSK_KEY', `the destination rejected our pre-shared key for identity "${id}": the two keys.psk files hold different keys for it`);
    }
    if (code === 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE' || code === 'ERR_SSL_TLSV1_ALERT_UNKNOWN_PSK_IDENTITY') {
      return new TlsError('TLS_PSK_IDENTITY', `the destination does not know PSK identity "${id}" (or does not use a pre-shared key at all)`);
    }
    if (code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') {
      return new TlsError('TLS_MODE', 'the destination uses certificates (it asked for a client certificate); this side has only a pre-shared key');
    }
  } else {
    if (code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') {
      return new TlsError('TLS_NO_CLIENT_CERT', 'the destination requires a client certificate signed by its CA, and this side sent none (client-cert.pem, client-key.pem)');
    }
    if (code === 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE') {
      return new TlsError('TLS_HANDSHAKE', 'the destination refused the TLS handshake (handshake failure): does it use a pre-shared key rather than certificates?');
    }
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') {
    return new TlsError('TLS_HANDSHAKE', `the destination dropped the connection during the TLS handshake (${code})`);
  }
  if (/alert/i.test(err.message)) return new TlsError('TLS_HANDSHAKE', `the destination aborted the TLS handshake: ${opensslReason(err)}`);
  return new TlsError('TLS_HANDSHAKE', `TLS handshake failed: ${opensslReason(err)}`);
}

/** A TLS failure seen by the listener during the handshake, in words. */
function serverFailure(err: Error, creds: TlsCredentials, pskSeen: { identity?: string; unknown?: boolean }): TlsError {
  if (err instanceof TlsError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (creds.kind === 'psk') {
    const known = creds.psk!.identity;
    if (pskSeen.unknown) {
      return new TlsError('TLS_PSK_IDENTITY', `the peer offered PSK identity "${pskSeen.identity}", which this listener does not know (it knows "${known}")`);
    }
    if (pskSeen.identity !== undefined && (code === 'ERR_SSL_BINDER_DOES_NOT_VERIFY' || code === 'ERR_SSL_CIPHER_OPERATION_FAILED' || code === 'ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC')) {
      return new TlsError('TLS_PSK_KEY', `the peer's pre-shared key for identity "${pskSeen.identity}" differs from this listener's (the two keys.psk files disagree)`);
    }
    if (pskSeen.identity === undefined && (code === 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM' || code === 'ERR_SSL_NO_SHARED_CIPHER')) {
      return new TlsError('TLS_MODE', 'the peer offered no pre-shared key: it probably uses certificates, this listener a PSK file');
    }
  } else if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') {
    return new TlsError('TLS_NO_CLIENT_CERT', 'the peer sent no client certificate (this listener requires one signed by its CA)');
  }
  if (code === 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' || code === 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE') {
    return new TlsError('TLS_UNTRUSTED', `the peer does not trust this listener's certificate (${opensslReason(err)})`);
  }
  if (code === 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED') {
    return new TlsError('TLS_EXPIRED', `the peer says a certificate has expired (${opensslReason(err)})`);
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') {
    return new TlsError('TLS_HANDSHAKE', `the peer dropped the connection during the TLS handshake (${code})`);
  }
  if (/alert/i.test(err.message)) return new TlsError('TLS_HANDSHAKE', `the peer aborted the TLS handshake: ${opensslReason(err)}`);
  return new TlsError('TLS_HANDSHAKE', `TLS handshake failed: ${opensslReason(err)}`);
}

/** Prefixes a TlsError's message with the channel label, keeping its code. */
export function labelled(label: string, e: TlsError): TlsError {
  return new TlsError(e.code, `${label}: ${e.message}`);
}

// ---- the two ends --------------------------------------------------------------------------

/** What one end found wrong with the other's certificate after the handshake, to tell it (see the header). */
export interface PeerRejection {
  /** For this side's error. */
  local: TlsError;
  /** For the peer's ERROR frame. */
  remote: { code: TlsErrorCode; reason: string };
}

function both(e: TlsError): PeerRejection {
  return { local: e, remote: { code: e.code, reason: e.message } };
}

/**
 * Wraps a connected TCP socket in TLS as the dialler and waits for the handshake. `host` is
 * the dialled name or IP: it must be in the server certificate's SANs. Resolves with the TLS
 * socket and, when the listener's certificate failed our checks, the rejection to report (the
 * caller tells the peer and fails). Rejects with a `TlsError` naming the cause otherwise.
 */
export function secureClient(
  raw: net.Socket,
  creds: TlsCredentials,
  host: string,
  opts: { timeoutMs: number; highWaterMark: number },
): Promise<{ socket: tls.TLSSocket; rejection: PeerRejection | null }> {
  checkCredentials(creds, 'client', 'connectChannel');
  const ctx = secureContext(creds);
  raw.setNoDelay(true); // the TLS socket does not pass setNoDelay down to the TCP handle
  let identityError: Error | undefined;
  const options: tls.ConnectionOptions & { highWaterMark: number } = {
    socket: raw,
    host,
    secureContext: ctx,
    minVersion: 'TLSv1.3',
    highWaterMark: opts.highWaterMark,
    // Verification results are checked below (not by Node's reject), so the listener can be told why.
    rejectUnauthorized: false,
  };
  if (net.isIP(host) === 0) options.servername = host;
  if (creds.kind === 'psk') {
    const psk = Buffer.from(creds.psk!.key, 'hex');
    const identity = creds.psk!.identity;
    options.pskCallback = () => ({ identity, psk });
    options.checkServerIdentity = () => undefined; // no certificate to check: the PSK authenticates
  } else {
    options.checkServerIdentity = (hostname, cert) => {
      identityError = tls.checkServerIdentity(hostname, cert);
      return identityError;
    };
  }
  return new Promise((resolve, reject) => {
    let socket: tls.TLSSocket;
    try {
      socket = tls.connect(options);
    } catch (e) {
      reject(new TlsError('TLS_CONFIG', `TLS: ${(e as Error).message}`));
      return;
    }
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('secureConnect', onSecure);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (e: TlsError): void => {
      cleanup();
      socket.on('error', ignore);
      socket.destroy();
      reject(e);
    };
    const onError = (err: Error): void => fail(clientFailure(err, creds));
    const onClose = (): void => fail(new TlsError('TLS_HANDSHAKE', 'the destination closed the connection during the TLS handshake'));
    const onSecure = (): void => {
      cleanup();
      socket.on('error', ignore); // the Channel or the hello reader adds its own
      resolve({ socket, rejection: checkServer(socket, creds, host, identityError) });
    };
    const timer = setTimeout(() => fail(new TlsError('TLS_TIMEOUT', `the TLS handshake did not complete within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    socket.once('secureConnect', onSecure);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}

function checkServer(socket: tls.TLSSocket, creds: TlsCredentials, host: string, identityError: Error | undefined): PeerRejection | null {
  const peer = socket.getPeerX509Certificate();
  if (creds.kind === 'psk') {
    if (peer) {
      return {
        local: new TlsError('TLS_MODE', 'the destination authenticated with a certificate, not the pre-shared key: it uses certificates, this side a PSK file'),
        remote: { code: 'TLS_MODE', reason: 'the dialler uses a pre-shared key, this listener certificates' },
      };
    }
    return null;
  }
  if (socket.authorized) return null;
  const code = socket.authorizationError ? String(socket.authorizationError) : 'UNKNOWN';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || (identityError && code === (identityError as NodeJS.ErrnoException).code)) {
    const names = peer?.subjectAltName ?? 'none';
    return {
      local: new TlsError('TLS_HOST', `the destination's certificate is not valid for ${host}: it names ${names} (recreate it with \`migrate certs --hosts …,${host}\`)`),
      remote: { code: 'TLS_HOST', reason: `the dialler reached this listener as ${host}, which is not in this listener's certificate (it names ${names})` },
    };
  }
  const local = certificateProblem(code, "the destination's certificate", peer, creds);
  const remote = certificateProblem(code, "this listener's certificate", peer, creds, 'the dialler');
  return { local, remote: { code: remote.code, reason: remote.message } };
}

/** What the listener found wrong with the dialler's certificate after the handshake. */
export interface ServerHandshake {
  socket: tls.TLSSocket;
  /** Set when the dialler's certificate failed the CA, validity or authz checks: refuse with it. */
  rejection: PeerRejection | null;
  /** The client certificate's subject (x509), in `CN=…,O=…` form. */
  peerSubject?: string;
  /** The PSK identity the dialler used (psk). */
  pskIdentity?: string;
}

/**
 * Wraps an accepted TCP socket in TLS as the listener and waits for the handshake. Bytes already
 * read from `raw` (and put back with `unshift`) are fed to TLS first. A client certificate
 * signed by the CA is required (OpenSSL refuses a handshake without one); its verification
 * result and the authz list are checked here and returned as `rejection`, so the caller can
 * tell the dialler why before closing.
 */
export function secureServer(raw: net.Socket, creds: TlsCredentials, opts: { timeoutMs: number; highWaterMark: number }): Promise<ServerHandshake> {
  checkCredentials(creds, 'server', 'acceptChannel');
  const ctx = secureContext(creds);
  raw.setNoDelay(true);
  const pskSeen: { identity?: string; unknown?: boolean } = {};
  // Node's TLSSocket takes pskCallback (as tls.Server does); @types/node 20 does not list it.
  const options: tls.TLSSocketOptions & { highWaterMark: number; pskCallback?: (socket: tls.TLSSocket, identity: string) => Buffer | null } = {
    isServer: true,
    secureContext: ctx,
    highWaterMark: opts.highWaterMark,
  };
  if (creds.kind === 'x509') {
    options.requestCert = true;
    options.rejectUnauthorized = true;
  } else {
    const known = creds.psk!.identity;
    const key = Buffer.from(creds.psk!.key, 'hex');
    options.pskCallback = (_socket, identity) => {
      pskSeen.identity = identity;
      if (identity === known) return key;
      pskSeen.unknown = true;
      return null;
    };
  }
  return new Promise((resolve, reject) => {
    const socket = new tls.TLSSocket(raw, options);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('secure', onSecure);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (e: TlsError): void => {
      cleanup();
      socket.on('error', ignore);
      socket.destroy();
      reject(e);
    };
    const onError = (err: Error): void => fail(serverFailure(err, creds, pskSeen));
    const onClose = (): void =>
      fail(
        pskSeen.unknown
          ? serverFailure(new Error('closed'), creds, pskSeen)
          : new TlsError('TLS_HANDSHAKE', 'the peer closed the connection during the TLS handshake'),
      );
    const onSecure = (): void => {
      cleanup();
      socket.on('error', ignore);
      if (creds.kind === 'psk') {
        resolve({ socket, rejection: null, pskIdentity: pskSeen.identity });
        return;
      }
      const peer = socket.getPeerX509Certificate();
      if (!peer) {
        resolve({
          socket,
          rejection: {
            local: new TlsError('TLS_NO_CLIENT_CERT', 'the peer sent no client certificate (this listener requires one signed by its CA)'),
            remote: { code: 'TLS_NO_CLIENT_CERT', reason: 'the listener requires a client certificate signed by its CA, and the dialler sent none' },
          },
        });
        return;
      }
      const peerSubject = formatSubject(peer.subject);
      const verifyError = peerVerifyError(socket);
      if (verifyError) {
        const whose = `the client certificate ${peerSubject}`;
        const remote = certificateProblem(verifyError, whose, peer, creds, 'the listener');
        resolve({ socket, peerSubject, rejection: { local: certificateProblem(verifyError, whose, peer, creds), remote: { code: remote.code, reason: remote.message } } });
        return;
      }
      if (creds.authz && !subjectMatchesAuthz(peer.subject, creds.authz)) {
        resolve({ socket, peerSubject, rejection: both(new TlsError('TLS_AUTHZ', `client certificate subject "${peerSubject}" is not allowed by the listener's authz list`)) });
        return;
      }
      resolve({ socket, peerSubject, rejection: null });
    };
    const timer = setTimeout(() => fail(new TlsError('TLS_TIMEOUT', `the TLS handshake did not complete within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    socket.once('secure', onSecure);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}

/**
 * OpenSSL's verification result for the client certificate. A TLSSocket made outside a
 * tls.Server gets no `authorized` from Node; `ssl.verifyError()` is what tls.Server itself
 * reads. Fails closed: without it, the certificate counts as unverified.
 */
function peerVerifyError(socket: tls.TLSSocket): string | null {
  const ssl = (socket as unknown as { ssl?: { verifyError?: () => (Error & { code?: string }) | null } }).ssl;
  if (!ssl || typeof ssl.verifyError !== 'function') return 'UNABLE_TO_CHECK (this Node version hides the verification result)';
  const err = ssl.verifyError();
  return err ? (err.code ?? err.message) : null;
}

// ---- first bytes ---------------------------------------------------------------------------

/**
 * True when the bytes start a TLS handshake record (a ClientHello: 0x16 0x03 0x0N). The first
 * byte decides (a livemig hello starts with 'L'), so one byte is enough.
 */
export function looksLikeTls(first: Buffer): boolean {
  return first.length >= 1 && first[0] === 0x16 && (first.length < 2 || first[1] === 0x03);
}

/**
 * Waits for the first bytes on an accepted socket without consuming them: they are put back
 * (`unshift`) so whoever reads next, the hello reader or the TLS wrap, sees them first.
 */
export function peekFirstBytes(socket: net.Socket, timeoutMs: number, label: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      cleanup();
      socket.pause();
      socket.unshift(chunk);
      resolve(chunk);
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new TlsError('TLS_HANDSHAKE', `${label}: ${(err as NodeJS.ErrnoException).code ?? err.message} before the TLS handshake started`));
    };
    const onClose = (): void => {
      cleanup();
      reject(new TlsError('TLS_HANDSHAKE', `${label}: the peer closed the connection before sending anything`));
    };
    const timer = setTimeout(() => {
      cleanup();
      socket.pause();
      reject(new TlsError('TLS_TIMEOUT', `${label}: no TLS handshake within ${timeoutMs} ms (the peer sent nothing)`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.resume();
  });
}

/**
 * An ERROR frame at the start of `bytes` (what came with the peer's hello), or null. Refusals
 * during a TLS handshake are written as hello + ERROR in one record, so they arrive together.
 */
export function leadingError(bytes: Buffer, role: ChannelRole): { reason: string; code?: string } | null {
  if (bytes.length === 0) return null;
  try {
    const d = new FrameDecoder({ role });
    d.push(bytes);
    const f = d.next();
    if (f && f.msg.type === MsgType.ERROR) return { reason: f.msg.reason, code: f.msg.code };
  } catch {
    // not an ERROR frame: the channel's own decoder will judge these bytes
  }
  return null;
}

/** True for the codes of `TlsErrorCode`. */
export function isTlsErrorCode(code: string | undefined): code is TlsErrorCode {
  return code !== undefined && code.startsWith('TLS_');
}

function ignore(): void {
  // errors after the handshake are reported by the hello reader or the Channel
}
