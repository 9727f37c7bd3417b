// The text xl 4.17 prints for `list`, `vcpu-list`, `info`, `uptime` and `dmesg`, from plain data.
// Each formatter follows the printf calls of tools/xl (xl_info.c, xl_vcpu.c, xl_utils.c) and the
// prefixing of Xen's console (xen/drivers/char/console.c), byte for byte where the data allows:
// widths count bytes as C does, and times go through xl's (float) cast and glibc's exact
// round-half-even `%.1f`.

/** One vCPU as libxl_list_vcpu reports it. */
export interface XlVcpuInfo {
  id: number;
  cpu: number;
  online: boolean;
  running: boolean;
  blocked: boolean;
  timeNs: number;
  /** Already in xl's range syntax (see formatAffinity). */
  hardAffinity: string;
  softAffinity: string;
}

/** One domain as libxl_dominfo (plus the start time libxl keeps in xenstore) reports it. */
export interface XlDomainInfo {
  name: string;
  domid: number;
  uuid: string;
  memKb: number;
  maxMemKb: number;
  vcpusOnline: number;
  running: boolean;
  blocked: boolean;
  paused: boolean;
  shutdown: boolean;
  /** Xen's SHUTDOWN_* code; undefined while the domain is not shut down. */
  shutdownReason: number | undefined;
  /** Xen records a crash as a shutdown with SHUTDOWN_crash; true shows exactly that. */
  crashed?: boolean;
  dying: boolean;
  cpuTimeNs: number;
  /** Seconds since the epoch (libxl reads /vm/UUID/start_time with strtoul: fractions drop). */
  startTimeSec: number;
  vcpus: XlVcpuInfo[];
}

/** libxl_physinfo's cap_* flags that `xl info` prints in virt_caps. */
export interface XlVirtCaps {
  pv: boolean;
  hvm: boolean;
  /** cap_hvm_directio: printed as hvm_directio and/or pv_directio. */
  directio: boolean;
  hap: boolean;
  shadow: boolean;
  iommuHapPtShare: boolean;
  vmtrace: boolean;
  vpmu: boolean;
  gnttabV1: boolean;
  gnttabV2: boolean;
}

/**
 * What `xl info` prints: dom0's uname, libxl_physinfo and libxl_version_info. Memory is in pages,
 * as the sysctl reports it, because xl subtracts the outstanding claims before converting to MiB.
 */
export interface XlHostInfo {
  host: string;
  release: string;
  version: string;
  machine: string;
  nrCpus: number;
  maxCpuId: number;
  nrNodes: number;
  coresPerSocket: number;
  threadsPerCore: number;
  cpuKhz: number;
  /** Up to 8 32-bit words (missing ones print as 0). */
  hwCaps: readonly number[];
  virtCaps: XlVirtCaps;
  totalPages: number;
  freePages: number;
  outstandingPages: number;
  sharingFreedPages: number;
  sharingUsedFrames: number;
  freeCpus: number;
  xenMajor: number;
  xenMinor: number;
  /** With its leading dot, e.g. ".0". */
  xenExtra: string;
  xenCaps: string;
  xenScheduler: string;
  xenPagesize: number;
  /** HYPERVISOR_VIRT_START (does not fit a JS number on x86_64). */
  virtStart: bigint;
  xenChangeset: string;
  xenCommandline: string;
  ccCompiler: string;
  ccCompileBy: string;
  ccCompileDomain: string;
  ccCompileDate: string;
  buildId: string;
  /** xensim only: how the host keeps up with the wall clock (absent when it runs in virtual time). */
  pace?: XlPace | undefined;
}

/** How a host run against the wall clock keeps up (HostPace, as it crosses the control socket). */
export interface XlPace {
  /** Virtual seconds wanted per wall second. */
  speed: number;
  /** Virtual time advanced over wall time times speed, recently: 1 keeps up. */
  ratio: number;
  /** How far the machine's time is behind the wall clock's (ns). */
  behindNs: number;
}

/** "0.031 of 1x (behind by 12.3 s)": the machine's recent pace, and how far behind it is. */
export function formatPace(p: XlPace): string {
  const ratio = p.ratio >= 0.1 ? p.ratio.toFixed(2) : p.ratio.toPrecision(2);
  const behind = p.behindNs >= 1e8 ? ` (behind the wall clock by ${(p.behindNs / 1e9).toFixed(1)} s)` : "";
  return `${ratio} of ${p.speed}x${behind}`;
}

