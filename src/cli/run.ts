// `xensim run <scenario>`: one seed with a report, or many seeds with a summary; a failure
// names the seed that replays it.

import { type Command, InvalidArgumentError } from "commander";
import { GUEST_FIXES, isGuestFix } from "../guest/fixes.ts";
import { dumpEvtchn } from "../harness/dump.ts";
import { describeRun, loadScenario, runScenario, type Scenario, ScenarioError } from "../harness/scenario.ts";
import { parseSeed } from "../util/rng.ts";

export interface RunOptions {
  seed?: number;
  seeds?: number;
  dump?: string;
  quiet?: boolean;
  disableFix?: string[];
}

interface RunOption {
  flags: string;
  description: string;
  parse?: (value: string, previous: never) => unknown;
  default?: unknown;
  /**
   * What the option adds to a replay line, or null for an option that does not change what a
   * run does (output, or which seeds run). Every option says which, so a new option that changes
   * the run (a scheduler, a fault) cannot be left out of the replay line by forgetting it.
   */
  replay: ((opts: RunOptions) => string[]) | null;
}

function seedArg(min: number) {
  return (value: string): number => {
    try {
      return parseSeed(value, min);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
}

/** The options of `xensim run`: commander's declarations and the replay line both come from here. */
export const RUN_OPTIONS: readonly RunOption[] = [
  { flags: "--seed <n>", description: "run this seed (0..4294967295)", parse: seedArg(0), replay: null },
  { flags: "--seeds <n>", description: "run seeds 1..n", parse: seedArg(1), replay: null },
  { flags: "--dump <what>", description: "after the run, dump state: evtchn", replay: null },
  { flags: "-q, --quiet", description: "print only failures and the summary", replay: null },
  {
    flags: "--disable-fix <name>",
    description: `switch off a guest fix to see what it prevents (repeatable): ${Object.keys(GUEST_FIXES).join(", ")}`,
    parse: (value: string, previous: string[]) => [...previous, value],
    default: [],
    replay: (o) => (o.disableFix ?? []).flatMap((f) => ["--disable-fix", f]),
  },
];

/** Registers `xensim run`. */
export function registerRun(program: Command): void {
  const cmd = program
    .command("run")
    .description("run a scenario file (xl.cfg syntax) under one seed or many")
    .argument("<scenario>", "scenario file, e.g. examples/pingpong.cfg");
  for (const o of RUN_OPTIONS) {
    if (o.parse) cmd.option(o.flags, o.description, o.parse as (value: string, previous: unknown) => unknown, o.default);
    else cmd.option(o.flags, o.description);
  }
  cmd.action((file: string, opts: RunOptions) => {
    process.exitCode = runCommand(file, opts);
  });
}

/** A word as a POSIX shell reads it back unchanged. */
function shellWord(w: string): string {
  return /^[A-Za-z0-9_./,:=@%+-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\\''")}'`;
}

/** The command that replays `seed` of a run with `opts`: the same scenario, seed and every option that changes the run. */
export function replayLine(file: string, seed: number, opts: RunOptions): string {
  const args = ["run", file, "--seed", String(seed), ...RUN_OPTIONS.flatMap((o) => o.replay?.(opts) ?? [])];
  return `xensim ${args.map(shellWord).join(" ")}`;
}

export function runCommand(file: string, opts: RunOptions): number {
  if (opts.dump !== undefined && opts.dump !== "evtchn") {
    console.error(`xensim run: unknown --dump '${opts.dump}' (known: evtchn)`);
    return 2;
  }
  if (opts.seed !== undefined && opts.seeds !== undefined) {
    console.error("xensim run: give --seed or --seeds, not both");
    return 2;
  }
  const disableFixes = opts.disableFix ?? [];
  for (const name of disableFixes) {
    if (!isGuestFix(name)) {
      console.error(`xensim run: unknown fix '${name}' (known: ${Object.keys(GUEST_FIXES).join(", ")})`);
      return 2;
    }
  }
  let sc: Scenario;
  try {
    sc = loadScenario(file);
  } catch (e) {
    if (e instanceof ScenarioError) {
      console.error(`xensim run: ${e.message}`);
      return 2;
    }
    throw e;
  }
  for (const w of sc.warnings) console.error(`xensim run: warning: ${w}`);
  // Seeds 1..n, or the one seed; counted, not listed (n may be up to 2^32-1).
  const count = opts.seeds ?? 1;
  const firstSeed = opts.seeds !== undefined ? 1 : (opts.seed ?? 1);
  const failed: number[] = [];
  const many = count > 1;
  const showProgress = many && process.stderr.isTTY;
  if (!opts.quiet) console.log(`scenario ${sc.name}${sc.description ? `: ${sc.description}` : ""}`);
  for (const name of disableFixes) console.log(`fix disabled: ${name}: ${GUEST_FIXES[name as keyof typeof GUEST_FIXES]}`);
  for (let seed = firstSeed; seed < firstSeed + count; seed++) {
    const r = runScenario(sc, seed, { disableFixes });
    if (r.failures.length > 0) {
      failed.push(seed);
      if (showProgress) process.stderr.write("\r\x1b[K");
      console.log(`FAIL seed ${seed}:`);
      for (const f of r.failures) console.log(`  ${f}`);
      console.log(`  replay: ${replayLine(file, seed, opts)}`);
    }
    if (!many && !opts.quiet) for (const line of describeRun(r)) console.log(line);
    if (opts.dump === "evtchn") for (const line of dumpEvtchn(r.hv, r.kernels)) console.log(line);
    if (showProgress) process.stderr.write(`\r${seed}/${count} seeds, ${failed.length} failed`);
  }
  if (showProgress) process.stderr.write("\n");
  const passed = count - failed.length;
  console.log(`${passed} passed, ${failed.length} failed`);
  if (failed.length > 0) console.log(`failing seeds: ${failed.slice(0, 50).join(" ")}${failed.length > 50 ? " ..." : ""}`);
  return failed.length > 0 ? 1 : 0;
}
