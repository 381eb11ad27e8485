/**
 * The client's identity under `HOME/id/` (0700): `key.pem` (0600, never sent
 * anywhere; encrypted under a passphrase if the user chose one), `cert.pem`,
 * `ca.crt` (the pinned CA) and `identity.json`. Joining builds it in
 * `HOME/joining/` and renames it into place. A join refused before its key could
 * have been certified leaves nothing behind; one cut off after it sent its
 * request (a lost reply, a killed process) keeps its key there, and the next
 * join with the same invite goes on with that key, so a CA that did commit
 * answers with the same certificate (docs/API.md "POST /v1/enroll"); a join of
 * the same name at the same CA with another invite gives that key up. A key
 * `client csr` made in `HOME/id` (no identity there yet) is taken up by a join
 * the same way: copied to `HOME/joining` with the join's record; once certified,
 * `HOME/id` is emptied (the key first) and the identity renamed onto it. A join
 * killed in between leaves an `HOME/id` with no key and no record next to the
 * finished `HOME/joining`: the next join finishes it (whoami and chat say so). An
 * encrypted key is decrypted in memory only, for TLS and renewal.
 *
 * @module
 */
import { createHash, createPrivateKey, createPublicKey, hkdfSync } from "node:crypto";
import { dirname, join } from "node:path";
import { parseCsr } from "../lib/csr.ts";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, isAtomicTemp, syncDir, writeFileAtomic } from "../lib/fs.ts";
import { withLock } from "../lib/lock.ts";
import {
  encryptKey,
  generateKeyAndRequest,
  isEncryptedKey,
  isKeygenScratch,
  makeRequest,
  unlockKey,
} from "../lib/keys.ts";
import { pemDecode } from "../lib/pem.ts";
import { checkPeer, type Credentials, type TrustAnchor, trustAnchor } from "../lib/tls.ts";
import { type CertificateInfo, keyFingerprint, parseCertificate } from "../lib/x509.ts";
import {
  CaClient,
  type CertificateReply,
  fetchCaCertificate,
  fetchCrl,
  requestRefused,
  requestUnsent,
} from "./ca_client.ts";
import type { Invite } from "../lib/invite.ts";
import { CLIENT_KEY_TYPES, type ClientKeyType, clientKeyType } from "./keys.ts";
import { ClientHome, IdFolder } from "./home.ts";
import { Revocation } from "./revocation.ts";
import { LogMonitor } from "./transparency.ts";

/** What identity.json holds. */
interface IdentityRecord {
  name: string;
  caUrl: string;
  caFingerprint: string;
  keyType: ClientKeyType;
  /** In HOME/joining only: SHA-256 of the invite's token, hex (the key goes on with that invite only). */
  invite?: string;
}

/** Where the passphrase of an encrypted key comes from: asked only when the key is encrypted. */
export type PassphraseSource = () => Promise<string>;

/** Options of {@linkcode Identity.load}. */
export interface LoadOptions {
  /**
   * Gives the passphrase of an encrypted key; called only when the key is encrypted.
   * Default: none — an encrypted key then stays locked ({@linkcode Identity.credentials} throws),
   * which is enough for `whoami`.
   */
  passphrase?: PassphraseSource;
}

/** An enrolled client. */
export class Identity {
  /** HOME/id */
  readonly dir: string;
  /** Our user name. */
  readonly name: string;
  /** The CA service, https://HOST:PORT. */
  readonly caUrl: string;
  /** Our current certificate. */
  readonly certificate: CertificateInfo;
  /** The pinned CA. */
  readonly anchor: TrustAnchor;
  /** SHA-256 of the CA certificate. */
  readonly caFingerprint: string;
  /** Whether key.pem is encrypted under a passphrase. */
  readonly keyEncrypted: boolean;
  #key?: string;
  #cert: string;
  // Kept for renewal only: openssl needs it to sign a request with the encrypted key.
  #passphrase?: string;

  private constructor(
    dir: string,
    record: IdentityRecord,
    key: { pem?: string; encrypted: boolean; passphrase?: string },
    cert: string,
    ca: string,
  ) {
    this.dir = dir;
    this.name = record.name;
    this.caUrl = record.caUrl;
    this.caFingerprint = record.caFingerprint;
    this.keyEncrypted = key.encrypted;
    this.#key = key.pem;
    this.#passphrase = key.passphrase;
    this.#cert = cert;
    this.anchor = trustAnchor(ca);
    // Not checkPeer: an expired certificate must still load, so whoami can say it expired.
    this.certificate = parseCertificate(cert);
  }

