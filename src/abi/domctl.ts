// The toolstack's interface to Xen (public/domctl.h and public/sysctl.h, Xen 4.17): command
// numbers, interface versions, flags, and the layouts of the argument structs libxc fills in,
// with an encoder and decoder for xen_domctl_getdomaininfo, xen_domctl_tsc_info and
// xen_domctl_shadow_op. These structs
// use uint64_aligned_t and 64-bit guest handles, so their layout is the same for 32- and 64-bit
// toolstacks. Checked against the headers by test/abi-headers.test.ts.

/** XEN_DOMCTL_INTERFACE_VERSION of Xen 4.17. */
export const XEN_DOMCTL_INTERFACE_VERSION = 0x15;
/** XEN_SYSCTL_INTERFACE_VERSION of Xen 4.17. */
export const XEN_SYSCTL_INTERFACE_VERSION = 0x15;

/** XEN_DOMCTL_* command numbers. */
export const XEN_DOMCTL = {
  createdomain: 1,
  destroydomain: 2,
  pausedomain: 3,
  unpausedomain: 4,
  getdomaininfo: 5,
  setvcpuaffinity: 9,
  shadow_op: 10,
  max_mem: 11,
  setvcpucontext: 12,
  getvcpucontext: 13,
  getvcpuinfo: 14,
  max_vcpus: 15,
  scheduler_op: 16,
  setdomainhandle: 17,
  setdebugging: 18,
  irq_permission: 19,
  iomem_permission: 20,
  ioport_permission: 21,
  hypercall_init: 22,
  settimeoffset: 24,
  getvcpuaffinity: 25,
  real_mode_area: 26,
  resumedomain: 27,
  sendtrigger: 28,
  subscribe: 29,
  gethvmcontext: 33,
  sethvmcontext: 34,
  set_address_size: 35,
  get_address_size: 36,
  assign_device: 37,
  bind_pt_irq: 38,
  memory_mapping: 39,
  ioport_mapping: 40,
  set_ext_vcpucontext: 42,
  get_ext_vcpucontext: 43,
  set_opt_feature: 44,
  test_assign_device: 45,
  set_target: 46,
  deassign_device: 47,
  unbind_pt_irq: 48,
  get_device_group: 50,
  debug_op: 54,
  gethvmcontext_partial: 55,
  vm_event_op: 56,
  mem_sharing_op: 57,
  gettscinfo: 59,
  settscinfo: 60,
  getpageframeinfo3: 61,
  setvcpuextstate: 62,
  getvcpuextstate: 63,
  set_access_required: 64,
  audit_p2m: 65,
  set_virq_handler: 66,
  set_broken_page_p2m: 67,
  setnodeaffinity: 68,
  getnodeaffinity: 69,
  cacheflush: 71,
  get_vcpu_msrs: 72,
  set_vcpu_msrs: 73,
  setvnumainfo: 74,
  psr_cmt_op: 75,
  monitor_op: 77,
  psr_alloc: 78,
  soft_reset: 79,
  vuart_op: 81,
  get_cpu_policy: 82,
  set_cpu_policy: 83,
  vmtrace_op: 84,
  get_paging_mempool_size: 85,
  set_paging_mempool_size: 86,
  gdbsx_guestmemio: 1000,
  gdbsx_pausevcpu: 1001,
  gdbsx_unpausevcpu: 1002,
  gdbsx_domstatus: 1003,
} as const;

/** XEN_SYSCTL_* command numbers. */
export const XEN_SYSCTL = {
  readconsole: 1,
  tbuf_op: 2,
  physinfo: 3,
  sched_id: 4,
  perfc_op: 5,
  getdomaininfolist: 6,
  debug_keys: 7,
  getcpuinfo: 8,
  availheap: 9,
  get_pmstat: 10,
  cpu_hotplug: 11,
  pm_op: 12,
  page_offline_op: 14,
  lockprof_op: 15,
  cputopoinfo: 16,
  numainfo: 17,
  cpupool_op: 18,
  scheduler_op: 19,
  coverage_op: 20,
  psr_cmt_op: 21,
  pcitopoinfo: 22,
  psr_alloc: 23,
  get_cpu_levelling_caps: 25,
  get_cpu_featureset: 26,
  livepatch_op: 27,
  get_cpu_policy: 29,
} as const;

