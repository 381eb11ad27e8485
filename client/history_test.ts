import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import type { E2eError } from "../lib/errors.ts";
import { History, sealText } from "./history.ts";

const ROOM_A = "a".repeat(32);
const ROOM_B = "b".repeat(32);

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

Deno.test("History.read() shows a mailbox item recorded twice (a crash before its id was marked seen) once, the last, and still shows a peer's direct messages that share an id", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    const sent = new Date(Date.now() - 60_000);
    const id = "0123456789abcdef0123456789abcdef";
    history.message({ id, from: "bob", to: "alice", text: "by the mailbox", sent });
    await history.persist("bob");
    history.message({ id: "b-1", from: "bob", to: "alice", text: "direct" });
    history.message({ id: "b-1", from: "bob", to: "alice", text: "direct, same id" });
    // The chat restarted and stored it again: its event carries this line's ref.
    const ref = history.message({ id, from: "bob", to: "alice", text: "by the mailbox", sent });
    history.message({ id, from: "alice", to: "bob", text: "ours, sharing the id" });
    const entries = await history.read("bob");
    assert.deepEqual(entries.map((e) => [e.from, e.text]), [
      ["bob", "direct"],
      ["bob", "direct, same id"],
      ["bob", "by the mailbox"],
      ["alice", "ours, sharing the id"],
    ]);
    assert.equal(entries[2].ref, ref);
    assert.equal(
      (await Deno.readTextFile(join(dir, "history", "bob.jsonl"))).split("\n")
        .filter((l) => l.includes("by the mailbox")).length,
      2,
    );
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

Deno.test("History.conversations() leaves out a file whose name is not one History writes, instead of failing", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice" });
    history.message({ id: "1", from: "alice", to: "bob", text: "one" });
    await history.flush();
    // A name that does not decode (no History wrote it): a copy, a hand-made file.
    await Deno.writeTextFile(join(folder, "b%zz.jsonl"), "");
    assert.deepEqual((await history.conversations()).map((c) => c.name), ["bob"]);
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

Deno.test("History: a line torn by a crash is not taken for a damaged line at every read after the next record", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const first = new History(folder, { self: "alice" });
    first.message({ id: "1", from: "alice", to: "bob", text: "kept" });
    await first.flush();
    // A crash in the middle of a write leaves half a line; the next run writes after it.
    await Deno.writeTextFile(join(folder, "bob.jsonl"), '{"t":"msg","id":"2","at":"20', {
      append: true,
    });
    const second = new History(folder, { self: "alice" });
    second.message({ id: "3", from: "bob", to: "alice", text: "after the crash" });
    await second.flush();
    // Every later run: the half line is what a crash leaves, not damage to warn of each time.
    const warnings: string[] = [];
    const third = new History(folder, { self: "alice", onWarning: (m) => warnings.push(m) });
    assert.deepEqual((await third.read("bob")).map((e) => e.text), ["kept", "after the crash"]);
    assert.deepEqual(warnings.filter((w) => /unreadable/.test(w)), []);
  });
});

Deno.test("History leaves a torn line written since it began (another chat on the home writing it now) and starts its own on a new line", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const first = new History(folder, { self: "alice" });
    first.message({ id: "1", from: "alice", to: "bob", text: "kept" });
    await first.flush();
    const second = new History(folder, { self: "alice" });
    const torn = '{"t":"msg","id":"2","at":"20';
    await Deno.writeTextFile(join(folder, "bob.jsonl"), torn, { append: true });
    const later = new Date(Date.now() + 1_000); // written after `second` began, whatever the clock
    await Deno.utime(join(folder, "bob.jsonl"), later, later);
    second.message({ id: "3", from: "bob", to: "alice", text: "after" });
    await second.flush();
    const lines = (await Deno.readTextFile(join(folder, "bob.jsonl"))).split("\n");
    assert.equal(lines[1], torn);
    assert.deepEqual((await second.read("bob")).map((e) => e.text), ["kept", "after"]);
  });
});

