// Domain management requests of xenstored_domain.c: INTRODUCE, RELEASE, RESUME, SET_TARGET,
// GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, RESET_WATCHES.

import { DOMID_SELF } from "../../abi/xen.ts";
import type { XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import { atou, getStrings, onearg, strtol } from "./cstr.ts";
import type { Xenstored } from "./daemon.ts";
import type { Domain } from "./domain.ts";
import type { HandlerResult } from "./ops.ts";
import { deleteAllTransactions } from "./transaction.ts";
import { deleteAllWatches } from "./watch.ts";

/** find_connected_domain */
function findConnectedDomain(xs: Xenstored, domid: number): Domain | XsdError {
  const d = xs.domains.get(domid);
  if (d === undefined || !d.introduced) return "ENOENT";
  if (d.conn === null) return "EINVAL";
  return d;
}

/** onearg_domain: a domid argument other than 0. */
function oneargDomain(xs: Xenstored, payload: Buffer): Domain | XsdError {
  const s = onearg(payload);
  if (s === undefined) return "EINVAL";
  const domid = atou(s);
  if (domid === 0) return "EINVAL";
  return findConnectedDomain(xs, domid);
}

/** domid, gfn, evtchn[, ...] */
export function doIntroduce(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const { count, vec } = getStrings(payload, 3);
  if (count < 3) return "EINVAL";
  const domid = atou(vec[0]!);
  const mfn = Number(strtol(vec[1]!, 10).value);
  const port = atou(vec[2]!);
  if (port === 0) return "EINVAL";
  const domain = xs.introduceDomain(domid, mfn, port);
  if (typeof domain === "string") return domain;
  xs.domainConnReset(domain);
  xs.sendAck(conn);
  return undefined;
}

export function doRelease(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const d = oneargDomain(xs, payload);
  if (typeof d === "string") return d;
  xs.tallocFreeConn(d.conn!);
  xs.sendAck(conn);
  return undefined;
}

export function doResume(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const d = oneargDomain(xs, payload);
  if (typeof d === "string") return d;
  d.shutdown = false;
  xs.sendAck(conn);
  return undefined;
}

/** domid, target domid: the first acts with the second one's rights. */
export function doSetTarget(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const { count, vec } = getStrings(payload, 2);
  if (count < 2) return "EINVAL";
  const d = findConnectedDomain(xs, atou(vec[0]!));
  if (typeof d === "string") return d;
  const t = findConnectedDomain(xs, atou(vec[1]!));
  if (typeof t === "string") return t;
  // talloc_reference: the target's connection lives at least as long as this one.
  t.conn!.refHolders.push(d.conn!);
  d.conn!.target = t.conn;
  xs.sendAck(conn);
  return undefined;
}

export function doGetDomainPath(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const s = onearg(payload);
  if (s === undefined) return "EINVAL";
  xs.sendReplyString(conn, `/local/domain/${atou(s)}`);
  return undefined;
}

export function doIsDomainIntroduced(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  const s = onearg(payload);
  if (s === undefined) return "EINVAL";
  const domid = atou(s);
  const yes = domid === DOMID_SELF || xs.domains.get(domid)?.introduced === true;
  xs.sendReplyString(conn, yes ? "T" : "F");
  return undefined;
}

export function doResetWatches(xs: Xenstored, conn: Connection): HandlerResult {
  deleteAllWatches(xs, conn);
  // 4.17 asserts here when the request came with a transaction id; we drop it with the rest.
  conn.transaction = null;
  deleteAllTransactions(xs, conn);
  xs.sendAck(conn);
  return undefined;
}
