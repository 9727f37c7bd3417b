// C xenstored's trace file (-T, XS_CONTROL log/logfile): messages in and out, and log lines.

import { closeSync, openSync, writeSync } from "node:fs";
import { XS_NAMES, XSD_SOCKMSG_SIZE } from "../../abi/xs_wire.ts";

/** A payload for the trace: NULs as spaces. */
function printable(b: Uint8Array): string {
  return Buffer.from(b).toString("latin1").replaceAll("\0", " ");
}

function stamp(): string {
  const d = new Date();
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export class Tracer {
  private fd = -1;
  constructor(
    public file: string | undefined,
    private readonly onError: (line: string) => void,
  ) {}

  get enabled(): boolean {
    return this.fd >= 0;
  }

  line(s: string): void {
    if (this.fd < 0) return;
    try {
      writeSync(this.fd, `${s}\n`);
    } catch {
      this.close();
    }
  }

  /** `IN`/`OUT <conn> <time> <TYPE> (<payload>)` */
  message(dir: "IN" | "OUT", conn: number, type: number, payload: Uint8Array): void {
    this.line(`${dir} conn#${conn} ${stamp()} ${XS_NAMES[type] ?? "**UNKNOWN**"} (${printable(payload)})`);
  }

  /** A whole message as queued (header and payload). */
  out(conn: number, bytes: Uint8Array): void {
    const type = (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
    this.message("OUT", conn, type, bytes.subarray(XSD_SOCKMSG_SIZE));
  }

  reopen(): void {
    if (this.file === undefined) return;
    this.close();
    try {
      this.fd = openSync(this.file, "a", 0o600);
      this.line("\n***");
    } catch (e) {
      this.onError(`Could not open tracefile: ${(e as Error).message}`);
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /** Appends `text` to `file`, else to the trace file; false when there is nowhere to write. */
  report(text: string, file: string | undefined): boolean {
    let fd = this.fd;
    let own = false;
    try {
      if (file !== undefined || fd < 0) {
        const target = file ?? this.file;
        if (target === undefined) return false;
        fd = openSync(target, "a");
        own = true;
      }
      writeSync(fd, text);
      return true;
    } catch {
      return false;
    } finally {
      if (own && fd >= 0) closeSync(fd);
    }
  }
}
