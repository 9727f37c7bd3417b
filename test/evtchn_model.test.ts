// Model-based property test: random op sequences from three domains (dom0 and d2 privileged,
// d1 not) run against a small reference model of Xen 4.17's event channels
// (xen/common/event_channel.c, event_2l.c, event_fifo.c). After every op the return code, each
// port's EVTCHNOP_status, and the guest-visible pending/mask state (2-level bitmaps, selectors and
// upcall flags, or FIFO event words, queue heads and READY bits) must match the model.
//
// Replay a failure with the seed and path fast-check prints:
//   FC_SEED=<seed> FC_PATH=<path> node --import tsx --test test/evtchn_model.test.ts
// (FC_RUNS=<n> changes the number of runs.)

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { EVTCHN_FIFO_CONTROL_BLOCK, EVTCHN_OP, EVTCHN_OP_COMPAT, type GuestWidth } from "../src/abi/layout.ts";
import {
  DOMID_SELF,
  XEN_ERRNO as E,
  EVTCHN_FIFO,
  EVTCHNOP,
  EVTCHNSTAT,
  HYPERVISOR,
  NR_VIRQS,
  VIRQ,
  virqIsPerVcpu,
} from "../src/abi/xen.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import { sendGuestVirq } from "../src/hypervisor/evtchn.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { type BareDomain, bareDomain } from "./harness.ts";

const RUNS = Number(process.env["FC_RUNS"] ?? 300);
const SEED = process.env["FC_SEED"] === undefined ? undefined : Number(process.env["FC_SEED"]);
const PATH = process.env["FC_PATH"];

const NVCPUS = 2;
/** Ports valid from the start (one bucket); every domain's max port is below it. */
const VALID = 64;
const MAX_PORT = [11, 4, 15] as const;
const PRIVILEGED = [true, false, true] as const;
const NO_DOMAIN = 9;
const PRIO_DEFAULT = EVTCHN_FIFO.PRIORITY_DEFAULT;
const PENDING = 2 ** EVTCHN_FIFO.PENDING;
const MASKED = 2 ** EVTCHN_FIFO.MASKED;
const LINKED = 2 ** EVTCHN_FIFO.LINKED;
const LINK_MASK = EVTCHN_FIFO.LINK_MASK;
const CB_PFN = 2;
const ARRAY_PFN = 3;
const CB_STRIDE = 128;

type Abi = "2L" | "FIFO";

// ---------------------------------------------------------------------------------------------
// The reference model

type Port =
  | { k: "free" }
  | { k: "reserved" }
  | { k: "unbound"; remote: number }
  | { k: "interdomain"; rdom: number; rport: number }
  | { k: "virq"; virq: number }
  | { k: "ipi" };

const FREE: Port = { k: "free" };

class MDom {
  abi: Abi;
  readonly st: Port[] = Array.from({ length: VALID }, () => FREE);
  readonly notify = new Array<number>(VALID).fill(0);
  readonly prio = new Array<number>(VALID).fill(PRIO_DEFAULT);
  /** [vcpu][virq] -> port. */
  readonly virqPort = Array.from({ length: NVCPUS }, () => new Array<number>(NR_VIRQS).fill(0));
  readonly upcall = new Array<number>(NVCPUS).fill(0);
  // 2-level
  readonly pend2 = new Array<boolean>(VALID).fill(false);
  readonly mask2 = new Array<boolean>(VALID).fill(false);
  readonly sel = new Array<number>(NVCPUS).fill(0);
  // FIFO: event words, control blocks, and Xen's private tails and last queues
  readonly fp = new Array<boolean>(VALID).fill(false);
  readonly fm = new Array<boolean>(VALID).fill(false);
  readonly fl = new Array<boolean>(VALID).fill(false);
  readonly link = new Array<number>(VALID).fill(0);
  readonly ready = new Array<number>(NVCPUS).fill(0);
  readonly head = Array.from({ length: NVCPUS }, () => new Array<number>(16).fill(0));
  readonly tail = Array.from({ length: NVCPUS }, () => new Array<number>(16).fill(0));
  readonly lastV = new Array<number>(VALID).fill(0);
  readonly lastP = new Array<number>(VALID).fill(0);

