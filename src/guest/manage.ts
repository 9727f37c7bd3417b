// Shutdown requests from the toolstack (Linux drivers/xen/manage.c): the guest advertises what it
// handles under control/feature-*, watches control/shutdown, and on a change reads the request in
// a transaction, clears what it recognises, commits (again on EAGAIN) and then acts.

import type { GuestCpu } from "../abi/cpu.ts";
import { SHUTDOWN } from "../abi/xen.ts";
import type { Hypercalls } from "./hypercalls.ts";

/** What the shutdown and sysrq handlers need of the kernel. */
export interface ManageKernel {
  readonly hc: Hypercalls;
  printk(cpu: GuestCpu, text: string): void;
  panic(cpu: GuestCpu, why: string): void;
  /** do_suspend (suspend.ts). */
  requestSuspend(cpu: GuestCpu): void;
}
import { registerKernelClass } from "./kstate.ts";
import type { XenBus, XsWatcher } from "./xenbus.ts";

/** The requests this kernel acts on (shutdown_handlers[]). */
const SHUTDOWN_HANDLERS: Readonly<Record<string, number>> = {
  poweroff: SHUTDOWN.poweroff,
  halt: SHUTDOWN.poweroff,
  reboot: SHUTDOWN.reboot,
  suspend: SHUTDOWN.suspend,
};

export class ShutdownWatcher implements XsWatcher {
  /** Requests seen, handled or ignored (for tests and dmesg). */
  readonly seen: string[] = [];
  /** Commits that came back EAGAIN and were retried. */
  retries = 0;

  constructor(
    private readonly xs: XenBus,
    private readonly k: ManageKernel,
  ) {}

  /** The watches name this object, not closures, so that they survive a save. */
  xsWatchEvent(cpu: GuestCpu, _path: string, token: string): void {
    if (token === "shutdown") this.shutdownHandler(cpu);
    else if (token === "sysrq") this.sysrqHandler(cpu);
  }

  /** setup_shutdown_watcher. */
  setup(cpu: GuestCpu): void {
    for (const feature of ["poweroff", "reboot", "suspend"]) {
      this.xs.write(cpu, 0, `control/feature-${feature}`, "1", (c, err) => {
        if (err) this.k.printk(c, `xen: failed to set control/feature-${feature}: ${err}`);
      });
    }
    this.xs.watch(
      cpu,
      "control/shutdown",
      "shutdown",
      this,
      (c, err) => {
        if (err) this.k.printk(c, `xen: failed to set shutdown watcher: ${err}`);
      },
    );
    this.xs.watch(
      cpu,
      "control/sysrq",
      "sysrq",
      this,
      (c, err) => {
        if (err) this.k.printk(c, `xen: failed to set sysrq watcher: ${err}`);
      },
    );
  }

  /** sysrq_handler: a key written to control/sysrq is cleared, then handled as a SysRq key. */
  private sysrqHandler(cpu: GuestCpu): void {
    this.xs.transactionStart(cpu, (c, err, tx) => {
      if (err) return;
      this.xs.read(c, tx, "control/sysrq", (c2, rerr, value) => {
        const key = rerr ? "" : value.charAt(0);
        const end = (c3: GuestCpu) =>
          this.xs.transactionEnd(c3, tx, false, (c4, eerr) => {
            if (eerr === "EAGAIN") this.sysrqHandler(c4);
            else if (key !== "") this.sysrq(c4, key);
          });
        if (key !== "") this.xs.write(c2, tx, "control/sysrq", "", (c3) => end(c3));
        else end(c2);
      });
    });
  }

  /** handle_sysrq, for the keys this kernel has: 'c' crashes it, as sysrq-trigger does. */
  private sysrq(cpu: GuestCpu, key: string): void {
    this.k.printk(cpu, `sysrq: ${key === "c" ? "Trigger a crash" : `HELP : crash(c) (key ${JSON.stringify(key)} not handled)`}`);
    if (key === "c") this.k.panic(cpu, "sysrq triggered crash");
  }

  /** shutdown_handler. */
  private shutdownHandler(cpu: GuestCpu): void {
    this.xs.transactionStart(cpu, (c, err, tx) => {
      if (err) return;
      this.xs.read(c, tx, "control/shutdown", (c2, rerr, request) => {
        if (rerr) {
          this.xs.transactionEnd(c2, tx, true, () => {});
          return;
        }
        const reason = SHUTDOWN_HANDLERS[request];
        const end = (c3: GuestCpu) =>
          this.xs.transactionEnd(c3, tx, false, (c4, eerr) => {
            if (eerr === "EAGAIN") {
              this.retries++;
              this.shutdownHandler(c4);
              return;
            }
            this.act(c4, request, reason);
          });
        // Only a request we will carry out is acknowledged.
        if (reason !== undefined) this.xs.write(c2, tx, "control/shutdown", "", (c3) => end(c3));
        else end(c2);
      });
    });
  }

  private act(cpu: GuestCpu, request: string, reason: number | undefined): void {
    if (request === "") return;
    this.seen.push(request);
    if (reason === undefined) {
      this.k.printk(cpu, `xen:manage: Ignoring shutdown request: ${request}`);
      return;
    }
    if (reason === SHUTDOWN.suspend) {
      this.k.requestSuspend(cpu);
      return;
    }
    this.k.printk(cpu, reason === SHUTDOWN.reboot ? "reboot: Restarting system" : "reboot: Power down");
    this.k.hc.shutdown(cpu, reason);
  }
}

registerKernelClass("ShutdownWatcher", ShutdownWatcher);
