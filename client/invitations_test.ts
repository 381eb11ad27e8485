import assert from "node:assert/strict";
import type { InvitationReply } from "./ca_client.ts";
import { Invitations } from "./invitations.ts";

function invitation(from: string, expiresInMs = 60_000): InvitationReply {
  return {
    id: 1,
    from,
    host: "127.0.0.1",
    port: 1,
    expiresAt: new Date(Date.now() + expiresInMs).toISOString(),
    peer: undefined!,
  };
}

/** A CA's rendezvous that answers from a script: each long poll takes the next answer. */
function rendezvous(answers: Array<InvitationReply[] | Error>) {
  const calls: Array<[number, number]> = [];
  return {
    calls,
    pending(after = 0, wait = 0) {
      calls.push([after, wait]);
      if (wait === 0) {
        return Promise.resolve({ invitations: [invitation("dave")], cursor: after });
      }
      const next = answers.shift();
      if (!next) return new Promise<never>(() => {}); // a poll that waits for ever
      if (next instanceof Error) return Promise.reject(next);
      return Promise.resolve({ invitations: next, cursor: after + next.length });
    },
  };
}

Deno.test("Invitations reports each invitation of the long poll once and advances the cursor", async () => {
  const ca = rendezvous([[invitation("alice")], [invitation("bob"), invitation("carol")]]);
  const seen: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: (i) => seen.push(i.from),
    onWarning: () => {},
  });
  invitations.start();
  invitations.start(); // once only
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(seen, ["alice", "bob", "carol"]);
  assert.deepEqual(ca.calls, [[0, 25], [1, 25], [3, 25]]);
  assert.deepEqual(invitations.names(), ["alice", "bob", "carol"]);
});

Deno.test("Invitations.find() asks the CA for one it does not hold, and forgets expired ones", async () => {
  const ca = rendezvous([[invitation("alice", -1)]]);
  const invitations = new Invitations(ca, { onInvite: () => {}, onWarning: () => {} });
  invitations.start();
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(invitations.names(), []);
  assert.equal(await invitations.find("alice"), undefined);
  assert.equal((await invitations.find("dave"))?.from, "dave");
  invitations.delete("dave");
  assert.deepEqual(invitations.names(), []);
});

Deno.test("Invitations warns once while it cannot check the CA, with the reason", async () => {
  const ca = rendezvous([new Error("down"), new Error("down")]);
  const warnings: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: () => {},
    onWarning: (m) => warnings.push(m),
  });
  invitations.start();
  await new Promise((r) => setTimeout(r, 2_500));
  invitations.stop();
  assert.deepEqual(warnings, ["Cannot check for invitations: down"]);
});

Deno.test("Invitations shows a repeated invitation from the same sender once, and keeps the newest address", async () => {
  const repeat = (port: number) => ({ ...invitation("alice"), port });
  const ca = rendezvous([[repeat(1)], [repeat(2), repeat(3)], [invitation("bob")]]);
  const seen: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: (i) => seen.push(i.from),
    onWarning: () => {},
  });
  invitations.start();
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(seen, ["alice", "bob"]);
  assert.equal((await invitations.find("alice"))?.port, 3);
  // Once used (or expired), a new invitation from alice is news again.
  invitations.delete("alice");
  assert.deepEqual(invitations.names(), ["bob"]);
});

Deno.test("Invitations hands each relay request of the long poll to onRelay, and the cursor moves past it", async () => {
  const answers = [
    { invitations: [], relays: [{ id: 4, invitation: 2, from: "bob" }], cursor: 4 },
    { invitations: [invitation("carol")], cursor: 5 },
  ];
  const calls: number[] = [];
  const ca = {
    pending(after = 0) {
      calls.push(after);
      const next = answers.shift();
      return next ? Promise.resolve(next) : new Promise<never>(() => {});
    },
  };
  const relays: string[] = [];
  const invited: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: (i) => invited.push(i.from),
    onWarning: () => {},
    onRelay: (r) => relays.push(`${r.from}:${r.invitation}`),
  });
  invitations.start();
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(relays, ["bob:2"]);
  assert.deepEqual(invited, ["carol"]);
  assert.deepEqual(calls, [0, 4, 5]);
  assert.deepEqual(invitations.names(), ["carol"], "a relay request is not an invitation");
});
