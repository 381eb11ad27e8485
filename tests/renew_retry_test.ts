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
import { RENEWALS_PER_DAY } from "../ca/api.ts";
import { CaPaths } from "../ca/home.ts";
import { CaClient } from "../client/ca_client.ts";
import { Chat } from "../client/chat.ts";
import type { CoreEvent } from "../client/events.ts";
import { ClientHome } from "../client/home.ts";
import { type EarlierCertificate, Identity } from "../client/identity.ts";
import { LogMonitor } from "../client/transparency.ts";
import { E2eError } from "../lib/errors.ts";
import { holdLock } from "../lib/lock.ts";
import { parseCertificate } from "../lib/x509.ts";
import {
  assertSuccess,
  makeInvite,
  runClient,
  serialsOf,
  startService,
  withService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";
import { copyTree } from "./_helpers.ts";
import { joinUser } from "./_chat_helpers.ts";
import { TaskProcess, waitUntil } from "./_harness.ts";

const FIVE_DAYS = 5 * 86_400_000;

/**
 * A renewal of `id` (its home `home`, its CA client `ca`) that the CA issues and whose issuance-log
 * check that follows cannot reach the CA: it fails, the new certificate kept in id/renewal.json.
 */
async function renewUntilTheLogCheck(id: Identity, home: string, ca = id.client()): Promise<void> {
  const unreachable = new CaClient("https://127.0.0.1:1", id.anchor, id.credentials);
  const log = await LogMonitor.open(new ClientHome(home).logState, id.anchor, unreachable);
  await assert.rejects(() => id.renew({ ca, log }));
}

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
      // This home asked for it (id/renewal-asked.json): a note, not the warning of a renewal
      // made elsewhere with a copy of the key.
      assert.equal(again.stderr, "");
      assert.match(
        again.stdout,
        /^ {2}issued at \S+ to an earlier renewal from this home, whose reply was lost$/m,
      );
      const now = parseCertificate(await Deno.readTextFile(certPath));
      assert.equal(now.serial, serials[1], "the certificate the lost reply carried");
      assert.equal(now.keyFingerprint, first.keyFingerprint);
      assert.deepEqual(await serialsOf(service, "alice"), serials, "nothing more signed");
    } finally {
      await cutter.close();
    }
  });
});

Deno.test("a renewal whose log check fails keeps the new certificate aside, durably, not in cert.pem nor presented to the CA; the next renewal finishes it without asking the CA for another", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    const id = await Identity.load(home);
    const first = id.certificate;
    const ca = id.client();
    await renewUntilTheLogCheck(id, home, ca);
    const serials = await serialsOf(service, "alice");
    assert.equal(serials.length, 2, "the CA issued the renewal");
    // Not used before its check: cert.pem is still the old certificate, and so is what loads.
    assert.equal((await Identity.load(home)).certificate.serial, first.serial);
    const kept = JSON.parse(await Deno.readTextFile(join(home, "id", "renewal.json")));
    assert.equal(parseCertificate(kept.certificate).serial, serials[1]);
    // Nor presented to the CA after its check: the running client's CA client is back on
    // cert.pem's certificate, which the CA refuses now, superseded.
    await assert.rejects(
      () => ca.lookup("alice"),
      (e: unknown) =>
        e instanceof E2eError && e.code === "ERR_FORBIDDEN" &&
        e.message === "The CA refused: The client certificate is revoked or superseded",
    );

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
    await joinUser(service, "alice", home);
    await renewUntilTheLogCheck(await Identity.load(home), home);
    const serials = await serialsOf(service, "alice");
    // Most of its life left: only the kept reply makes the start renew (stdin closed: it quits).
    const chat = await runClient(home, ["chat", "--json"]);
    assertSuccess(chat, "chat after the failed check");
    assert.match(chat.stdout, /Renewed your certificate/);
    assert.equal((await Identity.load(home)).certificate.serial, serials[1]);
    await assert.rejects(() => Deno.stat(join(home, "id", "renewal.json")), Deno.errors.NotFound);
  });
});

