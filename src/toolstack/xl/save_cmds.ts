// xl save and xl restore on the host (tools/xl/xl_saverestore.c): save asks the guest to suspend
// through control/shutdown, waits for it, writes the image (xl header with the domain's config
// as libxl JSON, libxl's stream, libxc's inside) under a temporary name and renames it; then it
// destroys the domain, or with -c/-p hands it back through a cancelled suspend. Restore reads
// the config from the image, makes a domain, restores into it and unpauses it unless -p. Both
// work a batch at a time between the host's ticks, sending progress lines to the client.

import { closeSync } from "node:fs";
import { isAbsolute } from "node:path";
import { parseGuestConfig } from "../libxl/guest_cfg.ts";
import { AtomicFile, ImageFormatError, openImage, openImageFile, type TransferProgress, writeSaveImage } from "../libxl/save_restore.ts";
import { retrievedConfig } from "./host_info.ts";
import { libxlDomainConfig, yajlBeautify } from "./xl_format.ts";
import { XL_SAVE_HEADER_SIZE } from "./save_format.ts";
import type { XlHandler, XlRequest } from "./xl_commands.ts";

/** How long (virtual) libxl waits for a guest to suspend once asked. */
const SUSPEND_WAIT_NS = 60e9;
/** PAGE_DATA batches per host turn: the machine and other clients get a turn in between. */
const BATCHES_PER_TURN = 16;

/** xl's on_* names back from libxl_action_on_shutdown_to_string's. */
const actionFromJson = (a: unknown) => (a === "restart_rename" ? "rename-restart" : String(a).replace(/_/g, "-"));

/** The xl.cfg a saved libxl_domain_config stands for (xl restore parses the JSON instead of a file). */
export function configTextFromJson(json: Record<string, unknown>, guestWidth: 32 | 64): string {
  const obj = (v: unknown): Record<string, unknown> => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});
  const c = obj(json["c_info"]);
  const b = obj(json["b_info"]);
  const str = (v: unknown, what: string) => {
    if (typeof v !== "string") throw new ImageFormatError(`the image's domain config has no ${what}`);
    return JSON.stringify(v);
  };
  const lines = [`name = ${str(c["name"], "c_info.name")}`, `uuid = ${str(c["uuid"], "c_info.uuid")}`, `guest_width = ${guestWidth}`];
  const num = (key: string) => (typeof b[key] === "number" ? (b[key] as number) : undefined);
  const avail = Array.isArray(b["avail_vcpus"]) ? b["avail_vcpus"].length : undefined;
  if (avail !== undefined) lines.push(`vcpus = ${avail}`);
  if (num("max_vcpus") !== undefined) lines.push(`maxvcpus = ${num("max_vcpus")}`);
  if (num("target_memkb") !== undefined) lines.push(`memory = ${Math.floor(num("target_memkb")! / 1024)}`);
  if (num("max_memkb") !== undefined) lines.push(`maxmem = ${Math.floor(num("max_memkb")! / 1024)}`);
  if (num("event_channels") !== undefined) lines.push(`max_event_channels = ${num("event_channels")}`);
  if (typeof b["kernel"] === "string") lines.push(`kernel = ${JSON.stringify(b["kernel"])}`);
  if (typeof b["cmdline"] === "string") lines.push(`cmdline = ${JSON.stringify(b["cmdline"])}`);
  for (const key of ["on_poweroff", "on_reboot", "on_crash"]) if (json[key] !== undefined) lines.push(`${key} = ${JSON.stringify(actionFromJson(json[key]))}`);
  return `${lines.join("\n")}\n`;
}

/** Runs `steps` a few batches per host turn, reporting progress, then `done` (or `failed`). */
function drive<T>(r: XlRequest, steps: Generator<TransferProgress, T, void>, done: (v: T) => void, failed: (e: Error) => void): void {
  const turn = () => {
    try {
      for (let i = 0; i < BATCHES_PER_TURN; i++) {
        const s = steps.next();
        if (s.done) {
          done(s.value);
          return;
        }
        if (i === BATCHES_PER_TURN - 1) r.reply({ progress: s.value });
      }
    } catch (e) {
      failed(e as Error);
      return;
    }
    setImmediate(turn);
  };
  turn();
}

