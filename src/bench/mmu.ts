// `xensim bench mmu`: the PV MMU's cost, each case beside a raw baseline measured in the same
// run (rounds alternate; medians count; the ratio is the result):
//
//   pin            MMUEXT_PIN_L4_TABLE then MMUEXT_UNPIN_TABLE (PvMm.pin / unpin) of a 4-level
//                  tree mapping 1 GiB (1 L4, 1 L3, 1 L2, 512 L1s: 262,658 present entries, the
//                  L1 entries mapping 16 data frames writable over and over) in a bare domain:
//                  validation of the whole tree and its devalidation. Reported as tables/s
//                  (pin) and present entries/s (pin-ptes). Baseline: reading both u32 halves of
//                  every entry of the same 515 frames and summing them.
//   forkexec       process lifecycles (fork, exec, faults, COW, exit, unpin) per wall-clock
//                  second, in a 4-vCPU guest on 4 pCPUs with forkexec=8. Baseline: a raw
//                  lifecycle, the typed-array work a lifecycle does as counted in the same run:
//                  per mm created, a minimal 4-level tree (4 frames zeroed, linked and read
//                  back); per fault, a page zeroed; per COW, a page copied.
//   shootdown      TLB shootdowns (flush_tlb_mm / flush_tlb_page / drop_mm_ref reaching other
//   shootdown-ipi  CPUs) per wall-clock second, in an 8-vCPU guest on 4 pCPUs with forkexec=16
//                  and mmapstress=1, through MMUEXT_TLB_FLUSH_MULTI / INVLPG_MULTI, or through
//                  IPIs (tlb_flush=ipi). Baseline: Tlb.flushAll on 8 TLB models per shootdown.

import type { GuestCpu, GuestImage } from "../abi/cpu.ts";
import { pteHi, pteLo } from "../abi/x86.ts";
import { ForkExec } from "../guest/workloads_mm.ts";
import { Hypervisor } from "../hypervisor/hypervisor.ts";
import { PGT } from "../hypervisor/page_info.ts";
import { Tlb } from "../hypervisor/tlb.ts";
import { buildMachine, type Machine, parseScenario } from "../harness/scenario.ts";
import { type BenchRow, interleave, machineRate, rateFor, row, warm } from "./common.ts";

export const MMU_CASES = ["pin", "forkexec", "shootdown", "shootdown-ipi"] as const;

/** What each baseline is, for the human output. */
export const MMU_NOTES = [
  "pin, pin-ptes: baseline reads and sums both u32 halves of every entry of the same 515 table frames",
  "forkexec: baseline is a raw lifecycle: per mm a minimal 4-level tree zeroed, linked and read, per fault a page zeroed, per COW a page copied (counts per lifecycle from the same run)",
  "shootdown, shootdown-ipi: baseline is Tlb.flushAll on 8 TLB models per shootdown",
];

/** Runs one case in this process. */
export function benchMmu(name: string, ms = 1000): BenchRow[] {
  switch (name) {
    case "pin":
      return benchPin(ms);
    case "forkexec":
      return [benchForkExec(ms)];
    case "shootdown":
      return [benchShootdown(name, "hypercall", ms)];
    case "shootdown-ipi":
      return [benchShootdown(name, "ipi", ms)];
    default:
      throw new Error(`unknown case ${name}; known: ${MMU_CASES.join(", ")}`);
  }
}

// ---- pin ----

const DATA_FRAMES = 16;
const L1_TABLES = 512;
/** P | RW | US | A | D. */
const PTE_FLAGS = 0x67;

/** An image that never runs: the bare domain is only a page owner. */
const NO_CODE: GuestImage = { entry: 0, enter(_a: number, _c: GuestCpu): void {}, resume(): void {} };

interface PinTree {
  hv: Hypervisor;
  d: ReturnType<Hypervisor["createDomain"]>;
  l4: number;
  tables: number[];
  /** Present entries in the tree. */
  ptes: number;
}

