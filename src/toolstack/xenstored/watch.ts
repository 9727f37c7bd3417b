// Watches (xenstored_watch.c, 4.17): no depth argument and no @releaseDomain/<domid> yet; a watch
// fires once when registered; events for relative watches are relative.

import { XENSTORE_REL_PATH_MAX, type XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import { getStrings } from "./cstr.ts";
import type { Xenstored } from "./daemon.ts";
import { getParent, isChild, isValidNodename, type Perm, XS_PERM } from "./paths.ts";
import type { XsNode } from "./store.ts";

export class Watch {
  constructor(
    /** Absolute path, or "@..." */
    readonly node: string,
    readonly token: string,
    /** Set for a relative watch: the prefix stripped from its events. */
    readonly relativePath: string | null,
  ) {}
}

/** get_watch_path */
export function watchPath(w: Watch, name: string): string {
  if (w.relativePath === null) return name;
  let at = w.relativePath.length;
  if (name.charCodeAt(at) === 0x2f) at++;
  return name.slice(at);
}

/** watch_permitted: the watcher may read the node or its parent (or could read it before a chmod). */
function watchPermitted(xs: Xenstored, conn: Connection, name: string, node: XsNode | null, perms: readonly Perm[] | null): boolean {
  if (perms !== null && xs.permForConn(conn, perms) & XS_PERM.READ) return true;
  if (node === null) {
    node = xs.readNode(conn, name);
    if (node === null) return false;
  }
  if (xs.permForConn(conn, node.perms) & XS_PERM.READ) return true;
  let parent = node.parent;
  if (parent === null) {
    parent = xs.readNode(conn, getParent(node.name));
    if (parent === null) return false;
  }
  return (xs.permForConn(conn, parent.perms) & XS_PERM.READ) !== 0;
}

/**
 * fire_watches: queue an event for every matching watch the watcher may see. Inside a
 * transaction the event waits for the commit. `exact` matches the watched path only.
 */
export function fireWatches(xs: Xenstored, conn: Connection | null, name: string, node: XsNode | null, exact: boolean, perms: readonly Perm[] | null): void {
  if (conn?.transaction) {
    xs.queueWatches(conn, name, exact);
    return;
  }
  if (xs.watchCount === 0) return;
  const req = conn?.unprivileged ? conn.in : null;
  const special = name.charCodeAt(0) === 0x40;
  for (const i of xs.connections) {
    if (i.watches.length === 0) continue;
    if (special ? !xs.checkPermsSpecial(name, i) : !watchPermitted(xs, i, name, node, perms)) continue;
    for (const w of i.watches) {
      if (exact ? name === w.node : isChild(name, w.node)) xs.sendEvent(req, i, watchPath(w, name), w.token);
    }
  }
}

export function doWatch(xs: Xenstored, conn: Connection, payload: Buffer): XsdError | undefined {
  const { count, vec } = getStrings(payload, 2);
  if (count !== 2) return "EINVAL";
  let path = vec[0]!;
  const token = vec[1]!;
  let relative: boolean;
  if (path.charCodeAt(0) === 0x40) {
    relative = false;
    if (path.length > XENSTORE_REL_PATH_MAX) return "EINVAL";
  } else {
    relative = path.charCodeAt(0) !== 0x2f;
    path = xs.canonicalize(conn, path);
    if (!isValidNodename(path, xs.quotas.pathMax)) return "EINVAL";
  }
  for (const w of conn.watches) if (w.node === path && w.token === token) return "EEXIST";
  // C's check is ">": one watch above the quota is allowed.
  if (conn.unprivileged && conn.domain!.nbwatch > xs.quotas.watches) return "E2BIG";
  if (xs.domains.memoryAdd(conn.domid, path.length + token.length, false)) return "ENOMEM";
  const w = new Watch(path, token, relative ? xs.implicitPath(conn) : null);
  if (conn.domain !== null) conn.domain.nbwatch++;
  conn.watches.push(w);
  xs.watchCount++;
  xs.sendAck(conn);
  // Fired once up front, not linked to the WATCH request.
  xs.sendEvent(null, conn, watchPath(w, w.node), w.token);
  return undefined;
}

export function doUnwatch(xs: Xenstored, conn: Connection, payload: Buffer): XsdError | undefined {
  const { count, vec } = getStrings(payload, 2);
  if (count !== 2) return "EINVAL";
  const node = xs.canonicalize(conn, vec[0]!);
  const token = vec[1]!;
  const at = conn.watches.findIndex((w) => w.node === node && w.token === token);
  if (at < 0) return "ENOENT";
  const [w] = conn.watches.splice(at, 1);
  xs.domains.memoryAdd(conn.domid, -(w!.node.length + w!.token.length), true);
  xs.watchCount--;
  if (conn.domain !== null && conn.domain.nbwatch > 0) conn.domain.nbwatch--;
  xs.sendAck(conn);
  return undefined;
}

/** conn_delete_all_watches */
export function deleteAllWatches(xs: Xenstored, conn: Connection): void {
  for (const w of conn.watches) {
    xs.domains.memoryAdd(conn.domid, -(w.node.length + w.token.length), true);
    xs.watchCount--;
    if (conn.domain !== null && conn.domain.nbwatch > 0) conn.domain.nbwatch--;
  }
  conn.watches.length = 0;
}
