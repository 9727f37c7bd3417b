// Unit tests for every EVTCHNOP, both 2-level widths and FIFO, and the sched_op/vcpu_op calls
// that block on or raise events. Everything goes through hypercalls from bare guests, and guest
// memory (shared_info, FIFO pages) is read back through the guest's own mappings.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { EVTCHN_FIFO_CONTROL_BLOCK, EVTCHN_OP, EVTCHN_OP_COMPAT, type GuestWidth, type Layout, layoutFor } from "../src/abi/layout.ts";
import {
  DOMID_SELF,
  XEN_ERRNO as E,
  EVTCHN_FIFO,
  EVTCHNOP,
  EVTCHNSTAT,
  HYPERVISOR,
  SCHEDOP,
  VCPU_SSHOTTMR_future,
  VCPUOP,
  VIRQ,
  XEN_PAGE_SIZE,
} from "../src/abi/xen.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain, newHypervisor } from "./harness.ts";

/** Where each guest maps its shared_info page (outside the direct map). */
const SI_VA = 0x400000;
/** A read-only alias of the scratch page. */
const RO_VA = 0x500000;
/** Maps nothing. */
const BAD_VA = 0x1000;
const ETIME = 62;
const PENDING = 2 ** EVTCHN_FIFO.PENDING;
const MASKED = 2 ** EVTCHN_FIFO.MASKED;
const LINKED = 2 ** EVTCHN_FIFO.LINKED;
/** Guest pages for FIFO: control blocks (one page, 128 bytes per vCPU) and event arrays. */
const CB_PFN = 2;
const ARRAY_PFN = 3;
const CB_STRIDE = 128;

interface Status {
  rc: number;
  status: number;
  vcpu: number;
  dom: number;
  port: number;
  virq: number;
}

/** A bare guest plus its op structs, shared_info and FIFO pages. */
class Guest {
  readonly L: Layout;
  readonly w: GuestWidth;
  constructor(
    readonly hv: Hypervisor,
    readonly b: BareDomain,
  ) {
    this.L = layoutFor(b.d.width);
    this.w = b.d.width;
    const v = b.v0;
    const pte = b.d.sharedInfoMfn * XEN_PAGE_SIZE + 3;
    const ro = b.d.p2m[1]! * XEN_PAGE_SIZE + 1;
    for (const [va, p] of [
      [SI_VA, pte],
      [RO_VA, ro],
    ] as const) {
      const rc =
        this.w === 64
          ? v.hypercall(HYPERVISOR.update_va_mapping, va, p, 0)
          : v.hypercall(HYPERVISOR.update_va_mapping, va, p >>> 0, Math.floor(p / 2 ** 32), 0);
      assert.equal(rc, 0);
    }
  }

  get domid(): number {
    return this.b.d.domid;
  }

  vcpu(i: number): Vcpu {
    return this.b.d.vcpus[i]!;
  }

  /** event_channel_op(cmd) with the struct given as u32 words; `compat` uses hypercall 16. */
  call(cmd: number, words: readonly number[], v: Vcpu = this.b.v0, compat = false): number {
    const a = this.b.arg;
    for (let i = 0; i < 8; i++) v.write32(a + 4 * i, 0);
    const base = compat ? a + EVTCHN_OP_COMPAT.u : a;
    for (let i = 0; i < words.length; i++) v.write32(base + 4 * i, words[i]!);
    if (!compat) return v.hypercall(HYPERVISOR.event_channel_op, cmd, a);
    v.write32(a + EVTCHN_OP_COMPAT.cmd, cmd);
    return v.hypercall(HYPERVISOR.event_channel_op_compat, a);
  }

  /** An output field of the last op struct. */
  out(off: number, compat = false): number {
    return this.b.v0.read32(this.b.arg + (compat ? EVTCHN_OP_COMPAT.u : 0) + off);
  }

  private portOrErr(rc: number, off: number, compat = false): number {
    return rc < 0 ? rc : this.out(off, compat);
  }

  allocUnbound(remote: number, dom = DOMID_SELF, v?: Vcpu, compat = false): number {
    const rc = this.call(EVTCHNOP.alloc_unbound, [dom | (remote << 16)], v, compat);
    return this.portOrErr(rc, EVTCHN_OP.alloc_unbound.port, compat);
  }
  bindInterdomain(rdom: number, rport: number, v?: Vcpu, compat = false): number {
    const rc = this.call(EVTCHNOP.bind_interdomain, [rdom, rport], v, compat);
    return this.portOrErr(rc, EVTCHN_OP.bind_interdomain.local_port, compat);
  }
  bindVirq(virq: number, vcpu: number): number {
    return this.portOrErr(this.call(EVTCHNOP.bind_virq, [virq, vcpu]), EVTCHN_OP.bind_virq.port);
  }
  bindIpi(vcpu: number): number {
    return this.portOrErr(this.call(EVTCHNOP.bind_ipi, [vcpu]), EVTCHN_OP.bind_ipi.port);
  }
  close(port: number, v?: Vcpu): number {
    return this.call(EVTCHNOP.close, [port], v);
  }
  send(port: number, v?: Vcpu): number {
    return this.call(EVTCHNOP.send, [port], v);
  }
  unmask(port: number): number {
    return this.call(EVTCHNOP.unmask, [port]);
  }
  bindVcpu(port: number, vcpu: number): number {
    return this.call(EVTCHNOP.bind_vcpu, [port, vcpu]);
  }
  reset(dom: number, cmd: number = EVTCHNOP.reset): number {
    return this.call(cmd, [dom]);
  }
  setPriority(port: number, priority: number): number {
    return this.call(EVTCHNOP.set_priority, [port, priority]);
  }
  initControl(gfn: number, offset: number, vcpu: number): number {
    return this.call(EVTCHNOP.init_control, [gfn, 0, offset, vcpu]);
  }
  expandArray(gfn: number): number {
    return this.call(EVTCHNOP.expand_array, [gfn, 0]);
  }
  status(port: number, dom = DOMID_SELF, compat = false): Status {
    const S = EVTCHN_OP.status;
    const rc = this.call(EVTCHNOP.status, [dom, port], undefined, compat);
    const o = (off: number) => this.out(off, compat);
    return { rc, status: o(S.status), vcpu: o(S.vcpu), dom: o(S.unbound_dom) & 0xffff, port: o(S.interdomain_port), virq: o(S.virq) };
  }

  gfn(pfn: number): number {
    return this.b.d.p2m[pfn]!;
  }

  // ---- 2-level bitmaps, as the guest sees them in shared_info ----