  constructor(
    readonly domid: number,
    readonly priv: boolean,
    readonly maxPort: number,
    readonly width: GuestWidth,
    abi: Abi,
  ) {
    this.abi = abi;
    this.st[0] = { k: "reserved" };
  }

  /** get_free_port: first FREE port that is not busy (a FIFO word still LINKED). */
  freePort(): number {
    for (let p = 1; p <= this.maxPort; p++) {
      if (this.st[p]!.k === "free" && !(this.abi === "FIFO" && this.fl[p])) return p;
    }
    return -E.ENOSPC;
  }

  take(port: number, st: Port, vcpu: number): void {
    this.st[port] = st;
    this.notify[port] = vcpu;
    this.prio[port] = PRIO_DEFAULT;
  }

  setPending(vcpu: number, port: number): void {
    if (this.abi === "2L") {
      if (this.pend2[port]) return;
      this.pend2[port] = true;
      const b = 2 ** Math.floor(port / this.width);
      if (!this.mask2[port] && !(this.sel[vcpu]! & b)) {
        this.sel[vcpu]! |= b;
        this.upcall[vcpu] = 1;
      }
      return;
    }
    this.fp[port] = true;
    if (this.fm[port] || this.fl[port]) return;
    this.fl[port] = true;
    const [ov, op] = [this.lastV[port]!, this.lastP[port]!];
    if (this.tail[ov]![op] === port) this.tail[ov]![op] = 0;
    const q = this.prio[port]!;
    this.lastV[port] = vcpu;
    this.lastP[port] = q;
    const t = this.tail[vcpu]![q]!;
    const linked = t !== 0 && this.fl[t]!;
    if (linked) this.link[t] = port;
    else this.head[vcpu]![q] = port;
    this.tail[vcpu]![q] = port;
    if (!linked && !(this.ready[vcpu]! & (1 << q))) {
      this.ready[vcpu]! |= 1 << q;
      this.upcall[vcpu] = 1;
    }
  }

  clearPending(port: number): void {
    if (this.abi === "2L") this.pend2[port] = false;
    else this.fp[port] = false;
  }

  unmask(port: number): void {
    const n = this.notify[port]!;
    if (this.abi === "FIFO") {
      this.fm[port] = false;
      if (this.fp[port]) this.setPending(n, port);
      return;
    }
    if (!this.mask2[port]) return;
    this.mask2[port] = false;
    const b = 2 ** Math.floor(port / this.width);
    if (this.pend2[port] && !(this.sel[n]! & b)) {
      this.sel[n]! |= b;
      this.upcall[n] = 1;
    }
  }
}

class Model {
  readonly doms: MDom[];
  constructor(width: GuestWidth, abi: Abi) {
    this.doms = [0, 1, 2].map((i) => new MDom(i, PRIVILEGED[i]!, MAX_PORT[i]!, width, abi));
  }

  dom(c: MDom, id: number): MDom | undefined {
    return id === DOMID_SELF ? c : this.doms[id];
  }

  allocUnbound(c: MDom, dom: number, remote: number): number {
    const d = this.dom(c, dom);
    if (!d) return -E.ESRCH;
    const port = d.freePort();
    if (port < 0) return port;
    if (d !== c && !c.priv) return -E.EPERM;
    d.take(port, { k: "unbound", remote: remote === DOMID_SELF ? c.domid : remote }, 0);
    return port;
  }

  bindInterdomain(c: MDom, rdom: number, rport: number): number {
    const rd = this.dom(c, rdom);
    if (!rd) return -E.ESRCH;
    const lport = c.freePort();
    if (lport < 0) return lport;
    const r = rport < VALID ? rd.st[rport]! : FREE;
    if (r.k !== "unbound" || r.remote !== c.domid) return -E.EINVAL;
    c.take(lport, { k: "interdomain", rdom: rd.domid, rport }, 0);
    rd.st[rport] = { k: "interdomain", rdom: c.domid, rport: lport };
    c.setPending(0, lport);
    return lport;
  }

