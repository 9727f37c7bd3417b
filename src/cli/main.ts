// The `xensim` command.

import { Command } from "commander";
import { registerBench } from "./bench.ts";
import { runDemo } from "./demo.ts";
import { registerHost } from "./host.ts";
import { registerRun } from "./run.ts";
import { registerXenstored } from "./xenstored.ts";
import { hostDir, registerXl, xl } from "./xl.ts";
import { registerXlSave } from "./xl_save.ts";
import { registerXlSched } from "./xl_sched.ts";

const program = new Command();
program.name("xensim").description("An executable model of Xen PV: hypervisor, PV guest kernel and toolstack").version("0.1.0");

registerRun(program);

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
registerXlSched(program, hostDir, xl);
registerXlSave(program, hostDir, xl);

program.parseAsync(process.argv).catch((e: unknown) => {
  console.error(`xensim: ${(e as Error).message}`);
  // Whatever the command had opened (a server, a timer) must not keep a failed command alive.
  process.exit(1);
});
