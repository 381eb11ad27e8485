import assert from "node:assert/strict";
import { join } from "node:path";
import { e2eError } from "../lib/_test_util.ts";
import { withTempDir } from "../tests/_helpers.ts";
import { underUlimit } from "../tests/_harness.ts";
import { type UnsentItem, UnsentStore } from "./mailbox_unsent.ts";

const bytes = (n: number, fill = 7) => new Uint8Array(n).fill(fill);

function item(id: string, more: Partial<UnsentItem> = {}): UnsentItem {
  return { to: "bob", kind: "message", id, at: "2026-01-02T03:04:05.000Z", ...more };
}

// The name of the item file numbered `n` in `dir` (named by the store that holds it).
function numbered(dir: string, n: number): string {
  const prefix = `${String(n).padStart(10, "0")}.`;
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((m) => m.startsWith(prefix));
  assert.equal(names.length, 1, `${prefix}: ${names}`);
  return names[0];
}

Deno.test("UnsentStore keeps items across an open, in the order kept, each as it was last kept, plain or sealed", async () => {
  for (const options of [{}, { key: bytes(32, 1) }]) {
    await withTempDir(async (home) => {
      const dir = join(home, "mailbox", "unsent");
      const { store } = await UnsentStore.open(dir, join(home, "mailbox"), options);
      const one = item("one", { payload: bytes(3), note: { text: "hi" } });
      const two = item("two", {
        kind: "file",
        name: "a.txt",
        der: bytes(5),
        sealedTo: "ab".repeat(32),
        note: { bytes: 3 },
      });
      const three = item("three", { kind: "room", payload: bytes(2) });
      for (const i of [one, two, three]) await store.keep(i);
      // Sealed later: kept in its place, the sealed bytes instead of the payload.
      const sealed = { ...one, payload: undefined, der: bytes(9, 9), sealedTo: "cd".repeat(32) };
      await store.keep(sealed);
      await store.drop("three");
      assert.equal(store.size, 2);
      store.close();
      const { store: again, items, unreadable } = await UnsentStore.open(
        dir,
        join(home, "mailbox"),
        options,
      );
      again.close();
      assert.deepEqual(unreadable, []);
      const { payload: _, ...expected } = sealed;
      assert.deepEqual(items, [expected, two]);
      assert.equal(Deno.statSync(dir).mode! & 0o777, 0o700);
      // Named by their number and the store that holds them; its lock file gone once closed.
      for (const e of Deno.readDirSync(dir)) {
        assert.match(e.name, /^\d{10}\.[0-9a-f]{16}\.json$/);
        assert.equal(Deno.statSync(join(dir, e.name)).mode! & 0o777, 0o600);
        const text = Deno.readTextFileSync(join(dir, e.name));
        assert.equal(text.includes("bob"), !("key" in options), text);
      }
    });
  }
});

Deno.test("UnsentStore refuses one more item past its count or its bytes with ERR_QUOTA, and takes it again once one went", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "unsent");
    const { store } = await UnsentStore.open(dir, home, { maxItems: 2, maxBytes: 100 });
    await store.keep(item("a", { payload: bytes(40) }));
    await assert.rejects(store.keep(item("b", { payload: bytes(61) })), (e) => {
      e2eError(
        "ERR_QUOTA",
        "the items that wait for the CA service to answer would take 101 bytes, at most 100",
      )(e);
      assert.equal((e as { hint?: string }).hint, "send it again when the CA service answers");
      return true;
    });
    await store.keep(item("b", { payload: bytes(60) }));
    await assert.rejects(
      store.keep(item("c", { payload: bytes(1) })),
      e2eError("ERR_QUOTA", "2 items already wait for the CA service to answer, at most 2"),
    );
    assert.equal([...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".json")).length, 2);
    await store.drop("a");
    await store.keep(item("c", { payload: bytes(1) }));
    store.close();
    const { store: again, items } = await UnsentStore.open(dir, home);
    again.close();
    assert.deepEqual(items.map((i) => i.id), ["b", "c"]);
  });
});

