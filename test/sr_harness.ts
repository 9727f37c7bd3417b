// Helpers for test/save_restore.test.ts: hosts, guests running the MM and IPI workloads, the
// save (suspend, write the image, then destroy or resume the domain) and the restore into a host,
// and the checks a guest must pass after either: it runs (every CPU's timer ticks, every workload's
// counters grow), the auditors find nothing, it has not crashed.

import { createHash } from "node:crypto";
import { pathToFileURL } from "node:url";
import type { XenLinux } from "../src/guest/kernel.ts";
import { ForkExec, IpiStorm } from "../src/guest/workloads_mm.ts";
import { IpiPingPong } from "../src/guest/workloads.ts";
import { auditEvtchn } from "../src/harness/audit.ts";
import { auditMm } from "../src/harness/audit_mm.ts";
import { bootHost } from "../src/harness/machine.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { BytesSink, bytesSource } from "../src/toolstack/libxc/sr_stream.ts";
import { type GuestConfig, parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { DEFAULT_HOST, type Host, type HostDomain } from "../src/toolstack/libxl/host.ts";
import { openImage, writeMigrationStream, writeSaveImage } from "../src/toolstack/libxl/save_restore.ts";
import type { RestoreResult } from "../src/toolstack/libxc/sr_restore_x86_pv.ts";
import type { LiveSaveResult } from "../src/toolstack/libxc/sr_save_x86_pv.ts";
import { retrievedConfig } from "../src/toolstack/xl/host_info.ts";
import { configTextFromJson } from "../src/toolstack/xl/save_cmds.ts";
import { libxlDomainConfig, yajlBeautify } from "../src/toolstack/xl/xl_format.ts";
import { Rng } from "../src/util/rng.ts";

export const MS = 1_000_000;

export interface TestHost {
  host: Host;
  hv: Hypervisor;
  seed: number;
}

/** A booted 2-pCPU host (`xenDisabledFixes`: hypervisor fixes switched off). */
export function newHost(seed: number, machineMiB = 192, xenDisabledFixes?: string[]): TestHost {
  const { host, hv } = bootHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB, seed, ...(xenDisabledFixes ? { xenDisabledFixes } : {}) });
  host.boot();
  return { host, hv, seed };
}

export interface GuestOpts {
  name?: string;
  width: 32 | 64;
  memory?: number;
  vcpus?: number;
  /** The workload key's value. */
  workload?: string;
  /** Fixes to switch off (xensim.disable_fix=...). */
  disableFix?: string[];
  /** Else xl makes a random one, as libxl_uuid_generate does. */
  uuid?: string;
}

/** The workloads every guest here runs: processes that fork, exec, map and unmap; IPIs; stop_machine. */
export const WORKLOAD = "forkexec=3,mmapstress=1,ipistorm=1,ipi_pingpong=1000000000";

export function guestConfig(o: GuestOpts): GuestConfig {
  const lines = [
    `name = "${o.name ?? "g"}"`,
    `memory = ${o.memory ?? 16}`,
    `vcpus = ${o.vcpus ?? 2}`,
    `guest_width = ${o.width}`,
    `workload = "${o.workload ?? WORKLOAD}"`,
    // A crashed guest stays, so that the checks can say why.
    `on_crash = "preserve"`,
  ];
  if (o.uuid !== undefined) lines.push(`uuid = "${o.uuid}"`);
  if (o.disableFix && o.disableFix.length > 0) lines.push(`extra = "xensim.disable_fix=${o.disableFix.join(",")}"`);
  return parseGuestConfig(`${lines.join("\n")}\n`, "sr.cfg");
}

export function run(th: TestHost, ms: number): void {
  th.host.run(th.host.now() + ms * MS);
}

/** Runs in small slices until `cond` holds or `ms` of virtual time have gone by. */
export function runUntil(th: TestHost, ms: number, cond: () => boolean): boolean {
  const start = th.host.now();
  while (!cond() && th.host.now() - start < ms * MS) run(th, 0.25);
  return cond();
}

/** Creates the guest and runs until its kernel has said it can suspend. */
export function createGuest(th: TestHost, o: GuestOpts): HostDomain {
  const hd = th.host.create(guestConfig(o));
  const ready = runUntil(th, 1000, () => th.host.xs.tryRead(`/local/domain/${hd.domid}/control/feature-suspend`) === "1");
  if (!ready) throw new Error(`d${hd.domid} never set control/feature-suspend: ${describe(th, hd)}`);
  return hd;
}

