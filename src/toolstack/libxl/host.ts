// A host: the hypervisor, dom0 (a XenLinux kernel whose user space runs xenstored, xenconsoled
// and the toolstack) and the domains created on it. This is the toolstack's logic, in virtual
// time and deterministic from the seed; host_server.ts runs it against the wall clock and
// exposes it through sockets.
//
// Domain creation follows libxl: build the domain, write its xenstore area as libxl__domain_make
// and libxl__build_post do, XS_INTRODUCE it to xenstored, attach the console, unpause. Like xl's
// per-domain monitor, the host watches @releaseDomain and applies on_poweroff / on_reboot /
// on_crash when a domain shuts down.

import type { GuestImage } from "../../abi/cpu.ts";
import { DOMINF, decodeGetdomaininfo, dominfShutdownCode, type XenDomctlGetdomaininfo } from "../../abi/domctl.ts";
import { SHUTDOWN } from "../../abi/xen.ts";
import { XENBUS_STATE } from "../../abi/xs_wire.ts";
import { XenLinux } from "../../guest/kernel.ts";
import { workloadsFromCmdline } from "../../guest/workloads.ts";
import { type ForeignMapping, PROT_READ, PROT_WRITE, type Privcmd } from "../../hypervisor/domctl.ts";
import { Rng } from "../../util/rng.ts";
import { Dom0User } from "../dom0_user.ts";
import { type BuiltDomain, buildDomain, type DomainSpec } from "../libxc/builder.ts";
import { errnoName } from "../libxc/errno.ts";
import type { RestoreResult } from "../libxc/sr_restore_x86_pv.ts";
import { ConsoleRing } from "../xenconsoled/xenconsoled.ts";
import { Xenstored, type XsClock, type XsDomainBackend, type XsTransport } from "../xenstored/daemon.ts";
import { XsRingTransport } from "../xenstored/xs_ring.ts";
import { LocalXs, XsCallError } from "../xenstore/local_xs.ts";
import { decodeVcpuGuestContext, encodeVcpuGuestContext } from "../../abi/vcpu_context.ts";
import { type OpenedImage, restoreImage, type TransferProgress } from "./save_restore.ts";
import type { GuestConfig } from "./guest_cfg.ts";

/** What the toolstack has of the machine it runs on: privcmd in dom0, and the clock that drives it. */
export interface Machine {
  /** privcmd opened in dom0: domctl, sysctl and foreign mappings. */
  readonly xc: Privcmd;
  /** Runs the machine until virtual time `until` (ns); returns the steps taken. */
  run(until: number, maxSteps?: number): number;
  /** Virtual time, ns. */
  now(): number;
}

/** Boots Xen with `dom0Kernel` as dom0 (Xen's own dom0 builder) and hands back the machine. */
export type BootMachine = (dom0Kernel: GuestImage, dom0: DomainSpec) => Machine;

export interface HostParams {
  pcpus: number;
  seed: number;
  /** Machine memory. */
  machineMiB: number;
  dom0MemoryMiB: number;
  dom0Vcpus: number;
  /** Xen's scheduler: credit (as Xen hosts run; the default) or the seeded interleaver scenarios use. */
  sched?: "credit" | "interleave";
  /** Hypervisor fixes to build Xen without (src/hypervisor/fixes.ts): to show what each prevents. */
  xenDisabledFixes?: readonly string[];
}

export const DEFAULT_HOST: HostParams = { pcpus: 4, seed: 1, machineMiB: 4096, dom0MemoryMiB: 32, dom0Vcpus: 1 };

export interface HostDomain {
  domid: number;
  cfg: GuestConfig;
  uuid: string;
  /** Virtual time it was created at. */
  createdNs: number;
  kernel: XenLinux;
  built: BuiltDomain;
  console: ConsoleRing;
  /** xenconsoled's mapping of the console page. */
  consoleMap: ForeignMapping;
  /** The monitor has acted on its shutdown. */
  handled: boolean;
  /** Restarts in a row, each after a shutdown soon after its start. */
  fastRestarts: number;
  /** Why its kernel died before it came up, if it did. */
  bootFailure?: string;
  /** xl's monitor watches it (false after `create -e`: its shutdown is left as it is). */
  monitored: boolean;
}

/** How a host run against the wall clock keeps up with it (see host_server.ts). */
export interface HostPace {
  /** Virtual seconds wanted per wall second (`xensim up --speed`). */
  speed: number;
  /** Virtual time advanced over wall time times speed, over the last second or so: 1 keeps up. */
  ratio: number;
  /** How far the machine's time is behind where the wall clock says it should be (ns). */
  behindNs: number;
}

export class HostError extends Error {}

