// Bad save images against xl restore (openImage, then Host.restore): a fast-check fuzz of mutants
// of real images (a 64-bit and a PAE guest) restored one after another into one long-lived host,
// each refused with one of the toolstack's own errors and a message, or restored and destroyed;
// either way nothing is left behind (domains, xenstore, frames, mappings, dom0's channels) and the
// host and a healthy guest run on. Then handpicked corruptions whose messages must name what is
// wrong, and a stream written here from the spec (not by our save) that restores.
//
// Replay a fast-check failure with the seed and path it prints: fc.assert(..., { seed, path }).

import assert from "node:assert/strict";
import { before, test } from "node:test";
import fc from "fast-check";
import { PFINFO } from "../src/abi/domctl.ts";
import { layoutFor } from "../src/abi/layout.ts";
import {
  bootVcpuContext,
  decodeVcpuGuestContext,
  encodeVcpuGuestContext,
  type VcpuGuestContext,
  vcpuGuestContextSize,
  xenCr3ToPfn,
  xenPfnToCr3,
} from "../src/abi/vcpu_context.ts";
import { _PAGE_PRESENT, pteMfn } from "../src/abi/x86.ts";
import type { XenLinux } from "../src/guest/kernel.ts";
import { auditEvtchn } from "../src/harness/audit.ts";
import { auditMm } from "../src/harness/audit_mm.ts";
import { ECS } from "../src/hypervisor/evtchn.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { PROT_READ } from "../src/hypervisor/domctl.ts";
import { StreamError } from "../src/toolstack/libxc/sr_format.ts";
import { RestoreError } from "../src/toolstack/libxc/sr_restore_x86_pv.ts";
import { BytesSink, type ByteSource, bytesSource } from "../src/toolstack/libxc/sr_stream.ts";
import { GuestCfgError, type GuestConfig, parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { HostError, type HostDomain } from "../src/toolstack/libxl/host.ts";
import { ImageFormatError, type OpenedImage, openImage, writeSaveImage } from "../src/toolstack/libxl/save_restore.ts";
import { retrievedConfig } from "../src/toolstack/xl/host_info.ts";
import { configTextFromJson } from "../src/toolstack/xl/save_cmds.ts";
import { libxlDomainConfig, yajlBeautify } from "../src/toolstack/xl/xl_format.ts";

import { MS, newHost, run, runUntil, type TestHost } from "./sr_harness.ts";

const PAGE = 4096;

// ---- hosts and images ---------------------------------------------------------------------------

function guestConfig(name: string, width: 32 | 64, memory: number, vcpus: number, workload: string): GuestConfig {
  const text = `name = "${name}"\nmemory = ${memory}\nvcpus = ${vcpus}\nguest_width = ${width}\nworkload = "${workload}"\non_crash = "preserve"\n`;
  return parseGuestConfig(text, `${name}.cfg`);
}

/** A guest that has run its workload a while, suspended, and its image (what `xl save` writes). */
function makeImage(th: TestHost, name: string, width: 32 | 64, memory: number): Uint8Array {
  const hd = th.host.create(guestConfig(name, width, memory, 2, "forkexec=3,mmapstress=1"));
  assert.ok(runUntil(th, 1000, () => th.host.xs.tryRead(`/local/domain/${hd.domid}/control/feature-suspend`) === "1"), `${name} came up`);
  run(th, 50);
  th.host.requestSuspend(hd.domid);
  assert.ok(
    runUntil(th, 2000, () => th.host.suspended(hd.domid)),
    `${name} suspended`,
  );
  const json = yajlBeautify(libxlDomainConfig(retrievedConfig(th.host, hd.domid)!));
  const sink = new BytesSink();
  const gen = writeSaveImage(th.host.xc, hd.domid, sink, json);
  while (!gen.next().done) {
    // a batch per step
  }
  th.host.destroy(hd.domid);
  return sink.bytes();
}

// ---- where things are in an image ---------------------------------------------------------------

interface RecAt {
  index: number;
  type: string;
  offset: number;
  length: number;
}

interface PageAt {
  /** Index into ImageMap.recs of its PAGE_DATA record. */
  rec: number;
  entry: number;
  /** Offset of its u64 pfn/type entry. */
  entryOff: number;
  pfn: number;
  type: number;
  /** Offset of its data, if it has any. */
  dataOff: number | undefined;
}

interface ImageMap {
  name: string;
  width: 32 | 64;
  bytes: Uint8Array;
  /** Where libxl's header starts (after xl's header and its config). */
  xlSize: number;
  /** Where libxc's image header starts. */
  libxcAt: number;
  /** libxc's records, by index. */
  recs: RecAt[];
  /** libxl's records (LIBXC_CONTEXT, END). */
  libxlRecs: RecAt[];
  pages: PageAt[];
  byPfn: Map<number, PageAt>;
  /** Pages that are pagetables (L1-L4, pinned or not). */
  tables: PageAt[];
  maxPfn: number;
  p2mBody: number;
  p2mFrames: number[];
  vcpus: { id: number; ctxOff: number; ctx: VcpuGuestContext }[];
  startInfoPfn: number;
  storePfn: number;
  consolePfn: number;
}

const levelOf = (type: number) => ((type >>> 0) / 2 ** PFINFO.LTAB_SHIFT) & 7;

function mapImage(name: string, bytes: Uint8Array): ImageMap {
  const img = openImage(bytesSource(bytes));
  const width: 32 | 64 = img.pvInfo.guestWidth === 8 ? 64 : 32;
  const xlSize = img.xl.size;
  const libxl = img.rest.libxl;
  const recs: RecAt[] = [];
  const pages: PageAt[] = [];
  const vcpus: ImageMap["vcpus"] = [];
  let p2mBody = -1;
  let p2mFrames: number[] = [];
  let maxPfn = -1;
  const inner = libxl.libxc();
  for (let r = img.rest.first as ReturnType<typeof inner.next>; r !== undefined; r = r.type === "END" ? undefined : inner.next()) {
    const at = recs.length;
    recs.push({ index: r.index, type: r.type, offset: r.offset, length: r.length });
    const body = r.offset + 8;
    if (r.type === "PAGE_DATA") {
      const count = r.body.length;
      let k = 0;
      r.body.forEach((p, i) => {
        const dataOff = p.data ? body + 8 + 8 * count + PAGE * k++ : undefined;
        pages.push({ rec: at, entry: i, entryOff: body + 8 + 8 * i, pfn: p.pfn, type: p.type >>> 0, dataOff });
      });
    } else if (r.type === "X86_PV_P2M_FRAMES") {
      p2mBody = body;
      p2mFrames = [...r.body.frames];
      maxPfn = r.body.endPfn;
    } else if (r.type === "X86_PV_VCPU_BASIC") {
      vcpus.push({ id: r.body.vcpuId, ctxOff: body + 8, ctx: decodeVcpuGuestContext(width, r.body.context) });
    }
  }
  const libxlRecs: RecAt[] = [{ index: 0, type: "LIBXC_CONTEXT", offset: xlSize + 16, length: 0 }];
  for (let r = libxl.next(); r !== undefined; r = libxl.next()) libxlRecs.push({ index: r.index, type: r.type, offset: r.offset, length: r.length });
  const byPfn = new Map(pages.map((p) => [p.pfn, p]));
  const startInfoPfn = Number(vcpus[0]!.ctx.user_regs.rdx);
  const si = byPfn.get(startInfoPfn)!;
  const S = layoutFor(width).start_info;
  const dv = new DataView(bytes.buffer, bytes.byteOffset + si.dataOff!, PAGE);
  const ulong = (off: number) => (width === 64 ? Number(dv.getBigUint64(off, true)) : dv.getUint32(off, true));
  return {
    name,
    width,
    bytes,
    xlSize,
    libxcAt: xlSize + 16 + 8,
    recs,
    libxlRecs,
    pages,
    byPfn,
    tables: pages.filter((p) => levelOf(p.type) >= 1 && levelOf(p.type) <= 4 && p.dataOff !== undefined),
    maxPfn,
    p2mBody,
    p2mFrames,
    vcpus,
    startInfoPfn,
    storePfn: ulong(S.store_mfn),
    consolePfn: ulong(S.console_mfn),
  };
}

// ---- mutants ------------------------------------------------------------------------------------

interface Patch {
  at: number;
  bytes: Uint8Array;
}

interface Mutant {
  what: string;
  patches: Patch[];
  /** The image cut to this many bytes. */
  cut?: number;
}

const u8 = (at: number, v: number): Patch => ({ at, bytes: Uint8Array.of(v) });
function u32(at: number, v: number): Patch {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return { at, bytes: b };
}
function u64(at: number, v: bigint): Patch {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return { at, bytes: b };
}

/**
 * The image with the mutant's patches and cut, without a copy of it per mutant: read() gives views
 * of what is unchanged; readInto() (which restore uses for PAGE_DATA, as with xl's file) copies.
 */
function mutantSource(base: Uint8Array, m: Mutant): ByteSource {
  const end = Math.min(m.cut ?? base.length, base.length);
  let pos = 0;
  const patch = (out: Uint8Array, from: number) => {
    for (const p of m.patches) {
      for (let k = Math.max(0, from - p.at); k < p.bytes.length && p.at + k < from + out.length; k++) out[p.at + k - from] = p.bytes[k]!;
    }
  };
  const touched = (from: number, to: number) => m.patches.some((p) => p.at < to && p.at + p.bytes.length > from);
  return {
    read(n) {
      const stop = Math.min(end, pos + n);
      let out = base.subarray(pos, stop);
      if (touched(pos, stop)) {
        out = out.slice();
        patch(out, pos);
      }
      pos = stop;
      return out;
    },
    readInto(dst) {
      const stop = Math.min(end, pos + dst.length);
      dst.set(base.subarray(pos, stop));
      patch(dst.subarray(0, stop - pos), pos);
      const got = stop - pos;
      pos = stop;
      return got;
    },
  };
}

/** FNV-1a over the image's words: the fuzz must not change the images it reads. */
function checksum(b: Uint8Array): number {
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  let h = 0x811c9dc5;
  for (let i = 0; i < w.length; i++) h = Math.imul(h ^ w[i]!, 0x01000193);
  return h >>> 0;
}

const readU32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, true);

