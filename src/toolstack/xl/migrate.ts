// xl migrate and migrate-receive on the host (tools/xl/xl_migrate.c), over a byte channel (a TCP
// connection between two hosts): the receiver sends its banner; the sender sends the stream (xl
// header with the config, then libxl's and libxc's, memory going out while the domain runs);
// the receiver restores it as it arrives into "<name>--incoming", paused, and says "domain
// received"; the sender renames its copy "<name>--migratedaway" and says "cleared to unpause";
// the receiver renames, unpauses and reports; the sender destroys its copy. Until "cleared", any
// failure hands the domain back to the sender (a cancelled suspend) and leaves nothing on the
// receiver. After it, xl's rules: see the README.

import { connect, type Socket } from "node:net";
import { parseGuestConfig } from "../libxl/guest_cfg.ts";
import type { Host, HostDomain } from "../libxl/host.ts";
import { bufferedSink, type MigrationStep, openImage, writeMigrationStream } from "../libxl/save_restore.ts";
import { StreamFramer } from "../libxl/stream_framer.ts";
import type { ByteSource } from "../libxc/sr_stream.ts";
import type { LiveSaveResult, PrecopyRound } from "../libxc/sr_save_x86_pv.ts";
import type { RestoreResult } from "../libxc/sr_restore_x86_pv.ts";
import { retrievedConfig } from "./host_info.ts";
import { configTextFromJson } from "./save_cmds.ts";
import type { XlRequest } from "./xl_commands.ts";
import { libxlDomainConfig, yajlBeautify } from "./xl_format.ts";

const enc = new TextEncoder();
/** xl.h's messages: the banner without its NUL, the others with it (xl sends sizeof). */
export const MIGRATE_RECEIVER_BANNER = enc.encode("xl migration receiver ready, send binary domain data.\n");
export const MIGRATE_RECEIVER_READY = enc.encode("domain received, ready to unpause\0");
export const MIGRATE_PERMISSION_TO_GO = enc.encode("domain is yours, you are cleared to unpause\0");
export const MIGRATE_REPORT = enc.encode("my copy unpause results are as follows\0");

/** How long (virtual) the sender waits for the guest to suspend. */
const SUSPEND_WAIT_NS = 60e9;
/** Bytes the sender lets pile up in the socket before it waits for them to drain. */
const HIGH_WATER = 8 << 20;
const BATCHES_PER_TURN = 16;

/** Bytes read from a socket, handed out in exact amounts as they come. */
class Inbox {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiting: { n: number; then: (b: Buffer) => void } | undefined;
  closed: string | undefined;
  private onClosed: ((why: string) => void) | undefined;

  constructor(sock: Socket) {
    sock.on("data", (c: Buffer) => this.push(c));
    sock.on("close", () => this.close("the connection closed"));
    sock.on("error", (e) => this.close(e.message));
  }

  push(c: Buffer): void {
    this.chunks.push(c);
    this.size += c.length;
    this.deliver();
  }

  close(why: string): void {
    if (this.closed !== undefined) return;
    this.closed = why;
    const f = this.onClosed;
    this.onClosed = undefined;
    f?.(why);
  }

  /** Calls `then` with the next `n` bytes, or `failed` if the connection ends first. */
  read(n: number, then: (b: Buffer) => void, failed: (why: string) => void): void {
    this.waiting = { n, then };
    this.onClosed = failed;
    this.deliver();
    if (this.waiting && this.closed !== undefined) {
      this.onClosed = undefined;
      failed(this.closed);
    }
  }

  private deliver(): void {
    const w = this.waiting;
    if (!w || this.size < w.n) return;
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
    this.size -= w.n;
    this.waiting = undefined;
    this.onClosed = undefined;
    w.then(all.subarray(0, w.n));
  }
}

export interface MigrateSendOptions {
  debug: boolean;
  /** Progress, a line per event (rounds, the suspend), for the client. */
  report(r: Record<string, unknown>): void;
  /** Runs `then` once `check` holds (checked as the machine runs). */
  waitFor(check: () => boolean, then: () => void): void;
}

export interface MigrateSendResult {
  rounds: readonly PrecopyRound[];
  /** Wall-clock ms and virtual ms from the suspend request to the receiver's report. */
  downtimeMs: number;
  downtimeVirtualMs: number;
  bytes: number;
  totalMs: number;
}