/** A bare 64-bit domain holding a 4-level tree that maps 1 GiB, not yet validated. */
export function buildPinTree(): PinTree {
  const nrPages = L1_TABLES + 3 + DATA_FRAMES;
  const hv = new Hypervisor({ nrFrames: nrPages + 64, sched: { nrPcpus: 1, seed: 1 } });
  const d = hv.createDomain({ name: "pin", width: 64, maxVcpus: 1, nrPages, maxEvtchnPort: 63, privileged: false }, NO_CODE);
  const mfn = (pfn: number) => d.p2m[pfn]!;
  const set = (table: number, slot: number, target: number) => {
    const w = hv.memory.u32(table);
    w[slot * 2] = pteLo(target, PTE_FLAGS);
    w[slot * 2 + 1] = pteHi(target);
  };
  const l4 = mfn(0);
  const l3 = mfn(1);
  const l2 = mfn(2);
  const l1s = Array.from({ length: L1_TABLES }, (_, i) => mfn(3 + i));
  const data = Array.from({ length: DATA_FRAMES }, (_, i) => mfn(3 + L1_TABLES + i));
  const tables = [l4, l3, l2, ...l1s];
  for (const t of tables) hv.memory.u32(t).fill(0);
  set(l4, 0, l3);
  set(l3, 0, l2);
  let ptes = 2;
  for (let i = 0; i < L1_TABLES; i++) {
    set(l2, i, l1s[i]!);
    ptes++;
    for (let slot = 0; slot < 512; slot++) {
      set(l1s[i]!, slot, data[(i * 512 + slot) % DATA_FRAMES]!);
      ptes++;
    }
  }
  return { hv, d, l4, tables, ptes };
}

/** One pin and unpin of the tree: validation and devalidation of every table in it. */
function pinOnce(t: PinTree): void {
  const rc = t.hv.mm.pin(t.l4, PGT.l4, t.d);
  if (rc !== 0) throw new Error(`pin failed: ${rc}`);
  const rc2 = t.hv.mm.unpin(t.l4, t.d);
  if (rc2 !== 0) throw new Error(`unpin failed: ${rc2}`);
}

/** The baseline's pass: every entry word of every table, summed. */
function readTables(t: PinTree): number {
  let sum = 0;
  for (const mfn of t.tables) {
    const w = t.hv.memory.u32(mfn);
    for (let i = 0; i < w.length; i++) sum += w[i]!;
  }
  return sum;
}

const PIN_ROUNDS = 11;

function benchPin(ms: number): BenchRow[] {
  const t = buildPinTree();
  const expected = readTables(t);
  // Warm up (JIT) before timing; the first pin also takes the TLB flushes of the type changes.
  for (let i = 0; i < 3; i++) {
    pinOnce(t);
    readTables(t);
  }
  const p = t.hv.mm.pages;
  for (const mfn of t.tables) if (p.typeCount[mfn] !== 0 || p.validated(mfn)) throw new Error(`table ${mfn} still typed after unpin`);
  const { value, baseline } = interleave(
    ms,
    (roundMs) =>
      rateFor(roundMs, () => {
        pinOnce(t);
        return 1;
      }),
    (roundMs) =>
      rateFor(roundMs, () => {
        if (readTables(t) !== expected) throw new Error("baseline read the wrong words");
        return 1;
      }),
    // Short rounds, many of them: a pin takes a few ms, and the medians of more pairs
    // stand up better to other work on the host.
    PIN_ROUNDS,
  );
  const n = t.tables.length;
  return [row("pin", value * n, "tables/s", baseline * n), row("pin-ptes", value * t.ptes, "PTEs/s", baseline * t.ptes)];
}

// ---- forkexec ----

function forkExecOf(m: Machine): ForkExec {
  for (const k of m.kernels.values()) for (const w of k.workloads) if (w instanceof ForkExec) return w;
  throw new Error("no forkexec workload");
}

interface LifecycleShape {
  mms: number;
  faults: number;
  cows: number;
}