const NS_PER_MS = 1_000_000;
/** xl sleeps this long before it builds a domain again. */
const RESTART_DELAY_NS = 2_000 * NS_PER_MS;
/** A shutdown this soon after the domain started counts towards a restart loop. */
const FAST_CRASH_NS = 10_000 * NS_PER_MS;
/** Restarts in a row, each after a fast shutdown, before the monitor stops restarting. */
const MAX_FAST_RESTARTS = 3;

/** The on_* action the config names for a shutdown reason. */
function actionFor(cfg: GuestConfig, reason: number): string {
  if (reason === SHUTDOWN.poweroff) return cfg.onPoweroff;
  if (reason === SHUTDOWN.reboot) return cfg.onReboot;
  if (reason === SHUTDOWN.crash) return cfg.onCrash;
  return "preserve";
}

export class Host {
  readonly machine: Machine;
  readonly xc: Privcmd;
  readonly xenstored: Xenstored;
  /** The toolstack's own xenstore connection. */
  readonly xs: LocalXs;
  readonly dom0User: Dom0User;
  readonly dom0Kernel: XenLinux;
  readonly domains = new Map<number, HostDomain>();
  /** Set while the host runs against the wall clock. */
  pace: HostPace | undefined = undefined;
  /** What xl commands waiting on domains run on each @releaseDomain (shutdown -w, reboot -w). */
  readonly releaseWaiters = new Set<() => void>();
  /** The epoch second dom0's clock reads at virtual time 0 (see epochSec). */
  wallclockBaseSec = 0;
  /** What xl's monitor would log, for people: shutdowns, actions taken. */
  readonly log: string[] = [];
  private readonly rng: Rng;
  /** xenstored's timers (watch-event timeouts, write rate limits), in virtual time. */
  private readonly timers: { at: number; fn: () => void; id: number }[] = [];
  private nextTimerId = 1;

  constructor(
    readonly params: HostParams,
    boot: BootMachine,
  ) {
    this.rng = new Rng(params.seed ^ 0x5eed);
    this.dom0User = new Dom0User(
      () => this.xenstored.domainsChanged(),
      () => this.afterDom0Events(),
    );
    this.dom0Kernel = new XenLinux(64, () => [this.dom0User]);
    this.machine = boot(this.dom0Kernel, {
      name: "Domain-0",
      memoryMiB: params.dom0MemoryMiB,
      vcpus: params.dom0Vcpus,
      width: 64,
      maxEventChannels: 4095,
      cmdline: `xensim.seed=${params.seed >>> 0}`,
      privileged: true,
    });
    this.xc = this.machine.xc;
    this.xenstored = new Xenstored({ backend: this.backend(), clock: this.clock(), log: (line) => this.note(`xenstored: ${line}`) });
    this.xs = new LocalXs(this.xenstored);
    // xen-init-dom0: dom0's own entries.
    this.xs.write("/local/domain/0/name", "Domain-0");
    this.xs.write("/local/domain/0/domid", "0");
    // xl processes waiting on domains (shutdown -w) see the event before the monitor acts on it
    this.xs.watch("@releaseDomain", "xl-waiters", () => {
      for (const w of [...this.releaseWaiters]) w();
    });
    this.xs.watch("@releaseDomain", "xl-monitor", () => this.onReleaseDomain());
  }

  /** Runs until dom0's user space is up (its VIRQ_DOM_EXC bound). */
  boot(): void {
    const limit = this.now() + 1000 * NS_PER_MS;
    while (!this.dom0User.ready && this.now() < limit) this.machine.run(this.now() + NS_PER_MS);
    if (!this.dom0User.ready) throw new HostError("dom0 did not come up");
  }

  now(): number {
    return this.machine.now();
  }

  /** Runs the machine until virtual time `until` (ns). */
  run(until: number, maxSteps = Number.POSITIVE_INFINITY): number {
    const steps = this.machine.run(until, maxSteps);
    this.fireTimers();
    this.xs.drainWatches();
    return steps;
  }

  private clock(): XsClock {
    return {
      now: () => this.now() / NS_PER_MS,
      setTimeout: (fn, ms) => {
        const t = { at: this.now() + ms * NS_PER_MS, fn, id: this.nextTimerId++ };
        this.timers.push(t);
        return t.id;
      },
      clearTimeout: (id) => {
        const i = this.timers.findIndex((t) => t.id === id);
        if (i >= 0) this.timers.splice(i, 1);
      },
    };
  }

  private fireTimers(): void {
    const now = this.now();
    for (let i = 0; i < this.timers.length; ) {
      const t = this.timers[i]!;
      if (t.at > now) {
        i++;
        continue;
      }
      this.timers.splice(i, 1);
      t.fn();
      i = 0;
    }
  }

  // ---- xl create / destroy / shutdown / pause ----

