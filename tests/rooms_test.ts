/**
 * Rooms end to end (docs/PROTOCOL.md §8, docs/SECURITY.md): one real CA
 * service, real `client chat --json` processes that create, invite, join,
 * leave and remove over their pairwise mutual-TLS connections, and a raw
 * member speaking room frames by hand — forged, altered, replayed, malformed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createPrivateKey, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { type SignedList, type SignedMessage, signMessage } from "../lib/room.ts";
import { type ChatClient, ChatClient as Client, stopAll, waitUntil } from "./_harness.ts";
import type { Service } from "./_service_helpers.ts";
import { joinUser, RawPeer, runScenarios, type User } from "./_chat_helpers.ts";

const ROOM = "#team";
const ROOM_WAIT_MS = 30_000;

/** A scenario's world: the shared service, its own folder, and what it started. */
class Scene {
  readonly service: Service;
  readonly dir: string;
  #clients: ChatClient[] = [];
  #raw: RawPeer[] = [];

  constructor(service: Service, dir: string) {
    this.service = service;
    this.dir = dir;
  }

  async join(...names: string[]): Promise<User[]> {
    return await Promise.all(names.map((n) => joinUser(this.service, n, join(this.dir, n))));
  }

  async start(user: User, denoFlags: string[] = [], args: string[] = []): Promise<ChatClient> {
    const client = await Client.start(user, { denoFlags, args });
    this.#clients.push(client);
    return client;
  }

  raw(port: number, user: User): RawPeer {
    const peer = RawPeer.connect(port, {
      cert: Deno.readTextFileSync(user.certPath),
      key: Deno.readTextFileSync(user.keyPath),
    });
    this.#raw.push(peer);
    return peer;
  }

