// A seeded scheduler in virtual time. Each physical CPU has its own clock; the one furthest
// behind runs next, so vCPUs on different pCPUs interleave step by step. The seed decides
// the runqueue picks, preemptions and jitter in step costs: one (scenario, seed) is one run.

import { Rng } from "../util/rng.ts";
import { NO_DEADLINE, type Vcpu } from "./vcpu.ts";

/** Which scheduler runs the machine: the seeded interleaver (scenarios) or Xen's credit (hosts). */
export type SchedKind = "interleave" | "credit";

export interface SchedParams {
  kind: SchedKind;
  nrPcpus: number;
  seed: number;
  /** Time slice before a runnable vCPU gives way to a waiting one (ns). */
  sliceNs: number;
  /** Per-step probability of preempting early when others wait (explores interleavings). */
  preemptChance: number;
  /** Fixed cost of one scheduling step (ns); jitter adds up to half as much again. */
  stepNs: number;
  /** credit: the time slice (sched_credit_tslice_ms) and the context-switch rate limit (sched_ratelimit_us). */
  tsliceMs: number;
  ratelimitUs: number;
}

export const DEFAULT_SCHED: SchedParams = {
  kind: "interleave",
  nrPcpus: 2,
  seed: 1,
  sliceNs: 1_000_000,
  preemptChance: 0.02,
  stepNs: 200,
  tsliceMs: 30,
  ratelimitUs: 1000,
};

/** A physical CPU as the rest of the hypervisor may look at it (debug keys, physinfo). */
export interface PcpuView {
  readonly id: number;
  readonly clock: number;
  readonly current: Vcpu | null;
}

/** What the hypervisor asks of a scheduler; both schedulers are deterministic from the seed. */
export interface VcpuScheduler {
  readonly kind: SchedKind;
  readonly params: SchedParams;
  readonly pcpus: readonly PcpuView[];
  /** vCPU quanta run so far. */
  readonly steps: number;
  /** Virtual time as seen by `v` (its pCPU's clock plus the running step's cost so far). */
  now(v?: Vcpu): number;
  /** Adds `ns` to the cost of the step in progress. */
  spend(ns: number): void;
  /** Makes `v` eligible to run (vcpu_wake); `v` is runnable. */
  wake(v: Vcpu): void;
  /** Takes `v` off its pCPU and out of the runqueues (it went down, paused, parked or died). */
  evict(v: Vcpu): void;
  /** SCHEDOP_yield. */
  yieldVcpu(v: Vcpu): void;
  /** `v`'s hard affinity changed: it must not stay where it may no longer run. */
  affinityChanged(v: Vcpu): void;
  /** Runs one step. Returns false when nothing can ever run again (no work, no timers). */
  step(): boolean;
  /** The 'r' debug key's dump. */
  dump(): string[];
}

/** Whether `v`'s hard affinity lets it run on pCPU `cpu`. */
export function affinityAllows(v: Vcpu, cpu: number): boolean {
  const a = v.hardAffinity;
  return a === null || a[cpu] === 1;
}

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
  /** `v` may have changed runstate (running, runnable, blocked, offline) at `now`. */
  runstateChanged(v: Vcpu, now: number): void;
}

/** The seeded interleaving scheduler: random picks and early preemptions, to explore races. */
/**
 * The step in progress on one pCPU: what it has cost so far (hypercalls charge it), so that time
 * read during the step moves on, and the pCPU's clock advances by base cost, jitter and charges.
 */
export class StepMeter<P extends { clock: number }> {
  /** The pCPU whose step is in progress, if any. */
  pcpu: P | null = null;
  cost = 0;
  private readonly jitterNs: number;

  constructor(
    private readonly stepNs: number,
    private readonly rng: Rng,
  ) {
    this.jitterNs = stepNs >> 1;
  }

  /** `p`'s time, with the running step's cost if the step is p's. */
  clockOf(p: P): number {
    return p.clock + (p === this.pcpu ? this.cost : 0);
  }

  /** Opens a window on `p` in which time reads as p's (timers, accounting). */
  begin(p: P): void {
    this.pcpu = p;
    this.cost = 0;
  }

  end(): void {
    this.pcpu = null;
    this.cost = 0;
  }

  /** Runs one quantum of `v` on `p` and moves p's clock past it. */
  run(p: P, v: Vcpu, host: SchedHost): void {
    this.begin(p);
    host.runVcpu(v);
    p.clock += this.stepNs + this.rng.below(this.jitterNs) + this.cost;
    this.end();
  }
}

export class Scheduler implements VcpuScheduler {
  readonly kind = "interleave";
  readonly rng: Rng;
  readonly pcpus: Pcpu[];
  private readonly runq: Vcpu[] = [];
  private readonly wokenAt = new Map<Vcpu, number>();
  /** vCPUs with a hard affinity: while there are none, picks are made exactly as without affinity. */
  private readonly restricted = new Set<Vcpu>();
  private readonly meter: StepMeter<Pcpu>;
  steps = 0;

  constructor(
    readonly params: SchedParams,
    private readonly host: SchedHost,
  ) {
    this.rng = new Rng(params.seed);
    this.meter = new StepMeter(params.stepNs, this.rng);
    this.pcpus = [];
    for (let id = 0; id < params.nrPcpus; id++) this.pcpus.push({ id, clock: 0, current: null, sliceEnd: 0 });
  }

