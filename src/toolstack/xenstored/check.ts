// check_store (XS_CONTROL "check", and after detected corruption): children lists are fixed to
// match the nodes, then records that nothing reaches are deleted.

import type { Xenstored } from "./daemon.ts";
import { tdbDelete, WALK_TREE_OK, WALK_TREE_RM_CHILDENTRY, walkNodeTree } from "./nodes.ts";

export function checkStore(xs: Xenstored): void {
  xs.log("Checking store ...");
  const reachable = new Set<string>();
  const ret = walkNodeTree<Set<string>>(
    xs,
    null,
    "/",
    {
      enter: (_xs, _c, node, seen) => {
        if (seen.has(node.name)) {
          xs.log(`check_store: '${node.name}' is duplicated!`);
          return WALK_TREE_RM_CHILDENTRY;
        }
        seen.add(node.name);
        return WALK_TREE_OK;
      },
      enoent: (_xs, _c, _p, name) => {
        xs.log(`check_store: node '${name}' not found`);
        return WALK_TREE_RM_CHILDENTRY;
      },
    },
    reachable,
  );
  if (ret === WALK_TREE_OK) {
    // Records of open transactions are known by their generation prefix.
    for (const c of xs.connections) for (const t of c.transactions.values()) reachable.add(`${t.generation}`);
    for (const key of [...xs.store.keys()]) {
      let name = key;
      if (key.charCodeAt(0) !== 0x2f) {
        const slash = key.indexOf("/");
        if (slash >= 0) name = key.slice(0, slash);
      }
      if (!reachable.has(name)) {
        xs.log(`clean_store: '${name}' is orphaned!`);
        tdbDelete(xs, null, key);
      }
    }
  }
  xs.log("Checking store complete.");
}
