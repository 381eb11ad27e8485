/**
 * Edges of the join retry (docs/API.md "POST /v1/enroll", "A retry") found in
 * review: the real service, the real client processes, real openssl and TLS.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import { join } from "node:path";
import { parseCsr } from "../lib/csr.ts";
import { keyFingerprint, parseCertificate } from "../lib/x509.ts";
import { CaPaths } from "../ca/home.ts";
import { commitSomething } from "./_dishonest_ca.ts";
import { TaskProcess, waitUntil } from "./_harness.ts";
import { realOpenssl, tree } from "./_hostile_helpers.ts";
import {
  assertSuccess,
  committedFor,
  enrollUser,
  makeInvite,
  runClient,
  serialsOf,
  withService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";

Deno.test("a join that the CA committed and then answered with a 500 (its issuance log damaged) keeps its key, and the join run again once the log is repaired gets that certificate", async () => {
  await withService(async (service, dir) => {
    const paths = new CaPaths(service.home);
    await enrollUser(service, "bob"); // the log has entries and a checkpoint
    const invite = await makeInvite(service.home, "alice");
    const size = (await Deno.stat(paths.logEntries)).size;
    // Four bytes that are no record: the commit's log append after the index line refuses them.
    await Deno.writeFile(paths.logEntries, new Uint8Array(4), { append: true });
    const home = join(dir, "alice");
    const failed = await runClient(home, ["join", invite]);
    assert.notEqual(failed.code, 0, failed.stdout);
    assert.match(
      failed.stderr,
      /^e2e-chat: error: The CA service failed \(500\): Internal error$/m,
    );
    assert.match(
      failed.stderr,
      /^e2e-chat: hint: its log says why; the same command can be run again/m,
    );
    await service.waitForLog(/ POST \/v1\/enroll 500 /);
    const [serial] = await serialsOf(service, "alice");
    assert.ok(serial, "the CA committed before its log failed");
    // The CA may have issued (a 5xx is no refusal): the key is all that can claim it.
    assert.deepEqual(await tree(home), ["joining/", "joining/identity.json", "joining/key.pem"]);
    const key = await Deno.readTextFile(join(home, "joining", "key.pem"));

    // The operator repairs the log; the next commit brings it level with the database.
    await Deno.truncate(paths.logEntries, size);
    await commitSomething(service);
    const retried = await runClient(home, ["join", invite]);
    assertSuccess(retried, "the join run again");
    const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
    assert.equal(cert.serial, serial);
    assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key);
    assert.deepEqual(await serialsOf(service, "alice"), [serial]);
  });
});

/**
 * An openssl on PATH whose first `req` (the join's key and request) takes a few seconds: a join
 * started meanwhile runs while the first one makes its key.
 */
async function slowFirstKeyOpenssl(dir: string): Promise<{ PATH: string }> {
  const real = await realOpenssl();
  const bin = join(dir, "bin");
  const marker = join(dir, "first-req");
  await Deno.mkdir(bin);
  await Deno.writeTextFile(marker, "");
  await Deno.writeTextFile(
    join(bin, "openssl"),
    `#!/bin/sh\nif [ "$1" = req ] && rm '${marker}' 2>/dev/null; then sleep 3; fi\n` +
      `exec '${real}' "$@"\n`,
    { mode: 0o755 },
  );
  return { PATH: `${bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` };
}

