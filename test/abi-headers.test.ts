// Proves src/abi/xen.ts, src/abi/layout.ts and src/abi/xs_wire.ts against Xen 4.17's real public headers.
//
// The headers come from Debian's libxen-dev, unpacked by scripts/xen-tools.sh (test/xen_tools.ts
// finds them) under usr/include/xen. Without them these tests are skipped (with
// XENSIM_REQUIRE_XEN_TOOLS=1 they fail). We generate C that includes them and let gcc compute every number:
//
//  * an x86_64 program, compiled and run, prints JSON with
//      - every constant of xen.ts, read as Xen itself sees it (a translation unit with
//        `#define __XEN__`, so that hypervisor-internal values such as XEN_ERESTART and
//        EVTCHNOP_reset_cont are visible too);
//      - sizeof/offsetof of every layout.ts struct as a 64-bit PV guest sees it (xen.h);
//      - the same structs from foreign/x86_64.h and foreign/x86_32.h where those define them;
//  * an i386 translation unit, compiled with `gcc -m32 -ffreestanding -S` (no 32-bit libc is
//    needed: nothing is linked or run), whose `const int` array of sizeof/offsetof values is read
//    back from the assembly. This is the 32-bit PV guest's view of xen.h.
//
// foreign/x86_{32,64}.h only define start_info, vcpu_guest_context, vcpu_info, vcpu_time_info and
// shared_info (with their members' types). multicall_entry, mmuext_op, sched_poll, the vcpu_op and
// event-channel argument structs, callback_register and mmu_update have no foreign variant, so
// their i386 layout is checked only through gcc -m32.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { gunzipSync } from "node:zlib";
import * as layoutAbi from "../src/abi/layout.ts";
import {
  CALLBACK_REGISTER_32,
  CALLBACK_REGISTER_64,
  EVTCHN_FIFO_CONTROL_BLOCK,
  EVTCHN_OP,
  EVTCHN_OP_COMPAT,
  type GuestWidth,
  LAYOUT_X86_32,
  LAYOUT_X86_64,
  type Layout,
  layoutFor,
  MMU_UPDATE,
  SCHED_SHUTDOWN,
  VCPU_SET_PERIODIC_TIMER,
} from "../src/abi/layout.ts";
import * as xenAbi from "../src/abi/xen.ts";
import * as xsWireAbi from "../src/abi/xs_wire.ts";
import {
  encodeXsMsg,
  readXsHeader,
  takeXsMessages,
  xsStringList,
  xsText,
  XENSTORE_ABS_PATH_MAX,
  XENSTORE_CONNECTED,
  XENBUS_STATE,
  XENSTORE_DOMAIN_INTERFACE,
  XENSTORE_ERROR_COMM,
  XENSTORE_ERROR_NONE,
  XENSTORE_ERROR_PROTO,
  XENSTORE_ERROR_RINGIDX,
  XENSTORE_PAYLOAD_MAX,
  XENSTORE_RECONNECT,
  XENSTORE_REL_PATH_MAX,
  XENSTORE_RING_SIZE,
  XENSTORE_SERVER_FEATURE_ERROR,
  XENSTORE_SERVER_FEATURE_RECONNECTION,
  XS,
  XS_NAMES,
  XS_WATCH_PATH,
  XS_WATCH_TOKEN,
  XSD_ERRORS,
  XSD_SOCKMSG_SIZE,
  xsStrings,
} from "../src/abi/xs_wire.ts";
import {
  CALLBACKOP,
  CALLBACKTYPE,
  DOMID_COW,
  DOMID_FIRST_RESERVED,
  DOMID_IDLE,
  DOMID_INVALID,
  DOMID_IO,
  DOMID_SELF,
  DOMID_XEN,
  EVTCHN_FIFO,
  EVTCHNOP,
  EVTCHNSTAT,
  HYPERVISOR,
  MAX_VIRT_CPUS,
  MMU,
  MMUEXT,
  NR_VIRQS,
  RUNSTATE,
  SCHEDOP,
  SHUTDOWN,
  SIF_INITDOMAIN,
  SIF_PRIVILEGED,
  UVMF,
  VCPU_SSHOTTMR_future,
  VCPUOP,
  VGCF_in_kernel,
  VGCF_online,
  VIRQ,
  virqIsPerVcpu,
  XEN_ERRNO,
  XEN_PAGE_SHIFT,
  XEN_PAGE_SIZE,
  XENVER_version,
} from "../src/abi/xen.ts";
import { XEN_INCLUDE, XEN_ROOT, xenNeeds } from "./xen_tools.ts";

// ---------------------------------------------------------------------------------------------
// Where the headers are

const INCLUDE_DIR = XEN_INCLUDE;
const HEADER_DIR = join(INCLUDE_DIR, "xen");
const SETUP_HINT = `Xen 4.17 public headers not found in ${HEADER_DIR}: run \`bash scripts/xen-tools.sh\` or point XEN_ROOT at an unpacked libxen-dev.`;
/** The tests that read the headers (test/xen_tools.ts): `{ skip: skipHeaders() }` on each test or
 * suite, then `countXenSuite()` first in the suite's body or `countXenTest()` first in the test's. */
const HEADERS = xenNeeds("headers");
const skipHeaders = (): string | false => HEADERS.skip();
const countXenSuite = (): void => HEADERS.suite();
const countXenTest = (): void => HEADERS.test();

/** The guest interface version the probes are compiled for (Xen 4.17's latest). */
const INTERFACE_VERSION = "0x00040e00";

// ---------------------------------------------------------------------------------------------
// What is checked: groups of (TS value, C expression) pairs. The same list generates the C
// probes and the assertions, so the two cannot drift apart.

/**
 * Where a value is computed:
 *  xen    - x86_64 program, TU with `#define __XEN__` (constants, as the hypervisor sees them)
 *  guest  - x86_64 program, guest TU (64-bit guest layouts, foreign/*.h layouts)
 *  i386   - `gcc -m32` guest TU (32-bit guest layouts)
 */
type Unit = "xen" | "guest" | "i386";

interface FieldCheck {
  /** Names the value in assertion messages, e.g. "LAYOUT_X86_32.start_info.console_mfn". */
  readonly name: string;
  readonly ts: number;
  readonly unit: Unit;
  /** C expression over the headers' definitions. */
  readonly expr: string;
  /** Emit the probe only `#ifdef` this macro; an absent macro fails the check by name. */
  readonly ifdef?: string;
  /** Read the value from this key instead of probing `expr` (X-macro lists). */
  readonly key?: string;
}

interface CheckGroup {
  readonly suite: string;
  readonly title: string;
  readonly checks: readonly FieldCheck[];
}

const IDENT = /^[A-Za-z_]\w*$/;

function probeKey(c: FieldCheck): string {
  return c.key ?? `${c.unit}:${c.expr}`;
}

function constant(name: string, ts: number, expr: string): FieldCheck {
  return IDENT.test(expr) ? { name, ts, unit: "xen", expr, ifdef: expr } : { name, ts, unit: "xen", expr };
}

/** An `as const` object of xen.ts whose keys map onto C macros by a prefix. */
function prefixed(group: string, values: Readonly<Record<string, number>>, prefix: string): CheckGroup {
  return {
    suite: "constants (src/abi/xen.ts)",
    title: group,
    checks: Object.entries(values).map(([k, v]) => constant(`${group}.${k}`, v, `${prefix}${k}`)),
  };
}

// Xen's EVTCHN_FIFO_EVENT_WORDS_PER_PAGE and EVTCHN_FIFO_MAX_EVENT_ARRAY_PAGES are private
// (xen/include/xen/event_fifo.h) and derived there from public definitions exactly like this.
const FIFO_WORDS_PER_PAGE = "((1 << XEN_PAGE_SHIFT) / sizeof(event_word_t))";
const FIFO_DERIVED: Readonly<Record<string, string>> = {
  EVENT_WORDS_PER_PAGE: FIFO_WORDS_PER_PAGE,
  MAX_EVENT_ARRAY_PAGES: `(EVTCHN_FIFO_NR_CHANNELS / ${FIFO_WORDS_PER_PAGE})`,
};

