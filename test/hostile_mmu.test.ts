// Hostile MMU guests: unprivileged domains whose kernels issue random PV MMU hypercalls
// (mmu_update, update_va_mapping, mmuext_op and multicalls of them) through the real scheduling
// path, next to a victim kernel running the forkexec workload (fork, exec, copy-on-write, exit:
// pagetables pinned, switched and unpinned all the time). The hostile kernels aim at their own
// pagetables, their data, the victim's frames, Xen's slots and garbage; they build pagetables
// that point at themselves or at each other, pin them, hook them into their live tables, unpin
// and re-pin them, and switch base pointers. A hostile domain that has broken its own memory (or
// has had a long life) is destroyed and replaced. Nothing may escape the hypervisor, every call
// returns 0 or -errno, the MMU auditor stays quiet, a destroyed domain leaves no frame behind, and
// the victim keeps making progress.

import assert from "node:assert/strict";
import { test } from "node:test";
import { type GuestCpu, type GuestImage, PageFault } from "../src/abi/cpu.ts";
import { EVTCHN_OP, type GuestWidth, type Layout, layoutFor, MMU_UPDATE } from "../src/abi/layout.ts";
import {
  _PAGE_PRESENT,
  COMPAT_XEN_L2_SLOT_FIRST,
  pagingLevels,
  pteHi,
  pteLo,
  pteMfn,
  tableIndex,
  XEN_L4_SLOT_FIRST,
} from "../src/abi/x86.ts";
import {
  DOMID_INVALID,
  DOMID_IO,
  DOMID_SELF,
  DOMID_XEN,
  EVTCHNOP,
  HYPERVISOR,
  MMU,
  MMUEXT,
  UVMF,
  VCPUOP,
  XEN_ERRNO,
  XEN_PAGE_SIZE,
} from "../src/abi/xen.ts";
import { ForkExec } from "../src/guest/workloads_mm.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { auditMm } from "../src/harness/audit_mm.ts";
import { buildMachine, parseScenario } from "../src/harness/scenario.ts";
import { Rng } from "../src/util/rng.ts";
import { bareDomain, installPagetables, newHypervisor, TEST_SINGLE_PAGE_VAS } from "./harness.ts";

const TARGET_CALLS = 100_000;
/** The MMU auditor runs every this many hostile hypercalls (and after every replacement). */
const AUDIT_EVERY = 5_000;
/** A hostile domain is replaced after this many hypercalls, so that teardown sees its mess. */
const GENERATION_CALLS = 20_000;
/** Errnos a hypercall may return (public/errno.h); ERESTART and EINTR never reach a guest. */
const GUEST_ERRNOS = new Set<number>(Object.values(XEN_ERRNO).filter((e) => e !== XEN_ERRNO.ERESTART && e !== XEN_ERRNO.EINTR));
const HOSTILE_PAGES = 96;
const HOSTILE_VCPUS = 3;
/** Virtual ns of guest work per hostile action (building arguments), so the victim gets its share. */
const ACT_NS = 1_500;

/** Scratch pages for argument structs. They stay mapped (the guest repairs them) and are rarely targets. */
const PFN_REQS = 1;
const PFN_LIST = 2;
const PFN_MISC = 3;
const PFN_INNER = 4;
const SCRATCH = [PFN_REQS, PFN_LIST, PFN_MISC, PFN_INNER] as const;
/** Scratch frames random requests may write into: not the multicall list, whose results are checked. */
const TARGET_SCRATCH = [PFN_REQS, PFN_MISC, PFN_INNER] as const;
/** Pages from here up to the harness's pagetables are data, and material for new tables. */
const FIRST_PLAY = 5;
/** Offsets in the misc page: pdone, vCPU masks. */
const PDONE_OFF = 0;
const MASK_OFF = 0x100;
/** What the hostile kernel believes a multicall entry's op word reads after Xen poisoned it. */
const POISON = 0xaaaaaaaa;

/** Hypercall numbers this model does not implement (iret is handled only inside a multicall). */
const UNKNOWN_OPS = [0, 2, 3, 5, 7, 8, 9, 10, 11, 12, 19, 20, 21, 22, 23, 25, 27, 28, 31, 33, 34, 40, 41, 64, 255];
/** Register garbage. */
const WILD = [-1, -4096, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40, 2 ** 53, 2 ** 63, 2 ** 64, Number.NaN, Number.POSITIVE_INFINITY, 1.5, -0.5];

interface Tally {
  calls: number;
  /** Multicall entries run (not counted in `calls`). */
  inner: number;
  violations: string[];
  escaped: unknown[];
  ok: Map<string, number>;
}

/** What the hostile kernel remembers of the pagetables the harness built for it. */
interface OwnTables {
  root: number;
  /** Every harness table (mfn) and its level. */
  level: Map<number, number>;
  /** The L1 that maps the direct map. */
  dmL1: number;
  /** The L2 above the TEST_SINGLE_PAGE_VAS L1s (hooks for new L1s). */
  lowL2: number;
  /** The table whose entries hold L2s for low addresses: x86_64's L3 for VA 0, PAE's root L3. */
  lowL3: number;
  /** PAE: the L2 under root slot 3 (direct map, Xen's slots). -1 on x86_64. */
  xenL2: number;
  /** The lowest pfn the harness took for a table. */
  firstTablePfn: number;
}

/** Walks the harness's tables from `root` (test-side set-up: the guest "remembers the layout"). */
function ownTables(hv: Hypervisor, d: Domain, root: number): OwnTables {
  const width = d.width;
  const pfnOf = new Map<number, number>();
  for (const [pfn, mfn] of d.p2m.entries()) pfnOf.set(mfn, pfn);
  const level = new Map<number, number>();
  const visit = (mfn: number, lvl: number) => {
    if (level.has(mfn)) return;
    level.set(mfn, lvl);
    if (lvl === 1) return;
    const w = hv.memory.u32(mfn);
    for (let slot = 0; slot < (width === 32 && lvl === 3 ? 4 : 512); slot++) {
      const lo = w[slot * 2]!;
      if ((lo & _PAGE_PRESENT) === 0) continue;
      const child = pteMfn(lo, w[slot * 2 + 1]!);
      if (pfnOf.has(child)) visit(child, lvl - 1);
    }
  };
  const top = pagingLevels(width);
  visit(root, top);
  const tableAt = (va: number, lvl: number) => {
    let mfn = root;
    for (let l = top; l > lvl; l--) {
      const w = hv.memory.u32(mfn);
      const slot = tableIndex(width, va, l);
      mfn = pteMfn(w[slot * 2]!, w[slot * 2 + 1]!);
    }
    return mfn;
  };
  const base = layoutFor(width).PAGE_OFFSET;
  return {
    root,
    level,
    dmL1: tableAt(base, 1),
    lowL2: tableAt(TEST_SINGLE_PAGE_VAS[0], 2),
    lowL3: tableAt(0, 3),
    xenL2: width === 32 ? tableAt(base, 2) : -1,
    firstTablePfn: Math.min(...[...level.keys()].map((mfn) => pfnOf.get(mfn)!)),
  };
}

/** A table the hostile kernel built in one of its pages, and where it hooked it in. */
interface Built {
  pfn: number;
  mfn: number;
  level: number;
  pinned: boolean;
  hook: Hook | undefined;
}

/** A slot of a live table that a new table of some level can be hooked into, and the VA it then maps. */
interface Hook {
  table: number;
  slot: number;
  va: number;
}

/** A root the kernel built as a copy of its own (PAE: with its own L2 for slot 3). */
interface AltRoot {
  mfn: number;
  pfns: number[];
}

interface Env {
  nrFrames: number;
  victimDomid: number;
  victimMfns: () => ArrayLike<number>;
  /** A machine frame's words (for the test's own checks). */
  frameWords: (mfn: number) => Uint32Array;
}

type Trace = { vcpu: number; op: number; args: number[]; rc: number | string };

/**
 * The hostile kernel: every quantum, a batch of MMU misbehaviour on whichever of its vCPUs runs.
 * Its argument structs live in scratch pages of its direct map; a vCPU that has broken them beyond
 * repair (switched to a root that maps nothing) takes itself offline, and when none is left the
 * test replaces the domain.
 */
