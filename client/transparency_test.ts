/**
 * LogMonitor against a CA that shows alice and bob different logs (a split view),
 * each consistent in itself: only the checkpoints they exchange in the hello can
 * tell. The CA, its log key and its certificate are real (openssl); the two views
 * are trees signed with that log key, served to each monitor by a CA stand-in.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createPrivateKey } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { formatCheckpoint, signCheckpoint, signNote } from "../lib/checkpoint.ts";
import { E2eError } from "../lib/errors.ts";
import { logOrigin, logProofJson } from "../lib/log_proof.ts";
import { leafHash, MerkleTree } from "../lib/merkle.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { trustAnchor } from "../lib/tls.ts";
import { parseCertificate } from "../lib/x509.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import type { CaClient } from "./ca_client.ts";
import { CRL_CLOCK_SKEW_MS, CRL_REPUBLISH_MS } from "../lib/crl.ts";
import { LogMonitor, MAX_ALARMS, MAX_DODGED_LOOKS } from "./transparency.ts";

const encoder = new TextEncoder();
/** The age past which checkCrl() refuses a CRL, in minutes. */
const CRL_AGE_MIN = (CRL_REPUBLISH_MS + CRL_CLOCK_SKEW_MS) / 60_000;

/** A CA whose log holds `leaves` (text, or a certificate's DER), as far as one client can see. */
function view(
  leaves: Array<string | Uint8Array>,
  sign: (t: MerkleTree) => string,
  logKeyPem: string,
) {
  const bytes = leaves.map((l) => typeof l === "string" ? encoder.encode(l) : l);
  const tree = new MerkleTree(bytes.map((l) => leafHash(l)));
  const b64 = (h: Uint8Array) => Buffer.from(h).toString("base64");
  return {
    tree,
    checkpoint: sign(tree),
    ca: {
      logKey: () => Promise.resolve(logKeyPem),
      checkpoint: () => Promise.resolve(sign(tree)),
      // As the real API: a size beyond the tree is a 400.
      consistency: (m: number, n: number) =>
        n > tree.size
          ? Promise.reject(
            new E2eError("ERR_BAD_REQUEST", `"second" must be from 0 to ${tree.size}`),
          )
          : Promise.resolve(tree.consistencyProof(m, n).map(b64)),
      logEntries: (s: number, e: number) =>
        Promise.resolve(bytes.slice(s, e).map((l) => Buffer.from(l).toString("base64"))),
    } as unknown as CaClient,
  };
}

async function withViews(
  fn: (v: {
    dir: string;
    anchor: ReturnType<typeof trustAnchor>;
    make: (leaves: Array<string | Uint8Array>) => ReturnType<typeof view>;
    signText: (body: string) => string;
    issue: (name: string, keyPem: string, options?: { expired?: boolean }) => Promise<Issued>;
    crl: (revoked: Issued[], options?: { signedAt?: Date }) => Promise<Uint8Array>;
  }) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
    await ca.openLog();
    const key = createPrivateKey({
      key: await Deno.readTextFile(ca.paths.logKey),
      passphrase: PASSPHRASE,
    });
    const origin = logOrigin(ca.certificate.fingerprint);
    const sign = (t: MerkleTree) =>
      signCheckpoint({ origin, size: t.size, root: t.root() }, { name: origin, key });
    const logKeyPem = await Deno.readTextFile(ca.paths.logCert);
    await fn({
      dir,
      anchor: trustAnchor(ca.certificate.pem),
      make: (leaves) => view(leaves, sign, logKeyPem),
      signText: (body) => signNote(body, { name: origin, key }),
      issue: (name, keyPem, options) => issue(ca.paths.dir, name, keyPem, options),
      crl: (revoked, options) => signCrl(ca.paths.dir, revoked, options),
    });
  });
}

/** A certificate the CA issued, as the log holds it and as the watcher sees it. */
interface Issued {
  der: Uint8Array;
  serial: string;
  fingerprint: string;
  /** The SHA-256 of its key, as the watcher is given our own. */
  key: string;
}

// The CA signs a certificate for `name` with `keyPem`'s key straight through `openssl ca` (valid
// for a day, or one that expired in 2020), as a dishonest CA would.
async function issue(
  caDir: string,
  name: string,
  keyPem: string,
  options: { expired?: boolean } = {},
): Promise<Issued> {
  const { csr } = await makeCsr(name, { keyPem });
  await Deno.writeTextFile(join(caDir, "t.csr"), csr);
  const dates = options.expired
    ? ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
    : ["-days", "1"];
  await openssl([
    ...["ca", "-config", "openssl.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-batch"],
    ...["-passin", PASSPHRASE_ARG, "-in", "t.csr", "-subj", `/CN=${name}`, ...dates],
    ...["-notext", "-out", "t.pem"],
  ], { cwd: caDir, passphrase: PASSPHRASE });
  const pem = await Deno.readTextFile(join(caDir, "t.pem"));
  const info = parseCertificate(pem);
  return {
    der: pemDecode(pem, "CERTIFICATE")!,
    serial: info.serial,
    fingerprint: info.fingerprint,
    key: info.keyFingerprint,
  };
}

