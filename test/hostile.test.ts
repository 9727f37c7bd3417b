// Hostile guests: two unprivileged domains whose kernels issue random hypercalls (random op
// numbers and sub-commands, garbage registers, wild pointers, random struct contents, random
// writes into their own shared_info and event pages) through the real scheduling path, next to a
// victim pair of real guest kernels doing an inter-domain ping-pong. A hostile domain that shuts
// itself down or goes quiet is destroyed and replaced. Nothing may escape the hypervisor, every
// hypercall returns 0, -errno or a documented positive value, the auditor stays quiet, and the
// victims keep making progress.

import assert from "node:assert/strict";
import { test } from "node:test";
import { type GuestCpu, type GuestImage, PageFault } from "../src/abi/cpu.ts";
import { EVTCHN_OP, EVTCHN_OP_COMPAT, type GuestWidth, type Layout, layoutFor } from "../src/abi/layout.ts";
import {
  CALLBACKOP,
  DOMID_INVALID,
  DOMID_SELF,
  EVTCHNOP,
  HYPERVISOR,
  SCHEDOP,
  VCPUOP,
  VGCF_online,
  XEN_ERRNO,
  XEN_PAGE_SIZE,
} from "../src/abi/xen.ts";
import { EvtchnPingPong, workloadsFromCmdline } from "../src/guest/workloads.ts";
import { XenLinux } from "../src/guest/kernel.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { auditEvtchn } from "../src/harness/audit.ts";
import { DOMID_XEN, openPrivcmd } from "../src/hypervisor/domctl.ts";
import { type BuiltDomain, buildDomain, setCmdline } from "../src/toolstack/libxc/builder.ts";
import { Rng } from "../src/util/rng.ts";
import { bareDomain, installPagetables, newHypervisor } from "./harness.ts";

const TARGET_CALLS = 100_000;
/** Errnos a hypercall may return (public/errno.h); ERESTART and EINTR never reach a guest. */
const ETIME = 62;
const GUEST_ERRNOS = new Set<number>([
  ...Object.values(XEN_ERRNO).filter((e) => e !== XEN_ERRNO.ERESTART && e !== XEN_ERRNO.EINTR),
  ETIME,
]);
const XEN_VERSION = (4 << 16) | 17;
const HOSTILE_PAGES = 48;
/** A hostile domain that makes no hypercall for this long (virtual ns) is replaced. */
const QUIET_NS = 500_000;
/** Where the hostile kernel maps its shared_info (below the 64-bit direct map; above the 32-bit one). */
const FIXMAP = { 64: -0x778000000000 - 0x200000, 32: 0xf5000000 } as const;

/** Register garbage: what a buggy or malicious kernel might leave in an argument register. */
const WILD = [
  -1,
  -4096,
  -(2 ** 31),
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 32 + 4,
  2 ** 40,
  2 ** 53,
  2 ** 63,
  2 ** 64,
  -(2 ** 63),
  Number.MAX_SAFE_INTEGER,
  Number.MIN_SAFE_INTEGER,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  1.5,
  -0.5,
  1e300,
];
const INTERESTING_U32 = [
  0, 1, 2, 3, 4, 7, 8, 15, 16, 23, 24, 31, 32, 63, 64, 65, 127, 128, 129, 255, 1023, 1024, 4095, 4096, 0x7fff, 0x7ff0, 0x7ff4,
  0xffff, 0x10000, 0x1ffff, 0x20000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
];

interface Tally {
  calls: number;
  violations: string[];
  escaped: unknown[];
  ok: Map<string, number>;
}

/**
 * The hostile kernel. Its entry point boots a little (callbacks, a timer VIRQ, shared_info
 * mapped), then every scheduling quantum and every upcall issues a batch of random hypercalls.
 */
class HostileImage implements GuestImage {
  readonly entry: number;
  readonly L: Layout;
  private d!: Domain;
  private booted = false;
  /** Hypercalls this domain has made (the test replaces a domain that stays quiet). */
  calls = 0;
  lastCallAt = 0;
  /** Its boot switched it to FIFO (so it may have more ports than 2-level can address). */
  private fifo = false;
  private fixVa = -1;
  private readonly knownPorts: number[] = [];

  constructor(
    readonly width: GuestWidth,
    private readonly rng: Rng,
    /** Other domains' ids it may name: the victims and the other hostile domain. */
    private readonly others: () => number[],
    private readonly tally: Tally,
  ) {
    this.L = layoutFor(width);
    this.entry = this.L.PAGE_OFFSET + 0x1000;
  }

  attach(d: Domain): void {
    this.d = d;
  }

  private get base(): number {
    return this.L.PAGE_OFFSET;
  }

