// A xenstore client over xenstored's unix socket, for the toolstack's commands, the tests and
// `xensim bench xenstore`. Requests are pipelined: any number may be in flight on one connection.
// xenstored answers a connection's requests in order, so replies are matched first-in first-out;
// watch events (XS_WATCH_EVENT) interleave with them and go to the watch listeners instead.

import { connect as netConnect, type Socket } from "node:net";
import { encodeXsMsg, XS, XS_NAMES, XSD_SOCKMSG_SIZE, XENSTORE_PAYLOAD_MAX } from "../../abi/xs_wire.ts";

/** A failed request: `code` is the daemon's wire string ("EACCES", ...), or a local one (ECONNRESET, EPROTO). */
export class XsError extends Error {
  readonly code: string;
  constructor(code: string, what: string) {
    super(`${what}: ${code}`);
    this.name = "XsError";
    this.code = code;
  }
}

export interface XsReply {
  type: number;
  reqId: number;
  txId: number;
  payload: Buffer;
}

/**
 * Called for each reply with the header fields and the payload as `buf[off, off + len)`. The
 * bytes are only valid during the call (no copy is made: the benchmark counts replies this way).
 */
export type XsReplyCallback = (type: number, reqId: number, txId: number, buf: Buffer, off: number, len: number) => void;

/**
 * A watch event: the path that changed (relative if the watch was) and the watch's token; the
 * whole payload and the header's ids too, for tests that compare streams byte for byte.
 */
export type XsWatchListener = (path: string, token: string, payload: Buffer, reqId: number, txId: number) => void;

export type XsPermLetter = "n" | "r" | "w" | "b";
export interface XsPerm {
  id: number;
  perm: XsPermLetter;
}

/** What a request's payload may be given as: raw bytes, one string, or strings each NUL-terminated. */
export type XsPayload = Uint8Array | string | readonly string[];

const EMPTY = Buffer.alloc(0);

export class XsClient {
  private readonly sock: Socket;
  /** Callbacks of the requests in flight, oldest at `head` (a queue without shift()). */
  private queue: (XsReplyCallback | undefined)[] = [];
  private head = 0;
  /** Unparsed bytes left from earlier chunks (a partial message), or empty. */
  private rest: Buffer = EMPTY;
  private nextReqId = 1;
  private readonly watchListeners: XsWatchListener[] = [];
  private closedError: XsError | undefined;
  /** Resolves when the connection is gone, whoever closed it. */
  readonly closed: Promise<void>;

  /** While replies are being dispatched: requests their callbacks send, written out together after. */
  private batch: Uint8Array[] | undefined;

  private constructor(sock: Socket) {
    this.sock = sock;
    this.closed = new Promise((resolve) => {
      sock.once("close", () => {
        this.failAll(new XsError("ECONNRESET", "xenstore connection closed"));
        resolve();
      });
    });
    sock.on("error", (e: Error) => this.failAll(new XsError("ECONNRESET", `xenstore connection: ${e.message}`)));
  }

