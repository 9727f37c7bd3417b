// The PV guest kernel: what Linux's Xen port does at boot (startup_xen, shared_info mapping,
// callbacks, the event-channel ABI choice, per-CPU timer and IPI bindings, secondary vCPU
// bring-up), the upcall, the timer tick and the idle loop. It sees only GuestCpu.

import type { GuestCpu, GuestImage } from "../abi/cpu.ts";
import { type GuestWidth, type Layout, layoutFor } from "../abi/layout.ts";
import { CALLBACKTYPE, HYPERVISOR, SHUTDOWN, SIF_INITDOMAIN, UVMF, VCPUOP, VGCF_in_kernel, VIRQ, XEN_PAGE_SIZE } from "../abi/xen.ts";
import { pteHi, pteLo } from "../abi/x86.ts";
import type { EvtchnOps } from "./evtchn_backend.ts";
import { Events2L } from "./events_2l.ts";
import { EventsFifo, type GuestPage, type PageSource } from "./events_fifo.ts";
import { EvtchnDevice } from "./evtchn_dev.ts";
import { XEN_IPI, XenEvents } from "./events.ts";
import { disabledFixes, type GuestFix } from "./fixes.ts";
import { Hypercalls, type Scratch } from "./hypercalls.ts";
import { ShutdownWatcher } from "./manage.ts";
import { bootPagetables, FIX_SHARED_INFO, pteArgs } from "./mm_boot.ts";
import { KERNEL_PROT, XenMmu } from "./mmu.ts";
import { decodeKernelState, encodeKernelState, readStateFromPages, registerKernelClass, writeStateToPages, XENLINUX_TRANSIENT } from "./kstate.ts";
import { afterSuspendHypercall, newSuspendState, requestSuspend, type SuspendState, suspendStep } from "./suspend.ts";
import { Multicalls } from "./multicalls.ts";
import { pvclockRead } from "./pvclock.ts";
import { SmpCalls } from "./smp.ts";
import { Rng } from "../util/rng.ts";
import { XenBus } from "./xenbus.ts";
import { HvcConsole } from "./hvc_console.ts";
import { CpuHotplug } from "./cpu_hotplug.ts";

/** Kernel text addresses, relative to PAGE_OFFSET (the image is loaded at pfn 0). */
const SYM = { startup_xen: 0x1000, xen_hypervisor_callback: 0x1100, xen_failsafe_callback: 0x1200, cpu_bringup_and_idle: 0x1300, xen_suspend_return: 0x1400 };
export const HZ = 250;
export const TICK_NS = 1_000_000_000 / HZ;

/** A workload the kernel runs: plain-data state, steps on CPUs, handlers by name. */
export interface Workload {
  readonly name: string;
  /** Called on CPU 0 once SMP is up. */
  start(k: XenLinux, cpu: GuestCpu): void;
  /** Called on CPU 0 after a restore into a new domain: connect again what went with the old one. */
  resume?(k: XenLinux, cpu: GuestCpu): void;
  /** One unit of work on `cpu`; false if there was none. */
  step(k: XenLinux, cpu: GuestCpu): boolean;
  /**
   * Whether nothing of the workload is half done on `cpu`, so that it may park for a suspend
   * (workloads start nothing new while the kernel is frozen). Absent: always.
   */
  quiescent?(k: XenLinux, cpu: GuestCpu): boolean;
  /**
   * `cpu` is going offline: move what the workload has there elsewhere. True once nothing of it
   * is left on the CPU; false while it still needs steps there (an open switch, a wait).
   */
  cpuDying?(k: XenLinux, cpu: GuestCpu): boolean;
}

export type WorkloadFactory = (k: XenLinux) => Workload[];

export interface PerCpu {
  online: boolean;
  /** cpu_down has been asked for: the CPU takes itself down at its next safe point. */
  dying?: boolean;
  /** Down through VCPUOP_down (after it was up once): VCPUOP_up resumes it where it stopped. */
  dead?: boolean;
  scratchVa: number;
  ticks: number;
  nextTick: number;
}

