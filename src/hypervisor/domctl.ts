// The toolstack's only door into Xen: the domctl and sysctl operations, the memory and
// event-channel operations a privileged domain issues on another's behalf, and privcmd's foreign
// mappings. libxc has these and nothing else, and so has src/toolstack.
//
// Each handle knows the domain that calls through it (privcmd opened in that domain). Xen's
// dummy XSM policy applies: a caller that is not the control domain gets -EPERM, an unknown
// target -ESRCH, and every operation returns -errno rather than throwing. The calls are direct
// (not marshalled through a `struct xen_domctl` in dom0's memory); the structures that cross
// the boundary as bytes in Xen (vcpu_guest_context, xen_domctl_getdomaininfo, the PFINFO
// array) cross it here as the same bytes.

import type { GuestImage } from "../abi/cpu.ts";
import {
  DOMINF,
  type DomctlTscInfo,
  encodeGetdomaininfo,
  PFINFO,
  XEN_DOMCTL_SCHEDOP,
  XEN_INVALID_MAX_VCPU_ID,
  XEN_SCHEDULER,
  XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US,
  XEN_SYSCTL_CSCHED_TSLICE_MAX,
  XEN_SYSCTL_CSCHED_TSLICE_MIN,
  XEN_SYSCTL_SCHED_RATELIMIT_MAX,
  XEN_SYSCTL_SCHED_RATELIMIT_MIN,
  XEN_SYSCTL_SCHEDOP,
  XEN_VCPUAFFINITY,
  type XenDomctlGetdomaininfo,
} from "../abi/domctl.ts";
import { DOMID_FIRST_RESERVED, NR_VIRQS, virqIsPerVcpu, XEN_ERRNO as E } from "../abi/xen.ts";
import type { Domain } from "./domain.ts";
import { evtchnAllocUnbound } from "./evtchn.ts";
import type { ConsoleLine, Hypervisor } from "./hypervisor.ts";
import { handleDebugKeys } from "./keyhandler.ts";
import type { ShadowOpResult } from "./log_dirty.ts";
import { PGT, PGT_TYPE_MASK } from "./page_info.ts";
import { CreditScheduler } from "./sched_credit.ts";
import { archGetInfoGuest, archSetInfoGuest, archVcpuReset } from "./vcpu_context.ts";

/** The caller that stands for Xen itself (DOMID_XEN): at boot it builds dom0 with these operations. */
export const DOMID_XEN = 0x7ff2;

/**
 * What XEN_SYSCTL_sched_id answers on a machine run by the seeded interleaving scheduler, which
 * Xen does not have (the credit scheduler answers XEN_SCHEDULER_CREDIT).
 */
export const XENSIM_SCHEDULER_INTERLEAVE = 0x78;

/** xen_domctl_sched_credit. */
export interface SchedCredit {
  weight: number;
  cap: number;
}

/** xen_sysctl_credit_schedule. */
export interface SchedCreditParams {
  tsliceMs: number;
  ratelimitUs: number;
  vcpuMigrDelayUs: number;
}

/** The effective masks XEN_DOMCTL_{set,get}vcpuaffinity hand back (xenctl_bitmap bytes). */
export interface VcpuAffinity {
  hard: Uint8Array;
  soft: Uint8Array;
}



/** mmap protections for foreign mappings. */
export const PROT_READ = 1;
export const PROT_WRITE = 2;

/** XEN_DOMCTL_createdomain's input (struct xen_domctl_createdomain, the parts a PV domain uses). */
export interface CreateDomainConfig {
  /** The UUID (xen_domain_handle_t), 16 bytes. */
  handle?: Uint8Array | undefined;
  maxVcpus: number;
  /** max_evtchn_port: the highest port the domain may use. */
  maxEvtchnPort: number;
  /** Only Xen itself may create a privileged domain (dom0, at boot). */
  privileged?: boolean;
  /** A name for Xen's own log lines; Xen keeps none (names live in xenstore). */
  label?: string;
}

