// `xensim demo` (npm start): the machine as it stands, in one short run with a readable report.

import { dumpEvtchn } from "../toolstack/dump.ts";
import { describeRun, parseScenario, runScenario } from "../toolstack/scenario.ts";

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
  return r.failures.length === 0 ? 0 : 1;
}
