/**
 * errors.ts — owns how a failing system call is reported: `SyscallError` carries the call,
 * the errno number and its symbol, and the object involved, so every message reads like
 * `UFFDIO_COPY failed: EEXIST (block ram0, offset 0x1000)`.
 */
import { constants } from 'node:os';

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** The symbol for an errno value (`EEXIST`), or `E<n>` when unknown. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** The errno value for a symbol, e.g. `errnoValue('EAGAIN') === 11`. */
export function errnoValue(name: keyof typeof constants.errno): number {
  return constants.errno[name];
}

export class SyscallError extends Error {
  /** The failing call, e.g. `UFFDIO_COPY` or `mmap`. */
  readonly call: string;
  /** The errno number. */
  readonly errno: number;
  /** The errno symbol, e.g. `EEXIST`. */
  readonly code: string;
  /** What the call was made on, e.g. `block ram0, offset 0x1000`; may be empty. */
  readonly object: string;

  constructor(call: string, errno: number, object = '') {
    const code = errnoName(errno);
    super(`${call} failed: ${code}${object ? ` (${object})` : ''}`);
    this.name = 'SyscallError';
    this.call = call;
    this.errno = errno;
    this.code = code;
    this.object = object;
  }
}

/** Formats a byte offset or address as `0x…` for error messages. */
export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}