Deno.test("History.savedFile() finds where a mailbox file was saved by its line (sender, id, sending time, digest), and nothing for another item", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    const sent = new Date("2026-01-02T03:04:05.000Z");
    const sha256 = "ab".repeat(32);
    const file = { from: "bob", to: "alice", name: "notes.txt", bytes: 4, sent };
    const ref = history.file({ ...file, id: "7", path: "/d/notes.txt", sha256 });
    history.file({ ...file, id: "7", path: "/d/other.txt", sha256: "cd".repeat(32) });
    assert.deepEqual(await history.savedFile("bob", { id: "7", sent, sha256 }), {
      path: "/d/notes.txt",
      ref,
    });
    assert.equal(await history.savedFile("bob", { id: "8", sent, sha256 }), undefined);
    assert.equal(await history.savedFile("bob", { id: "7", sha256 }), undefined, "not sent then");
    assert.equal(await history.savedFile("carol", { id: "7", sent, sha256 }), undefined);
  });
});

Deno.test("History skips a line whose fields have the wrong types with a warning, so no face is handed a non-string path or digest", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const warnings: string[] = [];
    const history = new History(folder, { self: "alice", onWarning: (m) => warnings.push(m) });
    history.message({ id: "1", from: "bob", to: "alice", text: "kept" });
    await history.flush();
    const at = new Date().toISOString();
    const file = { t: "file", id: "2", at, from: "bob", to: "alice", name: "x.pdf", bytes: 3 };
    const hostile = [
      { ...file, path: 1 },
      { ...file, path: { toString: "x" } },
      { ...file, sha256: ["ab"] },
      { ...file, bytes: "3" },
      { t: "msg", id: "3", at, from: "bob", to: "alice", text: 3 },
    ];
    await Deno.writeTextFile(
      join(folder, "bob.jsonl"),
      hostile.map((r) => JSON.stringify(r) + "\n").join(""),
      { append: true },
    );
    history.message({ id: "4", from: "bob", to: "alice", text: "after" });
    await history.flush();
    const entries = await new History(folder, {
      self: "alice",
      onWarning: (m) => warnings.push(m),
    }).read("bob");
    assert.deepEqual(entries.map((e) => [e.kind, e.text]), [["message", "kept"], [
      "message",
      "after",
    ]]);
    assert.match(warnings.join("\n"), /Skipped 5 unreadable line\(s\)/);
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

Deno.test("History writes the acks of one turn as one line and still reads the one-ack lines of older files", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    await Deno.mkdir(folder, { mode: 0o700 });
    // Written by an earlier version: one line per ack.
    await Deno.writeTextFile(
      join(folder, "bob.jsonl"),
      '{"t":"msg","id":"a-1","at":"2026-01-01T00:00:00.000Z","from":"alice","to":"bob","text":"old"}\n' +
        '{"t":"ack","id":"a-1","at":"2026-01-01T00:00:01.000Z","ms":2.5}\n',
    );
    const history = new History(folder, { self: "alice" });
    for (const id of ["a-2", "a-3", "a-4"]) {
      history.message({ id, from: "alice", to: "bob", text: id });
    }
    history.delivered("bob", "a-2", 1.25);
    history.delivered("bob", "a-3");
    await history.flush();
    history.close();
    const lines = (await Deno.readTextFile(join(folder, "bob.jsonl"))).trimEnd().split("\n");
    assert.equal(lines.length, 6);
    assert.deepEqual(JSON.parse(lines[5]).ids, ["a-2", "a-3"]);
    assert.deepEqual(
      (await new History(folder, { self: "alice" }).read("bob")).map((e) => [e.id, e.state, e.ms]),
      [["a-1", "delivered", 2.5], ["a-2", "delivered", 1.25], ["a-3", "delivered", undefined], [
        "a-4",
        "sent",
        undefined,
      ]],
    );
  });
});

const KEY = new Uint8Array(32).fill(7);

