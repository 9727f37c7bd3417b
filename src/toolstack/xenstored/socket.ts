// xenstored's unix socket: each accepted client is a privileged (dom0) connection. Replies are
// written in batches, one socket write per batch; a client that stops reading is not read from
// either once its unsent output passes the daemon's backlog bound.

import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import type { Xenstored, XsConnection, XsTransport } from "./daemon.ts";

/** Bytes Node may hold for a socket before the daemon keeps output queued itself. */
const SOCKET_HIGH_WATER = 256 * 1024;

class SocketTransport implements XsTransport {
  constructor(private readonly sock: Socket) {}

  write(bytes: Uint8Array): number {
    if (this.sock.destroyed) return bytes.length;
    if (this.sock.writableLength >= SOCKET_HIGH_WATER) return 0;
    this.sock.write(bytes);
    return bytes.length;
  }

  resume(): void {
    if (!this.sock.destroyed) this.sock.resume();
  }

  close(): void {
    if (!this.sock.destroyed) this.sock.end();
  }
}

/** Serves one accepted socket. */
export function serveSocket(daemon: Xenstored, sock: Socket): XsConnection {
  const conn = daemon.connectSocket(new SocketTransport(sock));
  sock.on("data", (chunk: Buffer) => {
    conn.feed(chunk);
    if (!conn.wantsInput && !conn.closed) sock.pause();
  });
  sock.on("drain", () => conn.writable());
  const gone = (): void => {
    if (!conn.closed) conn.close();
  };
  sock.on("end", gone);
  sock.on("close", gone);
  sock.on("error", gone);
  return conn;
}

/** Removes a stale socket left by an earlier daemon; refuses to remove anything else. */
function removeStaleSocket(path: string): void {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  unlinkSync(path);
}

/** Listens on `path` (mode 0600, as C xenstored makes its socket). */
export async function listenXenstored(daemon: Xenstored, path: string): Promise<Server> {
  removeStaleSocket(path);
  const server = createServer((sock) => {
    serveSocket(daemon, sock);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
  chmodSync(path, 0o600);
  return server;
}
