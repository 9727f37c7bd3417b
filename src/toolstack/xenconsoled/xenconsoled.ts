// xenconsoled: reads each domain's console output ring (io/console.h) when the domain kicks its
// console channel, keeps the recent output for `xl console`, and tells listeners; keyboard input
// goes the other way, into the ring's `in` half, as much as fits, the rest when the guest has
// read some (its kick arrives as the same event).

import { XENCONS_INTERFACE as CONS } from "../../abi/console.ts";
import { ringPut, ringTake } from "../../abi/ring.ts";
import type { RingKicker } from "../xenstored/xs_ring.ts";

/** Output kept per domain for a console that attaches later. */
const KEEP_BYTES = 256 * 1024;
/** Input waiting for room in the ring, beyond which more is dropped (xenconsoled's buffer limit). */
const INPUT_MAX = 64 * 1024;

export class ConsoleRing {
  private readonly idx: DataView;
  kicker: RingKicker | undefined;
  /** Output so far (the last KEEP_BYTES of it). */
  text = "";
  total = 0;
  readonly listeners = new Set<(text: string) => void>();
  /** Keyboard input not yet in the ring. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  inputDropped = 0;

  constructor(private readonly page: Uint8Array) {
    this.idx = new DataView(page.buffer, page.byteOffset, page.byteLength);
  }

  /** Keyboard input for the guest: into the `in` ring as far as it fits (handle_tty_read). */
  input(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.pendingBytes + bytes.length > INPUT_MAX) {
      this.inputDropped += bytes.length;
      return;
    }
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    this.fillInput();
  }

  private fillInput(): void {
    if (this.pending.length === 0) return;
    const cons = this.idx.getUint32(CONS.in_cons, true);
    let prod = this.idx.getUint32(CONS.in_prod, true);
    const used = (prod - cons) >>> 0;
    // A guest that scribbled over the indexes gets nothing more.
    if (used > CONS.in_size) return;
    let room = CONS.in_size - used;
    let moved = 0;
    while (room > 0 && this.pending.length > 0) {
      const head = this.pending[0]!;
      const n = Math.min(room, head.length);
      ringPut(this.page, CONS.in, CONS.in_size, prod, head, n);
      prod = (prod + n) >>> 0;
      room -= n;
      moved += n;
      if (n === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(n);
    }
    if (moved === 0) return;
    this.pendingBytes -= moved;
    // the bytes are in the ring before the index says so
    this.idx.setUint32(CONS.in_prod, prod, true);
    this.kicker?.kick();
  }

  /** The guest kicked: drain its output ring, and give it input it has room for now. */
  onEvent(): void {
    this.fillInput();
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
