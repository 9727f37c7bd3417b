// libxl's save and restore around libxc's: the image is xl's save header (with the domain's
// config as libxl JSON), then libxl's v2 stream, whose LIBXC_CONTEXT record carries libxc's
// image. Both directions run in steps (a PAGE_DATA batch each) so that the host can report
// progress and stay responsive; neither keeps more than a batch in memory.

import { closeSync, fsyncSync, openSync, renameSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { Privcmd } from "../../hypervisor/domctl.ts";
import { type LiveSaveResult, type PrecopyRound, type SaveResult, saveX86PvLiveSteps, saveX86PvSteps } from "../libxc/sr_save_x86_pv.ts";
import { type ByteSink, type ByteSource, fdSink, fdSource, StreamInput, StreamOutput } from "../libxc/sr_stream.ts";
import { type KnownLibxcRecord, StreamError, type X86PvInfo } from "../libxc/sr_format.ts";
import { LibxlReader, LibxlWriter } from "./sr_stream.ts";
import { readXlSaveHeader, type XlSaveHeader, writeXlSaveHeader } from "../xl/save_format.ts";
import { type RestoreResult, X86PvRestore, type RestoreParams, RestoreError } from "../libxc/sr_restore_x86_pv.ts";
import type { ReadLibxcRecord } from "../libxc/sr_stream.ts";

/** Progress of a save or restore: pfns (or pages) done of a total, and bytes of the image so far. */
export interface TransferProgress {
  done: number;
  total: number;
  bytes: number;
}

/** Writes the whole image of suspended domain `domid` to `sink`, a batch per step. */
export function* writeSaveImage(xc: Privcmd, domid: number, sink: ByteSink, configJson: string): Generator<TransferProgress, SaveResult & { bytes: number }, void> {
  return yield* writeImage(sink, configJson, (emit) => saveX86PvSteps(xc, domid, emit), (s) => ({ done: s.pfnsDone, total: s.pfnsTotal }));
}

/** A step of a live migration stream: a batch sent in pre-copy round `round`, or the request to suspend now. */
export type MigrationStep = ({ done: number; total: number; round: number } | { suspend: true; rounds: readonly PrecopyRound[] }) & { bytes: number };

/**
 * libxl_domain_suspend with LIBXL_SUSPEND_LIVE: the same image as a save, but memory goes out
 * while the domain runs (pre-copy rounds); at the `suspend` step the caller suspends it.
 */
export function* writeMigrationStream(
  xc: Privcmd,
  domid: number,
  sink: ByteSink,
  configJson: string,
  opts: { debug?: boolean } = {},
): Generator<MigrationStep, LiveSaveResult & { bytes: number }, void> {
  return yield* writeImage(
    sink,
    configJson,
    (emit) => saveX86PvLiveSteps(xc, domid, emit, opts),
    (s) => ("suspend" in s ? s : { done: s.pfnsDone, total: s.pfnsTotal, round: s.round }),
  );
}

/** The xl header, libxl's stream around libxc's records from `save`, and libxl's END. */
function* writeImage<S, R, Y>(
  sink: ByteSink,
  configJson: string,
  save: (emit: (rec: KnownLibxcRecord) => void) => Generator<S, R, void>,
  report: (s: S) => Y,
): Generator<Y & { bytes: number }, R & { bytes: number }, void> {
  const out = new StreamOutput(sink);
  writeXlSaveHeader(out, configJson);
  const lw = new LibxlWriter(out);
  lw.writeHeader();
  const w = lw.libxc();
  w.writeHeaders();
  const steps = save((rec) => w.write(rec));
  try {
    for (;;) {
      const r = steps.next();
      if (r.done) {
        lw.end();
        return { ...r.value, bytes: out.offset };
      }
      yield { ...report(r.value), bytes: out.offset };
    }
  } finally {
    // A caller that stops early: the save's own cleanup (log-dirty off) still runs.
    steps.return(undefined as never);
  }
}

/** A file written under a temporary name in its directory, renamed into place only once complete. */
export class AtomicFile {
  readonly tmp: string;
  readonly fd: number;
  private open = true;

  private readonly buffered: ByteSink & { flush(): void };

  constructor(readonly path: string) {
    this.tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
    this.fd = openSync(this.tmp, "w", 0o644);
    this.buffered = bufferedSink(fdSink(this.fd));
  }

  get sink(): ByteSink {
    return this.buffered;
  }

  commit(): void {
    this.buffered.flush();
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.open = false;
    renameSync(this.tmp, this.path);
  }

  abort(): void {
    if (this.open) closeSync(this.fd);
    this.open = false;
    rmSync(this.tmp, { force: true });
  }
}

/** Gathers small writes (headers, records) into large ones: a syscall per megabyte, not per record. */
export function bufferedSink(inner: ByteSink, size = 1 << 20): ByteSink & { flush(): void } {
  const buf = new Uint8Array(size);
  let used = 0;
  const flush = () => {
    if (used > 0) inner.write(buf.subarray(0, used));
    used = 0;
  };
  return {
    write(chunk) {
      if (chunk.length >= size) {
        flush();
        inner.write(chunk);
        return;
      }
      if (used + chunk.length > size) flush();
      buf.set(chunk, used);
      used += chunk.length;
    },
    flush,
  };
}

/** The start of an image: the xl header with its config, and the libxc stream's first record (X86_PV_INFO). */
export interface OpenedImage {
  xl: XlSaveHeader;
  /** The config as JSON (libxl_domain_config). */
  config: Record<string, unknown>;
  pvInfo: X86PvInfo;
  /** The rest of the image, for restoreImage. */
  readonly rest: ImageCursor;
}

interface ImageCursor {
  libxl: LibxlReader;
  first: ReadLibxcRecord;
}

export class ImageFormatError extends Error {}

/** Reads the headers up to the libxc stream's first record, which must be X86_PV_INFO (libxc's order). */
export function openImage(source: ByteSource): OpenedImage {
  const input = new StreamInput(source);
  const xl = readXlSaveHeader(input);
  if (!xl.config?.json) throw new ImageFormatError("the image has no domain config in JSON (xl save writes one)");
  let config: unknown;
  try {
    config = JSON.parse(xl.config.text);
  } catch (e) {
    throw new ImageFormatError(`the image's domain config is not JSON: ${(e as Error).message}`);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw new ImageFormatError("the image's domain config is not a JSON object");
  const libxl = new LibxlReader(input);
  libxl.readHeader();
  const rec = libxl.next();
  if (rec?.type !== "LIBXC_CONTEXT") throw new StreamError(`libxl record 0 is ${rec?.type ?? "missing"}, not LIBXC_CONTEXT: this image has no domain memory`);
  const inner = libxl.libxc();
  inner.readHeaders();
  const first = inner.next();
  if (first?.type !== "X86_PV_INFO") throw new StreamError(`libxc record 0 is ${first?.type ?? "missing"}, not X86_PV_INFO`);
  return { xl, config: config as Record<string, unknown>, pvInfo: first.body, rest: { libxl, first } };
}

/** Restores the opened image into `domid` (made by the caller), a PAGE_DATA batch per step. */
export function* restoreImage(xc: Privcmd, domid: number, img: OpenedImage, params: RestoreParams): Generator<TransferProgress, RestoreResult, void> {
  const { libxl, first } = img.rest;
  const restore = new X86PvRestore(xc, domid, params);
  restore.handle(first, first.index);
  const inner = libxl.libxc();
  // Each batch's pages are copied into the domain before the next is read.
  inner.reusePageData = true;
  let pages = 0;
  for (;;) {
    const rec = inner.next();
    if (rec === undefined) break;
    restore.handle(rec, rec.index);
    if (rec.type === "PAGE_DATA") {
      pages += rec.body.length;
      yield { done: pages, total: 0, bytes: libxl.offset };
    }
    if (rec.type === "END") break;
  }
  const result = restore.complete;
  if (!result) throw new RestoreError("the libxc stream ended without END");
  // libxl's records after the libxc image: nothing a PV guest without a device model needs, then END.
  for (let rec = libxl.next(); rec !== undefined; rec = libxl.next()) {
    if (rec.type === "END") break;
    if (rec.type === "LIBXC_CONTEXT") throw new StreamError(`libxl record ${rec.index}: a second libxc image (checkpointed streams are not supported)`);
  }
  if (!libxl.ended) throw new StreamError("the libxl stream has no END record");
  return result;
}

/** Opens `path` for reading as a byte source (the caller closes `fd`). */
export function openImageFile(path: string): { fd: number; source: ByteSource } {
  const fd = openSync(path, "r");
  return { fd, source: fdSource(fd) };
}