/**
 * XEN_DOMINF_*: xen_domctl_getdomaininfo.flags, with the shift and mask of the guest's shutdown
 * code that sits in them (XEN_DOMINF_shutdownshift, XEN_DOMINF_shutdownmask).
 */
export const DOMINF = {
  dying: 1 << 0,
  hvm_guest: 1 << 1,
  shutdown: 1 << 2,
  paused: 1 << 3,
  blocked: 1 << 4,
  running: 1 << 5,
  debugged: 1 << 6,
  xs_domain: 1 << 7,
  hap: 1 << 8,
  shutdownshift: 16,
  shutdownmask: 255,
} as const;
/** max_vcpu_id of a domain without vCPUs. */
export const XEN_INVALID_MAX_VCPU_ID = 0xffffffff;

/** XEN_DOMCTL_CDF_*: xen_domctl_createdomain.flags. */
export const XEN_DOMCTL_CDF = {
  hvm: 1 << 0,
  hap: 1 << 1,
  s3_integrity: 1 << 2,
  oos_off: 1 << 3,
  xs_domain: 1 << 4,
  iommu: 1 << 5,
  nested_virt: 1 << 6,
  vpmu: 1 << 7,
} as const;

/** XEN_DOMCTL_PFINFO_*: the type a getpageframeinfo3 entry reports in its top four bits. */
export const PFINFO = {
  LTAB_SHIFT: 28,
  NOTAB: 0x0,
  L1TAB: 0x1 * 2 ** 28,
  L2TAB: 0x2 * 2 ** 28,
  L3TAB: 0x3 * 2 ** 28,
  L4TAB: 0x4 * 2 ** 28,
  LTABTYPE_MASK: 0x7 * 2 ** 28,
  LPINTAB: 2 ** 31,
  XTAB: 0xf * 2 ** 28,
  XALLOC: 0xe * 2 ** 28,
  BROKEN: 0xd * 2 ** 28,
  LTAB_MASK: 0xf * 2 ** 28,
} as const;

/** XEN_SYSCTL_PHYSCAP_*: xen_sysctl_physinfo.capabilities. */
export const XEN_SYSCTL_PHYSCAP = {
  hvm: 1 << 0,
  pv: 1 << 1,
  directio: 1 << 2,
  hap: 1 << 3,
  shadow: 1 << 4,
  iommu_hap_pt_share: 1 << 5,
  vmtrace: 1 << 6,
  vpmu: 1 << 7,
  gnttab_v1: 1 << 8,
  gnttab_v2: 1 << 9,
} as const;

// ---- layouts (offsets in bytes; `size` is sizeof) --------------------------------------------

/** struct xen_domctl: the header, then the union of every command's argument (128 bytes). */
export const XEN_DOMCTL_HDR = { size: 144, cmd: 0, interface_version: 4, domain: 8, u: 16 } as const;
/** struct xen_sysctl. */
export const XEN_SYSCTL_HDR = { size: 136, cmd: 0, interface_version: 4, u: 8 } as const;

export const XEN_DOMCTL_CREATEDOMAIN = {
  size: 64,
  ssidref: 0,
  handle: 4,
  flags: 20,
  iommu_opts: 24,
  max_vcpus: 28,
  max_evtchn_port: 32,
  max_grant_frames: 36,
  max_maptrack_frames: 40,
  grant_opts: 44,
  vmtrace_size: 48,
  cpupool_id: 52,
  arch: 56,
  arch_emulation_flags: 56,
  arch_misc_flags: 60,
} as const;

export const XEN_DOMCTL_GETDOMAININFO = {
  size: 112,
  domain: 0,
  flags: 4,
  tot_pages: 8,
  max_pages: 16,
  outstanding_pages: 24,
  shr_pages: 32,
  paged_pages: 40,
  shared_info_frame: 48,
  cpu_time: 56,
  nr_online_vcpus: 64,
  max_vcpu_id: 68,
  ssidref: 72,
  handle: 76,
  cpupool: 92,
  gpaddr_bits: 96,
  arch_config: 104,
  arch_emulation_flags: 104,
  arch_misc_flags: 108,
} as const;

