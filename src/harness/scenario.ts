// Scenarios: a machine described in xl.cfg syntax, run for a while under one seed, then checked.
// Without a dom0 guest yet, the runner plays the toolstack: it builds the domains, allocates
// the unbound ports listeners wait on (as xl does for xenstore and console channels) and passes
// them on the kernel command line.

import { readFileSync } from "node:fs";
import { basename } from "node:path";
import type { GuestWidth } from "../abi/layout.ts";
import type { Domain } from "../hypervisor/domain.ts";
import { DOMID_XEN, openPrivcmd } from "../hypervisor/domctl.ts";
import { Hypervisor } from "../hypervisor/hypervisor.ts";
import { XenLinux } from "../guest/kernel.ts";
import { EvtchnPingPong, FanIn, IpiPingPong, workloadsFromCmdline } from "../guest/workloads.ts";
import { ForkExec, IpiStorm } from "../guest/workloads_mm.ts";
import { auditMm } from "./audit_mm.ts";
import { auditEvtchn } from "./audit.ts";
import { buildDomain, type DomainSpec, setCmdline } from "../toolstack/libxc/builder.ts";
import { cfgNumber, cfgString, cfgStringList, parseXlCfg, type XlConfig, XlCfgError } from "../toolstack/libxl/xlcfg.ts";
import { isSeed, MAX_SEED } from "../util/rng.ts";

export interface ScenarioDomain {
  spec: DomainSpec;
  evtchnAbi: "fifo" | "2l";
  ipiPingpong: number;
  pingpongWith: string | undefined;
  pingpongRounds: number;
  faninTo: string | undefined;
  faninPorts: number;
  faninFlood: boolean;
  /** The listener uses the lateeoi chip (set on the receiving domain). */
  faninLateeoi: boolean;
  /** Processes the forkexec workload keeps alive (0: none). */
  forkexec: number;
  mmapstress: boolean;
  ipistorm: boolean;
  /** How the guest flushes other CPUs' TLBs: MMUEXT_TLB_FLUSH_MULTI, or IPIs. */
  tlbFlush: "hypercall" | "ipi";
}

export interface Scenario {
  name: string;
  description: string;
  pcpus: number;
  runMs: number;
  drainMs: number;
  auditEverySteps: number;
  /** The scheduler: the seeded interleaver (default: it explores races) or Xen's credit. */
  sched?: "interleave" | "credit";
  domains: ScenarioDomain[];
  /** What parses but will not all happen as written (see "Mistakes" in the README). */
  warnings: string[];
}

export class ScenarioError extends Error {}

/** The keys a scenario file takes at the top level. */
const SCENARIO_KEYS = ["name", "description", "pcpus", "run_ms", "drain_ms", "audit_every", "sched", "domain"];

/** The keys of a domain's 'key=value,...' entry. */
const DOMAIN_KEYS = [
  "name",
  "memory",
  "vcpus",
  "max_event_channels",
  "guest_width",
  "evtchn_abi",
  "ipi_pingpong",
  "pingpong_with",
  "pingpong_rounds",
  "fanin_to",
  "fanin_ports",
  "fanin_flood",
  "fanin_lateeoi",
  "forkexec",
  "mmapstress",
  "ipistorm",
  "tlb_flush",
];

/** Keys that only an xl guest config (xl.cfg(5), as `create` takes) has at its top level. */
const GUEST_CFG_KEYS = ["type", "builder", "memory", "maxmem", "vcpus", "maxvcpus", "kernel", "extra", "cmdline", "workload", "on_poweroff", "on_reboot", "on_crash"];

/** Reads a scenario file; every mistake is a ScenarioError naming the file and the key. */
export function loadScenario(path: string): Scenario {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ScenarioError(`${path}: cannot read: ${(e as Error).message}`);
  }
  return parseScenario(text, path);
}

