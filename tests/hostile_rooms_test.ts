/**
 * A hostile member of a room (docs/PROTOCOL.md §9, docs/SECURITY.md): a real
 * `client chat --json` (ann) and a raw peer (mallory) who speaks room frames
 * by hand with a valid certificate from the CA, a room she created, and her
 * own signing key. What tests/rooms_test.ts does not try: the volume of what
 * a member may send that is well formed and signed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { type SignedList, signList, signMessage, spkiOf } from "../lib/room.ts";
import { ChatClient, stopAll, waitUntil } from "./_harness.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";
import { joinUser, RawPeer, type User } from "./_chat_helpers.ts";

const ROOM = "#team";
const ROOM_ID = "0123456789abcdef0123456789abcdef";

function roomFrame(body: unknown): string {
  return JSON.stringify({ type: "room", body }) + "\n";
}

/** ann, a real client, in the room `ROOM` that the raw mallory created; mallory's connection. */
interface World {
  ann: ChatClient;
  mallory: RawPeer;
  malloryKey: KeyObject;
  list: SignedList;
}

async function withWorld(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-hostile-rooms-" });
  let service: Service | undefined;
  const clients: ChatClient[] = [];
  let mallory: RawPeer | undefined;
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--enroll-rate", "1000"] });
    const [annUser, malloryUser] = await Promise.all(
      ["ann", "mallory"].map((n) => joinUser(service!, n, join(dir, n))),
    ) as [User, User];
    const ann = await ChatClient.start(annUser);
    clients.push(ann);
    await ann.send("/chat mallory");
    await ann.expect({ type: "invited", to: "mallory" });
    mallory = RawPeer.connect(ann.port, {
      cert: await Deno.readTextFile(malloryUser.certPath),
      key: await Deno.readTextFile(malloryUser.keyPath),
    });
    mallory.write(encodeFrame({ type: "hello", v: 1, features: ["rooms"] }));
    await ann.expect({ type: "connected", peer: "mallory" });

    // mallory creates the room, invites ann, and answers her join with the list that adds her.
    const malloryKey = createPrivateKey(await Deno.readTextFile(malloryUser.keyPath));
    const keyOf = async (u: User) => spkiOf(createPublicKey(await Deno.readTextFile(u.certPath)));
    const malloryMember = { name: "mallory", key: await keyOf(malloryUser), since: 1 };
    const base = { roomId: ROOM_ID, room: ROOM, creator: "mallory" };
    const first = signList({ ...base, version: 1, members: [malloryMember] }, malloryKey);
    mallory.write(roomFrame({ op: "invite", list: first }));
    await ann.expect({ type: "room_invite", room: ROOM, from: "mallory" });
    await ann.send(`/room join ${ROOM}`);
    await waitUntil(
      () =>
        mallory!.frames.some((f) =>
          f.type === "room" &&
          JSON.stringify(f.body) === JSON.stringify({ op: "join", roomId: ROOM_ID })
        ),
      "ann's join",
    );
    const list = signList({
      ...base,
      version: 2,
      members: [{ name: "ann", key: await keyOf(annUser), since: 2 }, malloryMember],
      change: { name: "ann", change: "joined" },
    }, malloryKey);
    mallory.write(roomFrame({ op: "list", list }));
    await ann.expect({ type: "room_joined", room: ROOM });
    await fn({ ann, mallory, malloryKey, list });
  } finally {
    mallory?.destroy();
    await stopAll(clients);
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test("a member who re-sends 20 001 old sequence numbers of its own as fills does not grow what the client remembers of the connection without bound", async () => {
  await withWorld(async ({ ann, mallory, malloryKey, list }) => {
    const m = (seq: number, text = `m${seq}`) =>
      signMessage(
        { roomId: ROOM_ID, room: ROOM, author: "mallory", seq, version: list.version, text },
        malloryKey,
      );
    // ann joined after mallory: mallory's first message sets where her sequence starts.
    mallory.write(roomFrame({ op: "msg", m: m(100_000, "hello") }));
    await ann.expect({ type: "room_message", room: ROOM, from: "mallory", text: "hello" });
    // Every number below 100 000 is one ann "has": each comes back as a fill (passed on
    // again, not a replay), and each used to be remembered for ever.
    const N = 20_001;
    const batch: string[] = [];
    for (let seq = 1; seq <= N; seq++) {
      batch.push(roomFrame({ op: "msg", m: m(seq), fill: true }));
      if (batch.length === 1000 || seq === N) {
        mallory.write(batch.join(""));
        batch.length = 0;
      }
    }
    const mark = ann.mark();
    // Then, as replays (not fills): the oldest of them, and the newest.
    mallory.write(roomFrame({ op: "msg", m: m(1) }) + roomFrame({ op: "msg", m: m(N) }));
    const replay = (seq: number) => (e: Record<string, unknown>) =>
      e.type === "warning" &&
      String(e.message).startsWith(`Refused a replay of message ${seq} by "mallory" in ${ROOM}`);
    await ann.expect(replay(N), 120_000);
    // What is remembered per connection is bounded (20 000 keys): the oldest was let go.
    assert.deepEqual(ann.since(mark, replay(1)), []);
    await waitUntil(() => !mallory.isClosed, "mallory still connected");
    assert.deepEqual(ann.since(mark, { type: "room_message" }), []);
  });
});
