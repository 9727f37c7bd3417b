// The host's side of the xl commands: one handler per command name, run in the host process
// against its Host. The client side (src/cli) formats what comes back as xl prints it.

import type { Socket } from "node:net";
import { hostname } from "node:os";
import { errnoName } from "../libxc/errno.ts";
import { parseGuestConfig } from "../libxl/guest_cfg.ts";
import { type Host, HostError } from "../libxl/host.ts";
import { allDomainInfo, hostInfo } from "./host_info.ts";

export type XlReply = Record<string, unknown>;

/** How long (virtual) create waits for a new domain's kernel to reach xenstore. */
const BOOT_WAIT_NS = 10e9;

/** What a handler gets: the request, and the means to answer it now or later. */
export interface XlRequest {
  host: Host;
  req: Record<string, unknown>;
  reply(r: XlReply): void;
  /** The client's connection (streams such as `console` end it). */
  sock: Socket;
  /** Runs `then` once `check` holds, checked after each tick of the machine. */
  waitFor(check: () => boolean, then: () => void): void;
  /** Stops the host (after the reply has gone). */
  stop(): void;
}

export type XlHandler = (r: XlRequest) => void;

/** The domain a request names, by name or id. */
export function requestDomid(r: XlRequest): number {
  return r.host.resolve(String(r.req["dom"] ?? ""));
}

export const XL_COMMANDS: Record<string, XlHandler> = {
  create(r) {
    const cfg = parseGuestConfig(String(r.req["config"] ?? ""), String(r.req["file"] ?? "config"));
    const paused = r.req["paused"] === true;
    const hd = r.host.create(cfg, { paused });
    const created = { ok: true, domid: hd.domid, name: cfg.name, warnings: cfg.warnings };
    if (paused) {
      r.reply(created);
      return;
    }
    // Unlike xl, create answers once the kernel is up, so a kernel that dies at boot fails it.
    const deadline = r.host.now() + BOOT_WAIT_NS;
    r.waitFor(
      () => r.host.bootOutcome(hd).state !== "booting" || r.host.now() >= deadline,
      () => {
        const o = r.host.bootOutcome(hd);
        if (o.state === "failed") r.reply({ ok: false, error: `domain ${hd.domid} (${cfg.name}) did not boot: ${o.why}` });
        else if (o.state === "booting") {
          r.reply({ ...created, warnings: [...cfg.warnings, `domain ${hd.domid} has not reached xenstore after ${BOOT_WAIT_NS / 1e9} s; it may still be booting`] });
        } else r.reply(created);
      },
    );
  },

  list(r) {
    r.reply({ ok: true, domains: allDomainInfo(r.host), now: r.host.now() / 1e9 });
  },

  info(r) {
    // JSON has no bigint.
    const info = hostInfo(r.host, hostname());
    r.reply({ ok: true, info: { ...info, virtStart: info.virtStart.toString() } });
  },

  destroy(r) {
    r.host.destroy(requestDomid(r));
    r.reply({ ok: true });
  },

  shutdown(r) {
    shutdownOrReboot(r, "poweroff");
  },

  reboot(r) {
    shutdownOrReboot(r, "reboot");
  },

  pause(r) {
    r.host.pause(requestDomid(r));
    r.reply({ ok: true });
  },

  unpause(r) {
    r.host.unpause(requestDomid(r));
    r.reply({ ok: true });
  },

  dmesg(r) {
    const ring = r.host.xc.readconsole(r.req["clear"] === true);
    if (typeof ring === "number") throw new HostError(`readconsole failed (${errnoName(ring)})`);
    r.reply({ ok: true, lines: ring.map((l) => ({ timeNs: l.time, text: l.text })) });
  },

  "debug-keys"(r) {
    r.host.xc.debug_keys(String(r.req["keys"] ?? ""));
    r.reply({ ok: true });
  },

  console(r) {
    const domid = requestDomid(r);
    const hd = r.host.domains.get(domid);
    if (!hd) throw new HostError(`domain ${domid} has no console`);
    r.reply({ ok: true, text: hd.console.text });
    const listener = (text: string) => r.reply({ text });
    hd.console.listeners.add(listener);
    const gone = () => {
      hd.console.listeners.delete(listener);
    };
    r.sock.on("close", gone);
    r.waitFor(
      () => !r.host.domains.has(domid) || r.sock.destroyed,
      () => {
        gone();
        r.sock.end();
      },
    );
  },

  log(r) {
    r.reply({ ok: true, lines: r.host.log });
  },

  down(r) {
    r.reply({ ok: true });
    r.stop();
  },
};

function shutdownOrReboot(r: XlRequest, what: "poweroff" | "reboot"): void {
  const domid = requestDomid(r);
  r.host.requestShutdown(domid, what);
  // -w: until the domain is gone (xl waits for its destruction).
  if (r.req["wait"] === true) r.waitFor(() => !r.host.domains.has(domid), () => r.reply({ ok: true }));
  else r.reply({ ok: true });
}
