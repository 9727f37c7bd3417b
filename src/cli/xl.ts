// The xl commands: `xensim -H DIR <command>` sends each to the host running in DIR and prints
// the answer in xl's formats.

import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { HOST_FILES } from "../toolstack/xl/host_server.ts";
import { type GuestConfig, parseGuestConfig } from "../toolstack/libxl/guest_cfg.ts";
import { dryRunConfig } from "../toolstack/xl/host_info.ts";
import {
  formatDmesg,
  formatDryRun,
  formatInfo,
  formatList,
  formatListLong,
  formatPace,
  formatUptime,
  formatVcpuList,
  type LibxlConfigView,
  type XlDomainInfo,
  type XlHostInfo,
  type XlPace,
} from "../toolstack/xl/xl_format.ts";
import { connectUnix } from "../util/unix_socket.ts";

type Reply = Record<string, unknown> & { ok?: boolean; error?: string };

/**
 * One request to the host's control socket; `onMore` gets further lines (console), and `onOpen`
 * a means to send more requests on the same connection (console input) and to hang up.
 */
export function request(
  dir: string,
  req: Record<string, unknown>,
  onMore?: (r: Reply) => void,
  onOpen?: (conn: { send(req: Record<string, unknown>): void; close(): void }) => void,
): Promise<Reply> {
  const path = join(dir, HOST_FILES.control);
  return new Promise((resolvePromise, reject) => {
    const sock = connectUnix(path);
    let buf = "";
    let first: Reply | undefined;
    sock.on("connect", () => {
      sock.write(`${JSON.stringify(req)}\n`);
      onOpen?.({
        send: (more) => {
          if (!sock.destroyed) sock.write(`${JSON.stringify(more)}\n`);
        },
        close: () => sock.end(),
      });
    });
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
export async function xl(
  dir: string,
  req: Record<string, unknown>,
  onMore?: (r: Reply) => void,
  onOpen?: (conn: { send(req: Record<string, unknown>): void; close(): void }) => void,
): Promise<Reply | undefined> {
  const r = await request(dir, req, onMore, onOpen);
  if (r.ok === false) {
    console.error(r.error ?? "failed");
    process.exitCode = typeof r["exit"] === "number" ? r["exit"] : 1;
    return undefined;
  }
  return r;
}

/** One domain argument as find_domain (xl_utils.c) resolved it: a domid, or xl's error for a name no domain has. */
interface FoundDomain {
  arg: string;
  domid?: number;
  error?: string;
}

interface ListReply {
  /** Every domain, in domid order. */
  domains: XlDomainInfo[];
  /** dom0's clock, seconds since the epoch. */
  now: number;
  args: FoundDomain[];
  configs?: { domid: number; config: LibxlConfigView }[];
}

/** The host's domains, with each argument looked up as xl's find_domain does. */
async function listDomains(program: Command, args: string[], extra: Record<string, unknown> = {}): Promise<ListReply | undefined> {
  const r = await xl(hostDir(program), { cmd: "list", doms: args, ...extra });
  return r ? (r as unknown as ListReply) : undefined;
}

/** find_domain's failure: its message and EXIT_FAILURE. Returns whether every argument resolved. */
function allFound(args: FoundDomain[]): args is (FoundDomain & { domid: number })[] {
  const bad = args.find((a) => a.domid === undefined);
  if (!bad) return true;
  console.error(bad.error ?? `${bad.arg} is an invalid domain identifier (rc=-6)`);
  process.exitCode = 1;
  return false;
}

/** Drops a table's header line. */
function rows(table: string): string {
  return table.slice(table.indexOf("\n") + 1);
}

/** strtoul/strtol in base 10: blanks, a sign, digits; where the digits end, and whether there were any. */
function cStrtol(text: string): { value: number; digits: boolean } {
  const m = /^[\t\n\v\f\r ]*([+-]?)(\d*)/.exec(text)!;
  const digits = m[2]!.length > 0;
  const n = digits ? Number(m[2]) : 0;
  return { value: m[1] === "-" ? -n : n, digits };
}

const CREATE_NEEDS = `The config file is xl.cfg(5) for a PV guest (see examples/guest.cfg); with -n nothing is created
and no host is needed. Without -e the host's monitor applies on_poweroff, on_reboot and on_crash.`;
const SHUTDOWN_NEEDS = `The request goes into the domain's control/shutdown node; the command returns once the guest's
kernel has acknowledged it (cleared the node), or fails after 60 s of the machine's time.`;
const CONSOLE_NEEDS = `A guest domain with its PV console (domain 0 has none). Keys go to the guest, whose tty echoes
them; a lone Ctrl-] detaches.`;
const VCPU_SET_NEEDS = `vCPUs go on- and offline through the domain's cpu/N/availability nodes, up to the config's
maxvcpus; the guest's kernel does the hotplug.`;

/** The help text every xl command ends with: where it finds the host. */
const HOST_HELP = "\nIt talks to the host in -H DIR (or $XENSIM_HOST), which `xensim up --dir DIR` started.";

/** An xl command with xl's summary and usage line (xl_cmdtable.c), and what it needs from the host. */
function xlCommand(program: Command, name: string, summary: string, usage: string, needs = ""): Command {
  return program
    .command(name)
    .description(summary)
    .usage(usage)
    .addHelpText("after", `${HOST_HELP}${needs === "" ? "" : `\n${needs}`}`);
}

/**
 * xl console's client side, as xenconsole runs it: the domain's output so far, then whatever it
 * prints; keyboard input goes to the guest through its console ring. On a terminal, stdin is in
 * raw mode (Ctrl-C reaches the guest) and a lone Ctrl-] detaches, as in xenconsole. Input that
 * is not a terminal is sent too (xenconsole ignores it), and its end does not detach.
 */
async function attachConsole(dir: string, dom: string, type = "pv", num = 0): Promise<void> {
  const tty = process.stdin.isTTY === true;
  let conn: { send(req: Record<string, unknown>): void; close(): void } | undefined;
  let domid: number | undefined;
  const queued: Buffer[] = [];
  const send = (b: Buffer) => conn?.send({ cmd: "console-input", dom: String(domid), data: b.toString("base64") });
  const onInput = (b: Buffer) => {
    if (tty && b.length === 1 && b[0] === 0x1d) {
      conn?.close();
      return;
    }
    if (domid === undefined) queued.push(b);
    else send(b);
  };
  const done = () => {
    process.stdin.off("data", onInput);
    if (tty) process.stdin.setRawMode(false);
    process.stdin.pause();
  };
  if (tty) process.stdin.setRawMode(true);
  process.stdin.on("data", onInput);
  try {
    await xl(
      dir,
      { cmd: "console", dom, type, num },
      (r) => {
        if (typeof r["domid"] === "number" && domid === undefined) {
          domid = r["domid"];
          for (const b of queued.splice(0)) send(b);
        }
        if (typeof r["text"] === "string") process.stdout.write(r["text"]);
      },
      (c) => {
        conn = c;
      },
    );
  } finally {
    done();
  }
}

export function hostDir(program: Command): string {
  const dir = (program.opts() as { host?: string }).host ?? process.env["XENSIM_HOST"];
  if (!dir) throw new Error("which host? give -H DIR (or set XENSIM_HOST)");
  return resolve(dir);
}

export function registerXl(program: Command): void {
  program.option("-H, --host <dir>", "the host directory xl commands talk to (default: $XENSIM_HOST; see `xensim up`)");

  xlCommand(program, "create", "Create a domain from config file <filename>", "<ConfigFile> [options] [vars]", CREATE_NEEDS)
    .argument("[args...]", "the config file (xl.cfg), then key=value settings, each added to it as a line of its own")
    .option("-c", "Connect to the console after the domain is created.")
    .option("-e", "Do not wait in the background for the death of the domain.")
    .option("-f, --defconfig <FILE>", "Use the given configuration file.")
    .option("-n, --dryrun", "Dry run - prints the resulting configuration")
    .option("-p", "Leave the domain paused after it is created.")
    .option("-q, --quiet", "Quiet.")
    .action(async (args: string[], opts: { c?: boolean; e?: boolean; defconfig?: string; dryrun?: boolean; p?: boolean; quiet?: boolean }, cmd: Command) => {
      // main_create: a word with '=' is a setting, the first other word the config file
      let file = opts.defconfig;
      const settings: string[] = [];
      for (const a of args) {
        if (a.includes("=")) settings.push(a);
        else if (file === undefined) file = a;
        else {
          cmd.outputHelp();
          process.exitCode = 2;
          return;
        }
      }
      if (file === undefined) {
        console.error("Config file not specified and none in save file");
        process.exitCode = 6; // ERROR_INVAL
        return;
      }
      let config = "";
      if (file !== "/dev/null") {
        try {
          config = readFileSync(file, "latin1");
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          console.error(`Failed to read config file: ${file}: ${err.code === "ENOENT" ? "No such file or directory" : err.message}`);
          process.exitCode = 3; // ERROR_FAIL
          return;
        }
      }
      // create_domain appends the settings after the file, as "\n%s\n"
      if (settings.length > 0) config += `\n${settings.map((x) => `${x}\n`).join("")}\n`;
      if (opts.quiet !== true) console.error(`Parsing config from ${file}`);
      if (opts.dryrun === true) {
        let cfg: GuestConfig;
        try {
          cfg = parseGuestConfig(config, file);
        } catch (e) {
          console.error((e as Error).message);
          process.exitCode = 1;
          return;
        }
        for (const w of cfg.warnings) console.error(`WARNING: ${w}`);
        process.stdout.write(formatDryRun(dryRunConfig({ ...cfg, source: { file, text: config } })));
        return;
      }
      const dir = hostDir(program);
      const r = await xl(dir, { cmd: "create", config, file, paused: opts.p === true, monitor: opts.e !== true });
      for (const w of (r?.["warnings"] as string[] | undefined) ?? []) console.error(`WARNING: ${w}`);
      if (r && opts.c === true) await attachConsole(dir, String(r["domid"]));
    });

  xlCommand(program, "list", "List information about all/some domains", "[options] [Domain]")
    .argument("[domain]")
    .option("-l, --long", "Output all VM details")
    .option("-v, --verbose", "Prints out UUIDs and security context")
    .action(async (dom: string | undefined, opts: { long?: boolean; verbose?: boolean }) => {
      const r = await listDomains(program, dom === undefined ? [] : [dom], { long: opts.long === true });
      if (!r || !allFound(r.args)) return;
      let domains = r.domains;
      if (dom !== undefined) {
        // main_list: libxl_domain_info for the one domain named
        domains = r.domains.filter((d) => d.domid === r.args[0]!.domid);
        if (domains.length === 0) {
          console.error(`Error: Domain '${dom}' does not exist.`);
          process.exitCode = 1;
          return;
        }
      }
      if (opts.long === true) process.stdout.write(formatListLong(r.configs ?? []));
      else process.stdout.write(formatList(domains, { verbose: opts.verbose === true }));
      // xensim's own note, apart from xl's table: how the machine keeps up with the wall clock
      const pace = (r as { pace?: XlPace | null }).pace;
      if (opts.verbose === true && opts.long !== true && pace) console.error(`xensim_speed: ${formatPace(pace)}`);
    });

  xlCommand(program, "destroy", "Terminate a domain immediately", "[options] <Domain>")
    .argument("<domain>")
    .option(
      "-f",
      "Permit destroying domain 0, which will only succeed when run from disaggregated toolstack domain with a hardware domain distinct from domain 0.",
    )
    .action(async (dom: string, opts: { f?: boolean }) => {
      await xl(hostDir(program), { cmd: "destroy", dom, force: opts.f === true });
    });

  for (const [name, what] of [
    ["pause", "Pause execution of a domain"],
    ["unpause", "Unpause a paused domain"],
  ] as const) {
    xlCommand(program, name, what, "<Domain>")
      .argument("<domain>")
      .action(async (dom: string) => {
        await xl(hostDir(program), { cmd: name, dom });
      });
  }

  for (const [name, summary, fallback] of [
    ["shutdown", "Issue a shutdown signal to a domain", "power"],
    ["reboot", "Issue a reboot signal to a domain", "reset"],
  ] as const) {
    xlCommand(program, name, summary, "[options] <-a|Domain>", SHUTDOWN_NEEDS)
      .argument("[domain]")
      .option("-a, --all", "Shutdown all guest domains.")
      .option(`-F`, `Fallback to ACPI ${fallback} event for HVM guests with no PV drivers (a PV domain never needs it).`)
      .option("-w, --wait", `Wait for guest(s) to ${name}; twice (-ww): until they are destroyed.`, (_v: unknown, n: number) => n + 1, 0)
      .action(async (dom: string | undefined, opts: { all?: boolean; wait: number }) => {
        // main_shutdown_or_reboot (xl_vmcontrol.c)
        if (dom === undefined && opts.all !== true) {
          console.error("You must specify -a or a domain id.\n");
          process.exitCode = 1;
          return;
        }
        const dir = hostDir(program);
        let ids: number[];
        if (opts.all === true) {
          const r = await listDomains(program, []);
          if (!r) return;
          ids = r.domains.filter((d) => d.domid !== 0).map((d) => d.domid);
        } else {
          const r = await listDomains(program, [dom!]);
          if (!r || !allFound(r.args)) return;
          ids = [r.args[0]!.domid!];
        }
        // the host runs shutdown_domain for each, then wait_for_domain_deaths, and sends xl's lines
        await xl(dir, { cmd: name, domids: ids, wait: Math.min(opts.wait, 2) }, (r) => {
          if (typeof r["log"] === "string") console.error(r["log"]);
          if (typeof r["exit"] === "number") process.exitCode = r["exit"];
        });
      });
  }

  xlCommand(program, "vcpu-list", "List the VCPUs for all/some domains", "[Domain, ...]")
    .argument("[domains...]")
    .action(async (doms: string[]) => {
      const r = await listDomains(program, doms);
      if (!r) return;
      // vcpulist (xl_vcpu.c): the header first, then each domain as find_domain names it
      process.stdout.write(formatVcpuList([]));
      if (doms.length === 0) {
        process.stdout.write(rows(formatVcpuList(r.domains)));
        return;
      }
      for (const a of r.args) {
        if (a.domid === undefined) {
          allFound([a]);
          return;
        }
        const d = r.domains.find((x) => x.domid === a.domid);
        // libxl_list_vcpu fails on a domain Xen does not have; xl goes on
        if (!d) console.error(`libxl: error: libxl_domain.c:1667:libxl_list_vcpu: Domain ${a.domid}:Getting infolist`);
        else process.stdout.write(rows(formatVcpuList([d])));
      }
    });

  xlCommand(program, "uptime", "Print uptime for all/some domains", "[-s] [Domain]")
    .option("-s", "Uptime in short format (with the time of day)")
    .argument("[domains...]")
    .action(async (doms: string[], opts: { s?: boolean }) => {
      const r = await listDomains(program, doms);
      // main_uptime: every argument through find_domain before anything is printed
      if (!r || !allFound(r.args)) return;
      const short = opts.s === true;
      // current_time_to_string: localtime
      const utcOffsetSec = -new Date(r.now * 1000).getTimezoneOffset() * 60;
      if (doms.length === 0) {
        process.stdout.write(formatUptime(r.domains, r.now, { short, utcOffsetSec }));
        return;
      }
      if (!short) process.stdout.write(formatUptime([], r.now, { short }));
      for (const a of r.args) {
        const d = r.domains.find((x) => x.domid === a.domid);
        // print_domU_uptime: libxl_vm_get_start_time fails, nothing is printed for it
        if (!d) console.error(`libxl: error: libxl_domain.c:2231:libxl_vm_get_start_time: Domain ${a.domid}:Can't get start time of domain`);
        else process.stdout.write(short ? formatUptime([d], r.now, { short, utcOffsetSec }) : rows(formatUptime([d], r.now, { short, utcOffsetSec })));
      }
    });

  xlCommand(program, "info", "Get information about Xen host", "[options]")
    .action(async () => {
      const r = await xl(hostDir(program), { cmd: "info" });
      if (!r) return;
      const wire = r["info"] as Omit<XlHostInfo, "virtStart"> & { virtStart: string };
      process.stdout.write(formatInfo({ ...wire, virtStart: BigInt(wire.virtStart) }));
    });

  xlCommand(program, "dmesg", "Read and/or clear dmesg buffer", "[-c]")
    .option("-c", "Clear dmesg buffer as well as printing it")
    .action(async (opts: { c?: boolean }) => {
      const r = await xl(hostDir(program), { cmd: "dmesg", clear: opts.c === true });
      if (r) process.stdout.write(formatDmesg(r["lines"] as { timeNs: number; text: string }[]));
    });

  xlCommand(program, "sysrq", "Send a sysrq to a domain", "<Domain> <letter>", "The key goes through the guest's control/sysrq node; 'c' crashes it.")
    .argument("<domain>")
    .argument("<letter>")
    .action(async (dom: string, key: string) => {
      await xl(hostDir(program), { cmd: "sysrq", dom, key });
    });

  xlCommand(program, "debug-keys", "Send debug keys to Xen", "<Keys>", "Their output goes to Xen's console ring: read it with `dmesg`.")
    .argument("<keys>")
    .action(async (keys: string) => {
      await xl(hostDir(program), { cmd: "debug-keys", keys });
    });

  xlCommand(program, "console", "Attach to domain's console", "[options] <Domain>", CONSOLE_NEEDS)
    .argument("<domain>")
    .option("-t <type>", "console type, pv , serial or vuart")
    .option("-n <number>", "console number")
    .action(async (dom: string, opts: { t?: string; n?: string }) => {
      // main_console (xl_console.c)
      const type = opts.t ?? "pv";
      if (!["pv", "serial", "vuart"].includes(type)) {
        console.error("console type supported are: pv, serial, vuart");
        process.exitCode = 1;
        return;
      }
      await attachConsole(hostDir(program), dom, type, opts.n === undefined ? 0 : cStrtol(opts.n).value);
    });

  xlCommand(program, "domid", "Convert a domain name to domain id", "<DomainName>")
    .argument("<name>")
    .action(async (name: string) => {
      const r = await xl(hostDir(program), { cmd: "domid", name });
      if (r) process.stdout.write(`${r["domid"] as number}\n`);
    });

  xlCommand(program, "domname", "Convert a domain id to domain name", "<DomainId>")
    .argument("<id>")
    .action(async (id: string) => {
      // main_domname: strtol, and "no digits at all" is the one error
      const { value, digits } = cStrtol(id);
      if (value === 0 && !digits) {
        console.error("Invalid domain id.\n");
        process.exitCode = 1;
        return;
      }
      const r = await xl(hostDir(program), { cmd: "domname", domid: value >>> 0 });
      if (r) process.stdout.write(`${r["name"] as string}\n`);
    });

  xlCommand(program, "rename", "Rename a domain", "<Domain> <NewDomainName>")
    .argument("<domain>")
    .argument("<name>")
    .action(async (dom: string, name: string) => {
      await xl(hostDir(program), { cmd: "rename", dom, name });
    });

  xlCommand(program, "vcpu-set", "Set the number of active VCPUs allowed for the domain", "[option] <Domain> <vCPUs>", VCPU_SET_NEEDS)
    .argument("<domain>")
    .argument("<vcpus>")
    .option("-i, --ignore-host", "Don't limit the vCPU based on the host CPU count")
    .action(async (dom: string, vcpus: string, opts: { ignoreHost?: boolean }) => {
      const dir = hostDir(program);
      // main_vcpuset: find_domain, then vcpuset's strtoul
      const r = await listDomains(program, [dom]);
      if (!r || !allFound(r.args)) return;
      const { value, digits } = cStrtol(vcpus);
      if (!digits || value < 0 || value > 0x7fffffff) {
        console.error("Error: Invalid argument.");
        process.exitCode = 1;
        return;
      }
      await xl(dir, { cmd: "vcpu-set", dom: String(r.args[0]!.domid), count: value, checkHost: opts.ignoreHost !== true });
    });
}
