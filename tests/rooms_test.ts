/**
 * Rooms end to end (docs/PROTOCOL.md §9, docs/SECURITY.md): one real CA
 * service, real `client chat --json` processes that create, invite, join,
 * leave and remove over their pairwise mutual-TLS connections, and a raw
 * member speaking room frames by hand — forged, altered, replayed, malformed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createPrivateKey, type KeyObject, sign } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { type SignedList, type SignedMessage, signMessage } from "../lib/room.ts";
import { JOIN_WAIT_MS } from "../client/rooms.ts";
import { type ChatClient, ChatClient as Client, sleep, stopAll, waitUntil } from "./_harness.ts";
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
  // Only the creator changes the list.
  await bob.send(`/room remove ${ROOM} carol`);
  const refused = await bob.expect({ type: "error" });
  assert.equal(refused.message, `Only the creator of ${ROOM}, "alice", removes members`);

  // Each member's messages reach all others exactly once, in each author's order.
  const mark = clients.map((c) => c.mark());
  for (let i = 1; i <= 3; i++) {
    for (const c of clients) await c.send(`/msg ${ROOM} ${c.name} ${i}`);
  }
  for (const [k, c] of clients.entries()) {
    await waitUntil(() => shown(c, mark[k]).length >= 12, `${c.name} to see 12`, ROOM_WAIT_MS);
  }
  await sleep(300); // late duplicates would show by now
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
  // Its connections made for the room only close; the one erin made herself (to alice) stays.
  for (const other of ["bob", "carol", "dave"]) {
    await erin.expect({ type: "disconnected", peer: other });
  }
  assert.ok(isConnected(erin, "alice"), "erin's own connection to alice closed");
  await alice.send(`/room remove ${ROOM} dave`);
  for (const c of [alice, bob, carol, dave]) {
    await c.expect({ type: "room_member", room: ROOM, name: "dave", change: "removed" });
  }
  for (const other of ["bob", "carol"]) {
    await dave.expect({ type: "disconnected", peer: other });
  }
  assert.ok(isConnected(dave, "alice"), "dave's own connection to alice closed");
  const gone = [dave.mark(), erin.mark()];
  const kept = [alice.mark(), carol.mark()];
  await bob.send(`/msg ${ROOM} after they went`);
  await alice.expect({ type: "room_message", from: "bob", text: "after they went" });
  await carol.expect({ type: "room_message", from: "bob", text: "after they went" });
  await dave.expectNone(gone[0], { type: "room_message" }, 1_000);
  await erin.expectNone(gone[1], { type: "room_message" }, 0);
  assert.deepEqual(shown(alice, kept[0]), ["bob:after they went"]);
  assert.deepEqual(shown(carol, kept[1]), ["bob:after they went"]);

  // A member who joins late receives messages from then on (and nothing from before): from when
  // each author learns of the join (a message bob sends before that is not for dave).
  const bobMark = bob.mark();
  await addMember(alice, dave, true);
  const late = dave.mark();
  await waitUntil(
    () => bob.since(bobMark, { type: "room_member", room: ROOM, name: "dave" }).length > 0,
    "bob to learn that dave joined again",
    ROOM_WAIT_MS,
  );
  await bob.send(`/msg ${ROOM} welcome back`);
  await dave.expect({ type: "room_message", from: "bob", text: "welcome back" }, ROOM_WAIT_MS);
  await dave.expectNone(late, { type: "room_message", text: "after they went" }, 300);

  // A member killed and restarted catches up on what it missed, from the members that hold it.
  await meshed([alice, bob, carol, dave]);
  // What carol showed is on her disk (HOME/rooms/ROOMID.json) before she is killed.
  await carol.expect({ type: "room_message", from: "bob", text: "welcome back" }, ROOM_WAIT_MS);
  const shownUpTo = (name: string) => {
    const dir = join(users[2].home, "rooms");
    const file = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".json"))!.name;
    return JSON.parse(Deno.readTextFileSync(join(dir, file))).next[name] as number;
  };
  await waitUntil(() => shownUpTo("bob") === 6, "carol's room state to be saved", ROOM_WAIT_MS);
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
  await sleep(500); // late duplicates would show by now
  // Honest members never refused anything of each other.
  for (const c of [alice, bob, dave, erin, again]) {
    assert.deepEqual(c.warnings.filter((w) => w.includes("Refused")), [], c.name);
  }
  assert.deepEqual(shown(again).sort(), [
    "bob:while carol was away 1",
    "dave:while carol was away 2",
  ], "carol saw something twice, or more than what she missed");
}

/** The `room` frame bodies `peer` received with op `op`, once there are at least `n`. */
async function roomFrames(
  peer: RawPeer,
  op: string,
  n = 1,
): Promise<Array<Record<string, unknown>>> {
  const bodies = () =>
    peer.frames.filter((f) => f.type === "room" && (f.body as Record<string, unknown>).op === op)
      .map((f) => f.body as Record<string, unknown>);
  await waitUntil(() => bodies().length >= n, `${n} room ${op} frame(s)`, ROOM_WAIT_MS);
  return bodies();
}

