// struct page_info for every machine frame, as Xen keeps it for PV guests: a general reference
// count (count_info, with the allocation itself holding one), a type with its own count
// (type_info), the pinned and validated bits, the linear-pagetable counter, and the time the
// type count last dropped to zero (tlbflush_timestamp).

/** Page types (PGT_* >> PGT_type_shift in asm/mm.h). */
export const PGT = { none: 0, l1: 1, l2: 2, l3: 3, l4: 4, seg_desc: 5, shared: 6, writable: 7 } as const;
/** PGT_pae_xen_l2, kept beside the type: an L2 that a 32-bit guest's L3 slot 3 points to. */
export const PGT_PAE_XEN_L2 = 8;
export const PGT_TYPE_MASK = 7;

export const PGT_NAMES = ["none", "l1", "l2", "l3", "l4", "seg_desc", "shared", "writable"] as const;

/** Where each field of PageInfo.hot starts, in multiples of nrFrames. */
export const HOT = { count: 0, typeCount: 1, type: 2, flags: 3 } as const;
const HOT_FIELDS = 4;

const F_PINNED = 1;
/** The validated bit of PageInfo.flags (for loops that test it inline). */
export const F_VALIDATED = 2;

export class PageInfo {
  /**
   * count, typeCount, type and flags, in that order, nrFrames apiece, in one array: the
   * fields below are views of it. Loops over many entries (PvMm's L1 validation) index this
   * one array, because V8 re-checks and reloads each typed array an iteration touches.
   */
  readonly hot: Int32Array;
  /** count_info's reference count. */
  readonly count: Int32Array;
  /** The type, with PGT_PAE_XEN_L2 or'ed in. */
  readonly type: Int32Array;
  readonly typeCount: Int32Array;
  /** F_PINNED | F_VALIDATED: read it through pinned() / validated() outside hot loops. */
  readonly flags: Int32Array;
  /** linear_pt_count: > 0 used as a linear table that many times, < 0 holds that many linear entries. */
  readonly linear: Int32Array;
  /** Flush-clock time at which the type count last fell to 0. */
  readonly stamp: Float64Array;

  constructor(nrFrames: number) {
    this.hot = new Int32Array(nrFrames * HOT_FIELDS);
    this.count = this.hot.subarray(HOT.count * nrFrames, (HOT.count + 1) * nrFrames);
    this.typeCount = this.hot.subarray(HOT.typeCount * nrFrames, (HOT.typeCount + 1) * nrFrames);
    this.type = this.hot.subarray(HOT.type * nrFrames, (HOT.type + 1) * nrFrames);
    this.flags = this.hot.subarray(HOT.flags * nrFrames, (HOT.flags + 1) * nrFrames);
    this.linear = new Int32Array(nrFrames);
    this.stamp = new Float64Array(nrFrames);
  }

  pinned(mfn: number): boolean {
    return (this.flags[mfn]! & F_PINNED) !== 0;
  }

  setPinned(mfn: number, on: boolean): void {
    this.flags[mfn] = on ? this.flags[mfn]! | F_PINNED : this.flags[mfn]! & ~F_PINNED;
  }

  validated(mfn: number): boolean {
    return (this.flags[mfn]! & F_VALIDATED) !== 0;
  }

  setValidated(mfn: number, on: boolean): void {
    this.flags[mfn] = on ? this.flags[mfn]! | F_VALIDATED : this.flags[mfn]! & ~F_VALIDATED;
  }

  /** The pagetable level of a frame's type (1-4), or 0 if it is not a pagetable. */
  level(mfn: number): number {
    const t = this.type[mfn]! & PGT_TYPE_MASK;
    return t >= PGT.l1 && t <= PGT.l4 ? t : 0;
  }

  /** Whether the frame holds a type that guests may never map writable (page_lock'able tables). */
  isProtected(mfn: number): boolean {
    const t = this.type[mfn]! & PGT_TYPE_MASK;
    return this.typeCount[mfn]! > 0 && t >= PGT.l1 && t <= PGT.seg_desc;
  }

  /** Back to the state of a free frame. */
  reset(mfn: number): void {
    this.count[mfn] = 0;
    this.type[mfn] = 0;
    this.typeCount[mfn] = 0;
    this.flags[mfn] = 0;
    this.linear[mfn] = 0;
    this.stamp[mfn] = 0;
  }

  describe(mfn: number): string {
    const t = this.type[mfn]!;
    const name = PGT_NAMES[t & PGT_TYPE_MASK]! + (t & PGT_PAE_XEN_L2 ? "+pae_xen_l2" : "");
    return `caf=${this.count[mfn]} type=${name} tc=${this.typeCount[mfn]}${this.pinned(mfn) ? " pinned" : ""}${this.validated(mfn) ? " validated" : ""}`;
  }
}
