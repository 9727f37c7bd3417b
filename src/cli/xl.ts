// The xl commands: `xensim -H DIR <command>` sends each to the host running in DIR and prints
// the answer in xl's formats.

import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { HOST_FILES } from "../toolstack/xl/host_server.ts";
import { formatDmesg, formatInfo, formatList, formatUptime, formatVcpuList, type XlDomainInfo, type XlHostInfo } from "../toolstack/xl/xl_format.ts";

type Reply = Record<string, unknown> & { ok?: boolean; error?: string };

/** One request to the host's control socket; `onMore` gets further lines (console). */
export function request(dir: string, req: Record<string, unknown>, onMore?: (r: Reply) => void): Promise<Reply> {
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
export async function xl(dir: string, req: Record<string, unknown>, onMore?: (r: Reply) => void): Promise<Reply | undefined> {
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

export function hostDir(program: Command): string {
  const dir = (program.opts() as { host?: string }).host ?? process.env["XENSIM_HOST"];
  if (!dir) throw new Error("which host? give -H DIR (or set XENSIM_HOST)");
  return resolve(dir);
}

export function registerXl(program: Command): void {
  program.option("-H, --host <dir>", "the host directory xl commands talk to (see `xensim up`)");

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
