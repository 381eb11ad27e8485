/**
 * Certificate revocation lists (RFC 5280 §5), read and verified in-process:
 * clients check a peer against the CA's CRL, verified with the CA's key.
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import { children, decodeOid, DerError, type DerNode, readDer, Tag } from "./der.ts";
import { E2eError } from "./errors.ts";
import { pemDecode } from "./pem.ts";
import { verifySignature } from "./signature.ts";
import { normalizeSerialHex } from "./x509.ts";

// Kept here too: client code reads revoked serials and normalizes them with the same import.
export { normalizeSerialHex } from "./x509.ts";

/**
 * How old the CRL the CA service hands out may be before it signs a new one, ms: a client
 * trusts the service's own certificate only on a CRL a few of these old at most
 * ({@linkcode SERVICE_CRL_WINDOW_MS}), which bounds how long whoever kept a revoked
 * service key can replay the last CRL from before its revocation.
 */
export const CRL_REPUBLISH_MS = 3_600_000;

/**
 * How old a CRL (its thisUpdate) may be and still clear the CA service's own TLS certificate, ms:
 * three times the service's republishing ({@linkcode CRL_REPUBLISH_MS}), so a clock off by up to
 * two hours, or a lost refresh, does not refuse an honest service. Here, shared, because the
 * service says it too, when it cannot sign a new CRL.
 */
export const SERVICE_CRL_WINDOW_MS = 3 * CRL_REPUBLISH_MS;

/**
 * How far ahead of a client's clock a CRL's thisUpdate may be and still clear the CA service's
 * certificate, ms: more means that clock is behind, which would let an old CRL (a replay) look
 * recent for as much longer. Here, shared, because the service signs a new CRL when the one it
 * holds is dated half of this ahead of its own clock (a clock put back).
 */
export const CRL_CLOCK_SKEW_MS = 10 * 60_000;

/** A verified CRL. */
export interface RevocationList {
  /** Revoked serials, uppercase hex without leading zeros. */
  revoked: Set<string>;
  /**
   * Those of them revoked because another certificate replaced them (reasonCode
   * `superseded`, RFC 5280 §5.3.1: a renewal, or a new key for the name), not for a
   * compromise: refused all the same, but worded as what happened.
   */
  superseded: Set<string>;
  /**
   * The reasonCode (RFC 5280 §5.3.1: 1 keyCompromise, 4 superseded, …) of each revoked serial
   * whose entry has one; see {@linkcode CRL_REASON_CODES}.
   */
  reasons: Map<string, number>;
  /** When it was issued. */
  thisUpdate: Date;
  /** When the next one is due (undefined if the CRL does not say). */
  nextUpdate?: Date;
  /** Its CRL number (RFC 5280 §5.2.3), greater in every later CRL; undefined if it has none. */
  number?: bigint;
}

/**
 * The reasonCode (RFC 5280 §5.3.1) a CRL entry carries for each revocation reason as openssl
 * names it (index.txt, `openssl ca -crl_reason`).
 *
 * @example
 * ```ts
 * import { CRL_REASON_CODES } from "./crl.ts";
 * console.log(CRL_REASON_CODES.keyCompromise); // 1
 * ```
 */
export const CRL_REASON_CODES: Readonly<Record<string, number>> = {
  unspecified: 0,
  keyCompromise: 1,
  CACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  removeFromCRL: 8,
};

/**
 * Parses a PEM CRL and verifies it was signed by `issuer`; throws `ERR_PEER_REJECTED` otherwise.
 *
 * @example
 * ```ts
 * import { X509Certificate } from "node:crypto";
 * import { parseCrl } from "./crl.ts";
 * const ca = new X509Certificate(await Deno.readTextFile("ca.crt"));
 * const crl = parseCrl(await Deno.readTextFile("crl.pem"), ca);
 * console.log(crl.revoked.size);
 * ```
 */
export function parseCrl(pem: string, issuer: X509Certificate): RevocationList {
  const der = pemDecode(pem, "X509 CRL");
  if (!der) throw rejected("not a PEM X509 CRL");
  return parseCrlDer(der, issuer);
}