function roomFrame(body: unknown): string {
  return JSON.stringify({ type: "room", body }) + "\n";
}

async function hostileMember(s: Scene): Promise<void> {
  const [annUser, benUser, malloryUser] = await s.join("ann", "ben", "mallory");
  const ann = await s.start(annUser);
  const ben = await s.start(benUser);
  await ann.send(`/room create ${ROOM}`);
  await ann.expect({ type: "room_joined", room: ROOM });
  await addMember(ann, ben);
  await meshed([ann, ben]);

  // mallory, speaking frames by hand, is invited and joins like anyone.
  const malloryKey: KeyObject = createPrivateKey(Deno.readTextFileSync(malloryUser.keyPath));
  const connectMallory = async (features = ["rooms"]): Promise<RawPeer> => {
    // A fresh invitation (ann also invites mallory by herself, as a member who went away).
    const mark = ann.mark();
    await ann.send("/chat mallory");
    await waitUntil(
      () => ann.since(mark, { type: "invited", to: "mallory" }).length > 0,
      "ann to invite mallory",
    );
    const peer = s.raw(ann.port, malloryUser);
    peer.write(encodeFrame({ type: "hello", v: 1, features }));
    return peer;
  };
  let mallory = await connectMallory();
  await ann.send(`/room invite ${ROOM} mallory`);
  const invite = (await roomFrames(mallory, "invite"))[0].list as SignedList;
  mallory.write(roomFrame({ op: "join", roomId: invite.roomId }));
  await ann.expect({ type: "room_member", room: ROOM, name: "mallory", change: "joined" });
  await ben.expect({ type: "room_member", room: ROOM, name: "mallory", change: "joined" });
  const list = (await roomFrames(mallory, "list")).at(-1)!.list as SignedList;
  assert.ok(list.members.some((m) => m.name === "mallory"));
  const base = { roomId: list.roomId, room: ROOM, version: list.version };
  const own = (seq: number, text: string) =>
    signMessage({ ...base, author: "mallory", seq, text }, malloryKey);
  const send = (m: SignedMessage) => mallory.write(roomFrame({ op: "msg", m }));

  // Its own messages pass (and reach ben, who cannot reach mallory, through ann), in order.
  const atBen = ben.mark();
  send(own(1, "mallory 1"));
  await ann.expect({ type: "room_message", from: "mallory", text: "mallory 1" });
  await ben.expect({ type: "room_message", from: "mallory", text: "mallory 1" }, ROOM_WAIT_MS);
  send(own(3, "mallory 3"));
  send(own(2, "mallory 2"));
  await ann.expect({ type: "room_message", from: "mallory", text: "mallory 3" });
  await ben.expect({ type: "room_message", from: "mallory", text: "mallory 3" }, ROOM_WAIT_MS);
  assert.deepEqual(shown(ben, atBen), [
    "mallory:mallory 1",
    "mallory:mallory 2",
    "mallory:mallory 3",
  ]);

  const atAnn = ann.mark();
  // A frame claiming another author.
  send(signMessage({ ...base, author: "ben", seq: 1, text: "forged by mallory" }, malloryKey));
  await ann.expect((e) =>
    e.type === "warning" &&
    String(e.message).includes('claiming to be by "ben" whose signature does not verify') &&
    String(e.message).includes('(from "mallory")')
  );
  // A forwarded message altered: ben's own words, changed on the way.
  await ben.send(`/msg ${ROOM} pay 10 to carol`);
  const forwarded = (await roomFrames(mallory, "msg")).map((b) => b.m as SignedMessage)
    .find((m) => m.author === "ben")!;
  assert.equal(forwarded.text, "pay 10 to carol");
  send({ ...forwarded, text: "pay 1000 to mallory" });
  await ann.expect((e) =>
    e.type === "warning" &&
    String(e.message).includes('claiming to be by "ben" whose signature does not verify')
  );
  // A replay of an old message, and a signature over other bytes than the canonical encoding.
  send(own(1, "mallory 1"));
  await ann.expect((e) =>
    e.type === "warning" && String(e.message).includes('a replay of message 1 by "mallory"')
  );
  const overJson = own(4, "signed over the frame's JSON");
  const { sig: _sig, ...unsigned } = overJson;
  const hash = malloryKey.asymmetricKeyType === "ed25519" ? null : "sha256";
  overJson.sig = sign(hash, new TextEncoder().encode(JSON.stringify(unsigned)), malloryKey)
    .toString("base64");
  send(overJson);
  await ann.expect((e) =>
    e.type === "warning" &&
    String(e.message).includes('claiming to be by "mallory" whose signature does not verify')
  );
  // A member list mallory signed, naming itself the creator's equal.
  const fakeList = { ...list, version: list.version + 1, sig: overJson.sig };
  mallory.write(roomFrame({ op: "list", list: fakeList }));
  await ann.expect((e) =>
    e.type === "warning" && String(e.message).includes("the creator did not sign")
  );
  await ann.expectNone(
    atAnn,
    (e) =>
      (e.type === "room_message" && e.text !== "pay 10 to carol") || e.type === "room_member" ||
      e.type === "room_joined",
    300,
  );
  assert.deepEqual(shown(ann, atAnn), ["ben:pay 10 to carol"]);

  // A gap no one can fill is reported, and what follows it is shown.
  send(own(6, "mallory 6"));
  await ann.expect({ type: "room_gap", room: ROOM, from: "mallory" }, ROOM_WAIT_MS);
  const gap = ann.events.findLast((e) => e.type === "room_gap")!;
  assert.deepEqual([gap.missing, gap.count], [[4, 5], 2]);
  await ann.expect({ type: "room_message", from: "mallory", text: "mallory 6" });

  // Malformed room frames: one error frame, the connection closed, and nothing changed.
  const members = Array.from({ length: 51 }, (_, i) => ({
    name: `user${String(i).padStart(2, "0")}`,
    key: list.members[0].key,
    since: 1,
  }));
  const malformed: Array<[string, string]> = [
    [roomFrame({ op: "list", list: { ...list, members, version: 99 } }), "at most 50 members"],
    [roomFrame({ op: "msg" }), "message is not a JSON object"],
    [roomFrame({ op: "want", roomId: list.roomId, author: "ben", seqs: [] }), "want asks for"],
    [roomFrame({ op: "shout" }), "unknown room op"],
    [roomFrame("text"), "room frame is not a JSON object"],
    [roomFrame({ op: "msg", m: { ...own(7, "x"), seq: -1 } }), "bad sequence number"],
  ];
  for (const [line, why] of malformed) {
    mallory.destroy();
    mallory = await connectMallory();
    await ann.expect({ type: "connected", peer: "mallory" });
    mallory.write(line);
    const error = await mallory.expectFrame({ type: "error" });
    assert.match(String(error.message), new RegExp(`^Malformed room frame: .*${why}`));
    await mallory.expectClosed();
  }
  await ann.send(`/room members ${ROOM}`);
  const after = await ann.expect({ type: "room_members", room: ROOM });
  assert.equal(after.version, list.version);
  assert.deepEqual(
    (after.members as Array<{ name: string }>).map((m) => m.name),
    ["ann", "ben", "mallory"],
  );
  // A peer whose hello does not list "rooms" gets no room frame, member or not.
  mallory.destroy();
  mallory = await connectMallory(["bin", "offer"]);
  await mallory.expectFrame({ type: "hello" }); // ann admitted this connection
  await ben.send(`/msg ${ROOM} still here`);
  await ann.expect({ type: "room_message", from: "ben", text: "still here" });
  await sleep(300); // what ann passes on would have arrived by now
  assert.deepEqual(mallory.frames.filter((f) => f.type === "room"), []);
}

