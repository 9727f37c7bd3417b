// SMP calls over IPIs (Linux kernel/smp.c on Xen's smp_ops): each CPU has a queue of call
// requests; senders queue one and kick the target with the CALL_FUNCTION_SINGLE IPI.
// Requests are plain data naming a registered function, so they can be saved with the guest.

import type { GuestCpu } from "../abi/cpu.ts";
import { XEN_IPI, type XenEvents } from "./events.ts";
import { registerKernelClass } from "./kstate.ts";

export interface CallRequest {
  fn: string;
  arg: number;
  from: number;
  /** The wait this call counts down (0: the sender does not wait). */
  waitId: number;
}

export type SmpFunction = (cpu: GuestCpu, arg: number, from: number) => void;

export class SmpCalls {
  readonly queues: CallRequest[][];
  /** Functions by name; not state: whoever registered one registers it again after a restore. */
  functions = new Map<string, SmpFunction>();
  ipisSent = 0;
  callsRun = 0;
  /** Calls still to run for each waiting sender (smp_call_function with wait = 1). */
  private readonly waits = new Map<number, number>();
  private nextWaitId = 1;

  constructor(
    nrCpus: number,
    private readonly events: XenEvents,
  ) {
    this.queues = Array.from({ length: nrCpus }, () => []);
  }

  /** After a restore, before any kstateRevive: an empty registry for the functions to come back to. */
  kstateInit(): void {
    this.functions = new Map();
  }

  register(name: string, fn: SmpFunction): void {
    this.functions.set(name, fn);
  }

  /** smp_call_function_single without waiting. */
  callFunctionSingle(cpu: GuestCpu, target: number, fn: string, arg: number): number {
    this.queues[target]!.push({ fn, arg, from: cpu.vcpuId, waitId: 0 });
    return this.sendIpi(cpu, target, XEN_IPI.CALL_FUNCTION_SINGLE);
  }

  /**
   * smp_call_function_mask: queues `fn` on every target and kicks each with CALL_FUNCTION.
   * With `wait`, returns an id that `done` reports on once every target has run it; the
   * caller spins (yielding to Xen) until then. Returns 0 when there is nothing to wait for.
   */
  callFunctionMask(cpu: GuestCpu, targets: readonly number[], fn: string, arg: number, wait: boolean): number {
    if (targets.length === 0) return 0;
    const waitId = wait ? this.nextWaitId++ : 0;
    if (wait) this.waits.set(waitId, targets.length);
    for (const t of targets) {
      this.queues[t]!.push({ fn, arg, from: cpu.vcpuId, waitId });
      this.sendIpi(cpu, t, XEN_IPI.CALL_FUNCTION);
    }
    return waitId;
  }

  done(waitId: number): boolean {
    return !this.waits.has(waitId);
  }

  sendIpi(cpu: GuestCpu, target: number, vector: number): number {
    this.ipisSent++;
    return this.events.sendIpi(cpu, target, vector);
  }

  /** xen_send_IPI_mask. */
  sendIpiMask(cpu: GuestCpu, targets: readonly number[], vector: number): void {
    for (const t of targets) this.sendIpi(cpu, t, vector);
  }

  /** xen_send_IPI_allbutself. */
  sendIpiAllButSelf(cpu: GuestCpu, online: readonly boolean[], vector: number): void {
    for (let t = 0; t < online.length; t++) if (t !== cpu.vcpuId && online[t]) this.sendIpi(cpu, t, vector);
  }

  /** The CALL_FUNCTION(_SINGLE) IPI handler: runs what is queued for this CPU. */
  runQueue(cpu: GuestCpu): void {
    const q = this.queues[cpu.vcpuId]!;
    while (q.length > 0) {
      const req = q.shift()!;
      this.callsRun++;
      this.functions.get(req.fn)?.(cpu, req.arg, req.from);
      if (req.waitId !== 0) {
        const left = (this.waits.get(req.waitId) ?? 1) - 1;
        if (left === 0) this.waits.delete(req.waitId);
        else this.waits.set(req.waitId, left);
      }
    }
  }
}

registerKernelClass("SmpCalls", SmpCalls, { transient: ["functions"] });
