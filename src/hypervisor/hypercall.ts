// The hypercall entry: op number and register arguments in, 0 or -errno out. A bad guest
// address anywhere inside becomes -EFAULT; anything else thrown is a hypervisor bug.

import { CALLBACK_REGISTER_32, CALLBACK_REGISTER_64, EVTCHN_OP_COMPAT } from "../abi/layout.ts";
import { VGCF } from "../abi/vcpu_context.ts";
import { CALLBACKOP, CALLBACKTYPE, XEN_ERRNO as E, EVTCHNOP, HYPERVISOR, XENVER_version } from "../abi/xen.ts";
import { doEventChannelOp } from "./hc_evtchn.ts";
import { doSchedOp, doSchedOpCompat, doSetTimerOp, doVcpuOp } from "./hc_sched.ts";
import { type Hypervisor, XenBug } from "./hypervisor.ts";
import { FaultError } from "./guest_access.ts";
import { doMmuextOp, doMmuUpdate, doMulticall, doUpdateVaMapping } from "./hc_mm.ts";
import type { Vcpu } from "./vcpu.ts";

const XEN_VERSION = (4 << 16) | 17;
const CONSOLEIO_write = 0;
/** CALLBACKF_mask_events: the callback is entered with events masked. */
const CALLBACKF_mask_events = 1;

export function dispatchHypercall(
  hv: Hypervisor,
  v: Vcpu,
  op: number,
  a1: number,
  a2: number,
  a3: number,
  a4: number,
  a5: number,
): number {
  try {
    switch (op) {
      case HYPERVISOR.event_channel_op:
        return doEventChannelOp(hv, v, a1, a2);
      case HYPERVISOR.event_channel_op_compat: {
        // The whole 28-byte struct is read, and only the ten pre-FIFO commands exist here.
        hv.guest.check(v, a1, EVTCHN_OP_COMPAT.size, false);
        const cmd = hv.guest.u32(v, a1 + EVTCHN_OP_COMPAT.cmd);
        if (cmd > EVTCHNOP.unmask) return -E.ENOSYS;
        return doEventChannelOp(hv, v, cmd, a1 + EVTCHN_OP_COMPAT.u);
      }
      case HYPERVISOR.sched_op:
        return doSchedOp(hv, v, a1, a2, a3);
      case HYPERVISOR.sched_op_compat:
        return doSchedOpCompat(hv, v, a1, a2);
      case HYPERVISOR.set_timer_op:
        return doSetTimerOp(hv, v, v.width === 64 ? a1 : (a1 >>> 0) + (a2 >>> 0) * 0x100000000);
      case HYPERVISOR.vcpu_op:
        return doVcpuOp(hv, v, a1, a2, a3);
      case HYPERVISOR.set_callbacks:
        return setCallbacks(v, a1, a2, a3, a4);
      case HYPERVISOR.callback_op:
        return callbackOp(hv, v, a1, a2);
      case HYPERVISOR.xen_version:
        return a1 === XENVER_version ? XEN_VERSION : -E.ENOSYS;
      case HYPERVISOR.console_io:
        return consoleIo(hv, v, a1, a2, a3);
      case HYPERVISOR.update_va_mapping:
        // x86_64: (va, pte, flags); i386: (va, pte_lo, pte_hi, flags).
        return v.width === 64
          ? doUpdateVaMapping(hv, v, a1, a2 >>> 0, Math.floor(a2 / 2 ** 32) >>> 0, a3)
          : doUpdateVaMapping(hv, v, a1 >>> 0, a2 >>> 0, a3 >>> 0, a4 >>> 0);
      case HYPERVISOR.mmu_update:
        return doMmuUpdate(hv, v, a1, a2, a3, a4 >>> 0);
      case HYPERVISOR.mmuext_op:
        return doMmuextOp(hv, v, a1, a2, a3, a4 >>> 0);
      case HYPERVISOR.multicall:
        return doMulticall(hv, v, a1, a2, (op, b1, b2, b3, b4, b5) => dispatchHypercall(hv, v, op, b1, b2, b3, b4, b5));
      default:
        void a5;
        return -E.ENOSYS;
    }
  } catch (e) {
    if (e instanceof FaultError) return -E.EFAULT;
    if (e instanceof XenBug) throw e;
    throw new XenBug(`hypercall ${op} from d${v.domain.domid}v${v.id}: ${(e as Error).stack ?? String(e)}`);
  }
}

