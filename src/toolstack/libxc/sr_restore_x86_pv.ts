// xc_domain_restore for a PV guest (tools/libs/guest/xg_sr_restore.c with xg_sr_restore_x86_pv.c),
// record by record into a domain libxl has made (createdomain, max_vcpus, max_mem and the store
// and console channels): memory is populated on fresh frames as PAGE_DATA names it, pagetables
// are localised to the new frames, and at END the vCPU contexts are set (vCPU 0's start_info
// fixed up), the pinned tables pinned again and the guest's p2m rewritten. Every check names
// the record, the pfn or the field that is wrong.

import { decodeGetdomaininfo, PFINFO } from "../../abi/domctl.ts";
import { type GuestWidth, type Layout, layoutFor } from "../../abi/layout.ts";
import { decodeVcpuGuestContext, encodeVcpuGuestContext, toUlong, VGCF_online, vcpuGuestContextSize, xenCr3ToPfn, xenPfnToCr3 } from "../../abi/vcpu_context.ts";
import { _PAGE_PRESENT, PTE_MFN_HI_MASK, pteHi, pteLo, pteMfn } from "../../abi/x86.ts";
import { XEN_PAGE_SIZE } from "../../abi/xen.ts";
import { PROT_READ, PROT_WRITE, type Privcmd } from "../../hypervisor/domctl.ts";
import { errnoName } from "./errno.ts";
import { INVALID_MFN } from "./sr_save_x86_pv.ts";
import type { LibxcRecord, PageDataPage } from "./sr_format.ts";

export class RestoreError extends Error {}

export interface RestoreParams {
  /** The ports libxl allocated for the store and the console (dom0's ends are unbound). */
  storeEvtchn: number;
  consoleEvtchn: number;
  /** The vCPUs the domain was made with (max_vcpus). */
  maxVcpus: number;
}

export interface RestoreResult {
  width: GuestWidth;
  /** Where vCPU 0's rdx says start_info is. */
  startInfoPfn: number;
  /** pfn -> mfn in the new domain. */
  p2m: Uint32Array;
  storeMfn: number;
  consoleMfn: number;
  pagesWithData: number;
  /** With a VERIFY pass (xl migrate --debug): pages compared, and the pfns that differed. */
  verify?: { pages: number; mismatches: number[] };
}

const LEVEL_OF_TYPE = (type: number) => (type & PFINFO.LTABTYPE_MASK) / 2 ** PFINFO.LTAB_SHIFT;
const PIN_LEVEL: Readonly<Record<number, number>> = { 1: 1, 2: 2, 3: 3, 4: 4 };

export class X86PvRestore {
  private width: GuestWidth | undefined;
  private layout: Layout | undefined;
  private seenStaticDataEnd = false;
  private seenSharedInfo = false;
  private maxPfn = -1;
  private p2m = new Uint32Array(0);
  private types = new Uint32Array(0);
  private p2mFramePfns: number[] = [];
  private readonly vcpus = new Map<number, Uint8Array>();
  private pagesWithData = 0;
  /** After a VERIFY record, PAGE_DATA is compared with what was restored, not written. */
  private verifying = false;
  private readonly mismatches: number[] = [];
  private verified = 0;
  private done: RestoreResult | undefined;
  /** The record being handled, for messages. */
  private where = "";

  constructor(
    private readonly xc: Privcmd,
    private readonly domid: number,
    private readonly params: RestoreParams,
  ) {}

  get complete(): RestoreResult | undefined {
    return this.done;
  }

  private fail(what: string): never {
    const n = this.mismatches.length;
    // The likely cause, when the VERIFY pass already saw the sender miss pages.
    const verify = n > 0 ? ` (VERIFY found ${n} page${n === 1 ? "" : "s"} that differ, from pfn 0x${this.mismatches[0]!.toString(16)})` : "";
    throw new RestoreError(`${this.where}: ${what}${verify}`);
  }

  private rc(what: string, rc: number): number {
    if (rc < 0) this.fail(`${what} failed (${errnoName(rc)})`);
    return rc;
  }

