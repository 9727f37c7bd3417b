// xc_domain_save for a PV guest (tools/libs/guest/xg_sr_save.c with xg_sr_save_x86_pv.c): the
// suspended domain's p2m is found through shared_info's frame list list, its pages are sent in
// batches with their PFINFO types and pagetables normalised to pfns, then the TSC, shared_info
// and each online vCPU's context with its frames turned into pfns. Records go to `emit` in
// libxc's order; the caller frames them (sr_stream.ts).

import { DOMINF, dominfShutdownCode, PFINFO, decodeGetdomaininfo, XEN_DOMCTL_SHADOW_OP } from "../../abi/domctl.ts";
import { layoutFor, type GuestWidth, type Layout } from "../../abi/layout.ts";
import { decodeVcpuGuestContext, encodeVcpuGuestContext, toUlong, xenCr3ToPfn, xenPfnToCr3 } from "../../abi/vcpu_context.ts";
import { _PAGE_PRESENT, _PAGE_PSE, PTE_MFN_HI_MASK, pteHi, pteLo, pteMfn } from "../../abi/x86.ts";
import { SHUTDOWN, XEN_ERRNO, XEN_PAGE_SIZE } from "../../abi/xen.ts";
import { PROT_READ, type Privcmd } from "../../hypervisor/domctl.ts";
import { errnoName } from "./errno.ts";
import { type KnownLibxcRecord, MAX_BATCH_SIZE, type PageDataPage } from "./sr_format.ts";

/** An mfn the p2m does not have (INVALID_MFN as a 32-bit p2m entry holds it). */
export const INVALID_MFN = 0xffff_ffff;

export class SaveError extends Error {}

/** How far a save has gone: pfns sent of the p2m's. */
export interface SaveProgress {
  pfnsDone: number;
  pfnsTotal: number;
}

export interface SaveResult {
  width: GuestWidth;
  /** Pfns sent, with data and without (p2m size). */
  pfns: number;
  /** Pages sent with their contents. */
  pagesWithData: number;
  pagetables: number;
  vcpus: number;
}

/** What the save knows of the guest's memory once its p2m is mapped. */
export interface GuestP2m {
  width: GuestWidth;
  layout: Layout;
  maxPfn: number;
  /** pfn -> mfn, INVALID_MFN where there is none. */
  p2m: Uint32Array;
  /** mfn -> pfn for the domain's frames (the M2P restricted to it, checked against the p2m). */
  m2p: MfnIndex;
  /** The p2m's own frames, as pfns (X86_PV_P2M_FRAMES). */
  p2mFramePfns: number[];
  sharedInfoFrame: number;
}

function check(what: string, rc: number): number {
  if (rc < 0) throw new SaveError(`${what} failed (${errnoName(rc)})`);
  return rc;
}

