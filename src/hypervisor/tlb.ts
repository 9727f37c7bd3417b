// A vCPU's TLB and the hardware pagetable walk that fills it. The TLB is direct-mapped and
// keeps what it caches until a flush: an entry whose PTE the guest changed without flushing is
// still used, so a missing flush shows up as wrong data, as it would on hardware.

import type { GuestWidth } from "../abi/layout.ts";
import {
  _PAGE_PRESENT,
  _PAGE_RW,
  HYPERVISOR_VIRT_START_COMPAT,
  isCanonical,
  pagingLevels,
  pteMfn,
  tableIndex,
  XEN_L4_SLOT_END,
  XEN_L4_SLOT_FIRST,
} from "../abi/x86.ts";
import type { MachineMemory } from "./memory.ts";

export const TLB_SETS = 1024;
export const TLB_INDEX_MASK = TLB_SETS - 1;
/** Tlb.writable: read-only; writable; writable by the pagetables but write-protected for log-dirty. */
export const TLB_RO = 0;
export const TLB_RW = 1;
export const TLB_WP_LOGDIRTY = 2;

export class Tlb {
  /** Virtual page number cached in each set. */
  readonly tag = new Float64Array(TLB_SETS);
  readonly frame = new Int32Array(TLB_SETS);
  /** TLB_RO, TLB_RW or TLB_WP_LOGDIRTY: hot paths write only through TLB_RW. */
  readonly writable = new Uint8Array(TLB_SETS);
  /** An entry is live while its generation is the current one: a full flush is one increment. */
  readonly gen = new Uint32Array(TLB_SETS);
  curGen = 1;
  /** Flush-clock time of the last full flush (compared with page_info's tlbflush_timestamp). */
  lastFlush = 0;
  flushes = 0;

  flushAll(clock: number): void {
    this.curGen++;
    this.lastFlush = clock;
    this.flushes++;
  }

  /** invlpg: drops the entry for the page holding `va`, if cached. */
  flushOne(va: number): void {
    const vpn = Math.floor(va / 4096);
    const i = vpn & TLB_INDEX_MASK;
    if (this.tag[i] === vpn) this.gen[i] = 0;
  }

  /** The cached translation for `vpn`: mfn * 2 + writable (by the pagetables), or -1. */
  lookup(vpn: number): number {
    const i = vpn & TLB_INDEX_MASK;
    if (this.gen[i] !== this.curGen || this.tag[i] !== vpn) return -1;
    return this.frame[i]! * 2 + (this.writable[i] === TLB_RO ? 0 : 1);
  }

  /** Caches `vpn` -> `mfn` with `state` (TLB_RO, TLB_RW or TLB_WP_LOGDIRTY). */
  fill(vpn: number, mfn: number, state: number): void {
    const i = vpn & TLB_INDEX_MASK;
    this.tag[i] = vpn;
    this.frame[i] = mfn;
    this.writable[i] = state;
    this.gen[i] = this.curGen;
  }

  /** Live TLB_RW entries to frames `domid` owns become TLB_WP_LOGDIRTY (log-dirty's write protection). */
  writeProtect(owner: Int32Array, domid: number): void {
    for (let i = 0; i < TLB_SETS; i++) {
      if (this.writable[i] === TLB_RW && this.gen[i] === this.curGen && owner[this.frame[i]!] === domid) this.writable[i] = TLB_WP_LOGDIRTY;
    }
  }

  /** Live entries as [vpn, mfn, writable state] (for the auditor). */
  *entries(): Generator<[number, number, number]> {
    for (let i = 0; i < TLB_SETS; i++) {
      if (this.gen[i] === this.curGen) yield [this.tag[i]!, this.frame[i]!, this.writable[i]!];
    }
  }
}

/** Whether a guest may touch `va` at all: canonical and outside Xen's own range. */
export function guestAddressOk(width: GuestWidth, va: number): boolean {
  if (!isCanonical(width, va)) return false;
  if (width === 32) return va < HYPERVISOR_VIRT_START_COMPAT;
  const slot = tableIndex(64, va, 4);
  return va >= 0 || slot < XEN_L4_SLOT_FIRST || slot >= XEN_L4_SLOT_END;
}

/**
 * The hardware walk from `rootMfn` (an L4, or a PAE L3): mfn * 2 + writable for the page
 * holding `va`, or -1 if some level is not present. Writable needs RW at every level that has one.
 */
export function walk(mem: MachineMemory, width: GuestWidth, rootMfn: number, va: number): number {
  return descend(mem, width, rootMfn, va, 1);
}

/**
 * The L1 table that maps `va` under `rootMfn` (map_guest_l1e), or -1 when an upper level is
 * not present.
 */
export function findL1(mem: MachineMemory, width: GuestWidth, rootMfn: number, va: number): number {
  const e = descend(mem, width, rootMfn, va, 2);
  return e < 0 ? -1 : (e - (e % 2)) / 2;
}

/** Follows the entries for `va` from the root down to and including level `lowest`. */
function descend(mem: MachineMemory, width: GuestWidth, rootMfn: number, va: number, lowest: number): number {
  if (rootMfn <= 0 || !guestAddressOk(width, va)) return -1;
  let mfn = rootMfn;
  let rw = _PAGE_RW;
  for (let level = pagingLevels(width); level >= lowest; level--) {
    if (!mem.isValid(mfn)) return -1;
    const words = mem.u32(mfn);
    const slot = tableIndex(width, va, level);
    const lo = words[slot * 2]!;
    if ((lo & _PAGE_PRESENT) === 0) return -1;
    // PAE's top-level entries carry no RW bit: access rights start at the L2.
    if (level !== 3 || width === 64) rw &= lo;
    mfn = pteMfn(lo, words[slot * 2 + 1]!);
  }
  return mem.isValid(mfn) ? mfn * 2 + (rw !== 0 ? 1 : 0) : -1;
}
