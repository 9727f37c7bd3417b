// Domains coming and going (xenstored_domain.c): introduction, the initial tree, and release of a
// domain with its nodes when it dies or is released, with @introduceDomain / @releaseDomain.

import type { XsdError } from "../../abi/xs_wire.ts";
import type { Xenstored } from "./daemon.ts";
import type { Domain } from "./domain.ts";
import { rmNode, WALK_TREE_ERROR_STOP, WALK_TREE_OK, WALK_TREE_SKIP_CHILDREN, WALK_TREE_SUCCESS_STOP, walkNodeTree, writeNodeRaw } from "./nodes.ts";
import { type Perm, XS_PERM } from "./paths.ts";
import { EMPTY, XsNode } from "./store.ts";
import { NullTransport } from "./transport.ts";
import { deleteAllTransactions } from "./transaction.ts";
import { deleteAllWatches } from "./watch.ts";

/** introduce_domain: map and bind a new domain (dom0 first of all), or re-bind an introduced one. */
export function introduceDomain(xs: Xenstored, domid: number, mfn: number, port: number): Domain | XsdError {
  const isMaster = domid === 0;
  let domain = xs.domains.get(domid);
  const fresh = domain === undefined;
  domain ??= xs.domains.alloc(domid);
  if (domain.introduced) {
    // XS_INTRODUCE again recreates the event channel binding.
    domain.port = port;
    return domain;
  }
  const transport = isMaster ? (xs.backend.dom0Transport?.() ?? new NullTransport()) : xs.backend.introduce(domid, mfn, port);
  if (typeof transport === "string") {
    // The struct was allocated for this request only.
    if (fresh) destroyDomain(xs, domain);
    return transport;
  }
  domain.port = port;
  xs.domains.wrlNew(domain);
  domain.introduced = true;
  domain.conn = xs.newConnection(transport, domain);
  if (isMaster) setupStructure(xs);
  else xs.fireWatches(null, "@introduceDomain", null, true, null);
  return domain;
}

/** domain_conn_reset, and the ring's own reset (ring indexes, reconnection). */
export function domainConnReset(xs: Xenstored, domain: Domain): void {
  const conn = domain.conn;
  if (conn === null) return;
  deleteAllWatches(xs, conn);
  deleteAllTransactions(xs, conn);
  xs.freeAllBufferedData(conn);
  conn.dropInput();
  conn.transport.reset?.(domain.port);
}

/** setup_structure: "/", "/tool" and "/tool/xenstored", owned by dom0, readable by nobody else. */
function setupStructure(xs: Xenstored): void {
  const manual = (name: string, child: string | null): void => {
    const children = child === null ? EMPTY : Buffer.from(`${child}\0`, "latin1");
    const node = new XsNode(name, ++xs.generation, [{ id: 0, perms: XS_PERM.NONE }], EMPTY, children);
    writeNodeRaw(xs, null, name, node, false);
  };
  manual("/", "tool");
  manual("/tool", "xenstored");
  manual("/tool/xenstored", null);
  xs.domains.entryFix(0, 3, true);
  xs.checkStore();
}

/** destroy_domain: its nodes go (unless kept), and @releaseDomain fires if it was introduced. */
export function destroyDomain(xs: Xenstored, domain: Domain): void {
  domainTreeRemove(xs, domain);
  xs.domains.remove(domain);
  if (!domain.introduced) return;
  xs.fireWatches(null, "@releaseDomain", null, true, null);
  xs.domains.wrlDestroy(domain);
}

/** domain_tree_remove: the nodes it owns, and its grants on the special watches. */
function domainTreeRemove(xs: Xenstored, domain: Domain): void {
  if (domain.nbentry > 0) {
    const ret = walkNodeTree(xs, null, "/", { enter: (_xs, _c, node, d: Domain) => domainTreeRemoveSub(xs, node, d) }, domain);
    if (ret === WALK_TREE_ERROR_STOP) xs.log("error when looking for orphaned nodes");
  }
  for (const [name, perms] of xs.specialPerms) xs.specialPerms.set(name, removeDomidFromPerm(perms, domain.domid, xs.privDomid));
}

function domainTreeRemoveSub(xs: Xenstored, node: XsNode, domain: Domain): number {
  if (node.perms[0]!.id !== domain.domid) return WALK_TREE_OK;
  let ret = WALK_TREE_OK;
  if (xs.keepOrphans) {
    domain.nbentry--;
    node.perms = [{ id: xs.privDomid, perms: node.perms[0]!.perms }, ...node.perms.slice(1)];
    xs.domains.entryInc(null, node);
    if (writeNodeRaw(xs, null, node.name, node, true) !== undefined) xs.log(`error when moving orphaned node ${node.name} to dom0`);
    else xs.trace(`orphaned node ${node.name} moved to dom0`);
  } else {
    if (rmNode(xs, null, node.name) !== 0) xs.log(`error when deleting orphaned node ${node.name}`);
    else xs.trace(`orphaned node ${node.name} deleted`);
    ret = WALK_TREE_SKIP_CHILDREN;
  }
  return domain.nbentry > 0 ? ret : WALK_TREE_SUCCESS_STOP;
}

/** remove_domid_from_perm: the owner passes to the privileged domain, other grants go. */
function removeDomidFromPerm(perms: Perm[], domid: number, privDomid: number): Perm[] {
  const out: Perm[] = [];
  perms.forEach((p, i) => {
    if (i === 0) out.push(p.id === domid ? { id: privDomid, perms: p.perms } : p);
    else if (p.id !== domid) out.push(p);
  });
  return out;
}

/** check_domains: release dying domains; fire @releaseDomain once for newly shut down ones. */
export function checkDomains(xs: Xenstored): void {
  let notify = false;
  again: for (;;) {
    for (const domain of xs.domains.list) {
      const state = xs.backend.domainState(domain.domid);
      if (!domain.introduced) {
        if (state === undefined) {
          destroyDomain(xs, domain);
          continue again;
        }
        continue;
      }
      if (state !== undefined) {
        if (state.shutdown && !domain.shutdown) {
          domain.shutdown = true;
          notify = true;
        }
        if (!state.dying) continue;
      }
      if (domain.conn !== null) {
        const conn = domain.conn;
        domain.conn = null;
        xs.tallocUnlink(null, conn);
        // destroy_domain fires the watch.
        notify = false;
        continue again;
      }
    }
    break;
  }
  if (notify) xs.fireWatches(null, "@releaseDomain", null, true, null);
}
