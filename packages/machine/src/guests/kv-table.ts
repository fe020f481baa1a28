/**
 * guests/kv-table.ts — owns the kv guest's in-RAM data structure: an open-addressing hash
 * table (linear probing, tombstones, in-place rehash) and a data area of power-of-two records
 * (bump allocation plus one free list per size class), all inside one RAM block, all offsets
 * u32 little-endian. Only vCPU and verification threads use it (it reads and writes RAM).
 *
 *   header   (4 KiB)  magic, version, slot count, live count, tombstones, table offset,
 *                     data offset, data top (bump), data end, free-list heads
 *   table             slots × {record offset (0 empty, 1 tombstone), key hash}
 *   data              records {capacity, key length, value length, key, value};
 *                     a free record has key length 0xffffffff and the next free record after it
 */

export const KV_MAGIC = 0x3147564b; // "KVG1"
export const KV_VERSION = 1;
export const KV_MAX_KEY = 1024;
export const KV_MIN_BLOCK = 64 * 1024;
export const KV_MAX_BLOCK = 1024 * 1024 * 1024;

const H_MAGIC = 0;
const H_VERSION = 1;
const H_SLOTS = 2;
const H_COUNT = 3;
const H_TOMBS = 4;
const H_TABLE = 5;
const H_DATA = 6;
const H_TOP = 7;
const H_END = 8;
const H_FREE = 16;
const NCLASSES = 22; // 32 B … 64 MiB
const MIN_CAP = 32;
const HEADER_BYTES = 4096;
const REC = 12;
const EMPTY = 0;
const TOMB = 1;
const FREE_MARK = 0xffffffff;

export interface KvGeometry {
  slots: number;
  table: number;
  data: number;
  end: number;
}

/** Table geometry for a block of `length` bytes: about one slot per 256 bytes, a power of two. */
export function kvGeometry(length: number): KvGeometry {
  if (length < KV_MIN_BLOCK || length > KV_MAX_BLOCK || length % 4096 !== 0) {
    throw new RangeError(`kv: block length ${length} must be a multiple of 4096 in ${KV_MIN_BLOCK}..${KV_MAX_BLOCK}`);
  }
  let slots = 64;
  while (slots * 2 <= length / 256 && slots < 1 << 22) slots *= 2;
  const table = HEADER_BYTES;
  const data = Math.ceil((table + slots * 8) / 4096) * 4096;
  return { slots, table, data, end: length };
}

/** FNV-1a, 32 bits. */
export function kvHash(key: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key[i]!, 0x01000193);
  return h >>> 0;
}

function classOf(size: number): number {
  const cap = Math.max(MIN_CAP, 2 ** Math.ceil(Math.log2(size)));
  return Math.log2(cap) - 5;
}

export type PutResult = 'created' | 'replaced' | 'full';

export interface KvCheck {
  problems: number;
  first?: { offset: number; detail: string };
  entries: number;
  /** Bytes from the start of the block to the data top. */
  used: number;
}

export class KvTable {
  private readonly u8: Uint8Array;
  private readonly u32: Uint32Array;

  constructor(mem: Uint8Array) {
    this.u8 = mem;
    this.u32 = new Uint32Array(mem.buffer, mem.byteOffset, mem.length >>> 2);
  }

  get formatted(): boolean {
    return this.u32[H_MAGIC] === KV_MAGIC;
  }

  get count(): number {
    return this.u32[H_COUNT]!;
  }

  /** Writes an empty table over the block. */
  format(): void {
    const g = kvGeometry(this.u8.length);
    const u = this.u32;
    u.fill(0, 0, g.data >>> 2);
    u[H_VERSION] = KV_VERSION;
    u[H_SLOTS] = g.slots;
    u[H_TABLE] = g.table;
    u[H_DATA] = g.data;
    u[H_TOP] = g.data;
    u[H_END] = g.end;
    u[H_MAGIC] = KV_MAGIC;
  }

  private assertFormatted(): void {
    if (!this.formatted) throw new Error('kv: table not formatted');
  }

  /** [slot index or -1, insertion slot or -1] for `key`. */
  private lookup(key: Uint8Array, h: number): [number, number] {
    const u = this.u32;
    const slots = u[H_SLOTS]!;
    const mask = slots - 1;
    const tbl = u[H_TABLE]! >>> 2;
    let tomb = -1;
    let i = h & mask;
    for (let n = 0; n < slots; n++) {
      const rec = u[tbl + 2 * i]!;
      if (rec === EMPTY) return [-1, tomb >= 0 ? tomb : i];
      if (rec === TOMB) {
        if (tomb < 0) tomb = i;
      } else if (u[tbl + 2 * i + 1] === h && this.keyEquals(rec, key)) {
        return [i, i];
      }
      i = (i + 1) & mask;
    }
    return [-1, tomb];
  }

  private keyEquals(rec: number, key: Uint8Array): boolean {
    const kl = this.u32[(rec >>> 2) + 1]!;
    if (kl !== key.length) return false;
    const u8 = this.u8;
    const at = rec + REC;
    for (let k = 0; k < kl; k++) if (u8[at + k] !== key[k]) return false;
    return true;
  }