/** XEN_DOMCTL_getvcpuinfo. */
export interface VcpuInfo {
  online: boolean;
  blocked: boolean;
  running: boolean;
  /** ns spent running. */
  cpuTime: number;
  /** The physical CPU it runs or last ran on. */
  cpu: number;
}

/** XEN_SYSCTL_physinfo (the fields xl info prints). */
export interface PhysInfo {
  nrCpus: number;
  cpuKhz: number;
  totalPages: number;
  freePages: number;
  /** XEN_SYSCTL_PHYSCAP_pv. */
  capPv: boolean;
}

/** A domain's frames mapped into the caller, as privcmd's mmapbatch gives them. */
export class ForeignMapping {
  private live = true;
  constructor(
    private readonly hv: Hypervisor,
    readonly domid: number,
    readonly mfns: readonly number[],
    readonly writable: boolean,
  ) {}

  get count(): number {
    return this.mfns.length;
  }

  u8(i: number): Uint8Array {
    return this.hv.memory.u8(this.frame(i));
  }

  u32(i: number): Uint32Array {
    return this.hv.memory.u32(this.frame(i));
  }

  dv(i: number): DataView {
    return this.hv.memory.dv(this.frame(i));
  }

  /** munmap: drops the references the mapping held; the pages are gone from the caller. */
  unmap(): void {
    if (!this.live) return;
    this.live = false;
    this.hv.foreignMappings.delete(this);
    for (const mfn of this.mfns) {
      if (this.writable) this.hv.mm.putPageType(mfn);
      this.hv.mm.putPage(mfn);
    }
  }

  private frame(i: number): number {
    if (!this.live) throw new Error("foreign mapping used after unmap");
    const mfn = this.mfns[i];
    if (mfn === undefined) throw new RangeError(`page ${i} is outside a mapping of ${this.mfns.length}`);
    return mfn;
  }
}

/** privcmd opened in domain `caller`: every call is checked against that domain's privilege. */
export class Privcmd {
  constructor(
    private readonly hv: Hypervisor,
    readonly caller: number,
  ) {}

  // ---- domctl ----

  /** XEN_DOMCTL_createdomain: a paused domain without memory or vCPUs. Returns its domid. */
  createdomain(config: CreateDomainConfig, image: GuestImage, domid = 0): number {
    const denied = this.checkCaller();
    if (denied) return denied;
    if (config.privileged && this.caller !== DOMID_XEN) return -E.EINVAL;
    if (!Number.isInteger(config.maxVcpus) || config.maxVcpus < 1 || config.maxVcpus > MAX_VIRT_CPUS) return -E.EINVAL;
    if (!Number.isInteger(config.maxEvtchnPort) || config.maxEvtchnPort < 0) return -E.EINVAL;
    if (config.handle && config.handle.length !== 16) return -E.EINVAL;
    if (domid >= DOMID_FIRST_RESERVED) return -E.EINVAL;
    const d = this.hv.domainCreate(
      domid > 0 ? domid : undefined,
      {
        name: config.label ?? "",
        width: 64,
        maxVcpus: config.maxVcpus,
        nrPages: 0,
        maxEvtchnPort: Math.min(config.maxEvtchnPort, MAX_EVTCHN_PORT),
        privileged: config.privileged ?? false,
      },
      image,
    );
    if (typeof d === "number") return d;
    if (config.handle) d.handle.set(config.handle);
    return d.domid;
  }

