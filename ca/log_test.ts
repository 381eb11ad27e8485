import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { openCheckpoint } from "../lib/checkpoint.ts";
import { E2eError } from "../lib/errors.ts";
import { exists } from "../lib/fs.ts";
import { verifyLogProof } from "../lib/log_proof.ts";
import { verifyConsistency } from "../lib/merkle.ts";
import { pemDecode } from "../lib/pem.ts";
import { checkLogKey, trustAnchor } from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { CertificateAuthority } from "./authority.ts";
import { logOrigin } from "./log.ts";

async function withCa(fn: (ca: CertificateAuthority) => Promise<void>): Promise<void> {
  await withTempDir(async (home) => {
    await fn(await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" }));
  });
}

async function issue(ca: CertificateAuthority, name: string): Promise<Uint8Array> {
  const { certificate } = await ca.sign((await makeCsr(name)).csr, name);
  return pemDecode(certificate.pem, "CERTIFICATE")!;
}

function logKeyOf(ca: CertificateAuthority) {
  const pem = Deno.readTextFileSync(ca.paths.logCert);
  const info = checkLogKey(pemDecode(pem, "CERTIFICATE"), trustAnchor(ca.certificate.pem));
  return { name: logOrigin(ca.certificate.fingerprint), key: info.x509.publicKey };
}

Deno.test("openLog() back-fills every certificate of the database, then logs each new one", async () => {
  await withCa(async (ca) => {
    const alice = await issue(ca, "alice");
    assert.equal(await ca.readLog(), undefined);
    const log = await ca.openLog();
    // alice, then the log key's own certificate.
    assert.equal(log.size, 2);
    const key = logKeyOf(ca);
    const first = verifyLogProof(alice, await log.proofOf(alice), key);
    assert.equal(first.size, 2);
    const bob = await issue(ca, "bob");
    const second = verifyLogProof(bob, await log.proofOf(bob), key);
    assert.equal(second.size, 3);
    assert.ok(verifyConsistency(2, 3, first.root, second.root, log.consistencyProof(2, 3)));
    assert.deepEqual(
      (await log.entries(0, 3)).map((der) => new X509Certificate(der).subject),
      ["CN=alice", "CN=e2e-chat log", "CN=bob"],
    );
    const report = await log.verify(await ca.database());
    assert.deepEqual(report.problems, []);
    assert.equal(report.size, 3);
  });
});

Deno.test("a second process (another CertificateAuthority) appends to the same log", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    const other = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    const carol = await issue(other, "carol");
    await log.refresh();
    verifyLogProof(carol, await log.proofOf(carol), logKeyOf(ca));
    assert.equal(log.size, 2);
  });
});

Deno.test("a torn last record is cut off at the next sync and was never in a checkpoint", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    await Deno.writeFile(ca.paths.logEntries, new Uint8Array([0, 0, 4, 0, 0x30, 0x82]), {
      append: true,
    });
    const report = await log.verify(await ca.database());
    assert.match(report.problems.join("\n"), /torn last record/);
    const dave = await issue(ca, "dave");
    verifyLogProof(dave, await log.proofOf(dave), logKeyOf(ca));
    assert.deepEqual((await log.verify(await ca.database())).problems, []);
  });
});