  create(cfg: GuestConfig, opts: { paused?: boolean; fastRestarts?: number; monitor?: boolean } = {}): HostDomain {
    // libxl__domain_rename, from libxl__domain_make: names are unique, Domain-0's included
    if (this.nameToDomid(cfg.name) !== undefined) throw new HostError(`Domain with name "${cfg.name}" already exists.`);
    const backend = this.pingpongBackend(cfg);
    const kernel = new XenLinux(cfg.width, workloadsFromCmdline);
    const cmdline = [
      `xen.fifo_events=${cfg.evtchnAbi === "fifo" ? 1 : 0}`,
      `xensim.seed=${(this.params.seed * 31 + this.domains.size + 1) >>> 0}`,
      cfg.cmdline,
    ]
      .filter((s) => s !== "")
      .join(" ");
    const uuid = cfg.uuid ?? this.newUuid();
    let built: BuiltDomain;
    try {
      built = buildDomain(
        this.xc,
        {
          name: cfg.name,
          memoryMiB: cfg.memoryMiB,
          // libxl__build_pre: max_vcpus; those beyond `vcpus` are marked offline in cpu/N/availability
          vcpus: cfg.maxVcpus,
          width: cfg.width,
          maxEventChannels: cfg.maxEventChannels,
          cmdline,
          privileged: false,
          backendDomid: 0,
          handle: uuidBytes(uuid),
        },
        kernel,
      );
    } catch (e) {
      throw new HostError(`cannot build ${cfg.name}: ${(e as Error).message}`);
    }
    const hd = this.admit(cfg, uuid, kernel, built, opts, backend);
    if (!opts.paused) this.unpause(hd.domid);
    return hd;
  }

  /**
   * What create and restore share once the domain has its memory: xenconsoled maps the console,
   * the xenstore area is written, xenstored is told of the domain, dom0 binds the console.
   */
  private admit(
    cfg: GuestConfig,
    uuid: string,
    kernel: XenLinux,
    built: BuiltDomain,
    opts: { fastRestarts?: number; monitor?: boolean },
    pingpongBackend: number | undefined,
  ): HostDomain {
    const domid = built.domid;
    const consoleMap = this.xc.map_foreign_pages(domid, PROT_READ | PROT_WRITE, [built.consoleMfn]);
    if (typeof consoleMap === "number") {
      this.xc.destroydomain(domid);
      throw new HostError(`cannot map the console of ${cfg.name} (${errnoName(consoleMap)})`);
    }
    const console = new ConsoleRing(consoleMap.u8(0));
    const hd: HostDomain = {
      domid,
      cfg,
      uuid,
      createdNs: this.now(),
      kernel,
      built,
      console,
      consoleMap,
      handled: false,
      fastRestarts: opts.fastRestarts ?? 0,
      monitored: opts.monitor !== false,
    };
    this.domains.set(domid, hd);
    try {
      this.writeDomainArea(hd);
      if (pingpongBackend !== undefined) this.addPingpongDevice(domid, pingpongBackend);
      try {
        this.xs.introduce(domid, built.storeMfn, built.storeEvtchn);
      } catch (e) {
        // e.g. a restored image whose store page is one of its pagetables: xenstored cannot map it
        throw new HostError(`xenstored cannot introduce domain ${domid} (store mfn 0x${built.storeMfn.toString(16)}, port ${built.storeEvtchn}): ${(e as Error).message}`);
      }
    } catch (e) {
      // What was made of the domain goes with it: its xenstore area, xenconsoled's mapping, the domain.
      this.destroy(domid);
      throw e;
    }
    this.dom0User.bindInterdomain(
      domid,
      built.consoleEvtchn,
      () => console.onEvent(),
      (k) => {
        if (typeof k === "number") this.note(`xenconsoled: cannot bind the console of domain ${domid}: ${k}`);
        else {
          console.kicker = k;
          console.onEvent();
        }
      },
    );
    return hd;
  }

  // ---- save and restore (xl save / xl restore; the image format is in save_restore.ts) ----

  /** libxl__domain_suspend for a PV guest: the request goes into control/shutdown, as a shutdown's does. */
  requestSuspend(domid: number): void {
    this.info(domid);
    this.xs.write(`/local/domain/${domid}/control/shutdown`, "suspend");
  }

  /** Whether the domain has shut down for a suspend (what libxl waits for before saving). */
  suspended(domid: number): boolean {
    const info = this.tryInfo(domid);
    return info !== undefined && (info.flags & DOMINF.shutdown) !== 0 && dominfShutdownCode(info.flags) === SHUTDOWN.suspend;
  }

