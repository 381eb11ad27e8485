/**
 * What a new user meets first, run as they run it (README.md, "Chat in four
 * commands"): the terminal chat started and left, and the mistakes of a first
 * `join` and `chat`, each one error line with a hint that says what to do.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ChatClient,
  connect,
  type RunResult,
  runTask,
  TaskProcess,
  withTempDir,
} from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import { copyTree, makeCsr, runCa } from "./_helpers.ts";
import {
  assertSuccess,
  expiredCertificate,
  makeInvite,
  type Service,
  withService,
} from "./_service_helpers.ts";
import { parseCertificate } from "../lib/x509.ts";
import { CertificateRefused } from "../client/ca_client.ts";
import { Identity } from "../client/identity.ts";

/** The client run as `deno task client ARGS` in `cwd`, for the user whose home is `home`. */
function client(home: string, args: string[], options: { stdin?: string; cwd?: string } = {}) {
  return runTask("client", args, { env: { E2E_CHAT_HOME: home }, timeoutMs: 60_000, ...options });
}

/**
 * Replaces `user`'s certificate with one for the same key that the service's CA signed but made
 * valid only in 2020 (in a copy of HOME/ca, so the CA's database never hears of it).
 */
async function expire(service: Service, user: User, copy: string): Promise<void> {
  const { cert } = await expiredCertificate(
    service,
    copy,
    user.name,
    await Deno.readTextFile(user.keyPath),
  );
  await Deno.writeTextFile(user.certPath, cert);
}

/** The serial of the certificate in the home `home`. */
async function serialOf(home: string): Promise<string> {
  return parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem"))).serial;
}

/** A failure's one error line and its hint (exit 1). */
function assertFailure(result: RunResult, error: string, hint: string): void {
  assert.equal(result.code, 1, `exit code; stderr: ${result.stderr}`);
  assert.equal(result.stderr, `e2e-chat: error: ${error}\ne2e-chat: hint: ${hint}\n`);
}

Deno.test("the terminal chat says bye and exits 0 after /quit, and at the end of its input", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    for (const stdin of ["/quit\n", ""]) {
      const result = await client(bob.home, [], { stdin });
      assert.equal(result.code, 0, `exit code; stderr: ${result.stderr}`);
      assert.equal(result.stderr, "");
      assert.match(result.stdout, /listening on 127\.0\.0\.1:\d+ as bob/);
      assert.match(result.stdout, /\d\d:\d\d bye\n$/);
    }
  });
});

Deno.test("client join names the invite file it cannot read, from the folder it was run in", async () => {
  await withService(async (_service, dir) => {
    const result = await client(join(dir, "alice"), ["join", "--invite-file", "invite.txt"], {
      cwd: dir,
    });
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `e2e-chat: error: Cannot read the invite file "${join(dir, "invite.txt")}"\n` +
        "e2e-chat: hint: there is no such file: a relative path starts in the folder the command ran in\n",
    );
  });
});

Deno.test("client join takes an invite pasted or saved with the quotes a shell needs around it", async () => {
  await withService(async (service, dir) => {
    const pasted = await client(join(dir, "alice"), ["join", "-"], {
      stdin: `'${await makeInvite(service.home, "alice")}'\n`,
    });
    assert.equal(pasted.code, 0, pasted.stderr);
    assert.match(pasted.stdout, /^Joined https:\/\/127\.0\.0\.1:\d+ as "alice"\n/);
    await Deno.writeTextFile(join(dir, "bob.txt"), `"${await makeInvite(service.home, "bob")}"\n`);
    const saved = await client(join(dir, "bob"), ["join", "--invite-file", "bob.txt"], {
      cwd: dir,
    });
    assert.equal(saved.code, 0, saved.stderr);
    assert.match(saved.stdout, /^Joined https:\/\/127\.0\.0\.1:\d+ as "bob"\n/);
  });
});

Deno.test("client join with a used invite says to ask the admin for a new one", async () => {
  await withService(async (service, dir) => {
    const invite = await makeInvite(service.home, "alice");
    assert.equal((await client(join(dir, "alice"), ["join", "-"], { stdin: invite })).code, 0);
    const again = await client(join(dir, "alice2"), ["join", "-"], { stdin: invite });
    assertFailure(
      again,
      "The CA refused: Invalid, used or expired invite token",
      "ask your admin for a new invite (deno task ca invite alice): " +
        "each one works once, and only until it expires",
    );
  });
});

