// `xensim up` / `down` start and stop a host (the xl commands that drive it are in xl.ts).

import { spawn } from "node:child_process";
import { existsSync, fstatSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { bootMachine } from "../harness/machine.ts";
import { DEFAULT_HOST } from "../toolstack/libxl/host.ts";
import { HOST_FILES, serveHost } from "../toolstack/xl/host_server.ts";
import { parseSeed } from "../util/rng.ts";
import { fitsSunPath, SUN_PATH_MAX } from "../util/unix_socket.ts";
import { request } from "./xl.ts";

export function registerHost(program: Command): void {
  program
    .command("up")
    .description("start a host: the hypervisor, dom0, xenstored (DIR/xenstored.sock), xenconsoled and a control socket")
    .requiredOption("--dir <dir>", "host directory for its sockets, pid file and log")
    .option("--speed <x>", "virtual seconds per wall-clock second", "1")
    .option("--pcpus <n>", "physical CPUs", String(DEFAULT_HOST.pcpus))
    .option("--memory <MiB>", "machine memory", String(DEFAULT_HOST.machineMiB))
    .option("--seed <n>", "the machine's seed", String(DEFAULT_HOST.seed))
    .option("--sched <kind>", "Xen's credit scheduler, or the seeded interleaver scenarios use (credit|interleave)", "credit")
    .option("--migrate-listen <addr:port>", "take incoming migrations (xl migrate-receive) on this TCP address")
    .option("--foreground", "run here instead of in the background")
    .action(async (opts: { dir: string; speed: string; pcpus: string; memory: string; seed: string; sched: string; migrateListen?: string; foreground?: boolean }) => {
      const dir = resolve(opts.dir);
      const speed = Number(opts.speed);
      const pcpus = Number(opts.pcpus);
      const machineMiB = Number(opts.memory);
      const seed = parseUpSeed(opts.seed);
      if (!(speed > 0 && speed <= 1000)) throw new Error("--speed must be a number in (0, 1000]");
      if (!Number.isInteger(pcpus) || pcpus < 1 || pcpus > 64) throw new Error("--pcpus must be 1..64");
      if (!Number.isInteger(machineMiB) || machineMiB < 64 || machineMiB > 65536) throw new Error("--memory must be 64..65536 MiB");
      if (opts.sched !== "credit" && opts.sched !== "interleave") throw new Error("--sched must be credit or interleave");
      const sched: "credit" | "interleave" = opts.sched;
      const migrateListen = opts.migrateListen === undefined ? undefined : parseHostPort(opts.migrateListen, "--migrate-listen");
      mkdirSync(dir, { recursive: true });
      if (await isUp(dir)) throw new Error(`a host is already running in ${dir}`);
      if (!opts.foreground) {
        await startInBackground(dir);
        return;
      }
      const running = await serveHost({
        dir,
        speed,
        params: { ...DEFAULT_HOST, pcpus, machineMiB, seed, sched },
        boot: bootMachine({ ...DEFAULT_HOST, pcpus, machineMiB, seed, sched }),
        log: (line) => console.log(`xensim: ${line}`),
        ...(migrateListen ? { migrateListen } : {}),
      });
      // Handlers before the announcement: whoever reads it may signal at once.
      const quit = () => void running.stop();
      process.once("SIGINT", quit);
      process.once("SIGTERM", quit);
      const mig = migrateListen ? `, migrations on ${migrateListen.host}:${migrateListen.port}` : "";
      console.log(`xensim: host up in ${dir}: ${pcpus} pCPUs, ${machineMiB} MiB, speed ${speed}x, ${sched} scheduler${mig} (pid ${process.pid})`);
      await running.stopped;
      console.log("xensim: host stopped");
      // Nothing of the host is left to wait for; do not linger on idle handles.
      process.exit(0);
    });

  program
    .command("down")
    .description("stop the host running in DIR")
    .requiredOption("--dir <dir>", "host directory")
    .action(async (opts: { dir: string }) => {
      await hostDown(resolve(opts.dir));
    });
}

/**
 * Stops the host in `dir` whatever state it is in: asked politely if it answers, then SIGTERM,
 * then SIGKILL; a host that already died (kill -9) leaves sockets and a pid file, which go.
 */
async function hostDown(dir: string): Promise<void> {
  const pid = readPid(dir);
  const alive = pid !== undefined && isRunning(pid);
  let answered = false;
  if (alive || existsSync(join(dir, HOST_FILES.control))) {
    answered = await withTimeout(
      request(dir, { cmd: "down" }).then(
        () => true,
        () => false,
      ),
      DOWN_ANSWER_MS,
      false,
    );
  }
  if (pid !== undefined && alive) {
    let gone = answered && (await waitGone(pid, 10_000));
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      if (gone) break;
      console.error(`xensim: the host (pid ${pid}) did not stop; sending ${signal}`);
      process.kill(pid, signal);
      gone = await waitGone(pid, 5_000);
    }
    if (!gone) throw new Error(`host process ${pid} did not stop`);
  }
  const stale = [HOST_FILES.control, HOST_FILES.xenstored, HOST_FILES.pid].map((f) => join(dir, f)).filter((f) => existsSync(f));
  if (stale.length > 0) {
    for (const f of stale) rmSync(f, { force: true });
    if (!answered) console.error(`xensim: the host in ${dir} had died; removed ${stale.length} stale file(s)`);
  }
  if (!alive && !answered && stale.length === 0) throw new Error(`no host is running in ${dir}`);
}

