/**
 * The CA directory's answer for a name, checked once for every caller: the
 * chat before it admits or reaches a peer (client/chat.ts) and `client lookup`
 * before it shows the certificate (client/main.ts) check the same things in
 * the same order, so what `lookup` shows is what the chat would accept.
 *
 * @module
 */
import { pemDecode } from "../lib/pem.ts";
import { checkPeer, type TrustAnchor } from "../lib/tls.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import type { CertificateReply } from "./ca_client.ts";
import type { Revocation } from "./revocation.ts";
import type { LogMonitor } from "./transparency.ts";

/** What {@linkcode checkDirectoryAnswer} checks against. */
export interface DirectoryChecks {
  /** The pinned CA. */
  anchor: TrustAnchor;
  /** The CRL held: it must be current, and must not list the certificate. */
  revocation: Pick<Revocation, "requireCurrent" | "isRevoked">;
  /** The issuance log: the certificate must come with a proof that it is in it. */
  log: Pick<LogMonitor, "checkCertificate">;
}

/**
 * Checks the directory's certificate for `name`: a current CRL is held (fail
 * closed), the certificate is a member's from our CA, names `name`, is valid
 * now and not revoked (`ERR_PEER_REJECTED`), and comes with a valid proof that
 * it is in the CA's issuance log (`ERR_LOG_INVALID`, or `ERR_LOG_ALARM` when
 * the proof is evidence against the CA). Returns it parsed.
 *
 * @example
 * ```ts
 * import { checkDirectoryAnswer } from "./directory.ts";
 * import { Identity } from "./identity.ts";
 * import { Revocation } from "./revocation.ts";
 * import { LogMonitor } from "./transparency.ts";
 * const id = await Identity.load("/tmp/alice");
 * const ca = id.client();
 * const revocation = new Revocation({ fetch: () => ca.crl(), issuer: id.anchor.x509 });
 * await revocation.refresh();
 * const log = await LogMonitor.open(id.home.logState, id.anchor, ca);
 * const bob = await checkDirectoryAnswer(await ca.lookup("bob"), "bob", {
 *   anchor: id.anchor,
 *   revocation,
 *   log,
 * });
 * console.log(bob.keyFingerprint);
 * ```
 */
export async function checkDirectoryAnswer(
  reply: CertificateReply,
  name: string,
  checks: DirectoryChecks,
): Promise<CertificateInfo> {
  // "Not revoked" means nothing without a CRL that is still current.
  checks.revocation.requireCurrent();
  // An answer without a certificate is refused by checkPeer (no TypeError).
  const der = typeof reply?.certificate === "string"
    ? pemDecode(reply.certificate, "CERTIFICATE")
    : null;
  const cert = checkPeer(der, checks.anchor, {
    name,
    isRevoked: (serial) => checks.revocation.isRevoked(serial),
  });
  await checks.log.checkCertificate(der!, reply.log); // checkPeer refused a missing one
  return cert;
}