/** Saves suspended domain `domid`: every record up to and including END goes to `emit`. */
export function saveX86Pv(xc: Privcmd, domid: number, emit: (rec: KnownLibxcRecord) => void): SaveResult {
  const steps = saveX86PvSteps(xc, domid, emit);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** saveX86Pv one PAGE_DATA batch at a time: it yields after each, so that a caller can report progress or let others run. */
export function* saveX86PvSteps(xc: Privcmd, domid: number, emit: (rec: KnownLibxcRecord) => void): Generator<SaveProgress, SaveResult, void> {
  const raw = xc.getdomaininfo(domid);
  if (typeof raw === "number") throw new SaveError(`getdomaininfo of domain ${domid} failed (${errnoName(raw)})`);
  const info = decodeGetdomaininfo(raw);
  if ((info.flags & DOMINF.shutdown) === 0 || dominfShutdownCode(info.flags) !== SHUTDOWN.suspend) {
    throw new SaveError(`domain ${domid} has not been suspended`);
  }
  const g = mapGuestP2m(xc, domid, info.sharedInfoFrame);
  const ul = g.layout.ulong;
  emit({ type: "X86_PV_INFO", body: { guestWidth: ul as 4 | 8, ptLevels: g.width === 64 ? 4 : 3 } });
  emit({ type: "STATIC_DATA_END", body: null });
  emit({ type: "X86_PV_P2M_FRAMES", body: { startPfn: 0, endPfn: g.maxPfn, frames: g.p2mFramePfns } });

  const total = g.maxPfn + 1;
  const counts = { pagesWithData: 0, pagetables: 0 };
  yield* sendPfns(xc, domid, g, allPfns(total), emit, counts);
  return { ...finishStream(xc, domid, g, info.maxVcpuId, emit), width: g.width, pfns: total, ...counts };
}

/** simple_precopy_policy: stop and copy below this many dirty pages, or after this many rounds. */
export const SPP_TARGET_DIRTY_COUNT = 50;
export const SPP_MAX_ITERATIONS = 5;

/** One pre-copy round: the pages it sent, and those the guest dirtied while it ran. */
export interface PrecopyRound {
  round: number;
  sent: number;
  dirtied: number;
}

/** A live save's steps: batches as SaveProgress, then one request to suspend the domain. */
export type LiveSaveStep = (SaveProgress & { round: number }) | { suspend: true; rounds: readonly PrecopyRound[] };

export interface LiveSaveResult extends SaveResult {
  rounds: PrecopyRound[];
  /** Pages sent after the suspend (the final CLEAN and the deferred pagetables). */
  finalPages: number;
  /** Pages sent again for VERIFY (--debug), 0 without. */
  verifyPages: number;
}

function shadowOp(xc: Privcmd, domid: number, op: number, bitmap?: Uint8Array, pages?: number): { dirtyCount: number } {
  const r = xc.shadow_op(domid, op, bitmap, pages);
  if (typeof r === "number") {
    if (r < 0) throw new SaveError(`shadow_op ${op} failed (${errnoName(r)})`);
    return { dirtyCount: 0 };
  }
  return r;
}

function bitmapPfns(bitmap: Uint8Array, total: number, extra?: Set<number>): number[] {
  const pfns: number[] = [];
  for (let byte = 0; byte < bitmap.length; byte++) {
    const b = bitmap[byte]!;
    if (b === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      const pfn = byte * 8 + bit;
      if ((b & (1 << bit)) !== 0 && pfn < total && !extra?.has(pfn)) pfns.push(pfn);
    }
  }
  if (extra) pfns.push(...extra);
  return pfns.sort((a, b) => a - b);
}

/**
 * xc_domain_save with XCFLAGS_LIVE (send_memory_live, suspend_and_send_dirty, verify_frames):
 * log-dirty on, every page sent while the guest runs, then the pages dirtied in each round
 * again until simple_precopy_policy says stop; then one `{ suspend }` step, after which the
 * caller must have suspended the domain; the final CLEAN and the deferred pages go out, with
 * `debug` every page again after a VERIFY record, then the TSC, shared_info and vCPUs.
 * Log-dirty is switched off however the save ends.
 */
export function* saveX86PvLiveSteps(
  xc: Privcmd,
  domid: number,
  emit: (rec: KnownLibxcRecord) => void,
  opts: { debug?: boolean } = {},
): Generator<LiveSaveStep, LiveSaveResult, void> {
  const raw = xc.getdomaininfo(domid);
  if (typeof raw === "number") throw new SaveError(`getdomaininfo of domain ${domid} failed (${errnoName(raw)})`);
  const info = decodeGetdomaininfo(raw);
  if ((info.flags & DOMINF.shutdown) !== 0) throw new SaveError(`domain ${domid} has shut down: nothing to migrate live`);
  // enable_logdirty: a previous save may have left it on; libxc switches it off and tries again.
  let on = xc.shadow_op(domid, XEN_DOMCTL_SHADOW_OP.ENABLE_LOGDIRTY);
  if (on === -XEN_ERRNO.EINVAL) {
    xc.shadow_op(domid, XEN_DOMCTL_SHADOW_OP.OFF);
    on = xc.shadow_op(domid, XEN_DOMCTL_SHADOW_OP.ENABLE_LOGDIRTY);
  }
  if (typeof on === "number" && on < 0) throw new SaveError(`enabling log-dirty on domain ${domid} failed (${errnoName(on)})`);
  try {
    const g = mapGuestP2m(xc, domid, info.sharedInfoFrame);
    emit({ type: "X86_PV_INFO", body: { guestWidth: g.layout.ulong as 4 | 8, ptLevels: g.width === 64 ? 4 : 3 } });
    emit({ type: "STATIC_DATA_END", body: null });
    emit({ type: "X86_PV_P2M_FRAMES", body: { startPfn: 0, endPfn: g.maxPfn, frames: g.p2mFramePfns } });
    const total = g.maxPfn + 1;
    const counts = { pagesWithData: 0, pagetables: 0 };
    const deferred = new Set<number>();
    const bitmap = new Uint8Array(Math.ceil(total / 64) * 8);
    const rounds: PrecopyRound[] = [];
    let pfns = allPfns(total);
    for (let round = 1; ; round++) {
      for (const s of sendPfns(xc, domid, g, pfns, emit, counts, { deferred })) yield { ...s, round };
      const sent = pfns.length;
      const { dirtyCount } = shadowOp(xc, domid, XEN_DOMCTL_SHADOW_OP.CLEAN, bitmap, total);
      rounds.push({ round, sent, dirtied: dirtyCount });
      if (dirtyCount < SPP_TARGET_DIRTY_COUNT || round >= SPP_MAX_ITERATIONS) break;
      pfns = bitmapPfns(bitmap, total);
    }
    // The pages dirtied in the last round wait for the suspend, with the deferred ones.
    yield { suspend: true, rounds };
    const after = xc.getdomaininfo(domid);
    const afterInfo = typeof after === "number" ? undefined : decodeGetdomaininfo(after);
    if (!afterInfo || (afterInfo.flags & DOMINF.shutdown) === 0 || dominfShutdownCode(afterInfo.flags) !== SHUTDOWN.suspend) {
      throw new SaveError(`domain ${domid} has not been suspended`);
    }
    // The bitmap still holds the last round's CLEAN; the final one adds what ran since.
    const lastRound = bitmap.slice();
    shadowOp(xc, domid, XEN_DOMCTL_SHADOW_OP.CLEAN, bitmap, total);
    for (let i = 0; i < bitmap.length; i++) bitmap[i]! |= lastRound[i]!;
    const finalPfns = bitmapPfns(bitmap, total, deferred);
    for (const _ of sendPfns(xc, domid, g, finalPfns, emit, counts, {})) {
      // the domain is suspended: no one runs in between
    }
    let verifyPages = 0;
    if (opts.debug) {
      emit({ type: "VERIFY", body: null });
      const all = allPfns(total);
      const v = { pagesWithData: 0, pagetables: 0 };
      for (const _ of sendPfns(xc, domid, g, all, emit, v, {})) {
        // every page once more, for the receiver to compare
      }
      verifyPages = v.pagesWithData;
    }
    const { vcpus } = finishStream(xc, domid, g, afterInfo.maxVcpuId, emit);
    return { width: g.width, pfns: total, ...counts, vcpus, rounds, finalPages: finalPfns.length, verifyPages };
  } finally {
    xc.shadow_op(domid, XEN_DOMCTL_SHADOW_OP.OFF);
  }
}

/** The records after memory: TSC, shared_info, each online vCPU, END. */
function finishStream(xc: Privcmd, domid: number, g: GuestP2m, maxVcpuId: number, emit: (rec: KnownLibxcRecord) => void): { vcpus: number } {
  const tsc = xc.gettscinfo(domid);
  if (typeof tsc === "number") throw new SaveError(`gettscinfo failed (${errnoName(tsc)})`);
  emit({ type: "X86_TSC_INFO", body: { mode: tsc.mode, khz: tsc.gtscKhz, nsec: BigInt(tsc.elapsedNsec), incarnation: tsc.incarnation } });
  emit({ type: "SHARED_INFO", body: readFrame(xc, domid, g.sharedInfoFrame, "shared_info") });
  let vcpus = 0;
  for (let id = 0; id <= maxVcpuId; id++) {
    const vi = xc.getvcpuinfo(domid, id);
    if (typeof vi === "number") throw new SaveError(`getvcpuinfo of vcpu${id} failed (${errnoName(vi)})`);
    if (!vi.online) continue;
    emit({ type: "X86_PV_VCPU_BASIC", body: { vcpuId: id, context: normaliseVcpu(xc, domid, id, g) } });
    vcpus++;
  }
  emit({ type: "END", body: null });
  return { vcpus };
}

function allPfns(total: number): number[] {
  const pfns: number[] = [];
  for (let pfn = 0; pfn < total; pfn++) pfns.push(pfn);
  return pfns;
}

/**
 * send_dirty_pages: `pfns` in PAGE_DATA batches, yielding after each. With `live.deferred` (a
 * pre-copy round), a pagetable that does not normalise (the running guest is changing it) goes
 * out as XTAB and its pfn is kept for the final round, as libxc defers it.
 */
function* sendPfns(
  xc: Privcmd,
  domid: number,
  g: GuestP2m,
  pfns: readonly number[],
  emit: (rec: KnownLibxcRecord) => void,
  counts: { pagesWithData: number; pagetables: number },
  live?: { deferred?: Set<number> },
): Generator<SaveProgress, void, void> {
  for (let at = 0; at < pfns.length; at += MAX_BATCH_SIZE) {
    const batch = pfns.slice(at, at + MAX_BATCH_SIZE);
    const sent = sendBatch(xc, domid, g, batch, live);
    counts.pagesWithData += sent.withData;
    counts.pagetables += sent.pagetables;
    emit({ type: "PAGE_DATA", body: sent.pages });
    sent.release();
    yield { pfnsDone: at + batch.length, pfnsTotal: pfns.length };
  }
}

function readFrame(xc: Privcmd, domid: number, mfn: number, what: string): Uint8Array {
  const m = xc.map_foreign_pages(domid, PROT_READ, [mfn]);
  if (typeof m === "number") throw new SaveError(`mapping ${what} (mfn 0x${mfn.toString(16)}) failed (${errnoName(m)})`);
  const copy = m.u8(0).slice();
  m.unmap();
  return copy;
}

function getUlong(bytes: Uint8Array, off: number, ul: number): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (ul === 4) return dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  // A 64-bit INVALID_MFN (or anything past 2^32 frames) is no frame of ours.
  return hi === 0 ? dv.getUint32(off, true) : INVALID_MFN;
}

