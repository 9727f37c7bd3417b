// `xensim demo` (npm start): the machine as it stands, in one short run with a readable report.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dumpEvtchn } from "../harness/dump.ts";
import { parseGuestConfig } from "../toolstack/libxl/guest_cfg.ts";
import { bootHost } from "../harness/machine.ts";
import { DEFAULT_HOST } from "../toolstack/libxl/host.ts";
import { allDomainInfo } from "../toolstack/xl/host_info.ts";
import { formatList } from "../toolstack/xl/xl_format.ts";
import { describeRun, parseScenario, runScenario } from "../harness/scenario.ts";

const DEMO = `
name = "demo"
description = "two domains, 4 vCPUs each: IPIs, timer ticks, an inter-domain ping-pong, processes on pinned pagetables"
pcpus = 2
run_ms = 40
drain_ms = 10
domain = [
  'name=alpha,memory=32,vcpus=4,guest_width=64,evtchn_abi=fifo,ipi_pingpong=500,pingpong_with=beta,pingpong_rounds=400,forkexec=6',
  'name=beta,memory=32,vcpus=4,guest_width=32,evtchn_abi=2l,ipi_pingpong=500,pingpong_with=alpha,pingpong_rounds=400,forkexec=4,mmapstress=1',
]
`;

export function runDemo(): number {
  const sc = parseScenario(DEMO, "demo");
  console.log("xensim demo: a Xen PV machine with 2 physical CPUs running two paravirtual guests.");
  console.log("  alpha: 64-bit guest, FIFO event channels;  beta: 32-bit (i386 PAE) guest, 2-level event channels.");
  console.log("  In each guest, CPU pairs bounce 500 smp_call_function_single IPIs; every vCPU takes a");
  console.log("  250 Hz timer tick from VIRQ_TIMER; alpha and beta ping-pong 400 times over an inter-domain channel.");
  console.log("  Processes fork, exec, fault pages in and exit on every vCPU: their pagetables are validated and");
  console.log("  pinned by Xen, switched lazily, shot down and unpinned; beta's also unmap and remap pages.\n");
  const r = runScenario(sc, 1);
  for (const line of describeRun(r)) console.log(line);
  console.log("\nHypervisor console (xl dmesg):");
  for (const l of r.hv.console.slice(0, 8)) console.log(`  (XEN) [${(l.time / 1e9).toFixed(6)}] ${l.text}`);
  for (const [domid, k] of r.kernels) {
    console.log(`\nd${domid} kernel log:`);
    for (const l of k.log.slice(0, 5)) console.log(`  ${l}`);
  }
  console.log("\nEvent channels at the end of the run (Xen's 'e' debug key, then the guest's irq table):");
  for (const l of dumpEvtchn(r.hv, r.kernels, 8)) console.log(`  ${l}`);
  console.log("  (the whole table: xensim run examples/pingpong.cfg --dump evtchn)");
  console.log(r.failures.length === 0 ? "\nAll checks passed (event-channel and MMU invariants, no lost wakeups, every page check, every workload complete)." : "\nFAILED:");
  for (const f of r.failures) console.log(`  ${f}`);
  const hostOk = demoHost();
  return r.failures.length === 0 && hostOk ? 0 : 1;
}

const MS = 1_000_000;

/** Part two: a host with dom0's xenstored, a guest from examples/guest.cfg, and a poweroff request. */
function demoHost(): boolean {
  console.log("\n--- A host: dom0 runs xenstored and xenconsoled; xl creates a guest and powers it off ---\n");
  const { host } = bootHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB: 512 });
  host.boot();
  const cfgPath = fileURLToPath(new URL("../../examples/guest.cfg", import.meta.url));
  const hd = host.create(parseGuestConfig(readFileSync(cfgPath, "utf8"), "examples/guest.cfg"));
  const dom = `/local/domain/${hd.domid}`;
  const until = (ms: number, cond: () => boolean) => {
    const end = host.now() + ms * MS;
    while (!cond() && host.now() < end) host.run(host.now() + MS);
    return cond();
  };
  const ready = until(500, () => host.xs.tryRead(`${dom}/control/feature-poweroff`) === "1");
  console.log("$ xl create examples/guest.cfg; xl list");
  for (const l of formatList(allDomainInfo(host)).trimEnd().split("\n")) console.log(`  ${l}`);
  console.log(`\n$ xenstore-ls ${dom}   (excerpt)`);
  for (const key of ["name", "domid", "vm", "memory/target", "store/port", "console/port", "control/feature-poweroff"]) {
    console.log(`  ${key} = "${host.xs.tryRead(`${dom}/${key}`) ?? "?"}"`);
  }
  console.log(`\n$ xl console ${hd.cfg.name}   (first lines)`);
  for (const l of hd.console.text.split("\n").slice(0, 2)) console.log(`  ${l}`);
  console.log(`\n$ xenstore-write ${dom}/control/shutdown poweroff`);
  host.xs.write(`${dom}/control/shutdown`, "poweroff");
  const gone = until(500, () => host.tryInfo(hd.domid) === undefined);
  for (const l of hd.kernel.log.slice(-1)) console.log(`  guest: ${l}`);
  for (const l of host.log.filter((x) => x.includes(`Domain ${hd.domid}`) || x.includes("Action for"))) console.log(`  xl: ${l}`);
  console.log("$ xl list");
  for (const l of formatList(allDomainInfo(host)).trimEnd().split("\n")) console.log(`  ${l}`);
  const ok = ready && gone;
  console.log(
    ok
      ? "\nThe guest's xenbus watch saw the request, cleared it in a transaction and shut down; @releaseDomain fired and the toolstack destroyed it."
      : "\nFAILED: the guest did not come up or did not shut down.",
  );
  console.log("Run it for real (in the clone): npx xensim up --dir /tmp/h; npx xensim -H /tmp/h create examples/guest.cfg; npx xensim -H /tmp/h list");
  console.log("(`npm link` in the clone puts `xensim` itself on PATH.)");
  return ok;
}
