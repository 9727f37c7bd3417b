// Per-CPU hypercall batching (arch/x86/xen/multicalls.c) and the paravirt lazy modes. Entries
// are built in a per-CPU buffer of kernel memory and issued as one HYPERVISOR_multicall; a
// callback queued with them runs once they have been issued (as set_current_cr3 does); it is
// named, with an argument, so that a batch held back in a lazy mode is plain data.
// In a lazy mode the batch stays queued until the mode ends, possibly across a reschedule.

import type { GuestCpu } from "../abi/cpu.ts";
import type { Layout } from "../abi/layout.ts";
import { layoutFor, MMU_UPDATE } from "../abi/layout.ts";
import { DOMID_SELF, HYPERVISOR, MMUEXT } from "../abi/xen.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";

/** MC_BATCH: entries per batch. MC_ARGS: bytes of argument space. */
export const MC_BATCH = 32;
export const MC_ARGS = 4096;

export const LAZY = { NONE: 0, MMU: 1, CPU: 2 } as const;

const MMUEXT_NAMES = Object.fromEntries(Object.entries(MMUEXT).map(([k, v]) => [v, k])) as Record<number, string>;

interface Batch {
  /** Kernel address of the entry array and of the argument space. */
  entriesVa: number;
  argsVa: number;
  count: number;
  argBytes: number;
  /** What each entry was, for the failure report. */
  what: string[];
  callbacks: McCallback[];
  lazy: number;
  /** The entry an mmu_update may be appended to, or -1. */
  mmuEntry: number;
}

/** A callback queued with a batch: a registered function's name and its argument. */
export interface McCallback {
  fn: string;
  arg: number;
}

export type McCallbackFn = (cpu: GuestCpu, arg: number) => void;

/** local_irq_save / restore around issuing a batch, so that no upcall reuses the buffer. */
export interface IrqControl {
  irqDisable(cpu: GuestCpu): boolean;
  irqRestore(cpu: GuestCpu, wasMasked: boolean): void;
}

export class Multicalls {
  private readonly batches: Batch[];
  /** Callbacks by name; not state: whoever registered one registers it again after a restore. */
  private callbackFns = new Map<string, McCallbackFn>();
  issued = 0;
  flushes = 0;

  constructor(
    private layout: Layout,
    buffers: readonly { entriesVa: number; argsVa: number }[],
    private readonly irq: IrqControl,
  ) {
    this.batches = buffers.map((b) => ({ ...b, count: 0, argBytes: 0, what: [], callbacks: [], lazy: LAZY.NONE, mmuEntry: -1 }));
  }

  /** After a restore, before any kstateRevive: an empty registry for the callbacks to come back to. */
  kstateInit(): void {
    this.callbackFns = new Map();
  }

  /** After a restore: the layout constant again (the batches are data). */
  kstateRevive(env: KstateEnv): void {
    this.layout = layoutFor(env.kernel.width);
  }

  lazyMode(cpu: GuestCpu): number {
    return this.batches[cpu.vcpuId]!.lazy;
  }

  pending(cpu: GuestCpu): number {
    return this.batches[cpu.vcpuId]!.count;
  }

  enterLazy(cpu: GuestCpu, mode: number): void {
    this.batches[cpu.vcpuId]!.lazy = mode;
  }

  /** Leaving a lazy mode issues what it held back. */
  leaveLazy(cpu: GuestCpu): void {
    this.batches[cpu.vcpuId]!.lazy = LAZY.NONE;
    this.flush(cpu);
  }

  /** xen_mc_issue: issues now unless the CPU is in lazy mode `mode`. */
  issue(cpu: GuestCpu, mode: number): void {
    const b = this.batches[cpu.vcpuId]!;
    if (b.lazy === LAZY.NONE || b.lazy !== mode) this.flush(cpu);
  }

  /** Runs `fn` after the batch now being built is issued. */
  callback(cpu: GuestCpu, fn: string, arg: number): void {
    if (!this.callbackFns.has(fn)) throw new Error(`multicall callback ${fn} is not registered`);
    this.batches[cpu.vcpuId]!.callbacks.push({ fn, arg });
  }

  registerCallback(name: string, fn: McCallbackFn): void {
    this.callbackFns.set(name, fn);
  }

  /** __xen_mc_entry: an entry for `op` with `argBytes` of argument space; flushes first if full. */
  private entry(cpu: GuestCpu, op: number, argBytes: number, what: string): { at: number; args: number } {
    const b = this.batches[cpu.vcpuId]!;
    if (b.count === MC_BATCH || b.argBytes + argBytes > MC_ARGS) this.flush(cpu);
    const L = this.layout.multicall_entry;
    const at = b.entriesVa + b.count * L.size;
    const args = b.argsVa + b.argBytes;
    b.count++;
    b.argBytes += argBytes;
    b.what.push(what);
    b.mmuEntry = -1;
    this.putWord(cpu, at + L.op, op);
    return { at, args };
  }

  private putWord(cpu: GuestCpu, va: number, value: number): void {
    if (this.layout.ulong === 8) cpu.write64(va, value);
    else cpu.write32(va, value);
  }

  private arg(cpu: GuestCpu, at: number, i: number, value: number): void {
    const L = this.layout.multicall_entry;
    this.putWord(cpu, at + L.args + i * this.layout.ulong, value);
  }

