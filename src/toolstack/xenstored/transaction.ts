// Transactions as xenstored_transaction.c does them in 4.17: nodes a transaction touches are
// copied under "<generation>/<path>" keys; every node it read carries the generation it saw, and
// the commit fails with EAGAIN when any of them changed meanwhile (read-then-written nodes too).

import type { XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import type { Xenstored } from "./daemon.ts";
import type { Perm } from "./paths.ts";
import { NO_GENERATION, type XsNode } from "./store.ts";

/** What access_node() is asked for. */
export const Access = { Read: 0, Write: 1, Delete: 2 } as const;
export type Access = (typeof Access)[keyof typeof Access];

/** struct accessed_node */
export class AccessedNode {
  /** Generation seen when first read, checked at commit (check_gen). */
  generation = 0;
  perms: Perm[] | null = null;
  checkGen = false;
  modified = false;
  /** The transaction has its own record under transName. */
  taNode = false;
  fireWatch = false;
  watchExact = false;
  constructor(
    readonly transName: string,
    readonly node: string,
  ) {}
}

export class Transaction {
  nodes = 0;
  /** Accessed nodes in access order (the commit writes them and fires watches in this order). */
  readonly accessed = new Map<string, AccessedNode>();
  /** Node-count changes per owner, applied at commit (changed_domains). */
  readonly changedDomains = new Map<number, number>();
  nodeCreated = false;
  fail = false;
  destroyed = false;
  constructor(
    readonly conn: Connection,
    readonly id: number,
    readonly generation: number,
  ) {}

  entryInc(domid: number): void {
    this.changedDomains.set(domid, (this.changedDomains.get(domid) ?? 0) + 1);
  }

  entryDec(domid: number): void {
    this.changedDomains.set(domid, (this.changedDomains.get(domid) ?? 0) - 1);
  }
}

/** transaction_prepend: the key a node is read from for this connection. */
export function transactionKey(conn: Connection | null, name: string): string {
  const t = conn?.transaction;
  if (t) {
    const i = t.accessed.get(name);
    if (i !== undefined) return i.transName;
  }
  return name;
}

/**
 * access_node: a node is read, written or deleted. Modifications take a new generation; inside
 * a transaction the node is recorded (a read one copied to the transaction). Returns 0, an
 * error, or -1 for "deleting a node this transaction never had: nothing to delete". Sets
 * node.key when `wantKey`.
 */
export function accessNode(xs: Xenstored, conn: Connection | null, node: XsNode, type: Access, wantKey: boolean): 0 | -1 | XsdError {
  if (type !== Access.Read) {
    node.generation = ++xs.generation;
    if (conn !== null && conn.transaction === null) xs.domains.wrlApplyDebitDirect(conn);
  }
  if (conn === null || conn.transaction === null) {
    if (wantKey) node.key = node.name;
    return 0;
  }
  const trans = conn.transaction;
  let i = trans.accessed.get(node.name);
  let introduce = false;
  if (i === undefined) {
    if (trans.nodes >= xs.quotas.transactionNodes && conn.unprivileged) {
      trans.fail = true;
      return "ENOSPC";
    }
    i = new AccessedNode(`${trans.generation}/${node.name}`, node.name);
    if (node.generation !== NO_GENERATION && node.perms.length > 0) i.perms = node.perms.slice();
    introduce = true;
    if (type === Access.Read) {
      i.generation = node.generation;
      i.checkGen = true;
      if (node.generation !== NO_GENERATION) {
        const err = xs.tdbWrite(conn, i.transName, node.toRecord(), true);
        if (err !== undefined) {
          trans.fail = true;
          return err;
        }
        i.taNode = true;
      }
    }
    trans.nodes++;
    trans.accessed.set(node.name, i);
  }
  if (type !== Access.Read) i.modified = true;
  if (introduce && type === Access.Delete) return -1;
  if (wantKey) {
    node.key = i.transName;
    if (type === Access.Write) i.taNode = true;
    if (type === Access.Delete) i.taNode = false;
  }
  return 0;
}

/** queue_watches: a change inside a transaction fires at commit; a subtree event wins over an exact one. */
export function queueWatches(conn: Connection, name: string, exact: boolean): void {
  const trans = conn.transaction!;
  const i = trans.accessed.get(name);
  if (i === undefined) {
    trans.fail = true;
    return;
  }
  if (!i.fireWatch) {
    i.fireWatch = true;
    i.watchExact = exact;
  } else if (!exact) {
    i.watchExact = false;
  }
}

/** finalize_transaction: conflict check, then the transaction's records become the global ones. */
function finalize(xs: Xenstored, conn: Connection, trans: Transaction): { err?: XsdError; corrupt: boolean } {
  let corrupt = false;
  for (const [name, i] of trans.accessed) {
    if (i.checkGen) {
      const gen = xs.store.get(i.node)?.generation ?? NO_GENERATION;
      if (i.generation !== gen) return { err: "EAGAIN", corrupt };
    }
    // Nodes only read need no more work.
    if (!i.modified) {
      if (i.taNode && xs.tdbDelete(conn, i.transName)) return { err: "EIO", corrupt };
      trans.accessed.delete(name);
    }
  }
  for (const [name, i] of trans.accessed) {
    if (i.taNode) {
      const rec = xs.store.get(i.transName);
      if (rec !== undefined) {
        const committed = { ...rec, generation: ++xs.generation };
        if (xs.tdbWrite(conn, i.node, committed, true) !== undefined) corrupt = true;
        if (xs.tdbDelete(conn, i.transName)) corrupt = true;
      } else {
        corrupt = true;
      }
    } else if (i.generation !== NO_GENERATION && xs.tdbDelete(conn, i.node)) {
      // A node created and deleted again in the transaction has no generation to delete.
      corrupt = true;
    }
    if (i.fireWatch) xs.fireWatches(conn, i.node, null, i.watchExact, i.perms);
    trans.accessed.delete(name);
  }
  return { corrupt };
}

/** destroy_transaction: its private records go. */
export function destroyTransaction(xs: Xenstored, trans: Transaction): void {
  if (trans.destroyed) return;
  trans.destroyed = true;
  xs.domains.wrlNtransactions--;
  for (const i of trans.accessed.values()) if (i.taNode) xs.tdbDelete(trans.conn, i.transName);
  trans.accessed.clear();
}

/** transaction_lookup: 0 is "no transaction"; an unknown id is ENOENT. */
export function transactionLookup(conn: Connection, id: number): Transaction | null | "ENOENT" {
  if (id === 0) return null;
  return conn.transactions.get(id) ?? "ENOENT";
}

export function doTransactionStart(xs: Xenstored, conn: Connection): XsdError | undefined {
  if (conn.transaction !== null) return "EBUSY";
  // C's check is ">", so an unprivileged connection gets one transaction above the quota.
  if (conn.unprivileged && conn.transactionStarted > xs.quotas.transactions) return "ENOSPC";
  let id: number;
  do {
    id = conn.nextTransactionId;
    conn.nextTransactionId = (conn.nextTransactionId + 1) >>> 0;
  } while (id === 0 || conn.transactions.has(id));
  const trans = new Transaction(conn, id, ++xs.generation);
  conn.transactions.set(id, trans);
  if (conn.transactionStarted === 0) conn.taStartTimeSec = xs.nowSec();
  conn.transactionStarted++;
  xs.domains.wrlNtransactions++;
  xs.sendReplyString(conn, `${id}`);
  return undefined;
}

/** transaction_fix_domains: check (update = false) or apply the node-count changes. */
function fixDomains(xs: Xenstored, trans: Transaction, chkQuota: boolean, update: boolean): XsdError | undefined {
  for (const [domid, num] of trans.changedDomains) {
    const cnt = xs.domains.entryFix(domid, num, update);
    if (!update) {
      if (chkQuota && cnt >= xs.quotas.nodes) return "ENOSPC";
      if (cnt < 0) return "ENOMEM";
    }
  }
  return undefined;
}

export function doTransactionEnd(xs: Xenstored, conn: Connection, arg: string | undefined): XsdError | undefined {
  if (arg !== "T" && arg !== "F") return "EINVAL";
  const trans = conn.transaction;
  if (trans === null) return "ENOENT";
  conn.transaction = null;
  conn.transactions.delete(trans.id);
  conn.transactionStarted--;
  if (conn.transactionStarted === 0) conn.taStartTimeSec = 0;
  const chkQuota = trans.nodeCreated && conn.unprivileged;
  try {
    if (arg === "T") {
      if (trans.fail) return "ENOMEM";
      const err = fixDomains(xs, trans, chkQuota, false);
      if (err !== undefined) return err;
      const r = finalize(xs, conn, trans);
      if (r.err !== undefined) return r.err;
      xs.domains.wrlApplyDebitTransCommit(conn);
      fixDomains(xs, trans, false, true);
      if (r.corrupt) xs.corrupt(conn, "transaction inconsistency");
    }
    xs.sendAck(conn);
    return undefined;
  } finally {
    destroyTransaction(xs, trans);
  }
}

/** conn_delete_all_transactions */
export function deleteAllTransactions(xs: Xenstored, conn: Connection): void {
  for (const t of [...conn.transactions.values()]) {
    conn.transactions.delete(t.id);
    destroyTransaction(xs, t);
  }
  conn.transactionStarted = 0;
  conn.taStartTimeSec = 0;
}