async function unreachablePair(s: Scene): Promise<void> {
  const [amyUser, boUser, cyUser] = await s.join("amy", "bo", "cy");
  const amy = await s.start(amyUser);
  // bo listens where cy may not connect: the two never meet directly. Nor at the CA's relay
  // (--relay never), which would otherwise join them: the room's forwarding is what is tested.
  const bo = await s.start(boUser, [], ["--listen", "127.0.0.2:0", "--relay", "never"]);
  const cy = await s.start(cyUser, ["--deny-net=127.0.0.2"], ["--relay", "never"]);
  await amy.send(`/room create ${ROOM}`);
  await amy.expect({ type: "room_joined", room: ROOM });
  await addMember(amy, bo);
  await addMember(amy, cy);
  await meshed([amy, bo]);
  await meshed([amy, cy]);
  await cy.expect(
    (e) => e.type === "warning" && String(e.message).includes('Cannot connect to "bo"'),
    ROOM_WAIT_MS,
  );
  assert.ok(!isConnected(bo, "cy"));
  const marks = [bo.mark(), cy.mark()];
  for (let i = 1; i <= 3; i++) {
    await bo.send(`/msg ${ROOM} bo ${i}`);
    await cy.send(`/msg ${ROOM} cy ${i}`);
  }
  await waitUntil(() => shown(cy, marks[1]).length >= 3, "cy to see bo's 3", ROOM_WAIT_MS);
  await waitUntil(() => shown(bo, marks[0]).length >= 3, "bo to see cy's 3", ROOM_WAIT_MS);
  await sleep(300); // late duplicates would show by now
  assert.deepEqual(shown(cy, marks[1]), ["bo:bo 1", "bo:bo 2", "bo:bo 3"]);
  assert.deepEqual(shown(bo, marks[0]), ["cy:cy 1", "cy:cy 2", "cy:cy 3"]);
  assert.ok(!isConnected(bo, "cy"), "bo and cy met directly after all");
  // The room stays the current conversation while members connect: plain text goes to it.
  await cy.send("plain text goes to the room");
  await bo.expect({ type: "room_message", from: "cy", text: "plain text goes to the room" });
  await amy.expect({ type: "room_message", from: "cy", text: "plain text goes to the room" });
}

