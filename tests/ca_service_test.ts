/**
 * End-to-end tests of the CA service against docs/API.md: the real service
 * (`ca/main.ts serve --port 0`) as its own process with the `ca` task's
 * permissions, the real openssl, real HTTPS on 127.0.0.1 and the real client
 * CLI. Certificates and CRLs are checked with openssl itself.
 *
 * Every test starts its own service on a fresh EC P-256 CA, so tests share
 * nothing; independent steps inside a test run concurrently to keep the file fast.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { join } from "node:path";
import net from "node:net";
import tls from "node:tls";
import { openssl, OpensslError } from "../lib/openssl.ts";
import { pemDecode } from "../lib/pem.ts";
import { sleep, TaskProcess, within } from "./_harness.ts";
import { makeCsr, PASSPHRASE, runCa, snapshot, withTempDir } from "./_helpers.ts";
import {
  assertApiError,
  assertSuccess,
  type EnrolledUser,
  enrollUser,
  expiredCertificate,
  initCa,
  inviteToken,
  makeInvite,
  runClient,
  type Service,
  startService,
  withService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";

const TOKEN_INVALID = "Invalid, used or expired invite token";
const HEX64 = /^[0-9a-f]{64}$/;
/** Services for tests that enroll more than the default 10 times a minute. */
const MANY_ENROLLMENTS = ["--enroll-rate", "1000"];

// ---------------------------------------------------------------------------
// Helpers

function sha256(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

function pemFingerprint(pem: string): string {
  const der = pemDecode(pem, "CERTIFICATE");
  assert.ok(der, "not a PEM certificate");
  return sha256(der);
}

function x509(pem: string): X509Certificate {
  return new X509Certificate(pem);
}

/** The serial of a certificate as openssl's index and `ca list` write it: uppercase hex, whole bytes. */
function serialOf(cert: string | X509Certificate): string {
  // node:crypto drops a leading zero digit ("0A…" becomes "A…").
  const hex = (typeof cert === "string" ? x509(cert) : cert).serialNumber.toUpperCase();
  return hex.length % 2 ? `0${hex}` : hex;
}

/** `openssl verify -CAfile ca.crt` of `certPath`; returns its output. */
async function opensslVerify(caPath: string, certPath: string, ...args: string[]) {
  const { stdout } = await openssl(["verify", ...args, "-CAfile", caPath, certPath], {
    timeoutMs: 10_000,
  });
  return new TextDecoder().decode(stdout);
}

/** `openssl s_client` against the service with stdin closed; returns stdout or throws OpensslError. */
async function sClient(service: Service, ...args: string[]): Promise<string> {
  const { stdout } = await openssl(
    ["s_client", "-connect", `127.0.0.1:${service.port}`, ...args],
    { timeoutMs: 10_000 },
  );
  return new TextDecoder().decode(stdout);
}

interface ListedRow {
  name: string;
  serial: string;
  status: string;
  reason?: string;
}

async function caList(home: string): Promise<ListedRow[]> {
  const result = await runCa(home, ["list", "--json"]);
  assertSuccess(result, "ca list --json");
  return JSON.parse(result.stdout);
}

/** openssl's index.txt, one array of tab-separated fields per line. */
async function indexLines(service: Service): Promise<string[][]> {
  const text = await Deno.readTextFile(join(service.caDir, "index.txt"));
  return text.split("\n").filter((l) => l).map((l) => l.split("\t"));
}

function mode(info: Deno.FileInfo): number {
  return (info.mode ?? 0) & 0o777;
}

/** Asserts that nothing the service printed holds one of `secrets`, a PEM block or the passphrase. */
function assertLogKeepsSecrets(service: Service, secrets: string[]): void {
  const printed = service.stdout + service.log;
  for (const secret of [...secrets, PASSPHRASE]) {
    assert.ok(!printed.includes(secret), `the service printed a secret: ${secret}\n${printed}`);
  }
  assert.doesNotMatch(printed, /-----BEGIN|PRIVATE KEY|CERTIFICATE REQUEST/);
}

/** Lines of a CSR's base64, each long enough to be unmistakable in a log. */
function csrLines(csr: string): string[] {
  return csr.split("\n").filter((l) => l.length >= 40 && !l.startsWith("-----"));
}

/** `fields` as JSON padded with an extra field to exactly `bytes` bytes. */
function sizedBody(fields: Record<string, string>, bytes: number): string {
  const bare = JSON.stringify({ ...fields, pad: "" });
  const body = JSON.stringify({ ...fields, pad: "x".repeat(bytes - bare.length) });
  assert.equal(new TextEncoder().encode(body).length, bytes);
  return body;
}

interface ApiErrorBody {
  error: { code: string; message: string };
}

function auth(user: EnrolledUser): { cert: string; key: string } {
  return { cert: user.cert, key: user.key };
}

// ---------------------------------------------------------------------------
// Startup, TLS and public routes

Deno.test("serve prints its URL and the CA fingerprint, and SIGTERM stops it with exit 0 and removes service.json", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    const service = await startService(home);
    let status: Deno.CommandStatus;
    const serviceJson = join(home, "ca", "service.json");
    try {
      const fingerprint = pemFingerprint(await Deno.readTextFile(join(home, "ca", "ca.crt")));
      assert.match(fingerprint, HEX64);
      assert.equal(service.fingerprint, fingerprint);
      assert.match(service.url, /^https:\/\/127\.0\.0\.1:\d{1,5}$/);
      assert.ok(service.port > 0 && service.port <= 65535 && service.port !== 65433);
      const crlUrl = (await Deno.readTextFile(join(home, "ca", "crl-url.txt"))).trim();
      assert.match(crlUrl, /^http:\/\/127\.0\.0\.1:\d{1,5}\/crl\.der$/);
      assert.deepEqual(service.stdout.trimEnd().split("\n"), [
        `e2e-chat CA service listening on ${service.url}`,
        `CRL (plain HTTP, named in every certificate): ${crlUrl}`,
        `CA fingerprint (SHA-256): ${fingerprint}`,
        "Invite a user with: deno task ca invite NAME",
      ]);
      assert.deepEqual(JSON.parse(await Deno.readTextFile(serviceJson)), {
        url: service.url,
        host: "127.0.0.1",
        port: service.port,
        fingerprint,
        pid: service.proc.pid,
      });
      assert.equal((await service.request("/v1/ca")).status, 200);
      status = await service.stop();
    } finally {
      await service.stop();
    }
    assert.equal(status.code, 0, service.log);
    assert.equal(status.signal, null);
    await assert.rejects(Deno.lstat(serviceJson), Deno.errors.NotFound);
    assert.match(service.log, /e2e-chat: CA service stopped\n$/);
    await assert.rejects(async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: service.port });
      conn.close();
    }, Deno.errors.ConnectionRefused);
  });
});

Deno.test("a second ca serve on a home whose service runs refuses before it asks for the passphrase, names the running one and changes nothing, while invite, list, log and revoke work beside it", async () => {
  await withService(async (service) => {
    const before = await snapshot(service.home);
    // No passphrase: the refusal comes first, and an admin is not asked for one in vain.
    const second = await runCa(service.home, ["serve", "--port", "0"], {
      env: { E2E_CHAT_CA_PASSPHRASE: "" },
    });
    assert.equal(second.code, 1, second.stderr);
    assert.equal(second.stdout, "");
    assert.equal(
      second.stderr,
      `e2e-chat: error: Another CA service runs on ${service.home}: pid ${service.proc.pid}, ` +
        `${service.url}\n` +
        `e2e-chat: hint: stop it first (kill -TERM ${service.proc.pid}), or serve another --home\n`,
    );
    // No certificate issued or superseded, no service.json or CRL URL written.
    assert.deepEqual(await snapshot(service.home), before);
    assert.equal((await service.request("/v1/ca")).status, 200);
    // The other commands take the CA's locks only briefly: they work beside the service.
    await enrollUser(service, "bob");
    for (const args of [["invite", "alice"], ["list"], ["log"], ["revoke", "bob"]]) {
      assertSuccess(await runCa(service.home, args), `ca ${args.join(" ")}`);
    }
    const invite = await runCa(service.home, ["invite", "carol"]);
    assert.match(invite.stdout, new RegExp(`127\\.0\\.0\\.1:${service.port}`));
    assert.equal((await service.request("/v1/ca")).status, 200);
    // Once the first has stopped, a service starts on that home again.
    await service.stop();
    const again = await startService(service.home);
    try {
      assert.equal((await again.request("/v1/ca")).status, 200);
    } finally {
      await again.stop();
    }
  });
});

