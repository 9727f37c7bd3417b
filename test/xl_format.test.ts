// xl's output formats. Each golden line is written from the printf call in Xen 4.17's tools/xl
// named above it (xl_info.c, xl_vcpu.c, xl_utils.c) or Xen's console.c, with the widths counted
// out by hand.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  formatAffinity,
  formatDmesg,
  formatInfo,
  formatDryRun,
  formatList,
  formatListLong,
  formatUptime,
  type LibxlConfigView,
  libxlDomainConfig,
  yajlBeautify,
  formatVcpuList,
  SHUTDOWN_REASON_LETTERS,
  type XlDomainInfo,
  type XlHostInfo,
  type XlVcpuInfo,
} from "../src/toolstack/xl/xl_format.ts";

const UUID0 = "00000000-0000-0000-0000-000000000000";
const UUID1 = "5a6f4b8e-0d1c-4f2e-9a3b-7c8d9e0f1a2b";

function vcpu(over: Partial<XlVcpuInfo> = {}): XlVcpuInfo {
  return { id: 0, cpu: 0, online: true, running: false, blocked: true, timeNs: 0, hardAffinity: "all", softAffinity: "all", ...over };
}

function dom(over: Partial<XlDomainInfo> = {}): XlDomainInfo {
  return {
    name: "Domain-0",
    domid: 0,
    uuid: UUID0,
    memKb: 524288,
    maxMemKb: 524288,
    vcpusOnline: 2,
    running: false,
    blocked: false,
    paused: false,
    shutdown: false,
    shutdownReason: undefined,
    dying: false,
    cpuTimeNs: 0,
    startTimeSec: 0,
    vcpus: [],
    ...over,
  };
}

describe("xl list", () => {
  // printf("Name                                        ID   Mem VCPUs\tState\tTime(s)") then "\n"
  const HEAD = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n";

  test("a running dom0 and a blocked guest", () => {
    const out = formatList([
      dom({ running: true, cpuTimeNs: 12_345_000_000 }),
      dom({ name: "guest1", domid: 3, memKb: 65536, vcpusOnline: 1, blocked: true, cpuTimeNs: 250_000_000 }),
    ]);
    // "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f" then putchar('\n')
    assert.equal(
      out,
      HEAD +
        "Domain-0                                     0   512     2     r-----      12.3\n" +
        // 0.25 s is an exact tie: glibc rounds it to even, "0.2"
        "guest1                                       3    64     1     -b----       0.2\n",
    );
  });

  test("each shutdown reason letter, unknown and out-of-range reasons", () => {
    assert.equal(SHUTDOWN_REASON_LETTERS, "-rscwS");
    const rows = [0, 1, 2, 3, 4, 5, 6, undefined].map((r, i) =>
      formatList([dom({ name: `d${i}`, domid: i + 1, shutdown: true, shutdownReason: r })]).split("\n")[1],
    );
    // shutdown_reason_letters[shutdown_reason], '?' beyond it; libxl's "unknown" is -1: '?'
    assert.deepEqual(
      rows.map((l) => l!.slice(63, 69)),
      ["---s--", "---sr-", "---ss-", "---sc-", "---sw-", "---sS-", "---s?-", "---s?-"],
    );
  });

  test("crashed implies a shutdown for SHUTDOWN_crash; dying and paused", () => {
    const out = formatList([
      dom({ name: "crashy", domid: 7, crashed: true }),
      dom({ name: "going", domid: 8, dying: true, shutdown: true, shutdownReason: 0 }),
      dom({ name: "stopped", domid: 9, paused: true }),
    ]);
    assert.equal(
      out,
      HEAD +
        "crashy                                       7   512     2     ---sc-       0.0\n" +
        "going                                        8   512     2     ---s-d       0.0\n" +
        "stopped                                      9   512     2     --p---       0.0\n",
    );
  });

  test("long names push the columns, large memory and times widen their fields", () => {
    const long = "a-very-long-domain-name-that-goes-past-forty-chars";
    const out = formatList([
      dom({ name: long, domid: 32000, memKb: 2 * 1024 ** 3, vcpusOnline: 128, cpuTimeNs: 123_456_789_012_345 }),
    ]);
    // %-40s never truncates; %5lu of 2097152 MiB and %8.1f of 123456.8 s take what they need.
    // (float)123456789012345 ns is 123456788103168 ns: xl shows 123456.8, not 123456.8 by luck,
    // see the next test for a value where the cast changes the digit.
    assert.equal(out, `${HEAD}${long} 32000 2097152   128     ------  123456.8\n`);
  });

  test("times go through xl's (float) cast", () => {
    // 100049999999 ns as a float is 100050001920 ns: 100.1 s, where the exact value gives 100.0
    const line = formatList([dom({ cpuTimeNs: 100_049_999_999 })]).split("\n")[1];
    assert.equal(line, "Domain-0                                     0   512     2     ------     100.1");
  });

  test("names are padded in bytes, as C does", () => {
    const line = formatList([dom({ name: "café" })]).split("\n")[1]!;
    // "café" is 5 bytes: 35 spaces of padding, not 36
    assert.equal(line, `café${" ".repeat(35)}     0   512     2     ------       0.0`);
  });

  test("-v adds the UUID, the reason code and the security label", () => {
    const out = formatList(
      [dom({ uuid: UUID0, running: true }), dom({ name: "g", domid: 2, uuid: UUID1, shutdown: true, shutdownReason: 1 }), dom({ name: "u", domid: 3, uuid: UUID1, shutdown: true })],
      { verbose: true },
    );
    // header: printf("   UUID                            Reason-Code\tSecurity Label");
    // rows: printf(" " LIBXL_UUID_FMT), then " %8x" of the reason or " %8s" of "-", then " %16s" of "-"
    assert.equal(
      out,
      "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n" +
        `Domain-0                                     0   512     2     r-----       0.0 ${UUID0}        -                -\n` +
        `g                                            2   512     2     ---sr-       0.0 ${UUID1}        1                -\n` +
        // -1 through %8x
        `u                                            3   512     2     ---s?-       0.0 ${UUID1} ffffffff                -\n`,
    );
  });

  test("no domains: the header alone", () => {
    assert.equal(formatList([]), HEAD);
  });
});

