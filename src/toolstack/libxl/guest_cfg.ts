// The guest config `xl create` reads (xl.cfg(5)), for a PV domain on a xensim host.
//
// Keys with xl's meaning and defaults (tools/xl/xl_parse.c, libxl_create.c setdefault):
//   name (required); type = "pv" (xl's prefix match: "p" is pv too; hvm and pvh are refused);
//   builder = "generic" (deprecated spelling of type); uuid (generated when absent);
//   memory / maxmem in MiB, 4..65536 (neither: 32 and 32, libxl's default; one: the other
//   follows it); vcpus (default 1) / maxvcpus (default vcpus), 1..MAX_VIRT_CPUS (32);
//   on_poweroff (destroy), on_reboot (restart), on_crash (destroy), on_watchdog and on_soft_reset
//   (checked, not modelled); kernel (any text, default "xenlinux": the model's kernel is
//   TypeScript); cmdline, or root and extra, combined as xl's parse_cmdline does;
//   max_event_channels (default 1023; 0 also means 1023, as in libxl).
//
// Keys of this project:
//   guest_width = 64 | 32     x86_64 (default) or i386 PAE
//   evtchn_abi = "fifo" | "2l"  the event-channel ABI the kernel uses (default fifo)
//   workload = "forkexec=4,mmapstress=1"   options for the guest kernel's workloads, appended to
//       the command line (a string of comma- or space-separated options, or a list of them);
//       names and values are checked against what workloadsFromCmdline reads.
//
// Unknown keys: xl ignores any key it does not read, so a misspelt `memroy = 512` silently gives a
// 32 MiB guest. Here a key within a typo or two of a key this file reads is an error ("did you
// mean"); a real xl key this model does not use (disk, vif, cpus, ...) and any other unknown key
// are warnings in `warnings`. Every error is a GuestCfgError: one line naming the file and key.

import { randomBytes as cryptoRandomBytes } from "node:crypto";
import { MAX_VIRT_CPUS } from "../../abi/xen.ts";
import { cfgNumber, cfgString, cfgStringList, parseXlCfg, type XlConfig, XlCfgError } from "./xlcfg.ts";

export type ShutdownAction = "destroy" | "restart" | "rename-restart" | "preserve" | "coredump-destroy" | "coredump-restart" | "soft-reset";

/** xl's action_on_shutdown_names: the only values on_* accept (compared exactly). */
export const SHUTDOWN_ACTIONS: readonly ShutdownAction[] = [
  "destroy",
  "restart",
  "rename-restart",
  "preserve",
  "coredump-destroy",
  "coredump-restart",
  "soft-reset",
];

export interface GuestConfig {
  name: string;
  type: "pv";
  memoryMiB: number;
  maxmemMiB: number;
  /** vCPUs online at boot. */
  vcpus: number;
  maxVcpus: number;
  /** Lower-case canonical form. */
  uuid: string;
  onPoweroff: ShutdownAction;
  onReboot: ShutdownAction;
  onCrash: ShutdownAction;
  kernel: string;
  /** xl's command line, then the workload options. */
  cmdline: string;
  maxEventChannels: number;
  width: 32 | 64;
  evtchnAbi: "fifo" | "2l";
  warnings: string[];
  /** The file and text it came from, when the toolstack keeps them (xl list -l reports which keys were set). */
  source?: { file: string; text: string };
}

export class GuestCfgError extends Error {
  override name = "GuestCfgError";
}

export interface GuestCfgOptions {
  /** Source of the bytes of a generated uuid (default: node:crypto). Inject it for determinism. */
  randomBytes?: (n: number) => Uint8Array;
}

// What workloadsFromCmdline (src/guest/workloads.ts) reads, and the values each takes.
type OptionCheck = (v: string) => boolean;
const uint = (max: number): OptionCheck => (v) => /^\d+$/.test(v) && Number(v) <= max;
const range = (min: number, max: number): OptionCheck => (v) => uint(max)(v) && Number(v) >= min;
const flag: OptionCheck = (v) => v === "0" || v === "1";
const tuple = (...parts: OptionCheck[]): OptionCheck => (v) => {
  const xs = v.split(":");
  return xs.length === parts.length && xs.every((x, i) => parts[i]!(x));
};
const PORT = range(1, 131071);
const DOMID = uint(0x7fef); // below DOMID_FIRST_RESERVED

