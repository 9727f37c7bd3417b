// struct vcpu_guest_context for both PV guest widths: its full layout (cpu_user_regs, trap_info,
// every member), the VGCF_* flags, the flat kernel selectors, VMASST types, and a plain-data form
// with an encoder and decoder to and from Xen's bytes. This is what VCPUOP_initialise reads from
// a guest and what XEN_DOMCTL_{set,get}vcpucontext carry for the toolstack (and, later, what a
// save image holds per vCPU).
//
// Every `unsigned long` and register is a bigint when decoded, so that a context round-trips
// exactly whatever a guest or a toolstack wrote (a number is accepted when building one). The i386 form names its registers
// as Xen's compat translation does (eax <-> rax, eip <-> rip...): r8-r15, syscall_callback_eip
// and the segment bases do not exist there and must be 0; event_callback_cs and
// failsafe_callback_cs exist only there. Explicit padding (cpu_user_regs' _pad fields, the hole
// in an x86_64 trap_info) is not part of the plain form: it encodes as zero.
//
// Checked against Xen 4.17's xen.h (both widths) and foreign/x86_{32,64}.h by
// test/abi-headers.test.ts.

import type { GuestWidth } from "./layout.ts";
import { VGCF_in_kernel, VGCF_online } from "./xen.ts";

/** The two flags of xen.ts a context builder needs most, under the name it imports them by. */
export { VGCF_in_kernel, VGCF_online };

/** VGCF_* (arch-x86/xen.h; in_syscall is x86_64's, xen-x86_64.h). */
export const VGCF = {
  i387_valid: 1 << 0,
  in_kernel: 1 << 2,
  failsafe_disables_events: 1 << 3,
  syscall_disables_events: 1 << 4,
  online: 1 << 5,
  in_syscall: 1 << 8,
} as const;

/** VMASST_TYPE_*: bit numbers of vm_assist (xen.h). */
export const VMASST_TYPE = {
  "4gb_segments": 0,
  "4gb_segments_notify": 1,
  writable_pagetables: 2,
  pae_extended_cr3: 3,
  architectural_iopl: 4,
  runstate_update_flag: 5,
  m2p_strict: 32,
} as const;

/** The flat selectors a PV kernel runs with (FLAT_KERNEL_{CS,DS,SS}): ring 3 on x86_64, ring 1 on i386. */
export const FLAT_KERNEL_64 = { cs: 0xe033, ds: 0x0000, ss: 0xe02b } as const;
export const FLAT_KERNEL_32 = { cs: 0xe019, ds: 0xe021, ss: 0xe021 } as const;

/** rflags.IF: Xen forces it on in every PV context it is given; IOPL (bits 12-13) it virtualises. */
export const X86_EFLAGS_IF = 0x200;
export const X86_EFLAGS_IOPL = 0x3000;

/** struct cpu_user_regs of a 64-bit guest. */
export const CPU_USER_REGS_X86_64 = {
  size: 200,
  r15: 0,
  r14: 8,
  r13: 16,
  r12: 24,
  rbp: 32,
  rbx: 40,
  r11: 48,
  r10: 56,
  r9: 64,
  r8: 72,
  rax: 80,
  rcx: 88,
  rdx: 96,
  rsi: 104,
  rdi: 112,
  error_code: 120,
  entry_vector: 124,
  rip: 128,
  cs: 136,
  saved_upcall_mask: 140,
  rflags: 144,
  rsp: 152,
  ss: 160,
  es: 168,
  ds: 176,
  fs: 184,
  gs: 192,
} as const;

/** struct cpu_user_regs of an i386 guest. */
export const CPU_USER_REGS_X86_32 = {
  size: 68,
  ebx: 0,
  ecx: 4,
  edx: 8,
  esi: 12,
  edi: 16,
  ebp: 20,
  eax: 24,
  error_code: 28,
  entry_vector: 30,
  eip: 32,
  cs: 36,
  saved_upcall_mask: 38,
  eflags: 40,
  esp: 44,
  ss: 48,
  es: 52,
  ds: 56,
  fs: 60,
  gs: 64,
} as const;

