// The guest config of `xl create`: xl's keys and defaults (xl_parse.c, libxl_create.c), the
// project's keys, every error, and the example file.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  type GuestConfig,
  GuestCfgError,
  generateUuid,
  isUuid,
  parseGuestConfig,
  SHUTDOWN_ACTIONS,
  WORKLOAD_OPTIONS,
} from "../src/toolstack/libxl/guest_cfg.ts";
import { printXlCfg, type XlValue } from "../src/toolstack/libxl/xlcfg.ts";

const FILE = "g.cfg";
const BYTES = (n: number) => Uint8Array.from({ length: n }, (_, i) => i * 17);
const UUID_FROM_BYTES = "00112233-4455-4677-8899-aabbccddeeff"; // version 4, variant 10xx set

function parse(text: string, file = FILE): GuestConfig {
  return parseGuestConfig(text, file, { randomBytes: BYTES });
}

/** Parses text that must fail; returns the message, checked to be one line naming the file. */
function error(text: string, file = FILE): string {
  try {
    parse(text, file);
  } catch (e) {
    assert.ok(e instanceof GuestCfgError, `expected GuestCfgError, got ${String(e)}`);
    assert.ok(e.message.startsWith(`${file}:`), e.message);
    assert.ok(!e.message.includes("\n"), e.message);
    return e.message;
  }
  assert.fail(`parsed without error: ${JSON.stringify(text)}`);
}

