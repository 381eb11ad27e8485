/**
 * The relay (issue #12; docs/PROTOCOL.md §2 "Through the relay", docs/API.md
 * "Relay"): a client that cannot be reached is reached through the CA
 * service, which splices the two peers' connections and sees only their TLS
 * records. Real CA service, real `client chat --json` processes, and the
 * service in process where a test tap must see what crosses it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import type tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { CaService, type ServeOptions } from "../ca/service.ts";
import { CaClient } from "../client/ca_client.ts";
import { Chat } from "../client/chat.ts";
import type { CoreEvent } from "../client/events.ts";
import { enroll } from "../client/identity.ts";
import { dialRelay } from "../client/relay.ts";
import { parseInvite } from "../lib/invite.ts";
import { type Credentials, trustAnchor } from "../lib/tls.ts";
import { parseCertificate } from "../lib/x509.ts";
import { ChatClient, connect, deadline, e2eError, stopAll, waitUntil } from "./_harness.ts";
import { joinUser, selfSigned } from "./_chat_helpers.ts";
import { makeCsr, PASSPHRASE, runCa, withTempDir } from "./_helpers.ts";
import { makeInvite, runClient, withService } from "./_service_helpers.ts";

const MiB = 1024 * 1024;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test("a client started with --no-listen is reached through the relay: messages both ways, a file with the same SHA-256, and connected says via relay", async () => {
  await withService(async (service, dir) => {
    const [aliceUser, bobUser] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    let alice: ChatClient | undefined;
    let bob: ChatClient | undefined;
    try {
      alice = await ChatClient.start(aliceUser, { args: ["--no-listen"] });
      bob = await ChatClient.start(bobUser);
      assert.equal(alice.ready.listen, "", "a client with --no-listen names no listener");
      const { atFrom, atTo } = await connect(alice, bob);
      assert.equal(atFrom.via, "relay");
      assert.equal(atTo.via, "relay");

      await alice.send("/msg bob hello over the relay");
      assert.equal(
        (await bob.expect({ type: "message", from: "alice" })).text,
        "hello over the relay",
      );
      await bob.send("/msg alice and back again");
      assert.equal((await alice.expect({ type: "message", from: "bob" })).text, "and back again");
      await alice.expect({ type: "delivered", to: "bob" });

      const data = randomBytes(2 * MiB);
      const path = join(dir, "payload.bin");
      await Deno.writeFile(path, data);
      await alice.send(`/file bob ${path}`);
      await bob.acceptFile("alice");
      const file = await bob.expect({ type: "file", from: "alice" });
      assert.equal(file.sha256, sha256(data));
      assert.ok(Buffer.from(data).equals(await Deno.readFile(String(file.path))));
      await alice.expect({ type: "delivered", to: "bob" });
      const problems = [...alice.warnings, ...bob.warnings].filter((w) =>
        !w.includes("Receiving file")
      );
      assert.deepEqual(problems, []);
    } finally {
      await stopAll([alice, bob]);
    }
  });
});

Deno.test("--relay never refuses to reach a client that does not listen, and contradictory relay flags are usage errors", async () => {
  await withService(async (service, dir) => {
    const [aliceUser, bobUser] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    // Flags that cannot work together, or a mode that does not exist, are usage errors.
    const usage: Array<[string[], string]> = [
      [["--no-listen", "--relay", "never"], "--no-listen needs the relay: not with --relay never"],
      [["--no-listen", "--listen", "127.0.0.1:0"], "--no-listen and --listen exclude each other"],
      [["--relay", "sometimes"], 'Unknown relay mode "sometimes"'],
    ];
    for (const [flags, message] of usage) {
      const result = await runClient(aliceUser.home, ["chat", "--json", ...flags]);
      assert.equal(result.code, 2, result.stderr);
      assert.ok(result.stderr.includes(`e2e-chat: error: ${message}`), result.stderr);
    }
    let alice: ChatClient | undefined;
    let bob: ChatClient | undefined;
    try {
      alice = await ChatClient.start(aliceUser, { args: ["--no-listen"] });
      bob = await ChatClient.start(bobUser, { args: ["--relay", "never"] });
      await alice.send("/chat bob");
      await bob.expect({ type: "invite", from: "alice" });
      await bob.send("/accept alice");
      const error = await bob.expect({ type: "error" });
      assert.match(
        String(error.message),
        /^Cannot connect to "alice" directly: it does not listen, and is reached through the relay only/,
      );
      await bob.expectNone(0, { type: "connected" }, 300);
    } finally {
      await stopAll([alice, bob]);
    }
  });
});

/** A chunk the relay's test tap saw, and who sent it. */
interface Tapped {
  from: string;
  chunk: Uint8Array;
}

