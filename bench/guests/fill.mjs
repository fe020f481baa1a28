// A benchmark guest (user-guest interface of @livemig/machine): at boot each vCPU fills its
// share of `ram0` with a page-unique non-zero pattern, then idles. `config.dataEvery = N`
// fills only every Nth page (the rest stays zero: the "mostly zero" guest). With
// `config.touch = "random"` each vCPU instead keeps reading one word of a pseudo-random page of
// its share (it never writes): after a postcopy switchover nearly every read faults on a page
// not received yet while the background stream runs, which is what the page-request latency
// scenarios measure. verify() checks every word of every page.
const PAGE = 4096;

function share(ctx, length) {
  const pages = length / PAGE;
  const per = Math.ceil(pages / ctx.count);
  return [ctx.index * per, Math.min(pages, (ctx.index + 1) * per)];
}

function expected(page, k, every) {
  return page % every === 0 ? ((page * 1024 + k + 1) >>> 0) : 0;
}

export default {
  kind: 'fill',
  layout(config, { ram }) {
    return [{ name: 'ram0', length: ram ?? 64 * 1024 * 1024 }];
  },
  vcpu: {
    init(ctx) {
      if (!ctx.fresh) return;
      const mem = ctx.blocks.ram0;
      const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length / 4);
      const every = ctx.config.dataEvery ?? 1;
      const [first, end] = share(ctx, mem.length);
      for (let p = first; p < end; p++) {
        if (p % every !== 0) continue;
        const base = p * 1024;
        for (let k = 0; k < 1024; k++) words[base + k] = (base + k + 1) >>> 0;
      }
      ctx.device = { filled: true };
    },
    step(ctx) {
      if (ctx.config.touch !== 'random') {
        ctx.idle(1);
        return;
      }
      const mem = ctx.blocks.ram0;
      const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length / 4);
      const [first, end] = share(ctx, mem.length);
      let x = ctx.device.seed ?? ctx.index + 1;
      let sum = 0;
      for (let i = 0; i < 16; i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        sum = (sum + words[(first + (x % (end - first))) * 1024]) >>> 0;
      }
      ctx.device = { ...ctx.device, seed: x, reads: (ctx.device.reads ?? 0) + 16, sum };
    },
  },
  verify(ctx) {
    const mem = ctx.blocks.ram0;
    const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length / 4);
    const every = ctx.config.dataEvery ?? 1;
    const pages = mem.length / PAGE;
    let bad = 0;
    let firstBad;
    for (let p = 0; p < pages; p++) {
      const base = p * 1024;
      for (let k = 0; k < 1024; k++) {
        const want = expected(p, k, every);
        if (words[base + k] !== want) {
          bad++;
          firstBad ??= { block: 'ram0', offset: p * PAGE + k * 4, detail: `expected ${want}, got ${words[base + k]}` };
          break;
        }
      }
    }
    return { checked: true, pages, bad, ...(firstBad ? { firstBad } : {}) };
  },
};