/** A pfn worth trying in place of a good one: any in the p2m, just past it, far past it, a table's. */
function pfnArb(M: ImageMap): fc.Arbitrary<number> {
  return fc.oneof(
    fc.integer({ min: 0, max: M.maxPfn }),
    fc.integer({ min: M.maxPfn + 1, max: M.maxPfn + 64 }),
    fc.integer({ min: M.maxPfn + 1, max: 0xffff_ffff }),
    fc.constantFrom(...M.tables.map((p) => p.pfn)),
    fc.constantFrom(M.startInfoPfn, M.storePfn, M.consolePfn, ...M.p2mFrames),
  );
}

function u32Arb(near: number): fc.Arbitrary<number> {
  return fc.oneof(
    fc.integer({ min: 0, max: 0xffff_ffff }),
    fc.integer({ min: -16, max: 16 }).map((d) => (near + d) >>> 0),
    fc.constantFrom(0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, near * 2, Math.floor(near / 2)),
  );
}

/** Bytes in [from, to) changed: one xored with a non-zero value, or set. */
function byteArb(base: Uint8Array, from: number, to: number, label: string): fc.Arbitrary<Mutant> {
  return fc.tuple(fc.integer({ min: from, max: to - 1 }), fc.integer({ min: 1, max: 255 }), fc.boolean()).map(([at, v, xor]) => {
    const old = base[at]!;
    const nv = xor ? old ^ v : v;
    return { what: `${label}: byte ${at - from} (offset 0x${at.toString(16)}) 0x${old.toString(16)} -> 0x${nv.toString(16)}`, patches: [u8(at, nv)] };
  });
}