/**
 * map_p2m_tree: shared_info's arch.pfn_to_mfn_frame_list_list names a page of mfns of pages of
 * mfns of the p2m's own pages. max_pfn comes from arch.max_pfn (XENMEM_maximum_gpfn), lowered
 * when the top level's trailing entries repeat, as libxc does.
 */
export function mapGuestP2m(xc: Privcmd, domid: number, sharedInfoFrame: number): GuestP2m {
  const bits = check("get_address_size", xc.get_address_size(domid));
  const width: GuestWidth = bits === 32 ? 32 : 64;
  const layout = layoutFor(width);
  const ul = layout.ulong;
  const fpp = XEN_PAGE_SIZE / ul;
  let maxPfn = check("maximum_gpfn", xc.maximum_gpfn(domid));
  const shinfo = readFrame(xc, domid, sharedInfoFrame, "shared_info");
  let fllEntries = Math.floor(maxPfn / (fpp * fpp)) + 1;
  if (fllEntries > fpp) throw new SaveError(`max_pfn 0x${maxPfn.toString(16)} too large for p2m tree`);
  const fllMfn = getUlong(shinfo, layout.shared_info.arch_pfn_to_mfn_frame_list_list, ul);
  if (fllMfn === 0 || fllMfn === INVALID_MFN) throw new SaveError(`bad mfn 0x${fllMfn.toString(16)} for p2m frame list list`);
  const fll = readFrame(xc, domid, fllMfn, "the p2m frame list list");
  const fllList: number[] = [];
  let savedX = 0;
  for (let x = 0; x < fllEntries; x++) {
    const mfn = getUlong(fll, x * ul, ul);
    if (mfn === 0 || mfn === INVALID_MFN) throw new SaveError(`bad mfn 0x${mfn.toString(16)} at index ${x} (of ${fllEntries}) in p2m frame list list`);
    if (x === 0 || mfn !== fllList[x - 1]) savedX = x;
    fllList.push(mfn);
  }
  const lowered = (savedX + 1) * fpp * fpp - 1;
  if (lowered < maxPfn) {
    maxPfn = lowered;
    fllEntries = Math.floor(maxPfn / (fpp * fpp)) + 1;
  }
  const flEntries = Math.floor(maxPfn / fpp) + 1;
  const mids = xc.map_foreign_pages(domid, PROT_READ, fllList.slice(0, fllEntries));
  if (typeof mids === "number") throw new SaveError(`mapping the p2m frame list failed (${errnoName(mids)})`);
  const leafMfns: number[] = [];
  for (let x = 0; x < flEntries; x++) {
    const mfn = getUlong(mids.u8(Math.floor(x / fpp)), (x % fpp) * ul, ul);
    if (mfn === 0 || mfn === INVALID_MFN) {
      mids.unmap();
      throw new SaveError(`bad mfn 0x${mfn.toString(16)} at index ${x} (of ${flEntries}) in p2m frame list`);
    }
    leafMfns.push(mfn);
  }
  mids.unmap();
  const leaves = xc.map_foreign_pages(domid, PROT_READ, leafMfns);
  if (typeof leaves === "number") throw new SaveError(`mapping the p2m's ${leafMfns.length} frames failed (${errnoName(leaves)})`);
  const p2m = new Uint32Array(maxPfn + 1);
  for (let x = 0; x < flEntries; x++) {
    const page = leaves.u32(x);
    const first = x * fpp;
    const n = Math.min(fpp, maxPfn + 1 - first);
    for (let i = 0; i < n; i++) p2m[first + i] = ul === 4 ? page[i]! : page[2 * i + 1] === 0 ? page[2 * i]! : INVALID_MFN;
  }
  leaves.unmap();
  const m2p = indexMfns(p2m);
  const p2mFramePfns = leafMfns.map((mfn, i) => {
    const pfn = m2p.get(mfn);
    if (pfn === undefined) throw new SaveError(`p2m frame ${i} (mfn 0x${mfn.toString(16)}) is not in the guest's p2m`);
    return pfn;
  });
  return { width, layout, maxPfn, p2m, m2p, p2mFramePfns, sharedInfoFrame };
}

