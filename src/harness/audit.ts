// The event-channel auditor: invariants that must hold between any two scheduling steps, checked
// across the hypervisor's port table and each guest kernel's irq maps. It reads both worlds, as
// a debugger would; nothing in the machine depends on it.

import { virqIsPerVcpu } from "../abi/xen.ts";
import type { Domain } from "../hypervisor/domain.ts";
import { ECS } from "../hypervisor/evtchn.ts";
import type { Hypervisor } from "../hypervisor/hypervisor.ts";
import { EVT_MASK_REASON, IRQT } from "../guest/events.ts";
import type { XenLinux } from "../guest/kernel.ts";

export function auditEvtchn(hv: Hypervisor, kernels: ReadonlyMap<number, XenLinux>): string[] {
  const out: string[] = [];
  for (const d of hv.domains.values()) {
    auditPorts(hv, d, out);
    const k = kernels.get(d.domid);
    if (k?.booted && d.state === "running") auditGuestMaps(d, k, out);
  }
  return out;
}

function auditPorts(hv: Hypervisor, d: Domain, out: string[]): void {
  const t = d.evtchn;
  if (t.state[0] !== ECS.RESERVED) out.push(`d${d.domid}: port 0 is not reserved`);
  for (let port = 1; port < t.validPorts; port++) {
    const st = t.state[port];
    if (st === ECS.INTERDOMAIN) {
      const rd = hv.domainById(t.remoteDom[port]!);
      if (!rd) continue;
      const rp = t.remotePort[port]!;
      const rt = rd.evtchn;
      if (rt.state[rp] !== ECS.INTERDOMAIN || rt.remoteDom[rp] !== d.domid || rt.remotePort[rp] !== port) {
        out.push(`d${d.domid} port ${port}: interdomain peer d${rd.domid}:${rp} does not point back`);
      }
    } else if (st === ECS.VIRQ) {
      const virq = t.virqOrVcpu[port]!;
      const v = d.vcpus[t.notifyVcpu[port]!];
      if (virqIsPerVcpu(virq) && v?.virqToEvtchn[virq] !== port) {
        out.push(`d${d.domid} port ${port}: VIRQ ${virq} not recorded on vCPU ${t.notifyVcpu[port]}`);
      }
    }
  }
  for (const v of d.vcpus) {
    for (let virq = 0; virq < v.virqToEvtchn.length; virq++) {
      const port = v.virqToEvtchn[virq]!;
      if (port !== 0 && (t.state[port] !== ECS.VIRQ || t.virqOrVcpu[port] !== virq)) {
        out.push(`d${d.domid}v${v.id}: VIRQ ${virq} maps to port ${port}, which is not bound to it`);
      }
    }
  }
}

function auditGuestMaps(d: Domain, k: XenLinux, out: string[]): void {
  const ev = k.events;
  const t = d.evtchn;
  for (let port = 1; port < ev.evtchnToIrq.length && port < t.capacity; port++) {
    const irq = ev.evtchnToIrq[port]!;
    if (irq === -1) continue;
    const info = ev.irqs[irq];
    if (!info || info.evtchn !== port) {
      out.push(`d${d.domid}: evtchn_to_irq[${port}] = ${irq}, but irq ${irq} is on port ${info?.evtchn}`);
      continue;
    }
    if (t.state[port] === ECS.FREE) {
      out.push(`d${d.domid}: guest irq ${irq} is bound to port ${port}, which Xen has free`);
      continue;
    }
    if (info.type !== IRQT.EVTCHN && t.notifyVcpu[port] !== info.cpu) {
      out.push(`d${d.domid}: irq ${irq} (port ${port}) is on CPU ${info.cpu} but Xen notifies vCPU ${t.notifyVcpu[port]}`);
    }
    // A lost wakeup: a deliverable event that no vCPU will ever look at.
    if (info.maskReason === 0 && d.portOps.isPending(port) && !d.portOps.isMasked(port)) {
      const v = d.vcpus[t.notifyVcpu[port]!];
      if (v && !v.down && !v.pollPorts && (!v.upcallPending || v.blocked)) {
        out.push(
          `d${d.domid}: port ${port} (irq ${irq}) pending and unmasked, but vCPU ${v.id} ${v.blocked ? "sleeps" : "has no upcall pending"}: lost wakeup`,
        );
      }
    }
  }
  for (const info of ev.irqs) {
    if (info && info.evtchn !== 0 && ev.evtchnToIrq[info.evtchn] !== info.irq) {
      out.push(`d${d.domid}: irq ${info.irq} says port ${info.evtchn}, evtchn_to_irq says ${ev.evtchnToIrq[info.evtchn]}`);
    }
    if (info && info.maskReason & EVT_MASK_REASON.EOI_PENDING && info.chip !== "xen-dyn-lateeoi") {
      out.push(`d${d.domid}: irq ${info.irq} waits for a late EOI on a ${info.chip} chip`);
    }
  }
}