  /** Handles one record; `index` counts records from the start of the libxc stream, for messages. */
  handle(rec: LibxcRecord, index: number): void {
    this.where = `record ${index} (${rec.type === "OPTIONAL" ? `optional 0x${rec.code.toString(16)}` : rec.type})`;
    if (this.done) this.fail("a record after END");
    switch (rec.type) {
      case "X86_PV_INFO":
        this.pvInfo(rec.body.guestWidth, rec.body.ptLevels);
        return;
      case "X86_CPUID_POLICY":
      case "X86_MSR_POLICY":
        // Policies apply to the domain before its memory; this model has no CPUID to level.
        if (this.seenStaticDataEnd) this.fail("a CPU policy after STATIC_DATA_END");
        return;
      case "STATIC_DATA_END":
        if (this.seenStaticDataEnd) this.fail("a second STATIC_DATA_END");
        if (!this.width) this.fail("STATIC_DATA_END before X86_PV_INFO");
        this.seenStaticDataEnd = true;
        return;
      case "X86_PV_P2M_FRAMES":
        this.p2mFrames(rec.body.startPfn, rec.body.endPfn, rec.body.frames);
        return;
      case "PAGE_DATA":
        if (this.verifying) this.verifyPages(rec.body);
        else this.pageData(rec.body);
        return;
      case "VERIFY":
        if (!this.seenStaticDataEnd) this.fail("VERIFY before STATIC_DATA_END");
        this.verifying = true;
        return;
      case "X86_TSC_INFO": {
        const t = rec.body;
        if (t.nsec > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`nsec ${t.nsec} is out of range`);
        this.rc("settscinfo", this.xc.settscinfo(this.domid, { mode: t.mode, gtscKhz: t.khz, incarnation: t.incarnation, elapsedNsec: Number(t.nsec) }));
        return;
      }
      case "SHARED_INFO":
        this.sharedInfo(rec.body);
        return;
      case "X86_PV_VCPU_BASIC":
        this.vcpuBasic(rec.body.vcpuId, rec.body.context);
        return;
      case "X86_PV_VCPU_EXTENDED":
      case "X86_PV_VCPU_XSAVE":
      case "X86_PV_VCPU_MSRS":
        // This model's vCPUs have no extended, xsave or MSR state beyond the basic context.
        if (rec.body.vcpuId >= this.params.maxVcpus) this.fail(`vcpu ${rec.body.vcpuId} is out of range (max ${this.params.maxVcpus - 1})`);
        return;
      case "END":
        this.streamComplete();
        return;
      case "CHECKPOINT":
      case "CHECKPOINT_DIRTY_PFN_LIST":
        this.fail("checkpointed streams (Remus, COLO) are not supported");
        break;
      case "OPTIONAL":
        return;
      default:
        this.fail(`not a record of an x86 PV stream`);
    }
  }

  private pvInfo(guestWidth: number, ptLevels: number): void {
    if (this.width) this.fail("already received X86_PV_INFO");
    if (!((guestWidth === 4 && ptLevels === 3) || (guestWidth === 8 && ptLevels === 4))) this.fail(`invalid combination: width ${guestWidth}, pt_levels ${ptLevels}`);
    const width: GuestWidth = guestWidth === 8 ? 64 : 32;
    const current = this.rc("get_address_size", this.xc.get_address_size(this.domid));
    if (current !== width) this.rc(`set_address_size(${width})`, this.xc.set_address_size(this.domid, width));
    this.width = width;
    this.layout = layoutFor(width);
  }

  private p2mFrames(startPfn: number, endPfn: number, frames: readonly number[]): void {
    if (!this.seenStaticDataEnd) this.fail("no STATIC_DATA_END seen");
    const layout = this.layout ?? this.fail("not yet received X86_PV_INFO");
    const fpp = XEN_PAGE_SIZE / layout.ulong;
    if (startPfn > endPfn) this.fail(`end pfn 0x${endPfn.toString(16)} is below start pfn 0x${startPfn.toString(16)}`);
    const start = Math.floor(startPfn / fpp);
    const end = Math.floor(endPfn / fpp) + 1;
    if (frames.length !== end - start) this.fail(`${frames.length} frames for pfns 0x${startPfn.toString(16)}-0x${endPfn.toString(16)}, expected ${end - start}`);
    // A p2m far larger than the memory the domain was given is a corrupt stream, not a guest.
    const limit = 2 * this.maxPages() + 1024;
    if (endPfn >= limit) this.fail(`end pfn 0x${endPfn.toString(16)} is beyond what the domain may have (max_pages ${this.maxPages()})`);
    if (endPfn > this.maxPfn) this.expandP2m(endPfn);
    for (let x = 0; x < frames.length; x++) this.p2mFramePfns[start + x] = frames[x]!;
  }