export const XEN_DOMCTL_TSC_INFO = { size: 24, tsc_mode: 0, gtsc_khz: 4, incarnation: 8, pad: 12, elapsed_nsec: 16 } as const;
/** struct xen_domctl_vcpucontext: the vCPU and a 64-bit handle to a vcpu_guest_context. */
export const XEN_DOMCTL_VCPUCONTEXT = { size: 16, vcpu: 0, ctxt: 8 } as const;
export const XEN_DOMCTL_MAX_VCPUS = { size: 4, max: 0 } as const;
/** struct xen_domctl_address_size: its one member is itself called `size` (32 or 64). */
export const XEN_DOMCTL_ADDRESS_SIZE = { size: 4, address_size: 0 } as const;
export const XEN_DOMCTL_GETPAGEFRAMEINFO3 = { size: 16, num: 0, array: 8 } as const;
export const XEN_DOMCTL_SET_VIRQ_HANDLER = { size: 4, virq: 0 } as const;

export const XEN_SYSCTL_READCONSOLE = { size: 24, clear: 0, incremental: 1, index: 4, buffer: 8, count: 16 } as const;
export const XEN_SYSCTL_DEBUG_KEYS = { size: 16, keys: 0, nr_keys: 8 } as const;
export const XEN_SYSCTL_GETDOMAININFOLIST = { size: 24, first_domain: 0, max_domains: 4, buffer: 8, num_domains: 16 } as const;
export const XEN_SYSCTL_PHYSINFO = {
  size: 112,
  threads_per_core: 0,
  cores_per_socket: 4,
  nr_cpus: 8,
  max_cpu_id: 12,
  nr_nodes: 16,
  max_node_id: 20,
  cpu_khz: 24,
  capabilities: 28,
  arch_capabilities: 32,
  total_pages: 40,
  free_pages: 48,
  scrub_pages: 56,
  outstanding_pages: 64,
  max_mfn: 72,
  hw_cap: 80,
} as const;

// ---- xen_domctl_getdomaininfo and xen_domctl_tsc_info as plain data ---------------------------

/**
 * xen_domctl_getdomaininfo. The uint64 members are numbers, exact below 2^53 (page counts,
 * frame numbers, nanoseconds of CPU time: 104 days); the encoder refuses anything else. The
 * x86 arch_config (emulation_flags, misc_flags) is 0 for a PV domain when left out.
 */
export interface XenDomctlGetdomaininfo {
  domain: number;
  flags: number;
  totPages: number;
  maxPages: number;
  outstandingPages: number;
  shrPages: number;
  pagedPages: number;
  sharedInfoFrame: number;
  cpuTime: number;
  nrOnlineVcpus: number;
  maxVcpuId: number;
  ssidref: number;
  /** xen_domain_handle_t: 16 bytes (the domain's UUID). */
  handle: Uint8Array;
  cpupool: number;
  gpaddrBits: number;
  emulationFlags?: number;
  miscFlags?: number;
}

/** xen_domctl_tsc_info (settscinfo, gettscinfo). */
export interface DomctlTscInfo {
  mode: number;
  gtscKhz: number;
  incarnation: number;
  elapsedNsec: number;
}

function checkUint(v: number, bits: 8 | 16 | 32 | 53, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0 || (bits !== 53 && v >= 2 ** bits)) {
    throw new RangeError(`${what}: ${v} is not a uint${bits === 53 ? 64 : bits} this codec can hold`);
  }
}

function putU64(dv: DataView, off: number, v: number, what: string): void {
  checkUint(v, 53, what);
  dv.setUint32(off, v >>> 0, true);
  dv.setUint32(off + 4, Math.floor(v / 2 ** 32), true);
}

function getU64(dv: DataView, off: number): number {
  return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 2 ** 32;
}

