// XS_CONTROL commands of xenstored_control.c (4.17), except live-update (see doControl).

import type { Connection } from "./connection.ts";
import { atoi, countStrings, getString, getStrings } from "./cstr.ts";
import type { Xenstored } from "./daemon.ts";
import type { HandlerResult } from "./ops.ts";
import { formatQuotas, HARD_QUOTAS, SOFT_QUOTAS } from "./quotas.ts";

type Cmd = (xs: Xenstored, conn: Connection, args: string[]) => HandlerResult;

function quotaSet(xs: Xenstored, conn: Connection, args: string[], table: typeof HARD_QUOTAS): HandlerResult {
  if (args.length !== 2) return "EINVAL";
  const val = atoi(args[1]!);
  if (val < 1) return "EINVAL";
  const e = table.find((q) => q.name === args[0]);
  if (e === undefined) return "EINVAL";
  xs.quotas[e.key] = val;
  xs.sendAck(conn);
  return undefined;
}

/** domain_get_quota */
function quotaGet(xs: Xenstored, conn: Connection, domid: number): HandlerResult {
  const d = xs.domains.get(domid);
  if (d === undefined) return "ENOENT";
  const ent = (name: string, v: number): string => `${name.padEnd(16)}: ${String(v).padStart(8)}\n`;
  const resp =
    `Domain ${domid}:\n` +
    ent("nodes", d.nbentry) +
    ent("watches", d.nbwatch) +
    ent("transactions", d.conn?.transactionStarted ?? 0) +
    ent("outstanding", d.nboutstanding) +
    ent("memory", d.memory);
  xs.sendReplyString(conn, resp);
  return undefined;
}

const CMDS: ReadonlyArray<{ name: string; pars: string; func: Cmd }> = [
  {
    name: "check",
    pars: "",
    func: (xs, conn, args) => {
      if (args.length) return "EINVAL";
      xs.checkStore();
      xs.sendAck(conn);
      return undefined;
    },
  },
  {
    name: "log",
    pars: "on|off",
    func: (xs, conn, args) => {
      if (args.length !== 1) return "EINVAL";
      if (args[0] === "on") xs.tracer.reopen();
      else if (args[0] === "off") xs.tracer.close();
      else return "EINVAL";
      xs.sendAck(conn);
      return undefined;
    },
  },
  {
    name: "logfile",
    pars: "<file>",
    func: (xs, conn, args) => {
      if (args.length !== 1) return "EINVAL";
      xs.tracer.close();
      xs.tracer.file = args[0]!;
      xs.tracer.reopen();
      xs.sendAck(conn);
      return undefined;
    },
  },
  {
    name: "memreport",
    pars: "[<file>]",
    func: (xs, conn, args) => {
      if (args.length > 1) return "EINVAL";
      // EBADF has no xsd_errors string, so C answers EINVAL.
      if (!xs.memReport(args[0])) return "EINVAL";
      xs.sendAck(conn);
      return undefined;
    },
  },
  {
    name: "print",
    pars: "<string>",
    func: (xs, conn, args) => {
      if (args.length !== 1) return "EINVAL";
      xs.log(`control: ${args[0]}`);
      xs.sendAck(conn);
      return undefined;
    },
  },
  {
    name: "quota",
    pars: "[set <name> <val>|<domid>]",
    func: (xs, conn, args) => {
      if (args.length === 0) {
        xs.sendReplyString(conn, formatQuotas(xs.quotas, HARD_QUOTAS));
        return undefined;
      }
      if (args[0] === "set") return quotaSet(xs, conn, args.slice(1), HARD_QUOTAS);
      if (args.length !== 1) return "EINVAL";
      return quotaGet(xs, conn, atoi(args[0]!) >>> 0);
    },
  },
  {
    name: "quota-soft",
    pars: "[set <name> <val>]",
    func: (xs, conn, args) => {
      if (args.length === 0) {
        xs.sendReplyString(conn, formatQuotas(xs.quotas, SOFT_QUOTAS));
        return undefined;
      }
      if (args[0] === "set") return quotaSet(xs, conn, args.slice(1), SOFT_QUOTAS);
      return "EINVAL";
    },
  },
  {
    name: "help",
    pars: "",
    func: (xs, conn, args) => {
      if (args.length) return "EINVAL";
      let resp = "";
      for (const c of CMDS) resp += `${c.name}\t${c.pars}\n`;
      xs.sendReplyString(conn, resp);
      return undefined;
    },
  },
];

/**
 * do_control. 4.17 also has "live-update" (replace the running daemon by a new binary, keeping
 * its state); this daemon has no such thing, so the command is unknown here (EINVAL).
 */
export function doControl(xs: Xenstored, conn: Connection, payload: Buffer): HandlerResult {
  if (conn.unprivileged) return "EACCES";
  const off = getString(payload, 0);
  if (off === 0) return "EINVAL";
  const name = payload.toString("latin1", 0, off - 1);
  const cmd = CMDS.find((c) => c.name === name);
  if (cmd === undefined) return "EINVAL";
  const num = countStrings(payload);
  const { vec } = getStrings(payload, num);
  return cmd.func(xs, conn, vec.slice(1));
}
