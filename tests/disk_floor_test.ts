/**
 * The free-space floor of the CA's disk (ca/disk_floor.ts), on the real
 * service started as the `ca` task (its `--allow-sys=statfs` included) and the
 * real disk: a floor above what the disk has free stands for a full disk.
 *
 * @module
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { parseCrl } from "../lib/crl.ts";
import { freeBytes } from "../lib/fs.ts";
import { makeCsr, runCa, snapshot, withTempDir } from "./_helpers.ts";
import {
  assertApiError,
  assertSuccess,
  enrollUser,
  initCa,
  inviteToken,
  makeInvite,
  type Service,
  startService,
} from "./_service_helpers.ts";

const MiB = 1024 * 1024;

// POST /v1/mailbox/TO as `from`, an opaque item of 1,000 bytes.
function postItem(service: Service, from: { cert: string; key: string }, to: string) {
  return service.request(`/v1/mailbox/${to}`, {
    method: "POST",
    headers: { "content-type": "application/cms" },
    body: new Uint8Array(1_000).fill(7),
    cert: from.cert,
    key: from.key,
  });
}

// POST /v1/renew for the same key, as `user`.
async function renew(service: Service, user: { name: string; cert: string; key: string }) {
  const { csr } = await makeCsr(user.name, { keyPem: user.key });
  return await service.request("/v1/renew", {
    method: "POST",
    json: { csr },
    cert: user.cert,
    key: user.key,
  });
}

Deno.test("below its disk's free-space floor the CA service refuses enrollments, renewals and mailbox posts with 507 ERR_QUOTA and writes nothing, while revocation, the CRL and reads go on; with the default floor they work", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    let service = await startService(home);
    const [alice, bob] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
    ]).finally(() => service.stop());
    const [invite, carol] = await Promise.all([makeInvite(home, "carol"), makeCsr("carol")]);
    const enrollCarol = () =>
      service.request("/v1/enroll", {
        method: "POST",
        json: { token: inviteToken(invite), csr: carol.csr },
      });

    // A floor a TiB above what the disk has free.
    const floorMib = Math.ceil(freeBytes(home) / MiB) + 1024 * 1024;
    service = await startService(home, { args: ["--free-floor-mib", String(floorMib)] });
    try {
      const full = `The CA's disk is full: it keeps ${
        floorMib * MiB
      } bytes free for revocations and the CRL`;
      const before = await snapshot(service.caDir);
      assertApiError(await enrollCarol(), 507, "ERR_QUOTA", full);
      assertApiError(await renew(service, alice), 507, "ERR_QUOTA", full);
      assertApiError(await postItem(service, alice, "bob"), 507, "ERR_QUOTA", full);
      assert.deepEqual(await snapshot(service.caDir), before, "the refusals wrote nothing");
      await service.waitForLog(
        new RegExp(
          `e2e-chat-ca: disk floor reached: the disk of \\S+ keeps ${floorMib * MiB} bytes free ` +
            `\\(--free-floor-mib\\), \\d+ bytes free, 0 of them being written, and 65536 more ` +
            `asked; refused 1 member write since the last report`,
        ),
      );
      await service.waitForLog(/ POST \/v1\/mailbox\/bob 507 ERR_QUOTA - /);

      // Reads go on, and so does the admin: a revocation, and the CRL that lists it.
      const lookup = await service.request("/v1/certs/bob", { cert: alice.cert, key: alice.key });
      assert.equal(lookup.status, 200, lookup.body);
      assert.equal(lookup.body, bob.cert);
      assertSuccess(
        await runCa(home, ["revoke", "alice", "--reason", "keyCompromise"]),
        "ca revoke alice",
      );
      const crl = await service.request("/v1/crl");
      assert.equal(crl.status, 200, crl.body);
      const revoked = parseCrl(crl.body, new X509Certificate(service.caPem)).revoked;
      assert.ok(revoked.has(alice.reply.serial.replace(/^0+/, "")), [...revoked].join(" "));
      const gone = await service.request("/v1/certs/bob", { cert: alice.cert, key: alice.key });
      assertApiError(gone, 403, "ERR_FORBIDDEN", "The client certificate is revoked or superseded");
    } finally {
      await service.stop();
    }

    // The default floor (64 MiB): the same requests are served.
    service = await startService(home);
    try {
      const enrolled = await enrollCarol();
      assert.equal(enrolled.status, 200, enrolled.body);
      const renewed = await renew(service, bob);
      assert.equal(renewed.status, 200, renewed.body);
      const bobNow = {
        cert: (renewed.json() as { certificate: string }).certificate,
        key: bob.key,
      };
      const posted = await postItem(service, bobNow, "carol");
      assert.equal(posted.status, 200, posted.body);
    } finally {
      await service.stop();
    }
  });
});

Deno.test("ca serve refuses a --free-floor-mib or --unread-mib that is not a whole number, and an --unread-mib of 0, before it opens the CA", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "no-ca-yet");
    const cases: Array<[string[], string]> = [
      [["--free-floor-mib", "lots"], '--free-floor-mib takes a whole number, not "lots"'],
      [["--unread-mib", "1.5"], '--unread-mib takes a whole number, not "1.5"'],
      [["--unread-mib", "0"], "--unread-mib takes a whole number above 0"],
    ];
    for (const [flags, message] of cases) {
      const result = await runCa(home, ["serve", "--port", "0", ...flags]);
      assert.equal(result.code, 2, result.stderr);
      assert.ok(result.stderr.includes(`e2e-chat: error: ${message}`), result.stderr);
    }
    assert.equal(await Deno.stat(home).then(() => true, () => false), false, "no CA was made");
  });
});
