// The guest's side of direct paging (arch/x86/xen/mmu.c, the seeds' "xen: Xen pagetable
// handling" and "SMP guest support"): mm structures with their own pagetables, entries written
// directly while a table is unpinned and through mmu_update once pinned, pinning that first
// makes every table page read-only, the base-pointer switch with its issued-vs-intended cr3,
// lazy TLB, TLB shootdowns, and drop_mm_ref before an unpin.

import type { GuestCpu } from "../abi/cpu.ts";
import { PageFault } from "../abi/cpu.ts";
import type { GuestWidth } from "../abi/layout.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_RW,
  _PAGE_USER,
  COMPAT_XEN_L2_SLOT_FIRST,
  pteHi,
  pteLo,
  pteMfn,
  tableIndex,
  XEN_L4_SLOT_END,
} from "../abi/x86.ts";
import { MMUEXT, UVMF, XEN_PAGE_SIZE } from "../abi/xen.ts";
import { registerKernelClass } from "./kstate.ts";
import { LAZY, type Multicalls } from "./multicalls.ts";
import type { SmpCalls } from "./smp.ts";

export const KERNEL_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
export const KERNEL_PROT_RO = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY;
export const TABLE_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;
const USER_PROT = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;

/** Where user mappings live: from 4 MiB, in one L2's slots 2 and up. */
export const USER_BASE = 0x400000;
export const USER_PAGES_MAX = 2048;

export interface UserPage {
  pfn: number;
  writable: boolean;
  /** The pattern the page must hold (its owner wrote it). */
  tag: number;
}

export interface Mm {
  readonly id: number;
  /** The root table: an L4, or a PAE L3. */
  readonly pgd: number;
  /** x86_64: the user-mode L4 (the page after the pgd in Linux); else -1. */
  readonly userPgd: number;
  /** PAE: this pgd's own copy of the kernel's L2 (SHARED_KERNEL_PMD is 0 on Xen); else -1. */
  readonly kernelPmd: number;
  /** Lower tables of the user range, as pfns. */
  readonly tables: number[];
  /** Upper tables of the user range: x86_64 [L3, L2], PAE [L2]; -1 until allocated. */
  upper: number[];
  /** L1 tables by index of the 2 MiB slot within the user range. */
  readonly l1s: Map<number, number>;
  pinned: boolean;
  /** mm_cpumask: CPUs that may hold TLB entries of this mm. */
  cpumask: number;
  /** mm_users and mm_count. */
  users: number;
  count: number;
  /** User pages by index from USER_BASE. */
  readonly pages: Map<number, UserPage>;
  exited: boolean;
}

/** What the MMU code needs of the rest of the kernel. */
export interface MmuKernel {
  readonly width: GuestWidth;
  readonly nrCpus: number;
  va(pfn: number): number;
  pfnToMfn(cpu: GuestCpu, pfn: number): number;
  allocPfn(): number | undefined;
  freePfn(pfn: number): void;
}

export interface MmuFixes {
  /** Shoot down other CPUs' lazy references before an unpin (the seed's fix). */
  dropMmRef: boolean;
  /** Pick those CPUs by the cr3 each really gave Xen, not only by mm_cpumask (9f79991d4186). */
  staleCr3: boolean;
  /** Flush other CPUs' TLBs with IPIs instead of MMUEXT_TLB_FLUSH_MULTI. */
  flushByIpi: boolean;
}

interface CpuMm {
  /** The mm this CPU's kernel considers loaded (tlbstate.active_mm), possibly lazily. */
  activeMm: Mm;
  /** xen_cr3: the pgd last asked for. xen_current_cr3: the pgd Xen has, once the batch is issued. */
  xenCr3: number;
  xenCurrentCr3: number;
}

export class XenMmu {
  readonly pinnedFlag: Uint8Array;
  /** How many user mappings each page has (page_mapcount), for copy-on-write. */
  readonly mapcount: Int32Array;
  readonly mms = new Map<number, Mm>();
  readonly percpu: CpuMm[];
  readonly initMm: Mm;
  private nextMmId = 1;
  shootdowns = 0;
  unpins = 0;

  constructor(
    private readonly k: MmuKernel,
    readonly mc: Multicalls,
    private readonly smp: SmpCalls,
    readonly fixes: MmuFixes,
    nrPages: number,
    init: { pgd: number; kernelPmd: number; tables: number[] },
  ) {
    this.pinnedFlag = new Uint8Array(nrPages);
    this.mapcount = new Int32Array(nrPages);
    this.initMm = this.newMm(init.pgd, -1, init.kernelPmd);
    this.initMm.tables.push(...init.tables);
    this.initMm.pinned = true;
    this.initMm.users = 1;
    this.initMm.count = 1;
    // xen_mark_init_mm_pinned: the builder pinned the boot tables.
    for (const pfn of [init.pgd, ...init.tables]) this.pinnedFlag[pfn] = 1;
    this.percpu = Array.from({ length: k.nrCpus }, () => ({ activeMm: this.initMm, xenCr3: init.pgd, xenCurrentCr3: init.pgd }));
    this.wire();
  }

