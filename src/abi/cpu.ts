// What a PV guest kernel sees of the machine it runs on: the CPU (registers it needs, the
// hypercall instruction, loads and stores through the MMU) and nothing of Xen's internals.
// The hypervisor implements it; the guest kernel is written against it.

import type { GuestWidth } from "./layout.ts";
import type { GprName } from "./vcpu_context.ts";

export interface GuestCpu {
  readonly vcpuId: number;
  readonly width: GuestWidth;
  /** The `syscall`/`int 0x82` into Xen: op number and register arguments; returns rax. */
  hypercall(op: number, a1?: number, a2?: number, a3?: number, a4?: number, a5?: number): number;
  /** rdtsc. The virtual TSC runs at the rate vcpu_time_info advertises. */
  rdtsc(): number;
  /** Loads and stores by guest virtual address. A fault throws PageFault (the guest's #PF). */
  read8(va: number): number;
  read32(va: number): number;
  read64(va: number): number;
  write8(va: number, value: number): void;
  write32(va: number, value: number): void;
  write64(va: number, value: number): void;
  /**
   * The 32-bit words of the page that backs `va` now, as a TLB hit on a mapping that does not
   * change, for a loop over the page right away (zeroing, a copy): the machine takes the page
   * as written now, and sees no later write through the view.
   */
  pageWords(va: number): Uint32Array;
  /**
   * pageWords for a page the kernel keeps mapped and writes at will, long after this call
   * (shared_info, rings, event arrays): writes the machine never sees, so it takes the page as
   * written all the time (log-dirty reports it dirty in every round).
   */
  mapPageWords(va: number): Uint32Array;
  /** Accounts guest work in virtual nanoseconds. */
  spend(ns: number): void;
  /**
   * A register of the vCPU's saved context. Kernel code keeps its values in JS locals; registers
   * matter where a save image records them: around the suspend hypercall (rip and rsp name where
   * to go on, rax is the hypercall's result as the vCPU sees it when it runs again).
   */
  getRegister(name: GprName): number;
  setRegister(name: GprName, value: number): void;
}

/**
 * The guest's #PF, raised by a load or store through a missing or read-only mapping. Guests
 * take these all the time (demand paging, copy-on-write), so it carries no stack trace: it is
 * control flow, not an error report.
 */
export class PageFault {
  constructor(
    readonly va: number,
    readonly write: boolean,
  ) {}

  get message(): string {
    const va = this.va;
    return `page fault at ${va < 0 ? `-0x${(-va).toString(16)}` : `0x${va.toString(16)}`} (${this.write ? "write" : "read"})`;
  }
}

/**
 * A kernel image as the hypervisor sees one: code at addresses. Xen "jumps" to an address
 * (the entry point, a registered callback, a vCPU's initial rip) and lets the vCPU run on.
 */
export interface GuestImage {
  /** Entry point of vCPU 0, called with the start_info virtual address (rsi on x86_64, esi on i386). */
  readonly entry: number;
  /**
   * The image's symbol table: its entry points by name (startup_xen, xen_hypervisor_callback...).
   * Guest code is TypeScript, so a vCPU context's rip and callbacks hold these symbolic
   * addresses; they are fixed by the image, so a context saved on one host means the same on
   * another that runs the same image. Images without named entry points may leave it out.
   */
  readonly symbols?: Readonly<Record<string, number>>;
  /** Transfers control to `address` on `cpu` (an entry point or a callback). */
  enter(address: number, cpu: GuestCpu, arg: number): void;
  /** Lets `cpu` run on from where it last stopped (one scheduling quantum of work). */
  resume(cpu: GuestCpu): void;
}

/** The name of the entry point at `address` in `image`'s symbol table, if it has one there. */
export function symbolAt(image: GuestImage, address: number): string | undefined {
  const syms = image.symbols;
  if (!syms) return undefined;
  for (const name in syms) if (syms[name] === address) return name;
  return undefined;
}
