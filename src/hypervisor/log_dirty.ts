// Log-dirty mode for PV domains (xen/arch/x86/mm/paging.c): while a domain is in it, a write to
// one of its pages sets bit `pfn` (the frame's M2P entry) in a bitmap the toolstack reads, and
// cleans, with XEN_DOMCTL_shadow_op between the rounds of a live migration.
//
// Xen write-protects the domain's memory with shadow pagetables; the model does it in the TLBs.
// A writable entry to such a frame is cached as TLB_WP_LOGDIRTY until a write marks the page
// (Vcpu.translate), and enabling or cleaning demotes the writable entries of every vCPU. Xen's
// own writes into guest frames mark them explicitly, as paging_mark_dirty does. Two kinds of
// page are written where no MMU sees it: those the guest kernel keeps mapped through a view
// (GuestCpu.mapPageWords: rings, event arrays) and frames mapped writable by privcmd. Both are
// reported dirty at every CLEAN and PEEK instead: few pages, and written all the time anyway.

import { XEN_DOMCTL_SHADOW_ENABLE, XEN_DOMCTL_SHADOW_LOGDIRTY, XEN_DOMCTL_SHADOW_OP as OP } from "../abi/domctl.ts";
import { XEN_ERRNO as E } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import type { ForeignMapping } from "./domctl.ts";
import type { MachineMemory } from "./memory.ts";
import { TLB_RW, TLB_WP_LOGDIRTY } from "./tlb.ts";

/** A leaf of Xen's bitmap trie is a page of bits: 2^(PAGE_SHIFT + 3) pfns. */
const LEAF_SHIFT = 15;
const LEAF_BYTES = 4096;
/** The pfns the trie indexes (three levels of 512 above the leaves): paging_log_dirty_op stops there. */
export const LOGDIRTY_MAX_PFNS = 2 ** (LEAF_SHIFT + 27);
/** Leaves a domain may have (Xen's come from its paging pool): beyond, marks fail and CLEAN/PEEK say -ENOMEM. */
const MAX_LEAVES = 4096;
/** !VALID_M2P: an entry with the top bit set (INVALID_M2P_ENTRY, shared_info's) names no pfn. */
const M2P_INVALID_BIT = 0x80000000;

/** What XEN_DOMCTL_shadow_op copies back: pages and stats (CLEAN, PEEK), mb (the allocation ops). */
export interface ShadowOpResult {
  pages: number;
  faultCount: number;
  dirtyCount: number;
  mb?: number;
}

/** d->arch.paging.log_dirty, and the frames the domain's kernel writes unseen. */
export class PagingLogDirty {
  /** paging_mode_log_dirty. */
  enabled = false;
  /** Guest write faults on write-protected pages, and pages newly marked, since the last CLEAN. */
  faultCount = 0;
  dirtyCount = 0;
  failedAllocs = 0;
  /** The shadow pool size the toolstack set (SET_ALLOCATION), in MiB: only recorded. */
  shadowMb = 0;
  /** The bitmap's leaves by pfn >> 15, allocated on first mark as Xen's trie is. */
  readonly leaves = new Map<number, Uint8Array>();
  /** Frames the kernel keeps mapped and writes at will (GuestCpu.mapPageWords). */
  readonly keptMapped = new Set<number>();

  constructor(private readonly m2p: Uint32Array) {}

  /** paging_mark_pfn_dirty. */
  markPfn(pfn: number): void {
    if (!this.enabled || pfn >= M2P_INVALID_BIT) return;
    let leaf = this.leaves.get(pfn >>> LEAF_SHIFT);
    if (!leaf) {
      if (this.leaves.size >= MAX_LEAVES) {
        this.failedAllocs++;
        return;
      }
      leaf = new Uint8Array(LEAF_BYTES);
      this.leaves.set(pfn >>> LEAF_SHIFT, leaf);
    }
    const i = (pfn >>> 3) & (LEAF_BYTES - 1);
    const bit = 1 << (pfn & 7);
    if ((leaf[i]! & bit) === 0) {
      leaf[i]! |= bit;
      this.dirtyCount++;
    }
  }

  /** paging_mark_dirty for a frame of this domain. */
  markMfn(mfn: number): void {
    if (this.enabled) this.markPfn(this.m2p[mfn]!);
  }

