import assert from "node:assert/strict";
import { join } from "node:path";
import { CaPaths } from "./home.ts";
import {
  changeReason,
  formatKeyIds,
  IndexCache,
  locked,
  parseIndex,
  parseKeyIds,
  readIndex,
  signingFolder,
  transaction,
} from "./store.ts";
import { stracePath, traceFileCalls } from "../tests/_syscalls.ts";

const INDEX = "V\t261202204302Z\t\t35BE\tunknown\t/CN=alice\n";

/** A CA folder with openssl's database files but no keys: enough for the store. */
async function withFakeCa(fn: (paths: CaPaths) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix: "e2e-chat-store-test-" });
  try {
    const paths = new CaPaths(home);
    await Deno.mkdir(paths.certs, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(paths.index, INDEX, { mode: 0o600 });
    await Deno.writeTextFile(join(paths.dir, "index.txt.attr"), "unique_subject = no\n");
    await Deno.writeTextFile(join(paths.dir, "crlnumber"), "01\n", { mode: 0o600 });
    await fn(paths);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) out.push(entry.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

Deno.test("parseIndex() reads a valid entry with a UTCTime expiry", () => {
  assert.deepEqual(parseIndex(INDEX), [{
    status: "V",
    expires: new Date("2026-12-02T20:43:02Z"),
    revokedAt: undefined,
    reason: undefined,
    serial: "35BE",
    name: "alice",
  }]);
});

Deno.test("parseIndex() reads the reasons openssl ca -crl_compromise and -crl_CA_compromise write (keyTime, CAkeyTime) as keyCompromise and CACompromise", () => {
  const entries = parseIndex(
    "R\t261202204302Z\t261201000000Z,keyTime,20260101000000Z\t35BE\tunknown\t/CN=alice\n" +
      "R\t261202204302Z\t261201000000Z,CAkeyTime,20260101000000Z\t35BF\tunknown\t/CN=bob\n" +
      "R\t261202204302Z\t261201000000Z\t35C0\tunknown\t/CN=carol\n",
  );
  assert.deepEqual(entries.map((e) => e.reason), ["keyCompromise", "CACompromise", "unspecified"]);
});

Deno.test("changeReason() changes the reason of one revoked entry, its revocation date kept, and refuses a serial that is not a revoked one", () => {
  const text = "R\t261202204302Z\t261201000000Z,superseded\t35BE\tunknown\t/CN=alice\n" + INDEX;
  const changed = changeReason(text, "35be", "keyCompromise");
  assert.equal(
    changed,
    "R\t261202204302Z\t261201000000Z,keyCompromise\t35BE\tunknown\t/CN=alice\n" + INDEX,
  );
  assert.deepEqual(parseIndex(changed)[0].revokedAt, parseIndex(text)[0].revokedAt);
  assert.throws(() => changeReason(INDEX, "35BE", "keyCompromise"), RangeError);
  assert.throws(() => changeReason(text, "AA", "keyCompromise"), RangeError);
});

Deno.test("parseIndex() reads GeneralizedTime, used from 2050 on", () => {
  const [entry] = parseIndex("V\t20510304050607Z\t\tAB\tunknown\t/CN=alice\n");
  assert.equal(entry.expires.toISOString(), "2051-03-04T05:06:07.000Z");
});

Deno.test("parseIndex() maps two-digit years 00-49 to 20xx and 50-99 to 19xx", () => {
  const [a, b] = parseIndex(
    "V\t491231235959Z\t\tA1\tunknown\t/CN=a\nV\t500101000000Z\t\tB2\tunknown\t/CN=b\n",
  );
  assert.equal(a.expires.toISOString(), "2049-12-31T23:59:59.000Z");
  assert.equal(b.expires.toISOString(), "1950-01-01T00:00:00.000Z");
});

Deno.test("parseIndex() reads a revoked entry with its date and reason", () => {
  const [entry] = parseIndex(
    "R\t261202204302Z\t251125204302Z,keyCompromise\t0A1B\tunknown\t/CN=bob\n",
  );
  assert.equal(entry.status, "R");
  assert.equal(entry.revokedAt?.toISOString(), "2025-11-25T20:43:02.000Z");
  assert.equal(entry.reason, "keyCompromise");
  assert.equal(entry.serial, "0A1B");
  assert.equal(entry.name, "bob");
});

Deno.test("parseIndex() reads a revocation without a reason as unspecified", () => {
  const [entry] = parseIndex("R\t261202204302Z\t251125204302Z\tAB\tunknown\t/CN=bob\n");
  assert.equal(entry.reason, "unspecified");
  assert.equal(entry.revokedAt?.toISOString(), "2025-11-25T20:43:02.000Z");
});

Deno.test("parseIndex() reads expired entries and uppercases serials", () => {
  const [entry] = parseIndex("E\t240101000000Z\t\tabcdef\tunknown\t/CN=carol\n");
  assert.equal(entry.status, "E");
  assert.equal(entry.serial, "ABCDEF");
  assert.equal(entry.revokedAt, undefined);
});

Deno.test("parseIndex() keeps entries whose subject is not a single CN, with an empty name", () => {
  const entries = parseIndex(
    "V\t261202204302Z\t\tA1\tunknown\t/O=Org/CN=alice\nV\t261202204302Z\t\tA2\tunknown\t/CN=a/CN=b\n",
  );
  assert.deepEqual(entries.map((e) => [e.serial, e.name]), [["A1", ""], ["A2", ""]]);
});

Deno.test("parseIndex() skips empty lines and unknown statuses, keeping order", () => {
  const text = "\nX\t261202204302Z\t\tFF\tunknown\t/CN=x\n" + INDEX +
    "R\t261202204302Z\t251125204302Z,superseded\t35BF\tunknown\t/CN=alice\n\n";
  assert.deepEqual(parseIndex(text).map((e) => e.serial), ["35BE", "35BF"]);
  assert.deepEqual(parseIndex(""), []);
});

Deno.test("parseIndex() gives an invalid date for a malformed time", () => {
  const [entry] = parseIndex("V\tnot-a-time\t\tAB\tunknown\t/CN=alice\n");
  assert.ok(Number.isNaN(entry.expires.getTime()));
});

Deno.test("readIndex() parses the committed index.txt", async () => {
  await withFakeCa(async (paths) => {
    assert.deepEqual((await readIndex(paths)).map((e) => e.name), ["alice"]);
  });
});

Deno.test("transaction() gives the function a private copy of the database", async () => {
  await withFakeCa(async (paths) => {
    await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      assert.equal(join(work, ".."), paths.tmp);
      assert.match(work, /\/tx-[^/]+$/);
      assert.equal((await Deno.stat(paths.tmp)).mode! & 0o777, 0o700);
      assert.deepEqual(await names(work), ["certs", "crlnumber", "index.txt", "index.txt.attr"]);
      assert.equal(await Deno.readTextFile(join(work, "index.txt")), INDEX);
      assert.equal(await Deno.readTextFile(join(work, "crlnumber")), "01\n");
      assert.deepEqual(await names(join(work, "certs")), []);
      // Changing the copy changes nothing committed until the function returns.
      await Deno.writeTextFile(join(work, "index.txt"), "changed\n");
      assert.equal(await Deno.readTextFile(paths.index), INDEX);
    });
  });
});

