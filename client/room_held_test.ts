import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import { MAX_ROOM_HELD, MAX_ROOM_HELD_PER_SENDER, RoomHeld } from "./room_held.ts";

const ITEM = {
  id: "0123456789abcdef0123456789abcdef",
  from: "ann",
  payload: '{"text":"held words no one else may read"}',
};

Deno.test("RoomHeld keeps a held room message across a restart, sealed when asked (no text in the clear, 0600), and forgets it once dropped", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "mailbox", "room-held");
    const key = new Uint8Array(32).fill(7);
    const held = new RoomHeld(folder, { key, seal: true });
    held.put(ITEM);
    const [file] = [...Deno.readDirSync(folder)].map((e) => join(folder, e.name));
    assert.ok(!(await Deno.readTextFile(file)).includes("no one else may read"));
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(folder)).mode! & 0o777, 0o700);
    assert.deepEqual(new RoomHeld(folder, { key, seal: true }).items(), [ITEM]);
    assert.deepEqual(new RoomHeld(folder, { key: new Uint8Array(32) }).items(), []);
    held.drop(ITEM.id);
    assert.deepEqual(new RoomHeld(folder, { key }).items(), []);
    assert.deepEqual([...Deno.readDirSync(folder)], []);
  });
});

Deno.test("RoomHeld keeps at most MAX_ROOM_HELD_PER_SENDER items of one sender, the oldest going first, and another sender's stay", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "room-held");
    const held = new RoomHeld(folder);
    held.put({ ...ITEM, from: "bob" });
    const id = (n: number) => n.toString(16).padStart(32, "a");
    for (let n = 0; n < MAX_ROOM_HELD_PER_SENDER + 10; n++) {
      held.put({ id: id(n), from: "mallory", payload: "{}" });
    }
    const kept = new RoomHeld(folder).items();
    assert.equal(kept.filter((i) => i.from === "mallory").length, MAX_ROOM_HELD_PER_SENDER);
    assert.ok(!kept.some((i) => i.id === id(0)), "the oldest went");
    assert.ok(kept.some((i) => i.from === "bob"));
    assert.equal(
      (await Array.fromAsync(Deno.readDir(folder))).length,
      MAX_ROOM_HELD_PER_SENDER + 1,
    );
  });
});

// The room itself (client/rooms.ts #holdProvisional) keeps 32 held per sender and 256 in all, and
// past that lets go one of the sender with the most: "one member's cannot push out the others'".
// Its copy on disk must not be the one that gives way, or a restart loses what the room still held.
Deno.test("RoomHeld keeps an honest sender's one item when others, each within the room's bound of 32, hold 256 between them: the sender with the most gives way", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "room-held");
    const held = new RoomHeld(folder);
    held.put({ ...ITEM, from: "bob" });
    const id = (s: number, n: number) =>
      `${s}`.padStart(16, "b") + n.toString(16).padStart(16, "a");
    for (let s = 0; s < 8; s++) {
      for (let n = 0; n < 32; n++) held.put({ id: id(s, n), from: `mallory${s}`, payload: "{}" });
    }
    assert.ok(held.items().some((i) => i.from === "bob"), "bob's item is still held in memory");
    assert.ok(
      new RoomHeld(folder).items().some((i) => i.from === "bob"),
      "bob's item is still held after a restart",
    );
    assert.equal((await Array.fromAsync(Deno.readDir(folder))).length, MAX_ROOM_HELD);
  });
});
