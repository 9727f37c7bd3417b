// A host in real time: the machine's virtual clock follows the wall clock (times `speed`), the
// xenstored socket serves Xen's own clients, and a control socket takes the xl commands.
//
// Control protocol: one JSON object per line each way. A request is {cmd, ...args}; the reply is
// {ok: true, ...} or {ok: false, error}. `console` instead streams {text} lines until the
// client hangs up or the domain goes.

import { existsSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { type BootMachine, Host, type HostParams } from "../libxl/host.ts";
import { listenUnix } from "../../util/unix_socket.ts";
import { listenXenstored } from "../xenstored/socket.ts";
import { XL_COMMANDS, type XlReply } from "./xl_commands.ts";
import { migrateReceive } from "./migrate.ts";

export interface ServeOptions {
  dir: string;
  /** Virtual seconds per wall second. */
  speed: number;
  params: HostParams;
  /** Boots the machine the toolstack runs on (Xen with dom0). */
  boot: BootMachine;
  log: (line: string) => void;
  /** ADDR:PORT where this host takes incoming migrations (xl migrate-receive over TCP). */
  migrateListen?: { host: string; port: number };
}

export const HOST_FILES = { xenstored: "xenstored.sock", control: "control.sock", pid: "xensim.pid", log: "host.log" } as const;

/**
 * Wall time one tick may spend running the machine before sockets get their turn, while the
 * machine runs behind the wall clock. While clients talk to the host (a request came in within
 * INTERACTIVE_MS) a tick is one short run only, so that each hop of a conversation (request in,
 * reply out, next request in) waits for little machine work; a step itself cannot be cut short.
 */
const TICK_BUDGET_MS = 2;
const INTERACTIVE_MS = 5;
/** Scheduler steps per run call (a busy guest's step is a few microseconds), and while interactive. */
const STEPS_PER_RUN = 32;
const STEPS_PER_RUN_INTERACTIVE = 2;
/** How often the pace (virtual time per wall time) is measured. */
const PACE_WINDOW_MS = 1000;

export interface RunningHost {
  host: Host;
  /** Resolves once the host has stopped (after `down` or stop()). */
  stopped: Promise<void>;
  stop(): Promise<void>;
}

export async function serveHost(opts: ServeOptions): Promise<RunningHost> {
  const host = new Host(opts.params, opts.boot);
  // dom0's wall clock starts at the real time of day (then moves with the machine's time)
  host.wallclockBaseSec = Date.now() / 1000 - host.now() / 1e9;
  host.boot();
  const wall0 = performance.now();
  const virt0 = host.now();
  let lagWarned = false;
  let timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  const waiters: { check: () => boolean; done: () => void }[] = [];
  let paceWall = wall0;
  let paceVirt = virt0;
  host.pace = { speed: opts.speed, ratio: 1, behindNs: 0 };

  let lastRequestAt = Number.NEGATIVE_INFINITY;

  const tick = () => {
    const start = performance.now();
    const target = virt0 + (start - wall0) * 1e6 * opts.speed;
    const interactive = start - lastRequestAt < INTERACTIVE_MS;
    const budget = interactive ? 0 : TICK_BUDGET_MS;
    const steps = interactive ? STEPS_PER_RUN_INTERACTIVE : STEPS_PER_RUN;
    do host.run(Math.min(target, host.now() + 1_000_000), steps);
    while (host.now() < target && performance.now() - start < budget);
    const wallNow = performance.now();
    if (wallNow - paceWall >= PACE_WINDOW_MS) {
      host.pace = { speed: opts.speed, ratio: (host.now() - paceVirt) / ((wallNow - paceWall) * 1e6 * opts.speed), behindNs: 0 };
      paceWall = wallNow;
      paceVirt = host.now();
    }
    if (host.pace) host.pace.behindNs = Math.max(0, target - host.now());
    if (host.now() < target - 1e9 * opts.speed && !lagWarned) {
      lagWarned = true;
      opts.log("the machine is running behind the wall clock (the guests' work exceeds this host's speed)");
    }
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i]!.check()) waiters.splice(i, 1)[0]!.done();
    }
    // Behind: run on as soon as the sockets have had their turn; caught up: wait a little.
    timer = host.now() < target ? setImmediate(tick) : setTimeout(tick, 2);
  };

  const xsPath = join(opts.dir, HOST_FILES.xenstored);
  const ctlPath = join(opts.dir, HOST_FILES.control);
  const xsServer = await listenXenstored(host.xenstored, xsPath);
  let resolveStopped: () => void = () => {};
  const stopped = new Promise<void>((r) => {
    resolveStopped = r;
  });

  const live = new Set<Socket>();
  const stopExtra: (() => Promise<void>)[] = [];
  const track = (server: Server) =>
    server.on("connection", (s: Socket) => {
      live.add(s);
      s.on("close", () => live.delete(s));
      s.on("data", () => {
        lastRequestAt = performance.now();
      });
    });
  track(xsServer);
  const stop = async () => {
    if (timer) {
      clearTimeout(timer as NodeJS.Timeout);
      clearImmediate(timer as NodeJS.Immediate);
    }
    timer = undefined;
    for (const s of live) s.destroy();
    await Promise.all([closeServer(xsServer), closeServer(ctlServer), ...stopExtra.map((f) => f())]);
    for (const f of [xsPath, ctlPath, join(opts.dir, HOST_FILES.pid)]) if (existsSync(f)) rmSync(f, { force: true });
    resolveStopped();
  };

  const waitFor = (check: () => boolean, then: () => void) => {
    if (check()) then();
    else waiters.push({ check, done: then });
  };
  const handle = (req: Record<string, unknown>, reply: (r: XlReply) => void, sock: Socket) => {
    const handler = Object.hasOwn(XL_COMMANDS, String(req["cmd"])) ? XL_COMMANDS[String(req["cmd"])] : undefined;
    if (!handler) {
      reply({ ok: false, error: `unknown command ${JSON.stringify(req["cmd"])}` });
      return;
    }
    handler({ host, req, reply, sock, waitFor, stop: () => setImmediate(() => void stop()) });
  };

  const ctlServer = createServer((sock) => {
    let buf = "";
    const reply = (r: Record<string, unknown>) => {
      if (!sock.destroyed) sock.write(`${JSON.stringify(r)}\n`);
    };
    sock.on("error", () => sock.destroy());
    sock.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      if (buf.length > 1 << 20) {
        reply({ ok: false, error: "request too large" });
        sock.destroy();
        return;
      }
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let req: Record<string, unknown>;
        try {
          req = JSON.parse(line) as Record<string, unknown>;
        } catch {
          reply({ ok: false, error: "malformed request" });
          continue;
        }
        try {
          handle(req, reply, sock);
        } catch (e) {
          reply({ ok: false, error: (e as Error).message });
        }
      }
    });
  });
  track(ctlServer);
  // Without a control socket nothing could stop this host: give xenstored's socket back and fail.
  await listen(ctlServer, ctlPath).catch(async (e: unknown) => {
    await closeServer(xsServer);
    throw e;
  });
  if (opts.migrateListen) {
    const ml = opts.migrateListen;
    const migServer = createServer((sock) => migrateReceive(host, sock, { waitFor, log: opts.log }));
    track(migServer);
    await new Promise<void>((res, rej) => {
      migServer.once("error", rej);
      migServer.listen(ml.port, ml.host, () => res());
    }).catch(async (e: unknown) => {
      await Promise.all([closeServer(xsServer), closeServer(ctlServer)]);
      throw e;
    });
    stopExtra.push(() => closeServer(migServer));
  }
  writeFileSync(join(opts.dir, HOST_FILES.pid), `${process.pid}\n`);
  tick();
  return { host, stopped, stop };
}

/** Listens on the control socket; one that another host answers on is refused, a stale one replaced. */
function listen(server: Server, path: string): Promise<void> {
  return listenUnix(server, path);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
