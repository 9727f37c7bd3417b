// xl.cfg parser and printer, following libxlu (tools/libs/util/libxlu_cfg_{l.l,y.y,.c}):
// the same tokens, grammar, `+=` semantics, error texts and quirks. libxlu's bugs in what it
// accepts and how it decodes are copied too, since xl is what users run; only the line
// number of errors at a newline differs (see Lexer.error).
//
// Values: libxlu keeps every atom as text and xl converts with strtol(…, 0) on demand.
// We store a NUMBER token as a JS number only when that is lossless (a canonical decimal
// safe integer such as `512`); anything else (`0x400`, `010`, `12ab`, quoted text) stays a
// string, so cfgString returns exactly what xl would and cfgNumber applies strtol rules.

export type XlValue = string | number | XlValue[];

export interface XlConfig {
  /** Final value of each setting; iteration order is the order names were first set. */
  entries: Map<string, XlValue>;
  /** Names whose final statement was `+=`: xl refuses to read those as numbers. */
  appended: Set<string>;
}

export class XlCfgError extends Error {
  override name = "XlCfgError";
  /** 1-based; 0 when the position is unknown (a config not made by parseXlCfg). */
  line: number;
  column: number;
  constructor(message: string, line: number, column: number) {
    super(message);
    this.line = line;
    this.column = column;
  }
}

/** libxlu's IDENT token; names xl can read back. */
export const XL_NAME = /^[a-z][._0-9a-z]*$/;

type Kind = "IDENT" | "STRING" | "NUMBER" | "NEWLINE" | "+=" | "=" | ";" | "[" | "]" | "," | "$end";
interface Token {
  kind: Kind;
  text: string; // as written, for "near `…'"
  value: string; // dequoted, for STRING
  line: number;
  column: number;
}

// bison's yytname spelling in "unexpected X, expecting Y"
const NAME: Record<Kind, string> = {
  IDENT: "IDENT", STRING: "STRING", NUMBER: "NUMBER", NEWLINE: "NEWLINE", "$end": "$end",
  "+=": "+=", "=": "'='", ";": "';'", "[": "'['", "]": "']'", ",": "','",
};

// bison's YYMAXDEPTH (10000 states, two per open list) makes xl fail beyond this nesting.
const MAX_NESTING = 4996;

const IDENT = /[a-z][._0-9a-z]*/y;
const NUMBER = /[0-9][0-9a-fx]*/y;
const JUNK = /[^ \t\n]*/y;

function near(text: string): string {
  const body = text.replace(/\n$/, "").replace(/[ \t]+$/, "");
  return body === "" && text.endsWith("\n") ? "<newline>" : `\`${body}'`;
}

class Lexer {
  private pos = 0;
  private line = 1;
  private lineStart = 0;
  /** The token returned most recently: libxlu's yytext when a store fails. */
  last: Token;
  private readonly src: string;
  private readonly file: string;

  constructor(src: string, file: string) {
    this.src = src;
    this.file = file;
    this.last = { kind: "$end", text: "", value: "", line: 1, column: 1 };
  }

  // xl's yyerror steps back a line for errors at a newline token, so it names the line
  // before; we report the line the token is on.
  error(at: { line: number; column: number }, text: string, what: string): XlCfgError {
    const msg = `${this.file}:${at.line}: config parsing error near ${near(text)}: ${what}`;
    return new XlCfgError(msg, at.line, at.column);
  }

  next(): Token {
    const s = this.src;
    while (s[this.pos] === " " || s[this.pos] === "\t") this.pos++;
    const c = s[this.pos];
    if (c === undefined) return this.eof();
    if (c === "\n") return this.take("NEWLINE", c);
    // flex picks the longest match; these rules cannot overlap, so first match wins
    const word = this.match(IDENT);
    if (word !== undefined) return this.take("IDENT", word);
    const num = this.match(NUMBER);
    if (num !== undefined) return this.take("NUMBER", num);
    if (c === "#") {
      // a comment is part of its NEWLINE token, so it needs the \n
      const end = s.indexOf("\n", this.pos);
      if (end >= 0) return this.take("NEWLINE", s.slice(this.pos, end + 1));
    }
    const str = c === '"' || c === "'" ? this.quoted(c) : undefined;
    if (str !== undefined) {
      const t = this.take("STRING", str);
      t.value = this.dequote(t);
      return t;
    }
    if (s.startsWith("+=", this.pos)) return this.take("+=", "+=");
    if (c === "=" || c === ";" || c === "[" || c === "]" || c === ",") return this.take(c, c);
    // flex drops a lone bad character at end of input without reporting it (xl accepts "a=1\nX")
    if (this.pos + 1 === s.length) {
      this.pos++;
      return { ...this.eof(), text: c };
    }
    const at = this.here();
    const after = s[this.pos + 1];
    const text = after === " " || after === "\t" || after === "\n" ? c : c + this.match(JUNK, this.pos + 1);
    throw this.error(at, text, `lexical error (${badCharHint(c)})`);
  }