  enter(address: number, cpu: GuestCpu, _arg: number): void {
    if (address === this.entry && cpu.vcpuId === 0 && !this.booted) {
      this.boot(cpu);
      return;
    }
    // An upcall (or a vCPU started at a random address): sometimes acknowledge, then misbehave.
    if (this.rng.chance(0.5)) this.poke8(cpu, this.vcpuInfo(cpu) + 0, 0);
    this.batch(cpu, this.rng.below(4));
  }

  resume(cpu: GuestCpu): void {
    this.batch(cpu, 1 + this.rng.below(48));
  }

  private boot(cpu: GuestCpu): void {
    this.booted = true;
    // A sane start, so that deeper states are reachable: callbacks, shared_info, a timer VIRQ.
    const a = this.va(1);
    cpu.write32(a, 0); // CALLBACKTYPE_event
    if (this.width === 64) cpu.write64(a + 8, this.entry + 0x100);
    else {
      cpu.write32(a + 4, 0x61);
      cpu.write32(a + 8, this.entry + 0x100);
    }
    this.call(cpu, HYPERVISOR.callback_op, CALLBACKOP.register, a);
    const pte = this.d.sharedInfoMfn * XEN_PAGE_SIZE + 3;
    if (this.width === 64) this.call(cpu, HYPERVISOR.update_va_mapping, FIXMAP[64], pte, 0);
    else this.call(cpu, HYPERVISOR.update_va_mapping, FIXMAP[32], pte, 0, 0);
    this.fixVa = FIXMAP[this.width];
    // Half the time, switch to FIFO properly: a control block and two event array pages.
    if (this.rng.chance(0.5)) {
      const O = EVTCHN_OP.init_control;
      cpu.write64(a + O.control_gfn, this.d.p2m[HOSTILE_PAGES - 1]!);
      cpu.write32(a + O.offset, 0);
      cpu.write32(a + O.vcpu, 0);
      if (this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.init_control, a) === 0) {
        this.fifo = true;
        for (const pfn of [HOSTILE_PAGES - 2, HOSTILE_PAGES - 3]) {
          cpu.write64(a + EVTCHN_OP.expand_array.array_gfn, this.d.p2m[pfn]!);
          this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.expand_array, a);
        }
      }
    }
    cpu.write32(a + EVTCHN_OP.bind_virq.virq, 0);
    cpu.write32(a + EVTCHN_OP.bind_virq.vcpu, 0);
    if (this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.bind_virq, a) === 0) this.learnPort(cpu, EVTCHNOP.bind_virq, a);
    this.batch(cpu, 16);
  }

  // ---- helpers ----

  private va(pfn: number): number {
    return this.base + pfn * XEN_PAGE_SIZE;
  }

  private vcpuInfo(cpu: GuestCpu): number {
    return this.fixVa + cpu.vcpuId * this.L.vcpu_info.size;
  }

  private alive(cpu: GuestCpu): boolean {
    return this.d.vcpus[cpu.vcpuId]?.running === true;
  }

  /** Stores the guest makes itself; a store through a mapping it has since removed just faults. */
  private poke32(cpu: GuestCpu, va: number, value: number): void {
    try {
      cpu.write32(va, value);
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
    }
  }

  private poke8(cpu: GuestCpu, va: number, value: number): void {
    try {
      cpu.write8(va, value);
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
    }
  }

  private poke64(cpu: GuestCpu, va: number, value: number): void {
    this.poke32(cpu, va, value >>> 0);
    this.poke32(cpu, va + 4, Math.floor((value - (value >>> 0)) / 2 ** 32) >>> 0);
  }

  private pokeUlong(cpu: GuestCpu, va: number, value: number): void {
    if (this.width === 64) this.poke64(cpu, va, value);
    else this.poke32(cpu, va, value >>> 0);
  }

  private peek32(cpu: GuestCpu, va: number): number {
    try {
      return cpu.read32(va);
    } catch (e) {
      if (!(e instanceof PageFault)) throw e;
      return 0;
    }
  }

  private pick<T>(items: readonly T[]): T {
    return this.rng.pick(items);
  }

  private u32(): number {
    return this.rng.chance(0.5) ? this.pick(INTERESTING_U32) : this.rng.nextU32();
  }

  /** A register value: mostly small, sometimes any u32, sometimes garbage. */
  private reg(): number {
    const r = this.rng.below(10);
    if (r < 6) return this.rng.below(66);
    if (r < 8) return this.u32();
    return this.pick(WILD);
  }

  private port(): number {
    const r = this.rng.below(10);
    if (r < 5 && this.knownPorts.length > 0) return this.pick(this.knownPorts);
    if (r < 8) return this.rng.below(80);
    return this.pick([0, 1023, 1024, 1025, 4095, 4096, 8191, 8192, 131071, 131072, 0xffffffff, this.rng.nextU32()]);
  }

  private domid(): number {
    const r = this.rng.below(10);
    if (r < 3) return DOMID_SELF;
    if (r < 5) return this.d.domid;
    if (r < 8) return this.pick(this.others());
    return this.pick([0, DOMID_INVALID, 0x7ff1, 0x7ff2, 0xffff, this.rng.below(0x10000), this.d.domid + 1]);
  }

  private vcpuId(): number {
    return this.rng.chance(0.85) ? this.rng.below(4) : this.pick([31, 32, 0xffff, 0xffffffff]);
  }

  /** A guest frame number: its own (as its p2m lists them), its shared_info, or garbage. */
  private gfn(): number {
    const r = this.rng.below(10);
    if (r < 6) return this.d.p2m[this.rng.below(this.d.p2m.length)]!;
    if (r < 7) return this.d.sharedInfoMfn;
    if (r < 8) return this.rng.below(1 << 14);
    return this.pick([0, 2 ** 32, 2 ** 40, 2 ** 52, 2 ** 53 - 1, 0xffffffff, 2 ** 63]);
  }

  private time(cpu: GuestCpu): number {
    const now = cpu.rdtsc();
    return this.pick([0, 1, now, now + 1000, now + 100_000, now + 2_000_000, now - 1000, 2 ** 47, 2 ** 62, 2 ** 64 - 1]);
  }

  /** A struct address: valid (aligned, misaligned, page-crossing) or wild. */
  private ptr(): number {
    const r = this.rng.below(20);
    const pfn = 1 + this.rng.below(HOSTILE_PAGES - 2);
    if (r < 11) return this.va(pfn) + 8 * this.rng.below(XEN_PAGE_SIZE / 8 - 16);
    if (r < 13) return this.va(pfn) + 1 + this.rng.below(XEN_PAGE_SIZE - 64);
    if (r < 15) return this.va(pfn + 1) - 1 - this.rng.below(12); // crosses into the next frame
    if (r < 16) return this.va(HOSTILE_PAGES) - 1 - this.rng.below(12); // crosses out of the direct map
    if (r < 17 && this.fixVa !== -1) return this.fixVa + this.rng.below(XEN_PAGE_SIZE);
    const end = this.va(HOSTILE_PAGES);
    return this.pick([0, 1, 4096, -1, -4096, end, end + 4096, this.base - 8, this.base - 4096, 2 ** 47, -(2 ** 47), 2 ** 63, 2 ** 64, 0xffffffff, ...WILD]);
  }

  /** Random words at `at`: the generic struct content. */
  private scribble(cpu: GuestCpu, at: number, words: number): void {
    for (let i = 0; i < words; i++) this.poke32(cpu, at + 4 * i, this.u32());
  }

  private call(cpu: GuestCpu, op: number, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0): number {
    const t = this.tally;
    t.calls++;
    this.calls++;
    let rc: number;
    try {
      rc = cpu.hypercall(op, a1, a2, a3, a4, a5);
    } catch (e) {
      if (!t.escaped.includes(e)) t.escaped.push(e);
      throw e;
    }
    const positiveOk =
      (op === HYPERVISOR.vcpu_op && a1 === VCPUOP.is_up && rc === 1) || (op === HYPERVISOR.xen_version && a1 === 0 && rc === XEN_VERSION);
    if (!Number.isInteger(rc) || (rc > 0 && !positiveOk) || (rc < 0 && !GUEST_ERRNOS.has(-rc))) {
      if (t.violations.length < 20) t.violations.push(`hypercall ${op}(${[a1, a2, a3, a4, a5].join(", ")}) returned ${rc}`);
    }
    if (rc >= 0) {
      const key = `${op}/${op === HYPERVISOR.event_channel_op || op === HYPERVISOR.sched_op || op === HYPERVISOR.vcpu_op ? a1 : "-"}`;
      t.ok.set(key, (t.ok.get(key) ?? 0) + 1);
    }
    return rc;
  }

  // ---- the misbehaviour ----

  private batch(cpu: GuestCpu, n: number): void {
    for (let i = 0; i < n && this.alive(cpu); i++) this.act(cpu);
  }

  private act(cpu: GuestCpu): void {
    const r = this.rng.below(100);
    if (r < 36) this.evtchnOp(cpu, false);
    else if (r < 39) this.evtchnOp(cpu, true);
    else if (r < 49) this.schedOp(cpu, HYPERVISOR.sched_op);
    else if (r < 51) this.schedOp(cpu, HYPERVISOR.sched_op_compat);
    else if (r < 63) this.vcpuOp(cpu);
    else if (r < 66) this.setTimerOp(cpu);
    else if (r < 69) this.callbacks(cpu);
    else if (r < 71) this.call(cpu, HYPERVISOR.xen_version, this.rng.chance(0.5) ? 0 : this.reg(), this.ptr());
    else if (r < 73) this.consoleIo(cpu);
    else if (r < 77) this.updateVaMapping(cpu);
    else if (r < 85) this.call(cpu, this.rng.below(41), this.reg(), this.ptr(), this.reg(), this.reg(), this.reg());
    else if (r < 88) this.call(cpu, this.pick([-1, 41, 64, 255, 2 ** 32 + 32, 2 ** 40, Number.NaN, 1.5, 32.5, -0, Number.POSITIVE_INFINITY]), this.reg(), this.ptr());
    else if (r < 98) this.scribbleShared(cpu);
    else if (r < 99) this.maskUpcalls(cpu);
    else if (this.rng.chance(0.15)) this.allocBurst(cpu);
  }

  private evtchnOp(cpu: GuestCpu, compat: boolean): void {
    const cmd = this.rng.chance(0.9) ? this.rng.below(15) : this.pick([-1, 15, 16, 255, 2 ** 31, 2 ** 32 + 4, Number.NaN, 1.5, -0]);
    const p = this.ptr();
    // With the compat op, the struct is the union at +4 and the command is in front of it.
    const s = compat ? p + EVTCHN_OP_COMPAT.u : p;
    if (compat) this.poke32(cpu, p, Number.isFinite(cmd) ? cmd >>> 0 : 0);
    if (this.rng.chance(0.2)) this.scribble(cpu, s, 8);
    else this.fillEvtchn(cpu, cmd, s);
    const rc = compat ? this.call(cpu, HYPERVISOR.event_channel_op_compat, p) : this.call(cpu, HYPERVISOR.event_channel_op, cmd, s);
    if (rc === 0) this.learnPort(cpu, cmd, s);
  }

  private fillEvtchn(cpu: GuestCpu, cmd: number, s: number): void {
    const O = EVTCHN_OP;
    switch (cmd) {
      case EVTCHNOP.alloc_unbound:
        this.poke32(cpu, s, (this.domid() & 0xffff) | ((this.domid() & 0xffff) << 16));
        break;
      case EVTCHNOP.bind_interdomain:
        this.poke32(cpu, s + O.bind_interdomain.remote_dom, this.domid());
        this.poke32(cpu, s + O.bind_interdomain.remote_port, this.port());
        break;
      case EVTCHNOP.bind_virq:
        this.poke32(cpu, s + O.bind_virq.virq, this.rng.chance(0.8) ? this.rng.below(26) : this.u32());
        this.poke32(cpu, s + O.bind_virq.vcpu, this.vcpuId());
        break;
      case EVTCHNOP.bind_ipi:
        this.poke32(cpu, s + O.bind_ipi.vcpu, this.vcpuId());
        break;
      case EVTCHNOP.status:
        this.poke32(cpu, s + O.status.dom, this.domid());
        this.poke32(cpu, s + O.status.port, this.port());
        break;
      case EVTCHNOP.bind_vcpu:
        this.poke32(cpu, s + O.bind_vcpu.port, this.port());
        this.poke32(cpu, s + O.bind_vcpu.vcpu, this.vcpuId());
        break;
      case EVTCHNOP.reset:
        this.poke32(cpu, s, this.domid());
        break;
      case EVTCHNOP.init_control:
        this.poke64(cpu, s + O.init_control.control_gfn, this.gfn());
        this.poke32(cpu, s + O.init_control.offset, this.pick([0, 0, 8, 64, 4096 - 72, 4096 - 71, 4096 - 64, 4092, 4096, 0x80000000]));
        this.poke32(cpu, s + O.init_control.vcpu, this.vcpuId());
        break;
      case EVTCHNOP.expand_array:
        this.poke64(cpu, s + O.expand_array.array_gfn, this.gfn());
        break;
      case EVTCHNOP.set_priority:
        this.poke32(cpu, s + O.set_priority.port, this.port());
        this.poke32(cpu, s + O.set_priority.priority, this.rng.chance(0.8) ? this.rng.below(17) : this.u32());
        break;
      case EVTCHNOP.bind_pirq:
        this.scribble(cpu, s, 3);
        break;
      default:
        // close, send, unmask, and unknown commands: a port first.
        this.poke32(cpu, s, this.port());
        this.scribble(cpu, s + 4, 3);
    }
  }

  /** Remembers the ports a successful bind or allocation handed out. */
  private learnPort(cpu: GuestCpu, cmd: number, s: number): void {
    const O = EVTCHN_OP;
    const at =
      cmd === EVTCHNOP.alloc_unbound
        ? O.alloc_unbound.port
        : cmd === EVTCHNOP.bind_interdomain
          ? O.bind_interdomain.local_port
          : cmd === EVTCHNOP.bind_virq
            ? O.bind_virq.port
            : cmd === EVTCHNOP.bind_ipi
              ? O.bind_ipi.port
              : -1;
    if (at < 0) return;
    const port = this.peek32(cpu, s + at);
    if (this.knownPorts.length < 64) this.knownPorts.push(port);
    else this.knownPorts[this.rng.below(64)] = port;
  }

  private allocBurst(cpu: GuestCpu): void {
    // Many ports at once: pushes the table past the 2-level limit under FIFO, and grows buckets.
    const a = this.va(2);
    const n = this.fifo && this.rng.chance(0.3) ? 1100 : 16 + this.rng.below(200);
    for (let i = 0; i < n && this.alive(cpu); i++) {
      this.poke32(cpu, a, DOMID_SELF | (this.pick([DOMID_SELF, ...this.others()]) << 16));
      if (this.call(cpu, HYPERVISOR.event_channel_op, EVTCHNOP.alloc_unbound, a) < 0) break;
    }
  }

  private schedOp(cpu: GuestCpu, op: number): void {
    const weights: [number, number][] = [
      [SCHEDOP.yield, 20],
      [SCHEDOP.block, 6],
      [SCHEDOP.poll, 12],
      [SCHEDOP.shutdown, 1],
      [SCHEDOP.remote_shutdown, 10],
      [SCHEDOP.shutdown_code, 4],
      [SCHEDOP.watchdog, 3],
      [SCHEDOP.pin_override, 2],
      [-1, 2],
      [8, 2],
      [Number.NaN, 1],
    ];
    let r = this.rng.below(weights.reduce((n, [, w]) => n + w, 0));
    let cmd = 0;
    for (const [c, w] of weights) {
      if (r < w) {
        cmd = c;
        break;
      }
      r -= w;
    }
    // SCHEDOP_shutdown only with a 1-in-5 chance on top: the hostile domain should live a while.
    if (cmd === SCHEDOP.shutdown && !this.rng.chance(0.2)) cmd = SCHEDOP.yield;
    const s = this.ptr();
    const L = this.L.sched_poll;
    // Like an idle loop, usually arm a timer before going to sleep.
    if ((cmd === SCHEDOP.block || cmd === SCHEDOP.poll) && this.rng.chance(0.7)) this.armTimer(cpu);
    switch (cmd) {
      case SCHEDOP.poll: {
        const n = this.rng.chance(0.9) ? this.rng.below(5) : this.pick([0, 127, 128, 129, 0xffffffff]);
        const list = this.va(3) + 8 * this.rng.below(32);
        for (let i = 0; i < Math.min(n, 130); i++) this.poke32(cpu, list + 4 * i, this.port());
        this.pokeUlong(cpu, s + L.ports, this.rng.chance(0.85) ? list : this.ptr());
        this.pokeUlong(cpu, s + L.nr_ports, n);
        this.poke64(cpu, s + L.timeout, this.time(cpu));
        break;
      }
      case SCHEDOP.remote_shutdown:
        this.poke32(cpu, s, this.domid());
        this.poke32(cpu, s + 4, this.rng.below(6));
        break;
      default:
        this.poke32(cpu, s, this.rng.chance(0.8) ? this.rng.below(6) : this.u32());
    }
    this.call(cpu, op, cmd, this.rng.chance(0.9) ? s : this.reg());
  }

  private vcpuOp(cpu: GuestCpu): void {
    const cmd = this.rng.chance(0.9) ? this.rng.below(13) : this.pick([-1, 13, 64, 2 ** 32, Number.NaN, 0.5]);
    // Taking vCPU 0 down is allowed, but rarer: it tends to end the domain's misbehaviour.
    let target = this.vcpuId();
    if (cmd === VCPUOP.down && target === 0 && this.rng.chance(0.8)) target = 1;
    const s = this.ptr();
    switch (cmd) {
      case VCPUOP.initialise: {
        const C = this.L.vcpu_guest_context;
        const ctx = this.va(4) + (this.rng.chance(0.8) ? 0 : 8 * this.rng.below(400));
        const at = this.rng.chance(0.8) ? ctx : s;
        this.scribble(cpu, at, 16);
        this.pokeUlong(cpu, at + C.flags, this.rng.chance(0.7) ? VGCF_online : this.u32());
        this.pokeUlong(cpu, at + C.user_regs_ip, this.rng.chance(0.5) ? this.entry : this.u32());
        this.pokeUlong(cpu, at + C.user_regs_sp, this.ptr());
        this.pokeUlong(cpu, at + C.event_callback_eip, this.rng.chance(0.5) ? this.entry + 0x100 : this.u32());
        this.pokeUlong(cpu, at + C.failsafe_callback_eip, this.u32());
        this.call(cpu, HYPERVISOR.vcpu_op, cmd, target, at);
        return;
      }
      case VCPUOP.set_periodic_timer:
        this.poke64(cpu, s, this.pick([0, 1, 999_999, 1_000_000, 3_000_000, 10_000_000, 0x7fffffffffff, 2 ** 47, 2 ** 63]));
        break;
      case VCPUOP.set_singleshot_timer:
        this.poke64(cpu, s, this.time(cpu));
        this.poke32(cpu, s + 8, this.rng.below(3));
        break;
      default:
        this.scribble(cpu, s, 4);
    }
    this.call(cpu, HYPERVISOR.vcpu_op, cmd, target, this.rng.chance(0.9) ? s : this.reg());
  }

  private armTimer(cpu: GuestCpu): void {
    const t = cpu.rdtsc() + 10_000 + this.rng.below(1_000_000);
    if (this.width === 64) this.call(cpu, HYPERVISOR.set_timer_op, t);
    else this.call(cpu, HYPERVISOR.set_timer_op, t >>> 0, Math.floor(t / 2 ** 32) >>> 0);
  }

  private setTimerOp(cpu: GuestCpu): void {
    const t = this.rng.chance(0.8) ? this.time(cpu) : this.pick(WILD);
    if (this.width === 64) this.call(cpu, HYPERVISOR.set_timer_op, t);
    else this.call(cpu, HYPERVISOR.set_timer_op, t >>> 0, Math.floor(t / 2 ** 32) >>> 0);
  }

  private callbacks(cpu: GuestCpu): void {
    const handler = this.entry + 0x100;
    if (this.rng.chance(0.4)) {
      const addr = () => (this.rng.chance(0.5) ? handler : this.reg());
      this.call(cpu, HYPERVISOR.set_callbacks, addr(), addr(), addr(), addr());
      return;
    }
    const s = this.ptr();
    this.poke32(cpu, s, this.rng.chance(0.8) ? this.rng.below(6) : this.u32());
    if (this.width === 64) this.poke64(cpu, s + 8, this.rng.chance(0.6) ? handler : this.u32());
    else {
      this.poke32(cpu, s + 4, 0x61);
      this.poke32(cpu, s + 8, this.rng.chance(0.6) ? handler : this.u32());
    }
    this.call(cpu, HYPERVISOR.callback_op, this.rng.chance(0.9) ? this.rng.below(3) : this.reg(), s);
  }

  private consoleIo(cpu: GuestCpu): void {
    const s = this.ptr();
    const n = this.rng.chance(0.8) ? this.rng.below(40) : this.pick([4095, 4096, 4097, 2 ** 31, ...WILD]);
    for (let i = 0; i < Math.min(n, 40); i++) this.poke8(cpu, s + i, 0x20 + this.rng.below(95));
    this.call(cpu, HYPERVISOR.console_io, this.rng.chance(0.9) ? 0 : this.reg(), n, s);
  }

  private updateVaMapping(cpu: GuestCpu): void {
    const va = this.pick([this.fixVa, FIXMAP[this.width] + XEN_PAGE_SIZE, this.ptr(), this.va(5), this.reg(), 0xfee00000]);
    const mfn = this.rng.chance(0.7) ? this.gfn() : this.rng.nextU32();
    const pte = mfn * XEN_PAGE_SIZE + this.rng.below(8);
    const flags = this.rng.below(8);
    if (this.width === 64) this.call(cpu, HYPERVISOR.update_va_mapping, va, pte, flags);
    else this.call(cpu, HYPERVISOR.update_va_mapping, va, pte >>> 0, Math.floor(pte / 2 ** 32) >>> 0, flags);
  }

  /** Writes garbage straight into its own shared_info and its other pages (event arrays, control blocks). */
  private scribbleShared(cpu: GuestCpu): void {
    const r = this.rng.below(4);
    if (r < 2 && this.fixVa !== -1) {
      // vcpu_info bytes, selector words, pending and mask bitmaps.
      const regions = [0, 4, 8, 64, 128, 2048, 2048 + 4 * this.rng.below(128), this.L.shared_info.evtchn_mask + 4 * this.rng.below(64)];
      this.poke32(cpu, this.fixVa + this.pick(regions), this.u32());
    } else {
      const pfn = this.rng.below(HOSTILE_PAGES);
      const at = this.va(pfn) + 4 * this.rng.below(XEN_PAGE_SIZE / 4);
      this.poke32(cpu, at, this.rng.chance(0.5) ? this.pick([0x80000000, 0x40000000, 0x20000000, 0xe0000000, 0xa0000005]) : this.u32());
    }
  }

  private maskUpcalls(cpu: GuestCpu): void {
    if (this.fixVa === -1) return;
    this.poke8(cpu, this.vcpuInfo(cpu) + 1, this.rng.chance(0.6) ? 1 : 0);
  }
}