class HostileMmu implements GuestImage {
  readonly entry: number;
  readonly L: Layout;
  private d!: Domain;
  private own!: OwnTables;
  private harnessTables: number[] = [];
  private readonly built: Built[] = [];
  private alt: AltRoot | undefined;
  /** Pages that have been a root copy: other vCPUs may still run on them, so they are never rebuilt. */
  private readonly reserved = new Set<number>();
  /** Frames it ever made root-level tables or root copies of (later valid roots that may map nothing). */
  private readonly rootish = new Set<number>();
  /** vCPUs whose scratch pages are gone for good (on a root that maps nothing): they went offline. */
  private readonly lostVcpus = new Set<number>();
  /** Hypercalls this domain has made. */
  calls = 0;
  /** Its scratch pages are gone: it can no longer pass arguments, so the test replaces it. */
  lost = false;
  private scratchFault = false;
  /** In the middle of an action (so an upcall must not start another). */
  private acting = false;
  private booted = false;
  /** The last calls, for the report of a failure. */
  readonly trace: Trace[] = [];

  constructor(
    readonly width: GuestWidth,
    private readonly rng: Rng,
    private readonly tally: Tally,
    private readonly env: Env,
  ) {
    this.L = layoutFor(width);
    this.entry = this.L.PAGE_OFFSET + 0x1000;
  }

  attach(d: Domain, own: OwnTables): void {
    this.d = d;
    this.own = own;
    this.harnessTables = [...own.level.keys()];
  }

  enter(_address: number, cpu: GuestCpu): void {
    // An upcall (garbage in a long multicall can register a callback) that interrupts an action
    // returns at once: the interrupted action's structs are in the same scratch pages.
    if (this.acting) return;
    if (!this.booted && cpu.vcpuId === 0) {
      this.booted = true;
      if (this.rng.chance(0.5)) this.fifoPages(cpu);
    }
    this.resume(cpu);
  }

