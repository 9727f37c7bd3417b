// `xensim bench xenstore`: the project's xenstored beside Xen 4.17's C xenstored and oxenstored,
// driven by the same client (src/toolstack/xs_client.ts) in the same run. Each figure is
// operations per second: read, write, directory, and an empty transaction (start + commit), each
// one request at a time and with 32 in flight, beside its ratio to C xenstored.
//
// Placement: on the 2-core machines the figures swing 2x with CPU placement (as measured with
// the reference daemons alone), so the daemon under test runs on CPU 1 and the client on CPU 0,
// for every daemon.
//
// This module also starts and stops the daemons; the xenstore tests use it through
// test/xs_harness.ts, so that the tests and the benchmark run each daemon the same way.

import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { encodeXsMsg, XS } from "../abi/xs_wire.ts";
import { toBytes, XsClient } from "../toolstack/xenstore/xs_client.ts";
import { type BenchRow, median, row } from "./common.ts";

// ---- starting and stopping daemons ----

export type DaemonKind = "ours" | "c" | "ocaml";

export const DAEMON_LABEL: Readonly<Record<DaemonKind, string>> = { ours: "xensim", c: "C xenstored", ocaml: "oxenstored" };

export interface RunningDaemon {
  kind: DaemonKind;
  /** Temporary directory holding the socket (and for the references the shim state). */
  dir: string;
  socket: string;
  pid: number;
  /** C/OCaml: the shim's list of existing domains (`$XS_SHIM_DIR/domains`). */
  domainsFile: string | undefined;
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Pin the daemon to this CPU (taskset). */
  cpu?: number;
  /** For "ours": the command that runs `xensim` (argv[0] first); `xenstored --socket PATH` is appended. */
  xensim?: readonly string[];
}

export const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));

// Xen's tools: Debian's packages unpacked by scripts/xen-tools.sh into the project's cache, or
// those under $XEN_ROOT (and the shim at $XENSHIM) when set. scripts/run-xenstored.sh starts them.

function xenToolsCache(): string {
  return process.env["XEN_TOOLS_CACHE"] || join(PROJECT_ROOT, ".cache", "xen-tools");
}

function xenRoot(): string {
  return process.env["XEN_ROOT"] || join(xenToolsCache(), "root");
}

function xenShim(): string {
  return process.env["XENSHIM"] || join(xenToolsCache(), "xenshim.so");
}

/** Why a reference daemon cannot run here, or undefined when it can. */
export function referenceUnavailable(kind: "c" | "ocaml" = "c"): string | undefined {
  const exe = join(xenRoot(), "usr/lib/xen-4.17/bin", kind === "c" ? "xenstored" : "oxenstored");
  const fix = "run `bash scripts/xen-tools.sh` (or set XEN_ROOT and XENSHIM)";
  if (!existsSync(exe)) return `${exe} not found: ${fix}`;
  if (!existsSync(xenShim())) return `${xenShim()} not found: ${fix}`;
  if (!existsSync(runScript())) return `${runScript()} not found`;
  return undefined;
}

function runScript(): string {
  return join(PROJECT_ROOT, "scripts", "run-xenstored.sh");
}

const live = new Set<RunningDaemon>();
let exitHookInstalled = false;

