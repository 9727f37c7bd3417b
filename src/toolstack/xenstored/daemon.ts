// xenstored, as Xen 4.17's C daemon behaves, independent of how clients reach it: the node tree
// and its permissions, transactions, watches, domains with their quotas, and the request dispatch.
// Transports (a unix socket, a domain's ring) hand it bytes and take its replies.

import { XS, XSD_SOCKMSG_SIZE, XENSTORE_PAYLOAD_MAX, type XsdError } from "../../abi/xs_wire.ts";
import { checkStore } from "./check.ts";
import { Connection, OutMsg } from "./connection.ts";
import { doControl } from "./control.ts";
import { onearg } from "./cstr.ts";
import { type Domain, Domains } from "./domain.ts";
import {
  doGetDomainPath,
  doIntroduce,
  doIsDomainIntroduced,
  doRelease,
  doResetWatches,
  doResume,
  doSetTarget,
} from "./domain_ops.ts";
import { checkDomains, destroyDomain, domainConnReset, introduceDomain } from "./lifecycle.ts";
import { permForConn, readNode, tdbDelete, tdbWrite } from "./nodes.ts";
import { doGetPerms, doMkdir, doRead, doRm, doSetPerms, doWrite, type HandlerResult, sendDirectory, sendDirectoryPart } from "./ops.ts";
import { type Perm, XS_PERM } from "./paths.ts";
import { DEFAULT_QUOTAS, type XsQuotas } from "./quotas.ts";
import { type NodeRec, recordSize, type XsNode } from "./store.ts";
import { Tracer } from "./trace.ts";
import { deleteAllTransactions, destroyTransaction, doTransactionEnd, doTransactionStart, queueWatches, transactionLookup } from "./transaction.ts";
import { realClock, StandaloneBackend, type XsClock, type XsConnection, type XsDomainBackend, type XsTransport } from "./transport.ts";
import { deleteAllWatches, doUnwatch, doWatch, fireWatches } from "./watch.ts";

export type { XsQuotas } from "./quotas.ts";
export {
  NullTransport,
  StandaloneBackend,
  type XsClock,
  type XsConnection,
  type XsDomainBackend,
  type XsTransport,
} from "./transport.ts";

export interface XenstoredOptions {
  backend?: XsDomainBackend;
  quotas?: Partial<XsQuotas>;
  log?: (line: string) => void;
  clock?: XsClock;
  /** The privileged domain besides dom0 (C's --priv-domid). */
  privDomid?: number;
  /** Keep nodes of a dead domain, handed to the privileged domain (C's --keep-orphans). */
  keepOrphans?: boolean;
  /**
   * Unsent output (bytes) of a privileged connection at which the daemon stops reading its
   * requests and drops watch events for it. C xenstored has no bound there; default 2.5 MiB.
   */
  backlog?: number;
  /** Trace file (C's -T): every message in and out. */
  traceFile?: string;
}

type Handler = (xs: Xenstored, conn: Connection, payload: Buffer) => HandlerResult;

/** wire_funcs: handler and flags per message type. */
const NOTID = 1;
const PRIV = 2;
const WIRE: ReadonlyArray<readonly [Handler, number] | undefined> = (() => {
  const w: Array<readonly [Handler, number] | undefined> = new Array(XS.TYPE_COUNT).fill(undefined);
  w[XS.CONTROL] = [doControl, PRIV];
  w[XS.DIRECTORY] = [sendDirectory, 0];
  w[XS.READ] = [doRead, 0];
  w[XS.GET_PERMS] = [doGetPerms, 0];
  w[XS.WATCH] = [doWatch, NOTID];
  w[XS.UNWATCH] = [doUnwatch, NOTID];
  w[XS.TRANSACTION_START] = [(xs, conn) => doTransactionStart(xs, conn), 0];
  w[XS.TRANSACTION_END] = [(xs, conn, p) => doTransactionEnd(xs, conn, onearg(p)), 0];
  w[XS.INTRODUCE] = [doIntroduce, PRIV];
  w[XS.RELEASE] = [doRelease, PRIV];
  w[XS.GET_DOMAIN_PATH] = [doGetDomainPath, 0];
  w[XS.WRITE] = [doWrite, 0];
  w[XS.MKDIR] = [doMkdir, 0];
  w[XS.RM] = [doRm, 0];
  w[XS.SET_PERMS] = [doSetPerms, 0];
  w[XS.IS_DOMAIN_INTRODUCED] = [doIsDomainIntroduced, PRIV];
  w[XS.RESUME] = [doResume, PRIV];
  w[XS.SET_TARGET] = [doSetTarget, PRIV];
  w[XS.RESET_WATCHES] = [(xs, conn) => doResetWatches(xs, conn), 0];
  w[XS.DIRECTORY_PART] = [sendDirectoryPart, 0];
  return w;
})();

