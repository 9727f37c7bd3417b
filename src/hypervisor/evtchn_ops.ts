// The per-ABI half of event channels (Xen's struct evtchn_port_ops): where pending and mask
// state lives (the shared_info bitmaps for 2-level, event words for FIFO) and how an event
// reaches a vCPU.

import type { Vcpu } from "./vcpu.ts";

export interface EvtchnPortOps {
  readonly name: "2-level" | "FIFO";
  /** The ABI's limit on port numbers (exclusive). */
  readonly maxPorts: number;
  setPending(v: Vcpu, port: number): void;
  clearPending(port: number): void;
  unmask(port: number): void;
  isPending(port: number): boolean;
  isMasked(port: number): boolean;
  /** -ENOSYS where the ABI has no priorities. */
  setPriority(port: number, priority: number): number;
  /** Extra columns for the debug-key dump. */
  describe(port: number): string;
}
