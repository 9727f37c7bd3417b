// Xen's credit scheduler (xen/common/sched/credit.c) in virtual time. Each pCPU has a runqueue
// sorted by priority (BOOST, UNDER, OVER); domains earn credit by weight every accounting period
// and their vCPUs burn it while they run; a vCPU that wakes from a block is boosted and preempts
// CPU hogs (after the context-switch rate limit); caps park a domain's vCPUs until it earns again;
// an idle pCPU, or one with nothing better than OVER work, steals from its peers; hard affinity
// is honoured everywhere.
//
// Time is the same as the interleaving scheduler's: each pCPU has its own clock and the one
// furthest behind among those with work steps next; a step runs one quantum of a vCPU. Ticks
// (10 ms), the accounting period (30 ms), slices and rate limits are checked at step boundaries.
// The seed decides only ties between pCPUs and the jitter of step costs, so one (machine, seed)
// is one run.

import { Rng } from "../util/rng.ts";
import type { Domain } from "./domain.ts";
import { affinityAllows, type PcpuView, type SchedHost, type SchedParams, StepMeter, type VcpuScheduler } from "./sched.ts";
import { NO_DEADLINE, type Vcpu } from "./vcpu.ts";

export const CSCHED_DEFAULT_WEIGHT = 256;
const TICKS_PER_TSLICE = 3;
const CREDITS_PER_MSEC = 10;
/** Running this long burns one credit. */
const NS_PER_CREDIT = 1_000_000 / CREDITS_PER_MSEC;
/** CSCHED_MIN_TIMER: no slice shorter than the smallest rate limit (100 us). */
const MIN_TIMER_NS = 100_000;

/** The priorities of credit.c (CSCHED_PRI_*). */
export const CSCHED_PRI = { BOOST: 0, UNDER: -1, OVER: -2, IDLE: -64 } as const;

/** The scheduler-wide parameters XEN_SYSCTL_scheduler_op reads and sets. */
export interface CreditParams {
  tsliceMs: number;
  ratelimitUs: number;
  migrDelayUs: number;
}

/** A domain's scheduling data (csched_dom). */
class CDom {
  weight = CSCHED_DEFAULT_WEIGHT;
  cap = 0;
  /** Its vCPUs that earn credit (the active list). */
  readonly active: CUnit[] = [];
}

/** A vCPU's scheduling data (csched_unit). */
class CUnit {
  pri: number = CSCHED_PRI.UNDER;
  credit = 0;
  /** Run time not yet turned into burnt credit (ns). */
  burnNs = 0;
  /** Since when run time is not yet burnt. */
  startTime = 0;
  /** When it last went onto a pCPU (the rate limit counts from there). */
  schedIn = 0;
  lastSchedTime = 0;
  yielding = false;
  /** Waking because it moves between pCPUs, not from a block: no boost. */
  migrating = false;
  /** The tick found a better pCPU for it (or its affinity changed): it moves when descheduled. */
  moveOnDeschedule = false;
  /** On its domain's active list. */
  active = false;
  onRunq = false;
  /** The pCPU whose runqueue it is on, or where it runs or last ran. */
  processor: number;
  /** When it was last put on a runqueue. */
  queuedAt = 0;

  constructor(
    readonly v: Vcpu,
    readonly dom: CDom,
    processor: number,
  ) {
    this.processor = processor;
  }
}

interface CPcpu extends PcpuView {
  readonly id: number;
  clock: number;
  current: Vcpu | null;
  readonly runq: CUnit[];
  /** In the idlers mask: nothing to run, waiting to be tickled. */
  idle: boolean;
  /** SCHEDULE_SOFTIRQ raised: it reschedules at its next step. */
  resched: boolean;
  sliceEnd: number;
  nextTick: number;
  /** The accounting epoch its runqueue was last sorted in. */
  sortEpoch: number;
}

