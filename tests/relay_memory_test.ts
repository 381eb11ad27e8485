/**
 * What the CA service's relay holds in memory for receivers that read nothing,
 * with real TLS on 127.0.0.1 and real members (ca/relay.ts "Memory"): pausing a
 * Deno TLS socket does not stop it reading, so these check the service's bound
 * over the TLS sockets it really uses.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { CaService } from "../ca/service.ts";
import { flood, makeCsr, PASSPHRASE, runCa } from "./_helpers.ts";
import { waitUntil, withTempDir } from "./_harness.ts";
import { httpsRequest } from "./_service_helpers.ts";

const MiB = 1024 * 1024;
/** The most one read of a socket gives in Deno 2.9.6 (what a side may add past the bound). */
const READ_BYTES = 64 * 1024;

interface Member {
  name: string;
  key: string;
  cert: string;
}

Deno.test("members whose relayed peers read nothing cannot make the service's relay hold more than --relay-buffer-mib (plus a read a side): it stops reading the senders over TLS, and closes the pairs as not reading", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const logs: string[] = [];
    const maxBufferedBytes = 4 * MiB;
    const service = await CaService.start(ca, {
      port: 0,
      log: (l) => logs.push(l),
      relay: { maxBufferedBytes, stuckMs: 2_000 },
    });
    const anchor = ca.certificate.pem;
    const member = async (name: string): Promise<Member> => {
      const { csr, key } = await makeCsr(name);
      return { name, key, cert: (await ca.sign(csr, name)).certificate.pem };
    };
    const PAIRS = 8;
    const senders: tls.TLSSocket[] = [];
    const receivers: Deno.TlsConn[] = [];
    try {
      for (let i = 0; i < PAIRS; i++) {
        const [alice, bob] = await Promise.all([member(`alice${i}`), member(`bob${i}`)]);
        const offer = await httpsRequest(`${service.url}/v1/rendezvous`, {
          method: "POST",
          json: { to: bob.name },
          ca: anchor,
          cert: alice.cert,
          key: alice.key,
        });
        assert.equal(offer.status, 200, offer.body);
        const id = (offer.json() as { id: number }).id;
        const upgrade = `GET /v1/relay?invitation=${id} HTTP/1.1\r\nHost: ca\r\n` +
          `Connection: Upgrade\r\nUpgrade: e2e-chat-relay/1\r\n\r\n`;
        const sender = tls.connect({
          host: "127.0.0.1",
          port: service.port,
          ca: anchor,
          cert: alice.cert,
          key: alice.key,
          rejectUnauthorized: false,
        });
        sender.on("error", () => {});
        senders.push(sender);
        await new Promise((resolve) => sender.once("secureConnect", resolve));
        sender.write(upgrade);
        const waiting = new RegExp(` 101 ${alice.name} .*\\(waiting\\)$`);
        await waitUntil(() => logs.some((l) => waiting.test(l)), `${alice.name} waits`);
        // Deno's own TLS connection, which reads only when asked (node:tls reads on while paused).
        const receiver = await Deno.connectTls({
          hostname: "127.0.0.1",
          port: service.port,
          caCerts: [anchor],
          cert: bob.cert,
          key: bob.key,
        });
        receivers.push(receiver);
        await receiver.write(new TextEncoder().encode(upgrade));
        const spliced = new RegExp(` 101 ${bob.name} .*\\(spliced\\)$`);
        await waitUntil(() => logs.some((l) => spliced.test(l)), `${bob.name} spliced`);
      }
      const total = 64 * MiB;
      const taken = await Promise.all(senders.map((s) => flood(s, total)));
      const bound = maxBufferedBytes + 2 * PAIRS * READ_BYTES;
      const { peak, held } = service.relayBuffered;
      assert.ok(peak <= bound, `the relay held ${peak} bytes at once, bound ${bound}`);
      assert.ok(peak >= maxBufferedBytes, `the pairs filled the buffer (${peak} bytes)`);
      // Reading stopped: TCP held the senders, nothing piled up in the service uncounted.
      for (const n of taken) assert.ok(n < total / 2, `a sender got ${n} bytes taken`);
      for (let i = 0; i < PAIRS; i++) {
        const closed = new RegExp(
          `^e2e-chat-ca: relay closed alice${i}<->bob${i} .*\\(bob${i} does not read\\)$`,
        );
        await waitUntil(() => logs.some((l) => closed.test(l)), `pair ${i} closed`);
      }
      assert.equal(service.relayBuffered.held, 0, `held ${held} before the pairs closed`);
    } finally {
      for (const s of senders) s.destroy();
      for (const r of receivers) {
        try {
          r.close();
        } catch { /* closed already */ }
      }
      await service.close();
    }
  });
});

Deno.test("ca serve refuses a --relay-buffer-mib that is not a whole number above 0, or too large, before it opens the CA", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "no-ca-yet");
    const cases: Array<[string, string]> = [
      ["0", "--relay-buffer-mib takes a whole number above 0"],
      ["x", '--relay-buffer-mib takes a whole number, not "x"'],
      ["8589934592", "--relay-buffer-mib takes at most 8589934591"],
    ];
    for (const [value, message] of cases) {
      const result = await runCa(home, ["serve", "--port", "0", "--relay-buffer-mib", value]);
      assert.equal(result.code, 2, result.stderr);
      assert.ok(result.stderr.includes(`e2e-chat: error: ${message}`), result.stderr);
    }
    assert.equal(await Deno.stat(home).then(() => true, () => false), false, "no CA was made");
  });
});
