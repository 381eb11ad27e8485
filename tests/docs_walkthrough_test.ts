/**
 * README.md followed literally by a new user, where the docs and the
 * commands disagree: each test runs the documented commands as processes
 * (`deno task client …`, `deno task ca …`) against a real service.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { exists } from "../lib/fs.ts";
import { parseCsr } from "../lib/csr.ts";
import { ChatClient, childEnv, ROOT, runTask, stopAll } from "./_harness.ts";
import { joinUser } from "./_chat_helpers.ts";
import { PASSPHRASE, runCa } from "./_helpers.ts";
import { assertSuccess, makeInvite, withService } from "./_service_helpers.ts";

/** The client run as `deno task client ARGS`, for the user whose home is `home`. */
function client(home: string, args: string[], stdin?: string) {
  return runTask("client", args, { env: { E2E_CHAT_HOME: home }, timeoutMs: 60_000, stdin });
}

Deno.test(
  "a member who made a key with `client csr` (README, the CA in five commands) and is told to " +
    "join is not then refused by join for having that key",
  async () => {
    await withService(async (service, dir) => {
      const home = join(dir, "alice");
      assertSuccess(await client(home, ["csr", "alice"]), "client csr alice");
      const csr = join(home, "id", "request.csr");
      assertSuccess(
        await runCa(service.home, [
          "sign",
          "--name",
          "alice",
          csr,
          "--out",
          join(dir, "alice.crt"),
        ]),
        "ca sign",
      );

      // What the member tries next: chat (README: `deno task client` = chat), then whoami.
      const whoami = await client(home, ["whoami"]);
      assert.equal(whoami.code, 1, `whoami: ${whoami.stderr}`);
      const hint = whoami.stderr.match(/^e2e-chat: hint: (.*)$/m)?.[1] ?? "";
      if (!/client join/.test(hint)) return; // the hint sends the member elsewhere: no dead end

      // The hint says to join; the admin gives an invite for the name; the member joins here.
      const invite = await makeInvite(service.home, "alice");
      const joined = await client(home, ["join", "-"], `${invite}\n`);
      assert.equal(
        joined.code,
        0,
        `whoami's hint was "${hint}", and join then said:\n${joined.stderr}`,
      );
    });
  },
);

Deno.test(
  "`deno task client` in a home that has not joined is an error with a hint, as `client chat` is, " +
    "not the usage text and exit 0 (README: `deno task client` = `deno task client chat`)",
  async () => {
    await withService(async (_service, dir) => {
      const home = join(dir, "nobody");
      const chat = await client(home, ["chat"], "");
      const bare = await client(home, [], "");
      assert.equal(chat.code, 1, `client chat: ${chat.stderr}`);
      assert.equal(bare.code, chat.code, `client (no command) printed:\n${bare.stdout}`);
      assert.equal(bare.stderr, chat.stderr);
    });
  },
);

Deno.test(
  "join in a home where `client csr` made an encrypted key uses that key, under its passphrase, " +
    "and makes the home one that chats: whoami shows that key's fingerprint",
  async () => {
    await withService(async (service, dir) => {
      const home = join(dir, "carol");
      const passphraseFile = join(dir, "passphrase.txt");
      await Deno.writeTextFile(passphraseFile, "carol's long passphrase\n", { mode: 0o600 });
      const withPassphrase = ["--passphrase-file", passphraseFile];
      assertSuccess(await client(home, ["csr", "carol", ...withPassphrase]), "client csr");
      const csr = parseCsr(await Deno.readTextFile(join(home, "id", "request.csr")));

      const invite = await makeInvite(service.home, "carol");
      const without = await client(home, ["join", "-"], `${invite}\n`);
      assert.equal(without.code, 1, without.stderr);
      assert.match(without.stderr, /it is encrypted\ne2e-chat: hint: join with the passphrase/);

      assertSuccess(await client(home, ["join", "-", ...withPassphrase], `${invite}\n`), "join");
      const whoami = await client(home, ["whoami", "--json"]);
      assertSuccess(whoami, "whoami");
      const info = JSON.parse(whoami.stdout);
      assert.equal(info.name, "carol");
      assert.equal(info.keyFingerprint, csr.keyFingerprint);
      assert.equal(info.keyEncrypted, true);
      assert.equal(await exists(join(home, "joining")), false);
    });
  },
);