  /**
   * Half the kernels switch to FIFO event channels first, on play pages: Xen then writes into
   * those pages (it holds writable type references on them), and the misbehaviour below aims at
   * them like at any other play page.
   */
  private fifoPages(cpu: GuestCpu): void {
    const a = this.va(PFN_MISC) + 0x200;
    const O = EVTCHN_OP;
    this.argUlong(cpu, a + O.init_control.control_gfn, this.mfnOf(this.playPfn()));
    if (this.width === 32) this.arg32(cpu, a + O.init_control.control_gfn + 4, 0);
    this.arg32(cpu, a + O.init_control.offset, this.pick([0, 64, 4096 - 72]));
    this.arg32(cpu, a + O.init_control.vcpu, 0);
    if (this.okIf(this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.init_control, a), "fifo init_control") !== 0) return;
    for (let i = 0; i < 2; i++) {
      this.argUlong(cpu, a + O.expand_array.array_gfn, this.mfnOf(this.playPfn()));
      if (this.width === 32) this.arg32(cpu, a + O.expand_array.array_gfn + 4, 0);
      this.okIf(this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.expand_array, a), "fifo expand_array");
    }
  }

  resume(cpu: GuestCpu): void {
    const n = 1 + this.rng.below(16);
    for (let i = 0; i < n && !this.lost && this.alive(cpu); i++) {
      cpu.spend(ACT_NS);
      this.acting = true;
      try {
        this.act(cpu);
        if (this.scratchFault) this.repair(cpu);
      } finally {
        this.acting = false;
      }
    }
  }

  private alive(cpu: GuestCpu): boolean {
    return this.d.vcpus[cpu.vcpuId]?.running === true;
  }

  // ---- addresses and frames ----

  private va(pfn: number): number {
    return this.L.PAGE_OFFSET + pfn * XEN_PAGE_SIZE;
  }

  private mfnOf(pfn: number): number {
    return this.d.p2m[pfn]!;
  }

  private pick<T>(items: readonly T[]): T {
    return this.rng.pick(items);
  }

  private playPfn(): number {
    return FIRST_PLAY + this.rng.below(this.own.firstTablePfn - FIRST_PLAY);
  }

  /** A play page that holds no table the kernel knows of. */
  private freePlayPfn(): number {
    for (let tries = 0; tries < 8; tries++) {
      const pfn = this.playPfn();
      if (!this.built.some((b) => b.pfn === pfn) && !this.reserved.has(pfn)) return pfn;
    }
    return -1;
  }

  private victimMfn(): number {
    const m = this.env.victimMfns();
    return m[this.rng.below(m.length)]!;
  }

  private harnessTable(): number {
    const o = this.own;
    return this.pick([o.root, o.dmL1, o.lowL2, o.lowL3, this.pick(this.harnessTables)]);
  }

  private builtTable(level = 0): Built | undefined {
    const c = level === 0 ? this.built : this.built.filter((b) => b.level === level);
    return c.length > 0 ? this.pick(c) : undefined;
  }

  /** Frames beyond machine memory, and INVALID_MFN. */
  private beyond(): number {
    const n = this.env.nrFrames;
    return this.pick([n, n + 1 + this.rng.below(1000), 2 ** 20, 2 ** 32 - 1, 2 ** 40 - 1, 2 ** 40 - 2]);
  }

  /** A frame: its own tables, data, the victim's, shared_info, anyone's, garbage. */
  private mfn(): number {
    const r = this.rng.below(100);
    if (r < 22) return this.harnessTable();
    if (r < 32) return this.builtTable()?.mfn ?? this.harnessTable();
    if (r < 57) return this.mfnOf(this.playPfn());
    if (r < 69) return this.victimMfn();
    if (r < 72) return this.d.sharedInfoMfn;
    if (r < 80) return this.rng.below(this.env.nrFrames);
    if (r < 90) return this.beyond();
    return this.pick([0, 1, 2 ** 52 - 1, 2 ** 53 - 1, this.rng.nextU32()]);
  }

  private domid(): number {
    const r = this.rng.below(100);
    if (r < 70) return DOMID_SELF;
    if (r < 75) return this.d.domid;
    if (r < 83) return this.env.victimDomid;
    // A pagetable owner in the high half (domid + 1), with the page owner in the low half.
    if (r < 88) return (((this.env.victimDomid + 1) << 16) | DOMID_SELF) >>> 0;
    if (r < 91) return (((this.d.domid + 1) << 16) | this.pick([DOMID_SELF, this.env.victimDomid])) >>> 0;
    if (r < 95) return this.pick([DOMID_IO, DOMID_XEN, DOMID_INVALID, 0x7fff, 0xffff]);
    return this.rng.nextU32();
  }

  /** Low flag bits: read-only, read-write, not present, the forbidden cache/PSE/global bits, anything. */
  private flagBits(): number {
    const r = this.rng.below(20);
    if (r < 7) return this.pick([0x61, 0x21, 0x65, 0x25, 0x01, 0x05]);
    if (r < 14) return this.pick([0x63, 0x67, 0x23, 0x03, 0x07]);
    if (r < 16) return this.pick([0x00, 0x62, 0x66, 0xe66]);
    if (r < 18) return this.pick([0x6b, 0x73, 0xe3, 0x163, 0xe1, 0x167, 0xe67]);
    return this.rng.below(0x1000);
  }

  /** High-half bits besides the frame: NX, the software bits, sometimes reserved garbage. */
  private hiBits(): number {
    if (this.rng.chance(0.85)) return 0;
    return this.pick([0x80000000, 0x7ff00000, 0x00100000, 0xfff00000, this.rng.nextU32() & 0xfff00000]);
  }

  private pte(mfn: number, flags: number, hiBits = 0): [number, number] {
    return [pteLo(mfn, flags), (pteHi(mfn) | hiBits) >>> 0];
  }

  /** A new entry for slot of table `table`: itself (linear), own frames, tables, the victim's, garbage. */
  private entryFor(table: number): [number, number] {
    const r = this.rng.below(100);
    if (r < 8) return [0, 0];
    if (r < 14) return [this.rng.nextU32(), this.rng.chance(0.5) ? 0 : this.rng.nextU32()];
    let target: number;
    if (r < 24) target = table;
    else if (r < 42) target = this.mfnOf(this.playPfn());
    else if (r < 52) target = this.harnessTable();
    else if (r < 60) target = this.builtTable()?.mfn ?? table;
    else if (r < 70) target = this.victimMfn();
    else if (r < 76) target = this.beyond();
    else target = this.mfn();
    return this.pte(target, this.flagBits(), this.hiBits());
  }

  /** Slots worth aiming at in `table`: Xen's, hooks, the direct map's pages. */
  private slotIn(table: number): number {
    if (this.rng.chance(0.6)) return this.rng.below(512);
    const o = this.own;
    if (table === o.root) return this.width === 64 ? this.pick([XEN_L4_SLOT_FIRST + this.rng.below(16), 1, 2, 3, 4, 0, 511]) : this.rng.below(4);
    if (table === o.xenL2) return COMPAT_XEN_L2_SLOT_FIRST + this.rng.below(512 - COMPAT_XEN_L2_SLOT_FIRST);
    if (table === o.dmL1) return tableIndex(this.width, this.va(this.playPfn()), 1);
    if (table === o.lowL2) return this.pick([10, 11, 12, 13, 2, 3]);
    if (table === o.lowL3) return this.pick([1, 2, 5, 6, 7]);
    return this.pick([0, 1, 3, 10, 511]);
  }

  /** A frame to write an entry into: own tables (live, built), own data, the victim's, anything. */
  private entryTable(): number {
    const r = this.rng.below(100);
    if (r < 34) return this.harnessTable();
    if (r < 50) return this.builtTable()?.mfn ?? this.own.dmL1;
    if (r < 52 && this.alt) return this.alt.mfn;
    if (r < 66) return this.mfnOf(this.playPfn());
    if (r < 67) return this.mfnOf(this.pick(TARGET_SCRATCH));
    if (r < 78) return this.victimMfn();
    return this.mfn();
  }

  /** A virtual address for update_va_mapping and INVLPG. */
  private vaddr(): number {
    const r = this.rng.below(100);
    if (r < 28) return this.va(this.playPfn());
    if (r < 48) {
      const ok = TEST_SINGLE_PAGE_VAS.filter((v) => (this.width === 64 ? true : v >= 0 && v < 2 ** 32));
      return this.pick(ok) + XEN_PAGE_SIZE * this.rng.below(64);
    }
    if (r < 60) {
      const b = this.builtTable();
      if (b?.hook) return this.hookedVa(b);
      return 10 * 2 ** 21 + XEN_PAGE_SIZE * this.rng.below(512);
    }
    if (r < 66) return this.va(this.own.firstTablePfn + this.rng.below(HOSTILE_PAGES - this.own.firstTablePfn));
    if (r < 68) return this.va(this.pick(SCRATCH));
    if (r < 70) return this.va(0);
    const xen = this.width === 64 ? -(2 ** 47) + 0x10000 : 0xf6000000;
    return this.pick([0, 0x1000, xen, 2 ** 47, -(2 ** 47) - 4096, 2 ** 32, 7 * 2 ** 30, this.va(HOSTILE_PAGES), 0xffffffff, ...WILD]);
  }

  /** A pointer where a struct should be: wild, unmapped, in Xen, misaligned, read-only, page-crossing. */
  private badPtr(good: number): number {
    const xen = this.width === 64 ? -(2 ** 47) + 0x10000 : 0xf6000000;
    return this.pick([
      0,
      0x1000,
      xen,
      2 ** 47,
      this.va(HOSTILE_PAGES),
      this.va(this.own.firstTablePfn) - 8,
      this.va(PFN_INNER + 1) - 4,
      good + 1,
      good + 4,
      good + XEN_PAGE_SIZE - 8,
      ...WILD,
    ]);
  }

  private maskPtr(): number {
    return this.va(PFN_MISC) + MASK_OFF;
  }

  // ---- memory ----

  /** A store the kernel makes at its own risk: a fault just means the mapping is gone. */
  private poke32(cpu: GuestCpu, va: number, value: number): boolean {
    try {
      cpu.write32(va, value >>> 0);
      return true;
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
      return false;
    }
  }

  private peek32(cpu: GuestCpu, va: number): number | undefined {
    try {
      return cpu.read32(va);
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
      return undefined;
    }
  }

  /** A store into an argument struct: a fault there means the scratch pages need repair. */
  private arg32(cpu: GuestCpu, va: number, value: number): void {
    if (!this.poke32(cpu, va, value)) this.scratchFault = true;
  }

  private argUlong(cpu: GuestCpu, va: number, value: number): void {
    if (this.width === 32) {
      this.arg32(cpu, va, Number.isFinite(value) ? value : 0);
      return;
    }
    const lo = Number.isFinite(value) ? value >>> 0 : 0;
    const hi = Number.isFinite(value) ? Math.floor((value - lo) / 2 ** 32) >>> 0 : 0;
    this.arg32(cpu, va, lo);
    this.arg32(cpu, va + 4, hi);
  }

  /**
   * Maps the scratch pages read-write again. If that does not bring them back (this vCPU runs on
   * a root that maps nothing), the vCPU takes itself offline; with all of them gone, the domain
   * is lost.
   */
  private repair(cpu: GuestCpu): void {
    this.scratchFault = false;
    for (const pfn of SCRATCH) {
      const [lo, hi] = this.pte(this.mfnOf(pfn), 0x63);
      this.uvmCall(cpu, this.va(pfn), lo, hi, UVMF.INVLPG | UVMF.LOCAL);
      if (this.poke32(cpu, this.va(pfn) + 0xffc, 0)) continue;
      this.lostVcpus.add(cpu.vcpuId);
      this.call(cpu, HYPERVISOR.vcpu_op, VCPUOP.down, cpu.vcpuId, 0);
      if (this.lostVcpus.size === this.d.vcpus.length) this.lost = true;
      return;
    }
  }

  // ---- hypercalls ----

  private call(cpu: GuestCpu, op: number, a1 = 0, a2 = 0, a3 = 0, a4 = 0): number {
    const t = this.tally;
    t.calls++;
    this.calls++;
    const entry: Trace = { vcpu: cpu.vcpuId, op, args: [a1, a2, a3, a4], rc: "threw" };
    this.trace.push(entry);
    if (this.trace.length > 16) this.trace.shift();
    let rc: number;
    try {
      rc = cpu.hypercall(op, a1, a2, a3, a4);
    } catch (e) {
      if (!t.escaped.includes(e)) t.escaped.push(e);
      throw e;
    }
    entry.rc = rc;
    this.checkRc(`hypercall ${op}(${fmtArgs([a1, a2, a3, a4])})`, rc);
    return rc;
  }

  private checkRc(what: string, rc: number): void {
    if (Number.isInteger(rc) && (rc === 0 || (rc < 0 && GUEST_ERRNOS.has(-rc)))) return;
    const t = this.tally;
    if (t.violations.length < 20) t.violations.push(`d${this.d.domid}: ${what} returned ${rc}`);
  }

  private okIf(rc: number, key: string): number {
    if (rc === 0) this.tally.ok.set(key, (this.tally.ok.get(key) ?? 0) + 1);
    return rc;
  }

  /** update_va_mapping as the guest's width passes it: (va, pte, flags) or (va, lo, hi, flags). */
  private uvmCall(cpu: GuestCpu, va: number, lo: number, hi: number, flags: number): number {
    const rc =
      this.width === 64
        ? this.call(cpu, HYPERVISOR.update_va_mapping, va, hi * 2 ** 32 + lo, flags)
        : this.call(cpu, HYPERVISOR.update_va_mapping, va, lo, hi, flags);
    return this.okIf(rc, "update_va_mapping");
  }

  private uvmArgs(va: number, lo: number, hi: number, flags: number): number[] {
    return this.width === 64 ? [va, hi * 2 ** 32 + lo, flags] : [va, lo, hi, flags];
  }

  /** Flush flags: none, all, one page; for this vCPU, all, or a vCPU mask (good or bad). */
  private uvmFlags(cpu: GuestCpu): number {
    const type = this.pick([UVMF.NONE, UVMF.TLB_FLUSH, UVMF.INVLPG, 3]);
    const r = this.rng.below(10);
    if (r < 4) return type | UVMF.LOCAL;
    if (r < 7) return type | UVMF.ALL;
    if (r < 9) {
      this.argUlong(cpu, this.maskPtr(), this.rng.below(16));
      return this.maskPtr() + type;
    }
    return this.pick([8, 12, 0x1000, this.badPtr(this.maskPtr()) & ~3]) + type;
  }

  /** Writes `n` mmu_update requests at `at` and returns the call's arguments. */
  private mmuUpdateArgs(cpu: GuestCpu, at: number): number[] {
    const r = this.rng.below(20);
    const n = r < 15 ? 1 + this.rng.below(8) : r < 16 ? 0 : r < 18 ? 9 + this.rng.below(40) : this.pick([0x7fffffff, 0x80000001, 0x80000000 + 2, 0xffffffff, ...WILD]);
    for (let i = 0; i < Math.min(n, 8); i++) this.writeReq(cpu, at + i * MMU_UPDATE.size);
    const pdone = this.rng.chance(0.6) ? this.va(PFN_MISC) + PDONE_OFF : this.rng.chance(0.5) ? 0 : this.badPtr(this.va(PFN_MISC));
    if (pdone === this.va(PFN_MISC) + PDONE_OFF) this.arg32(cpu, pdone, this.rng.chance(0.9) ? 0 : this.rng.nextU32());
    return [this.rng.chance(0.88) ? at : this.badPtr(at), n, pdone, this.domid()];
  }

  private writeReq(cpu: GuestCpu, p: number): void {
    const r = this.rng.below(100);
    const cmd = r < 72 ? MMU.NORMAL_PT_UPDATE : r < 80 ? MMU.MACHPHYS_UPDATE : r < 86 ? MMU.PT_UPDATE_PRESERVE_AD : r < 91 ? MMU.PT_UPDATE_NO_TRANSLATE : 4 + this.rng.below(4);
    let ptrLo: number;
    let ptrHi: number;
    let lo: number;
    let hi: number;
    if (this.rng.chance(0.05)) {
      ptrLo = this.rng.nextU32();
      ptrHi = this.rng.chance(0.5) ? 0 : this.rng.nextU32();
    } else {
      const table = this.entryTable();
      ptrLo = ((table % 0x100000) * XEN_PAGE_SIZE + this.slotIn(table) * 8 + cmd) >>> 0;
      ptrHi = Math.floor(table / 0x100000) >>> 0;
    }
    if (cmd === MMU.MACHPHYS_UPDATE) {
      // The new M2P entry: the right pfn, another one, garbage.
      lo = this.pick([this.rng.below(HOSTILE_PAGES), 0, 0xffffffff, this.rng.nextU32()]);
      hi = 0;
    } else {
      [lo, hi] = this.entryFor(((ptrLo >>> 12) + ptrHi * 0x100000) % 2 ** 53);
    }
    this.arg32(cpu, p + MMU_UPDATE.ptr, ptrLo);
    this.arg32(cpu, p + MMU_UPDATE.ptr + 4, ptrHi);
    this.arg32(cpu, p + MMU_UPDATE.val, lo);
    this.arg32(cpu, p + MMU_UPDATE.val + 4, hi);
  }

  /** mmu_update with one request built by the caller (construction steps). */
  private mmuOne(cpu: GuestCpu, table: number, slot: number, lo: number, hi: number, key: string): number {
    const p = this.va(PFN_REQS);
    this.arg32(cpu, p + MMU_UPDATE.ptr, ((table % 0x100000) * XEN_PAGE_SIZE + slot * 8) >>> 0);
    this.arg32(cpu, p + MMU_UPDATE.ptr + 4, Math.floor(table / 0x100000));
    this.arg32(cpu, p + MMU_UPDATE.val, lo);
    this.arg32(cpu, p + MMU_UPDATE.val + 4, hi);
    return this.okIf(this.call(cpu, HYPERVISOR.mmu_update, p, 1, 0, DOMID_SELF), key);
  }

  /** One mmuext_op struct at `p`. */
  private writeExt(cpu: GuestCpu, p: number, cmd: number, arg1: number, arg2: number): void {
    const L = this.L.mmuext_op;
    this.arg32(cpu, p + L.cmd, cmd);
    if (this.width === 64) this.arg32(cpu, p + 4, 0);
    this.argUlong(cpu, p + L.arg1, arg1);
    this.argUlong(cpu, p + L.arg2, arg2);
  }

  /** mmuext_op with ops built by the caller. */
  private extOps(cpu: GuestCpu, ops: readonly [number, number, number][], key: string): number {
    const p = this.va(PFN_REQS);
    for (const [i, [cmd, a1, a2]] of ops.entries()) this.writeExt(cpu, p + i * this.L.mmuext_op.size, cmd, a1, a2);
    return this.okIf(this.call(cpu, HYPERVISOR.mmuext_op, p, ops.length, this.va(PFN_MISC) + PDONE_OFF, DOMID_SELF), key);
  }

  /** A random mmuext_op command with arguments that make sense for it (mostly). */
  private randomExt(cpu: GuestCpu): [number, number, number] {
    const cmd = this.rng.chance(0.88) ? this.rng.below(21) : this.pick([14, 21, 22, 255, 0x80000000, 0xffffffff, 0x10005, 0x10000]);
    const a2 = this.rng.chance(0.5) ? 0 : this.rng.nextU32();
    switch (cmd) {
      case MMUEXT.PIN_L1_TABLE:
      case MMUEXT.PIN_L2_TABLE:
      case MMUEXT.PIN_L3_TABLE:
      case MMUEXT.PIN_L4_TABLE:
      case MMUEXT.UNPIN_TABLE: {
        const b = this.builtTable(cmd === MMUEXT.UNPIN_TABLE ? 0 : cmd + 1);
        const mfn = b && this.rng.chance(0.5) ? b.mfn : this.rng.chance(0.3) ? this.harnessTable() : this.mfn();
        return [cmd, mfn, a2];
      }
      case MMUEXT.NEW_BASEPTR:
      case MMUEXT.NEW_USER_BASEPTR: {
        const r = this.rng.below(200);
        // A built root that maps nothing leaves the kernel without memory (and replaced): rare.
        const mfn =
          r < 70
            ? this.own.root
            : r < 130 && this.alt
              ? this.alt.mfn
              : r < 131
                ? (this.builtTable(pagingLevels(this.width))?.mfn ?? 0)
                : r < 150 && cmd === MMUEXT.NEW_USER_BASEPTR
                  ? 0
                  : this.notARoot();
        return [cmd, mfn, a2];
      }
      case MMUEXT.INVLPG_LOCAL:
      case MMUEXT.INVLPG_ALL:
        return [cmd, this.vaddr(), a2];
      case MMUEXT.TLB_FLUSH_MULTI:
      case MMUEXT.INVLPG_MULTI: {
        const good = this.rng.chance(0.7);
        if (good) this.argUlong(cpu, this.maskPtr(), this.rng.below(16));
        return [cmd, this.vaddr(), good ? this.maskPtr() : this.badPtr(this.maskPtr())];
      }
      case MMUEXT.SET_LDT: {
        const base = this.pick([0, this.va(PFN_MISC), this.va(PFN_MISC) + 8, 2 ** 47, -(2 ** 47), 0xf6000000, this.vaddr()]);
        return [cmd, base, this.pick([0, 1, 13, 8192, 8193, 0xffffffff])];
      }
      case MMUEXT.CLEAR_PAGE:
        return [cmd, this.rng.chance(0.6) ? this.mfnOf(this.playPfn()) : this.safeMfn(), a2];
      case MMUEXT.COPY_PAGE:
        return [cmd, this.rng.chance(0.6) ? this.mfnOf(this.playPfn()) : this.safeMfn(), this.rng.chance(0.5) ? this.harnessTable() : this.mfn()];
      default:
        return [cmd, this.rng.chance(0.5) ? this.mfn() : this.rng.nextU32(), a2];
    }
  }

  /** Any frame but the roots it built: data, live tables, the victim's, garbage (all refused as a root). */
  private notARoot(): number {
    const m = this.safeMfn();
    return this.rootish.has(m) ? this.own.dmL1 : m;
  }

  /** A frame other than its scratch pages (whose clearing or use as a root would end the run early). */
  private safeMfn(): number {
    const m = this.mfn();
    return SCRATCH.some((pfn) => this.mfnOf(pfn) === m) ? this.mfnOf(this.playPfn()) : m;
  }

  private mmuextArgs(cpu: GuestCpu, at: number): number[] {
    const r = this.rng.below(20);
    const n = r < 15 ? 1 + this.rng.below(4) : r < 16 ? 0 : r < 18 ? 5 + this.rng.below(30) : this.pick([0x7fffffff, 0x80000001, 0xffffffff, ...WILD]);
    for (let i = 0; i < Math.min(n, 4); i++) {
      const [cmd, a1, a2] = this.randomExt(cpu);
      this.writeExt(cpu, at + i * this.L.mmuext_op.size, cmd, a1, a2);
    }
    const pdone = this.rng.chance(0.6) ? this.va(PFN_MISC) + PDONE_OFF : this.rng.chance(0.5) ? 0 : this.badPtr(this.va(PFN_MISC));
    return [this.rng.chance(0.9) ? at : this.badPtr(at), n, pdone, this.domid()];
  }

  // ---- the misbehaviour ----

  private act(cpu: GuestCpu): void {
    const r = this.rng.below(100);
    if (r < 22) {
      const [a, n, pdone, dom] = this.mmuUpdateArgs(cpu, this.va(PFN_REQS)) as [number, number, number, number];
      this.okIf(this.call(cpu, HYPERVISOR.mmu_update, a, n, pdone, dom), "mmu_update");
    } else if (r < 36) {
      const [lo, hi] = this.rng.chance(0.7) ? this.entryFor(this.own.dmL1) : this.pte(this.mfnOf(this.playPfn()), this.flagBits());
      this.uvmCall(cpu, this.vaddr(), lo, hi, this.uvmFlags(cpu));
    } else if (r < 52) {
      const [a, n, pdone, dom] = this.mmuextArgs(cpu, this.va(PFN_REQS)) as [number, number, number, number];
      this.okIf(this.call(cpu, HYPERVISOR.mmuext_op, a, n, pdone, dom), n === 1 ? `mmuext_op/${this.peekCmd(cpu)}` : "mmuext_op/n");
    } else if (r < 65) this.multicall(cpu);
    else if (r < 88) this.construct(cpu);
    else if (r < 93) this.altRoot(cpu);
    else if (r < 98) this.touch(cpu);
    else this.call(cpu, this.pick(UNKNOWN_OPS), this.rng.nextU32(), this.vaddr());
  }

  private peekCmd(cpu: GuestCpu): number {
    return this.peek32(cpu, this.va(PFN_REQS)) ?? -1;
  }

  /** Loads and stores through hooked tables and the test VAs: TLB fills Xen must later flush. */
  private touch(cpu: GuestCpu): void {
    for (let i = 0; i < 4; i++) {
      const va = this.vaddr() + 4 * this.rng.below(1024);
      if (this.rng.chance(0.5)) this.peek32(cpu, va);
      else if (!SCRATCH.some((pfn) => Math.floor((va - this.va(pfn)) / XEN_PAGE_SIZE) === 0)) this.poke32(cpu, va, this.rng.nextU32());
    }
  }

  /** A multicall of 1-8 MMU ops (and a nested multicall, an iret, unknown ops); results checked. */
  private multicall(cpu: GuestCpu): void {
    const M = this.L.multicall_entry;
    const ul = this.L.ulong;
    const r = this.rng.below(20);
    const n = r < 16 ? 1 + this.rng.below(8) : r < 17 ? 0 : r < 18 ? 9 + this.rng.below(60) : this.pick([0x7fffffff, 0xffffffff, ...WILD]);
    const list = this.va(PFN_LIST);
    const ops: number[] = [];
    for (let i = 0; i < Math.min(n, 8); i++) {
      const inner = this.va(PFN_INNER) + i * 512;
      const q = this.rng.below(100);
      let op: number;
      let args: number[];
      if (q < 28) {
        op = HYPERVISOR.mmu_update;
        args = this.mmuUpdateArgs(cpu, inner);
      } else if (q < 55) {
        op = HYPERVISOR.update_va_mapping;
        const [lo, hi] = this.entryFor(this.own.dmL1);
        args = this.uvmArgs(this.vaddr(), lo, hi, this.uvmFlags(cpu));
      } else if (q < 82) {
        op = HYPERVISOR.mmuext_op;
        args = this.mmuextArgs(cpu, inner);
      } else if (q < 87) {
        op = HYPERVISOR.multicall;
        args = [this.rng.chance(0.7) ? list : this.badPtr(list), 1 + this.rng.below(4)];
      } else if (q < 91) {
        op = HYPERVISOR.iret;
        args = [];
      } else if (q < 96) {
        op = this.pick(UNKNOWN_OPS);
        args = [this.rng.nextU32()];
      } else {
        op = this.rng.nextU32();
        args = [this.rng.nextU32(), this.rng.nextU32()];
      }
      ops.push(op);
      const e = list + i * M.size;
      this.argUlong(cpu, e + M.op, op);
      this.argUlong(cpu, e + M.result, 0x5a5a5a5a);
      for (let k = 0; k < 6; k++) this.argUlong(cpu, e + M.args + k * ul, args[k] ?? 0);
    }
    const r2 = this.rng.below(20);
    const at = r2 < 17 ? list : r2 < 18 ? list + 4 : r2 < 19 ? list + XEN_PAGE_SIZE - M.size / 2 : this.badPtr(list);
    const rc = this.okIf(this.call(cpu, HYPERVISOR.multicall, at, n), "multicall");
    if (at !== list || rc !== 0 || !this.listInPlace(cpu)) return;
    // Each entry that ran has its result, and Xen's poison in the rest of it.
    for (let i = 0; i < ops.length; i++) {
      this.tally.inner++;
      const e = list + i * M.size;
      if (this.peek32(cpu, e + M.op) !== POISON) break;
      const lo = this.peek32(cpu, e + M.result) ?? 0;
      const res = this.width === 32 ? lo | 0 : ((this.peek32(cpu, e + M.result + 4) ?? 0) | 0) * 2 ** 32 + lo;
      this.checkRc(`multicall entry ${i} (op ${ops[i]})`, res);
      if (ops[i] === HYPERVISOR.iret) break;
    }
  }

  /**
   * Whether the list VA still maps the list's own frame (checked by the test, not the guest): if a
   * random op remapped it to a play frame, later ops may have written into that frame after Xen
   * wrote a result there.
   */
  private listInPlace(cpu: GuestCpu): boolean {
    try {
      return cpu.pageWords(this.va(PFN_LIST)) === this.env.frameWords(this.mfnOf(PFN_LIST));
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
      return false;
    }
  }

  // ---- building tables ----

  /** The slot a new table of `level` is hooked into, and the VA it then maps. */
  private hookFor(level: number): Hook | undefined {
    const o = this.own;
    const k = this.rng.below(3);
    if (level === 1) return { table: o.lowL2, slot: 10 + k, va: (10 + k) * 2 ** 21 };
    if (level === 2) return this.width === 64 ? { table: o.lowL3, slot: 5 + k, va: (5 + k) * 2 ** 30 } : { table: o.root, slot: 1 + (k % 2), va: (1 + (k % 2)) * 2 ** 30 };
    if (level === 3 && this.width === 64) return { table: o.root, slot: 1 + k, va: (1 + k) * 2 ** 39 };
    if (level === 4 && this.width === 64) return { table: o.root, slot: 4 + k, va: (4 + k) * 2 ** 39 };
    return undefined;
  }

  private hookedVa(b: Built): number {
    const span = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39][b.level]!;
    return b.hook!.va + this.rng.below(512) * span + XEN_PAGE_SIZE * this.rng.below(8);
  }

  /** An entry for a new table of `level` at `mfn`: loops to itself, other new tables, live tables, mistakes. */
  private contentFor(level: number, mfn: number): [number, number] {
    const r = this.rng.below(100);
    const ro = this.rng.chance(0.5);
    if (level === 1) {
      if (r < 40) return this.pte(this.mfnOf(this.playPfn()), 0x61);
      if (r < 55) return this.pte(this.mfnOf(this.playPfn()), 0x63);
      if (r < 65) return this.pte(mfn, 0x61);
      if (r < 70) return this.pte(mfn, 0x63);
      if (r < 80) return this.pte(this.harnessTable(), this.rng.chance(0.7) ? 0x61 : 0x63);
      if (r < 85) return this.pte(this.victimMfn(), 0x61);
      if (r < 90) return this.pte(this.beyond(), 0x61);
      return this.entryFor(mfn);
    }
    const flags = this.rng.chance(0.8) ? (ro ? 0x65 : 0x67) : this.flagBits();
    if (r < 25) {
      const child = this.builtTable(level - 1);
      if (child) return this.pte(child.mfn, flags);
    }
    if (r < 40) {
      const live = [...this.own.level].filter(([, l]) => l === level - 1).map(([m]) => m);
      if (live.length > 0) return this.pte(this.pick(live), flags);
    }
    if (r < 55) return this.pte(mfn, this.rng.chance(0.75) ? 0x65 : 0x67);
    if (r < 65) {
      const peer = this.builtTable(level)?.mfn ?? (level === pagingLevels(this.width) ? this.own.root : mfn);
      return this.pte(peer, this.rng.chance(0.75) ? 0x65 : 0x67);
    }
    if (r < 75) return this.pte(this.mfnOf(this.playPfn()), flags);
    if (r < 80) return this.pte(this.victimMfn(), flags);
    return this.entryFor(mfn);
  }

  /** Writes a new table's entries into page `pfn` through its (read-write) direct map. */
  private fill(cpu: GuestCpu, pfn: number, slot: number, [lo, hi]: [number, number]): void {
    this.poke32(cpu, this.va(pfn) + slot * 8, lo);
    this.poke32(cpu, this.va(pfn) + slot * 8 + 4, hi);
  }

  private remap(cpu: GuestCpu, pfn: number, flags: number, uvmf: number): number {
    const [lo, hi] = this.pte(this.mfnOf(pfn), flags);
    return this.uvmCall(cpu, this.va(pfn), lo, hi, uvmf);
  }

  private pinCmd(level: number): number {
    return [MMUEXT.PIN_L1_TABLE, MMUEXT.PIN_L2_TABLE, MMUEXT.PIN_L3_TABLE, MMUEXT.PIN_L4_TABLE][level - 1]!;
  }

  /** A new table in a free play page: cleared, filled with loops and references, not yet typed. */
  private create(cpu: GuestCpu): void {
    const pfn = this.freePlayPfn();
    if (pfn < 0) return;
    const level = 1 + this.rng.below(pagingLevels(this.width));
    const mfn = this.mfnOf(pfn);
    this.remap(cpu, pfn, 0x63, UVMF.INVLPG | UVMF.ALL);
    this.extOps(cpu, [[MMUEXT.CLEAR_PAGE, mfn, 0]], "clear_page");
    const n = 1 + this.rng.below(6);
    for (let i = 0; i < n; i++) {
      const slot = this.width === 32 && level === 3 ? this.rng.below(4) : this.rng.chance(0.5) ? this.rng.below(8) : this.rng.below(512);
      this.fill(cpu, pfn, slot, this.contentFor(level, mfn));
    }
    // A PAE L3 needs an L2 of its own in slot 3 to validate.
    if (this.width === 32 && level === 3 && this.rng.chance(0.7)) {
      const l2 = this.builtTable(2);
      if (l2 && !l2.pinned && !l2.hook) this.fill(cpu, pfn, 3, this.pte(l2.mfn, 0x01));
    }
    if (level === pagingLevels(this.width)) this.rootish.add(mfn);
    this.built.push({ pfn, mfn, level, pinned: false, hook: undefined });
  }

  /** The next step of a build loop for one of its tables (or, now and then, a step out of order). */
  private construct(cpu: GuestCpu): void {
    if (this.built.length === 0 || (this.built.length < 6 && this.rng.chance(0.15))) {
      this.create(cpu);
      return;
    }
    const b = this.pick(this.built);
    let step = !b.pinned ? "pin" : !b.hook ? "hook" : this.pick(["use", "use", "use", "unhook"]);
    if (this.rng.chance(0.25)) step = this.pick(["remapRO", "pin", "hook", "use", "unhook", "unpin", "repin", "retire", "edit", "remapRW"]);
    switch (step) {
      case "remapRO":
        this.remap(cpu, b.pfn, 0x61, this.uvmFlags(cpu));
        return;
      case "remapRW":
        this.remap(cpu, b.pfn, 0x63, this.uvmFlags(cpu));
        return;
      case "pin": {
        // A kernel maps a page read-only before it pins it; sometimes this one forgets.
        if (this.rng.chance(0.9)) this.remap(cpu, b.pfn, 0x61, this.pick([UVMF.INVLPG | UVMF.ALL, UVMF.NONE, UVMF.TLB_FLUSH | UVMF.LOCAL]));
        const level = this.rng.chance(0.9) ? b.level : 1 + this.rng.below(4);
        if (this.extOps(cpu, [[this.pinCmd(level), b.mfn, 0]], `pin L${level}`) === 0 && level === b.level) b.pinned = true;
        return;
      }
      case "hook": {
        const h = this.hookFor(b.level);
        if (!h) return;
        // A same-level (linear) entry must be read-only; a lower-level one may be either.
        const flags = b.level === 4 || this.rng.chance(0.2) ? 0x65 : 0x67;
        const [lo, hi] = this.pte(b.mfn, this.rng.chance(0.95) ? flags : this.flagBits());
        if (this.mmuOne(cpu, h.table, h.slot, lo, hi, `hook L${b.level}`) === 0) b.hook = h;
        return;
      }
      case "use":
        if (!b.hook) return;
        if (b.level === 1 && this.rng.chance(0.5)) {
          // update_va_mapping into the new L1 (it is the L1 for the hooked VA now).
          const [lo, hi] = this.contentFor(1, b.mfn);
          this.uvmCall(cpu, this.hookedVa(b), lo, hi, this.uvmFlags(cpu));
        } else if (this.rng.chance(0.5)) {
          this.mmuOne(cpu, b.mfn, this.rng.below(512), ...this.contentFor(b.level, b.mfn), `edit L${b.level}`);
        } else {
          for (let i = 0; i < 4; i++) {
            const va = this.hookedVa(b) + 4 * this.rng.below(1024);
            if (this.rng.chance(0.6)) this.peek32(cpu, va);
            else this.poke32(cpu, va, this.rng.nextU32());
          }
        }
        return;
      case "edit":
        this.mmuOne(cpu, b.mfn, this.rng.below(512), ...this.contentFor(b.level, b.mfn), `edit L${b.level}`);
        return;
      case "unhook":
        if (b.hook && this.mmuOne(cpu, b.hook.table, b.hook.slot, 0, 0, "unhook") === 0) b.hook = undefined;
        return;
      case "unpin":
        if (this.extOps(cpu, [[MMUEXT.UNPIN_TABLE, b.mfn, 0]], "unpin") === 0) b.pinned = false;
        return;
      case "repin": {
        // Pin twice in one batch: the second one must fail (pinning does not nest).
        const rc = this.extOps(cpu, [[this.pinCmd(b.level), b.mfn, 0], [this.pinCmd(b.level), b.mfn, 0]], "repin");
        if (rc === 0 && this.tally.violations.length < 20) this.tally.violations.push(`d${this.d.domid}: mfn ${b.mfn} pinned twice in one batch`);
        if (rc !== 0 && this.peek32(cpu, this.va(PFN_MISC) + PDONE_OFF) === 1) b.pinned = true;
        return;
      }
      default:
        this.retire(cpu, b);
    }
  }

  /** Unhook, unpin and remap read-write in one multicall; the kernel forgets the table either way. */
  private retire(cpu: GuestCpu, b: Built): void {
    const M = this.L.multicall_entry;
    const list = this.va(PFN_LIST);
    const calls: [number, number[]][] = [];
    if (b.hook) {
      const p = this.va(PFN_INNER);
      this.arg32(cpu, p + MMU_UPDATE.ptr, ((b.hook.table % 0x100000) * XEN_PAGE_SIZE + b.hook.slot * 8) >>> 0);
      this.arg32(cpu, p + MMU_UPDATE.ptr + 4, 0);
      this.arg32(cpu, p + MMU_UPDATE.val, 0);
      this.arg32(cpu, p + MMU_UPDATE.val + 4, 0);
      calls.push([HYPERVISOR.mmu_update, [p, 1, 0, DOMID_SELF]]);
    }
    const ext = this.va(PFN_INNER) + 512;
    this.writeExt(cpu, ext, MMUEXT.UNPIN_TABLE, b.mfn, 0);
    calls.push([HYPERVISOR.mmuext_op, [ext, 1, 0, DOMID_SELF]]);
    const [lo, hi] = this.pte(b.mfn, 0x63);
    calls.push([HYPERVISOR.update_va_mapping, this.uvmArgs(this.va(b.pfn), lo, hi, UVMF.INVLPG | UVMF.ALL)]);
    calls.forEach(([op, args], i) => {
      this.argUlong(cpu, list + i * M.size + M.op, op);
      for (let k = 0; k < 6; k++) this.argUlong(cpu, list + i * M.size + M.args + k * this.L.ulong, args[k] ?? 0);
    });
    this.okIf(this.call(cpu, HYPERVISOR.multicall, list, calls.length), "retire");
    this.built.splice(this.built.indexOf(b), 1);
  }

  // ---- a second root ----

  /** Builds a copy of its root (PAE: with its own slot-3 L2), switches to it and back, drops it. */
  private altRoot(cpu: GuestCpu): void {
    const alt = this.alt;
    if (!alt) {
      this.buildAlt(cpu);
      return;
    }
    const r = this.rng.below(100);
    if (r < 30) this.extOps(cpu, [[MMUEXT.NEW_BASEPTR, alt.mfn, 0]], "baseptr alt");
    else if (r < 60) this.extOps(cpu, [[MMUEXT.NEW_BASEPTR, this.own.root, 0]], "baseptr root");
    else if (r < 68 && this.width === 64) this.extOps(cpu, [[MMUEXT.NEW_USER_BASEPTR, this.pick([alt.mfn, this.own.root, 0]), 0]], "user baseptr");
    else if (r < 76) this.extOps(cpu, [[MMUEXT.UNPIN_TABLE, alt.mfn, 0]], "unpin alt");
    else if (r < 84) this.extOps(cpu, [[this.pinCmd(pagingLevels(this.width)), alt.mfn, 0]], "pin alt");
    else if (r < 92) {
      // Hook a new table into the copy only: it is live only for vCPUs running on the copy.
      const b = this.builtTable(pagingLevels(this.width) - 1);
      if (b) this.mmuOne(cpu, alt.mfn, this.width === 64 ? 1 + this.rng.below(3) : 1 + this.rng.below(2), ...this.pte(b.mfn, 0x67), "hook alt");
    } else {
      // Back to the real root, unpin, and give the pages back to the play pool when they are free.
      this.extOps(cpu, [
        [MMUEXT.NEW_BASEPTR, this.own.root, 0],
        [MMUEXT.UNPIN_TABLE, alt.mfn, 0],
      ], "drop alt");
      for (const pfn of alt.pfns) this.remap(cpu, pfn, 0x63, UVMF.INVLPG | UVMF.ALL);
      this.alt = undefined;
    }
  }

  private buildAlt(cpu: GuestCpu): void {
    const o = this.own;
    // Copies entries through the direct map; false if a page is not mapped as it should be.
    const copy = (dst: number, src: number, from: number, to: number) => {
      for (let i = from * 2; i < to * 2; i++) {
        const w = this.peek32(cpu, this.va(this.d.p2m.indexOf(src)) + i * 4);
        if (w === undefined || !this.poke32(cpu, this.va(dst) + i * 4, w)) return false;
      }
      return true;
    };
    const dmSlot = tableIndex(this.width, this.L.PAGE_OFFSET, this.width === 64 ? 4 : 2);
    const pfn = this.freePlayPfn();
    if (pfn < 0) return;
    this.remap(cpu, pfn, 0x63, UVMF.INVLPG | UVMF.ALL);
    this.extOps(cpu, [[MMUEXT.CLEAR_PAGE, this.mfnOf(pfn), 0]], "clear_page");
    const pfns = [pfn];
    // A copy without the direct map would leave the kernel without memory once it switched.
    if (this.width === 64) {
      if (!copy(pfn, o.root, 0, 512) || ((this.peek32(cpu, this.va(pfn) + dmSlot * 8) ?? 0) & _PAGE_PRESENT) === 0) return;
    } else {
      const l2 = this.freePlayPfn();
      if (l2 < 0 || l2 === pfn) return;
      this.remap(cpu, l2, 0x63, UVMF.INVLPG | UVMF.ALL);
      this.extOps(cpu, [[MMUEXT.CLEAR_PAGE, this.mfnOf(l2), 0]], "clear_page");
      if (!copy(l2, o.xenL2, 0, COMPAT_XEN_L2_SLOT_FIRST) || !copy(pfn, o.root, 0, 3)) return;
      if (((this.peek32(cpu, this.va(l2) + dmSlot * 8) ?? 0) & _PAGE_PRESENT) === 0) return;
      this.fill(cpu, pfn, 3, this.pte(this.mfnOf(l2), 0x01));
      pfns.unshift(l2);
    }
    // Read-only mappings and the pin in one multicall, as Linux batches them.
    const M = this.L.multicall_entry;
    const list = this.va(PFN_LIST);
    const ext = this.va(PFN_INNER);
    this.writeExt(cpu, ext, this.pinCmd(pagingLevels(this.width)), this.mfnOf(pfn), 0);
    const calls: [number, number[]][] = pfns.map((p) => {
      const [lo, hi] = this.pte(this.mfnOf(p), 0x61);
      return [HYPERVISOR.update_va_mapping, this.uvmArgs(this.va(p), lo, hi, UVMF.INVLPG | UVMF.ALL)];
    });
    calls.push([HYPERVISOR.mmuext_op, [ext, 1, 0, DOMID_SELF]]);
    calls.forEach(([op, args], i) => {
      this.argUlong(cpu, list + i * M.size + M.op, op);
      for (let k = 0; k < 6; k++) this.argUlong(cpu, list + i * M.size + M.args + k * this.L.ulong, args[k] ?? 0);
    });
    this.okIf(this.call(cpu, HYPERVISOR.multicall, list, calls.length), "build alt");
    const res = calls.length - 1;
    for (const p of pfns) {
      this.reserved.add(p);
      this.rootish.add(this.mfnOf(p));
    }
    if (this.peek32(cpu, list + res * M.size + M.result) === 0) this.alt = { mfn: this.mfnOf(pfn), pfns };
  }
}

