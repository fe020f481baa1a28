/**
 * certs.ts — owns certificate authoring for TLS channels: a CA, a server certificate whose
 * SANs are the destination's names and IPs, and a client certificate, written in QEMU's x509
 * layout (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem).
 *
 * node-forge builds and signs the certificates (RSA 2048, SHA-256). The RSA keys come from
 * Node's crypto (OpenSSL), which is far faster than forge's pure-JS key generation.
 *
 * This module is its own entry point (`@livemig/transport/certs`), not part of the package
 * index: a process that has loaded node-forge migrates about 30 % slower (measured: 1 GiB
 * precopy 1.0 → 0.75 GB/s, with more time in the garbage collector), so only what authors
 * certificates should load it.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface CertOptions {
  /** Directory to write to; created (mode 0700) if needed. */
  dir: string;
  /** DNS names and IPs of the destination: they go into the server certificate's SANs (IPs as iPAddress). */
  hosts: string[];
  /** Validity in days (default 365). */
  days?: number;
  /** Common-name prefix (default 'livemig'): the CA is `<cn>-ca`, the client `<cn>-client`. */
  cn?: string;
  /** Overwrite existing files. */
  force?: boolean;
  /** Start of validity (default: a minute ago, to absorb clock skew). Tests use it for expired or not-yet-valid certificates. */
  notBefore?: Date;
  /** Common name of the client certificate (default `<cn>-client`). */
  clientCn?: string;
}

export const CERT_FILES = ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'] as const;

const DNS_NAME = /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\.?$/;

/**
 * Creates a CA and, signed by it, a server and a client certificate with their keys. Refuses to
 * overwrite an existing file unless `force`. Private keys are written mode 0600. Returns the
 * paths written, in the order of `CERT_FILES`.
 */
export function createCertificates(opts: CertOptions): { files: string[] } {
  const days = opts.days ?? 365;
  if (!Number.isInteger(days) || days < 1) throw new Error(`certificates: days must be a whole number ≥ 1, got ${String(opts.days)}`);
  const cn = opts.cn ?? 'livemig';
  if (cn.trim() === '') throw new Error('certificates: the common-name prefix (cn) is empty');
  const clientCn = opts.clientCn ?? `${cn}-client`;
  const hosts = opts.hosts.map((h) => h.trim()).filter((h) => h !== '');
  if (hosts.length === 0) throw new Error('certificates: give at least one host name or IP address of the destination (they go into the server certificate)');
  const sans = hosts.map((h) => {
    const bare = h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
    if (net.isIP(bare) !== 0) return { type: 7, ip: bare };
    if (!DNS_NAME.test(h)) throw new Error(`certificates: "${h}" is neither an IP address nor a DNS name`);
    return { type: 2, value: h };
  });
  const notBefore = opts.notBefore ? new Date(opts.notBefore.getTime()) : new Date(Date.now() - 60_000);
  if (Number.isNaN(notBefore.getTime())) throw new Error('certificates: notBefore is not a valid date');
  const notAfter = new Date(notBefore.getTime() + days * 86_400_000);

  const files = CERT_FILES.map((f) => path.join(opts.dir, f));
  if (!opts.force) {
    const existing = files.filter((f) => fs.existsSync(f));
    if (existing.length > 0) throw new Error(`certificates: ${existing.join(', ')} already ${existing.length === 1 ? 'exists' : 'exist'} (use force / --force to overwrite)`);
  }

  const ca = keyPair();
  const caSubject = [{ shortName: 'CN', value: `${cn}-ca` }];
  const caCert = build({
    subject: caSubject,
    issuer: caSubject,
    publicKey: ca.publicKey,
    notBefore,
    notAfter,
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectKeyIdentifier' },
    ],
  });
  caCert.sign(ca.privateKey, forge.md.sha256.create());
  const caKeyId = caCert.generateSubjectKeyIdentifier().getBytes();

  const leaf = (subjectCn: string, usage: 'serverAuth' | 'clientAuth', extra: object[]): { certPem: string; keyPem: string } => {
    const kp = keyPair();
    const cert = build({
      subject: [{ shortName: 'CN', value: subjectCn }],
      issuer: caSubject,
      publicKey: kp.publicKey,
      notBefore,
      notAfter,
      extensions: [
        { name: 'basicConstraints', cA: false, critical: true },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
        { name: 'extKeyUsage', [usage]: true },
        ...extra,
        { name: 'subjectKeyIdentifier' },
        { name: 'authorityKeyIdentifier', keyIdentifier: caKeyId },
      ],
    });
    cert.sign(ca.privateKey, forge.md.sha256.create());
    return { certPem: forge.pki.certificateToPem(cert), keyPem: kp.pem };
  };
  const server = leaf(hosts[0]!, 'serverAuth', [{ name: 'subjectAltName', altNames: sans }]);
  const client = leaf(clientCn, 'clientAuth', []);

  fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const contents = [forge.pki.certificateToPem(caCert), server.certPem, server.keyPem, client.certPem, client.keyPem];
  for (let i = 0; i < files.length; i++) {
    const isKey = files[i]!.endsWith('-key.pem');
    writeFile(files[i]!, contents[i]!, isKey ? 0o600 : 0o644, !!opts.force);
  }
  return { files };
}

/** An RSA 2048 key pair from OpenSSL, as forge keys plus the private key's PEM (PKCS#8). */
function keyPair(): { publicKey: forge.pki.rsa.PublicKey; privateKey: forge.pki.rsa.PrivateKey; pem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { publicKey: forge.pki.publicKeyFromPem(publicKey), privateKey: forge.pki.privateKeyFromPem(privateKey), pem: privateKey };
}

function build(p: {
  subject: forge.pki.CertificateField[];
  issuer: forge.pki.CertificateField[];
  publicKey: forge.pki.rsa.PublicKey;
  notBefore: Date;
  notAfter: Date;
  extensions: object[];
}): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = p.publicKey;
  // 16 random bytes, the top bit cleared so that the DER integer is positive.
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  cert.serialNumber = serial.toString('hex');
  cert.validity.notBefore = p.notBefore;
  cert.validity.notAfter = p.notAfter;
  cert.setSubject(p.subject);
  cert.setIssuer(p.issuer);
  cert.setExtensions(p.extensions);
  return cert;
}

function writeFile(file: string, text: string, mode: number, force: boolean): void {
  try {
    fs.writeFileSync(file, text, { mode, flag: force ? 'w' : 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`certificates: ${file} already exists (use force / --force to overwrite)`);
    throw new Error(`certificates: cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  // The mode given to open applies only to a new file: set it on an overwritten one too.
  fs.chmodSync(file, mode);
}
