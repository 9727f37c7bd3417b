// Guests that misbehave, in virtual time: a crash loop, a kernel that dies at boot, memory past
// what a direct map once covered. The host's monitor must neither spin nor lose track of them.

import assert from "node:assert/strict";
import { test } from "node:test";
import { DOMINF, dominfShutdownCode } from "../src/abi/domctl.ts";
import { SHUTDOWN } from "../src/abi/xen.ts";
import { bootHost as bootMachineHost } from "../src/harness/machine.ts";
import { parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { DEFAULT_HOST, type Host, type HostDomain } from "../src/toolstack/libxl/host.ts";

const MS = 1_000_000;

function bootHost(seed: number, machineMiB = 256): Host {
  const { host } = bootMachineHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB, seed });
  host.boot();
  return host;
}

function cfg(text: string) {
  return parseGuestConfig(`name = "g"\nvcpus = 1\n${text}`, "test.cfg");
}

function runFor(host: Host, ms: number): void {
  const end = host.now() + ms * MS;
  while (host.now() < end) host.run(Math.min(end, host.now() + MS));
}

function runUntil(host: Host, ms: number, what: string, cond: () => boolean): void {
  const end = host.now() + ms * MS;
  while (!cond() && host.now() < end) host.run(host.now() + MS);
  assert.ok(cond(), `${what}: not within ${ms} ms of virtual time`);
}

function byName(host: Host, name: string): HostDomain | undefined {
  return [...host.domains.values()].find((d) => d.cfg.name === name);
}

test("a crash loop: each restart waits 2 s, and after 3 fast restarts the monitor preserves the domain (5 seeds)", () => {
  for (let seed = 1; seed <= 5; seed++) {
    const host = bootHost(seed);
    host.create(cfg('memory = 16\non_crash = "restart"'));
    const domids: number[] = [];
    const crashedAt: number[] = [];
    const restartedAt: number[] = [];
    for (let round = 0; round < 4; round++) {
      runUntil(host, 5_000, `seed ${seed}: round ${round}: the guest comes up`, () => {
        const hd = byName(host, "g");
        return hd !== undefined && host.bootOutcome(hd).state === "up";
      });
      const hd = byName(host, "g")!;
      if (round > 0) restartedAt.push(hd.createdNs);
      domids.push(hd.domid);
      // What `xl sysrq g c` does: the guest's sysrq watch panics its kernel.
      host.xs.write(`/local/domain/${hd.domid}/control/sysrq`, "c");
      runUntil(host, 1_000, `seed ${seed}: round ${round}: the crash`, () => host.tryInfo(hd.domid)?.flags === undefined || ((host.tryInfo(hd.domid)!.flags & DOMINF.shutdown) !== 0));
      crashedAt.push(host.now());
    }
    for (let i = 0; i < restartedAt.length; i++) {
      const gap = (restartedAt[i]! - crashedAt[i]!) / MS;
      assert.ok(gap >= 2_000 && gap < 2_100, `seed ${seed}: restart ${i + 1} came ${gap} ms after the crash`);
    }
    assert.equal(new Set(domids).size, 4, `seed ${seed}: each restart is a new domain`);
    // The fourth crash within 10 s of its start: no fourth restart, the domain stays, crashed.
    runFor(host, 5_000);
    const last = byName(host, "g")!;
    assert.equal(last.domid, domids[3]);
    const info = host.tryInfo(last.domid)!;
    assert.ok(info.flags & DOMINF.shutdown);
    assert.equal(dominfShutdownCode(info.flags), SHUTDOWN.crash);
    assert.ok(
      host.log.some((l) => /has shut down 4 times in a row within 10 s of starting: not restarting it again; preserving it/.test(l)),
      host.log.join("\n"),
    );
    assert.equal(host.domids().length, 2, `seed ${seed}: dom0 and the preserved domain`);
    // The guest's console says why it died.
    assert.match(last.console.text, /sysrq: Trigger a crash\n.*Kernel panic - not syncing: sysrq triggered crash/);
  }
});

test("a kernel that dies at boot is not restarted: create's outcome names the panic, and nothing is left behind", () => {
  const host = bootHost(3);
  const hd = host.create(cfg('memory = 16\non_crash = "restart"\nextra = "xensim.panic_on_boot=1"'));
  runUntil(host, 1_000, "the boot to fail", () => host.bootOutcome(hd).state !== "booting");
  const outcome = host.bootOutcome(hd);
  assert.equal(outcome.state, "failed");
  assert.match((outcome as { why: string }).why, /^Kernel panic - not syncing: xensim.panic_on_boot=1$/);
  runFor(host, 5_000);
  assert.deepEqual(host.domids(), [0], "no restart, no leftover domain");
  assert.equal(host.xs.tryRead(`/local/domain/${hd.domid}`), undefined);
  assert.ok(host.log.some((l) => l.includes("crashed during boot")));
});

test("memory: x86_64 guests map past 1 GiB with more L2s; PAE guests keep what is past lowmem as highmem", () => {
  const host = bootHost(1, 4096);
  for (const [width, mib, highmem] of [
    [64, 2000, 0],
    [32, 848, 0],
    [32, 1024, 176],
    [32, 2000, 1152],
  ] as const) {
    const name = `m${width}-${mib}`;
    const hd = host.create(parseGuestConfig(`name = "${name}"\nmemory = ${mib}\nvcpus = 1\nguest_width = ${width}`, "test.cfg"));
    runUntil(host, 2_000, `${name} boots`, () => host.bootOutcome(hd).state !== "booting");
    assert.deepEqual(host.bootOutcome(hd), { state: "up" }, `${name}: ${hd.kernel.log.join("\n")}`);
    assert.equal(hd.kernel.nrPages, mib * 256);
    const line = hd.kernel.log.find((l) => l.includes("HIGHMEM available"));
    if (highmem === 0) assert.equal(line, undefined, name);
    else assert.match(line ?? "", new RegExp(`\\] ${highmem}MB HIGHMEM available\\.$`), name);
    // The kernel allocates only from its direct map.
    assert.ok(hd.kernel.lowmemPages <= (width === 32 ? 424 * 512 : mib * 256));
    host.destroy(hd.domid);
  }
});

test("memory the machine does not have: create refuses it with one line", () => {
  const host = bootHost(1, 256);
  assert.throws(() => host.create(cfg("memory = 512")), (e: Error) => /^cannot build g: .*/.test(e.message) && !e.message.includes("\n"));
  assert.deepEqual(host.domids(), [0]);
});