Deno.test("a CA service killed with SIGKILL does not block the next start, which replaces its service.json, and ca invite meanwhile says it is not running instead of naming the dead one", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    const killed = await startService(home);
    killed.proc.kill("SIGKILL");
    await killed.stop();
    const serviceJson = join(home, "ca", "service.json");
    // What a kill leaves: the dead service's address, and its pid in the lock file.
    assert.equal(JSON.parse(await Deno.readTextFile(serviceJson)).port, killed.port);
    const invite = await runCa(home, ["invite", "alice"]);
    assertSuccess(invite, "ca invite alice");
    assert.match(invite.stdout, /^e2e-chat:\/\/127\.0\.0\.1:65433\/alice\?fp=[0-9a-f]{64}&token=/);
    assert.equal(
      invite.stderr,
      `e2e-chat: warning: no CA service runs on this home (the last one, pid ${killed.proc.pid}, ` +
        `listened at 127.0.0.1:${killed.port} and is gone), so the invite names 127.0.0.1:65433; ` +
        "if members reach the service elsewhere, make it again with --url HOST:PORT " +
        "(this one stays valid until it expires)\n" +
        "e2e-chat: hint: members can enroll only while it runs: deno task ca serve\n",
    );
    const next = await startService(home);
    try {
      assert.equal((await next.request("/v1/ca")).status, 200);
      const info = JSON.parse(await Deno.readTextFile(serviceJson));
      assert.deepEqual([info.url, info.pid], [next.url, next.proc.pid]);
      // The invite names the live one, and says nothing more.
      const live = await runCa(home, ["invite", "bob"]);
      assert.match(live.stdout, new RegExp(`^e2e-chat://127\\.0\\.0\\.1:${next.port}/bob\\?`));
      assert.equal(live.stderr, "");
      // A third start is told about the live one, not the dead one.
      const third = await runCa(home, ["serve", "--port", "0"]);
      assert.equal(third.code, 1, third.stderr);
      assert.match(
        third.stderr,
        new RegExp(`^e2e-chat: error: Another CA service runs on .*: pid ${next.proc.pid}, `),
      );
    } finally {
      await next.stop();
    }
  });
});

Deno.test("two ca serve started at once on an empty home make one CA: the other is refused as beside a running service, having made or overwritten nothing", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    const env = { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE };
    const both = await Promise.all(
      [0, 1].map(() => TaskProcess.start("ca", ["serve", "--port", "0"], { env })),
    );
    try {
      // The one refused stops (after the 5 s a restart is given); the other serves on.
      const refused = await within(
        Promise.race(both.map((p) => p.status.then(() => p))),
        60_000,
        undefined,
      );
      assert.ok(refused, `neither stopped:\n${both.map((p) => p.stderr).join("\n")}`);
      const serving = both.find((p) => p !== refused)!;
      assert.equal((await refused.status).code, 1);
      await refused.drained;
      assert.equal(refused.stdout, "");
      const pid = serving.pid;
      // Its URL once it listens, else "still starting" (it may still be making its key).
      const where = /, (https:\/\/127\.0\.0\.1:\d+|still starting)\n/.exec(refused.stderr)?.[1];
      assert.equal(
        refused.stderr,
        `e2e-chat: error: Another CA service runs on ${home}: pid ${pid}, ${where}\n` +
          `e2e-chat: hint: stop it first (kill -TERM ${pid}), or serve another --home\n`,
      );
      // The CA is the one the service made and announces, whole, with nothing staged left beside it.
      const [fingerprint] = await serving.waitFor(
        () => /^CA fingerprint \(SHA-256\): ([0-9a-f]{64})$/m.exec(serving.stdout)?.slice(1),
        "the service did not start",
        60_000,
      );
      assert.equal(
        pemFingerprint(await Deno.readTextFile(join(home, "ca", "ca.crt"))),
        fingerprint,
      );
      const entries = [];
      for await (const entry of Deno.readDir(home)) entries.push(entry.name);
      assert.deepEqual(entries.sort(), [".ca.lock", ".invites.lock", ".service.lock", "ca"]);
      assertSuccess(await runCa(home, ["log", "verify"]), "ca log verify");
    } finally {
      await Promise.all(both.map((p) => p.stop()));
    }
  });
});

Deno.test("SIGTERM ends a pending long poll and stops the service at once with exit 0", async () => {
  await withService(async (service) => {
    const bob = await enrollUser(service, "bob");
    const poll = service.request("/v1/rendezvous?wait=30", { ...auth(bob), timeoutMs: 40_000 })
      .then((reply) => reply.status, () => "closed");
    await sleep(300);
    const t0 = Date.now();
    const status = await service.stop();
    const ms = Date.now() - t0;
    assert.equal(status.code, 0, service.log);
    assert.ok(ms < 5_000, `the service took ${ms} ms to stop`);
    assert.ok(await within(poll, 5_000, undefined), "the long poll was left hanging");
  });
});

Deno.test("a member's rendezvous cursor still sees new invitations after the service restarts", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    type Pending = { invitations: Array<{ id: number; from: string }>; cursor: number };
    let service = await startService(home);
    try {
      const [alice, bob, carol] = await Promise.all(
        ["alice", "bob", "carol"].map((name) => enrollUser(service, name)),
      );
      const offer = (from: EnrolledUser, port: number) =>
        service.request("/v1/rendezvous", {
          method: "POST",
          json: { to: "bob", port, host: "192.0.2.7" },
          ...auth(from),
        });
      // A few offers move bob's cursor along, as a day of use does.
      for (let port = 40001; port <= 40005; port++) {
        assert.equal((await offer(alice, port)).status, 200);
      }
      const seen = (await service.request("/v1/rendezvous", auth(bob))).json() as Pending;
      assert.equal(seen.invitations.length, 1);

      assert.equal((await service.stop()).code, 0, service.log);
      service = await startService(home);
      const offered = await offer(carol, 40010);
      assert.equal(offered.status, 200, offered.body);
      // Bob's long poll goes on from the cursor it had: carol's invitation must be after it.
      const after = (await service.request(`/v1/rendezvous?after=${seen.cursor}`, auth(bob)))
        .json() as Pending;
      assert.deepEqual(after.invitations.map((i) => i.from), ["carol"]);
      assert.ok(after.cursor > seen.cursor);
      // A cursor above every id this run could give (the service's clock was set back since the
      // run that gave it) starts over: what waits is listed, and the cursor comes back to it.
      const ahead = after.cursor + 3_600_000 * 1024;
      const over = (await service.request(`/v1/rendezvous?after=${ahead}`, auth(bob)))
        .json() as Pending;
      assert.deepEqual(over.invitations.map((i) => i.from), ["carol"]);
      assert.equal(over.cursor, after.cursor);
    } finally {
      await service.stop();
    }
  });
});

Deno.test("the service certificate covers every --name, survives a restart, and is reissued when the names change", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    // One CRL port for every start: the certificate names the CRL URL, and a new URL means a new one.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const crlPort = String(listener.addr.port);
    listener.close();
    async function presented(...args: string[]): Promise<X509Certificate> {
      const service = await startService(home, { args: [...args, "--crl-port", crlPort] });
      try {
        const reply = await service.request("/v1/ca");
        assert.ok(reply.serverCertificate, "no server certificate");
        return new X509Certificate(reply.serverCertificate);
      } finally {
        assert.equal((await service.stop()).code, 0, service.log);
      }
    }
    const first = await presented("--name", "ca.example.test");
    assert.deepEqual((first.subjectAltName ?? "").split(", ").sort(), [
      "DNS:ca.example.test",
      "DNS:localhost",
      "IP Address:127.0.0.1",
    ]);
    const again = await presented("--name", "ca.example.test");
    assert.equal(again.serialNumber, first.serialNumber, "a restart reissued a fresh certificate");
    const renamed = await presented("--name", "chat.example.test");
    assert.notEqual(renamed.serialNumber, first.serialNumber);
    assert.ok((renamed.subjectAltName ?? "").split(", ").includes("DNS:chat.example.test"));
    const rows = (await caList(home)).filter((r) => r.name === "e2e-chat service");
    assert.deepEqual(rows.map((r) => [r.serial, r.status, r.reason]), [
      [serialOf(first), "revoked", "superseded"],
      [serialOf(renamed), "valid", undefined],
    ]);
  });
});

