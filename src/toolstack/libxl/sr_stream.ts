// libxl's save/migration stream, version 2 (docs/specs/libxl-migration-stream.pandoc,
// tools/libs/light/libxl_sr_stream_format.h): a big-endian header, then records framed as libxc's
// are. The libxc image is not a record body: a LIBXC_CONTEXT record of length 0 hands the stream
// to libxc, whose image (headers, records, END or CHECKPOINT) follows it directly, after which
// libxl's records resume.

import {
  dataView,
  decodeRecordHeader,
  hex,
  padded,
  RHDR_SIZE,
  REC_LENGTH_MAX,
  REC_TYPE_OPTIONAL,
  StreamError,
} from "../libxc/sr_format.ts";
import {
  type ByteSink,
  type ByteSource,
  DEFAULT_MAX_RECORD_LENGTH,
  frameRecord,
  ImageReader,
  ImageWriter,
  type StreamInput,
  type StreamOptions,
  type StreamOutput,
  toInput,
  toOutput,
} from "../libxc/sr_stream.ts";

/** "LibxlFmt". */
export const LIBXL_IDENT = 0x4c6962786c466d74n;
export const LIBXL_VERSION = 2;
export const LIBXL_HDR_SIZE = 16;
export const LIBXL_OPT = { BIG_ENDIAN: 1 << 0, LEGACY: 1 << 1 } as const;

export const LIBXL_REC_TYPE = {
  END: 0,
  LIBXC_CONTEXT: 1,
  EMULATOR_XENSTORE_DATA: 2,
  EMULATOR_CONTEXT: 3,
  CHECKPOINT_END: 4,
  CHECKPOINT_STATE: 5,
} as const;
export type LibxlRecName = keyof typeof LIBXL_REC_TYPE;

export const EMULATOR_ID = { UNKNOWN: 0, QEMU_TRADITIONAL: 1, QEMU_UPSTREAM: 2 } as const;
/** libxl_sr_checkpoint_state.id (COLO). */
export const CHECKPOINT_STATE_ID = { NEW: 0, SVM_SUSPENDED: 1, SVM_READY: 2, SVM_RESUMED: 3 } as const;

const NAMES = new Map<number, LibxlRecName>(Object.entries(LIBXL_REC_TYPE).map(([k, v]) => [v, k as LibxlRecName]));

export function libxlRecTypeName(code: number): string {
  return NAMES.get(code) ?? (code >= REC_TYPE_OPTIONAL ? `optional ${hex(code)}` : `type ${hex(code)}`);
}

export interface LibxlHeader {
  readonly version: number;
  /** Written by the legacy conversion tool. */
  readonly legacy: boolean;
}

export interface EmulatorXenstoreData {
  readonly emulatorId: number;
  readonly index: number;
  /** Keys relative to the device model's xenstore directory, with their values. */
  readonly entries: readonly (readonly [string, string])[];
}

export interface EmulatorContext {
  readonly emulatorId: number;
  readonly index: number;
  readonly context: Uint8Array;
}

export interface CheckpointState {
  readonly id: number;
}

export interface LibxlBodies {
  END: null;
  LIBXC_CONTEXT: null;
  EMULATOR_XENSTORE_DATA: EmulatorXenstoreData;
  EMULATOR_CONTEXT: EmulatorContext;
  CHECKPOINT_END: null;
  CHECKPOINT_STATE: CheckpointState;
}

export type KnownLibxlRecord = { [K in LibxlRecName]: { readonly type: K; readonly body: LibxlBodies[K] } }[LibxlRecName];
export interface OptionalLibxlRecord {
  readonly type: "OPTIONAL";
  readonly code: number;
  readonly body: Uint8Array;
}
export type LibxlRecord = KnownLibxlRecord | OptionalLibxlRecord;

export type ReadLibxlRecord = LibxlRecord & { readonly index: number; readonly offset: number; readonly length: number };

function fail(msg: string): never {
  throw new StreamError(msg);
}

// ---- header and bodies ----------------------------------------------------------------------

export function encodeLibxlHeader(h: LibxlHeader = { version: LIBXL_VERSION, legacy: false }): Uint8Array {
  const b = new Uint8Array(LIBXL_HDR_SIZE);
  const dv = dataView(b);
  dv.setBigUint64(0, LIBXL_IDENT, false);
  dv.setUint32(8, h.version, false);
  dv.setUint32(12, h.legacy ? LIBXL_OPT.LEGACY : 0, false);
  return b;
}

