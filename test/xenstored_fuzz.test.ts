// Fuzzer for the project's xenstored: well over 100,000 malformed packets (mutated valid messages,
// random types, wrong lengths, truncated headers, garbage) over a pool of socket connections, some
// of them killed in the middle of a message, while a well-behaved client on its own connection
// checks every answer it gets. At the end the daemon must still run and answer.
//
// Packets come from fast-check in batches (one property run per batch, no shrinking: the daemon's
// state carries over). A failure prints the seed; XS_FUZZ_SEED=<n> runs another seed.

import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { describe, test } from "node:test";
import fc from "fast-check";
import { encodeXsMsg, XS, XSD_SOCKMSG_SIZE } from "../src/abi/xs_wire.ts";
import { toBytes, type XsClient, XsError } from "../src/toolstack/xenstore/xs_client.ts";
import { daemonAlive, daemonFixture, sleep, within } from "./xs_harness.ts";

const SEED = Number(process.env["XS_FUZZ_SEED"] ?? 20260401);
const MIN_PACKETS = 100_000;
const BATCHES = 240;
const POOL = 6;

// ---- what is sent ----

const FUZZ_PATHS = ["/fuzz", "/fuzz/a", "/fuzz/a/b", "/fuzz/c", "fuzzrel", "fuzzrel/x", "@introduceDomain"];

/** Valid messages to start from, with the fuzzers' own paths (never the victim's). */
const TEMPLATES: readonly Uint8Array[] = (() => {
  const m = (type: number, parts: string[] | Uint8Array) => encodeXsMsg(type, 0x1234, 0, parts instanceof Uint8Array ? parts : toBytes(parts));
  const out: Uint8Array[] = [];
  for (const p of FUZZ_PATHS) {
    out.push(m(XS.READ, [p]), m(XS.WRITE, Buffer.from(`${p}\0value`)), m(XS.MKDIR, [p]), m(XS.RM, [p]), m(XS.DIRECTORY, [p]));
    out.push(m(XS.GET_PERMS, [p]), m(XS.SET_PERMS, [p, "b0", "r5"]), m(XS.WATCH, [p, "tok"]), m(XS.UNWATCH, [p, "tok"]));
    out.push(m(XS.DIRECTORY_PART, [p, "0"]));
  }
  out.push(m(XS.TRANSACTION_START, [""]), m(XS.TRANSACTION_END, ["T"]), m(XS.TRANSACTION_END, ["F"]));
  out.push(m(XS.GET_DOMAIN_PATH, ["3"]), m(XS.IS_DOMAIN_INTRODUCED, ["3"]), m(XS.RESET_WATCHES, [""]));
  out.push(m(XS.RELEASE, ["77"]), m(XS.RESUME, ["77"]), m(XS.SET_TARGET, ["77", "78"]), m(XS.CONTROL, ["check"]));
  return out;
})();

type Mutation =
  | { k: "flip"; at: number; bit: number }
  | { k: "set"; at: number; v: number }
  | { k: "insert"; at: number; v: number }
  | { k: "delete"; at: number }
  | { k: "truncate"; at: number }
  | { k: "type"; v: number }
  | { k: "tx"; v: number }
  | { k: "len"; d: number };

const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ k: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ k: fc.constant("set" as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ k: fc.constant("insert" as const), at: fc.nat(), v: fc.constantFrom(0, 0x2f, 0x40, 0x20, 0x2e, 0xff) }),
  fc.record({ k: fc.constant("delete" as const), at: fc.nat() }),
  fc.record({ k: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ k: fc.constant("type" as const), v: fc.oneof(fc.integer({ min: 0, max: 30 }), fc.nat()) }),
  fc.record({ k: fc.constant("tx" as const), v: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.nat()) }),
  fc.record({ k: fc.constant("len" as const), d: fc.integer({ min: -8, max: 8 }) }),
);

