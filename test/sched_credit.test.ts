// The credit scheduler (src/hypervisor/sched_credit.ts) against credit.c's semantics, with bare
// guests whose vCPUs are CPU hogs (each quantum spends virtual time and never blocks) or a
// server that blocks until a deadline and then runs briefly (as dom0's xenstored does between
// requests): weights share a pCPU in proportion, caps bound a domain, a vCPU woken from a block
// preempts hogs within the rate limit, hard affinity holds, idle pCPUs take work. Then runstate
// accounting and the domctl/sysctl interface with Xen's errnos. Everything is virtual time;
// loops over seeds name the failing seed.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { GuestCpu, GuestImage } from "../src/abi/cpu.ts";
import { XEN_DOMCTL_SCHEDOP, XEN_SCHEDULER, XEN_SYSCTL_SCHEDOP, XEN_VCPUAFFINITY } from "../src/abi/domctl.ts";
import { layoutFor } from "../src/abi/layout.ts";
import { HYPERVISOR, RUNSTATE, SCHEDOP, VCPUOP, XEN_ERRNO as E } from "../src/abi/xen.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import { DOMID_XEN, openPrivcmd, XENSIM_SCHEDULER_INTERLEAVE } from "../src/hypervisor/domctl.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { SchedKind, SchedParams } from "../src/hypervisor/sched.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain } from "./harness.ts";

const MS = 1_000_000;
const HOG_STEP_NS = 5_000;

function machine(seed: number, nrPcpus: number, kind: SchedKind = "credit", extra: Partial<SchedParams> = {}): Hypervisor {
  return new Hypervisor({ nrFrames: 1 << 16, sched: { nrPcpus, seed, kind, ...extra } });
}

/** A domain whose vCPUs never block: each quantum burns HOG_STEP_NS of virtual time. */
function hog(hv: Hypervisor, vcpus = 1, onStep?: (cpu: GuestCpu) => void): BareDomain {
  const b = bareDomain(hv, { vcpus });
  (b.image as GuestImage).resume = (cpu: GuestCpu) => {
    onStep?.(cpu);
    cpu.spend(HOG_STEP_NS);
  };
  return b;
}

/**
 * A one-vCPU domain that works `workNs` and then sleeps in SCHEDOP_poll (no ports, a timeout)
 * until `periodNs` later; `lateness` collects how long after each deadline it got to run.
 */
function server(hv: Hypervisor, periodNs: number, workNs = 20_000): { b: BareDomain; lateness: number[] } {
  const b = bareDomain(hv, { vcpus: 1 });
  const L = layoutFor(64).sched_poll;
  const lateness: number[] = [];
  let deadline = 0;
  (b.image as GuestImage).resume = (cpu: GuestCpu) => {
    const now = cpu.rdtsc();
    if (deadline > 0) lateness.push(now - deadline);
    cpu.spend(workNs);
    deadline = now + periodNs;
    cpu.write64(b.arg + L.ports, b.arg + 512);
    cpu.write32(b.arg + L.nr_ports, 0);
    cpu.write64(b.arg + L.timeout, deadline);
    const rc = cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.poll, b.arg);
    if (rc !== 0) throw new Error(`SCHEDOP_poll: ${rc}`);
  };
  return { b, lateness };
}

/** vcpu_runstate_get(v).time[state], up to now. */
function timeIn(hv: Hypervisor, v: Vcpu, state: number): number {
  return v.runstateTime[state]! + (v.runstate === state ? Math.max(0, hv.now(v) - v.runstateEntry) : 0);
}

function runningNs(hv: Hypervisor, d: Domain): number {
  return d.vcpus.reduce((s, v) => s + timeIn(hv, v, RUNSTATE.running), 0);
}

function setCredit(hv: Hypervisor, d: Domain, weight: number, cap: number): void {
  const rc = openPrivcmd(hv, DOMID_XEN).scheduler_op(d.domid, XEN_SCHEDULER.CREDIT, XEN_DOMCTL_SCHEDOP.putinfo, { weight, cap });
  assert.equal(typeof rc, "object", `putinfo: ${String(rc)}`);
}

