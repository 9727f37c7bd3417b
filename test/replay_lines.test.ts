// The replay line a failing `xensim run` prints reproduces that run exactly, and a seed names
// one run: seeds the generator cannot tell apart are refused rather than aliased.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { RUN_OPTIONS, replayLine } from "../src/cli/run.ts";
import { buildMachine, parseScenario, ScenarioError } from "../src/harness/scenario.ts";
import { MAX_SEED, parseSeed } from "../src/util/rng.ts";

const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** Splits a replay line as a POSIX shell would (words, single quotes, '\'' escapes). */
function shellSplit(line: string): string[] {
  const words: string[] = [];
  const re = /'((?:[^']|'\\'')*)'|(\S+)/g;
  for (const m of line.matchAll(re)) words.push(m[1] !== undefined ? m[1].replaceAll("'\\''", "'") : m[2]!);
  return words;
}

/** The FAIL block of one seed: its header, failures and replay line. */
function failBlock(out: string, seed: number): string[] {
  const lines = out.split("\n");
  const at = lines.indexOf(`FAIL seed ${seed}:`);
  assert.ok(at >= 0, `no FAIL block for seed ${seed} in:\n${out}`);
  const block = [lines[at]!];
  for (let i = at + 1; i < lines.length && lines[i]!.startsWith("  "); i++) block.push(lines[i]!);
  return block;
}

test("the replay line of a run with --disable-fix names the fix, and replaying it fails identically", () => {
  const first = xensim("run", "examples/pingpong.cfg", "--seeds", "10", "--disable-fix", "unmask-pending", "-q");
  assert.equal(first.code, 1, first.out + first.err);
  const m = /^FAIL seed (\d+):$/m.exec(first.out);
  assert.ok(m, first.out);
  const seed = Number(m[1]);
  const block = failBlock(first.out, seed);
  const replay = block.find((l) => l.startsWith("  replay: "))!.slice("  replay: ".length);
  assert.equal(replay, `xensim run examples/pingpong.cfg --seed ${seed} --disable-fix unmask-pending`);

  const words = shellSplit(replay);
  assert.equal(words[0], "xensim");
  const again = xensim(...words.slice(1));
  assert.equal(again.code, 1, `the replay passed:\n${again.out}${again.err}`);
  assert.deepEqual(failBlock(again.out, seed), block);
});

test("replayLine: every run-changing option, repeated ones in order, and shell quoting", () => {
  assert.equal(replayLine("examples/pingpong.cfg", 7, {}), "xensim run examples/pingpong.cfg --seed 7");
  assert.equal(
    replayLine("my dir/it's.cfg", MAX_SEED, { disableFix: ["drop-mm-ref", "stale-cr3"], quiet: true, dump: "evtchn", seeds: 9 }),
    "xensim run 'my dir/it'\\''s.cfg' --seed 4294967295 --disable-fix drop-mm-ref --disable-fix stale-cr3",
  );
  assert.deepEqual(shellSplit(replayLine("my dir/it's.cfg", 1, {})), ["xensim", "run", "my dir/it's.cfg", "--seed", "1"]);
  // Each option of `xensim run` says whether it goes into the replay line.
  for (const o of RUN_OPTIONS) assert.ok(o.replay === null || typeof o.replay === "function", o.flags);
  assert.deepEqual(
    RUN_OPTIONS.filter((o) => o.replay !== null).map((o) => o.flags),
    ["--disable-fix <name>"],
  );
});

test("parseSeed reads exactly 0..2^32-1 and refuses the rest", () => {
  assert.equal(parseSeed("0"), 0);
  assert.equal(parseSeed("42"), 42);
  assert.equal(parseSeed("0042"), 42);
  assert.equal(parseSeed("4294967295"), MAX_SEED);
  for (const bad of ["4294967296", "4294967297", "9007199254740993", "18446744073709551617", "-1", "1.5", "1e3", "0x10", " 7", "", "seven"]) {
    assert.throws(() => parseSeed(bad), RangeError, bad);
  }
  assert.throws(() => parseSeed("0", 1), RangeError);
});

test("xensim run refuses seeds the generator cannot represent, instead of running another seed", () => {
  for (const seed of ["4294967297", "9007199254740993", "4294967296", "-1", "0x10"]) {
    const r = xensim("run", "examples/pingpong.cfg", "--seed", seed, "-q");
    assert.notEqual(r.code, 0, `--seed ${seed} ran:\n${r.out}`);
    assert.match(r.err, /must be an integer 0\.\.4294967295 \(seeds are 32-bit\)/, seed);
    assert.doesNotMatch(r.out, /passed/, seed);
  }
  const r = xensim("run", "examples/pingpong.cfg", "--seeds", "4294967297", "-q");
  assert.notEqual(r.code, 0, r.out);
  assert.match(r.err, /must be an integer 1\.\.4294967295/);
});

test("the largest seed runs and names itself exactly", () => {
  const r = xensim("run", "examples/smp-forkexec.cfg", "--seed", String(MAX_SEED), "--disable-fix", "drop-mm-ref", "-q");
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(r.out, /^ {2}replay: xensim run examples\/smp-forkexec\.cfg --seed 4294967295 --disable-fix drop-mm-ref$/m);
});

test("xensim up refuses a seed past 32 bits before starting anything", () => {
  const dir = join(mkdtempSync(join(tmpdir(), "xensim-seed-")), "host");
  const r = xensim("up", "--dir", dir, "--seed", "4294967297");
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(r.err, /--seed 4294967297: must be an integer 0\.\.4294967295/);
});

test("buildMachine refuses a seed it would reduce", () => {
  const sc = parseScenario("domain = [ 'name=a,memory=8,vcpus=1' ]", "one.cfg");
  for (const seed of [2 ** 32 + 1, -1, 1.5, 2 ** 53 + 2]) assert.throws(() => buildMachine(sc, seed), ScenarioError, String(seed));
});