Deno.test("two joins started at once in one home never take each other's key: the second is refused while the first runs, and the home ends with the certificate the CA issued and its key", async () => {
  await withService(async (service, dir) => {
    const relay = await TcpRelay.start(service.port, {
      mode: "queue",
      after: committedFor(service, "alice"),
    });
    const joins: TaskProcess[] = [];
    try {
      const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${relay.port}`);
      const home = join(dir, "alice");
      const env = { E2E_CHAT_HOME: home, ...await slowFirstKeyOpenssl(dir) };
      joins.push(await TaskProcess.start("client", ["join", invite], { env }));
      // The first join is making its key (its slow openssl) when the second one starts.
      await waitUntil(() => tree(home).then((t) => t.includes("joining/identity.json")), "join 1");
      joins.push(await TaskProcess.start("client", ["join", invite], { env }));
      await waitUntil(() => joins.some((j) => j.exited), "one join to end", 30_000);
      const [first, second] = joins[0].exited ? joins : [joins[1], joins[0]];
      assert.notEqual((await first.status).code, 0, first.stdout);
      assert.match(first.stderr, /^e2e-chat: error: Another join runs in /m, first.stderr);
      relay.release();
      assert.equal((await second.status).code, 0, second.stderr);
      const [serial, ...more] = await serialsOf(service, "alice");
      assert.deepEqual(more, []);
      const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
      assert.equal(cert.serial, serial);
      const key = createPrivateKey(await Deno.readTextFile(join(home, "id", "key.pem")));
      assert.equal(keyFingerprint(createPublicKey(key)), cert.keyFingerprint);
    } finally {
      for (const j of joins) {
        if (!j.exited) j.kill("SIGKILL");
        await j.stop();
      }
      await relay.close();
    }
  });
});

Deno.test("a key an unfinished join left without its record (no request can have gone out) is given up: the join makes a new key and enrolls", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    // A crash between the key's write and the record's: only the key is there.
    await Deno.mkdir(join(home, "joining"), { recursive: true, mode: 0o700 });
    const left = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    await Deno.writeTextFile(
      join(home, "joining", "key.pem"),
      left.export({ type: "pkcs8", format: "pem" }) as string,
      { mode: 0o600 },
    );
    const joined = await runClient(home, ["join", await makeInvite(service.home, "alice")]);
    assertSuccess(joined, "client join");
    const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
    assert.notEqual(cert.keyFingerprint, keyFingerprint(createPublicKey(left)));
    assert.deepEqual(await tree(home), [
      "id/",
      "id/ca.crt",
      "id/cert.pem",
      "id/identity.json",
      "id/key.pem",
      "log.json",
      "log.json.lock", // empty: what writers of log.json lock (client/home.ts)
    ]);
  });
});

Deno.test("an empty HOME/id (made by hand, or left by a crash before anything was written in it) is no identity: the join enrolls; one that holds anything is still refused as existing", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await Deno.mkdir(join(home, "id"), { recursive: true, mode: 0o755 });
    assertSuccess(
      await runClient(home, ["join", await makeInvite(service.home, "alice")]),
      "client join into an empty id/",
    );
    assert.deepEqual(await tree(join(home, "id")), [
      "ca.crt",
      "cert.pem",
      "identity.json",
      "key.pem",
    ]);
    assert.equal((await Deno.stat(join(home, "id"))).mode! & 0o777, 0o700);

    // Something in id/, even a stray file: refused as before, and left as it was.
    const other = join(dir, "bob");
    await Deno.mkdir(join(other, "id"), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(join(other, "id", "notes.txt"), "mine\n");
    const refused = await runClient(other, ["join", await makeInvite(service.home, "bob")]);
    assert.notEqual(refused.code, 0, "the join into a non-empty id/ succeeded");
    assert.ok(
      refused.stderr.includes(
        `e2e-chat: error: "${
          join(other, "id")
        }" already exists: this home has an identity or a key`,
      ),
      refused.stderr,
    );
    assert.deepEqual(await tree(join(other, "id")), ["notes.txt"]);
    assert.deepEqual(await serialsOf(service, "bob"), []);
  });
});

Deno.test("a HOME/id that holds only the temporary file of a key write cut short (client csr killed before its link) is no identity: the join enrolls", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    // What lib/fs.ts writeFileAtomic leaves when killed between its write and its link: the
    // key's bytes under `.UUID.tmp`, no key.pem, no request.
    await Deno.mkdir(join(home, "id"), { recursive: true, mode: 0o700 });
    const left = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    await Deno.writeTextFile(
      join(home, "id", `.${crypto.randomUUID()}.tmp`),
      left.export({ type: "pkcs8", format: "pem" }) as string,
      { mode: 0o600 },
    );
    const joined = await runClient(home, ["join", await makeInvite(service.home, "alice")]);
    assertSuccess(joined, "client join into an id/ a killed client csr left");
    const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
    assert.notEqual(cert.keyFingerprint, keyFingerprint(createPublicKey(left)));
    assert.deepEqual(await tree(join(home, "id")), [
      "ca.crt",
      "cert.pem",
      "identity.json",
      "key.pem",
    ]);
  });
});

Deno.test("client csr killed after its key was written but before its request was gives the request for that key when run again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-csr-" });
  try {
    const home = join(dir, "alice");
    assertSuccess(await runClient(home, ["csr", "alice"]), "client csr");
    const key = await Deno.readTextFile(join(home, "id", "key.pem"));
    // A kill between the key's write and the request's leaves the key alone.
    await Deno.remove(join(home, "id", "request.csr"));
    const again = await runClient(home, ["csr", "alice"]);
    assertSuccess(again, "client csr run again");
    assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key, "the same key");
    const request = parseCsr(await Deno.readFile(join(home, "id", "request.csr")));
    assert.equal(request.keyFingerprint, keyFingerprint(createPublicKey(createPrivateKey(key))));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("client csr run again with another --key-type than the key an earlier run left alone refuses, naming both, and keeps the key; without --key-type it makes that key's request", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-csr-" });
  try {
    const home = join(dir, "alice");
    assertSuccess(await runClient(home, ["csr", "alice", "--key-type", "rsa-2048"]), "client csr");
    const key = await Deno.readTextFile(join(home, "id", "key.pem"));
    await Deno.remove(join(home, "id", "request.csr")); // killed before its request
    const other = await runClient(home, ["csr", "alice", "--key-type", "ed25519"]);
    assert.notEqual(other.code, 0, "a csr for another key type than the key left");
    assert.match(other.stderr, /rsa-2048 key .* not ed25519/);
    assert.match(other.stderr, /--key-type rsa-2048/);
    assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key, "the key is kept");
    await assert.rejects(Deno.stat(join(home, "id", "request.csr")), Deno.errors.NotFound);
    assertSuccess(await runClient(home, ["csr", "alice"]), "client csr without --key-type");
    const request = parseCsr(await Deno.readFile(join(home, "id", "request.csr")));
    assert.equal(request.keyFingerprint, keyFingerprint(createPublicKey(createPrivateKey(key))));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
