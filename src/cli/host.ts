// `xensim up` / `down` start and stop a host; `xensim -H DIR <xl command>` drives it with xl's
// commands and output formats.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { bootMachine } from "../harness/machine.ts";
import { DEFAULT_HOST } from "../toolstack/libxl/host.ts";
import { HOST_FILES, serveHost } from "../toolstack/xl/host_server.ts";
import { formatDmesg, formatInfo, formatList, formatUptime, formatVcpuList, type XlDomainInfo, type XlHostInfo } from "../toolstack/xl/xl_format.ts";

type Reply = Record<string, unknown> & { ok?: boolean; error?: string };

/** One request to the host's control socket; `onMore` gets further lines (console). */
function request(dir: string, req: Record<string, unknown>, onMore?: (r: Reply) => void): Promise<Reply> {
  const path = join(dir, HOST_FILES.control);
  return new Promise((resolvePromise, reject) => {
    const sock = connect(path);
    let buf = "";
    let first: Reply | undefined;
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("error", (e: NodeJS.ErrnoException) =>
      reject(new Error(e.code === "ENOENT" || e.code === "ECONNREFUSED" ? `no host is running in ${dir}` : e.message)),
    );
    sock.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const r = JSON.parse(buf.slice(0, nl)) as Reply;
        buf = buf.slice(nl + 1);
        if (first === undefined) {
          first = r;
          if (!onMore || r.ok === false) {
            sock.end();
            resolvePromise(r);
          } else onMore(r);
        } else onMore?.(r);
      }
    });
    sock.on("close", () => {
      if (first) resolvePromise(first);
      else reject(new Error("the host closed the connection without answering"));
    });
  });
}

/** Runs an xl command: prints the error xl would and sets the exit code. */
async function xl(dir: string, req: Record<string, unknown>, onMore?: (r: Reply) => void): Promise<Reply | undefined> {
  const r = await request(dir, req, onMore);
  if (r.ok === false) {
    console.error(r.error ?? "failed");
    process.exitCode = 1;
    return undefined;
  }
  return r;
}

/** The host's domains, or those named (by name or id) as xl takes them. */
async function listDomains(program: Command, named: string[]): Promise<{ domains: XlDomainInfo[]; now: number } | undefined> {
  const r = await xl(hostDir(program), { cmd: "list" });
  if (!r) return undefined;
  const all = r["domains"] as XlDomainInfo[];
  const domains = named.length === 0 ? all : all.filter((d) => named.includes(d.name) || named.includes(String(d.domid)));
  return { domains, now: r["now"] as number };
}

function hostDir(program: Command): string {
  const dir = (program.opts() as { host?: string }).host ?? process.env["XENSIM_HOST"];
  if (!dir) throw new Error("which host? give -H DIR (or set XENSIM_HOST)");
  return resolve(dir);
}

export function registerHost(program: Command): void {
  program.option("-H, --host <dir>", "the host directory xl commands talk to (see `xensim up`)");

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

  program
    .command("create")
    .description("create a domain from an xl.cfg file")
    .argument("<cfg>", "domain config, e.g. examples/guest.cfg")
    .option("-p", "leave the domain paused after creating it")
    .action(async (file: string, opts: { p?: boolean }) => {
      const dir = hostDir(program);
      console.error(`Parsing config from ${file}`);
      let config: string;
      try {
        config = readFileSync(file, "utf8");
      } catch (e) {
        throw new Error(`Failed to read config file: ${file}: ${(e as Error).message}`);
      }
      const r = await xl(dir, { cmd: "create", config, file, paused: opts.p === true });
      for (const w of (r?.["warnings"] as string[] | undefined) ?? []) console.error(`WARNING: ${w}`);
    });

  program
    .command("list")
    .description("list domains")
    .option("-v, --verbose", "also UUIDs and shutdown reasons")
    .argument("[domains...]")
    .action(async (doms: string[], opts: { verbose?: boolean }) => {
      const r = await listDomains(program, doms);
      if (r) process.stdout.write(formatList(r.domains, { verbose: opts.verbose === true }));
    });

  for (const [name, what] of [
    ["destroy", "terminate a domain immediately"],
    ["pause", "pause a domain"],
    ["unpause", "unpause a paused domain"],
  ] as const) {
    program
      .command(name)
      .description(what)
      .argument("<domain>")
      .action(async (dom: string) => {
        await xl(hostDir(program), { cmd: name, dom });
      });
  }

  for (const [name, verb] of [
    ["shutdown", "Shutting down"],
    ["reboot", "Rebooting"],
  ] as const) {
    program
      .command(name)
      .description(`ask a domain to ${name === "shutdown" ? "power off" : "reboot"} through its control/shutdown node`)
      .option("-w", "wait for the domain to go")
      .argument("<domain>")
      .action(async (dom: string, opts: { w?: boolean }) => {
        console.error(`${verb} domain ${dom}`);
        await xl(hostDir(program), { cmd: name, dom, wait: opts.w === true });
      });
  }

  program
    .command("vcpu-list")
    .description("list the vCPUs of domains")
    .argument("[domains...]")
    .action(async (doms: string[]) => {
      const r = await listDomains(program, doms);
      if (r) process.stdout.write(formatVcpuList(r.domains));
    });

  program
    .command("uptime")
    .description("print the uptime of domains")
    .option("-s", "short output")
    .argument("[domains...]")
    .action(async (doms: string[], opts: { s?: boolean }) => {
      const r = await listDomains(program, doms);
      if (r) process.stdout.write(formatUptime(r.domains, r.now, { short: opts.s === true }));
    });

  program
    .command("info")
    .description("information about the host")
    .action(async () => {
      const r = await xl(hostDir(program), { cmd: "info" });
      if (!r) return;
      const wire = r["info"] as Omit<XlHostInfo, "virtStart"> & { virtStart: string };
      process.stdout.write(formatInfo({ ...wire, virtStart: BigInt(wire.virtStart) }));
    });

  program
    .command("dmesg")
    .description("Xen's console ring")
    .option("-c", "clear the ring after reading it")
    .action(async (opts: { c?: boolean }) => {
      const r = await xl(hostDir(program), { cmd: "dmesg", clear: opts.c === true });
      if (r) process.stdout.write(formatDmesg(r["lines"] as { timeNs: number; text: string }[]));
    });

  program
    .command("debug-keys")
    .description("send debug keys to Xen (their output goes to `dmesg`)")
    .argument("<keys>")
    .action(async (keys: string) => {
      await xl(hostDir(program), { cmd: "debug-keys", keys });
    });

  program
    .command("console")
    .description("attach to a domain's console (Ctrl-] or Ctrl-C detaches)")
    .argument("<domain>")
    .action(async (dom: string) => {
      const dir = hostDir(program);
      const write = (r: Reply) => {
        if (typeof r["text"] === "string") process.stdout.write(r["text"]);
      };
      if (process.stdin.isTTY) {
        process.stdin.setRawMode(true);
        process.stdin.on("data", (b) => {
          if (b.includes(0x1d) || b.includes(0x03)) process.exit(0);
        });
      }
      await xl(dir, { cmd: "console", dom }, write);
      if (process.stdin.isTTY) process.stdin.setRawMode(false);
      process.stdin.pause();
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
