// The guest's xenstore client (Linux drivers/xen/xenbus/xenbus_comms.c and xenbus_xs.c): requests
// and replies travel through the xenstore_domain_interface page start_info.store_mfn names, and
// the domain kicks xenstored through store_evtchn.
//
// The interrupt only moves bytes between the rings and the kernel's buffers; complete messages
// are handled later, one per `step`, by the xenbus/xenwatch kernel threads' stand-in, so a reply
// callback never runs in interrupt context.

import type { GuestCpu } from "../abi/cpu.ts";
import { ringPut, ringTake } from "../abi/ring.ts";
import {
  encodeXsMsg,
  XENSTORE_DOMAIN_INTERFACE as RING,
  XENSTORE_PAYLOAD_MAX,
  XENSTORE_RING_SIZE,
  XS,
  XS_NAMES,
  xsStringList,
  xsStrings,
  xsText,
  takeXsMessages,
} from "../abi/xs_wire.ts";
import type { XenEvents } from "./events.ts";
import { KstateError, type KstateEnv, registerKernelClass } from "./kstate.ts";

/** A reply: `err` is xenstored's error string (EAGAIN, ENOENT...) or undefined. */
export type XsReply = (cpu: GuestCpu, err: string | undefined, payload: Uint8Array) => void;
/** A watch callback: the path that changed and the token it was registered with. */
export type XsWatchFn = (cpu: GuestCpu, path: string, token: string) => void;
/**
 * A watch callback that survives a save: the watching object itself (a kernel class), kept as a
 * reference where a closure could not be.
 */
export interface XsWatcher {
  xsWatchEvent(cpu: GuestCpu, path: string, token: string): void;
}

/** The transaction id of requests outside any transaction (XBT_NIL). */
export const XBT_NIL = 0;

interface Pending {
  reqId: number;
  type: number;
  reply: XsReply;
}

export class XenBus {
  /** Views of the ring page (derived again from ringVa after a restore). */
  private ring: Uint8Array;
  private idx: DataView;
  private irq = -1;
  private nextReqId = 1;
  /** Bytes waiting for room in the request ring. */
  private outbuf: Uint8Array[] = [];
  /** Bytes read from the response ring, not yet a whole message. */
  private inbuf = new Uint8Array(0);
  private readonly pending: Pending[] = [];
  /** Whole messages read from the ring, handled one per step. */
  private readonly inbox: { type: number; reqId: number; payload: Uint8Array }[] = [];
  /** By token. A closure here cannot be saved: watchers that must survive a suspend pass themselves. */
  private readonly watches = new Map<string, XsWatchFn | XsWatcher>();
  /** The path each watch (by token) is on: what a resume registers again. */
  private readonly watchPaths = new Map<string, string>();
  /** xs_suspend: watch events wait in the inbox until the resume. */
  private suspended = false;
  /** Set when the ring broke (bad indexes, oversized message): no more traffic. */
  broken: string | undefined;
  requests = 0;
  watchEvents = 0;

  constructor(
    private readonly events: XenEvents,
    /** The ring page's words, through the kernel's own mapping of it. */
    ringWords: Uint32Array,
    public port: number,
    private log: (cpu: GuestCpu, text: string) => void,
    /** Where the kernel maps the ring page: what a restore derives the views from again. */
    private readonly ringVa?: number,
  ) {
    this.ring = new Uint8Array(ringWords.buffer, ringWords.byteOffset, 4096);
    this.idx = new DataView(ringWords.buffer, ringWords.byteOffset, 4096);
    events.registerHandler("xenbus", (cpu) => this.interrupt(cpu));
  }

  /**
   * After a restore: the ring's views, printk, and the irq handler again. Replies in flight are
   * closures, so a save finds none (a suspend waits for xenbus to be idle).
   */
  kstateRevive(env: KstateEnv): void {
    if (this.ringVa === undefined) throw new KstateError("kstate: XenBus was not given its ring's address (ringVa)");
    const words = env.cpu.mapPageWords(this.ringVa);
    this.ring = new Uint8Array(words.buffer, words.byteOffset, 4096);
    this.idx = new DataView(words.buffer, words.byteOffset, 4096);
    this.log = (c, t) => env.kernel.printk(c, t);
    this.events.registerHandler("xenbus", (cpu) => this.interrupt(cpu));
  }

  /** xenbus_init for a domU: the store channel gets its irq. Returns 0 or -errno. */
  init(cpu: GuestCpu): number {
    const irq = this.events.bindEvtchnToIrqhandler(cpu, this.port, "xenbus", 0);
    if (irq < 0) return irq;
    this.irq = irq;
    // Anything xenstored wrote before we listened.
    this.interrupt(cpu);
    return 0;
  }

  // ---- requests (xs_talkv) ----

