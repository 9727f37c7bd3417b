// Node primitives of xenstored_core.c: reading and writing nodes with permissions, accounting and
// transactions, creating missing parents, and removing subtrees by walking them. Functions that
// fail return null or an error and leave C's `errno` in xs.errno, which some callers answer with.

import type { XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import type { Xenstored } from "./daemon.ts";
import { baseName, childName, getParent, isValidNodename, type Perm, XS_PERM } from "./paths.ts";
import {
  appendChild,
  EMPTY,
  findChild,
  type NodeRec,
  NO_GENERATION,
  nameAt,
  nameLengthAt,
  recordSize,
  removeChildAt,
  XsNode,
} from "./store.ts";
import { Access, accessNode, transactionKey } from "./transaction.ts";

// walk_node_tree() results.
export const WALK_TREE_SUCCESS_STOP = -100;
export const WALK_TREE_ERROR_STOP = -1;
export const WALK_TREE_OK = 0;
export const WALK_TREE_SKIP_CHILDREN = 1;
export const WALK_TREE_RM_CHILDENTRY = 2;

export interface WalkFuncs<A> {
  enter?(xs: Xenstored, conn: Connection | null, node: XsNode, arg: A): number;
  exit?(xs: Xenstored, conn: Connection | null, node: XsNode, arg: A): number;
  enoent?(xs: Xenstored, conn: Connection | null, parent: XsNode | null, name: string, arg: A): number;
}

/** Whether the key is a transaction's copy ("<generation>/<path>"). */
function isTransactionKey(key: string): boolean {
  return key.charCodeAt(0) !== 0x2f;
}

/** do_tdb_write: store a record, moving its memory accounting to its (new) owner. */
export function tdbWrite(xs: Xenstored, conn: Connection | null, key: string, rec: NodeRec, noQuotaCheck: boolean): XsdError | undefined {
  const old = xs.store.get(key);
  // A transaction's copies are accounted to the transaction's connection.
  const ta = conn !== null && isTransactionKey(key);
  const keyLen = key.length;
  let oldDomid = 0;
  let oldMem = 0;
  if (old !== undefined) {
    oldDomid = ta ? conn.domid : old.perms[0]!.id;
    oldMem = recordSize(old) + keyLen;
    xs.domains.memoryAdd(oldDomid, -oldMem, true);
  }
  const newDomid = ta ? conn.domid : rec.perms[0]!.id;
  const err = xs.domains.memoryAdd(newDomid, recordSize(rec) + keyLen, noQuotaCheck);
  if (err !== undefined) {
    if (old !== undefined) xs.domains.memoryAdd(oldDomid, oldMem, true);
    return err;
  }
  xs.store.set(key, rec);
  return undefined;
}

/** do_tdb_delete: true when there was nothing to delete (EIO). */
export function tdbDelete(xs: Xenstored, conn: Connection | null, key: string): boolean {
  const old = xs.store.get(key);
  if (old === undefined) {
    xs.errno = "EIO";
    return true;
  }
  xs.store.delete(key);
  const domid = conn !== null && isTransactionKey(key) ? conn.domid : old.perms[0]!.id;
  xs.domains.memoryAdd(domid, -(recordSize(old) + key.length), true);
  return false;
}

/** domain_adjust_node_perms: grants older than the granted domain are stale (a reused domid). */
function adjustNodePerms(xs: Xenstored, node: XsNode): void {
  const perms = node.perms;
  let copy: Perm[] | null = null;
  for (let i = 1; i < perms.length; i++) {
    const p = perms[i]!;
    if (p.perms & XS_PERM.IGNORE) continue;
    const d = xs.domains.get(p.id);
    if (d !== undefined && d.generation <= node.generation) continue;
    copy ??= perms.slice();
    copy[i] = { id: p.id, perms: p.perms | XS_PERM.IGNORE };
  }
  if (copy !== null) node.perms = copy;
}

/** read_node: no permission check beyond the transaction's bookkeeping. */
export function readNode(xs: Xenstored, conn: Connection | null, name: string): XsNode | null {
  const rec = xs.store.get(transactionKey(conn, name));
  if (rec === undefined) {
    if (conn?.transaction) {
      const node = new XsNode(name, NO_GENERATION, [], EMPTY, EMPTY);
      const err = accessNode(xs, conn, node, Access.Read, false);
      xs.errno = err === 0 || err === -1 ? "ENOENT" : err;
    } else {
      xs.errno = "ENOENT";
    }
    return null;
  }
  const node = new XsNode(name, rec.generation, rec.perms as Perm[], rec.data, rec.children);
  adjustNodePerms(xs, node);
  if (conn?.transaction) {
    const err = accessNode(xs, conn, node, Access.Read, false);
    if (err !== 0 && err !== -1) {
      xs.errno = err;
      return null;
    }
  }
  return node;
}

/** read_node_can_propagate_errno */
function canPropagate(e: XsdError | null): boolean {
  return e === "ENOMEM" || e === "ENOSPC";
}

/** write_node_raw */
export function writeNodeRaw(xs: Xenstored, conn: Connection | null, key: string, node: XsNode, noQuotaCheck: boolean): XsdError | undefined {
  adjustNodePerms(xs, node);
  const rec = node.toRecord();
  if (!noQuotaCheck && conn?.unprivileged && recordSize(rec) >= xs.quotas.nodeSize) {
    xs.errno = "ENOSPC";
    return "ENOSPC";
  }
  // C answers EIO for any failure here, the memory quota included.
  if (tdbWrite(xs, conn, key, rec, noQuotaCheck) !== undefined) return "EIO";
  return undefined;
}

/** write_node: a modification (new generation), into the transaction if there is one. */
export function writeNode(xs: Xenstored, conn: Connection | null, node: XsNode, noQuotaCheck: boolean): XsdError | undefined {
  const acc = accessNode(xs, conn, node, Access.Write, true);
  if (acc !== 0 && acc !== -1) {
    xs.errno = acc;
    return acc;
  }
  const err = writeNodeRaw(xs, conn, node.key, node, noQuotaCheck);
  if (err !== undefined && conn?.transaction) conn.transaction.fail = true;
  return err;
}

/** perm_for_conn: privileged connections, owners and their targets get everything. */
export function permForConn(conn: Connection, perms: readonly Perm[]): number {
  const mask = XS_PERM.READ | XS_PERM.WRITE | XS_PERM.OWNER;
  const owner = perms[0]!;
  const target = conn.target;
  if (!conn.unprivileged || owner.id === conn.domid || (target !== null && owner.id === target.domid)) return mask;
  for (let i = 1; i < perms.length; i++) {
    const p = perms[i]!;
    if (!(p.perms & XS_PERM.IGNORE) && (p.id === conn.domid || (target !== null && p.id === target.domid))) return p.perms & mask;
  }
  return owner.perms & mask;
}

/** ask_parents: the permission of the closest existing ancestor, or an error to propagate. */
function askParents(xs: Xenstored, conn: Connection, name: string): number | XsdError {
  let node: XsNode | null = null;
  do {
    name = getParent(name);
    node = readNode(xs, conn, name);
    if (node !== null) break;
    if (canPropagate(xs.errno)) return xs.errno!;
  } while (name !== "/");
  if (node === null) {
    xs.corrupt(conn, "No permissions file at root");
    return XS_PERM.NONE;
  }
  return permForConn(conn, node.perms);
}

/** errno_from_parents: say EACCES rather than leak whether an unreadable node exists. */
function errnoFromParents(xs: Xenstored, conn: Connection, name: string, errnum: XsdError | null, perm: number): XsdError | null {
  if (errnum === "ENOMEM") return errnum;
  const parentPerm = askParents(xs, conn, name);
  if (typeof parentPerm === "string") return parentPerm;
  return parentPerm & perm ? errnum : "EACCES";
}

/** get_node: read a node the connection has `perm` on; else null with xs.errno. */
export function getNode(xs: Xenstored, conn: Connection, name: string, perm: number): XsNode | null {
  if (!isValidNodename(name, xs.quotas.pathMax)) {
    xs.errno = "EINVAL";
    return null;
  }
  let node = readNode(xs, conn, name);
  if (node !== null && (permForConn(conn, node.perms) & perm) !== perm) {
    xs.errno = "EACCES";
    node = null;
  }
  if (node === null && !canPropagate(xs.errno)) xs.errno = errnoFromParents(xs, conn, name, xs.errno, perm);
  return node;
}

/** construct_node: the node and its missing ancestors, linked through `parent` up to an existing one. */
function constructNode(xs: Xenstored, conn: Connection, name: string): XsNode | null {
  const names: string[] = [];
  let parentName = name;
  let parent: XsNode | null = null;
  while (parent === null) {
    names.push(parentName);
    parentName = getParent(parentName);
    parent = readNode(xs, conn, parentName);
    if (parent === null && (xs.errno !== "ENOENT" || parentName === "/")) return null;
  }
  let node: XsNode = parent;
  for (let level = names.length; level > 0; level--) {
    const nodeName = names[level - 1]!;
    parent.children = appendChild(parent.children, baseName(nodeName));
    // Inherit the parent's permissions; an unprivileged domain owns what it creates.
    const perms = parent.perms.slice();
    if (conn.unprivileged) perms[0] = { id: conn.domid, perms: perms[0]!.perms };
    node = new XsNode(nodeName, 0, perms, EMPTY, EMPTY);
    node.parent = parent;
    parent = node;
  }
  return node;
}

/** destroy_node_rm */
function destroyNodeRm(xs: Xenstored, conn: Connection | null, node: XsNode): void {
  if (node.name === "/") xs.corrupt(null, "Destroying root node!");
  tdbDelete(xs, conn, node.key);
}

/** create_node: write the new nodes bottom-up, then the existing parent with its new child. */
export function createNode(xs: Xenstored, conn: Connection, name: string, data: Uint8Array): XsNode | null {
  const node = constructNode(xs, conn, name);
  if (node === null) return null;
  if (conn.transaction) conn.transaction.nodeCreated = true;
  node.data = data;
  let ret: XsdError | undefined;
  let i: XsNode | null = node;
  for (; i !== null; i = i.parent) {
    if (i.parent !== null && xs.domains.entry(conn) >= xs.quotas.nodes) {
      ret = "ENOSPC";
      break;
    }
    ret = writeNode(xs, conn, i, false);
    if (ret !== undefined) break;
    if (i.parent !== null && xs.domains.entryInc(conn, i) !== undefined) {
      destroyNodeRm(xs, conn, i);
      return null;
    }
  }
  if (ret === undefined) return node;
  // Undo the nodes already written.
  for (let j: XsNode | null = node; j !== null && j !== i; j = j.parent) {
    destroyNodeRm(xs, conn, j);
    xs.domains.entryDec(conn, j);
    if (conn.transaction) conn.transaction.fail = true;
  }
  xs.errno = ret;
  return null;
}

/** remove_child_entry: the parent rewritten without the child at `off`. */
function removeChildEntry(xs: Xenstored, conn: Connection | null, node: XsNode, off: number): XsdError | undefined {
  node.children = removeChildAt(node.children, off);
  return writeNode(xs, conn, node, true);
}

/** delete_child: leaves xs.errno null (C's errno 0) on success. */
function deleteChild(xs: Xenstored, conn: Connection | null, node: XsNode, child: string): boolean {
  const off = findChild(node.children, child);
  if (off >= 0) {
    xs.errno = removeChildEntry(xs, conn, node, off) !== undefined ? "EIO" : null;
    return xs.errno !== null;
  }
  xs.corrupt(conn, `Can't find child '${child}' in ${node.name}`);
  xs.errno = "EIO";
  return true;
}

/** rm_from_parent: drop the entry of the child just walked from the parent (and rewrite it). */
function rmFromParent(xs: Xenstored, conn: Connection | null, parent: XsNode | null): number {
  if (parent === null) return WALK_TREE_ERROR_STOP;
  let off = parent.childoff - 1;
  while (off > 0 && parent.children[off - 1] !== 0) off--;
  if (removeChildEntry(xs, conn, parent, off) !== undefined) {
    xs.log(`treewalk: child entry could not be removed from '${parent.name}'`);
    return WALK_TREE_ERROR_STOP;
  }
  parent.childoff = off;
  return WALK_TREE_OK;
}

function walkCallFunc<A>(
  xs: Xenstored,
  conn: Connection | null,
  node: XsNode,
  parent: XsNode | null,
  arg: A,
  func: WalkFuncs<A>["enter"],
): number {
  if (func === undefined) return WALK_TREE_OK;
  let ret = func(xs, conn, node, arg);
  if (ret === WALK_TREE_RM_CHILDENTRY && parent !== null) ret = rmFromParent(xs, conn, parent);
  return ret;
}

/** walk_node_tree: enter() before a node's children, exit() after them. */
export function walkNodeTree<A>(xs: Xenstored, conn: Connection | null, root: string, funcs: WalkFuncs<A>, arg: A): number {
  let ret = 0;
  let name = root;
  let node: XsNode | null = null;
  let parent: XsNode | null = null;
  while (ret >= 0) {
    if (node !== null) {
      if (ret || node.childoff >= node.children.length) {
        parent = node.parent;
        ret = walkCallFunc(xs, conn, node, parent, arg, funcs.exit);
        if (parent === null) break;
        node = parent;
        continue;
      }
      name = childName(node.name, nameAt(node.children, node.childoff));
      node.childoff += nameLengthAt(node.children, node.childoff) + 1;
      parent = node;
    }
    node = readNode(xs, conn, name);
    if (node === null) {
      if (xs.errno === "ENOENT" && funcs.enoent) ret = funcs.enoent(xs, conn, parent, name, arg);
      else ret = WALK_TREE_ERROR_STOP;
      if (parent === null) break;
      if (ret === WALK_TREE_RM_CHILDENTRY) ret = rmFromParent(xs, conn, parent);
      if (ret < 0) break;
      node = parent;
      continue;
    }
    node.parent = parent;
    node.childoff = 0;
    ret = walkCallFunc(xs, conn, node, parent, arg, funcs.enter);
  }
  return ret < 0 ? ret : WALK_TREE_OK;
}

/** delnode_sub: delete one node of the subtree (children first) and fire its watches. */
function delnodeSub(xs: Xenstored, conn: Connection | null, node: XsNode, root: string): number {
  const ret = accessNode(xs, conn, node, Access.Delete, true);
  if (ret !== 0 && ret !== -1) {
    xs.errno = ret;
    return WALK_TREE_SUCCESS_STOP;
  }
  if (ret === 0 && tdbDelete(xs, conn, node.key)) return WALK_TREE_SUCCESS_STOP;
  // While the node's permissions can still be seen; the root fires for its whole subtree.
  xs.fireWatches(conn, node.name, node, root !== node.name, null);
  xs.domains.entryDec(conn, node);
  return WALK_TREE_RM_CHILDENTRY;
}

const RM_FUNCS: WalkFuncs<string> = { exit: delnodeSub };

/** rm_node: remove a node and its subtree; 0 or an error (possibly C's stale errno). */
export function rmNode(xs: Xenstored, conn: Connection | null, name: string): XsdError | 0 | null {
  const parent = readNode(xs, conn, getParent(name));
  if (parent === null) return canPropagate(xs.errno) ? xs.errno : "EINVAL";
  const ret = walkNodeTree(xs, conn, name, RM_FUNCS, name);
  if (ret < 0) {
    if (ret === WALK_TREE_ERROR_STOP) {
      xs.corrupt(conn, `error when deleting sub-nodes of ${name}`);
      xs.errno = "EIO";
    }
    return xs.errno;
  }
  if (deleteChild(xs, conn, parent, baseName(name))) return xs.errno;
  return 0;
}
