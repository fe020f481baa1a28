/**
 * guest-setup.ts — owns turning `send` flags into a started guest: kind, RAM size, vCPUs,
 * the ab guest's sweep range, the guest service port.
 */
import { Machine } from '@livemig/machine';
import { parseSize } from './units.js';

export interface GuestFlags {
  guest: string;
  ram: string;
  vcpus: number;
  sweep?: string;
  guestConfig?: string;
  guestPort?: number;
}

export async function startGuest(f: GuestFlags): Promise<Machine> {
  const ram = parseSize(f.ram, 'RAM size');
  if (!Number.isInteger(f.vcpus) || f.vcpus < 1) throw new Error(`bad --vcpus ${f.vcpus}: give a whole number ≥ 1`);
  let config: Record<string, unknown> = {};
  if (f.guestConfig) {
    try {
      config = JSON.parse(f.guestConfig) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`bad --guest-config: ${(e as Error).message}`);
    }
    if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new Error('bad --guest-config: expected a JSON object');
  }
  if (f.sweep) {
    const m = /^([^-]+)-([^-]+)$/.exec(f.sweep);
    if (!m) throw new Error(`bad --sweep "${f.sweep}": expected START-END, e.g. 1M-1000M`);
    config.sweep = { start: parseSize(m[1]!, 'sweep start'), end: parseSize(m[2]!, 'sweep end') };
  }
  if (f.guestPort !== undefined) config.guestPort = f.guestPort;
  const machine = await Machine.create({ guest: f.guest, config, vcpus: f.vcpus, ram });
  await machine.start({ fresh: true });
  return machine;
}
