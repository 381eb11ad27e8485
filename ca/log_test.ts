import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { openCheckpoint } from "../lib/checkpoint.ts";
import { normalizeSerialHex, parseCrlDer } from "../lib/crl.ts";
import { E2eError } from "../lib/errors.ts";
import { exists } from "../lib/fs.ts";
import { type LogProofJson, verifyLogProof } from "../lib/log_proof.ts";
import { verifyConsistency } from "../lib/merkle.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { checkLogKey, trustAnchor } from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { assertApiError, httpsRequest } from "../tests/_service_helpers.ts";
import { CertificateAuthority } from "./authority.ts";
import { InviteStore } from "./invites.ts";
import { crlEntryNumber, logOrigin } from "./log.ts";
import { CaService } from "./service.ts";

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
    // alice, then the log key's own certificate, then the CA's current CRL.
    assert.equal(log.size, 3);
    const key = logKeyOf(ca);
    const first = verifyLogProof(alice, await log.proofOf(alice), key);
    assert.equal(first.size, 3);
    const bob = await issue(ca, "bob");
    const second = verifyLogProof(bob, await log.proofOf(bob), key);
    assert.equal(second.size, 4);
    assert.ok(verifyConsistency(3, 4, first.root, second.root, log.consistencyProof(3, 4)));
    const [a, logCert, crl, b] = await log.entries(0, 4);
    assert.deepEqual(
      [a, logCert, b].map((der) => new X509Certificate(der).subject),
      ["CN=alice", "CN=e2e-chat log", "CN=bob"],
    );
    assert.deepEqual([log.isCrl(2), crl], [true, (await log.latestCrl())!.der]);
    assert.deepEqual([log.isCrl(0), log.isCrl(4)], [false, false]);
    assert.equal(crlEntryNumber(crl), parseCrlDer(crl, ca.certificate.x509).number);
    // `ca log` and the log's order of CRLs read one cut short alike: no number.
    assert.equal(crlEntryNumber(crl.subarray(0, 40)), undefined);
    const report = await log.verify(await ca.database());
    assert.deepEqual(report.problems, []);
    assert.deepEqual([report.size, report.crls], [4, 1]);
  });
});

Deno.test("every CRL the CA signs goes into the log after what its commit issued (a revocation, `ca crl`, a replacement), latestCrl() proves the newest, and a crl.pem older than the last logged is not logged again", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    const key = logKeyOf(ca);
    const latest = async () => {
      const { der, log: proof } = (await log.latestCrl())!;
      verifyLogProof(der, proof, key);
      return parseCrlDer(der, ca.certificate.x509);
    };
    const first = (await latest()).number!;
    const before = await Deno.readFile(ca.paths.crl);
    await issue(ca, "alice");
    const size = log.size;
    assert.deepEqual([size, (await latest()).number], [3, first], "an enrollment signs none");
    const alice = await ca.revoke("alice");
    const revoked = await latest();
    assert.ok(revoked.number! > first);
    assert.ok(revoked.revoked.has(normalizeSerialHex(alice.serial)));
    assert.deepEqual([log.size, log.isCrl(3)], [4, true]);
    await ca.crl();
    assert.ok((await latest()).number! > revoked.number!);
    await issue(ca, "bob");
    await ca.sign((await makeCsr("bob")).csr, "bob", { replace: true });
    // The new certificate, then the CRL that lists the one it replaced.
    assert.deepEqual([log.size, log.isCrl(6), log.isCrl(7)], [8, false, true]);
    // A crl.pem a power cut took back behind the log is not logged again.
    await Deno.writeFile(ca.paths.crl, before);
    await issue(ca, "carol");
    assert.deepEqual([log.size, log.isCrl(8)], [9, false]);
    const report = await log.verify(await ca.database());
    assert.deepEqual([report.problems, report.crls, report.database], [[], 4, 5]);
  });
});