  /** Virtual time as seen by `v` (its pCPU's clock plus the running step's cost so far). */
  now(v?: Vcpu): number {
    if (v && v.pcpu >= 0) {
      return this.meter.clockOf(this.pcpus[v.pcpu]!);
    }
    if (this.meter.pcpu) return this.meter.clockOf(this.meter.pcpu);
    // The pCPUs with work set the time: an idle pCPU's clock stands still until it gets some
    // (chooseVcpu moves it on then), so it must not hold the machine's time back for ever.
    let min = Number.POSITIVE_INFINITY;
    let minAll = Number.POSITIVE_INFINITY;
    for (const p of this.pcpus) {
      if (p.clock < minAll) minAll = p.clock;
      if ((this.waitingFor(p) || p.current?.runnable === true) && p.clock < min) min = p.clock;
    }
    return min === Number.POSITIVE_INFINITY ? minAll : min;
  }

  spend(ns: number): void {
    this.meter.cost += ns;
  }

  /** Makes `v` eligible to run (vcpu_wake). */
  wake(v: Vcpu): void {
    if (v.pcpu >= 0) {
      // Still on its pCPU (blocked there): that pCPU idled until now.
      const p = this.pcpus[v.pcpu]!;
      const now = this.now();
      if (p !== this.meter.pcpu && p.clock < now) p.clock = now;
      this.host.runstateChanged(v, this.now(v));
      return;
    }
    if (v.queued) return;
    v.queued = true;
    this.runq.push(v);
    const now = this.now();
    this.wokenAt.set(v, now);
    this.host.runstateChanged(v, now);
  }

  /** Takes `v` off its pCPU and out of the runqueue (it went down, paused or died). */
  evict(v: Vcpu): void {
    const now = this.now(v);
    if (v.pcpu >= 0) {
      this.pcpus[v.pcpu]!.current = null;
      v.pcpu = -1;
    }
    if (v.queued) {
      v.queued = false;
      const i = this.runq.indexOf(v);
      if (i >= 0) this.runq.splice(i, 1);
    }
    if (v.domain.state === "dying") this.restricted.delete(v);
    this.host.runstateChanged(v, now);
  }

  affinityChanged(v: Vcpu): void {
    if (v.hardAffinity) this.restricted.add(v);
    else this.restricted.delete(v);
    // A vCPU on a pCPU it may no longer use gives it up at its next step (see chooseVcpu).
    if (v.pcpu >= 0 && !affinityAllows(v, v.pcpu)) this.pcpus[v.pcpu]!.sliceEnd = 0;
  }

  dump(): string[] {
    return this.pcpus.map((p) => `CPU[${String(p.id).padStart(2, "0")}] current=${p.current ? `d${p.current.domain.domid}v${p.current.id}` : "idle"} clock=${p.clock}`);
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
    this.meter.begin(p);
    this.host.fireTimers(p.clock);
    this.meter.end();
    const v = this.chooseVcpu(p);
    if (!v) return true;
    this.steps++;
    this.meter.run(p, v, this.host);
    // It may have blocked or gone down in that step: its runstate says so from the step's end.
    if (p.current === v && !v.runnable) this.host.runstateChanged(v, p.clock);
    return true;
  }

  private pickPcpu(): Pcpu | null {
    let best: Pcpu | null = null;
    for (const p of this.pcpus) {
      const busy = p.current?.runnable === true;
      if (!busy && !this.waitingFor(p)) continue;
      if (best === null || p.clock < best.clock || (p.clock === best.clock && this.rng.chance(0.5))) best = p;
    }
    return best;
  }

  private chooseVcpu(p: Pcpu): Vcpu | null {
    const cur = p.current;
    if (cur && !cur.runnable) this.deschedule(p);
    if (p.current && !affinityAllows(p.current, p.id)) {
      const prev = p.current;
      this.deschedule(p);
      this.wake(prev);
    }
    const stay = p.current !== null && (!this.waitingFor(p) || (p.clock < p.sliceEnd && !this.rng.chance(this.params.preemptChance)));
    if (stay) return p.current;
    if (p.current) {
      const prev = p.current;
      this.deschedule(p);
      this.wake(prev);
    }
    while (this.runq.length > 0) {
      const i = this.restricted.size === 0 ? this.rng.below(Math.min(this.runq.length, 4)) : this.pickAllowed(p);
      if (i < 0) break;
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
    this.host.runstateChanged(v, p.clock);
  }

  /** Whether a queued vCPU could run on `p`. */
  private waitingFor(p: Pcpu): boolean {
    if (this.restricted.size === 0) return this.runq.length > 0;
    for (const v of this.runq) if (affinityAllows(v, p.id)) return true;
    return false;
  }

  /** One of the first four queued vCPUs allowed on `p`, by the seed; -1 if there is none. */
  private pickAllowed(p: Pcpu): number {
    const cands: number[] = [];
    for (let i = 0; i < this.runq.length && cands.length < 4; i++) if (affinityAllows(this.runq[i]!, p.id)) cands.push(i);
    return cands.length === 0 ? -1 : cands[this.rng.below(cands.length)]!;
  }
}
