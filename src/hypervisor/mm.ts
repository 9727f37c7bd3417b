// The PV MMU's reference counting and validation (xen/arch/x86/mm.c): general and type
// references, the 0 -> 1 type transition that validates a whole pagetable, devalidation when the
// last type reference goes, linear (recursive) entries with Xen's read-only and no-chain rules,
// and mod_lN_entry, the only way a guest changes an entry of a table in use.

import type { GuestWidth } from "../abi/layout.ts";
import {
  _PAGE_PRESENT,
  _PAGE_RW,
  COMPAT_XEN_L2_SLOT_FIRST,
  PTE_MFN_HI_MASK,
  PTES_PER_TABLE,
  pteMfn,
  XEN_L4_SLOT_END,
  XEN_L4_SLOT_FIRST,
} from "../abi/x86.ts";
import { XEN_ERRNO as E } from "../abi/xen.ts";
import { MFN_FREE, type MachineMemory } from "./memory.ts";
import { F_VALIDATED, HOT, PageInfo, PGT, PGT_PAE_XEN_L2, PGT_TYPE_MASK } from "./page_info.ts";
import type { Tlb } from "./tlb.ts";

/** What the MMU needs of a domain. */
export interface MmDomain {
  readonly domid: number;
  readonly width: GuestWidth;
  readonly privileged: boolean;
  readonly vcpus: readonly { readonly tlb: Tlb }[];
}

/**
 * Flags as get_pte_flags() folds them: the low 12 bits, then bits 52-63 of the entry as bits
 * 12-23. base_disallow_mask allows P, RW, US, A, D, AVAIL, AVAIL_HIGH and NX.
 */
function pteFlags(lo: number, hi: number): number {
  return (lo & 0xfff) | ((hi >>> 20) << 12);
}
const BASE_DISALLOW = 0x198; // PWT | PCD | PSE | GLOBAL
/** L1: the global bit is allowed; PAT (bit 7) and the cache bits are not for a domU. */
const L1_DISALLOW = 0x098;
const COMPAT_L3_DISALLOW = 0xfffff198;
/** Flags a guest may change in place without re-validation (FASTPATH_*_WHITELIST). */
const FASTPATH_LO = 0xf64; // AVAIL | GLOBAL | DIRTY | ACCESSED | USER
const FASTPATH_HI = 0xfff00000; // NX | AVAIL_HIGH
/** PADDR_MASK >> PAGE_SHIFT: the all-ones frame number Xen reads as INVALID_MFN. */
const INVALID_MFN = 2 ** 40 - 1;

export class PvMm {
  readonly pages: PageInfo;
  /** Advances on every full TLB flush; page stamps and TLBs' lastFlush are times on it. */
  flushClock = 1;

  constructor(
    readonly mem: MachineMemory,
    private readonly domainById: (domid: number) => MmDomain | undefined,
    /** paging_mark_dirty of the frame's owner (log-dirty; a no-op while no domain is in it). */
    private readonly markDirty: (mfn: number) => void = () => {},
  ) {
    this.pages = new PageInfo(mem.nrFrames);
  }

  // ---- general references (count_info) ----

  /** get_page_from_mfn: a reference on a frame `d` owns. */
  getPage(mfn: number, d: MmDomain): boolean {
    if (!this.mem.isValid(mfn) || this.mem.owner[mfn] !== d.domid || this.pages.count[mfn]! <= 0) return false;
    this.pages.count[mfn]!++;
    return true;
  }

  putPage(mfn: number): void {
    const left = --this.pages.count[mfn]!;
    if (left === 0) {
      this.pages.reset(mfn);
      this.mem.free(mfn);
    } else if (left < 0) throw new Error(`put_page underflow on mfn ${mfn}`);
  }

  /** The reference a fresh allocation holds (PGC_allocated). */
  allocated(mfn: number): void {
    this.pages.reset(mfn);
    this.pages.count[mfn] = 1;
  }

  // ---- type references (type_info) ----

