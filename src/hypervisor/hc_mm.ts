// The PV MMU hypercalls: mmu_update, update_va_mapping, mmuext_op (pinning, base pointers,
// TLB flushes) and multicall. Argument checks and error codes follow xen/arch/x86/mm.c and
// common/multicall.c. Nothing here is preempted, so no continuation is ever created.

import { DOMID_IO, DOMID_SELF, DOMID_XEN, XEN_ERRNO as E, HYPERVISOR, MMU, MMUEXT, UVMF } from "../abi/xen.ts";
import { MMU_UPDATE } from "../abi/layout.ts";
import type { Domain } from "./domain.ts";
import { FaultError } from "./guest_access.ts";
import type { Hypervisor } from "./hypervisor.ts";
import { PGT } from "./page_info.ts";
import { findL1, guestAddressOk } from "./tlb.ts";
import type { Vcpu } from "./vcpu.ts";

/** Xen's own continuation flag in the count (asm/mm.h, not the public ABI). */
const MMU_UPDATE_PREEMPTED = 0x80000000;

/**
 * guest_handle_okay: the range lies outside Xen's range (it need not be mapped). A 32-bit
 * guest's handles get the 64-bit check, which no 32-bit address fails; a bad one faults later.
 */
function handleOkay(v: Vcpu, va: number, bytes: number): boolean {
  if (bytes <= 0) return true;
  if (v.width === 32) return Number.isInteger(va);
  return guestAddressOk(64, va) && guestAddressOk(64, va + bytes - 1);
}

/** get_pg_owner. */
function pgOwnerOf(hv: Hypervisor, v: Vcpu, domid: number): Domain | undefined {
  if (domid === DOMID_SELF) return v.domain;
  if (domid === v.domain.domid || domid === DOMID_XEN || domid === DOMID_IO) return undefined;
  return hv.domainById(domid);
}

/** The XSM_TARGET check of the dummy policy: oneself, or a privileged caller. */
function mayTarget(src: Domain, target: Domain): boolean {
  return src === target || src.privileged;
}

/** A count with MMU_UPDATE_PREEMPTED set continues a call: the work done so far is in pdone. */
function continuedCount(hv: Hypervisor, v: Vcpu, countArg: number, pdone: number): { count: number; done: number } {
  const count = countArg >>> 0;
  if ((count & MMU_UPDATE_PREEMPTED) === 0) return { count, done: 0 };
  return { count: count & ~MMU_UPDATE_PREEMPTED, done: pdone !== 0 ? hv.guest.u32(v, pdone) : 0 };
}

function writeDone(hv: Hypervisor, v: Vcpu, pdone: number, done: number): void {
  if (pdone === 0) return;
  try {
    hv.guest.put32(v, pdone, done);
  } catch {
    // Xen ignores a failure to report progress.
  }
}

export function doMmuUpdate(hv: Hypervisor, v: Vcpu, ureqs: number, countArg: number, pdone: number, foreigndom: number): number {
  const { count, done } = continuedCount(hv, v, countArg, pdone);
  if (!handleOkay(v, ureqs, count * MMU_UPDATE.size)) return -E.EFAULT;
  const d = v.domain;
  let ptOwner = d;
  const ptDom = (foreigndom >>> 16) & 0xffff;
  if (ptDom !== 0) {
    const owner = hv.domainById(ptDom - 1);
    if (!owner) return -E.ESRCH;
    if (owner !== d && owner.vcpus.length === 0) return -E.EINVAL;
    ptOwner = owner;
  }
  const pgOwner = pgOwnerOf(hv, v, foreigndom & 0xffff);
  let rc = 0;
  let i = 0;
  let flushLinear = false;
  if (!pgOwner) rc = -E.ESRCH;
  else {
    try {
      for (; i < count; i++) {
        const at = ureqs + i * MMU_UPDATE.size;
        rc = mmuUpdateOne(hv, d, ptOwner, pgOwner, [
          hv.guest.u32(v, at + MMU_UPDATE.ptr),
          hv.guest.u32(v, at + MMU_UPDATE.ptr + 4),
          hv.guest.u32(v, at + MMU_UPDATE.val),
          hv.guest.u32(v, at + MMU_UPDATE.val + 4),
        ]);
        if (rc > 0) {
          flushLinear = true;
          rc = 0;
        }
        if (rc < 0) break;
      }
    } catch (e) {
      if (!(e instanceof FaultError)) throw e;
      rc = -E.EFAULT;
    }
  }
  // An upper-level entry changed: every vCPU of the table's owner flushes (flush_linear_pt).
  if (flushLinear) flushVcpus(hv, ptOwner.vcpus, undefined);
  writeDone(hv, v, pdone, done + i);
  return rc;
}