  private maxPages(): number {
    const raw = this.xc.getdomaininfo(this.domid);
    if (typeof raw === "number") this.fail(`getdomaininfo failed (${errnoName(raw)})`);
    return decodeGetdomaininfo(raw).maxPages;
  }

  private expandP2m(maxPfn: number): void {
    const p2m = new Uint32Array(maxPfn + 1).fill(INVALID_MFN);
    p2m.set(this.p2m);
    const types = new Uint32Array(maxPfn + 1);
    types.set(this.types);
    this.p2m = p2m;
    this.types = types;
    this.maxPfn = maxPfn;
  }

  /** process_page_data: types checked, frames populated, pagetables localised, data written. */
  private pageData(pages: readonly PageDataPage[]): void {
    if (!this.width) this.fail("PAGE_DATA before X86_PV_INFO");
    if (this.maxPfn < 0) this.fail("PAGE_DATA before X86_PV_P2M_FRAMES");
    const toPopulate: number[] = [];
    for (const p of pages) {
      if (p.pfn > this.maxPfn) this.fail(`pfn 0x${p.pfn.toString(16)} is outside the domain's p2m (max pfn 0x${this.maxPfn.toString(16)})`);
      const kind = (p.type & PFINFO.LTAB_MASK) >>> 0;
      if (kind === PFINFO.XTAB || kind === PFINFO.BROKEN) {
        this.types[p.pfn] = p.type;
        continue;
      }
      if (this.width === 32 && LEVEL_OF_TYPE(p.type) === 4) this.fail(`pfn 0x${p.pfn.toString(16)}: an L4 table in a 32-bit guest`);
      this.types[p.pfn] = p.type;
      if (this.p2m[p.pfn] === INVALID_MFN) toPopulate.push(p.pfn);
    }
    this.populate(toPopulate);
    const withData = pages.filter((p) => p.data !== undefined);
    if (withData.length === 0) return;
    const map = this.xc.map_foreign_pages(
      this.domid,
      PROT_READ | PROT_WRITE,
      withData.map((p) => this.p2m[p.pfn]!),
    );
    if (typeof map === "number") this.fail(`mapping ${withData.length} new frames failed (${errnoName(map)})`);
    try {
      for (let i = 0; i < withData.length; i++) {
        const p = withData[i]!;
        const dst = map.u8(i);
        dst.set(p.data!);
        const level = LEVEL_OF_TYPE(p.type);
        if (level >= 1 && level <= 4) this.localisePagetable(dst, level, p.pfn);
      }
    } finally {
      map.unmap();
    }
    this.pagesWithData += withData.length;
  }

  /** process_page_data in verify mode: each page, localised, must equal the restored frame. */
  private verifyPages(pages: readonly PageDataPage[]): void {
    const withData = pages.filter((p) => p.data !== undefined);
    for (const p of withData) {
      if (p.pfn > this.maxPfn) this.fail(`pfn 0x${p.pfn.toString(16)} is outside the domain's p2m (max pfn 0x${this.maxPfn.toString(16)})`);
      if (this.p2m[p.pfn] === INVALID_MFN) this.mismatches.push(p.pfn);
    }
    const present = withData.filter((p) => this.p2m[p.pfn] !== INVALID_MFN);
    if (present.length === 0) return;
    const map = this.xc.map_foreign_pages(
      this.domid,
      PROT_READ,
      present.map((p) => this.p2m[p.pfn]!),
    );
    if (typeof map === "number") this.fail(`mapping ${present.length} frames to verify failed (${errnoName(map)})`);
    try {
      for (let i = 0; i < present.length; i++) {
        const p = present[i]!;
        const want = p.data!.slice();
        const level = LEVEL_OF_TYPE(p.type);
        if (level >= 1 && level <= 4) this.localisePagetable(want, level, p.pfn);
        const have = map.u8(i);
        let same = want.length === have.length;
        for (let b = 0; same && b < want.length; b++) same = want[b] === have[b];
        if (!same) this.mismatches.push(p.pfn);
        this.verified++;
      }
    } finally {
      map.unmap();
    }
  }

