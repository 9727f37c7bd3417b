// The host's side of xl's scheduling commands: `sched-credit` (libxl_domain_sched_params_get/set
// and libxl_sched_credit_params_get/set, with libxl's range checks and messages) and `vcpu-pin`
// (xl's cpu-range parsing, libxl_set_vcpuaffinity[_all]), through domctl and sysctl. The client
// (src/cli/xl_sched.ts) prints the answers with the formatters below, as tools/xl/xl_sched.c and
// xl_vcpu.c do.

import {
  XEN_DOMCTL_SCHEDOP,
  XEN_SCHEDULER,
  XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US,
  XEN_SYSCTL_CSCHED_TSLICE_MAX,
  XEN_SYSCTL_CSCHED_TSLICE_MIN,
  XEN_SYSCTL_SCHED_RATELIMIT_MAX,
  XEN_SYSCTL_SCHED_RATELIMIT_MIN,
  XEN_SYSCTL_SCHEDOP,
  XEN_VCPUAFFINITY,
} from "../../abi/domctl.ts";
import { XEN_ERRNO } from "../../abi/xen.ts";
import type { SchedCreditParams } from "../../hypervisor/domctl.ts";
import { type Host, HostError } from "../libxl/host.ts";
import type { XlHandler, XlRequest } from "./xl_commands.ts";

/** One row of `xl sched-credit`. */
export interface CreditDomainRow {
  name: string;
  domid: number;
  weight: number;
  cap: number;
}

/** The only cpupool. */
const POOL = "Pool-0";

/** strerror() of the errnos these paths can meet. */
const STRERROR: Readonly<Record<number, string>> = {
  [XEN_ERRNO.EPERM]: "Operation not permitted",
  [XEN_ERRNO.ESRCH]: "No such process",
  [XEN_ERRNO.EINVAL]: "Invalid argument",
  [XEN_ERRNO.EBUSY]: "Device or resource busy",
};

function strerror(rc: number): string {
  return STRERROR[-rc] ?? `Unknown error ${-rc}`;
}

/** A line as libxl logs it through xl's logger (libxl__logv: "Domain N:" only for a guest). */
function libxlLog(level: "error" | "warning", line: number, func: string, domid: number | undefined, msg: string): string {
  const domain = domid !== undefined && domid > 0 && domid < 0x7ff0 ? `Domain ${domid}:` : "";
  return `libxl: ${level}: libxl_sched.c:${line}:${func}: ${domain}${msg}`;
}

/** strtol(s, NULL, 10) as xl reads its numeric options: leading digits, 0 when there are none. */
export function strtol(s: string): number {
  const m = /^\s*([+-]?\d+)/.exec(s);
  return m ? Number(m[1]) : 0;
}

// ---- sched-credit ----

function creditDomain(host: Host, domid: number): CreditDomainRow {
  const p = host.xc.scheduler_op(domid, XEN_SCHEDULER.CREDIT, XEN_DOMCTL_SCHEDOP.getinfo);
  if (typeof p === "number") {
    throw new HostError(
      `${libxlLog("error", 203, "sched_credit_domain_get", domid, `Getting domain sched credit: ${strerror(p)}`)}\nlibxl_domain_sched_params_get failed.`,
    );
  }
  return { name: host.xs.tryRead(`/local/domain/${domid}/name`) ?? "", domid, weight: p.weight, cap: p.cap };
}

function poolParams(host: Host): SchedCreditParams | undefined {
  const p = host.xc.sched_credit_params(0, XEN_SYSCTL_SCHEDOP.getinfo);
  return typeof p === "number" ? undefined : p;
}

/** libxl_sched_credit_params_set's checks, then the sysctl; the message xl prints on failure. */
function setPoolParams(host: Host, p: SchedCreditParams): void {
  const fail = (line: number, msg: string, func = "libxl_sched_credit_params_set") =>
    new HostError(`${libxlLog("error", line, func, undefined, msg)}\nlibxl_sched_credit_params_set failed.`);
  if (p.tsliceMs < XEN_SYSCTL_CSCHED_TSLICE_MIN || p.tsliceMs > XEN_SYSCTL_CSCHED_TSLICE_MAX) {
    throw fail(311, `Time slice out of range, valid range is from ${XEN_SYSCTL_CSCHED_TSLICE_MIN} to ${XEN_SYSCTL_CSCHED_TSLICE_MAX}`);
  }
  if (p.ratelimitUs !== 0 && (p.ratelimitUs < XEN_SYSCTL_SCHED_RATELIMIT_MIN || p.ratelimitUs > XEN_SYSCTL_SCHED_RATELIMIT_MAX)) {
    throw fail(270, `Ratelimit out of range, valid range is from ${XEN_SYSCTL_SCHED_RATELIMIT_MIN} to ${XEN_SYSCTL_SCHED_RATELIMIT_MAX}`, "sched_ratelimit_check");
  }
  if (p.ratelimitUs > p.tsliceMs * 1000) throw fail(321, "Ratelimit cannot be greater than timeslice");
  if (p.vcpuMigrDelayUs < 0 || p.vcpuMigrDelayUs > XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US) {
    throw fail(326, `vcpu migration delay should be >= 0 and <= ${XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US}us`);
  }
  const rc = host.xc.sched_credit_params(0, XEN_SYSCTL_SCHEDOP.putinfo, p);
  if (typeof rc === "number") throw fail(338, `Setting Credit scheduler parameters: ${strerror(rc)}`);
}

