// Save and restore across processes, as a user runs them: two hosts, each its own `xensim up`
// process with its own directory; a 64-bit and a PAE guest run the MM workloads on host A;
// `xensim -H A save` writes one to a file that Xen's verify-stream-v2 accepts, and
// `xensim -H B restore` brings it back on host B, where a fresh kernel object in another OS
// process rebuilds itself from the guest's pages alone and runs on. save -c and -p keep the
// domain; a corrupt image is refused with a message and leaves host B as it was.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CLI, ok, row, xensim } from "./cli_helpers.ts";
import { XEN_LIBEXEC, xenEnv, xenNeeds } from "./xen_tools.ts";

const VERIFY = xenNeeds("verify-stream-v2");

function consoleText(dir: string, name: string): string {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), "-H", dir, "console", name], { encoding: "utf8", timeout: 8_000, input: "" });
  return r.stdout;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work = "";
let hostA = "";
let hostB = "";

before(() => {
  work = mkdtempSync(join(tmpdir(), "xensim-save-"));
  hostA = join(work, "A");
  hostB = join(work, "B");
  ok(xensim("up", "--dir", hostA, "--pcpus", "2", "--memory", "512", "--seed", "3"), "up A");
  ok(xensim("up", "--dir", hostB, "--pcpus", "2", "--memory", "512", "--seed", "4"), "up B");
});

after(() => {
  for (const d of [hostA, hostB]) if (d) xensim("down", "--dir", d);
  rmSync(work, { recursive: true, force: true });
});

function guestCfg(name: string, width: 32 | 64): string {
  const file = join(work, `${name}.cfg`);
  writeFileSync(file, `name = "${name}"\nmemory = 32\nvcpus = 2\nguest_width = ${width}\nworkload = "forkexec=3,mmapstress=1,ipistorm=1"\n`);
  return file;
}

for (const width of [64, 32] as const) {
  test(`a ${width === 64 ? "64-bit" : "PAE"} guest saved on host A runs on in host B's process, from its pages alone`, async () => {
    const name = `g${width}`;
    ok(xensim("-H", hostA, "create", guestCfg(name, width)), "create");
    await sleep(1500);
    const image = join(work, `${name}.img`);
    const saved = xensim("-H", hostA, "save", name, image);
    ok(saved, "save");
    assert.match(saved.err, new RegExp(`^Saving to ${image.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} new xl format \\(info 0x3/0x0/\\d+\\)$`, "m"));
    assert.equal(row(hostA, name), undefined, "save without -c destroys the domain");
    if (!VERIFY.skip()) {
      const v = spawnSync("python3", [join(XEN_LIBEXEC, "verify-stream-v2"), "-f", "xl", "-i", image], { encoding: "utf8", env: xenEnv() });
      assert.equal(v.status, 0, `verify-stream-v2: ${v.stdout}${v.stderr}`);
    }
    const restored = xensim("-H", hostB, "restore", image);
    ok(restored, "restore");
    assert.match(restored.err, /Loading new save file .* \(new xl fmt info 0x3\/0x0\/\d+\)\n Savefile contains xl domain config in JSON format\nParsing config from <saved>/);
    const first = row(hostB, name);
    assert.ok(first, `the restored domain is listed on host B:\n${xensim("-H", hostB, "list").out}`);
    await sleep(2000);
    const later = row(hostB, name);
    assert.ok(later && later.domid === first.domid, "the restored domain is still there");
    assert.ok(later.time > first.time, `its vCPUs keep running (${first.time} s, then ${later.time} s)`);
    const text = consoleText(hostB, name);
    assert.match(text, /xen:manage: resumed in a new domain/);
    assert.doesNotMatch(text, /Kernel panic|BUG:|Oops/);
    ok(xensim("-H", hostB, "destroy", name), "destroy");
  });
}

test("save -c keeps the domain running, save -p leaves it paused; both images restore", async () => {
  ok(xensim("-H", hostA, "create", guestCfg("ck", 64)), "create");
  await sleep(1000);
  const c1 = join(work, "ck1.img");
  ok(xensim("-H", hostA, "save", "-c", "ck", c1), "save -c");
  const r1 = row(hostA, "ck");
  assert.ok(r1 && !r1.state.includes("p"), `running after save -c: ${r1?.state}`);
  await sleep(1000);
  assert.ok(row(hostA, "ck")!.time > r1.time, "it keeps running");
  assert.match(consoleText(hostA, "ck"), /xen:manage: suspend cancelled, resuming/);
  const c2 = join(work, "ck2.img");
  ok(xensim("-H", hostA, "save", "-p", "ck", c2), "save -p");
  assert.match(row(hostA, "ck")!.state, /p/, "paused after save -p");
  ok(xensim("-H", hostA, "destroy", "ck"), "destroy");
  for (const img of [c1, c2]) {
    ok(xensim("-H", hostB, "restore", "-p", img), `restore -p ${img}`);
    assert.match(row(hostB, "ck")!.state, /p/, "restore -p leaves it paused");
    ok(xensim("-H", hostB, "unpause", "ck"), "unpause");
    await sleep(800);
    assert.doesNotMatch(consoleText(hostB, "ck"), /Kernel panic|BUG:|Oops/);
    ok(xensim("-H", hostB, "destroy", "ck"), "destroy");
  }
});

test("a corrupt image is refused with what is wrong, and host B is left as it was", () => {
  const good = readFileSync(join(work, "ck1.img"));
  const before = ok(xensim("-H", hostB, "list"), "list");
  const cases: [string, Buffer, RegExp][] = [
    ["not an xl save file", Buffer.from("hello, this is not a save image at all, not at all"), /wrong magic/],
    ["truncated", good.subarray(0, Math.floor(good.length / 2)), /truncated/],
  ];
  for (const [what, bytes, msg] of cases) {
    const f = join(work, "bad.img");
    writeFileSync(f, bytes);
    const r = xensim("-H", hostB, "restore", f);
    assert.notEqual(r.code, 0, `${what}: refused`);
    assert.match(r.err, msg, `${what}: ${r.err}`);
    assert.equal(ok(xensim("-H", hostB, "list"), "list"), before, `${what}: host B unchanged`);
  }
});