  /**
   * Our key (unencrypted, in memory only) and certificate, PEM, for mutual TLS.
   * Throws `ERR_PASSPHRASE_REQUIRED` when the key is encrypted and was loaded without a passphrase.
   */
  get credentials(): Credentials {
    if (this.#key === undefined) {
      throw new E2eError("ERR_PASSPHRASE_REQUIRED", "Your key is encrypted and was not unlocked", {
        hint: "give its passphrase with --passphrase-file FILE, E2E_CHAT_PASSPHRASE or the prompt",
      });
    }
    return { key: this.#key, cert: this.#cert };
  }

  /**
   * The 32-byte key that seals the history (client/history.ts): HKDF-SHA256 over our private
   * key (PKCS#8 DER), so the passphrase that unlocks the key unlocks the history, and changing
   * the passphrase rewrites nothing else. Throws like {@linkcode credentials} while locked.
   */
  historyKey(): Uint8Array {
    const der = createPrivateKey(this.credentials.key).export({ type: "pkcs8", format: "der" });
    return new Uint8Array(hkdfSync("sha256", der, new Uint8Array(0), "e2e-chat history v1", 32));
  }

  /** The key file. */
  get keyPath(): string {
    return new IdFolder(this.dir).key;
  }
  /** The key file and its passphrase (if encrypted), for openssl runs that sign or decrypt with it (the mailbox). */
  keyFile(): { path: string; passphrase?: string } {
    return { path: this.keyPath, passphrase: this.#passphrase };
  }
  /** The certificate file. */
  get certPath(): string {
    return new IdFolder(this.dir).cert;
  }
  /** The pinned CA certificate file. */
  get caPath(): string {
    return new IdFolder(this.dir).caCert;
  }

  /**
   * Loads the identity under `home`; throws `ERR_NOT_ENROLLED` when there is none, and
   * `ERR_BAD_PASSPHRASE` when the passphrase given does not unlock an encrypted key.
   */
  static async load(home: string, options: LoadOptions = {}): Promise<Identity> {
    const { id } = new ClientHome(home);
    const dir = id.dir;
    let record: IdentityRecord;
    try {
      record = JSON.parse(await Deno.readTextFile(id.record));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new E2eError("ERR_NOT_ENROLLED", `No identity in "${dir}"`, {
          hint: await isCutJoin(new ClientHome(home))
            ? "a join was cut off while it put the identity in place: run the join again " +
              "(deno task client join, with the same invite) and it finishes"
            : await exists(id.key)
            ? `this home has a key (made by csr) but no identity yet: join with an invite for ` +
              `it, deno task client join, and the join uses that key`
            : "join first: deno task client join (it asks for the invite your admin gave you)",
        });
      }
      throw new E2eError("ERR_FILE", `Cannot read "${id.record}"`, { cause: e });
    }
    const encrypted = isEncryptedKey(await Deno.readTextFile(id.key));
    const passphrase = encrypted && options.passphrase ? await options.passphrase() : undefined;
    const pem = !encrypted || passphrase !== undefined
      ? await unlockKey(id.key, { passphrase, what: `your key "${id.key}"` })
      : undefined;
    return new Identity(
      dir,
      record,
      { pem, encrypted, passphrase },
      await Deno.readTextFile(id.cert),
      await Deno.readTextFile(id.caCert),
    );
  }

  /** A CA client authenticated as this identity. */
  client(): CaClient {
    return new CaClient(this.caUrl, this.anchor, this.credentials);
  }

  /**
   * Points this identity at the CA service's new address (`https://HOST:PORT`, from
   * `parseCaAddress()`) once that address has shown that it is our CA's service — its TLS
   * certificate comes from the pinned CA, as on every call — and that it knows us: its
   * directory holds our current certificate. Only then is identity.json rewritten, durably;
   * otherwise it throws and nothing changes. Returns the identity as it now loads.
   */
  async moveCa(caUrl: string): Promise<Identity> {
    const reply = await new CaClient(caUrl, this.anchor, this.credentials).lookup(this.name);
    let theirs: string | undefined;
    try {
      theirs = parseCertificate(reply.certificate).fingerprint;
    } catch { /* not a certificate: refused below */ }
    if (theirs !== this.certificate.fingerprint) {
      throw new E2eError(
        "ERR_PEER_REJECTED",
        `The CA service at ${caUrl} does not hold your current certificate: it is not where ` +
          `your CA moved`,
        { hint: "check the address with your admin; nothing was changed" },
      );
    }
    const file = new IdFolder(this.dir).record;
    const record: IdentityRecord = { ...JSON.parse(await Deno.readTextFile(file)), caUrl };
    await writeFileAtomic(file, JSON.stringify(record, null, 2) + "\n", { syncDir: true });
    const passphrase = this.#passphrase;
    return await Identity.load(dirname(this.dir), {
      passphrase: passphrase === undefined ? undefined : () => Promise.resolve(passphrase),
    });
  }

  /** Fraction of the certificate's lifetime still ahead (0 when expired). */
  lifeLeft(now = Date.now()): number {
    const { notBefore, notAfter } = this.certificate;
    return Math.max(0, (notAfter.getTime() - now) / (notAfter.getTime() - notBefore.getTime()));
  }

  /** The home this identity lives in. */
  get home(): ClientHome {
    return new ClientHome(dirname(this.dir));
  }

  /**
   * Whether a renewal's reply waits in `id/renewal.json` to be finished (its log check failed or
   * was cut off): a certificate from our CA for our name and key, newer than cert.pem's. The CA
   * superseded the certificate we hold then, so the next start finishes it first. Any other
   * reply (cert.pem took it up before a kill, or it is of no use) is removed, unless a renewal
   * of this home is under way (then the next renewal removes it).
   */
  async renewalPending(): Promise<boolean> {
    const folder = new IdFolder(this.dir);
    try {
      await Deno.lstat(folder.renewal);
    } catch {
      return false; // none (most starts): no lock taken, nothing written
    }
    const look = async (drop: boolean) => {
      const held = await this.#held(folder).catch(() => this.certificate);
      return await this.#keptRenewal(folder, held, held.keyFingerprint, drop) !== undefined;
    };
    // Under the renewal lock, which renew() holds, what is of no use is removed; a renewal under
    // way may hold it for a minute (its CA calls, its log check): then only a look, which
    // removes nothing that renewal may need.
    try {
      return await withLock(folder.renewalLock, () => look(true), { timeoutMs: 1_000 });
    } catch (e) {
      if (!(e instanceof E2eError && e.code === "ERR_LOCK_TIMEOUT")) throw e;
      return await look(false);
    }
  }

  /**
   * Gets a new certificate for the same key (so peers' pinned key fingerprints stay valid),
   * checked to be in the CA's issuance log, and stores it; returns the renewed identity (the
   * key stays unlocked).
   *
   * The CA's reply is kept in `id/renewal.json` (durably) before the log check: the CA
   * superseded the old certificate when it answered, so a failed check or a kill must not lose
   * the new one. Until the check passes it is not used: not in cert.pem, not presented to
   * peers, only to the CA for the check itself: when the check fails, `options.ca` presents
   * cert.pem's certificate again (which the CA now refuses, superseded). The next renewal
   * finishes it (checks it again) before it asks the CA for another.
   *
   * One renewal runs at a time in a home (a lock, `id/renewal.lock`, across processes); one that
   * waited while another renewed returns the identity that one stored, and asks the CA nothing.
   */
  async renew(options: RenewOptions = {}): Promise<Identity> {
    const { key } = this.credentials;
    const folder = new IdFolder(this.dir);
    // One renewal at a time per home (two chats, or a chat and `client renew`): the second one
    // would ask the CA again, and find renewal.json gone under it.
    return await withLock(folder.renewalLock, () => this.#renewLocked(folder, key, options));
  }

  async #renewLocked(folder: IdFolder, key: string, options: RenewOptions): Promise<Identity> {
    const held = await this.#held(folder);
    if (
      held.fingerprint !== this.certificate.fingerprint &&
      held.notAfter >= this.certificate.notAfter
    ) {
      // Another renewal of this home finished while this one waited (its log check passed
      // before it wrote cert.pem): take its certificate up, the CA superseded ours.
      const renewed = await this.#reload();
      options.ca?.useCredentials(renewed.credentials);
      return renewed;
    }
    const ours = ownKeyFingerprint(key);
    const kept = folder.renewal;
    let reply = await this.#keptRenewal(folder, held, ours);
    const fresh = !reply;
    let asked: AskedAttempt[] = [];
    let sentAt = 0;
    let skew: Skew | undefined;
    if (!reply) {
      const clock = options.clock ?? Date.now;
      const csr = await makeRequest(this.keyPath, this.name, { passphrase: this.#passphrase });
      // Each attempt is recorded (durably) before it is sent, with the earlier unanswered ones
      // with this certificate: a reply lost, then given again, is then known for the answer to
      // one of ours by when it was issued (earlierOf).
      asked = await askedWith(folder, held);
      sentAt = clock();
      const at = new Date(sentAt).toISOString();
      await writeAsked(folder, held.serial, [...asked, { at }]);
      let serviceDate: number | undefined;
      try {
        reply = await (options.ca ?? this.client()).renew(csr, {
          onServiceDate: (ms) => serviceDate = ms,
        });
      } catch (e) {
        // One that never reached the CA answers nothing, nor does one it refused (a 4xx: it
        // issued nothing for it): left, it would cover a thief's renewal made about then. One
        // that may have reached it ends now.
        const end = new Date(clock()).toISOString();
        const answered = requestUnsent(e) || requestRefused(e);
        await writeAsked(folder, held.serial, answered ? asked : [...asked, { at, end }])
          .catch(() => {}); // kept as written before the request: it then ends ATTEMPT_MS later
        throw e;
      }
      if (serviceDate !== undefined) skew = skewOf(serviceDate, sentAt, clock());
    }
    const cert = checkIssued(reply, this.anchor, this.name, ours);
    if (fresh) {
      // (Not the attempt just answered: what it got was issued before it was sent.)
      const earlier = earlierOf(reply, parseCertificate(cert), asked, sentAt, skew);
      reply = { ...reply, earlier };
      await writeFileAtomic(kept, JSON.stringify(reply) + "\n", { mode: 0o600, syncDir: true });
    }
    // Our own certificate too is accepted only once it is in the CA's issuance log.
    // (asked with the new certificate: the old one was just superseded)
    if (options.ca && options.log) {
      options.ca.useCredentials({ key, cert });
      try {
        await options.log.checkCertificate(pemDecode(cert, "CERTIFICATE")!, reply.log);
      } catch (e) {
        // Not proved logged, so not ours yet: the CA client presents what peers see, cert.pem's.
        options.ca.useCredentials(this.credentials);
        throw e;
      }
    } else {
      const ca = new CaClient(this.caUrl, this.anchor, { key, cert });
      await checkLogged(this.home, this.anchor, ca, cert, reply);
    }
    // The folder too: the CA has revoked the old certificate as superseded, so after a power
    // cut the file must not still be the old one.
    await writeFileAtomic(this.certPath, cert, { mode: 0o644, syncDir: true });
    await dropKept(folder);
    await dropFile(folder.renewalAsked, folder.dir);
    const earlier = keptEarlier(reply);
    const renewed = await this.#reload();
    if (earlier) options.onEarlier?.(earlier);
    return renewed;
  }

  // The certificate in cert.pem now (another process of the home may have renewed it).
  async #held(folder: IdFolder): Promise<CertificateInfo> {
    return parseCertificate(await Deno.readTextFile(folder.cert));
  }

  // This identity as it loads now, the key unlocked with the same passphrase.
  #reload(): Promise<Identity> {
    const passphrase = this.#passphrase;
    return Identity.load(dirname(this.dir), {
      passphrase: passphrase === undefined ? undefined : () => Promise.resolve(passphrase),
    });
  }

  // The reply of a renewal whose log check failed or was cut off, when it is still one to
  // finish: a valid certificate from our CA for our name and key (`ours`, its fingerprint),
  // other than `held`, cert.pem's, and not older (the CA may not give it again: our old
  // certificate may have expired meanwhile). Anything else is removed (cert.pem took it up
  // before a kill, or it is of no use): left, it would make each start renew, or fail while the
  // CA is away.
  // The kept reply, when it is one to finish; any other is removed, with `drop` (renew(), which
  // holds the renewal lock: a look from outside it removes nothing another renewal may need).
  async #keptRenewal(
    folder: IdFolder,
    held: CertificateInfo,
    ours: string,
    drop = true,
  ): Promise<KeptReply | undefined> {
    try {
      const reply: KeptReply = JSON.parse(await Deno.readTextFile(folder.renewal));
      const cert = parseCertificate(checkIssued(reply, this.anchor, this.name, ours));
      // (Not older: one issued in the same second as cert.pem's has the same end of validity.)
      if (cert.fingerprint !== held.fingerprint && cert.notAfter >= held.notAfter) return reply;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
    }
    if (drop) await dropKept(folder);
    return undefined;
  }
}

