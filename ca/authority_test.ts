import assert from "node:assert/strict";
import { join } from "node:path";
import { CRL_REASON_CODES, parseCrl } from "../lib/crl.ts";
import { parseCsr } from "../lib/csr.ts";
import { tlv } from "../lib/_der_builder.ts";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import { withLock } from "../lib/lock.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { normalizeSerialHex, parseCertificate, sha256Hex } from "../lib/x509.ts";
import { e2eError as sharedE2eError, withTempDir } from "../lib/_test_util.ts";
import { makeCsr, PASSPHRASE, snapshot } from "../tests/_helpers.ts";
import { stracePath, traceFileCalls } from "../tests/_syscalls.ts";
import { CertificateAuthority } from "./authority.ts";
import { REVOKE_REASONS } from "./policy.ts";
import { formatKeyIds, parseKeyIds, readIndex } from "./store.ts";

const DAY_MS = 86_400_000;
const decoder = new TextDecoder();

/** A fresh EC P-256 CA (the fast kind) in a temporary home. */
async function withCa(
  fn: (ca: CertificateAuthority, home: string) => Promise<void>,
  options: { days?: number; commonName?: string } = {},
): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, {
      keyType: "ec-p256",
      ...options,
    });
    await fn(ca, home);
  });
}

/** An E2eError with `code` and `message`, which never shows the passphrase. */
function e2eError(code: ErrorCode, message: string | RegExp): (e: unknown) => boolean {
  return sharedE2eError(code, message, { never: [PASSPHRASE] });
}

function near(actual: Date, expected: number, toleranceMs: number, what: string): void {
  assert.ok(
    Math.abs(actual.getTime() - expected) <= toleranceMs,
    `${what}: ${actual.toISOString()} is not within ${toleranceMs} ms of ${
      new Date(expected).toISOString()
    }`,
  );
}

/** Extensions as openssl prints them: header line (without ": critical") → value text. */
async function extensions(pem: string): Promise<Map<string, string>> {
  const { stdout } = await openssl([
    ...["x509", "-noout", "-ext"],
    "basicConstraints,keyUsage,extendedKeyUsage,subjectAltName",
  ], { stdin: pem });
  const out = new Map<string, string>();
  let header = "";
  for (const line of decoder.decode(stdout).split("\n")) {
    if (!line.trim()) continue;
    if (!line.startsWith(" ")) {
      header = line.trim();
      out.set(header, "");
    } else {
      out.set(header, (out.get(header) ? out.get(header) + " " : "") + line.trim());
    }
  }
  return out;
}

/** The CRL as openssl prints it, after checking its signature against the CA certificate. */
async function crlText(ca: CertificateAuthority, crlPem: string): Promise<string> {
  const { stderr } = await openssl(["crl", "-CAfile", ca.paths.cert, "-noout"], { stdin: crlPem });
  assert.match(stderr, /verify OK/);
  const { stdout } = await openssl(["crl", "-noout", "-text"], { stdin: crlPem });
  return decoder.decode(stdout);
}

/** A serial as a user might type it: lowercase pairs with colons. */
function colonLower(serial: string): string {
  const even = serial.length % 2 ? `0${serial}` : serial;
  return even.toLowerCase().match(/../g)!.join(":");
}

// ---------------------------------------------------------------------------
// init and open

Deno.test("CertificateAuthority.init() creates an EC P-256 CA with private files and a first CRL", async () => {
  await withCa(async (ca, home) => {
    const { paths, certificate } = ca;
    assert.equal(paths.dir, join(home, "ca"));
    assert.equal((await Deno.stat(home)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(paths.dir)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(paths.key)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(paths.index)).mode! & 0o777, 0o600);
    const key = await Deno.readTextFile(paths.key);
    assert.match(key, /^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
    assert.equal(await Deno.readTextFile(paths.index), "");
    assert.match(await Deno.readTextFile(paths.crl), /^-----BEGIN X509 CRL-----/);
    // Nothing of the staging folder is left beside the CA.
    const inHome = [];
    for await (const entry of Deno.readDir(home)) inHome.push(entry.name);
    assert.deepEqual(inHome.filter((n) => n.startsWith(".ca-init-")), []);

    assert.equal(certificate.commonName, "e2e-chat CA");
    assert.equal(certificate.x509.subject, certificate.x509.issuer);
    assert.equal(certificate.x509.ca, true);
    assert.equal(certificate.x509.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.ok(certificate.x509.verify(certificate.x509.publicKey), "self-signed");
    assert.equal(certificate.fingerprint, sha256Hex(pemDecode(certificate.pem, "CERTIFICATE")!));
    near(certificate.notAfter, Date.now() + 1826 * DAY_MS, 5 * 60_000, "notAfter");
    const ext = await extensions(certificate.pem);
    // pathlen:0: the CA signs members, never another CA (RFC 5280 §4.2.1.9).
    assert.equal(ext.get("X509v3 Basic Constraints: critical"), "CA:TRUE, pathlen:0");
    assert.equal(ext.get("X509v3 Key Usage: critical"), "Certificate Sign, CRL Sign");
  });
});

Deno.test("CertificateAuthority.init() uses the given common name verbatim, openssl's special characters included", async () => {
  const commonName = "Example / Org+CA=1 \\ é";
  await withCa((ca) => {
    assert.equal(ca.certificate.commonName, commonName);
    near(ca.certificate.notAfter, Date.now() + 30 * DAY_MS, 5 * 60_000, "notAfter");
    return Promise.resolve();
  }, { commonName, days: 30 });
});

Deno.test("CertificateAuthority.init() refuses a home that already has a CA and leaves it as it was", async () => {
  await withCa(async (_ca, home) => {
    const before = await snapshot(join(home, "ca"));
    await assert.rejects(
      () => CertificateAuthority.init(home, "another passphrase", { keyType: "ec-p256" }),
      e2eError("ERR_CA_EXISTS", `Cannot create a CA: "${join(home, "ca")}" already exists`),
    );
    assert.deepEqual(await snapshot(join(home, "ca")), before);
  });
});

Deno.test("CertificateAuthority.init() refuses a common name with control characters, empty or too long, before creating anything", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    for (const commonName of ["evil\nCA", "tab\tCA", "bell\u0007", "del\u007f", "x".repeat(65)]) {
      await assert.rejects(
        () => CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256", commonName }),
        e2eError("ERR_USAGE", "Invalid CA common name: use 1 to 64 printable characters"),
        JSON.stringify(commonName),
      );
    }
    // An empty string is refused too rather than silently replaced by the default.
    await assert.rejects(
      () => CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256", commonName: "" }),
      e2eError("ERR_USAGE", "Invalid CA common name: use 1 to 64 printable characters"),
    );
    assert.equal(await Deno.lstat(home).then(() => true, () => false), false);
  });
});

Deno.test("CertificateAuthority.init() refuses a validity outside 1 to 36500 days", async () => {
  await withTempDir(async (home) => {
    for (const days of [0, 36_501, 1.5]) {
      await assert.rejects(
        () => CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256", days }),
        e2eError("ERR_DAYS_INVALID", `Invalid validity "${days}": use whole days from 1 to 36500`),
      );
    }
  });
});

Deno.test("CertificateAuthority.open() of a home without a CA fails with ERR_CA_MISSING", async () => {
  await withTempDir(async (home) => {
    await assert.rejects(
      () => CertificateAuthority.open(home, { passphrase: PASSPHRASE }),
      e2eError("ERR_CA_MISSING", `No CA in "${join(home, "ca")}"`),
    );
  });
});

