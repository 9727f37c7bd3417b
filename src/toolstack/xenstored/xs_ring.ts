// xenstored's side of a domain's xenstore page (C xenstored's domain.c: readchn/writechn over
// struct xenstore_domain_interface): requests are taken from `req` while the connection wants
// input, replies and watch events go into `rsp` as room allows, and every move of an index is
// followed by a kick on the inter-domain channel.

import { ringPut, ringTake } from "../../abi/ring.ts";
import {
  XENSTORE_CONNECTED,
  XENSTORE_DOMAIN_INTERFACE as RING,
  XENSTORE_ERROR_RINGIDX,
  XENSTORE_RECONNECT,
  XENSTORE_RING_SIZE,
  XENSTORE_SERVER_FEATURE_ERROR,
  XENSTORE_SERVER_FEATURE_RECONNECTION,
} from "../../abi/xs_wire.ts";
import type { XsConnection, XsTransport } from "./daemon.ts";

/** How xenstored reaches the domain's event channel (dom0's /dev/xen/evtchn). */
export interface RingKicker {
  kick(): void;
  unbind(): void;
}

export class XsRingTransport implements XsTransport {
  private conn: XsConnection | undefined;
  private readonly idx: DataView;
  /** The channel, once dom0 has bound it. */
  kicker: RingKicker | undefined;
  closed = false;
  /** Why the ring was given up on, if it was. */
  corrupt: string | undefined;

  constructor(
    /** The domain's ring page, mapped by dom0 (a foreign mapping). */
    private readonly page: Uint8Array,
    /** Unmaps the page once the daemon is done with the domain (C's unmap_interface). */
    private readonly release: () => void = () => {},
  ) {
    this.idx = new DataView(page.buffer, page.byteOffset, page.byteLength);
    this.idx.setUint32(RING.server_features, XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR, true);
  }

  attach(conn: XsConnection): void {
    this.conn = conn;
  }

  /** The channel is bound: catch up on anything the domain wrote before. */
  bound(kicker: RingKicker): void {
    this.kicker = kicker;
    this.onEvent();
  }

  write(bytes: Uint8Array): number {
    if (this.closed || this.corrupt) return bytes.length;
    const cons = this.idx.getUint32(RING.rsp_cons, true);
    const prod = this.idx.getUint32(RING.rsp_prod, true);
    const used = (prod - cons) >>> 0;
    if (used > XENSTORE_RING_SIZE) {
      this.giveUp(`response ring indexes ${cons}/${prod}`);
      return bytes.length;
    }
    const n = Math.min(XENSTORE_RING_SIZE - used, bytes.length);
    if (n === 0) return 0;
    ringPut(this.page, RING.rsp, XENSTORE_RING_SIZE, prod, bytes, n);
    this.idx.setUint32(RING.rsp_prod, (prod + n) >>> 0, true);
    this.kicker?.kick();
    return n;
  }

  /** The daemon has room for input again. */
  resume(): void {
    this.onEvent();
  }

  /**
   * A repeated introduction (domain_conn_reset): the channel stays bound; a domain that asked
   * to reconnect gets fresh ring indexes and is told it is connected again.
   */
  reset(_port: number): void {
    if (this.idx.getUint32(RING.connection, true) !== XENSTORE_RECONNECT) return;
    for (const f of [RING.req_cons, RING.req_prod, RING.rsp_cons, RING.rsp_prod]) this.idx.setUint32(f, 0, true);
    this.idx.setUint32(RING.connection, XENSTORE_CONNECTED, true);
    this.kicker?.kick();
  }

  /** The daemon gave up on this connection (ignore_connection): the domain learns why. */
  ignore(error: number): void {
    this.corrupt = `ignored (error ${error})`;
    this.idx.setUint32(RING.error, error, true);
    this.kicker?.kick();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.kicker?.unbind();
    this.release();
  }

  /** The domain kicked: it may have consumed replies, and may have sent requests. */
  onEvent(): void {
    const conn = this.conn;
    if (!conn || this.closed || this.corrupt) return;
    conn.writable();
    let took = false;
    while (conn.wantsInput && !conn.closed) {
      const cons = this.idx.getUint32(RING.req_cons, true);
      const prod = this.idx.getUint32(RING.req_prod, true);
      const avail = (prod - cons) >>> 0;
      if (avail === 0) break;
      if (avail > XENSTORE_RING_SIZE) {
        this.giveUp(`request ring indexes ${cons}/${prod}`);
        return;
      }
      const chunk = ringTake(this.page, RING.req, XENSTORE_RING_SIZE, cons, avail);
      this.idx.setUint32(RING.req_cons, (cons + avail) >>> 0, true);
      took = true;
      conn.feed(chunk);
    }
    if (took) this.kicker?.kick();
  }

  /** A ring with impossible indexes is not read again (C xenstored marks the domain bad). */
  private giveUp(why: string): void {
    this.corrupt = why;
    this.idx.setUint32(RING.error, XENSTORE_ERROR_RINGIDX, true);
    this.kicker?.kick();
  }
}