export class XenLinux implements GuestImage, Scratch, PageSource {
  readonly entry: number;
  /** The kernel text's entry points (GuestImage.symbols): what vCPU contexts name in rip and the callbacks. */
  readonly symbols: Readonly<Record<keyof typeof SYM, number>>;
  readonly layout: Layout;
  readonly base: number;
  readonly hc: Hypercalls;
  /** Parsed kernel command line. */
  readonly options = new Map<string, string>();
  percpu: PerCpu[] = [];
  events!: XenEvents;
  smp!: SmpCalls;
  mc!: Multicalls;
  mmu!: XenMmu;
  /** The kernel's own randomness (workload choices), seeded from the command line. */
  rng = new Rng(1);
  /** mfn -> pfn, as the read-only M2P table Xen maps for PV guests gives it. */
  readonly m2p = new Map<number, number>();
  workloads: Workload[] = [];
  /** dom0 only: /dev/xen/evtchn for its user space (xenstored, the toolstack). */
  evtchnDev: EvtchnDevice | undefined;
  /** A domU's xenstore connection, and the control/shutdown watch on it. */
  xenbus: XenBus | undefined;
  shutdownWatcher: ShutdownWatcher | undefined;
  /** A domU's cpu/N/availability watch (vCPU hotplug). */
  cpuHotplug: CpuHotplug | undefined;
  /** A domU's PV console (hvc0). */
  console: HvcConsole | undefined;
  /** printk ring (dmesg). */
  readonly log: string[] = [];
  nrPages = 0;
  /** Pages in the direct map, which the page allocator hands out (all of them until it is built). */
  lowmemPages = Number.POSITIVE_INFINITY;
  booted = false;
  /** Tasks frozen for a suspend: workloads start nothing new. */
  frozen = false;
  suspend: SuspendState = newSuspendState(0);
  /** Where start_info is mapped (the builder's page, in the direct map). */
  startInfoVa = 0;
  /** xen_build_mfn_list_list's pages: the top, then the middle ones (pfns). */
  mfnListListPfns: number[] = [];
  private si!: DataView;
  private siBytes!: Uint8Array;
  private mfnListVa = 0;
  private bootTables: { pgd: number; kernelPmd: number; tables: number[] } = { pgd: 0, kernelPmd: -1, tables: [] };
  private nextFreePfn = 0;
  private readonly freePfns: number[] = [];

  constructor(
    readonly width: GuestWidth,
    private readonly makeWorkloads: WorkloadFactory = () => [],
  ) {
    this.layout = layoutFor(width);
    this.base = this.layout.PAGE_OFFSET;
    this.entry = this.base + SYM.startup_xen;
    const base = this.base;
    this.symbols = Object.freeze({
      startup_xen: base + SYM.startup_xen,
      xen_hypervisor_callback: base + SYM.xen_hypervisor_callback,
      xen_failsafe_callback: base + SYM.xen_failsafe_callback,
      cpu_bringup_and_idle: base + SYM.cpu_bringup_and_idle,
      xen_suspend_return: base + SYM.xen_suspend_return,
    });
    this.hc = new Hypercalls(this);
  }

  get nrCpus(): number {
    return this.percpu.length;
  }

  option(key: string, fallback: string): string {
    return this.options.get(key) ?? fallback;
  }

  printk(cpu: GuestCpu, text: string): void {
    const line = `[${(this.now(cpu) / 1e9).toFixed(6)}] ${text}`;
    this.log.push(line);
    if (this.log.length > 4096) this.log.splice(0, 1024);
    this.console?.write(cpu, `${line}\n`);
  }

  /** panic(): on Xen the panic notifier shuts the domain down as crashed (xen_panic_event). */
  panic(cpu: GuestCpu, why: string): void {
    this.printk(cpu, `Kernel panic - not syncing: ${why}`);
    this.hc.shutdown(cpu, SHUTDOWN.crash);
  }

  // ---- GuestImage ----

  enter(address: number, cpu: GuestCpu, arg: number): void {
    switch (address - this.base) {
      case SYM.startup_xen:
        this.startupXen(cpu, arg);
        return;
      case SYM.xen_hypervisor_callback:
        // A restored vCPU can take an event before CPU 0 has rebuilt the kernel: nothing handles it yet.
        if (this.events === undefined) return;
        this.events.doUpcall(cpu, this.siBytes, cpu.vcpuId * this.layout.vcpu_info.size);
        return;
      case SYM.xen_failsafe_callback:
        throw new Error("failsafe callback: Xen could not deliver an event");
      case SYM.cpu_bringup_and_idle:
        // A restored vCPU that runs before CPU 0 has rebuilt the kernel spins in stop_machine.
        if (this.percpu.length === 0 || this.suspend.parked[cpu.vcpuId]) return;
        this.cpuBringup(cpu);
        return;
      case SYM.xen_suspend_return:
        this.restoreFromPages(cpu);
        afterSuspendHypercall(this, cpu, cpu.getRegister("rax"));
        return;
      default:
        throw new Error(`jump to unknown kernel address ${address}`);
    }
  }

