/**
 * Certificate requests (PKCS #10, RFC 2986), read and checked in-process:
 * subject, public key, requested extensions, and the self-signature.
 *
 * Checking here rather than through `openssl req -text` gives exact answers
 * (no text to scrape) and saves a process start per signing.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createPublicKey, type KeyObject } from "node:crypto";
import { children, decodeOid, decodeString, DerError, type DerNode, readDer, Tag } from "./der.ts";
import { E2eError } from "./errors.ts";
import { pemDecode } from "./pem.ts";
import { type Verdict, verifySignature, verifySignatureAsync } from "./signature.ts";
import { keyFingerprint } from "./x509.ts";

/** The largest certificate request accepted, in bytes of input. */
export const MAX_CSR_BYTES = 64 * 1024;

const OID_CN = "2.5.4.3";
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";

/** Options of {@linkcode parseCsr}. */
export interface ParseCsrOptions {
  /**
   * Checks the public key before the signature is verified, so a key the
   * policy refuses gets that reason (node:crypto cannot verify every curve).
   * Default: none.
   */
  checkKey?: (key: KeyObject) => unknown;
}

/** A parsed, signature-checked certificate request. */
export interface CertificateRequest {
  /** The request, DER. */
  der: Uint8Array;
  /** Subject attributes in order, as [OID, value]. */
  subject: Array<[string, string]>;
  /** Every commonName value of the subject. */
  commonNames: string[];
  /** The requested public key. */
  publicKey: KeyObject;
  /** SHA-256 of the public key's SPKI DER. */
  keyFingerprint: string;
  /** OIDs of the extensions the requester asked for (the CA ignores them). */
  requestedExtensions: string[];
}

/**
 * Parses a PEM (or DER) certificate request and verifies its self-signature.
 * Throws `ERR_CSR_INVALID` for anything malformed and `ERR_CSR_SIGNATURE` when
 * the signature does not verify.
 *
 * @example
 * ```ts
 * import { parseCsr } from "./csr.ts";
 * const csr = parseCsr(await Deno.readFile("fixtures/alice-ec.csr"));
 * console.log(csr.commonNames); // ["alice"]
 * ```
 */
export function parseCsr(
  input: Uint8Array | string,
  options: ParseCsrOptions = {},
): CertificateRequest {
  const { request, signed } = read(input, options);
  try {
    signatureVerdict(verifySignature(signed.tbs, signed.algorithm, signed.signature, signed.key));
  } catch (e) {
    throw invalid(e);
  }
  return request;
}

/**
 * {@linkcode parseCsr}, with the same checks and errors, its signature checked
 * through {@linkcode verifySignatureAsync}: an ECDSA request costs about half
 * the CPU, and that off the caller's thread (for a service's hot path).
 *
 * @example
 * ```ts
 * import { parseCsrAsync } from "./csr.ts";
 * const csr = await parseCsrAsync(await Deno.readFile("fixtures/alice-ec.csr"));
 * console.log(csr.commonNames); // ["alice"]
 * ```
 */
export async function parseCsrAsync(
  input: Uint8Array | string,
  options: ParseCsrOptions = {},
): Promise<CertificateRequest> {
  const { request, signed } = read(input, options);
  try {
    signatureVerdict(
      await verifySignatureAsync(signed.tbs, signed.algorithm, signed.signature, signed.key),
    );
  } catch (e) {
    throw invalid(e);
  }
  return request;
}

// What a request's signature covers, and the nodes to check it with.
interface Signed {
  tbs: Uint8Array;
  algorithm: DerNode;
  signature: DerNode;
  key: KeyObject;
}

function read(
  input: Uint8Array | string,
  options: ParseCsrOptions,
): { request: CertificateRequest; signed: Signed } {
  const bytes = typeof input === "string" ? new TextEncoder().encode(input) : input;
  if (bytes.length > MAX_CSR_BYTES) {
    throw new E2eError(
      "ERR_CSR_INVALID",
      `Invalid certificate request: larger than ${MAX_CSR_BYTES} bytes`,
    );
  }
  const text = new TextDecoder().decode(bytes);
  const der = text.includes("-----BEGIN")
    ? pemDecode(text, "CERTIFICATE REQUEST") ?? pemDecode(text, "NEW CERTIFICATE REQUEST")
    : bytes;
  if (!der || (der === bytes && bytes[0] !== 0x30)) {
    throw new E2eError(
      "ERR_CSR_INVALID",
      "Invalid certificate request: not one PEM CERTIFICATE REQUEST block, nor DER",
    );
  }
  try {
    return parseDer(der, options.checkKey);
  } catch (e) {
    throw invalid(e);
  }
}

// A malformed element, as the request's error; any other error as it is.
function invalid(e: unknown): unknown {
  if (!(e instanceof DerError)) return e;
  return new E2eError("ERR_CSR_INVALID", `Invalid certificate request: ${e.message}`, {
    cause: e,
  });
}

/**
 * Whether the subject of the request `der` (already checked by
 * {@linkcode parseCsr}) is exactly one commonName, `name`, as a UTF8String:
 * byte for byte the name `openssl ca -subj /CN=NAME -utf8` writes.
 *
 * @example
 * ```ts
 * import { subjectIsCommonName } from "./csr.ts";
 * console.log(subjectIsCommonName(await Deno.readFile("alice.der"), "alice")); // true
 * ```
 */