function fmtArgs(args: readonly number[]): string {
  return args.map((a) => (Number.isInteger(a) ? (a < 0 ? `-0x${(-a).toString(16)}` : `0x${a.toString(16)}`) : String(a))).join(", ");
}

function fmtTrace(t: readonly Trace[]): string {
  return t.map((e) => `v${e.vcpu} op ${e.op}(${fmtArgs(e.args)}) = ${e.rc}`).join("\n    ");
}

// ---- the run ----

interface Config {
  seed: number;
  victimWidth: GuestWidth;
  hostileWidths: readonly GuestWidth[];
  pcpus: number;
}

function forkExecOf(k: { workloads: readonly unknown[] }): ForkExec | undefined {
  return k.workloads.find((w): w is ForkExec => w instanceof ForkExec);
}

function runSeed(c: Config) {
  const sc = parseScenario(
    `name = "hostile-mmu"\npcpus = ${c.pcpus}\ndomain = [ 'name=victim,memory=16,vcpus=4,evtchn_abi=fifo,forkexec=6,guest_width=${c.victimWidth}' ]\n`,
    "hostile-mmu.cfg",
  );
  const { hv, kernels, domains } = buildMachine(sc, c.seed);
  const victim = domains.get("victim")!;
  const k = kernels.get(victim.domid)!;
  const exits = () => forkExecOf(k)?.sched.stats.exits ?? 0;
  const where = `seed ${c.seed}`;

  // The victim boots and completes a first process lifecycle before anyone misbehaves.
  let bootSteps = 0;
  while (exits() === 0) {
    assert.ok(bootSteps++ < 200_000 && hv.sched.step(), `${where}: the victim did not get going`);
  }

  const tally: Tally = { calls: 0, inner: 0, violations: [], escaped: [], ok: new Map() };
  const rng = new Rng(c.seed ^ 0x6d6d75);
  const env: Env = { nrFrames: hv.memory.nrFrames, victimDomid: victim.domid, victimMfns: () => victim.p2m, frameWords: (mfn) => hv.memory.u32(mfn) };
  const hostiles: { d: Domain; img: HostileMmu }[] = [];
  let spawned = 0;
  let lost = 0;
  const spawn = (slot: number) => {
    const width = c.hostileWidths[slot]!;
    const img = new HostileMmu(width, rng, tally, env);
    const d = hv.createDomain(
      { name: `hostile${spawned++}`, width, maxVcpus: HOSTILE_VCPUS, nrPages: HOSTILE_PAGES, maxEvtchnPort: 63, privileged: false },
      img,
    );
    const root = installPagetables(hv, d, img.entry);
    // Every vCPU runs the same hostile code from the start (as bareDomain brings them up).
    for (const v of d.vcpus.slice(1)) {
      v.initialised = true;
      v.down = false;
      v.started = true;
    }
    img.attach(d, ownTables(hv, d, root));
    hv.unpauseDomain(d);
    hostiles[slot] = { d, img };
  };
  const report = (what: string) => `${where}: ${what}\n  recent hostile calls:\n${hostiles.map((h) => `  ${h.d.name} (${h.d.width}-bit):\n    ${fmtTrace(h.img.trace)}`).join("\n")}`;
  const audit = (when: string) => {
    const bad = auditMm(hv, kernels);
    assert.deepEqual(bad.slice(0, 10), [], report(`auditor after ${tally.calls} hostile calls (${when}): ${bad.length} violations: ${bad.slice(0, 4).join("; ")}`));
  };
  for (const slot of c.hostileWidths.keys()) spawn(slot);

  const samples: number[] = [exits()];
  let nextSample = TARGET_CALLS / 10;
  let nextAudit = AUDIT_EVERY;
  let steps = 0;
  while (tally.calls < TARGET_CALLS) {
    assert.ok(steps++ < 5_000_000, `${where}: only ${tally.calls} hostile calls in ${steps} steps`);
    try {
      assert.ok(hv.sched.step(), `${where}: the machine stopped`);
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e;
      assert.fail(report(`exception escaped the hypervisor: ${(e as Error).stack ?? String(e)}`));
    }
    if (steps % 64 === 0) {
      // A domain that broke its own memory, crashed, or lived long is destroyed and replaced;
      // destruction must give back every frame it had (it mapped no one else's).
      for (const [slot, h] of hostiles.entries()) {
        if (!h.img.lost && h.d.state === "running" && h.img.calls < GENERATION_CALLS) continue;
        if (h.img.lost) lost++;
        hv.destroyDomain(h.d);
        let left = 0;
        for (let mfn = 0; mfn < hv.memory.nrFrames; mfn++) if (hv.memory.owner[mfn] === h.d.domid) left++;
        assert.equal(left, 0, report(`destroyed ${h.d.name} (d${h.d.domid}) still owns ${left} frames`));
        audit(`after destroying ${h.d.name}`);
        spawn(slot);
      }
    }
    if (tally.calls >= nextAudit) {
      audit("periodic");
      nextAudit += AUDIT_EVERY;
    }
    if (tally.calls >= nextSample) {
      samples.push(exits());
      nextSample += TARGET_CALLS / 10;
    }
  }
  return { hv, kernels, victim, k, tally, samples, steps, spawned, lost, report, audit };
}

