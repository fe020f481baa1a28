/**
 * vcpu.ts — owns one vCPU as the main thread sees it: its worker thread, its control line
 * (hold/run/park/exit, doorbell, tid, init acknowledgement, step counter), the host message
 * channel to its guest code and the device channel (start parameters in, the device slot
 * published at every park out). A vCPU is prepared first (the worker boots, imports the guest
 * and parks before init, touching no guest RAM), then released with its start parameters.
 * Nothing here blocks the main event loop: parking and init are awaited with Atomics.waitAsync.
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort, type TransferListItem } from 'node:worker_threads';
import { Cmd, ControlLine, INIT, Init, PARKED_AT, State, STEPPING_SINCE, TID, CMD, STATE, type ControlBuffers } from './control.js';
import type { BlockInfo } from './ram-block.js';
import { takeSpareVcpu, VCPU_WORKER_URL, type SpareMessage } from './spare-vcpus.js';

/** How long terminate() lets a booting worker finish before terminating it anyway. */
const BOOT_GRACE_MS = 10_000;

/** What a vCPU worker is spawned with (structured-cloned; ports transferred). */
export interface VcpuWorkerData {
  index: number;
  count: number;
  buffers: ControlBuffers;
  guestUrl: string;
  config: unknown;
  blocks: BlockInfo[];
  hostPort: MessagePort;
  /** Start parameters arrive here (once, read synchronously on release); device slots leave here. */
  devicePort: MessagePort;
}

/** What a prepared vCPU is released with. */
export interface VcpuStart {
  fresh: boolean;
  device: unknown;
}

/** An error raised by (or about) a vCPU worker. */
export class VcpuError extends Error {
  constructor(readonly vcpu: number, message: string, options?: { cause?: unknown }) {
    super(`vCPU ${vcpu}: ${message}`, options);
    this.name = 'VcpuError';
  }
}

export interface VcpuHooks {
  /** A crash, an unexpected exit or a failed start. */
  onError(err: VcpuError): void;
  /** A message the guest code sent with ctx.send(). */
  onMessage(message: unknown): void;
}

export class Vcpu {
  readonly line: ControlLine;
  private worker: Worker | null = null;
  /** Main-side ends of the two channels; the worker gets the other ends at spawn. */
  private readonly host = new MessageChannel();
  private readonly device = new MessageChannel();
  private tidValue = 0;
  private exitedFlag = false;
  private exiting = false;
  private slot: unknown;
  private hasSlot = false;
  /** Settles once the worker has booted (parked before init) or ended. */
  private booted: Promise<void> = Promise.resolve();
  /** Settles with the error that ended the worker (or its unexpected exit). */
  private readonly death: Promise<VcpuError>;
  private die!: (err: VcpuError) => void;

  constructor(readonly index: number, buffers: ControlBuffers, private readonly hooks: VcpuHooks) {
    this.line = new ControlLine(buffers, index);
    this.host.port1.on('message', (m: unknown) => hooks.onMessage(m));
    this.host.port1.unref();
    this.death = new Promise<VcpuError>((resolve) => (this.die = resolve));
  }

  get tid(): number {
    return this.tidValue;
  }

  get exited(): boolean {
    return this.exitedFlag;
  }

  /**
   * Spawns the worker (or binds a spare one, see spare-vcpus.ts); resolves once it has imported
   * the guest, built its views and parked before init (it runs no guest code and touches no
   * guest RAM until `release`).
   */
  prepare(data: Omit<VcpuWorkerData, 'index' | 'buffers' | 'hostPort' | 'devicePort'>, buffers: ControlBuffers): Promise<void> {
    if (this.worker) throw new Error(`vCPU ${this.index} already spawned`);
    this.line.set(CMD, Cmd.HOLD);
    this.line.set(STATE, State.STARTING);
    this.line.set(INIT, Init.PENDING);
    const workerData: VcpuWorkerData = {
      ...data,
      index: this.index,
      buffers,
      hostPort: this.host.port2,
      devicePort: this.device.port2,
    };
    const transferList = [this.host.port2, this.device.port2];
    const spare = takeSpareVcpu();
    const worker = spare ?? new Worker(VCPU_WORKER_URL, { workerData, transferList });
    if (spare) {
      const bind: SpareMessage = { type: 'bind', data: workerData };
      spare.postMessage(bind, transferList);
    }
    this.worker = worker;
    let reported = false;
    worker.on('error', (e: unknown) => {
      const err = new VcpuError(this.index, e instanceof Error ? e.message : String(e), { cause: e });
      if (e instanceof Error && e.stack) err.stack = `${err.name}: ${err.message}\n(in the worker) ${e.stack}`;
      reported = true;
      this.hooks.onError(err);
      this.die(err);
    });
    worker.on('exit', (code) => {
      this.exitedFlag = true;
      // Whoever waits for this vCPU to park or to finish init must not wait for a thread that is gone.
      const init = this.line.load(INIT);
      if (init === Init.PENDING || init === Init.OK) this.line.set(INIT, Init.FAILED);
      this.line.set(STATE, State.EXITED);
      const err = new VcpuError(this.index, this.exiting ? 'worker terminated' : `worker exited unexpectedly (code ${code})`);
      if (!this.exiting && !reported) this.hooks.onError(err);
      reported = true;
      this.die(err);
    });
    const prepared = new Promise<void>((resolve) => {
      worker.on('message', (m: { type?: string; tid?: number }) => {
        if (m?.type === 'prepared') {
          this.tidValue = m.tid ?? this.line.load(TID);
          resolve();
        }
      });
    });
    this.booted = Promise.race([prepared, this.death.then(() => undefined)]);
    return Promise.race([prepared, this.death.then((err) => Promise.reject(err))]);
  }

