/**
 * The CA service against hostile clients on the network, in process (real
 * TLS on 127.0.0.1, real sockets, the real openssl): what one connection or one
 * member can make the service hold. tests/flood_test.ts covers floods of
 * connections and trickled requests; tests/ca_service_test.ts the API's refusals.
 *
 * @module
 */
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { CaPaths } from "../ca/home.ts";
import { DEFAULT_MAILBOX_LIMITS } from "../ca/mailbox.ts";
import { RELAY_BUFFER_BYTES } from "../ca/relay.ts";
import { CaClient } from "../client/ca_client.ts";
import { Chat } from "../client/chat.ts";
import type { CoreEvent } from "../client/events.ts";
import { enroll } from "../client/identity.ts";
import { parseInvite } from "../lib/invite.ts";
import { Revocation } from "../client/revocation.ts";
import { E2eError } from "../lib/errors.ts";
import { trustAnchor } from "../lib/tls.ts";
import {
  MAILBOX_INFLIGHT_BYTES,
  MAILBOX_INFLIGHT_ITEMS_PER_MEMBER,
  MAX_PIPELINED,
} from "../ca/service.ts";
import { sleep, waitUntil, within } from "./_harness.ts";
import { type Member, withServiceWorld } from "./_hostile_helpers.ts";
import { requestWithKey } from "./_tls13_by_hand.ts";
import { runCa } from "./_helpers.ts";
import { assertSuccess, makeInvite, withService } from "./_service_helpers.ts";
import { crlSignedAt, keepServiceKey, pem, poseAsService } from "./_impostor.ts";

/** A member's key and certificate, PEM. */

/**
 * A connection whose replies nobody looks at until {@linkcode Deaf.listen} is called (node:tls
 * still reads them in): then `replies` counts the replies it was sent, and `closed` resolves
 * once the other side has ended it. For a connection that truly reads nothing, see
 * `Deno.connectTls` below.
 */
interface Deaf {
  socket: net.Socket;
  listen(): { closed: Promise<boolean>; replies(): number; text(): string };
}

function deaf(socket: net.Socket): Deaf {
  socket.on("error", () => {});
  socket.pause();
  return {
    socket,
    listen: () => {
      let text = "";
      socket.on("data", (d: Uint8Array) => text += new TextDecoder().decode(d));
      const closed = new Promise<boolean>((resolve) => socket.once("close", () => resolve(true)));
      socket.resume();
      return { closed, replies: () => text.split("HTTP/1.1 200 ").length - 1, text: () => text };
    },
  };
}

async function connectTls(port: number, ca: string, member?: Member): Promise<Deaf> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    ca,
    cert: member?.cert,
    key: member?.key,
    rejectUnauthorized: false,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  return deaf(socket);
}

async function connectTcp(port: number): Promise<Deaf> {
  const socket = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return deaf(socket);
}

const PIPELINED = 2_000;

Deno.test("a connection that sends 2,000 requests at once and reads no reply gets at most 8 served, then is closed", async () => {
  await withServiceWorld(async ({ service, ca, logs }) => {
    const conn = await connectTls(service.port, ca.certificate.pem);
    try {
      // 64 KiB of requests: before the cap, all 2,000 were served (+230 MB in one process).
      conn.socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n".repeat(PIPELINED));
      await waitUntil(() => logs.some((l) => / GET \/v1\/ca 200 /.test(l)), "no request served");
      await sleep(1_000);
      const heard = conn.listen();
      assert.ok(await within(heard.closed, 10_000, false), "the service kept the connection open");
      const served = logs.filter((l) => / GET \/v1\/ca 200 /.test(l)).length;
      assert.ok(served <= MAX_PIPELINED, `${served} of ${PIPELINED} pipelined requests served`);
      assert.ok(heard.replies() <= MAX_PIPELINED, `${heard.replies()} replies sent`);
      assert.ok(
        logs.includes(
          `e2e-chat-ca: 127.0.0.1 closed: more than ${MAX_PIPELINED} requests wait for replies`,
        ),
        logs.join("\n"),
      );
    } finally {
      conn.socket.destroy();
    }
    // A kept-alive connection that reads each reply before it asks again is served as long as it likes.
    const replies = await keptAlive(service.port, ca.certificate.pem, MAX_PIPELINED * 2);
    assert.equal(replies.filter((r) => r.startsWith("HTTP/1.1 200 ")).length, MAX_PIPELINED * 2);
  });
});

