import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { E2eError } from "../lib/errors.ts";
import { trustAnchor } from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import type { CertificateReply } from "./ca_client.ts";
import { checkDirectoryAnswer } from "./directory.ts";
import { Revocation } from "./revocation.ts";
import { LogMonitor } from "./transparency.ts";

function refused(message: RegExp, detail?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, "ERR_PEER_REJECTED");
    assert.match(e.message, message);
    if (detail) assert.match(e.detail ?? "", detail);
    return true;
  };
}

Deno.test("checkDirectoryAnswer() needs a current CRL, refuses a revoked certificate, then asks the log for a proof", async () => {
  await withTempDir(async (dir) => {
    const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
    await ca.openLog();
    const bob = (await ca.sign((await makeCsr("bob")).csr, "bob")).certificate;
    const carol = (await ca.sign((await makeCsr("carol")).csr, "carol")).certificate;
    await ca.revoke("carol");
    const anchor = trustAnchor(ca.certificate.pem);
    // A CA stand-in that gives the log key only: nothing else is asked before a proof checks out.
    const logKey = await Deno.readTextFile(ca.paths.logCert);
    const log = await LogMonitor.open(join(dir, "log.json"), anchor, {
      logKey: () => Promise.resolve(logKey),
    } as never);
    const revocation = new Revocation({
      fetch: () => ca.crl(),
      issuer: new X509Certificate(ca.certificate.pem),
    });
    const answer = (pem: string) => ({ certificate: pem }) as CertificateReply;
    const checks = { anchor, revocation, log };

    // No CRL yet: "not revoked" cannot be said, whatever the answer (the chat's invite too).
    await assert.rejects(
      checkDirectoryAnswer(answer(bob.pem), "bob", checks),
      refused(/^Cannot check revocation: no current CRL from the CA$/),
    );
    await revocation.refresh();
    await assert.rejects(
      checkDirectoryAnswer(answer(carol.pem), "carol", checks),
      refused(/^The peer's certificate was rejected$/, /is revoked/),
    );
    await assert.rejects(
      checkDirectoryAnswer(answer(bob.pem), "carol", checks),
      refused(/^The peer's certificate was rejected$/, /names "bob", not "carol"/),
    );
    await assert.rejects(
      checkDirectoryAnswer({} as CertificateReply, "bob", checks),
      refused(/^The peer's certificate was rejected$/, /no certificate/),
    );
    // Ours, that name, not revoked: without a proof that it is in the log it is still refused.
    await assert.rejects(
      checkDirectoryAnswer(answer(bob.pem), "bob", checks),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
    );
  });
});
