// libxc's save/migration stream, version 3 (Xen 4.17): the image and domain headers, the record
// header and every record body as bytes, after docs/specs/libxc-migration-stream.pandoc and
// tools/libs/guest/xg_sr_stream_format.h. Only the format: what a restore does with the records,
// and in which order they may come, is the restore logic's business.
//
// The image header is big-endian whatever the stream; the rest is in the stream's byte order,
// little-endian on x86, the only order written or read here (Xen's reader refuses the other too).
//
// Decoders are strict where Xen's verifier (verify-stream-v2) is: reserved fields and padding must
// be zero. They throw StreamError with what is wrong; the stream reader adds where.

import { PFINFO } from "../../abi/domctl.ts";
import { vcpuGuestContextSize } from "../../abi/vcpu_context.ts";

/** Where a StreamError was found; the message says it too. */
export interface StreamErrorWhere {
  /** Byte offset in the stream of the header or record at fault. */
  readonly offset?: number;
  /** The record's index in its stream, from 0 (the first record after the headers). */
  readonly record?: number;
  /** The record's type name ("PAGE_DATA", "type 0x13"...). */
  readonly recordType?: string;
}

/** A stream that is malformed or truncated. The message names the record, offset, field and value. */
export class StreamError extends Error {
  override readonly name = "StreamError";
  readonly offset: number | undefined;
  readonly record: number | undefined;
  readonly recordType: string | undefined;
  constructor(message: string, where: StreamErrorWhere = {}) {
    super(message);
    this.offset = where.offset;
    this.record = where.record;
    this.recordType = where.recordType;
  }
}

export const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

// ---- constants ------------------------------------------------------------------------------

export const IHDR_MARKER = 0xffff_ffff_ffff_ffffn;
/** "XENF". */
export const IHDR_ID = 0x58454e46;
/** The version Xen 4.17 writes; it reads 2 as well. */
export const IHDR_VERSION = 3;
export const IHDR_OPT_BIG_ENDIAN = 1 << 0;
export const IHDR_SIZE = 24;
export const DHDR_SIZE = 16;
export const RHDR_SIZE = 8;

export const DHDR_TYPE = { X86_PV: 1, X86_HVM: 2 } as const;
export type DomainType = (typeof DHDR_TYPE)[keyof typeof DHDR_TYPE];

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;
export const XEN_MAJOR = 4;
export const XEN_MINOR = 17;

/** Records are padded to this. */
export const REC_ALIGN = 8;
/** Xen's own bound on a record (xg_sr_stream_format.h). */
export const REC_LENGTH_MAX = 128 << 20;
/** Bit 31 of a record type: the restore may ignore the record. */
export const REC_TYPE_OPTIONAL = 0x8000_0000;
/** Pages per PAGE_DATA record at most: libxc's batch (xg_save_restore.h). */
export const MAX_BATCH_SIZE = 1024;

export const REC_TYPE = {
  END: 0x00,
  PAGE_DATA: 0x01,
  X86_PV_INFO: 0x02,
  X86_PV_P2M_FRAMES: 0x03,
  X86_PV_VCPU_BASIC: 0x04,
  X86_PV_VCPU_EXTENDED: 0x05,
  X86_PV_VCPU_XSAVE: 0x06,
  SHARED_INFO: 0x07,
  X86_TSC_INFO: 0x08,
  HVM_CONTEXT: 0x09,
  HVM_PARAMS: 0x0a,
  TOOLSTACK: 0x0b,
  X86_PV_VCPU_MSRS: 0x0c,
  VERIFY: 0x0d,
  CHECKPOINT: 0x0e,
  CHECKPOINT_DIRTY_PFN_LIST: 0x0f,
  STATIC_DATA_END: 0x10,
  X86_CPUID_POLICY: 0x11,
  X86_MSR_POLICY: 0x12,
} as const;
export type LibxcRecName = keyof typeof REC_TYPE;

const REC_NAMES = new Map<number, LibxcRecName>(Object.entries(REC_TYPE).map(([k, v]) => [v, k as LibxcRecName]));

/** The name of a known record type, or undefined. */
export function recTypeByCode(code: number): LibxcRecName | undefined {
  return REC_NAMES.get(code);
}

/** A record type for messages: its name, or "optional 0x80000001", or "type 0x13". */
export function recTypeName(code: number): string {
  const n = REC_NAMES.get(code);
  if (n !== undefined) return n;
  return code >= REC_TYPE_OPTIONAL ? `optional ${hex(code)}` : `type ${hex(code)}`;
}

/** Bits 51:0 of a PAGE_DATA entry (and the largest pfn any u64 pfn field may hold). */
export const PAGE_DATA_PFN_MASK = 2 ** 52 - 1;
/** The PFINFO type sits in bits 63:60 of a PAGE_DATA entry: PFINFO's value shifted up by 32. */
export const PAGE_DATA_TYPE_SHIFT = 60;

/** Largest PAGE_DATA body: a full batch, every page with data. */
export const PAGE_DATA_MAX_LENGTH = 8 + MAX_BATCH_SIZE * (8 + PAGE_SIZE);

