import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import {
  checkService,
  clientOptions,
  connectTls,
  peerCertificateDer,
  trustAnchor,
} from "../lib/tls.ts";
import { type CertificateInfo, normalizeSerialHex } from "../lib/x509.ts";
import { parseCrl } from "../lib/crl.ts";
import { PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { CertificateAuthority } from "./authority.ts";
import { CaService, claimServiceHome, type ServeOptions, serviceStatus } from "./service.ts";

// The service in process, with real TLS on 127.0.0.1 and a port the kernel picks.
// tests/ca_service_test.ts covers the `serve` process (signals, restarts, names, the API over TLS).

async function withService(
  fn: (service: CaService, ca: CertificateAuthority, logs: string[]) => Promise<void>,
  options: ServeOptions = {},
): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const logs: string[] = [];
    const service = await CaService.start(ca, { port: 0, log: (l) => logs.push(l), ...options });
    try {
      await fn(service, ca, logs);
    } finally {
      await service.close();
    }
  });
}

/** The certificate the service presents to a client pinned to the CA, checked as clients check it. */
async function presented(service: CaService, ca: CertificateAuthority): Promise<CertificateInfo> {
  const anchor = trustAnchor(ca.certificate.pem);
  const socket = await connectTls(
    { ...clientOptions(anchor), host: "127.0.0.1", port: service.port },
    10_000,
  );
  try {
    return checkService(peerCertificateDer(socket), anchor);
  } finally {
    socket.destroy();
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("CaService.start() writes service.json with its URL, host, port, the CA fingerprint and its pid; close() removes it", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const service = await CaService.start(ca, { port: 0, log: () => {} });
    try {
      assert.ok(service.port > 0);
      assert.equal(service.url, `https://127.0.0.1:${service.port}`);
      const info = JSON.parse(await Deno.readTextFile(ca.paths.serviceInfo));
      assert.deepEqual(info, {
        url: service.url,
        host: "127.0.0.1",
        port: service.port,
        fingerprint: ca.certificate.fingerprint,
        pid: Deno.pid,
      });
    } finally {
      await service.close();
    }
    assert.equal(await exists(ca.paths.serviceInfo), false, "service.json outlived the service");
    // Closing twice is harmless, and leaves no file behind.
    await service.close().catch((e) => assert.fail(`a second close() threw ${e}`));
    assert.equal(await exists(ca.paths.serviceInfo), false);
  });
});

Deno.test("CaService.start() with names gives members the first one: in service.json (for invites) and in the CRL URL", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const service = await CaService.start(ca, {
      port: 0,
      crlPort: 0,
      names: ["ca.example.org", "10.0.0.7"],
      log: () => {},
    });
    try {
      assert.equal(service.url, `https://127.0.0.1:${service.port}`, "where it listens");
      const info = JSON.parse(await Deno.readTextFile(ca.paths.serviceInfo));
      assert.equal(info.host, "ca.example.org");
      assert.match(service.crlUrl, /^http:\/\/ca\.example\.org:\d+\/crl\.der$/);
    } finally {
      await service.close();
    }
  });
});

Deno.test("CaService.start() presents a service certificate issued by the CA, kept in HOME/ca/service/ with a 0600 key", async () => {
  await withService(async (service, ca) => {
    const cert = await presented(service, ca);
    assert.equal(cert.pem, await Deno.readTextFile(ca.paths.serviceCert));
    assert.equal((await Deno.stat(ca.paths.serviceKey)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(ca.paths.serviceDir)).mode! & 0o777, 0o700);
    assert.ok(await ca.isCurrent(cert.serial));
    const san = cert.x509.subjectAltName ?? "";
    assert.match(san, /DNS:localhost/);
    assert.match(san, /IP Address:127\.0\.0\.1/);
  });
});

Deno.test("the service renews a revoked service certificate in place: same port, new certificate for new connections, a log line", async () => {
  await withService(async (service, ca, logs) => {
    const first = await presented(service, ca);
    await ca.revoke(first.serial, { reason: "superseded" });
    const deadline = Date.now() + 20_000;
    let next = first;
    while (next.serial === first.serial) {
      assert.ok(Date.now() < deadline, "the service certificate was not renewed within 20 s");
      await new Promise((resolve) => setTimeout(resolve, 100));
      next = await presented(service, ca);
    }
    assert.ok(await ca.isCurrent(next.serial));
    assert.equal(next.pem, await Deno.readTextFile(ca.paths.serviceCert));
    assert.ok(logs.includes("e2e-chat-ca: renewed the service certificate"), logs.join("\n"));
    // service.json still names the same running service.
    const info = JSON.parse(await Deno.readTextFile(ca.paths.serviceInfo));
    assert.equal(info.port, service.port);
  }, { renewCheckMs: 200 });
});