  /** _get_page_type: 0, or -errno when the frame has another type in use or fails validation. */
  getPageType(mfn: number, type: number, d: MmDomain): number {
    const p = this.pages;
    if (p.typeCount[mfn] === 0) {
      if (p.type[mfn] !== type) {
        this.flushForTypeChange(mfn);
        p.type[mfn] = type;
        p.setValidated(mfn, false);
      }
      p.typeCount[mfn] = 1;
      if (p.validated(mfn)) return 0;
      // validate_page: a table (or descriptor page) is dirtied when its type count becomes non-zero.
      if (type !== PGT.writable) this.markDirty(mfn);
      const level = type & PGT_TYPE_MASK;
      if (level >= PGT.l1 && level <= PGT.l4) {
        const rc = this.validate(mfn, level, d);
        if (rc < 0) {
          // alloc_page_type's failure path: type_info = 0.
          p.type[mfn] = PGT.none;
          p.typeCount[mfn] = 0;
          return rc;
        }
      }
      p.setValidated(mfn, true);
      return 0;
    }
    // A table still being validated is never asked for by type again: only linear entries
    // reach a table of the same level, and those need it validated.
    if (p.type[mfn] !== type || !p.validated(mfn)) return -E.EINVAL;
    p.typeCount[mfn]!++;
    return 0;
  }

  putPageType(mfn: number): void {
    const p = this.pages;
    const left = --p.typeCount[mfn]!;
    if (left > 0) return;
    if (left < 0) throw new Error(`put_page_type underflow on mfn ${mfn}`);
    p.stamp[mfn] = this.flushClock;
    const level = p.level(mfn);
    if (level > 0 && p.validated(mfn)) {
      // free_page_type: and dirtied when it becomes zero.
      this.markDirty(mfn);
      p.setValidated(mfn, false);
      this.devalidate(mfn, level);
    }
  }

  /** get_page_and_type_from_mfn. */
  getPageAndType(mfn: number, type: number, d: MmDomain): number {
    if (!this.getPage(mfn, d)) return -E.EINVAL;
    const rc = this.getPageType(mfn, type, d);
    if (rc < 0) this.putPage(mfn);
    return rc;
  }

  putPageAndType(mfn: number): void {
    this.putPageType(mfn);
    this.putPage(mfn);
  }

  /** MMUEXT_PIN_Ln_TABLE: a type reference held by the pin itself. Pinning is not nested. */
  pin(mfn: number, type: number, d: MmDomain): number {
    if (!this.getPage(mfn, d)) return -E.EINVAL;
    const rc = this.getPageType(mfn, type, d);
    if (rc < 0) {
      this.putPage(mfn);
      return rc;
    }
    if (this.pages.pinned(mfn)) {
      this.putPageAndType(mfn);
      return -E.EINVAL;
    }
    this.pages.setPinned(mfn, true);
    // A page is dirtied when its pin status is set, and when it is cleared (do_mmuext_op).
    this.markDirty(mfn);
    return 0;
  }

  /** MMUEXT_UNPIN_TABLE: succeeds while a vCPU still runs on the table, whose reference keeps it typed. */
  unpin(mfn: number, d: MmDomain): number {
    if (!this.getPage(mfn, d)) return -E.EINVAL;
    if (!this.pages.pinned(mfn)) {
      this.putPage(mfn);
      return -E.EINVAL;
    }
    this.pages.setPinned(mfn, false);
    this.putPageAndType(mfn);
    this.putPage(mfn);
    this.markDirty(mfn);
    return 0;
  }

  /**
   * A type change of a frame that may still be in some TLB as writable: flush the owner's
   * vCPUs that have not flushed since its last type reference went (tlbflush_filter).
   */
  private flushForTypeChange(mfn: number): void {
    const owner = this.domainById(this.mem.owner[mfn]!);
    if (!owner) return;
    const stamp = this.pages.stamp[mfn]!;
    for (const v of owner.vcpus) if (v.tlb.lastFlush <= stamp) this.flushTlb(v.tlb);
  }

  flushTlb(tlb: Tlb): void {
    tlb.flushAll(++this.flushClock);
  }

  // ---- validation ----

  /** Whether slot `slot` of a level-`level` table of type `type` is the guest's (not Xen's). */
  isGuestSlot(width: GuestWidth, level: number, type: number, slot: number): boolean {
    if (width === 64) return level !== 4 || slot < XEN_L4_SLOT_FIRST || slot >= XEN_L4_SLOT_END;
    if (level === 3) return slot < 4;
    if (level === 2 && (type & PGT_PAE_XEN_L2) !== 0) return slot < COMPAT_XEN_L2_SLOT_FIRST;
    return true;
  }

