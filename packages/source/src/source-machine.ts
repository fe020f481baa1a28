/**
 * source-machine.ts — owns what the source needs from a guest: its identity, its RAM blocks
 * and stop/cont/device-state. `@livemig/machine`'s Machine satisfies it; so can any caller's
 * own guest model.
 */
import type { Mapping } from '@livemig/uffd';

export interface SourceBlock {
  readonly name: string;
  readonly length: number;
  readonly pageSize: number;
  readonly mapping: Mapping;
}

export interface SourceMachine {
  /** Guest kind the destination must know (`ab`, `kv`, a module path). */
  readonly kind: string;
  /** Where a user guest's module lives (path or file URL the destination loads); undefined for built-in guests. */
  readonly module?: string | undefined;
  /** Guest configuration, sent to the destination as it is. */
  readonly config: unknown;
  /** Number of vCPUs. */
  readonly vcpus: number;
  readonly blocks: readonly SourceBlock[];
  /** Parks every vCPU; resolves once all are parked. */
  stop(): Promise<void>;
  /**
   * Optional: when the guest stopped at the latest `stop()` (performance.now()), which starts
   * its pause for the downtime figure. Without it, the pause starts when `stop()` is called.
   */
  readonly parkedAt?: number | null;
  /** Resumes the vCPUs. */
  cont(): Promise<void> | void;
  /** The device state (msgpack-able); only while stopped. */
  saveDevice(): unknown;
  /** Ranges the guest declared unused (never sent with data; zero on the destination). */
  unusedRanges?(): ReadonlyArray<{ block: string; offset: number; length: number }>;
}
