// Suspend and resume (Linux drivers/xen/manage.c do_suspend, xen_suspend, arch/x86/xen/suspend_pv.c
// and xen_irq_resume). A request freezes the workloads, suspends xenbus once no request is in
// flight, parks every other CPU (stop_machine), and CPU 0 pins every pagetable, canonicalises
// start_info, unmaps shared_info, writes the kernel's state into its own pages and makes the
// suspend hypercall. The hypercall comes back with 1 in the same domain (cancelled), or with 0 in
// a new one, possibly in another process: there a fresh kernel enters at xen_suspend_return and
// rebuilds itself from the pages that rsp names.
//
// Everything here is plain data on the kernel (k.suspend), so that it is part of what is saved.

import type { GuestCpu } from "../abi/cpu.ts";
import { VCPUOP, VIRQ } from "../abi/xen.ts";
import type { XenLinux } from "./kernel.ts";

export type SuspendPhase = "none" | "freezing" | "stopping" | "irqs_off" | "suspended";

export interface SuspendState {
  phase: SuspendPhase;
  /** CPUs parked by the stop_machine of a suspend (they spin until CPU 0 lets them go). */
  parked: boolean[];
  /** Parked CPUs that have disabled their events (multi_cpu_stop's MULTI_STOP_DISABLE_IRQ). */
  irqsOff: boolean[];
  /** CPUs whose timer must be programmed again when they leave the park (a new domain). */
  rearmTimer: boolean[];
  /** Mm ids xen_mm_pin_all pinned (PageSavePinned): xen_mm_unpin_all unpins them again. */
  savePinned: number[];
  /** The pages holding the saved kernel state, freed after the hypercall returns. */
  statePfns: number[];
  cancelled: number;
  resumed: number;
}

export function newSuspendState(nrCpus: number): SuspendState {
  return {
    phase: "none",
    parked: new Array(nrCpus).fill(false),
    irqsOff: new Array(nrCpus).fill(false),
    rearmTimer: new Array(nrCpus).fill(false),
    savePinned: [],
    statePfns: [],
    cancelled: 0,
    resumed: 0,
  };
}

/** do_suspend's start, from the shutdown watch: freeze the tasks. */
export function requestSuspend(k: XenLinux, cpu: GuestCpu): void {
  const s = k.suspend;
  if (s.phase !== "none") return;
  k.printk(cpu, "Freezing user space processes");
  s.phase = "freezing";
  k.frozen = true;
}

/**
 * The suspend's part of a CPU's step. True if it used the step (the CPU waits, parks, or CPU 0
 * went through the suspend hypercall).
 */
export function suspendStep(k: XenLinux, cpu: GuestCpu): boolean {
  const s = k.suspend;
  const c = cpu.vcpuId;
  if (s.phase === "none") {
    if (s.parked[c]) leavePark(k, cpu);
    return false;
  }
  if (c !== 0) {
    // stop_machine: the other CPUs park once their own half-done work is finished, and turn
    // their events off once CPU 0 is ready to run the suspend.
    if (s.phase === "freezing" || s.parked[c]) {
      if (!s.parked[c]) return false;
      if (s.phase === "irqs_off" && !s.irqsOff[c]) {
        k.irqDisable(cpu);
        s.irqsOff[c] = true;
      }
      k.hc.yield(cpu);
      return true;
    }
    if (!cpuQuiescent(k, cpu)) return false;
    s.parked[c] = true;
    k.hc.yield(cpu);
    return true;
  }
  switch (s.phase) {
    case "freezing":
      // xs_suspend: no request in flight, watch events held until the resume.
      if (k.xenbus && !k.xenbus.idle()) return false;
      k.printk(cpu, "suspending xenstore...");
      k.xenbus?.suspend();
      s.phase = "stopping";
      return false;
    case "stopping":
      if (!cpuQuiescent(k, cpu) || !othersParked(k) || !noWaitedCalls(k)) return false;
      s.phase = "irqs_off";
      k.irqDisable(cpu);
      s.irqsOff[0] = true;
      return true;
    case "irqs_off":
      if (!othersIrqsOff(k)) {
        k.hc.yield(cpu);
        return true;
      }
      xenSuspend(k, cpu);
      return true;
    case "suspended":
      // The hypercall has come back in this domain: rax says how.
      afterSuspendHypercall(k, cpu, cpu.getRegister("rax"));
      return true;
  }
}

