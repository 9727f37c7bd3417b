// `xensim bench host`: how responsive a host stays under load. A real host (serveHost, as
// `xensim up` runs it, at speed 1) in a temporary directory, in this process; a xenstore client
// (src/toolstack/xenstore/xs_client.ts) on its xenstored socket and `xl list` on its control
// socket measure wall-clock latency, median and p95, on the idle host and then with 1, 4 and 20
// busy guests (examples/guest.cfg: 2 vCPUs running forkexec). Each figure is printed beside the
// same host idle (those guests paused), with the ratio (the target: within 3x of idle).
//
// Beside the wall clock: the machine's pace (virtual time per wall time), and a guest's xenstore
// conversation through dom0 in virtual time (an idle guest's sysrq handshake: a watch event,
// then a transaction), which is what the scheduler decides. One case per scheduler, so that
// credit and the interleaving scheduler can be compared.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { request } from "../cli/xl.ts";
import { bootMachine } from "../harness/machine.ts";
import { parseGuestConfig } from "../toolstack/libxl/guest_cfg.ts";
import { DEFAULT_HOST, type Host, type HostParams } from "../toolstack/libxl/host.ts";
import { HOST_FILES, serveHost } from "../toolstack/xl/host_server.ts";
import { XsClient } from "../toolstack/xenstore/xs_client.ts";
import type { BenchRow } from "./common.ts";

export const HOST_CASES = ["credit", "interleave"] as const;

export const HOST_NOTES: readonly string[] = [
  "Wall-clock latency of one request at a time from a client in the host's own process (so each request waits for the",
  "event loop twice: once to be read, once for its reply), median and p95, beside the same host idle (its busy guests",
  "paused, so that xl list has as many domains to report); ratio = loaded / idle. The target is a ratio under 3.",
  "The guests are examples/guest.cfg (2 vCPUs, forkexec=2) on 4 pCPUs. pace = virtual time per wall time (1 keeps up).",
  "guest round trip = an idle guest's sysrq handshake through dom0's xenstored, in virtual time (what the scheduler decides),",
  "beside the same on the host before any busy guest: there dom0 sees the toolstack's write at its next 4 ms tick.",
  "A single guest quantum (an exec or an exit: a whole address space) can take milliseconds of wall time; requests that",
  "arrive during one wait for it, which is most of the p95.",
];

const LOADS = [1, 4, 20] as const;
const MS = 1_000_000;
const GUEST_CFG = fileURLToPath(new URL("../../examples/guest.cfg", import.meta.url));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

interface Figures {
  readMedian: number;
  readP95: number;
  listMedian: number;
  listP95: number;
  /** Virtual time per wall time while measuring. */
  pace: number;
  /** Median virtual us of the guest's xenstore round trip through dom0. */
  guestRtt: number;
}

/** Wall-clock latency samples (us) of `op`, one at a time, for `ms` (at least `min` samples). */
async function sample(ms: number, min: number, op: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  const t0 = performance.now();
  while (out.length < min || performance.now() - t0 < ms) {
    const t = performance.now();
    await op();
    out.push((performance.now() - t) * 1000);
    if (out.length >= 2000) break;
  }
  return out;
}

/** Virtual us from writing the idle guest's control/sysrq to its kernel clearing it, `n` times. */
async function guestRoundTrips(host: Host, domid: number, n: number): Promise<number[]> {
  const node = `/local/domain/${domid}/control/sysrq`;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    // A gap between requests (in the machine's time), so that each one starts afresh.
    const gapFrom = host.now();
    while (host.now() - gapFrom < 10 * MS) await sleep(1);
    host.xs.write(node, "h");
    const t0 = host.now();
    const wall0 = performance.now();
    while (host.xs.tryRead(node) !== "" && performance.now() - wall0 < 60_000) await sleep(0);
    out.push((host.now() - t0) / 1000);
  }
  return out;
}

