// Log-dirty mode (XEN_DOMCTL_shadow_op, xen/arch/x86/mm/paging.c): every write to a domain's
// pages while it is on is in the bitmap CLEAN hands back, whoever makes it: the guest through its
// TLB (entries cached before the enable included), Xen for copy_to_guest, FIFO events and the
// PV MMU's operations, the toolstack through privcmd, the kernel through views it keeps. The
// random test checks it two ways: every page whose bytes changed in a round is in the bitmap,
// and the bitmap holds nothing the round did not write. Then the domctl's errors, PEEK and CLEAN,
// the stats, Xen's handling of `pages`, the fix switch, and a busy guest end to end.
//
// Replay a failure with the seed and path fast-check prints:
//   FC_SEED=<seed> FC_PATH=<path> node --import tsx --test test/log_dirty.test.ts
// (FC_RUNS=<n> changes the number of runs.)

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { XEN_DOMCTL_SHADOW_ENABLE, XEN_DOMCTL_SHADOW_LOGDIRTY, XEN_DOMCTL_SHADOW_OP as OP } from "../src/abi/domctl.ts";
import { EVTCHN_OP, type GuestWidth, layoutFor, MMU_UPDATE } from "../src/abi/layout.ts";
import { pteHi, pteLo } from "../src/abi/x86.ts";
import { DOMID_SELF, XEN_ERRNO as E, EVTCHNOP, HYPERVISOR, MMU, MMUEXT, UVMF, VCPUOP, XENVER_version } from "../src/abi/xen.ts";
import { auditMm } from "../src/harness/audit_mm.ts";
import { buildMachine, parseScenario } from "../src/harness/scenario.ts";
import { DOMID_XEN, type ForeignMapping, openPrivcmd, PROT_READ, PROT_WRITE, type Privcmd } from "../src/hypervisor/domctl.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { ShadowOpResult } from "../src/hypervisor/log_dirty.ts";
import { findL1 } from "../src/hypervisor/tlb.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain } from "./harness.ts";

const RUNS = Number(process.env.FC_RUNS ?? 300);
const SEED = process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED);
const PATH = process.env.FC_PATH;

/** The scratch page op structs go in (BareDomain.arg). */
const ARG = 1;
/** Data pages the guest writes at random, then the FIFO control block and event array page. */
const DATA_FIRST = 2;
const DATA_END = 40;
const FIFO_CB = 40;
const FIFO_ARRAY = 41;
/** Zeroed pages mapped read-only, for pinning as L1 tables. */
const POOL = [44, 45, 46] as const;
/** The harness's empty L1 covers 2 MiB from here: its entries are what pt ops change. */
const PT_VA = 0x400000;
const PORTS = 4;

// ---- the machine: a privileged dom0 (the caller) and a 2-vCPU guest ---------------------------

class Rig {
  readonly hv: Hypervisor;
  readonly dom0: BareDomain;
  readonly g: BareDomain;
  readonly xc: Privcmd;
  readonly ports: number[] = [];

  constructor(
    readonly width: GuestWidth,
    disabledFixes: readonly string[] = [],
  ) {
    this.hv = new Hypervisor({ nrFrames: 4096, sched: { nrPcpus: 2, seed: 1 }, disabledFixes });
    this.dom0 = bareDomain(this.hv, { privileged: true, vcpus: 1, pages: 16 });
    this.g = bareDomain(this.hv, { width, vcpus: 2, pages: 64 });
    this.xc = openPrivcmd(this.hv, this.dom0.d.domid);
  }

  get domid(): number {
    return this.g.d.domid;
  }
  get nrPfns(): number {
    return this.g.d.p2m.length;
  }
  vcpu(i: number): Vcpu {
    return this.g.d.vcpus[i]!;
  }
  mfn(pfn: number): number {
    return this.g.d.p2m[pfn]!;
  }
  va(pfn: number): number {
    return this.g.va(pfn);
  }
  /** The pfn of the L1 that maps PT_VA. */
  get ptPfn(): number {
    return this.hv.memory.m2p[findL1(this.hv.memory, this.width, this.vcpu(0).guestTable, PT_VA)]!;
  }

  /** FIFO with PORTS IPI ports on vCPU 0; the pool pages zeroed and mapped read-only. */
  prepare(): void {
    const v = this.vcpu(0);
    assert.equal(this.evtchn(v, EVTCHNOP.init_control, [this.mfn(FIFO_CB), 0, 0, 0]), 0);
    assert.equal(this.evtchn(v, EVTCHNOP.expand_array, [this.mfn(FIFO_ARRAY), 0]), 0);
    for (let i = 0; i < PORTS; i++) {
      assert.equal(this.evtchn(v, EVTCHNOP.bind_ipi, [0]), 0);
      this.ports.push(v.read32(this.g.arg + EVTCHN_OP.bind_ipi.port));
    }
    for (const pfn of POOL) {
      this.hv.memory.u32(this.mfn(pfn)).fill(0);
      assert.equal(this.uvm(v, this.va(pfn), pfn, 0x61, UVMF.INVLPG | UVMF.ALL), 0);
    }
  }

  /** Both vCPUs write every data page and read the pool: TLB entries cached before the enable. */
  warmTlbs(): void {
    for (const v of this.g.d.vcpus) {
      for (let pfn = DATA_FIRST; pfn < DATA_END; pfn++) v.write32(this.va(pfn) + 8, v.read32(this.va(pfn) + 8));
      for (const pfn of POOL) v.read32(this.va(pfn));
    }
  }

