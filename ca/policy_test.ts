import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import {
  CA_KEY_TYPES,
  checkDays,
  checkKey,
  crlDistributionPoint,
  DEFAULT_CA_DAYS,
  DEFAULT_CERT_DAYS,
  leafExtensions,
  MAX_DAYS,
  OPENSSL_CNF,
  REVOKE_REASONS,
  serviceExtensions,
} from "./policy.ts";

function base64url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(
    /=+$/,
    "",
  );
}

/**
 * An RSA public key with a modulus of exactly `bits` bits and exponent `e`. The policy looks
 * only at sizes, so no primes are needed, which keeps these tests free of slow key generation.
 */
function rsaPublicKey(bits: number, e = 65537n): KeyObject {
  const n = new Uint8Array(Math.ceil(bits / 8)).fill(0xa5);
  n[0] = 0xff >> (n.length * 8 - bits); // top bit set: exactly `bits` bits
  n[n.length - 1] |= 1;
  const eBytes: number[] = [];
  for (let x = e; x > 0n; x >>= 8n) eBytes.unshift(Number(x & 0xffn));
  return createPublicKey({
    key: { kty: "RSA", n: base64url(n), e: base64url(Uint8Array.from(eBytes)) },
    format: "jwk",
  });
}

function rejected(message: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, "ERR_KEY_REJECTED");
    assert.equal(e.message, `Cannot sign request: ${message}`);
    assert.equal(e.hint, "use RSA (2048 to 4096 bits), EC P-256/P-384 or Ed25519");
    return true;
  };
}

// Deno's node:crypto cannot make KeyObjects of RSA keys over 4096 bits or with an even
// exponent, so the "too large" and "even exponent" branches cannot be reached from here.
Deno.test("checkKey() accepts RSA keys of 2048 bits and more", () => {
  assert.equal(checkKey(generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey), "rsa");
  assert.equal(checkKey(rsaPublicKey(2048)), "rsa");
  assert.equal(checkKey(rsaPublicKey(3072)), "rsa");
  assert.equal(checkKey(rsaPublicKey(4096)), "rsa");
});

Deno.test("checkKey() accepts EC P-256 and P-384 keys", () => {
  assert.equal(checkKey(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey), "ec");
  assert.equal(checkKey(generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey), "ec");
});

Deno.test("checkKey() accepts Ed25519 keys", () => {
  assert.equal(checkKey(generateKeyPairSync("ed25519").publicKey), "ed25519");
});

Deno.test("checkKey() also accepts the private half of an allowed key", () => {
  assert.equal(checkKey(generateKeyPairSync("ed25519").privateKey), "ed25519");
});

Deno.test("checkKey() refuses RSA keys under 2048 bits", () => {
  assert.throws(
    () => checkKey(generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey),
    rejected("an RSA key of 1024 bits is too weak (at least 2048)"),
  );
  assert.throws(
    () => checkKey(rsaPublicKey(2047)),
    rejected("an RSA key of 2047 bits is too weak (at least 2048)"),
  );
});

Deno.test("checkKey() refuses RSA keys with a public exponent under 65537", () => {
  for (const e of [3n, 17n, 65535n]) {
    assert.throws(
      () => checkKey(rsaPublicKey(2048, e)),
      rejected("the RSA public exponent is unsafe"),
      `e = ${e}`,
    );
  }
  assert.equal(checkKey(rsaPublicKey(2048, 65539n)), "rsa");
});

Deno.test("checkKey() refuses EC curves other than P-256 and P-384", () => {
  for (const curve of ["secp521r1", "secp256k1"]) {
    assert.throws(
      () => checkKey(generateKeyPairSync("ec", { namedCurve: curve }).publicKey),
      rejected(`the EC curve "${curve}" is not allowed`),
      curve,
    );
  }
});

Deno.test("checkKey() refuses Ed448, X25519, X448 and RSA-PSS keys", () => {
  const keys: Array<[string, KeyObject]> = [
    ["ed448", generateKeyPairSync("ed448").publicKey],
    ["x25519", generateKeyPairSync("x25519").publicKey],
    ["x448", generateKeyPairSync("x448").publicKey],
    ["rsa-pss", generateKeyPairSync("rsa-pss", { modulusLength: 2048 }).publicKey],
  ];
  for (const [type, key] of keys) {
    assert.throws(() => checkKey(key), rejected(`keys of type "${type}" are not allowed`), type);
  }
});

Deno.test("checkDays() accepts whole days from 1 to the maximum", () => {
  assert.equal(checkDays(1), 1);
  assert.equal(checkDays(7), 7);
  assert.equal(checkDays(MAX_DAYS), MAX_DAYS);
  assert.equal(checkDays(30, 30), 30);
});

Deno.test("checkDays() refuses zero, negatives, fractions, NaN and more than the maximum", () => {
  const cases: Array<[number, number | undefined]> = [
    [0, undefined],
    [-1, undefined],
    [1.5, undefined],
    [NaN, undefined],
    [Infinity, undefined],
    [MAX_DAYS + 1, undefined],
    [31, 30],
  ];
  for (const [days, max] of cases) {
    assert.throws(() => checkDays(days, max), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_DAYS_INVALID");
      assert.equal(
        e.message,
        `Invalid validity "${days}": use whole days from 1 to ${max ?? MAX_DAYS}`,
      );
      return true;
    }, String(days));
  }
});