  /** The IPI functions and the multicall callback by name (again after a restore: registries are not state). */
  private wire(): void {
    this.smp.register("drop_other_mm_ref", (cpu, mmId) => this.dropOtherMmRef(cpu, mmId));
    this.smp.register("flush_tlb_func", (cpu, va) => this.localFlush(cpu, va < 0 ? undefined : va));
    // set_current_cr3: the batch with the switch is issued, so Xen has the pgd now.
    this.mc.registerCallback("xen_set_current_cr3", (cpu, pgd) => {
      this.percpu[cpu.vcpuId]!.xenCurrentCr3 = pgd;
    });
  }

  kstateRevive(): void {
    this.wire();
  }

  private newMm(pgd: number, userPgd: number, kernelPmd: number): Mm {
    const mm: Mm = {
      id: this.nextMmId++,
      pgd,
      userPgd,
      kernelPmd,
      tables: [],
      upper: [],
      l1s: new Map(),
      pinned: false,
      cpumask: 0,
      users: 1,
      count: 1,
      pages: new Map(),
      exited: false,
    };
    this.mms.set(mm.id, mm);
    return mm;
  }

  // ---- memory helpers ----

  mfn(cpu: GuestCpu, pfn: number): number {
    return this.k.pfnToMfn(cpu, pfn);
  }

  /** A kernel store that survives a stale read-only TLB entry (the spurious-fault path). */
  kwrite32(cpu: GuestCpu, va: number, value: number): void {
    try {
      cpu.write32(va, value);
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
      // The fault dropped the stale entry; a real read-only mapping faults again.
      cpu.write32(va, value);
    }
  }

  allocZeroed(cpu: GuestCpu): number {
    const pfn = this.k.allocPfn();
    if (pfn === undefined) throw new Error("out of memory: no free page for the kernel");
    const va = this.k.va(pfn);
    this.kwrite32(cpu, va, 0);
    cpu.pageWords(va).fill(0);
    return pfn;
  }

  readEntry(cpu: GuestCpu, table: number, slot: number): { lo: number; hi: number } {
    const va = this.k.va(table) + slot * 8;
    return { lo: cpu.read32(va), hi: cpu.read32(va + 4) };
  }

  /**
   * set_pte / set_pmd / set_pud / set_pgd: a plain store while the table is not pinned, an
   * mmu_update (batched in lazy MMU mode) once it is.
   */
  setEntry(cpu: GuestCpu, table: number, slot: number, lo: number, hi: number): void {
    if (this.pinnedFlag[table]) {
      const m = this.mfn(cpu, table);
      this.mc.mmuUpdate(cpu, ((m % 0x100000) * 4096 + slot * 8) >>> 0, Math.floor(m / 0x100000), lo, hi, `pfn ${table} slot ${slot}`);
      this.mc.issue(cpu, LAZY.MMU);
      return;
    }
    const va = this.k.va(table) + slot * 8;
    this.kwrite32(cpu, va, lo);
    this.kwrite32(cpu, va + 4, hi);
  }

  private entryTo(cpu: GuestCpu, pfn: number, flags: number): { lo: number; hi: number } {
    const m = this.mfn(cpu, pfn);
    return { lo: pteLo(m, flags), hi: pteHi(m) };
  }

  /** Queues the remap of a kernel page read-only or writable (MULTI_update_va_mapping). */
  private remapKernelPage(cpu: GuestCpu, pfn: number, writable: boolean, flags: number): void {
    const e = this.entryTo(cpu, pfn, writable ? KERNEL_PROT : KERNEL_PROT_RO);
    this.mc.updateVaMapping(cpu, this.k.va(pfn), e.lo, e.hi, flags, `pfn ${pfn} ${writable ? "RW" : "RO"}`);
  }

  // ---- mm lifecycle ----

