// HYPERVISOR_event_channel_op: reads each op's struct from the guest, runs it, writes results back.

import { EVTCHN_FIFO_CONTROL_BLOCK, EVTCHN_OP } from "../abi/layout.ts";
import { XEN_ERRNO as E, EVTCHN_FIFO, EVTCHNOP, XEN_PAGE_SIZE } from "../abi/xen.ts";
import {
  evtchnAllocUnbound,
  evtchnBindInterdomain,
  evtchnBindIpi,
  evtchnBindVcpu,
  evtchnBindVirq,
  evtchnClose,
  evtchnReset,
  evtchnSend,
  evtchnStatus,
  evtchnUnmask,
} from "./evtchn.ts";
import { evtchnFifoInitControl } from "./evtchn_fifo.ts";
import type { Hypervisor } from "./hypervisor.ts";
import { PGT } from "./page_info.ts";
import type { Vcpu } from "./vcpu.ts";

export function doEventChannelOp(hv: Hypervisor, v: Vcpu, cmd: number, arg: number): number {
  const g = hv.guest;
  const d = v.domain;
  // The hot one first.
  if (cmd === EVTCHNOP.send) return evtchnSend(hv, d, g.u32(v, arg + EVTCHN_OP.send.port));
  switch (cmd) {
    case EVTCHNOP.alloc_unbound: {
      const L = EVTCHN_OP.alloc_unbound;
      const port = evtchnAllocUnbound(hv, d, g.u16(v, arg + L.dom), g.u16(v, arg + L.remote_dom));
      if (port < 0) return port;
      g.put32(v, arg + L.port, port);
      return 0;
    }
    case EVTCHNOP.bind_interdomain: {
      const L = EVTCHN_OP.bind_interdomain;
      const port = evtchnBindInterdomain(hv, d, g.u16(v, arg + L.remote_dom), g.u32(v, arg + L.remote_port));
      if (port < 0) return port;
      g.put32(v, arg + L.local_port, port);
      return 0;
    }
    case EVTCHNOP.bind_virq: {
      const L = EVTCHN_OP.bind_virq;
      const port = evtchnBindVirq(d, g.u32(v, arg + L.virq), g.u32(v, arg + L.vcpu));
      if (port < 0) return port;
      g.put32(v, arg + L.port, port);
      return 0;
    }
    case EVTCHNOP.bind_ipi: {
      const L = EVTCHN_OP.bind_ipi;
      const port = evtchnBindIpi(d, g.u32(v, arg + L.vcpu));
      if (port < 0) return port;
      g.put32(v, arg + L.port, port);
      return 0;
    }
    case EVTCHNOP.bind_pirq:
      g.check(v, arg, EVTCHN_OP.bind_pirq.size, false);
      return -E.EPERM; // no physical IRQs are routed to PV guests here
    case EVTCHNOP.close:
      return evtchnClose(hv, d, g.u32(v, arg + EVTCHN_OP.close.port));
    case EVTCHNOP.status: {
      const L = EVTCHN_OP.status;
      const st = evtchnStatus(hv, d, g.u16(v, arg + L.dom), g.u32(v, arg + L.port));
      if (typeof st === "number") return st;
      g.put32(v, arg + L.status, st.status);
      g.put32(v, arg + L.vcpu, st.vcpu);
      g.put32(v, arg + L.u, 0);
      g.put32(v, arg + L.u + 4, 0);
      if (st.status === 1) g.put16(v, arg + L.unbound_dom, st.dom);
      else if (st.status === 2) {
        g.put16(v, arg + L.interdomain_dom, st.dom);
        g.put32(v, arg + L.interdomain_port, st.port);
      } else if (st.status === 4) g.put32(v, arg + L.virq, st.virq);
      return 0;
    }
    case EVTCHNOP.bind_vcpu: {
      const L = EVTCHN_OP.bind_vcpu;
      return evtchnBindVcpu(d, g.u32(v, arg + L.port), g.u32(v, arg + L.vcpu));
    }
    case EVTCHNOP.unmask:
      return evtchnUnmask(d, g.u32(v, arg + EVTCHN_OP.unmask.port));
    case EVTCHNOP.reset:
    case EVTCHNOP.reset_cont:
      return evtchnReset(hv, d, g.u16(v, arg + EVTCHN_OP.reset.dom), cmd === EVTCHNOP.reset_cont);
    case EVTCHNOP.init_control:
      return initControl(hv, v, arg);
    case EVTCHNOP.expand_array: {
      const gfn = g.u64(v, arg + EVTCHN_OP.expand_array.array_gfn);
      if (!d.fifo) return -E.EOPNOTSUPP;
      // map_guest_page: Xen writes the page, so it holds a writable type reference on it.
      if (!Number.isInteger(gfn) || hv.mm.getPageAndType(gfn, PGT.writable, d) < 0) return -E.EINVAL;
      const rc = d.fifo.addArrayPage(gfn, hv.memory.u32(gfn));
      if (rc < 0) hv.mm.putPageAndType(gfn);
      return rc;
    }
    case EVTCHNOP.set_priority: {
      const L = EVTCHN_OP.set_priority;
      const port = g.u32(v, arg + L.port);
      const priority = g.u32(v, arg + L.priority);
      if (!d.evtchn.isValid(port)) return -E.EINVAL;
      return d.portOps.setPriority(port, priority);
    }
    default:
      return -E.ENOSYS;
  }
}

/** EVTCHNOP_init_control: the first one switches the domain to the FIFO ABI. */
function initControl(hv: Hypervisor, v: Vcpu, arg: number): number {
  const g = hv.guest;
  const d = v.domain;
  const L = EVTCHN_OP.init_control;
  const gfn = g.u64(v, arg + L.control_gfn);
  const offset = g.u32(v, arg + L.offset);
  const vcpuId = g.u32(v, arg + L.vcpu);
  const target = d.vcpus[vcpuId];
  if (!target) return -E.ENOENT;
  if (offset > XEN_PAGE_SIZE - EVTCHN_FIFO_CONTROL_BLOCK.size) return -E.EINVAL;
  if (offset & 7) return -E.EINVAL;
  if (d.fifo?.controlBlocks[vcpuId]) return -E.EINVAL;
  if (!Number.isInteger(gfn) || hv.mm.getPageAndType(gfn, PGT.writable, d) < 0) return -E.EINVAL;
  const rc = evtchnFifoInitControl(d, target, gfn, hv.memory.u32(gfn), offset);
  if (rc < 0) {
    hv.mm.putPageAndType(gfn);
    return rc;
  }
  g.put8(v, arg + L.link_bits, EVTCHN_FIFO.LINK_BITS);
  return 0;
}

