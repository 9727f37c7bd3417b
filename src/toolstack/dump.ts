// `--dump evtchn`: each domain's event-channel table in the spirit of Xen's 'e' debug key
// (dump_evtchn_info), followed by the guest kernel's irq bindings (as Linux's
// /proc/interrupts and xen_debug_interrupt show them).

import type { Hypervisor } from "../hypervisor/hypervisor.ts";
import { ECS, ECS_NAMES } from "../hypervisor/evtchn.ts";
import { IRQT_NAMES } from "../guest/events.ts";
import type { XenLinux } from "../guest/kernel.ts";

/** `limit` caps the ports and irqs shown per domain (the demo's short form). */
export function dumpEvtchn(hv: Hypervisor, kernels: ReadonlyMap<number, XenLinux>, limit = Number.POSITIVE_INFINITY): string[] {
  const out = ["'e' pressed -> dumping event-channel info"];
  for (const d of hv.domains.values()) {
    const t = d.evtchn;
    const polling = [...d.pollers].map((v) => v.id);
    out.push(`Event channel information for domain ${d.domid} (${d.name}), ${d.portOps.name} ABI:`);
    out.push(`Polling vCPUs: {${polling.join(",")}}`);
    out.push(d.fifo ? "    port [p/m/l link prio]" : "    port [p/m/s]");
    let shown = 0;
    for (let port = 1; port < t.validPorts; port++) {
      const st = t.state[port]!;
      if (st === ECS.FREE) continue;
      if (shown++ >= limit) {
        out.push("    ...");
        break;
      }
      const p = d.portOps.isPending(port) ? 1 : 0;
      const m = d.portOps.isMasked(port) ? 1 : 0;
      let extra: string;
      if (d.fifo) extra = d.fifo.describe(port);
      else {
        const v = d.vcpus[t.notifyVcpu[port]!]!;
        const sel = port >>> (d.width === 64 ? 6 : 5);
        extra = String((d.sharedInfoWords[v.pendingSelWord + (sel >>> 5)]! >>> (sel & 31)) & 1);
      }
      let line = `    ${String(port).padStart(4)} [${p}/${m}/${extra}]: s=${st} n=${t.notifyVcpu[port]} x=0`;
      if (st === ECS.UNBOUND) line += ` u=${t.remoteDom[port]}`;
      else if (st === ECS.INTERDOMAIN) line += ` d=${t.remoteDom[port]} p=${t.remotePort[port]}`;
      else if (st === ECS.VIRQ) line += ` v=${t.virqOrVcpu[port]}`;
      out.push(`${line.padEnd(48)} ${ECS_NAMES[st]}`);
    }
    const k = kernels.get(d.domid);
    if (!k?.booted) continue;
    out.push(`  guest irqs (domain ${d.domid}):`);
    out.push("     irq type   port cpu chip             refs  count handler");
    let irqsShown = 0;
    for (const info of k.events.irqs) {
      if (!info) continue;
      if (irqsShown++ >= limit) {
        out.push("    ...");
        break;
      }
      const what = info.type === 2 ? `virq ${info.index}` : info.type === 3 ? `ipi ${info.index}` : IRQT_NAMES[info.type]!;
      out.push(
        `    ${String(info.irq).padStart(4)} ${what.padEnd(7)}${String(info.evtchn).padStart(4)} ${String(info.cpu).padStart(3)} ${info.chip.padEnd(16)}${String(info.refcnt).padStart(5)} ${String(info.count).padStart(6)} ${info.handler}`,
      );
    }
  }
  return out;
}