/** Single constants of xen.ts: export name -> [value, C expression]. */
const SCALAR_CONSTANTS: Readonly<Record<string, readonly [number, string]>> = {
  DOMID_FIRST_RESERVED: [DOMID_FIRST_RESERVED, "DOMID_FIRST_RESERVED"],
  DOMID_SELF: [DOMID_SELF, "DOMID_SELF"],
  DOMID_IO: [DOMID_IO, "DOMID_IO"],
  DOMID_XEN: [DOMID_XEN, "DOMID_XEN"],
  DOMID_COW: [DOMID_COW, "DOMID_COW"],
  DOMID_INVALID: [DOMID_INVALID, "DOMID_INVALID"],
  DOMID_IDLE: [DOMID_IDLE, "DOMID_IDLE"],
  NR_VIRQS: [NR_VIRQS, "NR_VIRQS"],
  VCPU_SSHOTTMR_future: [VCPU_SSHOTTMR_future, "VCPU_SSHOTTMR_future"],
  VGCF_online: [VGCF_online, "VGCF_online"],
  VGCF_in_kernel: [VGCF_in_kernel, "VGCF_in_kernel"],
  SIF_PRIVILEGED: [SIF_PRIVILEGED, "SIF_PRIVILEGED"],
  SIF_INITDOMAIN: [SIF_INITDOMAIN, "SIF_INITDOMAIN"],
  XENVER_version: [XENVER_version, "XENVER_version"],
  // public/io/ring.h: "The PAGE_SIZE for ring protocols and hypercall interfaces is always 4K".
  XEN_PAGE_SHIFT: [XEN_PAGE_SHIFT, "XEN_PAGE_SHIFT"],
  XEN_PAGE_SIZE: [XEN_PAGE_SIZE, "(1 << XEN_PAGE_SHIFT)"],
  // MAX_VIRT_CPUS was renamed XEN_LEGACY_MAX_VCPUS: the length of shared_info.vcpu_info[].
  MAX_VIRT_CPUS: [MAX_VIRT_CPUS, "XEN_LEGACY_MAX_VCPUS"],
};

const CONSTANT_GROUPS: readonly CheckGroup[] = [
  prefixed("HYPERVISOR", HYPERVISOR, "__HYPERVISOR_"),
  {
    // public/errno.h is an X-macro list; EINTR and ERESTART are in it only under __XEN__
    // ("Internal only, should never be exposed to the guest").
    suite: "constants (src/abi/xen.ts)",
    title: "XEN_ERRNO",
    checks: Object.entries(XEN_ERRNO).map(([k, v]) => ({
      name: `XEN_ERRNO.${k}`,
      ts: v,
      unit: "xen",
      expr: `XEN_${k} (public/errno.h)`,
      key: `errno:${k}`,
    })),
  },
  prefixed("EVTCHNOP", EVTCHNOP, "EVTCHNOP_"),
  prefixed("EVTCHNSTAT", EVTCHNSTAT, "EVTCHNSTAT_"),
  prefixed("SCHEDOP", SCHEDOP, "SCHEDOP_"),
  prefixed("SHUTDOWN", SHUTDOWN, "SHUTDOWN_"),
  prefixed("VCPUOP", VCPUOP, "VCPUOP_"),
  prefixed("RUNSTATE", RUNSTATE, "RUNSTATE_"),
  prefixed("VIRQ", VIRQ, "VIRQ_"),
  prefixed("MMUEXT", MMUEXT, "MMUEXT_"),
  prefixed("MMU", MMU, "MMU_"),
  prefixed("UVMF", UVMF, "UVMF_"),
  prefixed("CALLBACKTYPE", CALLBACKTYPE, "CALLBACKTYPE_"),
  prefixed("CALLBACKOP", CALLBACKOP, "CALLBACKOP_"),
  {
    suite: "constants (src/abi/xen.ts)",
    title: "EVTCHN_FIFO",
    checks: Object.entries(EVTCHN_FIFO).map(([k, v]) =>
      constant(`EVTCHN_FIFO.${k}`, v, FIFO_DERIVED[k] ?? `EVTCHN_FIFO_${k}`),
    ),
  },
  {
    suite: "constants (src/abi/xen.ts)",
    title: "DOMID_*, NR_VIRQS, VGCF_*, SIF_*, page size and the other single constants",
    checks: Object.entries(SCALAR_CONSTANTS).map(([k, [v, expr]]) => constant(k, v, expr)),
  },
];

/** xen.ts exports checked elsewhere than in CONSTANT_GROUPS (or deliberately not at all). */
const XEN_TS_OTHER_EXPORTS: readonly string[] = ["virqIsPerVcpu"];

// --- struct layouts -------------------------------------------------------------------------

/** A C member designator for offsetof, the same for both widths or per width. */
type Designator = string | Readonly<Record<GuestWidth, string>>;

interface StructSpec {
  readonly cType: string;
  /** foreign/x86_32.h and foreign/x86_64.h define `${cType}_x86_32` / `${cType}_x86_64`. */
  readonly foreign: boolean;
  /** TS field -> C member designator where it is not the TS field name ("size" is sizeof). */
  readonly members?: Readonly<Record<string, Designator>>;
}

type LayoutStructKey = { [K in keyof Layout]: Layout[K] extends object ? K : never }[keyof Layout];
type LayoutScalarKey = Exclude<keyof Layout, LayoutStructKey>;

const LAYOUT_STRUCTS: Readonly<Record<LayoutStructKey, StructSpec>> = {
  vcpu_info: { cType: "struct vcpu_info", foreign: true },
  vcpu_time_info: { cType: "struct vcpu_time_info", foreign: true },
  shared_info: {
    cType: "struct shared_info",
    foreign: true,
    members: { arch_max_pfn: "arch.max_pfn", arch_pfn_to_mfn_frame_list_list: "arch.pfn_to_mfn_frame_list_list" },
  },
  start_info: {
    cType: "struct start_info",
    foreign: true,
    members: { console_mfn: "console.domU.mfn", console_evtchn: "console.domU.evtchn" },
  },
  multicall_entry: { cType: "struct multicall_entry", foreign: false },
  mmuext_op: { cType: "struct mmuext_op", foreign: false },
  sched_poll: { cType: "struct sched_poll", foreign: false },
  vcpu_set_singleshot_timer: { cType: "struct vcpu_set_singleshot_timer", foreign: false },
  vcpu_runstate_info: { cType: "struct vcpu_runstate_info", foreign: false },
  vcpu_guest_context: {
    cType: "struct vcpu_guest_context",
    foreign: true,
    members: {
      user_regs_ip: { 64: "user_regs.rip", 32: "user_regs.eip" },
      user_regs_sp: { 64: "user_regs.rsp", 32: "user_regs.esp" },
    },
  },
};

/** Layout's scalar fields -> C expressions that must all equal the TS value. */
const LAYOUT_SCALARS: Readonly<Record<LayoutScalarKey, readonly string[]>> = {
  width: ["(8 * sizeof(xen_ulong_t))"],
  ulong: ["sizeof(xen_ulong_t)", "sizeof(unsigned long)"],
  // EVTCHN_2L_NR_CHANNELS is sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64: one bit per port
  // in a two-level bitmap of (bits per xen_ulong_t)^2.
  nrEvtchn2L: ["EVTCHN_2L_NR_CHANNELS", "((sizeof(xen_ulong_t) * 8) * (sizeof(xen_ulong_t) * 8))"],
  // Linux's direct-map base, not a Xen definition: nothing in Xen's headers to check it against.
  PAGE_OFFSET: [],
};

interface Source {
  readonly label: string;
  readonly unit: Unit;
  readonly typeSuffix: string;
}

/** xen.h as a guest of this width sees it. */
function nativeSource(width: GuestWidth): Source {
  return width === 64
    ? { label: "xen.h, x86_64", unit: "guest", typeSuffix: "" }
    : { label: "xen.h, i386 (gcc -m32)", unit: "i386", typeSuffix: "" };
}

function sourcesFor(width: GuestWidth, foreign: boolean): Source[] {
  const native = nativeSource(width);
  if (!foreign) return [native];
  return [native, { label: `foreign/x86_${width}.h`, unit: "guest", typeSuffix: `_x86_${width}` }];
}

function designator(members: StructSpec["members"], field: string, width: GuestWidth): string {
  const d = members?.[field];
  if (d === undefined) return field;
  return typeof d === "string" ? d : d[width];
}

function structChecks(
  tsName: string,
  ts: Readonly<Record<string, number>>,
  spec: StructSpec,
  width: GuestWidth,
  source: Source,
): FieldCheck[] {
  const cType = `${spec.cType}${source.typeSuffix}`;
  return Object.entries(ts).map(([field, value]) => ({
    name: `${tsName}.${field}`,
    ts: value,
    unit: source.unit,
    expr:
      field === "size" ? `sizeof(${cType})` : `offsetof(${cType}, ${designator(spec.members, field, width)})`,
  }));
}

const WIDTHS: readonly GuestWidth[] = [64, 32];