Deno.test("transaction() commits certificates, index, crlnumber and CRL when the function succeeds", async () => {
  await withFakeCa(async (paths) => {
    const next = INDEX + "V\t261202204302Z\t\t35BF\tunknown\t/CN=bob\n";
    const result = await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      await Deno.writeTextFile(join(work, "certs", "35BF.pem"), "certificate\n");
      await Deno.writeTextFile(join(work, "index.txt"), next);
      await Deno.writeTextFile(join(work, "index.txt.old"), INDEX);
      await Deno.writeTextFile(join(work, "crlnumber"), "02\n");
      await Deno.writeTextFile(join(work, "crl.pem"), "crl\n");
      return "done";
    });
    assert.equal(result, "done");
    assert.equal(await Deno.readTextFile(paths.index), next);
    assert.equal((await Deno.stat(paths.index)).mode! & 0o777, 0o600);
    assert.equal(await Deno.readTextFile(join(paths.dir, "crlnumber")), "02\n");
    assert.equal(await Deno.readTextFile(paths.certFile("35BF")), "certificate\n");
    assert.equal(await Deno.readTextFile(paths.crl), "crl\n");
    assert.deepEqual(await names(paths.dir), [
      "certs",
      "crl.pem",
      "crlnumber",
      "index.gen",
      "index.txt",
      "index.txt.attr",
      "tmp",
    ]);
    assert.deepEqual(await names(paths.tmp), [], "the work folder is removed");
  });
});