Deno.test("client chat --listen on a port in use says what to do", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = (taken.addr as Deno.NetAddr).port;
      const result = await client(bob.home, ["chat", "--listen", `127.0.0.1:${port}`]);
      assertFailure(
        result,
        `Cannot listen on 127.0.0.1:${port}`,
        "is that port in use, or the address not this machine's? " +
          "leave --listen out to take a free port on 127.0.0.1",
      );
    } finally {
      taken.close();
    }
  });
});

Deno.test("a member whose certificate the admin replaced with another key is told so, with both serials, not that it is on the revocation list", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const held = await serialOf(bob.home);
    const csr = join(dir, "other-bob.csr");
    await Deno.writeTextFile(csr, (await makeCsr("bob")).csr);
    const replaced = await runCa(service.home, ["sign", "--name", "bob", csr, "--replace"]);
    assert.equal(replaced.code, 0, replaced.stderr);
    const newer = parseCertificate(replaced.stdout).serial;
    const hint = "if you joined again from another home, use that one; if not, ask your admin " +
      "for a new invite (deno task ca invite bob) and join with it in another --home, and tell " +
      'them: someone else may now hold "bob"';
    for (const args of [["renew"], ["lookup", "bob"], ["audit"]]) {
      assertFailure(
        await client(bob.home, args),
        "The CA refused: The client certificate is revoked or superseded",
        hint,
      );
    }
    // A chat says it before it listens or says it is ready. Before: "Your certificate is on the
    // CA's revocation list", whatever the CA's reason.
    for (const args of [["chat", "--json"], ["chat"]]) {
      const result = await client(bob.home, args);
      assertFailure(
        result,
        `A newer certificate for "bob" was issued (serial ${newer}), for another key: this home ` +
          `holds an older one (serial ${held})`,
        hint,
      );
      assert.ok(!result.stdout.includes("ready"), result.stdout);
    }
  });
});

Deno.test("a member whose certificate the admin revoked is told at chat start that it is on the revocation list", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    assertSuccess(await runCa(service.home, ["revoke", "bob"]), "ca revoke");
    assertFailure(
      await client(bob.home, ["chat"]),
      "Your certificate is on the CA's revocation list",
      "the admin revoked it: if you should still be a member, ask your admin for a new invite " +
        "(deno task ca invite bob) and join with it in another --home",
    );
  });
});

/**
 * The hint for a home whose certificate was renewed elsewhere: by its user from another home, or
 * by someone holding a copy of the key (a renewal needs nothing more).
 */
const sameKeyHint = "if you renewed it from another home, use that home, or fetch the newer " +
  "certificate here with deno task client renew; if you did not, your key is in someone else's " +
  "hands: tell your admin to revoke it (deno task ca revoke bob --reason keyCompromise) and give " +
  "you a new invite (deno task ca invite bob), and join with it in another --home";

Deno.test("a copy of a home that renewed elsewhere is told at chat start that a newer certificate for its key was issued, and client renew there fetches it", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const copy = join(dir, "bob-copy");
    await copyTree(bob.home, copy);
    const held = await serialOf(copy);
    assertSuccess(await client(bob.home, ["renew"]), "client renew");
    const newer = await serialOf(bob.home);
    assert.notEqual(newer, held);
    assertFailure(
      await client(copy, ["chat"]),
      `A newer certificate for "bob" was issued (serial ${newer}), for this same key: this home ` +
        `holds an older one (serial ${held})`,
      sameKeyHint,
    );
    assertSuccess(await client(copy, ["renew"]), "client renew in the copy");
    assert.equal(await serialOf(copy), newer);
    const chat = await client(copy, [], { stdin: "/quit\n" });
    assert.equal(chat.code, 0, chat.stderr);
  });
});

