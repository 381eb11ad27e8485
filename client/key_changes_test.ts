import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import {
  KeyChanges,
  MAX_KEY_CHANGES,
  MAX_KEY_CHANGES_PER_PEER,
  MAX_ROOM_KEY_CHANGES_PER_PEER,
} from "./key_changes.ts";

const IMPOSTOR = "aa".repeat(32);
const REAL = "bb".repeat(32);

Deno.test("KeyChanges keeps each key seen for a peer across loads in a 0600 file, and clearing the key trusted leaves another key's change", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "key-changes.json");
    const changes = await KeyChanges.load(file);
    await changes.record({ peer: "bob", keyFingerprint: IMPOSTOR, via: "mailbox" });
    await changes.record({ peer: "bob", keyFingerprint: REAL, via: "connection" });
    await changes.record({ peer: "carol", keyFingerprint: REAL, via: "room" });
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    const again = await KeyChanges.load(file);
    assert.deepEqual(again.list("bob").map((c) => [c.keyFingerprint, c.via]), [
      [IMPOSTOR, "mailbox"],
      [REAL, "connection"],
    ]);
    // bob's real new key trusted: the impostor's change is still said.
    assert.equal(await again.clear("bob", REAL), true);
    assert.equal(await again.clear("bob", REAL), false);
    const third = await KeyChanges.load(file);
    assert.deepEqual(third.list("bob").map((c) => c.keyFingerprint), [IMPOSTOR]);
    assert.deepEqual(third.list().map((c) => c.peer), ["bob", "carol"]);
  });
});

Deno.test("KeyChanges keeps a few keys per peer and a bounded number in all, the oldest going first, and skips malformed records of the file", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "key-changes.json");
    const changes = await KeyChanges.load(file);
    for (let i = 0; i < MAX_KEY_CHANGES_PER_PEER + 2; i++) {
      await changes.record({ peer: "bob", keyFingerprint: String(i).repeat(64), via: "room" });
    }
    assert.deepEqual(
      changes.list("bob").map((c) => c.keyFingerprint[0]),
      ["2", "3", "4", "5"].slice(0, MAX_KEY_CHANGES_PER_PEER),
    );
    for (let i = 0; i < MAX_KEY_CHANGES + 3; i++) {
      changes.record({ peer: `p${i}`, keyFingerprint: IMPOSTOR, via: "connection" });
    }
    await changes.record({ peer: "last", keyFingerprint: IMPOSTOR, via: "connection" });
    assert.equal(changes.list().length, MAX_KEY_CHANGES);
    const text = JSON.parse(await Deno.readTextFile(file));
    text.changes.push({ peer: "x", keyFingerprint: "not hex", at: "now", via: "mailbox" });
    text.changes.push({ peer: "y", keyFingerprint: REAL, at: new Date().toISOString(), via: "?" });
    await Deno.writeTextFile(file, JSON.stringify(text));
    const again = await KeyChanges.load(file);
    assert.equal(again.list().length, MAX_KEY_CHANGES);
    assert.deepEqual(again.list("x"), []);
    assert.deepEqual(await KeyChanges.load(join(dir, "none.json")).then((c) => c.list()), []);
  });
});

Deno.test("KeyChanges keeps a key seen on a connection or mailbox item however many keys rooms' lists give the peer after, and the global bound drops a room's first", async () => {
  await withTempDir(async (dir) => {
    const changes = await KeyChanges.load(join(dir, "key-changes.json"));
    await changes.record({ peer: "bob", keyFingerprint: REAL, via: "mailbox" });
    // A list giving the same key later does not make it a room's record.
    await changes.record({ peer: "bob", keyFingerprint: REAL, via: "room" });
    for (let i = 0; i < MAX_ROOM_KEY_CHANGES_PER_PEER + 3; i++) {
      await changes.record({ peer: "bob", keyFingerprint: String(i).repeat(64), via: "room" });
    }
    const bob = changes.list("bob");
    assert.deepEqual(bob.filter((c) => c.via !== "room").map((c) => c.keyFingerprint), [REAL]);
    assert.equal(bob.filter((c) => c.via === "room").length, MAX_ROOM_KEY_CHANGES_PER_PEER);
    for (let i = 0; i < MAX_KEY_CHANGES - 1; i++) {
      await changes.record({ peer: `p${i}`, keyFingerprint: IMPOSTOR, via: "connection" });
    }
    assert.equal(changes.list().length, MAX_KEY_CHANGES);
    assert.deepEqual(changes.list("bob").map((c) => c.keyFingerprint), [REAL]);
  });
});

Deno.test("KeyChanges.load() refuses a key-changes.json that is not JSON with an error naming it, and the next record does not overwrite the key changes it held", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "key-changes.json");
    const changes = await KeyChanges.load(file);
    await changes.record({ peer: "bob", keyFingerprint: IMPOSTOR, via: "mailbox" });
    // Cut short (a copy of the home made while it was written, a disk error): not JSON.
    const held = (await Deno.readTextFile(file)).slice(0, 60);
    await Deno.writeTextFile(file, held);
    let loaded: KeyChanges | undefined;
    try {
      loaded = await KeyChanges.load(file);
    } catch (e) {
      assert.ok(e instanceof Error && e.message.includes(file), String(e));
      assert.equal(await Deno.readTextFile(file), held);
      return;
    }
    // Taken for none: bob's key change, never trusted nor dismissed, is no longer said…
    assert.deepEqual(loaded.list("bob"), [], "loaded");
    // …and the next one seen overwrites the file that held it, with nothing said.
    await loaded.record({ peer: "carol", keyFingerprint: REAL, via: "connection" });
    assert.equal(
      await Deno.readTextFile(file),
      held,
      "key-changes.json that could not be read was overwritten: bob's key change is gone",
    );
  });
});
