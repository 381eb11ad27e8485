import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { children, DerError, type DerNode, readDer, Tag } from "./der.ts";
import { verifySignature, verifySignatureAsync } from "./signature.ts";
import { tlv } from "./_der_builder.ts";

/** An OBJECT IDENTIFIER element from its dotted form. */
function oid(dotted: string): Uint8Array {
  const [a, b, ...rest] = dotted.split(".").map(Number);
  const bytes = [a * 40 + b];
  for (const arc of rest) {
    const base128 = [arc & 0x7f];
    for (let n = arc >>> 7; n > 0; n >>>= 7) base128.unshift(0x80 | (n & 0x7f));
    bytes.push(...base128);
  }
  return tlv(0x06, Uint8Array.from(bytes));
}

/** An AlgorithmIdentifier node; RSA ones carry a NULL parameter, as openssl writes them. */
function algorithm(dotted: string, nullParameter = dotted.startsWith("1.2.840.113549")): DerNode {
  return readDer(tlv(0x30, oid(dotted), ...(nullParameter ? [Uint8Array.of(0x05, 0x00)] : [])));
}

function bitString(bytes: Uint8Array, unusedBits = 0): DerNode {
  return readDer(tlv(0x03, Uint8Array.of(unusedBits), bytes));
}

const OID = {
  sha256WithRSA: "1.2.840.113549.1.1.11",
  sha384WithRSA: "1.2.840.113549.1.1.12",
  sha512WithRSA: "1.2.840.113549.1.1.13",
  ecdsaSha256: "1.2.840.10045.4.3.2",
  ecdsaSha384: "1.2.840.10045.4.3.3",
  ecdsaSha512: "1.2.840.10045.4.3.4",
  ed25519: "1.3.101.112",
  // Not accepted:
  md5WithRSA: "1.2.840.113549.1.1.4",
  sha1WithRSA: "1.2.840.113549.1.1.5",
  rsassaPss: "1.2.840.113549.1.1.10",
  ecdsaSha1: "1.2.840.10045.4.1",
  ed448: "1.3.101.113",
  dsaSha256: "2.16.840.1.101.3.4.3.2",
} as const;

const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
const ec384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
const ed = generateKeyPairSync("ed25519");

/** One key pair of each kind, with its signature algorithm and hash. */
const EVERY_KEY = [
  [OID.sha256WithRSA, "sha256", rsa],
  [OID.ecdsaSha256, "sha256", ec],
  [OID.ed25519, null, ed],
] as const;
const otherEc = generateKeyPairSync("ec", { namedCurve: "P-256" });
const otherEd = generateKeyPairSync("ed25519");
const ed448 = generateKeyPairSync("ed448");

const TBS = new TextEncoder().encode("the to-be-signed bytes of a request or CRL");

function signed(hash: string | null, privateKey: KeyObject, data = TBS): DerNode {
  return bitString(new Uint8Array(sign(hash, data, privateKey)));
}

Deno.test("verifySignature() says ok for every accepted algorithm with the signer's key", () => {
  const cases: Array<[string, string | null, { privateKey: KeyObject; publicKey: KeyObject }]> = [
    [OID.sha256WithRSA, "sha256", rsa],
    [OID.sha384WithRSA, "sha384", rsa],
    [OID.sha512WithRSA, "sha512", rsa],
    [OID.ecdsaSha256, "sha256", ec],
    [OID.ecdsaSha384, "sha384", ec384],
    [OID.ecdsaSha512, "sha512", ec],
    [OID.ed25519, null, ed],
  ];
  for (const [dotted, hash, pair] of cases) {
    assert.equal(
      verifySignature(TBS, algorithm(dotted), signed(hash, pair.privateKey), pair.publicKey),
      "ok",
      dotted,
    );
  }
});

Deno.test("verifySignature() says invalid when one bit of the signed bytes changed", () => {
  const changed = TBS.slice();
  changed[0] ^= 0x01;
  for (
    const [dotted, hash, pair] of EVERY_KEY
  ) {
    const signature = signed(hash, pair.privateKey);
    assert.equal(verifySignature(changed, algorithm(dotted), signature, pair.publicKey), "invalid");
  }
});