describe("xl vcpu-list", () => {
  // printf("%-32s %5s %5s %5s %5s %9s %s\n", "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)")
  const HEAD = "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n";

  test("online running and blocked vCPUs, and an offline one", () => {
    const d = dom({
      name: "guest1",
      domid: 1,
      vcpus: [
        vcpu({ id: 0, cpu: 1, running: true, blocked: false, timeNs: 1_500_000_000, hardAffinity: "all", softAffinity: "all" }),
        vcpu({ id: 1, cpu: 0, blocked: true, timeNs: 350_000_000, hardAffinity: "0-1", softAffinity: "all" }),
        vcpu({ id: 2, cpu: 0, online: false, blocked: false, timeNs: 0, hardAffinity: "all", softAffinity: "none" }),
      ],
    });
    // "%-32s %5u %5u", then online "%5u %3c%c- " or offline "%5c %3c%cp " with '-', then "%9.1f  ",
    // then the two print_bitmap outputs joined by " / " and "\n". The VCPU and CPU fields touch:
    // no space between the two printf calls, so the rows sit one column left of the header.
    assert.equal(
      formatVcpuList([d]),
      HEAD +
        "guest1                               1     0    1   r--       1.5  all / all\n" +
        "guest1                               1     1    0   -b-       0.3  0-1 / all\n" +
        "guest1                               1     2    -   --p       0.0  all / none\n",
    );
  });

  test("several domains, in the order given; a domain without vCPUs prints nothing", () => {
    const out = formatVcpuList([
      dom({ vcpus: [vcpu({ id: 0, running: true, blocked: false, timeNs: 98_765_432_100_000 })] }),
      dom({ name: "empty", domid: 4 }),
      dom({ name: "guest-with-a-name-longer-than-32-chars", domid: 12, vcpus: [vcpu({ id: 31, cpu: 63 })] }),
    ]);
    assert.equal(
      out,
      HEAD +
        "Domain-0                             0     0    0   r--   98765.4  all / all\n" +
        "guest-with-a-name-longer-than-32-chars    12    31   63   -b-       0.0  all / all\n",
    );
  });
});