function view(bytes: Uint8Array, size: number, what: string): DataView {
  if (bytes.length < size) throw new RangeError(`${what} needs ${size} bytes, got ${bytes.length}`);
  return new DataView(bytes.buffer, bytes.byteOffset, size);
}

const GDI = XEN_DOMCTL_GETDOMAININFO;
/** TS member -> offset, for the uint64 and uint32 members. */
const GDI_U64 = {
  totPages: GDI.tot_pages,
  maxPages: GDI.max_pages,
  outstandingPages: GDI.outstanding_pages,
  shrPages: GDI.shr_pages,
  pagedPages: GDI.paged_pages,
  sharedInfoFrame: GDI.shared_info_frame,
  cpuTime: GDI.cpu_time,
} as const;
const GDI_U32 = {
  flags: GDI.flags,
  nrOnlineVcpus: GDI.nr_online_vcpus,
  maxVcpuId: GDI.max_vcpu_id,
  ssidref: GDI.ssidref,
  cpupool: GDI.cpupool,
} as const;

/** Xen's bytes for `info` (padding zero), into `out` at its start if given. */
export function encodeGetdomaininfo(info: XenDomctlGetdomaininfo, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(GDI.size);
  const dv = view(bytes, GDI.size, "xen_domctl_getdomaininfo");
  bytes.fill(0, 0, GDI.size);
  checkUint(info.domain, 16, "getdomaininfo.domain");
  dv.setUint16(GDI.domain, info.domain, true);
  for (const [f, off] of Object.entries(GDI_U32) as [keyof typeof GDI_U32, number][]) {
    checkUint(info[f], 32, `getdomaininfo.${f}`);
    dv.setUint32(off, info[f], true);
  }
  for (const [f, off] of Object.entries(GDI_U64) as [keyof typeof GDI_U64, number][]) putU64(dv, off, info[f], `getdomaininfo.${f}`);
  if (info.handle.length !== 16) throw new RangeError(`getdomaininfo.handle: ${info.handle.length} bytes, not 16`);
  bytes.set(info.handle, GDI.handle);
  checkUint(info.gpaddrBits, 8, "getdomaininfo.gpaddrBits");
  dv.setUint8(GDI.gpaddr_bits, info.gpaddrBits);
  const emu = info.emulationFlags ?? 0;
  const misc = info.miscFlags ?? 0;
  checkUint(emu, 32, "getdomaininfo.emulationFlags");
  checkUint(misc, 32, "getdomaininfo.miscFlags");
  dv.setUint32(GDI.arch_emulation_flags, emu, true);
  dv.setUint32(GDI.arch_misc_flags, misc, true);
  return bytes;
}

export function decodeGetdomaininfo(bytes: Uint8Array): XenDomctlGetdomaininfo {
  const dv = view(bytes, GDI.size, "xen_domctl_getdomaininfo");
  const u32 = (off: number) => dv.getUint32(off, true);
  return {
    domain: dv.getUint16(GDI.domain, true),
    flags: u32(GDI.flags),
    totPages: getU64(dv, GDI.tot_pages),
    maxPages: getU64(dv, GDI.max_pages),
    outstandingPages: getU64(dv, GDI.outstanding_pages),
    shrPages: getU64(dv, GDI.shr_pages),
    pagedPages: getU64(dv, GDI.paged_pages),
    sharedInfoFrame: getU64(dv, GDI.shared_info_frame),
    cpuTime: getU64(dv, GDI.cpu_time),
    nrOnlineVcpus: u32(GDI.nr_online_vcpus),
    maxVcpuId: u32(GDI.max_vcpu_id),
    ssidref: u32(GDI.ssidref),
    handle: bytes.slice(GDI.handle, GDI.handle + 16),
    cpupool: u32(GDI.cpupool),
    gpaddrBits: dv.getUint8(GDI.gpaddr_bits),
    emulationFlags: u32(GDI.arch_emulation_flags),
    miscFlags: u32(GDI.arch_misc_flags),
  };
}

/** The shutdown code getdomaininfo's flags carry. */
export function dominfShutdownCode(flags: number): number {
  return (flags >>> DOMINF.shutdownshift) & DOMINF.shutdownmask;
}

const TSC = XEN_DOMCTL_TSC_INFO;