export class CreditScheduler implements VcpuScheduler {
  readonly kind = "credit";
  readonly rng: Rng;
  readonly pcpus: CPcpu[] = [];
  steps = 0;
  private readonly meter: StepMeter<CPcpu>;
  /** Time never goes back for callers outside a step. */
  private floor = 0;

  // csched_private
  private tsliceNs = 0;
  private tickNs = 0;
  private creditsPerTslice = 0;
  private ratelimitNs = 0;
  private migrDelayNs = 0;
  /** Sum of the weights of active vCPUs. */
  private weightTotal = 0;
  private creditBalance = 0;
  /** Domains with active vCPUs, in credit.c's list order. */
  private activeDoms: CDom[] = [];
  private runqSort = 0;
  private nextAcct: number;
  private balanceBias = 0;
  private lastTickle = 0;
  private parkedCount = 0;
  private readonly doms = new WeakMap<Domain, CDom>();

  constructor(
    readonly params: SchedParams,
    private readonly host: SchedHost,
  ) {
    this.rng = new Rng(params.seed);
    this.meter = new StepMeter(params.stepNs, this.rng);
    for (let id = 0; id < params.nrPcpus; id++) {
      this.pcpus.push({ id, clock: 0, current: null, runq: [], idle: true, resched: false, sliceEnd: 0, nextTick: 0, sortEpoch: 0 });
    }
    this.setTslice(params.tsliceMs);
    // csched_init: a rate limit longer than the slice becomes the slice.
    this.ratelimitNs = Math.min(params.ratelimitUs * 1000, this.tsliceNs);
    this.nextAcct = this.tsliceNs;
  }

  // ---- parameters (XEN_DOMCTL_scheduler_op, XEN_SYSCTL_scheduler_op) ----

  domainParams(d: Domain): { weight: number; cap: number } {
    const sdom = this.dom(d);
    return { weight: sdom.weight, cap: sdom.cap };
  }

  /** csched_dom_cntl's putinfo: weight 0 and cap 0xffff leave that value as it is. */
  setDomainParams(d: Domain, weight: number, cap: number): void {
    const sdom = this.dom(d);
    if (weight !== 0) {
      this.weightTotal += (weight - sdom.weight) * sdom.active.length;
      sdom.weight = weight;
    }
    if (cap !== 0xffff) sdom.cap = cap;
  }

  get creditParams(): CreditParams {
    return { tsliceMs: this.tsliceNs / 1_000_000, ratelimitUs: this.ratelimitNs / 1000, migrDelayUs: this.migrDelayNs / 1000 };
  }

  /** csched_sys_cntl's putinfo, once the caller has checked the ranges. */
  setCreditParams(p: CreditParams): void {
    this.setTslice(p.tsliceMs);
    this.ratelimitNs = p.ratelimitUs * 1000;
    this.migrDelayNs = p.migrDelayUs * 1000;
  }

  private setTslice(ms: number): void {
    this.tsliceNs = ms * 1_000_000;
    const ticks = ms < TICKS_PER_TSLICE ? 1 : TICKS_PER_TSLICE;
    this.tickNs = Math.floor((ms * 1000) / ticks) * 1000;
    this.creditsPerTslice = CREDITS_PER_MSEC * ms;
  }

  // ---- VcpuScheduler ----

  now(v?: Vcpu): number {
    if (v && v.pcpu >= 0) {
      return this.meter.clockOf(this.pcpus[v.pcpu]!);
    }
    if (this.meter.pcpu) return this.meter.clockOf(this.meter.pcpu);
    let min = Number.POSITIVE_INFINITY;
    let max = 0;
    for (const p of this.pcpus) {
      if (p.clock > max) max = p.clock;
      if (this.busy(p) && p.clock < min) min = p.clock;
    }
    const t = min === Number.POSITIVE_INFINITY ? max : min;
    if (t > this.floor) this.floor = t;
    return this.floor;
  }

  spend(ns: number): void {
    this.meter.cost += ns;
  }