function maskOf(...cpus: number[]): Uint8Array {
  const m = new Uint8Array(1);
  for (const c of cpus) m[0]! |= 1 << c;
  return m;
}

function near(actual: number, expected: number, tolerance: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tolerance * expected, `${what}: ${actual.toFixed(3)}, expected ${expected.toFixed(3)} ± ${(tolerance * 100).toFixed(0)}%`);
}

describe("credit: weights and caps", () => {
  test("two CPU hogs of weight 256 and 512 on one pCPU share it about 1:2 (5 seeds)", () => {
    for (let seed = 1; seed <= 5; seed++) {
      const hv = machine(seed, 1);
      const a = hog(hv);
      const b = hog(hv);
      setCredit(hv, a.d, 256, 0);
      setCredit(hv, b.d, 512, 0);
      hv.run(3000 * MS);
      const ra = runningNs(hv, a.d);
      const rb = runningNs(hv, b.d);
      near(rb / ra, 2, 0.1, `seed ${seed}: weight 512 over weight 256`);
      near(ra + rb, 3000 * MS, 0.02, `seed ${seed}: the pCPU is never idle`);
    }
  });

  test("four hogs of weights 1:1:2:4 on two pCPUs get their shares (3 seeds)", () => {
    for (let seed = 1; seed <= 3; seed++) {
      const hv = machine(seed, 2);
      const weights = [128, 128, 256, 512];
      const hogs = weights.map((w) => {
        const h = hog(hv);
        setCredit(hv, h.d, w, 0);
        return h;
      });
      hv.run(4000 * MS);
      const total = hogs.reduce((s, h) => s + runningNs(hv, h.d), 0);
      near(total, 2 * 4000 * MS, 0.02, `seed ${seed}: both pCPUs busy`);
      for (const [i, h] of hogs.entries()) near(runningNs(hv, h.d) / total, weights[i]! / 1024, 0.15, `seed ${seed}: share of weight ${weights[i]}`);
    }
  });

  test("a cap of 25 holds a hog to a quarter of an otherwise idle pCPU; cap 50 holds a 2-vCPU hog to half a pCPU over two (3 seeds)", () => {
    for (let seed = 1; seed <= 3; seed++) {
      const hv = machine(seed, 1);
      const h = hog(hv);
      setCredit(hv, h.d, 256, 25);
      hv.run(3000 * MS);
      near(runningNs(hv, h.d) / (3000 * MS), 0.25, 0.08, `seed ${seed}: cap 25`);
      // Parked means offline: the vCPU waits with no pCPU and is not runnable.
      assert.ok(timeIn(hv, h.d.vcpus[0]!, RUNSTATE.offline) > 1500 * MS, `seed ${seed}: parked time shows as offline`);

      const hv2 = machine(seed, 2);
      const h2 = hog(hv2, 2);
      setCredit(hv2, h2.d, 256, 50);
      hv2.run(3000 * MS);
      near(runningNs(hv2, h2.d) / (3000 * MS), 0.5, 0.1, `seed ${seed}: cap 50 over 2 vCPUs`);
    }
  });

  test("an uncapped hog beside a capped one takes what the cap leaves", () => {
    const hv = machine(7, 1);
    const capped = hog(hv);
    const free = hog(hv);
    setCredit(hv, capped.d, 256, 20);
    hv.run(3000 * MS);
    near(runningNs(hv, capped.d) / (3000 * MS), 0.2, 0.1, "capped share");
    near(runningNs(hv, free.d) / (3000 * MS), 0.8, 0.05, "uncapped share");
  });
});