Deno.test("a running chat whose background renewal fails its log check says so at once in one warning and finishes the kept renewal at a later attempt, asking the CA for no other", async () => {
  await withService(async (service, dir) => {
    // Once armed, the relay cuts the CA's every reply as soon as the renewal's reply is kept:
    // the log check after it cannot reach the CA.
    const home = join(dir, "alice");
    const kept = join(home, "id", "renewal.json");
    let armed = false;
    const isKept = () => {
      try {
        return Deno.statSync(kept).isFile;
      } catch {
        return false;
      }
    };
    const cutter = await TcpRelay.start(service.port, {
      mode: "drop",
      after: () => armed && isKept(),
    });
    const events: CoreEvent[] = [];
    let chat: Chat | undefined;
    try {
      const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${cutter.port}`);
      assertSuccess(await runClient(home, ["join", invite]), "join alice");
      const id = await Identity.load(home);
      const first = id.certificate;
      const aged = first.serial;
      armed = true;
      chat = await Chat.start(id, {
        onEvent: (e) => events.push(e),
        renewal: {
          // Five of seven days gone, for the schedule and for the first certificate alone.
          clock: () => Date.now() + (chat?.identity.certificate.serial === aged ? FIVE_DAYS : 0),
          checkMs: 100,
          retryMs: 300,
          maxRetryMs: 600,
        },
      });
      const cannot = () =>
        events.flatMap((e) =>
          e.type === "warning" && /^Cannot renew/.test(e.message) ? [e.message] : []
        );
      await waitUntil(() => cannot().length > 0, "no warning", 15_000);
      assert.match(
        cannot()[0],
        /^Cannot renew your certificate \(1 attempt failed; it expires .*\): the CA renewed it, but the new certificate is not proved yet to be in the CA's issuance log \(.*\): it is kept in id\/renewal\.json and checked again at each next attempt; until then the CA refuses the certificate in use, which it superseded$/,
      );
      assert.equal(chat.identity.certificate.serial, first.serial, "not used before its check");
      const serials = await serialsOf(service, "alice");
      assert.equal(serials.length, 2);

      // The CA answers again: a later attempt finishes the kept renewal, and asks for no other.
      armed = false;
      cutter.mode = "pass";
      await waitUntil(
        () => chat!.identity.certificate.serial === serials[1],
        "the kept renewal was not finished",
        15_000,
      );
      assert.equal(cannot().length, 1, cannot().join("\n"));
      assert.equal((await Identity.load(home)).certificate.serial, serials[1]);
      await assert.rejects(() => Deno.stat(kept), Deno.errors.NotFound);
      assert.deepEqual(await serialsOf(service, "alice"), serials, "nothing more signed");
    } finally {
      await chat?.stop();
      await cutter.close();
    }
  });
});

Deno.test("two renewals of one home at once, in one process or in two, run one after the other: both end with the same new certificate, and the CA signs one", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    // Two chats of one home whose renewals fall due together (before: the second one wrote
    // cert.pem, then failed on "No such file or directory … renewal.json").
    const [a, b] = [await Identity.load(home), await Identity.load(home)];
    const [ra, rb] = await Promise.all([a.renew(), b.renew()]);
    const serials = await serialsOf(service, "alice");
    assert.equal(serials.length, 2, "one certificate signed");
    assert.equal(ra.certificate.serial, serials[1]);
    assert.equal(rb.certificate.serial, serials[1]);
    assert.equal((await Identity.load(home)).certificate.serial, serials[1]);
    await assert.rejects(() => Deno.stat(join(home, "id", "renewal.json")), Deno.errors.NotFound);

    const [p, q] = await Promise.all([runClient(home, ["renew"]), runClient(home, ["renew"])]);
    assertSuccess(p, "the first renew");
    assertSuccess(q, "the second renew");
    const after = await serialsOf(service, "alice");
    assert.equal(after.length, 3, "one certificate signed");
    assert.equal((await Identity.load(home)).certificate.serial, after[2]);
    for (const run of [p, q]) assert.match(run.stdout, /^Renewed "alice": valid until /m);
  });
});

Deno.test("a renewal.json that cert.pem already took up (a kill before its removal) is dropped at the next start, which neither stops when the CA is unreachable nor renews when it answers", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    assertSuccess(await runClient(home, ["renew"]), "renew");
    const kept = join(home, "id", "renewal.json");
    // What a kill between cert.pem's write and renewal.json's removal leaves: the reply cert.pem holds.
    const reply = await (await Identity.load(home)).client().lookup("alice");
    const leave = () => Deno.writeTextFile(kept, JSON.stringify(reply) + "\n", { mode: 0o600 });
    const serials = await serialsOf(service, "alice");

    // The CA unreachable (before: "Cannot finish the renewal of your certificate: …").
    const record = join(home, "id", "identity.json");
    const saved = await Deno.readTextFile(record);
    const away = { ...JSON.parse(saved), caUrl: "https://127.0.0.1:9" };
    await Deno.writeTextFile(record, JSON.stringify(away));
    await leave();
    const offline = await runClient(home, ["chat", "--json"]);
    assertSuccess(offline, "chat with the CA unreachable");
    assert.doesNotMatch(offline.stdout, /renew/i);
    await assert.rejects(() => Deno.stat(kept), Deno.errors.NotFound);

    // The CA answers (before: a renewal, one of the day's few, for nothing).
    await Deno.writeTextFile(record, saved);
    await leave();
    const online = await runClient(home, ["chat", "--json"]);
    assertSuccess(online, "chat with the CA up");
    assert.doesNotMatch(online.stdout, /renew/i);
    assert.deepEqual(await serialsOf(service, "alice"), serials, "nothing signed");
    await assert.rejects(() => Deno.stat(kept), Deno.errors.NotFound);

    // A renewal under way holds the renewal lock (a minute, at worst): a start does not wait for
    // it, and removes nothing that renewal may need; the next look that gets the lock does.
    await leave();
    const release = await holdLock(join(home, "id", "renewal.lock"));
    try {
      const t0 = Date.now();
      assert.equal(await (await Identity.load(home)).renewalPending(), false);
      assert.ok(Date.now() - t0 < 10_000, `waited ${Date.now() - t0} ms for the lock`);
      await Deno.stat(kept);
    } finally {
      release();
    }
    assert.equal(await (await Identity.load(home)).renewalPending(), false);
    await assert.rejects(() => Deno.stat(kept), Deno.errors.NotFound);
  });
});

Deno.test("a running chat whose background renewal gets a certificate someone else's renewal made for its key takes it and says so at once in a warning: revoke the key unless it was renewed from another home", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    const id = await Identity.load(home);
    const first = id.certificate;
    const events: CoreEvent[] = [];
    let due = false;
    const chat = await Chat.start(id, {
      onEvent: (e) => events.push(e),
      renewal: {
        // Five of seven days gone once mallory has renewed, for the first certificate alone.
        clock: () =>
          Date.now() + (due && chat?.identity.certificate.serial === first.serial ? FIVE_DAYS : 0),
        checkMs: 100,
        retryMs: 300,
        maxRetryMs: 600,
      },
    });
    try {
      // mallory holds a copy of alice's home and renews with it.
      const stolen = join(dir, "mallory-has-alice");
      await copyTree(home, stolen);
      assertSuccess(await runClient(stolen, ["renew"]), "client renew with the stolen key");
      const newer = (await Identity.load(stolen)).certificate;
      const at = new Date(newer.notBefore.getTime() + 5 * 60_000).toISOString();
      due = true;
      await waitUntil(
        () => chat.identity.certificate.serial === newer.serial,
        "the renewal did not take the certificate for our key",
        15_000,
      );
      const told = events.flatMap((e) =>
        e.type === "warning" && /did not make/.test(e.message) ? [e.message] : []
      );
      // Before: taken up in silence.
      assert.deepEqual(told, [
        `A certificate for your key was issued at ${at} by a renewal this home did not make; ` +
        "this home uses it now: if you did not renew from another home, your key is in someone " +
        "else's hands: have your admin revoke it (deno task ca revoke alice --reason " +
        "keyCompromise) and give you a new invite (deno task ca invite alice), and join with it " +
        "in another --home",
      ]);
      assert.equal((await Identity.load(home)).certificate.serial, newer.serial);
    } finally {
      await chat.stop();
    }
  });
});

Deno.test("a certificate someone else's renewal made, given to a renewal whose log check then fails, is still told of when the kept renewal is finished", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    const stolen = join(dir, "mallory-has-alice");
    await copyTree(home, stolen);
    assertSuccess(await runClient(stolen, ["renew"]), "client renew with the stolen key");
    const newer = (await Identity.load(stolen)).certificate;
    const at = new Date(newer.notBefore.getTime() + 5 * 60_000).toISOString();
    const held = (await Identity.load(home)).certificate.serial;
    await renewUntilTheLogCheck(await Identity.load(home), home);
    assert.equal((await Identity.load(home)).certificate.serial, held, "not used before its check");
    const finish = await runClient(home, ["renew"]);
    assertSuccess(finish, "client renew, which finishes the kept renewal");
    assert.equal((await Identity.load(home)).certificate.serial, newer.serial);
    assert.match(
      finish.stderr,
      new RegExp(
        `^e2e-chat: warning: A certificate for your key was issued at ${at} by a renewal this ` +
          "home did not make; this home uses it now\ne2e-chat: hint: if you did not renew from " +
          "another home, your key is in someone else's hands: have your admin revoke it",
      ),
    );
  });
});

/** Moves every time id/renewal-asked.json records `ms` earlier: a stand-in for a long backoff. */
async function backdateAsked(home: string, ms: number): Promise<void> {
  const file = join(home, "id", "renewal-asked.json");
  const shift = (v: unknown): unknown =>
    typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)
      ? new Date(Date.parse(v) - ms).toISOString()
      : Array.isArray(v)
      ? v.map(shift)
      : typeof v === "object" && v !== null
      ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, shift(x)]))
      : v;
  await Deno.writeTextFile(file, JSON.stringify(shift(JSON.parse(await Deno.readTextFile(file)))));
}

for (const order of ["after", "before"] as const) {
  Deno.test(`a thief's renewal made just ${order} a renewal of ours that never reached the CA (connection refused) is still told as one this home did not make`, async () => {
    await withService(async (service, dir) => {
      const home = join(dir, "alice");
      await joinUser(service, "alice", home);
      const stolen = join(dir, "mallory-has-alice");
      await copyTree(home, stolen);
      const thief = async () =>
        assertSuccess(await runClient(stolen, ["renew"]), "client renew with the stolen key");
      // "before": issued just before alice asked at all, it cannot be the answer to her request.
      if (order === "before") await thief();
      // alice's renewal while her network is down: refused, nothing reached the CA.
      const id = await Identity.load(home);
      const unreachable = new CaClient("https://127.0.0.1:1", id.anchor, id.credentials);
      await assert.rejects(() => id.renew({ ca: unreachable }));
      if (order === "after") await thief();
      const newer = (await Identity.load(stolen)).certificate;
      const renew = await runClient(home, ["renew"]);
      assertSuccess(renew, "alice's client renew, back online");
      const taken = (await Identity.load(home)).certificate;
      assert.equal(taken.serial, newer.serial, "mallory's certificate taken");
      assert.match(
        renew.stderr,
        /by a renewal this home did not make/,
        `stdout: ${renew.stdout}\nstderr: ${renew.stderr}`,
      );
    });
  });
}

Deno.test("a renewal whose reply is lost, retried 15 minutes after earlier attempts (one refused, one killed while it waited), is told as this home's own lost reply, not as a renewal it did not make", async () => {
  await withService(async (service, dir) => {
    let stage: "hold" | "cut" | "pass" = "hold";
    const index = new CaPaths(service.home).index;
    const renewed = () => Deno.readTextFileSync(index).match(/\t\/CN=alice$/gm)?.length === 2;
    const cutter = await TcpRelay.start(service.port, {
      after: () => stage === "hold" || (stage === "cut" && renewed()),
    });
    try {
      const home = join(dir, "alice");
      const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${cutter.port}`);
      assertSuccess(await runClient(home, ["join", invite]), "join alice");
      // 1. An attempt while the network is down: refused, nothing reaches the CA.
      const id = await Identity.load(home);
      const unreachable = new CaClient("https://127.0.0.1:1", id.anchor, id.credentials);
      await assert.rejects(() => id.renew({ ca: unreachable }));
      // 2. An attempt killed while it waits for the CA (which it may have reached, for all this
      //    home knows).
      cutter.mode = "hold";
      const asked = join(home, "id", "renewal-asked.json");
      const killed = await TaskProcess.start("client", ["renew"], { env: { E2E_CHAT_HOME: home } });
      try {
        await waitUntil(
          async () => {
            try {
              return cutter.connections > 0 && (await Deno.readTextFile(asked)).length > 0;
            } catch {
              return false;
            }
          },
          "the attempt to be recorded and under way",
          30_000,
        );
      } finally {
        killed.kill("SIGKILL");
      }
      await killed.status;
      // 3. 15 minutes of backoff later, a retry reaches the CA, which issues; its reply is lost.
      await backdateAsked(home, 15 * 60_000);
      stage = "cut";
      cutter.mode = "drop";
      const lost = await runClient(home, ["renew"]);
      assert.notEqual(lost.code, 0, "the retry whose reply was cut succeeded");
      // 4. The next retry is answered with that retry's certificate, issued earlier: ours.
      stage = "pass";
      cutter.mode = "pass";
      const again = await runClient(home, ["renew"]);
      assertSuccess(again, "alice's next retry");
      assert.equal(again.stderr, "");
      assert.match(
        again.stdout,
        /^ {2}issued at \S+ to an earlier renewal from this home, whose reply was lost$/m,
      );
    } finally {
      await cutter.close();
    }
  });
});

for (const [skew, words] of [[10, "ahead of"], [-10, "behind"]] as const) {
  Deno.test(`a renewal whose reply is lost, retried by a member whose clock is 10 minutes ${words} the CA's, is told as this home's own lost reply, not as a renewal it did not make`, async () => {
    await withService(async (service, dir) => {
      let armed = false;
      const index = new CaPaths(service.home).index;
      const renewed = () => Deno.readTextFileSync(index).match(/\t\/CN=alice$/gm)?.length === 2;
      const cutter = await TcpRelay.start(service.port, { after: () => armed && renewed() });
      try {
        const home = join(dir, "alice");
        const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${cutter.port}`);
        assertSuccess(await runClient(home, ["join", invite]), "join alice");
        // This home's clock, set off the CA's (the service's clock is the machine's).
        const clock = () => Date.now() + skew * 60_000;
        armed = true;
        cutter.mode = "drop";
        await assert.rejects(() => Identity.load(home).then((id) => id.renew({ clock })));
        const serials = await serialsOf(service, "alice");
        assert.equal(serials.length, 2, "the CA committed before the reply was cut");

        cutter.mode = "pass";
        const earlier: EarlierCertificate[] = [];
        const id = await (await Identity.load(home)).renew({
          clock,
          onEarlier: (e) => earlier.push(e),
        });
        assert.equal(id.certificate.serial, serials[1], "the certificate the lost reply carried");
        // Before: compared in this home's time, issued 10 minutes off the attempt: "a renewal
        // this home did not make", and the advice to have the key revoked.
        assert.deepEqual(earlier.map((e) => e.asked), [true]);
      } finally {
        await cutter.close();
      }
    });
  });
}

