// Unix sockets: a path longer than sun_path's 107 bytes is bound and reached where it says (not
// at a truncated name outside its directory), nothing hangs, and a live socket is never taken
// over by a second server: a second `xensim xenstored` on it is refused, a stale one replaced.

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { after, test } from "node:test";
import { connectUnix, fitsSunPath, listenUnix, probeUnix, SocketInUseError, UnixSocketError } from "../src/util/unix_socket.ts";

const CLI = [process.execPath, "--import", "tsx", "src/cli/main.ts"];

function xensim(timeoutMs: number, ...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], { encoding: "utf8", timeout: timeoutMs });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A fresh directory whose socket paths are well over sun_path's limit. */
function longDir(): { parent: string; dir: string } {
  const parent = mkdtempSync(join(tmpdir(), "xensim-sock-"));
  const dir = join(parent, "a-directory-name-long-enough-that-sockets-in-it-pass-the-sun-path-limit-".padEnd(120, "x"));
  mkdirSync(dir);
  assert.ok(!fitsSunPath(join(dir, "control.sock")));
  return { parent, dir };
}

const started: ChildProcess[] = [];
const hostDirs: string[] = [];
after(() => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  // A host this file started in the background and could not stop: end it by its pid.
  for (const dir of hostDirs) {
    try {
      const pid = Number(readFileSync(join(dir, "xensim.pid"), "utf8"));
      if (pid > 0) process.kill(pid, "SIGKILL");
    } catch {}
  }
});

/** A process that binds `path` (through its directory) and is killed without closing it. */
async function dieListening(path: string): Promise<void> {
  const code = [
    'const fs = require("fs");',
    `const fd = fs.openSync(${JSON.stringify(dirname(path))}, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);`,
    `require("net").createServer().listen("/proc/self/fd/" + fd + "/" + ${JSON.stringify(basename(path))}, () => process.kill(process.pid, "SIGKILL"));`,
  ].join("\n");
  const child = spawn(process.execPath, ["-e", code]);
  started.push(child);
  await new Promise((r) => child.once("exit", r));
  assert.ok(lstatSync(path).isSocket());
}

function closed(server: Server): Promise<void> {
  return new Promise((r) => server.close(() => r()));
}

test("listenUnix and connectUnix: a long path is bound in its own directory and reached there", async () => {
  const { parent, dir } = longDir();
  const path = join(dir, "s.sock");
  const server = createServer((sock) => {
    sock.on("error", () => {}); // the probe below hangs up at once
    sock.end("hello\n");
  });
  await listenUnix(server, path);
  assert.ok(lstatSync(path).isSocket());
  // Nothing truncated appeared beside the directory.
  assert.deepEqual(readdirSync(parent), [dir.slice(parent.length + 1)]);
  const got = await new Promise<string>((resolve, reject) => {
    const c = connectUnix(path);
    let text = "";
    c.on("data", (b) => {
      text += b.toString();
    });
    c.on("end", () => resolve(text));
    c.on("error", reject);
  });
  assert.equal(got, "hello\n");
  assert.equal(await probeUnix(path), "live");
  await closed(server);
  // libuv unlinks what it bound when the server closes: the right name, in the right place.
  assert.ok(!existsSync(path));
  assert.deepEqual(readdirSync(dir), []);
});

test("listenUnix refuses a live socket, replaces a stale one, refuses a file that is not a socket", async () => {
  const { dir } = longDir();
  for (const path of [join(dir, "s.sock"), join(mkdtempSync(join(tmpdir(), "xs-")), "s.sock")]) {
    const first = createServer();
    await listenUnix(first, path);
    const ino = lstatSync(path).ino;
    await assert.rejects(listenUnix(createServer(), path), (e: unknown) => e instanceof SocketInUseError && e.message.includes(path));
    assert.equal(lstatSync(path).ino, ino, "the live socket was replaced");
    await closed(first);

    // A server that dies without closing leaves its socket behind.
    await dieListening(path);
    assert.equal(await probeUnix(path), "stale");
    const second = createServer();
    await listenUnix(second, path);
    assert.equal(await probeUnix(path), "live");
    await closed(second);

    writeFileSync(path, "not a socket");
    await assert.rejects(listenUnix(createServer(), path), (e: unknown) => e instanceof UnixSocketError && /exists and is not a socket/.test(e.message));
    assert.equal(readFileSync(path, "utf8"), "not a socket");
  }
});