Deno.test("CertificateAuthority.open() reads the CA certificate without needing the passphrase", async () => {
  await withCa(async (ca, home) => {
    const opened = await CertificateAuthority.open(home);
    assert.equal(opened.certificate.fingerprint, ca.certificate.fingerprint);
    assert.deepEqual(await opened.list(), []);
  });
});

// ---------------------------------------------------------------------------
// sign

Deno.test("sign() issues a certificate for the name, signed by the CA, with the profile's extensions", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const requestKey = parseCsr(csr).keyFingerprint;
    const before = Date.now();
    const { certificate, superseded } = await ca.sign(csr, "alice");
    assert.deepEqual(superseded, []);
    assert.equal(certificate.commonName, "alice");
    assert.equal(certificate.x509.subject, "CN=alice");
    assert.equal(certificate.x509.issuer, ca.certificate.x509.subject);
    assert.ok(certificate.x509.checkIssued(ca.certificate.x509));
    assert.ok(certificate.x509.verify(ca.certificate.x509.publicKey));
    assert.equal(certificate.x509.ca, false);
    assert.equal(certificate.keyFingerprint, requestKey);
    assert.match(certificate.serial, /^[0-9A-F]{16,}$/);
    near(certificate.notBefore, before - 5 * 60_000, 60_000, "notBefore is backdated 5 minutes");
    near(certificate.notAfter, before + 7 * DAY_MS, 60_000, "notAfter is 7 days away");

    const ext = await extensions(certificate.pem);
    assert.equal(ext.get("X509v3 Basic Constraints: critical"), "CA:FALSE");
    assert.equal(ext.get("X509v3 Key Usage: critical"), "Digital Signature, Key Agreement");
    assert.equal(
      ext.get("X509v3 Extended Key Usage:"),
      "TLS Web Server Authentication, TLS Web Client Authentication",
    );
    assert.equal(ext.get("X509v3 Subject Alternative Name:"), "DNS:alice");

    assert.equal(await Deno.readTextFile(ca.paths.certFile(certificate.serial)), certificate.pem);
    const index = await readIndex(ca.paths);
    assert.deepEqual(index.map((e) => [e.status, e.serial, e.name]), [
      ["V", certificate.serial, "alice"],
    ]);
  });
});

Deno.test("sign() honours days, and gives an RSA key keyEncipherment too", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("bob", { keyType: "rsa-2048" });
    const { certificate } = await ca.sign(csr, "bob", { days: 3 });
    near(certificate.notAfter, Date.now() + 3 * DAY_MS, 60_000, "notAfter");
    const ext = await extensions(certificate.pem);
    assert.equal(ext.get("X509v3 Key Usage: critical"), "Digital Signature, Key Encipherment");
  });
});

Deno.test("sign() issues for an Ed25519 request, with digitalSignature only", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("carol", { keyType: "ed25519" });
    const { certificate } = await ca.sign(csr, "carol");
    assert.equal(certificate.x509.publicKey.asymmetricKeyType, "ed25519");
    const ext = await extensions(certificate.pem);
    assert.equal(ext.get("X509v3 Key Usage: critical"), "Digital Signature");
  });
});

Deno.test("sign() ignores the extensions and extra subject attributes a request asks for", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice", {
      subject: "/O=Evil Corp/CN=alice",
      addext: [
        "basicConstraints=critical,CA:TRUE",
        "subjectAltName=DNS:evil.example",
        "keyUsage=critical,keyCertSign",
      ],
    });
    const { certificate } = await ca.sign(csr, "alice");
    assert.equal(certificate.x509.subject, "CN=alice");
    assert.equal(certificate.x509.ca, false);
    const ext = await extensions(certificate.pem);
    assert.equal(ext.get("X509v3 Basic Constraints: critical"), "CA:FALSE");
    assert.equal(ext.get("X509v3 Key Usage: critical"), "Digital Signature, Key Agreement");
    assert.equal(ext.get("X509v3 Subject Alternative Name:"), "DNS:alice");
  });
});

Deno.test("sign() refuses a request for a different name than asked", async () => {
  await withCa(async (ca) => {
    const cases: Array<[string, string]> = [
      ["/CN=bob", 'Cannot sign request: it has common name "bob", not "alice"'],
      ["/O=Example Org", 'Cannot sign request: it has no common name, not "alice"'],
      ["/CN=alice/CN=bob", 'Cannot sign request: it has common names "alice", "bob", not "alice"'],
    ];
    for (const [subject, message] of cases) {
      const { csr } = await makeCsr("alice", { subject });
      await assert.rejects(() => ca.sign(csr, "alice"), e2eError("ERR_CSR_NAME_MISMATCH", message));
    }
    assert.deepEqual(await ca.list(), []);
  });
});

Deno.test("sign() refuses an invalid name before reading the request", async () => {
  await withCa(async (ca) => {
    for (const name of ["../evil", "Alice", "-x"]) {
      await assert.rejects(
        () => ca.sign("not even a request", name),
        e2eError("ERR_NAME_INVALID", `Invalid name ${JSON.stringify(name)}`),
      );
    }
  });
});

Deno.test("sign() refuses a key the policy does not allow", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice", { keyType: "rsa-1024" });
    await assert.rejects(
      () => ca.sign(csr, "alice"),
      e2eError(
        "ERR_KEY_REJECTED",
        "Cannot sign request: an RSA key of 1024 bits is too weak (at least 2048)",
      ),
    );
    const ed448 = await makeCsr("alice", { keyType: "ed448" });
    await assert.rejects(() => ca.sign(ed448.csr, "alice"), (e) => {
      // Ed448 is refused by the policy or as an unsupported signature: never signed.
      assert.ok(e instanceof E2eError);
      assert.ok(["ERR_KEY_REJECTED", "ERR_CSR_SIGNATURE"].includes(e.code), e.code);
      return true;
    });
    assert.deepEqual(await ca.list(), []);
  });
});

Deno.test("sign() refuses a P-521 request for its curve, not as a bad signature", async () => {
  // openssl signs this request correctly; saying "its signature does not verify" would mislead.
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice", { keyType: "ec-p521" });
    await assert.rejects(
      () => ca.sign(csr, "alice"),
      e2eError("ERR_KEY_REJECTED", 'Cannot sign request: the EC curve "secp521r1" is not allowed'),
    );
  });
});