// Removes id/renewal.json, durably: a reply cert.pem holds, or one of no use. Failures are let
// go (another renewal removed it already, say): a reply left is dropped at the next look.
function dropKept(folder: IdFolder): Promise<void> {
  return dropFile(folder.renewal, folder.dir);
}

async function dropFile(file: string, dir: string): Promise<void> {
  try {
    await Deno.remove(file);
    await syncDir(dir);
  } catch { /* see dropKept */ }
}

/**
 * What id/renewal-asked.json holds: the renewals asked for with cert.pem's certificate (its
 * serial) that got no answer yet, the first and the last {@linkcode MAX_ASKED} of them, oldest
 * first.
 */
interface AskedRecord {
  /** The serial of the certificate they were asked with. */
  serial: string;
  attempts: AskedAttempt[];
}

/** One request for a renewal, by this home's clock. */
interface AskedAttempt {
  /** When it was sent (recorded just before), ISO 8601. */
  at: string;
  /** When it failed, ISO 8601; none while it is under way, or when the process was killed. */
  end?: string;
}

/** A renewal's reply as id/renewal.json keeps it: with what it was found to be when it came. */
type KeptReply = CertificateReply & { earlier?: { issuedAt: string; asked: boolean } };

/**
 * A certificate a renewal got that the CA issued before the request (docs/API.md "POST
 * /v1/renew"): signed for an earlier request with our key, ours or someone else's.
 */