  /** XEN_DOMCTL_max_vcpus: creates the vCPUs; `max` must be createdomain's max_vcpus. */
  max_vcpus(domid: number, max: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller || max !== d.maxVcpus) return -E.EINVAL;
    this.hv.vcpusCreate(d);
    return 0;
  }

  /** XEN_DOMCTL_max_mem, in KiB. */
  max_mem(domid: number, maxKb: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (!Number.isInteger(maxKb) || maxKb < 0) return -E.EINVAL;
    d.maxPages = Math.floor(maxKb / 4);
    return 0;
  }

  /** XEN_DOMCTL_destroydomain (domain_kill): channels closed, memory given back. */
  destroydomain(domid: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller) return -E.EINVAL;
    this.hv.destroyDomain(d);
    return 0;
  }

  /** XEN_DOMCTL_pausedomain: a controller pause (counted). */
  pausedomain(domid: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller) return -E.EINVAL;
    if (d.state === "dying") return -E.EINVAL;
    this.hv.pauseDomain(d);
    return 0;
  }

  /** XEN_DOMCTL_unpausedomain: drops one controller pause; none left is -EINVAL. */
  unpausedomain(domid: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (d.state === "dying") return -E.EINVAL;
    if (d.pauseCount === 0) return -E.EINVAL;
    this.hv.unpauseDomain(d);
    return 0;
  }

  /** XEN_DOMCTL_resumedomain (domain_resume): a shut-down domain runs again, as after a cancelled suspend. */
  resumedomain(domid: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller) return -E.EINVAL;
    this.hv.resumeDomain(d);
    return 0;
  }

  /**
   * XEN_DOMCTL_getdomaininfo, with 4.17's search: the first domain whose id is `domid` or
   * above. Returns struct xen_domctl_getdomaininfo's bytes, or -errno.
   */
  getdomaininfo(domid: number): Uint8Array | number {
    const info = this.getdomaininfoStruct(domid);
    return typeof info === "number" ? info : encodeGetdomaininfo(info);
  }

  /** XEN_DOMCTL_getvcpuinfo. */
  getvcpuinfo(domid: number, vcpu: number): VcpuInfo | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= d.maxVcpus) return -E.EINVAL;
    const v = d.vcpus[vcpu];
    if (!v) return -E.ESRCH;
    return { online: !v.down, blocked: v.blocked, running: v.running, cpuTime: this.runningNs(v), cpu: Math.max(v.pcpu, 0) };
  }

  /**
   * XEN_DOMCTL_setvcpucontext: the domain's vcpu_guest_context bytes for its width; null (a null
   * guest handle in Xen) resets the vCPU instead (vcpu_reset).
   */
  setvcpucontext(domid: number, vcpu: number, ctxt: Uint8Array | null): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller || !Number.isInteger(vcpu) || vcpu < 0 || vcpu >= d.maxVcpus) return -E.EINVAL;
    const v = d.vcpus[vcpu];
    if (!v) return -E.EINVAL;
    if (ctxt === null) {
      archVcpuReset(this.hv, v);
      return 0;
    }
    this.hv.pauseDomain(d);
    const rc = archSetInfoGuest(this.hv, v, ctxt);
    this.hv.unpauseDomain(d);
    return rc;
  }

  /** XEN_DOMCTL_getvcpucontext: -ENODATA until the vCPU has a context. */
  getvcpucontext(domid: number, vcpu: number): Uint8Array | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= d.maxVcpus) return -E.EINVAL;
    const v = d.vcpus[vcpu];
    if (!v) return -E.EINVAL;
    if (!v.initialised) return -E.ENODATA;
    return archGetInfoGuest(v);
  }

  /**
   * XEN_DOMCTL_getpageframeinfo3: for each gfn (an mfn, for a PV guest) its XEN_DOMCTL_PFINFO_*
   * type. A frame the domain does not own, or Xen's own page, is XTAB; at most 1024 per call.
   */
  getpageframeinfo3(domid: number, gfns: ArrayLike<number>): Uint32Array | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (gfns.length > 1024) return -E.E2BIG;
    const pages = this.hv.mm.pages;
    const mem = this.hv.memory;
    const out = new Uint32Array(gfns.length);
    for (let i = 0; i < gfns.length; i++) {
      const mfn = gfns[i]!;
      if (!mem.isValid(mfn) || mem.owner[mfn] !== d.domid || mfn === d.sharedInfoMfn || pages.count[mfn] === 0) {
        out[i] = PFINFO.XTAB;
        continue;
      }
      let type: number = PFINFO.NOTAB;
      switch (pages.type[mfn]! & PGT_TYPE_MASK) {
        case PGT.l1:
          type = PFINFO.L1TAB;
          break;
        case PGT.l2:
          type = PFINFO.L2TAB;
          break;
        case PGT.l3:
          type = PFINFO.L3TAB;
          break;
        case PGT.l4:
          type = PFINFO.L4TAB;
          break;
      }
      if (pages.pinned(mfn)) type |= PFINFO.LPINTAB;
      else if (!pages.validated(mfn)) type = PFINFO.NOTAB;
      out[i] = type >>> 0;
    }
    return out;
  }

  /** XEN_DOMCTL_gettscinfo. */
  gettscinfo(domid: number): DomctlTscInfo | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    return { mode: d.tscMode, gtscKhz: d.tscKhz, incarnation: d.tscIncarnation, elapsedNsec: this.hv.sched.now() - d.tscOffsetNs };
  }

  /** XEN_DOMCTL_settscinfo (tsc_set_info): the incarnation given is bumped, as Xen does. */
  settscinfo(domid: number, info: DomctlTscInfo): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller) return -E.EINVAL;
    if (info.mode !== TSC_MODE_DEFAULT && info.mode !== TSC_MODE_ALWAYS_EMULATE && info.mode !== TSC_MODE_NEVER_EMULATE) return -E.EINVAL;
    d.tscMode = info.mode;
    d.tscKhz = info.gtscKhz === 0 ? d.tscKhz : info.gtscKhz;
    d.tscIncarnation = (info.incarnation + 1) >>> 0;
    d.tscOffsetNs = this.hv.sched.now() - info.elapsedNsec;
    return 0;
  }

  /** XEN_DOMCTL_set_address_size: 32 makes a PV domain compat (PAE); 64 only confirms. */
  set_address_size(domid: number, bits: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (bits === d.width) return 0;
    if (bits === 32) return this.hv.switchCompat(d);
    return -E.EINVAL;
  }

  /** XEN_DOMCTL_get_address_size. */
  get_address_size(domid: number): number {
    const d = this.target(domid);
    return typeof d === "number" ? d : d.width;
  }

  /**
   * XEN_DOMCTL_shadow_op for a PV domain (paging_domctl), the XEN_DOMCTL_SHADOW_OP_* `op`:
   * ENABLE_LOGDIRTY (or ENABLE with mode ENABLE_LOG_DIRTY) is -EINVAL when already on; OFF is 0
   * when not on; CLEAN copies the bitmap into `bitmap` and then clears it and the stats; PEEK
   * only copies. Bit `pfn` is bit (pfn & 7) of byte (pfn >> 3). `pages` is how many pfns the
   * caller asks for (by default what `bitmap` holds, or none without one: a CLEAN without a
   * bitmap then clears only the stats, as Xen's walk clears only what it passes). CLEAN and PEEK
   * answer pages and stats; OFF and ENABLE answer 0; GET/SET_ALLOCATION answer `mb`. A domain
   * that is dying is left alone (0); one without vCPUs, or the caller itself, is -EINVAL.
   */
  shadow_op(domid: number, op: number, bitmap?: Uint8Array, pages?: number, mode = 0, mb = 0): ShadowOpResult | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (domid === this.caller) return -E.EINVAL;
    if (d.state === "dying") return 0;
    if (d.vcpus.length === 0) return -E.EINVAL;
    return this.hv.logDirty.domctl(d, op, mode, mb, bitmap, pages ?? (bitmap ? bitmap.length * 8 : 0));
  }

  /** XEN_DOMCTL_set_virq_handler: a global VIRQ goes to `domid` from now on. */
  set_virq_handler(domid: number, virq: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (!Number.isInteger(virq) || virq < 0 || virq >= NR_VIRQS || virqIsPerVcpu(virq)) return -E.EINVAL;
    this.hv.globalVirqHandlers.set(virq, domid);
    return 0;
  }

  /**
   * XEN_DOMCTL_scheduler_op (sched_adjust): `schedId` must be the running scheduler's. Credit's
   * getinfo answers the weight and cap; putinfo sets them, a weight of 0 and a cap of 0xffff
   * leaving that one as it is (the ranges xl enforces are libxl's, not Xen's). The per-vCPU
   * commands are credit2's and RTDS's: -EINVAL here. The struct's members are uint16: a value
   * that does not fit is -EINVAL (marshalling it would have truncated it).
   */
  scheduler_op(domid: number, schedId: number, cmd: number, credit: SchedCredit = { weight: 0, cap: 0 }): SchedCredit | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    const sched = this.hv.sched;
    if (schedId !== this.schedId()) return -E.EINVAL;
    if (cmd !== XEN_DOMCTL_SCHEDOP.putinfo && cmd !== XEN_DOMCTL_SCHEDOP.getinfo && cmd !== XEN_DOMCTL_SCHEDOP.putvcpuinfo && cmd !== XEN_DOMCTL_SCHEDOP.getvcpuinfo) {
      return -E.EINVAL;
    }
    if (!(sched instanceof CreditScheduler)) return -E.EINVAL;
    if (cmd === XEN_DOMCTL_SCHEDOP.getinfo) return sched.domainParams(d);
    if (cmd !== XEN_DOMCTL_SCHEDOP.putinfo) return -E.EINVAL;
    if (!isU16(credit.weight) || !isU16(credit.cap)) return -E.EINVAL;
    sched.setDomainParams(d, credit.weight, credit.cap);
    return sched.domainParams(d);
  }

  /**
   * XEN_DOMCTL_setvcpuaffinity (vcpu_affinity_domctl): `hard`/`soft` are xenctl_bitmap bytes
   * (bit n = pCPU n), given for the flags that name them. A hard affinity without an online
   * pCPU is -EINVAL. Returns the effective masks: hard intersected with the online pCPUs, soft
   * with both.
   */
  setvcpuaffinity(domid: number, vcpu: number, flags: number, hard: Uint8Array | null, soft: Uint8Array | null): VcpuAffinity | number {
    const v = this.affinityTarget(domid, vcpu, flags, hard, soft);
    if (typeof v === "number") return v;
    const n = this.hv.sched.pcpus.length;
    const bytes = Math.max(hard?.length ?? 0, soft?.length ?? 0, Math.ceil(n / 8));
    if (flags & XEN_VCPUAFFINITY.HARD) {
      const mask = bitmapToMask(hard!, n);
      if (!mask.includes(1)) return -E.EINVAL;
      v.hardAffinity = mask.every((b) => b === 1) ? null : mask;
      this.hv.sched.affinityChanged(v);
    }
    if (flags & XEN_VCPUAFFINITY.SOFT) {
      const mask = bitmapToMask(soft!, n);
      v.softAffinity = mask.every((b) => b === 1) ? null : mask;
    }
    const online = (m: Uint8Array | null) => m ?? new Uint8Array(n).fill(1);
    const hardEff = online(v.hardAffinity);
    const softEff = online(v.softAffinity).map((b, i) => b & hardEff[i]!);
    return { hard: maskToBitmap(hardEff, bytes), soft: maskToBitmap(softEff, bytes) };
  }

  /** XEN_DOMCTL_getvcpuaffinity: the masks as set (all pCPUs by default), `bytes` long. */
  getvcpuaffinity(domid: number, vcpu: number, flags = XEN_VCPUAFFINITY.HARD | XEN_VCPUAFFINITY.SOFT, bytes?: number): VcpuAffinity | number {
    const n = this.hv.sched.pcpus.length;
    const len = bytes ?? Math.ceil(n / 8);
    const handle = new Uint8Array(len);
    const v = this.affinityTarget(domid, vcpu, flags, handle, handle);
    if (typeof v === "number") return v;
    const all = new Uint8Array(len * 8).fill(1);
    return { hard: maskToBitmap(v.hardAffinity ?? all, len), soft: maskToBitmap(v.softAffinity ?? all, len) };
  }

  private affinityTarget(domid: number, vcpu: number, flags: number, hard: Uint8Array | null, soft: Uint8Array | null) {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= d.maxVcpus) return -E.EINVAL;
    const v = d.vcpus[vcpu];
    if (!v) return -E.ESRCH;
    // vcpuaffinity_params_invalid: no flags, or a mask named by the flags but not given.
    if (!isU32(flags) || flags === 0 || (flags & XEN_VCPUAFFINITY.HARD && hard === null) || (flags & XEN_VCPUAFFINITY.SOFT && soft === null)) return -E.EINVAL;
    return v;
  }

  // ---- memory and event-channel operations on another domain ----

  /** XENMEM_populate_physmap with domid = `domid`: one frame per gpfn; returns the mfns. */
  populate_physmap(domid: number, gpfns: readonly number[]): number[] | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    return this.hv.populatePhysmap(d, gpfns);
  }

  /**
   * XENMEM_maximum_gpfn: for a PV domain, what its shared_info's arch.max_pfn says (the number of
   * pfns the guest declares, written by the guest itself), less one; 0 while it says nothing.
   */
  maximum_gpfn(domid: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    const dv = new DataView(d.sharedInfoBytes.buffer, d.sharedInfoBytes.byteOffset, d.sharedInfoBytes.byteLength);
    const off = d.layout.shared_info.arch_max_pfn;
    const nr = d.layout.ulong === 8 ? Number(dv.getBigUint64(off, true) & 0xf_ffff_ffff_ffffn) : dv.getUint32(off, true);
    return Math.max(nr, 1) - 1;
  }

  /** EVTCHNOP_alloc_unbound with dom = `domid`: a port there that `remoteDomid` may bind. */
  evtchn_alloc_unbound(domid: number, remoteDomid: number): number {
    const denied = this.checkCaller();
    if (denied) return denied;
    // Xen itself has no domain struct here: it acts with the target's own authority.
    const caller = this.caller === DOMID_XEN ? this.hv.domains.get(domid) : this.hv.domains.get(this.caller);
    if (!caller) return -E.ESRCH;
    return evtchnAllocUnbound(this.hv, caller, domid, remoteDomid);
  }

  /** MMUEXT_PIN_Ln_TABLE with foreigndom = `domid` (what xc_dom's pin_table issues). */
  pin_table(domid: number, level: number, mfn: number): number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    if (level < 1 || level > 4 || !this.hv.memory.isValid(mfn)) return -E.EINVAL;
    return this.hv.mm.pin(mfn, level, d);
  }

  /**
   * privcmd's mmapbatch: maps `gfns` (mfns, for a PV domain) of `domid` into the caller. Each
   * frame takes a reference, and a writable type reference when PROT_WRITE is asked: a frame
   * that is a pagetable cannot be mapped writable (-EINVAL), as in Xen. All or nothing.
   */
  map_foreign_pages(domid: number, prot: number, gfns: ArrayLike<number>): ForeignMapping | number {
    const d = this.target(domid);
    if (typeof d === "number") return d;
    const writable = (prot & PROT_WRITE) !== 0;
    const mm = this.hv.mm;
    const taken: number[] = [];
    const undo = (rc: number) => {
      for (const mfn of taken) {
        if (writable) mm.putPageType(mfn);
        mm.putPage(mfn);
      }
      return rc;
    };
    for (let i = 0; i < gfns.length; i++) {
      const mfn = gfns[i]!;
      if (!this.hv.memory.isValid(mfn) || !mm.getPage(mfn, d)) return undo(-E.EINVAL);
      if (writable) {
        const rc = mm.getPageType(mfn, PGT.writable, d);
        if (rc < 0) {
          mm.putPage(mfn);
          return undo(rc);
        }
      }
      taken.push(mfn);
    }
    const m = new ForeignMapping(this.hv, domid, taken, writable);
    this.hv.foreignMappings.add(m);
    // The mapper writes through a writable mapping at will and unseen: log-dirty takes its frames
    // as written now, and at every CLEAN and PEEK while the mapping lasts (log_dirty.ts).
    if (writable) for (const mfn of taken) this.hv.logDirty.markMfn(mfn);
    return m;
  }

  // ---- sysctl ----

  /** XEN_SYSCTL_getdomaininfolist: up to `max` domains from `first` on. */
  getdomaininfolist(first: number, max: number): Uint8Array[] | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    const out: Uint8Array[] = [];
    for (const d of [...this.hv.domains.values()].sort((a, b) => a.domid - b.domid)) {
      if (out.length >= max) break;
      if (d.domid >= first) out.push(encodeGetdomaininfo(this.info(d)));
    }
    return out;
  }

  /** XEN_SYSCTL_readconsole: Xen's console ring; with `clear`, emptied after the read. */
  readconsole(clear: boolean): ConsoleLine[] | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    const lines = [...this.hv.console];
    if (clear) this.hv.console.length = 0;
    return lines;
  }

  /** XEN_SYSCTL_debug_keys. */
  debug_keys(keys: string): number {
    const denied = this.checkCaller();
    if (denied) return denied;
    handleDebugKeys(this.hv, keys);
    return 0;
  }

  /** XEN_SYSCTL_sched_id: the scheduler the machine runs. */
  sched_id(): number {
    const denied = this.checkCaller();
    if (denied) return denied;
    return this.schedId();
  }

  /**
   * XEN_SYSCTL_scheduler_op for credit (csched_sys_cntl): getinfo answers the time slice, rate
   * limit and migration delay; putinfo checks their ranges (-EINVAL), sets them, and answers
   * them too. Only cpupool 0 exists (-ESRCH for others); another scheduler's id is -EINVAL.
   */
  sched_credit_params(cpupoolId: number, cmd: number, put?: SchedCreditParams): SchedCreditParams | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    if (cmd !== XEN_SYSCTL_SCHEDOP.putinfo && cmd !== XEN_SYSCTL_SCHEDOP.getinfo) return -E.EINVAL;
    if (cpupoolId !== 0) return -E.ESRCH;
    const sched = this.hv.sched;
    if (!(sched instanceof CreditScheduler)) return -E.EINVAL;
    if (cmd === XEN_SYSCTL_SCHEDOP.putinfo) {
      const p = put ?? { tsliceMs: 0, ratelimitUs: 0, vcpuMigrDelayUs: 0 };
      if (!isU32(p.tsliceMs) || !isU32(p.ratelimitUs) || !isU32(p.vcpuMigrDelayUs)) return -E.EINVAL;
      if (
        p.tsliceMs > XEN_SYSCTL_CSCHED_TSLICE_MAX ||
        p.tsliceMs < XEN_SYSCTL_CSCHED_TSLICE_MIN ||
        (p.ratelimitUs !== 0 && (p.ratelimitUs > XEN_SYSCTL_SCHED_RATELIMIT_MAX || p.ratelimitUs < XEN_SYSCTL_SCHED_RATELIMIT_MIN)) ||
        p.ratelimitUs * 1000 > p.tsliceMs * 1_000_000 ||
        p.vcpuMigrDelayUs > XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US
      ) {
        return -E.EINVAL;
      }
      sched.setCreditParams({ tsliceMs: p.tsliceMs, ratelimitUs: p.ratelimitUs, migrDelayUs: p.vcpuMigrDelayUs });
    }
    const c = sched.creditParams;
    return { tsliceMs: c.tsliceMs, ratelimitUs: c.ratelimitUs, vcpuMigrDelayUs: c.migrDelayUs };
  }

  /** XEN_SYSCTL_physinfo. */
  physinfo(): PhysInfo | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    const mem = this.hv.memory;
    return { nrCpus: this.hv.sched.pcpus.length, cpuKhz: 1_000_000, totalPages: mem.nrFrames, freePages: mem.framesFree, capPv: true };
  }

  // ---- internals ----

  private getdomaininfoStruct(domid: number): XenDomctlGetdomaininfo | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    if (!Number.isInteger(domid) || domid < 0 || domid >= DOMID_FIRST_RESERVED) return -E.EINVAL;
    let found: Domain | undefined = this.hv.domains.get(domid);
    if (!found) {
      for (const d of this.hv.domains.values()) if (d.domid >= domid && (!found || d.domid < found.domid)) found = d;
    }
    return found ? this.info(found) : -E.ESRCH;
  }

  /** getdomaininfo(): Xen's flags, including 4.17's shutdown code of ~0 for a domain that never shut down. */
  private info(d: Domain): XenDomctlGetdomaininfo {
    let cpuTime = 0;
    let online = 0;
    let flags: number = DOMINF.blocked;
    let maxVcpuId = XEN_INVALID_MAX_VCPU_ID;
    for (const v of d.vcpus) {
      cpuTime += this.runningNs(v);
      maxVcpuId = v.id;
      if (v.down) continue;
      if (!v.blocked) flags &= ~DOMINF.blocked;
      if (v.pcpu >= 0 && !v.blocked) flags |= DOMINF.running;
      online++;
    }
    const shutdownCode = d.shutdownCode < 0 ? SHUTDOWN_CODE_INVALID : d.shutdownCode;
    flags =
      ((online > 0 ? flags : 0) |
        (d.state === "dying" ? DOMINF.dying : 0) |
        (d.state === "shutdown" ? DOMINF.shutdown : 0) |
        (d.pauseCount > 0 ? DOMINF.paused : 0) |
        (shutdownCode << DOMINF.shutdownshift)) >>>
      0;
    return {
      domain: d.domid,
      flags,
      totPages: this.hv.totPages(d),
      maxPages: d.maxPages,
      outstandingPages: 0,
      shrPages: 0,
      pagedPages: 0,
      sharedInfoFrame: d.sharedInfoMfn,
      cpuTime,
      nrOnlineVcpus: online,
      maxVcpuId,
      ssidref: 0,
      handle: d.handle.slice(),
      cpupool: 0,
      gpaddrBits: 0,
    };
  }

  /** vcpu_runstate_get(v).time[RUNSTATE_running]: time on a pCPU only, up to now. */
  private runningNs(v: Domain["vcpus"][number]): number {
    return v.runstateTime[RUNSTATE_RUNNING]! + (v.runstate === RUNSTATE_RUNNING ? Math.max(0, this.hv.now(v) - v.runstateEntry) : 0);
  }

  private schedId(): number {
    return this.hv.sched.kind === "credit" ? XEN_SCHEDULER.CREDIT : XENSIM_SCHEDULER_INTERLEAVE;
  }

  /** is_control_domain(current->domain), or Xen itself building dom0. */
  private checkCaller(): number {
    if (this.caller === DOMID_XEN) return 0;
    const c = this.hv.domains.get(this.caller);
    return c?.privileged && c.state !== "dying" ? 0 : -E.EPERM;
  }

  /** The generic prologue: the caller's privilege first, then the target by id. */
  private target(domid: number): Domain | number {
    const denied = this.checkCaller();
    if (denied) return denied;
    const d = Number.isInteger(domid) ? this.hv.domains.get(domid) : undefined;
    return d ?? -E.ESRCH;
  }
}

