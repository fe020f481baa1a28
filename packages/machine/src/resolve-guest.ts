/**
 * resolve-guest.ts — owns finding a guest: the built-in names (`ab`, `kv`) or a module path /
 * file URL, loaded and checked the same way in the main thread and in workers. Workers get the
 * URL, never the definition object.
 */
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { assertGuestDefinition, type GuestDefinition } from './guest.js';

export type BuiltinGuest = 'ab' | 'kv';

const BUILTIN: Record<BuiltinGuest, string> = {
  ab: new URL('./guests/ab.js', import.meta.url).href,
  kv: new URL('./guests/kv.js', import.meta.url).href,
};

export interface ResolvedGuest {
  /** The definition's `kind`. */
  kind: string;
  /** Module URL every vCPU worker imports. */
  url: string;
  definition: GuestDefinition;
}

/** True when `url` is the module of a built-in guest. */
export function isBuiltinGuestUrl(url: string): boolean {
  return Object.values(BUILTIN).includes(url);
}

/** The module URL of a guest given as a built-in name, a path (relative to the cwd) or a URL. */
export function guestUrl(guest: string): string {
  if (guest in BUILTIN) return BUILTIN[guest as BuiltinGuest];
  if (/^(file|data):/.test(guest)) return guest;
  return pathToFileURL(isAbsolute(guest) ? guest : resolve(guest)).href;
}

/** Imports a guest module and checks its default export. */
export async function loadGuestDefinition(url: string): Promise<GuestDefinition> {
  const mod = (await import(url)) as { default?: unknown };
  assertGuestDefinition(mod.default, url);
  return mod.default;
}

/** Resolves `ab`, `kv`, or a guest module path to its definition. */
export async function resolveGuest(guest: BuiltinGuest | string = 'ab'): Promise<ResolvedGuest> {
  const url = guestUrl(guest);
  const definition = await loadGuestDefinition(url);
  return { kind: definition.kind, url, definition };
}