  /** paging_mfn_is_dirty. */
  mfnIsDirty(mfn: number): boolean {
    const pfn = this.m2p[mfn]!;
    if (pfn >= M2P_INVALID_BIT) return false;
    const leaf = this.leaves.get(pfn >>> LEAF_SHIFT);
    return leaf !== undefined && (leaf[(pfn >>> 3) & (LEAF_BYTES - 1)]! & (1 << (pfn & 7))) !== 0;
  }
}

/** The machine's side: marking by frame, the TLBs' write protection, and the domctl. */
export class LogDirty {
  /** Domains in log-dirty mode: while none, TLB fills and Xen's writes skip everything here. */
  active = 0;

  constructor(
    private readonly mem: MachineMemory,
    private readonly domains: ReadonlyMap<number, Domain>,
    private readonly foreignMappings: ReadonlySet<ForeignMapping>,
    /** False when the "logdirty-pt-update" fix is switched off (src/hypervisor/fixes.ts). */
    private readonly ptUpdates = true,
  ) {}

  /** The log-dirty state of the frame's owner while it is on. */
  private logging(mfn: number): PagingLogDirty | undefined {
    const ld = this.domains.get(this.mem.owner[mfn]!)?.logDirty;
    return ld?.enabled ? ld : undefined;
  }

  /** paging_mark_dirty(owner of `mfn`, `mfn`): for Xen's own writes into guest frames. */
  markMfn(mfn: number): void {
    if (this.active === 0) return;
    this.logging(mfn)?.markPfn(this.mem.m2p[mfn]!);
  }

  /** A table entry written for mmu_update or update_va_mapping (sh_validate_guest_entry's mark). */
  markPtUpdate(mfn: number): void {
    if (this.ptUpdates) this.markMfn(mfn);
  }

  /**
   * Tlb.writable for a writable translation to `mfn` (callers check `active` first): write-
   * protected while its owner logs and the page is clean; a write marks it (a log-dirty fault).
   */
  fillState(mfn: number, write: boolean): number {
    const ld = this.logging(mfn);
    if (!ld || this.mem.m2p[mfn]! >= M2P_INVALID_BIT || ld.mfnIsDirty(mfn)) return TLB_RW;
    if (!write) return TLB_WP_LOGDIRTY;
    ld.faultCount++;
    ld.markMfn(mfn);
    return TLB_RW;
  }

  /** A guest write through a TLB_WP_LOGDIRTY entry: Xen's write fault marks the page. */
  writeFault(mfn: number): void {
    if (this.active === 0) return;
    const ld = this.logging(mfn);
    if (!ld) return;
    ld.faultCount++;
    ld.markMfn(mfn);
  }

  /** GuestCpu.mapPageWords: the owner reports the frame dirty at every CLEAN and PEEK from now on. */
  keepMapped(mfn: number): void {
    const d = this.domains.get(this.mem.owner[mfn]!);
    if (!d) return;
    d.logDirty.keptMapped.add(mfn);
    d.logDirty.markMfn(mfn);
  }

  /** shadow_blow_tables: every writable TLB entry to `domid`'s frames, on every vCPU of every domain, faults again. */
  private writeProtect(domid: number): void {
    for (const d of this.domains.values()) for (const v of d.vcpus) v.tlb.writeProtect(this.mem.owner, domid);
  }

  /** Marks what is written unseen: frames the kernel keeps mapped, and those privcmd maps writable. */
  private markWrittenAtWill(d: Domain): void {
    const ld = d.logDirty;
    const owner = this.mem.owner;
    for (const mfn of ld.keptMapped) if (owner[mfn] === d.domid) ld.markMfn(mfn);
    for (const m of this.foreignMappings) {
      if (!m.writable || m.domid !== d.domid) continue;
      for (const mfn of m.mfns) if (owner[mfn] === d.domid) ld.markMfn(mfn);
    }
  }

