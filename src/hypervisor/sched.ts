// A seeded scheduler in virtual time. Each physical CPU has its own clock; the one furthest
// behind runs next, so vCPUs on different pCPUs interleave step by step. The seed decides
// the runqueue picks, preemptions and jitter in step costs: one (scenario, seed) is one run.

import { Rng } from "../util/rng.ts";
import { NO_DEADLINE, type Vcpu } from "./vcpu.ts";

export interface SchedParams {
  nrPcpus: number;
  seed: number;
  /** Time slice before a runnable vCPU gives way to a waiting one (ns). */
  sliceNs: number;
  /** Per-step probability of preempting early when others wait (explores interleavings). */
  preemptChance: number;
  /** Fixed cost of one scheduling step (ns); jitter adds up to half as much again. */
  stepNs: number;
}

export const DEFAULT_SCHED: SchedParams = { nrPcpus: 2, seed: 1, sliceNs: 1_000_000, preemptChance: 0.02, stepNs: 200 };

interface Pcpu {
  readonly id: number;
  clock: number;
  current: Vcpu | null;
  sliceEnd: number;
}

/** What the scheduler asks of the hypervisor around it. */
export interface SchedHost {
  /** Runs one quantum of `v` (events, then guest code). */
  runVcpu(v: Vcpu): void;
  /** Fires every timer due at or before `now`. */
  fireTimers(now: number): void;
  /** The earliest pending timer deadline, or NO_DEADLINE. */
  nextDeadline(): number;
  /** Called when `v` goes onto a pCPU. */
  contextSwitchIn(v: Vcpu, now: number): void;
}

export class Scheduler {
  readonly rng: Rng;
  readonly pcpus: Pcpu[];
  private readonly runq: Vcpu[] = [];
  private readonly wokenAt = new Map<Vcpu, number>();
  /** Cost accumulated by the step in progress. */
  private stepCost = 0;
  private stepPcpu: Pcpu | null = null;
  steps = 0;
  private readonly stepNs: number;
  private readonly jitterNs: number;

  constructor(
    readonly params: SchedParams,
    private readonly host: SchedHost,
  ) {
    this.rng = new Rng(params.seed);
    this.stepNs = params.stepNs;
    this.jitterNs = params.stepNs >> 1;
    this.pcpus = [];
    for (let id = 0; id < params.nrPcpus; id++) this.pcpus.push({ id, clock: 0, current: null, sliceEnd: 0 });
  }

  /** Virtual time as seen by `v` (its pCPU's clock plus the running step's cost so far). */
  now(v?: Vcpu): number {
    if (v && v.pcpu >= 0) {
      const p = this.pcpus[v.pcpu]!;
      return p.clock + (p === this.stepPcpu ? this.stepCost : 0);
    }
    if (this.stepPcpu) return this.stepPcpu.clock + this.stepCost;
    // The pCPUs with work set the time: an idle pCPU's clock stands still until it gets some
    // (chooseVcpu moves it on then), so it must not hold the machine's time back for ever.
    const waiting = this.runq.length > 0;
    let min = Number.POSITIVE_INFINITY;
    let minAll = Number.POSITIVE_INFINITY;
    for (const p of this.pcpus) {
      if (p.clock < minAll) minAll = p.clock;
      if ((waiting || p.current?.runnable === true) && p.clock < min) min = p.clock;
    }
    return min === Number.POSITIVE_INFINITY ? minAll : min;
  }

  spend(ns: number): void {
    this.stepCost += ns;
  }

  /** Makes `v` eligible to run (vcpu_wake). */
  wake(v: Vcpu): void {
    if (v.pcpu >= 0) {
      // Still on its pCPU (blocked there): that pCPU idled until now.
      const p = this.pcpus[v.pcpu]!;
      const now = this.now();
      if (p !== this.stepPcpu && p.clock < now) p.clock = now;
      return;
    }
    if (v.queued) return;
    v.queued = true;
    this.runq.push(v);
    this.wokenAt.set(v, this.now());
  }

  /** Takes `v` off its pCPU and out of the runqueue (it went down, paused or died). */
  evict(v: Vcpu): void {
    if (v.pcpu >= 0) {
      this.pcpus[v.pcpu]!.current = null;
      v.pcpu = -1;
    }
    if (v.queued) {
      v.queued = false;
      const i = this.runq.indexOf(v);
      if (i >= 0) this.runq.splice(i, 1);
    }
  }

  /** Forces `v` to give up its pCPU at the end of this step (SCHEDOP_yield). */
  yieldVcpu(v: Vcpu): void {
    if (v.pcpu >= 0) this.pcpus[v.pcpu]!.sliceEnd = 0;
  }

  /** Runs one step. Returns false when nothing can ever run again (no work, no timers). */
  step(): boolean {
    const p = this.pickPcpu();
    if (!p) {
      const deadline = this.host.nextDeadline();
      if (deadline === NO_DEADLINE) return false;
      for (const q of this.pcpus) if (q.clock < deadline) q.clock = deadline;
      this.host.fireTimers(deadline);
      return true;
    }
    // Timers fire at p's time: a vCPU they wake on an idle pCPU that lags behind must catch up
    // to it (see wake()), or it would see its timer fire early and re-arm it again and again.
    this.stepPcpu = p;
    this.stepCost = 0;
    this.host.fireTimers(p.clock);
    this.stepPcpu = null;
    const v = this.chooseVcpu(p);
    if (!v) return true;
    this.steps++;
    this.stepPcpu = p;
    this.stepCost = 0;
    this.host.runVcpu(v);
    p.clock += this.stepNs + this.rng.below(this.jitterNs) + this.stepCost;
    this.stepPcpu = null;
    this.stepCost = 0;
    return true;
  }

  private pickPcpu(): Pcpu | null {
    let best: Pcpu | null = null;
    const waiting = this.runq.length > 0;
    for (const p of this.pcpus) {
      const busy = p.current?.runnable === true;
      if (!busy && !waiting) continue;
      if (best === null || p.clock < best.clock || (p.clock === best.clock && this.rng.chance(0.5))) best = p;
    }
    return best;
  }

  private chooseVcpu(p: Pcpu): Vcpu | null {
    const cur = p.current;
    if (cur && !cur.runnable) this.deschedule(p);
    const stay =
      p.current !== null && (this.runq.length === 0 || (p.clock < p.sliceEnd && !this.rng.chance(this.params.preemptChance)));
    if (stay) return p.current;
    if (p.current) {
      const prev = p.current;
      this.deschedule(p);
      this.wake(prev);
    }
    while (this.runq.length > 0) {
      const i = this.rng.below(Math.min(this.runq.length, 4));
      const v = this.runq.splice(i, 1)[0]!;
      v.queued = false;
      const woken = this.wokenAt.get(v) ?? 0;
      this.wokenAt.delete(v);
      if (!v.runnable) continue;
      if (p.clock < woken) p.clock = woken;
      p.current = v;
      v.pcpu = p.id;
      p.sliceEnd = p.clock + this.params.sliceNs;
      this.host.contextSwitchIn(v, p.clock);
      return v;
    }
    return null;
  }

  private deschedule(p: Pcpu): void {
    const v = p.current;
    if (!v) return;
    v.pcpu = -1;
    p.current = null;
  }
}
