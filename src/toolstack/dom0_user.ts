// dom0's user space: the daemons that wait on /dev/xen/evtchn (xenstored, xenconsoled, the
// toolstack's VIRQ_DOM_EXC listener). The kernel runs it as work on a dom0 vCPU: queued ioctls
// are executed, fired ports go to their handlers and are re-enabled, and the kicks the handlers
// asked for are sent before the vCPU moves on.

import type { GuestCpu } from "../abi/cpu.ts";
import { VIRQ } from "../abi/xen.ts";
import type { EvtchnDevice } from "../guest/evtchn_dev.ts";
import type { Workload, XenLinux } from "../guest/kernel.ts";
import type { RingKicker } from "./xenstored/xs_ring.ts";

export class Dom0User implements Workload {
  readonly name = "dom0-userspace";
  private readonly handlers = new Map<number, () => void>();
  private dev: EvtchnDevice | undefined;
  /** Set once VIRQ_DOM_EXC is bound. */
  domExcPort = -1;

  constructor(
    /** VIRQ_DOM_EXC: some domain shut down, crashed or died. */
    private readonly onDomExc: () => void,
    /** After every batch of events: the toolstack's own follow-up (watch events, xl's reactions). */
    private readonly afterEvents: () => void,
  ) {}

  get device(): EvtchnDevice {
    if (!this.dev) throw new Error("dom0 has no /dev/xen/evtchn yet");
    return this.dev;
  }

  get ready(): boolean {
    return this.domExcPort > 0;
  }

  start(k: XenLinux, _cpu: GuestCpu): void {
    const dev = k.evtchnDev;
    if (!dev) throw new Error("dom0-userspace runs only in dom0");
    this.dev = dev;
    dev.bindVirq(VIRQ.DOM_EXC, (port) => {
      if (port < 0) throw new Error(`dom0: cannot bind VIRQ_DOM_EXC: ${port}`);
      this.domExcPort = port;
      this.handlers.set(port, this.onDomExc);
    });
  }

  step(_k: XenLinux, cpu: GuestCpu): boolean {
    const dev = this.dev;
    if (!dev) return false;
    let did = dev.service(cpu) > 0;
    const ports = dev.read();
    for (const port of ports) {
      this.handlers.get(port)?.();
      dev.unmask(port);
    }
    if (ports.length > 0) {
      this.afterEvents();
      did = true;
    }
    if (dev.service(cpu) > 0) did = true;
    return did;
  }

  /**
   * Binds to `remotePort` of `domid` for `onEvent`; `bound` gets a kicker for the local port,
   * or the -errno the bind failed with.
   */
  bindInterdomain(domid: number, remotePort: number, onEvent: () => void, bound: (k: RingKicker | number) => void): void {
    const dev = this.device;
    dev.bindInterdomain(domid, remotePort, (port) => {
      if (port < 0) {
        bound(port);
        return;
      }
      this.handlers.set(port, onEvent);
      bound({
        kick: () => dev.notify(port),
        unbind: () => {
          this.handlers.delete(port);
          dev.unbind(port);
        },
      });
    });
  }
}