/** Asks the guest to suspend and runs until it has. */
export function suspend(th: TestHost, hd: HostDomain, ms = 2000): void {
  th.host.requestSuspend(hd.domid);
  if (!runUntil(th, ms, () => th.host.suspended(hd.domid))) {
    throw new Error(`d${hd.domid} did not suspend within ${ms} ms: ${describe(th, hd)}\n${hd.kernel.log.slice(-5).join("\n")}`);
  }
}

/** The save image of a suspended domain (what `xl save` writes). */
export function writeImage(th: TestHost, hd: HostDomain): Uint8Array {
  const json = yajlBeautify(libxlDomainConfig(retrievedConfig(th.host, hd.domid)!));
  const sink = new BytesSink();
  const gen = writeSaveImage(th.host.xc, hd.domid, sink, json);
  while (!gen.next().done) {
    // progress reports
  }
  return sink.bytes();
}

/** What a live migration did: the stream, the sender's rounds, the receiver's VERIFY result. */
export interface Migrated {
  image: Uint8Array;
  sent: LiveSaveResult;
  received: RestoreResult;
  hd: HostDomain;
}

/**
 * A live migration from `a` to `b` in one process: the guest runs `runMs` between PAGE_DATA
 * batches while pre-copy sends, is suspended when libxc asks, and is restored into `b` from the
 * stream; the source's copy is destroyed once the destination has it.
 */
export function migrate(a: TestHost, hd: HostDomain, b: TestHost, opts: { debug?: boolean; runMs?: number } = {}): Migrated {
  const json = yajlBeautify(libxlDomainConfig(retrievedConfig(a.host, hd.domid)!));
  const sink = new BytesSink();
  const gen = writeMigrationStream(a.host.xc, hd.domid, sink, json, { debug: opts.debug ?? true });
  let r = gen.next();
  while (!r.done) {
    if ("suspend" in r.value) suspend(a, hd);
    else run(a, opts.runMs ?? 0.05);
    r = gen.next();
  }
  const image = sink.bytes();
  let received: RestoreResult | undefined;
  const moved = restoreWith(b, image, (x) => {
    received = x;
  });
  a.host.destroy(hd.domid);
  return { image, sent: r.value, received: received!, hd: moved };
}

/** `xl save`: suspend, write the image, destroy the domain. */
export function save(th: TestHost, hd: HostDomain): Uint8Array {
  suspend(th, hd);
  const img = writeImage(th, hd);
  th.host.destroy(hd.domid);
  return img;
}

/**
 * `xl save -c`: suspend, write the image, resume the domain where it was (the cancelled suspend),
 * and run until its kernel has gone on from the suspend hypercall.
 */
export function checkpoint(th: TestHost, hd: HostDomain): Uint8Array {
  suspend(th, hd);
  const img = writeImage(th, hd);
  const cancelled = hd.kernel.suspend.cancelled;
  th.host.resumeSuspended(hd.domid);
  if (!runUntil(th, 5, () => hd.kernel.suspend.cancelled > cancelled || th.hv.domains.get(hd.domid)?.state !== "running")) {
    throw new Error(`d${hd.domid} did not go on from its cancelled suspend within 5 ms: ${describe(th, hd)}`);
  }
  return img;
}

/**
 * `xl restore`: the image into `th`. Unless `paused`, runs until the fresh kernel has rebuilt
 * itself from the guest's pages (it does on its first run), so that what `progress` reads next is
 * the restored kernel's state.
 */
export function restore(th: TestHost, image: Uint8Array, paused = false): HostDomain {
  return restoreWith(th, image, () => {}, paused);
}

function restoreWith(th: TestHost, image: Uint8Array, onStreamComplete: (r: RestoreResult) => void, paused = false): HostDomain {
  const img = openImage(bytesSource(image));
  const width = img.pvInfo.guestWidth === 8 ? 64 : 32;
  const text = configTextFromJson(img.config, width);
  const cfg = { ...parseGuestConfig(text, "<saved>"), source: { file: "<saved>", text } };
  const gen = th.host.restore(cfg, img, { paused, onStreamComplete });
  let r = gen.next();
  while (!r.done) r = gen.next();
  const hd = r.value;
  if (!paused && !runUntil(th, 5, () => hd.kernel.booted || th.hv.domains.get(hd.domid)?.state !== "running")) {
    throw new Error(`the restored kernel did not rebuild itself within 5 ms: ${describe(th, hd)}`);
  }
  return hd;
}

