// The C library behaviour xenstored's parsing relies on: NUL-separated payload strings, atoi and
// strtol as glibc does them on x86_64. Payload bytes are Latin-1 (one char per byte).

/** A request payload: bytes without copying, decoded lazily. */
export type Bytes = Buffer;

/** get_string: length (with the NUL) of the string at `off`, or 0 when there is no NUL. */
export function getString(p: Bytes, off: number): number {
  if (off >= p.length) return 0;
  const nul = p.indexOf(0, off);
  return nul < 0 ? 0 : nul - off + 1;
}

/** get_strings: the NUL-terminated strings of the payload (bytes after the last NUL are ignored). */
export function getStrings(p: Bytes, max: number): { count: number; vec: string[] } {
  const vec: string[] = [];
  let off = 0;
  let count = 0;
  for (;;) {
    const nul = p.indexOf(0, off);
    if (nul < 0) break;
    if (count < max) vec.push(p.toString("latin1", off, nul));
    count++;
    off = nul + 1;
  }
  return { count, vec };
}

/** onearg: the payload must hold exactly one string, NUL-terminated at its end. */
export function onearg(p: Bytes): string | undefined {
  const n = p.length;
  if (n === 0 || p[n - 1] !== 0 || p.indexOf(0) !== n - 1) return undefined;
  return p.toString("latin1", 0, n - 1);
}

/** The first string of the payload, as C sees `in->buffer` (up to the first NUL or the end). */
export function firstString(p: Bytes): string {
  const nul = p.indexOf(0);
  return p.toString("latin1", 0, nul < 0 ? p.length : nul);
}

/** xs_count_strings: the number of NULs. */
export function countStrings(p: Bytes): number {
  let n = 0;
  let off = p.indexOf(0);
  while (off >= 0) {
    n++;
    off = p.indexOf(0, off + 1);
  }
  return n;
}

function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

function digitValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x7a) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x5a) return c - 0x41 + 10;
  return 99;
}

const LONG_MAX = (1n << 63n) - 1n;
const LONG_MIN = -(1n << 63n);

/** strtol(s, &end, base) for a 64-bit long: the value and the index of `end`. */
export function strtol(s: string, base: number): { value: bigint; end: number } {
  let i = 0;
  while (i < s.length && isSpace(s.charCodeAt(i))) i++;
  let neg = false;
  if (s[i] === "+" || s[i] === "-") {
    neg = s[i] === "-";
    i++;
  }
  if ((base === 0 || base === 16) && s[i] === "0" && (s[i + 1] === "x" || s[i + 1] === "X") && digitValue(s.charCodeAt(i + 2)) < 16) {
    base = 16;
    i += 2;
  } else if (base === 0) {
    base = s[i] === "0" ? 8 : 10;
  }
  const start = i;
  let v = 0n;
  const b = BigInt(base);
  while (i < s.length) {
    const d = digitValue(s.charCodeAt(i));
    if (d >= base) break;
    v = v * b + BigInt(d);
    i++;
  }
  if (i === start) return { value: 0n, end: 0 };
  if (neg) v = -v;
  if (v > LONG_MAX) v = LONG_MAX;
  if (v < LONG_MIN) v = LONG_MIN;
  return { value: v, end: i };
}

/** atoi: (int)strtol(s, NULL, 10). */
export function atoi(s: string): number {
  return Number(BigInt.asIntN(32, strtol(s, 10).value));
}

/** atoi stored in an unsigned int, as xenstored keeps domids and ports. */
export function atou(s: string): number {
  return atoi(s) >>> 0;
}
