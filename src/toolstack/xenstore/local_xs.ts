// The toolstack's own xenstore connection inside the host process: a socket-class (dom0)
// connection to the in-process xenstored whose replies arrive synchronously, as libxenstore's
// would after a round trip.

import { encodeXsMsg, takeXsMessages, XS, xsStringList, xsStrings, xsText } from "../../abi/xs_wire.ts";
import type { Xenstored, XsConnection } from "../xenstored/daemon.ts";

export class XsCallError extends Error {
  constructor(
    readonly errno: string,
    what: string,
  ) {
    super(`${what}: ${errno}`);
  }
}

export type WatchListener = (path: string, token: string) => void;

export class LocalXs {
  private readonly conn: XsConnection;
  private inbuf = new Uint8Array(0);
  private readonly replies = new Map<number, { type: number; payload: Uint8Array }>();
  private nextReqId = 1;
  private readonly watchers = new Map<string, WatchListener>();
  private readonly events: { path: string; token: string }[] = [];

  constructor(daemon: Xenstored) {
    this.conn = daemon.connectSocket({ write: (b) => this.received(b), close: () => {} });
  }

  private received(bytes: Uint8Array): number {
    const all = new Uint8Array(this.inbuf.length + bytes.length);
    all.set(this.inbuf);
    all.set(bytes, this.inbuf.length);
    // xenstored never sends more than XENSTORE_PAYLOAD_MAX, so the count is never -1 here.
    const used = takeXsMessages(all, (h, payload) => {
      if (h.type === XS.WATCH_EVENT) {
        const [path = "", token = ""] = xsStringList(payload);
        // Delivered by drainWatches, after the request that caused it, as a reader thread would.
        this.events.push({ path, token });
      } else this.replies.set(h.reqId, { type: h.type, payload });
    });
    this.inbuf = all.slice(Math.max(used, 0));
    return bytes.length;
  }

  /** One request; the reply's payload, or XsCallError with xenstored's error string. */
  call(type: number, payload: Uint8Array, tx = 0): Uint8Array {
    const reqId = this.nextReqId++;
    this.conn.feed(encodeXsMsg(type, reqId, tx, payload));
    const r = this.replies.get(reqId);
    if (!r) throw new Error(`xenstored did not answer request ${reqId} at once`);
    this.replies.delete(reqId);
    if (r.type === XS.ERROR) throw new XsCallError(xsText(r.payload).replace(/\0$/, ""), `xenstore ${type}`);
    return r.payload;
  }

  read(path: string, tx = 0): string {
    return xsText(this.call(XS.READ, xsStrings(path), tx));
  }

  tryRead(path: string, tx = 0): string | undefined {
    try {
      return this.read(path, tx);
    } catch (e) {
      if (e instanceof XsCallError) return undefined;
      throw e;
    }
  }

  write(path: string, value: string, tx = 0): void {
    const head = xsStrings(path);
    const body = Buffer.from(value, "latin1");
    const p = new Uint8Array(head.length + body.length);
    p.set(head);
    p.set(body, head.length);
    this.call(XS.WRITE, p, tx);
  }

  mkdir(path: string, tx = 0): void {
    this.call(XS.MKDIR, xsStrings(path), tx);
  }

  rm(path: string, tx = 0): void {
    try {
      this.call(XS.RM, xsStrings(path), tx);
    } catch (e) {
      if (!(e instanceof XsCallError && e.errno === "ENOENT")) throw e;
    }
  }

  directory(path: string, tx = 0): string[] {
    return xsStringList(this.call(XS.DIRECTORY, xsStrings(path), tx));
  }

  /** Perms as the protocol writes them: "n0", "r5"... the first is the owner's entry. */
  setPerms(path: string, perms: string[], tx = 0): void {
    this.call(XS.SET_PERMS, xsStrings(path, ...perms), tx);
  }

  transactionStart(): number {
    return Number(xsText(this.call(XS.TRANSACTION_START, xsStrings(""))).replace(/\0$/, ""));
  }

  /** Commits (or aborts); false when the commit lost to another writer (EAGAIN). */
  transactionEnd(tx: number, commit: boolean): boolean {
    try {
      this.call(XS.TRANSACTION_END, xsStrings(commit ? "T" : "F"), tx);
      return true;
    } catch (e) {
      if (e instanceof XsCallError && e.errno === "EAGAIN") return false;
      throw e;
    }
  }

  watch(path: string, token: string, fn: WatchListener): void {
    this.watchers.set(token, fn);
    this.call(XS.WATCH, xsStrings(path, token));
  }

  /** Runs the listeners of the watch events that arrived. Returns how many. */
  drainWatches(): number {
    let n = 0;
    while (this.events.length > 0) {
      const e = this.events.shift()!;
      this.watchers.get(e.token)?.(e.path, e.token);
      n++;
    }
    return n;
  }

  introduce(domid: number, mfn: number, port: number): void {
    this.call(XS.INTRODUCE, xsStrings(String(domid), String(mfn), String(port)));
  }

  /** XS_RESUME: a domain that came back from a suspend may fire @releaseDomain again. */
  resume(domid: number): void {
    this.call(XS.RESUME, xsStrings(String(domid)));
  }

  release(domid: number): void {
    this.call(XS.RELEASE, xsStrings(String(domid)));
  }
}
