// An inter-domain ping-pong that connects the way Linux's split drivers do (xenbus_probe.c,
// xenbus_client.c and a front/back driver pair such as blkfront/blkback), so that it survives a
// save and restore: the toolstack writes the device's two directories, the frontend publishes a
// channel it allocated, the backend binds to it, and after a restore into a new domain the
// frontend publishes a new channel and the backend binds again.
//
//   pingpong_with=NAME   frontend: device/pingpong/0, whose backend is in domain NAME
//                        (the toolstack reads NAME; the kernel reads backend-id from xenstore)
//   pingpong_backend=1   backend: every frontend under backend/pingpong/<domid>/<dev>
//
// The handshake, in the `state` nodes (enum xenbus_state):
//   toolstack   both ends Initialising (1)
//   backend     sees the new directory: InitWait (2); watches the frontend's state
//   frontend    sees InitWait: EVTCHNOP_alloc_unbound for backend-id, event-channel, Initialised (3)
//   backend     sees Initialised: EVTCHNOP_bind_interdomain to frontend-id:event-channel, Connected (4)
//   frontend    sees Connected: Connected (4), then sends the first token
// Each end echoes every event it receives, so one token goes back and forth for ever.
//
// A xenstore conversation is a chain of replies (closures), which xenbus lets a suspend wait
// for; everything else here is plain data, and watch and irq handlers are found by name.

import type { GuestCpu } from "../abi/cpu.ts";
import { DOMID_SELF } from "../abi/xen.ts";
import { XENBUS_STATE as XB } from "../abi/xs_wire.ts";
import type { Workload, XenLinux } from "./kernel.ts";
import { type KstateEnv, registerKernelClass } from "./kstate.ts";
import { XBT_NIL, type XenBus, type XsWatcher } from "./xenbus.ts";

/** The frontend's device directory, relative to the domain's home. */
export const PINGPONG_FRONT_DIR = "device/pingpong/0";
/** Where a backend finds its frontends, relative to its home: backend/pingpong/<domid>/<dev>. */
export const PINGPONG_BACK_DIR = "backend/pingpong";

const FRONT_TOKEN = "pingpong-front";
const FRONT_OTHEREND_TOKEN = "pingpong-front-otherend";
const BACK_TOKEN = "pingpong-back";

/** A state node's value: a number, or -1 when the node is missing or not a state. */
function stateOf(err: string | undefined, text: string): number {
  return err || !/^\d+$/.test(text) ? -1 : Number(text);
}

/** A port or domid as xenstore holds it (decimal), or -1. */
function uintOf(err: string | undefined, text: string): number {
  return err || !/^\d+$/.test(text) ? -1 : Number(text);
}

/**
 * One xenstore conversation at a time per driver: a watch event during one asks for another scan
 * after it (xenbus's otherend_changed runs from one xenwatch thread, so events do not overlap).
 */
abstract class XsDriver implements XsWatcher {
  protected busy = false;
  protected again = false;

  constructor(protected readonly k: XenLinux) {}

  protected get xs(): XenBus {
    return this.k.xenbus!;
  }

  xsWatchEvent(cpu: GuestCpu): void {
    this.kick(cpu);
  }

  protected kick(cpu: GuestCpu): void {
    if (!this.k.xenbus) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    this.scan(cpu);
  }

  /** Ends a scan; the next one starts if an event came meanwhile. */
  protected finish(cpu: GuestCpu): void {
    this.busy = false;
    if (this.again) {
      this.again = false;
      this.kick(cpu);
    }
  }

  /** Reads what the driver depends on and acts; ends with finish(). */
  protected abstract scan(cpu: GuestCpu): void;

  /** xenbus_switch_state: written only when it changes, so that a scan of our own write does nothing. */
  protected writeState(cpu: GuestCpu, dir: string, state: number, done: (cpu: GuestCpu) => void): void {
    this.xs.write(cpu, XBT_NIL, `${dir}/state`, String(state), (c, err) => {
      if (err) this.k.printk(c, `pingpong: writing ${dir}/state = ${state} failed: ${err}`);
      done(c);
    });
  }
}