Deno.test("a thief's renewal made just after a renewal of ours that the CA refused (429, too many in a day) is still told as one this home did not make", async () => {
  await withService(async (service, dir) => {
    const home = join(dir, "alice");
    await joinUser(service, "alice", home);
    let id = await Identity.load(home);
    for (let i = 0; i < RENEWALS_PER_DAY; i++) id = await id.renew();
    // alice's renewal the CA refuses: a definite answer, nothing was issued for it.
    await assert.rejects(
      () => id.renew(),
      (e: unknown) => e instanceof E2eError && e.code === "ERR_RATE_LIMITED",
    );
    // The CA's count of the day goes with a restart (at another port, where alice follows it);
    // mallory, with a copy of alice's home, renews with her key just after her refused attempt.
    await service.stop();
    const next = await startService(service.home);
    try {
      await id.moveCa(next.url);
      const stolen = join(dir, "mallory-has-alice");
      await copyTree(home, stolen);
      assertSuccess(await runClient(stolen, ["renew"]), "client renew with the stolen key");
      const newer = (await Identity.load(stolen)).certificate;
      const renew = await runClient(home, ["renew"]);
      assertSuccess(renew, "alice's client renew");
      assert.equal((await Identity.load(home)).certificate.serial, newer.serial);
      // Before: the refused attempt counted as one the CA may have answered, and mallory's
      // renewal, issued within minutes of it, was taken for alice's own lost reply.
      assert.match(
        renew.stderr,
        /by a renewal this home did not make/,
        `stdout: ${renew.stdout}\nstderr: ${renew.stderr}`,
      );
    } finally {
      await next.stop();
    }
  });
});

