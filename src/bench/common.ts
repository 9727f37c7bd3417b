// What every `xensim bench` suite shares: the row it reports, and the measuring discipline:
// rounds of the case and of its raw baseline alternate, so that drift in the host's speed hits
// both alike, and the median of each is what counts.

import type { Machine } from "../harness/scenario.ts";

export interface BenchRow {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  ratio: number;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/**
 * Runs `rounds` rounds of `value(ms / rounds)` each followed by `baseline(ms / rounds)`; both
 * return a rate. Returns the median of each.
 */
export function interleave(
  ms: number,
  value: (roundMs: number) => number,
  baseline: (roundMs: number) => number,
  rounds = 5,
): { value: number; baseline: number } {
  const values: number[] = [];
  const baselines: number[] = [];
  for (let r = 0; r < rounds; r++) {
    values.push(value(ms / rounds));
    baselines.push(baseline(ms / rounds));
  }
  return { value: median(values), baseline: median(baselines) };
}

/**
 * Calls `chunk` until `ms` have passed (at least once); it returns how many units it did.
 * Returns units per second.
 */
export function rateFor(ms: number, chunk: () => number): number {
  const t0 = performance.now();
  let t = t0;
  let n = 0;
  do {
    n += chunk();
    t = performance.now();
  } while (t - t0 < ms);
  return (n * 1000) / (t - t0);
}

export function row(name: string, value: number, unit: string, baseline: number): BenchRow {
  return { name, value: Math.round(value), unit, baseline: Math.round(baseline), ratio: value / baseline };
}

/** Scheduler steps on `m` (4096 at a time) for `ms`; returns how fast `counter` went up, per second. */
export function machineRate(m: Machine, ms: number, counter: () => number): number {
  const c0 = counter();
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < 4096; i++) m.hv.sched.step();
    t = performance.now();
  }
  return ((counter() - c0) * 1000) / (t - t0);
}

export function warm(m: Machine, steps: number): void {
  for (let i = 0; i < steps; i++) m.hv.sched.step();
}
