// A PV vCPU's context as the toolstack and the guest exchange it: arch_set_info_guest
// (xen/arch/x86/domain.c) and arch_get_info_guest (xen/arch/x86/domctl.c) of Xen 4.17, with the
// GDT they install (pv_set_gdt and pv_destroy_gdt, xen/arch/x86/pv/descriptor-tables.c), the
// debug registers (set_debugreg, pv/misc-hypercalls.c) and vcpu_reset. VCPUOP_initialise,
// XEN_DOMCTL_setvcpucontext and the domain builder's boot context all come through here.
//
// The model's host: CR0 as Xen sets it at boot (PG, AM, WP, NE, ET, MP, PE), and the cr4 bits
// a PV guest sees of the hardware are PAE, MCE, OSFXSR and OSXMMEXCPT; its CPU policy lets a
// guest set TSD, DE, FSGSBASE and OSXSAVE. Xen's preemption (-ERESTART) and m2p_strict's
// read-only M2P slot do not exist here.

import {
  decodeVcpuGuestContext,
  emptyVcpuGuestContext,
  encodeVcpuGuestContext,
  GPR_NAMES,
  gprOffset,
  NR_CTRLREG,
  NR_GDT_FRAMES,
  NR_TRAP_CTXT,
  VGCF,
  VMASST_TYPE,
  type VcpuGuestContext,
  vcpuGuestContextSize,
  X86_EFLAGS_IF,
  X86_DR6_DEFAULT,
  X86_DR7_DEFAULT,
  X86_EFLAGS_IOPL,
  type XenUlong,
  xenCr3ToPfn,
  xenPfnToCr3,
} from "../abi/vcpu_context.ts";
import type { GuestWidth } from "../abi/layout.ts";
import { XEN_ERRNO as E } from "../abi/xen.ts";
import type { Hypervisor } from "./hypervisor.ts";
import { PGT } from "./page_info.ts";
import { NO_DEADLINE, REG, type Vcpu } from "./vcpu.ts";

/** CR0 on the model's host (Xen's trampoline sets it so); TS is the guest's. */
const HOST_CR0 = 0x80050033;
const X86_CR0_TS = 0x8;
/** cr4 bits a PV guest controls (PV_CR4_GUEST_MASK: TSD, DE, FSGSBASE, OSXSAVE) and sees of the host. */
const PV_CR4_GUEST_MASK = 0x4n | 0x8n | 0x10000n | 0x40000n;
const PV_CR4_GUEST_VISIBLE = 0x20n | 0x40n | 0x200n | 0x400n;
const X86_CR4_DE = 0x8;
/** vm_assist types a 32-bit PV guest may set; a 64-bit one may also set m2p_strict. */
const PV32_VM_ASSIST_MASK = 0x3fn;
const PV64_VM_ASSIST_MASK = PV32_VM_ASSIST_MASK | (1n << BigInt(VMASST_TYPE.m2p_strict));
/** The LDT has at most 8192 entries; the GDT's last two pages are Xen's (FIRST_RESERVED_GDT_PAGE 14). */
const MAX_LDT_ENTS = 8192n;
const FIRST_RESERVED_GDT_PAGE = 14;
const FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_PAGE * 512;
/** Debug register reserved bits (asm/debugreg.h). */
const DR_STATUS_KEEP = 0xffffefff;
const DR_STATUS_RESERVED_ONE = 0xffff0ff0;
const DR_CONTROL_KEEP = 0xffff27ff;
const DR_CONTROL_RESERVED_ONE = 0x400;
const DR_GENERAL_DETECT = 0x2000;
const DR7_ACTIVE_MASK = 0xff;
const DR_IO = 2;

const TWO_47 = 1n << 47n;
const U64 = 1n << 64n;
/** HYPERVISOR_VIRT_END: __addr_ok allows addresses from here up. */
const HYPERVISOR_VIRT_END = 0xffff880000000000n;

/** is_canonical_address for an unsigned 64-bit value. */
function canonical(a: bigint): boolean {
  return a < TWO_47 || a >= U64 - TWO_47;
}

/** __addr_ok: below the canonical hole's start, or above Xen's range (not a canonical check). */
function addrOk(a: bigint): boolean {
  return a < TWO_47 || a >= HYPERVISOR_VIRT_END;
}