Deno.test('the service presents a certificate for "e2e-chat service" issued by the CA and speaks TLS 1.3 and 1.2 but not 1.1', async () => {
  await withService(async (service, dir) => {
    const caPath = join(service.caDir, "ca.crt");
    // node:https refuses a server the CA did not vouch for; s_client below checks the IP SAN too.
    const reply = await service.request("/v1/ca");
    assert.equal(reply.status, 200);
    assert.equal(reply.protocol, "TLSv1.3");
    assert.ok(reply.serverCertificate, "no server certificate");
    const cert = new X509Certificate(reply.serverCertificate);
    assert.equal(cert.subject, "CN=e2e-chat service");
    const san = (cert.subjectAltName ?? "").split(", ");
    assert.ok(san.includes("DNS:localhost"), cert.subjectAltName);
    assert.ok(san.includes("IP Address:127.0.0.1"), cert.subjectAltName);
    assert.equal(cert.ca, false);
    assert.ok(cert.checkIssued(x509(service.caPem)));
    const certPath = join(dir, "service.pem");
    await Deno.writeTextFile(certPath, cert.toString());
    assert.equal(
      await opensslVerify(caPath, certPath, "-purpose", "sslserver"),
      `${certPath}: OK\n`,
    );

    const [tls13, tls12, tls11] = await Promise.all([
      sClient(service, "-CAfile", caPath, "-verify_return_error", "-verify_ip", "127.0.0.1"),
      sClient(service, "-tls1_2", "-CAfile", caPath, "-verify_return_error"),
      // SECLEVEL=0 lets this openssl offer TLS 1.1 at all, so the refusal is the server's.
      sClient(service, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0").then(
        (out) => ({ out }),
        (e: unknown) => e,
      ),
    ]);
    assert.match(tls13, /^New, TLSv1\.3, /m);
    assert.match(tls13, /Verify return code: 0 \(ok\)/);
    assert.match(tls12, /^New, TLSv1\.2, /m);
    assert.match(tls12, /Verify return code: 0 \(ok\)/);
    assert.ok(tls11 instanceof OpensslError, `TLS 1.1 was accepted: ${JSON.stringify(tls11)}`);
    assert.match(tls11.stderr, /alert/);
  });
});

Deno.test("GET /v1/ca returns ca.crt and GET /v1/crl returns a CRL that openssl verifies with the CA", async () => {
  await withService(async (service, dir) => {
    const [ca, crl] = await Promise.all([service.request("/v1/ca"), service.request("/v1/crl")]);
    assert.equal(ca.status, 200);
    assert.equal(ca.headers["content-type"], "application/x-pem-file");
    assert.equal(ca.body, await Deno.readTextFile(join(service.caDir, "ca.crt")));
    assert.equal(pemFingerprint(ca.body), service.fingerprint);

    assert.equal(crl.status, 200);
    assert.equal(crl.headers["content-type"], "application/x-pem-file");
    assert.match(crl.body, /^-----BEGIN X509 CRL-----\n/);
    const crlPath = join(dir, "crl.pem");
    await Deno.writeTextFile(crlPath, crl.body);
    const { stderr } = await openssl([
      ...["crl", "-in", crlPath, "-CAfile", join(service.caDir, "ca.crt"), "-noout"],
    ], { timeoutMs: 10_000 });
    assert.match(stderr, /verify OK/);
  });
});

// ---------------------------------------------------------------------------
// The whole flow, with the real client

Deno.test("users join with an invite through the real client, look each other up, renew, and use the API with mutual TLS", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    const bobHome = join(dir, "bob");

    // `ca invite` prints exactly one line in the format of the spec.
    const [aliceInvite, bobInvite] = await Promise.all([
      runCa(service.home, ["invite", "alice"]),
      runCa(service.home, ["invite", "bob"]),
    ]);
    assertSuccess(aliceInvite, "ca invite alice");
    assertSuccess(bobInvite, "ca invite bob");
    const line = new RegExp(
      `^e2e-chat://127\\.0\\.0\\.1:${service.port}/alice\\?fp=${service.fingerprint}` +
        "&token=[A-Za-z0-9_-]{43}\\n$",
    );
    assert.match(aliceInvite.stdout, line);
    const invites = [aliceInvite.stdout.trimEnd(), bobInvite.stdout.trimEnd()];
    // The CA keeps only a hash of each token, in a private file.
    const invitesPath = join(service.caDir, "invites.json");
    assert.equal(mode(await Deno.stat(invitesPath)), 0o600);
    const stored = await Deno.readTextFile(invitesPath);
    for (const invite of invites) assert.ok(!stored.includes(inviteToken(invite)), stored);

    // Both join at once, each in its own home.
    const [aliceJoin, bobJoin] = await Promise.all([
      runClient(aliceHome, ["join", invites[0]]),
      runClient(bobHome, ["join", invites[1]]),
    ]);
    assertSuccess(aliceJoin, "client join (alice)");
    assertSuccess(bobJoin, "client join (bob)");
    assert.match(aliceJoin.stdout, new RegExp(`^Joined ${service.url} as "alice"\\n`));
    assert.equal(mode(await Deno.stat(join(aliceHome, "id"))), 0o700);
    assert.equal(mode(await Deno.stat(join(aliceHome, "id", "key.pem"))), 0o600);

    const whoami = await runClient(aliceHome, ["whoami", "--json"]);
    assertSuccess(whoami, "client whoami --json");
    const me = JSON.parse(whoami.stdout);
    const certPath = join(aliceHome, "id", "cert.pem");
    const firstCert = await Deno.readTextFile(certPath);
    assert.equal(me.name, "alice");
    assert.equal(me.fingerprint, pemFingerprint(firstCert));
    assert.equal(me.notAfter, x509(firstCert).validToDate.toISOString());
    assert.equal(me.certPath, certPath);
    assert.equal(me.keyPath, join(aliceHome, "id", "key.pem"));
    assert.equal(me.caPath, join(aliceHome, "id", "ca.crt"));
    assert.equal(me.caUrl, service.url);
    assert.equal(await Deno.readTextFile(me.caPath), service.caPem);
    assert.equal(
      await opensslVerify(join(service.caDir, "ca.crt"), certPath),
      `${certPath}: OK\n`,
    );

    // Looking up bob gives bob's certificate, as bob holds it.
    const lookup = await runClient(aliceHome, ["lookup", "bob"]);
    assertSuccess(lookup, "client lookup bob");
    const bobCert = await Deno.readTextFile(join(bobHome, "id", "cert.pem"));
    assert.ok(lookup.stdout.includes(bobCert), lookup.stdout);
    assert.match(lookup.stdout, new RegExp(`certificate fingerprint: ${pemFingerprint(bobCert)}`));

    // Renewal: a new serial for the same key; the old certificate is revoked as superseded.
    const renew = await runClient(aliceHome, ["renew"]);
    assertSuccess(renew, "client renew");
    const renewed = await Deno.readTextFile(certPath);
    assert.notEqual(serialOf(renewed), serialOf(firstCert));
    assert.equal(
      sha256(new Uint8Array(x509(renewed).publicKey.export({ type: "spki", format: "der" }))),
      sha256(new Uint8Array(x509(firstCert).publicKey.export({ type: "spki", format: "der" }))),
    );
    const rows = (await caList(service.home)).filter((r) => r.name === "alice");
    assert.deepEqual(
      rows.map((r) => [r.serial, r.status, r.reason]),
      [[serialOf(firstCert), "revoked", "superseded"], [serialOf(renewed), "valid", undefined]],
    );

    // curl --cert --key --cacert, as in docs/API.md.
    const key = await Deno.readTextFile(join(aliceHome, "id", "key.pem"));
    const ca = await Deno.readTextFile(join(aliceHome, "id", "ca.crt"));
    const [asPem, asJson, withOldCert] = await Promise.all([
      service.request("/v1/certs/alice", { ca, cert: renewed, key }),
      service.request("/v1/certs/bob", {
        ca,
        cert: renewed,
        key,
        headers: { accept: "application/json" },
      }),
      service.request("/v1/certs/alice", { ca, cert: firstCert, key }),
    ]);
    assert.equal(asPem.status, 200, asPem.body);
    assert.equal(asPem.headers["content-type"], "application/x-pem-file");
    assert.equal(asPem.body, renewed);
    assert.equal(asJson.status, 200, asJson.body);
    const bob = asJson.json() as Record<string, string>;
    assert.deepEqual(Object.keys(bob).sort(), [
      "certificate",
      "fingerprint",
      "keyFingerprint",
      "log",
      "logIndex",
      "name",
      "notAfter",
      "serial",
    ]);
    assert.equal(bob.name, "bob");
    assert.equal(bob.certificate, bobCert);
    assert.equal(bob.fingerprint, pemFingerprint(bobCert));
    assert.match(bob.keyFingerprint, HEX64);
    assert.equal(bob.serial, serialOf(bobCert));
    assert.equal(bob.notAfter, x509(bobCert).validToDate.toISOString());
    assertApiError(
      withOldCert,
      403,
      "ERR_FORBIDDEN",
      "The client certificate is revoked or superseded",
    );

    assertLogKeepsSecrets(service, invites.map(inviteToken));
  });
});

