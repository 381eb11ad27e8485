/**
 * The command lines under hostile arguments: names built to escape paths or
 * pass for someone else, certificate-request paths that are not files (a
 * folder, a FIFO that never ends, /dev/zero, a symlink loop), and invite URLs
 * that are wrong in every way `client join` can see. Each one gets exactly one
 * `e2e-chat: error: …` line (and at most a hint), a non-zero exit, creates
 * nothing, and never repeats the invite's token.
 *
 * @module
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { runTask } from "./_harness.ts";
import { makeCsr, PASSPHRASE, snapshot } from "./_helpers.ts";
import { initCa, makeInvite, startService } from "./_service_helpers.ts";
import { assertCliError, assertSameFiles, pool, tree } from "./_hostile_helpers.ts";

const FP = "ab".repeat(32);

/** Runs every case, then reports every failure at once. */
async function allRefused<T>(
  cases: readonly T[],
  run: (item: T, index: number) => Promise<void>,
): Promise<void> {
  const failures: string[] = [];
  await pool(cases, 4, async (item, i) => {
    try {
      await run(item, i);
    } catch (e) {
      failures.push(e instanceof Error ? e.message : String(e));
    }
  });
  assert.deepEqual(failures, [], "cases that were not refused cleanly");
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

Deno.test("client csr and lookup refuse hostile names with one error line and create nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-cli-hostile-" });
  try {
    const cwd = join(dir, "cwd");
    await Deno.mkdir(cwd);
    const names = [
      "../evil",
      "../../evil",
      "/tmp/evil",
      "-x",
      "--x",
      "A B",
      "Alice",
      "\u0430lice", // Cyrillic а
      "\uff41lice", // fullwidth ａ
      "alice\u200b", // zero-width space
      "al\u0131ce", // dotless ı
      "alice\n",
      "a".repeat(64),
      "a".repeat(10_000),
      "",
      ".alice",
      "$(id)",
      "e2e-chat service",
    ];
    const runs = names.flatMap((name, i) => [
      { name, args: ["csr", name, "--home", join(dir, `home-${i}`)], home: join(dir, `home-${i}`) },
      {
        name,
        args: ["csr", "--home", join(dir, `home-${i}`), "--", name],
        home: join(dir, `home-${i}`),
      },
      {
        name,
        args: ["lookup", name, "--home", join(dir, `home-${i}`)],
        home: join(dir, `home-${i}`),
      },
    ]);
    await allRefused(runs, async ({ name, args, home }) => {
      const what = `client ${args[0]} ${JSON.stringify(name.slice(0, 40))}`;
      const result = await runTask("client", args, { cwd, timeoutMs: 30_000 });
      assertCliError(result, what);
      assert.ok(!await exists(home), `${what}: created ${home}`);
    });
    assert.deepEqual(await tree(dir), ["cwd/"], "files appeared");
    assert.ok(!await exists(join(dir, "..", "evil")), "../../evil was created");
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("a NUL byte cannot reach the CLI: the system refuses it in arguments and in the environment", () => {
  const spawn = (options: Deno.CommandOptions) =>
    new Deno.Command(Deno.execPath(), { stdout: "null", stderr: "null", ...options }).spawn();
  // Both fail before any program starts, so no name, path or invite with a NUL ever gets in.
  assert.throws(() => spawn({ args: ["run", "client/main.ts", "csr", "ali\u0000ce"] }), /nul byte/);
  assert.throws(
    () => spawn({ args: ["--version"], env: { E2E_CHAT_HOME: "/tmp/a\u0000b" } }),
    /nul/,
  );
});

Deno.test("client join refuses hostile invite URLs with one error line, creates no home, and never echoes the token", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-cli-invite-" });
  try {
    const cwd = join(dir, "cwd");
    await Deno.mkdir(cwd);
    const token = randomBytes(32).toString("base64url");
    const good = (host = "127.0.0.1:1", name = "alice", query = `fp=${FP}&token=${token}`) =>
      `e2e-chat://${host}/${name}?${query}`;
    const invites: Array<[string, string]> = [
      ["wrong scheme https", `https://127.0.0.1:1/alice?fp=${FP}&token=${token}`],
      ["wrong scheme file", `file:///etc/passwd?fp=${FP}&token=${token}`],
      ["one slash", `e2e-chat:/127.0.0.1:1/alice?fp=${FP}&token=${token}`],
      ["no scheme", `127.0.0.1:1/alice?fp=${FP}&token=${token}`],
      ["missing fp", good(undefined, undefined, `token=${token}`)],
      ["short fp", good(undefined, undefined, `fp=abcd&token=${token}`)],
      ["fp not hex", good(undefined, undefined, `fp=${"zz".repeat(32)}&token=${token}`)],
      ["fp too long", good(undefined, undefined, `fp=${FP}00&token=${token}`)],
      ["missing token", good(undefined, undefined, `fp=${FP}`)],
      ["token one short", good(undefined, undefined, `fp=${FP}&token=${token.slice(1)}`)],
      ["token one long", good(undefined, undefined, `fp=${FP}&token=${token}A`)],
      ["token with +", good(undefined, undefined, `fp=${FP}&token=${token.slice(1)}+`)],
      ["token with a newline", good(undefined, undefined, `fp=${FP}&token=${token}\n-config`)],
      ["port 0", good("127.0.0.1:0")],
      ["port 70000", good("127.0.0.1:70000")],
      ["port 123456", good("127.0.0.1:123456")],
      ["no port", good("127.0.0.1")],
      ["port -1", good("127.0.0.1:-1")],
      ["host with spaces", good("127.0.0 .1:65433")],
      ["host with a space and a flag", good("ca.example -k:65433")],
      ["user info", good(`${token}@127.0.0.1:1`)],
      ["path escape", good(undefined, "../../alice")],
      ["name with capitals", good(undefined, "Alice")],
      ["name with percent", good(undefined, "%2e%2e")],
      ["a fragment", good() + "#x"],
      ["extremely long host", good("a".repeat(100_000) + ":1")],
      [
        "extremely long token",
        good(undefined, undefined, `fp=${FP}&token=${token}${"A".repeat(100_000)}`),
      ],
      ["extremely long name", good(undefined, "a".repeat(100_000))],
      ["only the token", token],
      ["empty", ""],
    ];
    await allRefused(invites, async ([what, invite], i) => {
      const home = join(dir, `home-${i}`);
      const result = await runTask("client", ["join", invite, "--home", home], {
        cwd,
        timeoutMs: 30_000,
      });
      assertCliError(result, `join (${what})`, [token, token.slice(1), invite]);
      assert.ok(!await exists(home), `join (${what}) created ${home}`);
    });
    assert.deepEqual(await tree(dir), ["cwd/"], "files appeared");
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("client join with a well-formed invite refused by the network or by the CA leaves no identity, no key and no token in its output", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-cli-join-" });
  const service = await (async () => {
    const home = join(dir, "ca-home");
    await initCa(home);
    return await startService(home);
  })();
  try {
    const real = await makeInvite(service.home, "alice");
    const unknown = randomBytes(32).toString("base64url");
    const usedUp = real.replace(/token=.*$/, `token=${unknown}`);
    // Nothing listens on a port we took and gave back.
    const closedPort = (() => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (listener.addr as Deno.NetAddr).port;
      listener.close();
      return port;
    })();
    const cases: Array<[string, string, string]> = [
      ["an unknown token at the real CA", usedUp, unknown],
      [
        "nothing listening",
        `e2e-chat://127.0.0.1:${closedPort}/alice?fp=${FP}&token=${unknown}`,
        unknown,
      ],
    ];
    const before = await snapshot(service.caDir);
    await allRefused(cases, async ([what, invite, secret], i) => {
      const home = join(dir, `home-${i}`);
      const result = await runTask("client", ["join", invite, "--home", home], {
        timeoutMs: 30_000,
      });
      assertCliError(result, what, [secret, invite]);
      // The home folder itself may have been made (0700, for the key); nothing may be left in it.
      assert.deepEqual(await tree(home), [], `${what}: left files in ${home}`);
    });
    assertSameFiles(before, await snapshot(service.caDir), "the CA");
    // The real invite was not touched by any of that.
    const joined = await runTask("client", ["join", real, "--home", join(dir, "alice")]);
    assert.equal(joined.code, 0, joined.stderr);
  } finally {
    await service.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("ca sign refuses request paths that are a folder, an endless FIFO, /dev/zero, a symlink loop or too large, quickly and with one error line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-cli-paths-" });
  try {
    const home = join(dir, "home");
    await initCa(home);
    const before = await snapshot(join(home, "ca"));
    const { csr } = await makeCsr("victim");
    const paths = join(dir, "paths");
    await Deno.mkdir(join(paths, "a-folder"), { recursive: true });
    await Deno.symlink(join(paths, "loop-b"), join(paths, "loop-a"));
    await Deno.symlink(join(paths, "loop-a"), join(paths, "loop-b"));
    // A real request padded past 64 KiB: refused for its size, not its content.
    await Deno.writeTextFile(join(paths, "big.csr"), csr + "\n".repeat(64 * 1024));
    const withNul = new TextEncoder().encode(csr);
    withNul[100] = 0;
    await Deno.writeFile(join(paths, "nul.csr"), withNul);
    const fifo = join(paths, "endless.fifo");
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mkfifo.success, "mkfifo failed");

    const sign = async (path: string) => {
      const started = Date.now();
      const result = await runTask("ca", ["sign", "--name", "victim", path], {
        cwd: paths,
        env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE },
        timeoutMs: 20_000,
      });
      return { result, ms: Date.now() - started };
    };
    const cases: Array<[string, string, RegExp]> = [
      ["a folder", join(paths, "a-folder"), /./],
      ["/dev/zero", "/dev/zero", /larger than 65536 bytes/],
      ["a symlink loop", join(paths, "loop-a"), /Cannot read/],
      ["a request padded past 64 KiB", join(paths, "big.csr"), /larger than 65536 bytes/],
      ["a request with a NUL byte", join(paths, "nul.csr"), /Invalid certificate request/],
      ["/dev/null", "/dev/null", /Invalid certificate request/],
    ];
    cases.push(["an endless FIFO", fifo, /larger than 65536 bytes/]);
    await allRefused(cases, async ([what, path, message]) => {
      // The FIFO's writer never stops by itself: the CLI must read what it allows and stop.
      let written = 0;
      const writer = path !== fifo ? undefined : (async () => {
        using file = await Deno.open(fifo, { write: true });
        const chunk = new Uint8Array(64 * 1024).fill(0x41);
        const until = Date.now() + 15_000;
        try {
          while (Date.now() < until && written < 256 * 1024 * 1024) {
            written += await file.write(chunk);
          }
        } catch { /* the reader closed its end: EPIPE */ }
      })();
      const { result, ms } = await sign(path);
      await writer;
      assertCliError(result, what);
      assert.match(result.stderr, message, what);
      assert.ok(ms < 5_000, `${what}: took ${ms} ms`);
      assert.ok(written < 64 * 1024 * 1024, `${what}: the CLI read ${written} bytes`);
    });

    assertSameFiles(before, await snapshot(join(home, "ca")), "ca sign refusals");
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