/** A packet: bytes to write, and whether to kill the connection after (part of) them. */
interface Packet {
  kind: "mutated" | "type" | "biglen" | "header" | "garbage" | "killed";
  bytes: Uint8Array;
  /** Write only this many bytes, then kill the connection. */
  killAfter?: number;
}

function mutate(tpl: Uint8Array, muts: readonly Mutation[]): Uint8Array {
  const hdr = Buffer.from(tpl.subarray(0, XSD_SOCKMSG_SIZE));
  let body = Array.from(tpl.subarray(XSD_SOCKMSG_SIZE));
  let lenDelta = 0;
  for (const m of muts) {
    switch (m.k) {
      case "flip":
        if (body.length) body[m.at % body.length]! ^= 1 << m.bit;
        break;
      case "set":
        if (body.length) body[m.at % body.length] = m.v;
        break;
      case "insert":
        body.splice(m.at % (body.length + 1), 0, m.v);
        break;
      case "delete":
        if (body.length) body.splice(m.at % body.length, 1);
        break;
      case "truncate":
        body = body.slice(0, m.at % (body.length + 1));
        break;
      case "type":
        hdr.writeUInt32LE(m.v >>> 0, 0);
        break;
      case "tx":
        hdr.writeUInt32LE(m.v >>> 0, 8);
        break;
      case "len":
        lenDelta += m.d;
        break;
    }
  }
  // The length field follows the payload unless a "len" mutation puts it off (then the
  // daemon's framing is off too: it waits for bytes, or reads the next packet as payload).
  hdr.writeUInt32LE(Math.max(0, body.length + lenDelta) >>> 0, 12);
  return Buffer.concat([hdr, Buffer.from(body)]);
}

const arbPacket: fc.Arbitrary<Packet> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .tuple(fc.nat({ max: TEMPLATES.length - 1 }), fc.array(arbMutation, { minLength: 1, maxLength: 3 }))
      .map(([i, muts]): Packet => ({ kind: "mutated", bytes: mutate(TEMPLATES[i]!, muts) })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.oneof(fc.integer({ min: 0, max: 40 }), fc.nat()), fc.nat(), fc.uint8Array({ maxLength: 48 }))
      .map(([type, tx, payload]): Packet => ({ kind: "type", bytes: encodeXsMsg(type, 99, tx, payload) })),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer({ min: 4097, max: 0xffffffff }), fc.uint8Array({ maxLength: 32 })).map(([len, tail]): Packet => {
      const b = Buffer.from(encodeXsMsg(XS.WRITE, 5, 0, tail));
      b.writeUInt32LE(len >>> 0, 12);
      return { kind: "biglen", bytes: b };
    }),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.nat({ max: TEMPLATES.length - 1 }), fc.integer({ min: 1, max: XSD_SOCKMSG_SIZE - 1 }))
      .map(([i, cut]): Packet => ({ kind: "header", bytes: TEMPLATES[i]!, killAfter: cut })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.nat({ max: TEMPLATES.length - 1 }), fc.nat())
      .map(([i, at]): Packet => ({ kind: "killed", bytes: TEMPLATES[i]!, killAfter: XSD_SOCKMSG_SIZE + (at % Math.max(1, TEMPLATES[i]!.length - XSD_SOCKMSG_SIZE)) })),
  },
  { weight: 2, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 200 }).map((bytes): Packet => ({ kind: "garbage", bytes })) },
);

// ---- the connections that send it ----

class FuzzConn {
  dead = false;
  received = 0;
  constructor(readonly sock: Socket) {
    sock.on("data", (b: Buffer) => {
      this.received += b.length;
    });
    sock.on("close", () => {
      this.dead = true;
    });
    sock.on("error", () => {
      this.dead = true;
    });
  }

