import assert from "node:assert/strict";
import { join } from "node:path";
import { E2eError } from "./errors.ts";
import { privateGroup, readPassphrase } from "./passphrase.ts";

async function withFile(mode: number, fn: (file: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "passphrase.txt");
    await Deno.writeTextFile(file, "a long passphrase\n");
    await Deno.chmod(file, mode);
    await fn(file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("readPassphrase() reads a 0600 passphrase file without a warning", async () => {
  await withFile(0o600, async (file) => {
    const warnings: string[] = [];
    const passphrase = await readPassphrase({ file, onWarning: (m) => void warnings.push(m) });
    assert.equal(passphrase, "a long passphrase");
    assert.deepEqual(warnings, []);
  });
});

Deno.test("readPassphrase() warns of a passphrase file other users can read, and uses it", async () => {
  for (const mode of [0o640, 0o604, 0o644]) {
    await withFile(mode, async (file) => {
      const warnings: string[] = [];
      const passphrase = await readPassphrase({ file, onWarning: (m) => void warnings.push(m) });
      assert.equal(passphrase, "a long passphrase");
      assert.deepEqual(warnings, [
        `The passphrase file "${file}" can be read by other users (mode 0${
          mode.toString(8)
        }): chmod 600 it`,
      ]);
    });
  }
});

/** Asserts readPassphrase() refuses `file` (mode `mode`) because other users can write to it. */
async function assertRefusedAsWritableByOthers(
  file: string,
  mode: number,
  why = "",
): Promise<void> {
  await assert.rejects(
    readPassphrase({ file, onWarning: () => {} }),
    (e: unknown) =>
      e instanceof E2eError && e.code === "ERR_FILE" &&
      e.message ===
        `Cannot use the passphrase file "${file}": other users can write to it (mode 0${
          mode.toString(8)
        }${why})` &&
      e.hint === `chmod 600 "${file}"`,
  );
}

Deno.test("readPassphrase() refuses a passphrase file other users can write to", async () => {
  for (const mode of [0o602, 0o666]) {
    await withFile(mode, async (file) => {
      await assertRefusedAsWritableByOthers(file, mode);
    });
  }
});

Deno.test("readPassphrase() refuses a group-writable passphrase file whose group is not the owner's private group", async () => {
  if (Deno.uid() !== 0) return; // needs chgrp to a group of others (the test machine runs as root)
  for (const mode of [0o620, 0o660]) {
    await withFile(mode, async (file) => {
      await Deno.chown(file, null, 65534); // nogroup: not root's primary group
      await assertRefusedAsWritableByOthers(
        file,
        mode,
        "; its group, gid 65534, is not the owner's private group",
      );
    });
  }
});

Deno.test("readPassphrase() uses a group-writable passphrase file whose group is the owner's private group (user private groups), as OpenSSH does", async () => {
  // root's group 0 lists no member and is no one else's primary group (the test machine runs as
  // root); a user's own private group is the same case.
  if (Deno.uid() !== 0) return;
  await withFile(0o620, async (file) => {
    await Deno.chown(file, 0, 0);
    assert.equal(await readPassphrase({ file, onWarning: () => {} }), "a long passphrase");
  });
});

Deno.test("privateGroup() is true only for the owner's primary group that no one else has or is listed in", () => {
  const passwd = [
    "root:x:0:0:root:/root:/bin/bash",
    "alice:x:1000:1000:Alice:/home/alice:/bin/bash",
    "bob:x:1001:1001::/home/bob:/bin/sh",
    "carol:x:1002:100::/home/carol:/bin/sh",
    "dave:x:1003:100::/home/dave:/bin/sh",
    "+nis", // skipped
    "",
  ].join("\n");
  const group = [
    "root:x:0:",
    "users:x:100:",
    "alice:x:1000:alice",
    "bob:x:1001:eve",
    "staff:x:50:alice",
  ].join("\n");
  assert.equal(privateGroup(1000, 1000, passwd, group), true, "alice's own, listing only her");
  assert.equal(privateGroup(0, 0, passwd, group), true, "root's");
  assert.equal(privateGroup(1001, 1001, passwd, group), false, "bob's lists eve");
  assert.equal(privateGroup(1002, 100, passwd, group), false, "dave's primary group too");
  assert.equal(privateGroup(1000, 50, passwd, group), false, "not alice's primary group");
  assert.equal(privateGroup(1000, 1000, passwd, ""), false, "no such group line");
  assert.equal(privateGroup(4242, 4242, passwd, "x:x:4242:\n"), false, "no such user");
  const twice = passwd + "\nalice2:x:1000:1000::/:/bin/sh";
  assert.equal(privateGroup(1000, 1000, twice, group), false, "two users with uid 1000");
  // A line with an empty uid is nobody's, not root's.
  assert.equal(privateGroup(0, 0, ":x::5::/:/bin/sh\n" + passwd, group), true, "an empty uid");
});

Deno.test(
  "readPassphrase() refuses a passphrase or invite file another user owns, whatever its mode: " +
    "that user may rewrite or chmod it at will",
  async () => {
    if (Deno.uid() !== 0) return; // needs chown (the test machine runs as root)
    for (const mode of [0o600, 0o644]) {
      await withFile(mode, async (file) => {
        await Deno.chown(file, 65534, 65534); // nobody
        const warnings: string[] = [];
        await assert.rejects(
          readPassphrase({
            file,
            fileLabel: "invite file",
            onWarning: (m) => void warnings.push(m),
          }),
          (e: unknown) =>
            e instanceof E2eError && e.code === "ERR_FILE" &&
            e.message ===
              `Cannot use the invite file "${file}": another user owns it (uid 65534)` &&
            e.hint === `use a file of your own (chmod 600), not "${file}"`,
        );
        assert.deepEqual(warnings, []);
      });
    }
    // One root owns is ours to trust (root may rewrite any file anyway).
    await withFile(0o600, async (file) => {
      await Deno.chown(file, 0, 0);
      assert.equal(await readPassphrase({ file }), "a long passphrase");
    });
  },
);

Deno.test(
  "readPassphrase() refuses at once an invite file another user made a named pipe of: it does " +
    "not wait for that user to write into it",
  async () => {
    if (Deno.uid() !== 0) return; // needs chown (the test machine runs as root)
    const dir = await Deno.makeTempDir();
    try {
      const file = join(dir, "invite");
      const made = await new Deno.Command("mkfifo", { args: [file] }).output();
      assert.ok(made.success, "mkfifo");
      await Deno.chown(file, 65534, 65534); // nobody
      const read = readPassphrase({ file, fileLabel: "invite file" });
      read.catch(() => {});
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waited = await Promise.race([
        read.then(() => false, () => false),
        new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(true), 2_000)),
      ]);
      clearTimeout(timer);
      // That user writes (here: opens and closes it) whenever they like; then it goes on.
      if (waited) (await Deno.open(file, { write: true })).close();
      await assert.rejects(
        read,
        (e: unknown) =>
          e instanceof E2eError && e.code === "ERR_FILE" && /another user owns it/.test(e.message),
      );
      assert.equal(waited, false, "join waited on another user's named pipe, saying nothing");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  "readPassphrase() still reads a named pipe of our own, as --passphrase-file <(…) makes",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const file = join(dir, "pipe");
      const made = await new Deno.Command("mkfifo", { args: ["-m", "600", file] }).output();
      assert.ok(made.success, "mkfifo");
      const read = readPassphrase({ file });
      const writer = await Deno.open(file, { write: true });
      await writer.write(new TextEncoder().encode("a long passphrase\n"));
      writer.close();
      assert.equal(await read, "a long passphrase");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
