// The guest's event-channel ops tables (src/guest/events_fifo.ts, events_2l.ts) on a bare
// domain of the real hypervisor: resume after Xen has forgotten the guest's event channels (here
// through EVTCHNOP_reset, as a restored domain starts with none), percpu_init and remove. The
// hypercalls the backends make are observed on the way to Xen.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { GuestCpu } from "../src/abi/cpu.ts";
import { EVTCHN_OP, type GuestWidth, layoutFor } from "../src/abi/layout.ts";
import { DOMID_SELF, EVTCHNOP, HYPERVISOR } from "../src/abi/xen.ts";
import { Events2L } from "../src/guest/events_2l.ts";
import { EventsFifo, type GuestPage, type PageSource } from "../src/guest/events_fifo.ts";
import { Hypercalls } from "../src/guest/hypercalls.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain, evtchnOp, newHypervisor } from "./harness.ts";

/** Pages the backends get, from pfn 8 up (pfn 1 is the op-struct scratch page). */
const FIRST_PFN = 8;

/** `v` as a GuestCpu that logs its event-channel hypercalls in `log`. */
function observed(v: Vcpu, log: string[]): GuestCpu {
  return {
    get vcpuId() {
      return v.vcpuId;
    },
    width: v.width,
    hypercall(op, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0) {
      if (op === HYPERVISOR.event_channel_op) {
        if (a1 === EVTCHNOP.init_control) {
          const L = EVTCHN_OP.init_control;
          log.push(`init_control vcpu=${v.read32(a2 + L.vcpu)} gfn=${v.read64(a2 + L.control_gfn)} offset=${v.read32(a2 + L.offset)}`);
        } else if (a1 === EVTCHNOP.expand_array) log.push(`expand_array gfn=${v.read64(a2 + EVTCHN_OP.expand_array.array_gfn)}`);
        else log.push(`event_channel_op ${a1}`);
      }
      return v.hypercall(op, a1, a2, a3, a4, a5);
    },
    rdtsc: () => v.rdtsc(),
    getRegister: (name) => v.getRegister(name),
    setRegister: (name, value) => v.setRegister(name, value),
    read8: (va) => v.read8(va),
    read32: (va) => v.read32(va),
    read64: (va) => v.read64(va),
    write8: (va, x) => v.write8(va, x),
    write32: (va, x) => v.write32(va, x),
    write64: (va, x) => v.write64(va, x),
    pageWords: (va) => v.pageWords(va),
    mapPageWords: (va) => v.mapPageWords(va),
    spend: (ns) => v.spend(ns),
  };
}

/** The guest's page allocator over the bare domain's direct map. */
class Pages implements PageSource {
  readonly allocated: number[] = [];
  readonly freed: number[] = [];
  private next = FIRST_PFN;
  constructor(private readonly b: BareDomain) {}
  allocZeroedPage(cpu: GuestCpu): GuestPage | undefined {
    const pfn = this.next++;
    const words = cpu.pageWords(this.b.va(pfn));
    words.fill(0);
    const gfn = this.b.d.p2m[pfn]!;
    this.allocated.push(gfn);
    return { words, gfn };
  }
  freePage(gfn: number): void {
    this.freed.push(gfn);
  }
}

/** EVTCHNOP_reset on the domain itself: Xen closes every port and forgets the FIFO pages. */
function reset(b: BareDomain): void {
  const rc = evtchnOp(b.v0, EVTCHNOP.reset, b.arg, (c) => {
    c.write32(b.arg + EVTCHN_OP.reset.dom, DOMID_SELF);
  });
  assert.equal(rc, 0);
  assert.equal(b.d.portOps.name, "2-level");
}

/** Xen's FIFO state for the domain (read through a call, so that assertions do not narrow it). */
function xenFifo(b: BareDomain) {
  return b.d.fifo;
}

function bindIpi(hc: Hypercalls, cpu: GuestCpu, vcpu: number): number {
  const port = hc.bindIpi(cpu, vcpu);
  assert.ok(port > 0, `bind_ipi: ${port}`);
  return port;
}

