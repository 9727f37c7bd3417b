// copy_from_guest / copy_to_guest: struct arguments read and written at guest virtual
// addresses through the calling vCPU's TLB and pagetables. A bad address throws FaultError, which
// the hypercall entry turns into -EFAULT.

import { XEN_PAGE_SIZE } from "../abi/xen.ts";
import type { MachineMemory } from "./memory.ts";
import type { Vcpu } from "./vcpu.ts";

/** Thrown inside the hypervisor when a guest address does not translate; becomes -EFAULT. */
export class FaultError extends Error {
  constructor(
    readonly va: number,
    readonly write: boolean,
  ) {
    super("guest fault");
  }
}

export class GuestAccess {
  constructor(private readonly memory: MachineMemory) {}

  private ma(v: Vcpu, va: number, write: boolean): number {
    // NaN and infinities fail translation like any unmapped address.
    const ma = v.translate(va, write);
    if (ma < 0) throw new FaultError(va, write);
    return ma;
  }

  u8(v: Vcpu, va: number): number {
    const ma = this.ma(v, va, false);
    return this.memory.u8(Math.floor(ma / XEN_PAGE_SIZE))[ma % XEN_PAGE_SIZE]!;
  }

  u16(v: Vcpu, va: number): number {
    return this.u8(v, va) | (this.u8(v, va + 1) << 8);
  }

  u32(v: Vcpu, va: number): number {
    const ma = this.ma(v, va, false);
    const off = ma % XEN_PAGE_SIZE;
    if ((off & 3) === 0) return this.memory.u32(Math.floor(ma / XEN_PAGE_SIZE))[off >>> 2]!;
    if (off <= XEN_PAGE_SIZE - 4) return this.memory.dv(Math.floor(ma / XEN_PAGE_SIZE)).getUint32(off, true);
    return (this.u16(v, va) | (this.u16(v, va + 2) << 16)) >>> 0;
  }

  /** copy_from_guest of `len` bytes at `va`, page by page (a fault anywhere throws FaultError). */
  copyFrom(v: Vcpu, va: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let done = 0; done < len; ) {
      const ma = this.ma(v, va + done, false);
      const off = ma % XEN_PAGE_SIZE;
      const n = Math.min(len - done, XEN_PAGE_SIZE - off);
      out.set(this.memory.u8(Math.floor(ma / XEN_PAGE_SIZE)).subarray(off, off + n), done);
      done += n;
    }
    return out;
  }

  /** A u64 as a number: exact below 2^53, which every value Xen reads from guests here fits. */
  u64(v: Vcpu, va: number): number {
    return this.u32(v, va) + this.u32(v, va + 4) * 0x100000000;
  }

  /** An `unsigned long` of the guest's width. */
  ulong(v: Vcpu, va: number): number {
    return v.width === 64 ? this.u64(v, va) : this.u32(v, va);
  }

  /** A guest pointer: on x86_64 sign-extended (canonical, exact as a number), on i386 unsigned. */
  pointer(v: Vcpu, va: number): number {
    if (v.width === 32) return this.u32(v, va);
    const lo = this.u32(v, va);
    const hi = this.u32(v, va + 4) | 0;
    return hi * 0x100000000 + lo;
  }

  put8(v: Vcpu, va: number, value: number): void {
    const ma = this.ma(v, va, true);
    this.memory.u8(Math.floor(ma / XEN_PAGE_SIZE))[ma % XEN_PAGE_SIZE] = value;
  }

  put16(v: Vcpu, va: number, value: number): void {
    this.put8(v, va, value & 0xff);
    this.put8(v, va + 1, (value >>> 8) & 0xff);
  }

  put32(v: Vcpu, va: number, value: number): void {
    const ma = this.ma(v, va, true);
    const off = ma % XEN_PAGE_SIZE;
    if ((off & 3) === 0) {
      this.memory.u32(Math.floor(ma / XEN_PAGE_SIZE))[off >>> 2] = value;
      return;
    }
    if (off <= XEN_PAGE_SIZE - 4) {
      this.memory.dv(Math.floor(ma / XEN_PAGE_SIZE)).setUint32(off, value >>> 0, true);
      return;
    }
    this.put16(v, va, value & 0xffff);
    this.put16(v, va + 2, (value >>> 16) & 0xffff);
  }

  put64(v: Vcpu, va: number, value: number): void {
    const lo = value >>> 0;
    this.put32(v, va, lo);
    this.put32(v, va + 4, Math.floor((value - lo) / 0x100000000) >>> 0);
  }

  putUlong(v: Vcpu, va: number, value: number): void {
    if (v.width === 64) this.put64(v, va, value);
    else this.put32(v, va, value);
  }

  /** Checks that [va, va+len) is accessible (guest_handle_okay / access_ok). */
  check(v: Vcpu, va: number, len: number, write: boolean): void {
    if (len <= 0) return;
    this.ma(v, va, write);
    for (let p = Math.floor(va / XEN_PAGE_SIZE) + 1; p * XEN_PAGE_SIZE < va + len; p++) this.ma(v, p * XEN_PAGE_SIZE, write);
  }
}
