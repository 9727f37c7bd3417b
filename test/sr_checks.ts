// Assertions shared by the save/restore and migration tests: a guest that runs on with every
// check passing, and an image that Xen's verify-stream-v2 accepts.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { HostDomain } from "../src/toolstack/libxl/host.ts";
import * as H from "./sr_harness.ts";
import { XEN_LIBEXEC, xenEnv } from "./xen_tools.ts";

export const list = (ps: readonly string[]) => ps.map((p) => `\n  ${p}`).join("");

/** Runs `ms` and asserts that every check passes. */
export function assertRuns(th: H.TestHost, hd: HostDomain, ms: number, what: string): void {
  const problems = H.runAndCheck(th, hd, ms);
  assert.deepEqual(problems, [], `${what} (${H.describe(th, hd)}):${list(problems)}`);
}

/** The image (written to `dir` for the while) through Xen's verify-stream-v2 -f xl. */
export function verifyStream(image: Uint8Array, dir: string, name: string): void {
  const file = join(dir, name);
  writeFileSync(file, image);
  const r = spawnSync("python3", [join(XEN_LIBEXEC, "verify-stream-v2"), "-f", "xl", "-i", file], { encoding: "utf8", timeout: 120_000, env: xenEnv() });
  rmSync(file, { force: true });
  assert.equal(r.status, 0, `verify-stream-v2 -f xl rejects ${name}:\n${r.stdout}${r.stderr}`);
}