  /**
   * Connects to the daemon's socket. C xenstored listens with a backlog of 1, so a connect made
   * while another is being accepted fails with EAGAIN: that is retried (for up to `timeoutMs`).
   */
  static async connect(path: string, timeoutMs = 5000): Promise<XsClient> {
    const t0 = Date.now();
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      try {
        return await XsClient.connectOnce(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EAGAIN" || Date.now() - t0 > timeoutMs) throw e;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private static connectOnce(path: string): Promise<XsClient> {
    return new Promise((resolve, reject) => {
      let client: XsClient | undefined;
      // Reads land in one reused buffer (no stream machinery, no allocation per read): replies
      // are parsed in place and only partial messages are copied.
      const sock = netConnect({
        path,
        onread: {
          buffer: Buffer.allocUnsafe(65536),
          callback: (n: number, buf: Uint8Array) => {
            client?.onData(buf as Buffer, n);
            return true;
          },
        },
      });
      const onError = (e: Error) => reject(e);
      sock.once("error", onError);
      sock.once("connect", () => {
        sock.off("error", onError);
        client = new XsClient(sock);
        resolve(client);
      });
    });
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.queue.length - this.head;
  }

  onWatch(listener: XsWatchListener): void {
    this.watchListeners.push(listener);
  }

  offWatch(listener: XsWatchListener): void {
    const i = this.watchListeners.indexOf(listener);
    if (i >= 0) this.watchListeners.splice(i, 1);
  }

  close(): Promise<void> {
    this.sock.end();
    return this.closed;
  }

  /** Drops the connection at once (no FIN handshake wait), as a crashing client would. */
  destroy(): void {
    this.sock.destroy();
  }

  /**
   * Sends already-encoded bytes holding `replies` whole requests, and queues `cb` for each of
   * their replies. The bytes are not checked: this is how tests send malformed messages.
   */
  sendEncoded(bytes: Uint8Array, cb: XsReplyCallback | undefined, replies = 1): void {
    if (this.closedError) throw this.closedError;
    for (let i = 0; i < replies; i++) this.queue.push(cb);
    this.out(bytes);
  }

  /** Writes bytes that expect no reply (a partial message, garbage). */
  writeRaw(bytes: Uint8Array): void {
    if (this.closedError) throw this.closedError;
    this.out(bytes);
  }

  private out(bytes: Uint8Array): void {
    if (this.batch) this.batch.push(bytes);
    else this.sock.write(bytes);
  }

  /** A fresh request id (ids wrap at 2^32; xenstored only echoes them). */
  allocReqId(): number {
    const id = this.nextReqId;
    this.nextReqId = (id + 1) >>> 0;
    return id;
  }

  /**
   * Sends one request and resolves with whatever comes back, ERROR replies included. Rejects if
   * the connection closes first or the reply does not echo the request id.
   */
  request(type: number, payload: XsPayload, txId = 0): Promise<XsReply> {
    const reqId = this.allocReqId();
    const msg = encodeXsMsg(type, reqId, txId, toBytes(payload));
    return new Promise((resolve, reject) => {
      if (this.closedError) {
        reject(this.closedError);
        return;
      }
      this.sendEncoded(msg, (rtype, rreq, rtx, buf, off, len) => {
        if (rtype === -1) reject(this.closedError);
        else if (rreq !== reqId) reject(new XsError("EPROTO", `${opName(type)}: reply has req_id ${rreq}, sent ${reqId}`));
        else resolve({ type: rtype, reqId: rreq, txId: rtx, payload: Buffer.from(buf.subarray(off, off + len)) });
      });
    });
  }

  /** Sends a request and returns its reply's payload; an ERROR reply becomes an XsError. */
  async call(type: number, payload: XsPayload, txId = 0, what = ""): Promise<Buffer> {
    const r = await this.request(type, payload, txId);
    if (r.type === XS.ERROR) throw new XsError(cString(r.payload, 0), `${opName(type)} ${what}`.trimEnd());
    if (r.type !== type) throw new XsError("EPROTO", `${opName(type)} ${what}: reply of type ${r.type}`.trimEnd());
    return r.payload;
  }

  async readBytes(path: string, tx = 0): Promise<Buffer> {
    return this.call(XS.READ, [path], tx, path);
  }

  async read(path: string, tx = 0): Promise<string> {
    return (await this.readBytes(path, tx)).toString("utf8");
  }

  async write(path: string, value: string | Uint8Array, tx = 0): Promise<void> {
    const p = Buffer.from(`${path}\0`, "latin1");
    const v = typeof value === "string" ? Buffer.from(value, "utf8") : value;
    await this.call(XS.WRITE, Buffer.concat([p, v]), tx, path);
  }

  async mkdir(path: string, tx = 0): Promise<void> {
    await this.call(XS.MKDIR, [path], tx, path);
  }

  async rm(path: string, tx = 0): Promise<void> {
    await this.call(XS.RM, [path], tx, path);
  }

  async directory(path: string, tx = 0): Promise<string[]> {
    return splitStrings(await this.call(XS.DIRECTORY, [path], tx, path));
  }

  async getPerms(path: string, tx = 0): Promise<XsPerm[]> {
    return splitStrings(await this.call(XS.GET_PERMS, [path], tx, path)).map(parsePerm);
  }

  /** `perms[0]` is the owner and the default for domains not listed. */
  async setPerms(path: string, perms: readonly XsPerm[], tx = 0): Promise<void> {
    await this.call(XS.SET_PERMS, [path, ...perms.map((p) => `${p.perm}${p.id}`)], tx, path);
  }

  /** The daemon fires the watch once at once; events go to the `onWatch` listeners. */
  async watch(path: string, token: string): Promise<void> {
    await this.call(XS.WATCH, [path, token], 0, path);
  }

  async unwatch(path: string, token: string): Promise<void> {
    await this.call(XS.UNWATCH, [path, token], 0, path);
  }

  async resetWatches(): Promise<void> {
    await this.call(XS.RESET_WATCHES, [""]);
  }

  async transactionStart(): Promise<number> {
    const id = Number(cString(await this.call(XS.TRANSACTION_START, [""]), 0));
    if (!Number.isInteger(id) || id <= 0) throw new XsError("EPROTO", "TRANSACTION_START: bad transaction id");
    return id;
  }

  /** Commits (or aborts); a commit that conflicts fails with code EAGAIN. */
  async transactionEnd(tx: number, commit: boolean): Promise<void> {
    await this.call(XS.TRANSACTION_END, [commit ? "T" : "F"], tx);
  }

  /** Runs `body` in a transaction and commits, starting again while the commit fails with EAGAIN. */
  async transaction<T>(body: (tx: number) => Promise<T>, maxTries = 100): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const tx = await this.transactionStart();
      let result: T;
      try {
        result = await body(tx);
      } catch (e) {
        await this.transactionEnd(tx, false).catch(() => {});
        throw e;
      }
      try {
        await this.transactionEnd(tx, true);
        return result;
      } catch (e) {
        if (!(e instanceof XsError && e.code === "EAGAIN") || attempt >= maxTries) throw e;
      }
    }
  }

