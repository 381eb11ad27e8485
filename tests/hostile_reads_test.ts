/**
 * The CA service against clients that send what it does not read: in Deno 2.9.6 a paused
 * node:tls socket reads on into memory (lib/tls.ts `pauseReading`), and node's HTTP server
 * pauses a connection whenever it stops consuming it — a request body no handler reads, replies
 * backed up behind a client that reads none. In process: real TLS on 127.0.0.1, real sockets,
 * the real openssl. What the client manages to write before its writes stall is what the
 * service took in (a few MiB fit in the kernel's buffers).
 *
 * @module
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import { pauseReading, resumeReading } from "../lib/tls.ts";
import { waitUntil, within } from "./_harness.ts";
import { type Member, withServiceWorld } from "./_hostile_helpers.ts";

/** A TLS connection whose replies are collected in `text()`; `closed` resolves when it closes. */
interface Conn {
  socket: tls.TLSSocket;
  text(): string;
  closed: Promise<void>;
}

async function connect(port: number, anchor: string, member?: Member): Promise<Conn> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    ca: anchor,
    cert: member?.cert,
    key: member?.key,
    rejectUnauthorized: false,
  });
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  let text = "";
  socket.on("data", (d: Uint8Array) => text += new TextDecoder("latin1").decode(d));
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return { socket, text: () => text, closed };
}

const MiB = 1024 * 1024;
const FLOOD_BYTES = 64 * MiB;

// Writes up to `total` bytes in 1 MiB chunks until a write has not gone out for `stallMs` or the
// connection closes: the bytes written.
async function floodUntilStalled(
  socket: tls.TLSSocket,
  total: number,
  stallMs = 2_000,
): Promise<number> {
  const chunk = new Uint8Array(MiB).fill(0x41);
  const closed = new Promise<boolean>((resolve) => {
    if (socket.destroyed) resolve(false);
    socket.once("close", () => resolve(false));
  });
  let drained = 0;
  while (drained < total) {
    const written = new Promise<boolean>((resolve) => socket.write(chunk, (e) => resolve(!e)));
    if (!await within(Promise.race([written, closed]), stallMs, false)) break;
    drained += chunk.length;
  }
  return drained;
}

// A body the client says is 100 GB: sent for as long as the service takes it.
const ENDLESS = "content-length: 100000000000\r\n";

Deno.test("a request body the service does not read is not taken into its memory, and its connection is closed after the reply: a GET with a body, a refusal before the body, a member's long poll", async () => {
  await withServiceWorld(async ({ service, anchor, logs, member }) => {
    const alice = await member("alice");
    // [what, as whom, request head, the reply's log line, the reply (null: flood before it)]
    const cases: Array<[string, Member | undefined, string, RegExp, string | null]> = [
      [
        "a GET with a body, no certificate",
        undefined,
        `GET /v1/ca HTTP/1.1\r\nHost: ca\r\n${ENDLESS}\r\n`,
        / GET \/v1\/ca 200 - /,
        "-----END CERTIFICATE-----\n",
      ],
      [
        "a renewal without a certificate, refused before its body",
        undefined,
        `POST /v1/renew HTTP/1.1\r\nHost: ca\r\ncontent-type: application/json\r\n${ENDLESS}\r\n`,
        / POST \/v1\/renew 401 ERR_UNAUTHENTICATED - /,
        JSON.stringify({
          error: { code: "ERR_UNAUTHENTICATED", message: "This route needs a client certificate" },
        }) + "\n",
      ],
      [
        "alice's long poll with a body",
        alice,
        `GET /v1/rendezvous?wait=2 HTTP/1.1\r\nHost: ca\r\n${ENDLESS}\r\n`,
        / GET \/v1\/rendezvous 200 alice /,
        null,
      ],
    ];
    for (const [what, as, head, logged, reply] of cases) {
      const conn = await connect(service.port, anchor, as);
      try {
        conn.socket.write(head);
        if (reply !== null) {
          await waitUntil(() => conn.text().endsWith(reply), `${what}: no reply`);
        }
        // Before: 2.6 GB in 6 s for the GET without a certificate, 4.4 GB in 10 s for the poll.
        const drained = await floodUntilStalled(conn.socket, FLOOD_BYTES);
        assert.ok(drained < FLOOD_BYTES / 2, `${what}: the service took ${drained} bytes`);
        if (reply !== null) assert.match(conn.text(), /\r\nconnection: close\r\n/i, what);
        await waitUntil(() => logs.some((l) => logged.test(l)), `${what}: no reply logged`);
        assert.ok(
          await within(conn.closed.then(() => true), 10_000, false),
          `${what}: the connection was kept open`,
        );
      } finally {
        conn.socket.destroy();
      }
    }
    // A kept-alive client that sends requests without bodies is served as before.
    const conn = await connect(service.port, anchor);
    try {
      for (let i = 1; i <= 3; i++) {
        conn.socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n");
        await waitUntil(() => conn.text().split("HTTP/1.1 200 OK").length > i, `reply ${i}`);
      }
      assert.doesNotMatch(conn.text(), /connection: close/i);
    } finally {
      conn.socket.destroy();
    }
  });
});