/** xl list's fifth state letter, indexed by libxl_shutdown_reason (poweroff .. soft_reset). */
export const SHUTDOWN_REASON_LETTERS = "-rscwS";

// ---- printf helpers ----

/** printf's %-Ns: C counts bytes, not characters. */
function padEnd(s: string, width: number): string {
  return s + " ".repeat(Math.max(0, width - Buffer.byteLength(s)));
}

function padStart(s: string | number, width: number): string {
  const t = String(s);
  return " ".repeat(Math.max(0, width - Buffer.byteLength(t))) + t;
}

const f64 = new DataView(new ArrayBuffer(8));

/**
 * printf("%.<prec>f"): glibc rounds the exact binary value half to even, where JS's toFixed
 * rounds ties up (0.25 is "0.2" in C, "0.3" from toFixed).
 */
function fixed(x: number, prec: number): string {
  if (Number.isNaN(x)) return "nan";
  const neg = x < 0 || Object.is(x, -0);
  if (!Number.isFinite(x)) return neg ? "-inf" : "inf";
  f64.setFloat64(0, Math.abs(x));
  const bits = f64.getBigUint64(0);
  const expBits = Number((bits >> 52n) & 0x7ffn);
  let m = bits & ((1n << 52n) - 1n);
  if (expBits !== 0) m |= 1n << 52n;
  const e = (expBits === 0 ? 1 : expBits) - 1075; // |x| = m * 2^e exactly
  const num = m * 10n ** BigInt(prec);
  let q: bigint;
  if (e >= 0) q = num << BigInt(e);
  else {
    const sh = BigInt(-e);
    q = num >> sh;
    const r = num - (q << sh);
    const half = 1n << (sh - 1n);
    if (r > half || (r === half && (q & 1n) === 1n)) q += 1n;
  }
  const digits = q.toString().padStart(prec + 1, "0");
  const body = prec === 0 ? digits : `${digits.slice(0, -prec)}.${digits.slice(-prec)}`;
  return (neg ? "-" : "") + body;
}

/** xl's `(float)ns / 1e9`: the float cast loses precision beyond 2^24 ns. */
function seconds(ns: number): number {
  return Math.fround(ns) / 1e9;
}

function hex32(n: number, width: number): string {
  return (n >>> 0).toString(16).padStart(width, "0");
}

// ---- xl list ----

/** `xl list [-v]` (list_domains in xl_info.c). */
export function formatList(domains: XlDomainInfo[], opts: { verbose?: boolean } = {}): string {
  let out = "Name                                        ID   Mem VCPUs\tState\tTime(s)";
  // -v also prints the security label column (context is implied)
  if (opts.verbose) out += "   UUID                            Reason-Code\tSecurity Label";
  out += "\n";
  for (const d of domains) {
    const shutdown = d.shutdown || d.crashed === true;
    // libxl reports LIBXL_SHUTDOWN_REASON_UNKNOWN (-1) when it has no code; xl uses 0 when not shut down
    const reason = !shutdown ? 0 : d.crashed ? 3 : (d.shutdownReason ?? -1);
    const reasonLetter = reason >= 0 && reason < SHUTDOWN_REASON_LETTERS.length ? SHUTDOWN_REASON_LETTERS[reason] : "?";
    const state =
      (d.running ? "r" : "-") +
      (d.blocked ? "b" : "-") +
      (d.paused ? "p" : "-") +
      (shutdown ? "s" : "-") +
      reasonLetter +
      (d.dying ? "d" : "-");
    // Mem is current + outstanding claims in MiB; the model has no claims
    out += `${padEnd(d.name, 40)} ${padStart(d.domid, 5)} ${padStart(Math.floor(d.memKb / 1024), 5)} ${padStart(d.vcpusOnline, 5)}`;
    out += `     ${state}  ${padStart(fixed(seconds(d.cpuTimeNs), 1), 8)}`;
    if (opts.verbose) {
      out += ` ${d.uuid}`;
      out += shutdown ? ` ${padStart(hex32(reason, 0), 8)}` : ` ${padStart("-", 8)}`;
      out += ` ${padStart("-", 16)}`; // no XSM: no ssid label
    }
    out += "\n";
  }
  return out;
}