/** __fixup_guest_selector: an RPL below the guest kernel's (3 on x86_64, 1 on i386) is raised to it. */
function fixupSelector<T extends number | bigint>(sel: T, rpl: number): T {
  if (typeof sel === "bigint") {
    const r = BigInt(rpl);
    return ((sel & 3n) >= r ? sel : (sel & ~3n) | r) as T;
  }
  return ((sel & 3) >= rpl ? sel : (sel & ~3) | rpl) as T;
}

/** An address as the model keeps it: sign-extended on x86_64, unsigned on i386. */
function toAddress(width: GuestWidth, a: bigint): number {
  return width === 64 ? Number(BigInt.asIntN(64, a)) : Number(a);
}

function fromAddress(width: GuestWidth, a: number): bigint {
  return width === 64 ? BigInt.asUintN(64, BigInt(a)) : BigInt(a >>> 0);
}

function getPair(a: Uint32Array, i: number): bigint {
  return (BigInt(a[2 * i + 1]!) << 32n) | BigInt(a[2 * i]!);
}

function setPair(a: Uint32Array, i: number, v: bigint): void {
  a[2 * i] = Number(v & 0xffffffffn);
  a[2 * i + 1] = Number((v >> 32n) & 0xffffffffn);
}

/** The context's members as bigints (decoded contexts have nothing else). */
const u = (v: XenUlong): bigint => (typeof v === "bigint" ? v : BigInt(v));

/** DIV_ROUND_UP(ents, 512) in an unsigned long of the width, truncated to unsigned int. */
function gdtFrameCount(width: GuestWidth, ents: bigint): number {
  return Number(BigInt.asUintN(32, BigInt.asUintN(width, ents + 511n) / 512n));
}

/**
 * arch_set_info_guest for a PV vCPU: `ctxt` is the domain's vcpu_guest_context, as Xen's bytes
 * for its width (too few of them is -EFAULT, as a short copy_from_guest) or as plain data.
 * Returns 0 or -errno, with Xen's checks in Xen's order: and as in Xen, a context refused after
 * the first checks has already replaced some of the vCPU's state (registers, FPU, trap table).
 *
 * An uninitialised vCPU takes the context whole: cr3 (and x86_64's user cr3 in ctrlreg[1]) must
 * name frames of the domain that take a root type reference, the GDT's frames a seg_desc one,
 * and it becomes initialised, to enter at rip when it first runs. An initialised one keeps its
 * base pointers, GDT and LDT (-EOPNOTSUPP when the context names others). Either way VGCF_online
 * decides _VPF_down; as in Xen nothing wakes the vCPU here (VCPUOP_up or the domain's unpause
 * does).
 */