  /**
   * libxl_domain_resume with suspend_cancel (xc_domain_resume's cooperative path): vCPU 0's
   * suspend hypercall returns 1, the domain runs on where it was, and xenstored may fire
   * @releaseDomain for it again.
   */
  resumeSuspended(domid: number): void {
    const hd = this.domains.get(domid);
    const raw = this.xc.getvcpucontext(domid, 0);
    if (typeof raw === "number") throw new HostError(`cannot resume domain ${domid}: getvcpucontext failed (${errnoName(raw)})`);
    const width = hd?.built.width ?? 64;
    const ctx = decodeVcpuGuestContext(width, raw);
    ctx.user_regs.rax = 1n;
    this.checked("setvcpucontext", this.xc.setvcpucontext(domid, 0, encodeVcpuGuestContext(width, ctx)));
    this.checked("resumedomain", this.xc.resumedomain(domid));
    this.xs.resume(domid);
    if (hd) hd.handled = false;
  }

  /**
   * xl restore: a domain made for the image (createdomain, max_vcpus, max_mem, the store and
   * console channels), filled by libxc's restore a batch per step, then admitted as a created
   * domain is. Anything that fails destroys what was made.
   */
  *restore(
    cfg: GuestConfig,
    img: OpenedImage,
    opts: { paused?: boolean; monitor?: boolean; onStreamComplete?: (r: RestoreResult) => void } = {},
  ): Generator<TransferProgress, HostDomain, void> {
    if (this.nameToDomid(cfg.name) !== undefined) throw new HostError(`Domain with name "${cfg.name}" already exists.`);
    const backend = this.pingpongBackend(cfg);
    const width = img.pvInfo.guestWidth === 8 ? 64 : 32;
    const kernel = new XenLinux(width, workloadsFromCmdline);
    const domid = this.xc.createdomain(
      { handle: uuidBytes(cfg.uuid), maxVcpus: cfg.maxVcpus, maxEvtchnPort: Math.min(cfg.maxEventChannels, 131071), privileged: false, label: cfg.name },
      kernel,
    );
    if (domid < 0) throw new HostError(`${cfg.name}: createdomain failed (${errnoName(domid)})`);
    let admitted = false;
    let finished = false;
    try {
      this.checked("max_vcpus", this.xc.max_vcpus(domid, cfg.maxVcpus));
      this.checked("max_mem", this.xc.max_mem(domid, cfg.maxmemMiB * 1024));
      const storeEvtchn = this.checked("alloc_unbound (store)", this.xc.evtchn_alloc_unbound(domid, 0));
      const consoleEvtchn = this.checked("alloc_unbound (console)", this.xc.evtchn_alloc_unbound(domid, 0));
      const r = yield* restoreImage(this.xc, domid, img, { storeEvtchn, consoleEvtchn, maxVcpus: cfg.maxVcpus });
      opts.onStreamComplete?.(r);
      const built: BuiltDomain = {
        domid,
        width,
        p2m: r.p2m,
        startInfoPfn: r.startInfoPfn,
        storePfn: r.p2m.indexOf(r.storeMfn),
        consolePfn: r.p2m.indexOf(r.consoleMfn),
        storeMfn: r.storeMfn,
        consoleMfn: r.consoleMfn,
        storeEvtchn,
        consoleEvtchn,
      };
      const hd = this.admit(cfg, cfg.uuid, kernel, built, opts, backend);
      admitted = true;
      if (!opts.paused) this.unpause(domid);
      finished = true;
      return hd;
    } finally {
      // A failure, or a caller that stops stepping the restore: nothing of the domain stays.
      if (!finished) {
        if (admitted) this.destroy(domid);
        else this.xc.destroydomain(domid);
      }
    }
  }