Deno.test("sign() refuses an RSA key whose public exponent is over 33 bits, which no peer could read", async () => {
  await withCa(async (ca) => {
    const { stdout } = await openssl([
      ...["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
      ...["-pkeyopt", `rsa_keygen_pubexp:${2 ** 34 + 1}`],
    ]);
    const { csr } = await makeCsr("alice", { keyPem: new TextDecoder().decode(stdout) });
    await assert.rejects(
      () => ca.sign(csr, "alice"),
      e2eError("ERR_KEY_REJECTED", "Cannot sign request: its public key cannot be read"),
    );
    assert.deepEqual(await ca.list(), []);
  });
});

Deno.test("sign() refuses an EC key whose point is compressed, which TLS peers cannot use", async () => {
  await withCa(async (ca) => {
    const { key } = await makeCsr("alice");
    // The same P-256 key, its point in the compressed form (RFC 5480 allows it; rustls does not).
    const { stdout } = await openssl(["ec", "-conv_form", "compressed"], { stdin: key });
    const { csr } = await makeCsr("alice", { keyPem: new TextDecoder().decode(stdout) });
    await assert.rejects(
      () => ca.sign(csr, "alice"),
      e2eError(
        "ERR_KEY_REJECTED",
        "Cannot sign request: its public key is not in the standard encoding (an EC point must be uncompressed)",
      ),
    );
    assert.deepEqual(await ca.list(), []);
  });
});

Deno.test("sign() refuses a malformed or tampered request", async () => {
  await withCa(async (ca) => {
    await assert.rejects(
      () => ca.sign("-----BEGIN CERTIFICATE REQUEST-----\n!!\n", "alice"),
      e2eError("ERR_CSR_INVALID", /^Invalid certificate request: /),
    );
    const { csr } = await makeCsr("alice");
    const der = pemDecode(csr, "CERTIFICATE REQUEST")!;
    der[der.length - 1] ^= 1;
    await assert.rejects(
      () => ca.sign(der, "alice"),
      e2eError("ERR_CSR_SIGNATURE", "Cannot sign request: its signature does not verify"),
    );
  });
});

Deno.test("sign() refuses a validity longer than the CA has left", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    await assert.rejects(
      () => ca.sign(csr, "alice", { days: 31 }),
      e2eError("ERR_DAYS_INVALID", /^Invalid validity "31": use whole days from 1 to (29|30)$/),
    );
    await assert.rejects(
      () => ca.sign(csr, "alice", { days: 0 }),
      e2eError("ERR_DAYS_INVALID", /^Invalid validity "0": use whole days from 1 to (29|30)$/),
    );
  }, { days: 30 });
});

Deno.test("sign() with the same key renews: the old certificate is revoked as superseded", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = await ca.sign(csr, "alice");
    const second = await ca.sign(csr, "alice");
    assert.deepEqual(second.superseded, [first.certificate.serial]);
    assert.notEqual(second.certificate.serial, first.certificate.serial);
    const listed = await ca.list();
    assert.deepEqual(listed.map((c) => [c.serial, c.status, c.reason]), [
      [first.certificate.serial, "revoked", "superseded"],
      [second.certificate.serial, "valid", undefined],
    ]);
    const crl = await crlText(ca, await Deno.readTextFile(ca.paths.crl));
    assert.match(crl, new RegExp(`Serial Number: ${first.certificate.serial}`));
    assert.doesNotMatch(crl, new RegExp(`Serial Number: ${second.certificate.serial}`));
  });
});

Deno.test("sign() refuses a renewal whose certificate is revoked before its commit, even while it is being signed", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = await ca.sign(csr, "alice");
    const renews = first.certificate.serial;
    // Checked while alice's certificate is valid; the revocation takes the lock before its commit.
    const renewal = ca.sign(csr, "alice", { renews });
    // (Not keyCompromise: a compromised key is refused before the renewal is looked at.)
    await ca.revoke("alice", { reason: "affiliationChanged" });
    const refused = e2eError(
      "ERR_FORBIDDEN",
      `Cannot sign request: serial ${renews} is no longer the valid certificate of "alice"`,
    );
    await assert.rejects(renewal, refused);
    // And one that starts after the revocation is refused when checked.
    await assert.rejects(ca.sign(csr, "alice", { renews }), refused);
    assert.equal(await ca.current("alice"), undefined, "a confirmed revocation stays in force");
    assert.deepEqual((await ca.list()).map((c) => [c.serial, c.status]), [
      [first.certificate.serial, "revoked"],
    ]);
  });
});

Deno.test("sign() refuses a key revoked as keyCompromise after its request was checked and before its commit", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = await ca.sign(csr, "alice");
    // The CA's lock held here: the signing is checked (alice's key is fine) and signed, and the
    // revocation, asked for after it started, takes the lock before the signing's commit.
    const gate = Promise.withResolvers<void>();
    const held = withLock(ca.paths.lock, () => gate.promise);
    const signing = ca.sign(csr, "alice");
    signing.catch(() => {});
    const revoking = ca.revoke("alice", { reason: "keyCompromise" });
    await waitForSigned(ca.paths.signing);
    gate.resolve();
    await held;
    assert.equal((await revoking).reason, "keyCompromise");
    await assert.rejects(
      signing,
      e2eError(
        "ERR_KEY_REJECTED",
        `Cannot sign request: its key's certificate (serial ${first.certificate.serial}) was ` +
          "revoked as keyCompromise: that key is never certified again",
      ),
    );
    assert.deepEqual((await ca.list()).map((c) => [c.serial, c.status, c.reason]), [
      [first.certificate.serial, "revoked", "keyCompromise"],
    ]);
    assert.deepEqual([...Deno.readDirSync(ca.paths.signing)], [], "a signing folder was left");
  });
});

/** Waits until a signing folder under `dir` holds the certificate openssl signed there. */
async function waitForSigned(dir: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      for (const entry of Deno.readDirSync(dir)) {
        try {
          if (Deno.statSync(join(dir, entry.name, "issued.pem")).size > 0) return;
        } catch { /* not signed yet */ }
      }
    } catch { /* no folder yet */ }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("no signing finished within 20 s");
}

Deno.test("sign() refuses a different key for a name that holds a valid certificate", async () => {
  await withCa(async (ca) => {
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    const before = await snapshot(ca.paths.dir);
    const other = await makeCsr("alice");
    await assert.rejects(() => ca.sign(other.csr, "alice"), (e) => {
      e2eError(
        "ERR_NAME_TAKEN",
        'Cannot sign request: name "alice" already has a valid certificate',
      )(e);
      assert.match((e as E2eError).hint ?? "", new RegExp(`--replace.*${certificate.serial}`));
      return true;
    });
    assert.deepEqual(await snapshot(ca.paths.dir), before, "nothing was committed");
  });
});

Deno.test("sign() with replace revokes the old certificate as superseded and issues for the new key", async () => {
  await withCa(async (ca) => {
    const first = await ca.sign((await makeCsr("alice")).csr, "alice");
    const other = await makeCsr("alice");
    const second = await ca.sign(other.csr, "alice", { replace: true });
    assert.deepEqual(second.superseded, [first.certificate.serial]);
    assert.notEqual(second.certificate.keyFingerprint, first.certificate.keyFingerprint);
    const statuses = (await ca.list()).map((c) => [c.serial, c.status, c.reason]);
    assert.deepEqual(statuses, [
      [first.certificate.serial, "revoked", "superseded"],
      [second.certificate.serial, "valid", undefined],
    ]);
  });
});

Deno.test("sign() without a passphrase fails with ERR_PASSPHRASE_REQUIRED", async () => {
  await withCa(async (_ca, home) => {
    const opened = await CertificateAuthority.open(home);
    const { csr } = await makeCsr("alice");
    await assert.rejects(
      () => opened.sign(csr, "alice"),
      e2eError("ERR_PASSPHRASE_REQUIRED", "The CA passphrase is required for this operation"),
    );
    await assert.rejects(
      () => opened.revoke("alice"),
      e2eError("ERR_PASSPHRASE_REQUIRED", "The CA passphrase is required for this operation"),
    );
    await assert.rejects(
      () => opened.crl(),
      e2eError("ERR_PASSPHRASE_REQUIRED", "The CA passphrase is required for this operation"),
    );
  });
});

