// The three worlds stay apart, as on a real machine: the guest kernel sees only Xen's public
// interface; the toolstack reaches Xen only through domctl.ts (libxc's domctl, sysctl and
// privcmd); the hypervisor knows nothing of either. Only the harness, the CLI and the
// benchmarks see the whole machine.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), "../src");

/** What each world may import, as folders (or single files) under src/. */
const RULES: Record<string, readonly string[]> = {
  abi: ["abi"],
  util: ["util"],
  hypervisor: ["abi", "util", "hypervisor"],
  guest: ["abi", "util", "guest"],
  // The toolstack loads kernel images (src/guest) and drives dom0's user space through its kernel's
  // devices; of Xen it has the control door and nothing else.
  toolstack: ["abi", "util", "guest", "toolstack", "hypervisor/domctl.ts"],
};

interface Import {
  file: string;
  line: number;
  target: string;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : e.name.endsWith(".ts") ? [p] : [];
  });
}

/** Every relative import and export-from of a file, resolved to a path under src/. */
export function importsOf(file: string, text: string): Import[] {
  const out: Import[] = [];
  const lines = text.split("\n");
  const re = /(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}\/[^"']+)["']/g;
  lines.forEach((l, i) => {
    for (const m of l.matchAll(re)) out.push({ file, line: i + 1, target: relative(SRC, resolve(dirname(file), m[1]!)).split("\\").join("/") });
  });
  return out;
}

/** The imports that break the rules, as "file:line imports target". */
export function breaches(files: { file: string; text: string }[]): string[] {
  const out: string[] = [];
  for (const { file, text } of files) {
    const world = relative(SRC, file).split("/")[0]!;
    const allowed = RULES[world];
    if (!allowed) continue;
    for (const imp of importsOf(file, text)) {
      const ok = allowed.some((a) => (a.endsWith(".ts") ? imp.target === a : imp.target === a || imp.target.startsWith(`${a}/`)));
      if (!ok) out.push(`src/${relative(SRC, file)}:${imp.line} imports src/${imp.target}`);
    }
  }
  return out;
}

const tree = sourceFiles(SRC).map((file) => ({ file, text: readFileSync(file, "utf8") }));

test("each world imports only what it could reach on a real machine", () => {
  assert.deepEqual(breaches(tree), []);
});

test("the toolstack imports nothing of the hypervisor but domctl.ts", () => {
  const reached = new Set<string>();
  for (const { file, text } of tree) {
    if (!relative(SRC, file).startsWith("toolstack/")) continue;
    for (const imp of importsOf(file, text)) if (imp.target.startsWith("hypervisor/")) reached.add(imp.target);
  }
  assert.deepEqual([...reached], ["hypervisor/domctl.ts"]);
});

test("the checker catches a breach in each world", () => {
  const fake = (path: string, spec: string) => ({ file: join(SRC, path), text: `import { x } from "${spec}";\n` });
  const found = breaches([
    fake("toolstack/libxl/host.ts", "../../hypervisor/hypervisor.ts"),
    fake("toolstack/libxc/builder.ts", "../../harness/scenario.ts"),
    fake("guest/kernel.ts", "../hypervisor/vcpu.ts"),
    fake("hypervisor/domain.ts", "../toolstack/xenstored/daemon.ts"),
    fake("abi/xen.ts", "../guest/events.ts"),
    fake("toolstack/libxl/host.ts", "../../hypervisor/domctl.ts"),
  ]);
  assert.deepEqual(found, [
    "src/toolstack/libxl/host.ts:1 imports src/hypervisor/hypervisor.ts",
    "src/toolstack/libxc/builder.ts:1 imports src/harness/scenario.ts",
    "src/guest/kernel.ts:1 imports src/hypervisor/vcpu.ts",
    "src/hypervisor/domain.ts:1 imports src/toolstack/xenstored/daemon.ts",
    "src/abi/xen.ts:1 imports src/guest/events.ts",
  ]);
});