async function measure(host: Host, dir: string, xs: XsClient, ms: number, idleDomid: number, roundTrips = true): Promise<Figures> {
  const v0 = host.now();
  const w0 = performance.now();
  const reads = await sample(ms / 2, 40, () => xs.read("/local/domain/0/name"));
  const lists = await sample(ms / 2, 20, async () => {
    const r = await request(dir, { cmd: "list" });
    if (r["ok"] !== true) throw new Error(`xl list: ${String(r["error"])}`);
  });
  const pace = (host.now() - v0) / ((performance.now() - w0) * 1e6);
  const rtts = roundTrips ? await guestRoundTrips(host, idleDomid, 5) : [Number.NaN];
  return {
    readMedian: quantile(reads, 0.5),
    readP95: quantile(reads, 0.95),
    listMedian: quantile(lists, 0.5),
    listP95: quantile(lists, 0.95),
    pace,
    guestRtt: quantile(rtts, 0.5),
  };
}

function figureRow(name: string, value: number, unit: string, baseline: number, digits = 0): BenchRow {
  const round = (x: number) => Math.round(x * 10 ** digits) / 10 ** digits;
  return { name, value: round(value), unit, baseline: round(baseline), ratio: value / baseline };
}

/** `xensim bench host --case <scheduler>`. */
export async function benchHost(sched: string, ms: number): Promise<BenchRow[]> {
  if (sched !== "credit" && sched !== "interleave") throw new Error(`unknown host case ${sched}`);
  const dir = mkdtempSync(join(tmpdir(), "xensim-bench-host-"));
  const params: HostParams = { ...DEFAULT_HOST, sched };
  const running = await serveHost({ dir, speed: 1, params, boot: bootMachine(params), log: () => {} });
  const host = running.host;
  let xs: XsClient | undefined;
  try {
    xs = await XsClient.connect(join(dir, HOST_FILES.xenstored));
    const idle = host.create(parseGuestConfig(`name = "idle"\nmemory = 16\nvcpus = 1\n`, "idle.cfg"));
    const ready = performance.now();
    while (host.xs.tryRead(`/local/domain/${idle.domid}/control/feature-poweroff`) !== "1" && performance.now() - ready < 30_000) await sleep(5);
    // Warm-up: the JIT, and the host's first ticks.
    await sample(200, 20, () => xs!.read("/local/domain/0/name"));
    const base = await measure(host, dir, xs, ms, idle.domid);
    const rows: BenchRow[] = [];
    const guestText = readFileSync(GUEST_CFG, "utf8");
    const busy: number[] = [];
    for (const n of LOADS) {
      while (busy.length < n) busy.push(host.create(parseGuestConfig(guestText.replace(`"guest1"`, `"busy${busy.length}"`), GUEST_CFG)).domid);
      // Let them boot and get busy (the machine runs behind the wall clock from here on).
      await sleep(1000);
      const f = await measure(host, dir, xs, ms, idle.domid);
      // The same host idle: the same domains, paused (xl list has as many to report).
      for (const domid of busy) host.pause(domid);
      await sleep(200);
      const idleN = await measure(host, dir, xs, ms, idle.domid, false);
      for (const domid of busy) host.unpause(domid);
      const label = `${sched}, ${n} busy guest${n === 1 ? "" : "s"}`;
      rows.push(figureRow(`${label}: xenstore read median`, f.readMedian, "us", idleN.readMedian));
      rows.push(figureRow(`${label}: xenstore read p95`, f.readP95, "us", idleN.readP95));
      rows.push(figureRow(`${label}: xl list median`, f.listMedian, "us", idleN.listMedian));
      rows.push(figureRow(`${label}: xl list p95`, f.listP95, "us", idleN.listP95));
      rows.push(figureRow(`${label}: pace`, f.pace, "virtual/wall", idleN.pace, 3));
      rows.push(figureRow(`${label}: guest round trip`, f.guestRtt, "us virtual", base.guestRtt));
    }
    return rows;
  } finally {
    xs?.destroy();
    await running.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