Deno.test("the service replaces a service certificate revoked with ca revoke within seconds, not at its hourly check: clients holding the CRL refuse a revoked one", async () => {
  await withService(async (service, ca) => {
    const first = await presented(service, ca);
    await ca.revoke(first.serial, { reason: "keyCompromise" });
    const deadline = Date.now() + 15_000;
    let next = first;
    while (next.serial === first.serial) {
      assert.ok(Date.now() < deadline, "the revoked service certificate was still presented");
      await new Promise((resolve) => setTimeout(resolve, 200));
      next = await presented(service, ca);
    }
    assert.ok(await ca.isCurrent(next.serial));
  });
});

Deno.test("a service whose revoked certificate cannot be replaced (its key file broken) tries again after longer and longer waits, not every 5 s", async () => {
  await withService(async (service, ca, logs) => {
    const first = await presented(service, ca);
    // Each try now fails (as on a full disk): the key file is a folder.
    await Deno.remove(ca.paths.serviceKey);
    await Deno.mkdir(ca.paths.serviceKey);
    await ca.revoke(first.serial, { reason: "keyCompromise" });
    await new Promise((resolve) => setTimeout(resolve, 13_000));
    const tries = logs.filter((l) => l.includes("cannot renew the service certificate"));
    // Tries at about 5 s, then 15 s: one within 13 s (it was one every 5 s: 2).
    assert.equal(tries.length, 1, tries.join("\n"));
  });
});

Deno.test("CaService.start() replaces a service key that is not its certificate's (instead of failing every start)", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const first = await CaService.start(ca, { port: 0, crlPort: 0, log: () => {} });
    const old = await presented(first, ca);
    await first.close();
    // Another key in the certificate's place (an edit, a restore from two backups).
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await Deno.writeTextFile(
      ca.paths.serviceKey,
      privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    );
    // The same CRL port, so that only the key can make it reissue the certificate.
    const crlPort = Number(new URL(first.crlUrl).port);
    const service = await CaService.start(ca, { port: 0, crlPort, log: () => {} });
    try {
      const now = await presented(service, ca);
      assert.notEqual(now.serial, old.serial, "a new service certificate");
      assert.ok(await ca.isCurrent(now.serial));
    } finally {
      await service.close();
    }
  });
});