Deno.test("verifySignature() says invalid when the signature itself changed", () => {
  for (
    const [dotted, hash, pair] of EVERY_KEY
  ) {
    const bytes = new Uint8Array(sign(hash, TBS, pair.privateKey));
    bytes[bytes.length - 1] ^= 0x01;
    assert.equal(
      verifySignature(TBS, algorithm(dotted), bitString(bytes), pair.publicKey),
      "invalid",
      dotted,
    );
    assert.equal(
      verifySignature(TBS, algorithm(dotted), bitString(new Uint8Array()), pair.publicKey),
      "invalid",
      `${dotted}, empty`,
    );
  }
});

/** One signing and one check: the algorithm named, the hash signed with, the signer's key and the key checked with. */
type Case = [what: string, dotted: string, hash: string | null, signer: KeyObject, key: KeyObject];

function assertVerdict(verdict: "ok" | "invalid" | "unsupported", cases: Case[]): void {
  for (const [what, dotted, hash, signer, key] of cases) {
    assert.equal(verifySignature(TBS, algorithm(dotted), signed(hash, signer), key), verdict, what);
  }
}

Deno.test("verifySignature() says invalid for another key of the same type", () => {
  assertVerdict("invalid", [
    ["EC", OID.ecdsaSha256, "sha256", ec.privateKey, otherEc.publicKey],
    ["Ed25519", OID.ed25519, null, ed.privateKey, otherEd.publicKey],
  ]);
});

Deno.test("verifySignature() says invalid when the algorithm names another hash than the one signed with", () => {
  assertVerdict("invalid", [
    ["ECDSA", OID.ecdsaSha384, "sha256", ec.privateKey, ec.publicKey],
    ["RSA", OID.sha512WithRSA, "sha256", rsa.privateKey, rsa.publicKey],
  ]);
});

Deno.test("verifySignature() says invalid, without throwing, when the algorithm cannot apply to the key", () => {
  // Ed25519 named for an EC key, ECDSA named for an Ed25519 key: node:crypto throws, we do not.
  assertVerdict("invalid", [
    ["Ed25519 for EC", OID.ed25519, "sha256", ec.privateKey, ec.publicKey],
    ["ECDSA for Ed25519", OID.ecdsaSha256, null, ed.privateKey, ed.publicKey],
    ["Ed25519 for RSA", OID.ed25519, "sha256", rsa.privateKey, rsa.publicKey],
  ]);
});

Deno.test("verifySignature() says invalid when an RSA signature is labelled ECDSA, or an ECDSA one RSA", () => {
  // The algorithm identifier must be the one the key signs with (RFC 5280 §4.1.1.2):
  // a signature under the wrong label is not a valid signature of that algorithm.
  assertVerdict("invalid", [
    ["RSA as ECDSA", OID.ecdsaSha256, "sha256", rsa.privateKey, rsa.publicKey],
    ["ECDSA as RSA", OID.sha256WithRSA, "sha256", ec.privateKey, ec.publicKey],
  ]);
});

Deno.test("verifySignature() says unsupported for algorithms e2e-chat does not accept, even with a good signature", () => {
  const cases: Array<[string, string | null, KeyObject, KeyObject]> = [
    [OID.md5WithRSA, "md5", rsa.privateKey, rsa.publicKey],
    [OID.sha1WithRSA, "sha1", rsa.privateKey, rsa.publicKey],
    [OID.rsassaPss, "sha256", rsa.privateKey, rsa.publicKey],
    [OID.ecdsaSha1, "sha1", ec.privateKey, ec.publicKey],
    [OID.ed448, null, ed448.privateKey, ed448.publicKey],
    [OID.dsaSha256, "sha256", ec.privateKey, ec.publicKey],
    ["1.2.3.4", "sha256", ec.privateKey, ec.publicKey],
  ];
  for (const [dotted, hash, privateKey, publicKey] of cases) {
    assert.equal(
      verifySignature(TBS, algorithm(dotted), signed(hash, privateKey), publicKey),
      "unsupported",
      dotted,
    );
  }
});

Deno.test("verifySignature() accepts an algorithm identifier with or without a NULL parameter", () => {
  const signature = signed("sha256", rsa.privateKey);
  assert.equal(
    verifySignature(TBS, algorithm(OID.sha256WithRSA, false), signature, rsa.publicKey),
    "ok",
  );
  assert.equal(
    verifySignature(TBS, algorithm(OID.sha256WithRSA, true), signature, rsa.publicKey),
    "ok",
  );
});

