// `xensim bench <what>`: each case runs in a fresh child process, so that one case's JIT
// feedback does not slow the next, and prints its figure beside a baseline from the same run.

import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { type BenchRow, benchEvents, EVENT_CASES } from "../bench/events.ts";

export function registerBench(program: Command): void {
  const bench = program.command("bench").description("measure performance against same-run baselines");
  bench
    .command("events")
    .description("end-to-end event deliveries per second (IPI, inter-domain, 1000-port fan-in; 2L and FIFO)")
    .option("--json", "print one JSON object")
    .option("--ms <n>", "measuring time per case, in ms", "1000")
    .option("--case <name>", "run one case in this process (used internally)")
    .action((opts: { json?: boolean; ms: string; case?: string }) => {
      const ms = Number(opts.ms);
      if (!Number.isFinite(ms) || ms < 50) throw new Error("--ms must be at least 50");
      if (opts.case !== undefined) {
        if (!EVENT_CASES.includes(opts.case)) throw new Error(`unknown case ${opts.case}; known: ${EVENT_CASES.join(", ")}`);
        process.stdout.write(JSON.stringify(benchEvents(ms, () => {}, [opts.case])[0]));
        return;
      }
      const rows: BenchRow[] = [];
      for (const name of EVENT_CASES) {
        if (!opts.json && process.stderr.isTTY) process.stderr.write(`  running ${name}...\r`);
        const out = execFileSync(process.execPath, [...process.execArgv, mainScript(), "bench", "events", "--case", name, "--ms", String(ms)], {
          encoding: "utf8",
        });
        rows.push(JSON.parse(out) as BenchRow);
      }
      if (opts.json) console.log(JSON.stringify({ bench: "events", results: rows }));
      else printTable(rows);
    });
}

function mainScript(): string {
  return process.argv[1] ?? fileURLToPath(new URL("./main.js", import.meta.url));
}

export function printTable(rows: readonly BenchRow[]): void {
  console.log(`${"case".padEnd(28)}${"value".padStart(14)} ${"unit".padEnd(14)}${"baseline".padStart(14)}${"ratio".padStart(8)}`);
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(28)}${r.value.toLocaleString("en-US").padStart(14)} ${r.unit.padEnd(14)}${r.baseline.toLocaleString("en-US").padStart(14)}${r.ratio.toFixed(3).padStart(8)}`,
    );
  }
}