  shadow(op: number, bitmap?: Uint8Array, pages?: number, mode = 0): ShadowOpResult | number {
    return this.xc.shadow_op(this.domid, op, bitmap, pages, mode);
  }

  /** CLEAN or PEEK of every pfn: the set bits as pfns, and the stats. */
  read(op: number): { pfns: Set<number>; res: ShadowOpResult } {
    const bm = new Uint8Array(Math.ceil(this.nrPfns / 8));
    const res = this.shadow(op, bm, this.nrPfns);
    assert.equal(typeof res, "object", `shadow_op ${op} gave ${String(res)}`);
    return { pfns: bits(bm), res: res as ShadowOpResult };
  }

  /** Every page of the guest, to compare after a round. */
  snapshot(): Uint8Array[] {
    return Array.from(this.g.d.p2m, (mfn) => this.hv.memory.u8(mfn).slice());
  }

  changedSince(snap: Uint8Array[]): number[] {
    const out: number[] = [];
    this.g.d.p2m.forEach((mfn, pfn) => {
      const now = this.hv.memory.u8(mfn);
      if (now.some((b, i) => b !== snap[pfn]![i])) out.push(pfn);
    });
    return out;
  }

  // ---- hypercalls, with their structs in the scratch page ----

  evtchn(v: Vcpu, cmd: number, words: readonly number[]): number {
    for (let i = 0; i < 8; i++) v.write32(this.g.arg + 4 * i, words[i] ?? 0);
    return v.hypercall(HYPERVISOR.event_channel_op, cmd, this.g.arg);
  }

  uvm(v: Vcpu, va: number, pfn: number | null, flags: number, uvmf: number): number {
    const lo = pfn === null ? 0 : pteLo(this.mfn(pfn), flags);
    const hi = pfn === null ? 0 : pteHi(this.mfn(pfn));
    return v.width === 64
      ? v.hypercall(HYPERVISOR.update_va_mapping, va, lo + hi * 2 ** 32, uvmf)
      : v.hypercall(HYPERVISOR.update_va_mapping, va, lo, hi, uvmf);
  }

  /** One mmu_update request (ptr and val as numbers below 2^53), for `foreigndom`. */
  mmuUpdate(v: Vcpu, ptr: number, val: number, foreigndom = DOMID_SELF, arg = this.g.arg): number {
    v.write64(arg + MMU_UPDATE.ptr, ptr);
    v.write64(arg + MMU_UPDATE.val, val);
    return v.hypercall(HYPERVISOR.mmu_update, arg, 1, 0, foreigndom);
  }

  ptEntry(v: Vcpu, slot: number, pfn: number | null, flags: number): number {
    const l1 = this.mfn(this.ptPfn);
    const val = pfn === null ? 0 : pteLo(this.mfn(pfn), flags) + pteHi(this.mfn(pfn)) * 2 ** 32;
    const rc = this.mmuUpdate(v, l1 * 4096 + slot * 8 + MMU.NORMAL_PT_UPDATE, val);
    this.mmuext(v, MMUEXT.TLB_FLUSH_ALL);
    return rc;
  }

  mmuext(v: Vcpu, cmd: number, arg1 = 0, arg2 = 0): number {
    const L = layoutFor(v.width).mmuext_op;
    const at = this.g.arg + 0x100;
    v.write32(at + L.cmd, cmd);
    const put = (off: number, x: number) => (v.width === 64 ? v.write64(at + off, x) : v.write32(at + off, x));
    put(L.arg1, arg1);
    put(L.arg2, arg2);
    return v.hypercall(HYPERVISOR.mmuext_op, at, 1, 0, DOMID_SELF);
  }
}

function bits(bm: Uint8Array): Set<number> {
  const out = new Set<number>();
  for (let i = 0; i < bm.length * 8; i++) if (bm[i >> 3]! & (1 << (i & 7))) out.add(i);
  return out;
}

const sorted = (s: Iterable<number>) => [...s].sort((a, b) => a - b);

// ---- the random test ---------------------------------------------------------------------------

type Op =
  | { k: "write"; v: number; pfn: number; off: number; size: 1 | 4 | 8; value: number }
  | { k: "read"; v: number; pfn: number; off: number }
  | { k: "runstate"; v: number; pfn: number; off: number }
  | { k: "send"; v: number; port: number }
  | { k: "unmask"; port: number }
  | { k: "pt"; v: number; slot: number; pfn: number | null; rw: boolean; via: "uvm" | "mmu" }
  /** Pool page t, or (t = POOL.length) the L1 in use at PT_VA. */
  | { k: "pin"; t: number }
  | { k: "unpin"; t: number }
  | { k: "clear"; pfn: number }
  | { k: "copy"; dst: number; src: number }
  | { k: "machphys"; pfn: number }
  | { k: "map"; pfn: number; rw: boolean }
  | { k: "fwrite"; i: number; word: number; value: number }
  | { k: "unmap"; i: number }
  | { k: "keep"; v: number; pfn: number }
  | { k: "kwrite"; i: number; word: number; value: number }
  | { k: "peek" }
  | { k: "clean" }
  | { k: "cycle" };

