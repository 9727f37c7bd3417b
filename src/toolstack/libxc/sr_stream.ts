// libxc's save stream written and read one record at a time over plain byte sinks and sources,
// so that an image of any size goes through a bounded amount of memory: at most one record (a
// PAGE_DATA batch is 4 MiB) plus the caller's limit for the other variable-length records. The
// reader checks each record as it arrives (sr_format.ts has the checks); which record may follow
// which is the restore logic's concern, for which it gets each record's index and offset.

import { readSync, writeSync } from "node:fs";
import {
  DHDR_SIZE,
  DHDR_TYPE,
  type DomainHeader,
  decodeDomainHeader,
  decodeImageHeader,
  decodeLibxcRecord,
  decodeRecordHeader,
  encodeDomainHeader,
  encodeImageHeader,
  encodeLibxcRecord,
  encodeRecordHeader,
  hex,
  IHDR_SIZE,
  IHDR_VERSION,
  type ImageHeader,
  type LibxcRecName,
  type LibxcRecord,
  encodePageDataInto,
  MAX_BATCH_SIZE,
  PAGE_DATA_MAX_LENGTH,
  p2mFrameCount,
  PAGE_SHIFT,
  type PageDataPage,
  padded,
  pageDataLength,
  RHDR_SIZE,
  REC_LENGTH_MAX,
  REC_TYPE,
  REC_TYPE_OPTIONAL,
  recordLengthProblem,
  recTypeByCode,
  recTypeName,
  StreamError,
  type StreamErrorWhere,
  vcpuBasicContextSize,
  XEN_MAJOR,
  XEN_MINOR,
  type X86PvInfo,
} from "./sr_format.ts";

// ---- sinks and sources ----------------------------------------------------------------------

/**
 * Where a stream goes: takes every byte of each chunk (or throws) before it returns; the writer may
 * reuse the chunk's memory afterwards (a sink that keeps bytes copies them).
 */
export interface ByteSink {
  write(chunk: Uint8Array): void;
}

/** Where a stream comes from: exactly n bytes, or fewer (possibly none, or undefined) at its end. */
export interface ByteSource {
  read(n: number): Uint8Array | undefined;
  /** Optionally, read(dst.length) into `dst` rather than into new memory: how many bytes came. */
  readInto?(dst: Uint8Array): number;
}

/** Writes to a file descriptor (a file, a pipe, a socket) with blocking writes. */
export function fdSink(fd: number): ByteSink {
  return {
    write(chunk) {
      for (let done = 0; done < chunk.length; ) done += writeSync(fd, chunk, done, chunk.length - done);
    },
  };
}

/** Reads a file descriptor from its current position. */
export function fdSource(fd: number): ByteSource {
  const readInto = (b: Uint8Array) => {
    let got = 0;
    while (got < b.length) {
      const r = readSync(fd, b, got, b.length - got, null);
      if (r === 0) break;
      got += r;
    }
    return got;
  };
  return {
    read(n) {
      const b = new Uint8Array(n);
      const got = readInto(b);
      return got === n ? b : b.subarray(0, got);
    },
    readInto,
  };
}

/** Reads an in-memory image; each read is a copy, so records do not alias the caller's bytes. */
export function bytesSource(bytes: Uint8Array): ByteSource {
  let pos = 0;
  return {
    read(n) {
      const out = bytes.slice(pos, pos + n);
      pos += out.length;
      return out;
    },
  };
}

/** Collects a stream in memory. */
export class BytesSink implements ByteSink {
  private chunks: Uint8Array[] = [];
  private size = 0;
  write(chunk: Uint8Array): void {
    this.chunks.push(chunk.slice());
    this.size += chunk.length;
  }
  get length(): number {
    return this.size;
  }
  /** Everything written so far, in one array. */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    this.chunks = [out];
    return out;
  }
}

/** A sink that counts what went through it, shared by the layers of one stream (xl, libxl, libxc). */
export class StreamOutput implements ByteSink {
  offset: number;
  constructor(
    readonly sink: ByteSink,
    offset = 0,
  ) {
    this.offset = offset;
  }
  write(chunk: Uint8Array): void {
    this.sink.write(chunk);
    this.offset += chunk.length;
  }
}

