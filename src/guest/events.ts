// The guest's IRQ layer over event channels (Linux drivers/xen/events/events_base.c): a dynamic
// irq <-> port mapping with irq_info and reference counts, per-CPU VIRQ and IPI maps, the Xen
// irq_chips (dynamic, lateeoi, percpu) and the upcall. irq_info is plain data, so that it can
// be written out with the rest of guest state; handlers are named, not captured closures.

import type { GuestCpu } from "../abi/cpu.ts";
import { XEN_ERRNO as E } from "../abi/xen.ts";
import type { EvtchnLoopCtrl, EvtchnOps } from "./evtchn_backend.ts";
import type { Hypercalls } from "./hypercalls.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";

export const IRQT = { UNBOUND: 0, PIRQ: 1, VIRQ: 2, IPI: 3, EVTCHN: 4 } as const;
export const IRQT_NAMES = ["unbound", "pirq", "virq", "ipi", "evtchn"] as const;
export const EVT_MASK_REASON = { EXPLICIT: 1, TEMPORARY: 2, EOI_PENDING: 4 } as const;
export type IrqChip = "xen-dyn" | "xen-dyn-lateeoi" | "xen-percpu";

/** Linux's IPI vectors on Xen (asm/xen/events.h); NMI goes through VCPUOP_send_nmi instead. */
export const XEN_IPI = { RESCHEDULE: 0, CALL_FUNCTION: 1, CALL_FUNCTION_SINGLE: 2, SPIN_UNLOCK: 3, IRQ_WORK: 4 } as const;
export const XEN_NR_IPIS = 5;

export interface IrqInfo {
  irq: number;
  type: number;
  evtchn: number;
  /** The VIRQ or IPI vector. */
  index: number;
  cpu: number;
  refcnt: number;
  chip: IrqChip;
  handler: string;
  devId: number;
  maskReason: number;
  isActive: boolean;
  /** Raised while disabled: replayed on enable (IRQS_PENDING). */
  pendingWhileDisabled: boolean;
  spuriousCnt: number;
  eoiTime: number;
  eoiCpu: number;
  irqEpoch: number;
  count: number;
}

/** What a handler may ask back (Linux's irqreturn_t plus the lateeoi flag). */
export type IrqHandler = (cpu: GuestCpu, irq: number, devId: number) => void;

export interface EventsParams {
  nrCpus: number;
  /** Nanoseconds per jiffy (1e9 / HZ). */
  jiffyNs: number;
  now: (cpu: GuestCpu) => number;
}

/** Linux's defaults: event_loop_timeout = 2 jiffies, event_eoi_delay = 10 jiffies. */
export const EVENT_LOOP_TIMEOUT_JIFFIES = 2;
export const EVENT_EOI_DELAY_JIFFIES = 10;

export class XenEvents {
  readonly irqs: (IrqInfo | undefined)[] = [];
  readonly evtchnToIrq: Int32Array;
  readonly virqToIrq: Int32Array[];
  readonly ipiToIrq: Int32Array[];
  readonly irqEpoch: Uint32Array;
  /** Per-CPU lists of irqs waiting for a deferred EOI. */
  readonly eoiLists: number[][];
  /** Handlers by name; not state: whoever registered one registers it again after a restore. */
  handlers = new Map<string, IrqHandler>();
  /** The handler of each irq, looked up from its name at first use (irq_info keeps only the name). */
  private handlerFns: (IrqHandler | undefined)[] = [];
  /** Per-CPU loop state and port callbacks, made once so an upcall allocates nothing. */
  private loopCtrl!: EvtchnLoopCtrl[];
  private upcallCpu!: (GuestCpu | undefined)[];
  private portHandlers!: ((port: number) => void)[];
  /** Ports seen pending with no irq bound (a race Linux tolerates). */
  unboundEvents = 0;
  spuriousEoi = 0;
  private readonly nrCpus: number;
  private readonly jiffyNs: number;
  /** The kernel's clock (a closure: derived again after a restore). */
  private clock: (cpu: GuestCpu) => number;

