// Event channels, the ABI-independent half (xen/common/event_channel.c): the port table and
// Xen's state machine. Every op validates what the guest passed and returns 0 or -errno.

import { DOMID_SELF, NR_VIRQS, EVTCHN_FIFO as F, XEN_ERRNO as E, EVTCHNSTAT, virqIsPerVcpu, VIRQ } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import { evtchn2lInit } from "./evtchn_2l.ts";

/** Xen's ECS_* channel states. */
export const ECS = { FREE: 0, RESERVED: 1, UNBOUND: 2, INTERDOMAIN: 3, PIRQ: 4, VIRQ: 5, IPI: 6 } as const;
export const ECS_NAMES = ["free", "reserved", "unbound", "interdomain", "pirq", "virq", "ipi"] as const;

/** Ports become valid 64 at a time, as Xen allocates struct evtchn buckets. */
export const EVTCHNS_PER_BUCKET = 64;

/** The port table, struct-of-arrays so that the hot paths touch typed arrays only. */
export class EvtchnTable {
  readonly capacity: number;
  readonly state: Uint8Array;
  readonly notifyVcpu: Uint16Array;
  /** UNBOUND: the domain allowed to bind; INTERDOMAIN: the peer domain. */
  readonly remoteDom: Uint16Array;
  readonly remotePort: Uint32Array;
  /** VIRQ number, or the vCPU an IPI port belongs to. */
  readonly virqOrVcpu: Uint8Array;
  readonly priority: Uint8Array;
  /** Ports below this are valid (Xen's valid_evtchns). */
  validPorts = EVTCHNS_PER_BUCKET;
  /** The highest port number the domain may use (max_event_channels - 1 in xl terms). */
  maxPort: number;

  constructor(maxPort: number) {
    this.maxPort = maxPort;
    // Whole buckets: Xen's port_is_valid() checks only valid_evtchns, not max_evtchn_port.
    this.capacity = Math.ceil((maxPort + 1) / EVTCHNS_PER_BUCKET) * EVTCHNS_PER_BUCKET;
    this.state = new Uint8Array(this.capacity);
    this.notifyVcpu = new Uint16Array(this.capacity);
    this.remoteDom = new Uint16Array(this.capacity);
    this.remotePort = new Uint32Array(this.capacity);
    this.virqOrVcpu = new Uint8Array(this.capacity);
    this.priority = new Uint8Array(this.capacity).fill(F.PRIORITY_DEFAULT);
    this.state[0] = ECS.RESERVED;
  }

  isValid(port: number): boolean {
    return Number.isInteger(port) && port >= 0 && port < this.validPorts && port < this.capacity;
  }
}

/** What the state machine needs from the rest of the hypervisor. */
export interface EvtchnHost {
  domainById(domid: number): Domain | undefined;
  /** Drops the writable type references the FIFO control blocks and event arrays hold. */
  releaseFifoPages(d: Domain): void;
}

function getFreePort(d: Domain): number {
  const t = d.evtchn;
  const limit = Math.min(t.maxPort + 1, d.portOps.maxPorts);
  for (let port = 1; port < limit; port++) {
    if (port >= t.validPorts) t.validPorts = Math.min(t.validPorts + EVTCHNS_PER_BUCKET, t.capacity);
    // evtchn_allocate_port: a free port whose FIFO event is still LINKED is busy.
    if (t.state[port] === ECS.FREE && !d.fifo?.isBusy(port)) return port;
  }
  return -E.ENOSPC;
}

function allocPort(d: Domain, state: number, notifyVcpu: number): number {
  const port = getFreePort(d);
  if (port < 0) return port;
  const t = d.evtchn;
  t.state[port] = state;
  t.notifyVcpu[port] = notifyVcpu;
  t.priority[port] = F.PRIORITY_DEFAULT;
  return port;
}

/** Resolves DOMID_SELF and checks that `caller` may act on `domid` (XSM_TARGET). */
function targetDomain(host: EvtchnHost, caller: Domain, domid: number): Domain | number {
  if (domid === DOMID_SELF || domid === caller.domid) return caller;
  const d = host.domainById(domid);
  if (!d) return -E.ESRCH;
  if (!caller.privileged) return -E.EPERM;
  return d;
}