Deno.test("History with a key seals every write (AES-256-GCM): nothing readable on disk, all of it read back", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice", key: KEY });
    // Two records in one turn are sealed together as one line; the third is a write of its own.
    history.message({ id: "a-1", from: "alice", to: "bob", text: "the ledger is under the mill" });
    history.file({
      id: "b-1",
      from: "bob",
      to: "alice",
      name: "plan.pdf",
      path: "/d/plan.pdf",
      bytes: 9,
    });
    await history.flush();
    history.delivered("bob", "a-1", 2);
    await history.flush();
    history.close();
    const disk = await Deno.readTextFile(join(folder, "bob.jsonl"));
    const lines = disk.trimEnd().split("\n");
    assert.equal(lines.length, 2);
    for (const line of lines) assert.match(line, /^\{"e":"[A-Za-z0-9+/]+=*"\}$/);
    for (const secret of ["ledger", "plan.pdf", "alice", "a-1"]) assert.ok(!disk.includes(secret));
    const again = new History(folder, { self: "alice", key: KEY });
    assert.deepEqual(
      (await again.read("bob")).map((e) => [e.from, e.text ?? e.file?.name, e.state]),
      [["alice", "the ledger is under the mill", "delivered"], ["bob", "plan.pdf", undefined]],
    );
  });
});

Deno.test("History opens plain and sealed lines in one file; sealed lines without the right key, or moved to another conversation, are skipped with a warning", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const plain = new History(folder, { self: "alice" });
    plain.message({ id: "1", from: "bob", to: "alice", text: "before the key was encrypted" });
    await plain.flush();
    const sealed = new History(folder, { self: "alice", key: KEY });
    sealed.message({ id: "2", from: "bob", to: "alice", text: "after" });
    await sealed.flush();
    // After `passwd --remove` the key still opens the sealed lines; new ones are plain.
    const unsealed = new History(folder, { self: "alice", key: KEY, seal: false });
    unsealed.message({ id: "3", from: "bob", to: "alice", text: "plain again" });
    assert.deepEqual((await unsealed.read("bob")).map((e) => e.text), [
      "before the key was encrypted",
      "after",
      "plain again",
    ]);

    const warnings: string[] = [];
    const wrong = new History(folder, {
      self: "alice",
      key: new Uint8Array(32).fill(8),
      onWarning: (m) => warnings.push(m),
    });
    assert.deepEqual((await wrong.read("bob")).map((e) => e.text), [
      "before the key was encrypted",
      "plain again",
    ]);
    assert.match(warnings.join("\n"), /Skipped 1 encrypted line\(s\) in ".*bob\.jsonl" that this/);

    // A sealed line copied into carol's conversation does not open there.
    const line = (await Deno.readTextFile(join(folder, "bob.jsonl"))).split("\n")[1];
    await Deno.writeTextFile(join(folder, "carol.jsonl"), line + "\n", { mode: 0o600 });
    warnings.length = 0;
    const moved = new History(folder, {
      self: "alice",
      key: KEY,
      onWarning: (m) => warnings.push(m),
    });
    assert.deepEqual(await moved.read("carol"), []);
    assert.match(warnings.join("\n"), /Skipped 1 encrypted line/);
  });
});

Deno.test("History skips a torn sealed last line with a warning, and the next sealed line starts on its own line", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const first = new History(folder, { self: "alice", key: KEY });
    first.message({ id: "1", from: "alice", to: "bob", text: "kept" });
    await first.flush();
    first.message({ id: "2", from: "alice", to: "bob", text: "torn" });
    await first.flush();
    first.close();
    const file = join(folder, "bob.jsonl");
    const text = await Deno.readTextFile(file);
    await Deno.writeTextFile(file, text.slice(0, text.length - 20)); // a crash mid-write
    const warnings: string[] = [];
    const second = new History(folder, {
      self: "alice",
      key: KEY,
      onWarning: (m) => warnings.push(m),
    });
    assert.deepEqual((await second.read("bob")).map((e) => e.text), ["kept"]);
    assert.match(warnings.join("\n"), /torn last line/);
    second.message({ id: "3", from: "bob", to: "alice", text: "after the crash" });
    assert.deepEqual((await second.read("bob")).map((e) => e.text), ["kept", "after the crash"]);
  });
});

