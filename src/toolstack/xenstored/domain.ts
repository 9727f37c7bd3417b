// struct domain: what xenstored knows of a domain (introduced or merely referenced by a node's
// permissions), its quota accounting, and the write rate limit of xenstored_domain.c.

import type { XsdError } from "../../abi/xs_wire.ts";
import type { Connection } from "./connection.ts";
import type { Xenstored } from "./daemon.ts";
import { type Perm, XS_PERM } from "./paths.ts";
import type { XsNode } from "./store.ts";

// Write rate limiting (WRL_*): credit in thousandths of a write.
const WRL_FACTOR = 1000;
const WRL_WRITECOST = WRL_FACTOR;
export const WRL_RATE = 200 * WRL_FACTOR;
const WRL_DBURST = 10 * WRL_FACTOR;
const WRL_GBURST = 1000 * WRL_FACTOR;
const WRL_NEWDOMS_DBURST = 10 * 5 * WRL_FACTOR;
const WRL_CREDIT_MAX = 1000 * 1000 * 1000;
const WRL_LOGEVERY_SEC = 120;

export class Domain {
  port = 0;
  readonly path: string;
  conn: Connection | null = null;
  /** Nodes written after this generation may grant this domain rights; older grants are stale. */
  generation: number;
  /** @releaseDomain has been fired for its shutdown (until XS_RESUME). */
  shutdown = false;
  introduced = false;
  nbentry = 0;
  memory = 0;
  softQuotaReported = false;
  hardQuotaReported = false;
  memLastMsgSec = 0;
  nbwatch = 0;
  nboutstanding = 0;
  wrlCredit = 0;
  wrlTimestampMs = 0;
  wrlDelayLogged = false;

  constructor(
    readonly domid: number,
    generation: number,
  ) {
    this.generation = generation;
    this.path = `/local/domain/${domid}`;
  }
}

/** wrl_xfer_credit: move as much as possible from debit (down to its floor) to credit (up to its ceiling). */
function wrlXfer(debit: number, debitFloor: number, credit: number, creditCeil: number): [number, number] {
  const xfer = Math.min(debit - debitFloor, creditCeil - credit);
  return xfer > 0 ? [debit - xfer, credit + xfer] : [debit, credit];
}

/** The domain structs (C's `domains` list) with their node, memory and write-rate accounting. */
export class Domains {
  private readonly map = new Map<number, Domain>();
  /** C's list order, newest first (the @releaseDomain rescan walks it). */
  list: Domain[] = [];
  /** Open transactions, all connections together: the write rate limit applies only then. */
  wrlNtransactions = 0;
  private wrlNdomains = 0;
  private wrlReserve = 0;
  private wrlLogLastWarningSec = 0;

  constructor(private readonly xs: Xenstored) {}

  get(domid: number): Domain | undefined {
    return this.map.get(domid);
  }

  has(domid: number): boolean {
    return this.map.has(domid);
  }

  remove(d: Domain): void {
    this.map.delete(d.domid);
    this.list = this.list.filter((x) => x !== d);
  }

  /** How long (ms) until a rate-limited domain may write again. */
  wrlWakeup(d: Domain): number {
    return Math.max(1, Math.ceil((-d.wrlCredit * 1000 * this.wrlNdomains) / WRL_RATE));
  }

  alloc(domid: number): Domain {
    const d = new Domain(domid, this.xs.generation);
    this.map.set(domid, d);
    this.list.unshift(d);
    return d;
  }

  /** find_or_alloc_existing_domain */
  findOrAllocExisting(domid: number): Domain | undefined {
    const d = this.map.get(domid);
    if (d !== undefined) return d;
    return this.xs.backend.domainExists(domid) ? this.alloc(domid) : undefined;
  }

  entry(conn: Connection): number {
    return conn.unprivileged ? conn.domain!.nbentry : 0;
  }

  /** domain_entry_inc: count a node for its owner (at commit, for a transaction). */
  entryInc(conn: Connection | null, node: XsNode): XsdError | undefined {
    const domid = node.perms[0]!.id;
    if (conn?.transaction) {
      conn.transaction.entryInc(domid);
      return undefined;
    }
    const d = conn !== null && domid === conn.domid && conn.domain !== null ? conn.domain : this.findOrAllocExisting(domid);
    if (d === undefined) return "ENOMEM";
    d.nbentry++;
    return undefined;
  }

  entryDec(conn: Connection | null, node: XsNode): void {
    const domid = node.perms[0]!.id;
    if (conn?.transaction) {
      conn.transaction.entryDec(domid);
      return;
    }
    const d = conn !== null && domid === conn.domid && conn.domain !== null ? conn.domain : this.map.get(domid);
    if (d !== undefined) d.nbentry--;
    else this.xs.corrupt(conn, `Node "${node.name}" owned by non-existing domain ${domid}`);
  }

  /** domain_entry_fix: the owner's node count after `num` more; checked, or applied when `update`. */
  entryFix(domid: number, num: number, update: boolean): number {
    const d = update ? this.map.get(domid) : this.findOrAllocExisting(domid);
    if (d === undefined) return -1;
    // Negative only in a conflicting transaction, which fails anyway.
    const cnt = Math.max(0, d.nbentry + num);
    if (update) d.nbentry = cnt;
    return this.isUnprivileged(domid) ? cnt : 0;
  }

  isUnprivileged(domid: number): boolean {
    return domid !== 0 && domid !== this.xs.privDomid;
  }

