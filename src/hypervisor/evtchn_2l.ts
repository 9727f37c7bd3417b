// The 2-level ABI (xen/common/event_2l.c): pending and mask bitmaps in shared_info, one
// selector word per vCPU. Bit p of a bitmap is bit (p & 31) of 32-bit word p >> 5 for both
// widths, since a little-endian 64-bit word is two 32-bit words.

import { XEN_ERRNO as E } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import type { EvtchnPortOps } from "./evtchn_ops.ts";
import type { Vcpu } from "./vcpu.ts";

/** evtchn_2l_init: installs the 2-level ABI on `d`, at creation and when EVTCHNOP_reset leaves FIFO. */
export function evtchn2lInit(d: Domain): void {
  d.portOps = new Evtchn2L(d);
}

export class Evtchn2L implements EvtchnPortOps {
  readonly name = "2-level" as const;
  readonly maxPorts: number;
  private readonly words: Uint32Array;
  private readonly pendingBase: number;
  private readonly maskBase: number;
  private readonly selShift: number;

  constructor(private readonly d: Domain) {
    const L = d.layout;
    this.maxPorts = L.nrEvtchn2L;
    this.words = d.sharedInfoWords;
    this.pendingBase = L.shared_info.evtchn_pending >> 2;
    this.maskBase = L.shared_info.evtchn_mask >> 2;
    this.selShift = L.width === 64 ? 6 : 5;
  }

  // Ports past the 2-level limit (left valid after a FIFO domain is reset) have no bits: Xen's
  // 2-level ops check the limit too, rather than touch whatever follows the bitmaps.
  setPending(v: Vcpu, port: number): void {
    if (port >= this.maxPorts) return;
    const w = this.words;
    const idx = this.pendingBase + (port >>> 5);
    const bit = 1 << (port & 31);
    const old = w[idx]!;
    if (old & bit) return;
    w[idx] = old | bit;
    if (!(w[this.maskBase + (port >>> 5)]! & bit)) {
      const sel = port >>> this.selShift;
      const selIdx = v.pendingSelWord + (sel >>> 5);
      const selBit = 1 << (sel & 31);
      const oldSel = w[selIdx]!;
      if (!(oldSel & selBit)) {
        w[selIdx] = oldSel | selBit;
        v.markEventsPending();
      }
    }
    this.d.checkPollers(port);
  }

  clearPending(port: number): void {
    if (port >= this.maxPorts) return;
    this.words[this.pendingBase + (port >>> 5)]! &= ~(1 << (port & 31));
  }

  unmask(port: number): void {
    if (port >= this.maxPorts) return;
    const w = this.words;
    const bit = 1 << (port & 31);
    const maskIdx = this.maskBase + (port >>> 5);
    const wasMasked = (w[maskIdx]! & bit) !== 0;
    w[maskIdx] = w[maskIdx]! & ~bit;
    if (wasMasked && w[this.pendingBase + (port >>> 5)]! & bit) {
      const v = this.d.vcpus[this.d.evtchn.notifyVcpu[port]!]!;
      const sel = port >>> this.selShift;
      const selIdx = v.pendingSelWord + (sel >>> 5);
      const selBit = 1 << (sel & 31);
      if (!(w[selIdx]! & selBit)) {
        w[selIdx]! |= selBit;
        v.markEventsPending();
      }
    }
  }

  isPending(port: number): boolean {
    if (port >= this.maxPorts) return false;
    return (this.words[this.pendingBase + (port >>> 5)]! & (1 << (port & 31))) !== 0;
  }

  isMasked(port: number): boolean {
    if (port >= this.maxPorts) return true;
    return (this.words[this.maskBase + (port >>> 5)]! & (1 << (port & 31))) !== 0;
  }

  setPriority(): number {
    return -E.ENOSYS; // 2-level channels have no priorities
  }

  describe(): string {
    return "";
  }
}
