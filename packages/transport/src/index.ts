/**
 * @livemig/transport — migration channels over TCP (optionally TLS 1.3): hellos, framed reads
 * and writes with backpressure, endpoints, the shape of the migration report, and the TLS
 * credentials and certificates channels use.
 */
export * from './address.js';
export * from './channel.js';
export * from './handshake.js';
export * from './report.js';
export * from './trace.js';
export {
  DEFAULT_PSK_IDENTITY,
  TLS_CIPHERS,
  TLS_PSK_CIPHERS,
  TlsError,
  formatSubject,
  loadTlsCredentials,
  subjectMatchesAuthz,
  type TlsCredentials,
  type TlsErrorCode,
  type TlsOptions,
} from './tls.js';
export * from './keepalive.js';
