// Chaos against one running host (`xensim up`, a separate process, real time): hundreds of random
// xl requests with random arguments and configs, bad ones among them, guests that crash at boot
// or are crashed through sysrq, clients killed mid-request. Afterwards the host answers `list`
// promptly, its xenstored passes `xenstore-control check`, nothing is left in xenstore that
// `list` does not show, and `down` stops it cleanly. CHAOS_SEED=N replays one run.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { XsClient } from "../src/toolstack/xenstore/xs_client.ts";
import { Rng } from "../src/util/rng.ts";
import { XEN_LIBEXEC, xenEnv, xenNeeds } from "./xen_tools.ts";

const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];
const CHECK = xenNeeds("xenstore-control");
const REQUESTS = Number(process.env["CHAOS_REQUESTS"] ?? 300);
const SEED = Number(process.env["CHAOS_SEED"] ?? 1 + (Date.now() % 1000));
/** How long a client waits before it gives up on a reply and hangs up (xl's user pressing ^C). */
const CLIENT_PATIENCE_MS = 3_000;
/** The bound on `list` afterwards. */
const LIST_BOUND_MS = 2_000;

type Reply = Record<string, unknown> & { ok?: boolean; error?: string };

interface Counts {
  requests: number;
  byCmd: Record<string, number>;
  answeredOk: number;
  answeredError: number;
  killedMidRequest: number;
  gaveUp: number;
  malformed: number;
  sysrqCrashes: number;
  cliKilled: number;
}

/** One raw request on the control socket; `killAfterMs` hangs up that soon, answered or not. */
function rawRequest(dir: string, line: string, killAfterMs: number | undefined): Promise<Reply | "killed" | "gave-up" | "closed"> {
  return new Promise((resolve) => {
    const sock = connect(join(dir, "control.sock"));
    let buf = "";
    let done = false;
    const finish = (r: Reply | "killed" | "gave-up" | "closed") => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish(killAfterMs !== undefined ? "killed" : "gave-up"), killAfterMs ?? CLIENT_PATIENCE_MS);
    sock.on("connect", () => sock.write(line));
    sock.on("error", () => finish("closed"));
    sock.on("close", () => finish("closed"));
    sock.on("data", (b) => {
      buf += b.toString("utf8");
      const nl = buf.indexOf("\n");
      if (nl >= 0 && killAfterMs === undefined) {
        try {
          finish(JSON.parse(buf.slice(0, nl)) as Reply);
        } catch {
          finish({ ok: false, error: "unparsable reply" });
        }
      }
    });
  });
}

function guestConfig(rng: Rng, names: string[]): string {
  const name = rng.chance(0.1) ? rng.pick(["Domain-0", ...names, ""]) : `c${rng.below(40)}`;
  const lines = [
    `name = "${name}"`,
    `memory = ${rng.pick([16, 24, 32, 48])}`,
    `vcpus = ${1 + rng.below(3)}`,
    `guest_width = ${rng.pick([32, 64])}`,
    `on_crash = "${rng.pick(["destroy", "restart", "preserve", "coredump-destroy", "rename-restart"])}"`,
    `on_poweroff = "${rng.pick(["destroy", "preserve"])}"`,
    `on_reboot = "${rng.pick(["restart", "destroy"])}"`,
  ];
  const extra: string[] = [];
  if (rng.chance(0.3)) extra.push("forkexec=2");
  if (rng.chance(0.15)) extra.push("xensim.panic_on_boot=1");
  if (extra.length > 0) lines.push(`extra = "${extra.join(" ")}"`);
  switch (rng.below(8)) {
    case 0:
      return `${lines.join("\n")}\nmemory = ${rng.pick([0, -4, 100_000, 1e9])}\n`;
    case 1:
      return `${lines.join("\n")}\nname = "unterminated\n`;
    case 2:
      return `${lines.join("\n")}\nno_such_key = 1\nvcpus = ${rng.pick([0, 200])}\n`;
    case 3:
      return rng.pick(["", "\u0000\u0001", "[[[", 'name = "x"\nmemory = "lots"\n']);
    default:
      return `${lines.join("\n")}\n`;
  }
}

function domainArg(rng: Rng, live: { domid: number; name: string }[]): string {
  const d = live.length > 0 ? rng.pick(live) : undefined;
  switch (rng.below(6)) {
    case 0:
      return rng.pick(["nosuch", "", "-1", "99999", "0x3", "Domain-0", "0", "1e3", "../../x"]);
    case 1:
    case 2:
      return d ? String(d.domid) : "1";
    default:
      return d ? d.name : "c0";
  }
}

