// Unix sockets at any path, one server per path.
//
// A sockaddr_un holds 108 bytes of path, the NUL included. Node (libuv) silently truncates a
// longer path when it binds or connects, so a server would listen on a shorter name (often
// outside its directory) and a client would reach whatever sits at that name: a hang, or
// another server. Here a path that does not fit is reached through its directory instead: on
// Linux as /proc/self/fd/N/<name>, N a descriptor of the directory held open while the name is
// in use (as systemd's socket utilities do); where that is not possible, the path is refused
// with one line.
//
// A server never takes a live socket over: listenUnix connects first, and only a socket nobody
// answers on (ECONNREFUSED: its server died) is removed and bound again.

import { closeSync, constants, existsSync, lstatSync, openSync, unlinkSync } from "node:fs";
import { connect, type Server, type Socket } from "node:net";
import { basename, dirname, resolve } from "node:path";

/** The longest path a sockaddr_un takes with its NUL. */
export const SUN_PATH_MAX = 107;

/** A socket path that cannot be used; the message is one line for users. */
export class UnixSocketError extends Error {
  override name = "UnixSocketError";
}

/** A server already answers on the path. */
export class SocketInUseError extends UnixSocketError {
  override name = "SocketInUseError";
  constructor(readonly path: string) {
    super(`${path}: a server is already listening on this socket`);
  }
}

/** Whether `path` fits a sockaddr_un as it is (what C clients such as Xen's need). */
export function fitsSunPath(path: string): boolean {
  return Buffer.byteLength(path) <= SUN_PATH_MAX;
}

interface SocketAddress {
  /** What to give bind or connect. */
  address: string;
  /** Closes the directory descriptor the address goes through, if any (idempotent). */
  release(): void;
}

/** The address through which `path` can be bound or connected. */
function socketAddress(path: string): SocketAddress {
  if (fitsSunPath(path)) return { address: path, release: () => {} };
  const tooLong = `${path}: a unix socket path may be at most ${SUN_PATH_MAX} bytes, this one is ${Buffer.byteLength(path)}; use a shorter one`;
  const name = basename(path);
  if (process.platform !== "linux") throw new UnixSocketError(tooLong);
  let fd: number;
  try {
    fd = openSync(dirname(resolve(path)), constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw new UnixSocketError(`${path}: cannot open its directory: ${(e as Error).message}`);
  }
  const address = `/proc/self/fd/${fd}/${name}`;
  if (!fitsSunPath(address) || !existsSync(`/proc/self/fd/${fd}`)) {
    closeSync(fd);
    throw new UnixSocketError(tooLong);
  }
  let open = true;
  return {
    address,
    release: () => {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/**
 * Connects to the unix socket at `path`, whatever its length. Throws UnixSocketError at once for
 * a path that cannot be reached; connection errors come as the socket's 'error' event.
 */
export function connectUnix(path: string): Socket {
  const addr = socketAddress(path);
  const sock = connect(addr.address);
  sock.once("connect", addr.release);
  sock.once("error", addr.release);
  sock.once("close", addr.release);
  return sock;
}

/** What sits at `path`: nothing, a socket a server answers on, or a socket left by a dead server. */
export function probeUnix(path: string): Promise<"absent" | "live" | "stale"> {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return Promise.resolve("absent");
    return Promise.reject(new UnixSocketError(`${path}: ${(e as Error).message}`));
  }
  if (!st.isSocket()) return Promise.reject(new UnixSocketError(`${path} exists and is not a socket`));
  return new Promise((resolvePromise, reject) => {
    let sock: Socket;
    try {
      sock = connectUnix(path);
    } catch (e) {
      reject(e);
      return;
    }
    sock.once("connect", () => {
      sock.destroy();
      resolvePromise("live");
    });
    sock.once("error", (e: NodeJS.ErrnoException) => {
      sock.destroy();
      if (e.code === "ECONNREFUSED") resolvePromise("stale");
      else if (e.code === "ENOENT") resolvePromise("absent");
      // A full backlog: someone is listening.
      else if (e.code === "EAGAIN") resolvePromise("live");
      else reject(new UnixSocketError(`${path}: ${e.message}`));
    });
  });
}

/**
 * Makes `server` listen on the unix socket `path`, whatever its length. A live socket there is
 * refused (SocketInUseError), a stale one replaced, anything else at the path refused.
 */
export async function listenUnix(server: Server, path: string): Promise<void> {
  const state = await probeUnix(path);
  if (state === "live") throw new SocketInUseError(path);
  if (state === "stale") {
    try {
      unlinkSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new UnixSocketError(`${path}: cannot remove the stale socket: ${(e as Error).message}`);
    }
  }
  const addr = socketAddress(path);
  await new Promise<void>((resolvePromise, reject) => {
    const failed = (e: NodeJS.ErrnoException) => {
      addr.release();
      reject(e.code === "EADDRINUSE" ? new SocketInUseError(path) : new UnixSocketError(`${path}: cannot listen: ${e.message}`));
    };
    server.once("error", failed);
    server.listen(addr.address, () => {
      server.off("error", failed);
      resolvePromise();
    });
  });
  // libuv unlinks the name it bound when the server closes: keep the directory reachable until then.
  server.once("close", addr.release);
}