Deno.test("sign() with a wrong passphrase fails with ERR_BAD_PASSPHRASE and leaves the CA unchanged", async () => {
  await withCa(async (ca, home) => {
    await ca.sign((await makeCsr("alice")).csr, "alice");
    const before = await snapshot(ca.paths.dir);
    const wrong = await CertificateAuthority.open(home, { passphrase: "not the passphrase" });
    const { csr } = await makeCsr("bob");
    await assert.rejects(
      () => wrong.sign(csr, "bob"),
      e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase"),
    );
    await assert.rejects(
      () => wrong.revoke("alice"),
      e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase"),
    );
    assert.deepEqual(await snapshot(ca.paths.dir), before);
  });
});

Deno.test("sign() records every certificate, whatever its random serial looks like", async () => {
  // About one serial in eight starts with a 0 hex digit; sign enough to meet a few.
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const serials: string[] = [];
    for (let i = 0; i < 32; i++) {
      const { certificate } = await ca.sign(csr, "alice");
      serials.push(certificate.serial);
      assert.ok(
        await Deno.lstat(ca.paths.certFile(certificate.serial)).then(() => true, () => false),
        `certs/${certificate.serial}.pem exists`,
      );
    }
    assert.deepEqual((await readIndex(ca.paths)).map((e) => e.serial), serials);
  });
});

Deno.test("checkRequest() remembers only what it accepted: the same request for another name is still refused", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    assert.equal((await ca.checkRequest(csr, "alice")).request.commonNames[0], "alice");
    assert.equal((await ca.checkRequest(csr, "alice")).request.commonNames[0], "alice");
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        () => ca.checkRequest(csr, "bob"),
        e2eError(
          "ERR_CSR_NAME_MISMATCH",
          'Cannot sign request: it has common name "alice", not "bob"',
        ),
      );
    }
    const tampered = csr.replace(
      /[A-Za-z](?=[A-Za-z0-9+/=]*\n-----END)/,
      (c) => (c === "A" ? "B" : "A"),
    );
    await assert.rejects(() => ca.checkRequest(tampered, "alice"), (e) => e instanceof E2eError);
  });
});

// A request for the Ed25519 identity point, "signed" with R = identity, S = 0: a signature that
// node:crypto and WebCrypto accept on any message for that key, so anyone can make it.
function smallOrderEd25519Csr(name: string): string {
  const b = (...x: number[]) => Uint8Array.from(x);
  const ed25519 = tlv(0x30, b(0x06, 0x03, 0x2b, 0x65, 0x70));
  const point = new Uint8Array(32);
  point[0] = 1;
  const spki = tlv(0x30, ed25519, tlv(0x03, b(0), point));
  const cn = tlv(0x06, b(0x55, 0x04, 0x03));
  const subject = tlv(0x30, tlv(0x31, tlv(0x30, cn, tlv(0x0c, new TextEncoder().encode(name)))));
  const info = tlv(0x30, b(0x02, 0x01, 0x00), subject, spki, tlv(0xa0));
  const signature = new Uint8Array(64);
  signature[0] = 1;
  return pemEncode(
    tlv(0x30, info, ed25519, tlv(0x03, b(0), signature)),
    "CERTIFICATE REQUEST",
  );
}

Deno.test("checkRequest refuses a request for a small-order Ed25519 key", async () => {
  await withCa(async (ca) => {
    const csr = smallOrderEd25519Csr("alice");
    const refused = e2eError(
      "ERR_KEY_REJECTED",
      "Cannot sign request: the Ed25519 key is a point of small order",
    );
    await assert.rejects(() => ca.checkRequest(csr, "alice"), refused);
    await assert.rejects(() => ca.sign(csr, "alice"), refused);
    assert.equal(await ca.current("alice"), undefined);
  });
});

Deno.test("sign() runs beforeCommit with the new certificate before the index holds it", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const seen: Array<{ serial: string; indexed: boolean }> = [];
    const { certificate } = await ca.sign(csr, "alice", {
      beforeCommit: async (c) => {
        const indexed = (await readIndex(ca.paths)).some((e) => e.serial === c.serial);
        seen.push({ serial: c.serial, indexed });
      },
    });
    assert.deepEqual(seen, [{ serial: certificate.serial, indexed: false }]);
    assert.ok((await readIndex(ca.paths)).some((e) => e.serial === certificate.serial));
  });
});

Deno.test("sign() commits nothing when beforeCommit throws, and passes its error on", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const before = await readIndex(ca.paths);
    const refusal = new E2eError("ERR_FILE", "Cannot write the invites journal");
    await assert.rejects(
      ca.sign(csr, "alice", { beforeCommit: () => Promise.reject(refusal) }),
      (e) => e === refusal,
    );
    assert.deepEqual(await readIndex(ca.paths), before);
    assert.equal(await ca.current("alice"), undefined);
    // Nor is its certificate left in certs/ (the commit moved it there before the fsyncs).
    const certs = [...Deno.readDirSync(ca.paths.certs)].map((e) => e.name);
    assert.deepEqual(certs.sort(), before.map((e) => `${e.serial}.pem`).sort());
    // The next signing works.
    assert.equal((await ca.sign(csr, "alice")).certificate.commonName, "alice");
  });
});

Deno.test("sign() batches concurrent signings, each beforeCommit seeing its own certificate", async () => {
  await withCa(async (ca) => {
    const names = ["a1", "a2", "a3", "a4"];
    const csrs = await Promise.all(names.map(async (n) => (await makeCsr(n)).csr));
    const seen = new Map<string, string>();
    const issued = await Promise.all(names.map((n, i) =>
      ca.sign(csrs[i], n, {
        beforeCommit: (c) => {
          seen.set(n, c.commonName);
          return Promise.resolve();
        },
      })
    ));
    assert.deepEqual([...seen].sort(), names.map((n) => [n, n]));
    assert.deepEqual(issued.map((i) => i.certificate.commonName), names);
  });
});

Deno.test("sign() fails only the signing whose beforeCommit throws: the others of its group commit", async () => {
  await withCa(async (ca) => {
    const names = ["p0", "g1", "g2"];
    const csrs = await Promise.all(names.map(async (n) => (await makeCsr(n)).csr));
    // p0's commit holds the CA lock until g1 and g2 are signed, so that those two commit
    // together after it (a group), which their hooks see: each finds the other under way.
    const { pacer, open } = await holdingCommit(ca, csrs[0], "p0");
    const active = new Set<string>();
    let together = false;
    const hook = (name: string, error?: Error) => async () => {
      active.add(name);
      together ||= active.size === 2;
      await Promise.resolve();
      active.delete(name);
      if (error) throw error;
    };
    const refused = new E2eError("ERR_TOKEN_INVALID", "Invalid, used or expired invite token");
    const g1 = ca.sign(csrs[1], "g1", { beforeCommit: hook("g1", refused) });
    const g2 = ca.sign(csrs[2], "g2", { beforeCommit: hook("g2") });
    await waitUntilSigned(ca, 3); // p0's folder too
    open();
    await pacer;
    await assert.rejects(g1, (e) => e === refused);
    const issued = await g2;
    assert.ok(together, "g1 and g2 committed in one group");
    assert.equal(issued.certificate.commonName, "g2");
    assert.deepEqual((await ca.list()).map((c) => c.name), ["p0", "g2"]);
    const files = [...Deno.readDirSync(ca.paths.certs)].map((e) => e.name).sort();
    const listed = (await ca.list()).map((c) => `${c.serial}.pem`).sort();
    assert.deepEqual(files, listed, "g1's certificate is not left in certs/");
  });
});