  constructor(
    readonly backend: EvtchnOps,
    private readonly hc: Hypercalls,
    p: EventsParams,
  ) {
    this.nrCpus = p.nrCpus;
    this.jiffyNs = p.jiffyNs;
    this.clock = p.now;
    this.evtchnToIrq = new Int32Array(backend.maxChannels()).fill(-1);
    this.virqToIrq = [];
    this.timerPorts = new Uint32Array(p.nrCpus);
    this.ipiToIrq = [];
    for (let c = 0; c < p.nrCpus; c++) {
      this.virqToIrq.push(new Int32Array(24).fill(-1));
      this.ipiToIrq.push(new Int32Array(XEN_NR_IPIS).fill(-1));
    }
    this.irqEpoch = new Uint32Array(p.nrCpus);
    this.eoiLists = Array.from({ length: p.nrCpus }, () => []);
    this.wireUpcall();
  }

  /** The upcall's per-CPU scratch and port callbacks (wiring, made again after a restore). */
  private wireUpcall(): void {
    this.loopCtrl = Array.from({ length: this.nrCpus }, () => ({ timeout: 0, count: 0, deferEoi: false }));
    this.upcallCpu = new Array(this.nrCpus);
    this.portHandlers = Array.from({ length: this.nrCpus }, (_, c) => (port: number) => {
      this.handleIrqForPort(this.upcallCpu[c]!, port, this.loopCtrl[c]!);
    });
  }

  /** After a restore, before any kstateRevive: an empty registry for the handlers to come back to. */
  kstateInit(): void {
    this.handlers = new Map();
    this.handlerFns = [];
    this.wireUpcall();
  }

  kstateRevive(env: KstateEnv): void {
    this.clock = (c) => env.kernel.now(c);
  }

  registerHandler(name: string, fn: IrqHandler): void {
    this.handlers.set(name, fn);
    // A name may get a new function (after a restore): irqs look theirs up again.
    this.handlerFns.length = 0;
  }

  private jiffies(cpu: GuestCpu): number {
    return Math.floor(this.clock(cpu) / this.jiffyNs);
  }

  // ---- irq allocation and bindings ----

  /** A new irq starts on CPU 0, as Linux's xen_irq_init does; setupPort moves it. */
  private allocIrq(type: number, evtchn: number, index: number, chip: IrqChip): IrqInfo {
    let irq = this.irqs.indexOf(undefined);
    if (irq < 0) irq = this.irqs.length;
    const info: IrqInfo = {
      irq,
      type,
      evtchn,
      index,
      cpu: 0,
      refcnt: 0,
      chip,
      handler: "",
      devId: 0,
      maskReason: EVT_MASK_REASON.EXPLICIT,
      isActive: false,
      pendingWhileDisabled: false,
      spuriousCnt: 0,
      eoiTime: 0,
      eoiCpu: 0,
      irqEpoch: 0,
      count: 0,
    };
    this.irqs[irq] = info;
    return info;
  }

  /**
   * Installs the port mapping (xen_irq_info_common_setup) and routes it to `tcpu`. Pending state
   * is left alone: Xen marks a new inter-domain binding pending precisely so it is not lost.
   */
  private setupPort(cpu: GuestCpu, info: IrqInfo, port: number, tcpu: number): number {
    const rc = this.backend.setup(cpu, port);
    if (rc < 0) return rc;
    info.evtchn = port;
    this.evtchnToIrq[port] = info.irq;
    this.backend.mask(port);
    this.bindEvtchnToCpu(info, tcpu);
    return 0;
  }

  /**
   * xen_irq_resume's first half: every irq forgets its port and no port maps to an irq (the new
   * domain's port numbers mean nothing of the old ones).
   */
  zapPortBindings(): void {
    for (const info of this.irqs) if (info) info.evtchn = 0;
    this.evtchnToIrq.fill(-1);
    this.timerPorts.fill(0);
  }