/** One request: 0 or -errno, or 1 for a successful L2-L4 update (which needs a flush). */
function mmuUpdateOne(hv: Hypervisor, d: Domain, ptOwner: Domain, pgOwner: Domain, req: readonly number[]): number {
  const [ptrLo, ptrHi, valLo, valHi] = req as [number, number, number, number];
  const mm = hv.mm;
  const cmd = ptrLo & 7;
  const mfn = (ptrLo >>> 12) + ptrHi * 0x100000;
  if (cmd === MMU.NORMAL_PT_UPDATE || cmd === MMU.PT_UPDATE_PRESERVE_AD || cmd === MMU.PT_UPDATE_NO_TRANSLATE) {
    if (!mayTarget(d, ptOwner) || !mayTarget(d, pgOwner)) return -E.EPERM;
    return normalPtUpdate(hv, ptOwner, pgOwner, mfn, (ptrLo & 0xfff) >>> 3, valLo, valHi);
  }
  if (cmd !== MMU.MACHPHYS_UPDATE) return -E.ENOSYS;
  if (d !== ptOwner || !mayTarget(d, pgOwner)) return -E.EPERM;
  if (!mm.getPage(mfn, pgOwner)) return -E.EINVAL;
  hv.memory.m2p[mfn] = valLo;
  // paging_mark_pfn_dirty(pg_owner, gpfn): the pfn the frame now stands for.
  hv.logDirty.markMfn(mfn);
  mm.putPage(mfn);
  return 0;
}

/** One MMU_NORMAL_PT_UPDATE: through mod_lN_entry if the frame is a table in use, else a plain write. */
function normalPtUpdate(hv: Hypervisor, ptOwner: Domain, pgOwner: Domain, mfn: number, slot: number, lo: number, hi: number): number {
  const mm = hv.mm;
  const pages = mm.pages;
  if (!mm.getPage(mfn, ptOwner)) return -E.EINVAL;
  let rc = -E.EINVAL;
  if (pages.typeCount[mfn]! > 0 && pages.validated(mfn)) {
    const level = pages.level(mfn);
    if (level === 1) rc = mm.modEntry(1, mfn, slot, lo, hi, ptOwner, pgOwner);
    else if (level > 1) rc = pgOwner === ptOwner ? mm.modEntry(level, mfn, slot, lo, hi, ptOwner, pgOwner) : -E.EINVAL;
    if (level > 1 && rc === 0) rc = 1;
    else if ((pages.type[mfn]! & 7) === PGT.writable) rc = writeEntry(hv, mfn, slot, lo, hi);
  } else if (mm.getPageType(mfn, PGT.writable, ptOwner) === 0) {
    rc = writeEntry(hv, mfn, slot, lo, hi);
    mm.putPageType(mfn);
  }
  // paging_write_guest_entry: the written page is dirty (marked before a last put could free it).
  if (rc >= 0) hv.logDirty.markPtUpdate(mfn);
  mm.putPage(mfn);
  return rc;
}

function writeEntry(hv: Hypervisor, mfn: number, slot: number, lo: number, hi: number): number {
  const words = hv.memory.u32(mfn);
  words[slot * 2] = lo;
  words[slot * 2 + 1] = hi;
  return 0;
}