// ---- the checks ---------------------------------------------------------------------------------

/** What the checks compare before and after a run. */
export interface Progress {
  ticks: number[];
  forkexec: { exits: number; checks: number; faults: number; munmaps: number } | undefined;
  ipistorm: { calls: number; received: number; stopMachines: number } | undefined;
  pingpong: number | undefined;
  shootdowns: number;
}

export function progress(k: XenLinux): Progress {
  const fe = k.workloads.find((w) => w instanceof ForkExec);
  const is = k.workloads.find((w) => w instanceof IpiStorm);
  const pp = k.workloads.find((w) => w instanceof IpiPingPong);
  const s = fe?.sched.stats;
  return {
    ticks: k.percpu.map((p) => p.ticks),
    forkexec: s && { exits: s.exits, checks: s.checks, faults: s.faults, munmaps: s.munmaps },
    ipistorm: is && { calls: is.calls, received: is.received, stopMachines: is.stopMachines },
    pingpong: pp?.total,
    shootdowns: k.mmu?.shootdowns ?? 0,
  };
}

/** The domain's trouble: not running, crashed, audit findings. Empty when all is well. */
export function health(th: TestHost, hd: HostDomain): string[] {
  const out: string[] = [];
  const d = th.hv.domains.get(hd.domid);
  if (!d) return [`d${hd.domid} is gone`];
  if (d.state !== "running") {
    const err = th.hv.lastGuestError instanceof Error ? `: ${th.hv.lastGuestError.message}` : "";
    out.push(`d${hd.domid} is ${d.state} (code ${d.shutdownCode})${err}`);
  }
  const ks = new Map([[hd.domid, hd.kernel]]);
  for (const p of auditEvtchn(th.hv, ks)) out.push(`auditEvtchn: ${p}`);
  for (const p of auditMm(th.hv, ks)) out.push(`auditMm: ${p}`);
  return out;
}

/** What did not move from `a` to `b`. */
export function stalls(a: Progress, b: Progress): string[] {
  const out: string[] = [];
  b.ticks.forEach((t, c) => {
    if (!(t > (a.ticks[c] ?? 0))) out.push(`CPU${c}'s timer did not tick (${a.ticks[c]} -> ${t})`);
  });
  const grew = (what: string, x: number | undefined, y: number | undefined) => {
    if (x !== undefined && !(y! > x)) out.push(`${what} did not grow (${x} -> ${y})`);
  };
  grew("forkexec exits", a.forkexec?.exits, b.forkexec?.exits);
  grew("forkexec page checks", a.forkexec?.checks, b.forkexec?.checks);
  grew("ipistorm calls", a.ipistorm?.calls, b.ipistorm?.calls);
  grew("ipistorm IPIs received", a.ipistorm?.received, b.ipistorm?.received);
  grew("ipi_pingpong IPIs", a.pingpong, b.pingpong);
  return out;
}

/** Runs `ms` and returns every problem: the domain's health and what did not make progress. */
export function runAndCheck(th: TestHost, hd: HostDomain, ms: number): string[] {
  const before = progress(hd.kernel);
  const bad = health(th, hd);
  if (bad.length > 0) return bad;
  run(th, ms);
  return [...health(th, hd), ...stalls(before, progress(hd.kernel))];
}

export function describe(th: TestHost, hd: HostDomain): string {
  const d = th.hv.domains.get(hd.domid);
  return `host seed ${th.seed}, d${hd.domid} ${d?.state ?? "gone"} at ${(th.host.now() / MS).toFixed(3)} ms; ${JSON.stringify(progress(hd.kernel))}`;
}

// ---- many seeds and moments -------------------------------------------------------------------

/** The guest size of the many-moments runs: small, so that 200 saves and restores stay quick. */
export const MOMENTS_MEMORY = 8;
export const MOMENTS_PER_SEED = 10;
/** Virtual time the restored guest runs for its checks: more than one tick (4 ms) on every CPU. */
export const MOMENTS_RUN_MS = 6;

