// xl.cfg parsing as libxlu does it. The expected messages and quirks were checked against
// libxlu itself (libxlu_cfg.c and its generated lexer/parser, built from xen-project/xen);
// the one deliberate difference, the line of errors at a newline, is tested below.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  cfgNumber,
  cfgString,
  cfgStringList,
  parseXlCfg,
  printXlCfg,
  type XlConfig,
  XlCfgError,
  type XlValue,
} from "../src/toolstack/libxl/xlcfg.ts";

function cfgOf(entries: [string, XlValue][], appended: string[] = []): XlConfig {
  return { entries: new Map(entries), appended: new Set(appended) };
}

/** Parses text that must fail; returns the error. */
function parseError(text: string, file = "g.cfg"): XlCfgError {
  try {
    parseXlCfg(text, file);
  } catch (e) {
    assert.ok(e instanceof XlCfgError, `expected XlCfgError, got ${String(e)}`);
    return e;
  }
  assert.fail(`parsed without error: ${JSON.stringify(text)}`);
}

describe("parseXlCfg: examples", () => {
  test("a typical guest config", () => {
    const text = [
      "# guest1: a small PV guest",
      'name = "guest1"',
      "memory = 512; vcpus = 4",
      "",
      "on_poweroff = \"destroy\"   # xl's default is destroy too",
      "disk = ['phy:/dev/vg/g1,xvda,w']",
      "vif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]",
      "cpus = [",
      '    "0-3",   # first socket',
      "",
      '    "8",',
      "]",
      'extra = "console=hvc0"',
      'extra += " root=/dev/xvda1"',
      "pci = [ '01:00.0' ]",
      "pci += [ '02:00.0' ]",
      "maxmem = 0x400",
      "",
    ].join("\n");
    const cfg = parseXlCfg(text, "guest1.cfg");
    assert.deepEqual(
      cfg,
      cfgOf(
        [
          ["name", "guest1"],
          ["memory", 512],
          ["vcpus", 4],
          ["on_poweroff", "destroy"],
          ["disk", ["phy:/dev/vg/g1,xvda,w"]],
          ["vif", ["mac=00:16:3e:00:00:01,bridge=xenbr0"]],
          ["cpus", ["0-3", "8"]],
          ["extra", "console=hvc0 root=/dev/xvda1"],
          ["pci", ["01:00.0", "02:00.0"]],
          ["maxmem", "0x400"],
        ],
        ["extra", "pci"],
      ),
    );
    assert.deepEqual([...cfg.entries.keys()].slice(0, 3), ["name", "memory", "vcpus"]);
    assert.equal(cfgString(cfg, "name"), "guest1");
    assert.equal(cfgNumber(cfg, "memory"), 512);
    assert.equal(cfgNumber(cfg, "vcpus"), 4);
    assert.equal(cfgNumber(cfg, "maxmem"), 1024);
    assert.equal(cfgString(cfg, "maxmem"), "0x400"); // the text as written, as xl sees it
    assert.deepEqual(cfgStringList(cfg, "disk"), ["phy:/dev/vg/g1,xvda,w"]);
    assert.deepEqual(cfgStringList(cfg, "pci"), ["01:00.0", "02:00.0"]);
    assert.equal(cfgString(cfg, "bootloader"), undefined);
    assert.equal(cfgNumber(cfg, "maxvcpus"), undefined);
    assert.equal(cfgStringList(cfg, "vtpm"), undefined);
  });

  test("statements: `;`, blank lines, a last statement without newline, later `=` wins", () => {
    const cfg = parseXlCfg(";;\n\n a=1;b = 'x' ;\n\t\n a = 2 ;c=[]\nd = \"last\"");
    assert.deepEqual(
      cfg,
      cfgOf([
        ["a", 2],
        ["b", "x"],
        ["c", []],
        ["d", "last"],
      ]),
    );
    assert.deepEqual(parseXlCfg(""), cfgOf([]));
    assert.deepEqual(parseXlCfg("# only a comment\n\n"), cfgOf([]));
  });

  test("names are libxlu's [a-z][._0-9a-z]*", () => {
    assert.deepEqual(parseXlCfg("a.b_c9 = 1\nx0 = 2\n"), cfgOf([["a.b_c9", 1], ["x0", 2]]));
    assert.match(parseError("Name = 1\n").message, /near `Name': lexical error/);
    assert.match(parseError("_x = 1\n").message, /near `_x': lexical error/);
  });

  test("lists: multi-line, trailing comma, empty, nested, numbers", () => {
    const cfg = parseXlCfg("l = [\n\n 1 ,\n 'two'\n\n ,\n [ 3, [] ],\n]\ne = [ ]\nf = [\n]\n");
    assert.deepEqual(cfg.entries.get("l"), [1, "two", [3, []]]);
    assert.deepEqual(cfg.entries.get("e"), []);
    assert.deepEqual(cfg.entries.get("f"), []);
  });

  test("escapes: the ones libxlu decodes, in both quotes", () => {
    const cfg = parseXlCfg(
      's = "tab\\there\\nnl \\\\ back \\" dq \\\' sq \\a\\b\\f\\v\\r"\n' +
        "t = 'it\\'s \"fine\"'\n" +
        "u = \"raw\ttab and # not a comment\"\n",
    );
    assert.equal(cfgString(cfg, "s"), "tab\there\nnl \\ back \" dq ' sq \x07\b\f\v\r");
    assert.equal(cfgString(cfg, "t"), "it's \"fine\"");
    assert.equal(cfgString(cfg, "u"), "raw\ttab and # not a comment");
  });

  test("escapes: libxlu's numeric escapes are broken, and so are ours", () => {
    // \ooo: the next characters are checked (as decimal) and skipped, but nothing is stored
    assert.equal(cfgString(parseXlCfg('a = "A\\101B"'), "a"), "AB");
    assert.equal(cfgString(parseXlCfg('a = "A\\1 +5B"'), "a"), "AB");
    const oct = parseError('a = "\\12"\n');
    assert.equal(
      oct.message,
      'g.cfg:1: config parsing error near `"\\12"\': invalid digit after backslash octalnumerical character escape in quoted string',
    );
    // \xHH: always rejected
    const hex = parseError('a = 1\nb = "\\x41"\n');
    assert.equal(hex.line, 2);
    assert.match(hex.message, /near `"\\x41"': invalid digit after backslash hexnumerical character escape/);
    assert.match(parseError("a = '\\q'").message, /invalid character after backlash in quoted string$/);
  });

  test("numbers: decimal tokens become numbers, other number tokens stay text for strtol", () => {
    const cfg = parseXlCfg(
      'a = 0\nb = 0x1f\nc = 010\nd = 08\ne = 12ab\nf = 9007199254740993\ng = "  -12"\nh = 0x8000000000000000\ni = 1e3\n',
    );
    assert.deepEqual(
      [...cfg.entries.values()],
      [0, "0x1f", "010", "08", "12ab", "9007199254740993", "  -12", "0x8000000000000000", "1e3"],
    );
    assert.equal(cfgNumber(cfg, "a"), 0);
    assert.equal(cfgNumber(cfg, "b"), 31);
    assert.equal(cfgNumber(cfg, "c"), 8);
    assert.equal(cfgNumber(cfg, "g"), -12);
    assert.throws(() => cfgNumber(cfg, "d"), /parameter `d' is not a valid number/);
    assert.throws(() => cfgNumber(cfg, "e"), /parameter `e' is not a valid number/);
    assert.throws(() => cfgNumber(cfg, "i"), /parameter `i' is not a valid number/);
    assert.throws(() => cfgNumber(cfg, "f"), /too large to represent exactly/);
    assert.throws(() => cfgNumber(cfg, "h"), /could not be parsed as a number: Numerical result out of range/);
    // the lexer has no signs and no upper-case hex digits
    assert.match(parseError("a = -1\n").message, /near `-1': lexical error/);
    assert.match(parseError("a = 0xFF\n").message, /near `FF': lexical error/);
  });

  test("+= appends lists, concatenates strings, and acts as = for a new name", () => {
    const cfg = parseXlCfg("l = [1]\nl += [2, [3]]\ns = 'ab'\ns += \"cd\"\nn = 5\nn += 6\nnew += 7\nl += []\n");
    assert.deepEqual(
      cfg,
      cfgOf(
        [
          ["l", [1, 2, [3]]],
          ["s", "abcd"],
          ["n", "56"],
          ["new", 7],
        ],
        ["l", "s", "n", "new"],
      ),
    );
    // xl refuses += settings as numbers, even a fresh one
    assert.throws(() => cfgNumber(cfg, "n"), { name: "XlCfgError", message: "config:6: can't use += with numbers for parameter `n'" });
    assert.throws(() => cfgNumber(cfg, "new"), /can't use \+= with numbers/);
    assert.equal(cfgString(cfg, "new"), "7");
    // a later = resets that
    assert.equal(cfgNumber(parseXlCfg("n += 1\nn = 2\n"), "n"), 2);
  });

  test("libxlu quirks kept: a lone stray character at end of input is ignored", () => {
    assert.deepEqual(parseXlCfg("a = 1\nX"), cfgOf([["a", 1]]));
    assert.deepEqual(parseXlCfg("a = 1\n#"), cfgOf([["a", 1]]));
    assert.match(parseError("a = 1\nXY").message, /near `XY': lexical error/);
  });
});

describe("parseXlCfg: errors", () => {
  const cases: [string, string, number, number, string][] = [
    // [what, text, line, column, message after "g.cfg:<line>: config parsing error near "]
    ["unterminated string", 'a = 1\nb = 2\nc = "abc def\n', 3, 5, '`"abc\': lexical error (unterminated quoted string)'],
    ["unterminated string at a backslash-newline", "a = 'x\\\ny'\n", 1, 5, "`'x\\': lexical error (unterminated quoted string)"],
    ["bad character", "name = 'g'\nmemory = -1\n", 2, 10, "`-1': lexical error (unexpected character)"],
    ["upper-case name", "\nVcpus = 2\n", 2, 1, "`Vcpus': lexical error (names must match [a-z][._0-9a-z]*)"],
    ["carriage return", "a = 1\r\n", 1, 6, "`\r': lexical error (carriage return; DOS line endings are not accepted)"],
    ["comment without final newline", "a = 1\n# the end", 2, 1, "`#': lexical error (comment not ended by a newline)"],
    ["missing =", 'name "g1"\n', 1, 6, "`\"g1\"': syntax error, unexpected STRING, expecting += or '='"],
    ["name alone at end", "a = 1\nb", 2, 1, "`': syntax error, unexpected $end, expecting += or '='"],
    ["missing value", "a = 1\nb =\n", 2, 4, "<newline>: syntax error, unexpected NEWLINE, expecting STRING or NUMBER or '['"],
    ["comment instead of value", "b = # none\n", 1, 5, "`# none': syntax error, unexpected NEWLINE, expecting STRING or NUMBER or '['"],
    ["two values", "a = 1 2\n", 1, 7, "`2': syntax error, unexpected NUMBER, expecting $end"],
    ["two statements on a line", "a = 1 b = 2\n", 1, 7, "`b': syntax error, unexpected IDENT, expecting $end"],
    ["statement starting with a value", '"x" = 1\n', 1, 1, "`\"x\"': syntax error, unexpected STRING, expecting $end or IDENT or NEWLINE or ';'"],
    ["stray =", "= 1\n", 1, 1, "`=': syntax error, unexpected '=', expecting $end or IDENT or NEWLINE or ';'"],
    ["list without commas", "a = [1 2]\n", 1, 8, "`2': syntax error, unexpected NUMBER, expecting ']'"],
    ["list with only a comma", "a = [,]\n", 1, 6, "`,': syntax error, unexpected ',', expecting ']'"],
    ["list with an empty element", "a = [1,,2]\n", 1, 8, "`,': syntax error, unexpected ',', expecting ']'"],
    ["unclosed list", "x = 1\na = [1,\n", 2, 8, "`': syntax error, unexpected $end, expecting ']'"],
    ["+= of a string to a list", "a = [1]\nb = 2\na += \"x\"\n", 3, 6, '`"x"\': can\'t add [list] to "string" or vice versa (for `a\')'],
    ["+= of a list to a string", "a = 'x'\na += [\n1\n]\n", 4, 1, "`]': can't add [list] to \"string\" or vice versa (for `a')"],
    ["\\x escape", 'a = "\\x41"\n', 1, 5, "`\"\\x41\"': invalid digit after backslash hexnumerical character escape in quoted string (xl rejects every \\x escape)"],
    ["NUL in a string", 'a = "x\0y"\n', 1, 5, "`\"x\0y\"': lexical error (NUL character in quoted string)"],
  ];
  for (const [what, text, line, column, message] of cases) {
    test(`${what}: line ${line}`, () => {
      const e = parseError(text);
      assert.equal(e.message, `g.cfg:${line}: config parsing error near ${message}`);
      assert.equal(e.name, "XlCfgError");
      assert.deepEqual([e.line, e.column], [line, column]);
    });
  }

  test("the first error is the one reported, in input order", () => {
    assert.equal(parseError("a 1\nb = -1\n").line, 1);
    assert.equal(parseError("a = -1\nb 1\n").line, 1);
    assert.equal(parseError("a = 1\nb = [2\nc = Q\n").line, 3);
  });

  test("the default file name is `config'", () => {
    assert.throws(() => parseXlCfg("a ="), { message: /^config:1: config parsing error near / });
  });

  test("nesting is limited as bison's stack limits xl (4996 levels)", () => {
    const nest = (n: number) => `a = ${"[\n".repeat(n)}1${"]".repeat(n)}\n`;
    const deep = printXlCfg(parseXlCfg(nest(4996)));
    assert.equal(printXlCfg(parseXlCfg(deep)), deep);
    assert.match(parseError(nest(4997)).message, /near `\[': memory exhausted$/);
    assert.match(parseError(`a = ${"[".repeat(100000)}`).message, /memory exhausted$/);
  });
});

describe("typed getters", () => {
  const cfg = parseXlCfg("name = 'g'\n\ndisk = [ 'a', 7 ]\nnested = [ 'a', [ 'b' ] ]\nmem = 'lots'\n", "t.cfg");

  test("wrong types throw XlCfgError naming the file and the line of the value", () => {
    assert.throws(() => cfgString(cfg, "disk"), {
      name: "XlCfgError",
      message: "t.cfg:3: parameter `disk' is a list but should be a single value",
      line: 3,
      column: 8,
    });
    assert.throws(() => cfgNumber(cfg, "disk"), /t\.cfg:3: parameter `disk' is a list but should be a single value/);
    assert.throws(() => cfgNumber(cfg, "mem"), /t\.cfg:5: parameter `mem' is not a valid number/);
    assert.throws(() => cfgStringList(cfg, "name"), /t\.cfg:1: parameter `name' is a single value but should be a list/);
    assert.throws(() => cfgStringList(cfg, "nested"), /t\.cfg:4: element 1 of parameter `nested' is a list/);
    assert.deepEqual(cfgStringList(cfg, "disk"), ["a", "7"]);
  });

  test("on a config built by hand the position is unknown (line 0)", () => {
    const hand = cfgOf([["memory", [1]]]);
    assert.throws(() => cfgNumber(hand, "memory"), { message: /^config:0: parameter `memory' is a list/, line: 0 });
    assert.equal(cfgNumber(cfgOf([["m", " 0x10"]]), "m"), 16);
  });
});

describe("printXlCfg", () => {
  test("canonical form", () => {
    const cfg = parseXlCfg("name='g1' ; memory=512\nl=[ 'a',\n[],[1,'b\"\\\\']]\nl += [ ]\ne=[]\nx = \"\\t\\n\"\n");
    assert.equal(
      printXlCfg(cfg),
      'name = "g1"\nmemory = 512\nl += [ "a", [], [ 1, "b\\"\\\\" ] ]\ne = []\nx = "\\t\\n"\n',
    );
    assert.deepEqual(parseXlCfg(printXlCfg(cfg)), cfg);
  });

  test("configs that cannot be written as xl.cfg are refused", () => {
    assert.throws(() => printXlCfg(cfgOf([["Name", 1]])), RangeError);
    assert.throws(() => printXlCfg(cfgOf([["a", -1]])), RangeError);
    assert.throws(() => printXlCfg(cfgOf([["a", [1.5]]])), RangeError);
    assert.throws(() => printXlCfg(cfgOf([["a", -0]])), RangeError);
    assert.throws(() => printXlCfg(cfgOf([["a", "x\0"]])), RangeError);
    assert.throws(() => printXlCfg(cfgOf([["a", 1]], ["b"])), RangeError);
  });
});

// ---- properties ----

const xlName = fc.stringMatching(/^[a-z][._0-9a-z]{0,8}$/);
const xlString = fc.string({ unit: "binary", maxLength: 12 }).map((s) => s.replaceAll("\0", ""));
const xlValue = fc.letrec<{ value: XlValue }>((tie) => ({
  value: fc.oneof({ maxDepth: 4, depthSize: "small" }, xlString, fc.maxSafeNat(), fc.array(tie("value"), { maxLength: 4 })),
})).value;
const xlConfig = fc
  .uniqueArray(fc.tuple(xlName, xlValue, fc.boolean()), { selector: (e) => e[0], maxLength: 8 })
  .map((es) => cfgOf(es.map(([k, v]) => [k, v]), es.filter((e) => e[2]).map((e) => e[0])));

// Pieces of xl.cfg syntax, valid and not, so that random strings reach deep into the parser.
const fragments = [
  "a", "memory", "x.y", "b_2", "A", "_", "1", "0", "0x1f", "012", "1a", "08", "=", " = ", "+=", "+", "-",
  "[", "]", ",", ";", "\n", "\n", " ", "\t", "# c\n", "#", "'s'", '"d"', '"a\\n\\t\\\\"', '"\\x41"',
  '"\\101"', '"\\1 5"', '"\\q"', '"open', "'", '"', "\r", "(", ":", "\\", '"\\""', "'\\''", "\0", "é",
];
const fragmentText = fc
  .array(fc.oneof(fc.constantFrom(...fragments), fc.string({ unit: "binary", maxLength: 2 })), { maxLength: 30 })
  .map((parts) => parts.join(""));
// Mostly valid configs, with a character dropped now and then.
const statement = fc
  .tuple(xlName, fc.constantFrom(" = ", "+=", " += "), xlValue, fc.constantFrom("\n", ";", " # c\n", "\n\n"))
  .map(([k, op, v, end]) => `${k}${op}${printXlCfg(cfgOf([["v", v]])).slice(4, -1)}${end}`);
const nearlyValidText = fc
  .tuple(fc.array(statement, { maxLength: 6 }), fc.option(fc.nat(80)))
  .map(([ss, cut]) => {
    const s = ss.join("");
    return cut === null ? s : s.slice(0, cut) + s.slice(cut + 1);
  });

/** parseXlCfg must return a config that prints and reads back equal, or throw a well-formed XlCfgError. */
function checkParse(text: string): void {
  let cfg: XlConfig;
  try {
    cfg = parseXlCfg(text, "fuzz.cfg");
  } catch (e) {
    assert.ok(e instanceof XlCfgError, `not an XlCfgError: ${String(e)}`);
    assert.ok(e.line >= 1 && e.line <= text.split("\n").length, `line ${e.line} out of range`);
    assert.ok(e.column >= 1, `column ${e.column}`);
    assert.ok(e.message.startsWith(`fuzz.cfg:${e.line}: config parsing error near `), e.message);
    return;
  }
  assert.deepEqual(parseXlCfg(printXlCfg(cfg)), cfg);
}

describe("properties", () => {
  test("print→parse round-trips random configs (2000 runs)", () => {
    fc.assert(
      fc.property(xlConfig, (cfg) => {
        assert.deepEqual(parseXlCfg(printXlCfg(cfg)), cfg);
      }),
      { numRuns: 2000 },
    );
  });

  test("parseXlCfg on arbitrary strings returns or throws XlCfgError (10000 runs)", () => {
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 60 }), checkParse), { numRuns: 10000 });
  });

  test("parseXlCfg on strings of config fragments returns or throws XlCfgError (10000 runs)", () => {
    fc.assert(fc.property(fragmentText, checkParse), { numRuns: 10000 });
  });

  test("parseXlCfg on nearly valid configs returns or throws XlCfgError (5000 runs)", () => {
    fc.assert(fc.property(nearlyValidText, checkParse), { numRuns: 5000 });
  });
});
