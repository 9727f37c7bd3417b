// The x86 paging architecture both sides of the PV interface share: PTE flags, table geometry
// and the guest-visible address-space split. Entries are 64 bits (x86_64 and PAE), handled as
// two 32-bit halves so that no bit is lost to floating point.

import type { GuestWidth } from "./layout.ts";

export const _PAGE_PRESENT = 0x001;
export const _PAGE_RW = 0x002;
export const _PAGE_USER = 0x004;
export const _PAGE_PWT = 0x008;
export const _PAGE_PCD = 0x010;
export const _PAGE_ACCESSED = 0x020;
export const _PAGE_DIRTY = 0x040;
/** PSE in L2/L3 entries; the same bit is PAT in an L1 entry. */
export const _PAGE_PSE = 0x080;
export const _PAGE_GLOBAL = 0x100;
export const _PAGE_AVAIL = 0xe00;
/** In the high half: NX is bit 63, the software-available bits are 52-62. */
export const _PAGE_NX_HI = 0x80000000;
export const _PAGE_AVAIL_HIGH_HI = 0x7ff00000;
/** Bits 12-51 of an entry are the frame number: 20 bits in each half. */
export const PTE_MFN_HI_MASK = 0xfffff;

export const PTES_PER_TABLE = 512;

/** The frame number an entry (lo, hi) maps. */
export function pteMfn(lo: number, hi: number): number {
  return (lo >>> 12) + (hi & PTE_MFN_HI_MASK) * 0x100000;
}

/** The low half of an entry mapping `mfn` with `flags`. */
export function pteLo(mfn: number, flags: number): number {
  return ((mfn % 0x100000) * 4096 + (flags & 0xfff)) >>> 0;
}

/** The high half of an entry mapping `mfn` (NX and high software bits clear). */
export function pteHi(mfn: number): number {
  return Math.floor(mfn / 0x100000) & PTE_MFN_HI_MASK;
}

/** Paging levels: 4 on x86_64, 3 (PAE) for 32-bit guests. */
export function pagingLevels(width: GuestWidth): 3 | 4 {
  return width === 64 ? 4 : 3;
}

/**
 * The index of `va` in its level-`level` table (1 = L1). x86_64 addresses are sign-extended
 * numbers (kernel addresses are negative); i386 addresses are unsigned 32-bit.
 */
export function tableIndex(width: GuestWidth, va: number, level: number): number {
  if (width === 32) {
    if (level === 3) return (va >>> 30) & 3;
    return level === 2 ? (va >>> 21) & 511 : (va >>> 12) & 511;
  }
  const u = va < 0 ? va + 2 ** 48 : va;
  return Math.floor(u / LEVEL_SPAN[level]!) % 512;
}

/** Bytes one entry of a level-N table maps, indexed by N. */
const LEVEL_SPAN = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39];

/** A canonical x86_64 address (bits 48-63 copy bit 47), or a 32-bit address for i386. */
export function isCanonical(width: GuestWidth, va: number): boolean {
  if (!Number.isInteger(va)) return false;
  return width === 64 ? va >= -(2 ** 47) && va < 2 ** 47 : va >= 0 && va < 2 ** 32;
}

/** The address whose indices are `idx` (from the top level down to L1), sign-extended on x86_64. */
export function vaFromIndices(width: GuestWidth, idx: readonly number[]): number {
  if (width === 32) return ((idx[0]! << 30) + (idx[1]! << 21) + (idx[2]! << 12)) >>> 0;
  const u = idx[0]! * 2 ** 39 + idx[1]! * 2 ** 30 + idx[2]! * 2 ** 21 + idx[3]! * 2 ** 12;
  return u >= 2 ** 47 ? u - 2 ** 48 : u;
}

/**
 * Where Xen lives in a guest's address space: x86_64 keeps L4 slots 256-271
 * (HYPERVISOR_VIRT_START 0xffff800000000000 to _END 0xffff880000000000); a 32-bit PAE guest
 * gives Xen everything from HYPERVISOR_VIRT_START_COMPAT, 0xf5800000 (the top of the L2 that
 * L3 slot 3 points to, from slot 428 on).
 */
export const XEN_L4_SLOT_FIRST = 256;
export const XEN_L4_SLOT_END = 272;
export const HYPERVISOR_VIRT_START_COMPAT = 0xf5800000;
export const COMPAT_XEN_L2_SLOT_FIRST = (HYPERVISOR_VIRT_START_COMPAT >>> 21) & 511;
