import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { parseCrl } from "../lib/crl.ts";
import { E2eError } from "../lib/errors.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { crlSignedAt } from "../tests/_impostor.ts";
import { CRL_CLOCK_SKEW_MS, Revocation, SERVICE_CRL_WINDOW_MS } from "./revocation.ts";

async function withCa(fn: (ca: CertificateAuthority) => Promise<void>): Promise<void> {
  await withTempDir(async (home) => {
    await fn(await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" }));
  });
}

function issuer(ca: CertificateAuthority): X509Certificate {
  return new X509Certificate(ca.certificate.pem);
}

function failsClosed(e: unknown): boolean {
  assert.ok(e instanceof E2eError);
  assert.equal(e.code, "ERR_PEER_REJECTED");
  assert.match(e.message, /no current CRL/);
  return true;
}

Deno.test("Revocation fails closed until a CRL has been fetched", () => {
  const revocation = new Revocation({ fetch: () => Promise.resolve(""), issuer: undefined! });
  assert.throws(() => revocation.requireCurrent(), failsClosed);
});

Deno.test("Revocation knows the revoked serials of a real CRL, in any spelling, and calls onUpdate", async () => {
  await withCa(async (ca) => {
    const revokedSerial = (await ca.sign((await makeCsr("bob")).csr, "bob")).certificate.serial;
    const keptSerial = (await ca.sign((await makeCsr("carol")).csr, "carol")).certificate.serial;
    await ca.revoke("bob");
    let updates = 0;
    const revocation = new Revocation({
      fetch: () => ca.crl(),
      issuer: issuer(ca),
      onUpdate: () => updates++,
    });
    await revocation.refresh();
    revocation.requireCurrent();
    assert.equal(updates, 1);
    assert.equal(revocation.isRevoked(revokedSerial), true);
    assert.equal(revocation.isRevoked(revokedSerial.toLowerCase()), true);
    assert.equal(revocation.isRevoked(`00${revokedSerial}`), true);
    assert.equal(revocation.isRevoked(keptSerial), false);
    // Past the CRL's nextUpdate it is no longer current.
    assert.throws(() => revocation.requireCurrent(Date.now() + 400 * 86_400_000), failsClosed);
  });
});

Deno.test("Revocation refuses a CRL signed by another CA, warns, and stays closed", async () => {
  await withCa(async (ours) => {
    await withCa(async (theirs) => {
      const warnings: string[] = [];
      const revocation = new Revocation({
        fetch: () => theirs.crl(),
        issuer: issuer(ours),
        onWarning: (m) => warnings.push(m),
      });
      await revocation.refresh();
      assert.match(warnings.join("\n"), /Cannot refresh the CRL/);
      assert.throws(() => revocation.requireCurrent(), failsClosed);
    });
  });
});

Deno.test("Revocation fetches once for concurrent refreshes and not again soon after a failure", async () => {
  let fetches = 0;
  const warnings: string[] = [];
  const revocation = new Revocation({
    fetch: async () => {
      fetches++;
      await new Promise((r) => setTimeout(r, 20));
      throw new Error("CA unreachable");
    },
    issuer: undefined!,
    onWarning: (m) => warnings.push(m),
  });
  await Promise.all([revocation.refresh(), revocation.refresh(), revocation.refresh()]);
  assert.equal(fetches, 1);
  await revocation.refresh();
  await assert.rejects(revocation.ensureFresh(), failsClosed);
  assert.equal(fetches, 1);
  assert.deepEqual(warnings, ["Cannot refresh the CRL: CA unreachable"]);
});

Deno.test("Revocation keeps its CRL when it is fetched an older one (a replay) and warns", async () => {
  await withCa(async (ca) => {
    await ca.sign((await makeCsr("bob")).csr, "bob");
    const before = await ca.crl(); // bob not revoked yet
    const bobSerial = (await ca.list())[0].serial;
    await ca.revoke("bob", { reason: "keyCompromise" });
    const served = [await ca.crl(), before];
    const warnings: string[] = [];
    let updates = 0;
    const revocation = new Revocation({
      fetch: () => Promise.resolve(served.shift()!),
      issuer: issuer(ca),
      onUpdate: () => updates++,
      onWarning: (m) => warnings.push(m),
    });
    await revocation.refresh();
    assert.equal(revocation.isRevoked(bobSerial), true);
    await revocation.refresh(); // the older CRL: signed by our CA, but superseded
    assert.equal(revocation.isRevoked(bobSerial), true, "a replayed CRL does not un-revoke bob");
    assert.deepEqual(warnings, [
      `Cannot refresh the CRL: CRL number ${
        parseCrl(before, issuer(ca)).number
      } is older than the one held`,
    ]);
    assert.equal(updates, 1);
    revocation.requireCurrent();
  });
});

Deno.test("Revocation refuses, in a later run of the home, a CRL older than the newest an earlier run accepted (numberFile), and keeps the newest there", async () => {
  await withCa(async (ca) => {
    await ca.sign((await makeCsr("bob")).csr, "bob");
    const before = await ca.crl(); // bob not revoked yet
    const bobSerial = (await ca.list())[0].serial;
    await ca.revoke("bob", { reason: "keyCompromise" });
    const current = await ca.crl();
    const numberFile = join(ca.paths.dir, "..", "crl-number");
    const run = (pem: string, warnings: string[] = []) =>
      new Revocation({
        fetch: () => Promise.resolve(pem),
        issuer: issuer(ca),
        numberFile,
        onWarning: (m) => warnings.push(m),
      });

    const first = run(current);
    await first.refresh();
    assert.equal(first.isRevoked(bobSerial), true);
    const newest = parseCrl(current, issuer(ca)).number!;
    assert.equal(await Deno.readTextFile(numberFile), `${newest}\n`);

    // The client starts again, and the CRL from before bob's revocation is replayed to it.
    const warnings: string[] = [];
    const second = run(before, warnings);
    await second.refresh();
    assert.deepEqual(warnings, [
      `Cannot refresh the CRL: CRL number ${
        parseCrl(before, issuer(ca)).number
      } is older than the one held`,
    ]);
    assert.equal(second.isRevoked(bobSerial), false, "nothing was taken from the old CRL");
    assert.throws(() => second.requireCurrent(), failsClosed);

    // The same CRL again, and a newer one, are taken; the newer one's number is kept.
    const third = run(current);
    await third.refresh();
    third.requireCurrent();
    const next = await ca.crl();
    const newer = run(next);
    await newer.refresh();
    newer.requireCurrent();
    assert.equal(await Deno.readTextFile(numberFile), `${parseCrl(next, issuer(ca)).number}\n`);
  });
});

Deno.test("Revocation takes a newer CRL even when its number cannot be kept, and warns", async () => {
  await withCa(async (ca) => {
    const warnings: string[] = [];
    const numberFile = join(ca.paths.dir, "no such folder", "crl-number");
    const revocation = new Revocation({
      fetch: () => ca.crl(),
      issuer: issuer(ca),
      numberFile,
      onWarning: (m) => warnings.push(m),
    });
    await revocation.refresh();
    revocation.requireCurrent();
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /^Cannot keep the CRL number in ".*crl-number": /);
  });
});