Deno.test("join refuses a CA whose fingerprint is not the invite's, sends no token, and leaves the invite usable", async () => {
  await withService(async (service, dir) => {
    const otherHome = join(dir, "other-ca");
    const [invite] = await Promise.all([makeInvite(service.home, "alice"), initCa(otherHome)]);
    const otherFingerprint = pemFingerprint(
      await Deno.readTextFile(join(otherHome, "ca", "ca.crt")),
    );
    assert.notEqual(otherFingerprint, service.fingerprint);
    const forged = invite.replace(`fp=${service.fingerprint}`, `fp=${otherFingerprint}`);
    assert.notEqual(forged, invite);

    const home = join(dir, "alice");
    const refused = await runClient(home, ["join", forged]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /^e2e-chat: error: .*fingerprint/m);
    assert.ok(refused.stderr.includes(service.fingerprint), refused.stderr);
    assert.ok(refused.stderr.includes(otherFingerprint), refused.stderr);
    assert.ok(!refused.stderr.includes(inviteToken(invite)), "the error repeats the token");
    assert.equal(refused.stdout, "");
    // The client fetched the CA certificate, compared, and stopped there.
    await service.waitForLog(/ GET \/v1\/ca 200 /);
    assert.doesNotMatch(service.log, /POST \/v1\/enroll/);
    await assert.rejects(Deno.lstat(join(home, "id")), Deno.errors.NotFound);
    const left: string[] = [];
    try {
      for await (const entry of Deno.readDir(home)) left.push(entry.name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    assert.deepEqual(left, [], "a refused join left files in the client home");

    // The same token, with the right fingerprint, still enrolls: it was never sent.
    const joined = await runClient(home, ["join", invite]);
    assertSuccess(joined, "client join with the right fingerprint");
    await service.waitForLog(/ POST \/v1\/enroll 200 alice /);
    assert.equal(service.log.match(/ POST \/v1\/enroll /g)?.length, 1, service.log);
  });
});

Deno.test("the client refuses a server holding a member's certificate instead of the service's, before sending a request", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    const [invite, bob] = await Promise.all([
      makeInvite(service.home, "alice"),
      enrollUser(service, "bob"),
    ]);
    assertSuccess(await runClient(aliceHome, ["join", invite]), "client join");
    // Bob's certificate is from the same CA and good for serverAuth, but it is not "e2e-chat service".
    let received = 0;
    let connections = 0;
    const impostor = tls.createServer({ key: bob.key, cert: bob.cert }, (socket) => {
      connections++;
      socket.on("data", (chunk: Uint8Array) => received += chunk.length);
      socket.on("error", () => {});
    });
    await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", () => resolve()));
    try {
      const port = (impostor.address() as { port: number }).port;
      const identityPath = join(aliceHome, "id", "identity.json");
      const identity = JSON.parse(await Deno.readTextFile(identityPath));
      identity.caUrl = `https://127.0.0.1:${port}`;
      await Deno.writeTextFile(identityPath, JSON.stringify(identity));
      const lookup = await runClient(aliceHome, ["lookup", "bob"]);
      assert.notEqual(lookup.code, 0);
      assert.ok(
        lookup.stderr.includes(
          `e2e-chat: error: The server at https://127.0.0.1:${port} is not our CA service\n`,
        ),
        lookup.stderr,
      );
      await sleep(100);
      // lookup asks for the directory entry and the CRL at once: one handshake each at most.
      assert.ok(connections >= 1 && connections <= 2, `${connections} handshakes`);
      assert.equal(received, 0, "the client sent request bytes to an impostor");
    } finally {
      await new Promise<void>((resolve) => impostor.close(() => resolve()));
    }
  });
});

Deno.test("a member whose CA moved follows it with client move-ca, and calls the new address from then on", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    const [invite] = await Promise.all([
      makeInvite(service.home, "alice"),
      enrollUser(service, "bob"),
    ]);
    assertSuccess(await runClient(aliceHome, ["join", invite]), "client join");
    const moved = await TcpRelay.start(service.port);
    try {
      const result = await runClient(aliceHome, ["move-ca", `127.0.0.1:${moved.port}`]);
      assertSuccess(result, "client move-ca");
      assert.match(
        result.stdout,
        new RegExp(
          `^Your CA is now at https://127\\.0\\.0\\.1:${moved.port} \\(was https://127\\.0\\.0\\.1:${service.port}\\)\n`,
        ),
      );
      const identity = JSON.parse(await Deno.readTextFile(join(aliceHome, "id", "identity.json")));
      assert.equal(identity.caUrl, `https://127.0.0.1:${moved.port}`);
      const before = moved.connections;
      assertSuccess(await runClient(aliceHome, ["lookup", "bob"]), "client lookup after the move");
      assert.ok(moved.connections > before, "lookup did not go to the new address");
      const again = await runClient(aliceHome, ["move-ca", `https://127.0.0.1:${moved.port}/`]);
      assertSuccess(again, "client move-ca to the same address");
      assert.equal(
        again.stdout,
        `Your CA is already at https://127.0.0.1:${moved.port}: nothing to change\n`,
      );
    } finally {
      await moved.close();
    }
  });
});

Deno.test("client move-ca refuses an address that is not our CA's service, or cannot be reached, and changes nothing", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    const [invite, bob] = await Promise.all([
      makeInvite(service.home, "alice"),
      enrollUser(service, "bob"),
    ]);
    assertSuccess(await runClient(aliceHome, ["join", invite]), "client join");
    const identityPath = join(aliceHome, "id", "identity.json");
    const before = await Deno.readFile(identityPath);
    // From our CA, good for TLS, but a member's certificate: not the service's.
    const impostor = tls.createServer({ key: bob.key, cert: bob.cert }, (socket) => {
      socket.on("error", () => {});
    });
    await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", () => resolve()));
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", () => resolve()));
    const closedPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    try {
      const port = (impostor.address() as { port: number }).port;
      const refused = await runClient(aliceHome, ["move-ca", `127.0.0.1:${port}`]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.ok(
        refused.stderr.includes(
          `e2e-chat: error: The server at https://127.0.0.1:${port} is not our CA service\n`,
        ),
        refused.stderr,
      );
      const unreachable = await runClient(aliceHome, ["move-ca", `127.0.0.1:${closedPort}`]);
      assert.equal(unreachable.code, 1, unreachable.stderr);
      assert.ok(
        unreachable.stderr.includes(
          `Cannot reach the CA service at https://127.0.0.1:${closedPort}`,
        ),
        unreachable.stderr,
      );
      // Not the hint of every other command (run move-ca): that is what was just run.
      assert.match(
        unreachable.stderr,
        /^e2e-chat: hint: check the new address with your admin; nothing was changed$/m,
      );
      const malformed = await runClient(aliceHome, ["move-ca", "http://127.0.0.1:1"]);
      assert.equal(malformed.code, 2, malformed.stderr);
      assert.ok(
        malformed.stderr.includes(
          'A CA address is HOST:PORT or https://HOST:PORT, not "http://127.0.0.1:1"',
        ),
        malformed.stderr,
      );
      assert.deepEqual(await Deno.readFile(identityPath), before);
    } finally {
      await new Promise<void>((resolve) => impostor.close(() => resolve()));
    }
  });
});

Deno.test("client move-ca refuses a CA service that no longer holds the member's certificate (it was replaced), and changes nothing", async () => {
  await withService(async (service, dir) => {
    const aliceHome = join(dir, "alice");
    assertSuccess(
      await runClient(aliceHome, ["join", await makeInvite(service.home, "alice")]),
      "client join",
    );
    const identityPath = join(aliceHome, "id", "identity.json");
    const before = await Deno.readFile(identityPath);
    // A new certificate for "alice" (a lost key): the CA's directory now holds that one.
    await enrollUser(service, "alice");
    const moved = await TcpRelay.start(service.port);
    try {
      const result = await runClient(aliceHome, ["move-ca", `127.0.0.1:${moved.port}`]);
      assert.equal(result.code, 1, result.stderr);
      assert.ok(
        result.stderr.includes(
          "e2e-chat: error: The CA refused: The client certificate is revoked or superseded\n",
        ),
        result.stderr,
      );
      assert.ok(moved.connections > 0, "the new address was never asked");
      assert.deepEqual(await Deno.readFile(identityPath), before);
    } finally {
      await moved.close();
    }
  });
});

