// The project's xenstored core through in-memory transports: every message type's replies and
// error strings (as C xenstored 4.17 gives them), transactions, watches, domains with their
// permissions and quotas, and that clients which do not read stay bounded (XSA-326).

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { XENSTORE_ERROR_PROTO, XS, type XsdError } from "../src/abi/xs_wire.ts";
import { atoi, strtol } from "../src/toolstack/xenstored/cstr.ts";
import {
  type XsClock,
  type XsConnection,
  type XsDomainBackend,
  Xenstored,
  type XenstoredOptions,
  type XsTransport,
} from "../src/toolstack/xenstored/daemon.ts";
import { isValidNodename, permToString, stringsToPerms } from "../src/toolstack/xenstored/paths.ts";

// ---------------------------------------------------------------------------------------------
// Harness

/** A transport that keeps what the daemon writes; `room` limits how much it takes (a full ring). */
class MemTransport implements XsTransport {
  chunks: Buffer[] = [];
  room = Number.POSITIVE_INFINITY;
  closed = false;
  ignored: number | undefined;
  resets: number[] = [];
  resumed = 0;
  writes = 0;
  write(bytes: Uint8Array): number {
    this.writes++;
    const n = Math.min(bytes.length, this.room);
    if (n > 0) this.chunks.push(Buffer.from(bytes.subarray(0, n)));
    this.room -= n;
    return n;
  }
  close(): void {
    this.closed = true;
  }
  resume(): void {
    this.resumed++;
  }
  reset(port: number): void {
    this.resets.push(port);
  }
  ignore(error: number): void {
    this.ignored = error;
  }
}

interface Msg {
  type: number;
  reqId: number;
  txId: number;
  body: string;
}

/** One client: requests in, replies and watch events parsed out. */
class Peer {
  private rid = 0;
  private pending = Buffer.alloc(0);
  readonly events: { path: string; token: string }[] = [];
  private readonly replies = new Map<number, Msg>();
  /** Every message received, in order. */
  readonly log: Msg[] = [];
  constructor(
    readonly conn: XsConnection,
    readonly t: MemTransport,
  ) {}

  private collect(): void {
    if (this.t.chunks.length > 0) {
      this.pending = Buffer.concat([this.pending, ...this.t.chunks]);
      this.t.chunks = [];
    }
    let at = 0;
    while (this.pending.length - at >= 16) {
      const len = this.pending.readUInt32LE(at + 12);
      if (this.pending.length - at < 16 + len) break;
      const m: Msg = {
        type: this.pending.readUInt32LE(at),
        reqId: this.pending.readUInt32LE(at + 4),
        txId: this.pending.readUInt32LE(at + 8),
        body: this.pending.toString("latin1", at + 16, at + 16 + len),
      };
      at += 16 + len;
      this.log.push(m);
      if (m.type === XS.WATCH_EVENT) {
        const [path = "", token = ""] = m.body.split("\0");
        this.events.push({ path, token });
      } else this.replies.set(m.reqId, m);
    }
    this.pending = this.pending.subarray(at);
  }

  send(type: number, payload: string | Buffer, tx = 0, reqId = ++this.rid): number {
    const p = typeof payload === "string" ? Buffer.from(payload, "latin1") : payload;
    const h = Buffer.alloc(16);
    h.writeUInt32LE(type, 0);
    h.writeUInt32LE(reqId, 4);
    h.writeUInt32LE(tx, 8);
    h.writeUInt32LE(p.length, 12);
    this.conn.feed(Buffer.concat([h, p]));
    return reqId;
  }

  /** The reply to request `reqId`, if it has come. */
  reply(reqId: number): Msg | undefined {
    this.collect();
    const m = this.replies.get(reqId);
    this.replies.delete(reqId);
    return m;
  }

  req(type: number, payload: string | Buffer, tx = 0): Msg {
    const id = this.send(type, payload, tx);
    const m = this.reply(id);
    assert.ok(m, `no reply to ${type} ${JSON.stringify(payload)}`);
    return m;
  }

  /** The reply's payload; fails on an error reply. */
  ok(type: number, payload: string | Buffer, tx = 0): string {
    const m = this.req(type, payload, tx);
    assert.notEqual(m.type, XS.ERROR, `${type} ${JSON.stringify(payload)} failed: ${m.body}`);
    assert.equal(m.type, type);
    return m.body;
  }

  /** The error string of an error reply. */
  err(type: number, payload: string | Buffer, tx = 0): string {
    const m = this.req(type, payload, tx);
    assert.equal(m.type, XS.ERROR, `${type} ${JSON.stringify(payload)} succeeded: ${JSON.stringify(m.body)}`);
    return m.body.replace(/\0$/, "");
  }

  takeEvents(): string[] {
    this.collect();
    const e = this.events.splice(0).map((x) => `${x.path} ${x.token}`);
    return e;
  }
}

const z = (...parts: string[]): string => parts.map((p) => `${p}\0`).join("");

/** The hypervisor as tests want it: existing domains, their states, and domains' transports. */
class TestBackend implements XsDomainBackend {
  readonly exists = new Set<number>([0]);
  readonly states = new Map<number, { dying: boolean; shutdown: boolean }>();
  readonly rings = new Map<number, MemTransport>();
  refuse: XsdError | undefined;
  domainExists(domid: number): boolean {
    return this.exists.has(domid);
  }
  domainState(domid: number): { dying: boolean; shutdown: boolean } | undefined {
    if (!this.exists.has(domid)) return undefined;
    return this.states.get(domid) ?? { dying: false, shutdown: false };
  }
  introduce(domid: number): XsTransport | XsdError {
    if (this.refuse !== undefined) return this.refuse;
    const t = new MemTransport();
    this.rings.set(domid, t);
    return t;
  }
}

/** Virtual time for watch-event timeouts and the write rate limit. */
class FakeClock implements XsClock {
  t = 1_000_000;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private next = 1;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const first = this.timers[0];
      if (first === undefined || first.at > end) break;
      this.timers.shift();
      this.t = Math.max(this.t, first.at);
      first.fn();
    }
    this.t = end;
  }
}

interface World {
  xs: Xenstored;
  backend: TestBackend;
  clock: FakeClock;
  logs: string[];
  /** A new socket-class (dom0) client. */
  sock(): Peer;
  /** Introduces `domid` (it must exist) and returns a client speaking as it. */
  dom(domid: number): Peer;
}

function world(opts: Omit<XenstoredOptions, "backend" | "clock" | "log"> = {}): World {
  const backend = new TestBackend();
  const clock = new FakeClock();
  const logs: string[] = [];
  const xs = new Xenstored({ ...opts, backend, clock, log: (l) => logs.push(l) });
  const admin = (() => {
    let p: Peer | undefined;
    return () => {
      if (p === undefined) {
        const t = new MemTransport();
        p = new Peer(xs.connectSocket(t), t);
      }
      return p;
    };
  })();
  return {
    xs,
    backend,
    clock,
    logs,
    sock() {
      const t = new MemTransport();
      return new Peer(xs.connectSocket(t), t);
    },
    dom(domid) {
      backend.exists.add(domid);
      admin().ok(XS.INTRODUCE, z(String(domid), "1234", "7"));
      const t = backend.rings.get(domid)!;
      const conn = (xs.domains.get(domid)!.conn as XsConnection | null)!;
      return new Peer(conn, t);
    },
  };
}