/**
 * A PFINFO value as an unsigned u32: `PFINFO.L1TAB | PFINFO.LPINTAB` is negative in JavaScript.
 * NaN for what is no u32 or i32.
 */
export function pageTypeU32(type: number): number {
  return Number.isInteger(type) && type >= -(2 ** 31) && type <= 0xffff_ffff ? type >>> 0 : Number.NaN;
}

/** XEN_DOMCTL_PFINFO_* values a stream may carry (5-8 in the top nibble are reserved). */
export function pageTypeIsValid(type: number): boolean {
  const t = pageTypeU32(type);
  if (Number.isNaN(t) || t % 2 ** PFINFO.LTAB_SHIFT !== 0) return false;
  const nib = t / 2 ** PFINFO.LTAB_SHIFT;
  return nib <= 4 || nib >= 9;
}

/**
 * NOTAB and the (pinned) L1-L4 tables carry a page of data; BROKEN, XALLOC and XTAB none. For a
 * valid type: the low three bits of the nibble are 0-4 for the first, 5-7 for the others.
 */
export function pageTypeHasData(type: number): boolean {
  return Math.floor(pageTypeU32(type) / 2 ** PFINFO.LTAB_SHIFT) % 8 <= 4;
}

// ---- plain forms ----------------------------------------------------------------------------

export interface ImageHeader {
  /** 2 or 3. */
  readonly version: number;
  /** IHDR_OPT_*; only little-endian (0) is supported. */
  readonly options: number;
}

export interface DomainHeader {
  readonly type: DomainType;
  readonly pageShift: number;
  /** 0 for a stream converted from the legacy format. */
  readonly xenMajor: number;
  readonly xenMinor: number;
}

export interface PageDataPage {
  readonly pfn: number;
  /** XEN_DOMCTL_PFINFO_* as domctl.ts has them (e.g. PFINFO.L1TAB | PFINFO.LPINTAB); decoded as a u32. */
  readonly type: number;
  /** PAGE_SIZE bytes when pageTypeHasData(type), else absent. */
  readonly data?: Uint8Array;
}

export interface X86PvInfo {
  /** Bytes: 4 (i386 PAE) or 8 (x86_64). */
  readonly guestWidth: 4 | 8;
  readonly ptLevels: 3 | 4;
}

export interface X86PvP2mFrames {
  readonly startPfn: number;
  readonly endPfn: number;
  /** The pfns of the p2m frames covering startPfn..endPfn inclusive. */
  readonly frames: readonly number[];
}

/** X86_PV_VCPU_{BASIC,EXTENDED,XSAVE,MSRS}: a vCPU's blob (BASIC: vcpu_guest_context bytes). */
export interface VcpuBlob {
  readonly vcpuId: number;
  readonly context: Uint8Array;
}

export interface X86TscInfo {
  readonly mode: number;
  readonly khz: number;
  readonly nsec: bigint;
  readonly incarnation: number;
}

export interface HvmParam {
  readonly index: bigint;
  readonly value: bigint;
}

/** xen_cpuid_leaf_t. */
export interface CpuidLeaf {
  readonly leaf: number;
  readonly subleaf: number;
  readonly a: number;
  readonly b: number;
  readonly c: number;
  readonly d: number;
}

/** xen_msr_entry_t. */
export interface MsrEntry {
  readonly idx: number;
  readonly flags: number;
  readonly val: bigint;
}

/** The decoded body of each record type (null: the record has no body). */
export interface LibxcBodies {
  END: null;
  PAGE_DATA: readonly PageDataPage[];
  X86_PV_INFO: X86PvInfo;
  X86_PV_P2M_FRAMES: X86PvP2mFrames;
  X86_PV_VCPU_BASIC: VcpuBlob;
  X86_PV_VCPU_EXTENDED: VcpuBlob;
  X86_PV_VCPU_XSAVE: VcpuBlob;
  SHARED_INFO: Uint8Array;
  X86_TSC_INFO: X86TscInfo;
  HVM_CONTEXT: Uint8Array;
  HVM_PARAMS: readonly HvmParam[];
  TOOLSTACK: Uint8Array;
  X86_PV_VCPU_MSRS: VcpuBlob;
  VERIFY: null;
  CHECKPOINT: null;
  CHECKPOINT_DIRTY_PFN_LIST: readonly number[];
  STATIC_DATA_END: null;
  X86_CPUID_POLICY: readonly CpuidLeaf[];
  X86_MSR_POLICY: readonly MsrEntry[];
}

export type KnownLibxcRecord = { [K in LibxcRecName]: { readonly type: K; readonly body: LibxcBodies[K] } }[LibxcRecName];
/** A record with bit 31 set that this code does not know: carried as bytes. */
export interface OptionalLibxcRecord {
  readonly type: "OPTIONAL";
  readonly code: number;
  readonly body: Uint8Array;
}
export type LibxcRecord = KnownLibxcRecord | OptionalLibxcRecord;