// ---- xl vcpu-list ----

/** `xl vcpu-list` (vcpulist and print_vcpuinfo in xl_vcpu.c). */
export function formatVcpuList(domains: XlDomainInfo[]): string {
  let out = `${padEnd("Name", 32)} ${padStart("ID", 5)} ${padStart("VCPU", 5)} ${padStart("CPU", 5)} ${padStart("State", 5)} ${padStart("Time(s)", 9)} Affinity (Hard / Soft)\n`;
  for (const d of domains) {
    for (const v of d.vcpus) {
      out += `${padEnd(d.name, 32)} ${padStart(d.domid, 5)} ${padStart(v.id, 5)}`;
      // an offline vCPU has no CPU and shows as paused: "-", "--p"
      out += v.online ? `${padStart(v.cpu, 5)} ${padStart(v.running ? "r" : "-", 3)}${v.blocked ? "b" : "-"}- ` : "    -   --p ";
      out += `${padStart(fixed(seconds(v.timeNs), 1), 9)}  ${v.hardAffinity} / ${v.softAffinity}\n`;
    }
  }
  return out;
}

/**
 * xl's print_bitmap over the first nrCpus bits: "all" for one run covering every CPU, "none" for
 * no CPU, otherwise runs as "a" or "a-b" joined by commas. CPUs at or beyond nrCpus are not shown.
 */
export function formatAffinity(cpus: number[], nrCpus: number): string {
  const set = new Set<number>();
  for (const c of cpus) {
    if (!Number.isInteger(c) || c < 0) throw new RangeError(`not a CPU number: ${c}`);
    set.add(c);
  }
  const runs: [number, number][] = [];
  for (let i = 0; i < nrCpus; i++) {
    if (!set.has(i)) continue;
    const last = runs.at(-1);
    if (last && last[1] === i - 1) last[1] = i;
    else runs.push([i, i]);
  }
  if (runs.length === 0) return "none";
  if (runs.length === 1 && runs[0]![0] === 0 && runs[0]![1] === nrCpus - 1) return "all";
  return runs.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(",");
}

// ---- xl info ----

/**
 * `xl info` (print_info without -n). With `field`, only what `xl info FIELD` prints: the values
 * of the lines whose name starts with FIELD (xl compares a prefix, so "xen_m" gives two lines).
 */
export function formatInfo(info: XlHostInfo, opts: { field?: string } = {}): string {
  const c = info.virtCaps;
  const caps = [
    c.pv && " pv",
    c.hvm && " hvm",
    c.hvm && c.directio && " hvm_directio",
    c.pv && c.directio && " pv_directio",
    c.hap && " hap",
    c.shadow && " shadow",
    c.iommuHapPtShare && " iommu_hap_pt_share",
    c.vmtrace && " vmtrace",
    c.vpmu && " vpmu",
    c.gnttabV1 && " gnttab-v1",
    c.gnttabV2 && " gnttab-v2",
  ]
    .filter((s) => s !== false)
    .join("");
  const perMiB = Math.floor((1 << 20) / info.xenPagesize);
  if (!(perMiB > 0)) throw new RangeError(`xen_pagesize ${info.xenPagesize} is not a page size xl can divide by`);
  const mib = (pages: bigint) => String(BigInt.asUintN(64, pages) / BigInt(perMiB));
  const hw = Array.from({ length: 8 }, (_, i) => hex32(info.hwCaps[i] ?? 0, 8)).join(":");
  const rows: [string, string][] = [
    ["host", info.host],
    ["release", info.release],
    ["version", info.version],
    ["machine", info.machine],
    ["nr_cpus", String(info.nrCpus)],
    ["max_cpu_id", String(info.maxCpuId)],
    ["nr_nodes", String(info.nrNodes)],
    ["cores_per_socket", String(info.coresPerSocket)],
    ["threads_per_core", String(info.threadsPerCore)],
    ["cpu_mhz", `${Math.trunc(info.cpuKhz / 1000)}.${String(info.cpuKhz % 1000).padStart(3, "0")}`],
    ["hw_caps", hw],
    ["virt_caps", caps],
    ["total_memory", mib(BigInt(info.totalPages))],
    // unsigned 64-bit in xl: a claim larger than the free pages wraps
    ["free_memory", mib(BigInt(info.freePages) - BigInt(info.outstandingPages))],
    ["sharing_freed_memory", mib(BigInt(info.sharingFreedPages))],
    ["sharing_used_memory", mib(BigInt(info.sharingUsedFrames))],
    ["outstanding_claims", mib(BigInt(info.outstandingPages))],
    ["free_cpus", String(info.freeCpus)],
    ["xen_major", String(info.xenMajor)],
    ["xen_minor", String(info.xenMinor)],
    ["xen_extra", info.xenExtra],
    ["xen_version", `${info.xenMajor}.${info.xenMinor}${info.xenExtra}`],
    ["xen_caps", info.xenCaps],
    ["xen_scheduler", info.xenScheduler],
    ["xen_pagesize", String(info.xenPagesize)],
    ["platform_params", `virt_start=0x${BigInt.asUintN(64, info.virtStart).toString(16)}`],
    ["xen_changeset", info.xenChangeset],
    ["xen_commandline", info.xenCommandline],
    ["cc_compiler", info.ccCompiler],
    ["cc_compile_by", info.ccCompileBy],
    ["cc_compile_domain", info.ccCompileDomain],
    ["cc_compile_date", info.ccCompileDate],
    ["build_id", info.buildId],
    ["xend_config_format", "4"],
  ];
  // xensim's own line, after xl's: virtual time achieved over what the wall clock asks for
  if (info.pace) rows.push(["xensim_speed", formatPace(info.pace)]);
  let out = "";
  for (const [name, value] of rows) {
    // virt_caps has no space after its colon: each cap brings its own
    const line = name === "virt_caps" ? `${padEnd(name, 23)}:${value}\n` : `${padEnd(name, 23)}: ${value}\n`;
    if (opts.field === undefined) out += line;
    else if (line.startsWith(opts.field)) {
      // xl prints what follows the first ':' only when a space comes next
      const colon = line.indexOf(":");
      if (line[colon + 1] === " ") out += line.slice(colon + 2);
    }
  }
  return out;
}

