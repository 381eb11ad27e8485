/**
 * A join whose reply is lost after the CA committed (docs/API.md "POST
 * /v1/enroll"): the real service, the real client processes, and a TCP relay
 * between them that lets everything through except the CA's reply once the
 * CA's index holds the new certificate — so the loss happens exactly after the
 * commit, as a dropped connection or a killed client would leave it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isEncryptedKey, unlockKey } from "../lib/keys.ts";
import { parseCertificate } from "../lib/x509.ts";
import { readIndex } from "../ca/store.ts";
import { CaPaths } from "../ca/home.ts";
import { TaskProcess, waitUntil } from "./_harness.ts";
import { runCa } from "./_helpers.ts";
import { tree } from "./_hostile_helpers.ts";
import {
  assertSuccess,
  committedFor,
  makeInvite,
  runClient,
  serialsOf,
  type Service,
  withService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";

const INVALID = "The CA refused: Invalid, used or expired invite token";
const KEY_PASSPHRASE = "a key passphrase for the retry";

/** The relay to `service`, cutting replies once the index names `name`, and an invite through it. */
async function withCutter<T>(
  service: Service,
  name: string,
  fn: (cutter: TcpRelay, invite: string) => Promise<T>,
): Promise<T> {
  const cutter = await TcpRelay.start(service.port, { after: committedFor(service, name) });
  try {
    const invite = await makeInvite(service.home, name, "--url", `127.0.0.1:${cutter.port}`);
    return await fn(cutter, invite);
  } finally {
    await cutter.close();
  }
}

function assertRefused(result: { code: number; stderr: string }, message: string, what: string) {
  assert.notEqual(result.code, 0, `${what}: it succeeded`);
  assert.ok(
    result.stderr.includes(`e2e-chat: error: ${message}`),
    `${what}: ${result.stderr}`,
  );
}

Deno.test("a join whose reply is lost after the CA committed is retried with the same key and gets the same certificate; the CA holds one certificate for the name", async () => {
  await withService(async (service, dir) => {
    await withCutter(service, "alice", async (cutter, invite) => {
      const home = join(dir, "alice");
      cutter.mode = "drop";
      const lost = await runClient(home, ["join", invite]);
      assertRefused(lost, "The CA service at", "the join whose reply was cut");
      assert.match(lost.stderr, /did not answer/);
      assert.equal(cutter.withheld, 1);
      const [serial] = await serialsOf(service, "alice");
      assert.ok(serial, "the CA committed before the reply was cut");
      assert.deepEqual(await tree(home), ["joining/", "joining/identity.json", "joining/key.pem"]);
      const key = await Deno.readTextFile(join(home, "joining", "key.pem"));

      // That key is for alice at this CA only: an invite for another name leaves it alone.
      const bob = await makeInvite(service.home, "bob");
      const other = await runClient(home, ["join", bob]);
      assertRefused(other, `"${join(home, "joining")}" holds the key of an unfinished join`, "bob");
      assert.deepEqual(await serialsOf(service, "bob"), []);
      // Nor is it used with an invite for alice that pins another CA (refused before any request).
      const elsewhere = invite.replace(/fp=[0-9a-f]{64}/, `fp=${"ab".repeat(32)}`);
      assert.notEqual(elsewhere, invite);
      const before = service.log.length;
      assertRefused(
        await runClient(home, ["join", elsewhere]),
        `"${join(home, "joining")}" holds the key of an unfinished join`,
        "another CA",
      );
      assert.equal(service.log.slice(before), "", "a request went out");

      cutter.mode = "pass";
      const retried = await runClient(home, ["join", invite]);
      assertSuccess(retried, "the retried join");
      const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
      assert.equal(cert.serial, serial);
      assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key);
      assert.ok(retried.stdout.includes(cert.fingerprint), retried.stdout);
      assert.deepEqual(await serialsOf(service, "alice"), [serial]);
      await service.waitForLog(/ POST \/v1\/enroll 200 alice again /);
      assert.equal(service.log.match(/ POST \/v1\/enroll 200 alice /g)?.length, 2, service.log);
      // The identity works: the service takes its certificate.
      assertSuccess(await runClient(home, ["lookup", "alice"]), "lookup with the identity");
      assert.equal((await tree(home)).some((p) => p.startsWith("joining")), false);
    });
  });
});

Deno.test("a join killed after the CA committed, before the reply reached it, is retried with its encrypted key and gets the same certificate", async () => {
  await withService(async (service, dir) => {
    await withCutter(service, "alice", async (cutter, invite) => {
      const home = join(dir, "alice");
      const passFile = join(dir, "pass.txt");
      await Deno.writeTextFile(passFile, KEY_PASSPHRASE + "\n", { mode: 0o600 });
      cutter.mode = "hold";
      const client = await TaskProcess.start("client", [
        "join",
        invite,
        "--passphrase-file",
        passFile,
      ], {
        env: { E2E_CHAT_HOME: home },
      });
      try {
        await waitUntil(() => cutter.withheld > 0, "the CA's reply to reach the relay", 30_000);
      } finally {
        client.kill("SIGKILL");
        await client.stop();
      }
      const [serial] = await serialsOf(service, "alice");
      assert.ok(serial);
      const key = await Deno.readTextFile(join(home, "joining", "key.pem"));
      assert.ok(isEncryptedKey(key));
      cutter.mode = "pass";
      // Without its passphrase the key stays locked, and nothing is sent.
      const locked = await runClient(home, ["join", invite]);
      assertRefused(locked, "Cannot unlock the key of your unfinished join", "no passphrase");
      assert.match(locked.stderr, /^e2e-chat: hint: join again with the passphrase/m);
      assert.equal(service.log.match(/ POST \/v1\/enroll /g)?.length, 1, service.log);
      const retried = await runClient(home, ["join", invite, "--passphrase-file", passFile]);
      assertSuccess(retried, "the retried join");
      const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
      assert.equal(cert.serial, serial);
      assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key);
      assert.deepEqual(await serialsOf(service, "alice"), [serial]);
    });
  });
});