/**
 * A file to a room goes to each member over its own connection, as a file to a peer does: an
 * offer marked with the room (consent: the keys are first seen), then the file with the same
 * SHA-256, kept in the room's history. A file marked with a room its sender is not in is refused.
 */
async function roomFile(s: Scene): Promise<void> {
  const [faUser, fbUser, fcUser, fdUser] = await s.join("fa", "fb", "fc", "fd");
  const [fa, fb, fc] = await Promise.all([faUser, fbUser, fcUser].map((u) => s.start(u)));
  await fa.send(`/room create ${ROOM}`);
  await fa.expect({ type: "room_joined", room: ROOM });
  await addMember(fa, fb);
  await addMember(fa, fc);
  await meshed([fa, fb, fc]);
  const bytes = new Uint8Array(100_000).map((_, i) => (i * 7919) % 251);
  const path = join(s.dir, "plan.bin");
  await Deno.writeFile(path, bytes);
  const sha256 = Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  await fa.send(`/file ${ROOM} ${path}`);
  for (const member of [fb, fc]) {
    const offer = await member.expect({ type: "file_offer", from: "fa", room: ROOM });
    assert.equal(offer.name, "plan.bin");
    assert.equal(offer.sha256, undefined, "the SHA-256 comes at the end (sha256-at-end)");
    await member.send(`/get ${offer.id}`);
    const file = await member.expect({ type: "file", from: "fa", room: ROOM });
    assert.equal(file.sha256, sha256);
    assert.deepEqual(await Deno.readFile(String(file.path)), bytes);
    await member.send(`/history ${ROOM}`);
    const history = await member.expect({ type: "history", peer: ROOM });
    const entries = history.entries as Array<{ kind: string; from: string; file?: unknown }>;
    assert.ok(entries.some((e) => e.kind === "file" && e.from === "fa"), JSON.stringify(entries));
  }
  await fa.expect({ type: "sent", to: "fb", room: ROOM, file: "plan.bin" });
  await fa.expect({ type: "sent", to: "fc", room: ROOM, file: "plan.bin" });
  await fa.send(`/history ${ROOM}`);
  const own = await fa.expect({ type: "history", peer: ROOM });
  assert.equal(
    (own.entries as Array<{ kind: string }>).filter((e) => e.kind === "file").length,
    1,
    "the room's history holds the file once",
  );

  // fd, connected to fb but no member, marks a file with the room: refused, nothing written.
  const mark = fb.mark();
  await fb.send("/chat fd");
  await waitUntil(() => fb.since(mark, { type: "invited", to: "fd" }).length > 0, "fb invites fd");
  const fd = s.raw(fb.port, fdUser);
  fd.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer", "rooms"] }));
  fd.write(encodeFrame({
    type: "file",
    id: "x1",
    name: "intruder.txt",
    size: 5,
    sha256: "0".repeat(64),
    room: ROOM,
  }));
  const declined = await fd.expectFrame({ type: "decline", id: "x1" });
  assert.equal(declined.reason, `refused: "fd" is not a member of ${ROOM} here`);
  assert.deepEqual(fb.since(mark, { type: "file_offer" }), []);
}

