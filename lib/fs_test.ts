import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ensurePrivateDir,
  ensurePrivateDirSync,
  exists,
  existsSync,
  isAtomicTemp,
  othersMayRename,
  placeNew,
  readUpTo,
  readUpToSync,
  removeStaleTemps,
  withTempDir,
  writeFileAtomic,
  writeFileAtomicSync,
} from "./fs.ts";

async function withScratch(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-fs-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) out.push(entry.name);
  return out.sort();
}

function mode(info: Deno.FileInfo): number {
  return (info.mode ?? 0) & 0o777;
}

Deno.test("writeFileAtomic() writes text with the requested mode and no temp file left", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "secret.txt");
    await writeFileAtomic(path, "hello\n", { mode: 0o600 });
    assert.equal(await Deno.readTextFile(path), "hello\n");
    assert.equal(mode(await Deno.stat(path)), 0o600);
    assert.deepEqual(await names(dir), ["secret.txt"]);
  });
});

Deno.test("writeFileAtomic() writes bytes with mode 0644 by default", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "data.bin");
    const data = new Uint8Array(200_000).map((_, i) => i & 0xff);
    await writeFileAtomic(path, data);
    assert.deepEqual(await Deno.readFile(path), data);
    // 0644 less whatever the umask takes away.
    const m = mode(await Deno.stat(path));
    assert.equal(m & ~0o644, 0, m.toString(8));
    assert.equal(m & 0o600, 0o600, m.toString(8));
  });
});

Deno.test("writeFileAtomic() replaces an existing file, taking the new mode", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "index.txt");
    await Deno.writeTextFile(path, "old contents that are longer\n", { mode: 0o644 });
    await writeFileAtomic(path, "new\n", { mode: 0o600 });
    assert.equal(await Deno.readTextFile(path), "new\n");
    assert.equal(mode(await Deno.stat(path)), 0o600);
    assert.deepEqual(await names(dir), ["index.txt"]);
  });
});

Deno.test("writeFileAtomic() replaces a file by rename, so an open reader keeps the old contents", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "index.txt");
    await Deno.writeTextFile(path, "old\n");
    const reader = await Deno.open(path);
    try {
      await writeFileAtomic(path, "new\n");
      const buffer = new Uint8Array(16);
      const n = await reader.read(buffer);
      assert.equal(new TextDecoder().decode(buffer.subarray(0, n ?? 0)), "old\n");
    } finally {
      reader.close();
    }
    assert.equal(await Deno.readTextFile(path), "new\n");
  });
});

Deno.test("writeFileAtomic() with createNew writes a file that does not exist yet", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "key.pem");
    await writeFileAtomic(path, "key\n", { mode: 0o600, createNew: true });
    assert.equal(await Deno.readTextFile(path), "key\n");
    assert.equal(mode(await Deno.stat(path)), 0o600);
    assert.deepEqual(await names(dir), ["key.pem"]);
  });
});

Deno.test("writeFileAtomic() with createNew refuses an existing file and leaves it alone", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "key.pem");
    await Deno.writeTextFile(path, "precious\n");
    await assert.rejects(
      () => writeFileAtomic(path, "clobbered\n", { createNew: true }),
      Deno.errors.AlreadyExists,
    );
    assert.equal(await Deno.readTextFile(path), "precious\n");
    assert.deepEqual(await names(dir), ["key.pem"]);
  });
});

Deno.test("writeFileAtomic() fails in a missing folder without leaving anything", async () => {
  await withScratch(async (dir) => {
    await assert.rejects(
      () => writeFileAtomic(join(dir, "missing", "x"), "x"),
      Deno.errors.NotFound,
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("writeFileAtomicSync() without fsync replaces a file by rename, so an open reader keeps the old contents", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "checkpoint");
    await Deno.writeTextFile(path, "old contents that are longer\n");
    const reader = await Deno.open(path);
    try {
      writeFileAtomicSync(path, "new\n", { mode: 0o640, durable: false });
      const buffer = new Uint8Array(64);
      const n = await reader.read(buffer);
      assert.equal(
        new TextDecoder().decode(buffer.subarray(0, n ?? 0)),
        "old contents that are longer\n",
      );
    } finally {
      reader.close();
    }
    assert.equal(await Deno.readTextFile(path), "new\n");
    assert.equal(mode(await Deno.stat(path)), 0o640);
    assert.deepEqual(await names(dir), ["checkpoint"]);
  });
});

Deno.test("writeFileAtomicSync() that cannot replace its target throws and leaves no temp file", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "checkpoint");
    await Deno.mkdir(join(path, "in-the-way"), { recursive: true });
    assert.throws(() => writeFileAtomicSync(path, "new\n"), Error);
    assert.deepEqual(await names(dir), ["checkpoint"]);
    assert.ok((await Deno.stat(path)).isDirectory);
  });
});