  /** pgd_alloc: a root with the kernel's entries (x86_64 also a user pgd; PAE a kernel pmd copy). */
  pgdAlloc(cpu: GuestCpu): Mm {
    const w = this.k.width;
    const init = this.initMm;
    const pgd = this.allocZeroed(cpu);
    if (w === 64) {
      const userPgd = this.allocZeroed(cpu);
      for (let slot = XEN_L4_SLOT_END; slot < 512; slot++) {
        const e = this.readEntry(cpu, init.pgd, slot);
        if (e.lo & _PAGE_PRESENT) this.setEntry(cpu, pgd, slot, e.lo, e.hi);
      }
      return this.newMm(pgd, userPgd, -1);
    }
    const kernelPmd = this.allocZeroed(cpu);
    for (let slot = 0; slot < COMPAT_XEN_L2_SLOT_FIRST; slot++) {
      const e = this.readEntry(cpu, init.kernelPmd, slot);
      if (e.lo & _PAGE_PRESENT) this.setEntry(cpu, kernelPmd, slot, e.lo, e.hi);
    }
    const top = this.entryTo(cpu, kernelPmd, _PAGE_PRESENT);
    this.setEntry(cpu, pgd, 3, top.lo, top.hi);
    return this.newMm(pgd, -1, kernelPmd);
  }

  /** The mm's own table pages, root first. */
  ownTables(mm: Mm): number[] {
    const out = [mm.pgd];
    if (mm.userPgd >= 0) out.push(mm.userPgd);
    if (mm.kernelPmd >= 0) out.push(mm.kernelPmd);
    return out.concat(mm.tables);
  }

  /** A new table page for `mm`: read-only first if the mm is pinned (xen_alloc_ptpage). */
  private allocTable(cpu: GuestCpu, mm: Mm): number {
    const pfn = this.allocZeroed(cpu);
    mm.tables.push(pfn);
    if (mm.pinned) {
      this.pinnedFlag[pfn] = 1;
      this.remapKernelPage(cpu, pfn, false, UVMF.INVLPG);
    }
    return pfn;
  }

  /** The L1 that maps user page `index`, allocating the tables above it as needed. */
  private l1For(cpu: GuestCpu, mm: Mm, index: number): number {
    const va = USER_BASE + index * XEN_PAGE_SIZE;
    const slot2 = Math.floor(index / 512);
    const have = mm.l1s.get(slot2);
    if (have !== undefined) return have;
    const w = this.k.width;
    if (mm.upper.length === 0) {
      if (w === 64) {
        const l3 = this.allocTable(cpu, mm);
        const l2 = this.allocTable(cpu, mm);
        const e2 = this.entryTo(cpu, l2, TABLE_PROT);
        this.setEntry(cpu, l3, tableIndex(64, va, 3), e2.lo, e2.hi);
        const e3 = this.entryTo(cpu, l3, TABLE_PROT);
        // xen_set_pgd: a user slot goes into the kernel pgd and the user pgd alike.
        this.setEntry(cpu, mm.pgd, tableIndex(64, va, 4), e3.lo, e3.hi);
        this.setEntry(cpu, mm.userPgd, tableIndex(64, va, 4), e3.lo, e3.hi);
        mm.upper = [l3, l2];
      } else {
        const l2 = this.allocTable(cpu, mm);
        const e = this.entryTo(cpu, l2, _PAGE_PRESENT);
        this.setEntry(cpu, mm.pgd, tableIndex(32, va, 3), e.lo, e.hi);
        mm.upper = [l2];
      }
    }
    const l1 = this.allocTable(cpu, mm);
    const e = this.entryTo(cpu, l1, TABLE_PROT);
    this.setEntry(cpu, mm.upper[mm.upper.length - 1]!, tableIndex(w, va, 2), e.lo, e.hi);
    mm.l1s.set(slot2, l1);
    return l1;
  }

  /** set_pte_at for user page `index`: maps `pfn` (or clears the entry with pfn -1). */
  setUserPte(cpu: GuestCpu, mm: Mm, index: number, pfn: number, writable: boolean): void {
    const l1 = this.l1For(cpu, mm, index);
    const slot = tableIndex(this.k.width, USER_BASE + index * XEN_PAGE_SIZE, 1);
    if (pfn < 0) this.setEntry(cpu, l1, slot, 0, 0);
    else {
      const e = this.entryTo(cpu, pfn, writable ? USER_PROT | _PAGE_RW : USER_PROT);
      this.setEntry(cpu, l1, slot, e.lo, e.hi);
    }
  }

  /** The frame user page `index` maps in the tables (what the CPU would walk to), or -1. */
  userPteMfn(cpu: GuestCpu, mm: Mm, index: number): { mfn: number; writable: boolean } | undefined {
    const l1 = mm.l1s.get(Math.floor(index / 512));
    if (l1 === undefined) return undefined;
    const e = this.readEntry(cpu, l1, tableIndex(this.k.width, USER_BASE + index * XEN_PAGE_SIZE, 1));
    if ((e.lo & _PAGE_PRESENT) === 0) return undefined;
    return { mfn: pteMfn(e.lo, e.hi), writable: (e.lo & _PAGE_RW) !== 0 };
  }