// A CRL the CA signs (each with a number above the last) listing exactly `revoked`, however it
// would be served: to one member alone, say. Signed now, or dated `signedAt`.
async function signCrl(
  caDir: string,
  revoked: Issued[],
  options: { signedAt?: Date } = {},
): Promise<Uint8Array> {
  const cnf = join(caDir, "openssl.cnf");
  const index = join(caDir, "crl-index.txt");
  const at = "250101000000Z";
  await Deno.writeTextFile(
    index,
    revoked.map((c) => {
      const serial = c.serial.length % 2 ? `0${c.serial}` : c.serial;
      return `R\t991231235959Z\t${at}\t${serial}\tunknown\t/CN=x\n`;
    }).join(""),
  );
  await Deno.writeTextFile(join(caDir, "crl-index.txt.attr"), "unique_subject = no\n");
  const config = (await Deno.readTextFile(cnf)).replace(/^database\s*=.*$/m, `database = ${index}`);
  await Deno.writeTextFile(join(caDir, "crl.cnf"), config);
  await openssl([
    ...["ca", "-config", "crl.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"],
    ...["-passin", PASSPHRASE_ARG, "-gencrl", "-out", "t.crl"],
    ...(options.signedAt ? ["-crl_lastupdate", generalizedTime(options.signedAt)] : []),
  ], { cwd: caDir, passphrase: PASSPHRASE });
  return pemDecode(await Deno.readTextFile(join(caDir, "t.crl")), "X509 CRL")!;
}

function generalizedTime(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, "").replace(/\.\d+Z$/, "Z");
}

/** `ca`, but away (ERR_NETWORK) for the one question that would show a fork: consistency. */
function awayForConsistency(ca: CaClient): CaClient {
  return {
    ...ca,
    consistency: () => Promise.reject(new E2eError("ERR_NETWORK", "Cannot reach the CA service")),
  } as unknown as CaClient;
}

/** Whether `e` says the CA could not be reached. */
function unreachable(e: unknown): boolean {
  return e instanceof E2eError && e.code === "ERR_NETWORK";
}

function alarmed(e: unknown): boolean {
  assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
  assert.equal(e.code, "ERR_LOG_ALARM");
  return true;
}

Deno.test("a split view is caught when alice takes bob's checkpoint from his hello", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "b", "d"]);
    const seen: string[] = [];
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, forAlice.ca, {
      onAlarm: (a) => seen.push(a.message),
    });
    const bob = await LogMonitor.open(join(dir, "bob.json"), anchor, forBob.ca);
    await alice.observe(forAlice.checkpoint);
    await bob.observe(forBob.checkpoint);
    // Each view is consistent in itself: neither can tell alone.
    assert.deepEqual([alice.alarms, bob.alarms], [[], []]);
    alice.requireNoAlarm();

    await assert.rejects(alice.observe(bob.latest!, undefined, '"bob"'), alarmed);
    assert.equal(seen.length, 1);
    assert.match(seen[0], /"bob" showed a log of 3 entries that is not consistent/);
    assert.throws(() => alice.requireNoAlarm(), alarmed);
    // The alarm stands across a restart.
    const again = await LogMonitor.open(join(dir, "alice.json"), anchor, forAlice.ca);
    assert.equal(again.alarms.length, 1);
  });
});

Deno.test("a larger checkpoint that extends ours is taken; a smaller consistent one is kept out", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const small = make(["a", "b"]);
    const big = make(["a", "b", "c", "d", "e"]);
    const monitor = await LogMonitor.open(join(dir, "m.json"), anchor, big.ca);
    await monitor.observe(small.checkpoint);
    await monitor.observe(big.checkpoint);
    assert.equal(monitor.latest, big.checkpoint);
    await monitor.observe(small.checkpoint);
    assert.equal(monitor.latest, big.checkpoint, "never smaller");
    assert.deepEqual(monitor.alarms, []);
    // The CA rewrote entry 1 and serves proofs from that tree: none leads to what we stored.
    const forked = make(["a", "x", "c", "d", "e", "f"]);
    const later = await LogMonitor.open(join(dir, "m.json"), anchor, forked.ca);
    await assert.rejects(later.observe(forked.checkpoint), alarmed);
  });
});

Deno.test("checkCertificate() fails closed without a proof, and alarms on a signed proof that leads elsewhere", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const v = make(["a", "b", "c"]);
    const monitor = await LogMonitor.open(join(dir, "m.json"), anchor, v.ca);
    const der = encoder.encode("b");
    await monitor.checkCertificate(der, logProofJson(1, v.tree.inclusionProof(1, 3), v.checkpoint));
    for (const proof of [undefined, {}, { checkpoint: v.checkpoint }]) {
      await assert.rejects(
        monitor.checkCertificate(der, proof),
        (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
      );
    }
    assert.deepEqual(monitor.alarms, [], "a missing proof is no evidence against the CA");
    const elsewhere = logProofJson(2, v.tree.inclusionProof(2, 3), v.checkpoint);
    await assert.rejects(
      monitor.checkCertificate(der, elsewhere),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID",
    );
    assert.equal(monitor.alarms.length, 1);
  });
});

Deno.test("watch() alarms on entries that do not make the checkpoint the CA signed", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const honest = make(["a", "b", "c"]);
    const lying = {
      ...honest.ca,
      logEntries: () =>
        Promise.resolve(["a", "b", "z"].map((l) => Buffer.from(l).toString("base64"))),
    } as unknown as CaClient;
    const monitor = await LogMonitor.open(join(dir, "m.json"), anchor, lying);
    await assert.rejects(monitor.watch("alice", "00"), alarmed);
    assert.match(monitor.alarms[0].message, /entries do not make its checkpoint/);
  });
});

Deno.test("a CA that says a size its log key signed is out of range is caught (no silent gap in gossip)", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "b", "d", "e"]);
    const refusing = {
      ...forAlice.ca,
      consistency: () =>
        Promise.reject(new E2eError("ERR_BAD_REQUEST", 'Parameter "second" must be from 0 to 3')),
    } as unknown as CaClient;
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, refusing);
    await alice.observe(forAlice.checkpoint);
    await assert.rejects(alice.observePeer(forBob.checkpoint, "bob"), alarmed);
  });
});