Deno.test("sign() tells the others of a group to try again, not its refusal, when a superseding signing's beforeCommit throws", async () => {
  await withCa(async (ca) => {
    const names = ["p0", "g1", "g2"];
    const csrs = await Promise.all(names.map(async (n) => (await makeCsr(n)).csr));
    const before = await ca.sign(csrs[1], "g1"); // g1's next signing supersedes this one
    const { pacer, open } = await holdingCommit(ca, csrs[0], "p0");
    const refused = new E2eError("ERR_TOKEN_INVALID", "Invalid, used or expired invite token");
    const g1 = ca.sign(csrs[1], "g1", { beforeCommit: () => Promise.reject(refused) });
    const g2 = ca.sign(csrs[2], "g2");
    await waitUntilSigned(ca, 3);
    open();
    await pacer;
    await assert.rejects(g1, (e) => e === refused);
    await assert.rejects(
      g2,
      e2eError(
        "ERR_INTERNAL",
        "Not committed: another signing of the same commit was refused; try again",
      ),
    );
    // Nothing of the group was committed, and g2's request goes through when sent again.
    assert.equal((await ca.current("g1"))?.serial, before.certificate.serial);
    assert.equal(await ca.current("g2"), undefined);
    assert.equal((await ca.sign(csrs[2], "g2")).certificate.commonName, "g2");
  });
});

Deno.test("sign() that supersedes a certificate revokes nothing when its beforeCommit throws", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = await ca.sign(csr, "alice");
    const failure = new Error("the journal's disk is gone");
    await assert.rejects(
      ca.sign(csr, "alice", { beforeCommit: () => Promise.reject(failure) }),
      (e) => e === failure,
    );
    assert.equal((await ca.current("alice"))?.serial, first.certificate.serial);
    assert.deepEqual((await ca.list()).map((c) => c.status), ["valid"]);
  });
});

/**
 * Signs `csr` for `name` and holds its commit (and so the CA lock) until `open()`: signings
 * started meanwhile commit together after it, as one group. Resolves once the commit is held.
 */
async function holdingCommit(
  ca: CertificateAuthority,
  csr: string,
  name: string,
): Promise<{ pacer: Promise<unknown>; open: () => void }> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let committing!: () => void;
  const pacing = new Promise<void>((resolve) => (committing = resolve));
  const pacer = ca.sign(csr, name, {
    beforeCommit: () => {
      committing();
      return gate;
    },
  });
  await pacing;
  return { pacer, open };
}

/** Waits until `count` signing folders hold what openssl wrote, and a moment more. */
async function waitUntilSigned(ca: CertificateAuthority, count: number): Promise<void> {
  for (let i = 0; i < 600; i++) {
    let done = 0;
    try {
      for (const entry of Deno.readDirSync(ca.paths.signing)) {
        const index = join(ca.paths.signing, entry.name, "index.txt");
        if ((Deno.statSync(index).size ?? 0) > 0) done++;
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e; // a folder being made
    }
    if (done >= count) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  // What follows openssl's exit (reading its output) takes a few ms.
  await new Promise((resolve) => setTimeout(resolve, 300));
}

// ---------------------------------------------------------------------------
// revoke, crl, list

Deno.test("revoke() by name revokes the valid certificate and regenerates the CRL", async () => {
  await withCa(async (ca) => {
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    const before = Date.now();
    const entry = await ca.revoke("alice");
    assert.equal(entry.status, "R");
    assert.equal(entry.serial, certificate.serial);
    assert.equal(entry.name, "alice");
    assert.equal(entry.reason, "unspecified");
    near(entry.revokedAt!, before, 60_000, "revokedAt");
    const crl = await crlText(ca, await Deno.readTextFile(ca.paths.crl));
    assert.match(crl, new RegExp(`Serial Number: ${certificate.serial}`));
  });
});

Deno.test("revoke() by serial takes lowercase hex with colons, and records the reason", async () => {
  await withCa(async (ca) => {
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    const entry = await ca.revoke(colonLower(certificate.serial), { reason: "keyCompromise" });
    assert.equal(entry.serial, certificate.serial);
    assert.equal(entry.reason, "keyCompromise");
    const [listed] = await ca.list();
    assert.equal(listed.status, "revoked");
    assert.equal(listed.reason, "keyCompromise");
    const crl = await crlText(ca, await Deno.readTextFile(ca.paths.crl));
    assert.match(crl, /Key Compromise/);
  });
});

Deno.test("revoke() refuses a certificate that is already revoked", async () => {
  await withCa(async (ca) => {
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    await ca.revoke(certificate.serial);
    const before = await snapshot(ca.paths.dir);
    await assert.rejects(
      () => ca.revoke(certificate.serial.toLowerCase()),
      e2eError(
        "ERR_ALREADY_REVOKED",
        `Cannot revoke: serial ${certificate.serial} is already revoked`,
      ),
    );
    // By name, a revoked certificate is no longer the name's valid one.
    await assert.rejects(
      () => ca.revoke("alice"),
      e2eError("ERR_NOT_FOUND", 'Cannot revoke: no valid certificate for "alice"'),
    );
    assert.deepEqual(await snapshot(ca.paths.dir), before);
  });
});

Deno.test("revoke() retried after a revocation killed before its CRL was written brings crl.pem level with the index", async () => {
  await withCa(async (ca) => {
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    const crl = await Deno.readTextFile(ca.paths.crl);
    const crlnumber = await Deno.readTextFile(ca.paths.crlnumber);
    await ca.revoke("alice", { reason: "keyCompromise" });
    // What a kill between the index's rename and crlnumber's leaves: revoked, the CRL as before.
    await Deno.writeTextFile(ca.paths.crl, crl);
    await Deno.writeTextFile(ca.paths.crlnumber, crlnumber);
    const listed = new RegExp(`Serial Number: ${certificate.serial}`);
    assert.doesNotMatch(await crlText(ca, await Deno.readTextFile(ca.paths.crl)), listed);
    // The admin, who saw no confirmation, tries again.
    await assert.rejects(
      () => ca.revoke("alice"),
      e2eError("ERR_NOT_FOUND", 'Cannot revoke: no valid certificate for "alice"'),
    );
    assert.match(await crlText(ca, await Deno.readTextFile(ca.paths.crl)), listed);
    // With the CRL level, a refusal changes nothing.
    const before = await snapshot(ca.paths.dir);
    await assert.rejects(
      () => ca.revoke(certificate.serial),
      e2eError(
        "ERR_ALREADY_REVOKED",
        `Cannot revoke: serial ${certificate.serial} is already revoked`,
      ),
    );
    assert.deepEqual(await snapshot(ca.paths.dir), before);
  });
});

Deno.test("revoke() as keyCompromise of a serial a same-key renewal superseded records it as keyCompromise and revokes the renewal: the CRL and openssl verify -crl_check say so", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = (await ca.sign(csr, "alice")).certificate;
    const renewed = (await ca.sign(csr, "alice")).certificate;
    const entry = await ca.revoke(first.serial, { reason: "keyCompromise" });
    assert.deepEqual(
      [entry.serial, entry.reason, entry.formerReason, entry.sameKey.map((e) => e.serial)],
      [first.serial, "keyCompromise", "superseded", [renewed.serial]],
    );
    assert.deepEqual(
      (await readIndex(ca.paths)).map((e) => [e.serial, e.status, e.reason]),
      [[first.serial, "R", "keyCompromise"], [renewed.serial, "R", "keyCompromise"]],
    );
    const crl = await Deno.readTextFile(ca.paths.crl);
    const text = await crlText(ca, crl);
    for (const serial of [first.serial, renewed.serial]) {
      assert.match(text, new RegExp(`Serial Number: ${serial}[\\s\\S]*?Key Compromise`));
    }
    await withTempDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "chain.pem"), `${ca.certificate.pem}${crl}`);
      await Deno.writeTextFile(join(dir, "renewed.pem"), renewed.pem);
      const verify = await new Deno.Command("openssl", {
        args: ["verify", "-crl_check", "-CAfile", "chain.pem", "renewed.pem"],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(verify.success, false);
      assert.match(decoder.decode(verify.stdout) + decoder.decode(verify.stderr), /revoked/);
    });
    // Once more: that serial is revoked as keyCompromise already.
    await assert.rejects(
      () => ca.revoke(first.serial, { reason: "keyCompromise" }),
      e2eError("ERR_ALREADY_REVOKED", `Cannot revoke: serial ${first.serial} is already revoked`),
    );
    await assert.rejects(
      () => ca.sign(csr, "alice"),
      e2eError("ERR_KEY_REJECTED", /keyCompromise/),
    );
  });
});