Deno.test("the profile's defaults are those of docs/CERTIFICATES.md", () => {
  assert.equal(DEFAULT_CERT_DAYS, 7);
  assert.equal(DEFAULT_CA_DAYS, 1826);
  assert.equal(MAX_DAYS, 36_500);
  assert.deepEqual([...CA_KEY_TYPES], ["rsa-4096", "ec-p256", "ed25519"]);
});

Deno.test("the revocation reasons are those docs/CERTIFICATES.md lists, in its order", async () => {
  // Read from the spec rather than restated here: the code and the document must agree.
  const doc = await Deno.readTextFile(new URL("../docs/CERTIFICATES.md", import.meta.url));
  const listed = /Reasons: ((?:`\w+`(?:,\s+)?)+)\./.exec(doc);
  assert.ok(listed, 'docs/CERTIFICATES.md lists the reasons after "Reasons: "');
  assert.deepEqual([...REVOKE_REASONS], [...listed[1].matchAll(/`(\w+)`/g)].map((m) => m[1]));
});

/** The `key = value` lines of one `[ section ]` of an openssl config. */
function section(config: string, name: string): Map<string, string> {
  const out = new Map<string, string>();
  let inside = false;
  for (const line of config.split("\n")) {
    const header = /^\[\s*(\S+)\s*\]$/.exec(line.trim());
    if (header) {
      inside = header[1] === name;
      continue;
    }
    const kv = /^([^#=\s][^=]*?)\s*=\s*(.*)$/.exec(line.trim());
    if (inside && kv) out.set(kv[1], kv[2]);
  }
  return out;
}

Deno.test("leafExtensions() gives an Ed25519 key digitalSignature only", () => {
  const leaf = section(leafExtensions("alice", "ed25519"), "leaf");
  assert.equal(leaf.get("keyUsage"), "critical, digitalSignature");
});

Deno.test("leafExtensions() adds keyAgreement for an EC key (the mailbox's ECDH, RFC 5753)", () => {
  const leaf = section(leafExtensions("alice", "ec"), "leaf");
  assert.equal(leaf.get("keyUsage"), "critical, digitalSignature, keyAgreement");
});

Deno.test("leafExtensions() adds keyEncipherment for an RSA key", () => {
  const leaf = section(leafExtensions("alice", "rsa"), "leaf");
  assert.equal(leaf.get("keyUsage"), "critical, digitalSignature, keyEncipherment");
});

Deno.test("leafExtensions() makes a non-CA client-and-server certificate naming the user", () => {
  const leaf = section(leafExtensions("bob-2", "ec"), "leaf");
  assert.deepEqual(Object.fromEntries(leaf), {
    basicConstraints: "critical, CA:FALSE",
    keyUsage: "critical, digitalSignature, keyAgreement",
    extendedKeyUsage: "serverAuth, clientAuth",
    subjectAltName: "DNS:bob-2",
    subjectKeyIdentifier: "hash",
    authorityKeyIdentifier: "keyid:always",
  });
});

Deno.test("OPENSSL_CNF ignores requested extensions and uses random serials", () => {
  const ca = section(OPENSSL_CNF, "e2e_ca");
  assert.equal(section(OPENSSL_CNF, "ca").get("default_ca"), "e2e_ca");
  assert.equal(ca.get("copy_extensions"), "none");
  assert.equal(ca.get("rand_serial"), "yes");
  assert.equal(ca.get("unique_subject"), "no");
  assert.equal(ca.get("policy"), "policy_cn");
  assert.equal(ca.get("default_crl_days"), "7");
  assert.equal(section(OPENSSL_CNF, "policy_cn").get("commonName"), "supplied");
  const v3ca = section(OPENSSL_CNF, "v3_ca");
  assert.equal(v3ca.get("basicConstraints"), "critical, CA:TRUE, pathlen:0");
  assert.equal(v3ca.get("keyUsage"), "critical, keyCertSign, cRLSign");
});

Deno.test("crlDistributionPoint() writes the extension line for a plain-HTTP CRL URL and refuses any other form", () => {
  assert.equal(crlDistributionPoint(undefined), "");
  for (
    const url of [
      "http://127.0.0.1:65434/crl.der",
      "http://ca.example-team.org:80/crl.der",
      "http://[::1]:1/crl.der",
    ]
  ) {
    assert.equal(crlDistributionPoint(url), `crlDistributionPoints = URI:${url}\n`);
    assert.ok(leafExtensions("alice", "ec", url).includes(`URI:${url}\n`));
    assert.ok(serviceExtensions(["localhost"], url).includes(`URI:${url}\n`));
  }
  for (
    const url of [
      "https://127.0.0.1:65434/crl.der",
      "http://127.0.0.1/crl.der",
      "http://127.0.0.1:65536/crl.der",
      "http://127.0.0.1:0/crl.der",
      "http://127.0.0.1:1/crl.pem",
      "http://a b:1/crl.der",
      "http://x:1/crl.der\nbasicConstraints = CA:TRUE",
    ]
  ) {
    assert.throws(() => crlDistributionPoint(url), RangeError, url);
  }
  assert.ok(!leafExtensions("alice", "ec").includes("crlDistributionPoints"));
});