export const SAVE_COMMANDS: Record<string, XlHandler> = {
  save(r) {
    const host = r.host;
    const domid = host.resolve(String(r.req["dom"] ?? ""));
    const file = String(r.req["file"] ?? "");
    if (!isAbsolute(file)) throw new Error("save: the file must be an absolute path");
    if (domid === 0) throw new Error("cannot save Domain-0");
    const hd = host.domains.get(domid);
    if (!hd) throw new Error(`domain ${domid} is not one this host made`);
    const checkpoint = r.req["checkpoint"] === true;
    const leavePaused = r.req["paused"] === true;
    const view = retrievedConfig(host, domid);
    if (!view) throw new Error(`domain ${domid} is gone`);
    const json = yajlBeautify(libxlDomainConfig(view));
    host.requestSuspend(domid);
    const deadline = host.now() + SUSPEND_WAIT_NS;
    r.waitFor(
      () => host.suspended(domid) || host.tryInfo(domid) === undefined || host.now() >= deadline,
      () => {
        if (!host.suspended(domid)) {
          // libxl gives up on a guest that ignores the request, and takes the request back.
          if (host.tryInfo(domid)) host.xs.write(`/local/domain/${domid}/control/shutdown`, "");
          r.reply({ ok: false, error: host.tryInfo(domid) ? `domain ${domid} did not suspend within ${SUSPEND_WAIT_NS / 1e9} s` : `domain ${domid} went away while suspending` });
          return;
        }
        let out: AtomicFile;
        try {
          out = new AtomicFile(file);
        } catch (e) {
          host.resumeSuspended(domid);
          r.reply({ ok: false, error: `Failed to open temp file ${file} for writing: ${(e as Error).message}` });
          return;
        }
        r.reply({ info: { mandatoryFlags: 3, optionalFlags: 0, optionalDataLen: Buffer.byteLength(json) + 5 } });
        drive(
          r,
          writeSaveImage(host.xc, domid, out.sink, json),
          (res) => {
            out.commit();
            if (checkpoint || leavePaused) {
              if (leavePaused) host.pause(domid);
              host.resumeSuspended(domid);
            } else host.destroy(domid);
            r.reply({ ok: true, done: true, bytes: res.bytes, pfns: res.pfns, pages: res.pagesWithData, vcpus: res.vcpus });
          },
          (e) => {
            out.abort();
            if (host.tryInfo(domid)) host.resumeSuspended(domid);
            r.reply({ ok: false, error: `Failed to save domain, resuming domain: ${e.message}` });
          },
        );
      },
    );
  },

  restore(r) {
    const host = r.host;
    const file = String(r.req["file"] ?? "");
    if (!isAbsolute(file)) throw new Error("restore: the file must be an absolute path");
    let opened: ReturnType<typeof openImageFile>;
    try {
      opened = openImageFile(file);
    } catch (e) {
      throw new Error(`cannot open ${file}: ${(e as Error).message}`);
    }
    const close = () => closeSync(opened.fd);
    try {
      const img = openImage(opened.source);
      const width = img.pvInfo.guestWidth === 8 ? 64 : 32;
      const text = configTextFromJson(img.config, width);
      const cfg = { ...parseGuestConfig(text, "<saved>"), source: { file: "<saved>", text } };
      r.reply({ info: { mandatoryFlags: img.xl.mandatoryFlags, optionalFlags: img.xl.optionalFlags, optionalDataLen: img.xl.size - XL_SAVE_HEADER_SIZE } });
      drive(
        r,
        host.restore(cfg, img, { paused: r.req["paused"] === true }),
        (hd) => {
          close();
          r.reply({ ok: true, done: true, domid: hd.domid, name: hd.cfg.name });
        },
        (e) => {
          close();
          r.reply({ ok: false, error: `${file}: ${e.message}` });
        },
      );
    } catch (e) {
      close();
      throw new Error(`${file}: ${(e as Error).message}`);
    }
  },
};