  bindVirq(c: MDom, virq: number, vcpu: number): number {
    if (virq >= NR_VIRQS) return -E.EINVAL;
    const global = !virqIsPerVcpu(virq);
    if (global && vcpu !== 0) return -E.EINVAL;
    if (vcpu >= NVCPUS) return -E.ENOENT;
    if (global && virq !== VIRQ.ARGO && c.domid !== 0) return -E.EBUSY;
    if (c.virqPort[vcpu]![virq] !== 0) return -E.EEXIST;
    const port = c.freePort();
    if (port < 0) return port;
    c.take(port, { k: "virq", virq }, vcpu);
    c.virqPort[vcpu]![virq] = port;
    return port;
  }

  bindIpi(c: MDom, vcpu: number): number {
    if (vcpu >= NVCPUS) return -E.ENOENT;
    const port = c.freePort();
    if (port < 0) return port;
    c.take(port, { k: "ipi" }, vcpu);
    return port;
  }

  close(c: MDom, port: number): number {
    if (port >= VALID) return -E.EINVAL;
    const s = c.st[port]!;
    switch (s.k) {
      case "free":
      case "reserved":
        return -E.EINVAL;
      case "virq":
        c.virqPort[virqIsPerVcpu(s.virq) ? c.notify[port]! : 0]![s.virq] = 0;
        break;
      case "interdomain":
        this.doms[s.rdom]!.st[s.rport] = { k: "unbound", remote: c.domid };
        break;
      default:
        break;
    }
    c.clearPending(port);
    c.st[port] = FREE;
    c.notify[port] = 0;
    return 0;
  }

  send(c: MDom, port: number): number {
    if (port >= VALID) return -E.EINVAL;
    const s = c.st[port]!;
    if (s.k === "interdomain") {
      const rd = this.doms[s.rdom]!;
      rd.setPending(rd.notify[s.rport]!, s.rport);
      return 0;
    }
    if (s.k === "ipi") {
      c.setPending(c.notify[port]!, port);
      return 0;
    }
    return s.k === "unbound" ? 0 : -E.EINVAL;
  }

  status(c: MDom, dom: number, port: number): StatusOut {
    const d = this.dom(c, dom);
    if (!d) return { rc: -E.ESRCH };
    if (port >= VALID) return { rc: -E.EINVAL };
    if (d !== c && !c.priv) return { rc: -E.EPERM };
    return statusOf(d, port);
  }

  bindVcpu(c: MDom, port: number, vcpu: number): number {
    if (vcpu >= NVCPUS) return -E.ENOENT;
    if (port >= VALID) return -E.EINVAL;
    const s = c.st[port]!;
    const ok = s.k === "unbound" || s.k === "interdomain" || (s.k === "virq" && !virqIsPerVcpu(s.virq));
    if (!ok) return -E.EINVAL;
    c.notify[port] = vcpu;
    return 0;
  }

  unmask(c: MDom, port: number): number {
    if (port >= VALID) return -E.EINVAL;
    c.unmask(port);
    return 0;
  }

  setPriority(c: MDom, port: number, prio: number): number {
    if (port >= VALID) return -E.EINVAL;
    if (c.abi === "2L") return -E.ENOSYS;
    if (prio > EVTCHN_FIFO.PRIORITY_MIN) return -E.EINVAL;
    c.prio[port] = prio;
    return 0;
  }

  reset(c: MDom, dom: number): number {
    const d = this.dom(c, dom);
    if (!d) return -E.ESRCH;
    if (d !== c && !c.priv) return -E.EPERM;
    if (d !== c) return -E.EINVAL; // not paused
    for (let p = 1; p < VALID; p++) if (d.st[p]!.k !== "free") this.close(d, p);
    d.abi = "2L";
    return 0;
  }

