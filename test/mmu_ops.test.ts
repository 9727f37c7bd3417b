// Unit tests for the PV MMU hypercalls: mmu_update, update_va_mapping, mmuext_op and multicall,
// every error path with the errno xen/arch/x86/mm.c gives, the reference counts behind them, and
// the TLB as a guest observes it (through the data its loads return). Bare guests make the calls
// with their argument structs in their own memory, as a PV kernel would.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { PageFault } from "../src/abi/cpu.ts";
import { type GuestWidth, type Layout, layoutFor, MMU_UPDATE } from "../src/abi/layout.ts";
import {
  _PAGE_GLOBAL,
  _PAGE_PCD,
  _PAGE_PRESENT,
  _PAGE_PSE,
  _PAGE_PWT,
  COMPAT_XEN_L2_SLOT_FIRST,
  pagingLevels,
  pteHi,
  pteLo,
  pteMfn,
  tableIndex,
  vaFromIndices,
  XEN_L4_SLOT_FIRST,
} from "../src/abi/x86.ts";
import { DOMID_SELF, XEN_ERRNO as E, HYPERVISOR, MMU, MMUEXT, UVMF } from "../src/abi/xen.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { MFN_FREE } from "../src/hypervisor/memory.ts";
import { PGT, PGT_PAE_XEN_L2 } from "../src/hypervisor/page_info.ts";
import { walk } from "../src/hypervisor/tlb.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain, newHypervisor } from "./harness.ts";

const WIDTHS = [64, 32] as const;
/** Has an empty L1 from the harness (TEST_SINGLE_PAGE_VAS); VA2 is in the same L1. */
const VA = 0x400000;
const VA2 = 0x500000;
/** Slot 10 of the L2 that maps VA: empty, for installing L1s and linear entries. */
const L2_SLOT = 10;
const L2_SLOT_VA = L2_SLOT * 0x200000;
/** Nothing maps this 1 GiB region: no L3 entry (PAE) or L2 (x86_64) reaches it. */
const NO_L1_VA = 0x40000000;
/** In guest space but unmapped: a bad guest pointer. */
const BAD_PTR = 0x1000;
/** Inside Xen's part of the address space (L4 slot 256; the compat M2P area). */
const XEN_VA: Record<GuestWidth, number> = { 64: -(2 ** 47) + 0x10000, 32: 0xf6000000 };
/** Data pages (mapped writable by the direct map) and what the tests write into them. */
const PFN_A = 2;
const PFN_B = 3;
const MARK_A = 0xaaaa0001;
const MARK_B = 0xbbbb0002;
/** Free pages for tables a test builds. The harness's own tables are the last pages. */
const PFN_T1 = 4;
const PFN_T2 = 5;
const PFN_T3 = 6;
/** Multicall lists and vCPU masks (the op structs go in the harness's scratch page). */
const PFN_LIST = 8;
const PDONE_OFF = 0xf00;
const SENTINEL = 0xdeadbeef;
/** Entry flags: P|A|D, with RW; upper-level entries as Linux writes them (P|RW|US|A|D), and without RW. */
const RO = 0x61;
const RW = 0x63;
const PDE = 0x67;
const PDE_RO = 0x65;

/** One mmu_update request: ptr (machine address of the entry | cmd) and the new entry. */
interface Req {
  ptr: number;
  lo: number;
  hi: number;
}
interface ExtOp {
  cmd: number;
  arg1?: number;
  arg2?: number;
}
interface Call {
  op: number;
  args: readonly number[];
}

/** A request writing `lo:hi` into slot `slot` of frame `mfn`. */
function raw(mfn: number, slot: number, lo: number, hi: number, cmd: number = MMU.NORMAL_PT_UPDATE): Req {
  return { ptr: mfn * 4096 + slot * 8 + cmd, lo, hi };
}

/** A request pointing slot `slot` of table `table` at `target`. */
function pte(table: number, slot: number, target: number, flags: number, cmd?: number): Req {
  return raw(table, slot, pteLo(target, flags), pteHi(target), cmd);
}

function clear(table: number, slot: number): Req {
  return raw(table, slot, 0, 0);
}

/** A bare guest and the calls a PV kernel makes, with their structs in its own memory. */
class Guest {
  readonly w: GuestWidth;
  readonly L: Layout;
  constructor(
    readonly hv: Hypervisor,
    readonly b: BareDomain,
  ) {
    this.w = b.d.width;
    this.L = layoutFor(this.w);
  }

  get d() {
    return this.b.d;
  }
  get v0(): Vcpu {
    return this.b.v0;
  }
  get v1(): Vcpu {
    return this.b.d.vcpus[1]!;
  }
  /** The root table vCPU 0 runs on. */
  get root(): number {
    return this.v0.guestTable;
  }
  mfn(pfn: number): number {
    return this.d.p2m[pfn]!;
  }
  pfnOf(mfn: number): number {
    return this.d.p2m.indexOf(mfn);
  }
  va(pfn: number): number {
    return this.b.va(pfn);
  }
  get pdoneVa(): number {
    return this.b.arg + PDONE_OFF;
  }
  /** What the last mmu_update/mmuext_op wrote to pdone (SENTINEL if nothing). */
  get done(): number {
    return this.v0.read32(this.pdoneVa);
  }

  counts(mfn: number): { count: number; typeCount: number } {
    const p = this.hv.mm.pages;
    return { count: p.count[mfn]!, typeCount: p.typeCount[mfn]! };
  }

  /** The level-`level` table on the way to `va` from vCPU 0's root. */
  table(va: number, level: number): number {
    let mfn = this.root;
    for (let l = pagingLevels(this.w); l > level; l--) {
      const words = this.hv.memory.u32(mfn);
      const slot = tableIndex(this.w, va, l);
      assert.ok((words[slot * 2]! & _PAGE_PRESENT) !== 0, `no level-${l} entry for ${va.toString(16)}`);
      mfn = pteMfn(words[slot * 2]!, words[slot * 2 + 1]!);
    }
    return mfn;
  }

  entry(table: number, slot: number): { lo: number; hi: number } {
    const words = this.hv.memory.u32(table);
    return { lo: words[slot * 2]!, hi: words[slot * 2 + 1]! };
  }

  /** The frame an entry maps, or -1 if it is not present. */
  mapped(table: number, slot: number): number {
    const { lo, hi } = this.entry(table, slot);
    return (lo & _PAGE_PRESENT) !== 0 ? pteMfn(lo, hi) : -1;
  }

  writeUlong(va: number, value: number): void {
    if (this.w === 64) this.v0.write64(va, value);
    else this.v0.write32(va, value >>> 0);
  }

  /** A signed `long` (results are -errno). */
  readLong(va: number): number {
    if (this.w === 32) return this.v0.read32(va) | 0;
    return (this.v0.read32(va + 4) | 0) * 2 ** 32 + this.v0.read32(va);
  }

  // ---- hypercalls ----

  uvm(va: number, lo: number, hi: number, flags = 0, v: Vcpu = this.v0): number {
    return this.w === 64
      ? v.hypercall(HYPERVISOR.update_va_mapping, va, hi * 2 ** 32 + lo, flags)
      : v.hypercall(HYPERVISOR.update_va_mapping, va >>> 0, lo, hi, flags >>> 0);
  }

  map(va: number, mfn: number, flags: number, uvmFlags = 0, v?: Vcpu): number {
    return this.uvm(va, pteLo(mfn, flags), pteHi(mfn), uvmFlags, v);
  }

  /** Writes mmu_update requests at `at`. */
  writeReqs(reqs: readonly Req[], at: number = this.b.arg): void {
    const v = this.v0;
    reqs.forEach((r, i) => {
      const p = at + i * MMU_UPDATE.size;
      v.write32(p + MMU_UPDATE.ptr, r.ptr >>> 0);
      v.write32(p + MMU_UPDATE.ptr + 4, Math.floor(r.ptr / 2 ** 32));
      v.write32(p + MMU_UPDATE.val, r.lo);
      v.write32(p + MMU_UPDATE.val + 4, r.hi);
    });
  }

  /** mmu_update from vCPU 0 with the requests in the scratch page and pdone after them (SENTINEL before). */
  mmu(reqs: readonly Req[], opts: { foreigndom?: number; pdone?: boolean } = {}): number {
    this.writeReqs(reqs);
    this.v0.write32(this.pdoneVa, SENTINEL);
    const pdone = opts.pdone === false ? 0 : this.pdoneVa;
    return this.v0.hypercall(HYPERVISOR.mmu_update, this.b.arg, reqs.length, pdone, opts.foreigndom ?? DOMID_SELF);
  }

