// `xensim bench <what>`: each case runs in a fresh child process, so that one case's JIT
// feedback does not slow the next, and prints its figure beside a baseline from the same run.

import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import type { BenchRow } from "../bench/common.ts";
import { benchEvents, EVENT_CASES } from "../bench/events.ts";
import { benchHost, HOST_CASES, HOST_NOTES } from "../bench/host.ts";
import { benchMmu, MMU_CASES, MMU_NOTES } from "../bench/mmu.ts";
import { benchSave, SAVE_NOTES } from "../bench/save.ts";
import { benchXenstore, XENSTORE_CASES, XENSTORE_NOTES } from "../bench/xenstore.ts";

/** A `xensim bench <name>` suite: named cases, each run in its own process. */
interface Suite {
  name: string;
  description: string;
  cases: readonly string[];
  /** Runs case `name` in this process. */
  run(name: string, ms: number): BenchRow[] | Promise<BenchRow[]>;
  /** Printed under the human table: what the baselines are. */
  notes?: readonly string[];
}

const SUITES: Suite[] = [
  {
    name: "events",
    description: "end-to-end event deliveries per second (IPI, inter-domain, 1000-port fan-in; 2L and FIFO)",
    cases: EVENT_CASES,
    run: (name, ms) => benchEvents(ms, () => {}, [name]),
  },
  {
    name: "mmu",
    description: "PV MMU: pin/unpin of a 1 GiB tree, process lifecycles with 4 vCPUs, TLB shootdowns across 8 vCPUs",
    cases: MMU_CASES,
    run: (name, ms) => benchMmu(name, ms),
    notes: MMU_NOTES,
  },
  {
    name: "xenstore",
    description: "xenstored ops/s (read, write, directory, transaction; 1 and 32 in flight): ours beside C xenstored and oxenstored",
    cases: XENSTORE_CASES,
    run: (name, ms) => benchXenstore(name, ms),
    notes: XENSTORE_NOTES,
  },
  {
    name: "host",
    description: "a host's responsiveness: xenstore read and xl list latency with 1, 4 and 20 busy guests beside idle (credit and interleave)",
    cases: HOST_CASES,
    run: (name, ms) => benchHost(name, ms),
    notes: HOST_NOTES,
  },
];

export function registerBench(program: Command): void {
  const bench = program.command("bench").description("measure performance against same-run baselines");
  for (const suite of SUITES) registerSuite(bench, suite);
  registerSave(bench);
}

/** `xensim bench save`: one process (the image it saves is the one it restores), its own options. */
function registerSave(bench: Command): void {
  bench
    .command("save")
    .description("xl save and restore of a guest with 1 GiB of touched memory, MB/s beside raw file write and read")
    .option("--json", "print one JSON object")
    .option("--mib <n>", "the guest's memory (all of it touched), MiB", "1024")
    .option("--rounds <n>", "save, write, restore, read rounds (the median counts)", "3")
    .option("--dir <path>", "where the files go (a temporary directory in it)", tmpdir())
    .action((opts: { json?: boolean; mib: string; rounds: string; dir: string }) => {
      const mib = Number(opts.mib);
      const rounds = Number(opts.rounds);
      if (!Number.isInteger(mib) || mib < 16 || mib > 16384) throw new Error("--mib must be an integer from 16 to 16384");
      if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds must be a positive integer");
      const log = !opts.json && process.stderr.isTTY ? (line: string) => process.stderr.write(`  ${line.padEnd(60)}\r`) : undefined;
      const r = benchSave({ mib, rounds, dir: opts.dir, log });
      if (log) process.stderr.write(`${" ".repeat(64)}\r`);
      if (opts.json) {
        console.log(JSON.stringify({ bench: "save", results: r.rows, pages: r.pages, pagesTouched: r.pagesTouched, imageBytes: r.imageBytes, rounds: r.rounds, samples: r.samples }));
        return;
      }
      printTable(r.rows);
      console.log("");
      console.log(`pages with data ${r.pages.toLocaleString("en-US")} (${r.pagesTouched.toLocaleString("en-US")} filled by the bench), image ${r.imageBytes.toLocaleString("en-US")} bytes, ${r.rounds} rounds in ${r.dir}`);
      const fmt = (xs: number[]) => xs.map((x) => Math.round(x)).join(", ");
      console.log(`per round MB/s: save ${fmt(r.samples.save)}; write ${fmt(r.samples.write)}; restore ${fmt(r.samples.restore)}; read ${fmt(r.samples.read)}`);
      console.log("");
      for (const n of SAVE_NOTES) console.log(n);
    });
}

function registerSuite(bench: Command, suite: Suite): void {
  bench
    .command(suite.name)
    .description(suite.description)
    .option("--json", "print one JSON object")
    .option("--ms <n>", "measuring time per case, in ms", "1000")
    .option("--case <name>", "run one case in this process (used internally)")
    .action(async (opts: { json?: boolean; ms: string; case?: string }) => {
      const ms = Number(opts.ms);
      if (!Number.isFinite(ms) || ms < 50) throw new Error("--ms must be at least 50");
      if (opts.case !== undefined) {
        if (!suite.cases.includes(opts.case)) throw new Error(`unknown case ${opts.case}; known: ${suite.cases.join(", ")}`);
        const rows = await suite.run(opts.case, ms);
        process.stdout.write(JSON.stringify(rows.length === 1 ? rows[0] : rows));
        return;
      }
      const rows: BenchRow[] = [];
      for (const name of suite.cases) {
        if (!opts.json && process.stderr.isTTY) process.stderr.write(`  running ${name}...\r`);
        const out = execFileSync(process.execPath, [...process.execArgv, mainScript(), "bench", suite.name, "--case", name, "--ms", String(ms)], {
          encoding: "utf8",
        });
        const parsed = JSON.parse(out) as BenchRow | BenchRow[];
        rows.push(...(Array.isArray(parsed) ? parsed : [parsed]));
      }
      if (opts.json) console.log(JSON.stringify({ bench: suite.name, results: rows }));
      else {
        printTable(rows);
        if (suite.notes?.length) {
          console.log("");
          for (const n of suite.notes) console.log(n);
        }
      }
    });
}

function mainScript(): string {
  return process.argv[1] ?? fileURLToPath(new URL("./main.js", import.meta.url));
}

export function printTable(rows: readonly BenchRow[]): void {
  const w = Math.max(28, ...rows.map((r) => r.name.length + 2));
  console.log(`${"case".padEnd(w)}${"value".padStart(14)} ${"unit".padEnd(14)}${"baseline".padStart(14)}${"ratio".padStart(8)}`);
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(w)}${formatNumber(r.value).padStart(14)} ${r.unit.padEnd(14)}${formatNumber(r.baseline).padStart(14)}${formatRatio(r.ratio).padStart(8)}`,
    );
  }
}

/** A figure that could not be measured (NaN, or null after JSON) shows as n/a. */
function formatNumber(n: number | null): string {
  return n === null || !Number.isFinite(n) ? "n/a" : n.toLocaleString("en-US");
}

/** Three decimals, or two significant digits for a ratio too small to show that way. */
function formatRatio(ratio: number | null): string {
  if (ratio === null || !Number.isFinite(ratio)) return "n/a";
  return ratio === 0 || ratio >= 0.001 ? ratio.toFixed(3) : ratio.toExponential(1);
}