/** mfn -> the first pfn the p2m gives it. */
export interface MfnIndex {
  get(mfn: number): number | undefined;
}

/**
 * The p2m inverted: a flat table when the mfns are dense enough for one (a guest's frames on a
 * machine of up to 4 GiB, or up to 4 per pfn), else a Map (the mfns are the guest's to write).
 */
function indexMfns(p2m: Uint32Array): MfnIndex {
  let max = -1;
  for (let pfn = 0; pfn < p2m.length; pfn++) {
    const mfn = p2m[pfn]!;
    if (mfn !== INVALID_MFN && mfn > max) max = mfn;
  }
  if (max < Math.max(1 << 20, 4 * p2m.length)) {
    const table = new Uint32Array(max + 1).fill(INVALID_MFN);
    // Backwards, so that the first pfn of an mfn the p2m gives twice is the one kept.
    for (let pfn = p2m.length - 1; pfn >= 0; pfn--) {
      const mfn = p2m[pfn]!;
      if (mfn !== INVALID_MFN) table[mfn] = pfn;
    }
    return {
      get(mfn) {
        const pfn = table[mfn];
        return pfn === undefined || pfn === INVALID_MFN ? undefined : pfn;
      },
    };
  }
  const m2p = new Map<number, number>();
  for (let pfn = 0; pfn < p2m.length; pfn++) {
    const mfn = p2m[pfn]!;
    if (mfn !== INVALID_MFN && !m2p.has(mfn)) m2p.set(mfn, pfn);
  }
  return m2p;
}

