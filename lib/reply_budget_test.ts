import assert from "node:assert/strict";
import https from "node:https";
import type { Socket } from "node:net";
import { join } from "node:path";
import { withTempDir } from "./_test_util.ts";
import { openssl } from "./openssl.ts";
import { REPLY_HEAD_BYTES, ReplyBudget } from "./reply_budget.ts";

const MiB = 1024 * 1024;

/** A CA and a server certificate for 127.0.0.1 it issued, made by the real openssl. */
async function credentials(dir: string): Promise<{ ca: string; key: string; cert: string }> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  const cwd = { cwd: dir };
  await openssl(
    ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=ca"],
    cwd,
  );
  await openssl(
    ["req", "-new", ...ec, "-keyout", "key.pem", "-out", "req.pem", "-subj", "/CN=s"],
    cwd,
  );
  await Deno.writeTextFile(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1\n");
  await openssl([
    "x509",
    "-req",
    "-in",
    "req.pem",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-days",
    "1",
    "-extfile",
    "ext.cnf",
    "-out",
    "cert.pem",
  ], cwd);
  const read = (name: string) => Deno.readTextFile(join(dir, name));
  return { ca: await read("ca.pem"), key: await read("key.pem"), cert: await read("cert.pem") };
}

interface Served {
  port: number;
  budget: ReplyBudget;
  closedBy: number[];
  /** The server side of every connection, for what node:tls says it holds. */
  sockets: Set<Socket>;
  /** A connection of Deno's own TLS, which reads only when asked to. */
  connect(): Promise<Deno.TlsConn>;
  close(): Promise<void>;
}

// An HTTPS server whose every reply is a body of `?mib=N` MiB, counted against `budget`.
async function serve(dir: string, maxBytes: number, fn: (s: Served) => Promise<void>) {
  const { ca, key, cert } = await credentials(dir);
  const closedBy: number[] = [];
  const budget = new ReplyBudget(maxBytes, { onClose: (_, held) => closedBy.push(held) });
  const sockets = new Set<Socket>();
  const server = https.createServer({ key, cert }, (req, res) => {
    const mib = Number(new URL(req.url ?? "/", "https://x").searchParams.get("mib") ?? "0");
    const body = new Uint8Array(mib * MiB);
    if (!budget.admit(req.socket, res, body.length)) return;
    res.writeHead(200, { "content-length": String(body.length) });
    res.end(body);
  });
  server.on("secureConnection", (s: Socket) => {
    sockets.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const conns: Deno.TlsConn[] = [];
  try {
    await fn({
      port,
      budget,
      closedBy,
      sockets,
      connect: async () => {
        const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [ca] });
        conns.push(conn);
        return conn;
      },
      close: async () => {
        for (const c of conns.splice(0)) c.close();
        await until(() => [...sockets].every((s) => s.destroyed), "a socket stays open");
      },
    });
  } finally {
    for (const c of conns) c.close();
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

async function until(ok: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new assert.AssertionError({ message: what });
    await new Promise((r) => setTimeout(r, 20));
  }
}

function ask(conn: Deno.TlsConn, mib: number, times = 1): Promise<number> {
  return conn.write(
    new TextEncoder().encode(`GET /?mib=${mib} HTTP/1.1\r\nHost: x\r\n\r\n`.repeat(times)),
  );
}

// Reads until `bytes` came (or the connection ended); how many came.
async function readAll(conn: Deno.TlsConn, bytes: number): Promise<number> {
  const buffer = new Uint8Array(MiB);
  let got = 0;
  while (got < bytes) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) break;
    got += n;
  }
  return got;
}

Deno.test("ReplyBudget holds a reply the client does not read (node:tls reports it unwritten) and releases it once read", async () => {
  await withTempDir((dir) =>
    serve(dir, 64 * MiB, async ({ budget, connect, sockets }) => {
      const conn = await connect();
      await ask(conn, 16);
      await until(() => budget.held > 0, "nothing counted");
      await new Promise((r) => setTimeout(r, 500));
      // More than the kernel takes for a loopback connection: Deno's TLS socket still has it.
      assert.equal(budget.held, 16 * MiB + REPLY_HEAD_BYTES);
      const [socket] = sockets;
      assert.ok(socket.writableLength >= 16 * MiB, `writableLength ${socket.writableLength}`);
      assert.ok(await readAll(conn, 16 * MiB) >= 16 * MiB);
      await until(() => budget.held === 0, `${budget.held} bytes still counted`);
      assert.equal(socket.writableLength, 0);
      assert.equal(budget.peak, 16 * MiB + REPLY_HEAD_BYTES);
    })
  );
});

Deno.test("ReplyBudget releases replies pipelined behind an unread one when the client goes (they get no finish and no close)", async () => {
  await withTempDir((dir) =>
    serve(dir, 64 * MiB, async ({ budget, connect, close }) => {
      const conn = await connect();
      await ask(conn, 4, 6);
      await until(() => budget.held >= 6 * 4 * MiB - 8 * MiB, `${budget.held} counted`);
      await close();
      await until(() => budget.held === 0, `${budget.held} bytes still counted after the close`);
    })
  );
});

Deno.test("ReplyBudget closes the connection holding the most unread bytes to stay within the budget, and a reading client is served", async () => {
  await withTempDir((dir) =>
    serve(dir, 24 * MiB, async ({ budget, closedBy, connect, close }) => {
      // Two clients that read nothing: 4 × 4 MiB asked by the first, then 2 × 4 MiB by the second.
      const first = await connect();
      await ask(first, 4, 4);
      await until(() => budget.held >= 12 * MiB, `${budget.held} counted for the first`);
      const second = await connect();
      await ask(second, 4, 2);
      await new Promise((r) => setTimeout(r, 500));
      // A client that reads asks for 8 MiB: it is served, and the biggest holder is closed.
      const reader = await connect();
      await ask(reader, 8);
      assert.ok(await readAll(reader, 8 * MiB) >= 8 * MiB, "the reading client was not served");
      assert.ok(closedBy.length >= 1, "no connection closed");
      assert.ok(closedBy[0] >= 12 * MiB, `closed one holding ${closedBy[0]} bytes first`);
      assert.ok(budget.peak <= budget.maxBytes, `peak ${budget.peak}`);
      await close();
      await until(() => budget.held === 0, `${budget.held} bytes still counted`);
    })
  );
});

Deno.test("ReplyBudget closes a connection whose one reply is larger than the whole budget", async () => {
  await withTempDir((dir) =>
    serve(dir, 2 * MiB, async ({ budget, closedBy, connect }) => {
      const conn = await connect();
      await ask(conn, 4);
      assert.equal(await readAll(conn, 1), 0);
      assert.deepEqual(closedBy, [0]);
      assert.equal(budget.held, 0);
    })
  );
});

Deno.test("ReplyBudget takes only a whole number of bytes above 0", () => {
  for (const bad of [0, -1, 1.5, NaN]) {
    assert.throws(() => new ReplyBudget(bad), RangeError);
  }
});