Deno.test("a peer's checkpoint that cannot be checked while the CA is away is checked at the next look", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "x", "c", "d"]);
    const away = awayForConsistency(forAlice.ca);
    const file = join(dir, "alice.json");
    const alice = await LogMonitor.open(file, anchor, away);
    await alice.observe(forAlice.checkpoint);
    await assert.rejects(alice.observePeer(forBob.checkpoint, "bob"), unreachable);
    assert.deepEqual(alice.alarms, []);
    // Back, the CA serves proofs of alice's view; bob's checkpoint is not consistent with it.
    const back = await LogMonitor.open(file, anchor, forAlice.ca);
    await assert.rejects(back.watch("alice", "00"), alarmed);
    assert.match(back.alarms[0].message, /"bob" showed a log of 4 entries/);
  });
});

Deno.test("a second CA-certified log key, or a checkpoint too long for a hello, raises an alarm", async () => {
  await withViews(async ({ dir, anchor, make, signText }) => {
    const v = make(["a", "b"]);
    const monitor = await LogMonitor.open(join(dir, "m.json"), anchor, v.ca);
    await monitor.observe(v.checkpoint);
    // Signed by the log key, with an extension line that makes it too long for any hello.
    const origin = v.checkpoint.split("\n")[0];
    const body = formatCheckpoint({ origin, size: 2, root: v.tree.root() }) + "x".repeat(5000) +
      "\n";
    const long = await LogMonitor.open(join(dir, "long.json"), anchor, v.ca);
    await assert.rejects(long.observe(signText(body)), alarmed);
    assert.match(long.alarms[0].message, /too long to share with peers/);
    const state = JSON.parse(await Deno.readTextFile(join(dir, "m.json")));
    assert.match(state.logKey, /^[0-9a-f]{64}$/);
    state.logKey = "0".repeat(64);
    await Deno.writeTextFile(join(dir, "m.json"), JSON.stringify(state));
    const pinned = await LogMonitor.open(join(dir, "m.json"), anchor, v.ca);
    await assert.rejects(pinned.observe(v.checkpoint), alarmed);
    assert.match(pinned.alarms[0].message, /log key changed/);
  });
});

Deno.test("a hostile CA's flood of signed evidence keeps MAX_ALARMS alarms and one that says more were not kept", async () => {
  await withViews(async ({ dir, anchor, make, signText }) => {
    const v = make(["a"]);
    const origin = v.checkpoint.split("\n")[0];
    const seen: string[] = [];
    const file = join(dir, "alice.json");
    const monitor = await LogMonitor.open(file, anchor, v.ca, {
      onAlarm: (a) => seen.push(a.message),
    });
    await monitor.observe(v.checkpoint);
    // Checkpoints of every size, each signed by the log key and none consistent with ours.
    for (let size = 2; size < 2 + MAX_ALARMS + 20; size++) {
      const root = new Uint8Array(32).fill(size % 256);
      const text = signText(formatCheckpoint({ origin, size, root }));
      await assert.rejects(monitor.observePeer(text, "mallory"), alarmed);
    }
    assert.equal(monitor.alarms.length, MAX_ALARMS + 1);
    assert.deepEqual(seen, monitor.alarms.map((a) => a.message));
    assert.match(seen[0], /"mallory" showed a log of 2 entries that is not consistent/);
    assert.equal(
      seen[MAX_ALARMS],
      `more alarms were raised than the ${MAX_ALARMS} kept: the others are not shown`,
    );
    const again = await LogMonitor.open(file, anchor, v.ca);
    assert.equal(again.alarms.length, MAX_ALARMS + 1);
    assert.throws(() => again.requireNoAlarm(), alarmed);
  });
});

Deno.test("a LogMonitor writing HOME/log.json keeps an alarm another process of the home raised since it read the file (client lookup beside a chat)", async () => {
  await withTempDir(async (dir) => {
    const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
    await ca.openLog();
    const origin = logOrigin(ca.certificate.fingerprint);
    const key = createPrivateKey({
      key: await Deno.readTextFile(ca.paths.logKey),
      passphrase: PASSPHRASE,
    });
    const tree = new MerkleTree([leafHash(new TextEncoder().encode("entry"))]);
    const checkpoint = signCheckpoint({ origin, size: tree.size, root: tree.root() }, {
      name: origin,
      key,
    });
    const logKey = await Deno.readTextFile(ca.paths.logCert);
    // A CA stand-in that gives the log key: the checkpoint is the first, so nothing else is asked.
    const stand = { logKey: () => Promise.resolve(logKey) };
    const file = join(dir, "log.json");
    // `client lookup` opens the state while the chat of the same home runs ...
    const lookup = await LogMonitor.open(file, trustAnchor(ca.certificate.pem), stand as never);
    // ... and the chat raises an alarm, kept in the file, meanwhile.
    const alarm = { message: "the CA showed a log that is not consistent with the one seen" };
    await Deno.writeTextFile(file, JSON.stringify({ alarms: [alarm], pending: [] }));
    await lookup.observe(checkpoint);
    const saved = JSON.parse(await Deno.readTextFile(file));
    assert.deepEqual(saved.alarms, [alarm], "the chat's alarm is still on disk");
    assert.equal(saved.checkpoint, checkpoint);
    // And it stands in the monitor that wrote the file: no new connection from it either.
    assert.throws(() => lookup.requireNoAlarm(), (e) => {
      assert.equal((e as { code?: string }).code, "ERR_LOG_ALARM");
      assert.equal((e as Error).message, "Refused: the CA's issuance log raised an alarm");
      return true;
    });
  });
});