interface Quota {
  nodes: number;
  watches: number;
  transactions: number;
  outstanding: number;
  memory: number;
}

/** `xenstore-control quota <domid>` as numbers. */
function quota(p: Peer, domid: number): Quota {
  const body = p.ok(XS.CONTROL, z("quota", String(domid)));
  const out: Record<string, number> = {};
  for (const line of body.split("\n").slice(1)) {
    const m = /^(\w+)\s*:\s*(\d+)$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  const { nodes, watches, transactions, outstanding, memory } = out;
  assert.ok(nodes !== undefined && watches !== undefined && transactions !== undefined && outstanding !== undefined && memory !== undefined, body);
  return { nodes, watches, transactions, outstanding, memory };
}

// ---------------------------------------------------------------------------------------------

describe("initial state", () => {
  test("the tree C xenstored 4.17 starts with: /, /tool, /tool/xenstored, owned by dom0 with no access for others", () => {
    const { sock } = world();
    const p = sock();
    assert.equal(p.ok(XS.DIRECTORY, z("/")), z("tool"));
    assert.equal(p.ok(XS.DIRECTORY, z("/tool")), z("xenstored"));
    assert.equal(p.ok(XS.DIRECTORY, z("/tool/xenstored")), "");
    for (const n of ["/", "/tool", "/tool/xenstored"]) {
      assert.equal(p.ok(XS.GET_PERMS, z(n)), z("n0"));
      assert.equal(p.ok(XS.READ, z(n)), "");
    }
    assert.equal(p.err(XS.READ, z("/local")), "ENOENT");
    // Generations 1..3 were taken by the three nodes.
    assert.equal(p.ok(XS.DIRECTORY_PART, z("/", "0")), z("1", "tool", ""));
    assert.deepEqual(quota(p, 0), { nodes: 3, watches: 0, transactions: 0, outstanding: 0, memory: 132 });
  });

  test("dom0 is introduced; DOMID_SELF counts as introduced; others are not", () => {
    const p = world().sock();
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("0")), z("T"));
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("32752")), z("T"));
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("5")), z("F"));
  });

  test("relative paths of a socket client are under /local/domain/0, created on first use", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "foo/bar\0baz");
    assert.equal(p.ok(XS.READ, z("/local/domain/0/foo/bar")), "baz");
    assert.equal(p.ok(XS.DIRECTORY, z("/local/domain")), z("0"));
  });
});

describe("node requests", () => {
  test("WRITE creates parents with empty values and the parent's permissions; READ returns bytes as written", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/a\0x");
    p.ok(XS.SET_PERMS, z("/a", "n0", "r3"));
    p.ok(XS.WRITE, "/a/b/c\0one\0two\0");
    assert.equal(p.ok(XS.READ, z("/a/b")), "");
    assert.equal(p.ok(XS.READ, z("/a/b/c")), "one\0two\0");
    assert.equal(p.ok(XS.GET_PERMS, z("/a/b/c")), z("n0", "r3"));
    assert.equal(p.ok(XS.WRITE, "/a\0"), "OK\0");
    assert.equal(p.ok(XS.READ, z("/a")), "");
  });

  test("MKDIR keeps an existing value; RM removes subtrees; RM of a missing node needs its parent", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/m/n\0v");
    p.ok(XS.MKDIR, z("/m/n"));
    assert.equal(p.ok(XS.READ, z("/m/n")), "v");
    p.ok(XS.MKDIR, z("/m/o/p"));
    assert.equal(p.ok(XS.DIRECTORY, z("/m")), z("n", "o"));
    p.ok(XS.RM, z("/m/o"));
    assert.equal(p.ok(XS.DIRECTORY, z("/m")), z("n"));
    assert.equal(p.ok(XS.RM, z("/m/zz")), "OK\0");
    assert.equal(p.err(XS.RM, z("/m/zz/yy")), "ENOENT");
    assert.equal(p.err(XS.RM, z("/")), "EINVAL");
  });

  test("bad paths are EINVAL: characters, //, trailing /, empty, length (the /local/domain/<id>/ prefix is free)", () => {
    const p = world().sock();
    for (const bad of ["/a//b", "/a/", "/a b", "/a+b", "/ä", "", `/${"a".repeat(2048)}`, `/local/domain/123456/${"a".repeat(2030)}`]) {
      assert.equal(p.err(XS.WRITE, `${bad}\0x`), "EINVAL", bad);
      assert.equal(p.err(XS.READ, z(bad)), "EINVAL", bad);
    }
    p.ok(XS.WRITE, `/${"a".repeat(2047)}\0x`);
    p.ok(XS.WRITE, `/local/domain/12345/${"b".repeat(2048)}\0x`);
    p.ok(XS.WRITE, `/local/domain/-1/${"c".repeat(2048)}\0x`);
    assert.equal(p.err(XS.WRITE, `/local/domain/12345/${"b".repeat(2049)}\0x`), "EINVAL");
  });

  // 4.17 answers these with a stale errno (or aborts); we answer EINVAL, as later Xen does.
  test("malformed arguments: no NUL, extra strings", () => {
    const p = world().sock();
    assert.equal(p.err(XS.WRITE, "/nonul"), "EINVAL");
    assert.equal(p.err(XS.READ, "/tool\0extra\0"), "EINVAL");
    assert.equal(p.err(XS.MKDIR, "/nonul"), "EINVAL");
    assert.equal(p.err(XS.RM, "/nonul"), "EINVAL");
    assert.equal(p.err(XS.GET_PERMS, z("/tool", "x")), "EINVAL");
    assert.equal(p.err(XS.DIRECTORY_PART, z("/tool")), "EINVAL");
    assert.equal(p.err(XS.SET_PERMS, z("/tool")), "EINVAL");
  });

  test("a malformed argument where 4.17 has errno 0 (after an RM) gets EINVAL, not an abort", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/x\0");
    p.ok(XS.RM, z("/x"));
    assert.equal(p.err(XS.READ, "abc"), "EINVAL");
    p.ok(XS.READ, z("/tool"));
  });

  test("DIRECTORY over 4096 bytes is E2BIG; DIRECTORY_PART pages it with the generation in front", () => {
    const p = world().sock();
    const names = Array.from({ length: 300 }, (_, i) => `child-number-${String(i).padStart(4, "0")}`);
    for (const n of names) p.ok(XS.MKDIR, z(`/big/${n}`));
    assert.equal(p.err(XS.DIRECTORY, z("/big")), "E2BIG");
    const all: string[] = [];
    let off = 0;
    let gen: string | undefined;
    for (;;) {
      const body = p.ok(XS.DIRECTORY_PART, z("/big", String(off)));
      const [g, ...rest] = body.split("\0");
      gen ??= g;
      assert.equal(g, gen, "the generation does not change between parts");
      assert.match(g!, /^\d+$/);
      const done = body.endsWith("\0\0");
      const part = rest.filter((s) => s !== "");
      all.push(...part);
      off += part.reduce((n, s) => n + s.length + 1, 0);
      if (done) break;
    }
    assert.deepEqual(all, names);
    assert.equal(p.ok(XS.DIRECTORY_PART, z("/big", "999999")), `${gen}\0\0`);
    assert.equal(p.ok(XS.DIRECTORY_PART, z("/big", "-1")), `${gen}\0\0`);
  });

  test("GET/SET_PERMS: the first entry is the owner; ids parse as strtol base 0; unknown domains are kept but ignored", () => {
    const { sock, backend } = world();
    backend.exists.add(16);
    const p = sock();
    p.ok(XS.WRITE, "/p\0");
    p.ok(XS.SET_PERMS, z("/p", "b00", "w0x10", "r+3", "n-1", "r010"));
    assert.equal(p.ok(XS.GET_PERMS, z("/p")), z("b0", "w16", "r3", "n-1", "r8"));
    assert.equal(p.err(XS.SET_PERMS, z("/p", "r5")), "ENOENT", "the owner must exist");
    for (const bad of ["x0", "r", "r0x", "r 0x", "r1 "]) assert.equal(p.err(XS.SET_PERMS, z("/p", "n0", bad)), "EINVAL", bad);
    assert.equal(p.err(XS.SET_PERMS, z("/missing", "n0")), "ENOENT");
    assert.equal(p.err(XS.GET_PERMS, z("@releaseDomain")), "EINVAL");
  });

  test("unknown and reply-only message types are ENOSYS (types 20, 23-26 do not exist in 4.17)", () => {
    const p = world().sock();
    for (const t of [XS.WATCH_EVENT, XS.ERROR, 20, 23, 24, 25, 26, 100, 0xffff]) {
      const m = p.req(t, z("x"));
      assert.equal(m.type, XS.ERROR, `type ${t}`);
      assert.equal(m.body, "ENOSYS\0");
    }
  });

  test("replies echo req_id and tx_id; errors do too", () => {
    const p = world().sock();
    const id = p.send(XS.READ, z("/tool"), 0, 0xdeadbeef);
    assert.deepEqual(p.reply(id), { type: XS.READ, reqId: 0xdeadbeef, txId: 0, body: "" });
    const id2 = p.send(XS.READ, z("/tool"), 77, 5);
    assert.deepEqual(p.reply(id2), { type: XS.ERROR, reqId: 5, txId: 77, body: "ENOENT\0" });
  });

  test("a payload over 4096 bytes closes a socket connection at once; others are unaffected", () => {
    const { sock } = world();
    const p = sock();
    const q = sock();
    const h = Buffer.alloc(16);
    h.writeUInt32LE(XS.READ, 0);
    h.writeUInt32LE(4097, 12);
    p.conn.feed(h);
    assert.equal(p.conn.closed, true);
    assert.equal(p.t.closed, true);
    q.ok(XS.READ, z("/tool"));
  });

  test("input in any chunking: byte by byte, and many messages in one chunk", () => {
    const p = world().sock();
    const msgs: Buffer[] = [];
    for (let i = 0; i < 5; i++) {
      const body = Buffer.from(`/c${i}\0v${i}`, "latin1");
      const h = Buffer.alloc(16);
      h.writeUInt32LE(XS.WRITE, 0);
      h.writeUInt32LE(100 + i, 4);
      h.writeUInt32LE(body.length, 12);
      msgs.push(h, body);
    }
    const all = Buffer.concat(msgs);
    for (let i = 0; i < all.length; i++) p.conn.feed(all.subarray(i, i + 1));
    p.conn.feed(Buffer.concat([all, all]));
    for (let i = 0; i < 5; i++) assert.equal(p.ok(XS.READ, z(`/c${i}`)), `v${i}`);
  });

  test("replies of one batch of requests leave in one transport write", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/k\0v");
    const parts: Buffer[] = [];
    for (let i = 0; i < 32; i++) {
      const body = Buffer.from("/k\0", "latin1");
      const h = Buffer.alloc(16);
      h.writeUInt32LE(XS.READ, 0);
      h.writeUInt32LE(1000 + i, 4);
      h.writeUInt32LE(body.length, 12);
      parts.push(h, body);
    }
    const before = p.t.writes;
    p.conn.feed(Buffer.concat(parts));
    assert.equal(p.t.writes - before, 1);
    for (let i = 0; i < 32; i++) assert.equal(p.reply(1000 + i)?.body, "v");
  });
});