const OK_PAYLOAD = Buffer.from("OK\0", "latin1");
const ERROR_PAYLOADS = new Map<string, Buffer>();

export class Xenstored {
  readonly quotas: XsQuotas;
  readonly privDomid: number;
  readonly keepOrphans: boolean;
  readonly backlog: number;
  readonly backend: XsDomainBackend;
  readonly clock: XsClock;
  private readonly logFn: (line: string) => void;

  /** The node database (C's TDB). */
  readonly store = new Map<string, NodeRec>();
  /** The global generation count: every modification and transaction start takes the next one. */
  generation = 0;
  /** C's errno, where xenstored answers with whatever it holds. */
  errno: XsdError | null = "ENOENT";
  /** find_domain_struct */
  readonly domains: Domains = new Domains(this);
  /** All connections, oldest first (watch events are generated in this order). */
  readonly connections = new Set<Connection>();
  watchCount = 0;
  readonly specialPerms = new Map<string, Perm[]>([
    ["@releaseDomain", [{ id: 0, perms: XS_PERM.NONE }]],
    ["@introduceDomain", [{ id: 0, perms: XS_PERM.NONE }]],
  ]);

  // The request being processed (C's conn->in header).
  private curConn: Connection | null = null;
  private curType = 0;
  private curReqId = 0;
  private curTxId = 0;
  private replied = true;
  /** Connections freed while C's loop held them (see tallocFreeConn). */
  private readonly deferredFree: Connection[] = [];

  /** A request is being processed: nothing else may run until it is done. */
  private inMessage = false;
  private pumpDepth = 0;
  private readonly runq = new Set<Connection>();
  private readonly stalled = new Set<Connection>();
  private readonly timed = new Set<Connection>();
  private timer: unknown = null;
  private timerAt = Number.POSITIVE_INFINITY;
  private checkingStore = false;

  readonly tracer: Tracer;
  private nextConnNo = 1;
  private readonly connNo = new WeakMap<Connection, number>();

  constructor(opts: XenstoredOptions = {}) {
    this.quotas = { ...DEFAULT_QUOTAS, ...opts.quotas };
    this.backend = opts.backend ?? new StandaloneBackend();
    this.logFn = opts.log ?? (() => {});
    this.clock = opts.clock ?? realClock;
    this.privDomid = opts.privDomid ?? 0;
    this.keepOrphans = opts.keepOrphans ?? false;
    this.backlog = opts.backlog ?? 2.5 * 1024 * 1024;
    this.tracer = new Tracer(opts.traceFile, this.logFn);
    this.tracer.reopen();
    // dom0_init: dom0 is introduced first; that creates the initial tree.
    const dom0 = introduceDomain(this, 0, 0, 0);
    if (typeof dom0 !== "string") domainConnReset(this, dom0);
  }

  // --- public API -------------------------------------------------------------------------

  /** A connection accepted on the unix socket: privileged, acting as dom0. */
  connectSocket(transport: XsTransport): XsConnection {
    return this.newConnection(transport, null);
  }

  /** VIRQ_DOM_EXC arrived: rescan introduced domains, release dead ones, fire @releaseDomain. */
  domainsChanged(): void {
    checkDomains(this);
    this.pump();
  }

  /** Stops timers and closes every connection (the daemon is shutting down). */
  shutdown(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    for (const c of [...this.connections]) if (c.domain === null) this.destroyConn(c);
    this.tracer.close();
  }

  // --- connections and I/O ----------------------------------------------------------------

  /** Input fed now cannot be processed before feed() returns. */
  get isPumping(): boolean {
    return this.inMessage;
  }

  newConnection(transport: XsTransport, domain: Domain | null): Connection {
    const conn = new Connection(this, transport, domain);
    this.connections.add(conn);
    this.connNo.set(conn, this.nextConnNo++);
    transport.attach?.(conn);
    return conn;
  }