  wake(v: Vcpu): void {
    if (!v.runnable) return;
    const now = this.now();
    if (v.pcpu >= 0) {
      // Still on its pCPU (it blocked and woke within one step): it just goes on.
      this.host.runstateChanged(v, this.now(v));
      return;
    }
    const sc = this.unit(v);
    if (sc.onRunq) return;
    this.wakeUnit(sc, now, true);
  }

  evict(v: Vcpu): void {
    const sc = v.schedPriv as CUnit | null;
    const now = this.now(v);
    if (v.pcpu >= 0) {
      const p = this.pcpus[v.pcpu]!;
      if (sc) this.burn(sc, now);
      p.current = null;
      v.pcpu = -1;
      p.resched = true;
    }
    if (sc?.onRunq) this.runqRemove(sc);
    this.host.runstateChanged(v, now);
    if (v.domain.state === "dying" && sc) {
      // csched_unit_remove.
      if (sc.active) this.acctStop(sc);
      if (v.parked) {
        v.parked = false;
        this.parkedCount--;
      }
      v.schedPriv = null;
    }
  }

  yieldVcpu(v: Vcpu): void {
    const sc = this.unit(v);
    sc.yielding = true;
    if (v.pcpu >= 0) this.pcpus[v.pcpu]!.resched = true;
  }

  affinityChanged(v: Vcpu): void {
    const sc = v.schedPriv as CUnit | null;
    if (!sc) return;
    if (v.pcpu >= 0 && !affinityAllows(v, v.pcpu)) {
      sc.moveOnDeschedule = true;
      this.pcpus[v.pcpu]!.resched = true;
    } else if (sc.onRunq && !affinityAllows(v, sc.processor)) {
      this.runqRemove(sc);
      sc.migrating = true;
      this.wakeUnit(sc, this.now(), false);
    }
  }

  step(): boolean {
    const p = this.pickPcpu();
    if (!p) return this.idleUntilDeadline();
    // Timers fire at p's time, and what they wake sees that time (see wake()).
    this.meter.begin(p);
    this.host.fireTimers(p.clock);
    if (p.clock >= this.nextAcct) this.acct(p.clock);
    if (p.current && p.clock >= p.nextTick) this.tick(p);
    this.meter.end();
    const cur = p.current;
    if (cur === null || !cur.runnable || p.resched || p.clock >= p.sliceEnd || this.unit(cur).yielding) this.schedule(p);
    const v = p.current;
    if (!v) return true;
    this.steps++;
    this.meter.run(p, v, this.host);
    // It blocked (or went down, or was paused) in that step: the pCPU reschedules at once, as
    // the softirq vcpu_block raises makes it do.
    if (p.current === v && !v.runnable) {
      this.host.runstateChanged(v, p.clock);
      this.schedule(p);
    }
    return true;
  }

  dump(): string[] {
    const out = [
      `credit: tslice=${this.tsliceNs / 1e6}ms ratelimit=${this.ratelimitNs / 1000}us weight=${this.weightTotal} credit balance=${this.creditBalance} runq_sort=${this.runqSort}`,
    ];
    const desc = (u: CUnit) => `[${u.v.domain.domid}.${u.v.id}] pri=${u.pri} cpu=${u.processor} credit=${u.credit} [w=${u.dom.weight},cap=${u.dom.cap}]`;
    for (const p of this.pcpus) {
      out.push(`CPU[${String(p.id).padStart(2, "0")}] nr_run=${this.nrRunnable(p)}, sort=${p.sortEpoch} clock=${p.clock}${p.idle ? " idle" : ""}`);
      if (p.current) out.push(`\trun: ${desc(this.unit(p.current))}`);
      for (let i = 0; i < p.runq.length; i++) out.push(`\t${String(i + 1).padStart(3)}: ${desc(p.runq[i]!)}`);
    }
    return out;
  }

  // ---- internals ----