// ---- xl uptime ----

function uptimeString(up: number, short: boolean): string {
  // uptime_to_string works in C ints: from 24856 days on, day * 86400 overflows and xl prints
  // nonsense hours and minutes (a start time in the future gets there); reproduced, not fixed
  let u = BigInt(up);
  const part = (unit: number) => {
    const n = Number(BigInt.asIntN(32, u / BigInt(unit)));
    u = BigInt.asUintN(64, u - BigInt(Math.imul(n, unit)));
    return n;
  };
  const day = part(86400);
  const hour = part(3600);
  const min = part(60);
  const sec = Number(BigInt.asIntN(32, u));
  const two = (n: number) => String(n).padStart(2, "0");
  const days = day > 1 ? `${day} days, ` : day === 1 ? `${day} day, ` : "";
  return `${days}${padStart(hour, 2)}:${two(min)}${short ? "" : `:${two(sec)}`}`;
}

/**
 * `xl uptime [-s]` without domain arguments: dom0 first, then the others in the order given.
 * dom0's uptime is its kernel's (/proc/uptime, truncated); another domain's is time(NULL) minus
 * its start time, both whole seconds, in 32 bits. -s prints the time of day as localtime would;
 * pass the zone's offset east of UTC (default 0: UTC) to keep this function pure.
 */
export function formatUptime(domains: XlDomainInfo[], nowSec: number, opts: { short?: boolean; utcOffsetSec?: number } = {}): string {
  const short = opts.short === true;
  const now = Math.floor(nowSec);
  const tod = (((now + (opts.utcOffsetSec ?? 0)) % 86400) + 86400) % 86400;
  const two = (n: number) => String(n).padStart(2, "0");
  const clock = `${two(Math.floor(tod / 3600))}:${two(Math.floor(tod / 60) % 60)}:${two(tod % 60)}`;
  let out = short ? "" : `${padEnd("Name", 33)} ${padStart("ID", 4)} Uptime\n`;
  const ordered = [...domains.filter((d) => d.domid === 0), ...domains.filter((d) => d.domid !== 0)];
  for (const d of ordered) {
    const up = d.domid === 0 ? Math.floor(nowSec - d.startTimeSec) >>> 0 : (now - Math.floor(d.startTimeSec)) >>> 0;
    if (short) out += ` ${clock} up ${uptimeString(up, true)}, ${d.name} (${d.domid})\n`;
    else out += `${padEnd(d.name, 33)} ${padStart(d.domid, 4)} ${uptimeString(up, false)}\n`;
  }
  return out;
}