  schedule(conn: Connection): void {
    this.runq.add(conn);
  }

  /** Runs connections with work until none has any: input, output, input unblocked by output. */
  pump(): void {
    // Transports may feed from inside a write; that is served at once, but never in the middle
    // of a request, and not without bound.
    if (this.inMessage || this.pumpDepth > 16) return;
    this.pumpDepth++;
    try {
      while (this.runq.size > 0) {
        for (const c of this.runq) {
          this.runq.delete(c);
          if (c.closed) continue;
          c.processInput();
          c.flush();
          if (!c.closed && !c.isIgnored && !c.wantsInput && !c.stalled) {
            c.stalled = true;
            this.stalled.add(c);
          }
          if (this.stalled.size > 0) this.unstall();
        }
      }
    } finally {
      this.pumpDepth--;
    }
    if (this.timed.size > 0 || this.stalled.size > 0) this.armTimer();
  }

  private unstall(): void {
    for (const s of this.stalled) {
      if (s.closed || s.isIgnored) {
        this.stalled.delete(s);
        continue;
      }
      if (!s.wantsInput) continue;
      this.stalled.delete(s);
      s.stalled = false;
      s.transport.resume?.();
      if (s.inputPending > 0) this.runq.add(s);
    }
  }

  /** conn_can_read's quota part (C stops reading a domain over these). */
  connCanRead(conn: Connection): boolean {
    if (!conn.unprivileged) return conn.outBytes < this.backlog;
    const d = conn.domain!;
    this.domains.wrlCreditUpdate(d, this.clock.now());
    if (d.wrlCredit < 0) return false;
    if (d.nboutstanding >= this.quotas.outstanding) return false;
    if (this.quotas.memory && d.memory >= this.quotas.memory) return false;
    return true;
  }

  /** Earliest work due: a watch event timing out, or a rate-limited domain's credit back. */
  private armTimer(): void {
    const now = this.clock.now();
    let at = Number.POSITIVE_INFINITY;
    for (const c of this.timed) {
      if (c.timeoutMs === 0 || c.closed) this.timed.delete(c);
      else at = Math.min(at, c.timeoutMs);
    }
    for (const c of this.stalled) {
      const d = c.domain;
      if (d !== null && c.unprivileged && d.wrlCredit < 0) {
        at = Math.min(at, now + this.domains.wrlWakeup(d));
      }
    }
    if (at === this.timerAt) return;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (at === Number.POSITIVE_INFINITY) return;
    this.timer = this.clock.setTimeout(() => this.onTimer(), Math.max(0, at - now));
  }

  private onTimer(): void {
    this.timer = null;
    this.timerAt = Number.POSITIVE_INFINITY;
    const now = this.clock.now();
    for (const c of [...this.timed]) this.checkEventTimeout(c, now);
    for (const c of this.stalled) this.runq.add(c);
    this.pump();
  }

  /** check_event_timeout: drop unsent events of an unprivileged domain that waited too long. */
  private checkEventTimeout(conn: Connection, now: number): void {
    if (conn.timeoutMs === 0 || conn.timeoutMs > now) return;
    let next = 0;
    for (const m of [...conn.queuedMessages()]) {
      if (m.timeoutMs === 0 || m.used !== 0) continue;
      if (m.timeoutMs > now) {
        next = m.timeoutMs;
        break;
      }
      m.timeoutMs = 0;
      this.trace(`watch event for domain ${conn.domid} timed out`);
      this.freeBufferedData(conn, m);
    }
    conn.timeoutMs = next;
    if (next === 0) this.timed.delete(conn);
    this.schedule(conn);
  }

