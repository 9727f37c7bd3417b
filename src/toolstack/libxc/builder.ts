// The PV domain builder (libxenguest's xc_dom_* for a PV kernel): creates the domain through
// domctl, lays out its first pages (kernel, start_info, the p2m list, xenstore and console
// pages) and fills start_info, builds the initial pagetables and pins them, writing into guest
// frames through foreign mappings as libxc does.

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
import { decodeGetdomaininfo, type XenDomctlGetdomaininfo } from "../../abi/domctl.ts";
import { bootVcpuContext, encodeVcpuGuestContext } from "../../abi/vcpu_context.ts";
import { type ForeignMapping, PROT_READ, PROT_WRITE, type Privcmd } from "../../hypervisor/domctl.ts";
import { errnoName } from "./errno.ts";

export interface DomainSpec {
  name: string;
  memoryMiB: number;
  vcpus: number;
  width: GuestWidth;
  /** xl's max_event_channels (default 1023). */
  maxEventChannels: number;
  cmdline: string;
  /** dom0 only, built by Xen itself at boot (through a DOMID_XEN handle). */
  privileged: boolean;
  /**
   * The domain that serves xenstore and the console (dom0): the builder allocates the two unbound
   * channels for it, as libxl does; undefined leaves store_evtchn and console_evtchn at 0.
   */
  backendDomid?: number;
  /** The UUID (the domain handle), 16 bytes. */
  handle?: Uint8Array;
}

/** Pages the kernel image occupies from pfn 0 (its text; the model's code lives in TS). */
export const KERNEL_IMAGE_PAGES = 16;
/** Where the builder puts the p2m list: right after start_info (readers rely on it). */
export const MFN_LIST_PFN = KERNEL_IMAGE_PAGES + 1;

export interface BuiltDomain {
  domid: number;
  width: GuestWidth;
  /** pfn -> mfn, as populate_physmap gave the frames (libxc's p2m for the guest). */
  p2m: Uint32Array;
  startInfoPfn: number;
  storePfn: number;
  consolePfn: number;
  storeMfn: number;
  consoleMfn: number;
  storeEvtchn: number;
  consoleEvtchn: number;
}

export class BuildError extends Error {}

/** The vcpu_info slots shared_info holds (XEN_LEGACY_MAX_VCPUS). */
const XEN_LEGACY_MAX_VCPUS = 32;

/**
 * libxl__domain_make and xc_dom_* for a PV kernel, through domctl and foreign mappings only:
 * createdomain, max_vcpus, max_mem, set_address_size, populate_physmap; then the p2m list,
 * start_info and the initial pagetables written through mappings of the guest's frames, the
 * root pinned, and vCPU 0's context set. The domain stays paused. A failure destroys it.
 */
export function buildDomain(xc: Privcmd, spec: DomainSpec, image: GuestImage): BuiltDomain {
  const domid = xc.createdomain(
    { handle: spec.handle, maxVcpus: spec.vcpus, maxEvtchnPort: Math.min(spec.maxEventChannels, 131071), privileged: spec.privileged, label: spec.name },
    image,
  );
  if (domid < 0) throw new BuildError(`${spec.name}: createdomain failed (${errnoName(domid)})`);
  try {
    return buildInto(xc, domid, spec, image);
  } catch (e) {
    xc.destroydomain(domid);
    throw e;
  }
}