export function archSetInfoGuest(hv: Hypervisor, v: Vcpu, ctxt: Uint8Array | VcpuGuestContext): number {
  const w = v.width;
  const compat = w === 32;
  let c: VcpuGuestContext;
  if (ctxt instanceof Uint8Array) {
    if (ctxt.length < vcpuGuestContextSize(w)) return -E.EFAULT;
    c = decodeVcpuGuestContext(w, ctxt);
  } else {
    try {
      c = decodeVcpuGuestContext(w, encodeVcpuGuestContext(w, ctxt));
    } catch (e) {
      if (e instanceof RangeError) return -E.EINVAL;
      throw e;
    }
  }
  const d = v.domain;
  const r = c.user_regs;
  const flags = u(c.flags);

  if (!compat) {
    if (
      !canonical(u(r.rip)) ||
      !canonical(u(r.rsp)) ||
      !canonical(u(c.kernel_sp)) ||
      (u(c.ldt_ents) !== 0n && !canonical(u(c.ldt_base))) ||
      !canonical(u(c.fs_base)) ||
      !canonical(u(c.gs_base_kernel)) ||
      !canonical(u(c.gs_base_user)) ||
      !canonical(u(c.event_callback_eip)) ||
      !canonical(u(c.syscall_callback_eip)) ||
      !canonical(u(c.failsafe_callback_eip))
    ) {
      return -E.EINVAL;
    }
    r.ss = fixupSelector(r.ss, 3);
    c.kernel_ss = fixupSelector(u(c.kernel_ss), 3);
    r.cs = fixupSelector(r.cs, 3);
    for (const t of c.trap_ctxt) {
      if (!canonical(u(t.address))) return -E.EINVAL;
      t.cs = fixupSelector(t.cs, 3);
    }
    if (!addrOk(u(c.ldt_base))) return -E.EINVAL;
  } else {
    r.ss = fixupSelector(r.ss, 1);
    c.kernel_ss = fixupSelector(u(c.kernel_ss), 1);
    r.cs = fixupSelector(r.cs, 1);
    c.event_callback_cs = fixupSelector(u(c.event_callback_cs), 1);
    c.failsafe_callback_cs = fixupSelector(u(c.failsafe_callback_cs), 1);
    for (const t of c.trap_ctxt) t.cs = fixupSelector(t.cs, 1);
  }

  // LDT safety checks.
  const ldtBase = u(c.ldt_base);
  const ldtEnts = u(c.ldt_ents);
  if ((ldtBase & 0xfffn) !== 0n || ldtEnts > MAX_LDT_ENTS) return -E.EINVAL;

  setPair(v.vgcFlags, 0, flags);
  // TF_kernel_mode may be clear only for a 64-bit guest.
  v.kernelMode = compat || (flags & BigInt(VGCF.in_kernel)) !== 0n;

  // vcpu_setup_fpu: the image given, or (with an XSAVE area) the old one with MXCSR reset.
  if ((flags & BigInt(VGCF.i387_valid)) !== 0n) {
    v.fpuCtxt.set(c.fpu_ctxt);
    v.fpuInitialised = true;
  } else {
    v.fpuInitialised = false;
    new DataView(v.fpuCtxt.buffer, v.fpuCtxt.byteOffset).setUint32(24, 0x1f80, true);
  }

  // user_regs and the trap table (compat: XLAT_cpu_user_regs and XLAT_trap_info).
  for (const n of GPR_NAMES) if (gprOffset(w, n) !== undefined) setPair(v.regs, REG[n], u(r[n]));
  v.errorCode = r.error_code;
  v.entryVector = r.entry_vector;
  v.cs = r.cs;
  v.savedUpcallMask = r.saved_upcall_mask;
  v.ss = r.ss;
  v.es = r.es;
  v.ds = r.ds;
  v.fs = r.fs;
  v.gs = r.gs;
  for (let i = 0; i < NR_TRAP_CTXT; i++) {
    const t = c.trap_ctxt[i]!;
    v.trapVector[i] = t.vector;
    v.trapFlags[i] = t.flags;
    v.trapCs[i] = t.cs;
    setPair(v.trapAddress, i, u(t.address));
  }

  if (v.id === 0 && (u(c.vm_assist) & ~(compat ? PV32_VM_ASSIST_MASK : PV64_VM_ASSIST_MASK)) !== 0n) return -E.EINVAL;

  // IOPL is virtualised, and real interrupts are always enabled.
  const rflags = v.regs[2 * REG.rflags]!;
  v.iopl = rflags & X86_EFLAGS_IOPL;
  v.regs[2 * REG.rflags] = ((rflags & ~X86_EFLAGS_IOPL) | X86_EFLAGS_IF) >>> 0;

  const gdtEnts = u(c.gdt_ents);
  const nrGdtFrames = gdtFrameCount(w, gdtEnts);
  if (nrGdtFrames > NR_GDT_FRAMES) return -E.EINVAL;

  if (!v.initialised) {
    if (!compat && (flags & BigInt(VGCF.in_kernel)) === 0n && u(c.ctrlreg[1]!) === 0n) return -E.EINVAL;
    v.ldtEnts = Number(ldtEnts);
    v.ldtBase = ldtEnts !== 0n ? toAddress(w, ldtBase) : 0;
  } else {
    let fail = xenPfnToCr3(w, v.guestTable) !== u(c.ctrlreg[3]!);
    if (!compat) {
      if (v.guestTableUser === 0) fail ||= u(c.ctrlreg[1]!) !== 0n || (flags & BigInt(VGCF.in_kernel)) === 0n;
      else fail ||= xenPfnToCr3(w, v.guestTableUser) !== u(c.ctrlreg[1]!);
    }
    fail ||= BigInt(v.gdtEnts) !== gdtEnts;
    for (let i = 0; !fail && i < nrGdtFrames; i++) fail = BigInt(v.gdtFrames[i]!) !== u(c.gdt_frames[i]!);
    fail ||= BigInt(v.ldtEnts) !== ldtEnts;
    if (v.ldtEnts !== 0) fail ||= fromAddress(w, v.ldtBase) !== ldtBase;
    if (fail) return -E.EOPNOTSUPP;
  }

  setPair(v.kernelSs, 0, u(c.kernel_ss));
  v.kernelSp = toAddress(w, u(c.kernel_sp));
  for (let i = 0; i < NR_CTRLREG; i++) setPair(v.ctrlreg, i, u(c.ctrlreg[i]!));
  v.eventCallback = toAddress(w, u(c.event_callback_eip));
  v.failsafeCallback = toAddress(w, u(c.failsafe_callback_eip));
  if (!compat) {
    v.syscallCallback = toAddress(w, u(c.syscall_callback_eip));
    v.fsBase = toAddress(w, u(c.fs_base));
    v.gsBaseKernel = toAddress(w, u(c.gs_base_kernel));
    v.gsBaseUser = toAddress(w, u(c.gs_base_user));
  } else {
    v.eventCallbackCs = Number(u(c.event_callback_cs));
    v.failsafeCallbackCs = Number(u(c.failsafe_callback_cs));
  }

  // Only CR0.TS is the guest's; cr4 as pv_fixup_guest_cr4 allows.
  v.ctrlreg[0] = ((v.ctrlreg[0]! & X86_CR0_TS) | (HOST_CR0 & ~X86_CR0_TS)) >>> 0;
  v.ctrlreg[1] = 0; // cr0's high half
  setPair(v.ctrlreg, 4, (getPair(v.ctrlreg, 4) & PV_CR4_GUEST_MASK) | PV_CR4_GUEST_VISIBLE);

  v.debugreg.fill(0);
  v.debugreg[12] = X86_DR6_DEFAULT;
  v.debugreg[14] = X86_DR7_DEFAULT;
  v.dr7Emul = 0;
  for (let i = 0; i < 4; i++) setDebugreg(v, i, u(c.debugreg[i]!));
  setDebugreg(v, 6, u(c.debugreg[6]!));
  setDebugreg(v, 7, u(c.debugreg[7]!));

  if (!v.initialised) {
    if (v.id === 0) d.vmAssist = Number(u(c.vm_assist));

    // The GDT (an i386 context's frames are unsigned ints; an x86_64 one's entry count is
    // passed on as an unsigned int).
    const frames = c.gdt_frames.map(u);
    let rc = pvSetGdt(hv, v, frames, Number(BigInt.asUintN(32, gdtEnts)));
    if (rc !== 0) return rc;

    // The base pointer: a frame of the domain's that takes a root type reference.
    const mm = hv.mm;
    const rootType = compat ? PGT.l3 : PGT.l4;
    const cr3Mfn = xenCr3ToPfn(w, u(c.ctrlreg[3]!));
    if (!mm.getPage(cr3Mfn, d)) rc = -E.EINVAL;
    else {
      rc = mm.getPageType(cr3Mfn, rootType, d);
      if (rc < 0) mm.putPage(cr3Mfn);
    }
    if (rc !== 0) {
      pvDestroyGdt(hv, v);
      return rc;
    }
    setGuestTable(hv, v, cr3Mfn);
    if (!compat && u(c.ctrlreg[1]!) !== 0n) {
      const userMfn = xenCr3ToPfn(w, u(c.ctrlreg[1]!));
      if (!mm.getPage(userMfn, d)) rc = -E.EINVAL;
      else {
        rc = mm.getPageType(userMfn, PGT.l4, d);
        if (rc < 0) mm.putPage(userMfn);
      }
      if (rc !== 0) {
        // As in Xen, the kernel base pointer stays.
        pvDestroyGdt(hv, v);
        return rc;
      }
      const old = v.guestTableUser;
      v.guestTableUser = userMfn;
      if (old !== 0) mm.putPageAndType(old);
    }
    v.initialised = true;
    v.started = false;
    mm.flushTlb(v.tlb);
  }

  if ((flags & BigInt(VGCF.online)) !== 0n) v.down = false;
  else if (!v.down) {
    v.down = true;
    hv.sched.evict(v);
  }
  return 0;
}