describe("defaults", () => {
  test("only a name: xl's and libxl's defaults", () => {
    assert.deepEqual(parse('name = "g1"'), {
      name: "g1",
      type: "pv",
      memoryMiB: 32, // libxl__domain_build_info_setdefault: max_memkb = 32 MiB, target = max
      maxmemMiB: 32,
      vcpus: 1,
      maxVcpus: 1,
      uuid: UUID_FROM_BYTES,
      onPoweroff: "destroy",
      onReboot: "restart",
      onCrash: "destroy",
      kernel: "xenlinux",
      cmdline: "",
      maxEventChannels: 1023,
      width: 64,
      evtchnAbi: "fifo",
      warnings: [],
    });
  });

  test("memory and maxmem follow each other", () => {
    const m = (text: string) => {
      const g = parse(`name = "g"\n${text}`);
      return [g.memoryMiB, g.maxmemMiB];
    };
    assert.deepEqual(m("memory = 64"), [64, 64]); // xl: max_memkb = target_memkb
    assert.deepEqual(m("maxmem = 256"), [256, 256]); // libxl: target_memkb = max_memkb
    assert.deepEqual(m("memory = 64\nmaxmem = 256"), [64, 256]);
    assert.deepEqual(m('memory = "0x40"'), [64, 64]); // xl reads numbers with strtol(…, 0)
  });

  test("vcpus and maxvcpus", () => {
    const v = (text: string) => {
      const g = parse(`name = "g"\n${text}`);
      return [g.vcpus, g.maxVcpus];
    };
    assert.deepEqual(v("vcpus = 4"), [4, 4]);
    assert.deepEqual(v("maxvcpus = 4"), [1, 4]); // libxl brings up vCPU 0 only
    assert.deepEqual(v("vcpus = 2\nmaxvcpus = 8"), [2, 8]);
  });

  test("max_event_channels = 0 means the default, as in libxl", () => {
    assert.equal(parse('name = "g"\nmax_event_channels = 0').maxEventChannels, 1023);
    assert.equal(parse('name = "g"\nmax_event_channels = 4095').maxEventChannels, 4095);
  });

  test("a generated uuid is a version-4 uuid from the injected bytes; parsing is deterministic", () => {
    assert.equal(generateUuid(BYTES), UUID_FROM_BYTES);
    assert.equal(generateUuid(() => new Uint8Array(16).fill(0xff)), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    assert.equal(parse('name = "a"').uuid, parse('name = "b"').uuid);
    const real = parseGuestConfig('name = "a"', FILE).uuid; // node:crypto
    assert.match(real, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.throws(() => generateUuid(() => new Uint8Array(8)), RangeError);
  });
});

describe("the example file", () => {
  test("examples/guest.cfg parses to a 64 MiB, 2-vCPU guest with a forkexec workload", () => {
    const text = readFileSync(new URL("../examples/guest.cfg", import.meta.url), "utf8");
    const g = parseGuestConfig(text, "examples/guest.cfg", { randomBytes: BYTES });
    assert.deepEqual(g, {
      name: "guest1",
      type: "pv",
      memoryMiB: 64,
      maxmemMiB: 64,
      vcpus: 2,
      maxVcpus: 2,
      uuid: UUID_FROM_BYTES,
      onPoweroff: "destroy",
      onReboot: "restart",
      onCrash: "destroy",
      kernel: "xenlinux",
      cmdline: "loglevel=4 forkexec=2",
      maxEventChannels: 1023,
      width: 64,
      evtchnAbi: "fifo",
      warnings: [],
    });
  });
});

describe("uuid", () => {
  test("a valid uuid is kept, in lower case", () => {
    assert.equal(parse('name = "g"\nuuid = "5A6F4B8E-0D1C-4F2E-9A3B-7C8D9E0F1A2B"').uuid, "5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2b");
    assert.equal(parse('name = "g"\nuuid = "00000000-0000-0000-0000-000000000000"').uuid, "00000000-0000-0000-0000-000000000000");
  });

  test("anything uuid_parse refuses is an error", () => {
    for (const bad of [
      "",
      "5a6f4b8e0d1c4f2e9a3b7c8d9e0f1a2b",
      "5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2",
      "5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2bc",
      "{5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2b}",
      "5a6f4b8e-0d1c-4f2e-9a3b_7c8d9e0f1a2b",
      "ga6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2b",
      " 5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2",
    ]) {
      assert.equal(isUuid(bad), false, bad);
      assert.match(error(`name = "g"\nuuid = "${bad}"`), /^g\.cfg: uuid: ".*" is not a UUID \(xl: Failed to parse UUID\)/);
    }
  });
});

describe("errors", () => {
  test("name: required, not empty, not a domid, no control characters", () => {
    assert.equal(error("memory = 64"), "g.cfg: name: required (xl: Domain name must be specified.)");
    assert.equal(error('name = ""'), "g.cfg: name: must not be empty");
    assert.equal(error("name = 42"), 'g.cfg: name: "42" is all digits: xl would read it as a domain id');
    assert.equal(error('name = "a\\tb"'), "g.cfg: name: must not contain control characters");
    assert.equal(error('name = [ "a" ]'), "g.cfg:1: parameter `name' is a list but should be a single value");
  });

  test("type: pv only; xl's prefix matching; builder", () => {
    assert.equal(parse('name = "g"\ntype = "p"').type, "pv"); // strncmp(buf, "pv", strlen(buf))
    assert.equal(parse('name = "g"\nbuilder = "generic"').type, "pv");
    assert.equal(parse('name = "g"\ntype = "pv"\nbuilder = "gen"').type, "pv");
    const notPv = 'guests are not supported: xensim models PV guests only (type = "pv")';
    assert.equal(error('name = "g"\ntype = "hvm"'), `g.cfg: type: hvm ${notPv}`);
    assert.equal(error('name = "g"\ntype = "pvh"'), `g.cfg: type: pvh ${notPv}`);
    assert.equal(error('name = "g"\ntype = ""'), `g.cfg: type: hvm ${notPv}`); // "" is a prefix of "hvm"
    assert.equal(error('name = "g"\nbuilder = "hvm"'), `g.cfg: builder: hvm ${notPv}`);
    assert.equal(error('name = "g"\ntype = "xen"'), 'g.cfg: type: invalid domain type "xen" (xl accepts hvm, pv, pvh)');
    assert.equal(error('name = "g"\ntype = "pvx"'), 'g.cfg: type: invalid domain type "pvx" (xl accepts hvm, pv, pvh)');
    assert.equal(error('name = "g"\nbuilder = "linux"'), 'g.cfg: builder: invalid domain type "linux" (xl accepts hvm, generic)');
    assert.equal(error('name = "g"\ntype = "pv"\nbuilder = "hvm"'), 'g.cfg: builder: contradicts "type"');
  });

  test("memory and maxmem", () => {
    assert.equal(error('name = "g"\nmemory = 2'), "g.cfg: memory: must be 4..65536 MiB, not 2");
    assert.equal(error('name = "g"\nmemory = 100000'), "g.cfg: memory: must be 4..65536 MiB, not 100000");
    // libxlu has no negative NUMBER token, but strtol reads a quoted one
    assert.equal(error('name = "g"\nmaxmem = "-1"'), "g.cfg: maxmem: must be 4..65536 MiB, not -1");
    assert.equal(error('name = "g"\nmemory = 64\nmaxmem = 32'), "g.cfg: maxmem: 32 MiB is below memory (64 MiB); xl.cfg(5) requires maxmem >= memory");
    assert.equal(error('name = "g"\nmemory = "lots"'), "g.cfg:2: parameter `memory' is not a valid number");
    assert.equal(error('name = "g"\nmemory = 64\nmemory += "0"'), "g.cfg:3: can't use += with numbers for parameter `memory'");
  });

  test("vcpus and maxvcpus", () => {
    assert.equal(error('name = "g"\nvcpus = 0'), "g.cfg: vcpus: must be 1..32, not 0");
    assert.equal(error('name = "g"\nvcpus = 33'), "g.cfg: vcpus: must be 1..32, not 33");
    assert.equal(error('name = "g"\nmaxvcpus = 64'), "g.cfg: maxvcpus: must be 1..32, not 64");
    assert.equal(error('name = "g"\nvcpus = 4\nmaxvcpus = 2'), "g.cfg: maxvcpus: 2 is below vcpus (4) (xl: maxvcpus < vcpus)");
  });

  test("on_poweroff, on_reboot, on_crash, on_watchdog, on_soft_reset", () => {
    for (const key of ["on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"]) {
      assert.equal(
        error(`name = "g"\n${key} = "reboot"`),
        `g.cfg: ${key}: unknown action "reboot" (xl accepts destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset)`,
      );
      // xl compares with strcmp: no case folding
      assert.match(error(`name = "g"\n${key} = "Destroy"`), /unknown action "Destroy"/);
    }
  });

  test("guest_width, evtchn_abi, max_event_channels", () => {
    assert.equal(error('name = "g"\nguest_width = 48'), "g.cfg: guest_width: must be 64 (x86_64) or 32 (i386 PAE), not 48");
    assert.equal(error('name = "g"\nguest_width = 16'), "g.cfg: guest_width: must be 32..64, not 16");
    assert.equal(error('name = "g"\nevtchn_abi = "3l"'), 'g.cfg: evtchn_abi: must be "fifo" or "2l", not "3l"');
    assert.equal(error('name = "g"\nmax_event_channels = 131072'), "g.cfg: max_event_channels: must be 0..131071, not 131072");
    assert.equal(error('name = "g"\nmax_event_channels = "-5"'), "g.cfg: max_event_channels: must be 0..131071, not -5");
  });

  test("syntax errors are libxlu's, with the file and line", () => {
    assert.equal(error('name = "g"\nmemory = = 3'), "g.cfg:2: config parsing error near `=': syntax error, unexpected '=', expecting STRING or NUMBER or '['");
  });
});

describe("actions", () => {
  test("each of xl's actions is accepted for each event", () => {
    for (const a of SHUTDOWN_ACTIONS) {
      const g = parse(`name = "g"\non_poweroff = "${a}"\non_reboot = "${a}"\non_crash = "${a}"`);
      assert.deepEqual([g.onPoweroff, g.onReboot, g.onCrash], [a, a, a]);
    }
  });

  test("soft-reset on a PV guest, and the unmodelled events, are warnings", () => {
    const g = parse('name = "g"\non_crash = "soft-reset"\non_watchdog = "preserve"\non_soft_reset = "soft-reset"');
    assert.deepEqual(g.warnings, [
      "g.cfg: on_crash: soft-reset is not supported for PV guests",
      "g.cfg: on_watchdog: checked but not modelled (xensim has no watchdog and no soft reset)",
      "g.cfg: on_soft_reset: checked but not modelled (xensim has no watchdog and no soft reset)",
    ]);
  });
});

describe("command line", () => {
  const cmd = (text: string) => parse(`name = "g"\n${text}`);

  test("xl's parse_cmdline: cmdline, or root and extra", () => {
    assert.equal(cmd('extra = "console=hvc0"').cmdline, "console=hvc0");
    assert.equal(cmd('root = "/dev/xvda1"').cmdline, "root=/dev/xvda1");
    assert.equal(cmd('root = "/dev/xvda1"\nextra = "ro quiet"').cmdline, "root=/dev/xvda1 ro quiet");
    assert.equal(cmd('extra = "a"\nextra += " b"').cmdline, "a b");
    const g = cmd('cmdline = "init=/bin/sh"\nextra = "quiet"');
    assert.equal(g.cmdline, "init=/bin/sh");
    assert.deepEqual(g.warnings, ["g.cfg: cmdline: ignoring root= and extra= in favour of cmdline= (as xl warns)"]);
  });

  test("kernel is any string", () => {
    assert.equal(cmd('kernel = "/boot/vmlinuz-6.1"').kernel, "/boot/vmlinuz-6.1");
  });

  test("workload options follow the command line; string, list and bare flags", () => {
    assert.equal(cmd('extra = "quiet"\nworkload = "forkexec=4,mmapstress=1"').cmdline, "quiet forkexec=4 mmapstress=1");
    assert.equal(cmd('workload = "forkexec=4 ipistorm"').cmdline, "forkexec=4 ipistorm=1");
    assert.equal(cmd('workload = [ "forkexec=8", "ipistorm=1" ]').cmdline, "forkexec=8 ipistorm=1");
    assert.equal(cmd('workload = "ipi_pingpong=200, pingpong_rounds=5000"').cmdline, "ipi_pingpong=200 pingpong_rounds=5000");
    assert.equal(cmd('workload = "evtchn_connect=1:5,fanin_connect=1:10:64,fanin_batch=8"').cmdline, "evtchn_connect=1:5 fanin_connect=1:10:64 fanin_batch=8");
    assert.equal(cmd('workload = ""').cmdline, "");
  });

  test("mmapstress alone runs in one forkexec process per vCPU, as scenarios do", () => {
    assert.equal(cmd('vcpus = 3\nworkload = "mmapstress=1"').cmdline, "mmapstress=1 forkexec=3");
    assert.equal(cmd('vcpus = 3\nworkload = "mmapstress=0"').cmdline, "mmapstress=0");
  });

  test("workload errors", () => {
    assert.equal(
      error('name = "g"\nworkload = "forkbomb=1"'),
      'g.cfg: workload: unknown option "forkbomb" (the guest kernel reads forkexec, mmapstress, ipistorm, ipi_pingpong, pingpong_rounds, evtchn_listen, evtchn_connect, fanin_listen, fanin_connect, fanin_flood, fanin_batch, fanin_lateeoi, pingpong_with, pingpong_backend)',
    );
    assert.equal(error('name = "g"\nworkload = "forkexec=0"'), "g.cfg: workload: forkexec=0: forkexec takes 1..64 processes");
    assert.equal(error('name = "g"\nworkload = "forkexec=65"'), "g.cfg: workload: forkexec=65: forkexec takes 1..64 processes");
    assert.equal(error('name = "g"\nworkload = "forkexec=x"'), "g.cfg: workload: forkexec=x: forkexec takes 1..64 processes");
    assert.equal(error('name = "g"\nworkload = "ipistorm=2"'), "g.cfg: workload: ipistorm=2: ipistorm takes 0 or 1");
    assert.equal(error('name = "g"\nworkload = "evtchn_connect=5"'), "g.cfg: workload: evtchn_connect=5: evtchn_connect takes DOMID:PORT");
    assert.equal(error('name = "g"\nworkload = "forkexec=2,forkexec=3"'), "g.cfg: workload: forkexec is given twice");
    assert.equal(error('name = "g"\nworkload = [ [ "forkexec=2" ] ]'), "g.cfg:2: element 0 of parameter `workload' is a list but should be a single value");
    // a workload option written as a key of its own
    assert.equal(error('name = "g"\nforkexec = 4'), 'g.cfg: forkexec: a workload option, not a key: write workload = "forkexec=..."');
  });

  test("an option both on the command line and in workload: a warning, workload wins", () => {
    const g = cmd('extra = "forkexec=1"\nworkload = "forkexec=2"');
    assert.equal(g.cmdline, "forkexec=1 forkexec=2");
    assert.deepEqual(g.warnings, ["g.cfg: workload: forkexec is also on the command line; the kernel takes the later one, from workload"]);
  });

  test("a command line longer than start_info holds is a warning", () => {
    const g = cmd(`extra = "${"x".repeat(1024)}"`);
    assert.deepEqual(g.warnings, ["g.cfg: cmdline: 1024 bytes: the kernel sees only the first 1023 (start_info.cmd_line)"]);
    assert.deepEqual(cmd(`extra = "${"x".repeat(1023)}"`).warnings, []);
  });

  test("WORKLOAD_OPTIONS names exactly what workloadsFromCmdline reads", () => {
    const src = readFileSync(new URL("../src/guest/workloads.ts", import.meta.url), "utf8");
    const body = src.slice(src.indexOf("export function workloadsFromCmdline"));
    const read = new Set([...body.matchAll(/(?:options\.has|option|num)\("([a-z_]+)"/g)].map((m) => m[1]));
    assert.deepEqual([...read].sort(), Object.keys(WORKLOAD_OPTIONS).sort());
  });
});

describe("unknown keys", () => {
  test("xl keys the model does not use are warnings", () => {
    const g = parse('name = "g"\ndisk = [ "phy:/dev/vg/g,xvda,w" ]\nvif = [ "" ]\ncpus = "0-1"');
    assert.deepEqual(g.warnings, [
      "g.cfg: disk: an xl option xensim does not model; ignored",
      "g.cfg: vif: an xl option xensim does not model; ignored",
      "g.cfg: cpus: an xl option xensim does not model; ignored",
    ]);
  });

  test("a near miss of a key this file reads is an error", () => {
    assert.equal(error('name = "g"\nmemroy = 512'), "g.cfg: memroy: unknown key (did you mean `memory'?)");
    assert.equal(error('name = "g"\nvcpu = 2'), "g.cfg: vcpu: unknown key (did you mean `vcpus'?)");
    assert.equal(error('name = "g"\non_reboots = "destroy"'), "g.cfg: on_reboots: unknown key (did you mean `on_reboot'?)");
    assert.equal(error('name = "g"\nuid = "x"'), "g.cfg: uid: unknown key (did you mean `uuid'?)");
  });

  test("other unknown keys are warnings, as xl ignores them", () => {
    const g = parse('name = "g"\ndescription = "a test guest"\ndsik = [ "" ]');
    assert.deepEqual(g.warnings, [
      "g.cfg: description: unknown key; ignored, as xl does",
      "g.cfg: dsik: unknown key; ignored, as xl does (did you mean `disk'?)",
    ]);
  });
});

describe("round trip", () => {
  /** The config text a GuestConfig came from, through xlcfg's printer. */
  function toText(g: GuestConfig): string {
    const entries: [string, XlValue][] = [
      ["name", g.name],
      ["type", g.type],
      ["uuid", g.uuid],
      ["memory", g.memoryMiB],
      ["maxmem", g.maxmemMiB],
      ["vcpus", g.vcpus],
      ["maxvcpus", g.maxVcpus],
      ["on_poweroff", g.onPoweroff],
      ["on_reboot", g.onReboot],
      ["on_crash", g.onCrash],
      ["kernel", g.kernel],
      ["cmdline", g.cmdline],
      ["max_event_channels", g.maxEventChannels],
      ["guest_width", g.width],
      ["evtchn_abi", g.evtchnAbi],
    ];
    return printXlCfg({ entries: new Map(entries), appended: new Set() });
  }

  test("every value survives print and parse", () => {
    const action = fc.constantFrom(...SHUTDOWN_ACTIONS.filter((a) => a !== "soft-reset"));
    const guest = fc
      .record({
        name: fc.stringMatching(/^[A-Za-z][A-Za-z0-9_.-]{0,20}$/),
        uuid: fc.uuid().map((u) => u.toLowerCase()),
        memoryMiB: fc.integer({ min: 4, max: 65536 }),
        extraMem: fc.integer({ min: 0, max: 1024 }),
        vcpus: fc.integer({ min: 1, max: 32 }),
        extraVcpus: fc.integer({ min: 0, max: 31 }),
        onPoweroff: action,
        onReboot: action,
        onCrash: action,
        kernel: fc.string({ maxLength: 30 }).filter((s) => !s.includes("\0")),
        cmdline: fc.stringMatching(/^[a-z0-9=. ]{0,60}$/),
        maxEventChannels: fc.integer({ min: 1, max: 131071 }),
        width: fc.constantFrom(32 as const, 64 as const),
      })
      .map(
        (r): GuestConfig => ({
          name: r.name,
          type: "pv",
          memoryMiB: r.memoryMiB,
          maxmemMiB: Math.min(65536, r.memoryMiB + r.extraMem),
          vcpus: r.vcpus,
          maxVcpus: Math.min(32, r.vcpus + r.extraVcpus),
          uuid: r.uuid,
          onPoweroff: r.onPoweroff,
          onReboot: r.onReboot,
          onCrash: r.onCrash,
          kernel: r.kernel,
          cmdline: r.cmdline,
          maxEventChannels: r.maxEventChannels,
          width: r.width,
          evtchnAbi: "fifo",
          warnings: [],
        }),
      );
    fc.assert(
      fc.property(guest, (g) => {
        assert.deepEqual(parse(toText(g)), g);
      }),
      { numRuns: 300 },
    );
  });

  test("the 2-level ABI with more channels than it can name: the values stay, with a warning", () => {
    const g = parse('name = "g"\nevtchn_abi = "2l"\nguest_width = 32\nmax_event_channels = 2000');
    assert.equal(g.maxEventChannels, 2000);
    assert.equal(g.evtchnAbi, "2l");
    assert.equal(g.width, 32);
    assert.deepEqual(g.warnings, ["g.cfg: max_event_channels: the 2-level ABI of a 32-bit guest reaches only ports below 1024"]);
    assert.deepEqual(parse('name = "g"\nevtchn_abi = "2l"\nmax_event_channels = 4095').warnings, []);
  });
});