function buildInto(xc: Privcmd, domid: number, spec: DomainSpec, image: GuestImage): BuiltDomain {
  const check = (what: string, rc: number) => {
    if (rc < 0) throw new BuildError(`${spec.name}: ${what} failed (${errnoName(rc)})`);
  };
  const L = layoutFor(spec.width);
  const nrPages = Math.floor((spec.memoryMiB * 1024 * 1024) / XEN_PAGE_SIZE);
  check("max_vcpus", xc.max_vcpus(domid, spec.vcpus));
  check("max_mem", xc.max_mem(domid, nrPages * 4));
  if (spec.width === 32) check("set_address_size", xc.set_address_size(domid, 32));
  const startInfoPfn = KERNEL_IMAGE_PAGES;
  const mfnListPages = Math.ceil((nrPages * L.ulong) / XEN_PAGE_SIZE);
  const storePfn = MFN_LIST_PFN + mfnListPages;
  const consolePfn = storePfn + 1;
  const ptBasePfn = consolePfn + 1;
  const nrPtFrames = countPagetables(spec.width, ptBasePfn, BOOTSTRAP_PAGES);
  const bootstackPfn = ptBasePfn + nrPtFrames;
  if (ptBasePfn + nrPtFrames + BOOTSTRAP_PAGES > nrPages) throw new BuildError(`${spec.name}: ${spec.memoryMiB} MiB is too small to boot`);
  const got = xc.populate_physmap(domid, Array.from({ length: nrPages }, (_, pfn) => pfn));
  if (typeof got === "number") throw new BuildError(`${spec.name}: populate_physmap of ${nrPages} pages failed (${errnoName(got)})`);
  const p2m = Uint32Array.from(got);
  const va = (pfn: number) => L.PAGE_OFFSET + pfn * XEN_PAGE_SIZE;

  // The p2m list the guest reads its pfn -> mfn translations from.
  const list = mapOrThrow(xc, domid, p2m.subarray(MFN_LIST_PFN, MFN_LIST_PFN + mfnListPages), spec.name);
  for (let pfn = 0; pfn < nrPages; pfn++) {
    const off = pfn * L.ulong;
    putUlong(list.dv(Math.floor(off / XEN_PAGE_SIZE)), off % XEN_PAGE_SIZE, p2m[pfn]!, L.ulong);
  }
  list.unmap();

  let storeEvtchn = 0;
  let consoleEvtchn = 0;
  if (spec.backendDomid !== undefined) {
    storeEvtchn = xc.evtchn_alloc_unbound(domid, spec.backendDomid);
    check("alloc_unbound (store)", storeEvtchn);
    consoleEvtchn = xc.evtchn_alloc_unbound(domid, spec.backendDomid);
    check("alloc_unbound (console)", consoleEvtchn);
  }
  const info = infoOrThrow(xc, domid, spec.name);
  const si = mapOrThrow(xc, domid, [p2m[startInfoPfn]!], spec.name);
  const dv = si.dv(0);
  const S = L.start_info;
  const magic = spec.width === 64 ? "xen-3.0-x86_64" : "xen-3.0-x86_32p";
  for (let i = 0; i < magic.length; i++) dv.setUint8(S.magic + i, magic.charCodeAt(i));
  putUlong(dv, S.nr_pages, nrPages, L.ulong);
  putUlong(dv, S.shared_info, info.sharedInfoFrame * XEN_PAGE_SIZE, L.ulong);
  dv.setUint32(S.flags, spec.privileged ? SIF_PRIVILEGED | SIF_INITDOMAIN : 0, true);
  putUlong(dv, S.store_mfn, p2m[storePfn]!, L.ulong);
  dv.setUint32(S.store_evtchn, storeEvtchn, true);
  putUlong(dv, S.console_mfn, p2m[consolePfn]!, L.ulong);
  dv.setUint32(S.console_evtchn, consoleEvtchn, true);
  putUlong(dv, S.pt_base, va(ptBasePfn), L.ulong);
  putUlong(dv, S.nr_pt_frames, nrPtFrames, L.ulong);
  putUlong(dv, S.mfn_list, va(MFN_LIST_PFN), L.ulong);
  writeCmdline(si.u8(0), spec.width, spec.cmdline);
  si.unmap();

  // xc_dom's shared_info hook: every vCPU starts with event delivery masked; the kernel
  // unmasks when it is ready.
  const shinfo = mapOrThrow(xc, domid, [info.sharedInfoFrame], spec.name);
  const sbytes = shinfo.u8(0);
  sbytes.fill(0, 0, L.shared_info.size);
  for (let v = 0; v < XEN_LEGACY_MAX_VCPUS; v++) sbytes[v * L.vcpu_info.size + L.vcpu_info.evtchn_upcall_mask] = 1;
  shinfo.unmap();

  const rootMfn = buildPagetables(xc, domid, spec.width, p2m, ptBasePfn, nrPtFrames, bootstackPfn + BOOTSTRAP_PAGES);
  check("pinning the initial pagetables", xc.pin_table(domid, spec.width === 64 ? 4 : 3, rootMfn));
  const ctxt = encodeVcpuGuestContext(spec.width, bootVcpuContext(spec.width, image.entry, va(startInfoPfn), va(bootstackPfn + 1), rootMfn));
  check("setvcpucontext of vCPU 0", xc.setvcpucontext(domid, 0, ctxt));
  return {
    domid,
    width: spec.width,
    p2m,
    startInfoPfn,
    storePfn,
    consolePfn,
    storeMfn: p2m[storePfn]!,
    consoleMfn: p2m[consolePfn]!,
    storeEvtchn,
    consoleEvtchn,
  };
}