  private unit(v: Vcpu): CUnit {
    let sc = v.schedPriv as CUnit | null;
    if (!sc) {
      const n = this.pcpus.length;
      sc = new CUnit(v, this.dom(v.domain), (v.domain.domid + v.id) % n);
      v.schedPriv = sc;
      // csched_unit_insert: a first pCPU by csched_res_pick.
      sc.processor = this.cpuPick(sc);
    }
    return sc;
  }

  private dom(d: Domain): CDom {
    let sdom = this.doms.get(d);
    if (!sdom) {
      sdom = new CDom();
      this.doms.set(d, sdom);
    }
    return sdom;
  }

  private busy(p: CPcpu): boolean {
    return p.current !== null || p.resched || p.runq.length > 0;
  }

  private nrRunnable(p: CPcpu): number {
    return p.runq.length + (p.current !== null ? 1 : 0);
  }

  /** The pCPU furthest behind among those with work; ties go by the seed. */
  private pickPcpu(): CPcpu | null {
    let best: CPcpu | null = null;
    for (const p of this.pcpus) {
      if (!this.busy(p)) continue;
      if (best === null || p.clock < best.clock || (p.clock === best.clock && this.rng.chance(0.5))) best = p;
    }
    return best;
  }

  /** Nothing can run: time moves to the next timer (or the accounting that unparks a capped vCPU). */
  private idleUntilDeadline(): boolean {
    let deadline = this.host.nextDeadline();
    if (this.parkedCount > 0 && (deadline === NO_DEADLINE || this.nextAcct < deadline)) deadline = this.nextAcct;
    if (deadline === NO_DEADLINE) return false;
    deadline = Math.max(deadline, this.now());
    for (const q of this.pcpus) if (q.clock < deadline) q.clock = deadline;
    if (deadline > this.floor) this.floor = deadline;
    if (deadline >= this.nextAcct) this.acct(deadline);
    this.host.fireTimers(deadline);
    return true;
  }

  /** burn_credits: run time since startTime becomes spent credit. */
  private burn(sc: CUnit, now: number): void {
    const delta = now - sc.startTime;
    if (delta <= 0) return;
    sc.burnNs += delta;
    const credits = Math.floor(sc.burnNs / NS_PER_CREDIT);
    sc.burnNs -= credits * NS_PER_CREDIT;
    sc.credit -= credits;
    sc.startTime = now;
  }

  /** __runq_insert: after every vCPU of its priority or higher; a yielder goes one further back. */
  private runqInsert(sc: CUnit): void {
    const runq = this.pcpus[sc.processor]!.runq;
    let i = 0;
    while (i < runq.length && runq[i]!.pri >= sc.pri) i++;
    if (sc.yielding && i < runq.length) i++;
    runq.splice(i, 0, sc);
    sc.onRunq = true;
  }

  private runqRemove(sc: CUnit): void {
    const runq = this.pcpus[sc.processor]!.runq;
    const i = runq.indexOf(sc);
    if (i >= 0) runq.splice(i, 1);
    sc.onRunq = false;
  }

  /** csched_unit_wake: boosted unless it only moves or is a capped vCPU coming back; then tickle. */
  private wakeUnit(sc: CUnit, now: number, mayBoost: boolean): void {
    const v = sc.v;
    const migrating = sc.migrating;
    sc.migrating = false;
    if (mayBoost && !migrating && sc.pri === CSCHED_PRI.UNDER && !v.parked) sc.pri = CSCHED_PRI.BOOST;
    if (!affinityAllows(v, sc.processor)) sc.processor = this.cpuPick(sc);
    sc.queuedAt = now;
    this.runqInsert(sc);
    this.host.runstateChanged(v, now);
    this.tickle(sc, now);
  }