Deno.test("a crl.pem the CA key did not sign is not logged, verify() names it, and the CA's next CRL is logged and served", async () => {
  await withCa(async (ca) => {
    await withTempDir(async (other) => {
      const log = await ca.openLog();
      const key = logKeyOf(ca);
      // Another CA's CRL, numbered above any the CA will sign, put where the CA keeps its own by
      // someone who can write HOME/ca but has no CA key.
      const evil = await CertificateAuthority.init(other, PASSPHRASE, { keyType: "ec-p256" });
      await Deno.writeTextFile(evil.paths.crlnumber, "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\n");
      const planted = pemDecode(await evil.crl(), "X509 CRL")!;
      await Deno.writeTextFile(ca.paths.crl, pemEncode(planted, "X509 CRL"));
      const size = log.size;
      await assert.rejects(issue(ca, "alice"), (e: E2eError) => {
        assert.equal(e.code, "ERR_LOG_INVALID");
        assert.match(e.message, /^The CA's CRL \(crl\.pem\) is not one the CA key signed \(/);
        return true;
      });
      // alice is logged all the same, and no CRL after her.
      assert.deepEqual([log.size, log.serial(size) === null], [size + 1, false]);
      // A log an earlier version let it into: it is not served, nor compared with.
      const entries = await Deno.open(ca.paths.logEntries, { append: true });
      const length = new Uint8Array(4);
      new DataView(length.buffer).setUint32(0, planted.length);
      await entries.write(new Uint8Array([...length, ...planted]));
      entries.close();
      const revoked = await ca.revoke("alice");
      assert.deepEqual([log.serial(size + 1), log.serial(size + 2)], [null, null]);
      const { der, log: proof } = (await log.latestCrl())!;
      verifyLogProof(der, proof, key);
      const served = parseCrlDer(der, ca.certificate.x509);
      assert.ok(served.revoked.has(normalizeSerialHex(revoked.serial)));
      assert.deepEqual(der, pemDecode(await Deno.readTextFile(ca.paths.crl), "X509 CRL"));
      const report = await log.verify(await ca.database());
      assert.equal(report.crls, 3);
      assert.deepEqual(report.problems, [
        `log entry ${size + 1} is a CRL the CA did not sign ` +
        "(the CRL's signature does not verify with the CA key)",
      ]);
    });
  });
});

Deno.test("verify() names a logged CRL whose number is not above the CRL logged before it, and latestCrl() serves the highest", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    const first = (await log.latestCrl())!.der;
    await ca.crl();
    const second = (await log.latestCrl())!.der;
    // The first CRL again, after the second (as no sync appends it).
    const entries = await Deno.open(ca.paths.logEntries, { append: true });
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, first.length);
    await entries.write(new Uint8Array([...length, ...first]));
    entries.close();
    await issue(ca, "alice");
    assert.deepEqual((await log.latestCrl())!.der, second);
    const number = parseCrlDer(first, ca.certificate.x509).number!.toString(16).toUpperCase();
    const above = parseCrlDer(second, ca.certificate.x509).number!.toString(16).toUpperCase();
    const report = await log.verify(await ca.database());
    assert.deepEqual(report.problems, [
      `log entry ${log.size - 2} is CRL number ${number}, not above the CRL logged before it ` +
      `(number ${above})`,
    ]);
  });
});