  /** The xenstore area libxl writes for a new domain, with its permissions. */
  private writeDomainArea(hd: HostDomain): void {
    const { domid, cfg, uuid, built } = hd;
    const dom = `/local/domain/${domid}`;
    const vm = `/vm/${uuid}`;
    const ro = ["n0", `r${domid}`];
    const rw = [`n${domid}`];
    const xs = this.xs;
    const tx = xs.transactionStart();
    xs.rm(dom, tx);
    xs.mkdir(dom, tx);
    xs.setPerms(dom, ro, tx);
    xs.mkdir(vm, tx);
    xs.setPerms(vm, ro, tx);
    xs.mkdir(`/libxl/${domid}`, tx);
    xs.setPerms(`/libxl/${domid}`, ["n0"], tx);
    xs.write(`${dom}/vm`, vm, tx);
    xs.write(`${dom}/name`, cfg.name, tx);
    xs.write(`${dom}/domid`, String(domid), tx);
    for (const sub of ["cpu", "memory", "device", "control"]) xs.mkdir(`${dom}/${sub}`, tx);
    // The domain may write only these (the rest of its area is read-only to it).
    const writable = ["control/shutdown", "control/feature-poweroff", "control/feature-reboot", "control/feature-suspend", "control/sysrq"];
    for (const sub of [...writable, "data", "drivers", "feature", "attr", "error", "device/suspend/event-channel"]) {
      xs.mkdir(`${dom}/${sub}`, tx);
      xs.setPerms(`${dom}/${sub}`, rw, tx);
    }
    xs.write(`${dom}/control/platform-feature-multiprocessor-suspend`, "1", tx);
    xs.write(`${dom}/control/platform-feature-xs_reset_watches`, "1", tx);
    xs.write(`${vm}/uuid`, uuid, tx);
    xs.write(`${vm}/name`, cfg.name, tx);
    xs.write(`${vm}/image/ostype`, "linux", tx);
    xs.write(`${vm}/image/kernel`, cfg.kernel, tx);
    xs.write(`${vm}/image/cmdline`, cfg.cmdline, tx);
    // libxl: "%lu.%02d" of gettimeofday (dom0's wall clock)
    const start = this.epochSec();
    xs.write(`${vm}/start_time`, `${Math.floor(start)}.${String(Math.floor((start % 1) * 100)).padStart(2, "0")}`, tx);
    // libxl__build_post.
    xs.write(`${dom}/memory/static-max`, String(cfg.maxmemMiB * 1024), tx);
    xs.write(`${dom}/memory/target`, String(cfg.memoryMiB * 1024), tx);
    xs.write(`${dom}/memory/videoram`, "-1", tx);
    for (let c = 0; c < cfg.maxVcpus; c++) xs.write(`${dom}/cpu/${c}/availability`, c < cfg.vcpus ? "online" : "offline", tx);
    xs.write(`${dom}/store/port`, String(built.storeEvtchn), tx);
    xs.write(`${dom}/store/ring-ref`, String(built.storeMfn), tx);
    xs.write(`${dom}/console/port`, String(built.consoleEvtchn), tx);
    xs.write(`${dom}/console/ring-ref`, String(built.consoleMfn), tx);
    xs.write(`${dom}/console/type`, "xenconsoled", tx);
    xs.write(`${dom}/console/output`, "pty", tx);
    xs.write(`${dom}/console/limit`, "1048576", tx);
    xs.write(`${dom}/console/backend-id`, "0", tx);
    if (!xs.transactionEnd(tx, true)) throw new HostError(`writing the xenstore area of domain ${domid} conflicted; try again`);
  }

  // ---- split devices (libxl_device.c), for the ping-pong of src/guest/pingpong_xs.ts ----

  /**
   * The backend domain `pingpong_with=NAME` names (the kernel takes the last one given), resolved
   * as libxl resolves a device's backend_domname: a domain that does not exist fails the create.
   */
  private pingpongBackend(cfg: GuestConfig): number | undefined {
    let name: string | undefined;
    for (const tok of cfg.cmdline.split(/\s+/)) if (tok.startsWith("pingpong_with=")) name = tok.slice("pingpong_with=".length);
    if (name === undefined) return undefined;
    const domid = this.nameToDomid(name);
    if (domid === undefined) throw new HostError(`pingpong_with=${name}: there is no domain named ${name} to be the backend`);
    return domid;
  }

  /**
   * libxl__device_generic_add for device pingpong/0 of `domid` with its backend in `backendDomid`:
   * the frontend directory in the domain's home (its own, readable by the backend), the backend
   * directory in the backend's home (the backend's, readable by the frontend), both in state
   * Initialising, and libxl's own record of the pair under /libxl, which the guests cannot touch.
   */
  private addPingpongDevice(domid: number, backendDomid: number): void {
    const xs = this.xs;
    const fe = `/local/domain/${domid}/device/pingpong/0`;
    const be = `/local/domain/${backendDomid}/backend/pingpong/${domid}/0`;
    const lx = `/libxl/${domid}/device/pingpong/0`;
    const initialising = String(XENBUS_STATE.Initialising);
    for (let attempt = 0; ; attempt++) {
      const tx = xs.transactionStart();
      xs.rm(fe, tx);
      xs.mkdir(fe, tx);
      xs.setPerms(fe, [`n${domid}`, `r${backendDomid}`], tx);
      xs.write(`${fe}/backend`, be, tx);
      xs.write(`${fe}/backend-id`, String(backendDomid), tx);
      xs.write(`${fe}/state`, initialising, tx);
      xs.rm(be, tx);
      xs.mkdir(be, tx);
      xs.setPerms(be, [`n${backendDomid}`, `r${domid}`], tx);
      xs.write(`${be}/frontend`, fe, tx);
      xs.write(`${be}/frontend-id`, String(domid), tx);
      xs.write(`${be}/online`, "1", tx);
      xs.write(`${be}/state`, initialising, tx);
      xs.write(`${lx}/frontend`, fe, tx);
      xs.write(`${lx}/backend`, be, tx);
      if (xs.transactionEnd(tx, true)) return;
      if (attempt >= 100) throw new HostError(`adding device pingpong/0 to domain ${domid} conflicted; try again`);
    }
  }

