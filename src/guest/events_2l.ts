// The guest's 2-level backend (Linux events_2l.c). The scan resumes from a per-CPU (word, bit)
// cursor and scans the starting word twice, so a flood on one port cannot starve the others.
// A 64-bit guest's xen_ulong_t is handled as two 32-bit halves.

import type { GuestCpu } from "../abi/cpu.ts";
import { type Layout, layoutFor } from "../abi/layout.ts";
import type { EvtchnLoopCtrl, EvtchnOps } from "./evtchn_backend.ts";
import type { Hypercalls } from "./hypercalls.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";

/** Lowest set bit at or above `from` in the (lo, hi) pair, or -1. */
function firstBitFrom(lo: number, hi: number, from: number): number {
  if (from < 32) {
    const m = lo & (-1 << from);
    if (m !== 0) return 31 - Math.clz32(m & -m);
    from = 32;
  }
  if (from >= 64) return -1;
  const m = hi & (-1 << (from - 32));
  return m !== 0 ? 63 - Math.clz32(m & -m) : -1;
}

export class Events2L implements EvtchnOps {
  readonly name = "2-level" as const;
  private readonly bpw: 32 | 64;
  private readonly nrPorts: number;
  private readonly pendingBase: number;
  private readonly maskBase: number;
  /** Per-CPU: which ports this CPU handles (Linux's cpu_evtchn_mask). */
  private readonly cpuMask: Uint32Array[];
  private readonly portCpu: Uint16Array;
  private readonly curWord: Uint8Array;
  private readonly curBit: Uint8Array;
  /** Per-CPU index of evtchn_pending_sel in the shared_info words. */
  private readonly selWord: Uint32Array;

  constructor(
    /** shared_info's words: a view, given again by attachSharedInfo after a restore. */
    private words: Uint32Array,
    private layout: Layout,
    nrCpus: number,
    private readonly hc: Hypercalls,
    private timerPorts: () => Uint32Array,
    /** False only when the "unmask-pending" fix is switched off, to show the lost edge. */
    private readonly resendOnUnmask = true,
  ) {
    this.bpw = layout.width;
    this.nrPorts = layout.nrEvtchn2L;
    this.pendingBase = layout.shared_info.evtchn_pending >> 2;
    this.maskBase = layout.shared_info.evtchn_mask >> 2;
    this.cpuMask = Array.from({ length: nrCpus }, () => new Uint32Array(this.nrPorts >> 5));
    this.portCpu = new Uint16Array(this.nrPorts);
    this.curWord = new Uint8Array(nrCpus);
    this.curBit = new Uint8Array(nrCpus);
    this.selWord = Uint32Array.from({ length: nrCpus }, (_, c) => (c * layout.vcpu_info.size + layout.vcpu_info.evtchn_pending_sel) >> 2);
    // All ports start on CPU 0, as in Linux's init_evtchn_cpu_bindings.
    this.cpuMask[0]!.fill(0xffffffff);
  }

  /** After a restore: the layout and the timer ports again; shared_info comes with attachSharedInfo. */
  kstateRevive(env: KstateEnv): void {
    this.layout = layoutFor(this.bpw);
    this.timerPorts = () => env.kernel.events.timerPorts;
  }

  /** shared_info mapped (again, after a restore): the words the bitmaps live in. */
  attachSharedInfo(words: Uint32Array): void {
    this.words = words;
  }

  maxChannels(): number {
    return this.nrPorts;
  }

  nrChannels(): number {
    return this.nrPorts;
  }

  setup(): number {
    return 0;
  }

  initCpu(): number {
    return 0;
  }

  /** evtchn_2l_resume: no port is routed to an online CPU until it is bound again. */
  resume(_cpu: GuestCpu, cpuOnline: (c: number) => boolean): number {
    for (let c = 0; c < this.cpuMask.length; c++) if (cpuOnline(c)) this.cpuMask[c]!.fill(0);
    return 0;
  }

  remove(port: number, onCpu: number): void {
    this.cpuMask[onCpu]![port >>> 5]! &= ~(1 << (port & 31));
  }

  bindToCpu(port: number, tcpu: number, oldCpu: number): void {
    const bit = 1 << (port & 31);
    this.cpuMask[oldCpu]![port >>> 5]! &= ~bit;
    this.cpuMask[tcpu]![port >>> 5]! |= bit;
    this.portCpu[port] = tcpu;
  }

  clearPending(port: number): void {
    this.words[this.pendingBase + (port >>> 5)]! &= ~(1 << (port & 31));
  }

