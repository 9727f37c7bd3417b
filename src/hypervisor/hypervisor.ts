// The hypervisor: machine memory, domains, the scheduler and timers, the hypercall entry, and
// the privileged control calls (what domctl/libxc give the toolstack).

import type { GuestImage } from "../abi/cpu.ts";
import { PageFault } from "../abi/cpu.ts";
import { layoutFor } from "../abi/layout.ts";
import { DOMID_FIRST_RESERVED, RUNSTATE, SHUTDOWN, VIRQ, XEN_ERRNO as E } from "../abi/xen.ts";
import { Domain, type DomainConfig } from "./domain.ts";
import type { ForeignMapping } from "./domctl.ts";
import { evtchn2lInit } from "./evtchn_2l.ts";
import { hypervisorFixesDisabled } from "./fixes.ts";
import { LogDirty, PagingLogDirty } from "./log_dirty.ts";
import { ECS, type EvtchnHost, evtchnClose, sendGuestVirq } from "./evtchn.ts";
import { GuestAccess } from "./guest_access.ts";
import { dispatchHypercall } from "./hypercall.ts";
import { MachineMemory } from "./memory.ts";
import { PvMm } from "./mm.ts";
import { PGT } from "./page_info.ts";
import { DEFAULT_SCHED, type SchedHost, type SchedParams, Scheduler, type VcpuScheduler } from "./sched.ts";
import { CreditScheduler } from "./sched_credit.ts";
import { NO_DEADLINE, Vcpu, type VcpuHost } from "./vcpu.ts";
import { bootVcpuContext } from "../abi/vcpu_context.ts";
import { archSetInfoGuest, archVcpuReset } from "./vcpu_context.ts";

/** A fault in the hypervisor itself (Xen's BUG()): never caused by what a guest passes. */
export class XenBug extends Error {}

/** An unpopulated slot of a domain's p2m record. */
export const INVALID_MFN = 0xffffffff;
/** The highest gpfn a PV guest may populate (the model caps it to keep the record small). */
const MAX_PV_PFN = 1 << 24;

export interface HypervisorParams {
  /** Machine memory in 4 KiB frames. */
  nrFrames: number;
  /** The first domid handed out (1 when the toolstack runs outside the machine, without a dom0). */
  firstDomid: number;
  sched: Partial<SchedParams>;
  /** Virtual ns a hypercall costs, beyond the work it does. */
  hypercallNs: number;
  /** Hypervisor fixes to build the machine without (src/hypervisor/fixes.ts); unknown names throw. */
  disabledFixes?: readonly string[];
}

export interface ConsoleLine {
  time: number;
  text: string;
}

export class Hypervisor implements VcpuHost, SchedHost, EvtchnHost {
  readonly memory: MachineMemory;
  readonly mm: PvMm;
  readonly guest: GuestAccess;
  readonly sched: VcpuScheduler;
  readonly domains = new Map<number, Domain>();
  /** Xen's console ring (xl dmesg). */
  readonly console: ConsoleLine[] = [];
  /** privcmd mappings of guest frames the toolstack holds (each takes page references). */
  readonly foreignMappings = new Set<ForeignMapping>();
  /** Domain that owns each global VIRQ (XEN_DOMCTL_set_virq_handler); dom0 by default. */
  readonly globalVirqHandlers = new Map<number, number>();
  readonly logDirty: LogDirty;
  readonly hypercallNs: number;
  private nextDomid = 0;
  /** The last exception a guest kernel died of (a guest bug, kept for tests and reports). */
  lastGuestError: unknown = undefined;
  private deadlineCache = NO_DEADLINE;
  private deadlineDirty = true;

  constructor(params: Partial<HypervisorParams> = {}) {
    const off = hypervisorFixesDisabled(params.disabledFixes);
    this.memory = new MachineMemory(params.nrFrames ?? 1 << 20);
    this.logDirty = new LogDirty(this.memory, this.domains, this.foreignMappings, !off.has("logdirty-pt-update"));
    this.mm = new PvMm(
      this.memory,
      (domid) => this.domains.get(domid),
      (mfn) => this.logDirty.markMfn(mfn),
    );
    this.guest = new GuestAccess(this.memory);
    this.hypercallNs = params.hypercallNs ?? 50;
    this.nextDomid = params.firstDomid ?? 0;
    const sched = { ...DEFAULT_SCHED, ...params.sched };
    this.sched = sched.kind === "credit" ? new CreditScheduler(sched, this) : new Scheduler(sched, this);
  }

