// vcpu_guest_context: the ABI codec (src/abi/vcpu_context.ts) and the vCPU state behind it
// (arch_set_info_guest / arch_get_info_guest in src/hypervisor/vcpu_context.ts), for both guest
// widths: exact round trips, Xen 4.17's checks and errnos, the references a context takes, and
// the hypercall result in rax.
//
// Replay a fast-check failure with the seed and path it prints: fc.assert(..., { seed, path }).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { type GuestImage, symbolAt } from "../src/abi/cpu.ts";
import { type GuestWidth, layoutFor } from "../src/abi/layout.ts";
import {
  decodeVcpuGuestContext,
  emptyVcpuGuestContext,
  encodeVcpuGuestContext,
  GPR_NAMES,
  gprOffset,
  type VcpuGuestContext,
  VGCF,
  vcpuGuestContextMemberRanges,
  vcpuGuestContextSize,
  X86_EFLAGS_IF,
  xenCr3ToPfn,
  xenPfnToCr3,
  bootVcpuContext,
} from "../src/abi/vcpu_context.ts";
import { pteHi, pteLo } from "../src/abi/x86.ts";
import { HYPERVISOR, UVMF, VCPUOP, XEN_ERRNO as E } from "../src/abi/xen.ts";
import { XenLinux } from "../src/guest/kernel.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { MFN_FREE } from "../src/hypervisor/memory.ts";
import { PGT, PGT_TYPE_MASK } from "../src/hypervisor/page_info.ts";
import { REG } from "../src/hypervisor/vcpu.ts";
import {
  archGetInfoGuest,
  archGetInfoGuestContext,
  archSetInfoGuest,
  archVcpuReset,
} from "../src/hypervisor/vcpu_context.ts";
import { type BareDomain, bareDomain, newHypervisor } from "./harness.ts";

const WIDTHS: readonly GuestWidth[] = [64, 32];
const CODEC_RUNS = 300;
const ARCH_RUNS = 150;

const MASK = (w: GuestWidth) => (1n << BigInt(w)) - 1n;
const TWO_47 = 1n << 47n;

// ---- arbitraries ----------------------------------------------------------------------------

function ulongArb(w: GuestWidth): fc.Arbitrary<bigint> {
  return fc.oneof(fc.bigInt({ min: 0n, max: MASK(w) }), fc.constantFrom(0n, 1n, MASK(w), 1n << BigInt(w - 1)));
}

/** Any context a `w`-bit guest can express (the other width's members 0). */
function contextArb(w: GuestWidth): fc.Arbitrary<VcpuGuestContext> {
  const ul = ulongArb(w);
  const zeroOr = (present: boolean) => (present ? ul : fc.constant(0n));
  const regs = fc.record(
    Object.fromEntries(GPR_NAMES.map((n) => [n, zeroOr(gprOffset(w, n) !== undefined)])) as Record<(typeof GPR_NAMES)[number], fc.Arbitrary<bigint>>, { noNullPrototype: true });
  const small = fc.record({
    error_code: fc.integer({ min: 0, max: w === 64 ? 0xffffffff : 0xffff }),
    entry_vector: fc.integer({ min: 0, max: w === 64 ? 0xffffffff : 0xffff }),
    cs: fc.integer({ min: 0, max: 0xffff }),
    saved_upcall_mask: fc.integer({ min: 0, max: 0xff }),
    ss: fc.integer({ min: 0, max: 0xffff }),
    es: fc.integer({ min: 0, max: 0xffff }),
    ds: fc.integer({ min: 0, max: 0xffff }),
    fs: fc.integer({ min: 0, max: 0xffff }),
    gs: fc.integer({ min: 0, max: 0xffff }),
  }, { noNullPrototype: true });
  const trap = fc.record({
    vector: fc.integer({ min: 0, max: 0xff }),
    flags: fc.integer({ min: 0, max: 0xff }),
    cs: fc.integer({ min: 0, max: 0xffff }),
    address: ul,
  }, { noNullPrototype: true });
  return fc.record({
    fpu_ctxt: fc.uint8Array({ minLength: 512, maxLength: 512 }),
    flags: ul,
    user_regs: fc.tuple(regs, small).map(([a, b]) => ({ ...a, ...b })),
    trap_ctxt: fc.array(trap, { minLength: 256, maxLength: 256 }),
    ldt_base: ul,
    ldt_ents: ul,
    gdt_frames: fc.array(ul, { minLength: 16, maxLength: 16 }),
    gdt_ents: ul,
    kernel_ss: ul,
    kernel_sp: ul,
    ctrlreg: fc.array(ul, { minLength: 8, maxLength: 8 }),
    debugreg: fc.array(ul, { minLength: 8, maxLength: 8 }),
    event_callback_cs: zeroOr(w === 32),
    event_callback_eip: ul,
    failsafe_callback_cs: zeroOr(w === 32),
    failsafe_callback_eip: ul,
    syscall_callback_eip: zeroOr(w === 64),
    vm_assist: ul,
    fs_base: zeroOr(w === 64),
    gs_base_kernel: zeroOr(w === 64),
    gs_base_user: zeroOr(w === 64),
  }, { noNullPrototype: true });
}