/** Nothing half done on `cpu`: no open multicall batch, no workload in the middle of its work. */
function cpuQuiescent(k: XenLinux, cpu: GuestCpu): boolean {
  if (k.mc.pending(cpu) !== 0 || k.mc.lazyMode(cpu) !== 0) return false;
  for (const w of k.workloads) if (w.quiescent && !w.quiescent(k, cpu)) return false;
  return true;
}

/**
 * No sender waits for a call still queued (smp_call_function with wait). Calls nobody waits for
 * may stay queued, as in Linux: an IPI ping-pong run from the handlers never lets every queue
 * drain, and stop_machine does not wait for it. Their IPI may be lost with the old domain's
 * channels; each CPU runs its own queue when it goes on (flushCallQueue).
 */
function noWaitedCalls(k: XenLinux): boolean {
  return k.smp.queues.every((q) => q.every((r) => r.waitId === 0));
}

/** flush_smp_call_function_queue as a CPU goes on after the stop (Linux also flushes from idle). */
function flushCallQueue(k: XenLinux, cpu: GuestCpu): void {
  if (k.smp.queues[cpu.vcpuId]!.length > 0) k.smp.runQueue(cpu);
}

function othersIrqsOff(k: XenLinux): boolean {
  for (let c = 1; c < k.nrCpus; c++) if (k.percpu[c]!.online && !k.suspend.irqsOff[c]) return false;
  return true;
}

function othersParked(k: XenLinux): boolean {
  for (let c = 1; c < k.nrCpus; c++) if (k.percpu[c]!.online && !k.suspend.parked[c]) return false;
  return true;
}

/** xen_suspend on CPU 0 under stop_machine, up to the hypercall. */
function xenSuspend(k: XenLinux, cpu: GuestCpu): void {
  const s = k.suspend;
  // xen_mm_pin_all: Xen can only save pagetables it knows as such.
  s.savePinned = [];
  for (const mm of k.mmu.mms.values()) {
    if (mm.pinned || mm.exited) continue;
    k.mmu.pin(cpu, mm);
    s.savePinned.push(mm.id);
  }
  // xen_pv_pre_suspend: start_info's frames become pfns, shared_info is unmapped.
  k.canonicaliseStartInfo(cpu);
  k.unmapSharedInfo(cpu);
  s.phase = "suspended";
  k.printk(cpu, "xen:manage: suspending");
  // The state goes to the pages last: after this nothing of the kernel may change before the hypercall.
  const header = k.saveStateToPages(cpu);
  cpu.setRegister("rsp", header);
  cpu.setRegister("rip", k.symbols.xen_suspend_return);
  k.hc.suspend(cpu, k.pfnToMfn(cpu, k.startInfoPfn));
}

/**
 * After HYPERVISOR_suspend returned `rc` on CPU 0: 1 (non-zero) means cancelled, the domain goes
 * on where it was; 0 means a new domain, where every event channel must be bound again.
 */
