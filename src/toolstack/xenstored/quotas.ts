// Quotas and limits, with C xenstored 4.17's defaults and the names `xenstore-control quota` uses.

export interface XsQuotas {
  /** Nodes owned per unprivileged domain (quota_nb_entry_per_domain). */
  nodes: number;
  /** Watches per unprivileged domain. */
  watches: number;
  /** Open transactions per unprivileged connection. */
  transactions: number;
  /** Requests of an unprivileged domain whose reply (or watch events) is not yet written. */
  outstanding: number;
  /** Nodes one transaction of an unprivileged domain may access. */
  transactionNodes: number;
  /** Xenstore memory per unprivileged domain: the error level (hard quota). */
  memory: number;
  /** The warning level (soft quota): only logged. */
  memorySoft: number;
  /** Size of a node record written by an unprivileged domain (header, perms, data, children). */
  nodeSize: number;
  /** Path length, not counting a leading /local/domain/<id>/. */
  pathMax: number;
  /** Permission entries per node set by an unprivileged domain. */
  permissions: number;
  /** How long a watch event for an unprivileged domain may wait unsent before it is dropped (0: never). */
  watchEventTimeoutMs: number;
}

export const DEFAULT_QUOTAS: Readonly<XsQuotas> = {
  nodes: 1000,
  watches: 128,
  transactions: 10,
  outstanding: 20,
  transactionNodes: 1024,
  memory: 2 * 1024 * 1024 + 512 * 1024,
  memorySoft: 2 * 1024 * 1024,
  nodeSize: 2048,
  pathMax: 2048,
  permissions: 5,
  watchEventTimeoutMs: 20_000,
};

interface QuotaEntry {
  readonly name: string;
  readonly key: keyof XsQuotas;
  readonly descr: string;
}

/** `xenstore-control quota`: the hard quotas, in C's order. */
export const HARD_QUOTAS: readonly QuotaEntry[] = [
  { name: "nodes", key: "nodes", descr: "Nodes per domain" },
  { name: "watches", key: "watches", descr: "Watches per domain" },
  { name: "transactions", key: "transactions", descr: "Transactions per domain" },
  { name: "outstanding", key: "outstanding", descr: "Outstanding requests per domain" },
  { name: "transaction-nodes", key: "transactionNodes", descr: "Max. number of accessed nodes per transaction" },
  { name: "memory", key: "memory", descr: "Total Xenstore memory per domain (error level)" },
  { name: "node-size", key: "nodeSize", descr: "Max. size of a node" },
  { name: "path-max", key: "pathMax", descr: "Max. length of a node path" },
  { name: "permissions", key: "permissions", descr: "Max. number of permissions per node" },
];

/** `xenstore-control quota-soft`. */
export const SOFT_QUOTAS: readonly QuotaEntry[] = [
  { name: "memory", key: "memorySoft", descr: "Total Xenstore memory per domain (warning level)" },
];

/** C's "%-17s: %8d %s\n" table. */
export function formatQuotas(q: Readonly<XsQuotas>, table: readonly QuotaEntry[]): string {
  let s = "Quota settings:\n";
  for (const e of table) s += `${e.name.padEnd(17)}: ${String(q[e.key]).padStart(8)} ${e.descr}\n`;
  return s;
}