/** The vCPUs a guest vcpumask bitmap names (vcpumask_to_pcpumask); throws FaultError on a bad pointer. */
function vcpusInMask(hv: Hypervisor, v: Vcpu, maskVa: number): Vcpu[] {
  const d = v.domain;
  const bitsPerLong = v.width;
  const out: Vcpu[] = [];
  for (let bias = 0; bias < d.vcpus.length; bias += bitsPerLong) {
    const lo = hv.guest.u32(v, maskVa + bias / 8);
    const hi = bitsPerLong === 64 ? hv.guest.u32(v, maskVa + bias / 8 + 4) : 0;
    for (let bit = 0; bit < bitsPerLong && bias + bit < d.vcpus.length; bit++) {
      const set = bit < 32 ? (lo >>> bit) & 1 : (hi >>> (bit - 32)) & 1;
      if (set) out.push(d.vcpus[bias + bit]!);
    }
  }
  return out;
}

function flushVcpus(hv: Hypervisor, vcpus: readonly Vcpu[], va: number | undefined): void {
  for (const t of vcpus) {
    if (va === undefined) hv.mm.flushTlb(t.tlb);
    else t.tlb.flushOne(va);
  }
}

export function doUpdateVaMapping(hv: Hypervisor, v: Vcpu, va: number, lo: number, hi: number, flags: number): number {
  const d = v.domain;
  const mm = hv.mm;
  if (!Number.isInteger(va)) return -E.EINVAL;
  const l1 = findL1(hv.memory, v.width, v.guestTable, va);
  if (l1 < 0 || !mm.getPage(l1, d)) return -E.EINVAL;
  let rc = -E.EINVAL;
  if (mm.pages.typeCount[l1]! > 0 && mm.pages.validated(l1) && mm.pages.level(l1) === 1) {
    const slot = v.width === 64 ? Math.floor((va < 0 ? va + 2 ** 48 : va) / 4096) % 512 : (va >>> 12) & 511;
    rc = mm.modEntry(1, l1, slot, lo >>> 0, hi >>> 0, d, d);
  }
  if (rc === 0) hv.logDirty.markPtUpdate(l1);
  mm.putPage(l1);
  if (rc < 0) return rc;
  const type = flags & UVMF.FLUSHTYPE_MASK;
  if (type !== UVMF.TLB_FLUSH && type !== UVMF.INVLPG) return 0;
  const target = flags - type;
  const one = type === UVMF.INVLPG ? va : undefined;
  if (target === UVMF.LOCAL) flushVcpus(hv, [v], one);
  else if (target === UVMF.ALL) flushVcpus(hv, d.vcpus, one);
  else flushVcpus(hv, vcpusInMask(hv, v, target), one);
  return 0;
}

export function doMmuextOp(hv: Hypervisor, v: Vcpu, uops: number, countArg: number, pdone: number, foreigndom: number): number {
  const { count, done } = continuedCount(hv, v, countArg, pdone);
  const L = v.domain.layout.mmuext_op;
  if (!handleOkay(v, uops, count * L.size)) return -E.EFAULT;
  const pgOwner = pgOwnerOf(hv, v, foreigndom & 0xffff);
  if (!pgOwner) return -E.ESRCH;
  if (!mayTarget(v.domain, pgOwner)) return -E.EPERM;
  let rc = 0;
  let i = 0;
  try {
    for (; i < count; i++) {
      const at = uops + i * L.size;
      const cmd = hv.guest.u32(v, at + L.cmd);
      rc = mmuextOne(hv, v, pgOwner, cmd, at + L.arg1, at + L.arg2);
      if (rc < 0) break;
    }
  } catch (e) {
    if (!(e instanceof FaultError)) throw e;
    rc = -E.EFAULT;
  }
  writeDone(hv, v, pdone, done + i);
  return rc;
}

const PIN_TYPES: Record<number, number> = {
  [MMUEXT.PIN_L1_TABLE]: PGT.l1,
  [MMUEXT.PIN_L2_TABLE]: PGT.l2,
  [MMUEXT.PIN_L3_TABLE]: PGT.l3,
  [MMUEXT.PIN_L4_TABLE]: PGT.l4,
};