  /** __runq_tickle: which pCPUs reschedule because `sc` became runnable. */
  private tickle(sc: CUnit, now: number): void {
    const p = this.pcpus[sc.processor]!;
    const curPri = p.current ? this.unit(p.current).pri : CSCHED_PRI.IDLE;
    const idlers = this.pcpus.filter((q) => q.idle);
    const targets: CPcpu[] = [];
    if (this.pinnedTo(sc.v) === p.id && p.idle) targets.push(p);
    else if (curPri === CSCHED_PRI.IDLE || (idlers.length === 0 && sc.pri > curPri)) targets.push(p);
    else if (idlers.length > 0) {
      const suitable = idlers.filter((q) => affinityAllows(sc.v, q.id));
      if (suitable.length === 0) {
        if (sc.pri > curPri) {
          // Nowhere idle for it: preempt, and let the current one move to an idler if it can.
          if (p.current && idlers.some((q) => affinityAllows(p.current!, q.id))) this.unit(p.current).moveOnDeschedule = true;
          targets.push(p);
        }
      } else {
        // opt_tickle_one_idle: the next suitable idler after the last one tickled.
        let pick = suitable[0]!;
        for (const q of suitable) {
          if (q.id > this.lastTickle) {
            pick = q;
            break;
          }
        }
        this.lastTickle = pick.id;
        targets.push(pick);
      }
    }
    for (const q of targets) {
      q.idle = false;
      q.resched = true;
      // An idle pCPU's clock stood still: it idled until now.
      if (q.current === null && q.clock < now) q.clock = now;
    }
  }

  /** The pCPU `v` is pinned to exclusively (hard affinity of one), or -1. */
  private pinnedTo(v: Vcpu): number {
    const a = v.hardAffinity;
    if (a === null) return this.pcpus.length === 1 ? 0 : -1;
    let only = -1;
    for (let c = 0; c < this.pcpus.length; c++) {
      if (a[c] !== 1) continue;
      if (only >= 0) return -1;
      only = c;
    }
    return only;
  }

  /**
   * _csched_cpu_pick, without SMT siblings: its processor if that is idle (or would be, without
   * it), else an idle pCPU its affinity allows, else its processor (or the next one allowed).
   */
  private cpuPick(sc: CUnit): number {
    const v = sc.v;
    const n = this.pcpus.length;
    let cpu = sc.processor;
    for (let k = 0; k < n && !affinityAllows(v, cpu); k++) cpu = (cpu + 1) % n;
    const idleFor = (c: number) => {
      const q = this.pcpus[c]!;
      return q.idle || (v.pcpu === c && q.runq.length === 0);
    };
    if (idleFor(cpu)) return cpu;
    for (let k = 1; k < n; k++) {
      const c = (cpu + k) % n;
      if (affinityAllows(v, c) && idleFor(c)) return c;
    }
    return cpu;
  }

