import assert from "node:assert/strict";
import { join } from "node:path";
import WsClient from "ws";
import { ListenerGroup } from "../../../lib/connections.ts";
import type { Chat } from "../../chat.ts";
import { WebServer } from "./server.ts";

/** Just enough of a chat core for the server: sendFile records what it was given. */
function fakeChat(root: string, downloads: string) {
  const sent: Array<{ to: string; name: string; bytes: string; dirMode: number }> = [];
  const listeners: Array<(e: unknown) => void> = [];
  const verified: string[] = [];
  const chat = {
    name: "alice",
    listen: "127.0.0.1:1",
    listenerBudget: { connections: 64, group: new ListenerGroup() },
    downloads,
    identity: {
      name: "alice",
      home: { root, uploads: join(root, "uploads") },
      certificate: { fingerprint: "aa", keyFingerprint: "bb", notAfter: new Date(0) },
      caUrl: "https://127.0.0.1:2",
      caFingerprint: "cc",
    },
    on: (listener: (e: unknown) => void) => {
      listeners.push(listener);
      return () => {};
    },
    peers: () => [],
    invitations: () => [],
    // bob's key, as the core has it now.
    safetyNumber: (name: string) => name === "bob" ? "11111 22222" : "",
    verify: (name: string) => Promise.resolve(verified.push(name)),
    trust: (name: string) => Promise.resolve(verified.push(`trust ${name}`)),
    offers: () => [],
    keyChanges: () => [],
    dismissKeyChange: (name: string, key: string) =>
      Promise.resolve(verified.push(`dismiss ${name} ${key}`)),
    logAlarms: () => [],
    conversations: () => Promise.resolve([]),
    rooms: {
      list: () => ({ rooms: [{ room: "#side", members: 2, version: 3 }], invitations: ["#team"] }),
      invitations: () => [{ room: "#team", from: "ben" }, { room: "#team", from: "mallory" }],
      decline: (_room: string, creator: string) => ({ from: creator, told: false }),
    },
    sendFile: async (to: string, path: string) => {
      const dir = path.slice(0, path.lastIndexOf("/"));
      sent.push({
        to,
        name: path.slice(path.lastIndexOf("/") + 1),
        bytes: await Deno.readTextFile(path),
        dirMode: (await Deno.stat(dir)).mode! & 0o777,
      });
      return "f1";
    },
  };
  const emit = (e: Record<string, unknown>) => listeners.forEach((l) => l(e));
  return { chat: chat as unknown as Chat, sent, emit, verified };
}

/** One HTTP/1.1 request with exactly these header lines (fetch cannot set Host). */
async function raw(
  port: number,
  head: string[],
  body = "",
): Promise<{ status: number; head: string; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const bytes = new TextEncoder().encode(body);
    const extra = body ? [`Content-Length: ${bytes.length}`] : [];
    await conn.write(
      new TextEncoder().encode([...head, ...extra, "Connection: close", "", ""].join("\r\n")),
    );
    if (body) await conn.write(bytes);
    let text = "";
    const buf = new Uint8Array(65536);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
      if (/^HTTP\/1\.1 101/.test(text) && text.includes("\r\n\r\n")) break;
    }
    const at = text.indexOf("\r\n\r\n");
    return {
      status: Number(text.split(" ")[1]),
      head: text.slice(0, at),
      body: text.slice(at + 4),
    };
  } finally {
    conn.close();
  }
}

async function withServer(
  fn: (
    web: WebServer,
    ctx: {
      root: string;
      downloads: string;
      sent: ReturnType<typeof fakeChat>["sent"];
      emit: ReturnType<typeof fakeChat>["emit"];
      verified: ReturnType<typeof fakeChat>["verified"];
    },
  ) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "e2e-chat-web-unit-" });
  const downloads = join(root, "downloads");
  await Deno.mkdir(downloads);
  const { chat, sent, emit, verified } = fakeChat(root, downloads);
  const web = await WebServer.start(chat);
  try {
    await fn(web, { root, downloads, sent, emit, verified });
  } finally {
    await web.stop();
    await Deno.remove(root, { recursive: true });
  }
}