const dataPfn = fc.integer({ min: DATA_FIRST, max: DATA_END - 1 });
const vcpuIdx = fc.integer({ min: 0, max: 1 });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ k: fc.constant("write" as const), v: vcpuIdx, pfn: dataPfn, off: fc.integer({ min: 0, max: 4095 }), size: fc.constantFrom(1 as const, 4 as const, 8 as const), value: u32 }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant("read" as const), v: vcpuIdx, pfn: fc.integer({ min: DATA_FIRST, max: POOL[2] }), off: fc.integer({ min: 0, max: 1023 }).map((w) => w * 4) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("runstate" as const), v: vcpuIdx, pfn: dataPfn, off: fc.integer({ min: 0, max: 4032 }) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("send" as const), v: vcpuIdx, port: fc.integer({ min: 0, max: PORTS - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("unmask" as const), port: fc.integer({ min: 0, max: PORTS - 1 }) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant("pt" as const),
      v: vcpuIdx,
      slot: fc.integer({ min: 0, max: 15 }),
      pfn: fc.option(dataPfn, { nil: null }),
      rw: fc.boolean(),
      via: fc.constantFrom("uvm" as const, "mmu" as const),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("pin" as const), t: fc.integer({ min: 0, max: POOL.length }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("unpin" as const), t: fc.integer({ min: 0, max: POOL.length }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("clear" as const), pfn: dataPfn }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("copy" as const), dst: dataPfn, src: dataPfn }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("machphys" as const), pfn: dataPfn }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("map" as const), pfn: dataPfn, rw: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("fwrite" as const), i: fc.nat(7), word: fc.nat(1023), value: u32 }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("unmap" as const), i: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("keep" as const), v: vcpuIdx, pfn: dataPfn }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("kwrite" as const), i: fc.nat(7), word: fc.nat(1023), value: u32 }) },
  { weight: 1, arbitrary: fc.constant({ k: "peek" as const }) },
  { weight: 2, arbitrary: fc.constant({ k: "clean" as const }) },
  { weight: 1, arbitrary: fc.constant({ k: "cycle" as const }) },
);

/** What the test knows the bitmap must hold, may hold, and what it must count. */
class Expect {
  /** Pages surely written (their bits set) since the bitmap was last cleaned or freed. */
  must = new Set<number>();
  /** Pages Xen may or may not write, depending on its queues (the FIFO control block). */
  may = new Set<number>();
  /** Pages the kernel keeps mapped, and writable foreign mappings: reported at every CLEAN and PEEK. */
  readonly kept = new Set<number>();
  readonly maps: { m: ForeignMapping; pfn: number; rw: boolean }[] = [];
  readonly views: Uint32Array[] = [];
  pinned = new Set<number>();
  /** Dirty and fault counts carried over an OFF (Xen frees the bits, not the counts). */
  carriedDirty = 0;
  carriedFaults = 0;
  /** Guest writes that found their page clean (each must fault), and ops run, since the last CLEAN. */
  faultsAtLeast = 0;
  ops = 0;
}