Deno.test("revoke() of a superseded serial for any reason but keyCompromise is refused as already revoked", async () => {
  await withCa(async (ca) => {
    const { csr } = await makeCsr("alice");
    const first = (await ca.sign(csr, "alice")).certificate;
    await ca.sign(csr, "alice");
    await assert.rejects(
      () => ca.revoke(first.serial, { reason: "affiliationChanged" }),
      e2eError("ERR_ALREADY_REVOKED", `Cannot revoke: serial ${first.serial} is already revoked`),
    );
  });
});

Deno.test("sign() refuses a key another name holds a valid certificate for; the name's own renewal goes on, and once that certificate is revoked the key may have the other name", async () => {
  await withCa(async (ca) => {
    const { key, csr } = await makeCsr("alice");
    const alice = (await ca.sign(csr, "alice")).certificate;
    const forBob = (await makeCsr("bob", { keyPem: key })).csr;
    const refused = e2eError(
      "ERR_KEY_REJECTED",
      `Cannot sign request: its key has a valid certificate for "alice" (serial ${alice.serial}): ` +
        "a key is certified for one name at a time",
    );
    await assert.rejects(() => ca.sign(forBob, "bob"), refused);
    await assert.rejects(() => ca.checkRequest(forBob, "bob"), refused);
    const renewed = (await ca.sign(csr, "alice")).certificate;
    assert.equal(renewed.keyFingerprint, alice.keyFingerprint);
    await ca.revoke("alice", { reason: "cessationOfOperation" });
    const bob = (await ca.sign(forBob, "bob")).certificate;
    assert.equal(bob.keyFingerprint, alice.keyFingerprint);
  });
});

Deno.test("sign() of one key for two names at once certifies it for one of them only", async () => {
  await withCa(async (ca) => {
    const { key, csr } = await makeCsr("alice");
    const forBob = (await makeCsr("bob", { keyPem: key })).csr;
    const results = await Promise.allSettled([ca.sign(csr, "alice"), ca.sign(forBob, "bob")]);
    assert.deepEqual(results.map((r) => r.status).sort(), ["fulfilled", "rejected"]);
    const valid = (await readIndex(ca.paths)).filter((e) => e.status === "V");
    assert.equal(valid.length, 1);
  });
});

Deno.test("revoke() as keyCompromise also revokes the valid certificates of other names for the same key", async () => {
  await withCa(async (ca) => {
    const { key, csr } = await makeCsr("alice");
    const alice = (await ca.sign(csr, "alice")).certificate;
    // From before one key had one name (or ca sign in an old version).
    await ca.revoke("alice", { reason: "superseded" });
    const bob = (await ca.sign((await makeCsr("bob", { keyPem: key })).csr, "bob")).certificate;
    const carol = (await ca.sign((await makeCsr("carol")).csr, "carol")).certificate;
    const entry = await ca.revoke(alice.serial, { reason: "keyCompromise" });
    assert.deepEqual(entry.sameKey.map((e) => [e.serial, e.name, e.reason]), [
      [bob.serial, "bob", "keyCompromise"],
    ]);
    assert.ok(await ca.isCurrent(carol.serial));
  });
});

Deno.test("revoke() of an unknown name or serial fails with ERR_NOT_FOUND", async () => {
  await withCa(async (ca) => {
    await ca.sign((await makeCsr("alice")).csr, "alice");
    for (const what of ["bob", "DEADBEEF", "de:ad:be:ef", ""]) {
      await assert.rejects(
        () => ca.revoke(what),
        e2eError(
          "ERR_NOT_FOUND",
          `Cannot revoke: no valid certificate for ${JSON.stringify(what)}`,
        ),
      );
    }
  });
});

Deno.test("crl() returns a fresh PEM X509 CRL signed by the CA, with an increasing number, and stores it", async () => {
  await withCa(async (ca) => {
    const first = await ca.crl();
    const second = await ca.crl();
    assert.match(first, /^-----BEGIN X509 CRL-----\n[\s\S]+-----END X509 CRL-----\n$/);
    assert.equal(await Deno.readTextFile(ca.paths.crl), second);
    const number = async (pem: string) =>
      Number.parseInt(/X509v3 CRL Number:\s*\n\s*([0-9A-F]+)/.exec(await crlText(ca, pem))![1], 16);
    assert.ok((await number(second)) > (await number(first)));
    const text = await crlText(ca, second);
    assert.match(text, /Version 2/);
    assert.match(text, /X509v3 Authority Key Identifier/);
    const nextUpdate = /Next Update: (.+)/.exec(text)![1];
    near(new Date(nextUpdate), Date.now() + 7 * DAY_MS, 5 * 60_000, "nextUpdate");
  });
});

Deno.test("a CA restored from an older copy numbers its next CRL above every CRL it signed since", async () => {
  await withCa(async (ca) => {
    const number = async (pem: string) =>
      BigInt("0x" + /X509v3 CRL Number:\s*\n\s*([0-9A-F]+)/.exec(await crlText(ca, pem))![1]);
    const backup = await Deno.readTextFile(ca.paths.crlnumber);
    let highest = 0n;
    for (let i = 0; i < 3; i++) {
      const n = await number(await ca.crl());
      assert.ok(n > highest, `CRL number ${n} after ${highest}`);
      highest = n;
    }
    // The admin restores the CA's files from the copy: crlnumber goes back.
    await Deno.writeTextFile(ca.paths.crlnumber, backup);
    const after = await number(await ca.crl());
    assert.ok(after > highest, `CRL number ${after} after a restore, ${highest} before it`);
  });
});