// ---- helpers --------------------------------------------------------------------------------

export function dataView(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Length rounded up to REC_ALIGN. */
export function padded(length: number): number {
  return Math.ceil(length / REC_ALIGN) * REC_ALIGN;
}

function fail(msg: string): never {
  throw new StreamError(msg);
}

function needLength(what: string, b: Uint8Array, n: number): void {
  if (b.length !== n) fail(`${what}: ${b.length} bytes, not ${n}`);
}

function u32(what: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new RangeError(`${what}: ${v} is not a u32`);
  return v;
}

function u64(what: string, v: bigint): bigint {
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`${what}: ${v} is not a u64`);
  return v;
}

function pfnArg(what: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > PAGE_DATA_PFN_MASK) throw new RangeError(`${what}: ${v} is not a pfn (0..2^52-1)`);
  return v;
}

/** A u64 pfn field: more than 52 bits cannot name a 4K frame in a 64-bit space. */
function getPfn(dv: DataView, off: number, what: string): number {
  const lo = dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  if (hi >= 2 ** 20) fail(`${what} ${hex((BigInt(hi) << 32n) | BigInt(lo))} is not a pfn (more than 52 bits)`);
  return hi * 2 ** 32 + lo;
}

function putPfn(dv: DataView, off: number, v: number): void {
  dv.setUint32(off, v % 2 ** 32, true);
  dv.setUint32(off + 4, Math.floor(v / 2 ** 32), true);
}

// ---- headers --------------------------------------------------------------------------------

export function encodeImageHeader(h: ImageHeader = { version: IHDR_VERSION, options: 0 }): Uint8Array {
  const b = new Uint8Array(IHDR_SIZE);
  const dv = dataView(b);
  dv.setBigUint64(0, IHDR_MARKER, false);
  dv.setUint32(8, IHDR_ID, false);
  dv.setUint32(12, u32("image header version", h.version), false);
  if (!Number.isInteger(h.options) || h.options < 0 || h.options > 0xffff) throw new RangeError(`image header options: ${h.options} is not a u16`);
  dv.setUint16(16, h.options, false);
  return b;
}

export function decodeImageHeader(b: Uint8Array): ImageHeader {
  needLength("image header", b, IHDR_SIZE);
  const dv = dataView(b);
  const marker = dv.getBigUint64(0, false);
  if (marker !== IHDR_MARKER) fail(`marker ${hex(marker)} is not ${hex(IHDR_MARKER)} (a legacy or non-Xen image?)`);
  const id = dv.getUint32(8, false);
  if (id !== IHDR_ID) fail(`id ${hex(id)} is not ${hex(IHDR_ID)} ("XENF")`);
  const version = dv.getUint32(12, false);
  if (version < 2 || version > 3) fail(`version ${version} is not 2 or 3`);
  const options = dv.getUint16(16, false);
  if (options & ~IHDR_OPT_BIG_ENDIAN) fail(`options ${hex(options)} has reserved bits ${hex(options & ~IHDR_OPT_BIG_ENDIAN)} set`);
  if (options & IHDR_OPT_BIG_ENDIAN) fail("options say big-endian: only little-endian streams are supported");
  const res1 = dv.getUint16(18, false);
  const res2 = dv.getUint32(20, false);
  if (res1 !== 0 || res2 !== 0) fail(`reserved fields are ${hex(res1)}:${hex(res2)}, not 0`);
  return { version, options };
}

export function encodeDomainHeader(h: DomainHeader): Uint8Array {
  const b = new Uint8Array(DHDR_SIZE);
  const dv = dataView(b);
  dv.setUint32(0, u32("domain type", h.type), true);
  if (!Number.isInteger(h.pageShift) || h.pageShift < 0 || h.pageShift > 0xffff) throw new RangeError(`page_shift ${h.pageShift} is not a u16`);
  dv.setUint16(4, h.pageShift, true);
  dv.setUint32(8, u32("xen_major", h.xenMajor), true);
  dv.setUint32(12, u32("xen_minor", h.xenMinor), true);
  return b;
}

export function decodeDomainHeader(b: Uint8Array): DomainHeader {
  needLength("domain header", b, DHDR_SIZE);
  const dv = dataView(b);
  const type = dv.getUint32(0, true);
  if (type !== DHDR_TYPE.X86_PV && type !== DHDR_TYPE.X86_HVM) fail(`type ${hex(type)} is not x86 PV (1) or x86 HVM (2)`);
  const pageShift = dv.getUint16(4, true);
  if (pageShift !== PAGE_SHIFT) fail(`page_shift ${pageShift} is not ${PAGE_SHIFT}`);
  const res = dv.getUint16(6, true);
  if (res !== 0) fail(`reserved field is ${hex(res)}, not 0`);
  return { type, pageShift, xenMajor: dv.getUint32(8, true), xenMinor: dv.getUint32(12, true) };
}

/** The record header: type and body length (before padding). Shared with libxl's stream. */
export function encodeRecordHeader(type: number, length: number): Uint8Array {
  const b = new Uint8Array(RHDR_SIZE);
  const dv = dataView(b);
  dv.setUint32(0, u32("record type", type), true);
  dv.setUint32(4, u32("record length", length), true);
  return b;
}