  /** restore_cpu_virqs/ipis: `irq` gets the new `port` on `tcpu`, unmasked unless it is disabled. */
  rebindPort(cpu: GuestCpu, irq: number, port: number, tcpu: number): number {
    const info = this.irqs[irq];
    if (!info) return -E.EINVAL;
    const rc = this.setupPort(cpu, info, port, tcpu);
    if (rc < 0) return rc;
    if (info.maskReason === 0) this.backend.unmask(cpu, port);
    return 0;
  }

  private bindEvtchnToCpu(info: IrqInfo, tcpu: number): void {
    this.backend.bindToCpu(info.evtchn, tcpu, info.cpu);
    info.cpu = tcpu;
  }

  bindEvtchnToIrq(cpu: GuestCpu, port: number, chip: IrqChip): number {
    if (port <= 0 || port >= this.evtchnToIrq.length) return -E.EINVAL;
    let irq = this.evtchnToIrq[port]!;
    if (irq === -1) {
      const info = this.allocIrq(IRQT.EVTCHN, 0, 0, chip);
      const rc = this.setupPort(cpu, info, port, 0);
      if (rc < 0) {
        this.irqs[info.irq] = undefined;
        return rc;
      }
      irq = info.irq;
    }
    this.irqs[irq]!.refcnt++;
    return irq;
  }

  bindVirqToIrq(cpu: GuestCpu, virq: number, tcpu: number, percpu: boolean): number {
    let irq = this.virqToIrq[tcpu]![virq]!;
    if (irq === -1) {
      const port = this.hc.bindVirq(cpu, virq, tcpu);
      if (port < 0) return port;
      const info = this.allocIrq(IRQT.VIRQ, 0, virq, percpu ? "xen-percpu" : "xen-dyn");
      const rc = this.setupPort(cpu, info, port, tcpu);
      if (rc < 0) return rc;
      this.virqToIrq[tcpu]![virq] = info.irq;
      if (virq === 0) this.timerPorts[tcpu] = port;
      irq = info.irq;
    }
    this.irqs[irq]!.refcnt++;
    return irq;
  }

  bindIpiToIrq(cpu: GuestCpu, ipi: number, tcpu: number): number {
    let irq = this.ipiToIrq[tcpu]![ipi]!;
    if (irq === -1) {
      const port = this.hc.bindIpi(cpu, tcpu);
      if (port < 0) return port;
      const info = this.allocIrq(IRQT.IPI, 0, ipi, "xen-percpu");
      const rc = this.setupPort(cpu, info, port, tcpu);
      if (rc < 0) return rc;
      this.ipiToIrq[tcpu]![ipi] = info.irq;
      irq = info.irq;
    }
    this.irqs[irq]!.refcnt++;
    return irq;
  }

  bindInterdomainEvtchnToIrq(cpu: GuestCpu, remoteDom: number, remotePort: number, chip: IrqChip): number {
    const port = this.hc.bindInterdomain(cpu, remoteDom, remotePort);
    if (port < 0) return port;
    return this.bindEvtchnToIrq(cpu, port, chip);
  }

  /** request_irq: attaches a named handler and enables the irq. */
  requestIrq(cpu: GuestCpu, irq: number, handler: string, devId: number): number {
    const info = this.irqs[irq];
    if (!info) return -E.EINVAL;
    if (!this.handlers.has(handler)) return -E.EINVAL;
    info.handler = handler;
    info.devId = devId;
    this.handlerFns[irq] = this.handlers.get(handler);
    this.enableIrq(cpu, irq);
    return 0;
  }

  bindEvtchnToIrqhandler(cpu: GuestCpu, port: number, handler: string, devId: number, lateeoi = false): number {
    const irq = this.bindEvtchnToIrq(cpu, port, lateeoi ? "xen-dyn-lateeoi" : "xen-dyn");
    return irq < 0 ? irq : this.finishRequest(cpu, irq, handler, devId);
  }