describe("transactions", () => {
  test("ids count from 1 per connection; the transaction sees its own writes, others do not until commit", () => {
    const { sock } = world();
    const a = sock();
    const b = sock();
    assert.equal(a.ok(XS.TRANSACTION_START, z("")), z("1"));
    assert.equal(a.ok(XS.TRANSACTION_START, z("")), z("2"));
    assert.equal(b.ok(XS.TRANSACTION_START, z("")), z("1"));
    a.ok(XS.WRITE, "/t/x\0in-tx", 1);
    assert.equal(a.ok(XS.READ, z("/t/x"), 1), "in-tx");
    assert.equal(a.err(XS.READ, z("/t/x")), "ENOENT");
    assert.equal(b.err(XS.READ, z("/t/x"), 1), "ENOENT");
    a.ok(XS.TRANSACTION_END, z("T"), 1);
    assert.equal(b.ok(XS.READ, z("/t/x")), "in-tx");
  });

  test("EAGAIN when a node the transaction read (or found missing) changed; abort discards; ids then unknown", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/c\x001");
    p.ok(XS.TRANSACTION_START, z(""));
    assert.equal(p.ok(XS.READ, z("/c"), 1), "1");
    p.ok(XS.WRITE, "/other\0x", 1);
    p.ok(XS.WRITE, "/c\0changed");
    assert.equal(p.err(XS.TRANSACTION_END, z("T"), 1), "EAGAIN");
    assert.equal(p.err(XS.READ, z("/other")), "ENOENT");
    assert.equal(p.err(XS.TRANSACTION_END, z("T"), 1), "ENOENT");

    p.ok(XS.TRANSACTION_START, z(""));
    assert.equal(p.err(XS.READ, z("/nothere"), 2), "ENOENT");
    p.ok(XS.WRITE, "/nothere\0now");
    assert.equal(p.err(XS.TRANSACTION_END, z("T"), 2), "EAGAIN");

    p.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.WRITE, "/c\0mine", 3);
    p.ok(XS.WRITE, "/unrelated\0x");
    p.ok(XS.TRANSACTION_END, z("T"), 3);
    assert.equal(p.ok(XS.READ, z("/c")), "mine");

    p.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.WRITE, "/c\0dropped", 4);
    p.ok(XS.TRANSACTION_END, z("F"), 4);
    assert.equal(p.ok(XS.READ, z("/c")), "mine");
  });

  test("a read-then-written node conflicts too (4.17 checks every read node)", () => {
    const p = world().sock();
    p.ok(XS.WRITE, "/rw\0a");
    p.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.READ, z("/rw"), 1);
    p.ok(XS.WRITE, "/rw\0b", 1);
    p.ok(XS.WRITE, "/rw\0outside");
    assert.equal(p.err(XS.TRANSACTION_END, z("T"), 1), "EAGAIN");
  });

  test("errors: unknown tx id ENOENT, START inside a transaction EBUSY, END without one ENOENT, bad END arg EINVAL", () => {
    const p = world().sock();
    assert.equal(p.err(XS.READ, z("/tool"), 99), "ENOENT");
    assert.equal(p.err(XS.TRANSACTION_START, z(""), 99), "ENOENT");
    p.ok(XS.TRANSACTION_START, z(""));
    assert.equal(p.err(XS.TRANSACTION_START, z(""), 1), "EBUSY");
    assert.equal(p.err(XS.TRANSACTION_END, z("T")), "ENOENT");
    assert.equal(p.err(XS.TRANSACTION_END, z("X"), 1), "EINVAL");
    assert.equal(p.err(XS.TRANSACTION_END, "T", 1), "EINVAL");
    p.ok(XS.TRANSACTION_END, z("T"), 1);
  });

  test("watches fire at commit only, once per node, for the changes the commit makes", () => {
    const { sock } = world();
    const w = sock();
    const p = sock();
    w.ok(XS.WATCH, z("/tw", "tok"));
    assert.deepEqual(w.takeEvents(), ["/tw tok"]);
    p.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.WRITE, "/tw/a\0x", 1);
    p.ok(XS.WRITE, "/tw/a\0y", 1);
    assert.deepEqual(w.takeEvents(), []);
    p.ok(XS.TRANSACTION_END, z("T"), 1);
    // One event: the parent the write created is not an event of its own (as outside transactions).
    assert.deepEqual(w.takeEvents(), ["/tw/a tok"]);
  });

  test("RESET_WATCHES drops transactions too, also when sent inside one (4.17 aborts there)", () => {
    const p = world().sock();
    p.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.RESET_WATCHES, "", 1);
    assert.equal(p.err(XS.READ, z("/tool"), 1), "ENOENT");
  });

  test("model: random operations in a transaction, committed with no interference, equal the same operations done directly", () => {
    const op = fc.oneof(
      fc.record({ k: fc.constant("w"), p: fc.constantFrom("/m/a", "/m/b", "/m/a/c", "/m/d/e"), v: fc.string({ maxLength: 5 }) }),
      fc.record({ k: fc.constant("rm"), p: fc.constantFrom("/m/a", "/m/b", "/m/d", "/m/a/c") }),
      fc.record({ k: fc.constant("mk"), p: fc.constantFrom("/m/a", "/m/x/y", "/m/b") }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 12 }), (ops) => {
        const dump = (p: Peer): string => {
          const walk = (path: string): string => {
            const r = p.req(XS.DIRECTORY, z(path));
            if (r.type === XS.ERROR) return "";
            const v = p.ok(XS.READ, z(path));
            return `${path}=${v};${r.body
              .split("\0")
              .filter((s) => s)
              .map((c) => walk(`${path}/${c}`))
              .join("")}`;
          };
          return walk("/m");
        };
        const run = (p: Peer, tx: number): void => {
          for (const o of ops) {
            if (o.k === "w") p.req(XS.WRITE, `${o.p}\0${"v" in o ? o.v : ""}`, tx);
            else if (o.k === "rm") p.req(XS.RM, z(o.p), tx);
            else p.req(XS.MKDIR, z(o.p), tx);
          }
        };
        const direct = world().sock();
        direct.ok(XS.MKDIR, z("/m"));
        run(direct, 0);
        const inTx = world().sock();
        inTx.ok(XS.MKDIR, z("/m"));
        inTx.ok(XS.TRANSACTION_START, z(""));
        run(inTx, 1);
        inTx.ok(XS.TRANSACTION_END, z("T"), 1);
        assert.equal(dump(inTx), dump(direct));
        assert.deepEqual(quota(inTx, 0), quota(direct, 0));
      }),
      { numRuns: 150 },
    );
  });
});

