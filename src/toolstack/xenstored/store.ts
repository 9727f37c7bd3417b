// The node database: a flat map from key to record, as C xenstored keeps nodes in TDB. Keys are
// node paths, or "<transaction generation>/<path>" for a transaction's private copy of a node.
// Records are never modified in place, so a transaction's copy can share a record.

import type { Perm } from "./paths.ts";

/** A stored node (struct xs_tdb_record_hdr and what follows it). */
export interface NodeRec {
  readonly generation: number;
  readonly perms: readonly Perm[];
  readonly data: Uint8Array;
  /** Child names, each followed by a NUL, in creation order. */
  readonly children: Uint8Array;
}

/** No node: its "generation" when a transaction records that it read a missing node. */
export const NO_GENERATION = -1;

/** sizeof(struct xs_tdb_record_hdr): u64 generation, three u32, padded to 8. */
const RECORD_HDR_SIZE = 24;
/** sizeof(struct xs_permissions) */
const PERM_SIZE = 8;

/** The record's size in TDB, which C accounts (plus the key length) to the node's owner. */
export function recordSize(r: NodeRec): number {
  return RECORD_HDR_SIZE + PERM_SIZE * r.perms.length + r.data.length + r.children.length;
}

export const EMPTY = new Uint8Array(0);

/** struct node: a node being worked on by a request. */
export class XsNode {
  /** Where write_node() stored it (set by access_node). */
  key = "";
  parent: XsNode | null = null;
  /** Walk position in `children`. */
  childoff = 0;
  constructor(
    public name: string,
    public generation: number,
    public perms: Perm[],
    public data: Uint8Array,
    public children: Uint8Array,
  ) {}

  toRecord(): NodeRec {
    return { generation: this.generation, perms: this.perms, data: this.data, children: this.children };
  }
}

/** add_child: the list with `base` appended. */
export function appendChild(children: Uint8Array, base: string): Uint8Array {
  const out = new Uint8Array(children.length + base.length + 1);
  out.set(children);
  Buffer.from(out.buffer, out.byteOffset + children.length, base.length).write(base, "latin1");
  return out;
}

/** The offset of child `name` in the list, or -1. */
export function findChild(children: Uint8Array, name: string): number {
  let off = 0;
  while (off < children.length) {
    let end = off;
    while (children[end] !== 0) end++;
    if (end - off === name.length) {
      let same = true;
      for (let i = 0; i < name.length; i++) {
        if (children[off + i] !== name.charCodeAt(i)) {
          same = false;
          break;
        }
      }
      if (same) return off;
    }
    off = end + 1;
  }
  return -1;
}

/** memdel of the entry at `off` (remove_child_entry). */
export function removeChildAt(children: Uint8Array, off: number): Uint8Array {
  let end = off;
  while (children[end] !== 0) end++;
  const out = new Uint8Array(children.length - (end + 1 - off));
  out.set(children.subarray(0, off));
  out.set(children.subarray(end + 1), off);
  return out;
}

/** The length of the NUL-terminated name at `off`. */
export function nameLengthAt(children: Uint8Array, off: number): number {
  let end = off;
  while (end < children.length && children[end] !== 0) end++;
  return end - off;
}

export function nameAt(children: Uint8Array, off: number): string {
  return Buffer.from(children.buffer, children.byteOffset + off, nameLengthAt(children, off)).toString("latin1");
}
