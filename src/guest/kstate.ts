// The kernel's heap state as bytes, and those bytes in the kernel's own pages. A save image
// carries only a domain's pages, vCPU contexts and shared_info; the kernel here is TypeScript
// objects, so before the suspend hypercall it writes its whole object graph into pages it owns,
// and a fresh kernel (possibly in another process) rebuilds the graph from those pages alone.
//
// The format is a tagged binary tree, deterministic (the same graph gives the same bytes: Map,
// Set and field order are kept), with shared references and cycles kept as back-references to
// object ids. What it holds: undefined, null, booleans, numbers (-0, NaN, +-Infinity), strings,
// arrays (holes too), plain objects, Map, Set, typed arrays (copied by value) and instances of
// classes registered by name. A function, a DataView, a foreign class instance... is an error
// that names its path from the root: a closure cannot survive a suspend, and a view of memory
// must be derived again, not copied.
//
// A registered class lists its transient fields: wiring that is not state (closures, handler
// tables, views of guest pages, layout constants). They are not written. A decoded instance is
// made without its constructor (Object.create and its fields), then:
//   1. kstateInit(), on every revived instance in creation order (pre-order), before any revive:
//      fresh empty values for transient tables that other objects fill (handler registries).
//      It touches only `this`.
//   2. kstateRevive(env), post-order: an object after every object first reached through it (so
//      after what it owns; an object that refers back to an ancestor sees it not yet revived).
//      The root (the kernel) comes last. Views are derived again here from addresses kept as
//      data, and handlers registered again by name.

import type { GuestCpu } from "../abi/cpu.ts";
import { XEN_PAGE_SIZE } from "../abi/xen.ts";
import { Rng } from "../util/rng.ts";
import type { XenLinux } from "./kernel.ts";

export class KstateError extends Error {
  override name = "KstateError";
}

/** What revive hooks get: the vCPU doing the restore, and the kernel being rebuilt (the root). */
export interface KstateEnv {
  readonly cpu: GuestCpu;
  readonly kernel: XenLinux;
}

/** The hooks a kernel class may have (see the top of this file for when they run). */
export interface KstateHooks {
  kstateInit?(): void;
  kstateRevive?(env: KstateEnv): void;
}

/** A class, whatever its constructor takes: only its prototype is used. */
type KernelClass = abstract new (...args: never[]) => object;

interface ClassInfo {
  readonly name: string;
  readonly proto: object;
  readonly transient: ReadonlySet<string>;
}

const byProto = new Map<object, ClassInfo>();
const byName = new Map<string, ClassInfo>();

/**
 * Makes instances of `ctor` part of kernel state under `name` (the name is what the bytes say, so
 * it must not change between a save and a restore). `transient` fields are not written. Registering
 * the same class again with the same name replaces its transient list.
 */
export function registerKernelClass(name: string, ctor: KernelClass, opts: { transient?: readonly string[] } = {}): void {
  const proto = ctor.prototype as object;
  const had = byName.get(name);
  if (had && had.proto !== proto) throw new KstateError(`kstate: class name ${name} is taken by another class`);
  const other = byProto.get(proto);
  if (other && other.name !== name) throw new KstateError(`kstate: class ${ctor.name} is registered as ${other.name}`);
  const info: ClassInfo = { name, proto, transient: new Set(opts.transient ?? []) };
  byProto.set(proto, info);
  byName.set(name, info);
}

export function isKernelClass(ctor: KernelClass): boolean {
  return byProto.has(ctor.prototype as object);
}

/**
 * XenLinux's transient fields, for kernel.ts's registerKernelClass("XenLinux", ...): what its
 * constructor derives from the width (the fresh kernel a restore starts from has them), the
 * views of shared_info (mapped again after a restore), the workload factory, and the M2P cache
 * (the frames are the new domain's: rebuilt from the p2m list).
 */
export const XENLINUX_TRANSIENT: readonly string[] = ["entry", "symbols", "layout", "base", "hc", "makeWorkloads", "si", "siBytes", "m2p"];

// The util world cannot import the guest's registry; its state is plain data.
registerKernelClass("Rng", Rng);

// ---- the format ----

const MAGIC = [0x58, 0x4b, 0x53, 0x54]; // "XKST"
const VERSION = 1;

