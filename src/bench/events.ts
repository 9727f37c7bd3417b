// `xensim bench events`: end-to-end event deliveries per second, from the send hypercall
// through Xen, the upcall and the guest's IRQ layer to the handler, beside a raw baseline
// measured in the same run: set a bit in a typed array, scan for it, call through an array.

import { IpiPingPong, EvtchnPingPong, FanIn } from "../guest/workloads.ts";
import { buildMachine, parseScenario, type Machine } from "../harness/scenario.ts";
import { type BenchRow, interleave, machineRate, row, warm } from "./common.ts";

export type { BenchRow } from "./common.ts";

interface Case {
  name: string;
  scenario: (abi: string) => string;
  deliveries: (m: Machine) => number;
}

const CASES: Case[] = [
  {
    name: "ipi-pingpong",
    scenario: (abi) => `pcpus = 2\ndomain = [ 'name=a,memory=16,vcpus=2,evtchn_abi=${abi},ipi_pingpong=1000000000' ]`,
    deliveries: (m) => sum(m, (w) => (w instanceof IpiPingPong ? w.total : 0)),
  },
  {
    name: "interdomain-pingpong",
    scenario: (abi) =>
      `pcpus = 2\ndomain = [ 'name=a,memory=16,vcpus=1,evtchn_abi=${abi},pingpong_with=b', 'name=b,memory=16,vcpus=1,evtchn_abi=${abi},pingpong_with=a' ]`,
    deliveries: (m) => sum(m, (w) => (w instanceof EvtchnPingPong ? w.stats.handled : 0)),
  },
  {
    name: "fanin-1000",
    scenario: (abi) =>
      `pcpus = 2\ndomain = [ 'name=a,memory=16,vcpus=1,evtchn_abi=${abi},fanin_to=b,fanin_ports=1000', 'name=b,memory=16,vcpus=1,evtchn_abi=${abi}' ]`,
    deliveries: (m) => sum(m, (w) => (w instanceof FanIn && !w.isSender ? w.ports.reduce((a, p) => a + p.handled, 0) : 0)),
  },
];

function sum(m: Machine, f: (w: unknown) => number): number {
  let n = 0;
  for (const k of m.kernels.values()) for (const w of k.workloads) n += f(w);
  return n;
}

/** Median rates of the machine and of the raw baseline, in alternating rounds (see common.ts). */
function measure(c: Case, abi: string, ms: number): { value: number; baseline: number } {
  const m = buildMachine(parseScenario(c.scenario(abi), `${c.name}.cfg`), 1);
  // Boot and warm up (JIT) before timing.
  warm(m, 20_000);
  rawBaseline(50);
  return interleave(
    ms,
    (roundMs) => machineRate(m, roundMs, () => c.deliveries(m)),
    (roundMs) => rawBaseline(roundMs),
  );
}

/** The raw baseline: set a bit, scan the bitmap for it, clear it, call its handler through an array. */
export function rawBaseline(ms: number, ports = 1024): number {
  const bits = new Uint32Array(ports >> 5);
  let count = 0;
  const handlers: (() => void)[] = [];
  for (let i = 0; i < ports; i++) handlers.push(() => count++);
  let port = 0;
  const t0 = performance.now();
  let t = t0;
  let n = 0;
  while (t - t0 < ms) {
    for (let i = 0; i < 65536; i++) {
      port = (port + 37) % ports;
      bits[port >>> 5]! |= 1 << (port & 31);
      for (let w = 0; w < bits.length; w++) {
        const word = bits[w]!;
        if (word === 0) continue;
        const b = 31 - Math.clz32(word & -word);
        bits[w] = word & ~(1 << b);
        handlers[(w << 5) | b]!();
        break;
      }
    }
    n += 65536;
    t = performance.now();
  }
  if (count !== n) throw new Error("baseline lost events");
  return (n * 1000) / (t - t0);
}

export const EVENT_CASES = CASES.flatMap((c) => ["2l", "fifo"].map((abi) => `${c.name}-${abi}`));

/** Runs the named cases (all by default) in this process. */
export function benchEvents(ms = 1000, progress: (line: string) => void = () => {}, only?: readonly string[]): BenchRow[] {
  const rows: BenchRow[] = [];
  for (const abi of ["2l", "fifo"]) {
    for (const c of CASES) {
      if (only && !only.includes(`${c.name}-${abi}`)) continue;
      const { value, baseline } = measure(c, abi, ms);
      const r = row(`${c.name}-${abi}`, value, "deliveries/s", baseline);
      progress(`${r.name}: ${r.value} ${r.unit} (baseline ${r.baseline}, ratio ${r.ratio.toFixed(3)})`);
      rows.push(r);
    }
  }
  return rows;
}