Deno.test("a LogMonitor saving an older checkpoint after another process of the home saved a newer one keeps the newer (client lookup beside a chat)", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const small = make(["a", "b"]);
    const mid = make(["a", "b", "c"]);
    const big = make(["a", "b", "c", "d", "e"]);
    const file = join(dir, "log.json");
    await (await LogMonitor.open(file, anchor, small.ca)).observe(small.checkpoint);
    // `client lookup` reads the state, then the chat of the same home reads it too ...
    const lookup = await LogMonitor.open(file, anchor, mid.ca);
    const chat = await LogMonitor.open(file, anchor, big.ca);
    // ... the chat stores a newer checkpoint, and the lookup its older one after it.
    await chat.observe(big.checkpoint);
    await lookup.observe(mid.checkpoint);
    assert.equal(JSON.parse(await Deno.readTextFile(file)).checkpoint, big.checkpoint);
    assert.equal(lookup.latest, big.checkpoint, "the lookup's monitor never goes back either");
    // The lookup's checkpoint was checked against the small one only: the next look checks it
    // against the one kept, and finds it consistent.
    await (await LogMonitor.open(file, anchor, big.ca)).watch("alice", "00");
    const after = JSON.parse(await Deno.readTextFile(file));
    assert.equal(after.checkpoint, big.checkpoint);
    assert.deepEqual([after.alarms, after.pending], [[], []]);
  });
});

Deno.test("a checkpoint another process of the home stored meanwhile that forks ours is kept and caught at the next look", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const small = make(["a", "b"]);
    const forked = make(["a", "b", "x"]);
    const big = make(["a", "b", "c", "d", "e"]);
    const file = join(dir, "log.json");
    await (await LogMonitor.open(file, anchor, small.ca)).observe(small.checkpoint);
    const lookup = await LogMonitor.open(file, anchor, forked.ca);
    const chat = await LogMonitor.open(file, anchor, big.ca);
    // Each extends the small checkpoint: neither process alone can tell that they fork.
    await chat.observe(big.checkpoint);
    await lookup.observe(forked.checkpoint);
    assert.deepEqual([chat.alarms, lookup.alarms], [[], []]);
    await assert.rejects(
      (await LogMonitor.open(file, anchor, big.ca)).watch("alice", "00"),
      alarmed,
    );
    const after = JSON.parse(await Deno.readTextFile(file));
    assert.equal(after.checkpoint, big.checkpoint);
    assert.match(after.alarms[0].message, /a log of 3 entries that is not consistent/);
  });
});

Deno.test("watch() alarms on a certificate for our name with another key logged after our own first, even one a logged CRL lists or that expired since", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const { key: ours } = await makeCsr("bob");
    const own = await issue("bob", ours);
    // The CA lists `hidden` on the CRL it serves bob only (nothing ties it to alice's CRL).
    const hidden = await issue("bob", (await makeCsr("bob")).key);
    const expired = await issue("bob", (await makeCsr("bob")).key, { expired: true });
    const v = make(["a", own.der, hidden.der, expired.der, await crl([hidden])]);
    const monitor = await LogMonitor.open(join(dir, "bob.json"), anchor, v.ca);
    const found = await monitor.watch("bob", own.key);
    assert.deepEqual(found.foreign.map((f) => [f.index, f.fingerprint]), [
      [2, hidden.fingerprint],
      [3, expired.fingerprint],
    ]);
    assert.deepEqual(monitor.alarms.map((a) => a.fingerprint), [
      hidden.fingerprint,
      expired.fingerprint,
    ]);
    assert.throws(() => monitor.requireNoAlarm(), alarmed);
  });
});

Deno.test("a certificate for our name with another key logged before our own first (a lost key replaced) is excused once expired, or while the newest CRL in the log lists it", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const lost = await issue("bob", (await makeCsr("bob")).key);
    const older = await issue("bob", (await makeCsr("bob")).key, { expired: true });
    const { key: ours } = await makeCsr("bob");
    const own = await issue("bob", ours);
    const renewed = await issue("bob", ours);
    const listing = await crl([lost]);
    const leaves = [older.der, lost.der, "a", own.der, renewed.der, listing];
    const bob = await LogMonitor.open(join(dir, "bob.json"), anchor, make(leaves).ca);
    const found = await bob.watch("bob", own.key);
    assert.deepEqual([found.entries, found.foreign, bob.alarms], [6, [], []]);
    // A later CRL in the log that no longer lists it (the CA takes the revocation back): it
    // could be shown to peers as bob's again, an alarm at the next look.
    const later = await LogMonitor.open(
      join(dir, "bob.json"),
      anchor,
      make([...leaves, "b", await crl([])]).ca,
    );
    const again = await later.watch("bob", own.key);
    assert.deepEqual([again.entries, again.foreign.map((f) => f.serial)], [2, [lost.serial]]);
    // On no CRL in the log (served to bob alone, say), it is not excused: an alarm.
    const other = await LogMonitor.open(
      join(dir, "other.json"),
      anchor,
      make([older.der, lost.der, "a", own.der, renewed.der, await crl([])]).ca,
    );
    const seen = await other.audit("bob", own.key);
    assert.deepEqual(seen.foreign.map((f) => f.serial), [lost.serial]);
    // No CRL logged yet: it waits for one (no alarm, and none is excused).
    const none = await LogMonitor.open(join(dir, "none.json"), anchor, make(leaves.slice(0, 5)).ca);
    assert.deepEqual([(await none.watch("bob", own.key)).foreign, none.alarms], [[], []]);
    const logged = await LogMonitor.open(join(dir, "none.json"), anchor, make(leaves).ca);
    assert.deepEqual([(await logged.watch("bob", own.key)).foreign, logged.alarms], [[], []]);
  });
});

