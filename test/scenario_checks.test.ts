// Scenario mistakes that used to pass silently: a setting that would do nothing is an error, one
// that would only partly happen is a warning, and a guest config is not taken for a scenario.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { loadScenario, parseScenario, ScenarioError } from "../src/harness/scenario.ts";

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function scenario(...domains: string[]): string {
  return `run_ms = 5\ndomain = [ ${domains.map((d) => `'${d}'`).join(", ")} ]\n`;
}

function refused(text: string, message: RegExp): void {
  assert.throws(
    () => parseScenario(text, "t.cfg"),
    (e: unknown) => e instanceof ScenarioError && message.test(e.message),
    `expected ${message} for:\n${text}`,
  );
}

test("an unknown top-level key is an error, with a hint when it belongs in a domain entry", () => {
  refused(`bogus = 3\n${scenario("name=a")}`, /^t\.cfg: unknown key 'bogus' \(a scenario takes name, description, pcpus, run_ms, [a-z_, ]*domain\)$/);
  refused(`vcpus = 4\n${scenario("name=a")}`, /unknown key 'vcpus' .*a domain's settings go in its domain = \[ \.\.\. \] entry/);
  refused(`run_msec = 5\n${scenario("name=a")}`, /unknown key 'run_msec'/);
});

test("an xl guest config given as a scenario is named as such", () => {
  assert.throws(() => loadScenario("examples/guest.cfg"), /examples\/guest\.cfg: this is an xl guest config \(for `xensim -H DIR create examples\/guest\.cfg`\), not a scenario/);
  refused('name = "g"\nmemory = 64\nvcpus = 2\n', /this is an xl guest config/);
  // Without guest keys, a file with no domains is still just that.
  refused('name = "empty"\n', /^t\.cfg: no domain = \[ \.\.\. \] entries$/);
  const r = xensim("run", "examples/guest.cfg");
  assert.equal(r.code, 2, r.out + r.err);
  assert.match(r.err, /^xensim run: examples\/guest\.cfg: this is an xl guest config .*not a scenario: a scenario lists its domains as domain = \[/);
  assert.equal(r.out, "");
});

test("ipi_pingpong: an error on a single vCPU, a warning when one CPU has no partner", () => {
  refused(scenario("name=a,vcpus=1,ipi_pingpong=10"), /^t\.cfg: a: ipi_pingpong needs at least 2 vCPUs/);
  assert.deepEqual(parseScenario(scenario("name=a,vcpus=2,ipi_pingpong=10"), "t.cfg").warnings, []);
  assert.deepEqual(parseScenario(scenario("name=a,vcpus=3,ipi_pingpong=10"), "t.cfg").warnings, [
    "t.cfg: a: ipi_pingpong pairs CPUs (0,1), (2,3)...: CPU2 of its 3 vCPUs has no partner and takes no part",
  ]);
  // ipi_pingpong=0 asks for nothing.
  assert.deepEqual(parseScenario(scenario("name=a,vcpus=1,ipi_pingpong=0"), "t.cfg").warnings, []);
});

test("pingpong_with: not the domain itself, and both sides name each other", () => {
  refused(scenario("name=a,pingpong_with=a"), /^t\.cfg: a: pingpong_with names the domain itself/);
  refused(scenario("name=a", "name=b,pingpong_with=a"), /^t\.cfg: b: pingpong_with=a, but a has no pingpong_with; the two domains of a ping-pong name each other$/);
  refused(scenario("name=a,pingpong_with=b", "name=b"), /^t\.cfg: a: pingpong_with=b, but b has no pingpong_with/);
  refused(scenario("name=a,pingpong_with=b", "name=b,pingpong_with=a", "name=c,pingpong_with=a"), /^t\.cfg: c: pingpong_with=a, but a has pingpong_with=b/);
  refused(scenario("name=a,pingpong_rounds=5"), /^t\.cfg: a: pingpong_rounds without pingpong_with$/);
  assert.deepEqual(parseScenario(scenario("name=a,pingpong_with=b,pingpong_rounds=5", "name=b,pingpong_with=a"), "t.cfg").warnings, []);
});

test("fan-in: into another domain, with ports, one sender per receiver", () => {
  refused(scenario("name=a,fanin_to=a,fanin_ports=4"), /^t\.cfg: a: fanin_to names the domain itself/);
  refused(scenario("name=a,fanin_to=b", "name=b"), /^t\.cfg: a: fanin_to needs fanin_ports=K, K >= 1$/);
  refused(scenario("name=a,fanin_ports=4", "name=b"), /^t\.cfg: a: fanin_ports and fanin_flood need fanin_to$/);
  refused(scenario("name=a,fanin_flood=1", "name=b"), /fanin_ports and fanin_flood need fanin_to/);
  refused(scenario("name=a,fanin_to=c,fanin_ports=2", "name=b,fanin_to=c,fanin_ports=2", "name=c"), /^t\.cfg: b: a already fans into c; a domain takes one fan-in$/);
  refused(scenario("name=a,fanin_lateeoi=1"), /^t\.cfg: a: fanin_lateeoi, but no domain fans into it$/);
});

test("a warning reaches the user on stderr, and the run goes on", () => {
  const file = join(mkdtempSync(join(tmpdir(), "xensim-sc-")), "odd.cfg");
  writeFileSync(file, scenario("name=a,memory=8,vcpus=3,ipi_pingpong=20"));
  const r = xensim("run", file, "-q");
  assert.equal(r.code, 0, r.out + r.err);
  assert.ok(r.err.includes(`xensim run: warning: ${file}: a: ipi_pingpong pairs CPUs (0,1), (2,3)...: CPU2 of its 3 vCPUs has no partner`), r.err);
  assert.match(r.out, /^1 passed, 0 failed$/m);
});

test("every example scenario parses with no warning; the guest config is refused", () => {
  for (const f of readdirSync("examples").filter((n) => n.endsWith(".cfg"))) {
    const path = `examples/${f}`;
    if (/^\s*domain\s*=/m.test(readFileSync(path, "utf8"))) assert.deepEqual(loadScenario(path).warnings, [], path);
    else assert.throws(() => loadScenario(path), /this is an xl guest config/, path);
  }
});