export function parseScenario(text: string, file: string): Scenario {
  let cfg: XlConfig;
  try {
    cfg = parseXlCfg(text, file);
  } catch (e) {
    if (e instanceof XlCfgError) throw new ScenarioError(e.message);
    throw e;
  }
  const num = (key: string, dflt: number, min: number, max: number) => {
    const v = cfgNumber(cfg, key) ?? dflt;
    if (!Number.isFinite(v) || v < min || v > max) throw new ScenarioError(`${file}: ${key} must be ${min}..${max}, not ${v}`);
    return v;
  };
  const keys = [...cfg.entries.keys()];
  if (!cfg.entries.has("domain") && keys.some((k) => GUEST_CFG_KEYS.includes(k))) {
    throw new ScenarioError(
      `${file}: this is an xl guest config (for \`xensim -H DIR create ${file}\`), not a scenario: a scenario lists its domains as domain = [ 'name=a,memory=32,vcpus=2,...', ... ] (see examples/pingpong.cfg)`,
    );
  }
  for (const k of keys) {
    if (SCENARIO_KEYS.includes(k)) continue;
    const hint = DOMAIN_KEYS.includes(k) ? "; a domain's settings go in its domain = [ ... ] entry" : "";
    throw new ScenarioError(`${file}: unknown key '${k}' (a scenario takes ${SCENARIO_KEYS.join(", ")}${hint})`);
  }
  const specs = cfgStringList(cfg, "domain");
  if (!specs || specs.length === 0) throw new ScenarioError(`${file}: no domain = [ ... ] entries`);
  const domains = specs.map((s, i) => parseDomainSpec(s, `${file}: domain ${i + 1}`));
  const names = new Set<string>();
  for (const d of domains) {
    if (names.has(d.spec.name)) throw new ScenarioError(`${file}: two domains are named ${d.spec.name}`);
    names.add(d.spec.name);
  }
  for (const d of domains) {
    for (const peer of [d.pingpongWith, d.faninTo]) {
      if (peer !== undefined && !names.has(peer)) throw new ScenarioError(`${file}: ${d.spec.name} names unknown domain ${peer}`);
    }
  }
  const warnings = checkWorkloadSettings(domains, file);
  const sched = cfgString(cfg, "sched") ?? "interleave";
  if (sched !== "interleave" && sched !== "credit") throw new ScenarioError(`${file}: sched must be "interleave" or "credit", not ${JSON.stringify(sched)}`);
  return {
    name: cfgString(cfg, "name") ?? basename(file).replace(/\.cfg$/, ""),
    description: cfgString(cfg, "description") ?? "",
    pcpus: num("pcpus", 2, 1, 64),
    runMs: num("run_ms", 100, 1, 3_600_000),
    drainMs: num("drain_ms", 20, 0, 60_000),
    auditEverySteps: num("audit_every", 97, 0, 1e9),
    sched,
    domains,
    warnings,
  };
}

/**
 * Settings that parse but would do nothing, or not what they say: an error when a setting would
 * have no effect at all, a warning when part of it would (see "Mistakes" in the README).
 */
