/**
 * Keys encrypted at rest (issue #15): `client join`, `csr` and `passwd` with a
 * passphrase, run as real processes against a real CA service; the key file
 * checked with the real `openssl pkey`; a chat started with an encrypted key.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { openssl } from "../lib/openssl.ts";
import { ChatClient, runTask } from "./_harness.ts";
import { assertSuccess, makeInvite, runClient, withService } from "./_service_helpers.ts";
import { argvRecordingOpenssl } from "./_hostile_helpers.ts";

const KEY_PASSPHRASE = "correct horse battery staple";
const NEW_PASSPHRASE = "a different passphrase 42";

function client(home: string, args: string[], env: Record<string, string> = {}) {
  return runTask("client", args, { env: { E2E_CHAT_HOME: home, ...env }, timeoutMs: 60_000 });
}

async function pkeyReads(keyPath: string, passphrase?: string): Promise<boolean> {
  const args = ["pkey", "-in", keyPath, "-noout"];
  if (passphrase !== undefined) args.push("-passin", "env:E2E_CHAT_PASSIN");
  return await openssl(args, { passphrase }).then(() => true, () => false);
}

Deno.test("join --passphrase-file encrypts the key (PKCS#8, scrypt, AES-256) so that openssl pkey reads it only with the passphrase; every command that uses it asks for it; a wrong one is ERR_BAD_PASSPHRASE", async () => {
  await withService(async (service, dir) => {
    const { argvLog, env: wrapped } = await argvRecordingOpenssl(dir);
    const home = join(dir, "alice");
    const passFile = join(dir, "pass.txt");
    await Deno.writeTextFile(passFile, KEY_PASSPHRASE + "\n", { mode: 0o600 });
    const invite = await makeInvite(service.home, "alice");
    const joined = await client(home, ["join", invite, "--passphrase-file", passFile], wrapped);
    assertSuccess(joined, "join --passphrase-file");
    assert.match(joined.stdout, /key \(never sent\): +.*key\.pem \(encrypted\)/);

    const keyPath = join(home, "id", "key.pem");
    const pem = await Deno.readTextFile(keyPath);
    assert.match(pem, /^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/);
    assert.ok(await pkeyReads(keyPath, KEY_PASSPHRASE), "openssl pkey with the passphrase");
    assert.ok(!await pkeyReads(keyPath), "openssl pkey without a passphrase");
    assert.ok(!await pkeyReads(keyPath, "not the passphrase"), "openssl pkey, wrong passphrase");
    const { stdout } = await openssl(["asn1parse", "-in", keyPath]);
    const asn1 = new TextDecoder().decode(stdout);
    for (const part of [":PBES2", ":scrypt", ":aes-256-cbc", "INTEGER           :4000"]) {
      assert.ok(asn1.includes(part), `${part} in\n${asn1}`);
    }

    // No passphrase needed to say who we are; every command that uses the key needs it.
    const who = await client(home, ["whoami", "--json"]);
    assertSuccess(who, "whoami");
    assert.equal(JSON.parse(who.stdout).keyEncrypted, true);
    for (const args of [["renew"], ["lookup", "alice"], ["audit"]]) {
      const none = await client(home, args);
      assert.equal(none.code, 1, `${args[0]} without a passphrase: ${none.stderr}`);
      assert.match(none.stderr, /^e2e-chat: error: Passphrase of your key required/m);
      const wrong = await client(home, args, { E2E_CHAT_PASSPHRASE: "not the passphrase" });
      assert.equal(wrong.code, 1, `${args[0]} with a wrong passphrase`);
      assert.equal(
        wrong.stderr,
        `e2e-chat: error: Cannot unlock your key "${keyPath}": wrong passphrase\n`,
      );
    }
    const lookup = await client(home, ["lookup", "alice", "--json"], {
      E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE,
    });
    assertSuccess(lookup, "lookup with E2E_CHAT_PASSPHRASE");
    const renewed = await client(home, ["renew", "--passphrase-file", passFile], wrapped);
    assertSuccess(renewed, "renew --passphrase-file");
    assert.match(renewed.stdout, /^Renewed "alice"/);
    assert.equal(await Deno.readTextFile(keyPath), pem, "renewal keeps the key file");

    // The passphrase never reached openssl's argv (it went by -passin/-passout env:).
    const argv = await Deno.readTextFile(argvLog);
    assert.match(argv, /-passout env:E2E_CHAT_PASSIN/);
    assert.match(argv, /-passin env:E2E_CHAT_PASSIN/);
    assert.ok(!argv.includes(KEY_PASSPHRASE), "the passphrase in openssl's argv");
  });
});

Deno.test("an unencrypted key stays as before: join without a passphrase writes a plain key that whoami, renew and lookup use without asking", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "bob");
    assertSuccess(await runClient(home, ["join", await makeInvite(service.home, "bob")]), "join");
    const keyPath = join(home, "id", "key.pem");
    assert.match(await Deno.readTextFile(keyPath), /^-----BEGIN PRIVATE KEY-----\n/);
    assert.ok(await pkeyReads(keyPath));
    assertSuccess(await runClient(home, ["renew"]), "renew");
    const who = await runClient(home, ["whoami", "--json"]);
    assert.equal(JSON.parse(who.stdout).keyEncrypted, false);
  });
});

Deno.test("passwd encrypts a plain key, changes the passphrase and removes it, checking the current one first; the key (and its certificate) stays the same", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "carol");
    assertSuccess(await runClient(home, ["join", await makeInvite(service.home, "carol")]), "join");
    const keyPath = join(home, "id", "key.pem");
    const publicKey = async (passphrase?: string) => {
      const args = ["pkey", "-in", keyPath, "-pubout"];
      if (passphrase) args.push("-passin", "env:E2E_CHAT_PASSIN");
      return new TextDecoder().decode((await openssl(args, { passphrase })).stdout);
    };
    const original = await publicKey();

    const on = await client(home, ["passwd"], { E2E_CHAT_NEW_PASSPHRASE: KEY_PASSPHRASE });
    assertSuccess(on, "passwd (encrypt)");
    assert.equal(on.stdout, `Your key "${keyPath}" is encrypted under the new passphrase\n`);
    assert.equal(await publicKey(KEY_PASSPHRASE), original);
    assert.equal((await Deno.stat(keyPath)).mode! & 0o777, 0o600);

    const wrong = await client(home, ["passwd"], {
      E2E_CHAT_PASSPHRASE: "not the passphrase",
      E2E_CHAT_NEW_PASSPHRASE: NEW_PASSPHRASE,
    });
    assert.equal(wrong.code, 1);
    assert.equal(
      wrong.stderr,
      `e2e-chat: error: Cannot unlock your key "${keyPath}": wrong passphrase\n`,
    );
    assert.ok(
      await pkeyReads(keyPath, KEY_PASSPHRASE),
      "a refused passwd leaves the key as it was",
    );

    const weak = await client(home, ["passwd"], {
      E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE,
      E2E_CHAT_NEW_PASSPHRASE: "short",
    });
    assert.equal(weak.code, 1);
    assert.match(weak.stderr, /too short: use at least 8 characters/);

    const newFile = join(dir, "new.txt");
    await Deno.writeTextFile(newFile, NEW_PASSPHRASE + "\n");
    const changed = await client(home, ["passwd", "--new-passphrase-file", newFile], {
      E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE,
    });
    assertSuccess(changed, "passwd (change)");
    assert.ok(!await pkeyReads(keyPath, KEY_PASSPHRASE));
    assert.equal(await publicKey(NEW_PASSPHRASE), original);

    const off = await client(home, ["passwd", "--remove"], { E2E_CHAT_PASSPHRASE: NEW_PASSPHRASE });
    assertSuccess(off, "passwd --remove");
    assert.equal(off.stdout, `Your key "${keyPath}" is stored unencrypted\n`);
    assert.equal(await publicKey(), original);
    assertSuccess(await runClient(home, ["lookup", "carol"]), "lookup with the plain key again");
    // Nothing was left beside the key.
    const left = [];
    for await (const e of Deno.readDir(join(home, "id"))) left.push(e.name);
    assert.deepEqual(left.sort(), ["ca.crt", "cert.pem", "identity.json", "key.pem"]);
  });
});

Deno.test("csr --encrypt-key with E2E_CHAT_PASSPHRASE writes an encrypted key and a request openssl verifies; passwd works on that key alone", async () => {
  await withService(async (_service, dir) => {
    const home = join(dir, "dave");
    const result = await client(home, ["csr", "dave", "--encrypt-key"], {
      E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE,
    });
    assertSuccess(result, "csr --encrypt-key");
    const keyPath = join(home, "id", "key.pem");
    assert.match(await Deno.readTextFile(keyPath), /^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
    assert.ok(await pkeyReads(keyPath, KEY_PASSPHRASE));
    await openssl(["req", "-in", join(home, "id", "request.csr"), "-verify", "-noout"]);
    // passwd needs only the key, so it works before the request is signed.
    const off = await client(home, ["passwd", "--remove"], { E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE });
    assertSuccess(off, "passwd --remove in a csr-only home");
    assert.ok(await pkeyReads(keyPath));
    const none = await client(join(dir, "nobody"), ["passwd", "--remove"]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /^e2e-chat: error: No key at ".*nobody\/id\/key\.pem"\n/);
    const noTerminal = await client(join(dir, "erin"), ["csr", "erin", "--encrypt-key"]);
    assert.equal(noTerminal.code, 1);
    assert.match(
      noTerminal.stderr,
      /New passphrase for your key required and stdin is not a terminal/,
    );
  });
});

Deno.test("a chat starts with an encrypted key and connects to a peer: the key is decrypted in memory only, and the history is sealed", async () => {
  await withService(async (service, dir) => {
    const homes = { alice: join(dir, "alice"), bob: join(dir, "bob") };
    for (const [name, home] of Object.entries(homes)) {
      const joined = await client(home, ["join", await makeInvite(service.home, name)], {
        E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE,
      });
      assertSuccess(joined, `join ${name}`);
    }
    const env = { E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE };
    const [alice, bob] = await Promise.all([
      ChatClient.start({ name: "alice", home: homes.alice }, { env }),
      ChatClient.start({ name: "bob", home: homes.bob }, { env }),
    ]);
    try {
      await alice.send("/chat bob");
      await bob.expect({ type: "invite", from: "alice" });
      await bob.send("/accept alice");
      await Promise.all([
        alice.expect({ type: "connected", peer: "bob" }),
        bob.expect({ type: "connected", peer: "alice" }),
      ]);
      await alice.send("hello");
      await bob.expect({ type: "message", from: "alice", text: "hello" });
    } finally {
      await Promise.all([alice.stop(), bob.stop()]);
    }
    // The history is sealed on disk, and a restarted chat (with the passphrase) reads it.
    const history = await Deno.readTextFile(join(homes.bob, "history", "alice.jsonl"));
    assert.ok(!history.includes("hello"), "a message in the clear in the history");
    for (const line of history.trimEnd().split("\n")) assert.match(line, /^\{"e":"[^"]+"\}$/);
    const again = await ChatClient.start({ name: "bob", home: homes.bob }, { env });
    try {
      await again.send("/history alice");
      const shown = await again.expect({ type: "history", peer: "alice" });
      assert.deepEqual(
        (shown.entries as Array<{ text?: string }>).map((e) => e.text),
        ["hello"],
      );
    } finally {
      await again.stop();
    }
    // No unencrypted key anywhere in the homes.
    for (const home of Object.values(homes)) {
      for await (const e of Deno.readDir(join(home, "id"))) {
        const text = await Deno.readTextFile(join(home, "id", e.name));
        assert.ok(!/BEGIN (EC |RSA )?PRIVATE KEY/.test(text), `a plain key in ${e.name}`);
      }
    }
    const wrong = await ChatClient.start({ name: "alice", home: homes.alice }, {
      env: { E2E_CHAT_PASSPHRASE: "not the passphrase" },
      readyMs: 5_000,
    }).then(() => "started", (e) => String(e));
    assert.notEqual(wrong, "started");
  });
});