/** xl migrate's sender for domain `domid` over `sock`; `done` gets the result or an error line. */
export function migrateSend(host: Host, domid: number, configJson: string, sock: Socket, opts: MigrateSendOptions, done: (r: MigrateSendResult | Error) => void): void {
  const hd = host.domains.get(domid);
  if (!hd) {
    done(new Error(`domain ${domid} is not one this host made`));
    return;
  }
  const name = hd.cfg.name;
  const inbox = new Inbox(sock);
  const started = performance.now();
  let suspendAt = 0;
  let suspendVirtual = 0;
  let steps: Generator<MigrationStep, LiveSaveResult & { bytes: number }, void> | undefined;
  let finished = false;
  const finish = (r: MigrateSendResult | Error) => {
    if (finished) return;
    finished = true;
    sock.destroy();
    done(r);
  };
  // Before "cleared to unpause": the domain comes back to us.
  const failResume = (why: string) => {
    if (finished) return;
    streaming = false;
    steps?.return(undefined as never);
    if (host.suspended(domid)) host.resumeSuspended(domid);
    else if (host.tryInfo(domid) && host.xs.tryRead(`/local/domain/${domid}/control/shutdown`) === "suspend") host.xs.write(`/local/domain/${domid}/control/shutdown`, "");
    finish(new Error(`${why}\nMigration failed, resuming at sender.`));
  };
  const sink = bufferedSink({ write: (c) => void sock.write(Buffer.from(c)) });
  const rounds: PrecopyRound[] = [];
  /** Sending the stream (not waiting for the guest, nor in the handshake): a dead socket ends it. */
  let streaming = false;
  sock.on("close", () => {
    if (streaming) setImmediate(pump);
  });

  const pump = () => {
    if (finished) return;
    if (inbox.closed !== undefined || sock.destroyed) return failResume(`migration receiver stream: ${inbox.closed ?? "the connection closed"}`);
    streaming = true;
    try {
      for (let i = 0; i < BATCHES_PER_TURN; i++) {
        const s = steps!.next();
        if (s.done) {
          streaming = false;
          sink.flush();
          awaitReady(s.value);
          return;
        }
        if ("suspend" in s.value) {
          rounds.push(...s.value.rounds);
          for (const r of s.value.rounds) opts.report({ round: r.round, sent: r.sent, dirtied: r.dirtied, bytes: s.value.bytes });
          streaming = false;
          sink.flush();
          suspendAt = performance.now();
          suspendVirtual = host.now();
          host.requestSuspend(domid);
          const deadline = host.now() + SUSPEND_WAIT_NS;
          opts.waitFor(
            () => host.suspended(domid) || host.tryInfo(domid) === undefined || host.now() >= deadline,
            () => {
              if (!host.suspended(domid)) {
                failResume(host.tryInfo(domid) ? `domain ${domid} did not suspend within ${SUSPEND_WAIT_NS / 1e9} s` : `domain ${domid} went away while suspending`);
                return;
              }
              opts.report({ suspended: true });
              pump();
            },
          );
          return;
        }
      }
    } catch (e) {
      streaming = false;
      return failResume(`migration sender: ${(e as Error).message}`);
    }
    if (sock.writableLength > HIGH_WATER) sock.once("drain", pump);
    else setImmediate(pump);
  };

  const awaitReady = (res: LiveSaveResult & { bytes: number }) => {
    inbox.read(
      MIGRATE_RECEIVER_READY.length,
      (b) => {
        if (!b.equals(MIGRATE_RECEIVER_READY)) return failResume("migration receiver stream contained unexpected data instead of ready message");
        opts.report({ message: "migration sender: Target has acknowledged transfer." });
        // Point of no return once "go" is sent: our copy is renamed away first.
        try {
          host.rename(domid, name, `${name}--migratedaway`);
        } catch (e) {
          return failResume((e as Error).message);
        }
        opts.report({ message: "migration sender: Giving target permission to start." });
        sock.write(Buffer.from(MIGRATE_PERMISSION_TO_GO));
        inbox.read(
          MIGRATE_REPORT.length + 1,
          (rep) => {
            if (!rep.subarray(0, MIGRATE_REPORT.length).equals(MIGRATE_REPORT)) return failedBadly("unexpected data instead of success/failure report message");
            const status = rep[MIGRATE_REPORT.length]!;
            const downtimeMs = performance.now() - suspendAt;
            const downtimeVirtualMs = (host.now() - suspendVirtual) / 1e6;
            if (status !== 0) {
              opts.report({ message: `migration sender: Target reports startup failure (status code ${status}).` });
              inbox.read(
                MIGRATE_PERMISSION_TO_GO.length,
                () => {
                  host.rename(domid, `${name}--migratedaway`, name);
                  host.resumeSuspended(domid);
                  finish(new Error("migration sender: Resumed OK.\nMigration failed due to problems at target."));
                },
                (why) => failedBadly(why),
              );
              return;
            }
            opts.report({ message: "migration sender: Target reports successful startup." });
            host.destroy(domid);
            finish({ rounds, downtimeMs, downtimeVirtualMs, bytes: res.bytes, totalMs: performance.now() - started });
          },
          (why) => failedBadly(why),
        );
      },
      (why) => failResume(`migration receiver stream: ${why}`),
    );
  };

  const failedBadly = (why: string) =>
    finish(
      new Error(
        `migration sender: ${why}\n** Migration failed during final handshake **\nDomain state is now undefined !\n` +
          "Please CHECK AT BOTH ENDS for running instances, before renaming and\n resuming at most one instance.",
      ),
    );

  inbox.read(
    MIGRATE_RECEIVER_BANNER.length,
    (b) => {
      if (!b.equals(MIGRATE_RECEIVER_BANNER)) return finish(new Error("migration receiver stream contained unexpected data instead of banner"));
      try {
        steps = writeMigrationStream(host.xc, domid, sink, configJson, { debug: opts.debug });
      } catch (e) {
        return finish(e as Error);
      }
      pump();
    },
    (why) => finish(new Error(`migration receiver stream: ${why} (no banner)`)),
  );
}