function mmuextOne(hv: Hypervisor, v: Vcpu, pgOwner: Domain, cmd: number, arg1: number, arg2: number): number {
  const g = hv.guest;
  const mm = hv.mm;
  const currd = v.domain;
  const self = currd === pgOwner;
  switch (cmd) {
    case MMUEXT.PIN_L1_TABLE:
    case MMUEXT.PIN_L2_TABLE:
    case MMUEXT.PIN_L3_TABLE:
    case MMUEXT.PIN_L4_TABLE: {
      // A 32-bit guest has no L4 tables: Xen ignores the request.
      if (cmd === MMUEXT.PIN_L4_TABLE && pgOwner.width === 32) return 0;
      return mm.pin(g.ulong(v, arg1), PIN_TYPES[cmd]!, pgOwner);
    }
    case MMUEXT.UNPIN_TABLE:
      return mm.unpin(g.ulong(v, arg1), pgOwner);
    case MMUEXT.NEW_BASEPTR:
      return self ? newGuestCr3(hv, v, g.ulong(v, arg1)) : -E.EPERM;
    case MMUEXT.NEW_USER_BASEPTR:
      // The 32-bit entry rejects it before any other check.
      if (v.width === 32) return -E.EINVAL;
      return self ? newGuestUserCr3(hv, v, g.ulong(v, arg1)) : -E.EPERM;
    case MMUEXT.TLB_FLUSH_LOCAL:
      if (!self) return -E.EPERM;
      mm.flushTlb(v.tlb);
      return 0;
    case MMUEXT.INVLPG_LOCAL:
      if (!self) return -E.EPERM;
      v.tlb.flushOne(g.pointer(v, arg1));
      return 0;
    case MMUEXT.TLB_FLUSH_MULTI:
    case MMUEXT.INVLPG_MULTI: {
      if (!self) return -E.EPERM;
      let targets: Vcpu[];
      try {
        targets = vcpusInMask(hv, v, g.pointer(v, arg2));
      } catch {
        return -E.EINVAL;
      }
      if (cmd === MMUEXT.TLB_FLUSH_MULTI) flushVcpus(hv, targets, undefined);
      else {
        const va = g.pointer(v, arg1);
        if (guestAddressOk(v.width, va)) flushVcpus(hv, targets, va);
      }
      return 0;
    }
    case MMUEXT.TLB_FLUSH_ALL:
      if (!self) return -E.EPERM;
      flushVcpus(hv, currd.vcpus, undefined);
      return 0;
    case MMUEXT.INVLPG_ALL: {
      if (!self) return -E.EPERM;
      const va = g.pointer(v, arg1);
      if (guestAddressOk(v.width, va)) flushVcpus(hv, currd.vcpus, va);
      return 0;
    }
    case MMUEXT.FLUSH_CACHE:
    case MMUEXT.FLUSH_CACHE_GLOBAL:
      if (!self) return -E.EPERM;
      // cache_flush_permitted: only a domain with I/O memory, which no domU has.
      return currd.privileged ? 0 : -E.EACCES;
    case MMUEXT.SET_LDT: {
      if (!self) return -E.EPERM;
      const ents = g.u32(v, arg2);
      const ptr = ents ? g.pointer(v, arg1) : 0;
      // __addr_ok is the 64-bit check for every guest.
      if (ents > 8192 || (ents !== 0 && (ptr % 4096 !== 0 || (v.width === 64 && !guestAddressOk(64, ptr))))) return -E.EINVAL;
      v.ldtBase = ptr;
      v.ldtEnts = ents;
      return 0;
    }
    case MMUEXT.CLEAR_PAGE: {
      const mfn = g.ulong(v, arg1);
      if (!mm.getPage(mfn, pgOwner)) return -E.EINVAL;
      if (mm.getPageType(mfn, PGT.writable, pgOwner) < 0) {
        mm.putPage(mfn);
        return -E.EINVAL;
      }
      hv.logDirty.markMfn(mfn);
      hv.memory.u32(mfn).fill(0);
      mm.putPageAndType(mfn);
      return 0;
    }
    case MMUEXT.COPY_PAGE: {
      const dst = g.ulong(v, arg1);
      const src = g.ulong(v, arg2);
      if (!mm.getPage(src, pgOwner)) return -E.EINVAL;
      if (!mm.getPage(dst, pgOwner)) {
        mm.putPage(src);
        return -E.EINVAL;
      }
      if (mm.getPageType(dst, PGT.writable, pgOwner) < 0) {
        mm.putPage(src);
        mm.putPage(dst);
        return -E.EINVAL;
      }
      hv.logDirty.markMfn(dst);
      hv.memory.u32(dst).set(hv.memory.u32(src));
      mm.putPageAndType(dst);
      mm.putPage(src);
      return 0;
    }
    case MMUEXT.MARK_SUPER:
    case MMUEXT.UNMARK_SUPER:
      return -E.EOPNOTSUPP;
    default:
      return -E.ENOSYS;
  }
}

