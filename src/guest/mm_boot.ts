// The kernel's pagetables at boot (xen_setup_kernel_pagetable, the fixmap and the rest of the
// direct map): it finds the tables the domain builder made, maps shared_info in the fixmap,
// and maps the memory the builder left out, filling new L1s while they are ordinary pages and
// handing each to Xen read-only through the pinned L2.

import type { GuestCpu } from "../abi/cpu.ts";
import type { GuestWidth } from "../abi/layout.ts";
import { _PAGE_PRESENT, pteHi, pteLo, pteMfn, tableIndex } from "../abi/x86.ts";
import { HYPERVISOR, UVMF, XEN_PAGE_SIZE } from "../abi/xen.ts";
import { KERNEL_PROT, KERNEL_PROT_RO, TABLE_PROT } from "./mmu.ts";
import { LAZY, type Multicalls } from "./multicalls.ts";

/** The direct map's L2 slots stop below the fixmap on PAE (its L1 sits in slot 424). */
const PAE_DIRECT_MAP_L2_SLOTS = 424;

export interface BootKernel {
  readonly width: GuestWidth;
  readonly base: number;
  readonly nrPages: number;
  readonly mc: Multicalls;
  readonly m2p: Map<number, number>;
  va(pfn: number): number;
  pfnToMfn(cpu: GuestCpu, pfn: number): number;
  allocPfn(): number | undefined;
}

export interface BootTables {
  pgd: number;
  /** PAE: the L2 in L3 slot 3 (the kernel pmd); else -1. */
  kernelPmd: number;
  /** Every other table of init_mm. */
  tables: number[];
  /** Pages the direct map covers; PAE leaves the rest (highmem) unmapped. */
  lowmemPages: number;
}

/** The fixmap slot Linux maps shared_info at, as an offset below the top of the address space. */
export const FIX_SHARED_INFO = { 64: -0xa00000, 32: 0xf5000000 } as const;