  log(text: string): void {
    this.console.push({ time: this.sched.now(), text });
    if (this.console.length > 4096) this.console.splice(0, 1024);
  }

  domainById(domid: number): Domain | undefined {
    return this.domains.get(domid);
  }

  // ---- control calls for the toolstack (domctl) ----

  /**
   * A paused domain with its memory and vCPUs in one step (createdomain, set_address_size,
   * max_vcpus, max_mem, populate_physmap): for the harness and tests. The toolstack takes the
   * same steps one by one through domctl.ts.
   */
  createDomain(config: DomainConfig, image: GuestImage): Domain {
    const d = this.domainCreate(undefined, { ...config, width: 64 }, image);
    if (typeof d === "number") throw new Error(`createdomain failed: ${d}`);
    if (config.width === 32) this.switchCompat(d);
    this.vcpusCreate(d);
    d.maxPages = config.nrPages;
    const mfns = this.populatePhysmap(d, Array.from({ length: config.nrPages }, (_, pfn) => pfn));
    if (typeof mfns === "number") {
      this.destroyDomain(d);
      throw new Error(`out of machine memory: ${config.nrPages} pages wanted, ${this.memory.framesFree} free`);
    }
    return d;
  }

  /**
   * domain_create: a paused domain with its shared_info page and event channels, no memory and
   * no vCPUs yet. `domid` undefined takes the next free one. Returns the domain or -errno.
   */
  domainCreate(domid: number | undefined, config: DomainConfig, image: GuestImage): Domain | number {
    if (domid !== undefined && this.domains.has(domid)) return -E.EEXIST;
    const id = domid ?? this.freeDomid();
    if (id < 0) return -E.ENOMEM;
    const mfns = this.memory.alloc(id, 1);
    if (!mfns) return -E.ENOMEM;
    const sharedInfoMfn = mfns[0]!;
    this.mm.allocated(sharedInfoMfn);
    const d = new Domain(
      id,
      config,
      new Uint32Array(0),
      sharedInfoMfn,
      this.memory.u32(sharedInfoMfn),
      this.memory.u8(sharedInfoMfn),
      image,
      (virq) => this.globalVirqHandlers.get(virq) ?? 0,
      new PagingLogDirty(this.memory.m2p),
    );
    d.pauseCount = 1;
    this.domains.set(id, d);
    // share_xen_page_with_guest: shared_info keeps a writable type for good, so it can never
    // become a pagetable.
    this.mm.getPageType(sharedInfoMfn, PGT.writable, d);
    this.log(`Created domain ${id}: ${config.maxVcpus} vCPUs at most`);
    return d;
  }

  /** The next unused domid after the last one handed out (createdomain's rover). */
  private freeDomid(): number {
    for (let n = 0; n < DOMID_FIRST_RESERVED; n++) {
      const id = this.nextDomid;
      this.nextDomid = this.nextDomid + 1 >= DOMID_FIRST_RESERVED ? 1 : this.nextDomid + 1;
      if (!this.domains.has(id)) return id;
    }
    return -1;
  }

  /** XEN_DOMCTL_max_vcpus: creates the vCPUs createdomain allowed for. */
  vcpusCreate(d: Domain): void {
    for (let id = d.vcpus.length; id < d.maxVcpus; id++) {
      const v = new Vcpu(id, d, this);
      // Xen starts every PV vCPU with a 10 ms periodic timer; Linux stops it at boot.
      v.periodicPeriod = 10_000_000;
      // Offline from its creation on (vcpu_runstate_info counts from there).
      v.runstateEntry = this.sched.now();
      d.vcpus.push(v);
    }
  }

  /**
   * switch_compat: the domain becomes a 32-bit (PAE) guest. Its vCPUs, still without a context,
   * are made again for the new layout; once one has a context the model refuses (-EINVAL).
   */
  switchCompat(d: Domain): number {
    if (d.width === 32) return 0;
    if (d.vcpus.some((v) => v.initialised)) return -E.EINVAL;
    d.layout = layoutFor(32);
    evtchn2lInit(d);
    const n = d.vcpus.length;
    d.vcpus.length = 0;
    if (n > 0) this.vcpusCreate(d);
    return 0;
  }