/** mfn_to_pfn where mfn_in_pseudophysmap holds, else undefined. */
function mfnToPfn(g: GuestP2m, mfn: number): number | undefined {
  const pfn = g.m2p.get(mfn);
  return pfn !== undefined && g.p2m[pfn] === mfn ? pfn : undefined;
}

/** One PAGE_DATA batch: types from getpageframeinfo3, data through a read-only mapping. */
function sendBatch(
  xc: Privcmd,
  domid: number,
  g: GuestP2m,
  batch: readonly number[],
  live?: { deferred?: Set<number> },
): { pages: PageDataPage[]; withData: number; pagetables: number; release(): void } {
  const deferred = live?.deferred;
  const n = batch.length;
  const first = batch[0] ?? 0;
  const mfns: number[] = [];
  const valid: number[] = [];
  for (let i = 0; i < n; i++) {
    const mfn = g.p2m[batch[i]!]!;
    mfns.push(mfn);
    if (mfn !== INVALID_MFN) valid.push(mfn);
  }
  const types = valid.length > 0 ? xc.getpageframeinfo3(domid, valid) : new Uint32Array(0);
  if (typeof types === "number") throw new SaveError(`getpageframeinfo3 of pfns 0x${first.toString(16)}+${n} failed (${errnoName(types)})`);
  const typeOf: number[] = [];
  const dataMfns: number[] = [];
  let t = 0;
  for (let i = 0; i < n; i++) {
    const type = mfns[i] === INVALID_MFN ? PFINFO.XTAB : types[t++]!;
    typeOf.push(type);
    if ((type & PFINFO.LTAB_MASK) >>> 0 !== PFINFO.XTAB && (type & PFINFO.LTAB_MASK) >>> 0 !== PFINFO.BROKEN && (type & PFINFO.LTAB_MASK) >>> 0 !== PFINFO.XALLOC) dataMfns.push(mfns[i]!);
  }
  const map = dataMfns.length > 0 ? xc.map_foreign_pages(domid, PROT_READ, dataMfns) : undefined;
  if (typeof map === "number") throw new SaveError(`mapping pfns 0x${first.toString(16)}+${n} failed (${errnoName(map)})`);
  const pages: PageDataPage[] = [];
  let d = 0;
  let deferredHere = 0;
  let pagetables = 0;
  for (let i = 0; i < n; i++) {
    const pfn = batch[i]!;
    const type = typeOf[i]!;
    const kind = (type & PFINFO.LTAB_MASK) >>> 0;
    if (kind === PFINFO.XTAB || kind === PFINFO.BROKEN || kind === PFINFO.XALLOC) {
      pages.push({ pfn, type });
      continue;
    }
    const src = map!.u8(d++);
    const level = (type & PFINFO.LTABTYPE_MASK) / 2 ** PFINFO.LTAB_SHIFT;
    if (level >= 1 && level <= 4) {
      let data: Uint8Array;
      try {
        data = normalisePagetable(g, src, level, pfn);
      } catch (e) {
        if (!deferred || !(e instanceof SaveError)) throw e;
        deferred.add(pfn);
        pages.push({ pfn, type: PFINFO.XTAB });
        deferredHere++;
        continue;
      }
      pagetables++;
      pages.push({ pfn, type, data });
    } else pages.push({ pfn, type, data: src });
  }
  return { pages, withData: d - deferredHere, pagetables, release: () => map?.unmap() };
}

