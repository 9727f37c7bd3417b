// The host's side of the xl commands: one handler per command name, run in the host process
// against its Host. The client side (src/cli) formats what comes back as xl prints it.

import type { Socket } from "node:net";
import { hostname } from "node:os";
import { errnoName } from "../libxc/errno.ts";
import { parseGuestConfig } from "../libxl/guest_cfg.ts";
import { type Host, HostError } from "../libxl/host.ts";
import { DOMINF, dominfShutdownCode } from "../../abi/domctl.ts";
import { SAVE_COMMANDS } from "./save_cmds.ts";
import { migrateCommand } from "./migrate.ts";
import { SCHED_COMMANDS } from "./sched_cmds.ts";
import { allDomainInfo, hostInfo, retrievedConfig } from "./host_info.ts";

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
  ...SCHED_COMMANDS,
  ...SAVE_COMMANDS,
  migrate: (r) => migrateCommand(r),
  create(r) {
    const text = String(r.req["config"] ?? "");
    const file = String(r.req["file"] ?? "config");
    // kept with the domain: `list -l` reports what the file set
    const cfg = { ...parseGuestConfig(text, file), source: { file, text } };
    const paused = r.req["paused"] === true;
    // -e: no monitor for this domain
    const hd = r.host.create(cfg, { paused, monitor: r.req["monitor"] !== false });
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

  /**
   * Every domain (libxl_list_domain), dom0's clock, and each domain argument as find_domain
   * resolves it: a name that no domain has is xl's "invalid domain identifier"; an id is taken
   * as it is, so whether that domain exists is for the command to find out. With `long`, the
   * saved configs for `list -l`.
   */
  list(r) {
    const all = allDomainInfo(r.host);
    const args = stringList(r.req["doms"]).map((arg) => {
      try {
        return { arg, domid: r.host.resolve(arg) };
      } catch (e) {
        return { arg, error: (e as Error).message };
      }
    });
    const reply: XlReply = { ok: true, domains: all, now: r.host.epochSec(), args, pace: r.host.pace ?? null };
    if (r.req["long"] === true) {
      const ids = args.length > 0 ? args.flatMap((a) => (a.domid === undefined ? [] : [a.domid])) : all.map((d) => d.domid);
      reply["configs"] = ids.flatMap((domid) => {
        const config = retrievedConfig(r.host, domid);
        return config ? [{ domid, config }] : [];
      });
    }
    r.reply(reply);
  },

  /** xl domid (main_domid): libxl_name_to_domid. */
  domid(r) {
    const name = String(r.req["name"] ?? "");
    const domid = r.host.nameToDomid(name);
    if (domid === undefined) throw new HostError(`Can't get domid of domain name '${name}', maybe this domain does not exist.`);
    r.reply({ ok: true, domid });
  },

  /** xl domname (main_domname): libxl_domid_to_name reads /local/domain/N/name. */
  domname(r) {
    const domid = Number(r.req["domid"]) >>> 0;
    const name = r.host.xs.tryRead(`/local/domain/${domid}/name`);
    if (name === undefined) throw new HostError(`Can't get domain name of domain id '${domid}', maybe this domain does not exist.`);
    r.reply({ ok: true, name });
  },

  /** xl rename (main_rename): find_domain, then libxl_domain_rename from the name it had. */
  rename(r) {
    const dom = String(r.req["dom"] ?? "");
    const domid = requestDomid(r);
    const oldName = r.host.xs.tryRead(`/local/domain/${domid}/name`);
    try {
      r.host.rename(domid, oldName, String(r.req["name"] ?? ""));
    } catch (e) {
      if (!(e instanceof HostError)) throw e;
      throw new HostError(`${libxlError("libxl_domain.c:81", "libxl__domain_rename", domid, e.message)}\nCan't rename domain '${dom}'.`);
    }
    r.reply({ ok: true });
  },

  /** xl vcpu-set (vcpuset in xl_vcpu.c), after the client has parsed the count. */
  "vcpu-set"(r) {
    const domid = requestDomid(r);
    const count = Number(r.req["count"]);
    const info = r.host.tryInfo(domid);
    if (!info) throw new HostError(`Domain ${domid} does not exist.`);
    if (r.req["checkHost"] !== false) {
      const p = r.host.xc.physinfo();
      const hostCpus = typeof p === "number" ? 0 : p.nrCpus;
      if (count > info.nrOnlineVcpus && count > hostCpus) {
        throw new HostError(`You are overcommmitting! You have ${hostCpus} physical CPUs and want ${count} vCPUs! Aborting, use --ignore-host to continue`);
      }
    }
    try {
      r.host.setVcpusOnline(domid, count);
    } catch (e) {
      if (!(e instanceof HostError)) throw e;
      const line = e.message.startsWith("Requested 0") ? "libxl_domain.c:1863" : "libxl_domain.c:1869";
      throw new HostError(`${libxlError(line, "libxl_set_vcpuonline", domid, e.message)}\nlibxl_set_vcpuonline failed domid=${domid} max_vcpus=${count}, rc: -3`);
    }
    r.reply({ ok: true });
  },

  info(r) {
    // JSON has no bigint.
    const info = hostInfo(r.host, hostname());
    r.reply({ ok: true, info: { ...info, virtStart: info.virtStart.toString() } });
  },

  /** xl destroy (destroy_domain in xl_vmcontrol.c): domain 0 only with -f. */
  destroy(r) {
    const domid = requestDomid(r);
    if (domid === 0 && r.req["force"] !== true) {
      throw new HostError("Not destroying domain 0; use -f to force.\nThis can only be done when using a disaggregated hardware domain and toolstack.\n");
    }
    if (domid === 0) {
      // dom0 is the toolstack's own domain here: Xen refuses a domain that destroys itself
      throw new HostError(`${libxlError("libxl_domain.c:1617", "domain_destroy_domid_cb", 0, "xc_domain_destroy failed: Invalid argument")}\ndestroy failed (rc=-3)`);
    }
    if (!r.host.tryInfo(domid)) {
      // libxl__destroy_domid: libxl_domain_info answers ERROR_DOMAIN_NOTFOUND
      throw new HostError(`${libxlError("libxl_domain.c:1183", "libxl__destroy_domid", domid, "Non-existant domain")}\ndestroy failed (rc=-21)`);
    }
    r.host.destroy(domid);
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

  sysrq(r) {
    r.host.sendSysrq(requestDomid(r), String(r.req["key"] ?? ""));
    r.reply({ ok: true });
  },

  "debug-keys"(r) {
    r.host.xc.debug_keys(String(r.req["keys"] ?? ""));
    r.reply({ ok: true });
  },

  /**
   * xl console: what xenconsole does once libxl_console_exec has run it. Domain 0 has no
   * console; `type` serial falls back to the PV console when the domain has no serial/N/tty
   * (a PV domain never has); PV console N > 0 and vuart name nodes that do not exist either.
   */
  console(r) {
    const domid = requestDomid(r);
    const type = String(r.req["type"] ?? "pv");
    const num = Number(r.req["num"] ?? 0);
    if (domid === 0) throw new HostError("Can't specify Domain-0");
    if (type === "vuart" || (type !== "serial" && num !== 0)) {
      throw new HostError("xenconsole: Could not read tty from store: No such file or directory");
    }
    const hd = r.host.domains.get(domid);
    if (!hd) throw new HostError("xenconsole: Could not read tty from store: No such file or directory");
    r.reply({ ok: true, text: hd.console.text, domid });
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

  /** Keyboard input for a domain's console (what xenconsole writes into the pty). */
  "console-input"(r) {
    const domid = requestDomid(r);
    const hd = r.host.domains.get(domid);
    if (!hd) throw new HostError(`domain ${domid} has no console`);
    hd.console.input(Buffer.from(String(r.req["data"] ?? ""), "base64"));
    // no answer: this arrives on a console's stream, which carries only output
  },

  log(r) {
    r.reply({ ok: true, lines: r.host.log });
  },

  down(r) {
    r.reply({ ok: true });
    r.stop();
  },
};

/** How long libxl__domain_pvcontrol waits for the guest to acknowledge (virtual ns). */
const PVCONTROL_TIMEOUT_NS = 60e9;

/**
 * main_shutdown_or_reboot after its lookups (xl_vmcontrol.c), as a stream of xl's stderr lines
 * ({log}) ending with {exit}: for each domain in turn, the verb line, then
 * libxl_domain_shutdown / libxl_domain_reboot, which write the request into control/shutdown and
 * return once the guest has acknowledged it (cleared the node, or the node went with the domain)
 * or fail after 60 s. With `wait`, each domain's death events are watched from its request on
 * (libxl_evenable_domain_death) and, once every request is in, reported as
 * wait_for_domain_deaths does: a shutdown ends the wait for that domain unless `wait` is 2 (-ww).
 */
function shutdownOrReboot(r: XlRequest, what: "poweroff" | "reboot"): void {
  const host = r.host;
  const ids = r.req["domids"] === undefined ? [requestDomid(r)] : stringList(r.req["domids"]).map((d) => Number(d) >>> 0);
  const wait = Number(r.req["wait"] ?? 0);
  const verb = what === "poweroff" ? "shutdown" : "reboot";
  const log = (line: string) => r.reply({ log: line });
  const watched = new Map<number, { reported: boolean; done: boolean }>();
  const events: string[] = [];
  let waiting = false;
  const track = (): boolean => {
    for (const [domid, w] of watched) {
      if (w.done || !domainHasShutDown(host, domid)) continue;
      const st = domainEvent(host, domid);
      if (st.state === "gone") {
        events.push(`Domain ${domid} has been destroyed`);
        w.done = true;
      } else if (st.state === "shutdown" && !w.reported) {
        w.reported = true;
        events.push(`Domain ${domid} has been shut down, reason code ${st.reason}`);
        if (wait === 1) w.done = true;
        else events.push(`Domain ${domid} continue waiting for death`);
      }
    }
    // libxl queues the events until xl waits for them
    if (waiting) for (const e of events.splice(0)) log(e);
    return [...watched.values()].every((w) => w.done);
  };
  const finish = (code: number) => {
    host.releaseWaiters.delete(track);
    r.reply({ exit: code });
    r.sock.end();
  };
  if (wait > 0) host.releaseWaiters.add(track);
  r.reply({ ok: true });
  let next = 0;
  const step = (): void => {
    if (next === ids.length) {
      if (wait === 0) {
        finish(0);
        return;
      }
      log(`Waiting for ${ids.length} domains`);
      waiting = true;
      r.waitFor(
        () => track() || r.sock.destroyed,
        () => finish(0),
      );
      return;
    }
    const domid = ids[next++]!;
    log(`${what === "poweroff" ? "Shutting down" : "Rebooting"} domain ${domid}`);
    if (!host.tryInfo(domid)) {
      // libxl__domain_type cannot get the domain's info: ERROR_FAIL
      log(libxlError("libxl_dom.c:37", "libxl__domain_type", 0, `unable to get domain type for domid=${domid}`));
      log(`${verb} failed (rc=-3)`);
      finish(1);
      return;
    }
    host.requestShutdown(domid, what);
    if (wait > 0) watched.set(domid, { reported: false, done: false });
    const path = `/local/domain/${domid}/control/shutdown`;
    const deadline = host.now() + PVCONTROL_TIMEOUT_NS;
    // pvcontrol_acked: the node empty or gone
    const acked = () => {
      const v = host.xs.tryRead(path);
      return v === undefined || v === "";
    };
    r.waitFor(
      () => acked() || host.now() >= deadline || r.sock.destroyed,
      () => {
        if (acked()) step();
        else {
          log(libxlError("libxl_domain.c:854", "pvcontrol_cb", 0, "guest didn't acknowledge control request: -9"));
          log(`${verb} failed (rc=-9)`);
          finish(1);
        }
      },
    );
  };
  step();
}

/** A domain as libxl's domain-death evgen sees it: gone (or dying), shut down with a reason, or running. */
export function domainEvent(host: Host, domid: number): { state: "gone" } | { state: "shutdown"; reason: number } | { state: "running" } {
  const info = host.tryInfo(domid);
  if (!info || info.flags & DOMINF.dying) return { state: "gone" };
  if (info.flags & DOMINF.shutdown) return { state: "shutdown", reason: dominfShutdownCode(info.flags) };
  return { state: "running" };
}

/** What `shutdown -w` waits for: the domain has shut down (any reason) or is gone. */
export function domainHasShutDown(host: Host, domid: number): boolean {
  return domainEvent(host, domid).state !== "running";
}

/** A request field that should be a list of strings (absent: none). */
function stringList(v: unknown): string[] {
  return Array.isArray(v) ? v.map((x) => String(x)) : [];
}

/**
 * One line as libxl logs an error through xl's logger: "libxl: error: FILE:LINE:FUNC: " then
 * "Domain N:" for a guest domain, then the message (libxl__logv and xtl's stdio stream).
 */
export function libxlError(fileLine: string, func: string, domid: number, msg: string): string {
  const domain = domid > 0 && domid < 0x7ff0 ? `Domain ${domid}:` : "";
  return `libxl: error: ${fileLine}:${func}: ${domain}${msg}`;
}
