// xl save and xl restore, client side (tools/xl/xl_saverestore.c): the host writes and reads the
// image; this side prints xl's lines, and progress on a terminal (pages, MiB/s, eta) while the
// host streams it.

import type { Command } from "commander";
import { resolve } from "node:path";

type Reply = Record<string, unknown>;
type XlStream = (
  dir: string,
  req: Record<string, unknown>,
  onMore?: (r: Reply) => void,
  onOpen?: (conn: { send(req: Record<string, unknown>): void; close(): void }) => void,
) => Promise<Reply | undefined>;

interface Progress {
  done: number;
  total: number;
  bytes: number;
}

/** A progress line for a terminal: what is done, the rate, and (when the total is known) the eta. */
export function progressLine(what: string, p: Progress, elapsedSec: number): string {
  const mib = p.bytes / (1 << 20);
  const rate = elapsedSec > 0 ? mib / elapsedSec : 0;
  const frac = p.total > 0 ? p.done / p.total : 0;
  const eta = p.total > 0 && frac > 0 ? (elapsedSec / frac) * (1 - frac) : undefined;
  const count = p.total > 0 ? `${p.done}/${p.total} pages (${Math.floor(frac * 100)}%)` : `${p.done} pages`;
  return `${what}: ${count}, ${mib.toFixed(1)} MiB, ${rate.toFixed(1)} MiB/s${eta === undefined ? "" : `, eta ${eta.toFixed(1)} s`}`;
}

/** Sends `req` and follows its progress lines until the final answer; returns it, or undefined on failure (printed). */
async function transfer(xl: XlStream, dir: string, req: Reply, what: string, onInfo: (r: Reply) => void): Promise<Reply | undefined> {
  const tty = process.stderr.isTTY === true;
  const started = performance.now();
  let final: Reply | undefined;
  let conn: { close(): void } | undefined;
  let shown = false;
  const first = await xl(
    dir,
    req,
    (r) => {
      if (r["info"] !== undefined) onInfo(r);
      else if (r["progress"] !== undefined) {
        if (!tty) return;
        process.stderr.write(`\r${progressLine(what, r["progress"] as Progress, (performance.now() - started) / 1000)}\x1b[K`);
        shown = true;
      } else {
        final = r;
        conn?.close();
      }
    },
    (c) => {
      conn = c;
    },
  );
  if (shown) process.stderr.write("\n");
  if (first === undefined) return undefined;
  if (!final) {
    console.error(`${what}: the host closed the connection before it finished`);
    process.exitCode = 1;
    return undefined;
  }
  if (final["ok"] === false) {
    console.error(String(final["error"] ?? "failed"));
    process.exitCode = 1;
    return undefined;
  }
  return final;
}

const infoText = (r: Reply) => {
  const i = r["info"] as { mandatoryFlags: number; optionalFlags: number; optionalDataLen: number };
  return `0x${i.mandatoryFlags.toString(16)}/0x${i.optionalFlags.toString(16)}/${i.optionalDataLen}`;
};

export function registerXlSave(program: Command, hostDir: (program: Command) => string, xl: XlStream): void {
  program
    .command("save")
    .description("Save a domain state to restore later")
    .usage("[options] <Domain> <CheckpointFile>")
    .argument("<domain>")
    .argument("<file>")
    .option("-c", "Leave domain running after creating the snapshot.")
    .option("-p", "Leave domain paused after creating the snapshot.")
    .addHelpText(
      "after",
      "\nThe guest suspends through control/shutdown; the image is xl's format (libxl v2 and libxc v3 streams),\nwritten under a temporary name and renamed once complete. Without -c or -p the domain is destroyed.",
    )
    .action(async (dom: string, file: string, opts: { c?: boolean; p?: boolean }) => {
      const path = resolve(file);
      await transfer(xl, hostDir(program), { cmd: "save", dom, file: path, checkpoint: opts.c === true, paused: opts.p === true }, "Saving", (r) => {
        console.error(`Saving to ${path} new xl format (info ${infoText(r)})`);
      });
    });

  program
    .command("restore")
    .description("Restore a domain from a saved state")
    .usage("[options] <CheckpointFile>")
    .argument("<file>")
    .option("-p", "Do not unpause domain after restoring it.")
    .addHelpText("after", "\nThe domain's config comes from the image; it gets a new domid.")
    .action(async (file: string, opts: { p?: boolean }) => {
      const path = resolve(file);
      await transfer(xl, hostDir(program), { cmd: "restore", file: path, paused: opts.p === true }, "Restoring", (info) => {
        console.error(`Loading new save file ${path} (new xl fmt info ${infoText(info)})`);
        console.error(" Savefile contains xl domain config in JSON format");
        console.error("Parsing config from <saved>");
      });
    });

  program
    .command("migrate")
    .description("Migrate a domain to another host")
    .usage("[options] <Domain> <host>")
    .argument("<domain>")
    .argument("<host>", "ADDR:PORT of a host started with --migrate-listen")
    .option("--debug", "Verify the transfer: every page is sent again after the final round and compared (libxc's VERIFY).")
    .option("--json", "Print the rounds, downtime and totals as JSON.")
    .option("-s <sshcommand>", "Not supported yet: only TCP to a --migrate-listen host.")
    .addHelpText(
      "after",
      "\nMemory goes out while the domain runs (pre-copy rounds with log-dirty), then it is suspended for the\nlast pages; the receiver restores it as <name>--incoming, and starts it once this side says so.",
    )
    .action(async (dom: string, target: string, opts: { debug?: boolean; json?: boolean; s?: string }) => {
      if (opts.s !== undefined) {
        console.error("migrate: -s (a transport command) is not supported yet; give the receiving host's ADDR:PORT (xensim up --migrate-listen)");
        process.exitCode = 1;
        return;
      }
      const started = performance.now();
      let final: Reply | undefined;
      let conn: { close(): void } | undefined;
      await xl(
        hostDir(program),
        { cmd: "migrate", dom, target, debug: opts.debug === true },
        (r) => {
          const p = r["progress"] as Reply | undefined;
          if (p === undefined) {
            final = r;
            conn?.close();
            return;
          }
          if (opts.json) return;
          if (p["round"] !== undefined) {
            const mib = Number(p["bytes"]) / (1 << 20);
            const secs = (performance.now() - started) / 1000;
            console.error(`migration sender: round ${p["round"]}: ${p["sent"]} pages sent, ${p["dirtied"]} dirtied, ${mib.toFixed(1)} MiB, ${(mib / Math.max(secs, 1e-3)).toFixed(1)} MiB/s`);
          } else if (p["suspended"]) console.error("migration sender: domain suspended, sending the last pages");
          else if (p["message"] !== undefined) console.error(String(p["message"]));
        },
        (c) => {
          conn = c;
        },
      );
      if (!final) {
        console.error("migrate: the host closed the connection before it finished");
        process.exitCode = 1;
        return;
      }
      if (final["ok"] === false) {
        console.error(String(final["error"] ?? "failed"));
        process.exitCode = 1;
        return;
      }
      if (opts.json) {
        const { ok: _ok, done: _done, ...rest } = final;
        console.log(JSON.stringify(rest, null, 2));
      } else {
        console.error(`Migration successful (downtime ${final["downtimeMs"]} ms wall, ${Number(final["downtimeVirtualMs"]).toFixed(1)} ms virtual).`);
      }
    });
}