// ---------------------------------------------------------------------------
// Tokens

Deno.test("enroll refuses a used, an expired, an unknown or a malformed token with one 403 ERR_TOKEN_INVALID", async () => {
  await withService(async (service) => {
    const [used, expiring, csrs] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeInvite(service.home, "carol", "--ttl", "1s"),
      Promise.all([makeCsr("alice"), makeCsr("alice"), makeCsr("carol"), makeCsr("dave")]),
    ]);
    const madeAt = Date.now();
    const enroll = (token: unknown, csr: string) =>
      service.request("/v1/enroll", { method: "POST", json: { token, csr } });

    const first = await enroll(inviteToken(used), csrs[0].csr);
    assert.equal(first.status, 200, first.body);
    const before = await snapshot(service.caDir);

    const [again, unknown, malformed, notText] = await Promise.all([
      enroll(inviteToken(used), csrs[1].csr),
      enroll(randomBytes(32).toString("base64url"), csrs[3].csr),
      enroll("not a token", csrs[3].csr),
      enroll(42, csrs[3].csr),
    ]);
    await sleep(Math.max(0, madeAt + 1_500 - Date.now()));
    const expired = await enroll(inviteToken(expiring), csrs[2].csr);

    for (const reply of [again, unknown, malformed, notText, expired]) {
      assertApiError(reply, 403, "ERR_TOKEN_INVALID", TOKEN_INVALID);
    }
    assert.deepEqual(await snapshot(service.caDir), before);
  }, { args: MANY_ENROLLMENTS });
});

Deno.test("a token for alice cannot enroll a request for bob (400 ERR_CSR_NAME_MISMATCH) and stays usable", async () => {
  await withService(async (service) => {
    const [invite, bob, alice] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeCsr("bob"),
      makeCsr("alice"),
    ]);
    const token = inviteToken(invite);
    const before = await snapshot(service.caDir);
    const refused = await service.request("/v1/enroll", {
      method: "POST",
      json: { token, csr: bob.csr },
    });
    assertApiError(
      refused,
      400,
      "ERR_CSR_NAME_MISMATCH",
      'Cannot sign request: it has common name "bob", not "alice"',
    );
    assert.deepEqual(await snapshot(service.caDir), before);

    const accepted = await service.request("/v1/enroll", {
      method: "POST",
      json: { token, csr: alice.csr },
    });
    assert.equal(accepted.status, 200, accepted.body);
    const reply = accepted.json() as Record<string, string>;
    assert.equal(reply.name, "alice");
    assert.equal(x509(reply.certificate).subject, "CN=alice");
    assert.deepEqual(
      (await caList(service.home)).filter((r) => !r.name.startsWith("e2e-chat ")).map((r) =>
        r.name
      ),
      ["alice"],
    );
  });
});

Deno.test("a new invite for a name enrolls a new key and revokes the old certificate as superseded", async () => {
  await withService(async (service) => {
    const first = await enrollUser(service, "alice");
    const second = await enrollUser(service, "alice");
    assert.notEqual(second.reply.keyFingerprint, first.reply.keyFingerprint);
    const rows = (await caList(service.home)).filter((r) => r.name === "alice");
    assert.deepEqual(rows.map((r) => [r.serial, r.status, r.reason]), [
      [first.reply.serial, "revoked", "superseded"],
      [second.reply.serial, "valid", undefined],
    ]);
    const [old, current] = await Promise.all([
      service.request("/v1/certs/alice", auth(first)),
      service.request("/v1/certs/alice", auth(second)),
    ]);
    assertApiError(old, 403, "ERR_FORBIDDEN", "The client certificate is revoked or superseded");
    assert.equal(current.status, 200, current.body);
    assert.equal(current.body, second.cert);
  });
});

Deno.test("an invite made by the CLI while the service runs works without a restart", async () => {
  await withService(async (service) => {
    const { csr } = await makeCsr("dave");
    // The service has read the (empty) invite store before the invite exists.
    const early = await service.request("/v1/enroll", {
      method: "POST",
      json: { token: randomBytes(32).toString("base64url"), csr },
    });
    assertApiError(early, 403, "ERR_TOKEN_INVALID", TOKEN_INVALID);

    const invite = await makeInvite(service.home, "dave");
    const reply = await service.request("/v1/enroll", {
      method: "POST",
      json: { token: inviteToken(invite), csr },
    });
    assert.equal(reply.status, 200, reply.body);
    assert.equal((reply.json() as { name: string }).name, "dave");
  });
});

Deno.test("an invite cancelled by the CLI while the service runs is refused with the same 403 ERR_TOKEN_INVALID, and ca invites shows it cancelled beside a used one with its serial", async () => {
  await withService(async (service) => {
    const [alice, bob, csrs] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeInvite(service.home, "bob"),
      Promise.all([makeCsr("alice"), makeCsr("bob")]),
    ]);
    const enroll = (invite: string, csr: string) =>
      service.request("/v1/enroll", { method: "POST", json: { token: inviteToken(invite), csr } });
    // Bob's enrollment makes the service read the store, alice's invite in it, open.
    const enrolled = await enroll(bob, csrs[1].csr);
    assert.equal(enrolled.status, 200, enrolled.body);
    const serial = (enrolled.json() as { serial: string }).serial;

    const cancelled = await runCa(service.home, ["invites", "cancel", "alice"]);
    assertSuccess(cancelled, "ca invites cancel alice");
    const before = await snapshot(service.caDir);
    const refused = await enroll(alice, csrs[0].csr);
    assertApiError(refused, 403, "ERR_TOKEN_INVALID", TOKEN_INVALID);
    assert.deepEqual(await snapshot(service.caDir), before, "no certificate, no journal line");

    const listed = await runCa(service.home, ["invites", "--json"]);
    assertSuccess(listed, "ca invites --json");
    const rows = JSON.parse(listed.stdout) as Array<Record<string, string>>;
    // (Neither is open, so they come in the order they were made: here, either.)
    rows.sort((a, b) => a.name.localeCompare(b.name));
    assert.deepEqual(rows.map((r) => [r.name, r.status, r.serial]), [
      ["alice", "cancelled", undefined],
      ["bob", "used", serial],
    ]);
    assert.ok(
      !listed.stdout.includes(inviteToken(alice)) && !listed.stdout.includes(inviteToken(bob)),
    );
  });
});

// ---------------------------------------------------------------------------
// Hostile requests