export function decodeRecordHeader(b: Uint8Array): { type: number; length: number } {
  needLength("record header", b, RHDR_SIZE);
  const dv = dataView(b);
  return { type: dv.getUint32(0, true), length: dv.getUint32(4, true) };
}

// ---- bodies ---------------------------------------------------------------------------------

const EMPTY = new Uint8Array(0);

function encodeEmpty(_: null): Uint8Array {
  return EMPTY;
}

function decodeEmpty(b: Uint8Array): null {
  if (b.length !== 0) fail(`length ${b.length}: this record has no body`);
  return null;
}

export function encodePageData(pages: readonly PageDataPage[]): Uint8Array {
  const b = new Uint8Array(pageDataLength(pages));
  encodePageDataInto(pages, b, 0);
  return b;
}

function checkBatchSize(pages: readonly PageDataPage[]): void {
  if (pages.length < 1 || pages.length > MAX_BATCH_SIZE) throw new RangeError(`PAGE_DATA: ${pages.length} pages, not 1..${MAX_BATCH_SIZE}`);
}

/** The length of the PAGE_DATA body for `pages` (1..MAX_BATCH_SIZE of them, or RangeError). */
export function pageDataLength(pages: readonly PageDataPage[]): number {
  checkBatchSize(pages);
  let withData = 0;
  for (const p of pages) if (pageTypeHasData(p.type)) withData++;
  return 8 + 8 * pages.length + PAGE_SIZE * withData;
}

/** encodePageData into `b` from `offset` (pageDataLength(pages) bytes): for a writer that reuses one buffer for every batch. */
export function encodePageDataInto(pages: readonly PageDataPage[], b: Uint8Array, offset: number): void {
  checkBatchSize(pages);
  const dv = new DataView(b.buffer, b.byteOffset + offset, 8 + 8 * pages.length);
  dv.setUint32(0, pages.length, true);
  dv.setUint32(4, 0, true);
  let at = offset + 8 + 8 * pages.length;
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i]!;
    pfnArg(`PAGE_DATA pfn[${i}]`, p.pfn);
    if (!pageTypeIsValid(p.type)) throw new RangeError(`PAGE_DATA pfn[${i}] ${hex(p.pfn)}: type ${p.type} is not a PFINFO type`);
    const lo = p.pfn % 2 ** 32;
    const hi = Math.floor(p.pfn / 2 ** 32) + pageTypeU32(p.type); // the type is already bits 31:28 of the high word
    dv.setUint32(8 + 8 * i, lo, true);
    dv.setUint32(12 + 8 * i, hi, true);
    if (pageTypeHasData(p.type)) {
      if (p.data?.length !== PAGE_SIZE) throw new RangeError(`PAGE_DATA pfn[${i}] ${hex(p.pfn)}: type ${hex(pageTypeU32(p.type))} needs ${PAGE_SIZE} bytes of data, got ${p.data?.length ?? "none"}`);
      b.set(p.data, at);
      at += PAGE_SIZE;
    } else if (p.data !== undefined) {
      throw new RangeError(`PAGE_DATA pfn[${i}] ${hex(p.pfn)}: type ${hex(pageTypeU32(p.type))} carries no data`);
    }
  }
}

/** The pages of a PAGE_DATA body; their data are views into `b`. */
export function decodePageData(b: Uint8Array): PageDataPage[] {
  if (b.length < 16) fail(`length ${b.length} is too short: a count and one pfn need 16 bytes`);
  const dv = dataView(b);
  const count = dv.getUint32(0, true);
  const res = dv.getUint32(4, true);
  if (count === 0) fail("count is 0");
  if (count > MAX_BATCH_SIZE) fail(`count ${count} exceeds the batch limit of ${MAX_BATCH_SIZE} pages`);
  if (res !== 0) fail(`reserved field is ${hex(res)}, not 0`);
  if (b.length < 8 + 8 * count) fail(`length ${b.length} cannot hold ${count} pfns (${8 + 8 * count} bytes)`);
  // Checked entry by entry first, then the length; the pages are made once both hold.
  const pfns = new Float64Array(count);
  const types = new Float64Array(count);
  let withData = 0;
  for (let i = 0; i < count; i++) {
    const lo = dv.getUint32(8 + 8 * i, true);
    const hi = dv.getUint32(12 + 8 * i, true);
    const pfn = (hi & 0xfffff) * 2 ** 32 + lo;
    const type = (hi >>> 28) * 2 ** 28;
    const reserved = (hi >>> 20) & 0xff;
    if (reserved !== 0) fail(`pfn[${i}] ${hex(pfn)}: reserved bits 59:52 are ${hex(reserved)}, not 0`);
    if (!pageTypeIsValid(type)) fail(`pfn[${i}] ${hex(pfn)}: type ${hex(type)} is not a PFINFO type`);
    if (pageTypeHasData(type)) withData++;
    pfns[i] = pfn;
    types[i] = type;
  }
  const want = 8 + 8 * count + PAGE_SIZE * withData;
  if (b.length !== want) fail(`length ${b.length}, but ${count} pfns of which ${withData} carry data need ${want} bytes`);
  const pages: PageDataPage[] = new Array(count);
  let at = 8 + 8 * count;
  for (let i = 0; i < count; i++) {
    const pfn = pfns[i]!;
    const type = types[i]!;
    if (!pageTypeHasData(type)) {
      pages[i] = { pfn, type };
      continue;
    }
    pages[i] = { pfn, type, data: new Uint8Array(b.buffer, b.byteOffset + at, PAGE_SIZE) };
    at += PAGE_SIZE;
  }
  return pages;
}

