// The header `xl save` puts before libxl's stream (tools/xl/xl.h, xl_saverestore.c; read back by
// create_domain in xl_vmcontrol.c): a 32-byte magic, four u32s in the saving host's byte order
// (byte-order word 0x01020304, mandatory flags, optional flags, optional data length), then the
// optional data: a u32 length and the domain's configuration. xl writes the configuration as
// libxl's JSON with its terminating NUL counted in the length (none: the length is 0).

import { dataView, hex, StreamError } from "../libxc/sr_format.ts";
import { type ByteSink, type ByteSource, type StreamInput, type StreamOutput, toInput, toOutput } from "../libxc/sr_stream.ts";

/** "Xen saved domain, xl format\n \0 \r". */
export const XL_SAVE_MAGIC: Uint8Array = new TextEncoder().encode("Xen saved domain, xl format\n \0 \r");
export const XL_SAVE_HEADER_SIZE = 48;
export const XL_BYTEORDER = 0x01020304;
export const XL_MANDATORY_FLAG = { JSON: 1 << 0, STREAMv2: 1 << 1 } as const;
const XL_MANDATORY_ALL = XL_MANDATORY_FLAG.JSON | XL_MANDATORY_FLAG.STREAMv2;
/** Our bound on the optional data (xl has none; a JSON config is a few KiB). */
export const XL_OPTIONAL_DATA_MAX = 16 << 20;

export interface XlSaveHeader {
  readonly mandatoryFlags: number;
  /** xl ignores these on restore. */
  readonly optionalFlags: number;
  /** The configuration: JSON (XL_MANDATORY_FLAG.JSON) without its NUL, or old xl.cfg text; undefined if none. */
  readonly config: { readonly json: boolean; readonly text: string } | undefined;
  /** Size of the whole header with its optional data: where libxl's stream starts. */
  readonly size: number;
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The header `xl save` writes for a domain whose JSON configuration is `configJson` (or none). */
export function encodeXlSaveHeader(configJson?: string): Uint8Array {
  if (configJson?.includes("\0")) throw new RangeError("xl save header: the configuration contains a NUL");
  const config = configJson === undefined ? new Uint8Array(0) : utf8.encode(`${configJson}\0`);
  const b = new Uint8Array(XL_SAVE_HEADER_SIZE + 4 + config.length);
  const dv = dataView(b);
  b.set(XL_SAVE_MAGIC);
  dv.setUint32(32, XL_BYTEORDER, true);
  dv.setUint32(36, XL_MANDATORY_FLAG.STREAMv2 | (config.length > 0 ? XL_MANDATORY_FLAG.JSON : 0), true);
  dv.setUint32(40, 0, true);
  dv.setUint32(44, 4 + config.length, true);
  dv.setUint32(48, config.length, true);
  b.set(config, 52);
  return b;
}

export function writeXlSaveHeader(out: ByteSink | StreamOutput, configJson?: string): void {
  toOutput(out).write(encodeXlSaveHeader(configJson));
}

export interface XlHeaderOptions {
  /** Bound on the optional data; default XL_OPTIONAL_DATA_MAX. */
  readonly maxOptionalData?: number;
}

/**
 * Reads and checks the header and its optional data, leaving `input` at libxl's stream. Refuses
 * what xl refuses (magic, byte order, unknown mandatory flags, truncated optional data) and what
 * we cannot restore: a stream without STREAMv2 (pre-4.6 libxc), a JSON config that is not
 * NUL-terminated UTF-8.
 */
export function readXlSaveHeader(input: ByteSource | StreamInput, opts: XlHeaderOptions = {}): XlSaveHeader {
  const inp = toInput(input);
  const start = inp.offset;
  const bad = (msg: string) => new StreamError(`xl save header at offset ${hex(start)}: ${msg}`, { offset: start });
  const h = inp.readExact(XL_SAVE_HEADER_SIZE, "xl save header");
  const magicBad = XL_SAVE_MAGIC.findIndex((c, i) => h[i] !== c);
  if (magicBad >= 0) throw bad(`wrong magic (byte ${magicBad} is ${hex(h[magicBad]!)}, not ${hex(XL_SAVE_MAGIC[magicBad]!)}): not an xl save file`);
  const dv = dataView(h);
  const order = dv.getUint32(32, true);
  if (order !== XL_BYTEORDER) {
    if (order === 0x04030201) throw bad("wrong byte order: saved on a big-endian host");
    throw bad(`byte-order word ${hex(order)} is not ${hex(XL_BYTEORDER)}`);
  }
  const mandatoryFlags = dv.getUint32(36, true);
  const optionalFlags = dv.getUint32(40, true);
  const optLen = dv.getUint32(44, true);
  const unknown = mandatoryFlags & ~XL_MANDATORY_ALL;
  if (unknown !== 0) throw bad(`mandatory flags ${hex(unknown >>> 0)} are not supported`);
  if (!(mandatoryFlags & XL_MANDATORY_FLAG.STREAMv2)) throw bad("mandatory flag STREAMv2 is clear: a legacy (pre-Xen 4.6) stream, not supported");
  const max = opts.maxOptionalData ?? XL_OPTIONAL_DATA_MAX;
  if (optLen > max) throw bad(`optional data length ${optLen} exceeds the limit of ${max} bytes`);
  const opt = inp.readExact(optLen, "xl save header optional data", { offset: start });
  let config: XlSaveHeader["config"];
  if (optLen > 0) {
    // as xl: any optional data starts with the config's length; bytes after the config are skipped
    if (optLen < 4) throw bad(`optional data of ${optLen} bytes cannot hold the config length (4 bytes)`);
    const len = dataView(opt).getUint32(0, true);
    if (len > optLen - 4) throw bad(`config length ${len} exceeds the ${optLen - 4} bytes of optional data after it`);
    const raw = opt.subarray(4, 4 + len);
    const json = (mandatoryFlags & XL_MANDATORY_FLAG.JSON) !== 0;
    if (len > 0) config = { json, text: decodeConfig(raw, json, bad) };
    else if (json) throw bad("flag JSON is set but the config is empty");
  } else if (mandatoryFlags & XL_MANDATORY_FLAG.JSON) {
    throw bad("flag JSON is set but there is no optional data");
  }
  return { mandatoryFlags, optionalFlags, config, size: XL_SAVE_HEADER_SIZE + optLen };
}

function decodeConfig(raw: Uint8Array, json: boolean, bad: (msg: string) => StreamError): string {
  let body = raw;
  if (json) {
    if (raw[raw.length - 1] !== 0) throw bad("the JSON config is not NUL-terminated");
    body = raw.subarray(0, raw.length - 1);
  } else if (raw[raw.length - 1] === 0) {
    body = raw.subarray(0, raw.length - 1);
  }
  const nul = body.indexOf(0);
  if (nul >= 0) throw bad(`the config has a NUL at byte ${nul} of ${raw.length}`);
  try {
    return strictUtf8.decode(body);
  } catch {
    throw bad("the config is not UTF-8");
  }
}
