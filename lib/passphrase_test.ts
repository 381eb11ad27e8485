import assert from "node:assert/strict";
import { join } from "node:path";
import { E2eError } from "./errors.ts";
import { readPassphrase } from "./passphrase.ts";

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

Deno.test("readPassphrase() refuses a passphrase file other users can write to", async () => {
  for (const mode of [0o620, 0o602, 0o666]) {
    await withFile(mode, async (file) => {
      await assert.rejects(
        readPassphrase({ file, onWarning: () => {} }),
        (e: unknown) =>
          e instanceof E2eError && e.code === "ERR_FILE" &&
          e.message ===
            `Cannot use the passphrase file "${file}": other users can write to it (mode 0${
              mode.toString(8)
            })` &&
          e.hint === `chmod 600 "${file}"`,
      );
    });
  }
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