Deno.test("UnsentStore names a file it cannot read (torn, foreign, sealed under another key, for no member name) once, and moves it into unreadable/", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "unsent");
    const { store } = await UnsentStore.open(dir, home, { key: bytes(32, 1) });
    await store.keep(item("sealed", { payload: bytes(3) }));
    Deno.writeTextFileSync(join(dir, "0000000002.json"), '{"v":1,"to":"bob"');
    // Well-formed, but for no member name: never posted, whatever the rest says.
    const stranger = {
      v: 1,
      kind: "message",
      id: "x",
      at: "2026-01-02T03:04:05.000Z",
      payload: "aGk=",
    };
    Deno.writeTextFileSync(
      join(dir, "0000000003.json"),
      JSON.stringify({ ...stranger, to: "../bob" }),
    );
    Deno.writeTextFileSync(
      join(dir, "0000000004.json"),
      JSON.stringify({ ...stranger, to: "Bob" }),
    );
    store.close();
    const first = numbered(dir, 1);
    // A file already moved aside under the same name (an earlier start's) is not replaced.
    Deno.mkdirSync(join(dir, "unreadable"));
    Deno.writeTextFileSync(join(dir, "unreadable", "0000000002.json"), "earlier");
    const { items, unreadable } = await UnsentStore.open(dir, home, { key: bytes(32, 2) });
    assert.deepEqual(items, []);
    const aside = (n: number) =>
      join(dir, "unreadable", n === 1 ? first : `000000000${n}.json${n === 2 ? ".1" : ""}`);
    assert.deepEqual(unreadable, [1, 2, 3, 4].map(aside));
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["unreadable"]);
    assert.equal(Deno.readTextFileSync(join(dir, "unreadable", "0000000002.json")), "earlier");
    assert.equal(Deno.statSync(join(dir, "unreadable")).mode! & 0o777, 0o700);
    // The next start (with the right key, even) says nothing more of them.
    const again = await UnsentStore.open(dir, home, { key: bytes(32, 1) });
    assert.deepEqual([again.items, again.unreadable], [[], []]);
  });
});

Deno.test("UnsentStore.open() neither hangs nor reads without bound on a planted FIFO, link to a device or huge file, and loads no more than its limits", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "unsent");
    const { store } = await UnsentStore.open(dir, home, { maxItems: 3, maxBytes: 1024 });
    for (const id of ["a", "b", "c"]) await store.keep(item(id, { payload: bytes(10) }));
    // Restored from a backup, or planted: past the count limit, a FIFO with no writer, a link to
    // an endless device, a sparse file far larger than any item.
    Deno.writeTextFileSync(
      join(dir, "0000000004.json"),
      JSON.stringify({ v: 1, to: "mallory", kind: "message", id: "d", at: "x", payload: "AA==" }),
    );
    const fifo = join(dir, "0000000005.json");
    assert.ok((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success);
    Deno.symlinkSync("/dev/zero", join(dir, "0000000006.json"));
    using huge = Deno.openSync(join(dir, "0000000007.json"), { write: true, create: true });
    huge.truncateSync(1024 ** 3);
    store.close();

    let done = false;
    const opened = UnsentStore.open(dir, home, { maxItems: 3, maxBytes: 1024 }).finally(() =>
      done = true
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([opened, new Promise((r) => timer = setTimeout(r, 3000))]);
    clearTimeout(timer);
    const hung = !done;
    // Frees a reader blocked on the FIFO, and takes the endless files away, so that the test ends
    // either way.
    if (hung) {
      Deno.removeSync(join(dir, "0000000006.json"));
      Deno.removeSync(join(dir, "0000000007.json"));
      (await Deno.open(fifo, { write: true })).close();
    }
    const { store: reopened, items, unreadable, overLimit } = await opened;
    reopened.close();
    assert.ok(!hung, "UnsentStore.open() still waited after 3 s");
    assert.deepEqual(items.map((i) => i.id), ["a", "b", "c"]);
    assert.deepEqual(
      unreadable,
      [5, 6, 7].map((n) => join(dir, "unreadable", `000000000${n}.json`)),
    );
    assert.deepEqual(overLimit, [{ file: join(dir, "0000000004.json"), limit: "items" }]);
  });
});