  /** Tells xenstored that domain `domid` exists, with its store page at `mfn` and event channel `port`. */
  async introduce(domid: number, mfn: number, port: number): Promise<void> {
    await this.call(XS.INTRODUCE, [String(domid), String(mfn), String(port)], 0, String(domid));
  }

  async release(domid: number): Promise<void> {
    await this.call(XS.RELEASE, [String(domid)], 0, String(domid));
  }

  async resume(domid: number): Promise<void> {
    await this.call(XS.RESUME, [String(domid)], 0, String(domid));
  }

  async getDomainPath(domid: number): Promise<string> {
    return cString(await this.call(XS.GET_DOMAIN_PATH, [String(domid)], 0, String(domid)), 0);
  }

  async isDomainIntroduced(domid: number): Promise<boolean> {
    return cString(await this.call(XS.IS_DOMAIN_INTRODUCED, [String(domid)], 0, String(domid)), 0) === "T";
  }

  /** XS_CONTROL: a command and its arguments (`check`, `quota`, ...); returns the reply text. */
  async control(...args: string[]): Promise<string> {
    return cString(await this.call(XS.CONTROL, args, 0, args[0] ?? ""), 0);
  }

  private failAll(err: XsError): void {
    if (this.closedError) return;
    this.closedError = err;
    const q = this.queue;
    for (let i = this.head; i < q.length; i++) {
      try {
        q[i]?.(-1, 0, 0, EMPTY, 0, 0);
      } catch (e) {
        // A callback that sends again on this connection is told it is closed: expected.
        if (!(e instanceof XsError)) queueMicrotask(() => {
          throw e;
        });
      }
    }
    this.queue = [];
    this.head = 0;
  }