Deno.test("the CRL port answers one request per connection: 2,000 sent at once get one served, then the connection is closed", async () => {
  await withServiceWorld(async ({ service, logs }) => {
    const conn = await connectTcp(Number(new URL(service.crlUrl).port));
    try {
      conn.socket.write("GET /crl.der HTTP/1.1\r\nHost: ca\r\n\r\n".repeat(PIPELINED));
      const line = / GET \/crl\.der 200 \(crl listener\)$/;
      await waitUntil(() => logs.some((l) => line.test(l)), "no request served");
      await sleep(1_000);
      const heard = conn.listen();
      assert.ok(
        await within(heard.closed, 5_000, false),
        "the CRL listener kept the connection open",
      );
      const served = logs.filter((l) => line.test(l)).length;
      assert.equal(served, 1, `${served} of ${PIPELINED} pipelined CRL requests served`);
      assert.ok(heard.replies() <= 1, `${heard.replies()} replies sent`);
    } finally {
      conn.socket.destroy();
    }
  });
});

Deno.test("one member's stalled uploads cannot take the mailbox's memory for uploads from everyone: the others' posts go on", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [mallory, alice] = await Promise.all([member("mallory"), member("alice")]);
    await Promise.all(["bob", "carol"].map(member));
    const anchor = ca.certificate.pem;
    // Eight uploads of 8 MiB each, all but their last bytes sent, then held: the whole budget.
    const uploads = MAILBOX_INFLIGHT_BYTES / (8 * 1024 * 1024);
    const declared = DEFAULT_MAILBOX_LIMITS.maxItemBytes;
    const held: Deaf[] = [];
    try {
      for (let i = 0; i < uploads; i++) {
        const conn = await connectTls(service.port, anchor, mallory);
        held.push(conn);
        conn.socket.write(
          `POST /v1/mailbox/bob HTTP/1.1\r\nHost: ca\r\ncontent-type: application/cms\r\n` +
            `content-length: ${declared}\r\n\r\n`,
        );
        await new Promise((resolve) => conn.socket.write(new Uint8Array(8 * 1024 * 1024), resolve));
      }
      await sleep(1_000);
      const reply = await post(service.port, anchor, alice, "carol", new Uint8Array(1_000).fill(7));
      assert.match(reply, /^HTTP\/1\.1 200 /, reply);
      // Mallory's own uploads past two of the largest items at once are refused.
      const refused = logs.filter((l) => / POST \/v1\/mailbox\/bob 429 ERR_RATE_LIMITED /.test(l));
      assert.equal(refused.length, uploads - MAILBOX_INFLIGHT_ITEMS_PER_MEMBER, logs.join("\n"));
      const third = held[MAILBOX_INFLIGHT_ITEMS_PER_MEMBER].listen();
      await waitUntil(() => third.text().includes("}}\n"), "no reply to the third upload");
      assert.match(third.text(), /^HTTP\/1\.1 429 /);
      assert.deepEqual(JSON.parse(third.text().split("\r\n\r\n")[1]), {
        error: {
          code: "ERR_RATE_LIMITED",
          message: `Your transfers with the mailbox under way hold more than ${
            MAILBOX_INFLIGHT_ITEMS_PER_MEMBER * declared
          } bytes`,
        },
      });
    } finally {
      for (const conn of held) conn.socket.destroy();
    }
  });
});

// Deno's TLS sockets read on while paused: a connection the service does not read piles up in
// its memory whatever the client sends (a member waiting at the relay: 64 MB to 3.9 GB in 10 s).
const FLOOD_BYTES = 64 * 1024 * 1024;

