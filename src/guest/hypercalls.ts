// The guest's hypercall wrappers (Linux's asm/xen/hypercall.h): op structs are built in a
// per-CPU scratch area of kernel memory, as Linux builds them on the stack, and passed by address.

import type { GuestCpu } from "../abi/cpu.ts";
import { CALLBACK_REGISTER_32, CALLBACK_REGISTER_64, EVTCHN_OP, layoutFor, VCPU_SET_PERIODIC_TIMER } from "../abi/layout.ts";
import { CALLBACKOP, EVTCHNOP, HYPERVISOR, SCHEDOP, SHUTDOWN, VCPUOP, XENVER_version } from "../abi/xen.ts";
import { registerKernelClass } from "./kstate.ts";

/** Where each CPU's scratch area (its "stack" for op structs) lives. */
export interface Scratch {
  scratchVa(cpu: GuestCpu): number;
}

export class Hypercalls {
  constructor(private readonly s: Scratch) {}

  evtchnSend(cpu: GuestCpu, port: number): number {
    return this.portOp(cpu, EVTCHNOP.send, port);
  }

  evtchnClose(cpu: GuestCpu, port: number): number {
    return this.portOp(cpu, EVTCHNOP.close, port);
  }

  evtchnUnmask(cpu: GuestCpu, port: number): number {
    return this.portOp(cpu, EVTCHNOP.unmask, port);
  }