function layoutGroups(): CheckGroup[] {
  const groups: CheckGroup[] = [];
  for (const width of WIDTHS) {
    const layout = layoutFor(width);
    const layoutName = width === 64 ? "LAYOUT_X86_64" : "LAYOUT_X86_32";
    const suite = `${layoutName} (src/abi/layout.ts, ${width === 64 ? "x86_64" : "i386"} guest)`;
    const native = nativeSource(width);
    const scalars = Object.entries(LAYOUT_SCALARS).filter(([, exprs]) => exprs.length > 0);
    groups.push({
      suite,
      title: `${scalars.map(([field]) => field).join(", ")} — ${native.label}`,
      checks: scalars.flatMap(([field, exprs]) =>
        exprs.map((expr) => ({
          name: `${layoutName}.${field}`,
          ts: layout[field as LayoutScalarKey],
          unit: native.unit,
          expr,
        })),
      ),
    });
    for (const [key, spec] of Object.entries(LAYOUT_STRUCTS)) {
      const ts: Readonly<Record<string, number>> = layout[key as LayoutStructKey];
      for (const source of sourcesFor(width, spec.foreign)) {
        groups.push({
          suite,
          title: `${key} — ${source.label}`,
          checks: structChecks(`${layoutName}.${key}`, ts, spec, width, source),
        });
      }
    }
  }
  return groups;
}

interface FixedStruct {
  readonly tsName: string;
  readonly ts: Readonly<Record<string, number>>;
  readonly spec: StructSpec;
  /** The guest widths this TS layout claims to describe. */
  readonly widths: readonly GuestWidth[];
}

const EVTCHN_STATUS_MEMBERS: Readonly<Record<string, string>> = {
  unbound_dom: "u.unbound.dom",
  interdomain_dom: "u.interdomain.dom",
  interdomain_port: "u.interdomain.port",
  pirq: "u.pirq",
  virq: "u.virq",
};

const FIXED_STRUCTS: readonly FixedStruct[] = [
  ...Object.entries(EVTCHN_OP).map(
    ([name, ts]): FixedStruct => ({
      tsName: `EVTCHN_OP.${name}`,
      ts,
      spec: {
        cType: `struct evtchn_${name}`,
        foreign: false,
        ...(name === "status" ? { members: EVTCHN_STATUS_MEMBERS } : {}),
      },
      widths: WIDTHS,
    }),
  ),
  {
    tsName: "EVTCHN_OP_COMPAT",
    ts: EVTCHN_OP_COMPAT,
    spec: { cType: "struct evtchn_op", foreign: false },
    widths: WIDTHS,
  },
  {
    tsName: "EVTCHN_FIFO_CONTROL_BLOCK",
    ts: EVTCHN_FIFO_CONTROL_BLOCK,
    spec: { cType: "struct evtchn_fifo_control_block", foreign: false },
    widths: WIDTHS,
  },
  {
    tsName: "VCPU_SET_PERIODIC_TIMER",
    ts: VCPU_SET_PERIODIC_TIMER,
    spec: { cType: "struct vcpu_set_periodic_timer", foreign: false },
    widths: WIDTHS,
  },
  {
    tsName: "SCHED_SHUTDOWN",
    ts: SCHED_SHUTDOWN,
    spec: { cType: "struct sched_shutdown", foreign: false },
    widths: WIDTHS,
  },
  {
    tsName: "MMU_UPDATE",
    ts: MMU_UPDATE,
    spec: { cType: "struct mmu_update", foreign: false },
    widths: WIDTHS,
  },
  // xen_callback_t is `unsigned long` on x86_64 but `struct { cs; eip; }` on i386.
  {
    tsName: "CALLBACK_REGISTER_64",
    ts: CALLBACK_REGISTER_64,
    spec: { cType: "struct callback_register", foreign: false },
    widths: [64],
  },
  {
    tsName: "CALLBACK_REGISTER_32",
    ts: CALLBACK_REGISTER_32,
    spec: { cType: "struct callback_register", foreign: false, members: { address_eip: "address.eip" } },
    widths: [32],
  },
];

function fixedGroups(): CheckGroup[] {
  return FIXED_STRUCTS.flatMap((f) =>
    f.widths.flatMap((width) =>
      sourcesFor(width, f.spec.foreign).map((source) => ({
        suite: "fixed layouts (src/abi/layout.ts)",
        title: `${f.tsName} — ${source.label}`,
        checks: structChecks(f.tsName, f.ts, f.spec, width, source),
      })),
    ),
  );
}

/** layout.ts exports checked elsewhere than through LAYOUT_STRUCTS / FIXED_STRUCTS. */
const LAYOUT_TS_OTHER_EXPORTS: readonly string[] = ["LAYOUT_X86_64", "LAYOUT_X86_32", "layoutFor", "EVTCHN_OP"];

// --- xenstore wire protocol (src/abi/xs_wire.ts against io/xs_wire.h) -------------------------
//
// Probed in the x86_64 guest TU, which also includes <errno.h> so that the header defines its
// xsd_errors[] table (it does so only when EINVAL is defined).

function guestCheck(name: string, ts: number, expr: string): FieldCheck {
  return { name, ts, unit: "guest", expr };
}

/** A C string as a char array of codes: probe keys are printed into JSON, so no quotes in them. */
function cChars(s: string): string {
  return `((const char[]){${[...s].map((c) => c.charCodeAt(0)).join(",")},0})`;
}

/** Single constants of xs_wire.ts: export name -> [value, C expression]. */
const XS_WIRE_SCALARS: Readonly<Record<string, readonly [number, string]>> = {
  XS_WATCH_PATH: [XS_WATCH_PATH, "XS_WATCH_PATH"],
  XS_WATCH_TOKEN: [XS_WATCH_TOKEN, "XS_WATCH_TOKEN"],
  XSD_SOCKMSG_SIZE: [XSD_SOCKMSG_SIZE, "sizeof(struct xsd_sockmsg)"],
  XENSTORE_PAYLOAD_MAX: [XENSTORE_PAYLOAD_MAX, "XENSTORE_PAYLOAD_MAX"],
  XENSTORE_ABS_PATH_MAX: [XENSTORE_ABS_PATH_MAX, "XENSTORE_ABS_PATH_MAX"],
  XENSTORE_REL_PATH_MAX: [XENSTORE_REL_PATH_MAX, "XENSTORE_REL_PATH_MAX"],
  XENSTORE_RING_SIZE: [XENSTORE_RING_SIZE, "XENSTORE_RING_SIZE"],
  XENSTORE_SERVER_FEATURE_RECONNECTION: [XENSTORE_SERVER_FEATURE_RECONNECTION, "XENSTORE_SERVER_FEATURE_RECONNECTION"],
  XENSTORE_SERVER_FEATURE_ERROR: [XENSTORE_SERVER_FEATURE_ERROR, "XENSTORE_SERVER_FEATURE_ERROR"],
  XENSTORE_CONNECTED: [XENSTORE_CONNECTED, "XENSTORE_CONNECTED"],
  XENSTORE_RECONNECT: [XENSTORE_RECONNECT, "XENSTORE_RECONNECT"],
  XENSTORE_ERROR_NONE: [XENSTORE_ERROR_NONE, "XENSTORE_ERROR_NONE"],
  XENSTORE_ERROR_COMM: [XENSTORE_ERROR_COMM, "XENSTORE_ERROR_COMM"],
  XENSTORE_ERROR_RINGIDX: [XENSTORE_ERROR_RINGIDX, "XENSTORE_ERROR_RINGIDX"],
  XENSTORE_ERROR_PROTO: [XENSTORE_ERROR_PROTO, "XENSTORE_ERROR_PROTO"],
};

/** struct xsd_sockmsg: the header readXsHeader and encodeXsMsg lay out (u32 little-endian each). */
const XSD_SOCKMSG_FIELDS = { type: 0, req_id: 4, tx_id: 8, len: 12 } as const;

const XS_WIRE_GROUPS: readonly CheckGroup[] = [
  {
    suite: "constants (src/abi/xs_wire.ts)",
    title: "XS (enum xsd_sockmsg_type)",
    checks: Object.entries(XS).map(([k, v]) => guestCheck(`XS.${k}`, v, `XS_${k}`)),
  },
  {
    // A static array of the header: each entry's string and errno, and their number.
    suite: "constants (src/abi/xs_wire.ts)",
    title: "XSD_ERRORS (xsd_errors[], in order)",
    checks: [
      guestCheck("XSD_ERRORS.length", XSD_ERRORS.length, "sizeof(xsd_errors) / sizeof(xsd_errors[0])"),
      ...XSD_ERRORS.flatMap((e, i) => [
        guestCheck(`XSD_ERRORS[${i}] string`, 1, `strcmp(xsd_errors[${i}].errstring, ${cChars(e)}) == 0`),
        guestCheck(`XSD_ERRORS[${i}] errnum`, 1, `xsd_errors[${i}].errnum == ${e}`),
      ]),
    ],
  },
  {
    suite: "constants (src/abi/xs_wire.ts)",
    title: "XS_WATCH_*, XSD_SOCKMSG_SIZE, XENSTORE_* limits, feature bits and states",
    checks: Object.entries(XS_WIRE_SCALARS).map(([k, [v, expr]]) => guestCheck(k, v, expr)),
  },
  {
    suite: "constants (src/abi/xs_wire.ts)",
    title: "XENBUS_STATE (enum xenbus_state, io/xenbus.h)",
    checks: Object.entries(XENBUS_STATE).map(([k, v]) => guestCheck(`XENBUS_STATE.${k}`, v, `XenbusState${k}`)),
  },
  {
    suite: "constants (src/abi/xs_wire.ts)",
    title: "XENSTORE_DOMAIN_INTERFACE (struct xenstore_domain_interface)",
    checks: Object.entries(XENSTORE_DOMAIN_INTERFACE).map(([k, v]) =>
      guestCheck(
        `XENSTORE_DOMAIN_INTERFACE.${k}`,
        v,
        k === "size" ? "sizeof(struct xenstore_domain_interface)" : `offsetof(struct xenstore_domain_interface, ${k})`,
      ),
    ),
  },
  {
    suite: "constants (src/abi/xs_wire.ts)",
    title: "struct xsd_sockmsg (readXsHeader, encodeXsMsg)",
    checks: Object.entries(XSD_SOCKMSG_FIELDS).map(([k, v]) => guestCheck(`xsd_sockmsg.${k}`, v, `offsetof(struct xsd_sockmsg, ${k})`)),
  },
];

