/**
 * machine.ts — owns a guest machine: its RAM blocks (created or adopted), its vCPUs and their
 * lifecycle (prepare the workers ahead of time, start fresh or from loaded device state, stop
 * at safe points, cont, destroy), the
 * device state, the integrity check, the guest's host services, the ranges the guest declared
 * unused, and the record of vCPU failures. The main thread never reads or writes guest RAM
 * here: vCPU and verification code run in workers.
 */
import { EventEmitter } from 'node:events';
import type { TransferListItem, Worker } from 'node:worker_threads';
import { HOST_PAGE_SIZE, type Mapping } from '@livemig/uffd';
import { createControlBuffers, type ControlBuffers } from './control.js';
import { assertDeviceState, type DeviceState } from './device.js';
import type { DeviceContext, GuestHost, HostService, IntegrityReport } from './guest.js';
import { createRamBlock, RamBlock, type BlockInfo, type RamBacking } from './ram-block.js';
import { isBuiltinGuestUrl, resolveGuest, type BuiltinGuest, type ResolvedGuest } from './resolve-guest.js';
import { UnusedRanges, type UnusedRange } from './unused.js';
import { Vcpu, VcpuError } from './vcpu.js';
import { verifyInWorker } from './verify.js';

export interface MachineOptions {
  /** `ab` (default), `kv`, or the path / file URL of a guest module. */
  guest?: BuiltinGuest | string;
  /** Guest configuration (structured-clonable; ab: `{sweep}`, kv: `{guestPort}`). */
  config?: object;
  /** Number of vCPUs (default 1). */
  vcpus?: number;
  /** RAM size handed to the guest's layout (default: the guest's own default). */
  ram?: number;
  /** Adopt these mappings as the RAM blocks (matched to the layout by name) instead of creating RAM. */
  blocks?: Mapping[];
  /** With `blocks`: the machine owns them and unmaps them in destroy() (default false: the caller does). */
  ownBlocks?: boolean;
  /** Backing of created RAM (default anonymous). */
  backing?: RamBacking;
  /** Create RAM on 2 MiB huge pages (blocks whose layout asks for 2 MiB pages always are). */
  hugetlb?: boolean;
}

export interface StartOptions {
  /** Run the guest's init from scratch (true) or resume from loaded device state (false). Default: fresh unless device state was loaded. */
  fresh?: boolean;
}

const HUGE = 2 * 1024 * 1024;

export interface MachineEvents {
  'vcpu-error': [err: VcpuError];
  'vcpu-message': [index: number, message: unknown];
}

export class Machine extends EventEmitter<MachineEvents> implements GuestHost {
  readonly guest: ResolvedGuest;
  readonly kind: string;
  /** The module URL of a user guest (what another host must load to run it); undefined for built-in guests. */
  readonly module: string | undefined;
  readonly config: Record<string, unknown>;
  readonly vcpus: number;
  readonly blocks: RamBlock[];
  /** Failures of vCPU workers, in order (also emitted as 'vcpu-error'). */
  readonly errors: VcpuError[] = [];

  private readonly buffers: ControlBuffers;
  private readonly cpus: Vcpu[];
  private readonly unused = new UnusedRanges();
  private loadedSlots: unknown[] | undefined;
  private service: HostService | undefined;
  private preparedFlag = false;
  private startedFlag = false;
  private runningFlag = false;
  private destroyedFlag = false;
  private preparing: Promise<void> | undefined;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private destroying: Promise<void> | undefined;
  private broken: Error | undefined;
  private readonly verifiers = new Map<Worker, Promise<void>>();

  private constructor(guest: ResolvedGuest, config: Record<string, unknown>, vcpus: number, blocks: RamBlock[]) {
    super();
    this.guest = guest;
    this.kind = guest.kind;
    this.module = isBuiltinGuestUrl(guest.url) ? undefined : guest.url;
    this.config = config;
    this.vcpus = vcpus;
    this.blocks = blocks;
    this.buffers = createControlBuffers(vcpus);
    this.cpus = Array.from({ length: vcpus }, (_, i) => new Vcpu(i, this.buffers, {
      onError: (err) => this.recordError(err),
      onMessage: (m) => this.emit('vcpu-message', i, m),
    }));
  }

