// The `xensim` command as the end-to-end tests run it (through tsx, from the clone), and what
// they read back from `xl list`.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";

export const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

export function xensim(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: 180_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

export function ok(r: { code: number; out: string; err: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.out}${r.err}`);
  return r.out;
}

/** `xl list`'s row for `name`: its domid, state and CPU time, or undefined. */
export function row(dir: string, name: string): { domid: number; state: string; time: number } | undefined {
  const m = new RegExp(`^${name}\\s+(\\d+)\\s+\\d+\\s+\\d+\\s+(\\S+)\\s+([\\d.]+)`, "m").exec(ok(xensim("-H", dir, "list"), "list"));
  return m ? { domid: Number(m[1]), state: m[2]!, time: Number(m[3]) } : undefined;
}