Deno.test("checkCrl() takes a CRL only with a proof that it is the newest CRL of a log at least as large as the client holds: an older one is refused as a rollback, even by a client that never looked at the log", async () => {
  await withViews(async ({ dir, anchor, make, crl }) => {
    const old = await crl([]);
    const next = await crl([]);
    const before = make(["a", old]);
    const after = make(["a", old, "b", next, "c"]);
    const pem = (der: Uint8Array) => pemEncode(der, "X509 CRL");
    const proof = (v: typeof after, index: number) =>
      logProofJson(index, v.tree.inclusionProof(index, v.tree.size), v.checkpoint);
    const refused = (message: RegExp) => (e: unknown) => {
      assert.ok(e instanceof E2eError, String(e));
      assert.equal(e.code, "ERR_LOG_INVALID");
      assert.match(e.message, message);
      return true;
    };
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, after.ca);
    await assert.rejects(
      alice.checkCrl(pem(next), undefined, after.ca),
      refused(/without a proof/),
    );
    await assert.rejects(
      alice.checkCrl(pem(next), proof(after, 1), after.ca),
      refused(/not in the CA/),
    );
    // The older one, though in the log with a valid proof: a later CRL follows it there.
    await assert.rejects(
      alice.checkCrl(pem(old), proof(after, 1), after.ca),
      refused(/CRL number \d+: the issuance log holds a later one .* rollback/),
    );
    await alice.checkCrl(pem(next), proof(after, 3), after.ca);
    // Proved in the log as it was before the later one: smaller than the log alice holds.
    await assert.rejects(
      alice.checkCrl(pem(old), proof(before, 1), after.ca),
      refused(/a log of 2 entries, smaller than the 5 this client holds/),
    );
    // A client that held nothing takes the older one from the log as it was, then no longer.
    const bob = await LogMonitor.open(join(dir, "bob.json"), anchor, before.ca);
    await bob.checkCrl(pem(old), proof(before, 1), before.ca);
    await bob.checkCrl(pem(next), proof(after, 3), after.ca);
    await assert.rejects(bob.checkCrl(pem(old), proof(before, 1), after.ca), refused(/smaller/));
    assert.deepEqual([alice.alarms, bob.alarms], [[], []]);
    // Entries after the CRL that are not those of the signed checkpoint: evidence, as elsewhere.
    const carol = await LogMonitor.open(join(dir, "carol.json"), anchor, after.ca);
    const lying = { ...after.ca, logEntries: () => Promise.resolve(["YQ==", "Yg==", "Yw=="]) };
    await assert.rejects(
      carol.checkCrl(pem(next), proof(after, 3), lying as unknown as CaClient),
      alarmed,
    );
    assert.match(carol.alarms[0].message, /entries do not make its checkpoint of 5 entries/);
  });
});

Deno.test("watch() keeps where our key's first certificate is: a later look reading only new entries alarms on one a logged CRL lists, and a state written before it was kept reads the log again from the start", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const { key: ours } = await makeCsr("bob");
    const own = await issue("bob", ours);
    const hidden = await issue("bob", (await makeCsr("bob")).key);
    const before = make(["a", own.der, "b"]);
    const after = make(["a", own.der, "b", "c", hidden.der, await crl([hidden])]);
    const file = join(dir, "bob.json");
    assert.equal(
      (await (await LogMonitor.open(file, anchor, before.ca)).watch("bob", own.key)).entries,
      3,
    );
    const later = await LogMonitor.open(file, anchor, after.ca);
    const found = await later.watch("bob", own.key);
    assert.equal(found.entries, 3, "only the new entries are read");
    assert.deepEqual(found.foreign.map((f) => f.fingerprint), [hidden.fingerprint]);

    // HOME/log.json as an earlier version wrote it: entries read, nothing of our own key's.
    const old = join(dir, "old.json");
    await (await LogMonitor.open(old, anchor, before.ca)).watch("bob", own.key);
    const state = JSON.parse(await Deno.readTextFile(old));
    await Deno.writeTextFile(
      old,
      JSON.stringify({
        checkpoint: state.checkpoint,
        audited: state.audited,
        alarms: [],
        pending: [],
      }),
    );
    const upgraded = await LogMonitor.open(old, anchor, after.ca);
    const again = await upgraded.watch("bob", own.key);
    assert.equal(again.entries, 6, "read again from the first entry");
    assert.deepEqual(again.foreign.map((f) => f.fingerprint), [hidden.fingerprint]);
  });
});

Deno.test("checkCrl() refuses a CRL signed over CRL_REPUBLISH_MS + CRL_CLOCK_SKEW_MS ago, served from a consistent prefix of the log that ends before the CRL that replaced it, and keeps the one it holds without an alarm", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    // R, logged for "bob" before bob's own first certificate, revoked by the CRL of his enrollment.
    const r = await issue("bob", (await makeCsr("bob")).key);
    const ago = (min: number) => new Date(Date.now() - min * 60_000);
    const old = await crl([], { signedAt: ago(CRL_AGE_MIN + 5) });
    const revoking = await crl([r]);
    const held = make(["a", old, r.der]); // alice last looked here: R in the log, unrevoked
    const stale = make(["a", old, r.der, "x"]); // a prefix the CA signs now, for alice alone
    const real = make(["a", old, r.der, "x", "bob's own", revoking]);
    const pem = (der: Uint8Array) => pemEncode(der, "X509 CRL");
    const proof = (v: typeof real, index: number) =>
      logProofJson(index, v.tree.inclusionProof(index, v.tree.size), v.checkpoint);
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, real.ca);
    await alice.observe(held.checkpoint);
    await assert.rejects(alice.checkCrl(pem(old), proof(stale, 1), real.ca), (e) => {
      assert.ok(e instanceof E2eError, String(e));
      assert.equal(e.code, "ERR_LOG_INVALID");
      assert.match(
        e.message,
        /CRL number \d+: signed 7\d min ago, and the CA signs a new one every 60 min/,
      );
      assert.match(e.hint ?? "", /the CRL held is kept/);
      return true;
    });
    assert.deepEqual(alice.alarms, []);
    await alice.checkCrl(pem(revoking), proof(real, 5), real.ca);
    // Within the window the stale prefix still works (docs/TRANSPARENCY.md says so).
    const recent = await crl([], { signedAt: ago(CRL_AGE_MIN - 5) });
    const recentHeld = make(["a", recent, r.der]);
    const recentStale = make(["a", recent, r.der, "x"]);
    const carol = await LogMonitor.open(join(dir, "carol.json"), anchor, recentStale.ca);
    await carol.observe(recentHeld.checkpoint);
    await carol.checkCrl(pem(recent), proof(recentStale, 1), recentStale.ca);
  });
});