export function afterSuspendHypercall(k: XenLinux, cpu: GuestCpu, rc: number): void {
  const s = k.suspend;
  const cancelled = rc !== 0;
  k.freeStatePages();
  // xen_pv_post_suspend.
  k.rebuildM2p(cpu);
  k.mapSharedInfo(cpu);
  k.buildMfnListList(cpu);
  if (cancelled) k.uncanonicaliseStartInfo(cpu);
  else {
    xenVcpuRestore(k, cpu);
    xenIrqResume(k, cpu);
    // xen_timer_resume: the periodic timer new vCPUs start with goes; each CPU programs its tick.
    for (let c = 0; c < k.nrCpus; c++) {
      if (!k.percpu[c]!.online) continue;
      k.hc.vcpuOp(cpu, VCPUOP.stop_periodic_timer, c);
      s.rearmTimer[c] = c !== 0;
    }
    k.programTimer(cpu);
  }
  // xen_mm_unpin_all.
  for (const id of s.savePinned) {
    const mm = k.mmu.mms.get(id);
    if (mm?.pinned) k.mmu.unpin(cpu, mm);
  }
  s.savePinned = [];
  s.phase = "none";
  s.irqsOff[0] = false;
  if (cancelled) {
    s.cancelled++;
    k.xenbus?.resumeCancelled();
  } else {
    s.resumed++;
    k.resumeDevices(cpu);
  }
  k.frozen = false;
  k.printk(cpu, cancelled ? "xen:manage: suspend cancelled, resuming" : "xen:manage: resumed in a new domain");
  k.printk(cpu, "Restarting tasks ... done.");
  k.irqRestore(cpu, false);
  flushCallQueue(k, cpu);
}

/** A parked CPU goes on, its events on again; in a new domain it programs its timer first. */
function leavePark(k: XenLinux, cpu: GuestCpu): void {
  const s = k.suspend;
  const c = cpu.vcpuId;
  s.parked[c] = false;
  s.irqsOff[c] = false;
  if (s.rearmTimer[c]) {
    s.rearmTimer[c] = false;
    k.programTimer(cpu);
  }
  k.irqRestore(cpu, false);
  flushCallQueue(k, cpu);
}

/** xen_vcpu_restore: the other vCPUs that Xen has up are taken down and brought up again. */
function xenVcpuRestore(k: XenLinux, cpu: GuestCpu): void {
  for (let c = 1; c < k.nrCpus; c++) {
    if (k.hc.vcpuOp(cpu, VCPUOP.is_up, c) <= 0) continue;
    k.hc.vcpuOp(cpu, VCPUOP.down, c);
    k.hc.vcpuOp(cpu, VCPUOP.up, c);
  }
}

/**
 * xen_irq_resume: the new domain has no event channels. The backend starts over (FIFO control
 * blocks again), every irq loses its port (the stale mappings cleared), then each CPU's VIRQs
 * and IPIs are bound again into new ports. Inter-domain channels stay unbound: their drivers
 * connect again through xenstore.
 */
export function xenIrqResume(k: XenLinux, cpu: GuestCpu): void {
  const ev = k.events;
  const rc = ev.backend.resume(cpu, (c) => k.percpu[c]?.online === true);
  if (rc < 0) throw new Error(`xen_irq_resume: the event channel ABI cannot resume: ${rc}`);
  if (k.fixEnabled("clear-stale-mappings")) ev.zapPortBindings();
  if (!k.fixEnabled("rebind-on-resume")) return;
  for (let c = 0; c < k.nrCpus; c++) {
    // restore_cpu_virqs and restore_cpu_ipis
    const virqs = ev.virqToIrq[c]!;
    for (let virq = 0; virq < virqs.length; virq++) {
      const irq = virqs[virq]!;
      if (irq < 0) continue;
      const port = k.hc.bindVirq(cpu, virq, c);
      if (port < 0) throw new Error(`xen_irq_resume: cannot bind VIRQ ${virq} on CPU ${c}: ${port}`);
      ev.rebindPort(cpu, irq, port, c);
      if (virq === VIRQ.TIMER) ev.timerPorts[c] = port;
    }
    const ipis = ev.ipiToIrq[c]!;
    for (let ipi = 0; ipi < ipis.length; ipi++) {
      const irq = ipis[ipi]!;
      if (irq < 0) continue;
      const port = k.hc.bindIpi(cpu, c);
      if (port < 0) throw new Error(`xen_irq_resume: cannot bind IPI ${ipi} on CPU ${c}: ${port}`);
      ev.rebindPort(cpu, irq, port, c);
    }
  }
}