export function encodeX86PvInfo(info: X86PvInfo): Uint8Array {
  if (!validPvInfo(info.guestWidth, info.ptLevels)) throw new RangeError(`X86_PV_INFO: guest_width ${info.guestWidth} with pt_levels ${info.ptLevels}`);
  return Uint8Array.of(info.guestWidth, info.ptLevels, 0, 0, 0, 0, 0, 0);
}

/** Xen's restore accepts 4 with 3 levels (i386 PAE) and 8 with 4 (x86_64) only. */
function validPvInfo(w: number, l: number): boolean {
  return (w === 4 && l === 3) || (w === 8 && l === 4);
}

export function decodeX86PvInfo(b: Uint8Array): X86PvInfo {
  needLength("length", b, 8);
  const [w, l] = [b[0]!, b[1]!];
  if (w !== 4 && w !== 8) fail(`guest_width ${w} is not 4 or 8`);
  if (l !== 3 && l !== 4) fail(`pt_levels ${l} is not 3 or 4`);
  if (!validPvInfo(w, l)) fail(`guest_width ${w} with pt_levels ${l}: width 4 needs 3 levels, width 8 needs 4`);
  const r = b.subarray(2).findIndex((x) => x !== 0);
  if (r >= 0) fail(`reserved byte ${r + 2} is ${hex(b[r + 2]!)}, not 0`);
  return { guestWidth: w, ptLevels: l };
}

export function encodeX86PvP2mFrames(f: X86PvP2mFrames): Uint8Array {
  u32("p2m_start_pfn", f.startPfn);
  u32("p2m_end_pfn", f.endPfn);
  if (f.startPfn > f.endPfn) throw new RangeError(`X86_PV_P2M_FRAMES: start pfn ${hex(f.startPfn)} after end pfn ${hex(f.endPfn)}`);
  if (f.frames.length === 0) throw new RangeError("X86_PV_P2M_FRAMES: no frames");
  const b = new Uint8Array(8 + 8 * f.frames.length);
  const dv = dataView(b);
  dv.setUint32(0, f.startPfn, true);
  dv.setUint32(4, f.endPfn, true);
  f.frames.forEach((p, i) => {
    putPfn(dv, 8 + 8 * i, pfnArg(`p2m_pfn[${i}]`, p));
  });
  return b;
}

export function decodeX86PvP2mFrames(b: Uint8Array): X86PvP2mFrames {
  if (b.length < 16 || b.length % 8 !== 0) fail(`length ${b.length} is not 8 + a multiple of 8 with at least one frame`);
  const dv = dataView(b);
  const startPfn = dv.getUint32(0, true);
  const endPfn = dv.getUint32(4, true);
  if (startPfn > endPfn) fail(`p2m_start_pfn ${hex(startPfn)} is after p2m_end_pfn ${hex(endPfn)}`);
  const frames: number[] = [];
  for (let i = 0; 8 + 8 * i < b.length; i++) frames.push(getPfn(dv, 8 + 8 * i, `p2m_pfn[${i}]`));
  return { startPfn, endPfn, frames };
}

/** How many p2m frames a guest of `guestWidth` bytes has for pfns start..end (Xen's restore check). */
export function p2mFrameCount(startPfn: number, endPfn: number, guestWidth: 4 | 8): number {
  const fpp = PAGE_SIZE / guestWidth;
  return Math.floor(endPfn / fpp) - Math.floor(startPfn / fpp) + 1;
}

/** The size of X86_PV_VCPU_BASIC's context for a guest of `guestWidth` bytes. */
export function vcpuBasicContextSize(guestWidth: 4 | 8): number {
  return vcpuGuestContextSize(guestWidth === 8 ? 64 : 32);
}

/** Largest X86_PV_VCPU_EXTENDED context Xen's restore takes. */
export const VCPU_EXTENDED_MAX = 128;
/** Smallest non-empty X86_PV_VCPU_XSAVE context (xcr0 and xcr0_accum). */
export const VCPU_XSAVE_MIN = 16;
/** sizeof(xen_domctl_vcpu_msr_t). */
export const VCPU_MSR_SIZE = 16;

export function encodeVcpuBlob(v: VcpuBlob): Uint8Array {
  const b = new Uint8Array(8 + v.context.length);
  dataView(b).setUint32(0, u32("vcpu_id", v.vcpuId), true);
  b.set(v.context, 8);
  return b;
}

