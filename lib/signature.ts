/**
 * Verifying an X.509-style signature (CSRs, CRLs) in-process with node:crypto,
 * for the algorithms e2e-chat accepts; {@linkcode verifySignatureAsync} checks
 * ECDSA through WebCrypto instead, off the caller's thread.
 *
 * @module
 */
import { type KeyObject, verify } from "node:crypto";
import { children, decodeOid, DerError, type DerNode, readDer, Tag } from "./der.ts";

/** What a signature check found. */
export type Verdict = "ok" | "invalid" | "unsupported";

// Signature algorithms accepted: the hash each implies, and the key type it needs.
const ALGORITHMS: Record<string, { hash: string | null; key: string }> = {
  "1.2.840.113549.1.1.11": { hash: "sha256", key: "rsa" }, // sha256WithRSAEncryption
  "1.2.840.113549.1.1.12": { hash: "sha384", key: "rsa" },
  "1.2.840.113549.1.1.13": { hash: "sha512", key: "rsa" },
  "1.2.840.10045.4.3.2": { hash: "sha256", key: "ec" }, // ecdsa-with-SHA256
  "1.2.840.10045.4.3.3": { hash: "sha384", key: "ec" },
  "1.2.840.10045.4.3.4": { hash: "sha512", key: "ec" },
  "1.3.101.112": { hash: null, key: "ed25519" }, // Ed25519 signs the message itself
};

/**
 * Checks `signature` (a BIT STRING node) over `tbs` made with `algorithm` (an
 * AlgorithmIdentifier node) by `key`: "ok", "invalid", or "unsupported" for an
 * algorithm we do not accept. Throws DerError for malformed nodes.
 *
 * @example
 * ```ts
 * import { verifySignature } from "./signature.ts";
 * // const verdict = verifySignature(tbs.raw, algorithmNode, signatureNode, publicKey);
 * ```
 */
export function verifySignature(
  tbs: Uint8Array,
  algorithm: DerNode,
  signature: DerNode | undefined,
  key: KeyObject,
): Verdict {
  const checked = precheck(algorithm, signature, key);
  if (typeof checked === "string") return checked;
  try {
    return verify(checked.hash, tbs, key, checked.bytes) ? "ok" : "invalid";
  } catch {
    return "invalid";
  }
}

/**
 * {@linkcode verifySignature}, with the same verdicts and errors, checking an
 * ECDSA signature on P-256 or P-384 through WebCrypto: in Deno that costs about
 * half the CPU of node:crypto's check (a P-256 request: ~0.3 ms against
 * ~0.6 ms), and runs off the caller's thread. Other keys are checked as
 * {@linkcode verifySignature} does.
 *
 * @example
 * ```ts
 * import { verifySignatureAsync } from "./signature.ts";
 * // const verdict = await verifySignatureAsync(tbs.raw, algorithmNode, signatureNode, publicKey);
 * ```
 */
export async function verifySignatureAsync(
  tbs: Uint8Array,
  algorithm: DerNode,
  signature: DerNode | undefined,
  key: KeyObject,
): Promise<Verdict> {
  const checked = precheck(algorithm, signature, key);
  if (typeof checked === "string") return checked;
  const curve = WEB_CURVES[key.asymmetricKeyDetails?.namedCurve ?? ""];
  if (key.asymmetricKeyType !== "ec" || !curve || !checked.hash) {
    return verifySignature(tbs, algorithm, signature, key);
  }
  // WebCrypto takes r and s as two fixed-size numbers; the certificate's form is DER, read
  // strictly (as openssl reads it): anything but the one canonical encoding is invalid.
  const raw = rawEcdsaSignature(checked.bytes, curve.size);
  if (!raw) return "invalid";
  let webKey: CryptoKey;
  try {
    webKey = await crypto.subtle.importKey(
      "spki",
      new Uint8Array(key.export({ type: "spki", format: "der" })),
      { name: "ECDSA", namedCurve: curve.name },
      false,
      ["verify"],
    );
  } catch {
    return verifySignature(tbs, algorithm, signature, key); // a key WebCrypto will not take
  }
  const hash = `SHA-${checked.hash.slice(3)}`; // sha256 → SHA-256
  const signed = tbs as Uint8Array<ArrayBuffer>; // never a SharedArrayBuffer's view
  return await crypto.subtle.verify({ name: "ECDSA", hash }, webKey, raw, signed)
    ? "ok"
    : "invalid";
}

const WEB_CURVES: Record<string, { name: string; size: number }> = {
  prime256v1: { name: "P-256", size: 32 },
  secp384r1: { name: "P-384", size: 48 },
};

// The checks both forms share: the algorithm is one we accept, and fits the key.
function precheck(
  algorithm: DerNode,
  signature: DerNode | undefined,
  key: KeyObject,
): Verdict | { hash: string | null; bytes: Uint8Array } {
  const oid = decodeOid(children(algorithm, Tag.SEQUENCE)[0]);
  if (!signature) throw new DerError("Missing signature");
  if (!(oid in ALGORITHMS)) return "unsupported";
  if (signature.tag !== Tag.BIT_STRING || signature.value[0] !== 0) {
    throw new DerError("Malformed signature");
  }
  const { hash, key: keyType } = ALGORITHMS[oid];
  // The algorithm named must fit the key (RFC 5280 §4.1.1.2), not merely verify with it.
  if (key.asymmetricKeyType !== keyType) return "invalid";
  return { hash, bytes: signature.value.subarray(1) };
}

// ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279) as r || s, each `size`
// bytes; undefined unless it is exactly that, in canonical DER, with 0 < r, s < 2^(8·size).
function rawEcdsaSignature(der: Uint8Array, size: number): Uint8Array<ArrayBuffer> | undefined {
  let parts: DerNode[];
  try {
    parts = children(readDer(der), Tag.SEQUENCE);
  } catch {
    return undefined;
  }
  if (parts.length !== 2) return undefined;
  const out = new Uint8Array(2 * size);
  for (const [i, part] of parts.entries()) {
    let v = part.value;
    if (part.tag !== Tag.INTEGER || v.length === 0 || v[0] & 0x80) return undefined; // negative
    // Zero, or a leading zero byte that is not needed (not canonical).
    if (v[0] === 0 && (v.length === 1 || !(v[1] & 0x80))) return undefined;
    if (v[0] === 0) v = v.subarray(1);
    if (v.length > size) return undefined;
    out.set(v, (i + 1) * size - v.length);
  }
  return out;
}