function runOps(width: GuestWidth, ops: readonly Op[]): void {
  const r = new Rig(width);
  r.prepare();
  r.warmTlbs();
  assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
  const x = new Expect();
  let snap = r.snapshot();
  const arg = () => x.must.add(ARG);

  const check = (op: number, where: string) => {
    for (const p of x.kept) x.must.add(p);
    for (const { pfn, rw } of x.maps) if (rw) x.must.add(pfn);
    const { pfns, res } = r.read(op);
    const missing = sorted(x.must).filter((p) => !pfns.has(p));
    const extra = sorted(pfns).filter((p) => !x.must.has(p) && !x.may.has(p));
    assert.deepEqual(missing, [], `${where}: pages written but not in the bitmap`);
    assert.deepEqual(extra, [], `${where}: pages in the bitmap that nothing wrote`);
    assert.equal(res.pages, r.nrPfns, `${where}: pages comes back as given`);
    assert.equal(res.dirtyCount, x.carriedDirty + pfns.size, `${where}: dirty_count counts the bits set`);
    assert.ok(res.faultCount >= x.carriedFaults + x.faultsAtLeast, `${where}: fault_count ${res.faultCount} < ${x.faultsAtLeast} writes to clean pages`);
    assert.ok(res.faultCount <= x.carriedFaults + 8 * x.ops, `${where}: fault_count ${res.faultCount} after ${x.ops} ops`);
    if (op === OP.CLEAN) {
      const unseen = r.changedSince(snap).filter((p) => !pfns.has(p));
      assert.deepEqual(unseen, [], `${where}: pages changed but not in the bitmap`);
      assert.deepEqual(auditMm(r.hv, new Map()), [], `${where}: the auditor`);
      x.must = new Set();
      x.may = new Set();
      x.carriedDirty = 0;
      x.carriedFaults = 0;
      x.faultsAtLeast = 0;
      x.ops = 0;
      snap = r.snapshot();
    }
    return res;
  };

  /** A guest write of `size` bytes at `va`: its pages are dirty, and a clean one must fault. */
  const guestWrite = (v: Vcpu, va: number, size: number, value: number) => {
    const first = Math.floor((va - r.va(0)) / 4096);
    const last = Math.floor((va + size - 1 - r.va(0)) / 4096);
    for (let p = first; p <= last; p++) {
      if (!x.must.has(p) && !x.may.has(p)) x.faultsAtLeast++;
      x.must.add(p);
    }
    if (size === 1) v.write8(va, value & 0xff);
    else if (size === 4) v.write32(va, value);
    else v.write64(va, value * 0x10000 + (value & 0xffff));
  };

  ops.forEach((op, n) => {
    const where = `op ${n} ${JSON.stringify(op)}`;
    x.ops++;
    switch (op.k) {
      case "write":
        guestWrite(r.vcpu(op.v), r.va(op.pfn) + op.off, op.size, op.value);
        break;
      case "read":
        r.vcpu(op.v).read32(r.va(op.pfn) + op.off);
        break;
      case "runstate":
        // copy_to_guest of a vcpu_runstate_info, straight into the page.
        assert.equal(r.vcpu(op.v).hypercall(HYPERVISOR.vcpu_op, VCPUOP.get_runstate_info, op.v, r.va(op.pfn) + op.off), 0, where);
        x.must.add(op.pfn);
        break;
      case "send":
      case "unmask":
        arg();
        assert.equal(r.evtchn(r.vcpu(op.k === "send" ? op.v : 0), op.k === "send" ? EVTCHNOP.send : EVTCHNOP.unmask, [r.ports[op.port]!]), 0, where);
        x.must.add(FIFO_ARRAY);
        x.may.add(FIFO_CB);
        break;
      case "pt": {
        const v = r.vcpu(op.v);
        const flags = op.rw ? 0x63 : 0x61;
        const va = PT_VA + op.slot * 4096;
        if (op.via === "mmu") arg();
        const rc = op.via === "uvm" ? r.uvm(v, va, op.pfn, flags, UVMF.INVLPG | UVMF.ALL) : r.ptEntry(v, op.slot, op.pfn, flags);
        assert.equal(rc, 0, where);
        x.must.add(r.ptPfn);
        break;
      }
      case "pin":
      case "unpin": {
        const t = POOL[op.t] ?? r.ptPfn;
        arg();
        const rc = r.mmuext(r.vcpu(0), op.k === "pin" ? MMUEXT.PIN_L1_TABLE : MMUEXT.UNPIN_TABLE, r.mfn(t));
        const ok = op.k === "pin" ? !x.pinned.has(t) : x.pinned.has(t);
        assert.equal(rc, ok ? 0 : -E.EINVAL, where);
        if (ok) {
          x.must.add(t);
          if (op.k === "pin") x.pinned.add(t);
          else x.pinned.delete(t);
        }
        break;
      }
      case "clear":
        arg();
        assert.equal(r.mmuext(r.vcpu(0), MMUEXT.CLEAR_PAGE, r.mfn(op.pfn)), 0, where);
        x.must.add(op.pfn);
        break;
      case "copy":
        arg();
        assert.equal(r.mmuext(r.vcpu(0), MMUEXT.COPY_PAGE, r.mfn(op.dst), r.mfn(op.src)), 0, where);
        x.must.add(op.dst);
        break;
      case "machphys":
        arg();
        assert.equal(r.mmuUpdate(r.vcpu(0), r.mfn(op.pfn) * 4096 + MMU.MACHPHYS_UPDATE, op.pfn), 0, where);
        x.must.add(op.pfn);
        break;
      case "map": {
        const m = r.xc.map_foreign_pages(r.domid, op.rw ? PROT_READ | PROT_WRITE : PROT_READ, [r.mfn(op.pfn)]);
        assert.ok(typeof m === "object", where);
        x.maps.push({ m, pfn: op.pfn, rw: op.rw });
        if (op.rw) x.must.add(op.pfn);
        break;
      }
      case "fwrite": {
        const w = x.maps.filter((e) => e.rw)[op.i];
        if (w) w.m.u32(0)[op.word] = op.value;
        break;
      }
      case "unmap": {
        const e = x.maps[op.i];
        if (!e) break;
        e.m.unmap();
        x.maps.splice(op.i, 1);
        break;
      }
      case "keep":
        x.views.push(r.vcpu(op.v).mapPageWords(r.va(op.pfn)));
        x.kept.add(op.pfn);
        x.must.add(op.pfn);
        break;
      case "kwrite": {
        const view = x.views[op.i];
        if (view) view[op.word] = op.value;
        break;
      }
      case "peek":
        check(OP.PEEK, where);
        break;
      case "clean":
        check(OP.CLEAN, where);
        break;
      case "cycle": {
        // OFF frees the bits but keeps the counts; ENABLE starts a new bitmap.
        const res = check(OP.PEEK, where);
        assert.equal(r.shadow(OP.OFF), 0, where);
        assert.equal(r.shadow(OP.ENABLE, undefined, 0, XEN_DOMCTL_SHADOW_ENABLE.LOG_DIRTY), 0, where);
        x.must = new Set();
        x.may = new Set();
        x.carriedDirty = res.dirtyCount;
        x.carriedFaults = res.faultCount;
        x.faultsAtLeast = 0;
        x.ops = 0;
        snap = r.snapshot();
        break;
      }
    }
  });
  check(OP.CLEAN, "the last CLEAN");
}

describe("every write to a log-dirty domain's pages is in the bitmap, and nothing else", () => {
  for (const width of [64, 32] as const) {
    const replay = "replay: FC_SEED=<seed> FC_PATH=<path> node --import tsx --test test/log_dirty.test.ts";
    test(`${width}-bit guest: ${RUNS} fast-check runs of random guest, Xen, privcmd and kept-view writes (${replay})`, () => {
      const params: fc.Parameters<[Op[]]> = { numRuns: RUNS };
      if (SEED !== undefined) params.seed = SEED;
      if (PATH !== undefined) params.path = PATH;
      fc.assert(
        fc.property(fc.array(opArb, { minLength: 1, maxLength: 50 }), (ops) => runOps(width, ops)),
        params,
      );
    });
  }
});