interface Victim {
  d: Domain;
  k: XenLinux;
  built: BuiltDomain;
}

function pingPongOf(k: XenLinux): EvtchnPingPong {
  const w = k.workloads.find((x) => x instanceof EvtchnPingPong);
  assert.ok(w instanceof EvtchnPingPong, "victim has no ping-pong workload");
  return w;
}

function runHostile(seed: number, opts: { width: GuestWidth; hostileWidth: GuestWidth; abi: "fifo" | "2l"; pcpus: number }) {
  const hv = new Hypervisor({ nrFrames: 16384, firstDomid: 1, sched: { nrPcpus: opts.pcpus, seed } });
  const xc = openPrivcmd(hv, DOMID_XEN);
  const kernels = new Map<number, XenLinux>();
  const victims: Victim[] = [];
  for (const name of ["ping", "pong"]) {
    const k = new XenLinux(opts.width, workloadsFromCmdline);
    const b = buildDomain(xc, { name, memoryMiB: 16, vcpus: 1, width: opts.width, maxEventChannels: 1023, cmdline: "", privileged: false }, k);
    kernels.set(b.domid, k);
    victims.push({ d: hv.domainById(b.domid)!, k, built: b });
  }
  const [ping, pong] = victims as [Victim, Victim];
  const port = xc.evtchn_alloc_unbound(ping.d.domid, pong.d.domid);
  assert.ok(port > 0);
  const fifo = `xen.fifo_events=${opts.abi === "fifo" ? 1 : 0}`;
  setCmdline(xc, ping.built, `${fifo} evtchn_listen=${port}`);
  setCmdline(xc, pong.built, `${fifo} evtchn_connect=${ping.d.domid}:${port}`);
  hv.unpauseDomain(ping.d);
  hv.unpauseDomain(pong.d);

  const tally: Tally = { calls: 0, violations: [], escaped: [], ok: new Map() };
  const rng = new Rng(seed ^ 0x5eed);
  // Two hostile domains at a time, so that they can also bind to each other (and one can be
  // destroyed while the other holds channels to it).
  const hostiles: { d: Domain; img: HostileImage }[] = [];
  let spawned = 0;
  const spawn = (slot: number) => {
    const others = () => [ping.d.domid, pong.d.domid, ...hostiles.map((h) => h.d.domid)];
    const img = new HostileImage(opts.hostileWidth, rng, others, tally);
    const d = hv.createDomain(
      {
        name: `hostile${spawned++}`,
        width: opts.hostileWidth,
        maxVcpus: 3,
        nrPages: HOSTILE_PAGES,
        // More ports than the 2-level ABI can address, so FIFO -> reset -> 2-level leaves some behind.
        maxEvtchnPort: opts.hostileWidth === 64 ? 8191 : 4095,
        privileged: false,
      },
      img,
    );
    img.attach(d);
    img.lastCallAt = hv.sched.now();
    installPagetables(hv, d, img.entry);
    hv.unpauseDomain(d);
    hostiles[slot] = { d, img };
  };
  spawn(0);
  spawn(1);

  const received = () => victims.map((v) => pingPongOf(v.k).stats.handled);
  const progress: number[][] = [];
  let nextSample = TARGET_CALLS / 10;
  const lastCalls = [0, 0];
  let shutdowns = 0;
  let stuck = 0;
  let steps = 0;
  const maxSteps = 3_000_000;
  while (tally.calls < TARGET_CALLS) {
    assert.ok(steps < maxSteps, `seed ${seed}: only ${tally.calls} hypercalls in ${steps} steps`);
    const more = hv.sched.step();
    assert.ok(more, `seed ${seed}: the machine stopped`);
    steps++;
    if (steps % 97 === 0) {
      const bad = auditEvtchn(hv, kernels);
      assert.deepEqual(bad, [], `seed ${seed}, step ${steps}: auditor: ${bad.join("; ")}`);
    }
    if (steps % 256 === 0) {
      // A hostile domain that shut itself down, or sleeps with nothing to wake it, is replaced.
      for (const [slot, h] of hostiles.entries()) {
        if (h.img.calls !== lastCalls[slot]) {
          lastCalls[slot] = h.img.calls;
          h.img.lastCallAt = hv.sched.now();
        }
        if (h.d.state === "running" && hv.sched.now() - h.img.lastCallAt <= QUIET_NS) continue;
        if (h.d.state !== "running") shutdowns++;
        else stuck++;
        hv.destroyDomain(h.d);
        lastCalls[slot] = 0;
        spawn(slot);
      }
    }
    if (tally.calls >= nextSample) {
      progress.push(received());
      nextSample += TARGET_CALLS / 10;
    }
  }
  return { hv, tally, victims, progress, steps, spawned, shutdowns, stuck, kernels };
}