function benchForkExec(ms: number): BenchRow {
  const m = buildMachine(parseScenario("pcpus = 4\ndomain = [ 'name=b,memory=16,vcpus=4,evtchn_abi=fifo,forkexec=8' ]", "forkexec.cfg"), 1);
  warm(m, 20_000);
  const w = forkExecOf(m);
  const s0 = { ...w.sched.stats };
  warm(m, 100_000);
  const s = w.sched.stats;
  const lives = Math.max(1, s.exits - s0.exits);
  const shape: LifecycleShape = {
    mms: Math.max(1, Math.round((s.forks - s0.forks + s.execs - s0.execs) / lives)),
    faults: Math.round((s.faults - s0.faults) / lives),
    cows: Math.round((s.cows - s0.cows) / lives),
  };
  const raw = new RawLifecycle(shape);
  rateFor(50, () => raw.run(64));
  const { value, baseline } = interleave(
    ms,
    (roundMs) => machineRate(m, roundMs, () => w.sched.stats.exits),
    (roundMs) => rateFor(roundMs, () => raw.run(64)),
  );
  return row("forkexec", value, "lifecycles/s", baseline);
}

/** The typed-array work of process lifecycles of a given shape, on a pool of page frames. */
class RawLifecycle {
  private readonly pool: Uint32Array[] = Array.from({ length: 256 }, () => new Uint32Array(1024));
  private next = 0;
  sink = 0;

  constructor(private readonly shape: LifecycleShape) {}

  private frame(): Uint32Array {
    const f = this.pool[this.next]!;
    this.next = (this.next + 1) & 255;
    return f;
  }

  /** `n` lifecycles; returns n. */
  run(n: number): number {
    const { mms, faults, cows } = this.shape;
    for (let life = 0; life < n; life++) {
      for (let i = 0; i < mms; i++) {
        // A minimal tree: each level zeroed, linked to the next, and read back in full.
        let prev: Uint32Array | undefined;
        for (let level = 0; level < 4; level++) {
          const t = this.frame();
          t.fill(0);
          if (prev) prev[0] = (this.next << 12) | 0x67;
          prev = t;
        }
        for (let level = 0; level < 4; level++) {
          const t = this.pool[(this.next - 1 - level) & 255]!;
          let sum = 0;
          for (let k = 0; k < 1024; k++) sum += t[k]!;
          this.sink += sum;
        }
      }
      for (let i = 0; i < faults; i++) {
        const p = this.frame();
        p.fill(0);
        p[0] = life;
        this.sink += p[0]!;
      }
      for (let i = 0; i < cows; i++) {
        const src = this.frame();
        this.frame().set(src);
      }
    }
    return n;
  }
}

// ---- shootdown ----

function benchShootdown(name: string, flush: "hypercall" | "ipi", ms: number): BenchRow {
  const m = buildMachine(
    parseScenario(`pcpus = 4\ndomain = [ 'name=s,memory=32,vcpus=8,evtchn_abi=fifo,forkexec=16,mmapstress=1,tlb_flush=${flush}' ]`, `${name}.cfg`),
    1,
  );
  warm(m, 20_000);
  const k = [...m.kernels.values()][0]!;
  rawShootdowns(50);
  const { value, baseline } = interleave(
    ms,
    (roundMs) => machineRate(m, roundMs, () => k.mmu.shootdowns),
    (roundMs) => rawShootdowns(roundMs),
  );
  return row(name, value, "shootdowns/s", baseline);
}

/** The raw baseline: a full flush of 8 TLB models per shootdown; shootdowns per second. */
export function rawShootdowns(ms: number): number {
  const tlbs = Array.from({ length: 8 }, () => new Tlb());
  let clock = 0;
  const rate = rateFor(ms, () => {
    for (let i = 0; i < 4096; i++) for (const t of tlbs) t.flushAll(++clock);
    return 4096;
  });
  if (tlbs[0]!.flushes !== clock / 8) throw new Error("baseline lost flushes");
  return rate;
}