  /** free_buffered_data: a queued message is written (or dropped); settle its accounting. */
  freeBufferedData(conn: Connection, m: OutMsg): void {
    conn.unlink(m);
    if (m.timeoutMs !== 0) {
      conn.timeoutMs = 0;
      for (const q of conn.queuedMessages()) {
        if (q.timeoutMs !== 0) {
          conn.timeoutMs = q.timeoutMs;
          break;
        }
      }
    }
    this.domains.memoryAdd(conn.domid, -m.bytes.length, true);
    if (this.tracer.enabled && m.used === m.bytes.length) this.tracer.out(this.connNo.get(conn) ?? 0, m.bytes);
    if (m.isEvent) {
      const req = m.req;
      if (req !== null) {
        req.eventCnt--;
        if (req.eventCnt === 0 && !req.onOutList && req.onRefList) {
          req.onRefList = false;
          req.refConn?.refList.delete(req);
          req.refConn = null;
          const d = this.domains.get(req.reqDomid);
          if (d?.introduced) {
            d.nboutstanding--;
            if (d.conn !== null) this.schedule(d.conn);
          }
        }
      }
    } else if (m.eventCnt > 0) {
      // Its events still hold the request's outstanding count.
      m.onRefList = true;
      m.refConn = conn;
      conn.refList.add(m);
    } else if (conn.domain !== null) {
      conn.domain.nboutstanding--;
    }
  }

  freeAllBufferedData(conn: Connection): void {
    for (let m = conn.head(); m !== undefined; m = conn.head()) this.freeBufferedData(conn, m);
    conn.timeoutMs = 0;
  }

  /** ignore_connection: stop talking to a misbehaving client; sockets are closed. */
  ignoreConnection(conn: Connection, err: number): void {
    this.trace(`CONN ${this.connNo.get(conn)} ignored, reason ${err}`);
    conn.transport.ignore?.(err);
    conn.isIgnored = true;
    deleteAllWatches(this, conn);
    conn.transaction = null;
    deleteAllTransactions(this, conn);
    this.freeAllBufferedData(conn);
    conn.dropInput();
    conn.in = null;
    if (conn.domain === null) this.destroyConn(conn);
  }

  /** destroy_conn and the talloc children of a connection (its transactions, its domain). */
  destroyConn(conn: Connection): void {
    if (conn.closed) return;
    if (conn.domain === null) conn.flush();
    conn.closed = true;
    conn.transport.close();
    this.freeAllBufferedData(conn);
    deleteAllWatches(this, conn);
    for (const r of conn.refList) r.onRefList = false;
    conn.refList.clear();
    const target = conn.target;
    conn.target = null;
    if (target !== null) this.tallocUnlink(conn, target);
    this.connections.delete(conn);
    this.runq.delete(conn);
    this.stalled.delete(conn);
    this.timed.delete(conn);
    conn.transaction = null;
    for (const t of [...conn.transactions.values()]) {
      conn.transactions.delete(t.id);
      destroyTransaction(this, t);
    }
    for (const child of [...this.connections]) if (child.parentConn === conn) this.destroyConn(child);
    // The domain struct belongs to its connection.
    const d = conn.domain;
    if (d !== null && this.domains.get(d.domid) === d) {
      d.conn = null;
      destroyDomain(this, d);
    }
  }

  /** talloc_free(conn): a connection referenced by SET_TARGET loses one reference instead. */
  tallocFreeConn(conn: Connection): void {
    // C's main loop holds a reference on the connection it serves and on the next one in its
    // list: freeing either only drops that reference, and the loop frees it after this request.
    const held = this.curConn;
    if (held !== null && (conn === held || conn === this.nextConnection(held))) {
      this.deferredFree.push(conn);
      return;
    }
    if (conn.refHolders.length > 0) {
      conn.refHolders.pop();
      return;
    }
    this.destroyConn(conn);
  }

  private nextConnection(conn: Connection): Connection | undefined {
    let found = false;
    for (const c of this.connections) {
      if (found) return c;
      if (c === conn) found = true;
    }
    return undefined;
  }

  /** talloc_unlink(context, conn), context being a connection or null (the autofree context). */
  tallocUnlink(context: Connection | null, conn: Connection): void {
    if (context !== null) {
      const i = conn.refHolders.lastIndexOf(context);
      if (i >= 0) {
        conn.refHolders.splice(i, 1);
        return;
      }
    }
    if (conn.parentConn !== context) return;
    if (conn.refHolders.length === 0) {
      this.destroyConn(conn);
      return;
    }
    // The newest reference becomes the owner.
    conn.parentConn = conn.refHolders.pop()!;
  }

  // --- messages ----------------------------------------------------------------------------

