/**
 * The typed chat core, in-process: two Chat objects (alice and bob) enrolled with
 * a real CA service process, talking over real mutual TLS on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import { runCa } from "../tests/_helpers.ts";
import {
  expiredCertificate,
  makeInvite,
  type Service,
  withService,
} from "../tests/_service_helpers.ts";
import type { CertificateReply } from "./ca_client.ts";
import { Chat, type ChatOptions } from "./chat.ts";
import type { CoreEvent } from "./events.ts";
import { enroll, Identity } from "./identity.ts";
import { parseInvite } from "../lib/invite.ts";
import { ALPN, ALPN_OFFERED, ALPN_REFUSALS } from "../lib/frames.ts";
import { clientOptions, connectTls, serverOptions } from "../lib/tls.ts";
import tls, { type TLSSocket } from "node:tls";

const WAIT_MS = 15_000;

/** A chat and every event it emitted, with a way to wait for one. */
class Recorded {
  readonly events: CoreEvent[] = [];
  #waiters: Array<() => void> = [];
  chat!: Chat;

  listener = (e: CoreEvent): void => {
    this.events.push(e);
    for (const w of this.#waiters.splice(0)) w();
  };

  async next<T extends CoreEvent["type"]>(
    type: T,
    match: (e: Extract<CoreEvent, { type: T }>) => boolean = () => true,
    since = 0,
  ): Promise<Extract<CoreEvent, { type: T }>> {
    const until = Date.now() + WAIT_MS;
    while (true) {
      const found = this.events.slice(since).find((e) =>
        e.type === type && match(e as Extract<CoreEvent, { type: T }>)
      );
      if (found) return found as Extract<CoreEvent, { type: T }>;
      if (Date.now() > until) {
        throw new Error(`no ${type} event within ${WAIT_MS} ms: ${JSON.stringify(this.events)}`);
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        this.#waiters.push(() => (clearTimeout(t), r()));
      });
    }
  }
}

async function startMember(
  service: Service,
  dir: string,
  folder: string,
  options: ChatOptions = {},
  name: string = folder,
): Promise<Recorded> {
  const home = join(dir, folder);
  const id = await enroll(home, parseInvite(await makeInvite(service.home, name)));
  return await startAgain(id, options);
}

// A chat of an enrolled identity (its first start, or the next one after a stop).
async function startAgain(id: Identity, options: ChatOptions = {}): Promise<Recorded> {
  const recorded = new Recorded();
  recorded.chat = await Chat.start(id, { ...options, onEvent: recorded.listener });
  return recorded;
}

// The events of `r` from index `since` on that match.
function eventsSince(r: Recorded, since: number, match: (e: CoreEvent) => boolean): CoreEvent[] {
  return r.events.slice(since).filter(match);
}

function assertCode(code: ErrorCode, message?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, code);
    if (message) assert.match(e.message, message);
    return true;
  };
}