Deno.test("verifySignature() throws DerError for a missing or malformed signature", () => {
  const good = new Uint8Array(sign("sha256", TBS, ec.privateKey));
  const alg = algorithm(OID.ecdsaSha256);
  assert.throws(() => verifySignature(TBS, alg, undefined, ec.publicKey), DerError);
  // An OCTET STRING instead of a BIT STRING.
  assert.throws(() => verifySignature(TBS, alg, readDer(tlv(0x04, good)), ec.publicKey), DerError);
  // A BIT STRING with unused bits: a signature is whole bytes.
  assert.throws(() => verifySignature(TBS, alg, bitString(good, 1), ec.publicKey), DerError);
  // A BIT STRING with no content at all (not even the unused-bits byte).
  assert.throws(
    () => verifySignature(TBS, alg, readDer(Uint8Array.of(0x03, 0x00)), ec.publicKey),
    DerError,
  );
});

Deno.test("verifySignature() throws DerError for a malformed algorithm identifier", () => {
  const signature = signed("sha256", ec.privateKey);
  for (
    const node of [
      readDer(oid(OID.ecdsaSha256)), // not in a SEQUENCE
      readDer(tlv(0x30)), // an empty SEQUENCE
      readDer(tlv(0x30, Uint8Array.of(0x05, 0x00))), // a NULL where the OID goes
    ]
  ) {
    assert.throws(() => verifySignature(TBS, node, signature, ec.publicKey), DerError);
  }
});

Deno.test("verifySignatureAsync() gives verifySignature()'s verdict in every case", async () => {
  const changed = TBS.slice();
  changed[0] ^= 0x01;
  const flipped = (hash: string | null, key: KeyObject) => {
    const bytes = new Uint8Array(sign(hash, TBS, key));
    bytes[bytes.length - 1] ^= 0x01;
    return bitString(bytes);
  };
  const cases: Array<[string, string, DerNode, KeyObject, Uint8Array, string]> = [
    ["RSA SHA-256", OID.sha256WithRSA, signed("sha256", rsa.privateKey), rsa.publicKey, TBS, "ok"],
    [
      "ECDSA P-256 SHA-256",
      OID.ecdsaSha256,
      signed("sha256", ec.privateKey),
      ec.publicKey,
      TBS,
      "ok",
    ],
    [
      "ECDSA P-256 SHA-384",
      OID.ecdsaSha384,
      signed("sha384", ec.privateKey),
      ec.publicKey,
      TBS,
      "ok",
    ],
    [
      "ECDSA P-256 SHA-512",
      OID.ecdsaSha512,
      signed("sha512", ec.privateKey),
      ec.publicKey,
      TBS,
      "ok",
    ],
    [
      "ECDSA P-384 SHA-384",
      OID.ecdsaSha384,
      signed("sha384", ec384.privateKey),
      ec384.publicKey,
      TBS,
      "ok",
    ],
    [
      "ECDSA P-384 SHA-256",
      OID.ecdsaSha256,
      signed("sha256", ec384.privateKey),
      ec384.publicKey,
      TBS,
      "ok",
    ],
    ["Ed25519", OID.ed25519, signed(null, ed.privateKey), ed.publicKey, TBS, "ok"],
    [
      "ECDSA, changed bytes",
      OID.ecdsaSha256,
      signed("sha256", ec.privateKey),
      ec.publicKey,
      changed,
      "invalid",
    ],
    [
      "ECDSA P-384, changed bytes",
      OID.ecdsaSha384,
      signed("sha384", ec384.privateKey),
      ec384.publicKey,
      changed,
      "invalid",
    ],
    [
      "ECDSA, changed signature",
      OID.ecdsaSha256,
      flipped("sha256", ec.privateKey),
      ec.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA, empty signature",
      OID.ecdsaSha256,
      bitString(new Uint8Array()),
      ec.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA, another key",
      OID.ecdsaSha256,
      signed("sha256", ec.privateKey),
      otherEc.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA, another hash named",
      OID.ecdsaSha384,
      signed("sha256", ec.privateKey),
      ec.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA named for Ed25519",
      OID.ecdsaSha256,
      signed(null, ed.privateKey),
      ed.publicKey,
      TBS,
      "invalid",
    ],
    [
      "RSA as ECDSA",
      OID.ecdsaSha256,
      signed("sha256", rsa.privateKey),
      rsa.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA as RSA",
      OID.sha256WithRSA,
      signed("sha256", ec.privateKey),
      ec.publicKey,
      TBS,
      "invalid",
    ],
    [
      "ECDSA with SHA-1",
      OID.ecdsaSha1,
      signed("sha1", ec.privateKey),
      ec.publicKey,
      TBS,
      "unsupported",
    ],
    ["Ed448", OID.ed448, signed(null, ed448.privateKey), ed448.publicKey, TBS, "unsupported"],
  ];
  for (const [what, dotted, signature, key, tbs, verdict] of cases) {
    assert.equal(verifySignature(tbs, algorithm(dotted), signature, key), verdict, what);
    assert.equal(await verifySignatureAsync(tbs, algorithm(dotted), signature, key), verdict, what);
  }
});

