/**
 * A script that writes faster than its peer reads (docs/PROTOCOL.md §3, "A peer must read what it
 * is sent"): two real `client chat --json` processes, the reader stopped with SIGSTOP — a laptop
 * whose lid closed, a consumer of its stdout that stalls — while the writer's stdin gets more
 * than a connection may hold unsent (`MAX_UNREAD_BYTES`, 24 MiB).
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { MAX_UNREAD_BYTES } from "../client/peer.ts";
import { ChatClient, connect, sleep, stopAll, waitUntil } from "./_harness.ts";
import { joinUser } from "./_chat_helpers.ts";
import { withService } from "./_service_helpers.ts";

const MiB = 1024 * 1024;
const TEXT = 32 * 1024;
/**
 * Messages of TEXT characters: more than a connection holds unsent before it is cut off, plus
 * what the kernel's socket buffers take on loopback (some 4 MiB for a peer that reads nothing);
 * what waits behind the peer stays under MAX_WAITING_CHARS, so input is still read.
 */
const COUNT = (MAX_UNREAD_BYTES + 8 * MiB) / TEXT;

/** Alice and bob joined and chatting (alice started with `aliceArgs`); both stopped after `fn`. */
async function pair(
  fn: (alice: ChatClient, bob: ChatClient) => Promise<void>,
  aliceArgs: string[] = [],
): Promise<void> {
  await withService(async (service, dir) => {
    const users = await Promise.all(
      ["alice", "bob"].map((n) => joinUser(service, n, join(dir, n))),
    );
    const alice = await ChatClient.start(users[0], { args: aliceArgs });
    const bob = await ChatClient.start(users[1]);
    try {
      await connect(alice, bob);
      await fn(alice, bob);
    } finally {
      await stopAll([alice, bob]);
    }
  });
}

function lines(count: number, tag: string): string {
  let out = "";
  for (let i = 0; i < count; i++) out += `${tag}${i}-`.padEnd(TEXT, "x") + "\n";
  return out;
}

Deno.test("a script that writes messages faster than its peer reads is held back, not cut off: /peers answers meanwhile, and every message arrives in order once the peer reads again", async () => {
  await pair(async (alice, bob) => {
    Deno.kill(bob.pid, "SIGSTOP");
    try {
      await alice.write(lines(COUNT, "m"));
      // Some went out, the rest wait behind bob; alice's commands still answer at once.
      const mark = alice.mark();
      await alice.send("/peers");
      await waitUntil(() => alice.since(mark, { type: "peers" }).length > 0, "/peers", 10_000);
      const [peers] = alice.since(mark, { type: "peers" });
      assert.deepEqual((peers.peers as Array<{ name: string }>).map((p) => p.name), ["bob"]);
      await sleep(1_000);
      const sent = alice.count("sent");
      assert.ok(sent > 0 && sent < COUNT, `alice sent ${sent} of ${COUNT} while bob was stopped`);
    } finally {
      Deno.kill(bob.pid, "SIGCONT");
    }
    await bob.expectCount("message", COUNT, 60_000);
    await alice.expectCount("delivered", COUNT, 60_000);
    const texts = bob.events.filter((e) => e.type === "message").map((e) =>
      String(e.text).split("-")[0]
    );
    assert.deepEqual(texts, Array.from({ length: COUNT }, (_, i) => `m${i}`));
    assert.equal(alice.count("disconnected"), 0, alice.describe());
  });
});

Deno.test("a peer that reads none of a backlog for --send-stall seconds is cut off, and the messages that waited behind it go to the mailbox", async () => {
  await pair(async (alice, bob) => {
    Deno.kill(bob.pid, "SIGSTOP");
    try {
      // 10 MiB: past what the kernel takes (some 4 MiB) and the backlog that holds input back
      // (4 MiB), far below what closes a connection at once.
      const count = (10 * MiB) / TEXT;
      await alice.write(lines(count, "m"));
      const gone = await alice.expect({ type: "disconnected", peer: "bob" }, 20_000);
      assert.match(String(gone.reason), /^"bob" reads nothing: closed with [\d.]+ [KM]iB unsent/);
      // What waited behind bob was neither lost nor sent to a connection that is gone.
      const sent = alice.count("sent");
      assert.ok(sent < count, `alice sent ${sent} of ${count}`);
      await alice.expectCount("queued", count - sent, 60_000);
    } finally {
      Deno.kill(bob.pid, "SIGCONT");
    }
  }, ["--send-stall", "2"]);
});

Deno.test("two scripts that write messages to each other at once, faster than either reads, both get every message in order, and neither connection is cut", async () => {
  await pair(async (alice, bob) => {
    // Each holds the other's messages while its own acks wait unread: neither may wait for good.
    const count = 200_000;
    const burst = (tag: string) => {
      let out = "";
      for (let i = 0; i < count; i++) out += `${tag}${i}-`.padEnd(200, "x") + "\n";
      return out;
    };
    await Promise.all([alice.write(burst("a")), bob.write(burst("b"))]);
    await Promise.all([
      alice.expectCount("delivered", count, 120_000),
      bob.expectCount("delivered", count, 120_000),
    ]);
    for (const [to, tag] of [[bob, "a"], [alice, "b"]] as const) {
      const got = to.events.filter((e) => e.type === "message").map((e) =>
        String(e.text).split("-")[0]
      );
      assert.deepEqual(got, Array.from({ length: count }, (_, i) => `${tag}${i}`));
    }
    assert.equal(alice.count("disconnected") + bob.count("disconnected"), 0);
  });
});
