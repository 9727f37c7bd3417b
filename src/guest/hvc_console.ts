// The PV console (Linux drivers/tty/hvc/hvc_xen.c): kernel messages go into the console page's
// output ring and console_evtchn tells xenconsoled. Output that finds the ring full waits in
// the kernel until xenconsoled has drained some (its kick arrives as the same event).
// Keyboard input arrives in the page's input ring on the same event: the kernel takes it
// (domU_read_console, then a kick so xenconsoled can send more) and hands it to the tty's line
// discipline, whose echo goes out like any other console output.

import type { GuestCpu } from "../abi/cpu.ts";
import { XENCONS_INTERFACE as CONS } from "../abi/console.ts";
import { ringPut, ringTake } from "../abi/ring.ts";
import type { XenEvents } from "./events.ts";
import { KstateError, type KstateEnv, registerKernelClass } from "./kstate.ts";
import { NTty } from "./n_tty.ts";

/** Output the kernel keeps while the ring is full, beyond which the oldest is dropped. */
const BACKLOG_MAX = 64 * 1024;

export class HvcConsole {
  /** Views of the console page (derived again from pageVa after a restore). */
  private page: Uint8Array;
  private idx: DataView;
  private irq = -1;
  private backlog = "";
  dropped = 0;
  /** hvc0's line discipline. */
  readonly tty = new NTty();
  inputBytes = 0;

  constructor(
    private readonly events: XenEvents,
    pageWords: Uint32Array,
    public port: number,
    /** Where the kernel maps the console page: what a restore derives the views from again. */
    private readonly pageVa?: number,
  ) {
    this.page = new Uint8Array(pageWords.buffer, pageWords.byteOffset, 4096);
    this.idx = new DataView(pageWords.buffer, pageWords.byteOffset, 4096);
    events.registerHandler("hvc_console", (cpu) => this.interrupt(cpu));
  }

  /** After a restore: the page's views and the irq handler again. */
  kstateRevive(env: KstateEnv): void {
    if (this.pageVa === undefined) throw new KstateError("kstate: HvcConsole was not given its page's address (pageVa)");
    const words = env.cpu.mapPageWords(this.pageVa);
    this.page = new Uint8Array(words.buffer, words.byteOffset, 4096);
    this.idx = new DataView(words.buffer, words.byteOffset, 4096);
    this.events.registerHandler("hvc_console", (cpu) => this.interrupt(cpu));
  }

  /** xen_hvc_resume in a new domain: the console's new channel. */
  resume(cpu: GuestCpu, port: number): void {
    if (this.irq >= 0) this.events.unbindFromIrqhandler(cpu, this.irq);
    this.irq = -1;
    this.port = port;
    this.init(cpu);
  }

  init(cpu: GuestCpu): number {
    const irq = this.events.bindEvtchnToIrqhandler(cpu, this.port, "hvc_console", 0);
    if (irq < 0) return irq;
    this.irq = irq;
    return 0;
  }

  /** hvc_poll on the console interrupt: input first (its echo joins the output), then output. */
  private interrupt(cpu: GuestCpu): void {
    const input = this.read(cpu);
    if (input.length > 0) {
      const echo = this.tty.receive(input);
      if (echo !== "") this.backlog += echo;
    }
    this.flush(cpu);
  }

  /** domU_read_console: everything in the input ring, its consumer index moved on, xenconsoled told. */
  private read(cpu: GuestCpu): Uint8Array {
    if (this.irq < 0) return new Uint8Array(0);
    const cons = this.idx.getUint32(CONS.in_cons, true);
    const prod = this.idx.getUint32(CONS.in_prod, true);
    const avail = (prod - cons) >>> 0;
    // Indexes the other side left inconsistent: nothing is taken.
    if (avail === 0 || avail > CONS.in_size) return new Uint8Array(0);
    const bytes = ringTake(this.page, CONS.in, CONS.in_size, cons, avail);
    this.idx.setUint32(CONS.in_cons, prod, true);
    this.inputBytes += avail;
    this.events.notifyRemoteViaIrq(cpu, this.irq);
    return bytes;
  }

  /** domU_write_console. */
  write(cpu: GuestCpu, text: string): void {
    this.backlog += text;
    if (this.backlog.length > BACKLOG_MAX) {
      this.dropped += this.backlog.length - BACKLOG_MAX;
      this.backlog = this.backlog.slice(this.backlog.length - BACKLOG_MAX);
    }
    this.flush(cpu);
  }

  private flush(cpu: GuestCpu): void {
    if (this.backlog.length === 0 || this.irq < 0) return;
    const cons = this.idx.getUint32(CONS.out_cons, true);
    const prod = this.idx.getUint32(CONS.out_prod, true);
    const used = (prod - cons) >>> 0;
    // A ring xenconsoled left inconsistent is not written into.
    if (used > CONS.out_size) return;
    const n = Math.min(CONS.out_size - used, this.backlog.length);
    if (n === 0) return;
    ringPut(this.page, CONS.out, CONS.out_size, prod, Buffer.from(this.backlog.slice(0, n), "latin1"), n);
    this.idx.setUint32(CONS.out_prod, (prod + n) >>> 0, true);
    this.backlog = this.backlog.slice(n);
    this.events.notifyRemoteViaIrq(cpu, this.irq);
  }
}

registerKernelClass("HvcConsole", HvcConsole, { transient: ["page", "idx"] });