Deno.test("a connection at the relay that sends bytes before its 101 is closed after 64 KiB: waiting, refused or not a member", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [alice] = await Promise.all([member("alice"), member("bob")]);
    const anchor = ca.certificate.pem;
    const offer = await request(service.port, anchor, alice, "POST", "/v1/rendezvous", {
      to: "bob",
    });
    const id = (JSON.parse(offer.split("\r\n\r\n")[1]) as { id: number }).id;
    const cases: Array<[string, Member | undefined, string, RegExp]> = [
      ["alice, waiting for bob", alice, `invitation=${id}`, / 101 alice .*\(waiting\)$/],
      ["alice, refused", alice, "invitation=999", / 404 ERR_NOT_FOUND - /],
      ["no certificate", undefined, `invitation=${id}`, / 401 ERR_UNAUTHENTICATED - /],
    ];
    for (const [who, as, query, answered] of cases) {
      const conn = await connectTls(service.port, anchor, as);
      try {
        conn.socket.write(
          `GET /v1/relay?${query} HTTP/1.1\r\nHost: ca\r\nConnection: Upgrade\r\n` +
            `Upgrade: e2e-chat-relay/1\r\n\r\n`,
        );
        await waitUntil(() => logs.some((l) => answered.test(l)), `${who}: no answer`);
        const drained = await flood(conn.socket, FLOOD_BYTES);
        assert.ok(
          drained < FLOOD_BYTES / 2,
          `${who}: the service took ${drained} bytes before a 101 and kept the connection`,
        );
      } finally {
        conn.socket.destroy();
      }
    }
  });
});

Deno.test("a spliced pair whose receiver reads nothing is closed once it took nothing held for it for the relay's stuck time, and its sender was not read meanwhile", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [alice, bob] = await Promise.all([member("alice"), member("bob")]);
    const anchor = ca.certificate.pem;
    const offer = await request(service.port, anchor, alice, "POST", "/v1/rendezvous", {
      to: "bob",
    });
    const id = (JSON.parse(offer.split("\r\n\r\n")[1]) as { id: number }).id;
    const upgrade = `GET /v1/relay?invitation=${id} HTTP/1.1\r\nHost: ca\r\n` +
      `Connection: Upgrade\r\nUpgrade: e2e-chat-relay/1\r\n\r\n`;
    const sender = await connectTls(service.port, anchor, alice);
    // Deno's own TLS connection, which reads only when asked (node:tls reads on while paused).
    const receiver = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: service.port,
      caCerts: [anchor],
      cert: bob.cert,
      key: bob.key,
    });
    try {
      sender.socket.write(upgrade);
      await waitUntil(() => logs.some((l) => / 101 alice .*\(waiting\)$/.test(l)), "no wait");
      await receiver.write(new TextEncoder().encode(upgrade));
      await waitUntil(() => logs.some((l) => / 101 bob .*\(spliced\)$/.test(l)), "no splice");
      const total = 8 * RELAY_BUFFER_BYTES;
      const drained = await flood(sender.socket, total);
      assert.ok(drained < total / 2, `the relay took ${drained} bytes bob never read`);
      await waitUntil(
        () =>
          logs.some((l) =>
            /^e2e-chat-ca: relay closed alice<->bob .*\(bob does not read\)$/.test(l)
          ),
        `no close in the log\n${logs.join("\n")}`,
      );
    } finally {
      sender.socket.destroy();
      receiver.close();
    }
  }, { relay: { stuckMs: 1_000 } });
});

Deno.test("a member who asks for its mailbox items on many connections and reads no reply has at most two held for it", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [mallory, alice] = await Promise.all([member("mallory"), member("alice")]);
    const anchor = ca.certificate.pem;
    const item = new Uint8Array(8 * 1024 * 1024).fill(1);
    const posted = await post(service.port, anchor, alice, "mallory", item);
    const id = (JSON.parse(posted.split("\r\n\r\n")[1]) as { id: string }).id;
    const asks = 6;
    const conns: Deno.TlsConn[] = [];
    try {
      for (let i = 0; i < asks; i++) {
        // Deno's own TLS connection, which reads only when asked (node:tls reads on while paused).
        const conn = await Deno.connectTls({
          hostname: "127.0.0.1",
          port: service.port,
          caCerts: [anchor],
          cert: mallory.cert,
          key: mallory.key,
        });
        conns.push(conn);
        await conn.write(
          new TextEncoder().encode(`GET /v1/mailbox/items/${id} HTTP/1.1\r\nHost: ca\r\n\r\n`),
        );
      }
      const path = new RegExp(` GET /v1/mailbox/items/${id} (\\d+)`);
      const answered = () => logs.filter((l) => path.test(l));
      await waitUntil(() => answered().length === asks, `${answered().length} answered`);
      const ok = answered().filter((l) => / 200 mallory /.test(l)).length;
      assert.ok(ok <= MAILBOX_INFLIGHT_ITEMS_PER_MEMBER, `${ok} of ${asks} items held for mallory`);
      assert.equal(
        answered().filter((l) => / 429 ERR_RATE_LIMITED - /.test(l)).length,
        asks - ok,
        logs.join("\n"),
      );
      const max = MAILBOX_INFLIGHT_ITEMS_PER_MEMBER * DEFAULT_MAILBOX_LIMITS.maxItemBytes;
      const refusal = await firstReply(conns, /^HTTP\/1\.1 429 /);
      assert.deepEqual(JSON.parse(refusal.split("\r\n\r\n")[1]), {
        error: {
          code: "ERR_RATE_LIMITED",
          message: `Your transfers with the mailbox under way hold more than ${max} bytes`,
        },
      });
    } finally {
      for (const conn of conns) conn.close();
    }
  });
});