Deno.test("transaction() leaves index.txt untouched and removes its work folder when the function throws", async () => {
  await withFakeCa(async (paths) => {
    const before = await Deno.stat(paths.index);
    await assert.rejects(
      () =>
        transaction(paths, async (tx) => {
          const work = await tx.fullCopy();
          await Deno.writeTextFile(join(work, "certs", "35BF.pem"), "certificate\n");
          await Deno.writeTextFile(join(work, "index.txt"), "half-written\n");
          await Deno.writeTextFile(join(work, "crlnumber"), "02\n");
          await Deno.writeTextFile(join(work, "crl.pem"), "crl\n");
          throw new Error("openssl failed");
        }),
      /^Error: openssl failed$/,
    );
    assert.equal(await Deno.readTextFile(paths.index), INDEX);
    assert.equal((await Deno.stat(paths.index)).ino, before.ino);
    assert.equal(await Deno.readTextFile(join(paths.dir, "crlnumber")), "01\n");
    assert.deepEqual(await names(paths.certs), []);
    assert.deepEqual(await names(paths.tmp), []);
    assert.equal(await names(paths.dir).then((n) => n.includes("crl.pem")), false);
  });
});

Deno.test("transaction() removes work folders and old temp files left by a killed process", async () => {
  await withFakeCa(async (paths) => {
    await Deno.mkdir(join(paths.tmp, "tx-killed", "certs"), { recursive: true });
    await Deno.writeTextFile(join(paths.tmp, "tx-killed", "index.txt"), "stale\n");
    const old = join(paths.dir, `.${crypto.randomUUID()}.tmp`);
    const fresh = join(paths.dir, `.${crypto.randomUUID()}.tmp`);
    await Deno.writeTextFile(old, "half-written\n");
    await Deno.utime(old, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
    await Deno.writeTextFile(fresh, "being written by another writer\n");
    await transaction(paths, () => Promise.resolve());
    assert.deepEqual(await names(paths.tmp), []);
    const left = await names(paths.dir);
    assert.equal(left.includes(old.split("/").at(-1)!), false, "the old temp file is removed");
    assert.equal(left.includes(fresh.split("/").at(-1)!), true, "a recent temp file is kept");
  });
});

Deno.test("transaction() does not rewrite files the function left unchanged", async () => {
  await withFakeCa(async (paths) => {
    const before = await Deno.stat(paths.index);
    await transaction(paths, () => Promise.resolve());
    assert.equal((await Deno.stat(paths.index)).ino, before.ino);
    assert.deepEqual(await names(paths.tmp), []);
  });
});

Deno.test("transaction() never replaces a certificate file that is already committed", async () => {
  await withFakeCa(async (paths) => {
    await Deno.writeTextFile(paths.certFile("35BE"), "original\n");
    await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      await Deno.writeTextFile(join(work, "certs", "35BE.pem"), "impostor\n");
    });
    assert.equal(await Deno.readTextFile(paths.certFile("35BE")), "original\n");
  });
});

Deno.test("transaction() runs one at a time, so concurrent changes are never lost", async () => {
  await withFakeCa(async (paths) => {
    const add = (serial: string) =>
      transaction(paths, async (tx) => {
        const work = await tx.fullCopy();
        const index = await Deno.readTextFile(join(work, "index.txt"));
        await new Promise((resolve) => setTimeout(resolve, 5));
        await Deno.writeTextFile(
          join(work, "index.txt"),
          index + `V\t261202204302Z\t\t${serial}\tunknown\t/CN=u${serial}\n`,
        );
      });
    await Promise.all(["A1", "A2", "A3", "A4"].map(add));
    assert.deepEqual((await readIndex(paths)).map((e) => e.serial), [
      "35BE",
      "A1",
      "A2",
      "A3",
      "A4",
    ]);
    assert.deepEqual(await names(paths.tmp), []);
  });
});

Deno.test("locked() runs the function under the CA lock and passes its result on", async () => {
  await withFakeCa(async (paths) => {
    let inside = 0;
    let most = 0;
    const run = () =>
      locked(paths, async () => {
        most = Math.max(most, ++inside);
        await new Promise((resolve) => setTimeout(resolve, 5));
        inside--;
        return "ok";
      });
    assert.deepEqual(await Promise.all([run(), run(), run()]), ["ok", "ok", "ok"]);
    assert.equal(most, 1);
    assert.equal((await Deno.stat(paths.lock)).isFile, true);
  });
});