// ---- the codec ------------------------------------------------------------------------------

for (const w of WIDTHS) {
  describe(`vcpu_guest_context codec, ${w}-bit guest`, () => {
    test(`decode(encode(ctx)) is ctx: ${CODEC_RUNS} fast-check contexts`, () => {
      fc.assert(
        fc.property(contextArb(w), (ctx) => {
          const bytes = encodeVcpuGuestContext(w, ctx);
          assert.equal(bytes.length, vcpuGuestContextSize(w));
          assert.deepEqual(decodeVcpuGuestContext(w, bytes), ctx);
        }),
        { numRuns: CODEC_RUNS },
      );
    });

    test(`encode(decode(bytes)) is bytes with the padding cleared: ${CODEC_RUNS} fast-check byte strings`, () => {
      const ranges = vcpuGuestContextMemberRanges(w);
      const member = new Uint8Array(vcpuGuestContextSize(w));
      for (const [a, b] of ranges) member.fill(1, a, b);
      fc.assert(
        fc.property(fc.uint8Array({ minLength: member.length, maxLength: member.length }), (raw) => {
          const expected = raw.map((x, i) => (member[i] ? x : 0));
          assert.deepEqual(encodeVcpuGuestContext(w, decodeVcpuGuestContext(w, raw)), expected);
        }),
        { numRuns: CODEC_RUNS },
      );
    });

    test("the members tile the struct without overlap; only named padding is left over", () => {
      const ranges = vcpuGuestContextMemberRanges(w);
      for (let i = 1; i < ranges.length; i++) assert.ok(ranges[i]![0] >= ranges[i - 1]![1], `overlap at ${ranges[i]![0]}`);
      const covered = ranges.reduce((n, [a, b]) => n + (b - a), 0);
      // x86_64: cpu_user_regs' _pad0-6 (2 + 3 + 5 * 6 bytes) and 4 bytes after each trap_info's cs;
      // i386: _pad0 (1 byte) and _pad1-5 (2 bytes each).
      const padding = w === 64 ? 2 + 3 + 5 * 6 + 256 * 4 : 1 + 5 * 2;
      assert.equal(covered + padding, vcpuGuestContextSize(w));
    });

    test("numbers are taken as safe integers, negative ones as two's complement; misfits are RangeErrors", () => {
      const c = emptyVcpuGuestContext(w);
      c.user_regs.rip = -0x1000;
      c.kernel_sp = 0x1234;
      c.ctrlreg[3] = xenPfnToCr3(w, 0x12345);
      const d = decodeVcpuGuestContext(w, encodeVcpuGuestContext(w, c));
      assert.equal(d.user_regs.rip, BigInt.asUintN(w, -0x1000n));
      assert.equal(d.kernel_sp, 0x1234n);
      assert.equal(xenCr3ToPfn(w, d.ctrlreg[3]!), 0x12345);
      assert.throws(() => encodeVcpuGuestContext(w, { ...c, flags: 1n << BigInt(w) }), RangeError);
      assert.throws(() => encodeVcpuGuestContext(w, { ...c, flags: 0.5 }), RangeError);
      assert.throws(() => encodeVcpuGuestContext(w, { ...c, flags: 2 ** 60 }), RangeError);
      if (w === 32) {
        assert.throws(() => encodeVcpuGuestContext(w, { ...c, fs_base: 1n }), RangeError);
        assert.throws(() => encodeVcpuGuestContext(w, { ...c, user_regs: { ...c.user_regs, r8: 1n } }), RangeError);
      } else assert.throws(() => encodeVcpuGuestContext(w, { ...c, event_callback_cs: 1n }), RangeError);
      assert.throws(() => decodeVcpuGuestContext(w, new Uint8Array(100)), RangeError);
    });

    test("xen_pfn_to_cr3 and xen_cr3_to_pfn are inverse (i386 folds pfn bits 20-31 into the low 12)", () => {
      for (const pfn of [0, 1, 0xfffff, 0x100000, 0xabcdef, 0xffffffff]) assert.equal(xenCr3ToPfn(w, xenPfnToCr3(w, pfn)), pfn);
      if (w === 32) assert.equal(xenPfnToCr3(32, 0x100001), 0x1001n);
      else assert.equal(xenPfnToCr3(64, 0x100001), 0x100001000n);
    });
  });
}

