// Processes for the MM workloads: a global runqueue, context switches that keep the cr3 write
// in the lazy-CPU batch until the switch ends (with events masked, as in Linux), lazy TLB on
// idle, demand and copy-on-write faults, fork, exec, munmap and exit. Every page a process
// writes holds a known pattern, and every read is checked against it.

import type { GuestCpu } from "../abi/cpu.ts";
import { PageFault } from "../abi/cpu.ts";
import { HYPERVISOR, SCHEDOP, XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { Rng } from "../util/rng.ts";
import { XEN_IPI } from "./events.ts";
import { registerKernelClass } from "./kstate.ts";
import { type Mm, USER_BASE, type XenMmu } from "./mmu.ts";
import { LAZY } from "./multicalls.ts";
import type { SmpCalls } from "./smp.ts";

/** What a task does once the CPUs it waits for have run their part. */
type Continuation = { kind: "none" } | { kind: "free"; pfns: number[] } | { kind: "exit_mmap"; mmId: number; thenDie: boolean };

export interface Task {
  readonly id: number;
  mm: Mm | null;
  actionsLeft: number;
  /** A shootdown or drop_mm_ref this task waits on (0: none), and what follows it. */
  waitId: number;
  after: Continuation;
  counter: number;
  dead: boolean;
}

interface CpuSched {
  current: Task | null;
  /** A context switch is open: the lazy-CPU batch holds its cr3 write, events are masked. */
  switching: boolean;
  irqWasMasked: boolean;
}

export interface TaskStats {
  forks: number;
  execs: number;
  exits: number;
  faults: number;
  cows: number;
  checks: number;
  switches: number;
  munmaps: number;
}

/** The kernel services tasks use. */
export interface TaskKernel {
  readonly nrCpus: number;
  readonly mmu: XenMmu;
  readonly smp: SmpCalls;
  readonly rng: Rng;
  va(pfn: number): number;
  irqDisable(cpu: GuestCpu): boolean;
  irqRestore(cpu: GuestCpu, wasMasked: boolean): void;
  allocPfn(): number | undefined;
  /** Whether CPU `c` takes tasks (online, not going offline); absent: every CPU does. */
  cpuActive?(c: number): boolean;
}

function pageVa(index: number): number {
  return USER_BASE + index * XEN_PAGE_SIZE;
}

/** The second word of a page the pattern is written at (the first is word 0). */
function probeOffset(index: number): number {
  return 4 * (((index * 7 + 3) % 1023) + 1);
}

export class TaskSched {
  readonly runqueue: Task[] = [];
  readonly percpu: CpuSched[];
  readonly stats: TaskStats = { forks: 0, execs: 0, exits: 0, faults: 0, cows: 0, checks: 0, switches: 0, munmaps: 0 };
  private nextId = 1;
  live = 0;

  constructor(private readonly k: TaskKernel) {
    this.percpu = Array.from({ length: k.nrCpus }, () => ({ current: null, switching: false, irqWasMasked: false }));
  }

  /** A task with a fresh, pinned mm (what init's exec gives it). */
  spawn(cpu: GuestCpu, actions: number): Task {
    const mm = this.k.mmu.pgdAlloc(cpu);
    this.k.mmu.pin(cpu, mm);
    return this.newTask(mm, actions);
  }

  private newTask(mm: Mm, actions: number): Task {
    const t: Task = { id: this.nextId++, mm, actionsLeft: actions, waitId: 0, after: { kind: "none" }, counter: 0, dead: false };
    this.live++;
    return t;
  }

  /** Puts `t` on the runqueue and kicks an idle CPU with the reschedule IPI. */
  enqueue(cpu: GuestCpu, t: Task): void {
    this.runqueue.push(t);
    for (let i = 1; i <= this.k.nrCpus; i++) {
      const c = (cpu.vcpuId + i) % this.k.nrCpus;
      const pc = this.percpu[c]!;
      if (c !== cpu.vcpuId && pc.current === null && !pc.switching && this.k.cpuActive?.(c) !== false) {
        this.k.smp.sendIpi(cpu, c, XEN_IPI.RESCHEDULE);
        return;
      }
    }
  }

  current(cpu: GuestCpu): Task | null {
    return this.percpu[cpu.vcpuId]!.current;
  }

  /**
   * The scheduler's part of a step: finish an open switch, wait out a shootdown, or pick a task.
   * Returns true if it used the step, false if the task may run an action (or there is none).
   */
  schedule(cpu: GuestCpu): boolean {
    const pc = this.percpu[cpu.vcpuId]!;
    if (pc.switching) {
      this.finishSwitch(cpu);
      return true;
    }
    const t = pc.current;
    if (t === null) {
      if (this.runqueue.length === 0 || this.k.cpuActive?.(cpu.vcpuId) === false) return false;
      const i = this.k.rng.below(this.runqueue.length);
      const next = this.runqueue.splice(i, 1)[0]!;
      this.startSwitch(cpu, next);
      return true;
    }
    if (t.waitId !== 0) {
      if (!this.k.smp.done(t.waitId)) {
        cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.yield, 0);
        return true;
      }
      t.waitId = 0;
      this.continueAfterWait(cpu, t);
      return true;
    }
    return false;
  }

  /** context_switch up to switch_to: lazy CPU mode, switch_mm, events masked until the end. */
  startSwitch(cpu: GuestCpu, next: Task | null): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.irqWasMasked = this.k.irqDisable(cpu);
    this.k.mmu.mc.enterLazy(cpu, LAZY.CPU);
    // A kernel thread (idle) keeps the previous mm loaded: lazy TLB.
    if (next?.mm) this.k.mmu.switchMm(cpu, next.mm);
    pc.current = next;
    pc.switching = true;
    this.stats.switches++;
  }

  /** arch_end_context_switch: the batch with the cr3 write is issued, events unmasked. */
  private finishSwitch(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.switching = false;
    this.k.mmu.mc.leaveLazy(cpu);
    this.k.irqRestore(cpu, pc.irqWasMasked);
  }

  /**
   * migrate_tasks for a CPU going offline: an open switch finishes first, a task waiting for
   * other CPUs waits here, then the current task goes back on the runqueue (the CPU switches
   * to idle) and another CPU is kicked for it. True once the CPU runs no task.
   */
  migrateFrom(cpu: GuestCpu): boolean {
    const pc = this.percpu[cpu.vcpuId]!;
    if (pc.switching) return false;
    const t = pc.current;
    if (t === null) return true;
    if (t.waitId !== 0) return false;
    this.startSwitch(cpu, null);
    this.enqueue(cpu, t);
    return false;
  }

  /** The current task gives up the CPU and goes back on the runqueue. */
  yieldTask(cpu: GuestCpu, t: Task): void {
    if (this.runqueue.length === 0) return;
    const next = this.runqueue.splice(this.k.rng.below(this.runqueue.length), 1)[0]!;
    this.runqueue.push(t);
    this.startSwitch(cpu, next);
  }

  private waitThen(cpu: GuestCpu, t: Task, waitId: number, after: Continuation): void {
    t.after = after;
    if (waitId !== 0) t.waitId = waitId;
    else this.continueAfterWait(cpu, t);
  }

  private continueAfterWait(cpu: GuestCpu, t: Task): void {
    const after = t.after;
    t.after = { kind: "none" };
    const mmu = this.k.mmu;
    if (after.kind === "free") {
      for (const pfn of after.pfns) mmu.putUserPage(pfn);
    } else if (after.kind === "exit_mmap") {
      const mm = mmu.mms.get(after.mmId);
      if (mm) {
        mmu.exitMmap(cpu, mm);
        mmu.mmdrop(mm);
      }
      if (after.thenDie) {
        t.dead = true;
        this.live--;
        this.stats.exits++;
        this.startSwitch(cpu, this.runqueue.length > 0 ? this.runqueue.splice(this.k.rng.below(this.runqueue.length), 1)[0]! : null);
      }
    }
  }

  /** mmput: the last user tears the mm down, after drop_mm_ref has cleared every CPU of it. */
  private mmput(cpu: GuestCpu, t: Task, mm: Mm, thenDie: boolean): void {
    // Every mm here has one task (no threads), so this put is always the last.
    mm.users--;
    const waitId = this.k.mmu.dropMmRef(cpu, mm);
    this.waitThen(cpu, t, waitId, { kind: "exit_mmap", mmId: mm.id, thenDie });
  }

  // ---- process operations ----

  /** do_exit: exit_mm leaves the CPU lazily on the mm, then mmput. */
  exit(cpu: GuestCpu, t: Task): void {
    const mm = t.mm!;
    t.mm = null;
    this.mmput(cpu, t, mm, true);
  }

  /** exec: a new pinned mm becomes current at once (activate_mm), the old one is put. */
  exec(cpu: GuestCpu, t: Task): void {
    const mmu = this.k.mmu;
    const old = t.mm!;
    const mm = mmu.pgdAlloc(cpu);
    mmu.pin(cpu, mm);
    t.mm = mm;
    mmu.switchMm(cpu, mm);
    mmu.mc.flush(cpu);
    this.stats.execs++;
    this.mmput(cpu, t, old, false);
  }

  /** fork: dup_mmap copies the parent's mappings copy-on-write, flushes the parent, pins the child. */
  fork(cpu: GuestCpu, parent: Task, actions: number): Task {
    const mmu = this.k.mmu;
    const pm = parent.mm!;
    const cm = mmu.pgdAlloc(cpu);
    mmu.mc.enterLazy(cpu, LAZY.MMU);
    for (const [index, page] of pm.pages) {
      if (page.writable) {
        mmu.setUserPte(cpu, pm, index, page.pfn, false);
        page.writable = false;
      }
      mmu.setUserPte(cpu, cm, index, page.pfn, false);
      mmu.mapcount[page.pfn]!++;
      cm.pages.set(index, { pfn: page.pfn, writable: false, tag: page.tag });
    }
    mmu.mc.leaveLazy(cpu);
    const waitId = mmu.flushTlb(cpu, pm, undefined);
    if (waitId !== 0) parent.waitId = waitId;
    mmu.pin(cpu, cm);
    const child = this.newTask(cm, actions);
    this.stats.forks++;
    this.enqueue(cpu, child);
    return child;
  }

  /** munmap of user pages [first, first + n): entries cleared, shot down, then pages freed. */
  munmap(cpu: GuestCpu, t: Task, first: number, n: number): void {
    const mmu = this.k.mmu;
    const mm = t.mm!;
    const freed: number[] = [];
    let last = -1;
    mmu.mc.enterLazy(cpu, LAZY.MMU);
    for (let index = first; index < first + n; index++) {
      const page = mm.pages.get(index);
      if (!page) continue;
      mmu.setUserPte(cpu, mm, index, -1, false);
      mm.pages.delete(index);
      freed.push(page.pfn);
      last = index;
    }
    mmu.mc.leaveLazy(cpu);
    if (freed.length === 0) return;
    this.stats.munmaps++;
    // One page: invlpg of that page; more: a full flush.
    const waitId = mmu.flushTlb(cpu, mm, freed.length === 1 ? pageVa(last) : undefined);
    this.waitThen(cpu, t, waitId, { kind: "free", pfns: freed });
  }

  // ---- user memory ----

  /** Writes a fresh pattern into user page `index` (faulting it in), and checks it reads back. */
  touch(cpu: GuestCpu, t: Task, index: number): void {
    const tag = (Math.imul(t.id, 0x9e3779b1) ^ ++t.counter) >>> 0 || 1;
    const va = pageVa(index);
    this.access(cpu, t, index, () => {
      cpu.write32(va, tag);
      cpu.write32(va + probeOffset(index), tag);
    });
    const page = t.mm!.pages.get(index);
    // A store that did not fault on an unmapped page went through a stale TLB entry.
    if (!page) throw new Error(`stale TLB entry: task ${t.id} wrote unmapped page 0x${va.toString(16)} on CPU ${cpu.vcpuId} without a fault`);
    page.tag = tag;
    this.check(cpu, t, index);
  }

  /** Reads user page `index` back and compares it with the pattern its owner wrote. */
  check(cpu: GuestCpu, t: Task, index: number): void {
    const mm = t.mm!;
    const page = mm.pages.get(index);
    if (!page) return;
    const va = pageVa(index);
    let a = 0;
    let b = 0;
    this.access(cpu, t, index, () => {
      a = cpu.read32(va);
      b = cpu.read32(va + probeOffset(index));
    });
    this.stats.checks++;
    if (a !== page.tag || b !== page.tag) {
      throw new Error(
        `data check failed: task ${t.id} (mm ${mm.id}) page 0x${va.toString(16)} on CPU ${cpu.vcpuId}: read 0x${a.toString(16)}/0x${b.toString(16)}, wrote 0x${page.tag.toString(16)}`,
      );
    }
  }

  /** Runs `fn`, handling the page faults it takes (at most a few: demand, COW, spurious). */
  private access(cpu: GuestCpu, t: Task, index: number, fn: () => void): void {
    for (let attempt = 0; ; attempt++) {
      try {
        fn();
        return;
      } catch (e) {
        if (!(e instanceof PageFault) || attempt >= 3) throw e;
        this.fault(cpu, t, index, e.write);
      }
    }
  }

  /** do_page_fault for a user page: demand-zero, copy-on-write, or a stale entry (spurious). */
  private fault(cpu: GuestCpu, t: Task, index: number, write: boolean): void {
    const mmu = this.k.mmu;
    const mm = t.mm!;
    this.stats.faults++;
    const page = mm.pages.get(index);
    if (!page) {
      const pfn = mmu.allocZeroed(cpu);
      mmu.mapcount[pfn] = 1;
      mmu.setUserPte(cpu, mm, index, pfn, true);
      mm.pages.set(index, { pfn, writable: true, tag: 0 });
      return;
    }
    if (!write || page.writable) return;
    if (mmu.mapcount[page.pfn]! > 1) {
      this.stats.cows++;
      const copy = mmu.allocZeroed(cpu);
      cpu.pageWords(this.k.va(copy)).set(cpu.pageWords(this.k.va(page.pfn)));
      mmu.setUserPte(cpu, mm, index, copy, true);
      mmu.putUserPage(page.pfn);
      page.pfn = copy;
      mmu.mapcount[copy] = 1;
      // ptep_clear_flush: other CPUs may hold the old frame for this address.
      const waitId = mmu.flushTlb(cpu, mm, pageVa(index));
      if (waitId !== 0) t.waitId = waitId;
    } else {
      mmu.setUserPte(cpu, mm, index, page.pfn, true);
    }
    page.writable = true;
  }
}

registerKernelClass("TaskSched", TaskSched);