  /**
   * XENMEM_populate_physmap for a PV domain: a fresh frame for each gpfn, recorded in the M2P.
   * Returns the mfns (the extent list the caller gets back) or -errno, taking none on failure.
   */
  populatePhysmap(d: Domain, gpfns: readonly number[]): number[] | number {
    const have = d.p2m.length;
    let fresh = 0;
    for (const pfn of gpfns) {
      if (!Number.isInteger(pfn) || pfn < 0 || pfn >= MAX_PV_PFN) return -E.EINVAL;
      if (pfn >= have || d.p2m[pfn] === INVALID_MFN) fresh++;
    }
    if (this.totPages(d) + fresh > d.maxPages) return -E.ENOMEM;
    const mfns = this.memory.alloc(d.domid, gpfns.length);
    if (!mfns) return -E.ENOMEM;
    let top = have;
    for (const pfn of gpfns) if (pfn >= top) top = pfn + 1;
    if (top > have) {
      const grown = new Uint32Array(top).fill(INVALID_MFN);
      grown.set(d.p2m);
      d.p2m = grown;
    }
    for (let i = 0; i < gpfns.length; i++) {
      const mfn = mfns[i]!;
      this.mm.allocated(mfn);
      if (d.p2m[gpfns[i]!] === INVALID_MFN) d.populatedPfns++;
      d.p2m[gpfns[i]!] = mfn;
      this.memory.m2p[mfn] = gpfns[i]!;
    }
    return mfns;
  }

  /** domain_tot_pages: frames the domain has been given (shared_info is Xen's own). */
  totPages(d: Domain): number {
    return d.populatedPfns;
  }

  /**
   * vCPU 0's initial context as the domain builder gives it (xc_dom's boot context: `entry` in
   * rip, `arg` (start_info) in rsi/esi, the base pointer in cr3, online), through
   * arch_set_info_guest: the base pointer takes a root type reference. Returns 0 or -errno.
   */
  setBootContext(d: Domain, entry: number, arg: number, baseMfn: number): number {
    return archSetInfoGuest(this, d.vcpus[0]!, bootVcpuContext(d.width, entry, arg, 0, baseMfn));
  }

  /** MMUEXT_PIN_Ln_TABLE issued by the toolstack for `d` (foreigndom = d). Returns 0 or -errno. */
  pinTableFor(d: Domain, mfn: number, level: number): number {
    return this.mm.pin(mfn, level, d);
  }

  pauseDomain(d: Domain): void {
    d.pauseCount++;
    if (d.pauseCount === 1) for (const v of d.vcpus) this.sched.evict(v);
  }

  unpauseDomain(d: Domain): void {
    if (d.pauseCount === 0) return;
    d.pauseCount--;
    if (d.pauseCount === 0) for (const v of d.vcpus) if (v.runnable) this.sched.wake(v);
    this.syncRunstates(d);
    this.deadlineDirty = true;
  }

  /** domain_shutdown: the domain stops running and dom0 hears of it through VIRQ_DOM_EXC. */
  shutdownDomain(d: Domain, reason: number): void {
    if (d.state !== "running") return;
    d.state = "shutdown";
    d.shutdownCode = reason;
    for (const v of d.vcpus) this.sched.evict(v);
    this.log(`Domain ${d.domid} (${d.name}) shut down, reason ${reason}`);
    this.raiseDomExc();
  }

  /**
   * domain_resume: a domain that shut down (a suspend the toolstack cancels) runs again, with
   * its shutdown code cleared.
   */
  resumeDomain(d: Domain): void {
    if (d.state === "dying") return;
    const wasShutdown = d.state === "shutdown";
    d.state = "running";
    d.shutdownCode = -1;
    if (wasShutdown && d.pauseCount === 0) for (const v of d.vcpus) if (v.runnable) this.sched.wake(v);
    this.syncRunstates(d);
    this.deadlineDirty = true;
  }

