// A domain: its vCPUs, memory (p2m as built), shared_info page, event channels and lifecycle.

import type { GuestImage } from "../abi/cpu.ts";
import { type GuestWidth, type Layout, layoutFor } from "../abi/layout.ts";
import { evtchn2lInit } from "./evtchn_2l.ts";
import { EvtchnTable } from "./evtchn.ts";
import { EvtchnFifo } from "./evtchn_fifo.ts";
import type { EvtchnPortOps } from "./evtchn_ops.ts";
import type { PagingLogDirty } from "./log_dirty.ts";
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
  /** The guest's ABI: 64-bit, or 32-bit PAE after XEN_DOMCTL_set_address_size (switch_compat). */
  layout: Layout;
  readonly vcpus: Vcpu[] = [];
  /** XEN_DOMCTL_max_mem's limit, in pages; populate_physmap fails beyond it. */
  maxPages = 0;
  /** Pfns populate_physmap has given a frame (domain_tot_pages), kept as a count: asked per batch. */
  populatedPfns = 0;
  /** xen_domain_handle_t: the 16-byte UUID the toolstack created the domain with. */
  readonly handle = new Uint8Array(16);
  /** XEN_DOMCTL_settscinfo: mode, guest TSC kHz, incarnation, and the ns offset of elapsed time. */
  tscMode = 0;
  tscKhz = 1_000_000;
  tscIncarnation = 0;
  tscOffsetNs = 0;
  /** d->vm_assist: the VMASST_TYPE_* bits vCPU 0's first context set. */
  vmAssist = 0;
  /** The vCPU count fixed at createdomain (d->max_vcpus); max_vcpus creates them. */
  maxVcpus: number;
  readonly evtchn: EvtchnTable;
  /** The ABI in use (d->evtchn_port_ops), installed by evtchn2lInit or evtchnFifoInitControl. */
  portOps!: EvtchnPortOps;
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
    /** pfn -> mfn of the frames populate_physmap gave the domain (Xen's record, for its audits). */
    public p2m: Uint32Array,
    readonly sharedInfoMfn: number,
    readonly sharedInfoWords: Uint32Array,
    readonly sharedInfoBytes: Uint8Array,
    readonly image: GuestImage,
    private readonly globalVirqOwner: (virq: number) => number,
    /** Log-dirty mode (d->arch.paging.log_dirty), and the pages the kernel writes unseen. */
    readonly logDirty: PagingLogDirty,
  ) {
    this.layout = layoutFor(config.width);
    this.maxVcpus = config.maxVcpus;
    this.evtchn = new EvtchnTable(config.maxEvtchnPort);
    evtchn2lInit(this);
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
    return this.layout.width;
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

  /** The FIFO ABI's state while the domain uses it (d->evtchn_fifo). */
  get fifo(): EvtchnFifo | undefined {
    return this.portOps instanceof EvtchnFifo ? this.portOps : undefined;
  }
}