  bindInterdomainEvtchnToIrqhandler(
    cpu: GuestCpu,
    remoteDom: number,
    remotePort: number,
    handler: string,
    devId: number,
    lateeoi = false,
  ): number {
    const irq = this.bindInterdomainEvtchnToIrq(cpu, remoteDom, remotePort, lateeoi ? "xen-dyn-lateeoi" : "xen-dyn");
    return irq < 0 ? irq : this.finishRequest(cpu, irq, handler, devId);
  }

  bindVirqToIrqhandler(cpu: GuestCpu, virq: number, tcpu: number, handler: string, devId: number, percpu = true): number {
    const irq = this.bindVirqToIrq(cpu, virq, tcpu, percpu);
    return irq < 0 ? irq : this.finishRequest(cpu, irq, handler, devId);
  }

  bindIpiToIrqhandler(cpu: GuestCpu, ipi: number, tcpu: number, handler: string, devId: number): number {
    const irq = this.bindIpiToIrq(cpu, ipi, tcpu);
    return irq < 0 ? irq : this.finishRequest(cpu, irq, handler, devId);
  }

  private finishRequest(cpu: GuestCpu, irq: number, handler: string, devId: number): number {
    const rc = this.requestIrq(cpu, irq, handler, devId);
    if (rc < 0) {
      this.unbindFromIrq(cpu, irq);
      return rc;
    }
    return irq;
  }

  unbindFromIrqhandler(cpu: GuestCpu, irq: number): void {
    const info = this.irqs[irq];
    if (!info) return;
    this.disableIrq(irq);
    info.handler = "";
    this.handlerFns[irq] = undefined;
    this.unbindFromIrq(cpu, irq);
  }

  /**
   * Drops one reference; the last closes the port. The mappings are cleared before the close,
   * since once closed the port can be reused at once by another binding (CVE-2024-26687).
   */
  unbindFromIrq(cpu: GuestCpu, irq: number): void {
    const info = this.irqs[irq];
    if (!info) return;
    if (info.refcnt > 0) {
      info.refcnt--;
      if (info.refcnt !== 0) return;
    }
    const port = info.evtchn;
    if (port !== 0) {
      this.backend.mask(port);
      if (info.type === IRQT.VIRQ) {
        this.virqToIrq[info.cpu]![info.index] = -1;
        if (info.index === 0) this.timerPorts[info.cpu] = 0;
      }
      else if (info.type === IRQT.IPI) this.ipiToIrq[info.cpu]![info.index] = -1;
      this.evtchnToIrq[port] = -1;
      this.backend.remove(port, info.cpu);
      info.evtchn = 0;
      this.removeFromEoiList(info);
      this.hc.evtchnClose(cpu, port);
    }
    this.irqs[irq] = undefined;
  }

  // ---- the irq_chip operations ----

  private doMask(info: IrqInfo, reason: number): void {
    if (info.maskReason === 0 && info.evtchn !== 0) this.backend.mask(info.evtchn);
    info.maskReason |= reason;
  }

  private doUnmask(cpu: GuestCpu, info: IrqInfo, reason: number): void {
    info.maskReason &= ~reason;
    if (info.maskReason === 0 && info.evtchn !== 0) this.backend.unmask(cpu, info.evtchn);
  }

  enableIrq(cpu: GuestCpu, irq: number): void {
    const info = this.irqs[irq];
    if (!info) return;
    this.doUnmask(cpu, info, EVT_MASK_REASON.EXPLICIT);
    if (info.pendingWhileDisabled) {
      info.pendingWhileDisabled = false;
      this.retrigger(cpu, irq);
    }
  }

  disableIrq(irq: number): void {
    const info = this.irqs[irq];
    if (info) this.doMask(info, EVT_MASK_REASON.EXPLICIT);
  }

  /** ack_dynirq: the event is consumed. */
  private ack(info: IrqInfo): void {
    if (info.evtchn === 0) return;
    info.isActive = false;
    this.backend.clearPending(info.evtchn);
  }