export interface EarlierCertificate {
  /** When the CA issued it. */
  issuedAt: Date;
  /**
   * Whether this home had asked for a renewal with the same certificate then (while one of its
   * requests that may have reached the CA was under way), and had no answer (a reply lost):
   * false means a renewal this home did not make (docs/SECURITY.md).
   */
  asked: boolean;
}

// How far the CA's clock (its issuance time) may be from this home's (the record's) for a
// certificate it issued to still count as the answer to a request of ours: issued from the
// request's sending to its end, give or take this much. Wider, a thief's renewal made about then
// goes untold; narrower, a member whose clock is that far off is told of its own lost reply as of
// a theft (docs/SECURITY.md "Renewal by someone else"). This much when the service's reply had no
// Date header (the clocks' difference unknown: a service that sends none is not ours).
const CLOCK_ALLOWANCE_MS = 2 * 60_000;
// The same once the difference is measured on the reply (its Date header: skewOf): what is left
// is this home's clock drifting or being set between an attempt and the reply, and the seconds
// the CA's times are rounded to.
const MEASURED_ALLOWANCE_MS = 30_000;
// The longest renewal request whose reply measures the clocks' difference (skewOf).
const MAX_ROUND_TRIP_MS = 20_000;
// How long a request whose end was not recorded (a kill) may have been under way: connection,
// the CRL fetch it may need, and the request, each with its 15 s timeout, and some more.
const ATTEMPT_MS = 60_000;
// How many unanswered attempts are kept at each end (a chat retries with a backoff of up to 30
// minutes): the first ones, since the CA issues one certificate for the first request of ours that
// reaches it and answers every later one with that (its reply may have been lost hours of
// attempts ago), and the last ones, under way or just failed.
const MAX_ASKED = 8;
// An older service does not say a certificate was issued before the request: one valid from
// over an hour before it was sent was (the CA backdates its certificates by five minutes).
const OLD_SERVICE_MS = 60 * 60_000;
const BACKDATE_MS = 5 * 60_000;

// The unanswered renewals this home asked for with `held` (none when the record is of another).
async function askedWith(folder: IdFolder, held: CertificateInfo): Promise<AskedAttempt[]> {
  let record: Partial<AskedRecord> & { at?: unknown };
  try {
    record = JSON.parse(await Deno.readTextFile(folder.renewalAsked));
  } catch {
    return []; // none, or unreadable: as if none (then written anew)
  }
  if (record?.serial !== held.serial) return [];
  // (An earlier version kept only the first attempt's time, as `at`.)
  const attempts: unknown[] = Array.isArray(record.attempts)
    ? record.attempts
    : [{ at: record.at }];
  return keptAttempts(attempts.filter((a): a is AskedAttempt => {
    const { at, end } = (a ?? {}) as Record<string, unknown>;
    return typeof at === "string" && !Number.isNaN(Date.parse(at)) &&
      (end === undefined || (typeof end === "string" && !Number.isNaN(Date.parse(end))));
  }));
}

// The attempts kept of `attempts` (oldest first): the first and the last MAX_ASKED.
function keptAttempts(attempts: AskedAttempt[]): AskedAttempt[] {
  if (attempts.length <= 2 * MAX_ASKED) return attempts;
  return [...attempts.slice(0, MAX_ASKED), ...attempts.slice(-MAX_ASKED)];
}

// Writes id/renewal-asked.json, durably; with no attempts, removes it.
async function writeAsked(folder: IdFolder, serial: string, attempts: AskedAttempt[]) {
  if (attempts.length === 0) return await dropFile(folder.renewalAsked, folder.dir);
  const record: AskedRecord = { serial, attempts: keptAttempts(attempts) };
  await writeFileAtomic(folder.renewalAsked, JSON.stringify(record) + "\n", {
    mode: 0o600,
    syncDir: true,
  });
}