// ---- the domctl ----------------------------------------------------------------------------------

describe("XEN_DOMCTL_shadow_op as Xen 4.17's paging_domctl answers it", () => {
  test("callers and targets: -EPERM unprivileged, -ESRCH unknown, -EINVAL on itself or without vCPUs", () => {
    const r = new Rig(64);
    const domu = openPrivcmd(r.hv, r.domid);
    assert.equal(domu.shadow_op(r.dom0.d.domid, OP.ENABLE_LOGDIRTY), -E.EPERM);
    assert.equal(domu.shadow_op(r.domid, OP.PEEK), -E.EPERM);
    assert.equal(r.xc.shadow_op(77, OP.ENABLE_LOGDIRTY), -E.ESRCH);
    assert.equal(r.xc.shadow_op(r.dom0.d.domid, OP.ENABLE_LOGDIRTY), -E.EINVAL, "dom0 on itself");
    const empty = r.xc.createdomain({ maxVcpus: 1, maxEvtchnPort: 63 }, r.g.image);
    assert.ok(empty > 0);
    assert.equal(r.xc.shadow_op(empty, OP.ENABLE_LOGDIRTY), -E.EINVAL, "no vCPUs yet");
    // Xen itself (DOMID_XEN) may, as for every domctl.
    assert.equal(openPrivcmd(r.hv, DOMID_XEN).shadow_op(r.domid, OP.ENABLE_LOGDIRTY), 0);
  });

  test("ENABLE twice is -EINVAL; OFF when off is 0; unknown ops and CLEAN modes are -EINVAL; shadow modes -EOPNOTSUPP", () => {
    const r = new Rig(64);
    assert.equal(r.shadow(OP.OFF), 0);
    assert.equal(r.shadow(OP.ENABLE, undefined, 0, XEN_DOMCTL_SHADOW_ENABLE.LOG_DIRTY), 0);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), -E.EINVAL);
    assert.equal(r.shadow(OP.ENABLE, undefined, 0, XEN_DOMCTL_SHADOW_ENABLE.LOG_DIRTY), -E.EINVAL);
    assert.equal(r.shadow(OP.CLEAN, new Uint8Array(16), 128, 2), -E.EINVAL);
    assert.equal(typeof r.shadow(OP.PEEK, new Uint8Array(16), 128, XEN_DOMCTL_SHADOW_LOGDIRTY.FINAL), "object");
    assert.equal(r.shadow(99), -E.EINVAL);
    assert.equal(r.shadow(OP.ENABLE_TEST), -E.EOPNOTSUPP);
    assert.equal(r.shadow(OP.ENABLE, undefined, 0, XEN_DOMCTL_SHADOW_ENABLE.REFCOUNT), -E.EOPNOTSUPP);
    assert.equal(r.shadow(OP.CLEAN, new Uint8Array(16), -1), -E.EINVAL);
    assert.equal(r.shadow(OP.OFF), 0);
    assert.equal(r.shadow(OP.OFF), 0);
    assert.equal(r.hv.logDirty.active, 0);
  });

  test("CLEAN and PEEK while off: 0, an all-zero bitmap, and the counts since the last CLEAN (Xen checks no mode)", () => {
    const r = new Rig(64);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    r.vcpu(0).write32(r.va(5), 1);
    assert.equal(r.shadow(OP.OFF), 0);
    const bm = new Uint8Array(16).fill(0xff);
    const res = r.shadow(OP.CLEAN, bm, 128);
    assert.deepEqual(res, { pages: 128, faultCount: 1, dirtyCount: 1 });
    assert.deepEqual([...bm], new Array(16).fill(0));
    assert.deepEqual(r.shadow(OP.PEEK, bm, 128), { pages: 128, faultCount: 0, dirtyCount: 0 });
  });

  test("PEEK leaves bits and counts; CLEAN hands them back and resets them", () => {
    const r = new Rig(64);
    r.warmTlbs();
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    for (const pfn of [3, 9, 30]) r.vcpu(1).write32(r.va(pfn) + 100, pfn);
    for (let i = 0; i < 2; i++) {
      const { pfns, res } = r.read(OP.PEEK);
      assert.deepEqual(sorted(pfns), [3, 9, 30]);
      assert.equal(res.dirtyCount, 3);
    }
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [3, 9, 30]);
    const again = r.read(OP.CLEAN);
    assert.deepEqual(sorted(again.pfns), []);
    assert.deepEqual(again.res, { pages: r.nrPfns, faultCount: 0, dirtyCount: 0 });
  });

  test("stats: a guest write fault per clean page (cached TLB entries included), dirty_count per new bit", () => {
    const r = new Rig(64);
    r.warmTlbs();
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    const v = r.vcpu(0);
    // A writable entry cached before the enable faults once; the page is then writable.
    for (let i = 0; i < 5; i++) v.write32(r.va(4) + 4 * i, i);
    v.write8(r.va(6) + 3, 1);
    v.write64(r.va(7) + 16, 2 ** 40);
    // Filled by a read while clean: cached write-protected, and the write faults.
    v.tlb.flushOne(r.va(8));
    v.read32(r.va(8));
    v.write32(r.va(8), 1);
    // Xen marks without a fault (the guest's struct write to the scratch page faults: the 5th).
    assert.equal(r.mmuext(v, MMUEXT.CLEAR_PAGE, r.mfn(9)), 0);
    assert.deepEqual(r.read(OP.PEEK).res, { pages: r.nrPfns, faultCount: 5, dirtyCount: 6 });
    // A page already dirty: a fresh TLB entry to it is writable at once (no fault).
    r.hv.mm.flushTlb(v.tlb);
    v.write32(r.va(4), 7);
    v.write32(r.va(9), 7);
    assert.deepEqual(r.read(OP.CLEAN).res, { pages: r.nrPfns, faultCount: 5, dirtyCount: 6 });
    // After CLEAN every writable entry is write-protected again.
    v.write32(r.va(4), 8);
    assert.deepEqual(r.read(OP.PEEK).res, { pages: r.nrPfns, faultCount: 1, dirtyCount: 1 });
  });

  test("pages: whole bytes copied, out as given; CLEAN clears whole 4 KiB leaves; a short buffer faults", () => {
    const r = new Rig(64);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    const v = r.vcpu(0);
    for (const pfn of [2, 14, 20]) v.write32(r.va(pfn), 1);
    // 13 pfns asked: two bytes come back (bit 14 with them); the leaf is cleared whole (bit 20 too).
    const bm = new Uint8Array(4);
    assert.deepEqual(r.shadow(OP.CLEAN, bm, 13), { pages: 13, faultCount: 3, dirtyCount: 3 });
    assert.deepEqual([...bm], [0b100, 0b0100_0000, 0, 0]);
    assert.deepEqual(sorted(r.read(OP.PEEK).pfns), []);
    // A bitmap shorter than `pages` says: copied up to its end, then -EFAULT, nothing reset.
    for (const pfn of [3, 30]) v.write32(r.va(pfn), 2);
    const short = new Uint8Array(2);
    assert.equal(r.shadow(OP.CLEAN, short, 64), -E.EFAULT);
    assert.deepEqual([...short], [0b1000, 0]);
    assert.deepEqual(sorted(r.read(OP.PEEK).pfns), [3, 30]);
    // No bitmap: pages 0 walks nothing (only the counts go); pages given clears what they cover.
    assert.deepEqual(r.shadow(OP.CLEAN), { pages: 0, faultCount: 2, dirtyCount: 2 });
    assert.deepEqual(sorted(r.read(OP.PEEK).pfns), [3, 30]);
    assert.deepEqual(r.shadow(OP.CLEAN, undefined, 2 ** 50), { pages: 2 ** 42, faultCount: 0, dirtyCount: 0 });
    assert.deepEqual(sorted(r.read(OP.PEEK).pfns), []);
    // More pages than the domain has: Xen 4.17 does not clamp to the p2m, the bits are zero.
    const big = new Uint8Array(8192).fill(0xff);
    assert.deepEqual(r.shadow(OP.PEEK, big, 65536), { pages: 65536, faultCount: 0, dirtyCount: 0 });
    assert.ok(big.every((b) => b === 0));
  });

  test("GET_ALLOCATION and SET_ALLOCATION record the shadow pool; 0 is refused while log-dirty is on", () => {
    const r = new Rig(64);
    assert.equal((r.xc.shadow_op(r.domid, OP.SET_ALLOCATION, undefined, 0, 0, 8) as ShadowOpResult).mb, 8);
    assert.equal((r.shadow(OP.GET_ALLOCATION) as ShadowOpResult).mb, 8);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    assert.equal(r.xc.shadow_op(r.domid, OP.SET_ALLOCATION, undefined, 0, 0, 0), -E.EINVAL);
  });

  test("destroying a domain drops its log-dirty state", () => {
    const r = new Rig(64);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    r.vcpu(0).write32(r.va(3), 1);
    assert.equal(r.hv.logDirty.active, 1);
    assert.equal(r.xc.destroydomain(r.domid), 0);
    assert.equal(r.hv.logDirty.active, 0);
    assert.equal(r.shadow(OP.PEEK), -E.ESRCH);
  });
});

