// Node names and permissions as C xenstored 4.17 checks, parses and prints them.

import { strtol } from "./cstr.ts";

// --- paths ------------------------------------------------------------------------------------

const VALID_CHAR = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@") VALID_CHAR[c.charCodeAt(0)] = 1;

/** `sscanf(node, "/local/domain/%5u/%n")`: the length of that prefix when it matches, else 0. */
const LOCAL_DOMAIN = /^\/local\/domain\/(?:[+-]\d{1,4}|\d{1,5})\//;

/** is_valid_nodename: absolute, no trailing or double slash, allowed characters, length quota. */
export function isValidNodename(node: string, pathMax: number): boolean {
  const n = node.length;
  if (n === 0 || node.charCodeAt(0) !== 0x2f) return false;
  if (node.charCodeAt(n - 1) === 0x2f && n !== 1) return false;
  if (node.includes("//")) return false;
  // The per-domain prefix does not count against the relative-path quota.
  let localOff = 0;
  if (node.startsWith("/local/domain/")) localOff = LOCAL_DOMAIN.exec(node)?.[0].length ?? 0;
  if (n > localOff + pathMax) return false;
  for (let i = 0; i < n; i++) {
    const c = node.charCodeAt(i);
    if (c >= 128 || VALID_CHAR[c] === 0) return false;
  }
  return true;
}

/** get_parent: "/" for top-level nodes (and for "/"). */
export function getParent(node: string): string {
  const slash = node.lastIndexOf("/");
  return slash <= 0 ? "/" : node.slice(0, slash);
}

/** basename: the last component (never called for "/"). */
export function baseName(node: string): string {
  return node.slice(node.lastIndexOf("/") + 1);
}

/** child_name */
export function childName(parent: string, child: string): string {
  return parent === "/" ? `/${child}` : `${parent}/${child}`;
}

/** is_child: `child` is `parent` or below it; everything is below "/". */
export function isChild(child: string, parent: string): boolean {
  if (parent === "/") return true;
  if (!child.startsWith(parent)) return false;
  return child.length === parent.length || child.charCodeAt(parent.length) === 0x2f;
}

// --- permissions ------------------------------------------------------------------------------

/** struct xs_permissions bits (xenstore_lib.h). */
export const XS_PERM = { NONE: 0, READ: 1, WRITE: 2, ENOENT_OK: 4, OWNER: 8, IGNORE: 16 } as const;

/** One permission entry: the first of a node's entries is its owner and the default. */
export interface Perm {
  readonly id: number;
  readonly perms: number;
}

/** xs_strings_to_perms over `num` NUL-separated entries starting at `strings`; undefined = EINVAL. */
export function stringsToPerms(strings: readonly string[]): Perm[] | undefined {
  const out: Perm[] = [];
  for (const s of strings) {
    let perms: number;
    switch (s[0]) {
      case "r":
        perms = XS_PERM.READ;
        break;
      case "w":
        perms = XS_PERM.WRITE;
        break;
      case "b":
        perms = XS_PERM.READ | XS_PERM.WRITE;
        break;
      case "n":
        perms = XS_PERM.NONE;
        break;
      default:
        return undefined;
    }
    const rest = s.slice(1);
    const { value, end } = strtol(rest, 0);
    if (rest.length === 0 || end !== rest.length) return undefined;
    out.push({ id: Number(BigInt.asUintN(32, value)), perms });
  }
  return out;
}

const PERM_LETTER = ["n", "r", "w", "b"] as const;

/** xs_perm_to_string: the IGNORE mark is not shown; the id prints as a signed int. */
export function permToString(p: Perm): string {
  return `${PERM_LETTER[p.perms & 3]}${p.id | 0}`;
}