  raiseVirq(d: MDom, vcpu: number, virq: number): void {
    const v = virqIsPerVcpu(virq) ? vcpu : 0;
    const port = d.virqPort[v]![virq]!;
    if (port !== 0) d.setPending(d.notify[port]!, port);
  }
}

interface StatusOut {
  rc: number;
  status?: number;
  vcpu?: number;
  /** The u32 words of the union. */
  u0?: number;
  u1?: number;
}

function statusOf(d: MDom, port: number): StatusOut {
  const s = d.st[port]!;
  const vcpu = d.notify[port]!;
  switch (s.k) {
    case "unbound":
      return { rc: 0, status: EVTCHNSTAT.unbound, vcpu, u0: s.remote, u1: 0 };
    case "interdomain":
      return { rc: 0, status: EVTCHNSTAT.interdomain, vcpu, u0: s.rdom, u1: s.rport };
    case "virq":
      return { rc: 0, status: EVTCHNSTAT.virq, vcpu, u0: s.virq, u1: 0 };
    case "ipi":
      return { rc: 0, status: EVTCHNSTAT.ipi, vcpu, u0: 0, u1: 0 };
    default:
      return { rc: 0, status: EVTCHNSTAT.closed, vcpu, u0: 0, u1: 0 };
  }
}

// ---------------------------------------------------------------------------------------------
// Ops

/** A port argument: either a raw number or an index into the ports that make sense here. */
type PortArg = { raw: number } | { pick: number };

type OpBody =
  | { t: "alloc"; dom: number; remote: number }
  | { t: "inter"; rdom: number; port: PortArg }
  | { t: "virq"; virq: number; vcpu: number }
  | { t: "ipi"; vcpu: number }
  | { t: "close" | "send" | "unmask"; port: PortArg }
  | { t: "bindVcpu"; port: PortArg; vcpu: number }
  | { t: "prio"; port: PortArg; prio: number }
  | { t: "status"; dom: number; port: PortArg }
  | { t: "reset"; dom: number }
  | { t: "gMask"; port: PortArg; set: boolean }
  | { t: "gClear" | "gUnlink"; port: PortArg }
  | { t: "gAck"; vcpu: number }
  | { t: "raise"; virq: number; vcpu: number };

type Op = OpBody & { by: number; on: number; compat: boolean };

/** bind_interdomain's remote domain: one that has a port waiting for the caller, if any. */
const AUTO = -1;
const domArb = fc.constantFrom(0, 1, 2, DOMID_SELF, DOMID_SELF, NO_DOMAIN);
const portArb: fc.Arbitrary<PortArg> = fc.oneof(
  { weight: 3, arbitrary: fc.nat(40).map((pick) => ({ pick })) },
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 2, 3, 5, 7, 8, 15, 16, 17, 40, 63, 64, 5000).map((raw) => ({ raw })) },
);
const vcpuArb = fc.constantFrom(0, 0, 1, 1, 2);
const virqArb = fc.constantFrom(VIRQ.TIMER, VIRQ.DEBUG, VIRQ.CONSOLE, VIRQ.DOM_EXC, VIRQ.XENOPROF, VIRQ.ARGO, 5, 24, 1000);

const bodyArb: fc.Arbitrary<OpBody> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant("alloc" as const), dom: domArb, remote: domArb }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("inter" as const), rdom: fc.oneof({ weight: 3, arbitrary: fc.constant(AUTO) }, domArb), port: portArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("virq" as const), virq: virqArb, vcpu: vcpuArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("ipi" as const), vcpu: vcpuArb }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constantFrom("close" as const, "send" as const, "unmask" as const), port: portArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("send" as const), port: portArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("bindVcpu" as const), port: portArb, vcpu: vcpuArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("prio" as const), port: portArb, prio: fc.nat(16) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("status" as const), dom: domArb, port: portArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("reset" as const), dom: fc.constantFrom(DOMID_SELF, 0, 1, 2, NO_DOMAIN) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("gMask" as const), port: portArb, set: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constantFrom("gClear" as const, "gUnlink" as const), port: portArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("gAck" as const), vcpu: fc.constantFrom(0, 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("raise" as const), virq: virqArb.filter((v) => v < NR_VIRQS), vcpu: fc.constantFrom(0, 1) }) },
);

