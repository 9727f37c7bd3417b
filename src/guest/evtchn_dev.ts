// /dev/xen/evtchn (Linux drivers/xen/evtchn.c): how dom0's user space (xenstored, xenconsoled,
// the toolstack) binds event channels, waits for them and kicks them. An event on a user port
// disables its irq and queues the port; user space reads the queue and re-enables the port by
// writing it back, as the real device does.
//
// User space here runs outside the kernel's CPUs, so its ioctls are queued and executed on a
// dom0 vCPU the next time the kernel runs user work (`service`).

import type { GuestCpu } from "../abi/cpu.ts";
import type { XenEvents } from "./events.ts";
import type { Hypercalls } from "./hypercalls.ts";

type Ioctl =
  | { op: "bind_interdomain"; remoteDom: number; remotePort: number; done: (port: number) => void }
  | { op: "bind_virq"; virq: number; done: (port: number) => void }
  | { op: "unbind"; port: number }
  | { op: "notify"; port: number }
  | { op: "unmask"; port: number };

export class EvtchnDevice {
  /** Ports that fired since user space last read (the device's ring). */
  private readonly ring: number[] = [];
  private readonly queued: Ioctl[] = [];
  /** port -> irq of each user-bound port. */
  private readonly irqOfPort = new Map<number, number>();
  /** Woken when the ring gains a port (the reader's wait queue). */
  onReadable: () => void = () => {};

  constructor(
    private readonly events: XenEvents,
    private readonly hc: Hypercalls,
  ) {
    events.registerHandler("evtchn_user", (_cpu, irq, port) => {
      events.disableIrq(irq);
      this.ring.push(port);
      this.onReadable();
    });
  }

  // ---- user space side (the ioctls and read/write) ----

  /** IOCTL_EVTCHN_BIND_INTERDOMAIN; `done` gets the local port or -errno. */
  bindInterdomain(remoteDom: number, remotePort: number, done: (port: number) => void): void {
    this.queued.push({ op: "bind_interdomain", remoteDom, remotePort, done });
  }

  /** IOCTL_EVTCHN_BIND_VIRQ. */
  bindVirq(virq: number, done: (port: number) => void): void {
    this.queued.push({ op: "bind_virq", virq, done });
  }

  /** IOCTL_EVTCHN_UNBIND. */
  unbind(port: number): void {
    this.queued.push({ op: "unbind", port });
  }

  /** IOCTL_EVTCHN_NOTIFY. */
  notify(port: number): void {
    this.queued.push({ op: "notify", port });
  }

  /** read(): the ports that fired, oldest first. */
  read(): number[] {
    return this.ring.splice(0, this.ring.length);
  }

  /** write(): re-enables ports user space has handled. */
  unmask(port: number): void {
    this.queued.push({ op: "unmask", port });
  }

  get pendingIoctls(): number {
    return this.queued.length;
  }

  // ---- kernel side ----

  /** Executes queued ioctls on `cpu`. Returns how many ran. */
  service(cpu: GuestCpu): number {
    let n = 0;
    while (this.queued.length > 0) {
      const req = this.queued.shift()!;
      n++;
      switch (req.op) {
        case "bind_interdomain": {
          const port = this.hc.bindInterdomain(cpu, req.remoteDom, req.remotePort);
          req.done(port < 0 ? port : this.attach(cpu, port));
          break;
        }
        case "bind_virq": {
          const port = this.hc.bindVirq(cpu, req.virq, 0);
          req.done(port < 0 ? port : this.attach(cpu, port));
          break;
        }
        case "unbind": {
          const irq = this.irqOfPort.get(req.port);
          if (irq === undefined) break;
          this.irqOfPort.delete(req.port);
          this.events.unbindFromIrqhandler(cpu, irq);
          break;
        }
        case "notify":
          if (this.irqOfPort.has(req.port)) this.hc.evtchnSend(cpu, req.port);
          break;
        case "unmask": {
          const irq = this.irqOfPort.get(req.port);
          if (irq !== undefined) this.events.enableIrq(cpu, irq);
          break;
        }
      }
    }
    return n;
  }

  /** Gives a freshly bound port an irq with the user handler; the port, or -errno. */
  private attach(cpu: GuestCpu, port: number): number {
    const irq = this.events.bindEvtchnToIrqhandler(cpu, port, "evtchn_user", port);
    if (irq < 0) {
      this.hc.evtchnClose(cpu, port);
      return irq;
    }
    this.irqOfPort.set(port, irq);
    return port;
  }
}