Deno.test("checkCrl() of the same CRL again reads only the log entries past those it read last time", async () => {
  await withViews(async ({ dir, anchor, make, crl }) => {
    const first = await crl([]);
    const small = make(["a", first, "b", "c"]);
    const grown = make(["a", first, "b", "c", "d", "e"]);
    const pem = pemEncode(first, "X509 CRL");
    const proof = (v: typeof grown) =>
      logProofJson(1, v.tree.inclusionProof(1, v.tree.size), v.checkpoint);
    const reads: Array<[number, number]> = [];
    const counting = (v: typeof grown) =>
      ({
        ...v.ca,
        logEntries: (s: number, e: number) => (reads.push([s, e]), v.ca.logEntries(s, e)),
      }) as unknown as CaClient;
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, grown.ca);
    await alice.checkCrl(pem, proof(small), counting(small));
    await alice.checkCrl(pem, proof(small), counting(small));
    await alice.checkCrl(pem, proof(grown), counting(grown));
    // The first read takes the entries before the CRL too (alice judged no CRL logged before it,
    // nor looked at the log): CRL numbers must increase there as well. Then only the new ones.
    assert.deepEqual(reads, [[0, 4], [4, 6]]);
    // Entries past the last read that do not make the checkpoint: read again from the CRL, and
    // an alarm as for a first read.
    const longer = make(["a", first, "b", "c", "d", "e", "f"]);
    const b64 = (t: string) => Buffer.from(t).toString("base64");
    reads.length = 0;
    await assert.rejects(
      alice.checkCrl(pem, proof(longer), {
        ...longer.ca,
        logEntries: (s: number, e: number) => (
          reads.push([s, e]),
            Promise.resolve((s === 6 ? ["g"] : ["b", "c", "d", "e", "g"]).map(b64))
        ),
      } as unknown as CaClient),
      alarmed,
    );
    assert.match(alice.alarms[0].message, /entries do not make its checkpoint of 7 entries/);
    assert.deepEqual(reads, [[6, 7], [2, 7]]);
  });
});

Deno.test("checkCrl() refuses the CRL it was reading if a larger log came meanwhile (gossip), as it would have before the read", async () => {
  await withViews(async ({ dir, anchor, make, crl }) => {
    const first = await crl([]);
    const small = make(["a", first, "b", "c"]);
    const larger = make(["a", first, "b", "c", "d", "e"]);
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, larger.ca);
    // While alice reads the entries after the CRL, a peer's hello brings the larger log.
    const slow = {
      ...small.ca,
      logEntries: async (s: number, e: number) => {
        await alice.observe(larger.checkpoint, undefined, '"bob"');
        return await small.ca.logEntries(s, e);
      },
    } as unknown as CaClient;
    const proof = logProofJson(1, small.tree.inclusionProof(1, small.tree.size), small.checkpoint);
    await assert.rejects(
      alice.checkCrl(pemEncode(first, "X509 CRL"), proof, slow),
      /proved its CRL in a log of 4 entries, smaller than the 6 this client holds/,
    );
  });
});

Deno.test("a split view is caught when the CA answers the consistency check of a peer's checkpoint with another refusal than a 400, or with a proof that is not hashes", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "b", "d", "e"]);
    const answers: Array<[string, () => Promise<unknown>]> = [
      // The service's code is the CA's word: a 404 (or any code) comes back as it says.
      [
        "a 404",
        () => Promise.reject(new E2eError("ERR_NOT_FOUND", "The CA refused: no such size")),
      ],
      ["hashes that are not base64", () => Promise.resolve(["not a hash"])],
      ["hashes that are not a list", () => Promise.resolve("x")],
    ];
    for (const [what, consistency] of answers) {
      const dishonest = { ...forAlice.ca, consistency } as unknown as CaClient;
      const alice = await LogMonitor.open(join(dir, `${what}.json`), anchor, dishonest);
      await alice.observe(forAlice.checkpoint);
      // Both checkpoints are signed by the log key: a CA that does not prove them consistent
      // (rather than being away) is evidence, as an out-of-range 400 is.
      await assert.rejects(alice.observePeer(forBob.checkpoint, "bob"), alarmed, what);
      assert.match(alice.alarms[0]?.message ?? "", /"bob" showed a log of 4 entries/, what);
    }
  });
});

Deno.test("a peer's checkpoint the CA still cannot prove at the next look is kept for the look after, not forgotten", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "x", "c", "d"]);
    // Away for the one question that would show the fork, answering everything else.
    const away = awayForConsistency(forAlice.ca);
    const file = join(dir, "alice.json");
    const alice = await LogMonitor.open(file, anchor, away);
    await alice.observe(forAlice.checkpoint);
    await assert.rejects(alice.observePeer(forBob.checkpoint, "bob"), unreachable);
    // The next look: the CA is still "away" for that question alone.
    const stillAway = await LogMonitor.open(file, anchor, away);
    await stillAway.watch("alice", "00").catch(() => {});
    assert.deepEqual(stillAway.alarms, []);
    // Back, the CA serves proofs of alice's view; bob's checkpoint is not consistent with it.
    const back = await LogMonitor.open(file, anchor, forAlice.ca);
    await assert.rejects(back.watch("alice", "00"), alarmed);
    assert.match(back.alarms[0].message, /"bob" showed a log of 4 entries/);
  });
});