export const WORKLOAD_OPTIONS: Readonly<Record<string, { check: OptionCheck; values: string }>> = {
  forkexec: { check: range(1, 64), values: "1..64 processes" },
  mmapstress: { check: flag, values: "0 or 1" },
  ipistorm: { check: flag, values: "0 or 1" },
  ipi_pingpong: { check: uint(1e9), values: "a count" },
  pingpong_rounds: { check: uint(1e12), values: "a count" },
  evtchn_listen: { check: PORT, values: "a port" },
  evtchn_connect: { check: tuple(DOMID, PORT), values: "DOMID:PORT" },
  fanin_listen: { check: tuple(PORT, range(1, 131071)), values: "BASE:COUNT" },
  fanin_connect: { check: tuple(DOMID, PORT, range(1, 131071)), values: "DOMID:BASE:COUNT" },
  fanin_flood: { check: flag, values: "0 or 1" },
  fanin_batch: { check: range(1, 1e6), values: "a count >= 1" },
  fanin_lateeoi: { check: flag, values: "0 or 1" },
  // a domain name as xl.cfg allows it, and one command-line word
  pingpong_with: {
    check: (v) => /^[^\s,=]+$/.test(v) && ![...v].some((c) => c < " " || c === "\x7f") && !/^\d+$/.test(v),
    values: "a domain name",
  },
  pingpong_backend: { check: flag, values: "0 or 1" },
};

// Keys xl_parse.c reads that this model has no use for: accepted with a warning.
const XL_KEYS_NOT_MODELLED = new Set(
  (
    "acpi acpi_firmware acpi_laptop_slate acpi_s3 acpi_s4 altp2m altp2mhvm apic bios bios_path_override boot " +
    "bootloader bootloader_args cap channel cpu_weight cpuid cpus cpus_soft device_model device_model_args " +
    "device_model_override device_model_stubdomain_override device_model_stubdomain_seclabel device_model_user " +
    "device_model_version device_tree disk display dm_restrict driver_domain dtdev e820_host extratime firmware " +
    "firmware_override gfx_passthru gic_version hap hdtype hpet init_seclabel iomem ioports irqs keymap latency " +
    "localtime max_grant_frames max_grant_version max_maptrack_frames mca_caps mmio_hole ms_vm_genid msr_relaxed " +
    "nestedhvm nographic nomigrate nx oos opengl p9 pae passthrough pci pci_msitranslate pci_permissive " +
    "pci_power_mgmt pci_seize period pool pvcalls pvshim pvshim_cmdline pvshim_extra pvshim_path ramdisk rdm " +
    "rdm_mem_boundary rtc_timeoffset sdl seclabel serial shadow_memory slice smbios_firmware soundhw spice " +
    "spice_clipboard_sharing spice_image_compression spice_streaming_video spiceagent_mouse spicedisable_ticketing " +
    "spicehost spicepasswd spiceport spicetls_port spiceusbredirection spicevdagent stdvga stubdomain_cmdline " +
    "stubdomain_kernel stubdomain_memory stubdomain_ramdisk tee timer_mode tsc_mode usb usbctrl usbdev usbdevice " +
    "usbversion vdispl vendor_device vfb vga videoram vif vif2 viridian vkb vkb_device vmtrace_buf_kb vnc " +
    "vncdisplay vnclisten vncpasswd vncunused vncviewer vnuma vpmu vpt_align vsnd vtpm vuart xauthority " +
    "xen_platform_pci xend_suspend_evtchn_compat"
  ).split(" "),
);

