/**
 * Certificates as e2e-chat sees them: fingerprints in one canonical form
 * (64 lowercase hex characters of a SHA-256) and the few fields we decide on.
 *
 * @module
 */
import { createHash, type KeyObject, X509Certificate } from "node:crypto";
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