  /**
   * libxl__devices_destroy, as far as this toolstack has devices: each backend directory libxl's
   * record names is removed with its empty parents (libxl__xs_path_cleanup), so that the backend
   * sees its frontend go. (With a backend in a driver domain, xl devd there does this part.)
   */
  private removeDevices(domid: number): void {
    const xs = this.xs;
    const base = `/libxl/${domid}/device`;
    const list = (path: string): string[] => {
      try {
        return xs.directory(path);
      } catch (e) {
        if (e instanceof XsCallError) return [];
        throw e;
      }
    };
    for (const kind of list(base)) {
      for (const dev of list(`${base}/${kind}`)) {
        const be = xs.tryRead(`${base}/${kind}/${dev}/backend`);
        if (be === undefined || !/^\/local\/domain\/\d+\/backend\/[^/]+\/\d+\/\d+$/.test(be)) continue;
        xs.rm(be);
        // Up to the backend's home, which stays.
        for (let p = be.slice(0, be.lastIndexOf("/")); /^\/local\/domain\/\d+\/backend/.test(p); p = p.slice(0, p.lastIndexOf("/"))) {
          if (list(p).length > 0) break;
          xs.rm(p);
        }
      }
    }
  }

  /** libxl_domain_destroy: the xenstore area goes, then the domain. */
  destroy(domid: number): void {
    if (domid === 0) throw new HostError("cannot destroy Domain-0");
    this.info(domid);
    const hd = this.domains.get(domid);
    this.removeDevices(domid);
    this.xs.rm(`/local/domain/${domid}`);
    if (hd) this.xs.rm(`/vm/${hd.uuid}`);
    this.xs.rm(`/libxl/${domid}`);
    hd?.console.kicker?.unbind();
    hd?.consoleMap.unmap();
    this.domains.delete(domid);
    this.checked("destroydomain", this.xc.destroydomain(domid));
  }

  /**
   * xl shutdown / reboot: libxl__domain_pvcontrol writes the request into the guest's
   * control/shutdown node (for a PV domain whether or not it advertised control/feature-*;
   * the guest acknowledges by clearing the node).
   */
  requestShutdown(domid: number, what: "poweroff" | "reboot"): void {
    this.info(domid);
    this.xs.write(`/local/domain/${domid}/control/shutdown`, what);
  }

  /** libxl_send_sysrq: the key goes to the guest's control/sysrq, which its kernel watches. */
  sendSysrq(domid: number, key: string): void {
    if (key.length !== 1) throw new HostError("Invalid sysrq.");
    this.info(domid);
    this.xs.write(`/local/domain/${domid}/control/sysrq`, key);
  }

  pause(domid: number): void {
    this.info(domid);
    this.checked("pausedomain", this.xc.pausedomain(domid));
  }

  unpause(domid: number): void {
    this.info(domid);
    this.checked("unpausedomain", this.xc.unpausedomain(domid));
  }

  /** libxl_name_to_domid: the first domain (in domid order) whose xenstore name is `name`. */
  nameToDomid(name: string): number | undefined {
    for (const domid of this.domids()) if (this.xs.tryRead(`/local/domain/${domid}/name`) === name) return domid;
    return undefined;
  }

  /**
   * libxl_domain_rename: the new name must not be another domain's; /local/domain/N/name and
   * /vm/UUID/name change in one transaction, tried again when it conflicts.
   */
  rename(domid: number, oldName: string | undefined, newName: string): void {
    const info = this.info(domid);
    if (newName !== "") {
      const other = this.nameToDomid(newName);
      if (other !== undefined && other !== domid) throw new HostError(`Domain with name "${newName}" already exists.`);
    }
    const h = Array.from(info.handle, (b) => b.toString(16).padStart(2, "0")).join("");
    const uuid = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    for (let attempt = 0; ; attempt++) {
      const tx = this.xs.transactionStart();
      const got = this.xs.tryRead(`/local/domain/${domid}/name`, tx);
      if (oldName !== undefined && got !== oldName) {
        this.xs.transactionEnd(tx, false);
        throw new HostError(`Allegedly named \`${oldName}' is actually named \`${got ?? ""}' - racing ?`);
      }
      this.xs.write(`/local/domain/${domid}/name`, newName, tx);
      this.xs.write(`/vm/${uuid}/name`, newName, tx);
      if (this.xs.transactionEnd(tx, true)) break;
      if (attempt >= 100) throw new HostError(`Failed to commit new name \`${newName}' for domain previously named \`${oldName ?? ""}'`);
    }
    const hd = this.domains.get(domid);
    // a restart builds the domain again under its current name
    if (hd) hd.cfg = { ...hd.cfg, name: newName };
  }