function checkWorkloadSettings(domains: readonly ScenarioDomain[], file: string): string[] {
  const warnings: string[] = [];
  const byName = new Map(domains.map((d) => [d.spec.name, d]));
  const faninInto = new Map<string, string>();
  for (const d of domains) {
    const name = d.spec.name;
    const fail = (what: string) => new ScenarioError(`${file}: ${name}: ${what}`);
    const vcpus = d.spec.vcpus;
    if (d.ipiPingpong > 0 && vcpus < 2) throw fail("ipi_pingpong needs at least 2 vCPUs (it bounces IPIs between CPU pairs (0,1), (2,3)...)");
    if (d.ipiPingpong > 0 && vcpus % 2 === 1) {
      warnings.push(`${file}: ${name}: ipi_pingpong pairs CPUs (0,1), (2,3)...: CPU${vcpus - 1} of its ${vcpus} vCPUs has no partner and takes no part`);
    }
    if (d.pingpongWith === name) throw fail("pingpong_with names the domain itself; a ping-pong is between two domains");
    if (d.pingpongWith !== undefined) {
      const peer = byName.get(d.pingpongWith)!;
      if (peer.pingpongWith !== name) {
        const has = peer.pingpongWith === undefined ? "has no pingpong_with" : `has pingpong_with=${peer.pingpongWith}`;
        throw fail(`pingpong_with=${peer.spec.name}, but ${peer.spec.name} ${has}; the two domains of a ping-pong name each other`);
      }
    } else if (d.pingpongRounds > 0) throw fail("pingpong_rounds without pingpong_with");
    if (d.faninTo === name) throw fail("fanin_to names the domain itself; a fan-in goes into another domain");
    if (d.faninTo !== undefined) {
      if (d.faninPorts === 0) throw fail("fanin_to needs fanin_ports=K, K >= 1");
      const other = faninInto.get(d.faninTo);
      if (other !== undefined) throw fail(`${other} already fans into ${d.faninTo}; a domain takes one fan-in`);
      faninInto.set(d.faninTo, name);
    } else if (d.faninPorts > 0 || d.faninFlood) throw fail("fanin_ports and fanin_flood need fanin_to");
  }
  for (const d of domains) {
    if (d.faninLateeoi && !faninInto.has(d.spec.name)) throw new ScenarioError(`${file}: ${d.spec.name}: fanin_lateeoi, but no domain fans into it`);
  }
  return warnings;
}

/** One domain: 'name=a,memory=64,vcpus=4,...', the way xl writes vif and disk specs. */
function parseDomainSpec(s: string, where: string): ScenarioDomain {
  const kv = new Map<string, string>();
  for (const part of s.split(",")) {
    const t = part.trim();
    if (!t) continue;
    const eq = t.indexOf("=");
    if (eq <= 0) throw new ScenarioError(`${where}: expected key=value, got '${t}'`);
    kv.set(t.slice(0, eq).trim(), t.slice(eq + 1).trim());
  }
  for (const key of kv.keys()) if (!DOMAIN_KEYS.includes(key)) throw new ScenarioError(`${where}: unknown key '${key}'`);
  const int = (key: string, dflt: number, min: number, max: number) => {
    const raw = kv.get(key);
    const v = raw === undefined ? dflt : Number(raw);
    if (!Number.isInteger(v) || v < min || v > max) throw new ScenarioError(`${where}: ${key} must be an integer ${min}..${max}`);
    return v;
  };
  const name = kv.get("name");
  if (!name || !/^[A-Za-z0-9_.-]+$/.test(name)) throw new ScenarioError(`${where}: needs a name of letters, digits, . _ -`);
  const width = int("guest_width", 64, 32, 64);
  if (width !== 32 && width !== 64) throw new ScenarioError(`${where}: guest_width is 32 or 64`);
  const abi = kv.get("evtchn_abi") ?? "fifo";
  if (abi !== "fifo" && abi !== "2l") throw new ScenarioError(`${where}: evtchn_abi is fifo or 2l`);
  return {
    spec: {
      name,
      memoryMiB: int("memory", 32, 4, 65536),
      vcpus: int("vcpus", 1, 1, 32),
      width: width as GuestWidth,
      maxEventChannels: int("max_event_channels", 1023, 1, 131071),
      cmdline: "",
      privileged: false,
    },
    evtchnAbi: abi,
    ipiPingpong: int("ipi_pingpong", 0, 0, 1e9),
    pingpongWith: kv.get("pingpong_with"),
    pingpongRounds: int("pingpong_rounds", 0, 0, 1e12),
    faninTo: kv.get("fanin_to"),
    faninPorts: int("fanin_ports", 0, 0, 131071),
    faninFlood: int("fanin_flood", 0, 0, 1) === 1,
    faninLateeoi: int("fanin_lateeoi", 0, 0, 1) === 1,
    forkexec: int("forkexec", 0, 0, 64),
    mmapstress: int("mmapstress", 0, 0, 1) === 1,
    ipistorm: int("ipistorm", 0, 0, 1) === 1,
    tlbFlush: tlbFlushOf(kv.get("tlb_flush")),
  };
}

