// The guest's per-ABI event-channel code (Linux's struct evtchn_ops, events_internal.h): the
// 2-level and FIFO backends each provide the table over their shared pages; the kernel picks one
// at boot (xen_evtchn_fifo_init, else xen_evtchn_2l_init) and the IRQ layer above uses only it.

import type { GuestCpu } from "../abi/cpu.ts";

/** Loop state of one upcall (Linux's struct evtchn_loop_ctrl). */
export interface EvtchnLoopCtrl {
  timeout: number;
  count: number;
  deferEoi: boolean;
}

export interface EvtchnOps {
  readonly name: "2-level" | "FIFO";
  /** max_channels: ports this ABI can address. */
  maxChannels(): number;
  /** nr_channels: ports usable now (FIFO: those the event array covers so far). */
  nrChannels(): number;
  /** setup: called before a new port is used (FIFO grows its event array here). 0 or -errno. */
  setup(cpu: GuestCpu, port: number): number;
  /** remove: `port`, being closed, is no longer routed to `onCpu`. */
  remove(port: number, onCpu: number): void;
  /** bind_to_cpu: routes `port`'s events to `tcpu` in the guest's own bookkeeping. */
  bindToCpu(port: number, tcpu: number, oldCpu: number): void;
  clearPending(port: number): void;
  setPending(port: number): void;
  isPending(port: number): boolean;
  isMasked(port: number): boolean;
  /** Sets the mask; returns whether it was already set. */
  testAndSetMask(port: number): boolean;
  mask(port: number): void;
  unmask(cpu: GuestCpu, port: number): void;
  /** handle_events: scans for pending events on `cpu` and calls `handle(port)` for each. */
  handleEvents(cpu: GuestCpu, ctrl: EvtchnLoopCtrl, handle: (port: number) => void): void;
  /**
   * resume: after a restore, when Xen knows nothing of the guest's event channels. FIFO
   * registers each online CPU's control block again (an offline CPU's is freed) and starts the
   * event array empty, for setup to expand again with the pages it had; 2-level forgets which
   * ports each online CPU handles, as every binding is made again. `cpu` makes the hypercalls.
   * Returns 0 or -errno (Linux BUG()s).
   */
  resume(cpu: GuestCpu, cpuOnline: (c: number) => boolean): number;
  /**
   * percpu_init: CPU `forCpu`'s per-CPU state, made from `cpu` before `forCpu` comes up (FIFO:
   * its control block, evtchn_fifo_alloc_control_block). Does nothing if it exists. 0 or -errno.
   */
  initCpu(cpu: GuestCpu, forCpu: number): number;
  /** The words of shared_info, mapped again after a restore (2-level keeps its bitmaps there). */
  attachSharedInfo?(words: Uint32Array): void;
}
