// `xensim bench save`: how fast `xl save` and `xl restore` move a guest with 1 GiB of touched
// memory through a file, beside the file system's raw speed for the same bytes in the same run.
//
// The guest (64-bit, `memory = --mib`, no workload) boots on host A and suspends; every page its
// kernel has not allocated is then filled with pseudo-random bytes through the toolstack's
// foreign mappings (as a guest that had used its memory would have left it), so that the image
// carries --mib of real data. After a save and a raw write that are not counted (the JIT's first
// pass, and a file of each for the next of its kind to replace), each round:
//   save     writeSaveImage into an AtomicFile (its buffered sink, fsync, rename), from opening
//            the file to the rename; the figure is the file's size over that time.
//   write    the same number of bytes, a full PAGE_DATA record's worth (what the save writes at a
//            time) of pseudo-random data per write, to a file in the same directory: opened,
//            written, fsynced, closed and renamed the same way. Save and write take turns first.
//   restore  openImageFile + openImage + Host.restore (fdSource) to completion, into host B; the
//            figure is the file's size over that time. The restored domain is destroyed after,
//            so later rounds reuse frames the first one made (a row of its own).
//   read     the same file read with readSync, a record's worth at a time, into one buffer.
// Neither read can drop the page cache first: both read the image just written (warm cache).
// The figures are medians over the rounds; ratio = figure / raw.