/**
 * A member who is offline gets the room's messages through the CA's mailbox when it starts,
 * even when none of the members that held them runs any more: the author leaves each one,
 * sealed, for each member it is not connected to.
 */
async function offlineMember(s: Scene): Promise<void> {
  const [oaUser, obUser, ocUser] = await s.join("oa", "ob", "oc");
  const [oa, ob, oc] = await Promise.all([oaUser, obUser, ocUser].map((u) => s.start(u)));
  await oa.send(`/room create ${ROOM}`);
  await oa.expect({ type: "room_joined", room: ROOM });
  await addMember(oa, ob);
  await addMember(oa, oc);
  await meshed([oa, ob, oc]);
  await oc.stop();
  await waitUntil(() => !isConnected(oa, "oc") && !isConnected(ob, "oc"), "oc gone");
  for (let i = 1; i <= 2; i++) await oa.send(`/msg ${ROOM} while oc is away ${i}`);
  await ob.send(`/msg ${ROOM} ob too`);
  await waitUntil(() => shown(ob).filter((t) => t.startsWith("oa:while")).length === 2, "ob");
  await oa.expect({ type: "room_message", from: "ob", text: "ob too" });
  // Once the CA holds the three (each sealed and posted in the background), everyone who held
  // them goes.
  const atCa = () => {
    try {
      return [...Deno.readDirSync(join(s.service.caDir, "mailbox", "oc"))]
        .filter((e) => e.name.endsWith(".cms")).length;
    } catch {
      return 0;
    }
  };
  await waitUntil(() => atCa() >= 3, "the three items at the CA", ROOM_WAIT_MS);
  await oa.stop();
  await ob.stop();
  const again = await s.start(ocUser);
  const mark = 0;
  await waitUntil(
    () => shown(again, mark).length >= 3,
    "oc to get the three messages from the mailbox",
    ROOM_WAIT_MS,
  ).catch((e) => {
    throw new Error(`${e.message}\n${again.describe()}`);
  });
  assert.deepEqual(
    [...shown(again, mark)].sort(),
    ["oa:while oc is away 1", "oa:while oc is away 2", "ob:ob too"],
  );
  // In each author's order.
  const fromOa = shown(again, mark).filter((t) => t.startsWith("oa:"));
  assert.deepEqual(fromOa, ["oa:while oc is away 1", "oa:while oc is away 2"]);
}