// ---- arch_set_info_guest / arch_get_info_guest on a real domain ---------------------------

const HOST_CR0 = 0x80050033n;
const CR4_GUEST = 0x4n | 0x8n | 0x10000n | 0x40000n;
const CR4_VISIBLE = 0x660n;

interface Env {
  hv: Hypervisor;
  b: BareDomain;
  w: GuestWidth;
  /** The root vCPU 0 runs on (a pinned L4, or a PAE L3). */
  root: number;
  /** Frames of the domain mapped read-only, and otherwise unused: GDT frames and user L4s. */
  spare: number[];
}

/** A domain whose vCPU 1 is as the builder leaves a secondary vCPU: no context, down. */
function env(w: GuestWidth): Env {
  const hv = newHypervisor();
  const b = bareDomain(hv, { width: w, vcpus: 2, pages: 64 });
  const v1 = b.d.vcpus[1]!;
  archVcpuReset(hv, v1);
  const spare: number[] = [];
  for (let pfn = 40; pfn < 44; pfn++) {
    const mfn = b.d.p2m[pfn]!;
    hv.memory.u32(mfn).fill(0);
    assert.equal(remap(b, pfn, 0x61), 0, `read-only mapping of pfn ${pfn}`);
    spare.push(mfn);
  }
  return { hv, b, w, root: b.v0.guestTable, spare };
}

/** update_va_mapping of pfn's direct-map address to its own frame with `flags`, flushing it. */
function remap(b: BareDomain, pfn: number, flags: number): number {
  const mfn = b.d.p2m[pfn]!;
  const lo = pteLo(mfn, flags);
  const hi = pteHi(mfn);
  const va = b.va(pfn);
  return b.d.width === 64
    ? b.v0.hypercall(HYPERVISOR.update_va_mapping, va, hi * 2 ** 32 + lo, UVMF.INVLPG)
    : b.v0.hypercall(HYPERVISOR.update_va_mapping, va >>> 0, lo, hi, UVMF.INVLPG);
}

const canonicalArb = fc.oneof(fc.bigInt({ min: 0n, max: TWO_47 - 1n }), fc.bigInt({ min: (1n << 64n) - TWO_47, max: (1n << 64n) - 1n }));
/** __addr_ok on x86_64: below 2^47 or from HYPERVISOR_VIRT_END up. */
const addrOkArb = fc.oneof(fc.bigInt({ min: 0n, max: TWO_47 - 1n }), fc.bigInt({ min: 0xffff880000000000n, max: (1n << 64n) - 1n }));

/**
 * A context `e`'s vCPU 1 takes and gives back unchanged: Xen's normal form (RPLs already the
 * kernel's, IF set, CR0 the host's, cr4 within the policy, reserved debug-register bits as
 * set_debugreg leaves them...), with real frames for cr3, the user cr3 and the GDT.
 */