// ---- xl dmesg ----

/**
 * `xl dmesg`: Xen's console ring, which holds each line as printk wrote it. Xen puts "(XEN) " at
 * the start of every line of its own, and "(dN) " on what guest N printed through it (the
 * model's log already carries that prefix, so such lines keep it). Xen 4.17 boots with
 * console_timestamps=none, so by default no time is shown; `timestamps: "boot"` adds the
 * "[sssss.uuuuuu] " that console_timestamps=boot writes after the prefix (at time 0 Xen falls
 * back to the raw cycle counter, which the model does not have: it shows as 0).
 */
export function formatDmesg(lines: { timeNs: number; text: string }[], opts: { timestamps?: "none" | "boot" } = {}): string {
  let out = "";
  for (const { timeNs, text } of lines) {
    const guest = /^\(d\d+\) /.exec(text);
    const prefix = guest ? guest[0] : "(XEN) ";
    const body = guest ? text.slice(prefix.length) : text;
    let stamp = "";
    if (opts.timestamps === "boot") {
      const ns = BigInt(Math.max(0, Math.trunc(timeNs)));
      const sec = ns / 1_000_000_000n;
      const usec = (ns % 1_000_000_000n) / 1000n;
      stamp = ns === 0n ? "[0000000000000000] " : `[${padStart(String(sec), 5)}.${String(usec).padStart(6, "0")}] `;
    }
    // printk starts a new prefixed line after every newline in the text
    const parts = (body.endsWith("\n") ? body.slice(0, -1) : body).split("\n");
    for (const p of parts) out += `${prefix}${stamp}${p}\n`;
  }
  return out;
}

// ---- libxl's JSON: xl list -l, xl create -n ----

/** A JSON value in libxl's shape: objects keep their keys in the order they were added. */
export type JsonValue = string | number | null | JsonValue[] | { [key: string]: JsonValue };

/** yajl_string_encode: the two quotes-breakers, the short escapes, other control bytes as \u00XX. */
function yajlString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20) out += `\\u00${c.toString(16).toUpperCase().padStart(2, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

/**
 * The text of yajl_gen with yajl_gen_beautify, as libxl_yajl_gen_alloc configures it (yajl's
 * default indent of four spaces): every container opens with a newline and closes on a line of
 * its own, so an empty one prints as "{", an empty line, then "}"; the finished value ends with
 * a newline.
 */
export function yajlBeautify(value: JsonValue): string {
  const pad = (depth: number) => "    ".repeat(depth);
  const gen = (v: JsonValue, depth: number): string => {
    if (v === null) return "null";
    if (typeof v === "string") return yajlString(v);
    if (typeof v === "number") {
      if (!Number.isSafeInteger(v)) throw new RangeError(`libxl's JSON has integers only, not ${v}`);
      return String(v);
    }
    const items = Array.isArray(v) ? v.map((x) => pad(depth + 1) + gen(x, depth + 1)) : Object.entries(v).map(([k, x]) => `${pad(depth + 1)}${yajlString(k)}: ${gen(x, depth + 1)}`);
    const [open, close] = Array.isArray(v) ? ["[", "]"] : ["{", "}"];
    return `${open}\n${items.join(",\n")}\n${pad(depth)}${close}`;
  };
  return `${gen(value, 0)}\n`;
}

/** What libxl_domain_config holds for a PV domain, in the fields this model has. */
export interface LibxlConfigView {
  name: string;
  uuid: string;
  /** c_info.domid: xl create sets it to its domid_policy (INVALID_DOMID) before creating; absent in a dry run. */
  domid?: number | undefined;
  /** xl.conf's run_hotplug_scripts (default 1). */
  runHotplugScripts: boolean;
  maxVcpus: number;
  /** vCPUs set in avail_vcpus. */
  availVcpus: number[];
  maxMemKb?: number | undefined;
  targetMemKb?: number | undefined;
  videoMemKb?: number | undefined;
  /** libxl_domain_sched_params as libxl_domain_sched_params_get fills it; absent: all defaults. */
  sched?: { sched: string; weight?: number | undefined; cap?: number | undefined } | undefined;
  /** xl.conf's claim_mode (default 1). */
  claimMode: boolean;
  /** b_info.event_channels: only what the config file set (max_event_channels). */
  eventChannels?: number | undefined;
  kernel?: string | undefined;
  cmdline?: string | undefined;
  /** arch_x86.msr_relaxed; libxl__arch_update_domain_config pins it (false) in a created domain's saved config. */
  msrRelaxed?: boolean | undefined;
  /** xl.cfg's spelling of each on_* action. */
  onPoweroff: string;
  onReboot: string;
  onWatchdog: string;
  onCrash: string;
  onSoftReset: string;
}