// A CA that answers every look (its checkpoint, its entries, under our certificate) but says it
// is failing, busy, or refuses our certificate for the one question that would show the fork: the
// peer's checkpoint waits for ever and no alarm ever comes, while the client goes on using the CA.
Deno.test("a split view is caught when the CA answers every look but fails, is busy or refuses our certificate for the one consistency question that would show it, look after look", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "x", "c", "d"]);
    for (const code of ["ERR_INTERNAL", "ERR_RATE_LIMITED", "ERR_FORBIDDEN"] as const) {
      const selective = {
        ...forAlice.ca,
        consistency: () => Promise.reject(new E2eError(code, "The CA refused")),
      } as unknown as CaClient;
      const file = join(dir, `${code}.json`);
      const alice = await LogMonitor.open(file, anchor, selective);
      await alice.observe(forAlice.checkpoint);
      await alice.observePeer(forBob.checkpoint, "bob").catch(() => {});
      let alarms = alice.alarms;
      for (let look = 0; look < 20 && alarms.length === 0; look++) {
        const again = await LogMonitor.open(file, anchor, selective);
        await again.watch("alice", "00").catch(() => {});
        alarms = again.alarms;
      }
      assert.match(alarms[0]?.message ?? "", /"bob" showed a log of 4 entries/, code);
    }
  });
});

Deno.test("a look the CA answers but not the consistency question for a waiting checkpoint (500, 429, a 503) raises no alarm yet: it is counted in log.json with the checkpoint, and the alarm comes at the third", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "x", "c", "d"]);
    for (
      const failure of [
        new E2eError("ERR_INTERNAL", "The CA service failed (500): Internal error"),
        new E2eError("ERR_RATE_LIMITED", "The CA refused: too many requests"),
        new E2eError("ERR_NETWORK", "The CA service answered 503"),
      ]
    ) {
      const busy = {
        ...forAlice.ca,
        consistency: () => Promise.reject(failure),
      } as unknown as CaClient;
      const file = join(dir, `${failure.code}.json`);
      const alice = await LogMonitor.open(file, anchor, busy);
      await alice.observe(forAlice.checkpoint);
      await alice.observePeer(forBob.checkpoint, "bob").catch(() => {});
      for (let look = 1; look < MAX_DODGED_LOOKS; look++) {
        const again = await LogMonitor.open(file, anchor, busy);
        await again.watch("alice", "00");
        const saved = JSON.parse(await Deno.readTextFile(file));
        assert.deepEqual(
          [saved.alarms, saved.pending],
          [[], [{ text: forBob.checkpoint, from: '"bob"', dodged: look }]],
          failure.code,
        );
      }
      const last = await LogMonitor.open(file, anchor, busy);
      await assert.rejects(last.watch("alice", "00"), (e) => {
        assert.ok(e instanceof E2eError && e.code === "ERR_LOG_ALARM", failure.code);
        return true;
      });
      assert.match(last.alarms[0].message, /"bob" showed a log of 4 entries .* 3 looks in a row/);
    }
  });
});

Deno.test("checkCrl() refuses an older CRL the CA logs again after the newer one that revoked a certificate: it is not the newest CRL in the log", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const stolen = await issue("bob", (await makeCsr("bob")).key);
    const old = await crl([]);
    const revoking = await crl([stolen]);
    // The CA appends the older CRL (a genuine one, its signature good) once more.
    const log = make(["a", old, revoking, old]);
    const proof = logProofJson(3, log.tree.inclusionProof(3, 4), log.checkpoint);
    const carol = await LogMonitor.open(join(dir, "carol.json"), anchor, log.ca);
    await assert.rejects(
      carol.checkCrl(pemEncode(old, "X509 CRL"), proof, log.ca),
      (e) => e instanceof E2eError && e.code === "ERR_LOG_INVALID" && /rollback/.test(e.message),
    );
  });
});

Deno.test("watch() alarms when the CA logs again, after the CRL that revoked a previous enrollment of our name, an older CRL without it", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const { key: ours } = await makeCsr("bob");
    const stolen = await issue("bob", (await makeCsr("bob")).key);
    const own = await issue("bob", ours);
    const old = await crl([]);
    const revoking = await crl([stolen]);
    const log = make([stolen.der, own.der, old, revoking]);
    const bob = await LogMonitor.open(join(dir, "bob.json"), anchor, log.ca);
    assert.deepEqual((await bob.watch("bob", own.key)).foreign, []);
    // Appended again: the CRL members now take (the last one logged) no longer lists it.
    const relogged = make([stolen.der, own.der, old, revoking, old]);
    const later = await LogMonitor.open(join(dir, "bob.json"), anchor, relogged.ca);
    await assert.rejects(later.watch("bob", own.key), alarmed);
  });
});