  request(cpu: GuestCpu, type: number, tx: number, parts: string[], reply: XsReply, rawTail?: Uint8Array): void {
    const head = xsStrings(...parts);
    let payload = head;
    if (rawTail) {
      payload = new Uint8Array(head.length + rawTail.length);
      payload.set(head);
      payload.set(rawTail, head.length);
    }
    if (payload.length > XENSTORE_PAYLOAD_MAX) {
      reply(cpu, "E2BIG", new Uint8Array(0));
      return;
    }
    if (this.broken) {
      reply(cpu, "EIO", new Uint8Array(0));
      return;
    }
    const reqId = this.nextReqId++ >>> 0;
    this.pending.push({ reqId, type, reply });
    this.outbuf.push(encodeXsMsg(type, reqId, tx, payload));
    this.requests++;
    this.pushRequests(cpu);
  }

  read(cpu: GuestCpu, tx: number, path: string, done: (cpu: GuestCpu, err: string | undefined, value: string) => void): void {
    this.request(cpu, XS.READ, tx, [path], (c, err, p) => done(c, err, xsText(p)));
  }

  /** xenbus_write: the value has no NUL of its own. */
  write(cpu: GuestCpu, tx: number, path: string, value: string, done: (cpu: GuestCpu, err: string | undefined) => void): void {
    this.request(cpu, XS.WRITE, tx, [path], (c, err) => done(c, err), Buffer.from(value, "latin1"));
  }

  directory(cpu: GuestCpu, tx: number, path: string, done: (cpu: GuestCpu, err: string | undefined, names: string[]) => void): void {
    this.request(cpu, XS.DIRECTORY, tx, [path], (c, err, p) => done(c, err, err ? [] : xsStringList(p)));
  }

  transactionStart(cpu: GuestCpu, done: (cpu: GuestCpu, err: string | undefined, tx: number) => void): void {
    // xenstored answers "%u\0": the id ends at the NUL, as simple_strtoul reads it.
    this.request(cpu, XS.TRANSACTION_START, XBT_NIL, [""], (c, err, p) => done(c, err, err ? 0 : Number.parseInt(xsText(p), 10)));
  }

  /** Ends `tx`: commits unless `abort`. EAGAIN means another writer got there first: retry. */
  transactionEnd(cpu: GuestCpu, tx: number, abort: boolean, done: (cpu: GuestCpu, err: string | undefined) => void): void {
    this.request(cpu, XS.TRANSACTION_END, tx, [abort ? "F" : "T"], (c, err) => done(c, err));
  }

  /** register_xenbus_watch: `fn` runs for the initial event and every change under `path`. */
  watch(cpu: GuestCpu, path: string, token: string, fn: XsWatchFn | XsWatcher, done: (cpu: GuestCpu, err: string | undefined) => void): void {
    this.watches.set(token, fn);
    this.watchPaths.set(token, path);
    this.request(cpu, XS.WATCH, XBT_NIL, [path, token], (c, err) => {
      if (err) {
        this.watches.delete(token);
        this.watchPaths.delete(token);
      }
      done(c, err);
    });
  }

  /**
   * unregister_xenbus_watch: forgotten at once, so an event already read for `token` is dropped
   * (and a resume does not register it again).
   */
  unwatch(cpu: GuestCpu, path: string, token: string, done: (cpu: GuestCpu, err: string | undefined) => void): void {
    this.watches.delete(token);
    this.watchPaths.delete(token);
    this.request(cpu, XS.UNWATCH, XBT_NIL, [path, token], (c, err) => done(c, err));
  }

  get outstanding(): number {
    return this.pending.length;
  }

  // ---- suspend and resume (xs_suspend, xs_suspend_cancel, xs_resume) ----

  /** No request in flight, none waiting for the ring, no reply half read: a suspend may go on. */
  idle(): boolean {
    return this.pending.length === 0 && this.outbuf.length === 0 && this.inbuf.length === 0;
  }

  suspend(): void {
    this.suspended = true;
  }

  /** A cancelled suspend: the same channel, the same watches; held events are handled now. */
  resumeCancelled(): void {
    this.suspended = false;
  }

  /**
   * xs_resume in a new domain: the store has a new channel; the ring's leftovers are dropped
   * (xb_init_comms), and every watch is registered again with xenstored.
   */
  resume(cpu: GuestCpu, port: number): void {
    this.suspended = false;
    if (this.irq >= 0) this.events.unbindFromIrqhandler(cpu, this.irq);
    this.irq = -1;
    this.port = port;
    const rspProd = this.idx.getUint32(RING.rsp_prod, true);
    if (this.idx.getUint32(RING.rsp_cons, true) !== rspProd) {
      this.log(cpu, "xenbus: response queue not empty after resume; dropping it");
      this.idx.setUint32(RING.rsp_cons, rspProd, true);
    }
    this.inbuf = new Uint8Array(0);
    const rc = this.init(cpu);
    if (rc < 0) {
      this.fail(cpu, `cannot bind the store channel ${port} after resume: ${rc}`);
      return;
    }
    for (const [token, path] of this.watchPaths) {
      this.request(cpu, XS.WATCH, XBT_NIL, [path, token], (c, err) => {
        if (err) this.log(c, `xenbus: re-registering watch ${path} after resume failed: ${err}`);
      });
    }
  }

