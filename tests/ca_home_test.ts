/**
 * Where the CA command line finds its home, and which homes it refuses. It refuses a CA home that
 * another user may change: one who may rename in HOME (anyone, when others may write in it; its
 * owner, when that is someone else) could put a CA of their own in place of HOME/ca — with a key
 * they hold, which the passphrase check takes like ours — or swap its index and invites. And run
 * outside the project folder (a compiled binary, `deno run` from elsewhere), it resolves relative
 * paths from its own folder, not from an INIT_CWD inherited from an outer `npm run`. ca/main.ts
 * run as a process with the task's permissions. And whatever the umask, the files it makes (openssl's
 * too) are readable by all when public and ours alone otherwise, writable by no one else.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";
import { exists } from "../lib/fs.ts";
import { makeCsr, PASSPHRASE, runCa, runCli, withTempDir } from "./_helpers.ts";

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

/** The mode (octal) of every file and folder under `dir`, by path relative to `dir`. */
async function modesUnder(dir: string, root = dir, out: Record<string, string> = {}) {
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    out[relative(root, path)] = ((await Deno.lstat(path)).mode! & 0o777).toString(8);
    if (entry.isDirectory) await modesUnder(path, root, out);
  }
  return out;
}

Deno.test("ca init, sign and revoke under umask 000 make public files 0644 and the rest 0600, none that others may write", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    const csr = join(dir, "alice.csr");
    await Deno.writeTextFile(csr, (await makeCsr("alice")).csr);
    const steps = [
      ["init", "--key-type", "ec-p256"],
      ["sign", "--name", "alice", csr],
      ["revoke", "alice"],
    ];
    for (const args of steps) {
      const result = await runCa(home, args, { umask: 0o000 });
      assert.equal(result.code, 0, `${args[0]}: ${result.stderr}`);
      const modes = await modesUnder(home);
      // Before: ca.crt, crl.pem (made by init) and the issued certificate were 0666, openssl's
      // files with the umask's mode; only the 0700 folders kept others out.
      const writable = Object.entries(modes).filter(([, m]) => parseInt(m, 8) & 0o022);
      assert.deepEqual(writable, [], `after ${args[0]}: files others may write`);
      for (const file of ["ca/ca.crt", "ca/crl.pem", "ca/openssl.cnf"]) {
        assert.equal(modes[file], "644", `after ${args[0]}: ${file}`);
      }
      for (const file of ["ca/ca.key", "ca/index.txt", "ca/index.txt.attr", "ca/crlnumber"]) {
        assert.equal(modes[file], "600", `after ${args[0]}: ${file}`);
      }
      const issued = Object.keys(modes).filter((p) => /^ca\/certs\/.+\.pem$/.test(p));
      assert.equal(issued.length, args[0] === "init" ? 0 : 1, `after ${args[0]}: ${issued}`);
      for (const file of issued) assert.equal(modes[file], "644", `after ${args[0]}: ${file}`);
    }
  });
});