/** The new base pointer (its reference already taken) replaces any the vCPU held. */
function setGuestTable(hv: Hypervisor, v: Vcpu, mfn: number): void {
  const old = v.guestTable;
  v.guestTable = mfn;
  if (old !== 0) hv.mm.putPageAndType(old);
}

/** set_debugreg for one register of a vCPU that is not running; the errno is Xen's (its callers here ignore it). */
function setDebugreg(v: Vcpu, reg: number, value: bigint): number {
  switch (reg) {
    case 0:
    case 1:
    case 2:
    case 3:
      if (!addrOk(value)) return -E.EPERM;
      setPair(v.debugreg, reg, value);
      return 0;
    case 6: {
      if (value > 0xffffffffn) return -E.EINVAL;
      v.debugreg[12] = ((Number(value) & DR_STATUS_KEEP) | DR_STATUS_RESERVED_ONE) >>> 0;
      v.debugreg[13] = 0;
      return 0;
    }
    case 7: {
      if (value > 0xffffffffn) return -E.EINVAL;
      let dr7 = ((Number(value) & DR_CONTROL_KEEP) | DR_CONTROL_RESERVED_ONE) >>> 0;
      if (dr7 & DR_GENERAL_DETECT) return -E.EPERM;
      if (dr7 & DR7_ACTIVE_MASK) {
        let ioEnable = 0;
        for (let i = 16; i < 32; i += 4) {
          if (((dr7 >>> i) & 3) === DR_IO) {
            if ((v.ctrlreg[8]! & X86_CR4_DE) === 0) return -E.EPERM;
            ioEnable |= dr7 & (3 << ((i - 16) >> 1));
          }
        }
        v.dr7Emul = ioEnable;
        dr7 = (dr7 & ~ioEnable) >>> 0;
      } else v.dr7Emul = 0;
      v.debugreg[14] = dr7;
      v.debugreg[15] = 0;
      return 0;
    }
    default:
      return -E.ENODEV;
  }
}

