// The host in virtual time: dom0's xenstored and xenconsoled serve guests over their rings, the
// guests' xenbus and shutdown watcher react to control/shutdown, and the toolstack applies
// on_poweroff / on_reboot. Deterministic per seed; many seeds run.

import assert from "node:assert/strict";
import { test } from "node:test";
import { parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { bootHost as bootMachineHost } from "../src/harness/machine.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { DEFAULT_HOST, type Host } from "../src/toolstack/libxl/host.ts";

const MS = 1_000_000;

function guestCfg(extra = ""): ReturnType<typeof parseGuestConfig> {
  return parseGuestConfig(`name = "g"\nmemory = 16\nvcpus = 2\n${extra}`, "test.cfg");
}

/** A booted host; the hypervisor under it is the harness's, for the checks the toolstack cannot make. */
const machines = new WeakMap<Host, Hypervisor>();
function bootHost(seed: number): Host {
  const { host, hv } = bootMachineHost({ ...DEFAULT_HOST, pcpus: 2, machineMiB: 256, seed });
  machines.set(host, hv);
  host.boot();
  return host;
}

function hvOf(host: Host): Hypervisor {
  return machines.get(host)!;
}

/** Runs until `cond` holds, at most `ms` of virtual time; the time it took. */
function runUntil(host: Host, ms: number, cond: () => boolean): number {
  const start = host.now();
  while (!cond() && host.now() - start < ms * MS) host.run(host.now() + MS / 4);
  assert.ok(cond(), `condition not met within ${ms} ms of virtual time`);
  return (host.now() - start) / MS;
}

test("create: the domain's xenstore area is libxl's, and its kernel advertises control/feature-*", () => {
  const host = bootHost(1);
  const hd = host.create(guestCfg());
  const dom = `/local/domain/${hd.domid}`;
  runUntil(host, 200, () => host.xs.tryRead(`${dom}/control/feature-poweroff`) === "1");
  const names = host.xs.directory(dom);
  for (const n of ["vm", "name", "domid", "memory", "cpu", "control", "store", "console", "data"]) assert.ok(names.includes(n), `${dom}/${n}`);
  assert.equal(host.xs.read(`${dom}/name`), "g");
  assert.equal(host.xs.read(`${dom}/domid`), String(hd.domid));
  assert.equal(host.xs.read(`${dom}/memory/target`), String(16 * 1024));
  assert.equal(host.xs.read(`${dom}/cpu/1/availability`), "online");
  assert.equal(host.xs.read(`${dom}/store/port`), String(hd.built.storeEvtchn));
  assert.equal(host.xs.read(`${dom}/vm`), `/vm/${hd.uuid}`);
  assert.equal(host.xs.read(`/vm/${hd.uuid}/name`), "g");
  for (const f of ["reboot", "suspend"]) assert.equal(host.xs.read(`${dom}/control/feature-${f}`), "1");
  assert.equal(hvOf(host).domains.get(hd.domid)?.state, "running");
});

test("poweroff through control/shutdown: the guest clears the node, shuts down, and the toolstack destroys it (20 seeds)", () => {
  for (let seed = 1; seed <= 20; seed++) {
    const host = bootHost(seed);
    const hd = host.create(guestCfg());
    const dom = `/local/domain/${hd.domid}`;
    runUntil(host, 200, () => host.xs.tryRead(`${dom}/control/feature-poweroff`) === "1");
    host.xs.write(`${dom}/control/shutdown`, "poweroff");
    runUntil(host, 200, () => !hvOf(host).domains.has(hd.domid));
    assert.equal(host.xs.tryRead(dom), undefined, `seed ${seed}: ${dom} is gone`);
    assert.equal(host.xs.tryRead(`/vm/${hd.uuid}`), undefined, `seed ${seed}`);
    assert.ok(
      host.log.some((l) => l.includes(`Domain ${hd.domid} has shut down, reason code 0`)),
      `seed ${seed}: ${host.log.join("\n")}`,
    );
    assert.deepEqual(hd.kernel.shutdownWatcher?.seen, ["poweroff"], `seed ${seed}`);
  }
});

test("reboot: on_reboot=restart destroys the domain and creates it again under a new domid (10 seeds)", () => {
  for (let seed = 1; seed <= 10; seed++) {
    const host = bootHost(seed);
    const first = host.create(guestCfg());
    runUntil(host, 200, () => host.xs.tryRead(`/local/domain/${first.domid}/control/feature-reboot`) === "1");
    host.requestShutdown(first.domid, "reboot");
    // xl's monitor sleeps 2 s before it builds the domain again.
    runUntil(host, 2_300, () => !hvOf(host).domains.has(first.domid) && host.domains.size === 1);
    const again = [...host.domains.values()][0]!;
    assert.notEqual(again.domid, first.domid, `seed ${seed}`);
    assert.equal(again.uuid, first.uuid, `seed ${seed}: the restarted domain keeps its uuid`);
    runUntil(host, 300, () => host.xs.tryRead(`/local/domain/${again.domid}/control/feature-poweroff`) === "1");
  }
});

test("a request the guest does not handle is left in place and logged as ignored", () => {
  const host = bootHost(3);
  const hd = host.create(guestCfg());
  const dom = `/local/domain/${hd.domid}`;
  runUntil(host, 200, () => host.xs.tryRead(`${dom}/control/feature-poweroff`) === "1");
  host.xs.write(`${dom}/control/shutdown`, "bogus");
  runUntil(host, 200, () => hd.kernel.shutdownWatcher?.seen.includes("bogus") === true);
  assert.equal(host.xs.read(`${dom}/control/shutdown`), "bogus");
  assert.ok(hd.kernel.log.some((l) => l.includes("Ignoring shutdown request: bogus")));
  assert.equal(hvOf(host).domains.get(hd.domid)?.state, "running");
});

test("busy guests: shutdown works while forkexec runs on every vCPU, and on an i386 PAE guest (8 seeds)", () => {
  for (let seed = 1; seed <= 8; seed++) {
    const host = bootHost(seed);
    const cfg = guestCfg(`guest_width = ${seed % 2 === 0 ? 32 : 64}\nevtchn_abi = "${seed % 3 === 0 ? "2l" : "fifo"}"\nworkload = "forkexec=4"\n`);
    const hd = host.create(cfg);
    const dom = `/local/domain/${hd.domid}`;
    runUntil(host, 300, () => host.xs.tryRead(`${dom}/control/feature-poweroff`) === "1");
    host.run(host.now() + 20 * MS);
    host.requestShutdown(hd.domid, "poweroff");
    runUntil(host, 500, () => !hvOf(host).domains.has(hd.domid));
  }
});

test("the console: kernel messages reach xenconsoled through the console ring", () => {
  const host = bootHost(5);
  const hd = host.create(guestCfg());
  runUntil(host, 200, () => hd.console.text.includes("event channel ABI"));
  assert.match(hd.console.text, /Xen: using (FIFO|2-level) event channel ABI, 2 vCPUs/);
});

test("the same seed gives the same run", () => {
  const trace = (seed: number) => {
    const host = bootHost(seed);
    const hd = host.create(guestCfg());
    host.run(host.now() + 60 * MS);
    host.xs.write(`/local/domain/${hd.domid}/control/shutdown`, "poweroff");
    host.run(host.now() + 60 * MS);
    return `${host.now()} ${host.log.join("|")} ${hd.kernel.log.join("|")}`;
  };
  assert.equal(trace(7), trace(7));
});
