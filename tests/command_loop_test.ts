/**
 * The command loop never waits on one peer (issue #15, finding 3's last part):
 * `/accept` of an invitation whose address never answers takes up to the
 * handshake deadline, and meanwhile every other line runs at once; a message
 * typed for that peer waits its turn behind the accept.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { enrollUser, initCa, type Service, startService } from "./_service_helpers.ts";
import { ChatClient } from "./_harness.ts";
import { joinUser } from "./_chat_helpers.ts";

Deno.test("while /accept waits on an address that never answers, /peers and /help answer at once and a message for that peer waits behind it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-loop-" });
  let service: Service | undefined;
  let bob: ChatClient | undefined;
  // Accepts TCP connections and never says a word: a TLS handshake there waits for its deadline.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const conn of silent) held.push(conn);
  })().catch(() => {});
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home);
    bob = await ChatClient.start(await joinUser(service, "bob", join(dir, "bob")));
    const alice = await enrollUser(service, "alice");
    const reply = await service.request("/v1/rendezvous", {
      method: "POST",
      json: { to: "bob", port: (silent.addr as Deno.NetAddr).port, host: "127.0.0.1" },
      cert: alice.cert,
      key: alice.key,
    });
    assert.equal(reply.status, 200, reply.body);
    await bob.expect({ type: "invite", from: "alice" });

    const mark = bob.mark();
    await bob.send("/accept alice");
    await bob.send("/msg alice typed while the accept waits");
    await bob.send("/peers");
    await bob.send("/help");
    // Answered while the accept still waits (its handshake deadline is 10 s).
    await bob.expect({ type: "peers" }, 5_000);
    await bob.expect({ type: "help" }, 5_000);
    assert.equal(bob.since(mark, { type: "error" }).length, 0, "no error yet: the accept waits");
    // Then the accept fails, and the message behind it is tried only after that.
    const failed = await bob.expect({ type: "error" }, 30_000);
    assert.match(String(failed.message), /alice/);
    const events = bob.since(mark).map((e) => e.type);
    assert.ok(events.indexOf("peers") < events.indexOf("error"), events.join(" "));
  } finally {
    await bob?.stop();
    for (const c of held) c.close();
    silent.close();
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