Deno.test("the chat core, in-process, over real mutual TLS with a real CA service", async (t) => {
  await withService(async (service, dir) => {
    const alice = await startMember(service, dir, "alice");
    const bob = await startMember(service, dir, "bob");
    try {
      await t.step("start() reports ready with our name, listener and fingerprint", async () => {
        const ready = await alice.next("ready");
        assert.equal(ready.name, "alice");
        assert.equal(ready.listen, alice.chat.listen);
        assert.equal(ready.fingerprint, alice.chat.identity.certificate.fingerprint);
      });

      await t.step("calls before a connection throw E2eError with stable codes", async () => {
        // (send() to a member who is not connected goes through the mailbox: tests/mailbox_test.ts)
        assert.throws(() => alice.chat.send("Not A Name", "hi"), assertCode("ERR_NAME_INVALID"));
        await assert.rejects(
          alice.chat.accept("bob"),
          assertCode("ERR_NOT_FOUND", /No invitation/),
        );
        await assert.rejects(alice.chat.invite("alice"), assertCode("ERR_USAGE", /yourself/));
        await assert.rejects(alice.chat.invite("Not A Name"), assertCode("ERR_NAME_INVALID"));
        assert.throws(() => alice.chat.safetyNumber("bob"), assertCode("ERR_NOT_FOUND"));
        assert.throws(() => alice.chat.close("bob"), assertCode("ERR_NOT_FOUND"));
        await assert.rejects(alice.chat.trust("bob"), assertCode("ERR_NOT_FOUND"));
        await assert.rejects(alice.chat.verify("bob"), assertCode("ERR_NOT_FOUND"));
        assert.deepEqual(alice.chat.peers(), []);
      });

      await t.step(
        "invite() returns bob's certificate fingerprint and bob hears of it",
        async () => {
          const { fingerprint } = await alice.chat.invite("bob");
          assert.equal(fingerprint, bob.chat.identity.certificate.fingerprint);
          await bob.next("invite", (e) => e.from === "alice");
          assert.deepEqual(bob.chat.invitations(), ["alice"]);
        },
      );

      await t.step("accept() connects both sides, each with the other's checked key", async () => {
        const peer = await bob.chat.accept("alice");
        assert.equal(peer.name, "alice");
        assert.equal(peer.trust, "new");
        assert.equal(peer.fingerprint, alice.chat.identity.certificate.fingerprint);
        const connected = await alice.next("connected", (e) => e.peer === "bob");
        assert.equal(connected.keyFingerprint, bob.chat.identity.certificate.keyFingerprint);
        assert.deepEqual(alice.chat.peers().map((p) => p.name), ["bob"]);
        assert.equal(alice.chat.isConnected("bob"), true);
        assert.deepEqual(bob.chat.invitations(), []);
      });

      await t.step("send() returns an id that is delivered, and bob gets the text", async () => {
        const id = alice.chat.send("bob", "hello bob");
        const sent = await alice.next("sent", (e) => e.id === id);
        assert.equal(sent.text, "hello bob");
        const got = await bob.next("message", (e) => e.text === "hello bob");
        assert.equal(got.from, "alice");
        const delivered = await alice.next("delivered", (e) => e.id === id);
        assert.equal(typeof delivered.ms, "number");
      });

      await t.step("send() refuses a text over the limit with ERR_USAGE and sends nothing", () => {
        assert.throws(() => alice.chat.send("bob", "x".repeat(70_000)), assertCode("ERR_USAGE"));
      });

      await t.step(
        "sendFile() offers a file; acceptFile() takes it and it arrives with its SHA-256",
        async () => {
          const path = join(dir, "notes.txt");
          await Deno.writeTextFile(path, "file body\n".repeat(1000));
          const id = await bob.chat.sendFile("alice", path);
          // bob's key is first seen on this connection: not pinned, so the file waits for alice.
          const offer = await alice.next("file_offer", (e) => e.id === id);
          // Between two current clients the SHA-256 travels in the end frame, not the offer.
          assert.equal(offer.sha256, undefined);
          assert.deepEqual(alice.chat.offers(), [{
            from: "bob",
            id,
            name: "notes.txt",
            bytes: 10_000,
          }]);
          await alice.chat.acceptFile("bob", id);
          assert.deepEqual(alice.chat.offers(), []);
          const file = await alice.next("file", (e) => e.name === "notes.txt");
          assert.equal(file.bytes, 10_000);
          assert.equal(
            file.sha256,
            createHash("sha256").update("file body\n".repeat(1000)).digest("hex"),
          );
          assert.equal(await Deno.readTextFile(file.path), "file body\n".repeat(1000));
          await bob.next("delivered", (e) => e.id === id);
          await assert.rejects(
            bob.chat.sendFile("alice", join(dir, "missing")),
            assertCode("ERR_FILE"),
          );
          // An offer declined: bob hears why; an id never offered: ERR_NOT_FOUND.
          const second = await bob.chat.sendFile("alice", path);
          await alice.next("file_offer", (e) => e.id === second);
          await alice.chat.declineFile("bob", second);
          const failed = await bob.next("file_failed", (e) => e.id === second);
          assert.equal(failed.direction, "out");
          assert.match(failed.reason, /"alice" declined it: declined by the user/);
          await assert.rejects(alice.chat.acceptFile("bob", second), assertCode("ERR_NOT_FOUND"));
          await assert.rejects(alice.chat.declineFile("carol", "x"), assertCode("ERR_NOT_FOUND"));
        },
      );

      await t.step("safetyNumber() is the same 60 digits on both sides", () => {
        const number = alice.chat.safetyNumber("bob");
        assert.match(number, /^(\d{5} ){11}\d{5}$/);
        assert.equal(bob.chat.safetyNumber("alice"), number);
      });

      await t.step("verify() marks the peer verified", async () => {
        await alice.chat.verify("bob");
        assert.equal(alice.chat.peers()[0].trust, "verified");
      });

      await t.step(
        "history() keeps both sides of the conversation with delivery state",
        async () => {
          const entries = await alice.chat.history("bob");
          assert.deepEqual(
            entries.map((e) => [e.from, e.kind, e.text ?? e.file?.name, e.state]),
            [["alice", "message", "hello bob", "delivered"], [
              "bob",
              "file",
              "notes.txt",
              undefined,
            ]],
          );
          assert.deepEqual((await alice.chat.conversations()).map((c) => c.name), ["bob"]);
          await assert.rejects(alice.chat.history("bob", 0), assertCode("ERR_USAGE"));
        },
      );

      await t.step(
        "offers(), the file event and the history name a file by the name it is saved under, the announced one kept apart",
        async () => {
          // 70 braille blanks push ".sh" out of sight; it is saved as "invoice.pdf .sh".
          const announced = "invoice.pdf" + "\u2800".repeat(70) + ".sh";
          await Deno.mkdir(join(dir, "padded"));
          const path = join(dir, "padded", announced);
          await Deno.writeTextFile(path, "#!/bin/sh\n");
          const id = await bob.chat.sendFile("alice", path);
          // An offer when bob's key is not pinned yet (else it is taken at once).
          let first: CoreEvent | undefined;
          for (let tries = 0; !first && tries < 300; tries++) {
            if (tries) await new Promise((r) => setTimeout(r, 50));
            first = alice.events.find((e) =>
              (e.type === "file" || e.type === "file_offer") && e.id === id
            );
          }
          assert.ok(first, "neither a file nor an offer");
          if (first.type === "file_offer") {
            assert.equal(first.name, "invoice.pdf .sh");
            assert.deepEqual(alice.chat.offers().map((o) => o.name), ["invoice.pdf .sh"]);
            await alice.chat.acceptFile("bob", id);
          }
          const file = await alice.next("file", (e) => e.id === id);
          assert.equal(file.name, "invoice.pdf .sh");
          assert.equal(file.announced, announced);
          assert.equal(file.path, join(alice.chat.downloads, "invoice.pdf .sh"));
          const entry = (await alice.chat.history("bob")).find((e) => e.id === id);
          assert.equal(entry?.file?.name, "invoice.pdf .sh");
          assert.equal(entry?.file?.announced, announced);
        },
      );

      await t.step("close() disconnects both sides", async () => {
        alice.chat.close("bob");
        await alice.next("disconnected", (e) => e.peer === "bob");
        await bob.next("disconnected", (e) => e.peer === "alice");
        assert.deepEqual(alice.chat.peers(), []);
      });

      await t.step("send() to a member who is not connected goes through the mailbox", async () => {
        const id = alice.chat.send("bob", "gone");
        assert.equal((await alice.next("queued", (e) => e.id === id)).to, "bob");
        const got = await bob.next("message", (e) => e.id === id);
        assert.deepEqual([got.text, got.via], ["gone", "mailbox"]);
        await alice.next("delivered", (e) => e.id === id);
      });
    } finally {
      await Promise.all([alice.chat.stop(), bob.chat.stop()]);
    }
  });
});