/**
 * arch_get_info_guest: the vCPU's context as plain data (as XEN_DOMCTL_getvcpucontext fills a
 * zeroed struct: debugreg[4] and [5] stay 0). cr3 (and x86_64's user cr3) come from the base
 * pointers, flags from the vCPU's state.
 */
export function archGetInfoGuestContext(v: Vcpu): VcpuGuestContext {
  const w = v.width;
  const compat = w === 32;
  const c = emptyVcpuGuestContext(w);
  c.fpu_ctxt.set(v.fpuCtxt);
  let flags = getPair(v.vgcFlags, 0) & ~BigInt(VGCF.i387_valid | VGCF.in_kernel);
  if (v.fpuInitialised) flags |= BigInt(VGCF.i387_valid);
  if (!v.down) flags |= BigInt(VGCF.online);
  const r = c.user_regs;
  for (const n of GPR_NAMES) if (gprOffset(w, n) !== undefined) r[n] = compat ? BigInt(v.regs[2 * REG[n]]!) : getPair(v.regs, REG[n]);
  r.error_code = compat ? v.errorCode & 0xffff : v.errorCode;
  r.entry_vector = compat ? v.entryVector & 0xffff : v.entryVector;
  r.cs = v.cs;
  r.saved_upcall_mask = v.savedUpcallMask;
  r.ss = v.ss;
  r.es = v.es;
  r.ds = v.ds;
  r.fs = v.fs;
  r.gs = v.gs;
  for (let i = 0; i < NR_TRAP_CTXT; i++) {
    const t = c.trap_ctxt[i]!;
    t.vector = v.trapVector[i]!;
    t.flags = v.trapFlags[i]!;
    t.cs = v.trapCs[i]!;
    t.address = compat ? BigInt(v.trapAddress[2 * i]!) : getPair(v.trapAddress, i);
  }
  for (let i = 0; i < 4; i++) c.debugreg[i] = getPair(v.debugreg, i);
  c.debugreg[6] = getPair(v.debugreg, 6);
  c.debugreg[7] = getPair(v.debugreg, 7) | BigInt(v.dr7Emul);

  c.ldt_base = v.ldtEnts !== 0 ? fromAddress(w, v.ldtBase) : 0n;
  c.ldt_ents = BigInt(v.ldtEnts);
  for (let i = 0; i < NR_GDT_FRAMES; i++) c.gdt_frames[i] = BigInt(v.gdtFrames[i]!);
  c.gdt_ents = BigInt(v.gdtEnts);
  c.kernel_ss = compat ? BigInt(v.kernelSs[0]!) : getPair(v.kernelSs, 0);
  c.kernel_sp = fromAddress(w, v.kernelSp);
  for (let i = 0; i < NR_CTRLREG; i++) c.ctrlreg[i] = compat ? BigInt(v.ctrlreg[2 * i]!) : getPair(v.ctrlreg, i);
  c.event_callback_eip = fromAddress(w, v.eventCallback);
  c.failsafe_callback_eip = fromAddress(w, v.failsafeCallback);
  if (!compat) {
    c.syscall_callback_eip = fromAddress(w, v.syscallCallback);
    c.fs_base = fromAddress(w, v.fsBase);
    c.gs_base_kernel = fromAddress(w, v.gsBaseKernel);
    c.gs_base_user = fromAddress(w, v.gsBaseUser);
  } else {
    c.event_callback_cs = BigInt(v.eventCallbackCs >>> 0);
    c.failsafe_callback_cs = BigInt(v.failsafeCallbackCs >>> 0);
  }
  // IOPL is virtualised: merged back into the rflags returned.
  const rf = 2 * REG.rflags;
  r.rflags = compat ? BigInt((v.regs[rf]! | v.iopl) >>> 0) : getPair(v.regs, REG.rflags) | BigInt(v.iopl);
  c.ctrlreg[3] = xenPfnToCr3(w, v.guestTable);
  if (!compat) c.ctrlreg[1] = v.guestTableUser === 0 ? 0n : xenPfnToCr3(w, v.guestTableUser);
  // guest_kernel_mode: ring 3 with TF_kernel_mode on x86_64, ring 1 on i386.
  if (compat ? (v.cs & 3) === 1 : (v.cs & 3) === 3 && v.kernelMode) flags |= BigInt(VGCF.in_kernel);
  c.flags = flags;
  c.vm_assist = BigInt(v.domain.vmAssist);
  return c;
}

