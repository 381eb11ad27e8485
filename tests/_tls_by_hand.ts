/**
 * TLS and TCP by hand, for hostile tests of the CA service and peer
 * listeners: a real ClientHello to cut in half, and a plain TCP connection
 * held open to see when the other side closes it.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";

/**
 * The bytes of a real TLS ClientHello (what node:tls sends first, ALPN
 * `alpn` offered: e2e-chat/1 unless told), captured by a plain TCP server of our own.
 */
export function captureClientHello(alpn: string[] = ["e2e-chat/1"]): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => {
      socket.once("data", (bytes: Uint8Array) => {
        resolve(new Uint8Array(bytes));
        socket.destroy();
        server.close();
      });
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const client = tls.connect({
        host: "127.0.0.1",
        port: (server.address() as net.AddressInfo).port,
        rejectUnauthorized: false,
        ALPNProtocols: alpn,
      });
      client.on("error", () => {});
    });
  });
}

/** A plain TCP connection that may be held open; `closed` resolves when the peer closes it. */
export interface HeldConnection {
  /** The connection. */
  conn: Deno.TcpConn;
  /** Resolves with the time the other side closed (or reset) it. */
  closed: Promise<number>;
  /** Whether the other side closed it. */
  isClosed(): boolean;
  /** Whether the other side sent a byte: a server that took it from the kernel's queue. */
  replied(): boolean;
  /** Closes our side. */
  close(): void;
}

/** Opens a TCP connection to 127.0.0.1:`port`, writes `bytes` (if any) and keeps reading. */
export async function holdTcp(port: number, bytes?: Uint8Array): Promise<HeldConnection> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  if (bytes?.length) await conn.write(bytes).catch(() => 0);
  let done = false;
  let replied = false;
  const closed = (async () => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      while (await conn.read(buffer) !== null) replied = true; // drain whatever it says
    } catch { /* reset */ }
    done = true;
    return Date.now();
  })();
  return {
    conn,
    closed,
    isClosed: () => done,
    replied: () => replied,
    close: () => {
      try {
        conn.close();
      } catch { /* closed already */ }
    },
  };
}