function categories(M: ImageMap): Record<string, fc.Arbitrary<Mutant>> {
  const B = M.bytes;
  const W = M.width;
  const ulongMax = W === 64 ? (1n << 64n) - 1n : 0xffff_ffffn;
  const anyRec = [...M.recs.map((r) => ({ ...r, libxl: false })), ...M.libxlRecs.map((r) => ({ ...r, libxl: true }))];
  const recName = (r: (typeof anyRec)[number]) => `${r.libxl ? "libxl" : "libxc"} record ${r.index} (${r.type})`;
  const xlFields = fc.tuple(fc.constantFrom(32, 36, 40, 44, 48), fc.nat()).chain(([at]) =>
    u32Arb(readU32(B, at)).map((v) => ({ what: `xl header: u32 at ${at} ${readU32(B, at)} -> ${v}`, patches: [u32(at, v)] })),
  );
  const recHeader = fc.constantFrom(...anyRec).chain((r) =>
    fc.oneof(
      fc
        .oneof(fc.integer({ min: 0, max: 0x14 }), fc.integer({ min: 0, max: 0xffff_ffff }), fc.integer({ min: 0x8000_0000, max: 0x8000_0010 }))
        .map((t) => ({ what: `${recName(r)}: type -> 0x${t.toString(16)}`, patches: [u32(r.offset, t)] })),
      u32Arb(r.length).map((l) => ({ what: `${recName(r)}: length ${r.length} -> ${l}`, patches: [u32(r.offset + 4, l)] })),
    ),
  );
  const pageData = fc.constantFrom(...M.pages).chain((p) => {
    const rec = M.recs[p.rec]!;
    const where = `record ${rec.index} (PAGE_DATA) pfn[${p.entry}] 0x${p.pfn.toString(16)}`;
    const hi = readU32(B, p.entryOff + 4);
    return fc.oneof(
      pfnArb(M).map((pfn) => ({ what: `${where}: pfn -> 0x${pfn.toString(16)}`, patches: [u32(p.entryOff, pfn), u32(p.entryOff + 4, (hi & 0xf000_0000) | 0)] })),
      fc.integer({ min: 0, max: 15 }).map((t) => ({ what: `${where}: type 0x${(hi >>> 28).toString(16)} -> 0x${t.toString(16)}`, patches: [u32(p.entryOff + 4, ((t << 28) | (hi & 0x0fff_ffff)) >>> 0)] })),
      fc.integer({ min: 1, max: 0xfff }).map((r) => ({ what: `${where}: bits 63:52 |= 0x${r.toString(16)}`, patches: [u32(p.entryOff + 4, (hi | (r << 20)) >>> 0)] })),
      u32Arb(readU32(B, rec.offset + 8)).map((c) => ({ what: `record ${rec.index} (PAGE_DATA): count -> ${c}`, patches: [u32(rec.offset + 8, c)] })),
      fc.integer({ min: 1, max: 0xffff_ffff }).map((c) => ({ what: `record ${rec.index} (PAGE_DATA): reserved -> ${c}`, patches: [u32(rec.offset + 12, c)] })),
    );
  });
  // Entries of pagetables: present ones retargeted or their flags changed, absent ones made present.
  const pte = fc.constantFrom(...M.tables).chain((t) => {
    const present: number[] = [];
    for (let i = 0; i < 512; i++) if (readU32(B, t.dataOff! + 8 * i) & _PAGE_PRESENT) present.push(i);
    const idx = present.length > 0 ? fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...present) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 511 }) }) : fc.integer({ min: 0, max: 511 });
    return idx.chain((i) => {
      const at = t.dataOff! + 8 * i;
      const lo = readU32(B, at);
      const hi = readU32(B, at + 4);
      const where = `L${levelOf(t.type)} pfn 0x${t.pfn.toString(16)} [${i}] ${hi.toString(16)}:${lo.toString(16)}`;
      const flags = (lo & 0xfff) | (lo & 1 ? 0 : _PAGE_PRESENT);
      return fc.oneof(
        pfnArb(M).map((pfn) => ({
          what: `${where}: -> pfn 0x${pfn.toString(16)}`,
          patches: [u32(at, ((pfn << 12) | flags) >>> 0), u32(at + 4, ((hi & 0xfff0_0000) | Math.floor(pfn / 2 ** 20)) >>> 0)],
        })),
        fc.integer({ min: 1, max: 0xfff }).map((f) => ({ what: `${where}: low flags ^= 0x${f.toString(16)}`, patches: [u32(at, (lo ^ f) >>> 0)] })),
        fc.integer({ min: 1, max: 0xfff }).map((f) => ({ what: `${where}: high bits ^= 0x${f.toString(16)} << 20`, patches: [u32(at + 4, (hi ^ (f << 20)) >>> 0)] })),
        fc.constant<Mutant>({ what: `${where}: -> RW`, patches: [u32(at, (lo | 3) >>> 0)] }),
      );
    });
  });
  const p2m = fc.oneof(
    u32Arb(0).map((v) => ({ what: `X86_PV_P2M_FRAMES: start pfn -> ${v}`, patches: [u32(M.p2mBody, v)] })),
    u32Arb(M.maxPfn).map((v) => ({ what: `X86_PV_P2M_FRAMES: end pfn ${M.maxPfn} -> ${v}`, patches: [u32(M.p2mBody + 4, v)] })),
    fc
      .tuple(fc.integer({ min: 0, max: M.p2mFrames.length - 1 }), fc.oneof(pfnArb(M).map(BigInt), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })))
      .map(([i, v]) => ({ what: `X86_PV_P2M_FRAMES: frame ${i} 0x${M.p2mFrames[i]!.toString(16)} -> 0x${v.toString(16)}`, patches: [u64(M.p2mBody + 8 + 8 * i, v)] })),
  );
  /** vCPU `v`'s context changed by `f`, as a patch of the whole context. */
  const ctxPatch = (v: ImageMap["vcpus"][number], what: string, f: (c: VcpuGuestContext) => void): Mutant => {
    const c = decodeVcpuGuestContext(W, B.subarray(v.ctxOff, v.ctxOff + vcpuGuestContextSize(W)));
    f(c);
    return { what: `vcpu ${v.id}: ${what}`, patches: [{ at: v.ctxOff, bytes: encodeVcpuGuestContext(W, c) }] };
  };
  const ulongArb = fc.oneof(fc.bigInt({ min: 0n, max: ulongMax }), fc.constantFrom(0n, 1n, ulongMax, ulongMax >> 1n));
  const v0 = M.vcpus[0]!;
  const siPage = M.byPfn.get(M.startInfoPfn)!;
  const S = layoutFor(W).start_info;
  const siField = (off: number, name: string) =>
    pfnArb(M).map((pfn) => ({
      what: `start_info.${name} -> 0x${pfn.toString(16)}`,
      patches: [W === 64 ? u64(siPage.dataOff! + off, BigInt(pfn)) : u32(siPage.dataOff! + off, pfn)],
    }));
  const startInfo = fc.oneof(
    { weight: 3, arbitrary: pfnArb(M).map((pfn) => ctxPatch(v0, `rdx -> 0x${pfn.toString(16)}`, (c) => (c.user_regs.rdx = BigInt(pfn)))) },
    { weight: 1, arbitrary: ulongArb.map((x) => ctxPatch(v0, `rdx -> 0x${x.toString(16)}`, (c) => (c.user_regs.rdx = x))) },
    { weight: 1, arbitrary: siField(S.store_mfn, "store_mfn") },
    { weight: 1, arbitrary: siField(S.console_mfn, "console_mfn") },
  );
  const cr3Of = (pfn: number) => xenPfnToCr3(W, pfn);
  const vcpu = fc.constantFrom(...M.vcpus).chain((v) =>
    fc.oneof(
      pfnArb(M).map((pfn) => ctxPatch(v, `cr3 -> pfn 0x${pfn.toString(16)}`, (c) => (c.ctrlreg[3] = cr3Of(pfn)))),
      ulongArb.map((x) => ctxPatch(v, `cr3 -> 0x${x.toString(16)}`, (c) => (c.ctrlreg[3] = x))),
      ulongArb.map((x) => ctxPatch(v, `flags -> 0x${x.toString(16)}`, (c) => (c.flags = x))),
      fc.oneof(fc.integer({ min: 0, max: 16 * 512 }), fc.integer({ min: 0, max: 0xffff_ffff })).map((n) => ctxPatch(v, `gdt_ents -> ${n}`, (c) => (c.gdt_ents = BigInt(n)))),
      fc.tuple(fc.integer({ min: 0, max: 15 }), pfnArb(M)).map(([i, pfn]) => ctxPatch(v, `gdt_frames[${i}] -> 0x${pfn.toString(16)}`, (c) => (c.gdt_frames[i] = BigInt(pfn)))),
      (W === 64 ? pfnArb(M).map((pfn) => ctxPatch(v, `ctrlreg[1] -> pfn 0x${pfn.toString(16)} | 1`, (c) => (c.ctrlreg[1] = (BigInt(pfn) << 12n) | 1n))) : ulongArb.map((x) => ctxPatch(v, `ldt_base -> 0x${x.toString(16)}`, (c) => (c.ldt_base = x)))),
      fc.tuple(ulongArb, fc.constantFrom("rip", "rsp", "rflags", "rsi") as fc.Arbitrary<"rip" | "rsp" | "rflags" | "rsi">).map(([x, r]) => ctxPatch(v, `${r} -> 0x${x.toString(16)}`, (c) => (c.user_regs[r] = x))),
      fc.tuple(ulongArb, fc.constantFrom("kernel_ss", "kernel_sp", "ldt_ents", "vm_assist", "event_callback_eip") as fc.Arbitrary<"kernel_ss" | "kernel_sp" | "ldt_ents" | "vm_assist" | "event_callback_eip">).map(([x, f]) => ctxPatch(v, `${f} -> 0x${x.toString(16)}`, (c) => (c[f] = x))),
      u32Arb(v.id).map((id) => ({ what: `vcpu ${v.id}: vcpu_id -> ${id}`, patches: [u32(v.ctxOff - 8, id)] })),
      fc.integer({ min: 1, max: 0xffff_ffff }).map((x) => ({ what: `vcpu ${v.id}: reserved -> ${x}`, patches: [u32(v.ctxOff - 4, x)] })),
      byteArb(B, v.ctxOff, v.ctxOff + vcpuGuestContextSize(W), `vcpu ${v.id} context`),
    ),
  );
  const cut = fc.oneof(
    fc.integer({ min: 0, max: B.length - 1 }).map((n) => ({ what: `cut to ${n} bytes`, patches: [], cut: n })),
    fc
      .tuple(fc.constantFrom(...anyRec), fc.integer({ min: -9, max: 16 }))
      .map(([r, d]) => ({ what: `cut ${d} bytes after the start of ${recName(r)}`, patches: [], cut: Math.min(B.length - 1, Math.max(0, r.offset + d)) })),
    fc.integer({ min: 0, max: M.libxcAt + 40 }).map((n) => ({ what: `cut to ${n} bytes (headers)`, patches: [], cut: n })),
  );
  return {
    "xl header": fc.oneof(byteArb(B, 0, M.xlSize, "xl header"), xlFields),
    "libxl/libxc headers": byteArb(B, M.xlSize, M.libxcAt + 40, "stream headers"),
    "record types and lengths": recHeader,
    "PAGE_DATA pfns and types": pageData,
    "PTEs in pagetables": pte,
    "X86_PV_P2M_FRAMES": p2m,
    "start_info (rdx, store/console pfns)": startInfo,
    "vCPU contexts": vcpu,
    truncation: cut,
  };
}