Deno.test("list() reports every certificate oldest first, with status, dates and fingerprint", async () => {
  await withCa(async (ca) => {
    const alice = await ca.sign((await makeCsr("alice")).csr, "alice");
    const bob = await ca.sign((await makeCsr("bob")).csr, "bob");
    await ca.revoke("bob", { reason: "cessationOfOperation" });
    // An entry whose time has passed, as openssl would keep it, with no certificate file.
    await Deno.writeTextFile(
      ca.paths.index,
      "V\t200101000000Z\t\tAB12\tunknown\t/CN=old\n",
      { append: true },
    );
    const listed = await ca.list();
    assert.deepEqual(listed.map((c) => [c.name, c.status]), [
      ["alice", "valid"],
      ["bob", "revoked"],
      ["old", "expired"],
    ]);
    assert.equal(listed[0].serial, alice.certificate.serial);
    assert.equal(listed[0].fingerprint, alice.certificate.fingerprint);
    assert.equal(listed[0].notAfter, alice.certificate.notAfter.toISOString());
    assert.equal(listed[0].revokedAt, undefined);
    assert.equal(listed[1].serial, bob.certificate.serial);
    assert.equal(listed[1].reason, "cessationOfOperation");
    assert.match(listed[1].revokedAt ?? "", /^\d{4}-\d\d-\d\dT/);
    assert.equal(listed[2].fingerprint, "");
    assert.equal(listed[2].notAfter, "2020-01-01T00:00:00.000Z");
  });
});

// ---------------------------------------------------------------------------
// lookups used by the service

Deno.test("unlock() accepts the right passphrase and refuses a wrong one", async () => {
  await withCa(async (ca, home) => {
    await ca.unlock();
    const wrong = await CertificateAuthority.open(home, { passphrase: "not the passphrase" });
    await assert.rejects(
      () => wrong.unlock(),
      e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase"),
    );
  });
});

Deno.test("unlock(passphrase) on a CA opened without one checks it and keeps it for signing; a wrong one is refused and not kept", async () => {
  await withCa(async (_, home) => {
    const ca = await CertificateAuthority.open(home);
    await assert.rejects(
      () => ca.unlock("not the passphrase"),
      e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase"),
    );
    await assert.rejects(
      () => ca.crl(),
      e2eError("ERR_PASSPHRASE_REQUIRED", "The CA passphrase is required for this operation"),
    );
    await ca.unlock(PASSPHRASE);
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    assert.ok(await ca.isCurrent(certificate.serial));
  });
});

Deno.test("current() and isCurrent() follow signing and revocation", async () => {
  await withCa(async (ca) => {
    assert.equal(await ca.current("alice"), undefined);
    const { certificate } = await ca.sign((await makeCsr("alice")).csr, "alice");
    assert.equal((await ca.current("alice"))?.fingerprint, certificate.fingerprint);
    assert.equal(await ca.isCurrent(certificate.serial), true);
    assert.equal(await ca.isCurrent(certificate.serial.toLowerCase()), true);
    await ca.revoke("alice");
    assert.equal(await ca.current("alice"), undefined);
    assert.equal(await ca.isCurrent(certificate.serial), false);
    assert.equal(await ca.isCurrent("DEADBEEF"), false);
  });
});

// ---------------------------------------------------------------------------
// Durability of what init() and openLog() create

const strace = await stracePath();
const CI = Deno.env.get("CI") === "true";

/**
 * Runs init() then openLog() in a child process under strace and returns, in order, its
 * fsyncs (`sync PATH`) and renames (`rename FROM TO`), with paths made relative to `home`.
 */
async function traceInitAndLog(home: string): Promise<string[]> {
  const script = [
    `import { CertificateAuthority } from ${
      JSON.stringify(import.meta.resolve("./authority.ts"))
    };`,
    `const ca = await CertificateAuthority.init(Deno.env.get("HOME_DIR"), Deno.env.get("PASS"),`,
    `  { keyType: "ec-p256" });`,
    `await ca.openLog();`,
    `await ca.issueServiceCertificate(["127.0.0.1"]);`,
  ].join("\n");
  const { code, stderr, calls } = await traceFileCalls(
    strace!,
    Deno.execPath(),
    ["eval", "--no-config", script],
    { env: { HOME_DIR: home, PASS: PASSPHRASE } },
  );
  assert.equal(code, 0, stderr);
  const rel = (p: string) => p === home ? "HOME" : p.replace(home + "/", "");
  return calls.filter((c) => c.ok && (c.call === "fsync" || c.call === "rename"))
    .map((c) => `${c.call === "fsync" ? "sync" : "rename"} ${c.paths.map(rel).join(" ")}`);
}

Deno.test({
  name:
    "init() makes the CA's files and its folder's name durable before it returns, openLog() the log key before its certificate, and issueServiceCertificate() the service's key and certificate",
  ignore: !strace && !CI,
  fn: async () => {
    assert.ok(strace, "CI=true and strace is not on PATH: this test cannot run");
    await withTempDir(async (dir) => {
      const home = join(dir, "home");
      const events = await traceInitAndLog(home);
      const into = events.findIndex((e) => /^rename \.ca-init-[^ /]+ ca$/.test(e));
      assert.ok(into >= 0, `the CA folder is renamed into place:\n${events.join("\n")}`);
      const stage = events[into].split(" ")[1];
      const before = events.slice(0, into);
      for (const file of ["ca.key", "ca.crt", "index.txt", "crlnumber", "crl.pem", "openssl.cnf"]) {
        assert.ok(
          before.includes(`sync ${stage}/${file}`),
          `${file} is on disk before the CA exists:\n${events.join("\n")}`,
        );
      }
      assert.ok(before.includes(`sync ${stage}`), "the folder's own entries are on disk first");
      const after = events.slice(into + 1);
      const homeSynced = after.indexOf("sync HOME");
      assert.ok(homeSynced >= 0, `the CA folder's name is made durable:\n${events.join("\n")}`);
      // The log key is on disk before its certificate names it, and both names are durable.
      const keySynced = after.indexOf("sync ca/log/log.key");
      const certNamed = after.findIndex((e) => / ca\/log\/log\.crt$/.test(e));
      assert.ok(keySynced >= 0 && certNamed > keySynced, `log.key first:\n${events.join("\n")}`);
      assert.ok(after.slice(certNamed).includes("sync ca/log"), "log.crt's name is durable");
      // The service's key is on disk before it takes its name, its certificate too, and both names.
      const keyNamed = after.findIndex((e) => / ca\/service\/key\.pem$/.test(e));
      const keyFrom = after[keyNamed]?.split(" ")[1];
      assert.ok(
        keyNamed >= 0 && after.slice(0, keyNamed).includes(`sync ${keyFrom}`),
        `the service key is on disk before its rename:\n${events.join("\n")}`,
      );
      const serviceCert = after.findIndex((e) => / ca\/service\/cert\.pem$/.test(e));
      assert.ok(serviceCert > keyNamed, `cert.pem is renamed into place:\n${events.join("\n")}`);
      assert.ok(
        after.slice(serviceCert).includes("sync ca/service"),
        `the service folder's names are durable:\n${events.join("\n")}`,
      );
    });
  },
});

Deno.test("revoke() as keyCompromise of a superseded serial, retried after a run killed before its CRL was written, brings the CRL's reason level with the index", async () => {
  await withCa(async (ca) => {
    // Alice lost her laptop and joined again with a new key; later her old key turns up stolen.
    const old = (await ca.sign((await makeCsr("alice")).csr, "alice")).certificate;
    await ca.sign((await makeCsr("alice")).csr, "alice", { replace: true });
    const crl = await Deno.readTextFile(ca.paths.crl);
    const crlnumber = await Deno.readTextFile(ca.paths.crlnumber);
    await ca.revoke(old.serial, { reason: "keyCompromise" });
    // What a kill between the index's rename and crlnumber's leaves: the reason changed in the
    // index, the CRL as before (listing the serial as superseded).
    await Deno.writeTextFile(ca.paths.crl, crl);
    await Deno.writeTextFile(ca.paths.crlnumber, crlnumber);
    // The admin, who saw no confirmation, tries again.
    await assert.rejects(
      () => ca.revoke(old.serial, { reason: "keyCompromise" }),
      e2eError("ERR_ALREADY_REVOKED", `Cannot revoke: serial ${old.serial} is already revoked`),
    );
    const text = await crlText(ca, await Deno.readTextFile(ca.paths.crl));
    const listed = text.match(new RegExp(`Serial Number: ${old.serial}[\\s\\S]*?Code: \\s*(.+)`));
    assert.equal(listed?.[1], "Key Compromise", "the CRL members get still says superseded");
  });
});

