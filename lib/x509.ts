/**
 * Certificates as e2e-chat sees them: fingerprints in one canonical form
 * (64 lowercase hex characters of a SHA-256) and the few fields we decide on.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, type KeyObject, X509Certificate } from "node:crypto";
import { children, decodeOid, DerError, readDer, Tag } from "./der.ts";
import { E2eError } from "./errors.ts";
import { pemDecode } from "./pem.ts";

/**
 * The SHA-256 of `der` as 64 lowercase hex characters.
 *
 * @example
 * ```ts
 * import { sha256Hex } from "./x509.ts";
 * console.log(sha256Hex(new Uint8Array()).length); // 64
 * ```
 */
export function sha256Hex(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

/**
 * The fingerprint of a public key: SHA-256 of its SubjectPublicKeyInfo DER.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { keyFingerprint } from "./x509.ts";
 * const { publicKey } = generateKeyPairSync("ed25519");
 * console.log(keyFingerprint(publicKey));
 * ```
 */
export function keyFingerprint(key: KeyObject): string {
  return sha256Hex(new Uint8Array(key.export({ type: "spki", format: "der" })));
}

/** What e2e-chat reads from a certificate. */
export interface CertificateInfo {
  /** The certificate, PEM. */
  pem: string;
  /** SHA-256 of the certificate DER, 64 lowercase hex characters. */
  fingerprint: string;
  /** SHA-256 of the public key (SPKI DER), 64 lowercase hex characters. */
  keyFingerprint: string;
  /** The serial number, uppercase hex as openssl's index writes it. */
  serial: string;
  /** The subject's common name, or "" when there is none. */
  commonName: string;
  /** Start of validity. */
  notBefore: Date;
  /** End of validity. */
  notAfter: Date;
  /** The parsed certificate, for signature and name checks. */
  x509: X509Certificate;
}

/**
 * Parses a PEM text holding exactly one certificate.
 *
 * @example
 * ```ts
 * import { parseCertificate } from "./x509.ts";
 * const pem = await Deno.readTextFile(`${Deno.env.get("HOME")}/.e2e-chat/ca/ca.crt`);
 * console.log(parseCertificate(pem).fingerprint);
 * ```
 */
export function parseCertificate(pem: string): CertificateInfo {
  const der = pemDecode(pem, "CERTIFICATE");
  if (!der) throw new E2eError("ERR_FILE", "Not a PEM certificate");
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(der);
  } catch (e) {
    throw new E2eError("ERR_FILE", "Cannot parse the certificate", { cause: e });
  }
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(x509.subject);
  return {
    pem: x509.toString(),
    fingerprint: sha256Hex(der),
    keyFingerprint: keyFingerprint(x509.publicKey),
    // node drops a leading zero digit; openssl's index and certs/ names keep whole bytes.
    serial: evenHex(x509.serialNumber.toUpperCase()),
    commonName: cn ? cn[1] : "",
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
    x509,
  };
}

function evenHex(hex: string): string {
  return hex.length % 2 ? `0${hex}` : hex;
}

/**
 * A serial number as uppercase hex without leading zeros, the one form of a serial
 * everywhere: CRLs (`RevocationList.revoked`), openssl's index and lookups by serial.
 *
 * @example
 * ```ts
 * import { normalizeSerialHex } from "./x509.ts";
 * normalizeSerialHex("00ab:cd"); // "ABCD"
 * ```
 */
export function normalizeSerialHex(hex: string): string {
  return hex.replace(/:/g, "").toUpperCase().replace(/^0+(?=.)/, "");
}

/** The keyUsage bits (RFC 5280 §4.2.1.3), in the order of their bit numbers. */
const KEY_USAGES = [
  "digitalSignature",
  "nonRepudiation",
  "keyEncipherment",
  "dataEncipherment",
  "keyAgreement",
  "keyCertSign",
  "cRLSign",
  "encipherOnly",
  "decipherOnly",
] as const;

/** A keyUsage bit by its RFC 5280 name. */
export type KeyUsage = typeof KEY_USAGES[number];

/**
 * Why a member's key is not one the CA signs for, or undefined when it is: RSA 2048–4096 bits
 * with an odd exponent ≥ 65537, EC P-256 or P-384, or Ed25519 (not a point of small order, nor
 * y ≥ p: for such a key anyone can make a signature that verifies). The CA refuses such a request,
 * and a member such a certificate (lib/tls.ts `checkPeer`).
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { memberKeyProblem } from "./x509.ts";
 * console.log(memberKeyProblem(generateKeyPairSync("ed25519").publicKey)); // undefined
 * ```
 */
export function memberKeyProblem(key: KeyObject): string | undefined {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "rsa": {
      const bits = details.modulusLength ?? 0;
      const e = details.publicExponent ?? 0n;
      if (bits < 2048) return `an RSA key of ${bits} bits is too weak (at least 2048)`;
      // node:crypto in Deno cannot read larger RSA keys, so the policy stops at 4096.
      if (bits > 4096) return `an RSA key of ${bits} bits is too large (at most 4096)`;
      if (e < 65537n || e % 2n === 0n) return "the RSA public exponent is unsafe";
      return undefined;
    }
    case "ec":
      if (details.namedCurve === "prime256v1" || details.namedCurve === "secp384r1") {
        return undefined;
      }
      return `the EC curve "${details.namedCurve ?? "unknown"}" is not allowed`;
    case "ed25519":
      return ed25519Problem(key);
    default:
      return `keys of type "${key.asymmetricKeyType}" are not allowed`;
  }
}

