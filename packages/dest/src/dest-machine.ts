/**
 * dest-machine.ts — owns what the destination needs from a guest and how it builds one from
 * the source's description. The default factory uses @livemig/machine; a caller can supply
 * its own (for its own guest model) through `IncomingOptions.machineFactory`.
 */
import { Machine, dropSpareVcpus, resolveGuest, startSpareVcpus } from '@livemig/machine';
import type { Mapping } from '@livemig/uffd';

export interface DestMachine {
  loadDevice(state: unknown): void;
  /** Optional: spawn the vCPUs ahead of time, parked, without touching guest RAM. */
  prepare?(): Promise<void>;
  /** Kernel thread ids of the vCPUs (for blocktime), known once spawned. */
  readonly vcpuTids?: readonly number[];
  /** Guest steps run so far, per vCPU (to show the guest progressed during postcopy). */
  progress?(): number[];
  /** Starts the vCPUs; `fresh: false` resumes from the loaded device state. */
  start(opts: { fresh: boolean }): Promise<void>;
  /**
   * Optional: after `start()`, when the guest took its first step (performance.now()), which
   * ends its pause for the downtime figure. Without it, the pause ends when `start()` resolves.
   */
  steppingSince?(): Promise<number>;
  /** Stops the vCPUs, frees what the guest holds (RAM it owns is unmapped by its owner). */
  destroy(): Promise<void>;
}

export interface MachineSpec {
  kind: string;
  /** A user guest's module (path or file URL), else undefined. */
  module?: string | undefined;
  config: unknown;
  vcpus: number;
  /** One mapping per block, named like the blocks, already mapped. */
  mappings: Mapping[];
  guestPort?: number;
}

export interface MachineFactory {
  /**
   * Throws a clear error when this host cannot run the guest (kind, or the user guest module
   * the source names). Called before any RAM is created.
   */
  check(kind: string, module: string | undefined, config: unknown): Promise<void>;
  create(spec: MachineSpec): Promise<DestMachine>;
  /**
   * Optional: start up to `vcpus` vCPU threads ahead, while no source has connected yet, for
   * `create` to use (their boot then does not compete with the incoming pages).
   */
  startSpares?(vcpus: number): void;
  /** Optional: end the threads `startSpares` started that no machine took. */
  dropSpares?(): Promise<void>;
}

export const defaultMachineFactory: MachineFactory = {
  async check(kind: string, module: string | undefined): Promise<void> {
    let resolved: Awaited<ReturnType<typeof resolveGuest>>;
    try {
      resolved = await resolveGuest(module ?? kind);
    } catch (e) {
      throw new Error(module ? `cannot load guest module ${module}: ${(e as Error).message}` : `unknown guest kind "${kind}" (built-in guests: ab, kv)`);
    }
    if (resolved.kind !== kind) {
      throw new Error(`guest module ${module ?? kind} defines kind "${resolved.kind}", but the source runs "${kind}"`);
    }
  },
  async create(spec: MachineSpec): Promise<DestMachine> {
    // The guest service port belongs to this host, not to the guest: use ours (or any free one).
    const config = { ...((spec.config as object | null) ?? {}) } as Record<string, unknown>;
    if (spec.guestPort !== undefined || 'guestPort' in config) config.guestPort = spec.guestPort ?? 0;
    const machine = await Machine.create({
      guest: spec.module ?? spec.kind,
      config,
      vcpus: spec.vcpus,
      blocks: spec.mappings,
      // The machine frees the RAM the destination created when it is destroyed (a caller's
      // own RAM, adopted as an external mapping, is only forgotten).
      ownBlocks: true,
    });
    return machine;
  },
  startSpares(vcpus: number): void {
    startSpareVcpus(vcpus);
  },
  dropSpares(): Promise<void> {
    return dropSpareVcpus();
  },
};
