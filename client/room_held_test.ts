import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import {
  MAX_ROOM_HELD,
  MAX_ROOM_HELD_CHARS,
  MAX_ROOM_HELD_PER_SENDER,
  RoomHeld,
} from "./room_held.ts";
import { MAX_HELD } from "./rooms.ts";

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
    const id = (n: number) => `a${n.toString(16).padStart(31, "0")}`;
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

// A member who joined after dave holds each of dave's messages until the earlier ones come (or
// GAP_WAIT_MS passes): up to MAX_HELD of one author. Each is on disk only (the CA's copy went):
// one forgotten here while the room still holds it is lost if the chat stops meanwhile.
Deno.test("RoomHeld keeps as many of one sender's items as a room holds of one author waiting for his earlier ones, after a restart too", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "room-held");
    const held = new RoomHeld(folder);
    const id = (n: number) => `d${n.toString(16).padStart(31, "0")}`;
    for (let n = 0; n < MAX_HELD; n++) held.put({ id: id(n), from: "dave", payload: "{}" });
    assert.equal(new RoomHeld(folder).items().length, MAX_HELD);
    assert.equal((await Array.fromAsync(Deno.readDir(folder))).length, MAX_HELD);
  });
});

Deno.test("RoomHeld keeps at most MAX_ROOM_HELD_CHARS characters of room frames: past it the oldest of the sender holding the most goes", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "room-held");
    const held = new RoomHeld(folder);
    held.put({ ...ITEM, from: "bob" });
    const big = "x".repeat(MAX_ROOM_HELD_CHARS / 8);
    const id = (n: number) => `e${n.toString(16).padStart(31, "0")}`;
    for (let n = 0; n < 9; n++) held.put({ id: id(n), from: "mallory", payload: big });
    const kept = new RoomHeld(folder).items();
    assert.equal(kept.filter((i) => i.from === "mallory").length, 7);
    assert.ok(!kept.some((i) => i.id === id(0) || i.id === id(1)), "the oldest went");
    assert.ok(kept.some((i) => i.from === "bob"));
    assert.equal((await Array.fromAsync(Deno.readDir(folder))).length, 8);
  });
});

// The room itself (client/rooms.ts #holdProvisional) keeps 32 held per sender and 256 in all, and
// past that lets go one of the sender with the most: "one member's cannot push out the others'".
// Its copy on disk must not be the one that gives way, or a restart loses what the room still held.
Deno.test("RoomHeld keeps an honest sender's one item when others, each within the room's bound of 32, fill it between them: the sender with the most gives way", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "room-held");
    const held = new RoomHeld(folder);
    held.put({ ...ITEM, from: "bob" });
    const id = (s: number, n: number) =>
      `${s}`.padStart(16, "b") + n.toString(16).padStart(16, "a");
    for (let s = 0; s < MAX_ROOM_HELD / 32; s++) {
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