export function encodeTscInfo(info: DomctlTscInfo, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(TSC.size);
  const dv = view(bytes, TSC.size, "xen_domctl_tsc_info");
  bytes.fill(0, 0, TSC.size);
  const u32s = [
    ["mode", TSC.tsc_mode],
    ["gtscKhz", TSC.gtsc_khz],
    ["incarnation", TSC.incarnation],
  ] as const;
  for (const [f, off] of u32s) {
    checkUint(info[f], 32, `tsc_info.${f}`);
    dv.setUint32(off, info[f], true);
  }
  putU64(dv, TSC.elapsed_nsec, info.elapsedNsec, "tsc_info.elapsedNsec");
  return bytes;
}

export function decodeTscInfo(bytes: Uint8Array): DomctlTscInfo {
  const dv = view(bytes, TSC.size, "xen_domctl_tsc_info");
  return {
    mode: dv.getUint32(TSC.tsc_mode, true),
    gtscKhz: dv.getUint32(TSC.gtsc_khz, true),
    incarnation: dv.getUint32(TSC.incarnation, true),
    elapsedNsec: getU64(dv, TSC.elapsed_nsec),
  };
}

// ---- scheduling: XEN_DOMCTL_scheduler_op, vCPU affinity, XEN_SYSCTL_scheduler_op ---------------

/** XEN_SCHEDULER_*: xen_domctl_scheduler_op.sched_id, and what XEN_SYSCTL_sched_id answers. */
export const XEN_SCHEDULER = { CREDIT: 5, CREDIT2: 6, ARINC653: 7, RTDS: 8, NULL: 9 } as const;
/** XEN_DOMCTL_SCHEDOP_*: xen_domctl_scheduler_op.cmd. */
export const XEN_DOMCTL_SCHEDOP = { putinfo: 0, getinfo: 1, putvcpuinfo: 2, getvcpuinfo: 3 } as const;
/** XEN_SYSCTL_SCHEDOP_*: xen_sysctl_scheduler_op.cmd. */
export const XEN_SYSCTL_SCHEDOP = { putinfo: 0, getinfo: 1 } as const;
/** XEN_VCPUAFFINITY_*: xen_domctl_vcpuaffinity.flags. */
export const XEN_VCPUAFFINITY = { HARD: 1 << 0, SOFT: 1 << 1, FORCE: 1 << 2 } as const;
/** The credit scheduler's time slice bounds (ms), XEN_SYSCTL_CSCHED_TSLICE_MAX/MIN. */
export const XEN_SYSCTL_CSCHED_TSLICE_MAX = 1000;
export const XEN_SYSCTL_CSCHED_TSLICE_MIN = 1;
/** Context-switch rate limit bounds (us), XEN_SYSCTL_SCHED_RATELIMIT_MAX/MIN; 0 switches it off. */
export const XEN_SYSCTL_SCHED_RATELIMIT_MAX = 500000;
export const XEN_SYSCTL_SCHED_RATELIMIT_MIN = 100;
/** The longest vCPU migration delay (us), XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US. */
export const XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US = 100 * 1000;

/** struct xen_domctl_sched_credit (also credit2's). */
export const XEN_DOMCTL_SCHED_CREDIT = { size: 4, weight: 0, cap: 2 } as const;
/** struct xen_domctl_scheduler_op: the union holds credit's, credit2's, rtds' or per-vCPU params. */
export const XEN_DOMCTL_SCHEDULER_OP = { size: 24, sched_id: 0, cmd: 4, u: 8 } as const;
/** struct xenctl_bitmap: a 64-bit handle to the bytes and their number of bits. */
export const XENCTL_BITMAP = { size: 16, bitmap: 0, nr_bits: 8 } as const;
/** struct xen_domctl_vcpuaffinity. */
export const XEN_DOMCTL_VCPUAFFINITY = { size: 40, vcpu: 0, flags: 4, cpumap_hard: 8, cpumap_soft: 24 } as const;
/** struct xen_sysctl_credit_schedule. */
export const XEN_SYSCTL_CREDIT_SCHEDULE = { size: 12, tslice_ms: 0, ratelimit_us: 4, vcpu_migr_delay_us: 8 } as const;
/** struct xen_sysctl_scheduler_op: the union (arinc653's handle makes it 8-aligned). */
export const XEN_SYSCTL_SCHEDULER_OP = { size: 32, cpupool_id: 0, sched_id: 4, cmd: 8, u: 16 } as const;
/** struct xen_sysctl_sched_id. */
export const XEN_SYSCTL_SCHED_ID = { size: 4, sched_id: 0 } as const;