Deno.test("an invitation bob accepted is not shown to a client he starts later, nor accepted again; a new one is", async () => {
  await withService(async (service, dir) => {
    const alice = await startMember(service, dir, "alice");
    let bob = await startMember(service, dir, "bob");
    try {
      await alice.chat.invite("bob");
      await bob.next("invite", (e) => e.from === "alice");
      await bob.chat.accept("alice");
      await alice.next("connected", (e) => e.peer === "bob");
      await bob.chat.stop();
      await alice.next("disconnected", (e) => e.peer === "bob");
      bob = await startAgain(bob.chat.identity);
      // find() asks the CA at once: the invitation taken up is not its to list any more.
      await assert.rejects(
        bob.chat.accept("alice"),
        assertCode("ERR_NOT_FOUND", /No invitation from "alice"/),
      );
      await new Promise((r) => setTimeout(r, 1_000));
      assert.deepEqual(eventsSince(bob, 0, (e) => e.type === "invite"), []);
      assert.deepEqual(bob.chat.invitations(), []);
      // A new invitation from alice is news.
      await alice.chat.invite("bob");
      await bob.next("invite", (e) => e.from === "alice");
      await bob.chat.accept("alice");
      assert.equal(bob.chat.isConnected("alice"), true);
    } finally {
      await Promise.all([alice.chat.stop(), bob.chat.stop()]);
    }
  });
});

