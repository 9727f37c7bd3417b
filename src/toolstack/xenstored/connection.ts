// struct connection: one client (a unix-socket client or a domain's ring). Input arrives in any
// chunking through feed(); whole messages are processed while the daemon is willing to read;
// replies and watch events queue in `out` and are written in batches through the transport.

import { XENSTORE_ERROR_PROTO, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE } from "../../abi/xs_wire.ts";
import type { XsConnection, XsTransport, Xenstored } from "./daemon.ts";
import type { Domain } from "./domain.ts";
import type { Transaction } from "./transaction.ts";
import type { Watch } from "./watch.ts";

/** A queued message (struct buffered_data on out_list); for a request, also its accounting. */
export class OutMsg {
  /** Header and payload. */
  bytes: Uint8Array;
  /** Bytes already handed to the transport. */
  used = 0;
  onOutList = false;
  onRefList = false;
  /** The connection whose ref_list holds it. */
  refConn: Connection | null = null;
  /** A request: watch events it caused that are not yet written (they hold its outstanding count). */
  eventCnt = 0;
  reqDomid = 0;
  /** A watch event: the unprivileged request that caused it. */
  req: OutMsg | null = null;
  isEvent = false;
  /** A watch event of an unprivileged domain: dropped if still unsent at this time (ms). */
  timeoutMs = 0;
  /** Identical pending events are not queued twice: the event's path and token. */
  dedupKey: string | null = null;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }
}

/** At most this many bytes are gathered into one transport write. */
const WRITE_BATCH = 64 * 1024;

export class Connection implements XsConnection {
  /** Domid of the connection: 0 for sockets (C's conn->id). */
  readonly domid: number;
  readonly domain: Domain | null;
  /** C's domain_is_unprivileged(conn), fixed for the connection's life. */
  readonly unprivileged: boolean;
  /** SET_TARGET: this domain acts for the target's domain. */
  target: Connection | null = null;
  /** Connections holding a talloc reference on this one (SET_TARGET), newest last. */
  refHolders: Connection[] = [];
  /** After talloc_unlink stole it: the connection owning this one (freed with it). */
  parentConn: Connection | null = null;
  isIgnored = false;
  closed = false;

  /** The request being processed: its reply object, until send_reply queues it. */
  in: OutMsg | null = null;
  /** Transaction of the request being processed. */
  transaction: Transaction | null = null;
  readonly transactions = new Map<number, Transaction>();
  nextTransactionId = 0;
  transactionStarted = 0;
  taStartTimeSec = 0;
  readonly watches: Watch[] = [];

  /** Replies whose watch events are still pending elsewhere (C's ref_list). */
  readonly refList = new Set<OutMsg>();
  /** Earliest event timeout in the queue (0: none). */
  timeoutMs = 0;
  readonly pendingEvents = new Map<string, number>();
  private out: OutMsg[] = [];
  private outHead = 0;
  /** Bytes queued and not yet taken by the transport. */
  outBytes = 0;

  private inBuf: Buffer | null = null;
  private inOff = 0;
  /** inBuf belongs to the caller of feed() and must be copied before feed() returns. */
  private inBorrowed = false;
  /** The transport was told we stopped reading. */
  stalled = false;

  constructor(
    private readonly xs: Xenstored,
    readonly transport: XsTransport,
    domain: Domain | null,
  ) {
    this.domain = domain;
    this.domid = domain?.domid ?? 0;
    this.unprivileged = domain !== null && domain.domid !== 0 && domain.domid !== xs.privDomid;
  }

  get wantsInput(): boolean {
    return !this.closed && !this.isIgnored && this.xs.connCanRead(this);
  }

  feed(bytes: Uint8Array): void {
    if (this.closed || this.isIgnored || bytes.length === 0) return;
    const incoming = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    if (this.inBuf === null || this.inOff >= this.inBuf.length) {
      // Borrow the caller's bytes unless the daemon is busy and would look at them later.
      this.inBuf = this.xs.isPumping ? Buffer.from(incoming) : incoming;
      this.inBorrowed = !this.xs.isPumping;
      this.inOff = 0;
    } else {
      this.inBuf = Buffer.concat([this.inBuf.subarray(this.inOff), incoming]);
      this.inOff = 0;
      this.inBorrowed = false;
    }
    this.xs.schedule(this);
    this.xs.pump();
    this.keepInput();
  }

  writable(): void {
    if (this.closed) return;
    this.xs.schedule(this);
    this.xs.pump();
  }

  close(): void {
    this.xs.destroyConn(this);
  }

  /** Input bytes received and not yet processed. */
  get inputPending(): number {
    return this.inBuf === null ? 0 : this.inBuf.length - this.inOff;
  }

