import assert from "node:assert/strict";
import { E2eError } from "../lib/errors.ts";
import {
  type Invitation,
  OFFERS_PER_PAIR_PER_MINUTE,
  OFFERS_PER_SENDER_PER_MINUTE,
  Rendezvous,
} from "./rendezvous.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function summary(invitations: Invitation[]): string[] {
  return invitations.map((i) => `${i.from}->${i.to}@${i.host}:${i.port}`);
}

Deno.test("Rendezvous.offer() refuses past 60 offers a minute to one recipient and 240 in all from one sender, with ERR_RATE_LIMITED", () => {
  const rendezvous = new Rendezvous();
  for (let i = 0; i < OFFERS_PER_PAIR_PER_MINUTE; i++) {
    rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  }
  assert.throws(() => rendezvous.offer("alice", "bob", { host: "h", port: 1 }), (e) => {
    assert.ok(e instanceof E2eError);
    assert.equal(e.code, "ERR_RATE_LIMITED");
    assert.equal(e.message, 'Too many invitations to "bob"');
    assert.match(e.hint ?? "", /^retry in \d+ s$/);
    return true;
  });
  assert.equal(rendezvous.pending("bob").length, 1, "the repeats replaced one offer");
  // Others may still invite bob, and alice may invite others, up to her own limit.
  rendezvous.offer("carol", "bob", { host: "h", port: 2 });
  let made = OFFERS_PER_PAIR_PER_MINUTE + 1;
  for (let i = 0; made < OFFERS_PER_SENDER_PER_MINUTE; i++, made++) {
    rendezvous.offer("alice", `u${i}`, { host: "h", port: 1 });
  }
  assert.throws(
    () => rendezvous.offer("alice", "dave", { host: "h", port: 1 }),
    /Too many invitations to "dave"/,
  );
});

Deno.test("Rendezvous.cursor() keeps a cursor below the next id and starts over from one at or above it", () => {
  const rendezvous = new Rendezvous();
  const { id } = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  assert.equal(rendezvous.cursor(0), 0);
  assert.equal(rendezvous.cursor(id - 1), id - 1);
  assert.equal(rendezvous.cursor(id), id);
  // From a run of the service whose clock was ahead of this one's.
  assert.equal(rendezvous.cursor(id + 1), 0);
  assert.equal(rendezvous.cursor(Number.MAX_SAFE_INTEGER), 0);
});

// ---------------------------------------------------------------------------
// offer and pending

Deno.test("Rendezvous.offer() records an invitation with an increasing id and an expiry ttlMs away", () => {
  const rendezvous = new Rendezvous();
  assert.equal(rendezvous.ttlMs, 300_000, "5 minutes by default");
  const before = Date.now();
  const first = rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 40123 });
  const second = rendezvous.offer("carol", "bob", { host: "::1", port: 1 });
  assert.equal(first.from, "alice");
  assert.equal(first.to, "bob");
  assert.equal(first.host, "127.0.0.1");
  assert.equal(first.port, 40123);
  assert.ok(first.id >= 1);
  assert.ok(second.id > first.id);
  assert.ok(first.expiresAt.getTime() >= before + 300_000);
  assert.ok(first.expiresAt.getTime() <= Date.now() + 300_000);
});

Deno.test("Rendezvous.pending() lists only the invitations for that user, oldest first", () => {
  const rendezvous = new Rendezvous();
  rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 1 });
  rendezvous.offer("alice", "carol", { host: "127.0.0.1", port: 2 });
  rendezvous.offer("dave", "bob", { host: "127.0.0.2", port: 3 });
  assert.deepEqual(summary(rendezvous.pending("bob")), [
    "alice->bob@127.0.0.1:1",
    "dave->bob@127.0.0.2:3",
  ]);
  assert.deepEqual(summary(rendezvous.pending("carol")), ["alice->carol@127.0.0.1:2"]);
  assert.deepEqual(rendezvous.pending("alice"), [], "an offer is not an invitation for its sender");
  assert.deepEqual(rendezvous.pending("nobody"), []);
});