Deno.test("an edited log is found by verify(), and no process logs on top of it", async () => {
  await withCa(async (ca) => {
    await ca.openLog();
    await issue(ca, "erin");
    const bytes = await Deno.readFile(ca.paths.logEntries);
    bytes[bytes.length - 10] ^= 1; // inside erin's signature
    await Deno.writeFile(ca.paths.logEntries, bytes);
    const fresh = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    const problems = (await (await fresh.readLog())!.verify(await ca.database())).problems;
    assert.match(problems.join("\n"), /do not hash to the checkpoint's root/);
    assert.match(problems.join("\n"), /log entry 1 is not the database's certificate/);
    await assert.rejects(
      issue(fresh, "frank"),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
    );
  });
});

Deno.test("the checkpoint is a C2SP signed note by the CA-certified log key", async () => {
  await withCa(async (ca) => {
    await ca.openLog();
    const text = await Deno.readTextFile(ca.paths.logCheckpoint);
    const checkpoint = openCheckpoint(text, logKeyOf(ca));
    assert.equal(checkpoint.origin, `e2e-chat/${ca.certificate.fingerprint}`);
    assert.equal(checkpoint.size, 1);
    assert.throws(
      () =>
        checkLogKey(pemDecode(ca.certificate.pem, "CERTIFICATE"), trustAnchor(ca.certificate.pem)),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
    );
    const mode = (await Deno.stat(ca.paths.logKey)).mode! & 0o777;
    assert.equal(mode, 0o600);
    assert.match(await Deno.readTextFile(ca.paths.logKey), /BEGIN ENCRYPTED PRIVATE KEY/);
  });
});

Deno.test("a checkpoint a power cut took back or emptied is signed again at the next start, byte for byte", async () => {
  await withCa(async (ca) => {
    await ca.openLog();
    await issue(ca, "alice");
    const older = await Deno.readTextFile(ca.paths.logCheckpoint);
    const bob = await issue(ca, "bob");
    const latest = await Deno.readTextFile(ca.paths.logCheckpoint);
    assert.notEqual(latest, older);
    // The checkpoint is not fsynced (the entries are): after a power cut it may be either.
    for (const left of [older, ""]) {
      await Deno.writeTextFile(ca.paths.logCheckpoint, left);
      const restarted = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
      const log = await restarted.openLog(); // as the service does when it starts
      assert.equal(await Deno.readTextFile(ca.paths.logCheckpoint), latest);
      assert.equal((await log.checkpoint()).text, latest);
      verifyLogProof(bob, await log.proofOf(bob), logKeyOf(ca));
    }
  });
});

Deno.test("a checkpoint another process put in place is checked again, though this one signed the last", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    await issue(ca, "alice");
    const signed = await Deno.readTextFile(ca.paths.logCheckpoint);
    // Same lines, another signature: the text differs from what this process wrote.
    const forged = signed.replace(
      /— (\S+) (\S+)\n$/,
      (_, name, sig: string) =>
        `— ${name} ${sig.slice(0, 10)}${sig[10] === "A" ? "B" : "A"}${sig.slice(11)}\n`,
    );
    assert.notEqual(forged, signed);
    await Deno.writeTextFile(ca.paths.logCheckpoint, forged);
    await assert.rejects(
      () => log.checkpoint(),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
    );
  });
});

Deno.test("a log whose folder is gone is not made again: the next signing is refused with ERR_LOG_INVALID", async () => {
  await withCa(async (ca) => {
    await ca.openLog();
    await issue(ca, "alice");
    await Deno.remove(ca.paths.logDir, { recursive: true });
    await assert.rejects(
      () => issue(ca, "bob"),
      (e) =>
        e instanceof E2eError && e.code === "ERR_LOG_INVALID" &&
        e.message === "The issuance log's folder is gone",
    );
    assert.equal(await exists(ca.paths.logDir), false);
  });
});

Deno.test("damage past the last whole record is kept as evidence: the next sync refuses and cuts nothing", async () => {
  await withCa(async (ca) => {
    await ca.openLog();
    await issue(ca, "gina");
    // A zero length where a record should start: not an append cut short.
    await Deno.writeFile(ca.paths.logEntries, new Uint8Array([0, 0, 0, 0, 1, 2, 3]), {
      append: true,
    });
    const before = await Deno.readFile(ca.paths.logEntries);
    const fresh = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    await assert.rejects(
      issue(fresh, "hal"),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID" && /damaged/.test(e.message),
    );
    assert.deepEqual(await Deno.readFile(ca.paths.logEntries), before);
  });
});