/** The vCPU header of the four vCPU records; the context is a view into `b`. */
export function decodeVcpuBlob(b: Uint8Array): VcpuBlob {
  if (b.length < 8) fail(`length ${b.length} is too short for the vcpu_id header (8 bytes)`);
  const dv = dataView(b);
  const res = dv.getUint32(4, true);
  if (res !== 0) fail(`vcpu ${dv.getUint32(0, true)}: reserved field is ${hex(res)}, not 0`);
  return { vcpuId: dv.getUint32(0, true), context: b.subarray(8) };
}

/** The per-type checks of Xen's restore on a non-empty vCPU blob (empty ones are tolerated). */
function checkVcpuBlob(type: "X86_PV_VCPU_EXTENDED" | "X86_PV_VCPU_XSAVE" | "X86_PV_VCPU_MSRS", v: VcpuBlob): VcpuBlob {
  const n = v.context.length;
  if (n === 0) return v;
  if (type === "X86_PV_VCPU_EXTENDED" && n > VCPU_EXTENDED_MAX) fail(`vcpu ${v.vcpuId}: context of ${n} bytes exceeds ${VCPU_EXTENDED_MAX}`);
  if (type === "X86_PV_VCPU_XSAVE" && n < VCPU_XSAVE_MIN) fail(`vcpu ${v.vcpuId}: context of ${n} bytes is under ${VCPU_XSAVE_MIN}`);
  if (type === "X86_PV_VCPU_MSRS" && n % VCPU_MSR_SIZE !== 0) fail(`vcpu ${v.vcpuId}: context of ${n} bytes is not a multiple of ${VCPU_MSR_SIZE}`);
  return v;
}

export function encodeSharedInfo(page: Uint8Array): Uint8Array {
  if (page.length !== PAGE_SIZE) throw new RangeError(`SHARED_INFO: ${page.length} bytes, not ${PAGE_SIZE}`);
  return page;
}

export function decodeSharedInfo(b: Uint8Array): Uint8Array {
  needLength("length", b, PAGE_SIZE);
  return b;
}

export function encodeX86TscInfo(t: X86TscInfo): Uint8Array {
  const b = new Uint8Array(24);
  const dv = dataView(b);
  dv.setUint32(0, u32("tsc mode", t.mode), true);
  dv.setUint32(4, u32("tsc khz", t.khz), true);
  dv.setBigUint64(8, u64("tsc nsec", t.nsec), true);
  dv.setUint32(16, u32("tsc incarnation", t.incarnation), true);
  return b;
}

export function decodeX86TscInfo(b: Uint8Array): X86TscInfo {
  needLength("length", b, 24);
  const dv = dataView(b);
  const res = dv.getUint32(20, true);
  if (res !== 0) fail(`reserved field is ${hex(res)}, not 0`);
  return { mode: dv.getUint32(0, true), khz: dv.getUint32(4, true), nsec: dv.getBigUint64(8, true), incarnation: dv.getUint32(16, true) };
}

function encodeBlob(what: string, nonEmpty: boolean) {
  return (b: Uint8Array): Uint8Array => {
    if (nonEmpty && b.length === 0) throw new RangeError(`${what}: empty`);
    return b;
  };
}

function decodeBlob(nonEmpty: boolean) {
  return (b: Uint8Array): Uint8Array => {
    if (nonEmpty && b.length === 0) fail("length 0: this record cannot be empty");
    return b;
  };
}

export const encodeHvmContext = encodeBlob("HVM_CONTEXT", true);
export const decodeHvmContext = decodeBlob(true);
/** The deprecated TOOLSTACK record: an opaque blob. */
export const encodeToolstack = encodeBlob("TOOLSTACK", false);
export const decodeToolstack = decodeBlob(false);

export function encodeHvmParams(params: readonly HvmParam[]): Uint8Array {
  const b = new Uint8Array(8 + 16 * params.length);
  const dv = dataView(b);
  dv.setUint32(0, params.length, true);
  params.forEach((p, i) => {
    dv.setBigUint64(8 + 16 * i, u64(`param[${i}].index`, p.index), true);
    dv.setBigUint64(16 + 16 * i, u64(`param[${i}].value`, p.value), true);
  });
  return b;
}

export function decodeHvmParams(b: Uint8Array): HvmParam[] {
  if (b.length < 8) fail(`length ${b.length} is too short for the count (8 bytes)`);
  const dv = dataView(b);
  const count = dv.getUint32(0, true);
  const res = dv.getUint32(4, true);
  if (res !== 0) fail(`reserved field is ${hex(res)}, not 0`);
  if (b.length !== 8 + 16 * count) fail(`length ${b.length}, but count ${count} needs ${8 + 16 * count} bytes`);
  return Array.from({ length: count }, (_, i) => ({ index: dv.getBigUint64(8 + 16 * i, true), value: dv.getBigUint64(16 + 16 * i, true) }));
}

