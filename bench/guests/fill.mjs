// A benchmark guest (user-guest interface of @livemig/machine): at boot each vCPU fills its
// share of `ram0` with a page-unique non-zero pattern, then idles. `config.dataEvery = N`
// fills only every Nth page (the rest stays zero: the "mostly zero" guest). verify() checks
// every word of every page.
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
      ctx.idle(1);
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