  /** alloc_lN_table: a reference for every present entry, or none and the first error. */
  private validate(mfn: number, level: number, d: MmDomain): number {
    const words = this.mem.u32(mfn);
    if (level === 1) return this.validateL1(mfn, words, d);
    const type = this.pages.type[mfn]!;
    const width = d.width;
    for (let slot = 0; slot < PTES_PER_TABLE; slot++) {
      if (!this.isGuestSlot(width, level, type, slot)) continue;
      const lo = words[slot * 2]!;
      const hi = words[slot * 2 + 1]!;
      let rc = 0;
      if (width === 32 && level === 3 && slot === 3) {
        // A PAE L3's last slot must map the L2 that Xen shares its own mappings through.
        rc =
          (lo & _PAGE_PRESENT) === 0 || (pteFlags(lo, hi) & COMPAT_L3_DISALLOW) !== 0
            ? -E.EINVAL
            : this.getPageAndType(pteMfn(lo, hi), PGT.l2 | PGT_PAE_XEN_L2, d);
        // That L2 carries Xen's mappings for this L3 alone: it may not be shared.
        if (rc === 0 && this.pages.typeCount[pteMfn(lo, hi)] !== 1) {
          this.putPageAndType(pteMfn(lo, hi));
          rc = -E.EINVAL;
        }
      } else if ((lo & _PAGE_PRESENT) !== 0) {
        rc = this.getPageFromEntry(level, lo, hi, mfn, d, d);
      }
      if (rc < 0) {
        for (let undo = 0; undo < slot; undo++) {
          if (this.isGuestSlot(width, level, type, undo)) this.putPageFromEntry(level, words[undo * 2]!, words[undo * 2 + 1]!, mfn);
        }
        return rc;
      }
    }
    return 0;
  }

  /**
   * validate() for an L1, where every slot is the guest's: runs of common entries take their
   * references in l1TakeRefs; anything else goes through getPageFromL1e.
   */
  private validateL1(mfn: number, words: Uint32Array, d: MmDomain): number {
    const end = PTES_PER_TABLE * 2;
    for (let i = 0; ; i += 2) {
      i = this.l1TakeRefs(words, i, d.domid);
      if (i >= end) return 0;
      const rc = this.getPageFromL1e(words[i]!, words[i + 1]!, d, d);
      if (rc < 0) {
        for (let undo = 0; undo < i; undo += 2) this.putPageFromEntry(1, words[undo]!, words[undo + 1]!, mfn);
        return rc;
      }
    }
  }

  /**
   * getPageFromL1e for the entries of an L1 from word `from` on, as long as each is absent or
   * common: a frame below 2^20 that `domid` owns and holds a reference on, mapped read-only,
   * or writable while already a validated writable page. Returns the word index of the first
   * entry that is neither (its references not taken), or the end of the table.
   *
   * This runs for every entry of every L1 validated, so its loop makes no calls: a call would
   * make V8 reload each typed array's data pointer and length on every access.
   */
  private l1TakeRefs(words: Uint32Array, from: number, domid: number): number {
    const hot = this.pages.hot;
    const owner = this.mem.owner;
    const nrFrames = this.mem.nrFrames;
    // Where typeCount, type and flags of frame m are in `hot`: m + each of these (its count
    // is at m: HOT.count is 0).
    const nr = this.pages.count.length;
    const tcnt = HOT.typeCount * nr;
    const typ = HOT.type * nr;
    const flg = HOT.flags * nr;
    let i = from;
    // Literals, checked against their names below the class: V8 compiles this loop better
    // when it knows them. 1024 = PTES_PER_TABLE * 2; 1 = _PAGE_PRESENT; 0x98 = L1_DISALLOW;
    // 0xfffff = PTE_MFN_HI_MASK; 2 = _PAGE_RW; 7 = PGT.writable; 2 = F_VALIDATED.
    for (; i < 1024; i += 2) {
      const lo = words[i]!;
      if ((lo & 1) === 0) continue;
      // L1_DISALLOW has no bits above 11, so the high half's flags cannot matter to it.
      if ((lo & 0x98) !== 0 || (words[i + 1]! & 0xfffff) !== 0) break;
      const m = lo >>> 12;
      if (m >= nrFrames || owner[m] !== domid || hot[m]! <= 0) break;
      if ((lo & 2) !== 0) {
        if (hot[tcnt + m] === 0 || hot[typ + m] !== 7 || (hot[flg + m]! & 2) === 0) break;
        hot[tcnt + m]!++;
      }
      hot[m]!++;
    }
    return i;
  }