import { closeSync, fsyncSync, mkdtempSync, openSync, readSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { PFINFO } from "../abi/domctl.ts";
import { bootHost } from "../harness/machine.ts";
import { PROT_WRITE } from "../hypervisor/domctl.ts";
import { PAGE_DATA_MAX_LENGTH, RHDR_SIZE } from "../toolstack/libxc/sr_format.ts";
import { parseGuestConfig } from "../toolstack/libxl/guest_cfg.ts";
import { DEFAULT_HOST, type Host, type HostDomain } from "../toolstack/libxl/host.ts";
import { AtomicFile, openImage, openImageFile, writeSaveImage } from "../toolstack/libxl/save_restore.ts";
import { retrievedConfig } from "../toolstack/xl/host_info.ts";
import { configTextFromJson } from "../toolstack/xl/save_cmds.ts";
import { libxlDomainConfig, yajlBeautify } from "../toolstack/xl/xl_format.ts";
import { type BenchRow, median } from "./common.ts";

export interface SaveBenchOptions {
  /** The guest's memory, MiB. */
  mib: number;
  /** Where the files go (a temporary directory is made in it). */
  dir: string;
  rounds: number;
  /** Progress lines (to stderr). */
  log?: ((line: string) => void) | undefined;
}

export interface SaveBenchResult {
  rows: BenchRow[];
  mib: number;
  rounds: number;
  /** Pages in the image with their contents, and of those the ones the bench filled. */
  pages: number;
  pagesTouched: number;
  imageBytes: number;
  /** Each round's figures, MB/s. */
  samples: { save: number[]; write: number[]; restore: number[]; read: number[] };
  dir: string;
}

export const SAVE_NOTES: readonly string[] = [
  "MB/s = 10^6 bytes per second of the image file's size; median of the rounds; ratio = figure / raw (target: 0.5 or more).",
  "save = writeSaveImage into an AtomicFile (buffered sink, fsync, rename) from opening the file to the rename; raw write = as",
  "many bytes of pseudo-random data to a file in the same directory, a full PAGE_DATA record (4,202,512 bytes) per write, with",
  "fsync and rename; the two take turns going first. restore = openImage + Host.restore from the file (fdSource) to a domain",
  "ready to run; raw read = the same file with readSync, a record's worth at a time, into one buffer. Both reads are",
  "warm-cache reads (the image was just written and the page cache cannot be dropped). Each restore's domain is destroyed",
  "after it, so later restores reuse the frames the first one made; the first round's restore, which makes them, is its own row.",
];

const MS = 1_000_000;
/** A full PAGE_DATA record (header and 1024 pages with their pfns): what the save writes at a time. */
const CHUNK = RHDR_SIZE + PAGE_DATA_MAX_LENGTH;
const MB = 1e6;

/** xorshift32 over `words`, from `state`; returns the next state. Never leaves a word zero. */
function fillRandom(words: Uint32Array, state: number): number {
  let x = state | 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return x;
}

function runUntil(host: Host, limitMs: number, cond: () => boolean): boolean {
  const start = host.now();
  while (!cond() && host.now() - start < limitMs * MS) host.run(host.now() + 0.25 * MS);
  return cond();
}

/** Boots a guest of `mib` on `host` and suspends it. */
function suspendedGuest(host: Host, mib: number): HostDomain {
  const cfg = parseGuestConfig(`name = "saved"\nmemory = ${mib}\nvcpus = 2\nguest_width = 64\n`, "bench-save.cfg");
  const hd = host.create(cfg);
  if (!runUntil(host, 2000, () => host.xs.tryRead(`/local/domain/${hd.domid}/control/feature-suspend`) === "1")) {
    throw new Error(`the guest did not boot: ${hd.kernel.log.slice(-4).join(" | ")}`);
  }
  host.run(host.now() + 50 * MS);
  host.requestSuspend(hd.domid);
  if (!runUntil(host, 10_000, () => host.suspended(hd.domid))) throw new Error(`the guest did not suspend: ${hd.kernel.log.slice(-4).join(" | ")}`);
  return hd;
}

/**
 * Fills every page the suspended guest's kernel has not allocated with pseudo-random bytes: the
 * kernel's allocator hands out its free pfns (and takes them back after), the toolstack maps
 * their frames writable (skipping any that getpageframeinfo3 calls a pagetable). Returns how many.
 */
function touchFreePages(host: Host, hd: HostDomain): number {
  const k = hd.kernel;
  const free: number[] = [];
  for (let pfn = k.allocPfn(); pfn !== undefined; pfn = k.allocPfn()) free.push(pfn);
  // Given back: the kernel wrote its state into its own pages at the suspend, which the image
  // carries, so its allocator here (the saved kernel's, never run again) is not in the image.
  for (let i = free.length - 1; i >= 0; i--) k.freePfn(free[i]!);
  free.sort((a, b) => a - b);
  const p2m = hd.built.p2m;
  let state = 0x9e3779b9;
  let touched = 0;
  for (let at = 0; at < free.length; at += 1024) {
    const mfns = free.slice(at, at + 1024).map((pfn) => p2m[pfn]!);
    const types = host.xc.getpageframeinfo3(hd.domid, mfns);
    if (typeof types === "number") throw new Error(`getpageframeinfo3 failed (${types})`);
    const data = mfns.filter((_, i) => types[i] === PFINFO.NOTAB);
    if (data.length === 0) continue;
    const map = host.xc.map_foreign_pages(hd.domid, PROT_WRITE, data);
    if (typeof map === "number") throw new Error(`mapping ${data.length} frames writable failed (${map})`);
    for (let i = 0; i < data.length; i++) state = fillRandom(map.u32(i), state);
    map.unmap();
    touched += data.length;
  }
  return touched;
}

function timed(f: () => void): number {
  const t0 = performance.now();
  f();
  return (performance.now() - t0) / 1000;
}

/** The raw write: `bytes` in CHUNK writes from `chunks` (round robin), fsync, close, rename. */
function rawWrite(path: string, bytes: number, chunks: readonly Uint8Array[]): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w", 0o644);
  let i = 0;
  for (let left = bytes; left > 0; ) {
    const c = chunks[i++ % chunks.length]!;
    const n = Math.min(left, c.length);
    for (let done = 0; done < n; ) done += writeSync(fd, c, done, n - done);
    left -= n;
  }
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, path);
}

/** The raw read: the whole file with readSync, CHUNK at a time, into one buffer; returns the bytes read. */
function rawRead(path: string, buf: Uint8Array): number {
  const fd = openSync(path, "r");
  let total = 0;
  for (;;) {
    const r = readSync(fd, buf, 0, buf.length, null);
    if (r === 0) break;
    total += r;
  }
  closeSync(fd);
  return total;
}

