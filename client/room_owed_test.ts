import assert from "node:assert/strict";
import { join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { withTempDir } from "../tests/_helpers.ts";
import { RoomOwed } from "./room_owed.ts";

const RECORD = {
  id: "r:ann:1:1",
  room: "#team",
  roomId: "r",
  from: "ann",
  text: "owed words no one else may read",
  late: true,
};

Deno.test("RoomOwed keeps owed lines across a restart, sealed when asked (no text in the clear), and forgets them once dropped", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "mailbox", "room-owed.json");
    const key = new Uint8Array(32).fill(7);
    const owed = new RoomOwed(file, { key, seal: true });
    assert.equal(owed.put("item-1", [RECORD]), true);
    assert.ok(!(await Deno.readTextFile(file)).includes("no one else may read"));
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    assert.deepEqual(new RoomOwed(file, { key, seal: true }).get("item-1"), [RECORD]);
    // Not ours to read: moved aside intact and said, not taken for none (the next line owed
    // would overwrite it).
    const sealed = await Deno.readTextFile(file);
    const warnings: string[] = [];
    const other = new RoomOwed(file, {
      key: new Uint8Array(32),
      onWarning: (m) => warnings.push(m),
    });
    assert.equal(other.get("item-1"), undefined);
    const aside = other.setAside ?? "";
    assert.ok(aside.startsWith(`${file}.unreadable-`), aside);
    assert.equal(await Deno.readTextFile(aside), sealed);
    assert.equal((await Deno.stat(aside)).mode! & 0o777, 0o600);
    await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
    assert.deepEqual(warnings, [
      `Cannot read "${file}": it does not open with this key; it was moved aside to ` +
      `"${aside}", with the history lines of room messages it kept, and the chat goes ` +
      `on without them`,
    ]);
    await Deno.rename(aside, file);
    owed.drop("item-1");
    assert.equal(new RoomOwed(file, { key }).get("item-1"), undefined);
  });
});

Deno.test("RoomOwed given a room-owed.json it cannot read says so, and does not overwrite the lines owed in it: it is moved aside, intact", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "mailbox", "room-owed.json");
    assert.equal(new RoomOwed(file).put("item-1", [RECORD]), true);
    // Cut short (a copy of the home made while it was written, a disk error): not JSON.
    const held = (await Deno.readTextFile(file)).slice(0, 40);
    await Deno.writeTextFile(file, held);
    const warnings: string[] = [];
    const owed = new RoomOwed(file, { onWarning: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.ok(warnings[0].startsWith(`Cannot read "${file}": it is not JSON; it was moved aside`));
    assert.ok(owed.setAside && warnings[0].includes(`"${owed.setAside}"`), warnings[0]);
    // The next room message owed goes to a new room-owed.json; item-1's lines stay aside.
    owed.put("item-2", [{ ...RECORD, id: "r:ann:1:2", text: "later" }]);
    assert.equal(
      await Deno.readTextFile(owed.setAside),
      held,
      "room-owed.json that could not be read was overwritten: the lines owed for item-1 are gone",
    );
    assert.deepEqual(new RoomOwed(file).get("item-2")?.[0].text, "later");
    // Moved aside again, it takes another name: the first is never overwritten.
    await Deno.writeTextFile(file, held);
    const again = new RoomOwed(file);
    assert.notEqual(again.setAside, owed.setAside);
    assert.equal(await Deno.readTextFile(owed.setAside), held);
    assert.equal(await Deno.readTextFile(again.setAside!), held);
  });
});

Deno.test("RoomOwed that cannot move aside a room-owed.json it cannot read refuses with ERR_FILE, and leaves it as it was", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "mailbox");
    // A folder in its place (root may write anywhere: a read-only folder would not stop the
    // move) can be neither read nor moved over the name claimed for it.
    const file = join(folder, "room-owed.json");
    await Deno.mkdir(join(file, "kept"), { recursive: true });
    assert.throws(
      () => new RoomOwed(file),
      (e) =>
        e instanceof E2eError && e.code === "ERR_FILE" &&
        e.message.startsWith(`Cannot read "${file}": `) &&
        e.message.includes("and cannot move it aside"),
    );
    assert.ok((await Deno.stat(join(file, "kept"))).isDirectory);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(folder))).map((e) => e.name), [
      "room-owed.json",
    ]);
  });
});

// README ("The CA in five commands", step 4): a key revoked as keyCompromise, alice removes
// HOME/id and joins with a new key in the same home. The history's key is derived from the private
// key, so a room-owed.json left sealed under the old one (a run killed before its lines were
// synced) opens with no key there will ever be: the chat then refuses to start, and its hint
// ("repair it") cannot be followed. History and the unsent items skip what the key does not open.
Deno.test("RoomOwed sealed under the key a home had before it joined again with a new key does not stop the client: what it held is set aside, not overwritten", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "mailbox", "room-owed.json");
    const oldKey = new Uint8Array(32).fill(7);
    assert.equal(new RoomOwed(file, { key: oldKey, seal: true }).put("item-1", [RECORD]), true);
    const left = await Deno.readTextFile(file);
    const newKey = new Uint8Array(32).fill(9);
    let owed: RoomOwed | undefined;
    try {
      owed = new RoomOwed(file, { key: newKey, seal: true });
    } catch (e) {
      assert.fail(`the client cannot start after joining again with a new key: ${e}`);
    }
    owed.put("item-2", [{ ...RECORD, id: "r:ann:1:2", text: "later" }]);
    const kept = await Array.fromAsync(Deno.readDir(join(dir, "mailbox")));
    const texts = await Promise.all(
      kept.map((e) => Deno.readTextFile(join(dir, "mailbox", e.name))),
    );
    assert.ok(texts.includes(left), "the old key's room-owed.json is kept aside");
  });
});