  private slotRec(i: number): number {
    return this.u32[(this.u32[H_TABLE]! >>> 2) + 2 * i]!;
  }

  private setSlot(i: number, rec: number, h: number): void {
    const base = (this.u32[H_TABLE]! >>> 2) + 2 * i;
    this.u32[base] = rec;
    this.u32[base + 1] = h;
  }

  private alloc(size: number): number {
    const c = classOf(size);
    if (c >= NCLASSES) return 0;
    const u = this.u32;
    const head = u[H_FREE + c]!;
    if (head !== 0) {
      u[H_FREE + c] = u[(head >>> 2) + 2]!;
      u[(head >>> 2) + 1] = 0;
      u[(head >>> 2) + 2] = 0;
      return head;
    }
    const cap = MIN_CAP << c;
    const top = u[H_TOP]!;
    if (top + cap > u[H_END]!) return 0;
    u[H_TOP] = top + cap;
    u[top >>> 2] = cap;
    return top;
  }

  private release(rec: number): void {
    const u = this.u32;
    const c = classOf(u[rec >>> 2]!);
    u[(rec >>> 2) + 1] = FREE_MARK;
    u[(rec >>> 2) + 2] = u[H_FREE + c]!;
    u[H_FREE + c] = rec;
  }

  private write(rec: number, key: Uint8Array, value: Uint8Array): void {
    this.u32[(rec >>> 2) + 1] = key.length;
    this.u32[(rec >>> 2) + 2] = value.length;
    this.u8.set(key, rec + REC);
    this.u8.set(value, rec + REC + key.length);
  }

  /** A copy of the value stored under `key`. */
  get(key: Uint8Array): Uint8Array | undefined {
    this.assertFormatted();
    const [i] = this.lookup(key, kvHash(key));
    if (i < 0) return undefined;
    const rec = this.slotRec(i);
    const kl = this.u32[(rec >>> 2) + 1]!;
    const vl = this.u32[(rec >>> 2) + 2]!;
    return this.u8.slice(rec + REC + kl, rec + REC + kl + vl);
  }

  put(key: Uint8Array, value: Uint8Array): PutResult {
    this.assertFormatted();
    if (key.length === 0 || key.length > KV_MAX_KEY) throw new RangeError(`kv: key length ${key.length} not in 1..${KV_MAX_KEY}`);
    const u = this.u32;
    const h = kvHash(key);
    let [i, at] = this.lookup(key, h);
    const need = REC + key.length + value.length;
    if (i >= 0) {
      const rec = this.slotRec(i);
      if (need <= u[rec >>> 2]!) {
        this.write(rec, key, value);
        return 'replaced';
      }
      const fresh = this.alloc(need);
      if (!fresh) return 'full';
      this.write(fresh, key, value);
      this.setSlot(i, fresh, h);
      this.release(rec);
      return 'replaced';
    }
    const maxLoad = Math.floor((u[H_SLOTS]! * 3) / 4);
    if (u[H_COUNT]! + 1 > maxLoad) return 'full';
    if (at < 0 || (this.slotRec(at) === EMPTY && u[H_COUNT]! + u[H_TOMBS]! + 1 > maxLoad)) {
      this.rehash();
      [, at] = this.lookup(key, h);
    }
    const rec = this.alloc(need);
    if (!rec) return 'full';
    this.write(rec, key, value);
    if (this.slotRec(at) === TOMB) u[H_TOMBS] = u[H_TOMBS]! - 1;
    this.setSlot(at, rec, h);
    u[H_COUNT] = u[H_COUNT]! + 1;
    return 'created';
  }

  delete(key: Uint8Array): boolean {
    this.assertFormatted();
    const [i] = this.lookup(key, kvHash(key));
    if (i < 0) return false;
    const u = this.u32;
    const rec = this.slotRec(i);
    this.setSlot(i, TOMB, 0);
    u[H_COUNT] = u[H_COUNT]! - 1;
    u[H_TOMBS] = u[H_TOMBS]! + 1;
    this.release(rec);
    return true;
  }

  /** Rebuilds the table in place without tombstones. */
  private rehash(): void {
    const u = this.u32;
    const slots = u[H_SLOTS]!;
    const tbl = u[H_TABLE]! >>> 2;
    const live: number[] = [];
    for (let i = 0; i < slots; i++) {
      const rec = u[tbl + 2 * i]!;
      if (rec !== EMPTY && rec !== TOMB) live.push(rec, u[tbl + 2 * i + 1]!);
    }
    u.fill(0, tbl, tbl + 2 * slots);
    const mask = slots - 1;
    for (let k = 0; k < live.length; k += 2) {
      let i = live[k + 1]! & mask;
      while (u[tbl + 2 * i] !== EMPTY) i = (i + 1) & mask;
      u[tbl + 2 * i] = live[k]!;
      u[tbl + 2 * i + 1] = live[k + 1]!;
    }
    u[H_TOMBS] = 0;
  }