const T_UNDEF = 0;
const T_NULL = 1;
const T_FALSE = 2;
const T_TRUE = 3;
/** A non-negative safe integer (varint). */
const T_UINT = 4;
/** A negative safe integer, as a varint of its magnitude. */
const T_NINT = 5;
const T_F64 = 6;
const T_NAN = 7;
/** A string, inline: varint (length << 1 | utf16), then latin1 bytes or UTF-16LE code units. */
const T_STR = 8;
/** The same, and appended to the string table. */
const T_STR_DEF = 9;
/** A string from the table: varint index. */
const T_STR_REF = 10;
/** An object already decoded: varint id. */
const T_REF = 11;
const T_ARRAY = 12;
const T_HOLE = 13;
const T_OBJECT = 14;
const T_OBJECT_NULL = 15;
const T_MAP = 16;
const T_SET = 17;
const T_TYPED = 18;
const T_INSTANCE = 19;

/** Strings up to this long are interned (field names, handler names, chips...). */
const INTERN_MAX = 40;
const MAX_DEPTH = 1000;
/** A decoded typed array may not be larger than this (a corrupt run length must not eat memory). */
const MAX_TYPED_BYTES = 64 * 1024 * 1024;
/** Equal units in a row from which a typed array's content is written as a run. */
const RUN_MIN = 4;

type TypedArray =
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

interface TypedKind {
  readonly proto: object;
  readonly size: number;
  make(buf: ArrayBuffer): TypedArray;
}

const TYPED_KINDS: readonly TypedKind[] = [
  { proto: Int8Array.prototype, size: 1, make: (b) => new Int8Array(b) },
  { proto: Uint8Array.prototype, size: 1, make: (b) => new Uint8Array(b) },
  { proto: Uint8ClampedArray.prototype, size: 1, make: (b) => new Uint8ClampedArray(b) },
  { proto: Int16Array.prototype, size: 2, make: (b) => new Int16Array(b) },
  { proto: Uint16Array.prototype, size: 2, make: (b) => new Uint16Array(b) },
  { proto: Int32Array.prototype, size: 4, make: (b) => new Int32Array(b) },
  { proto: Uint32Array.prototype, size: 4, make: (b) => new Uint32Array(b) },
  { proto: Float32Array.prototype, size: 4, make: (b) => new Float32Array(b) },
  { proto: Float64Array.prototype, size: 8, make: (b) => new Float64Array(b) },
  { proto: BigInt64Array.prototype, size: 8, make: (b) => new BigInt64Array(b) },
  { proto: BigUint64Array.prototype, size: 8, make: (b) => new BigUint64Array(b) },
];
const TYPED_KIND_OF = new Map<object, number>(TYPED_KINDS.map((k, i) => [k.proto, i]));
const UINT8_KIND = 1;

// Typed arrays are written in the machine's byte order; guest pages are little-endian anyway.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("kstate: a little-endian host is needed");

// ---- encoding ----

export interface EncodeOptions {
  /** What the error messages call the root (default "kernel"). */
  rootName?: string;
  /** Sees every typed array written; a string it returns is an error (a test's check for page views). */
  checkTypedArray?: (a: ArrayBufferView, path: string) => string | undefined;
}

type PathSeg = string | number | { mapKey: unknown } | { setIndex: number };

/** The encoder's buffer, kept between saves: growing a fresh one each time costs more than the encoding. */
let spare: Uint8Array | undefined;

class Encoder {
  private buf: Uint8Array;
  private dv: DataView;
  /** The same bytes as a Buffer, for its native latin1 copy of long strings. */
  private nb: Buffer;
  private pos = 0;
  private readonly ids = new Map<object, number>();
  private readonly strings = new Map<string, number>();
  private readonly path: PathSeg[] = [];

  constructor(private readonly opts: EncodeOptions) {
    // A nested encode (from checkTypedArray) gets its own.
    this.buf = spare ?? new Uint8Array(1 << 16);
    spare = undefined;
    this.dv = new DataView(this.buf.buffer);
    this.nb = Buffer.from(this.buf.buffer);
  }

  /** The bytes written; the buffer goes back for the next encode. */
  finish(): Uint8Array {
    const out = this.buf.slice(0, this.pos);
    this.release();
    return out;
  }

  release(): void {
    spare = this.buf;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
    this.nb = Buffer.from(next.buffer);
  }

