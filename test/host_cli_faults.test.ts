// The faults of issue 10 as a user meets them at the command line: a crash-looping config, memory
// past 1 GiB, a kernel that dies at boot, a host killed with -9 or stopped dead, then `down`.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 90_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

async function startHost(dir: string, ...args: string[]): Promise<{ proc: ChildProcess; output: () => string }> {
  let out = "";
  const proc = spawn(CLI[0]!, [...CLI.slice(1), "up", "--dir", dir, "--foreground", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  proc.stderr?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  const deadline = Date.now() + 30_000;
  while (!out.includes("host up")) {
    if (Date.now() > deadline || proc.exitCode !== null) assert.fail(`the host did not come up: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, output: () => out };
}

function gone(proc: ChildProcess): Promise<void> {
  return proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once("exit", () => r()));
}

const HOST_FILES = ["control.sock", "xenstored.sock", "xensim.pid"];

test("the crash-loop config of the report: create returns, the 2000 MiB guest boots, and the host keeps answering", { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "xensim-faults-"));
  const { proc, output } = await startHost(dir, "--memory", "4096", "--pcpus", "2");
  try {
    const cfg = join(dir, "c.cfg");
    writeFileSync(cfg, 'name="rr"\nvcpus=1\non_crash="restart"\nmemory=2000\n');
    const created = xensim("-H", dir, "create", cfg);
    assert.equal(created.code, 0, created.out + created.err + output());
    const list = xensim("-H", dir, "list", "rr");
    assert.equal(list.code, 0, list.err);
    assert.match(list.out, /^rr\s+\d+\s+2000\s+1\s/m);

    // Crash it: on_crash=restart brings it back after xl's 2 s, and the host answers meanwhile.
    assert.equal(xensim("-H", dir, "sysrq", "rr", "c").code, 0);
    const started = Date.now();
    let sawNewDomid = false;
    const firstDomid = /^rr\s+(\d+)/m.exec(list.out)![1];
    while (Date.now() - started < 60_000 && !sawNewDomid) {
      const l = xensim("-H", dir, "list");
      assert.equal(l.code, 0, `list while the domain restarts: ${l.err}`);
      const m = /^rr\s+(\d+)\s/m.exec(l.out);
      sawNewDomid = m !== null && m[1] !== firstDomid;
    }
    assert.ok(sawNewDomid, `the domain came back under a new domid\n${output()}`);

    // A kernel that dies at boot: create fails, names the panic, and leaves nothing behind.
    writeFileSync(cfg, 'name="dead"\nvcpus=1\nmemory=32\non_crash="restart"\nextra="xensim.panic_on_boot=1"\n');
    const dead = xensim("-H", dir, "create", cfg);
    assert.notEqual(dead.code, 0);
    assert.match(dead.err, /did not boot: Kernel panic - not syncing: xensim\.panic_on_boot=1/);
    assert.doesNotMatch(xensim("-H", dir, "list").out, /^dead\s/m);

    const down = xensim("down", "--dir", dir);
    assert.equal(down.code, 0, down.err);
    await gone(proc);
    assert.equal(proc.exitCode, 0, output());
    for (const f of HOST_FILES) assert.ok(!existsSync(join(dir, f)), f);
  } finally {
    if (proc.exitCode === null) proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

test("down after kill -9 removes the stale sockets and pid file; down of a host stopped dead kills it", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "xensim-down-"));
  try {
    const first = await startHost(dir, "--memory", "256");
    first.proc.kill("SIGKILL");
    await gone(first.proc);
    for (const f of HOST_FILES) assert.ok(existsSync(join(dir, f)), `${f} is left by kill -9`);
    const list = xensim("-H", dir, "list");
    assert.notEqual(list.code, 0);
    assert.match(list.err, /no host is running/);
    const down = xensim("down", "--dir", dir);
    assert.equal(down.code, 0, down.err);
    assert.match(down.err, /had died; removed 3 stale file/);
    for (const f of HOST_FILES) assert.ok(!existsSync(join(dir, f)), f);
    assert.notEqual(xensim("down", "--dir", dir).code, 0, "a second down: no host");

    // A host that cannot answer (SIGSTOP): down gives up asking and kills it.
    const second = await startHost(dir, "--memory", "256");
    second.proc.kill("SIGSTOP");
    const t0 = Date.now();
    const down2 = xensim("down", "--dir", dir);
    assert.equal(down2.code, 0, down2.err);
    assert.match(down2.err, /did not stop; sending SIGKILL/);
    await gone(second.proc);
    assert.equal(second.proc.signalCode, "SIGKILL");
    assert.ok(Date.now() - t0 < 30_000);
    for (const f of HOST_FILES) assert.ok(!existsSync(join(dir, f)), f);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
