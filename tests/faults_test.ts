/**
 * Faults (docs/CA.md "Transactions"): a CA service killed with SIGKILL in the
 * middle of a burst of 16 parallel enrollments, at three different moments,
 * then restarted on the same home; and a CA whose disk fills up while it
 * signs (a 300 KiB tmpfs, when this machine lets us mount one).
 *
 * What must hold: every certificate a client received is committed (index
 * line V, certificate file) and no serial appears twice; a token is never used
 * up without its certificate; `ca crl` still builds a CRL that openssl
 * verifies; later enrollments work; a signing that runs out of disk says so in
 * one line and leaves the database consistent. A token never issues a second
 * certificate either, and invites survive an old home's invites.json and a
 * journal line torn by a crash.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { dirname, join } from "node:path";
import { InviteStore } from "../ca/invites.ts";
import { CaPaths, type IndexEntry } from "../ca/store.ts";
import { readIndexChecked } from "./_ca_files.ts";
import { openssl } from "../lib/openssl.ts";
import { runTask, sleep } from "./_harness.ts";
import { makeCsr, newKeyPem, PASSPHRASE, runCa } from "./_helpers.ts";
import { assertSuccess, type HttpsReply, initCa, Service } from "./_service_helpers.ts";
import { assertCliError, pool } from "./_hostile_helpers.ts";

/** The database is consistent: no serial twice, every V entry's certificate file exists and parses. */
async function assertConsistent(caDir: string): Promise<IndexEntry[]> {
  const index = await readIndexChecked(dirname(caDir), { cutShort: true, cn: /./ });
  const serials = index.map((e) => e.serial);
  assert.equal(new Set(serials).size, serials.length, `a serial appears twice: ${serials}`);
  for (const entry of index.filter((e) => e.status === "V")) {
    const path = join(caDir, "certs", `${entry.serial}.pem`);
    const pem = await Deno.readTextFile(path).catch(() => "");
    assert.ok(pem, `V entry ${entry.serial} (${entry.name}) has no certificate file`);
    const x509 = new X509Certificate(pem);
    assert.equal(x509.serialNumber.replace(/^0+/, ""), entry.serial.replace(/^0+/, ""));
    assert.equal(x509.subject, `CN=${entry.name}`);
  }
  return index;
}

/** `ca crl` builds a CRL, and openssl verifies it with the CA certificate. */
async function assertCrlBuilds(home: string): Promise<void> {
  const result = await runCa(home, ["crl"]);
  assertSuccess(result, "ca crl");
  await openssl(["crl", "-noout", "-CAfile", join(home, "ca", "ca.crt")], { stdin: result.stdout });
}