  /**
   * libxl_set_vcpuonline for a PV domain: `count` vCPUs from 0 up marked online in
   * cpu/N/availability, the rest offline, for every vCPU up to the domain's max_vcpu_id, in one
   * transaction; the guest's cpu_hotplug watch does the rest.
   */
  setVcpusOnline(domid: number, count: number): void {
    const info = this.info(domid);
    const max = info.maxVcpuId + 1;
    if (count === 0) throw new HostError("Requested 0 VCPUs!");
    if (count > max) throw new HostError(`Requested ${count} VCPUs, however maxcpus is ${max}!`);
    for (;;) {
      const tx = this.xs.transactionStart();
      for (let i = 0; i < max; i++) this.xs.write(`/local/domain/${domid}/cpu/${i}/availability`, i < count ? "online" : "offline", tx);
      if (this.xs.transactionEnd(tx, true)) return;
    }
  }

  /**
   * dom0's wall clock (seconds since the epoch): `wallclockBaseSec` at virtual time 0, moving
   * with the machine's time. 0 by default, so that runs stay a function of the seed; a host
   * that serves people sets it from the real clock.
   */
  epochSec(): number {
    return this.wallclockBaseSec + this.now() / 1e9;
  }

  /** A domain by id, or by name as xl accepts either (libxl_name_to_domid reads the names in xenstore). */
  resolve(what: string): number {
    if (/^\d+$/.test(what)) return Number(what);
    for (const domid of this.domids()) if (this.xs.tryRead(`/local/domain/${domid}/name`) === what) return domid;
    throw new HostError(`${what} is an invalid domain identifier (rc=-6)`);
  }

  /** The domains Xen has, in domid order (xc_domain_getinfolist). */
  domids(): number[] {
    const list = this.xc.getdomaininfolist(0, 1 << 16);
    if (typeof list === "number") throw new HostError(`getdomaininfolist failed (${errnoName(list)})`);
    return list.map((raw) => decodeGetdomaininfo(raw).domain);
  }

  /** xc_domain_getinfo for exactly `domid`; a domain that does not exist is a HostError. */
  info(domid: number): XenDomctlGetdomaininfo {
    const info = this.tryInfo(domid);
    if (!info) throw new HostError(`domain ${domid} does not exist`);
    return info;
  }

  tryInfo(domid: number): XenDomctlGetdomaininfo | undefined {
    const raw = this.xc.getdomaininfo(domid);
    if (typeof raw === "number") return undefined;
    const info = decodeGetdomaininfo(raw);
    return info.domain === domid ? info : undefined;
  }

  private checked(what: string, rc: number): number {
    if (rc < 0) throw new HostError(`${what} failed (${errnoName(rc)})`);
    return rc;
  }

  // ---- dom0 user space ----

  /** What xenstored asks of the hypervisor through libxenctrl and the evtchn device. */
  private backend(): XsDomainBackend {
    return {
      domainExists: (domid) => this.tryInfo(domid) !== undefined,
      domainState: (domid) => {
        const info = this.tryInfo(domid);
        if (!info) return undefined;
        return { dying: (info.flags & DOMINF.dying) !== 0, shutdown: (info.flags & DOMINF.shutdown) !== 0 };
      },
      introduce: (domid, mfn, port): XsTransport | "EINVAL" => {
        // The foreign mapping fails unless the frame is the domain's.
        const map = this.xc.map_foreign_pages(domid, PROT_READ | PROT_WRITE, [mfn]);
        if (typeof map === "number") return "EINVAL";
        const t = new XsRingTransport(map.u8(0), () => map.unmap());
        this.dom0User.bindInterdomain(
          domid,
          port,
          () => t.onEvent(),
          (k) => {
            if (typeof k === "number") this.note(`xenstored: cannot bind the store channel of domain ${domid}: ${k}`);
            else t.bound(k);
          },
        );
        return t;
      },
    };
  }

  private afterDom0Events(): void {
    this.xs.drainWatches();
  }

  /** xl's monitor: a domain that shut down gets the action its config names. */
  private onReleaseDomain(): void {
    for (const hd of [...this.domains.values()]) {
      try {
        this.monitor(hd);
      } catch (e) {
        // The monitor runs from a watch: whatever fails here must not take the host with it.
        this.note(`Domain ${hd.domid}: handling its shutdown failed: ${(e as Error).message}`);
      }
    }
  }