Deno.test("a member whose key someone else renewed is told that, if it was not them, their key is in someone else's hands and the admin should revoke it", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const held = await serialOf(bob.home);
    // mallory holds a copy of bob's home (key and certificate) and renews with it.
    const stolen = join(dir, "mallory-has-bob");
    await copyTree(bob.home, stolen);
    assertSuccess(await client(stolen, ["renew"]), "client renew with the stolen key");
    const newer = await serialOf(stolen);
    // Before: only "it was renewed from another home with a copy of this key: use that home, or
    // fetch the newer certificate here", as if the renewal could only be bob's own.
    for (const args of [["chat"], ["chat", "--json"]]) {
      assertFailure(
        await client(bob.home, args),
        `A newer certificate for "bob" was issued (serial ${newer}), for this same key: this home ` +
          `holds an older one (serial ${held})`,
        sameKeyHint,
      );
    }
    for (const args of [["lookup", "bob"], ["audit"]]) {
      assertFailure(
        await client(bob.home, args),
        "The CA refused: The client certificate is revoked or superseded",
        sameKeyHint,
      );
    }
  });
});
Deno.test("a member whose key someone else renewed, renewing, takes the newer certificate but is told it was issued by a renewal this home did not make, and that the admin should revoke the key", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const stolen = join(dir, "mallory-has-bob");
    await copyTree(bob.home, stolen);
    assertSuccess(await client(stolen, ["renew"]), "client renew with the stolen key");
    const newer = parseCertificate(await Deno.readTextFile(join(stolen, "id", "cert.pem")));
    // Issued when mallory renewed: five minutes after its notBefore (the CA backdates).
    const at = new Date(newer.notBefore.getTime() + 5 * 60_000).toISOString();
    // Before: "Renewed "bob": valid until …", and nothing else, as if bob had asked for it.
    const renew = await client(bob.home, ["renew"]);
    assert.equal(renew.code, 0, renew.stderr);
    assert.match(renew.stdout, /^Renewed "bob": valid until /);
    assert.equal(
      renew.stderr,
      `e2e-chat: warning: A certificate for your key was issued at ${at} by a renewal this home ` +
        "did not make; this home uses it now\n" +
        "e2e-chat: hint: if you did not renew from another home, your key is in someone else's " +
        "hands: have your admin revoke it (deno task ca revoke bob --reason keyCompromise) and " +
        "give you a new invite (deno task ca invite bob), and join with it in another --home\n",
    );
    assert.equal(await serialOf(bob.home), newer.serial, "the certificate for our key, taken");
    // Told once: the next renewal is bob's own.
    const next = await client(bob.home, ["renew"]);
    assertSuccess(next, "the next renew");
    assert.equal(next.stderr, "");
  });
});
Deno.test("client web --open without a working browser opener says to open the address by hand", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const bin = join(dir, "bin");
    await Deno.mkdir(bin);
    for (const opener of ["xdg-open", "open"]) {
      await Deno.writeTextFile(join(bin, opener), "#!/bin/sh\nexit 3\n", { mode: 0o755 });
    }
    const web = await TaskProcess.start("client", ["web", "--open"], {
      env: { E2E_CHAT_HOME: bob.home, PATH: `${bin}:${Deno.env.get("PATH")}` },
    });
    try {
      const warning = await web.waitFor(
        () => /^e2e-chat: warning: Cannot open a browser: .*\n(.*\n)/m.exec(web.stderr)?.[1],
        "the warning and the line after it",
      );
      assert.equal(warning, "e2e-chat: hint: open the address above in your browser yourself\n");
      assert.match(web.stdout, /^http:\/\/127\.0\.0\.1:\d+\/session\?token=[0-9a-f]{64}$/m);
    } finally {
      await web.stop();
    }
  });
});

/**
 * bob, connected to alice, stops; he lost his key and joins again with a new invite (in
 * `dir`/bob-new). Returns the new bob, started and not yet connected.
 */
async function bobLosesHisKeyAndJoinsAgain(
  service: Parameters<typeof joinUser>[0],
  dir: string,
  alice: ChatClient,
  bob: ChatClient,
): Promise<ChatClient> {
  await connect(alice, bob);
  await bob.stop();
  await alice.expect({ type: "disconnected", peer: "bob" });
  return await ChatClient.start(await joinUser(service, "bob", join(dir, "bob-new")));
}

Deno.test("a message from a peer whose key changed is not shown, and the warning says it is not kept", async () => {
  await withService(async (service, dir) => {
    const alice = await ChatClient.start(await joinUser(service, "alice", join(dir, "alice")));
    let bob: ChatClient | undefined;
    try {
      bob = await ChatClient.start(await joinUser(service, "bob", join(dir, "bob")));
      bob = await bobLosesHisKeyAndJoinsAgain(service, dir, alice, bob);
      const mark = alice.mark();
      assert.equal((await connect(alice, bob)).atFrom.trust, "changed");
      await bob.send("sent from the new key");
      const warning = await alice.expect((e) =>
        e.type === "warning" && String(e.message).includes("a message from")
      );
      assert.equal(
        warning.message,
        'Did not show a message from "bob": its key changed. Compare the safety number, then ' +
          "trust the new key to hear from them; that message is not kept (bob can send it again).",
      );
      await alice.send("/trust bob");
      await alice.expect((e) => e.type === "warning" && /trust/i.test(String(e.message)));
      await alice.expectNone(mark, { type: "message" }, 700);
    } finally {
      await bob?.stop();
      await alice.stop();
    }
  });
});