function mapOrThrow(xc: Privcmd, domid: number, mfns: ArrayLike<number>, name: string): ForeignMapping {
  const m = xc.map_foreign_pages(domid, PROT_READ | PROT_WRITE, mfns);
  if (typeof m === "number") throw new BuildError(`${name}: mapping ${mfns.length} of its pages failed (${errnoName(m)})`);
  return m;
}

function infoOrThrow(xc: Privcmd, domid: number, name: string): XenDomctlGetdomaininfo {
  const raw = xc.getdomaininfo(domid);
  if (typeof raw === "number") throw new BuildError(`${name}: getdomaininfo failed (${errnoName(raw)})`);
  return decodeGetdomaininfo(raw);
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
export function buildPagetables(xc: Privcmd, domid: number, width: GuestWidth, p2m: Uint32Array, ptBasePfn: number, nrPt: number, mappedPages: number): number {
  const upper = width === 64 ? 3 : 2;
  const mapped = Math.min(p2m.length, mappedPages);
  const tables = mapOrThrow(xc, domid, p2m.subarray(ptBasePfn, ptBasePfn + nrPt), `domain ${domid}`);
  const put = (tablePfn: number, slot: number, target: number, flags: number) => {
    const words = tables.u32(tablePfn - ptBasePfn);
    words[slot * 2] = pteLo(p2m[target]!, flags);
    words[slot * 2 + 1] = pteHi(p2m[target]!);
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
  tables.unmap();
  return p2m[rootPfn]!;
}

function putUlong(dv: DataView, off: number, value: number, size: 4 | 8): void {
  const lo = value >>> 0;
  dv.setUint32(off, lo, true);
  if (size === 8) dv.setUint32(off + 4, Math.floor((value - lo) / 0x100000000) >>> 0, true);
}

/** Rewrites the kernel command line in a built, not yet started, domain's start_info. */
export function setCmdline(xc: Privcmd, b: BuiltDomain, cmdline: string): void {
  const si = mapOrThrow(xc, b.domid, [b.p2m[b.startInfoPfn]!], `domain ${b.domid}`);
  writeCmdline(si.u8(0), b.width, cmdline);
  si.unmap();
}

/** start_info's cmd_line: at most 1023 bytes and a NUL. */
function writeCmdline(page: Uint8Array, width: GuestWidth, cmdline: string): void {
  const at = layoutFor(width).start_info.cmd_line;
  page.fill(0, at, at + 1024);
  const cmd = cmdline.slice(0, 1023);
  for (let i = 0; i < cmd.length; i++) page[at + i] = cmd.charCodeAt(i) & 0xff;
}