// ---- one restore, and what it must leave behind -------------------------------------------------

const ALLOWED = [StreamError, RestoreError, HostError, ImageFormatError] as const;

interface Baseline {
  domains: string;
  hostDomains: string;
  xs: string;
  framesFree: number;
  mappings: number;
  dom0Ports: number;
}

function dom0Ports(hv: Hypervisor): number {
  const t = hv.domains.get(0)!.evtchn;
  let n = 0;
  for (let p = 1; p < t.validPorts; p++) if (t.state[p] !== ECS.FREE) n++;
  return n;
}

function xsView(th: TestHost): string {
  return ["/local/domain", "/vm", "/libxl"].map((p) => `${p}: ${th.host.xs.directory(p).sort().join(",")}`).join("; ");
}

function baseline(th: TestHost): Baseline {
  return {
    domains: [...th.hv.domains.keys()].join(","),
    hostDomains: [...th.host.domains.keys()].join(","),
    xs: xsView(th),
    framesFree: th.hv.memory.framesFree,
    mappings: th.hv.foreignMappings.size,
    dom0Ports: dom0Ports(th.hv),
  };
}

/** The outcome's kind: the error's class and its message with numbers and offsets made generic. */
function kindOf(e: Error): string {
  const msg = e.message
    .replace(/(is not JSON|is not a UUID|unknown action)[\s\S]*/, "$1")
    .replace(/ at offset 0x[0-9a-f]+/g, "")
    .replace(/0x[0-9a-f]+/g, "X")
    .replace(/\b\d+\b/g, "N");
  return `${e.constructor.name}: ${msg.slice(0, 90)}`;
}

/** Opens and restores an image the way xl restore does, paused; the domain, or the error. */
function restoreOnce(th: TestHost, source: ByteSource): HostDomain | { stage: "open" | "config" | "restore"; error: unknown } {
  let img: OpenedImage;
  try {
    img = openImage(source);
  } catch (error) {
    return { stage: "open", error };
  }
  let cfg: GuestConfig;
  try {
    const text = configTextFromJson(img.config, img.pvInfo.guestWidth === 8 ? 64 : 32);
    cfg = { ...parseGuestConfig(text, "<saved>"), source: { file: "<saved>", text } };
  } catch (error) {
    return { stage: "config", error };
  }
  try {
    const gen = th.host.restore(cfg, img, { paused: true });
    for (let steps = 0; ; steps++) {
      // A 16 MiB guest is 4 batches; a restore that steps on and on is a hang.
      if (steps > 10_000) throw new Error("restore is still stepping after 10000 steps");
      const r = gen.next();
      if (r.done) return r.value;
    }
  } catch (error) {
    return { stage: "restore", error };
  }
}

interface Stats {
  counts: Map<string, number>;
  byCategory: Map<string, Map<string, number>>;
  total: number;
}

const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);

/**
 * Restores mutant `m` of `M` into `th`: it must be refused with one of the toolstack's errors (a
 * config the saved JSON cannot make into an xl.cfg, too) or restore; then everything must be as in
 * `base` (a restored domain destroyed first).
 */
function tryMutant(th: TestHost, M: ImageMap, m: Mutant, base: Baseline, stats: Stats, category: string): void {
  const r = restoreOnce(th, mutantSource(M.bytes, m));
  let kind: string;
  if ("domid" in r) {
    kind = "restored";
    th.host.destroy(r.domid);
    // xenstored lets go of the store page once it has seen @releaseDomain.
    const start = th.host.now();
    while (th.host.now() - start < 5 * MS && (th.hv.memory.framesFree !== base.framesFree || th.hv.foreignMappings.size !== base.mappings)) run(th, 0.01);
  } else {
    const e = r.error;
    const allowed =
      e instanceof Error &&
      (ALLOWED.some((c) => e instanceof c) || (r.stage === "config" && (e instanceof GuestCfgError || e.message.startsWith("the saved config has no "))));
    if (!allowed) assert.fail(`${M.name}, ${m.what}: ${r.stage} threw ${e instanceof Error ? `${e.constructor.name}: ${e.message}\n${e.stack}` : String(e)}`);
    assert.ok(e.message.length > 0, `${m.what}: an error without a message`);
    kind = r.stage === "config" ? `config: ${kindOf(e)}` : kindOf(e);
  }
  const now = baseline(th);
  assert.deepEqual(now, base, `${M.name}, ${m.what} (${kind}): left something behind`);
  stats.total++;
  bump(stats.counts, kind);
  const cat = stats.byCategory.get(category) ?? new Map<string, number>();
  stats.byCategory.set(category, cat);
  bump(cat, kind);
}

// ---- the fixture: two images, and the host they are restored into ------------------------------

let img64: ImageMap;
let img64small: ImageMap;
let img32: ImageMap;
let target: TestHost;
let keep: HostDomain;

before(() => {
  const src = newHost(11);
  img64 = mapImage("64-bit 16 MiB", makeImage(src, "g64", 64, 16));
  // Most mutants go to 4 MiB guests: a restore that gets far costs a quarter of a 16 MiB one.
  img64small = mapImage("64-bit 4 MiB", makeImage(src, "g64s", 64, 4));
  img32 = mapImage("PAE 4 MiB", makeImage(src, "g32", 32, 4));
  target = newHost(12);
  keep = target.host.create(guestConfig("keep", 64, 16, 1, "forkexec=1"));
  assert.ok(runUntil(target, 1000, () => target.host.xs.tryRead(`/local/domain/${keep.domid}/control/feature-suspend`) === "1"), "the healthy guest came up");
});

