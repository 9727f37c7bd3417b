// Xen 4.17's real clients against the project's xenstored (`xensim xenstored --socket`), and the
// project's daemon side by side with Xen's C xenstored: test-xenstore, the xenstore-* tools,
// xenstore-control, pyxs, and raw request sequences over sockets and domain rings whose replies
// and watch events must be byte-identical.
//
// Needs Debian's Xen 4.17 packages, unpacked by `bash scripts/xen-tools.sh` (npm test runs it) and
// found by test/xen_tools.ts; without them the tests that need them are skipped (with
// XENSIM_REQUIRE_XEN_TOOLS=1 they fail).

import assert from "node:assert/strict";
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import { XS, XS_NAMES } from "../src/abi/xs_wire.ts";
import { type XsConnection, type XsDomainBackend, Xenstored, type XsTransport } from "../src/toolstack/xenstored/daemon.ts";
import { RUN_XENSTORED, XEN_BIN, XEN_LIBEXEC, xenEnv, xenNeeds } from "./xen_tools.ts";

const PROJECT = join(import.meta.dirname, "..");
const BIN = XEN_BIN;
const LIBBIN = XEN_LIBEXEC;

function toolEnv(socket: string): NodeJS.ProcessEnv {
  return xenEnv({ XENSTORED_PATH: socket });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

// ---------------------------------------------------------------------------------------------
// Daemons

interface Daemon {
  socket: string;
  /** The shim's directory (C only): ring files, domains file, event FIFO. */
  dir: string;
  stop(): Promise<void>;
}

/** `xensim xenstored --socket`, resolved once it says where it listens. */
async function startOurs(extra: string[] = []): Promise<Daemon & { child: ChildProcess; output: () => string }> {
  const dir = tmp("xensim-xsd-");
  const socket = join(dir, "socket");
  const child = spawn(process.execPath, ["--import", "tsx", join(PROJECT, "src/cli/main.ts"), "xenstored", "--socket", socket, ...extra], {
    cwd: PROJECT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (b: Buffer) => {
    out += b.toString();
  });
  child.stderr!.on("data", (b: Buffer) => {
    out += b.toString();
  });
  const t0 = Date.now();
  while (!out.includes("listening")) {
    const failed = child.exitCode !== null ? `exited ${child.exitCode}` : Date.now() - t0 > 30_000 ? "did not start" : undefined;
    if (failed !== undefined) {
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`xensim xenstored ${failed}: ${out}`);
    }
    await sleep(20);
  }
  return {
    socket,
    dir,
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await gone;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Xen's C xenstored under the shim (run_xenstored.sh). */
function startC(): Daemon {
  const dir = tmp("xensim-cxsd-");
  execFileSync("bash", [RUN_XENSTORED, "c", dir], { env: xenEnv(), stdio: "pipe" });
  return {
    socket: join(dir, "socket"),
    dir,
    async stop() {
      execFileSync("bash", [RUN_XENSTORED, "stop", dir], { env: xenEnv(), stdio: "pipe" });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface RunResult {
  code: number;
  out: string;
}

function run(cmd: string, args: string[], socket: string, input?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = execFile(cmd, args, { env: toolEnv(socket), timeout: 60_000, encoding: "utf8" }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
      resolve({ code, out: stdout + stderr });
    });
    if (input !== undefined) p.stdin?.end(input);
  });
}

// ---------------------------------------------------------------------------------------------

test("xensim xenstored: says where it listens, refuses a second daemon on its live socket, exits 0 on SIGTERM", async () => {
  const d = await startOurs();
  try {
    assert.match(d.output(), /^xenstored listening on .*socket\n$/);
    // A second daemon on the same path is refused: taking the socket over would orphan this one.
    // (Replacing a stale socket is in test/sockets.test.ts.)
    const again = spawn(process.execPath, ["--import", "tsx", join(PROJECT, "src/cli/main.ts"), "xenstored", "--socket", d.socket], {
      cwd: PROJECT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    for (const stream of [again.stdout, again.stderr]) {
      stream.on("data", (b: Buffer) => {
        out += b.toString();
      });
    }
    if (again.exitCode === null) await new Promise((r) => again.once("exit", r));
    assert.equal(again.exitCode, 1, out);
    assert.equal(out, `xensim: xenstored is already running on ${d.socket}\n`);
    assert.equal(d.child.exitCode, null, "the first daemon stopped");
    assert.equal(existsSync(d.socket), true, "the first daemon's socket is gone");
  } finally {
    await d.stop();
  }
  assert.equal(d.child.exitCode, 0, `SIGTERM should exit 0; signal ${d.child.signalCode}, output: ${d.output()}`);
});

test("xensim xenstored: a socket client that never reads stays bounded; other clients are served", async () => {
  const d = await startOurs();
  const rss = (): number => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${d.child.pid}/status`, "utf8"))?.[1]);
  try {
    const setup = new SocketChan(d.socket);
    setup.send(encode(XS.WRITE, 1, 0, Buffer.from(`/big\0${"x".repeat(3000)}`, "latin1")));
    await until(setup, 1, "write /big");
    const before = rss();
    // 60 MB of replies asked for, none read.
    const lazy = createConnection(d.socket);
    lazy.on("error", () => {});
    lazy.pause();
    const req = encode(XS.READ, 7, 0, Buffer.from("/big\0"));
    const batch = Buffer.concat(Array.from({ length: 1000 }, () => req));
    for (let i = 0; i < 20; i++) {
      lazy.write(batch);
      await sleep(20);
    }
    await sleep(300);
    const grown = rss() - before;
    assert.ok(grown < 40_000, `daemon RSS grew by ${grown} kB`);
    setup.send(encode(XS.READ, 2, 0, Buffer.from("/big\0")));
    const r = await until(setup, 2, "read /big beside the lazy client");
    assert.equal(r.at(-1)?.body.length, 3000);
    lazy.destroy();
    setup.close();
  } finally {
    await d.stop();
  }
});

const CLIENTS = xenNeeds("xenstored", "test-xenstore", "xenstore-clients", "xenstore-control", "pyxs");
const C_XENSTORED = xenNeeds("xenstored");

describe("Xen's clients against xensim xenstored", { skip: CLIENTS.skip() }, () => {
  CLIENTS.suite();
  let ours: Awaited<ReturnType<typeof startOurs>>;
  let c: Daemon;
  before(async () => {
    ours = await startOurs();
    c = startC();
  });
  after(async () => {
    await ours?.stop();
    await c?.stop();
  });

  test("test-xenstore: all 12 tests pass (as with C xenstored)", async () => {
    for (const d of [ours, c]) {
      const r = await run(join(LIBBIN, "test-xenstore"), [], d.socket);
      assert.equal(r.code, 0, r.out);
      const lines = r.out.trim().split("\n");
      assert.deepEqual(
        lines.map((l) => l.split(":")[0]!.trim()),
        ["read 1", "read 2000", "write 1", "write 2000", "dir", "rm node", "rm dir", "ta empty", "ta empty x", "ta rmw", "ta rmw x", "ta err"],
      );
      for (const l of lines) assert.match(l, /: +\d+ ns$/);
    }
  });

  test("xenstore-write/read/ls -p/list/chmod/exists/rm: same output and exit codes as with C xenstored", async () => {
    const script: [string, ...string[]][] = [
      ["xenstore-write", "/t/a", "1", "/t/b", "2", "/t/c/d", "x y"],
      ["xenstore-read", "/t/a", "/t/c/d"],
      ["xenstore-read", "/t/zz"],
      ["xenstore-write", "/t/bin", "a\tb\\c\u0001"],
      ["xenstore-read", "/t/bin"],
      ["xenstore-chmod", "/t/a", "n0", "r5"],
      ["xenstore-chmod", "/t/b", "n5"],
      ["xenstore-chmod", "-r", "/t/c", "b0"],
      ["xenstore-ls", "-p", "/t"],
      ["xenstore-ls", "-f", "/t"],
      ["xenstore-list", "/t"],
      ["xenstore-exists", "/t/a"],
      ["xenstore-exists", "/t/zz"],
      ["xenstore-write", "/bad//path", "x"],
      ["xenstore-rm", "/t/c"],
      ["xenstore-rm", "/t/zz/yy"],
      ["xenstore-rm", "/t/zz"],
      ["xenstore-ls", "-p", "/"],
      ["xenstore-write", "rel/x", "y"],
      ["xenstore-read", "/local/domain/0/rel/x"],
      ["xenstore-rm", "-t", "/t/a"],
      ["xenstore-ls", "/t"],
    ];
    const outputs = new Map<string, RunResult>();
    for (const [cmd, ...args] of script) {
      const a = await run(join(BIN, cmd), args, ours.socket);
      const b = await run(join(BIN, cmd), args, c.socket);
      assert.deepEqual(a, b, `${cmd} ${args.join(" ")}`);
      outputs.set(`${cmd} ${args.join(" ")}`, a);
    }
    assert.match(outputs.get("xenstore-ls -p /t")!.out, /^a = "1" .*\(n0,r5\)$/m);
    assert.equal(outputs.get("xenstore-exists /t/zz")!.code, 1);
  });

  test("xenstore-watch: the initial event, then one per change below the path", async () => {
    for (const d of [ours, c]) {
      const w = spawn(join(BIN, "xenstore-watch"), ["-n", "3", "/wt"], { env: toolEnv(d.socket) });
      let out = "";
      w.stdout.on("data", (b: Buffer) => {
        out += b.toString();
      });
      const done = new Promise((r) => w.once("exit", r));
      while (!out.includes("/wt\n")) await sleep(10);
      await run(join(BIN, "xenstore-write"), ["/wt/x", "1"], d.socket);
      await run(join(BIN, "xenstore-write"), ["/other", "1"], d.socket);
      await run(join(BIN, "xenstore-rm"), ["/wt"], d.socket);
      await done;
      assert.equal(out, "/wt\n/wt/x\n/wt\n");
      assert.equal(w.exitCode, 0);
    }
  });

  test("xenstore-control: quota, quota <domid>, quota-soft, check, set; help without live-update", async () => {
    const ctl = join(LIBBIN, "xenstore-control");
    // Where a command fails, xenstore-control prints the daemon's help.
    const noLiveUpdate = (s: string): string => s.replace(/^live-update\t.*\n {4}Default timeout is 60 seconds\.\n/m, "");
    for (const args of [["quota"], ["quota-soft"], ["check"], ["quota", "set", "nodes", "999"], ["quota"], ["quota", "42"], ["log", "x"], ["print", "hi"], ["help"], ["bogus"]]) {
      const a = await run(ctl, args, ours.socket);
      const b = await run(ctl, args, c.socket);
      assert.deepEqual(a, { code: b.code, out: noLiveUpdate(b.out) }, args.join(" "));
    }
    // Node counts and memory depend on what the earlier tests left: compare fresh daemons.
    const fresh = await startOurs();
    const freshC = startC();
    try {
      const a = await run(ctl, ["quota", "0"], fresh.socket);
      assert.deepEqual(a, await run(ctl, ["quota", "0"], freshC.socket));
      assert.equal(a.out, "Domain 0:\nnodes           :        3\nwatches         :        0\ntransactions    :        0\noutstanding     :        0\nmemory          :      132\n\n");
    } finally {
      await fresh.stop();
      await freshC.stop();
    }

  });

  test("pyxs: read/write/list/exists/perms/domain path/introduced/delete, transactions with a conflict, watches, rm -r", async () => {
    const script = `
import sys, errno
from pyxs import Client, PyXSError
p = sys.argv[1]
def check(name, cond):
    print(("ok " if cond else "FAIL ") + name)
with Client(unix_socket_path=p) as c:
    c[b"/py/a"] = b"1"
    check("read/write", c[b"/py/a"] == b"1")
    c[b"/py/b/c"] = b"2"
    check("list", sorted(c.list(b"/py")) == [b"a", b"b"])
    check("exists", c.exists(b"/py/a") and not c.exists(b"/py/zz"))
    try:
        c.read(b"/py/zz")
        check("ENOENT", False)
    except PyXSError as e:
        check("ENOENT", e.args[0] == errno.ENOENT)
    c.set_perms(b"/py/a", [b"n0", b"r5"])
    check("perms", c.get_perms(b"/py/a") == [b"n0", b"r5"])
    check("domain path", c.get_domain_path(3) == b"/local/domain/3")
    check("introduced", c.is_domain_introduced(0) and not c.is_domain_introduced(7))
    c.transaction()
    c[b"/py/t"] = b"in"
    check("tx isolation", Client(unix_socket_path=p).__enter__().read(b"/py/t", b"none") == b"none")
    check("tx commit", c.commit() and c[b"/py/t"] == b"in")
    c.transaction()
    c[b"/py/t"] = b"rolled"
    c.rollback()
    check("tx rollback", c[b"/py/t"] == b"in")
    c.transaction()
    c.read(b"/py/a")
    with Client(unix_socket_path=p) as other:
        other[b"/py/a"] = b"changed"
    c[b"/py/x"] = b"y"
    check("tx conflict", c.commit() is False and not c.exists(b"/py/x"))
    with c.monitor() as m:
        m.watch(b"/py/w", b"tok")
        ev = m.wait()
        check("watch initial", next(ev) == (b"/py/w", b"tok"))
        c[b"/py/w/child"] = b"1"
        check("watch child", next(ev) == (b"/py/w/child", b"tok"))
    c.mkdir(b"/py/m")
    check("mkdir", c.exists(b"/py/m") and c[b"/py/m"] == b"")
    c.delete(b"/py")
    check("rm -r", not c.exists(b"/py") and not c.exists(b"/py/b/c"))
`;
    const dir = tmp("xensim-pyxs-");
    const file = join(dir, "t.py");
    writeFileSync(file, script);
    try {
      const a = await run("python3", [file, ours.socket], ours.socket);
      const b = await run("python3", [file, c.socket], c.socket);
      assert.equal(a.code, 0, a.out);
      assert.deepEqual(a, b);
      const lines = a.out.trim().split("\n");
      assert.equal(lines.length, 15, a.out);
      for (const l of lines) assert.match(l, /^ok /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Raw sequences, side by side: C xenstored (sockets, and domain rings through the shim) and the
// project's daemon in this process (socket connections, and domain transports from a backend).

interface Msg {
  type: number;
  reqId: number;
  txId: number;
  body: Buffer;
}

function encode(type: number, reqId: number, txId: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(reqId, 4);
  h.writeUInt32LE(txId, 8);
  h.writeUInt32LE(payload.length, 12);
  return Buffer.concat([h, payload]);
}

/** Splits whole messages off a byte stream. */
class Parser {
  private buf = Buffer.alloc(0);
  readonly msgs: Msg[] = [];
  push(b: Buffer): void {
    this.buf = Buffer.concat([this.buf, b]);
    let at = 0;
    while (this.buf.length - at >= 16) {
      const len = this.buf.readUInt32LE(at + 12);
      if (this.buf.length - at < 16 + len) break;
      this.msgs.push({
        type: this.buf.readUInt32LE(at),
        reqId: this.buf.readUInt32LE(at + 4),
        txId: this.buf.readUInt32LE(at + 8),
        body: Buffer.from(this.buf.subarray(at + 16, at + 16 + len)),
      });
      at += 16 + len;
    }
    this.buf = Buffer.from(this.buf.subarray(at));
  }
}

/** A client connection of either daemon. */
interface Chan {
  send(b: Buffer): void;
  /** Messages received so far (the caller takes them). */
  poll(): Msg[];
  close(): void;
}

class SocketChan implements Chan {
  private readonly p = new Parser();
  private readonly s: Socket;
  constructor(path: string) {
    this.s = createConnection(path);
    this.s.on("data", (b: Buffer) => this.p.push(b));
    this.s.on("error", () => {});
  }
  send(b: Buffer): void {
    this.s.write(b);
  }
  poll(): Msg[] {
    return this.p.msgs.splice(0);
  }
  close(): void {
    this.s.destroy();
  }
}

/** A domain's side of its xenstore page, the page being the shim's ring-<domid> file. */
class ShimRingChan implements Chan {
  private readonly p = new Parser();
  private readonly fd: number;
  private pending = Buffer.alloc(0);
  constructor(
    private readonly dir: string,
    private readonly domid: number,
  ) {
    this.fd = openSync(join(dir, `ring-${domid}`), "r+");
  }
  private u32(off: number): number {
    const b = Buffer.alloc(4);
    readSync(this.fd, b, 0, 4, off);
    return b.readUInt32LE(0);
  }
  private set32(off: number, v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    writeSync(this.fd, b, 0, 4, off);
  }
  private kick(): void {
    const port = Number(readFileSync(join(this.dir, `port-${this.domid}`), "utf8").split(" ")[0]);
    kickPort(this.dir, port);
  }
  send(b: Buffer): void {
    this.pending = Buffer.concat([this.pending, b]);
    this.pump();
  }
  /** Moves what fits of the pending request bytes into req[], and replies out of rsp[]. */
  private pump(): void {
    let kick = false;
    if (this.pending.length > 0) {
      const cons = this.u32(2048);
      const prod = this.u32(2052);
      const room = 1024 - ((prod - cons) >>> 0);
      const n = Math.min(room, this.pending.length);
      for (let i = 0; i < n; i++) writeSync(this.fd, this.pending, i, 1, (prod + i) & 1023);
      if (n > 0) {
        this.set32(2052, prod + n);
        this.pending = this.pending.subarray(n);
        kick = true;
      }
    }
    const cons = this.u32(2056);
    const prod = this.u32(2060);
    const avail = (prod - cons) >>> 0;
    if (avail > 0) {
      const out = Buffer.alloc(avail);
      for (let i = 0; i < avail; i++) readSync(this.fd, out, i, 1, 1024 + ((cons + i) & 1023));
      this.set32(2056, prod);
      this.p.push(out);
      kick = true;
    }
    if (kick) this.kick();
  }
  poll(): Msg[] {
    this.pump();
    return this.p.msgs.splice(0);
  }
  close(): void {
    closeSync(this.fd);
  }
}

function kickPort(dir: string, port: number): void {
  const f = openSync(join(dir, "evtchn"), "w");
  const b = Buffer.alloc(4);
  b.writeUInt32LE(port);
  writeSync(f, b);
  closeSync(f);
}

class MemChan implements Chan, XsTransport {
  private readonly p = new Parser();
  conn: XsConnection | undefined;
  write(bytes: Uint8Array): number {
    this.p.push(Buffer.from(bytes));
    return bytes.length;
  }
  close(): void {}
  send(b: Buffer): void {
    this.conn!.feed(b);
  }
  poll(): Msg[] {
    return this.p.msgs.splice(0);
  }
}

/** Steps: [connection, type, payload, tx?]; connection "s<n>" is a socket, "d<domid>" a domain;
 * ["!", 0, "<domains file>"] changes which domains exist and raises VIRQ_DOM_EXC. */
type Step = [string, number, string, number?];

interface Side {
  chan(name: string): Chan;
  /** The hypervisor's domains change (lines of the shim's domains file). */
  virq(spec: string): Promise<void>;
  stop(): Promise<void>;
}

async function cSide(exist: number[]): Promise<Side> {
  const d = startC();
  writeFileSync(join(d.dir, "domains"), `${[0, ...exist].join("\n")}\n`);
  for (const id of exist) writeFileSync(join(d.dir, `ring-${id}`), Buffer.alloc(4096));
  const chans = new Map<string, Chan>();
  return {
    chan(name) {
      let ch = chans.get(name);
      if (ch === undefined) {
        ch = name.startsWith("d") ? new ShimRingChan(d.dir, Number(name.slice(1))) : new SocketChan(d.socket);
        chans.set(name, ch);
      }
      return ch;
    },
    async virq(spec) {
      writeFileSync(join(d.dir, "domains"), `0\n${spec}\n`);
      kickPort(d.dir, Number(readFileSync(join(d.dir, "virq-3"), "utf8").trim()));
      await sleep(30);
    },
    async stop() {
      for (const ch of chans.values()) ch.close();
      await d.stop();
    },
  };
}

function oursSide(exist: number[]): Side {
  const exists = new Set([0, ...exist]);
  const states = new Map<number, { dying: boolean; shutdown: boolean }>();
  const rings = new Map<number, MemChan>();
  const backend: XsDomainBackend = {
    domainExists: (id) => exists.has(id),
    domainState: (id) => (exists.has(id) ? (states.get(id) ?? { dying: false, shutdown: false }) : undefined),
    introduce: (id) => {
      const ch = new MemChan();
      rings.set(id, ch);
      return { write: (b) => ch.write(b), close: () => {}, attach: (conn) => (ch.conn = conn) };
    },
  };
  const xs = new Xenstored({ backend });
  const chans = new Map<string, Chan>();
  return {
    chan(name) {
      let ch = chans.get(name);
      if (ch === undefined) {
        if (name.startsWith("d")) ch = rings.get(Number(name.slice(1)))!;
        else {
          const m = new MemChan();
          m.conn = xs.connectSocket(m);
          ch = m;
        }
        chans.set(name, ch);
      }
      return ch;
    },
    async virq(spec) {
      exists.clear();
      exists.add(0);
      states.clear();
      for (const line of spec.split("\n").filter((l) => l)) {
        const [id, ...flags] = line.split(" ");
        exists.add(Number(id));
        states.set(Number(id), { dying: flags.includes("dying"), shutdown: flags.includes("shutdown") });
      }
      xs.domainsChanged();
    },
    async stop() {
      xs.shutdown();
    },
  };
}

const BARRIER = 0x7ff00000;

/** Waits for the reply to `reqId` on `ch`; all messages up to it, in order. */
async function until(ch: Chan, reqId: number, what: string): Promise<Msg[]> {
  const got: Msg[] = [];
  const t0 = Date.now();
  for (;;) {
    got.push(...ch.poll());
    if (got.some((m) => m.reqId === reqId && m.type !== XS.WATCH_EVENT)) return got;
    if (Date.now() - t0 > 5000) throw new Error(`no reply to ${what}; got ${JSON.stringify(got.map(show))}`);
    await sleep(1);
  }
}

function show(m: Msg): string {
  return `${XS_NAMES[m.type] ?? m.type}/${m.reqId}/${m.txId} ${JSON.stringify(m.body.toString("latin1"))}`;
}

/**
 * Runs the steps on one daemon: per step, the reply on the requesting connection, then a barrier
 * request on every other live connection, so that all watch events the step caused are in
 * (replies and events of a connection are queued in order). Returns one transcript line per step.
 */
async function transcript(side: Side, steps: readonly Step[]): Promise<string[]> {
  const live = new Set<string>();
  const lines: string[] = [];
  let rid = 100;
  let barrier = BARRIER;
  for (const [who, type, payload, tx] of steps) {
    const seen: string[] = [];
    if (who === "!") {
      await side.virq(payload);
    } else {
      const ch = side.chan(who);
      live.add(who);
      const id = ++rid;
      ch.send(encode(type, id, tx ?? 0, Buffer.from(payload, "latin1")));
      for (const m of await until(ch, id, `${who} ${XS_NAMES[type]} ${JSON.stringify(payload)}`)) seen.push(`${who}:${show(m)}`);
      // A released domain's ring is dead.
      if (type === XS.RELEASE) live.delete(`d${payload.split("\0")[0]}`);
    }
    for (const other of live) {
      if (other === who) continue;
      const ch = side.chan(other);
      const id = ++barrier;
      ch.send(encode(XS.GET_DOMAIN_PATH, id, 0, Buffer.from("0\0")));
      for (const m of await until(ch, id, `barrier on ${other}`)) if (m.reqId !== id) seen.push(`${other}:${show(m)}`);
    }
    if (who === "!") for (const name of [...live]) if (name.startsWith("d") && !payload.split("\n").some((l) => l.startsWith(`${name.slice(1)} `) || l === name.slice(1))) live.delete(name);
    lines.push(`${who} ${XS_NAMES[type] ?? type} ${JSON.stringify(payload)} tx=${tx ?? 0} => ${seen.join(" | ")}`);
  }
  return lines;
}

async function sideBySide(steps: readonly Step[], exist: number[]): Promise<void> {
  const c = await cSide(exist);
  let expected: string[];
  try {
    expected = await transcript(c, steps);
  } finally {
    await c.stop();
  }
  const o = oursSide(exist);
  const actual = await transcript(o, steps);
  await o.stop();
  for (let i = 0; i < steps.length; i++) assert.equal(actual[i], expected[i], `step ${i}`);
}

const z = (...parts: string[]): string => parts.map((p) => `${p}\0`).join("");
const dom5: Step[] = [
  ["s0", XS.INTRODUCE, z("5", "123", "7")],
  ["s0", XS.MKDIR, z("/local/domain/5")],
  ["s0", XS.SET_PERMS, z("/local/domain/5", "n5", "r0")],
];

describe("raw requests: the same replies and watch events as C xenstored", { skip: C_XENSTORED.skip() }, () => {
  C_XENSTORED.suite();
  test("a payload over 4096 bytes: the connection is closed at once, nothing is answered", async () => {
    const ours = await startOurs();
    const c = startC();
    try {
      for (const d of [ours, c]) {
        const s = createConnection(d.socket);
        const got: Buffer[] = [];
        s.on("data", (b: Buffer) => got.push(b));
        const closed = new Promise<void>((r) => s.once("close", () => r()));
        s.on("error", () => {});
        s.write(encode(XS.READ, 1, 0, Buffer.from("/tool\0")));
        while (got.length === 0) await sleep(5);
        s.write(encode(XS.WRITE, 2, 0, Buffer.alloc(4097)));
        await closed;
        const p = new Parser();
        p.push(Buffer.concat(got));
        assert.deepEqual(p.msgs.map(show), ['READ/1/0 ""'], d === c ? "C" : "ours");
      }
    } finally {
      await ours.stop();
      await c.stop();
    }
  });

  test("node requests, paths, permissions, errors (socket)", async () => {
    const steps: Step[] = [
      ["s0", XS.READ, z("/tool")],
      ["s0", XS.DIRECTORY_PART, z("/", "0")],
      ["s0", XS.WRITE, "/a/b\0hello"],
      ["s0", XS.DIRECTORY_PART, z("/", "0")],
      // Not one string (READ "/a/b" without its NUL, or with a second string) is left out: 4.17
      // answers with a stale errno there, we answer EINVAL (test/xenstored.test.ts).
      ["s0", XS.WRITE, "/bin\0a\0b\0\0c"],
      ["s0", XS.READ, z("/bin")],
      ["s0", XS.WRITE, "/bin"],
      ["s0", XS.MKDIR, z("/a/b")],
      ["s0", XS.RM, z("/nonexist/x")],
      ["s0", XS.RM, z("/nonexist")],
      ["s0", XS.RM, z("/")],
      ["s0", XS.DIRECTORY, z("/a/")],
      ["s0", XS.WRITE, "/a//b\0x"],
      ["s0", XS.WRITE, "/a b\0x"],
      ["s0", XS.WRITE, `/${"a".repeat(2048)}\0x`],
      ["s0", XS.WRITE, `/local/domain/12345/${"a".repeat(2048)}\0x`],
      ["s0", XS.WRITE, `/local/domain/123456/${"a".repeat(2040)}\0x`],
      ["s0", XS.SET_PERMS, z("/a", "n0", "r5", "b0x10", "w-1")],
      ["s0", XS.GET_PERMS, z("/a")],
      ["s0", XS.SET_PERMS, z("/a", "r5")],
      ["s0", XS.SET_PERMS, z("/a", "n0", "r 1")],
      ["s0", XS.SET_PERMS, z("/a")],
      ["s0", XS.SET_PERMS, z("@bogus", "n0")],
      ["s0", XS.GET_DOMAIN_PATH, z("-1")],
      ["s0", XS.GET_DOMAIN_PATH, z("99999999999")],
      ["s0", XS.IS_DOMAIN_INTRODUCED, z("32752")],
      ["s0", XS.IS_DOMAIN_INTRODUCED, z("5")],
      ["s0", XS.INTRODUCE, z("5", "1")],
      ["s0", XS.INTRODUCE, z("5", "1", "0")],
      ["s0", XS.RELEASE, z("0")],
      ["s0", XS.RELEASE, z("9")],
      ["s0", XS.SET_TARGET, z("9")],
      ["s0", XS.RESUME, z("9")],
      ["s0", 20, z("x")],
      ["s0", 23, z("x")],
      ["s0", 26, ""],
      ["s0", XS.WATCH_EVENT, ""],
      ["s0", XS.CONTROL, z("quota", "0")],
      ["s0", XS.CONTROL, z("quota", "set", "nodes", "0")],
      ["s0", XS.CONTROL, z("quota-soft", "set", "memory", "5")],
      ["s0", XS.CONTROL, z("quota-soft")],
      ["s0", XS.CONTROL, z("print", "hello")],
    ];
    for (let i = 0; i < 260; i++) steps.push(["s0", XS.MKDIR, z(`/big/child-number-${String(i).padStart(4, "0")}`)]);
    steps.push(["s0", XS.DIRECTORY, z("/big")], ["s0", XS.DIRECTORY_PART, z("/big", "0")], ["s0", XS.DIRECTORY_PART, z("/big", "4060")]);
    steps.push(["s0", XS.DIRECTORY_PART, z("/big", "99999")], ["s0", XS.CONTROL, z("quota", "0")]);
    await sideBySide(steps, []);
  });

  test("transactions and watches across connections (socket)", async () => {
    await sideBySide(
      [
        ["s0", XS.WATCH, z("/w", "t")],
        ["s1", XS.WATCH, z("rel", "r")],
        ["s1", XS.WATCH, z("/", "root")],
        ["s0", XS.WATCH, z("/w", "t")],
        ["s0", XS.WATCH, z("/w", "t2", "1")],
        ["s0", XS.TRANSACTION_START, z("")],
        ["s0", XS.TRANSACTION_START, z("")],
        ["s0", XS.TRANSACTION_START, z(""), 1],
        ["s0", XS.TRANSACTION_START, z(""), 99],
        ["s0", XS.WRITE, "/w/x\0v", 1],
        ["s2", XS.READ, z("/w/x")],
        ["s0", XS.READ, z("/w/x"), 1],
        ["s0", XS.TRANSACTION_END, z("X"), 1],
        ["s0", XS.TRANSACTION_END, z("T"), 1],
        ["s0", XS.TRANSACTION_END, z("T"), 1],
        ["s2", XS.WRITE, "rel/y\0v"],
        ["s2", XS.TRANSACTION_START, z("")],
        ["s2", XS.READ, z("/w/x"), 1],
        ["s0", XS.WRITE, "/w/x\0changed"],
        ["s2", XS.WRITE, "/w/z\0mine", 1],
        ["s2", XS.TRANSACTION_END, z("T"), 1],
        ["s2", XS.TRANSACTION_START, z("")],
        ["s2", XS.RM, z("/w"), 2],
        ["s2", XS.TRANSACTION_END, z("T"), 2],
        ["s1", XS.UNWATCH, z("rel", "r")],
        ["s1", XS.UNWATCH, z("rel", "r")],
        ["s0", XS.WRITE, "/w/a/b/c\0"],
        ["s1", XS.WATCH, z("/w/a/b/c", "deep")],
        ["s0", XS.SET_PERMS, z("/w/a", "n0", "r3")],
        ["s0", XS.RM, z("/w")],
        ["s1", XS.RESET_WATCHES, ""],
        ["s0", XS.WRITE, "/w\0"],
        ["s0", XS.CONTROL, z("quota", "0")],
      ],
      [],
    );
  });

  test("a domain over its ring: permissions, relative paths, quotas, transactions, special watches", async () => {
    await sideBySide(
      [
        ["s0", XS.WATCH, z("@introduceDomain", "i")],
        ["s0", XS.INTRODUCE, z("5", "123", "7")],
        ["s0", XS.INTRODUCE, z("5", "123", "7")],
        ["d5", XS.READ, z("/tool")],
        ["d5", XS.READ, z("/nonexist")],
        ["d5", XS.WRITE, "foo\0bar"],
        ...dom5.slice(1),
        ["d5", XS.WRITE, "foo\0bar"],
        ["d5", XS.GET_PERMS, z("foo")],
        ["d5", XS.SET_PERMS, z("foo", "n0")],
        ["d5", XS.SET_PERMS, z("foo", "n5", "r0", "r1", "r2", "r3", "r4")],
        ["d5", XS.SET_PERMS, z("foo", "n5", "r0", "r1", "r2", "r3")],
        ["d5", XS.WRITE, "/tool/x\0bar"],
        ["d5", XS.MKDIR, z("a/b/c")],
        ["d5", XS.DIRECTORY, z("/local/domain/5")],
        ["d5", XS.DIRECTORY, z("/local/domain")],
        ["d5", XS.RM, z("/tool/nonexist")],
        ["d5", XS.RM, z("a")],
        ["d5", XS.WATCH, z("foo", "tok")],
        ["d5", XS.WATCH, z("/tool", "tok2")],
        ["d5", XS.WATCH, z("@introduceDomain", "tok3")],
        ["s0", XS.WRITE, "/local/domain/5/foo\0zzz"],
        ["s0", XS.INTRODUCE, z("6", "1", "9")],
        ["s0", XS.SET_PERMS, z("@introduceDomain", "n0", "r5")],
        ["s0", XS.INTRODUCE, z("7", "1", "9")],
        ["d5", XS.INTRODUCE, z("7", "1", "2")],
        ["d5", XS.CONTROL, z("help")],
        ["d5", XS.IS_DOMAIN_INTRODUCED, z("5")],
        ["d5", XS.GET_DOMAIN_PATH, z("5")],
        ["d5", XS.TRANSACTION_START, z("")],
        ["d5", XS.WRITE, "t/x\0y", 1],
        ["d5", XS.READ, z("foo"), 1],
        ["s0", XS.WRITE, "/local/domain/5/foo\0other"],
        ["d5", XS.TRANSACTION_END, z("T"), 1],
        ["s0", XS.CONTROL, z("quota", "set", "nodes", "6")],
        ["s0", XS.CONTROL, z("quota", "set", "watches", "3")],
        ["s0", XS.CONTROL, z("quota", "set", "transactions", "1")],
        ["s0", XS.CONTROL, z("quota", "set", "transaction-nodes", "3")],
        ["s0", XS.CONTROL, z("quota", "set", "node-size", "100")],
        ["s0", XS.CONTROL, z("quota", "set", "path-max", "20")],
        ["d5", XS.WRITE, "n1\0x"],
        ["d5", XS.WRITE, "n2\0x"],
        ["d5", XS.WRITE, "n3\0x"],
        ["d5", XS.WRITE, `n1\0${"y".repeat(60)}`],
        ["d5", XS.WRITE, `n1\0${"y".repeat(80)}`],
        ["d5", XS.WRITE, "0123456789012345\0x"],
        ["d5", XS.WRITE, "01234567890123456789a\0x"],
        ["d5", XS.WATCH, z("n1", "a")],
        ["d5", XS.WATCH, z("n2", "b")],
        ["d5", XS.TRANSACTION_START, z("")],
        ["d5", XS.TRANSACTION_START, z("")],
        ["d5", XS.TRANSACTION_START, z("")],
        ["d5", XS.READ, z("n1"), 2],
        ["d5", XS.READ, z("n2"), 2],
        ["d5", XS.READ, z("n3"), 2],
        ["d5", XS.READ, z("foo"), 2],
        ["d5", XS.TRANSACTION_END, z("T"), 2],
        ["s0", XS.CONTROL, z("quota", "5")],
        ["d5", XS.RESET_WATCHES, ""],
        ["s0", XS.CONTROL, z("quota", "5")],
        ["s0", XS.CONTROL, z("quota", "0")],
      ],
      [5, 6, 7],
    );
  });

  test("domains going away: shutdown, RESUME, death, RELEASE, SET_TARGET, nodes of dead owners", async () => {
    await sideBySide(
      [
        ["s0", XS.WATCH, z("@releaseDomain", "r")],
        ["s0", XS.WATCH, z("/local", "l")],
        ["s0", XS.INTRODUCE, z("5", "123", "7")],
        ["s0", XS.INTRODUCE, z("6", "123", "8")],
        ["s0", XS.WRITE, "/local/domain/5\0"],
        ["s0", XS.SET_PERMS, z("/local/domain/5", "n5")],
        ["s0", XS.WRITE, "/local/domain/6\0"],
        ["s0", XS.SET_PERMS, z("/local/domain/6", "n6", "r5")],
        ["s0", XS.WRITE, "/other\0"],
        ["s0", XS.SET_PERMS, z("/other", "n7", "r5")],
        ["s0", XS.WRITE, "/other2\0"],
        ["s0", XS.SET_PERMS, z("/other2", "n0", "r7", "b5")],
        ["d5", XS.WRITE, "x/y\0z"],
        ["d5", XS.READ, z("/local/domain/6")],
        ["d5", XS.WATCH, z("/local/domain/6", "six")],
        ["!", 0, "5\n6 shutdown\n7"],
        ["!", 0, "5\n6 shutdown\n7"],
        ["s0", XS.RESUME, z("6")],
        ["!", 0, "5\n6 shutdown\n7"],
        ["!", 0, "5\n6 dying\n7"],
        ["s0", XS.IS_DOMAIN_INTRODUCED, z("6")],
        ["s0", XS.DIRECTORY, z("/local/domain")],
        ["!", 0, "5"],
        ["s0", XS.DIRECTORY, z("/")],
        ["s0", XS.GET_PERMS, z("/other2")],
        ["d5", XS.READ, z("/other2")],
        ["!", 0, "5\n7"],
        ["s0", XS.SET_PERMS, z("/other2", "n0", "r7", "b5")],
        ["s0", XS.CONTROL, z("quota", "7")],
        ["s0", XS.INTRODUCE, z("6", "123", "8")],
        ["!", 0, "5\n6\n7"],
        ["s0", XS.INTRODUCE, z("6", "123", "8")],
        ["s0", XS.SET_TARGET, z("5", "6")],
        ["s0", XS.SET_TARGET, z("5", "8")],
        ["s0", XS.WRITE, "/local/domain/6/priv\0secret"],
        ["s0", XS.SET_PERMS, z("/local/domain/6/priv", "n6")],
        ["d5", XS.READ, z("/local/domain/6/priv")],
        ["s0", XS.CONTROL, z("quota", "5")],
        ["s0", XS.RELEASE, z("5")],
        ["s0", XS.DIRECTORY, z("/local/domain")],
        ["s0", XS.CONTROL, z("quota", "0")],
      ],
      [5, 6, 7],
    );
  });
});

describe("random request sequences: the same replies and watch events as C xenstored", { skip: C_XENSTORED.skip() }, () => {
  C_XENSTORED.suite();
  const RUNS = Number(process.env.XS_ORACLE_RUNS ?? 8);
  const conn = fc.constantFrom("s0", "s1", "d5");
  const path = fc.constantFrom("/r", "/r/a", "/r/a/b", "/r/c", "r", "r/x", "/local/domain/5/p", "p", "p/q", "/tool", "/r//x", "@releaseDomain");
  const perm = fc.constantFrom("n0", "r0", "b5", "n5", "w5", "r7", "x1");
  const value = fc.constantFrom("", "v", "value\0with\0nuls", "x".repeat(300));
  const tx = fc.constantFrom(0, 0, 0, 1, 2);
  const step: fc.Arbitrary<Step> = fc.oneof(
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.READ, z(p), t]),
    fc.tuple(conn, path, value, tx).map(([c, p, v, t]): Step => [c, XS.WRITE, `${p}\0${v}`, t]),
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.MKDIR, z(p), t]),
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.RM, z(p), t]),
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.DIRECTORY, z(p), t]),
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.DIRECTORY_PART, z(p, "0"), t]),
    fc.tuple(conn, path, tx).map(([c, p, t]): Step => [c, XS.GET_PERMS, z(p), t]),
    // Not a domain's SET_PERMS of a special node: 4.17's do_set_perms returns errno where
    // set_perms_special() returned EACCES, so C answers whatever errno last held (we answer EACCES).
    fc
      .tuple(conn, path, fc.array(perm, { minLength: 1, maxLength: 3 }), tx)
      .filter(([c, p]) => !(c === "d5" && p.startsWith("@")))
      .map(([c, p, ps, t]): Step => [c, XS.SET_PERMS, z(p, ...ps), t]),
    fc.tuple(conn, path, fc.constantFrom("t1", "t2")).map(([c, p, k]): Step => [c, XS.WATCH, z(p, k)]),
    fc.tuple(conn, path, fc.constantFrom("t1", "t2")).map(([c, p, k]): Step => [c, XS.UNWATCH, z(p, k)]),
    fc.tuple(conn, tx).map(([c, t]): Step => [c, XS.TRANSACTION_START, z(""), t]),
    fc.tuple(conn, fc.constantFrom("T", "F"), fc.constantFrom(1, 2)).map(([c, a, t]): Step => [c, XS.TRANSACTION_END, z(a), t]),
    conn.map((c): Step => [c, XS.RESET_WATCHES, ""]),
  );
  // A failure prints fast-check's seed and path; FC_SEED=<seed> FC_PATH=<path> replays it.
  const replay = (): { seed?: number; path?: string } => ({
    ...(process.env["FC_SEED"] === undefined ? {} : { seed: Number(process.env["FC_SEED"]) }),
    ...(process.env["FC_PATH"] === undefined ? {} : { path: process.env["FC_PATH"] }),
  });
  test(`${RUNS} random sequences over two sockets and a domain's ring (replay: FC_SEED=<seed> FC_PATH=<path>)`, async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 5, maxLength: 40 }), async (steps) => {
        await sideBySide([...dom5, ["s0", XS.CONTROL, z("quota", "set", "nodes", "8")], ...steps, ["s0", XS.CONTROL, z("quota", "5")], ["s0", XS.CONTROL, z("quota", "0")]], [5]);
      }),
      { numRuns: RUNS, ...replay() },
    );
  });
});