Deno.test("Revocation clears the CA service only on a CRL signed within SERVICE_CRL_WINDOW_MS: an older one, still current for peers, is refused for the service and fetched again, at most every 5 s", async () => {
  await withCa(async (ca) => {
    // The last CRL from before a revocation, replayed days later by whoever kept the revoked
    // service key: signed by the CA, current until its nextUpdate, and listing nothing since.
    const signedAt = new Date(Date.now() - SERVICE_CRL_WINDOW_MS - 60_000);
    const served = [await crlSignedAt(ca.paths, signedAt)];
    let fetches = 0;
    const revocation = new Revocation({
      fetch: () => Promise.resolve(served[fetches++] ?? ca.crl()),
      issuer: issuer(ca),
    });
    const stale = (e: unknown) => {
      assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
      assert.equal(e.code, "ERR_PEER_REJECTED");
      assert.equal(
        e.message,
        "Cannot check the CA service's certificate: the newest CRL it sent was signed at " +
          `${new Date(Math.floor(signedAt.getTime() / 1000) * 1000).toISOString()}, over 3 h ago`,
      );
      assert.match(e.hint ?? "", /signs a new CRL every 60 minutes/);
      assert.match(
        e.hint ?? "",
        /^if this machine's clock \(now \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\) is right, /,
      );
      return true;
    };
    await assert.rejects(revocation.ensureRecent(), stale);
    assert.equal(fetches, 1);
    revocation.requireCurrent(); // peers are still checked against it
    await assert.rejects(revocation.ensureRecent(), stale);
    assert.equal(fetches, 1, "fetched again within 5 s");
    await new Promise((r) => setTimeout(r, 5_000));
    await revocation.ensureRecent(); // the honest service's newest CRL
    assert.equal(fetches, 2);
    // A recent CRL grows old too: past the window it clears the service no more.
    assert.throws(() => revocation.requireRecent(Date.now() + SERVICE_CRL_WINDOW_MS + 60_000));
  });
});

Deno.test("Revocation refuses, for the CA service, a CRL signed over CRL_CLOCK_SKEW_MS (10 min) ahead of this machine's clock, and says to check the clock; peers are still checked against it", async () => {
  await withCa(async (ca) => {
    // This machine's clock 2 h behind: a CRL replayed 5 h after it was signed would look 3 h old,
    // and the honest service's newest one looks signed in the future.
    const ahead = await crlSignedAt(ca.paths, new Date(Date.now() + CRL_CLOCK_SKEW_MS + 60_000));
    const revocation = new Revocation({ fetch: () => Promise.resolve(ahead), issuer: issuer(ca) });
    await assert.rejects(revocation.ensureRecent(), (e) => {
      assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
      assert.equal(e.code, "ERR_PEER_REJECTED");
      assert.match(
        e.message,
        /^Cannot check the CA service's certificate: the newest CRL it sent was signed at \S+Z, 11 min ahead of this machine's clock \(now \S+Z\)$/,
      );
      assert.match(e.hint ?? "", /^check this machine's clock/);
      return true;
    });
    revocation.requireCurrent();
    // Within the skew it clears the service.
    const near = await crlSignedAt(ca.paths, new Date(Date.now() + CRL_CLOCK_SKEW_MS - 60_000));
    const within = new Revocation({ fetch: () => Promise.resolve(near), issuer: issuer(ca) });
    await within.ensureRecent();
  });
});
