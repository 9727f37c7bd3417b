// xenstored's unix socket: each accepted client is a privileged (dom0) connection. Replies are
// written in batches, one socket write per batch; a client that stops reading is not read from
// either once its unsent output passes the daemon's backlog bound.

import { chmodSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { listenUnix } from "../../util/unix_socket.ts";
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

/**
 * Listens on `path` (mode 0600, as C xenstored makes its socket). A socket another daemon answers
 * on is refused (SocketInUseError); a stale one is replaced.
 */
export async function listenXenstored(daemon: Xenstored, path: string): Promise<Server> {
  const server = createServer((sock) => {
    serveSocket(daemon, sock);
  });
  await listenUnix(server, path);
  chmodSync(path, 0o600);
  return server;
}