  byte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
  }

  /** A varint of a non-negative safe integer: 7 bits a byte, low first. */
  varint(n: number): void {
    this.room(8);
    const buf = this.buf;
    let pos = this.pos;
    if (n < 0x80000000) {
      while (n >= 0x80) {
        buf[pos++] = (n & 0x7f) | 0x80;
        n >>>= 7;
      }
    } else {
      while (n >= 0x80) {
        buf[pos++] = (n % 0x80) | 0x80;
        n = Math.floor(n / 0x80);
      }
    }
    buf[pos++] = n;
    this.pos = pos;
  }

  private fail(what: string): never {
    throw new KstateError(`kstate: ${formatPath(this.opts.rootName ?? "kernel", this.path)} ${what}`);
  }

  value(v: unknown, depth: number): void {
    switch (typeof v) {
      case "undefined":
        this.byte(T_UNDEF);
        return;
      case "boolean":
        this.byte(v ? T_TRUE : T_FALSE);
        return;
      case "number":
        this.number(v);
        return;
      case "string":
        this.string(v);
        return;
      case "function":
        this.fail("is a function: a closure cannot survive a suspend");
        break;
      case "symbol":
        this.fail("is a symbol");
        break;
      case "bigint":
        this.fail("is a bigint");
        break;
    }
    if (v === null) {
      this.byte(T_NULL);
      return;
    }
    this.object(v as object, depth);
  }

  private number(v: number): void {
    if (Number.isInteger(v) && v <= Number.MAX_SAFE_INTEGER && v >= -Number.MAX_SAFE_INTEGER && !Object.is(v, -0)) {
      if (v >= 0) {
        this.byte(T_UINT);
        this.varint(v);
      } else {
        this.byte(T_NINT);
        this.varint(-v);
      }
      return;
    }
    if (Number.isNaN(v)) {
      this.byte(T_NAN);
      return;
    }
    this.byte(T_F64);
    this.room(8);
    this.dv.setFloat64(this.pos, v, true);
    this.pos += 8;
  }

  string(s: string): void {
    if (s.length <= INTERN_MAX) {
      const at = this.strings.get(s);
      if (at !== undefined) {
        this.byte(T_STR_REF);
        this.varint(at);
        return;
      }
      this.strings.set(s, this.strings.size);
      this.byte(T_STR_DEF);
    } else this.byte(T_STR);
    const n = s.length;
    let wide = false;
    for (let i = 0; i < n; i++) {
      if (s.charCodeAt(i) > 0xff) {
        wide = true;
        break;
      }
    }
    this.varint(n * 2 + (wide ? 1 : 0));
    this.room(wide ? 2 * n : n);
    const buf = this.buf;
    let pos = this.pos;
    if (wide) {
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        buf[pos++] = c & 0xff;
        buf[pos++] = c >>> 8;
      }
    } else if (n > 16) pos += this.nb.write(s, pos, n, "latin1");
    else for (let i = 0; i < n; i++) buf[pos++] = s.charCodeAt(i);
    this.pos = pos;
  }

  private object(o: object, depth: number): void {
    const id = this.ids.get(o);
    if (id !== undefined) {
      this.byte(T_REF);
      this.varint(id);
      return;
    }
    if (depth >= MAX_DEPTH) this.fail(`is nested deeper than ${MAX_DEPTH} objects`);
    const proto = Object.getPrototypeOf(o) as object | null;
    const d = depth + 1;
    if (proto === Array.prototype) {
      this.ids.set(o, this.ids.size);
      const a = o as unknown[];
      this.byte(T_ARRAY);
      this.varint(a.length);
      const path = this.path;
      for (let i = 0; i < a.length; i++) {
        if (!(i in a)) {
          this.byte(T_HOLE);
          continue;
        }
        path.push(i);
        this.value(a[i], d);
        path.pop();
      }
      return;
    }
    if (proto === Object.prototype || proto === null) {
      this.ids.set(o, this.ids.size);
      this.byte(proto === null ? T_OBJECT_NULL : T_OBJECT);
      this.fields(o, Object.keys(o), d);
      return;
    }
    if (proto === Map.prototype) {
      this.ids.set(o, this.ids.size);
      const m = o as Map<unknown, unknown>;
      this.byte(T_MAP);
      this.varint(m.size);
      for (const [k, v] of m) {
        this.path.push({ mapKey: k });
        this.value(k, d);
        this.value(v, d);
        this.path.pop();
      }
      return;
    }
    if (proto === Set.prototype) {
      this.ids.set(o, this.ids.size);
      const s = o as Set<unknown>;
      this.byte(T_SET);
      this.varint(s.size);
      let i = 0;
      for (const v of s) {
        this.path.push({ setIndex: i++ });
        this.value(v, d);
        this.path.pop();
      }
      return;
    }
    if (ArrayBuffer.isView(o)) {
      if (o instanceof DataView) this.fail("is a DataView, a view of memory: mark it transient and derive it again in kstateRevive");
      this.ids.set(o, this.ids.size);
      this.typed(o as TypedArray);
      return;
    }
    const info = proto === null ? undefined : byProto.get(proto);
    if (!info) {
      if (o instanceof ArrayBuffer) this.fail("is an ArrayBuffer: kernel state holds typed arrays, not raw buffers");
      const name = (proto as { constructor?: { name?: string } } | null)?.constructor?.name || "an anonymous class";
      this.fail(`is an instance of ${name}, which is not a kernel class`);
    }
    this.ids.set(o, this.ids.size);
    this.byte(T_INSTANCE);
    this.string(info.name);
    const keys = Object.keys(o);
    const transient = info.transient;
    this.fields(o, transient.size === 0 ? keys : keys.filter((k) => !transient.has(k)), d);
  }

  private fields(o: object, keys: readonly string[], depth: number): void {
    const rec = o as Record<string, unknown>;
    const path = this.path;
    this.varint(keys.length);
    for (const k of keys) {
      this.string(k);
      path.push(k);
      this.value(rec[k], depth);
      path.pop();
    }
  }

  private typed(a: TypedArray): void {
    let kind = TYPED_KIND_OF.get(Object.getPrototypeOf(a) as object);
    // Node's Buffer is a Uint8Array: it comes back as one.
    if (kind === undefined && a instanceof Uint8Array) kind = UINT8_KIND;
    if (kind === undefined) this.fail("is a typed array of a kind kstate does not know");
    const check = this.opts.checkTypedArray?.(a, formatPath(this.opts.rootName ?? "kernel", this.path));
    if (check !== undefined) this.fail(check);
    this.byte(T_TYPED);
    this.byte(kind);
    this.varint(a.length);
    let bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    // Units are 32-bit where the length allows; an unaligned view is copied first.
    if (bytes.length % 4 === 0 && bytes.byteOffset % 4 !== 0) bytes = bytes.slice();
    if (bytes.length % 4 === 0) this.runs32(new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4), bytes);
    else this.runs8(bytes);
  }

  /** The content as chunks: varint (n << 1 | 1) and one unit for a run, varint (n << 1) and n units for a literal. */
  private runs32(u: Uint32Array, bytes: Uint8Array): void {
    const n = u.length;
    let lit = 0;
    let i = 0;
    while (i < n) {
      const v = u[i]!;
      let j = i + 1;
      while (j < n && u[j] === v) j++;
      if (j - i >= RUN_MIN) {
        this.literal(bytes, lit * 4, i * 4, i - lit);
        this.varint((j - i) * 2 + 1);
        this.room(4);
        this.dv.setUint32(this.pos, v, true);
        this.pos += 4;
        lit = j;
      }
      i = j;
    }
    this.literal(bytes, lit * 4, n * 4, n - lit);
  }

  private runs8(bytes: Uint8Array): void {
    const n = bytes.length;
    let lit = 0;
    let i = 0;
    while (i < n) {
      const v = bytes[i]!;
      let j = i + 1;
      while (j < n && bytes[j] === v) j++;
      if (j - i >= RUN_MIN) {
        this.literal(bytes, lit, i, i - lit);
        this.varint((j - i) * 2 + 1);
        this.byte(v);
        lit = j;
      }
      i = j;
    }
    this.literal(bytes, lit, n, n - lit);
  }

  private literal(bytes: Uint8Array, from: number, to: number, units: number): void {
    if (units === 0) return;
    this.varint(units * 2);
    this.room(to - from);
    this.buf.set(bytes.subarray(from, to), this.pos);
    this.pos += to - from;
  }
}