/** struct trap_info (one entry of the virtual IDT, trap_ctxt[]). */
export const TRAP_INFO_X86_64 = { size: 16, vector: 0, flags: 1, cs: 2, address: 8 } as const;
export const TRAP_INFO_X86_32 = { size: 8, vector: 0, flags: 1, cs: 2, address: 4 } as const;

/** struct vcpu_guest_context of a 64-bit guest: every member. */
export const VCPU_GUEST_CONTEXT_X86_64 = {
  size: 5168,
  fpu_ctxt: 0,
  flags: 512,
  user_regs: 520,
  trap_ctxt: 720,
  ldt_base: 4816,
  ldt_ents: 4824,
  gdt_frames: 4832,
  gdt_ents: 4960,
  kernel_ss: 4968,
  kernel_sp: 4976,
  ctrlreg: 4984,
  debugreg: 5048,
  event_callback_eip: 5112,
  failsafe_callback_eip: 5120,
  syscall_callback_eip: 5128,
  vm_assist: 5136,
  fs_base: 5144,
  gs_base_kernel: 5152,
  gs_base_user: 5160,
} as const;

/** struct vcpu_guest_context of an i386 guest: every member. */
export const VCPU_GUEST_CONTEXT_X86_32 = {
  size: 2800,
  fpu_ctxt: 0,
  flags: 512,
  user_regs: 516,
  trap_ctxt: 584,
  ldt_base: 2632,
  ldt_ents: 2636,
  gdt_frames: 2640,
  gdt_ents: 2704,
  kernel_ss: 2708,
  kernel_sp: 2712,
  ctrlreg: 2716,
  debugreg: 2748,
  event_callback_cs: 2780,
  event_callback_eip: 2784,
  failsafe_callback_cs: 2788,
  failsafe_callback_eip: 2792,
  vm_assist: 2796,
} as const;

export const FPU_CTXT_SIZE = 512;
export const NR_TRAP_CTXT = 256;
export const NR_GDT_FRAMES = 16;
export const NR_CTRLREG = 8;
export const NR_DEBUGREG = 8;

/** The general registers, rip, rflags and rsp of cpu_user_regs, by their x86_64 names. */
export const GPR_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rbp",
  "rsp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const;
export type GprName = (typeof GPR_NAMES)[number];

/** An i386 guest's name for each register its cpu_user_regs has (Xen's compat translation). */
export const GPR_NAMES_X86_32: Readonly<Partial<Record<GprName, keyof typeof CPU_USER_REGS_X86_32>>> = {
  rax: "eax",
  rbx: "ebx",
  rcx: "ecx",
  rdx: "edx",
  rsi: "esi",
  rdi: "edi",
  rbp: "ebp",
  rsp: "esp",
  rip: "eip",
  rflags: "eflags",
};

/**
 * An unsigned long or a register: a bigint, exact; or, for convenience when building a context, a
 * safe-integer number, a negative one standing for its two's complement (as this project writes
 * x86_64 kernel addresses). The decoder always gives bigints.
 */
export type XenUlong = bigint | number;

export type CpuUserRegs = Record<GprName, XenUlong> & {
  /** u32 on x86_64, u16 on i386 (private to Xen, carried as is). */
  error_code: number;
  entry_vector: number;
  cs: number;
  saved_upcall_mask: number;
  ss: number;
  es: number;
  ds: number;
  fs: number;
  gs: number;
};

export interface TrapInfo {
  vector: number;
  /** 0-3: privilege level; 4: clear the event enable (mask upcalls). */
  flags: number;
  cs: number;
  address: XenUlong;
}

/** struct vcpu_guest_context as plain data (see XenUlong and the file comment). */
export interface VcpuGuestContext {
  /** FXSAVE image, 512 bytes. */
  fpu_ctxt: Uint8Array;
  flags: XenUlong;
  user_regs: CpuUserRegs;
  /** 256 entries. */
  trap_ctxt: TrapInfo[];
  ldt_base: XenUlong;
  ldt_ents: XenUlong;
  /** 16 entries. */
  gdt_frames: XenUlong[];
  gdt_ents: XenUlong;
  kernel_ss: XenUlong;
  kernel_sp: XenUlong;
  /** CR0-CR7; x86_64 keeps the user base pointer in ctrlreg[1]. */
  ctrlreg: XenUlong[];
  debugreg: XenUlong[];
  /** i386 only. */
  event_callback_cs: XenUlong;
  event_callback_eip: XenUlong;
  /** i386 only. */
  failsafe_callback_cs: XenUlong;
  failsafe_callback_eip: XenUlong;
  /** x86_64 only. */
  syscall_callback_eip: XenUlong;
  vm_assist: XenUlong;
  /** x86_64 only. */
  fs_base: XenUlong;
  gs_base_kernel: XenUlong;
  gs_base_user: XenUlong;
}

