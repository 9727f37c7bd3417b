// Xen 4.17's own tools for the tests that compare the project with them: where they are, the
// environment a child process needs to run them, and a `skip` value for the tests that need them.
//
// The tools are Debian's Xen 4.17 packages unpacked by `bash scripts/xen-tools.sh` (`npm test` runs
// it first) into .cache/xen-tools/, or those under $XEN_ROOT when it is set. When a tool is missing,
// the tests that need it are skipped and one line says which tool and how to get it; with
// XENSIM_REQUIRE_XEN_TOOLS=1 (CI) they fail instead. At exit each test file that uses this module
// prints how many of its tests that need Xen's tools ran and how many were skipped.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, relative } from "node:path";
import { afterEach, before } from "node:test";

export const PROJECT_DIR = join(import.meta.dirname, "..");
const CACHE = process.env["XEN_TOOLS_CACHE"] || join(PROJECT_DIR, ".cache", "xen-tools");

/** Where the unpacked packages are: $XEN_ROOT if set, else the project's cache. */
export const XEN_ROOT = process.env["XEN_ROOT"] || join(CACHE, "root");
/** The stand-in hypervisor for the reference daemons (scripts/xenshim.c, built by scripts/xen-tools.sh). */
export const XENSHIM = process.env["XENSHIM"] || join(CACHE, "xenshim.so");
/** usr/bin: the xenstore-* clients. */
export const XEN_BIN = join(XEN_ROOT, "usr", "bin");
/** usr/lib/xen-4.17/bin: the daemons, test-xenstore, xenstore-control, verify-stream-v2. */
export const XEN_LIBEXEC = join(XEN_ROOT, "usr", "lib", "xen-4.17", "bin");
/** usr/include: the public headers are under xen/. */
export const XEN_INCLUDE = join(XEN_ROOT, "usr", "include");
/** The launcher of the reference daemons: `bash RUN_XENSTORED c|ocaml|stop DIR`. */
export const RUN_XENSTORED = join(PROJECT_DIR, "scripts", "run-xenstored.sh");

const LIB_DIR = join(XEN_ROOT, "usr", "lib", "x86_64-linux-gnu");
const PYTHON_DIRS = [join(XEN_ROOT, "usr", "lib", "xen-4.17", "lib", "python"), join(XEN_ROOT, "usr", "lib", "python3", "dist-packages")];

export type XenTool =
  | "headers"
  | "xenstored"
  | "oxenstored"
  | "test-xenstore"
  | "xenstore-clients"
  | "xenstore-control"
  | "pyxs"
  | "verify-stream-v2";

interface ToolSpec {
  readonly what: string;
  /** Files that must exist. */
  readonly files: readonly string[];
  /** Programs that must be on PATH. */
  readonly programs?: readonly string[];
}

const TOOLS: Readonly<Record<XenTool, ToolSpec>> = {
  headers: { what: "Xen 4.17's public headers (libxen-dev)", files: [join(XEN_INCLUDE, "xen", "xen.h")], programs: ["gcc"] },
  xenstored: { what: "the C xenstored (xen-utils-4.17) with scripts/xenshim.c built", files: [join(XEN_LIBEXEC, "xenstored"), XENSHIM, RUN_XENSTORED] },
  oxenstored: { what: "oxenstored (xen-utils-4.17) with scripts/xenshim.c built", files: [join(XEN_LIBEXEC, "oxenstored"), XENSHIM, RUN_XENSTORED] },
  "test-xenstore": { what: "test-xenstore (xen-utils-4.17)", files: [join(XEN_LIBEXEC, "test-xenstore")] },
  "xenstore-clients": { what: "the xenstore-* clients (xenstore-utils)", files: ["read", "write", "ls", "list", "rm", "exists", "chmod", "watch"].map((c) => join(XEN_BIN, `xenstore-${c}`)) },
  "xenstore-control": { what: "xenstore-control (xen-utils-4.17)", files: [join(XEN_LIBEXEC, "xenstore-control")] },
  pyxs: { what: "pyxs (python3-pyxs)", files: [join(PYTHON_DIRS[1]!, "pyxs", "__init__.py")], programs: ["python3"] },
  "verify-stream-v2": { what: "verify-stream-v2 (xen-utils-4.17)", files: [join(XEN_LIBEXEC, "verify-stream-v2")], programs: ["python3"] },
};

/** True when the tests must fail, not skip, for a missing tool. */
export const REQUIRE_XEN_TOOLS = /^(1|true|yes)$/i.test(process.env["XENSIM_REQUIRE_XEN_TOOLS"] ?? "");

const GET_THEM = "get them with `bash scripts/xen-tools.sh` (npm test runs it; it needs apt-get and a network the first time)";

function onPath(program: string): boolean {
  return (process.env["PATH"] ?? "").split(delimiter).some((d) => d !== "" && existsSync(join(d, program)));
}

const missingCache = new Map<XenTool, string | undefined>();

/** Why `tool` cannot be used here, or undefined when it can. */
export function xenToolMissing(tool: XenTool): string | undefined {
  if (!missingCache.has(tool)) {
    const spec = TOOLS[tool];
    const file = spec.files.find((f) => !existsSync(f));
    const program = spec.programs?.find((p) => !onPath(p));
    missingCache.set(
      tool,
      file !== undefined ? `${spec.what}: ${relativeToProject(file)} not found` : program !== undefined ? `${spec.what}: ${program} is not on PATH` : undefined,
    );
  }
  return missingCache.get(tool);
}

