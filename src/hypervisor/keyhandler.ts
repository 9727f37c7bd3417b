// Xen's debug keys (common/keyhandler.c): `xl debug-keys` presses them and each handler prints
// its report to Xen's console, which `xl dmesg` shows.

import type { Domain } from "./domain.ts";
import { ECS, ECS_NAMES } from "./evtchn.ts";
import type { Hypervisor } from "./hypervisor.ts";

const KEYS: Readonly<Record<string, string>> = {
  e: "dump evtchn info",
  h: "show this message",
  m: "memory info",
  q: "dump domain (and guest debug) info",
  r: "dump run queues",
};

/** Presses `keys` in order; unknown keys are ignored, as Xen ignores them. */
export function handleDebugKeys(hv: Hypervisor, keys: string): void {
  for (const key of keys) {
    const lines = debugKey(hv, key);
    for (const line of lines) hv.log(line);
  }
}

function debugKey(hv: Hypervisor, key: string): string[] {
  switch (key) {
    case "h":
      return ["'h' pressed -> showing installed handlers", ...Object.entries(KEYS).map(([k, what]) => ` key '${k}' (ascii '${k.charCodeAt(0).toString(16)}') => ${what}`)];
    case "e": {
      const out = ["'e' pressed -> dumping event-channel info"];
      for (const d of hv.domains.values()) out.push(...evtchnInfo(d));
      return out;
    }
    case "q": {
      const out = [`'q' pressed -> dumping domain info (now = ${hv.sched.now()})`];
      for (const d of hv.domains.values()) {
        out.push(`General information for domain ${d.domid}:`);
        out.push(`    refcnt=1 dying=${d.state === "dying" ? 2 : 0} pause_count=${d.pauseCount}`);
        out.push(`    nr_pages=${d.p2m.length} max_pages=${d.p2m.length} shared_pages=0 paged_pages=0`);
        out.push(`    shutdown=${d.state === "shutdown" ? 1 : 0} reason=${d.shutdownCode}`);
        out.push(`VCPU information and callbacks for domain ${d.domid}:`);
        for (const v of d.vcpus) {
          out.push(`  VCPU${v.id}: CPU${Math.max(v.pcpu, 0)} [has=${v.pcpu >= 0 ? "T" : "F"}] poll=${d.pollers.has(v) ? 1 : 0} upcall_pend=${v.upcallPending ? "01" : "00"} upcall_mask=${v.upcallMask ? "01" : "00"}`);
        }
      }
      return out;
    }
    case "r": {
      return ["'r' pressed -> dumping run queues", ...hv.sched.dump()];
    }
    case "m":
      return [
        "'m' pressed -> dumping memory info",
        `Physical memory information:`,
        `    Xen heap: 0kB free`,
        `    Dom heap: ${hv.memory.framesFree * 4}kB free`,
      ];
    default:
      return [];
  }
}

/** One domain's ports, as dump_evtchn_info prints them. */
export function evtchnInfo(d: Domain, limit = Number.POSITIVE_INFINITY): string[] {
  const t = d.evtchn;
  const out: string[] = [];
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
  return out;
}
