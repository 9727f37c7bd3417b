// `xensim run <scenario>`: one seed with a report, or many seeds with a summary; a failure
// names the seed that replays it.

import { GUEST_FIXES, isGuestFix } from "../guest/fixes.ts";
import { dumpEvtchn } from "../harness/dump.ts";
import { describeRun, loadScenario, runScenario, type Scenario, ScenarioError } from "../harness/scenario.ts";

export interface RunOptions {
  seed?: number;
  seeds?: number;
  dump?: string;
  quiet?: boolean;
  disableFix?: string[];
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
  const seeds = opts.seeds !== undefined ? Array.from({ length: opts.seeds }, (_, i) => i + 1) : [opts.seed ?? 1];
  const failed: number[] = [];
  const many = seeds.length > 1;
  const showProgress = many && process.stderr.isTTY;
  if (!opts.quiet) console.log(`scenario ${sc.name}${sc.description ? `: ${sc.description}` : ""}`);
  for (const name of disableFixes) console.log(`fix disabled: ${name}: ${GUEST_FIXES[name as keyof typeof GUEST_FIXES]}`);
  for (const seed of seeds) {
    const r = runScenario(sc, seed, { disableFixes });
    if (r.failures.length > 0) {
      failed.push(seed);
      if (showProgress) process.stderr.write("\r\x1b[K");
      console.log(`FAIL seed ${seed}:`);
      for (const f of r.failures) console.log(`  ${f}`);
      console.log(`  replay: xensim run ${file} --seed ${seed}`);
    }
    if (!many && !opts.quiet) for (const line of describeRun(r)) console.log(line);
    if (opts.dump === "evtchn") for (const line of dumpEvtchn(r.hv, r.kernels)) console.log(line);
    if (showProgress) process.stderr.write(`\r${seed}/${seeds.length} seeds, ${failed.length} failed`);
  }
  if (showProgress) process.stderr.write("\n");
  const passed = seeds.length - failed.length;
  console.log(`${passed} passed, ${failed.length} failed`);
  if (failed.length > 0) console.log(`failing seeds: ${failed.slice(0, 50).join(" ")}${failed.length > 50 ? " ..." : ""}`);
  return failed.length > 0 ? 1 : 0;
}
