// The xenstore wire protocol (io/xs_wire.h): message types, error strings, limits, the message
// header and the shared ring page a domain talks to xenstored through.

/** enum xsd_sockmsg_type, as Xen 4.17 defines it (type 20, XS_RESTRICT, was removed). */
export const XS = {
  CONTROL: 0,
  DIRECTORY: 1,
  READ: 2,
  GET_PERMS: 3,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  INTRODUCE: 8,
  RELEASE: 9,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  SET_PERMS: 14,
  WATCH_EVENT: 15,
  ERROR: 16,
  IS_DOMAIN_INTRODUCED: 17,
  RESUME: 18,
  SET_TARGET: 19,
  RESET_WATCHES: 21,
  DIRECTORY_PART: 22,
  TYPE_COUNT: 23,
  INVALID: 0xffff,
} as const;

/** Names for messages (traces, errors). */
export const XS_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(XS)
    .filter(([k]) => k !== "TYPE_COUNT" && k !== "INVALID")
    .map(([k, v]) => [v, k]),
);

/** xsd_errors[], in the header's order: errors travel as these strings. */
export const XSD_ERRORS = [
  "EINVAL",
  "EACCES",
  "EEXIST",
  "EISDIR",
  "ENOENT",
  "ENOMEM",
  "ENOSPC",
  "EIO",
  "ENOTEMPTY",
  "ENOSYS",
  "EROFS",
  "EBUSY",
  "EAGAIN",
  "EISCONN",
  "E2BIG",
  "EPERM",
] as const;
export type XsdError = (typeof XSD_ERRORS)[number];

/** enum xs_watch_type: the fields of a WATCH_EVENT payload. */
export const XS_WATCH_PATH = 0;
export const XS_WATCH_TOKEN = 1;

/** sizeof(struct xsd_sockmsg): type, req_id, tx_id, len, all u32 little-endian. */
export const XSD_SOCKMSG_SIZE = 16;
export const XENSTORE_PAYLOAD_MAX = 4096;
export const XENSTORE_ABS_PATH_MAX = 3072;
export const XENSTORE_REL_PATH_MAX = 2048;

/** struct xenstore_domain_interface: two 1 KiB rings and their indexes in one page. */
export const XENSTORE_RING_SIZE = 1024;
export const XENSTORE_DOMAIN_INTERFACE = {
  req: 0,
  rsp: 1024,
  req_cons: 2048,
  req_prod: 2052,
  rsp_cons: 2056,
  rsp_prod: 2060,
  server_features: 2064,
  connection: 2068,
  error: 2072,
  size: 2076,
} as const;
export const XENSTORE_SERVER_FEATURE_RECONNECTION = 1;
export const XENSTORE_SERVER_FEATURE_ERROR = 2;
export const XENSTORE_CONNECTED = 0;
export const XENSTORE_RECONNECT = 1;
export const XENSTORE_ERROR_NONE = 0;
export const XENSTORE_ERROR_COMM = 1;
export const XENSTORE_ERROR_RINGIDX = 2;
export const XENSTORE_ERROR_PROTO = 3;

/**
 * enum xenbus_state (io/xenbus.h): what a split driver's two ends write to their `state` nodes
 * as they connect (Initialising, InitWait, Initialised, Connected) and disconnect.
 */
export const XENBUS_STATE = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;

export interface XsMsgHeader {
  type: number;
  reqId: number;
  txId: number;
  len: number;
}

export function readXsHeader(buf: Uint8Array, at = 0): XsMsgHeader {
  const dv = new DataView(buf.buffer, buf.byteOffset + at, XSD_SOCKMSG_SIZE);
  return { type: dv.getUint32(0, true), reqId: dv.getUint32(4, true), txId: dv.getUint32(8, true), len: dv.getUint32(12, true) };
}

/** One whole message: the header followed by `payload`. */
export function encodeXsMsg(type: number, reqId: number, txId: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(XSD_SOCKMSG_SIZE + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, type >>> 0, true);
  dv.setUint32(4, reqId >>> 0, true);
  dv.setUint32(8, txId >>> 0, true);
  dv.setUint32(12, payload.length, true);
  out.set(payload, XSD_SOCKMSG_SIZE);
  return out;
}

/** Strings joined as the protocol wants them: each followed by a NUL. */
export function xsStrings(...parts: string[]): Uint8Array {
  return Buffer.from(parts.map((p) => `${p}\0`).join(""), "latin1");
}

/**
 * Calls `onMsg` for each whole message at the front of `buf`; returns how many bytes they took
 * (the rest is an incomplete message), or -1 at a header whose length exceeds the payload limit.
 */
export function takeXsMessages(buf: Uint8Array, onMsg: (h: XsMsgHeader, payload: Uint8Array) => void): number {
  let at = 0;
  while (buf.length - at >= XSD_SOCKMSG_SIZE) {
    const h = readXsHeader(buf, at);
    if (h.len > XENSTORE_PAYLOAD_MAX) return -1;
    if (buf.length - at < XSD_SOCKMSG_SIZE + h.len) break;
    onMsg(h, buf.slice(at + XSD_SOCKMSG_SIZE, at + XSD_SOCKMSG_SIZE + h.len));
    at += XSD_SOCKMSG_SIZE + h.len;
  }
  return at;
}

/** A payload as text (xenstore strings are bytes; latin1 keeps them one to one). */
export function xsText(p: Uint8Array): string {
  return Buffer.from(p.buffer, p.byteOffset, p.length).toString("latin1");
}

/** A payload's NUL-terminated strings, without the empty tail after the last NUL. */
export function xsStringList(p: Uint8Array): string[] {
  const parts = xsText(p).split("\0");
  if (parts.length > 0 && parts[parts.length - 1] === "") parts.pop();
  return parts;
}