Deno.test("UnsentStore refuses to keep an item it could not read again, after a file named with the last sequence number, instead of losing it", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "unsent");
    Deno.mkdirSync(dir, { mode: 0o700 });
    Deno.writeTextFileSync(join(dir, "9999999999.json"), "restored");
    const { store } = await UnsentStore.open(dir, home);
    await assert.rejects(
      store.keep(item("a", { payload: bytes(3) })),
      e2eError(
        "ERR_FILE",
        `Cannot keep a mailbox item in "${dir}": its files are numbered up to 9999999999`,
      ),
    );
    const { items } = await UnsentStore.open(dir, home);
    assert.deepEqual(items, []);
  });
});

Deno.test("UnsentStore.open() tells the files past its count or its bytes from those it cannot read, and leaves them", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "unsent");
    const { store } = await UnsentStore.open(dir, home, { maxItems: 4, maxBytes: 2000 });
    await store.keep(item("a", { payload: bytes(600) }));
    await store.keep(item("b", { payload: bytes(500) }));
    await store.keep(item("c", { payload: bytes(10) }));
    await store.keep(item("d", { payload: bytes(10) }));
    Deno.writeTextFileSync(join(dir, "0000000005.json"), "torn");
    store.close();
    const [second, fourth] = [numbered(dir, 2), numbered(dir, 4)];
    const { store: reopened, items, unreadable, overLimit } = await UnsentStore.open(dir, home, {
      maxItems: 2,
      maxBytes: 1000,
    });
    reopened.close();
    assert.deepEqual(items.map((i) => i.id), ["a", "c"]);
    assert.deepEqual(overLimit, [
      { file: join(dir, second), limit: "bytes" },
      { file: join(dir, fourth), limit: "items" },
    ]);
    assert.deepEqual(unreadable, [join(dir, "unreadable", "0000000005.json")]);
    assert.equal([...Deno.readDirSync(dir)].length, 5); // the four items and unreadable/
  });
});

Deno.test("UnsentStore: two chats on one home never replace nor drop each other's items (from an attacker's review)", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const a = (await UnsentStore.open(dir, join(home, "mailbox"))).store;
    const b = (await UnsentStore.open(dir, join(home, "mailbox"))).store;
    await a.keep(item("from-a", { payload: bytes(3) })); // held: the user was told it waits
    await b.keep(item("from-b", { payload: bytes(3) }), { durable: false }); // write-ahead
    await b.drop("from-b"); // its post answered
    a.close(); // a quits
    b.close();
    const { store, items } = await UnsentStore.open(dir, join(home, "mailbox"));
    store.close();
    assert.deepEqual(items.map((i) => i.id), ["from-a"]);
  });
});

Deno.test("UnsentStore.open() resumes only the items of a chat that is gone, not those of another chat running on the same home", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const a = (await UnsentStore.open(dir, join(home, "mailbox"))).store;
    await a.keep(item("held", { payload: bytes(3) }));
    await a.keep(item("ahead", { der: bytes(4), sealedTo: "ab".repeat(32) }), { durable: false });
    // Sealed meanwhile: its file replaced in place stays a's.
    await a.keep(item("held", { der: bytes(5), sealedTo: "ab".repeat(32) }));
    const b = await UnsentStore.open(dir, join(home, "mailbox"));
    assert.deepEqual([b.items, b.unreadable, b.overLimit], [[], [], []]);
    await b.store.keep(item("from-b", { payload: bytes(3) }));
    a.close(); // a quits (or crashes: the kernel lets go of its files the same)
    const c = await UnsentStore.open(dir, join(home, "mailbox"));
    assert.deepEqual(c.items.map((i) => i.id), ["held", "ahead"]);
    assert.equal(c.store.size, 2);
    // Taken up by c: a fourth start takes neither c's nor b's.
    const d = await UnsentStore.open(dir, join(home, "mailbox"));
    assert.deepEqual(d.items, []);
    for (const id of ["held", "ahead"]) await c.store.drop(id);
    b.store.close();
    const e = await UnsentStore.open(dir, join(home, "mailbox"));
    assert.deepEqual(e.items.map((i) => i.id), ["from-b"]);
    for (const s of [c.store, d.store, e.store]) s.close();
  });
});

