// The FIFO ABI (xen/common/event_fifo.c): an event word per port in guest-provided array
// pages, 16 priority queues per vCPU linked through the words, and a per-vCPU control block
// with the queue heads and the READY bitmap. Queue tails are Xen-private.
//
// Xen writes the words through its own mapping of the pages and does not mark them for
// log-dirty (the guest keeps them mapped and writes them too, so they go every round anyway);
// the model marks each page it writes, so that every write to guest memory is seen.

import { EVTCHN_FIFO as F, XEN_ERRNO } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import type { EvtchnPortOps } from "./evtchn_ops.ts";
import type { Vcpu } from "./vcpu.ts";

const PENDING = 1 << F.PENDING;
const MASKED = 1 << F.MASKED;
const LINKED = 1 << F.LINKED;
const LINK_MASK = F.LINK_MASK;

export interface FifoControlBlock {
  readonly mfn: number;
  readonly words: Uint32Array;
  /** Index of `ready` in `words`; head[q] is at readyIdx + 2 + q. */
  readonly readyIdx: number;
  /** Xen-private queue tails, by priority. */
  readonly tail: Uint32Array;
}

/**
 * evtchn_fifo_init_control once the hypercall's arguments are checked: the domain's first control
 * block installs the FIFO ABI on it, then the block is mapped for `v`.
 */
export function evtchnFifoInitControl(d: Domain, v: Vcpu, mfn: number, words: Uint32Array, offset: number): number {
  const fifo = d.fifo ?? evtchnFifoInstall(d);
  return fifo.initControl(v, mfn, words, offset);
}

/**
 * The switch to FIFO (setup_event_array, setup_ports, then d->evtchn_port_ops): an empty event
 * array, and every port pending under 2-level stays pending under FIFO.
 */
function evtchnFifoInstall(d: Domain): EvtchnFifo {
  const fifo = new EvtchnFifo(d);
  const old = d.portOps;
  for (let port = 1; port < d.evtchn.validPorts; port++) {
    if (old.isPending(port)) fifo.pendingNoWord[port] = 1;
  }
  d.portOps = fifo;
  return fifo;
}

export class EvtchnFifo implements EvtchnPortOps {
  readonly name = "FIFO" as const;
  readonly maxPorts = F.NR_CHANNELS;
  readonly arrayPages: Uint32Array[] = [];
  readonly arrayMfns: number[] = [];
  readonly controlBlocks: (FifoControlBlock | undefined)[];
  /** Pending state of ports whose event word has no array page yet (Xen 917c1230). */
  readonly pendingNoWord: Uint8Array;
  /** The queue a port was last linked on (Xen's last_vcpu_id / last_priority). */
  private readonly lastVcpu: Uint16Array;
  private readonly lastPriority: Uint8Array;

  constructor(private readonly d: Domain) {
    this.controlBlocks = new Array(d.vcpus.length);
    const n = d.evtchn.capacity;
    this.pendingNoWord = new Uint8Array(n);
    this.lastVcpu = new Uint16Array(n);
    this.lastPriority = new Uint8Array(n).fill(F.PRIORITY_DEFAULT);
  }

  get nrEventWords(): number {
    return this.arrayPages.length * F.EVENT_WORDS_PER_PAGE;
  }

  /** EVTCHNOP_init_control for one vCPU; `words` views the guest frame holding the block. */
  initControl(v: Vcpu, mfn: number, words: Uint32Array, offset: number): number {
    if (this.controlBlocks[v.id]) return -XEN_ERRNO.EINVAL;
    // Like Xen, trust the guest to have zeroed the block (Linux does).
    const readyIdx = offset >> 2;
    this.controlBlocks[v.id] = { mfn, words, readyIdx, tail: new Uint32Array(F.MAX_QUEUES) };
    return 0;
  }

  /** EVTCHNOP_expand_array: the next array page. */
  addArrayPage(mfn: number, words: Uint32Array): number {
    if (this.arrayPages.length >= F.MAX_EVENT_ARRAY_PAGES) return -XEN_ERRNO.ENOSPC;
    const first = this.nrEventWords;
    this.arrayPages.push(words);
    this.arrayMfns.push(mfn);
    // Events raised before their word existed are delivered now, not lost.
    const end = Math.min(first + F.EVENT_WORDS_PER_PAGE, this.pendingNoWord.length);
    for (let port = first; port < end; port++) {
      if (this.pendingNoWord[port]) {
        this.pendingNoWord[port] = 0;
        const v = this.d.vcpus[this.d.evtchn.notifyVcpu[port]!];
        if (v) this.setPending(v, port);
      }
    }
    return 0;
  }