/** Exchanges the token: the cookie header line and the page key (from the fragment). */
async function session(web: WebServer): Promise<{ cookie: string; key: string }> {
  const token = new URL(web.url).searchParams.get("token");
  const r = await raw(web.port, [
    `GET /session?token=${token} HTTP/1.1`,
    `Host: 127.0.0.1:${web.port}`,
  ]);
  assert.equal(r.status, 303);
  const m = /^set-cookie: (e2e_session_\d+=[0-9a-f]{64}); HttpOnly; SameSite=Strict; Path=\/$/im
    .exec(r.head);
  assert.ok(m, r.head);
  const key = /^location: \/#key=([0-9a-f]{64})$/im.exec(r.head);
  assert.ok(key, r.head);
  return { cookie: `Cookie: ${m[1]}`, key: key[1] };
}

/** A page's WebSocket, opened as the page opens it; resolves with the first message of `type`. */
function firstOfType(
  web: WebServer,
  s: { cookie: string; key: string },
  type: string,
  send?: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const ws = new WsClient(`ws://127.0.0.1:${web.port}/ws`, ["e2e-chat", `key.${s.key}`], {
      headers: { Cookie: s.cookie.slice("Cookie: ".length) },
      origin: `http://127.0.0.1:${web.port}`,
    });
    ws.on("error", reject);
    ws.on("close", (code: number) => reject(new Error(`the WebSocket closed (${code})`)));
    if (send) ws.on("open", () => ws.send(JSON.stringify(send)));
    ws.on("message", (data: Uint8Array) => {
      const m = JSON.parse(new TextDecoder().decode(data));
      if (m.type !== type) return;
      ws.close();
      resolve(m);
    });
  });
}

/** One operation over the page's WebSocket (as the page sends it); resolves with the reply. */
function operate(
  web: WebServer,
  s: { cookie: string; key: string },
  op: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  return firstOfType(web, s, "reply", { id: 1, ...op });
}

/** The snapshot a page gets when its WebSocket opens. */
function snapshot(
  web: WebServer,
  s: { cookie: string; key: string },
): Promise<Record<string, unknown>> {
  return firstOfType(web, s, "snapshot");
}

Deno.test("a page opened after an outage of the CA service sees in its snapshot both the warning and that the service answers again", async () => {
  await withServer(async (web, { emit }) => {
    const away = "Cannot check the mailbox: The CA service at https://127.0.0.1:2 did not answer";
    const back = "The CA service answers again (after 12 s without an answer)";
    emit({ type: "warning", message: away });
    emit({ type: "ca_back", since: new Date().toISOString(), message: back });
    const { notices } = await snapshot(web, await session(web));
    assert.deepEqual(notices, [away, back]);
  });
});

Deno.test("the snapshot names each room invitation once, with its creator, beside the rooms we are in", async () => {
  await withServer(async (web) => {
    const snap = await snapshot(web, await session(web));
    assert.deepEqual(snap.rooms, [{ room: "#side", members: 2, version: 3 }]);
    assert.deepEqual(snap.roomInvitations, [
      { room: "#team", from: "ben" },
      { room: "#team", from: "mallory" },
    ]);
    // Nowhere else: a page that read another list of them would see one card too many.
    assert.equal(JSON.stringify(snap).split('"#team"').length - 1, 2, JSON.stringify(snap));
  });
});

Deno.test("a room invitation declined from the page is said to every tab in the words the terminal uses", async () => {
  await withServer(async (web) => {
    const s = await session(web);
    const declined = await firstOfType(web, s, "room_declined", {
      id: 1,
      op: "room",
      action: "decline",
      room: "#team",
      name: "ben",
    });
    assert.deepEqual(declined, {
      type: "room_declined",
      room: "#team",
      from: "ben",
      told: false,
      message: 'Declined the invitation to #team from "ben" ("ben" is not connected: told when ' +
        "it offers it again)",
    });
  });
});

