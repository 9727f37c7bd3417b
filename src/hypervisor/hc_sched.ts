// HYPERVISOR_sched_op, set_timer_op and vcpu_op: blocking, polling, shutdown, timers and
// bringing vCPUs up and down.

import { SCHED_SHUTDOWN, VCPU_SET_PERIODIC_TIMER } from "../abi/layout.ts";
import { vcpuGuestContextSize } from "../abi/vcpu_context.ts";
import { XEN_ERRNO as E, MAX_VIRT_CPUS, SCHEDOP, SHUTDOWN, VCPU_SSHOTTMR_future, VCPUOP } from "../abi/xen.ts";
import { ECS } from "./evtchn.ts";
import type { Hypervisor } from "./hypervisor.ts";
import { NO_DEADLINE, REG, type Vcpu } from "./vcpu.ts";
import { archSetInfoGuest } from "./vcpu_context.ts";

/** Xen refuses periodic timers faster than 1 ms or slower than STIME_DELTA_MAX. */
const MIN_PERIOD_NS = 1_000_000;
const STIME_DELTA_MAX = 0x7fffffffffff;
const MAX_POLL_PORTS = 128;
/** do_set_timer_op: timeouts past 2^50 ns ahead, or negative, become 100 ms. */
const HUGE_TIMEOUT_NS = 2 ** 50;
const HUGE_TIMEOUT_FALLBACK_NS = 100_000_000;

export function doSchedOp(hv: Hypervisor, v: Vcpu, cmd: number, arg: number, arg3 = 0): number {
  const g = hv.guest;
  switch (cmd) {
    case SCHEDOP.yield:
      hv.sched.yieldVcpu(v);
      return 0;
    case SCHEDOP.block:
      // do_block: events are enabled, and a pending one means no sleep at all.
      v.setUpcallMask(false);
      if (!v.upcallPending) v.blocked = true;
      return 0;
    case SCHEDOP.poll:
      return doPoll(hv, v, arg);
    case SCHEDOP.shutdown: {
      const reason = g.u32(v, arg + SCHED_SHUTDOWN.reason);
      // HYPERVISOR_suspend's third argument (the start_info frame) stays in rdx/edx, where the
      // toolstack's save reads it from the vCPU context.
      if (reason === SHUTDOWN.suspend) v.setReg(REG.rdx, v.width === 64 ? arg3 : arg3 >>> 0);
      hv.shutdownDomain(v.domain, reason);
      return 0;
    }
    case SCHEDOP.shutdown_code: {
      const reason = g.u32(v, arg + SCHED_SHUTDOWN.reason);
      v.domain.shutdownCode = reason;
      return 0;
    }
    case SCHEDOP.remote_shutdown: {
      const domid = g.u16(v, arg);
      const reason = g.u32(v, arg + 4);
      const target = hv.domainById(domid);
      if (!target) return -E.ESRCH;
      if (!v.domain.privileged) return -E.EPERM;
      hv.shutdownDomain(target, reason);
      return 0;
    }
    case SCHEDOP.watchdog:
      return -E.ENOSYS;
    default:
      return -E.ENOSYS;
  }
}

/** The pre-3.0 sched_op (hypercall 6): yield and block as today, shutdown's reason by value. */
export function doSchedOpCompat(hv: Hypervisor, v: Vcpu, cmd: number, arg: number): number {
  switch (cmd) {
    case SCHEDOP.yield:
    case SCHEDOP.block:
      return doSchedOp(hv, v, cmd, 0);
    case SCHEDOP.shutdown:
      hv.shutdownDomain(v.domain, arg >>> 0);
      return 0;
    default:
      return -E.ENOSYS;
  }
}

function doPoll(hv: Hypervisor, v: Vcpu, arg: number): number {
  const g = hv.guest;
  const L = v.domain.layout.sched_poll;
  const ports = v.width === 64 ? g.pointer(v, arg + L.ports) : g.u32(v, arg + L.ports);
  const nrPorts = g.u32(v, arg + L.nr_ports);
  const timeout = g.u64(v, arg + L.timeout);
  if (nrPorts > MAX_POLL_PORTS) return -E.EINVAL;
  g.check(v, ports, nrPorts * 4, false);
  // local_events_need_delivery(): an upcall is due, so no sleep (Xen has no mask rule since 2006).
  if (v.upcallPending && !v.upcallMask) return 0;
  const list: number[] = [];
  const t = v.domain.evtchn;
  for (let i = 0; i < nrPorts; i++) {
    const port = g.u32(v, ports + 4 * i);
    // evtchn_port_poll: invalid, free and reserved ports are -EINVAL.
    if (!t.isValid(port) || t.state[port] === ECS.FREE || t.state[port] === ECS.RESERVED) return -E.EINVAL;
    if (v.domain.portOps.isPending(port)) return 0;
    list.push(port);
  }
  if (list.length === 0 && timeout === 0) return 0;
  v.pollPorts = list;
  v.pollDeadline = timeout !== 0 ? timeout : NO_DEADLINE;
  v.blocked = true;
  v.domain.pollers.add(v);
  hv.timersChanged();
  return 0;
}