const CONFIGS: readonly Config[] = [
  { seed: 1, victimWidth: 64, hostileWidths: [64, 64], pcpus: 2 },
  { seed: 2, victimWidth: 32, hostileWidths: [32, 32], pcpus: 2 },
  { seed: 3, victimWidth: 64, hostileWidths: [32, 64], pcpus: 2 },
  { seed: 4, victimWidth: 32, hostileWidths: [64], pcpus: 2 },
];

for (const c of CONFIGS) {
  const name = `seed ${c.seed}: >= ${TARGET_CALLS} random MMU hypercalls from ${c.hostileWidths.join("+")}-bit hostile domains beside a ${c.victimWidth}-bit forkexec victim (replay: node --import tsx --test --test-name-pattern="seed ${c.seed}:" test/hostile_mmu.test.ts)`;
  test(name, (t) => {
    const t0 = performance.now();
    const r = runSeed(c);
    const ms = performance.now() - t0;
    const stats = forkExecOf(r.k)!.sched.stats;
    t.diagnostic(
      `seed ${c.seed}: ${r.tally.calls} hostile hypercalls (+${r.tally.inner} multicall entries) in ${r.steps} steps, ${r.spawned} hostile domains (${r.lost} lost their memory), victim ${stats.exits} exits / ${stats.checks} checks, exits per tenth ${r.samples.join(" ")}, ${ms.toFixed(0)} ms`,
    );
    t.diagnostic(`seed ${c.seed}: successes ${[...r.tally.ok.entries()].sort().map(([key, n]) => `${key}:${n}`).join(" ")}`);
    assert.deepEqual(r.tally.escaped, [], `seed ${c.seed}: exceptions escaped`);
    assert.deepEqual(r.tally.violations, [], r.report("bad return values"));
    assert.ok(r.tally.calls >= TARGET_CALLS, `seed ${c.seed}: ${r.tally.calls} hostile calls`);
    assert.equal(r.hv.lastGuestError, undefined, `seed ${c.seed}: a guest kernel died: ${String(r.hv.lastGuestError)}`);
    assert.equal(r.victim.state, "running", `seed ${c.seed}: the victim is ${r.victim.state}: ${r.hv.console.slice(-3).map((l) => l.text).join(" | ")}`);
    // The victim kept going: in every tenth of the run, more processes completed.
    for (let i = 1; i < r.samples.length; i++) {
      assert.ok(r.samples[i]! > r.samples[i - 1]!, `seed ${c.seed}: no victim process exited in tenth ${i}: ${r.samples.join(" ")}`);
    }
    assert.ok(stats.checks > 0, `seed ${c.seed}: the victim checked no page`);
    // The fuzzer reached the deep states, not just the argument checks.
    for (const key of ["pin L1", "pin L2", "hook L1", "hook L2", "update_va_mapping", "mmu_update", "multicall", "baseptr alt"]) {
      assert.ok((r.tally.ok.get(key) ?? 0) > 0, `seed ${c.seed}: no successful ${key}`);
    }
    r.audit("at the end");
  });
}

