/**
 * The dishonest CA, end to end (docs/TRANSPARENCY.md): a real CA service, real
 * clients and the real openssl. Each test plays a CA that misbehaves the way a
 * compromised or coerced one would — with its own key and its own database —
 * and checks that the software, not a person, catches it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CaPaths } from "../ca/home.ts";
import { ChatClient, deadline, runTask } from "./_harness.ts";
import { copyTree, makeCsr, PASSPHRASE, runCa } from "./_helpers.ts";
import { joinUser, RawPeer, type User } from "./_chat_helpers.ts";
import {
  assertSuccess,
  httpsRequest,
  type Service,
  startService,
  withService,
} from "./_service_helpers.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { commitSomething, signBehindTheirBacks } from "./_dishonest_ca.ts";
import { crlSignedAt, keepServiceKey, poseAsService } from "./_impostor.ts";
import { parseCertificate } from "../lib/x509.ts";
import { CertificateAuthority } from "../ca/authority.ts";
import { normalizeSerialHex, parseCrlDer } from "../lib/crl.ts";
import { logProofJson } from "../lib/log_proof.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { encodeFrame, PROTOCOL_VERSION } from "../lib/frames.ts";

async function audit(user: User): Promise<{ code: number; stdout: string; stderr: string }> {
  return await runTask("client", ["audit"], { env: { E2E_CHAT_HOME: user.home } });
}

// The CA signs `user`'s own key again with the whole member profile, outside its database and
// log: only its absence from the log is wrong.
async function signOutsideTheLog(service: Service, dir: string, user: User): Promise<string> {
  const caDir = join(service.home, "ca");
  const { csr } = await makeCsr(user.name, { keyPem: await Deno.readTextFile(user.keyPath) });
  const csrPath = join(dir, `${user.name}-again.csr`);
  await Deno.writeTextFile(csrPath, csr);
  await Deno.writeTextFile(
    join(dir, "ext.cnf"),
    `subjectAltName = DNS:${user.name}\nbasicConstraints = critical, CA:FALSE\n` +
      "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth, clientAuth\n",
  );
  const { stdout } = await openssl([
    ...[
      "x509",
      "-req",
      "-in",
      csrPath,
      "-CA",
      join(caDir, "ca.crt"),
      "-CAkey",
      join(caDir, "ca.key"),
    ],
    ...["-passin", PASSPHRASE_ARG, "-set_serial", "0x1234", "-days", "1"],
    ...["-extfile", join(dir, "ext.cnf")],
  ], { passphrase: PASSPHRASE });
  return new TextDecoder().decode(stdout);
}

Deno.test("a certificate for bob with another key, issued and logged, raises log_alarm at bob and client audit fails naming it", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const before = await audit(bob);
    assert.equal(before.code, 0, before.stdout + before.stderr);
    assert.match(before.stdout, /No certificate for "bob" but yours/);

    const { key: mallory } = await makeCsr("bob");
    const evil = await signBehindTheirBacks(service, "bob", mallory);
    await commitSomething(service);
    const evilFingerprint = parseCertificate(evil).fingerprint;

    const client = await ChatClient.start(bob, { failOnError: false });
    try {
      const alarm = await client.expect({ type: "log_alarm" });
      assert.match(
        String(alarm.message),
        /issued a certificate for your name that you did not request/,
      );
      assert.equal(alarm.fingerprint, evilFingerprint);
      // No new connections while the alarm stands.
      await client.send("/chat alice");
      await client.expect((e) => e.type === "error" && /alarm/.test(String(e.message)));
    } finally {
      await client.stop();
    }
    const after = await audit(bob);
    assert.equal(after.code, 1, after.stdout + after.stderr);
    assert.match(after.stdout, new RegExp(`fingerprint ${evilFingerprint}`));
    assert.match(after.stdout, /serial [0-9A-F]+/);
    // Nor does client lookup show a certificate while it stands, as the chat connects to none.
    const lookup = await runTask("client", ["lookup", "bob"], { env: { E2E_CHAT_HOME: bob.home } });
    assert.equal(lookup.code, 1, lookup.stdout);
    assert.match(
      lookup.stderr,
      /^e2e-chat: error: Refused: the CA's issuance log raised an alarm\n/,
    );
  });
});

Deno.test("a certificate for bob with another key logged after his own raises log_alarm at bob and fails client audit even when the CRL bob is served lists it", async () => {
  await withService(async (service, dir) => {
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const before = await audit(bob);
    assert.equal(before.code, 0, before.stdout + before.stderr);

    const { key: mallory } = await makeCsr("bob");
    const evil = parseCertificate(await signBehindTheirBacks(service, "bob", mallory));
    await commitSomething(service);
    // The CA puts it on the CRL it serves bob (here the only CRL; a dishonest CA keeps serving
    // alice the one before, without it: CRLs are not in the log, nothing ties the two together)
    // and shows it to alice as bob's, with its proof of being in the one log everybody sees.
    assertSuccess(
      await runCa(service.home, ["revoke", evil.serial], {
        env: { E2E_CHAT_CA_PASSPHRASE: PASSPHRASE },
      }),
      "ca revoke",
    );
    // The chat's watcher reads only the entries since the audit ...
    const client = await ChatClient.start(bob, { failOnError: false });
    try {
      const alarm = await client.expect({ type: "log_alarm" });
      assert.equal(alarm.fingerprint, evil.fingerprint);
    } finally {
      await client.stop();
    }
    // ... and client audit reads the whole log, with its state cleared by hand, to the same end.
    await Deno.remove(join(bob.home, "log.json"));
    const after = await audit(bob);
    assert.equal(after.code, 1, after.stdout + after.stderr);
    assert.match(
      after.stdout,
      new RegExp(`serial ${evil.serial}, fingerprint ${evil.fingerprint}`),
    );
  });
});

Deno.test("a member who lost his key and joined again with a new invite audits clean: the old certificate, superseded, was logged before the new key's first", async () => {
  await withService(async (service, dir) => {
    await joinUser(service, "bob", join(dir, "bob"));
    const again = await joinUser(service, "bob", join(dir, "bob-again"));
    const result = await audit(again);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /No certificate for "bob" but yours/);
  });
});

Deno.test("a certificate made with the CA key outside the log is refused by peers, even with the right key", async () => {
  await withService(async (service, dir) => {
    const [alice, bob] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    const unlogged = await signOutsideTheLog(service, dir, bob);
    const key = await Deno.readTextFile(bob.keyPath);
    const logged = await Deno.readTextFile(bob.certPath);

    const a = await ChatClient.start(alice);
    try {
      const mark = a.mark();
      await a.send("/chat bob");
      await a.expect({ type: "invited", to: "bob" });
      // Our CA, bob's name, the very key the directory gave alice — but not in the log.
      const impostor = RawPeer.connect(a.port, { cert: unlogged, key });
      await deadline(
        impostor.closed,
        10_000,
        "alice closing the unlogged certificate's connection",
      );
      assert.equal(impostor.lines.length, 0, "alice sent nothing to the unlogged certificate");
      await a.expectNone(mark, { type: "connected" });

      // bob's logged certificate gets in on the same invitation (connected once its hello came).
      const real = RawPeer.connect(a.port, { cert: logged, key });
      real.write(encodeFrame({ type: "hello", v: PROTOCOL_VERSION }));
      try {
        assert.equal((await a.expect({ type: "connected" })).peer, "bob");
      } finally {
        real.destroy();
      }
    } finally {
      await a.stop();
    }
  });
});

/**
 * Runs `client lookup bob` as `alice` against a dishonest CA: one that answers with the service's
 * own TLS key, everything as the real service says it (asked with alice's certificate), but the
 * directory's answer for bob changed by `swap`, and what `answers` has for a path answered so.
 */
