/**
 * Where the CA command line finds its home, and which homes it refuses. It refuses a CA home that
 * another user may change: one who may rename in HOME (anyone, when others may write in it; its
 * owner, when that is someone else) could put a CA of their own in place of HOME/ca — with a key
 * they hold, which the passphrase check takes like ours — or swap its index and invites. And run
 * outside the project folder (a compiled binary, `deno run` from elsewhere), it resolves relative
 * paths from its own folder, not from an INIT_CWD inherited from an outer `npm run`. ca/main.ts
 * run as a process with the task's permissions.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { exists } from "../lib/fs.ts";
import { PASSPHRASE, runCa, runCli, withTempDir } from "./_helpers.ts";

const HINT = "a CA home must be yours alone: check what changed in it, then chown it to yourself " +
  "and chmod 700";

Deno.test("ca list and ca serve refuse a CA home, or its ca folder, that other users may write in, and say so before asking for a passphrase", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    const init = await runCa(home, ["init", "--key-type", "ec-p256"]);
    assert.equal(init.code, 0, init.stderr);
    for (
      const [folder, mode] of [[home, 0o777], [home, 0o770], [join(home, "ca"), 0o757]] as const
    ) {
      await Deno.chmod(folder, mode);
      try {
        for (const args of [["list"], ["serve", "--port", "0"]]) {
          const result = await runCa(home, args, { env: { E2E_CHAT_CA_PASSPHRASE: "" } });
          assert.equal(
            result.code,
            1,
            `${args[0]}, ${folder} ${mode.toString(8)}: ${result.stderr}`,
          );
          assert.equal(
            result.stderr,
            `e2e-chat: error: Cannot use the CA in "${folder}": other users may write in it\n` +
              `e2e-chat: hint: ${HINT} "${folder}"\n`,
          );
        }
      } finally {
        await Deno.chmod(folder, 0o700);
      }
    }
    const list = await runCa(home, ["list"]);
    assert.equal(list.code, 0, list.stderr);
  });
});

Deno.test("ca refuses a CA home that belongs to another user, and ca init will not make a CA in one", async (t) => {
  if (Deno.uid() !== 0) {
    t.step("skipped: only root can give a folder to another user", () => {});
    return;
  }
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    const init = await runCa(home, ["init", "--key-type", "ec-p256"]);
    assert.equal(init.code, 0, init.stderr);
    const other = join(dir, "other");
    await Deno.mkdir(other, { mode: 0o700 });
    const cases: Array<[string, string[]]> = [
      [home, ["list"]],
      [other, ["init", "--key-type", "ec-p256"]],
    ];
    for (const [folder, args] of cases) {
      await Deno.chown(folder, 65534, 65534);
      const result = await runCa(folder, args);
      assert.equal(result.code, 1, result.stderr);
      assert.equal(
        result.stderr,
        `e2e-chat: error: Cannot use the CA in "${folder}": it belongs to another user\n` +
          `e2e-chat: hint: ${HINT} "${folder}"\n`,
      );
    }
    assert.deepEqual([...Deno.readDirSync(other)], [], "ca init wrote in a folder not its own");
  });
});

Deno.test("ca run from a folder of its own takes a relative --home and --passphrase-file from there, not from an INIT_CWD inherited from an outer npm run", async () => {
  await withTempDir(async (dir) => {
    const [here, stale] = [join(dir, "here"), join(dir, "stale")];
    await Deno.mkdir(here);
    await Deno.mkdir(stale);
    await Deno.writeTextFile(join(here, "pp"), PASSPHRASE + "\n", { mode: 0o600 });
    const result = await runCli(
      "ca/main.ts",
      ["init", "--key-type", "ec-p256", "--home", "rel", "--passphrase-file", "pp"],
      { cwd: here, env: { INIT_CWD: stale } },
    );
    assert.equal(result.code, 0, result.stderr);
    assert.ok(await exists(join(here, "rel", "ca", "ca.crt")), "no CA in the folder it ran in");
    assert.deepEqual([...Deno.readDirSync(stale)], [], "it wrote in the inherited INIT_CWD");
  });
});