// The first bytes of the first of `conns` whose reply matches `head`, read whole (a short reply).
async function firstReply(conns: Deno.TlsConn[], head: RegExp): Promise<string> {
  const buffer = new Uint8Array(16 * 1024);
  for (const conn of conns) {
    const n = await conn.read(buffer);
    const text = new TextDecoder().decode(buffer.subarray(0, n ?? 0));
    if (head.test(text)) return text;
  }
  throw new assert.AssertionError({ message: `no reply matched ${head}` });
}

Deno.test("a client that presents alice's certificate but signs the handshake with mallory's key is refused in the handshake (decrypt_error)", async () => {
  await withServiceWorld(async ({ service, logs, member }) => {
    const [alice, mallory] = await Promise.all([member("alice"), member("mallory")]);
    await member("bob");
    // The same hand-written client with alice's own key: served as alice (the client works).
    const honest = await requestWithKey(service.port, alice.cert, alice.key, "/v1/certs/bob");
    assert.match(honest.text, /^HTTP\/1\.1 200 /, JSON.stringify(honest));
    assert.ok(logs.some((l) => / GET \/v1\/certs\/bob 200 alice /.test(l)), logs.join("\n"));
    const forged = await requestWithKey(service.port, alice.cert, mallory.key, "/v1/certs/bob");
    assert.deepEqual(forged, { text: "", alert: 51 });
    assert.equal(logs.filter((l) => / GET \/v1\/certs\/bob /.test(l)).length, 1, logs.join("\n"));
  });
});

// Writes up to `total` bytes, 1 MiB at a time, each once the last one drained; how many
// drained before the other side closed the connection (or `total`).
async function flood(socket: net.Socket, total: number): Promise<number> {
  const chunk = new Uint8Array(1024 * 1024);
  let drained = 0;
  const closed = new Promise<void>((resolve) => {
    socket.once("close", () => resolve());
    socket.once("error", () => resolve());
  });
  while (drained < total && !socket.destroyed) {
    const written = new Promise<boolean>((resolve) => socket.write(chunk, (e) => resolve(!e)));
    const ok = await Promise.race([written, closed.then(() => false)]);
    if (!ok) break;
    drained += chunk.length;
  }
  return drained;
}

// One request on a connection of its own, with `json` as its body: the reply's head and body.
async function request(
  port: number,
  ca: string,
  member: Member,
  method: string,
  path: string,
  json: unknown,
): Promise<string> {
  const conn = await connectTls(port, ca, member);
  const heard = conn.listen();
  const body = JSON.stringify(json);
  conn.socket.write(
    `${method} ${path} HTTP/1.1\r\nHost: ca\r\ncontent-type: application/json\r\n` +
      `content-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
  );
  await within(heard.closed, 10_000, false);
  conn.socket.destroy();
  return heard.text();
}

// POST /v1/mailbox/TO with `item` as `member`, on a connection of its own: the reply's head and body.
async function post(
  port: number,
  ca: string,
  member: Member,
  to: string,
  item: Uint8Array,
): Promise<string> {
  const conn = await connectTls(port, ca, member);
  const heard = conn.listen();
  conn.socket.write(
    `POST /v1/mailbox/${to} HTTP/1.1\r\nHost: ca\r\ncontent-type: application/cms\r\n` +
      `content-length: ${item.length}\r\nconnection: close\r\n\r\n`,
  );
  conn.socket.write(item);
  await within(heard.closed, 10_000, false);
  conn.socket.destroy();
  return heard.text();
}

// `count` GET /v1/ca on one kept-alive connection, each sent once the previous reply is in.
async function keptAlive(port: number, ca: string, count: number): Promise<string[]> {
  const socket = tls.connect({ host: "127.0.0.1", port, ca, rejectUnauthorized: false });
  socket.on("error", () => {});
  try {
    let text = "";
    socket.on("data", (d: Uint8Array) => text += new TextDecoder().decode(d));
    const END = "-----END CERTIFICATE-----\n";
    for (let i = 1; i <= count; i++) {
      socket.write("GET /v1/ca HTTP/1.1\r\nHost: ca\r\n\r\n");
      await waitUntil(() => text.split(END).length > i, `reply ${i} of ${count}`, 10_000);
    }
    return text.split(END).slice(0, count);
  } finally {
    socket.destroy();
  }
}

const MiB = 1024 * 1024;

// A connection of Deno's own TLS as `member` (it reads only when asked), with `path` asked
// `times` times at once.
async function askUnread(
  port: number,
  ca: string,
  member: Member,
  path: string,
  times: number,
): Promise<Deno.TlsConn> {
  const conn = await Deno.connectTls({
    hostname: "127.0.0.1",
    port,
    caCerts: [ca],
    cert: member.cert,
    key: member.key,
  });
  await conn.write(
    new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ca\r\n\r\n`.repeat(times)),
  );
  return conn;
}