function formatPath(root: string, path: readonly PathSeg[]): string {
  let out = root;
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string") out += /^[A-Za-z_$][\w$]*$/.test(seg) ? `.${seg}` : `[${JSON.stringify(seg)}]`;
    else if ("mapKey" in seg) {
      const k = seg.mapKey;
      out += `.get(${typeof k === "string" ? JSON.stringify(k) : typeof k === "number" || typeof k === "boolean" || k == null ? String(k) : "<object key>"})`;
    } else out += `.<set element ${seg.setIndex}>`;
  }
  return out;
}

/** The graph under `root` as bytes. Throws KstateError, naming the path, for what cannot be state. */
export function encodeKernelState(root: object, opts: EncodeOptions = {}): Uint8Array {
  const e = new Encoder(opts);
  try {
    for (const b of MAGIC) e.byte(b);
    e.byte(VERSION);
    e.value(root, 0);
    return e.finish();
  } catch (err) {
    e.release();
    throw err;
  }
}

// ---- decoding ----

class Decoder {
  private pos = 0;
  private readonly dv: DataView;
  private readonly nb: Buffer;
  private readonly objs: unknown[] = [];
  private readonly strings: string[] = [];
  /** Revived instances in creation order (kstateInit) and in post-order (kstateRevive). */
  readonly created: object[] = [];
  readonly postOrder: object[] = [];
  private typedBytes = 0;

