// xenconsoled: reads each domain's console output ring (io/console.h) when the domain kicks its
// console channel, keeps the recent output for `xl console`, and tells listeners.

import { XENCONS_INTERFACE as CONS } from "../../abi/console.ts";
import { ringTake } from "../../abi/ring.ts";
import type { RingKicker } from "../xenstored/xs_ring.ts";

/** Output kept per domain for a console that attaches later. */
const KEEP_BYTES = 256 * 1024;

export class ConsoleRing {
  private readonly idx: DataView;
  kicker: RingKicker | undefined;
  /** Output so far (the last KEEP_BYTES of it). */
  text = "";
  total = 0;
  readonly listeners = new Set<(text: string) => void>();

  constructor(private readonly page: Uint8Array) {
    this.idx = new DataView(page.buffer, page.byteOffset, page.byteLength);
  }

  /** The guest kicked: drain its output ring. */
  onEvent(): void {
    let cons = this.idx.getUint32(CONS.out_cons, true);
    const prod = this.idx.getUint32(CONS.out_prod, true);
    let avail = (prod - cons) >>> 0;
    if (avail === 0) return;
    // Indexes a guest scribbled over: take the last ring's worth, as xenconsoled does.
    if (avail > CONS.out_size) {
      avail = CONS.out_size;
      cons = (prod - avail) >>> 0;
    }
    const s = Buffer.from(ringTake(this.page, CONS.out, CONS.out_size, cons, avail)).toString("latin1");
    this.idx.setUint32(CONS.out_cons, (cons + avail) >>> 0, true);
    this.total += s.length;
    this.text = (this.text + s).slice(-KEEP_BYTES);
    for (const l of this.listeners) l(s);
    this.kicker?.kick();
  }
}
