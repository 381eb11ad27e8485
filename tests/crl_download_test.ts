/**
 * The CRL distribution point (issue #15, docs/CERTIFICATES.md, docs/API.md):
 * every certificate the CA issues names the CRL on the service's plain-HTTP
 * CRL listener, so standard tools find it. `openssl verify -crl_check
 * -crl_download` accepts a member's certificate, then refuses it once revoked;
 * the listener answers nothing but the CRL.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CaPaths } from "../ca/home.ts";
import { CRL_REPUBLISH_MS } from "../lib/crl.ts";
import { runCa } from "./_helpers.ts";
import { crlSignedAt } from "./_impostor.ts";
import { assertSuccess, enrollUser, withService } from "./_service_helpers.ts";

async function verify(caFile: string, certFile: string): Promise<{ ok: boolean; text: string }> {
  const out = await new Deno.Command("openssl", {
    args: ["verify", "-CAfile", caFile, "-crl_check", "-crl_download", certFile],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  const decoder = new TextDecoder();
  return { ok: out.success, text: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}

Deno.test("openssl verify -crl_check -crl_download finds the CRL through an issued certificate, and sees a revocation", async () => {
  await withService(async (service, dir) => {
    const crlUrl = (await Deno.readTextFile(join(service.caDir, "crl-url.txt"))).trim();
    const m = /^http:\/\/127\.0\.0\.1:(\d+)\/crl\.der$/.exec(crlUrl);
    assert.ok(m, crlUrl);
    const alice = await enrollUser(service, "alice");
    const certFile = join(dir, "alice.crt");
    await Deno.writeTextFile(certFile, alice.cert);
    const caFile = join(service.caDir, "ca.crt");
    const text = await new Deno.Command("openssl", {
      args: ["x509", "-in", certFile, "-noout", "-ext", "crlDistributionPoints"],
      stdout: "piped",
    }).output();
    assert.match(
      new TextDecoder().decode(text.stdout),
      new RegExp(`URI:${crlUrl.replaceAll(".", "\\.")}`),
    );

    const before = await verify(caFile, certFile);
    assert.ok(before.ok, before.text);
    assert.match(before.text, /: OK$/m);
    assertSuccess(await runCa(service.home, ["revoke", "alice"]), "ca revoke alice");
    const after = await verify(caFile, certFile);
    assert.equal(after.ok, false, after.text);
    assert.match(after.text, /certificate revoked/);

    // The service's own certificate names it too.
    const serviceCert = await Deno.readTextFile(join(service.caDir, "service", "cert.pem"));
    assert.ok(serviceCert.length > 0);
    const serviceFile = join(dir, "service.crt");
    await Deno.writeTextFile(serviceFile, serviceCert);
    const ok = await verify(caFile, serviceFile);
    assert.ok(ok.ok, ok.text);

    // The listener serves the CRL and nothing else.
    const port = Number(m[1]);
    const get = async (path: string, method = "GET") => {
      const r = await fetch(`http://127.0.0.1:${port}${path}`, { method });
      return {
        status: r.status,
        type: r.headers.get("content-type"),
        body: new Uint8Array(await r.arrayBuffer()),
      };
    };
    const der = await get("/crl.der");
    assert.equal(der.status, 200);
    assert.equal(der.type, "application/pkix-crl");
    assert.equal(der.body[0], 0x30, "not DER");
    const pem = await get("/crl.pem");
    assert.match(new TextDecoder().decode(pem.body), /^-----BEGIN X509 CRL-----/);
    for (const path of ["/", "/v1/ca", "/crl.der/../ca.key", "/ca.key"]) {
      assert.equal((await get(path)).status, 404, path);
    }
    assert.equal((await get("/crl.der", "POST")).status, 405);
  });
});

Deno.test("when the CA cannot sign a new CRL, the CRL port still hands out the last one, which is current, and the service says so once in its log", async () => {
  await withService(async (service) => {
    const paths = new CaPaths(service.home);
    const port = Number(
      /:(\d+)\/crl\.der$/.exec((await Deno.readTextFile(paths.crlUrl)).trim())![1],
    );
    const signedAt = new Date(Date.now() - CRL_REPUBLISH_MS - 60_000);
    const last = await crlSignedAt(paths, signedAt);
    await Deno.writeTextFile(paths.crl, last);
    await Deno.utime(paths.crl, signedAt, signedAt);
    await Deno.writeTextFile(paths.config, "[ ca\n"); // a broken CA folder: openssl ca fails
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`http://127.0.0.1:${port}/crl.pem`);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), last);
    }
    await service.waitForLog(/cannot sign a new CRL: .*; trying again in 10 s/);
    assert.equal(service.log.match(/cannot sign a new CRL/g)?.length, 1, service.log);
  });
});