Deno.test("writeFileAtomicSync() replaces a file whole, with its mode, and leaves no temp file", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "ROOMID.json");
    await Deno.writeTextFile(path, "old contents that are longer\n");
    writeFileAtomicSync(path, "new\n", { mode: 0o600, syncDir: true });
    assert.equal(await Deno.readTextFile(path), "new\n");
    assert.equal(mode(await Deno.stat(path)), 0o600);
    writeFileAtomicSync(path, new TextEncoder().encode("bytes\n"), { durable: false });
    assert.equal(await Deno.readTextFile(path), "bytes\n");
    assert.deepEqual(await names(dir), ["ROOMID.json"]);
  });
});

Deno.test("writeFileAtomicSync() with createNew refuses an existing file and leaves it and no temp file", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "pin");
    writeFileAtomicSync(path, "first\n", { createNew: true });
    assert.throws(
      () => writeFileAtomicSync(path, "second\n", { createNew: true }),
      Deno.errors.AlreadyExists,
    );
    assert.equal(await Deno.readTextFile(path), "first\n");
    assert.deepEqual(await names(dir), ["pin"]);
  });
});

Deno.test("writeFileAtomicSync() fails in a missing folder without leaving anything", async () => {
  await withScratch(async (dir) => {
    assert.throws(() => writeFileAtomicSync(join(dir, "gone", "f"), "x"), Deno.errors.NotFound);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("ensurePrivateDirSync() creates nested folders with mode 0700 and tightens an existing one", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "a", "b");
    assert.equal(existsSync(path), false);
    ensurePrivateDirSync(path, { durable: true });
    assert.equal(mode(await Deno.stat(path)), 0o700);
    await Deno.chmod(path, 0o755);
    ensurePrivateDirSync(path);
    assert.equal(mode(await Deno.stat(path)), 0o700);
    assert.equal(existsSync(path), true);
  });
});

Deno.test("ensurePrivateDir() creates nested folders with mode 0700", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "a", "b");
    await ensurePrivateDir(path);
    assert.equal(mode(await Deno.stat(path)), 0o700);
  });
});

Deno.test("ensurePrivateDir() tightens an existing folder to 0700", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "open");
    await Deno.mkdir(path, { mode: 0o755 });
    await Deno.chmod(path, 0o755);
    await ensurePrivateDir(path);
    assert.equal(mode(await Deno.stat(path)), 0o700);
  });
});

Deno.test("withTempDir() gives a private folder inside the parent and removes it afterwards", async () => {
  await withScratch(async (parent) => {
    let seen = "";
    const result = await withTempDir(parent, async (dir) => {
      seen = dir;
      assert.equal(join(dir, ".."), parent);
      assert.equal(mode(await Deno.stat(dir)), 0o700);
      await Deno.mkdir(join(dir, "sub"));
      await Deno.writeTextFile(join(dir, "sub", "file"), "x");
      return 42;
    });
    assert.equal(result, 42);
    assert.equal(await exists(seen), false);
    assert.deepEqual(await names(parent), []);
  });
});

Deno.test("withTempDir() removes the folder when the function throws, and rethrows", async () => {
  await withScratch(async (parent) => {
    let seen = "";
    await assert.rejects(
      () =>
        withTempDir(parent, async (dir) => {
          seen = dir;
          await Deno.writeTextFile(join(dir, "file"), "x");
          throw new Error("boom");
        }),
      /^Error: boom$/,
    );
    assert.notEqual(seen, "");
    assert.equal(await exists(seen), false);
    assert.deepEqual(await names(parent), []);
  });
});

Deno.test("exists() tells files, folders and dangling symlinks from missing paths", async () => {
  await withScratch(async (dir) => {
    await Deno.writeTextFile(join(dir, "file"), "x");
    await Deno.symlink(join(dir, "nowhere"), join(dir, "link"));
    assert.equal(await exists(join(dir, "file")), true);
    assert.equal(await exists(dir), true);
    assert.equal(await exists(join(dir, "link")), true);
    assert.equal(await exists(join(dir, "nowhere")), false);
  });
});

Deno.test("readUpTo() and readUpToSync() read from the position up to the length asked, or to the end", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, "data");
    await Deno.writeTextFile(path, "0123456789");
    {
      using file = await Deno.open(path);
      await file.seek(2, Deno.SeekMode.Start);
      assert.equal(new TextDecoder().decode(await readUpTo(file, 5)), "23456");
      assert.equal(new TextDecoder().decode(await readUpTo(file, 100)), "789");
      assert.equal((await readUpTo(file, 4)).length, 0);
    }
    {
      using file = Deno.openSync(path);
      file.seekSync(7, Deno.SeekMode.Start);
      assert.equal(new TextDecoder().decode(readUpToSync(file, 100)), "789");
      assert.equal(readUpToSync(file, 4).length, 0);
    }
  });
});