export function evtchnAllocUnbound(host: EvtchnHost, caller: Domain, dom: number, remoteDom: number): number {
  // Xen's order: find the domain, take a port, then the XSM check.
  const d = dom === DOMID_SELF ? caller : host.domainById(dom);
  if (!d) return -E.ESRCH;
  const free = getFreePort(d);
  if (free < 0) return free;
  if (d !== caller && !caller.privileged) return -E.EPERM;
  // DOMID_SELF means the caller (current->domain), not the domain the port is in.
  const remote = remoteDom === DOMID_SELF ? caller.domid : remoteDom;
  const port = allocPort(d, ECS.UNBOUND, 0);
  if (port < 0) return port;
  d.evtchn.remoteDom[port] = remote;
  return port;
}

export function evtchnBindInterdomain(host: EvtchnHost, ld: Domain, remoteDom: number, rport: number): number {
  const rd = remoteDom === DOMID_SELF ? ld : host.domainById(remoteDom);
  if (!rd) return -E.ESRCH;
  const lport = getFreePort(ld);
  if (lport < 0) return lport;
  const rt = rd.evtchn;
  if (!rt.isValid(rport) || rt.state[rport] !== ECS.UNBOUND || rt.remoteDom[rport] !== ld.domid) return -E.EINVAL;
  const lt = ld.evtchn;
  lt.state[lport] = ECS.INTERDOMAIN;
  lt.notifyVcpu[lport] = 0;
  lt.priority[lport] = F.PRIORITY_DEFAULT;
  lt.remoteDom[lport] = rd.domid;
  lt.remotePort[lport] = rport;
  rt.state[rport] = ECS.INTERDOMAIN;
  rt.remoteDom[rport] = ld.domid;
  rt.remotePort[rport] = lport;
  // Xen marks the new local end pending, in case the peer notified before the bind.
  ld.portOps.setPending(ld.vcpus[0]!, lport);
  return lport;
}

export function evtchnBindVirq(d: Domain, virq: number, vcpu: number): number {
  if (!Number.isInteger(virq) || virq < 0 || virq >= NR_VIRQS) return -E.EINVAL;
  const perVcpu = virqIsPerVcpu(virq);
  if (!perVcpu && vcpu !== 0) return -E.EINVAL;
  const v = d.vcpus[vcpu];
  if (!v) return -E.ENOENT;
  // Xen eba922abdb: EBUSY comes after the vCPU checks.
  if (!perVcpu && virq !== VIRQ.ARGO && d.globalVirqHandler(virq) !== d.domid) return -E.EBUSY;
  if (v.virqToEvtchn[virq] !== 0) return -E.EEXIST;
  const port = allocPort(d, ECS.VIRQ, vcpu);
  if (port < 0) return port;
  d.evtchn.virqOrVcpu[port] = virq;
  v.virqToEvtchn[virq] = port;
  return port;
}

export function evtchnBindIpi(d: Domain, vcpu: number): number {
  if (!d.vcpus[vcpu]) return -E.ENOENT;
  const port = allocPort(d, ECS.IPI, vcpu);
  if (port < 0) return port;
  d.evtchn.virqOrVcpu[port] = vcpu;
  return port;
}

export function evtchnClose(host: EvtchnHost, d: Domain, port: number): number {
  const t = d.evtchn;
  if (!t.isValid(port)) return -E.EINVAL;
  switch (t.state[port]) {
    case ECS.FREE:
    case ECS.RESERVED:
      return -E.EINVAL;
    case ECS.UNBOUND:
    case ECS.IPI:
      break;
    case ECS.VIRQ: {
      const virq = t.virqOrVcpu[port]!;
      for (const v of d.vcpus) if (v.virqToEvtchn[virq] === port) v.virqToEvtchn[virq] = 0;
      break;
    }
    case ECS.INTERDOMAIN: {
      const rd = host.domainById(t.remoteDom[port]!);
      if (rd) {
        const rport = t.remotePort[port]!;
        const rt = rd.evtchn;
        if (rt.state[rport] === ECS.INTERDOMAIN && rt.remoteDom[rport] === d.domid && rt.remotePort[rport] === port) {
          rt.state[rport] = ECS.UNBOUND;
          rt.remoteDom[rport] = d.domid;
        }
      }
      break;
    }
    default:
      return -E.EINVAL;
  }
  evtchnFree(d, port);
  return 0;
}

function evtchnFree(d: Domain, port: number): void {
  d.portOps.clearPending(port);
  const t = d.evtchn;
  t.state[port] = ECS.FREE;
  t.notifyVcpu[port] = 0;
  t.remoteDom[port] = 0;
  t.remotePort[port] = 0;
  t.virqOrVcpu[port] = 0;
}