// ---- log-dirty: XEN_DOMCTL_shadow_op -----------------------------------------------------------

/** XEN_DOMCTL_SHADOW_OP_*: xen_domctl_shadow_op.op. */
export const XEN_DOMCTL_SHADOW_OP = {
  OFF: 0,
  ENABLE: 32,
  CLEAN: 11,
  PEEK: 12,
  GET_ALLOCATION: 30,
  SET_ALLOCATION: 31,
  ENABLE_TEST: 1,
  ENABLE_LOGDIRTY: 2,
} as const;
/** XEN_DOMCTL_SHADOW_ENABLE_*: the mode of OP_ENABLE. */
export const XEN_DOMCTL_SHADOW_ENABLE = { REFCOUNT: 1 << 1, LOG_DIRTY: 1 << 2, TRANSLATE: 1 << 3, EXTERNAL: 1 << 4 } as const;
/** XEN_DOMCTL_SHADOW_LOGDIRTY_*: the mode of OP_CLEAN and OP_PEEK. */
export const XEN_DOMCTL_SHADOW_LOGDIRTY = { FINAL: 1 << 0 } as const;
/** struct xen_domctl_shadow_op_stats. */
export const XEN_DOMCTL_SHADOW_OP_STATS = { size: 8, fault_count: 0, dirty_count: 4 } as const;
/** struct xen_domctl_shadow_op: a 64-bit handle to the bitmap, its size in pages (bits), the stats. */
export const XEN_DOMCTL_SHADOW_OP_ARG = {
  size: 40,
  op: 0,
  mode: 4,
  mb: 8,
  dirty_bitmap: 16,
  pages: 24,
  stats: 32,
  stats_fault_count: 32,
  stats_dirty_count: 36,
} as const;

/** xen_domctl_shadow_op as plain data (`dirtyBitmap` is the guest handle's address). */
export interface DomctlShadowOp {
  op: number;
  mode: number;
  mb: number;
  dirtyBitmap: number;
  pages: number;
  faultCount: number;
  dirtyCount: number;
}

const SOP = XEN_DOMCTL_SHADOW_OP_ARG;

export function encodeShadowOp(s: DomctlShadowOp, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(SOP.size);
  const dv = view(bytes, SOP.size, "xen_domctl_shadow_op");
  bytes.fill(0, 0, SOP.size);
  const u32s = [
    ["op", SOP.op],
    ["mode", SOP.mode],
    ["mb", SOP.mb],
    ["faultCount", SOP.stats_fault_count],
    ["dirtyCount", SOP.stats_dirty_count],
  ] as const;
  for (const [f, off] of u32s) {
    checkUint(s[f], 32, `shadow_op.${f}`);
    dv.setUint32(off, s[f], true);
  }
  putU64(dv, SOP.dirty_bitmap, s.dirtyBitmap, "shadow_op.dirtyBitmap");
  putU64(dv, SOP.pages, s.pages, "shadow_op.pages");
  return bytes;
}

export function decodeShadowOp(bytes: Uint8Array): DomctlShadowOp {
  const dv = view(bytes, SOP.size, "xen_domctl_shadow_op");
  return {
    op: dv.getUint32(SOP.op, true),
    mode: dv.getUint32(SOP.mode, true),
    mb: dv.getUint32(SOP.mb, true),
    dirtyBitmap: getU64(dv, SOP.dirty_bitmap),
    pages: getU64(dv, SOP.pages),
    faultCount: dv.getUint32(SOP.stats_fault_count, true),
    dirtyCount: dv.getUint32(SOP.stats_dirty_count, true),
  };
}