  private readUlong(va: number): bigint {
    const v = this.b.v0;
    return this.w === 64 ? (BigInt(v.read32(va + 4)) << 32n) | BigInt(v.read32(va)) : BigInt(v.read32(va));
  }
  private writeUlong(va: number, value: bigint): void {
    const v = this.b.v0;
    v.write32(va, Number(value & 0xffffffffn));
    if (this.w === 64) v.write32(va + 4, Number(value >> 32n));
  }
  private bit(base: number, port: number): boolean {
    const va = base + Math.floor(port / this.w) * (this.w / 8);
    return ((this.readUlong(va) >> BigInt(port % this.w)) & 1n) === 1n;
  }
  pending(port: number): boolean {
    return this.bit(SI_VA + this.L.shared_info.evtchn_pending, port);
  }
  masked(port: number): boolean {
    return this.bit(SI_VA + this.L.shared_info.evtchn_mask, port);
  }
  private setBit(base: number, port: number, on: boolean): void {
    const va = base + Math.floor(port / this.w) * (this.w / 8);
    const bit = 1n << BigInt(port % this.w);
    const old = this.readUlong(va);
    this.writeUlong(va, on ? old | bit : old & ~bit);
  }
  setMask(port: number, on: boolean): void {
    this.setBit(SI_VA + this.L.shared_info.evtchn_mask, port, on);
  }
  /** The guest's ack: clear the pending bit. */
  clearPending(port: number): void {
    this.setBit(SI_VA + this.L.shared_info.evtchn_pending, port, false);
  }
  private vcpuInfo(vcpu: number): number {
    return SI_VA + vcpu * this.L.vcpu_info.size;
  }
  sel(vcpu: number): bigint {
    return this.readUlong(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_pending_sel);
  }
  upcallPending(vcpu: number): number {
    return this.b.v0.read8(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_upcall_pending);
  }
  setUpcallMask(vcpu: number, on: boolean): void {
    this.b.v0.write8(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_upcall_mask, on ? 1 : 0);
  }
  /** What the guest's upcall does first: clear upcall_pending and take the selector. */
  ack(vcpu: number): void {
    this.b.v0.write8(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_upcall_pending, 0);
    this.writeUlong(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_pending_sel, 0n);
  }
  /** The selector bit a 2-level port sets. */
  selBit(port: number): bigint {
    return 1n << BigInt(Math.floor(port / this.w));
  }

  // ---- FIFO: event words and control blocks in guest pages ----

  setupFifo(vcpus: readonly number[] = [0, 1]): void {
    for (const i of vcpus) assert.equal(this.initControl(this.gfn(CB_PFN), i * CB_STRIDE, i), 0);
    assert.equal(this.expandArray(this.gfn(ARRAY_PFN)), 0);
  }
  word(port: number): number {
    return this.b.v0.read32(this.b.va(ARRAY_PFN + (port >> 10)) + (port & 1023) * 4);
  }
  setWord(port: number, value: number): void {
    this.b.v0.write32(this.b.va(ARRAY_PFN + (port >> 10)) + (port & 1023) * 4, value);
  }
  head(vcpu: number, prio: number): number {
    return this.b.v0.read32(this.b.va(CB_PFN) + vcpu * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.head + 4 * prio);
  }
  ready(vcpu: number): number {
    return this.b.v0.read32(this.b.va(CB_PFN) + vcpu * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.ready);
  }
  ackFifo(vcpu: number): void {
    this.b.v0.write8(this.vcpuInfo(vcpu) + this.L.vcpu_info.evtchn_upcall_pending, 0);
    this.b.v0.write32(this.b.va(CB_PFN) + vcpu * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.ready, 0);
  }

  // ---- sched_op / vcpu_op ----

  /** SCHEDOP_poll on `ports` (array placed after the struct), absolute timeout. */
  poll(ports: readonly number[], timeout = 0, v: Vcpu = this.b.v0, nrPorts = ports.length, portsVa?: number): number {
    const a = this.b.arg;
    const P = this.L.sched_poll;
    const list = portsVa ?? a + 64;
    for (let i = 0; i < ports.length; i++) v.write32(a + 64 + 4 * i, ports[i]!);
    if (this.w === 64) v.write64(a + P.ports, list);
    else v.write32(a + P.ports, list);
    v.write32(a + P.nr_ports, nrPorts);
    v.write64(a + P.timeout, timeout);
    return v.hypercall(HYPERVISOR.sched_op, SCHEDOP.poll, a);
  }
  block(v: Vcpu = this.b.v0): number {
    return v.hypercall(HYPERVISOR.sched_op, SCHEDOP.block, 0);
  }
  vcpuOp(cmd: number, vcpu: number, arg = this.b.arg, v: Vcpu = this.b.v0): number {
    return v.hypercall(HYPERVISOR.vcpu_op, cmd, vcpu, arg);
  }
  setTimerOp(deadline: number, v: Vcpu = this.b.v0): number {
    return this.w === 64
      ? v.hypercall(HYPERVISOR.set_timer_op, deadline)
      : v.hypercall(HYPERVISOR.set_timer_op, deadline >>> 0, Math.floor(deadline / 2 ** 32));
  }
  /** Blocks every vCPU so that hv.run() jumps straight to the next timer. */
  blockAll(): void {
    for (const v of this.b.d.vcpus) {
      this.ack(v.id);
      assert.equal(this.block(v), 0);
      assert.equal(v.blocked, true);
    }
  }
}

interface World {
  hv: Hypervisor;
  /** domid 0: privileged, owns the global VIRQs. */
  dom0: Guest;
  d1: Guest;
  d2: Guest;
}

function world(width: GuestWidth, opts: { maxPort?: number; vcpus?: number; pcpus?: number } = {}): World {
  const hv = newHypervisor(1, opts.pcpus ?? 2);
  const mk = (privileged: boolean) => new Guest(hv, bareDomain(hv, { width, vcpus: opts.vcpus ?? 2, maxPort: opts.maxPort ?? 1023, privileged }));
  const dom0 = mk(true);
  const d1 = mk(false);
  const d2 = mk(false);
  assert.deepEqual([dom0.domid, d1.domid, d2.domid], [0, 1, 2]);
  return { hv, dom0, d1, d2 };
}

/**
 * Timer tests run on one pCPU, so that hv.run() never waits on an idle pCPU's clock (the
 * scheduler used to take the minimum over all pCPUs, idle ones included, and never returned).
 */
const ONE_PCPU = { pcpus: 1 };

