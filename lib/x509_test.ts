import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync } from "node:crypto";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { tlv } from "./_der_builder.ts";
import { E2eError } from "./errors.ts";
import { openssl } from "./openssl.ts";
import { pemDecode, pemEncode } from "./pem.ts";
import {
  certificateUsage,
  EKU,
  keyFingerprint,
  memberKeyProblem,
  parseCertificate,
  sha256Hex,
} from "./x509.ts";

const decoder = new TextDecoder();

/** A self-signed EC certificate made by the real openssl, with its key. */
async function selfSigned(subject: string, serial = "0x0123456789abcdef", addext: string[] = []) {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-x509-test-" });
  try {
    await openssl(
      ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem"],
      { cwd: dir },
    );
    await openssl([
      ...["req", "-x509", "-new", "-key", "key.pem", "-config", "/dev/null", "-utf8"],
      ...["-subj", subject, "-days", "3", "-set_serial", serial, "-out", "cert.pem"],
      ...addext.flatMap((ext) => ["-addext", ext]),
    ], { cwd: dir });
    return {
      cert: await Deno.readTextFile(join(dir, "cert.pem")),
      key: await Deno.readTextFile(join(dir, "key.pem")),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function x509Field(cert: string, ...flags: string[]): Promise<string> {
  const { stdout } = await openssl(["x509", "-noout", ...flags], { stdin: cert });
  return decoder.decode(stdout).trim();
}

Deno.test("sha256Hex() is 64 lowercase hex characters of SHA-256", () => {
  assert.equal(
    sha256Hex(new Uint8Array()),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
  assert.equal(
    sha256Hex(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

Deno.test("keyFingerprint() is the SHA-256 of the key's SubjectPublicKeyInfo DER", () => {
  const { publicKey } = generateKeyPairSync("ed25519");
  const spki = publicKey.export({ type: "spki", format: "der" });
  assert.equal(keyFingerprint(publicKey), createHash("sha256").update(spki).digest("hex"));
});

Deno.test("parseCertificate() fingerprint equals openssl's SHA-256 fingerprint, lowercased without colons", async () => {
  const { cert } = await selfSigned("/CN=alice");
  const info = parseCertificate(cert);
  const printed = await x509Field(cert, "-fingerprint", "-sha256");
  const sha256 = /^sha256 Fingerprint=([0-9A-F:]+)$/i.exec(printed);
  assert.ok(sha256, printed);
  assert.equal(info.fingerprint, sha256[1].replaceAll(":", "").toLowerCase());
  assert.match(info.fingerprint, /^[0-9a-f]{64}$/);
});

Deno.test("parseCertificate() key fingerprint equals the SHA-256 of openssl's public key DER", async () => {
  const { cert, key } = await selfSigned("/CN=alice");
  const { stdout } = await openssl(["pkey", "-pubout", "-outform", "DER"], { stdin: key });
  assert.equal(parseCertificate(cert).keyFingerprint, sha256Hex(stdout));
});

Deno.test("parseCertificate() reads serial (uppercase hex, as openssl prints it), name and validity", async () => {
  const { cert } = await selfSigned("/O=Example Org/CN=alice");
  const info = parseCertificate(cert);
  assert.equal(info.serial, "0123456789ABCDEF");
  assert.equal(`serial=${info.serial}`, await x509Field(cert, "-serial"));
  assert.equal(info.commonName, "alice");
  const notBefore = (await x509Field(cert, "-startdate")).replace("notBefore=", "");
  const notAfter = (await x509Field(cert, "-enddate")).replace("notAfter=", "");
  assert.equal(info.notBefore.getTime(), new Date(notBefore).getTime());
  assert.equal(info.notAfter.getTime(), new Date(notAfter).getTime());
  assert.equal(info.notAfter.getTime() - info.notBefore.getTime(), 3 * 86_400_000);
  assert.match(info.pem, /^-----BEGIN CERTIFICATE-----\n/);
  assert.equal(parseCertificate(info.pem).fingerprint, info.fingerprint);
});

Deno.test("parseCertificate() reports an empty common name for a subject without one", async () => {
  const { cert } = await selfSigned("/O=Example Org");
  assert.equal(parseCertificate(cert).commonName, "");
});

Deno.test("parseCertificate() ignores text around the PEM block", async () => {
  const { cert } = await selfSigned("/CN=alice");
  assert.equal(parseCertificate(`subject=CN=alice\n${cert}\n`).commonName, "alice");
});

Deno.test("parseCertificate() refuses text without a PEM certificate with ERR_FILE", () => {
  for (const text of ["", "hello", pemEncode(Uint8Array.of(0x30, 0x00), "CERTIFICATE REQUEST")]) {
    assert.throws(() => parseCertificate(text), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_FILE");
      assert.equal(e.message, "Not a PEM certificate");
      return true;
    });
  }
});

Deno.test("parseCertificate() refuses a PEM block that is not a certificate with ERR_FILE", () => {
  assert.throws(
    () => parseCertificate(pemEncode(Uint8Array.of(0x30, 0x03, 2, 1, 0), "CERTIFICATE")),
    (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_FILE");
      assert.equal(e.message, "Cannot parse the certificate");
      return true;
    },
  );
});

Deno.test("certificateUsage() reads keyUsage bits, extendedKeyUsage OIDs and unknown critical extensions", async () => {
  const { cert } = await selfSigned("/CN=alice", "0x01", [
    "keyUsage=critical,digitalSignature,keyAgreement,decipherOnly",
    "extendedKeyUsage=serverAuth,clientAuth",
    "subjectAltName=DNS:alice",
    "1.3.6.1.4.1.55555.1=critical,ASN1:NULL",
    "1.3.6.1.4.1.55555.2=ASN1:NULL",
  ]);
  const usage = certificateUsage(pemDecode(cert, "CERTIFICATE")!);
  assert.deepEqual(
    [...usage.keyUsage!].sort(),
    ["decipherOnly", "digitalSignature", "keyAgreement"],
  );
  assert.deepEqual([...usage.extendedKeyUsage!].sort(), [EKU.serverAuth, EKU.clientAuth]);
  // A non-critical unknown extension may be ignored (RFC 5280 §4.2); a critical one may not.
  assert.deepEqual(usage.unknownCritical, ["1.3.6.1.4.1.55555.1"]);
});

Deno.test("certificateUsage() tells a missing keyUsage or extendedKeyUsage from an empty one", async () => {
  const { cert } = await selfSigned("/CN=alice");
  const usage = certificateUsage(pemDecode(cert, "CERTIFICATE")!);
  assert.equal(usage.keyUsage, undefined);
  assert.equal(usage.extendedKeyUsage, undefined);
  assert.deepEqual(usage.unknownCritical, []);
});

Deno.test("certificateUsage() refuses bytes that are not a certificate with ERR_FILE", () => {
  for (
    const bytes of [
      new Uint8Array(),
      Uint8Array.of(0x30, 0x00),
      Uint8Array.of(0x30, 0x02, 0x05, 0x00),
    ]
  ) {
    assert.throws(() => certificateUsage(bytes), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_FILE");
      assert.equal(e.message, "Cannot parse the certificate");
      return true;
    });
  }
});

Deno.test("certificateUsage() refuses a certificate with two instances of one extension (RFC 5280 §4.2)", () => {
  // Only the extensions matter here: a tbsCertificate holding nothing else, no signature.
  const eku = (oid: number[]) =>
    tlv(
      0x30,
      tlv(0x06, Uint8Array.of(0x55, 0x1d, 0x25)), // 2.5.29.37 extKeyUsage
      tlv(
        0x04,
        tlv(0x30, tlv(0x06, Uint8Array.of(0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, ...oid))),
      ),
    );
  const cert = (...extensions: Uint8Array[]) =>
    tlv(0x30, tlv(0x30, tlv(0xa3, tlv(0x30, ...extensions))));
  assert.deepEqual([...certificateUsage(cert(eku([1]))).extendedKeyUsage!], [EKU.serverAuth]);
  assert.throws(() => certificateUsage(cert(eku([1]), eku([2]))), (e) => {
    assert.ok(e instanceof E2eError);
    assert.equal(e.code, "ERR_FILE");
    assert.equal(e.message, "Cannot parse the certificate");
    return true;
  });
});

// The Ed25519 points of small order (RFC 8032 §5.1.3 leaves them to the verifier): for them
// "R = identity, S = 0" verifies on every message, in node:crypto and WebCrypto alike.
const SMALL_ORDER_ED25519 = [
  "0100000000000000000000000000000000000000000000000000000000000000", // identity
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2 (y = p − 1)
  "0000000000000000000000000000000000000000000000000000000000000000", // order 4
  "0000000000000000000000000000000000000000000000000000000000000080", // order 4
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
];

function ed25519Key(hex: string) {
  const spki = tlv(
    0x30,
    tlv(0x30, Uint8Array.of(0x06, 0x03, 0x2b, 0x65, 0x70)),
    tlv(0x03, Uint8Array.of(0), Uint8Array.from(hex.match(/../g)!.map((b) => parseInt(b, 16)))),
  );
  return createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
}

Deno.test("memberKeyProblem() refuses the 8 small-order Ed25519 keys and non-canonical ones (y ≥ p), and accepts real ones", () => {
  for (const hex of SMALL_ORDER_ED25519) {
    assert.equal(
      memberKeyProblem(ed25519Key(hex)),
      "the Ed25519 key is a point of small order",
      hex,
    );
  }
  // y = p, p + 1 and 2^255 − 1: encodings of y ≥ p (node:crypto reads them), which no honest
  // key has.
  for (
    const hex of [
      "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
      "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
      "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
  ) {
    assert.equal(memberKeyProblem(ed25519Key(hex)), "the Ed25519 key is not canonical", hex);
  }
  for (let i = 0; i < 20; i++) {
    assert.equal(memberKeyProblem(generateKeyPairSync("ed25519").publicKey), undefined);
  }
});