// GET `path` as `member`, reading the whole reply: its status line and body length.
async function fetchWhole(
  port: number,
  ca: string,
  member: Member,
  path: string,
): Promise<{ status: string; length: number }> {
  const conn = await askUnread(port, ca, member, path, 1);
  try {
    const buffer = new Uint8Array(MiB);
    let head = "";
    let body = -1;
    let length = 0;
    while (body < 0 || body < length) {
      const n = await conn.read(buffer);
      if (n === null) return { status: "(closed)", length: 0 };
      if (body >= 0) {
        body += n;
        continue;
      }
      head += new TextDecoder("latin1").decode(buffer.subarray(0, n));
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) continue;
      length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? "0");
      body = head.length - end - 4;
    }
    return { status: head.slice(0, head.indexOf("\r\n")), length: body };
  } finally {
    conn.close();
  }
}

Deno.test("members who ask for mailbox items and read nothing cannot make the service hold more than its budget for unread replies: the biggest holders are closed, a reading member is served, and the count returns to zero", async () => {
  const budget = 20 * MiB;
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const anchor = ca.certificate.pem;
    const hogs = await Promise.all(["hog1", "hog2", "hog3"].map(member));
    const [alice, bob] = await Promise.all([member("alice"), member("bob")]);
    const item = new Uint8Array(8 * MiB).fill(1);
    const ids = new Map<string, string>();
    for (const [from, to] of [...hogs.map((h) => [alice, h]), [bob, alice]]) {
      const posted = await post(service.port, anchor, from, to.name, item);
      assert.match(posted, /^HTTP\/1\.1 200 /, posted);
      ids.set(to.name, (JSON.parse(posted.split("\r\n\r\n")[1]) as { id: string }).id);
    }
    const conns: Deno.TlsConn[] = [];
    try {
      // Each hog asks for its 8 MiB item twice on one connection and reads nothing: the second
      // reply waits behind the first whatever the kernel took, so each holds 8 MiB at least.
      for (const hog of hogs) {
        const path = `/v1/mailbox/items/${ids.get(hog.name)}`;
        conns.push(await askUnread(service.port, anchor, hog, path, 2));
        const answered = new RegExp(` GET ${path} 200 ${hog.name} `);
        await waitUntil(
          () => logs.filter((l) => answered.test(l)).length === 2,
          `${hog.name} not answered\n${logs.join("\n")}`,
        );
        assert.ok(service.unreadReplies.held <= budget, `${service.unreadReplies.held} held`);
      }
      const closed = new RegExp(
        `^e2e-chat-ca: 127\\.0\\.0\\.1 closed: unread replies on all connections reached ` +
          `${budget} bytes, and it held (\\d+)$`,
      );
      assert.ok(logs.some((l) => closed.test(l)), logs.join("\n"));
      // A member who reads gets its 8 MiB item meanwhile.
      const read = await fetchWhole(
        service.port,
        anchor,
        alice,
        `/v1/mailbox/items/${ids.get("alice")}`,
      );
      assert.deepEqual(read, { status: "HTTP/1.1 200 OK", length: 8 * MiB });
      const { held, peak, maxBytes } = service.unreadReplies;
      assert.equal(maxBytes, budget);
      assert.ok(peak <= budget && peak > 8 * MiB, `peak ${peak}, held ${held}`);
    } finally {
      for (const conn of conns) conn.close();
    }
    await waitUntil(
      () => service.unreadReplies.held === 0,
      `${service.unreadReplies.held} bytes still counted`,
    );
  }, { unreadBytes: budget });
});