Deno.test("UnsentStore.open() out of file handles leaves the items it cannot open in place, named in unopened and not as unreadable, and the next start resumes them all (from an attacker's review)", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const { store } = await UnsentStore.open(dir, join(home, "mailbox"));
    for (let i = 0; i < 90; i++) await store.keep(item(`m${i}`, { payload: bytes(2) }));
    store.close();
    // A start with one file handle left (under `ulimit -n 64`, the rest taken first): enough to
    // read the folder and lock the store that left them, none to open an item.
    const module = new URL("./mailbox_unsent.ts", import.meta.url).href;
    const code = `const { UnsentStore } = await import(${JSON.stringify(module)});
      const taken = [];
      try { for (;;) taken.push(Deno.openSync("/dev/null")); } catch { taken.pop().close(); }
      const r = await UnsentStore.open(${JSON.stringify(dir)}, ${JSON.stringify(home)});
      console.log(JSON.stringify({ items: r.items.length, unreadable: r.unreadable,
        unopened: r.unopened.map((u) => u.reason) }));`;
    const [command, args] = underUlimit(64, Deno.execPath(), ["eval", code]);
    const out = await new Deno.Command(command, { args, stdout: "piped" }).output();
    assert.equal(out.code, 0);
    const child = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.deepEqual(child.unreadable, []);
    assert.ok(child.unopened.length > 0 && child.items + child.unopened.length === 90, child);
    assert.match(child.unopened[0], /^Too many open files$/);
    assert.throws(() => Deno.lstatSync(join(dir, "unreadable")), Deno.errors.NotFound);
    const again = await UnsentStore.open(dir, join(home, "mailbox"));
    again.store.close();
    assert.equal(again.items.length, 90);
    assert.deepEqual([again.unreadable, again.unopened], [[], []]);
  });
});

function noHardLinks(): Promise<void> {
  return Promise.reject(new Deno.errors.PermissionDenied("Operation not permitted (os error 1)"));
}

Deno.test("UnsentStore on a file system without hard links (vfat, exFAT) keeps items under names of their own, never over another chat's, and leaves no temp file", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const a = (await UnsentStore.open(dir, join(home, "mailbox"), { link: noHardLinks })).store;
    const b = (await UnsentStore.open(dir, join(home, "mailbox"), { link: noHardLinks })).store;
    await a.keep(item("from-a", { payload: bytes(3) }));
    await b.keep(item("from-b", { payload: bytes(3) })); // the same number: b's own name
    await a.keep(item("from-a", { der: bytes(4), sealedTo: "ab".repeat(32) })); // in its place
    a.close();
    b.close();
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(names.length, 2);
    for (const name of names) assert.match(name, /^0000000001\.[0-9a-f]{16}\.json$/);
    const { store, items } = await UnsentStore.open(dir, join(home, "mailbox"));
    store.close();
    assert.deepEqual(
      items.map((i) => [i.id, i.der?.length]).sort(),
      [["from-a", 4], ["from-b", undefined]],
    );
  });
});

