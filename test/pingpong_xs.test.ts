// The ping-pong that connects through xenstore as split drivers do (src/guest/pingpong_xs.ts and
// the device plumbing in src/toolstack/libxl/host.ts), in process on one host: the toolstack
// writes the device pair, the two kernels hand-shake through their `state` nodes and bounce one
// token; a cancelled suspend keeps the channel; a save destroys the frontend (its directories
// go, the backend lets its channel go) and a restore under a new domid connects again, while the
// backend's counters carry on. The event-channel auditor must find nothing at each stage.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { newHost, restore, run, runUntil, save, type TestHost } from "./sr_harness.ts";
import { XENBUS_STATE, XS, xsStringList, xsStrings } from "../src/abi/xs_wire.ts";
import { PingPongBack, PingPongFront } from "../src/guest/pingpong_xs.ts";
import { auditEvtchn } from "../src/harness/audit.ts";
import { parseGuestConfig } from "../src/toolstack/libxl/guest_cfg.ts";
import { type HostDomain, HostError } from "../src/toolstack/libxl/host.ts";

const CONNECTED = String(XENBUS_STATE.Connected);

interface Variant {
  seed: number;
  width: 32 | 64;
  abi: "fifo" | "2l";
}

function cfgText(name: string, v: Variant, workload: string): string {
  return [
    `name = "${name}"`,
    "memory = 16",
    "vcpus = 2",
    `guest_width = ${v.width}`,
    `evtchn_abi = "${v.abi}"`,
    `workload = "${workload}"`,
    `on_crash = "preserve"`,
    "",
  ].join("\n");
}

function create(th: TestHost, name: string, v: Variant, workload: string): HostDomain {
  return th.host.create(parseGuestConfig(cfgText(name, v, workload), `${name}.cfg`));
}

function front(hd: HostDomain): PingPongFront {
  const w = hd.kernel.workloads.find((x) => x instanceof PingPongFront);
  assert.ok(w, `d${hd.domid} has no pingpong frontend`);
  return w;
}

function back(hd: HostDomain): PingPongBack {
  const w = hd.kernel.workloads.find((x) => x instanceof PingPongBack);
  assert.ok(w, `d${hd.domid} has no pingpong backend`);
  return w;
}

function perms(th: TestHost, path: string): string[] {
  return xsStringList(th.host.xs.call(XS.GET_PERMS, xsStrings(path)));
}

function audit(th: TestHost, ...doms: HostDomain[]): void {
  const found = auditEvtchn(th.hv, new Map(doms.map((d) => [d.domid, d.kernel])));
  assert.deepEqual(found, [], "auditEvtchn");
  for (const d of doms) assert.equal(th.hv.domains.get(d.domid)?.state, "running", `d${d.domid}: ${String(th.hv.lastGuestError)}`);
}

/**
 * One token: every token the frontend sent reached the backend but the one in flight, and the
 * backend's echoes reached the frontend but the one in flight and one per save (the token in
 * flight to a domain that is saved goes with it).
 */
function oneToken(f: PingPongFront, b: PingPongBack, saves: number): void {
  const up = f.stats.sends - b.stats.handled;
  const down = b.stats.sends - f.stats.handled;
  assert.ok(up === 0 || up === 1, `frontend sent ${f.stats.sends}, backend handled ${b.stats.handled}`);
  assert.ok(down >= 0 && down <= 1 + saves, `backend sent ${b.stats.sends}, frontend handled ${f.stats.handled} (${saves} saves)`);
}