/** Opens privcmd in domain `caller` (DOMID_XEN: Xen itself, for the dom0 it builds at boot). */
export function openPrivcmd(hv: Hypervisor, caller: number): Privcmd {
  return new Privcmd(hv, caller);
}

function isU16(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff;
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

/** xenctl_bitmap_to_bitmap: bit n of the bytes is pCPU n; bits past the machine's pCPUs are ignored. */
function bitmapToMask(bytes: Uint8Array, nrPcpus: number): Uint8Array {
  const mask = new Uint8Array(nrPcpus);
  for (let c = 0; c < nrPcpus && c < bytes.length * 8; c++) mask[c] = (bytes[c >> 3]! >> (c & 7)) & 1;
  return mask;
}

/** cpumask_to_xenctl_bitmap: `len` bytes, bit n set for each allowed pCPU n. */
function maskToBitmap(mask: Uint8Array, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let c = 0; c < mask.length && c < len * 8; c++) if (mask[c] === 1) out[c >> 3]! |= 1 << (c & 7);
  return out;
}

const MAX_VIRT_CPUS = 8192;
const MAX_EVTCHN_PORT = 131071;
const SHUTDOWN_CODE_INVALID = 0xffffffff;
const RUNSTATE_RUNNING = 0;
const TSC_MODE_DEFAULT = 0;
const TSC_MODE_ALWAYS_EMULATE = 1;
const TSC_MODE_NEVER_EMULATE = 2;
