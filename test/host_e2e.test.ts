// End to end, as a user runs it: `xensim up` starts a host, `xensim -H DIR create` a domain; Xen's
// real xenstore-ls shows its tree through XENSTORED_PATH, a real xenstore-write of "poweroff"
// into control/shutdown makes the guest shut itself down through its xenbus watch, the real
// xenstore-watch sees @releaseDomain fire, and `xensim list` no longer shows the domain.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { xenEnv, xenNeeds } from "./xen_tools.ts";

const CLIENTS = xenNeeds("xenstore-clients");
const skip = CLIENTS.skip();
const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function xenTool(dir: string, tool: string, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 30_000, env: xenEnv({ XENSTORED_PATH: join(dir, "xenstored.sock") }) });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

async function waitFor(what: string, ms: number, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what}`);
}

let dir = "";
let host: ChildProcess | undefined;
let hostOut = "";

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "xensim-host-"));
  host = spawn(CLI[0]!, [...CLI.slice(1), "up", "--dir", dir, "--foreground", "--pcpus", "2", "--memory", "512", "--speed", "2"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  host.stdout?.on("data", (b: Buffer) => {
    hostOut += b.toString();
  });
  host.stderr?.on("data", (b: Buffer) => {
    hostOut += b.toString();
  });
  await waitFor("the host to come up", 30_000, () => hostOut.includes("host up"));
});

after(() => {
  if (skip) return;
  if (host && host.exitCode === null) host.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

test("up, create, xenstore-ls, xenstore-write poweroff, @releaseDomain, list, down", { skip }, async () => {
  CLIENTS.test();
  const created = xensim("-H", dir, "create", "examples/guest.cfg");
  assert.equal(created.code, 0, created.out + created.err + hostOut);
  assert.match(created.err, /^Parsing config from examples\/guest\.cfg$/m);

  let list = xensim("-H", dir, "list");
  assert.equal(list.code, 0, list.err);
  assert.match(list.out, /^Name\s+ID\s+Mem VCPUs\tState\tTime\(s\)$/m);
  assert.match(list.out, /^Domain-0\s+0\s/m);
  const m = /^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s/m.exec(list.out.split("\n").slice(2).join("\n"));
  assert.ok(m, list.out);
  const [, name, domidText] = m;
  const domid = Number(domidText);

  // The guest's kernel boots and its shutdown watcher writes its features.
  const feature = `/local/domain/${domid}/control/feature-poweroff`;
  await waitFor("the guest's xenbus", 20_000, () => xenTool(dir, "xenstore-read", feature).out.trim() === "1");

  const ls = xenTool(dir, "xenstore-ls", "-p", `/local/domain/${domid}`);
  assert.equal(ls.code, 0, ls.err);
  for (const key of ["vm", "name", "domid", "memory", "target", "cpu", "availability", "control", "shutdown", "store", "port", "ring-ref", "console"]) {
    assert.match(ls.out, new RegExp(`^\\s*${key} = `, "m"), `${key} in\n${ls.out}`);
  }
  assert.match(ls.out, new RegExp(`^name = "${name}"`, "m"));
  assert.match(ls.out, /feature-poweroff = "1"/);

  // Watch @releaseDomain with the real client, then ask for a poweroff with the real writer.
  const watch = spawn("xenstore-watch", ["-n", "2", "@releaseDomain"], { env: xenEnv({ XENSTORED_PATH: join(dir, "xenstored.sock") }) });
  let watchOut = "";
  watch.stdout.on("data", (b: Buffer) => {
    watchOut += b.toString();
  });
  const watchDone = new Promise<number>((r) => watch.on("exit", (code) => r(code ?? -1)));
  await waitFor("the watch's first event", 10_000, () => watchOut.includes("@releaseDomain"));
  const w = xenTool(dir, "xenstore-write", `/local/domain/${domid}/control/shutdown`, "poweroff");
  assert.equal(w.code, 0, w.err);
  assert.equal(await watchDone, 0, watchOut);
  assert.equal(watchOut.trim().split("\n").filter((l) => l === "@releaseDomain").length, 2, watchOut);

  await waitFor("the domain to go from xl list", 20_000, () => !new RegExp(`^${name}\\s`, "m").test(xensim("-H", dir, "list").out));
  list = xensim("-H", dir, "list");
  assert.match(list.out, /^Domain-0\s+0\s/m);
  assert.equal(xenTool(dir, "xenstore-exists", `/local/domain/${domid}`).code, 1);

  const dmesg = xensim("-H", dir, "dmesg");
  assert.match(dmesg.out, /shut down, reason 0/);

  const down = xensim("down", "--dir", dir);
  assert.equal(down.code, 0, down.err);
  await waitFor("the host process to exit", 10_000, () => host?.exitCode !== null);
  assert.ok(!existsSync(join(dir, "xenstored.sock")), "the socket is removed");
});
