/**
 * Verifying an X.509-style signature (CSRs, CRLs) in-process with node:crypto,
 * for the algorithms e2e-chat accepts.
 *
 * @module
 */
import { type KeyObject, verify } from "node:crypto";
import { children, decodeOid, DerError, type DerNode, Tag } from "./der.ts";

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
): "ok" | "invalid" | "unsupported" {
  const oid = decodeOid(children(algorithm, Tag.SEQUENCE)[0]);
  if (!signature) throw new DerError("Missing signature");
  if (!(oid in ALGORITHMS)) return "unsupported";
  if (signature.tag !== Tag.BIT_STRING || signature.value[0] !== 0) {
    throw new DerError("Malformed signature");
  }
  const { hash, key: keyType } = ALGORITHMS[oid];
  // The algorithm named must fit the key (RFC 5280 §4.1.1.2), not merely verify with it.
  if (key.asymmetricKeyType !== keyType) return "invalid";
  try {
    return verify(hash, tbs, key, signature.value.subarray(1)) ? "ok" : "invalid";
  } catch {
    return "invalid";
  }
}
