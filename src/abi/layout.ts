// Struct layouts of Xen's public interface, for both PV guest widths. Offsets are bytes.
// x86_64 guests use 8-byte `xen_ulong_t`/`unsigned long`; i386 guests 4-byte, and a
// 4-byte alignment for 64-bit members (which is why some i386 structs are shorter).
// Checked against Xen's headers (and foreign/x86_32.h) by test/abi-headers.test.ts.

import { CPU_USER_REGS_X86_32, CPU_USER_REGS_X86_64, VCPU_GUEST_CONTEXT_X86_32, VCPU_GUEST_CONTEXT_X86_64 } from "./vcpu_context.ts";

export type GuestWidth = 32 | 64;

export interface Layout {
  readonly width: GuestWidth;
  /** sizeof(unsigned long) == sizeof(xen_ulong_t) for a PV guest of this width. */
  readonly ulong: 4 | 8;
  readonly vcpu_info: {
    readonly size: 64;
    readonly evtchn_upcall_pending: 0;
    readonly evtchn_upcall_mask: 1;
    readonly evtchn_pending_sel: number;
    readonly arch: number;
    readonly time: 32;
  };
  readonly vcpu_time_info: {
    readonly size: 32;
    readonly version: 0;
    readonly tsc_timestamp: 8;
    readonly system_time: 16;
    readonly tsc_to_system_mul: 24;
    readonly tsc_shift: 28;
    readonly flags: 29;
  };
  readonly shared_info: {
    readonly size: number;
    readonly vcpu_info: 0;
    readonly evtchn_pending: 2048;
    readonly evtchn_mask: number;
    readonly wc_version: number;
    readonly wc_sec: number;
    readonly wc_nsec: number;
    readonly arch: number;
    readonly arch_max_pfn: number;
    readonly arch_pfn_to_mfn_frame_list_list: number;
  };
  readonly start_info: {
    readonly size: number;
    readonly magic: 0;
    readonly nr_pages: 32;
    readonly shared_info: number;
    readonly flags: number;
    readonly store_mfn: number;
    readonly store_evtchn: number;
    readonly console_mfn: number;
    readonly console_evtchn: number;
    readonly pt_base: number;
    readonly nr_pt_frames: number;
    readonly mfn_list: number;
    readonly mod_start: number;
    readonly mod_len: number;
    readonly cmd_line: number;
    readonly first_p2m_pfn: number;
    readonly nr_p2m_frames: number;
  };
  readonly multicall_entry: { readonly size: number; readonly op: 0; readonly result: number; readonly args: number };
  readonly mmuext_op: { readonly size: number; readonly cmd: 0; readonly arg1: number; readonly arg2: number };
  readonly sched_poll: { readonly size: number; readonly ports: 0; readonly nr_ports: number; readonly timeout: number };
  readonly vcpu_set_singleshot_timer: { readonly size: number; readonly timeout_abs_ns: 0; readonly flags: 8 };
  readonly vcpu_runstate_info: { readonly size: number; readonly state: 0; readonly state_entry_time: number; readonly time: number };
  /** The members both widths have (every member of both: src/abi/vcpu_context.ts). */
  readonly vcpu_guest_context: {
    readonly size: number;
    readonly fpu_ctxt: 0;
    readonly flags: 512;
    readonly user_regs: number;
    readonly user_regs_ip: number;
    readonly user_regs_sp: number;
    readonly trap_ctxt: number;
    readonly ldt_base: number;
    readonly ldt_ents: number;
    readonly gdt_frames: number;
    readonly gdt_ents: number;
    readonly kernel_ss: number;
    readonly kernel_sp: number;
    readonly ctrlreg: number;
    readonly debugreg: number;
    readonly event_callback_eip: number;
    readonly failsafe_callback_eip: number;
    readonly vm_assist: number;
  };
  /** Where Linux puts its kernel direct map (PAGE_OFFSET), as a signed canonical address. */
  readonly PAGE_OFFSET: number;
  readonly nrEvtchn2L: 1024 | 4096;
}

/** Width-independent layouts (every member is fixed-size). */
export const EVTCHN_OP = {
  alloc_unbound: { size: 8, dom: 0, remote_dom: 2, port: 4 },
  bind_interdomain: { size: 12, remote_dom: 0, remote_port: 4, local_port: 8 },
  bind_virq: { size: 12, virq: 0, vcpu: 4, port: 8 },
  bind_pirq: { size: 12, pirq: 0, flags: 4, port: 8 },
  bind_ipi: { size: 8, vcpu: 0, port: 4 },
  close: { size: 4, port: 0 },
  send: { size: 4, port: 0 },
  status: {
    size: 24,
    dom: 0,
    port: 4,
    status: 8,
    vcpu: 12,
    u: 16,
    unbound_dom: 16,
    interdomain_dom: 16,
    interdomain_port: 20,
    pirq: 16,
    virq: 16,
  },
  bind_vcpu: { size: 8, port: 0, vcpu: 4 },
  unmask: { size: 4, port: 0 },
  reset: { size: 2, dom: 0 },
  init_control: { size: 24, control_gfn: 0, offset: 8, vcpu: 12, link_bits: 16 },
  expand_array: { size: 8, array_gfn: 0 },
  set_priority: { size: 8, port: 0, priority: 4 },
} as const;

/** The compat `struct evtchn_op { uint32_t cmd; union {...} u; }` taken by hypercall 16. */
export const EVTCHN_OP_COMPAT = { size: 28, cmd: 0, u: 4 } as const;