Deno.test("the terminal chat says a key change kept from an earlier run at start, once: the peer, the new key and /trust", async () => {
  await withService(async (service, dir) => {
    const aliceUser = await joinUser(service, "alice", join(dir, "alice"));
    const alice = await ChatClient.start(aliceUser);
    let bob: ChatClient | undefined;
    let newKey = "";
    try {
      bob = await ChatClient.start(await joinUser(service, "bob", join(dir, "bob")));
      // alice sees the change.
      bob = await bobLosesHisKeyAndJoinsAgain(service, dir, alice, bob);
      const changed = await connect(alice, bob);
      assert.equal(changed.atFrom.trust, "changed");
      newKey = String(changed.atFrom.keyFingerprint);
      await alice.expect({ type: "key_changed", peer: "bob", keyFingerprint: newKey });
    } finally {
      await bob?.stop();
      await alice.stop();
    }
    // The next run, in the terminal: nothing trusted nor dismissed, so it is said at start.
    const run = await client(aliceUser.home, ["chat"], { stdin: "/quit\n" });
    assertSuccess(run, "client chat");
    // (Rows of 80 columns to a pipe: a continued row starts "  │ ".)
    const said = run.stdout.replaceAll("\n  │ ", " ").split("\n").filter((l) =>
      l.includes("key changed")
    );
    assert.equal(said.length, 1, run.stdout);
    assert.match(
      said[0],
      new RegExp(
        `^\\d\\d:\\d\\d WARNING: bob's key changed \\(key ${newKey.slice(0, 16)}… on a ` +
          "connection\\) — it may be someone else: /fingerprint bob to compare, /trust bob to accept$",
      ),
    );
  });
});

Deno.test("/file to a name never talked with says how to start", async () => {
  await withService(async (service, dir) => {
    const alice = await ChatClient.start(await joinUser(service, "alice", join(dir, "alice")));
    try {
      await alice.send(`/file dave ${join(dir, "notes.txt")}`);
      assert.equal(
        (await alice.expect({ type: "error" })).message,
        "No current peer: /file NAME PATH takes the NAME of someone you have talked with " +
          "(/chat NAME or /msg NAME first)",
      );
    } finally {
      await alice.stop();
    }
  });
});

Deno.test("a member whose certificate expired is told that it cannot be renewed and to ask for a new invite, not to renew", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    await expire(service, bob, join(dir, "ca-copy"));
    const whoami = await client(bob.home, ["whoami"]);
    assert.equal(whoami.code, 0, whoami.stderr);
    assert.equal(
      whoami.stdout.split("\n")[0],
      "bob (certificate expired, so it cannot be renewed: ask your admin for a new invite)",
    );
    for (const args of [["renew"], ["lookup", "bob"], ["chat"]]) {
      assertFailure(
        await client(bob.home, args),
        "Your certificate expired on 2020-01-08T00:00:00.000Z",
        "an expired certificate cannot be renewed: ask your admin for a new invite " +
          "(deno task ca invite bob) and join with it in another --home",
      );
    }
  });
});

Deno.test("the CA's refusal of an expired certificate tells its member that it expired, when, and to ask for a new invite, whatever the member's clock says", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    await expire(service, bob, join(dir, "ca-copy"));
    // The CA client reads why from the CA's 401 (its standing), not from this machine's clock:
    // a member whose clock is behind, for which the certificate is still valid, is told too.
    const ca = (await Identity.load(bob.home)).client();
    for (
      const call of [() => ca.lookup("bob"), () => ca.renew("not a request"), () => ca.pending()]
    ) {
      const e = await call().then(() => undefined, (e: unknown) => e);
      // Before: "The CA refused: The client certificate was not accepted", and no hint.
      assert.ok(e instanceof CertificateRefused, String(e));
      assert.equal(e.code, "ERR_UNAUTHENTICATED");
      assert.deepEqual(e.standing, {
        status: "expired",
        notAfter: new Date("2020-01-08T00:00:00.000Z"),
      });
      assert.equal(e.message, "Your certificate expired on 2020-01-08T00:00:00.000Z");
      assert.equal(
        e.hint,
        "an expired certificate cannot be renewed: ask your admin for a new invite " +
          "(deno task ca invite bob) and join with it in another --home",
      );
    }
  });
});