describe("formatAffinity (print_bitmap)", () => {
  test("all, none and ranges", () => {
    assert.equal(formatAffinity([0, 1, 2, 3], 4), "all");
    assert.equal(formatAffinity([0], 1), "all");
    assert.equal(formatAffinity([], 4), "none");
    assert.equal(formatAffinity([], 0), "none");
    assert.equal(formatAffinity([0, 1, 2, 3], 8), "0-3");
    assert.equal(formatAffinity([1, 2, 3], 4), "1-3");
    assert.equal(formatAffinity([2], 4), "2");
    assert.equal(formatAffinity([0, 2], 4), "0,2");
    assert.equal(formatAffinity([3, 0, 1, 5, 6, 7], 8), "0-1,3,5-7");
    assert.equal(formatAffinity([0, 1, 3], 4), "0-1,3");
  });

  test("only the first nrCpus bits count", () => {
    assert.equal(formatAffinity([0, 1, 2, 3, 9], 4), "all");
    assert.equal(formatAffinity([5, 6], 4), "none");
    assert.equal(formatAffinity([1, 1, 2], 3), "1-2");
  });

  test("rejects what is not a CPU number", () => {
    assert.throws(() => formatAffinity([-1], 4), RangeError);
    assert.throws(() => formatAffinity([1.5], 4), RangeError);
  });
});

function host(over: Partial<XlHostInfo> = {}): XlHostInfo {
  return {
    host: "xensim",
    release: "6.1.0-xensim",
    version: "#1 SMP",
    machine: "x86_64",
    nrCpus: 4,
    maxCpuId: 3,
    nrNodes: 1,
    coresPerSocket: 4,
    threadsPerCore: 1,
    cpuKhz: 2_400_050,
    hwCaps: [0xbfebfbff, 0x77fafbff, 0x2c100800, 0x00000121, 0x0000000f, 0x009c6fbf, 0, 0x00000100],
    virtCaps: { pv: true, hvm: false, directio: true, hap: false, shadow: false, iommuHapPtShare: false, vmtrace: false, vpmu: false, gnttabV1: true, gnttabV2: true },
    totalPages: 262_144 * 4,
    freePages: 200_000,
    outstandingPages: 1_000,
    sharingFreedPages: 0,
    sharingUsedFrames: 0,
    freeCpus: 0,
    xenMajor: 4,
    xenMinor: 17,
    xenExtra: ".0",
    xenCaps: "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64",
    xenScheduler: "credit2",
    xenPagesize: 4096,
    virtStart: 0xffff800000000000n,
    xenChangeset: "",
    xenCommandline: "placeholder dom0_mem=512M",
    ccCompiler: "gcc (Debian 12.2.0-14) 12.2.0",
    ccCompileBy: "pkg",
    ccCompileDomain: "example.org",
    ccCompileDate: "Tue Jan  2 00:00:00 UTC 2024",
    buildId: "0123456789abcdef",
    ...over,
  };
}

