// `xensim up` / `down` start and stop a host (the xl commands that drive it are in xl.ts).

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { bootMachine } from "../harness/machine.ts";
import { DEFAULT_HOST } from "../toolstack/libxl/host.ts";
import { HOST_FILES, serveHost } from "../toolstack/xl/host_server.ts";
import { request, xl } from "./xl.ts";

export function registerHost(program: Command): void {
  program
    .command("up")
    .description("start a host: the hypervisor, dom0, xenstored (DIR/xenstored.sock), xenconsoled and a control socket")
    .requiredOption("--dir <dir>", "host directory for its sockets, pid file and log")
    .option("--speed <x>", "virtual seconds per wall-clock second", "1")
    .option("--pcpus <n>", "physical CPUs", String(DEFAULT_HOST.pcpus))
    .option("--memory <MiB>", "machine memory", String(DEFAULT_HOST.machineMiB))
    .option("--seed <n>", "the machine's seed", String(DEFAULT_HOST.seed))
    .option("--foreground", "run here instead of in the background")
    .action(async (opts: { dir: string; speed: string; pcpus: string; memory: string; seed: string; foreground?: boolean }) => {
      const dir = resolve(opts.dir);
      const speed = Number(opts.speed);
      const pcpus = Number(opts.pcpus);
      const machineMiB = Number(opts.memory);
      const seed = Number(opts.seed);
      if (!(speed > 0 && speed <= 1000)) throw new Error("--speed must be a number in (0, 1000]");
      if (!Number.isInteger(pcpus) || pcpus < 1 || pcpus > 64) throw new Error("--pcpus must be 1..64");
      if (!Number.isInteger(machineMiB) || machineMiB < 64 || machineMiB > 65536) throw new Error("--memory must be 64..65536 MiB");
      if (!Number.isInteger(seed) || seed < 0) throw new Error("--seed must be a non-negative integer");
      mkdirSync(dir, { recursive: true });
      if (await isUp(dir)) throw new Error(`a host is already running in ${dir}`);
      if (!opts.foreground) {
        await startInBackground(dir);
        return;
      }
      const running = await serveHost({
        dir,
        speed,
        params: { ...DEFAULT_HOST, pcpus, machineMiB, seed },
        boot: bootMachine({ ...DEFAULT_HOST, pcpus, machineMiB, seed }),
        log: (line) => console.log(`xensim: ${line}`),
      });
      console.log(`xensim: host up in ${dir}: ${pcpus} pCPUs, ${machineMiB} MiB, speed ${speed}x (pid ${process.pid})`);
      const quit = () => void running.stop();
      process.once("SIGINT", quit);
      process.once("SIGTERM", quit);
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
      const dir = resolve(opts.dir);
      const pid = readPid(dir);
      await xl(dir, { cmd: "down" });
      if (pid !== undefined) await waitGone(pid, 10_000);
    });
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
  const args = process.argv.slice(1).filter((a) => a !== "--foreground");
  const child = spawn(process.execPath, [...process.execArgv, ...args, "--foreground"], { detached: true, stdio: ["ignore", log, log] });
  child.unref();
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (await isUp(dir)) {
      console.log(`xensim: host up in ${dir} (pid ${child.pid}); xenstored at ${join(dir, HOST_FILES.xenstored)}`);
      return;
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the host did not come up; see ${join(dir, HOST_FILES.log)}`);
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

async function waitGone(pid: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isRunning(pid)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`host process ${pid} did not stop`);
}