  private populate(pfns: number[]): void {
    if (pfns.length === 0) return;
    const got = this.xc.populate_physmap(this.domid, pfns);
    if (typeof got === "number") this.fail(`populating ${pfns.length} pfns from 0x${pfns[0]!.toString(16)} failed (${errnoName(got)})`);
    for (let i = 0; i < pfns.length; i++) this.p2m[pfns[i]!] = got[i]!;
  }

  /** x86_pv_localise_page: each present entry's pfn becomes the new frame (populated if not seen yet). */
  private localisePagetable(page: Uint8Array, level: number, pfn: number): void {
    const w = new Uint32Array(page.buffer, page.byteOffset, XEN_PAGE_SIZE / 4);
    const missing: number[] = [];
    const seen = new Set<number>();
    for (let i = 0; i < 512; i++) {
      const lo = w[2 * i]!;
      if ((lo & _PAGE_PRESENT) === 0) continue;
      const target = pteMfn(lo, w[2 * i + 1]!);
      if (target > this.maxPfn) this.fail(`L${level}[${i}] of pfn 0x${pfn.toString(16)} names pfn 0x${target.toString(16)}, beyond the p2m`);
      if (this.p2m[target] === INVALID_MFN && !seen.has(target)) {
        seen.add(target);
        missing.push(target);
      }
    }
    this.populate(missing);
    for (let i = 0; i < 512; i++) {
      const lo = w[2 * i]!;
      if ((lo & _PAGE_PRESENT) === 0) continue;
      const hi = w[2 * i + 1]!;
      const mfn = this.p2m[pteMfn(lo, hi)]!;
      w[2 * i] = pteLo(mfn, lo & 0xfff);
      w[2 * i + 1] = (pteHi(mfn) | (hi & ~PTE_MFN_HI_MASK)) >>> 0;
    }
  }

  /** handle_shared_info: vcpu_info and arch kept, every event cleared and masked, the frame list list dropped. */
  private sharedInfo(old: Uint8Array): void {
    const layout = this.layout ?? this.fail("not yet received X86_PV_INFO");
    if (old.length !== XEN_PAGE_SIZE) this.fail(`length ${old.length}, expected ${XEN_PAGE_SIZE}`);
    const raw = this.xc.getdomaininfo(this.domid);
    if (typeof raw === "number") this.fail(`getdomaininfo failed (${errnoName(raw)})`);
    const frame = decodeGetdomaininfo(raw).sharedInfoFrame;
    const map = this.xc.map_foreign_pages(this.domid, PROT_READ | PROT_WRITE, [frame]);
    if (typeof map === "number") this.fail(`mapping shared_info failed (${errnoName(map)})`);
    const S = layout.shared_info;
    const si = map.u8(0);
    si.set(old.subarray(0, S.evtchn_pending), 0);
    si.set(old.subarray(S.arch, S.size), S.arch);
    si.fill(0, S.arch_pfn_to_mfn_frame_list_list, S.arch_pfn_to_mfn_frame_list_list + layout.ulong);
    si.fill(0, S.evtchn_pending, S.evtchn_mask);
    si.fill(0xff, S.evtchn_mask, S.evtchn_mask + (S.evtchn_mask - S.evtchn_pending));
    const V = layout.vcpu_info;
    for (let v = 0; v < 32; v++) si.fill(0, v * V.size + V.evtchn_pending_sel, v * V.size + V.evtchn_pending_sel + layout.ulong);
    map.unmap();
    this.seenSharedInfo = true;
  }