Deno.test("Mark verified and Trust new key are refused when the key's safety number is no longer the one the page showed, or when no number is given", async () => {
  await withServer(async (web, { verified }) => {
    const s = await session(web);
    for (const op of ["verify", "trust"]) {
      const stale = await operate(web, s, { op, name: "bob", number: "11111 33333" });
      assert.deepEqual(stale.error, {
        code: "ERR_FINGERPRINT_MISMATCH",
        message: 'The key of "bob" changed since its safety number was shown',
        hint: 'compare the safety number shown now with "bob"',
      });
      // A page (or anything else holding the page key) that names no number takes no key unseen.
      for (const number of [undefined, 12345]) {
        const refused = await operate(web, s, { op, name: "bob", number });
        assert.equal((refused.error as { code: string }).code, "ERR_BAD_REQUEST");
      }
      assert.equal((await operate(web, s, { op, name: "bob", number: "11111 22222" })).ok, true);
    }
    assert.deepEqual(verified, ["bob", "trust bob"]);
  });
});

Deno.test("dismissKeyChange names the key whose change it dismisses: without a key fingerprint it is refused", async () => {
  await withServer(async (web, { verified }) => {
    const s = await session(web);
    for (const keyFingerprint of [undefined, "AB".repeat(32), "ab"]) {
      const refused = await operate(web, s, {
        op: "dismissKeyChange",
        name: "bob",
        keyFingerprint,
      });
      assert.equal((refused.error as { code: string }).code, "ERR_BAD_REQUEST");
    }
    const key = "ab".repeat(32);
    const dismissed = await operate(web, s, {
      op: "dismissKeyChange",
      name: "bob",
      keyFingerprint: key,
    });
    assert.deepEqual(dismissed.result, { keyChanges: [] });
    assert.deepEqual(verified, [`dismiss bob ${key}`]);
  });
});

Deno.test("WebServer answers 421 to a foreign Host and 401 without a session, even with the token", async () => {
  await withServer(async (web) => {
    const token = new URL(web.url).searchParams.get("token");
    assert.match(web.url, /^http:\/\/127\.0\.0\.1:\d+\/session\?token=[0-9a-f]{64}$/);
    for (const host of ["evil.test", `evil.test:${web.port}`, "127.0.0.1", `[::1]:${web.port}`]) {
      const r = await raw(web.port, [`GET /session?token=${token} HTTP/1.1`, `Host: ${host}`]);
      assert.equal(r.status, 421, host);
    }
    for (const path of ["/", "/app.js", "/download/x", `/session?token=${"1".repeat(64)}`]) {
      const r = await raw(web.port, [`GET ${path} HTTP/1.1`, `Host: localhost:${web.port}`]);
      assert.equal(r.status, 401, path);
      assert.match(r.body, /Open the URL the client printed/);
      assert.match(r.head, /^content-security-policy: default-src 'none';/im);
    }
  });
});

Deno.test("WebServer refuses a cross-origin POST and WebSocket upgrade, and accepts its own origin", async () => {
  await withServer(async (web) => {
    const { cookie, key } = await session(web);
    const host = `Host: 127.0.0.1:${web.port}`;
    const upgrade = (origin: string[], protocols = `e2e-chat, key.${key}`) =>
      raw(web.port, [
        "GET /ws HTTP/1.1",
        host,
        cookie,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        `Sec-WebSocket-Protocol: ${protocols}`,
        ...origin,
      ]);
    assert.equal((await upgrade(["Origin: http://evil.test"])).status, 403);
    assert.equal((await upgrade([])).status, 403);
    assert.equal(
      (await upgrade([`Origin: http://127.0.0.1:${web.port}`, "Sec-Fetch-Site: cross-site"]))
        .status,
      403,
    );
    const own = [`Origin: http://127.0.0.1:${web.port}`];
    assert.equal((await upgrade(own)).status, 101);
    // The page key is needed too: the cookie also goes to every other port of 127.0.0.1.
    assert.equal((await upgrade(own, "e2e-chat")).status, 403);
    assert.equal((await upgrade(own, `e2e-chat, key.${"0".repeat(64)}`)).status, 403);
    assert.equal((await upgrade(own, `key.${key}`)).status, 403);
    const post = await raw(web.port, [
      "POST /upload?to=bob&name=a.txt HTTP/1.1",
      host,
      cookie,
      `Origin: http://localhost:${web.port + 1}`,
    ], "hello");
    assert.equal(post.status, 403);
  });
});