/** Overwrites a multicall entry with 0xAA bytes (entries never straddle a page). */
function poison(hv: Hypervisor, v: Vcpu, at: number, size: number): void {
  const ma = v.translate(at, true);
  if (ma < 0 || (ma % 4096) + size > 4096 || ma % 4 !== 0) {
    for (let off = 0; off < size; off += 4) hv.guest.put32(v, at + off, 0xaaaaaaaa);
    return;
  }
  const first = (ma % 4096) / 4;
  hv.memory.u32(Math.floor(ma / 4096)).fill(0xaaaaaaaa, first, first + size / 4);
}

/** new_guest_cr3: the new base takes a root type reference before the old one is dropped. */
export function newGuestCr3(hv: Hypervisor, v: Vcpu, mfn: number): number {
  const mm = hv.mm;
  const old = v.guestTable;
  if (mfn !== old) {
    const rc = mm.getPageAndType(mfn, v.width === 64 ? PGT.l4 : PGT.l3, v.domain);
    if (rc < 0) return rc;
    v.guestTable = mfn;
    if (old !== 0) mm.putPageAndType(old);
  }
  mm.flushTlb(v.tlb);
  return 0;
}

function newGuestUserCr3(hv: Hypervisor, v: Vcpu, mfn: number): number {
  const old = v.guestTableUser;
  if (mfn === old) return 0;
  if (mfn !== 0) {
    const rc = hv.mm.getPageAndType(mfn, PGT.l4, v.domain);
    if (rc < 0) return rc;
  }
  v.guestTableUser = mfn;
  if (old !== 0) hv.mm.putPageAndType(old);
  return 0;
}

/**
 * do_multicall: each entry's op runs with its six argument words and its result is written
 * back; as a debug Xen does, the rest of the entry is overwritten with 0xAA first, so callers
 * can rely only on `result`. A nested multicall gets -EINVAL; an iret ends the batch (XSA-213).
 */
export function doMulticall(
  hv: Hypervisor,
  v: Vcpu,
  list: number,
  nrCalls: number,
  dispatch: (op: number, a1: number, a2: number, a3: number, a4: number, a5: number) => number,
): number {
  if (v.inMulticall) return -E.EINVAL;
  const L = v.domain.layout.multicall_entry;
  const ul = v.width / 8;
  const nr = nrCalls >>> 0;
  if (!handleOkay(v, list, nr * L.size)) return -E.EFAULT;
  const g = hv.guest;
  v.inMulticall = true;
  try {
    for (let i = 0; i < nr; i++) {
      const at = list + i * L.size;
      // Register-sized words: on x86_64 read sign-extended, as the guest's pointers are.
      const word = (off: number) => (v.width === 64 ? g.pointer(v, at + off) : g.u32(v, at + off));
      const op = word(L.op);
      const a: number[] = [];
      for (let k = 0; k < 5; k++) a.push(word(L.args + k * ul));
      const result = op === HYPERVISOR.iret ? -E.ENOSYS : dispatch(op, a[0]!, a[1]!, a[2]!, a[3]!, a[4]!);
      poison(hv, v, at, L.size);
      g.putUlong(v, at + L.result, result);
      if (op === HYPERVISOR.iret) return result;
    }
    return 0;
  } finally {
    v.inMulticall = false;
  }
}