/** Framed bytes, read exactly; reading past them is a bug in the caller's pacing. */
class FramedSource implements ByteSource {
  private chunks: Uint8Array[] = [];
  private at = 0;

  push(b: Uint8Array): void {
    if (b.length > 0) this.chunks.push(b);
  }

  read(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      if (!c) throw new Error(`the stream reader ran past the bytes received (wanted ${n})`);
      const k = Math.min(n - got, c.length - this.at);
      out.set(c.subarray(this.at, this.at + k), got);
      got += k;
      this.at += k;
      if (this.at === c.length) {
        this.chunks.shift();
        this.at = 0;
      }
    }
    return out;
  }
}

/**
 * xl migrate-receive on `sock`: restores the stream as it arrives into "<name>--incoming",
 * paused; on "cleared to unpause", renames and unpauses it. `log` gets xl's target lines.
 */
export function migrateReceive(host: Host, sock: Socket, opts: { paused?: boolean; waitFor: MigrateSendOptions["waitFor"]; log(line: string): void }): void {
  const framer = new StreamFramer();
  const source = new FramedSource();
  let restore: Generator<unknown, HostDomain, void> | undefined;
  let pagesRead = 0;
  let hd: HostDomain | undefined;
  let name = "";
  let failed = false;
  let verify: RestoreResult["verify"];
  const trailing: Buffer[] = [];
  let handshake: ((b: Buffer) => void) | undefined;

  const fail = (why: string) => {
    if (failed) return;
    failed = true;
    opts.log(`migration target: ${why}`);
    // Nothing half-built stays: the restore destroys its domain when stopped.
    restore?.return(undefined as never);
    if (hd && host.tryInfo(hd.domid)) host.destroy(hd.domid);
    sock.destroy();
  };

  const step = () => {
    try {
      if (!restore) {
        if (framer.libxcRecords < 1) return;
        const img = openImage(source);
        const width = img.pvInfo.guestWidth === 8 ? 64 : 32;
        const text = configTextFromJson(img.config, width);
        const cfg = { ...parseGuestConfig(text, "<incoming>"), source: { file: "<incoming>", text } };
        name = cfg.name;
        restore = host.restore({ ...cfg, name: `${name}--incoming` }, img, { paused: true, onStreamComplete: (r) => (verify = r.verify) });
      }
      // Each step reads up to and including the next PAGE_DATA, or to the end.
      while (framer.ended || framer.pageDataRecords > pagesRead) {
        const r = restore.next();
        if (r.done) {
          hd = r.value;
          received();
          return;
        }
        pagesRead++;
      }
    } catch (e) {
      fail(`restore failed: ${(e as Error).message}`);
    }
  };

  const received = () => {
    if (verify) opts.log(`migration target: VERIFY compared ${verify.pages} pages, ${verify.mismatches.length} differ${verify.mismatches.length > 0 ? ` (first pfn 0x${verify.mismatches[0]!.toString(16)})` : ""}`);
    opts.log("migration target: Transfer complete, requesting permission to start domain.");
    sock.write(Buffer.from(MIGRATE_RECEIVER_READY));
    let got = Buffer.alloc(0);
    handshake = (b) => {
      got = Buffer.concat([got, b]);
      if (got.length < MIGRATE_PERMISSION_TO_GO.length) return;
      handshake = undefined;
      if (!got.subarray(0, MIGRATE_PERMISSION_TO_GO.length).equals(Buffer.from(MIGRATE_PERMISSION_TO_GO))) return fail("unexpected data instead of GO message");
      opts.log("migration target: Got permission, starting domain.");
      let status = 0;
      try {
        host.rename(hd!.domid, `${name}--incoming`, name);
        if (!opts.paused) host.unpause(hd!.domid);
        opts.log("migration target: Domain started successsfully.");
      } catch (e) {
        opts.log(`migration target: ${(e as Error).message}`);
        status = 3; // ERROR_FAIL, as xl sends -rc
      }
      sock.write(Buffer.concat([Buffer.from(MIGRATE_REPORT), Buffer.from([status])]));
      if (status !== 0) {
        opts.log("migration target: Failure, destroying our copy.");
        host.destroy(hd!.domid);
        sock.write(Buffer.from(MIGRATE_PERMISSION_TO_GO));
      }
      sock.end();
    };
    for (const t of trailing.splice(0)) handshake?.(t);
  };

  sock.on("error", () => {});
  sock.on("close", () => {
    if (!hd || handshake) fail("the sender went away before the domain was handed over");
  });
  sock.on("data", (c: Buffer) => {
    if (failed) return;
    if (handshake) return handshake(c);
    if (framer.ended) {
      trailing.push(c);
      return;
    }
    try {
      framer.feed(c);
    } catch (e) {
      return fail(`bad stream: ${(e as Error).message}`);
    }
    const extra = framer.trailing;
    const framed = framer.take();
    source.push(framed);
    if (extra > 0) {
      // What follows libxl's END belongs to the handshake.
      trailing.push(c.subarray(c.length - extra));
    }
    step();
  });
  opts.log("migration target: Ready to receive domain.");
  sock.write(Buffer.from(MIGRATE_RECEIVER_BANNER));
}