export function decodeLibxlHeader(b: Uint8Array): LibxlHeader {
  if (b.length !== LIBXL_HDR_SIZE) fail(`${b.length} bytes, not ${LIBXL_HDR_SIZE}`);
  const dv = dataView(b);
  const ident = dv.getBigUint64(0, false);
  if (ident !== LIBXL_IDENT) fail(`ident ${hex(ident)} is not ${hex(LIBXL_IDENT)} ("LibxlFmt")`);
  const version = dv.getUint32(8, false);
  if (version !== LIBXL_VERSION) fail(`version ${version} is not ${LIBXL_VERSION}`);
  const options = dv.getUint32(12, false);
  const reserved = options & ~(LIBXL_OPT.BIG_ENDIAN | LIBXL_OPT.LEGACY);
  if (reserved !== 0) fail(`options ${hex(options >>> 0)} has reserved bits ${hex(reserved >>> 0)} set`);
  if (options & LIBXL_OPT.BIG_ENDIAN) fail("options say big-endian: only little-endian streams are supported");
  return { version, legacy: (options & LIBXL_OPT.LEGACY) !== 0 };
}

const EMULATOR_IDS: ReadonlySet<number> = new Set(Object.values(EMULATOR_ID));

function encodeEmulatorHeader(b: Uint8Array, emulatorId: number, index: number): void {
  const dv = dataView(b);
  dv.setUint32(0, emulatorId, true);
  dv.setUint32(4, index, true);
}