/**
 * bob is invited to two rooms called #team (alice's and carol's) and to carol's #side; he
 * declines carol's #team (named: two wait), and #side while carol is away.
 */
async function declineInvitation(s: Scene): Promise<void> {
  const [alice, bob, carol] = await Promise.all(
    (await s.join("alice", "bob", "carol")).map((u) => s.start(u)),
  );
  for (const creator of [alice, carol]) {
    await creator.send(`/room create ${ROOM}`);
    await creator.expect({ type: "room_joined", room: ROOM });
    await creator.send(`/room invite ${ROOM} bob`);
    await bob.expect({ type: "invite", from: creator.name });
    await bob.send(`/accept ${creator.name}`);
    await bob.expect({ type: "room_invite", room: ROOM, from: creator.name });
  }
  // Which one is not guessed.
  await bob.send(`/room decline ${ROOM}`);
  const error = await bob.expect({ type: "error" });
  assert.equal(
    error.message,
    `Two invitations to ${ROOM} wait, from "alice" and "carol": name the creator: ` +
      `/room decline ${ROOM} alice, or /room decline ${ROOM} carol`,
  );
  // Declined: dropped here, and carol is told (she stops offering it).
  await bob.send(`/room decline ${ROOM} carol`);
  await bob.expect({ type: "warning", message: `Declined the invitation to ${ROOM} from "carol"` });
  await carol.expect({ type: "warning", message: `"bob" declined the invitation to ${ROOM}` });

  // Declined while its creator is away: she is told when she offers it again, and bob is not
  // shown it; an invitation she sends after that is shown.
  await carol.send("/room create #side");
  await carol.expect({ type: "room_joined", room: "#side" });
  await carol.send("/room invite #side bob");
  await bob.expect({ type: "room_invite", room: "#side", from: "carol" });
  await bob.send("/close carol");
  await carol.expect({ type: "disconnected", peer: "bob" });
  await bob.send("/room decline #side");
  await bob.expect({
    type: "warning",
    message: `Declined the invitation to #side from "carol" ("carol" is not connected: told ` +
      `when it offers it again)`,
  });
  const mark = bob.mark();
  await carol.send("/chat bob");
  await bob.expect({ type: "invite", from: "carol" });
  await bob.send("/accept carol");
  await carol.expect({ type: "warning", message: `"bob" declined the invitation to #side` });
  // Neither #side (answered) nor #team (declined before: carol sends it no more) is shown.
  await bob.expectNone(mark, { type: "room_invite" }, 1_000);
  await carol.send("/room invite #side bob");
  await bob.expect({ type: "room_invite", room: "#side", from: "carol" });

  // alice's invitation to #team still waits, the only one: /room join takes it.
  await bob.send(`/room join ${ROOM}`);
  await bob.expect({ type: "room_joined", room: ROOM }, ROOM_WAIT_MS);
  await alice.expect({ type: "room_member", room: ROOM, name: "bob", change: "joined" });
}