export interface RunResult {
  seed: number;
  failures: string[];
  hv: Hypervisor;
  kernels: Map<number, XenLinux>;
  domains: Map<string, Domain>;
  steps: number;
}

export interface Machine {
  hv: Hypervisor;
  kernels: Map<number, XenLinux>;
  domains: Map<string, Domain>;
}

export interface RunParams {
  /** Guest fixes to switch off (see src/guest/fixes.ts). */
  disableFixes?: readonly string[];
  /** Hypervisor fixes to switch off (see src/hypervisor/fixes.ts). */
  xenDisabledFixes?: readonly string[];
}

/** Builds and starts the machine `sc` describes, under `seed`. */
export function buildMachine(sc: Scenario, seed: number, params: RunParams = {}): Machine {
  // A seed the generator would reduce would run another seed's machine under this one's name.
  if (!isSeed(seed)) throw new ScenarioError(`seed ${seed}: seeds are integers 0..${MAX_SEED}`);
  const frames = sc.domains.reduce((n, d) => n + d.spec.memoryMiB * 256 + 8, 0) + 1024;
  const hv = new Hypervisor({
    nrFrames: frames,
    firstDomid: 1,
    sched: { nrPcpus: sc.pcpus, seed, kind: sc.sched ?? "interleave" },
    disabledFixes: params.xenDisabledFixes ?? [],
  });
  // No dom0 here: the runner plays the toolstack, with Xen's own authority.
  const xc = openPrivcmd(hv, DOMID_XEN);
  const kernels = new Map<number, XenLinux>();
  const byName = new Map<string, Domain>();
  const built = sc.domains.map((sd) => {
    const k = new XenLinux(sd.spec.width, workloadsFromCmdline);
    const b = buildDomain(xc, sd.spec, k);
    kernels.set(b.domid, k);
    byName.set(sd.spec.name, hv.domainById(b.domid)!);
    const cmd = [`xen.fifo_events=${sd.evtchnAbi === "fifo" ? 1 : 0}`, `xensim.seed=${(seed * 31 + b.domid) >>> 0}`];
    if (sd.forkexec > 0 || sd.mmapstress) cmd.push(`forkexec=${sd.forkexec || sd.spec.vcpus}`);
    if (sd.mmapstress) cmd.push("mmapstress=1");
    if (sd.ipistorm) cmd.push("ipistorm=1");
    if (sd.tlbFlush === "ipi") cmd.push("xensim.tlb_flush=ipi");
    if (params.disableFixes?.length) cmd.push(`xensim.disable_fix=${params.disableFixes.join(",")}`);
    return { sd, b, cmd };
  });
  // Channels: the first-listed side of a pair listens on a port the toolstack allocates for its peer.
  for (const { sd, b, cmd } of built) {
    if (sd.ipiPingpong > 0) cmd.push(`ipi_pingpong=${sd.ipiPingpong}`);
    if (sd.pingpongRounds > 0) cmd.push(`pingpong_rounds=${sd.pingpongRounds}`);
    if (sd.pingpongWith) {
      const peer = built.find((x) => x.sd.spec.name === sd.pingpongWith)!;
      const first = built.indexOf(built.find((x) => x.sd === sd)!) < built.indexOf(peer);
      if (first) {
        const port = xc.evtchn_alloc_unbound(b.domid, peer.b.domid);
        if (port < 0) throw new ScenarioError(`cannot allocate a port in ${sd.spec.name}: ${port}`);
        cmd.push(`evtchn_listen=${port}`);
        peer.cmd.push(`evtchn_connect=${b.domid}:${port}`);
      }
    }
    if (sd.faninTo) {
      const peer = built.find((x) => x.sd.spec.name === sd.faninTo)!;
      const ports: number[] = [];
      for (let i = 0; i < sd.faninPorts; i++) {
        const p = xc.evtchn_alloc_unbound(peer.b.domid, b.domid);
        if (p < 0) throw new ScenarioError(`cannot allocate ${sd.faninPorts} ports in ${peer.sd.spec.name}: ${p}`);
        ports.push(p);
      }
      const base = ports[0] ?? 1;
      peer.cmd.push(`fanin_listen=${base}:${ports.length}`);
      if (peer.sd.faninLateeoi) peer.cmd.push("fanin_lateeoi=1");
      cmd.push(`fanin_connect=${peer.b.domid}:${base}:${ports.length}`);
      if (sd.faninFlood) cmd.push("fanin_flood=1");
    }
  }
  for (const { b, cmd } of built) setCmdline(xc, b, cmd.join(" "));
  for (const { b } of built) xc.unpausedomain(b.domid);
  return { hv, kernels, domains: byName };
}