export function encodeDirtyPfnList(pfns: readonly number[]): Uint8Array {
  const b = new Uint8Array(8 * pfns.length);
  const dv = dataView(b);
  pfns.forEach((p, i) => {
    putPfn(dv, 8 * i, pfnArg(`pfn[${i}]`, p));
  });
  return b;
}

export function decodeDirtyPfnList(b: Uint8Array): number[] {
  if (b.length % 8 !== 0) fail(`length ${b.length} is not a multiple of 8`);
  const dv = dataView(b);
  return Array.from({ length: b.length / 8 }, (_, i) => getPfn(dv, 8 * i, `pfn[${i}]`));
}

export const CPUID_LEAF_SIZE = 24;
export const MSR_ENTRY_SIZE = 16;

export function encodeCpuidPolicy(leaves: readonly CpuidLeaf[]): Uint8Array {
  if (leaves.length === 0) throw new RangeError("X86_CPUID_POLICY: no leaves");
  const b = new Uint8Array(CPUID_LEAF_SIZE * leaves.length);
  const dv = dataView(b);
  leaves.forEach((l, i) => {
    (["leaf", "subleaf", "a", "b", "c", "d"] as const).forEach((f, j) => {
      dv.setUint32(CPUID_LEAF_SIZE * i + 4 * j, u32(`leaf[${i}].${f}`, l[f]), true);
    });
  });
  return b;
}

export function decodeCpuidPolicy(b: Uint8Array): CpuidLeaf[] {
  if (b.length === 0 || b.length % CPUID_LEAF_SIZE !== 0) fail(`length ${b.length} is not a non-zero multiple of ${CPUID_LEAF_SIZE}`);
  const dv = dataView(b);
  return Array.from({ length: b.length / CPUID_LEAF_SIZE }, (_, i) => {
    const g = (j: number) => dv.getUint32(CPUID_LEAF_SIZE * i + 4 * j, true);
    return { leaf: g(0), subleaf: g(1), a: g(2), b: g(3), c: g(4), d: g(5) };
  });
}

export function encodeMsrPolicy(entries: readonly MsrEntry[]): Uint8Array {
  if (entries.length === 0) throw new RangeError("X86_MSR_POLICY: no entries");
  const b = new Uint8Array(MSR_ENTRY_SIZE * entries.length);
  const dv = dataView(b);
  entries.forEach((e, i) => {
    dv.setUint32(MSR_ENTRY_SIZE * i, u32(`msr[${i}].idx`, e.idx), true);
    dv.setUint32(MSR_ENTRY_SIZE * i + 4, u32(`msr[${i}].flags`, e.flags), true);
    dv.setBigUint64(MSR_ENTRY_SIZE * i + 8, u64(`msr[${i}].val`, e.val), true);
  });
  return b;
}

export function decodeMsrPolicy(b: Uint8Array): MsrEntry[] {
  if (b.length === 0 || b.length % MSR_ENTRY_SIZE !== 0) fail(`length ${b.length} is not a non-zero multiple of ${MSR_ENTRY_SIZE}`);
  const dv = dataView(b);
  return Array.from({ length: b.length / MSR_ENTRY_SIZE }, (_, i) => ({
    idx: dv.getUint32(MSR_ENTRY_SIZE * i, true),
    flags: dv.getUint32(MSR_ENTRY_SIZE * i + 4, true),
    val: dv.getBigUint64(MSR_ENTRY_SIZE * i + 8, true),
  }));
}

// ---- the table ------------------------------------------------------------------------------

export interface BodyCodec<T> {
  encode(body: T): Uint8Array;
  /** Throws StreamError. */
  decode(bytes: Uint8Array): T;
}

export const LIBXC_CODECS: { readonly [K in LibxcRecName]: BodyCodec<LibxcBodies[K]> } = {
  END: { encode: encodeEmpty, decode: decodeEmpty },
  PAGE_DATA: { encode: encodePageData, decode: decodePageData },
  X86_PV_INFO: { encode: encodeX86PvInfo, decode: decodeX86PvInfo },
  X86_PV_P2M_FRAMES: { encode: encodeX86PvP2mFrames, decode: decodeX86PvP2mFrames },
  X86_PV_VCPU_BASIC: { encode: encodeVcpuBlob, decode: decodeVcpuBlob },
  X86_PV_VCPU_EXTENDED: { encode: encodeVcpuBlob, decode: (b) => checkVcpuBlob("X86_PV_VCPU_EXTENDED", decodeVcpuBlob(b)) },
  X86_PV_VCPU_XSAVE: { encode: encodeVcpuBlob, decode: (b) => checkVcpuBlob("X86_PV_VCPU_XSAVE", decodeVcpuBlob(b)) },
  SHARED_INFO: { encode: encodeSharedInfo, decode: decodeSharedInfo },
  X86_TSC_INFO: { encode: encodeX86TscInfo, decode: decodeX86TscInfo },
  HVM_CONTEXT: { encode: encodeHvmContext, decode: decodeHvmContext },
  HVM_PARAMS: { encode: encodeHvmParams, decode: decodeHvmParams },
  TOOLSTACK: { encode: encodeToolstack, decode: decodeToolstack },
  X86_PV_VCPU_MSRS: { encode: encodeVcpuBlob, decode: (b) => checkVcpuBlob("X86_PV_VCPU_MSRS", decodeVcpuBlob(b)) },
  VERIFY: { encode: encodeEmpty, decode: decodeEmpty },
  CHECKPOINT: { encode: encodeEmpty, decode: decodeEmpty },
  CHECKPOINT_DIRTY_PFN_LIST: { encode: encodeDirtyPfnList, decode: decodeDirtyPfnList },
  STATIC_DATA_END: { encode: encodeEmpty, decode: decodeEmpty },
  X86_CPUID_POLICY: { encode: encodeCpuidPolicy, decode: decodeCpuidPolicy },
  X86_MSR_POLICY: { encode: encodeMsrPolicy, decode: decodeMsrPolicy },
};