function normalContextArb(e: Env): fc.Arbitrary<VcpuGuestContext> {
  const w = e.w;
  const base = contextArb(w);
  const addr = w === 64 ? canonicalArb : fc.bigInt({ min: 0n, max: 0xffffffffn });
  return fc.tuple(base, fc.gen()).map(([c, g]) => {
    const r = c.user_regs;
    const kernelRpl = w === 64 ? 3 : 1;
    const withRpl = (sel: number, rpl = kernelRpl) => (sel & ~3) | (w === 64 ? 3 : Math.max(sel & 3, rpl));
    c.flags = (BigInt(c.flags) & ~BigInt(VGCF.in_kernel)) | BigInt(VGCF.i387_valid);
    r.rip = g(() => addr);
    r.rsp = g(() => addr);
    r.rflags = BigInt(r.rflags) | BigInt(X86_EFLAGS_IF);
    r.cs = withRpl(r.cs);
    r.ss = withRpl(r.ss);
    for (const t of c.trap_ctxt) {
      t.cs = withRpl(t.cs);
      t.address = g(() => addr);
    }
    const ldtEnts = g(() => fc.integer({ min: 0, max: 8192 }));
    c.ldt_ents = BigInt(ldtEnts);
    c.ldt_base = ldtEnts === 0 ? 0n : BigInt.asUintN(w, g(() => (w === 64 ? addrOkArb.filter((a) => a < TWO_47 || a >= (1n << 64n) - TWO_47) : addr)) & ~0xfffn);
    const gdtEnts = g(() => fc.integer({ min: 0, max: 2 * 512 }));
    c.gdt_ents = BigInt(gdtEnts);
    c.gdt_frames = c.gdt_frames.map((_, i) => (i < Math.ceil(gdtEnts / 512) ? BigInt(e.spare[i]!) : 0n));
    c.kernel_ss = BigInt(withRpl(Number(BigInt(c.kernel_ss) & 0xffffn))) | (BigInt(c.kernel_ss) & ~0xffffn);
    c.kernel_sp = g(() => addr);
    c.ctrlreg[0] = HOST_CR0 | (BigInt(c.ctrlreg[0]!) & 0x8n);
    c.ctrlreg[3] = xenPfnToCr3(w, e.root);
    c.ctrlreg[4] = (BigInt(c.ctrlreg[4]!) & CR4_GUEST) | CR4_VISIBLE;
    // x86_64: ring 3 is the kernel's when in kernel mode; out of it, a user base pointer is needed.
    // i386: in kernel mode exactly when cs is ring 1.
    if (w === 64) {
      const inKernel = g(() => fc.boolean());
      const user = g(() => fc.boolean());
      if (inKernel) c.flags = BigInt(c.flags) | BigInt(VGCF.in_kernel);
      c.ctrlreg[1] = !inKernel || user ? xenPfnToCr3(w, e.spare[3]!) : 0n;
    } else if ((r.cs & 3) === 1) c.flags = BigInt(c.flags) | BigInt(VGCF.in_kernel);
    const dr = (x: bigint) => (w === 64 ? g(() => addrOkArb) : x);
    for (let i = 0; i < 4; i++) c.debugreg[i] = dr(BigInt(c.debugreg[i]!));
    c.debugreg[4] = 0n;
    c.debugreg[5] = 0n;
    c.debugreg[6] = (BigInt(c.debugreg[6]!) & 0xffffefffn) | 0xffff0ff0n;
    const dr7 = ((BigInt(c.debugreg[7]!) & 0xffff27ffn) | 0x400n) & ~0x2000n;
    c.debugreg[7] = dr7;
    // An I/O breakpoint needs CR4.DE.
    if (dr7 & 0xffn) for (let i = 16n; i < 32n; i += 4n) if (((dr7 >> i) & 3n) === 2n) c.ctrlreg[4] = BigInt(c.ctrlreg[4]!) | 0x8n;
    c.event_callback_eip = g(() => addr);
    c.failsafe_callback_eip = g(() => addr);
    if (w === 64) {
      c.syscall_callback_eip = g(() => addr);
      c.fs_base = g(() => addr);
      c.gs_base_kernel = g(() => addr);
      c.gs_base_user = g(() => addr);
    } else {
      // compat's fixup keeps the upper bits of these unsigned ints and raises an RPL of 0 to 1.
      for (const f of ["event_callback_cs", "failsafe_callback_cs"] as const) if ((BigInt(c[f]) & 3n) === 0n) c[f] = BigInt(c[f]) | 1n;
    }
    c.vm_assist = 0n; // vCPU 1's is the domain's, which vCPU 0's context set
    return c;
  });
}

function refs(hv: Hypervisor, mfns: readonly number[]): string {
  return mfns.map((m) => `${m}:${hv.mm.pages.count[m]}/${hv.mm.pages.typeCount[m]}`).join(" ");
}