  private vcpuBasic(id: number, context: Uint8Array): void {
    const width = this.width ?? this.fail("not yet received X86_PV_INFO");
    if (id >= this.params.maxVcpus) this.fail(`vcpu ${id} is out of range (the domain has ${this.params.maxVcpus})`);
    if (context.length !== vcpuGuestContextSize(width)) this.fail(`vcpu ${id}: context of ${context.length} bytes, expected ${vcpuGuestContextSize(width)}`);
    if (this.vcpus.has(id)) this.fail(`vcpu ${id}: a second basic context`);
    this.vcpus.set(id, context);
  }

  /** x86_pv_stream_complete: vCPU contexts, pins, the guest's p2m. */
  private streamComplete(): void {
    const width = this.width ?? this.fail("the stream ended before X86_PV_INFO");
    if (this.maxPfn < 0) this.fail("the stream ended before X86_PV_P2M_FRAMES");
    if (!this.seenSharedInfo) this.fail("the stream ended before SHARED_INFO");
    if (!this.vcpus.has(0)) this.fail("no basic context for vcpu 0");
    let store = { mfn: 0 };
    let consoleMfn = 0;
    let startInfoPfn = 0;
    for (const [id, bytes] of [...this.vcpus].sort((a, b) => a[0] - b[0])) {
      const ctx = decodeVcpuGuestContext(width, bytes);
      const mfnOf = (pfn: number, what: string, want: "notab" | "root") => {
        if (pfn > this.maxPfn) this.fail(`vcpu ${id}: ${what} (pfn 0x${pfn.toString(16)}) out of range`);
        const type = this.types[pfn]!;
        if (want === "notab" && type !== PFINFO.NOTAB) this.fail(`vcpu ${id}: ${what} (pfn 0x${pfn.toString(16)}) has bad type 0x${type.toString(16)}`);
        if (want === "root" && ((type & PFINFO.LTABTYPE_MASK) >>> 0) !== (width === 64 ? PFINFO.L4TAB : PFINFO.L3TAB)) {
          this.fail(`vcpu ${id}: ${what} (pfn 0x${pfn.toString(16)}) has bad type 0x${type.toString(16)}, expected L${width === 64 ? 4 : 3}`);
        }
        const mfn = this.p2m[pfn]!;
        if (mfn === INVALID_MFN) this.fail(`vcpu ${id}: ${what} (pfn 0x${pfn.toString(16)}) has no frame`);
        return mfn;
      };
      if (id === 0) {
        startInfoPfn = Number(toUlong(width, ctx.user_regs.rdx));
        const s = this.processStartInfo(ctx.user_regs.rdx, mfnOf);
        ctx.user_regs.rdx = BigInt(s.startInfoMfn);
        store = { mfn: s.storeMfn };
        consoleMfn = s.consoleMfn;
      }
      ctx.flags = toUlong(width, ctx.flags) | BigInt(VGCF_online);
      const gdtEnts = Number(toUlong(width, ctx.gdt_ents));
      if (gdtEnts > 14 * 512) this.fail(`vcpu ${id}: GDT entry count ${gdtEnts} out of range`);
      for (let i = 0; i < Math.ceil(gdtEnts / 512); i++) ctx.gdt_frames[i] = BigInt(mfnOf(Number(toUlong(width, ctx.gdt_frames[i]!)), `GDT frame ${i}`, "notab"));
      ctx.ctrlreg[3] = xenPfnToCr3(width, mfnOf(xenCr3ToPfn(width, ctx.ctrlreg[3]!), "cr3", "root"));
      if (width === 64 && (toUlong(width, ctx.ctrlreg[1]!) & 1n) !== 0n) {
        ctx.ctrlreg[1] = BigInt(mfnOf(Number(toUlong(width, ctx.ctrlreg[1]!) >> 12n), "cr1", "root")) << 12n;
      }
      this.rc(`setting vcpu${id}'s basic context`, this.xc.setvcpucontext(this.domid, id, encodeVcpuGuestContext(width, ctx)));
    }
    this.pinPagetables();
    this.updateGuestP2m();
    this.done = { width, startInfoPfn, p2m: this.p2m, storeMfn: store.mfn, consoleMfn, pagesWithData: this.pagesWithData };
    if (this.verifying) this.done.verify = { pages: this.verified, mismatches: this.mismatches };
  }