/** Daemons still running when this process exits are killed (a failed test must not leak them). */
function trackExit(d: RunningDaemon): void {
  live.add(d);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const x of live) {
      try {
        process.kill(x.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
}

export async function startXenstored(kind: DaemonKind, opts: StartOptions = {}): Promise<RunningDaemon> {
  const dir = mkdtempSync(join(tmpdir(), `xensim-xs-${kind}-`));
  try {
    return kind === "ours" ? await startOurs(dir, opts) : await startReference(kind, dir, opts);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

async function startReference(kind: "c" | "ocaml", dir: string, opts: StartOptions): Promise<RunningDaemon> {
  const why = referenceUnavailable(kind);
  if (why) throw new Error(`reference ${kind} xenstored unavailable: ${why}`);
  const cmd = opts.cpu === undefined ? ["bash", runScript()] : ["taskset", "-c", String(opts.cpu), "bash", runScript()];
  await new Promise<void>((res, rej) => {
    const env = { ...process.env, XEN_ROOT: xenRoot(), XENSHIM: xenShim() };
    execFile(cmd[0]!, [...cmd.slice(1), kind, dir], { encoding: "utf8", env }, (err, _out, stderr) => {
      if (err) rej(new Error(`run-xenstored.sh ${kind} failed: ${stderr || err.message}`));
      else res();
    });
  });
  const pid = Number(readFileSync(join(dir, "pid"), "utf8").trim());
  const d: RunningDaemon = {
    kind,
    dir,
    socket: join(dir, "socket"),
    pid,
    domainsFile: join(dir, "domains"),
    stop: async () => {
      live.delete(d);
      await killAndWait(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  trackExit(d);
  return d;
}

async function startOurs(dir: string, opts: StartOptions): Promise<RunningDaemon> {
  const socket = join(dir, "socket");
  const xensim = opts.xensim ?? [process.execPath, ...process.execArgv, process.argv[1] ?? join(PROJECT_ROOT, "src/cli/main.ts")];
  const argv = [...xensim, "xenstored", "--socket", socket];
  const full = opts.cpu === undefined ? argv : ["taskset", "-c", String(opts.cpu), ...argv];
  const child = spawn(full[0]!, full.slice(1), { cwd: PROJECT_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (b: Buffer) => {
    if (output.length < 16384) output += b.toString("utf8");
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  const t0 = Date.now();
  let exitCode: number | null | undefined;
  void exited.then((c) => {
    exitCode = c;
  });
  while (!existsSync(socket)) {
    if (exitCode !== undefined) {
      const unknown = /unknown command/i.test(output);
      throw new Error(
        unknown
          ? `the project's xenstored is not there yet: \`xensim xenstored --socket PATH\` is an unknown command (${output.trim()})`
          : `the project's xenstored exited (code ${exitCode}) before creating ${socket}:\n${output}`,
      );
    }
    if (Date.now() - t0 > 30_000) {
      child.kill("SIGKILL");
      throw new Error(`the project's xenstored did not create ${socket} within 30 s:\n${output}`);
    }
    await sleep(20);
  }
  const pid = child.pid!;
  const d: RunningDaemon = {
    kind: "ours",
    dir,
    socket,
    pid,
    domainsFile: undefined,
    stop: async () => {
      live.delete(d);
      if (exitCode === undefined) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  trackExit(d);
  ourChildren.set(pid, child);
  return d;
}

/** Our daemons' processes, to tell whether one has exited (its pid may not be reaped yet). */
const ourChildren = new Map<number, ChildProcess>();

/** True while the daemon process runs. */
export function daemonAlive(d: RunningDaemon): boolean {
  const child = ourChildren.get(d.pid);
  if (child) return child.exitCode === null && child.signalCode === null;
  try {
    process.kill(d.pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Resident memory of a process in KiB, from /proc/<pid>/status. */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

async function killAndWait(pid: number): Promise<void> {
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, "SIGTERM");
  for (let i = 0; i < 250 && alive(); i++) await sleep(20);
  if (alive()) process.kill(pid, "SIGKILL");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---- the benchmark ----

export const XENSTORE_CASES = ["read", "write", "directory", "transaction"] as const;
type Op = (typeof XENSTORE_CASES)[number];

const KINDS: readonly DaemonKind[] = ["ours", "c", "ocaml"];
const DEPTHS = [1, 32] as const;
const ROUNDS = 5;
/** Every daemon runs on CPU_DAEMON; the client on the same CPU one request at a time, on CPU_CLIENT with 32 in flight. */
const CPU_DAEMON = 1;
const CPU_CLIENT = 0;
/** A client busier than this (share of its CPU) may have held the daemon back: the row says so. */
const CLIENT_BOUND = 0.9;

export const XENSTORE_NOTES = [
  "ops/s through one socket connection: one request at a time (1), or 32 in flight (32); median of 5 rounds alternating",
  "between the daemons. ratio = figure / C xenstored's for the same case (for daemon CPU per op, above 1 = more CPU than C).",
  "Daemons: xensim = `xensim xenstored`; C xenstored and oxenstored are Xen 4.17 (Debian) under the project's shim (scripts/xenshim.c).",
  `Placement (taskset): every daemon on CPU ${CPU_DAEMON}. One at a time, the client is on the same CPU: across CPUs this VM's`,
  "wake-up latency dominates (about 2-3k ops/s whatever the daemon). 32 in flight, the client is on CPU 0, so that its own",
  `work does not take the daemon's CPU; a row marked "client-bound" had the client busy over ${CLIENT_BOUND * 100}% of the time.`,
  "daemon CPU per op: the daemon's CPU time (all its threads, /proc/<pid>/task/*/schedstat) per operation, 32 in flight.",
  "read = READ of a 32-byte node; write = WRITE of 32 bytes to one node; directory = DIRECTORY of a node with 10 children;",
  "transaction = TRANSACTION_START then TRANSACTION_END(T), nothing in between.",
];

interface Load {
  /** Sends one operation's first request; calls `done` when the operation is complete, with what went wrong if it did. */
  start(c: XsClient, done: (error?: string) => void): void;
}

function encodeOnce(type: number, payload: Uint8Array, txId = 0): Uint8Array {
  return encodeXsMsg(type, 0, txId, payload);
}

function loadFor(op: Op): Load {
  const expect = (type: number, msg: Uint8Array): Load => ({
    start(c, done) {
      c.sendEncoded(msg, (t) => (t === type ? done() : done(`${op}: reply of type ${t}`)));
    },
  });
  switch (op) {
    case "read":
      return expect(XS.READ, encodeOnce(XS.READ, toBytes(["/bench/r"])));
    case "write":
      return expect(XS.WRITE, encodeOnce(XS.WRITE, Buffer.from(`/bench/w\0${"w".repeat(32)}`, "latin1")));
    case "directory":
      return expect(XS.DIRECTORY, encodeOnce(XS.DIRECTORY, toBytes(["/bench/dir"])));
    case "transaction": {
      const startMsg = encodeOnce(XS.TRANSACTION_START, toBytes([""]));
      const endMsg = encodeOnce(XS.TRANSACTION_END, toBytes(["T"]));
      return {
        start(c, done) {
          c.sendEncoded(startMsg, (t, _r, _tx, buf, off, len) => {
            if (t !== XS.TRANSACTION_START) {
              done(`transaction start: reply of type ${t}`);
              return;
            }
            let id = 0;
            for (let i = off; i < off + len && buf[i] !== 0; i++) id = id * 10 + buf[i]! - 48;
            // A fresh copy: the socket may still hold the previous one.
            const end = Buffer.from(endMsg);
            end.writeUInt32LE(id >>> 0, 8);
            c.sendEncoded(end, (t2) => (t2 === XS.TRANSACTION_END ? done() : done(`transaction end: reply of type ${t2}`)));
          });
        },
      };
    }
  }
}

interface Sample {
  opsPerSec: number;
  /** Daemon CPU time per operation, in microseconds. */
  daemonUs: number;
  /** Share of the wall time the client was on a CPU. */
  clientBusy: number;
}

/** CPU time of all threads of `pid`, in nanoseconds. */
function cpuNs(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return ns;
}

/** Runs `load` with `depth` operations in flight for `ms`. */
function runLoad(c: XsClient, pid: number, load: Load, depth: number, ms: number): Promise<Sample> {
  return new Promise((resolve, reject) => {
    let completed = 0;
    let inFlight = 0;
    let failed: string | undefined;
    const d0 = cpuNs(pid);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const deadline = t0 + ms;
    const next = () => {
      inFlight++;
      load.start(c, done);
    };
    const done = (error?: string) => {
      if (error !== undefined) failed ??= error;
      completed++;
      inFlight--;
      const now = performance.now();
      if (failed === undefined && now < deadline && !c.isClosed) next();
      else if (inFlight === 0) {
        if (failed !== undefined) {
          reject(new Error(failed));
          return;
        }
        const cu = process.cpuUsage(c0);
        resolve({
          opsPerSec: (completed * 1000) / (now - t0),
          daemonUs: (cpuNs(pid) - d0) / 1000 / completed,
          clientBusy: (cu.user + cu.system) / 1000 / (now - t0),
        });
      }
    };
    void c.closed.then(() => reject(new Error("the daemon closed the connection")));
    for (let i = 0; i < depth; i++) next();
  });
}

interface Target {
  kind: DaemonKind;
  daemon: RunningDaemon | undefined;
  client: XsClient | undefined;
  unavailable: string | undefined;
}

async function prepare(c: XsClient): Promise<void> {
  await c.write("/bench/r", "r".repeat(32));
  await c.write("/bench/w", "");
  for (let i = 0; i < 10; i++) await c.mkdir(`/bench/dir/child-${i}`);
}

/** Moves this process (all its threads) to `cpu`. */
function pinSelf(cpu: number): void {
  execFileSync("taskset", ["-a", "-cp", String(cpu), String(process.pid)], { stdio: "ignore" });
}

function cpuFor(depth: number): number {
  return depth === 1 ? CPU_DAEMON : CPU_CLIENT;
}

/** `xensim bench xenstore --case <op>`: all three daemons, both depths, for one operation. */
export async function benchXenstore(op: string, ms: number): Promise<BenchRow[]> {
  if (!(XENSTORE_CASES as readonly string[]).includes(op)) throw new Error(`unknown xenstore case ${op}`);
  if (availableParallelism() < 2) throw new Error("bench xenstore needs 2 CPUs (daemon and client are pinned apart)");
  const load = loadFor(op as Op);
  const targets: Target[] = [];
  try {
    for (const kind of KINDS) {
      const t: Target = { kind, daemon: undefined, client: undefined, unavailable: undefined };
      targets.push(t);
      const why = kind === "ours" ? undefined : referenceUnavailable(kind);
      if (why !== undefined) {
        t.unavailable = why;
        continue;
      }
      try {
        t.daemon = await startXenstored(kind, { cpu: CPU_DAEMON });
        t.client = await XsClient.connect(t.daemon.socket);
        await prepare(t.client);
      } catch (e) {
        t.unavailable = `did not start: ${(e as Error).message.split("\n")[0]}`;
      }
    }
    const live = targets.filter((t) => t.client !== undefined);
    // Warm-up: JIT in the client (and in our daemon), and the daemons' caches.
    for (const d of DEPTHS) {
      pinSelf(cpuFor(d));
      for (const t of live) await runLoad(t.client!, t.daemon!.pid, load, d, Math.min(300, ms / 2));
    }
    const samples = new Map<string, Sample[]>();
    for (let r = 0; r < ROUNDS; r++) {
      for (const d of DEPTHS) {
        pinSelf(cpuFor(d));
        for (const t of live) {
          const sample = await runLoad(t.client!, t.daemon!.pid, load, d, ms / ROUNDS);
          const key = `${t.kind}/${d}`;
          samples.set(key, [...(samples.get(key) ?? []), sample]);
        }
      }
    }
    const med = (key: string, f: (s: Sample) => number) => {
      const s = samples.get(key);
      return s ? median(s.map(f)) : Number.NaN;
    };
    const rows: BenchRow[] = [];
    const label = (d: number) => (d === 1 ? "1 at a time" : `${d} in flight`);
    const na = (name: string, t: Target, base: number): BenchRow => ({ name, value: Number.NaN, unit: `unavailable: ${t.unavailable ?? "?"}`, baseline: base, ratio: Number.NaN });
    for (const d of DEPTHS) {
      const cRate = med(`c/${d}`, (s) => s.opsPerSec);
      for (const t of targets) {
        const key = `${t.kind}/${d}`;
        const busy = med(key, (s) => s.clientBusy);
        const name = `${op} ${label(d)} ${DAEMON_LABEL[t.kind]}${d > 1 && busy > CLIENT_BOUND ? " (client-bound)" : ""}`;
        rows.push(samples.has(key) ? row(name, med(key, (s) => s.opsPerSec), "ops/s", cRate) : na(name, t, cRate));
      }
    }
    const d = DEPTHS[DEPTHS.length - 1]!;
    const cUs = med(`c/${d}`, (s) => s.daemonUs);
    for (const t of targets) {
      const key = `${t.kind}/${d}`;
      const name = `${op} daemon CPU per op ${DAEMON_LABEL[t.kind]}`;
      if (!samples.has(key)) rows.push(na(name, t, cUs));
      else {
        const us = med(key, (s) => s.daemonUs);
        rows.push({ name, value: Math.round(us * 10) / 10, unit: "us/op", baseline: Math.round(cUs * 10) / 10, ratio: us / cUs });
      }
    }
    return rows;
  } finally {
    for (const t of targets) {
      t.client?.destroy();
      await t.daemon?.stop();
    }
  }
}