  /** process_message */
  processMessage(conn: Connection, type: number, reqId: number, txId: number, payload: Buffer): void {
    if (this.tracer.enabled) this.tracer.message("IN", this.connNo.get(conn) ?? 0, type, payload);
    this.curConn = conn;
    this.curType = type;
    this.curReqId = reqId;
    this.curTxId = txId;
    this.replied = false;
    this.inMessage = true;
    if (conn.unprivileged) {
      conn.in = new OutMsg(OK_PAYLOAD);
      conn.in.reqDomid = conn.domid;
    }
    try {
      const wire = WIRE[type];
      if (wire === undefined) {
        this.sendError(conn, "ENOSYS");
        return;
      }
      if (wire[1] & PRIV && conn.unprivileged) {
        this.sendError(conn, "EACCES");
        return;
      }
      const trans = wire[1] & NOTID ? null : transactionLookup(conn, txId);
      if (trans === "ENOENT") {
        this.sendError(conn, "ENOENT");
        return;
      }
      conn.transaction = trans;
      let ret: HandlerResult;
      try {
        ret = wire[0](this, conn, payload);
      } catch (e) {
        // A bug of ours must not take the daemon (and every domain's store) down with it.
        this.log(`internal error in ${type}: ${(e as Error).stack ?? String(e)}`);
        ret = "EIO";
      }
      // null: C's errno 0, where 4.17 sends nothing and aborts on an assertion.
      if (ret !== undefined) this.sendError(conn, ret ?? "EINVAL");
    } finally {
      conn.transaction = null;
      conn.in = null;
      this.replied = true;
      this.curConn = null;
      this.inMessage = false;
    }
    while (this.deferredFree.length > 0) this.tallocFreeConn(this.deferredFree.shift()!);
  }

  private encode(type: number, reqId: number, txId: number, payload: Uint8Array | string): Buffer {
    const len = payload.length;
    const b = Buffer.allocUnsafe(XSD_SOCKMSG_SIZE + len);
    b.writeUInt32LE(type >>> 0, 0);
    b.writeUInt32LE(reqId >>> 0, 4);
    b.writeUInt32LE(txId >>> 0, 8);
    b.writeUInt32LE(len, 12);
    if (typeof payload === "string") b.write(payload, XSD_SOCKMSG_SIZE, len, "latin1");
    else b.set(payload, XSD_SOCKMSG_SIZE);
    return b;
  }

  /** send_reply: the reply to the request being processed (the first one only). */
  sendReply(conn: Connection, payload: Uint8Array | string, type = this.curType): void {
    if (this.replied || conn !== this.curConn || conn.closed) return;
    const len = payload.length;
    if (len > XENSTORE_PAYLOAD_MAX) {
      this.sendError(conn, "E2BIG");
      return;
    }
    // Small replies are not checked: they may be the error being reported.
    if (len <= 16) this.domains.memoryAdd(conn.domid, len + XSD_SOCKMSG_SIZE, true);
    else if (this.domains.memoryAdd(conn.domid, len + XSD_SOCKMSG_SIZE, false) !== undefined) {
      this.sendError(conn, "ENOMEM");
      return;
    }
    this.replied = true;
    const m = conn.in ?? new OutMsg(OK_PAYLOAD);
    conn.in = null;
    m.bytes = this.encode(type, this.curReqId, this.curTxId, payload);
    conn.enqueue(m);
    if (conn.domain !== null) conn.domain.nboutstanding++;
  }

  sendReplyString(conn: Connection, s: string): void {
    this.sendReply(conn, `${s}\0`);
  }

  sendAck(conn: Connection): void {
    this.sendReply(conn, OK_PAYLOAD);
  }

  sendError(conn: Connection, err: XsdError): void {
    let p = ERROR_PAYLOADS.get(err);
    if (p === undefined) {
      p = Buffer.from(`${err}\0`, "latin1");
      ERROR_PAYLOADS.set(err, p);
    }
    this.sendReply(conn, p, XS.ERROR);
  }

