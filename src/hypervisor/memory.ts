// Machine memory: 4 KiB frames in their own ArrayBuffers, created on first touch, each owned by
// one domain (or free). The M2P table maps each frame back to its owner's pfn.

import { DOMID_INVALID, XEN_PAGE_SIZE } from "../abi/xen.ts";

export const INVALID_M2P_ENTRY = 0xffffffff;
export const MFN_FREE = -1;

export class MachineMemory {
  readonly nrFrames: number;
  /** Owning domid per frame, or MFN_FREE. DOMID_XEN for the hypervisor's own pages. */
  readonly owner: Int32Array;
  /** The M2P table: machine frame -> guest pfn (INVALID_M2P_ENTRY when unset). */
  readonly m2p: Uint32Array;
  private readonly u8s: (Uint8Array | undefined)[];
  private readonly u32s: (Uint32Array | undefined)[];
  private readonly dvs: (DataView | undefined)[];
  private readonly freeList: number[];
  private touched = 0;

  constructor(nrFrames: number) {
    this.nrFrames = nrFrames;
    this.owner = new Int32Array(nrFrames).fill(MFN_FREE);
    this.m2p = new Uint32Array(nrFrames).fill(INVALID_M2P_ENTRY);
    this.u8s = new Array(nrFrames);
    this.u32s = new Array(nrFrames);
    this.dvs = new Array(nrFrames);
    // Hand out frames from the top, interleaved in strides, so that pfn != mfn and a
    // domain's frames are not contiguous: confusing the two shows up as wrong data.
    this.freeList = [];
    const stride = 7;
    for (let start = 0; start < stride; start++) {
      for (let mfn = nrFrames - 1 - start; mfn >= 1; mfn -= stride) this.freeList.push(mfn);
    }
    this.freeList.reverse();
  }

  get framesTouched(): number {
    return this.touched;
  }

  get framesFree(): number {
    return this.freeList.length;
  }

  isValid(mfn: number): boolean {
    return Number.isInteger(mfn) && mfn >= 0 && mfn < this.nrFrames;
  }

  /** Takes `count` free frames for `domid`; returns undefined (and takes none) if too few are free. */
  alloc(domid: number, count: number): number[] | undefined {
    if (count > this.freeList.length) return undefined;
    const mfns = this.freeList.splice(this.freeList.length - count, count).reverse();
    for (const mfn of mfns) this.owner[mfn] = domid;
    return mfns;
  }

  free(mfn: number): void {
    if (this.owner[mfn] === MFN_FREE) return;
    this.owner[mfn] = MFN_FREE;
    this.m2p[mfn] = INVALID_M2P_ENTRY;
    const bytes = this.u8s[mfn];
    if (bytes) bytes.fill(0);
    this.freeList.push(mfn);
  }

  ownerOf(mfn: number): number {
    return this.isValid(mfn) ? this.owner[mfn]! : DOMID_INVALID;
  }

  u8(mfn: number): Uint8Array {
    return this.u8s[mfn] ?? this.materialise(mfn).u8;
  }

  u32(mfn: number): Uint32Array {
    return this.u32s[mfn] ?? this.materialise(mfn).u32;
  }

  dv(mfn: number): DataView {
    return this.dvs[mfn] ?? this.materialise(mfn).dv;
  }

  private materialise(mfn: number): { u8: Uint8Array; u32: Uint32Array; dv: DataView } {
    const buf = new ArrayBuffer(XEN_PAGE_SIZE);
    const views = { u8: new Uint8Array(buf), u32: new Uint32Array(buf), dv: new DataView(buf) };
    this.u8s[mfn] = views.u8;
    this.u32s[mfn] = views.u32;
    this.dvs[mfn] = views.dv;
    this.touched++;
    return views;
  }
}
