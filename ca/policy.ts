/**
 * The certificate profile and the rules the authority enforces, whatever a
 * request asks for. Written down in docs/CERTIFICATES.md; tests check both.
 *
 * @module
 */
import type { KeyObject } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import { memberKeyProblem } from "../lib/x509.ts";

/** Validity of a client certificate when `--days` is not given: the original project's choice. */
export const DEFAULT_CERT_DAYS = 7;
/** Validity of a new CA certificate when `--days` is not given (five years, as the README). */
export const DEFAULT_CA_DAYS = 1826;
/** The longest validity accepted for any certificate. */
export const MAX_DAYS = 36_500;
/** Key types a CA can be created with. */
export const CA_KEY_TYPES = ["rsa-4096", "ec-p256", "ed25519"] as const;
/** A key type of a CA. */
export type CaKeyType = typeof CA_KEY_TYPES[number];
/** Reasons accepted by `revoke` (RFC 5280 §5.3.1, less the certificateHold machinery). */
export const REVOKE_REASONS = [
  "unspecified",
  "keyCompromise",
  "CACompromise",
  "affiliationChanged",
  "superseded",
  "cessationOfOperation",
] as const;
/** A revocation reason. */
export type RevokeReason = typeof REVOKE_REASONS[number];

/** The kind of key a certificate will carry, which decides its keyUsage. */
export type KeyKind = "rsa" | "ec" | "ed25519";

/**
 * Checks a requested public key against the policy: RSA 2048–4096 bits with an
 * odd exponent ≥ 65537, EC P-256 or P-384, or Ed25519. Returns its kind.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { checkKey } from "./policy.ts";
 * console.log(checkKey(generateKeyPairSync("ed25519").publicKey)); // "ed25519"
 * ```
 */
export function checkKey(key: KeyObject): KeyKind {
  const problem = memberKeyProblem(key);
  if (problem) throw rejected(problem);
  return key.asymmetricKeyType as KeyKind;
}

function rejected(why: string): E2eError {
  return new E2eError("ERR_KEY_REJECTED", `Cannot sign request: ${why}`, {
    hint: "use RSA (2048 to 4096 bits), EC P-256/P-384 or Ed25519",
  });
}

/**
 * Checks a validity in days: a whole number from 1 to `max`.
 *
 * @example
 * ```ts
 * import { checkDays } from "./policy.ts";
 * checkDays(7, 30); // 7
 * ```
 */
export function checkDays(days: number, max: number = MAX_DAYS): number {
  if (!Number.isInteger(days) || days < 1 || days > max) {
    throw new E2eError(
      "ERR_DAYS_INVALID",
      `Invalid validity "${days}": use whole days from 1 to ${max}`,
    );
  }
  return days;
}

/**
 * The openssl configuration of the CA. Paths are relative to openssl's working
 * directory, so the same file serves our per-operation work copies and a
 * learner running `openssl ca -config openssl.cnf` by hand inside `HOME/ca`.
 */
export const OPENSSL_CNF =
  `# e2e-chat CA configuration. Written by \`deno task ca init\`; see docs/CERTIFICATES.md.
# Paths are relative to the working directory: run openssl from inside this folder.
[ req ]
distinguished_name = req_dn
[ req_dn ]

[ v3_ca ]
# pathlen:0: this CA signs members and its own service, never another CA.
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ ca ]
default_ca = e2e_ca

[ e2e_ca ]
database = index.txt
new_certs_dir = certs
crlnumber = crlnumber
# 159 random bits, never a counter.
rand_serial = yes
default_md = default
policy = policy_cn
# A name may have many revoked certificates; the authority keeps one valid.
unique_subject = no
# Requested extensions are ignored: the CA sets every extension itself.
copy_extensions = none
email_in_dn = no
preserve = no
default_crl_days = 7
crl_extensions = crl_ext

[ policy_cn ]
commonName = supplied

[ crl_ext ]
authorityKeyIdentifier = keyid:always
`;

/**
 * The extensions of a client certificate for `name` (already validated against
 * the name pattern, so it is safe inside an openssl config).
 *
 * @example
 * ```ts
 * import { leafExtensions } from "./policy.ts";
 * console.log(leafExtensions("alice", "ec"));
 * ```
 */
export function leafExtensions(name: string, kind: KeyKind, crlUrl?: string): string {
  // The mailbox encrypts to a member's key (lib/cms.ts): RSA-OAEP key transport needs
  // keyEncipherment, ECDH keyAgreement (RFC 5753 §7); Ed25519 only signs.
  const usage = kind === "rsa"
    ? "digitalSignature, keyEncipherment"
    : kind === "ec"
    ? "digitalSignature, keyAgreement"
    : "digitalSignature";
  return `[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, ${usage}
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:${name}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
${crlDistributionPoint(crlUrl)}`;
}

/** The path of the DER CRL on the CA's plain-HTTP CRL listener (ca/crl_listener.ts). */
export const CRL_URL_PATH = "/crl.der";

/** What a CRL distribution point may be: plain HTTP to a host (name, IPv4 or [IPv6]) and port, {@linkcode CRL_URL_PATH}. */
export const CRL_URL_PATTERN: RegExp =
  /^http:\/\/(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?):([1-9]\d{0,4})\/crl\.der$/;

/**
 * The `crlDistributionPoints` line of an extensions section, or "" without a
 * URL; a URL of another form is a programming error (it goes into an openssl
 * config).
 *
 * @example
 * ```ts
 * import { crlDistributionPoint } from "./policy.ts";
 * console.log(crlDistributionPoint("http://ca.example:65434/crl.der"));
 * ```
 */
export function crlDistributionPoint(url?: string): string {
  if (url === undefined) return "";
  const m = CRL_URL_PATTERN.exec(url);
  if (!m || Number(m[2]) > 65535) throw new RangeError(`Invalid CRL URL ${JSON.stringify(url)}`);
  return `crlDistributionPoints = URI:${url}\n`;
}

/**
 * The extensions of the CA service's own TLS certificate: server authentication
 * only, for the given DNS names and IP addresses.
 *
 * @example
 * ```ts
 * import { serviceExtensions } from "./policy.ts";
 * console.log(serviceExtensions(["localhost", "127.0.0.1"]));
 * ```
 */
export function serviceExtensions(hosts: string[], crlUrl?: string): string {
  const san = hosts.map((h) => (isIp(h) ? `IP:${h}` : `DNS:${checkHostname(h)}`)).join(", ");
  return `[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = ${san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
${crlDistributionPoint(crlUrl)}`;
}

/**
 * The extensions of the issuance log's key certificate: signs checkpoints only.
 *
 * @example
 * ```ts
 * import { logExtensions } from "./policy.ts";
 * console.log(logExtensions());
 * ```
 */
export function logExtensions(): string {
  return `[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`;
}

/** Whether `host` is an IPv4 or IPv6 address. */
export function isIp(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) ||
    (/^[0-9a-fA-F:]+$/.test(host) && host.includes(":"));
}

function checkHostname(host: string): string {
  if (
    !/^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/
      .test(host)
  ) {
    throw new E2eError("ERR_USAGE", `Invalid host name ${JSON.stringify(host)}`);
  }
  return host;
}
