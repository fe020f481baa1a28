/**
 * payload.ts — owns `Payload` (a frame's raw bytes as zero-copy segments of the
 * received chunks) and the helpers to consume it: page-run walking for placing
 * pages straight from socket buffers, and a bounded copy for small payloads.
 */
import { ProtocolError } from './errors.js';

/** Raw frame payload: `segments` are subarrays of received chunks, in order,
 *  summing to `length`. A payload straddling chunks has several segments. */
export interface Payload {
  length: number;
  segments: Buffer[];
}

export const EMPTY_PAYLOAD: Payload = Object.freeze({ length: 0, segments: Object.freeze([]) as unknown as Buffer[] });

/** Wrap buffers you already hold as a Payload (no copy). */
export function toPayload(data: Buffer | readonly Buffer[]): Payload {
  if (Buffer.isBuffer(data)) return data.length === 0 ? EMPTY_PAYLOAD : { length: data.length, segments: [data] };
  let length = 0;
  const segments: Buffer[] = [];
  for (const b of data) {
    if (b.length === 0) continue;
    length += b.length;
    segments.push(b);
  }
  return { length, segments };
}

/** The payload as one Buffer. Zero-copy when it is a single segment, otherwise
 *  one copy of `length` bytes (bounded by the decoder's maxPayloadBytes). Meant
 *  for small payloads: device state, bitmaps. */
export function payloadToBuffer(p: Payload): Buffer {
  if (p.segments.length === 1) return p.segments[0]!;
  if (p.segments.length === 0) return Buffer.alloc(0);
  return Buffer.concat(p.segments, p.length);
}

/**
 * Walk a payload of whole pages, calling `cb(src, firstPageIndex, pageCount)`
 * for each maximal run of complete pages lying inside one segment (`src` is a
 * zero-copy view). A page straddling segments is copied into `bounce` (at least
 * `pageSize` bytes, provided by the caller) and reported alone with pageCount 1;
 * `src` is then `bounce` itself (or its first pageSize bytes) and is only valid
 * during the callback.
 */
export function forEachPageRun(
  p: Payload,
  pageSize: number,
  bounce: Buffer,
  cb: (src: Buffer, firstPageIndex: number, pageCount: number) => void,
): void {
  if (!Number.isInteger(pageSize) || pageSize <= 0) throw new ProtocolError('RANGE', `page size must be a positive integer, got ${pageSize}`);
  if (p.length % pageSize !== 0)
    throw new ProtocolError('ALIGN', `payload of ${p.length} bytes is not a whole number of ${pageSize}-byte pages`);
  if (bounce.length < pageSize) throw new ProtocolError('RANGE', `bounce buffer of ${bounce.length} bytes is smaller than the page size ${pageSize}`);
  const page = bounce.length === pageSize ? bounce : bounce.subarray(0, pageSize);
  let index = 0; // next page index to report
  let fill = 0; // bytes of a straddling page already in `page`
  const segs = p.segments;
  for (let s = 0; s < segs.length; s++) {
    const seg = segs[s]!;
    const len = seg.length;
    let off = 0;
    if (fill > 0) {
      const take = Math.min(pageSize - fill, len);
      page.set(seg.subarray(0, take), fill);
      fill += take;
      off = take;
      if (fill < pageSize) continue;
      cb(page, index++, 1);
      fill = 0;
    }
    const n = Math.floor((len - off) / pageSize);
    if (n > 0) {
      const end = off + n * pageSize;
      cb(off === 0 && end === len ? seg : seg.subarray(off, end), index, n);
      index += n;
      off = end;
    }
    if (off < len) {
      page.set(seg.subarray(off, len), 0);
      fill = len - off;
    }
  }
  if (fill !== 0) throw new ProtocolError('TRUNCATED', `payload segments end inside page ${index}`);
}
