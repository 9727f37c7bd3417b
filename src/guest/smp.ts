// SMP calls over IPIs (Linux kernel/smp.c on Xen's smp_ops): each CPU has a queue of call
// requests; senders queue one and kick the target with the CALL_FUNCTION_SINGLE IPI.
// Requests are plain data naming a registered function, so they can be saved with the guest.

import type { GuestCpu } from "../abi/cpu.ts";
import { XEN_IPI, type XenEvents } from "./events.ts";

export interface CallRequest {
  fn: string;
  arg: number;
  from: number;
}

export type SmpFunction = (cpu: GuestCpu, arg: number, from: number) => void;

export class SmpCalls {
  readonly queues: CallRequest[][];
  readonly functions = new Map<string, SmpFunction>();
  ipisSent = 0;
  callsRun = 0;

  constructor(
    nrCpus: number,
    private readonly events: XenEvents,
  ) {
    this.queues = Array.from({ length: nrCpus }, () => []);
  }

  register(name: string, fn: SmpFunction): void {
    this.functions.set(name, fn);
  }

  /** smp_call_function_single without waiting. */
  callFunctionSingle(cpu: GuestCpu, target: number, fn: string, arg: number): number {
    this.queues[target]!.push({ fn, arg, from: cpu.vcpuId });
    return this.sendIpi(cpu, target, XEN_IPI.CALL_FUNCTION_SINGLE);
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
    }
  }
}