export const EVTCHN_FIFO_CONTROL_BLOCK = { size: 72, ready: 0, head: 8 } as const;

export const VCPU_SET_PERIODIC_TIMER = { size: 8, period_ns: 0 } as const;
export const SCHED_SHUTDOWN = { size: 4, reason: 0 } as const;
export const CALLBACK_REGISTER_64 = { size: 16, type: 0, flags: 2, address: 8 } as const;
/** i386's `struct callback_register`: xen_callback_t is `struct { unsigned long cs, eip; }`. */
export const CALLBACK_REGISTER_32 = { size: 12, type: 0, flags: 2, address: 4, address_eip: 8 } as const;
export const MMU_UPDATE = { size: 16, ptr: 0, val: 8 } as const;

export const LAYOUT_X86_64: Layout = {
  width: 64,
  ulong: 8,
  vcpu_info: { size: 64, evtchn_upcall_pending: 0, evtchn_upcall_mask: 1, evtchn_pending_sel: 8, arch: 16, time: 32 },
  vcpu_time_info: {
    size: 32,
    version: 0,
    tsc_timestamp: 8,
    system_time: 16,
    tsc_to_system_mul: 24,
    tsc_shift: 28,
    flags: 29,
  },
  shared_info: {
    size: 3136,
    vcpu_info: 0,
    evtchn_pending: 2048,
    evtchn_mask: 2560,
    wc_version: 3072,
    wc_sec: 3076,
    wc_nsec: 3080,
    arch: 3088,
    arch_max_pfn: 3088,
    arch_pfn_to_mfn_frame_list_list: 3096,
  },
  start_info: {
    size: 1168,
    magic: 0,
    nr_pages: 32,
    shared_info: 40,
    flags: 48,
    store_mfn: 56,
    store_evtchn: 64,
    console_mfn: 72,
    console_evtchn: 80,
    pt_base: 88,
    nr_pt_frames: 96,
    mfn_list: 104,
    mod_start: 112,
    mod_len: 120,
    cmd_line: 128,
    first_p2m_pfn: 1152,
    nr_p2m_frames: 1160,
  },
  multicall_entry: { size: 64, op: 0, result: 8, args: 16 },
  mmuext_op: { size: 24, cmd: 0, arg1: 8, arg2: 16 },
  sched_poll: { size: 24, ports: 0, nr_ports: 8, timeout: 16 },
  vcpu_set_singleshot_timer: { size: 16, timeout_abs_ns: 0, flags: 8 },
  vcpu_runstate_info: { size: 48, state: 0, state_entry_time: 8, time: 16 },
  vcpu_guest_context: {
    ...VCPU_GUEST_CONTEXT_X86_64,
    user_regs_ip: VCPU_GUEST_CONTEXT_X86_64.user_regs + CPU_USER_REGS_X86_64.rip,
    user_regs_sp: VCPU_GUEST_CONTEXT_X86_64.user_regs + CPU_USER_REGS_X86_64.rsp,
  },

  PAGE_OFFSET: -0x778000000000, // 0xffff888000000000 sign-extended
  nrEvtchn2L: 4096,
};

export const LAYOUT_X86_32: Layout = {
  width: 32,
  ulong: 4,
  vcpu_info: { size: 64, evtchn_upcall_pending: 0, evtchn_upcall_mask: 1, evtchn_pending_sel: 4, arch: 8, time: 32 },
  vcpu_time_info: LAYOUT_X86_64.vcpu_time_info,
  shared_info: {
    size: 2344,
    vcpu_info: 0,
    evtchn_pending: 2048,
    evtchn_mask: 2176,
    wc_version: 2304,
    wc_sec: 2308,
    wc_nsec: 2312,
    arch: 2316,
    arch_max_pfn: 2316,
    arch_pfn_to_mfn_frame_list_list: 2320,
  },
  start_info: {
    size: 1112,
    magic: 0,
    nr_pages: 32,
    shared_info: 36,
    flags: 40,
    store_mfn: 44,
    store_evtchn: 48,
    console_mfn: 52,
    console_evtchn: 56,
    pt_base: 60,
    nr_pt_frames: 64,
    mfn_list: 68,
    mod_start: 72,
    mod_len: 76,
    cmd_line: 80,
    first_p2m_pfn: 1104,
    nr_p2m_frames: 1108,
  },
  multicall_entry: { size: 32, op: 0, result: 4, args: 8 },
  mmuext_op: { size: 12, cmd: 0, arg1: 4, arg2: 8 },
  sched_poll: { size: 16, ports: 0, nr_ports: 4, timeout: 8 },
  vcpu_set_singleshot_timer: { size: 12, timeout_abs_ns: 0, flags: 8 },
  vcpu_runstate_info: { size: 44, state: 0, state_entry_time: 4, time: 12 },
  vcpu_guest_context: {
    ...VCPU_GUEST_CONTEXT_X86_32,
    user_regs_ip: VCPU_GUEST_CONTEXT_X86_32.user_regs + CPU_USER_REGS_X86_32.eip,
    user_regs_sp: VCPU_GUEST_CONTEXT_X86_32.user_regs + CPU_USER_REGS_X86_32.esp,
  },

  PAGE_OFFSET: 0xc0000000,
  nrEvtchn2L: 1024,
};

export function layoutFor(width: GuestWidth): Layout {
  return width === 64 ? LAYOUT_X86_64 : LAYOUT_X86_32;
}