/**
 * Like {@linkcode parseCrl}, for a CRL's DER (an entry of the issuance log, say).
 *
 * @example
 * ```ts
 * import { X509Certificate } from "node:crypto";
 * import { parseCrlDer } from "./crl.ts";
 * import { pemDecode } from "./pem.ts";
 * const ca = new X509Certificate(await Deno.readTextFile("ca.crt"));
 * const der = pemDecode(await Deno.readTextFile("crl.pem"), "X509 CRL")!;
 * console.log(parseCrlDer(der, ca).number);
 * ```
 */
export function parseCrlDer(der: Uint8Array, issuer: X509Certificate): RevocationList {
  return readCrl(der, issuer);
}

/**
 * The CRL number of the CRL `der` whose signature is NOT checked: for the CA's own
 * crl.pem only. Undefined when it has none; throws `ERR_PEER_REJECTED` when it is no CRL.
 *
 * @example
 * ```ts
 * import { crlNumberOf } from "./crl.ts";
 * import { pemDecode } from "./pem.ts";
 * console.log(crlNumberOf(pemDecode(await Deno.readTextFile("crl.pem"), "X509 CRL")!));
 * ```
 */
export function crlNumberOf(der: Uint8Array): bigint | undefined {
  return readCrl(der, undefined).number;
}

/**
 * Whether `der` has the shape of a CRL (a CertificateList: after its optional version, an
 * algorithm, an issuer and then a time), not of a certificate, whose TBSCertificate has a
 * serial and a validity SEQUENCE there. Nothing is verified.
 *
 * @example
 * ```ts
 * import { looksLikeCrl } from "./crl.ts";
 * import { pemDecode } from "./pem.ts";
 * console.log(looksLikeCrl(pemDecode(await Deno.readTextFile("crl.pem"), "X509 CRL")!)); // true
 * ```
 */
export function looksLikeCrl(der: Uint8Array): boolean {
  try {
    const [tbs] = children(readDer(der), Tag.SEQUENCE);
    const fields = children(tbs, Tag.SEQUENCE);
    const i = fields[0]?.tag === Tag.INTEGER ? 1 : 0;
    return fields[i]?.tag === Tag.SEQUENCE && fields[i + 1]?.tag === Tag.SEQUENCE &&
      isTime(fields[i + 2]);
  } catch {
    return false;
  }
}

function readCrl(der: Uint8Array, issuer: X509Certificate | undefined): RevocationList {
  try {
    const [tbs, algorithm, signature] = children(readDer(der), Tag.SEQUENCE);
    if (!signature) throw new DerError("Missing signature");
    if (issuer && verifySignature(tbs.raw, algorithm, signature, issuer.publicKey) !== "ok") {
      throw rejected("the CRL's signature does not verify with the CA key");
    }
    const fields = children(tbs, Tag.SEQUENCE);
    let i = fields[0]?.tag === Tag.INTEGER ? 1 : 0; // optional version
    i += 2; // signature algorithm, issuer
    const thisUpdate = readTime(fields[i++]);
    let nextUpdate: Date | undefined;
    if (isTime(fields[i])) {
      nextUpdate = readTime(fields[i++]);
    }
    const revoked = new Set<string>();
    const superseded = new Set<string>();
    const reasons = new Map<string, number>();
    if (fields[i]?.tag === Tag.SEQUENCE) {
      // A long-lived CA's CRL grows with every revocation and renewal: allow a million.
      for (const entry of children(fields[i++], Tag.SEQUENCE, 1_000_000)) {
        const [serial, , extensions] = children(entry, Tag.SEQUENCE);
        if (serial?.tag !== Tag.INTEGER) throw new DerError("Bad serial");
        const hex = serialHex(serial);
        revoked.add(hex);
        const reason = extensions && entryReason(extensions);
        if (reason !== undefined) reasons.set(hex, reason);
        if (reason === SUPERSEDED) superseded.add(hex);
      }
    }
    const number = fields[i]?.tag === 0xa0 ? crlNumber(fields[i]) : undefined;
    return { revoked, superseded, reasons, thisUpdate, nextUpdate, number };
  } catch (e) {
    if (e instanceof DerError) throw rejected(`malformed CRL: ${e.message}`);
    throw e;
  }
}

// The CRL extensions a client understands; another marked critical makes the CRL unusable.
const KNOWN_CRL_EXTENSIONS = new Set([
  "2.5.29.20", // cRLNumber
  "2.5.29.35", // authorityKeyIdentifier
]);