  setPending(port: number): void {
    this.words[this.pendingBase + (port >>> 5)]! |= 1 << (port & 31);
  }

  isPending(port: number): boolean {
    return (this.words[this.pendingBase + (port >>> 5)]! & (1 << (port & 31))) !== 0;
  }

  isMasked(port: number): boolean {
    return (this.words[this.maskBase + (port >>> 5)]! & (1 << (port & 31))) !== 0;
  }

  testAndSetMask(port: number): boolean {
    const i = this.maskBase + (port >>> 5);
    const bit = 1 << (port & 31);
    const was = (this.words[i]! & bit) !== 0;
    this.words[i]! |= bit;
    return was;
  }

  mask(port: number): void {
    this.words[this.maskBase + (port >>> 5)]! |= 1 << (port & 31);
  }

  /** Unmasks locally when the port is ours, else asks Xen (which may be on another CPU's behalf). */
  unmask(cpu: GuestCpu, port: number): void {
    if (this.portCpu[port] !== cpu.vcpuId) {
      this.hc.evtchnUnmask(cpu, port);
      return;
    }
    // Clear the mask before looking at pending, so an event arriving in between is not lost.
    this.words[this.maskBase + (port >>> 5)]! &= ~(1 << (port & 31));
    if (!this.resendOnUnmask || !this.isPending(port)) return;
    // Like a real IO-APIC, the edge that arrived while masked is resent by hand.
    const L = this.layout;
    const vi = cpu.vcpuId * L.vcpu_info.size;
    const selWord = ((vi + L.vcpu_info.evtchn_pending_sel) >> 2) + ((port >>> (this.bpw === 64 ? 6 : 5)) >>> 5);
    const selBit = 1 << ((port >>> (this.bpw === 64 ? 6 : 5)) & 31);
    if (!(this.words[selWord]! & selBit)) {
      this.words[selWord]! |= selBit;
      const bytes = new Uint8Array(this.words.buffer);
      bytes[vi + L.vcpu_info.evtchn_upcall_pending] = 1;
    }
  }

  handleEvents(cpu: GuestCpu, _ctrl: EvtchnLoopCtrl, handle: (port: number) => void): void {
    const c = cpu.vcpuId;
    const w = this.words;
    const bpw = this.bpw;
    const wrap = bpw - 1;
    const halves = bpw === 64 ? 2 : 1;
    const cm = this.cpuMask[c]!;
    // The timer interrupt has the highest priority.
    const tport = this.timerPorts()[c]!;
    if (tport !== 0) {
      const i = tport >>> 5;
      const bit = 1 << (tport & 31);
      if (w[this.pendingBase + i]! & cm[i]! & ~w[this.maskBase + i]! & bit) handle(tport);
    }
    const selIdx = this.selWord[c]!;
    // xchg(&evtchn_pending_sel, 0)
    let selLo = w[selIdx]!;
    let selHi = halves === 2 ? w[selIdx + 1]! : 0;
    w[selIdx] = 0;
    if (halves === 2) w[selIdx + 1] = 0;
    const startWord = this.curWord[c]!;
    const startBit = this.curBit[c]!;
    let wordIdx = startWord;
    for (let i = 0; selLo !== 0 || selHi !== 0; i++) {
      const found = firstBitFrom(selLo, selHi, wordIdx);
      if (found < 0) {
        wordIdx = 0;
        continue;
      }
      wordIdx = found;
      const b = wordIdx * halves;
      const pLo = w[this.pendingBase + b]! & cm[b]! & ~w[this.maskBase + b]!;
      const pHi = halves === 2 ? w[this.pendingBase + b + 1]! & cm[b + 1]! & ~w[this.maskBase + b + 1]! : 0;
      let bitIdx = wordIdx === startWord && i === 0 ? startBit : 0;
      do {
        const bit = firstBitFrom(pLo, pHi, bitIdx);
        if (bit < 0) break;
        handle(wordIdx * bpw + bit);
        bitIdx = (bit + 1) & wrap;
        this.curWord[c] = bitIdx !== 0 ? wordIdx : (wordIdx + 1) & wrap;
        this.curBit[c] = bitIdx;
      } while (bitIdx !== 0);
      // The starting word is scanned twice, every other word once.
      if (wordIdx !== startWord || i !== 0) {
        if (wordIdx < 32) selLo &= ~(1 << wordIdx);
        else selHi &= ~(1 << (wordIdx - 32));
      }
      wordIdx = (wordIdx + 1) & wrap;
    }
  }
}

registerKernelClass("Events2L", Events2L, { transient: ["words", "layout", "timerPorts"] });