export function vcpuGuestContextSize(width: GuestWidth): number {
  return width === 64 ? VCPU_GUEST_CONTEXT_X86_64.size : VCPU_GUEST_CONTEXT_X86_32.size;
}

export function emptyCpuUserRegs(): CpuUserRegs {
  const r = { error_code: 0, entry_vector: 0, cs: 0, saved_upcall_mask: 0, ss: 0, es: 0, ds: 0, fs: 0, gs: 0 } as CpuUserRegs;
  for (const n of GPR_NAMES) r[n] = 0n;
  return r;
}

/** An all-zero context (what a toolstack memsets before filling one in); the same for both widths. */
export function emptyVcpuGuestContext(_width?: GuestWidth): VcpuGuestContext {
  return {
    fpu_ctxt: new Uint8Array(FPU_CTXT_SIZE),
    flags: 0n,
    user_regs: emptyCpuUserRegs(),
    trap_ctxt: Array.from({ length: NR_TRAP_CTXT }, () => ({ vector: 0, flags: 0, cs: 0, address: 0n })),
    ldt_base: 0n,
    ldt_ents: 0n,
    gdt_frames: new Array<bigint>(NR_GDT_FRAMES).fill(0n),
    gdt_ents: 0n,
    kernel_ss: 0n,
    kernel_sp: 0n,
    ctrlreg: new Array<bigint>(NR_CTRLREG).fill(0n),
    debugreg: new Array<bigint>(NR_DEBUGREG).fill(0n),
    event_callback_cs: 0n,
    event_callback_eip: 0n,
    failsafe_callback_cs: 0n,
    failsafe_callback_eip: 0n,
    syscall_callback_eip: 0n,
    vm_assist: 0n,
    fs_base: 0n,
    gs_base_kernel: 0n,
    gs_base_user: 0n,
  };
}

/** A deep copy. */
export function cloneVcpuGuestContext(c: VcpuGuestContext): VcpuGuestContext {
  return {
    ...c,
    fpu_ctxt: c.fpu_ctxt.slice(),
    user_regs: { ...c.user_regs },
    trap_ctxt: c.trap_ctxt.map((t) => ({ ...t })),
    gdt_frames: [...c.gdt_frames],
    ctrlreg: [...c.ctrlreg],
    debugreg: [...c.debugreg],
  };
}

/** xen_pfn_to_cr3 of the guest's width (i386 folds the frame number's top bits into the low 12). */
export function xenPfnToCr3(width: GuestWidth, pfn: number): bigint {
  if (width === 64) return BigInt(pfn) << 12n;
  return BigInt(((pfn << 12) | (pfn >>> 20)) >>> 0);
}

/** xen_cr3_to_pfn of the guest's width. `cr3` is an unsigned long of that width. */
export function xenCr3ToPfn(width: GuestWidth, cr3: XenUlong): number {
  const u = toUlong(width, cr3);
  if (width === 64) return Number(u >> 12n);
  const c = Number(u);
  return ((c >>> 12) | (c << 20)) >>> 0;
}

// ---- the codec -------------------------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

function fits(v: bigint, bytes: number): boolean {
  return v >= 0n && v <= (bytes === 8 ? U64_MAX : (1n << BigInt(8 * bytes)) - 1n);
}

/** `v` as the unsigned value of `bytes` bytes it stands for, or undefined if it has none. */
function asUnsigned(v: XenUlong, bytes: number): bigint | undefined {
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) return undefined;
    if (v >= 0) return BigInt(v);
    const big = BigInt(v);
    return big >= -(1n << BigInt(8 * bytes - 1)) ? BigInt.asUintN(8 * bytes, big) : undefined;
  }
  return v;
}