Deno.test("History writes a peer's text with Unicode line breaks, C1 controls and a lone surrogate as one JSON line for any reader, and reads it back", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    const text = "one\u2028two\u2029three\u0085four\u009b5m \ud800 end \\ud800";
    history.message({ id: "b-1", from: "bob", to: "alice", text });
    history.message({ id: "b-2", from: "bob", to: "alice", text: "next" });
    const entries = await history.read("bob");
    assert.deepEqual(entries.map((e) => e.text), [text.replace("\ud800", "\ufffd"), "next"]);
    // Split as Python's str.splitlines() and other Unicode-aware readers split: still two lines.
    const raw = await Deno.readTextFile(join(dir, "history", "bob.jsonl"));
    const lines = raw.split(/\r\n|[\n\r\v\f\u0085\u2028\u2029]/).filter((l) => l);
    assert.equal(lines.length, 2, raw);
    for (const line of lines) assert.ok(JSON.parse(line));
    assert.doesNotMatch(raw, /[\u007f-\u009f]/);
  });
});

Deno.test("History gives each received message and file a ref of its own, the same when read back; ours get none, nor do an earlier version's lines", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    await Deno.mkdir(folder, { mode: 0o700 });
    // Written by an earlier version: no ref.
    await Deno.writeTextFile(
      join(folder, "bob.jsonl"),
      '{"t":"msg","id":"m1","at":"2026-01-01T00:00:00.000Z","from":"bob","to":"alice","text":"old"}\n',
    );
    const history = new History(folder, { self: "alice" });
    const refs = [
      history.message({ id: "m1", from: "bob", to: "alice", text: "I agree" }),
      history.message({ id: "m1", from: "bob", to: "alice", text: "I never agreed" }),
      history.file({ id: "m1", from: "bob", to: "alice", name: "x.txt", bytes: 1 }),
      history.message({ id: "a-1", from: "alice", to: "bob", text: "mine" }),
      history.roomMessage({
        id: "r:carol@1.1",
        room: "#team",
        roomId: ROOM_A,
        from: "carol",
        text: "room",
      }),
      history.roomMessage({
        id: "r:alice@1.1",
        room: "#team",
        roomId: ROOM_A,
        from: "alice",
        text: "ours",
      }),
    ];
    assert.equal(refs[3], undefined);
    assert.equal(refs[5], undefined);
    const given = [refs[0], refs[1], refs[2], refs[4]];
    for (const ref of given) assert.match(ref ?? "", /^[A-Za-z0-9_-]{11}[0-9a-z]+$/);
    assert.equal(new Set(given).size, 4, "each received item has its own ref");
    await history.flush();
    const read = await new History(folder, { self: "alice" }).read("bob");
    assert.deepEqual(read.map((e) => [e.text ?? e.file?.name, e.ref]), [
      ["old", undefined],
      ["I agree", refs[0]],
      ["I never agreed", refs[1]],
      ["x.txt", refs[2]],
      ["mine", undefined],
    ]);
    assert.deepEqual((await history.read("#team")).map((e) => e.ref), [refs[4], undefined]);
  });
});

Deno.test("History keeps the (late) mark of a room message shown after later ones of its author, and gives it back when read", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const history = new History(folder, { self: "alice", roomId: () => ROOM_A });
    const id = (seq: number) => `${ROOM_A}:bob@1.${seq}`;
    history.roomMessage({ id: id(12), room: "#ops", roomId: ROOM_A, from: "bob", text: "twelve" });
    history.roomMessage({
      id: id(11),
      room: "#ops",
      roomId: ROOM_A,
      from: "bob",
      text: "eleven",
      late: true,
    });
    await history.flush();
    const read = await new History(folder, { self: "alice", roomId: () => ROOM_A }).read("#ops");
    assert.deepEqual(read.map((e) => [e.text, e.late]), [["twelve", undefined], [
      "eleven",
      true,
    ]]);
  });
});

