/**
 * Names that must survive a power cut: a file's own fsync keeps its bytes, but
 * the rename or link that gave it its name is durable only once its folder is
 * fsynced. These tests watch the real system calls (strace) of the real code:
 * the new key, a received file, a mailbox item the CA accepted, and the
 * helpers in lib/fs.ts they use.
 *
 * Without strace they are skipped with a message, except under CI=true.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { CaPaths } from "../ca/home.ts";
import { ROOT, taskFlags, withTempDir } from "./_harness.ts";
import {
  type FileCall,
  folderSyncedAfter,
  indexOfCall,
  stracePath,
  traceFileCalls,
} from "./_syscalls.ts";

const strace = await stracePath();
const CI = Deno.env.get("CI") === "true";
if (!strace && !CI) {
  // deno-lint-ignore no-console
  console.log("durability_test.ts: skipping: strace is not on PATH (apt-get install strace)");
}

function test(name: string, fn: (strace: string) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !strace && !CI,
    fn: async () => {
      assert.ok(strace, "CI=true and strace is not on PATH: the durability tests cannot run");
      await fn(strace);
    },
  });
}

/** Runs `source` (a module importing from the repository) under strace, in `dir`. */
async function traceScript(
  strace: string,
  dir: string,
  source: string,
  args: string[] = [],
): Promise<FileCall[]> {
  const script = join(dir, "script.ts");
  await Deno.writeTextFile(script, source.replaceAll("ROOT/", pathToFileURL(ROOT).href + "/"));
  const { code, stderr, calls } = await traceFileCalls(strace, Deno.execPath(), [
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-run=openssl",
    script,
    ...args,
  ]);
  assert.equal(code, 0, stderr);
  return calls;
}

test("writeFileAtomic() with syncDir fsyncs the folder after its rename, and without it does not", async (strace) => {
  await withTempDir(async (dir) => {
    const calls = await traceScript(
      strace,
      dir,
      `import { writeFileAtomic } from "ROOT/lib/fs.ts";
       await writeFileAtomic(Deno.args[0] + "/plain.txt", "a");
       await writeFileAtomic(Deno.args[0] + "/synced.txt", "b", { syncDir: true });`,
      [dir],
    );
    const plain = indexOfCall(calls, "rename", join(dir, "plain.txt"), 1);
    const synced = indexOfCall(calls, "rename", join(dir, "synced.txt"), 1);
    assert.ok(plain >= 0 && synced > plain, "both files renamed into place, in order");
    assert.ok(
      !calls.slice(plain, synced).some((c) => c.call === "fsync" && c.paths[0] === dir),
      "the folder is not fsynced between the plain write and the next",
    );
    assert.ok(folderSyncedAfter(calls, synced, join(dir, "synced.txt")));
  });
});

test("ensurePrivateDir() with durable fsyncs the parent of each folder it creates", async (strace) => {
  await withTempDir(async (dir) => {
    const calls = await traceScript(
      strace,
      dir,
      `import { ensurePrivateDir } from "ROOT/lib/fs.ts";
       await ensurePrivateDir(Deno.args[0] + "/a/b", { durable: true });`,
      [dir],
    );
    for (const made of [join(dir, "a"), join(dir, "a", "b")]) {
      assert.ok(folderSyncedAfter(calls, indexOfCall(calls, "mkdir", made), made), made);
    }
  });
});