  private monitor(hd: HostDomain): void {
    const info = this.tryInfo(hd.domid);
    if (!info || (info.flags & DOMINF.shutdown) === 0 || hd.handled || !hd.monitored) return;
    hd.handled = true;
    const reason = dominfShutdownCode(info.flags);
    // xl's monitor leaves a suspended domain to whoever saves it (a cancelled suspend hands it back).
    if (reason === SHUTDOWN.suspend) {
      this.note(`Domain ${hd.domid} has suspended.`);
      return;
    }
    let action = actionFor(hd.cfg, reason);
    this.note(`Domain ${hd.domid} has shut down, reason code ${reason} 0x${reason.toString(16)}`);
    if (reason === SHUTDOWN.crash && !this.hasConnected(hd.domid)) {
      // A kernel that dies before it reaches xenstore would die again: create reports it instead.
      hd.bootFailure = this.crashReason(hd);
      this.note(`Domain ${hd.domid} crashed during boot: ${hd.bootFailure}`);
      if (action !== "preserve") action = "destroy";
    }
    const fast = this.now() - hd.createdNs < FAST_CRASH_NS;
    const streak = fast ? hd.fastRestarts + 1 : 0;
    if (action.endsWith("restart") && streak > MAX_FAST_RESTARTS) {
      this.note(`Domain ${hd.domid} (${hd.cfg.name}) has shut down ${streak} times in a row within ${FAST_CRASH_NS / 1e9} s of starting: not restarting it again; preserving it`);
      action = "preserve";
    }
    this.note(`Action for shutdown reason code ${reason} is ${action}`);
    if (action === "preserve" || action === "soft-reset") return;
    this.note(`Domain ${hd.domid} needs to be cleaned up: destroying the domain`);
    this.destroy(hd.domid);
    if (!action.endsWith("restart")) return;
    // xl waits before it builds the domain again (the sleep(2) in create_domain's restart path).
    this.after(RESTART_DELAY_NS, () => {
      try {
        const again = this.create({ ...hd.cfg, uuid: hd.uuid }, { fastRestarts: streak });
        this.note(`Done. Rebooting now: ${hd.cfg.name} is domain ${again.domid}`);
      } catch (e) {
        this.note(`Restarting ${hd.cfg.name} failed: ${(e as Error).message}`);
      }
    });
  }

  /** Whether a domain's kernel came as far as xenstore (its xenbus writes control/feature-*). */
  hasConnected(domid: number): boolean {
    return this.xs.tryRead(`/local/domain/${domid}/control/feature-poweroff`) === "1";
  }

  /**
   * Where a domain is in its boot: up once its kernel reached xenstore, failed if it crashed (or
   * vanished) before that, with the reason.
   */
  bootOutcome(hd: HostDomain): { state: "booting" | "up" } | { state: "failed"; why: string } {
    const domid = hd.domid;
    if (hd.bootFailure !== undefined) return { state: "failed", why: hd.bootFailure };
    if (!this.domains.has(domid)) return { state: "failed", why: "the domain was destroyed" };
    const info = this.tryInfo(domid);
    if (!info) return { state: "failed", why: "the domain is gone" };
    if (this.hasConnected(domid)) return { state: "up" };
    if (info.flags & DOMINF.shutdown) {
      const code = dominfShutdownCode(info.flags);
      // The monitor may not have looked yet: a crash is explained from the console all the same.
      if (code === SHUTDOWN.crash) return { state: "failed", why: this.crashReason(hd) };
      return { state: "failed", why: `it shut down (reason code ${code}) before it came up` };
    }
    return { state: "booting" };
  }

  /** Why a domain crashed: its kernel's last panic or oops on its console, else Xen's word. */
  private crashReason(hd: HostDomain): string {
    // What the guest put in its ring before it died, even if xenconsoled has not been woken for it yet.
    hd.console.onEvent();
    const lines = hd.console.text.split("\n").reverse();
    const panic = lines.find((l) => /Kernel panic|BUG:|Oops/.test(l));
    if (panic) return panic.replace(/^\[[ \d.]+\] /, "");
    const ring = this.xc.readconsole(false);
    if (typeof ring !== "number") {
      const xen = ring.reverse().find((l) => l.text.startsWith(`Domain ${hd.domid} (`) && l.text.includes("crashed"));
      if (xen) return `(XEN) ${xen.text}`;
    }
    return "it crashed (no message)";
  }

  /** Runs `fn` after `ns` of virtual time, from the host's own timers. */
  private after(ns: number, fn: () => void): void {
    this.timers.push({ at: this.now() + ns, fn, id: this.nextTimerId++ });
  }

  private note(text: string): void {
    this.log.push(`[${(this.now() / 1e9).toFixed(3)}] ${text}`);
    if (this.log.length > 2000) this.log.splice(0, 500);
  }

  private newUuid(): string {
    const b = Array.from({ length: 16 }, () => this.rng.below(256));
    b[6] = (b[6]! & 0x0f) | 0x40;
    b[8] = (b[8]! & 0x3f) | 0x80;
    const h = b.map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
}

/** A UUID's 16 bytes (xen_domain_handle_t), from its text form. */
export function uuidBytes(uuid: string): Uint8Array {
  const hex = uuid.replace(/-/g, "");
  const out = new Uint8Array(16);
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) return out;
  for (let i = 0; i < 16; i++) out[i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