async function lookupThroughDishonestCa(
  service: Service,
  alice: User,
  swap: (reply: Record<string, unknown>) => unknown,
  answers: Record<string, { type: string; body: string }> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const aliceCreds = {
    cert: await Deno.readTextFile(alice.certPath),
    key: await Deno.readTextFile(alice.keyPath),
  };
  const server = await poseAsService(
    await keepServiceKey(new CaPaths(service.home)),
    async (req, res) => {
      const own = answers[req.url ?? ""];
      if (own) {
        res.writeHead(200, { "content-type": own.type });
        res.end(own.body);
        return;
      }
      const real = await httpsRequest(service.url + req.url, {
        method: req.method,
        headers: { accept: req.headers.accept ?? "*/*" },
        ca: service.caPem,
        ...aliceCreds,
      });
      let body = real.body;
      if (req.url === "/v1/certs/bob") body = JSON.stringify(swap(JSON.parse(body)));
      res.writeHead(real.status, { "content-type": String(real.headers["content-type"]) });
      res.end(body);
    },
  );
  const file = join(alice.home, "id", "identity.json");
  const identity = await Deno.readTextFile(file);
  try {
    await Deno.writeTextFile(file, JSON.stringify({ ...JSON.parse(identity), caUrl: server.url }));
    return await runTask("client", ["lookup", "bob"], { env: { E2E_CHAT_HOME: alice.home } });
  } finally {
    await Deno.writeTextFile(file, identity);
    await server.close();
  }
}

