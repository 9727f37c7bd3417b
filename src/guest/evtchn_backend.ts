// The guest's per-ABI event-channel code (Linux's struct evtchn_ops): the 2-level and FIFO
// backends implement it over the shared pages, and the IRQ layer above uses only this.

import type { GuestCpu } from "../abi/cpu.ts";

/** Loop state of one upcall (Linux's struct evtchn_loop_ctrl). */
export interface EvtchnLoopCtrl {
  timeout: number;
  count: number;
  deferEoi: boolean;
}

export interface EvtchnBackend {
  readonly name: "2-level" | "FIFO";
  /** Ports this ABI can address. */
  maxChannels(): number;
  /** Called before a new port is used (FIFO grows its event array here). */
  setup(cpu: GuestCpu, port: number): number;
  /** Routes `port`'s events to `tcpu` in the guest's own bookkeeping. */
  bindToCpu(port: number, tcpu: number, oldCpu: number): void;
  clearPending(port: number): void;
  setPending(port: number): void;
  isPending(port: number): boolean;
  isMasked(port: number): boolean;
  /** Sets the mask; returns whether it was already set. */
  testAndSetMask(port: number): boolean;
  mask(port: number): void;
  unmask(cpu: GuestCpu, port: number): void;
  /** Scans for pending events on `cpu` and calls `handle(port)` for each. */
  handleEvents(cpu: GuestCpu, ctrl: EvtchnLoopCtrl, handle: (port: number) => void): void;
  /** Per-CPU setup when a CPU comes up (FIFO: its control block). */
  initCpu(cpu: GuestCpu): number;
}
