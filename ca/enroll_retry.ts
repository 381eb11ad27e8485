/**
 * A retried enrollment: a member whose join lost the CA's reply (the connection
 * dropped, the client was killed) after the CA committed runs the same join
 * again, with the same invite and the same key. Its token is used by then; this
 * finds the certificate that token issued and hands it back again when the new
 * request is for that very key and the certificate is still the name's valid
 * one. Nothing is signed and nothing is written (docs/API.md "POST /v1/enroll",
 * docs/SECURITY.md "A retried join").
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { normalizeSerialHex } from "../lib/x509.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import type { CertificateAuthority } from "./authority.ts";
import type { InviteStore } from "./invites.ts";

/** A certificate issued before, found again for a retry. */
export interface IssuedBefore {
  /** The name the invite enrolled. */
  name: string;
  /** The certificate its token issued, still the name's valid one. */
  certificate: CertificateInfo;
}

/**
 * The certificate a used invite `token` issued, when `csr` is a request for
 * that certificate's key (its signature checked as for any enrollment: whoever
 * sends it holds the private key) and that certificate is still the name's
 * valid one — not revoked, not expired, not superseded; undefined in every
 * other case (unknown or unused token, a token used over a day ago, another
 * key, a request the policy refuses), so the caller answers as it would have
 * without a retry. Reads only.
 *
 * @example
 * ```ts
 * import { CertificateAuthority } from "./authority.ts";
 * import { InviteStore } from "./invites.ts";
 * import { issuedBefore } from "./enroll_retry.ts";
 * const ca = await CertificateAuthority.open("/tmp/ca-home");
 * const again = await issuedBefore(ca, new InviteStore(ca.paths), "TOKEN", "-----BEGIN …");
 * console.log(again?.certificate.serial);
 * ```
 */
export async function issuedBefore(
  ca: CertificateAuthority,
  invites: InviteStore,
  token: unknown,
  csr: string,
): Promise<IssuedBefore | undefined> {
  const issued = await invites.issuedWith(token);
  if (!issued) return undefined;
  let keyFingerprint: string;
  try {
    keyFingerprint = (await ca.checkRequest(csr, issued.name)).request.keyFingerprint;
  } catch (e) {
    if (e instanceof E2eError) return undefined;
    throw e;
  }
  const current = await ca.current(issued.name);
  if (!current || normalizeSerialHex(current.serial) !== issued.serial) return undefined;
  if (current.keyFingerprint !== keyFingerprint) return undefined;
  return { name: issued.name, certificate: current };
}