/** The host's `migrate` command: connects to the receiving host's ADDR:PORT and sends the domain. */
export function migrateCommand(r: XlRequest): void {
  const host = r.host;
  const domid = host.resolve(String(r.req["dom"] ?? ""));
  if (domid === 0) throw new Error("cannot migrate Domain-0");
  if (!host.domains.get(domid)) throw new Error(`domain ${domid} is not one this host made`);
  const target = String(r.req["target"] ?? "");
  const m = /^(.+):(\d+)$/.exec(target);
  if (!m) throw new Error(`migrate: ${JSON.stringify(target)} is not ADDR:PORT (a host started with --migrate-listen)`);
  const view = retrievedConfig(host, domid);
  if (!view) throw new Error(`domain ${domid} is gone`);
  const json = yajlBeautify(libxlDomainConfig(view));
  const sock = connect(Number(m[2]), m[1]!.replace(/^\[(.*)\]$/, "$1"));
  sock.setNoDelay(true);
  migrateSend(
    host,
    domid,
    json,
    sock,
    { debug: r.req["debug"] === true, report: (x) => r.reply({ progress: x }), waitFor: r.waitFor },
    (res) => {
      if (res instanceof Error) r.reply({ ok: false, error: res.message });
      else r.reply({ ok: true, done: true, ...res, downtimeMs: Math.round(res.downtimeMs * 10) / 10 });
    },
  );
}
