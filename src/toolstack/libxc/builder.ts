// The PV domain builder (libxenguest's xc_dom_* for a PV kernel): creates the domain, lays out
// its first pages (kernel, start_info, the p2m list, xenstore and console pages) and fills
// start_info, builds the initial pagetables and pins them, writing into guest frames through
// foreign mappings as libxc does.

import type { GuestImage } from "../../abi/cpu.ts";
import { type GuestWidth, layoutFor } from "../../abi/layout.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_RW,
  _PAGE_USER,
  PTES_PER_TABLE,
  pteHi,
  pteLo,
  tableIndex,
} from "../../abi/x86.ts";
import { SIF_INITDOMAIN, SIF_PRIVILEGED, XEN_PAGE_SIZE } from "../../abi/xen.ts";
import type { Domain } from "../../hypervisor/domain.ts";
import type { Hypervisor } from "../../hypervisor/hypervisor.ts";

export interface DomainSpec {
  name: string;
  memoryMiB: number;
  vcpus: number;
  width: GuestWidth;
  /** xl's max_event_channels (default 1023). */
  maxEventChannels: number;
  cmdline: string;
  privileged: boolean;
  /**
   * The domain that serves xenstore and the console (dom0): the builder allocates the two unbound
   * channels for it, as libxl does; undefined leaves store_evtchn and console_evtchn at 0.
   */
  backendDomid?: number;
}

/** Pages the kernel image occupies from pfn 0 (its text; the model's code lives in TS). */
export const KERNEL_IMAGE_PAGES = 16;

export interface BuiltDomain {
  domain: Domain;
  startInfoPfn: number;
  storePfn: number;
  consolePfn: number;
  storeEvtchn: number;
  consoleEvtchn: number;
}

export function buildDomain(hv: Hypervisor, spec: DomainSpec, image: GuestImage): BuiltDomain {
  const L = layoutFor(spec.width);
  const nrPages = Math.floor((spec.memoryMiB * 1024 * 1024) / XEN_PAGE_SIZE);
  const d = hv.createDomain(
    {
      name: spec.name,
      width: spec.width,
      maxVcpus: spec.vcpus,
      nrPages,
      maxEvtchnPort: Math.min(spec.maxEventChannels, 131071),
      privileged: spec.privileged,
    },
    image,
  );
  const va = (pfn: number) => L.PAGE_OFFSET + pfn * XEN_PAGE_SIZE;
  const startInfoPfn = KERNEL_IMAGE_PAGES;
  const mfnListPfn = startInfoPfn + 1; // readGuestP2m relies on this place
  const mfnListPages = Math.ceil((nrPages * L.ulong) / XEN_PAGE_SIZE);
  const storePfn = mfnListPfn + mfnListPages;
  const consolePfn = storePfn + 1;
  const ptBasePfn = consolePfn + 1;
  const nrPtFrames = countPagetables(spec.width, ptBasePfn, BOOTSTRAP_PAGES);
  if (ptBasePfn + nrPtFrames + BOOTSTRAP_PAGES > nrPages) throw new Error(`${spec.name}: ${spec.memoryMiB} MiB is too small to boot`);

  // The p2m list the guest reads its pfn -> mfn translations from.
  for (let pfn = 0; pfn < nrPages; pfn++) {
    const off = pfn * L.ulong;
    const dv = hv.memory.dv(d.p2m[mfnListPfn + Math.floor(off / XEN_PAGE_SIZE)]!);
    putUlong(dv, off % XEN_PAGE_SIZE, d.p2m[pfn]!, L.ulong);
  }

  const si = hv.memory.dv(d.p2m[startInfoPfn]!);
  const S = L.start_info;
  const magic = spec.width === 64 ? "xen-3.0-x86_64" : "xen-3.0-x86_32p";
  for (let i = 0; i < magic.length; i++) si.setUint8(S.magic + i, magic.charCodeAt(i));
  putUlong(si, S.nr_pages, nrPages, L.ulong);
  putUlong(si, S.shared_info, d.sharedInfoMfn * XEN_PAGE_SIZE, L.ulong);
  si.setUint32(S.flags, spec.privileged ? SIF_PRIVILEGED | SIF_INITDOMAIN : 0, true);
  let storeEvtchn = 0;
  let consoleEvtchn = 0;
  if (spec.backendDomid !== undefined) {
    storeEvtchn = hv.allocUnboundFor(d, spec.backendDomid);
    consoleEvtchn = hv.allocUnboundFor(d, spec.backendDomid);
    if (storeEvtchn < 0 || consoleEvtchn < 0) throw new Error(`${spec.name}: cannot allocate the store and console channels`);
  }
  putUlong(si, S.store_mfn, d.p2m[storePfn]!, L.ulong);
  si.setUint32(S.store_evtchn, storeEvtchn, true);
  putUlong(si, S.console_mfn, d.p2m[consolePfn]!, L.ulong);
  si.setUint32(S.console_evtchn, consoleEvtchn, true);
  putUlong(si, S.pt_base, va(ptBasePfn), L.ulong);
  putUlong(si, S.nr_pt_frames, nrPtFrames, L.ulong);
  putUlong(si, S.mfn_list, va(mfnListPfn), L.ulong);
  setCmdline(hv, d, startInfoPfn, spec.cmdline);

  // PV vCPUs start with event delivery masked; the kernel unmasks when it is ready.
  for (const v of d.vcpus) v.setUpcallMask(true);
  const rootMfn = buildPagetables(hv, d, ptBasePfn, nrPtFrames, ptBasePfn + nrPtFrames + BOOTSTRAP_PAGES);
  const rc = hv.setBootContext(d, image.entry, va(startInfoPfn), rootMfn);
  if (rc < 0) throw new Error(`${spec.name}: the initial base pointer was refused (${rc})`);
  return { domain: d, startInfoPfn, storePfn, consolePfn, storeEvtchn, consoleEvtchn };
}

