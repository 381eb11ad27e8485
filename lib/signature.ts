/**
 * Verifying an X.509-style signature (CSRs, CRLs) in-process with node:crypto,
 * for the algorithms e2e-chat accepts.
 *
 * @module
 */
import { type KeyObject, verify } from "node:crypto";
import { children, decodeOid, DerError, type DerNode, Tag } from "./der.ts";

// Signature algorithms accepted, and the hash each implies.
const ALGORITHMS: Record<string, string | null> = {
  "1.2.840.113549.1.1.11": "sha256", // sha256WithRSAEncryption
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.2.840.10045.4.3.2": "sha256", // ecdsa-with-SHA256
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.3.101.112": null, // Ed25519 signs the message itself
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
): "ok" | "invalid" | "unsupported" {
  const oid = decodeOid(children(algorithm, Tag.SEQUENCE)[0]);
  if (!signature) throw new DerError("Missing signature");
  if (!(oid in ALGORITHMS)) return "unsupported";
  if (signature.tag !== Tag.BIT_STRING || signature.value[0] !== 0) {
    throw new DerError("Malformed signature");
  }
  try {
    return verify(ALGORITHMS[oid], tbs, key, signature.value.subarray(1)) ? "ok" : "invalid";
  } catch {
    return "invalid";
  }
}
