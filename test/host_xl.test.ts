// The host's side of xl's domain commands in virtual time: names (unique, Domain-0's included;
// rename), vcpu-set through cpu/N/availability and the guest's CPU hotplug, keyboard input
// through the console ring and the guest tty's echo, and shutdown's acknowledgement.

import assert from "node:assert/strict";
import { test } from "node:test";
import { auditMm } from "../src/harness/audit_mm.ts";
import { bootHost as bootMachineHost } from "../src/harness/machine.ts";
import type { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { XenLinux } from "../src/guest/kernel.ts";
import { parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { DEFAULT_HOST, type Host, HostError } from "../src/toolstack/libxl/host.ts";
import { domainEvent, domainHasShutDown } from "../src/toolstack/xl/xl_commands.ts";
import { allDomainInfo, retrievedConfig } from "../src/toolstack/xl/host_info.ts";
import { formatUptime } from "../src/toolstack/xl/xl_format.ts";

const MS = 1_000_000;

function boot(seed: number, pcpus = 2): { host: Host; hv: Hypervisor } {
  const m = bootMachineHost({ ...DEFAULT_HOST, pcpus, machineMiB: 256, seed });
  m.host.boot();
  return m;
}

function cfg(text: string) {
  return parseGuestConfig(text, "test.cfg");
}

function runUntil(host: Host, ms: number, cond: () => boolean, what = "condition"): void {
  const start = host.now();
  while (!cond() && host.now() - start < ms * MS) host.run(host.now() + MS / 4);
  assert.ok(cond(), `${what} not met within ${ms} ms of virtual time`);
}

const booted = (host: Host, domid: number) => host.hasConnected(domid);
const online = (host: Host, domid: number) => host.info(domid).nrOnlineVcpus;

test("names are unique, Domain-0's too (libxl__domain_rename from libxl__domain_make)", () => {
  const { host } = boot(1);
  assert.throws(() => host.create(cfg('name = "Domain-0"\nmemory = 16')), new HostError('Domain with name "Domain-0" already exists.'));
  host.create(cfg('name = "a"\nmemory = 16'));
  assert.throws(() => host.create(cfg('name = "a"\nmemory = 16')), /Domain with name "a" already exists\./);
  assert.equal(host.domains.size, 1, "the refused domain was never built");
});

test("rename: /local/domain/N/name and /vm/UUID/name change together; a taken name is refused", () => {
  const { host } = boot(2);
  const a = host.create(cfg('name = "a"\nmemory = 16'));
  host.create(cfg('name = "b"\nmemory = 16'));
  host.rename(a.domid, "a", "c");
  assert.equal(host.xs.read(`/local/domain/${a.domid}/name`), "c");
  assert.equal(host.xs.read(`/vm/${a.uuid}/name`), "c");
  assert.equal(host.nameToDomid("c"), a.domid);
  assert.equal(host.nameToDomid("a"), undefined);
  assert.throws(() => host.rename(a.domid, "c", "b"), /Domain with name "b" already exists\./);
  assert.throws(() => host.rename(a.domid, "c", "Domain-0"), /Domain with name "Domain-0" already exists\./);
  // renaming to its own name is fine (libxl: "domain already has this name, ok")
  host.rename(a.domid, "c", "c");
  // and the config a restart would use follows
  assert.equal(host.domains.get(a.domid)!.cfg.name, "c");
});

test("vcpus below maxvcpus: the guest takes the extra vCPUs down at boot, vcpu-set brings them up and down (6 seeds)", () => {
  for (let seed = 1; seed <= 6; seed++) {
    const { host, hv } = boot(seed, 3);
    const hd = host.create(cfg(`name = "g"\nmemory = 32\nvcpus = 1\nmaxvcpus = 4\nworkload = "forkexec=4"\nguest_width = ${seed % 2 ? 64 : 32}`));
    const kernels = new Map<number, XenLinux>([[hd.domid, hd.kernel]]);
    runUntil(host, 500, () => booted(host, hd.domid) && online(host, hd.domid) === 1, `seed ${seed}: boot with 1 vCPU online`);
    assert.equal(host.xs.read(`/local/domain/${hd.domid}/cpu/3/availability`), "offline");
    assert.equal(host.info(hd.domid).maxVcpuId, 3);

    host.setVcpusOnline(hd.domid, 4);
    runUntil(host, 500, () => online(host, hd.domid) === 4, `seed ${seed}: 4 online`);
    host.run(host.now() + 30 * MS);
    host.setVcpusOnline(hd.domid, 2);
    runUntil(host, 500, () => online(host, hd.domid) === 2, `seed ${seed}: 2 online`);
    assert.deepEqual(
      hd.kernel.percpu.map((p) => p.online),
      [true, true, false, false],
      `seed ${seed}`,
    );
    // the processes go on, on the CPUs that are left
    const forks = () => (hd.kernel.workloads[0] as unknown as { sched: { stats: { forks: number } } }).sched.stats.forks;
    const before = forks();
    host.run(host.now() + 50 * MS);
    assert.ok(forks() > before, `seed ${seed}: work continues`);
    assert.deepEqual(auditMm(hv, kernels), [], `seed ${seed}: MMU audit`);
    assert.equal(hv.domains.get(hd.domid)?.state, "running", `seed ${seed}: ${hd.kernel.log.slice(-5).join("\n")}`);
    // avail_vcpus in `list -l` follows the nodes
    assert.deepEqual(retrievedConfig(host, hd.domid)?.availVcpus, [0, 1]);
  }
});

test("vcpu-set: 0 and more than max_vcpus are refused with libxl's words; CPU 0 never goes", () => {
  const { host } = boot(3);
  const hd = host.create(cfg('name = "g"\nmemory = 16\nvcpus = 2'));
  runUntil(host, 300, () => booted(host, hd.domid));
  assert.throws(() => host.setVcpusOnline(hd.domid, 0), /Requested 0 VCPUs!/);
  assert.throws(() => host.setVcpusOnline(hd.domid, 3), /Requested 3 VCPUs, however maxcpus is 2!/);
  // the guest ignores an offline CPU 0 (x86 without CPU0 hotplug)
  host.xs.write(`/local/domain/${hd.domid}/cpu/0/availability`, "offline");
  host.run(host.now() + 50 * MS);
  assert.equal(online(host, hd.domid), 2);
  assert.ok(hd.kernel.cpuHotplug?.seen.includes("0:offline"));
  host.xs.write(`/local/domain/${hd.domid}/cpu/1/availability`, "sideways");
  runUntil(host, 100, () => hd.kernel.log.some((l) => l.includes("XENBUS: unknown state(sideways) on CPU1")));
});

test("console input: bytes reach the guest through the console's in ring and its tty echoes them (cooked mode)", () => {
  const { host } = boot(4);
  const hd = host.create(cfg('name = "g"\nmemory = 16'));
  runUntil(host, 300, () => booted(host, hd.domid));
  const before = hd.console.text.length;
  hd.console.input(Buffer.from("hello\rwor\x7fld\x15again\x03x\r"));
  runUntil(host, 100, () => hd.console.text.length > before && hd.console.text.slice(before).includes("x\r\n"), "the echo");
  // ICRNL then ONLCR: CR echoes as CRLF; DEL rubs out one column; ^U the line; ^C shows as ^C
  assert.equal(hd.console.text.slice(before), `hello\r\nwor\b \bld${"\b \b".repeat(4)}again^Cx\r\n`);
  assert.deepEqual(hd.kernel.console?.tty.lines, ["hello", "x"]);
  assert.equal(hd.kernel.console?.tty.signals, 1);
  // more than the ring holds arrives whole, as the guest makes room
  const big = "y".repeat(3000);
  const mark = hd.console.text.length;
  hd.console.input(Buffer.from(`${big}\r`));
  runUntil(host, 200, () => hd.console.text.slice(mark).includes("\r\n"), "the long line");
  assert.equal(hd.console.text.slice(mark), `${big}\r\n`);
  assert.equal(hd.kernel.console?.tty.lines.at(-1), big);
});

test("shutdown -w's condition: domainHasShutDown holds on the shutdown itself (on_poweroff=preserve) and once the domain is gone", () => {
  const { host } = boot(5);
  const keep = host.create(cfg('name = "keep"\nmemory = 16\non_poweroff = "preserve"'));
  const gone = host.create(cfg('name = "gone"\nmemory = 16'));
  runUntil(host, 300, () => booted(host, keep.domid) && booted(host, gone.domid));
  assert.equal(domainHasShutDown(host, keep.domid), false);
  // libxl_domain_shutdown for a PV domain writes the node whatever the guest advertised
  host.requestShutdown(keep.domid, "poweroff");
  host.requestShutdown(gone.domid, "poweroff");
  runUntil(host, 300, () => domainHasShutDown(host, keep.domid) && domainHasShutDown(host, gone.domid));
  assert.deepEqual(domainEvent(host, keep.domid), { state: "shutdown", reason: 0 });
  runUntil(host, 300, () => domainEvent(host, gone.domid).state === "gone");
});

test("create without a monitor (-e): a shutdown is left as it is", () => {
  const { host } = boot(6);
  const hd = host.create(cfg('name = "e"\nmemory = 16'), { monitor: false });
  runUntil(host, 300, () => booted(host, hd.domid));
  host.requestShutdown(hd.domid, "poweroff");
  runUntil(host, 300, () => domainHasShutDown(host, hd.domid));
  host.run(host.now() + 3000 * MS);
  assert.deepEqual(domainEvent(host, hd.domid), { state: "shutdown", reason: 0 });
  assert.ok(host.domains.has(hd.domid));
});

test("uptime's clock is dom0's wall clock: /vm/UUID/start_time and `now` in epoch seconds (xl's time(NULL))", () => {
  const { host } = boot(7);
  // a host that serves people sets this from the real clock (host_server.ts)
  host.wallclockBaseSec = 1_700_000_000 - host.now() / 1e9;
  host.run(host.now() + 1500 * MS);
  const hd = host.create(cfg('name = "t"\nmemory = 16'));
  const start = host.xs.read(`/vm/${hd.uuid}/start_time`);
  // libxl writes "%lu.%02d"
  assert.match(start, /^1700000001\.\d\d$/);
  host.run(host.now() + 3000 * MS);
  const infos = allDomainInfo(host);
  const dom0 = infos.find((d) => d.domid === 0)!;
  const t = infos.find((d) => d.domid === hd.domid)!;
  assert.equal(t.startTimeSec, 1_700_000_001);
  assert.equal(dom0.startTimeSec, host.wallclockBaseSec);
  const now = host.epochSec();
  assert.ok(now > 1_700_000_004 && now < 1_700_000_005, String(now));
  // -s: the time of day of that clock (22:13:2x UTC), uptimes from it
  assert.match(formatUptime(infos, now, { short: true }), /^ 22:13:2\d up {2}0:00, Domain-0 \(0\)\n 22:13:2\d up {2}0:00, t \(\d+\)\n$/);
});