function decodeEmulatorHeader(b: Uint8Array): { emulatorId: number; index: number } {
  if (b.length < 8) fail(`length ${b.length} is too short for the emulator header (8 bytes)`);
  const dv = dataView(b);
  const emulatorId = dv.getUint32(0, true);
  if (!EMULATOR_IDS.has(emulatorId)) fail(`emulator_id ${hex(emulatorId)} is not one libxl knows`);
  return { emulatorId, index: dv.getUint32(4, true) };
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Packed NUL-terminated key and value strings after the emulator header. */
export function encodeEmulatorXenstoreData(d: EmulatorXenstoreData): Uint8Array {
  const parts: string[] = d.entries.flat();
  for (const p of parts) if (p.includes("\0")) throw new RangeError(`EMULATOR_XENSTORE_DATA: ${JSON.stringify(p)} contains a NUL`);
  const data = utf8.encode(parts.map((p) => `${p}\0`).join(""));
  const b = new Uint8Array(8 + data.length);
  encodeEmulatorHeader(b, d.emulatorId, d.index);
  b.set(data, 8);
  return b;
}

export function decodeEmulatorXenstoreData(b: Uint8Array): EmulatorXenstoreData {
  const { emulatorId, index } = decodeEmulatorHeader(b);
  const data = b.subarray(8);
  const entries: [string, string][] = [];
  if (data.length > 0) {
    if (data[data.length - 1] !== 0) fail("xenstore data is not NUL-terminated");
    let text: string;
    try {
      text = strictUtf8.decode(data.subarray(0, data.length - 1));
    } catch {
      fail("xenstore data is not UTF-8");
    }
    const parts = text.split("\0");
    if (parts.length % 2 !== 0) fail(`xenstore data has ${parts.length} strings, not key/value pairs`);
    for (let i = 0; i < parts.length; i += 2) entries.push([parts[i]!, parts[i + 1]!]);
  }
  return { emulatorId, index, entries };
}

export function encodeEmulatorContext(c: EmulatorContext): Uint8Array {
  const b = new Uint8Array(8 + c.context.length);
  encodeEmulatorHeader(b, c.emulatorId, c.index);
  b.set(c.context, 8);
  return b;
}

export function decodeEmulatorContext(b: Uint8Array): EmulatorContext {
  return { ...decodeEmulatorHeader(b), context: b.subarray(8) };
}

export function encodeCheckpointState(s: CheckpointState): Uint8Array {
  const b = new Uint8Array(4);
  dataView(b).setUint32(0, s.id, true);
  return b;
}

export function decodeCheckpointState(b: Uint8Array): CheckpointState {
  if (b.length !== 4) fail(`length ${b.length} is not 4`);
  const id = dataView(b).getUint32(0, true);
  if (id > CHECKPOINT_STATE_ID.SVM_RESUMED) fail(`control_id ${hex(id)} is not one libxl knows`);
  return { id };
}

function decodeEmpty(b: Uint8Array): null {
  if (b.length !== 0) fail(`length ${b.length}: this record has no body`);
  return null;
}

export function encodeLibxlRecord(rec: LibxlRecord): { code: number; body: Uint8Array } {
  switch (rec.type) {
    case "END":
    case "LIBXC_CONTEXT":
    case "CHECKPOINT_END":
      return { code: LIBXL_REC_TYPE[rec.type], body: new Uint8Array(0) };
    case "EMULATOR_XENSTORE_DATA":
      return { code: LIBXL_REC_TYPE.EMULATOR_XENSTORE_DATA, body: encodeEmulatorXenstoreData(rec.body) };
    case "EMULATOR_CONTEXT":
      return { code: LIBXL_REC_TYPE.EMULATOR_CONTEXT, body: encodeEmulatorContext(rec.body) };
    case "CHECKPOINT_STATE":
      return { code: LIBXL_REC_TYPE.CHECKPOINT_STATE, body: encodeCheckpointState(rec.body) };
    case "OPTIONAL":
      if (!Number.isInteger(rec.code) || rec.code < REC_TYPE_OPTIONAL || rec.code > 0xffff_ffff) throw new RangeError(`optional record type ${rec.code} lacks bit 31`);
      return { code: rec.code, body: rec.body };
  }
}

/** Throws StreamError, also for an unknown mandatory type. */
export function decodeLibxlRecord(code: number, b: Uint8Array): LibxlRecord {
  const type = NAMES.get(code);
  switch (type) {
    case "END":
    case "LIBXC_CONTEXT":
    case "CHECKPOINT_END":
      return { type, body: decodeEmpty(b) };
    case "EMULATOR_XENSTORE_DATA":
      return { type, body: decodeEmulatorXenstoreData(b) };
    case "EMULATOR_CONTEXT":
      return { type, body: decodeEmulatorContext(b) };
    case "CHECKPOINT_STATE":
      return { type, body: decodeCheckpointState(b) };
    case undefined:
      if (code >= REC_TYPE_OPTIONAL) return { type: "OPTIONAL", code, body: b };
      return fail(`record type ${hex(code)} is not one libxl knows`);
  }
}

function lengthProblem(code: number, length: number, max: number): string | undefined {
  const type = NAMES.get(code);
  if (type === "END" || type === "LIBXC_CONTEXT" || type === "CHECKPOINT_END") return length === 0 ? undefined : `length ${length} is not 0`;
  if (type === "CHECKPOINT_STATE") return length === 4 ? undefined : `length ${length} is not 4`;
  if ((type === "EMULATOR_XENSTORE_DATA" || type === "EMULATOR_CONTEXT") && length < 8) return `length ${length} is under the minimum 8`;
  return length > max ? `length ${length} exceeds the limit of ${max} bytes` : undefined;
}

function maxLength(opts: StreamOptions): number {
  const m = opts.maxRecordLength ?? DEFAULT_MAX_RECORD_LENGTH;
  if (!Number.isInteger(m) || m < 0 || m > REC_LENGTH_MAX) throw new RangeError(`maxRecordLength ${m} is not 0..${REC_LENGTH_MAX}`);
  return m;
}

// ---- writer and reader ----------------------------------------------------------------------

/** Writes a libxl stream: header, records, the libxc image after each LIBXC_CONTEXT, END. */
export class LibxlWriter {
  readonly output: StreamOutput;
  private readonly opts: StreamOptions;
  private readonly maxRecordLength: number;
  private headerDone = false;
  private finished = false;
  private inner: ImageWriter | undefined;
  private innerOpen = false;
  private innerMark = 0;

  constructor(out: ByteSink | StreamOutput, opts: StreamOptions = {}) {
    this.output = toOutput(out);
    this.opts = opts;
    this.maxRecordLength = maxLength(opts);
  }

  get offset(): number {
    return this.output.offset;
  }

  writeHeader(h: LibxlHeader = { version: LIBXL_VERSION, legacy: false }): void {
    if (this.headerDone) throw new Error("libxl header written twice");
    this.output.write(encodeLibxlHeader(h));
    this.headerDone = true;
  }

  write(rec: LibxlRecord): void {
    if (!this.headerDone) throw new Error("libxl record before the header");
    if (this.finished) throw new Error(`libxl ${rec.type} record after END`);
    if (this.innerOpen) {
      if (!this.inner!.atBoundary || this.inner!.recordsWritten === this.innerMark) throw new Error(`libxl ${rec.type} record before the libxc image's END or CHECKPOINT`);
      this.innerOpen = false;
    }
    const { code, body } = encodeLibxlRecord(rec);
    const problem = lengthProblem(code, body.length, this.maxRecordLength);
    if (problem !== undefined) throw new RangeError(`libxl ${libxlRecTypeName(code)} record: ${problem}`);
    this.output.write(frameRecord(code, body));
    if (rec.type === "END") this.finished = true;
  }

  /**
   * Writes LIBXC_CONTEXT and returns the libxc writer that follows it (the same one each time: its
   * headers go once, before its first record). Write the libxc image up to END (or CHECKPOINT)
   * before the next libxl record.
   */
  libxc(): ImageWriter {
    this.write({ type: "LIBXC_CONTEXT", body: null });
    this.inner ??= new ImageWriter(this.output, this.opts);
    this.innerOpen = true;
    this.innerMark = this.inner.recordsWritten;
    return this.inner;
  }

  end(): void {
    this.write({ type: "END", body: null });
  }
}

/** Reads and checks a libxl stream one record at a time; after LIBXC_CONTEXT, `libxc()` reads the image. */
export class LibxlReader {
  readonly input: StreamInput;
  private readonly opts: StreamOptions;
  private readonly maxRecordLength: number;
  private hdr: LibxlHeader | undefined;
  private index = 0;
  private finished = false;
  private inner: ImageReader | undefined;
  private innerPending = false;
  /** The libxc reader's record count at the last LIBXC_CONTEXT. */
  private innerMark = 0;

  constructor(input: ByteSource | StreamInput, opts: StreamOptions = {}) {
    this.input = toInput(input);
    this.opts = opts;
    this.maxRecordLength = maxLength(opts);
  }

  get offset(): number {
    return this.input.offset;
  }
  get header(): LibxlHeader | undefined {
    return this.hdr;
  }
  get ended(): boolean {
    return this.finished;
  }

  readHeader(): LibxlHeader {
    if (this.hdr) return this.hdr;
    const off = this.input.offset;
    const b = this.input.readExact(LIBXL_HDR_SIZE, "libxl header");
    try {
      this.hdr = decodeLibxlHeader(b);
    } catch (e) {
      if (e instanceof StreamError) throw new StreamError(`libxl header at offset ${hex(off)}: ${e.message}`, { offset: off });
      throw e;
    }
    return this.hdr;
  }

  /**
   * The libxc image after the LIBXC_CONTEXT record just read: read its records (`records()` stops
   * at END or CHECKPOINT) before asking for the next libxl record.
   */
  libxc(): ImageReader {
    if (!this.innerPending) throw new Error("libxc() without a LIBXC_CONTEXT record just read");
    this.inner ??= new ImageReader(this.input, this.opts);
    return this.inner;
  }

  /** The next libxl record, or undefined after END. */
  next(): ReadLibxlRecord | undefined {
    this.readHeader();
    if (this.finished) return undefined;
    if (this.innerPending) {
      if (this.inner === undefined || !this.inner.atBoundary || this.inner.recordsRead === this.innerMark) throw new Error("the libxc image after LIBXC_CONTEXT has not been read to its END or CHECKPOINT");
      this.innerPending = false;
    }
    const index = this.index;
    const offset = this.input.offset;
    const hb = this.input.read(RHDR_SIZE);
    if (hb.length === 0) throw new StreamError(`truncated at offset ${hex(offset)}: the stream ends before libxl record ${index}, with no END record`, { offset, record: index });
    if (hb.length < RHDR_SIZE) throw new StreamError(`truncated in libxl record ${index} (header) at offset ${hex(offset)}: wanted ${RHDR_SIZE} bytes, got ${hb.length}`, { offset, record: index });
    const { type: code, length } = decodeRecordHeader(hb);
    const name = libxlRecTypeName(code);
    const where = { offset, record: index, recordType: name };
    const bad = (msg: string) => new StreamError(`libxl record ${index} (${name}) at offset ${hex(offset)}: ${msg}`, where);
    if (!NAMES.has(code) && code < REC_TYPE_OPTIONAL) throw bad(`record type ${hex(code)} is not one libxl knows`);
    const problem = lengthProblem(code, length, this.maxRecordLength);
    if (problem !== undefined) throw bad(problem);
    const total = padded(length);
    const body = this.input.read(total);
    if (body.length < total) throw new StreamError(`truncated in libxl record ${index} (${name}) at offset ${hex(offset)}: wanted ${total} bytes of body at offset ${hex(offset + RHDR_SIZE)}, got ${body.length}`, where);
    for (let i = length; i < total; i++) {
      if (body[i] !== 0) throw bad(`padding byte ${i - length} (offset ${hex(offset + RHDR_SIZE + i)}) is ${hex(body[i]!)}, not 0`);
    }
    let rec: LibxlRecord;
    try {
      rec = decodeLibxlRecord(code, body.subarray(0, length));
    } catch (e) {
      if (e instanceof StreamError) throw bad(e.message);
      throw e;
    }
    // the libxc image resumes after a CHECKPOINT, never after its END
    if (rec.type === "LIBXC_CONTEXT" && this.inner?.ended) throw bad("the libxc image has already ended");
    this.index++;
    if (rec.type === "END") this.finished = true;
    if (rec.type === "LIBXC_CONTEXT") {
      this.innerPending = true;
      this.innerMark = this.inner?.recordsRead ?? 0;
    }
    return { ...rec, index, offset, length };
  }
}