  // ---- pinning ----

  /** xen_pgd_pin: every table page read-only (the root's remap flushes), then pin the root(s). */
  pin(cpu: GuestCpu, mm: Mm): void {
    const own = this.ownTables(mm);
    for (let i = own.length - 1; i >= 0; i--) {
      const pfn = own[i]!;
      this.pinnedFlag[pfn] = 1;
      this.remapKernelPage(cpu, pfn, false, pfn === mm.pgd ? UVMF.TLB_FLUSH : UVMF.NONE);
    }
    const w = this.k.width;
    this.mc.mmuext(cpu, w === 64 ? MMUEXT.PIN_L4_TABLE : MMUEXT.PIN_L3_TABLE, this.mfn(cpu, mm.pgd), 0, `pgd pfn ${mm.pgd}`);
    if (mm.userPgd >= 0) this.mc.mmuext(cpu, MMUEXT.PIN_L4_TABLE, this.mfn(cpu, mm.userPgd), 0, `user pgd pfn ${mm.userPgd}`);
    mm.pinned = true;
    this.mc.issue(cpu, LAZY.NONE);
  }

  /** xen_pgd_unpin: unpin the root(s), then every table page writable again. */
  unpin(cpu: GuestCpu, mm: Mm): void {
    this.unpins++;
    this.mc.mmuext(cpu, MMUEXT.UNPIN_TABLE, this.mfn(cpu, mm.pgd), 0, `pgd pfn ${mm.pgd}`);
    if (mm.userPgd >= 0) this.mc.mmuext(cpu, MMUEXT.UNPIN_TABLE, this.mfn(cpu, mm.userPgd), 0, `user pgd pfn ${mm.userPgd}`);
    for (const pfn of this.ownTables(mm)) {
      this.pinnedFlag[pfn] = 0;
      this.remapKernelPage(cpu, pfn, true, UVMF.NONE);
    }
    mm.pinned = false;
    this.mc.issue(cpu, LAZY.NONE);
  }

  // ---- base pointers and lazy TLB ----