function relativeToProject(p: string): string {
  const r = relative(PROJECT_DIR, p);
  return r.startsWith("..") ? p : r;
}

/**
 * The environment for a child process that runs Xen's tools: their directories first on PATH,
 * their libraries and Python modules found, XEN_ROOT and XENSHIM set; `extra` on top.
 */
export function xenEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = process.env;
  const prepend = (dirs: readonly string[], old: string | undefined) => [...dirs, ...(old ? [old] : [])].join(delimiter);
  return {
    ...env,
    XEN_ROOT,
    XENSHIM,
    PATH: prepend([XEN_LIBEXEC, XEN_BIN], env["PATH"]),
    LD_LIBRARY_PATH: prepend([LIB_DIR], env["LD_LIBRARY_PATH"]),
    PYTHONPATH: prepend(PYTHON_DIRS, env["PYTHONPATH"]),
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------------
// Skipping, failing, counting

const tally = { ran: 0, skipped: 0, missing: new Set<XenTool>() };
let exitHook = false;

function atExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    const file = relativeToProject(process.argv[1] ?? "?");
    const missing = tally.missing.size > 0 ? ` (missing: ${[...tally.missing].join(", ")})` : "";
    writeSync(1, `xen-tools: ${file}: ${tally.ran} tests needing Xen's tools ran, ${tally.skipped} tests or suites skipped${missing}\n`);
  });
}

export interface XenNeed {
  /** Why some of the tools are missing, or undefined when they are all here. */
  readonly missing: string | undefined;
  /**
   * The `skip` option of one test or suite (call it once for each: each skip is counted): the
   * reason when a tool is missing, else false. With XENSIM_REQUIRE_XEN_TOOLS=1 always false: the
   * tests run and fail (see `suite` and `test`).
   */
  skip(): string | false;
  /**
   * First thing in the body of a suite that needs the tools: each of its tests that runs is
   * counted; with XENSIM_REQUIRE_XEN_TOOLS=1 and a tool missing, the suite fails at once, before
   * its own `before` hooks start anything.
   */
  suite(): void;
  /** First thing in a single test that needs the tools (outside such a suite): counts it, or fails it like `suite`. */
  test(): void;
}

const counted = new WeakSet<object>();

/**
 * What the tests that need `tools` use. The first time a missing tool is found in a test run,
 * one line says which one and how to get it.
 */
export function xenNeeds(...tools: XenTool[]): XenNeed {
  atExit();
  const absent = tools.filter((t) => xenToolMissing(t) !== undefined);
  for (const t of absent) {
    tally.missing.add(t);
    const then = REQUIRE_XEN_TOOLS ? "XENSIM_REQUIRE_XEN_TOOLS is set, so the tests that need it FAIL" : "the tests that need it are skipped";
    noticeOnce(t, `xen-tools: ${xenToolMissing(t)}; ${then}; ${GET_THEM}`);
  }
  const missing = absent.length === 0 ? undefined : `${absent.map((t) => xenToolMissing(t)).join("; ")}; ${GET_THEM}`;
  const failIfRequired = () => {
    if (missing !== undefined && REQUIRE_XEN_TOOLS) throw new Error(`XENSIM_REQUIRE_XEN_TOOLS=1: ${missing}`);
  };
  return {
    missing,
    skip() {
      if (missing === undefined || REQUIRE_XEN_TOOLS) return false;
      tally.skipped++;
      return `needs Xen's ${absent.join(", ")} (bash scripts/xen-tools.sh)`;
    },
    suite() {
      before(failIfRequired);
      afterEach((t) => {
        if (counted.has(t)) return;
        counted.add(t);
        tally.ran++;
      });
    },
    test() {
      failIfRequired();
      tally.ran++;
    },
  };
}

/** The `skip` option of one test or suite that needs `tools`: `xenNeeds(...tools).skip()`. */
export function xenSkip(...tools: XenTool[]): string | false {
  return xenNeeds(...tools).skip();
}

/**
 * Prints `line` once per test run and tool: the files of one `node --test` run share a marker
 * directory named after the runner's process; outside the runner it is printed every time.
 */
function noticeOnce(tool: XenTool, line: string): void {
  const dir = runMarkerDir();
  if (dir !== undefined) {
    try {
      writeFileSync(join(dir, tool), "", { flag: "wx" });
    } catch {
      return; // another file of this run said it already
    }
  }
  writeSync(2, `${line}\n`);
}

const MARKER_PREFIX = "xensim-xen-tools-notices-";

function runMarkerDir(): string | undefined {
  if (process.env["NODE_TEST_CONTEXT"] === undefined) return undefined;
  const runner = process.ppid;
  const started = processStart(runner);
  if (started === undefined) return undefined;
  const dir = join(tmpdir(), `${MARKER_PREFIX}${runner}-${started}`);
  try {
    if (!existsSync(dir)) {
      pruneMarkers();
      mkdirSync(dir, { recursive: true });
    }
    return dir;
  } catch {
    return undefined;
  }
}

/** The start time of a process (Linux /proc), which with its pid names one test run. */
function processStart(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Removes the marker directories of earlier runs whose runner has exited. */
function pruneMarkers(): void {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith(MARKER_PREFIX)) continue;
    const [pid, started] = name.slice(MARKER_PREFIX.length).split("-");
    if (processStart(Number(pid)) === started) continue;
    try {
      if (statSync(join(tmpdir(), name)).isDirectory()) rmSync(join(tmpdir(), name), { recursive: true, force: true });
    } catch {
      // another run pruned it
    }
  }
}