  /** csched_schedule on `p`, at its clock. */
  private schedule(p: CPcpu): void {
    const now = p.clock;
    p.resched = false;
    const cur = p.current;
    const sc = cur ? this.unit(cur) : null;
    if (sc) {
      this.burn(sc, now);
      sc.lastSchedTime = now;
    }
    const stays = cur !== null && sc !== null && cur.runnable && !sc.moveOnDeschedule && affinityAllows(cur, p.id);
    // The rate limit: a vCPU that has run less than ratelimit goes on (a yielder does not).
    if (stays && !sc.yielding && this.ratelimitNs > 0) {
      const runtime = now - sc.schedIn;
      if (runtime < this.ratelimitNs) {
        p.sliceEnd = now + (runtime < MIN_TIMER_NS ? MIN_TIMER_NS : this.ratelimitNs - runtime);
        return;
      }
    }
    let moving: CUnit | null = null;
    if (sc) {
      if (stays) this.runqInsert(sc);
      else if (cur!.runnable) moving = sc;
      sc.yielding = false;
    }
    let next: CUnit | null = null;
    for (;;) {
      const head = p.runq[0];
      if (head !== undefined && head.pri > CSCHED_PRI.OVER) {
        p.runq.shift();
        head.onRunq = false;
        next = head;
      } else {
        next = this.loadBalance(p, head ? head.pri : CSCHED_PRI.IDLE);
        if (next === null && head !== undefined) {
          p.runq.shift();
          head.onRunq = false;
          next = head;
        }
      }
      if (next === null || next.v.runnable) break;
    }
    if (next === null || next.v !== cur) {
      if (cur) {
        cur.pcpu = -1;
        p.current = null;
        this.host.runstateChanged(cur, now);
      }
      if (next) {
        const v = next.v;
        // Woken a little ahead of this pCPU's clock (by another pCPU's step): it idled till then.
        if (next.queuedAt > p.clock) p.clock = next.queuedAt;
        if (p.idle || p.nextTick <= p.clock) p.nextTick = p.clock + this.tickNs - (p.clock % this.tickNs);
        p.current = v;
        v.pcpu = p.id;
        next.processor = p.id;
        next.schedIn = p.clock;
        next.startTime = p.clock;
        this.host.contextSwitchIn(v, p.clock);
      }
    } else next.startTime = now;
    p.idle = next === null;
    p.sliceEnd = next === null ? Number.POSITIVE_INFINITY : p.clock + this.tsliceNs;
    if (moving) {
      // vcpu_migrate: a new pCPU by csched_res_pick; the wake there is not a boost.
      moving.moveOnDeschedule = false;
      moving.migrating = true;
      moving.processor = this.cpuPick(moving);
      this.wakeUnit(moving, now, false);
    }
  }

  /**
   * csched_load_balance: `p` has nothing better than priority `pri` of its own: take the first
   * vCPU of higher priority from a peer's runqueue that may run here. Null if there is none.
   */
  private loadBalance(p: CPcpu, pri: number): CUnit | null {
    const n = this.pcpus.length;
    for (let k = 1; k <= n; k++) {
      const peer = this.pcpus[(this.balanceBias + k) % n]!;
      if (peer === p || peer.idle || this.nrRunnable(peer) <= 1) continue;
      for (let i = 0; i < peer.runq.length; i++) {
        const u = peer.runq[i]!;
        if (u.pri <= pri) break;
        if (!affinityAllows(u.v, p.id)) continue;
        if (this.migrDelayNs > 0 && p.clock - u.lastSchedTime < this.migrDelayNs) continue;
        peer.runq.splice(i, 1);
        u.onRunq = false;
        u.processor = p.id;
        this.balanceBias = peer.id;
        return u;
      }
    }
    return null;
  }

  /** csched_tick on `p`: the running vCPU's accounting, then the runqueue's sort. */
  private tick(p: CPcpu): void {
    const now = p.clock;
    p.nextTick = now + this.tickNs;
    const cur = p.current;
    if (cur) {
      const sc = this.unit(cur);
      // csched_unit_acct: a vCPU found running at a tick is using the CPU: no more boost.
      if (sc.pri === CSCHED_PRI.BOOST) sc.pri = CSCHED_PRI.UNDER;
      this.burn(sc, now);
      if (!sc.active) this.acctStart(sc);
      else if (this.cpuPick(sc) !== p.id) {
        sc.moveOnDeschedule = true;
        p.resched = true;
      }
    }
    this.runqSortOn(p);
  }

  /** csched_runq_sort: UNDER (and BOOST) vCPUs move ahead of OVER ones, keeping their order. */
  private runqSortOn(p: CPcpu): void {
    if (p.sortEpoch === this.runqSort) return;
    p.sortEpoch = this.runqSort;
    const under = p.runq.filter((u) => u.pri >= CSCHED_PRI.UNDER);
    if (under.length === 0 || under.length === p.runq.length) return;
    const over = p.runq.filter((u) => u.pri < CSCHED_PRI.UNDER);
    p.runq.length = 0;
    p.runq.push(...under, ...over);
  }