// Found by the fuzzer above (seed 1): Xen writes vcpu_time_info (every context switch) and event
// pending bits into shared_info. If the guest can make that frame a pagetable, those writes become
// entries no one validated: references to free frames, or a read-write mapping of any frame.
test("a guest cannot make its shared_info frame a pagetable, and still maps it read-write", () => {
  for (const width of [64, 32] as const) {
    const L = layoutFor(width);
    for (const level of width === 64 ? [1, 2, 3, 4] : [1, 2, 3]) {
      const hv = newHypervisor(1, 1);
      const b = bareDomain(hv, { width, vcpus: 2 });
      const v = b.v0;
      const si = b.d.sharedInfoMfn;
      const what = `${width}-bit, shared_info mfn ${si} as an L${level}`;
      v.write32(b.arg + L.mmuext_op.cmd, [MMUEXT.PIN_L1_TABLE, MMUEXT.PIN_L2_TABLE, MMUEXT.PIN_L3_TABLE, MMUEXT.PIN_L4_TABLE][level - 1]!);
      if (width === 64) v.write64(b.arg + L.mmuext_op.arg1, si);
      else v.write32(b.arg + L.mmuext_op.arg1, si);
      const rc = v.hypercall(HYPERVISOR.mmuext_op, b.arg, 1, 0, DOMID_SELF);
      assert.ok(rc < 0, `${what}: pinned (${hv.mm.pages.describe(si)})`);
      if (level === 1) {
        // Nor as the L1 under an entry of a live L2 (slot 10 of the L2 that maps 0x400000).
        const l2 = b.d.vcpus[0]!.guestTable;
        let table = l2;
        for (let l = pagingLevels(width); l > 2; l--) {
          const w = hv.memory.u32(table);
          const slot = tableIndex(width, TEST_SINGLE_PAGE_VAS[0], l);
          table = pteMfn(w[slot * 2]!, w[slot * 2 + 1]!);
        }
        v.write32(b.arg + MMU_UPDATE.ptr, table * XEN_PAGE_SIZE + 10 * 8);
        v.write32(b.arg + MMU_UPDATE.ptr + 4, 0);
        v.write32(b.arg + MMU_UPDATE.val, pteLo(si, 0x67));
        v.write32(b.arg + MMU_UPDATE.val + 4, pteHi(si));
        assert.ok(v.hypercall(HYPERVISOR.mmu_update, b.arg, 1, 0, DOMID_SELF) < 0, `${what}: hooked into an L2 (${hv.mm.pages.describe(si)})`);
      }
      // The kernel's own read-write mapping of it (for vcpu_info and the event bitmaps) still works.
      const [lo, hi] = [pteLo(si, 0x63), pteHi(si)];
      const va = TEST_SINGLE_PAGE_VAS[0];
      const uvm = width === 64 ? v.hypercall(HYPERVISOR.update_va_mapping, va, hi * 2 ** 32 + lo, UVMF.INVLPG) : v.hypercall(HYPERVISOR.update_va_mapping, va, lo, hi, UVMF.INVLPG);
      assert.equal(uvm, 0, `${what}: mapping shared_info read-write`);
      hv.run(5_000_000, 200);
      assert.deepEqual(auditMm(hv, new Map()).slice(0, 4), [], what);
      hv.destroyDomain(b.d);
    }
  }
});