  /** lateeoi_ack_dynirq: masked until the driver's EOI; is_active stays set to drop repeats. */
  private lateeoiAck(info: IrqInfo): void {
    if (info.evtchn === 0) return;
    this.doMask(info, EVT_MASK_REASON.EOI_PENDING);
    this.backend.clearPending(info.evtchn);
  }

  retrigger(cpu: GuestCpu, irq: number): boolean {
    const info = this.irqs[irq];
    if (!info || info.evtchn === 0) return false;
    this.doMask(info, EVT_MASK_REASON.TEMPORARY);
    this.backend.setPending(info.evtchn);
    this.doUnmask(cpu, info, EVT_MASK_REASON.TEMPORARY);
    return true;
  }

  /** set_affinity: EVTCHNOP_bind_vcpu under a temporary mask. IPIs and per-CPU VIRQs refuse. */
  setAffinity(cpu: GuestCpu, irq: number, tcpu: number): number {
    const info = this.irqs[irq];
    if (!info || info.evtchn === 0) return -E.EINVAL;
    this.doMask(info, EVT_MASK_REASON.TEMPORARY);
    const rc = this.hc.bindVcpu(cpu, info.evtchn, tcpu);
    if (rc >= 0) this.bindEvtchnToCpu(info, tcpu);
    this.doUnmask(cpu, info, EVT_MASK_REASON.TEMPORARY);
    return rc;
  }

  /** notify_remote_via_irq. */
  notifyRemoteViaIrq(cpu: GuestCpu, irq: number): number {
    const info = this.irqs[irq];
    if (!info || info.evtchn === 0) return -E.EINVAL;
    return this.hc.evtchnSend(cpu, info.evtchn);
  }

  /** xen_send_IPI_one. */
  sendIpi(cpu: GuestCpu, tcpu: number, vector: number): number {
    const irq = this.ipiToIrq[tcpu]![vector]!;
    if (irq < 0) return -E.EINVAL;
    return this.hc.evtchnSend(cpu, this.irqs[irq]!.evtchn);
  }

  // ---- lateeoi (XSA-332) ----

  /** xen_irq_lateeoi: the driver's EOI, with exponential backoff for spurious events. */
  lateeoi(cpu: GuestCpu, irq: number, spurious: boolean): void {
    const info = this.irqs[irq];
    if (!info || info.evtchn === 0 || this.onEoiList(info)) return;
    const hz = Math.round(1e9 / this.jiffyNs);
    let delay = 0;
    if (spurious) {
      this.spuriousEoi++;
      const threshold = 1;
      if (1 << Math.min(info.spuriousCnt, 30) < hz << 2 && info.spuriousCnt !== 0xff) info.spuriousCnt++;
      if (info.spuriousCnt > threshold) {
        delay = Math.min(1 << Math.min(info.spuriousCnt - 1 - threshold, 30), hz);
        if (!info.eoiTime) info.eoiCpu = cpu.vcpuId;
        info.eoiTime = this.jiffies(cpu) + delay;
      }
    } else {
      info.spuriousCnt = 0;
    }
    if (info.eoiTime && (info.irqEpoch === this.irqEpoch[info.eoiCpu] || delay)) {
      this.eoiLists[info.eoiCpu]!.push(info.irq);
      return;
    }
    this.finishEoi(cpu, info);
  }

  private finishEoi(cpu: GuestCpu, info: IrqInfo): void {
    info.eoiTime = 0;
    info.isActive = false;
    this.doUnmask(cpu, info, EVT_MASK_REASON.EOI_PENDING);
  }

  private onEoiList(info: IrqInfo): boolean {
    return this.eoiLists[info.eoiCpu]!.includes(info.irq);
  }

  private removeFromEoiList(info: IrqInfo): void {
    const list = this.eoiLists[info.eoiCpu]!;
    const i = list.indexOf(info.irq);
    if (i >= 0) list.splice(i, 1);
  }