function randomRequest(rng: Rng, live: { domid: number; name: string }[]): { cmd: string; line: string } {
  const dom = () => domainArg(rng, live);
  const r = rng.below(100);
  const req = (o: Record<string, unknown>) => `${JSON.stringify(o)}\n`;
  if (r < 22)
    return { cmd: "create", line: req({ cmd: "create", config: guestConfig(rng, live.map((d) => d.name)), file: "chaos.cfg", paused: rng.chance(0.1) }) };
  if (r < 34) return { cmd: "destroy", line: req({ cmd: "destroy", dom: dom() }) };
  if (r < 42) return { cmd: "shutdown", line: req({ cmd: rng.pick(["shutdown", "reboot"]), dom: dom(), wait: rng.chance(0.4) }) };
  if (r < 50) return { cmd: "pause", line: req({ cmd: rng.pick(["pause", "unpause"]), dom: dom() }) };
  if (r < 62) return { cmd: "list", line: req({ cmd: "list" }) };
  if (r < 66) return { cmd: "info", line: req({ cmd: rng.pick(["info", "log"]) }) };
  if (r < 70) return { cmd: "dmesg", line: req({ cmd: "dmesg", clear: rng.chance(0.2) }) };
  if (r < 73) return { cmd: "debug-keys", line: req({ cmd: "debug-keys", keys: rng.pick(["q", "e", "h", "", "\u0000zz", "r".repeat(300)]) }) };
  if (r < 79) return { cmd: "console", line: req({ cmd: "console", dom: dom() }) };
  if (r < 84) return { cmd: "unknown", line: req({ cmd: rng.pick(["nosuch", "", "__proto__", "constructor", "toString", 7]) }) };
  if (r < 88) return { cmd: "malformed", line: rng.pick(["{", "not json\n", "[]\n", "null\n", '{"cmd":\n', "\n", '"list"\n']) };
  if (r < 90) return { cmd: "huge", line: `${"x".repeat((1 << 20) + 10)}\n` };
  return { cmd: "sysrq", line: req({ cmd: "sysrq", dom: dom(), key: rng.pick(["c", "c", "c", "h", "", "cc"]) }) };
}

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

