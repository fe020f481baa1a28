/**
 * device.ts — owns the saved device state: the envelope a machine saves and loads (guest kind,
 * vCPU count, the guest's own state) and its msgpack encoding for the wire.
 */
import { Packr } from 'msgpackr';

export interface DeviceState {
  /** The guest's kind; loading into a machine of another kind fails. */
  kind: string;
  /** vCPU count of the machine that saved it; it must match. */
  vcpus: number;
  /** What the guest's saveDevice hook returned (default: the vCPU slots). */
  state: unknown;
}

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Encodes device state as plain msgpack. */
export function encodeDevice(state: DeviceState): Uint8Array {
  return packr.pack(state);
}

/** Decodes and checks device state encoded with encodeDevice. */
export function decodeDevice(bytes: Uint8Array): DeviceState {
  const d = packr.unpack(bytes) as unknown;
  assertDeviceState(d);
  return d;
}

export function assertDeviceState(d: unknown): asserts d is DeviceState {
  const x = d as Partial<DeviceState> | null;
  if (!x || typeof x !== 'object' || typeof x.kind !== 'string' || !Number.isInteger(x.vcpus) || (x.vcpus as number) < 1 || !('state' in x)) {
    throw new TypeError('device state must be {kind: string, vcpus: positive integer, state}');
  }
}
