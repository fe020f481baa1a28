/**
 * guest.ts — owns the guest interface: what a guest module exports (`GuestDefinition`), the
 * context its vCPU code runs with (`VcpuContext`), the context of its integrity check
 * (`VerifyContext`, `IntegrityReport`) and of its main-thread services (`GuestHost`,
 * `HostService`). Built-in guests (ab, kv) and user guests implement the same interface. A
 * guest module is compiled JavaScript, loaded by URL both in the main thread and in every vCPU
 * worker, and exports the definition as `default`.
 */
import type { TransferListItem } from 'node:worker_threads';
import type { BlockInfo } from './ram-block.js';

export type { BlockInfo };

/** A block the guest wants: name, length in bytes (a multiple of pageSize), page size (4096 default). */
export interface BlockSpec {
  name: string;
  length: number;
  pageSize?: number;
}

export interface LayoutOptions {
  /** RAM size the machine was asked for (or the total length of adopted blocks), if any. */
  ram?: number;
}

/** What vCPU code sees (inside its worker thread). */
export interface VcpuContext<C = any, D = any, L = any> {
  /** This vCPU's index, 0-based. */
  readonly index: number;
  /** Number of vCPUs of the machine. */
  readonly count: number;
  /** True on a fresh boot (`init` must create the device slot); false when resuming from loaded device state. */
  readonly fresh: boolean;
  readonly config: C;
  /** Zero-copy views of the RAM blocks, by name. */
  readonly blocks: Readonly<Record<string, Uint8Array>>;
  readonly layout: readonly BlockInfo[];
  /**
   * This vCPU's device-state slot: a structured-clonable, msgpack-able value the guest keeps
   * current. It is published at every park and saved with the device state; on a resume it
   * holds what was loaded.
   */
  device: D;
  /** Private scratch space of this vCPU (views, cursors); never saved. */
  local: L;
  /** The next message the host side posted to this vCPU (`machine.postToVcpu`), or undefined. */
  receive(): unknown;
  /** Posts a message to the host side (`machine.onVcpuMessage`). */
  send(message: unknown, transfer?: readonly TransferListItem[]): void;
  /**
   * Sleeps at most `ms` (clamped to 1 ms) unless a host message or a stop request arrives
   * first. For idle guests, so an idle vCPU does not burn a core.
   */
  idle(ms?: number): void;
  /** True once the machine asked this vCPU to park (for the rare step that loops). */
  stopRequested(): boolean;
}

/** What the integrity check sees (in a worker thread, with the guest stopped). */
export interface VerifyContext<C = any, D = any> {
  readonly config: C;
  readonly blocks: Readonly<Record<string, Uint8Array>>;
  readonly layout: readonly BlockInfo[];
  readonly vcpus: number;
  /** The vCPUs' device slots as of the last park or load, if the guest ever ran or was loaded. */
  readonly device: readonly D[] | undefined;
}

export interface BadSpot {
  block: string;
  offset: number;
  detail: string;
}

export interface IntegrityReport {
  /** False when the guest has no check (nothing was verified). */
  checked: boolean;
  /** Pages examined. */
  pages: number;
  /** Bad pages (ab) or inconsistencies found (kv); 0 means intact. */
  bad: number;
  /** The lowest bad offset and what was wrong there. */
  firstBad?: BadSpot;
  /** Guest-specific summary (kv: entries). */
  detail?: string;
}

/** What save/load hooks see (main thread). */
export interface DeviceContext<C = any> {
  readonly config: C;
  readonly vcpus: number;
  readonly layout: readonly BlockInfo[];
}

/** The main-thread side of a machine as its guest's host services see it. Never RAM. */
export interface GuestHost {
  readonly kind: string;
  readonly config: unknown;
  readonly vcpus: number;
  readonly running: boolean;
  /** Queues a message for vCPU `index` (its `ctx.receive()`), waking it if idle. */
  postToVcpu(index: number, message: unknown, transfer?: readonly TransferListItem[]): void;
  /** Receives what vCPUs `ctx.send()`; returns an unsubscribe function. */
  onVcpuMessage(handler: (index: number, message: unknown) => void): () => void;
}

/** A running main-thread service of a guest (kv: the HTTP server). */
export interface HostService {
  /** Public facts about the service (kv: `{port, url}`), as `machine.hostInfo`. */
  info?: Record<string, unknown>;
  close(): void | Promise<void>;
}

export interface GuestDefinition<C = any, D = any> {
  /** Short name (`ab`, `kv`, or the user's). Source and destination must agree. */
  kind: string;
  /** The RAM blocks this guest needs for `config`. Throws on a bad config. */
  layout(config: C, opts: LayoutOptions): BlockSpec[];
  /** vCPU code, run in each worker thread. */
  vcpu: {
    /** Once per vCPU before the first step. On a resume (`!ctx.fresh`) it must not touch RAM. */
    init?(ctx: VcpuContext<C, D>): void;
    /** A bounded amount of work (≤ ~50 µs) between safe points; called in a loop while running. */
    step(ctx: VcpuContext<C, D>): void;
  };
  /** Builds the saved device state from the vCPU slots (default: the slots array). */
  saveDevice?(slots: D[], ctx: DeviceContext<C>): unknown;
  /** Validates a saved state and returns the vCPU slots (default: the state must be an array of `vcpus` slots). */
  loadDevice?(state: unknown, ctx: DeviceContext<C>): D[];
  /** Checks the guest's RAM for corruption (runs in a worker; the guest is stopped). */
  verify?(ctx: VerifyContext<C, D>): IntegrityReport;
  /** Starts main-thread services (never touching RAM); called when the machine starts. */
  host?(host: GuestHost): HostService | void | Promise<HostService | void>;
}

/** Identity helper giving a guest module its types. */
export function defineGuest<C = any, D = any>(def: GuestDefinition<C, D>): GuestDefinition<C, D> {
  return def;
}

/** Throws unless `def` looks like a GuestDefinition (`where` names its module). */
export function assertGuestDefinition(def: unknown, where: string): asserts def is GuestDefinition {
  const d = def as Partial<GuestDefinition> | null;
  const bad = (what: string): never => {
    throw new TypeError(`guest module ${where}: ${what} (the default export must be a GuestDefinition)`);
  };
  if (!d || typeof d !== 'object') bad('no default export object');
  if (typeof d!.kind !== 'string' || d!.kind.length === 0) bad('`kind` must be a non-empty string');
  if (typeof d!.layout !== 'function') bad('`layout` must be a function');
  if (!d!.vcpu || typeof d!.vcpu.step !== 'function') bad('`vcpu.step` must be a function');
  if (d!.vcpu!.init !== undefined && typeof d!.vcpu!.init !== 'function') bad('`vcpu.init` must be a function');
  for (const k of ['saveDevice', 'loadDevice', 'verify', 'host'] as const) {
    if (d![k] !== undefined && typeof d![k] !== 'function') bad(`\`${k}\` must be a function`);
  }
}

/** Throws unless `r` is a well-formed IntegrityReport. */
export function assertIntegrityReport(r: unknown, where: string): asserts r is IntegrityReport {
  const x = r as Partial<IntegrityReport> | null;
  if (!x || typeof x !== 'object' || typeof x.checked !== 'boolean' || !Number.isInteger(x.pages) || !Number.isInteger(x.bad)) {
    throw new TypeError(`${where}: verify() must return {checked: boolean, pages: integer, bad: integer, firstBad?}`);
  }
}