describe("xl info", () => {
  test("every line, in output_nodeinfo, output_physinfo, output_xeninfo order", () => {
    // each line is maybe_printf("<name padded to 23>: %...\n"); virt_caps is ":%s%s..." with each
    // cap bringing its own space; memory is pages / (1MiB / pagesize), free less the claims
    const expected = [
      "host                   : xensim",
      "release                : 6.1.0-xensim",
      "version                : #1 SMP",
      "machine                : x86_64",
      "nr_cpus                : 4",
      "max_cpu_id             : 3",
      "nr_nodes               : 1",
      "cores_per_socket       : 4",
      "threads_per_core       : 1",
      "cpu_mhz                : 2400.050", // "%d.%03d" of cpu_khz / 1000, cpu_khz % 1000
      "hw_caps                : bfebfbff:77fafbff:2c100800:00000121:0000000f:009c6fbf:00000000:00000100",
      "virt_caps              : pv pv_directio gnttab-v1 gnttab-v2",
      "total_memory           : 4096",
      "free_memory            : 777", // (200000 - 1000) / 256
      "sharing_freed_memory   : 0",
      "sharing_used_memory    : 0",
      "outstanding_claims     : 3", // 1000 / 256
      "free_cpus              : 0",
      "xen_major              : 4",
      "xen_minor              : 17",
      "xen_extra              : .0",
      "xen_version            : 4.17.0", // "%d.%d%s"
      "xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64",
      "xen_scheduler          : credit2",
      "xen_pagesize           : 4096",
      "platform_params        : virt_start=0xffff800000000000", // "virt_start=0x%"PRIx64
      "xen_changeset          : ",
      "xen_commandline        : placeholder dom0_mem=512M",
      "cc_compiler            : gcc (Debian 12.2.0-14) 12.2.0",
      "cc_compile_by          : pkg",
      "cc_compile_domain      : example.org",
      "cc_compile_date        : Tue Jan  2 00:00:00 UTC 2024",
      "build_id               : 0123456789abcdef",
      "xend_config_format     : 4", // a constant in print_info
    ];
    assert.equal(formatInfo(host()), `${expected.join("\n")}\n`);
  });

  test("virt_caps: hvm_directio needs hvm, pv_directio needs pv; none leaves the colon bare", () => {
    const caps = (c: Partial<XlHostInfo["virtCaps"]>) => {
      const all = { pv: false, hvm: false, directio: false, hap: false, shadow: false, iommuHapPtShare: false, vmtrace: false, vpmu: false, gnttabV1: false, gnttabV2: false };
      return formatInfo(host({ virtCaps: { ...all, ...c } }), { field: "virt_caps" });
    };
    assert.equal(caps({}), "");
    assert.equal(formatInfo(host({ virtCaps: { ...host().virtCaps, pv: false, directio: false, gnttabV1: false, gnttabV2: false } })).split("\n")[11], "virt_caps              :");
    assert.equal(
      formatInfo(host({ virtCaps: { pv: true, hvm: true, directio: true, hap: true, shadow: true, iommuHapPtShare: true, vmtrace: true, vpmu: true, gnttabV1: true, gnttabV2: true } })).split("\n")[11],
      "virt_caps              : pv hvm hvm_directio pv_directio hap shadow iommu_hap_pt_share vmtrace vpmu gnttab-v1 gnttab-v2",
    );
    // with caps the line reads ": hvm ...", so `xl info virt_caps` prints them; without, nothing
    assert.equal(caps({ hvm: true, directio: true }), "hvm hvm_directio\n");
  });

  test("`xl info FIELD` prints the values of lines whose name starts with FIELD", () => {
    // maybe_printf: strncmp prefix, then what follows ": " of the first ':'
    assert.equal(formatInfo(host(), { field: "xen_pagesize" }), "4096\n");
    assert.equal(formatInfo(host(), { field: "xen_m" }), "4\n17\n");
    assert.equal(formatInfo(host(), { field: "hw_caps" }), "bfebfbff:77fafbff:2c100800:00000121:0000000f:009c6fbf:00000000:00000100\n");
    assert.equal(formatInfo(host(), { field: "nosuch" }), "");
    assert.equal(formatInfo(host(), { field: "virt_caps" }), "pv pv_directio gnttab-v1 gnttab-v2\n");
  });

  test("claims larger than the free pages wrap as xl's uint64 does; small cpu_khz", () => {
    const out = formatInfo(host({ freePages: 10, outstandingPages: 266, cpuKhz: 999 }));
    assert.match(out, /^free_memory {12}: 72057594037927935$/m); // (2^64 - 256) / 256 = 2^56 - 1
    assert.match(out, /^cpu_mhz {16}: 0\.999$/m);
  });
});

describe("xl uptime", () => {
  const now = 1_700_000_000; // 22:13:20 UTC
  const doms = [
    dom({ name: "guest1", domid: 5, startTimeSec: now - 59 }),
    dom({ startTimeSec: now - 3 * 86400 - 4 * 3600 - 5 * 60 - 6.7 }),
    dom({ name: "guest2", domid: 6, startTimeSec: now - 86400 - 61.5 }),
    dom({ name: "guest3", domid: 7, startTimeSec: now - 36000 }),
  ];

  test("long form: dom0 first, days and H:MM:SS", () => {
    // printf("%-33s %4s %s\n", "Name", "ID", "Uptime"), then "%-33s %4d %s\n" per domain with
    // uptime_to_string's "%d days, %2d:%02d:%02d", "%d day, ..." or "%2d:%02d:%02d"
    assert.equal(
      formatUptime(doms, now),
      "Name                                ID Uptime\n" +
        "Domain-0                             0 3 days,  4:05:06\n" + // /proc/uptime: 277506.7 truncates
        "guest1                               5  0:00:59\n" +
        // start_time is read with strtoul: 1699913538.5 -> 1699913538, so 86462 s
        "guest2                               6 1 day,  0:01:02\n" +
        "guest3                               7 10:00:00\n",
    );
  });

  test("-s: time of day, uptime without seconds, name and id", () => {
    // printf(" %s up %s, %s (%d)\n") with strftime("%H:%M:%S") and "%d days, %2d:%02d" etc.
    assert.equal(
      formatUptime(doms, now, { short: true }),
      " 22:13:20 up 3 days,  4:05, Domain-0 (0)\n" +
        " 22:13:20 up  0:00, guest1 (5)\n" +
        " 22:13:20 up 1 day,  0:01, guest2 (6)\n" +
        " 22:13:20 up 10:00, guest3 (7)\n",
    );
    assert.equal(formatUptime([doms[0]!], now, { short: true, utcOffsetSec: 3600 }), " 23:13:20 up  0:00, guest1 (5)\n");
    assert.equal(formatUptime([doms[0]!], now, { short: true, utcOffsetSec: -23 * 3600 }), " 23:13:20 up  0:00, guest1 (5)\n");
  });

  test("a start time in the future wraps in 32 bits, and then xl's int arithmetic overflows", () => {
    const out = formatUptime([dom({ name: "skew", domid: 9, startTimeSec: now + 1 })], now);
    // uptime is uint32_t: 2^32 - 1 s, 49710 days; uptime_to_string's int day * 86400 overflows,
    // so the hours and minutes are what gcc's x86_64 build prints for it
    assert.equal(out.split("\n")[1], "skew                                 9 49710 days, 1193052:71582844:47");
    // the largest uptime before the overflow is still right
    const ok = formatUptime([dom({ name: "old", domid: 9, startTimeSec: now - (24855 * 86400 + 3661) })], now);
    assert.equal(ok.split("\n")[1], "old                                  9 24855 days,  1:01:01");
  });
});

