// Booting a host machine: Xen starts, builds dom0 with its own authority (as construct_dom0
// does at boot; the model reuses libxc's builder for it) and lets it run. The toolstack gets
// the machine as dom0 sees it: privcmd and a clock. Tests may keep the hypervisor too.

import type { GuestImage } from "../abi/cpu.ts";
import { DOMID_XEN, openPrivcmd } from "../hypervisor/domctl.ts";
import { Hypervisor } from "../hypervisor/hypervisor.ts";
import { buildDomain, type DomainSpec } from "../toolstack/libxc/builder.ts";
import { type BootMachine, Host, type HostParams, type Machine } from "../toolstack/libxl/host.ts";

/** The BootMachine for a host of `params`; `onBoot` sees the hypervisor once it exists. */
export function bootMachine(params: HostParams, onBoot: (hv: Hypervisor) => void = () => {}): BootMachine {
  return (dom0Kernel: GuestImage, dom0: DomainSpec): Machine => {
    const hv = new Hypervisor({
      nrFrames: (params.machineMiB * 1024 * 1024) / 4096,
      firstDomid: 0,
      sched: { nrPcpus: params.pcpus, seed: params.seed, kind: params.sched ?? "credit" },
      disabledFixes: params.xenDisabledFixes ?? [],
    });
    onBoot(hv);
    const xen = openPrivcmd(hv, DOMID_XEN);
    const built = buildDomain(xen, dom0, dom0Kernel);
    const rc = xen.unpausedomain(built.domid);
    if (rc < 0) throw new Error(`dom0 would not start (${rc})`);
    return { xc: openPrivcmd(hv, built.domid), run: (until, maxSteps) => hv.run(until, maxSteps), now: () => hv.sched.now() };
  };
}

/** A host and, for tests and the demo, the hypervisor under it. */
export function bootHost(params: HostParams): { host: Host; hv: Hypervisor } {
  let hv: Hypervisor | undefined;
  const host = new Host(
    params,
    bootMachine(params, (h) => {
      hv = h;
    }),
  );
  return { host, hv: hv! };
}