  resume(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId];
    // VCPUOP_up after VCPUOP_down: xen_pv_play_dead goes on with cpu_bringup
    if (pc?.dead) this.cpuBack(cpu);
    if (!pc?.online) return;
    if (suspendStep(this, cpu)) return;
    if (pc.dying && this.takeCpuDown(cpu)) return;
    this.events.runEoiWorker(cpu);
    if (this.xenbus?.step(cpu)) return;
    const ws = this.workloads;
    for (let i = 0; i < ws.length; i++) if (ws[i]!.step(this, cpu)) return;
    // Nothing to do: xen_safe_halt.
    this.hc.block(cpu);
  }

  // ---- memory ----

  va(pfn: number): number {
    return this.base + pfn * XEN_PAGE_SIZE;
  }

  pfnToMfn(cpu: GuestCpu, pfn: number): number {
    const ul = this.layout.ulong;
    return ul === 8 ? cpu.read64(this.mfnListVa + pfn * 8) : cpu.read32(this.mfnListVa + pfn * 4);
  }

  allocPfn(): number | undefined {
    if (this.freePfns.length > 0) return this.freePfns.pop();
    if (this.nextFreePfn >= Math.min(this.nrPages, this.lowmemPages)) return undefined;
    return this.nextFreePfn++;
  }

  freePfn(pfn: number): void {
    this.freePfns.push(pfn);
  }

  allocZeroedPage(cpu: GuestCpu): GuestPage | undefined {
    const pfn = this.allocPfn();
    if (pfn === undefined) return undefined;
    // The backend keeps the view (event array pages, control blocks).
    const words = cpu.mapPageWords(this.va(pfn));
    words.fill(0);
    return { words, gfn: this.pfnToMfn(cpu, pfn), va: this.va(pfn) };
  }

  freePage(gfn: number): void {
    const pfn = this.m2p.get(gfn);
    if (pfn !== undefined) this.freePfn(pfn);
  }

  scratchVa(cpu: GuestCpu): number {
    return this.percpu[cpu.vcpuId]!.scratchVa;
  }

  // ---- time ----

  now(cpu: GuestCpu): number {
    return pvclockRead(cpu, this.si, this.layout);
  }

  // ---- interrupts on/off (the PV "IF" in vcpu_info) ----

  irqDisable(cpu: GuestCpu): boolean {
    // Before shared_info is mapped the vCPU still has the masked state Xen started it with.
    if (this.siBytes === undefined) return true;
    const off = cpu.vcpuId * this.layout.vcpu_info.size + 1;
    const was = this.siBytes[off] !== 0;
    this.siBytes[off] = 1;
    return was;
  }

  /** local_irq_restore: re-enabling checks for events that arrived meanwhile. */
  irqRestore(cpu: GuestCpu, wasMasked: boolean): void {
    if (wasMasked) return;
    const off = cpu.vcpuId * this.layout.vcpu_info.size;
    this.siBytes[off + 1] = 0;
    if (this.siBytes[off] !== 0) this.hc.forceEvtchnCallback(cpu);
  }

  // ---- boot ----

  private startupXen(cpu: GuestCpu, startInfoVa: number): void {
    const S = this.layout.start_info;
    this.startInfoVa = startInfoVa;
    const ul = (off: number) => (this.layout.ulong === 8 ? cpu.read64(startInfoVa + off) : cpu.read32(startInfoVa + off));
    this.nrPages = ul(S.nr_pages);
    const sharedInfoMa = ul(S.shared_info);
    this.mfnListVa = this.readPointer(cpu, startInfoVa + S.mfn_list);
    const ptBase = this.readPointer(cpu, startInfoVa + S.pt_base);
    const rootPfn = (ptBase - this.base) / XEN_PAGE_SIZE;
    this.nextFreePfn = rootPfn + ul(S.nr_pt_frames);
    this.parseCmdline(cpu, startInfoVa + S.cmd_line);
    this.rng = new Rng(Number(this.option("xensim.seed", "1")) >>> 0 || 1);
    for (let pfn = 0; pfn < this.nrPages; pfn++) this.m2p.set(this.pfnToMfn(cpu, pfn), pfn);

    // Possible CPUs: every vCPU Xen admits to (VCPUOP_is_up fails with -ENOENT past the last).
    let nr = 1;
    while (nr < 32 && cpu.hypercall(HYPERVISOR.vcpu_op, VCPUOP.is_up, nr, 0) >= 0) nr++;
    // Per-CPU pages from the bootstrap area: two of scratch (vcpu_guest_context is larger
    // than one on x86_64) and two for the multicall batch.
    const buffers: { entriesVa: number; argsVa: number }[] = [];
    this.percpu = [];
    for (let c = 0; c < nr; c++) {
      const first = this.allocPfn()!;
      this.allocPfn();
      const mcPfn = this.allocPfn()!;
      const argsPfn = this.allocPfn()!;
      this.percpu.push({ online: c === 0, scratchVa: this.va(first), ticks: 0, nextTick: 0 });
      buffers.push({ entriesVa: this.va(mcPfn), argsVa: this.va(argsPfn) });
    }
    this.mc = new Multicalls(this.layout, buffers, this);
    this.suspend = newSuspendState(nr);
    const init = bootPagetables(this, cpu, rootPfn, sharedInfoMa);
    this.lowmemPages = init.lowmemPages;
    const words = cpu.mapPageWords(FIX_SHARED_INFO[this.width]);
    this.si = new DataView(words.buffer);
    this.siBytes = new Uint8Array(words.buffer);
    if (init.lowmemPages < this.nrPages) {
      const mib = (pages: number) => Math.floor(pages / 256);
      this.printk(cpu, `${mib(this.nrPages - init.lowmemPages)}MB HIGHMEM available.`);
      this.printk(cpu, `${mib(init.lowmemPages)}MB LOWMEM available.`);
    }

    this.hc.registerCallback(cpu, CALLBACKTYPE.event, this.base + SYM.xen_hypervisor_callback);
    this.hc.registerCallback(cpu, CALLBACKTYPE.failsafe, this.base + SYM.xen_failsafe_callback);
    this.bootTables = init;
    this.buildMfnListList(cpu);
    this.initEvents(cpu);
    this.printk(cpu, `Xen: using ${this.events.backend.name} event channel ABI, ${nr} vCPUs`);

    for (let c = 0; c < nr; c++) this.bindCpuIrqs(cpu, c);
    this.programTimer(cpu);
    for (let c = 1; c < nr; c++) this.cpuUp(cpu, c);
    const flags = cpu.read32(startInfoVa + S.flags);
    if (flags & SIF_INITDOMAIN) this.evtchnDev = new EvtchnDevice(this.events, this.hc);
    else {
      this.consoleInit(cpu, ul(S.console_mfn), cpu.read32(startInfoVa + S.console_evtchn));
      // Fault injection: a kernel that dies after its console, before xenbus.
      if (this.option("xensim.panic_on_boot", "0") === "1") {
        this.panic(cpu, "xensim.panic_on_boot=1");
        return;
      }
      this.xenbusInit(cpu, ul(S.store_mfn), cpu.read32(startInfoVa + S.store_evtchn));
    }
    this.workloads = this.makeWorkloads(this);
    for (const w of this.workloads) w.start(this, cpu);
    this.booted = true;
    this.irqRestore(cpu, false);
  }

  /** xen_hvc_init: hvc0 on the console page; what printk said before it is replayed. */
  private consoleInit(cpu: GuestCpu, mfn: number, port: number): void {
    const pfn = this.m2p.get(mfn);
    if (port === 0 || pfn === undefined) return;
    const hvc = new HvcConsole(this.events, cpu.mapPageWords(this.va(pfn)), port, this.va(pfn));
    if (hvc.init(cpu) < 0) return;
    this.console = hvc;
    hvc.write(cpu, this.log.map((l) => `${l}\n`).join(""));
  }

  /** xenbus_init and the xenstore-ready notifier's setup_shutdown_watcher, for a domU. */
  private xenbusInit(cpu: GuestCpu, storeMfn: number, port: number): void {
    const pfn = this.m2p.get(storeMfn);
    if (port === 0 || pfn === undefined) {
      this.printk(cpu, "xenbus: no xenstore ring in start_info");
      return;
    }
    const xb = new XenBus(this.events, cpu.mapPageWords(this.va(pfn)), port, (c, t) => this.printk(c, t), this.va(pfn));
    const rc = xb.init(cpu);
    if (rc < 0) {
      this.printk(cpu, `xenbus: cannot bind the store channel: ${rc}`);
      return;
    }
    this.xenbus = xb;
    this.shutdownWatcher = new ShutdownWatcher(xb, this);
    this.shutdownWatcher.setup(cpu);
    this.cpuHotplug = new CpuHotplug(xb, this, (c, t) => this.printk(c, t));
    this.cpuHotplug.setup(cpu);
  }

  /** A kernel pointer: on x86_64 a sign-extended canonical address, kept exact as a number. */
  readPointer(cpu: GuestCpu, va: number): number {
    if (this.layout.ulong === 4) return cpu.read32(va);
    return cpu.read32(va) + (cpu.read32(va + 4) | 0) * 0x100000000;
  }

  private parseCmdline(cpu: GuestCpu, va: number): void {
    let text = "";
    for (let i = 0; i < 1024; i++) {
      const ch = cpu.read8(va + i);
      if (ch === 0) break;
      text += String.fromCharCode(ch);
    }
    for (const tok of text.split(/\s+/)) {
      if (!tok) continue;
      const eq = tok.indexOf("=");
      if (eq < 0) this.options.set(tok, "1");
      else this.options.set(tok.slice(0, eq), tok.slice(eq + 1));
    }
  }

  private initEvents(cpu: GuestCpu): void {
    let backend: EvtchnOps | undefined;
    const unmaskFix = !disabledFixes(this.options.get("xensim.disable_fix")).has("unmask-pending");
    if (this.option("xen.fifo_events", "1") !== "0") {
      const fifo = new EventsFifo(this.nrCpus, this.hc, this, unmaskFix);
      // xen_evtchn_fifo_init: the boot CPU's control block; falls back to 2-level if Xen
      // refuses (as Linux does on -ENOSYS).
      if (fifo.initCpu(cpu, cpu.vcpuId) === 0) backend = fifo;
    }
    backend ??= new Events2L(new Uint32Array(this.si.buffer), this.layout, this.nrCpus, this.hc, () => this.events.timerPorts, unmaskFix);
    // xen_init_IRQ: every port the ABI has now starts masked.
    for (let port = 0; port < backend.nrChannels(); port++) backend.mask(port);
    this.events = new XenEvents(backend, this.hc, { nrCpus: this.nrCpus, jiffyNs: TICK_NS, now: (c) => this.now(c) });
    this.smp = new SmpCalls(this.nrCpus, this.events);
    const off = disabledFixes(this.options.get("xensim.disable_fix"));
    this.mmu = new XenMmu(
      this,
      this.mc,
      this.smp,
      { dropMmRef: !off.has("drop-mm-ref"), staleCr3: !off.has("stale-cr3"), flushByIpi: this.option("xensim.tlb_flush", "hypercall") === "ipi" },
      this.nrPages,
      this.bootTables,
    );
    this.registerHandlers();
  }

  /** The kernel's own irq handlers by name (again after a restore: the registry is not state). */
  private registerHandlers(): void {
    const ev = this.events;
    ev.registerHandler("timer_interrupt", (c) => this.timerInterrupt(c));
    ev.registerHandler("call_function_single", (c) => this.smp.runQueue(c));
    ev.registerHandler("call_function", (c) => this.smp.runQueue(c));
    ev.registerHandler("reschedule", () => {});
    ev.registerHandler("irq_work", () => {});
    ev.registerHandler("spin_unlock", () => {});
  }

  /** xen_smp_intr_init + the timer VIRQ: every per-CPU binding, done from the boot CPU. */
  private bindCpuIrqs(cpu: GuestCpu, c: number): void {
    const ev = this.events;
    const need = (irq: number, what: string) => {
      if (irq < 0) throw new Error(`cannot bind ${what} for CPU ${c}: ${irq}`);
    };
    need(ev.backend.initCpu(cpu, c), "per-CPU event channel state");
    need(ev.bindVirqToIrqhandler(cpu, VIRQ.TIMER, c, "timer_interrupt", c), "timer");
    need(ev.bindIpiToIrqhandler(cpu, XEN_IPI.RESCHEDULE, c, "reschedule", c), "resched IPI");
    need(ev.bindIpiToIrqhandler(cpu, XEN_IPI.CALL_FUNCTION, c, "call_function", c), "callfunc IPI");
    need(ev.bindIpiToIrqhandler(cpu, XEN_IPI.CALL_FUNCTION_SINGLE, c, "call_function_single", c), "callfuncsingle IPI");
    need(ev.bindIpiToIrqhandler(cpu, XEN_IPI.SPIN_UNLOCK, c, "spin_unlock", c), "spinlock IPI");
    need(ev.bindIpiToIrqhandler(cpu, XEN_IPI.IRQ_WORK, c, "irq_work", c), "irqwork IPI");
  }

  /** cpu_initialize_context + VCPUOP_up. */
  private cpuUp(cpu: GuestCpu, c: number): void {
    const C = this.layout.vcpu_guest_context;
    const ctx = this.scratchVa(cpu);
    for (let off = 0; off < C.size; off += 4) cpu.write32(ctx + off, 0);
    const put = (off: number, v: number) => (this.layout.ulong === 8 ? cpu.write64(ctx + off, v) : cpu.write32(ctx + off, v));
    // As Linux's cpu_initialize_context: in kernel mode but not online; VCPUOP_up brings it up
    // (VGCF_online would clear _VPF_down without waking the vCPU, so VCPUOP_up would not wake it).
    put(C.flags, VGCF_in_kernel);
    put(C.user_regs_ip, this.base + SYM.cpu_bringup_and_idle);
    put(C.user_regs_sp, this.percpu[c]!.scratchVa + 2 * XEN_PAGE_SIZE);
    put(C.kernel_sp, this.percpu[c]!.scratchVa + 2 * XEN_PAGE_SIZE);
    put(C.event_callback_eip, this.base + SYM.xen_hypervisor_callback);
    put(C.failsafe_callback_eip, this.base + SYM.xen_failsafe_callback);
    // ctrlreg[3]: swapper_pg_dir, as xen_pfn_to_cr3 encodes it.
    const pgdMfn = this.pfnToMfn(cpu, this.mmu.initMm.pgd);
    put(C.ctrlreg + 3 * this.layout.ulong, this.width === 64 ? pgdMfn * XEN_PAGE_SIZE : ((pgdMfn << 12) | (pgdMfn >>> 20)) >>> 0);
    const rc = this.hc.vcpuOp(cpu, VCPUOP.initialise, c, ctx);
    if (rc < 0) throw new Error(`VCPUOP_initialise(${c}) failed: ${rc}`);
    const up = this.hc.vcpuOp(cpu, VCPUOP.up, c);
    if (up < 0) throw new Error(`VCPUOP_up(${c}) failed: ${up}`);
  }

  private cpuBringup(cpu: GuestCpu): void {
    this.programTimer(cpu);
    this.percpu[cpu.vcpuId]!.online = true;
    this.printk(cpu, `CPU${cpu.vcpuId} up`);
    this.irqRestore(cpu, false);
  }

  /** Linux's Xen clockevent: the periodic timer off, a one-shot per tick. */
  programTimer(cpu: GuestCpu): void {
    this.hc.vcpuOp(cpu, VCPUOP.stop_periodic_timer, cpu.vcpuId);
    const pc = this.percpu[cpu.vcpuId]!;
    pc.nextTick = this.now(cpu) + TICK_NS;
    this.hc.setSingleshotTimer(cpu, pc.nextTick);
  }

  private timerInterrupt(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.ticks++;
    const now = this.now(cpu);
    while (pc.nextTick <= now) pc.nextTick += TICK_NS;
    this.hc.setSingleshotTimer(cpu, pc.nextTick);
  }

  // ---- suspend and resume (suspend.ts has the sequence) ----

  requestSuspend(cpu: GuestCpu): void {
    requestSuspend(this, cpu);
  }

  fixEnabled(fix: GuestFix): boolean {
    return !disabledFixes(this.options.get("xensim.disable_fix")).has(fix);
  }

  get startInfoPfn(): number {
    return (this.startInfoVa - this.base) / XEN_PAGE_SIZE;
  }

  private startInfoWord(cpu: GuestCpu, off: number): number {
    return this.layout.ulong === 8 ? cpu.read64(this.startInfoVa + off) : cpu.read32(this.startInfoVa + off);
  }

  private setStartInfoWord(cpu: GuestCpu, off: number, value: number): void {
    if (this.layout.ulong === 8) cpu.write64(this.startInfoVa + off, value);
    else cpu.write32(this.startInfoVa + off, value);
  }

  /** xen_pv_pre_suspend: the store and console frames become pfns, which a restore maps anew. */
  canonicaliseStartInfo(cpu: GuestCpu): void {
    const S = this.layout.start_info;
    for (const off of [S.store_mfn, S.console_mfn]) {
      const pfn = this.m2p.get(this.startInfoWord(cpu, off));
      if (pfn !== undefined) this.setStartInfoWord(cpu, off, pfn);
    }
  }

  /** A cancelled suspend: the pfns back to the frames they still are. */
  uncanonicaliseStartInfo(cpu: GuestCpu): void {
    const S = this.layout.start_info;
    for (const off of [S.store_mfn, S.console_mfn]) {
      const pfn = this.startInfoWord(cpu, off);
      if (pfn < this.nrPages) this.setStartInfoWord(cpu, off, this.pfnToMfn(cpu, pfn));
    }
  }

  /** The fixmap slot of shared_info emptied: the frame is Xen's and a new domain gets another. */
  unmapSharedInfo(cpu: GuestCpu): void {
    const rc = cpu.hypercall(HYPERVISOR.update_va_mapping, ...pteArgs(this.width, FIX_SHARED_INFO[this.width], 0, 0, UVMF.INVLPG));
    if (rc < 0) throw new Error(`cannot unmap shared_info: ${rc}`);
  }

  /** shared_info mapped at its fixmap slot from start_info.shared_info, and the kernel's views of it. */
  mapSharedInfo(cpu: GuestCpu): void {
    const mfn = Math.floor(this.startInfoWord(cpu, this.layout.start_info.shared_info) / XEN_PAGE_SIZE);
    const rc = cpu.hypercall(HYPERVISOR.update_va_mapping, ...pteArgs(this.width, FIX_SHARED_INFO[this.width], pteLo(mfn, KERNEL_PROT), pteHi(mfn), UVMF.INVLPG));
    if (rc < 0) throw new Error(`cannot map shared_info: ${rc}`);
    const words = cpu.mapPageWords(FIX_SHARED_INFO[this.width]);
    this.si = new DataView(words.buffer);
    this.siBytes = new Uint8Array(words.buffer);
    this.events?.backend.attachSharedInfo?.(words);
  }

  /**
   * xen_build_mfn_list_list: the p2m list's frames, listed in middle pages, listed in a top page
   * that shared_info's arch fields name, so that the toolstack can find the p2m of a suspended
   * guest. Made at boot; filled again with the new frames after a restore.
   */
  buildMfnListList(cpu: GuestCpu): void {
    const ul = this.layout.ulong;
    const perPage = XEN_PAGE_SIZE / ul;
    const firstLeaf = (this.mfnListVa - this.base) / XEN_PAGE_SIZE;
    const leaves = Math.ceil(this.nrPages / perPage);
    const mids = Math.ceil(leaves / perPage);
    if (this.mfnListListPfns.length === 0) {
      for (let i = 0; i < 1 + mids; i++) {
        const pfn = this.allocPfn();
        if (pfn === undefined) throw new Error("no memory for the p2m frame list");
        this.mfnListListPfns.push(pfn);
      }
    }
    const put = (pfn: number, i: number, v: number) => (ul === 8 ? cpu.write64(this.va(pfn) + i * 8, v) : cpu.write32(this.va(pfn) + i * 4, v));
    const [top, ...mid] = this.mfnListListPfns;
    cpu.pageWords(this.va(top!)).fill(0);
    for (let m = 0; m < mids; m++) {
      cpu.pageWords(this.va(mid[m]!)).fill(0);
      for (let i = 0; i < perPage && m * perPage + i < leaves; i++) put(mid[m]!, i, this.pfnToMfn(cpu, firstLeaf + m * perPage + i));
      put(top!, m, this.pfnToMfn(cpu, mid[m]!));
    }
    const A = this.layout.shared_info;
    const si = this.si;
    if (ul === 8) {
      si.setBigUint64(A.arch_max_pfn, BigInt(this.nrPages), true);
      si.setBigUint64(A.arch_pfn_to_mfn_frame_list_list, BigInt(this.pfnToMfn(cpu, top!)), true);
    } else {
      si.setUint32(A.arch_max_pfn, this.nrPages, true);
      si.setUint32(A.arch_pfn_to_mfn_frame_list_list, this.pfnToMfn(cpu, top!), true);
    }
  }

  /** The M2P as this domain's frames are now (a restore gave it new ones). */
  rebuildM2p(cpu: GuestCpu): void {
    this.m2p.clear();
    for (let pfn = 0; pfn < this.nrPages; pfn++) this.m2p.set(this.pfnToMfn(cpu, pfn), pfn);
  }

  /** The kernel's state into its own pages; returns the header page's address. */
  saveStateToPages(cpu: GuestCpu): number {
    const bytes = encodeKernelState(this);
    const saved = writeStateToPages(cpu, this, bytes);
    this.suspend.statePfns = saved.pfns;
    return saved.headerVa;
  }

  /** After the hypercall: the state pages are free again. */
  freeStatePages(): void {
    for (const pfn of this.suspend.statePfns) this.freePfn(pfn);
    this.suspend.statePfns = [];
  }

  /** A fresh kernel entered at xen_suspend_return: the state rsp names becomes this kernel. */
  private restoreFromPages(cpu: GuestCpu): void {
    const bytes = readStateFromPages(cpu, this, cpu.getRegister("rsp"));
    decodeKernelState(bytes, { cpu, kernel: this }, this);
  }

  /** xs_resume, the console and the workloads' devices in a new domain (new store and console channels). */
  resumeDevices(cpu: GuestCpu): void {
    const S = this.layout.start_info;
    this.console?.resume(cpu, cpu.read32(this.startInfoVa + S.console_evtchn));
    this.xenbus?.resume(cpu, cpu.read32(this.startInfoVa + S.store_evtchn));
    for (const w of this.workloads) w.resume?.(this, cpu);
  }

  // ---- vCPU hotplug (kernel/cpu.c with Xen's smp_ops) ----

  /** Whether `c` takes new work: online and not on its way down. */
  cpuActive(c: number): boolean {
    const pc = this.percpu[c];
    return pc?.online === true && pc.dying !== true;
  }

  /**
   * disable_hotplug_cpu (cpu_down), from whichever CPU handled the request: the CPU is marked and kicked; it takes
   * itself down once its work has moved (takeCpuDown). CPU 0 cannot go (x86 without
   * CPU0 hotplug: cpu_is_hotpluggable is false for it).
   */
  disableHotplugCpu(cpu: GuestCpu, c: number): void {
    const pc = this.percpu[c];
    if (c === 0 || !pc || pc.dead || pc.dying) return;
    pc.dying = true;
    if (c !== cpu.vcpuId && pc.online) this.smp.sendIpi(cpu, c, XEN_IPI.RESCHEDULE);
  }

  /** enable_hotplug_cpu (and cpu_up): a CPU that went down comes back through VCPUOP_up (its context is kept: xen_cpu_initialized_map). */
  enableHotplugCpu(cpu: GuestCpu, c: number): void {
    const pc = this.percpu[c];
    if (!pc) return;
    // still on its way down: it stays
    if (pc.dying) {
      pc.dying = false;
      return;
    }
    if (!pc.dead) return;
    const rc = this.hc.vcpuOp(cpu, VCPUOP.up, c);
    if (rc < 0) this.printk(cpu, `smpboot: CPU${c}: VCPUOP_up failed: ${rc}`);
  }

  /**
   * take_cpu_down and play_dead on the dying CPU: its tasks move away, it leaves any user mm
   * (so no shootdown waits for it), runs the calls queued for it, stops its timer, and goes
   * down with VCPUOP_down on itself. Its per-CPU event channels stay bound (Linux frees and
   * binds them again; here they wait for it, masked by nothing, and are kept for cpuBack).
   */
  private takeCpuDown(cpu: GuestCpu): boolean {
    const c = cpu.vcpuId;
    for (const w of this.workloads) if (w.cpuDying && !w.cpuDying(this, cpu)) return false;
    const pc = this.percpu[c]!;
    this.mmu.idleTaskExit(cpu);
    this.smp.runQueue(cpu);
    pc.online = false;
    pc.dying = false;
    pc.dead = true;
    this.hc.vcpuOp(cpu, VCPUOP.stop_singleshot_timer, c);
    this.printk(cpu, `smpboot: CPU ${c} is now offline`);
    this.hc.vcpuOp(cpu, VCPUOP.down, c);
    return true;
  }

  /** cpu_bringup after VCPUOP_up on a CPU that had gone down. */
  private cpuBack(cpu: GuestCpu): void {
    const pc = this.percpu[cpu.vcpuId]!;
    pc.dead = false;
    this.programTimer(cpu);
    pc.online = true;
    this.printk(cpu, `CPU${cpu.vcpuId} up`);
    this.irqRestore(cpu, false);
  }

  /** After a restore (the last revive hook): the kernel's own handlers. */
  kstateRevive(): void {
    // The fresh kernel's width made its layout; the state must be of a kernel of that width.
    if (this.layout.width !== this.width) throw new Error(`a ${this.width}-bit kernel's state in a ${this.layout.width}-bit kernel`);
    this.registerHandlers();
  }

  /** Online CPUs as a mask array (for IPI fan-out). */
  onlineCpus(): boolean[] {
    return this.percpu.map((pc) => pc.online);
  }
}

registerKernelClass("XenLinux", XenLinux, { transient: XENLINUX_TRANSIENT });