/** An unsigned long of `width` as a bigint (a number converts as XenUlong says); RangeError if it does not fit. */
export function toUlong(width: GuestWidth, v: XenUlong): bigint {
  const b = asUnsigned(v, width / 8);
  if (b === undefined || !fits(b, width / 8)) throw new RangeError(`${v} is not an unsigned long of a ${width}-bit guest`);
  return b;
}

function putUint(dv: DataView, off: number, bytes: number, v: XenUlong, what: string): void {
  const b = asUnsigned(v, bytes);
  if (b === undefined || !fits(b, bytes)) throw new RangeError(`vcpu_guest_context.${what}: ${v} does not fit ${bytes} bytes`);
  switch (bytes) {
    case 1:
      dv.setUint8(off, Number(b));
      return;
    case 2:
      dv.setUint16(off, Number(b), true);
      return;
    case 4:
      dv.setUint32(off, Number(b), true);
      return;
    default:
      dv.setBigUint64(off, b, true);
  }
}

function getUint(dv: DataView, off: number, bytes: number): bigint {
  switch (bytes) {
    case 1:
      return BigInt(dv.getUint8(off));
    case 2:
      return BigInt(dv.getUint16(off, true));
    case 4:
      return BigInt(dv.getUint32(off, true));
    default:
      return dv.getBigUint64(off, true);
  }
}

/** The byte size of each user_regs member that is not a register of the width. */
const REGS_SMALL_FIELDS = ["error_code", "entry_vector", "cs", "saved_upcall_mask", "ss", "es", "ds", "fs", "gs"] as const;

function smallFieldSize(width: GuestWidth, f: (typeof REGS_SMALL_FIELDS)[number]): number {
  if (f === "saved_upcall_mask") return 1;
  if (f === "error_code" || f === "entry_vector") return width === 64 ? 4 : 2;
  return 2;
}

/** The offset of register `n` in cpu_user_regs of `width`, or undefined where it has none. */
export function gprOffset(width: GuestWidth, n: GprName): number | undefined {
  if (width === 64) return CPU_USER_REGS_X86_64[n];
  const c = GPR_NAMES_X86_32[n];
  return c === undefined ? undefined : CPU_USER_REGS_X86_32[c];
}

/** Members that only one width has. */
const ONLY_64 = ["syscall_callback_eip", "fs_base", "gs_base_kernel", "gs_base_user"] as const;
const ONLY_32 = ["event_callback_cs", "failsafe_callback_cs"] as const;
/** unsigned long members at the top level, present in both widths. */
const COMMON_ULONGS = [
  "flags",
  "ldt_base",
  "ldt_ents",
  "gdt_ents",
  "kernel_ss",
  "kernel_sp",
  "event_callback_eip",
  "failsafe_callback_eip",
  "vm_assist",
] as const;
const ULONG_ARRAYS = [
  ["gdt_frames", NR_GDT_FRAMES],
  ["ctrlreg", NR_CTRLREG],
  ["debugreg", NR_DEBUGREG],
] as const;

/**
 * Xen's bytes for `ctx` as a guest of `width` lays the struct out (into `out` if given, which
 * must hold vcpuGuestContextSize(width) bytes from its start). Throws RangeError for a value the width
 * cannot hold (a caller's bug: contexts from guests arrive as bytes).
 */