Deno.test(
  "a passphrase file other users can read is used with a warning, by the client and the CA; " +
    "one they can write to is refused",
  async () => {
    await withService(async (service, dir) => {
      const file = join(dir, "passphrase.txt");
      await Deno.writeTextFile(file, "a long passphrase\n");
      await Deno.chmod(file, 0o644);
      const made = await client(join(dir, "dan"), ["csr", "dan", "--passphrase-file", file]);
      assertSuccess(made, "client csr");
      assert.match(
        made.stderr,
        /^e2e-chat: warning: The passphrase file ".*" can be read by other users \(mode 0644\): chmod 600 it\n$/,
      );
      await Deno.chmod(file, 0o646);
      const refused = await client(join(dir, "erin"), ["csr", "erin", "--passphrase-file", file]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /other users can write to it \(mode 0646\)\n.*hint: chmod 600/);

      await Deno.writeTextFile(file, `${PASSPHRASE}\n`);
      await Deno.chmod(file, 0o640);
      const list = await runCa(service.home, ["crl", "--passphrase-file", file]);
      assertSuccess(list, "ca crl");
      assert.match(list.stderr, /warning: The passphrase file ".*" can be read by other users/);
    });
  },
);

Deno.test(
  "docs/CA.md's loop for enrolling the class runs as written, in a folder without invites/, and " +
    "leaves each token readable by its admin alone",
  async () => {
    const doc = await Deno.readTextFile(join(ROOT, "docs", "CA.md"));
    const loop = /\*\*Enrolling the class\.\*\*[^`]*`([^`]+)`/.exec(doc)?.[1];
    assert.ok(loop, 'no command after "Enrolling the class" in docs/CA.md');
    await withService(async (service, dir) => {
      const work = join(dir, "work");
      await Deno.mkdir(work);
      await Deno.writeTextFile(join(work, "names.txt"), "amy\nben\n");
      // `deno task` as the admin types it, from a folder outside the repository.
      const shell = `deno() { shift; command deno task --config "$ROOT/deno.json" "$@"; }\n` +
        `umask 022\n${loop}\n`;
      const run = await new Deno.Command("sh", {
        args: ["-c", shell],
        cwd: work,
        env: childEnv({ ROOT, E2E_CHAT_HOME: service.home }),
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(run.stderr);
      assert.equal(run.code, 0, stderr);
      assert.equal((await Deno.stat(join(work, "invites"))).mode! & 0o777, 0o700);
      for (const name of ["amy", "ben"]) {
        const file = join(work, "invites", name);
        assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600, file);
        assert.match(await Deno.readTextFile(file), /^e2e-chat:\/\/\S+\n$/);
      }
    });
  },
);

Deno.test(
  "usage mistakes exit 2 (README): `client lookup` and `client csr` with a name no member can have",
  async () => {
    await withService(async (_service, dir) => {
      for (const command of ["lookup", "csr"]) {
        const run = await client(join(dir, "nobody"), [command, "Bad"]);
        assert.equal(run.code, 2, `${command}: ${run.stderr}`);
        assert.match(run.stderr, /^e2e-chat: error: Invalid name "Bad"\ne2e-chat: hint: use 1-63/);
      }
    });
  },
);

Deno.test(
  "in --json, a room invitation sent is the event `room_invited` (docs/PROTOCOL.md §6), not a " +
    "warning",
  async () => {
    await withService(async (service, dir) => {
      const [alice] = await Promise.all([
        joinUser(service, "alice", join(dir, "alice")),
        joinUser(service, "bob", join(dir, "bob")),
      ]);
      const chat = await ChatClient.start(alice);
      try {
        await chat.send("/room create #team");
        await chat.expect({ type: "room_joined", room: "#team" });
        const mark = chat.mark();
        await chat.send("/room invite #team bob");
        await chat.expect({ type: "room_invited", room: "#team", to: "bob" }, 30_000);
        assert.deepEqual(chat.since(mark, { type: "warning" }), []);
      } finally {
        await stopAll([chat]);
      }
    });
  },
);

Deno.test(
  "the terminal chat whose output is not a terminal, with NO_COLOR set, writes no escape codes " +
    "and no prompts: only its lines",
  async () => {
    await withService(async (service, dir) => {
      const bob = await joinUser(service, "bob", join(dir, "bob"));
      const run = await runTask("client", [], {
        env: { E2E_CHAT_HOME: bob.home, NO_COLOR: "1" },
        stdin: "/help\n/quit\n",
        timeoutMs: 60_000,
      });
      assertSuccess(run, "client");
      assert.ok(!run.stdout.includes("\x1b"), JSON.stringify(run.stdout.slice(0, 300)));
      assert.doesNotMatch(run.stdout, /bob> /);
      assert.match(run.stdout, /^\d\d:\d\d listening on 127\.0\.0\.1:\d+ as bob/);
      assert.match(run.stdout, /\n\d\d:\d\d bye\n$/);
    });
  },
);