Deno.test("UnsentStore holds one file handle, its lock, however many items it keeps or takes up, and none once it holds none, or is closed", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    // Counted by a process of its own, in its /proc/self/fd: what it holds more than before.
    const module = new URL("./mailbox_unsent.ts", import.meta.url).href;
    const code = `const { UnsentStore } = await import(${JSON.stringify(module)});
      // Sockets left out: Deno's runtime makes a socket pair of its own at times (under load).
      const handles = () => [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
        try {
          return !Deno.readLinkSync("/proc/self/fd/" + e.name).startsWith("socket:");
        } catch {
          return false; // the folder's own handle, closed since
        }
      }).length;
      const dir = ${JSON.stringify(dir)}, parent = ${JSON.stringify(join(home, "mailbox"))};
      const item = (id, more) => ({ to: "bob", kind: "message", id,
        at: "2026-01-02T03:04:05.000Z", payload: new Uint8Array(2), ...more });
      const before = handles();
      const counts = [];
      const { store } = await UnsentStore.open(dir, parent);
      for (let i = 0; i < 100; i++) await store.keep(item("m" + i));
      await store.keep(item("m0", { payload: undefined, der: new Uint8Array(3),
        sealedTo: "ab".repeat(32) })); // in its place
      counts.push(handles() - before);
      store.close();
      counts.push(handles() - before);
      const again = await UnsentStore.open(dir, parent);
      counts.push(again.items.length, handles() - before);
      for (let i = 0; i < 50; i++) await again.store.drop("m" + i);
      again.store.close();
      counts.push(handles() - before);
      // One more, kept and dropped by a store that runs on: its lock goes with its last item.
      const third = await UnsentStore.open(dir, parent, { maxItems: 200 });
      await third.store.keep(item("x"), { durable: false });
      counts.push(third.items.length, handles() - before);
      for (const i of [...third.items, item("x")]) await third.store.drop(i.id);
      counts.push(handles() - before, [...Deno.readDirSync(dir)].length);
      await third.store.keep(item("y"));
      counts.push(handles() - before);
      third.store.close();
      console.log(JSON.stringify(counts));`;
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped" })
      .output();
    assert.equal(out.code, 0);
    // Kept 100: one (its lock); closed: none; taken up 100: one; closed: none; taken up 50 and
    // kept one: one; all dropped: none, and the folder empty; one kept again: one.
    assert.deepEqual(
      JSON.parse(new TextDecoder().decode(out.stdout)),
      [1, 0, 100, 1, 0, 50, 1, 0, 0, 1],
    );
    // Its one item, and no lock file.
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(names.length, 1);
    for (const name of names) assert.match(name, /^\d{10}\.[0-9a-f]{16}\.json$/);
  });
});

// A chat in a process of its own: keeps `ids` (the last as a write-ahead copy) in `dir`, says
// "ready" and runs until killed.
async function chatProcess(home: string, ids: string[]): Promise<Deno.ChildProcess> {
  const module = new URL("./mailbox_unsent.ts", import.meta.url).href;
  const code = `const { UnsentStore } = await import(${JSON.stringify(module)});
    const { store } = await UnsentStore.open(${JSON.stringify(join(home, "mailbox", "unsent"))},
      ${JSON.stringify(join(home, "mailbox"))});
    const ids = ${JSON.stringify(ids)};
    for (const [i, id] of ids.entries()) {
      await store.keep({ to: "bob", kind: "message", id, at: "2026-01-02T03:04:05.000Z",
        payload: new Uint8Array([104, 105]) }, { durable: i < ids.length - 1 });
    }
    console.log("ready");
    setInterval(() => {}, 1000);`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let said = "";
  while (!said.includes("ready\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`The chat process ended before it was ready: ${said}`);
    said += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return child;
}

Deno.test("UnsentStore: the items of a chat killed (SIGKILL) in another process are taken up by a chat that runs, at its next takeUp(), and not before; its lock file goes with them", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const child = await chatProcess(home, ["k1", "k2", "ahead"]);
    try {
      const running = await UnsentStore.open(dir, join(home, "mailbox"));
      assert.deepEqual([running.items, running.unreadable, running.unopened], [[], [], []]);
      await running.store.keep(item("mine", { payload: bytes(3) }));
      assert.deepEqual((await running.store.takeUp()).items, []); // it runs
      child.kill("SIGKILL");
      await child.status;
      await child.stdout.cancel();
      const taken = await running.store.takeUp();
      assert.deepEqual(taken.items.map((i) => i.id), ["k1", "k2", "ahead"]);
      assert.deepEqual([taken.unreadable, taken.overLimit, taken.unopened], [[], [], []]);
      assert.equal(running.store.size, 4);
      // Its own and the taken ones: under its name now, one lock file (its own).
      const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      const owner = names.find((n) => n.endsWith(".lock"))!.slice(0, 16);
      assert.deepEqual(names.filter((n) => !n.includes(owner)), []);
      assert.equal(names.length, 5);
      // A start meanwhile takes none of them; the next one after it quits, all.
      const third = await UnsentStore.open(dir, join(home, "mailbox"));
      assert.deepEqual(third.items, []);
      third.store.close();
      running.store.close();
      const next = await UnsentStore.open(dir, join(home, "mailbox"));
      next.store.close();
      assert.deepEqual(next.items.map((i) => i.id), ["mine", "k1", "k2", "ahead"]);
    } finally {
      try {
        child.kill("SIGKILL");
        await child.status;
      } catch { /* ended */ }
    }
  });
});

