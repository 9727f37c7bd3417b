// `--dump evtchn`: each domain's event-channel table in the spirit of Xen's 'e' debug key
// (dump_evtchn_info), followed by the guest kernel's irq bindings (as Linux's
// /proc/interrupts and xen_debug_interrupt show them).

import type { Hypervisor } from "../hypervisor/hypervisor.ts";
import { evtchnInfo } from "../hypervisor/keyhandler.ts";
import { IRQT_NAMES } from "../guest/events.ts";
import type { XenLinux } from "../guest/kernel.ts";

/** `limit` caps the ports and irqs shown per domain (the demo's short form). */
export function dumpEvtchn(hv: Hypervisor, kernels: ReadonlyMap<number, XenLinux>, limit = Number.POSITIVE_INFINITY): string[] {
  const out = ["'e' pressed -> dumping event-channel info"];
  for (const d of hv.domains.values()) {
    out.push(...evtchnInfo(d, limit));
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