// The CRL entry extensions a client understands (RFC 5280 §5.3); another marked critical (a
// certificateIssuer, which makes the CRL indirect: its entries name another CA's serials) makes
// the CRL unusable.
const KNOWN_ENTRY_EXTENSIONS = new Set([
  "2.5.29.21", // reasonCode
  "2.5.29.24", // invalidityDate
]);

// reasonCode superseded (RFC 5280 §5.3.1), which `openssl ca -crl_reason superseded` writes.
const SUPERSEDED = 4;
const ENUMERATED = 0x0a;

// An entry's reasonCode from its crlEntryExtensions, if it has one.
function entryReason(list: DerNode): number | undefined {
  let reason: number | undefined;
  const seen = new Set<string>();
  for (const extension of children(list, Tag.SEQUENCE)) {
    const fields = children(extension, Tag.SEQUENCE);
    const oid = decodeOid(fields[0]);
    if (seen.has(oid)) throw new DerError(`CRL entry extension ${oid} appears twice`);
    seen.add(oid);
    const critical = fields[1]?.tag === 0x01 && fields[1].value[0] !== 0;
    if (critical && !KNOWN_ENTRY_EXTENSIONS.has(oid)) {
      throw new DerError(`unknown critical CRL entry extension ${oid}`);
    }
    if (oid !== "2.5.29.21") continue;
    const value = fields[fields.length - 1];
    if (value?.tag !== Tag.OCTET_STRING) throw new DerError("Bad reason code");
    const code = readDer(value.value);
    if (code.tag !== ENUMERATED || code.value.length !== 1) throw new DerError("Bad reason code");
    reason = code.value[0];
  }
  return reason;
}

// The cRLNumber in crlExtensions ([0] EXPLICIT Extensions), if there is one.
function crlNumber(wrapped: DerNode): bigint | undefined {
  const [list] = children(wrapped);
  if (!list) throw new DerError("Empty CRL extensions");
  let number: bigint | undefined;
  const seen = new Set<string>();
  for (const extension of children(list, Tag.SEQUENCE)) {
    const fields = children(extension, Tag.SEQUENCE);
    const oid = decodeOid(fields[0]);
    // RFC 5280 §5.2: one instance of each (two numbers would leave which one counts open), and
    // a critical one not understood means the CRL is not used: a delta CRL or a partial one
    // (deltaCRLIndicator, issuingDistributionPoint) read as complete would un-revoke.
    if (seen.has(oid)) throw new DerError(`CRL extension ${oid} appears twice`);
    seen.add(oid);
    const critical = fields[1]?.tag === 0x01 && fields[1].value[0] !== 0;
    if (critical && !KNOWN_CRL_EXTENSIONS.has(oid)) {
      throw new DerError(`unknown critical CRL extension ${oid}`);
    }
    if (oid !== "2.5.29.20") continue;
    const value = fields[fields.length - 1];
    if (value?.tag !== Tag.OCTET_STRING) throw new DerError("Bad CRL number");
    const integer = readDer(value.value);
    // At most 20 octets (RFC 5280 §5.2.3; 21 with the zero that keeps it positive), not
    // empty, and never negative.
    const octets = integer.value;
    if (
      integer.tag !== Tag.INTEGER || octets.length === 0 || octets[0] & 0x80 ||
      octets.length > 21 || (octets.length === 21 && octets[0] !== 0)
    ) {
      throw new DerError("Bad CRL number");
    }
    number = octets.reduce((n, b) => (n << 8n) | BigInt(b), 0n);
  }
  return number;
}

function serialHex(node: DerNode): string {
  return normalizeSerialHex([...node.value].map((b) => b.toString(16).padStart(2, "0")).join(""));
}

// The two time types of RFC 5280 (thisUpdate, nextUpdate).
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;

function isTime(node: DerNode | undefined): boolean {
  return node?.tag === UTC_TIME || node?.tag === GENERALIZED_TIME;
}

function readTime(node: DerNode | undefined): Date {
  if (!node) throw new DerError("Missing time");
  const text = String.fromCharCode(...node.value);
  const m = node.tag === UTC_TIME
    ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
    : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (!m) throw new DerError("Bad time");
  let year = Number(m[1]);
  if (node.tag === UTC_TIME) year += year < 50 ? 2000 : 1900;
  return new Date(
    Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])),
  );
}

function rejected(detail: string): E2eError {
  return new E2eError("ERR_PEER_REJECTED", "The CRL was rejected", { detail });
}
