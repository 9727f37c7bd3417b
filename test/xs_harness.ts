// Shared by the xenstored tests: start the project's daemon and Xen's reference daemons on
// temporary directories (through the same launcher as `xensim bench xenstore`), connect clients,
// and clean everything up in `after`.

import { join } from "node:path";
import { after, before } from "node:test";
import {
  type DaemonKind,
  DAEMON_LABEL,
  daemonAlive,
  PROJECT_ROOT,
  type RunningDaemon,
  rssKiB,
  sleep,
  startXenstored,
} from "../src/bench/xenstore.ts";
import { XsClient } from "../src/toolstack/xenstore/xs_client.ts";
import { xenNeeds, xenSkip } from "./xen_tools.ts";

export { DAEMON_LABEL, daemonAlive, type DaemonKind, type RunningDaemon, rssKiB, sleep };

/** How the tests run the project's daemon: `node --import tsx src/cli/main.ts xenstored --socket PATH`. */
export const XENSIM_CMD: readonly string[] = [process.execPath, "--import", "tsx", join(PROJECT_ROOT, "src/cli/main.ts")];

/**
 * The `skip` option of a suite that runs these daemons (C xenstored when none is named): the
 * reason when a reference daemon among them is missing (see test/xen_tools.ts), else false.
 */
export function referenceSkip(...kinds: DaemonKind[]): string | false {
  const need = kinds.length === 0 ? ["c"] : kinds;
  return xenSkip(...(need.includes("c") ? (["xenstored"] as const) : []), ...(need.includes("ocaml") ? (["oxenstored"] as const) : []));
}

export function startDaemon(kind: DaemonKind): Promise<RunningDaemon> {
  return startXenstored(kind, { xensim: XENSIM_CMD });
}

export interface DaemonFixture {
  readonly kind: DaemonKind;
  /** The running daemon; throws the start error (e.g. our daemon not implemented yet). */
  readonly daemon: RunningDaemon;
  /** A new client connection, closed in `after`. */
  connect(): Promise<XsClient>;
}

/**
 * Starts a daemon in `before` of the enclosing suite and stops it in `after`. A failure to start
 * is rethrown by every test that uses it, so each fails with the reason.
 */
export function daemonFixture(kind: DaemonKind): DaemonFixture {
  // the suite's tests run a reference daemon: count them among the tests that need Xen's tools
  if (kind !== "ours") xenNeeds(kind === "c" ? "xenstored" : "oxenstored").suite();
  let d: RunningDaemon | undefined;
  let err: unknown;
  const clients = new Set<XsClient>();
  before(async () => {
    try {
      d = await startDaemon(kind);
    } catch (e) {
      err = e;
    }
  });
  after(async () => {
    for (const c of clients) c.destroy();
    await d?.stop();
  });
  const fx: DaemonFixture = {
    kind,
    get daemon(): RunningDaemon {
      if (err !== undefined) throw err;
      if (!d) throw new Error(`${DAEMON_LABEL[kind]} was not started`);
      return d;
    },
    async connect() {
      const c = await XsClient.connect(fx.daemon.socket);
      clients.add(c);
      void c.closed.then(() => clients.delete(c));
      return c;
    },
  };
  return fx;
}

/** Rejects after `ms` with `what` unless `p` settles first. */
export async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