const ED25519_P = 2n ** 255n - 19n;
// The y coordinates of the 8 points of small order (two x each, or x = 0): for such a key the
// signature R = identity, S = 0 verifies on every message in node:crypto and WebCrypto, so anyone
// could make a request's self-signature, or a handshake's, for it.
const ED25519_SMALL_ORDER_Y = new Set([
  0n,
  1n,
  ED25519_P - 1n,
  0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n,
  0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7n,
]);

// A small-order point, or an encoding of y ≥ p (which no honest key has; some verifiers reduce it,
// some refuse it): refused.
function ed25519Problem(key: KeyObject): string | undefined {
  const x = key.export({ format: "jwk" }).x ?? "";
  const bytes = Buffer.from(x, "base64url");
  if (bytes.length !== 32) return "the Ed25519 key cannot be read";
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(i === 31 ? bytes[i] & 0x7f : bytes[i]);
  if (y >= ED25519_P) return "the Ed25519 key is not canonical";
  if (ED25519_SMALL_ORDER_Y.has(y)) return "the Ed25519 key is a point of small order";
  return undefined;
}

/** The extended key usages e2e-chat's certificates carry, by OID (RFC 5280 §4.2.1.12). */
export const EKU = {
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
} as const;

// The extensions our certificates carry; any other marked critical is one we do not understand.
const KNOWN_EXTENSIONS = new Set([
  "2.5.29.14", // subjectKeyIdentifier
  "2.5.29.15", // keyUsage
  "2.5.29.17", // subjectAltName
  "2.5.29.19", // basicConstraints
  "2.5.29.31", // cRLDistributionPoints
  "2.5.29.35", // authorityKeyIdentifier
  "2.5.29.37", // extKeyUsage
]);

/** The usage of a certificate's key, as its extensions state it. */
export interface CertificateUsage {
  /** The keyUsage bits set, or undefined without a keyUsage extension. */
  keyUsage?: Set<KeyUsage>;
  /** The extendedKeyUsage OIDs, or undefined without an extendedKeyUsage extension. */
  extendedKeyUsage?: Set<string>;
  /** OIDs of the critical extensions not among those our certificates carry (RFC 5280 §4.2). */
  unknownCritical: string[];
}

/**
 * Reads the keyUsage and extendedKeyUsage of a certificate (DER), and which
 * critical extensions it has that e2e-chat does not know. Throws `ERR_FILE`
 * for a malformed certificate.
 *
 * @example
 * ```ts
 * import { certificateUsage } from "./x509.ts";
 * const usage = certificateUsage(await Deno.readFile("bob.der"));
 * console.log(usage.keyUsage?.has("digitalSignature"));
 * ```
 */
export function certificateUsage(der: Uint8Array): CertificateUsage {
  const usage: CertificateUsage = { unknownCritical: [] };
  try {
    const [tbsNode] = children(readDer(der), Tag.SEQUENCE);
    if (!tbsNode) throw new DerError("Empty certificate");
    const wrapped = children(tbsNode, Tag.SEQUENCE).find((node) => node.tag === 0xa3); // [3] Extensions
    if (!wrapped) return usage;
    const [list] = children(wrapped);
    if (!list) throw new DerError("Empty extensions");
    // Two of one extension would leave which one counts to each reader (node's, ours).
    const seen = new Set<string>();
    for (const extension of children(list, Tag.SEQUENCE)) {
      const fields = children(extension, Tag.SEQUENCE);
      const oid = decodeOid(fields[0]);
      if (seen.has(oid)) throw new DerError(`Extension ${oid} appears twice`);
      seen.add(oid);
      const critical = fields[1]?.tag === 0x01 && fields[1].value[0] !== 0;
      const value = fields[fields.length - 1];
      if (value?.tag !== Tag.OCTET_STRING) throw new DerError("Bad extension");
      if (oid === "2.5.29.15") usage.keyUsage = keyUsageBits(value.value);
      else if (oid === "2.5.29.37") {
        usage.extendedKeyUsage = new Set(
          children(readDer(value.value), Tag.SEQUENCE).map((node) => decodeOid(node)),
        );
      } else if (critical && !KNOWN_EXTENSIONS.has(oid)) usage.unknownCritical.push(oid);
    }
  } catch (e) {
    if (e instanceof DerError) throw new E2eError("ERR_FILE", "Cannot parse the certificate");
    throw e;
  }
  return usage;
}

function keyUsageBits(octets: Uint8Array): Set<KeyUsage> {
  const bits = readDer(octets);
  if (bits.tag !== Tag.BIT_STRING || bits.value.length < 1) throw new DerError("Bad keyUsage");
  const out = new Set<KeyUsage>();
  KEY_USAGES.forEach((name, i) => {
    if ((bits.value[1 + (i >> 3)] ?? 0) & (0x80 >> (i & 7))) out.add(name);
  });
  return out;
}