  constructor(
    private readonly u8: Uint8Array,
    private into: object | undefined,
  ) {
    this.dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    this.nb = Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
  }

  private bad(what: string): never {
    throw new KstateError(`kstate: malformed state at byte ${this.pos}: ${what}`);
  }

  get done(): boolean {
    return this.pos === this.u8.length;
  }

  byte(): number {
    if (this.pos >= this.u8.length) this.bad("unexpected end");
    return this.u8[this.pos++]!;
  }

  varint(): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      n += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (n > Number.MAX_SAFE_INTEGER) this.bad("number too large");
        return n;
      }
      scale *= 0x80;
    }
    return this.bad("varint too long");
  }

  /** A count of things each at least `minBytes` long: no more than the bytes left can hold. */
  private count(minBytes: number): number {
    const n = this.varint();
    if (n * minBytes > this.u8.length - this.pos) this.bad(`count ${n} is more than the bytes left`);
    return n;
  }

  value(depth: number): unknown {
    const tag = this.byte();
    switch (tag) {
      case T_UNDEF:
        return undefined;
      case T_NULL:
        return null;
      case T_FALSE:
        return false;
      case T_TRUE:
        return true;
      case T_UINT:
        return this.varint();
      case T_NINT:
        return -this.varint();
      case T_F64: {
        if (this.pos + 8 > this.u8.length) this.bad("unexpected end");
        const v = this.dv.getFloat64(this.pos, true);
        this.pos += 8;
        return v;
      }
      case T_NAN:
        return Number.NaN;
      case T_STR:
      case T_STR_DEF:
      case T_STR_REF:
        return this.stringTagged(tag);
      case T_REF: {
        const id = this.varint();
        if (id >= this.objs.length) this.bad(`reference to object ${id}, of ${this.objs.length}`);
        return this.objs[id];
      }
      case T_HOLE:
        return this.bad("a hole outside an array");
    }
    if (depth >= MAX_DEPTH) this.bad(`nested deeper than ${MAX_DEPTH} objects`);
    const d = depth + 1;
    switch (tag) {
      case T_ARRAY: {
        const n = this.count(1);
        // Built by appending, so that an array without holes is a packed one again.
        const a: unknown[] = [];
        this.objs.push(a);
        for (let i = 0; i < n; i++) {
          if (this.u8[this.pos] === T_HOLE) {
            this.pos++;
            a.length = i + 1;
            continue;
          }
          a.push(this.value(d));
        }
        return a;
      }
      case T_OBJECT:
      case T_OBJECT_NULL: {
        const o: Record<string, unknown> = tag === T_OBJECT ? {} : Object.create(null);
        this.objs.push(o);
        this.fields(o, undefined, d);
        return o;
      }
      case T_MAP: {
        const n = this.count(2);
        const m = new Map<unknown, unknown>();
        this.objs.push(m);
        for (let i = 0; i < n; i++) {
          const k = this.value(d);
          m.set(k, this.value(d));
        }
        return m;
      }
      case T_SET: {
        const n = this.count(1);
        const s = new Set<unknown>();
        this.objs.push(s);
        for (let i = 0; i < n; i++) s.add(this.value(d));
        return s;
      }
      case T_TYPED:
        return this.typed();
      case T_INSTANCE:
        return this.instance(d);
    }
    return this.bad(`unknown tag ${tag}`);
  }

  private stringTagged(tag: number): string {
    if (tag === T_STR_REF) {
      const i = this.varint();
      if (i >= this.strings.length) this.bad(`string ${i} of ${this.strings.length}`);
      return this.strings[i]!;
    }
    const h = this.varint();
    const n = Math.floor(h / 2);
    const wide = h % 2 === 1;
    const bytes = wide ? 2 * n : n;
    if (bytes > this.u8.length - this.pos) this.bad("string past the end");
    const at = this.pos;
    this.pos += bytes;
    let s = "";
    if (wide) {
      const units = new Uint16Array(this.u8.slice(at, at + bytes).buffer);
      for (let i = 0; i < n; i += 8192) s += String.fromCharCode(...units.subarray(i, i + 8192));
    } else if (n <= 16) {
      for (let i = 0; i < n; i++) s += String.fromCharCode(this.u8[at + i]!);
    } else s = this.nb.toString("latin1", at, at + n);
    if (tag === T_STR_DEF) this.strings.push(s);
    return s;
  }

  private key(): string {
    const tag = this.byte();
    if (tag !== T_STR && tag !== T_STR_DEF && tag !== T_STR_REF) this.bad("a field name that is not a string");
    return this.stringTagged(tag);
  }

  private fields(o: object, info: ClassInfo | undefined, depth: number): void {
    const n = this.count(2);
    const rec = o as Record<string, unknown>;
    const proto = Object.getPrototypeOf(o) as object | null;
    for (let i = 0; i < n; i++) {
      const k = this.key();
      if (info?.transient.has(k)) this.bad(`field ${k} of ${info.name} is transient`);
      const v = this.value(depth);
      // A name the prototype has (a getter, __proto__) becomes an own field, never a call.
      if (proto !== null && k in proto && !Object.hasOwn(o, k)) {
        Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
      } else rec[k] = v;
    }
  }

  private instance(depth: number): object {
    const nameTag = this.byte();
    if (nameTag !== T_STR && nameTag !== T_STR_DEF && nameTag !== T_STR_REF) this.bad("a class name that is not a string");
    const name = this.stringTagged(nameTag);
    const info = byName.get(name);
    if (!info) this.bad(`unknown kernel class ${JSON.stringify(name)}`);
    let o: object;
    if (this.into !== undefined) {
      // The root goes into the object the caller made (the fresh kernel).
      if (this.objs.length !== 0) this.bad("the root is not a class instance");
      if (Object.getPrototypeOf(this.into) !== info.proto) {
        throw new KstateError(`kstate: the saved root is a ${name}, not a ${byProto.get(Object.getPrototypeOf(this.into) as object)?.name ?? "kernel class"}`);
      }
      o = this.into;
      this.into = undefined;
    } else o = Object.create(info.proto) as object;
    this.objs.push(o);
    this.created.push(o);
    this.fields(o, info, depth);
    this.postOrder.push(o);
    return o;
  }

  private typed(): TypedArray {
    const kindIx = this.byte();
    const kind = TYPED_KINDS[kindIx];
    if (!kind) this.bad(`typed array kind ${kindIx}`);
    const length = this.varint();
    const byteLength = length * kind.size;
    this.typedBytes += byteLength;
    if (byteLength > MAX_TYPED_BYTES || this.typedBytes > 4 * MAX_TYPED_BYTES) this.bad(`typed array of ${length} elements`);
    const out = new Uint8Array(byteLength);
    const unit = byteLength % 4 === 0 ? 4 : 1;
    const out32 = unit === 4 ? new Uint32Array(out.buffer) : undefined;
    const units = byteLength / unit;
    let at = 0;
    while (at < units) {
      const h = this.varint();
      const n = Math.floor(h / 2);
      if (n === 0 || n > units - at) this.bad("typed array chunk does not fit");
      if (h % 2 === 1) {
        if (this.pos + unit > this.u8.length) this.bad("unexpected end");
        if (out32) out32.fill(this.dv.getUint32(this.pos, true), at, at + n);
        else out.fill(this.u8[this.pos]!, at, at + n);
        this.pos += unit;
      } else {
        const bytes = n * unit;
        if (this.pos + bytes > this.u8.length) this.bad("unexpected end");
        out.set(this.u8.subarray(this.pos, this.pos + bytes), at * unit);
        this.pos += bytes;
      }
      at += n;
    }
    const a = kind.make(out.buffer);
    this.objs.push(a);
    return a;
  }
}