const BOB = "V\t261202204302Z\t\t4A01\tunknown\t/CN=bob\n";

Deno.test("transaction() appends a signing folder's index lines without copying the index", async () => {
  await withFakeCa(async (paths) => {
    const before = (await Deno.stat(paths.index)).ino;
    await transaction(paths, async (tx) => {
      const folder = await tx.signFolder();
      assert.equal(await Deno.readTextFile(join(folder.dir, "index.txt")), "", "an empty index");
      await Deno.writeTextFile(join(folder.dir, "index.txt"), BOB);
      await Deno.writeTextFile(join(folder.dir, "certs", "4A01.pem"), "bob\n");
      assert.deepEqual(await names(tx.dir), [folder.dir.split("/").pop()], "no full copy made");
    });
    assert.equal(await Deno.readTextFile(paths.index), INDEX + BOB);
    assert.equal((await Deno.stat(paths.index)).ino, before, "appended in place");
    assert.equal(await Deno.readTextFile(paths.certFile("4A01")), "bob\n");
  });
});

Deno.test("signingFolder() prepares a private folder outside the lock, and adopt() commits what was signed there", async () => {
  await withFakeCa(async (paths) => {
    const dir = await signingFolder(paths);
    assert.equal(await Deno.readTextFile(join(dir, "index.txt")), "", "an empty index");
    assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
    await Deno.writeTextFile(join(dir, "index.txt"), BOB);
    await Deno.writeTextFile(join(dir, "certs", "4A01.pem"), "bob\n");
    let work = "";
    await transaction(paths, (tx) => {
      tx.adopt(dir);
      work = tx.dir;
      return Promise.resolve();
    });
    assert.equal(await Deno.readTextFile(paths.index), INDEX + BOB);
    assert.equal(await Deno.readTextFile(paths.certFile("4A01")), "bob\n");
    assert.deepEqual(
      await names(paths.tmp),
      ["signing"],
      "a transaction that only adopts makes no folder",
    );
    assert.ok(!work.startsWith(dir));
  });
});

Deno.test("transaction() runs beforeIndex() before the index changes, and commits nothing when it throws", async () => {
  await withFakeCa(async (paths) => {
    const seen: string[] = [];
    await transaction(paths, async (tx) => {
      const folder = await tx.signFolder();
      await Deno.writeTextFile(join(folder.dir, "index.txt"), BOB);
      tx.beforeIndex(async () => void seen.push(await Deno.readTextFile(paths.index)));
    });
    assert.deepEqual(seen, [INDEX]);
    const failure = new Error("the journal's disk is gone");
    await assert.rejects(
      transaction(paths, async (tx) => {
        const folder = await tx.signFolder();
        await Deno.writeTextFile(join(folder.dir, "index.txt"), BOB.replace(/4A01/, "4A02"));
        await Deno.writeTextFile(join(folder.dir, "certs", "4A02.pem"), "bob2\n");
        tx.beforeIndex(() => Promise.reject(failure));
      }),
      (e) => e === failure,
    );
    assert.equal(await Deno.readTextFile(paths.index), INDEX + BOB);
    assert.ok(!(await names(paths.certs)).includes("4A02.pem"));
  });
});

Deno.test("transaction() removes signing folders a killed process left, once they are old, and keeps young ones", async () => {
  await withFakeCa(async (paths) => {
    const old = await signingFolder(paths);
    const young = await signingFolder(paths);
    const hourAgo = new Date(Date.now() - 3_600_000);
    await Deno.utime(old, hourAgo, hourAgo);
    await transaction(paths, () => Promise.resolve());
    assert.deepEqual(await names(paths.signing), [young.split("/").pop()]);
  });
});

Deno.test("transaction() leaves out a discarded signing", async () => {
  await withFakeCa(async (paths) => {
    await transaction(paths, async (tx) => {
      const folder = await tx.signFolder();
      await Deno.writeTextFile(join(folder.dir, "index.txt"), BOB);
      await Deno.writeTextFile(join(folder.dir, "certs", "4A01.pem"), "bob\n");
      folder.discard();
    });
    assert.equal(await Deno.readTextFile(paths.index), INDEX);
    assert.deepEqual(await names(paths.certs), []);
  });
});

