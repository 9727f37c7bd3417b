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
import { listenXenstored } from "../xenstored/socket.ts";
import { XL_COMMANDS, type XlReply } from "./xl_commands.ts";

export interface ServeOptions {
  dir: string;
  /** Virtual seconds per wall second. */
  speed: number;
  params: HostParams;
  /** Boots the machine the toolstack runs on (Xen with dom0). */
  boot: BootMachine;
  log: (line: string) => void;
}

export const HOST_FILES = { xenstored: "xenstored.sock", control: "control.sock", pid: "xensim.pid", log: "host.log" } as const;

/** Wall time one tick may spend running the machine before sockets get their turn. */
const TICK_BUDGET_MS = 20;

export interface RunningHost {
  host: Host;
  /** Resolves once the host has stopped (after `down` or stop()). */
  stopped: Promise<void>;
  stop(): Promise<void>;
}

export async function serveHost(opts: ServeOptions): Promise<RunningHost> {
  const host = new Host(opts.params, opts.boot);
  host.boot();
  const wall0 = performance.now();
  const virt0 = host.now();
  let lagWarned = false;
  let timer: NodeJS.Timeout | undefined;
  const waiters: { check: () => boolean; done: () => void }[] = [];

  const tick = () => {
    const start = performance.now();
    const target = virt0 + (start - wall0) * 1e6 * opts.speed;
    while (host.now() < target && performance.now() - start < TICK_BUDGET_MS) {
      host.run(Math.min(target, host.now() + 1_000_000), 20_000);
    }
    if (host.now() < target - 1e9 * opts.speed && !lagWarned) {
      lagWarned = true;
      opts.log("the machine is running behind the wall clock (the guests' work exceeds this host's speed)");
    }
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i]!.check()) waiters.splice(i, 1)[0]!.done();
    }
    timer = setTimeout(tick, host.now() < target ? 0 : 2);
  };

  const xsPath = join(opts.dir, HOST_FILES.xenstored);
  const ctlPath = join(opts.dir, HOST_FILES.control);
  const xsServer = await listenXenstored(host.xenstored, xsPath);
  let resolveStopped: () => void = () => {};
  const stopped = new Promise<void>((r) => {
    resolveStopped = r;
  });

  const live = new Set<Socket>();
  const track = (server: Server) =>
    server.on("connection", (s: Socket) => {
      live.add(s);
      s.on("close", () => live.delete(s));
    });
  track(xsServer);
  const stop = async () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    for (const s of live) s.destroy();
    await Promise.all([closeServer(xsServer), closeServer(ctlServer)]);
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
  await listen(ctlServer, ctlPath);
  writeFileSync(join(opts.dir, HOST_FILES.pid), `${process.pid}\n`);
  tick();
  return { host, stopped, stop };
}

function listen(server: Server, path: string): Promise<void> {
  if (existsSync(path)) rmSync(path, { force: true });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
