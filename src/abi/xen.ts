// Xen's public numbers (xen/include/public/*.h, Xen 4.17). Checked against the headers by
// test/abi-headers.test.ts. Objects are `as const` because erasableSyntaxOnly forbids enums.

export const HYPERVISOR = {
  mmu_update: 1,
  set_gdt: 2,
  stack_switch: 3,
  set_callbacks: 4,
  fpu_taskswitch: 5,
  sched_op_compat: 6,
  memory_op: 12,
  multicall: 13,
  update_va_mapping: 14,
  set_timer_op: 15,
  event_channel_op_compat: 16,
  xen_version: 17,
  console_io: 18,
  grant_table_op: 20,
  vm_assist: 21,
  iret: 23,
  vcpu_op: 24,
  set_segment_base: 25,
  mmuext_op: 26,
  sched_op: 29,
  callback_op: 30,
  event_channel_op: 32,
  physdev_op: 33,
} as const;

/**
 * Xen's errno values (public/errno.h); hypercalls return their negation. EINTR and ERESTART are
 * Xen-internal (listed only under `#ifdef __XEN__`) and never reach a guest.
 */
export const XEN_ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  EDOM: 33,
  ERANGE: 34,
  ENOSYS: 38,
  ENODATA: 61,
  ETIME: 62,
  ERESTART: 85,
  EOPNOTSUPP: 95,
} as const;
export type XenErrno = keyof typeof XEN_ERRNO;

export const DOMID_FIRST_RESERVED = 0x7ff0;
export const DOMID_SELF = 0x7ff0;
export const DOMID_IO = 0x7ff1;
export const DOMID_XEN = 0x7ff2;
export const DOMID_COW = 0x7ff3;
export const DOMID_INVALID = 0x7ff4;
export const DOMID_IDLE = 0x7fff;

export const EVTCHNOP = {
  bind_interdomain: 0,
  bind_virq: 1,
  bind_pirq: 2,
  close: 3,
  send: 4,
  status: 5,
  alloc_unbound: 6,
  bind_ipi: 7,
  bind_vcpu: 8,
  unmask: 9,
  reset: 10,
  init_control: 11,
  expand_array: 12,
  set_priority: 13,
  reset_cont: 14,
} as const;

export const EVTCHNSTAT = {
  closed: 0,
  unbound: 1,
  interdomain: 2,
  pirq: 3,
  virq: 4,
  ipi: 5,
} as const;

export const SCHEDOP = {
  yield: 0,
  block: 1,
  shutdown: 2,
  poll: 3,
  remote_shutdown: 4,
  shutdown_code: 5,
  watchdog: 6,
  pin_override: 7,
} as const;

export const SHUTDOWN = {
  poweroff: 0,
  reboot: 1,
  suspend: 2,
  crash: 3,
  watchdog: 4,
  soft_reset: 5,
} as const;

export const VCPUOP = {
  initialise: 0,
  up: 1,
  down: 2,
  is_up: 3,
  get_runstate_info: 4,
  register_runstate_memory_area: 5,
  set_periodic_timer: 6,
  stop_periodic_timer: 7,
  set_singleshot_timer: 8,
  stop_singleshot_timer: 9,
  register_vcpu_info: 10,
  send_nmi: 11,
  get_physid: 12,
} as const;

export const VCPU_SSHOTTMR_future = 1;

export const RUNSTATE = { running: 0, runnable: 1, blocked: 2, offline: 3 } as const;

export const VIRQ = {
  TIMER: 0,
  DEBUG: 1,
  CONSOLE: 2,
  DOM_EXC: 3,
  TBUF: 4,
  DEBUGGER: 6,
  XENOPROF: 7,
  CON_RING: 8,
  PCPU_STATE: 9,
  MEM_EVENT: 10,
  ARGO: 11,
  ENOMEM: 12,
  XENPMU: 13,
} as const;
export const NR_VIRQS = 24;

/** VIRQs bound per vCPU (virq_is_global() is false for these). */
export function virqIsPerVcpu(virq: number): boolean {
  return virq === VIRQ.TIMER || virq === VIRQ.DEBUG || virq === VIRQ.XENOPROF || virq === VIRQ.XENPMU;
}

export const MMUEXT = {
  PIN_L1_TABLE: 0,
  PIN_L2_TABLE: 1,
  PIN_L3_TABLE: 2,
  PIN_L4_TABLE: 3,
  UNPIN_TABLE: 4,
  NEW_BASEPTR: 5,
  TLB_FLUSH_LOCAL: 6,
  INVLPG_LOCAL: 7,
  TLB_FLUSH_MULTI: 8,
  INVLPG_MULTI: 9,
  TLB_FLUSH_ALL: 10,
  INVLPG_ALL: 11,
  FLUSH_CACHE: 12,
  SET_LDT: 13,
  NEW_USER_BASEPTR: 15,
  CLEAR_PAGE: 16,
  COPY_PAGE: 17,
  FLUSH_CACHE_GLOBAL: 18,
  MARK_SUPER: 19,
  UNMARK_SUPER: 20,
} as const;

export const MMU = { NORMAL_PT_UPDATE: 0, MACHPHYS_UPDATE: 1, PT_UPDATE_PRESERVE_AD: 2, PT_UPDATE_NO_TRANSLATE: 3 } as const;
export const UVMF = { NONE: 0, TLB_FLUSH: 1, INVLPG: 2, FLUSHTYPE_MASK: 3, MULTI: 0, LOCAL: 0, ALL: 4 } as const;

export const CALLBACKTYPE = { event: 0, failsafe: 1, syscall: 2, nmi: 4 } as const;
export const CALLBACKOP = { register: 0, unregister: 1 } as const;
export const XENVER_version = 0;

export const VGCF_online = 1 << 5;
export const VGCF_in_kernel = 1 << 2;

export const SIF_PRIVILEGED = 1 << 0;
export const SIF_INITDOMAIN = 1 << 1;

/** FIFO event channel ABI (public/event_channel.h). */
export const EVTCHN_FIFO = {
  PENDING: 31,
  MASKED: 30,
  LINKED: 29,
  BUSY: 28,
  LINK_BITS: 17,
  LINK_MASK: (1 << 17) - 1,
  NR_CHANNELS: 1 << 17,
  PRIORITY_MAX: 0,
  PRIORITY_DEFAULT: 7,
  PRIORITY_MIN: 15,
  MAX_QUEUES: 16,
  EVENT_WORDS_PER_PAGE: 1024,
  MAX_EVENT_ARRAY_PAGES: 128,
} as const;

export const XEN_PAGE_SHIFT = 12;
export const XEN_PAGE_SIZE = 4096;
export const MAX_VIRT_CPUS = 32;
