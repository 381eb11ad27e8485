import assert from "node:assert/strict";
import https from "node:https";
import { CertificateAuthority } from "../ca/authority.ts";
import { E2eError } from "../lib/errors.ts";
import { serverOptions, trustAnchor } from "../lib/tls.ts";
import { PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { CaClient } from "./ca_client.ts";

Deno.test("CaClient shows a CA service's refusal as printable text, so a hostile service cannot drive our terminal", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const own = await ca.issueServiceCertificate(["127.0.0.1"]);
    const anchor = trustAnchor(ca.certificate.pem);
    // A service of this CA that answers every request with a refusal full of escapes.
    const evil = "gone\u001b]0;pwned\u0007\u001b[2J\nCLEAR\u202e" + "x".repeat(2_000);
    const server = https.createServer(serverOptions(own, anchor), (_req, res) => {
      res.writeHead(403, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "ERR_FORBIDDEN", message: evil } }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as { port: number }).port;
      const client = new CaClient(`https://127.0.0.1:${port}`, anchor);
      await assert.rejects(client.lookup("bob"), (e) => {
        assert.ok(e instanceof E2eError);
        assert.equal(e.code, "ERR_FORBIDDEN");
        assert.equal(
          e.message,
          `The CA refused: gone\\x1b]0;pwned\\x07\\x1b[2J\\nCLEAR${"x".repeat(475)}`,
        );
        return true;
      });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

Deno.test("CaClient turns a 429 with retry-after into a hint that says when to retry", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const own = await ca.issueServiceCertificate(["127.0.0.1"]);
    const anchor = trustAnchor(ca.certificate.pem);
    const server = https.createServer(serverOptions(own, anchor), (_req, res) => {
      res.writeHead(429, { "content-type": "application/json", "retry-after": "42" });
      res.end(JSON.stringify({
        error: {
          code: "ERR_RATE_LIMITED",
          message: "Too many enrollment attempts from this address",
        },
      }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as { port: number }).port;
      const client = new CaClient(`https://127.0.0.1:${port}`, anchor);
      await assert.rejects(client.enroll("t".repeat(43), "csr"), (e) => {
        assert.ok(e instanceof E2eError);
        assert.equal(e.code, "ERR_RATE_LIMITED");
        assert.equal(e.message, "The CA refused: Too many enrollment attempts from this address");
        assert.equal(e.hint, "the CA takes only so many of these a minute: retry in 42 s");
        return true;
      });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

Deno.test("CaClient.mailboxList() refuses a list whose records are not records (null, no id, no sender) with ERR_NETWORK naming the CA's answer, not a TypeError later", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const own = await ca.issueServiceCertificate(["127.0.0.1"]);
    const anchor = trustAnchor(ca.certificate.pem);
    const good = {
      id: "0123456789abcdef0123456789abcdef",
      from: "alice",
      to: "bob",
      size: 1,
      postedAt: "2026-12-02T00:00:00.000Z",
      expiresAt: "2026-12-09T00:00:00.000Z",
    };
    let items: unknown[] = [];
    const server = https.createServer(serverOptions(own, anchor), (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ items }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as { port: number }).port;
      const client = new CaClient(`https://127.0.0.1:${port}`, anchor);
      items = [good];
      assert.deepEqual(await client.mailboxList(), [good]);
      for (
        const [list, why] of [
          [[null], "record 1 is not one: null"],
          [[good, 7], "record 2 is not one: number"],
          [
            [good, good, { ...good, id: "../crl" }],
            "record 3 is not one: its id is not 32 hex digits",
          ],
          [[{ ...good, from: "\u001b[2J" }], "record 1 is not one: its sender is not a user name"],
        ] as const
      ) {
        items = [...list];
        await assert.rejects(client.mailboxList(), (e) => {
          assert.ok(e instanceof E2eError);
          assert.equal(e.code, "ERR_NETWORK");
          assert.equal(e.message, `The CA sent a mailbox list whose ${why}`);
          return true;
        });
      }
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