Deno.test("an upload goes to a 0700 folder under its sanitised name, is sent, then removed", async () => {
  await withServer(async (web, { root, sent }) => {
    const { cookie, key } = await session(web);
    const name = encodeURIComponent("../../id/\u202eevil\u0007.txt");
    const upload = (extra: string[]) =>
      raw(web.port, [
        `POST /upload?to=bob&name=${name} HTTP/1.1`,
        `Host: 127.0.0.1:${web.port}`,
        cookie,
        `Origin: http://127.0.0.1:${web.port}`,
        "Content-Type: application/octet-stream",
        ...extra,
      ], "file body");
    assert.equal((await upload([])).status, 403);
    assert.equal((await upload([`x-e2e-chat-key: ${"0".repeat(64)}`])).status, 403);
    assert.deepEqual(sent, []);
    const r = await upload([`x-e2e-chat-key: ${key}`]);
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(JSON.parse(r.body), { id: "f1", name: "evil.txt" });
    assert.deepEqual(sent, [{ to: "bob", name: "evil.txt", bytes: "file body", dirMode: 0o700 }]);
    assert.equal((await Deno.stat(join(root, "uploads"))).mode! & 0o777, 0o700);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(join(root, "uploads"))), []);
  });
});

Deno.test("downloads serve only regular files directly inside the downloads folder, as attachments", async () => {
  await withServer(async (web, { root, downloads }) => {
    const s = await session(web);
    const cookie = s.cookie;
    await Deno.writeTextFile(join(downloads, "report <1>.txt"), "<script>alert(1)</script>");
    await Deno.writeTextFile(join(root, "secret.txt"), "secret");
    await Deno.symlink(join(root, "secret.txt"), join(downloads, "link.txt"));
    await Deno.mkdir(join(downloads, "sub"));
    await Deno.writeTextFile(join(downloads, ".partial-x"), "partial");
    const get = (path: string) =>
      raw(web.port, [`GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${web.port}`, cookie]);
    // A download needs a one-time ticket the page asked for over its WebSocket.
    const direct = `/download/${encodeURIComponent("report <1>.txt")}`;
    assert.equal((await get(direct)).status, 403);
    const ticket = async (file: string) => {
      const reply = await operate(web, s, { op: "download", file });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      return (reply.result as { href: string }).href;
    };
    const href = await ticket("report <1>.txt");
    assert.match(href, /^\/download\/report%20%3C1%3E\.txt\?ticket=[0-9a-f]{64}$/);
    const ok = await get(href);
    assert.equal(ok.status, 200);
    assert.equal((await get(href)).status, 403, "a ticket is used once");
    assert.equal(ok.body, "<script>alert(1)</script>");
    assert.match(ok.head, /^content-type: application\/octet-stream$/im);
    assert.match(
      ok.head,
      /^content-disposition: attachment; filename\*=UTF-8''report%20%3C1%3E\.txt$/im,
    );
    assert.match(ok.head, /^x-content-type-options: nosniff$/im);
    // With a ticket, still nothing but a regular file directly inside the folder.
    for (const file of ["link.txt", "sub", ".partial-x"]) {
      assert.equal((await get(await ticket(file))).status, 404, file);
    }
    // A path is not even given a ticket.
    for (const file of ["../secret.txt", "a/b"]) {
      const reply = await operate(web, s, { op: "download", file });
      assert.equal(reply.ok, false, file);
    }
    // A ticket is for its own name only.
    const other = (await ticket("report <1>.txt")).replace("report%20%3C1%3E.txt", "link.txt");
    assert.equal((await get(other)).status, 403);
  });
});
