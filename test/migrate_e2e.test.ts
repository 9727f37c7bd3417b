// Live migration across processes, as a user runs it: hosts A and B, each its own `xensim up`,
// B started with --migrate-listen; `xensim -H A migrate --debug --json DOM ADDR:PORT` moves a
// busy guest while it runs, with xl's handshake over TCP. At B it is a full citizen: `list`,
// Xen's real xenstore-ls, and a real xenstore-write of poweroff that powers it off there. When
// the destination dies mid-stream, or refuses (too little memory, nobody listening), the source
// resumes its domain, which runs on under its own name, and nothing is left at the destination.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CLI, ok, row, xensim } from "./cli_helpers.ts";
import { xenEnv, xenNeeds } from "./xen_tools.ts";

const CLIENTS = xenNeeds("xenstore-clients");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A TCP port nobody listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

let work = "";
const hosts: string[] = [];

async function up(name: string, memory: number, listen?: number): Promise<string> {
  const dir = join(work, name);
  const args = ["up", "--dir", dir, "--pcpus", "2", "--memory", String(memory), "--seed", String(hosts.length + 3)];
  if (listen !== undefined) args.push("--migrate-listen", `127.0.0.1:${listen}`);
  ok(xensim(...args), `up ${name}`);
  hosts.push(dir);
  return dir;
}

before(() => {
  work = mkdtempSync(join(tmpdir(), "xensim-migrate-"));
});

after(() => {
  for (const d of hosts) xensim("down", "--dir", d);
  rmSync(work, { recursive: true, force: true });
});

function guestCfg(name: string, width: 32 | 64, memory = 32): string {
  const file = join(work, `${name}.cfg`);
  writeFileSync(file, `name = "${name}"\nmemory = ${memory}\nvcpus = 2\nguest_width = ${width}\nworkload = "forkexec=3,mmapstress=1,ipistorm=1"\n`);
  return file;
}

/** The domain is on `dir` under `name`, running: its CPU time grows. */
async function assertRunsOn(dir: string, name: string, what: string): Promise<void> {
  const a = row(dir, name);
  assert.ok(a, `${what}: ${name} is not on ${dir}`);
  await sleep(700);
  const b = row(dir, name);
  assert.ok(b && b.time > a.time, `${what}: ${name}'s CPU time did not grow (${a.time} -> ${b?.time})`);
}

for (const width of [64, 32] as const) {
  test(`a busy ${width === 64 ? "64-bit" : "PAE"} guest migrates A -> B over TCP with --debug; at B, xenstore-ls sees it and xenstore-write powers it off`, async () => {
    const port = await freePort();
    const a = await up(`A${width}`, 512);
    const b = await up(`B${width}`, 512, port);
    const name = `m${width}`;
    ok(xensim("-H", a, "create", guestCfg(name, width)), "create");
    await sleep(1000);
    const r = xensim("-H", a, "migrate", "--debug", "--json", name, `127.0.0.1:${port}`);
    const out = ok(r, "migrate");
    const res = JSON.parse(out) as { rounds: { round: number; sent: number; dirtied: number }[]; downtimeMs: number; bytes: number };
    assert.ok(res.rounds.length >= 1 && res.rounds[0]!.sent > 0, `rounds: ${out}`);
    assert.ok(res.downtimeMs > 0, `downtime: ${out}`);
    assert.equal(row(a, name), undefined, "the source's copy is destroyed");
    assert.equal(row(a, `${name}--migratedaway`), undefined);
    const log = readFileSync(join(b, "host.log"), "utf8");
    assert.match(log, /VERIFY compared \d+ pages, 0 differ/, "the destination's VERIFY pass");
    await assertRunsOn(b, name, "at B");
    if (CLIENTS.skip()) return;
    const domid = row(b, name)!.domid;
    const env = xenEnv({ XENSTORED_PATH: join(b, "xenstored.sock") });
    const ls = spawnSync("xenstore-ls", ["-p", `/local/domain/${domid}`], { encoding: "utf8", env, timeout: 30_000 });
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`^name = "${name}"`, "m"));
    const w = spawnSync("xenstore-write", [`/local/domain/${domid}/control/shutdown`, "poweroff"], { encoding: "utf8", env, timeout: 30_000 });
    assert.equal(w.status, 0, w.stderr);
    for (let i = 0; i < 50 && row(b, name); i++) await sleep(200);
    assert.equal(row(b, name), undefined, "xenstore-write poweroff powered it off at B");
  });
}

test("the destination killed mid-stream: the source resumes its domain, which runs on", async () => {
  const port = await freePort();
  const a = await up("Akill", 1024);
  const c = await up("Ckill", 1024, port);
  const name = "victim";
  ok(xensim("-H", a, "create", guestCfg(name, 64, 256)), "create");
  await sleep(800);
  const pid = Number(readFileSync(join(c, "xensim.pid"), "utf8"));
  const child: ChildProcess = spawn(CLI[0]!, [...CLI.slice(1), "-H", a, "migrate", name, `127.0.0.1:${port}`], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  // Killed once the stream flows: the receiver has said it is ready.
  for (let i = 0; i < 100 && !readFileSync(join(c, "host.log"), "utf8").includes("Ready to receive domain"); i++) await sleep(100);
  await sleep(300);
  process.kill(pid, "SIGKILL");
  const code = await new Promise<number>((r) => child.on("exit", (x) => r(x ?? -1)));
  assert.notEqual(code, 0, `migrate should fail: ${err}`);
  assert.match(err, /Migration failed, resuming at sender\./);
  await assertRunsOn(a, name, "after the destination died");
});

test("the destination refuses (too little memory) or nobody listens: one line says why, the domain runs on, nothing is left at the destination", async () => {
  const port = await freePort();
  const a = await up("Aref", 512);
  const small = await up("Bsmall", 64, port);
  const name = "big";
  ok(xensim("-H", a, "create", guestCfg(name, 64, 128)), "create");
  await sleep(800);
  const r = xensim("-H", a, "migrate", name, `127.0.0.1:${port}`);
  assert.notEqual(r.code, 0, "the migration must fail");
  assert.match(r.err, /Migration failed, resuming at sender\./);
  await assertRunsOn(a, name, "after the refusal");
  const listed = ok(xensim("-H", small, "list"), "list at the destination");
  assert.doesNotMatch(listed, /big/, "nothing half-built at the destination");
  assert.match(readFileSync(join(small, "host.log"), "utf8"), /migration target: restore failed: .*/);
  const nobody = xensim("-H", a, "migrate", name, `127.0.0.1:${await freePort()}`);
  assert.notEqual(nobody.code, 0);
  assert.match(nobody.err, /ECONNREFUSED/);
  await assertRunsOn(a, name, "after nobody listened");
});