/**
 * Rebuilds the graph `bytes` hold. With `into`, the root's fields go into that object (the fresh
 * kernel the restore made; its transient fields stay as its constructor set them) and references
 * to the root become references to it. Then the hooks run (kstateInit, then kstateRevive
 * post-order, the root last) with `env`. Malformed bytes, and any failure of a hook, are a
 * KstateError.
 */
export function decodeKernelState(bytes: Uint8Array, env: KstateEnv, into?: object): object {
  const d = new Decoder(bytes, into);
  for (const b of MAGIC) if (d.byte() !== b) throw new KstateError("kstate: not kernel state (bad magic)");
  const version = d.byte();
  if (version !== VERSION) throw new KstateError(`kstate: state version ${version}, this kernel reads ${VERSION}`);
  let root: unknown;
  try {
    root = d.value(0);
  } catch (e) {
    if (e instanceof KstateError) throw e;
    // A RangeError from an absurd but in-bounds length, and the like.
    throw new KstateError(`kstate: malformed state: ${(e as Error).message}`, { cause: e });
  }
  if (!d.done) throw new KstateError("kstate: malformed state: bytes after the root");
  if (typeof root !== "object" || root === null) throw new KstateError("kstate: the root is not an object");
  if (into !== undefined && root !== into) throw new KstateError("kstate: the root is not a class instance");
  runHook(d.created, "kstateInit", env);
  runHook(d.postOrder, "kstateRevive", env);
  return root;
}