Deno.test("a member who sends requests behind replies it does not read cannot make the service take in what it sends next", async () => {
  await withServiceWorld(async ({ service, anchor, logs, member }) => {
    const [alice, bob] = await Promise.all([member("alice"), member("bob")]);
    const item = new Uint8Array(8 * MiB).fill(1);
    const poster = await connect(service.port, anchor, alice);
    poster.socket.write(
      `POST /v1/mailbox/bob HTTP/1.1\r\nHost: ca\r\ncontent-type: application/cms\r\n` +
        `content-length: ${item.length}\r\nconnection: close\r\n\r\n`,
    );
    poster.socket.write(item);
    await poster.closed;
    const id = (JSON.parse(poster.text().split("\r\n\r\n")[1]) as { id: string }).id;
    const items = `GET /v1/mailbox/items/${id} HTTP/1.1\r\nHost: ca\r\n\r\n`.repeat(2);
    const served = () => logs.filter((l) => / GET \/v1\/mailbox\/items\/\S+ 200 bob /.test(l));
    const cas = () => logs.filter((l) => / GET \/v1\/ca 200 - /.test(l));
    const ok = (conn: Conn) => conn.text().split("HTTP/1.1 200 OK").length - 1;
    // Bob reads nothing: two replies of 8 MiB back up, and the service pauses the connection.
    // Once he reads them, it reads his requests again.
    const reader = await connect(service.port, anchor, bob);
    try {
      assert.ok(pauseReading(reader.socket), "no TCP socket under the client's TLS");
      reader.socket.write(items);
      await waitUntil(() => served().length === 2, `${served().length} items served`);
      reader.socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n");
      await waitUntil(() => cas().length === 1, "no third reply");
      resumeReading(reader.socket);
      await waitUntil(() => ok(reader) === 3, `${ok(reader)} replies read`);
      reader.socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n");
      await waitUntil(
        () => ok(reader) === 4,
        "the service stopped reading a connection that reads",
      );
    } finally {
      reader.socket.destroy();
    }
    const conn = await connect(service.port, anchor, bob);
    try {
      assert.ok(pauseReading(conn.socket), "no TCP socket under the client's TLS");
      conn.socket.write(items);
      await waitUntil(() => served().length === 4, `${served().length} items served`);
      conn.socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n");
      await waitUntil(() => cas().length === 3, "no third reply");
      // Before: 3.5 GB in 11 s, and on for as long as bob sent.
      const drained = await floodUntilStalled(conn.socket, FLOOD_BYTES);
      assert.ok(drained < FLOOD_BYTES / 2, `the service took ${drained} bytes`);
      // And the idle limit ends it: nothing moves either way.
      assert.ok(
        await within(conn.closed.then(() => true), 10_000, false),
        "the connection was kept open",
      );
    } finally {
      conn.socket.destroy();
    }
  }, { idleTimeoutMs: 3_000 });
});
