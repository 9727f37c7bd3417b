// The terminal line discipline on hvc0 (Linux drivers/tty/n_tty.c with the default termios of
// a console: ICANON, ECHO, ECHOE, ECHOK, ECHOKE, ECHOCTL, ISIG, ICRNL, and ONLCR on output).
// Input is collected into a line; each byte is echoed back as a terminal in cooked mode does,
// and a finished line waits for a reader. No process reads the console in this kernel, so lines
// are only kept (the last few) and counted.

import { registerKernelClass } from "./kstate.ts";

/** termios c_cc defaults (include/uapi/asm-generic/termbits.h, INIT_C_CC). */
const VINTR = 0x03;
const VQUIT = 0x1c;
const VERASE = 0x7f;
const VKILL = 0x15;
const VEOF = 0x04;
const VWERASE = 0x17;
const VSUSP = 0x1a;

/** N_TTY_BUF_SIZE: a canonical line holds at most this less one byte. */
const LINE_MAX = 4095;
/** Finished lines kept for a reader that never comes. */
const KEEP_LINES = 64;

export class NTty {
  private line: number[] = [];
  /** Finished lines (without their newline), the oldest first. */
  readonly lines: string[] = [];
  linesRead = 0;
  /** Signals the line discipline raised (ISIG): SIGINT, SIGQUIT, SIGTSTP. */
  signals = 0;

  /** n_tty_receive_buf: takes input bytes and returns what is echoed for them (already through ONLCR). */
  receive(bytes: Uint8Array): string {
    let echo = "";
    for (let c of bytes) {
      if (c === 0x0d) c = 0x0a; // ICRNL
      if (c === VINTR || c === VQUIT || c === VSUSP) {
        // isig: the pending line is flushed, the character echoed as ^X, and a newline follows
        // only when the shell prints one; the tty itself writes just the ^X.
        this.signals++;
        this.line = [];
        echo += ctl(c);
        continue;
      }
      if (c === VERASE || c === VWERASE || c === VKILL) {
        echo += this.erase(c);
        continue;
      }
      if (c === VEOF) {
        // end of file: the line so far goes to the reader, nothing is echoed
        this.finish();
        continue;
      }
      if (c === 0x0a) {
        this.finish();
        echo += "\r\n"; // ONLCR
        continue;
      }
      if (this.line.length >= LINE_MAX) continue; // the buffer is full: n_tty drops it
      this.line.push(c);
      echo += c < 0x20 && c !== 0x09 ? ctl(c) : String.fromCharCode(c);
    }
    return echo;
  }

  /** eraser(): one character, one word (VWERASE) or the whole line (VKILL), rubbed out on screen. */
  private erase(c: number): string {
    let out = "";
    const rubOne = () => {
      const gone = this.line.pop()!;
      // a control character was echoed as two columns
      const cols = gone < 0x20 && gone !== 0x09 ? 2 : 1;
      out += "\b \b".repeat(cols);
    };
    if (c === VERASE) {
      if (this.line.length > 0) rubOne();
    } else if (c === VKILL) {
      while (this.line.length > 0) rubOne();
    } else {
      // a word: the blanks before it, then the word
      while (this.line.length > 0 && isBlank(this.line.at(-1)!)) rubOne();
      while (this.line.length > 0 && !isBlank(this.line.at(-1)!)) rubOne();
    }
    return out;
  }

  private finish(): void {
    this.lines.push(Buffer.from(this.line).toString("latin1"));
    if (this.lines.length > KEEP_LINES) this.lines.shift();
    this.linesRead++;
    this.line = [];
  }
}

function isBlank(c: number): boolean {
  return c === 0x20 || c === 0x09;
}

/** ECHOCTL: a control character as ^X (DEL as ^?). */
function ctl(c: number): string {
  return `^${String.fromCharCode(c === 0x7f ? 0x3f : c ^ 0x40)}`;
}

registerKernelClass("NTty", NTty);