  /** `n` bytes arrived at the start of `chunk` (a buffer reused for the next read). */
  private onData(chunk: Buffer, n: number): void {
    let buf = chunk;
    let end = n;
    if (this.rest.length > 0) {
      buf = Buffer.concat([this.rest, chunk.subarray(0, n)]);
      end = buf.length;
    }
    let off = 0;
    // Requests sent by the callbacks go out together, in one write.
    const batch: Uint8Array[] = [];
    this.batch = batch;
    try {
      // Inline header reads, not readXsHeader: the client's reply loop is what `bench xenstore`
      // measures, and it allocates nothing per reply.
      while (end - off >= XSD_SOCKMSG_SIZE) {
        const len = buf.readUInt32LE(off + 12);
        if (len > XENSTORE_PAYLOAD_MAX) {
          this.protocolError(`reply of ${len} bytes`);
          return;
        }
        if (end - off - XSD_SOCKMSG_SIZE < len) break;
        const type = buf.readUInt32LE(off);
        const reqId = buf.readUInt32LE(off + 4);
        const txId = buf.readUInt32LE(off + 8);
        const p = off + XSD_SOCKMSG_SIZE;
        off = p + len;
        if (type === XS.WATCH_EVENT) this.deliverWatch(buf, p, len, reqId, txId);
        else if (this.head < this.queue.length) {
          const cb = this.queue[this.head];
          this.queue[this.head++] = undefined;
          if (this.head === this.queue.length) {
            this.queue.length = 0;
            this.head = 0;
          } else if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
            this.queue = this.queue.slice(this.head);
            this.head = 0;
          }
          cb?.(type, reqId, txId, buf, p, len);
        } else {
          this.protocolError(`unsolicited ${opName(type)} reply`);
          return;
        }
      }
    } finally {
      this.batch = undefined;
      if (batch.length === 1) this.sock.write(batch[0]!);
      else if (batch.length > 1) this.sock.write(Buffer.concat(batch));
    }
    // Keep only the partial message (copied: the read buffer is reused).
    this.rest = off === end ? EMPTY : Buffer.from(buf.subarray(off, end));
  }

  private deliverWatch(buf: Buffer, off: number, len: number, reqId: number, txId: number): void {
    if (this.watchListeners.length === 0) return;
    const payload = Buffer.from(buf.subarray(off, off + len));
    const path = cString(payload, 0);
    const token = cString(payload, Math.min(path.length + 1, payload.length));
    for (const l of [...this.watchListeners]) l(path, token, payload, reqId, txId);
  }

  private protocolError(what: string): void {
    this.failAll(new XsError("EPROTO", `xenstore connection: ${what}`));
    this.sock.destroy();
  }
}

/** Encodes a payload: strings are joined, each followed by a NUL; one string gets one NUL. */
export function toBytes(payload: XsPayload): Uint8Array {
  if (typeof payload === "string") return Buffer.from(`${payload}\0`, "latin1");
  if (payload instanceof Uint8Array) return payload;
  return Buffer.from(payload.map((s) => `${s}\0`).join(""), "latin1");
}

/** The NUL-terminated string at `off` (to the end if there is no NUL), as latin1. */
export function cString(buf: Buffer, off: number): string {
  const nul = buf.indexOf(0, off);
  return buf.toString("latin1", off, nul < 0 ? buf.length : nul);
}

/** A payload of NUL-terminated strings as a list (the last NUL ends the list, not an empty entry). */
export function splitStrings(buf: Buffer): string[] {
  if (buf.length === 0) return [];
  const s = buf.toString("latin1");
  const parts = s.split("\0");
  if (parts[parts.length - 1] === "") parts.pop();
  return parts;
}

export function parsePerm(s: string): XsPerm {
  const letter = s[0];
  if (letter !== "n" && letter !== "r" && letter !== "w" && letter !== "b") throw new XsError("EPROTO", `bad permission ${JSON.stringify(s)}`);
  return { perm: letter, id: Number(s.slice(1)) };
}

function opName(type: number): string {
  return XS_NAMES[type] ?? `type ${type}`;
}