Deno.test("a service renewing its own certificate presents the new one before a CRL supersedes the old: a client that fetched the CRL at any point meanwhile is not refused", async () => {
  await withService(async (service, ca, logs) => {
    const first = await presented(service, ca);
    const listed = () => parseCrl(Deno.readTextFileSync(ca.paths.crl), ca.certificate.x509).revoked;
    // What a client would meet right after the renewal's certificate is issued (its CRL on
    // disk, served from now on) and before the service swaps it in: the old one, still presented.
    const seen: Array<{ presented: string; listed: boolean }> = [];
    const issue = ca.issueServiceCertificate.bind(ca);
    ca.issueServiceCertificate = async (...args) => {
      const issued = await issue(...args);
      const now = await presented(service, ca);
      seen.push({
        presented: now.serial,
        listed: listed().has(normalizeSerialHex(now.serial)),
      });
      return issued;
    };
    // Another key in the certificate's place: the next check reissues it (not revoked first).
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await Deno.writeTextFile(
      ca.paths.serviceKey,
      privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    );
    const deadline = Date.now() + 20_000;
    let next = first;
    while (next.serial === first.serial || !listed().has(normalizeSerialHex(first.serial))) {
      assert.ok(Date.now() < deadline, `not renewed within 20 s:\n${logs.join("\n")}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      next = await presented(service, ca);
    }
    assert.deepEqual(seen, [{ presented: first.serial, listed: false }]);
    // Then superseded all the same, once the new one is presented; the new one is not listed.
    assert.ok(!listed().has(normalizeSerialHex(next.serial)));
    assert.ok(!(await ca.isCurrent(first.serial)));
    assert.ok(await ca.isCurrent(next.serial));
  }, { renewCheckMs: 200 });
});

Deno.test("CaService.start() supersedes the service certificates a renewal cut short left valid, and keeps the one it presents", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    // Two issued, as by a renewal stopped before it superseded the first.
    const old = (await ca.issueServiceCertificate(["localhost", "127.0.0.1"])).certificate;
    await ca.issueServiceCertificate(["localhost", "127.0.0.1"]);
    assert.ok(await ca.isCurrent(old.serial));
    const service = await CaService.start(ca, { port: 0, log: () => {} });
    try {
      const now = await presented(service, ca);
      assert.notEqual(now.serial, old.serial);
      assert.ok(await ca.isCurrent(now.serial));
      assert.ok(!(await ca.isCurrent(old.serial)));
      const crl = parseCrl(Deno.readTextFileSync(ca.paths.crl), ca.certificate.x509);
      assert.ok(crl.revoked.has(normalizeSerialHex(old.serial)));
      assert.ok(!crl.revoked.has(normalizeSerialHex(now.serial)));
    } finally {
      await service.close();
    }
  });
});

/** Makes the next `times` calls of `ca.retireServiceCertificates()` fail, as on a full disk. */
function failRetires(ca: CertificateAuthority, times: number): void {
  const retire = ca.retireServiceCertificates.bind(ca);
  ca.retireServiceCertificates = (serial) =>
    times-- > 0
      ? Promise.reject(new E2eError("ERR_FILE", "No space left on device (os error 28)"))
      : retire(serial);
}

Deno.test("a service whose renewal could not supersede the old service certificate tries again within seconds, not at its hourly check", async () => {
  await withService(async (service, ca, logs) => {
    const first = await presented(service, ca);
    // An old certificate still valid beside the presented one (its renewal's supersede to come);
    // the service's files keep the presented one.
    const files = [ca.paths.serviceKey, ca.paths.serviceCert];
    const kept = await Promise.all(files.map((f) => Deno.readTextFile(f)));
    const old = (await ca.issueServiceCertificate(["localhost", "127.0.0.1"])).certificate;
    for (const [i, f] of files.entries()) await Deno.writeTextFile(f, kept[i]);
    failRetires(ca, 1);
    // Revoked: the service renews within seconds, presents the new one, then fails to supersede.
    await ca.revoke(first.serial, { reason: "keyCompromise" });
    const deadline = Date.now() + 25_000;
    let now = first;
    while (now.serial === first.serial) {
      assert.ok(Date.now() < deadline, `no renewal within 25 s:\n${logs.join("\n")}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      now = await presented(service, ca);
    }
    // Tried again after 10 s (the waits of a failed replacement), not in an hour.
    while (await ca.isCurrent(old.serial)) {
      assert.ok(Date.now() < deadline, `the old certificate still valid:\n${logs.join("\n")}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.equal(
      logs.filter((l) => l.includes("cannot supersede old service certificates")).length,
      1,
      logs.join("\n"),
    );
    assert.notEqual(now.serial, old.serial);
    assert.equal((await presented(service, ca)).serial, now.serial);
    assert.ok(await ca.isCurrent(now.serial));
    const crl = parseCrl(Deno.readTextFileSync(ca.paths.crl), ca.certificate.x509);
    assert.ok(crl.revoked.has(normalizeSerialHex(old.serial)));
  });
});

Deno.test("CaService.start() that cannot supersede the service certificates a renewal cut short left valid tries again within seconds", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const old = (await ca.issueServiceCertificate(["localhost", "127.0.0.1"])).certificate;
    failRetires(ca, 1);
    const logs: string[] = [];
    const service = await CaService.start(ca, { port: 0, log: (l) => logs.push(l) });
    try {
      assert.ok(await ca.isCurrent(old.serial), "the first try was to fail");
      const deadline = Date.now() + 15_000;
      while (await ca.isCurrent(old.serial)) {
        assert.ok(Date.now() < deadline, `the old certificate still valid:\n${logs.join("\n")}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.deepEqual(logs.filter((l) => l.includes("service certificate")), [
        "e2e-chat-ca: cannot supersede old service certificates: No space left on device (os error 28)",
      ]);
      assert.ok(await ca.isCurrent((await presented(service, ca)).serial));
    } finally {
      await service.close();
    }
  });
});

Deno.test("the service keeps a current certificate between checks and logs nothing about it", async () => {
  await withService(async (service, ca, logs) => {
    const first = await presented(service, ca);
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.equal((await presented(service, ca)).serial, first.serial);
    assert.ok(!logs.some((l) => l.includes("service certificate")), logs.join("\n"));
  }, { renewCheckMs: 200 });
});

Deno.test("CaService.start() on a port in use fails with ERR_NETWORK and a hint, and leaves the running service's service.json alone", async () => {
  await withService(async (service, ca) => {
    await withTempDir(async (home) => {
      // Another CA: on the same home the second start is refused before it listens (below).
      const other = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
      await assert.rejects(
        // crlPort 0: the default CRL port may be taken by a CA service running on this machine.
        () => CaService.start(other, { port: service.port, crlPort: 0, log: () => {} }),
        (e) => {
          assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
          assert.equal(e.code, "ERR_NETWORK");
          assert.equal(e.message, `Cannot listen on 127.0.0.1:${service.port}`);
          assert.equal(
            e.hint,
            "is another service using that port? stop it, or pick a free port with --port PORT " +
              "and keep it at every start (members' invites and certificates name it)",
          );
          return true;
        },
      );
      assert.ok(!await exists(other.paths.serviceInfo));
    });
    // The running service's service.json is still there and still its own.
    const info = JSON.parse(await Deno.readTextFile(ca.paths.serviceInfo));
    assert.equal(info.port, service.port);
  });
});

Deno.test("CaService.start() on a home whose service runs refuses with ERR_LOCK_TIMEOUT naming it, before it issues, supersedes or writes anything", async () => {
  await withService(async (service, ca) => {
    const own = await presented(service, ca);
    const files = async () => {
      const names = ["service.json", "crl.pem", "index.txt", "crl-url.txt"];
      return await Promise.all(names.map((n) => Deno.readTextFile(`${ca.paths.dir}/${n}`)));
    };
    const before = await files();
    const again = await CertificateAuthority.open(ca.paths.home, { passphrase: PASSPHRASE });
    await assert.rejects(
      () => CaService.start(again, { port: 0, crlPort: 0, busyWaitMs: 200, log: () => {} }),
      (e) => {
        assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
        assert.equal(e.code, "ERR_LOCK_TIMEOUT");
        assert.equal(
          e.message,
          `Another CA service runs on ${ca.paths.home}: pid ${Deno.pid}, ${service.url}`,
        );
        assert.equal(e.hint, `stop it first (kill -TERM ${Deno.pid}), or serve another --home`);
        return true;
      },
    );
    assert.deepEqual(await files(), before);
    assert.ok(await ca.isCurrent(own.serial), "the running service's certificate was superseded");
    assert.equal((await presented(service, ca)).serial, own.serial);
  });
  // close() lets go: the next start on that home needs no wait.
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    await (await CaService.start(ca, { port: 0, log: () => {} })).close();
    const next = await CaService.start(ca, { port: 0, busyWaitMs: 1_000, log: () => {} });
    await next.close();
  });
});