  /** send_event: queue a watch event (not twice while an identical one is pending). */
  sendEvent(req: OutMsg | null, conn: Connection, path: string, token: string): void {
    const len = path.length + 1 + token.length + 1;
    if (len > XENSTORE_PAYLOAD_MAX) return;
    let key: string | null = null;
    if (path.charCodeAt(0) !== 0x40) {
      key = `${path}\0${token}`;
      if (conn.pendingEvents.has(key)) {
        this.trace(`dropping duplicate watch ${path} ${token} for domain ${conn.domid}`);
        return;
      }
    }
    // Our bound for privileged connections that do not read (C has none).
    if (!conn.unprivileged && conn.outBytes + len + XSD_SOCKMSG_SIZE > this.backlog) return;
    if (this.domains.memoryAdd(conn.domid, len + XSD_SOCKMSG_SIZE, false) !== undefined) return;
    const m = new OutMsg(this.encode(XS.WATCH_EVENT, 0, 0, `${path}\0${token}\0`));
    m.isEvent = true;
    m.dedupKey = key;
    if (this.quotas.watchEventTimeoutMs && conn.unprivileged) {
      m.timeoutMs = this.clock.now() + this.quotas.watchEventTimeoutMs;
      if (conn.timeoutMs === 0) conn.timeoutMs = m.timeoutMs;
      this.timed.add(conn);
    }
    m.req = req;
    if (req !== null) req.eventCnt++;
    conn.enqueue(m);
  }

  // --- node helpers used across modules --------------------------------------------------------

  readNode(conn: Connection | null, name: string): XsNode | null {
    return readNode(this, conn, name);
  }

  permForConn(conn: Connection, perms: readonly Perm[]): number {
    return permForConn(conn, perms);
  }

  tdbWrite(conn: Connection | null, key: string, rec: NodeRec, noQuotaCheck: boolean): XsdError | undefined {
    return tdbWrite(this, conn, key, rec, noQuotaCheck);
  }

  tdbDelete(conn: Connection | null, key: string): boolean {
    return tdbDelete(this, conn, key);
  }

  fireWatches(conn: Connection | null, name: string, node: XsNode | null, exact: boolean, perms: readonly Perm[] | null): void {
    fireWatches(this, conn, name, node, exact, perms);
  }

  queueWatches(conn: Connection, name: string, exact: boolean): void {
    queueWatches(conn, name, exact);
  }

  /** get_implicit_path */
  implicitPath(conn: Connection): string {
    return conn.domain?.path ?? "/local/domain/0";
  }

  /** canonicalize: relative paths are under the connection's domain path. */
  canonicalize(conn: Connection, node: string): string {
    const c = node.charCodeAt(0);
    if (c === 0x2f || c === 0x40) return node;
    return `${this.implicitPath(conn)}/${node}`;
  }

  checkPermsSpecial(name: string, conn: Connection): boolean {
    const p = this.specialPerms.get(name);
    return p !== undefined && (permForConn(conn, p) & XS_PERM.READ) !== 0;
  }

  setPermsSpecial(conn: Connection, name: string, perms: Perm[]): XsdError | undefined {
    const p = this.specialPerms.get(name);
    if (p === undefined) return "EINVAL";
    const need = XS_PERM.WRITE | XS_PERM.OWNER;
    if ((permForConn(conn, p) & need) !== need) return "EACCES";
    this.specialPerms.set(name, perms);
    return undefined;
  }

  nowSec(): number {
    return Math.floor(this.clock.now() / 1000);
  }

  /** corrupt: something is inconsistent; log it and check the store. */
  corrupt(conn: Connection | null, msg: string): void {
    this.log(`corruption detected by connection ${conn === null ? -1 : conn.domid}: ${msg}`);
    this.checkStore();
  }

  checkStore(): void {
    // Fixing the store may itself find corruption: one check at a time.
    if (this.checkingStore) return;
    this.checkingStore = true;
    try {
      checkStore(this);
    } finally {
      this.checkingStore = false;
    }
  }

  introduceDomain(domid: number, mfn: number, port: number): Domain | XsdError {
    return introduceDomain(this, domid, mfn, port);
  }

  domainConnReset(domain: Domain): void {
    domainConnReset(this, domain);
  }

  // --- logging and tracing -----------------------------------------------------------------

  log(line: string): void {
    this.tracer.line(line);
    this.logFn(line);
  }

  trace(line: string): void {
    this.tracer.line(line);
  }

  /** memreport: a summary of what the daemon holds (not talloc's report). */
  memReport(file: string | undefined): boolean {
    let bytes = 0;
    for (const [k, r] of this.store) bytes += k.length + recordSize(r);
    let s = `xenstored memory report: ${this.store.size} records, ${bytes} bytes; ${this.connections.size} connections\n`;
    for (const d of this.domains.list) s += `domain ${d.domid}: nodes ${d.nbentry} watches ${d.nbwatch} memory ${d.memory}\n`;
    return this.tracer.report(s, file);
  }
}