export function encodeVcpuGuestContext(width: GuestWidth, ctx: VcpuGuestContext, out?: Uint8Array): Uint8Array {
  const size = vcpuGuestContextSize(width);
  const bytes = out ?? new Uint8Array(size);
  if (bytes.length < size) throw new RangeError(`vcpu_guest_context needs ${size} bytes, got ${bytes.length}`);
  bytes.fill(0, 0, size);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
  const ul = width === 64 ? 8 : 4;
  const L = width === 64 ? VCPU_GUEST_CONTEXT_X86_64 : VCPU_GUEST_CONTEXT_X86_32;
  if (ctx.fpu_ctxt.length !== FPU_CTXT_SIZE) throw new RangeError(`vcpu_guest_context.fpu_ctxt: ${ctx.fpu_ctxt.length} bytes, not 512`);
  bytes.set(ctx.fpu_ctxt, L.fpu_ctxt);
  for (const f of COMMON_ULONGS) putUint(dv, L[f], ul, ctx[f], f);
  for (const [f, n] of ULONG_ARRAYS) {
    if (ctx[f].length !== n) throw new RangeError(`vcpu_guest_context.${f}: ${ctx[f].length} entries, not ${n}`);
    for (let i = 0; i < n; i++) putUint(dv, L[f] + i * ul, ul, ctx[f][i]!, `${f}[${i}]`);
  }
  if (width === 64) {
    const L64 = VCPU_GUEST_CONTEXT_X86_64;
    for (const f of ONLY_64) putUint(dv, L64[f], 8, ctx[f], f);
    for (const f of ONLY_32) if (BigInt(ctx[f]) !== 0n) throw new RangeError(`vcpu_guest_context.${f} is i386's only`);
  } else {
    const L32 = VCPU_GUEST_CONTEXT_X86_32;
    for (const f of ONLY_32) putUint(dv, L32[f], 4, ctx[f], f);
    for (const f of ONLY_64) if (BigInt(ctx[f]) !== 0n) throw new RangeError(`vcpu_guest_context.${f} is x86_64's only`);
  }
  const r = ctx.user_regs;
  for (const n of GPR_NAMES) {
    const off = gprOffset(width, n);
    if (off === undefined) {
      if (BigInt(r[n]) !== 0n) throw new RangeError(`vcpu_guest_context.user_regs.${n}: an i386 guest has no such register`);
      continue;
    }
    putUint(dv, L.user_regs + off, ul, r[n], `user_regs.${n}`);
  }
  const R = width === 64 ? CPU_USER_REGS_X86_64 : CPU_USER_REGS_X86_32;
  for (const f of REGS_SMALL_FIELDS) putUint(dv, L.user_regs + R[f], smallFieldSize(width, f), r[f], `user_regs.${f}`);
  const T = width === 64 ? TRAP_INFO_X86_64 : TRAP_INFO_X86_32;
  if (ctx.trap_ctxt.length !== NR_TRAP_CTXT) throw new RangeError(`vcpu_guest_context.trap_ctxt: ${ctx.trap_ctxt.length} entries, not 256`);
  for (let i = 0; i < NR_TRAP_CTXT; i++) {
    const t = ctx.trap_ctxt[i]!;
    const at = L.trap_ctxt + i * T.size;
    putUint(dv, at + T.vector, 1, t.vector, `trap_ctxt[${i}].vector`);
    putUint(dv, at + T.flags, 1, t.flags, `trap_ctxt[${i}].flags`);
    putUint(dv, at + T.cs, 2, t.cs, `trap_ctxt[${i}].cs`);
    putUint(dv, at + T.address, ul, t.address, `trap_ctxt[${i}].address`);
  }
  return bytes;
}