  static async open(path: string): Promise<FuzzConn> {
    for (let delay = 1; ; delay = Math.min(2 * delay, 50)) {
      try {
        return new FuzzConn(
          await new Promise<Socket>((resolve, reject) => {
            const s = connect(path);
            s.once("error", reject);
            s.once("connect", () => {
              s.off("error", reject);
              resolve(s);
            });
          }),
        );
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
        await sleep(delay);
      }
    }
  }

  /** Waits until what was written has gone to the daemon; a daemon that stops reading gets the connection killed. */
  async drain(ms: number): Promise<void> {
    if (this.dead || this.sock.writableLength === 0) return;
    const ok = await Promise.race([new Promise<boolean>((r) => this.sock.once("drain", () => r(true))), sleep(ms).then(() => false)]);
    if (!ok) this.kill();
  }

  kill(): void {
    this.dead = true;
    this.sock.destroy();
  }
}

// ---- the well-behaved client ----

interface VictimStats {
  ops: number;
  error: Error | undefined;
}

/** Writes, reads back, lists, commits transactions and checks its watch events until `stop()` is true. */
async function victim(c: XsClient, stop: () => boolean, stats: VictimStats): Promise<void> {
  const seen = new Set<string>();
  c.onWatch((path, token) => {
    if (token === "victim") seen.add(path);
  });
  const op = async <T>(what: string, p: Promise<T>): Promise<T> => {
    const r = await within(5000, `victim: ${what}`, p);
    stats.ops++;
    return r;
  };
  try {
    await op("watch", c.watch("/fuzzvictim", "victim"));
    const keys = new Map<string, string>();
    for (let i = 0; !stop(); i++) {
      const key = `/fuzzvictim/k${i % 40}`;
      const value = `value-${i}`;
      seen.delete(key);
      await op("write", c.write(key, value));
      // The event is queued before the write's reply.
      assert.ok(seen.has(key), `victim: no watch event for its write of ${key}`);
      keys.set(key, value);
      assert.equal(await op("read", c.read(key)), value, `victim: read back ${key}`);
      if (i % 10 === 0) {
        const names = (await op("directory", c.directory("/fuzzvictim"))).sort();
        assert.deepEqual(names, [...keys.keys()].map((k) => k.slice("/fuzzvictim/".length)).sort(), "victim: directory");
        const tx = await op("transaction start", c.transactionStart());
        await op("write in transaction", c.write("/fuzzvictim/tx", `t${i}`, tx));
        assert.equal(await op("read in transaction", c.read("/fuzzvictim/tx", tx)), `t${i}`);
        await op("commit", c.transactionEnd(tx, true));
        assert.equal(await op("read after commit", c.read("/fuzzvictim/tx")), `t${i}`);
        keys.set("/fuzzvictim/tx", `t${i}`);
      }
      if (i % 25 === 0) {
        const err = await c.read("/fuzzvictim/missing").then(
          () => undefined,
          (e: unknown) => e,
        );
        stats.ops++;
        assert.ok(err instanceof XsError && err.code === "ENOENT", `victim: reading a missing node gave ${String(err)}`);
      }
    }
  } catch (e) {
    stats.error = e as Error;
  }
}

// ---------------------------------------------------------------------------------------------