/**
 * The CA's clock minus this home's, ms, as measured on one reply: at least `min`, at most `max`
 * (the reply's Date was read somewhere between the request's sending and its reply's arrival).
 */
interface Skew {
  min: number;
  max: number;
}

// The skew a reply dated `serviceDate` (the service's Date header, to the second) shows, for a
// request sent at `sentAt` whose reply came at `receivedAt` (this home's clock, ms); none when the
// round trip took over MAX_ROUND_TRIP_MS: whoever slowed it (a thief on the path, say) would widen
// the window it measures (then the clocks' difference is unknown, as with no Date at all).
function skewOf(serviceDate: number, sentAt: number, receivedAt: number): Skew | undefined {
  if (receivedAt - sentAt > MAX_ROUND_TRIP_MS) return undefined;
  return { min: serviceDate - receivedAt, max: serviceDate + 1_000 - sentAt };
}

// Whether `reply`, for our key, was issued before its request (sent at `sentAt`, ms), and, if so,
// whether it answers one of this home's earlier unanswered requests (`asked`): issued while one
// was under way, compared in the CA's time (`skew`, measured on the reply: none when it had no
// Date header), give or take what is left of the clocks' difference. Never one issued before any
// was sent: that cannot be the answer to a request of ours.
function earlierOf(
  reply: CertificateReply,
  cert: CertificateInfo,
  asked: AskedAttempt[],
  sentAt: number,
  skew: Skew | undefined,
): KeptReply["earlier"] {
  const { min, max } = skew ?? { min: 0, max: 0 };
  const allowance = skew ? MEASURED_ALLOWANCE_MS : CLOCK_ALLOWANCE_MS;
  let issuedAt: number | undefined;
  if (typeof reply.issuedEarlier === "string" && !Number.isNaN(Date.parse(reply.issuedEarlier))) {
    issuedAt = Date.parse(reply.issuedEarlier);
  } else if (cert.notBefore.getTime() < sentAt + min - OLD_SERVICE_MS) {
    issuedAt = cert.notBefore.getTime() + BACKDATE_MS;
  }
  if (issuedAt === undefined) return undefined;
  // Each attempt as the CA's clock had it: no wider than its length, the reply's round trip and
  // the allowance. (The CA's Date moves it only as the CA's issuedEarlier could: see SECURITY.md.)
  const ours = asked.some(({ at, end }) => {
    const from = Date.parse(at);
    const to = end === undefined ? from + ATTEMPT_MS : Date.parse(end);
    return issuedAt >= from + min - allowance && issuedAt <= to + max + allowance;
  });
  return { issuedAt: new Date(issuedAt).toISOString(), asked: ours };
}

// What the kept reply was found to be when it came.
function keptEarlier(reply: KeptReply): EarlierCertificate | undefined {
  const earlier = reply.earlier;
  if (!earlier || Number.isNaN(Date.parse(earlier.issuedAt))) return undefined;
  return { issuedAt: new Date(earlier.issuedAt), asked: earlier.asked === true };
}

/** Options of {@linkcode Identity.renew}. */
export interface RenewOptions {
  /**
   * A running client's CA client: it asks for the renewal and moves to the new certificate for
   * its log check (the CA refuses the old one from then on), and back to cert.pem's when that
   * check fails. Default: a new one.
   */
  ca?: CaClient;
  /**
   * A running client's view of the issuance log (using `ca`), which checks that the new
   * certificate is logged; with both, HOME/log.json has one writer. Default: HOME/log.json
   * opened afresh.
   */
  log?: LogMonitor;
  /**
   * Called, once the certificate is stored, when the CA answered with one it had issued before
   * the request: a lost reply given again (`asked`), or a renewal this home did not make, which
   * the user must hear of (client/ca_client.ts unaskedRenewalWords). Default: none.
   */
  onEarlier?: (earlier: EarlierCertificate) => void;
  /**
   * This home's clock, ms, for the times of its renewal attempts (id/renewal-asked.json) and for
   * measuring how far the CA's clock is from it. Tests set one off the CA's. Default: `Date.now`.
   */
  clock?: () => number;
}

/** Options of {@linkcode enroll}. */
export interface JoinOptions {
  /** Key type. Default: "ec-p256" (an unfinished join's key keeps its own type). */
  keyType?: ClientKeyType;
  /**
   * Encrypt the new key under this passphrase (scrypt, AES-256; lib/keys.ts); it also unlocks
   * the key of an unfinished join, or encrypts it if it is not. Default: unencrypted.
   */
  passphrase?: string;
}

/**
 * Enrolls with an invite: fetch the CA certificate and refuse it unless its
 * fingerprint is the invite's, and the CRL, and refuse a service whose
 * certificate it lists or that sends none signed within the last 3 h (all
 * before the token is sent: client/revocation.ts); make the key and
 * request locally (meanwhile); enroll; check what came back, and that it is in
 * the CA's issuance log; store it all under `HOME/id`, durably. The key of an
 * unfinished join with the same invite (`HOME/joining`) is used instead of a
 * new one: the CA may have issued its certificate already, and answers a retry
 * with it for that key only (one for the same name and CA made with another
 * invite is given up). One join runs at a time in a
 * home: another one waits a second for it, then throws `ERR_LOCK_TIMEOUT`.
 *
 * @example
 * ```ts
 * import { enroll } from "./identity.ts";
 * import { parseInvite } from "../lib/invite.ts";
 * const identity = await enroll("/tmp/alice", parseInvite(Deno.args[0]));
 * ```
 */
