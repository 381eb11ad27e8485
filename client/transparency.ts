/**
 * What a client checks of the CA's issuance log (docs/TRANSPARENCY.md):
 *
 * - every certificate it accepts — a peer's, and its own after join or renew —
 *   comes with a proof that it is in the log, against a checkpoint signed by
 *   the CA-certified log key (fail closed);
 * - every checkpoint it sees (from the CA, or in a peer's hello) is consistent
 *   with the largest one it stored, so the log only grows and everybody sees
 *   the same log;
 * - the log's entries, read as they come, make the checkpoint's root, and none
 *   is a certificate for our name with a key that is not ours (logged after the
 *   first of our key's, whatever the CRL says; before it, a previous enrollment
 *   is harmless once expired or revoked).
 *
 * Cryptographic evidence against the CA is an alarm: kept in HOME/log.json so
 * it survives a restart, reported as `log_alarm`, and no new connection is made
 * while it stands. A CA that cannot be reached is not evidence: checks fail
 * closed but raise no alarm.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { type Checkpoint, type NoteKey, openCheckpoint } from "../lib/checkpoint.ts";
import { E2eError } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/fs.ts";
import { withLock } from "../lib/lock.ts";
import { MAX_CHECKPOINT_CHARS } from "../lib/frames.ts";
import { decodeHashes, logOrigin, verifyLogProof } from "../lib/log_proof.ts";
import { leafHash, TreeFrontier, verifyConsistency } from "../lib/merkle.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { checkLogKey, type TrustAnchor } from "../lib/tls.ts";
import { parseCertificate, sha256Hex } from "../lib/x509.ts";
import type { CaClient } from "./ca_client.ts";

/** Evidence that the CA misbehaved. */
export interface LogAlarm {
  /** What was found, for people. */
  message: string;
  /** The serial of the certificate concerned, if one is. */
  serial?: string;
  /** The SHA-256 of that certificate. */
  fingerprint?: string;
}

/** What a look through the log's entries found. */
export interface AuditResult {
  /** Entries read. */
  entries: number;
  /** The checkpoint's size. */
  size: number;
  /** Certificates for our name with a key that is not ours (the first {@linkcode MAX_ALARMS}). */
  foreign: Array<{ index: number; serial: string; fingerprint: string }>;
}

/** What HOME/log.json holds. */
interface LogState {
  /** The largest checkpoint seen, as signed. */
  checkpoint?: string;
  /** The frontier of the entries read so far (their tree's right edge). */
  audited: { size: number; hashes: string[] };
  /**
   * Where among those entries the first certificate for our name with our key is (`index`
   * absent: not among them yet). Without it (a state an earlier version wrote, or one for
   * another key), the next look reads the log again from its first entry.
   */
  own?: { name: string; key: string; index?: number };
  /** Standing alarms. */
  alarms: LogAlarm[];
  /** SHA-256 of the log key first seen (pinned: another one is an alarm). */
  logKey?: string;
  /** Peers' checkpoints that could not be checked yet (the CA was away), checked again later. */
  pending: Array<{ text: string; from: string }>;
}

/** Entries asked for at once (the CA answers at most 256). */
const PAGE = 256;
/** Peers' checkpoints kept for a later check. */
const MAX_PENDING = 8;
/**
 * Alarms kept, and certificates listed in one look's {@linkcode AuditResult.foreign}. One is
 * enough to stop new connections; past this, one more alarm says that others were not kept, so
 * a CA that signs a flood of evidence cannot grow HOME/log.json (written, and fsynced, for
 * each) or the alarms shown at every start without bound.
 */
export const MAX_ALARMS = 64;

/** Options of {@linkcode LogMonitor.watch} and {@linkcode LogMonitor.audit}. */
export interface LookOptions {
  /** Whether the CA's current CRL lists `serial`. Default: nothing is revoked. */
  isRevoked?: (serial: string) => boolean;
}

/** Options of {@linkcode LogMonitor.open}. */
export interface LogMonitorOptions {
  /** Called once for each new alarm. Default: none. */
  onAlarm?: (alarm: LogAlarm) => void;
}