const opArb: fc.Arbitrary<Op> = fc
  .tuple(bodyArb, fc.nat(2), fc.nat(1), fc.boolean())
  .map(([body, by, on, compat]) => ({ ...body, by, on, compat }));

/** Resolves a port argument against the model (the state the hypervisor must have too). */
function resolvePort(arg: PortArg, candidates: readonly number[]): number {
  if ("raw" in arg) return arg.raw;
  return candidates.length === 0 ? arg.pick % 20 : candidates[arg.pick % candidates.length]!;
}

/** The first domain from `by` on that has a port waiting for it (for AUTO binds). */
function autoCaller(model: Model, by: number): number {
  for (let i = 0; i < 3; i++) {
    const c = model.doms[(by + i) % 3]!;
    if (autoRemote(model, c) !== DOMID_SELF) return c.domid;
  }
  return by;
}

function autoRemote(model: Model, c: MDom): number {
  const d = model.doms.find((d) => d.st.some((s) => s.k === "unbound" && s.remote === c.domid));
  return d?.domid ?? DOMID_SELF;
}

function boundPorts(d: MDom): number[] {
  const out: number[] = [];
  for (let p = 1; p < VALID; p++) if (d.st[p]!.k !== "free") out.push(p);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The system under test

/** Commands hypercall 16 passes on (xen/arch/x86/compat.c). */
const COMPAT_OK = new Set<number>([
  EVTCHNOP.bind_interdomain,
  EVTCHNOP.bind_virq,
  EVTCHNOP.close,
  EVTCHNOP.send,
  EVTCHNOP.status,
  EVTCHNOP.alloc_unbound,
  EVTCHNOP.bind_ipi,
  EVTCHNOP.bind_vcpu,
  EVTCHNOP.unmask,
]);

class Sut {
  readonly hv = new Hypervisor({ nrFrames: 1024, sched: { nrPcpus: 1, seed: 1 } });
  readonly bs: BareDomain[];
  constructor(
    readonly width: GuestWidth,
    abi: Abi,
  ) {
    this.bs = [0, 1, 2].map((i) =>
      bareDomain(this.hv, { width, vcpus: NVCPUS, pages: 8, maxPort: MAX_PORT[i]!, privileged: PRIVILEGED[i]! }),
    );
    if (abi === "FIFO") {
      for (const b of this.bs) {
        for (let v = 0; v < NVCPUS; v++) {
          assert.equal(this.call(b.v0, EVTCHNOP.init_control, [b.d.p2m[CB_PFN]!, 0, v * CB_STRIDE, v]), 0);
        }
        assert.equal(this.call(b.v0, EVTCHNOP.expand_array, [b.d.p2m[ARRAY_PFN]!, 0]), 0);
      }
    }
  }

  d(i: number): Domain {
    return this.bs[i]!.d;
  }

  /** event_channel_op from `v`: the struct as u32 words; returns rc and the output words. */
  call(v: Vcpu, cmd: number, words: readonly number[], compat = false): number {
    const a = this.bs[v.domain.domid]!.arg;
    for (let i = 0; i < 8; i++) v.write32(a + 4 * i, 0);
    const base = compat ? a + EVTCHN_OP_COMPAT.u : a;
    for (let i = 0; i < words.length; i++) v.write32(base + 4 * i, words[i]!);
    if (!compat) return v.hypercall(HYPERVISOR.event_channel_op, cmd, a);
    v.write32(a + EVTCHN_OP_COMPAT.cmd, cmd);
    return v.hypercall(HYPERVISOR.event_channel_op_compat, a);
  }

  out(v: Vcpu, off: number, compat = false): number {
    return v.read32(this.bs[v.domain.domid]!.arg + (compat ? EVTCHN_OP_COMPAT.u : 0) + off);
  }

  /** An op returning a port: the port, or the -errno. */
  callPort(v: Vcpu, cmd: number, words: readonly number[], off: number, compat: boolean): number {
    const c = compat && COMPAT_OK.has(cmd);
    const rc = this.call(v, cmd, words, c);
    return rc < 0 ? rc : this.out(v, off, c);
  }

  status(v: Vcpu, dom: number, port: number, compat = false): StatusOut {
    const S = EVTCHN_OP.status;
    const rc = this.call(v, EVTCHNOP.status, [dom, port, 0xdead, 0xdead, 0xdead, 0xdead], compat);
    if (rc < 0) return { rc };
    const o = (off: number) => this.out(v, off, compat);
    return { rc, status: o(S.status), vcpu: o(S.vcpu), u0: o(S.u), u1: o(S.u + 4) };
  }

  // guest memory, read and written directly
  si(i: number): Uint32Array {
    return this.d(i).sharedInfoWords;
  }
  fifoPage(i: number, pfn: number): Uint32Array {
    return this.hv.memory.u32(this.d(i).p2m[pfn]!);
  }
}

/** The guest-visible event state of domain `i`, from the hypervisor's memory. */
function observe(sut: Sut, i: number, abi: Abi): unknown {
  const d = sut.d(i);
  const L = d.layout;
  const bytes = d.sharedInfoBytes;
  const upcall = [0, 1].map((v) => bytes[v * L.vcpu_info.size + L.vcpu_info.evtchn_upcall_pending]);
  if (abi === "2L") {
    const w = sut.si(i);
    const bit = (base: number, p: number) => ((w[(base >> 2) + (p >> 5)]! >>> (p & 31)) & 1) === 1;
    const selWord = (v: number) => (v * L.vcpu_info.size + L.vcpu_info.evtchn_pending_sel) >> 2;
    const sel = [0, 1].map((v) => w[selWord(v)]! + (L.ulong === 8 ? w[selWord(v) + 1]! * 2 ** 32 : 0));
    const ports = Array.from({ length: VALID }, (_, p) => [bit(L.shared_info.evtchn_pending, p), bit(L.shared_info.evtchn_mask, p)]);
    return { upcall, sel, ports };
  }
  const arr = sut.fifoPage(i, ARRAY_PFN);
  const cb = sut.fifoPage(i, CB_PFN);
  const words = Array.from({ length: VALID }, (_, p) => arr[p]!);
  const ready = [0, 1].map((v) => cb[(v * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.ready) >> 2]!);
  const head = [0, 1].map((v) => Array.from({ length: 16 }, (_, q) => cb[((v * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.head) >> 2) + q]!));
  return { upcall, words, ready, head };
}

function expected(m: MDom): unknown {
  const upcall = m.upcall.slice();
  if (m.abi === "2L") {
    return { upcall, sel: m.sel.slice(), ports: Array.from({ length: VALID }, (_, p) => [m.pend2[p], m.mask2[p]]) };
  }
  const words = Array.from(
    { length: VALID },
    (_, p) => (m.fp[p] ? PENDING : 0) + (m.fm[p] ? MASKED : 0) + (m.fl[p] ? LINKED : 0) + m.link[p]!,
  );
  return { upcall, words, ready: m.ready.slice(), head: m.head.map((h) => h.slice()) };
}

/** Applies `op` to both sides; returns [model rc, hypervisor rc]. */
function apply(model: Model, sut: Sut, op: Op): [unknown, unknown] {
  const by = op.t === "inter" && op.rdom === AUTO ? autoCaller(model, op.by) : op.by;
  const c = model.doms[by]!;
  const v = sut.d(by).vcpus[op.on]!;
  const mine = boundPorts(c);
  const port = (arg: PortArg) => resolvePort(arg, mine);
  const O = EVTCHN_OP;
  switch (op.t) {
    case "alloc":
      return [
        model.allocUnbound(c, op.dom, op.remote),
        sut.callPort(v, EVTCHNOP.alloc_unbound, [op.dom | (op.remote << 16)], O.alloc_unbound.port, op.compat),
      ];
    case "inter": {
      const rdom = op.rdom === AUTO ? autoRemote(model, c) : op.rdom;
      const rd = model.dom(c, rdom);
      // Mostly ports this caller may bind; sometimes any bound port.
      const all = rd ? boundPorts(rd) : [];
      const forMe = all.filter((p) => {
        const s = rd?.st[p];
        return s?.k === "unbound" && s.remote === c.domid;
      });
      const cands = forMe.length > 0 && "pick" in op.port && op.port.pick % 4 !== 3 ? forMe : all;
      const rport = resolvePort(op.port, cands);
      return [
        model.bindInterdomain(c, rdom, rport),
        sut.callPort(v, EVTCHNOP.bind_interdomain, [rdom, rport], O.bind_interdomain.local_port, op.compat),
      ];
    }
    case "virq":
      return [model.bindVirq(c, op.virq, op.vcpu), sut.callPort(v, EVTCHNOP.bind_virq, [op.virq, op.vcpu], O.bind_virq.port, op.compat)];
    case "ipi":
      return [model.bindIpi(c, op.vcpu), sut.callPort(v, EVTCHNOP.bind_ipi, [op.vcpu], O.bind_ipi.port, op.compat)];
    case "close":
    case "send":
    case "unmask": {
      const p = port(op.port);
      const cmd = EVTCHNOP[op.t];
      const m = op.t === "close" ? model.close(c, p) : op.t === "send" ? model.send(c, p) : model.unmask(c, p);
      return [m, sut.call(v, cmd, [p], op.compat)];
    }
    case "bindVcpu": {
      const p = port(op.port);
      return [model.bindVcpu(c, p, op.vcpu), sut.call(v, EVTCHNOP.bind_vcpu, [p, op.vcpu], op.compat)];
    }
    case "prio": {
      const p = port(op.port);
      return [model.setPriority(c, p, op.prio), sut.call(v, EVTCHNOP.set_priority, [p, op.prio])];
    }
    case "status": {
      const d = model.dom(c, op.dom);
      const p = resolvePort(op.port, d ? boundPorts(d) : []);
      return [model.status(c, op.dom, p), sut.status(v, op.dom, p, op.compat)];
    }
    case "reset":
      return [model.reset(c, op.dom), sut.call(v, EVTCHNOP.reset, [op.dom])];
    case "gMask": {
      const p = port(op.port) % VALID;
      guestWrite(sut, by, c.abi, p, (old) => (op.set ? old | MASKED : old & ~MASKED), op.set, "mask");
      if (c.abi === "2L") c.mask2[p] = op.set;
      else c.fm[p] = op.set;
      return [0, 0];
    }
    case "gClear": {
      const p = port(op.port) % VALID;
      guestWrite(sut, by, c.abi, p, (old) => old & ~PENDING, false, "pending");
      c.clearPending(p);
      return [0, 0];
    }
    case "gUnlink": {
      const p = port(op.port) % VALID;
      if (c.abi === "FIFO") {
        guestWrite(sut, by, c.abi, p, (old) => old & ~(LINKED | LINK_MASK), false, "pending");
        c.fl[p] = false;
        c.link[p] = 0;
      }
      return [0, 0];
    }
    case "gAck": {
      const d = sut.d(by);
      const L = d.layout;
      const off = op.vcpu * L.vcpu_info.size;
      d.sharedInfoBytes[off + L.vcpu_info.evtchn_upcall_pending] = 0;
      c.upcall[op.vcpu] = 0;
      if (c.abi === "2L") {
        const selWord = (off + L.vcpu_info.evtchn_pending_sel) >> 2;
        d.sharedInfoWords[selWord] = 0;
        if (L.ulong === 8) d.sharedInfoWords[selWord + 1] = 0;
        c.sel[op.vcpu] = 0;
      } else {
        sut.fifoPage(by, CB_PFN)[(op.vcpu * CB_STRIDE + EVTCHN_FIFO_CONTROL_BLOCK.ready) >> 2] = 0;
        c.ready[op.vcpu] = 0;
      }
      return [0, 0];
    }
    case "raise":
      model.raiseVirq(c, op.vcpu, op.virq);
      sendGuestVirq(sut.d(by), op.vcpu, op.virq);
      return [0, 0];
  }
}

/** A guest store to port `p`'s bit in a 2-level bitmap, or to its FIFO event word. */
function guestWrite(sut: Sut, i: number, abi: Abi, p: number, fifo: (old: number) => number, on: boolean, which: "mask" | "pending"): void {
  if (abi === "FIFO") {
    const arr = sut.fifoPage(i, ARRAY_PFN);
    arr[p] = fifo(arr[p]!) >>> 0;
    return;
  }
  const L = sut.d(i).layout;
  const base = (which === "mask" ? L.shared_info.evtchn_mask : L.shared_info.evtchn_pending) >> 2;
  const w = sut.si(i);
  const idx = base + (p >> 5);
  w[idx] = on ? w[idx]! | (1 << (p & 31)) : w[idx]! & ~(1 << (p & 31));
}

/** assert.deepEqual, with a cheap check first (deepEqual dominated the run time). */
function same(actual: unknown, want: unknown, msg: string): void {
  if (JSON.stringify(actual) !== JSON.stringify(want)) assert.deepEqual(actual, want, msg);
}

/** Every port's status as each domain sees it, plus the guest-visible event state. */
function compareAll(model: Model, sut: Sut, abiOf: (i: number) => Abi, where: string): void {
  for (let i = 0; i < 3; i++) {
    const m = model.doms[i]!;
    const v0 = sut.d(i).vcpus[0]!;
    for (let p = 0; p <= m.maxPort + 2; p++) {
      same(sut.status(v0, DOMID_SELF, p), model.status(m, DOMID_SELF, p), `${where}: d${i} status of port ${p}`);
    }
    same(sut.status(v0, DOMID_SELF, VALID - 1), model.status(m, DOMID_SELF, VALID - 1), `${where}: d${i} port 63`);
    assert.equal(sut.d(i).portOps.name === "FIFO" ? "FIFO" : "2L", m.abi, `${where}: d${i} ABI`);
    same(observe(sut, i, abiOf(i)), expected(m), `${where}: d${i} event state`);
  }
}

function runOps(width: GuestWidth, abi: Abi, ops: readonly Op[]): void {
  const model = new Model(width, abi);
  const sut = new Sut(width, abi);
  const abiOf = (i: number) => model.doms[i]!.abi;
  compareAll(model, sut, abiOf, "initial");
  ops.forEach((op, n) => {
    const [want, got] = apply(model, sut, op);
    const where = `op ${n} ${JSON.stringify(op)}`;
    same(got, want, `${where}: return value`);
    compareAll(model, sut, abiOf, where);
  });
  for (let i = 0; i < 3; i++) assert.equal(sut.status(sut.d(i).vcpus[0]!, DOMID_SELF, VALID).rc, -E.EINVAL);
}

const opsArb = fc.array(opArb, { minLength: 1, maxLength: 60, size: "medium" });

describe("event channels against a reference model (3 domains; dom0 and d2 privileged)", () => {
  for (const abi of ["2L", "FIFO"] as const) {
    for (const width of [64, 32] as const) {
      const replay = "replay: FC_SEED=<seed> FC_PATH=<path> node --import tsx --test test/evtchn_model.test.ts";
      test(`${abi} ABI, ${width}-bit guests: ${RUNS} fast-check runs of random op sequences match the model (${replay})`, () => {
        const params: fc.Parameters<[Op[]]> = { numRuns: RUNS };
        if (SEED !== undefined) params.seed = SEED;
        if (PATH !== undefined) params.path = PATH;
        fc.assert(
          fc.property(opsArb, (ops) => runOps(width, abi, ops)),
          params,
        );
      });
    }
  }
});