Deno.test("revoke() as keyCompromise, retried on a serial revoked so before one key had one name, still revokes another name's valid certificate for the key", async () => {
  await withCa(async (ca) => {
    const { key, csr } = await makeCsr("alice");
    const alice = (await ca.sign(csr, "alice")).certificate;
    // A CA from before one key had one name certified that key for bob too (made here as it
    // did, with openssl ca), and revoked alice's certificate as keyCompromise without looking
    // for other certificates of the key (here with openssl alone, as docs/CA.md allows).
    const bobCsr = join(ca.paths.dir, "tmp", "bob.csr");
    await Deno.writeTextFile(bobCsr, (await makeCsr("bob", { keyPem: key })).csr);
    const ext = join(ca.paths.dir, "tmp", "bob.ext");
    await Deno.writeTextFile(ext, "[leaf]\nbasicConstraints = critical, CA:FALSE\n");
    const hand = ["-config", "openssl.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
    await openssl(
      ["ca", ...hand, "-passin", PASSPHRASE_ARG, "-batch", "-notext", "-days", "7"].concat(
        ["-extfile", ext, "-extensions", "leaf", "-in", bobCsr],
      ),
      { cwd: ca.paths.dir, passphrase: PASSPHRASE },
    );
    await Deno.remove(ext);
    await Deno.remove(bobCsr);
    const bob = (await readIndex(ca.paths)).find((e) => e.name === "bob");
    assert.equal(bob?.status, "V", "the legacy certificate for bob was made");
    const bobCert = parseCertificate(await Deno.readTextFile(ca.paths.certFile(bob!.serial)));
    assert.equal(bobCert.keyFingerprint, alice.keyFingerprint);
    await openssl(
      ["ca", ...hand, "-passin", PASSPHRASE_ARG, "-revoke", ca.paths.certFile(alice.serial)].concat(
        ["-crl_reason", "keyCompromise"],
      ),
      { cwd: ca.paths.dir, passphrase: PASSPHRASE },
    );
    // After the upgrade, the admin revokes that serial as keyCompromise again, so that every
    // certificate of the key goes (today: ERR_ALREADY_REVOKED, and nothing else happens).
    const again = await ca.revoke(alice.serial, { reason: "keyCompromise" });
    assert.deepEqual(
      [again.serial, again.reason, again.already, again.formerReason],
      [alice.serial, "keyCompromise", true, undefined],
    );
    assert.deepEqual(again.sameKey.map((e) => [e.serial, e.name]), [[bob!.serial, "bob"]]);
    // With nothing left valid for the key, once more is refused.
    await assert.rejects(
      () => ca.revoke(alice.serial, { reason: "keyCompromise" }),
      e2eError("ERR_ALREADY_REVOKED", `Cannot revoke: serial ${alice.serial} is already revoked`),
    );
    const after = (await readIndex(ca.paths)).find((e) => e.serial === bob!.serial);
    assert.equal(
      after?.status,
      "R",
      "bob's certificate for the compromised key stays valid, and no command revokes it by the key",
    );
  });
});

Deno.test("the CRL the CA signs lists every revocation with the reason code its index line names", async () => {
  await withCa(async (ca) => {
    for (const [i, reason] of REVOKE_REASONS.entries()) {
      const name = `member${i}`;
      await ca.sign((await makeCsr(name)).csr, name);
      await ca.revoke(name, { reason });
    }
    const crl = parseCrl(await Deno.readTextFile(ca.paths.crl), ca.certificate.x509);
    const listed = (await readIndex(ca.paths)).map((e) => [
      e.reason,
      crl.reasons.get(normalizeSerialHex(e.serial)) ?? 0, // none: unspecified (RFC 5280 §5.3.1)
    ]);
    assert.deepEqual(listed, REVOKE_REASONS.map((r) => [r, CRL_REASON_CODES[r]]));
  });
});

Deno.test("checkRequest() in a fresh process takes key ids from the key-ids file a signing wrote, and one damaged is rebuilt without any decision changing", async () => {
  await withCa(async (ca, home) => {
    const alice = await makeCsr("alice");
    const aliceCert = (await ca.sign(alice.csr, "alice")).certificate;
    const mallory = await makeCsr("mallory");
    const malloryCert = (await ca.sign(mallory.csr, "mallory")).certificate;
    await ca.revoke("mallory", { reason: "keyCompromise" });
    const requests: [string, string][] = [
      [(await makeCsr("carol", { keyPem: alice.key })).csr, "carol"], // alice's key
      [(await makeCsr("dave", { keyPem: mallory.key })).csr, "dave"], // a compromised key
      [(await makeCsr("erin")).csr, "erin"],
    ];
    // What a CA opened anew (as by each `ca sign`) decides for each request; then it signs one
    // for a new member, which writes the key ids it had to read (a refusal writes nothing).
    let joined = 0;
    const decisions = async () => {
      const fresh = await CertificateAuthority.open(home, { passphrase: PASSPHRASE });
      const out: string[] = [];
      for (const [csr, name] of requests) {
        out.push(
          await fresh.checkRequest(csr, name).then(() => "ok", (e) => (e as E2eError).message),
        );
      }
      const name = `member${joined++}`;
      await fresh.sign((await makeCsr(name)).csr, name);
      return out;
    };
    const keyIds = async () => {
      const ids = parseKeyIds(await Deno.readTextFile(ca.paths.keyIds));
      return [aliceCert, malloryCert].map((c) => ids?.get(normalizeSerialHex(c.serial)));
    };
    const rebuilt = [aliceCert.keyFingerprint, malloryCert.keyFingerprint];
    const expected = await decisions();
    assert.match(expected[0], /another name|"alice"/);
    assert.match(expected[1], new RegExp(`serial ${malloryCert.serial}\\) was revoked`));
    assert.equal(expected[2], "ok");
    assert.deepEqual(await keyIds(), rebuilt);

    // Used: with alice's certificate file gone, her key is still known to be hers.
    const aside = join(ca.paths.tmp, "aside.pem");
    await Deno.rename(ca.paths.certFile(aliceCert.serial), aside);
    assert.deepEqual(await decisions(), expected);
    await Deno.rename(aside, ca.paths.certFile(aliceCert.serial));

    const full = await Deno.readTextFile(ca.paths.keyIds);
    for (
      const damaged of [
        "not a key-ids file\n",
        full.slice(0, full.length - 20), // cut short
        // A compromised key's serial said to have another key: never believed.
        formatKeyIds(new Map([[normalizeSerialHex(malloryCert.serial), "ab".repeat(32)]])),
      ]
    ) {
      await Deno.writeTextFile(ca.paths.keyIds, damaged);
      assert.deepEqual(await decisions(), expected);
      assert.deepEqual(await keyIds(), rebuilt);
    }
  });
});