describe("xenstored fuzzer (the project's daemon)", () => {
  const fx = daemonFixture("ours");

  test(`>= ${MIN_PACKETS} malformed packets on ${POOL} connections beside a checking client (seed ${SEED})`, async (t) => {
    const socket = fx.daemon.socket;
    const victimClient = await fx.connect();
    const stats: VictimStats = { ops: 0, error: undefined };
    let done = false;
    const victimRun = victim(victimClient, () => done || stats.error !== undefined, stats);

    const pool: FuzzConn[] = [];
    for (let i = 0; i < POOL; i++) pool.push(await FuzzConn.open(socket));
    let pending = 0;
    const counts = { packets: 0, malformed: 0, lost: 0, bytes: 0, replyBytes: 0, reconnects: 0, mutated: 0, type: 0, biglen: 0, header: 0, killed: 0, garbage: 0 };
    const templates = new Set(TEMPLATES.map((b) => Buffer.from(b).toString("latin1")));
    let pick = 0;
    const t0 = Date.now();
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(arbPacket, { minLength: 400, maxLength: 600, size: "max" }), async (batch) => {
          for (const p of batch) {
            const slot = pick++ % POOL;
            if (pool[slot]!.dead) {
              counts.replyBytes += pool[slot]!.received;
              pool[slot]!.kill();
              pool[slot] = await FuzzConn.open(socket);
              counts.reconnects++;
            }
            const conn = pool[slot]!;
            const bytes = p.killAfter === undefined ? p.bytes : p.bytes.subarray(0, p.killAfter);
            const malformed = p.killAfter !== undefined || !templates.has(Buffer.from(p.bytes).toString("latin1"));
            // Counted once the kernel took the bytes: a write to a connection that the daemon
            // has just closed fails, and that packet did not reach it.
            pending++;
            conn.sock.write(bytes, (err) => {
              pending--;
              if (err) {
                counts.lost++;
                return;
              }
              counts.packets++;
              counts.bytes += bytes.length;
              counts[p.kind]++;
              if (malformed) counts.malformed++;
            });
            // Past a length over 4096 the daemon closes the connection: do not send into it.
            if (p.killAfter !== undefined || p.kind === "biglen") {
              await sleep(0);
              conn.kill();
            }
          }
          await Promise.all(pool.map((c) => c.drain(5000)));
          // Let the daemon and the victim run between batches.
          await sleep(1);
          if (stats.error) throw stats.error;
          assert.ok(daemonAlive(fx.daemon), "the daemon died");
        }),
        {
          seed: SEED,
          numRuns: BATCHES,
          endOnFailure: true,
          // A batch is hundreds of packets: report the error and how to replay, not the batch.
          reporter: (out) => {
            if (!out.failed) return;
            const why = out.errorInstance instanceof Error ? (out.errorInstance.stack ?? out.errorInstance.message) : String(out.errorInstance);
            throw new Error(`batch ${out.numRuns} of seed ${SEED} failed (path ${out.counterexamplePath ?? "?"}): ${why}\nreplay: XS_FUZZ_SEED=${SEED} node --import tsx --test test/xenstored_fuzz.test.ts`);
          },
        },
      );
    } finally {
      done = true;
      await victimRun;
      for (let i = 0; pending > 0 && i < 500; i++) await sleep(10);
      for (const c of pool) c.kill();
    }
    for (const c of pool) counts.replyBytes += c.received;
    const secs = (Date.now() - t0) / 1000;
    t.diagnostic(
      `${counts.packets} packets delivered (${counts.malformed} malformed, ${(counts.bytes / 1048576).toFixed(1)} MiB; ${counts.lost} more were written after the daemon closed the connection) in ${secs.toFixed(1)} s: ` +
        `${counts.mutated} mutated valid, ${counts.type} random types, ${counts.biglen} lengths > 4096, ${counts.header} truncated headers then killed, ` +
        `${counts.killed} killed mid-message, ${counts.garbage} garbage; ${counts.reconnects} reconnections; ` +
        `${(counts.replyBytes / 1048576).toFixed(1)} MiB of replies to the fuzzers; checking client: ${stats.ops} requests answered correctly`,
    );
    if (stats.error) throw stats.error;
    assert.ok(counts.malformed >= MIN_PACKETS, `only ${counts.malformed} malformed packets sent`);
    assert.ok(stats.ops > 1000, `the checking client got only ${stats.ops} answers`);
    // Still alive, and a new connection works.
    await sleep(200);
    assert.ok(daemonAlive(fx.daemon), "the daemon died");
    const fresh = await fx.connect();
    await fresh.write("/fuzzvictim/final", "ok");
    assert.equal(await fresh.read("/fuzzvictim/final"), "ok");
    assert.equal(await victimClient.read("/fuzzvictim/final"), "ok");
  });
});