/** Builds the machine for `sc` under `seed`, runs it, drains it and checks it. */
export function runScenario(sc: Scenario, seed: number, params: RunParams = {}): RunResult {
  const { hv, kernels, domains: byName } = buildMachine(sc, seed, params);
  const failures: string[] = [];
  const audit = () => {
    for (const v of auditEvtchn(hv, kernels)) if (failures.length < 50) failures.push(`invariant: ${v}`);
    for (const v of auditMm(hv, kernels)) if (failures.length < 50) failures.push(`invariant: ${v}`);
  };
  const runUntil = (until: number) => {
    let steps = 0;
    while (hv.sched.now() < until && failures.length === 0) {
      if (!hv.sched.step()) break;
      steps++;
      if (sc.auditEverySteps > 0 && steps % sc.auditEverySteps === 0) audit();
    }
    return steps;
  };
  let steps = runUntil(sc.runMs * 1e6);
  // Drain: senders stop, everything in flight must still arrive.
  for (const k of kernels.values()) {
    for (const w of k.workloads) {
      if (w instanceof EvtchnPingPong) w.stopping = true;
      if (w instanceof FanIn && w.isSender) w.stop();
      if (w instanceof ForkExec || w instanceof IpiStorm) w.stopping = true;
    }
  }
  steps += runUntil((sc.runMs + sc.drainMs) * 1e6);
  if (failures.length > 0) {
    // The run stopped at the first broken invariant; the workloads never got to finish.
    failures.push(`run stopped at ${(hv.sched.now() / 1e6).toFixed(3)} ms of virtual time, after ${steps} steps`);
  } else {
    audit();
    checkWorkloads(hv, kernels, failures);
  }
  return { seed, failures, hv, kernels, domains: byName, steps };
}