Deno.test("UnsentStore: a start killed (SIGKILL) at any point of its take-up leaves a recipient's items for the next start in the order they were kept (from a review)", async () => {
  const module = new URL("./mailbox_unsent.ts", import.meta.url).href;
  const ids = ["x1", "x2", "x3", "x4"];
  for (let renames = 1; renames < ids.length; renames++) {
    await withTempDir(async (home) => {
      const dir = join(home, "mailbox", "unsent");
      const parent = join(home, "mailbox");
      // A chat kept four items for bob, in this order, and quit.
      const { store } = await UnsentStore.open(dir, parent);
      for (const id of ids) await store.keep(item(id, { payload: bytes(2) }));
      store.close();
      const owner = [...Deno.readDirSync(dir)][0].name.split(".")[1];
      // A start in a process of its own, killed right after its first `renames` renames of an
      // item file (its own lock file's rename is not one).
      const code = `const { UnsentStore } = await import(${JSON.stringify(module)});
        const rename = Deno.rename;
        let n = 0;
        Deno.rename = async (from, to) => {
          await rename(from, to);
          if (/\\.json$/.test(to) && ++n === ${renames}) Deno.kill(Deno.pid, "SIGKILL");
        };
        await UnsentStore.open(${JSON.stringify(dir)}, ${JSON.stringify(parent)});`;
      const killed = await new Deno.Command(Deno.execPath(), { args: ["eval", code] }).output();
      assert.equal(killed.signal, "SIGKILL", `after ${renames}: ${killed.code}`);
      const items = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith("json"));
      assert.equal(items.filter((n) => !n.includes(owner)).length, renames);
      // Before: the first ones it renamed, numbered after those it had not reached, came last.
      const next = await UnsentStore.open(dir, parent);
      next.store.close();
      assert.deepEqual(next.items.map((i) => i.id), ids, `killed after ${renames} renames`);
      assert.deepEqual([next.unreadable, next.overLimit, next.unopened], [[], [], []]);
    });
  }
});