  // flex's \'([^\'\\\n]|\\.)*\' (and the same with "), by hand: a regex overflows on long strings
  private quoted(q: string): string | undefined {
    const s = this.src;
    for (let j = this.pos + 1; j < s.length; j++) {
      const ch = s[j];
      if (ch === q) return s.slice(this.pos, j + 1);
      if (ch === "\n" || (ch === "\\" && (++j === s.length || s[j] === "\n"))) return undefined;
    }
    return undefined;
  }

  private here(): { line: number; column: number } {
    return { line: this.line, column: this.pos - this.lineStart + 1 };
  }

  private match(re: RegExp, at = this.pos): string | undefined {
    re.lastIndex = at;
    return re.exec(this.src)?.[0];
  }

  private take(kind: Kind, text: string): Token {
    this.last = { kind, text, value: text, ...this.here() };
    this.pos += text.length;
    if (kind === "NEWLINE") {
      this.line++;
      this.lineStart = this.pos;
    }
    return this.last;
  }

  private eof(): Token {
    // xl reports end-of-input errors at the last token's line, near flex's stale (empty) text
    return { kind: "$end", text: "", value: "", line: this.last.line, column: this.last.column };
  }

  // libxlu's xlu__cfgl_dequote, including its bugs: every \x escape is rejected (it skips
  // one digit too many and then demands three of two), and \ooo is checked as a decimal
  // strtoul of the next characters, which are consumed but never stored.
  private dequote(t: Token): string {
    const raw = t.text;
    let out = "";
    for (let p = 1; p < raw.length - 1; ) {
      const c = raw[p++]!;
      if (c === "\0") throw this.error(t, raw, "lexical error (NUL character in quoted string)");
      if (c !== "\\") {
        out += c;
        continue;
      }
      const nc = raw[p++]!;
      const simple = ESCAPES[nc];
      if (simple !== undefined) out += simple;
      else if (nc === "x") {
        const what = "invalid digit after backslash hexnumerical character escape in quoted string";
        throw this.error(t, raw, `${what} (xl rejects every \\x escape)`);
      } else if (nc >= "0" && nc <= "7") {
        const used = strtoulLength(raw.slice(p, p + 3));
        if (used < 2) {
          const what = "invalid digit after backslash octalnumerical character escape in quoted string";
          throw this.error(t, raw, what);
        }
        p += used;
      } else throw this.error(t, raw, "invalid character after backlash in quoted string");
    }
    return out;
  }
}

const ESCAPES: Record<string, string> = {
  '"': '"', "'": "'", "\\": "\\", a: "\x07", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v",
};

/** How many characters C strtoul(s, &ep, 10) consumes (0 when it finds no digits). */
function strtoulLength(s: string): number {
  const m = /^[ \t\n\v\f\r]*[+-]?[0-9]+/.exec(s);
  return m ? m[0].length : 0;
}

function badCharHint(c: string): string {
  if (c === '"' || c === "'") return "unterminated quoted string";
  if (c === "#") return "comment not ended by a newline";
  if (c === "\r") return "carriage return; DOS line endings are not accepted";
  if (/[A-Z_]/.test(c)) return "names must match [a-z][._0-9a-z]*";
  return "unexpected character";
}

function atom(t: Token): XlValue {
  if (t.kind === "STRING") return t.value;
  const n = Number(t.text);
  return Number.isSafeInteger(n) && String(n) === t.text ? n : t.text;
}

interface Origin {
  file: string;
  at: Map<string, { line: number; column: number }>;
}
// Source positions live beside the config, so that parse(print(c)) can deep-equal c.
const origins = new WeakMap<XlConfig, Origin>();

class Parser {
  private readonly lex: Lexer;
  private ahead: Token | undefined;
  readonly cfg: XlConfig = { entries: new Map(), appended: new Set() };
  readonly origin: Origin;