for (const w of WIDTHS) {
  describe(`arch_set_info_guest / arch_get_info_guest, ${w}-bit guest`, () => {
    test(`set then get gives back exactly the bytes given: ${ARCH_RUNS} fast-check contexts on vCPU 1`, () => {
      const e = env(w);
      const v1 = e.b.d.vcpus[1]!;
      const watched = [e.root, ...e.spare];
      const before = refs(e.hv, watched);
      fc.assert(
        fc.property(normalContextArb(e), (ctx) => {
          archVcpuReset(e.hv, v1);
          const bytes = encodeVcpuGuestContext(w, ctx);
          assert.equal(archSetInfoGuest(e.hv, v1, bytes), 0);
          assert.ok(v1.initialised);
          assert.equal(v1.down, (BigInt(ctx.flags) & BigInt(VGCF.online)) === 0n);
          assert.deepEqual(archGetInfoGuest(v1), bytes);
          assert.deepEqual(archGetInfoGuestContext(v1), decodeVcpuGuestContext(w, bytes));
        }),
        { numRuns: ARCH_RUNS },
      );
      archVcpuReset(e.hv, v1);
      assert.equal(refs(e.hv, watched), before, "every reference a context took was given back by vcpu_reset");
    });

    test("the context's pieces land where the vCPU keeps them: rip/rsi as the entry, cr3 as the base pointer, callbacks", () => {
      const e = env(w);
      const v1 = e.b.d.vcpus[1]!;
      const L = layoutFor(w);
      const entry = L.PAGE_OFFSET + 0x1300;
      const c = bootVcpuContext(w, entry, L.PAGE_OFFSET + 0x10000, L.PAGE_OFFSET + 0x20000, e.root);
      c.event_callback_eip = BigInt.asUintN(w, BigInt(L.PAGE_OFFSET + 0x1100));
      c.failsafe_callback_eip = BigInt.asUintN(w, BigInt(L.PAGE_OFFSET + 0x1200));
      const typeRefs = e.hv.mm.pages.typeCount[e.root]!;
      assert.equal(archSetInfoGuest(e.hv, v1, c), 0);
      assert.equal(v1.guestTable, e.root);
      assert.equal(e.hv.mm.pages.typeCount[e.root], typeRefs + 1, "cr3 holds a root type reference");
      assert.equal(v1.rip, entry);
      assert.equal(v1.startAddress, entry);
      assert.equal(v1.startArg, L.PAGE_OFFSET + 0x10000);
      assert.equal(v1.reg(REG.rsp), L.PAGE_OFFSET + 0x20000);
      assert.equal(v1.eventCallback, L.PAGE_OFFSET + 0x1100);
      assert.equal(v1.failsafeCallback, L.PAGE_OFFSET + 0x1200);
      assert.equal(v1.kernelSp, L.PAGE_OFFSET + 0x20000);
      assert.equal(v1.down, false, "VGCF_online");
      assert.equal(v1.started, false, "enters at rip when it first runs");
      assert.equal(v1.queued, false, "as in Xen, arch_set_info_guest wakes nobody");
    });

    test("Xen's normalisation: selectors get the kernel RPL, IF is forced, CR0 is the host's, debug registers keep their reserved bits", () => {
      const e = env(w);
      const v1 = e.b.d.vcpus[1]!;
      const c = bootVcpuContext(w, 0x1000, 0, 0, e.root);
      c.user_regs.cs = 0xe030;
      c.user_regs.ss = 0;
      c.user_regs.rflags = 0x3000n; // IOPL 3, IF clear
      c.ctrlreg[0] = 0n;
      c.ctrlreg[4] = 0xffffffffn;
      c.debugreg[6] = 0n;
      c.debugreg[7] = 0x2000n; // GD: refused, DR7 stays at its default
      c.debugreg[4] = 5n;
      assert.equal(archSetInfoGuest(e.hv, v1, c), 0);
      const got = archGetInfoGuestContext(v1);
      const rpl = w === 64 ? 3 : 1;
      assert.equal(got.user_regs.cs, 0xe030 | rpl);
      assert.equal(got.user_regs.ss, rpl);
      assert.equal(got.user_regs.rflags, 0x3200n, "IOPL comes back, IF is set");
      assert.equal(v1.iopl, 0x3000);
      assert.equal(got.ctrlreg[0], HOST_CR0);
      assert.equal(got.ctrlreg[4], CR4_GUEST | CR4_VISIBLE);
      assert.equal(got.debugreg[6], 0xffff0ff0n);
      assert.equal(got.debugreg[7], 0x400n);
      assert.equal(got.debugreg[4], 0n, "DR4/DR5 are not kept");
      assert.equal((BigInt(got.flags) & BigInt(VGCF.i387_valid)) !== 0n, false, "no FPU image given");
      assert.equal(new DataView(got.fpu_ctxt.buffer).getUint32(24, true), 0x1f80, "MXCSR reset");
      assert.equal(new DataView(got.fpu_ctxt.buffer).getUint16(0, true), 0x037f, "FCW as vcpu_init_fpu left it");
    });

    test("errors: bad cr3, a frame that is no valid table, bad flags, non-canonical addresses, LDT/GDT limits, vm_assist, short bytes", () => {
      const e = env(w);
      const { hv } = e;
      const v1 = e.b.d.vcpus[1]!;
      const ok = () => bootVcpuContext(w, 0x1000, 0, 0, e.root);
      const set = (c: VcpuGuestContext | Uint8Array) => archSetInfoGuest(hv, v1, c);
      const watched = [e.root, ...e.spare];
      const before = refs(hv, watched);

      // cr3 naming a frame that is not the domain's: another domain's root, a free frame.
      const other = bareDomain(hv, { width: w, vcpus: 1 });
      const c1 = ok();
      c1.ctrlreg[3] = xenPfnToCr3(w, other.v0.guestTable);
      assert.equal(set(c1), -E.EINVAL);
      let free = 1;
      while (hv.memory.owner[free] !== MFN_FREE && free < hv.memory.nrFrames - 1) free++;
      c1.ctrlreg[3] = xenPfnToCr3(w, free);
      assert.equal(set(c1), -E.EINVAL);
      // The domain's frame, but not one that can be a root: mapped writable, or with an entry
      // that maps another domain's frame.
      c1.ctrlreg[3] = xenPfnToCr3(w, e.b.d.p2m[5]!);
      assert.equal(set(c1), -E.EINVAL);
      const bad = e.spare[2]!;
      hv.memory.u32(bad)[0] = pteLo(other.d.p2m[3]!, 0x63);
      hv.memory.u32(bad)[1] = pteHi(other.d.p2m[3]!);
      c1.ctrlreg[3] = xenPfnToCr3(w, bad);
      assert.equal(set(c1), -E.EINVAL);
      hv.memory.u32(bad).fill(0);
      assert.equal(v1.initialised, false);
      assert.equal(v1.guestTable, 0);

      // x86_64 out of kernel mode needs a user base pointer; a user cr3 that is no L4 is -EINVAL.
      const c2 = ok();
      c2.flags = BigInt(VGCF.online);
      if (w === 64) {
        assert.equal(set(c2), -E.EINVAL);
        c2.ctrlreg[1] = xenPfnToCr3(w, e.b.d.p2m[6]!);
        assert.equal(set(c2), -E.EINVAL);
        assert.equal(v1.guestTable, e.root, "as in Xen, the kernel base pointer stays when the user one fails");
        archVcpuReset(hv, v1);
      } else assert.equal(set(c2), 0);
      archVcpuReset(hv, v1);

      if (w === 64) {
        for (const f of ["kernel_sp", "fs_base", "gs_base_kernel", "gs_base_user", "event_callback_eip", "failsafe_callback_eip", "syscall_callback_eip"] as const) {
          const c = ok();
          c[f] = 1n << 47n;
          assert.equal(set(c), -E.EINVAL, `non-canonical ${f}`);
        }
        const c = ok();
        c.user_regs.rip = 0x800000000000n;
        assert.equal(set(c), -E.EINVAL, "non-canonical rip");
        const t = ok();
        t.trap_ctxt[14]!.address = 0x800000000000n;
        assert.equal(set(t), -E.EINVAL, "non-canonical trap handler");
        const l = ok();
        l.ldt_base = 0xffff800000000000n; // Xen's own range: not __addr_ok even without entries
        assert.equal(set(l), -E.EINVAL);
      }
      const l1 = ok();
      l1.ldt_base = 0x1800n;
      l1.ldt_ents = 1n;
      assert.equal(set(l1), -E.EINVAL, "LDT base not page-aligned");
      l1.ldt_base = 0x2000n;
      l1.ldt_ents = 8193n;
      assert.equal(set(l1), -E.EINVAL, "more than 8192 LDT entries");

      const g1 = ok();
      g1.gdt_ents = 16n * 512n + 1n;
      assert.equal(set(g1), -E.EINVAL, "more than 16 GDT frames");
      g1.gdt_ents = 7169n;
      assert.equal(set(g1), -E.EINVAL, "into Xen's reserved GDT entries");
      g1.gdt_ents = 1024n;
      g1.gdt_frames[0] = BigInt(e.spare[0]!);
      g1.gdt_frames[1] = BigInt(e.b.d.p2m[7]!); // mapped writable: no seg_desc type
      assert.equal(set(g1), -E.EINVAL);
      g1.gdt_frames[1] = BigInt(e.spare[1]!);
      g1.ctrlreg[3] = xenPfnToCr3(w, free);
      assert.equal(set(g1), -E.EINVAL, "a bad cr3 after a good GDT gives the GDT back");
      assert.equal(v1.gdtEnts, 0);
      assert.equal(refs(hv, watched), before, "no reference is left behind by the refusals");

      // vm_assist: vCPU 0 checks it against the width's valid set.
      const v0 = e.b.v0;
      archVcpuReset(hv, v0);
      const a = ok();
      a.vm_assist = 1n << 6n;
      assert.equal(archSetInfoGuest(hv, v0, a), -E.EINVAL);
      a.vm_assist = 1n << 32n; // m2p_strict: 64-bit guests only
      assert.equal(archSetInfoGuest(hv, v0, a), w === 64 ? 0 : -E.EINVAL);
      assert.equal(e.b.d.vmAssist, w === 64 ? 2 ** 32 : 0);

      assert.equal(set(new Uint8Array(vcpuGuestContextSize(w) - 1)), -E.EFAULT, "a short context");
    });

    test("an initialised vCPU keeps its base pointers, GDT and LDT: -EOPNOTSUPP for others, 0 for the same", () => {
      const e = env(w);
      const v1 = e.b.d.vcpus[1]!;
      const c = bootVcpuContext(w, 0x1000, 0, 0, e.root);
      c.gdt_ents = 16n;
      c.gdt_frames[0] = BigInt(e.spare[0]!);
      c.ldt_base = 0x5000n;
      c.ldt_ents = 3n;
      assert.equal(archSetInfoGuest(e.hv, v1, c), 0);
      const again = structuredClone(c);
      again.user_regs.rax = 42n;
      again.flags = BigInt(VGCF.in_kernel); // not online: the vCPU goes down
      assert.equal(archSetInfoGuest(e.hv, v1, again), 0);
      assert.equal(v1.reg(REG.rax), 42);
      assert.equal(v1.down, true);
      const changes: Array<[string, (x: VcpuGuestContext) => void]> = [
        ["cr3", (x) => (x.ctrlreg[3] = xenPfnToCr3(w, e.spare[3]!))],
        ["gdt_ents", (x) => (x.gdt_ents = 17n)],
        ["gdt_frames[0]", (x) => (x.gdt_frames[0] = BigInt(e.spare[1]!))],
        ["ldt_ents", (x) => (x.ldt_ents = 4n)],
        ["ldt_base", (x) => (x.ldt_base = 0x6000n)],
      ];
      if (w === 64) changes.push(["ctrlreg[1]", (x) => (x.ctrlreg[1] = xenPfnToCr3(w, e.spare[3]!))]);
      for (const [what, change] of changes) {
        const x = structuredClone(c);
        change(x);
        assert.equal(archSetInfoGuest(e.hv, v1, x), -E.EOPNOTSUPP, what);
      }
      assert.equal(v1.guestTable, e.root);
      assert.equal(v1.gdtFrames[0], e.spare[0]);
    });

    test("VCPUOP_initialise copies the struct from guest memory and uses arch_set_info_guest (-EFAULT, -EEXIST, Xen's checks)", () => {
      const e = env(w);
      const { b } = e;
      const v1 = b.d.vcpus[1]!;
      const ctx = b.va(4);
      const write = (c: VcpuGuestContext) => {
        const bytes = encodeVcpuGuestContext(w, c);
        for (let i = 0; i < bytes.length; i += 4) b.v0.write32(ctx + i, new DataView(bytes.buffer).getUint32(i, true));
      };
      const op = (vcpu: number, at: number) => b.v0.hypercall(HYPERVISOR.vcpu_op, VCPUOP.initialise, vcpu, at);
      const c = bootVcpuContext(w, layoutFor(w).PAGE_OFFSET + 0x1300, 0, 0, e.root);
      c.flags = BigInt(VGCF.in_kernel);
      c.ldt_ents = 1n;
      c.ldt_base = 0x1001n;
      write(c);
      assert.equal(op(1, ctx), -E.EINVAL, "the LDT check");
      c.ldt_ents = 0n;
      c.ldt_base = 0n;
      write(c);
      assert.equal(op(1, 0x7000_0000), -E.EFAULT);
      assert.equal(op(1, ctx), 0);
      assert.equal(v1.initialised, true);
      assert.equal(v1.down, true, "no VGCF_online: VCPUOP_up brings it up");
      assert.deepEqual(archGetInfoGuestContext(v1).user_regs.rip, BigInt.asUintN(w, BigInt(layoutFor(w).PAGE_OFFSET + 0x1300)));
      assert.equal(op(1, ctx), -E.EEXIST);
      assert.equal(op(1, 0x7000_0000), -E.EFAULT, "the copy comes before -EEXIST");
      assert.equal(b.v0.hypercall(HYPERVISOR.vcpu_op, VCPUOP.up, 1, 0), 0);
      assert.equal(v1.down, false);
    });

    test("a hypercall's return value lands in rax, and an upcall's hypercalls do not disturb it", () => {
      const e = env(w);
      const v0 = e.b.v0;
      const wrap = (x: number) => (w === 64 ? x : x >>> 0);
      assert.equal(v0.hypercall(999), -E.ENOSYS);
      assert.equal(v0.reg(REG.rax), wrap(-E.ENOSYS));
      assert.equal(archGetInfoGuestContext(v0).user_regs.rax, BigInt.asUintN(w, BigInt(-E.ENOSYS)));
      assert.equal(v0.hypercall(HYPERVISOR.vcpu_op, VCPUOP.is_up, 0, 0), 1);
      assert.equal(v0.reg(REG.rax), 1);
      // An upcall that makes a hypercall of its own, delivered on the way out of the hypercall.
      const bytes = e.b.d.sharedInfoBytes;
      e.b.image.enter = (address: number, cpu) => {
        if (address !== 0x2000) return;
        bytes[v0.vcpuInfoOff] = 0; // the guest takes the pending flag
        cpu.hypercall(999);
      };
      e.hv.sched.evict(v0);
      v0.pcpu = 0;
      bytes[v0.vcpuInfoOff] = 1; // evtchn_upcall_pending
      bytes[v0.vcpuInfoOff + 1] = 0;
      assert.equal(v0.hypercall(HYPERVISOR.vcpu_op, VCPUOP.is_up, 0, 0), 1);
      assert.equal(v0.upcalls, 1, "the upcall ran");
      assert.equal(v0.reg(REG.rax), 1, "the interrupted hypercall's result is back in rax");
    });
  });
}