  /** MULTI_update_va_mapping. */
  updateVaMapping(cpu: GuestCpu, va: number, lo: number, hi: number, flags: number, what: string): void {
    const { at } = this.entry(cpu, HYPERVISOR.update_va_mapping, 0, `update_va_mapping(${what})`);
    if (this.layout.ulong === 8) {
      this.arg(cpu, at, 0, va);
      this.arg(cpu, at, 1, hi * 0x100000000 + lo);
      this.arg(cpu, at, 2, flags);
    } else {
      this.arg(cpu, at, 0, va);
      this.arg(cpu, at, 1, lo);
      this.arg(cpu, at, 2, hi);
      this.arg(cpu, at, 3, flags);
    }
  }

  /** xen_extend_mmu_update: one request, merged into the previous mmu_update entry if it is last. */
  mmuUpdate(cpu: GuestCpu, ptrLo: number, ptrHi: number, valLo: number, valHi: number, what: string): void {
    const b = this.batches[cpu.vcpuId]!;
    let req: number;
    if (b.mmuEntry >= 0 && b.mmuEntry === b.count - 1 && b.argBytes + MMU_UPDATE.size <= MC_ARGS) {
      const L = this.layout.multicall_entry;
      const at = b.entriesVa + b.mmuEntry * L.size;
      const countVa = at + L.args + this.layout.ulong;
      const n = cpu.read32(countVa);
      this.arg(cpu, at, 1, n + 1);
      req = b.argsVa + b.argBytes;
      b.argBytes += MMU_UPDATE.size;
      b.what[b.mmuEntry] = `mmu_update(${n + 1} requests, last ${what})`;
    } else {
      const { at, args } = this.entry(cpu, HYPERVISOR.mmu_update, MMU_UPDATE.size, `mmu_update(${what})`);
      this.arg(cpu, at, 0, args);
      this.arg(cpu, at, 1, 1);
      this.arg(cpu, at, 2, 0);
      this.arg(cpu, at, 3, DOMID_SELF);
      b.mmuEntry = b.count - 1;
      req = args;
    }
    cpu.write32(req + MMU_UPDATE.ptr, ptrLo);
    cpu.write32(req + MMU_UPDATE.ptr + 4, ptrHi);
    cpu.write32(req + MMU_UPDATE.val, valLo);
    cpu.write32(req + MMU_UPDATE.val + 4, valHi);
  }

  /**
   * One mmuext_op: `cmd` with arg1 (an mfn or address) and arg2 (a count), or with a vCPU
   * bitmap that arg2 points to (the *_MULTI flushes), kept in the argument space.
   */
  mmuext(cpu: GuestCpu, cmd: number, arg1: number, arg2: number, what: string, vcpuMask?: number): void {
    const L = this.layout.mmuext_op;
    const withMask = vcpuMask !== undefined;
    const { at, args } = this.entry(cpu, HYPERVISOR.mmuext_op, L.size + (withMask ? 8 : 0), `${MMUEXT_NAMES[cmd] ?? cmd}(${what})`);
    cpu.write32(args + L.cmd, cmd);
    this.putWord(cpu, args + L.arg1, arg1);
    if (withMask) {
      cpu.write32(args + L.size, vcpuMask >>> 0);
      cpu.write32(args + L.size + 4, 0);
    }
    this.putWord(cpu, args + L.arg2, withMask ? args + L.size : arg2);
    this.arg(cpu, at, 0, args);
    this.arg(cpu, at, 1, 1);
    this.arg(cpu, at, 2, 0);
    this.arg(cpu, at, 3, DOMID_SELF);
  }

  /**
   * xen_mc_flush: issues the batch and checks every result. A failed entry is a kernel BUG:
   * the guest cannot go on with pagetables Xen refused.
   */
  flush(cpu: GuestCpu): void {
    const b = this.batches[cpu.vcpuId]!;
    if (b.count === 0 && b.callbacks.length === 0) return;
    const n = b.count;
    const what = b.what;
    const callbacks = b.callbacks;
    b.count = 0;
    b.argBytes = 0;
    b.what = [];
    b.callbacks = [];
    b.mmuEntry = -1;
    const failed: string[] = [];
    if (n > 0) {
      this.flushes++;
      this.issued += n;
      const masked = this.irq.irqDisable(cpu);
      const rc = cpu.hypercall(HYPERVISOR.multicall, b.entriesVa, n);
      if (rc < 0) failed.push(`multicall itself returned ${rc}`);
      const L = this.layout.multicall_entry;
      for (let i = 0; i < n; i++) {
        const resVa = b.entriesVa + i * L.size + L.result;
        const result = this.layout.ulong === 8 ? cpu.read32(resVa) + (cpu.read32(resVa + 4) | 0) * 0x100000000 : cpu.read32(resVa) | 0;
        if (result < 0) failed.push(`${what[i]} = ${result}`);
      }
      this.irq.irqRestore(cpu, masked);
    }
    for (const cb of callbacks) this.callbackFns.get(cb.fn)!(cpu, cb.arg);
    if (failed.length > 0) {
      throw new Error(`kernel BUG in xen_mc_flush: ${failed.length} of ${n} multicall(s) failed: cpu ${cpu.vcpuId}: ${failed.join("; ")}`);
    }
  }
}

registerKernelClass("Multicalls", Multicalls, { transient: ["layout", "callbackFns"] });