// ---- each of Xen's writes, alone in a round ------------------------------------------------------

describe("Xen's own writes into guest pages are marked, each alone in a round", () => {
  /** Runs `prep` (struct writes), cleans, runs `act`, and returns the pfns the next CLEAN gives. */
  function alone(r: Rig, prep: () => void, act: () => void): number[] {
    prep();
    r.read(OP.CLEAN);
    act();
    return sorted(r.read(OP.CLEAN).pfns);
  }

  for (const width of [64, 32] as const) {
    test(`${width}-bit: copy_to_guest, multicall results, FIFO, mmu_update, update_va_mapping, pin, unpin, clear, copy, machphys`, () => {
      const r = new Rig(width);
      r.prepare();
      assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
      const v = r.vcpu(0);
      const L = layoutFor(width);
      const arg = r.g.arg;
      assert.deepEqual(
        alone(r, () => {}, () => assert.equal(v.hypercall(HYPERVISOR.vcpu_op, VCPUOP.get_runstate_info, 1, r.va(12) + 40), 0)),
        [12],
        "copy_to_guest",
      );
      const list = r.va(13);
      assert.deepEqual(
        alone(
          r,
          () => {
            v.write32(list + L.multicall_entry.op, HYPERVISOR.xen_version);
            v.write32(list + L.multicall_entry.args, XENVER_version);
          },
          () => assert.equal(v.hypercall(HYPERVISOR.multicall, list, 1), 0),
        ),
        [13],
        "multicall result",
      );
      const send = () => assert.equal(v.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.send, arg), 0);
      const sendPrep = (port: number) => () => v.write32(arg, r.ports[port]!);
      assert.deepEqual(alone(r, sendPrep(0), send), [FIFO_CB, FIFO_ARRAY], "FIFO: the first event links onto an empty queue");
      assert.deepEqual(alone(r, sendPrep(1), send), [FIFO_ARRAY], "FIFO: the next links behind it");
      const ptPfn = r.ptPfn;
      const l1 = r.mfn(ptPfn);
      const pte = pteLo(r.mfn(20), 0x63) + pteHi(r.mfn(20)) * 2 ** 32;
      assert.deepEqual(
        alone(
          r,
          () => {
            v.write64(arg + MMU_UPDATE.ptr, l1 * 4096 + 3 * 8);
            v.write64(arg + MMU_UPDATE.val, pte);
          },
          () => assert.equal(v.hypercall(HYPERVISOR.mmu_update, arg, 1, 0, DOMID_SELF), 0),
        ),
        [ptPfn],
        "mmu_update",
      );
      assert.deepEqual(alone(r, () => {}, () => assert.equal(r.uvm(v, PT_VA + 5 * 4096, 21, 0x61, UVMF.INVLPG), 0)), [ptPfn], "update_va_mapping");
      const ext = (cmd: number, a1: number, a2 = 0) => {
        const at = arg + 0x100;
        const put = (off: number, x: number) => (width === 64 ? v.write64(at + off, x) : v.write32(at + off, x));
        return [
          () => {
            v.write32(at + L.mmuext_op.cmd, cmd);
            put(L.mmuext_op.arg1, a1);
            put(L.mmuext_op.arg2, a2);
          },
          () => assert.equal(v.hypercall(HYPERVISOR.mmuext_op, at, 1, 0, DOMID_SELF), 0),
        ] as const;
      };
      assert.deepEqual(alone(r, ...ext(MMUEXT.PIN_L1_TABLE, r.mfn(POOL[0]))), [POOL[0]], "pin");
      assert.deepEqual(alone(r, ...ext(MMUEXT.UNPIN_TABLE, r.mfn(POOL[0]))), [POOL[0]], "unpin");
      // A table already in use: no validation, only the pin and the unpin mark it.
      assert.deepEqual(alone(r, ...ext(MMUEXT.PIN_L1_TABLE, l1)), [ptPfn], "pin of a table in use");
      assert.deepEqual(alone(r, ...ext(MMUEXT.UNPIN_TABLE, l1)), [ptPfn], "unpin of a table in use");
      // An L2 entry to a fresh L1: validation marks the L1 (type count 0 -> 1), and 1 -> 0 again.
      const pages = r.hv.mm.pages;
      const l2 = r.g.d.p2m.find((mfn) => pages.level(mfn) === 2 && r.hv.memory.u32(mfn).some((w, i) => i % 2 === 0 && (w & 1) !== 0 && w >>> 12 === l1))!;
      const l2Pfn = r.hv.memory.m2p[l2]!;
      const l2Entry = (pfn: number | null) => [
        () => {
          v.write64(arg + MMU_UPDATE.ptr, l2 * 4096 + 10 * 8);
          v.write64(arg + MMU_UPDATE.val, pfn === null ? 0 : pteLo(r.mfn(pfn), 0x67) + pteHi(r.mfn(pfn)) * 2 ** 32);
        },
        () => assert.equal(v.hypercall(HYPERVISOR.mmu_update, arg, 1, 0, DOMID_SELF), 0),
      ] as const;
      assert.deepEqual(alone(r, ...l2Entry(POOL[1])), sorted([l2Pfn, POOL[1]]), "an L1 validated");
      assert.deepEqual(alone(r, ...l2Entry(null)), sorted([l2Pfn, POOL[1]]), "an L1 devalidated");
      assert.deepEqual(alone(r, ...ext(MMUEXT.CLEAR_PAGE, r.mfn(22))), [22], "clear_page");
      assert.deepEqual(alone(r, ...ext(MMUEXT.COPY_PAGE, r.mfn(23), r.mfn(24))), [23], "copy_page");
      assert.deepEqual(
        alone(
          r,
          () => {
            v.write64(arg + MMU_UPDATE.ptr, r.mfn(25) * 4096 + MMU.MACHPHYS_UPDATE);
            v.write64(arg + MMU_UPDATE.val, 25);
          },
          () => assert.equal(v.hypercall(HYPERVISOR.mmu_update, arg, 1, 0, DOMID_SELF), 0),
        ),
        [25],
        "machphys_update",
      );
      assert.deepEqual(auditMm(r.hv, new Map()), []);
    });
  }

  test("a fix switched off: without logdirty-pt-update, mmu_update and update_va_mapping go unseen", () => {
    assert.throws(() => new Rig(64, ["no-such-fix"]), /unknown hypervisor fix 'no-such-fix' \(known: logdirty-pt-update\)/);
    for (const off of [false, true]) {
      const r = new Rig(64, off ? ["logdirty-pt-update"] : []);
      assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
      const v = r.vcpu(0);
      const ptPfn = r.ptPfn;
      r.read(OP.CLEAN);
      assert.equal(r.uvm(v, PT_VA, 20, 0x63, UVMF.INVLPG), 0);
      const snap = r.snapshot();
      assert.equal(r.uvm(v, PT_VA + 4096, 21, 0x63, UVMF.INVLPG), 0);
      assert.deepEqual(r.changedSince(snap), [ptPfn], "the L1 changed");
      assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), off ? [] : [ptPfn], off ? "unseen without the fix" : "seen");
      // The other classes are unaffected.
      assert.equal(r.mmuext(v, MMUEXT.CLEAR_PAGE, r.mfn(22)), 0);
      assert.ok(r.read(OP.CLEAN).pfns.has(22));
    }
  });
});

