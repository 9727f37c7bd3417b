// What `xl list`, `vcpu-list`, `uptime` and `info` report, read from the host's hypervisor the way
// libxl reads it through domctl/sysctl.

import { DOMINF, dominfShutdownCode, XEN_DOMCTL_SCHEDOP, XEN_SCHEDULER, type XenDomctlGetdomaininfo } from "../../abi/domctl.ts";
import { SHUTDOWN } from "../../abi/xen.ts";
import { errnoName } from "../libxc/errno.ts";
import { type Host, HostError } from "../libxl/host.ts";
import type { GuestConfig } from "../libxl/guest_cfg.ts";
import { cfgNumber, cfgString, parseXlCfg } from "../libxl/xlcfg.ts";
import { formatAffinity, type LibxlConfigView, type XlDomainInfo, type XlHostInfo } from "./xl_format.ts";

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
    // libxl_list_vcpu: xc_vcpu_getaffinity's hard and soft maps
    const aff = host.xc.getvcpuaffinity(domid, id);
    const cpusIn = (bits: Uint8Array) => all.filter((c) => ((bits[c >> 3] ?? 0) >> (c & 7)) & 1);
    vcpus.push({
      id,
      cpu: v.cpu,
      online: v.online,
      running: v.running,
      blocked: v.blocked,
      timeNs: v.cpuTime,
      hardAffinity: formatAffinity(typeof aff === "number" ? all : cpusIn(aff.hard), nrPcpus),
      softAffinity: formatAffinity(typeof aff === "number" ? all : cpusIn(aff.soft), nrPcpus),
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
    startTimeSec: domid === 0 ? host.wallclockBaseSec : startTime(host, domid, hd?.createdNs ?? 0),
    vcpus,
  };
}

/** libxl_vm_get_start_time: /vm/UUID/start_time, read with strtoul (the fraction drops). */
function startTime(host: Host, domid: number, createdNs: number): number {
  const vm = host.xs.tryRead(`/local/domain/${domid}/vm`);
  const text = vm === undefined ? undefined : host.xs.tryRead(`${vm}/start_time`);
  const m = text === undefined ? null : /^\s*(\d+)/.exec(text);
  return m ? Number(m[1]) : host.wallclockBaseSec + createdNs / 1e9;
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
    // libxl_scheduler_to_string of XEN_SYSCTL_sched_id; the interleaver is the model's own
    xenScheduler: host.xc.sched_id() === XEN_SCHEDULER.CREDIT ? "credit" : "interleave",
    xenPagesize: 4096,
    virtStart: HYPERVISOR_VIRT_START_64,
    xenChangeset: "xensim",
    xenCommandline: `pcpus=${nrCpus} seed=${host.params.seed}`,
    ccCompiler: "xensim (TypeScript)",
    ccCompileBy: "xensim",
    ccCompileDomain: "",
    ccCompileDate: "",
    buildId: "",
    pace: host.pace,
  };
}

/** The domain's credit weight and cap (XEN_DOMCTL_scheduler_op getinfo); credit's defaults elsewhere. */
function creditParams(host: Host, domid: number): { weight: number; cap: number } {
  const p = host.xc.scheduler_op(domid, XEN_SCHEDULER.CREDIT, XEN_DOMCTL_SCHEDOP.getinfo);
  return typeof p === "number" ? { weight: 256, cap: 0 } : p;
}

/** x86_64's HYPERVISOR_VIRT_START (the start of the L4 slots Xen reserves). */
const HYPERVISOR_VIRT_START_64 = 0xffff800000000000n;

// ---- the domain configuration, as libxl keeps it (xl list -l, xl create -n) ----

/** xl's INVALID_DOMID (~0 in a uint32_t), which create_domain stores in c_info.domid as its domid_policy. */
const XL_INVALID_DOMID = 0xffffffff;

/** What the config file itself set, as xl's parse_config_data reads it into libxl_domain_config. */
function parsedView(cfg: GuestConfig): Omit<LibxlConfigView, "runHotplugScripts" | "claimMode"> {
  const src = cfg.source ? parseXlCfg(cfg.source.text, cfg.source.file) : undefined;
  // without its text (a domain the toolstack made itself), every value counts as set
  const given = (key: string) => (src ? src.entries.has(key) : key !== "max_event_channels");
  const number = (key: string) => (src ? cfgNumber(src, key) : undefined);
  const vcpus = given("vcpus") ? cfg.vcpus : 0;
  const target = src ? number("memory") : cfg.memoryMiB;
  const max = src ? number("maxmem") : cfg.maxmemMiB;
  return {
    name: cfg.name,
    uuid: cfg.uuid,
    maxVcpus: given("maxvcpus") ? cfg.maxVcpus : vcpus,
    availVcpus: Array.from({ length: vcpus }, (_, i) => i),
    targetMemKb: target === undefined ? undefined : target * 1024,
    maxMemKb: max !== undefined ? max * 1024 : target !== undefined ? target * 1024 : undefined,
    eventChannels: number("max_event_channels"),
    kernel: given("kernel") ? cfg.kernel : undefined,
    // parse_cmdline's result; the workload options this model appends are part of it
    cmdline: cfg.cmdline === "" ? undefined : cfg.cmdline,
    onPoweroff: cfg.onPoweroff,
    onReboot: cfg.onReboot,
    onWatchdog: (src && cfgString(src, "on_watchdog")) ?? "destroy",
    onCrash: cfg.onCrash,
    onSoftReset: (src && cfgString(src, "on_soft_reset")) ?? "soft-reset",
  };
}

/** `xl create -n`: the parsed config, before libxl fills in any default (no domid yet). */
export function dryRunConfig(cfg: GuestConfig): LibxlConfigView {
  return { ...parsedView(cfg), runHotplugScripts: true, claimMode: true };
}

/**
 * libxl_retrieve_domain_configuration for a domain this host created: the config saved at
 * create time (c_info.domid as xl set it, video_memkb and msr_relaxed as libxl pinned them),
 * then the name from xenstore, the UUID from the hypervisor, avail_vcpus from
 * cpu/N/availability, the memory target and static-max from xenstore, and the scheduler's
 * parameters. Undefined for a domain without a saved config (dom0: xl leaves it out).
 */
export function retrievedConfig(host: Host, domid: number): LibxlConfigView | undefined {
  const hd = host.domains.get(domid);
  const info = host.tryInfo(domid);
  if (!hd || !info) return undefined;
  const dom = `/local/domain/${domid}`;
  const base = parsedView(hd.cfg);
  const kb = (path: string) => {
    const v = host.xs.tryRead(path);
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const avail: number[] = [];
  for (let i = 0; i < base.maxVcpus; i++) if (host.xs.tryRead(`${dom}/cpu/${i}/availability`) === "online") avail.push(i);
  return {
    ...base,
    name: host.xs.tryRead(`${dom}/name`) ?? base.name,
    uuid: formatUuid(info.handle),
    domid: XL_INVALID_DOMID,
    runHotplugScripts: true,
    claimMode: true,
    availVcpus: avail,
    targetMemKb: kb(`${dom}/memory/target`),
    maxMemKb: kb(`${dom}/memory/static-max`),
    videoMemKb: 0,
    // libxl_domain_sched_params_get: credit and credit2 report the domain's weight and cap
    sched: { sched: hostInfo(host, "").xenScheduler, ...creditParams(host, domid) },
    msrRelaxed: false,
  };
}