/** xs_wire.ts exports checked elsewhere than in XS_WIRE_GROUPS' constants (by the derived tests). */
const XS_WIRE_OTHER_EXPORTS: readonly string[] = ["XS_NAMES", "XSD_ERRORS", "XENSTORE_DOMAIN_INTERFACE", "XENBUS_STATE", "XS", "readXsHeader", "encodeXsMsg", "xsStrings", "takeXsMessages", "xsText", "xsStringList"];

const GROUPS: readonly CheckGroup[] = [...CONSTANT_GROUPS, ...XS_WIRE_GROUPS, ...layoutGroups(), ...fixedGroups()];

// ---------------------------------------------------------------------------------------------
// The C programs

const PRELUDE = `#define __XEN_INTERFACE_VERSION__ ${INTERFACE_VERSION}
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/callback.h>
#include <xen/version.h>
#include <xen/io/ring.h> /* XEN_PAGE_SHIFT */
`;

function cString(s: string): string {
  return JSON.stringify(s); // keys are printable ASCII: a JSON string is a valid C string literal
}

function putCalls(checks: readonly FieldCheck[]): string {
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const c of checks) {
    const key = probeKey(c);
    if (c.key !== undefined || seen.has(key)) continue;
    seen.add(key);
    const put = `  xensim_put(${cString(key)}, (long long)(${c.expr}));`;
    lines.push(c.ifdef === undefined ? put : `#ifdef ${c.ifdef}\n${put}\n#endif`);
  }
  return lines.join("\n");
}

function nativeGuestSource(checks: readonly FieldCheck[]): string {
  return `${PRELUDE}#include <stdio.h>
#include <errno.h> /* before xs_wire.h: it defines xsd_errors[] only if EINVAL is defined */
#include <string.h>
#include <xen/io/xs_wire.h>
#include <xen/io/xenbus.h>
#undef xen_wc_sec_hi
#include <xen/foreign/x86_32.h>
#undef xen_wc_sec_hi
#include <xen/foreign/x86_64.h>

static int first = 1;
void xensim_put(const char *key, long long value) {
  printf("%s\\n\\"%s\\": %lld", first ? "{" : ",", key, value);
  first = 0;
}
void xensim_put_xen(void);

int main(void) {
${putCalls(checks)}
  xensim_put_xen();
  printf("\\n}\\n");
  return 0;
}
`;
}

function nativeXenSource(checks: readonly FieldCheck[]): string {
  // The public errno list with a key-stringifying X-macro; as the hypervisor is built.
  return `#define __XEN__ 1
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/callback.h>
#include <xen/version.h>
#include <xen/io/ring.h>

void xensim_put(const char *key, long long value);

void xensim_put_xen(void) {
${putCalls(checks)}
#define XEN_ERRNO(name, value) xensim_put("errno:" #name, value);
#include <xen/errno.h>
}
`;
}

function i386Source(checks: readonly FieldCheck[]): { source: string; keys: string[] } {
  const exprs = new Map(checks.map((c) => [probeKey(c), c.expr]));
  const rows = [...exprs].map(([k, expr]) => `  (int)(${expr}), /* ${k.replaceAll("*/", "* /")} */`);
  return { source: `${PRELUDE}\nconst int xensim_probe[] = {\n${rows.join("\n")}\n};\n`, keys: [...exprs.keys()] };
}

/** The `.long`/`.zero` data after the `xensim_probe:` label of gcc's assembly. */
function parseProbeArray(asm: string): number[] {
  const lines = asm.split("\n");
  const start = lines.findIndex((l) => l.trim() === "xensim_probe:");
  assert.notEqual(start, -1, "xensim_probe not found in gcc -m32 -S output");
  const values: number[] = [];
  for (const line of lines.slice(start + 1)) {
    const m = /^\s*\.(long|zero)\s+(-?\d+)\s*$/.exec(line);
    if (m === null) break;
    const n = Number(m[2]);
    if (m[1] === "long") values.push(n);
    else values.push(...new Array<number>(n / 4).fill(0));
  }
  return values;
}