  /**
   * paging_domctl once domctl.ts has checked caller and target: 0, a ShadowOpResult, or -errno.
   * Shadow pagetables for their own sake (ENABLE without LOG_DIRTY, ENABLE_TEST) are not
   * modelled: -EOPNOTSUPP.
   */
  domctl(d: Domain, op: number, mode: number, mb: number, bitmap: Uint8Array | undefined, pages: number): ShadowOpResult | number {
    const ld = d.logDirty;
    switch (op) {
      case OP.ENABLE:
        if ((mode & XEN_DOMCTL_SHADOW_ENABLE.LOG_DIRTY) === 0) return -E.EOPNOTSUPP;
        return this.enable(d);
      case OP.ENABLE_LOGDIRTY:
        return this.enable(d);
      case OP.OFF:
        this.disable(d);
        return 0;
      case OP.CLEAN:
      case OP.PEEK:
        if ((mode & ~XEN_DOMCTL_SHADOW_LOGDIRTY.FINAL) !== 0) return -E.EINVAL;
        return this.op(d, op === OP.CLEAN, bitmap, pages);
      case OP.ENABLE_TEST:
        return -E.EOPNOTSUPP;
      case OP.GET_ALLOCATION:
        return { pages, faultCount: 0, dirtyCount: 0, mb: ld.shadowMb };
      case OP.SET_ALLOCATION:
        // Shadows in use (log-dirty on) cannot lose their whole pool.
        if (!Number.isInteger(mb) || mb < 0 || mb > 0xffffffff || (mb === 0 && ld.enabled)) return -E.EINVAL;
        ld.shadowMb = mb;
        return { pages, faultCount: 0, dirtyCount: 0, mb };
      default:
        return -E.EINVAL;
    }
  }

  /** paging_log_dirty_enable: -EINVAL if already on. */
  private enable(d: Domain): number {
    if (d.logDirty.enabled) return -E.EINVAL;
    d.logDirty.enabled = true;
    this.active++;
    this.writeProtect(d.domid);
    return 0;
  }

  /**
   * paging_log_dirty_disable, also at domain destruction: the bitmap is freed, the counts stay.
   * Write-protected TLB entries become writable on their next write.
   */
  disable(d: Domain): void {
    const ld = d.logDirty;
    if (ld.enabled) {
      ld.enabled = false;
      this.active--;
    }
    ld.leaves.clear();
    ld.failedAllocs = 0;
  }

  /**
   * paging_log_dirty_op: copies the bitmap's first `pagesIn` bits (whole bytes, a leaf of 4096
   * at a time) into `bitmap`, then for CLEAN clears each leaf it passed and the counts. Like
   * Xen's, it does not look at whether log-dirty is on: off, the bitmap it copies is all zeroes.
   * Bytes past the end of `bitmap` are memory the caller does not have: the copy faults there
   * (-EFAULT), leaving what it copied and, for CLEAN, the leaves before cleared. `pages` comes
   * back as given (Xen 4.17 clamps it only to what the trie can index, not to the p2m).
   */
  private op(d: Domain, clean: boolean, bitmap: Uint8Array | undefined, pagesIn: number): ShadowOpResult | number {
    if (!Number.isSafeInteger(pagesIn) || pagesIn < 0) return -E.EINVAL;
    const ld = d.logDirty;
    if (ld.enabled) this.markWrittenAtWill(d);
    const faultCount = Math.min(ld.faultCount, 0xffffffff);
    const dirtyCount = Math.min(ld.dirtyCount, 0xffffffff);
    if (ld.failedAllocs > 0) return -E.ENOMEM;
    let pages = 0;
    if (bitmap) {
      for (let i = 0; pages < pagesIn && pages < LOGDIRTY_MAX_PFNS; i++) {
        const bytes = Math.min(LEAF_BYTES, Math.floor((pagesIn - pages + 7) / 8));
        const leaf = ld.leaves.get(i);
        const at = pages / 8;
        const fit = Math.max(0, Math.min(bytes, bitmap.length - at));
        if (leaf) bitmap.set(leaf.subarray(0, fit), at);
        else bitmap.fill(0, at, at + fit);
        if (fit < bytes) return -E.EFAULT;
        pages += bytes * 8;
        if (clean) leaf?.fill(0);
      }
    } else {
      // A null handle: the walk only cleans the leaves it passes.
      pages = Math.min(pagesIn, LOGDIRTY_MAX_PFNS);
      const passed = Math.ceil(pages / 2 ** LEAF_SHIFT);
      if (clean) for (const [i, leaf] of ld.leaves) if (i < passed) leaf.fill(0);
    }
    if (clean) {
      ld.faultCount = 0;
      ld.dirtyCount = 0;
      // sh_clean_dirty_bitmap: the cleaned pages are write-protected again.
      if (ld.enabled) this.writeProtect(d.domid);
    }
    return { pages: Math.min(pages, pagesIn), faultCount, dirtyCount };
  }
}