Deno.test("a used invite joined again with another key is refused as before, and nothing is issued or left behind", async () => {
  await withService(async (service, dir) => {
    const invite = await makeInvite(service.home, "alice");
    assertSuccess(await runClient(join(dir, "alice"), ["join", invite]), "the first join");
    const serials = await serialsOf(service, "alice");
    const home = join(dir, "thief");
    const refused = await runClient(home, ["join", invite]);
    assertRefused(refused, INVALID, "another key");
    assert.match(refused.stderr, /^e2e-chat: hint: ask your admin for a new invite/m);
    assert.deepEqual(await serialsOf(service, "alice"), serials);
    // A new key the CA refused went nowhere: it is not kept.
    assert.deepEqual(await tree(home), []);
  });
});

Deno.test("a retried join whose certificate was revoked (as compromised) meanwhile is refused as before; a new invite gives up that key and makes a new one, encrypted when asked", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    const key = await withCutter(service, "alice", async (cutter, invite) => {
      cutter.mode = "drop";
      assert.notEqual((await runClient(home, ["join", invite])).code, 0);
      assert.equal(cutter.withheld, 1);
      assertSuccess(
        await runCa(service.home, ["revoke", "alice", "--reason", "keyCompromise"]),
        "ca revoke",
      );
      cutter.mode = "pass";
      assertRefused(await runClient(home, ["join", invite]), INVALID, "the revoked one");
      return await Deno.readTextFile(join(home, "joining", "key.pem"));
    });
    const [revoked] = await serialsOf(service, "alice");
    const entries = await readIndex(new CaPaths(service.home));
    assert.equal(entries.find((e) => e.serial === revoked)?.status, "R");
    const again = await makeInvite(service.home, "alice");
    // The unfinished join's key belongs to its own invite: the admin revoked that key's
    // certificate as compromised and sent a new invite, which must not certify the key again.
    const passFile = join(dir, "pass.txt");
    await Deno.writeTextFile(passFile, KEY_PASSPHRASE + "\n", { mode: 0o600 });
    assertSuccess(
      await runClient(home, ["join", again, "--passphrase-file", passFile]),
      "the join with a new invite",
    );
    const keyPath = join(home, "id", "key.pem");
    assert.ok(isEncryptedKey(await Deno.readTextFile(keyPath)));
    assert.notEqual(await unlockKey(keyPath, { passphrase: KEY_PASSPHRASE }), key);
    const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
    assert.notEqual(cert.serial, revoked);
    const old = parseCertificate(
      await Deno.readTextFile(new CaPaths(service.home).certFile(revoked)),
    );
    assert.notEqual(cert.keyFingerprint, old.keyFingerprint);
    assert.deepEqual(await serialsOf(service, "alice"), [revoked, cert.serial]);
  });
});

Deno.test(
  "a join of a csr home killed while it empties HOME/id (to put the identity there) leaves a " +
    "home that whoami explains and a second join finishes, with the certificate already issued",
  async () => {
    const { stracePath } = await import("./_syscalls.ts");
    const { childEnv, ROOT, runTask, taskFlags } = await import("./_harness.ts");
    const strace = await stracePath();
    if (!strace) return;
    const client = (home: string, args: string[], stdin?: string) =>
      runTask("client", args, { env: { E2E_CHAT_HOME: home }, timeoutMs: 60_000, stdin });
    await withService(async (service, dir) => {
      const home = join(dir, "alice");
      assertSuccess(await client(home, ["csr", "alice"]), "client csr alice");
      const invite = await makeInvite(service.home, "alice");
      // A real kill -9 of the join at its second call that unlinks in HOME/id: key.pem is gone,
      // request.csr (and the rename of HOME/joining after it) is not.
      const idDir = join(home, "id");
      const killed = new Deno.Command(strace, {
        args: [
          ...["-f", "-qq", "-o", "/dev/null", "-P", idDir, "-P", join(idDir, "key.pem")],
          ...["-P", join(idDir, "request.csr"), "-e", "trace=unlinkat,unlink,rmdir"],
          ...["-e", "inject=unlinkat,unlink,rmdir:signal=SIGKILL:when=2"],
          ...[Deno.execPath(), "run", ...await taskFlags("client"), "client/main.ts", "join", "-"],
        ],
        cwd: ROOT,
        env: childEnv({ E2E_CHAT_HOME: home }),
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = killed.stdin.getWriter();
      await writer.write(new TextEncoder().encode(`${invite}\n`));
      await writer.close();
      const out = await killed.output();
      assert.notEqual(out.code, 0, "the join was not killed");
      assert.deepEqual([...Deno.readDirSync(idDir)].map((e) => e.name), ["request.csr"]);
      const serial = (await serialsOf(service, "alice")).at(-1);

      const whoami = await client(home, ["whoami"]);
      assert.equal(whoami.code, 1, whoami.stderr);
      assert.match(
        whoami.stderr,
        /a join was cut off while it put the identity in place: run the join again/,
      );
      // README: a join cut off: run it again with the same invite.
      assertSuccess(await client(home, ["join", "-"], `${invite}\n`), "the join run again");
      const me = await client(home, ["whoami", "--json"]);
      assertSuccess(me, "whoami");
      assert.equal(JSON.parse(me.stdout).serial, serial, "the certificate issued before the kill");
      assert.deepEqual([...Deno.readDirSync(home)].map((e) => e.name).includes("joining"), false);
    });
  },
);