async function waitUntil(what: string, ms: number, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test(`host chaos: ${REQUESTS} random xl requests, crashing guests and killed clients (seed ${SEED}; CHAOS_SEED replays)`, { timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "xensim-chaos-"));
  let out = "";
  const host: ChildProcess = spawn(CLI[0]!, [...CLI.slice(1), "up", "--dir", dir, "--foreground", "--pcpus", "2", "--memory", "1024", "--speed", "4", "--seed", String(SEED)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  host.stdout?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  host.stderr?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  const exited = new Promise<number | null>((r) => host.on("exit", (code) => r(code)));
  const fail = (what: string) => `${what}\nseed ${SEED} (CHAOS_SEED=${SEED} replays)\n--- host output ---\n${out.slice(-4000)}`;
  try {
    await waitUntil("the host to come up", 30_000, () => out.includes("host up"));
    const rng = new Rng(SEED);
    const counts: Counts = { requests: 0, byCmd: {}, answeredOk: 0, answeredError: 0, killedMidRequest: 0, gaveUp: 0, malformed: 0, sysrqCrashes: 0, cliKilled: 0 };
    let live: { domid: number; name: string }[] = [];
    const refresh = async () => {
      const r = await rawRequest(dir, `${JSON.stringify({ cmd: "list" })}\n`, undefined);
      assert.ok(typeof r === "object" && r.ok === true, fail(`list failed mid-chaos: ${JSON.stringify(r)}`));
      live = (r["domains"] as { domid: number; name: string }[]).filter((d) => d.domid !== 0);
    };
    // A few requests in flight at once, so that they interleave in the host.
    const inFlight = new Set<Promise<void>>();
    for (let i = 0; i < REQUESTS; i++) {
      if (i % 10 === 0) await refresh();
      const { cmd, line } = randomRequest(rng, live);
      counts.requests++;
      counts.byCmd[cmd] = (counts.byCmd[cmd] ?? 0) + 1;
      if (cmd === "sysrq") counts.sysrqCrashes++;
      const kill = cmd === "console" || rng.chance(0.12) ? 1 + rng.below(300) : undefined;
      const p = (async () => {
        const r = await rawRequest(dir, line, kill);
        if (r === "killed") counts.killedMidRequest++;
        else if (r === "gave-up") counts.gaveUp++;
        else if (r === "closed") counts.malformed++;
        else if (r.ok === true) counts.answeredOk++;
        else counts.answeredError++;
      })();
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      if (inFlight.size >= 4) await Promise.race(inFlight);
      // Now and then the real CLI, killed while it works.
      if (rng.chance(0.02)) {
        const cli = spawn(CLI[0]!, [...CLI.slice(1), "-H", dir, rng.pick(["list", "create", "console", "vcpu-list"]), "examples/guest.cfg"], { stdio: "ignore" });
        await new Promise((r) => setTimeout(r, 200 + rng.below(600)));
        cli.kill("SIGKILL");
        counts.cliKilled++;
      }
    }
    await Promise.all(inFlight);
    t.diagnostic(`chaos counts: ${JSON.stringify(counts)}`);
    assert.equal(host.exitCode, null, fail("the host died during the chaos"));
    assert.ok(counts.answeredOk > 50 && counts.answeredError > 20, fail(`too few answers to mean anything: ${JSON.stringify(counts)}`));
    assert.ok(counts.gaveUp <= REQUESTS / 20, fail(`${counts.gaveUp} requests went unanswered for ${CLIENT_PATIENCE_MS} ms`));

    // Afterwards: list within the bound.
    const t0 = performance.now();
    const list = await rawRequest(dir, `${JSON.stringify({ cmd: "list" })}\n`, undefined);
    const listMs = performance.now() - t0;
    assert.ok(typeof list === "object" && list.ok === true, fail(`list: ${JSON.stringify(list)}`));
    assert.ok(listMs < LIST_BOUND_MS, fail(`list took ${listMs.toFixed(0)} ms`));
    t.diagnostic(`list answered in ${listMs.toFixed(1)} ms with ${(list["domains"] as unknown[]).length} domains`);
    const domains = list["domains"] as { domid: number; uuid: string }[];
    const domids = new Set(domains.map((d) => String(d.domid)));
    const uuids = new Set(domains.map((d) => d.uuid));

    // No xenstore entry for a domain list does not show.
    const ls = await XsClient.connect(join(dir, "xenstored.sock"));
    const localDomains = await ls.directory("/local/domain");
    const tree = async (path: string): Promise<string[]> => {
      const kids = await ls.directory(path).catch(() => [] as string[]);
      const perms = await ls.getPerms(path).catch(() => []);
      const rows = [`${path} ${JSON.stringify(perms)}`];
      for (const k of kids) rows.push(...(await tree(`${path}/${k}`)));
      return rows;
    };
    const leftovers: string[] = [];
    for (const d of localDomains.filter((d) => !domids.has(d))) leftovers.push(...(await tree(`/local/domain/${d}`)));
    const libxl = await ls.directory("/libxl").catch(() => [] as string[]);
    const vms = await ls.directory("/vm").catch(() => [] as string[]);
    await ls.close();
    const hostLog = await rawRequest(dir, `${JSON.stringify({ cmd: "log" })}\n`, undefined);
    const logText = typeof hostLog === "object" ? ((hostLog["lines"] as string[]) ?? []).slice(-60).join("\n") : "";
    assert.deepEqual(localDomains.filter((d) => !domids.has(d)), [], fail(`/local/domain has domains list does not show:\n${leftovers.join("\n")}\n--- host log ---\n${logText}`));
    assert.deepEqual(libxl.filter((d) => !domids.has(d)), [], fail("/libxl has domains list does not show"));
    assert.deepEqual(vms.filter((u) => !uuids.has(u)), [], fail("/vm has domains list does not show"));

    // xenstored's own consistency check, through Xen's client.
    const noCheck = CHECK.skip();
    if (noCheck) t.diagnostic(`xenstore-control check skipped: ${noCheck}`);
    else {
      CHECK.test();
      const check = spawnSync(join(XEN_LIBEXEC, "xenstore-control"), ["check"], { encoding: "utf8", timeout: 30_000, env: xenEnv({ XENSTORED_PATH: join(dir, "xenstored.sock") }) });
      assert.equal(check.status, 0, fail(`xenstore-control check: ${check.stdout}${check.stderr}`));
      t.diagnostic(`xenstore-control check: exit 0 ${JSON.stringify(check.stdout.trim())}`);
    }

    const down = xensim("down", "--dir", dir);
    assert.equal(down.code, 0, fail(`down: ${down.out}${down.err}`));
    assert.equal(await exited, 0, fail("the host's exit code"));
    for (const f of ["control.sock", "xenstored.sock", "xensim.pid"]) assert.ok(!existsSync(join(dir, f)), fail(`${f} left behind`));
  } finally {
    if (host.exitCode === null) host.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