/** arch_get_info_guest as the bytes XEN_DOMCTL_getvcpucontext copies out for the domain's width. */
export function archGetInfoGuest(v: Vcpu): Uint8Array {
  return encodeVcpuGuestContext(v.width, archGetInfoGuestContext(v));
}

/**
 * pv_set_gdt: `entries` descriptors in `frames` (mfns of the domain's that each take a seg_desc
 * type reference; a frame that cannot is -EINVAL, with the references taken so far dropped),
 * replacing the vCPU's GDT.
 */
export function pvSetGdt(hv: Hypervisor, v: Vcpu, frames: readonly bigint[], entries: number): number {
  if (entries > FIRST_RESERVED_GDT_ENTRY) return -E.EINVAL;
  const nr = Math.ceil(entries / 512);
  const mm = hv.mm;
  for (let i = 0; i < nr; i++) {
    const f = frames[i] ?? 0n;
    const mfn = Number(f);
    if (f >= BigInt(hv.memory.nrFrames) || !hv.memory.isValid(mfn) || mm.getPageAndType(mfn, PGT.seg_desc, v.domain) < 0) {
      for (let j = i - 1; j >= 0; j--) mm.putPageAndType(Number(frames[j]!));
      return -E.EINVAL;
    }
  }
  pvDestroyGdt(hv, v);
  v.gdtEnts = entries;
  for (let i = 0; i < nr; i++) v.gdtFrames[i] = Number(frames[i]!);
  return 0;
}

/** pv_destroy_gdt: the GDT's frames give back their references. */
export function pvDestroyGdt(hv: Hypervisor, v: Vcpu): void {
  const nr = Math.ceil(v.gdtEnts / 512);
  for (let i = 0; i < nr; i++) hv.mm.putPageAndType(v.gdtFrames[i]!);
  v.gdtFrames.fill(0);
  v.gdtEnts = 0;
}

/**
 * vcpu_reset with arch_vcpu_reset's PV part (XEN_DOMCTL_setvcpucontext with no context, and
 * what domain destruction does for each vCPU): the GDT and the base pointers are dropped, and
 * the vCPU is down and uninitialised again, with no FPU state.
 */
export function archVcpuReset(hv: Hypervisor, v: Vcpu): void {
  pvDestroyGdt(hv, v);
  for (const mfn of [v.guestTable, v.guestTableUser]) if (mfn !== 0) hv.mm.putPageAndType(mfn);
  v.guestTable = 0;
  v.guestTableUser = 0;
  if (!v.down) {
    v.down = true;
    hv.sched.evict(v);
  }
  if (v.pollPorts) {
    v.pollPorts = null;
    v.pollDeadline = NO_DEADLINE;
    v.domain.pollers.delete(v);
  }
  v.fpuInitialised = false;
  v.initialised = false;
  v.started = false;
  v.blocked = false;
}