Deno.test("transaction() adds signings to a full copy and commits both at once", async () => {
  await withFakeCa(async (paths) => {
    await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      await Deno.writeTextFile(join(work, "index.txt"), INDEX.replace("V\t", "R\t"));
      const folder = await tx.signFolder();
      await Deno.writeTextFile(join(folder.dir, "index.txt"), BOB);
    });
    assert.equal(await Deno.readTextFile(paths.index), INDEX.replace("V\t", "R\t") + BOB);
  });
});

Deno.test("transaction() cuts off a partial last line that a killed append left", async () => {
  await withFakeCa(async (paths) => {
    await Deno.writeTextFile(paths.index, "V\t2612022043", { append: true });
    assert.deepEqual(parseIndex(await Deno.readTextFile(paths.index)).length, 1, "readers skip it");
    await transaction(paths, () => Promise.resolve());
    assert.equal(await Deno.readTextFile(paths.index), INDEX);
  });
});

Deno.test("IndexCache parses only what was appended, and rereads a replaced index", async () => {
  await withFakeCa(async (paths) => {
    const cache = new IndexCache(paths);
    assert.deepEqual((await cache.entries()).map((e) => e.name), ["alice"]);
    await Deno.writeTextFile(paths.index, BOB, { append: true });
    await Deno.writeTextFile(paths.index, "V\t26120220", { append: true }); // still being written
    assert.deepEqual((await cache.entries()).map((e) => e.name), ["alice", "bob"]);
    await Deno.writeTextFile(paths.index, "4302Z\t\t4A02\tunknown\t/CN=carol\n", { append: true });
    assert.deepEqual((await cache.entries()).map((e) => e.name), ["alice", "bob", "carol"]);
    const replacement = join(paths.dir, "index.new");
    await Deno.writeTextFile(replacement, BOB);
    await Deno.rename(replacement, paths.index);
    assert.deepEqual((await cache.entries()).map((e) => e.name), ["bob"]);
  });
});

Deno.test("IndexCache rereads an index replaced under the same inode number when the generation changed", async () => {
  await withFakeCa(async (paths) => {
    const cache = new IndexCache(paths);
    assert.deepEqual((await cache.entries()).map((e) => e.status), ["V"]);
    // What a reused inode looks like to stat: same number, larger size. Only index.gen tells.
    await Deno.writeTextFile(
      paths.index,
      INDEX.replace("V\t", "R\t").replace("\t\t", "\t261126000000Z\t") + BOB,
    );
    await Deno.writeTextFile(paths.generation, "next\n");
    assert.deepEqual((await cache.entries()).map((e) => `${e.name}:${e.status}`), [
      "alice:R",
      "bob:V",
    ]);
  });
});

Deno.test("a transaction that replaces the index changes its generation", async () => {
  await withFakeCa(async (paths) => {
    await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      await Deno.writeTextFile(join(work, "index.txt"), INDEX.replace("V\t", "R\t"));
    });
    const first = await Deno.readTextFile(paths.generation);
    await transaction(paths, async (tx) => {
      const work = await tx.fullCopy();
      await Deno.writeTextFile(join(work, "index.txt"), INDEX);
    });
    assert.notEqual(await Deno.readTextFile(paths.generation), first);
  });
});

// ---------------------------------------------------------------------------
// A full disk

/** Mounts a tmpfs of `size` on `dir`; false where this machine does not let us (not root, a sandbox). */
async function mountTmpfs(dir: string, size: string): Promise<boolean> {
  try {
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
      stdout: "null",
      stderr: "null",
    }).output();
    return mount.success;
  } catch {
    return false;
  }
}

async function unmount(dir: string): Promise<void> {
  const umount = await new Deno.Command("umount", { args: [dir], stderr: "null" }).output();
  if (!umount.success) await new Deno.Command("umount", { args: ["-l", dir] }).output();
}

const tmpfsProbe = await Deno.makeTempDir({ prefix: "e2e-chat-store-tmpfs-probe-" });
const canMount = await mountTmpfs(tmpfsProbe, "64k");
if (canMount) await unmount(tmpfsProbe);
await Deno.remove(tmpfsProbe);