  /** Checks the whole structure; reports the number of problems and the first one. */
  check(): KvCheck {
    const u = this.u32;
    let problems = 0;
    let first: KvCheck['first'];
    const bad = (offset: number, detail: string) => {
      problems++;
      if (!first || offset < first.offset) first = { offset, detail };
    };
    const result = (entries: number, used: number): KvCheck => ({ problems, ...(first ? { first } : {}), entries, used });
    if (u[H_MAGIC] !== KV_MAGIC) {
      bad(0, `bad magic 0x${u[H_MAGIC]!.toString(16)}`);
      return result(0, 0);
    }
    const g = kvGeometry(this.u8.length);
    if (u[H_VERSION] !== KV_VERSION) bad(H_VERSION * 4, `unknown version ${u[H_VERSION]}`);
    const top = u[H_TOP]!;
    if (u[H_SLOTS] !== g.slots || u[H_TABLE] !== g.table || u[H_DATA] !== g.data || u[H_END] !== g.end || top < g.data || top > g.end) {
      bad(H_SLOTS * 4, `geometry ${[H_SLOTS, H_TABLE, H_DATA, H_TOP, H_END].map((k) => u[k]).join('/')} does not fit the block (slots/table/data/top/end)`);
      return result(0, 0);
    }
    const tbl = g.table >>> 2;
    const intervals: Array<[number, number]> = [];
    const validCap = (rec: number, cap: number) => cap >= MIN_CAP && (cap & (cap - 1)) === 0 && classOf(cap) < NCLASSES && rec + cap <= top;
    let live = 0;
    let tombs = 0;
    for (let i = 0; i < g.slots; i++) {
      const rec = u[tbl + 2 * i]!;
      const slotAt = g.table + 8 * i;
      if (rec === EMPTY) continue;
      if (rec === TOMB) {
        tombs++;
        continue;
      }
      if (rec < g.data || rec + REC > top || rec % 4 !== 0) {
        bad(slotAt, `slot ${i} points outside the data area (0x${rec.toString(16)})`);
        continue;
      }
      const cap = u[rec >>> 2]!;
      if (!validCap(rec, cap)) {
        bad(rec, `record capacity ${cap} invalid`);
        continue;
      }
      const kl = u[(rec >>> 2) + 1]!;
      const vl = u[(rec >>> 2) + 2]!;
      if (kl === FREE_MARK) {
        bad(rec, `slot ${i} points to a free record`);
        continue;
      }
      if (kl === 0 || kl > KV_MAX_KEY || REC + kl + vl > cap) {
        bad(rec, `record lengths key ${kl}, value ${vl} do not fit capacity ${cap}`);
        continue;
      }
      live++;
      intervals.push([rec, cap]);
      const key = this.u8.subarray(rec + REC, rec + REC + kl);
      const h = kvHash(key);
      if (u[tbl + 2 * i + 1] !== h) bad(slotAt, `slot ${i} hash 0x${u[tbl + 2 * i + 1]!.toString(16)} != key hash 0x${h.toString(16)}`);
      else if (this.lookup(key, h)[0] !== i) bad(slotAt, `slot ${i}: key unreachable or duplicated`);
    }
    if (live !== u[H_COUNT]) bad(H_COUNT * 4, `header counts ${u[H_COUNT]} entries, table holds ${live}`);
    if (tombs !== u[H_TOMBS]) bad(H_TOMBS * 4, `header counts ${u[H_TOMBS]} tombstones, table holds ${tombs}`);
    const maxNodes = (top - g.data) / MIN_CAP + 1;
    for (let c = 0; c < NCLASSES; c++) {
      let p = u[H_FREE + c]!;
      for (let n = 0; p !== 0; n++) {
        if (n > maxNodes) {
          bad((H_FREE + c) * 4, `free list ${c} has a cycle`);
          break;
        }
        if (p < g.data || p + REC > top || p % 4 !== 0 || u[p >>> 2] !== MIN_CAP << c || u[(p >>> 2) + 1] !== FREE_MARK || !validCap(p, MIN_CAP << c)) {
          bad(p >= g.data && p < top ? p : (H_FREE + c) * 4, `free list ${c}: bad node 0x${p.toString(16)}`);
          break;
        }
        intervals.push([p, MIN_CAP << c]);
        p = u[(p >>> 2) + 2]!;
      }
    }
    intervals.sort((a, b) => a[0] - b[0]);
    let sum = 0;
    for (let k = 0; k < intervals.length; k++) {
      sum += intervals[k]![1];
      if (k > 0 && intervals[k - 1]![0] + intervals[k - 1]![1] > intervals[k]![0]) {
        bad(intervals[k]![0], `record at 0x${intervals[k]![0].toString(16)} overlaps the one at 0x${intervals[k - 1]![0].toString(16)}`);
      }
    }
    if (sum !== top - g.data) bad(g.data, `data area accounting: records and free space cover ${sum} of ${top - g.data} bytes`);
    return result(live, top);
  }
}