  /** domain_alloc_permrefs: grants for domains the hypervisor does not have are ignored. */
  allocPermrefs(perms: Perm[]): void {
    for (let i = 0; i < perms.length; i++) {
      const p = perms[i]!;
      if (this.map.has(p.id)) continue;
      if (this.xs.backend.domainExists(p.id)) this.alloc(p.id);
      else perms[i] = { id: p.id, perms: p.perms | XS_PERM.IGNORE };
    }
  }

  /** domain_memory_add: ENOMEM when an unprivileged domain would pass its hard quota. */
  memoryAdd(domid: number, mem: number, noQuotaCheck: boolean): XsdError | undefined {
    const d = this.map.get(domid);
    if (d === undefined) {
      this.xs.errno = "ENOENT";
      this.xs.corrupt(null, `Accounting called for non-existing domain ${domid}`);
      return "ENOENT";
    }
    if (this.chkQuota(d, d.memory + mem) && !noQuotaCheck) return "ENOMEM";
    d.memory += mem;
    return undefined;
  }

  /** domain_chk_quota: over the hard quota? Logs crossings of both levels. */
  private chkQuota(d: Domain, mem: number): boolean {
    if (!this.isUnprivileged(d.domid) || d.conn?.isIgnored) return false;
    const now = this.xs.nowSec();
    const hard = this.xs.quotas.memory;
    const soft = this.xs.quotas.memorySoft;
    if (hard && mem >= hard) {
      if (d.hardQuotaReported) return true;
      this.xs.log(`Domain ${d.domid} exceeds hard memory quota, Xenstore interface to domain stalled`);
      d.memLastMsgSec = now;
      d.hardQuotaReported = true;
      return true;
    }
    if (now - d.memLastMsgSec >= 10) {
      if (d.hardQuotaReported) {
        d.memLastMsgSec = now;
        d.hardQuotaReported = false;
        this.xs.log(`Domain ${d.domid} below hard memory quota again`);
      }
      if (soft && mem >= soft && !d.softQuotaReported) {
        d.memLastMsgSec = now;
        d.softQuotaReported = true;
        this.xs.log(`Domain ${d.domid} exceeds soft memory quota`);
      }
      if (mem < soft && d.softQuotaReported) {
        d.memLastMsgSec = now;
        d.softQuotaReported = false;
        this.xs.log(`Domain ${d.domid} below soft memory quota again`);
      }
    }
    return false;
  }

  // --- write rate limit (only in force while some transaction is open) -----------------------

  wrlNew(d: Domain): void {
    d.wrlCredit = 0;
    d.wrlTimestampMs = Math.floor(this.xs.clock.now());
    this.wrlNdomains++;
    [this.wrlReserve, d.wrlCredit] = wrlXfer(this.wrlReserve, -WRL_NEWDOMS_DBURST, d.wrlCredit, WRL_DBURST);
  }

  wrlDestroy(d: Domain): void {
    this.wrlNdomains--;
    [d.wrlCredit, this.wrlReserve] = wrlXfer(d.wrlCredit, 0, this.wrlReserve, WRL_DBURST);
  }

  wrlCreditUpdate(d: Domain, nowMs: number): void {
    const now = Math.floor(nowMs);
    const msec = Math.max(0, Math.min(now - d.wrlTimestampMs, 1000 * 1000 * 1000));
    const gain = Math.floor((msec * WRL_RATE) / (Math.max(1, this.wrlNdomains) * 1000));
    d.wrlCredit = Math.min(d.wrlCredit + gain, WRL_CREDIT_MAX);
    [this.wrlReserve, d.wrlCredit] = wrlXfer(this.wrlReserve, 0, d.wrlCredit, 0);
    let surplus = 0;
    [d.wrlCredit, surplus] = wrlXfer(d.wrlCredit, WRL_DBURST, surplus, WRL_CREDIT_MAX);
    [surplus, this.wrlReserve] = wrlXfer(surplus, 0, this.wrlReserve, WRL_GBURST);
    d.wrlTimestampMs = now;
  }

  private wrlApplyDebitActual(d: Domain | null): void {
    if (d === null || !this.isUnprivileged(d.domid)) return;
    const now = this.xs.clock.now();
    this.wrlCreditUpdate(d, now);
    d.wrlCredit -= WRL_WRITECOST;
    if (d.wrlCredit < 0) {
      const sec = Math.floor(now / 1000);
      if (!d.wrlDelayLogged) {
        d.wrlDelayLogged = true;
        this.xs.log(`write rate limit: domain ${d.domid} is affected`);
      } else if (!this.wrlLogLastWarningSec) {
        this.xs.log("write rate limit: rate limiting restarts");
      }
      this.wrlLogLastWarningSec = sec;
    } else if (this.wrlLogLastWarningSec && Math.floor(now / 1000) - this.wrlLogLastWarningSec > WRL_LOGEVERY_SEC) {
      this.xs.log("write rate limit: not in force recently");
      this.wrlLogLastWarningSec = 0;
    }
  }

  /** wrl_apply_debit_direct: a write outside a transaction while others have transactions open. */
  wrlApplyDebitDirect(conn: Connection): void {
    if (conn.transaction !== null || this.wrlNtransactions === 0) return;
    this.wrlApplyDebitActual(conn.domain);
  }

  wrlApplyDebitTransCommit(conn: Connection): void {
    if (this.wrlNtransactions <= 1) return;
    this.wrlApplyDebitActual(conn.domain);
  }
}
