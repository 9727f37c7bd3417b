// Workloads the scenarios name. Each keeps plain-data state and counts what it sees, so the
// checks after a run (no lost wakeups, fairness) can compare senders with receivers.
//
//   ipi_pingpong=N      CPU pairs (0,1), (2,3)... bounce an smp_call_function_single N times
//   evtchn_listen=P     bind local port P (allocated unbound by the toolstack) and echo back
//   evtchn_connect=D:P  bind_interdomain to domain D port P and start the ping-pong
//   pingpong_rounds=N   echo the first N events received, then stop (0: forever)
//   fanin_listen=B:K    K ports from B (allocated by the toolstack): count events per port
//   fanin_connect=D:B:K bind to domain D's ports B..B+K-1 and send on them round robin
//   fanin_flood=1       send on the first port every step, on the others once per tick
//   fanin_lateeoi=1     the listener binds with the lateeoi chip and EOIs from its handler
//   pingpong_with=NAME  a ping-pong frontend whose backend is domain NAME, connected through
//                       xenstore (pingpong_xs.ts): it connects again after a restore
//   pingpong_backend=1  the backend of every such frontend the toolstack gives this domain

import type { GuestCpu } from "../abi/cpu.ts";
import { TICK_NS, type Workload, type XenLinux } from "./kernel.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";
import { PingPongBack, PingPongFront } from "./pingpong_xs.ts";
import { ForkExec, IpiStorm } from "./workloads_mm.ts";

/** Per-port event accounting shared by the workloads: a sender counts sends, a receiver handler runs. */
export interface PortStats {
  sends: number;
  handled: number;
}

function newStats(): PortStats {
  return { sends: 0, handled: 0 };
}

export class IpiPingPong implements Workload {
  readonly name = "ipi_pingpong";
  readonly received: number[];
  private kick: boolean[];

  constructor(
    k: XenLinux,
    readonly rounds: number,
  ) {
    this.received = new Array(k.nrCpus).fill(0);
    this.kick = new Array(k.nrCpus).fill(false);
    this.wire(k);
  }