export async function enroll(
  home: string,
  invite: Invite,
  options: JoinOptions = {},
): Promise<Identity> {
  await ensurePrivateDir(home);
  // One join at a time in a home (a flock on the folder itself): a second one would take the
  // first one's unfinished key folder for its own, or remove it while that key's request is signed.
  let entered = false;
  await withLock(home, () => {
    entered = true;
    return joinLocked(home, invite, options);
  }, { timeoutMs: JOIN_LOCK_WAIT_MS }).catch((e) => {
    if (entered || !(e instanceof E2eError) || e.code !== "ERR_LOCK_TIMEOUT") throw e;
    throw new E2eError(e.code, `Another join runs in "${home}"`, {
      hint: "wait for it to end, then run this join again if it failed",
    });
  });
  const { passphrase } = options;
  return await Identity.load(home, {
    passphrase: passphrase === undefined ? undefined : () => Promise.resolve(passphrase),
  });
}

// How long a join waits for another one in the same home before it gives up, ms.
const JOIN_LOCK_WAIT_MS = 1_000;

async function joinLocked(home: string, invite: Invite, options: JoinOptions): Promise<void> {
  const { id, joining: staged } = new ClientHome(home);
  const dir = id.dir;
  const { passphrase } = options;
  if (await finishCutJoin(home, invite)) return;
  // A key `client csr` made here (README, "The CA in five commands"): the join goes on with it.
  const byHand = await isCsrKey(id);
  if (!byHand && await exists(dir) && !await removedIfEmpty(dir)) {
    throw new E2eError("ERR_FILE", `"${dir}" already exists: this home has an identity or a key`, {
      hint: "use another --home (or E2E_CHAT_HOME) for another identity",
    });
  }
  const pending = await pendingJoin(staged, invite) ??
    (byHand ? await takeCsrKey(id, staged, invite, passphrase) : undefined);
  if (byHand && await Deno.readTextFile(staged.key) !== await Deno.readTextFile(id.key)) {
    throw new E2eError(
      "ERR_FILE",
      `"${staged.dir}" holds the key of an unfinished join, and "${id.key}" another key`,
      { hint: `finish that join with its invite, or remove "${staged.dir}" to give it up` },
    );
  }
  const record: IdentityRecord = {
    name: invite.name,
    caUrl: invite.caUrl,
    caFingerprint: invite.fingerprint,
    keyType: pending?.keyType ?? options.keyType ?? "ec-p256",
  };
  // The key and request are made (one openssl process) while the CA is fetched and pinned:
  // nothing is sent before the fingerprint matched, and the other core is not idle meanwhile.
  const made = pending
    ? requestAgain(staged, invite.name, passphrase)
    : newKey(staged, { ...record, invite: inviteHash(invite) }, passphrase);
  made.catch(() => {}); // awaited below, also on failure
  // The CRL too, meanwhile: signed by the CA, it is checked once the CA is pinned. A service
  // certificate it lists (a superseded or revoked service key someone kept, on the path to the
  // service) is refused before the token goes, and so is an old CRL (one from before that key's
  // revocation, replayed), as by every later call (client/ca_client.ts checkServiceRevocation).
  const crl = fetchCrl(invite.caUrl);
  crl.catch(() => {}); // awaited below, also on failure
  let sent = false;
  let refused = false;
  try {
    const caPem = await fetchCaCertificate(invite.caUrl, invite.fingerprint);
    const anchor = trustAnchor(caPem);
    const crlPem = await crl;
    const revocation = new Revocation({
      fetch: () => Promise.resolve(crlPem),
      issuer: anchor.x509,
    });
    await revocation.ensureRecent();
    const service = (own?: Credentials) => {
      const ca = new CaClient(invite.caUrl, anchor, own);
      ca.checkServiceRevocation(revocation);
      return ca;
    };
    const { csr, key, encrypted } = await made;
    sent = true;
    const reply = await service().enroll(invite.token, csr).catch((e) => {
      refused = isRefusal(e);
      throw e;
    });
    const cert = checkIssued(reply, anchor, invite.name, ownKeyFingerprint(key));
    await checkLogged(new ClientHome(home), anchor, service({ key, cert }), cert, reply);
    // Durable before the rename makes them the identity (the key already is). Replaced, not
    // created: a join killed after writing them left them for this one.
    await Promise.all([
      writeFileAtomic(staged.cert, cert),
      writeFileAtomic(staged.caCert, caPem),
      writeFileAtomic(staged.record, JSON.stringify(record, null, 2) + "\n"),
      // An unfinished join's key was not encrypted, this one asks for it to be.
      encrypted || passphrase === undefined
        ? undefined
        : writeFileAtomic(staged.key, await encryptKey(key, passphrase), { mode: 0o600 }),
    ]);
    await Deno.chmod(staged.dir, 0o700);
    await syncDir(staged.dir);
    // The key `csr` made is in the staged folder too, durably: its folder is emptied (the key
    // first) and the identity renamed onto it. A join killed meanwhile leaves an id/ with no key
    // and no record next to the finished joining/, which the next join finishes (finishCutJoin).
    if (byHand) await emptyFolder(id);
    await Deno.rename(staged.dir, dir);
    await syncDir(home);
  } catch (e) {
    await made.catch(() => {});
    // A key is kept once a request with it may have been signed: the retry needs the same key.
    // Only a new key that went nowhere, or whose one request the CA refused, is dropped.
    // (A copy of the key `csr` made goes too: the key is still in HOME/id.)
    if ((!pending || byHand) && (!sent || refused)) {
      await Deno.remove(staged.dir, { recursive: true }).catch(() => {});
    }
    // The key was here before this join (csr made it, or an earlier join): the CA refuses it
    // when a certificate for it was revoked as compromised (ca/authority.ts checkRequest).
    if (refused && pending && e instanceof E2eError && /keyCompromise/.test(e.message)) {
      const old = byHand ? dir : staged.dir;
      throw new E2eError(
        "ERR_KEY_REJECTED",
        `The CA refuses the key in "${old}": a certificate for it was revoked as compromised, ` +
          "and it is never certified again",
        {
          cause: e,
          hint: "join with a new key: use another --home (or E2E_CHAT_HOME), or remove " +
            `"${old}" (the old key) and run this join again with the same invite`,
        },
      );
    }
    throw e;
  }
}