// ---- writes from outside the guest's own TLBs ----------------------------------------------------

describe("writes the guest's MMU does not see", () => {
  test("dom0's TLB entry to a guest page, cached writable before the enable, is write-protected too", () => {
    const r = new Rig(64);
    const d0 = r.dom0.d.vcpus[0]!;
    // dom0 maps the guest's pfn 33 at PT_VA in its own L1 (mmu_update with foreigndom = the guest).
    const l1 = findL1(r.hv.memory, 64, d0.guestTable, PT_VA);
    const val = pteLo(r.mfn(33), 0x63) + pteHi(r.mfn(33)) * 2 ** 32;
    assert.equal(r.mmuUpdate(d0, l1 * 4096, val, r.domid, r.dom0.arg), 0);
    d0.write32(PT_VA, 1);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    d0.write32(PT_VA + 4, 2);
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [33]);
    d0.write32(PT_VA + 8, 3);
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [33], "and again after CLEAN");
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), []);
  });

  test("privcmd mappings: a writable one counts at map time and at every CLEAN while it lasts; a read-only one never", () => {
    const r = new Rig(64);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    const rw = r.xc.map_foreign_pages(r.domid, PROT_READ | PROT_WRITE, [r.mfn(10), r.mfn(11)]) as ForeignMapping;
    const ro = r.xc.map_foreign_pages(r.domid, PROT_READ, [r.mfn(12)]) as ForeignMapping;
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [10, 11]);
    rw.u32(1)[5] = 1;
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [10, 11]);
    rw.unmap();
    ro.unmap();
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), []);
  });

  test("pageWords marks the page now; mapPageWords pages count at every CLEAN and PEEK, over OFF and ENABLE", () => {
    const r = new Rig(64);
    const v = r.vcpu(1);
    const kept = v.mapPageWords(r.va(15));
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    v.pageWords(r.va(16)).fill(3);
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [15, 16]);
    kept[0] = 1;
    assert.deepEqual(sorted(r.read(OP.PEEK).pfns), [15]);
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [15]);
    assert.equal(r.shadow(OP.OFF), 0);
    assert.equal(r.shadow(OP.ENABLE_LOGDIRTY), 0);
    assert.deepEqual(sorted(r.read(OP.CLEAN).pfns), [15]);
  });
});