  /** The IPI function by name (again after a restore: the registry is not state). */
  private wire(k: XenLinux): void {
    k.smp.register("ipi_pingpong", (cpu, round, from) => {
      this.received[cpu.vcpuId]!++;
      if (round < this.rounds) k.smp.callFunctionSingle(cpu, from, "ipi_pingpong", round + 1);
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  start(k: XenLinux): void {
    for (let a = 0; a + 1 < k.nrCpus; a += 2) this.kick[a] = true;
  }

  step(k: XenLinux, cpu: GuestCpu): boolean {
    const c = cpu.vcpuId;
    if (!this.kick[c] || !k.percpu[c + 1]?.online) return false;
    this.kick[c] = false;
    k.smp.callFunctionSingle(cpu, c + 1, "ipi_pingpong", 1);
    return true;
  }

  get total(): number {
    return this.received.reduce((a, b) => a + b, 0);
  }
}

/**
 * An inter-domain ping-pong of a single token: each event received is answered on the same
 * channel. The connector sends nothing to start: Xen marks its new binding pending, and that
 * event is the token. With one token in flight nothing can coalesce, so a lost wakeup stalls it.
 */
export class EvtchnPingPong implements Workload {
  readonly name = "evtchn_pingpong";
  readonly stats = newStats();
  irq = -1;
  localPort = 0;
  /** Set by the runner before a drain: received events are no longer answered. */
  stopping = false;

  constructor(
    k: XenLinux,
    private readonly role: { listen: number } | { dom: number; port: number },
    readonly rounds: number,
  ) {
    this.wire(k);
  }

  /** The irq handler by name (again after a restore: the registry is not state). */
  private wire(k: XenLinux): void {
    k.events.registerHandler("evtchn_pingpong", (cpu) => {
      this.stats.handled++;
      // Events up to the N-th are echoed, so the listener gets N and the connector N + 1.
      if (!this.stopping && (this.rounds === 0 || this.stats.handled <= this.rounds)) this.send(k, cpu);
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  start(k: XenLinux, cpu: GuestCpu): void {
    if ("listen" in this.role) {
      this.irq = k.events.bindEvtchnToIrqhandler(cpu, this.role.listen, "evtchn_pingpong", 0);
    } else {
      this.irq = k.events.bindInterdomainEvtchnToIrqhandler(cpu, this.role.dom, this.role.port, "evtchn_pingpong", 0);
    }
    if (this.irq < 0) throw new Error(`evtchn_pingpong: bind failed (${this.irq})`);
    this.localPort = k.events.irqs[this.irq]!.evtchn;
  }

  step(): boolean {
    return false;
  }

  /** Events this side receives in a complete run: the connector also gets the bind's event. */
  get expected(): number {
    return "listen" in this.role ? this.rounds : this.rounds + 1;
  }

  private send(k: XenLinux, cpu: GuestCpu): void {
    this.stats.sends++;
    k.events.notifyRemoteViaIrq(cpu, this.irq);
  }
}

/** Fan-in: many channels into one domain; the listener counts per port. */
export class FanIn implements Workload {
  readonly name = "fanin";
  readonly ports: PortStats[] = [];
  readonly irqs: number[] = [];
  private next = 0;
  private lastTickSend = 0;

  constructor(
    k: XenLinux,
    private readonly role: { listen: number; count: number } | { dom: number; base: number; count: number },
    private readonly flood: boolean,
    private readonly batch: number,
    private readonly lateeoi = false,
  ) {
    for (let i = 0; i < role.count; i++) this.ports.push(newStats());
    this.wire(k);
  }

  /** The irq handler by name (again after a restore: the registry is not state). */
  private wire(k: XenLinux): void {
    k.events.registerHandler("fanin", (cpu, irq, devId) => {
      this.ports[devId]!.handled++;
      // A lateeoi driver finishes its work, then EOIs: the event was real, not spurious.
      if (this.lateeoi) k.events.lateeoi(cpu, irq, false);
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  get isSender(): boolean {
    return "dom" in this.role;
  }

  start(k: XenLinux, cpu: GuestCpu): void {
    for (let i = 0; i < this.role.count; i++) {
      const irq =
        "listen" in this.role
          ? k.events.bindEvtchnToIrqhandler(cpu, this.role.listen + i, "fanin", i, this.lateeoi)
          : k.events.bindInterdomainEvtchnToIrq(cpu, this.role.dom, this.role.base + i, "xen-dyn");
      if (irq < 0) throw new Error(`fanin: bind ${i} failed (${irq})`);
      this.irqs.push(irq);
    }
  }

  step(k: XenLinux, cpu: GuestCpu): boolean {
    if (!this.isSender || cpu.vcpuId !== 0 || this.irqs.length === 0) return false;
    if (this.flood) {
      const now = k.now(cpu);
      this.sendOn(k, cpu, 0);
      if (now - this.lastTickSend >= TICK_NS) {
        this.lastTickSend = now;
        for (let i = 1; i < this.irqs.length; i++) this.sendOn(k, cpu, i);
      }
      return true;
    }
    for (let n = 0; n < this.batch; n++) {
      this.sendOn(k, cpu, this.next);
      this.next = (this.next + 1) % this.irqs.length;
    }
    return true;
  }

  private sendOn(k: XenLinux, cpu: GuestCpu, i: number): void {
    this.ports[i]!.sends++;
    k.events.notifyRemoteViaIrq(cpu, this.irqs[i]!);
  }

  /** Sender-side: stop sending (for a drain before the lost-wakeup check). */
  stop(): void {
    this.irqs.length = 0;
  }
}

/** Builds the workloads a kernel's command line asks for. */
export function workloadsFromCmdline(k: XenLinux): Workload[] {
  const out: Workload[] = [];
  const num = (key: string) => Number(k.option(key, "0"));
  if (k.options.has("ipi_pingpong")) out.push(new IpiPingPong(k, num("ipi_pingpong")));
  const rounds = num("pingpong_rounds");
  if (k.options.has("evtchn_listen")) out.push(new EvtchnPingPong(k, { listen: num("evtchn_listen") }, rounds));
  if (k.options.has("evtchn_connect")) {
    const [dom, port] = k.option("evtchn_connect", "").split(":").map(Number);
    out.push(new EvtchnPingPong(k, { dom: dom!, port: port! }, rounds));
  }
  const flood = k.option("fanin_flood", "0") === "1";
  const batch = Number(k.option("fanin_batch", "16"));
  if (k.options.has("fanin_listen")) {
    const [base, count] = k.option("fanin_listen", "").split(":").map(Number);
    out.push(new FanIn(k, { listen: base!, count: count! }, flood, batch, k.option("fanin_lateeoi", "0") === "1"));
  }
  if (k.options.has("fanin_connect")) {
    const [dom, base, count] = k.option("fanin_connect", "").split(":").map(Number);
    out.push(new FanIn(k, { dom: dom!, base: base!, count: count! }, flood, batch));
  }
  if (k.options.has("forkexec")) out.push(new ForkExec(num("forkexec"), k.option("mmapstress", "0") === "1"));
  if (k.option("ipistorm", "0") === "1") out.push(new IpiStorm());
  // The toolstack reads the backend's name; the frontend finds it in xenstore.
  if (k.options.has("pingpong_with")) out.push(new PingPongFront(k));
  if (k.option("pingpong_backend", "0") === "1") out.push(new PingPongBack(k));
  return out;
}

registerKernelClass("IpiPingPong", IpiPingPong);
registerKernelClass("EvtchnPingPong", EvtchnPingPong);
registerKernelClass("FanIn", FanIn);