describe("credit: wake-up boost, rate limit, balancing, affinity", () => {
  test("a vCPU woken from a block preempts CPU hogs: 6 hogs on 2 pCPUs, the server runs within the rate limit of each deadline (10 seeds)", () => {
    const worst: number[] = [];
    for (let seed = 1; seed <= 10; seed++) {
      const hv = machine(seed, 2);
      for (let i = 0; i < 6; i++) hog(hv);
      const s = server(hv, 5 * MS);
      hv.run(1000 * MS);
      assert.ok(s.lateness.length >= 150, `seed ${seed}: the server ran ${s.lateness.length} times`);
      const max = Math.max(...s.lateness);
      // ratelimit (1 ms) bounds it; a step of a hog may add its length.
      assert.ok(max <= 1 * MS + 2 * HOG_STEP_NS, `seed ${seed}: the server waited ${(max / 1e3).toFixed(1)} us after a deadline`);
      worst.push(max);
    }
    // The interleaving scheduler (a random pick among the queued) leaves it waiting much longer.
    const hv = machine(1, 2, "interleave");
    for (let i = 0; i < 6; i++) hog(hv);
    const s = server(hv, 5 * MS);
    hv.run(1000 * MS);
    const sorted = [...s.lateness].sort((x, y) => x - y);
    const p95 = sorted[Math.floor(sorted.length * 0.95)]!;
    assert.ok(p95 > 5 * Math.max(...worst), `interleave p95 ${p95} ns against credit's worst ${Math.max(...worst)} ns`);
  });

  test("a hog that has just been scheduled keeps its pCPU for the rate limit; with the rate limit off the server preempts at once", () => {
    const lateness = (ratelimitUs: number) => {
      const hv = machine(3, 1, "credit", { tsliceMs: 2, ratelimitUs });
      hog(hv);
      hog(hv);
      // Each time the server blocks a hog is scheduled in; it wakes again 0.3 ms into that hog's run.
      const s = server(hv, 0.3 * MS);
      hv.run(1000 * MS);
      return Math.max(...s.lateness);
    };
    const limited = lateness(1000);
    const unlimited = lateness(0);
    assert.ok(limited > 600_000 && limited <= 1 * MS + 2 * HOG_STEP_NS, `rate limit 1000 us: worst ${limited} ns`);
    assert.ok(unlimited <= 2 * HOG_STEP_NS, `rate limit off: worst ${unlimited} ns`);
  });

  test("idle pCPUs take work: 4 hogs started together on 4 pCPUs keep all four busy (5 seeds)", () => {
    for (let seed = 1; seed <= 5; seed++) {
      const hv = machine(seed, 4);
      const hogs = [hog(hv, 2), hog(hv, 2)];
      hv.run(300 * MS);
      const total = hogs.reduce((s, h) => s + runningNs(hv, h.d), 0);
      near(total, 4 * 300 * MS, 0.02, `seed ${seed}: pCPU time used`);
    }
  });

  test("hard affinity: a vCPU pinned to pCPU 1 runs only there, and one that is running where its new mask excludes moves (credit and interleave)", () => {
    for (const kind of ["credit", "interleave"] as const) {
      for (let seed = 1; seed <= 5; seed++) {
        const hv = machine(seed, 4, kind);
        const xc = openPrivcmd(hv, DOMID_XEN);
        const where = new Map<number, Set<number>>();
        const h = hog(hv, 2, (cpu) => {
          const v = h.d.vcpus[cpu.vcpuId]!;
          const s = where.get(v.id) ?? new Set<number>();
          where.set(v.id, s);
          s.add(v.pcpu);
        });
        for (let i = 0; i < 5; i++) hog(hv);
        hv.run(50 * MS);
        const rc = xc.setvcpuaffinity(h.d.domid, 0, XEN_VCPUAFFINITY.HARD, maskOf(1), null);
        assert.equal(typeof rc, "object", `${kind} seed ${seed}: ${String(rc)}`);
        const rc2 = xc.setvcpuaffinity(h.d.domid, 1, XEN_VCPUAFFINITY.HARD, maskOf(2, 3), null);
        assert.equal(typeof rc2, "object");
        // One step lets a vCPU that was running elsewhere give its pCPU up.
        hv.run(hv.now() + 0.1 * MS);
        where.clear();
        hv.run(hv.now() + 300 * MS);
        assert.deepEqual([...(where.get(0) ?? [])], [1], `${kind} seed ${seed}: vCPU 0 ran on ${[...(where.get(0) ?? [])]}`);
        assert.ok(
          [...(where.get(1) ?? [])].every((c) => c === 2 || c === 3),
          `${kind} seed ${seed}: vCPU 1 ran on ${[...(where.get(1) ?? [])]}`,
        );
        assert.ok(runningNs(hv, h.d) > 0, `${kind} seed ${seed}: it still runs`);
      }
    }
  });

  test("the same seed gives the same run, and the seed matters", () => {
    const trace = (seed: number) => {
      const hv = machine(seed, 3);
      const order: string[] = [];
      for (let i = 0; i < 5; i++) hog(hv, 2, (cpu) => order.push(`${i}.${cpu.vcpuId}@${cpu.rdtsc()}`));
      server(hv, 3 * MS);
      hv.run(20 * MS);
      return order.join(" ");
    };
    assert.equal(trace(11), trace(11));
    assert.notEqual(trace(11), trace(12));
  });
});