Deno.test("a member who asks for its item twice on one connection and hangs up unread, again and again, keeps nothing held and can fetch it", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [mallory, alice] = await Promise.all([member("mallory"), member("alice")]);
    const anchor = ca.certificate.pem;
    const posted = await post(service.port, anchor, alice, "mallory", new Uint8Array(8 * MiB));
    const path = `/v1/mailbox/items/${
      (JSON.parse(posted.split("\r\n\r\n")[1]) as { id: string }).id
    }`;
    const answered = new RegExp(` GET ${path} (\\d+ \\S+) `);
    for (let round = 1; round <= 3; round++) {
      const conn = await askUnread(service.port, anchor, mallory, path, 2);
      await waitUntil(
        () => logs.filter((l) => answered.test(l)).length === 2 * round,
        `round ${round} not answered`,
      );
      conn.close();
      await waitUntil(() => service.unreadReplies.held === 0, `round ${round}: replies held`);
    }
    // Before, the reply waiting behind the first was never released: mallory got 429 from the
    // third round on, for good.
    const statuses = logs.filter((l) => answered.test(l)).map((l) => answered.exec(l)![1]);
    assert.deepEqual(statuses, Array(6).fill("200 mallory"));
    const read = await fetchWhole(service.port, anchor, mallory, path);
    assert.deepEqual(read, { status: "HTTP/1.1 200 OK", length: 8 * MiB });
  });
});

Deno.test("a client holding a CRL that lists the CA service's own TLS certificate refuses that service (directory and relay), yet still fetches the CRL from it; one holding none yet fetches it first", async () => {
  await withServiceWorld(async ({ ca, anchor, member }) => {
    const alice = await member("alice");
    // The service's certificate and key, kept by someone after the certificate was revoked (a
    // superseded one is on the CRL the same way); the service replaces it within seconds.
    const kept = await keepServiceKey(ca.paths);
    await ca.revoke(kept.serial);
    // That someone serves the CA's CRL (it is public), and refuses the rest.
    const impostor = await poseAsService(kept, async (req, res) => {
      req.resume();
      if (req.url !== "/v1/crl") return void res.writeHead(404).end();
      pem(res, await Deno.readTextFile(ca.paths.crl));
    });
    const url = impostor.url;
    const pinned = trustAnchor(anchor);
    const client = new CaClient(url, pinned, alice);
    let fetched = 0;
    const revocation = new Revocation({
      fetch: () => client.crl(),
      issuer: pinned.x509,
      onUpdate: () => fetched++,
    });
    client.checkServiceRevocation(revocation);
    const refusedService = (e: unknown) => {
      assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
      assert.equal(e.code, "ERR_PEER_REJECTED");
      assert.equal(e.message, `The CA service at ${url} presents a revoked certificate`);
      assert.match(e.detail ?? "", new RegExp(`serial ${kept.serial}\\) is revoked`));
      assert.match(e.hint ?? "", /replaces a revoked certificate within seconds/);
      return true;
    };

    try {
      // A client that holds no CRL yet fetches it before it asks anything else: no deadlock, as
      // the CRL, signed by the CA, is fetched from that very service.
      await assert.rejects(client.lookup("alice"), refusedService);
      assert.equal(fetched, 1);
      revocation.requireCurrent();
      assert.equal(revocation.isRevoked(kept.serial), true);
      await assert.rejects(client.lookup("alice"), refusedService);
      await assert.rejects(client.relay(1, 5_000), refusedService);
      await revocation.refresh(); // the CRL still comes, and could be refreshed for good
      assert.equal(fetched, 2);
      assert.deepEqual(impostor.asked, ["GET /v1/crl", "GET /v1/crl"]);
    } finally {
      await impostor.close();
    }
  });
});

