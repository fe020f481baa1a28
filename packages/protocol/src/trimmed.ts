/**
 * trimmed.ts — owns the trimmed page of TRIMMED_RUN: a data page sent without its trailing
 * zero bytes, whole TRIM_UNIT-byte units kept. The source measures how much of a page to keep
 * (`keptUnits`) and writes a run's payload (`writeTrimmedRun`: a u16 LE table of kept units,
 * then the kept bytes page after page); the destination checks a payload's table against its
 * length before it trusts any of it and fills the pages out again (`expandTrimmedRun`).
 * Buffer work only: no object per page.
 */
import { ProtocolError } from './errors.js';
import { TRIM_UNIT } from './messages.js';

/** Per page size: zero buffers of pageSize - k × TRIM_UNIT bytes, k = 0 .. pageSize / TRIM_UNIT. */
const zeroTails = new Map<number, Buffer[]>();

function tailsFor(pageSize: number): Buffer[] {
  let t = zeroTails.get(pageSize);
  if (!t) {
    const zero = Buffer.alloc(pageSize);
    t = [];
    for (let k = 0; k <= pageSize / TRIM_UNIT; k++) t.push(zero.subarray(0, pageSize - k * TRIM_UNIT));
    zeroTails.set(pageSize, t);
  }
  return t;
}

/**
 * Kept bytes up to this many are moved 4 bytes at a time in JavaScript rather than by
 * Buffer#copy / #fill: for a unit or a few, the call costs several times the work (64 bytes
 * here: ~25 against ~100 ns to copy, ~16 against ~60 ns to zero). Longer ones take the call.
 */
const SMALL_BYTES = 4 * TRIM_UNIT;
/** Int32 words are stored in the platform's byte order; DataView reads and writes must match it. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Int32 words over `b[0, bytes)`, or null when `b` does not start on a 4-byte boundary. The
 * callers view one run's pages only (at most MAX_TRIMMED_RUN_BYTES), never a whole guest block:
 * the view stays small and its word offsets too, whatever the size of the block.
 */
function wordsOf(b: Buffer, bytes: number): Int32Array | null {
  return b.byteOffset % 4 === 0 ? new Int32Array(b.buffer, b.byteOffset, Math.floor(Math.min(bytes, b.length) / 4)) : null;
}

function dataViewOf(b: Buffer): DataView {
  return new DataView(b.buffer, b.byteOffset, b.length);
}

/**
 * How many TRIM_UNIT-byte units of the page at `buf[off, off + pageSize)` to keep so that only
 * zeros follow: 0 for a zero page, up to half the page's units; more than half (a page not
 * worth trimming) reads as all of them, pageSize / TRIM_UNIT. A page whose last 4 bytes are
 * not zero costs one read. Otherwise the zero tail is probed from the small end (1, 2, 4 …
 * units kept), then narrowed by halving, a comparison with a zero buffer each (it stops at the
 * first non-zero byte). A page whose bytes after its first unit are all zero — a zero page, or
 * one that keeps a single unit, like every page of the ab guest — costs that one comparison
 * and a look at its first unit: 0.30–0.54 µs a page here, against 0.59–0.82 µs when the zero
 * page was tested first with a comparison of its own (cold memory, one byte a page).
 */
export function keptUnits(buf: Buffer, off: number, pageSize: number): number {
  const units = pageSize / TRIM_UNIT;
  const end = off + pageSize;
  if (buf.readUInt32LE(end - 4) !== 0) return units;
  const tails = tailsFor(pageSize);
  // Bytes from lo units on are not all zero, from hi units on they are. (No closure here: it
  // made this function three times slower.)
  let lo = 0;
  let hi = 1;
  while (tails[hi]!.compare(buf, off + hi * TRIM_UNIT, end) !== 0) {
    lo = hi;
    hi *= 2;
    if (2 * hi > units) return units;
  }
  if (lo === 0) {
    // Zero from the second unit on: one unit kept, or none when the first is zero too.
    for (let i = off; i < off + TRIM_UNIT; i++) if (buf[i] !== 0) return 1;
    return 0;
  }
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (tails[mid]!.compare(buf, off + mid * TRIM_UNIT, end) === 0) hi = mid;
    else lo = mid;
  }
  return hi;
}