  constructor(src: string, file: string) {
    this.lex = new Lexer(src, file);
    this.origin = { file, at: new Map() };
  }

  private peek(): Token {
    this.ahead ??= this.lex.next();
    return this.ahead;
  }

  private take(): Token {
    const t = this.peek();
    this.ahead = undefined;
    return t;
  }

  private syntax(t: Token, expected: string[]): never {
    throw this.lex.error(t, t.text, `syntax error, unexpected ${NAME[t.kind]}, expecting ${expected.join(" or ")}`);
  }

  private newlines(): void {
    while (this.peek().kind === "NEWLINE") this.take();
  }

  // file: stmts | stmts assignment;  stmt: assignment endstmt | endstmt
  file(): void {
    for (;;) {
      const t = this.take();
      if (t.kind === "$end") return;
      if (t.kind === "NEWLINE" || t.kind === ";") continue;
      if (t.kind !== "IDENT") this.syntax(t, ["$end", "IDENT", "NEWLINE", "';'"]);
      const op = this.take();
      if (op.kind !== "=" && op.kind !== "+=") this.syntax(op, ["+=", "'='"]);
      const start = this.peek();
      this.store(t.text, op.kind === "+=", this.value(), start);
      const end = this.take(); // read only after the store, as bison reduces first
      if (end.kind === "$end") return;
      // bison's default reduction leaves only $end acceptable here
      if (end.kind !== "NEWLINE" && end.kind !== ";") this.syntax(end, ["$end"]);
    }
  }

  // value: atom | '[' nlok valuelist ']', iteratively so that deep nesting cannot overflow
  private value(): XlValue {
    const open: XlValue[][] = [];
    for (;;) {
      const t = this.take();
      let v: XlValue;
      if (t.kind === "STRING" || t.kind === "NUMBER") v = atom(t);
      else if (t.kind === "[") {
        if (open.length === MAX_NESTING) throw this.lex.error(t, t.text, "memory exhausted");
        open.push([]);
        this.newlines();
        if (this.peek().kind !== "]") continue;
        this.take();
        v = open.pop()!;
      } else if (open.length > 0) this.syntax(t, ["']'"]);
      else this.syntax(t, ["STRING", "NUMBER", "'['"]);
      // v is complete: add it to the innermost list, closing lists as their `]` arrive
      for (;;) {
        const list = open.at(-1);
        if (list === undefined) return v;
        list.push(v);
        this.newlines();
        let t2 = this.take();
        if (t2.kind === ",") {
          this.newlines();
          if (this.peek().kind !== "]") break; // another element follows
          t2 = this.take();
        }
        if (t2.kind !== "]") this.syntax(t2, ["']'"]);
        v = open.pop()!;
      }
    }
  }

  // xlu__cfg_set_store: `+=` joins strings or lists onto an earlier setting of the same name
  private store(name: string, add: boolean, v: XlValue, start: Token): void {
    const prev = this.cfg.entries.get(name);
    if (add && prev !== undefined) {
      if (Array.isArray(prev) !== Array.isArray(v)) {
        const last = this.lex.last;
        throw this.lex.error(last, last.text, `can't add [list] to "string" or vice versa (for \`${name}')`);
      }
      v = Array.isArray(prev) && Array.isArray(v) ? [...prev, ...v] : `${prev}${v}`;
    }
    this.cfg.entries.set(name, v);
    if (add) this.cfg.appended.add(name);
    else this.cfg.appended.delete(name);
    this.origin.at.set(name, { line: start.line, column: start.column });
  }
}

/** Parses xl.cfg text exactly as xl would; any rejection is an XlCfgError (the first error xl prints). */
export function parseXlCfg(text: string, file = "config"): XlConfig {
  const p = new Parser(text, file);
  p.file();
  origins.set(p.cfg, p.origin);
  return p.cfg;
}

const PRINT_ESCAPES: Record<string, string> = {
  '"': '\\"', "\\": "\\\\", "\x07": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
};

function printAtom(v: string | number): string {
  if (typeof v === "number") {
    // only what a NUMBER token can yield; anything else would not read back equal
    if (!Number.isSafeInteger(v) || v < 0 || Object.is(v, -0)) throw new RangeError(`xl.cfg cannot hold the number ${v}`);
    return String(v);
  }
  if (v.includes("\0")) throw new RangeError("xl.cfg strings cannot contain NUL");
  return `"${Array.from(v, (c) => PRINT_ESCAPES[c] ?? c).join("")}"`;
}