const CONFIGS = [
  { seed: 1, width: 64, hostileWidth: 64, abi: "fifo", pcpus: 2 },
  { seed: 2, width: 32, hostileWidth: 32, abi: "2l", pcpus: 2 },
  { seed: 3, width: 64, hostileWidth: 32, abi: "2l", pcpus: 3 },
  { seed: 4, width: 32, hostileWidth: 64, abi: "fifo", pcpus: 1 },
] as const;

for (const c of CONFIGS) {
  const what = `seed ${c.seed}: >= ${TARGET_CALLS} random hypercalls from two ${c.hostileWidth}-bit hostile domains beside a ${c.width}-bit ${c.abi} ping-pong on ${c.pcpus} pCPUs`;
  test(what, (t) => {
    const t0 = performance.now();
    const r = runHostile(c.seed, c);
    const ms = performance.now() - t0;
    const final = r.victims.map((v) => pingPongOf(v.k).stats.handled);
    const summary = `seed ${c.seed}: ${r.tally.calls} hypercalls in ${r.steps} steps, ${r.spawned} hostile domains (${r.shutdowns} shut down, ${r.stuck} stuck), victims received ${final.join("/")}, ${ms.toFixed(0)} ms`;
    t.diagnostic(summary);
    t.diagnostic(`seed ${c.seed}: successful (op/cmd: count) ${[...r.tally.ok.entries()].sort().map(([k, n]) => `${k}:${n}`).join(" ")}`);
    assert.deepEqual(r.tally.escaped, [], `seed ${c.seed}: exceptions escaped`);
    assert.deepEqual(r.tally.violations, [], `seed ${c.seed}: bad return values`);
    assert.ok(r.tally.calls >= TARGET_CALLS);
    assert.equal(r.hv.lastGuestError, undefined, `seed ${c.seed}: a guest kernel died: ${String(r.hv.lastGuestError)}`);
    for (const v of r.victims) assert.equal(v.d.state, "running", `seed ${c.seed}: victim ${v.d.name} is ${v.d.state}`);
    // The victims kept going throughout: every tenth of the run, both received more.
    for (let i = 1; i < r.progress.length; i++) {
      for (let j = 0; j < 2; j++) {
        assert.ok(r.progress[i]![j]! > r.progress[i - 1]![j]!, `seed ${c.seed}: victim ${j} made no progress in sample ${i}: ${JSON.stringify(r.progress)}`);
      }
    }
    for (const n of final) assert.ok(n >= 1000, `seed ${c.seed}: victims received only ${final.join("/")}`);
    assert.deepEqual(auditEvtchn(r.hv, r.kernels), []);
  });
}

test("garbage set_timer_op deadlines (NaN, infinities, huge, negative, fractional) do not stop virtual time", () => {
  for (const width of [64, 32] as const) {
    for (const t of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 2 ** 64, 2 ** 63, -1, 1.5, 2 ** 50]) {
      const hv = newHypervisor(1, 2);
      const b = bareDomain(hv, { width, vcpus: 1 });
      const rc =
        width === 64
          ? b.v0.hypercall(HYPERVISOR.set_timer_op, t)
          : b.v0.hypercall(HYPERVISOR.set_timer_op, t >>> 0, Math.floor(t / 2 ** 32) >>> 0);
      assert.equal(rc, 0);
      assert.equal(b.v0.hypercall(HYPERVISOR.sched_op, SCHEDOP.block, 0), 0);
      // Only that timer is left: the machine must fire it and then find nothing more to do.
      let steps = 0;
      while (steps < 1000 && hv.sched.step()) steps++;
      assert.ok(steps < 1000, `${width}-bit, timeout ${t}: the scheduler spins (${steps} steps, now ${hv.sched.now()})`);
      assert.ok(Number.isFinite(hv.sched.now()), `${width}-bit, timeout ${t}: virtual time became ${hv.sched.now()}`);
    }
  }
});