// The record of an unfinished join in `folder` that `invite` goes on with: the same invite. One
// for the same name at the same CA made with another invite is given up: the new invite replaces
// what the old one issued, and a key whose certificate the admin revoked (say, as compromised)
// must not be certified again. A key for another name or CA is left alone (it may be all that
// proves a certificate is ours).
async function pendingJoin(folder: IdFolder, invite: Invite): Promise<IdentityRecord | undefined> {
  // A request goes out only once the key and the record are both durable: without either, no
  // request was ever sent, and the folder is given up.
  if (!await exists(folder.key)) return undefined;
  let record: Partial<IdentityRecord> | undefined;
  try {
    record = JSON.parse(await Deno.readTextFile(folder.record));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      await Deno.remove(folder.dir, { recursive: true });
      return undefined;
    }
    /* refused below */
  }
  if (
    record?.name === invite.name && record.caFingerprint === invite.fingerprint &&
    CLIENT_KEY_TYPES.includes(record.keyType as ClientKeyType)
  ) {
    // (A record without one comes from a client before this rule: its invite is not known.)
    if ((record.invite ?? inviteHash(invite)) === inviteHash(invite)) {
      return record as IdentityRecord;
    }
    await Deno.remove(folder.dir, { recursive: true });
    return undefined;
  }
  throw new E2eError(
    "ERR_FILE",
    `"${folder.dir}" holds the key of an unfinished join for another name or CA`,
    {
      hint: `finish that join (run it again), or remove "${folder.dir}" to give it up; ` +
        "or use another --home (or E2E_CHAT_HOME)",
    },
  );
}

// A new key in `folder`, with the record that binds it to one name at one CA (written at the
// same time): both durable, and the folder's name in HOME, before a request with the key goes
// anywhere.
async function newKey(
  folder: IdFolder,
  record: IdentityRecord,
  passphrase: string | undefined,
): Promise<{ csr: string; key: string; encrypted: boolean }> {
  await ensurePrivateDir(folder.dir, { durable: true });
  const [, made] = await Promise.all([
    writeFileAtomic(folder.record, JSON.stringify(record, null, 2) + "\n", { syncDir: true }),
    generateKeyAndRequest(folder.key, record.name, { type: record.keyType, passphrase }),
  ]);
  return { ...made, encrypted: passphrase !== undefined };
}

// Whether `folder` is what a join killed while it emptied the folder of the key `client csr` made
// left: the folder is there, with no key and no record (perhaps the request), and HOME/joining
// next to it.
async function isCutJoin(home: ClientHome): Promise<boolean> {
  const { id, joining } = home;
  return await exists(id.dir) && await exists(joining.dir) && !await exists(id.key) &&
    !await exists(id.record);
}

// Finishes a join killed while it put the identity in place (isCutJoin): what is left in id/ goes;
// a finished identity in joining/ for this invite's name and CA is renamed onto it (true), else the
// join goes on from joining/ as from any unfinished join (false).
async function finishCutJoin(root: string, invite: Invite): Promise<boolean> {
  const home = new ClientHome(root);
  if (!await isCutJoin(home)) return false;
  const { id, joining } = home;
  let record: Partial<IdentityRecord> | undefined;
  try {
    record = JSON.parse(await Deno.readTextFile(joining.record));
  } catch { /* no record: not finished */ }
  const finished = record?.name === invite.name && record.caFingerprint === invite.fingerprint &&
    await exists(joining.key) && await exists(joining.cert) && await exists(joining.caCert);
  await emptyFolder(id);
  if (!finished) {
    await Deno.remove(id.dir);
    await syncDir(root);
    return false;
  }
  await Deno.rename(joining.dir, id.dir);
  await syncDir(root);
  return true;
}

