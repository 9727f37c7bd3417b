// xl's scheduling commands, client side: `sched-credit` (tools/xl/xl_sched.c main_sched_credit)
// and `vcpu-pin` (xl_vcpu.c main_vcpupin). The host does the work (src/toolstack/xl/sched_cmds.ts);
// this side checks the options as xl does and prints what comes back in xl's formats.

import type { Command } from "commander";
import type { SchedCreditParams } from "../hypervisor/domctl.ts";
import { type CreditDomainRow, formatCreditDomains, formatCreditPool, strtol } from "../toolstack/xl/sched_cmds.ts";

type Reply = Record<string, unknown>;
/** How src/cli/xl.ts sends one request and reports a failure (null/undefined: it failed). */
type XlCall = (dir: string, req: Record<string, unknown>) => Promise<Reply | undefined>;

function fail(message: string): void {
  console.error(message);
  process.exitCode = 1;
}

export function registerXlSched(program: Command, hostDir: (program: Command) => string, xl: XlCall): void {
  program
    .command("sched-credit")
    .description("Get/set credit scheduler parameters")
    .usage("[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]] [-s [-t TSLICE] [-r RATELIMIT] [-m DELAY]] [-p CPUPOOL]")
    .option("-d, --domain <domain>", "Domain to modify")
    .option("-w, --weight <weight>", "Weight (int)")
    .option("-c, --cap <cap>", "Cap (int)")
    .option("-s, --schedparam", "Query / modify scheduler parameters")
    .option("-t, --tslice_ms <ms>", "Set the timeslice, in milliseconds")
    .option("-r, --ratelimit_us <us>", "Set the scheduling rate limit, in microseconds")
    .option("-m, --migration_delay_us <us>", "Set the migration delay, in microseconds")
    .option("-p, --cpupool <pool>", "Restrict output to CPUPOOL")
    .addHelpText("after", "\nThe host runs Xen's credit scheduler unless it was started with `xensim up --sched interleave`.")
    .action(
      async (opts: {
        domain?: string;
        weight?: string;
        cap?: string;
        schedparam?: boolean;
        tslice_ms?: string;
        ratelimit_us?: string;
        migration_delay_us?: string;
        cpupool?: string;
      }) => {
        const optW = opts.weight !== undefined;
        const optC = opts.cap !== undefined;
        const optS = opts.schedparam === true;
        const optT = opts.tslice_ms !== undefined;
        const optR = opts.ratelimit_us !== undefined;
        const optM = opts.migration_delay_us !== undefined;
        // main_sched_credit's checks, in its order.
        if ((opts.cpupool !== undefined || optS) && (opts.domain !== undefined || optW || optC)) {
          fail("Specifying a cpupool or schedparam is not allowed with domain options.");
          return;
        }
        if (opts.domain === undefined && (optW || optC)) {
          fail("Must specify a domain.");
          return;
        }
        if (!optS && (optT || optR || optM)) {
          fail("Must specify schedparam to set schedule parameter values.");
          return;
        }
        if (opts.cpupool !== undefined && opts.cpupool !== "Pool-0" && opts.cpupool !== "0") {
          fail(`unknown cpupool '${opts.cpupool}'`);
          return;
        }
        const dir = hostDir(program);
        if (optS) {
          const req: Record<string, unknown> = { cmd: "sched-credit", schedparam: true };
          if (optT) req["tslice"] = strtol(opts.tslice_ms!);
          if (optR) req["ratelimit"] = strtol(opts.ratelimit_us!);
          if (optM) req["migrdelay"] = strtol(opts.migration_delay_us!);
          const r = await xl(dir, req);
          if (r && !optT && !optR && !optM) process.stdout.write(formatCreditPool(String(r["pool"]), r["params"] as SchedCreditParams | null));
          return;
        }
        if (opts.domain === undefined) {
          const r = await xl(dir, { cmd: "sched-credit" });
          if (r && r["pool"] !== null) {
            process.stdout.write(formatCreditPool(String(r["pool"]), r["params"] as SchedCreditParams | null));
            process.stdout.write(formatCreditDomains(r["domains"] as CreditDomainRow[]));
          }
          return;
        }
        const req: Record<string, unknown> = { cmd: "sched-credit", dom: opts.domain };
        if (optW) req["weight"] = strtol(opts.weight!);
        if (optC) req["cap"] = strtol(opts.cap!);
        const r = await xl(dir, req);
        if (r && !optW && !optC) process.stdout.write(formatCreditDomains(r["domains"] as CreditDomainRow[]));
      },
    );

  program
    .command("vcpu-pin")
    .description("Set which CPUs a VCPU can use")
    .usage("[option] <Domain> <VCPU|all> <Hard affinity|-|all> <Soft affinity|-|all>")
    .argument("<domain>")
    .argument("<vcpu>", "a vCPU number, or all")
    .argument("<hard>", "pCPUs: N, N-M, all, node:N, ^N, comma-separated; - leaves it as it is")
    .argument("[soft]", "the same, for the soft affinity")
    .option("-f, --force", "undo an override pinning done by the kernel")
    .addHelpText("after", "\nThe new hard affinity shows in `vcpu-list`; the scheduler moves the vCPU at once.")
    .action(async (dom: string, vcpu: string, hard: string, soft: string | undefined, opts: { force?: boolean }) => {
      const r = await xl(hostDir(program), { cmd: "vcpu-pin", dom, vcpu, hard, soft: soft ?? null, force: opts.force === true });
      for (const w of (r?.["warnings"] as string[] | undefined) ?? []) console.error(w);
    });
}
