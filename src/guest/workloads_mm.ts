// The MM workloads the scenarios name:
//
//   forkexec=N     N processes created and destroyed across all vCPUs: fork (copy-on-write),
//                  exec, touch and check pages, exit; the first one never exits until the run stops
//   mmapstress=1   the processes also map, touch and unmap ranges (with TLB shootdowns)
//   ipistorm=1     smp_call_function to random sets of CPUs with wait, and stop_machine

import type { GuestCpu } from "../abi/cpu.ts";
import type { Workload, XenLinux } from "./kernel.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";
import { TaskSched } from "./tasks.ts";

export class ForkExec implements Workload {
  readonly name = "forkexec";
  sched!: TaskSched;
  stopping = false;

  constructor(
    readonly population: number,
    readonly mmapStress: boolean,
  ) {}

  start(k: XenLinux, cpu: GuestCpu): void {
    this.sched = new TaskSched(k);
    const init = this.sched.spawn(cpu, Number.POSITIVE_INFINITY);
    this.sched.enqueue(cpu, init);
  }

  step(k: XenLinux, cpu: GuestCpu): boolean {
    const s = this.sched;
    if (s.schedule(cpu)) return true;
    const t = s.current(cpu);
    if (!t) return false;
    cpu.spend(2_000);
    if (this.stopping || t.actionsLeft-- <= 0) {
      s.exit(cpu, t);
      return true;
    }
    const pages = this.mmapStress ? 64 : 16;
    const r = k.rng.below(100);
    if (r < 30) s.touch(cpu, t, k.rng.below(pages));
    else if (r < 50) {
      const mapped = [...t.mm!.pages.keys()];
      if (mapped.length > 0) s.check(cpu, t, mapped[k.rng.below(mapped.length)]!);
    } else if (r < 62) {
      if (s.live < this.population) s.fork(cpu, t, 10 + k.rng.below(40));
      else s.touch(cpu, t, k.rng.below(pages));
    } else if (r < 66) s.exec(cpu, t);
    else if (r < 82 && this.mmapStress) s.munmap(cpu, t, k.rng.below(pages), 1 + k.rng.below(4));
    else s.yieldTask(cpu, t);
    return true;
  }

  cpuDying(_k: XenLinux, cpu: GuestCpu): boolean {
    return this.sched.migrateFrom(cpu);
  }
}

/**
 * IPIs with wait to random sets of CPUs, and now and then stop_machine: every other CPU parks
 * (spinning, yielding to Xen) until the one that stopped them releases them.
 */
export class IpiStorm implements Workload {
  readonly name = "ipistorm";
  calls = 0;
  stopMachines = 0;
  received = 0;
  private waits: number[] = [];
  private stopOwner = -1;
  private parked: boolean[] = [];
  private parkedCount = 0;
  stopping = false;

  start(k: XenLinux): void {
    this.waits = new Array(k.nrCpus).fill(0);
    this.parked = new Array(k.nrCpus).fill(false);
    this.wire(k);
  }

  /** The IPI functions by name (again after a restore: the registry is not state). */
  private wire(k: XenLinux): void {
    k.smp.register("ipistorm_ping", () => {
      this.received++;
    });
    k.smp.register("stop_machine_park", (cpu) => {
      if (!this.parked[cpu.vcpuId]) {
        this.parked[cpu.vcpuId] = true;
        this.parkedCount++;
      }
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  step(k: XenLinux, cpu: GuestCpu): boolean {
    const c = cpu.vcpuId;
    if (this.parked[c]) {
      if (this.stopOwner >= 0) {
        k.hc.yield(cpu);
        return true;
      }
      this.parked[c] = false;
    }
    if (this.stopOwner === c) {
      if (this.parkedCount < this.onlineOthers(k, c).length) {
        k.hc.yield(cpu);
        return true;
      }
      // The stopped section: nothing else runs anywhere.
      this.stopMachines++;
      this.parkedCount = 0;
      // Every CPU is released now, not when it next runs: a new stop must count it again.
      this.parked.fill(false);
      this.stopOwner = -1;
      return true;
    }
    if (this.waits[c] !== 0) {
      if (!k.smp.done(this.waits[c]!)) {
        k.hc.yield(cpu);
        return true;
      }
      this.waits[c] = 0;
    }
    if (this.stopping) return false;
    const others = this.onlineOthers(k, c);
    if (others.length === 0) return false;
    cpu.spend(1_000);
    if (this.stopOwner < 0 && k.rng.below(50) === 0) {
      this.stopOwner = c;
      k.smp.callFunctionMask(cpu, others, "stop_machine_park", 0, false);
      return true;
    }
    const targets = others.filter(() => k.rng.chance(0.5));
    if (targets.length === 0) targets.push(others[k.rng.below(others.length)]!);
    this.calls++;
    this.waits[c] = k.smp.callFunctionMask(cpu, targets, "ipistorm_ping", 0, true);
    return true;
  }

  /** Not while it is parked, owns a stop_machine, or waits for its calls to run. */
  cpuDying(_k: XenLinux, cpu: GuestCpu): boolean {
    const c = cpu.vcpuId;
    return !this.parked[c] && this.stopOwner !== c && this.waits[c] === 0;
  }

  private onlineOthers(k: XenLinux, c: number): number[] {
    const out: number[] = [];
    for (let t = 0; t < k.nrCpus; t++) if (t !== c && k.percpu[t]!.online) out.push(t);
    return out;
  }
}

registerKernelClass("ForkExec", ForkExec);
registerKernelClass("IpiStorm", IpiStorm);
