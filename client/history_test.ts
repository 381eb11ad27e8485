import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import { History } from "./history.ts";

function mode(info: Deno.FileInfo): number {
  return (info.mode ?? 0) & 0o777;
}

Deno.test("History keeps both sides of a conversation in order, with acks merged into what we sent", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    history.message({ id: "a-1", from: "alice", to: "bob", text: "hi bob" });
    history.message({ id: "b-1", from: "bob", to: "alice", text: "hi alice" });
    history.file({
      id: "b-2",
      from: "bob",
      to: "alice",
      name: "x.pdf",
      path: "/d/x.pdf",
      bytes: 3,
      sha256: "ab",
    });
    history.delivered("bob", "a-1", 1.5);
    // An id of bob's that equals one of ours is not marked by our ack.
    history.message({ id: "a-1", from: "bob", to: "alice", text: "same id" });
    const entries = await history.read("bob");
    assert.deepEqual(
      entries.map((e) => [e.from, e.kind, e.text ?? e.file?.name, e.state, e.ms]),
      [
        ["alice", "message", "hi bob", "delivered", 1.5],
        ["bob", "message", "hi alice", undefined, undefined],
        ["bob", "file", "x.pdf", undefined, undefined],
        ["bob", "message", "same id", undefined, undefined],
      ],
    );
    assert.deepEqual(entries[2].file, { name: "x.pdf", path: "/d/x.pdf", bytes: 3, sha256: "ab" });
    assert.deepEqual((await history.read("bob", 1)).map((e) => e.text), ["same id"]);
    assert.deepEqual(await history.read("carol"), []);
  });
});

Deno.test("History files are 0600 in a 0700 folder, one per conversation, listed most recent first", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice" });
    history.message({ id: "1", from: "alice", to: "bob", text: "one" });
    await history.flush();
    await new Promise((r) => setTimeout(r, 20));
    history.message({ id: "2", from: "carol", to: "alice", text: "two" });
    await history.flush();
    assert.equal(mode(await Deno.stat(folder)), 0o700);
    assert.equal(mode(await Deno.stat(join(folder, "bob.jsonl"))), 0o600);
    assert.deepEqual((await history.conversations()).map((c) => c.name), ["carol", "bob"]);
  });
});

Deno.test("History skips a torn last line with a warning, and the next record starts on its own line", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const warnings: string[] = [];
    const first = new History(folder, { self: "alice" });
    first.message({ id: "1", from: "alice", to: "bob", text: "kept" });
    await first.flush();
    // A crash in the middle of a write leaves half a line.
    await Deno.writeTextFile(join(folder, "bob.jsonl"), '{"t":"msg","id":"2","at":"20', {
      append: true,
    });
    const second = new History(folder, { self: "alice", onWarning: (m) => warnings.push(m) });
    assert.deepEqual((await second.read("bob")).map((e) => e.text), ["kept"]);
    assert.match(warnings.join("\n"), /torn last line/);
    second.message({ id: "3", from: "bob", to: "alice", text: "after the crash" });
    assert.deepEqual((await second.read("bob")).map((e) => e.text), ["kept", "after the crash"]);
  });
});

Deno.test("History rotates a file past its size bound and still reads across the two", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice", maxBytes: 400 });
    for (let i = 0; i < 20; i++) {
      history.message({ id: String(i), from: "alice", to: "bob", text: `message ${i}` });
      await history.flush();
    }
    assert.ok((await Deno.stat(join(folder, "bob.jsonl"))).size <= 400);
    assert.ok((await Deno.stat(join(folder, "bob.jsonl.1"))).size <= 400);
    const texts = (await history.read("bob", 100)).map((e) => e.text);
    assert.equal(texts.at(-1), "message 19");
    assert.ok(texts.length >= 4 && texts.length < 20, `kept ${texts.length}`);
    assert.deepEqual((await history.conversations()).map((c) => c.name), ["bob"]);
  });
});

Deno.test("History keeps any conversation name inside its folder", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice" });
    for (const name of ["../escape", "..", "#team", "a/b"]) {
      history.message({ id: "1", from: name, to: "alice", text: name });
    }
    await history.flush();
    const names: string[] = [];
    for await (const e of Deno.readDir(folder)) names.push(e.name);
    assert.equal(names.length, 4);
    for (const name of ["../escape", "..", "#team", "a/b"]) {
      assert.deepEqual((await history.read(name)).map((e) => e.text), [name]);
    }
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["history"]);
  });
});