  /** The ops whose struct is just `evtchn_port_t port` (send, close, unmask). */
  private portOp(cpu: GuestCpu, cmd: number, port: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a, port);
    return cpu.hypercall(HYPERVISOR.event_channel_op, cmd, a);
  }

  /** Returns the port, or -errno. */
  bindVirq(cpu: GuestCpu, virq: number, vcpu: number): number {
    const a = this.s.scratchVa(cpu);
    const L = EVTCHN_OP.bind_virq;
    cpu.write32(a + L.virq, virq);
    cpu.write32(a + L.vcpu, vcpu);
    const rc = cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.bind_virq, a);
    return rc < 0 ? rc : cpu.read32(a + L.port);
  }

  bindIpi(cpu: GuestCpu, vcpu: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a + EVTCHN_OP.bind_ipi.vcpu, vcpu);
    const rc = cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.bind_ipi, a);
    return rc < 0 ? rc : cpu.read32(a + EVTCHN_OP.bind_ipi.port);
  }

  bindInterdomain(cpu: GuestCpu, remoteDom: number, remotePort: number): number {
    const a = this.s.scratchVa(cpu);
    const L = EVTCHN_OP.bind_interdomain;
    cpu.write32(a + L.remote_dom, remoteDom & 0xffff);
    cpu.write32(a + L.remote_port, remotePort);
    const rc = cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.bind_interdomain, a);
    return rc < 0 ? rc : cpu.read32(a + L.local_port);
  }

  allocUnbound(cpu: GuestCpu, dom: number, remoteDom: number): number {
    const a = this.s.scratchVa(cpu);
    const L = EVTCHN_OP.alloc_unbound;
    cpu.write32(a, (dom & 0xffff) | ((remoteDom & 0xffff) << 16));
    const rc = cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.alloc_unbound, a);
    return rc < 0 ? rc : cpu.read32(a + L.port);
  }

  bindVcpu(cpu: GuestCpu, port: number, vcpu: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a + EVTCHN_OP.bind_vcpu.port, port);
    cpu.write32(a + EVTCHN_OP.bind_vcpu.vcpu, vcpu);
    return cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.bind_vcpu, a);
  }

  initControl(cpu: GuestCpu, gfn: number, offset: number, vcpu: number): number {
    const a = this.s.scratchVa(cpu);
    const L = EVTCHN_OP.init_control;
    cpu.write64(a + L.control_gfn, gfn);
    cpu.write32(a + L.offset, offset);
    cpu.write32(a + L.vcpu, vcpu);
    return cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.init_control, a);
  }

  expandArray(cpu: GuestCpu, gfn: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write64(a + EVTCHN_OP.expand_array.array_gfn, gfn);
    return cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.expand_array, a);
  }

  setPriority(cpu: GuestCpu, port: number, priority: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a + EVTCHN_OP.set_priority.port, port);
    cpu.write32(a + EVTCHN_OP.set_priority.priority, priority);
    return cpu.hypercall(HYPERVISOR.event_channel_op, EVTCHNOP.set_priority, a);
  }

  block(cpu: GuestCpu): number {
    return cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.block, 0);
  }

  yield(cpu: GuestCpu): number {
    return cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.yield, 0);
  }

  shutdown(cpu: GuestCpu, reason: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a, reason);
    return cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.shutdown, a);
  }

  /**
   * HYPERVISOR_suspend: SCHEDOP_shutdown(SHUTDOWN_suspend) with start_info's frame as the third
   * argument. Returns 0 at once (the vCPU is paused); what it returns when the vCPU runs again is
   * in rax then: 1 if the suspend was cancelled, 0 in a new domain.
   */
  suspend(cpu: GuestCpu, startInfoMfn: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write32(a, SHUTDOWN.suspend);
    return cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.shutdown, a, startInfoMfn);
  }

  /** SCHEDOP_poll on one port, with an absolute timeout (0: none). */
  poll(cpu: GuestCpu, port: number, timeout: number): number {
    const a = this.s.scratchVa(cpu);
    const L = layoutFor(cpu.width).sched_poll;
    const portsVa = a + L.size;
    cpu.write32(portsVa, port);
    if (cpu.width === 64) cpu.write64(a + L.ports, portsVa);
    else cpu.write32(a + L.ports, portsVa);
    cpu.write32(a + L.nr_ports, 1);
    cpu.write64(a + L.timeout, timeout);
    return cpu.hypercall(HYPERVISOR.sched_op, SCHEDOP.poll, a);
  }

  vcpuOp(cpu: GuestCpu, cmd: number, vcpu: number, arg = 0): number {
    return cpu.hypercall(HYPERVISOR.vcpu_op, cmd, vcpu, arg);
  }

  setSingleshotTimer(cpu: GuestCpu, deadline: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write64(a, deadline);
    cpu.write32(a + 8, 0);
    return cpu.hypercall(HYPERVISOR.vcpu_op, VCPUOP.set_singleshot_timer, cpu.vcpuId, a);
  }

  setPeriodicTimer(cpu: GuestCpu, periodNs: number): number {
    const a = this.s.scratchVa(cpu);
    cpu.write64(a + VCPU_SET_PERIODIC_TIMER.period_ns, periodNs);
    return cpu.hypercall(HYPERVISOR.vcpu_op, VCPUOP.set_periodic_timer, cpu.vcpuId, a);
  }

  registerCallback(cpu: GuestCpu, type: number, address: number): number {
    const a = this.s.scratchVa(cpu);
    if (cpu.width === 64) {
      cpu.write32(a + CALLBACK_REGISTER_64.type, type);
      cpu.write64(a + CALLBACK_REGISTER_64.address, address);
    } else {
      cpu.write32(a + CALLBACK_REGISTER_32.type, type);
      cpu.write32(a + CALLBACK_REGISTER_32.address, 0x61); // FLAT_KERNEL_CS
      cpu.write32(a + CALLBACK_REGISTER_32.address_eip, address);
    }
    return cpu.hypercall(HYPERVISOR.callback_op, CALLBACKOP.register, a);
  }

  /** force_evtchn_callback: any hypercall makes Xen deliver pending events on the way back. */
  forceEvtchnCallback(cpu: GuestCpu): void {
    cpu.hypercall(HYPERVISOR.xen_version, XENVER_version, 0);
  }

  consoleWrite(cpu: GuestCpu, text: string): number {
    const a = this.s.scratchVa(cpu) + 1024;
    const n = Math.min(text.length, 1024);
    for (let i = 0; i < n; i++) cpu.write8(a + i, text.charCodeAt(i) & 0xff);
    return cpu.hypercall(HYPERVISOR.console_io, 0, n, a);
  }
}

// Its only field is the scratch source (the kernel), a reference like any other.
registerKernelClass("Hypercalls", Hypercalls);
