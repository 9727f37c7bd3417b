// The PV MMU auditor: recomputes every frame's general and type reference counts from first
// principles (allocation, pins, base pointers, foreign mappings, and the entries of every validated table) and
// compares them with Xen's; checks that no frame with a pagetable type is mapped writable or
// sits writable in a TLB, that no TLB entry lets a log-dirty domain's clean page be written
// unseen, that the guest's p2m and Xen's M2P agree, and that the guest's PG_pinned bookkeeping
// matches what Xen has pinned.

import { _PAGE_PRESENT, _PAGE_RW, pteMfn } from "../abi/x86.ts";
import type { Hypervisor } from "../hypervisor/hypervisor.ts";
import { PGT, PGT_TYPE_MASK } from "../hypervisor/page_info.ts";
import { TLB_RO, TLB_RW } from "../hypervisor/tlb.ts";
import type { XenLinux } from "../guest/kernel.ts";
import { layoutFor } from "../abi/layout.ts";
import { XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { Domain } from "../hypervisor/domain.ts";
import { MFN_LIST_PFN } from "../toolstack/libxc/builder.ts";

export function auditMm(hv: Hypervisor, kernels: ReadonlyMap<number, XenLinux>): string[] {
  const out: string[] = [];
  const mm = hv.mm;
  const pages = mm.pages;
  const mem = hv.memory;
  const n = mem.nrFrames;
  const count = new Int32Array(n);
  const typeCount = new Int32Array(n);
  const writableMaps = new Int32Array(n);
  for (const d of hv.domains.values()) {
    // FIFO control blocks and event arrays: Xen holds a writable type reference on each.
    const fifoPages = [...(d.fifo?.controlBlocks ?? []).map((cb) => cb?.mfn ?? -1), ...(d.fifo?.arrayMfns ?? [])];
    typeCount[d.sharedInfoMfn]!++; // the writable type shared_info is given at creation
    for (const mfn of fifoPages) {
      if (mfn < 0) continue;
      count[mfn]!++;
      typeCount[mfn]!++;
    }
    for (const v of d.vcpus) {
      for (const base of [v.guestTable, v.guestTableUser]) {
        if (base === 0) continue;
        count[base]!++;
        typeCount[base]!++;
      }
      // The GDT's frames: a seg_desc type reference each (pv_set_gdt).
      for (let i = 0; i < Math.ceil(v.gdtEnts / 512); i++) {
        count[v.gdtFrames[i]!]!++;
        typeCount[v.gdtFrames[i]!]!++;
      }
    }
  }
  // privcmd mappings the toolstack holds: a reference each, and a writable type when writable.
  for (const m of hv.foreignMappings) {
    for (const mfn of m.mfns) {
      count[mfn]!++;
      if (m.writable) typeCount[mfn]!++;
    }
  }
  for (let mfn = 0; mfn < n; mfn++) {
    if (pages.count[mfn] === 0) continue;
    const owner = hv.domainById(mem.owner[mfn]!);
    if (owner) count[mfn]!++; // PGC_allocated
    if (pages.pinned(mfn)) {
      count[mfn]!++;
      typeCount[mfn]!++;
    }
    const level = pages.level(mfn);
    if (level === 0 || pages.typeCount[mfn] === 0) continue;
    if (!pages.validated(mfn)) out.push(`mfn ${mfn}: an L${level} in use but not validated`);
    const width = owner?.width ?? 64;
    const words = mem.u32(mfn);
    for (let slot = 0; slot < 512; slot++) {
      if (!mm.isGuestSlot(width, level, pages.type[mfn]!, slot)) continue;
      const lo = words[slot * 2]!;
      if ((lo & _PAGE_PRESENT) === 0) continue;
      const target = pteMfn(lo, words[slot * 2 + 1]!);
      if (target >= n) {
        out.push(`mfn ${mfn} slot ${slot}: entry maps mfn ${target}, beyond memory`);
        continue;
      }
      if (level === 1) {
        count[target]!++;
        if (lo & _PAGE_RW) {
          typeCount[target]!++;
          writableMaps[target]!++;
        }
      } else if (target !== mfn) {
        count[target]!++;
        typeCount[target]!++;
      }
    }
  }
  for (let mfn = 0; mfn < n; mfn++) {
    if (pages.count[mfn] !== count[mfn]) out.push(`mfn ${mfn}: count_info ${pages.count[mfn]}, references found ${count[mfn]} (${pages.describe(mfn)})`);
    if (pages.typeCount[mfn] !== typeCount[mfn]) out.push(`mfn ${mfn}: type count ${pages.typeCount[mfn]}, references found ${typeCount[mfn]} (${pages.describe(mfn)})`);
    if (writableMaps[mfn]! > 0 && (pages.type[mfn]! & PGT_TYPE_MASK) !== PGT.writable) {
      out.push(`mfn ${mfn}: mapped writable ${writableMaps[mfn]} times but typed ${pages.describe(mfn)}`);
    }
  }
  for (const d of hv.domains.values()) {
    for (const v of d.vcpus) {
      for (const [vpn, mfn, state] of v.tlb.entries()) {
        // A write-protected entry (TLB_WP_LOGDIRTY) is writable too: its next write goes through.
        if (state !== TLB_RO && pages.isProtected(mfn)) out.push(`d${d.domid}v${v.id}: TLB holds a writable entry for page 0x${(vpn * 4096).toString(16)} to mfn ${mfn}, ${pages.describe(mfn)}`);
        const ld = hv.domainById(mem.owner[mfn]!)?.logDirty;
        if (state === TLB_RW && ld?.enabled && mem.m2p[mfn]! < 0x80000000 && !ld.mfnIsDirty(mfn)) {
          out.push(`d${d.domid}v${v.id}: TLB lets page 0x${(vpn * 4096).toString(16)} (mfn ${mfn}, pfn ${mem.m2p[mfn]}) be written unseen by log-dirty`);
        }
        if (mem.owner[mfn] !== d.domid && pages.count[mfn] === 0) out.push(`d${d.domid}v${v.id}: TLB maps freed mfn ${mfn}`);
      }
    }
    const k = kernels.get(d.domid);
    if (!k?.booted || d.state !== "running") continue;
    out.push(...auditGuest(hv, d.domid, k));
  }
  return out;
}

/** The guest's p2m against Xen's M2P, and its PG_pinned roots against Xen's pins. */
function auditGuest(hv: Hypervisor, domid: number, k: XenLinux): string[] {
  const out: string[] = [];
  const d = hv.domainById(domid)!;
  const mem = hv.memory;
  const p2m = readGuestP2m(hv, d);
  for (let pfn = 0; pfn < p2m.length; pfn++) {
    const mfn = p2m[pfn]!;
    if (mem.owner[mfn] !== domid) out.push(`d${domid}: p2m[${pfn}] = mfn ${mfn}, which the domain does not own`);
    else if (mem.m2p[mfn] !== pfn) out.push(`d${domid}: p2m[${pfn}] = mfn ${mfn} but M2P says pfn ${mem.m2p[mfn]}`);
  }
  const mmu = k.mmu;
  if (!mmu) return out;
  const guestRoots = new Set<number>();
  for (const m of mmu.mms.values()) {
    if (!m.pinned) continue;
    guestRoots.add(p2m[m.pgd]!);
    if (m.userPgd >= 0) guestRoots.add(p2m[m.userPgd]!);
    for (const pfn of mmu.ownTables(m)) {
      if (!mmu.pinnedFlag[pfn]) out.push(`d${domid}: mm ${m.id} is pinned but its table pfn ${pfn} is not PG_pinned`);
      else if (!hv.mm.pages.isProtected(p2m[pfn]!)) out.push(`d${domid}: PG_pinned pfn ${pfn} has no pagetable type in Xen (${hv.mm.pages.describe(p2m[pfn]!)})`);
    }
  }
  for (let pfn = 0; pfn < p2m.length; pfn++) {
    const mfn = p2m[pfn]!;
    if (hv.mm.pages.pinned(mfn) && !guestRoots.has(mfn)) out.push(`d${domid}: Xen has pfn ${pfn} pinned, the guest has no pinned mm with it as a root`);
  }
  for (const mfn of guestRoots) if (!hv.mm.pages.pinned(mfn)) out.push(`d${domid}: the guest counts mfn ${mfn} as a pinned root, Xen does not`);
  return out;
}

/** The guest's own p2m: the mfn_list pages the builder placed after start_info, as the guest keeps them. */
export function readGuestP2m(hv: Hypervisor, d: Domain): number[] {
  const L = layoutFor(d.width);
  const out: number[] = [];
  for (let pfn = 0; pfn < d.p2m.length; pfn++) {
    const off = pfn * L.ulong;
    const dv = hv.memory.dv(d.p2m[MFN_LIST_PFN + Math.floor(off / XEN_PAGE_SIZE)]!);
    const at = off % XEN_PAGE_SIZE;
    out.push(L.ulong === 8 ? dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 0x100000000 : dv.getUint32(at, true));
  }
  return out;
}
