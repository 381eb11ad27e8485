/**
 * Attacker's review r123 (repros only, no product change): a room file in flight across a
 * leave lands in the history of whatever room of that name comes next, by way of the history
 * file of before (`%23team.jsonl`, "never written again"), which every later #team reads.
 *
 * Real CA service, a real `client chat --json` (ann), raw TLS peers (mallory, ben) that speak
 * room frames by hand with valid certificates of the CA.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash, createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { roomIdFor, signList, spkiOf } from "../lib/room.ts";
import { ChatClient, stopAll, waitUntil } from "./_harness.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";
import { joinUser, RawPeer, type User } from "./_chat_helpers.ts";

const ROOM = "#team";

function roomFrame(body: unknown): string {
  return JSON.stringify({ type: "room", body }) + "\n";
}

async function keyOf(user: User): Promise<string> {
  return spkiOf(createPublicKey(await Deno.readTextFile(user.certPath)));
}

/** `creator` (raw) makes its own #team, invites ann, and answers her join with the list. */
async function roomOf(
  ann: ChatClient,
  annUser: User,
  creator: RawPeer,
  creatorUser: User,
): Promise<string> {
  const roomId = roomIdFor(creatorUser.name);
  const key = createPrivateKey(await Deno.readTextFile(creatorUser.keyPath));
  const me = { name: creatorUser.name, key: await keyOf(creatorUser), since: 1 };
  const base = { roomId, room: ROOM, creator: creatorUser.name };
  const first = signList({ ...base, version: 1, members: [me] }, key);
  creator.write(roomFrame({ op: "invite", list: first }));
  await ann.expect({ type: "room_invite", room: ROOM, from: creatorUser.name });
  await ann.send(`/room join ${ROOM} ${creatorUser.name}`);
  await waitUntil(
    () =>
      creator.frames.some((f) =>
        f.type === "room" && JSON.stringify(f.body) === JSON.stringify({ op: "join", roomId })
      ),
    `ann's join of ${creatorUser.name}'s ${ROOM}`,
  );
  const members = [{ name: "ann", key: await keyOf(annUser), since: 2 }, me]
    .sort((a, b) => (a.name < b.name ? -1 : 1));
  const list = signList({
    ...base,
    version: 2,
    members,
    change: { name: "ann", change: "joined" },
  }, key);
  creator.write(roomFrame({ op: "list", list }));
  await ann.expect({ type: "room_joined", room: ROOM });
  return roomId;
}

Deno.test("r123: a file mallory sends to her #team, ended after ann left it, is not kept as a file of the next #team ann joins (ben's), nor written to the history file of before", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-r123-" });
  let service: Service | undefined;
  const clients: ChatClient[] = [];
  const raws: RawPeer[] = [];
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--enroll-rate", "1000"] });
    const [annUser, malloryUser, benUser] = await Promise.all(
      ["ann", "mallory", "ben"].map((n) => joinUser(service!, n, join(dir, n))),
    ) as [User, User, User];
    const ann = await ChatClient.start(annUser);
    clients.push(ann);
    const connect = async (user: User) => {
      await ann.send(`/chat ${user.name}`);
      await ann.expect({ type: "invited", to: user.name });
      const peer = RawPeer.connect(ann.port, {
        cert: await Deno.readTextFile(user.certPath),
        key: await Deno.readTextFile(user.keyPath),
      });
      raws.push(peer);
      peer.write(encodeFrame({ type: "hello", v: 1, features: ["rooms", "offer"] }));
      await ann.expect({ type: "connected", peer: user.name });
      return peer;
    };
    const mallory = await connect(malloryUser);
    const ben = await connect(benUser);
    await roomOf(ann, annUser, mallory, malloryUser);

    // mallory offers a small file to her #team: ann takes it without asking (pinned key, under
    // the auto-accept size); mallory sends half of it, and keeps the transfer alive.
    const bytes = new TextEncoder().encode("mallory's minutes, for mallory's #team only\n");
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    mallory.write(encodeFrame({
      type: "file",
      id: "m1",
      name: "minutes.txt",
      size: bytes.length,
      sha256,
      room: ROOM,
    }));
    // A key first seen on this run asks first: ann takes it.
    await ann.expect({ type: "file_offer", from: "mallory", id: "m1", room: ROOM });
    await ann.send("/get mallory m1");
    await mallory.expectFrame({ type: "accept", id: "m1" });
    const chunk = (b: Uint8Array) =>
      mallory.write(
        encodeFrame({ type: "chunk", id: "m1", data: Buffer.from(b).toString("base64") }),
      );
    chunk(bytes.subarray(0, 10));

    // ann leaves mallory's #team while the file is on its way.
    await ann.send(`/room leave ${ROOM}`);
    await waitUntil(
      () =>
        mallory.frames.some((f) => f.type === "room" && (f.body as { op?: string }).op === "leave"),
      "ann's leave",
    );
    chunk(bytes.subarray(10));
    mallory.write(encodeFrame({ type: "end", id: "m1" }));
    await ann.expect({ type: "file", from: "mallory", id: "m1", room: ROOM });

    // ben, who never was in mallory's room, makes his own #team; ann joins it. Its history
    // must hold none of mallory's room: she is no member of it.
    await roomOf(ann, annUser, ben, benUser);
    await ann.send(`/history ${ROOM}`);
    const shown = await ann.expect({ type: "history", peer: ROOM });
    const entries = shown.entries as Array<{ from: string; kind: string; file?: { name: string } }>;
    assert.deepEqual(
      entries.filter((e) => e.from === "mallory"),
      [],
      `ben's ${ROOM} shows mallory's file as one of its own: ${JSON.stringify(entries)}`,
    );
    // Nor is the history file of before (kept by the room's name alone) written again.
    const legacy = join(annUser.home, "history", "%23team.jsonl");
    assert.equal(await Deno.readTextFile(legacy).catch(() => ""), "", `${legacy} was written`);
  } finally {
    for (const r of raws) r.destroy();
    await stopAll(clients);
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
