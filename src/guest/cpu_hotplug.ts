// vCPU hotplug driven by the toolstack (Linux drivers/xen/cpu_hotplug.c): `xl vcpu-set` writes
// cpu/N/availability ("online" or "offline") under the domain's xenstore home; the kernel
// watches "cpu" and brings each vCPU whose node changed up or down. At setup every possible
// vCPU whose node says "offline" is taken down (xl's `vcpus` below `maxvcpus`).

import type { GuestCpu } from "../abi/cpu.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";
import type { XenBus, XsWatcher } from "./xenbus.ts";

/** What the watcher asks of the kernel: the CPUs it has, and bringing one up or down. */
export interface HotplugKernel {
  readonly nrCpus: number;
  enableHotplugCpu(cpu: GuestCpu, c: number): void;
  disableHotplugCpu(cpu: GuestCpu, c: number): void;
}

export class CpuHotplug implements XsWatcher {
  /** Requests seen, as "N:state" (for tests and dmesg). */
  readonly seen: string[] = [];

  constructor(
    private readonly xs: XenBus,
    private readonly k: HotplugKernel,
    /** printk (a closure: derived again after a restore). */
    private log: (cpu: GuestCpu, text: string) => void,
  ) {}

  kstateRevive(env: KstateEnv): void {
    this.log = (c, t) => env.kernel.printk(c, t);
  }

  /** The watch on "cpu" names this object, not a closure, so that it survives a save. */
  xsWatchEvent(cpu: GuestCpu, path: string): void {
    this.handleEvent(cpu, path);
  }

  /** setup_cpu_watcher: the watch on "cpu", then every possible vCPU marked offline goes. */
  setup(cpu: GuestCpu): void {
    this.xs.watch(
      cpu,
      "cpu",
      "cpu",
      this,
      (c, err) => {
        if (err) this.log(c, `xen: failed to set cpu hotplug watcher: ${err}`);
      },
    );
    for (let n = 0; n < this.k.nrCpus; n++) {
      this.vcpuOnline(cpu, n, (c, state) => {
        if (state === 0) this.k.disableHotplugCpu(c, n);
      });
    }
  }

  /** handle_vcpu_hotplug_event: "cpu/N..." names the vCPU (the watch's own first event names "cpu" alone). */
  private handleEvent(cpu: GuestCpu, path: string): void {
    const m = /^cpu\/(\d+)/.exec(path);
    if (!m) return;
    this.vcpuHotplug(cpu, Number(m[1]));
  }

  /** vcpu_hotplug: a vCPU this domain can have goes to the state its node names. */
  private vcpuHotplug(cpu: GuestCpu, n: number): void {
    if (n >= this.k.nrCpus) return;
    this.vcpuOnline(cpu, n, (c, state) => {
      if (state === 1) this.k.enableHotplugCpu(c, n);
      else if (state === 0) this.k.disableHotplugCpu(c, n);
    });
  }

  /** vcpu_online: 1 for "online", 0 for "offline", -1 (and a message) for anything else. */
  private vcpuOnline(cpu: GuestCpu, n: number, done: (cpu: GuestCpu, state: number) => void): void {
    this.xs.read(cpu, 0, `cpu/${n}/availability`, (c, err, value) => {
      if (err) {
        this.log(c, "xen_cpu: Unable to read cpu state");
        done(c, -1);
        return;
      }
      this.seen.push(`${n}:${value}`);
      if (value === "online") done(c, 1);
      else if (value === "offline") done(c, 0);
      else {
        this.log(c, `XENBUS: unknown state(${value}) on CPU${n}`);
        done(c, -1);
      }
    });
  }
}

registerKernelClass("CpuHotplug", CpuHotplug, { transient: ["log"] });