/**
 * Writes the payload of a TRIMMED_RUN of `count` pages at `dst[dstOff…]`: the table of
 * `kept[0 .. count)` (units), then the kept bytes of each page read from `src` at
 * `srcOff + i × pageSize`. Returns the bytes written (2 × count + the kept bytes); `dst` must
 * have room for them.
 */
export function writeTrimmedRun(
  dst: Buffer,
  dstOff: number,
  src: Buffer,
  srcOff: number,
  pageSize: number,
  kept: ArrayLike<number>,
  count: number,
): number {
  let at = dstOff + 2 * count;
  // The run's pages start on 4-byte boundaries (when it does); the bytes land wherever the
  // table left `at` in `dst`, through a DataView.
  const run = src.subarray(srcOff, srcOff + count * pageSize);
  const words = wordsOf(run, count * pageSize);
  const out = words ? dataViewOf(dst) : null;
  for (let i = 0; i < count; i++) {
    const k = kept[i]!;
    dst.writeUInt16LE(k, dstOff + 2 * i);
    if (k === 0) continue;
    const page = i * pageSize;
    const bytes = k * TRIM_UNIT;
    if (words && bytes <= SMALL_BYTES) {
      const w = page / 4;
      for (let j = 0; j < bytes; j += 4) out!.setInt32(at + j, words[w + (j >>> 2)]!, LITTLE_ENDIAN);
    } else run.copy(dst, at, page, page + bytes);
    at += bytes;
  }
  return at - dstOff;
}

/**
 * Fills `out[0, count × pageSize)` with the `count` pages of a TRIMMED_RUN payload: each
 * page's kept bytes, then zeros (not written when `outIsZero`: the caller keeps `out` zero and
 * clears what this wrote with `clearTrimmedRun`). The whole table is checked first (each entry
 * at most a page, their sum exactly what the payload carries after it): nothing is written
 * from a payload that fails, and the error names the page or the lengths.
 */
export function expandTrimmedRun(payload: Buffer, count: number, pageSize: number, out: Buffer, outIsZero = false): void {
  const units = pageSize / TRIM_UNIT;
  const table = 2 * count;
  if (payload.length < table) throw new ProtocolError('TRUNCATED', `TRIMMED_RUN: payload of ${payload.length} bytes is shorter than the ${table}-byte table of ${count} pages`);
  if (out.length < count * pageSize) throw new ProtocolError('RANGE', `TRIMMED_RUN: ${out.length}-byte buffer for ${count} pages of ${pageSize} bytes`);
  let sum = 0;
  for (let i = 0; i < count; i++) {
    const k = payload.readUInt16LE(2 * i);
    if (k > units) throw new ProtocolError('RANGE', `TRIMMED_RUN: page ${i} keeps ${k} units of ${TRIM_UNIT} bytes, more than its ${pageSize}-byte page`);
    sum += k;
  }
  if (table + sum * TRIM_UNIT !== payload.length)
    throw new ProtocolError('MALFORMED', `TRIMMED_RUN: the table keeps ${sum * TRIM_UNIT} bytes, the payload carries ${payload.length - table} after it`);
  let at = table;
  // Pages start on 4-byte boundaries of `out` (when it does); the kept bytes lie wherever the
  // table left them in the payload, read through a DataView.
  const words = wordsOf(out, count * pageSize);
  const from = words ? dataViewOf(payload) : null;
  for (let i = 0; i < count; i++) {
    const kept = payload.readUInt16LE(2 * i) * TRIM_UNIT;
    const page = i * pageSize;
    if (kept > 0) {
      if (words && kept <= SMALL_BYTES) {
        const w = page / 4;
        for (let j = 0; j < kept; j += 4) words[w + (j >>> 2)] = from!.getInt32(at + j, LITTLE_ENDIAN);
      } else payload.copy(out, page, at, at + kept);
    }
    if (!outIsZero && kept < pageSize) out.fill(0, page + kept, page + pageSize);
    at += kept;
  }
}

/** Zeroes in `out` what `expandTrimmedRun` wrote there from the same (checked) payload. */
export function clearTrimmedRun(payload: Buffer, count: number, pageSize: number, out: Buffer): void {
  const words = wordsOf(out, count * pageSize);
  for (let i = 0; i < count; i++) {
    const kept = payload.readUInt16LE(2 * i) * TRIM_UNIT;
    if (kept === 0) continue;
    const page = i * pageSize;
    if (words && kept <= SMALL_BYTES) words.fill(0, page / 4, (page + kept) / 4);
    else out.fill(0, page, page + kept);
  }
}