function checkWorkloads(hv: Hypervisor, kernels: Map<number, XenLinux>, failures: string[]): void {
  for (const d of hv.domains.values()) {
    const k = kernels.get(d.domid)!;
    if (d.state !== "running") {
      const err = hv.lastGuestError instanceof Error ? ` (${hv.lastGuestError.message})` : "";
      failures.push(`${d.name}: domain is ${d.state}, code ${d.shutdownCode}${err}`);
      continue;
    }
    if (!k.booted) {
      failures.push(`${d.name}: kernel did not finish booting`);
      continue;
    }
    for (const [c, pc] of k.percpu.entries()) if (!pc.online) failures.push(`${d.name}: CPU${c} never came up`);
    for (const w of k.workloads) {
      if (w instanceof IpiPingPong) {
        const pairs = Math.floor(k.nrCpus / 2);
        if (w.total !== pairs * w.rounds) failures.push(`${d.name}: ipi_pingpong delivered ${w.total} of ${pairs * w.rounds}`);
      } else if (w instanceof EvtchnPingPong) {
        if (w.stats.handled === 0) failures.push(`${d.name}: evtchn ping-pong never received an event`);
        if (w.rounds > 0 && w.stats.handled !== w.expected) {
          failures.push(`${d.name}: evtchn ping-pong received ${w.stats.handled} events, expected ${w.expected}`);
        }
      } else if (w instanceof ForkExec) {
        if (w.sched.stats.exits === 0) failures.push(`${d.name}: forkexec: no process lifecycle completed`);
        if (w.sched.live > 0) failures.push(`${d.name}: forkexec: ${w.sched.live} processes still alive after the drain`);
      } else if (w instanceof FanIn && !w.isSender) {
        const starved = w.ports.findIndex((p) => p.handled === 0);
        if (starved >= 0) failures.push(`${d.name}: fan-in port #${starved} never delivered`);
      }
    }
  }
  // Every sender's last event reached its receiver's handler (no lost wakeups).
  for (const k of kernels.values()) {
    for (const w of k.workloads) {
      if (!(w instanceof FanIn) || !w.isSender) continue;
      const peer = [...kernels.values()].flatMap((x) => x.workloads).find((x) => x instanceof FanIn && !x.isSender) as
        | FanIn
        | undefined;
      if (!peer) continue;
      w.ports.forEach((s, i) => {
        if (s.sends > 0 && (peer.ports[i]?.handled ?? 0) === 0) failures.push(`fan-in port #${i}: ${s.sends} sends, no handler run`);
      });
    }
  }
}

/** A compact report of a run, for people. */
export function describeRun(r: RunResult): string[] {
  const lines: string[] = [];
  const now = r.hv.sched.now();
  lines.push(`seed ${r.seed}: ${r.steps} scheduling steps, ${(now / 1e6).toFixed(1)} ms of virtual time`);
  for (const d of r.hv.domains.values()) {
    const k = r.kernels.get(d.domid)!;
    const ticks = k.percpu.map((p) => p.ticks).join("/");
    const upcalls = d.vcpus.reduce((n, v) => n + v.upcalls, 0);
    const hcs = d.vcpus.reduce((n, v) => n + v.hypercalls, 0);
    lines.push(
      `  d${d.domid} ${d.name}: ${d.vcpus.length} vCPUs, ${k.events?.backend.name ?? "-"} ABI, timer ticks ${ticks}, ${upcalls} upcalls, ${hcs} hypercalls`,
    );
    for (const w of k.workloads) {
      if (w instanceof IpiPingPong) lines.push(`    ipi_pingpong: ${w.total} IPIs delivered (${w.received.join("/")} per CPU)`);
      if (w instanceof EvtchnPingPong) lines.push(`    evtchn ping-pong on port ${w.localPort}: ${w.stats.handled} received, ${w.stats.sends} sent`);
      if (w instanceof ForkExec) {
        const s = w.sched.stats;
        lines.push(
          `    forkexec: ${s.exits} lifecycles, ${s.forks} forks, ${s.execs} execs, ${s.faults} faults (${s.cows} COW), ${s.checks} page checks, ${s.munmaps} munmaps, ${k.mmu.shootdowns} shootdowns, ${k.mmu.unpins} unpins`,
        );
      }
      if (w instanceof IpiStorm) lines.push(`    ipistorm: ${w.calls} waited calls, ${w.stopMachines} stop_machine`);
      if (w instanceof FanIn) {
        const n = w.ports.reduce((a, p) => a + (w.isSender ? p.sends : p.handled), 0);
        lines.push(`    fan-in over ${w.ports.length} ports: ${n} ${w.isSender ? "sent" : "handled"}`);
      }
    }
  }
  return lines;
}

function tlbFlushOf(value: string | undefined): "hypercall" | "ipi" {
  if (value === undefined || value === "hypercall") return "hypercall";
  if (value === "ipi") return "ipi";
  throw new ScenarioError(`tlb_flush must be "hypercall" or "ipi", not "${value}"`);
}