/** A source that counts what was read from it, shared by the layers of one stream. */
export class StreamInput {
  offset: number;
  constructor(
    readonly source: ByteSource,
    offset = 0,
  ) {
    this.offset = offset;
  }
  /** n bytes, or fewer at the end of the stream. */
  read(n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const b = this.source.read(n) ?? new Uint8Array(0);
    if (b.length > n) throw new RangeError(`byte source returned ${b.length} bytes when asked for ${n}`);
    this.offset += b.length;
    return b;
  }
  /**
   * n bytes (fewer at the end of the stream) in `scratch`'s memory when the source can read into
   * it (the bytes are good until the next read into it), else as read() gives them.
   */
  readReusing(n: number, scratch: Uint8Array): Uint8Array {
    if (n === 0 || !this.source.readInto || scratch.length < n) return this.read(n);
    const got = this.source.readInto(scratch.subarray(0, n));
    if (got > n) throw new RangeError(`byte source returned ${got} bytes when asked for ${n}`);
    this.offset += got;
    return scratch.subarray(0, got);
  }
  /** Exactly n bytes for `what` (e.g. "image header"), or a StreamError saying how many came. */
  readExact(n: number, what: string, where: StreamErrorWhere = {}): Uint8Array {
    const start = this.offset;
    const b = this.read(n);
    if (b.length < n) throw new StreamError(`truncated in ${what} at offset ${hex(where.offset ?? start)}: wanted ${n} bytes, got ${b.length}`, { offset: start, ...where });
    return b;
  }
}

export function toInput(s: ByteSource | StreamInput): StreamInput {
  return s instanceof StreamInput ? s : new StreamInput(s);
}

export function toOutput(s: ByteSink | StreamOutput): StreamOutput {
  return s instanceof StreamOutput ? s : new StreamOutput(s);
}

// ---- records in and out ---------------------------------------------------------------------

/** Default bound on a variable-length record other than PAGE_DATA; HVM contexts and CPU policies are far smaller. */
export const DEFAULT_MAX_RECORD_LENGTH = 16 << 20;

export interface StreamOptions {
  /** Bound on variable-length records other than PAGE_DATA (a batch at most); at most REC_LENGTH_MAX. */
  readonly maxRecordLength?: number;
}

function maxLength(opts: StreamOptions): number {
  const m = opts.maxRecordLength ?? DEFAULT_MAX_RECORD_LENGTH;
  if (!Number.isInteger(m) || m < 0 || m > REC_LENGTH_MAX) throw new RangeError(`maxRecordLength ${m} is not 0..${REC_LENGTH_MAX}`);
  return m;
}

/** One record header, body and zero padding, as one chunk. */
export function frameRecord(code: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(RHDR_SIZE + padded(body.length));
  out.set(encodeRecordHeader(code, body.length));
  out.set(body, RHDR_SIZE);
  return out;
}

/** A record as read: where it was, and its body length before padding. */
export type ReadLibxcRecord = LibxcRecord & {
  /** From 0, the first record after the headers. */
  readonly index: number;
  /** Byte offset of its header in the stream. */
  readonly offset: number;
  readonly length: number;
};

/** Writes a libxc image: the headers, then records, the last of them END. */
export class ImageWriter {
  readonly output: StreamOutput;
  private readonly maxRecordLength: number;
  private headersDone = false;
  private records = 0;
  private last: LibxcRecord["type"] | undefined;
  /** Where PAGE_DATA records are framed (see writePageData). */
  private scratch = new Uint8Array(0);

  constructor(out: ByteSink | StreamOutput, opts: StreamOptions = {}) {
    this.output = toOutput(out);
    this.maxRecordLength = maxLength(opts);
  }

  get offset(): number {
    return this.output.offset;
  }
  get recordsWritten(): number {
    return this.records;
  }
  get ended(): boolean {
    return this.last === "END";
  }
  /** The last record written hands the stream back to a higher layer (END or CHECKPOINT). */
  get atBoundary(): boolean {
    return this.last === "END" || this.last === "CHECKPOINT";
  }

  /** The image header (version 3, little-endian) and the domain header: x86 PV, 4K pages, from Xen 4.17 unless told. */
  writeHeaders(domain: Partial<DomainHeader> = {}): void {
    if (this.headersDone) throw new Error("libxc image headers written twice");
    const d: DomainHeader = { type: DHDR_TYPE.X86_PV, pageShift: PAGE_SHIFT, xenMajor: XEN_MAJOR, xenMinor: XEN_MINOR, ...domain };
    const hdr = new Uint8Array(IHDR_SIZE + DHDR_SIZE);
    hdr.set(encodeImageHeader({ version: IHDR_VERSION, options: 0 }));
    hdr.set(encodeDomainHeader(d), IHDR_SIZE);
    this.output.write(hdr);
    this.headersDone = true;
  }