  /**
   * Hands a prepared vCPU its start parameters and lets it run: it reads them synchronously
   * when woken, runs the guest's init, then steps. Returns at once.
   */
  release(start: VcpuStart): void {
    if (!this.worker) throw new Error(`vCPU ${this.index} is not prepared`);
    if (!start.fresh) this.setSlot(start.device);
    this.device.port1.postMessage(start);
    this.line.clearStamp(STEPPING_SINCE);
    this.line.set(CMD, Cmd.RUN);
  }

  /** Resolves once the released vCPU's init ran; rejects with its error if init threw or the worker died. */
  async initialised(): Promise<void> {
    const r = await this.line.waitChange(INIT, Init.PENDING);
    if (r === Init.OK || r === Init.STEPPING) return;
    throw await this.death;
  }

  /**
   * Resolves with the time (performance.now()) the released vCPU took its first step, which
   * is a moment after its init (see vcpu-worker.ts); rejects if it failed or died first.
   */
  async stepping(): Promise<number> {
    let r = this.line.load(INIT);
    while (r === Init.PENDING || r === Init.OK) r = await this.line.waitChange(INIT, r);
    if (r === Init.STEPPING) return this.line.stampedAt(STEPPING_SINCE)!;
    throw await this.death;
  }

  /** When the vCPU parked at its latest stop (performance.now()), or null if it has not. */
  parkedAt(): number | null {
    return this.line.stampedAt(PARKED_AT);
  }

  /** Asks the vCPU to park at its next safe point. */
  requestStop(): void {
    this.line.clearStamp(PARKED_AT);
    this.line.set(CMD, Cmd.STOP);
    this.line.ring();
  }

  /** Resolves once the vCPU is parked (or gone). */
  async parked(): Promise<void> {
    await this.line.waitChange(STATE, State.RUNNING);
  }

  resume(): void {
    this.line.set(CMD, Cmd.RUN);
  }

  /** Queues a host message for the guest code and wakes the vCPU if it idles. */
  post(message: unknown, transfer?: readonly TransferListItem[]): void {
    this.host.port1.postMessage(message, transfer);
    this.line.ring();
  }

  /** Takes the device slot published at the latest park (keeps the previous one if none). */
  drainSlot(): void {
    for (;;) {
      const m = receiveMessageOnPort(this.device.port1);
      if (!m) break;
      this.setSlot(m.message);
    }
  }

  private setSlot(v: unknown): void {
    this.slot = v;
    this.hasSlot = true;
  }

  /** The latest device slot, if the vCPU ever parked or was loaded. */
  get deviceSlot(): { value: unknown } | undefined {
    return this.hasSlot ? { value: this.slot } : undefined;
  }

  steps(): number {
    return this.line.steps();
  }

  /**
   * Ends the worker (asks it to exit, then terminates it) and closes the channels. A worker
   * still booting is given up to BOOT_GRACE_MS to finish (it then sees EXIT and ends by
   * itself): one terminated while it loads a native addon (koffi) can abort the process.
   */
  async terminate(): Promise<void> {
    this.exiting = true;
    if (this.worker && !this.exitedFlag) {
      this.line.set(CMD, Cmd.EXIT);
      this.line.ring();
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([this.booted, new Promise<void>((r) => (grace = setTimeout(r, BOOT_GRACE_MS)))]);
      clearTimeout(grace);
      await this.worker.terminate();
    }
    this.host.port1.close();
    this.device.port1.close();
  }
}