const KEYS = [
  "name", "type", "builder", "uuid", "memory", "maxmem", "vcpus", "maxvcpus",
  "on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset",
  "kernel", "cmdline", "root", "extra", "max_event_channels",
  "guest_width", "evtchn_abi", "workload",
];

const MAX_MEMORY_MIB = 65536;
const MIN_MEMORY_MIB = 4; // the builder needs room for the kernel image, p2m and pagetables
/** Ports the 2-level ABI can name: 64 words of 64 bits on x86_64, 32 of 32 on i386. */
const EVTCHN_2L_PORTS = { 64: 4096, 32: 1024 } as const;
/** start_info.cmd_line (MAX_GUEST_CMDLINE): libxc truncates the rest. */
const MAX_GUEST_CMDLINE = 1024;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** libuuid's uuid_parse accepts exactly this: 36 characters, hex digits and four dashes. */
export function isUuid(s: string): boolean {
  return UUID.test(s);
}

/** A random (version 4) uuid, as libxl_uuid_generate makes, from 16 bytes of `randomBytes`. */
export function generateUuid(randomBytes: (n: number) => Uint8Array): string {
  const b = Array.from(randomBytes(16).subarray(0, 16));
  if (b.length !== 16) throw new RangeError("randomBytes(16) returned fewer than 16 bytes");
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Optimal string alignment distance (a transposition counts as one edit). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

function closest(key: string, candidates: Iterable<string>): string | undefined {
  const limit = key.length >= 6 ? 2 : 1;
  let best: string | undefined;
  let bestD = limit + 1;
  for (const c of candidates) {
    const dist = editDistance(key, c);
    if (dist < bestD) {
      best = c;
      bestD = dist;
    }
  }
  return best;
}

/** Parses the text of an xl guest config; throws GuestCfgError with a one-line message. */
export function parseGuestConfig(text: string, file: string, opts: GuestCfgOptions = {}): GuestConfig {
  let cfg: XlConfig;
  try {
    cfg = parseXlCfg(text, file);
  } catch (e) {
    if (e instanceof XlCfgError) throw new GuestCfgError(e.message);
    throw e;
  }
  try {
    return interpret(cfg, file, opts);
  } catch (e) {
    // the getters' type errors (a list where a value belongs, a bad number) already name file and key
    if (e instanceof XlCfgError) throw new GuestCfgError(e.message);
    throw e;
  }
}

function interpret(cfg: XlConfig, file: string, opts: GuestCfgOptions): GuestConfig {
  const warnings: string[] = [];
  // typed on the declaration so that TypeScript narrows after a call
  const fail: (key: string, what: string) => never = (key, what) => {
    throw new GuestCfgError(`${file}: ${key}: ${what}`);
  };
  const warn = (key: string, what: string) => warnings.push(`${file}: ${key}: ${what}`);

  for (const key of cfg.entries.keys()) {
    if (KEYS.includes(key)) continue;
    if (XL_KEYS_NOT_MODELLED.has(key)) {
      warn(key, "an xl option xensim does not model; ignored");
      continue;
    }
    if (key in WORKLOAD_OPTIONS) fail(key, `a workload option, not a key: write workload = "${key}=..."`);
    const near = closest(key, KEYS);
    if (near !== undefined) fail(key, `unknown key (did you mean \`${near}'?)`);
    const nearXl = closest(key, XL_KEYS_NOT_MODELLED);
    warn(key, `unknown key; ignored, as xl does${nearXl ? ` (did you mean \`${nearXl}'?)` : ""}`);
  }

  const int = (key: string, min: number, max: number, unit = ""): number | undefined => {
    const v = cfgNumber(cfg, key);
    if (v !== undefined && (v < min || v > max)) fail(key, `must be ${min}..${max}${unit}, not ${v}`);
    return v;
  };

  // type: xl takes any prefix of "hvm", then of "pv", then of "pvh" (so "" means hvm)
  const typeOf = (key: string, names: [string, string][]): string | undefined => {
    const buf = cfgString(cfg, key);
    if (buf === undefined) return undefined;
    const hit = names.find(([n]) => n.startsWith(buf));
    if (!hit) return fail(key, `invalid domain type "${buf}" (xl accepts ${names.map(([n]) => n).join(", ")})`);
    return hit[1];
  };
  const type = typeOf("type", [["hvm", "hvm"], ["pv", "pv"], ["pvh", "pvh"]]);
  const builder = typeOf("builder", [["hvm", "hvm"], ["generic", "pv"]]);
  if (type !== undefined && builder !== undefined && type !== builder) fail("builder", 'contradicts "type"');
  const kind = type ?? builder ?? "pv";
  if (kind !== "pv") fail(type !== undefined ? "type" : "builder", `${kind} guests are not supported: xensim models PV guests only (type = "pv")`);

  const name = cfgString(cfg, "name");
  if (name === undefined) fail("name", "required (xl: Domain name must be specified.)");
  if (name === "") fail("name", "must not be empty");
  // xl takes an all-digit argument for a domid, so such a domain could never be named
  if (/^\d+$/.test(name)) fail("name", `"${name}" is all digits: xl would read it as a domain id`);
  if ([...name].some((c) => c < " " || c === "\x7f")) fail("name", "must not contain control characters");

  const uuidText = cfgString(cfg, "uuid");
  if (uuidText !== undefined && !isUuid(uuidText)) fail("uuid", `"${uuidText}" is not a UUID (xl: Failed to parse UUID); write 8-4-4-4-12 hex digits`);
  const uuid = uuidText?.toLowerCase() ?? generateUuid(opts.randomBytes ?? ((n) => cryptoRandomBytes(n)));

  const memory = int("memory", MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB");
  const maxmem = int("maxmem", MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB");
  // libxl: max_memkb defaults to 32 MiB, target to max; xl sets max to target when only memory is given
  const memoryMiB = memory ?? maxmem ?? 32;
  const maxmemMiB = maxmem ?? memoryMiB;
  // xl does not check this; xl.cfg(5) says maxmem must be >= memory
  if (maxmemMiB < memoryMiB) fail("maxmem", `${maxmemMiB} MiB is below memory (${memoryMiB} MiB); xl.cfg(5) requires maxmem >= memory`);

  const vcpus = int("vcpus", 1, MAX_VIRT_CPUS);
  const maxvcpus = int("maxvcpus", 1, MAX_VIRT_CPUS);
  // libxl brings up one vCPU when vcpus is unset, even if maxvcpus is larger
  const maxVcpus = maxvcpus ?? vcpus ?? 1;
  if (vcpus !== undefined && maxVcpus < vcpus) fail("maxvcpus", `${maxVcpus} is below vcpus (${vcpus}) (xl: maxvcpus < vcpus)`);

  const action = (key: string, dflt: ShutdownAction): ShutdownAction => {
    const v = cfgString(cfg, key) ?? dflt;
    const a = SHUTDOWN_ACTIONS.find((x) => x === v);
    if (a === undefined) return fail(key, `unknown action "${v}" (xl accepts ${SHUTDOWN_ACTIONS.join(", ")})`);
    // xl.cfg(5): soft-reset is for Xen-aware HVM guests; PV guests are not supported
    if (a === "soft-reset" && cfg.entries.has(key) && key !== "on_soft_reset") warn(key, "soft-reset is not supported for PV guests");
    return a;
  };
  const onPoweroff = action("on_poweroff", "destroy");
  const onReboot = action("on_reboot", "restart");
  const onCrash = action("on_crash", "destroy");
  action("on_watchdog", "destroy");
  action("on_soft_reset", "soft-reset");
  for (const key of ["on_watchdog", "on_soft_reset"]) if (cfg.entries.has(key)) warn(key, "checked but not modelled (xensim has no watchdog and no soft reset)");

  const kernel = cfgString(cfg, "kernel") ?? "xenlinux";

  const widthN = int("guest_width", 32, 64) ?? 64;
  if (widthN !== 32 && widthN !== 64) fail("guest_width", `must be 64 (x86_64) or 32 (i386 PAE), not ${widthN}`);
  const width = widthN as 32 | 64;
  const abi = cfgString(cfg, "evtchn_abi") ?? "fifo";
  if (abi !== "fifo" && abi !== "2l") fail("evtchn_abi", `must be "fifo" or "2l", not "${abi}"`);
  const evtchnAbi = abi as "fifo" | "2l";

  let maxEventChannels = int("max_event_channels", 0, 131071) ?? 1023;
  if (maxEventChannels === 0) maxEventChannels = 1023; // libxl treats 0 as unset
  if (evtchnAbi === "2l" && maxEventChannels > EVTCHN_2L_PORTS[width] - 1) {
    warn("max_event_channels", `the 2-level ABI of a ${width}-bit guest reaches only ports below ${EVTCHN_2L_PORTS[width]}`);
  }

  // xl's parse_cmdline: cmdline wins; otherwise "root=ROOT EXTRA", "root=ROOT" or EXTRA
  const cmd = cfgString(cfg, "cmdline");
  const root = cfgString(cfg, "root");
  const extra = cfgString(cfg, "extra");
  let base: string;
  if (cmd !== undefined) {
    base = cmd;
    if (root !== undefined || extra !== undefined) warn("cmdline", "ignoring root= and extra= in favour of cmdline= (as xl warns)");
  } else if (root !== undefined) base = extra !== undefined ? `root=${root} ${extra}` : `root=${root}`;
  else base = extra ?? "";

  const work = workloadOptions(cfg, vcpus ?? 1, fail);
  const baseKeys = new Set(base.split(/\s+/).map((t) => t.split("=")[0]));
  for (const w of work) {
    const k = w.split("=")[0]!;
    if (baseKeys.has(k)) warn("workload", `${k} is also on the command line; the kernel takes the later one, from workload`);
  }
  const cmdline = [base, ...work].filter((s) => s !== "").join(" ");
  if (Buffer.byteLength(cmdline) > MAX_GUEST_CMDLINE - 1) {
    warn("cmdline", `${Buffer.byteLength(cmdline)} bytes: the kernel sees only the first ${MAX_GUEST_CMDLINE - 1} (start_info.cmd_line)`);
  }

  return {
    name,
    type: "pv",
    memoryMiB,
    maxmemMiB,
    vcpus: vcpus ?? 1,
    maxVcpus,
    uuid,
    onPoweroff,
    onReboot,
    onCrash,
    kernel,
    cmdline,
    maxEventChannels,
    width,
    evtchnAbi,
    warnings,
  };
}

/** The workload key as kernel command-line options, checked; `name` alone means name=1. */
function workloadOptions(cfg: XlConfig, vcpus: number, fail: (key: string, what: string) => never): string[] {
  const v = cfg.entries.get("workload");
  if (v === undefined) return [];
  const items = Array.isArray(v) ? cfgStringList(cfg, "workload")! : [cfgString(cfg, "workload")!];
  const seen = new Map<string, string>();
  for (const tok of items.flatMap((s) => s.split(/[\s,]+/)).filter((t) => t !== "")) {
    const eq = tok.indexOf("=");
    const key = eq < 0 ? tok : tok.slice(0, eq);
    const value = eq < 0 ? "1" : tok.slice(eq + 1);
    const opt = WORKLOAD_OPTIONS[key];
    if (!opt) fail("workload", `unknown option "${key}" (the guest kernel reads ${Object.keys(WORKLOAD_OPTIONS).join(", ")})`);
    if (seen.has(key)) fail("workload", `${key} is given twice`);
    if (!opt.check(value)) fail("workload", `${key}=${value}: ${key} takes ${opt.values}`);
    seen.set(key, value);
  }
  // the kernel runs mmapstress inside the forkexec processes: alone it means one per vCPU, as scenarios do
  if (seen.get("mmapstress") === "1" && !seen.has("forkexec")) seen.set("forkexec", String(vcpus));
  return [...seen].map(([k, val]) => `${k}=${val}`);
}