// ---- a busy guest --------------------------------------------------------------------------------

describe("a busy guest (forkexec, mmapstress, ipistorm) in log-dirty mode", () => {
  /** Rounds of 1 ms: pages that changed in a round but are not in its CLEAN bitmap, per round. */
  function rounds(disabledFixes: readonly string[], n: number): number[][] {
    const sc = parseScenario(
      "pcpus = 2\nrun_ms = 100\ndomain = [ 'name=a,memory=16,vcpus=4,evtchn_abi=fifo,forkexec=8,mmapstress=1,ipistorm=1' ]",
      "busy.cfg",
    );
    const m = buildMachine(sc, 7, { xenDisabledFixes: disabledFixes });
    const xc = openPrivcmd(m.hv, DOMID_XEN);
    const d = m.domains.get("a")!;
    m.hv.run(25e6);
    assert.equal(xc.shadow_op(d.domid, OP.ENABLE_LOGDIRTY), 0);
    const snapshot = () => Array.from(d.p2m, (mfn) => m.hv.memory.u32(mfn).slice());
    let snap = snapshot();
    const out: number[][] = [];
    for (let i = 0; i < n; i++) {
      m.hv.run(m.hv.sched.now() + 1e6);
      const bm = new Uint8Array(Math.ceil(d.p2m.length / 8));
      const res = xc.shadow_op(d.domid, OP.CLEAN, bm, d.p2m.length);
      assert.equal(typeof res, "object");
      const dirty = bits(bm);
      const unseen: number[] = [];
      d.p2m.forEach((mfn, pfn) => {
        const now = m.hv.memory.u32(mfn);
        if (!dirty.has(pfn) && now.some((w, k) => w !== snap[pfn]![k])) unseen.push(pfn);
      });
      out.push(unseen);
      assert.deepEqual(auditMm(m.hv, m.kernels), [], `round ${i}: the auditor`);
      snap = snapshot();
    }
    assert.equal(d.state, "running", "the guest ran throughout");
    return out;
  }

  test("every page that changed in a 1 ms round is in that round's bitmap; without logdirty-pt-update, every round loses one", () => {
    assert.deepEqual(
      rounds([], 8).flatMap((u, i) => u.map((p) => `round ${i}: pfn ${p}`)),
      [],
    );
    const lost = rounds(["logdirty-pt-update"], 8);
    assert.ok(
      lost.every((u) => u.length > 0),
      `rounds without a lost page: ${lost.flatMap((u, i) => (u.length ? [] : [i])).join(", ")}`,
    );
  });
});