  async close(): Promise<void> {
    for (const r of this.#raw) r.destroy();
    await stopAll(this.#clients);
  }
}

/** Whether `c` is connected to `peer` now, as its last connected/disconnected event says. */
function isConnected(c: ChatClient, peer: string): boolean {
  const last = c.events.findLast((e) =>
    (e.type === "connected" || e.type === "disconnected") && e.peer === peer
  );
  return last?.type === "connected";
}

/** Waits until every client is connected to every other. */
async function meshed(clients: ChatClient[]): Promise<void> {
  await waitUntil(
    () => clients.every((c) => clients.every((o) => o === c || isConnected(c, o.name))),
    `a full mesh among ${clients.map((c) => c.name).join(", ")}`,
    ROOM_WAIT_MS,
  );
}

/** `creator` invites `member` to ROOM (connecting first when needed); `member` joins. */
async function addMember(creator: ChatClient, member: ChatClient, connected = false) {
  await creator.send(`/room invite ${ROOM} ${member.name}`);
  if (!connected) {
    await member.expect({ type: "invite", from: creator.name });
    await member.send(`/accept ${creator.name}`);
  }
  await member.expect({ type: "room_invite", room: ROOM, from: creator.name });
  await member.send(`/room join ${ROOM}`);
  await member.expect({ type: "room_joined", room: ROOM }, ROOM_WAIT_MS);
  await creator.expect({ type: "room_member", room: ROOM, name: member.name, change: "joined" });
}

/** The room messages `c` showed from `mark` on, as "AUTHOR:TEXT". */
function shown(c: ChatClient, mark = 0): string[] {
  return c.since(mark, { type: "room_message", room: ROOM }).map((e) => `${e.from}:${e.text}`);
}

/** The member-list hash `c` reports. */
async function listHashOf(c: ChatClient): Promise<string> {
  await c.send(`/room members ${ROOM}`);
  const e = await c.expect({ type: "room_members", room: ROOM });
  return e.hash as string;
}

// ---------------------------------------------------------------------------

async function fiveMembers(s: Scene): Promise<void> {
  const users = await s.join("alice", "bob", "carol", "dave", "erin");
  const clients = await Promise.all(users.map((u) => s.start(u)));
  const [alice, bob, carol, dave, erin] = clients;
  await alice.send(`/room create ${ROOM}`);
  await alice.expect({ type: "room_joined", room: ROOM });
  for (const member of [bob, carol, dave, erin]) await addMember(alice, member);
  await meshed(clients);
  const hashes = await Promise.all(clients.map(listHashOf));
  assert.equal(new Set(hashes).size, 1, `members see different lists: ${hashes}`);

  // Each member's messages reach all others exactly once, in each author's order.
  const mark = clients.map((c) => c.mark());
  for (let i = 1; i <= 3; i++) {
    for (const c of clients) await c.send(`/msg ${ROOM} ${c.name} ${i}`);
  }
  for (const [k, c] of clients.entries()) {
    await waitUntil(() => shown(c, mark[k]).length >= 12, `${c.name} to see 12`, ROOM_WAIT_MS);
  }
  await alice.expectNone(mark[0], () => false, 300);
  for (const [k, c] of clients.entries()) {
    const got = shown(c, mark[k]);
    assert.equal(got.length, 12, `${c.name} saw ${JSON.stringify(got)}`);
    for (const o of clients) {
      if (o === c) continue;
      assert.deepEqual(
        got.filter((x) => x.startsWith(`${o.name}:`)),
        [1, 2, 3].map((i) => `${o.name}:${o.name} ${i}`),
        `${c.name} saw ${o.name}'s messages out of order or more than once`,
      );
    }
  }

  // One who leaves and one who is removed receive nothing after.
  await erin.send(`/room leave ${ROOM}`);
  await erin.expect({ type: "room_member", room: ROOM, name: "erin", change: "left" });
  for (const c of [alice, bob, carol, dave]) {
    await c.expect({ type: "room_member", room: ROOM, name: "erin", change: "left" });
  }
  await alice.send(`/room remove ${ROOM} dave`);
  for (const c of [alice, bob, carol, dave]) {
    await c.expect({ type: "room_member", room: ROOM, name: "dave", change: "removed" });
  }
  const gone = [dave.mark(), erin.mark()];
  const kept = [alice.mark(), carol.mark()];
  await bob.send(`/msg ${ROOM} after they went`);
  await alice.expect({ type: "room_message", from: "bob", text: "after they went" });
  await carol.expect({ type: "room_message", from: "bob", text: "after they went" });
  await dave.expectNone(gone[0], { type: "room_message" }, 1_000);
  await erin.expectNone(gone[1], { type: "room_message" }, 0);
  assert.deepEqual(shown(alice, kept[0]), ["bob:after they went"]);
  assert.deepEqual(shown(carol, kept[1]), ["bob:after they went"]);

  // A member who joins late receives messages from then on (and nothing from before).
  await addMember(alice, dave, true);
  const late = dave.mark();
  await bob.send(`/msg ${ROOM} welcome back`);
  await dave.expect({ type: "room_message", from: "bob", text: "welcome back" }, ROOM_WAIT_MS);
  await dave.expectNone(late, { type: "room_message", text: "after they went" }, 300);

  // A member killed and restarted catches up on what it missed, from the members that hold it.
  await meshed([alice, bob, carol, dave]);
  await carol.kill();
  await bob.send(`/msg ${ROOM} while carol was away 1`);
  await dave.send(`/msg ${ROOM} while carol was away 2`);
  await alice.expect({ type: "room_message", text: "while carol was away 2" }, ROOM_WAIT_MS);
  const again = await s.start(users[2]);
  await again.expect({ type: "room_message", from: "bob", text: "while carol was away 1" }, 60_000);
  await again.expect(
    { type: "room_message", from: "dave", text: "while carol was away 2" },
    60_000,
  );
  await again.expectNone(0, () => false, 500);
  assert.deepEqual(shown(again).sort(), [
    "bob:while carol was away 1",
    "dave:while carol was away 2",
  ], "carol saw something twice, or more than what she missed");
}

const SCENARIOS: ReadonlyArray<readonly [string, (s: Scene) => Promise<void>]> = [
  [
    "five members in one room: every message reaches every other member once, in its author's order; who leaves or is removed gets nothing after, a late joiner gets what follows, and a killed member catches up after its restart",
    fiveMembers,
  ],
];

Deno.test("rooms end to end: real CA service, real clients, signed messages over pairwise connections", async (t) => {
  await runScenarios(t, SCENARIOS, (service, dir) => new Scene(service, dir));
});

// Kept for the hostile scenarios below.
export type { KeyObject, SignedList, SignedMessage };
export { createPrivateKey, encodeFrame, signMessage };