  // ---- the kernel threads' work ----

  /** Handles one message read from the ring. Returns false if there was none. */
  step(cpu: GuestCpu): boolean {
    if (this.suspended) return false;
    const msg = this.inbox.shift();
    if (!msg) return false;
    if (msg.type === XS.WATCH_EVENT) {
      this.watchEvents++;
      const [path = "", token = ""] = xsStringList(msg.payload);
      const fn = this.watches.get(token);
      if (typeof fn === "function") fn(cpu, path, token);
      else fn?.xsWatchEvent(cpu, path, token);
      return true;
    }
    const i = this.pending.findIndex((p) => p.reqId === msg.reqId);
    if (i < 0) {
      this.log(cpu, `xenbus: reply ${msg.reqId} (${XS_NAMES[msg.type] ?? msg.type}) matches no request`);
      return true;
    }
    const req = this.pending.splice(i, 1)[0]!;
    if (msg.type === XS.ERROR) req.reply(cpu, xsText(msg.payload).replace(/\0$/, ""), new Uint8Array(0));
    else if (msg.type !== req.type) req.reply(cpu, "EINVAL", new Uint8Array(0));
    else req.reply(cpu, undefined, msg.payload);
    return true;
  }

  // ---- the rings (xb_write / xb_read) ----

  /** The store irq: take what xenstored wrote, give it more requests, kick it if we did either. */
  private interrupt(cpu: GuestCpu): void {
    if (this.broken) return;
    const consumed = this.pullReplies(cpu);
    const produced = this.pushRequests(cpu, false);
    if ((consumed || produced) && this.irq >= 0) this.events.notifyRemoteViaIrq(cpu, this.irq);
  }

  /** Copies request bytes into the ring as room allows. */
  private pushRequests(cpu: GuestCpu, kick = true): boolean {
    let wrote = false;
    while (this.outbuf.length > 0 && !this.broken) {
      const cons = this.idx.getUint32(RING.req_cons, true);
      const prod = this.idx.getUint32(RING.req_prod, true);
      const used = (prod - cons) >>> 0;
      if (used > XENSTORE_RING_SIZE) return this.fail(cpu, `illegal request ring indexes ${cons}/${prod}`);
      const room = XENSTORE_RING_SIZE - used;
      if (room === 0) break;
      const chunk = this.outbuf[0]!;
      const n = Math.min(room, chunk.length);
      ringPut(this.ring, RING.req, XENSTORE_RING_SIZE, prod, chunk, n);
      // The bytes must be in place before the producer index moves (wmb).
      this.idx.setUint32(RING.req_prod, (prod + n) >>> 0, true);
      if (n === chunk.length) this.outbuf.shift();
      else this.outbuf[0] = chunk.subarray(n);
      wrote = true;
    }
    if (wrote && kick && this.irq >= 0) this.events.notifyRemoteViaIrq(cpu, this.irq);
    return wrote;
  }

  /** Moves response bytes into inbuf and whole messages into the inbox. */
  private pullReplies(cpu: GuestCpu): boolean {
    const cons = this.idx.getUint32(RING.rsp_cons, true);
    const prod = this.idx.getUint32(RING.rsp_prod, true);
    const avail = (prod - cons) >>> 0;
    if (avail === 0) return false;
    if (avail > XENSTORE_RING_SIZE) {
      this.fail(cpu, `illegal response ring indexes ${cons}/${prod}`);
      return false;
    }
    const grown = new Uint8Array(this.inbuf.length + avail);
    grown.set(this.inbuf);
    grown.set(ringTake(this.ring, RING.rsp, XENSTORE_RING_SIZE, cons, avail), this.inbuf.length);
    this.idx.setUint32(RING.rsp_cons, (cons + avail) >>> 0, true);
    const used = takeXsMessages(grown, (h, payload) => this.inbox.push({ type: h.type, reqId: h.reqId, payload }));
    if (used < 0) {
      this.fail(cpu, `message over ${XENSTORE_PAYLOAD_MAX} bytes from xenstored`);
      return true;
    }
    this.inbuf = grown.slice(used);
    return true;
  }

  private fail(cpu: GuestCpu, why: string): false {
    this.broken = why;
    this.log(cpu, `xenbus: ${why}; the store connection is dead`);
    return false;
  }
}

registerKernelClass("XenBus", XenBus, { transient: ["ring", "idx", "log"] });