export function bootPagetables(k: BootKernel, cpu: GuestCpu, rootPfn: number, sharedInfoMa: number): BootTables {
  const w = k.width;
  const read = (table: number, slot: number) => {
    const va = k.va(table) + slot * 8;
    return { lo: cpu.read32(va), hi: cpu.read32(va + 4) };
  };
  const childPfn = (e: { lo: number; hi: number }) => {
    const pfn = k.m2p.get(pteMfn(e.lo, e.hi));
    if (pfn === undefined) throw new Error("boot pagetables map a frame that is not ours");
    return pfn;
  };
  const mfn = (pfn: number) => k.pfnToMfn(cpu, pfn);
  const tables: number[] = [];
  // The builder's chain down to the direct map's L2.
  let l2 = rootPfn;
  for (let level = w === 64 ? 4 : 3; level > 2; level--) {
    l2 = childPfn(read(l2, tableIndex(w, k.base, level)));
    tables.push(l2);
  }
  const kernelPmd = w === 32 ? l2 : -1;
  const l1s: number[] = [];
  for (let slot = 0; slot < 512; slot++) {
    const e = read(l2, slot);
    if ((e.lo & _PAGE_PRESENT) === 0) break;
    l1s.push(childPfn(e));
  }
  tables.push(...l1s);

  // The fixmap: fresh tables, filled while writable, then read-only and hooked in.
  const fix = FIX_SHARED_INFO[w];
  const zeroed = () => {
    const pfn = k.allocPfn()!;
    cpu.pageWords(k.va(pfn)).fill(0);
    cpu.write32(k.va(pfn), 0);
    return pfn;
  };
  const link = (table: number, slot: number, child: number, flags: number) => {
    cpu.write32(k.va(table) + slot * 8, pteLo(mfn(child), flags));
    cpu.write32(k.va(table) + slot * 8 + 4, pteHi(mfn(child)));
  };
  const makeReadOnly = (pfn: number) => {
    k.mc.updateVaMapping(cpu, k.va(pfn), pteLo(mfn(pfn), KERNEL_PROT_RO), pteHi(mfn(pfn)), UVMF.INVLPG, `boot table pfn ${pfn} RO`);
  };
  const hook = (table: number, slot: number, child: number, flags: number) => {
    const m = mfn(table);
    k.mc.mmuUpdate(cpu, ((m % 0x100000) * 4096 + slot * 8) >>> 0, Math.floor(m / 0x100000), pteLo(mfn(child), flags), pteHi(mfn(child)), `pfn ${table} slot ${slot}`);
  };
  const fixL1 = zeroed();
  if (w === 64) {
    const fixL3 = zeroed();
    const fixL2 = zeroed();
    link(fixL3, tableIndex(64, fix, 3), fixL2, TABLE_PROT);
    link(fixL2, tableIndex(64, fix, 2), fixL1, TABLE_PROT);
    for (const pfn of [fixL1, fixL2, fixL3]) makeReadOnly(pfn);
    hook(rootPfn, tableIndex(64, fix, 4), fixL3, TABLE_PROT);
    tables.push(fixL3, fixL2, fixL1);
  } else {
    makeReadOnly(fixL1);
    hook(kernelPmd, tableIndex(32, fix, 2), fixL1, TABLE_PROT);
    tables.push(fixL1);
  }
  k.mc.flush(cpu);
  const shared = Math.floor(sharedInfoMa / XEN_PAGE_SIZE);
  const si = pteArgs(w, fix, pteLo(shared, KERNEL_PROT), pteHi(shared), UVMF.INVLPG);
  const rc = cpu.hypercall(HYPERVISOR.update_va_mapping, ...si);
  if (rc < 0) throw new Error(`cannot map shared_info: ${rc}`);

  // The rest of the direct map: on x86_64 it spans as many L2s under the L3 as memory needs;
  // PAE maps what fits below the fixmap (lowmem) and leaves the rest as highmem.
  const l3 = w === 64 ? tables[0]! : -1;
  const firstL2Slot = tableIndex(w, k.base, 2);
  const maxL2Slots = w === 64 ? (512 - tableIndex(64, k.base, 3)) * 512 - firstL2Slot : PAE_DIRECT_MAP_L2_SLOTS - firstL2Slot;
  const lowmemPages = Math.min(k.nrPages, maxL2Slots * 512);
  k.mc.enterLazy(cpu, LAZY.MMU);
  let extraL2: { pfn: number; l3Slot: number } | undefined;
  const finishL2 = () => {
    if (!extraL2) return;
    makeReadOnly(extraL2.pfn);
    hook(l3, extraL2.l3Slot, extraL2.pfn, TABLE_PROT);
    tables.push(extraL2.pfn);
    extraL2 = undefined;
  };
  for (let group = 0; group * 512 < lowmemPages; group++) {
    const first = group * 512;
    const last = Math.min(lowmemPages, first + 512);
    const existing = l1s[group];
    if (existing !== undefined) {
      for (let pfn = first; pfn < last; pfn++) {
        if ((read(existing, pfn - first).lo & _PAGE_PRESENT) === 0) hook(existing, pfn - first, pfn, KERNEL_PROT);
      }
      continue;
    }
    const l1 = zeroed();
    for (let pfn = first; pfn < last; pfn++) link(l1, pfn - first, pfn, KERNEL_PROT);
    makeReadOnly(l1);
    const linear = firstL2Slot + group;
    if (linear < 512) hook(l2, linear, l1, TABLE_PROT);
    else {
      // A fresh L2 is filled while it is an ordinary page, then handed to Xen through the L3.
      const l3Slot = tableIndex(64, k.base, 3) + Math.floor(linear / 512);
      if (extraL2?.l3Slot !== l3Slot) {
        finishL2();
        extraL2 = { pfn: zeroed(), l3Slot };
      }
      link(extraL2.pfn, linear % 512, l1, TABLE_PROT);
    }
    tables.push(l1);
    l1s.push(l1);
  }
  finishL2();
  k.mc.leaveLazy(cpu);
  return { pgd: rootPfn, kernelPmd, tables, lowmemPages };
}

/** update_va_mapping's register arguments: (va, pte, flags), or (va, lo, hi, flags) on i386. */
export function pteArgs(w: GuestWidth, va: number, lo: number, hi: number, flags: number): [number, number, number, number] {
  return w === 64 ? [va, hi * 2 ** 32 + lo, flags, 0] : [va, lo, hi, flags];
}