/** What the healthy guest's processes have done so far (forks, execs, faults...). */
function workDone(k: XenLinux): number {
  const fe = k.workloads.find((w) => w.name === "forkexec") as { sched?: { stats: Record<string, number> } } | undefined;
  return Object.values(fe?.sched?.stats ?? {}).reduce((a, b) => a + b, 0);
}

/** The healthy guest runs on: its timer ticks, its processes make progress, and it has not crashed. */
function checkHealthy(th: TestHost, k: XenLinux, domid: number, why: string): void {
  const ticks = k.percpu[0]!.ticks;
  const work = workDone(k);
  run(th, 5);
  assert.equal(th.hv.domains.get(domid)?.state, "running", `${why}: the healthy guest is ${th.hv.domains.get(domid)?.state}`);
  assert.ok(k.percpu[0]!.ticks > ticks, `${why}: the healthy guest's timer stopped`);
  assert.ok(workDone(k) > work, `${why}: the healthy guest's processes stopped`);
}

/** Mutants per category, for the 16 MiB image and for each 4 MiB one; scaled by RESTORE_FUZZ_SCALE (e.g. 0.1 for a quick run). */
const RUNS: Record<string, [big: number, small: number]> = {
  "xl header": [250, 800],
  "libxl/libxc headers": [250, 800],
  "record types and lengths": [200, 500],
  "PAGE_DATA pfns and types": [200, 500],
  "PTEs in pagetables": [150, 400],
  X86_PV_P2M_FRAMES: [100, 250],
  "start_info (rdx, store/console pfns)": [100, 250],
  "vCPU contexts": [150, 400],
  truncation: [150, 400],
};
const SCALE = Number(process.env["RESTORE_FUZZ_SCALE"] ?? 1);

test("mutants of a 64-bit and a PAE image are refused with a message or restore, and leave nothing behind", (t) => {
  const th = target;
  const stats: Stats = { counts: new Map(), byCategory: new Map(), total: 0 };
  const t0 = performance.now();
  const times = new Map<string, number>();
  for (const M of [img64, img64small, img32]) {
    const base = baseline(th);
    const sum = checksum(M.bytes);
    for (const [category, arb] of Object.entries(categories(M))) {
      const c0 = performance.now();
      const numRuns = Math.max(1, Math.round(RUNS[category]![M === img64 ? 0 : 1] * SCALE));
      let n = 0;
      fc.assert(
        fc.property(arb, (m) => {
          tryMutant(th, M, m, base, stats, category);
          if (++n % 250 === 0) checkHealthy(th, keep.kernel, keep.domid, `${M.name}, ${category}, after ${n} mutants`);
        }),
        { numRuns, includeErrorInReport: true },
      );
      checkHealthy(th, keep.kernel, keep.domid, `${M.name}, ${category}`);
      times.set(`${M.name} ${category}`, performance.now() - c0);
    }
    assert.equal(checksum(M.bytes), sum, `${M.name}: the image changed under the restores`);
  }
  const ms = performance.now() - t0;
  t.diagnostic(`${stats.total} mutants in ${(ms / 1000).toFixed(1)} s`);
  for (const [cat, m] of stats.byCategory) {
    const byClass = new Map<string, number>();
    for (const [k, v] of m) byClass.set(k.split(":")[0]!, (byClass.get(k.split(":")[0]!) ?? 0) + v);
    t.diagnostic(`${cat}: ${[...byClass].map(([k, v]) => `${k} ${v}`).join(", ")}`);
    for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, 4)) t.diagnostic(`    ${String(v).padStart(5)}  ${k}`);
  }
  for (const [k, v] of [...stats.counts].sort((a, b) => b[1] - a[1])) t.diagnostic(`${String(v).padStart(5)}  ${k}`);
  for (const [k, v] of times) t.diagnostic(`time ${k}: ${(v / 1000).toFixed(1)} s`);
  assert.ok(stats.total >= 10_000 * SCALE, `${stats.total} mutants`);
  // The healthy guest's kernel and Xen still agree on its channels and its memory.
  const ks = new Map([[keep.domid, keep.kernel]]);
  assert.deepEqual(auditEvtchn(th.hv, ks), []);
  assert.deepEqual(auditMm(th.hv, ks), []);
});

// ---- handpicked corruptions: the message names what is wrong ------------------------------------

/** Restores `m` into the fuzz host: it must fail with `cls` and exactly `message`, leaving nothing behind. */
function expectRefused(t: { diagnostic(s: string): void }, M: ImageMap, m: Mutant, cls: new (...a: never[]) => Error, message: string | RegExp): Error {
  const th = target;
  const base = baseline(th);
  const r = restoreOnce(th, mutantSource(M.bytes, m));
  if ("domid" in r) {
    th.host.destroy(r.domid);
    assert.fail(`${M.name}, ${m.what}: restored`);
  }
  const e = r.error as Error;
  assert.ok(e instanceof cls, `${m.what}: ${e.constructor.name}: ${e.message}`);
  if (typeof message === "string") assert.equal(e.message, message, m.what);
  else assert.match(e.message, message, m.what);
  assert.deepEqual(baseline(th), base, `${m.what}: left something behind`);
  t.diagnostic(`${m.what}:`);
  t.diagnostic(`    ${e.constructor.name}: ${e.message}`);
  return e;
}

const hx = (n: number) => `0x${n.toString(16)}`;
const recOf = (M: ImageMap, type: string, nth = 0) => M.recs.filter((r) => r.type === type)[nth]!;

/** Where a table's present entries lead, as pfns (the image's tables hold pfns). */
function childrenOf(M: ImageMap, t: PageAt): number[] {
  const out: number[] = [];
  for (let i = 0; i < 512; i++) {
    const lo = readU32(M.bytes, t.dataOff! + 8 * i);
    if (lo & _PAGE_PRESENT) out.push(pteMfn(lo, readU32(M.bytes, t.dataOff! + 8 * i + 4)));
  }
  return out;
}

