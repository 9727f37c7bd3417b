// A domain: its vCPUs, memory (p2m as built), shared_info page, event channels and lifecycle.

import type { GuestImage } from "../abi/cpu.ts";
import { type GuestWidth, type Layout, layoutFor } from "../abi/layout.ts";
import { Evtchn2L } from "./evtchn_2l.ts";
import { EvtchnTable } from "./evtchn.ts";
import { EvtchnFifo } from "./evtchn_fifo.ts";
import type { EvtchnPortOps } from "./evtchn_ops.ts";
import type { Vcpu } from "./vcpu.ts";

export type DomainState = "running" | "shutdown" | "dying";

export interface DomainConfig {
  name: string;
  width: GuestWidth;
  maxVcpus: number;
  nrPages: number;
  /** The highest event-channel port (xl's max_event_channels - 1). */
  maxEvtchnPort: number;
  privileged: boolean;
}

export class Domain {
  readonly layout: Layout;
  readonly vcpus: Vcpu[] = [];
  readonly evtchn: EvtchnTable;
  portOps: EvtchnPortOps;
  fifo: EvtchnFifo | undefined;
  private _state: DomainState = "running";
  private _pauseCount = 0;
  /** Running and unpaused: kept as one flag because the scheduler asks on every step. */
  active = true;
  shutdownCode = -1;
  /** vCPUs blocked in SCHEDOP_poll, checked on every set_pending. */
  readonly pollers = new Set<Vcpu>();

  constructor(
    readonly domid: number,
    readonly config: DomainConfig,
    readonly p2m: Uint32Array,
    readonly sharedInfoMfn: number,
    readonly sharedInfoWords: Uint32Array,
    readonly sharedInfoBytes: Uint8Array,
    readonly image: GuestImage,
    private readonly globalVirqOwner: (virq: number) => number,
  ) {
    this.layout = layoutFor(config.width);
    this.evtchn = new EvtchnTable(config.maxEvtchnPort);
    this.portOps = new Evtchn2L(this);
  }

  get state(): DomainState {
    return this._state;
  }

  set state(s: DomainState) {
    this._state = s;
    this.active = s === "running" && this._pauseCount === 0;
  }

  /** Pause references (domain_pause); vCPUs run only at 0. */
  get pauseCount(): number {
    return this._pauseCount;
  }

  set pauseCount(n: number) {
    this._pauseCount = n;
    this.active = this._state === "running" && n === 0;
  }

  get name(): string {
    return this.config.name;
  }

  get width(): GuestWidth {
    return this.config.width;
  }

  get privileged(): boolean {
    return this.config.privileged;
  }

  globalVirqHandler(virq: number): number {
    return this.globalVirqOwner(virq);
  }

  /** evtchn_check_pollers: wakes vCPUs polling `port`. */
  checkPollers(port: number): void {
    if (this.pollers.size === 0) return;
    for (const v of this.pollers) {
      if (v.pollPorts?.includes(port)) v.wakeFromPoll();
    }
  }

  switchToFifo(): EvtchnFifo {
    const fifo = new EvtchnFifo(this);
    // setup_ports: ports pending under 2-level stay pending under FIFO.
    const old = this.portOps;
    for (let port = 1; port < this.evtchn.validPorts; port++) {
      if (old.isPending(port)) fifo.pendingNoWord[port] = 1;
    }
    this.fifo = fifo;
    this.portOps = fifo;
    return fifo;
  }

  useTwoLevel(): void {
    this.fifo = undefined;
    this.portOps = new Evtchn2L(this);
  }
}
