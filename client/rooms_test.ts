/**
 * Rooms against a hostile creator, with the chat core and the connection to the creator stood
 * in for (their own tests cover them): the signatures, lists and files are real.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { join } from "node:path";
import { type RoomMember, type SignedList, signList, signMessage, spkiOf } from "../lib/room.ts";
import { withTempDir } from "../tests/_helpers.ts";
import type { CoreEvent } from "./events.ts";
import type { History } from "./history.ts";
import type { PeerConnection } from "./peer.ts";
import { MAX_FORMER, Rooms } from "./rooms.ts";

function keyPair(): { privateKey: KeyObject; spki: string; pem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return {
    privateKey,
    spki: spkiOf(publicKey),
    pem: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
  };
}

Deno.test("A room creator that cycles made-up members through its lists is remembered for only MAX_FORMER of them", async () => {
  await withTempDir(async (dir) => {
    const alice = keyPair();
    const carol = keyPair();
    const fake = keyPair(); // every made-up member's key
    const roomId = randomBytes(16).toString("hex");
    const list = (version: number, extra: string[]): SignedList => {
      const members: RoomMember[] = [
        { name: "alice", key: alice.spki, since: 1 },
        { name: "carol", key: carol.spki, since: 1 },
        ...extra.map((name) => ({ name, key: fake.spki, since: version })),
      ];
      return signList({
        roomId,
        room: "#team",
        creator: "carol",
        version,
        members,
      }, carol.privateKey);
    };
    await Deno.writeTextFile(
      join(dir, `${roomId}.json`),
      JSON.stringify({ v: 1, list: list(1, []), creatorKey: carol.spki, seq: 0, next: {} }),
    );
    const events: CoreEvent[] = [];
    const conn = {
      name: "carol",
      rooms: true,
      sendRoom: () => true,
    } as unknown as PeerConnection;
    const rooms = new Rooms({
      self: "alice",
      privateKey: () => alice.pem,
      peer: (name) => name === "carol" ? conn : undefined,
      pinned: () => undefined,
      invite: () => Promise.resolve(),
      accept: () => Promise.resolve(),
      invitations: () => [],
      emit: (e) => events.push(e),
      history: { roomMessage() {} } as unknown as History,
      dir,
    });
    await rooms.load();
    try {
      // Each list adds one made-up member and drops the one before.
      const name = (i: number) => `made-up-${String(i).padStart(4, "0")}`;
      const count = MAX_FORMER + 10;
      for (let i = 1; i <= count; i++) {
        rooms.receive(conn, { op: "list", list: list(i + 1, [name(i)]) });
      }
      assert.ok(rooms.isMember("#team", name(count)));
      // Late messages (signed under an older list) of members who went: the recent ones are
      // dropped without a word, the ones forgotten are refused.
      const late = (i: number) =>
        signMessage({
          roomId,
          room: "#team",
          author: name(i),
          seq: 1,
          version: i + 1,
          text: "late",
        }, fake.privateKey);
      events.length = 0;
      rooms.receive(conn, { op: "msg", m: late(count - 1) });
      rooms.receive(conn, { op: "msg", m: late(count - MAX_FORMER) });
      assert.deepEqual(events, []);
      rooms.receive(conn, { op: "msg", m: late(1) });
      assert.deepEqual(events, [{
        type: "warning",
        message: `Refused a message in #team by "${name(1)}", not a member (from "carol")`,
      }]);
    } finally {
      await rooms.stop();
    }
  });
});