export function subjectIsCommonName(der: Uint8Array, name: string): boolean {
  const value = new TextEncoder().encode(name);
  if (value.length > 100) return false; // every length below stays in one octet
  const atv = [0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, value.length, ...value];
  const expected = [0x30, atv.length + 4, 0x31, atv.length + 2, 0x30, atv.length, ...atv];
  try {
    const subject = children(children(readDer(der), Tag.SEQUENCE)[0], Tag.SEQUENCE)[1]?.raw;
    return subject?.length === expected.length && subject.every((b, i) => b === expected[i]);
  } catch {
    return false;
  }
}

function parseDer(
  der: Uint8Array,
  checkKey?: (key: KeyObject) => unknown,
): { request: CertificateRequest; signed: Signed } {
  const [info, algorithm, signature] = exactly(children(readDer(der), Tag.SEQUENCE), 3);
  const infoParts = children(info, Tag.SEQUENCE);
  if (infoParts.length < 3 || infoParts.length > 4) throw new DerError("Malformed request info");
  const [version, subjectNode, spki, attributes] = infoParts;
  if (version.tag !== Tag.INTEGER || version.value.length !== 1 || version.value[0] !== 0) {
    throw new DerError("Unsupported request version");
  }
  const subject = readName(subjectNode);
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: Buffer.from(spki.raw), format: "der", type: "spki" });
  } catch (e) {
    // node:crypto in Deno cannot read RSA keys over 4096 bits: say so rather than "unreadable".
    const bits = rsaModulusBits(spki);
    const why = bits > 4096
      ? `an RSA key of ${bits} bits is too large (at most 4096)`
      : "its public key cannot be read";
    throw new E2eError("ERR_KEY_REJECTED", `Cannot sign request: ${why}`, {
      cause: e,
      hint: "use RSA (2048 to 4096 bits), EC P-256/P-384 or Ed25519",
    });
  }
  const requestedExtensions = attributes ? readRequestedExtensions(attributes) : [];
  checkKey?.(publicKey);
  // The certificate carries the request's key bytes as they are: only the encoding the runtime
  // itself writes (an EC point uncompressed, RSA parameters NULL) is one every peer's TLS reads.
  if (!Buffer.from(spki.raw).equals(publicKey.export({ type: "spki", format: "der" }))) {
    throw new E2eError(
      "ERR_KEY_REJECTED",
      "Cannot sign request: its public key is not in the standard encoding (an EC point must be uncompressed)",
      { hint: "use RSA (2048 to 4096 bits), EC P-256/P-384 or Ed25519" },
    );
  }
  const request = {
    der,
    subject,
    commonNames: subject.filter(([oid]) => oid === OID_CN).map(([, v]) => v),
    publicKey,
    keyFingerprint: keyFingerprint(publicKey),
    requestedExtensions,
  };
  return { request, signed: { tbs: info.raw, algorithm, signature, key: publicKey } };
}

function signatureVerdict(verdict: Verdict): void {
  if (verdict === "unsupported") {
    throw new E2eError(
      "ERR_CSR_SIGNATURE",
      "Cannot sign request: unsupported signature algorithm",
      {
        hint: "sign the request with SHA-256 (RSA or ECDSA) or Ed25519",
      },
    );
  }
  if (verdict === "invalid") {
    throw new E2eError("ERR_CSR_SIGNATURE", "Cannot sign request: its signature does not verify");
  }
}

function rsaModulusBits(spki: DerNode): number {
  try {
    const [algorithm, key] = children(spki, Tag.SEQUENCE);
    if (decodeOid(children(algorithm, Tag.SEQUENCE)[0]) !== "1.2.840.113549.1.1.1") return 0;
    if (key?.tag !== Tag.BIT_STRING) return 0;
    const [modulus] = children(readDer(key.value.subarray(1)), Tag.SEQUENCE);
    let bytes = modulus.value;
    while (bytes.length && bytes[0] === 0) bytes = bytes.subarray(1);
    return bytes.length ? (bytes.length - 1) * 8 + (32 - Math.clz32(bytes[0])) : 0;
  } catch {
    return 0;
  }
}

function readName(node: DerNode): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const rdn of children(node, Tag.SEQUENCE)) {
    for (const atv of children(rdn, Tag.SET)) {
      const [type, value] = exactly(children(atv, Tag.SEQUENCE), 2);
      out.push([decodeOid(type), decodeString(value)]);
    }
  }
  return out;
}

function readRequestedExtensions(node: DerNode): string[] {
  const oids: string[] = [];
  for (const attribute of children(node, Tag.CONTEXT_0)) {
    const [type, values] = exactly(children(attribute, Tag.SEQUENCE), 2);
    if (decodeOid(type) !== OID_EXTENSION_REQUEST) continue;
    for (const extensions of children(values, Tag.SET)) {
      for (const extension of children(extensions, Tag.SEQUENCE)) {
        oids.push(decodeOid(children(extension, Tag.SEQUENCE)[0]));
      }
    }
  }
  return oids;
}

function exactly(nodes: DerNode[], n: number): DerNode[] {
  if (nodes.length !== n) throw new DerError(`Expected ${n} elements, found ${nodes.length}`);
  return nodes;
}