function setCallbacks(v: Vcpu, a1: number, a2: number, a3: number, a4: number): number {
  // x86_64: (event, failsafe, syscall); i386: (event_cs, event_eip, failsafe_cs, failsafe_eip).
  // Each is registered without CALLBACKF_mask_events, so neither callback disables events.
  if (v.width === 64) {
    v.eventCallback = a1;
    v.failsafeCallback = a2;
    v.syscallCallback = a3;
  } else {
    v.eventCallbackCs = kernelSelector32(a1);
    v.eventCallback = a2;
    v.failsafeCallbackCs = kernelSelector32(a3);
    v.failsafeCallback = a4;
  }
  v.vgcFlags[0] = v.vgcFlags[0]! & ~(VGCF.failsafe_disables_events | VGCF.syscall_disables_events);
  return 0;
}

/** fixup_guest_code_selector for an i386 guest: an RPL of 0 becomes 1. */
function kernelSelector32(sel: number): number {
  const s = sel >>> 0;
  return (s & 3) >= 1 ? s : ((s & ~3) | 1) >>> 0;
}

/** VGCF_*_disables_events follows the CALLBACKF_mask_events flag a callback is registered with. */
function setDisablesEvents(v: Vcpu, bit: number, flags: number): void {
  v.vgcFlags[0] = flags & CALLBACKF_mask_events ? v.vgcFlags[0]! | bit : v.vgcFlags[0]! & ~bit;
}

function callbackOp(hv: Hypervisor, v: Vcpu, cmd: number, arg: number): number {
  const g = hv.guest;
  if (cmd !== CALLBACKOP.register && cmd !== CALLBACKOP.unregister) return -E.ENOSYS;
  const type = g.u16(v, arg + CALLBACK_REGISTER_64.type);
  const address =
    cmd === CALLBACKOP.unregister ? 0 : v.width === 64 ? g.pointer(v, arg + CALLBACK_REGISTER_64.address) : g.u32(v, arg + 8);
  switch (type) {
    case CALLBACKTYPE.event:
      if (cmd === CALLBACKOP.unregister) return -E.EINVAL;
      v.eventCallback = address;
      if (v.width === 32) v.eventCallbackCs = kernelSelector32(g.u32(v, arg + CALLBACK_REGISTER_32.address));
      return 0;
    case CALLBACKTYPE.failsafe:
      if (cmd === CALLBACKOP.unregister) return -E.EINVAL;
      v.failsafeCallback = address;
      if (v.width === 32) v.failsafeCallbackCs = kernelSelector32(g.u32(v, arg + CALLBACK_REGISTER_32.address));
      setDisablesEvents(v, VGCF.failsafe_disables_events, g.u16(v, arg + CALLBACK_REGISTER_64.flags));
      return 0;
    case CALLBACKTYPE.nmi:
      v.nmiCallback = address;
      return 0;
    case CALLBACKTYPE.syscall:
      if (v.width !== 64) return -E.EINVAL;
      if (cmd === CALLBACKOP.register) {
        v.syscallCallback = address;
        setDisablesEvents(v, VGCF.syscall_disables_events, g.u16(v, arg + CALLBACK_REGISTER_64.flags));
      }
      return 0;
    default:
      return -E.EINVAL;
  }
}

function consoleIo(hv: Hypervisor, v: Vcpu, cmd: number, count: number, buffer: number): number {
  if (cmd !== CONSOLEIO_write) return v.domain.privileged ? -E.ENOSYS : -E.EPERM;
  if (!Number.isInteger(count) || count < 0) return -E.EINVAL;
  const n = Math.min(count, 4096);
  let text = "";
  for (let i = 0; i < n; i++) text += String.fromCharCode(hv.guest.u8(v, buffer + i));
  for (const line of text.split("\n")) if (line.length > 0) hv.log(`(d${v.domain.domid}) ${line}`);
  return 0;
}