Deno.test("Rendezvous.pending() with `after` lists only invitations with a higher id (the long-poll cursor)", () => {
  const rendezvous = new Rendezvous();
  const a = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  const b = rendezvous.offer("carol", "bob", { host: "h", port: 2 });
  const c = rendezvous.offer("dave", "bob", { host: "h", port: 3 });
  assert.deepEqual(rendezvous.pending("bob", 0).map((i) => i.id), [a.id, b.id, c.id]);
  assert.deepEqual(rendezvous.pending("bob", a.id).map((i) => i.id), [b.id, c.id]);
  assert.deepEqual(rendezvous.pending("bob", c.id), []);
  assert.deepEqual(rendezvous.pending("bob", c.id + 100), []);
  // Pending does not consume: asking again gives the same.
  assert.deepEqual(rendezvous.pending("bob", a.id).map((i) => i.id), [b.id, c.id]);
});

Deno.test("Rendezvous.offer() replaces an earlier offer between the same two users, with a new id", () => {
  const rendezvous = new Rendezvous();
  const first = rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 1000 });
  const other = rendezvous.offer("carol", "bob", { host: "127.0.0.1", port: 3000 });
  const reverse = rendezvous.offer("bob", "alice", { host: "127.0.0.1", port: 4000 });
  const second = rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 2000 });
  assert.ok(second.id > first.id);
  assert.deepEqual(summary(rendezvous.pending("bob")), [
    "carol->bob@127.0.0.1:3000",
    "alice->bob@127.0.0.1:2000",
  ]);
  // A client whose cursor passed the first offer still sees the replacement.
  assert.deepEqual(rendezvous.pending("bob", other.id).map((i) => i.id), [second.id]);
  // The offer the other way round is separate.
  assert.deepEqual(rendezvous.pending("alice").map((i) => i.id), [reverse.id]);
});

Deno.test("Rendezvous invitations expire after ttlMs", async () => {
  const rendezvous = new Rendezvous({ ttlMs: 50 });
  assert.equal(rendezvous.ttlMs, 50);
  const early = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  assert.ok(early.expiresAt.getTime() - Date.now() <= 50);
  await sleep(70);
  const late = rendezvous.offer("carol", "bob", { host: "h", port: 2 });
  assert.deepEqual(rendezvous.pending("bob").map((i) => i.id), [late.id], "the early one expired");
  assert.deepEqual(await rendezvous.wait("bob", 0, 0), [late]);
  await sleep(70);
  assert.deepEqual(rendezvous.pending("bob"), []);
});

Deno.test("Rendezvous keeps at most maxPerUser pending offers per sender, dropping the oldest", () => {
  const rendezvous = new Rendezvous({ maxPerUser: 3 });
  for (const to of ["b1", "b2", "b3", "b4", "b5"]) {
    rendezvous.offer("alice", to, { host: "h", port: 1 });
  }
  for (const to of ["b1", "b2"]) assert.deepEqual(rendezvous.pending(to), [], to);
  for (const to of ["b3", "b4", "b5"]) assert.equal(rendezvous.pending(to).length, 1, to);
  // Another sender has its own allowance.
  rendezvous.offer("carol", "b1", { host: "h", port: 1 });
  assert.equal(rendezvous.pending("b1").length, 1);
  assert.equal(rendezvous.pending("b3").length, 1, "carol's offer did not push out alice's");
});

Deno.test("Rendezvous: replacing an offer does not count against maxPerUser, and refreshes its age", () => {
  const rendezvous = new Rendezvous({ maxPerUser: 2 });
  rendezvous.offer("alice", "b1", { host: "h", port: 1 });
  rendezvous.offer("alice", "b2", { host: "h", port: 1 });
  rendezvous.offer("alice", "b1", { host: "h", port: 2 }); // replaces: b1 is now the newest
  assert.equal(rendezvous.pending("b1").length, 1);
  assert.equal(rendezvous.pending("b2").length, 1);
  rendezvous.offer("alice", "b3", { host: "h", port: 1 }); // drops the oldest: b2
  assert.deepEqual(rendezvous.pending("b2"), []);
  assert.equal(rendezvous.pending("b1")[0].port, 2);
  assert.equal(rendezvous.pending("b3").length, 1);
});

Deno.test("Rendezvous keeps 64 pending offers per sender by default", () => {
  const rendezvous = new Rendezvous({ offersPerSenderPerMinute: 1000 });
  for (let i = 0; i <= 64; i++) rendezvous.offer("alice", `u${i}`, { host: "h", port: 1 });
  assert.deepEqual(rendezvous.pending("u0"), []);
  assert.equal(rendezvous.pending("u1").length, 1);
  assert.equal(rendezvous.pending("u64").length, 1);
});

