/**
 * guests/ab.ts — owns the `ab` guest, the one QEMU's migration tests use: each vCPU endlessly
 * increments the first byte of every 4 KiB page of its share of RAM (the sweep range divided
 * evenly among vCPUs, page granularity). Its device slot is the vCPU's position and the value
 * of its current pass, so a destination resumes mid-sweep. Its check allows, per share, first
 * bytes v+1,…,v+1,v,…,v (one step down by exactly 1, mod 256; exactly at the saved position
 * when device state is known) and zero everywhere else.
 */
import { defineGuest, type BadSpot, type DeviceContext, type IntegrityReport, type VcpuContext } from '../guest.js';

export const AB_BLOCK = 'ram0';
/** The guest page the sweep increments (QEMU's TEST_MEM_PAGE_SIZE), whatever the host page size. */
export const AB_PAGE = 4096;
export const AB_DEFAULT_RAM = 64 * 1024 * 1024;
/** Work per step: stop touching pages once this much time has passed (ms). */
const STEP_BUDGET_MS = 0.02;
/** Pages between two clock reads. */
const CLOCK_EVERY = 8;

export interface AbConfig {
  /** Byte range [start, end) of ram0 the vCPUs write (page aligned); default the whole block. */
  sweep?: { start: number; end: number };
}

/** A vCPU's device slot: the next page offset it increments, and the value of its current pass. */
export interface AbSlot {
  pos: number;
  value: number;
}

export interface Range {
  start: number;
  end: number;
}

/** The sweep range of a block of `length` bytes under `config` (validated). */
export function abSweep(config: AbConfig, length: number): Range {
  const s = config.sweep;
  if (s === undefined) return { start: 0, end: length };
  const { start, end } = s;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > length || start >= end) {
    throw new RangeError(`ab: sweep ${start}..${end} must satisfy 0 <= start < end <= ${length}`);
  }
  if (start % AB_PAGE !== 0 || end % AB_PAGE !== 0) throw new RangeError(`ab: sweep ${start}..${end} must be ${AB_PAGE}-byte aligned`);
  return { start, end };
}

/** vCPU `index`'s share of the sweep: byte range, page aligned (may be empty with more vCPUs than pages). */
export function abShare(sweep: Range, index: number, count: number): Range {
  const pages = (sweep.end - sweep.start) / AB_PAGE;
  return {
    start: sweep.start + Math.floor((index * pages) / count) * AB_PAGE,
    end: sweep.start + Math.floor(((index + 1) * pages) / count) * AB_PAGE,
  };
}

function assertSlot(slot: unknown, share: Range, index: number): asserts slot is AbSlot {
  const d = slot as Partial<AbSlot> | null;
  const ok = !!d && typeof d === 'object' && Number.isSafeInteger(d.pos) && Number.isInteger(d.value)
    && d.value! >= 0 && d.value! <= 255 && d.pos! % AB_PAGE === 0
    && (share.start === share.end ? d.pos === share.start : d.pos! >= share.start && d.pos! < share.end);
  if (!ok) throw new RangeError(`ab: vCPU ${index} device slot ${JSON.stringify(slot)} does not fit its share ${share.start}..${share.end}`);
}

interface Local {
  mem: Uint8Array;
  start: number;
  end: number;
}

const hex = (n: number) => `0x${n.toString(16)}`;

function lengthOf(ctx: { layout: readonly { name: string; length: number }[] }): number {
  const b = ctx.layout.find((x) => x.name === AB_BLOCK);
  if (!b) throw new Error(`ab: no block ${AB_BLOCK}`);
  return b.length;
}

/** First offset in [from, to) (4-byte aligned bounds) holding a non-zero byte; -1 if none. */
function firstNonZero(words: Int32Array, from: number, to: number): number {
  let acc = 0;
  for (let i = from >> 2, n = to >> 2; i < n; i++) acc |= words[i]!;
  if (acc === 0) return -1;
  for (let i = from >> 2, n = to >> 2; i < n; i++) {
    const w = words[i]!;
    if (w !== 0) {
      for (let k = 0; k < 4; k++) if ((w >>> (8 * k)) & 0xff) return i * 4 + k;
    }
  }
  return -1;
}