describe("xl dmesg", () => {
  test("every line of Xen's gets the (XEN) prefix and no timestamp by default", () => {
    // printk_start_of_line: "(XEN) "; console_timestamps defaults to none in 4.17
    const out = formatDmesg([
      { timeNs: 0, text: "Xen version 4.17.0 (xensim)" },
      { timeNs: 5_000, text: "Created domain 1 (guest1): 2 vCPUs, 16384 pages, 64-bit" },
      { timeNs: 6_000, text: "" },
    ]);
    assert.equal(out, "(XEN) Xen version 4.17.0 (xensim)\n(XEN) Created domain 1 (guest1): 2 vCPUs, 16384 pages, 64-bit\n(XEN) \n");
  });

  test("guest lines keep guest_printk's (dN) prefix; embedded newlines start prefixed lines", () => {
    const out = formatDmesg([
      { timeNs: 1, text: "(d1) Linux version 6.1 (xensim)" },
      { timeNs: 2, text: "first\nsecond\n" },
      { timeNs: 3, text: "(d12) a\nb" },
    ]);
    assert.equal(out, "(d1) Linux version 6.1 (xensim)\n(XEN) first\n(XEN) second\n(d12) a\n(d12) b\n");
  });

  test("console_timestamps=boot: [%5lu.%06lu] after the prefix", () => {
    const out = formatDmesg(
      [
        { timeNs: 1_234_567_891, text: "one" },
        { timeNs: 123_456_000_000_000, text: "(d3) two" },
        { timeNs: 0, text: "zero" },
      ],
      { timestamps: "boot" },
    );
    assert.equal(out, "(XEN) [    1.234567] one\n(d3) [123456.000000] two\n(XEN) [0000000000000000] zero\n");
  });

  test("nothing logged: nothing printed", () => {
    assert.equal(formatDmesg([]), "");
  });
});

describe("libxl's JSON (yajl_gen with yajl_gen_beautify, as libxl_yajl_gen_alloc sets it up)", () => {
  // yajl_gen.c: map/array open print "{"/"[" then "\n"; a value after a key gets ": " and no
  // indent (INSERT_SEP / INSERT_WHITESPACE in state map_val); a close prints "\n", the indent of
  // its own depth, then "}"; a finished top-level value gets FINAL_NEWLINE. Indent: yajl's
  // default of four spaces (libxl sets only yajl_gen_beautify).
  test("nesting, separators and the empty-container quirk", () => {
    assert.equal(
      yajlBeautify({ a: 1, b: [2, 3], c: {}, d: [], e: { f: "x" } }),
      '{\n    "a": 1,\n    "b": [\n        2,\n        3\n    ],\n    "c": {\n\n    },\n    "d": [\n\n    ],\n    "e": {\n        "f": "x"\n    }\n}\n',
    );
    assert.equal(yajlBeautify([]), "[\n\n]\n");
    assert.equal(yajlBeautify(7), "7\n");
  });

  test("yajl_string_encode: quotes, backslash, short escapes, other control bytes as upper-case \\u00XX; '/' as it is", () => {
    assert.equal(yajlBeautify('a"b\\c\n\t\r\b\f\u0001\u001f/\u007f'), '"a\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001F/\u007f"\n');
  });
});