Deno.test("bob's /accept of an inviter that is gone fails within seconds: the relay says it is not online", async () => {
  await withService(async (service, dir) => {
    const [aliceUser, bobUser] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    let alice: ChatClient | undefined;
    let bob: ChatClient | undefined;
    try {
      alice = await ChatClient.start(aliceUser, { args: ["--no-listen"] });
      bob = await ChatClient.start(bobUser);
      await alice.send("/chat bob");
      await bob.expect({ type: "invite", from: "alice" });
      await alice.kill("SIGKILL");
      await bob.send("/accept alice");
      const error = await bob.expect({ type: "error" });
      assert.equal(
        error.message,
        'Cannot connect to "alice" through the relay: ' +
          'The relay refused: "alice" is not online to come to the relay',
      );
      await bob.expectNone(0, { type: "connected" }, 100);
    } finally {
      await stopAll([alice, bob]);
    }
  });
});

/** A CA and its service in this process, with the relay's test tap. */
async function withTappedService(
  fn: (
    ctx: {
      ca: CertificateAuthority;
      service: CaService;
      dir: string;
      tapped: Tapped[];
      logs: string[];
    },
  ) => Promise<void>,
  options: ServeOptions = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-relay-test-" });
  const tapped: Tapped[] = [];
  const logs: string[] = [];
  let service: CaService | undefined;
  try {
    const ca = await CertificateAuthority.init(join(dir, "ca-home"), PASSPHRASE, {
      keyType: "ec-p256",
    });
    service = await CaService.start(ca, {
      port: 0,
      crlPort: 0,
      log: (line) => logs.push(line),
      ...options,
      relay: {
        ...options.relay,
        tap: (chunk, from) => tapped.push({ from, chunk: new Uint8Array(chunk) }),
      },
    });
    await fn({ ca, service, dir, tapped, logs });
  } finally {
    await service?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A member with a certificate signed in process (no enrollment round trip). */
async function member(ca: CertificateAuthority, name: string): Promise<Credentials> {
  const { csr, key } = await makeCsr(name);
  const { certificate } = await ca.sign(csr, name);
  return { key, cert: certificate.pem };
}

/** alice relayed to bob and, in a second session, to carol: the four spliced sockets. */
async function twoSessions(ca: CertificateAuthority, url: string) {
  const anchor = trustAnchor(ca.certificate.pem);
  const [alice, bob, carol] = await Promise.all(
    ["alice", "bob", "carol"].map((n) => member(ca, n)),
  );
  const client = (own: Credentials) => new CaClient(url, anchor, own);
  const { id } = await client(alice).offer("bob");
  const { id: other } = await client(alice).offer("carol");
  const sockets = await Promise.all([
    dialRelay(url, anchor, id, { own: bob }),
    dialRelay(url, anchor, id, { own: alice }),
    dialRelay(url, anchor, other, { own: carol }),
    dialRelay(url, anchor, other, { own: alice }),
  ]);
  return { alice, bob, client, sockets };
}

Deno.test("the relay refuses a non-member, a revoked member and a member naming someone else's invitation, and splices nothing", async () => {
  await withTappedService(async ({ ca, service, dir, tapped }) => {
    const anchor = trustAnchor(ca.certificate.pem);
    const [alice, bob, carol] = await Promise.all(
      ["alice", "bob", "carol"].map((n) => member(ca, n)),
    );
    const { id } = await new CaClient(service.url, anchor, alice).offer("bob");
    const dial = (own: Credentials) =>
      dialRelay(service.url, anchor, id, { own, timeoutMs: 10_000 });

    // Someone else's invitation: carol is a member, but not a party of alice's invitation to bob.
    await assert.rejects(
      dial(carol),
      e2eError("ERR_NOT_FOUND", `The relay refused: No pending invitation ${id}`),
    );
    // A non-member: a certificate our CA did not issue (same name, same key).
    const keyPath = join(dir, "alice.key");
    await Deno.writeTextFile(keyPath, alice.key);
    const forged = { key: alice.key, cert: await selfSigned("alice", keyPath) };
    await assert.rejects(
      dial(forged),
      e2eError("ERR_UNAUTHENTICATED", "The relay refused: The client certificate was not accepted"),
    );
    // An invitation that does not exist.
    await assert.rejects(
      dialRelay(service.url, anchor, id + 1000, { own: bob }),
      e2eError("ERR_NOT_FOUND", `The relay refused: No pending invitation ${id + 1000}`),
    );
    // A revoked member.
    await ca.revoke("bob", { reason: "keyCompromise" });
    await assert.rejects(
      dial(bob),
      e2eError(
        "ERR_FORBIDDEN",
        "The relay refused: The client certificate is revoked or superseded",
      ),
    );
    assert.deepEqual(tapped, [], "nothing was spliced");
  });
});

/** Joins `name` through a real invite and enrollment (the service runs in process). */
async function startChat(
  ca: CertificateAuthority,
  dir: string,
  name: string,
  events: CoreEvent[],
  options: { noListen?: boolean } = {},
): Promise<Chat> {
  const invite = await makeInvite(ca.paths.home, name);
  const id = await enroll(join(dir, name), parseInvite(invite));
  return await Chat.start(id, { onEvent: (e) => events.push(e), ...options });
}

/** The TLS records of a byte stream: content type, legacy version and length; fails on anything else. */
function tlsRecords(bytes: Uint8Array): Array<{ type: number; length: number }> {
  const records = [];
  let at = 0;
  while (at < bytes.length) {
    assert.ok(at + 5 <= bytes.length, `a partial record header at ${at}`);
    const type = bytes[at];
    assert.ok([20, 21, 22, 23].includes(type), `content type ${type} at ${at}`);
    assert.equal(bytes[at + 1], 3, `legacy version at ${at}`);
    assert.ok([1, 3].includes(bytes[at + 2]), `legacy version at ${at}`);
    const length = (bytes[at + 3] << 8) | bytes[at + 4];
    assert.ok(length <= 16384 + 256, `record length ${length} at ${at}`);
    at += 5 + length;
    assert.ok(at <= bytes.length, "the last record is cut short");
    records.push({ type, length });
  }
  return records;
}

Deno.test("what crosses the relay for a relayed chat is TLS records between the peers, whose contents never hold the messages or the file", async () => {
  await withTappedService(async ({ ca, dir, tapped, logs }) => {
    const aliceEvents: CoreEvent[] = [];
    const bobEvents: CoreEvent[] = [];
    const alice = await startChat(ca, dir, "alice", aliceEvents, { noListen: true });
    const bob = await startChat(ca, dir, "bob", bobEvents);
    try {
      await alice.invite("bob");
      await waitUntil(() => bob.invitations().includes("alice"), "bob has the invitation");
      const peer = await bob.accept("alice");
      assert.equal(peer.via, "relay");
      await waitUntil(() => alice.isConnected("bob"), "alice connected");
      const secret = "the relay must never see this sentence";
      const reply = "nor this reply, in any form";
      alice.send("bob", secret);
      await waitUntil(() => bobEvents.some((e) => e.type === "message"), "bob got it");
      bob.send("alice", reply);
      await waitUntil(() => aliceEvents.some((e) => e.type === "message"), "alice got it");
      const data = new TextEncoder().encode("FILE-CONTENT ".repeat(5000));
      const path = join(dir, "notes.txt");
      await Deno.writeFile(path, data);
      await alice.sendFile("bob", path);
      await waitUntil(() => bobEvents.some((e) => e.type === "file_offer"), "bob got the offer");
      const offer = bobEvents.find((e) => e.type === "file_offer") as { id: string };
      await bob.acceptFile("alice", offer.id);
      await waitUntil(() => bobEvents.some((e) => e.type === "file"), "bob got the file");
      const file = bobEvents.find((e) => e.type === "file") as { sha256: string };
      assert.equal(file.sha256, sha256(data));

      // Each direction is a stream of TLS records: a handshake record (22) first, then
      // application data (23) — the peers' TLS, not the service's, which the tap sees removed.
      for (const from of ["alice", "bob"]) {
        const stream = Buffer.concat(tapped.filter((t) => t.from === from).map((t) => t.chunk));
        const records = tlsRecords(stream);
        assert.equal(records[0].type, 22, `${from}'s first record is a handshake record`);
        assert.ok(records.some((r) => r.type === 23), `${from}'s application data follows`);
        for (const needle of [secret, reply, "FILE-CONTENT", "notes.txt", '"type"']) {
          assert.equal(stream.indexOf(needle), -1, `${JSON.stringify(needle)} crossed the relay`);
        }
      }
      const total = tapped.reduce((n, t) => n + t.chunk.length, 0);
      assert.ok(total > data.length, `only ${total} bytes crossed the relay`);
      // The service's log names who and when, never what.
      assert.ok(
        logs.some((l) => /^e2e-chat-ca: relay opened bob<->alice invitation \d+$/.test(l)),
        logs.join("\n"),
      );
      assert.ok(!logs.some((l) => l.includes(secret) || l.includes(reply)));
    } finally {
      await Promise.all([alice.stop(), bob.stop()]);
    }
  });
});

Deno.test("a member bob invited cannot lock bob out of the relay by waiting on his invitation again and again: bob meets her one at a time, and alice's relay session with bob goes through", async () => {
  await withTappedService(async ({ ca, service, dir, logs }) => {
    const anchor = trustAnchor(ca.certificate.pem);
    const id = await enroll(join(dir, "bob"), parseInvite(await makeInvite(ca.paths.home, "bob")));
    const bob = await Chat.start(id, { onEvent: () => {} });
    const held: tls.TLSSocket[] = [];
    try {
      const [mallory, alice] = await Promise.all([member(ca, "mallory"), member(ca, "alice")]);
      await bob.invite("mallory");
      const { invitations } = await new CaClient(service.url, anchor, mallory).pending();
      const invitation = invitations.find((i) => i.from === "bob")!.id;

      // mallory waits on it 8 times in a row (each wait brings bob's client to the relay), and
      // never says a word of the peer TLS: bob's side of each meeting waits 10 s for it.
      for (let i = 0; i < 8; i++) {
        await dialRelay(service.url, anchor, invitation, { own: mallory, timeoutMs: 1_000 })
          .then((s) => held.push(s), () => {});
      }
      let open = 0;
      let most = 0;
      for (const line of logs) {
        if (/relay opened (bob<->mallory|mallory<->bob) /.test(line)) most = Math.max(most, ++open);
        if (/relay closed (bob<->mallory|mallory<->bob) /.test(line)) open--;
      }
      assert.equal(most, 1, "bob's client meets mallory at the relay one at a time");

      // alice's invitation to bob still gets its relay session: bob is not at his cap.
      const { id: hers } = await new CaClient(service.url, anchor, alice).offer("bob");
      held.push(
        ...await Promise.all([
          dialRelay(service.url, anchor, hers, { own: alice, timeoutMs: 5_000 }),
          dialRelay(service.url, anchor, hers, { own: id.credentials, timeoutMs: 5_000 }),
        ]),
      );
    } finally {
      for (const s of held) s.destroy();
      await bob.stop();
    }
  });
});

Deno.test("a spliced pair outlives the service's idle limit for requests: the relay's own idle time applies", async () => {
  await withTappedService(async ({ ca, service }) => {
    const anchor = trustAnchor(ca.certificate.pem);
    const [alice, bob] = await Promise.all(["alice", "bob"].map((n) => member(ca, n)));
    const { id } = await new CaClient(service.url, anchor, alice).offer("bob");
    const [atBob, atAlice] = await Promise.all([
      dialRelay(service.url, anchor, id, { own: bob }),
      dialRelay(service.url, anchor, id, { own: alice }),
    ]);
    try {
      const got = new Promise<string>((resolve) => {
        atAlice.once("data", (d: Uint8Array) => resolve(new TextDecoder().decode(d)));
        atAlice.once("close", () => resolve("(alice's connection closed)"));
      });
      // Idle for three times the service's request idle limit, then bytes still flow.
      await new Promise((resolve) => setTimeout(resolve, 600));
      atAlice.resume();
      atBob.write("still here");
      assert.equal(await got, "still here");
    } finally {
      atBob.destroy();
      atAlice.destroy();
    }
  }, { idleTimeoutMs: 200 });
});

Deno.test("revoking a member with `ca revoke` in another process ends its spliced relay session within seconds; other sessions go on", async () => {
  await withTappedService(async ({ ca, service, dir, logs }) => {
    const { sockets } = await twoSessions(ca, service.url);
    const [atBob, atAlice, atCarol, atAlice2] = sockets;
    try {
      const closed = (s: typeof atBob) =>
        new Promise<void>((resolve) => s.once("close", () => resolve()));
      const bobGone = Promise.all([closed(atBob), closed(atAlice)]);
      const revoked = await runCa(join(dir, "ca-home"), ["revoke", "bob"]);
      assert.equal(revoked.code, 0, revoked.stderr);
      await deadline(bobGone, 10_000, "the relay to end bob's session");
      assert.ok(
        logs.some((l) => /relay closed .*the certificate of bob is no longer valid/.test(l)),
        logs.join("\n"),
      );
      // alice and carol's session still carries bytes.
      const got = new Promise<string>((resolve) =>
        atCarol.once("data", (d: Uint8Array) => resolve(new TextDecoder().decode(d)))
      );
      atCarol.resume();
      atAlice2.write("still joined");
      assert.equal(await deadline(got, 10_000, "alice's bytes at carol"), "still joined");
    } finally {
      for (const s of sockets) s.destroy();
    }
  }, { relay: { revocationCheckMs: 50 } });
});

Deno.test("a member who renews its certificate (same key) keeps its relay session, as it keeps its peer connections; a new key for its name, or a revocation, ends it", async () => {
  await withTappedService(async ({ ca, service, logs }) => {
    const { alice, bob, client, sockets } = await twoSessions(ca, service.url);
    const [atBob, atAlice, atCarol, atAlice2] = sockets;
    const closed = (s: typeof atBob) =>
      new Promise<void>((resolve) => s.once("close", () => resolve()));
    const carried = async (from: typeof atBob, to: typeof atBob, text: string) => {
      const got = new Promise<string>((resolve) =>
        to.once("data", (d: Uint8Array) => resolve(new TextDecoder().decode(d)))
      );
      to.resume();
      from.write(text);
      return await deadline(got, 10_000, `"${text}" across the relay`);
    };
    try {
      // alice and bob renew as their clients do in the background: the same key, through the API.
      const renewed = await client(alice).renew(
        (await makeCsr("alice", { keyPem: alice.key })).csr,
      );
      await client(bob).renew((await makeCsr("bob", { keyPem: bob.key })).csr);
      assert.equal(await ca.isCurrent(parseCertificate(alice.cert).serial), false);
      // Many revocation checks go by (every 50 ms); the sessions still carry bytes.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await carried(atAlice, atBob, "after renewal"), "after renewal");
      assert.equal(await carried(atCarol, atAlice2, "carol too"), "carol too");

      // bob's name is given a new key (a new invite, or ca sign --replace): his session ends.
      const bobGone = Promise.all([closed(atBob), closed(atAlice)]);
      await ca.sign((await makeCsr("bob")).csr, "bob", { replace: true });
      await deadline(bobGone, 10_000, "the relay to end bob's session");
      assert.ok(
        logs.some((l) => /relay closed .*the certificate of bob is no longer valid/.test(l)),
        logs.join("\n"),
      );
      // alice's renewed certificate revoked: her session with carol, opened under the old one, ends.
      const aliceGone = Promise.all([closed(atCarol), closed(atAlice2)]);
      await ca.revoke(renewed.serial);
      await deadline(aliceGone, 10_000, "the relay to end alice's session");
    } finally {
      for (const s of sockets) s.destroy();
    }
  }, { relay: { revocationCheckMs: 50 } });
});

Deno.test("ca serve refuses relay caps that are not whole numbers above 0, or a bad idle time, before it opens the CA", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "no-ca-yet");
    const cases: Array<[string[], string]> = [
      [["--relay-pairs", "0"], "--relay-pairs takes a whole number above 0"],
      [["--relay-total", "x"], '--relay-total takes a whole number, not "x"'],
      [["--relay-day-mib", "0"], "--relay-day-mib takes a whole number above 0"],
      [["--relay-idle", "5"], 'Invalid duration "5"'],
    ];
    for (const [flags, message] of cases) {
      const result = await runCa(home, ["serve", "--port", "0", ...flags]);
      assert.equal(result.code, 2, result.stderr);
      assert.ok(result.stderr.includes(`e2e-chat: error: ${message}`), result.stderr);
    }
    assert.equal(await Deno.stat(home).then(() => true, () => false), false, "no CA was made");
  });
});