test("connectUnix to a long path with nothing there fails at once", async () => {
  const { dir } = longDir();
  const code = await new Promise<string | undefined>((resolve) => {
    const c = connectUnix(join(dir, "nobody.sock"));
    c.on("error", (e: NodeJS.ErrnoException) => resolve(e.code));
    c.on("connect", () => resolve("connected"));
  });
  assert.equal(code, "ENOENT");
  assert.equal(await probeUnix(join(dir, "nobody.sock")), "absent");
});

test("xensim up/list/down in a directory whose socket paths exceed sun_path: no hang, no stray socket", () => {
  const { parent, dir } = longDir();
  hostDirs.push(dir);
  let r = xensim(20_000, "-H", dir, "list");
  assert.equal(r.code, 1, `list without a host: ${r.out}${r.err}`);
  assert.match(r.err, /no host is running in/);

  r = xensim(60_000, "up", "--dir", dir, "--pcpus", "2", "--memory", "256");
  assert.equal(r.code, 0, `up: ${r.code} ${r.out}${r.err}`);
  assert.match(r.out, /host up in .*xenstored at .*xenstored\.sock \(longer than 107 bytes: Xen's own xenstore clients cannot connect to it\)/);
  assert.ok(lstatSync(join(dir, "control.sock")).isSocket());
  assert.ok(lstatSync(join(dir, "xenstored.sock")).isSocket());
  assert.deepEqual(readdirSync(parent), [dir.slice(parent.length + 1)], "a socket appeared outside the host directory");

  r = xensim(20_000, "-H", dir, "list");
  assert.equal(r.code, 0, `list: ${r.code} ${r.out}${r.err}`);
  assert.match(r.out, /^Domain-0 +0 /m);

  r = xensim(20_000, "up", "--dir", dir);
  assert.equal(r.code, 1, `a second up: ${r.code} ${r.out}${r.err}`);
  assert.match(r.err, /a host is already running in/);

  r = xensim(30_000, "down", "--dir", dir);
  assert.equal(r.code, 0, `down: ${r.code} ${r.out}${r.err}`);
  assert.ok(!existsSync(join(dir, "control.sock")));
  assert.ok(!existsSync(join(dir, "xenstored.sock")));
});

test("xensim up fails fast with the reason when its host cannot start", () => {
  const dir = mkdtempSync(join(tmpdir(), "xensim-up-"));
  hostDirs.push(dir);
  writeFileSync(join(dir, "xenstored.sock"), "a file in the way");
  const r = xensim(30_000, "up", "--dir", dir, "--pcpus", "2", "--memory", "256");
  assert.equal(r.code, 1, `${r.code} ${r.out}${r.err}`);
  assert.match(r.err, /the host did not come up: .*xenstored\.sock exists and is not a socket; see .*host\.log/);
  assert.equal(readFileSync(join(dir, "xenstored.sock"), "utf8"), "a file in the way");
});

/** Starts `xensim xenstored --socket path` and waits for it to listen. */
function startXenstored(path: string): Promise<ChildProcess> {
  const child = spawn(CLI[0]!, [...CLI.slice(1), "xenstored", "--socket", path], { stdio: ["ignore", "pipe", "pipe"] });
  started.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`xenstored did not start: ${out}`)), 30_000);
    child.stdout!.on("data", (b) => {
      out += b.toString();
      if (out.includes("listening")) {
        clearTimeout(t);
        resolve(child);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`xenstored exited (${code}): ${out}`));
    });
  });
}

test("a second xensim xenstored on a live socket is refused; the first keeps its socket; a stale socket is replaced", async () => {
  for (const path of [join(mkdtempSync(join(tmpdir(), "xs-")), "xs.sock"), join(longDir().dir, "xs.sock")]) {
    const first = await startXenstored(path);
    const ino = lstatSync(path).ino;
    const r = xensim(20_000, "xenstored", "--socket", path);
    assert.equal(r.code, 1, `the second daemon: ${r.code} ${r.out}${r.err}`);
    assert.equal(r.err.trim(), `xensim: xenstored is already running on ${path}`);
    assert.equal(first.exitCode, null, "the first daemon died");
    assert.equal(lstatSync(path).ino, ino, "the first daemon's socket was replaced");
    assert.equal(await probeUnix(path), "live");

    // Killed without cleaning up, the first leaves a stale socket; the next daemon takes its place.
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    assert.equal(await probeUnix(path), "stale");
    const third = await startXenstored(path);
    assert.equal(await probeUnix(path), "live");
    third.kill("SIGTERM");
    await new Promise((r) => third.once("exit", r));
    assert.ok(!existsSync(path), "the daemon left its socket");
  }
});