/** The context in Xen's bytes for a guest of `width` (the first vcpuGuestContextSize(width) bytes). */
export function decodeVcpuGuestContext(width: GuestWidth, bytes: Uint8Array): VcpuGuestContext {
  const size = vcpuGuestContextSize(width);
  if (bytes.length < size) throw new RangeError(`vcpu_guest_context needs ${size} bytes, got ${bytes.length}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
  const ul = width === 64 ? 8 : 4;
  const L = width === 64 ? VCPU_GUEST_CONTEXT_X86_64 : VCPU_GUEST_CONTEXT_X86_32;
  const c = emptyVcpuGuestContext();
  c.fpu_ctxt.set(bytes.subarray(L.fpu_ctxt, L.fpu_ctxt + FPU_CTXT_SIZE));
  for (const f of COMMON_ULONGS) c[f] = getUint(dv, L[f], ul);
  for (const [f, n] of ULONG_ARRAYS) for (let i = 0; i < n; i++) c[f][i] = getUint(dv, L[f] + i * ul, ul);
  if (width === 64) for (const f of ONLY_64) c[f] = getUint(dv, VCPU_GUEST_CONTEXT_X86_64[f], 8);
  else for (const f of ONLY_32) c[f] = getUint(dv, VCPU_GUEST_CONTEXT_X86_32[f], 4);
  const r = c.user_regs;
  for (const n of GPR_NAMES) {
    const off = gprOffset(width, n);
    if (off !== undefined) r[n] = getUint(dv, L.user_regs + off, ul);
  }
  const R = width === 64 ? CPU_USER_REGS_X86_64 : CPU_USER_REGS_X86_32;
  for (const f of REGS_SMALL_FIELDS) r[f] = Number(getUint(dv, L.user_regs + R[f], smallFieldSize(width, f)));
  const T = width === 64 ? TRAP_INFO_X86_64 : TRAP_INFO_X86_32;
  for (let i = 0; i < NR_TRAP_CTXT; i++) {
    const at = L.trap_ctxt + i * T.size;
    const t = c.trap_ctxt[i]!;
    t.vector = dv.getUint8(at + T.vector);
    t.flags = dv.getUint8(at + T.flags);
    t.cs = dv.getUint16(at + T.cs, true);
    t.address = getUint(dv, at + T.address, ul);
  }
  return c;
}

/**
 * The byte ranges [offset, end) of `width`'s layout that hold a member of the plain form; every
 * other byte is padding, which encodes as zero.
 */
export function vcpuGuestContextMemberRanges(width: GuestWidth): Array<readonly [number, number]> {
  const ul = width === 64 ? 8 : 4;
  const L = width === 64 ? VCPU_GUEST_CONTEXT_X86_64 : VCPU_GUEST_CONTEXT_X86_32;
  const out: Array<readonly [number, number]> = [[L.fpu_ctxt, L.fpu_ctxt + FPU_CTXT_SIZE]];
  const add = (off: number, len: number) => out.push([off, off + len]);
  for (const f of COMMON_ULONGS) add(L[f], ul);
  for (const [f, n] of ULONG_ARRAYS) add(L[f], n * ul);
  if (width === 64) for (const f of ONLY_64) add(VCPU_GUEST_CONTEXT_X86_64[f], 8);
  else for (const f of ONLY_32) add(VCPU_GUEST_CONTEXT_X86_32[f], 4);
  for (const n of GPR_NAMES) {
    const off = gprOffset(width, n);
    if (off !== undefined) add(L.user_regs + off, ul);
  }
  const R = width === 64 ? CPU_USER_REGS_X86_64 : CPU_USER_REGS_X86_32;
  for (const f of REGS_SMALL_FIELDS) add(L.user_regs + R[f], smallFieldSize(width, f));
  const T = width === 64 ? TRAP_INFO_X86_64 : TRAP_INFO_X86_32;
  for (let i = 0; i < NR_TRAP_CTXT; i++) {
    const at = L.trap_ctxt + i * T.size;
    add(at, 4); // vector, flags, cs
    add(at + T.address, ul);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/** The debug registers' reset values (DR6 and DR7 with only their fixed bits). */
export const X86_DR6_DEFAULT = 0xffff0ff0;
export const X86_DR7_DEFAULT = 0x00000400;

/**
 * vCPU 0's first context as xc_dom_x86's vcpu_x86_64 / vcpu_x86_32 make it: `entry` in rip, the
 * start_info address in rsi (esi), `stackTop` in rsp and kernel_sp, the flat kernel selectors,
 * interrupts enabled, the default debug registers, in kernel mode and online, with cr3 naming
 * `rootMfn`. Addresses are guest virtual addresses (negative: sign-extended canonical).
 */
export function bootVcpuContext(width: GuestWidth, entry: number, startInfo: number, stackTop: number, rootMfn: number): VcpuGuestContext {
  const c = emptyVcpuGuestContext(width);
  const flat = width === 64 ? FLAT_KERNEL_64 : FLAT_KERNEL_32;
  const addr = (a: number) => (width === 64 ? BigInt.asUintN(64, BigInt(a)) : BigInt(a >>> 0));
  const r = c.user_regs;
  r.rip = addr(entry);
  r.rsi = addr(startInfo);
  r.rsp = addr(stackTop);
  r.rflags = BigInt(X86_EFLAGS_IF);
  r.cs = flat.cs;
  r.ss = flat.ss;
  r.ds = flat.ds;
  r.es = flat.ds;
  r.fs = flat.ds;
  r.gs = flat.ds;
  c.kernel_ss = BigInt(flat.ss);
  c.kernel_sp = r.rsp;
  c.debugreg[6] = BigInt(X86_DR6_DEFAULT);
  c.debugreg[7] = BigInt(X86_DR7_DEFAULT);
  c.flags = BigInt(VGCF.in_kernel | VGCF.online);
  c.ctrlreg[3] = xenPfnToCr3(width, rootMfn);
  return c;
}