Deno.test("Two rooms of one name keep histories of their own, kept by room id under names inside the folder; not in one, the one written last is read", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    let current: string | undefined = ROOM_A;
    const history = new History(folder, { self: "alice", roomId: () => current });
    const say = (roomId: string, from: string, text: string) =>
      history.roomMessage({ id: `${roomId}:${from}@1.1`, room: "#team", roomId, from, text });
    say(ROOM_A, "bob", "in ben's #team");
    // A file sent in the room: kept by the id of the room of that name we are in.
    history.file({ id: "f1", from: "bob", to: "#team", name: "plan.txt", bytes: 4 });
    await history.flush();
    await new Promise((r) => setTimeout(r, 20));
    current = ROOM_B; // left ben's #team, joined mallory's
    say(ROOM_B, "mallory", "in mallory's #team");
    assert.deepEqual((await history.read("#team")).map((e) => e.text), ["in mallory's #team"]);
    current = ROOM_A;
    assert.deepEqual((await history.read("#team")).map((e) => e.text ?? e.file?.name), [
      "in ben's #team",
      "plan.txt",
    ]);
    current = undefined;
    assert.deepEqual((await history.read("#team")).map((e) => e.text), ["in mallory's #team"]);
    assert.deepEqual((await history.conversations()).map((c) => c.name), ["#team"]);
    const names = [...Deno.readDirSync(folder)].map((e) => e.name).sort();
    assert.deepEqual(names, [`%23team%40${ROOM_A}.jsonl`, `%23team%40${ROOM_B}.jsonl`]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["history"]);
  });
});

Deno.test("A room's file is kept in the history of the room id it names, whatever room of that name we are in; with no id and in no room of that name, nothing is written, the history file of before least of all", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    let current: string | undefined = ROOM_B; // left ben's #team, joined mallory's
    const history = new History(folder, { self: "alice", roomId: () => current });
    const file = { from: "bob", to: "#team", name: "plan.txt", bytes: 4 };
    history.file({ id: "f1", ...file, roomId: ROOM_A }); // accepted in ben's #team
    current = undefined;
    history.file({ id: "f2", ...file });
    history.roomMessage({ id: "m", room: "#team", roomId: ROOM_A, from: "bob", text: "hi" });
    history.message({ id: "m2", from: "bob", to: "#team", text: "by name only" });
    await history.flush();
    const names = [...Deno.readDirSync(folder)].map((e) => e.name).sort();
    assert.deepEqual(names, [`%23team%40${ROOM_A}.jsonl`]);
    current = ROOM_A;
    assert.deepEqual((await history.read("#team")).map((e) => e.file?.name ?? e.text), [
      "plan.txt",
      "hi",
    ]);
    current = ROOM_B;
    assert.deepEqual(await history.read("#team"), []);
  });
});

Deno.test("A room's history file of before (kept by its name) is still read for the room, sealed lines too, without the lines of another room of that name, and never written again", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "history");
    const key = new Uint8Array(32).fill(7);
    // An earlier version: one file for every room called #team, sealed with the name as its AD.
    const records = [
      ["bob.3", "of before room ids"],
      [`${ROOM_A}:bob@1.1`, "ben's room"],
      [`${ROOM_B}:mallory@1.1`, "mallory's room"],
    ].map(([id, text]) =>
      JSON.stringify({
        t: "msg",
        id,
        at: new Date().toISOString(),
        from: id.includes("mallory") ? "mallory" : "bob",
        to: "#team",
        text,
      })
    );
    await Deno.mkdir(folder, { recursive: true });
    const file = join(folder, "%23team.jsonl");
    const sealed = sealText(key, "e2e-chat history v1\n#team", records.join("\n"));
    await Deno.writeTextFile(file, JSON.stringify({ e: sealed }) + "\n");
    const old = await Deno.readTextFile(file);
    const history = new History(folder, { self: "alice", key, roomId: () => ROOM_A });
    history.roomMessage({
      id: `${ROOM_A}:bob@1.2`,
      room: "#team",
      roomId: ROOM_A,
      from: "bob",
      text: "now",
    });
    assert.deepEqual((await history.read("#team")).map((e) => e.text), [
      "of before room ids",
      "ben's room",
      "now",
    ]);
    assert.equal(await Deno.readTextFile(file), old);
    assert.deepEqual((await history.conversations()).map((c) => c.name), ["#team"]);
  });
});