Deno.test("hostile requests get a 4xx JSON error and change nothing", async () => {
  await withService(async (service) => {
    const [invite, good, weak] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeCsr("alice"),
      makeCsr("alice", { keyType: "rsa-1024" }),
    ]);
    const token = inviteToken(invite);
    const valid = JSON.stringify({ token, csr: good.csr });
    const atLimit = sizedBody({ token, csr: good.csr }, 64 * 1024);
    const overLimit = sizedBody({ token, csr: good.csr }, 64 * 1024 + 1);
    const before = await snapshot(service.caDir);
    const post = (path: string, body: string, headers: Record<string, string> = {}) =>
      service.request(path, {
        method: "POST",
        body,
        headers: { "content-type": "application/json", ...headers },
      });

    const [tooLarge, tooLargeChunked] = await Promise.all([
      post("/v1/enroll", overLimit),
      post("/v1/enroll", overLimit, { "transfer-encoding": "chunked" }),
    ]);
    for (const reply of [tooLarge, tooLargeChunked]) {
      assertApiError(reply, 413, "ERR_TOO_LARGE", "The body is larger than 65536 bytes");
      assert.equal(reply.headers["connection"], "close");
    }

    const replies = await Promise.all([
      post("/v1/enroll", valid.slice(0, -2)),
      post("/v1/enroll", "[1, 2]"),
      post("/v1/enroll", JSON.stringify({ token, csr: "" })),
      post("/v1/enroll", JSON.stringify({ token, csr: "not a request" })),
      post("/v1/enroll", valid, { "content-type": "text/plain" }),
      post("/v1/enroll", valid, { "content-type": "application/x-www-form-urlencoded" }),
      service.request("/v1/enroll", { method: "POST", body: valid }),
      service.request("/v1/enroll"),
      service.request("/v1/enroll", { method: "PUT", json: { token, csr: good.csr } }),
      service.request("/v1/ca", { method: "POST", json: {} }),
      service.request("/v1/nope"),
      service.request("/v1/certs/alice/extra"),
      service.request("/", { method: "DELETE" }),
      post("/v1/enroll", JSON.stringify({ token, csr: weak.csr })),
    ]);
    const expected: Array<[number, string, string | RegExp]> = [
      [400, "ERR_BAD_REQUEST", "The body is not valid JSON"],
      [400, "ERR_BAD_REQUEST", "The body must be a JSON object"],
      [400, "ERR_BAD_REQUEST", 'Field "csr" must be a non-empty string'],
      [400, "ERR_CSR_INVALID", /^Invalid certificate request: /],
      [415, "ERR_UNSUPPORTED_MEDIA_TYPE", "The body must be application/json"],
      [415, "ERR_UNSUPPORTED_MEDIA_TYPE", "The body must be application/json"],
      [415, "ERR_UNSUPPORTED_MEDIA_TYPE", "The body must be application/json"],
      [405, "ERR_METHOD_NOT_ALLOWED", "Method GET is not allowed here; use POST"],
      [405, "ERR_METHOD_NOT_ALLOWED", "Method PUT is not allowed here; use POST"],
      [405, "ERR_METHOD_NOT_ALLOWED", "Method POST is not allowed here; use GET"],
      [404, "ERR_NOT_FOUND", 'No route "/v1/nope"'],
      [404, "ERR_NOT_FOUND", 'No route "/v1/certs/alice/extra"'],
      [404, "ERR_NOT_FOUND", 'No route "/"'],
      [400, "ERR_KEY_REJECTED", /^Cannot sign request: an RSA key of 1024 bits is too weak/],
    ];
    replies.forEach((reply, i) => assertApiError(reply, ...expected[i]));

    assert.deepEqual(await snapshot(service.caDir), before, "a refused request changed HOME/ca");

    // Nothing used the token up: it still enrolls, with a body of exactly 64 KiB.
    const accepted = await post("/v1/enroll", atLimit, {
      "content-type": "application/json; charset=utf-8",
    });
    assert.equal(accepted.status, 200, accepted.body);
  }, { args: MANY_ENROLLMENTS });
});

Deno.test("a path that is not valid percent-encoding gets a 4xx JSON error, not a 500", async () => {
  await withService(async (service) => {
    const alice = await enrollUser(service, "alice");
    const [anonymous, authenticated] = await Promise.all([
      service.request("/v1/certs/%ZZ"),
      service.request("/v1/certs/%ZZ", auth(alice)),
    ]);
    // Anonymous, any refusal will do (401 if authentication comes first); with a certificate, 400 or 404.
    for (
      const [reply, allowed] of [[anonymous, [400, 401, 404]], [authenticated, [400, 404]]] as const
    ) {
      assert.ok(
        (allowed as readonly number[]).includes(reply.status),
        `GET /v1/certs/%ZZ: ${reply.status} ${reply.body}`,
      );
      const code = (reply.json() as ApiErrorBody).error.code;
      assert.match(code, /^ERR_(BAD_REQUEST|NAME_INVALID|NOT_FOUND|UNAUTHENTICATED)$/);
      assertApiError(reply, reply.status, code);
    }
    assert.doesNotMatch(service.log, /internal error|URIError/);
  });
});

Deno.test("more than 10 enrollment attempts a minute from one address get 429 ERR_RATE_LIMITED with retry-after", async () => {
  await withService(async (service) => {
    const [invite, { csr }] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeCsr("alice"),
    ]);
    const before = await snapshot(service.caDir);
    for (let i = 0; i < 10; i++) {
      const reply = await service.request("/v1/enroll", {
        method: "POST",
        json: { token: randomBytes(32).toString("base64url"), csr },
      });
      assertApiError(reply, 403, "ERR_TOKEN_INVALID", TOKEN_INVALID);
    }
    const limited = await service.request("/v1/enroll", {
      method: "POST",
      json: { token: inviteToken(invite), csr },
    });
    assertApiError(
      limited,
      429,
      "ERR_RATE_LIMITED",
      "Too many enrollment attempts from this address",
    );
    const retryAfter = Number(limited.headers["retry-after"]);
    assert.ok(
      Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60,
      `retry-after: ${limited.headers["retry-after"]}`,
    );
    // The limit is on enrollment only, and the refused attempt used nothing up.
    assert.equal((await service.request("/v1/ca")).status, 200);
    assert.deepEqual(await snapshot(service.caDir), before);
  });
});

// ---------------------------------------------------------------------------
// Routes that need a client certificate

Deno.test("auth routes refuse no certificate, another CA's or an expired one with 401, a revoked one with 403 at once, and an unknown name with 404", async () => {
  await withService(async (service, dir) => {
    const otherHome = join(dir, "other-ca");
    const [alice, bob, , foreignCsr, bobCsr, expired] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
      initCa(otherHome),
      makeCsr("alice"),
      makeCsr("bob"),
      expiredCertificate(service, join(dir, "ca-copy"), "carol"),
    ]);
    const csrPath = join(dir, "foreign.csr");
    await Deno.writeTextFile(csrPath, foreignCsr.csr);
    const signed = await runCa(otherHome, ["sign", "--name", "alice", csrPath]);
    assertSuccess(signed, "ca sign on the other CA");
    const foreign = { cert: signed.stdout, key: foreignCsr.key };
    const serviceCredentials = {
      cert: await Deno.readTextFile(join(service.caDir, "service", "cert.pem")),
      key: await Deno.readTextFile(join(service.caDir, "service", "key.pem")),
    };

    const routes: Array<[string, string, unknown]> = [
      ["GET", "/v1/certs/alice", undefined],
      ["POST", "/v1/renew", { csr: foreignCsr.csr }],
      ["POST", "/v1/rendezvous", { to: "bob", port: 4000 }],
      ["GET", "/v1/rendezvous", undefined],
    ];
    const call = (credentials: { cert?: string; key?: string }) =>
      Promise.all(
        routes.map(([method, path, json]) =>
          service.request(path, { method, json, ...credentials })
        ),
      );
    const [anonymous, otherCa, asService, ok, nobody] = await Promise.all([
      call({}),
      call(foreign),
      call(serviceCredentials),
      service.request("/v1/certs/bob", auth(alice)),
      service.request("/v1/certs/nobody", auth(alice)),
    ]);
    for (const reply of anonymous) {
      assertApiError(reply, 401, "ERR_UNAUTHENTICATED", "This route needs a client certificate");
    }
    for (const reply of [...otherCa, ...asService]) {
      assertApiError(reply, 401, "ERR_UNAUTHENTICATED", "The client certificate was not accepted");
    }
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.body, bob.cert);
    assertApiError(
      nobody,
      404,
      "ERR_NOT_FOUND",
      'No valid certificate for "nobody" in the directory',
    );

    const [asExpired, badName, renewOther] = await Promise.all([
      service.request("/v1/certs/bob", expired),
      service.request("/v1/certs/Not%20A%20Name", auth(alice)),
      service.request("/v1/renew", { method: "POST", json: { csr: bobCsr.csr }, ...auth(alice) }),
    ]);
    assertApiError(
      asExpired,
      401,
      "ERR_UNAUTHENTICATED",
      "The client certificate was not accepted",
    );
    assertApiError(badName, 400, "ERR_NAME_INVALID", 'Invalid name "Not A Name"');
    assertApiError(
      renewOther,
      400,
      "ERR_CSR_NAME_MISMATCH",
      'Cannot sign request: it has common name "bob", not "alice"',
    );

    // Revoked with the CLI while the service runs: the very next request is refused.
    const revoked = await runCa(service.home, ["revoke", "alice", "--reason", "keyCompromise"]);
    assertSuccess(revoked, "ca revoke alice");
    const [afterRevoke, lookupRevoked, crl] = await Promise.all([
      service.request("/v1/certs/bob", auth(alice)),
      service.request("/v1/certs/alice", auth(bob)),
      service.request("/v1/crl"),
    ]);
    assertApiError(
      afterRevoke,
      403,
      "ERR_FORBIDDEN",
      "The client certificate is revoked or superseded",
    );
    assertApiError(
      lookupRevoked,
      404,
      "ERR_NOT_FOUND",
      'No valid certificate for "alice" in the directory',
    );
    // The CRL the service hands out already lists it.
    const crlPath = join(dir, "crl.pem");
    await Deno.writeTextFile(crlPath, crl.body);
    const text = new TextDecoder().decode(
      (await openssl(["crl", "-in", crlPath, "-noout", "-text"], { timeoutMs: 10_000 })).stdout,
    );
    assert.match(text, new RegExp(`Serial Number: ${alice.reply.serial}\\b`, "i"));
    assert.match(text, /Key Compromise/);
  });
});