export type FrontPhase = "wait-backend" | "published" | "connected" | "gone";

/** The frontend: allocates the channel, publishes it, starts the ping-pong once the backend is connected. */
export class PingPongFront extends XsDriver implements Workload {
  readonly name = "pingpong_front";
  readonly stats = { sends: 0, handled: 0 };
  phase: FrontPhase = "wait-backend";
  /** Connections made; every one after the first is a reconnect. */
  connects = 0;
  reconnects = 0;
  /** The backend's directory and domain, as our `backend` and `backend-id` nodes say. */
  backendPath = "";
  backendId = -1;
  /** The backend's state node we watch ("" for none). */
  otherendWatch = "";
  irq = -1;
  port = 0;

  constructor(k: XenLinux) {
    super(k);
    this.wire(k);
  }

  /** The irq handler by name (again after a restore: the registry is not state). */
  private wire(k: XenLinux): void {
    k.events.registerHandler("pingpong_front", (cpu) => {
      this.stats.handled++;
      this.send(cpu);
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  start(k: XenLinux, cpu: GuestCpu): void {
    if (!k.xenbus) {
      k.printk(cpu, "pingpong: no xenbus, no device");
      this.phase = "gone";
      return;
    }
    // The watch's first event starts the first scan.
    k.xenbus.watch(cpu, PINGPONG_FRONT_DIR, FRONT_TOKEN, this, (c, err) => {
      if (err) k.printk(c, `pingpong: cannot watch ${PINGPONG_FRONT_DIR}: ${err}`);
    });
  }

  /**
   * In a new domain the channel went with the old one (xen_irq_resume left its irq without a
   * port): free the irq and connect again; the backend may be another one (another host).
   * xenbus has already registered our watches again, and nothing was in flight at the save.
   */
  resume(k: XenLinux, cpu: GuestCpu): void {
    if (this.irq >= 0) k.events.unbindFromIrqhandler(cpu, this.irq);
    this.irq = -1;
    this.port = 0;
    this.phase = "wait-backend";
    this.backendPath = "";
    this.backendId = -1;
    this.busy = false;
    this.again = false;
    k.printk(cpu, "pingpong: resumed in a new domain, connecting again");
    this.kick(cpu);
  }

  step(): boolean {
    return false;
  }

  private send(cpu: GuestCpu): void {
    if (this.irq < 0) return;
    this.stats.sends++;
    this.k.events.notifyRemoteViaIrq(cpu, this.irq);
  }

  protected scan(cpu: GuestCpu): void {
    const dir = PINGPONG_FRONT_DIR;
    this.xs.read(cpu, XBT_NIL, `${dir}/backend`, (c, err, backend) => {
      if (err) {
        // The toolstack removed the device.
        if (this.phase !== "gone") this.k.printk(c, `pingpong: ${dir} is gone (${err})`);
        this.teardown(c);
        this.phase = "gone";
        this.finish(c);
        return;
      }
      this.xs.read(c, XBT_NIL, `${dir}/backend-id`, (c2, err2, idText) => {
        const id = uintOf(err2, idText);
        if (id < 0 || !backend.startsWith("/")) {
          this.k.printk(c2, `pingpong: ${dir} names no usable backend (${backend}, ${err2 ?? idText})`);
          this.finish(c2);
          return;
        }
        if (backend !== this.backendPath || id !== this.backendId) {
          // Another other end: what we had was with the old one.
          this.teardown(c2);
          this.phase = "wait-backend";
          this.backendPath = backend;
          this.backendId = id;
        }
        this.watchOtherend(c2, `${backend}/state`);
        this.xs.read(c2, XBT_NIL, `${backend}/state`, (c3, err3, st) => this.act(c3, stateOf(err3, st)));
      });
    });
  }

  /** watch_otherend: the backend's state node, moved when the backend did. */
  private watchOtherend(cpu: GuestCpu, path: string): void {
    if (this.otherendWatch === path) return;
    const log = (what: string) => (c: GuestCpu, err: string | undefined) => {
      if (err) this.k.printk(c, `pingpong: ${what}: ${err}`);
    };
    if (this.otherendWatch !== "") this.xs.unwatch(cpu, this.otherendWatch, FRONT_OTHEREND_TOKEN, log(`unwatch ${this.otherendWatch}`));
    this.otherendWatch = path;
    this.xs.watch(cpu, path, FRONT_OTHEREND_TOKEN, this, log(`watch ${path}`));
  }

  /** What the backend's state asks of us (backend_changed). */
  private act(cpu: GuestCpu, bstate: number): void {
    const dir = PINGPONG_FRONT_DIR;
    if (this.phase === "gone") this.phase = "wait-backend";
    if (bstate < 0 || bstate >= XB.Closing) {
      // The backend went (its directory removed) or is closing: our channel is of no use.
      if (this.phase === "wait-backend") {
        this.finish(cpu);
        return;
      }
      this.k.printk(cpu, `pingpong: backend ${this.backendPath} ${bstate < 0 ? "is gone" : "is closing"}`);
      this.teardown(cpu);
      this.phase = "wait-backend";
      this.writeState(cpu, dir, XB.Closed, (c) => this.finish(c));
      return;
    }
    if (this.phase === "connected" && bstate === XB.InitWait) {
      // The backend let our channel go (it started over): a new one, as after a restore.
      this.k.printk(cpu, `pingpong: backend ${this.backendPath} started over`);
      this.teardown(cpu);
      this.phase = "wait-backend";
    }
    if (this.phase === "wait-backend" && bstate === XB.InitWait) {
      this.publish(cpu);
      return;
    }
    if (this.phase === "published" && bstate === XB.Connected) {
      this.writeState(cpu, dir, XB.Connected, (c) => {
        this.phase = "connected";
        if (this.connects > 0) this.reconnects++;
        this.connects++;
        this.k.printk(c, `pingpong: connected to ${this.backendPath} (port ${this.port}, backend d${this.backendId})`);
        // The first token: the backend sends nothing of its own.
        this.send(c);
        this.finish(c);
      });
      return;
    }
    this.finish(cpu);
  }

  /** talk_to_backend: a channel for the backend, and event-channel with our state in one transaction. */
  private publish(cpu: GuestCpu): void {
    if (this.irq < 0) {
      const port = this.k.hc.allocUnbound(cpu, DOMID_SELF, this.backendId);
      if (port < 0) {
        this.k.printk(cpu, `pingpong: EVTCHNOP_alloc_unbound for d${this.backendId} failed: ${port}`);
        this.finish(cpu);
        return;
      }
      const irq = this.k.events.bindEvtchnToIrqhandler(cpu, port, "pingpong_front", 0);
      if (irq < 0) {
        this.k.hc.evtchnClose(cpu, port);
        this.k.printk(cpu, `pingpong: cannot bind port ${port}: ${irq}`);
        this.finish(cpu);
        return;
      }
      this.irq = irq;
      this.port = port;
    }
    const dir = PINGPONG_FRONT_DIR;
    this.xs.transactionStart(cpu, (c, err, tx) => {
      if (err) {
        this.k.printk(c, `pingpong: starting a transaction: ${err}`);
        this.finish(c);
        return;
      }
      this.xs.write(c, tx, `${dir}/event-channel`, String(this.port), (c2, werr) => {
        this.xs.write(c2, tx, `${dir}/state`, String(XB.Initialised), (c3, werr2) => {
          const failed = werr ?? werr2;
          this.xs.transactionEnd(c3, tx, failed !== undefined, (c4, eerr) => {
            if (eerr === "EAGAIN") {
              this.publish(c4);
              return;
            }
            if (failed || eerr) this.k.printk(c4, `pingpong: publishing event-channel: ${failed ?? eerr}`);
            else this.phase = "published";
            this.finish(c4);
          });
        });
      });
    });
  }

  /** Our channel closed (a port that went with an old domain is only forgotten). */
  private teardown(cpu: GuestCpu): void {
    if (this.irq >= 0) this.k.events.unbindFromIrqhandler(cpu, this.irq);
    this.irq = -1;
    this.port = 0;
  }
}

/** One frontend a backend serves. */
export interface BackConn {
  /** Its directory under backend/pingpong: "<frontend domid>/<dev>". */
  key: string;
  frontendPath: string;
  frontendId: number;
  /** The frontend's port we are bound to (0: none). */
  remotePort: number;
  irq: number;
  /** The irq's dev_id. */
  dev: number;
  sends: number;
  handled: number;
}

/**
 * The backend: serves every frontend the toolstack puts under backend/pingpong. A frontend whose
 * directory goes (its domain was destroyed or saved) loses its channel; one that comes back in a
 * new domain has a new directory (a new domid) and gets a new channel.
 */
export class PingPongBack extends XsDriver implements Workload {
  readonly name = "pingpong_back";
  readonly conns = new Map<string, BackConn>();
  /** Over every frontend, those gone included. */
  readonly stats = { sends: 0, handled: 0 };
  connects = 0;
  disconnects = 0;
  private nextDev = 0;

  constructor(k: XenLinux) {
    super(k);
    this.wire(k);
  }

  private wire(k: XenLinux): void {
    k.events.registerHandler("pingpong_back", (cpu, _irq, dev) => {
      for (const conn of this.conns.values()) {
        if (conn.dev !== dev) continue;
        conn.handled++;
        this.stats.handled++;
        if (conn.irq >= 0) {
          conn.sends++;
          this.stats.sends++;
          k.events.notifyRemoteViaIrq(cpu, conn.irq);
        }
        return;
      }
    });
  }

  kstateRevive(env: KstateEnv): void {
    this.wire(env.kernel);
  }

  start(k: XenLinux, cpu: GuestCpu): void {
    if (!k.xenbus) {
      k.printk(cpu, "pingpong: no xenbus, no backend");
      return;
    }
    k.xenbus.watch(cpu, PINGPONG_BACK_DIR, BACK_TOKEN, this, (c, err) => {
      if (err) k.printk(c, `pingpong: cannot watch ${PINGPONG_BACK_DIR}: ${err}`);
    });
  }

  /**
   * A backend restored into a new domain has lost every channel, and its frontends' ports were
   * closed with the old domain: it starts over from what xenstore says.
   */
  resume(_k: XenLinux, cpu: GuestCpu): void {
    for (const conn of [...this.conns.values()]) this.drop(cpu, conn);
    this.busy = false;
    this.again = false;
    this.kick(cpu);
  }

  step(): boolean {
    return false;
  }

  protected scan(cpu: GuestCpu): void {
    this.xs.directory(cpu, XBT_NIL, PINGPONG_BACK_DIR, (c, _err, fronts) => {
      const keys: string[] = [];
      const listDevs = (c2: GuestCpu, i: number) => {
        if (i >= fronts.length) {
          this.visitAll(c2, keys);
          return;
        }
        this.xs.directory(c2, XBT_NIL, `${PINGPONG_BACK_DIR}/${fronts[i]}`, (c3, _e, devs) => {
          for (const d of devs) keys.push(`${fronts[i]}/${d}`);
          listDevs(c3, i + 1);
        });
      };
      listDevs(c, 0);
    });
  }

  private visitAll(cpu: GuestCpu, keys: string[]): void {
    for (const conn of [...this.conns.values()]) if (!keys.includes(conn.key)) this.drop(cpu, conn);
    const next = (c: GuestCpu, i: number) => {
      if (i >= keys.length) this.finish(c);
      else this.visit(c, keys[i]!, (c2) => next(c2, i + 1));
    };
    next(cpu, 0);
  }

  /** frontend_changed for one device: bind to what the frontend published, and say where we are. */
  private visit(cpu: GuestCpu, key: string, done: (cpu: GuestCpu) => void): void {
    const dir = `${PINGPONG_BACK_DIR}/${key}`;
    this.xs.read(cpu, XBT_NIL, `${dir}/frontend`, (c, err, fpath) => {
      this.xs.read(c, XBT_NIL, `${dir}/frontend-id`, (c2, err2, idText) => {
        this.xs.read(c2, XBT_NIL, `${dir}/state`, (c3, err3, ownText) => {
          const fid = uintOf(err2, idText);
          // Gone while we looked (the next scan drops it), or not a device.
          if (err || fid < 0 || err3 || !fpath.startsWith("/")) {
            done(c3);
            return;
          }
          let conn = this.conns.get(key);
          if (conn && (conn.frontendId !== fid || conn.frontendPath !== fpath)) {
            this.drop(c3, conn);
            conn = undefined;
          }
          if (!conn) conn = this.add(c3, key, fpath, fid);
          const own = stateOf(undefined, ownText);
          this.xs.read(c3, XBT_NIL, `${fpath}/state`, (c4, err4, fText) => {
            this.xs.read(c4, XBT_NIL, `${fpath}/event-channel`, (c5, err5, epText) => {
              this.connect(c5, conn, stateOf(err4, fText), uintOf(err5, epText));
              const want = conn.irq >= 0 ? XB.Connected : XB.InitWait;
              if (own === want) done(c5);
              else this.writeState(c5, dir, want, done);
            });
          });
        });
      });
    });
  }

  /** A new frontend: watch its state (watch_otherend). */
  private add(cpu: GuestCpu, key: string, frontendPath: string, frontendId: number): BackConn {
    const conn: BackConn = { key, frontendPath, frontendId, remotePort: 0, irq: -1, dev: this.nextDev++, sends: 0, handled: 0 };
    this.conns.set(key, conn);
    this.xs.watch(cpu, `${frontendPath}/state`, `${BACK_TOKEN}:${key}`, this, (c, err) => {
      if (err) this.k.printk(c, `pingpong: cannot watch ${frontendPath}/state: ${err}`);
    });
    return conn;
  }

  /** Bound to the port the frontend publishes while it is Initialised or Connected, to nothing otherwise. */
  private connect(cpu: GuestCpu, conn: BackConn, fstate: number, port: number): void {
    const wanted = (fstate === XB.Initialised || fstate === XB.Connected) && port > 0 ? port : 0;
    if (conn.irq >= 0 && conn.remotePort !== wanted) this.unbind(cpu, conn);
    if (conn.irq >= 0 || wanted === 0) return;
    const ev = this.k.events;
    const irq = ev.bindInterdomainEvtchnToIrq(cpu, conn.frontendId, wanted, "xen-dyn");
    if (irq < 0) {
      this.k.printk(cpu, `pingpong: bind_interdomain to d${conn.frontendId}:${wanted} failed: ${irq}`);
      return;
    }
    // Xen marks a new binding pending in case the peer sent before it; ours sends nothing before
    // we say Connected, so the event is not a token: cleared before the irq is enabled.
    ev.backend.clearPending(ev.irqs[irq]!.evtchn);
    const rc = ev.requestIrq(cpu, irq, "pingpong_back", conn.dev);
    if (rc < 0) {
      ev.unbindFromIrq(cpu, irq);
      this.k.printk(cpu, `pingpong: request_irq for d${conn.frontendId} failed: ${rc}`);
      return;
    }
    conn.irq = irq;
    conn.remotePort = wanted;
    this.connects++;
    this.k.printk(cpu, `pingpong: backend ${conn.key} bound to d${conn.frontendId}:${wanted}`);
  }

  private unbind(cpu: GuestCpu, conn: BackConn): void {
    if (conn.irq < 0) return;
    this.k.events.unbindFromIrqhandler(cpu, conn.irq);
    conn.irq = -1;
    conn.remotePort = 0;
    this.disconnects++;
  }

  /** The frontend's directory went: its channel is closed and its watch dropped. */
  private drop(cpu: GuestCpu, conn: BackConn): void {
    this.unbind(cpu, conn);
    this.conns.delete(conn.key);
    this.xs.unwatch(cpu, `${conn.frontendPath}/state`, `${BACK_TOKEN}:${conn.key}`, (c, err) => {
      if (err) this.k.printk(c, `pingpong: unwatch ${conn.frontendPath}/state: ${err}`);
    });
  }
}

registerKernelClass("PingPongFront", PingPongFront);
registerKernelClass("PingPongBack", PingPongBack);