describe("runstate accounting", () => {
  test("each vCPU's four runstate times sum to the time since it was created, under both schedulers (5 seeds)", () => {
    for (const kind of ["credit", "interleave"] as const) {
      for (let seed = 1; seed <= 5; seed++) {
        const hv = machine(seed, 2, kind);
        hv.run(3 * MS);
        const created = hv.now();
        const doms = [hog(hv, 2), hog(hv), server(hv, 2 * MS).b];
        hv.run(40 * MS);
        hv.pauseDomain(doms[1]!.d);
        hv.run(60 * MS);
        hv.unpauseDomain(doms[1]!.d);
        hv.run(100 * MS);
        for (const b of doms) {
          for (const v of b.d.vcpus) {
            const sum = [0, 1, 2, 3].reduce((s, st) => s + timeIn(hv, v, st), 0);
            const elapsed = hv.now(v) - created;
            assert.ok(Math.abs(sum - elapsed) <= 0.01 * elapsed, `${kind} seed ${seed}: d${b.d.domid}v${v.id}: ${sum} ns in runstates over ${elapsed} ns`);
          }
        }
        const paused = doms[1]!.d.vcpus[0]!;
        assert.ok(timeIn(hv, paused, RUNSTATE.offline) >= 19 * MS, `${kind} seed ${seed}: paused time is offline`);
        const srv = doms[2]!.d.vcpus[0]!;
        assert.ok(timeIn(hv, srv, RUNSTATE.blocked) > 10 * timeIn(hv, srv, RUNSTATE.running), `${kind} seed ${seed}: the server mostly blocks`);
      }
    }
  });

  test("cpu_time counts running time only: a blocked domain's stops, a paused one's stops, a hog's follows the clock", () => {
    for (const kind of ["credit", "interleave"] as const) {
      const hv = machine(1, 2, kind);
      const xc = openPrivcmd(hv, DOMID_XEN);
      const busy = hog(hv);
      const idle = bareDomain(hv, { vcpus: 1 });
      // A guest that blocks for good (nothing will wake it).
      (idle.image as GuestImage).resume = (cpu: GuestCpu) => {
        cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.block, 0);
      };
      const cpuTime = (d: Domain) => {
        const raw = xc.getdomaininfolist(d.domid, 1);
        assert.ok(Array.isArray(raw));
        return new DataView(raw[0]!.buffer, raw[0]!.byteOffset).getUint32(56, true) + new DataView(raw[0]!.buffer, raw[0]!.byteOffset).getUint32(60, true) * 2 ** 32;
      };
      hv.run(10 * MS);
      const idle0 = cpuTime(idle.d);
      const busy0 = cpuTime(busy.d);
      hv.run(110 * MS);
      assert.ok(cpuTime(idle.d) - idle0 < 0.01 * MS, `${kind}: a blocked domain's cpu_time grew by ${cpuTime(idle.d) - idle0} ns`);
      near(cpuTime(busy.d) - busy0, 100 * MS, 0.05, `${kind}: a hog on its own pCPU`);
      const v = xc.getvcpuinfo(busy.d.domid, 0);
      assert.ok(typeof v === "object" && Math.abs(v.cpuTime - cpuTime(busy.d)) < 0.01 * MS, `${kind}: getvcpuinfo agrees`);
      xc.pausedomain(busy.d.domid);
      const atPause = cpuTime(busy.d);
      hv.run(160 * MS);
      assert.equal(cpuTime(busy.d), atPause, `${kind}: a paused domain's cpu_time stops`);
      hv.shutdownDomain(idle.d, 0);
      hv.run(170 * MS);
      assert.equal(idle.d.vcpus[0]!.runstate, RUNSTATE.offline, `${kind}: a shut-down domain's vCPU is offline`);
    }
  });

  test("VCPUOP_get_runstate_info writes vcpu_runstate_info as Xen lays it out, for both guest widths", () => {
    for (const width of [64, 32] as const) {
      const hv = machine(2, 2);
      const b = bareDomain(hv, { vcpus: 2, width });
      const L = layoutFor(width).vcpu_runstate_info;
      let seen: { state: number; entry: number; times: number[]; rc: number } | undefined;
      (b.image as GuestImage).resume = (cpu: GuestCpu) => {
        cpu.spend(HOG_STEP_NS);
        if (cpu.vcpuId !== 0 || cpu.rdtsc() < 20 * MS || seen) return;
        // vCPU 0 asks about vCPU 1, which blocked at once and has stayed blocked.
        const rc = cpu.hypercall(HYPERVISOR.vcpu_op, VCPUOP.get_runstate_info, 1, b.arg);
        seen = {
          rc,
          state: cpu.read32(b.arg + L.state),
          entry: cpu.read64(b.arg + L.state_entry_time),
          times: [0, 1, 2, 3].map((i) => cpu.read64(b.arg + L.time + 8 * i)),
        };
      };
      const v1 = b.d.vcpus[1]!;
      const orig = (b.image as GuestImage).resume.bind(b.image);
      (b.image as GuestImage).resume = (cpu: GuestCpu) => {
        if (cpu.vcpuId === 1) cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.block, 0);
        else orig(cpu);
      };
      hv.run(30 * MS);
      assert.ok(seen, `width ${width}: vCPU 0 made the call`);
      assert.equal(seen.rc, 0);
      assert.equal(seen.state, RUNSTATE.blocked, `width ${width}: state`);
      assert.equal(seen.entry, v1.runstateEntry, `width ${width}: state_entry_time`);
      assert.ok(seen.times[RUNSTATE.blocked]! > 15 * MS, `width ${width}: blocked time ${seen.times[2]}`);
      assert.ok(seen.times[RUNSTATE.running]! < 1 * MS, `width ${width}: running time ${seen.times[0]}`);
    }
  });
});