Deno.test("a CRL logged after the one that revoked a previous enrollment of bob's, with the same number and without it, is refused by alice and raises bob's alarm", async () => {
  await withViews(async ({ dir, anchor, make, issue, crl }) => {
    const { key: ours } = await makeCsr("bob");
    // The CA's own key for bob's name, before bob's first: revoked, so bob's watcher excuses it.
    const planted = await issue("bob", (await makeCsr("bob")).key);
    const own = await issue("bob", ours);
    const crlnumber = join(dir, "ca", "ca", "crlnumber");
    const number = await Deno.readTextFile(crlnumber);
    const revoking = await crl([planted]);
    // The same number again (the CA sets its counter back), listing nothing.
    await Deno.writeTextFile(crlnumber, number);
    const twin = await crl([]);
    const before = make([planted.der, own.der, revoking]);
    const log = make([planted.der, own.der, revoking, twin]);
    const pem = (der: Uint8Array) => pemEncode(der, "X509 CRL");
    // Alice took the revoking CRL; the CA then serves her the twin, the last CRL in its log.
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, before.ca);
    await alice.checkCrl(
      pem(revoking),
      logProofJson(2, before.tree.inclusionProof(2, 3), before.checkpoint),
      before.ca,
    );
    await assert.rejects(
      alice.checkCrl(
        pem(twin),
        logProofJson(3, log.tree.inclusionProof(3, 4), log.checkpoint),
        log.ca,
      ),
      (e) => e instanceof E2eError && /ERR_LOG_(INVALID|ALARM)/.test(e.code),
    );
    // Bob's watcher: the CRL members now take does not list the planted certificate.
    const bob = await LogMonitor.open(join(dir, "bob.json"), anchor, log.ca);
    await assert.rejects(bob.watch("bob", own.key), alarmed);
  });
});

Deno.test("a peer's checkpoint waits, with no alarm, when the CA is busy or failing (429, 500, a 503 without the JSON body of a refusal) or refuses our own certificate", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "b", "d", "e"]);
    // As client/ca_client.ts reports each: what the service's reply says, or its status.
    const failures = [
      new E2eError("ERR_RATE_LIMITED", "The CA refused: too many requests"),
      new E2eError("ERR_INTERNAL", "The CA service failed (500): Internal error"),
      new E2eError("ERR_NETWORK", "The CA service answered 503"),
      new E2eError("ERR_FORBIDDEN", "The CA refused: the client certificate is revoked"),
    ];
    for (const failure of failures) {
      const busy = { ...forAlice.ca, consistency: () => Promise.reject(failure) };
      const file = join(dir, `${failure.code}.json`);
      const alice = await LogMonitor.open(file, anchor, busy as unknown as CaClient);
      await alice.observe(forAlice.checkpoint);
      await assert.rejects(alice.observePeer(forBob.checkpoint, "bob"), (e) => e === failure);
      const saved = JSON.parse(await Deno.readTextFile(file));
      assert.deepEqual(
        [saved.alarms, saved.pending],
        [[], [{ text: forBob.checkpoint, from: '"bob"' }]],
        failure.code,
      );
    }
  });
});

Deno.test("a peer's checkpoint another process of the home keeps waiting is not written over when this one saves (client lookup beside a chat)", async () => {
  await withViews(async ({ dir, anchor, make }) => {
    const small = make(["a", "b"]);
    const forAlice = make(["a", "b", "c"]);
    const forBob = make(["a", "x", "c", "d"]);
    const file = join(dir, "alice.json");
    await (await LogMonitor.open(file, anchor, small.ca)).observe(small.checkpoint);
    const lookup = await LogMonitor.open(file, anchor, forAlice.ca);
    // The chat of the same home keeps bob's checkpoint waiting: the CA did not answer.
    const away = awayForConsistency(forAlice.ca);
    const chat = await LogMonitor.open(file, anchor, away);
    await assert.rejects(chat.observePeer(forBob.checkpoint, "bob"), /Cannot reach/);
    // The lookup, which read the file before, then saves a checkpoint of its own.
    await lookup.observe(forAlice.checkpoint);
    const saved = JSON.parse(await Deno.readTextFile(file));
    assert.ok(saved.pending.some((p: { text: string }) => p.text === forBob.checkpoint));
    // Checked at the next look: the fork is caught, then no longer waits.
    const next = await LogMonitor.open(file, anchor, forAlice.ca);
    await assert.rejects(next.watch("alice", "00"), alarmed);
    assert.match(next.alarms[0].message, /"bob" showed a log of 4 entries/);
  });
});

Deno.test("checkCrl() raises an alarm for a CRL logged after one it took with the same number, and for an older CRL logged again after a newer one", async () => {
  await withViews(async ({ dir, anchor, make, crl }) => {
    const crlnumber = join(dir, "ca", "ca", "crlnumber");
    const number = await Deno.readTextFile(crlnumber);
    const first = await crl([]);
    await Deno.writeTextFile(crlnumber, number);
    const twin = await crl([]);
    const next = await crl([]);
    const pem = (der: Uint8Array) => pemEncode(der, "X509 CRL");
    const proof = (v: ReturnType<typeof make>, index: number) =>
      logProofJson(index, v.tree.inclusionProof(index, v.tree.size), v.checkpoint);
    const before = make(["a", first]);
    const after = make(["a", first, "b", twin]);
    const alice = await LogMonitor.open(join(dir, "alice.json"), anchor, after.ca);
    await alice.checkCrl(pem(first), proof(before, 1), before.ca);
    await assert.rejects(alice.checkCrl(pem(twin), proof(after, 3), after.ca), /rollback/);
    const n = BigInt(`0x${number.trim()}`);
    assert.match(alice.alarms[0]?.message ?? "", new RegExp(`CRL number ${n} \\(entry 3\\)`));
    // A client that judged no CRL yet reads the entries before the one served: the same.
    const relogged = make(["a", first, next, "b", first]);
    const carol = await LogMonitor.open(join(dir, "carol.json"), anchor, relogged.ca);
    await assert.rejects(carol.checkCrl(pem(first), proof(relogged, 4), relogged.ca), /rollback/);
    assert.match(carol.alarms[0]?.message ?? "", /\(entry 4\) after one numbered/);
    assert.throws(() => carol.requireNoAlarm(), alarmed);
  });
});