Deno.test("UnsentStore.takeUp() takes up the items of a chat that quit while this one runs, never another running chat's, and removes a lock file left with no items", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const parent = join(home, "mailbox");
    const a = (await UnsentStore.open(dir, parent)).store;
    const b = (await UnsentStore.open(dir, parent)).store;
    const c = (await UnsentStore.open(dir, parent)).store;
    await a.keep(item("from-a", { payload: bytes(3) }));
    await b.keep(item("from-b", { payload: bytes(3) }));
    await c.keep(item("from-c", { payload: bytes(3) }));
    await c.drop("from-c");
    a.close(); // a quits
    const taken = await b.takeUp();
    assert.deepEqual(taken.items.map((i) => i.id), ["from-a"]);
    assert.equal(b.size, 2);
    assert.deepEqual((await c.takeUp()).items, []);
    // A lock file of a chat killed with no items left: removed by the next take-up.
    Deno.writeTextFileSync(join(dir, "0123456789abcdef.lock"), "");
    await c.takeUp();
    assert.throws(() => Deno.lstatSync(join(dir, "0123456789abcdef.lock")), Deno.errors.NotFound);
    // b's: c holds no item, and no lock.
    assert.equal([...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".lock")).length, 1);
    b.close();
    c.close();
    const next = await UnsentStore.open(dir, parent);
    next.store.close();
    assert.deepEqual(next.items.map((i) => i.id), ["from-b", "from-a"]);
  });
});

Deno.test("UnsentStore: two starts at once take up the items of a chat that is gone once, each item by one of them", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    const parent = join(home, "mailbox");
    for (const quit of ["closed", "killed"]) {
      const { store } = await UnsentStore.open(dir, parent);
      for (let i = 0; i < 20; i++) await store.keep(item(`${quit}${i}`, { payload: bytes(2) }));
      store.close(); // its lock file removed
      if (quit === "killed") {
        // Killed instead: its lock file left, held by nobody.
        const owner = [...Deno.readDirSync(dir)][0].name.split(".")[1];
        Deno.writeTextFileSync(join(dir, `${owner}.lock`), "");
      }
      const [x, y] = await Promise.all([
        UnsentStore.open(dir, parent),
        UnsentStore.open(dir, parent),
      ]);
      const ids = [...x.items, ...y.items].map((i) => i.id);
      assert.equal(ids.length, 20, quit);
      assert.equal(new Set(ids).size, 20, quit);
      assert.deepEqual([x.unopened, y.unopened, x.unreadable, y.unreadable], [[], [], [], []]);
      x.store.close();
      y.store.close();
      const next = await UnsentStore.open(dir, parent);
      assert.equal(next.items.length, 20, quit);
      for (const i of next.items) await next.store.drop(i.id);
      next.store.close();
    }
  });
});

Deno.test("UnsentStore takes up the files of the layout before (one flock each) that no chat of that version holds, in order, and leaves the one it holds", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "mailbox", "unsent");
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    // As the version before writes them: one 0600 file per item, named by its number alone.
    for (const n of [1, 2, 3]) {
      Deno.writeTextFileSync(
        join(dir, `000000000${n}.json`),
        JSON.stringify({
          v: 1,
          to: "bob",
          kind: "message",
          id: `old${n}`,
          at: "2026-01-02T03:04:05.000Z",
          payload: "aGk=",
          note: { text: "hi" },
        }) + "\n",
        { mode: 0o600 },
      );
    }
    // A chat of that version still runs, holding the second with its flock.
    const old = await Deno.open(join(dir, "0000000002.json"));
    try {
      assert.ok(await old.tryLock(true));
      const { store, items } = await UnsentStore.open(dir, join(home, "mailbox"));
      assert.deepEqual(items.map((i) => [i.id, i.note]), [["old1", { text: "hi" }], [
        "old3",
        { text: "hi" },
      ]]);
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /^\d{10}\.json$/.test(n)),
        ["0000000002.json"],
      );
      await store.keep(item("new", { payload: bytes(2) })); // after them
      old.close(); // that chat quits
      assert.deepEqual((await store.takeUp()).items.map((i) => i.id), ["old2"]);
      store.close();
      const next = await UnsentStore.open(dir, join(home, "mailbox"));
      next.store.close();
      assert.deepEqual(next.items.map((i) => i.id), ["old1", "old3", "new", "old2"]);
    } finally {
      try {
        old.close();
      } catch { /* closed */ }
    }
  });
});