  setPending(v: Vcpu, port: number): void {
    const page = this.arrayPages[port >>> 10];
    if (!page) {
      this.pendingNoWord[port] = 1;
      this.d.checkPollers(port);
      return;
    }
    // Xen drops the event (PENDING untouched) for a vCPU without a control block.
    const cb = this.controlBlocks[v.id];
    if (!cb) return;
    const i = port & 1023;
    let w = page[i]! | PENDING;
    page[i] = w;
    const ld = this.d.logDirty;
    if (ld.enabled) ld.markMfn(this.arrayMfns[port >>> 10]!);
    if (!(w & (MASKED | LINKED))) {
      const prio = this.d.evtchn.priority[port]!;
      const oldCb = this.controlBlocks[this.lastVcpu[port]!];
      const oldPrio = this.lastPriority[port]!;
      // If this port was the old queue's tail, that queue is empty now: forget the tail so that
      // linking onto it cannot corrupt the new queue.
      if (oldCb && oldCb.tail[oldPrio] === port) oldCb.tail[oldPrio] = 0;
      this.lastVcpu[port] = v.id;
      this.lastPriority[port] = prio;
      w = page[i]!;
      page[i] = w | LINKED;
      let linked = false;
      const tail = cb.tail[prio]!;
      if (tail !== 0) linked = this.setLink(tail, port);
      if (!linked) cb.words[cb.readyIdx + 2 + prio] = port;
      cb.tail[prio] = port;
      if (!linked) {
        const ready = cb.words[cb.readyIdx]!;
        if (!(ready & (1 << prio))) {
          cb.words[cb.readyIdx] = ready | (1 << prio);
          v.markEventsPending();
        }
        if (ld.enabled) ld.markMfn(cb.mfn);
      }
    }
    this.d.checkPollers(port);
  }

  /** Links `tail` to `port` if `tail` is still linked (the guest has not consumed it). */
  private setLink(tail: number, port: number): boolean {
    const page = this.arrayPages[tail >>> 10];
    if (!page) return false;
    const i = tail & 1023;
    const w = page[i]!;
    if (!(w & LINKED)) return false;
    page[i] = (w & ~LINK_MASK) | port;
    this.d.logDirty.markMfn(this.arrayMfns[tail >>> 10]!);
    return true;
  }

  clearPending(port: number): void {
    this.pendingNoWord[port] = 0;
    const page = this.arrayPages[port >>> 10];
    if (!page) return;
    page[port & 1023]! &= ~PENDING;
    this.d.logDirty.markMfn(this.arrayMfns[port >>> 10]!);
  }

  unmask(port: number): void {
    const page = this.arrayPages[port >>> 10];
    if (!page) return;
    const i = port & 1023;
    page[i]! &= ~MASKED;
    this.d.logDirty.markMfn(this.arrayMfns[port >>> 10]!);
    if (page[i]! & PENDING) {
      const v = this.d.vcpus[this.d.evtchn.notifyVcpu[port]!];
      if (v) this.setPending(v, port);
    }
  }

  isPending(port: number): boolean {
    const page = this.arrayPages[port >>> 10];
    return page ? (page[port & 1023]! & PENDING) !== 0 : this.pendingNoWord[port] === 1;
  }

  /** evtchn_fifo_is_busy: the event is still on a queue. */
  isBusy(port: number): boolean {
    const page = this.arrayPages[port >>> 10];
    return page ? (page[port & 1023]! & LINKED) !== 0 : false;
  }

  isMasked(port: number): boolean {
    const page = this.arrayPages[port >>> 10];
    return page ? (page[port & 1023]! & MASKED) !== 0 : true;
  }

  setPriority(port: number, priority: number): number {
    if (priority > F.PRIORITY_MIN) return -XEN_ERRNO.EINVAL;
    this.d.evtchn.priority[port] = priority;
    return 0;
  }

  describe(port: number): string {
    const page = this.arrayPages[port >>> 10];
    const w = page ? page[port & 1023]! : 0;
    const flags = `${w & LINKED ? "L" : "-"}${w & (1 << F.BUSY) ? "B" : "-"}`;
    return `prio=${this.d.evtchn.priority[port]} ${flags} link=${w & LINK_MASK}`;
  }
}