describe("xl list -l and xl create -n (libxl_domain_config_gen_json)", () => {
  const view = (over: Partial<LibxlConfigView> = {}): LibxlConfigView => ({
    name: "guest1",
    uuid: UUID1,
    domid: 0xffffffff,
    runHotplugScripts: true,
    maxVcpus: 2,
    availVcpus: [0, 1],
    maxMemKb: 65536,
    targetMemKb: 65536,
    videoMemKb: 0,
    sched: { sched: "credit2", weight: 256, cap: 0 },
    claimMode: true,
    kernel: undefined,
    cmdline: "root=/dev/xvda1",
    msrRelaxed: false,
    onPoweroff: "destroy",
    onReboot: "restart",
    onWatchdog: "destroy",
    onCrash: "destroy",
    onSoftReset: "soft-reset",
    ...over,
  });

  test("list -l: list_domains_details' array of printf_info_one_json objects, then puts' newline", () => {
    // Fields in libxl_types.idl order (domain_create_info, domain_build_info, domain_config);
    // gentypes.py's get_default_expr leaves out what equals its default: on_poweroff, on_watchdog
    // and on_crash at LIBXL_ACTION_ON_SHUTDOWN_DESTROY; structs and the "type.pv" union always print.
    const expected = `[
    {
        "domid": 3,
        "config": {
            "c_info": {
                "type": "pv",
                "name": "guest1",
                "domid": 4294967295,
                "uuid": "${UUID1}",
                "run_hotplug_scripts": "True"
            },
            "b_info": {
                "max_vcpus": 2,
                "avail_vcpus": [
                    0,
                    1
                ],
                "max_memkb": 65536,
                "target_memkb": 65536,
                "video_memkb": 0,
                "sched_params": {
                    "sched": "credit2",
                    "weight": 256,
                    "cap": 0
                },
                "claim_mode": "True",
                "cmdline": "root=/dev/xvda1",
                "type.pv": {

                },
                "arch_arm": {

                },
                "arch_x86": {
                    "msr_relaxed": "False"
                }
            },
            "on_reboot": "restart",
            "on_soft_reset": "soft_reset"
        }
    }
]

`;
    assert.equal(formatListLong([{ domid: 3, config: view() }]), expected);
  });

  test("list -l with no guest (dom0 has no saved config): an empty array", () => {
    assert.equal(formatListLong([]), "[\n\n]\n\n");
  });

  test("libxl_action_on_shutdown_to_string names; event_channels and kernel when the file set them", () => {
    const c = libxlDomainConfig(
      view({ onPoweroff: "preserve", onReboot: "rename-restart", onWatchdog: "coredump-restart", onCrash: "coredump-destroy", eventChannels: 4095, kernel: "/boot/vmlinuz" }),
    );
    assert.deepEqual(
      [c["on_poweroff"], c["on_reboot"], c["on_watchdog"], c["on_crash"], c["on_soft_reset"]],
      ["preserve", "restart_rename", "coredump_restart", "coredump_destroy", "soft_reset"],
    );
    const b = c["b_info"] as Record<string, unknown>;
    assert.deepEqual(Object.keys(b).slice(6, 10), ["claim_mode", "event_channels", "kernel", "cmdline"]);
  });

  test("create -n: the parsed config alone, no c_info.domid, empty sched_params, and fputs (one newline)", () => {
    const out = formatDryRun(
      view({ domid: undefined, availVcpus: [0], maxVcpus: 1, maxMemKb: 131072, targetMemKb: 131072, videoMemKb: undefined, sched: undefined, msrRelaxed: undefined, cmdline: undefined }),
    );
    assert.equal(
      out,
      `{
    "c_info": {
        "type": "pv",
        "name": "guest1",
        "uuid": "${UUID1}",
        "run_hotplug_scripts": "True"
    },
    "b_info": {
        "max_vcpus": 1,
        "avail_vcpus": [
            0
        ],
        "max_memkb": 131072,
        "target_memkb": 131072,
        "sched_params": {

        },
        "claim_mode": "True",
        "type.pv": {

        },
        "arch_arm": {

        },
        "arch_x86": {

        }
    },
    "on_reboot": "restart",
    "on_soft_reset": "soft_reset"
}
`,
    );
  });
});