function runHook(objs: readonly object[], hook: "kstateInit" | "kstateRevive", env: KstateEnv): void {
  for (const o of objs) {
    const fn = (o as KstateHooks)[hook];
    if (typeof fn !== "function") continue;
    try {
      fn.call(o, env);
    } catch (e) {
      if (e instanceof KstateError) throw e;
      const name = byProto.get(Object.getPrototypeOf(o) as object)?.name ?? "?";
      throw new KstateError(`kstate: ${name}.${hook} failed: ${(e as Error).message}`, { cause: e });
    }
  }
}

// ---- the state in guest pages ----

/**
 * The header page: magic, version, byte length, data page count, checksum, then the first of the
 * pfn list (entries here and a link to a list page). List pages: magic, entries, link, pfns.
 * A link of NO_PAGE ends the chain. Data pages follow the list in order; the last is zero-padded.
 */
const PAGE_MAGIC = 0x50534b58; // "XKSP"
const LIST_MAGIC = 0x4c534b58; // "XKSL"
const PAGE_VERSION = 1;
const NO_PAGE = 0xffffffff;
const HEADER_WORDS = 7;
const LIST_WORDS = 3;
const WORDS = XEN_PAGE_SIZE / 4;
/** 256 MiB of state is not a kernel's: a larger length in a header is corruption. */
const MAX_STATE_PAGES = 1 << 16;

/** The kernel's page allocator, as the state pages need it. */
export interface StatePages {
  allocPfn(): number | undefined;
  freePfn(pfn: number): void;
  va(pfn: number): number;
}

/** FNV-1a over the bytes: the header's check that the pages still hold what was written. */
function checksum(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return h >>> 0;
}

/**
 * Writes `bytes` into pages from `k`'s allocator: the header page's address, and every page taken
 * (header, list pages, data pages), which the caller frees once the state is no longer needed.
 * Out of pages: what it took is given back and it throws KstateError.
 */
