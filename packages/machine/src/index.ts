/**
 * @livemig/machine — the guest model of livemig: RAM blocks, vCPUs as worker threads that stop
 * at safe points, device state, the built-in `ab` and `kv` guests and user guests loaded from
 * a module path.
 */
export { Machine, type MachineOptions, type StartOptions, type MachineEvents } from './machine.js';
export { RamBlock, createRamBlock, viewBlocks, type RamBlockOptions, type RamBacking, type BlockInfo } from './ram-block.js';
export {
  defineGuest,
  assertGuestDefinition,
  type GuestDefinition,
  type BlockSpec,
  type LayoutOptions,
  type VcpuContext,
  type VerifyContext,
  type DeviceContext,
  type IntegrityReport,
  type BadSpot,
  type GuestHost,
  type HostService,
} from './guest.js';
export { resolveGuest, guestUrl, isBuiltinGuestUrl, type BuiltinGuest, type ResolvedGuest } from './resolve-guest.js';
export { encodeDevice, decodeDevice, type DeviceState } from './device.js';
export { VcpuError } from './vcpu.js';
export type { UnusedRange } from './unused.js';
export { abSweep, abShare, verifyAb, AB_BLOCK, AB_PAGE, AB_DEFAULT_RAM, type AbConfig, type AbSlot } from './guests/ab.js';
export { KV_BLOCK, KV_DEFAULT_RAM, type KvConfig, type KvSlot, type KvRequest, type KvReply } from './guests/kv.js';
export { KvTable, kvHash, kvGeometry, KV_MAX_KEY } from './guests/kv-table.js';
export { startSpareVcpus, dropSpareVcpus, spareVcpuCount } from './spare-vcpus.js';
