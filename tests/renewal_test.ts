/**
 * A client left running never lapses (issue #15): alice's chat core runs in
 * this process with a real CA service and real peers (bob, carol, dave as
 * `client chat --json` processes). Her certificate is made to look five days
 * old through the renewal's test-only clock (the CA issues 7-day
 * certificates; everything else keeps the real clock): the chat renews in the
 * background with her encrypted key, bob stays connected, and the listener and
 * a new outgoing connection present the new certificate. With the CA gone,
 * renewal retries and tells her only after several failures.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Chat } from "../client/chat.ts";
import type { CoreEvent } from "../client/events.ts";
import { Identity } from "../client/identity.ts";
import { ChatClient, runTask, waitUntil } from "./_harness.ts";
import { joinUser, whoami } from "./_chat_helpers.ts";
import { assertSuccess, makeInvite, withService } from "./_service_helpers.ts";

const KEY_PASSPHRASE = "correct horse battery staple";
const FIVE_DAYS = 5 * 86_400_000;

Deno.test("the chat renews its certificate in the background: peers connected before stay connected, new connections in and out present the new certificate, and a CA that stays away is reported after several failures", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    const joined = await runTask("client", ["join", await makeInvite(service.home, "alice")], {
      env: { E2E_CHAT_HOME: aliceHome, E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE },
    });
    assertSuccess(joined, "join alice (encrypted key)");
    const users = await Promise.all(
      ["bob", "carol", "dave"].map((n) => joinUser(service, n, join(dir, n))),
    );
    const [bob, carol, dave] = await Promise.all(users.map((u) => ChatClient.start(u)));
    const events: CoreEvent[] = [];
    // The schedule's clock runs five days ahead for the certificate named here, and only for it.
    let aged: string | undefined;
    let chat: Chat | undefined;
    try {
      const id = await Identity.load(aliceHome, {
        passphrase: () => Promise.resolve(KEY_PASSPHRASE),
      });
      const first = id.certificate;
      chat = await Chat.start(id, {
        onEvent: (e) => events.push(e),
        renewal: {
          clock: () => Date.now() + (chat?.identity.certificate.serial === aged ? FIVE_DAYS : 0),
          checkMs: 100,
          retryMs: 100,
          maxRetryMs: 400,
        },
      });
      await chat.invite("bob");
      await bob.expect({ type: "invite", from: "alice" });
      await bob.send("/accept alice");
      const before = await bob.expect({ type: "connected", peer: "alice" });
      assert.equal(before.fingerprint, first.fingerprint);
      await waitUntil(() => chat!.isConnected("bob"), "alice connected to bob");

      // --- five days later, for the schedule: renewed while running
      aged = first.serial;
      await waitUntil(
        () => chat!.identity.certificate.serial !== first.serial,
        "the chat did not renew",
        15_000,
      );
      const renewed = chat.identity.certificate;
      assert.equal(renewed.keyFingerprint, first.keyFingerprint, "the same key");
      assert.ok(renewed.notAfter > first.notAfter);
      const stored = await whoami({ name: "alice", home: aliceHome } as never);
      assert.equal(stored.serial, renewed.serial, "cert.pem holds the new certificate");
      assert.deepEqual(
        events.filter((e) => e.type === "warning" || e.type === "log_alarm"),
        [],
        "a successful renewal is silent",
      );

      // bob, connected before, keeps talking both ways
      chat.send("bob", "still there after my renewal?");
      await bob.expect({ type: "message", from: "alice", text: "still there after my renewal?" });
      await bob.send("yes");
      await waitUntil(
        () => events.some((e) => e.type === "message" && e.from === "bob" && e.text === "yes"),
        "alice did not hear bob",
      );
      assert.ok(!events.some((e) => e.type === "disconnected"), "a peer was disconnected");

      // a new connection to alice's listener: carol sees the new certificate
      await chat.invite("carol");
      await carol.expect({ type: "invite", from: "alice" });
      await carol.send("/accept alice");
      const incoming = await carol.expect({ type: "connected", peer: "alice" });
      assert.equal(incoming.fingerprint, renewed.fingerprint, "the listener's certificate");
      await waitUntil(() => chat!.isConnected("carol"), "alice did not admit carol");

      // a new connection from alice: dave sees the new certificate
      await dave.send("/chat alice");
      await dave.expect({ type: "invited", to: "alice" });
      await waitUntil(() => chat!.invitations().includes("dave"), "no invitation from dave");
      await chat.accept("dave");
      const outgoing = await dave.expect({ type: "connected", peer: "alice" });
      assert.equal(outgoing.fingerprint, renewed.fingerprint, "the client certificate");

      // --- the CA goes away and the certificate ages again: retries, then one clear warning
      await service.stop();
      aged = renewed.serial;
      await waitUntil(
        () => events.some((e) => e.type === "warning" && /^Cannot renew/.test(e.message)),
        "no warning",
        15_000,
      );
      const warnings = events.flatMap((e) =>
        e.type === "warning" && /^Cannot renew/.test(e.message) ? [e.message] : []
      );
      assert.match(warnings[0], /^Cannot renew your certificate \(3 attempts failed; it expires/);
      assert.equal(chat.identity.certificate.serial, renewed.serial);
      chat.send("bob", "the CA is down but we are not");
      await bob.expect({ type: "message", from: "alice", text: "the CA is down but we are not" });
    } finally {
      await chat?.stop();
      await Promise.all([bob.stop(), carol.stop(), dave.stop()]);
    }
  });
});