  /** xen_irq_lateeoi_worker: EOIs whose delay has passed. Returns the next due jiffy, or 0. */
  runEoiWorker(cpu: GuestCpu): number {
    const list = this.eoiLists[cpu.vcpuId]!;
    if (list.length === 0) return 0;
    const now = this.jiffies(cpu);
    let next = 0;
    for (let i = 0; i < list.length; ) {
      const info = this.irqs[list[i]!];
      if (!info) {
        list.splice(i, 1);
        continue;
      }
      if (info.eoiTime <= now) {
        list.splice(i, 1);
        this.finishEoi(cpu, info);
        continue;
      }
      if (next === 0 || info.eoiTime < next) next = info.eoiTime;
      i++;
    }
    return next;
  }

  // ---- the upcall ----

  /** __xen_evtchn_do_upcall: scan until no upcall is pending. */
  doUpcall(cpu: GuestCpu, upcallPending: Uint8Array, upcallPendingOff: number): void {
    const c = cpu.vcpuId;
    const ctrl = this.loopCtrl[c]!;
    ctrl.timeout = 0;
    ctrl.count = 0;
    ctrl.deferEoi = false;
    this.upcallCpu[c] = cpu;
    do {
      upcallPending[upcallPendingOff] = 0;
      this.backend.handleEvents(cpu, ctrl, this.portHandlers[c]!);
    } while (upcallPending[upcallPendingOff] !== 0);
    this.irqEpoch[cpu.vcpuId]!++;
  }

  /** Each CPU's VIRQ_TIMER port (0: none), which the 2-level scan looks at first. */
  readonly timerPorts: Uint32Array;

  private handleIrqForPort(cpu: GuestCpu, port: number, ctrl: EvtchnLoopCtrl): void {
    const irq = this.evtchnToIrq[port]!;
    if (irq === -1) {
      // No binding (yet, or any more): consume it so that it does not repeat forever.
      this.unboundEvents++;
      this.backend.clearPending(port);
      return;
    }
    // Every 256 events, check the loop's time budget; past it, defer EOIs to leave sooner.
    if (!ctrl.deferEoi && (++ctrl.count & 0xff) === 0) {
      const now = this.clock(cpu);
      if (!ctrl.timeout) ctrl.timeout = now + EVENT_LOOP_TIMEOUT_JIFFIES * this.jiffyNs;
      else if (now > ctrl.timeout) ctrl.deferEoi = true;
    }
    const info = this.irqs[irq]!;
    if (info.isActive) return;
    info.isActive = true;
    if (ctrl.deferEoi) {
      info.eoiCpu = cpu.vcpuId;
      info.irqEpoch = this.irqEpoch[cpu.vcpuId]!;
      info.eoiTime = this.jiffies(cpu) + EVENT_EOI_DELAY_JIFFIES;
    }
    this.genericHandleIrq(cpu, info);
  }

  /** The flow handler for the irq's chip (handle_percpu_irq / handle_edge_irq). */
  private genericHandleIrq(cpu: GuestCpu, info: IrqInfo): void {
    if (info.chip === "xen-dyn-lateeoi") this.lateeoiAck(info);
    else if (info.chip === "xen-dyn" && info.maskReason & EVT_MASK_REASON.EXPLICIT) {
      // Disabled: remember it, keep it masked, consume the event (handle_edge_irq).
      info.pendingWhileDisabled = true;
      this.ack(info);
      return;
    } else this.ack(info);
    info.count++;
    let fn = this.handlerFns[info.irq];
    if (fn === undefined && info.handler !== "") {
      fn = this.handlers.get(info.handler);
      this.handlerFns[info.irq] = fn;
    }
    if (fn) fn(cpu, info.irq, info.devId);
  }
}

registerKernelClass("XenEvents", XenEvents, { transient: ["handlers", "handlerFns", "loopCtrl", "upcallCpu", "portHandlers", "clock"] });
