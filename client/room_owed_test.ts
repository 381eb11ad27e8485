import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import { RoomOwed } from "./room_owed.ts";

const RECORD = { id: "r:ann:1:1", room: "#team", roomId: "r", from: "ann", text: "hi", late: true };

Deno.test("RoomOwed keeps owed lines across a restart, sealed when asked (no text in the clear), and forgets them once dropped", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "mailbox", "room-owed.json");
    const key = new Uint8Array(32).fill(7);
    const owed = new RoomOwed(file, { key, seal: true });
    assert.equal(owed.put("item-1", [RECORD]), true);
    assert.ok(!(await Deno.readTextFile(file)).includes("hi"));
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    assert.deepEqual(new RoomOwed(file, { key, seal: true }).get("item-1"), [RECORD]);
    assert.equal(new RoomOwed(file, { key: new Uint8Array(32) }).get("item-1"), undefined);
    owed.drop("item-1");
    assert.equal(new RoomOwed(file, { key }).get("item-1"), undefined);
  });
});

Deno.test("RoomOwed given a room-owed.json it cannot read says so, and does not overwrite the lines owed in it", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "mailbox", "room-owed.json");
    assert.equal(new RoomOwed(file).put("item-1", [RECORD]), true);
    // Cut short (a copy of the home made while it was written, a disk error): not JSON.
    const held = (await Deno.readTextFile(file)).slice(0, 40);
    await Deno.writeTextFile(file, held);
    let owed: RoomOwed;
    try {
      owed = new RoomOwed(file);
    } catch (e) {
      assert.ok(e instanceof Error && e.message.includes(file), String(e));
      assert.equal(await Deno.readTextFile(file), held);
      return;
    }
    // Taken for none, with nothing said; the next room message owed overwrites item-1's lines.
    owed.put("item-2", [{ ...RECORD, id: "r:ann:1:2", text: "later" }]);
    assert.equal(
      await Deno.readTextFile(file),
      held,
      "room-owed.json that could not be read was overwritten: the lines owed for item-1 are gone",
    );
  });
});