/** Blocks every vCPU of these guests, so that hv.run() only advances to timers. */
/** Blocks every vCPU with no timer left, as a Linux guest stops Xen's default periodic one at boot. */
function quiet(...guests: Guest[]): void {
  for (const g of guests) {
    for (const v of g.b.d.vcpus) assert.equal(v.hypercall(HYPERVISOR.vcpu_op, VCPUOP.stop_periodic_timer, v.id, 0), 0);
    g.blockAll();
  }
}

for (const width of [64, 32] as const) {
  const nr2L = width === 64 ? 4096 : 1024;

  describe(`2-level ABI, ${width}-bit guest (${nr2L} ports)`, () => {
    test("port 0 is reserved; allocation is first-free from port 1", () => {
      const { dom0 } = world(width);
      assert.deepEqual(dom0.status(0), { rc: 0, status: EVTCHNSTAT.closed, vcpu: 0, dom: 0, port: 0, virq: 0 });
      assert.equal(dom0.close(0), -E.EINVAL);
      assert.equal(dom0.send(0), -E.EINVAL);
      assert.equal(dom0.bindVcpu(0, 0), -E.EINVAL);
      assert.equal(dom0.unmask(0), 0);
      assert.deepEqual([1, 2, 3].map(() => dom0.allocUnbound(DOMID_SELF)), [1, 2, 3]);
      assert.equal(dom0.close(2), 0);
      assert.equal(dom0.bindIpi(0), 2);
      assert.equal(dom0.bindVirq(VIRQ.TIMER, 0), 4);
    });

    test("alloc_unbound: DOMID_SELF is the caller; -ESRCH, -EPERM", () => {
      const { dom0, d1 } = world(width);
      const p = d1.allocUnbound(DOMID_SELF);
      assert.equal(p, 1);
      assert.deepEqual(d1.status(p), { rc: 0, status: EVTCHNSTAT.unbound, vcpu: 0, dom: d1.domid, port: 0, virq: d1.domid });
      assert.equal(d1.status(d1.allocUnbound(dom0.domid)).dom, dom0.domid);
      // A privileged caller allocates in another domain; DOMID_SELF still means the caller.
      const q = dom0.allocUnbound(DOMID_SELF, d1.domid);
      assert.equal(q, 3);
      assert.equal(d1.status(q).dom, dom0.domid);
      assert.equal(dom0.status(q, d1.domid).dom, dom0.domid);
      assert.equal(d1.allocUnbound(DOMID_SELF, dom0.domid), -E.EPERM);
      assert.equal(d1.allocUnbound(DOMID_SELF, 99), -E.ESRCH);
      assert.equal(dom0.allocUnbound(DOMID_SELF, 99), -E.ESRCH);
    });

    test("status: codes, -ESRCH, -EINVAL before -EPERM, privileged callers see other domains", () => {
      const { dom0, d1 } = world(width);
      const u = d1.allocUnbound(dom0.domid);
      const i = dom0.bindInterdomain(d1.domid, u);
      const v = d1.bindVirq(VIRQ.TIMER, 1);
      const ipi = d1.bindIpi(1);
      assert.deepEqual(d1.status(u), { rc: 0, status: EVTCHNSTAT.interdomain, vcpu: 0, dom: dom0.domid, port: i, virq: dom0.domid });
      assert.equal(d1.status(v).status, EVTCHNSTAT.virq);
      assert.equal(d1.status(v).virq, VIRQ.TIMER);
      assert.equal(d1.status(v).vcpu, 1);
      assert.deepEqual(d1.status(ipi), { rc: 0, status: EVTCHNSTAT.ipi, vcpu: 1, dom: 0, port: 0, virq: 0 });
      assert.equal(d1.status(10).status, EVTCHNSTAT.closed);
      assert.deepEqual(dom0.status(ipi, d1.domid), d1.status(ipi));
      assert.equal(d1.status(1, dom0.domid).rc, -E.EPERM);
      assert.equal(d1.status(64, dom0.domid).rc, -E.EINVAL);
      assert.equal(d1.status(64).rc, -E.EINVAL);
      assert.equal(d1.status(1, 99).rc, -E.ESRCH);
    });

    test("bind_interdomain: both ends bound, the new local port pending at its bitmap bit", () => {
      const { dom0, d1, d2 } = world(width);
      // Push the local port past the first selector word of a 32-bit guest and the first u32.
      for (let i = 1; i < 70; i++) assert.equal(dom0.allocUnbound(DOMID_SELF), i);
      const rp = d1.allocUnbound(dom0.domid);
      assert.equal(dom0.upcallPending(0), 0);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      assert.equal(lp, 70);
      assert.deepEqual(dom0.status(lp), { rc: 0, status: EVTCHNSTAT.interdomain, vcpu: 0, dom: d1.domid, port: rp, virq: d1.domid });
      assert.equal(d1.status(rp).status, EVTCHNSTAT.interdomain);
      assert.equal(d1.status(rp).port, lp);
      assert.equal(dom0.pending(lp), true);
      assert.equal(dom0.pending(lp - 1) || dom0.pending(lp + 1), false);
      assert.equal(dom0.sel(0), dom0.selBit(lp));
      assert.equal(dom0.sel(1), 0n);
      assert.equal(dom0.upcallPending(0), 1);
      assert.equal(d1.pending(rp), false);
      // The raw u32 view agrees: bit 70 is bit 6 of u32 word 2, whatever the width.
      assert.equal((dom0.b.v0.read32(SI_VA + dom0.L.shared_info.evtchn_pending + 8) >>> 6) & 1, 1);

      assert.equal(dom0.bindInterdomain(d1.domid, rp), -E.EINVAL, "no longer unbound");
      const forDom0 = d1.allocUnbound(dom0.domid);
      assert.equal(d2.bindInterdomain(d1.domid, forDom0), -E.EINVAL, "remote_dom is not the caller");
      assert.equal(dom0.bindInterdomain(d1.domid, 40), -E.EINVAL, "free port");
      assert.equal(dom0.bindInterdomain(d1.domid, 0), -E.EINVAL, "reserved port");
      assert.equal(dom0.bindInterdomain(d1.domid, 5000), -E.EINVAL, "invalid port");
      assert.equal(dom0.bindInterdomain(99, 1), -E.ESRCH);
      // Loopback within one domain.
      const self = d2.allocUnbound(DOMID_SELF);
      const loop = d2.bindInterdomain(DOMID_SELF, self);
      assert.equal(d2.status(loop).dom, d2.domid);
      assert.equal(d2.status(self).port, loop);
      assert.equal(d2.pending(self), false);
      assert.equal(d2.send(loop), 0);
      assert.equal(d2.pending(self), true);
    });

    test("send: INTERDOMAIN sets the peer pending, IPI the local port, UNBOUND is dropped, others -EINVAL", () => {
      const { dom0, d1 } = world(width);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.pending(rp), true);
      assert.equal(d1.sel(0), d1.selBit(rp));
      assert.equal(d1.upcallPending(0), 1);

      const ipi = d1.bindIpi(1);
      d1.ack(0);
      assert.equal(d1.send(ipi), 0);
      assert.equal(d1.pending(ipi), true);
      assert.equal(d1.sel(1), d1.selBit(ipi));
      assert.equal(d1.upcallPending(1), 1);
      assert.equal(d1.upcallPending(0), 0);

      const u = d1.allocUnbound(dom0.domid);
      d1.ack(1);
      assert.equal(d1.send(u), 0);
      assert.equal(d1.pending(u), false);
      assert.equal(dom0.pending(u), false);
      assert.deepEqual([d1.sel(0), d1.sel(1), d1.upcallPending(0), d1.upcallPending(1)], [0n, 0n, 0, 0]);

      const virq = d1.bindVirq(VIRQ.DEBUG, 0);
      assert.equal(d1.send(virq), -E.EINVAL);
      assert.equal(d1.send(30), -E.EINVAL, "free");
      assert.equal(d1.send(5000), -E.EINVAL, "invalid");
    });

    test("close: the peer goes back to UNBOUND(remote = closer), pending and vCPU are reset", () => {
      const { dom0, d1 } = world(width);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      assert.equal(d1.bindVcpu(rp, 1), 0);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.pending(rp), true);
      assert.equal(d1.close(rp), 0);
      assert.equal(d1.status(rp).status, EVTCHNSTAT.closed);
      assert.equal(d1.pending(rp), false);
      assert.deepEqual(dom0.status(lp), { rc: 0, status: EVTCHNSTAT.unbound, vcpu: 0, dom: d1.domid, port: 0, virq: d1.domid });
      assert.equal(d1.close(rp), -E.EINVAL);
      assert.equal(d1.close(0), -E.EINVAL);
      assert.equal(d1.close(5000), -E.EINVAL);
      // The peer's port is now bindable by the closer; the reused port has vCPU 0 again.
      assert.equal(d1.bindInterdomain(dom0.domid, lp), rp);
      assert.equal(d1.status(rp).vcpu, 0);
      assert.equal(dom0.status(lp).port, rp);
      // Closing a VIRQ port frees the VIRQ for a new binding.
      const t = d1.bindVirq(VIRQ.TIMER, 1);
      assert.equal(d1.close(t), 0);
      assert.equal(d1.bindVirq(VIRQ.TIMER, 1), t);
    });

    test("bind_virq: -EINVAL, -ENOENT, -EEXIST, and -EBUSY for a global VIRQ that dom0 owns", () => {
      const { dom0, d1 } = world(width);
      const t1 = d1.bindVirq(VIRQ.TIMER, 1);
      assert.equal(t1, 1);
      assert.equal(d1.bindVirq(VIRQ.TIMER, 1), -E.EEXIST);
      assert.equal(d1.bindVirq(VIRQ.TIMER, 0), 2, "per-vCPU: one binding per vCPU");
      assert.equal(d1.bindVirq(24, 0), -E.EINVAL);
      assert.equal(d1.bindVirq(0xffffffff, 0), -E.EINVAL);
      assert.equal(d1.bindVirq(VIRQ.DEBUG, 7), -E.ENOENT);
      assert.equal(d1.bindVirq(VIRQ.CONSOLE, 1), -E.EINVAL, "global VIRQ on vCPU 1");
      assert.equal(d1.bindVirq(VIRQ.DOM_EXC, 0), -E.EBUSY);
      assert.equal(d1.bindVirq(VIRQ.CONSOLE, 0), -E.EBUSY);
      assert.equal(d1.bindVirq(VIRQ.ARGO, 0), 3, "per-domain VIRQ");
      const exc = dom0.bindVirq(VIRQ.DOM_EXC, 0);
      assert.equal(exc, 1);
      assert.equal(dom0.bindVirq(VIRQ.DOM_EXC, 0), -E.EEXIST);
      assert.deepEqual(dom0.status(exc), { rc: 0, status: EVTCHNSTAT.virq, vcpu: 0, dom: VIRQ.DOM_EXC, port: 0, virq: VIRQ.DOM_EXC });
    });

    test("bind_ipi: -ENOENT for a bad vCPU", () => {
      const { d1 } = world(width);
      assert.equal(d1.bindIpi(2), -E.ENOENT);
      assert.equal(d1.bindIpi(0xffffffff), -E.ENOENT);
      const p = d1.bindIpi(1);
      assert.equal(d1.status(p).vcpu, 1);
    });

    test("bind_vcpu: UNBOUND, INTERDOMAIN and global VIRQ move; IPI and per-vCPU VIRQ refused", () => {
      const { dom0, d1 } = world(width);
      const u = d1.allocUnbound(dom0.domid);
      assert.equal(d1.bindVcpu(u, 1), 0);
      assert.equal(d1.status(u).vcpu, 1);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      assert.equal(d1.bindVcpu(rp, 1), 0);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.sel(1), d1.selBit(rp));
      assert.equal(d1.sel(0), 0n);
      assert.equal(d1.upcallPending(1), 1);
      const exc = dom0.bindVirq(VIRQ.DOM_EXC, 0);
      assert.equal(dom0.bindVcpu(exc, 1), 0);
      assert.equal(dom0.status(exc).vcpu, 1);
      assert.equal(d1.bindVcpu(d1.bindIpi(0), 1), -E.EINVAL);
      assert.equal(d1.bindVcpu(d1.bindVirq(VIRQ.TIMER, 0), 1), -E.EINVAL);
      assert.equal(d1.bindVcpu(u, 2), -E.ENOENT);
      assert.equal(d1.bindVcpu(5000, 2), -E.ENOENT, "the vCPU is checked first");
      assert.equal(d1.bindVcpu(5000, 0), -E.EINVAL);
      assert.equal(d1.bindVcpu(40, 0), -E.EINVAL, "free");
    });

    test("an event sent while masked is delivered by EVTCHNOP_unmask", () => {
      const { dom0, d1 } = world(width);
      for (let i = 0; i < 40; i++) d1.allocUnbound(DOMID_SELF);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      d1.setMask(rp, true);
      assert.equal(d1.masked(rp), true);
      assert.equal(d1.masked(rp - 1) || d1.masked(rp + 1), false);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.pending(rp), true);
      assert.deepEqual([d1.sel(0), d1.upcallPending(0)], [0n, 0]);
      assert.equal(d1.unmask(rp), 0);
      assert.equal(d1.masked(rp), false);
      assert.deepEqual([d1.sel(0), d1.upcallPending(0)], [d1.selBit(rp), 1]);
      // Already pending: a second send changes nothing.
      d1.ack(0);
      assert.equal(dom0.send(lp), 0);
      assert.deepEqual([d1.sel(0), d1.upcallPending(0)], [0n, 0]);
      // Unmasking an unmasked port does not re-raise it.
      assert.equal(d1.unmask(rp), 0);
      assert.deepEqual([d1.sel(0), d1.upcallPending(0)], [0n, 0]);
      assert.equal(d1.unmask(5000), -E.EINVAL);
    });

    test("reset: closes every port, peers go unbound; -EPERM, -ESRCH, -EINVAL unless paused, reset_cont -EBUSY", () => {
      const { hv, dom0, d1 } = world(width);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      const t = d1.bindVirq(VIRQ.TIMER, 0);
      d1.bindIpi(1);
      assert.equal(d1.reset(dom0.domid), -E.EPERM);
      assert.equal(d1.reset(99), -E.ESRCH);
      assert.equal(dom0.reset(d1.domid), -E.EINVAL, "d1 is running");
      assert.equal(d1.reset(DOMID_SELF, EVTCHNOP.reset_cont), -E.EBUSY);
      assert.equal(d1.reset(DOMID_SELF), 0);
      for (let p = 1; p < 64; p++) assert.equal(d1.status(p).status, EVTCHNSTAT.closed, `port ${p}`);
      assert.equal(dom0.status(lp).status, EVTCHNSTAT.unbound);
      assert.equal(dom0.status(lp).dom, d1.domid);
      assert.equal(t, 2);
      const t2 = d1.bindVirq(VIRQ.TIMER, 0);
      assert.equal(t2, 1, "the VIRQ binding went too");
      hv.pauseDomain(d1.b.d);
      assert.equal(dom0.reset(d1.domid), 0);
      hv.unpauseDomain(d1.b.d);
      assert.equal(d1.status(t2).status, EVTCHNSTAT.closed);
    });

    test("-ENOSPC when ports run out (max port 7); the bucket above stays valid", () => {
      const { dom0, d1, d2 } = world(width, { maxPort: 7 });
      for (let i = 1; i <= 7; i++) assert.equal(d1.allocUnbound(dom0.domid), i);
      assert.equal(d1.allocUnbound(dom0.domid), -E.ENOSPC);
      assert.equal(d1.bindIpi(0), -E.ENOSPC);
      assert.equal(d1.bindVirq(VIRQ.TIMER, 0), -E.ENOSPC);
      const other = dom0.allocUnbound(d1.domid);
      assert.equal(d1.bindInterdomain(dom0.domid, other), -E.ENOSPC);
      assert.equal(dom0.allocUnbound(DOMID_SELF, d1.domid), -E.ENOSPC);
      assert.equal(d2.allocUnbound(DOMID_SELF, d1.domid), -E.ENOSPC, "the port comes before the permission check");
      assert.equal(d2.allocUnbound(DOMID_SELF, dom0.domid), -E.EPERM);
      assert.equal(d1.status(8).status, EVTCHNSTAT.closed);
      assert.equal(d1.status(63).rc, 0);
      assert.equal(d1.status(64).rc, -E.EINVAL);
      assert.equal(d1.close(5), 0);
      assert.equal(d1.bindIpi(1), 5);
    });

    test(`the 2-level limit is ${nr2L} ports; the last one sets the top selector bit`, () => {
      const { d1 } = world(width, { maxPort: 4095 });
      let n = 0;
      while (d1.allocUnbound(DOMID_SELF) > 0) n++;
      assert.equal(n, nr2L - 1);
      assert.equal(d1.allocUnbound(DOMID_SELF), -E.ENOSPC);
      assert.equal(d1.status(nr2L).rc, -E.EINVAL);
      const last = nr2L - 1;
      assert.equal(d1.close(last), 0);
      assert.equal(d1.bindIpi(0), last);
      assert.equal(d1.send(last), 0);
      assert.equal(d1.pending(last), true);
      assert.equal(d1.sel(0), 1n << BigInt(width - 1));
      assert.equal(d1.upcallPending(0), 1);
    });

    test("-EFAULT for unreadable structs, and for an unwritable result (the port stays allocated)", () => {
      const { d1 } = world(width);
      const v = d1.b.v0;
      for (const cmd of Object.values(EVTCHNOP)) assert.equal(v.hypercall(HYPERVISOR.event_channel_op, cmd, BAD_VA), -E.EFAULT, `cmd ${cmd}`);
      assert.equal(v.hypercall(HYPERVISOR.event_channel_op_compat, BAD_VA), -E.EFAULT);
      // The struct is readable through RO_VA but the port cannot be written back.
      v.write32(d1.b.arg, DOMID_SELF | (DOMID_SELF << 16));
      assert.equal(v.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.alloc_unbound, RO_VA), -E.EFAULT);
      assert.equal(d1.status(1).status, EVTCHNSTAT.unbound);
      // A read-only struct is fine for ops that write nothing back.
      v.write32(d1.b.arg, 1);
      assert.equal(v.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.close, RO_VA), 0);
    });

    test("-ENOSYS for unknown commands; set_priority -ENOSYS and expand_array -EOPNOTSUPP under 2-level", () => {
      const { d1 } = world(width);
      assert.equal(d1.call(15, [0]), -E.ENOSYS);
      assert.equal(d1.call(0x7fffffff, [0]), -E.ENOSYS);
      assert.equal(d1.call(99, [0], undefined, true), -E.ENOSYS, "compat");
      const p = d1.bindIpi(0);
      assert.equal(d1.setPriority(p, 3), -E.ENOSYS);
      assert.equal(d1.setPriority(5000, 3), -E.EINVAL, "the port is checked first");
      assert.equal(d1.expandArray(d1.gfn(ARRAY_PFN)), -E.EOPNOTSUPP);
    });

    test("bind_pirq is refused with -EPERM (no physical IRQs for PV guests)", () => {
      const { dom0, d1 } = world(width);
      assert.equal(d1.call(EVTCHNOP.bind_pirq, [0, 0]), -E.EPERM);
      assert.equal(dom0.call(EVTCHNOP.bind_pirq, [5, 1]), -E.EPERM);
    });

    test("compat hypercall 16 runs the same ops on struct evtchn_op", () => {
      const { dom0, d1 } = world(width);
      const rp = d1.allocUnbound(dom0.domid, DOMID_SELF, undefined, true);
      assert.equal(rp, 1);
      assert.equal(d1.status(rp, DOMID_SELF, true).status, EVTCHNSTAT.unbound);
      const lp = dom0.bindInterdomain(d1.domid, rp, undefined, true);
      assert.equal(lp, 1);
      assert.equal(dom0.call(EVTCHNOP.send, [lp], undefined, true), 0);
      assert.equal(d1.pending(rp), true);
      const st = d1.status(rp, DOMID_SELF, true);
      assert.deepEqual([st.rc, st.status, st.dom, st.port], [0, EVTCHNSTAT.interdomain, dom0.domid, lp]);
      assert.equal(d1.call(EVTCHNOP.close, [rp], undefined, true), 0);
      assert.equal(dom0.status(lp).status, EVTCHNSTAT.unbound);
      assert.equal(d1.call(EVTCHNOP.close, [rp], undefined, true), -E.EINVAL);
    });
  });

  describe(`FIFO ABI, ${width}-bit guest`, () => {
    test("init_control switches the domain to FIFO and reports LINK_BITS", () => {
      const { d1 } = world(width);
      const p = d1.bindIpi(0);
      assert.equal(d1.setPriority(p, 3), -E.ENOSYS);
      assert.equal(d1.expandArray(d1.gfn(ARRAY_PFN)), -E.EOPNOTSUPP);
      assert.equal(d1.initControl(d1.gfn(CB_PFN), 0, 0), 0);
      assert.equal(d1.b.v0.read8(d1.b.arg + EVTCHN_OP.init_control.link_bits), EVTCHN_FIFO.LINK_BITS);
      assert.equal(d1.b.d.portOps.name, "FIFO");
      assert.equal(d1.setPriority(p, 3), 0);
      assert.equal(d1.expandArray(d1.gfn(ARRAY_PFN)), 0);
      assert.equal(d1.status(p).status, EVTCHNSTAT.ipi);
    });

    test("init_control and expand_array errors", () => {
      const { dom0, d1 } = world(width);
      const cb = d1.gfn(CB_PFN);
      assert.equal(d1.initControl(cb, 0, 2), -E.ENOENT);
      assert.equal(d1.initControl(cb, 4, 0), -E.EINVAL, "not 8-aligned");
      assert.equal(d1.initControl(cb, XEN_PAGE_SIZE - EVTCHN_FIFO_CONTROL_BLOCK.size + 8, 0), -E.EINVAL, "crosses the page");
      assert.equal(d1.initControl(dom0.gfn(CB_PFN), 0, 0), -E.EINVAL, "another domain's frame");
      assert.equal(d1.b.d.portOps.name, "2-level", "failed init_control leaves 2-level");
      assert.equal(d1.initControl(cb, XEN_PAGE_SIZE - EVTCHN_FIFO_CONTROL_BLOCK.size, 1), 0);
      assert.equal(d1.initControl(cb, 0, 0), 0);
      assert.equal(d1.initControl(cb, 0, 0), -E.EINVAL, "twice on vCPU 0");
      assert.equal(d1.expandArray(dom0.gfn(ARRAY_PFN)), -E.EINVAL);
      assert.equal(d1.expandArray(2 ** 40), -E.EINVAL);
    });

    test("send: PENDING|LINKED, queue head in the control block, READY for the priority, LINK to the next", () => {
      const { d1 } = world(width);
      d1.setupFifo();
      const p = d1.bindIpi(0);
      const q = d1.bindIpi(0);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.word(p), PENDING + LINKED);
      assert.equal(d1.head(0, EVTCHN_FIFO.PRIORITY_DEFAULT), p);
      assert.equal(d1.ready(0), 1 << EVTCHN_FIFO.PRIORITY_DEFAULT);
      assert.equal(d1.upcallPending(0), 1);
      assert.equal(d1.send(q), 0);
      assert.equal(d1.word(p), PENDING + LINKED + q, "LINK field points at the next event");
      assert.equal(d1.word(q), PENDING + LINKED);
      assert.equal(d1.head(0, EVTCHN_FIFO.PRIORITY_DEFAULT), p);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.word(p), PENDING + LINKED + q, "already linked");
      // An IPI on vCPU 1 goes to vCPU 1's queue.
      const r = d1.bindIpi(1);
      assert.equal(d1.send(r), 0);
      assert.equal(d1.head(1, EVTCHN_FIFO.PRIORITY_DEFAULT), r);
      assert.equal(d1.ready(1), 1 << EVTCHN_FIFO.PRIORITY_DEFAULT);
      assert.equal(d1.upcallPending(1), 1);
    });

    test("set_priority puts later events on another queue; -EINVAL above 15 or for a bad port", () => {
      const { d1 } = world(width);
      d1.setupFifo();
      const p = d1.bindIpi(0);
      assert.equal(d1.setPriority(p, 2), 0);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.head(0, 2), p);
      assert.equal(d1.head(0, EVTCHN_FIFO.PRIORITY_DEFAULT), 0);
      assert.equal(d1.ready(0), 1 << 2);
      assert.equal(d1.setPriority(p, EVTCHN_FIFO.PRIORITY_MIN + 1), -E.EINVAL);
      assert.equal(d1.setPriority(5000, 1), -E.EINVAL);
      // The guest consumes the event; the next one goes on the new queue.
      d1.setWord(p, 0);
      d1.ackFifo(0);
      assert.equal(d1.setPriority(p, 12), 0);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.head(0, 12), p);
      assert.equal(d1.ready(0), 1 << 12);
      // A newly bound port starts at the default priority.
      assert.equal(d1.close(p), 0);
      d1.setWord(p, 0);
      assert.equal(d1.bindIpi(0), p);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.head(0, EVTCHN_FIFO.PRIORITY_DEFAULT), p);
    });

    test("an event sent while MASKED is linked by EVTCHNOP_unmask", () => {
      const { dom0, d1 } = world(width);
      d1.setupFifo();
      const rp = d1.allocUnbound(dom0.domid);
      d1.setWord(rp, MASKED);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.word(rp), PENDING + MASKED);
      assert.deepEqual([d1.head(0, 7), d1.ready(0), d1.upcallPending(0)], [0, 0, 0]);
      assert.equal(d1.unmask(rp), 0);
      assert.equal(d1.word(rp), PENDING + LINKED);
      assert.deepEqual([d1.head(0, 7), d1.ready(0), d1.upcallPending(0)], [rp, 1 << 7, 1]);
      assert.equal(d1.unmask(5000), -E.EINVAL);
    });

    test("bind_interdomain marks the new local event word pending", () => {
      const { dom0, d1 } = world(width);
      d1.setupFifo();
      const rp = dom0.allocUnbound(d1.domid);
      const lp = d1.bindInterdomain(dom0.domid, rp);
      assert.equal(d1.word(lp), PENDING + LINKED);
      assert.equal(d1.head(0, 7), lp);
    });

    test("an event raised before its array page exists is delivered when expand_array adds the page", () => {
      const { d1 } = world(width);
      assert.equal(d1.initControl(d1.gfn(CB_PFN), 0, 0), 0);
      const p = d1.bindIpi(0);
      assert.equal(d1.send(p), 0);
      assert.deepEqual([d1.ready(0), d1.upcallPending(0)], [0, 0]);
      assert.equal(d1.expandArray(d1.gfn(ARRAY_PFN)), 0);
      assert.equal(d1.word(p), PENDING + LINKED);
      assert.deepEqual([d1.head(0, 7), d1.ready(0), d1.upcallPending(0)], [p, 1 << 7, 1]);
    });

    test("an event for a vCPU without a control block is dropped", () => {
      const { d1 } = world(width);
      d1.setupFifo([0]);
      const p = d1.bindIpi(1);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.word(p), 0);
      assert.equal(d1.upcallPending(1), 0);
    });

    test("a closed port still LINKED on a queue is not reused until the guest unlinks it", () => {
      const { d1 } = world(width);
      d1.setupFifo();
      const p = d1.bindIpi(0);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.close(p), 0);
      assert.equal(d1.word(p), LINKED, "close clears PENDING only");
      assert.equal(d1.bindIpi(0), p + 1);
      d1.setWord(p, 0);
      assert.equal(d1.bindIpi(0), p);
    });

    test("reset returns the domain to 2-level", () => {
      const { d1 } = world(width);
      d1.setupFifo();
      const p = d1.bindIpi(0);
      assert.equal(d1.reset(DOMID_SELF), 0);
      assert.equal(d1.status(p).status, EVTCHNSTAT.closed);
      assert.equal(d1.setPriority(p, 3), -E.ENOSYS);
      assert.equal(d1.expandArray(d1.gfn(ARRAY_PFN)), -E.EOPNOTSUPP);
      assert.equal(d1.b.d.portOps.name, "2-level");
    });
  });

  describe(`sched_op, set_timer_op and vcpu_op, ${width}-bit guest`, () => {
    test("SCHEDOP_poll: -EINVAL for >128 ports or an unbound port, -EFAULT, 0 at once if pending", () => {
      const { d1 } = world(width);
      const p = d1.bindIpi(0);
      d1.setUpcallMask(0, true);
      assert.equal(d1.poll([p], 0, undefined, 129), -E.EINVAL);
      assert.equal(d1.poll([p], 0, undefined, 1, BAD_VA), -E.EFAULT);
      assert.equal(d1.poll([40]), -E.EINVAL, "free port");
      assert.equal(d1.poll([0]), -E.EINVAL, "reserved port");
      assert.equal(d1.poll([5000]), -E.EINVAL, "invalid port");
      assert.equal(d1.b.v0.blocked, false);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.poll([p]), 0);
      assert.equal(d1.b.v0.blocked, false);
    });

    test("SCHEDOP_poll blocks until a polled port is sent to, or the timeout", () => {
      const { hv, dom0, d1 } = world(width);
      const rp = d1.allocUnbound(dom0.domid);
      const lp = dom0.bindInterdomain(d1.domid, rp);
      const other = d1.bindIpi(1);
      d1.setUpcallMask(0, true);
      assert.equal(d1.poll([other, rp]), 0);
      assert.equal(d1.b.v0.blocked, true);
      assert.equal(d1.send(other, d1.vcpu(1)), 0, "an IPI to vCPU 1");
      assert.equal(d1.b.v0.blocked, false, "a polled port wakes it");
      assert.equal(d1.poll([rp]), 0);
      assert.equal(d1.b.v0.blocked, true);
      assert.equal(dom0.send(lp), 0);
      assert.equal(d1.b.v0.blocked, false);
      assert.equal(d1.b.v0.pollPorts, null);
      // With a timeout and nothing sent, the timer wakes it.
      d1.setUpcallMask(0, true);
      quiet(dom0, d1);
      d1.clearPending(rp);
      const deadline = hv.now() + 1_000_000;
      assert.equal(d1.poll([rp], deadline), 0);
      assert.equal(d1.b.v0.blocked, true);
      hv.run(deadline + 10_000);
      assert.equal(d1.b.v0.blocked, false);
      assert.ok(hv.now() >= deadline);
    });

    test("SCHEDOP_poll with upcalls unmasked (Xen 4.17 allows it): returns 0 at once if an upcall is due", () => {
      const { d1 } = world(width);
      const p = d1.bindIpi(0);
      const q = d1.bindIpi(0);
      d1.setUpcallMask(0, false);
      assert.equal(d1.send(q), 0);
      assert.equal(d1.upcallPending(0), 1);
      assert.equal(d1.poll([p]), 0);
      assert.equal(d1.b.v0.blocked, false);
      d1.ack(0);
      assert.equal(d1.poll([p]), 0);
      assert.equal(d1.b.v0.blocked, true);
      assert.equal(d1.send(p, d1.vcpu(1)), 0);
      assert.equal(d1.b.v0.blocked, false);
    });

    test("SCHEDOP_block enables events, sleeps only with no upcall pending, and an event wakes it", () => {
      const { d1 } = world(width);
      const p = d1.bindIpi(0);
      d1.setUpcallMask(0, true);
      assert.equal(d1.send(p), 0);
      assert.equal(d1.block(), 0);
      assert.equal(d1.b.v0.blocked, false);
      assert.equal(d1.b.v0.upcallMask, false);
      d1.ack(0);
      d1.clearPending(p);
      assert.equal(d1.block(), 0);
      assert.equal(d1.b.v0.blocked, true);
      assert.equal(d1.send(p, d1.vcpu(1)), 0);
      assert.equal(d1.b.v0.blocked, false);
    });

    test("set_timer_op raises VIRQ_TIMER at the deadline", () => {
      const { hv, dom0, d1, d2 } = world(width, ONE_PCPU);
      const t = d1.bindVirq(VIRQ.TIMER, 0);
      quiet(dom0, d1, d2);
      // Past 2^32 ns, so a 32-bit guest's high word counts.
      const deadline = 2 ** 32 + 5_000;
      assert.equal(d1.setTimerOp(deadline), 0);
      assert.equal(hv.nextDeadline(), deadline);
      assert.equal(d1.pending(t), false);
      hv.run(deadline + 10_000);
      assert.ok(hv.now() >= deadline);
      assert.equal(d1.pending(t), true);
      assert.equal(d1.upcallPending(0), 1);
      assert.ok(d1.b.image.upcalls > 0, "the woken vCPU took the upcall");
      // 0 cancels.
      d1.blockAll();
      d1.clearPending(t);
      assert.equal(d1.setTimerOp(hv.now() + 1_000_000), 0);
      assert.equal(d1.setTimerOp(0), 0);
      hv.run(hv.now() + 2_000_000);
      assert.equal(d1.pending(t), false);
    });

    test("VCPUOP_set_singleshot_timer: own vCPU only, -ETIME for a past VCPU_SSHOTTMR_future, fires VIRQ_TIMER", () => {
      const { hv, dom0, d1, d2 } = world(width, ONE_PCPU);
      const t = d1.bindVirq(VIRQ.TIMER, 0);
      const t1 = d1.bindVirq(VIRQ.TIMER, 1);
      hv.run(20_000);
      assert.ok(hv.now() > 1_000);
      const L = d1.L.vcpu_set_singleshot_timer;
      const v = d1.b.v0;
      const set = (timeout: number, flags: number) => {
        v.write64(d1.b.arg + L.timeout_abs_ns, timeout);
        v.write32(d1.b.arg + L.flags, flags);
      };
      set(1, VCPU_SSHOTTMR_future);
      assert.equal(d1.vcpuOp(VCPUOP.set_singleshot_timer, 0), -ETIME);
      assert.equal(d1.vcpuOp(VCPUOP.set_singleshot_timer, 1), -E.EINVAL, "another vCPU");
      assert.equal(d1.vcpuOp(VCPUOP.set_singleshot_timer, 0, BAD_VA), -E.EFAULT);
      quiet(dom0, d1, d2);
      const deadline = hv.now() + 500_000;
      set(deadline, VCPU_SSHOTTMR_future);
      assert.equal(d1.vcpuOp(VCPUOP.set_singleshot_timer, 0), 0);
      hv.run(deadline + 10_000);
      assert.equal(d1.pending(t), true);
      assert.equal(d1.pending(t1), false);
    });

    test("VCPUOP_set_periodic_timer: -EINVAL below 1 ms; fires VIRQ_TIMER on its vCPU", () => {
      const { hv, dom0, d1, d2 } = world(width, ONE_PCPU);
      const t0 = d1.bindVirq(VIRQ.TIMER, 0);
      const t1 = d1.bindVirq(VIRQ.TIMER, 1);
      d1.b.v0.write64(d1.b.arg, 999_999);
      assert.equal(d1.vcpuOp(VCPUOP.set_periodic_timer, 1), -E.EINVAL);
      quiet(dom0, d1, d2);
      d1.b.v0.write64(d1.b.arg, 1_000_000);
      assert.equal(d1.vcpuOp(VCPUOP.set_periodic_timer, 1), 0);
      hv.run(hv.now() + 1_100_000);
      assert.equal(d1.pending(t1), true);
      assert.equal(d1.pending(t0), false);
      assert.equal(d1.vcpuOp(VCPUOP.stop_periodic_timer, 1), 0);
    });

    test("VCPUOP errors: -ENOENT for a bad vCPU, up before initialise -EINVAL, initialise twice -EEXIST", () => {
      const hv = newHypervisor();
      const g = new Guest(hv, bareDomain(hv, { width, vcpus: 3 }));
      const v2 = g.vcpu(2);
      // Make vCPU 2 as the domain builder leaves a secondary vCPU: uninitialised and down.
      v2.initialised = false;
      v2.down = true;
      assert.equal(g.vcpuOp(VCPUOP.up, 3), -E.ENOENT);
      assert.equal(g.vcpuOp(VCPUOP.is_up, 0xffffffff), -E.ENOENT);
      assert.equal(g.vcpuOp(VCPUOP.up, 2), -E.EINVAL);
      assert.equal(g.vcpuOp(VCPUOP.is_up, 2), 0);
      const ctx = g.b.va(4);
      // A context without a base pointer (ctrlreg[3] = 0) is refused.
      assert.equal(g.vcpuOp(VCPUOP.initialise, 2, ctx), -E.EINVAL);
      const C = layoutFor(width).vcpu_guest_context;
      const root = g.b.v0.guestTable;
      const cr3 = width === 64 ? root * 4096 : ((root << 12) | (root >>> 20)) >>> 0;
      if (width === 64) g.b.v0.write64(ctx + C.ctrlreg + 24, cr3);
      else g.b.v0.write32(ctx + C.ctrlreg + 12, cr3);
      // An x86_64 context not in kernel mode needs a user base pointer (ctrlreg[1]): -EINVAL.
      assert.equal(g.vcpuOp(VCPUOP.initialise, 2, ctx), width === 64 ? -E.EINVAL : 0);
      g.b.v0.write32(ctx + C.flags, 1 << 2); // VGCF_in_kernel
      assert.equal(g.vcpuOp(VCPUOP.initialise, 2, ctx), width === 64 ? 0 : -E.EEXIST);
      assert.equal(v2.guestTable, root);
      assert.equal(g.vcpuOp(VCPUOP.initialise, 2, ctx), -E.EEXIST);
      assert.equal(g.vcpuOp(VCPUOP.initialise, 0, ctx), -E.EEXIST);
      assert.equal(g.vcpuOp(VCPUOP.up, 2), 0);
      assert.equal(g.vcpuOp(VCPUOP.is_up, 2), 1);
    });

    test("unknown hypercalls and sub-ops return -ENOSYS", () => {
      const { d1 } = world(width);
      const v = d1.b.v0;
      for (const op of [0, 7, 40, 63, 999, -1]) assert.equal(v.hypercall(op, 0, 0), -E.ENOSYS, `hypercall ${op}`);
      assert.equal(v.hypercall(HYPERVISOR.sched_op, 99, 0), -E.ENOSYS);
      assert.equal(d1.vcpuOp(99, 0), -E.ENOSYS);
      assert.equal(d1.call(0xffff, []), -E.ENOSYS);
    });
  });
}