Deno.test("connections: a replaced one closes without a word, a refused accept is never connected", async (t) => {
  await withService(async (service, dir) => {
    let alice = await startMember(service, dir, "alice");
    const bob = await startMember(service, dir, "bob");
    try {
      await t.step(
        "a connection replaced by a new one says nothing when it closes: both sides stay connected",
        async () => {
          await alice.chat.invite("bob");
          await bob.next("invite", (e) => e.from === "alice");
          await bob.chat.accept("alice");
          await alice.next("connected", (e) => e.peer === "bob");
          const [atAlice, atBob] = [alice.events.length, bob.events.length];
          await alice.chat.invite("bob");
          await bob.next("invite", (e) => e.from === "alice", atBob);
          await bob.chat.accept("alice");
          await alice.next("connected", (e) => e.peer === "bob", atAlice);
          // The old connection's bye and close come after the new one's connected.
          await new Promise((r) => setTimeout(r, 1_500));
          const gone = (e: CoreEvent) => e.type === "disconnected";
          assert.deepEqual(eventsSince(alice, atAlice, gone), []);
          assert.deepEqual(eventsSince(bob, atBob, gone), []);
          assert.equal(alice.chat.isConnected("bob"), true);
          assert.equal(bob.chat.isConnected("alice"), true);
          const id = bob.chat.send("alice", "still here");
          await alice.next("message", (e) => e.id === id);
        },
      );

      await t.step(
        "an accept the listener refuses (alice restarted, and no longer holds the invitation) fails at once, never connected",
        async () => {
          const mark = bob.events.length;
          await alice.chat.invite("bob");
          await bob.next("invite", (e) => e.from === "alice", mark);
          const port = Number(alice.chat.listen.split(":")[1]);
          await alice.chat.stop();
          alice = await startAgain(alice.chat.identity, { listenPort: port });
          const started = Date.now();
          await assert.rejects(
            bob.chat.accept("alice"),
            assertCode("ERR_PEER_REJECTED", /^"alice" did not admit us: not-invited \(/),
          );
          const ms = Date.now() - started;
          assert.ok(ms < 5_000, `the refusal took ${ms} ms`);
          assert.deepEqual(eventsSince(bob, mark, (e) => e.type === "connected"), []);
          assert.equal(bob.chat.isConnected("alice"), false);
          assert.deepEqual(eventsSince(alice, 0, (e) => e.type === "connected"), []);
          // Not admitted, so not taken up: the CA still lists the invitation to bob's clients
          // (a client tells it in the background once admitted; give a wrong one time to).
          await new Promise((r) => setTimeout(r, 1_000));
          const { invitations } = await bob.chat.identity.client().pending();
          assert.deepEqual(invitations.map((i) => i.from), ["alice"]);
        },
      );

      await t.step(
        "a listener that refuses says why only to a peer that negotiated e2e-chat/1.1: an older one gets nothing, as before",
        async () => {
          const mark = alice.events.length;
          // alice holds no invitation of bob now.
          const told = await dialAs(bob.chat.identity, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
          assert.equal(told.alpnProtocol, ALPN_REFUSALS);
          assert.equal(await readToClose(told), '{"type":"refused","reason":"not-invited"}\n');
          const older = await dialAs(bob.chat.identity, alice.chat.listen, [ALPN]);
          assert.equal(older.alpnProtocol, ALPN);
          assert.equal(await readToClose(older), "");
          const said = (e: CoreEvent) => e.type === "connected" || e.type === "warning";
          assert.deepEqual(eventsSince(alice, mark, said), []);
        },
      );

      await t.step(
        "an admitted peer that refuses us is never connected, and the warning says why",
        async () => {
          const mark = alice.events.length;
          await alice.chat.invite("bob");
          const socket = await dialAs(bob.chat.identity, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
          socket.end('{"type":"refused","reason":"key-changed"}\n');
          await alice.next(
            "warning",
            (e) => /^Not connected to "bob": it refused us: key-changed \(/.test(e.message),
            mark,
          );
          const said = (e: CoreEvent) => e.type === "connected" || e.type === "disconnected";
          assert.deepEqual(eventsSince(alice, mark, said), []);
        },
      );

      await t.step(
        "the inviter is connected only once the peer's hello arrives: a peer that closes before it is never connected nor disconnected",
        async () => {
          const mark = alice.events.length;
          await alice.chat.invite("bob");
          const socket = await dialAs(bob.chat.identity, alice.chat.listen);
          // Admitted by alice's listener (bob's key, invited), but bob's side says no hello.
          await new Promise((r) => setTimeout(r, 1_000));
          assert.equal(alice.chat.isConnected("bob"), false);
          socket.destroy();
          await alice.next(
            "warning",
            (e) => /Not connected to "bob": the connection closed before its hello/.test(e.message),
            mark,
          );
          const said = (e: CoreEvent) => e.type === "connected" || e.type === "disconnected";
          assert.deepEqual(eventsSince(alice, mark, said), []);
          // And one that says hello is connected.
          await alice.chat.invite("bob");
          const hello = await dialAs(bob.chat.identity, alice.chat.listen);
          hello.write('{"type":"hello","v":1}\n');
          await alice.next("connected", (e) => e.peer === "bob", mark);
          hello.destroy();
          await alice.next("disconnected", (e) => e.peer === "bob", mark);
        },
      );
    } finally {
      await Promise.all([alice.chat.stop(), bob.chat.stop()]);
    }
  });
});

Deno.test("an accept that reaches someone else at the invitation's address refuses it, and tells it why", async () => {
  await withService(async (service, dir) => {
    const carol = await startMember(service, dir, "carol");
    // A listener with carol's certificate where alice's invitation says she listens.
    const heard = Promise.withResolvers<string>();
    const { credentials, anchor } = carol.chat.identity;
    const server = tls.createServer(
      serverOptions(credentials, anchor, { alpn: [...ALPN_OFFERED], tls13Only: true }),
      (socket) => readToClose(socket).then(heard.resolve),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    const alice = await startMember(service, dir, "alice", {
      advertise: { host: "127.0.0.1", port },
    });
    const bob = await startMember(service, dir, "bob");
    try {
      await alice.chat.invite("bob");
      await bob.next("invite", (e) => e.from === "alice");
      await assert.rejects(bob.chat.accept("alice"), assertCode("ERR_PEER_REJECTED"));
      assert.equal(await heard.promise, '{"type":"refused","reason":"name-mismatch"}\n');
      assert.deepEqual(eventsSince(bob, 0, (e) => e.type === "connected"), []);
    } finally {
      server.close();
      await Promise.all([alice.chat.stop(), bob.chat.stop(), carol.chat.stop()]);
    }
  });
});

Deno.test("an invitation made for bob's old key is not shown to the client he joined again with: alice's client invites his new key at once, and says why", async () => {
  await withService(async (service, dir) => {
    const alice = await startMember(service, dir, "alice");
    const bob = await startMember(service, dir, "bob");
    let again: Recorded | undefined;
    try {
      await alice.chat.invite("bob");
      await bob.next("invite", (e) => e.from === "alice");
      await bob.chat.accept("alice");
      await alice.next("connected", (e) => e.peer === "bob");
      await bob.chat.stop();
      await alice.chat.invite("bob");
      const [stale] = (await bob.chat.identity.client().pending()).invitations;
      assert.equal(stale.from, "alice");
      // bob lost his key, and joins again with a new one (his new invite replaces his certificate).
      const mark = alice.events.length;
      again = await startMember(service, join(dir, "again"), "bob");
      await alice.next("warning", (e) => /^Invited "bob" again: .*new key/.test(e.message), mark);
      await again.next("invite", (e) => e.from === "alice");
      const listed = (await again.chat.identity.client().pending()).invitations;
      assert.deepEqual(listed.map((i) => i.from), ["alice"]);
      assert.notEqual(listed[0].id, stale.id);
      await again.chat.accept("alice");
      // alice's client pinned bob's old key: the new one is a change, to compare out of band.
      const connected = await alice.next("connected", (e) => e.peer === "bob", mark);
      assert.equal(connected.trust, "changed");
    } finally {
      await Promise.all([alice.chat.stop(), bob.chat.stop(), again?.chat.stop()]);
    }
  });
});

Deno.test("a listener says superseded of a certificate older than the directory's, not-logged of a newer one it does not give, and nothing of one it cannot check for want of the CA", async () => {
  await withService(async (service, dir) => {
    // alice's CA client, in front of the real service, gives the directory answer `stale` when set.
    const id = await enroll(
      join(dir, "alice"),
      parseInvite(await makeInvite(service.home, "alice")),
    );
    const ca = id.client();
    const lookup = ca.lookup.bind(ca);
    let stale: CertificateReply | undefined;
    ca.lookup = async (name) => stale ?? await lookup(name);
    id.client = () => ca;
    const alice = await startAgain(id);
    const bob = await startMember(service, dir, "bob");
    try {
      await alice.chat.invite("bob"); // the directory proved bob's first certificate
      // bob renews twice (same key): the directory gives the third; alice's CRL, fetched at
      // her start, does not list the second yet.
      const second = await bob.chat.identity.renew();
      const directoryOfSecond = await lookup("bob");
      await new Promise((r) => setTimeout(r, 1_100)); // the third's notAfter a second later
      const third = await second.renew();
      const superseded = await dialAs(second, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
      // Before: not-logged, as for a certificate the CA did not log.
      assert.equal(await readToClose(superseded), '{"type":"refused","reason":"superseded"}\n');
      // A directory that still gives the second (as a CA that did not log the third would).
      stale = directoryOfSecond;
      const unlogged = await dialAs(third, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
      assert.equal(await readToClose(unlogged), '{"type":"refused","reason":"not-logged"}\n');
      stale = undefined;
      // The CA away: whether the third is the directory's is not known, and nothing is said.
      await service.stop();
      const unchecked = await dialAs(third, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
      assert.equal(await readToClose(unchecked), "");
      assert.deepEqual(eventsSince(alice, 0, (e) => e.type === "connected"), []);
    } finally {
      await Promise.all([alice.chat.stop(), bob.chat.stop()]);
    }
  });
});

Deno.test("a listener says superseded of a certificate its CRL lists as superseded (a renewal), and revoked of one revoked for another reason", async () => {
  await withService(async (service, dir) => {
    const bob = await startMember(service, dir, "bob");
    const carol = await startMember(service, dir, "carol");
    const bobFirst = bob.chat.identity;
    const carolFirst = carol.chat.identity;
    await Promise.all([bob.chat.stop(), carol.chat.stop()]);
    await bobFirst.renew(); // the first is revoked, reason superseded
    const revoke = await runCa(service.home, ["revoke", "carol", "--reason", "keyCompromise"]);
    assert.equal(revoke.code, 0, revoke.stderr);
    // alice starts after both: her CRL lists bob's first certificate and carol's.
    const alice = await startMember(service, dir, "alice");
    try {
      const old = await dialAs(bobFirst, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
      // Before: revoked, as if bob's key had been compromised.
      assert.equal(await readToClose(old), '{"type":"refused","reason":"superseded"}\n');
      const revoked = await dialAs(carolFirst, alice.chat.listen, [ALPN_REFUSALS, ALPN]);
      assert.equal(await readToClose(revoked), '{"type":"refused","reason":"revoked"}\n');
      assert.deepEqual(eventsSince(alice, 0, (e) => e.type === "connected"), []);
    } finally {
      await alice.chat.stop();
    }
  });
});

Deno.test("start() of a certificate that expired says when, and that only a new invite helps", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "bob");
    await enroll(home, parseInvite(await makeInvite(service.home, "bob")));
    const key = await Deno.readTextFile(join(home, "id", "key.pem"));
    const { cert } = await expiredCertificate(service, join(dir, "ca-copy"), "bob", key);
    await Deno.writeTextFile(join(home, "id", "cert.pem"), cert);
    await assert.rejects(Chat.start(await Identity.load(home)), (e) => {
      assertCode("ERR_FORBIDDEN", /^Your certificate expired on 2020-01-08T00:00:00\.000Z$/)(e);
      assert.equal(
        (e as E2eError).hint,
        "an expired certificate cannot be renewed: ask your admin for a new invite " +
          "(deno task ca invite bob) and join with it in another --home",
      );
      return true;
    });
  });
});

Deno.test("start() of a home whose key-changes.json cannot be read refuses with an error naming the file, and leaves it as it was; one whose room-owed.json cannot be read starts, says so, and moves it aside intact", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "bob");
    const id = await enroll(home, parseInvite(await makeInvite(service.home, "bob")));
    // Cut short (a copy of the home made while it was written, a disk error): not JSON.
    const torn = '{"v":1,"changes":[{"peer":"carol","keyFing';
    const file = id.home.keyChanges;
    await Deno.mkdir(join(file, ".."), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(file, torn, { mode: 0o600 });
    await assert.rejects(Chat.start(await Identity.load(home)), (e) => {
      assertCode("ERR_FILE")(e);
      assert.equal((e as E2eError).message, `Cannot read "${file}": it is not JSON`);
      assert.match((e as E2eError).hint ?? "", /^repair it, or move it aside/);
      return true;
    });
    assert.equal(await Deno.readTextFile(file), torn);
    await Deno.remove(file);
    // room-owed.json is sealed under history's key, which a home joined again with a new key
    // never has again: set aside, not a stop for good.
    const owed = id.home.mailboxRoomOwed;
    await Deno.mkdir(join(owed, ".."), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(owed, torn, { mode: 0o600 });
    const bob = await startAgain(await Identity.load(home));
    try {
      const [warning] = eventsSince(
        bob,
        0,
        (e) => e.type === "warning" && e.message.startsWith(`Cannot read "${owed}"`),
      ) as Array<{ message: string }>;
      const aside = /moved aside to "([^"]+)"/.exec(warning?.message ?? "")?.[1] ?? "";
      assert.ok(aside.startsWith(`${owed}.unreadable-`), warning?.message);
      assert.equal(await Deno.readTextFile(aside), torn);
      await assert.rejects(Deno.stat(owed), Deno.errors.NotFound);
    } finally {
      await bob.chat.stop();
    }
  });
});

// A start that failed after its listener was up kept the port (and its timers): the process
// could neither start again on it nor exit.
Deno.test("start() that fails after it began to listen lets go of the port and its timers, and throws the error that stopped it", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "bob");
    const id = await enroll(home, parseInvite(await makeInvite(service.home, "bob")));
    const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (free.addr as Deno.NetAddr).port;
    free.close();
    const portIsFree = () => Deno.listen({ hostname: "127.0.0.1", port }).close();

    // The mailbox's outbox.json, read after the listener is up, cut short: not JSON.
    const outbox = id.home.mailboxOutbox;
    await Deno.mkdir(join(outbox, ".."), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(outbox, '{"items":{"a', { mode: 0o600 });
    await assert.rejects(
      Chat.start(await Identity.load(home), { listenPort: port }),
      assertCode("ERR_FILE", new RegExp(`^Cannot read "${outbox}"$`)),
    );
    portIsFree();
    await Deno.remove(outbox);

    // The rooms' folder a file: read later still, once the CRL refresh runs.
    await Deno.writeTextFile(id.home.rooms, "", { mode: 0o600 });
    await assert.rejects(
      Chat.start(await Identity.load(home), { listenPort: port }),
      Deno.errors.NotADirectory,
    );
    portIsFree();
    await Deno.remove(id.home.rooms);

    const bob = await startAgain(await Identity.load(home), { listenPort: port });
    try {
      assert.equal(bob.chat.listen, `127.0.0.1:${port}`);
    } finally {
      await bob.chat.stop();
    }
  });
});