Deno.test("client lookup refuses a directory answer whose certificate is not in the log", async () => {
  await withService(async (service, dir) => {
    const [alice, bob] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    const unlogged = await signOutsideTheLog(service, dir, bob);
    const result = await lookupThroughDishonestCa(service, alice, (reply) => ({
      ...reply,
      certificate: unlogged,
    }));
    assert.notEqual(result.code, 0, result.stdout);
    assert.ok(!result.stdout.includes(unlogged.trim()), "the unlogged certificate was shown");
    assert.match(result.stderr, /The certificate is not in the CA's issuance log/, result.stderr);
  });
});

Deno.test("a CA that lists a certificate for bob on the CRL bob gets and serves alice a CRL without it, showing it to her as bob's, is refused: alice takes only the newest CRL in the log", async () => {
  await withService(async (service, dir) => {
    // Before bob's first enrollment, the CA issues a certificate for "bob" with a key of its own,
    // and logs it (with a CRL that does not list it). bob's enrollment then supersedes it: the
    // CRL bob is served lists it, and his client excuses it (a previous enrollment, revoked).
    const { key: mallory } = await makeCsr("bob");
    const evilPem = await signBehindTheirBacks(service, "bob", mallory);
    const evil = parseCertificate(evilPem);
    await commitSomething(service);
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const alice = await joinUser(service, "alice", join(dir, "alice"));
    const clean = await audit(bob);
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);

    // What the CA shows alice: the certificate as bob's, with its valid proof of being in the
    // log, and a CRL that does not list it — one signed for her alone, or an older one in the log.
    const ca = await CertificateAuthority.open(service.home);
    const log = (await ca.readLog())!;
    const { text, checkpoint } = await log.checkpoint();
    const evilProof = await log.proofOf(pemDecode(evilPem, "CERTIFICATE")!);
    let older: { crl: string; log: unknown; number?: bigint } | undefined;
    let newest: unknown;
    let newestNumber: bigint | undefined;
    for (let i = 0; i < checkpoint.size; i++) {
      if (!log.isCrl(i)) continue;
      const [der] = await log.entries(i, i + 1);
      const proof = logProofJson(i, log.inclusionProof(i, checkpoint.size), text);
      const crl = parseCrlDer(der, ca.certificate.x509);
      newest = proof;
      newestNumber = crl.number;
      // Listed without leading zeros: 0E04C2… as E04C2… (openssl's random serials: 1 in 8).
      if (!crl.revoked.has(normalizeSerialHex(evil.serial))) {
        older = { crl: pemEncode(der, "X509 CRL"), log: proof, number: crl.number };
      }
    }
    assert.ok(older, "an older CRL in the log does not list it");
    assert.ok(older.number! < newestNumber!, `CRL ${older.number} is older than ${newestNumber}`);
    const forAlice = await crlSignedAt(new CaPaths(service.home), new Date());
    const swap = (reply: Record<string, unknown>) => ({
      ...reply,
      certificate: evilPem,
      log: evilProof,
    });
    const json = "application/json";
    const attempts: Array<[Record<string, { type: string; body: string }>, RegExp]> = [
      [{
        "/v1/crl": { type: "application/x-pem-file", body: forAlice },
        "/v1/log/crl": { type: json, body: JSON.stringify({ crl: forAlice, log: newest }) },
      }, /Cannot refresh the CRL: The CRL is not in the CA's issuance log/],
      [
        { "/v1/log/crl": { type: json, body: JSON.stringify({ crl: older.crl, log: older.log }) } },
        /Cannot refresh the CRL: Refused the CA's CRL number \d+: the issuance log holds a later one \(number \d+\), so serving this one is a rollback/,
      ],
    ];
    for (const [answers, why] of attempts) {
      const result = await lookupThroughDishonestCa(service, alice, swap, answers);
      assert.equal(result.code, 1, result.stdout);
      assert.ok(!result.stdout.includes(evil.fingerprint), "the CA's certificate was shown");
      assert.match(result.stderr, why, result.stderr);
      assert.match(result.stderr, /error: Cannot check revocation: no current CRL from the CA/);
    }
    // The honest answer: bob's own certificate, on the newest CRL in the log.
    const honest = await runTask("client", ["lookup", "bob"], {
      env: { E2E_CHAT_HOME: alice.home },
    });
    assert.equal(honest.code, 0, honest.stderr);
    assert.ok(!honest.stdout.includes(evil.fingerprint));
  });
});

Deno.test("the CRL members get from the log is the CA's crl.pem, and openssl crl reads it as it reads GET /v1/crl", async () => {
  await withService(async (service, dir) => {
    const alice = await joinUser(service, "alice", join(dir, "alice"));
    const revoked = parseCertificate(await Deno.readTextFile(alice.certPath)).serial;
    assertSuccess(
      await runCa(service.home, ["revoke", "alice"], {
        env: { E2E_CHAT_CA_PASSPHRASE: PASSPHRASE },
      }),
      "ca revoke",
    );
    const bob = await joinUser(service, "bob", join(dir, "bob"));
    const creds = {
      ca: service.caPem,
      cert: await Deno.readTextFile(bob.certPath),
      key: await Deno.readTextFile(bob.keyPath),
    };
    const logged = await httpsRequest(`${service.url}/v1/log/crl`, creds);
    assert.equal(logged.status, 200, logged.body);
    const { crl, log } = logged.json() as { crl: string; log: { index: number } };
    const plain = await httpsRequest(`${service.url}/v1/crl`, { ca: service.caPem });
    assert.equal(crl, plain.body);
    assert.equal(crl, await Deno.readTextFile(new CaPaths(service.home).crl));
    assert.ok(Number.isSafeInteger(log.index));
    const file = join(dir, "logged.crl");
    await Deno.writeTextFile(file, crl);
    const text = new TextDecoder().decode(
      (await openssl(["crl", "-in", file, "-noout", "-text"])).stdout,
    );
    assert.match(text, /Certificate Revocation List \(CRL\):/);
    assert.match(text, new RegExp(`Serial Number: 0*${revoked}`, "i"));
    // Members only, like the rest of the log.
    const anyone = await httpsRequest(`${service.url}/v1/log/crl`, { ca: service.caPem });
    assert.equal(anyone.status, 401, anyone.body);
  });
});

Deno.test("client lookup refuses a directory answer without a certificate as the chat does, not as an unexpected failure", async () => {
  await withService(async (service, dir) => {
    const [alice] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    for (const swap of [(r: Record<string, unknown>) => ({ ...r, certificate: 5 }), () => null]) {
      const result = await lookupThroughDishonestCa(service, alice, swap);
      assert.equal(result.code, 1, result.stdout);
      assert.equal(result.stdout, "");
      assert.equal(
        result.stderr,
        "e2e-chat: error: The peer's certificate was rejected\n",
        result.stderr,
      );
    }
  });
});

Deno.test("a CA that rewrites its history shows alice and bob forked logs, and they find out when they connect", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-fork-" });
  let service: Service | undefined;
  try {
    const caHome = join(dir, "ca-home");
    assertSuccess(await runCa(caHome, ["init", "--key-type", "ec-p256"]), "ca init");
    service = await startService(caHome);
    const port = service.port;
    const [alice, bob] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    // The branch point: the CA keeps a copy of its whole state.
    await service.stop();
    await copyTree(caHome, join(dir, "branch"));

    // History one: carol joins; alice sees that log.
    service = await startService(caHome, { args: ["--port", String(port), "--crl-port", "0"] });
    await joinUser(service, "carol", join(dir, "carol"));
    assert.equal((await audit(alice)).code, 0);

    // History two: the CA rolls back to the copy and issues something else; bob sees that.
    await service.stop();
    await Deno.remove(caHome, { recursive: true });
    await copyTree(join(dir, "branch"), caHome);
    service = await startService(caHome, { args: ["--port", String(port), "--crl-port", "0"] });
    await joinUser(service, "dave", join(dir, "dave"));
    assert.equal((await audit(bob)).code, 0, "bob alone cannot tell");

    const [a, b] = await Promise.all([
      ChatClient.start(alice, { failOnError: false }),
      ChatClient.start(bob, { failOnError: false }),
    ]);
    try {
      // alice's client reads the CA's log at start: it is not the one she saw.
      const seen = await Promise.race([
        a.expect({ type: "log_alarm" }).then(() => "alice"),
        b.expect({ type: "log_alarm" }).then(() => "bob"),
      ]);
      assert.ok(seen === "alice" || seen === "bob");
      const alarm = a.events.find((e) => e.type === "log_alarm") ??
        b.events.find((e) => e.type === "log_alarm");
      assert.match(String(alarm?.message), /not consistent/);
    } finally {
      await a.stop();
      await b.stop();
    }
    assert.equal((await audit(alice)).code, 1);
  } finally {
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("a log edited on disk is found by client audit and ca log verify; a truncated one by ca log verify", async () => {
  await withService(async (service, dir) => {
    const alice = await joinUser(service, "alice", join(dir, "alice"));
    await joinUser(service, "bob", join(dir, "bob"));
    const entries = join(service.home, "ca", "log", "entries");
    const verify = () => runTask("ca", ["log", "verify"], { env: { E2E_CHAT_HOME: service.home } });
    const ok = await verify();
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /OK: every certificate entry is the database's, in order/);

    const original = await Deno.readFile(entries);
    const edited = original.slice();
    edited[edited.length - 20] ^= 0x01;
    await Deno.writeFile(entries, edited);
    const bad = await verify();
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /PROBLEM: the entries do not hash to the checkpoint's root/);
    const audited = await audit(alice);
    assert.equal(audited.code, 1, audited.stdout + audited.stderr);
    assert.match(audited.stdout, /entries do not make its checkpoint/);

    await Deno.writeFile(entries, original.subarray(0, original.length - 100));
    const cut = await verify();
    assert.equal(cut.code, 1);
    assert.match(cut.stdout, /PROBLEM: .*torn last record/);
    assert.match(cut.stdout, /PROBLEM: the checkpoint has \d+ entries, the log only/);
  });
});

Deno.test("client lookup refuses a CRL older than the newest its home accepted, and says why", async () => {
  await withService(async (service, dir) => {
    const [alice] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    assertSuccess(
      await runTask("client", ["lookup", "bob"], { env: { E2E_CHAT_HOME: alice.home } }),
      "client lookup",
    );
    const kept = BigInt((await Deno.readTextFile(join(alice.home, "crl-number"))).trim());
    // As if an earlier run had taken a CRL the CA no longer serves: the one served now is a replay.
    await Deno.writeTextFile(join(alice.home, "crl-number"), `${kept + 1000n}\n`);
    const result = await runTask("client", ["lookup", "bob"], {
      env: { E2E_CHAT_HOME: alice.home },
    });
    assert.equal(result.code, 1, result.stdout);
    assert.equal(result.stdout, "");
    assert.equal(
      result.stderr,
      `e2e-chat: warning: Cannot refresh the CRL: CRL number ${kept} is older than the one held\n` +
        "e2e-chat: error: Cannot check revocation: no current CRL from the CA\n" +
        "e2e-chat: hint: is the CA service reachable?\n",
    );
  });
});

Deno.test("client lookup and client audit refuse a CA service whose own TLS certificate is on the CRL, with a hint, and the honest service replaces it within seconds", async () => {
  await withService(async (service, dir) => {
    const [alice] = await Promise.all([
      joinUser(service, "alice", join(dir, "alice")),
      joinUser(service, "bob", join(dir, "bob")),
    ]);
    // The service's key, kept by someone after its certificate was revoked, who passes on what
    // the service says (asked with alice's certificate).
    const paths = new CaPaths(service.home);
    const kept = await keepServiceKey(paths);
    const serial = kept.serial;
    assertSuccess(await runCa(service.home, ["revoke", serial]), "ca revoke");
    const aliceCreds = {
      cert: await Deno.readTextFile(alice.certPath),
      key: await Deno.readTextFile(alice.keyPath),
    };
    const impostor = await poseAsService(kept, async (req, res) => {
      const real = await httpsRequest(service.url + req.url, {
        method: req.method,
        headers: { accept: req.headers.accept ?? "*/*" },
        ca: service.caPem,
        ...aliceCreds,
      });
      res.writeHead(real.status, { "content-type": String(real.headers["content-type"]) });
      res.end(real.body);
    });
    const url = impostor.url;
    const file = join(alice.home, "id", "identity.json");
    const identity = await Deno.readTextFile(file);
    const env = { E2E_CHAT_HOME: alice.home };
    try {
      await Deno.writeTextFile(file, JSON.stringify({ ...JSON.parse(identity), caUrl: url }));
      // The CRL it passes on lists it: what is asked to check that CRL against the log is
      // refused, so the CRL is not taken, and the client says why.
      const said = `e2e-chat: warning: Cannot refresh the CRL: The CA service at ${url} presents ` +
        `a revoked certificate\n` +
        `e2e-chat: error: Cannot check revocation: no current CRL from the CA\n` +
        `e2e-chat: hint: the service replaces a revoked certificate within seconds: try again ` +
        `in a moment; one that keeps presenting it may be someone who kept the old key (tell ` +
        `the admin)\n`;
      const lookup = await runTask("client", ["lookup", "bob"], { env });
      assert.equal([lookup.code, lookup.stdout, lookup.stderr].join("|"), `1||${said}`);
      const audited = await audit(alice);
      assert.equal([audited.code, audited.stdout, audited.stderr].join("|"), `1||${said}`);
    } finally {
      await Deno.writeTextFile(file, identity);
      await impostor.close();
    }
    // The honest service presents a new certificate within seconds: it answers alice again.
    const until = Date.now() + 15_000;
    while (parseCertificate(await Deno.readTextFile(paths.serviceCert)).serial === serial) {
      assert.ok(Date.now() < until, "the service kept its revoked certificate");
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const lookup = await runTask("client", ["lookup", "bob"], { env });
    assert.equal(lookup.code, 0, lookup.stderr);
  });
});