/** Runs until both ends are connected and `n` more tokens went each way. */
function flows(th: TestHost, fe: HostDomain, be: HostDomain, n = 200): void {
  // A kernel that has not started yet has no workloads.
  const f = () => fe.kernel.workloads.find((x) => x instanceof PingPongFront);
  const b = () => be.kernel.workloads.find((x) => x instanceof PingPongBack);
  const from = f()?.stats.handled ?? 0;
  const fromBack = b()?.stats.handled ?? 0;
  const ok = runUntil(th, 300, () => f()?.phase === "connected" && f()!.stats.handled >= from + n && (b()?.stats.handled ?? 0) >= fromBack + n);
  const log = [...fe.kernel.log, ...be.kernel.log].filter((l) => l.includes("pingpong")).join("\n");
  assert.ok(ok, `no ${n} tokens within 300 ms: ${JSON.stringify(f()?.stats)} ${JSON.stringify(b()?.stats)}\n${log}`);
}

/** `xl save`: suspend, write the image, destroy. */
/** The device pair as libxl writes it, both ends connected on the frontend's current port. */
function checkConnectedLayout(th: TestHost, fe: HostDomain, be: HostDomain): void {
  const F = fe.domid;
  const B = be.domid;
  const fdir = `/local/domain/${F}/device/pingpong/0`;
  const bdir = `/local/domain/${B}/backend/pingpong/${F}/0`;
  const xs = th.host.xs;
  assert.equal(xs.read(`${fdir}/backend`), bdir);
  assert.equal(xs.read(`${fdir}/backend-id`), String(B));
  assert.equal(xs.read(`${fdir}/state`), CONNECTED);
  assert.equal(xs.read(`${fdir}/event-channel`), String(front(fe).port));
  assert.equal(xs.read(`${bdir}/frontend`), fdir);
  assert.equal(xs.read(`${bdir}/frontend-id`), String(F));
  assert.equal(xs.read(`${bdir}/state`), CONNECTED);
  assert.deepEqual(perms(th, fdir), [`n${F}`, `r${B}`]);
  assert.deepEqual(perms(th, `${fdir}/event-channel`), [`n${F}`, `r${B}`]);
  assert.deepEqual(perms(th, bdir), [`n${B}`, `r${F}`]);
  assert.equal(xs.read(`/libxl/${F}/device/pingpong/0/backend`), bdir);
  const conn = back(be).conns.get(`${F}/0`);
  assert.ok(conn, `the backend has no connection for d${F}: ${[...back(be).conns.keys()]}`);
  assert.equal(conn.remotePort, front(fe).port);
}

const VARIANTS: Variant[] = [
  { seed: 1, width: 64, abi: "fifo" },
  { seed: 2, width: 32, abi: "fifo" },
  { seed: 3, width: 64, abi: "2l" },
];