  /** One record. Throws RangeError for one the reader would refuse. */
  write(rec: LibxcRecord): void {
    if (!this.headersDone) throw new Error("libxc record before the image headers");
    if (this.ended) throw new Error(`libxc ${rec.type} record after END`);
    if (rec.type === "PAGE_DATA") this.writePageData(rec.body);
    else {
      const { code, body } = encodeLibxcRecord(rec);
      const problem = recordLengthProblem(code, body.length, this.maxRecordLength);
      if (problem !== undefined) throw new RangeError(`libxc ${recTypeName(code)} record: ${problem}`);
      this.output.write(frameRecord(code, body));
    }
    this.records++;
    this.last = rec.type;
  }

  /**
   * A PAGE_DATA record framed (header, body, padding) in a buffer kept for the next batch: a batch
   * is 4 MiB, and new memory for each (twice, body then frame) costs more than the copy.
   */
  private writePageData(pages: readonly PageDataPage[]): void {
    const code = REC_TYPE.PAGE_DATA;
    const length = pageDataLength(pages);
    const total = RHDR_SIZE + padded(length);
    if (this.scratch.length < total) this.scratch = new Uint8Array(total);
    const buf = this.scratch;
    encodePageDataInto(pages, buf, RHDR_SIZE);
    const problem = recordLengthProblem(code, length, this.maxRecordLength);
    if (problem !== undefined) throw new RangeError(`libxc ${recTypeName(code)} record: ${problem}`);
    buf.set(encodeRecordHeader(code, length));
    buf.fill(0, RHDR_SIZE + length, total);
    this.output.write(buf.subarray(0, total));
  }

  /** PAGE_DATA records for `pages`, MAX_BATCH_SIZE at a time; how many records that took. */
  writePages(pages: Iterable<PageDataPage>): number {
    let batch: PageDataPage[] = [];
    let n = 0;
    for (const p of pages) {
      batch.push(p);
      if (batch.length === MAX_BATCH_SIZE) {
        this.write({ type: "PAGE_DATA", body: batch });
        batch = [];
        n++;
      }
    }
    if (batch.length > 0) {
      this.write({ type: "PAGE_DATA", body: batch });
      n++;
    }
    return n;
  }

  end(): void {
    this.write({ type: "END", body: null });
  }
}

/** Records that only version 3 streams have. */
const V3_ONLY: ReadonlySet<LibxcRecName> = new Set(["STATIC_DATA_END", "X86_CPUID_POLICY", "X86_MSR_POLICY"]);

/** Reads and checks a libxc image one record at a time. */
export class ImageReader {
  readonly input: StreamInput;
  private readonly maxRecordLength: number;
  private headers: { image: ImageHeader; domain: DomainHeader } | undefined;
  private index = 0;
  private info: X86PvInfo | undefined;
  private last: LibxcRecord["type"] | undefined;
  private pageScratch: Uint8Array | undefined;
  /**
   * When set, PAGE_DATA bodies are read into one buffer the reader keeps (if the source can read
   * into it), so that a record's page data is good only until the next record is read: for a
   * consumer that copies the pages out at once, as restore does. A batch is 4 MiB, and new memory
   * for each costs more than reading it.
   */
  reusePageData = false;

  constructor(input: ByteSource | StreamInput, opts: StreamOptions = {}) {
    this.input = toInput(input);
    this.maxRecordLength = maxLength(opts);
  }

  get offset(): number {
    return this.input.offset;
  }
  get imageHeader(): ImageHeader | undefined {
    return this.headers?.image;
  }
  get domainHeader(): DomainHeader | undefined {
    return this.headers?.domain;
  }
  /** The X86_PV_INFO record, once read: P2M_FRAMES and VCPU_BASIC records after it are checked against it. */
  get pvInfo(): X86PvInfo | undefined {
    return this.info;
  }
  /** How many records have been read. */
  get recordsRead(): number {
    return this.index;
  }
  /** The END record has been read. */
  get ended(): boolean {
    return this.last === "END";
  }
  /** The last record read hands the stream back to a higher layer (END or CHECKPOINT). */
  get atBoundary(): boolean {
    return this.last === "END" || this.last === "CHECKPOINT";
  }

  readHeaders(): { image: ImageHeader; domain: DomainHeader } {
    if (this.headers) return this.headers;
    const at = (what: string, off: number) => (e: unknown) => {
      if (e instanceof StreamError) return new StreamError(`${what} at offset ${hex(off)}: ${e.message}`, { offset: off });
      return e;
    };
    const iOff = this.input.offset;
    const ib = this.input.readExact(IHDR_SIZE, "image header");
    let image: ImageHeader;
    try {
      image = decodeImageHeader(ib);
    } catch (e) {
      throw at("image header", iOff)(e);
    }
    const dOff = this.input.offset;
    const db = this.input.readExact(DHDR_SIZE, "domain header");
    let domain: DomainHeader;
    try {
      domain = decodeDomainHeader(db);
    } catch (e) {
      throw at("domain header", dOff)(e);
    }
    this.headers = { image, domain };
    return this.headers;
  }