// Removes `dir` when it is an empty folder (made by hand, or left by a crash before anything was
// written in it): no identity. What a write cut short leaves (writeFileAtomic's temporary file,
// generateKey's scratch folder: a client csr killed before its key's link) is no identity either,
// and goes first. True when it went; false when it holds something else (or is no folder), which
// the caller refuses. One rmdir: nothing written in it meanwhile is lost.
async function removedIfEmpty(dir: string): Promise<boolean> {
  if (!(await Deno.lstat(dir)).isDirectory) return false;
  const left: Array<{ path: string; folder: boolean }> = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && isAtomicTemp(entry.name)) {
      left.push({ path: join(dir, entry.name), folder: false });
    } else if (entry.isDirectory && isKeygenScratch(entry.name)) {
      left.push({ path: join(dir, entry.name), folder: true });
    } else return false;
  }
  for (const { path, folder } of left) {
    await Deno.remove(path, { recursive: folder }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
  try {
    await Deno.remove(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true;
    return false;
  }
  return true;
}

// Removes what `folder` holds, its key first, leaving the folder itself (empty). Synchronous:
// a few small files, removed in this order (tests/join_retry_test.ts kills a join between two).
async function emptyFolder(folder: IdFolder): Promise<void> {
  try {
    Deno.removeSync(folder.key);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  for (const entry of Deno.readDirSync(folder.dir)) {
    Deno.removeSync(join(folder.dir, entry.name), { recursive: true });
  }
  await syncDir(folder.dir);
}

// Whether `folder` holds only what `client csr` made: a key (and its request), no identity.
async function isCsrKey(folder: IdFolder): Promise<boolean> {
  return await exists(folder.key) && !await exists(folder.record) && !await exists(folder.cert);
}

// The key `client csr` made in `id`, copied (with the record binding it to `invite`, both durable)
// into `staged` as an unfinished join's: the join then goes on with it as with its own. The copy
// in `id` stays until the identity takes its place, so the key has a copy on disk throughout.
async function takeCsrKey(
  id: IdFolder,
  staged: IdFolder,
  invite: Invite,
  passphrase: string | undefined,
): Promise<IdentityRecord> {
  // The key was made for the name in its request (`client csr NAME`), and the CA may have signed
  // it for that name already: it is not certified for another one too.
  const made = await csrName(id);
  if (made !== undefined && made !== invite.name) {
    throw new E2eError(
      "ERR_CSR_NAME_MISMATCH",
      `The key in "${id.dir}" was made for ${JSON.stringify(made)} (client csr), ` +
        `not for "${invite.name}", whose invite this is`,
      {
        hint: `join as "${invite.name}" in another --home (or E2E_CHAT_HOME): that makes a new ` +
          `key; this home's key stays ${JSON.stringify(made)}'s`,
      },
    );
  }
  let key: string;
  try {
    key = await unlockKey(id.key, { passphrase, what: `the key "${id.key}" that csr made` });
  } catch (e) {
    if (!(e instanceof E2eError) || e.code !== "ERR_PASSPHRASE_REQUIRED") throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      hint: "join with the passphrase you gave csr (--encrypt-key, --passphrase-file FILE or " +
        "E2E_CHAT_PASSPHRASE)",
    });
  }
  const keyType = clientKeyType(createPrivateKey(key));
  const record: IdentityRecord = {
    name: invite.name,
    caUrl: invite.caUrl,
    caFingerprint: invite.fingerprint,
    keyType,
    invite: inviteHash(invite),
  };
  await ensurePrivateDir(staged.dir, { durable: true });
  await writeFileAtomic(staged.key, await Deno.readTextFile(id.key), { mode: 0o600 });
  await writeFileAtomic(staged.record, JSON.stringify(record, null, 2) + "\n", { syncDir: true });
  return record;
}

// The name `client csr` made the key in `id` for (the request's one common name), or undefined
// when there is no request there to say (or it names none, or several).
async function csrName(id: IdFolder): Promise<string | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(id.csr);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    const names = parseCsr(text).commonNames;
    return names.length === 1 ? names[0] : undefined;
  } catch {
    return undefined; // not a request we can read: the CA checks what it signs
  }
}

// The client key type of `key`; throws for a key `client csr` does not make.
function inviteHash(invite: Invite): string {
  return createHash("sha256").update(invite.token).digest("hex");
}

// A new request from the key an unfinished join left in `folder`.
async function requestAgain(
  folder: IdFolder,
  name: string,
  passphrase: string | undefined,
): Promise<{ csr: string; key: string; encrypted: boolean }> {
  const encrypted = isEncryptedKey(await Deno.readTextFile(folder.key));
  let key: string;
  try {
    key = await unlockKey(folder.key, {
      passphrase,
      what: `the key of your unfinished join "${folder.key}"`,
    });
  } catch (e) {
    if (!(e instanceof E2eError) || e.code !== "ERR_PASSPHRASE_REQUIRED") throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      hint: "join again with the passphrase you gave the first time (--encrypt-key)",
    });
  }
  const csr = await makeRequest(folder.key, name, {
    passphrase: encrypted ? passphrase : undefined,
  });
  return { csr, key, encrypted };
}

// The refusals of POST /v1/enroll (docs/API.md), each sent before anything is signed. Any other
// answer may come after the commit: a lost or cut-off reply, or a 5xx, whatever its code (a commit
// whose issuance log append failed answers 500 with the log's code).
const ENROLL_REFUSALS: ReadonlySet<string> = new Set([
  "ERR_BAD_REQUEST",
  "ERR_DER_INVALID",
  "ERR_CSR_INVALID",
  "ERR_CSR_SIGNATURE",
  "ERR_CSR_NAME_MISMATCH",
  "ERR_KEY_REJECTED",
  "ERR_NAME_INVALID",
  "ERR_TOKEN_INVALID",
  "ERR_METHOD_NOT_ALLOWED",
  "ERR_TOO_LARGE",
  "ERR_UNSUPPORTED_MEDIA_TYPE",
  "ERR_RATE_LIMITED",
]);

// Whether the CA answered an enrollment with a refusal: then it issued nothing for it.
function isRefusal(e: unknown): boolean {
  return e instanceof E2eError && ENROLL_REFUSALS.has(e.code);
}

async function checkLogged(
  home: ClientHome,
  anchor: TrustAnchor,
  ca: CaClient,
  cert: string,
  reply: CertificateReply,
): Promise<void> {
  const monitor = await LogMonitor.open(home.logState, anchor, ca);
  await monitor.checkCertificate(pemDecode(cert, "CERTIFICATE")!, reply.log);
}

// SHA-256 of the public key of `keyPem`, a private key.
function ownKeyFingerprint(keyPem: string): string {
  return keyFingerprint(createPublicKey(createPrivateKey(keyPem)));
}

// What the CA sent must be ours: issued by the pinned CA, for our name, for our key (`ours`, its
// fingerprint).
function checkIssued(
  reply: CertificateReply,
  anchor: TrustAnchor,
  name: string,
  ours: string,
): string {
  const der = typeof reply?.certificate === "string"
    ? pemDecode(reply.certificate, "CERTIFICATE")
    : null;
  try {
    return checkPeer(der, anchor, { name, keyFingerprint: ours }).pem;
  } catch (e) {
    throw new E2eError("ERR_PEER_REJECTED", "The CA returned a certificate that is not ours", {
      cause: e,
      detail: e instanceof E2eError ? e.detail : undefined,
    });
  }
}
