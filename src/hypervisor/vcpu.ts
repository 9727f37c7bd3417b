// A virtual CPU: Xen's scheduling and event state for it, and the CPU the guest kernel runs on
// (it implements GuestCpu: hypercalls, and loads and stores through its TLB and pagetables).

import { type GuestCpu, PageFault } from "../abi/cpu.ts";
import type { GuestWidth } from "../abi/layout.ts";
import { NR_VIRQS, RUNSTATE, XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import type { MachineMemory } from "./memory.ts";
import { TLB_INDEX_MASK, Tlb, walk } from "./tlb.ts";

/** What a vCPU needs from the hypervisor around it. */
export interface VcpuHost {
  readonly memory: MachineMemory;
  hypercall(v: Vcpu, op: number, a1: number, a2: number, a3: number, a4: number, a5: number): number;
  now(v: Vcpu): number;
  wake(v: Vcpu): void;
  spend(v: Vcpu, ns: number): void;
}

export const NO_DEADLINE = -1;
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
  /** Entered its start address yet. */
  started = false;
  startAddress = 0;
  startArg = 0;
  eventCallback = 0;
  failsafeCallback = 0;
  nmiCallback = 0;
  nmiPending = false;
  singleshotDeadline = NO_DEADLINE;
  periodicPeriod = 0;
  periodicNext = NO_DEADLINE;
  /** The physical CPU running this vCPU, or -1. */
  pcpu = -1;
  /** Context-switch bookkeeping for the scheduler's runqueue. */
  queued = false;
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

  constructor(
    readonly id: number,
    readonly domain: Domain,
    private readonly host: VcpuHost,
  ) {
    this.width = domain.width;
    this.vcpuInfoOff = id * domain.layout.vcpu_info.size;
    this.pendingSelWord = (this.vcpuInfoOff + domain.layout.vcpu_info.evtchn_pending_sel) >> 2;
  }

  get vcpuId(): number {
    return this.id;
  }

  get runnable(): boolean {
    return !this.down && this.initialised && !this.blocked && this.domain.active;
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
    this.deliverEvents();
    return rc;
  }

  rdtsc(): number {
    return this.host.now(this);
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
    return this.host.memory.u32(Math.floor(this.translateOrFault(va, false) / XEN_PAGE_SIZE));
  }

  /**
   * The machine address of `va` through the TLB, walking the pagetables on a miss; -1 where the
   * CPU would fault. A write through a read-only entry drops the entry, as a #PF does.
   */
  translate(va: number, write: boolean): number {
    const vpn = Math.floor(va / XEN_PAGE_SIZE);
    const t = this.tlb;
    const i = vpn & TLB_INDEX_MASK;
    if (t.gen[i] === t.curGen && t.tag[i] === vpn) {
      if (write && t.writable[i] === 0) {
        t.gen[i] = 0;
        return -1;
      }
      return t.frame[i]! * XEN_PAGE_SIZE + (va - vpn * XEN_PAGE_SIZE);
    }
    const e = walk(this.host.memory, this.width, this.guestTable, va);
    if (e < 0) return -1;
    const writable = e % 2 === 1;
    if (write && !writable) return -1;
    const mfn = (e - (e % 2)) / 2;
    t.fill(vpn, mfn, writable);
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
      try {
        this.domain.image.enter(this.eventCallback, this, 0);
      } finally {
        this.inUpcall = false;
      }
      // The guest's iret restores the mask it had when the event arrived.
      b[off + 1] = 0;
      if (!this.running) return;
    }
  }

  /** Currently on a physical CPU and not blocked. */
  get running(): boolean {
    return this.pcpu >= 0 && !this.blocked && !this.down && this.domain.active;
  }
}
