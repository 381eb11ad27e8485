import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, sign } from "node:crypto";
import { makeCsr } from "../tests/_helpers.ts";
import { MAX_CSR_BYTES, parseCsr, parseCsrAsync, subjectIsCommonName } from "./csr.ts";
import { children, readDer } from "./der.ts";
import { E2eError, type ErrorCode } from "./errors.ts";
import { pemDecode, pemEncode } from "./pem.ts";
import { keyFingerprint } from "./x509.ts";
import { concat, tlv } from "./_der_builder.ts";

const OID_CN = "2.5.4.3";
const OID_O = "2.5.4.10";

function der(pem: string): Uint8Array {
  const out = pemDecode(pem, "CERTIFICATE REQUEST");
  assert.ok(out, "openssl made a PEM certificate request");
  return out;
}

/** The three parts of a request: CertificationRequestInfo, algorithm, signature. */
function parts(csr: Uint8Array) {
  const [info, algorithm, signature] = children(readDer(csr));
  return { info, algorithm, signature };
}

/** A request with `info` signed again by the EC key `keyPem`, so only `info`'s flaws remain. */
function resignEc(info: Uint8Array, keyPem: string): Uint8Array {
  const ecdsaWithSha256 = tlv(
    0x30,
    Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2),
  );
  const signature = new Uint8Array(sign("sha256", info, createPrivateKey(keyPem)));
  return tlv(0x30, info, ecdsaWithSha256, tlv(0x03, Uint8Array.of(0), signature));
}

// The wording around it may change; naming the block it looks for should not.
const NO_PEM_BLOCK = /^Invalid certificate request: .*PEM CERTIFICATE REQUEST block/;

function fingerprintOfPrivateKey(keyPem: string): string {
  return keyFingerprint(createPublicKey(createPrivateKey(keyPem)));
}

function e2eError(code: ErrorCode, message: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, code);
    assert.match(e.message, message);
    return true;
  };
}