  /** Resolves the guest and creates (or adopts) its RAM. Nothing runs until start(). */
  static async create(opts: MachineOptions = {}): Promise<Machine> {
    const vcpus = opts.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 256) throw new RangeError(`vcpus must be an integer in 1..256, got ${vcpus}`);
    const config = structuredClone(opts.config ?? {}) as Record<string, unknown>;
    const guest = await resolveGuest(opts.guest ?? 'ab');
    const adopted = opts.blocks;
    const ram = opts.ram ?? (adopted ? adopted.reduce((n, m) => n + m.length, 0) : undefined);
    const specs = guest.definition.layout(config, { ram });
    if (!Array.isArray(specs) || specs.length === 0) throw new TypeError(`guest ${guest.kind}: layout() returned no blocks`);
    const names = new Set<string>();
    for (const s of specs) {
      if (names.has(s.name)) throw new RangeError(`guest ${guest.kind}: duplicate block ${s.name}`);
      names.add(s.name);
    }
    let blocks: RamBlock[];
    if (adopted) {
      blocks = specs.map((s) => {
        const m = adopted.find((x) => x.name === s.name);
        if (!m) throw new RangeError(`guest ${guest.kind} needs block ${s.name}; adopted blocks are ${adopted.map((x) => x.name).join(', ')}`);
        if (m.length !== s.length) throw new RangeError(`block ${s.name}: adopted length ${m.length}, layout wants ${s.length}`);
        if (s.pageSize !== undefined && m.pageSize !== s.pageSize) throw new RangeError(`block ${s.name}: adopted page size ${m.pageSize}, layout wants ${s.pageSize}`);
        return RamBlock.adopt(s.name, m, opts.ownBlocks ?? false);
      });
      if (adopted.length !== specs.length) throw new RangeError(`guest ${guest.kind} has ${specs.length} block(s), ${adopted.length} adopted`);
    } else {
      blocks = [];
      try {
        for (const s of specs) {
          const hugetlb = s.pageSize === HUGE || (opts.hugetlb ?? false);
          if (s.pageSize !== undefined && s.pageSize !== HOST_PAGE_SIZE && s.pageSize !== HUGE) throw new RangeError(`block ${s.name}: unsupported page size ${s.pageSize}`);
          blocks.push(createRamBlock({ name: s.name, length: s.length, backing: opts.backing ?? 'anonymous', hugetlb }));
        }
      } catch (e) {
        for (const b of blocks) b.unmap();
        throw e;
      }
    }
    return new Machine(guest, config, vcpus, blocks);
  }

  /** The blocks as the guest sees them: name, length, page size, address. */
  get layout(): BlockInfo[] {
    return this.blocks.map((b) => b.info());
  }

  block(name: string): RamBlock {
    const b = this.blocks.find((x) => x.name === name);
    if (!b) throw new RangeError(`no RAM block ${name} (have ${this.blocks.map((x) => x.name).join(', ')})`);
    return b;
  }

  get started(): boolean {
    return this.startedFlag;
  }

  /** True between start()/cont() and stop(). */
  get running(): boolean {
    return this.runningFlag;
  }

  get destroyed(): boolean {
    return this.destroyedFlag;
  }

  /** True once prepare() (or start()) has every vCPU worker spawned and parked before init. */
  get prepared(): boolean {
    return this.preparedFlag;
  }

  /** Kernel thread ids of the vCPU threads, by vCPU index (empty until the workers are prepared). */
  get vcpuTids(): number[] {
    return this.preparedFlag ? this.cpus.map((c) => c.tid) : [];
  }

  /** Steps each vCPU has run, by index. */
  progress(): number[] {
    return this.cpus.map((c) => c.steps());
  }

  /** What the guest's host services published (kv: `{port, url}`). */
  get hostInfo(): Readonly<Record<string, unknown>> {
    return this.service?.info ?? {};
  }

  /**
   * Spawns every vCPU worker ahead of start(): each imports the guest module, builds its views
   * of the blocks and parks before the guest's init, running no guest code and touching no guest
   * RAM (on a postcopy destination RAM may still be missing). Resolves once all are parked, so
   * that start() only hands over the start parameters. Idempotent; only before start().
   */
  prepare(): Promise<void> {
    this.assertAlive('prepare');
    if (this.startedFlag || this.starting) throw new Error('prepare() must come before start()');
    return this.prepareOnce();
  }

  private prepareOnce(): Promise<void> {
    this.preparing ??= this.doPrepare();
    return this.preparing;
  }

  private async doPrepare(): Promise<void> {
    const blocks = this.layout;
    try {
      await Promise.all(this.cpus.map((c) => c.prepare({
        count: this.vcpus,
        guestUrl: this.guest.url,
        config: this.config,
        blocks,
      }, this.buffers)));
      this.preparedFlag = true;
    } catch (e) {
      this.broken = e instanceof Error ? e : new Error(String(e));
      await Promise.all(this.cpus.map((c) => c.terminate()));
      throw e;
    }
  }

  /**
   * Starts the vCPUs: fresh boot, or resume from the loaded device state. Prepares them first
   * unless prepare() did; then releases every vCPU (it runs the guest's init and starts stepping)
   * before starting the guest's host services. Resolves once every vCPU's init ran and the host
   * services are up.
   */
  start(opts: StartOptions = {}): Promise<void> {
    this.assertAlive('start');
    if (this.startedFlag || this.starting) throw new Error('machine already started');
    const fresh = opts.fresh ?? this.loadedSlots === undefined;
    if (!fresh && !this.loadedSlots) throw new Error('start({fresh: false}) needs device state: call loadDevice() first');
    this.starting = this.doStart(fresh);
    return this.starting;
  }

  private async doStart(fresh: boolean): Promise<void> {
    if (!this.preparedFlag) await this.prepareOnce();
    if (this.destroyedFlag) throw new Error('machine destroyed while starting');
    try {
      const slots = this.loadedSlots;
      for (let i = 0; i < this.cpus.length; i++) this.cpus[i]!.release({ fresh, device: fresh ? undefined : slots![i] });
      this.runningFlag = true;
      // The vCPUs run init while the host services come up.
      const host = this.guest.definition.host;
      const [inits, service] = await Promise.allSettled([
        Promise.all(this.cpus.map((c) => c.initialised())),
        host ? (async () => host(this))() : undefined,
      ]);
      if (service.status === 'fulfilled') this.service = service.value ?? undefined;
      if (inits.status === 'rejected') throw inits.reason;
      if (service.status === 'rejected') throw service.reason;
      this.startedFlag = true;
    } catch (e) {
      this.runningFlag = false;
      this.broken = e instanceof Error ? e : new Error(String(e));
      const service = this.service;
      this.service = undefined;
      try {
        await service?.close();
      } catch {
        // The start error is the one to report.
      }
      await Promise.all(this.cpus.map((c) => c.terminate()));
      throw e;
    }
  }

  /**
   * When the guest runs again after `start()`: resolves, once every vCPU took its first step,
   * with the time (performance.now()) the last one did. The guest's pause ends there, not
   * when `start()` resolves (this thread may learn of it later, or a moment before it).
   */
  async steppingSince(): Promise<number> {
    this.assertAlive('steppingSince');
    if (!this.starting) throw new Error('steppingSince() before start()');
    await this.starting;
    const times = await Promise.all(this.cpus.map((c) => c.stepping()));
    return Math.max(...times);
  }

  /**
   * When the guest stopped at the latest `stop()` (performance.now()): the first vCPU to park,
   * so the pause it bounds holds every vCPU's. Null before any stop (or if none parked).
   */
  get parkedAt(): number | null {
    let first: number | null = null;
    for (const c of this.cpus) {
      const t = c.parkedAt();
      if (t !== null && (first === null || t < first)) first = t;
    }
    return first;
  }

  /** Parks every vCPU at a safe point; resolves once all are parked. */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    if (this.starting && !this.startedFlag && !this.broken) return this.starting.then(() => this.stop(), () => undefined);
    if (!this.runningFlag) return Promise.resolve();
    this.runningFlag = false;
    this.stopping = (async () => {
      for (const c of this.cpus) c.requestStop();
      await Promise.all(this.cpus.map((c) => c.parked()));
      for (const c of this.cpus) c.drainSlot();
    })().finally(() => {
      this.stopping = undefined;
    });
    return this.stopping;
  }

  /** Resumes parked vCPUs. */
  cont(): void {
    this.assertAlive('cont');
    if (!this.startedFlag) throw new Error('cont() before start()');
    if (this.stopping) throw new Error('cont() while stop() is in progress: await it first');
    if (this.runningFlag) return;
    this.runningFlag = true;
    for (const c of this.cpus) c.resume();
  }

  /** The device state (only while stopped). */
  saveDevice(): DeviceState {
    this.assertAlive('saveDevice');
    if (this.runningFlag || this.stopping) throw new Error('saveDevice() needs a stopped machine: await stop() first');
    const slots = this.cpus.map((c, i) => {
      const s = c.deviceSlot;
      if (!s) throw new Error(`no device state for vCPU ${i}: the machine never ran and none was loaded`);
      return s.value;
    });
    const state = this.guest.definition.saveDevice ? this.guest.definition.saveDevice(slots, this.deviceContext()) : slots;
    return structuredClone({ kind: this.kind, vcpus: this.vcpus, state });
  }

  /** Loads device state saved by a machine of the same guest and vCPU count (before start). */
  loadDevice(device: DeviceState): void {
    this.assertAlive('loadDevice');
    if (this.startedFlag || this.starting) throw new Error('loadDevice() must come before start()');
    assertDeviceState(device);
    if (device.kind !== this.kind) throw new Error(`device state is for guest ${device.kind}, this machine runs ${this.kind}`);
    if (device.vcpus !== this.vcpus) throw new Error(`device state has ${device.vcpus} vCPUs, this machine ${this.vcpus}`);
    const def = this.guest.definition;
    const slots = def.loadDevice ? def.loadDevice(structuredClone(device.state), this.deviceContext()) : device.state;
    if (!Array.isArray(slots) || slots.length !== this.vcpus) throw new Error(`device state must give ${this.vcpus} vCPU slot(s)`);
    this.loadedSlots = structuredClone(slots);
  }

  /** Stops the guest (it stays stopped) and runs its integrity check in a worker. */
  async verify(): Promise<IntegrityReport> {
    this.assertAlive('verify');
    if (this.starting) await this.starting.catch(() => undefined);
    await this.stop();
    const device = this.currentSlots();
    return verifyInWorker(
      { guestUrl: this.guest.url, config: this.config, blocks: this.layout, vcpus: this.vcpus, device },
      (w, done) => {
        this.verifiers.set(w, done);
        void done.then(() => this.verifiers.delete(w));
      },
    );
  }

  private currentSlots(): unknown[] | undefined {
    if (!this.startedFlag) return this.loadedSlots;
    const slots = this.cpus.map((c) => c.deviceSlot);
    return slots.every((s) => s) ? slots.map((s) => s!.value) : undefined;
  }

  /** Records that the guest does not use [offset, offset+length) of `block` (page aligned). */
  declareUnused(block: string, offset: number, length: number): void {
    const b = this.block(block);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > b.length) {
      throw new RangeError(`declareUnused: ${offset}+${length} outside block ${block} (length ${b.length})`);
    }
    if (offset % b.pageSize !== 0 || length % b.pageSize !== 0) {
      throw new RangeError(`declareUnused: ${offset}+${length} not aligned to the page size ${b.pageSize} of ${block}`);
    }
    this.unused.add(block, offset, length);
  }

  /** Ranges declared unused, merged, by block then offset. */
  unusedRanges(): UnusedRange[] {
    return this.unused.list();
  }

  postToVcpu(index: number, message: unknown, transfer?: readonly TransferListItem[]): void {
    const c = this.cpus[index];
    if (!c) throw new RangeError(`no vCPU ${index}`);
    c.post(message, transfer);
  }

  onVcpuMessage(handler: (index: number, message: unknown) => void): () => void {
    this.on('vcpu-message', handler);
    return () => this.off('vcpu-message', handler);
  }

  /** Stops host services, terminates vCPU (and verification) workers, then unmaps RAM this machine owns. */
  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    this.destroyedFlag = true;
    this.runningFlag = false;
    if (this.preparing) await this.preparing.catch(() => undefined);
    if (this.starting) await this.starting.catch(() => undefined);
    const service = this.service;
    this.service = undefined;
    try {
      await service?.close();
    } finally {
      await Promise.all(this.cpus.map((c) => c.terminate()));
      await Promise.all([...this.verifiers.keys()].map((w) => w.terminate()));
      for (const b of this.blocks) b.unmap();
      this.removeAllListeners('vcpu-message');
    }
  }

  private recordError(err: VcpuError): void {
    this.errors.push(err);
    this.emit('vcpu-error', err);
  }

  private deviceContext(): DeviceContext {
    return { config: this.config, vcpus: this.vcpus, layout: this.layout };
  }

  private assertAlive(what: string): void {
    if (this.destroyedFlag) throw new Error(`${what}() on a destroyed machine`);
    if (this.broken) throw new Error(`${what}() on a machine whose start failed: ${this.broken.message}`);
  }
}