  /** free_lN_table: drops every present entry's reference. */
  private devalidate(mfn: number, level: number): void {
    const words = this.mem.u32(mfn);
    if (level === 1) {
      this.devalidateL1(mfn, words);
      return;
    }
    const d = this.domainById(this.mem.owner[mfn]!);
    const width = d?.width ?? 64;
    const type = this.pages.type[mfn]!;
    for (let slot = 0; slot < PTES_PER_TABLE; slot++) {
      if (this.isGuestSlot(width, level, type, slot)) this.putPageFromEntry(level, words[slot * 2]!, words[slot * 2 + 1]!, mfn);
    }
  }

  /** devalidate() for an L1 (every slot the guest's): like validateL1, in runs. */
  private devalidateL1(mfn: number, words: Uint32Array): void {
    const end = PTES_PER_TABLE * 2;
    for (let i = 0; ; i += 2) {
      i = this.l1DropRefs(words, i);
      if (i >= end) return;
      this.putPageFromEntry(1, words[i]!, words[i + 1]!, mfn);
    }
  }

  /**
   * putPageFromEntry for the entries of an L1 from word `from` on, as long as none drops the
   * last type or general reference of its frame. Returns the word index of the first entry
   * that would (its references not dropped), or the end of the table. No calls in the loop,
   * as in l1TakeRefs.
   */
  private l1DropRefs(words: Uint32Array, from: number): number {
    const hot = this.pages.hot;
    const nr = this.pages.count.length;
    const tcnt = HOT.typeCount * nr;
    let i = from;
    // Literals as in l1TakeRefs.
    for (; i < 1024; i += 2) {
      const lo = words[i]!;
      if ((lo & 1) === 0) continue;
      const hi = words[i + 1]!;
      const m = (hi & 0xfffff) === 0 ? lo >>> 12 : pteMfn(lo, hi);
      if (m >= nr || hot[m]! <= 1) break;
      if ((lo & 2) !== 0) {
        if (hot[tcnt + m]! <= 1) break;
        hot[tcnt + m]!--;
      }
      hot[m]!--;
    }
    return i;
  }

  /** get_page_from_lNe for a present entry in slot `slot` of table `tableMfn`. */
  private getPageFromEntry(level: number, lo: number, hi: number, tableMfn: number, d: MmDomain, pgOwner: MmDomain): number {
    if (level === 1) return this.getPageFromL1e(lo, hi, d, pgOwner);
    const disallow = d.width === 32 && level === 3 ? COMPAT_L3_DISALLOW : BASE_DISALLOW;
    if ((pteFlags(lo, hi) & disallow) !== 0) return -E.EINVAL;
    const child = pteMfn(lo, hi);
    const rc = this.getPageAndType(child, level - 1, d);
    if (rc !== -E.EINVAL || (d.width === 32 && level === 3)) return rc;
    return this.getLinear(level, lo, child, tableMfn, d) ? 0 : rc;
  }

  /**
   * get_lN_linear_pagetable: an entry mapping a table of its own level, read-only. A table
   * may map itself; mapping another needs it validated, and no chains (XSA-240).
   */
  private getLinear(level: number, lo: number, target: number, tableMfn: number, d: MmDomain): boolean {
    if ((lo & _PAGE_RW) !== 0) return false;
    if (target === tableMfn) return true;
    const p = this.pages;
    if (!this.getPage(target, d)) return false;
    if (p.linear[tableMfn]! > 0) {
      this.putPage(target);
      return false;
    }
    p.linear[tableMfn]!--;
    if (p.linear[target]! < 0 || (p.type[target]! & PGT_TYPE_MASK) !== level || !p.validated(target) || p.typeCount[target] === 0) {
      p.linear[tableMfn]!++;
      this.putPage(target);
      return false;
    }
    p.linear[target]!++;
    p.typeCount[target]!++;
    return true;
  }