/** set_timer_op: absolute system time in ns; 0 stops the timer; the past fires at once. */
export function doSetTimerOp(hv: Hypervisor, v: Vcpu, timeout: number): number {
  const now = hv.now(v);
  if (timeout === 0) v.singleshotDeadline = NO_DEADLINE;
  // Written so that a NaN register counts as huge too: a NaN deadline would stop virtual time.
  else if (timeout < 0 || !(timeout - now < HUGE_TIMEOUT_NS)) v.singleshotDeadline = now + HUGE_TIMEOUT_FALLBACK_NS;
  else v.singleshotDeadline = Math.max(timeout, now);
  hv.timersChanged();
  return 0;
}

export function doVcpuOp(hv: Hypervisor, v: Vcpu, cmd: number, vcpuId: number, arg: number): number {
  const g = hv.guest;
  const d = v.domain;
  const target = d.vcpus[vcpuId];
  if (!target) return -E.ENOENT;
  switch (cmd) {
    case VCPUOP.initialise: {
      // Without VCPUOP_register_vcpu_info (not modelled), a vCPU past shared_info's 32 has no vcpu_info.
      if (target.id >= MAX_VIRT_CPUS) return -E.EINVAL;
      // default_initialise_vcpu: the struct is copied in first (-EFAULT), then -EEXIST.
      const ctxt = g.copyFrom(v, arg, vcpuGuestContextSize(v.width));
      if (target.initialised) return -E.EEXIST;
      return archSetInfoGuest(hv, target, ctxt);
    }
    case VCPUOP.up:
      if (!target.initialised) return -E.EINVAL;
      bringUp(hv, target);
      return 0;
    case VCPUOP.down:
      if (!target.down) {
        target.down = true;
        hv.sched.evict(target);
      }
      return 0;
    case VCPUOP.is_up:
      return target.down ? 0 : 1;
    case VCPUOP.get_runstate_info: {
      const L = d.layout.vcpu_runstate_info;
      const now = hv.now(v);
      g.check(v, arg, L.size, true);
      g.put32(v, arg + L.state, target.runstate);
      g.put64(v, arg + L.state_entry_time, target.runstateEntry);
      for (let i = 0; i < 4; i++) {
        const extra = i === target.runstate ? Math.max(0, now - target.runstateEntry) : 0;
        g.put64(v, arg + L.time + 8 * i, (target.runstateTime[i] ?? 0) + extra);
      }
      return 0;
    }
    case VCPUOP.set_periodic_timer: {
      const period = g.u64(v, arg + VCPU_SET_PERIODIC_TIMER.period_ns);
      if (period < MIN_PERIOD_NS || period > STIME_DELTA_MAX) return -E.EINVAL;
      target.periodicPeriod = period;
      target.periodicNext = hv.now(v) + period;
      hv.timersChanged();
      return 0;
    }
    case VCPUOP.stop_periodic_timer:
      target.periodicPeriod = 0;
      target.periodicNext = NO_DEADLINE;
      hv.timersChanged();
      return 0;
    case VCPUOP.set_singleshot_timer: {
      if (target !== v) return -E.EINVAL;
      const L = d.layout.vcpu_set_singleshot_timer;
      const timeout = g.u64(v, arg + L.timeout_abs_ns);
      const flags = g.u32(v, arg + L.flags);
      if (flags & VCPU_SSHOTTMR_future && timeout < hv.now(v)) return -E.ETIME;
      v.singleshotDeadline = Math.max(timeout, hv.now(v));
      hv.timersChanged();
      return 0;
    }
    case VCPUOP.stop_singleshot_timer:
      if (target !== v) return -E.EINVAL;
      v.singleshotDeadline = NO_DEADLINE;
      hv.timersChanged();
      return 0;
    case VCPUOP.send_nmi:
      if (!target.nmiPending) {
        target.nmiPending = true;
        target.kick();
      }
      return 0;
    default:
      return -E.ENOSYS;
  }
}

function bringUp(hv: Hypervisor, v: Vcpu): void {
  if (!v.down) return;
  v.down = false;
  if (v.periodicPeriod > 0) v.periodicNext = hv.now() + v.periodicPeriod;
  hv.timersChanged();
  hv.wake(v);
}

