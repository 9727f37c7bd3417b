// The node requests of xenstored_core.c: READ, WRITE, MKDIR, RM, DIRECTORY(_PART), GET/SET_PERMS.
// A handler returns undefined once it has replied, an error to answer, or null for C's errno 0
// (a path where 4.17 sends no reply and then aborts on an assertion).

import { XENSTORE_PAYLOAD_MAX, type XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import { atou, countStrings, firstString, getStrings, onearg } from "./cstr.ts";
import type { Xenstored } from "./daemon.ts";
import { createNode, getNode, readNode, rmNode, writeNode } from "./nodes.ts";
import { getParent, permToString, stringsToPerms, XS_PERM } from "./paths.ts";
import { EMPTY, type XsNode } from "./store.ts";

export type HandlerResult = XsdError | null | undefined;

/**
 * get_node_canonicalized. A malformed argument (`name` undefined) is EINVAL: 4.17 answers with
 * whatever errno it last held (and asserts when that is 0); later Xen answers EINVAL.
 */
function getNodeCanonicalized(xs: Xenstored, conn: Connection, name: string | undefined, perm: number): { node: XsNode | null; name: string | undefined } {
  if (name === undefined) {
    xs.errno = "EINVAL";
    return { node: null, name };
  }
  const canonical = xs.canonicalize(conn, name);
  return { node: getNode(xs, conn, canonical, perm), name: canonical };
}

export function doRead(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const { node } = getNodeCanonicalized(xs, conn, onearg(payload), XS_PERM.READ);
  if (node === null) return xs.errno;
  xs.sendReply(conn, node.data);
  return undefined;
}

export function sendDirectory(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const { node } = getNodeCanonicalized(xs, conn, onearg(payload), XS_PERM.READ);
  if (node === null) return xs.errno;
  xs.sendReply(conn, node.children);
  return undefined;
}

/** send_directory_part: "<generation>\0" then children from a byte offset, "\0"-closed when complete. */
export function sendDirectoryPart(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  if (countStrings(payload) !== 2) return "EINVAL";
  const first = firstString(payload);
  const { node } = getNodeCanonicalized(xs, conn, first, XS_PERM.READ);
  if (node === null) return xs.errno;
  const off = atou(firstString(payload.subarray(first.length + 1)));
  const gen = `${node.generation}`;
  const genlen = gen.length + 1;
  const children = node.children;
  const childlen = children.length;
  if (off >= childlen) {
    xs.sendReply(conn, `${gen}\0\0`);
    return undefined;
  }
  let len = 0;
  const maxlen = XENSTORE_PAYLOAD_MAX - genlen - 1;
  let child = off;
  for (;;) {
    let end = child;
    while (end < childlen && children[end] !== 0) end++;
    if (len + (end - child) >= maxlen) break;
    len += end - child + 1;
    child = end + 1;
    if (off + len === childlen) break;
  }
  const complete = off + len === childlen;
  const data = Buffer.allocUnsafe(genlen + len + (complete ? 1 : 0));
  data.write(gen, 0, "latin1");
  data[genlen - 1] = 0;
  data.set(children.subarray(off, off + len), genlen);
  if (complete) data[genlen + len] = 0;
  xs.sendReply(conn, data);
  return undefined;
}

/** path, data... */
export function doWrite(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const nul = payload.indexOf(0);
  if (nul < 0) return "EINVAL";
  // The node keeps the value: copy it out of the input buffer.
  const data = Uint8Array.prototype.slice.call(payload, nul + 1);
  const r = getNodeCanonicalized(xs, conn, payload.toString("latin1", 0, nul), XS_PERM.WRITE);
  let node = r.node;
  const name = r.name!;
  if (node === null) {
    if (xs.errno !== "ENOENT") return xs.errno;
    node = createNode(xs, conn, name, data);
    if (node === null) return xs.errno;
  } else {
    node.data = data;
    if (writeNode(xs, conn, node, false) !== undefined) return xs.errno;
  }
  xs.fireWatches(conn, name, node, false, null);
  xs.sendAck(conn);
  return undefined;
}

export function doMkdir(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const r = getNodeCanonicalized(xs, conn, onearg(payload), XS_PERM.WRITE);
  // An existing node is fine.
  if (r.node === null) {
    if (xs.errno !== "ENOENT") return xs.errno;
    if (r.name === undefined) return "ENOMEM";
    const node = createNode(xs, conn, r.name, EMPTY);
    if (node === null) return xs.errno;
    xs.fireWatches(conn, r.name, node, false, null);
  }
  xs.sendAck(conn);
  return undefined;
}

export function doRm(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const r = getNodeCanonicalized(xs, conn, onearg(payload), XS_PERM.WRITE);
  if (r.node === null) {
    // Not there: fine if the parent is.
    if (xs.errno === "ENOENT") {
      if (r.name === undefined) return "ENOMEM";
      if (readNode(xs, conn, getParent(r.name)) !== null) {
        xs.sendAck(conn);
        return undefined;
      }
      const e = xs.errno as XsdError | null;
      if (e !== "ENOMEM" && e !== "ENOSPC") xs.errno = "ENOENT";
    }
    return xs.errno;
  }
  if (r.name === "/") return "EINVAL";
  const ret = rmNode(xs, conn, r.name!);
  if (ret !== 0) return ret;
  xs.sendAck(conn);
  return undefined;
}

export function doGetPerms(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const { node } = getNodeCanonicalized(xs, conn, onearg(payload), XS_PERM.READ);
  if (node === null) return xs.errno;
  let s = "";
  for (const p of node.perms) s += `${permToString(p)}\0`;
  xs.sendReply(conn, s);
  return undefined;
}

export function doSetPerms(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  let num = countStrings(payload);
  if (num < 2) return "EINVAL";
  num--;
  if (conn.unprivileged && num > xs.quotas.permissions) return "ENOSPC";
  const perms = stringsToPerms(getStrings(payload, num + 1).vec.slice(1));
  if (perms === undefined) {
    xs.errno = "EINVAL";
    return "EINVAL";
  }
  xs.domains.allocPermrefs(perms);
  if (perms[0]!.perms & XS_PERM.IGNORE) return "ENOENT";
  const name = firstString(payload);
  if (name.charCodeAt(0) === 0x40) {
    const err = xs.setPermsSpecial(conn, name, perms);
    if (err !== undefined) return err;
    xs.sendAck(conn);
    return undefined;
  }
  // Owners (and the privileged) only.
  const r = getNodeCanonicalized(xs, conn, name, XS_PERM.WRITE | XS_PERM.OWNER);
  const node = r.node;
  if (node === null) return xs.errno;
  if (conn.unprivileged && perms[0]!.id !== node.perms[0]!.id) return "EPERM";
  const old = node.perms;
  xs.domains.entryDec(conn, node);
  node.perms = perms;
  if (xs.domains.entryInc(conn, node) !== undefined) {
    node.perms = old;
    xs.domains.entryInc(conn, node);
    return "ENOMEM";
  }
  if (writeNode(xs, conn, node, false) !== undefined) {
    const saved = xs.errno;
    xs.domains.entryDec(conn, node);
    node.perms = old;
    xs.domains.entryInc(conn, node);
    xs.errno = saved;
    return saved;
  }
  // Watchers who could read the node under its old permissions hear of the change too.
  xs.fireWatches(conn, r.name!, node, false, old);
  xs.sendAck(conn);
  return undefined;
}