  /** xen_write_cr3: queued with the callback that records what Xen really has once issued. */
  private writeCr3(cpu: GuestCpu, mm: Mm): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.xenCr3 = mm.pgd;
    this.mc.mmuext(cpu, MMUEXT.NEW_BASEPTR, this.mfn(cpu, mm.pgd), 0, `pgd pfn ${mm.pgd}`);
    if (this.k.width === 64) {
      this.mc.mmuext(cpu, MMUEXT.NEW_USER_BASEPTR, mm.userPgd >= 0 ? this.mfn(cpu, mm.userPgd) : 0, 0, `user pgd pfn ${mm.userPgd}`);
    }
    this.mc.callback(cpu, "xen_set_current_cr3", mm.pgd);
    this.mc.issue(cpu, LAZY.CPU);
  }

  /** switch_mm: in a context switch the cr3 write waits in the lazy-CPU batch. */
  switchMm(cpu: GuestCpu, next: Mm): void {
    const pc = this.percpu[cpu.vcpuId]!;
    const bit = 1 << cpu.vcpuId;
    const prev = pc.activeMm;
    if (prev !== next) {
      next.cpumask |= bit;
      this.writeCr3(cpu, next);
      prev.cpumask &= ~bit;
      next.count++;
      pc.activeMm = next;
      this.mmdrop(prev);
    } else if ((next.cpumask & bit) === 0) {
      // Back from lazy TLB after leave_mm: the pgd must be loaded again.
      next.cpumask |= bit;
      this.writeCr3(cpu, next);
    }
  }

  /** leave_mm: a lazy CPU lets go of the mm it kept loaded and runs on swapper_pg_dir. */
  leaveMm(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.activeMm.cpumask &= ~(1 << cpu.vcpuId);
    if (pc.xenCr3 !== this.initMm.pgd) this.writeCr3(cpu, this.initMm);
  }

  /** idle_task_exit: a CPU going offline runs on init_mm and lets go of the mm it kept lazily. */
  idleTaskExit(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId]!;
    this.leaveMm(cpu);
    const prev = pc.activeMm;
    if (prev !== this.initMm) {
      this.initMm.count++;
      pc.activeMm = this.initMm;
      this.mmdrop(prev);
    }
    this.mc.flush(cpu);
  }

  /** mmdrop: the last reference frees the root table pages. */
  mmdrop(mm: Mm): void {
    if (--mm.count > 0 || mm === this.initMm) return;
    for (const pfn of [mm.pgd, mm.userPgd, mm.kernelPmd]) if (pfn >= 0) this.k.freePfn(pfn);
    this.mms.delete(mm.id);
  }

  /**
   * drop_mm_ref, before the unpin in xen_exit_mmap: this CPU switches away if it has the mm,
   * and every other CPU that may still run on the pgd is asked to (with wait). Returns the wait
   * id, or 0.
   */
  dropMmRef(cpu: GuestCpu, mm: Mm): number {
    const pc = this.percpu[cpu.vcpuId]!;
    if (pc.activeMm === mm) this.leaveMm(cpu);
    if (pc.xenCurrentCr3 === mm.pgd && pc.xenCr3 === mm.pgd) this.writeCr3(cpu, this.initMm);
    this.mc.flush(cpu);
    if (!this.fixes.dropMmRef) return 0;
    let mask = mm.cpumask & ~(1 << cpu.vcpuId);
    if (this.fixes.staleCr3) {
      // A CPU may have switched away in a batch it has not issued: Xen still has the pgd.
      for (let c = 0; c < this.k.nrCpus; c++) if (c !== cpu.vcpuId && this.percpu[c]!.xenCurrentCr3 === mm.pgd) mask |= 1 << c;
    }
    const targets: number[] = [];
    for (let c = 0; c < this.k.nrCpus; c++) if (mask & (1 << c)) targets.push(c);
    if (targets.length > 0) this.shootdowns++;
    return this.smp.callFunctionMask(cpu, targets, "drop_other_mm_ref", mm.id, true);
  }

  private dropOtherMmRef(cpu: GuestCpu, mmId: number): void {
    const mm = this.mms.get(mmId);
    if (!mm) return;
    const pc = this.percpu[cpu.vcpuId]!;
    if (pc.activeMm === mm) this.leaveMm(cpu);
    // A stale cr3 still in an unissued batch: issue it now.
    if (pc.xenCurrentCr3 === mm.pgd) {
      if (pc.xenCr3 === mm.pgd) this.writeCr3(cpu, this.initMm);
      this.mc.flush(cpu);
    }
  }

  /** xen_exit_mmap's tail, after drop_mm_ref: unpin, then free the user pages and lower tables. */
  exitMmap(cpu: GuestCpu, mm: Mm): void {
    if (mm.pinned) this.unpin(cpu, mm);
    for (const page of mm.pages.values()) this.putUserPage(page.pfn);
    mm.pages.clear();
    for (const pfn of mm.tables) this.k.freePfn(pfn);
    mm.tables.length = 0;
    mm.l1s.clear();
    mm.upper = [];
    mm.exited = true;
  }

  putUserPage(pfn: number): void {
    if (--this.mapcount[pfn]! === 0) this.k.freePfn(pfn);
  }

  // ---- TLB shootdown ----

  localFlush(cpu: GuestCpu, va: number | undefined): void {
    if (va === undefined) this.mc.mmuext(cpu, MMUEXT.TLB_FLUSH_LOCAL, 0, 0, "local");
    else this.mc.mmuext(cpu, MMUEXT.INVLPG_LOCAL, va, 0, "local");
    this.mc.issue(cpu, LAZY.NONE);
  }

  /**
   * flush_tlb_mm / flush_tlb_page: this CPU if it has the mm loaded, and every other CPU in
   * mm_cpumask, through MMUEXT_*_MULTI or through IPIs. Returns a wait id for the IPI path, or 0.
   */
  flushTlb(cpu: GuestCpu, mm: Mm, va: number | undefined): number {
    const self = cpu.vcpuId;
    if (this.percpu[self]!.activeMm === mm) this.localFlush(cpu, va);
    const others = mm.cpumask & ~(1 << self);
    if (others === 0) return 0;
    this.shootdowns++;
    if (this.fixes.flushByIpi) {
      const targets: number[] = [];
      for (let c = 0; c < this.k.nrCpus; c++) if (others & (1 << c)) targets.push(c);
      return this.smp.callFunctionMask(cpu, targets, "flush_tlb_func", va ?? -1, true);
    }
    if (va === undefined) this.mc.mmuext(cpu, MMUEXT.TLB_FLUSH_MULTI, 0, 0, "others", others);
    else this.mc.mmuext(cpu, MMUEXT.INVLPG_MULTI, va, 0, "others", others);
    this.mc.issue(cpu, LAZY.NONE);
    return 0;
  }
}

registerKernelClass("XenMmu", XenMmu);