Deno.test("serviceStatus() tells a running service from the service.json a killed one left: running with its address, starting without one, gone with the last one", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    // What a service killed with SIGKILL leaves: its service.json, and its pid in the lock.
    const dead = { url: "https://127.0.0.1:4000", host: "127.0.0.1", port: 4000, pid: 99999999 };
    await Deno.writeTextFile(ca.paths.serviceInfo, JSON.stringify(dead) + "\n");
    await Deno.writeTextFile(ca.paths.serviceLock, "99999999\n");
    assert.deepEqual(await serviceStatus(ca.paths), {
      running: false,
      pid: 99999999,
      lastAddress: "127.0.0.1:4000",
    });
    // A service starting (its claim taken, its service.json not yet written) is running, nowhere yet.
    const claim = await claimServiceHome(ca.paths);
    assert.deepEqual(await serviceStatus(ca.paths), { running: true, pid: Deno.pid });
    const service = await CaService.start(ca, { port: 0, claim, log: () => {} });
    try {
      assert.deepEqual(await serviceStatus(ca.paths), {
        running: true,
        pid: Deno.pid,
        address: `127.0.0.1:${service.port}`,
        url: service.url,
      });
    } finally {
      await service.close();
    }
    // Stopped: its service.json is gone, and the lock is no longer held.
    assert.deepEqual(await serviceStatus(ca.paths), { running: false, pid: Deno.pid });
  });
});