test("client csr: the new key's name and its new folders are durable before the request is printed", async (strace) => {
  await withTempDir(async (dir) => {
    const home = join(dir, "alice");
    const { code, stderr, calls } = await traceFileCalls(
      strace,
      Deno.execPath(),
      ["run", ...await taskFlags("client"), join(ROOT, "client", "main.ts"), "csr", "alice"],
      { cwd: ROOT, env: { E2E_CHAT_HOME: home, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" } },
    );
    assert.equal(code, 0, stderr);
    const key = join(home, "id", "key.pem");
    assert.ok(folderSyncedAfter(calls, indexOfCall(calls, "link", key, 1), key), "key.pem");
    for (const made of [home, join(home, "id")]) {
      assert.ok(folderSyncedAfter(calls, indexOfCall(calls, "mkdir", made), made), made);
    }
  });
});

test("A received file's final name is durable before the sender can hear it arrived", async (strace) => {
  await withTempDir(async (dir) => {
    const bytes = new TextEncoder().encode("hello, durable world\n");
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const calls = await traceScript(
      strace,
      dir,
      `import { IncomingFile } from "ROOT/client/files.ts";
       const file = await IncomingFile.start(Deno.args[0] + "/in", "note.txt", ${bytes.length});
       await file.write(new TextEncoder().encode("hello, durable world\\n"));
       await file.finish("${sha256}");`,
      [dir],
    );
    const target = join(dir, "in", "note.txt");
    assert.ok(folderSyncedAfter(calls, indexOfCall(calls, "link", target, 1), target));
  });
});

test("The CA's mailbox makes an item's two names durable before post() answers", async (strace) => {
  await withTempDir(async (dir) => {
    const calls = await traceScript(
      strace,
      dir,
      `import { CaPaths } from "ROOT/ca/home.ts";
       import { Mailbox } from "ROOT/ca/mailbox.ts";
       const mailbox = await Mailbox.open(new CaPaths(Deno.args[0]));
       const record = await mailbox.post("alice", "bob", new Uint8Array(10));
       await Deno.writeTextFile(Deno.args[0] + "/answered", record.id);
       mailbox.close();`,
      [dir],
    );
    const answered = calls.findIndex((c) =>
      c.call === "openat" && c.paths[0] === join(dir, "answered")
    );
    const id = (await Deno.readTextFile(join(dir, "answered"))).trim();
    const folder = new CaPaths(dir).mailboxOf("bob");
    for (const ext of ["cms", "json"]) {
      const path = join(folder, `${id}.${ext}`);
      const renamed = indexOfCall(calls, "rename", path, 1);
      assert.ok(renamed >= 0, `${ext} renamed into place`);
      assert.ok(folderSyncedAfter(calls.slice(0, answered), renamed, path), `${ext} durable`);
    }
    assert.ok(
      folderSyncedAfter(calls.slice(0, answered), indexOfCall(calls, "mkdir", folder), folder),
      "bob's new folder durable",
    );
  });
});

test("generateKey(): the key's bytes and then its name are durable before it returns", async (strace) => {
  await withTempDir(async (dir) => {
    const calls = await traceScript(
      strace,
      dir,
      `import { generateKey } from "ROOT/lib/keys.ts";
       await generateKey(Deno.args[0] + "/key.pem", "ec-p256");`,
      [dir],
    );
    const key = join(dir, "key.pem");
    const linked = calls.findIndex((c) => c.ok && c.call === "link" && c.paths[1] === key);
    assert.ok(linked >= 0, "linked into place");
    assert.ok(
      calls.slice(0, linked).some((c) =>
        c.ok && c.call === "fsync" && c.paths[0] === calls[linked].paths[0]
      ),
      "bytes first",
    );
    assert.ok(folderSyncedAfter(calls, linked, key), "then the name");
  });
});

test("InviteStore.clearReservations() makes index.txt durable before it settles claims by it", async (strace) => {
  await withTempDir(async (dir) => {
    const paths = new CaPaths(dir);
    await Deno.mkdir(paths.dir, { recursive: true });
    await Deno.writeTextFile(paths.index, "");
    const calls = await traceScript(
      strace,
      dir,
      `import { CaPaths } from "ROOT/ca/home.ts";
       import { InviteStore } from "ROOT/ca/invites.ts";
       await new InviteStore(new CaPaths(Deno.args[0])).clearReservations();`,
      [dir],
    );
    const synced = indexOfCall(calls, "fsync", paths.index);
    const settled = indexOfCall(calls, "rename", paths.invites, 1);
    assert.ok(synced >= 0, "index.txt fsynced");
    assert.ok(settled > synced, "before the invites are written");
  });
});