/** One client's view of the CA's issuance log. */
export class LogMonitor {
  #file: string;
  #anchor: TrustAnchor;
  #ca: CaClient;
  #options: LogMonitorOptions;
  #state: LogState;
  #key?: NoteKey;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    file: string,
    anchor: TrustAnchor,
    ca: CaClient,
    state: LogState,
    options: LogMonitorOptions,
  ) {
    this.#file = file;
    this.#anchor = anchor;
    this.#ca = ca;
    this.#state = state;
    this.#options = options;
  }

  /**
   * The monitor whose state is kept in `file` (HOME/log.json), for the CA behind
   * `ca` and `anchor`. Nothing is fetched yet.
   *
   * @example
   * ```ts
   * import { Identity } from "./identity.ts";
   * import { LogMonitor } from "./transparency.ts";
   * const id = await Identity.load("/tmp/alice");
   * const monitor = await LogMonitor.open(id.home.logState, id.anchor, id.client());
   * const found = await monitor.watch("alice", id.certificate.keyFingerprint);
   * console.log(found.foreign); // [] unless the CA issued "alice" to someone else
   * ```
   */
  static async open(
    file: string,
    anchor: TrustAnchor,
    ca: CaClient,
    options: LogMonitorOptions = {},
  ): Promise<LogMonitor> {
    let state: LogState = { audited: { size: 0, hashes: [] }, alarms: [], pending: [] };
    try {
      const read = JSON.parse(await Deno.readTextFile(file));
      const audited = read.audited && Number.isSafeInteger(read.audited.size) &&
          Array.isArray(read.audited.hashes)
        ? read.audited
        : state.audited;
      state = {
        checkpoint: typeof read.checkpoint === "string" ? read.checkpoint : undefined,
        audited,
        own: ownIn(read.own, audited.size),
        alarms: alarmsIn(read),
        logKey: typeof read.logKey === "string" ? read.logKey : undefined,
        pending: Array.isArray(read.pending)
          ? read.pending.filter((p: unknown) =>
            typeof (p as { text?: unknown })?.text === "string" &&
            typeof (p as { from?: unknown })?.from === "string"
          ).slice(-MAX_PENDING)
          : [],
      };
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new E2eError("ERR_FILE", `Cannot read "${file}"`, { cause: e });
      }
    }
    return new LogMonitor(file, anchor, ca, state, options);
  }

  /** The largest checkpoint seen (sent to peers in our hello), if any. */
  get latest(): string | undefined {
    return this.#state.checkpoint;
  }

  /** The alarms raised so far (and not cleared by hand). */
  get alarms(): LogAlarm[] {
    return [...this.#state.alarms];
  }

  /** Throws `ERR_LOG_ALARM` while an alarm stands: no new connections then. */
  requireNoAlarm(): void {
    const alarm = this.#state.alarms[0];
    if (alarm) {
      throw new E2eError("ERR_LOG_ALARM", `Refused: the CA's issuance log raised an alarm`, {
        hint: alarm.message,
      });
    }
  }

  /**
   * Accepts the certificate `der` only with a valid proof that it is in the log
   * (and a checkpoint consistent with ours). Throws `ERR_LOG_INVALID` otherwise.
   */
  async checkCertificate(der: Uint8Array, proof: unknown): Promise<void> {
    const key = await this.#logKey();
    let checkpoint: Checkpoint;
    try {
      checkpoint = verifyLogProof(der, proof, key);
    } catch (e) {
      if (e instanceof E2eError && e.code === "ERR_LOG_INVALID" && e.detail?.startsWith("index ")) {
        // A checkpoint signed by the log key with a path that leads elsewhere: the CA lies.
        await this.#raise({
          message: "the CA sent a certificate with a log proof that does not verify",
          fingerprint: sha256Hex(der),
        }).catch(() => {});
      }
      throw e;
    }
    await this.observe((proof as { checkpoint: string }).checkpoint, checkpoint);
  }

  /**
   * Takes a checkpoint seen somewhere (the CA, a peer's hello): it must be signed
   * by the log key and consistent with the largest one stored, which it replaces
   * when larger. Inconsistency raises an alarm and throws `ERR_LOG_ALARM`.
   */
  observe(text: string, opened?: Checkpoint, from = "the CA"): Promise<void> {
    return this.#serial(async () => {
      const key = await this.#logKey();
      const next = opened ?? openCheckpoint(text, key);
      // Signed by the log key yet too long for a hello: it could not be gossiped, so gossip
      // would be off without anyone noticing.
      if (text.length > MAX_CHECKPOINT_CHARS) {
        await this.#raise({
          message: `the CA signed a checkpoint of ${text.length} characters, too long to share ` +
            `with peers (at most ${MAX_CHECKPOINT_CHARS})`,
        });
        this.requireNoAlarm();
      }
      const stored = this.#state.checkpoint
        ? openCheckpoint(this.#state.checkpoint, key)
        : undefined;
      if (stored) {
        const [small, big] = next.size < stored.size ? [next, stored] : [stored, next];
        let consistent: boolean;
        if (small.size === big.size) {
          consistent = Buffer.from(small.root).equals(Buffer.from(big.root));
        } else {
          let proof: unknown;
          try {
            proof = await this.#ca.consistency(small.size, big.size);
          } catch (e) {
            // Both sizes are signed by the log key: a CA that says one is out of range (rather
            // than being away) will not prove what it signed.
            if (!(e instanceof E2eError && e.code === "ERR_BAD_REQUEST")) throw e;
            proof = undefined;
          }
          consistent = proof !== undefined &&
            verifyConsistency(small.size, big.size, small.root, big.root, decodeHashes(proof));
        }
        if (!consistent) {
          await this.#raise({
            message:
              `${from} showed a log of ${next.size} entries that is not consistent with the ` +
              `${stored.size} entries seen before: the CA shows different logs to different people, ` +
              `or rewrote its log`,
          });
          this.requireNoAlarm();
        }
        if (next.size <= stored.size) return;
      }
      this.#state.checkpoint = text;
      await this.#save();
    });
  }

  /**
   * Takes a peer's checkpoint (from its hello). One that cannot be checked now
   * because the CA is away is kept and checked at the next {@linkcode watch}.
   */
  async observePeer(text: string, peer: string): Promise<void> {
    try {
      await this.observe(text, undefined, `"${peer}"`);
    } catch (e) {
      if (e instanceof E2eError && e.code === "ERR_NETWORK") {
        await this.#serial(async () => {
          this.#state.pending = [...this.#state.pending, { text, from: `"${peer}"` }]
            .slice(-MAX_PENDING);
          await this.#save();
        });
      }
      throw e;
    }
  }

  /**
   * Reads the log's entries since the last look, checks that they make the
   * CA's latest checkpoint, and looks for certificates for `name` with a key
   * other than `keyFingerprint`, raising an alarm for each: for every one
   * logged after the first certificate of `keyFingerprint`, and for an earlier
   * one (a previous enrollment) unless it expired or `isRevoked` says so.
   */
  watch(name: string, keyFingerprint: string, options: LookOptions = {}): Promise<AuditResult> {
    return this.#look(name, keyFingerprint, false, options);
  }

  /** Like {@linkcode watch}, but reads the whole log from its first entry and rebuilds the tree. */
  audit(name: string, keyFingerprint: string, options: LookOptions = {}): Promise<AuditResult> {
    return this.#look(name, keyFingerprint, true, options);
  }

  async #look(
    name: string,
    keyFingerprint: string,
    whole: boolean,
    options: LookOptions,
  ): Promise<AuditResult> {
    const text = await this.#ca.checkpoint();
    const key = await this.#logKey();
    const checkpoint = openCheckpoint(text, key);
    await this.observe(text, checkpoint);
    for (const p of this.#state.pending.splice(0)) {
      await this.observe(p.text, undefined, p.from).catch((e) => {
        if (e instanceof E2eError && e.code === "ERR_LOG_ALARM") throw e;
      });
    }
    return await this.#serial(async () => {
      const own = this.#state.own;
      // Where our key's first certificate is must be known for the entries read before: else
      // (a state an earlier version wrote, another key) they are read again.
      const fromStart = whole || own?.name !== name || own.key !== keyFingerprint;
      const start = fromStart ? new TreeFrontier() : new TreeFrontier(
        this.#state.audited.size,
        this.#state.audited.hashes.map((h) => new Uint8Array(Buffer.from(h, "base64"))),
      );
      let ownFirst = fromStart ? undefined : own?.index;
      if (start.size > checkpoint.size) {
        return { entries: 0, size: checkpoint.size, foreign: [] };
      }
      const frontier = start;
      const foreign: AuditResult["foreign"] = [];
      const now = Date.now();
      let read = 0;
      while (frontier.size < checkpoint.size) {
        const end = Math.min(frontier.size + PAGE, checkpoint.size);
        const page = await this.#ca.logEntries(frontier.size, end);
        if (page.length === 0) throw new E2eError("ERR_LOG_INVALID", "The CA sent no log entries");
        for (const b64 of page.slice(0, end - frontier.size)) {
          const der = new Uint8Array(Buffer.from(b64, "base64"));
          const index = frontier.size;
          frontier.append(leafHash(der));
          read++;
          let info;
          try {
            info = parseCertificate(pemEncode(der, "CERTIFICATE"));
          } catch {
            continue; // not a certificate: still a leaf, and it must still hash to the root
          }
          if (info.commonName !== name) continue;
          if (info.keyFingerprint === keyFingerprint) {
            ownFirst ??= index;
            continue;
          }
          // Another key for our name, logged before our key's first certificate, is a previous
          // enrollment (a lost key replaced by a new invite): harmless once it expired, or was
          // revoked, as peers then refuse it. One logged after it is a misissuance whatever the
          // CRL says: the CRL is the CA's word, not in the log, and a CA can list a certificate
          // on the CRL it serves us alone while showing it to our peers as ours.
          if (
            ownFirst === undefined &&
            (info.notAfter.getTime() <= now || options.isRevoked?.(info.serial))
          ) continue;
          if (foreign.length < MAX_ALARMS) {
            foreign.push({ index, serial: info.serial, fingerprint: info.fingerprint });
          }
        }
      }
      if (!Buffer.from(frontier.root()).equals(Buffer.from(checkpoint.root))) {
        await this.#raise({
          message: `the log's entries do not make its checkpoint of ${checkpoint.size} entries: ` +
            `the CA serves entries other than those it signed`,
        });
        this.requireNoAlarm();
      }
      for (const f of foreign) {
        await this.#raise({
          message: `the CA issued a certificate for your name that you did not request ` +
            `(serial ${f.serial}, fingerprint ${f.fingerprint})`,
          serial: f.serial,
          fingerprint: f.fingerprint,
        });
      }
      this.#state.audited = {
        size: frontier.size,
        hashes: frontier.hashes.map((h) => Buffer.from(h).toString("base64")),
      };
      this.#state.own = { name, key: keyFingerprint, index: ownFirst };
      await this.#save();
      return { entries: read, size: checkpoint.size, foreign };
    });
  }

  async #logKey(): Promise<NoteKey> {
    if (!this.#key) {
      const pem = await this.#ca.logKey();
      const info = checkLogKey(pemDecode(pem, "CERTIFICATE"), this.#anchor);
      // Pinned on first use: a second CA-certified log key could sign a second log.
      if (this.#state.logKey && this.#state.logKey !== info.keyFingerprint) {
        await this.#raise({
          message:
            `the CA's log key changed (now ${info.keyFingerprint}): a second key can sign a ` +
            `second log`,
          fingerprint: info.fingerprint,
        });
        this.requireNoAlarm();
      }
      if (!this.#state.logKey) {
        this.#state.logKey = info.keyFingerprint;
        await this.#save();
      }
      this.#key = { name: logOrigin(sha256Hex(this.#anchor.x509.raw)), key: info.x509.publicKey };
    }
    return this.#key;
  }

  async #raise(alarm: LogAlarm): Promise<void> {
    if (this.#state.alarms.some((a) => a.message === alarm.message)) return;
    if (this.#state.alarms.length > MAX_ALARMS) return; // the last one says so
    if (this.#state.alarms.length === MAX_ALARMS) {
      alarm = {
        message: `more alarms were raised than the ${MAX_ALARMS} kept: the others are not shown`,
      };
    }
    this.#state.alarms.push(alarm);
    await this.#save();
    this.#options.onAlarm?.(alarm);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  async #save(): Promise<void> {
    // Other processes of this home (a chat, and a lookup or an audit run beside it) write this
    // file too: one writer at a time, each merging what the others wrote since it read the file.
    // (A lock file of its own: a join holds the home folder's lock while it writes this file.)
    await withLock(`${this.#file}.lock`, async () => {
      let onDisk: { alarms?: unknown; checkpoint?: unknown; logKey?: unknown } | null = null;
      try {
        onDisk = JSON.parse(await Deno.readTextFile(this.#file));
      } catch {
        // None, or unreadable: open() said so, and what is held is written.
      }
      // Alarms are only ever added (cleared by hand): one found there is kept, not written over
      // (it now stands here too).
      for (const alarm of alarmsIn(onDisk)) {
        if (this.#state.alarms.length > MAX_ALARMS) break;
        if (!this.#state.alarms.some((a) => a.message === alarm.message)) {
          this.#state.alarms.push(alarm);
        }
      }
      if (typeof onDisk?.checkpoint === "string") this.#merge(onDisk.checkpoint);
      if (typeof onDisk?.logKey === "string") this.#state.logKey ??= onDisk.logKey;
      // The folder too: a state rolled back by a power cut (a smaller checkpoint, an alarm gone,
      // no log key pinned) would let the CA show us a fork of the log undetected.
      await writeFileAtomic(this.#file, JSON.stringify(this.#state, null, 2) + "\n", {
        mode: 0o600,
        syncDir: true,
      });
    });
  }

  // The checkpoint another process of this home stored since we read the file (a lookup that
  // started before a chat took a larger one, say): the larger of it and ours is kept, so the
  // stored checkpoint never goes back. The two were each checked against an earlier one, not
  // against each other: the one not kept waits with the peers' checkpoints, and the next look
  // checks it against the one kept (an alarm if they fork).
  #merge(theirs: string): void {
    const ours = this.#state.checkpoint;
    if (theirs === ours) return;
    // No log key yet: nothing was taken since open() read the file, so theirs is only newer.
    if (!this.#key || ours === undefined) {
      this.#state.checkpoint = theirs;
      return;
    }
    let size: number;
    try {
      size = openCheckpoint(theirs, this.#key).size;
    } catch {
      return; // not signed by the log key: not a checkpoint, and ours is written over it
    }
    let kept: number;
    try {
      kept = openCheckpoint(ours, this.#key).size;
    } catch {
      this.#state.checkpoint = theirs; // ours, as open() read it, is no checkpoint
      return;
    }
    const other = size > kept ? ours : theirs;
    if (size > kept) this.#state.checkpoint = theirs;
    if (!this.#state.pending.some((p) => p.text === other)) {
      this.#state.pending = [...this.#state.pending, { text: other, from: "the CA" }]
        .slice(-MAX_PENDING);
    }
  }
}

// Where a parsed HOME/log.json says our key's first certificate is among the `size` entries read,
// if it says so soundly.
function ownIn(own: unknown, size: number): LogState["own"] {
  const { name, key, index } = (own ?? {}) as { name?: unknown; key?: unknown; index?: unknown };
  if (typeof name !== "string" || typeof key !== "string") return undefined;
  if (index === undefined) return { name, key };
  return Number.isSafeInteger(index) && (index as number) >= 0 && (index as number) < size
    ? { name, key, index: index as number }
    : undefined;
}

// The well-formed alarms of a parsed HOME/log.json: a stray value must not hide the others.
function alarmsIn(read: { alarms?: unknown } | null): LogAlarm[] {
  return Array.isArray(read?.alarms)
    ? read.alarms.filter((a: unknown) =>
      typeof a === "object" && a !== null && typeof (a as LogAlarm).message === "string"
    ).slice(0, MAX_ALARMS + 1)
    : [];
}