/**
 * fay is invited to dan's #team and to eli's #side; she declines #side while eli is away, and is
 * killed. Back, dan's invitation still waits (joined once dan is connected again) and eli's
 * declined one is answered when offered again, not shown.
 */
async function invitationsAfterRestart(s: Scene): Promise<void> {
  const [danUser, eliUser, fayUser] = await s.join("dan", "eli", "fay");
  const [dan, eli] = await Promise.all([s.start(danUser), s.start(eliUser)]);
  let fay = await s.start(fayUser);
  for (const [creator, room] of [[dan, ROOM], [eli, "#side"]] as const) {
    await creator.send(`/room create ${room}`);
    await creator.expect({ type: "room_joined", room });
    await creator.send(`/room invite ${room} fay`);
    await fay.expect({ type: "invite", from: creator.name });
    await fay.send(`/accept ${creator.name}`);
    await fay.expect({ type: "room_invite", room, from: creator.name });
  }
  await fay.send("/close eli");
  await eli.expect({ type: "disconnected", peer: "fay" });
  await fay.send("/room decline #side");
  await fay.expect({
    type: "warning",
    message: `Declined the invitation to #side from "eli" ("eli" is not connected: told ` +
      `when it offers it again)`,
  });
  // Durable once said: killed now, she comes back with both.
  await fay.kill();
  await dan.expect({ type: "disconnected", peer: "fay" });
  fay = await s.start(fayUser);
  await fay.expect({ type: "room_invite", room: ROOM, from: "dan" });
  await fay.send("/rooms");
  assert.deepEqual((await fay.expect({ type: "rooms" })).invitations, [ROOM]);
  // Not joined while dan is not connected: the list that answers is checked with his connection.
  await fay.send(`/room join ${ROOM}`);
  assert.equal(
    (await fay.expect({ type: "error" })).message,
    `Not connected to "dan", who invited you: connect to "dan" first (/chat dan, or accept ` +
      `an invitation from "dan")`,
  );

  // eli offers #side again at his hello: told, not shown.
  await eli.send("/chat fay");
  await fay.expect({ type: "invite", from: "eli" });
  await fay.send("/accept eli");
  await eli.expect({ type: "warning", message: `"fay" declined the invitation to #side` });
  await fay.send("/room join #side");
  assert.equal(
    (await fay.expect({ type: "error" })).message,
    `You declined the invitation to #side from "eli": "eli" can invite you again`,
  );

  // Connected to dan again, she joins #team (shown once: his offer at hello is the same one).
  await fay.send("/chat dan");
  await dan.expect({ type: "invite", from: "fay" });
  await dan.send("/accept fay");
  await fay.expect({ type: "connected", peer: "dan" });
  await fay.send(`/room join ${ROOM}`);
  await fay.expect({ type: "room_joined", room: ROOM }, ROOM_WAIT_MS);
  await dan.expect({ type: "room_member", room: ROOM, name: "fay", change: "joined" });
  assert.deepEqual(fay.events.filter((e) => e.type === "room_invite").map((e) => e.room), [ROOM]);
  await fay.send("/rooms");
  assert.deepEqual((await fay.expect({ type: "rooms" })).invitations, []);
  const file = join(fayUser.home, "room-invitations.json");
  assert.equal(Deno.statSync(file).mode! & 0o777, 0o600);
}

/**
 * hal joins gus's #team, which gus withdrew meanwhile: gus refuses the join and sends nothing.
 * Decline is refused while the join is under way, then free once it went unanswered.
 */