Deno.test("othersMayRename() names another owner, and writers besides the owner unless the group or a sticky folder is allowed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const uid = (await Deno.stat(dir)).uid;
    const at = async (mode: number) => {
      await Deno.chmod(dir, mode);
      return await Deno.stat(dir);
    };
    const strict = { group: false, sticky: false };
    const lenient = { group: true, sticky: true };
    assert.equal(othersMayRename(await at(0o700), uid, strict), undefined);
    assert.equal(othersMayRename(await at(0o700), (uid ?? 0) + 1, lenient), "owner");
    assert.equal(othersMayRename(await at(0o770), uid, strict), "others");
    assert.equal(othersMayRename(await at(0o770), uid, lenient), undefined);
    assert.equal(othersMayRename(await at(0o777), uid, lenient), "others");
    assert.equal(othersMayRename(await at(0o1777), uid, lenient), undefined);
    assert.equal(othersMayRename(await at(0o1777), uid, strict), "others");
  } finally {
    await Deno.remove(dir);
  }
});

Deno.test("placeNew() that linked the file but cannot remove its old name says so, and does not take its own link for a name already taken", async () => {
  await withScratch(async (dir) => {
    const from = join(dir, "in", "part");
    await Deno.mkdir(join(dir, "in"));
    await Deno.writeTextFile(from, "data");
    // An append-only folder: links may be made from it, names in it not removed (even by root).
    const chattr = (flag: string) =>
      new Deno.Command("chattr", { args: [flag, join(dir, "in")], stderr: "null" }).output()
        .then((o) => o.success, () => false);
    if (!await chattr("+a")) return; // a file system without it: nothing to show here
    try {
      await assert.rejects(() => placeNew(from, join(dir, "final")), Deno.errors.PermissionDenied);
      assert.deepEqual(await names(dir), ["final", "in"]);
    } finally {
      await chattr("-a");
    }
  });
});

Deno.test("isAtomicTemp() takes the names writeFileAtomic gives its temporary files, and no other", () => {
  assert.ok(isAtomicTemp(`.${crypto.randomUUID()}.tmp`));
  assert.ok(!isAtomicTemp(`${crypto.randomUUID()}.tmp`));
  assert.ok(!isAtomicTemp(".notes.tmp"));
  assert.ok(!isAtomicTemp(`.${crypto.randomUUID().toUpperCase()}.tmp`));
  assert.ok(!isAtomicTemp(`.${crypto.randomUUID()}.tmp.txt`));
});

Deno.test("removeStaleTemps() removes the temporary files writes killed before their rename left, and only those older than the given time", async () => {
  await withScratch(async (dir) => {
    const old = new Date(Date.now() - 3_600_000);
    const made = async (name: string, at?: Date) => {
      await Deno.writeTextFile(join(dir, name), "x");
      if (at) await Deno.utime(join(dir, name), at, at);
    };
    const stale = `.${crypto.randomUUID()}.tmp`;
    const fresh = `.${crypto.randomUUID()}.tmp`; // another process may be writing it now
    await made(stale, old);
    await made(fresh);
    await made("notes.tmp", old); // a file of someone's that merely ends in .tmp
    await made("state.json", old);
    await Deno.mkdir(join(dir, `.${crypto.randomUUID()}.tmp`)); // no file: not one it makes
    await Deno.symlink(join(dir, "state.json"), join(dir, `.${crypto.randomUUID()}.tmp`));
    const removed = await removeStaleTemps(dir, { before: Date.now() - 60_000 });
    assert.equal(removed, 1);
    const left = await names(dir);
    assert.ok(!left.includes(stale));
    assert.ok(left.includes(fresh));
    assert.ok(left.includes("notes.tmp") && left.includes("state.json"));
    assert.equal(left.length, 5);
    assert.equal(await removeStaleTemps(join(dir, "missing")), 0, "a missing folder holds none");
  });
});

Deno.test("removeStaleTemps() by default leaves a temporary file made since this process started", async () => {
  await withScratch(async (dir) => {
    const name = `.${crypto.randomUUID()}.tmp`;
    await Deno.writeTextFile(join(dir, name), "x");
    assert.equal(await removeStaleTemps(dir), 0);
    const before = new Date(performance.timeOrigin - 120_000);
    await Deno.utime(join(dir, name), before, before);
    assert.equal(await removeStaleTemps(dir), 1);
    assert.deepEqual(await names(dir), []);
  });
});