export function verifyAb(mem: Uint8Array, config: AbConfig, vcpus: number, slots: readonly AbSlot[] | undefined): IntegrityReport {
  const length = mem.length;
  const sweep = abSweep(config, length);
  const words = new Int32Array(mem.buffer, mem.byteOffset, length >> 2);
  let bad = 0;
  let firstBad: BadSpot | undefined;
  const fail = (offset: number, detail: string) => {
    bad++;
    if (!firstBad) firstBad = { block: AB_BLOCK, offset, detail };
  };
  const zeroPages = (from: number, to: number) => {
    for (let p = from; p < to; p += AB_PAGE) {
      const at = firstNonZero(words, p, p + AB_PAGE);
      if (at >= 0) fail(at, `byte ${hex(mem[at]!)} outside the sweep, expected 0`);
    }
  };
  zeroPages(0, sweep.start);
  for (let i = 0; i < vcpus; i++) {
    const share = abShare(sweep, i, vcpus);
    const slot = slots?.[i];
    if (slot) assertSlot(slot, share, i);
    let ref = share.start < share.end ? mem[share.start]! : 0;
    let stepped = false;
    for (let p = share.start; p < share.end; p += AB_PAGE) {
      const got = mem[p]!;
      let firstOk: boolean;
      let expected: string;
      if (slot) {
        const want = p < slot.pos ? slot.value : (slot.value + 255) & 255;
        firstOk = got === want;
        expected = `${hex(want)} (vCPU ${i} at ${hex(slot.pos)}, pass value ${hex(slot.value)})`;
      } else if (got === ref) {
        firstOk = true;
        expected = hex(ref);
      } else if (!stepped && got === ((ref + 255) & 255)) {
        ref = got;
        stepped = true;
        firstOk = true;
        expected = hex(ref);
      } else {
        firstOk = false;
        expected = stepped ? hex(ref) : `${hex(ref)} or ${hex((ref + 255) & 255)}`;
      }
      if (!firstOk) {
        fail(p, `first byte ${hex(got)}, expected ${expected}`);
        continue;
      }
      // The rest of the page: the first word without its first byte, then whole words.
      const w0 = words[p >> 2]! & ~0xff;
      let at = -1;
      if (w0 !== 0) for (let k = 1; k < 4 && at < 0; k++) if (mem[p + k]) at = p + k;
      if (at < 0) at = firstNonZero(words, p + 4, p + AB_PAGE);
      if (at >= 0) fail(at, `byte ${hex(mem[at]!)} inside a page, expected 0`);
    }
  }
  zeroPages(sweep.end, length);
  return { checked: true, pages: length / AB_PAGE, bad, ...(firstBad ? { firstBad } : {}) };
}

export default defineGuest<AbConfig, AbSlot>({
  kind: 'ab',

  layout(config, { ram }) {
    const length = ram ?? AB_DEFAULT_RAM;
    if (!Number.isSafeInteger(length) || length <= 0 || length % AB_PAGE !== 0) throw new RangeError(`ab: ram ${length} must be a positive multiple of ${AB_PAGE}`);
    abSweep(config, length);
    return [{ name: AB_BLOCK, length }];
  },

  vcpu: {
    init(ctx: VcpuContext<AbConfig, AbSlot, Local>) {
      const mem = ctx.blocks[AB_BLOCK];
      if (!mem) throw new Error(`ab: no block ${AB_BLOCK}`);
      const share = abShare(abSweep(ctx.config, mem.length), ctx.index, ctx.count);
      ctx.local = { mem, start: share.start, end: share.end };
      if (ctx.fresh) ctx.device = { pos: share.start, value: 1 };
      else assertSlot(ctx.device, share, ctx.index);
    },

    step(ctx: VcpuContext<AbConfig, AbSlot, Local>) {
      const { mem, start, end } = ctx.local;
      if (start === end) {
        ctx.idle(1);
        return;
      }
      const d = ctx.device;
      let pos = d.pos;
      let value = d.value;
      const t0 = performance.now();
      for (let n = 1; ; n++) {
        mem[pos]++;
        pos += AB_PAGE;
        if (pos >= end) {
          pos = start;
          value = (value + 1) & 255;
        }
        if (n % CLOCK_EVERY === 0 && performance.now() - t0 >= STEP_BUDGET_MS) {
          d.pos = pos;
          d.value = value;
          return;
        }
      }
    },
  },

  saveDevice(slots) {
    return slots;
  },

  loadDevice(state: unknown, ctx: DeviceContext<AbConfig>) {
    if (!Array.isArray(state) || state.length !== ctx.vcpus) throw new RangeError(`ab: device state must be ${ctx.vcpus} slot(s)`);
    const sweep = abSweep(ctx.config, lengthOf(ctx));
    state.forEach((slot, i) => assertSlot(slot, abShare(sweep, i, ctx.vcpus), i));
    return state as AbSlot[];
  },

  verify(ctx) {
    const mem = ctx.blocks[AB_BLOCK];
    if (!mem) throw new Error(`ab: no block ${AB_BLOCK}`);
    return verifyAb(mem, ctx.config, ctx.vcpus, ctx.device);
  },
});