describe("symbolic rip", () => {
  test("XenLinux names its entry points; the boot context enters startup_xen with start_info in rsi/esi", () => {
    for (const w of WIDTHS) {
      const k = new XenLinux(w);
      const base = layoutFor(w).PAGE_OFFSET;
      assert.deepEqual(Object.keys(k.symbols).sort(), ["cpu_bringup_and_idle", "startup_xen", "xen_failsafe_callback", "xen_hypervisor_callback", "xen_suspend_return"]);
      assert.equal(k.symbols.startup_xen, k.entry);
      assert.equal(symbolAt(k, base + 0x1300), "cpu_bringup_and_idle");
      assert.equal(symbolAt(k, base + 0x1301), undefined);
      const e = env(w);
      const v1 = e.b.d.vcpus[1]!;
      const startInfo = base + 16 * 4096;
      assert.equal(archSetInfoGuest(e.hv, v1, bootVcpuContext(w, k.symbols.startup_xen, startInfo, 0, e.root)), 0);
      const c = archGetInfoGuestContext(v1);
      assert.equal(c.user_regs.rip, BigInt.asUintN(w, BigInt(k.symbols.startup_xen)));
      assert.equal(c.user_regs.rsi, BigInt.asUintN(w, BigInt(startInfo)));
      // The first entry is at the context's rip, with rsi (esi) as its argument.
      const entered: Array<[number, number]> = [];
      (e.b.image as { enter: GuestImage["enter"] }).enter = (address, _cpu, arg) => {
        entered.push([address, arg]);
      };
      e.hv.runVcpu(v1);
      assert.deepEqual(entered, [[k.symbols.startup_xen, startInfo]]);
      assert.equal(e.hv.mm.pages.type[e.root]! & PGT_TYPE_MASK, w === 64 ? PGT.l4 : PGT.l3);
    }
  });
});
