// The `xensim` command.

import { Command, InvalidArgumentError } from "commander";
import { registerBench } from "./bench.ts";
import { runDemo } from "./demo.ts";
import { registerHost } from "./host.ts";
import { runCommand } from "./run.ts";
import { registerXenstored } from "./xenstored.ts";
import { registerXl } from "./xl.ts";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

const program = new Command();
program.name("xensim").description("An executable model of Xen PV: hypervisor, PV guest kernel and toolstack").version("0.1.0");

program
  .command("run")
  .description("run a scenario file (xl.cfg syntax) under one seed or many")
  .argument("<scenario>", "scenario file, e.g. examples/pingpong.cfg")
  .option("--seed <n>", "run this seed", positiveInt)
  .option("--seeds <n>", "run seeds 1..n", positiveInt)
  .option("--dump <what>", "after the run, dump state: evtchn")
  .option("-q, --quiet", "print only failures and the summary")
  .option("--disable-fix <name>", "switch off a guest fix to see what it prevents (repeatable): unmask-pending, drop-mm-ref, stale-cr3", collect, [])
  .action((file: string, opts: { seed?: number; seeds?: number; dump?: string; quiet?: boolean; disableFix: string[] }) => {
    process.exitCode = runCommand(file, opts);
  });

program
  .command("demo")
  .description("two domains with several vCPUs: IPIs, timer interrupts, inter-domain events")
  .action(() => {
    process.exitCode = runDemo();
  });

registerBench(program);
registerXenstored(program);
registerHost(program);
registerXl(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  console.error(`xensim: ${(e as Error).message}`);
  process.exitCode = 1;
});