function setup(width: GuestWidth) {
  const hv = newHypervisor();
  const b = bareDomain(hv, { width, vcpus: 2, pages: 64, maxPort: 4095 });
  const log: string[] = [];
  const cpus = b.d.vcpus.map((v) => observed(v, log));
  const hc = new Hypercalls({ scratchVa: () => b.arg });
  const pages = new Pages(b);
  return { hv, b, log, cpu0: cpus[0]!, cpu1: cpus[1]!, hc, pages };
}

for (const width of [64, 32] as const) {
  describe(`guest FIFO ops, ${width}-bit`, () => {
    test("initCpu registers a control block once per CPU", () => {
      const { b, log, cpu0, hc, pages } = setup(width);
      const fifo = new EventsFifo(2, hc, pages);
      assert.equal(fifo.initCpu(cpu0, 0), 0);
      assert.equal(b.d.portOps.name, "FIFO", "the first control block switches the domain to FIFO");
      assert.equal(fifo.initCpu(cpu0, 1), 0);
      assert.equal(fifo.initCpu(cpu0, 1), 0, "a CPU that has a block keeps it");
      assert.deepEqual(log, [`init_control vcpu=0 gfn=${pages.allocated[0]} offset=0`, `init_control vcpu=1 gfn=${pages.allocated[1]} offset=0`]);
      assert.deepEqual(
        xenFifo(b)?.controlBlocks.map((cb) => cb?.mfn),
        pages.allocated.slice(0, 2),
      );
    });

    test("resume registers every online CPU's control block again and re-expands the array with the same pages", () => {
      const { b, log, cpu0, cpu1, hc, pages } = setup(width);
      const fifo = new EventsFifo(2, hc, pages);
      assert.equal(fifo.initCpu(cpu0, 0), 0);
      assert.equal(fifo.initCpu(cpu0, 1), 0);
      // Two array pages: port 1500 is in the second.
      assert.equal(fifo.setup(cpu0, 1500), 0);
      assert.equal(fifo.nrChannels(), 2048);
      const cbs = pages.allocated.slice(0, 2);
      const arrays = [...xenFifo(b)!.arrayMfns];
      assert.deepEqual(arrays, pages.allocated.slice(2, 4));
      const nrAllocated = pages.allocated.length;

      reset(b);
      assert.equal(xenFifo(b), undefined, "Xen has forgotten the control blocks and the array");
      log.length = 0;
      assert.equal(fifo.resume(cpu0, () => true), 0);
      assert.deepEqual(log, [`init_control vcpu=0 gfn=${cbs[0]} offset=0`, `init_control vcpu=1 gfn=${cbs[1]} offset=0`]);
      assert.equal(b.d.portOps.name, "FIFO");
      assert.deepEqual(
        xenFifo(b)?.controlBlocks.map((cb) => cb?.mfn),
        cbs,
      );
      assert.equal(fifo.nrChannels(), 0, "the event array starts empty again");
      assert.deepEqual(xenFifo(b)?.arrayMfns, []);

      // Binding again expands the array with the pages it had, in order.
      log.length = 0;
      assert.equal(fifo.setup(cpu0, 1500), 0);
      assert.deepEqual(
        log,
        arrays.map((g) => `expand_array gfn=${g}`),
      );
      assert.deepEqual(xenFifo(b)?.arrayMfns, arrays);
      assert.equal(pages.allocated.length, nrAllocated, "no new pages");
      assert.equal(fifo.nrChannels(), 2048);

      // And events flow: an IPI to vCPU 1 is queued on its re-registered control block.
      const port = bindIpi(hc, cpu0, 1);
      assert.equal(fifo.setup(cpu0, port), 0);
      assert.equal(fifo.isMasked(port), true, "the reused page was masked before Xen saw it");
      fifo.unmask(cpu0, port);
      assert.equal(hc.evtchnSend(cpu0, port), 0);
      assert.equal(fifo.isPending(port), true);
      const handled: number[] = [];
      fifo.handleEvents(cpu1, { timeout: 0, count: 0, deferEoi: false }, (p) => handled.push(p));
      assert.deepEqual(handled, [port]);
    });

    test("resume frees an offline CPU's control block; percpu_init gives it a new one", () => {
      const { b, log, cpu0, hc, pages } = setup(width);
      const fifo = new EventsFifo(2, hc, pages);
      assert.equal(fifo.initCpu(cpu0, 0), 0);
      assert.equal(fifo.initCpu(cpu0, 1), 0);
      const [cb0, cb1] = pages.allocated;
      reset(b);
      log.length = 0;
      assert.equal(
        fifo.resume(cpu0, (c) => c === 0),
        0,
      );
      assert.deepEqual(log, [`init_control vcpu=0 gfn=${cb0} offset=0`]);
      assert.deepEqual(pages.freed, [cb1]);
      assert.equal(xenFifo(b)?.controlBlocks[1], undefined);
      log.length = 0;
      assert.equal(fifo.initCpu(cpu0, 1), 0);
      const fresh = pages.allocated.at(-1)!;
      assert.notEqual(fresh, cb1);
      assert.deepEqual(log, [`init_control vcpu=1 gfn=${fresh} offset=0`]);
    });

    test("resume without Xen forgetting the blocks reports Xen's refusal", () => {
      const { cpu0, hc, pages } = setup(width);
      const fifo = new EventsFifo(2, hc, pages);
      assert.equal(fifo.initCpu(cpu0, 0), 0);
      assert.ok(fifo.resume(cpu0, () => true) < 0);
    });
  });

  describe(`guest 2-level ops, ${width}-bit`, () => {
    /** Marks `port` pending for vCPU `vcpu` as Xen does, and scans on `cpu`. */
    function raiseAndScan(ev: Events2L, b: BareDomain, cpu: GuestCpu, port: number): number[] {
      const L = layoutFor(width);
      const w = b.d.sharedInfoWords;
      w[(L.shared_info.evtchn_mask >> 2) + (port >>> 5)]! &= ~(1 << (port & 31));
      w[(L.shared_info.evtchn_pending >> 2) + (port >>> 5)]! |= 1 << (port & 31);
      const sel = port >>> (width === 64 ? 6 : 5);
      w[((cpu.vcpuId * L.vcpu_info.size + L.vcpu_info.evtchn_pending_sel) >> 2) + (sel >>> 5)]! |= 1 << (sel & 31);
      const handled: number[] = [];
      ev.handleEvents(cpu, { timeout: 0, count: 0, deferEoi: false }, (p) => {
        handled.push(p);
        ev.clearPending(p);
      });
      return handled;
    }

    test("resume and remove unroute ports from CPUs, with no hypercalls", () => {
      const { b, log, cpu0, cpu1, hc } = setup(width);
      const ev = new Events2L(b.d.sharedInfoWords, layoutFor(width), 2, hc, () => new Uint32Array(2));
      assert.equal(ev.initCpu(), 0);
      assert.equal(ev.nrChannels(), ev.maxChannels());
      const port = 70;
      ev.bindToCpu(port, 1, 0);
      assert.deepEqual(raiseAndScan(ev, b, cpu1, port), [port]);
      assert.deepEqual(raiseAndScan(ev, b, cpu0, port), [], "bound to CPU 1 only");
      ev.clearPending(port);
      assert.equal(ev.resume(cpu0, () => true), 0);
      assert.deepEqual(raiseAndScan(ev, b, cpu1, port), [], "not routed after resume until bound again");
      ev.clearPending(port);
      ev.bindToCpu(port, 1, 0);
      assert.deepEqual(raiseAndScan(ev, b, cpu1, port), [port]);
      ev.remove(port, 1);
      assert.deepEqual(raiseAndScan(ev, b, cpu1, port), [], "removed from CPU 1");
      assert.deepEqual(log, []);
    });
  });
}
