/**
 * Invitation spam (issue #15, docs/SECURITY.md §2): 50 `POST /v1/rendezvous`
 * from alice to bob once made 50 `invite` events in bob's client. The CA now
 * takes 60 offers a minute from one sender to one recipient (429 after), and
 * bob's client shows a repeated invitation once.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  enrollUser,
  type HttpsReply,
  initCa,
  type Service,
  startService,
} from "./_service_helpers.ts";
import { ChatClient, sleep } from "./_harness.ts";
import { joinUser } from "./_chat_helpers.ts";

Deno.test("80 invitations from alice to bob: 60 reach the CA, the rest get 429 ERR_RATE_LIMITED, and bob's client shows one invite", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-spam-" });
  let service: Service | undefined;
  let bob: ChatClient | undefined;
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home);
    bob = await ChatClient.start(await joinUser(service, "bob", join(dir, "bob")));
    const alice = await enrollUser(service, "alice");
    const mark = bob.mark();
    const statuses: number[] = [];
    for (let i = 0; i < 80; i++) {
      const reply: HttpsReply = await service!.request("/v1/rendezvous", {
        method: "POST",
        json: { to: "bob", port: 40_000 + i },
        cert: alice.cert,
        key: alice.key,
      });
      statuses.push(reply.status);
      if (reply.status === 429) {
        assert.equal((reply.json() as { error: { code: string } }).error.code, "ERR_RATE_LIMITED");
        assert.ok(reply.headers["retry-after"], "no retry-after");
      }
    }
    assert.deepEqual(statuses.filter((s) => s === 200).length, 60, statuses.join(" "));
    assert.deepEqual(statuses.filter((s) => s === 429).length, 20, statuses.join(" "));
    await bob.expect({ type: "invite", from: "alice" });
    await sleep(1_500); // time for any further invite event to arrive
    assert.equal(bob.since(mark, { type: "invite" }).length, 1, "invite events");
  } finally {
    await bob?.stop();
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