Deno.test("a CRL over 1 MiB (some 25,000 revocations) is logged and served, and the enrollment beside it succeeds", async () => {
  await withCa(async (ca) => {
    await withTempDir(async (work) => {
      const log = await ca.openLog();
      // The CA key signs a CRL of 30,000 revocations in a copy of the database (openssl ca
      // runs inside it: openssl.cnf's paths are relative), put in place as the CA's crl.pem.
      for (const file of ["index.txt", "index.txt.attr", "crlnumber"]) {
        await Deno.copyFile(`${ca.paths.dir}/${file}`, `${work}/${file}`);
      }
      const lines = Array.from(
        { length: 30_000 },
        (_, i) =>
          `R\t351231235959Z\t250101000000Z\t${(0x7000000000000000n + BigInt(i)).toString(16)}` +
          `0000000000000000000000\tunknown\t/CN=gone${i}\n`,
      );
      await Deno.writeTextFile(`${work}/index.txt`, lines.join(""), { append: true });
      await Deno.writeTextFile(`${work}/crlnumber`, "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\n");
      await openssl([
        ...["ca", "-config", ca.paths.config, "-keyfile", ca.paths.key, "-cert", ca.paths.cert],
        ...["-passin", PASSPHRASE_ARG, "-gencrl", "-out", "crl.pem"],
      ], { cwd: work, passphrase: PASSPHRASE });
      const big = pemDecode(await Deno.readTextFile(`${work}/crl.pem`), "X509 CRL")!;
      assert.ok(big.length > 1 << 20, `${big.length} bytes`);
      await Deno.copyFile(`${work}/crl.pem`, ca.paths.crl);
      await issue(ca, "alice");
      const { der, log: proof } = (await log.latestCrl())!;
      verifyLogProof(der, proof, logKeyOf(ca));
      assert.deepEqual(der, big);
      assert.equal(parseCrlDer(der, ca.certificate.x509).revoked.size, 30_000);
      assert.deepEqual((await log.verify(await ca.database())).problems, []);
    });
  });
});