  /** process_start_info: start_info's pfns become the new frames; the new channels, nr_pages and shared_info go in. */
  private processStartInfo(
    rdx: bigint | number,
    mfnOf: (pfn: number, what: string, want: "notab") => number,
  ): { startInfoMfn: number; storeMfn: number; consoleMfn: number } {
    const layout = this.layout!;
    const ul = layout.ulong;
    const startInfoMfn = mfnOf(Number(toUlong(this.width!, rdx)), "start info", "notab");
    const map = this.xc.map_foreign_pages(this.domid, PROT_READ | PROT_WRITE, [startInfoMfn]);
    if (typeof map === "number") this.fail(`mapping start info failed (${errnoName(map)})`);
    try {
      const dv = map.dv(0);
      const S = layout.start_info;
      const get = (off: number) => (ul === 8 ? (dv.getUint32(off + 4, true) === 0 ? dv.getUint32(off, true) : INVALID_MFN) : dv.getUint32(off, true));
      const put = (off: number, v: number) => {
        if (ul === 8) dv.setBigUint64(off, BigInt(v), true);
        else dv.setUint32(off, v, true);
      };
      const storeMfn = mfnOf(get(S.store_mfn), "XenStore pfn", "notab");
      put(S.store_mfn, storeMfn);
      dv.setUint32(S.store_evtchn, this.params.storeEvtchn, true);
      const consoleMfn = mfnOf(get(S.console_mfn), "console pfn", "notab");
      put(S.console_mfn, consoleMfn);
      dv.setUint32(S.console_evtchn, this.params.consoleEvtchn, true);
      put(S.nr_pages, this.maxPfn + 1);
      const raw = this.xc.getdomaininfo(this.domid);
      if (typeof raw === "number") this.fail(`getdomaininfo failed (${errnoName(raw)})`);
      put(S.shared_info, decodeGetdomaininfo(raw).sharedInfoFrame * XEN_PAGE_SIZE);
      dv.setUint32(S.flags, 0, true);
      return { startInfoMfn, storeMfn, consoleMfn };
    } finally {
      map.unmap();
    }
  }

  private pinPagetables(): void {
    for (let pfn = 0; pfn <= this.maxPfn; pfn++) {
      const type = this.types[pfn]!;
      if ((type & PFINFO.LPINTAB) === 0) continue;
      const level = PIN_LEVEL[LEVEL_OF_TYPE(type)];
      if (level === undefined) continue;
      const rc = this.xc.pin_table(this.domid, level, this.p2m[pfn]!);
      if (rc < 0) this.fail(`pinning the L${level} table at pfn 0x${pfn.toString(16)} failed (${errnoName(rc)})`);
    }
  }

  /** update_guest_p2m: the guest's own p2m frames get the new pfn -> mfn list. */
  private updateGuestP2m(): void {
    const ul = this.layout!.ulong;
    const mfns = this.p2mFramePfns.map((pfn, i) => {
      if (pfn > this.maxPfn) this.fail(`pfn 0x${pfn.toString(16)} for p2m_frame_list[${i}] out of range`);
      if (this.types[pfn] !== PFINFO.NOTAB) this.fail(`pfn 0x${pfn.toString(16)} for p2m_frame_list[${i}] has bad type 0x${this.types[pfn]!.toString(16)}`);
      const mfn = this.p2m[pfn]!;
      if (mfn === INVALID_MFN) this.fail(`p2m_frame_list[${i}] (pfn 0x${pfn.toString(16)}) has no frame`);
      return mfn;
    });
    const map = this.xc.map_foreign_pages(this.domid, PROT_WRITE, mfns);
    if (typeof map === "number") this.fail(`mapping the p2m frames failed (${errnoName(map)})`);
    const fpp = XEN_PAGE_SIZE / ul;
    for (let pfn = 0; pfn <= this.maxPfn; pfn++) {
      const words = map.u32(Math.floor(pfn / fpp));
      const i = pfn % fpp;
      const mfn = this.p2m[pfn]!;
      if (ul === 4) words[i] = mfn;
      else {
        words[2 * i] = mfn;
        words[2 * i + 1] = mfn === INVALID_MFN ? 0xffff_ffff : 0;
      }
    }
    map.unmap();
  }
}