/**
 * normalise_pagetable: each present entry's frame becomes a pfn; Xen's own slots are cleared
 * (x86_64 L4 256-272, PAE L3 4-511), for Xen to fill in again on the other side.
 */
export function normalisePagetable(g: GuestP2m, src: Uint8Array, level: number, pfn: number): Uint8Array {
  if (g.width === 32 && level === 4) throw new SaveError(`pfn 0x${pfn.toString(16)}: an L4 table in a 32-bit guest`);
  let xenFirst = -1;
  let xenLast = -1;
  if (g.width === 64 && level === 4) {
    xenFirst = 256;
    xenLast = 272;
  } else if (g.width === 32 && level === 3) {
    xenFirst = 4;
    xenLast = 511;
  }
  const s = new Uint32Array(src.buffer, src.byteOffset, XEN_PAGE_SIZE / 4);
  const out = new Uint8Array(XEN_PAGE_SIZE);
  const o = new Uint32Array(out.buffer);
  for (let i = 0; i < 512; i++) {
    if (i >= xenFirst && i <= xenLast) continue;
    const lo = s[2 * i]!;
    const hi = s[2 * i + 1]!;
    if ((lo & _PAGE_PRESENT) === 0) {
      o[2 * i] = lo;
      o[2 * i + 1] = hi;
      continue;
    }
    if (level > 1 && (lo & _PAGE_PSE) !== 0) throw new SaveError(`cannot migrate superpage (L${level}[${i}] of pfn 0x${pfn.toString(16)})`);
    const mfn = pteMfn(lo, hi);
    const target = mfnToPfn(g, mfn);
    if (target === undefined) throw new SaveError(`bad mfn 0x${mfn.toString(16)} for L${level}[${i}] of pfn 0x${pfn.toString(16)}`);
    o[2 * i] = pteLo(target, lo & 0xfff);
    o[2 * i + 1] = (pteHi(target) | (hi & ~PTE_MFN_HI_MASK)) >>> 0;
  }
  return out;
}