test("handpicked corruptions are refused with messages that name the record, the pfn and the field", (t) => {
  const M = img64;
  const end = recOf(M, "END");
  const tsc = recOf(M, "X86_TSC_INFO");
  const sed = recOf(M, "STATIC_DATA_END");
  const pd2 = recOf(M, "PAGE_DATA", 1);
  const e0 = M.pages.find((p) => M.recs[p.rec] === pd2)!;
  // Linux pins only its top-level tables; the rest are typed by being reachable from them.
  const l1s = M.tables.filter((p) => levelOf(p.type) === 1);
  const l2 = M.tables.find((p) => levelOf(p.type) === 2 && childrenOf(M, p).length > 0)!;
  const v0 = M.vcpus[0]!;
  const v1 = M.vcpus[1]!;
  const ctx = (v: ImageMap["vcpus"][number], f: (c: VcpuGuestContext) => void): Patch => {
    const c = decodeVcpuGuestContext(M.width, M.bytes.subarray(v.ctxOff, v.ctxOff + vcpuGuestContextSize(M.width)));
    f(c);
    return { at: v.ctxOff, bytes: encodeVcpuGuestContext(M.width, c) };
  };

  // the xl header, the libxc stream's framing
  expectRefused(t, M, { what: "xl header: the magic's first byte", patches: [u8(0, 0x59)] }, StreamError, "xl save header at offset 0x0: wrong magic (byte 0 is 0x59, not 0x58): not an xl save file");
  const unknown = expectRefused(t, M, { what: `record ${sed.index}: type 0x13`, patches: [u32(sed.offset, 0x13)] }, StreamError, `record ${sed.index} (type 0x13) at offset ${hx(sed.offset)}: record type 0x13 is not one Xen 4.17 knows`);
  assert.deepEqual([(unknown as StreamError).record, (unknown as StreamError).recordType, (unknown as StreamError).offset], [sed.index, "type 0x13", sed.offset]);
  expectRefused(t, M, { what: `record ${tsc.index}: length 25`, patches: [u32(tsc.offset + 4, 25)] }, StreamError, `record ${tsc.index} (X86_TSC_INFO) at offset ${hx(tsc.offset)}: length 25 is not 24`);
  const cut = pd2.offset + 8 + 1000;
  expectRefused(t, M, { what: `cut 1000 bytes into record ${pd2.index}'s body`, patches: [], cut }, StreamError, `truncated in record ${pd2.index} (PAGE_DATA) at offset ${hx(pd2.offset)}: wanted ${pd2.length} bytes of body at offset ${hx(pd2.offset + 8)}, got 1000`);

  // PAGE_DATA's pfns and types
  const far = M.maxPfn + 0x100;
  expectRefused(t, M, { what: `record ${pd2.index} pfn[0]: pfn ${hx(far)}`, patches: [u32(e0.entryOff, far)] }, RestoreError, `record ${pd2.index} (PAGE_DATA): pfn ${hx(far)} is outside the domain's p2m (max pfn ${hx(M.maxPfn)})`);
  const hi0 = readU32(M.bytes, e0.entryOff + 4);
  expectRefused(t, M, { what: `record ${pd2.index} pfn[0]: type 6`, patches: [u32(e0.entryOff + 4, (hi0 & 0x0fff_ffff) | 0x6000_0000)] }, StreamError, `record ${pd2.index} (PAGE_DATA) at offset ${hx(pd2.offset)}: pfn[0] ${hx(e0.pfn)}: type 0x60000000 is not a PFINFO type`);

  // a pagetable's entry naming a pfn beyond the p2m: localisation refuses it
  const slot = (() => {
    for (let i = 0; i < 512; i++) if (readU32(M.bytes, l2.dataOff! + 8 * i) & _PAGE_PRESENT) return i;
    return -1;
  })();
  const pteAt = l2.dataOff! + 8 * slot;
  const lo = readU32(M.bytes, pteAt);
  expectRefused(
    t,
    M,
    { what: `L2 pfn ${hx(l2.pfn)} [${slot}] -> pfn ${hx(M.maxPfn + 5)}`, patches: [u32(pteAt, (((M.maxPfn + 5) << 12) | (lo & 0xfff)) >>> 0)] },
    RestoreError,
    `record ${M.recs[l2.rec]!.index} (PAGE_DATA): L2[${slot}] of pfn ${hx(l2.pfn)} names pfn ${hx(M.maxPfn + 5)}, beyond the p2m`,
  );

  // A data page made a pinned L1 whose first entry maps vCPU 0's L4 writable: localised, then
  // refused when the pins are taken (the L4 is typed by then: vCPU 0 runs on it).
  const root0 = xenCr3ToPfn(M.width, v0.ctx.ctrlreg[3]!);
  const special = new Set([M.startInfoPfn, M.storePfn, M.consolePfn, ...M.p2mFrames]);
  const plain = [...M.pages].reverse().find((p) => p.type === PFINFO.NOTAB && p.dataOff !== undefined && !special.has(p.pfn))!;
  const plainHi = readU32(M.bytes, plain.entryOff + 4);
  expectRefused(
    t,
    M,
    {
      what: `pfn ${hx(plain.pfn)} typed a pinned L1 whose entry 0 maps vCPU 0's L4 (pfn ${hx(root0)}) writable`,
      patches: [u32(plain.entryOff + 4, (plainHi & 0x0fff_ffff) | 0x9000_0000), u32(plain.dataOff!, ((root0 << 12) | 0x67) >>> 0), u32(plain.dataOff! + 4, 0)],
    },
    RestoreError,
    `record ${end.index} (END): pinning the L1 table at pfn ${hx(plain.pfn)} failed (-EINVAL)`,
  );

  // vCPU contexts and start_info
  const p2mPfn = M.p2mFrames[0]!;
  expectRefused(t, M, { what: `vcpu 0: cr3 -> a p2m frame (pfn ${hx(p2mPfn)})`, patches: [ctx(v0, (c) => (c.ctrlreg[3] = xenPfnToCr3(M.width, p2mPfn)))] }, RestoreError, `record ${end.index} (END): vcpu 0: cr3 (pfn ${hx(p2mPfn)}) has bad type 0x0, expected L4`);
  expectRefused(t, M, { what: `vcpu 0: rdx -> pfn ${hx(M.maxPfn + 1)}`, patches: [ctx(v0, (c) => (c.user_regs.rdx = BigInt(M.maxPfn + 1)))] }, RestoreError, `record ${end.index} (END): vcpu 0: start info (pfn ${hx(M.maxPfn + 1)}) out of range`);
  const l1 = l1s[0]!;
  expectRefused(
    t,
    M,
    { what: `vcpu 1: a GDT on an L1 (pfn ${hx(l1.pfn)})`, patches: [
        ctx(v1, (c) => {
          c.gdt_ents = 512n;
          c.gdt_frames[0] = BigInt(l1.pfn);
        }),
      ],
    },
    RestoreError,
    `record ${end.index} (END): vcpu 1: GDT frame 0 (pfn ${hx(l1.pfn)}) has bad type 0x10000000`,
  );
  const v1rec = M.recs.find((r) => r.type === "X86_PV_VCPU_BASIC" && r.offset === v1.ctxOff - 16)!;
  expectRefused(t, M, { what: "vcpu 1: vcpu_id 7", patches: [u32(v1.ctxOff - 8, 7)] }, RestoreError, `record ${v1rec.index} (X86_PV_VCPU_BASIC): vcpu 7 is out of range (the domain has 2)`);
  const p2m = recOf(M, "X86_PV_P2M_FRAMES");
  expectRefused(t, M, { what: `p2m frame 0 -> an L1 (pfn ${hx(l1.pfn)})`, patches: [u64(M.p2mBody + 8, BigInt(l1.pfn))] }, RestoreError, `record ${end.index} (END): pfn ${hx(l1.pfn)} for p2m_frame_list[0] has bad type 0x10000000`);
  expectRefused(t, M, { what: "p2m end pfn 0x100000", patches: [u32(M.p2mBody + 4, 0x10_0000)] }, StreamError, `record ${p2m.index} (X86_PV_P2M_FRAMES) at offset ${hx(p2m.offset)}: pfns 0x0-0x100000 of a 64-bit guest need 2049 p2m frames, the record has ${M.p2mFrames.length}`);

  // the PAE image: an L4 has no place in it
  const P = img32;
  const pae = P.tables.find((p) => levelOf(p.type) === 3)!;
  const hi = readU32(P.bytes, pae.entryOff + 4);
  expectRefused(t, P, { what: `PAE: pfn ${hx(pae.pfn)} typed L4`, patches: [u32(pae.entryOff + 4, (hi & 0x8fff_ffff) | 0x4000_0000)] }, RestoreError, `record ${P.recs[pae.rec]!.index} (PAGE_DATA): pfn ${hx(pae.pfn)}: an L4 table in a 32-bit guest`);
});