// The attempt whose reply was lost fell out of id/renewal-asked.json (only the last 8 were kept)
// after eight more attempts that may have reached the CA (here: killed while they wait for the
// CA, as a chat is killed; a lost reply or a timeout after sending counts the same): the answer
// that finally came was told as a renewal this home did not make, with the advice to have the key
// revoked (from an attacker's review). Now the first attempts are kept as well as the last: 20
// more attempts here, past both.
const RETRIES = 20;

// Moves the last attempt of id/renewal-asked.json `ms` later: it was made that much later (a
// chat's backoff between attempts).
async function dateLastAsked(home: string, ms: number): Promise<void> {
  const file = join(home, "id", "renewal-asked.json");
  const record = JSON.parse(await Deno.readTextFile(file));
  const last = record.attempts[record.attempts.length - 1];
  for (const k of ["at", "end"]) {
    if (last[k]) last[k] = new Date(Date.parse(last[k]) + ms).toISOString();
  }
  await Deno.writeTextFile(file, JSON.stringify(record));
}

Deno.test("a renewal whose reply is lost, then twenty more attempts over hours that may have reached the CA, is told as this home's own lost reply, not as a renewal it did not make (from an attacker's review)", async () => {
  await withService(async (service, dir) => {
    let stage: "pass" | "cut" | "hold" = "pass";
    const index = new CaPaths(service.home).index;
    const renewed = () => Deno.readTextFileSync(index).match(/\t\/CN=alice$/gm)?.length === 2;
    const cutter = await TcpRelay.start(service.port, {
      after: () => stage === "hold" || (stage === "cut" && renewed()),
    });
    try {
      const home = join(dir, "alice");
      const invite = await makeInvite(service.home, "alice", "--url", `127.0.0.1:${cutter.port}`);
      assertSuccess(await runClient(home, ["join", invite]), "join alice");
      const asked = join(home, "id", "renewal-asked.json");
      // When the last attempt recorded was sent ("" for none).
      const lastAsked = async () => {
        try {
          return JSON.parse(await Deno.readTextFile(asked)).attempts.at(-1).at as string;
        } catch {
          return "";
        }
      };
      stage = "cut";
      cutter.mode = "drop";
      assert.notEqual((await runClient(home, ["renew"])).code, 0, "the first reply was cut");
      assert.equal((await serialsOf(service, "alice")).length, 2, "the CA issued");
      stage = "hold";
      cutter.mode = "hold";
      for (let k = 1; k <= RETRIES; k++) {
        const before = await lastAsked();
        const connections = cutter.connections;
        const killed = await TaskProcess.start("client", ["renew"], {
          env: { E2E_CHAT_HOME: home },
        });
        try {
          await waitUntil(
            async () => cutter.connections > connections && (await lastAsked()) !== before,
            "the attempt to be recorded and under way",
            30_000,
          );
        } finally {
          killed.kill("SIGKILL");
        }
        await killed.status;
        await dateLastAsked(home, k * 20 * 60_000);
      }
      const kept = JSON.parse(await Deno.readTextFile(asked)).attempts.length;
      assert.equal(kept, 16, "the file is bounded: the first 8 attempts and the last 8");
      stage = "pass";
      cutter.mode = "pass";
      const again = await runClient(home, ["renew"]);
      assertSuccess(again, "the attempt that gets its answer");
      assert.equal((await serialsOf(service, "alice")).length, 2, "nothing more signed");
      assert.doesNotMatch(again.stderr, /did not make/, again.stderr);
    } finally {
      await cutter.close();
    }
  });
});