/** How long `down` waits for a host to answer before it signals the process. */
const DOWN_ANSWER_MS = 5_000;

function withTimeout<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return new Promise((resolvePromise) => {
    const t = setTimeout(() => resolvePromise(fallback), ms);
    void p.then((v) => {
      clearTimeout(t);
      resolvePromise(v);
    });
  });
}

/** `--seed`, read exactly (a seed past 32 bits would alias a smaller one). */
function parseUpSeed(text: string): number {
  try {
    return parseSeed(text);
  } catch (e) {
    throw new Error(`--seed ${text}: ${(e as Error).message}`);
  }
}

async function isUp(dir: string): Promise<boolean> {
  if (!existsSync(join(dir, HOST_FILES.control))) return false;
  try {
    await request(dir, { cmd: "list" });
    return true;
  } catch {
    return false;
  }
}

function readPid(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dir, HOST_FILES.pid), "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Starts `xensim up --foreground` detached, logging to DIR/host.log, and waits for it to answer. */
async function startInBackground(dir: string): Promise<void> {
  const log = openSync(join(dir, HOST_FILES.log), "a");
  const logStart = fstatSync(log).size;
  const args = process.argv.slice(1).filter((a) => a !== "--foreground");
  const child = spawn(process.execPath, [...process.execArgv, ...args, "--foreground"], { detached: true, stdio: ["ignore", log, log] });
  child.unref();
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (await isUp(dir)) {
      const xs = join(dir, HOST_FILES.xenstored);
      // xensim reaches a longer socket path through its directory; C clients cannot.
      const note = fitsSunPath(xs) ? "" : ` (longer than ${SUN_PATH_MAX} bytes: Xen's own xenstore clients cannot connect to it)`;
      console.log(`xensim: host up in ${dir} (pid ${child.pid}); xenstored at ${xs}${note}`);
      return;
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  // The child's own last line says why (it exits on any error), so say it here too.
  const said = readFileSync(join(dir, HOST_FILES.log), "utf8").slice(logStart).trim().split("\n").pop();
  throw new Error(`the host did not come up${said ? `: ${said.replace(/^xensim: /, "")}` : ""}; see ${join(dir, HOST_FILES.log)}`);
}

/** Whether `pid` still runs (an exited process its parent has not reaped yet does not). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }
}

/** Whether `pid` went within `ms`. */
async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isRunning(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !isRunning(pid);
}

/** ADDR:PORT (the port 1..65535). */
export function parseHostPort(text: string, what: string): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : Number.NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new Error(`${what}: ${JSON.stringify(text)} is not ADDR:PORT`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}