/** sched_credit_domain_set: libxl's ranges (Xen itself takes any uint16), then the domctl. */
function setCreditDomain(host: Host, domid: number, weight: number | undefined, cap: number | undefined): void {
  const fail = (line: number, msg: string) => new HostError(`${libxlLog("error", line, "sched_credit_domain_set", domid, msg)}\nlibxl_domain_sched_params_set failed.`);
  const info = host.info(domid);
  const cur = host.xc.scheduler_op(domid, XEN_SCHEDULER.CREDIT, XEN_DOMCTL_SCHEDOP.getinfo);
  if (typeof cur === "number") throw fail(232, `Getting domain sched credit: ${strerror(cur)}`);
  const next = { ...cur };
  if (weight !== undefined) {
    if (weight < 1 || weight > 65535) throw fail(238, "Cpu weight out of range, valid values are within range from 1 to 65535");
    next.weight = weight;
  }
  if (cap !== undefined) {
    const max = (info.maxVcpuId + 1) * 100;
    if (cap < 0 || cap > max) throw fail(248, `Cpu cap out of range, valid range is from 0 to ${max} for specified number of vcpus`);
    next.cap = cap;
  }
  const rc = host.xc.scheduler_op(domid, XEN_SCHEDULER.CREDIT, XEN_DOMCTL_SCHEDOP.putinfo, next);
  if (typeof rc === "number") throw fail(258, `Setting domain sched credit: ${strerror(rc)}`);
}