Deno.test("parseCsr() reads an EC P-256 request: its name, key and fingerprint", async () => {
  const { csr, key } = await makeCsr("alice", { keyType: "ec-p256" });
  const request = parseCsr(csr);
  assert.deepEqual(request.commonNames, ["alice"]);
  assert.deepEqual(request.subject, [[OID_CN, "alice"]]);
  assert.equal(request.publicKey.asymmetricKeyType, "ec");
  assert.equal(request.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
  assert.equal(request.keyFingerprint, fingerprintOfPrivateKey(key));
  assert.match(request.keyFingerprint, /^[0-9a-f]{64}$/);
  assert.deepEqual(request.requestedExtensions, []);
  assert.deepEqual(request.der, der(csr));
});

Deno.test("parseCsr() reads an RSA 2048 request", async () => {
  const { csr, key } = await makeCsr("bob", { keyType: "rsa-2048" });
  const request = parseCsr(csr);
  assert.deepEqual(request.commonNames, ["bob"]);
  assert.equal(request.publicKey.asymmetricKeyType, "rsa");
  assert.equal(request.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  assert.equal(request.keyFingerprint, fingerprintOfPrivateKey(key));
});

Deno.test("parseCsr() reads an Ed25519 request", async () => {
  const { csr, key } = await makeCsr("carol", { keyType: "ed25519" });
  const request = parseCsr(csr);
  assert.deepEqual(request.commonNames, ["carol"]);
  assert.equal(request.publicKey.asymmetricKeyType, "ed25519");
  assert.equal(request.keyFingerprint, fingerprintOfPrivateKey(key));
});

Deno.test("parseCsr() reads an EC P-384 request", async () => {
  const { csr, key } = await makeCsr("dave", { keyType: "ec-p384" });
  const request = parseCsr(csr);
  assert.equal(request.publicKey.asymmetricKeyDetails?.namedCurve, "secp384r1");
  assert.equal(request.keyFingerprint, fingerprintOfPrivateKey(key));
});

Deno.test("parseCsr() parses requests for keys the policy refuses (policy is checked later)", async () => {
  const { csr } = await makeCsr("weak", { keyType: "rsa-1024" });
  assert.equal(parseCsr(csr).publicKey.asymmetricKeyDetails?.modulusLength, 1024);
});

Deno.test("parseCsr() runs checkKey before the signature, so a refused key gets the policy's reason", async () => {
  // node:crypto cannot verify P-521 signatures, so without checkKey this request would fail as
  // "its signature does not verify".
  const { csr } = await makeCsr("erin", { keyType: "ec-p521" });
  const seen: string[] = [];
  assert.throws(
    () =>
      parseCsr(csr, {
        checkKey: (key) => {
          seen.push(String(key.asymmetricKeyDetails?.namedCurve));
          throw new E2eError("ERR_KEY_REJECTED", "Cannot sign request: curve refused");
        },
      }),
    e2eError("ERR_KEY_REJECTED", /^Cannot sign request: curve refused$/),
  );
  assert.deepEqual(seen, ["secp521r1"]);
});

Deno.test("parseCsr() still verifies the signature after checkKey accepts the key", async () => {
  const { csr } = await makeCsr("alice");
  const bytes = der(csr);
  bytes[bytes.length - 1] ^= 0x01;
  let called = 0;
  assert.throws(
    () => parseCsr(bytes, { checkKey: () => called++ }),
    e2eError("ERR_CSR_SIGNATURE", /^Cannot sign request: its signature does not verify$/),
  );
  assert.equal(called, 1);
});

Deno.test("parseCsr() lists every subject attribute in order, and every common name", async () => {
  const { csr } = await makeCsr("alice", { subject: "/O=Example Org/CN=alice/CN=mallory" });
  const request = parseCsr(csr);
  assert.deepEqual(request.subject, [[OID_O, "Example Org"], [OID_CN, "alice"], [
    OID_CN,
    "mallory",
  ]]);
  assert.deepEqual(request.commonNames, ["alice", "mallory"]);
});

Deno.test("parseCsr() reads a UTF-8 common name", async () => {
  const { csr } = await makeCsr("zoe", { subject: "/CN=zoë" });
  assert.deepEqual(parseCsr(csr).commonNames, ["zoë"]);
});

Deno.test("parseCsr() returns no common names for a subject without one", async () => {
  const { csr } = await makeCsr("x", { subject: "/O=Example Org" });
  assert.deepEqual(parseCsr(csr).commonNames, []);
});

Deno.test("parseCsr() lists the OIDs of the extensions a request asks for", async () => {
  const { csr } = await makeCsr("alice", {
    addext: [
      "basicConstraints=critical,CA:TRUE",
      "subjectAltName=DNS:evil.example",
      "keyUsage=critical,keyCertSign",
    ],
  });
  assert.deepEqual(parseCsr(csr).requestedExtensions, ["2.5.29.19", "2.5.29.17", "2.5.29.15"]);
});

Deno.test("parseCsr() accepts the request as DER bytes, as PEM bytes and as a string", async () => {
  const { csr } = await makeCsr("alice");
  const bytes = der(csr);
  assert.deepEqual(parseCsr(bytes).commonNames, ["alice"]);
  assert.deepEqual(parseCsr(new TextEncoder().encode(csr)).commonNames, ["alice"]);
  assert.deepEqual(parseCsr(csr).der, bytes);
});

Deno.test("parseCsr() accepts the legacy NEW CERTIFICATE REQUEST label", async () => {
  const { csr } = await makeCsr("alice");
  const legacy = pemEncode(der(csr), "NEW CERTIFICATE REQUEST");
  assert.deepEqual(parseCsr(legacy).commonNames, ["alice"]);
});

Deno.test("parseCsr() ignores text around the PEM block", async () => {
  const { csr } = await makeCsr("alice");
  assert.deepEqual(parseCsr(`Hi CA, here is my request:\n\n${csr}\nThanks\n`).commonNames, [
    "alice",
  ]);
});

Deno.test("parseCsr() refuses a request whose signature was tampered with", async () => {
  for (const keyType of ["ec-p256", "rsa-2048", "ed25519"] as const) {
    const { csr } = await makeCsr("alice", { keyType });
    const bytes = der(csr);
    bytes[bytes.length - 1] ^= 0x01; // the last byte belongs to the signature
    assert.throws(
      () => parseCsr(bytes),
      e2eError("ERR_CSR_SIGNATURE", /^Cannot sign request: its signature does not verify$/),
      keyType,
    );
  }
});

Deno.test("parseCsr() refuses a request whose subject was changed after signing", async () => {
  const { csr } = await makeCsr("alice");
  const bytes = der(csr);
  const at = bytes.findIndex((_, i) =>
    new TextDecoder().decode(bytes.subarray(i, i + 5)) === "alice"
  );
  assert.ok(at > 0);
  bytes.set(new TextEncoder().encode("admin"), at);
  assert.throws(
    () => parseCsr(bytes),
    e2eError("ERR_CSR_SIGNATURE", /^Cannot sign request: its signature does not verify$/),
  );
});

Deno.test("parseCsr() refuses a request signed by another key than the one it names", async () => {
  const { csr, key } = await makeCsr("alice");
  const other = await makeCsr("alice");
  const { info } = parts(der(csr));
  assert.throws(
    () => parseCsr(resignEc(info.raw, other.key)),
    e2eError("ERR_CSR_SIGNATURE", /^Cannot sign request: its signature does not verify$/),
  );
  // The same info signed again by its own key passes, so only the key made the difference.
  assert.deepEqual(parseCsr(resignEc(info.raw, key)).commonNames, ["alice"]);
});

Deno.test("parseCsr() refuses a signature algorithm outside the list, such as SHA-1 with RSA", async () => {
  const { csr } = await makeCsr("alice");
  const { info, signature } = parts(der(csr));
  // sha1WithRSAEncryption, 1.2.840.113549.1.1.5
  const sha1 = tlv(
    0x30,
    Uint8Array.of(0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 5),
    Uint8Array.of(0x05, 0x00),
  );
  assert.throws(() => parseCsr(tlv(0x30, info.raw, sha1, signature.raw)), (e) => {
    e2eError("ERR_CSR_SIGNATURE", /^Cannot sign request: unsupported signature algorithm\b/)(e);
    assert.match((e as E2eError).hint ?? "", /SHA-256 .*Ed25519/);
    return true;
  });
});

Deno.test("parseCsr() refuses garbage as ERR_CSR_INVALID", () => {
  for (const garbage of ["", "hello", "\x30\x03\x02\x01"]) {
    assert.throws(
      () => parseCsr(garbage),
      e2eError("ERR_CSR_INVALID", /^Invalid certificate request: /),
      JSON.stringify(garbage),
    );
  }
  assert.throws(
    () => parseCsr(new Uint8Array(300).map((_, i) => (i * 151 + 7) & 0xff)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: /),
  );
});

Deno.test("parseCsr() refuses a truncated DER request", async () => {
  const { csr } = await makeCsr("alice");
  const bytes = der(csr);
  for (const cut of [1, 10, bytes.length - 1]) {
    assert.throws(
      () => parseCsr(bytes.subarray(0, cut)),
      e2eError("ERR_CSR_INVALID", /^Invalid certificate request: Truncated DER (element|length)$/),
      `cut at ${cut}`,
    );
  }
});

Deno.test("parseCsr() refuses a DER request followed by trailing bytes", async () => {
  const { csr } = await makeCsr("alice");
  assert.throws(
    () => parseCsr(concat(der(csr), Uint8Array.of(0))),
    e2eError(
      "ERR_CSR_INVALID",
      /^Invalid certificate request: Trailing bytes after the DER element$/,
    ),
  );
});

Deno.test("parseCsr() refuses a PEM request cut off before its END line", async () => {
  const { csr } = await makeCsr("alice");
  assert.throws(
    () => parseCsr(csr.slice(0, csr.length / 2)),
    e2eError(
      "ERR_CSR_INVALID",
      NO_PEM_BLOCK,
    ),
  );
});

Deno.test("parseCsr() refuses a PEM block whose base64 was damaged", async () => {
  const { csr } = await makeCsr("alice");
  const lines = csr.split("\n");
  lines[1] = lines[1].slice(0, 10) + "!" + lines[1].slice(11);
  assert.throws(
    () => parseCsr(lines.join("\n")),
    e2eError(
      "ERR_CSR_INVALID",
      NO_PEM_BLOCK,
    ),
  );
});

Deno.test("parseCsr() refuses a PEM text holding two requests", async () => {
  const a = await makeCsr("alice");
  const b = await makeCsr("bob");
  assert.throws(
    () => parseCsr(a.csr + b.csr),
    e2eError(
      "ERR_CSR_INVALID",
      NO_PEM_BLOCK,
    ),
  );
});

Deno.test("parseCsr() refuses a PEM certificate given instead of a request", () => {
  const certificate = pemEncode(Uint8Array.of(0x30, 0x00), "CERTIFICATE");
  assert.throws(
    () => parseCsr(certificate),
    e2eError(
      "ERR_CSR_INVALID",
      NO_PEM_BLOCK,
    ),
  );
});

Deno.test("parseCsr() refuses input over 64 KiB and accepts a request of exactly 64 KiB", async () => {
  const { csr } = await makeCsr("alice");
  const padded = (size: number) => "#".repeat(size - csr.length - 1) + "\n" + csr;
  assert.equal(MAX_CSR_BYTES, 65_536);
  assert.deepEqual(parseCsr(padded(MAX_CSR_BYTES)).commonNames, ["alice"]);
  assert.throws(
    () => parseCsr(padded(MAX_CSR_BYTES + 1)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: larger than 65536 bytes$/),
  );
  assert.throws(
    () => parseCsr(new Uint8Array(10 * MAX_CSR_BYTES)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: larger than 65536 bytes$/),
  );
});

Deno.test("parseCsr() refuses a request of another version than 1 (0)", async () => {
  const { csr, key } = await makeCsr("alice");
  const { info } = parts(der(csr));
  const fields = children(info).map((n) => n.raw);
  fields[0] = Uint8Array.of(0x02, 0x01, 0x01);
  assert.throws(
    () => parseCsr(resignEc(tlv(0x30, ...fields), key)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: Unsupported request version$/),
  );
});

Deno.test("parseCsr() refuses a signature BIT STRING with unused bits", async () => {
  const { csr } = await makeCsr("alice");
  const { info, algorithm, signature } = parts(der(csr));
  const value = signature.value.slice();
  value[0] = 1;
  assert.throws(
    () => parseCsr(tlv(0x30, info.raw, algorithm.raw, tlv(0x03, value))),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: Malformed signature$/),
  );
});

Deno.test("parseCsr() refuses a request with an empty signature algorithm as ERR_CSR_INVALID", async () => {
  const { csr } = await makeCsr("alice");
  const { info, signature } = parts(der(csr));
  assert.throws(
    () => parseCsr(tlv(0x30, info.raw, tlv(0x30), signature.raw)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: /),
  );
});

Deno.test("parseCsr() refuses a signed request with an empty requested extension as ERR_CSR_INVALID", async () => {
  const { csr, key } = await makeCsr("alice");
  const { info } = parts(der(csr));
  const [version, subject, spki] = children(info).map((n) => n.raw);
  // [0] { SEQUENCE { extensionRequest, SET { SEQUENCE { SEQUENCE {} } } } }
  const extensionRequest = Uint8Array.of(0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 9, 14);
  const attributes = tlv(
    0xa0,
    tlv(0x30, extensionRequest, tlv(0x31, tlv(0x30, tlv(0x30)))),
  );
  assert.throws(
    () => parseCsr(resignEc(tlv(0x30, version, subject, spki, attributes), key)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: /),
  );
});

Deno.test("parseCsr() refuses a subject whose value is not a string type", async () => {
  const { csr, key } = await makeCsr("alice");
  const { info } = parts(der(csr));
  const [version, , spki, attributes] = children(info).map((n) => n.raw);
  const cn = Uint8Array.of(0x06, 0x03, 0x55, 0x04, 0x03);
  const subject = tlv(0x30, tlv(0x31, tlv(0x30, cn, tlv(0x04, new TextEncoder().encode("alice")))));
  assert.throws(
    () => parseCsr(resignEc(tlv(0x30, version, subject, spki, attributes), key)),
    e2eError("ERR_CSR_INVALID", /^Invalid certificate request: Unsupported string type 0x4$/),
  );
});

Deno.test("parseCsr() refuses a public key that cannot be read with ERR_KEY_REJECTED", async () => {
  const { csr, key } = await makeCsr("alice");
  const { info } = parts(der(csr));
  const [version, subject, spki, attributes] = children(info);
  const [algorithm, point] = children(spki);
  const broken = point.value.slice();
  broken[broken.length - 1] ^= 0xff; // no longer a point on the curve
  const badSpki = tlv(0x30, algorithm.raw, tlv(0x03, broken));
  assert.throws(
    () => parseCsr(resignEc(tlv(0x30, version.raw, subject.raw, badSpki, attributes.raw), key)),
    e2eError("ERR_KEY_REJECTED", /^Cannot sign request: its public key cannot be read$/),
  );
});

Deno.test("parseCsr() refuses an RSA key over 4096 bits, saying how large it is", () => {
  // Deno's node:crypto cannot read such keys; the refusal must still name the real reason.
  const modulus = new Uint8Array(1 + 1024).fill(0xa5);
  modulus[0] = 0x00; // INTEGER sign octet
  modulus[1] = 0xc3;
  const rsaEncryption = Uint8Array.of(0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1);
  const spki = tlv(
    0x30,
    tlv(0x30, rsaEncryption, Uint8Array.of(0x05, 0x00)),
    tlv(0x03, Uint8Array.of(0), tlv(0x30, tlv(0x02, modulus), Uint8Array.of(0x02, 3, 1, 0, 1))),
  );
  const cn = Uint8Array.of(0x06, 0x03, 0x55, 0x04, 0x03);
  const subject = tlv(0x30, tlv(0x31, tlv(0x30, cn, tlv(0x0c, new TextEncoder().encode("big")))));
  const info = tlv(0x30, Uint8Array.of(0x02, 0x01, 0x00), subject, spki, tlv(0xa0));
  const sha256WithRsa = tlv(
    0x30,
    Uint8Array.of(0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 11),
    Uint8Array.of(0x05, 0x00),
  );
  const signature = tlv(0x03, Uint8Array.of(0), new Uint8Array(1024).fill(0x5a));
  assert.throws(
    () => parseCsr(tlv(0x30, info, sha256WithRsa, signature)),
    e2eError(
      "ERR_KEY_REJECTED",
      /^Cannot sign request: an RSA key of 8192 bits is too large \(at most 4096\)$/,
    ),
  );
});

Deno.test("subjectIsCommonName() holds for a subject of exactly CN=name as a UTF8String, the form openssl ca -subj -utf8 writes", async () => {
  const { csr } = await makeCsr("alice");
  assert.equal(subjectIsCommonName(der(csr), "alice"), true);
  assert.equal(subjectIsCommonName(der(csr), "bob"), false);
  assert.equal(subjectIsCommonName(der(csr), "alic"), false);
  assert.equal(subjectIsCommonName(der(csr), "alice2"), false);
});

Deno.test("subjectIsCommonName() fails any other subject: more attributes, a multi-valued RDN, two names, another string type", async () => {
  for (
    const subject of ["/O=Example Org/CN=alice", "/CN=alice/CN=alice", "/CN=alice+O=x", "/O=alice"]
  ) {
    const { csr } = await makeCsr("alice", { subject });
    assert.equal(subjectIsCommonName(der(csr), "alice"), false, subject);
  }
  // The same request with its commonName as a PrintableString (0x13), signed again.
  const { csr, key } = await makeCsr("alice");
  const info = new Uint8Array(parts(der(csr)).info.raw);
  const at = info.findIndex((b, i) => b === 0x0c && info[i + 1] === 5 && info[i + 2] === 0x61);
  assert.ok(at > 0, "the request holds the UTF8String alice");
  info[at] = 0x13;
  const printable = resignEc(info, key);
  assert.deepEqual(parseCsr(printable).commonNames, ["alice"]);
  assert.equal(subjectIsCommonName(printable, "alice"), false);
});

Deno.test("subjectIsCommonName() is false, not an error, for bytes that are no request", () => {
  assert.equal(subjectIsCommonName(new Uint8Array([0x30, 0x03, 0x02, 0x01]), "alice"), false);
  assert.equal(subjectIsCommonName(new Uint8Array(), "alice"), false);
  assert.equal(subjectIsCommonName(new Uint8Array([0x30, 0x00]), "alice"), false);
});

Deno.test("parseCsrAsync() reads what parseCsr() reads and refuses what it refuses, with the same errors", async () => {
  const requests: Array<[string, Uint8Array | string]> = [];
  for (const keyType of ["ec-p256", "ec-p384", "rsa-2048", "ed25519"] as const) {
    const { csr } = await makeCsr("alice", { keyType });
    requests.push([keyType, csr]);
    const tampered = der(csr);
    tampered[tampered.length - 1] ^= 0x01;
    requests.push([`${keyType}, signature tampered with`, tampered]);
  }
  const { csr, key } = await makeCsr("alice");
  const other = await makeCsr("alice");
  const { info, algorithm, signature } = parts(der(csr));
  requests.push(["EC, signed by another key", resignEc(info.raw, other.key)]);
  requests.push(["EC, signed again by its own key", resignEc(info.raw, key)]);
  const value = signature.value.slice();
  value[0] = 1;
  requests.push(["unused bits", tlv(0x30, info.raw, algorithm.raw, tlv(0x03, value))]);
  requests.push(["garbage", "not a request"]);
  const outcome = async (fn: () => unknown) => {
    try {
      const csr = await fn() as { commonNames: string[]; keyFingerprint: string };
      return { names: csr.commonNames, key: csr.keyFingerprint };
    } catch (e) {
      return { code: (e as E2eError).code, message: (e as E2eError).message };
    }
  };
  const seen = new Set<string>();
  for (const [what, request] of requests) {
    const sync = await outcome(() => parseCsr(request));
    assert.deepEqual(await outcome(() => parseCsrAsync(request)), sync, what);
    seen.add("code" in sync ? String(sync.code) : "ok");
  }
  // Every kind of outcome was seen, so the comparison covered each.
  assert.deepEqual([...seen].sort(), ["ERR_CSR_INVALID", "ERR_CSR_SIGNATURE", "ok"]);
});