describe("watches", () => {
  test("fires once on registration (after the OK), then for the path and everything below it", () => {
    const p = world().sock();
    const m = p.send(XS.WATCH, z("/w", "t"));
    assert.deepEqual(
      p.log.length,
      0,
      "nothing before feed's reply",
    );
    assert.equal(p.reply(m)?.body, "OK\0");
    assert.deepEqual(p.log.map((x) => x.type), [XS.WATCH, XS.WATCH_EVENT]);
    assert.deepEqual(p.takeEvents(), ["/w t"]);
    p.ok(XS.WRITE, "/w\0");
    p.ok(XS.WRITE, "/w/deep/er\0");
    p.ok(XS.WRITE, "/wx\0");
    assert.deepEqual(p.takeEvents(), ["/w t", "/w/deep/er t"]);
  });

  test("an event of a request comes before its reply on the requester's connection", () => {
    const p = world().sock();
    p.ok(XS.WATCH, z("/o", "t"));
    p.takeEvents();
    const before = p.log.length;
    p.ok(XS.WRITE, "/o\0x");
    assert.deepEqual(p.log.slice(before).map((x) => x.type), [XS.WATCH_EVENT, XS.WRITE]);
  });

  test("RM fires the removed root for subtree watches and each removed node for exact ones, children first", () => {
    const { sock } = world();
    const w = sock();
    const p = sock();
    p.ok(XS.WRITE, "/r/a/b\0");
    p.ok(XS.WRITE, "/r/c\0");
    w.ok(XS.WATCH, z("/r/a/b", "deep"));
    w.ok(XS.WATCH, z("/", "root"));
    w.ok(XS.WATCH, z("/r/nothere", "none"));
    w.takeEvents();
    p.ok(XS.RM, z("/r"));
    assert.deepEqual(w.takeEvents(), ["/r/a/b deep", "/r root"]);
  });

  test("relative watches get relative paths; UNWATCH matches the canonical path", () => {
    const p = world().sock();
    p.ok(XS.WATCH, z("rel", "t"));
    p.ok(XS.WRITE, "rel/x\0");
    p.ok(XS.WRITE, "/local/domain/0/rel/y\0");
    assert.deepEqual(p.takeEvents(), ["rel t", "rel/x t", "rel/y t"]);
    p.ok(XS.UNWATCH, z("/local/domain/0/rel", "t"));
    assert.equal(p.err(XS.UNWATCH, z("rel", "t")), "ENOENT");
  });

  test("errors: duplicate EEXIST, bad path EINVAL, a depth argument EINVAL (4.17 has none), UNWATCH unknown ENOENT", () => {
    const p = world().sock();
    p.ok(XS.WATCH, z("/d", "t"));
    assert.equal(p.err(XS.WATCH, z("/d", "t")), "EEXIST");
    p.ok(XS.WATCH, z("/d", "t2"));
    assert.equal(p.err(XS.WATCH, z("/d//", "t")), "EINVAL");
    assert.equal(p.err(XS.WATCH, z("/d", "t3", "1")), "EINVAL");
    assert.equal(p.err(XS.WATCH, z("/d")), "EINVAL");
    assert.equal(p.err(XS.WATCH, z(`@${"x".repeat(2048)}`, "t")), "EINVAL");
    assert.equal(p.err(XS.UNWATCH, z("/d", "nope")), "ENOENT");
  });

  test("an event identical to one still queued is not queued again", () => {
    const { sock } = world();
    const w = sock();
    const p = sock();
    w.ok(XS.WATCH, z("/dup", "t"));
    w.takeEvents();
    w.t.room = 0;
    p.ok(XS.WRITE, "/dup\0a");
    p.ok(XS.WRITE, "/dup\0b");
    p.ok(XS.WRITE, "/dup/x\0b");
    w.t.room = Number.POSITIVE_INFINITY;
    w.conn.writable();
    assert.deepEqual(w.takeEvents(), ["/dup t", "/dup/x t"]);
  });

  test("@introduceDomain and @releaseDomain go to privileged watchers, and to domains SET_PERMS allows", () => {
    const { sock, dom, xs, backend } = world();
    const p = sock();
    p.ok(XS.WATCH, z("@introduceDomain", "i"));
    p.ok(XS.WATCH, z("@releaseDomain", "r"));
    p.takeEvents();
    const d5 = dom(5);
    assert.deepEqual(p.takeEvents(), ["@introduceDomain i"]);
    d5.ok(XS.WATCH, z("@introduceDomain", "mine"));
    d5.takeEvents();
    dom(6);
    assert.deepEqual(d5.takeEvents(), []);
    assert.equal(d5.err(XS.SET_PERMS, z("@introduceDomain", "n5")), "EACCES");
    p.ok(XS.SET_PERMS, z("@introduceDomain", "n0", "r5"));
    dom(7);
    assert.deepEqual(d5.takeEvents(), ["@introduceDomain mine"]);
    assert.deepEqual(p.takeEvents(), ["@introduceDomain i", "@introduceDomain i"]);
    assert.equal(p.err(XS.SET_PERMS, z("@other", "n0")), "EINVAL");
    // Domain 7 dies: released, @releaseDomain fires.
    backend.states.set(7, { dying: true, shutdown: true });
    xs.domainsChanged();
    assert.deepEqual(p.takeEvents(), ["@releaseDomain r"]);
  });

  test("a watcher that may not read a node (nor its parent) hears nothing of it", () => {
    const { sock, dom } = world();
    const p = sock();
    const d5 = dom(5);
    p.ok(XS.WRITE, "/secret/x\0");
    d5.ok(XS.WATCH, z("/secret", "s"));
    assert.deepEqual(d5.takeEvents(), ["/secret s"]);
    p.ok(XS.WRITE, "/secret/x/y\0");
    assert.deepEqual(d5.takeEvents(), []);
    p.ok(XS.SET_PERMS, z("/secret/x", "n0", "r5"));
    assert.deepEqual(d5.takeEvents(), ["/secret/x s"]);
    p.ok(XS.WRITE, "/secret/x/y\0again");
    assert.deepEqual(d5.takeEvents(), ["/secret/x/y s"], "the parent is readable now");
  });
});