// ---- a stream our save did not write ------------------------------------------------------------

/** Bytes written little-endian unless told, as the spec lays them out. */
class Out {
  private buf = new Uint8Array(1 << 16);
  length = 0;
  private room(n: number): DataView {
    if (this.length + n > this.buf.length) {
      const b = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
      b.set(this.buf.subarray(0, this.length));
      this.buf = b;
    }
    const dv = new DataView(this.buf.buffer, this.length, n);
    this.length += n;
    return dv;
  }
  u8(v: number): this {
    this.room(1).setUint8(0, v);
    return this;
  }
  u16(v: number, be = false): this {
    this.room(2).setUint16(0, v, !be);
    return this;
  }
  u32(v: number, be = false): this {
    this.room(4).setUint32(0, v >>> 0, !be);
    return this;
  }
  u64(v: bigint, be = false): this {
    this.room(8).setBigUint64(0, v, !be);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.length - b.length);
    return this;
  }
  /** A record: type, body length, body, zero padding to 8 octets. */
  record(type: number, body: Uint8Array): this {
    this.u32(type).u32(body.length).bytes(body);
    const pad = (8 - (body.length % 8)) % 8;
    return this.bytes(new Uint8Array(pad));
  }
  done(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

const body = (f: (o: Out) => void): Uint8Array => {
  const o = new Out();
  f(o);
  return o.done();
};

/** The pfns of the foreign guest: 16 of them, its tables at the bottom. */
const F = { l4: 0, l3: 1, l2: 2, l1: 3, data: [4, 5, 6, 7], startInfo: 8, store: 9, console: 10, p2m: 11, maxPfn: 15 } as const;
const F_TYPE = { L1: 0x1, L2: 0x2, L3: 0x3, L4: 0x4, PINNED: 0x8 } as const;

/**
 * A 64-bit PV guest's image written from docs/specs/libxc-migration-stream.pandoc (Xen 4.17) and
 * libxl's and xl's formats, by hand: xl's header with a libxl JSON config, libxl's header and
 * LIBXC_CONTEXT, libxc's headers, then the records Xen 4.17 writes for a PV guest (CPU policies,
 * extended vCPU state and an optional record included, which our save does not write), ending in
 * END and libxl's END. Its tables chain L4 -> L3 -> L2 -> L1 at pfns 0-3 and hold pfns, as a
 * normalised stream has them; the L1 maps the twelve pages (tables read-only). With
 * `storeIsTable`, an L2 entry also names the xenstore page as an L1 (zero, so valid), typed NOTAB.
 */
function foreignImage(name: string, opts: { storeIsTable?: boolean } = {}): Uint8Array {
  const page = (f: (dv: DataView) => void) => {
    const p = new Uint8Array(PAGE);
    f(new DataView(p.buffer));
    return p;
  };
  const pte = (dv: DataView, slot: number, pfn: number, flags: number) => {
    dv.setUint32(8 * slot, ((pfn << 12) | flags) >>> 0, true);
    dv.setUint32(8 * slot + 4, 0, true);
  };
  const TABLE = 0x067; // present, writable, user, accessed, dirty
  const RO = 0x025; // present, user, accessed
  const pages: { pfn: number; type: number; data: Uint8Array }[] = [
    { pfn: F.l4, type: F_TYPE.L4 | F_TYPE.PINNED, data: page((dv) => pte(dv, 0, F.l3, TABLE)) },
    { pfn: F.l3, type: F_TYPE.L3, data: page((dv) => pte(dv, 0, F.l2, TABLE)) },
    {
      pfn: F.l2,
      type: F_TYPE.L2,
      data: page((dv) => {
        pte(dv, 0, F.l1, TABLE);
        if (opts.storeIsTable) pte(dv, 1, F.store, TABLE);
      }),
    },
    {
      pfn: F.l1,
      type: F_TYPE.L1,
      data: page((dv) => {
        for (let pfn = 0; pfn <= F.p2m; pfn++) pte(dv, pfn, pfn, pfn <= F.l1 || (opts.storeIsTable && pfn === F.store) ? RO : TABLE);
      }),
    },
    ...F.data.map((pfn) => ({ pfn, type: 0, data: page((dv) => dv.setUint32(0, 0xd00d_0000 + pfn, true)) })),
    {
      pfn: F.startInfo,
      type: 0,
      data: page((dv) => {
        const S = layoutFor(64).start_info;
        new Uint8Array(dv.buffer).set(new TextEncoder().encode("xen-3.0-x86_64"), S.magic);
        dv.setBigUint64(S.nr_pages, BigInt(F.maxPfn + 1), true);
        dv.setBigUint64(S.store_mfn, BigInt(F.store), true);
        dv.setUint32(S.store_evtchn, 7, true);
        dv.setBigUint64(S.console_mfn, BigInt(F.console), true);
        dv.setUint32(S.console_evtchn, 9, true);
      }),
    },
    { pfn: F.store, type: 0, data: new Uint8Array(PAGE) },
    { pfn: F.console, type: 0, data: new Uint8Array(PAGE) },
    // the guest's p2m, pfn -> (old) frame: any values, the restore writes the new ones
    { pfn: F.p2m, type: 0, data: page((dv) => Array.from({ length: F.maxPfn + 1 }, (_, pfn) => dv.setBigUint64(8 * pfn, BigInt(0x5000 + pfn), true))) },
  ];
  const config = JSON.stringify({
    c_info: { type: "pv", name, uuid: "4a1c0a5e-7b2d-4c3e-9f10-2b3c4d5e6f70" },
    b_info: { max_vcpus: 1, avail_vcpus: [0], max_memkb: 4096, target_memkb: 4096 },
    on_crash: "preserve",
  });
  const configBytes = new TextEncoder().encode(`${config}\0`);
  const o = new Out();
  // xl's header: magic, byte order, mandatory flags (STREAMv2 | JSON), optional flags, optional data
  o.bytes(new TextEncoder().encode("Xen saved domain, xl format\n \0 \r")).u32(0x01020304).u32(3).u32(0).u32(4 + configBytes.length);
  o.u32(configBytes.length).bytes(configBytes);
  // libxl's header (big-endian): "LibxlFmt", version 2, options 0; LIBXC_CONTEXT
  o.u64(0x4c6962786c466d74n, true).u32(2, true).u32(0, true);
  o.record(1, new Uint8Array(0));
  // libxc's image header (big-endian) and domain header
  o.u64(0xffff_ffff_ffff_ffffn, true).u32(0x58454e46, true).u32(3, true).u16(0, true).u16(0, true).u32(0, true);
  o.u32(1).u16(12).u16(0).u32(4).u32(17);
  o.record(0x02, Uint8Array.of(8, 4, 0, 0, 0, 0, 0, 0)); // X86_PV_INFO
  o.record(0x11, body((b) => b.u32(0).u32(0).u32(0xd).u32(0x756e6547).u32(0x6c65746e).u32(0x49656e69))); // X86_CPUID_POLICY
  o.record(0x12, body((b) => b.u32(0xce).u32(0).u64(0n))); // X86_MSR_POLICY
  o.record(0x10, new Uint8Array(0)); // STATIC_DATA_END
  o.record(0x03, body((b) => b.u32(0).u32(F.maxPfn).u64(BigInt(F.p2m)))); // X86_PV_P2M_FRAMES
  // PAGE_DATA: count, reserved, (type << 60 | pfn) each, then the pages
  o.record(
    0x01,
    body((b) => {
      b.u32(pages.length).u32(0);
      for (const p of pages) b.u64((BigInt(p.type) << 60n) | BigInt(p.pfn));
      for (const p of pages) b.bytes(p.data);
    }),
  );
  o.record(0x8000_0123, Uint8Array.of(1, 2, 3)); // an optional record this restore does not know
  o.record(0x08, body((b) => b.u32(0).u32(0).u64(1_000_000n).u32(7).u32(0))); // X86_TSC_INFO
  o.record(0x07, new Uint8Array(PAGE)); // SHARED_INFO
  const ctx = bootVcpuContext(64, F.data[0]! * PAGE, F.startInfo * PAGE, (F.data[3]! + 1) * PAGE, F.l4);
  ctx.user_regs.rdx = BigInt(F.startInfo);
  const ctxBytes = encodeVcpuGuestContext(64, ctx);
  o.record(0x04, body((b) => b.u32(0).u32(0).bytes(ctxBytes))); // X86_PV_VCPU_BASIC
  o.record(0x05, body((b) => b.u32(0).u32(0))); // X86_PV_VCPU_EXTENDED, empty
  o.record(0x0c, body((b) => b.u32(0).u32(0))); // X86_PV_VCPU_MSRS, empty
  o.record(0x00, new Uint8Array(0)); // END
  o.record(0x00, new Uint8Array(0)); // libxl's END
  return o.done();
}

test("a stream written here from the spec restores: tables localised and pinned, vCPU 0 and start_info fixed up", (t) => {
  const th = target;
  const base = baseline(th);
  const bytes = foreignImage("foreign");
  const r = restoreOnce(th, bytesSource(bytes));
  assert.ok("domid" in r, `restore failed: ${"error" in r ? String(r.error) : ""}`);
  const hd = r;
  const domid = hd.domid;
  const xc = th.host.xc;
  t.after(() => {
    if (th.host.domains.has(domid)) th.host.destroy(domid);
  });
  const p2m = hd.built.p2m;
  const mfn = (pfn: number) => p2m[pfn]!;
  t.diagnostic(`restored as domain ${domid}: p2m ${[...p2m.slice(0, F.maxPfn + 1)].map((m) => (m === 0xffff_ffff ? "-" : hx(m))).join(" ")}`);
  for (let pfn = 0; pfn <= F.p2m; pfn++) assert.equal(th.hv.memory.m2p[mfn(pfn)], pfn, `pfn ${pfn}'s new frame maps back to it`);
  assert.equal(th.hv.domains.get(domid)?.pauseCount !== 0, true, "paused");

  // the tables: the L4 pinned, the rest typed through it, each entry localised to the new frames
  const info = xc.getpageframeinfo3(domid, [F.l4, F.l3, F.l2, F.l1, F.data[0]].map(mfn));
  assert.ok(typeof info !== "number");
  assert.deepEqual([...info], [PFINFO.L4TAB | PFINFO.LPINTAB, PFINFO.L3TAB, PFINFO.L2TAB, PFINFO.L1TAB, PFINFO.NOTAB].map((x) => x >>> 0));
  const tables = xc.map_foreign_pages(domid, PROT_READ, [F.l4, F.l3, F.l2, F.l1, F.data[1]].map(mfn));
  assert.ok(typeof tables !== "number");
  const entry = (i: number, slot: number) => pteMfn(tables.u32(i)[2 * slot]!, tables.u32(i)[2 * slot + 1]!);
  assert.deepEqual([entry(0, 0), entry(1, 0), entry(2, 0)], [mfn(F.l3), mfn(F.l2), mfn(F.l1)]);
  for (let pfn = 0; pfn <= F.p2m; pfn++) assert.equal(entry(3, pfn), mfn(pfn), `L1[${pfn}]`);
  assert.equal(tables.u32(4)[0], 0xd00d_0000 + F.data[1], "a data page's contents");
  tables.unmap();

  // vCPU 0: cr3 names the L4's new frame, rdx start_info's
  const raw = xc.getvcpucontext(domid, 0);
  assert.ok(typeof raw !== "number");
  const ctx = decodeVcpuGuestContext(64, raw);
  assert.equal(ctx.ctrlreg[3], xenPfnToCr3(64, mfn(F.l4)));
  assert.equal(ctx.user_regs.rdx, BigInt(mfn(F.startInfo)));
  assert.equal(ctx.user_regs.rip, BigInt(F.data[0]! * PAGE));

  // start_info: the store and console pages' new frames and the channels this host made
  const S = layoutFor(64).start_info;
  const si = xc.map_foreign_pages(domid, PROT_READ, [mfn(F.startInfo)]);
  assert.ok(typeof si !== "number");
  const dv = si.dv(0);
  const storePort = Number(th.host.xs.read(`/local/domain/${domid}/store/port`));
  const consolePort = Number(th.host.xs.read(`/local/domain/${domid}/console/port`));
  assert.deepEqual(
    {
      store: Number(dv.getBigUint64(S.store_mfn, true)),
      storePort: dv.getUint32(S.store_evtchn, true),
      console: Number(dv.getBigUint64(S.console_mfn, true)),
      consolePort: dv.getUint32(S.console_evtchn, true),
      nrPages: Number(dv.getBigUint64(S.nr_pages, true)),
    },
    { store: mfn(F.store), storePort, console: mfn(F.console), consolePort, nrPages: F.maxPfn + 1 },
  );
  assert.notDeepEqual([storePort, consolePort], [7, 9], "the image's own ports are replaced");
  si.unmap();
  assert.equal(th.host.xs.read(`/local/domain/${domid}/store/ring-ref`), String(mfn(F.store)));
  assert.equal(th.host.xs.read(`/local/domain/${domid}/name`), "foreign");

  // the guest's p2m frame now holds the new frames
  const pm = xc.map_foreign_pages(domid, PROT_READ, [mfn(F.p2m)]);
  assert.ok(typeof pm !== "number");
  for (let pfn = 0; pfn <= F.maxPfn; pfn++) assert.equal(pm.dv(0).getBigUint64(8 * pfn, true), pfn <= F.p2m ? BigInt(mfn(pfn)) : 0xffff_ffff_ffff_ffffn);
  pm.unmap();

  th.host.destroy(domid);
  runUntil(th, 5, () => th.hv.memory.framesFree === base.framesFree);
  assert.deepEqual(baseline(th), base);
  checkHealthy(th, keep.kernel, keep.domid, "after the foreign stream");
});

test("a foreign stream whose xenstore page is one of its pagetables is refused, and leaves nothing behind", (t) => {
  const th = target;
  const base = baseline(th);
  const r = restoreOnce(th, bytesSource(foreignImage("foreign2", { storeIsTable: true })));
  if ("domid" in r) {
    th.host.destroy(r.domid);
    assert.fail("restored");
  }
  const e = r.error as Error;
  t.diagnostic(`${e.constructor.name}: ${e.message}`);
  assert.ok(ALLOWED.some((c) => e instanceof c), `${e.constructor.name}: ${e.message}`);
  run(th, 1);
  assert.deepEqual(baseline(th), base);
});