  private acctStart(sc: CUnit): void {
    if (sc.active) return;
    sc.active = true;
    const sdom = sc.dom;
    sdom.active.push(sc);
    this.weightTotal += sdom.weight;
    if (sdom.active.length === 1) this.activeDoms.unshift(sdom);
  }

  private acctStop(sc: CUnit): void {
    if (!sc.active) return;
    sc.active = false;
    const sdom = sc.dom;
    sdom.active.splice(sdom.active.indexOf(sc), 1);
    this.weightTotal -= sdom.weight;
    if (sdom.active.length === 0) this.activeDoms.splice(this.activeDoms.indexOf(sdom), 1);
  }

  /**
   * csched_acct, every time slice: each active domain's fair share of the period's credit by
   * weight (at most what its vCPUs could use, at most its cap), split among its active vCPUs;
   * priorities follow the sign of credit; capped vCPUs deep in debt are parked, and come back
   * once they are in credit; a vCPU with more than a slice's worth stops earning.
   */
  private acct(now: number): void {
    this.nextAcct = now + this.tsliceNs;
    const cpt = this.creditsPerTslice;
    const weightTotal = this.weightTotal;
    let creditTotal = cpt * this.pcpus.length;
    if (this.creditBalance < 0) creditTotal -= this.creditBalance;
    if (weightTotal === 0) {
      this.creditBalance = 0;
      return;
    }
    let weightLeft = weightTotal;
    let balance = 0;
    let xtra = false;
    let creditCap = 0;
    for (const sdom of [...this.activeDoms]) {
      const n = sdom.active.length;
      weightLeft -= sdom.weight * n;
      let peak = n * cpt;
      if (this.creditBalance < 0) peak += Math.floor((-this.creditBalance * sdom.weight * n + (weightTotal - 1)) / weightTotal);
      if (sdom.cap !== 0) {
        creditCap = Math.floor((sdom.cap * cpt + 99) / 100);
        if (creditCap < peak) peak = creditCap;
        creditCap = Math.floor((creditCap + (n - 1)) / n);
      }
      let fair = Math.floor((creditTotal * sdom.weight * n + (weightTotal - 1)) / weightTotal);
      if (fair < peak) xtra = true;
      else {
        // Its share is more than it can use: the rest goes to the domains after it.
        if (weightLeft !== 0) creditTotal += Math.floor(((fair - peak) * weightTotal + (weightLeft - 1)) / weightLeft);
        if (xtra) {
          this.activeDoms.splice(this.activeDoms.indexOf(sdom), 1);
          this.activeDoms.unshift(sdom);
        }
        fair = peak;
      }
      fair = Math.floor((fair + (n - 1)) / n);
      for (const sc of [...sdom.active]) {
        sc.credit += fair;
        let credit = sc.credit;
        if (credit < 0) {
          sc.pri = CSCHED_PRI.OVER;
          if (sdom.cap !== 0 && credit < -creditCap && !sc.v.parked) this.park(sc);
          if (credit < -cpt) {
            credit = -cpt;
            sc.credit = credit;
          }
        } else {
          sc.pri = CSCHED_PRI.UNDER;
          if (sc.v.parked) this.unpark(sc, now);
          if (credit > cpt) {
            this.acctStop(sc);
            // Half of it kept, so that it starts a little ahead when it is active again.
            credit = Math.trunc(credit / 2);
            sc.credit = credit;
          }
        }
        balance += credit;
      }
    }
    this.creditBalance = balance;
    this.runqSort++;
  }

  private park(sc: CUnit): void {
    sc.v.parked = true;
    this.parkedCount++;
    this.evict(sc.v);
  }

  /** The vCPU runs again; its parked flag goes after the wake, so the wake is no boost. */
  private unpark(sc: CUnit, now: number): void {
    const v = sc.v;
    v.parked = false;
    this.parkedCount--;
    if (v.runnable && v.pcpu < 0 && !sc.onRunq) this.wakeUnit(sc, now, false);
    else this.host.runstateChanged(v, now);
  }
}
