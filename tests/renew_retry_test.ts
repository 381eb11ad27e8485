/**
 * A renewal cut off after the CA committed (docs/API.md "POST /v1/renew"):
 * the real service and client, with a TCP relay that drops the CA's reply once
 * its index holds the new certificate; and a renewal whose log check fails
 * after the reply arrived, which must neither lose the new certificate nor use
 * it before the check passes.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CaPaths } from "../ca/home.ts";
import { CaClient } from "../client/ca_client.ts";
import { ClientHome } from "../client/home.ts";
import { Identity } from "../client/identity.ts";
import { LogMonitor } from "../client/transparency.ts";
import { parseCertificate } from "../lib/x509.ts";
import {
  assertSuccess,
  makeInvite,
  runClient,
  serialsOf,
  withService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";

Deno.test("a renewal whose reply is lost after the CA committed is asked again with the old certificate and gets the same new one; nothing more is signed", async () => {
  await withService(async (service, dir) => {
    // Once armed, the relay drops the CA's reply as soon as the index holds alice's second
    // certificate: right after the renewal's commit.
    let armed = false;
    const index = new CaPaths(service.home).index;
    const renewed = () => Deno.readTextFileSync(index).match(/\t\/CN=alice$/gm)?.length === 2;
    const cutter = await TcpRelay.start(service.port, { after: () => armed && renewed() });
    try {
      const home = join(dir, "alice");
      const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${cutter.port}`);
      assertSuccess(await runClient(home, ["join", invite]), "join alice");
      const certPath = join(home, "id", "cert.pem");
      const first = parseCertificate(await Deno.readTextFile(certPath));

      armed = true;
      cutter.mode = "drop";
      const lost = await runClient(home, ["renew"]);
      assert.notEqual(lost.code, 0, "the renewal whose reply was cut succeeded");
      assert.equal(cutter.withheld, 1);
      const serials = await serialsOf(service, "alice");
      assert.equal(serials.length, 2, "the CA committed before the reply was cut");
      assert.equal(parseCertificate(await Deno.readTextFile(certPath)).serial, first.serial);

      // Before: 403 "The client certificate is revoked or superseded", until a new invite.
      cutter.mode = "pass";
      const again = await runClient(home, ["renew"]);
      assertSuccess(again, "renew again");
      const now = parseCertificate(await Deno.readTextFile(certPath));
      assert.equal(now.serial, serials[1], "the certificate the lost reply carried");
      assert.equal(now.keyFingerprint, first.keyFingerprint);
      assert.deepEqual(await serialsOf(service, "alice"), serials, "nothing more signed");
    } finally {
      await cutter.close();
    }
  });
});

Deno.test("a renewal whose log check fails keeps the new certificate aside, durably, and not in cert.pem; the next renewal finishes it without asking the CA for another", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    assertSuccess(
      await runClient(home, ["join", await makeInvite(service.home, "alice")]),
      "join alice",
    );
    const id = await Identity.load(home);
    const first = id.certificate;
    // The renewal gets through; the log check that follows cannot reach the CA.
    const ca = id.client();
    const unreachable = new CaClient("https://127.0.0.1:1", id.anchor, id.credentials);
    const log = await LogMonitor.open(new ClientHome(home).logState, id.anchor, unreachable);
    await assert.rejects(() => id.renew({ ca, log }));
    const serials = await serialsOf(service, "alice");
    assert.equal(serials.length, 2, "the CA issued the renewal");
    // Not used before its check: cert.pem is still the old certificate, and so is what loads.
    assert.equal((await Identity.load(home)).certificate.serial, first.serial);
    const kept = JSON.parse(await Deno.readTextFile(join(home, "id", "renewal.json")));
    assert.equal(parseCertificate(kept.certificate).serial, serials[1]);

    const renewed = await (await Identity.load(home)).renew();
    assert.equal(renewed.certificate.serial, serials[1], "the certificate kept aside");
    assert.equal((await Identity.load(home)).certificate.serial, serials[1]);
    assert.deepEqual(await serialsOf(service, "alice"), serials, "nothing more signed");
    await assert.rejects(() => Deno.stat(join(home, "id", "renewal.json")), Deno.errors.NotFound);
  });
});

Deno.test("a chat started after a renewal whose log check failed finishes that renewal first, instead of stopping on its superseded certificate", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    assertSuccess(
      await runClient(home, ["join", await makeInvite(service.home, "alice")]),
      "join alice",
    );
    const id = await Identity.load(home);
    const unreachable = new CaClient("https://127.0.0.1:1", id.anchor, id.credentials);
    const log = await LogMonitor.open(new ClientHome(home).logState, id.anchor, unreachable);
    await assert.rejects(() => id.renew({ ca: id.client(), log }));
    const serials = await serialsOf(service, "alice");
    // Most of its life left: only the kept reply makes the start renew (stdin closed: it quits).
    const chat = await runClient(home, ["chat", "--json"]);
    assertSuccess(chat, "chat after the failed check");
    assert.match(chat.stdout, /Renewed your certificate/);
    assert.equal((await Identity.load(home)).certificate.serial, serials[1]);
    await assert.rejects(() => Deno.stat(join(home, "id", "renewal.json")), Deno.errors.NotFound);
  });
});
