// Where the whole units of an xl migration stream end, as its bytes arrive: the xl header with
// its config, libxl's header and records, and the libxc image that a LIBXC_CONTEXT record hands
// over to (its two headers and its records, up to its END), then libxl's records up to END. A
// receiver gives the stream readers only bytes up to `framed`, so that a synchronous reader never
// runs out in the middle of a record while the rest is still on the wire. The framer checks
// only what it needs to find the boundaries; the readers check everything else.

import { DEFAULT_MAX_RECORD_LENGTH } from "../libxc/sr_stream.ts";
import { DHDR_SIZE, IHDR_SIZE } from "../libxc/sr_format.ts";
import { XL_OPTIONAL_DATA_MAX, XL_SAVE_HEADER_SIZE } from "../xl/save_format.ts";
import { LIBXL_HDR_SIZE } from "./sr_stream.ts";

const RECORD_HEADER = 8;
const LIBXL_LIBXC_CONTEXT = 1;
const END = 0;
const LIBXC_PAGE_DATA = 1;

type Phase = "xl-header" | "xl-config" | "libxl-header" | "libxl-record" | "libxc-headers" | "libxc-record" | "done";

export class StreamFramer {
  private buf = new Uint8Array(1 << 16);
  private used = 0;
  /** Bytes of `buf` that form whole units. */
  private framedTo = 0;
  private phase: Phase = "xl-header";
  private readonly maxRecord: number;
  /** libxc records framed so far, and of them PAGE_DATA records (what a receiver may read up to). */
  libxcRecords = 0;
  pageDataRecords = 0;

  constructor(opts: { maxRecordLength?: number } = {}) {
    this.maxRecord = opts.maxRecordLength ?? DEFAULT_MAX_RECORD_LENGTH;
  }

  /** Whether libxl's END has been framed: the stream is complete. */
  get ended(): boolean {
    return this.phase === "done";
  }

  /** Bytes received and not yet taken. */
  get buffered(): number {
    return this.used;
  }

  /** Whole units received and not yet taken. */
  get framed(): number {
    return this.framedTo;
  }

  /** Adds received bytes; throws (a message saying why) on a length no stream can have. */
  feed(chunk: Uint8Array): void {
    if (this.used + chunk.length > this.buf.length) {
      let size = this.buf.length;
      while (size < this.used + chunk.length) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.buf.subarray(0, this.used));
      this.buf = bigger;
    }
    this.buf.set(chunk, this.used);
    this.used += chunk.length;
    this.scan();
  }

  /** Takes the framed bytes (a copy), leaving the rest for later. */
  take(): Uint8Array {
    const out = this.buf.slice(0, this.framedTo);
    this.buf.copyWithin(0, this.framedTo, this.used);
    this.used -= this.framedTo;
    this.framedTo = 0;
    return out;
  }

  /** Bytes after libxl's END: none belong to the stream (xl's handshake follows it). */
  get trailing(): number {
    return this.ended ? this.used - this.framedTo : 0;
  }

  private u32(at: number): number {
    return (this.buf[at]! | (this.buf[at + 1]! << 8) | (this.buf[at + 2]! << 16) | (this.buf[at + 3]! << 24)) >>> 0;
  }

  private scan(): void {
    for (;;) {
      const at = this.framedTo;
      const have = this.used - at;
      switch (this.phase) {
        case "done":
          return;
        case "xl-header":
          if (have < XL_SAVE_HEADER_SIZE) return;
          this.phase = "xl-config";
          continue;
        case "xl-config": {
          const len = this.u32(at + 44);
          if (len > XL_OPTIONAL_DATA_MAX) throw new Error(`xl header: optional data of ${len} bytes (at most ${XL_OPTIONAL_DATA_MAX})`);
          if (have < XL_SAVE_HEADER_SIZE + len) return;
          this.framedTo += XL_SAVE_HEADER_SIZE + len;
          this.phase = "libxl-header";
          continue;
        }
        case "libxl-header":
          if (have < LIBXL_HDR_SIZE) return;
          this.framedTo += LIBXL_HDR_SIZE;
          this.phase = "libxl-record";
          continue;
        case "libxc-headers":
          if (have < IHDR_SIZE + DHDR_SIZE) return;
          this.framedTo += IHDR_SIZE + DHDR_SIZE;
          this.phase = "libxc-record";
          continue;
        case "libxl-record":
        case "libxc-record": {
          if (have < RECORD_HEADER) return;
          const type = this.u32(at);
          const length = this.u32(at + 4);
          if (length > this.maxRecord) throw new Error(`a ${this.phase === "libxl-record" ? "libxl" : "libxc"} record of ${length} bytes (at most ${this.maxRecord})`);
          const whole = RECORD_HEADER + Math.ceil(length / 8) * 8;
          if (have < whole) return;
          this.framedTo += whole;
          if (this.phase === "libxl-record") {
            if (type === END) this.phase = "done";
            else if (type === LIBXL_LIBXC_CONTEXT) this.phase = "libxc-headers";
          } else {
            this.libxcRecords++;
            if (type === LIBXC_PAGE_DATA) this.pageDataRecords++;
            if (type === END) this.phase = "libxl-record";
          }
          continue;
        }
      }
    }
  }
}