// ---------------------------------------------------------------------------
// wait and wakeAll

Deno.test("Rendezvous.wait() resolves at once when something is pending", async () => {
  const rendezvous = new Rendezvous();
  const offered = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  const started = Date.now();
  const got = await rendezvous.wait("bob", 0, 10_000);
  assert.ok(Date.now() - started < 1_000);
  assert.deepEqual(got.map((i) => i.id), [offered.id]);
});

Deno.test("Rendezvous.wait() with no time returns what is pending now, even nothing", async () => {
  const rendezvous = new Rendezvous();
  assert.deepEqual(await rendezvous.wait("bob", 0, 0), []);
});

Deno.test("Rendezvous.wait() wakes when an invitation for the user arrives, and not for others", async () => {
  const rendezvous = new Rendezvous();
  const before = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  let settled = false;
  const waiting = rendezvous.wait("bob", before.id, 10_000).finally(() => (settled = true));
  await sleep(10);
  rendezvous.offer("alice", "carol", { host: "h", port: 1 });
  await sleep(10);
  assert.equal(settled, false, "an offer to someone else does not wake bob");
  const started = Date.now();
  const offered = rendezvous.offer("dave", "bob", { host: "h", port: 2 });
  const got = await waiting;
  assert.ok(Date.now() - started < 1_000);
  assert.deepEqual(got.map((i) => i.id), [offered.id], "only what is above the cursor");
});

Deno.test("Rendezvous.wait() wakes every waiter of the user", async () => {
  const rendezvous = new Rendezvous();
  const waits = [rendezvous.wait("bob", 0, 10_000), rendezvous.wait("bob", 0, 10_000)];
  await sleep(5);
  const offered = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  for (const got of await Promise.all(waits)) assert.deepEqual(got.map((i) => i.id), [offered.id]);
});

Deno.test("Rendezvous.wait() times out with nothing", async () => {
  const rendezvous = new Rendezvous();
  const started = Date.now();
  assert.deepEqual(await rendezvous.wait("bob", 0, 50), []);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 45 && elapsed < 2_000, `${elapsed} ms`);
});

Deno.test("Rendezvous.wait() returns when its signal aborts", async () => {
  const rendezvous = new Rendezvous();
  const controller = new AbortController();
  const started = Date.now();
  const waiting = rendezvous.wait("bob", 0, 10_000, controller.signal);
  await sleep(10);
  controller.abort();
  assert.deepEqual(await waiting, []);
  assert.ok(Date.now() - started < 1_000);
});

Deno.test("Rendezvous.wait() returns at once when its signal has already aborted", async () => {
  // A long poll whose client went away before it started must not hold on for the full wait.
  const rendezvous = new Rendezvous();
  const controller = new AbortController();
  controller.abort();
  const started = Date.now();
  assert.deepEqual(await rendezvous.wait("bob", 0, 600, controller.signal), []);
  assert.ok(Date.now() - started < 300, `${Date.now() - started} ms`);
});

Deno.test("Rendezvous.wakeAll() releases every waiter at once", async () => {
  const rendezvous = new Rendezvous();
  const started = Date.now();
  const waits = [
    rendezvous.wait("bob", 0, 10_000),
    rendezvous.wait("carol", 0, 10_000),
    rendezvous.wait("carol", 0, 10_000),
  ];
  await sleep(5);
  rendezvous.wakeAll();
  assert.deepEqual(await Promise.all(waits), [[], [], []]);
  assert.ok(Date.now() - started < 1_000);
  // With no one waiting it does nothing, and later waits still work.
  rendezvous.wakeAll();
  const offered = rendezvous.offer("alice", "bob", { host: "h", port: 1 });
  assert.deepEqual((await rendezvous.wait("bob", 0, 10_000)).map((i) => i.id), [offered.id]);
});

