// The guest's FIFO backend (Linux events_fifo.c): a control block per CPU, event array pages
// added on demand with EVTCHNOP_expand_array, and queue consumption by priority. Over a resume
// the pages are kept: the control blocks are registered again and the array re-expanded.

import type { GuestCpu } from "../abi/cpu.ts";
import { XEN_ERRNO as E, EVTCHN_FIFO as F, XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { EvtchnLoopCtrl, EvtchnOps } from "./evtchn_backend.ts";
import type { Hypercalls } from "./hypercalls.ts";
import { KstateError, type KstateEnv, registerKernelClass } from "./kstate.ts";

const PENDING = 1 << F.PENDING;
const MASKED = 1 << F.MASKED;
const LINKED = 1 << F.LINKED;
const LINK_MASK = F.LINK_MASK;

/** A mapped guest page and its gfn (mfn). */
export interface GuestPage {
  words: Uint32Array;
  gfn: number;
  /** The kernel address it is mapped at: what a restore derives words and gfn from again. */
  va?: number | undefined;
}

/** A page the backend keeps: the address is state; the view and the frame are the machine's. */
class FifoPage implements GuestPage {
  constructor(
    readonly va: number | undefined,
    public gfn: number,
    public words: Uint32Array,
  ) {}

  static of(p: GuestPage): FifoPage {
    return new FifoPage(p.va, p.gfn, p.words);
  }

  /** The restored domain has other frames: the view and the gfn from the address again. */
  kstateRevive(env: KstateEnv): void {
    if (this.va === undefined) throw new KstateError("kstate: a FIFO page without its address (PageSource.allocZeroedPage must give va)");
    const k = env.kernel;
    this.words = env.cpu.mapPageWords(this.va);
    this.gfn = k.pfnToMfn(env.cpu, (this.va - k.base) / XEN_PAGE_SIZE);
  }
}

/** The guest pages the backend needs: allocated zeroed and mapped (get_zeroed_page), and freed. */
export interface PageSource {
  allocZeroedPage(cpu: GuestCpu): GuestPage | undefined;
  freePage(gfn: number): void;
}

export class EventsFifo implements EvtchnOps {
  readonly name = "FIFO" as const;
  /** Every event array page allocated (Linux's event_array[]), kept over a resume for reuse. */
  private readonly arrayPages: FifoPage[] = [];
  /** The words of those Xen has now (event_array_pages of them), by port >> 10: views, made again from arrayPages after a restore. */
  private pages: Uint32Array[] = [];
  /** How many of arrayPages Xen has now (pages.length, as state). */
  private expanded = 0;
  /** Per-CPU control blocks (cpu_control_block), kept over a resume. */
  private readonly controlBlocks: (FifoPage | undefined)[];
  /** Per-CPU local copies of the queue heads (Linux's cpu_queue). */
  private readonly heads: Uint32Array[];

  constructor(
    nrCpus: number,
    private readonly hc: Hypercalls,
    private readonly pagesFrom: PageSource,
    /** False only when the "unmask-pending" fix is switched off, to show the lost edge. */
    private readonly linkOnUnmask = true,
  ) {
    this.controlBlocks = new Array(nrCpus);
    this.heads = Array.from({ length: nrCpus }, () => new Uint32Array(F.MAX_QUEUES));
  }

  /** After a restore (the pages have their views again, being revived first): the array's views. */
  kstateRevive(): void {
    this.pages = this.arrayPages.slice(0, this.expanded).map((p) => p.words);
  }

  maxChannels(): number {
    return F.NR_CHANNELS;
  }

  nrChannels(): number {
    return this.pages.length * F.EVENT_WORDS_PER_PAGE;
  }

  /**
   * percpu_init (evtchn_fifo_alloc_control_block): a control block for `forCpu`, unless it has
   * one. The boot CPU's is the first init_control, which switches the domain to FIFO (or fails,
   * and the kernel uses 2-level).
   */
  initCpu(cpu: GuestCpu, forCpu: number): number {
    if (this.controlBlocks[forCpu]) return 0;
    const got = this.pagesFrom.allocZeroedPage(cpu);
    if (!got) return -E.ENOMEM;
    const page = FifoPage.of(got);
    const rc = this.initControlBlock(cpu, forCpu, page);
    if (rc < 0) return rc;
    this.controlBlocks[forCpu] = page;
    return 0;
  }

  /** init_control_block: a cleared block and local heads, registered with EVTCHNOP_init_control. */
  private initControlBlock(cpu: GuestCpu, forCpu: number, page: GuestPage): number {
    page.words.fill(0);
    this.heads[forCpu]!.fill(0);
    return this.hc.initControl(cpu, page.gfn, 0, forCpu);
  }

  /**
   * evtchn_fifo_resume: registers each online CPU's control block again (an offline CPU's is
   * freed), and empties the event array: setup expands it again, with the pages it had.
   */
  resume(cpu: GuestCpu, cpuOnline: (c: number) => boolean): number {
    for (let c = 0; c < this.controlBlocks.length; c++) {
      const cb = this.controlBlocks[c];
      if (!cb) continue;
      if (!cpuOnline(c)) {
        this.pagesFrom.freePage(cb.gfn);
        this.controlBlocks[c] = undefined;
        continue;
      }
      const rc = this.initControlBlock(cpu, c, cb);
      if (rc < 0) return rc;
    }
    this.pages.length = 0;
    this.expanded = 0;
    return 0;
  }

  setup(cpu: GuestCpu, port: number): number {
    if (port >= F.NR_CHANNELS) return -E.EINVAL;
    while (port >= this.pages.length * F.EVENT_WORDS_PER_PAGE) {
      const n = this.pages.length;
      // After a resume the page is already there.
      const got = this.arrayPages[n] ?? this.pagesFrom.allocZeroedPage(cpu);
      if (!got) return -E.ENOMEM;
      const page = got instanceof FifoPage ? got : FifoPage.of(got);
      // Mask every event in the page before Xen can see it.
      page.words.fill(MASKED);
      const rc = this.hc.expandArray(cpu, page.gfn);
      if (rc < 0) return rc;
      this.arrayPages[n] = page;
      this.pages.push(page.words);
      this.expanded = this.pages.length;
    }
    return 0;
  }

  remove(): void {
    // Only 2-level routes ports to CPUs in the guest.
  }

  bindToCpu(): void {
    // FIFO queues belong to the vCPU Xen notifies; there is no guest-side routing.
  }

  private word(port: number): { page: Uint32Array; i: number } | undefined {
    const page = this.pages[port >>> 10];
    return page ? { page, i: port & 1023 } : undefined;
  }

  clearPending(port: number): void {
    const page = this.pages[port >>> 10];
    if (page) page[port & 1023]! &= ~PENDING;
  }

  setPending(port: number): void {
    const page = this.pages[port >>> 10];
    if (page) page[port & 1023]! |= PENDING;
  }

  isPending(port: number): boolean {
    const page = this.pages[port >>> 10];
    return page ? (page[port & 1023]! & PENDING) !== 0 : false;
  }

  isMasked(port: number): boolean {
    const page = this.pages[port >>> 10];
    return page ? (page[port & 1023]! & MASKED) !== 0 : true;
  }

  testAndSetMask(port: number): boolean {
    const w = this.word(port);
    if (!w) return true;
    const was = (w.page[w.i]! & MASKED) !== 0;
    w.page[w.i]! |= MASKED;
    return was;
  }

  mask(port: number): void {
    const page = this.pages[port >>> 10];
    if (page) page[port & 1023]! |= MASKED;
  }

  /** Clears MASKED locally unless the event is pending: then Xen must link it (clear_masked_cond). */
  unmask(cpu: GuestCpu, port: number): void {
    const page = this.pages[port >>> 10];
    if (!page) return;
    const i = port & 1023;
    const w = page[i]!;
    if (!(w & MASKED)) return;
    if (w & PENDING && this.linkOnUnmask) {
      this.hc.evtchnUnmask(cpu, port);
      return;
    }
    page[i] = w & ~MASKED;
  }

  handleEvents(cpu: GuestCpu, _ctrl: EvtchnLoopCtrl, handle: (port: number) => void): void {
    const cb = this.controlBlocks[cpu.vcpuId]?.words;
    if (!cb) return;
    let ready = cb[0]!;
    cb[0] = 0;
    while (ready !== 0) {
      const q = 31 - Math.clz32(ready & -ready);
      ready = this.consumeOne(cpu.vcpuId, cb, q, ready, handle);
      ready |= cb[0]!;
      cb[0] = 0;
    }
  }

  /** consume_one_event: takes the head of queue `q`; returns `ready` with q cleared if it emptied. */
  private consumeOne(c: number, cb: Uint32Array, q: number, ready: number, handle: (port: number) => void): number {
    const local = this.heads[c]!;
    let head = local[q]!;
    // Reached the tail last time? Then Xen may have started a new list at HEAD.
    if (head === 0) head = cb[2 + q]!;
    const port = head;
    const page = this.pages[port >>> 10];
    if (!page || port === 0) {
      local[q] = 0;
      return ready & ~(1 << q);
    }
    const i = port & 1023;
    // clear_linked: take LINKED and the link in one go.
    const w = page[i]!;
    page[i] = w & ~(LINKED | LINK_MASK);
    head = w & LINK_MASK;
    if (head === 0) ready &= ~(1 << q);
    const now = page[i]!;
    if (now & PENDING && !(now & MASKED)) handle(port);
    local[q] = head;
    return ready;
  }
}

registerKernelClass("EventsFifo", EventsFifo, { transient: ["pages"] });
registerKernelClass("FifoPage", FifoPage, { transient: ["words"] });
