// `xensim xenstored --socket PATH`: the project's xenstored on its own, serving a unix socket.
// With no hypervisor behind it, dom0 and the domains it is told to introduce exist and never die,
// and an introduced domain has no ring (what is sent to it is dropped).

import { rmSync } from "node:fs";
import { type Command, InvalidArgumentError } from "commander";
import { Xenstored } from "../toolstack/xenstored/daemon.ts";
import { HARD_QUOTAS, SOFT_QUOTAS, type XsQuotas } from "../toolstack/xenstored/quotas.ts";
import { listenXenstored } from "../toolstack/xenstored/socket.ts";
import { SocketInUseError } from "../util/unix_socket.ts";

interface XenstoredCliOptions {
  socket: string;
  quota: string[];
  quotaSoft: string[];
  traceFile?: string;
  verbose?: boolean;
}

function quotaOption(table: typeof HARD_QUOTAS) {
  return (value: string, previous: string[]): string[] => {
    const m = /^([a-z-]+)=(\d+)$/.exec(value);
    if (!m || !table.some((q) => q.name === m[1])) {
      throw new InvalidArgumentError(`expected <what>=<n>, <what> one of ${table.map((q) => q.name).join(", ")}`);
    }
    return [...previous, value];
  };
}

function parseQuotas(hard: string[], soft: string[]): Partial<XsQuotas> {
  const q: Partial<XsQuotas> = {};
  for (const [list, table] of [
    [hard, HARD_QUOTAS],
    [soft, SOFT_QUOTAS],
  ] as const) {
    for (const v of list) {
      const [name, n] = v.split("=");
      const e = table.find((t) => t.name === name)!;
      q[e.key] = Number(n);
    }
  }
  return q;
}

export async function runXenstored(opts: XenstoredCliOptions): Promise<void> {
  const daemon = new Xenstored({
    quotas: parseQuotas(opts.quota, opts.quotaSoft),
    ...(opts.traceFile === undefined ? {} : { traceFile: opts.traceFile }),
    log: opts.verbose ? (line) => process.stderr.write(`xenstored: ${line}\n`) : () => {},
  });
  // Another daemon answering on the socket keeps it: taking it over would orphan that daemon.
  const server = await listenXenstored(daemon, opts.socket).catch((e: unknown) => {
    daemon.shutdown();
    throw e instanceof SocketInUseError ? new Error(`xenstored is already running on ${opts.socket}`) : e;
  });
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    server.close();
    daemon.shutdown();
    rmSync(opts.socket, { force: true });
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  // Announced only once a signal would be handled: whoever reads the line may signal at once.
  process.stdout.write(`xenstored listening on ${opts.socket}\n`);
}

export function registerXenstored(program: Command): void {
  program
    .command("xenstored")
    .description("run the xenstore daemon alone on a unix socket (clients are dom0)")
    .requiredOption("--socket <path>", "the unix socket to listen on (a stale one is replaced; a live one is refused)")
    .option("--quota <what=n>", `set a quota, as C xenstored's -Q (repeatable): ${HARD_QUOTAS.map((q) => q.name).join(", ")}`, quotaOption(HARD_QUOTAS), [])
    .option("--quota-soft <what=n>", "set a soft quota (repeatable): memory", quotaOption(SOFT_QUOTAS), [])
    .option("--trace-file <file>", "log every message in and out, as C xenstored's -T")
    .option("-v, --verbose", "print the daemon's log lines on stderr")
    .action(async (opts: XenstoredCliOptions) => {
      await runXenstored(opts);
    });
}