  writeOps(ops: readonly ExtOp[], at: number = this.b.arg): void {
    const L = this.L.mmuext_op;
    ops.forEach((op, i) => {
      const p = at + i * L.size;
      for (let off = 0; off < L.size; off += 4) this.v0.write32(p + off, 0);
      this.v0.write32(p + L.cmd, op.cmd);
      this.writeUlong(p + L.arg1, op.arg1 ?? 0);
      this.writeUlong(p + L.arg2, op.arg2 ?? 0);
    });
  }

  /** mmuext_op from vCPU 0, like mmu(). */
  ext(ops: readonly ExtOp[], foreigndom: number = DOMID_SELF): number {
    this.writeOps(ops);
    this.v0.write32(this.pdoneVa, SENTINEL);
    return this.v0.hypercall(HYPERVISOR.mmuext_op, this.b.arg, ops.length, this.pdoneVa, foreigndom);
  }

  pin(level: number, mfn: number, foreigndom?: number): number {
    const cmd = [MMUEXT.PIN_L1_TABLE, MMUEXT.PIN_L2_TABLE, MMUEXT.PIN_L3_TABLE, MMUEXT.PIN_L4_TABLE][level - 1]!;
    return this.ext([{ cmd, arg1: mfn }], foreigndom);
  }
  unpin(mfn: number): number {
    return this.ext([{ cmd: MMUEXT.UNPIN_TABLE, arg1: mfn }]);
  }
  newBase(mfn: number): number {
    return this.ext([{ cmd: MMUEXT.NEW_BASEPTR, arg1: mfn }]);
  }
  get rootLevel(): number {
    return this.w === 64 ? PGT.l4 : PGT.l3;
  }

  /** Writes a multicall list at PFN_LIST with every result set to SENTINEL. */
  multicall(calls: readonly Call[], list: number = this.va(PFN_LIST)): number {
    const L = this.L.multicall_entry;
    const ul = this.L.ulong;
    calls.forEach((c, i) => {
      const p = list + i * L.size;
      this.writeUlong(p + L.op, c.op);
      this.writeUlong(p + L.result, SENTINEL);
      for (let k = 0; k < 6; k++) this.writeUlong(p + L.args + k * ul, c.args[k] ?? 0);
    });
    return this.v0.hypercall(HYPERVISOR.multicall, list, calls.length);
  }
  result(i: number, list: number = this.va(PFN_LIST)): number {
    const L = this.L.multicall_entry;
    return this.readLong(list + i * L.size + L.result);
  }
  uvmCall(va: number, mfn: number, flags: number, uvmFlags = 0): Call {
    const lo = pteLo(mfn, flags);
    const hi = pteHi(mfn);
    return this.w === 64
      ? { op: HYPERVISOR.update_va_mapping, args: [va, hi * 2 ** 32 + lo, uvmFlags] }
      : { op: HYPERVISOR.update_va_mapping, args: [va, lo, hi, uvmFlags] };
  }

  // ---- building tables ----

  /** Writes entries into page `pfn` through the (still writable) direct map. */
  fill(pfn: number, entries: readonly (readonly [number, number, number])[]): void {
    for (const [slot, target, flags] of entries) {
      this.v0.write32(this.va(pfn) + slot * 8, pteLo(target, flags));
      this.v0.write32(this.va(pfn) + slot * 8 + 4, pteHi(target));
    }
  }

  /** Copies entries [from, to) of table `src` into page `pfn`. */
  copy(pfn: number, src: number, from: number, to: number): void {
    const words = this.hv.memory.u32(src);
    for (let i = from * 2; i < to * 2; i++) if (words[i] !== 0) this.v0.write32(this.va(pfn) + i * 4, words[i]!);
  }

  /** Remaps page `pfn` read-only in the direct map, as a kernel must before the page becomes a table. */
  readOnly(pfn: number): number {
    assert.equal(this.map(this.va(pfn), this.mfn(pfn), RO, UVMF.INVLPG), 0, `remapping pfn ${pfn} read-only`);
    return this.mfn(pfn);
  }

  newTable(pfn: number, entries: readonly (readonly [number, number, number])[]): number {
    this.fill(pfn, entries);
    return this.readOnly(pfn);
  }

  /**
   * A second root mapping what the current one maps, in `pfn` (a PAE guest also needs its own
   * L2 for the Xen slot, in `l2pfn`: that one may not be shared).
   */
  copyRoot(pfn: number, l2pfn: number): number {
    if (this.w === 64) {
      this.copy(pfn, this.root, 0, 512);
      return this.readOnly(pfn);
    }
    this.copy(l2pfn, this.entryTarget(this.root, 3), 0, COMPAT_XEN_L2_SLOT_FIRST);
    const l2 = this.readOnly(l2pfn);
    this.copy(pfn, this.root, 0, 3);
    this.fill(pfn, [[3, l2, _PAGE_PRESENT]]);
    return this.readOnly(pfn);
  }

  private entryTarget(table: number, slot: number): number {
    const t = this.mapped(table, slot);
    assert.ok(t >= 0);
    return t;
  }

  /** Maps VA to frame A (holding MARK_A) and fills both vCPUs' TLBs with it. */
  primeTlbs(): void {
    this.v0.write32(this.va(PFN_A), MARK_A);
    this.v0.write32(this.va(PFN_B), MARK_B);
    assert.equal(this.map(VA, this.mfn(PFN_A), RW), 0);
    assert.equal(this.v0.read32(VA), MARK_A);
    assert.equal(this.v1.read32(VA), MARK_A);
  }

  /** A vCPU bitmap in guest memory. */
  mask(vcpus: readonly number[]): number {
    const at = this.va(PFN_LIST) + 0x800;
    this.writeUlong(at, vcpus.reduce((m, i) => m + 2 ** i, 0));
    return at;
  }
}

function guest(hv: Hypervisor, width: GuestWidth, privileged = false): Guest {
  return new Guest(hv, bareDomain(hv, { width, privileged }));
}

/** A fresh machine with one guest. */
function solo(width: GuestWidth): Guest {
  return guest(newHypervisor(), width);
}

