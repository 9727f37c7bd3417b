// What `xl list`, `vcpu-list`, `uptime` and `info` report, read from the host's hypervisor the way
// libxl reads it through domctl/sysctl.

import { DOMINF, dominfShutdownCode, type XenDomctlGetdomaininfo } from "../../abi/domctl.ts";
import { SHUTDOWN } from "../../abi/xen.ts";
import { errnoName } from "../libxc/errno.ts";
import { type Host, HostError } from "../libxl/host.ts";
import { formatAffinity, type XlDomainInfo, type XlHostInfo } from "./xl_format.ts";

/** libxl_list_domain / libxl_list_vcpu for one domain: getdomaininfo, getvcpuinfo, and the name in xenstore. */
export function domainInfo(host: Host, info: XenDomctlGetdomaininfo): XlDomainInfo {
  const domid = info.domain;
  const hd = host.domains.get(domid);
  const nrPcpus = physinfo(host).nrCpus;
  const all = Array.from({ length: nrPcpus }, (_, i) => i);
  const vcpus = [];
  for (let id = 0; id <= info.maxVcpuId && info.maxVcpuId !== 0xffffffff; id++) {
    const v = host.xc.getvcpuinfo(domid, id);
    if (typeof v === "number") continue;
    vcpus.push({
      id,
      cpu: v.cpu,
      online: v.online,
      running: v.running,
      blocked: v.blocked,
      timeNs: v.cpuTime,
      hardAffinity: formatAffinity(all, nrPcpus),
      softAffinity: formatAffinity(all, nrPcpus),
    });
  }
  const memKb = info.totPages * 4;
  const shutdown = (info.flags & DOMINF.shutdown) !== 0;
  const reason = dominfShutdownCode(info.flags);
  return {
    name: host.xs.tryRead(`/local/domain/${domid}/name`) ?? "",
    domid,
    uuid: formatUuid(info.handle),
    memKb,
    maxMemKb: hd ? hd.cfg.maxmemMiB * 1024 : memKb,
    vcpusOnline: info.nrOnlineVcpus,
    running: (info.flags & DOMINF.running) !== 0,
    blocked: (info.flags & DOMINF.blocked) !== 0,
    paused: (info.flags & DOMINF.paused) !== 0,
    shutdown,
    shutdownReason: shutdown ? reason : undefined,
    crashed: shutdown && reason === SHUTDOWN.crash,
    dying: (info.flags & DOMINF.dying) !== 0,
    cpuTimeNs: info.cpuTime,
    startTimeSec: (hd?.createdNs ?? 0) / 1e9,
    vcpus,
  };
}

export function allDomainInfo(host: Host): XlDomainInfo[] {
  return host.domids().map((domid) => domainInfo(host, host.info(domid)));
}

function physinfo(host: Host) {
  const p = host.xc.physinfo();
  if (typeof p === "number") throw new HostError(`physinfo failed (${errnoName(p)})`);
  return p;
}

/** A domain handle as libxl prints a UUID. */
function formatUuid(handle: Uint8Array): string {
  const h = Array.from(handle, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function hostInfo(host: Host, hostname: string): XlHostInfo {
  const p = physinfo(host);
  const nrCpus = p.nrCpus;
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
    cpuKhz: p.cpuKhz,
    hwCaps: [],
    virtCaps: {
      pv: p.capPv,
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
    totalPages: p.totalPages,
    freePages: p.freePages,
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
