// Address translation for a domain. For now a PV kernel sees two kinds of mapping, both set up
// the way the domain builder and Linux set them up: the kernel direct map (va -> pfn -> mfn)
// built at domain creation, and single pages the guest maps with update_va_mapping (shared_info
// in a fixmap slot). Full 4-level/PAE pagetables with a TLB replace this in the PV MMU work.

import { XEN_PAGE_SHIFT, XEN_PAGE_SIZE } from "../abi/xen.ts";

export const PTE_PRESENT = 1;
export const PTE_RW = 2;

/** Thrown inside the hypervisor when a guest address does not translate; becomes -EFAULT or #PF. */
export class FaultError extends Error {
  constructor(
    readonly va: number,
    readonly write: boolean,
  ) {
    super("guest fault");
  }
}

export class AddressSpace {
  /** Virtual page number -> (mfn << 1 | writable), for update_va_mapping'd pages. */
  readonly singlePages = new Map<number, number>();

  readonly directMapSize: number;

  constructor(
    readonly directMapBase: number,
    readonly p2m: Uint32Array,
  ) {
    this.directMapSize = p2m.length * XEN_PAGE_SIZE;
  }

  /** Machine byte address for `va`, or -1. */
  translate(va: number, write: boolean): number {
    const off = va - this.directMapBase;
    if (off >= 0 && off < this.directMapSize) {
      // Offsets below 2 GiB take the integer path; larger direct maps the general one.
      const pfn = off < 0x80000000 ? off >>> 12 : Math.floor(off / XEN_PAGE_SIZE);
      return this.p2m[pfn]! * XEN_PAGE_SIZE + (off - pfn * XEN_PAGE_SIZE);
    }
    const vpn = Math.floor(va / XEN_PAGE_SIZE);
    const entry = this.singlePages.get(vpn);
    if (entry === undefined || (write && entry % 2 === 0)) return -1;
    return Math.floor(entry / 2) * XEN_PAGE_SIZE + (va - vpn * XEN_PAGE_SIZE);
  }

  /**
   * The 32-bit word at `va` if it is an aligned direct-map address below 2 GiB (the common case,
   * kept small so that it inlines), else -1 for the caller's general path.
   */
  directWordIndex(va: number): number {
    const off = va - this.directMapBase;
    if (off < 0 || off >= this.directMapSize || off >= 0x80000000 || (off & 3) !== 0) return -1;
    return off;
  }

  /** The pfn a direct-map address stands for, or -1. */
  directMapPfn(va: number): number {
    const off = va - this.directMapBase;
    if (off < 0 || off >= this.p2m.length * XEN_PAGE_SIZE) return -1;
    return Math.floor(off / XEN_PAGE_SIZE);
  }

  mapSingle(va: number, mfn: number, writable: boolean): void {
    this.singlePages.set(Math.floor(va / XEN_PAGE_SIZE), mfn * 2 + (writable ? 1 : 0));
  }

  unmapSingle(va: number): void {
    this.singlePages.delete(Math.floor(va / XEN_PAGE_SIZE));
  }
}

export function mfnOf(maddr: number): number {
  return Math.floor(maddr / XEN_PAGE_SIZE);
}

export const PAGE_MASK_LOW = (1 << XEN_PAGE_SHIFT) - 1;