describe("pingpong_with: a split-driver pair through xenstore", () => {
  for (const v of VARIANTS) {
    test(`seed ${v.seed} (${v.width}-bit, ${v.abi}): connects, survives a cancelled suspend and a save and restore`, () => {
      const th = newHost(v.seed);
      const be = create(th, "back", v, "pingpong_backend=1");
      let fe = create(th, "front", v, "pingpong_with=back");
      flows(th, fe, be);
      checkConnectedLayout(th, fe, be);
      assert.equal(front(fe).connects, 1);
      oneToken(front(fe), back(be), 0);
      audit(th, be, fe);

      // A cancelled suspend (xl save -c): the same domain, the same channel.
      const port = front(fe).port;
      th.host.requestSuspend(fe.domid);
      assert.ok(
        runUntil(th, 2000, () => th.host.suspended(fe.domid)),
        "the frontend did not suspend",
      );
      th.host.resumeSuspended(fe.domid);
      flows(th, fe, be);
      assert.equal(front(fe).port, port);
      assert.equal(front(fe).connects, 1);
      assert.equal(back(be).connects, 1);
      checkConnectedLayout(th, fe, be);
      oneToken(front(fe), back(be), 0);
      audit(th, be, fe);

      // xl save: the domain goes, and with it both directories; the backend lets its channel go.
      const oldDomid = fe.domid;
      const image = save(th, fe);
      const backHandled = back(be).stats.handled;
      assert.ok(
        runUntil(th, 100, () => back(be).conns.size === 0),
        "the backend kept its connection",
      );
      assert.equal(back(be).disconnects, 1);
      assert.equal(th.host.xs.tryRead(`/local/domain/${be.domid}/backend`), undefined, "the backend directory stayed");
      assert.equal(th.host.xs.tryRead(`/libxl/${oldDomid}`), undefined);
      audit(th, be);

      // xl restore on the same host: a new domid, a new channel, the same counters going on.
      fe = restore(th, image);
      assert.notEqual(fe.domid, oldDomid);
      flows(th, fe, be);
      checkConnectedLayout(th, fe, be);
      assert.equal(front(fe).reconnects, 1);
      assert.equal(back(be).connects, 2);
      assert.ok(back(be).stats.handled > backHandled + 200, "the backend's counters did not grow");
      assert.ok(fe.kernel.log.some((l) => l.includes("pingpong: resumed in a new domain")));
      oneToken(front(fe), back(be), 1);
      audit(th, be, fe);
    });
  }

  test("a restore on another host connects to that host's backend (another backend-id)", () => {
    const v: Variant = { seed: 4, width: 64, abi: "fifo" };
    const a = newHost(4);
    const beA = create(a, "back", v, "pingpong_backend=1");
    const fe = create(a, "front", v, "pingpong_with=back");
    flows(a, fe, beA);
    const image = save(a, fe);

    const b = newHost(5);
    // Something first, so that the backend and the frontend get other domids than on host A.
    create(b, "other", v, "ipi_pingpong=10");
    const beB = create(b, "back", v, "pingpong_backend=1");
    assert.notEqual(beB.domid, beA.domid);
    const fe2 = restore(b, image);
    flows(b, fe2, beB);
    checkConnectedLayout(b, fe2, beB);
    assert.equal(front(fe2).backendId, beB.domid);
    assert.equal(front(fe2).otherendWatch, `/local/domain/${beB.domid}/backend/pingpong/${fe2.domid}/0/state`);
    assert.equal(front(fe2).reconnects, 1);
    audit(b, beB, fe2);
  });

  test("a frontend whose backend does not exist is not created", () => {
    const th = newHost(6);
    const v: Variant = { seed: 6, width: 64, abi: "fifo" };
    assert.throws(() => create(th, "front", v, "pingpong_with=nosuch"), (e) => e instanceof HostError && /no domain named nosuch/.test(e.message));
    assert.deepEqual(th.host.domids(), [0]);
    assert.throws(() => parseGuestConfig(cfgText("f", v, "pingpong_with=123"), "f.cfg"), /pingpong_with takes a domain name/);
  });

  test("the backend gives up a frontend that is destroyed and serves a new one", () => {
    const v: Variant = { seed: 7, width: 64, abi: "fifo" };
    const th = newHost(7);
    const be = create(th, "back", v, "pingpong_backend=1");
    const f1 = create(th, "f1", v, "pingpong_with=back");
    const f2 = create(th, "f2", v, "pingpong_with=back");
    flows(th, f1, be);
    flows(th, f2, be);
    assert.equal(back(be).conns.size, 2);
    th.host.destroy(f1.domid);
    assert.ok(
      runUntil(th, 100, () => back(be).conns.size === 1),
      "the backend kept the destroyed frontend",
    );
    // The other frontend's directory keeps the backend's parents.
    assert.equal(th.host.xs.tryRead(`/local/domain/${be.domid}/backend/pingpong/${f2.domid}/0/state`), CONNECTED);
    flows(th, f2, be);
    audit(th, be, f2);

    // The backend goes: the frontend closes its channel and says Closed.
    th.host.destroy(be.domid);
    assert.ok(
      runUntil(th, 100, () => front(f2).irq < 0),
      "the frontend kept its channel",
    );
    assert.equal(front(f2).phase, "wait-backend");
    assert.equal(th.host.xs.read(`/local/domain/${f2.domid}/device/pingpong/0/state`), String(XENBUS_STATE.Closed));
    run(th, 20);
    audit(th, f2);
  });
});