// ---------------------------------------------------------------------------
// Rendezvous

Deno.test("a rendezvous offer returns the peer's certificate, and the peer's GET lists it with host, port and the caller's certificate", async () => {
  await withService(async (service) => {
    const [alice, bob] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
    ]);
    const offered = await service.request("/v1/rendezvous", {
      method: "POST",
      json: { to: "bob", port: 12345 },
      ...auth(alice),
    });
    assert.equal(offered.status, 200, offered.body);
    const offer = offered.json() as {
      id: number;
      to: string;
      expiresAt: string;
      peer: Record<string, string>;
    };
    assert.ok(Number.isInteger(offer.id) && offer.id > 0);
    assert.equal(offer.to, "bob");
    const ttl = Date.parse(offer.expiresAt) - Date.now();
    assert.ok(ttl > 280_000 && ttl <= 300_000, `expires in ${ttl} ms, not 5 minutes`);
    // The same certificate; its log proof is against whatever checkpoint is latest now.
    assert.deepEqual(withoutLog(offer.peer), withoutLog(bob.reply));
    assert.equal(logIndexOf(offer.peer), logIndexOf(bob.reply));

    const listed = await service.request("/v1/rendezvous", auth(bob));
    assert.equal(listed.status, 200, listed.body);
    const got = listed.json() as { invitations: Array<{ peer: Record<string, unknown> }> };
    assert.equal(logIndexOf(got.invitations[0].peer), logIndexOf(alice.reply));
    got.invitations[0].peer = withoutLog(got.invitations[0].peer);
    assert.deepEqual(got, {
      invitations: [{
        id: offer.id,
        from: "alice",
        host: "127.0.0.1",
        port: 12345,
        expiresAt: offer.expiresAt,
        peer: withoutLog(alice.reply),
      }],
      cursor: offer.id,
    });
    // Alice's offer is for bob only.
    const none = await service.request("/v1/rendezvous", auth(alice));
    assert.deepEqual(none.json(), { invitations: [], cursor: 0 });
  });
});

Deno.test("a long poll on GET /v1/rendezvous returns as soon as an offer arrives, and the cursor skips what was seen", async () => {
  await withService(async (service) => {
    const [alice, bob, carol] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
      enrollUser(service, "carol"),
    ]);
    type Pending = {
      invitations: Array<{ id: number; from: string; port: number }>;
      cursor: number;
    };
    const offer = (from: EnrolledUser, port: number) =>
      service.request("/v1/rendezvous", {
        method: "POST",
        json: { to: "bob", port, host: "192.0.2.7" },
        ...auth(from),
      });

    const started = Date.now();
    const polling = service.request("/v1/rendezvous?wait=10", auth(bob));
    await sleep(300);
    const first = await offer(alice, 40001);
    assert.equal(first.status, 200, first.body);
    const woken = await polling;
    const elapsed = Date.now() - started;
    assert.equal(woken.status, 200, woken.body);
    assert.ok(elapsed >= 250 && elapsed < 3_000, `the long poll answered after ${elapsed} ms`);
    const got = woken.json() as Pending;
    assert.deepEqual(got.invitations.map((i) => [i.from, i.port]), [["alice", 40001]]);
    const firstId = (first.json() as { id: number }).id;
    assert.equal(got.cursor, firstId);

    // Nothing new after the cursor: a short wait ends empty, keeping the cursor.
    const waitedFrom = Date.now();
    const empty = await service.request(`/v1/rendezvous?after=${got.cursor}&wait=1`, auth(bob));
    assert.ok(Date.now() - waitedFrom >= 900, "wait=1 did not wait");
    assert.deepEqual(empty.json(), { invitations: [], cursor: got.cursor });

    // Carol offers; alice offers again, which replaces her first offer.
    const second = await offer(carol, 40002);
    const third = await offer(alice, 40003);
    const secondId = (second.json() as { id: number }).id;
    const thirdId = (third.json() as { id: number }).id;
    assert.ok(firstId < secondId && secondId < thirdId);
    const after = (await service.request(`/v1/rendezvous?after=${got.cursor}`, auth(bob)))
      .json() as Pending;
    assert.deepEqual(after.invitations.map((i) => [i.id, i.from, i.port]), [
      [secondId, "carol", 40002],
      [thirdId, "alice", 40003],
    ]);
    assert.equal(after.cursor, thirdId);
    const all = (await service.request("/v1/rendezvous?after=0", auth(bob))).json() as Pending;
    assert.deepEqual(all.invitations.map((i) => i.id), [secondId, thirdId]);
    const rest = (await service.request(`/v1/rendezvous?after=${secondId}`, auth(bob)))
      .json() as Pending;
    assert.deepEqual(rest.invitations.map((i) => i.id), [thirdId]);

    const bad = await Promise.all(
      ["after=-1", "after=x", "wait=31", "wait=1.5"].map((q) =>
        service.request(`/v1/rendezvous?${q}`, auth(bob))
      ),
    );
    for (const reply of bad) assertApiError(reply, 400, "ERR_BAD_REQUEST");
  });
});

Deno.test("rendezvous offers expire after --rendezvous-ttl, and offers from a revoked user are left out", async () => {
  await withService(async (service) => {
    const [alice, bob, carol] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
      enrollUser(service, "carol"),
    ]);
    const offered = await service.request("/v1/rendezvous", {
      method: "POST",
      json: { to: "bob", port: 5000 },
      ...auth(alice),
    });
    assert.equal(offered.status, 200, offered.body);
    const ttl = Date.parse((offered.json() as { expiresAt: string }).expiresAt) - Date.now();
    assert.ok(ttl > 1_000 && ttl <= 2_000, `expires in ${ttl} ms, not 2 s`);
    const fromCarol = await service.request("/v1/rendezvous", {
      method: "POST",
      json: { to: "bob", port: 5001 },
      ...auth(carol),
    });
    assert.equal(fromCarol.status, 200, fromCarol.body);
    const listed = (await service.request("/v1/rendezvous", auth(bob))).json() as {
      invitations: Array<{ from: string }>;
    };
    assert.deepEqual(listed.invitations.map((i) => i.from), ["alice", "carol"]);

    assertSuccess(await runCa(service.home, ["revoke", "carol"]), "ca revoke carol");
    const withoutCarol = (await service.request("/v1/rendezvous", auth(bob))).json() as {
      invitations: Array<{ from: string }>;
    };
    assert.deepEqual(withoutCarol.invitations.map((i) => i.from), ["alice"]);

    await sleep(ttl + 300);
    const expired = await service.request("/v1/rendezvous", auth(bob));
    assert.equal(expired.status, 200, expired.body);
    assert.deepEqual((expired.json() as { invitations: unknown[] }).invitations, []);
  }, { args: ["--rendezvous-ttl", "2s"] });
});

Deno.test("a rendezvous offer with a bad port or host, or to oneself, is 400, and to an unknown name 404", async () => {
  await withService(async (service) => {
    const [alice] = await Promise.all([enrollUser(service, "alice"), enrollUser(service, "bob")]);
    const offer = (json: unknown) =>
      service.request("/v1/rendezvous", { method: "POST", json, ...auth(alice) });
    const portMessage = 'Field "port" must be a whole number from 1 to 65535';
    const replies = await Promise.all([
      offer({ to: "bob", port: 0 }),
      offer({ to: "bob", port: 70000 }),
      offer({ to: "bob", port: "x" }),
      offer({ to: "bob", port: 80.5 }),
      offer({ to: "bob", host: "127.0.0.1" }),
      offer({ to: "bob", port: 4000, host: "bad host!" }),
      offer({ to: "alice", port: 4000 }),
      offer({ to: "nobody", port: 4000 }),
      offer({ port: 4000 }),
    ]);
    const expected: Array<[number, string, string]> = [
      [400, "ERR_BAD_REQUEST", portMessage],
      [400, "ERR_BAD_REQUEST", portMessage],
      [400, "ERR_BAD_REQUEST", portMessage],
      [400, "ERR_BAD_REQUEST", portMessage],
      [400, "ERR_BAD_REQUEST", 'Field "host" needs a "port"'],
      [400, "ERR_BAD_REQUEST", 'Field "host" must be an IP address or a host name'],
      [400, "ERR_BAD_REQUEST", "Cannot rendezvous with yourself"],
      [404, "ERR_NOT_FOUND", 'No valid certificate for "nobody" in the directory'],
      [400, "ERR_BAD_REQUEST", 'Field "to" must be a non-empty string'],
    ];
    replies.forEach((reply, i) => assertApiError(reply, ...expected[i]));
  });
});