  /** put_page_from_lNe. */
  putPageFromEntry(level: number, lo: number, hi: number, tableMfn: number): void {
    if ((lo & _PAGE_PRESENT) === 0) return;
    const mfn = pteMfn(lo, hi);
    if (level === 1) {
      if ((lo & _PAGE_RW) !== 0) this.putPageType(mfn);
      this.putPage(mfn);
      return;
    }
    if (mfn === tableMfn) return;
    const p = this.pages;
    if ((p.type[mfn]! & PGT_TYPE_MASK) === (p.type[tableMfn]! & PGT_TYPE_MASK)) {
      p.linear[mfn]!--;
      p.linear[tableMfn]!++;
    }
    this.putPageAndType(mfn);
  }

  /** get_page_from_l1e: 0 or -errno. */
  getPageFromL1e(lo: number, hi: number, l1eOwner: MmDomain, pgOwner: MmDomain): number {
    if ((pteFlags(lo, hi) & L1_DISALLOW) !== 0) return -E.EINVAL;
    const mfn = pteMfn(lo, hi);
    // No MMIO here: a frame beyond RAM is I/O space no domain may map.
    if (!this.mem.isValid(mfn)) return mfn === INVALID_MFN ? -E.EINVAL : -E.EPERM;
    const ownerId = this.mem.owner[mfn]!;
    let owner = pgOwner;
    if (ownerId === MFN_FREE || this.pages.count[mfn]! <= 0) return -E.EBUSY;
    if (ownerId !== pgOwner.domid) {
      // A privileged pg_owner may pass on the right to map its target's frames.
      const real = this.domainById(ownerId);
      if (!real || pgOwner === l1eOwner || !pgOwner.privileged) return -E.EBUSY;
      owner = real;
    }
    this.pages.count[mfn]!++;
    if ((lo & _PAGE_RW) !== 0 && this.getPageType(mfn, PGT.writable, owner) < 0) {
      this.putPage(mfn);
      return -E.EBUSY;
    }
    return 0;
  }

  // ---- mod_lN_entry ----

  /**
   * Replaces slot `slot` of validated table `tableMfn` (level `level`) with (lo, hi): takes the
   * new entry's references before dropping the old one's. 0 or -errno; the entry is unchanged
   * on error.
   */
  modEntry(level: number, tableMfn: number, slot: number, lo: number, hi: number, d: MmDomain, pgOwner: MmDomain): number {
    const type = this.pages.type[tableMfn]!;
    // A PAE L3's last slot holds Xen's mappings and cannot be changed while in use.
    if (d.width === 32 && level === 3 && slot >= 3) return -E.EINVAL;
    if (!this.isGuestSlot(d.width, level, type, slot)) {
      // L2: -EPERM; L4 and a PAE L3's Xen slot: -EINVAL.
      return level === 2 ? -E.EPERM : -E.EINVAL;
    }
    const words = this.mem.u32(tableMfn);
    const oldLo = words[slot * 2]!;
    const oldHi = words[slot * 2 + 1]!;
    if ((lo & _PAGE_PRESENT) !== 0) {
      const disallow = level === 1 ? L1_DISALLOW : d.width === 32 && level === 3 ? COMPAT_L3_DISALLOW : BASE_DISALLOW;
      if ((pteFlags(lo, hi) & disallow) !== 0) return -E.EINVAL;
      const unchanged = ((oldLo ^ lo) & ~FASTPATH_LO) === 0 && ((oldHi ^ hi) & ~FASTPATH_HI) === 0;
      if (unchanged) {
        words[slot * 2] = lo;
        words[slot * 2 + 1] = hi;
        return 0;
      }
      const rc = this.getPageFromEntry(level, lo, hi, tableMfn, d, pgOwner);
      if (rc < 0) return rc;
    }
    words[slot * 2] = lo;
    words[slot * 2 + 1] = hi;
    this.putPageFromEntry(level, oldLo, oldHi, tableMfn);
    return 0;
  }
}

// The literals l1TakeRefs and l1DropRefs use instead of these names, and HOT.count's 0.
if (
  PTES_PER_TABLE * 2 !== 1024 ||
  _PAGE_PRESENT !== 1 ||
  _PAGE_RW !== 2 ||
  L1_DISALLOW !== 0x98 ||
  PTE_MFN_HI_MASK !== 0xfffff ||
  PGT.writable !== 7 ||
  HOT.count !== 0 ||
  F_VALIDATED !== 2
) {
  throw new Error("mm.ts: the L1 loops' literals no longer match their constants");
}