Deno.test("a client offline since before the CA service's key was revoked refuses an impostor holding that key who replays the last CRL from before (still current, signed days ago), asks it nothing but the CRL, and still checks peers against that CRL", async () => {
  await withServiceWorld(async ({ ca, anchor, member }) => {
    const alice = await member("alice");
    const kept = await keepServiceKey(ca.paths);
    await ca.revoke(kept.serial);
    // The last CRL the CA signed before the revocation, two days ago: it lists nothing, and is
    // current for five days more (nextUpdate); the impostor replays it and answers the rest.
    const signedAt = new Date(Date.now() - 2 * 86_400_000);
    const replayed = await crlSignedAt(ca.paths, signedAt);
    const impostor = await poseAsService(kept, (req, res) => {
      req.resume();
      if (req.url === "/v1/crl") return pem(res, replayed);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ invitations: [], cursor: 0 }));
    });
    const pinned = trustAnchor(anchor);
    const client = new CaClient(impostor.url, pinned, alice);
    const revocation = new Revocation({ fetch: () => client.crl(), issuer: pinned.x509 });
    client.checkServiceRevocation(revocation);
    const stale = (e: unknown) => {
      assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
      assert.equal(e.code, "ERR_PEER_REJECTED");
      assert.match(
        e.message,
        /^Cannot check the CA service's certificate: the newest CRL it sent was signed at .*, over 3 h ago$/,
      );
      assert.match(e.hint ?? "", /may be someone who kept an old service key/);
      return true;
    };
    try {
      await assert.rejects(client.lookup("bob"), stale);
      await assert.rejects(client.pending(), stale);
      await assert.rejects(client.relay(1, 5_000), stale);
      assert.deepEqual(impostor.asked, ["GET /v1/crl"]);
      // For peers it is a CRL like any other until its nextUpdate: direct chats need no service.
      revocation.requireCurrent();
    } finally {
      await impostor.close();
    }
  });
});

for (
  const [how, crl] of [
    ["withholds the CRL", undefined],
    ["replays the last CRL from before the revocation, signed days ago", 2 * 86_400_000],
  ] as const
) {
  Deno.test(`a chat that starts while someone holding the CA service's revoked key poses as the service and ${how} sends that impostor nothing but requests for the CRL, and warns`, async () => {
    await withService(async (service, dir) => {
      const id = await enroll(
        join(dir, "alice"),
        parseInvite(await makeInvite(service.home, "alice")),
      );
      // The key of the service's certificate, kept by someone after the certificate was revoked
      // (as when it was stolen, or superseded): the service replaces it within seconds.
      const paths = new CaPaths(service.home);
      const kept = await keepServiceKey(paths);
      const replayed = crl && await crlSignedAt(paths, new Date(Date.now() - crl));
      assertSuccess(await runCa(service.home, ["revoke", kept.serial]), "revoke");
      await service.stop();
      // The impostor takes the service's address.
      const impostor = await poseAsService(kept, (req, res) => {
        req.resume();
        if (replayed && req.url === "/v1/crl") return pem(res, replayed);
        if (replayed && req.url === "/v1/log/crl") {
          // It has no proof of that CRL in the log: it sends the CRL alone.
          res.writeHead(200, { "content-type": "application/json" });
          return void res.end(JSON.stringify({ crl: replayed }));
        }
        res.writeHead(503, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "ERR_INTERNAL", message: "Busy" } }));
      }, { port: service.port });
      const events: CoreEvent[] = [];
      let chat: Chat | undefined;
      try {
        chat = await Chat.start(id, { onEvent: (e) => events.push(e), noListen: true });
        // The first looks at invitations and at the mailbox: each fails, and says so.
        const warned = (re: RegExp) =>
          events.some((e) => e.type === "warning" && re.test(e.message));
        await waitUntil(
          () => warned(/^Cannot check for invitations: /) && warned(/^Cannot check the mailbox: /),
          "both polls' warnings",
        );
        if (replayed) {
          // Before its proof of being in the issuance log is even looked at, the CRL is too old
          // to clear the service's certificate for what that asks of it.
          assert.ok(
            warned(/^Cannot refresh the CRL: Cannot check the CA service's certificate: /),
            JSON.stringify(events),
          );
        }
        assert.ok(impostor.asked.length > 0, "the impostor was never asked");
        assert.deepEqual(
          impostor.asked.filter((a) => a !== "GET /v1/log/crl"),
          [],
          `the chat asked the impostor: ${impostor.asked.join(", ")}`,
        );
      } finally {
        await chat?.stop();
        await impostor.close();
      }
    });
  });
}