Deno.test("History.persist() throws ERR_FILE, with no warning, when the conversation's records cannot be written, and writes what is recorded again once they can; other conversations' records still land", async () => {
  await withTempDir(async (dir) => {
    const warnings: string[] = [];
    const history = new History(dir, { self: "bob", onWarning: (m) => warnings.push(m) });
    await Deno.mkdir(join(dir, "alice.jsonl"), { recursive: true });
    history.message({ id: "1", from: "alice", to: "bob", text: "lost" });
    history.message({ id: "2", from: "carol", to: "bob", text: "kept" });
    await assert.rejects(history.persist("alice"), (e: E2eError) => {
      assert.equal(e.code, "ERR_FILE");
      assert.match(e.message, /^Cannot write the history of "alice" in ".*": Is a directory$/);
      return true;
    });
    assert.deepEqual(warnings, []);
    assert.deepEqual((await history.read("carol")).map((e) => e.text), ["kept"]);

    await Deno.remove(join(dir, "alice.jsonl"));
    history.message({ id: "1", from: "alice", to: "bob", text: "written" });
    await history.persist("alice");
    assert.deepEqual((await history.read("alice")).map((e) => e.text), ["written"]);
    history.close();
  });
});

Deno.test("History records a received mailbox item at the time it arrives, with the sending time its sender claims kept apart as sent", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    const claimed = new Date(Date.now() + 86_000_000);
    const before = new Date().toISOString();
    history.message({ id: "b-1", from: "bob", to: "alice", text: "Yes, I accept.", sent: claimed });
    history.file({ id: "b-2", from: "bob", to: "alice", name: "x", bytes: 0, sent: claimed });
    history.message({ id: "a-1", from: "alice", to: "bob", text: "So you will NOT pay?" });
    const entries = await history.read("bob");
    const after = new Date().toISOString();
    assert.deepEqual(entries.map((e) => e.id), ["b-1", "b-2", "a-1"]);
    for (const e of entries) assert.ok(e.at >= before && e.at <= after, `${e.id} at ${e.at}`);
    assert.deepEqual(entries.map((e) => e.sent), [
      claimed.toISOString(),
      claimed.toISOString(),
      undefined,
    ]);
  });
});

Deno.test("History names a received file by the name it was saved under and keeps the announced one apart, for an earlier version's lines too", async () => {
  await withTempDir(async (dir) => {
    const history = new History(join(dir, "history"), { self: "alice" });
    const announced = "invoice.pdf" + "\u2800".repeat(70) + ".sh";
    history.file({
      id: "b-1",
      from: "bob",
      to: "alice",
      name: "invoice.pdf .sh",
      announced,
      path: "/d/invoice.pdf .sh",
      bytes: 1,
    });
    history.file({
      id: "a-1",
      from: "alice",
      to: "bob",
      name: "mine.txt",
      path: "/x/mine.txt",
      bytes: 1,
    });
    await history.flush();
    // An earlier version wrote the announced name as the name.
    await Deno.writeTextFile(
      join(dir, "history", "bob.jsonl"),
      JSON.stringify({
        t: "file",
        id: "b-2",
        at: new Date().toISOString(),
        from: "bob",
        to: "alice",
        name: announced,
        path: "/d/invoice.pdf .sh",
        bytes: 1,
      }) + "\n",
      { append: true },
    );
    const files = (await history.read("bob")).map((e) => [e.id, e.file?.name, e.file?.announced]);
    assert.deepEqual(files, [
      ["b-1", "invoice.pdf .sh", announced],
      ["a-1", "mine.txt", undefined],
      ["b-2", "invoice.pdf .sh", announced],
    ]);
  });
});
