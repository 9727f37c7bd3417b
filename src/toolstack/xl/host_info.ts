// What `xl list`, `vcpu-list`, `uptime` and `info` report, read from the host's hypervisor the way
// libxl reads it through domctl/sysctl.

import { RUNSTATE, SHUTDOWN } from "../../abi/xen.ts";
import type { Domain } from "../../hypervisor/domain.ts";
import type { Host } from "../libxl/host.ts";
import { formatAffinity, type XlDomainInfo, type XlHostInfo } from "./xl_format.ts";

export function domainInfo(host: Host, d: Domain): XlDomainInfo {
  const hd = host.domains.get(d.domid);
  const nrPcpus = host.hv.sched.pcpus.length;
  const all = Array.from({ length: nrPcpus }, (_, i) => i);
  const vcpus = d.vcpus.map((v) => ({
    id: v.id,
    cpu: Math.max(v.pcpu, 0),
    online: !v.down,
    // The model's runstates record only "running"; the scheduler's flags say more.
    running: v.pcpu >= 0 && !v.blocked && !v.down,
    blocked: v.blocked,
    timeNs: v.runstateTime[RUNSTATE.running]! + (v.runstate === RUNSTATE.running ? host.now() - v.runstateEntry : 0),
    hardAffinity: formatAffinity(all, nrPcpus),
    softAffinity: formatAffinity(all, nrPcpus),
  }));
  const memKb = d.p2m.length * 4;
  return {
    name: d.name,
    domid: d.domid,
    uuid: hd?.uuid ?? "00000000-0000-0000-0000-000000000000",
    memKb,
    maxMemKb: hd ? hd.cfg.maxmemMiB * 1024 : memKb,
    vcpusOnline: vcpus.filter((v) => v.online).length,
    running: vcpus.some((v) => v.running),
    blocked: d.state === "running" && vcpus.every((v) => !v.running) && vcpus.some((v) => v.blocked),
    paused: d.pauseCount > 0,
    shutdown: d.state === "shutdown",
    shutdownReason: d.state === "shutdown" ? d.shutdownCode : undefined,
    crashed: d.state === "shutdown" && d.shutdownCode === SHUTDOWN.crash,
    dying: d.state === "dying",
    cpuTimeNs: vcpus.reduce((n, v) => n + v.timeNs, 0),
    startTimeSec: (hd?.createdNs ?? 0) / 1e9,
    vcpus,
  };
}

export function allDomainInfo(host: Host): XlDomainInfo[] {
  return [...host.hv.domains.values()].sort((a, b) => a.domid - b.domid).map((d) => domainInfo(host, d));
}

export function hostInfo(host: Host, hostname: string): XlHostInfo {
  const hv = host.hv;
  const nrCpus = hv.sched.pcpus.length;
  return {
    host: hostname,
    release: "xensim",
    version: "0.1.0",
    machine: "x86_64",
    nrCpus,
    maxCpuId: nrCpus - 1,
    nrNodes: 1,
    coresPerSocket: nrCpus,
    threadsPerCore: 1,
    // The virtual TSC runs at 1 GHz.
    cpuKhz: 1_000_000,
    hwCaps: [],
    virtCaps: {
      pv: true,
      hvm: false,
      directio: false,
      hap: false,
      shadow: false,
      iommuHapPtShare: false,
      vmtrace: false,
      vpmu: false,
      gnttabV1: false,
      gnttabV2: false,
    },
    totalPages: hv.memory.nrFrames,
    freePages: hv.memory.framesFree,
    outstandingPages: 0,
    sharingFreedPages: 0,
    sharingUsedFrames: 0,
    freeCpus: 0,
    xenMajor: 4,
    xenMinor: 17,
    xenExtra: ".0-xensim",
    xenCaps: "xen-3.0-x86_64 xen-3.0-x86_32p",
    xenScheduler: "credit2",
    xenPagesize: 4096,
    virtStart: HYPERVISOR_VIRT_START_64,
    xenChangeset: "xensim",
    xenCommandline: `pcpus=${nrCpus} seed=${host.params.seed}`,
    ccCompiler: "xensim (TypeScript)",
    ccCompileBy: "xensim",
    ccCompileDomain: "",
    ccCompileDate: "",
    buildId: "",
  };
}

/** x86_64's HYPERVISOR_VIRT_START (the start of the L4 slots Xen reserves). */
const HYPERVISOR_VIRT_START_64 = 0xffff800000000000n;