Deno.test("Rendezvous.requestRelay() wakes the inviter's long poll with a relay request that shares the invitations' cursor and replaces an earlier one", async () => {
  const rendezvous = new Rendezvous();
  const invitation = rendezvous.offer("alice", "bob");
  assert.equal(invitation.host, undefined);
  assert.equal(invitation.port, undefined);
  assert.equal(rendezvous.get(invitation.id), invitation);
  const waiting = rendezvous.wait("alice", invitation.id, 10_000);
  const first = rendezvous.requestRelay(invitation, 30_000);
  assert.deepEqual(await waiting, []);
  assert.ok(first.id > invitation.id);
  assert.deepEqual(rendezvous.relays("alice", invitation.id), [first]);
  assert.deepEqual(
    [first.invitation, first.from, first.to],
    [invitation.id, "bob", "alice"],
  );
  const again = rendezvous.requestRelay(invitation, 30_000);
  assert.deepEqual(rendezvous.relays("alice"), [again]);
  assert.deepEqual(rendezvous.relays("alice", again.id), []);
  assert.deepEqual(rendezvous.relays("bob"), []);
});

Deno.test("Rendezvous.taken() by its recipient stops listing an invitation, which the relay still finds until it expires; anyone else's taken() is refused", () => {
  const rendezvous = new Rendezvous();
  const invitation = rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 1000 });
  const other = rendezvous.offer("carol", "bob", { host: "127.0.0.1", port: 3000 });
  assert.equal(rendezvous.taken(invitation.id, "alice"), false); // the inviter is not its recipient
  assert.equal(rendezvous.taken(invitation.id, "carol"), false);
  assert.equal(rendezvous.taken(invitation.id + 1000, "bob"), false);
  assert.deepEqual(rendezvous.pending("bob").map((i) => i.id), [invitation.id, other.id]);
  assert.equal(rendezvous.taken(invitation.id, "bob"), true);
  // Not listed again: to a client that starts later (after=0) nor to a long poll's cursor.
  assert.deepEqual(rendezvous.pending("bob").map((i) => i.id), [other.id]);
  assert.equal(rendezvous.get(invitation.id)?.id, invitation.id);
  // A new offer from alice is a new invitation, listed again.
  const again = rendezvous.offer("alice", "bob", { host: "127.0.0.1", port: 1000 });
  assert.deepEqual(rendezvous.pending("bob").map((i) => i.id), [other.id, again.id]);
  assert.equal(rendezvous.get(invitation.id), undefined);
});

Deno.test("Rendezvous.dropStale() drops the invitations made for another key of their recipient and tells each inviter once, on the invitations' cursor", async () => {
  const rendezvous = new Rendezvous();
  const old = rendezvous.offer("alice", "bob", { host: "h", port: 1, key: "k1" });
  const current = rendezvous.offer("carol", "bob", { host: "h", port: 2, key: "k2" });
  rendezvous.offer("dave", "bob", { host: "h", port: 3 }); // made without a key: any
  const started = Date.now();
  const woken = rendezvous.wait("alice", current.id, 5_000);
  rendezvous.dropStale("bob", "k2");
  assert.deepEqual(summary(rendezvous.pending("bob")), ["carol->bob@h:2", "dave->bob@h:3"]);
  assert.equal(rendezvous.get(old.id), undefined, "nor found by the relay");
  assert.deepEqual(await woken, []);
  assert.ok(Date.now() - started < 1_000, "alice's long poll woke");
  const lapses = rendezvous.lapses("alice", current.id);
  assert.equal(lapses.length, 1);
  const [lapse] = lapses;
  assert.ok(lapse.id > current.id, "above every id before it");
  assert.equal(lapse.invitation, old.id);
  assert.equal(lapse.invitee, "bob");
  assert.equal(lapse.reason, "key-changed");
  assert.deepEqual(rendezvous.lapses("alice", lapse.id), []);
  assert.deepEqual(rendezvous.lapses("carol"), []);
  assert.deepEqual(rendezvous.lapses("bob"), []);
  // Once: a second look with the same key finds nothing more.
  rendezvous.dropStale("bob", "k2");
  assert.equal(rendezvous.lapses("alice").length, 1);
  // A wait from below the lapse returns at once (nothing pending for alice, but a lapse).
  const at = Date.now();
  await rendezvous.wait("alice", current.id, 5_000);
  assert.ok(Date.now() - at < 1_000);
});

Deno.test("Rendezvous lapses expire with the invitation they tell of", async () => {
  const rendezvous = new Rendezvous({ ttlMs: 100 });
  rendezvous.offer("alice", "bob", { host: "h", port: 1, key: "k1" });
  rendezvous.dropStale("bob", "k2");
  assert.equal(rendezvous.lapses("alice").length, 1);
  await sleep(150);
  assert.deepEqual(rendezvous.lapses("alice"), []);
});