const defbool = (b: boolean) => (b ? "True" : "False");
/** libxl_action_on_shutdown_to_string: the enum's names, lower case, "-" as "_". */
const actionName = (a: string) => (a === "rename-restart" ? "restart_rename" : a.replace(/-/g, "_"));

/**
 * libxl_domain_config_gen_json for a PV domain (gentypes.py's generator over libxl_types.idl):
 * fields in the IDL's order; a field equal to its default (its init_val, a NULL string, a zero
 * integer, an empty bitmap, a default defbool) is left out, while nested structs and the keyed
 * union are always written, empty or not.
 */
export function libxlDomainConfig(c: LibxlConfigView): { [key: string]: JsonValue } {
  const cInfo: { [key: string]: JsonValue } = { type: "pv", name: c.name };
  if (c.domid !== undefined && c.domid !== 0) cInfo["domid"] = c.domid;
  cInfo["uuid"] = c.uuid;
  cInfo["run_hotplug_scripts"] = defbool(c.runHotplugScripts);

  const bInfo: { [key: string]: JsonValue } = {};
  if (c.maxVcpus !== 0) bInfo["max_vcpus"] = c.maxVcpus;
  if (c.availVcpus.length > 0) bInfo["avail_vcpus"] = [...c.availVcpus].sort((a, b) => a - b);
  if (c.maxMemKb !== undefined) bInfo["max_memkb"] = c.maxMemKb;
  if (c.targetMemKb !== undefined) bInfo["target_memkb"] = c.targetMemKb;
  if (c.videoMemKb !== undefined) bInfo["video_memkb"] = c.videoMemKb;
  const sched: { [key: string]: JsonValue } = {};
  if (c.sched) {
    sched["sched"] = c.sched.sched;
    if (c.sched.weight !== undefined) sched["weight"] = c.sched.weight;
    if (c.sched.cap !== undefined) sched["cap"] = c.sched.cap;
  }
  bInfo["sched_params"] = sched;
  bInfo["claim_mode"] = defbool(c.claimMode);
  if (c.eventChannels) bInfo["event_channels"] = c.eventChannels;
  if (c.kernel !== undefined) bInfo["kernel"] = c.kernel;
  if (c.cmdline !== undefined) bInfo["cmdline"] = c.cmdline;
  bInfo["type.pv"] = {};
  bInfo["arch_arm"] = {};
  bInfo["arch_x86"] = c.msrRelaxed === undefined ? {} : { msr_relaxed: defbool(c.msrRelaxed) };

  const config: { [key: string]: JsonValue } = { c_info: cInfo, b_info: bInfo };
  // on_*: LIBXL_ACTION_ON_SHUTDOWN_DESTROY is the init_val
  for (const [key, a] of [
    ["on_poweroff", c.onPoweroff],
    ["on_reboot", c.onReboot],
    ["on_watchdog", c.onWatchdog],
    ["on_crash", c.onCrash],
    ["on_soft_reset", c.onSoftReset],
  ] as const) {
    if (a !== "destroy") config[key] = actionName(a);
  }
  return config;
}

/**
 * `xl list -l` (list_domains_details in xl_info.c): one JSON array of {"domid", "config"} built
 * by printf_info_one_json, printed with puts (so the generator's closing newline gets another).
 */
export function formatListLong(domains: { domid: number; config: LibxlConfigView }[]): string {
  return `${yajlBeautify(domains.map((d) => ({ domid: d.domid, config: libxlDomainConfig(d.config) })))}\n`;
}

/** `xl create -n` (create_domain's dry run): libxl_domain_config_to_json, written with fputs. */
export function formatDryRun(config: LibxlConfigView): string {
  return yajlBeautify(libxlDomainConfig(config));
}
