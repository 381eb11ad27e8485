import assert from "node:assert/strict";
import https from "node:https";
import { CertificateAuthority } from "../ca/authority.ts";
import { serverOptions, trustAnchor } from "../lib/tls.ts";
import { PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { CaClient, type InvitationReply } from "./ca_client.ts";
import { Invitations, MAX_HELD_INVITATIONS, MAX_RELAYS_PER_ANSWER } from "./invitations.ts";

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
      // A CA that is down answers no look, the long poll's nor find()'s.
      if (answers[0] instanceof Error) return Promise.reject(answers.shift());
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

Deno.test("Invitations says when the CA answers again after failures, with a look that returns at once", async () => {
  const ca = rendezvous([new Error("down"), [invitation("alice")]]);
  const events: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: (i) => events.push(`invite ${i.from}`),
    onWarning: (m) => events.push(m),
    onBack: (since) => events.push(since > 0 && since <= Date.now() ? "back" : `back ${since}`),
  });
  invitations.start();
  await new Promise((r) => setTimeout(r, 2_500));
  invitations.stop();
  // The look after the failure waits for nothing (dave's invitation is what it finds), so the
  // CA's being back is known at once; then the long poll goes on.
  assert.deepEqual(events, [
    "Cannot check for invitations: down",
    "back",
    "invite dave",
    "invite alice",
  ]);
  assert.deepEqual(ca.calls.map(([, wait]) => wait), [25, 0, 25, 25]);
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

/**
 * A service of a real CA, over real TLS, that answers the long poll number `n` (0, 1, …) with
 * `answers[n]`; the one after the last is held until `release()`. A question without waiting
 * (find()) gets an invitation from "late".
 */
async function hostileRendezvous(
  answers: unknown[],
  fn: (v: {
    client: CaClient;
    lastPolled: Promise<void>;
    release: () => void;
  }) => Promise<void>,
): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const own = await ca.issueServiceCertificate(["127.0.0.1"]);
    const anchor = trustAnchor(ca.certificate.pem);
    const { promise: lastPolled, resolve: polled } = Promise.withResolvers<void>();
    let held: (() => void) | undefined;
    let n = 0;
    const server = https.createServer(serverOptions(own, anchor), (req, res) => {
      const answer = (body: unknown) => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (!req.url?.startsWith("/v1/rendezvous?")) {
        res.writeHead(404).end();
      } else if (req.url.endsWith("&wait=0")) {
        answer({ invitations: [invitation("late")], cursor: 0 }); // find(): what is pending
      } else if (n < answers.length) {
        answer(answers[n++]);
      } else {
        held = () => answer({ invitations: [], cursor: n });
        polled();
      }
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as { port: number }).port;
      await fn({
        client: new CaClient(`https://127.0.0.1:${port}`, anchor),
        lastPolled,
        release: () => held?.(),
      });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
}

Deno.test("Invitations holds at most MAX_HELD_INVITATIONS however many a hostile CA sends, expired ones going first, with one warning", async () => {
  const from = (prefix: string, count: number, expiresInMs = 600_000) =>
    Array.from({ length: count }, (_, i) => invitation(`${prefix}${i}`, expiresInMs));
  const answers = [
    { invitations: from("old", 1_000, -1), cursor: 1 },
    // Junk among them: not a valid name, no name, not an object.
    {
      invitations: [...from("user", 2_000), { ...invitation("x"), from: "../etc" }, {}, 42],
      cursor: 2,
    },
    { invitations: [invitation("late")], cursor: 3 },
  ];
  await hostileRendezvous(answers, async ({ client, lastPolled, release }) => {
    const seen = new Set<string>();
    const warnings: string[] = [];
    const invitations = new Invitations(client, {
      onInvite: (i) => seen.add(i.from),
      onWarning: (m) => warnings.push(m),
    });
    invitations.start();
    await lastPolled;
    // Still full: asked now, the CA's invitation from "late" is not held either.
    assert.equal(await invitations.find("late"), undefined);
    invitations.stop();
    release();
    const names = invitations.names();
    assert.equal(names.length, MAX_HELD_INVITATIONS);
    // The expired ones made room once the map was full: user0 to user1023 are held.
    assert.ok(names.includes("user0") && names.includes("user1023"), "the first 1024 are held");
    assert.ok(!names.includes("user1024") && !names.includes("late"), "those beyond are not");
    assert.ok(seen.has("user1023") && !seen.has("user1024") && !seen.has("late"));
    assert.deepEqual(warnings, [
      `Ignored 979 invitations from the CA: malformed, or beyond the ${MAX_HELD_INVITATIONS} ` +
      `held at once`,
    ]);
  });
});

Deno.test("Invitations hands a hostile CA's repeated relay requests to onRelay once per invitation, and so many", async () => {
  const relay = (invitation: number) => ({ id: 9, invitation, from: "bob" });
  const answers = [
    { invitations: [], relays: Array.from({ length: 5_000 }, () => relay(7)), cursor: 1 },
    {
      invitations: [],
      relays: [{ id: 9, from: "bob" }, ...Array.from({ length: 3_000 }, (_, i) => relay(i))],
      cursor: 2,
    },
  ];
  await hostileRendezvous(answers, async ({ client, lastPolled, release }) => {
    let relays = 0;
    const invitations = new Invitations(client, {
      onInvite: () => {},
      onWarning: () => {},
      onRelay: () => relays++,
    });
    invitations.start();
    await lastPolled;
    invitations.stop();
    release();
    assert.equal(relays, 1 + MAX_RELAYS_PER_ANSWER);
  });
});

Deno.test("Invitations.used() forgets an invitation taken up: the CA's listing it again neither holds nor shows it, a newer one from the same sender is new", async () => {
  const used = { ...invitation("alice"), id: 7 };
  const newer = { ...invitation("alice"), id: 9 };
  const told: number[] = [];
  const answers = [[used], [used], [newer]];
  const ca = {
    pending(after = 0, wait = 0) {
      if (wait === 0) return Promise.resolve({ invitations: [used], cursor: after });
      const next = answers.shift();
      if (!next) return new Promise<never>(() => {});
      return Promise.resolve({ invitations: next, cursor: 0 }); // a cursor that starts over
    },
    taken(id: number) {
      told.push(id);
      return Promise.resolve();
    },
  };
  const seen: number[] = [];
  const invitations = new Invitations(ca, {
    onInvite: (i) => seen.push(i.id),
    onWarning: () => {},
  });
  invitations.used(used);
  invitations.tell(used);
  await invitations.told();
  assert.deepEqual(told, [7]);
  assert.equal(await invitations.find("alice"), undefined);
  invitations.start();
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(seen, [9]);
  assert.equal((await invitations.find("alice"))?.id, 9);
});

Deno.test("Invitations hands each lapse of our invitations to onLapsed, skipping malformed ones, and the cursor moves past it", async () => {
  const answers = [
    {
      invitations: [],
      lapsed: [
        { id: 4, invitation: 2, to: "bob", reason: "key-changed" },
        { id: 5, invitation: "3", to: "carol", reason: "key-changed" },
        { id: 6, invitation: 4, to: "../x", reason: "key-changed" },
        null,
      ],
      cursor: 6,
    },
  ];
  const calls: number[] = [];
  const ca = {
    pending(after = 0) {
      calls.push(after);
      const next = answers.shift();
      return next
        ? Promise.resolve(next as unknown as { invitations: InvitationReply[]; cursor: number })
        : new Promise<never>(() => {});
    },
  };
  const lapsed: string[] = [];
  const invitations = new Invitations(ca, {
    onInvite: () => {},
    onWarning: () => {},
    onLapsed: (l) => lapsed.push(`${l.to}:${l.invitation}`),
  });
  invitations.start();
  await new Promise((r) => setTimeout(r, 20));
  invitations.stop();
  assert.deepEqual(lapsed, ["bob:2"]);
  assert.deepEqual(calls, [0, 6]);
});