export function writeStateToPages(cpu: GuestCpu, k: StatePages, bytes: Uint8Array): { headerVa: number; pfns: number[] } {
  const nData = Math.ceil(bytes.length / XEN_PAGE_SIZE);
  const inHeader = WORDS - HEADER_WORDS;
  const perList = WORDS - LIST_WORDS;
  const nLists = nData <= inHeader ? 0 : Math.ceil((nData - inHeader) / perList);
  const taken: number[] = [];
  for (let i = 0; i < 1 + nLists + nData; i++) {
    const pfn = k.allocPfn();
    if (pfn === undefined) {
      for (const p of taken) k.freePfn(p);
      throw new KstateError(`kstate: no free page for the state (${1 + nLists + nData} pages needed)`);
    }
    taken.push(pfn);
  }
  const header = taken[0]!;
  const lists = taken.slice(1, 1 + nLists);
  const data = taken.slice(1 + nLists);
  const hva = k.va(header);
  for (let w = 0; w < WORDS; w++) cpu.write32(hva + w * 4, 0);
  cpu.write32(hva, PAGE_MAGIC);
  cpu.write32(hva + 4, PAGE_VERSION);
  cpu.write32(hva + 8, bytes.length);
  cpu.write32(hva + 12, nData);
  cpu.write32(hva + 16, checksum(bytes));
  let next = 0;
  const putList = (va: number, first: number, room: number, link: number | undefined) => {
    const n = Math.min(room, nData - next);
    for (let i = 0; i < n; i++) cpu.write32(va + (first + i) * 4, data[next + i]!);
    next += n;
    return { n, link: link ?? NO_PAGE };
  };
  const head = putList(hva, HEADER_WORDS, inHeader, lists[0]);
  cpu.write32(hva + 20, head.n);
  cpu.write32(hva + 24, head.link);
  for (let l = 0; l < nLists; l++) {
    const va = k.va(lists[l]!);
    for (let w = 0; w < WORDS; w++) cpu.write32(va + w * 4, 0);
    const r = putList(va, LIST_WORDS, perList, lists[l + 1]);
    cpu.write32(va, LIST_MAGIC);
    cpu.write32(va + 4, r.n);
    cpu.write32(va + 8, r.link);
  }
  for (let i = 0; i < nData; i++) {
    const va = k.va(data[i]!);
    // A store first: a page that is not writable faults here, not behind the MMU's back.
    cpu.write32(va, 0);
    const page = cpu.pageWords(va);
    const dst = new Uint8Array(page.buffer, page.byteOffset, XEN_PAGE_SIZE);
    const chunk = bytes.subarray(i * XEN_PAGE_SIZE, (i + 1) * XEN_PAGE_SIZE);
    dst.set(chunk);
    dst.fill(0, chunk.length);
  }
  return { headerVa: hva, pfns: taken };
}

/** The bytes writeStateToPages left at `headerVa`, checked (magic, version, lengths, checksum). */
export function readStateFromPages(cpu: GuestCpu, k: Pick<StatePages, "va">, headerVa: number): Uint8Array {
  try {
    return readPages(cpu, k, headerVa);
  } catch (e) {
    if (e instanceof KstateError) throw e;
    // A page fault on a bad pfn, and the like.
    const what = e instanceof Error ? e.message : String((e as { message?: unknown }).message ?? e);
    throw new KstateError(`kstate: cannot read the state pages: ${what}`, { cause: e });
  }
}

function readPages(cpu: GuestCpu, k: Pick<StatePages, "va">, headerVa: number): Uint8Array {
  const bad = (what: string): never => {
    throw new KstateError(`kstate: state pages: ${what}`);
  };
  if (cpu.read32(headerVa) !== PAGE_MAGIC) bad("bad magic in the header page");
  const version = cpu.read32(headerVa + 4);
  if (version !== PAGE_VERSION) bad(`version ${version}, this kernel reads ${PAGE_VERSION}`);
  const length = cpu.read32(headerVa + 8);
  const nData = cpu.read32(headerVa + 12);
  const sum = cpu.read32(headerVa + 16);
  if (nData > MAX_STATE_PAGES || nData !== Math.ceil(length / XEN_PAGE_SIZE)) bad(`${length} bytes in ${nData} pages`);
  const pfns: number[] = [];
  let va = headerVa;
  let first = HEADER_WORDS;
  let n = cpu.read32(headerVa + 20);
  let link = cpu.read32(headerVa + 24);
  for (;;) {
    if (n > WORDS - first || pfns.length + n > nData) bad("the page list is longer than the state");
    for (let i = 0; i < n; i++) pfns.push(cpu.read32(va + (first + i) * 4));
    if (link === NO_PAGE) break;
    if (pfns.length >= nData) bad("the page list goes on past the state");
    va = k.va(link);
    if (cpu.read32(va) !== LIST_MAGIC) bad("bad magic in a list page");
    first = LIST_WORDS;
    n = cpu.read32(va + 4);
    link = cpu.read32(va + 8);
    if (n === 0) bad("an empty list page");
  }
  if (pfns.length !== nData) bad(`${pfns.length} pages listed of ${nData}`);
  const out = new Uint8Array(length);
  for (let i = 0; i < nData; i++) {
    const page = cpu.pageWords(k.va(pfns[i]!));
    const src = new Uint8Array(page.buffer, page.byteOffset, XEN_PAGE_SIZE);
    out.set(src.subarray(0, Math.min(XEN_PAGE_SIZE, length - i * XEN_PAGE_SIZE)), i * XEN_PAGE_SIZE);
  }
  if (checksum(out) !== sum) bad("checksum mismatch: the pages do not hold what was written");
  return out;
}