  /** XEN_DOMCTL_destroydomain: closes its channels (peers go unbound) and frees its memory. */
  destroyDomain(d: Domain): void {
    d.state = "dying";
    this.logDirty.disable(d);
    for (const v of d.vcpus) this.sched.evict(v);
    for (let port = 1; port < d.evtchn.validPorts; port++) {
      if (d.evtchn.state[port] !== ECS.FREE) evtchnClose(this, d, port);
    }
    this.relinquishMemory(d);
    this.domains.delete(d.domid);
    this.log(`Destroyed domain ${d.domid}`);
    this.raiseDomExc();
  }

  /**
   * domain_relinquish_resources: base pointers and pins are dropped (tearing down the tables
   * they held), then each frame's allocation reference. A frame someone else still maps stays
   * until that reference goes.
   */
  private relinquishMemory(d: Domain): void {
    const mm = this.mm;
    this.releaseFifoPages(d);
    mm.putPageType(d.sharedInfoMfn);
    // arch_vcpu_reset for each vCPU: GDT frames and base pointers let go.
    for (const v of d.vcpus) archVcpuReset(this, v);
    const owned: number[] = [];
    for (let mfn = 0; mfn < this.memory.nrFrames; mfn++) if (this.memory.owner[mfn] === d.domid) owned.push(mfn);
    for (const mfn of owned) {
      if (mm.pages.pinned(mfn)) {
        mm.pages.setPinned(mfn, false);
        mm.putPageAndType(mfn);
      }
    }
    for (const mfn of owned) if (mm.pages.count[mfn]! > 0) mm.putPage(mfn);
  }

  releaseFifoPages(d: Domain): void {
    const fifo = d.fifo;
    if (!fifo) return;
    for (const cb of fifo.controlBlocks) if (cb) this.mm.putPageAndType(cb.mfn);
    for (const mfn of fifo.arrayMfns) this.mm.putPageAndType(mfn);
    fifo.controlBlocks.fill(undefined);
    fifo.arrayMfns.length = 0;
  }

  private raiseDomExc(): void {
    const handler = this.domains.get(this.globalVirqHandlers.get(VIRQ.DOM_EXC) ?? 0);
    if (handler) sendGuestVirq(handler, 0, VIRQ.DOM_EXC);
  }

  /** A guest did something its kernel could not survive (domain_crash). */
  crashDomain(d: Domain, why: string): void {
    this.log(`Domain ${d.domid} (${d.name}) crashed: ${why}`);
    this.shutdownDomain(d, SHUTDOWN.crash);
  }

  // ---- VcpuHost ----

  hypercall(v: Vcpu, op: number, a1: number, a2: number, a3: number, a4: number, a5: number): number {
    this.sched.spend(this.hypercallNs);
    return dispatchHypercall(this, v, op, a1, a2, a3, a4, a5);
  }

  now(v?: Vcpu): number {
    return this.sched.now(v);
  }

  wake(v: Vcpu): void {
    if (v.runnable) this.sched.wake(v);
    else this.runstateChanged(v, this.sched.now(v));
  }

  spend(_v: Vcpu, ns: number): void {
    this.sched.spend(ns);
  }

  timersChanged(): void {
    this.deadlineDirty = true;
  }

  // ---- SchedHost ----

  runVcpu(v: Vcpu): void {
    try {
      if (!v.started) {
        v.started = true;
        // The context's rip, with its argument in rsi (esi): start_info for vCPU 0.
        v.domain.image.enter(v.rip, v, v.startArg);
      } else {
        v.deliverEvents();
        if (v.running) v.domain.image.resume(v);
      }
    } catch (e) {
      if (e instanceof XenBug) throw e;
      const why = e instanceof PageFault ? `unhandled ${e.message}` : `guest kernel error: ${(e as Error).message ?? String(e)}`;
      this.crashDomain(v.domain, why);
      if (!(e instanceof PageFault)) this.lastGuestError = e;
    }
  }