function gcc(args: readonly string[], cwd: string): string {
  try {
    return execFileSync("gcc", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    const stderr = typeof e === "object" && e !== null && "stderr" in e ? String(e.stderr) : "";
    throw new Error(`gcc ${args.join(" ")} failed:\n${stderr || String(e)}`);
  }
}

function isNumberRecord(v: unknown): v is Record<string, number> {
  return typeof v === "object" && v !== null && Object.values(v).every((x) => typeof x === "number");
}

let workDir: string | undefined;
let built: { readonly values: ReadonlyMap<string, number> } | { readonly error: Error } | undefined;

/** Fails when the headers are missing (the tests that call it are skipped then, unless XENSIM_REQUIRE_XEN_TOOLS=1). */
function requireHeaders(): void {
  if (!existsSync(join(HEADER_DIR, "xen.h"))) throw new Error(SETUP_HINT);
}

function buildOracle(): Map<string, number> {
  requireHeaders();
  if (process.arch !== "x64") throw new Error(`these probes need an x86_64 host gcc, not ${process.arch}`);
  const all = GROUPS.flatMap((g) => g.checks);
  workDir = mkdtempSync(join(tmpdir(), "xensim-abi-"));
  const dir = workDir;
  const common = ["-std=gnu11", "-O0", "-Wall", `-I${INCLUDE_DIR}`];

  writeFileSync(join(dir, "guest.c"), nativeGuestSource(all.filter((c) => c.unit === "guest")));
  writeFileSync(join(dir, "xen.c"), nativeXenSource(all.filter((c) => c.unit === "xen")));
  gcc([...common, "-o", "probe64", "guest.c", "xen.c"], dir);
  const out = execFileSync(join(dir, "probe64"), { encoding: "utf8" });
  const parsed: unknown = JSON.parse(out);
  assert.ok(isNumberRecord(parsed), `probe64 printed something other than a JSON object of numbers:\n${out}`);
  const values = new Map(Object.entries(parsed));

  const i386 = i386Source(all.filter((c) => c.unit === "i386"));
  writeFileSync(join(dir, "i386.c"), i386.source);
  gcc([...common, "-m32", "-ffreestanding", "-S", "-o", "i386.s", "i386.c"], dir);
  const data = parseProbeArray(readFileSync(join(dir, "i386.s"), "utf8"));
  assert.equal(data.length, i386.keys.length, "gcc -m32: probe array length differs from the number of probes");
  for (const [i, k] of i386.keys.entries()) values.set(k, data[i]!);
  return values;
}

/** The header-computed values, compiled once (lazily, by the first test that needs them). */
function oracle(): ReadonlyMap<string, number> {
  if (built === undefined) {
    try {
      built = { values: buildOracle() };
    } catch (e) {
      built = { error: e instanceof Error ? e : new Error(String(e)) };
    }
  }
  if ("error" in built) throw built.error;
  return built.values;
}

after(() => {
  if (workDir !== undefined) rmSync(workDir, { recursive: true, force: true });
});

function assertGroup(group: CheckGroup): void {
  const values = oracle();
  const problems: string[] = [];
  for (const c of group.checks) {
    const header = values.get(probeKey(c));
    if (header === undefined) problems.push(`${c.name}: ${c.expr} is not defined by the headers (TS has ${c.ts})`);
    else if (header !== c.ts) problems.push(`${c.name}: TS has ${c.ts}, headers say ${header} (${c.expr})`);
  }
  assert.deepEqual(problems, [], `${group.title}:\n  ${problems.join("\n  ")}`);
}

// ---------------------------------------------------------------------------------------------
// The tests

test("Xen 4.17 public headers are installed", { skip: skipHeaders() }, () => {
  countXenTest();
  assert.ok(existsSync(join(HEADER_DIR, "xen.h")), SETUP_HINT);
  for (const h of ["foreign/x86_32.h", "foreign/x86_64.h", "errno.h", "event_channel.h", "vcpu.h"]) {
    assert.ok(existsSync(join(HEADER_DIR, h)), `${h} missing from ${HEADER_DIR}. ${SETUP_HINT}`);
  }
  const changelog = join(XEN_ROOT, "usr", "share", "doc", "libxen-dev", "changelog.Debian.gz");
  assert.ok(existsSync(changelog), `${changelog} missing. ${SETUP_HINT}`);
  const first = gunzipSync(readFileSync(changelog)).toString("utf8").split("\n")[0] ?? "";
  assert.match(first, /^xen \(4\.17\./, `libxen-dev is not Xen 4.17: ${first}`);
});

const suites = new Map<string, CheckGroup[]>();
for (const g of GROUPS) suites.set(g.suite, [...(suites.get(g.suite) ?? []), g]);
for (const [suite, groups] of suites) {
  describe(suite, { skip: skipHeaders() }, () => {
    countXenSuite();
    for (const g of groups) test(g.title, () => assertGroup(g));
  });
}

describe("derived facts", () => {
  test("virqIsPerVcpu matches the V./G. annotations of xen.h's VIRQ list", { skip: skipHeaders() }, () => {
    countXenTest();
    requireHeaders();
    const text = readFileSync(join(HEADER_DIR, "xen.h"), "utf8");
    const annotated = [...text.matchAll(/^#define VIRQ_(\w+)\s+(\d+)\s*\/\*\s*([VG])\./gm)];
    assert.ok(annotated.length >= 10, "could not parse the VIRQ list of xen.h");
    for (const [, name, num, kind] of annotated) {
      assert.equal(virqIsPerVcpu(Number(num)), kind === "V", `virqIsPerVcpu(VIRQ_${name} = ${num})`);
    }
  });

  test("shared_info.vcpu_info[] has MAX_VIRT_CPUS entries of vcpu_info", () => {
    for (const l of [LAYOUT_X86_64, LAYOUT_X86_32]) {
      assert.equal(l.shared_info.evtchn_pending - l.shared_info.vcpu_info, MAX_VIRT_CPUS * l.vcpu_info.size);
    }
  });

  test("layoutFor picks the layout of each width", () => {
    assert.equal(layoutFor(64), LAYOUT_X86_64);
    assert.equal(layoutFor(32), LAYOUT_X86_32);
    for (const w of WIDTHS) assert.equal(layoutFor(w).width, w);
  });
});

describe("derived facts (src/abi/xs_wire.ts)", () => {
  test("XS_NAMES names every message type of XS", () => {
    for (const [k, v] of Object.entries(XS)) {
      if (k === "TYPE_COUNT" || k === "INVALID") assert.equal(XS_NAMES[v], undefined, k);
      else assert.equal(XS_NAMES[v], k);
    }
  });

  test("encodeXsMsg and readXsHeader put the fields where struct xsd_sockmsg has them, little-endian", () => {
    const payload = xsStrings("/a", "b");
    assert.deepEqual([...payload], [0x2f, 0x61, 0, 0x62, 0]);
    const m = encodeXsMsg(XS.WRITE, 0x01020304, 0xa0b0c0d0, payload);
    assert.equal(m.length, XSD_SOCKMSG_SIZE + payload.length);
    const dv = new DataView(m.buffer, m.byteOffset, m.length);
    assert.equal(dv.getUint32(XSD_SOCKMSG_FIELDS.type, true), XS.WRITE);
    assert.equal(dv.getUint32(XSD_SOCKMSG_FIELDS.req_id, true), 0x01020304);
    assert.equal(dv.getUint32(XSD_SOCKMSG_FIELDS.tx_id, true), 0xa0b0c0d0);
    assert.equal(dv.getUint32(XSD_SOCKMSG_FIELDS.len, true), payload.length);
    assert.deepEqual([...m.subarray(XSD_SOCKMSG_SIZE)], [...payload]);
    assert.deepEqual(readXsHeader(m), { type: XS.WRITE, reqId: 0x01020304, txId: 0xa0b0c0d0, len: payload.length });
    const shifted = new Uint8Array(3 + m.length);
    shifted.set(m, 3);
    assert.deepEqual(readXsHeader(shifted, 3), readXsHeader(m));
  });

  test("takeXsMessages splits whole messages by xsd_sockmsg.len and refuses lengths over XENSTORE_PAYLOAD_MAX", () => {
    const a = encodeXsMsg(XS.READ, 1, 0, xsStrings("/a"));
    const b = encodeXsMsg(XS.DIRECTORY, 2, 7, xsStrings("x", "y"));
    const buf = new Uint8Array(a.length + b.length - 1);
    buf.set(a);
    buf.set(b.subarray(0, b.length - 1), a.length);
    const seen: string[] = [];
    const used = takeXsMessages(buf, (h, p) => seen.push(`${h.type}/${h.reqId}/${h.txId}:${xsStringList(p).join(",")}`));
    assert.equal(used, a.length, "the incomplete second message is left");
    assert.deepEqual(seen, [`${XS.READ}/1/0:/a`]);
    assert.equal(takeXsMessages(b, () => {}), b.length);
    assert.equal(xsText(xsStrings("v")), "v\0");
    const huge = encodeXsMsg(XS.WRITE, 3, 0, new Uint8Array(0));
    new DataView(huge.buffer).setUint32(XSD_SOCKMSG_FIELDS.len, XENSTORE_PAYLOAD_MAX + 1, true);
    assert.equal(takeXsMessages(huge, () => {}), -1);
  });
});

describe("coverage", () => {
  test("every runtime export of src/abi/xen.ts is checked", () => {
    // The titles of the grouped constants are the names of their `as const` objects.
    const covered = new Set([
      ...CONSTANT_GROUPS.map((g) => g.title),
      ...Object.keys(SCALAR_CONSTANTS),
      ...XEN_TS_OTHER_EXPORTS,
    ]);
    const unchecked = Object.keys(xenAbi).filter((name) => !covered.has(name));
    assert.deepEqual(unchecked, [], "exports of xen.ts with no header check");
  });

  test("every runtime export of src/abi/xs_wire.ts is checked", () => {
    const covered = new Set([...Object.keys(XS_WIRE_SCALARS), ...XS_WIRE_OTHER_EXPORTS]);
    const unchecked = Object.keys(xsWireAbi).filter((name) => !covered.has(name));
    assert.deepEqual(unchecked, [], "exports of xs_wire.ts with no header check");
  });

  test("every runtime export of src/abi/layout.ts is checked", () => {
    const covered = new Set([...FIXED_STRUCTS.map((f) => f.tsName), ...LAYOUT_TS_OTHER_EXPORTS]);
    const unchecked = Object.keys(layoutAbi).filter((name) => !covered.has(name));
    assert.deepEqual(unchecked, [], "exports of layout.ts with no header check");
  });
});

// ---------------------------------------------------------------------------------------------
// vcpu_guest_context in full (src/abi/vcpu_context.ts) and the toolstack's interface
// (src/abi/domctl.ts: public/domctl.h and public/sysctl.h). Those two headers are for tools only
// (`__XEN_TOOLS__`), so this block has its own probe, built the same two ways as the one above:
// an x86_64 program (constants, x86_64 layouts, foreign/x86_{32,64}.h) and a `gcc -m32 -S` unit
// (i386 layouts, and the domctl/sysctl structs again: uint64_aligned_t and 64-bit handles make
// them the same for 32- and 64-bit toolstacks).

import * as domctlAbi from "../src/abi/domctl.ts";
import * as vcpuContextAbi from "../src/abi/vcpu_context.ts";

/** [TS name, value, C expression], probed in the x86_64 tools TU. */
type ToolsCheck = readonly [string, number, string];

function toolsPrefixed(group: string, values: Readonly<Record<string, number>>, prefix: string): ToolsCheck[] {
  return Object.entries(values).map(([k, v]) => [`${group}.${k}`, v, `${prefix}${k}`] as const);
}

/** offsetof/sizeof checks of a layout record against `cType`, with C designators where names differ. */
function toolsStruct(
  tsName: string,
  ts: Readonly<Record<string, number>>,
  cType: string,
  members: Readonly<Record<string, string>> = {},
): ToolsCheck[] {
  return Object.entries(ts).map(
    ([k, v]) => [`${tsName}.${k}`, v, k === "size" ? `sizeof(${cType})` : `offsetof(${cType}, ${members[k] ?? k})`] as const,
  );
}

const VC = vcpuContextAbi;
const DC = domctlAbi;
const DOMCTL_STRUCTS: ReadonlyArray<readonly [string, Readonly<Record<string, number>>, string, Readonly<Record<string, string>>?]> = [
  ["XEN_DOMCTL_HDR", DC.XEN_DOMCTL_HDR, "struct xen_domctl"],
  ["XEN_SYSCTL_HDR", DC.XEN_SYSCTL_HDR, "struct xen_sysctl"],
  [
    "XEN_DOMCTL_CREATEDOMAIN",
    DC.XEN_DOMCTL_CREATEDOMAIN,
    "struct xen_domctl_createdomain",
    { arch_emulation_flags: "arch.emulation_flags", arch_misc_flags: "arch.misc_flags" },
  ],
  [
    "XEN_DOMCTL_GETDOMAININFO",
    DC.XEN_DOMCTL_GETDOMAININFO,
    "struct xen_domctl_getdomaininfo",
    { arch_emulation_flags: "arch_config.emulation_flags", arch_misc_flags: "arch_config.misc_flags" },
  ],
  ["XEN_DOMCTL_TSC_INFO", DC.XEN_DOMCTL_TSC_INFO, "struct xen_domctl_tsc_info"],
  ["XEN_DOMCTL_VCPUCONTEXT", DC.XEN_DOMCTL_VCPUCONTEXT, "struct xen_domctl_vcpucontext"],
  ["XEN_DOMCTL_MAX_VCPUS", DC.XEN_DOMCTL_MAX_VCPUS, "struct xen_domctl_max_vcpus"],
  ["XEN_DOMCTL_ADDRESS_SIZE", DC.XEN_DOMCTL_ADDRESS_SIZE, "struct xen_domctl_address_size", { address_size: "size" }],
  ["XEN_DOMCTL_GETPAGEFRAMEINFO3", DC.XEN_DOMCTL_GETPAGEFRAMEINFO3, "struct xen_domctl_getpageframeinfo3"],
  ["XEN_DOMCTL_SET_VIRQ_HANDLER", DC.XEN_DOMCTL_SET_VIRQ_HANDLER, "struct xen_domctl_set_virq_handler"],
  ["XEN_SYSCTL_READCONSOLE", DC.XEN_SYSCTL_READCONSOLE, "struct xen_sysctl_readconsole"],
  ["XEN_SYSCTL_DEBUG_KEYS", DC.XEN_SYSCTL_DEBUG_KEYS, "struct xen_sysctl_debug_keys"],
  ["XEN_SYSCTL_GETDOMAININFOLIST", DC.XEN_SYSCTL_GETDOMAININFOLIST, "struct xen_sysctl_getdomaininfolist"],
  ["XEN_SYSCTL_PHYSINFO", DC.XEN_SYSCTL_PHYSINFO, "struct xen_sysctl_physinfo"],
  ["XEN_DOMCTL_SCHED_CREDIT", DC.XEN_DOMCTL_SCHED_CREDIT, "struct xen_domctl_sched_credit"],
  ["XEN_DOMCTL_SCHEDULER_OP", DC.XEN_DOMCTL_SCHEDULER_OP, "struct xen_domctl_scheduler_op"],
  ["XENCTL_BITMAP", DC.XENCTL_BITMAP, "struct xenctl_bitmap"],
  ["XEN_DOMCTL_VCPUAFFINITY", DC.XEN_DOMCTL_VCPUAFFINITY, "struct xen_domctl_vcpuaffinity"],
  ["XEN_SYSCTL_CREDIT_SCHEDULE", DC.XEN_SYSCTL_CREDIT_SCHEDULE, "struct xen_sysctl_credit_schedule"],
  ["XEN_SYSCTL_SCHEDULER_OP", DC.XEN_SYSCTL_SCHEDULER_OP, "struct xen_sysctl_scheduler_op"],
  ["XEN_SYSCTL_SCHED_ID", DC.XEN_SYSCTL_SCHED_ID, "struct xen_sysctl_sched_id"],
  ["XEN_DOMCTL_SHADOW_OP_STATS", DC.XEN_DOMCTL_SHADOW_OP_STATS, "struct xen_domctl_shadow_op_stats"],
  [
    "XEN_DOMCTL_SHADOW_OP_ARG",
    DC.XEN_DOMCTL_SHADOW_OP_ARG,
    "struct xen_domctl_shadow_op",
    { stats_fault_count: "stats.fault_count", stats_dirty_count: "stats.dirty_count" },
  ],
];

/** Members of the array kind: the number of entries as the headers declare them. */
const countOf = (cType: string, member: string, elem: string) => `(sizeof(((${cType} *)0)->${member}) / sizeof(${elem}))`;

const TOOLS_GROUPS: ReadonlyArray<{ title: string; unit: "x64" | "i386"; checks: ToolsCheck[] }> = [
  {
    title: "constants (src/abi/vcpu_context.ts): VGCF_*, VMASST_TYPE_*, FLAT_KERNEL_*, array lengths",
    unit: "x64",
    checks: [
      ...toolsPrefixed("VGCF", VC.VGCF, "VGCF_"),
      ...toolsPrefixed("VGCF", Object.fromEntries(Object.entries(VC.VGCF).filter(([k]) => k !== "in_syscall")), "VGCF_").map(
        ([n, v, e]) => [`${n} (foreign/x86_32.h)`, v, `${e}_X86_32`] as const,
      ),
      ...toolsPrefixed("VGCF", Object.fromEntries(Object.entries(VC.VGCF).filter(([k]) => k !== "in_syscall")), "VGCF_").map(
        ([n, v, e]) => [`${n} (foreign/x86_64.h)`, v, `${e}_X86_64`] as const,
      ),
      ["VGCF_in_kernel", VC.VGCF_in_kernel, "VGCF_in_kernel"],
      ["VGCF_online", VC.VGCF_online, "VGCF_online"],
      ...toolsPrefixed("VMASST_TYPE", VC.VMASST_TYPE, "VMASST_TYPE_"),
      ["FLAT_KERNEL_64.cs", VC.FLAT_KERNEL_64.cs, "FLAT_KERNEL_CS"],
      ["FLAT_KERNEL_64.ds", VC.FLAT_KERNEL_64.ds, "FLAT_KERNEL_DS"],
      ["FLAT_KERNEL_64.ss", VC.FLAT_KERNEL_64.ss, "FLAT_KERNEL_SS"],
      ["FLAT_KERNEL_64.cs (foreign)", VC.FLAT_KERNEL_64.cs, "FLAT_KERNEL_CS_X86_64"],
      ["FLAT_KERNEL_64.ds (foreign)", VC.FLAT_KERNEL_64.ds, "FLAT_KERNEL_DS_X86_64"],
      ["FLAT_KERNEL_64.ss (foreign)", VC.FLAT_KERNEL_64.ss, "FLAT_KERNEL_SS_X86_64"],
      ["FLAT_KERNEL_32.cs (foreign)", VC.FLAT_KERNEL_32.cs, "FLAT_KERNEL_CS_X86_32"],
      ["FLAT_KERNEL_32.ds (foreign)", VC.FLAT_KERNEL_32.ds, "FLAT_KERNEL_DS_X86_32"],
      ["FLAT_KERNEL_32.ss (foreign)", VC.FLAT_KERNEL_32.ss, "FLAT_KERNEL_SS_X86_32"],
      ["FPU_CTXT_SIZE", VC.FPU_CTXT_SIZE, "sizeof(((struct vcpu_guest_context *)0)->fpu_ctxt)"],
      ["NR_TRAP_CTXT", VC.NR_TRAP_CTXT, countOf("struct vcpu_guest_context", "trap_ctxt", "struct trap_info")],
      ["NR_GDT_FRAMES", VC.NR_GDT_FRAMES, countOf("struct vcpu_guest_context", "gdt_frames", "unsigned long")],
      ["NR_CTRLREG", VC.NR_CTRLREG, countOf("struct vcpu_guest_context", "ctrlreg", "unsigned long")],
      ["NR_DEBUGREG", VC.NR_DEBUGREG, countOf("struct vcpu_guest_context", "debugreg", "unsigned long")],
      // xen_pfn_to_cr3 of each width, at a frame number with bits above 20 (folded on i386).
      ["xenPfnToCr3(64, 0x123456)", Number(VC.xenPfnToCr3(64, 0x123456)), "xen_pfn_to_cr3(0x123456)"],
      ["xenPfnToCr3(32, 0x123456)", Number(VC.xenPfnToCr3(32, 0x123456)), "xen_pfn_to_cr3_x86_32(0x123456)"],
      ["xenCr3ToPfn(32, 0x56123)", VC.xenCr3ToPfn(32, 0x56123), "xen_cr3_to_pfn_x86_32(0x56123)"],
    ],
  },
  {
    title: "constants (src/abi/domctl.ts): XEN_DOMCTL_*, XEN_SYSCTL_*, interface versions, XEN_DOMINF_*, CDF, PFINFO, PHYSCAP",
    unit: "x64",
    checks: [
      ["XEN_DOMCTL_INTERFACE_VERSION", DC.XEN_DOMCTL_INTERFACE_VERSION, "XEN_DOMCTL_INTERFACE_VERSION"],
      ["XEN_SYSCTL_INTERFACE_VERSION", DC.XEN_SYSCTL_INTERFACE_VERSION, "XEN_SYSCTL_INTERFACE_VERSION"],
      ["XEN_INVALID_MAX_VCPU_ID", DC.XEN_INVALID_MAX_VCPU_ID, "XEN_INVALID_MAX_VCPU_ID"],
      ...toolsPrefixed("XEN_DOMCTL", DC.XEN_DOMCTL, "XEN_DOMCTL_"),
      ...toolsPrefixed("XEN_SYSCTL", DC.XEN_SYSCTL, "XEN_SYSCTL_"),
      ...toolsPrefixed("DOMINF", DC.DOMINF, "XEN_DOMINF_"),
      ...toolsPrefixed("XEN_DOMCTL_CDF", DC.XEN_DOMCTL_CDF, "XEN_DOMCTL_CDF_"),
      ...toolsPrefixed("PFINFO", DC.PFINFO, "XEN_DOMCTL_PFINFO_"),
      ...toolsPrefixed("XEN_SYSCTL_PHYSCAP", DC.XEN_SYSCTL_PHYSCAP, "XEN_SYSCTL_PHYSCAP_"),
      ...toolsPrefixed("XEN_SCHEDULER", DC.XEN_SCHEDULER, "XEN_SCHEDULER_"),
      ...toolsPrefixed("XEN_DOMCTL_SCHEDOP", DC.XEN_DOMCTL_SCHEDOP, "XEN_DOMCTL_SCHEDOP_"),
      ...toolsPrefixed("XEN_SYSCTL_SCHEDOP", DC.XEN_SYSCTL_SCHEDOP, "XEN_SYSCTL_SCHEDOP_"),
      ...toolsPrefixed("XEN_VCPUAFFINITY", DC.XEN_VCPUAFFINITY, "XEN_VCPUAFFINITY_"),
      ...toolsPrefixed("XEN_DOMCTL_SHADOW_OP", DC.XEN_DOMCTL_SHADOW_OP, "XEN_DOMCTL_SHADOW_OP_"),
      ...toolsPrefixed("XEN_DOMCTL_SHADOW_ENABLE", DC.XEN_DOMCTL_SHADOW_ENABLE, "XEN_DOMCTL_SHADOW_ENABLE_"),
      ...toolsPrefixed("XEN_DOMCTL_SHADOW_LOGDIRTY", DC.XEN_DOMCTL_SHADOW_LOGDIRTY, "XEN_DOMCTL_SHADOW_LOGDIRTY_"),
      ["XEN_SYSCTL_CSCHED_TSLICE_MAX", DC.XEN_SYSCTL_CSCHED_TSLICE_MAX, "XEN_SYSCTL_CSCHED_TSLICE_MAX"],
      ["XEN_SYSCTL_CSCHED_TSLICE_MIN", DC.XEN_SYSCTL_CSCHED_TSLICE_MIN, "XEN_SYSCTL_CSCHED_TSLICE_MIN"],
      ["XEN_SYSCTL_SCHED_RATELIMIT_MAX", DC.XEN_SYSCTL_SCHED_RATELIMIT_MAX, "XEN_SYSCTL_SCHED_RATELIMIT_MAX"],
      ["XEN_SYSCTL_SCHED_RATELIMIT_MIN", DC.XEN_SYSCTL_SCHED_RATELIMIT_MIN, "XEN_SYSCTL_SCHED_RATELIMIT_MIN"],
      ["XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US", DC.XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US, "XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US"],
    ],
  },
  {
    title: "VCPU_GUEST_CONTEXT_X86_64, CPU_USER_REGS_X86_64, TRAP_INFO_X86_64 — xen.h (x86_64) and foreign/x86_64.h",
    unit: "x64",
    checks: [
      ...toolsStruct("VCPU_GUEST_CONTEXT_X86_64", VC.VCPU_GUEST_CONTEXT_X86_64, "struct vcpu_guest_context"),
      ...toolsStruct("VCPU_GUEST_CONTEXT_X86_64 (foreign)", VC.VCPU_GUEST_CONTEXT_X86_64, "struct vcpu_guest_context_x86_64"),
      ...toolsStruct("CPU_USER_REGS_X86_64", VC.CPU_USER_REGS_X86_64, "struct cpu_user_regs"),
      ...toolsStruct("CPU_USER_REGS_X86_64 (foreign)", VC.CPU_USER_REGS_X86_64, "struct cpu_user_regs_x86_64"),
      ...toolsStruct("TRAP_INFO_X86_64", VC.TRAP_INFO_X86_64, "struct trap_info"),
      ...toolsStruct("TRAP_INFO_X86_64 (foreign)", VC.TRAP_INFO_X86_64, "struct trap_info_x86_64"),
    ],
  },
  {
    title: "VCPU_GUEST_CONTEXT_X86_32, CPU_USER_REGS_X86_32, TRAP_INFO_X86_32 — foreign/x86_32.h",
    unit: "x64",
    checks: [
      ...toolsStruct("VCPU_GUEST_CONTEXT_X86_32 (foreign)", VC.VCPU_GUEST_CONTEXT_X86_32, "struct vcpu_guest_context_x86_32"),
      ...toolsStruct("CPU_USER_REGS_X86_32 (foreign)", VC.CPU_USER_REGS_X86_32, "struct cpu_user_regs_x86_32"),
      ...toolsStruct("TRAP_INFO_X86_32 (foreign)", VC.TRAP_INFO_X86_32, "struct trap_info_x86_32"),
    ],
  },
  {
    title: "VCPU_GUEST_CONTEXT_X86_32, CPU_USER_REGS_X86_32, TRAP_INFO_X86_32, FLAT_KERNEL_32 — xen.h, i386 (gcc -m32)",
    unit: "i386",
    checks: [
      ...toolsStruct("VCPU_GUEST_CONTEXT_X86_32", VC.VCPU_GUEST_CONTEXT_X86_32, "struct vcpu_guest_context"),
      ...toolsStruct("CPU_USER_REGS_X86_32", VC.CPU_USER_REGS_X86_32, "struct cpu_user_regs"),
      ...toolsStruct("TRAP_INFO_X86_32", VC.TRAP_INFO_X86_32, "struct trap_info"),
      ["FLAT_KERNEL_32.cs", VC.FLAT_KERNEL_32.cs, "FLAT_KERNEL_CS"],
      ["FLAT_KERNEL_32.ds", VC.FLAT_KERNEL_32.ds, "FLAT_KERNEL_DS"],
      ["FLAT_KERNEL_32.ss", VC.FLAT_KERNEL_32.ss, "FLAT_KERNEL_SS"],
    ],
  },
  {
    title: "domctl and sysctl structs (src/abi/domctl.ts) — x86_64",
    unit: "x64",
    checks: DOMCTL_STRUCTS.flatMap(([n, ts, c, m]) => toolsStruct(n, ts, c, m)),
  },
  {
    title: "domctl and sysctl structs (src/abi/domctl.ts) — i386 (gcc -m32): the same layout",
    unit: "i386",
    checks: DOMCTL_STRUCTS.flatMap(([n, ts, c, m]) => toolsStruct(n, ts, c, m)),
  },
];

/** Exports of the two modules that are functions or types' helpers, checked by the derived tests below. */
const VCPU_CONTEXT_OTHER_EXPORTS: readonly string[] = [
  "emptyVcpuGuestContext",
  "emptyCpuUserRegs",
  "cloneVcpuGuestContext",
  "encodeVcpuGuestContext",
  "decodeVcpuGuestContext",
  "vcpuGuestContextSize",
  "vcpuGuestContextMemberRanges",
  "gprOffset",
  "toUlong",
  "GPR_NAMES",
  "GPR_NAMES_X86_32",
  // The builder's first context, from the layouts checked above (a unit test runs it).
  "bootVcpuContext",
  // Not Xen header definitions: x86's rflags bits (IF is bit 9, IOPL bits 12-13) and the debug
  // registers' reset values (architectural, as Xen's X86_DR6_DEFAULT / X86_DR7_DEFAULT).
  "X86_EFLAGS_IF",
  "X86_EFLAGS_IOPL",
  "X86_DR6_DEFAULT",
  "X86_DR7_DEFAULT",
];
const DOMCTL_OTHER_EXPORTS: readonly string[] = [
  "encodeGetdomaininfo",
  "decodeGetdomaininfo",
  "encodeTscInfo",
  "decodeTscInfo",
  "encodeShadowOp",
  "decodeShadowOp",
  "dominfShutdownCode",
];

const TOOLS_PRELUDE = `#define __XEN_TOOLS__ 1
#define __XEN_INTERFACE_VERSION__ ${INTERFACE_VERSION}
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/domctl.h>
#include <xen/sysctl.h>
`;

let toolsDir: string | undefined;
let toolsBuilt: { readonly values: ReadonlyMap<string, number> } | { readonly error: Error } | undefined;

function buildToolsOracle(): Map<string, number> {
  requireHeaders();
  if (process.arch !== "x64") throw new Error(`these probes need an x86_64 host gcc, not ${process.arch}`);
  toolsDir = mkdtempSync(join(tmpdir(), "xensim-abi-tools-"));
  const common = ["-std=gnu11", "-O0", "-Wall", `-I${INCLUDE_DIR}`];
  const values = new Map<string, number>();
  const x64 = [...new Map(TOOLS_GROUPS.filter((g) => g.unit === "x64").flatMap((g) => g.checks.map((c) => [c[2], c[2]]))).keys()];
  const lines = x64.map((expr) => `  printf("%s%s\\n", first ? "" : ",", ${cString(JSON.stringify(expr))}); first = 0; printf(":%lld\\n", (long long)(${expr}));`);
  writeFileSync(
    join(toolsDir, "tools.c"),
    `${TOOLS_PRELUDE}#include <stdio.h>
#undef xen_wc_sec_hi
#include <xen/foreign/x86_32.h>
#undef xen_wc_sec_hi
#include <xen/foreign/x86_64.h>

int main(void) {
  int first = 1;
  printf("{\\n");
${lines.join("\n")}
  printf("}\\n");
  return 0;
}
`,
  );
  gcc([...common, "-o", "tools64", "tools.c"], toolsDir);
  const parsed: unknown = JSON.parse(execFileSync(join(toolsDir, "tools64"), { encoding: "utf8" }));
  assert.ok(isNumberRecord(parsed), "tools64 printed something other than a JSON object of numbers");
  for (const [k, v] of Object.entries(parsed)) values.set(`x64:${k}`, v);

  const i386 = [...new Set(TOOLS_GROUPS.filter((g) => g.unit === "i386").flatMap((g) => g.checks.map((c) => c[2])))];
  writeFileSync(
    join(toolsDir, "tools32.c"),
    `${TOOLS_PRELUDE}\nconst int xensim_probe[] = {\n${i386.map((e) => `  (int)(${e}),`).join("\n")}\n};\n`,
  );
  gcc([...common, "-m32", "-ffreestanding", "-S", "-o", "tools32.s", "tools32.c"], toolsDir);
  const data = parseProbeArray(readFileSync(join(toolsDir, "tools32.s"), "utf8"));
  assert.equal(data.length, i386.length, "gcc -m32: probe array length differs from the number of probes");
  for (const [i, e] of i386.entries()) values.set(`i386:${e}`, data[i]!);
  return values;
}

function toolsOracle(): ReadonlyMap<string, number> {
  if (toolsBuilt === undefined) {
    try {
      toolsBuilt = { values: buildToolsOracle() };
    } catch (e) {
      toolsBuilt = { error: e instanceof Error ? e : new Error(String(e)) };
    }
  }
  if ("error" in toolsBuilt) throw toolsBuilt.error;
  return toolsBuilt.values;
}

after(() => {
  if (toolsDir !== undefined) rmSync(toolsDir, { recursive: true, force: true });
});

describe("vcpu_guest_context and domctl/sysctl (src/abi/vcpu_context.ts, src/abi/domctl.ts)", { skip: skipHeaders() }, () => {
  countXenSuite();
  for (const g of TOOLS_GROUPS) {
    test(g.title, () => {
      const values = toolsOracle();
      const problems: string[] = [];
      for (const [name, ts, expr] of g.checks) {
        const header = values.get(`${g.unit}:${expr}`);
        if (header === undefined) problems.push(`${name}: ${expr} is not defined by the headers (TS has ${ts})`);
        else if (header !== ts) problems.push(`${name}: TS has ${ts}, headers say ${header} (${expr})`);
      }
      assert.deepEqual(problems, [], `${g.title}:\n  ${problems.join("\n  ")}`);
    });
  }
});

describe("derived facts and coverage (src/abi/vcpu_context.ts, src/abi/domctl.ts)", () => {
  test("every member of LAYOUT_X86_*.vcpu_guest_context is where the full layout has it", () => {
    for (const [l, full, regs] of [
      [LAYOUT_X86_64, VC.VCPU_GUEST_CONTEXT_X86_64, { ip: VC.CPU_USER_REGS_X86_64.rip, sp: VC.CPU_USER_REGS_X86_64.rsp }],
      [LAYOUT_X86_32, VC.VCPU_GUEST_CONTEXT_X86_32, { ip: VC.CPU_USER_REGS_X86_32.eip, sp: VC.CPU_USER_REGS_X86_32.esp }],
    ] as const) {
      const fullRec: Readonly<Record<string, number>> = full;
      for (const [k, v] of Object.entries(l.vcpu_guest_context)) {
        if (k === "user_regs_ip") assert.equal(v, full.user_regs + regs.ip);
        else if (k === "user_regs_sp") assert.equal(v, full.user_regs + regs.sp);
        else assert.equal(v, fullRec[k], `${l.width}-bit ${k}`);
      }
      assert.equal(VC.vcpuGuestContextSize(l.width), full.size);
    }
  });

  test("getdomaininfo, tsc_info and shadow_op encode where the layouts say, and decode back", () => {
    const info: domctlAbi.XenDomctlGetdomaininfo = {
      domain: 0x7fef,
      flags: DC.DOMINF.paused | DC.DOMINF.shutdown | (3 << DC.DOMINF.shutdownshift),
      totPages: 2 ** 40 + 5,
      maxPages: 0x10000,
      outstandingPages: 1,
      shrPages: 2,
      pagedPages: 3,
      sharedInfoFrame: 0xabcdef,
      cpuTime: 2 ** 52 + 1,
      nrOnlineVcpus: 4,
      maxVcpuId: 3,
      ssidref: 7,
      handle: Uint8Array.from({ length: 16 }, (_, i) => i + 1),
      cpupool: 9,
      gpaddrBits: 40,
      emulationFlags: 0x5,
      miscFlags: 0x1,
    };
    const bytes = DC.encodeGetdomaininfo(info);
    const G = DC.XEN_DOMCTL_GETDOMAININFO;
    assert.equal(bytes.length, G.size);
    const dv = new DataView(bytes.buffer);
    assert.equal(dv.getUint16(G.domain, true), 0x7fef);
    assert.equal(dv.getUint32(G.tot_pages + 4, true), 2 ** 8);
    assert.equal(bytes[G.handle], 1);
    assert.equal(bytes[G.gpaddr_bits], 40);
    assert.equal(dv.getUint32(G.arch_emulation_flags, true), 5);
    assert.deepEqual(DC.decodeGetdomaininfo(bytes), info);
    assert.equal(DC.dominfShutdownCode(info.flags), 3);
    assert.throws(() => DC.encodeGetdomaininfo({ ...info, cpuTime: 2 ** 53 }), RangeError);
    const tsc = { mode: 2, gtscKhz: 3_000_000, incarnation: 7, elapsedNsec: 2 ** 45 + 3 };
    const t = DC.encodeTscInfo(tsc);
    assert.equal(new DataView(t.buffer).getUint32(DC.XEN_DOMCTL_TSC_INFO.elapsed_nsec + 4, true), 2 ** 13);
    assert.deepEqual(DC.decodeTscInfo(t), tsc);
    const sop = { op: DC.XEN_DOMCTL_SHADOW_OP.CLEAN, mode: 0, mb: 3, dirtyBitmap: 2 ** 40 + 0x1000, pages: 2 ** 33 + 7, faultCount: 0xffffffff, dirtyCount: 9 };
    const s = DC.encodeShadowOp(sop);
    const S = DC.XEN_DOMCTL_SHADOW_OP_ARG;
    assert.equal(s.length, S.size);
    const sdv = new DataView(s.buffer);
    assert.equal(sdv.getUint32(S.op, true), 11);
    assert.equal(sdv.getUint32(S.pages + 4, true), 2);
    assert.equal(sdv.getUint32(S.dirty_bitmap + 4, true), 2 ** 8);
    assert.equal(sdv.getUint32(S.stats + DC.XEN_DOMCTL_SHADOW_OP_STATS.dirty_count, true), 9);
    assert.deepEqual(DC.decodeShadowOp(s), sop);
    assert.throws(() => DC.encodeShadowOp({ ...sop, faultCount: 2 ** 32 }), RangeError);
  });

  test("every runtime export of src/abi/vcpu_context.ts and src/abi/domctl.ts is checked", () => {
    const all = TOOLS_GROUPS.flatMap((g) => g.checks.map((c) => c[0].split(/[.( ]/)[0]!));
    const covered = new Set([...all, ...VCPU_CONTEXT_OTHER_EXPORTS, ...DOMCTL_OTHER_EXPORTS]);
    const unchecked = [...Object.keys(vcpuContextAbi), ...Object.keys(domctlAbi)].filter((name) => !covered.has(name));
    assert.deepEqual(unchecked, [], "exports with no header check");
  });
});