Deno.test("a CA service killed with SIGKILL in the middle of 16 parallel enrollments loses no issued certificate, and works after a restart", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-faults-" });
  let service: Service | undefined;
  try {
    const home = join(dir, "home");
    const caDir = join(home, "ca");
    await initCa(home);
    // Requests and invites made beforehand, so the burst is nothing but HTTPS enrollments.
    const delays = [60, 200, 400];
    const names = [...delays.keys(), "later"].flatMap((round) =>
      Array.from({ length: 16 }, (_, i) => `r${round}-u${i}`)
    );
    // A key of each name's own: the CA certifies a key for one name at a time.
    const csrs = new Map(
      await pool(
        names,
        8,
        async (n) => [n, (await makeCsr(n, { keyPem: newKeyPem() })).csr] as const,
      ),
    );
    const invites = new InviteStore(new CaPaths(home));
    const tokens = new Map<string, string>();
    for (const n of names) tokens.set(n, (await invites.create(n, 3_600_000)).token);
    const enroll = (s: Service, name: string) =>
      s.request("/v1/enroll", {
        method: "POST",
        json: { token: tokens.get(name), csr: csrs.get(name) },
        timeoutMs: 20_000,
      });

    const outcomes: string[] = [];
    let unanswered = 0;
    for (const [round, delay] of delays.entries()) {
      await t.step(`killed ${delay} ms into the burst`, async () => {
        service = await Service.start(home, PASSPHRASE, {
          args: ["--enroll-rate", "100000"],
        });
        const burst = names.filter((n) => n.startsWith(`r${round}-`));
        // Settled at once: a request cut off by the kill rejects while we sleep.
        const replies = burst.map((n) =>
          enroll(service!, n).then(
            (reply) => ({ status: "fulfilled" as const, value: reply }),
            (reason) => ({ status: "rejected" as const, reason }),
          )
        );
        await sleep(delay);
        service.proc.kill("SIGKILL");
        assert.equal((await service.proc.status).signal, "SIGKILL");
        const settled = await Promise.all(replies);
        const received = new Map<string, string>();
        settled.forEach((s, i) => {
          if (s.status === "fulfilled" && s.value.status === 200) {
            received.set(burst[i], (s.value.json() as { certificate: string }).certificate);
          } else if (s.status === "fulfilled") {
            // Killed mid-request, the only answer is none: a reply must be 200 or nothing.
            assert.fail(`${burst[i]}: ${s.value.status} ${s.value.body}`);
          }
        });
        unanswered += burst.length - received.size;
        outcomes.push(`${delay} ms: ${received.size} of 16 answered`);

        // Before any restart: what clients hold is committed.
        const index = await assertConsistent(caDir);
        for (const [name, pem] of received) {
          const serial = new X509Certificate(pem).serialNumber.replace(/^0+/, "");
          const entry = index.find((e) => e.serial.replace(/^0+/, "") === serial);
          assert.ok(entry, `${name} received serial ${serial}, which index.txt does not hold`);
          assert.equal(entry.status, "V", `${name}'s serial ${serial}`);
          assert.equal(entry.name, name);
          assert.equal(await Deno.readTextFile(join(caDir, "certs", `${entry.serial}.pem`)), pem);
        }

        // The issuance log holds only certificates of the database, and every one a client
        // received (an answer leaves only after the log has it). What the database committed
        // in the instant before the kill may still be missing: the next start appends it.
        const early = await logVerify(home);
        for (const problem of early.problems) {
          const m = /^database entry \d+ \(serial ([0-9A-F]+)\) is not in the log yet$/.exec(
            problem,
          );
          assert.ok(m, `${delay} ms: ${problem}`);
          const missing = m[1];
          for (const [name, pem] of received) {
            const serial = new X509Certificate(pem).serialNumber.replace(/^0+/, "");
            assert.notEqual(
              serial,
              missing.replace(/^0+/, ""),
              `${name} got a certificate the log lacks`,
            );
          }
        }

        // What the kill left committed, before the restart settles the invites.
        const issuedBefore = new Set(index.map((e) => e.name));

        // Restarted on the same home: the lock is free, the CRL builds, enrollments work.
        service = await Service.start(home, PASSPHRASE, {
          args: ["--enroll-rate", "100000"],
        });
        await assertCrlBuilds(home);
        const crl = await service.request("/v1/crl");
        assert.equal(crl.status, 200);
        const retried = await Promise.all(
          burst.filter((n) => !received.has(n)).map(async (n) => [n, await enroll(service!, n)]),
        ) as Array<[string, HttpsReply]>;
        const committed = new Set(
          (await readIndexChecked(dirname(caDir), { cutShort: true, cn: /./ })).map((e) => e.name),
        );
        const serialBefore = new Map(index.map((e) => [e.name, e.serial.replace(/^0+/, "")]));
        for (const [name, reply] of retried) {
          if (reply.status === 200) {
            // A token whose certificate was committed before the kill answers the retry (a
            // request for the same key) with that same certificate, never a second one.
            const { certificate } = reply.json() as { certificate: string };
            const serial = new X509Certificate(certificate).serialNumber.replace(/^0+/, "");
            if (issuedBefore.has(name)) {
              assert.equal(serial, serialBefore.get(name), `${name}'s token issued a second one`);
            }
            continue;
          }
          // A used-up token means the certificate was committed before the kill.
          assert.equal(reply.status, 403, `${name}: ${reply.body}`);
          assert.ok(committed.has(name), `${name}'s token was used up without a certificate`);
        }
        // Every name of the burst ends with exactly one certificate: none lost, none twice.
        const after = await readIndexChecked(dirname(caDir), { cutShort: true, cn: /./ });
        for (const name of burst) {
          const mine = after.filter((e) => e.name === name);
          assert.deepEqual(mine.map((e) => e.status), ["V"], `${name}: ${mine.length} issued`);
        }
        await service.proc.stop();
        await assertConsistent(caDir);
        await assertCrlBuilds(home);
        // After the restart the log and the database agree entry for entry.
        assert.deepEqual((await logVerify(home)).problems, [], `${delay} ms`);
      });
    }

    await t.step("every later enrollment works", async () => {
      service = await Service.start(home, PASSPHRASE, {
        args: ["--enroll-rate", "100000"],
      });
      const later = names.filter((n) => n.startsWith("later-"));
      const replies = await Promise.all(later.map((n) => enroll(service!, n)));
      assert.deepEqual(replies.map((r) => r.status), later.map(() => 200));
      const index = await assertConsistent(caDir);
      const valid = new Set(index.filter((e) => e.status === "V").map((e) => e.name));
      for (const n of later) assert.ok(valid.has(n), `${n} has no valid certificate`);
      await service.proc.stop();
      await assertCrlBuilds(home);
      // Otherwise the kills all came after the burst, and nothing was tested.
      assert.ok(unanswered > 0, `no kill caught a request in flight: ${outcomes.join("; ")}`);
    });
  } finally {
    await service?.proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// ---------------------------------------------------------------------------
// Invites on disk: a home from before the journal, and a journal torn by a crash

Deno.test("a CA service keeps every invite of an old invites.json and of a journal whose last line a crash tore", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-faults-" });
  let service: Service | undefined;
  try {
    const home = join(dir, "home");
    const paths = new CaPaths(home);
    await initCa(home);
    const names = ["alice", "bob", "carol", "dave"];
    const csrs = new Map(
      await pool(
        names,
        4,
        async (n) => [n, (await makeCsr(n, { keyPem: newKeyPem() })).csr] as const,
      ),
    );
    const enroll = (name: string, token: string) =>
      service!.request("/v1/enroll", {
        method: "POST",
        json: { token, csr: csrs.get(name) },
        timeoutMs: 20_000,
      });
    // The invites.json an older version wrote: alice's invite open, bob's used.
    const tokens = new Map(names.map((n) => [n, randomBytes(32).toString("base64url")]));
    const iso = (ms: number) => new Date(Date.now() + ms).toISOString();
    const hash = (t: string) => createHash("sha256").update(t).digest("hex");
    const old = ["alice", "bob"].map((n) => ({
      hash: hash(tokens.get(n)!),
      name: n,
      createdAt: iso(-60_000),
      expiresAt: iso(3_600_000),
      ...(n === "bob" ? { usedAt: iso(-30_000) } : {}),
    }));
    await Deno.writeTextFile(paths.invites, JSON.stringify({ invites: old }, null, 1) + "\n", {
      mode: 0o600,
    });

    service = await Service.start(home, PASSPHRASE);
    assert.equal((await enroll("alice", tokens.get("alice")!)).status, 200);
    assert.equal((await enroll("bob", tokens.get("bob")!)).status, 403);
    await service.proc.stop();

    // New invites, then a crash that tore the journal's last line.
    const store = new InviteStore(paths);
    for (const n of ["carol", "dave"]) tokens.set(n, (await store.create(n, 3_600_000)).token);
    await Deno.writeTextFile(paths.invitesJournal, '{"op":"reserve","hash":"0', { append: true });
    service = await Service.start(home, PASSPHRASE);
    assert.equal((await enroll("carol", tokens.get("carol")!)).status, 200);
    // alice's token stays used: a request for another key is refused (one for the same key
    // would be a retry, answered with the same certificate).
    csrs.set("alice", (await makeCsr("alice")).csr);
    assert.equal((await enroll("alice", tokens.get("alice")!)).status, 403);
    assert.equal((await enroll("dave", tokens.get("dave")!)).status, 200);
    await service.proc.stop();
    for (const line of (await Deno.readTextFile(paths.invitesJournal)).split("\n")) {
      if (line) JSON.parse(line); // every line whole
    }
    const index = await assertConsistent(paths.dir);
    const users = index.map((e) => e.name).filter((n) => names.includes(n));
    assert.deepEqual(users, ["alice", "carol", "dave"]);
  } finally {
    await service?.proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// ---------------------------------------------------------------------------
// A full disk

/** Whether this machine lets us mount a small tmpfs (root, and not a locked-down sandbox). */
async function probeTmpfs(): Promise<{ ok: boolean; why: string }> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-tmpfs-probe-" });
  try {
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=300k", "tmpfs", dir],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!mount.success) {
      return { ok: false, why: new TextDecoder().decode(mount.stderr).trim() || "mount failed" };
    }
    await new Deno.Command("umount", { args: [dir] }).output();
    return { ok: true, why: "" };
  } catch (e) {
    return { ok: false, why: e instanceof Error ? e.message : String(e) };
  } finally {
    await Deno.remove(dir).catch(() => {});
  }
}

const tmpfs = await probeTmpfs();
if (!tmpfs.ok) {
  // deno-lint-ignore no-console
  console.log(`faults_test.ts: skipping the full-disk test: cannot mount a tmpfs (${tmpfs.why})`);
}

Deno.test({
  name:
    "a CA whose disk fills up while signing fails with one clear error line and keeps a consistent database",
  ignore: !tmpfs.ok,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-full-disk-" });
    const mnt = join(dir, "mnt");
    await Deno.mkdir(mnt);
    let mounted = false;
    try {
      const mount = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=300k", "tmpfs", mnt],
      }).output();
      assert.ok(mount.success, new TextDecoder().decode(mount.stderr));
      mounted = true;
      const home = join(mnt, "home");
      const caDir = join(home, "ca");
      await initCa(home);
      const csrFiles: string[] = [];
      for (let i = 0; i < 16; i++) {
        const path = join(dir, `u${i}.csr`);
        await Deno.writeTextFile(path, (await makeCsr(`u${i}`, { keyPem: newKeyPem() })).csr);
        csrFiles.push(path);
      }
      const filler = join(mnt, "filler");
      /** Fills the disk, then frees `pages` pages of 4 KiB. */
      const leaveFree = async (pages: number) => {
        await Deno.remove(filler).catch(() => {});
        using file = await Deno.open(filler, { write: true, create: true });
        const chunk = new Uint8Array(16 * 1024);
        let size = 0;
        try {
          while (true) size += await file.write(chunk);
        } catch (e) {
          assert.match(String(e), /No space left|os error 28/, "the filler stopped early");
        }
        await file.truncate(Math.max(0, size - pages * 4096));
      };

      const failures: string[] = [];
      let failed = 0;
      let signed = 0;
      // From no page free to several: the signing fails at every step of its transaction.
      for (let pages = 0; pages < csrFiles.length; pages++) {
        await leaveFree(pages);
        const result = await runCa(home, ["sign", "--name", `u${pages}`, csrFiles[pages]]);
        if (result.code === 0) {
          signed++;
        } else {
          failed++;
          try {
            assertCliError(result, `sign with ${pages} pages free`);
            assert.match(result.stderr, /no space left|disk is full|ENOSPC/i);
          } catch (e) {
            failures.push(e instanceof Error ? e.message : String(e));
          }
        }
        await assertConsistent(caDir);
      }
      assert.ok(failed > 0 && signed > 0, `${failed} failed and ${signed} signed`);
      assert.deepEqual(failures, [], "a full disk was not reported in one clear line");

      // With room again, the CA signs and its CRL builds.
      await Deno.remove(filler);
      assertSuccess(await runCa(home, ["sign", "--name", "u0", csrFiles[0], "--replace"]), "sign");
      await assertConsistent(caDir);
      await assertCrlBuilds(home);
    } finally {
      if (mounted) {
        const umount = await new Deno.Command("umount", { args: [mnt] }).output();
        if (!umount.success) await new Deno.Command("umount", { args: ["-l", mnt] }).output();
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

/** `ca log verify --json`: the issuance log recomputed and checked against the database. */
async function logVerify(home: string): Promise<{ problems: string[]; size: number }> {
  const result = await runTask("ca", ["log", "verify", "--json"], { env: { E2E_CHAT_HOME: home } });
  assert.ok(result.code === 0 || result.code === 1, result.stderr);
  return JSON.parse(result.stdout);
}