Deno.test("a member joining through someone on the path who holds the CA service's revoked key refuses it before the token goes, whether it serves the CA's current CRL (which lists it) or replays the last one from before, signed days ago; the same invite then joins through the honest service", async () => {
  await withService(async (service, dir) => {
    const paths = new CaPaths(service.home);
    const kept = await keepServiceKey(paths);
    const old = await crlSignedAt(paths, new Date(Date.now() - 2 * 86_400_000));
    assertSuccess(await runCa(service.home, ["revoke", kept.serial]), "revoke");
    const current = await Deno.readTextFile(paths.crl);
    const home = join(dir, "alice");
    const invite = await makeInvite(service.home, "alice");
    const cases = [
      [current, new RegExp(`^The CA service at \\S+ presents a revoked certificate$`)],
      [old, /^Cannot check the CA service's certificate: the newest CRL it sent was signed at /],
    ] as const;
    for (const [crl, refusal] of cases) {
      // It passes on what anyone may have (the CA certificate, a CRL), and keeps what else comes.
      let heard = "";
      const impostor = await poseAsService(kept, (req, res) => {
        req.on("data", (d: Uint8Array) => heard += new TextDecoder().decode(d));
        if (req.url === "/v1/ca") return pem(res, service.caPem);
        if (req.url === "/v1/crl") return pem(res, crl);
        res.writeHead(503, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "ERR_INTERNAL", message: "Busy" } }));
      });
      const through = { ...parseInvite(invite), port: impostor.port, caUrl: impostor.url };
      try {
        await assert.rejects(enroll(home, through), (e) => {
          assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
          assert.equal(e.code, "ERR_PEER_REJECTED");
          assert.match(e.message, refusal);
          return true;
        });
        assert.deepEqual(impostor.asked.toSorted(), ["GET /v1/ca", "GET /v1/crl"]);
        assert.ok(!heard.includes(through.token), "the impostor got the token");
      } finally {
        await impostor.close();
      }
    }
    // Once the honest service presents its new certificate (within seconds of the revocation).
    await waitUntil(
      async () => (await keepServiceKey(paths)).serial !== kept.serial,
      "the service kept its revoked certificate",
    );
    const id = await enroll(home, parseInvite(invite));
    assert.equal(id.name, "alice");
  });
});

Deno.test("a member who invites bob learns nothing of bob's relay sessions with others at the relay: not how many he has, nor that he has any", async () => {
  await withServiceWorld(async ({ service, ca, logs, member }) => {
    const [alice, bob, mallory] = await Promise.all([
      member("alice"),
      member("bob"),
      member("mallory"),
    ]);
    const anchor = ca.certificate.pem;
    const invite = async (from: Member, to: string) =>
      (JSON.parse(
        (await request(service.port, anchor, from, "POST", "/v1/rendezvous", { to }))
          .split("\r\n\r\n")[1],
      ) as { id: number }).id;
    const upgrade = (id: number) =>
      `GET /v1/relay?invitation=${id} HTTP/1.1\r\nHost: ca\r\n` +
      `Connection: Upgrade\r\nUpgrade: e2e-chat-relay/1\r\n\r\n`;
    // alice and bob talk through the relay.
    const withBob = await invite(alice, "bob");
    const a = await connectTls(service.port, anchor, alice);
    const b = await connectTls(service.port, anchor, bob);
    // mallory invites bob (he need not agree) and asks the relay to join them.
    const m = await connectTls(service.port, anchor, mallory);
    try {
      a.socket.write(upgrade(withBob));
      await waitUntil(() => logs.some((l) => / 101 alice .*\(waiting\)$/.test(l)), "no wait");
      b.socket.write(upgrade(withBob));
      await waitUntil(() => logs.some((l) => / 101 bob .*\(spliced\)$/.test(l)), "no splice");
      const heard = m.listen();
      m.socket.write(upgrade(await invite(mallory, "bob")));
      await waitUntil(
        () => logs.some((l) => / GET \/v1\/relay \d+ .*mallory/.test(l)),
        "no answer to mallory",
      );
      await within(heard.closed, 1_000, false);
      // As when bob has no session: she waits (a refusal at all says that he has them).
      assert.equal(
        heard.text(),
        "",
        `the relay told mallory about bob's sessions with others:\n${heard.text()}`,
      );
    } finally {
      for (const c of [a, b, m]) c.socket.destroy();
    }
  }, { relay: { pairsPerMember: 1 } });
});