  /** The next record (reading the headers first if not yet), or undefined once END has been read. */
  next(): ReadLibxcRecord | undefined {
    const { image } = this.readHeaders();
    if (this.ended) return undefined;
    const index = this.index;
    const offset = this.input.offset;
    const hb = this.input.read(RHDR_SIZE);
    if (hb.length === 0) throw new StreamError(`truncated at offset ${hex(offset)}: the stream ends before record ${index}, with no END record`, { offset, record: index });
    if (hb.length < RHDR_SIZE) throw new StreamError(`truncated in record ${index} (header) at offset ${hex(offset)}: wanted ${RHDR_SIZE} bytes, got ${hb.length}`, { offset, record: index });
    const { type: code, length } = decodeRecordHeader(hb);
    const name = recTypeName(code);
    const where = { offset, record: index, recordType: name };
    const bad = (msg: string) => new StreamError(`record ${index} (${name}) at offset ${hex(offset)}: ${msg}`, where);
    const known = recTypeByCode(code);
    if (known === undefined && code < REC_TYPE_OPTIONAL) throw bad(`record type ${hex(code)} is not one Xen 4.17 knows`);
    if (known !== undefined && image.version < 3 && V3_ONLY.has(known)) throw bad(`not allowed in a version ${image.version} stream`);
    const problem = recordLengthProblem(code, length, this.maxRecordLength);
    if (problem !== undefined) throw bad(problem);
    const total = padded(length);
    const body = code === REC_TYPE.PAGE_DATA && this.reusePageData ? this.input.readReusing(total, this.pageDataScratch()) : this.input.read(total);
    if (body.length < total) throw new StreamError(`truncated in record ${index} (${name}) at offset ${hex(offset)}: wanted ${total} bytes of body at offset ${hex(offset + RHDR_SIZE)}, got ${body.length}`, where);
    for (let i = length; i < total; i++) {
      if (body[i] !== 0) throw bad(`padding byte ${i - length} (offset ${hex(offset + RHDR_SIZE + i)}) is ${hex(body[i]!)}, not 0`);
    }
    let rec: LibxcRecord;
    try {
      rec = decodeLibxcRecord(code, body.subarray(0, length));
    } catch (e) {
      if (e instanceof StreamError) throw bad(e.message);
      throw e;
    }
    const problem2 = this.againstPvInfo(rec);
    if (problem2 !== undefined) throw bad(problem2);
    if (rec.type === "X86_PV_INFO") this.info = rec.body;
    this.index++;
    this.last = rec.type;
    return { ...rec, index, offset, length };
  }

  private pageDataScratch(): Uint8Array {
    this.pageScratch ??= new Uint8Array(PAGE_DATA_MAX_LENGTH);
    return this.pageScratch;
  }

  /** The sizes that depend on the guest's width, once X86_PV_INFO has given it. */
  private againstPvInfo(rec: LibxcRecord): string | undefined {
    const info = this.info;
    if (info === undefined) return undefined;
    if (rec.type === "X86_PV_P2M_FRAMES") {
      const { startPfn, endPfn, frames } = rec.body;
      const want = p2mFrameCount(startPfn, endPfn, info.guestWidth);
      if (frames.length !== want) return `pfns ${hex(startPfn)}-${hex(endPfn)} of a ${info.guestWidth * 8}-bit guest need ${want} p2m frames, the record has ${frames.length}`;
    }
    if (rec.type === "X86_PV_VCPU_BASIC") {
      const n = rec.body.context.length;
      const want = vcpuBasicContextSize(info.guestWidth);
      if (n !== 0 && n !== want) return `vcpu ${rec.body.vcpuId}: context of ${n} bytes, a ${info.guestWidth * 8}-bit vcpu_guest_context is ${want}`;
    }
    return undefined;
  }

  /** Records up to and including the next END or CHECKPOINT (where a higher layer takes the stream back). */
  *records(): Generator<ReadLibxcRecord, void, undefined> {
    for (;;) {
      const r = this.next();
      if (r === undefined) return;
      yield r;
      if (r.type === "END" || r.type === "CHECKPOINT") return;
    }
  }

  [Symbol.iterator](): Generator<ReadLibxcRecord, void, undefined> {
    return this.records();
  }
}
