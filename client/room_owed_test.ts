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