Deno.test("a second process (another CertificateAuthority) appends to the same log", async () => {
  await withCa(async (ca) => {
    const log = await ca.openLog();
    const other = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    const carol = await issue(other, "carol");
    await log.refresh();
    verifyLogProof(carol, await log.proofOf(carol), logKeyOf(ca));
    assert.equal(log.size, 3);
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
    assert.match(problems.join("\n"), /log entry 2 is not the database's certificate/);
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
    assert.equal(checkpoint.size, 2); // the log key's certificate, and the CRL
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

// The entries file changed under a running CA (docs/TRANSPARENCY.md "Crash safety"): the next
// signing is refused before its commit, and nothing is appended or signed over it from then on.

interface Changed {
  /** The entries' bytes before the change. */
  before: Uint8Array;
  /** The checkpoint file before the change. */
  checkpoint: string;
}

// A CA with a log of three entries (alice, the log key's certificate, the CRL), whose entries file
// `change` then alters under it; `fn` gets what was there before.
async function withChangedLog(
  change: (path: string) => Promise<void>,
  fn: (ca: CertificateAuthority, was: Changed) => Promise<void>,
): Promise<void> {
  await withCa(async (ca) => {
    await issue(ca, "alice");
    await ca.openLog();
    const was = {
      before: await Deno.readFile(ca.paths.logEntries),
      checkpoint: await Deno.readTextFile(ca.paths.logCheckpoint),
    };
    await change(ca.paths.logEntries);
    await fn(ca, was);
  });
}

function changedUnder(detail: string | RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof E2eError, String(e));
    assert.equal(e.code, "ERR_LOG_INVALID");
    const prefix = "The issuance log's entries changed under the service: ";
    assert.ok(e.message.startsWith(prefix), e.message);
    const rest = e.message.slice(prefix.length);
    if (typeof detail === "string") assert.equal(rest, detail);
    else assert.match(rest, detail);
    assert.match(e.hint ?? "", /deno task ca log verify/);
    return true;
  };
}

// Nothing was committed for `name`, and the log's files are as `expected` left them.
async function assertNothingFor(ca: CertificateAuthority, name: string, checkpoint: string) {
  assert.deepEqual((await ca.database()).filter((e) => e.name === name), []);
  assert.equal(await Deno.readTextFile(ca.paths.logCheckpoint), checkpoint);
}

Deno.test("entries cut short under a running CA: the next signing is refused with ERR_LOG_INVALID before its commit, nothing is appended or signed, and a revocation still commits", async () => {
  await withChangedLog((path) => Deno.truncate(path, 0), async (ca, was) => {
    await assert.rejects(
      issue(ca, "bob"),
      changedUnder(`${was.before.length} bytes expected, 0 found`),
    );
    await assertNothingFor(ca, "bob", was.checkpoint);
    assert.equal((await Deno.stat(ca.paths.logEntries)).size, 0, "nothing appended");
    // A revocation appends nothing to the log: it commits, and says the log is broken.
    await assert.rejects(
      ca.revoke("alice"),
      changedUnder(`${was.before.length} bytes expected, 0 found`),
    );
    const alice = (await ca.database()).find((e) => e.name === "alice");
    assert.equal(alice?.status, "R");
    assert.equal(await Deno.readTextFile(ca.paths.logCheckpoint), was.checkpoint);
  });
});

Deno.test("entries changed under a running CA stay refused in that process even once the bytes are back; a restart checks them afresh and goes on", async () => {
  await withChangedLog((path) => Deno.truncate(path, 10), async (ca, was) => {
    const refused = changedUnder(`${was.before.length} bytes expected, 10 found`);
    await assert.rejects(issue(ca, "bob"), refused);
    await Deno.writeFile(ca.paths.logEntries, was.before); // put back, in place
    await assert.rejects(issue(ca, "carol"), refused);
    const log = (await ca.readLog().catch((e) => e)) as unknown;
    assert.ok(refused(log));
    await assertNothingFor(ca, "carol", was.checkpoint);
    const restarted = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    const dave = await issue(restarted, "dave");
    const relog = (await restarted.readLog())!;
    verifyLogProof(dave, await relog.proofOf(dave), logKeyOf(ca));
    assert.deepEqual((await relog.verify(await restarted.database())).problems, []);
  });
});

Deno.test("entries replaced under a running CA by another file, even one with the same bytes, are refused with ERR_LOG_INVALID", async () => {
  const replace = async (path: string) => {
    await Deno.copyFile(path, `${path}.new`);
    await Deno.rename(`${path}.new`, path);
  };
  await withChangedLog(replace, async (ca, was) => {
    await assert.rejects(
      issue(ca, "bob"),
      changedUnder(/^another file is in its place \(inode \d+, was \d+\)$/),
    );
    await assertNothingFor(ca, "bob", was.checkpoint);
    assert.deepEqual(await Deno.readFile(ca.paths.logEntries), was.before, "nothing appended");
  });
});

Deno.test("entries rewritten in place at the same size under a running CA are refused with ERR_LOG_INVALID", async () => {
  const rewrite = async (path: string) => {
    const bytes = await Deno.readFile(path);
    bytes[bytes.length - 10] ^= 1; // inside the last certificate's signature
    await Deno.writeFile(path, bytes);
    // A later time than the last append's, which the file system's clock tick might not give.
    await Deno.utime(path, new Date(), new Date(Date.now() + 60_000));
  };
  await withChangedLog(rewrite, async (ca, was) => {
    await assert.rejects(
      issue(ca, "bob"),
      changedUnder(`its ${was.before.length} bytes were rewritten`),
    );
    await assertNothingFor(ca, "bob", was.checkpoint);
  });
});

Deno.test("entries removed under a running CA (their folder still there) are refused with ERR_LOG_INVALID, not made again", async () => {
  await withChangedLog((path) => Deno.remove(path), async (ca, was) => {
    await assert.rejects(issue(ca, "bob"), changedUnder("the file is gone"));
    await assertNothingFor(ca, "bob", was.checkpoint);
    assert.equal(await exists(ca.paths.logEntries), false);
  });
});

Deno.test("a reader of the whole log refuses to read on once the entries changed under it, and entries() serves what the disk holds, for clients to check", async () => {
  await withChangedLog((path) => Deno.truncate(path, 0), async (ca, was) => {
    await assert.rejects(
      ca.readLog(),
      changedUnder(`${was.before.length} bytes expected, 0 found`),
    );
    // Another reader, which read the whole log before it was cut.
    await Deno.writeFile(ca.paths.logEntries, was.before);
    const fresh = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    const other = (await fresh.readLog())!;
    assert.equal(other.size, 3);
    await Deno.truncate(ca.paths.logEntries, 0);
    const refused = changedUnder(`${was.before.length} bytes expected, 0 found`);
    await assert.rejects(other.refresh(), refused);
    assert.throws(() => other.checkUnchanged(), refused);
    assert.equal(other.size, 3, "nothing read from the new file");
    assert.deepEqual(await other.entries(0, 2), []);
  });
});

Deno.test("entries only touched, or damage past the last record cut back by hand, are no change: signings go on", async () => {
  await withCa(async (ca) => {
    await issue(ca, "alice");
    const log = await ca.openLog();
    const key = logKeyOf(ca);
    await Deno.utime(ca.paths.logEntries, new Date(), new Date(Date.now() + 60_000));
    const bob = await issue(ca, "bob");
    verifyLogProof(bob, await log.proofOf(bob), key);
    // Four bytes that are no record: the append after the next commit refuses them (the
    // certificate is committed, not logged), until someone cuts them off again.
    const size = (await Deno.stat(ca.paths.logEntries)).size;
    await Deno.writeFile(ca.paths.logEntries, new Uint8Array(4), { append: true });
    await assert.rejects(
      issue(ca, "carol"),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID" && /damaged/.test(e.message),
    );
    await Deno.truncate(ca.paths.logEntries, size);
    await Deno.utime(ca.paths.logEntries, new Date(), new Date(Date.now() + 120_000));
    const dave = await issue(ca, "dave");
    verifyLogProof(dave, await log.proofOf(dave), key);
    assert.deepEqual((await log.verify(await ca.database())).problems, []);
  });
});

Deno.test("a join while the log's entries are cut short under the service gets a 500, the service's log names ERR_LOG_INVALID and why, and the token stays unused: the same join succeeds after a restart with the entries put back", async () => {
  await withCa(async (ca) => {
    const logs: string[] = [];
    let service = await CaService.start(ca, { port: 0, log: (l) => logs.push(l) });
    const { token } = await new InviteStore(ca.paths).create("alice", 60_000);
    const { csr } = await makeCsr("alice");
    const enroll = () =>
      httpsRequest(`${service.url}/v1/enroll`, {
        method: "POST",
        json: { token, csr },
        ca: ca.certificate.pem,
      });
    const before = await Deno.readFile(ca.paths.logEntries);
    try {
      await Deno.truncate(ca.paths.logEntries, 0);
      assertApiError(await enroll(), 500, "ERR_INTERNAL", "Internal error");
      assert.ok(
        logs.some((l) => / POST \/v1\/enroll 500 ERR_LOG_INVALID /.test(l)),
        logs.join("\n"),
      );
      const why = `The issuance log's entries changed under the service: ${before.length} bytes ` +
        "expected, 0 found";
      assert.ok(logs.some((l) => l.includes(why)), logs.join("\n"));
      assert.deepEqual((await ca.database()).filter((e) => e.name === "alice"), []);
    } finally {
      await service.close();
    }
    await Deno.writeFile(ca.paths.logEntries, before);
    const restarted = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    service = await CaService.start(restarted, { port: 0, log: (l) => logs.push(l) });
    try {
      const reply = await enroll();
      assert.equal(reply.status, 200, reply.body);
      const json = reply.json() as {
        certificate: string;
        log: LogProofJson;
      };
      const der = pemDecode(json.certificate, "CERTIFICATE")!;
      // Logged last, after the entries that were put back.
      const proved = verifyLogProof(der, json.log, logKeyOf(ca));
      assert.equal(json.log.index, proved.size - 1);
      assert.ok(proved.size > 2);
    } finally {
      await service.close();
    }
  });
});