/** A record's type code and body bytes (unpadded). Throws RangeError for a value the format cannot hold. */
export function encodeLibxcRecord(rec: LibxcRecord): { code: number; body: Uint8Array } {
  if (rec.type === "OPTIONAL") {
    if (!Number.isInteger(rec.code) || rec.code < REC_TYPE_OPTIONAL || rec.code > 0xffff_ffff) throw new RangeError(`optional record type ${rec.code} lacks bit 31`);
    return { code: rec.code, body: rec.body };
  }
  return { code: REC_TYPE[rec.type], body: encodeBody(rec.type, rec.body) };
}

function encodeBody<K extends LibxcRecName>(type: K, body: LibxcBodies[K]): Uint8Array {
  return (LIBXC_CODECS[type] as BodyCodec<LibxcBodies[K]>).encode(body);
}

/** The record of type `code` from its body bytes (unpadded). Throws StreamError, also for an unknown mandatory type. */
export function decodeLibxcRecord(code: number, body: Uint8Array): LibxcRecord {
  const type = recTypeByCode(code);
  if (type === undefined) {
    if (code >= REC_TYPE_OPTIONAL) return { type: "OPTIONAL", code, body };
    fail(`record type ${hex(code)} is not one Xen 4.17 knows`);
  }
  return { type, body: LIBXC_CODECS[type].decode(body) } as KnownLibxcRecord;
}

/**
 * Why a record of type `code` cannot be `length` bytes long, judged before its body is read (so a
 * corrupt length is refused before anything is allocated for it), or undefined. Variable-length
 * records other than PAGE_DATA are bounded by `maxLength`.
 */
export function recordLengthProblem(code: number, length: number, maxLength: number): string | undefined {
  const type = recTypeByCode(code);
  const exact = (n: number) => (length === n ? undefined : `length ${length} is not ${n}`);
  const atLeast = (n: number) => (length >= n ? undefined : `length ${length} is under the minimum ${n}`);
  let p: string | undefined;
  switch (type) {
    case "END":
    case "VERIFY":
    case "CHECKPOINT":
    case "STATIC_DATA_END":
      return exact(0);
    case "X86_PV_INFO":
      return exact(8);
    case "X86_TSC_INFO":
      return exact(24);
    case "SHARED_INFO":
      return exact(PAGE_SIZE);
    case "PAGE_DATA":
      if (length > PAGE_DATA_MAX_LENGTH) return `length ${length} exceeds ${PAGE_DATA_MAX_LENGTH}, a batch of ${MAX_BATCH_SIZE} pages`;
      return atLeast(16) ?? (length % 8 === 0 ? undefined : `length ${length} is not a multiple of 8`);
    case "X86_PV_P2M_FRAMES":
      p = atLeast(16) ?? (length % 8 === 0 ? undefined : `length ${length} is not a multiple of 8`);
      break;
    case "X86_PV_VCPU_BASIC":
      if (length > 8 + vcpuBasicContextSize(8)) return `length ${length} exceeds ${8 + vcpuBasicContextSize(8)}, a vcpu_guest_context`;
      return atLeast(8);
    case "X86_PV_VCPU_EXTENDED":
      if (length > 8 + VCPU_EXTENDED_MAX) return `length ${length} exceeds ${8 + VCPU_EXTENDED_MAX}`;
      return atLeast(8);
    case "X86_PV_VCPU_XSAVE":
    case "X86_PV_VCPU_MSRS":
    case "HVM_PARAMS":
      p = atLeast(8);
      break;
    case "HVM_CONTEXT":
      p = atLeast(1);
      break;
    case "X86_CPUID_POLICY":
      p = atLeast(CPUID_LEAF_SIZE);
      break;
    case "X86_MSR_POLICY":
      p = atLeast(MSR_ENTRY_SIZE);
      break;
    case "TOOLSTACK":
    case "CHECKPOINT_DIRTY_PFN_LIST":
    case undefined:
      break;
  }
  if (p === undefined && length > maxLength) p = `length ${length} exceeds the limit of ${maxLength} bytes`;
  return p;
}