// /trust of a name already pinned, with no live connection, took whatever key the directory gives
// at that moment: the CA could give one key for the warning the user read, another for /trust.
Deno.test("trust() of a pinned name with no connection refuses a directory key the user was never shown, naming both, and pins nothing", async () => {
  await withService(async (service, dir) => {
    const alice = await startMember(service, dir, "alice");
    const bob = await startMember(service, dir, "bob");
    let bobAgain: Recorded | undefined;
    let bobThird: Recorded | undefined;
    try {
      await bob.chat.sendToMailbox("alice", "from bob's first key");
      await alice.next("message", (e) => e.text === "from bob's first key");
      await bob.chat.stop();
      // bob joins again with a new key: alice is shown that key on his mailbox item.
      bobAgain = await startMember(service, dir, "bob-again", {}, "bob");
      const shown = bobAgain.chat.identity.certificate.keyFingerprint;
      await bobAgain.chat.sendToMailbox("alice", "from bob's new key");
      await alice.next("key_changed", (e) => e.peer === "bob" && e.keyFingerprint === shown);
      await bobAgain.chat.stop();
      // Before alice trusts it, the directory gives yet another key for bob, never shown to her.
      bobThird = await startMember(service, dir, "bob-third", {}, "bob");
      const swapped = bobThird.chat.identity.certificate.keyFingerprint;
      const before = alice.chat.safetyNumber("bob");
      await assert.rejects(
        alice.chat.trust("bob"),
        assertCode(
          "ERR_FINGERPRINT_MISMATCH",
          new RegExp(
            `^Cannot trust "bob": the directory gives the key "${swapped.slice(0, 16)}", but ` +
              `the key you were shown is "${shown.slice(0, 16)}"$`,
          ),
        ),
      );
      assert.equal(alice.chat.safetyNumber("bob"), before, "the pinned key did not change");
      assert.deepEqual(alice.chat.keyChanges("bob").map((c) => c.keyFingerprint), [shown]);
      assert.ok(!alice.events.some((e) => e.type === "message" && e.text === "from bob's new key"));
    } finally {
      await Promise.all([alice, bob, bobAgain, bobThird].map((r) => r?.chat.stop()));
    }
  });
});