describe("domains", () => {
  test("a domain's relative paths are under /local/domain/<id>; it owns what it creates; EACCES outside its tree", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    assert.equal(d.err(XS.WRITE, "foo\0bar"), "EACCES", "no /local/domain/5 yet");
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5", "r0"));
    d.ok(XS.WRITE, "foo\0bar");
    assert.equal(d.ok(XS.READ, z("foo")), "bar");
    assert.equal(d.ok(XS.GET_PERMS, z("/local/domain/5/foo")), z("n5", "r0"));
    assert.equal(d.ok(XS.GET_DOMAIN_PATH, z("5")), z("/local/domain/5"));
    for (const path of ["/tool", "/nonexist", "/local/domain", "/"]) assert.equal(d.err(XS.READ, z(path)), "EACCES", path);
    assert.equal(d.err(XS.WRITE, "/tool/x\0"), "EACCES");
    assert.equal(d.err(XS.RM, z("/tool/x")), "EACCES");
    assert.equal(d.err(XS.SET_PERMS, z("foo", "n0")), "EPERM", "only dom0 changes owners");
    assert.equal(d.err(XS.SET_PERMS, z("foo", "n5", "r1", "r2", "r3", "r4", "r6")), "ENOSPC");
    d.ok(XS.SET_PERMS, z("foo", "n5", "r1", "r2", "r3", "r4"));
  });

  test("privileged requests from a domain are EACCES", () => {
    const d = world().dom(5);
    for (const [t, p] of [
      [XS.INTRODUCE, z("6", "1", "2")],
      [XS.RELEASE, z("6")],
      [XS.IS_DOMAIN_INTRODUCED, z("5")],
      [XS.RESUME, z("5")],
      [XS.SET_TARGET, z("5", "6")],
      [XS.CONTROL, z("help")],
    ] as const) {
      assert.equal(d.err(t, p), "EACCES", `type ${t}`);
    }
  });

  test("quotas: nodes, watches (one over, as C), transactions (one over, as C), node size, accessed nodes per transaction", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    for (const [name, v] of [
      ["nodes", "5"],
      ["watches", "2"],
      ["transactions", "2"],
      ["transaction-nodes", "3"],
      ["node-size", "100"],
    ] as const) {
      p.ok(XS.CONTROL, z("quota", "set", name, v));
    }
    // /local/domain/5 counts: it is owned by domain 5.
    for (let i = 1; i <= 4; i++) d.ok(XS.WRITE, `n${i}\0x`);
    assert.equal(d.err(XS.WRITE, "n5\0x"), "ENOSPC");
    assert.equal(d.err(XS.WRITE, `n1\0${"y".repeat(80)}`), "ENOSPC");
    d.ok(XS.WRITE, `n1\0${"y".repeat(60)}`);
    for (let i = 1; i <= 3; i++) d.ok(XS.WATCH, z(`n${i}`, "t"));
    assert.equal(d.err(XS.WATCH, z("n4", "t")), "E2BIG");
    for (let i = 1; i <= 3; i++) assert.equal(d.ok(XS.TRANSACTION_START, z("")), z(String(i)));
    assert.equal(d.err(XS.TRANSACTION_START, z("")), "ENOSPC");
    d.ok(XS.READ, z("n1"), 1);
    d.ok(XS.READ, z("n2"), 1);
    d.ok(XS.READ, z("n3"), 1);
    assert.equal(d.err(XS.READ, z("n4"), 1), "ENOSPC");
    assert.equal(d.err(XS.TRANSACTION_END, z("T"), 1), "ENOMEM", "a failed transaction cannot commit");
    const q = quota(p, 5);
    assert.equal(q.nodes, 5);
    assert.equal(q.watches, 3);
    assert.equal(q.transactions, 2);
  });

  test("memory quota: a domain over it is not read until it is under again", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    p.ok(XS.CONTROL, z("quota", "set", "memory", "300"));
    d.ok(XS.WRITE, "a\0x");
    d.ok(XS.WRITE, "b\0x");
    assert.ok(quota(p, 5).memory >= 100);
    p.ok(XS.CONTROL, z("quota", "set", "memory", "100"));
    const id = d.send(XS.READ, z("a"));
    assert.equal(d.reply(id), undefined);
    assert.equal(d.conn.wantsInput, false);
    p.ok(XS.CONTROL, z("quota", "set", "memory", "300"));
    d.conn.writable();
    assert.equal(d.reply(id)?.body, "x");
  });

  test("SET_TARGET gives a domain its target's rights", () => {
    const { sock, dom } = world();
    const p = sock();
    const d5 = dom(5);
    dom(6);
    p.ok(XS.WRITE, "/local/domain/6/priv\0secret");
    p.ok(XS.SET_PERMS, z("/local/domain/6/priv", "n6"));
    assert.equal(d5.err(XS.READ, z("/local/domain/6/priv")), "EACCES");
    assert.equal(p.err(XS.SET_TARGET, z("5", "8")), "ENOENT");
    p.ok(XS.SET_TARGET, z("5", "6"));
    assert.equal(d5.ok(XS.READ, z("/local/domain/6/priv")), "secret");
  });

  test("INTRODUCE: argument checks, the backend's error, re-introduction resets the connection", () => {
    const { sock, dom, backend } = world();
    const p = sock();
    assert.equal(p.err(XS.INTRODUCE, z("5", "1")), "EINVAL");
    assert.equal(p.err(XS.INTRODUCE, z("5", "1", "0")), "EINVAL");
    backend.refuse = "ENOENT";
    assert.equal(p.err(XS.INTRODUCE, z("5", "1", "3")), "ENOENT");
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("5")), z("F"));
    backend.refuse = undefined;
    const d = dom(5);
    assert.deepEqual(d.t.resets, [7]);
    d.ok(XS.WATCH, z("@introduceDomain", "x"));
    d.ok(XS.TRANSACTION_START, z(""));
    p.ok(XS.INTRODUCE, z("5", "1", "9"));
    assert.deepEqual(d.t.resets, [7, 9]);
    assert.equal(d.err(XS.READ, z("x"), 1), "ENOENT", "transactions are gone");
    assert.equal(quota(p, 5).watches, 0);
  });

  test("RELEASE and RESUME: argument checks; a released domain's nodes go and @releaseDomain fires", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.WATCH, z("@releaseDomain", "r"));
    p.takeEvents();
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    d.ok(XS.WRITE, "data\0x");
    assert.equal(p.err(XS.RELEASE, z("0")), "EINVAL");
    assert.equal(p.err(XS.RELEASE, z("x")), "EINVAL");
    assert.equal(p.err(XS.RELEASE, "5"), "EINVAL");
    assert.equal(p.err(XS.RELEASE, z("9")), "ENOENT");
    assert.equal(p.err(XS.RESUME, z("9")), "ENOENT");
    p.ok(XS.RESUME, z("5"));
    p.ok(XS.RELEASE, z("5"));
    assert.equal(d.t.closed, true);
    assert.equal(d.conn.closed, true);
    assert.deepEqual(p.takeEvents(), ["@releaseDomain r"]);
    assert.equal(p.err(XS.READ, z("/local/domain/5")), "ENOENT");
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("5")), z("F"));
    assert.equal(p.err(XS.RELEASE, z("5")), "ENOENT");
  });

  test("VIRQ_DOM_EXC rescan: a shutdown fires @releaseDomain once until RESUME; a dying domain is released", () => {
    const { sock, dom, xs, backend } = world();
    const p = sock();
    dom(5);
    p.ok(XS.WATCH, z("@releaseDomain", "r"));
    p.takeEvents();
    backend.states.set(5, { dying: false, shutdown: true });
    xs.domainsChanged();
    xs.domainsChanged();
    assert.deepEqual(p.takeEvents(), ["@releaseDomain r"]);
    p.ok(XS.RESUME, z("5"));
    xs.domainsChanged();
    assert.deepEqual(p.takeEvents(), ["@releaseDomain r"]);
    backend.states.set(5, { dying: true, shutdown: true });
    xs.domainsChanged();
    assert.deepEqual(p.takeEvents(), ["@releaseDomain r"]);
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("5")), z("F"));
  });

  test("nodes owned by a domain that is not introduced go when it stops existing; its old grants do not pass to a new domain 7", () => {
    const { sock, xs, backend, dom } = world();
    const p = sock();
    backend.exists.add(7);
    p.ok(XS.WRITE, "/o7\0");
    p.ok(XS.SET_PERMS, z("/o7", "n7"));
    p.ok(XS.WRITE, "/g\0");
    p.ok(XS.SET_PERMS, z("/g", "n0", "r7"));
    assert.equal(quota(p, 7).nodes, 1);
    backend.exists.delete(7);
    xs.domainsChanged();
    assert.equal(p.err(XS.READ, z("/o7")), "ENOENT");
    assert.equal(p.err(XS.CONTROL, z("quota", "7")), "ENOENT");
    // A new domain 7: the grant on /g predates it.
    const d7 = dom(7);
    assert.equal(p.ok(XS.GET_PERMS, z("/g")), z("n0", "r7"));
    assert.equal(d7.err(XS.READ, z("/g")), "EACCES");
    p.ok(XS.SET_PERMS, z("/g", "n0", "r7"));
    assert.equal(d7.ok(XS.READ, z("/g")), "");
  });
});