async function joinUnanswered(s: Scene): Promise<void> {
  const [gus, hal] = await Promise.all((await s.join("gus", "hal")).map((u) => s.start(u)));
  await gus.send(`/room create ${ROOM}`);
  await gus.expect({ type: "room_joined", room: ROOM });
  await gus.send(`/room invite ${ROOM} hal`);
  await hal.expect({ type: "invite", from: "gus" });
  await hal.send("/accept gus");
  await hal.expect({ type: "room_invite", room: ROOM, from: "gus" });
  await gus.send(`/room remove ${ROOM} hal`);
  await gus.send("/rooms");
  await gus.expect({ type: "rooms" }); // the withdrawal is done
  const mark = hal.mark();
  await hal.send(`/room join ${ROOM}`);
  await gus.expect({
    type: "warning",
    message: `Refused a join to ${ROOM} without an invitation (from "hal")`,
  });
  await hal.send(`/room decline ${ROOM}`);
  const conflict = await hal.expect({ type: "error" });
  assert.match(
    String(conflict.message),
    new RegExp(`^A join of the invitation to ${ROOM} from "gus" is under way: `),
  );
  const unanswered = await hal.expect(
    (e) => e.type === "warning" && String(e.message).startsWith(`"gus" did not answer`),
    JOIN_WAIT_MS + ROOM_WAIT_MS,
  );
  assert.equal(
    unanswered.message,
    `"gus" did not answer your join of ${ROOM} in ${JOIN_WAIT_MS / 1000} s (the room may be ` +
      `full, or "gus" withdrew the invitation): /room join ${ROOM} gus asks again, ` +
      `/room decline ${ROOM} gus declines it`,
  );
  await hal.send(`/room decline ${ROOM}`);
  await hal.expect({ type: "warning", message: `Declined the invitation to ${ROOM} from "gus"` });
  await hal.send("/rooms");
  assert.deepEqual((await hal.expect({ type: "rooms" })).invitations, []);
  assert.deepEqual(hal.since(mark, { type: "room_joined" }), []);
}

const SCENARIOS: ReadonlyArray<readonly [string, (s: Scene) => Promise<void>]> = [
  [
    "five members in one room: every message reaches every other member once, in its author's order; who leaves or is removed gets nothing after, a late joiner gets what follows, and a killed member catches up after its restart",
    fiveMembers,
  ],
  [
    "a member speaking frames by hand is refused and reported when it claims another author, alters a forwarded message, replays one, signs other bytes or forges the list; a gap it leaves is reported; malformed room frames close its connection and change nothing; a peer whose hello lists no rooms feature gets no room frame",
    hostileMember,
  ],
  [
    "two members who cannot reach each other directly get and send everything through the third, signatures intact",
    unreachablePair,
  ],
  [
    "a file to a room reaches each member as an offer marked with the room and arrives with the same SHA-256, kept in the room's history; a file marked with a room its sender is not in is refused",
    roomFile,
  ],
  [
    "a member who was offline gets the room's messages through the mailbox when it starts, in each author's order, though no member that held them runs any more",
    offlineMember,
  ],
];

Deno.test("rooms end to end: real CA service, real clients, signed messages over pairwise connections", async (t) => {
  await runScenarios(t, SCENARIOS, (service, dir) => new Scene(service, dir));
});

Deno.test("rooms end to end: a room invitation is declined, kept across a restart, or joined without an answer", async (t) => {
  await runScenarios(t, [
    [
      "/room decline drops a room invitation and its creator is told; with two of the same name it names the creator; one declined while its creator is away is answered when offered again and not shown; an invitation sent after is shown",
      declineInvitation,
    ],
    [
      "a declined room invitation stays declined, and one that waits still waits, across a restart of the invitee killed right after it declined; the one waiting is joined once its creator is connected again",
      invitationsAfterRestart,
    ],
    [
      "a join the creator does not answer keeps Decline refused only while it is under way: after JOIN_WAIT_MS a warning says so, and the invitation can be declined",
      joinUnanswered,
    ],
  ], (service, dir) => new Scene(service, dir));
});