/** `xensim bench save`. */
export function benchSave(opts: SaveBenchOptions): SaveBenchResult {
  const { mib, rounds } = opts;
  const log = opts.log ?? (() => {});
  const dir = mkdtempSync(join(opts.dir, "xensim-bench-save-"));
  try {
    // Host A holds the saved guest, host B the restored one: each needs the guest's memory and dom0's.
    const machineMiB = Math.max(512, Math.ceil((mib * 1.05 + 256) / 64) * 64);
    log(`booting a ${mib} MiB guest...`);
    const a = bootHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB, seed: 1 });
    a.host.boot();
    const hd = suspendedGuest(a.host, mib);
    log("filling its free pages...");
    const pagesTouched = touchFreePages(a.host, hd);
    const configJson = yajlBeautify(libxlDomainConfig(retrievedConfig(a.host, hd.domid)!));
    const b = bootHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB, seed: 2 });
    b.host.boot();

    const image = join(dir, "guest.save");
    const raw = join(dir, "raw.bin");
    const chunks = [0, 1, 2, 3].map((s) => {
      const c = new Uint8Array(CHUNK);
      fillRandom(new Uint32Array(c.buffer), 0x1234567 + s * 0x9e3779b9);
      return c;
    });
    const readBuf = new Uint8Array(CHUNK);
    const samples = { save: [] as number[], write: [] as number[], restore: [] as number[], read: [] as number[] };
    let pages = 0;
    const save = (): number => {
      // The last image goes just before, as the raw file does before a raw write: neither rename
      // replaces a file, and both writes may take the page cache the other file had (memory left
      // free a while may have gone back to the VM's host, and takes far longer to write to).
      rmSync(image, { force: true });
      return timed(() => {
        const out = new AtomicFile(image);
        try {
          const gen = writeSaveImage(a.host.xc, hd.domid, out.sink, configJson);
          let res = gen.next();
          while (!res.done) res = gen.next();
          pages = res.value.pagesWithData;
          out.commit();
        } catch (e) {
          out.abort();
          throw e;
        }
      });
    };
    const write = (bytes: number): number => {
      rmSync(raw, { force: true });
      return timed(() => rawWrite(raw, bytes, chunks));
    };
    const restore = (): number => {
      let restored: HostDomain | undefined;
      const t = timed(() => {
        const opened = openImageFile(image);
        try {
          const img = openImage(opened.source);
          const width = img.pvInfo.guestWidth === 8 ? 64 : 32;
          const text = configTextFromJson(img.config, width);
          const cfg = { ...parseGuestConfig(text, "<saved>"), source: { file: "<saved>", text } };
          const gen = b.host.restore(cfg, img, { paused: true });
          let res = gen.next();
          while (!res.done) res = gen.next();
          restored = res.value;
        } finally {
          closeSync(opened.fd);
        }
      });
      if (restored) b.host.destroy(restored.domid);
      return t;
    };
    const read = (bytes: number): number => {
      let got = 0;
      const t = timed(() => {
        got = rawRead(image, readBuf);
      });
      if (got !== bytes) throw new Error(`raw read got ${got} bytes of ${bytes}`);
      return t;
    };
    // A save and a raw write first, not counted: the JIT's first pass, the image's size for the raw
    // write, and a file of each for the next of its kind to replace.
    log("warm-up save and write...");
    save();
    const imageBytes = statSync(image).size;
    write(imageBytes);
    const rate = (seconds: number) => imageBytes / MB / seconds;
    for (let r = 0; r < rounds; r++) {
      // Each pair in turn goes first, so that what one leaves behind (dirty pages, a busy disk) hits both alike.
      const [first, second] = r % 2 === 0 ? (["save", "write"] as const) : (["write", "save"] as const);
      for (const what of [first, second]) {
        log(`round ${r + 1} of ${rounds}: ${what}...`);
        if (what === "save") samples.save.push(rate(save()));
        else samples.write.push(rate(write(imageBytes)));
      }
      if (statSync(image).size !== imageBytes) throw new Error("the image changed size between saves");
      const [rFirst, rSecond] = r % 2 === 0 ? (["restore", "read"] as const) : (["read", "restore"] as const);
      for (const what of [rFirst, rSecond]) {
        log(`round ${r + 1} of ${rounds}: ${what}...`);
        if (what === "restore") samples.restore.push(rate(restore()));
        else samples.read.push(rate(read(imageBytes)));
      }
    }
    const row = (name: string, value: number, baseline: number): BenchRow => ({
      name,
      value: Math.round(value),
      unit: "MB/s",
      baseline: Math.round(baseline),
      ratio: value / baseline,
    });
    const rows = [
      row(`save ${mib} MiB (vs raw write)`, median(samples.save), median(samples.write)),
      row(`restore ${mib} MiB (vs raw read)`, median(samples.restore), median(samples.read)),
      row("restore, first round (frames made)", samples.restore[0]!, samples.read[0]!),
    ];
    return { rows, mib, rounds, pages, pagesTouched, imageBytes, samples, dir: opts.dir };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