Deno.test("a command run in a home with no identity says to join, without the invite on the command line", async () => {
  await withTempDir(async (dir) => {
    assertFailure(
      await client(join(dir, "nobody"), ["whoami"]),
      `No identity in "${join(dir, "nobody", "id")}"`,
      "join first: deno task client join (it asks for the invite your admin gave you)",
    );
  });
});

Deno.test(
  "a key csr made, hand-signed and then revoked as keyCompromise is not certified again when " +
    "the member joins that home with the invite that replaces it: the join says why and how to " +
    "go on, and a join with a new key in another home works with the same invite",
  async () => {
    await withService(async (service, dir) => {
      const home = await aliceCsrSignedByTheCa(service, dir);
      assertSuccess(
        await runCa(service.home, ["revoke", "alice", "--reason", "keyCompromise"]),
        "ca revoke",
      );
      const invite = await makeInvite(service.home, "alice");
      const joined = await client(home, ["join", "-"], { stdin: `${invite}\n` });
      const idDir = join(home, "id");
      assertFailure(
        joined,
        `The CA refuses the key in "${idDir}": a certificate for it was revoked as compromised, ` +
          "and it is never certified again",
        "join with a new key: use another --home (or E2E_CHAT_HOME), or remove " +
          `"${idDir}" (the old key) and run this join again with the same invite`,
      );
      // The invite was not spent on it.
      const fresh = join(dir, "alice2");
      assertSuccess(await client(fresh, ["join", "-"], { stdin: `${invite}\n` }), "join anew");
      assertSuccess(await client(fresh, ["whoami"]), "whoami");
    });
  },
);

Deno.test(
  "a key csr made (and the CA signed) for alice is not certified for bob too by a join with " +
    "bob's invite in alice's home: the join says so and to use another home, where it works",
  async () => {
    await withService(async (service, dir) => {
      const home = await aliceCsrSignedByTheCa(service, dir);
      // The admin hands alice the wrong invite (bob's), or alice pastes the wrong one.
      const invite = await makeInvite(service.home, "bob");
      const joined = await client(home, ["join", "-"], { stdin: `${invite}\n` });
      assertFailure(
        joined,
        `The key in "${join(home, "id")}" was made for "alice" (client csr), not for "bob", ` +
          "whose invite this is",
        'join as "bob" in another --home (or E2E_CHAT_HOME): that makes a new key; this ' +
          `home's key stays "alice"'s`,
      );
      assert.deepEqual([...Deno.readDirSync(home)].map((e) => e.name).sort(), ["id"]);
      // The invite was not spent: bob joins with it in a home of his own.
      const bob = join(dir, "bob");
      assertSuccess(await client(bob, ["join", "-"], { stdin: `${invite}\n` }), "bob joins");
    });
  },
);

Deno.test(
  "a key csr made (and the CA signed) for alice is not certified for bob too once alice moved " +
    "her request.csr out of id/ to hand it to the admin",
  async () => {
    await withService(async (service, dir) => {
      const home = await aliceCsrSignedByTheCa(service, dir);
      // alice moved the request out to mail it to the admin (nothing says it must stay).
      await Deno.rename(join(home, "id", "request.csr"), join(dir, "alice.csr"));
      const aliceKey = parseCertificate(await Deno.readTextFile(join(dir, "a.crt")))
        .keyFingerprint;
      const invite = await makeInvite(service.home, "bob");
      const joined = await client(home, ["join", "-"], { stdin: `${invite}\n` });
      // Whatever refuses it (the join, or the CA), no certificate names bob with alice's key.
      const certs = join(service.home, "ca", "certs");
      const both = [...Deno.readDirSync(certs)]
        .map((e) => parseCertificate(Deno.readTextFileSync(join(certs, e.name))))
        .filter((c) => c.commonName === "bob" && c.keyFingerprint === aliceKey);
      assert.deepEqual(
        both.map((c) => c.serial),
        [],
        `alice's key certified for bob too (join exit ${joined.code}): one key, two names`,
      );
      assert.notEqual(joined.code, 0, "the join with bob's invite in alice's home");
    });
  },
);

/** alice makes a key and csr in `dir`/alice (`client csr alice`) and the admin signs it by hand. */
async function aliceCsrSignedByTheCa(service: Service, dir: string): Promise<string> {
  const home = join(dir, "alice");
  assertSuccess(await client(home, ["csr", "alice"]), "client csr alice");
  const csrPath = join(home, "id", "request.csr");
  assertSuccess(
    await runCa(service.home, [
      "sign",
      "--name",
      "alice",
      csrPath,
      "--out",
      join(dir, "a.crt"),
    ]),
    "ca sign",
  );
  return home;
}