  /** Processes whole messages while the daemon will read (C's handle_input, repeated). */
  processInput(): void {
    while (!this.closed && !this.isIgnored && this.inBuf !== null) {
      const buf = this.inBuf;
      const off = this.inOff;
      const avail = buf.length - off;
      if (avail < XSD_SOCKMSG_SIZE || !this.xs.connCanRead(this)) break;
      // The header is decoded inline rather than through readXsHeader: this loop is the daemon's
      // hot path, and it allocates nothing per message.
      const len = (buf[off + 12]! | (buf[off + 13]! << 8) | (buf[off + 14]! << 16) | (buf[off + 15]! << 24)) >>> 0;
      if (len > XENSTORE_PAYLOAD_MAX) {
        this.xs.log(`Client tried to feed us ${len | 0}`);
        this.inBuf = null;
        // C has written the replies to earlier requests by the time it reads this header.
        this.flush();
        this.xs.ignoreConnection(this, XENSTORE_ERROR_PROTO);
        return;
      }
      if (avail < XSD_SOCKMSG_SIZE + len) break;
      const type = (buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24)) >>> 0;
      const reqId = (buf[off + 4]! | (buf[off + 5]! << 8) | (buf[off + 6]! << 16) | (buf[off + 7]! << 24)) >>> 0;
      const txId = (buf[off + 8]! | (buf[off + 9]! << 8) | (buf[off + 10]! << 16) | (buf[off + 11]! << 24)) >>> 0;
      this.inOff = off + XSD_SOCKMSG_SIZE + len;
      this.xs.processMessage(this, type, reqId, txId, buf.subarray(off + XSD_SOCKMSG_SIZE, this.inOff));
    }
    if (this.inBuf !== null && this.inOff >= this.inBuf.length) {
      this.inBuf = null;
      this.inOff = 0;
    }
  }

  /** Copies unprocessed borrowed input so that the caller may reuse its buffer. */
  private keepInput(): void {
    if (this.inBuf !== null && this.inBorrowed) {
      this.inBuf = Buffer.from(this.inBuf.subarray(this.inOff));
      this.inOff = 0;
      this.inBorrowed = false;
    }
  }

  /** Drops unprocessed input (ignore_connection, domain_conn_reset). */
  dropInput(): void {
    this.inBuf = null;
    this.inOff = 0;
    this.inBorrowed = false;
  }

  enqueue(m: OutMsg): void {
    m.onOutList = true;
    this.out.push(m);
    this.outBytes += m.bytes.length;
    if (m.dedupKey !== null) this.pendingEvents.set(m.dedupKey, (this.pendingEvents.get(m.dedupKey) ?? 0) + 1);
    this.xs.schedule(this);
  }

  /** Messages from the head of the queue (for the caller to free). */
  *queuedMessages(): IterableIterator<OutMsg> {
    for (let i = this.outHead; i < this.out.length; i++) yield this.out[i]!;
  }

  /** Takes `m` off the queue; accounting is the caller's (free_buffered_data). */
  unlink(m: OutMsg): void {
    if (this.out[this.outHead] === m) {
      this.out[this.outHead] = undefined as unknown as OutMsg;
      this.outHead++;
      if (this.outHead === this.out.length) {
        this.out = [];
        this.outHead = 0;
      } else if (this.outHead >= 1024 && this.outHead * 2 >= this.out.length) {
        this.out = this.out.slice(this.outHead);
        this.outHead = 0;
      }
    } else {
      const i = this.out.indexOf(m, this.outHead);
      if (i >= 0) this.out.splice(i, 1);
    }
    m.onOutList = false;
    this.outBytes -= m.bytes.length - m.used;
    if (m.dedupKey !== null) {
      const n = (this.pendingEvents.get(m.dedupKey) ?? 1) - 1;
      if (n === 0) this.pendingEvents.delete(m.dedupKey);
      else this.pendingEvents.set(m.dedupKey, n);
    }
  }

  /** The first queued message, if any. */
  head(): OutMsg | undefined {
    return this.out[this.outHead];
  }

  private flushing = false;

  /** write_messages, batched: gives the transport as much queued output as it takes. */
  flush(): void {
    // A transport may call back into the daemon from write(); only the outer flush writes.
    if (this.flushing) return;
    this.flushing = true;
    try {
      this.flushLoop();
    } finally {
      this.flushing = false;
    }
  }

  private flushLoop(): void {
    while (!this.closed && !this.isIgnored && this.outHead < this.out.length) {
      const first = this.out[this.outHead]!;
      let chunk: Uint8Array;
      if (this.outHead + 1 === this.out.length || first.bytes.length - first.used >= WRITE_BATCH) {
        chunk = first.used === 0 ? first.bytes : first.bytes.subarray(first.used);
      } else {
        let total = 0;
        let end = this.outHead;
        while (end < this.out.length && total < WRITE_BATCH) {
          const m = this.out[end]!;
          total += m.bytes.length - m.used;
          end++;
        }
        const buf = Buffer.allocUnsafe(total);
        let at = 0;
        for (let i = this.outHead; i < end; i++) {
          const m = this.out[i]!;
          buf.set(m.used === 0 ? m.bytes : m.bytes.subarray(m.used), at);
          at += m.bytes.length - m.used;
        }
        chunk = buf;
      }
      const n = this.transport.write(chunk);
      if (this.closed || this.isIgnored) return;
      this.consume(n);
      if (n < chunk.length) break;
    }
  }

  private consume(n: number): void {
    while (n > 0 && this.outHead < this.out.length) {
      const m = this.out[this.outHead]!;
      const rem = m.bytes.length - m.used;
      if (n < rem) {
        m.used += n;
        this.outBytes -= n;
        return;
      }
      n -= rem;
      this.outBytes -= rem;
      m.used = m.bytes.length;
      this.xs.freeBufferedData(this, m);
    }
  }
}
