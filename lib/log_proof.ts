/**
 * The proof that a certificate is in the CA's issuance log, as the CA API
 * sends it beside a certificate (enrollment, renewal, directory look-ups,
 * invitations): the leaf index, the inclusion path and the signed checkpoint
 * it is proved against. This module alone writes and reads that shape.
 *
 * ```json
 * "log": { "index": 7, "hashes": ["base64", …], "checkpoint": "e2e-chat/…\n8\n…\n\n— …\n" }
 * ```
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { KeyObject } from "node:crypto";
import { type Checkpoint, openCheckpoint } from "./checkpoint.ts";
import { E2eError } from "./errors.ts";
import { type Hash, leafHash, verifyInclusion } from "./merkle.ts";

/** A certificate's inclusion proof, as JSON. */
export interface LogProofJson {
  /** Its index in the log. */
  index: number;
  /** The inclusion path, base64. */
  hashes: string[];
  /** The signed checkpoint the path leads to. */
  checkpoint: string;
}

/**
 * The origin line of the issuance log of the CA whose certificate has SHA-256
 * `caFingerprint` (hex); it is also the name of the log's note key.
 *
 * @example
 * ```ts
 * import { logOrigin } from "./log_proof.ts";
 * logOrigin("ab".repeat(32)); // "e2e-chat/abab…"
 * ```
 */
export function logOrigin(caFingerprint: string): string {
  return `e2e-chat/${caFingerprint}`;
}

/** Most hashes an inclusion path can have (a log of 2^64 entries). */
const MAX_HASHES = 64;

/**
 * The JSON of an inclusion proof.
 *
 * @example
 * ```ts
 * import { logProofJson } from "./log_proof.ts";
 * logProofJson(0, [], "log\n1\n…\n\n— log …\n");
 * ```
 */
export function logProofJson(index: number, hashes: Hash[], checkpoint: string): LogProofJson {
  return { index, hashes: hashes.map((h) => Buffer.from(h).toString("base64")), checkpoint };
}

/**
 * The base64 hashes of a proof as bytes; throws `ERR_LOG_INVALID` when they are not 32-byte hashes.
 *
 * @example
 * ```ts
 * import { decodeHashes } from "./log_proof.ts";
 * decodeHashes(["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]).length; // 1
 * ```
 */
export function decodeHashes(value: unknown): Hash[] {
  if (!Array.isArray(value) || value.length > MAX_HASHES) {
    throw new E2eError("ERR_LOG_INVALID", "Invalid log proof: no list of hashes");
  }
  return value.map((h) => {
    const bytes = typeof h === "string" && /^[A-Za-z0-9+/]{43}=$/.test(h)
      ? Buffer.from(h, "base64")
      : null;
    if (!bytes || bytes.length !== 32) {
      throw new E2eError("ERR_LOG_INVALID", "Invalid log proof: a hash is not 32 bytes of base64");
    }
    return new Uint8Array(bytes);
  });
}

/**
 * Checks that the certificate `der` is in the log: the checkpoint is signed by
 * the log key (named `origin`) and the path leads from the certificate's leaf
 * to its root. Returns the checkpoint; throws `ERR_LOG_INVALID` — fail closed.
 *
 * @example
 * ```ts
 * import { verifyLogProof } from "./log_proof.ts";
 * import { X509Certificate } from "node:crypto";
 * const logKey = new X509Certificate(await Deno.readTextFile("log.crt")).publicKey;
 * const reply = JSON.parse(await Deno.readTextFile("lookup.json"));
 * const der = new X509Certificate(reply.certificate).raw;
 * verifyLogProof(der, reply.log, { name: "e2e-chat/…", key: logKey });
 * ```
 */
export function verifyLogProof(
  der: Uint8Array,
  proof: unknown,
  logKey: { name: string; key: KeyObject },
): Checkpoint {
  const p = proof as Partial<LogProofJson> | undefined;
  if (!p || typeof p !== "object" || typeof p.checkpoint !== "string") {
    throw new E2eError(
      "ERR_LOG_INVALID",
      "The certificate comes without a proof that it is logged",
    );
  }
  const checkpoint = openCheckpoint(p.checkpoint, logKey);
  const index = p.index;
  if (typeof index !== "number" || !Number.isSafeInteger(index)) {
    throw new E2eError("ERR_LOG_INVALID", "Invalid log proof: no index");
  }
  if (
    !verifyInclusion(index, checkpoint.size, leafHash(der), decodeHashes(p.hashes), checkpoint.root)
  ) {
    throw new E2eError("ERR_LOG_INVALID", "The certificate is not in the CA's issuance log", {
      detail: `index ${index} of ${checkpoint.size}`,
    });
  }
  return checkpoint;
}