// Iterative, like the parser, so that any list the parser accepts can be printed.
function printValue(root: XlValue): string {
  const parts: string[] = [];
  const open: { list: XlValue[]; next: number }[] = [];
  let v = root;
  for (;;) {
    if (Array.isArray(v) && v.length > 0) {
      parts.push("[ ");
      open.push({ list: v, next: 1 });
      v = v[0]!;
      continue;
    }
    parts.push(Array.isArray(v) ? "[]" : printAtom(v));
    // close every list whose last element this was
    for (;;) {
      const top = open.at(-1);
      if (top === undefined) return parts.join("");
      if (top.next < top.list.length) {
        parts.push(", ");
        v = top.list[top.next++]!;
        break;
      }
      parts.push(" ]");
      open.pop();
    }
  }
}

/**
 * Canonical xl.cfg text: one `name = value` (or `+=`) line per entry, double-quoted strings.
 * parseXlCfg(printXlCfg(c)) deep-equals c; configs that cannot round-trip (bad names,
 * negative or fractional numbers, NUL in strings) throw RangeError.
 */
export function printXlCfg(cfg: XlConfig): string {
  for (const name of cfg.appended) {
    if (!cfg.entries.has(name)) throw new RangeError(`appended name \`${name}' has no entry`);
  }
  let out = "";
  for (const [name, v] of cfg.entries) {
    if (!XL_NAME.test(name)) throw new RangeError(`\`${name}' is not a valid xl.cfg name`);
    out += `${name} ${cfg.appended.has(name) ? "+=" : "="} ${printValue(v)}\n`;
  }
  return out;
}

// Getters: the checks xlu_cfg_get_{string,long,list} make, with their messages (as errors).

function wrongType(cfg: XlConfig, key: string, what: string): XlCfgError {
  const o = origins.get(cfg);
  const at = o?.at.get(key) ?? { line: 0, column: 0 };
  return new XlCfgError(`${o?.file ?? "config"}:${at.line}: ${what}`, at.line, at.column);
}

function scalar(cfg: XlConfig, key: string): string | number | undefined {
  const v = cfg.entries.get(key);
  if (Array.isArray(v)) throw wrongType(cfg, key, `parameter \`${key}' is a list but should be a single value`);
  return v;
}

/** The setting as text (a number reads back as the digits written). */
export function cfgString(cfg: XlConfig, key: string): string | undefined {
  const v = scalar(cfg, key);
  return v === undefined ? undefined : String(v);
}

/** The setting as strtol(text, &end, 0) reads it: decimal, 0x hex or 0 octal, whole string, signed 64-bit. */
export function cfgNumber(cfg: XlConfig, key: string): number | undefined {
  const v = scalar(cfg, key);
  if (v === undefined) return undefined;
  if (cfg.appended.has(key)) throw wrongType(cfg, key, `can't use += with numbers for parameter \`${key}'`);
  if (typeof v === "number") return v;
  const m = /^[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|0([0-7]*)|([1-9][0-9]*))$/.exec(v);
  if (!m) throw wrongType(cfg, key, `parameter \`${key}' is not a valid number`);
  const [, sign, hex, oct, dec] = m;
  const mag = hex !== undefined ? BigInt(`0x${hex}`) : oct !== undefined ? BigInt(`0o${oct || "0"}`) : BigInt(dec!);
  const n = sign === "-" ? -mag : mag;
  if (n < -(2n ** 63n) || n >= 2n ** 63n) {
    throw wrongType(cfg, key, `parameter \`${key}' could not be parsed as a number: Numerical result out of range`);
  }
  // xl's long holds it, a JS number may not
  if (n < BigInt(Number.MIN_SAFE_INTEGER) || n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw wrongType(cfg, key, `parameter \`${key}' is too large to represent exactly here`);
  }
  return Number(n);
}

/** A list of single values, as text (xl's xlu_cfg_get_list_as_string_list). */
export function cfgStringList(cfg: XlConfig, key: string): string[] | undefined {
  const v = cfg.entries.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw wrongType(cfg, key, `parameter \`${key}' is a single value but should be a list`);
  return v.map((item, i) => {
    if (Array.isArray(item)) throw wrongType(cfg, key, `element ${i} of parameter \`${key}' is a list but should be a single value`);
    return String(item);
  });
}