function optNumber(r: XlRequest, key: string): number | undefined {
  const v = r.req[key];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function schedCredit(r: XlRequest): void {
  const host = r.host;
  const credit = host.xc.sched_id() === XEN_SCHEDULER.CREDIT;
  if (r.req["schedparam"] === true) {
    const tslice = optNumber(r, "tslice");
    const ratelimit = optNumber(r, "ratelimit");
    const migrdelay = optNumber(r, "migrdelay");
    const cur = host.xc.sched_credit_params(0, XEN_SYSCTL_SCHEDOP.getinfo);
    if (tslice === undefined && ratelimit === undefined && migrdelay === undefined) {
      r.reply({ ok: true, pool: POOL, params: typeof cur === "number" ? null : cur });
      return;
    }
    if (typeof cur === "number") {
      throw new HostError(`${libxlLog("error", 287, "libxl_sched_credit_params_get", undefined, `getting Credit scheduler parameters: ${strerror(cur)}`)}\nlibxl_sched_credit_params_get failed.`);
    }
    setPoolParams(host, {
      tsliceMs: tslice ?? cur.tsliceMs,
      ratelimitUs: ratelimit ?? cur.ratelimitUs,
      vcpuMigrDelayUs: migrdelay ?? cur.vcpuMigrDelayUs,
    });
    r.reply({ ok: true });
    return;
  }
  const dom = r.req["dom"];
  if (dom === undefined || dom === null) {
    // Every domain of every credit cpupool; a host without credit has none to show.
    if (!credit) {
      r.reply({ ok: true, pool: null, domains: [] });
      return;
    }
    r.reply({ ok: true, pool: POOL, params: poolParams(host) ?? null, domains: host.domids().map((d) => creditDomain(host, d)) });
    return;
  }
  const domid = host.resolve(String(dom));
  const weight = optNumber(r, "weight");
  const cap = optNumber(r, "cap");
  if (weight === undefined && cap === undefined) {
    r.reply({ ok: true, domains: [creditDomain(host, domid)] });
    return;
  }
  setCreditDomain(host, domid, weight, cap);
  r.reply({ ok: true });
}

/** `xl sched-credit` with a pool's parameters (or none: "unavailable"). */
export function formatCreditPool(pool: string, params: SchedCreditParams | null): string {
  if (!params) return `Cpupool ${pool}: [sched params unavailable]\n`;
  return `Cpupool ${pool}: tslice=${params.tsliceMs}ms ratelimit=${params.ratelimitUs}us migration-delay=${params.vcpuMigrDelayUs}us\n`;
}

/** sched_credit_domain_output: the header, then one row per domain. */
export function formatCreditDomains(rows: readonly CreditDomainRow[]): string {
  let out = `${"Name".padEnd(33)} ${"ID".padStart(4)} ${"Weight".padStart(6)} ${"Cap".padStart(4)}\n`;
  for (const d of rows) out += `${d.name.padEnd(33)} ${String(d.domid).padStart(4)} ${String(d.weight).padStart(6)} ${String(d.cap).padStart(4)}\n`;
  return out;
}

// ---- vcpu-pin ----

/**
 * parse_cpurange: comma-separated "N", "N-M", "all", "node:N[-M]" (one node holds every pCPU),
 * each optionally "^" to remove; CPUs at or past `nrCpus` fall outside libxl's bitmap and are
 * dropped. Returns the CPUs, or the message xl prints.
 */
export function parseCpuRange(text: string, nrCpus: number): number[] | { error: string } {
  const set = new Set<number>();
  for (const part of text.split(",").filter((p) => p !== "")) {
    let s = part;
    const not = s.startsWith("^");
    if (not) s = s.slice(1);
    let nodes = false;
    for (const prefix of ["node:", "nodes:"]) {
      if (s.startsWith(prefix)) {
        s = s.slice(prefix.length);
        nodes = true;
        break;
      }
    }
    if (s === "all") {
      if (not) return { error: `Can't combine "^" and "all".` };
      for (let c = 0; c < nrCpus; c++) set.add(c);
      continue;
    }
    const m = /^(\d+)(?:-(\d+))?$/.exec(s);
    const a = m ? Number(m[1]) : Number.NaN;
    const b = m?.[2] !== undefined ? Number(m[2]) : a;
    if (!m || b < a) return { error: `Invalid pcpu range: ${s}.` };
    // The machine has one NUMA node holding every pCPU; a node past it cannot be mapped.
    if (nodes && b > 0) return { error: "libxl_node_to_cpumap failed." };
    const last = nodes ? nrCpus - 1 : Math.min(b, nrCpus - 1);
    for (let c = nodes ? 0 : a; c <= last; c++) {
      if (not) set.delete(c);
      else set.add(c);
    }
  }
  return [...set].sort((x, y) => x - y);
}

function cpusToBitmap(cpus: readonly number[], nrCpus: number): Uint8Array {
  const out = new Uint8Array(Math.ceil(nrCpus / 8));
  for (const c of cpus) out[c >> 3]! |= 1 << (c & 7);
  return out;
}

function vcpuPin(r: XlRequest): void {
  const host = r.host;
  const domid = host.resolve(String(r.req["dom"] ?? ""));
  const vcpuText = String(r.req["vcpu"] ?? "");
  const force = r.req["force"] === true;
  // strtol: leading digits make a vCPU number; otherwise it must be "all".
  let vcpu = /^\s*[+-]?\d/.test(vcpuText) ? strtol(vcpuText) : -1;
  if (!/^\s*[+-]?\d/.test(vcpuText) || vcpu < 0) {
    if (vcpuText !== "all") throw new HostError(`Error: Invalid argument ${vcpuText} as VCPU.`);
    if (force) throw new HostError("Error: --force and 'all' as VCPU not allowed.");
    vcpu = -1;
  }
  const phys = host.xc.physinfo();
  if (typeof phys === "number") throw new HostError("libxl_get_max_cpus failed.");
  const nrCpus = phys.nrCpus;
  const mask = (key: string): Uint8Array | null => {
    const text = r.req[key];
    if (text === undefined || text === null || text === "-") return null;
    const cpus = parseCpuRange(String(text), nrCpus);
    if (!Array.isArray(cpus)) throw new HostError(cpus.error);
    return cpusToBitmap(cpus, nrCpus);
  };
  const hard = mask("hard");
  const soft = mask("soft");
  const flags = (hard ? XEN_VCPUAFFINITY.HARD : 0) | (soft ? XEN_VCPUAFFINITY.SOFT : 0) | (force ? XEN_VCPUAFFINITY.FORCE : 0);
  /** libxl__set_vcpuaffinity for one vCPU: the libxl message when Xen refuses, or undefined. */
  const setOne = (id: number): string | undefined => {
    if (flags === 0) return "";
    const rc = host.xc.setvcpuaffinity(domid, id, flags, hard, soft);
    return typeof rc === "number" ? libxlLog("error", 62, "libxl__set_vcpuaffinity", domid, `Setting vcpu affinity: ${strerror(rc)}`) : undefined;
  };
  if (vcpu >= 0) {
    const err = setOne(vcpu);
    if (err !== undefined) throw new HostError(`${err === "" ? "" : `${err}\n`}Could not set affinity for vcpu \`${vcpu}'.`);
    r.reply({ ok: true });
    return;
  }
  // libxl_set_vcpuaffinity_all over libxl_list_vcpu's vCPUs: failures are warned about, and xl
  // says so, but still succeeds.
  const info = host.info(domid);
  const warnings: string[] = [];
  for (let id = 0; id <= info.maxVcpuId; id++) {
    const err = setOne(id);
    if (err !== undefined) {
      if (err !== "") warnings.push(err);
      warnings.push(libxlLog("warning", 124, "libxl_set_vcpuaffinity_all", domid, `Failed to set affinity for ${id}`));
    }
  }
  if (warnings.length > 0) warnings.push("Could not set affinity.");
  r.reply({ ok: true, warnings });
}

/** The handlers, merged into the host's command table (xl_commands.ts). */
export const SCHED_COMMANDS: Record<string, XlHandler> = {
  "sched-credit": schedCredit,
  "vcpu-pin": vcpuPin,
};