Deno.test("verifySignatureAsync() throws DerError for a missing or malformed signature, as verifySignature() does", async () => {
  const good = new Uint8Array(sign("sha256", TBS, ec.privateKey));
  const alg = algorithm(OID.ecdsaSha256);
  for (
    const node of [
      undefined,
      readDer(tlv(0x04, good)),
      bitString(good, 1),
      readDer(Uint8Array.of(0x03, 0x00)),
    ]
  ) {
    assert.throws(() => verifySignature(TBS, alg, node, ec.publicKey), DerError);
    await assert.rejects(() => verifySignatureAsync(TBS, alg, node, ec.publicKey), DerError);
  }
});

Deno.test("verifySignatureAsync() takes an ECDSA signature only in its one canonical DER form, as openssl does", async () => {
  // Signatures here are deterministic (RFC 6979): other bytes give other r and s. One whose r
  // needs the 0x00 that keeps it positive, and one whose r does not.
  const parts = (der: Uint8Array) => children(readDer(der), Tag.SEQUENCE).map((n) => n.value);
  const find = (padded: boolean) => {
    for (let i = 0; i < 200; i++) {
      const data = new TextEncoder().encode(`request ${i}`);
      const der = new Uint8Array(sign("sha256", data, ec.privateKey));
      const [r] = parts(der);
      if ((r.length === 33) === padded && (padded || r[0] > 0)) return { der, data };
    }
    throw new Error("no such signature in 200 tries");
  };
  const alg = algorithm(OID.ecdsaSha256);
  const check = (der: Uint8Array, data: Uint8Array) =>
    verifySignatureAsync(data, alg, bitString(der), ec.publicKey);
  const int = (v: Uint8Array) => tlv(0x02, v);
  const seq = (...items: Uint8Array[]) => tlv(0x30, ...items);
  const plain = find(false);
  const padded = find(true);
  assert.equal(await check(plain.der, plain.data), "ok");
  assert.equal(await check(padded.der, padded.data), "ok");

  const [r, s] = parts(plain.der);
  const [pr, ps] = parts(padded.der);
  const forms: Array<[string, Uint8Array, Uint8Array]> = [
    ["a 0x00 that is not needed", seq(int(Uint8Array.of(0, ...r)), int(s)), plain.data],
    ["the needed 0x00 left out (a negative r)", seq(int(pr.subarray(1)), int(ps)), padded.data],
    ["r longer than the curve", seq(int(Uint8Array.of(1, ...r)), int(s)), plain.data],
    ["r zero", seq(int(Uint8Array.of(0)), int(s)), plain.data],
    ["r empty", seq(int(new Uint8Array()), int(s)), plain.data],
    ["a third number", seq(int(r), int(s), int(Uint8Array.of(1))), plain.data],
    ["one number", seq(int(r)), plain.data],
    ["bytes after the sequence", Uint8Array.of(...seq(int(r), int(s)), 0), plain.data],
    ["r as an OCTET STRING", seq(tlv(0x04, r), int(s)), plain.data],
  ];
  for (const [what, der, data] of forms) assert.equal(await check(der, data), "invalid", what);
});