/** An index line of exactly `length` bytes (a certificate of name "p…p"). */
function padLine(serial: string, length: number): string {
  const line = `V\t261202204302Z\t\t${serial}\tunknown\t/CN=\n`;
  return line.replace("/CN=", "/CN=" + "p".repeat(length - line.length));
}

/** Fills the file system holding `path` until it has no free byte left. */
function fillDisk(path: string): void {
  using file = Deno.openSync(path, { write: true, create: true });
  const chunk = new Uint8Array(16 * 1024);
  try {
    while (true) file.writeSync(chunk);
  } catch (e) {
    assert.match(String(e), /No space left|os error 28/, "the filler stopped early");
  }
}

Deno.test({
  name:
    "transaction() that runs out of disk part-way through appending a group's lines leaves index.txt and certs/ as they were",
  ignore: !canMount,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-store-full-" });
    const mnt = join(dir, "mnt");
    await Deno.mkdir(mnt);
    let mounted = false;
    try {
      assert.ok(await mountTmpfs(mnt, "64k"), "mount a tmpfs");
      mounted = true;
      const paths = new CaPaths(join(mnt, "home"));
      await Deno.mkdir(paths.certs, { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(join(paths.dir, "index.txt.attr"), "unique_subject = no\n");
      await Deno.writeTextFile(join(paths.dir, "crlnumber"), "01\n", { mode: 0o600 });
      // An index whose last 4 KiB page has room for the group's first line and part of the
      // second: the append stops part-way when the disk is full (tmpfs allocates by page).
      let index = INDEX;
      const target = 4096 - (BOB.length + 8);
      for (let i = 0; target - index.length > 120; i++) {
        index += padLine((0x1000 + i).toString(16).toUpperCase(), 60);
      }
      index += padLine("0FFF", target - index.length);
      assert.equal(index.length, target);
      await Deno.writeTextFile(paths.index, index, { mode: 0o600 });
      const group = [BOB, BOB.replace("4A01", "4A02"), BOB.replace("4A01", "4A03")];
      const filler = join(mnt, "filler");
      await assert.rejects(
        transaction(paths, async (tx) => {
          for (const line of group) {
            const folder = await tx.signFolder();
            await Deno.writeTextFile(join(folder.dir, "index.txt"), line);
            const serial = line.split("\t")[3];
            await Deno.writeTextFile(join(folder.dir, "certs", `${serial}.pem`), "bob\n");
          }
          // The disk fills up just before the index is appended to.
          tx.beforeIndex(() => Promise.resolve(fillDisk(filler)));
        }),
        /No space left|os error 28/,
      );
      assert.equal(
        await Deno.readTextFile(paths.index),
        index,
        "no line of a failed commit stays in the index",
      );
      assert.deepEqual(await names(paths.certs), [], "its certificates are taken back");
      // With room again, the next commit appends its line once, after the old ones.
      await Deno.remove(filler);
      await transaction(paths, async (tx) => {
        const folder = await tx.signFolder();
        await Deno.writeTextFile(join(folder.dir, "index.txt"), group[0]);
        await Deno.writeTextFile(join(folder.dir, "certs", "4A01.pem"), "bob\n");
      });
      assert.equal(await Deno.readTextFile(paths.index), index + group[0]);
      assert.deepEqual(await names(paths.certs), ["4A01.pem"]);
    } finally {
      if (mounted) await unmount(mnt);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

// ---------------------------------------------------------------------------
// The index durable before the after-commit functions (the issuance log) read it

const strace = await stracePath();
const CI = Deno.env.get("CI") === "true";

/**
 * Runs `transactions` in a child process under strace, each a transaction whose after-commit
 * function renames `mark-N` (so the trace shows where it ran), and that appends the index
 * line given, or nothing for "". Returns its fsyncs and renames, paths relative to the CA folder.
 */
async function traceTransactions(paths: CaPaths, transactions: string[]): Promise<string[]> {
  const script = [
    `import { join } from "node:path";`,
    `import { CaPaths } from ${JSON.stringify(import.meta.resolve("./home.ts"))};`,
    `import { transaction } from ${JSON.stringify(import.meta.resolve("./store.ts"))};`,
    `const paths = new CaPaths(Deno.env.get("HOME_DIR"));`,
    `const lines = JSON.parse(Deno.env.get("LINES"));`,
    `for (const [i, line] of lines.entries()) {`,
    `  Deno.writeTextFileSync(join(paths.dir, "mark-" + i), "");`,
    `  await transaction(paths, async (tx) => {`,
    `    if (line) {`,
    `      const folder = await tx.signFolder();`,
    `      Deno.writeTextFileSync(join(folder.dir, "index.txt"), line);`,
    `      Deno.writeTextFileSync(join(folder.dir, "certs", line.split("\\t")[3] + ".pem"), "x\\n");`,
    `    }`,
    `    tx.afterCommit(async () => Deno.renameSync(join(paths.dir, "mark-" + i), join(paths.dir, "after-" + i)));`,
    `  });`,
    `}`,
  ].join("\n");
  const { code, stderr, calls } = await traceFileCalls(
    strace!,
    Deno.execPath(),
    ["eval", "--no-config", script],
    { env: { HOME_DIR: paths.home, LINES: JSON.stringify(transactions) } },
  );
  assert.equal(code, 0, stderr);
  const rel = (p: string) => p === paths.dir ? "ca" : p.replace(paths.dir + "/", "");
  return calls.filter((c) => c.ok && (c.call === "fsync" || c.call === "rename"))
    .map((c) => `${c.call === "fsync" ? "sync" : "rename"} ${c.paths.map(rel).join(" ")}`);
}

// The events from the after-commit function of transaction `from` (or the start) to that of `to`.
function between(events: string[], from: number, to: number): string[] {
  const at = (i: number) => events.findIndex((e) => e === `rename mark-${i} after-${i}`);
  assert.ok(at(to) >= 0, `transaction ${to} ran its after-commit function:\n${events.join("\n")}`);
  return events.slice(from < 0 ? 0 : at(from) + 1, at(to));
}

Deno.test({
  name:
    "transaction() makes index lines another process left unsynced durable before its after-commit functions run, even when it commits nothing",
  ignore: !strace && !CI,
  fn: async () => {
    assert.ok(strace, "CI=true and strace is not on PATH: this test cannot run");
    await withFakeCa(async (paths) => {
      // A process killed between its append's write and its fsync leaves a line that readers
      // see (the issuance log would take it up) but a power cut can take away.
      await Deno.writeTextFile(paths.index, BOB, { append: true });
      const events = await traceTransactions(paths, [""]);
      const before = between(events, -1, 0);
      assert.ok(before.includes("sync index.txt"), `index.txt first:\n${events.join("\n")}`);
      assert.ok(before.includes("sync ca"), `and its name:\n${events.join("\n")}`);
    });
  },
});

Deno.test({
  name:
    "transaction() adds no fsync to a commit whose index it appended and synced itself, nor to a later one that commits nothing",
  ignore: !strace && !CI,
  fn: async () => {
    assert.ok(strace, "CI=true and strace is not on PATH: this test cannot run");
    await withFakeCa(async (paths) => {
      const carol = BOB.replace("4A01", "4A02").replace("bob", "carol");
      const events = await traceTransactions(paths, [BOB, carol, ""]);
      // The first transaction of a process does not know what is durable; from then on it does.
      const syncs = (from: number, to: number) =>
        between(events, from, to).filter((e) => e.startsWith("sync index.txt") || e === "sync ca");
      assert.deepEqual(syncs(0, 1), ["sync index.txt"], `an append:\n${events.join("\n")}`);
      assert.deepEqual(syncs(1, 2), [], `nothing committed:\n${events.join("\n")}`);
    });
  },
});

Deno.test("formatKeyIds() and parseKeyIds() round-trip key ids by serial, and a damaged text is no key ids at all", () => {
  const ids = new Map([["35BE", "ab".repeat(32)], ["1", `rsa-n:${"0f".repeat(32)}`]]);
  const text = formatKeyIds(ids);
  assert.deepEqual(parseKeyIds(text), ids);
  assert.deepEqual(parseKeyIds(formatKeyIds(new Map())), new Map());
  for (
    const damaged of [
      "",
      text.slice(0, -1), // cut short
      text.replace("e2e-chat key-ids 1", "e2e-chat key-ids 2"),
      `${text}35BE ${"cd".repeat(32)}\n`, // a serial twice
      `${text}035BF ${"cd".repeat(32)}\n`, // a serial not in its one form
      `${text}35BF ${"CD".repeat(32)}\n`,
      `${text}35BF\n`,
    ]
  ) {
    assert.equal(parseKeyIds(damaged), undefined, JSON.stringify(damaged));
  }
});