/** The pages mapped beyond the pagetables, for the kernel's first allocations (xc_dom's 512 KiB). */
export const BOOTSTRAP_PAGES = 128;
const UPPER_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;
const L1_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;

/**
 * How many pagetable frames map everything up to `extra` pages past themselves when they sit
 * at `ptBasePfn` (count_pgtables): the root, an L3 on x86_64, one L2, and the L1s.
 */
export function countPagetables(width: GuestWidth, ptBasePfn: number, extra: number): number {
  const upper = width === 64 ? 3 : 2;
  let nr = upper + 1;
  for (;;) {
    const l1s = Math.ceil((ptBasePfn + nr + extra) / PTES_PER_TABLE);
    if (upper + l1s === nr) return nr;
    nr = upper + l1s;
  }
}

/**
 * The initial pagetables, laid out from `ptBasePfn` as xc_dom_x86 does: the root, then an L3
 * (x86_64) and the L2 for the kernel's range, then the L1s, mapping pfns [0, mapped) at
 * PAGE_OFFSET, with the pagetable frames themselves read-only. The root is pinned for the
 * guest (MMUEXT_PIN_L4_TABLE, or PIN_L3 for PAE, from the toolstack). Returns the root's mfn.
 */
export function buildPagetables(hv: Hypervisor, d: Domain, ptBasePfn: number, nrPt: number, mappedPages: number): number {
  const width = d.width;
  const upper = width === 64 ? 3 : 2;
  const mapped = Math.min(d.p2m.length, mappedPages);
  const mfn = (pfn: number) => d.p2m[pfn]!;
  const put = (tablePfn: number, slot: number, target: number, flags: number) => {
    const words = hv.memory.u32(mfn(tablePfn));
    words[slot * 2] = pteLo(mfn(target), flags);
    words[slot * 2 + 1] = pteHi(mfn(target));
  };
  const base = layoutFor(width).PAGE_OFFSET;
  const rootPfn = ptBasePfn;
  const l2Pfn = ptBasePfn + upper - 1;
  if (width === 64) {
    put(rootPfn, tableIndex(64, base, 4), ptBasePfn + 1, UPPER_PROT);
    put(ptBasePfn + 1, tableIndex(64, base, 3), l2Pfn, UPPER_PROT);
  } else {
    // PAE top-level entries carry only the present bit.
    put(rootPfn, tableIndex(32, base, 3), l2Pfn, _PAGE_PRESENT);
  }
  const firstL1 = ptBasePfn + upper;
  for (let pfn = 0; pfn < mapped; pfn++) {
    const l1 = firstL1 + Math.floor(pfn / PTES_PER_TABLE);
    if (pfn % PTES_PER_TABLE === 0) put(l2Pfn, tableIndex(width, base, 2) + pfn / PTES_PER_TABLE, l1, UPPER_PROT);
    const isPagetable = pfn >= ptBasePfn && pfn < ptBasePfn + nrPt;
    put(l1, pfn % PTES_PER_TABLE, pfn, isPagetable ? L1_PROT & ~_PAGE_RW : L1_PROT);
  }
  const root = mfn(rootPfn);
  const rc = hv.pinTableFor(d, root, width === 64 ? 4 : 3);
  if (rc < 0) throw new Error(`${d.name}: pinning the initial pagetables failed (${rc})`);
  return root;
}

/**
 * The guest's p2m as the toolstack reads it: the mfn_list pages the builder placed after
 * start_info, read through machine memory (what xc_core / save do via the frame list).
 */
export function readGuestP2m(hv: Hypervisor, d: Domain): number[] {
  const L = layoutFor(d.width);
  const firstPfn = KERNEL_IMAGE_PAGES + 1;
  const out: number[] = [];
  for (let pfn = 0; pfn < d.p2m.length; pfn++) {
    const off = pfn * L.ulong;
    const dv = hv.memory.dv(d.p2m[firstPfn + Math.floor(off / XEN_PAGE_SIZE)]!);
    const at = off % XEN_PAGE_SIZE;
    out.push(L.ulong === 8 ? dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 0x100000000 : dv.getUint32(at, true));
  }
  return out;
}

function putUlong(dv: DataView, off: number, value: number, size: 4 | 8): void {
  const lo = value >>> 0;
  dv.setUint32(off, lo, true);
  if (size === 8) dv.setUint32(off + 4, Math.floor((value - lo) / 0x100000000) >>> 0, true);
}

/** Writes the kernel command line into start_info (at most 1023 bytes and a NUL). */
export function setCmdline(hv: Hypervisor, d: Domain, startInfoPfn: number, cmdline: string): void {
  const si = hv.memory.u8(d.p2m[startInfoPfn]!);
  const at = layoutFor(d.width).start_info.cmd_line;
  si.fill(0, at, at + 1024);
  const cmd = cmdline.slice(0, 1023);
  for (let i = 0; i < cmd.length; i++) si[at + i] = cmd.charCodeAt(i) & 0xff;
}
