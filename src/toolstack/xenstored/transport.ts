// What the daemon core talks to: transports of client connections, the connections as
// transports see them, the hypervisor/toolstack world, and time.

import type { XsdError } from "../../abi/xs_wire.ts";

export interface XsTransport {
  /** Offers bytes to the peer; returns how many it took (a full ring may take fewer, or 0). */
  write(bytes: Uint8Array): number;
  /** The daemon has finished with this connection (it closed it, or the domain was released). */
  close(): void;
  /** Called once, right after the daemon creates the connection for this transport. */
  attach?(conn: XsConnection): void;
  /** wantsInput has become true again after being false: offer the input held back. */
  resume?(): void;
  /**
   * XS_INTRODUCE for this transport's domain (right after creation, and again on a repeated
   * introduction): bind `port`, zero the ring indexes, and if the ring's `connection` field asks
   * for XENSTORE_RECONNECT, set it to XENSTORE_CONNECTED and notify (C's domain_conn_reset).
   */
  reset?(port: number): void;
  /** The daemon ignores this connection from now on (C's ignore_connection): put `error` (XENSTORE_ERROR_*) in the ring. */
  ignore?(error: number): void;
}

export interface XsConnection {
  readonly domid: number;
  /** Bytes from the peer, in any chunking; whole messages are processed as they complete. */
  feed(bytes: Uint8Array): void;
  /** The transport has room again: write queued output. */
  writable(): void;
  /** False while the daemon will not read more (e.g. over its outstanding-request quota, as C xenstored stops reading). */
  readonly wantsInput: boolean;
  readonly closed: boolean;
  close(): void;
}

/** What the daemon asks of the hypervisor/toolstack world (C xenstored uses libxenctrl and the evtchn device). */
export interface XsDomainBackend {
  /** Whether the hypervisor has this domain (C xenstored's xc_domain_getinfo check; e.g. chmod owner must exist). */
  domainExists(domid: number): boolean;
  /** Whether it is dying or shut down (for the @releaseDomain rescan); undefined when it no longer exists. */
  domainState(domid: number): { dying: boolean; shutdown: boolean } | undefined;
  /** XS_INTRODUCE: map the domain's ring page at `mfn` and bind `port`; a transport, or the error to answer. */
  introduce(domid: number, mfn: number, port: number): XsTransport | XsdError;
  /** Dom0's own ring (C maps /proc/xen/xsd_kva at start); without it dom0 is introduced with no ring. */
  dom0Transport?(): XsTransport;
}

/** Time as the daemon sees it (ms, monotonic) and its timers: watch-event timeouts, write rate limit. */
export interface XsClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/**
 * The default backend, for the standalone daemon: dom0 and every introduced domain exist and
 * never die; an introduced domain gets a transport with no ring behind it (its output is dropped).
 */
export class StandaloneBackend implements XsDomainBackend {
  private readonly known = new Set<number>([0]);
  domainExists(domid: number): boolean {
    return this.known.has(domid);
  }
  domainState(domid: number): { dying: boolean; shutdown: boolean } | undefined {
    return this.known.has(domid) ? { dying: false, shutdown: false } : undefined;
  }
  introduce(domid: number): XsTransport {
    this.known.add(domid);
    return new NullTransport();
  }
}

/** A transport with no peer: takes and drops everything. */
export class NullTransport implements XsTransport {
  write(bytes: Uint8Array): number {
    return bytes.length;
  }
  close(): void {}
}

/** Wall-clock time and Node timers. */
export const realClock: XsClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};