export function evtchnSend(host: EvtchnHost, d: Domain, port: number): number {
  const t = d.evtchn;
  if (!t.isValid(port)) return -E.EINVAL;
  switch (t.state[port]) {
    case ECS.INTERDOMAIN: {
      const rd = host.domainById(t.remoteDom[port]!);
      if (!rd) return 0;
      const rport = t.remotePort[port]!;
      rd.portOps.setPending(rd.vcpus[rd.evtchn.notifyVcpu[rport]!]!, rport);
      return 0;
    }
    case ECS.IPI:
      d.portOps.setPending(d.vcpus[t.notifyVcpu[port]!]!, port);
      return 0;
    case ECS.UNBOUND:
      return 0; // dropped: nobody is listening yet
    default:
      return -E.EINVAL;
  }
}

/** Raises a VIRQ on a vCPU (send_guest_vcpu_virq / send_guest_global_virq). */
export function sendGuestVirq(d: Domain, vcpu: number, virq: number): void {
  const v = d.vcpus[virqIsPerVcpu(virq) ? vcpu : 0];
  if (!v) return;
  const port = v.virqToEvtchn[virq]!;
  if (port === 0) return;
  d.portOps.setPending(d.vcpus[d.evtchn.notifyVcpu[port]!]!, port);
}

export interface EvtchnStatus {
  status: number;
  vcpu: number;
  /** unbound: dom; interdomain: dom and port; virq: virq; ipi: nothing. */
  dom: number;
  port: number;
  virq: number;
}

export function evtchnStatus(host: EvtchnHost, caller: Domain, dom: number, port: number): EvtchnStatus | number {
  // Xen's order: domain, port, then the XSM check.
  const d = dom === DOMID_SELF ? caller : host.domainById(dom);
  if (!d) return -E.ESRCH;
  const t = d.evtchn;
  if (!t.isValid(port)) return -E.EINVAL;
  if (d !== caller && !caller.privileged) return -E.EPERM;
  const st: EvtchnStatus = { status: EVTCHNSTAT.closed, vcpu: t.notifyVcpu[port]!, dom: 0, port: 0, virq: 0 };
  switch (t.state[port]) {
    case ECS.UNBOUND:
      st.status = EVTCHNSTAT.unbound;
      st.dom = t.remoteDom[port]!;
      break;
    case ECS.INTERDOMAIN:
      st.status = EVTCHNSTAT.interdomain;
      st.dom = t.remoteDom[port]!;
      st.port = t.remotePort[port]!;
      break;
    case ECS.VIRQ:
      st.status = EVTCHNSTAT.virq;
      st.virq = t.virqOrVcpu[port]!;
      break;
    case ECS.IPI:
      st.status = EVTCHNSTAT.ipi;
      break;
  }
  return st;
}

export function evtchnBindVcpu(d: Domain, port: number, vcpu: number): number {
  if (!d.vcpus[vcpu]) return -E.ENOENT;
  const t = d.evtchn;
  if (!t.isValid(port)) return -E.EINVAL;
  switch (t.state[port]) {
    case ECS.VIRQ:
      if (virqIsPerVcpu(t.virqOrVcpu[port]!)) return -E.EINVAL;
      break;
    case ECS.UNBOUND:
    case ECS.INTERDOMAIN:
    case ECS.PIRQ:
      break;
    default:
      return -E.EINVAL;
  }
  t.notifyVcpu[port] = vcpu;
  return 0;
}

export function evtchnUnmask(d: Domain, port: number): number {
  if (!d.evtchn.isValid(port)) return -E.EINVAL;
  d.portOps.unmask(port);
  return 0;
}

/** EVTCHNOP_reset: closes every port and returns the domain to the 2-level ABI. */
export function evtchnReset(host: EvtchnHost, caller: Domain, dom: number, resuming = false): number {
  const d = targetDomain(host, caller, dom);
  if (typeof d === "number") return d;
  // Another domain must be paused first; reset_cont with no reset under way is -EBUSY.
  if (d !== caller && d.pauseCount === 0) return -E.EINVAL;
  if (resuming) return -E.EBUSY;
  const t = d.evtchn;
  for (let port = 1; port < t.validPorts; port++) {
    if (t.state[port] !== ECS.FREE) evtchnClose(host, d, port);
  }
  host.releaseFifoPages(d);
  evtchn2lInit(d);
  return 0;
}