// ---------------------------------------------------------------------------
// Sharing a home with the CLI

Deno.test("the CLI and the service sign on one home at the same time, with distinct serials and a consistent index", async () => {
  await withService(async (service, dir) => {
    const cliNames = ["carol", "dave", "erin"];
    const httpNames = ["alice", "bob", "frank"];
    const [viewer, csrPaths] = await Promise.all([
      enrollUser(service, "viewer"),
      Promise.all(cliNames.map(async (name) => {
        const path = join(dir, `${name}.csr`);
        await Deno.writeTextFile(path, (await makeCsr(name)).csr);
        return path;
      })),
    ]);
    const before = (await indexLines(service)).length;

    const [signed, enrolled] = await Promise.all([
      Promise.all(
        cliNames.map((name, i) => runCa(service.home, ["sign", "--name", name, csrPaths[i]])),
      ),
      Promise.all(httpNames.map((name) => enrollUser(service, name))),
    ]);
    signed.forEach((result, i) => assertSuccess(result, `ca sign --name ${cliNames[i]}`));
    const serials = [
      ...signed.map((result) => serialOf(result.stdout)),
      ...enrolled.map((user) => serialOf(user.cert)),
    ];
    assert.equal(new Set(serials).size, 6, `serials repeat: ${serials}`);

    const lines = await indexLines(service);
    assert.equal(lines.length, before + 6);
    assert.equal(
      new Set(lines.map((l) => l[3])).size,
      lines.length,
      "a serial repeats in index.txt",
    );
    for (const serial of serials) {
      const line = lines.find((l) => l[3] === serial);
      assert.ok(line, `serial ${serial} is not in index.txt`);
      assert.equal(line[0], "V");
      const file = await Deno.readTextFile(join(service.caDir, "certs", `${serial}.pem`));
      assert.equal(serialOf(file), serial);
    }
    const rows = await caList(service.home);
    for (const name of [...cliNames, ...httpNames]) {
      assert.deepEqual(rows.filter((r) => r.name === name).map((r) => r.status), ["valid"], name);
    }
    // The service sees what the CLI committed, without a restart.
    const lookup = await service.request("/v1/certs/carol", auth(viewer));
    assert.equal(lookup.status, 200, lookup.body);
    assert.equal(serialOf(lookup.body), serials[0]);
  });
});

// ---------------------------------------------------------------------------
// The log

Deno.test("the service log names routes and codes but never a token, the CA passphrase or a request body", async () => {
  await withService(async (service) => {
    const [used, refused, alice, aliceAgain, bob] = await Promise.all([
      makeInvite(service.home, "alice"),
      makeInvite(service.home, "bob"),
      makeCsr("alice"),
      makeCsr("alice"),
      makeCsr("bob"),
    ]);
    const secrets = [inviteToken(used), inviteToken(refused)];
    const enroll = (token: string, csr: string) =>
      service.request("/v1/enroll", { method: "POST", json: { token, csr } });
    assert.equal((await enroll(secrets[0], alice.csr)).status, 200);
    // Another key: the same request again would be a retry, answered with the same certificate.
    assertApiError(await enroll(secrets[0], aliceAgain.csr), 403, "ERR_TOKEN_INVALID");
    assertApiError(await enroll(secrets[1], alice.csr), 400, "ERR_CSR_NAME_MISMATCH");
    const queryToken = randomBytes(32).toString("base64url");
    secrets.push(queryToken);
    assert.equal((await service.request(`/v1/ca?token=${queryToken}`)).status, 200);
    assertApiError(
      await service.request("/v1/enroll", { method: "POST", body: bob.csr }),
      415,
      "ERR_UNSUPPORTED_MEDIA_TYPE",
    );
    await service.waitForLog(/ POST \/v1\/enroll 415 /);

    assert.match(service.log, / POST \/v1\/enroll 200 alice /);
    assert.match(service.log, / POST \/v1\/enroll 403 ERR_TOKEN_INVALID /);
    assert.match(service.log, / GET \/v1\/ca 200 /);
    assertLogKeepsSecrets(service, [
      ...secrets,
      ...csrLines(alice.csr),
      ...csrLines(aliceAgain.csr),
      ...csrLines(bob.csr),
    ]);
  }, { args: MANY_ENROLLMENTS });
});

// ---------------------------------------------------------------------------
// Slow and idle clients

Deno.test("idle connections are closed within 25 s, a 20 s long poll is not, and neither they nor a slow client stop the service answering others", async () => {
  await withService(async (service) => {
    const bob = await enrollUser(service, "bob");
    const started = Date.now();
    // A long poll is idle on the wire while it waits, and must not be cut off for it.
    const longPoll = service.request("/v1/rendezvous?wait=20", { ...auth(bob), timeoutMs: 40_000 })
      .then((reply) => ({ reply, at: Date.now() }), (error) => ({ error, at: Date.now() }));
    // A TCP connection that never starts TLS.
    const idleTcp = await Deno.connect({ hostname: "127.0.0.1", port: service.port });
    const tcpClosed = idleTcp.read(new Uint8Array(64)).then(() => Date.now(), () => Date.now());
    // A TLS connection that never sends a request.
    const idleTls = tls.connect({
      host: "127.0.0.1",
      port: service.port,
      ca: service.caPem,
      checkServerIdentity: () => undefined,
    });
    idleTls.on("error", () => {});
    const tlsClosed = new Promise<number>((resolve) =>
      idleTls.once("close", () => resolve(Date.now()))
    );
    // A client that sends its request a byte at a time and never finishes it.
    const slow = tls.connect({
      host: "127.0.0.1",
      port: service.port,
      ca: service.caPem,
      checkServerIdentity: () => undefined,
    });
    slow.on("error", () => {});
    const request = "GET /v1/ca HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ";
    let sent = 0;
    const drip = setInterval(() => {
      if (!slow.destroyed) slow.write(sent < request.length ? request[sent++] : "a");
    }, 200);
    let closedAt: [number | undefined, number | undefined] = [undefined, undefined];
    tcpClosed.then((at) => closedAt[0] = at);
    tlsClosed.then((at) => closedAt[1] = at);
    try {
      // Others are served promptly all along, until both idle connections are gone.
      for (let round = 0; closedAt.includes(undefined); round++) {
        assert.ok(Date.now() - started < 25_000, `still open after 25 s (TCP, TLS): ${closedAt}`);
        const t0 = Date.now();
        const replies = await Promise.all([
          service.request("/v1/ca"),
          service.request("/v1/crl"),
          service.request("/v1/certs/bob", auth(bob)),
          service.request("/v1/nope"),
        ]);
        const ms = Date.now() - t0;
        assert.deepEqual(replies.map((r) => r.status), [200, 200, 200, 404]);
        assert.ok(ms < 2_000, `round ${round} took ${ms} ms`);
        await sleep(1_000);
      }
      closedAt = [await tcpClosed, await tlsClosed];
      // The 10 s deadlines (the handshake's for TCP, the headers' for TLS) — not much earlier.
      for (const [what, at] of [["TCP", closedAt[0]], ["TLS", closedAt[1]]] as const) {
        assert.ok(at && at - started >= 9_000, `the idle ${what} connection closed too soon`);
      }

      const poll = await within(longPoll, Math.max(0, started + 30_000 - Date.now()), undefined);
      assert.ok(poll, "the long poll never ended");
      assert.ok(
        "reply" in poll,
        `the 20 s long poll was cut off after ${poll.at - started} ms: ${
          "error" in poll ? poll.error : ""
        }`,
      );
      assert.equal(poll.reply.status, 200, poll.reply.body);
      assert.deepEqual(poll.reply.json(), { invitations: [], cursor: 0 });
      assert.ok(poll.at - started >= 19_500, `the long poll ended after ${poll.at - started} ms`);
    } finally {
      clearInterval(drip);
      slow.destroy();
      idleTls.destroy();
      try {
        idleTcp.close();
      } catch { /* closed already */ }
    }
  });
});

/** A certificate reply without its log proof (which is against the latest checkpoint). */
function withoutLog(reply: Record<string, unknown>): Record<string, unknown> {
  const { log: _, logIndex: __, ...rest } = reply;
  return rest;
}

function logIndexOf(reply: Record<string, unknown>): number {
  const index = (reply.log as { index?: unknown } | undefined)?.index;
  assert.ok(typeof index === "number", `no log proof in ${JSON.stringify(reply)}`);
  return index;
}
