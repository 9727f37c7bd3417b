// xl's commands as a user types them, against a real host (`xensim up`) over its control socket:
// lookups and their errors (find_domain), domid/domname/rename, create's extras (key=value,
// -n, -q, -e, -c), destroy's refusal for domain 0, shutdown/reboot with -a and -w and xl's
// progress lines, console input with the guest's echo, vcpu-set, list -l, uptime -s and help.
// Each expected text is xl's (tools/xl, Xen 4.17), cited where it is checked.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 90_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

let dir = "";
let host: ChildProcess | undefined;
let hostOut = "";
const xl = (...args: string[]) => xensim("-H", dir, ...args);

async function until(what: string, ms: number, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`timed out waiting for ${what}\n${hostOut}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "xensim-xl-"));
  host = spawn(CLI[0]!, [...CLI.slice(1), "up", "--dir", dir, "--foreground", "--pcpus", "2", "--memory", "512", "--speed", "4"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  host.stdout?.on("data", (b: Buffer) => {
    hostOut += b.toString();
  });
  host.stderr?.on("data", (b: Buffer) => {
    hostOut += b.toString();
  });
  await until("the host", 30_000, () => hostOut.includes("host up"));
});

after(() => {
  if (host && host.exitCode === null) host.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

test("lookups: an unknown name is find_domain's error and exit 1 before any output; an unknown id as each command has it", { timeout: 120_000 }, () => {
  // find_domain (xl_utils.c): "%s is an invalid domain identifier (rc=%d)", ERROR_INVAL is -6
  for (const cmd of [["list"], ["vcpu-list"], ["uptime"], ["shutdown"], ["destroy"], ["console"], ["rename"]]) {
    const r = xl(...cmd, "nosuch", ...(cmd[0] === "rename" ? ["x"] : []));
    assert.equal(r.code, 1, `${cmd[0]}: ${r.out}${r.err}`);
    assert.equal(r.err, "nosuch is an invalid domain identifier (rc=-6)\n", cmd[0]);
    // vcpulist prints its header before it looks anything up
    assert.equal(r.out, cmd[0] === "vcpu-list" ? "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n" : "", cmd[0]);
  }
  // main_list: libxl_domain_info says ERROR_DOMAIN_NOTFOUND
  const l = xl("list", "77");
  assert.deepEqual([l.code, l.err], [1, "Error: Domain '77' does not exist.\n"]);
  // shutdown_domain prints its line with the domid, then libxl fails to find the domain's type
  const s = xl("shutdown", "77");
  assert.equal(s.code, 1);
  assert.equal(s.err, "Shutting down domain 77\nlibxl: error: libxl_dom.c:37:libxl__domain_type: unable to get domain type for domid=77\nshutdown failed (rc=-3)\n");
  // main_shutdown_or_reboot without a domain
  const none = xl("shutdown");
  assert.deepEqual([none.code, none.err], [1, "You must specify -a or a domain id.\n\n"]);
  // main_domid / main_domname
  assert.deepEqual([xl("domid", "Domain-0").out, xl("domname", "0").out], ["0\n", "Domain-0\n"]);
  const d = xl("domid", "nope");
  assert.deepEqual([d.code, d.err], [1, "Can't get domid of domain name 'nope', maybe this domain does not exist.\n"]);
  const n = xl("domname", "abc");
  assert.deepEqual([n.code, n.err], [1, "Invalid domain id.\n\n"]);
  // destroy_domain
  const z = xl("destroy", "0");
  assert.equal(z.code, 1);
  assert.equal(z.err, "Not destroying domain 0; use -f to force.\nThis can only be done when using a disaggregated hardware domain and toolstack.\n\n");
});

test("create: key=value settings, -n prints libxl's JSON without creating, -q, names unique with Domain-0's", { timeout: 120_000 }, () => {
  const dry = xl("create", "-n", "examples/guest.cfg", 'name="dry"', "memory=128", "vcpus=1");
  assert.equal(dry.code, 0, dry.err);
  assert.equal(dry.err, "Parsing config from examples/guest.cfg\n");
  const cfg = JSON.parse(dry.out) as { c_info: { name: string }; b_info: { max_memkb: number; avail_vcpus: number[] } };
  assert.equal(cfg.c_info.name, "dry");
  assert.deepEqual([cfg.b_info.max_memkb, cfg.b_info.avail_vcpus], [131072, [0]]);
  assert.doesNotMatch(xl("list").out, /^dry\s/m);

  const dup = xl("create", "-q", "examples/guest.cfg", 'name="Domain-0"');
  assert.notEqual(dup.code, 0);
  assert.match(dup.err, /Domain with name "Domain-0" already exists\./);
  assert.doesNotMatch(dup.err, /Parsing config/);

  const c = xl("create", "examples/guest.cfg", 'name="a"', "maxvcpus=3");
  assert.equal(c.code, 0, c.err + hostOut);
  const long = JSON.parse(xl("list", "-l", "a").out) as { domid: number; config: { b_info: { max_vcpus: number; avail_vcpus: number[] } } }[];
  assert.equal(long.length, 1);
  assert.deepEqual([long[0]!.config.b_info.max_vcpus, long[0]!.config.b_info.avail_vcpus], [3, [0, 1]]);
});

test("rename, then vcpu-set down and up, seen in vcpu-list and list", { timeout: 120_000 }, async () => {
  assert.equal(xl("rename", "a", "b").code, 0);
  const taken = xl("rename", "b", "Domain-0");
  assert.equal(taken.code, 1);
  assert.match(taken.err, /libxl__domain_rename: Domain \d+:Domain with name "Domain-0" already exists\.\nCan't rename domain 'b'\.\n$/);
  const domid = xl("domid", "b").out.trim();
  assert.equal(xl("domname", domid).out, "b\n");

  assert.equal(xl("vcpu-set", "b", "1").code, 0);
  await until("one vCPU online", 30_000, () => /^b\s+\d+\s+\d+\s+1\s/m.test(xl("list", "b").out));
  // print_vcpuinfo: an offline vCPU has no CPU and shows "--p"
  assert.match(xl("vcpu-list", "b").out, /^b\s+\d+\s+1\s+- {3}--p\s/m);
  // vcpuset: more vCPUs than online ones and than the host's 2 pCPUs needs --ignore-host
  const overcommit = xl("vcpu-set", "b", "3");
  assert.equal(overcommit.code, 1);
  assert.equal(overcommit.err, "You are overcommmitting! You have 2 physical CPUs and want 3 vCPUs! Aborting, use --ignore-host to continue\n");
  assert.equal(xl("vcpu-set", "-i", "b", "3").code, 0);
  await until("three vCPUs online", 30_000, () => /^b\s+\d+\s+\d+\s+3\s/m.test(xl("list", "b").out));
  const over = xl("vcpu-set", "-i", "b", "4");
  assert.equal(over.code, 1);
  assert.match(over.err, /Requested 4 VCPUs, however maxcpus is 3!\nlibxl_set_vcpuonline failed domid=\d+ max_vcpus=4, rc: -3\n$/);
  const bad = xl("vcpu-set", "b", "many");
  assert.deepEqual([bad.code, bad.err], [1, "Error: Invalid argument.\n"]);
});

test("console: typed bytes reach the guest and come back as its tty echoes them", { timeout: 120_000 }, async () => {
  const proc = spawn(CLI[0]!, [...CLI.slice(1), "-H", dir, "console", "b"], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  proc.stdout.on("data", (b: Buffer) => {
    out += b.toString("latin1");
  });
  await until("the console's backlog", 30_000, () => out.includes("event channel ABI"));
  proc.stdin.write("echo me\r");
  await until("the echo", 30_000, () => out.includes("echo me\r\n"));
  proc.kill("SIGTERM");
  // xenconsole refuses dom0, and a console the domain does not have
  assert.equal(xl("console", "0").err, "Can't specify Domain-0\n");
  assert.match(xl("console", "-t", "vuart", "b").err, /Could not read tty from store/);
  assert.equal(xl("console", "-t", "bogus", "b").err, "console type supported are: pv, serial, vuart\n");
});

test("uptime -s shows the time of day; -e leaves a shut-down domain alone; shutdown -a -w and xl's lines", { timeout: 180_000 }, () => {
  const up = xl("uptime", "-s");
  assert.equal(up.code, 0);
  // print_dom0_uptime / print_domU_uptime: " %s up %s, %s (%d)" with strftime("%H:%M:%S")
  const lines = up.out.trimEnd().split("\n");
  assert.match(lines[0]!, /^ \d\d:\d\d:\d\d up +\d+:\d\d, Domain-0 \(0\)$/);
  const hms = /^ (\d\d):(\d\d)/.exec(lines[0]!)!;
  const local = new Date();
  const mins = (Number(hms[1]) * 60 + Number(hms[2]) - (local.getHours() * 60 + local.getMinutes()) + 1440) % 1440;
  assert.ok(mins <= 2 || mins >= 1438, `time of day ${lines[0]} vs ${local.toTimeString()}`);

  assert.equal(xl("create", "-q", "-e", "examples/guest.cfg", 'name="e"', 'on_poweroff="destroy"').code, 0);
  const e = xl("domid", "e").out.trim();
  // wait_for_domain_deaths with -w once: the shutdown event ends the wait
  const sw = xl("shutdown", "-w", "e");
  assert.equal(sw.code, 0, sw.err);
  assert.equal(sw.err, `Shutting down domain ${e}\nWaiting for 1 domains\nDomain ${e} has been shut down, reason code 0\n`);
  // no monitor: it stays, shut down
  assert.match(xl("list", "e").out, /^e\s+\d+\s+\d+\s+\d+\s+---s--/m);
  assert.equal(xl("destroy", "e").code, 0);

  const b = xl("domid", "b").out.trim();
  const all = xl("shutdown", "-a", "-ww");
  assert.equal(all.code, 0, all.err);
  // -ww: a shutdown does not end the wait, the destruction by the monitor does
  assert.equal(
    all.err,
    `Shutting down domain ${b}\nWaiting for 1 domains\nDomain ${b} has been shut down, reason code 0\nDomain ${b} continue waiting for death\nDomain ${b} has been destroyed\n`,
  );
  assert.doesNotMatch(xl("list").out, /^b\s/m);
});

test("help: xl's summary and usage, and where the host is", { timeout: 60_000 }, () => {
  const h = xensim("help", "shutdown");
  assert.equal(h.code, 0);
  assert.match(h.out, /^Usage: xensim shutdown \[options\] <-a\|Domain>$/m);
  assert.match(h.out, /Issue a shutdown signal to a domain/);
  assert.match(h.out, /-H DIR \(or \$XENSIM_HOST\)/);
  assert.match(xensim("create", "--help").out, /Create a domain from config file <filename>/);
});