// A mailbox item from a changed key waits in HOME/mailbox/held/, its only copy (the CA's is
// deleted). r137: once the warning of that key change was dismissed nothing said so, and a first
// contact's item could no longer be let in (tests/hostile_rooms_test.ts).
Deno.test("dismissing the key change of a peer whose mailbox item is held back says that the item still waits, and trust() then reads it", async () => {
  await withService(async (service, dir) => {
    const alice = await startMember(service, dir, "alice");
    const bob = await startMember(service, dir, "bob");
    let bobAgain: Recorded | undefined;
    try {
      await bob.chat.sendToMailbox("alice", "from bob's first key");
      await alice.next("message", (e) => e.text === "from bob's first key");
      await bob.chat.stop();
      // bob joins again with a new key (a lost laptop) and writes before alice trusted it.
      bobAgain = await startMember(service, dir, "bob-again", {}, "bob");
      const key = bobAgain.chat.identity.certificate.keyFingerprint;
      await bobAgain.chat.sendToMailbox("alice", "from bob's new key");
      await alice.next("key_changed", (e) => e.peer === "bob" && e.keyFingerprint === key);
      await alice.next(
        "warning",
        (e) => e.message.startsWith('Held back a mailbox item from "bob"'),
      );
      const since = alice.events.length;
      await alice.chat.dismissKeyChange("bob", key);
      assert.deepEqual(alice.chat.keyChanges("bob"), []);
      assert.deepEqual(
        eventsSince(alice, since, (e) => e.type === "warning"),
        [{
          type: "warning",
          peer: "bob",
          message: 'A mailbox item from "bob" is still held back: its key changed. ' +
            "Compare the safety number, then trust the new key to read it.",
        }],
      );
      await alice.chat.trust("bob");
      await alice.next("message", (e) => e.text === "from bob's new key");
    } finally {
      // bob's first client stopped already, unless a step before failed.
      await Promise.all([alice, bob, bobAgain].map((r) => r?.chat.stop()));
    }
  });
});

