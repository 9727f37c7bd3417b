// A host in real time: the machine's virtual clock follows the wall clock (times `speed`), the
// xenstored socket serves Xen's own clients, and a control socket takes the xl commands.
//
// Control protocol: one JSON object per line each way. A request is {cmd, ...args}; the reply is
// {ok: true, ...} or {ok: false, error}. `console` instead streams {text} lines until the
// client hangs up or the domain goes.

import { existsSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { errnoName } from "../libxc/errno.ts";
import { parseGuestConfig } from "../libxl/guest_cfg.ts";
import { type BootMachine, Host, HostError, type HostParams } from "../libxl/host.ts";
import { allDomainInfo, hostInfo } from "./host_info.ts";
import { listenXenstored } from "../xenstored/socket.ts";

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

  const handle = (req: Record<string, unknown>, reply: (r: Record<string, unknown>) => void, sock: Socket) => {
    const dom = () => host.resolve(String(req["dom"] ?? ""));
    const waitFor = (check: () => boolean, then: () => void) => {
      if (check()) then();
      else waiters.push({ check, done: then });
    };
    switch (req["cmd"]) {
      case "create": {
        const cfg = parseGuestConfig(String(req["config"] ?? ""), String(req["file"] ?? "config"));
        const hd = host.create(cfg, { paused: req["paused"] === true });
        reply({ ok: true, domid: hd.domid, name: cfg.name, warnings: cfg.warnings });
        return;
      }
      case "list":
        reply({ ok: true, domains: allDomainInfo(host), now: host.now() / 1e9 });
        return;
      case "info": {
        // JSON has no bigint.
        const info = hostInfo(host, hostname());
        reply({ ok: true, info: { ...info, virtStart: info.virtStart.toString() } });
        return;
      }
      case "destroy":
        host.destroy(dom());
        reply({ ok: true });
        return;
      case "shutdown":
      case "reboot": {
        const domid = dom();
        host.requestShutdown(domid, req["cmd"] === "shutdown" ? "poweroff" : "reboot");
        // -w: until the domain is gone (xl waits for its destruction).
        if (req["wait"] === true) waitFor(() => !host.domains.has(domid), () => reply({ ok: true }));
        else reply({ ok: true });
        return;
      }
      case "pause":
        host.pause(dom());
        reply({ ok: true });
        return;
      case "unpause":
        host.unpause(dom());
        reply({ ok: true });
        return;
      case "dmesg": {
        const ring = host.xc.readconsole(req["clear"] === true);
        if (typeof ring === "number") throw new HostError(`readconsole failed (${errnoName(ring)})`);
        reply({ ok: true, lines: ring.map((l) => ({ timeNs: l.time, text: l.text })) });
        return;
      }
      case "debug-keys":
        host.xc.debug_keys(String(req["keys"] ?? ""));
        reply({ ok: true });
        return;
      case "console": {
        const domid = dom();
        const hd = host.domains.get(domid);
        if (!hd) throw new HostError(`domain ${domid} has no console`);
        reply({ ok: true, text: hd.console.text });
        const listener = (text: string) => reply({ text });
        hd.console.listeners.add(listener);
        const gone = () => {
          hd.console.listeners.delete(listener);
        };
        sock.on("close", gone);
        waitFor(
          () => !host.domains.has(domid) || sock.destroyed,
          () => {
            gone();
            sock.end();
          },
        );
        return;
      }
      case "log":
        reply({ ok: true, lines: host.log });
        return;
      case "down":
        reply({ ok: true });
        setImmediate(() => void stop());
        return;
      default:
        reply({ ok: false, error: `unknown command ${JSON.stringify(req["cmd"])}` });
    }
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
