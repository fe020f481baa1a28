/**
 * struct.ts — owns the preallocated C structs the hot ioctls take: one stable buffer per struct
 * (its address never moves, so it is computed once), with 64-bit fields written and read as
 * two 32-bit halves from plain JS numbers. Nothing here allocates after construction.
 *
 * Addresses and lengths on x86_64 fit in 47 bits, well inside a double's 53, so a number holds
 * any field exactly; signed 64-bit results (`copy`, `zeropage`) come back negative as numbers.
 */
import { bufferAddress, stableBuffer } from './libc.js';

const TWO32 = 4294967296;

export class Struct {
  /** The bytes; passed to the kernel by `addr`. */
  readonly buf: Buffer;
  /** The address of `buf`'s first byte. */
  readonly addr: number;
  private readonly u32: Uint32Array;
  private readonly i32: Int32Array;

  constructor(size: number) {
    this.buf = stableBuffer((size + 7) & ~7);
    this.addr = bufferAddress(this.buf);
    this.u32 = new Uint32Array(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength >>> 2);
    this.i32 = new Int32Array(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength >>> 2);
  }

  /** Writes a non-negative integer (< 2^53) as a u64 at byte offset `off` (8-aligned). */
  set64(off: number, value: number): void {
    const i = off >>> 2;
    this.u32[i] = value >>> 0;
    this.u32[i + 1] = (value / TWO32) >>> 0;
  }

  /** Reads a u64 at `off` as a number (exact below 2^53). */
  getU64(off: number): number {
    const i = off >>> 2;
    return this.u32[i + 1]! * TWO32 + this.u32[i]!;
  }

  /** Reads an s64 at `off` as a number (negative errno values come back negative). */
  getS64(off: number): number {
    const i = off >>> 2;
    return this.i32[i + 1]! * TWO32 + this.u32[i]!;
  }

  /** Reads a u64 at `off` as a bigint (for masks that use bit 63, such as UFFDIO_API's ioctls). */
  getBig(off: number): bigint {
    const i = off >>> 2;
    return (BigInt(this.u32[i + 1]!) << 32n) | BigInt(this.u32[i]!);
  }

  set32(off: number, value: number): void {
    this.u32[off >>> 2] = value >>> 0;
  }

  getU32(off: number): number {
    return this.u32[off >>> 2]!;
  }

  /** Zeroes the whole struct. */
  clear(): void {
    this.u32.fill(0);
  }
}
