// A virtual CPU: Xen's scheduling and event state for it, and the CPU the guest kernel runs on
// (it implements GuestCpu: hypercalls, and loads and stores through its TLB and pagetables).

import { type GuestCpu, PageFault } from "../abi/cpu.ts";
import type { GuestWidth } from "../abi/layout.ts";
import { FPU_CTXT_SIZE, GPR_NAMES, type GprName, NR_CTRLREG, NR_DEBUGREG, NR_GDT_FRAMES, NR_TRAP_CTXT, X86_DR6_DEFAULT, X86_DR7_DEFAULT } from "../abi/vcpu_context.ts";
import { NR_VIRQS, RUNSTATE, XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import type { LogDirty } from "./log_dirty.ts";
import type { MachineMemory } from "./memory.ts";
import { TLB_INDEX_MASK, TLB_RO, TLB_RW, Tlb, walk } from "./tlb.ts";

/** What a vCPU needs from the hypervisor around it. */
export interface VcpuHost {
  readonly memory: MachineMemory;
  readonly logDirty: LogDirty;
  hypercall(v: Vcpu, op: number, a1: number, a2: number, a3: number, a4: number, a5: number): number;
  now(v: Vcpu): number;
  wake(v: Vcpu): void;
  spend(v: Vcpu, ns: number): void;
}

export const NO_DEADLINE = -1;

/** Index of each cpu_user_regs register in Vcpu.regs (as (lo, hi) pairs at 2 * REG[name]). */
export const REG = Object.freeze(Object.fromEntries(GPR_NAMES.map((n, i) => [n, i])) as Record<GprName, number>);
export const NR_REGS = GPR_NAMES.length;
const RAX_LO = 2 * GPR_NAMES.indexOf("rax");
/** FXSAVE offsets of FCW and MXCSR, and their reset values (vcpu_init_fpu). */
const FXSAVE_FCW = 0;
const FXSAVE_MXCSR = 24;
export const FCW_DEFAULT = 0x037f;
export const MXCSR_DEFAULT = 0x1f80;
/** %dr6 and %dr7 after reset. */
/** The cr4 bits a PV guest sees of the host's settings (PAE, MCE, OSFXSR, OSXMMEXCPT on the model's host). */
export const PV_CR4_HOST_VISIBLE = 0x20 | 0x40 | 0x200 | 0x400;
/** Upcalls delivered back to back on one return to the guest before Xen lets it run on. */
const MAX_UPCALLS_PER_RETURN = 4;

export class Vcpu implements GuestCpu {
  readonly width: GuestWidth;
  /** Byte offset of this vCPU's vcpu_info in shared_info. */
  readonly vcpuInfoOff: number;
  /** Index of evtchn_pending_sel in the shared_info u32 view. */
  readonly pendingSelWord: number;
  readonly virqToEvtchn = new Uint32Array(NR_VIRQS);

  initialised = false;
  /** _VPF_down: not brought up (or taken down) by VCPUOP_up/down. */
  down = true;
  blocked = false;
  pollPorts: number[] | null = null;
  pollDeadline = NO_DEADLINE;
  /** Entered its context's rip yet. */
  started = false;
  /** The callbacks (symbolic kernel addresses, sign-extended on x86_64), and their code selectors on i386. */
  eventCallback = 0;
  failsafeCallback = 0;
  syscallCallback = 0;
  eventCallbackCs = 0;
  failsafeCallbackCs = 0;
  nmiCallback = 0;
  nmiPending = false;
  singleshotDeadline = NO_DEADLINE;
  periodicPeriod = 0;
  periodicNext = NO_DEADLINE;
  /** The physical CPU running this vCPU, or -1. */
  pcpu = -1;
  /** Context-switch bookkeeping for the scheduler's runqueue. */
  queued = false;
  /** Hard and soft affinity (XEN_DOMCTL_setvcpuaffinity): one byte per pCPU, 1 = allowed; null = all. */
  hardAffinity: Uint8Array | null = null;
  softAffinity: Uint8Array | null = null;
  /** Paused by the credit scheduler until its capped domain earns credit again (CSCHED_FLAG_UNIT_PARKED). */
  parked = false;
  /** The scheduler's own per-vCPU data. */
  schedPriv: object | null = null;
  runstate: number = RUNSTATE.offline;
  runstateEntry = 0;
  readonly runstateTime = [0, 0, 0, 0];
  hypercalls = 0;
  upcalls = 0;
  private inUpcall = false;
  readonly tlb = new Tlb();
  /** guest_table: the base pointer (L4, or a 32-bit guest's L3) this vCPU runs on, 0 if none. */
  guestTable = 0;
  /** guest_table_user (x86_64): the user-mode L4, 0 if none. */
  guestTableUser = 0;
  inMulticall = false;
  ldtBase = 0;
  ldtEnts = 0;

  // ---- the rest of the vCPU's context (vcpu_guest_context; see vcpu_context.ts) ----
  // guestTable and guestTableUser above are cr3 and x86_64's user cr3; ldtBase/ldtEnts the LDT;
  // the callbacks above are the context's. The base pointers stay the MMU's source of truth.

  /** cpu_user_regs' registers as 64-bit (lo, hi) pairs, indexed by REG; an i386 guest's are 32-bit. */
  readonly regs = new Uint32Array(2 * NR_REGS);
  errorCode = 0;
  entryVector = 0;
  savedUpcallMask = 0;
  cs = 0;
  ss = 0;
  ds = 0;
  es = 0;
  fs = 0;
  gs = 0;
  /** v->arch.pv.vgc_flags: the context's flags as given, as (lo, hi). */
  readonly vgcFlags = new Uint32Array(2);
  /** TF_kernel_mode: running the guest kernel (only an x86_64 context can say otherwise). */
  kernelMode = true;
  /** The virtualised IOPL (rflags bits 12-13, kept out of the registers). */
  iopl = 0;
  /** The FXSAVE image, and whether the guest's FPU state is in it (VGCF_i387_valid). */
  readonly fpuCtxt = new Uint8Array(FPU_CTXT_SIZE);
  fpuInitialised = false;
  /** The virtual IDT (trap_ctxt): vector, flags, code selector and address (lo, hi) of each entry. */
  readonly trapVector = new Uint8Array(NR_TRAP_CTXT);
  readonly trapFlags = new Uint8Array(NR_TRAP_CTXT);
  readonly trapCs = new Uint16Array(NR_TRAP_CTXT);
  readonly trapAddress = new Uint32Array(2 * NR_TRAP_CTXT);
  /** The GDT's frames (each holds a seg_desc type reference) and its number of entries. */
  readonly gdtFrames = new Float64Array(NR_GDT_FRAMES);
  gdtEnts = 0;
  /** The virtual TSS: kernel_ss as (lo, hi), kernel_sp. */
  readonly kernelSs = new Uint32Array(2);
  kernelSp = 0;
  /** CR0-CR7 as (lo, hi) pairs; cr3 and x86_64's cr1 are read from the base pointers instead. */
  readonly ctrlreg = new Uint32Array(2 * NR_CTRLREG);
  /** DR0-DR7 as (lo, hi) pairs (4 and 5 unused), and the I/O breakpoint enables kept out of DR7. */
  readonly debugreg = new Uint32Array(2 * NR_DEBUGREG);
  dr7Emul = 0;
  /** x86_64's segment bases. */
  fsBase = 0;
  gsBaseKernel = 0;
  gsBaseUser = 0;

  constructor(
    readonly id: number,
    readonly domain: Domain,
    private readonly host: VcpuHost,
  ) {
    this.width = domain.width;
    this.vcpuInfoOff = id * domain.layout.vcpu_info.size;
    this.pendingSelWord = (this.vcpuInfoOff + domain.layout.vcpu_info.evtchn_pending_sel) >> 2;
    // vcpu_init_fpu, pv_vcpu_initialise and the debug registers' reset values.
    this.fpuCtxt[FXSAVE_FCW] = FCW_DEFAULT & 0xff;
    this.fpuCtxt[FXSAVE_FCW + 1] = FCW_DEFAULT >>> 8;
    this.fpuCtxt[FXSAVE_MXCSR] = MXCSR_DEFAULT & 0xff;
    this.fpuCtxt[FXSAVE_MXCSR + 1] = MXCSR_DEFAULT >>> 8;
    this.ctrlreg[8] = PV_CR4_HOST_VISIBLE;
    this.debugreg[12] = X86_DR6_DEFAULT;
    this.debugreg[14] = X86_DR7_DEFAULT;
  }

  /**
   * Register `r` (REG.*) as a number: sign-extended on x86_64 (exact below 2^53 in magnitude, as
   * every address is), unsigned on i386.
   */
  reg(r: number): number {
    const lo = this.regs[2 * r]!;
    return this.width === 64 ? (this.regs[2 * r + 1]! | 0) * 0x100000000 + lo : lo;
  }

  /** Sets register `r` to `value` (a negative number is its two's complement). */
  setReg(r: number, value: number): void {
    this.regs[2 * r] = value >>> 0;
    this.regs[2 * r + 1] = this.width === 64 ? Math.floor(value / 0x100000000) >>> 0 : 0;
  }

  /** rip: the symbolic kernel address the vCPU enters at when it first runs. */
  get rip(): number {
    return this.reg(REG.rip);
  }

  set rip(address: number) {
    this.setReg(REG.rip, address);
  }

  /** The context's rip (the entry point). */
  get startAddress(): number {
    return this.rip;
  }

  set startAddress(address: number) {
    this.rip = address;
  }

  /** The entry point's argument: rsi on x86_64, esi on i386 (where Xen's builders put start_info). */
  get startArg(): number {
    return this.reg(REG.rsi);
  }

  set startArg(value: number) {
    this.setReg(REG.rsi, value);
  }

  get vcpuId(): number {
    return this.id;
  }

  get runnable(): boolean {
    return !this.down && this.initialised && !this.blocked && this.domain.active && !this.parked;
  }

  get upcallPending(): boolean {
    return this.domain.sharedInfoBytes[this.vcpuInfoOff] !== 0;
  }

  get upcallMask(): boolean {
    return this.domain.sharedInfoBytes[this.vcpuInfoOff + 1] !== 0;
  }

  setUpcallMask(masked: boolean): void {
    this.domain.sharedInfoBytes[this.vcpuInfoOff + 1] = masked ? 1 : 0;
  }

  /** vcpu_mark_events_pending. */
  markEventsPending(): void {
    const b = this.domain.sharedInfoBytes;
    if (b[this.vcpuInfoOff] !== 0) return;
    b[this.vcpuInfoOff] = 1;
    this.kick();
  }

  /** vcpu_kick / vcpu_unblock. */
  kick(): void {
    if (!this.blocked) return;
    // A poller is blocked like anyone else: a new upcall ends its poll too (vcpu_unblock).
    if (this.pollPorts) {
      this.wakeFromPoll();
      return;
    }
    this.blocked = false;
    this.host.wake(this);
  }

  wakeFromPoll(): void {
    if (!this.pollPorts) return;
    this.pollPorts = null;
    this.pollDeadline = NO_DEADLINE;
    this.domain.pollers.delete(this);
    this.blocked = false;
    this.host.wake(this);
  }

  // ---- GuestCpu ----

  hypercall(op: number, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0): number {
    this.hypercalls++;
    const rc = this.host.hypercall(this, op, a1, a2, a3, a4, a5);
    // The result lands in rax (eax), as Xen's hypercall return writes it.
    const regs = this.regs;
    if (rc >= 0 && rc <= 0xffffffff) {
      regs[RAX_LO] = rc;
      regs[RAX_LO + 1] = 0;
    } else {
      regs[RAX_LO] = rc >>> 0;
      regs[RAX_LO + 1] = Math.floor(rc / 0x100000000) >>> 0;
    }
    this.deliverEvents();
    return rc;
  }

  rdtsc(): number {
    return this.host.now(this);
  }

  getRegister(name: GprName): number {
    return this.reg(REG[name]);
  }

  setRegister(name: GprName, value: number): void {
    this.setReg(REG[name], value);
  }

  spend(ns: number): void {
    this.host.spend(this, ns);
  }

  read8(va: number): number {
    const ma = this.translateOrFault(va, false);
    return this.host.memory.u8(Math.floor(ma / XEN_PAGE_SIZE))[ma % XEN_PAGE_SIZE]!;
  }

  read32(va: number): number {
    // The TLB hit on an aligned word, kept small so that it inlines.
    const vpn = Math.floor(va / XEN_PAGE_SIZE);
    const t = this.tlb;
    const i = vpn & TLB_INDEX_MASK;
    const off = va - vpn * XEN_PAGE_SIZE;
    if (t.gen[i] === t.curGen && t.tag[i] === vpn && (off & 3) === 0) return this.host.memory.u32(t.frame[i]!)[off >>> 2]!;
    const ma = this.translateOrFault(va, false);
    const o = ma % XEN_PAGE_SIZE;
    if ((o & 3) === 0) return this.host.memory.u32(Math.floor(ma / XEN_PAGE_SIZE))[o >>> 2]!;
    if (o <= XEN_PAGE_SIZE - 4) return this.host.memory.dv(Math.floor(ma / XEN_PAGE_SIZE)).getUint32(o, true);
    return (this.read8(va) | (this.read8(va + 1) << 8) | (this.read8(va + 2) << 16) | (this.read8(va + 3) << 24)) >>> 0;
  }

  read64(va: number): number {
    return this.read32(va) + this.read32(va + 4) * 0x100000000;
  }

  write8(va: number, value: number): void {
    const ma = this.translateOrFault(va, true);
    this.host.memory.u8(Math.floor(ma / XEN_PAGE_SIZE))[ma % XEN_PAGE_SIZE] = value;
  }

  write32(va: number, value: number): void {
    const vpn = Math.floor(va / XEN_PAGE_SIZE);
    const t = this.tlb;
    const i = vpn & TLB_INDEX_MASK;
    const off = va - vpn * XEN_PAGE_SIZE;
    if (t.gen[i] === t.curGen && t.tag[i] === vpn && t.writable[i] === 1 && (off & 3) === 0) {
      this.host.memory.u32(t.frame[i]!)[off >>> 2] = value;
      return;
    }
    const ma = this.translateOrFault(va, true);
    const o = ma % XEN_PAGE_SIZE;
    if ((o & 3) === 0) {
      this.host.memory.u32(Math.floor(ma / XEN_PAGE_SIZE))[o >>> 2] = value;
      return;
    }
    if (o <= XEN_PAGE_SIZE - 4) {
      this.host.memory.dv(Math.floor(ma / XEN_PAGE_SIZE)).setUint32(o, value >>> 0, true);
      return;
    }
    for (let k = 0; k < 4; k++) this.write8(va + k, (value >>> (8 * k)) & 0xff);
  }

  write64(va: number, value: number): void {
    const lo = value >>> 0;
    const hi = Math.floor((value - lo) / 0x100000000) >>> 0;
    this.write32(va, lo);
    this.write32(va + 4, hi);
  }

  pageWords(va: number): Uint32Array {
    const mfn = Math.floor(this.translateOrFault(va, false) / XEN_PAGE_SIZE);
    // The kernel writes through the view right away (zeroing, a copy): log-dirty sees it now.
    if (this.host.logDirty.active !== 0) this.host.logDirty.markMfn(mfn);
    return this.host.memory.u32(mfn);
  }

  mapPageWords(va: number): Uint32Array {
    const mfn = Math.floor(this.translateOrFault(va, false) / XEN_PAGE_SIZE);
    this.host.logDirty.keepMapped(mfn);
    return this.host.memory.u32(mfn);
  }

  /**
   * The machine address of `va` through the TLB, walking the pagetables on a miss; -1 where the
   * CPU would fault. A write through a read-only entry drops the entry, as a #PF does; one
   * through an entry write-protected for log-dirty marks the page and makes the entry writable,
   * as Xen's shadow fault does.
   */
  translate(va: number, write: boolean): number {
    const vpn = Math.floor(va / XEN_PAGE_SIZE);
    const t = this.tlb;
    const i = vpn & TLB_INDEX_MASK;
    if (t.gen[i] === t.curGen && t.tag[i] === vpn) {
      if (write && t.writable[i] !== TLB_RW) {
        if (t.writable[i] === TLB_RO) {
          t.gen[i] = 0;
          return -1;
        }
        this.host.logDirty.writeFault(t.frame[i]!);
        t.writable[i] = TLB_RW;
      }
      return t.frame[i]! * XEN_PAGE_SIZE + (va - vpn * XEN_PAGE_SIZE);
    }
    const e = walk(this.host.memory, this.width, this.guestTable, va);
    if (e < 0) return -1;
    const writable = e % 2 === 1;
    if (write && !writable) return -1;
    const mfn = (e - (e % 2)) / 2;
    const ld = this.host.logDirty;
    t.fill(vpn, mfn, !writable ? TLB_RO : ld.active === 0 ? TLB_RW : ld.fillState(mfn, write));
    return mfn * XEN_PAGE_SIZE + (va - vpn * XEN_PAGE_SIZE);
  }

  private translateOrFault(va: number, write: boolean): number {
    const ma = this.translate(va, write);
    if (ma < 0) throw new PageFault(va, write);
    return ma;
  }

  // ---- event delivery (create_bounce_frame + the guest's iret) ----

  /** Enters the event callback while upcalls are pending and unmasked, as Xen does on return to guest. */
  deliverEvents(): void {
    if (this.inUpcall || this.eventCallback === 0 || !this.running) return;
    const b = this.domain.sharedInfoBytes;
    const off = this.vcpuInfoOff;
    for (let i = 0; i < MAX_UPCALLS_PER_RETURN; i++) {
      if (b[off] === 0 || b[off + 1] !== 0) return;
      b[off + 1] = 1;
      this.inUpcall = true;
      this.upcalls++;
      // The bounce frame keeps the interrupted rax; the callback's iret restores it.
      const raxLo = this.regs[RAX_LO]!;
      const raxHi = this.regs[RAX_LO + 1]!;
      try {
        this.domain.image.enter(this.eventCallback, this, 0);
      } finally {
        this.inUpcall = false;
        this.regs[RAX_LO] = raxLo;
        this.regs[RAX_LO + 1] = raxHi;
      }
      // The guest's iret restores the mask it had when the event arrived.
      b[off + 1] = 0;
      if (!this.running) return;
    }
  }

  /** Currently on a physical CPU and not blocked. */
  get running(): boolean {
    return this.pcpu >= 0 && !this.blocked && !this.down && this.domain.active && !this.parked;
  }
}