/** write_one_vcpu_basic: the suspend record in vCPU 0's rdx, the GDT frames, cr3 and x86_64's cr1 become pfns. */
function normaliseVcpu(xc: Privcmd, domid: number, id: number, g: GuestP2m): Uint8Array {
  const raw = xc.getvcpucontext(domid, id);
  if (typeof raw === "number") throw new SaveError(`getvcpucontext of vcpu${id} failed (${errnoName(raw)})`);
  const w = g.width;
  const ctx = decodeVcpuGuestContext(w, raw);
  const pfnOf = (mfn: number, what: string) => {
    const pfn = mfnToPfn(g, mfn);
    if (pfn === undefined) throw new SaveError(`bad mfn 0x${mfn.toString(16)} for vcpu${id}'s ${what}`);
    return pfn;
  };
  if (id === 0) ctx.user_regs.rdx = BigInt(pfnOf(Number(toUlong(w, ctx.user_regs.rdx)), "suspend record (rdx)"));
  const gdtFrames = Math.ceil(Number(toUlong(w, ctx.gdt_ents)) / 512);
  if (gdtFrames > 16) throw new SaveError(`vcpu${id}'s GDT entry count ${ctx.gdt_ents} is out of range`);
  for (let i = 0; i < gdtFrames; i++) ctx.gdt_frames[i] = BigInt(pfnOf(Number(toUlong(w, ctx.gdt_frames[i]!)), `GDT frame ${i}`));
  ctx.ctrlreg[3] = xenPfnToCr3(w, pfnOf(xenCr3ToPfn(w, ctx.ctrlreg[3]!), "cr3"));
  if (w === 64 && toUlong(w, ctx.ctrlreg[1]!) !== 0n) {
    const mfn = Number(toUlong(w, ctx.ctrlreg[1]!) >> 12n);
    ctx.ctrlreg[1] = 1n | (BigInt(pfnOf(mfn, "cr1 (user pagetables)")) << 12n);
  }
  return encodeVcpuGuestContext(w, ctx);
}