for (const width of WIDTHS) {
  const vaSlot = tableIndex(width, VA, 1);

  describe(`mmu_update, ${width}-bit guest`, () => {
    test("MMU_NORMAL_PT_UPDATE installs, changes and clears an L1 entry with its references", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      const a = g.mfn(PFN_A);
      const before = g.counts(a);
      g.v0.write32(g.va(PFN_A), MARK_A);
      assert.equal(g.mmu([pte(l1, vaSlot, a, RW)]), 0);
      assert.equal(g.done, 1);
      assert.equal(g.mapped(l1, vaSlot), a);
      assert.deepEqual(g.counts(a), { count: before.count + 1, typeCount: before.typeCount + 1 });
      assert.equal(g.v0.read32(VA), MARK_A);
      // RW is not a fast-path flag: dropping it re-validates and gives the writable type back.
      assert.equal(g.mmu([pte(l1, vaSlot, a, RO)]), 0);
      assert.deepEqual(g.counts(a), { count: before.count + 1, typeCount: before.typeCount });
      assert.equal(g.mmu([clear(l1, vaSlot)]), 0);
      assert.deepEqual(g.counts(a), before);
      assert.equal(g.mapped(l1, vaSlot), -1);
    });

    test("PT_UPDATE_PRESERVE_AD and PT_UPDATE_NO_TRANSLATE update a PV guest's entries too", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      assert.equal(g.mmu([pte(l1, 1, g.mfn(PFN_A), RO, MMU.PT_UPDATE_PRESERVE_AD)]), 0);
      assert.equal(g.mmu([pte(l1, 2, g.mfn(PFN_B), RO, MMU.PT_UPDATE_NO_TRANSLATE)]), 0);
      assert.equal(g.mapped(l1, 1), g.mfn(PFN_A));
      assert.equal(g.mapped(l1, 2), g.mfn(PFN_B));
    });

    test("mapping another domain's frame is -EBUSY and takes no reference", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const l1 = g.table(VA, 1);
      const f = other.mfn(PFN_A);
      const before = other.counts(f);
      for (const flags of [RO, RW]) {
        assert.equal(g.mmu([pte(l1, vaSlot, f, flags)]), -E.EBUSY);
        assert.equal(g.done, 0);
      }
      assert.deepEqual(other.counts(f), before);
      assert.equal(g.mapped(l1, vaSlot), -1);
    });

    test("a frame beyond RAM is -EPERM (I/O memory a domU may not map); INVALID_MFN is -EINVAL", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      assert.equal(g.mmu([pte(l1, vaSlot, g.hv.memory.nrFrames, RO)]), -E.EPERM);
      assert.equal(g.mmu([raw(l1, vaSlot, (0xfffff000 | RO) >>> 0, 0xfffff)]), -E.EINVAL);
      assert.equal(g.mapped(l1, vaSlot), -1);
    });

    test("L1 flags PWT, PCD and PAT are -EINVAL; GLOBAL is allowed", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      const a = g.mfn(PFN_A);
      const before = g.counts(a);
      // In an L1 entry bit 7 is PAT, not PSE.
      for (const bit of [_PAGE_PWT, _PAGE_PCD, _PAGE_PSE]) {
        assert.equal(g.mmu([pte(l1, vaSlot, a, RW | bit)]), -E.EINVAL, `flag ${bit.toString(16)}`);
      }
      assert.deepEqual(g.counts(a), before);
      assert.equal(g.mmu([pte(l1, vaSlot, a, RO | _PAGE_GLOBAL)]), 0);
    });

    test("its own pagetables map read-only only: a writable mapping is -EBUSY", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      for (const t of [g.root, l1]) {
        const before = g.counts(t);
        assert.equal(g.mmu([pte(l1, vaSlot, t, RW)]), -E.EBUSY);
        assert.deepEqual(g.counts(t), before);
        assert.equal(g.mmu([pte(l1, vaSlot, t, RO)]), 0);
        assert.deepEqual(g.counts(t), { count: before.count + 1, typeCount: before.typeCount });
        assert.equal(g.mmu([clear(l1, vaSlot)]), 0);
        assert.deepEqual(g.counts(t), before);
      }
    });

    test("L2 entries: PSE is -EINVAL, a data page is -EINVAL, a fresh L1 is validated", () => {
      const g = solo(width);
      const l2 = g.table(VA, 2);
      const b = g.mfn(PFN_B);
      g.v0.write32(g.va(PFN_B), MARK_B);
      const t = g.newTable(PFN_T1, [[0, b, RW]]);
      assert.equal(g.mmu([pte(l2, L2_SLOT, t, PDE | _PAGE_PSE)]), -E.EINVAL);
      assert.equal(g.mmu([pte(l2, L2_SLOT, g.mfn(PFN_A), PDE)]), -E.EINVAL);
      assert.equal(g.hv.mm.pages.typeCount[t], 0);
      const bBefore = g.counts(b);
      assert.equal(g.mmu([pte(l2, L2_SLOT, t, PDE)]), 0);
      assert.equal(g.hv.mm.pages.type[t], PGT.l1);
      assert.equal(g.hv.mm.pages.typeCount[t], 1);
      assert.ok(g.hv.mm.pages.validated(t));
      assert.equal(g.counts(b).typeCount, bBefore.typeCount + 1);
      assert.equal(g.v0.read32(L2_SLOT_VA), MARK_B);
      // Removing the last reference devalidates the L1 and drops what it held.
      assert.equal(g.mmu([clear(l2, L2_SLOT)]), 0);
      assert.equal(g.hv.mm.pages.typeCount[t], 0);
      assert.ok(!g.hv.mm.pages.validated(t));
      assert.deepEqual(g.counts(b), bBefore);
    });

    test("a failing request stops the batch and pdone counts the requests done", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const l1 = g.table(VA, 1);
      const a = g.mfn(PFN_A);
      const b = g.mfn(PFN_B);
      assert.equal(g.mmu([pte(l1, 0, a, RO), pte(l1, 1, other.mfn(PFN_A), RO), pte(l1, 2, b, RO)]), -E.EBUSY);
      assert.equal(g.done, 1);
      assert.equal(g.mapped(l1, 0), a);
      assert.equal(g.mapped(l1, 1), -1);
      assert.equal(g.mapped(l1, 2), -1);
      assert.equal(g.mmu([pte(l1, 3, a, RO), pte(l1, 4, b, RO)]), 0);
      assert.equal(g.done, 2);
      // A null pdone is not written.
      assert.equal(g.mmu([pte(l1, 5, a, RO)], { pdone: false }), 0);
      assert.equal(g.done, SENTINEL);
      assert.equal(g.mapped(l1, 5), a);
    });

    test("commands 4-7 in the low bits of ptr are -ENOSYS", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      for (let cmd = 4; cmd < 8; cmd++) {
        assert.equal(g.mmu([pte(l1, vaSlot, g.mfn(PFN_A), RO, cmd)]), -E.ENOSYS, `cmd ${cmd}`);
        assert.equal(g.done, 0);
      }
      assert.equal(g.mapped(l1, vaSlot), -1);
    });

    test("a frame that is not a table in use gets a plain write", () => {
      const g = solo(width);
      const a = g.mfn(PFN_A);
      const before = g.counts(a);
      assert.equal(g.mmu([raw(a, 3, 0x12345678, 0x9abcdef0)]), 0);
      assert.equal(g.v0.read32(g.va(PFN_A) + 24), 0x12345678);
      assert.equal(g.v0.read32(g.va(PFN_A) + 28), 0x9abcdef0);
      assert.deepEqual(g.counts(a), before);
      // An untyped frame takes a writable type just for the write.
      const t = g.readOnly(PFN_T1);
      assert.equal(g.hv.mm.pages.typeCount[t], 0);
      assert.equal(g.mmu([raw(t, 0, 0xcafe, 0)]), 0);
      assert.equal(g.hv.memory.u32(t)[0], 0xcafe);
      assert.equal(g.hv.mm.pages.typeCount[t], 0);
    });

    test("ptr naming a frame the domain does not own is -EINVAL", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const theirs = other.table(VA, 1);
      const before = other.entry(theirs, 0);
      for (const mfn of [theirs, other.mfn(PFN_A), 0, hv.memory.nrFrames]) {
        assert.equal(g.mmu([pte(mfn, 0, g.mfn(PFN_A), RO)]), -E.EINVAL, `mfn ${mfn}`);
      }
      assert.deepEqual(other.entry(theirs, 0), before);
    });

    test("foreigndom: an unknown domain -ESRCH, itself by domid -ESRCH, another domain -EPERM", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const req = pte(g.table(VA, 1), vaSlot, g.mfn(PFN_A), RO);
      assert.equal(g.mmu([req], { foreigndom: 0x1234 }), -E.ESRCH);
      assert.equal(g.mmu([req], { foreigndom: g.d.domid }), -E.ESRCH);
      // The page-table owner is the high half, biased by one.
      assert.equal(g.mmu([req], { foreigndom: ((0x1234 + 1) << 16) | DOMID_SELF }), -E.ESRCH);
      assert.equal(g.mmu([req], { foreigndom: other.d.domid }), -E.EPERM);
      assert.equal(g.done, 0);
      assert.equal(g.mmu([req], { foreigndom: ((other.d.domid + 1) << 16) | DOMID_SELF }), -E.EPERM);
      assert.equal(g.mapped(g.table(VA, 1), vaSlot), -1);
    });

    test("an unknown pg_owner still reports 0 requests done", () => {
      // do_mmu_update's get_pg_owner failure goes to `out`, which writes pdone.
      const g = solo(width);
      assert.equal(g.mmu([pte(g.table(VA, 1), vaSlot, g.mfn(PFN_A), RO)], { foreigndom: 0x1234 }), -E.ESRCH);
      assert.equal(g.done, 0);
    });

    test("a privileged domain maps another domain's frame by naming it in foreigndom", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const d = guest(hv, width);
      const l1 = p.table(VA, 1);
      const f = d.mfn(PFN_A);
      const before = d.counts(f);
      // Without foreigndom even a privileged domain's own mappings must be its own frames.
      assert.equal(p.mmu([pte(l1, vaSlot, f, RO)]), -E.EBUSY);
      assert.equal(p.mmu([pte(l1, vaSlot, f, RO)], { foreigndom: d.d.domid }), 0);
      assert.deepEqual(d.counts(f), { count: before.count + 1, typeCount: before.typeCount });
      d.v0.write32(d.va(PFN_A), MARK_A);
      assert.equal(p.v0.read32(VA), MARK_A);
    });

    test("MMU_MACHPHYS_UPDATE sets the M2P entry of its own frame; a foreign frame is -EINVAL", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const a = g.mfn(PFN_A);
      assert.equal(hv.memory.m2p[a], PFN_A);
      assert.equal(g.mmu([raw(a, 0, 0x777, 0, MMU.MACHPHYS_UPDATE)]), 0);
      assert.equal(hv.memory.m2p[a], 0x777);
      const f = other.mfn(PFN_A);
      assert.equal(g.mmu([raw(f, 0, 0x777, 0, MMU.MACHPHYS_UPDATE)]), -E.EINVAL);
      assert.equal(hv.memory.m2p[f], PFN_A);
      assert.equal(g.mmu([raw(hv.memory.nrFrames, 0, 1, 0, MMU.MACHPHYS_UPDATE)]), -E.EINVAL);
      // A domU may not update another domain's M2P entries.
      assert.equal(g.mmu([raw(f, 0, 0x777, 0, MMU.MACHPHYS_UPDATE)], { foreigndom: other.d.domid }), -E.EPERM);
    });

    test("a request list in Xen's range or unmapped is -EFAULT", () => {
      const g = solo(width);
      g.v0.write32(g.pdoneVa, SENTINEL);
      assert.equal(g.v0.hypercall(HYPERVISOR.mmu_update, XEN_VA[width], 1, g.pdoneVa, DOMID_SELF), -E.EFAULT);
      // guest_handle_okay refuses it before anything runs (a compat pointer passes it: see below).
      if (width === 64) assert.equal(g.done, SENTINEL);
      // Inside the guest's range but unmapped: the copy faults.
      assert.equal(g.v0.hypercall(HYPERVISOR.mmu_update, BAD_PTR, 1, 0, DOMID_SELF), -E.EFAULT);
    });

    if (width === 32) {
      test(
        "a compat request list above HYPERVISOR_VIRT_START_COMPAT faults in the copy, which reports pdone",
        () => {
          // Xen's check is the 64-bit one, so 0xf6000000 is only refused when __copy_from_guest
          // faults, and that path goes on to write pdone.
          const g = solo(width);
          g.v0.write32(g.pdoneVa, SENTINEL);
          assert.equal(g.v0.hypercall(HYPERVISOR.mmu_update, XEN_VA[32], 1, g.pdoneVa, DOMID_SELF), -E.EFAULT);
          assert.equal(g.done, 0);
        },
      );
    }

    test(
      "a request list running into an unmapped page: -EFAULT and pdone counts the requests done",
      () => {
        const g = solo(width);
        const l1 = g.table(VA, 1);
        // The list's first request ends VA's page; VA + 4096 is not mapped.
        assert.equal(g.map(VA, g.mfn(PFN_T1), RW), 0);
        const at = VA + 4096 - MMU_UPDATE.size;
        g.writeReqs([pte(l1, 5, g.mfn(PFN_A), RO)], at);
        g.v0.write32(g.pdoneVa, SENTINEL);
        assert.equal(g.v0.hypercall(HYPERVISOR.mmu_update, at, 2, g.pdoneVa, DOMID_SELF), -E.EFAULT);
        assert.equal(g.mapped(l1, 5), g.mfn(PFN_A));
        assert.equal(g.done, 1);
      },
    );

    test("Xen's own slots cannot be changed", () => {
      const g = solo(width);
      if (width === 64) {
        assert.equal(g.mmu([clear(g.root, XEN_L4_SLOT_FIRST + 4)]), -E.EINVAL);
      } else {
        // L3 slot 3 holds the L2 with Xen's mappings; in that L2, Xen's slots are -EPERM.
        const e = g.entry(g.root, 3);
        assert.equal(g.mmu([raw(g.root, 3, e.lo, e.hi)]), -E.EINVAL);
        const xenL2 = g.table(layoutFor(32).PAGE_OFFSET, 2);
        assert.equal(g.hv.mm.pages.type[xenL2], PGT.l2 | PGT_PAE_XEN_L2);
        assert.equal(g.mmu([clear(xenL2, COMPAT_XEN_L2_SLOT_FIRST + 2)]), -E.EPERM);
        // Below the Xen slots that L2 is the guest's.
        assert.equal(g.mmu([clear(xenL2, COMPAT_XEN_L2_SLOT_FIRST - 1)]), 0);
      }
    });

    test(
      "changing an L2 entry flushes the domain's TLBs",
      () => {
        const g = solo(width);
        g.v0.write32(g.va(PFN_A), MARK_A);
        g.v0.write32(g.va(PFN_B), MARK_B);
        const l2 = g.table(VA, 2);
        const ta = g.newTable(PFN_T1, [[0, g.mfn(PFN_A), RW]]);
        const tb = g.newTable(PFN_T2, [[0, g.mfn(PFN_B), RW]]);
        // Pinned first, so that installing them is no type change (which would flush anyway).
        assert.equal(g.pin(1, ta), 0);
        assert.equal(g.pin(1, tb), 0);
        assert.equal(g.mmu([pte(l2, L2_SLOT, ta, PDE)]), 0);
        assert.equal(g.v0.read32(L2_SLOT_VA), MARK_A);
        assert.equal(g.v1.read32(L2_SLOT_VA), MARK_A);
        assert.equal(g.mmu([pte(l2, L2_SLOT, tb, PDE)]), 0);
        assert.equal(g.v0.read32(L2_SLOT_VA), MARK_B);
        assert.equal(g.v1.read32(L2_SLOT_VA), MARK_B);
      },
    );
  });

  describe(`linear pagetables, ${width}-bit guest`, () => {
    if (width === 64) {
      test("an L4 may map itself read-only, without a reference; read-write is -EINVAL", () => {
        const g = solo(width);
        const root = g.root;
        const before = g.counts(root);
        assert.equal(g.mmu([pte(root, 400, root, PDE_RO)]), 0);
        assert.deepEqual(g.counts(root), before);
        // Through slot 400 four times over, the page is the L4 itself.
        const self = vaFromIndices(64, [400, 400, 400, 400]);
        assert.equal(g.v0.read32(self + 400 * 8), g.entry(root, 400).lo);
        assert.throws(() => g.v0.write32(self, 0), PageFault);
        assert.equal(g.mmu([pte(root, 401, root, PDE)]), -E.EINVAL);
        assert.equal(g.mapped(root, 401), -1);
        assert.equal(g.mmu([clear(root, 400)]), 0);
        assert.deepEqual(g.counts(root), before);
      });
    }

    test("an L2 may map itself read-only: its entries read as L1s and are never writable", () => {
      const g = solo(width);
      const l2 = g.table(VA, 2);
      const l1 = g.table(VA, 1);
      const before = g.counts(l2);
      assert.equal(g.mmu([pte(l2, L2_SLOT, l2, PDE_RO)]), 0);
      assert.deepEqual(g.counts(l2), before);
      assert.equal(g.map(VA, g.mfn(PFN_A), RW), 0);
      // Page n of the linear region is what L2 slot n maps: VA's L1 is in slot 2.
      const l1Va = L2_SLOT_VA + tableIndex(width, VA, 2) * 4096;
      assert.equal(g.v0.read32(l1Va), g.entry(l1, vaSlot).lo);
      assert.throws(() => g.v0.write32(l1Va, 0), PageFault);
      // The "L1" update_va_mapping finds for the linear region is the L2: not an L1 table.
      assert.equal(g.map(L2_SLOT_VA, g.mfn(PFN_B), RO), -E.EINVAL);
      // Read-write is refused, and the read-only entry stays.
      assert.equal(g.mmu([pte(l2, L2_SLOT, l2, PDE)]), -E.EINVAL);
      assert.equal(g.entry(l2, L2_SLOT).lo, pteLo(l2, PDE_RO));
      assert.equal(g.mmu([clear(l2, L2_SLOT)]), 0);
      assert.deepEqual(g.counts(l2), before);
    });

    if (width === 32) {
      test("a PAE L3 may not map itself, even read-only", () => {
        const g = solo(width);
        assert.equal(g.mmu([pte(g.root, 1, g.root, _PAGE_PRESENT)]), -E.EINVAL);
        assert.equal(g.mapped(g.root, 1), -1);
      });
    }
  });

  describe(`mmuext_op pinning, ${width}-bit guest`, () => {
    test("PIN_L1_TABLE validates a fresh table and holds a type reference; UNPIN gives it back", () => {
      const g = solo(width);
      const a = g.mfn(PFN_A);
      const aBefore = g.counts(a);
      const t = g.newTable(PFN_T1, [[0, a, RW]]);
      const tBefore = g.counts(t);
      assert.equal(g.pin(1, t), 0);
      assert.equal(g.done, 1);
      const p = g.hv.mm.pages;
      assert.ok(p.pinned(t) && p.validated(t));
      assert.equal(p.type[t], PGT.l1);
      // The pin holds a general reference as well as the type reference.
      assert.deepEqual(g.counts(t), { count: tBefore.count + 1, typeCount: 1 });
      assert.equal(g.counts(a).typeCount, aBefore.typeCount + 1);
      assert.equal(g.unpin(t), 0);
      assert.ok(!p.pinned(t) && !p.validated(t));
      assert.deepEqual(g.counts(t), tBefore);
      assert.deepEqual(g.counts(a), aBefore);
      // No longer a table, it may be writable again.
      assert.equal(g.map(g.va(PFN_T1), t, RW), 0);
    });

    test("pinning as the wrong type is -EINVAL and changes nothing", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      const a = g.mfn(PFN_A);
      const cases: [number, number][] = [
        [2, l1],
        [3, l1],
        [1, a],
        [1, g.root],
        [2, g.root],
      ];
      if (width === 64) cases.push([4, l1], [3, g.root]);
      for (const [level, mfn] of cases) {
        const before = g.counts(mfn);
        assert.equal(g.pin(level, mfn), -E.EINVAL, `PIN_L${level} of mfn ${mfn}`);
        assert.equal(g.done, 0);
        assert.deepEqual(g.counts(mfn), before);
        assert.equal(g.hv.mm.pages.pinned(mfn), mfn === g.root);
      }
    });

    test("pinning twice is -EINVAL with the counts unchanged", () => {
      const g = solo(width);
      const root = g.root;
      const rootBefore = g.counts(root);
      assert.ok(g.hv.mm.pages.pinned(root));
      assert.equal(g.pin(g.rootLevel, root), -E.EINVAL);
      assert.deepEqual(g.counts(root), rootBefore);
      assert.ok(g.hv.mm.pages.pinned(root));
      const t = g.newTable(PFN_T1, []);
      assert.equal(g.pin(1, t), 0);
      const pinned = g.counts(t);
      assert.equal(g.pin(1, t), -E.EINVAL);
      assert.deepEqual(g.counts(t), pinned);
      assert.ok(g.hv.mm.pages.pinned(t));
    });

    test("a table that fails validation is refused with its error and left untyped", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const a = g.mfn(PFN_A);
      const aBefore = g.counts(a);
      // Slot 0 takes a reference before slot 1 fails: it must be undone.
      const t = g.newTable(PFN_T1, [
        [0, a, RW],
        [1, other.mfn(PFN_A), RO],
      ]);
      assert.equal(g.pin(1, t), -E.EBUSY);
      assert.equal(g.hv.mm.pages.typeCount[t], 0);
      assert.ok(!g.hv.mm.pages.validated(t));
      assert.ok(!g.hv.mm.pages.pinned(t));
      assert.deepEqual(g.counts(a), aBefore);
    });

    test("a frame that is not the domain's is -EINVAL to pin or unpin", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const theirs = other.table(VA, 1);
      const before = other.counts(theirs);
      for (const mfn of [theirs, 0, hv.memory.nrFrames]) {
        assert.equal(g.pin(1, mfn), -E.EINVAL, `pin mfn ${mfn}`);
        assert.equal(g.unpin(mfn), -E.EINVAL, `unpin mfn ${mfn}`);
      }
      assert.equal(g.unpin(other.root), -E.EINVAL);
      assert.ok(hv.mm.pages.pinned(other.root));
      assert.deepEqual(other.counts(theirs), before);
    });

    test("UNPIN of a frame that is not pinned is -EINVAL", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      for (const mfn of [l1, g.mfn(PFN_A)]) {
        const before = g.counts(mfn);
        assert.equal(g.unpin(mfn), -E.EINVAL);
        assert.deepEqual(g.counts(mfn), before);
      }
    });

    if (width === 64) {
      test("PIN_L4_TABLE of a fresh L4; an empty one is valid", () => {
        const g = solo(width);
        const t = g.newTable(PFN_T1, []);
        assert.equal(g.pin(4, t), 0);
        assert.equal(g.hv.mm.pages.type[t], PGT.l4);
      });
    } else {
      test("PIN_L4_TABLE is ignored for a 32-bit guest, whatever it names", () => {
        const hv = newHypervisor();
        const g = guest(hv, width);
        const other = guest(hv, width);
        const t = g.newTable(PFN_T1, []);
        for (const mfn of [t, other.mfn(PFN_A), hv.memory.nrFrames]) assert.equal(g.pin(4, mfn), 0);
        assert.equal(hv.mm.pages.typeCount[t], 0);
        assert.ok(!hv.mm.pages.pinned(t));
      });

      test(
        "a PAE L3 sharing the L2 of another L3's Xen slot is -EINVAL",
        () => {
          const g = solo(width);
          g.copy(PFN_T1, g.root, 0, 4);
          const t = g.readOnly(PFN_T1);
          assert.equal(g.pin(3, t), -E.EINVAL);
          assert.equal(g.hv.mm.pages.typeCount[t], 0);
        },
      );
    }

    test("UNPIN of a vCPU's base pointer succeeds, but the vCPUs' references keep it a table", () => {
      const g = solo(width);
      const root = g.root;
      const before = g.counts(root);
      assert.equal(before.typeCount, 3); // the pin and two vCPUs
      assert.equal(g.unpin(root), 0);
      const p = g.hv.mm.pages;
      assert.ok(!p.pinned(root) && p.validated(root));
      assert.equal(p.level(root), g.rootLevel);
      assert.deepEqual(g.counts(root), { count: before.count - 1, typeCount: before.typeCount - 1 });
      // Still a table in use: no writable mapping of it.
      assert.equal(g.map(g.va(g.pfnOf(root)), root, RW), -E.EBUSY);
      assert.equal(g.v0.guestTable, root);
      assert.equal(g.unpin(root), -E.EINVAL);
      assert.equal(g.pin(g.rootLevel, root), 0);
      assert.deepEqual(g.counts(root), before);
    });

    test("a privileged domain pins another domain's table by naming it in foreigndom", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const d = guest(hv, width);
      const t = d.newTable(PFN_T1, []);
      assert.equal(p.pin(1, t), -E.EINVAL);
      assert.equal(p.pin(1, t, d.d.domid), 0);
      assert.ok(hv.mm.pages.pinned(t));
      assert.equal(p.ext([{ cmd: MMUEXT.UNPIN_TABLE, arg1: t }], d.d.domid), 0);
      assert.ok(!hv.mm.pages.pinned(t));
    });
  });

  describe(`mmuext_op base pointers, ${width}-bit guest`, () => {
    test("NEW_BASEPTR moves the root type reference and flushes the TLB", () => {
      const g = solo(width);
      const old = g.root;
      const oldBefore = g.counts(old);
      const nr = g.copyRoot(PFN_T1, PFN_T2);
      const nrBefore = g.counts(nr);
      g.v0.write32(g.va(PFN_A), MARK_A);
      const flushes = g.v0.tlb.flushes;
      assert.equal(g.newBase(nr), 0);
      assert.equal(g.v0.guestTable, nr);
      assert.equal(g.v1.guestTable, old);
      assert.ok(g.v0.tlb.flushes > flushes);
      assert.deepEqual(g.counts(old), { count: oldBefore.count - 1, typeCount: oldBefore.typeCount - 1 });
      assert.deepEqual(g.counts(nr), { count: nrBefore.count + 1, typeCount: 1 });
      assert.equal(g.hv.mm.pages.type[nr], g.rootLevel);
      assert.equal(g.v0.read32(g.va(PFN_A)), MARK_A);
      // Back again: the unpinned copy loses its last type reference and is torn down.
      assert.equal(g.newBase(old), 0);
      assert.deepEqual(g.counts(old), oldBefore);
      assert.deepEqual(g.counts(nr), nrBefore);
      assert.ok(!g.hv.mm.pages.validated(nr));
      if (width === 32) assert.equal(g.hv.mm.pages.typeCount[g.mfn(PFN_T2)], 0);
    });

    test("NEW_BASEPTR to the current root keeps the references and flushes this vCPU's TLB", () => {
      const g = solo(width);
      g.primeTlbs();
      assert.equal(g.map(VA, g.mfn(PFN_B), RW), 0);
      const before = g.counts(g.root);
      assert.equal(g.newBase(g.root), 0);
      assert.deepEqual(g.counts(g.root), before);
      assert.equal(g.v0.read32(VA), MARK_B);
      assert.equal(g.v1.read32(VA), MARK_A);
    });

    test("NEW_BASEPTR to a frame that is not the domain's is -EINVAL", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const old = g.root;
      for (const mfn of [other.root, 0, hv.memory.nrFrames]) {
        assert.equal(g.newBase(mfn), -E.EINVAL, `mfn ${mfn}`);
        assert.equal(g.done, 0);
      }
      assert.equal(g.v0.guestTable, old);
    });

    test("NEW_BASEPTR to a frame that is not a valid root is -EINVAL and leaves it untyped", () => {
      const g = solo(width);
      const old = g.root;
      // A data page mapped writable, and a table of another level.
      assert.equal(g.newBase(g.mfn(PFN_A)), -E.EINVAL);
      assert.equal(g.newBase(g.table(VA, 1)), -E.EINVAL);
      let bad: number;
      if (width === 64) {
        const l3 = g.table(VA, 3);
        const l3Before = g.counts(l3);
        bad = g.newTable(PFN_T1, [[0, l3, PDE | _PAGE_PWT]]);
        assert.equal(g.newBase(bad), -E.EINVAL);
        assert.deepEqual(g.counts(l3), l3Before);
      } else {
        // A PAE L3 must have its Xen slot (3) present.
        bad = g.newTable(PFN_T1, []);
        assert.equal(g.newBase(bad), -E.EINVAL);
      }
      assert.equal(g.hv.mm.pages.typeCount[bad], 0);
      assert.ok(!g.hv.mm.pages.validated(bad));
      assert.equal(g.v0.guestTable, old);
    });

    test("NEW_BASEPTR with foreigndom naming another domain is -EPERM, even for a privileged caller", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const d = guest(hv, width);
      const old = p.root;
      assert.equal(p.ext([{ cmd: MMUEXT.NEW_BASEPTR, arg1: d.root }], d.d.domid), -E.EPERM);
      assert.equal(p.ext([{ cmd: MMUEXT.NEW_BASEPTR, arg1: old }], d.d.domid), -E.EPERM);
      assert.equal(p.done, 0);
      assert.equal(p.v0.guestTable, old);
      assert.equal(d.v0.guestTable, d.root);
    });

    if (width === 64) {
      test("NEW_USER_BASEPTR takes an L4 reference, 0 drops it, a bad frame is -EINVAL", () => {
        const g = solo(width);
        const t = g.newTable(PFN_T1, []);
        assert.equal(g.ext([{ cmd: MMUEXT.NEW_USER_BASEPTR, arg1: t }]), 0);
        assert.equal(g.v0.guestTableUser, t);
        assert.equal(g.hv.mm.pages.type[t], PGT.l4);
        assert.equal(g.hv.mm.pages.typeCount[t], 1);
        assert.equal(g.ext([{ cmd: MMUEXT.NEW_USER_BASEPTR, arg1: g.mfn(PFN_A) }]), -E.EINVAL);
        assert.equal(g.v0.guestTableUser, t);
        assert.equal(g.ext([{ cmd: MMUEXT.NEW_USER_BASEPTR, arg1: 0 }]), 0);
        assert.equal(g.v0.guestTableUser, 0);
        assert.equal(g.hv.mm.pages.typeCount[t], 0);
      });
    } else {
      test("NEW_USER_BASEPTR is -EINVAL for a 32-bit guest", () => {
        const g = solo(width);
        assert.equal(g.ext([{ cmd: MMUEXT.NEW_USER_BASEPTR, arg1: g.root }]), -E.EINVAL);
        assert.equal(g.v0.guestTableUser, 0);
      });

      test(
        "NEW_USER_BASEPTR is -EINVAL for a 32-bit guest even with foreigndom naming another domain",
        () => {
          const hv = newHypervisor();
          const p = guest(hv, width, true);
          const d = guest(hv, width);
          assert.equal(p.ext([{ cmd: MMUEXT.NEW_USER_BASEPTR, arg1: 0 }], d.d.domid), -E.EINVAL);
        },
      );
    }
  });

  describe(`mmuext_op, other commands and errors, ${width}-bit guest`, () => {
    test("TLB_FLUSH_MULTI and INVLPG_MULTI with a bad vcpumask pointer are -EINVAL", () => {
      const g = solo(width);
      for (const cmd of [MMUEXT.TLB_FLUSH_MULTI, MMUEXT.INVLPG_MULTI]) {
        for (const ptr of width === 64 ? [BAD_PTR, XEN_VA[64]] : [BAD_PTR]) {
          assert.equal(g.ext([{ cmd, arg1: VA, arg2: ptr }]), -E.EINVAL);
          assert.equal(g.done, 0);
        }
      }
    });

    test("unknown commands are -ENOSYS; MARK_SUPER and UNMARK_SUPER -EOPNOTSUPP", () => {
      const g = solo(width);
      for (const cmd of [14, 21, 100, 0xffffffff]) assert.equal(g.ext([{ cmd }]), -E.ENOSYS, `cmd ${cmd}`);
      assert.equal(g.ext([{ cmd: MMUEXT.MARK_SUPER, arg1: g.mfn(PFN_A) }]), -E.EOPNOTSUPP);
      assert.equal(g.ext([{ cmd: MMUEXT.UNMARK_SUPER, arg1: g.mfn(PFN_A) }]), -E.EOPNOTSUPP);
    });

    test("foreigndom: unknown -ESRCH, itself by domid -ESRCH, another domain from a domU -EPERM", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const t = g.newTable(PFN_T1, []);
      // The whole call fails before any op runs, and pdone is left alone.
      for (const [dom, rc] of [
        [0x1234, -E.ESRCH],
        [g.d.domid, -E.ESRCH],
        [other.d.domid, -E.EPERM],
      ] as const) {
        assert.equal(g.pin(1, t, dom), rc, `foreigndom ${dom}`);
        assert.equal(g.done, SENTINEL);
      }
      assert.equal(hv.mm.pages.typeCount[t], 0);
    });

    test("a failing op stops the batch and pdone counts the ops done", () => {
      const g = solo(width);
      const t = g.newTable(PFN_T1, []);
      const flush = { cmd: MMUEXT.TLB_FLUSH_LOCAL };
      assert.equal(g.ext([flush, { cmd: MMUEXT.PIN_L1_TABLE, arg1: g.mfn(PFN_A) }, { cmd: MMUEXT.PIN_L1_TABLE, arg1: t }]), -E.EINVAL);
      assert.equal(g.done, 1);
      assert.ok(!g.hv.mm.pages.pinned(t));
      assert.equal(g.ext([flush, { cmd: MMUEXT.PIN_L1_TABLE, arg1: t }, flush]), 0);
      assert.equal(g.done, 3);
    });

    test("an op list outside the guest's address space is -EFAULT", () => {
      const g = solo(width);
      g.v0.write32(g.pdoneVa, SENTINEL);
      assert.equal(g.v0.hypercall(HYPERVISOR.mmuext_op, XEN_VA[width], 1, g.pdoneVa, DOMID_SELF), -E.EFAULT);
      // As for mmu_update, only the native check refuses it before pdone is written.
      if (width === 64) assert.equal(g.done, SENTINEL);
      assert.equal(g.v0.hypercall(HYPERVISOR.mmuext_op, BAD_PTR, 1, 0, DOMID_SELF), -E.EFAULT);
    });

    test(
      "an op list running into an unmapped page: -EFAULT and pdone counts the ops done",
      () => {
        const g = solo(width);
        const L = g.L.mmuext_op;
        const t = g.newTable(PFN_T1, []);
        assert.equal(g.map(VA, g.mfn(PFN_T2), RW), 0);
        const at = VA + 4096 - L.size;
        g.writeOps([{ cmd: MMUEXT.PIN_L1_TABLE, arg1: t }], at);
        g.v0.write32(g.pdoneVa, SENTINEL);
        assert.equal(g.v0.hypercall(HYPERVISOR.mmuext_op, at, 2, g.pdoneVa, DOMID_SELF), -E.EFAULT);
        assert.ok(g.hv.mm.pages.pinned(t));
        assert.equal(g.done, 1);
      },
    );

    test("a privileged caller naming another domain: flushes, SET_LDT and base pointers are -EPERM", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const d = guest(hv, width);
      const mask = p.mask([0]);
      for (const op of [
        { cmd: MMUEXT.TLB_FLUSH_LOCAL },
        { cmd: MMUEXT.INVLPG_LOCAL, arg1: VA },
        { cmd: MMUEXT.TLB_FLUSH_MULTI, arg2: mask },
        { cmd: MMUEXT.INVLPG_MULTI, arg1: VA, arg2: mask },
        { cmd: MMUEXT.TLB_FLUSH_ALL },
        { cmd: MMUEXT.INVLPG_ALL, arg1: VA },
        { cmd: MMUEXT.FLUSH_CACHE },
        { cmd: MMUEXT.FLUSH_CACHE_GLOBAL },
        { cmd: MMUEXT.SET_LDT, arg1: 0, arg2: 0 },
        ...(width === 64 ? [{ cmd: MMUEXT.NEW_USER_BASEPTR }] : []),
      ]) {
        assert.equal(p.ext([op], d.d.domid), -E.EPERM, `cmd ${op.cmd}`);
      }
    });

    test("CLEAR_PAGE zeroes a frame of its own; a table or a foreign frame is -EINVAL", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      g.v0.write32(g.va(PFN_A) + 64, MARK_A);
      assert.equal(g.ext([{ cmd: MMUEXT.CLEAR_PAGE, arg1: g.mfn(PFN_A) }]), 0);
      assert.equal(g.v0.read32(g.va(PFN_A) + 64), 0);
      const l1 = g.table(VA, 1);
      assert.equal(g.map(VA, g.mfn(PFN_B), RO), 0);
      assert.equal(g.ext([{ cmd: MMUEXT.CLEAR_PAGE, arg1: l1 }]), -E.EINVAL);
      assert.equal(g.mapped(l1, vaSlot), g.mfn(PFN_B));
      other.v0.write32(other.va(PFN_A), MARK_A);
      assert.equal(g.ext([{ cmd: MMUEXT.CLEAR_PAGE, arg1: other.mfn(PFN_A) }]), -E.EINVAL);
      assert.equal(other.v0.read32(other.va(PFN_A)), MARK_A);
    });

    test("COPY_PAGE copies between its own frames; a table destination or a foreign frame is -EINVAL", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      const a = g.mfn(PFN_A);
      const b = g.mfn(PFN_B);
      g.v0.write32(g.va(PFN_A) + 8, MARK_A);
      assert.equal(g.ext([{ cmd: MMUEXT.COPY_PAGE, arg1: b, arg2: a }]), 0);
      assert.equal(g.v0.read32(g.va(PFN_B) + 8), MARK_A);
      const before = g.counts(g.root);
      assert.equal(g.ext([{ cmd: MMUEXT.COPY_PAGE, arg1: g.root, arg2: a }]), -E.EINVAL);
      assert.deepEqual(g.counts(g.root), before);
      assert.equal(g.ext([{ cmd: MMUEXT.COPY_PAGE, arg1: b, arg2: other.mfn(PFN_A) }]), -E.EINVAL);
      assert.equal(g.ext([{ cmd: MMUEXT.COPY_PAGE, arg1: other.mfn(PFN_A), arg2: a }]), -E.EINVAL);
      // A table may be the source: reading it is harmless.
      assert.equal(g.ext([{ cmd: MMUEXT.COPY_PAGE, arg1: b, arg2: g.root }]), 0);
    });

    test("SET_LDT needs a page-aligned guest address and at most 8192 entries", () => {
      const g = solo(width);
      const set = (ptr: number, ents: number) => g.ext([{ cmd: MMUEXT.SET_LDT, arg1: ptr, arg2: ents }]);
      assert.equal(set(VA, 16), 0);
      assert.equal(g.v0.ldtBase, VA);
      assert.equal(g.v0.ldtEnts, 16);
      assert.equal(set(VA + 8, 16), -E.EINVAL);
      assert.equal(set(VA, 8193), -E.EINVAL);
      // Xen's own range (for a compat guest, see the test below).
      if (width === 64) assert.equal(set(XEN_VA[64], 16), -E.EINVAL);
      assert.equal(g.v0.ldtBase, VA);
      // No entries: the address does not matter.
      assert.equal(set(VA + 8, 0), 0);
      assert.equal(g.v0.ldtEnts, 0);
    });

    if (width === 32) {
      test(
        "SET_LDT takes an LDT above HYPERVISOR_VIRT_START_COMPAT: Xen checks only __addr_ok",
        () => {
          const g = solo(width);
          assert.equal(g.ext([{ cmd: MMUEXT.SET_LDT, arg1: XEN_VA[32], arg2: 16 }]), 0);
          assert.equal(g.v0.ldtBase, XEN_VA[32]);
        },
      );
    }

    test("FLUSH_CACHE needs access to I/O memory: -EACCES for a domU", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const g = guest(hv, width);
      for (const cmd of [MMUEXT.FLUSH_CACHE, MMUEXT.FLUSH_CACHE_GLOBAL]) {
        assert.equal(g.ext([{ cmd }]), -E.EACCES);
        assert.equal(p.ext([{ cmd }]), 0);
      }
    });
  });

  describe(`update_va_mapping, ${width}-bit guest`, () => {
    test("installs and replaces an entry, moving the references", () => {
      const g = solo(width);
      const a = g.mfn(PFN_A);
      const b = g.mfn(PFN_B);
      const aBefore = g.counts(a);
      const bBefore = g.counts(b);
      assert.equal(g.map(VA, a, RW), 0);
      assert.deepEqual(g.counts(a), { count: aBefore.count + 1, typeCount: aBefore.typeCount + 1 });
      assert.equal(g.map(VA, b, RO), 0);
      assert.deepEqual(g.counts(a), aBefore);
      assert.deepEqual(g.counts(b), { count: bBefore.count + 1, typeCount: bBefore.typeCount });
      assert.equal(g.uvm(VA, 0, 0), 0);
      assert.deepEqual(g.counts(b), bBefore);
    });

    test("a va with no L1 table is -EINVAL", () => {
      const g = solo(width);
      assert.equal(g.map(NO_L1_VA, g.mfn(PFN_A), RO), -E.EINVAL);
      if (width === 64) assert.equal(g.map(2 ** 46, g.mfn(PFN_A), RO), -E.EINVAL);
    });

    test("a va in Xen's range or non-canonical is -EINVAL", () => {
      const g = solo(width);
      const a = g.mfn(PFN_A);
      assert.equal(g.map(XEN_VA[width], a, RO), -E.EINVAL);
      if (width === 64) {
        assert.equal(g.map(2 ** 47, a, RO), -E.EINVAL);
        assert.equal(g.map(-(2 ** 47) - 4096, a, RO), -E.EINVAL);
      } else {
        assert.equal(g.map(0xfffff000, a, RO), -E.EINVAL);
      }
    });

    test("the entry is checked as mmu_update checks it", () => {
      const hv = newHypervisor();
      const g = guest(hv, width);
      const other = guest(hv, width);
      assert.equal(g.map(VA, g.mfn(PFN_A), RW | _PAGE_PWT), -E.EINVAL);
      assert.equal(g.map(VA, other.mfn(PFN_A), RO), -E.EBUSY);
      assert.equal(g.map(VA, g.root, RW), -E.EBUSY);
      assert.equal(g.map(VA, hv.memory.nrFrames, RO), -E.EPERM);
      assert.equal(g.mapped(g.table(VA, 1), vaSlot), -1);
    });

    test("a flush through a bad vcpumask pointer is -EFAULT, after the entry changed", () => {
      const g = solo(width);
      const l1 = g.table(VA, 1);
      assert.equal(g.map(VA, g.mfn(PFN_A), RO, BAD_PTR | UVMF.INVLPG), -E.EFAULT);
      assert.equal(g.mapped(l1, vaSlot), g.mfn(PFN_A));
      assert.equal(g.map(VA, g.mfn(PFN_B), RO, BAD_PTR | UVMF.TLB_FLUSH), -E.EFAULT);
      assert.equal(g.mapped(l1, vaSlot), g.mfn(PFN_B));
      // An entry that fails is not flushed for, so the bad mask is never read.
      assert.equal(g.map(VA, g.mfn(PFN_A), RO | _PAGE_PCD, BAD_PTR | UVMF.INVLPG), -E.EINVAL);
    });
  });

  describe(`TLB, ${width}-bit guest`, () => {
    test("without a flush the stale translation is still used, for loads and stores", () => {
      const g = solo(width);
      g.primeTlbs();
      const b = g.mfn(PFN_B);
      assert.equal(g.map(VA, b, RW), 0);
      assert.equal(walk(g.hv.memory, width, g.root, VA), b * 2 + 1);
      assert.equal(g.v0.read32(VA), MARK_A);
      g.v0.write32(VA + 4, 0x5151);
      assert.equal(g.v0.read32(g.va(PFN_A) + 4), 0x5151);
      assert.equal(g.v0.read32(g.va(PFN_B) + 4), 0);
    });

    /** Remaps VA to frame B with `flags` on the call. */
    const uvmf = (flags: (g: Guest) => number) => (g: Guest) => assert.equal(g.map(VA, g.mfn(PFN_B), RW, flags(g)), 0);
    /** Remaps VA to frame B without a flush (vCPU 1 still sees A), then flushes with an mmuext op. */
    const thenExt = (op: (g: Guest) => ExtOp) => (g: Guest) => {
      assert.equal(g.map(VA, g.mfn(PFN_B), RW), 0);
      assert.equal(g.v1.read32(VA), MARK_A);
      assert.equal(g.ext([op(g)]), 0);
    };

    const local: [string, (g: Guest) => void][] = [
      ["UVMF_INVLPG", uvmf(() => UVMF.INVLPG)],
      ["UVMF_TLB_FLUSH", uvmf(() => UVMF.TLB_FLUSH)],
      ["MMUEXT_INVLPG_LOCAL", thenExt(() => ({ cmd: MMUEXT.INVLPG_LOCAL, arg1: VA }))],
      ["MMUEXT_TLB_FLUSH_LOCAL", thenExt(() => ({ cmd: MMUEXT.TLB_FLUSH_LOCAL }))],
    ];
    for (const [name, remap] of local) {
      test(`${name} flushes vCPU 0 but not vCPU 1`, () => {
        const g = solo(width);
        g.primeTlbs();
        remap(g);
        assert.equal(g.v0.read32(VA), MARK_B);
        assert.equal(g.v1.read32(VA), MARK_A);
      });
    }

    test("MMUEXT_INVLPG_LOCAL of another page leaves this one", () => {
      const g = solo(width);
      g.primeTlbs();
      thenExt(() => ({ cmd: MMUEXT.INVLPG_LOCAL, arg1: VA2 }))(g);
      assert.equal(g.v0.read32(VA), MARK_A);
    });

    const remote: [string, (g: Guest) => void][] = [
      ["UVMF_INVLPG|UVMF_ALL", uvmf(() => UVMF.INVLPG | UVMF.ALL)],
      ["UVMF_TLB_FLUSH|UVMF_ALL", uvmf(() => UVMF.TLB_FLUSH | UVMF.ALL)],
      ["UVMF_INVLPG|UVMF_MULTI", uvmf((g) => g.mask([0, 1]) + UVMF.INVLPG)],
      ["UVMF_TLB_FLUSH|UVMF_MULTI", uvmf((g) => g.mask([0, 1]) + UVMF.TLB_FLUSH)],
      ["MMUEXT_TLB_FLUSH_ALL", thenExt(() => ({ cmd: MMUEXT.TLB_FLUSH_ALL }))],
      ["MMUEXT_INVLPG_ALL", thenExt(() => ({ cmd: MMUEXT.INVLPG_ALL, arg1: VA }))],
      ["MMUEXT_TLB_FLUSH_MULTI", thenExt((g) => ({ cmd: MMUEXT.TLB_FLUSH_MULTI, arg2: g.mask([0, 1]) }))],
      ["MMUEXT_INVLPG_MULTI", thenExt((g) => ({ cmd: MMUEXT.INVLPG_MULTI, arg1: VA, arg2: g.mask([0, 1]) }))],
    ];
    for (const [name, flush] of remote) {
      test(`${name} reaches vCPU 1`, () => {
        const g = solo(width);
        g.primeTlbs();
        flush(g);
        assert.equal(g.v0.read32(VA), MARK_B);
        assert.equal(g.v1.read32(VA), MARK_B);
      });
    }

    test("a MULTI mask without vCPU 1's bit leaves vCPU 1 stale", () => {
      const g = solo(width);
      g.primeTlbs();
      assert.equal(g.map(VA, g.mfn(PFN_B), RW, g.mask([0]) + UVMF.INVLPG), 0);
      assert.equal(g.v0.read32(VA), MARK_B);
      assert.equal(g.v1.read32(VA), MARK_A);
      assert.equal(g.ext([{ cmd: MMUEXT.TLB_FLUSH_MULTI, arg2: g.mask([0]) }]), 0);
      assert.equal(g.v1.read32(VA), MARK_A);
      assert.equal(g.ext([{ cmd: MMUEXT.TLB_FLUSH_MULTI, arg2: g.mask([1]) }]), 0);
      assert.equal(g.v1.read32(VA), MARK_B);
    });

    test("vCPU 1's own UVMF_INVLPG flushes vCPU 1, not vCPU 0", () => {
      const g = solo(width);
      g.primeTlbs();
      assert.equal(g.map(VA, g.mfn(PFN_B), RW, UVMF.INVLPG, g.v1), 0);
      assert.equal(g.v1.read32(VA), MARK_B);
      assert.equal(g.v0.read32(VA), MARK_A);
    });
  });

  describe(`multicall, ${width}-bit guest`, () => {
    test("every entry's result is written back and a failed entry does not stop the batch", () => {
      const g = solo(width);
      g.writeOps([{ cmd: 99 }], g.va(PFN_T3));
      const rc = g.multicall([
        g.uvmCall(VA, g.mfn(PFN_A), RO),
        g.uvmCall(NO_L1_VA, g.mfn(PFN_A), RO),
        { op: HYPERVISOR.mmuext_op, args: [g.va(PFN_T3), 1, 0, DOMID_SELF] },
        { op: 63, args: [] }, // no such hypercall
        g.uvmCall(VA2, g.mfn(PFN_B), RO),
      ]);
      assert.equal(rc, 0);
      assert.deepEqual(
        [0, 1, 2, 3, 4].map((i) => g.result(i)),
        [0, -E.EINVAL, -E.ENOSYS, -E.ENOSYS, 0],
      );
      const l1 = g.table(VA, 1);
      assert.equal(g.mapped(l1, vaSlot), g.mfn(PFN_A));
      assert.equal(g.mapped(l1, tableIndex(width, VA2, 1)), g.mfn(PFN_B));
      assert.equal(g.multicall([]), 0);
    });

    test("a nested multicall entry gets -EINVAL and the batch goes on", () => {
      const g = solo(width);
      const inner = g.va(PFN_T3);
      const rc = g.multicall([{ op: HYPERVISOR.multicall, args: [inner, 0] }, g.uvmCall(VA, g.mfn(PFN_A), RO)]);
      assert.equal(rc, 0);
      assert.equal(g.result(0), -E.EINVAL);
      assert.equal(g.result(1), 0);
      assert.equal(g.mapped(g.table(VA, 1), vaSlot), g.mfn(PFN_A));
      // Once the batch is over, multicall works again.
      assert.equal(g.multicall([g.uvmCall(VA2, g.mfn(PFN_B), RO)]), 0);
      assert.equal(g.result(0), 0);
    });

    test("an iret entry ends the batch and its result is the multicall's", () => {
      const g = solo(width);
      const rc = g.multicall([
        g.uvmCall(VA, g.mfn(PFN_A), RO),
        { op: HYPERVISOR.iret, args: [] },
        g.uvmCall(VA2, g.mfn(PFN_B), RO),
      ]);
      // There is no iret here, so its result is -ENOSYS; on Xen it would be whatever iret returns.
      assert.equal(rc, -E.ENOSYS);
      assert.equal(g.result(0), 0);
      assert.equal(g.result(1), -E.ENOSYS);
      // The last entry was never run: its result is still the SENTINEL (read as a signed long).
      assert.equal(g.result(2), width === 64 ? SENTINEL : SENTINEL | 0);
      assert.equal(g.mapped(g.table(VA, 1), tableIndex(width, VA2, 1)), -1);
    });

    test("a list outside the guest's address space is -EFAULT and runs nothing", () => {
      const g = solo(width);
      assert.equal(g.v0.hypercall(HYPERVISOR.multicall, XEN_VA[width], 1), -E.EFAULT);
      assert.equal(g.v0.hypercall(HYPERVISOR.multicall, BAD_PTR, 1), -E.EFAULT);
      assert.ok(!g.v0.inMulticall);
    });
  });

  describe(`domain destruction, ${width}-bit guest`, () => {
    test("destroying a domain frees every frame it owned, whatever its tables held", () => {
      const hv = newHypervisor();
      const free = hv.memory.framesFree;
      const g = guest(hv, width);
      const domid = g.d.domid;
      // Extra state to tear down: a mapping, a pinned L1, a linear entry, a second root.
      assert.equal(g.map(VA, g.mfn(PFN_A), RW), 0);
      const t = g.newTable(PFN_T1, [[0, g.mfn(PFN_B), RW]]);
      assert.equal(g.pin(1, t), 0);
      const l2 = g.table(VA, 2);
      assert.equal(g.mmu([pte(l2, L2_SLOT, l2, PDE_RO)]), 0);
      assert.equal(g.newBase(g.copyRoot(PFN_T2, PFN_T3)), 0);
      const frames = [...g.d.p2m, g.d.sharedInfoMfn];
      hv.destroyDomain(g.d);
      assert.equal(hv.domainById(domid), undefined);
      for (const mfn of frames) {
        assert.equal(hv.memory.owner[mfn], MFN_FREE, `mfn ${mfn}`);
        assert.equal(hv.mm.pages.count[mfn], 0);
        assert.equal(hv.mm.pages.typeCount[mfn], 0);
      }
      assert.equal(hv.memory.framesFree, free);
    });

    test("a frame another domain maps stays allocated until that mapping goes", () => {
      const hv = newHypervisor();
      const p = guest(hv, width, true);
      const d = guest(hv, width);
      const domid = d.d.domid;
      const f = d.mfn(PFN_A);
      const l1 = p.table(VA, 1);
      assert.equal(p.mmu([pte(l1, vaSlot, f, RO)], { foreigndom: domid }), 0);
      const others = [...d.d.p2m].filter((m) => m !== f);
      hv.destroyDomain(d.d);
      for (const mfn of others) assert.equal(hv.memory.owner[mfn], MFN_FREE);
      assert.equal(hv.memory.owner[f], domid);
      assert.equal(hv.mm.pages.count[f], 1);
      assert.equal(p.mmu([clear(l1, vaSlot)]), 0);
      assert.equal(hv.memory.owner[f], MFN_FREE);
      assert.equal(hv.mm.pages.count[f], 0);
    });
  });
}