Deno.test("a CA that says each invitation lapsed gets one invitation made again, and only for a key the directory changed", async () => {
  await withService(async (service, dir) => {
    // alice's CA client, in front of the real service, says each invitation she makes lapsed.
    const id = await enroll(
      join(dir, "alice"),
      parseInvite(await makeInvite(service.home, "alice")),
    );
    const ca = id.client();
    const offers: number[] = [];
    const toLapse: number[] = [];
    let stopped = false;
    let lapseEach = true; // else only those given to lapse()
    const lapse = (invitation: number) => toLapse.push(invitation);
    const offer = ca.offer.bind(ca);
    const pending = ca.pending.bind(ca);
    ca.offer = async (...args) => {
      const reply = await offer(...args);
      offers.push(reply.id);
      // Once alice's client recorded it (after its directory checks).
      if (lapseEach) setTimeout(() => lapse(reply.id), 500);
      return reply;
    };
    ca.pending = async (after = 0, waitSeconds = 0) => {
      const until = Date.now() + waitSeconds * 1000;
      while (!toLapse.length && !stopped && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 50));
      }
      if (!toLapse.length) return await pending(after, 0);
      const lapsed = toLapse.splice(0).map((invitation) => ({
        id: invitation,
        invitation,
        to: "bob",
        reason: "key",
      }));
      return { invitations: [], lapsed, cursor: after };
    };
    id.client = () => ca;
    const alice = await startAgain(id);
    const bob = await startMember(service, dir, "bob");
    let again: Recorded | undefined;
    const warnings = (since: number) =>
      eventsSince(alice, since, (e) => e.type === "warning" && /"bob"/.test(e.message));
    try {
      // bob's key is the one invited: the lapse is told once, and nothing is asked again.
      await alice.chat.invite("bob");
      await alice.next("warning", (e) => /^Your invitation of "bob" lapsed/.test(e.message));
      await new Promise((r) => setTimeout(r, 1_500));
      assert.equal(offers.length, 1);
      assert.equal(warnings(0).length, 1);
      assert.match(
        (warnings(0)[0] as { message: string }).message,
        /the CA's directory still gives the key it was made for/,
      );
      // bob joins again with a new key after alice's next invitation: the CA's lapse of it makes
      // it again once, for his new key; that one's lapse is told once.
      lapseEach = false;
      const mark = alice.events.length;
      await alice.chat.invite("bob");
      again = await startMember(service, join(dir, "again"), "bob");
      lapseEach = true;
      lapse(offers[1]);
      await alice.next("warning", (e) => /^Invited "bob" again: .*new key/.test(e.message), mark);
      await alice.next(
        "warning",
        (e) => /^Your invitation of "bob" lapsed again/.test(e.message),
        mark,
      );
      await new Promise((r) => setTimeout(r, 1_500));
      assert.equal(offers.length, 3);
      assert.equal(warnings(mark).length, 2);
    } finally {
      stopped = true;
      await Promise.all([alice.chat.stop(), bob.chat.stop(), again?.chat.stop()]);
    }
  });
});

// A TLS connection to `listen` (HOST:PORT) as `id`, saying nothing: a peer by hand.
async function dialAs(id: Identity, listen: string, alpn = [ALPN]): Promise<TLSSocket> {
  const at = listen.lastIndexOf(":");
  return await connectTls({
    ...clientOptions(id.anchor, { own: id.credentials, alpn, tls13Only: true }),
    host: listen.slice(0, at),
    port: Number(listen.slice(at + 1)),
  }, WAIT_MS);
}

// Everything `socket` receives until it closes, as text.
async function readToClose(socket: TLSSocket): Promise<string> {
  let text = "";
  socket.on("data", (bytes: Uint8Array) => (text += new TextDecoder().decode(bytes)));
  socket.on("error", () => {});
  await new Promise((resolve) => socket.once("close", resolve));
  return text;
}