describe("domctl and sysctl for scheduling: Xen's answers and errnos", () => {
  test("XEN_DOMCTL_scheduler_op (credit): getinfo, putinfo with 0 / 0xffff meaning unchanged, and the errors", () => {
    const hv = machine(1, 4);
    const guest = bareDomain(hv, { vcpus: 2 });
    const xc = openPrivcmd(hv, DOMID_XEN);
    const id = guest.d.domid;
    const { CREDIT } = XEN_SCHEDULER;
    const { getinfo, putinfo, getvcpuinfo, putvcpuinfo } = XEN_DOMCTL_SCHEDOP;
    assert.deepEqual(xc.scheduler_op(id, CREDIT, getinfo), { weight: 256, cap: 0 });
    assert.deepEqual(xc.scheduler_op(id, CREDIT, putinfo, { weight: 512, cap: 150 }), { weight: 512, cap: 150 });
    assert.deepEqual(xc.scheduler_op(id, CREDIT, putinfo, { weight: 0, cap: 0xffff }), { weight: 512, cap: 150 }, "0 and ~0 leave both");
    assert.deepEqual(xc.scheduler_op(id, CREDIT, putinfo, { weight: 0, cap: 0 }), { weight: 512, cap: 0 }, "cap 0 removes the cap");
    assert.deepEqual(xc.scheduler_op(id, CREDIT, getinfo), { weight: 512, cap: 0 });
    // Xen takes any uint16 (libxl is what keeps a cap within 100 per vCPU).
    assert.deepEqual(xc.scheduler_op(id, CREDIT, putinfo, { weight: 65535, cap: 1000 }), { weight: 65535, cap: 1000 });
    assert.equal(xc.scheduler_op(id, CREDIT, putinfo, { weight: 65536, cap: 0 }), -E.EINVAL, "not a uint16");
    assert.equal(xc.scheduler_op(id, CREDIT, putinfo, { weight: -1, cap: 0 }), -E.EINVAL);
    assert.equal(xc.scheduler_op(id, XEN_SCHEDULER.CREDIT2, getinfo), -E.EINVAL, "another scheduler's id");
    assert.equal(xc.scheduler_op(id, CREDIT, 7), -E.EINVAL, "no such command");
    assert.equal(xc.scheduler_op(id, CREDIT, getvcpuinfo), -E.EINVAL, "credit has no per-vCPU parameters");
    assert.equal(xc.scheduler_op(id, CREDIT, putvcpuinfo), -E.EINVAL);
    assert.equal(xc.scheduler_op(999, CREDIT, getinfo), -E.ESRCH, "no such domain");
    assert.equal(openPrivcmd(hv, id).scheduler_op(id, CREDIT, getinfo), -E.EPERM, "an unprivileged caller");
    assert.equal(xc.sched_id(), XEN_SCHEDULER.CREDIT);

    const ihv = machine(1, 2, "interleave");
    const ig = bareDomain(ihv, { vcpus: 1 });
    const ixc = openPrivcmd(ihv, DOMID_XEN);
    assert.equal(ixc.sched_id(), XENSIM_SCHEDULER_INTERLEAVE);
    assert.equal(ixc.scheduler_op(ig.d.domid, CREDIT, getinfo), -E.EINVAL, "credit's id on a machine that does not run credit");
    assert.equal(ixc.sched_credit_params(0, XEN_SYSCTL_SCHEDOP.getinfo), -E.EINVAL);
  });

  test("XEN_DOMCTL_setvcpuaffinity / getvcpuaffinity: effective masks back, and the errors", () => {
    const hv = machine(1, 4);
    const guest = bareDomain(hv, { vcpus: 2 });
    const xc = openPrivcmd(hv, DOMID_XEN);
    const id = guest.d.domid;
    const { HARD, SOFT, FORCE } = XEN_VCPUAFFINITY;
    assert.deepEqual(xc.getvcpuaffinity(id, 0), { hard: Uint8Array.of(0xff), soft: Uint8Array.of(0xff) }, "all by default");
    // Bits past the machine's pCPUs are dropped from what comes back.
    assert.deepEqual(xc.setvcpuaffinity(id, 0, HARD, Uint8Array.of(0b10100110), null), { hard: Uint8Array.of(0b0110), soft: Uint8Array.of(0b0110) });
    assert.deepEqual(xc.getvcpuaffinity(id, 0, HARD), { hard: Uint8Array.of(0b0110), soft: Uint8Array.of(0xff) });
    assert.deepEqual(xc.setvcpuaffinity(id, 0, SOFT, null, maskOf(2, 3)), { hard: Uint8Array.of(0b0110), soft: Uint8Array.of(0b0100) }, "soft within hard");
    assert.deepEqual(xc.setvcpuaffinity(id, 0, HARD | SOFT, maskOf(0, 1, 2, 3), maskOf(0, 1, 2, 3)), { hard: Uint8Array.of(0xf), soft: Uint8Array.of(0xf) });
    assert.deepEqual(xc.getvcpuaffinity(id, 0), { hard: Uint8Array.of(0xff), soft: Uint8Array.of(0xff) }, "every pCPU is 'all' again");
    assert.equal(xc.setvcpuaffinity(id, 0, HARD, Uint8Array.of(0b11110000), null), -E.EINVAL, "no online pCPU in the hard mask");
    assert.equal(xc.setvcpuaffinity(id, 0, HARD, null, null), -E.EINVAL, "HARD without a mask");
    assert.equal(xc.setvcpuaffinity(id, 0, SOFT, null, null), -E.EINVAL, "SOFT without a mask");
    assert.equal(xc.setvcpuaffinity(id, 0, 0, maskOf(1), null), -E.EINVAL, "no flags");
    assert.equal(typeof xc.setvcpuaffinity(id, 0, FORCE, null, null), "object", "FORCE alone is fine");
    assert.equal(xc.setvcpuaffinity(id, 2, HARD, maskOf(1), null), -E.EINVAL, "vcpu >= max_vcpus");
    assert.equal(xc.getvcpuaffinity(id, -1), -E.EINVAL);
    assert.equal(xc.getvcpuaffinity(999, 0), -E.ESRCH);
    assert.equal(openPrivcmd(hv, id).setvcpuaffinity(id, 0, HARD, maskOf(1), null), -E.EPERM);
  });

  test("XEN_SYSCTL_scheduler_op (credit): tslice, ratelimit and migration delay, with csched_sys_cntl's ranges", () => {
    const hv = machine(1, 2);
    const xc = openPrivcmd(hv, DOMID_XEN);
    const { getinfo, putinfo } = XEN_SYSCTL_SCHEDOP;
    assert.deepEqual(xc.sched_credit_params(0, getinfo), { tsliceMs: 30, ratelimitUs: 1000, vcpuMigrDelayUs: 0 });
    assert.deepEqual(xc.sched_credit_params(0, putinfo, { tsliceMs: 5, ratelimitUs: 0, vcpuMigrDelayUs: 200 }), { tsliceMs: 5, ratelimitUs: 0, vcpuMigrDelayUs: 200 });
    const bad = [
      { tsliceMs: 0, ratelimitUs: 0, vcpuMigrDelayUs: 0 },
      { tsliceMs: 1001, ratelimitUs: 0, vcpuMigrDelayUs: 0 },
      { tsliceMs: 10, ratelimitUs: 99, vcpuMigrDelayUs: 0 },
      { tsliceMs: 1000, ratelimitUs: 500001, vcpuMigrDelayUs: 0 },
      { tsliceMs: 1, ratelimitUs: 1001, vcpuMigrDelayUs: 0 },
      { tsliceMs: 10, ratelimitUs: 100, vcpuMigrDelayUs: 100001 },
    ];
    for (const p of bad) assert.equal(xc.sched_credit_params(0, putinfo, p), -E.EINVAL, JSON.stringify(p));
    assert.deepEqual(xc.sched_credit_params(0, getinfo), { tsliceMs: 5, ratelimitUs: 0, vcpuMigrDelayUs: 200 }, "a refused putinfo changes nothing");
    assert.equal(xc.sched_credit_params(1, getinfo), -E.ESRCH, "cpupool 1 does not exist");
    assert.equal(xc.sched_credit_params(0, 2), -E.EINVAL);
    const guest = bareDomain(hv, { vcpus: 1 });
    assert.equal(openPrivcmd(hv, guest.d.domid).sched_credit_params(0, getinfo), -E.EPERM);
    assert.equal(openPrivcmd(hv, guest.d.domid).sched_id(), -E.EPERM);
  });
});