export interface MomentResult {
  seed: number;
  moment: number;
  /** Virtual time of the source host when the suspend was asked for. */
  atMs: number;
  problems: string[];
}

/** The virtual time the source runs before moment `m`'s suspend: 0.2 to 5 ms, from the seed. */
export function momentGaps(seed: number, moments = MOMENTS_PER_SEED): number[] {
  const rng = new Rng(seed * 7919 + 17);
  return Array.from({ length: moments }, () => 0.2 + rng.below(4800) / 1000);
}

/**
 * One seed's run: a guest (64-bit for odd seeds, PAE for even ones) on host `seed`; before each
 * moment it runs its gap, then `xl save -c` writes an image; each image is restored into a fresh
 * host (seed 1000 * seed + moment) whose guest must pass the checks over MOMENTS_RUN_MS. The
 * source must pass them too after each cancelled suspend (its problems are moment -1's, at the end).
 * `onlyUpTo` stops after that moment (a replay).
 */
export function momentsRun(seed: number, onlyUpTo = MOMENTS_PER_SEED - 1): MomentResult[] {
  const out: MomentResult[] = [];
  const a = newHost(seed, 64);
  const hd = createGuest(a, { width: seed % 2 === 1 ? 64 : 32, memory: MOMENTS_MEMORY });
  const sourceProblems: string[] = [];
  const gaps = momentGaps(seed);
  for (let m = 0; m <= onlyUpTo; m++) {
    run(a, gaps[m]!);
    const atMs = a.host.now() / MS;
    let problems: string[];
    try {
      const before = progress(hd.kernel);
      const image = checkpoint(a, hd);
      for (const p of health(a, hd)) sourceProblems.push(`after moment ${m}'s cancelled suspend: ${p}`);
      const b = newHost(1000 * seed + m, 64);
      const hd2 = restore(b, image);
      problems = runAndCheck(b, hd2, MOMENTS_RUN_MS);
      // What the restored kernel counted is what the source had counted when it saved.
      const restored = progress(hd2.kernel);
      if (restored.forkexec && before.forkexec && restored.forkexec.exits < before.forkexec.exits) {
        problems.push(`the restored forkexec counters went back (${before.forkexec.exits} exits before the save)`);
      }
    } catch (e) {
      problems = [`${(e as Error).message}`];
    }
    out.push({ seed, moment: m, atMs, problems });
    if (problems.some((p) => p.includes("did not suspend"))) break;
  }
  for (const p of runAndCheck(a, hd, MOMENTS_RUN_MS)) sourceProblems.push(`source after all moments: ${p}`);
  out.push({ seed, moment: -1, atMs: a.host.now() / MS, problems: sourceProblems });
  return out;
}

// ---- determinism --------------------------------------------------------------------------------

/** The uuid of the determinism test's guest: xl would make a random one. */
export const DIGEST_UUID = "5e1f0c2a-7d3b-4c8e-9a61-0b2d4f6e8a13";

/** The sha256 of the image of a guest saved `saveAtMs` after it could first suspend. */
export function imageDigest(seed: number, width: 32 | 64, saveAtMs: number): { digest: string; bytes: number } {
  const th = newHost(seed, 64);
  const hd = createGuest(th, { width, memory: 16, uuid: DIGEST_UUID });
  run(th, saveAtMs);
  const image = save(th, hd);
  return { digest: createHash("sha256").update(image).digest("hex"), bytes: image.length };
}

// ---- run in a child process (test/save_restore.test.ts spreads the seeds over two) ----------------
//   node --import tsx test/sr_harness.ts moments SEED[,SEED...]   one JSON MomentResult[] per line
//   node --import tsx test/sr_harness.ts digest SEED WIDTH MS      one JSON line

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [what, ...args] = process.argv.slice(2);
  if (what === "moments") {
    for (const s of (args[0] ?? "").split(",").filter((x) => x !== "")) process.stdout.write(`${JSON.stringify(momentsRun(Number(s)))}\n`);
  } else if (what === "digest") {
    process.stdout.write(`${JSON.stringify(imageDigest(Number(args[0]), Number(args[1]) as 32 | 64, Number(args[2])))}\n`);
  } else {
    process.stderr.write("usage: sr_harness.ts moments SEEDS | digest SEED WIDTH MS\n");
    process.exitCode = 2;
  }
}