describe("XS_CONTROL", () => {
  test("quota, quota-soft and help print as C xenstored 4.17 (help without live-update)", () => {
    const p = world().sock();
    assert.equal(
      p.ok(XS.CONTROL, z("quota")),
      "Quota settings:\n" +
        "nodes            :     1000 Nodes per domain\n" +
        "watches          :      128 Watches per domain\n" +
        "transactions     :       10 Transactions per domain\n" +
        "outstanding      :       20 Outstanding requests per domain\n" +
        "transaction-nodes:     1024 Max. number of accessed nodes per transaction\n" +
        "memory           :  2621440 Total Xenstore memory per domain (error level)\n" +
        "node-size        :     2048 Max. size of a node\n" +
        "path-max         :     2048 Max. length of a node path\n" +
        "permissions      :        5 Max. number of permissions per node\n\0",
    );
    assert.equal(p.ok(XS.CONTROL, z("quota-soft")), "Quota settings:\nmemory           :  2097152 Total Xenstore memory per domain (warning level)\n\0");
    assert.equal(
      p.ok(XS.CONTROL, z("help")),
      "check\t\nlog\ton|off\nlogfile\t<file>\nmemreport\t[<file>]\nprint\t<string>\nquota\t[set <name> <val>|<domid>]\nquota-soft\t[set <name> <val>]\nhelp\t\n\0",
    );
    assert.equal(p.ok(XS.CONTROL, z("quota", "0")), "Domain 0:\nnodes           :        3\nwatches         :        0\ntransactions    :        0\noutstanding     :        0\nmemory          :      132\n\0");
    assert.equal(p.ok(XS.CONTROL, z("check")), "OK\0");
    p.ok(XS.CONTROL, z("quota", "set", "nodes", "77"));
    assert.match(p.ok(XS.CONTROL, z("quota")), /nodes {12}: {7}77 Nodes/);
  });

  test("logfile, log off/on and memreport write to the trace file", () => {
    const dir = mkdtempSync(join(tmpdir(), "xensim-xstrace-"));
    try {
      const p = world().sock();
      const file = join(dir, "trace");
      p.ok(XS.CONTROL, z("logfile", file));
      p.ok(XS.READ, z("/tool"));
      p.ok(XS.CONTROL, z("log", "off"));
      p.ok(XS.READ, z("/tool/xenstored"));
      p.ok(XS.CONTROL, z("log", "on"));
      p.ok(XS.CONTROL, z("memreport"));
      p.ok(XS.CONTROL, z("memreport", join(dir, "mem")));
      p.ok(XS.CONTROL, z("print", "hello there"));
      const trace = readFileSync(file, "utf8");
      assert.match(trace, /^IN conn#\d+ \d{8} [\d:]{8} READ \(\/tool \)$/m);
      assert.match(trace, /^OUT conn#\d+ .* READ \(\)$/m);
      assert.doesNotMatch(trace, /tool\/xenstored/);
      assert.match(trace, /^xenstored memory report: /m);
      assert.match(trace, /^control: hello there$/m);
      assert.match(readFileSync(join(dir, "mem"), "utf8"), /^domain 0: nodes 3 /m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("errors are EINVAL (an unknown domain ENOENT)", () => {
    const p = world().sock();
    for (const args of [
      [],
      ["bogus"],
      ["live-update", "-a"],
      ["check", "x"],
      ["log"],
      ["log", "x"],
      ["quota", "set", "nodes"],
      ["quota", "set", "nodes", "x"],
      ["quota", "set", "bogus", "3"],
      ["quota", "1", "2"],
      ["quota-soft", "x"],
      ["quota-soft", "set", "nodes", "5"],
      ["print"],
      ["help", "x"],
      ["memreport"],
    ]) {
      assert.equal(p.err(XS.CONTROL, z(...args)), "EINVAL", args.join(" "));
    }
    assert.equal(p.err(XS.CONTROL, ""), "EINVAL");
    assert.equal(p.err(XS.CONTROL, z("quota", "42")), "ENOENT");
  });
});

describe("bounded memory for clients that do not read (XSA-326)", () => {
  test("a domain stops being read at 20 outstanding requests; its memory stays bounded; others are served", () => {
    const { sock, dom, xs } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    d.ok(XS.WRITE, `big\0${"v".repeat(1000)}`);
    d.t.room = 0; // the guest never consumes its ring
    const ids: number[] = [];
    for (let i = 0; i < 500; i++) ids.push(d.send(XS.READ, z("big")));
    assert.equal(d.conn.wantsInput, false);
    const q = quota(p, 5);
    assert.equal(q.outstanding, 20);
    assert.ok(q.memory < 40_000, `memory ${q.memory}`);
    p.ok(XS.READ, z("/local/domain/5/big"));
    // The guest reads again: everything is answered, in order.
    d.t.room = Number.POSITIVE_INFINITY;
    d.conn.writable();
    for (const id of ids) assert.equal(d.reply(id)?.body.length, 1000);
    assert.equal(quota(p, 5).outstanding, 0);
    assert.ok(d.t.resumed > 0);
    void xs;
  });

  test("watch events a domain caused count against its outstanding requests until they are written", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5", "r0"));
    const w = sock();
    w.ok(XS.WATCH, z("/local/domain/5", "t"));
    w.takeEvents();
    w.t.room = 0; // a watcher that does not read
    for (let i = 0; i < 30; i++) d.send(XS.WRITE, `k${i}\0v`);
    const q = quota(p, 5);
    assert.equal(q.outstanding, 20, "writes whose events are unsent still count");
    w.t.room = Number.POSITIVE_INFINITY;
    w.conn.writable();
    assert.equal(quota(p, 5).outstanding, 0);
    assert.equal(w.takeEvents().length, 30);
  });

  test("unsent watch events of a domain are dropped after 20 s", () => {
    const { sock, dom, clock } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.SET_PERMS, z("/", "n0", "r5"));
    d.ok(XS.WATCH, z("/ev", "t"));
    d.takeEvents();
    d.t.room = 0;
    p.ok(XS.WRITE, "/ev\0a");
    p.ok(XS.WRITE, "/ev/b\0a");
    const before = quota(p, 5).memory;
    clock.advance(19_000);
    assert.equal(quota(p, 5).memory, before);
    clock.advance(2_000);
    assert.ok(quota(p, 5).memory < before);
    d.t.room = Number.POSITIVE_INFINITY;
    d.conn.writable();
    assert.deepEqual(d.takeEvents(), []);
  });

  test("a socket client that never reads: not read past the backlog bound, its events dropped there, others served", () => {
    const { sock } = world({ backlog: 64 * 1024 });
    const lazy = sock();
    const busy = sock();
    lazy.ok(XS.WRITE, `/v\0${"x".repeat(3000)}`);
    lazy.ok(XS.WATCH, z("/", "all"));
    lazy.t.room = 0;
    for (let i = 0; i < 1000; i++) lazy.send(XS.READ, z("/v"));
    assert.equal(lazy.conn.wantsInput, false);
    for (let i = 0; i < 2000; i++) busy.ok(XS.WRITE, `/w${i % 10}\0${i}`);
    const queued = (lazy.conn as unknown as { outBytes: number }).outBytes;
    assert.ok(queued <= 64 * 1024 + 4096 + 16, `queued ${queued}`);
    busy.ok(XS.READ, z("/v"));
  });

  test("the write rate limit (while transactions are open) stalls a domain, and time lifts it", () => {
    const { sock, dom, clock } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    p.ok(XS.TRANSACTION_START, z(""));
    const ids: number[] = [];
    for (let i = 0; i < 40; i++) ids.push(d.send(XS.WRITE, `r${i % 5}\0x`));
    const answered = ids.filter((id) => d.reply(id) !== undefined).length;
    assert.ok(answered < 40, `all ${answered} answered at once`);
    assert.equal(d.conn.wantsInput, false);
    clock.advance(1_000);
    const rest = ids.filter((id) => d.reply(id) !== undefined).length;
    assert.equal(answered + rest, 40);
  });

  test("a ring that is full takes output in pieces; the domain's messages arrive whole and in order", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    p.ok(XS.MKDIR, z("/local/domain/5"));
    p.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
    d.ok(XS.WRITE, `v\0${"0123456789".repeat(100)}`);
    d.t.room = 0;
    const ids = [d.send(XS.READ, z("v")), d.send(XS.READ, z("v")), d.send(XS.GET_PERMS, z("v"))];
    for (let i = 0; i < 100; i++) {
      d.t.room = 37;
      d.conn.writable();
    }
    assert.equal(d.reply(ids[0]!)?.body.length, 1000);
    assert.equal(d.reply(ids[1]!)?.body.length, 1000);
    assert.equal(d.reply(ids[2]!)?.body, z("n5"));
  });
});

describe("pieces", () => {
  test("strtol and atoi as glibc's", () => {
    assert.equal(atoi("12abc"), 12);
    assert.equal(atoi("  -7"), -7);
    assert.equal(atoi("x"), 0);
    assert.equal(atoi("99999999999"), 1215752191);
    assert.equal(atoi("-1") >>> 0, 4294967295);
    assert.deepEqual(strtol("0x1f", 0), { value: 31n, end: 4 });
    assert.deepEqual(strtol("017", 0), { value: 15n, end: 3 });
    assert.deepEqual(strtol("0x", 0), { value: 0n, end: 1 });
    assert.deepEqual(strtol("", 0), { value: 0n, end: 0 });
  });

  test("permission strings round-trip; bad ones are rejected", () => {
    assert.deepEqual(stringsToPerms(["n0", "r5", "w6", "b7"]), [
      { id: 0, perms: 0 },
      { id: 5, perms: 1 },
      { id: 6, perms: 2 },
      { id: 7, perms: 3 },
    ]);
    assert.equal(stringsToPerms(["q1"]), undefined);
    assert.equal(permToString({ id: 0xffffffff, perms: 1 | 16 }), "r-1");
    fc.assert(
      fc.property(fc.constantFrom("n", "r", "w", "b"), fc.integer({ min: 0, max: 0x7fffffff }), (l, id) => {
        const p = stringsToPerms([`${l}${id}`]);
        assert.ok(p);
        assert.equal(permToString(p[0]!), `${l}${id}`);
      }),
    );
  });

  test("node names", () => {
    assert.ok(isValidNodename("/", 2048));
    assert.ok(isValidNodename("/a-b_c@d/0", 2048));
    for (const bad of ["", "a", "/a/", "//", "/a//b", "/a.b", "/a b"]) assert.ok(!isValidNodename(bad, 2048), bad);
  });

  test("ignore_connection for a domain writes the error to its ring and keeps the domain introduced", () => {
    const { sock, dom } = world();
    const p = sock();
    const d = dom(5);
    const h = Buffer.alloc(16);
    h.writeUInt32LE(XS.READ, 0);
    h.writeUInt32LE(5000, 12);
    d.conn.feed(h);
    assert.equal(d.t.ignored, XENSTORE_ERROR_PROTO);
    assert.equal(d.conn.closed, false);
    assert.equal(d.conn.wantsInput, false);
    assert.equal(p.ok(XS.IS_DOMAIN_INTRODUCED, z("5")), z("T"));
  });
});

describe("accounting invariants under random requests", () => {
  /** What the counters must add up to, recomputed from the store, queues and watches. */
  function recount(w: World): { nodes: Map<number, number>; memory: Map<number, number> } {
    const xs = w.xs;
    const nodes = new Map<number, number>();
    const memory = new Map<number, number>();
    const add = (m: Map<number, number>, k: number, v: number): void => {
      m.set(k, (m.get(k) ?? 0) + v);
    };
    const taOwner = new Map<string, number>();
    for (const c of xs.connections) for (const t of c.transactions.values()) taOwner.set(`${t.generation}`, c.domid);
    for (const [key, rec] of xs.store) {
      const size = 24 + 8 * rec.perms.length + rec.data.length + rec.children.length + key.length;
      if (key.startsWith("/")) {
        add(nodes, rec.perms[0]!.id, 1);
        add(memory, rec.perms[0]!.id, size);
      } else add(memory, taOwner.get(key.slice(0, key.indexOf("/")))!, size);
    }
    for (const c of xs.connections) {
      add(memory, c.domid, c.outBytes);
      for (const wt of c.watches) add(memory, c.domid, wt.node.length + wt.token.length);
    }
    return { nodes, memory };
  }

  test("node counts and memory of every domain equal what the store, queues and watches hold; the store checks clean", () => {
    const conn = fc.constantFrom("s", "d5", "d6");
    const path = fc.constantFrom("/q", "/q/a", "/q/a/b", "a", "a/b", "/local/domain/6/x", "/local/domain/5", "@releaseDomain");
    const perms = fc.array(fc.constantFrom("n0", "r5", "b6", "n5", "n6", "w7"), { minLength: 1, maxLength: 3 });
    const op = fc.oneof(
      fc.record({ c: conn, t: fc.constant(XS.WRITE), p: path, v: fc.constantFrom("", "v", "x".repeat(200)), tx: fc.boolean() }),
      fc.record({ c: conn, t: fc.constantFrom(XS.MKDIR, XS.RM, XS.READ, XS.DIRECTORY), p: path, tx: fc.boolean() }),
      fc.record({ c: conn, t: fc.constant(XS.SET_PERMS), p: path, perms, tx: fc.boolean() }),
      fc.record({ c: conn, t: fc.constantFrom(XS.WATCH, XS.UNWATCH), p: path }),
      fc.record({ c: conn, t: fc.constantFrom(XS.TRANSACTION_START, XS.RESET_WATCHES) }),
      fc.record({ c: conn, t: fc.constant(XS.TRANSACTION_END), commit: fc.boolean() }),
      fc.record({ c: conn, t: fc.constant(-1) }), // the client stops or resumes reading
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const w = world();
        const s = w.sock();
        const peers: Record<string, Peer> = { s, d5: w.dom(5), d6: w.dom(6) };
        s.ok(XS.MKDIR, z("/local/domain/5"));
        s.ok(XS.SET_PERMS, z("/local/domain/5", "n5"));
        s.ok(XS.SET_PERMS, z("/", "n0", "r5", "r6"));
        const tx: Record<string, number> = { s: 0, d5: 0, d6: 0 };
        for (const o of ops) {
          const p = peers[o.c]!;
          const t = "tx" in o && o.tx ? tx[o.c]! : 0;
          if (o.t === -1) {
            p.t.room = p.t.room === 0 ? Number.POSITIVE_INFINITY : 0;
            p.conn.writable();
          } else if (o.t === XS.WRITE) p.send(XS.WRITE, `${o.p}\0${"v" in o ? o.v : ""}`, t);
          else if (o.t === XS.SET_PERMS) p.send(XS.SET_PERMS, z(o.p!, ...("perms" in o ? o.perms : [])), t);
          else if (o.t === XS.WATCH || o.t === XS.UNWATCH) p.send(o.t, z(o.p!, "tok"));
          else if (o.t === XS.TRANSACTION_START) {
            const id = p.send(o.t, z(""));
            const r = p.reply(id);
            if (r?.type === XS.TRANSACTION_START) tx[o.c] = Number(r.body.replace("\0", ""));
          } else if (o.t === XS.TRANSACTION_END) p.send(o.t, z("commit" in o && o.commit ? "T" : "F"), tx[o.c]!);
          else if (o.t === XS.RESET_WATCHES) p.send(o.t, "");
          else p.send(o.t, z("p" in o ? o.p! : "/"), t);
        }
        const got = recount(w);
        for (const d of w.xs.domains.list) {
          assert.equal(d.memory, got.memory.get(d.domid) ?? 0, `memory of domain ${d.domid}`);
          // Node counts are settled at commit: compare only with no transaction open.
          if ([...w.xs.connections].every((c) => c.transactions.size === 0)) assert.equal(d.nbentry, got.nodes.get(d.domid) ?? 0, `nodes of domain ${d.domid}`);
        }
        assert.deepEqual(
          w.logs.filter((l) => l.startsWith("internal error")),
          [],
        );
        // The children lists and the records agree: check_store finds nothing to repair.
        w.logs.length = 0;
        w.xs.checkStore();
        assert.deepEqual(
          w.logs.filter((l) => !l.startsWith("Checking store")),
          [],
        );
      }),
      { numRuns: 300 },
    );
  });
});