  contextSwitchIn(v: Vcpu, now: number): void {
    this.runstateChanged(v, now);
    // vcpu_periodic_timer_work: a vCPU with a period gets its timer armed when it runs.
    if (v.periodicPeriod > 0 && v.periodicNext === NO_DEADLINE) {
      v.periodicNext = now + v.periodicPeriod;
      this.deadlineDirty = true;
    }
    // update_vcpu_system_time: version odd while writing, even when consistent.
    const L = v.domain.layout;
    const dv = this.memory.dv(v.domain.sharedInfoMfn);
    const t = v.vcpuInfoOff + L.vcpu_info.time;
    const version = dv.getUint32(t, true);
    dv.setUint32(t, (version + 1) >>> 0, true);
    writeU64(dv, t + L.vcpu_time_info.tsc_timestamp, now);
    writeU64(dv, t + L.vcpu_time_info.system_time, now);
    dv.setUint32(t + L.vcpu_time_info.tsc_to_system_mul, 0x80000000, true);
    dv.setInt8(t + L.vcpu_time_info.tsc_shift, 1);
    dv.setUint32(t, (version + 2) >>> 0, true);
  }

  /**
   * vcpu_runstate_change as Xen decides it: running on a pCPU; runnable; blocked when only its
   * block (or poll) keeps it off a pCPU; offline when it is down, paused (by the toolstack, a
   * shutdown or the scheduler's cap) or dying. Time never goes back for one vCPU: pCPU clocks
   * differ a little, and a change stamped before the last one counts from the last one.
   */
  runstateChanged(v: Vcpu, now: number): void {
    let state: number;
    if (v.runnable) state = v.pcpu >= 0 ? RUNSTATE.running : RUNSTATE.runnable;
    else if (v.blocked && !v.down && v.initialised && v.domain.active && !v.parked) state = RUNSTATE.blocked;
    else state = RUNSTATE.offline;
    if (state !== v.runstate) this.setRunstate(v, state, now);
  }

  setRunstate(v: Vcpu, state: number, now: number): void {
    const t = Math.max(now, v.runstateEntry);
    v.runstateTime[v.runstate] = (v.runstateTime[v.runstate] ?? 0) + (t - v.runstateEntry);
    v.runstate = state;
    v.runstateEntry = t;
  }

  private syncRunstates(d: Domain): void {
    for (const v of d.vcpus) this.runstateChanged(v, this.sched.now(v));
  }

  nextDeadline(): number {
    if (!this.deadlineDirty) return this.deadlineCache;
    let next = NO_DEADLINE;
    for (const d of this.domains.values()) {
      if (d.state !== "running" || d.pauseCount > 0) continue;
      for (const v of d.vcpus) {
        if (v.down) continue;
        for (const t of [v.singleshotDeadline, v.periodicPeriod > 0 ? v.periodicNext : NO_DEADLINE, v.pollDeadline]) {
          if (t !== NO_DEADLINE && (next === NO_DEADLINE || t < next)) next = t;
        }
      }
    }
    this.deadlineCache = next;
    this.deadlineDirty = false;
    return next;
  }

  fireTimers(now: number): void {
    const next = this.nextDeadline();
    if (next === NO_DEADLINE || next > now) return;
    for (const d of this.domains.values()) {
      if (d.state !== "running" || d.pauseCount > 0) continue;
      for (const v of d.vcpus) {
        if (v.down) continue;
        if (v.singleshotDeadline !== NO_DEADLINE && v.singleshotDeadline <= now) {
          v.singleshotDeadline = NO_DEADLINE;
          sendGuestVirq(d, v.id, VIRQ.TIMER);
        }
        if (v.periodicPeriod > 0 && v.periodicNext !== NO_DEADLINE && v.periodicNext <= now) {
          while (v.periodicNext <= now) v.periodicNext += v.periodicPeriod;
          sendGuestVirq(d, v.id, VIRQ.TIMER);
        }
        if (v.pollDeadline !== NO_DEADLINE && v.pollDeadline <= now) v.wakeFromPoll();
      }
    }
    this.deadlineDirty = true;
  }

  /** Runs until `until` virtual ns, or `maxSteps`, or until nothing can run. Returns steps taken. */
  run(until: number, maxSteps = Number.POSITIVE_INFINITY): number {
    let steps = 0;
    while (steps < maxSteps && this.sched.now() < until) {
      if (!this.sched.step()) break;
      steps++;
    }
    return steps;
  }
}

function writeU64(dv: DataView, off: number, value: number): void {
  const lo = value >>> 0;
  dv.setUint32(off, lo, true);
  dv.setUint32(off + 4, Math.floor((value - lo) / 0x100000000) >>> 0, true);
}
