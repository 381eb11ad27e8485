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
 *   is harmless once expired, or while the newest CRL in the log lists it);
 * - the CRL it uses is in the log too ({@linkcode LogMonitor.loggedCrl}): with an
 *   inclusion proof, not older than the newest CRL in the log it has seen, and
 *   signed within 70 min (the CA re-signs hourly);
 * - CRL numbers in the log increase: a CRL logged after one numbered as high is
 *   evidence (it can take a revocation back from those who take the last CRL).
 *
 * Cryptographic evidence against the CA is an alarm: kept in HOME/log.json so
 * it survives a restart, reported as `log_alarm`, and no new connection is made
 * while it stands. A CA that cannot be reached (or is busy, or failing) is not
 * evidence: checks fail closed but raise no alarm. A CA that answers, but not
 * with a proof of what its log key signed, is; so is one that answers our looks
 * but, look after look, not the one question that would show a fork.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { type Checkpoint, type NoteKey, openCheckpoint } from "../lib/checkpoint.ts";
import {
  CRL_CLOCK_SKEW_MS,
  CRL_REPUBLISH_MS,
  looksLikeCrl,
  normalizeSerialHex,
  parseCrlDer,
  type RevocationList,
} from "../lib/crl.ts";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/fs.ts";
import { withLock } from "../lib/lock.ts";
import { MAX_CHECKPOINT_CHARS } from "../lib/frames.ts";
import { decodeHashes, logOrigin, verifyLogProof } from "../lib/log_proof.ts";
import { frontierBefore, leafHash, TreeFrontier, verifyConsistency } from "../lib/merkle.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { checkLogKey, type TrustAnchor } from "../lib/tls.ts";
import { parseCertificate, sha256Hex } from "../lib/x509.ts";
import { type CaClient, requestUnsent, type ServiceRevocation } from "./ca_client.ts";
import { SERVICE_CRL_WINDOW_MS } from "./revocation.ts";

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
  own?: { name: string; key: string; index?: number; crls?: boolean };
  /** Standing alarms. */
  alarms: LogAlarm[];
  /** SHA-256 of the log key first seen (pinned: another one is an alarm). */
  logKey?: string;
  /**
   * Peers' checkpoints that could not be checked yet (the CA was away), checked again later;
   * `dodged`: the looks in which the CA answered (its checkpoint, its entries) but not the
   * consistency question for this one (absent: none).
   */
  pending: Array<{ text: string; from: string; dodged?: number }>;
  /**
   * The newest CRL in the log seen (read by a look, or proved with a CRL taken): its number
   * (decimal), leaf index and leaf hash (base64). `{}`: none yet. Absent (a state an earlier
   * version wrote): the next look reads the log from its first entry.
   */
  crl?: { number?: string; index?: number; hash?: string };
  /**
   * Certificates for our name with another key logged before our own key's first (previous
   * enrollments), not expired: each must be on the newest CRL in the log, checked again at
   * every newer one, until it expires.
   */
  previous: Array<{ index: number; serial: string; fingerprint: string; notAfter: number }>;
}

/** Entries asked for at once (the CA answers at most 256). */
const PAGE = 256;
/** Peers' checkpoints kept for a later check. */
const MAX_PENDING = 8;
/**
 * Looks in which the CA answers (its checkpoint, its entries, under our certificate) but not the
 * consistency question for a waiting checkpoint, before that is an alarm: a CA that fails, is busy
 * or refuses our certificate for that one question, look after look, hides a fork for ever.
 */
export const MAX_DODGED_LOOKS = 3;
/** Waiting checkpoints checked, remembered: another process's copy of the list brings none back. */
const MAX_CHECKED = 8 * MAX_PENDING;
/**
 * Alarms kept, and certificates listed in one look's {@linkcode AuditResult.foreign}. One is
 * enough to stop new connections; past this, one more alarm says that others were not kept, so
 * a CA that signs a flood of evidence cannot grow HOME/log.json (written, and fsynced, for
 * each) or the alarms shown at every start without bound.
 */
export const MAX_ALARMS = 64;

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
  /** Waiting checkpoints checked here (the last MAX_CHECKED), not taken back from the file. */
  #checked: string[] = [];
  /**
   * The CRL last taken (its leaf index and hash) and the frontier of the log read after it,
   * which holds no later CRL: the next {@linkcode checkCrl} of the same CRL reads on from there.
   */
  #crlRead?: { index: number; hash: string; number: bigint; frontier: TreeFrontier };

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
    let state: LogState = {
      audited: { size: 0, hashes: [] },
      alarms: [],
      pending: [],
      previous: [],
    };
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
        pending: pendingIn(read.pending),
        crl: crlIn(read.crl),
        previous: previousIn(read.previous),
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
    return this.#serial(() => this.#observe(text, opened, from, this.#ca));
  }

  /**
   * The CA's CRL as members use it (PEM): the newest CRL in the issuance log,
   * fetched with its inclusion proof (`GET /v1/log/crl`), and taken only as
   * {@linkcode checkCrl} says. Asked without requiring a recent CRL first
   * (`CaClient.forCrl`): this is how a client gets one. Throws `ERR_PEER_REJECTED`
   * against a CA service too old to log its CRLs.
   */
  async loggedCrl(): Promise<string> {
    const { crl, log } = await this.#ca.forCrl().loggedCrl();
    await this.checkCrl(crl, log);
    return crl;
  }

  /**
   * Takes the CRL `pem` only when the CA signed it, it has a CRL number, `proof`
   * shows it in the log at a checkpoint consistent with ours, and it is not older
   * than the newest CRL in the log seen before (by a look through the entries, or
   * with an earlier CRL), nor followed in that log by a later CRL, nor signed over
   * `CRL_REPUBLISH_MS` + `CRL_CLOCK_SKEW_MS` ago (lib/crl.ts): each is a rollback
   * (`ERR_LOG_INVALID`, no alarm; the CRL held is kept, ask again). Evidence
   * against the CA (a fork, entries that do not make the checkpoint) raises an
   * alarm as elsewhere; so does a CRL whose number is not above that of every
   * CRL logged before it (read here too, unless a look or an earlier check read
   * them), which is refused as a rollback (`ERR_LOG_INVALID`). What
   * is asked of the service here is asked as every call asks it
   * (client/ca_client.ts), against this CRL — the service's certificate not on
   * it, and it signed recently. The log's entries are read outside
   * the queue of the other checks; the same CRL again reads only those past the
   * ones read last time. `ca` replaces that client (tests).
   */
  async checkCrl(pem: string, proof: unknown, ca?: CaClient): Promise<void> {
    const der = typeof pem === "string" ? pemDecode(pem, "X509 CRL") : null;
    if (!der) throw new E2eError("ERR_LOG_INVALID", "The CA sent no CRL with its log proof");
    const crl = parseCrlDer(der, this.#anchor.x509);
    if (crl.number === undefined) {
      throw new E2eError("ERR_PEER_REJECTED", "The CRL was rejected", {
        detail: "it has no CRL number",
      });
    }
    const number = crl.number;
    const asked = ca ?? this.#ca.forCrl(serviceCheck(crl));
    const leaf = leafHash(der);
    const hash = base64(leaf);
    const { checkpoint, index, hashes, key } = await this.#serial(async () => {
      const key = await this.#logKey(asked);
      let checkpoint: Checkpoint;
      try {
        checkpoint = verifyLogProof(der, proof, key);
      } catch (e) {
        // Its words are a certificate's: this is a CRL.
        if (!(e instanceof E2eError && e.code === "ERR_LOG_INVALID")) throw e;
        throw new E2eError("ERR_LOG_INVALID", e.message.replace(/^The certificate/, "The CRL"), {
          detail: e.detail,
        });
      }
      const { index, checkpoint: text, hashes } = proof as {
        index: number;
        checkpoint: string;
        hashes: unknown;
      };
      await this.#observe(text, checkpoint, "the CA", asked);
      this.#requireHeldAtMost(checkpoint.size, key);
      return { checkpoint, index, hashes, key };
    });
    // After the proof: one too old to clear the service is refused by what that asks of it,
    // which says so. The CA signs its CRL again before it would answer with one an hour old
    // (ca/api.ts): an older one is a CRL it has since replaced, proved in a prefix of its log
    // that ends before the replacement (consistent with what we hold: nothing else tells).
    const age = Date.now() - crl.thisUpdate.getTime();
    if (age > CRL_REPUBLISH_MS + CRL_CLOCK_SKEW_MS) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `Refused the CA's CRL number ${number}: signed ${Math.round(age / 60_000)} min ago, ` +
          `and the CA signs a new one every ${CRL_REPUBLISH_MS / 60_000} min`,
        { hint: "the CRL held is kept; ask again later: the CA must serve its newest CRL" },
      );
    }
    // Read outside #serial: certificate checks and gossip do not wait behind the CA's pages.
    // The same CRL again (every minute, as a rule): only the entries past those read last time,
    // from their frontier; the root then links the two logs (the one read is a prefix of this).
    const known = this.#crlRead;
    const resumed = known?.index === index && known.hash === hash &&
      known.frontier.size <= checkpoint.size;
    let read = resumed
      ? await this.#readCrls(
        new TreeFrontier(known.frontier.size, known.frontier.hashes),
        checkpoint.size,
        asked,
        { highest: { number, index }, after: index },
      )
      : await this.#readAround({ leaf, index, number }, checkpoint.size, hashes, asked);
    if (resumed && !Buffer.from(read.frontier.root()).equals(Buffer.from(checkpoint.root))) {
      // Not an extension of what was read: judged as a first read would judge it.
      read = await this.#readAround({ leaf, index, number }, checkpoint.size, hashes, asked);
    }
    const { frontier, order } = read;
    await this.#serial(async () => {
      // Again: a larger log may have come meanwhile (gossip, another answer of the CA's).
      this.#requireHeldAtMost(checkpoint.size, key);
      if (!Buffer.from(frontier.root()).equals(Buffer.from(checkpoint.root))) {
        await this.#raise({
          message: `the log's entries do not make its checkpoint of ${checkpoint.size} ` +
            `entries: the CA serves entries other than those it signed`,
        });
        this.requireNoAlarm();
      }
      // The entries make the signed checkpoint: CRLs out of order among them are the CA's own
      // evidence. So is this CRL logged after one taken or looked at before (in a log consistent
      // with this one) whose number is not lower: the same number with another list, say.
      const stored = this.#state.crl;
      if (
        stored?.number !== undefined && stored.index !== undefined && stored.index < index &&
        number <= BigInt(stored.number)
      ) {
        order.disorder ??= { index, number, after: BigInt(stored.number) };
      }
      if (order.disorder) await this.#raise({ message: crlDisorder(order.disorder) });
      if (order.disorder?.index === index) {
        throw new E2eError(
          "ERR_LOG_INVALID",
          `Refused the CA's CRL number ${number}: the issuance log holds one logged before it ` +
            `with number ${order.disorder.after}, so serving this one is a rollback`,
          { hint: "the CA's issuance log raised an alarm" },
        );
      }
      if (order.later !== undefined) {
        throw new E2eError(
          "ERR_LOG_INVALID",
          `Refused the CA's CRL number ${number}: the issuance log holds a later one (number ` +
            `${order.later}), so serving this one is a rollback`,
          { hint: "ask again: the CA must serve its newest CRL" },
        );
      }
      this.#crlRead = { index, hash, number, frontier };
      const newest = this.#state.crl?.number;
      if (newest !== undefined && number < BigInt(newest)) {
        throw new E2eError(
          "ERR_LOG_INVALID",
          `Refused the CA's CRL number ${number}: the issuance log holds a newer one (number ` +
            `${newest}), so serving this one is a rollback`,
          { hint: "ask again: the CA must serve its newest CRL" },
        );
      }
      if (newest === undefined || number > BigInt(newest)) {
        this.#state.crl = { number: String(number), index, hash };
        await this.#save();
      }
    });
  }

  // The log read around the CRL `crl` (leaf hash, index, number) in a log of `size` entries: the
  // entries before it that no look nor CRL check read yet (a client that judged none reads them
  // all, once), the CRL, and the entries after it. Where a look or the last CRL's check read past
  // `index`, they judged the CRLs before it: the read starts after it, from its inclusion proof.
  async #readAround(
    crl: { leaf: Uint8Array; index: number; number: bigint },
    size: number,
    hashes: unknown,
    ca: CaClient,
  ): Promise<{ frontier: TreeFrontier; order: CrlOrder }> {
    const { leaf, index, number } = crl;
    const audited = this.#state.own?.crls ? this.#state.audited : { size: 0, hashes: [] };
    const last = this.#crlRead;
    if (audited.size > index || (last && last.frontier.size > index)) {
      return await this.#readCrls(this.#frontierOf(leaf, index, size, hashes), size, ca, {
        highest: { number, index },
        after: index,
      });
    }
    // From the larger of the two prefixes read; the CRL the last check took is the highest of its.
    const start = last && last.frontier.size >= audited.size
      ? { frontier: last.frontier, highest: { number: last.number, index: last.index } }
      : {
        frontier: new TreeFrontier(
          audited.size,
          audited.hashes.map((h) => new Uint8Array(Buffer.from(h, "base64"))),
        ),
        highest: undefined,
      };
    return await this.#readCrls(
      new TreeFrontier(start.frontier.size, start.frontier.hashes),
      size,
      ca,
      { highest: start.highest, after: index },
    );
  }

  // The frontier of the log up to and including the CRL with leaf hash `leaf` at `index`, from
  // its inclusion proof in a log of `size` entries.
  #frontierOf(leaf: Uint8Array, index: number, size: number, hashes: unknown): TreeFrontier {
    const frontier = frontierBefore(index, size, decodeHashes(hashes));
    frontier.append(leaf);
    return frontier;
  }

  // Appends the log's entries from `frontier.size` to `size` to `frontier`, noting in `order` the
  // CRLs the CA signed among them.
  async #readCrls(
    frontier: TreeFrontier,
    size: number,
    ca: CaClient,
    order: CrlOrder,
  ): Promise<{ frontier: TreeFrontier; order: CrlOrder }> {
    while (frontier.size < size) {
      const page = await ca.logEntries(frontier.size, size);
      if (page.length === 0) throw new E2eError("ERR_LOG_INVALID", "The CA sent no log entries");
      for (const b64 of page.slice(0, size - frontier.size)) {
        const entry = new Uint8Array(Buffer.from(b64, "base64"));
        const index = frontier.size;
        frontier.append(leafHash(entry));
        const crl = signedCrlOf(entry, this.#anchor);
        if (crl) noteCrl(order, crl.number, index);
      }
    }
    return { frontier, order };
  }

  async #observe(
    text: string,
    opened: Checkpoint | undefined,
    from: string,
    ca: CaClient,
  ): Promise<void> {
    const key = await this.#logKey(ca);
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
    const stored = this.#state.checkpoint ? openCheckpoint(this.#state.checkpoint, key) : undefined;
    if (stored) {
      const [small, big] = next.size < stored.size ? [next, stored] : [stored, next];
      let consistent: boolean;
      if (small.size === big.size) {
        consistent = Buffer.from(small.root).equals(Buffer.from(big.root));
      } else {
        let hashes: Uint8Array[] | undefined;
        try {
          hashes = decodeHashes(await ca.consistency(small.size, big.size));
        } catch (e) {
          // Both sizes are signed by the log key: a CA that answers without a proof of them (a
          // refusal of any code, hashes that are not hashes) will not prove what it signed. Only
          // a CA that did not answer (unanswered) leaves the question open.
          if (!(e instanceof E2eError) || unanswered(e)) throw e;
          hashes = undefined;
        }
        consistent = hashes !== undefined &&
          verifyConsistency(small.size, big.size, small.root, big.root, hashes);
      }
      if (!consistent) {
        await this.#raise({
          message: `${from} showed a log of ${next.size} entries that is not consistent with the ` +
            `${stored.size} entries seen before: the CA shows different logs to different people, ` +
            `or rewrote its log`,
        });
        this.requireNoAlarm();
      }
      if (next.size <= stored.size) return;
    }
    this.#state.checkpoint = text;
    await this.#save();
  }

  /**
   * Takes a peer's checkpoint (from its hello). One that cannot be checked now
   * because the CA does not answer (away, busy, failing) is kept and checked at
   * the next {@linkcode watch}, and at each one after until the CA answers (an
   * alarm after {@linkcode MAX_DODGED_LOOKS} looks the CA answered but not that).
   */
  async observePeer(text: string, peer: string): Promise<void> {
    try {
      await this.observe(text, undefined, `"${peer}"`);
    } catch (e) {
      if (unanswered(e)) {
        await this.#serial(async () => {
          this.#state.pending = withPending(this.#state.pending, [{ text, from: `"${peer}"` }]);
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
   * one (a previous enrollment) unless it expired, or the newest CRL in the log
   * lists it (checked again at every newer CRL logged, until it expires). A CRL
   * logged out of number order raises an alarm and throws `ERR_LOG_ALARM`.
   */
  watch(name: string, keyFingerprint: string): Promise<AuditResult> {
    return this.#look(name, keyFingerprint, false);
  }

  /** Like {@linkcode watch}, but reads the whole log from its first entry and rebuilds the tree. */
  audit(name: string, keyFingerprint: string): Promise<AuditResult> {
    return this.#look(name, keyFingerprint, true);
  }

  // The checkpoints waiting (peers', or one another process of this home stored): checked
  // against the one stored, and forgotten once checked. One the CA still did not answer for
  // goes on waiting, for the look after; one that is no checkpoint of the log key is dropped.
  // Returns those the CA did not answer for though it was asked (see #dodged), with its code.
  async #checkPending(): Promise<Array<{ text: string; code: ErrorCode }>> {
    const waiting = [...this.#state.pending];
    const dodged: Array<{ text: string; code: ErrorCode }> = [];
    if (!waiting.length) return dodged;
    const checked = new Set<string>();
    for (const p of waiting) {
      try {
        await this.observe(p.text, undefined, p.from);
      } catch (e) {
        if (e instanceof E2eError && e.code === "ERR_LOG_ALARM") throw e;
        if (unanswered(e)) {
          if (e instanceof E2eError && !requestUnsent(e) && !LOCAL.has(e.code)) {
            dodged.push({ text: p.text, code: e.code });
          }
          continue;
        }
      }
      checked.add(p.text);
    }
    await this.#serial(async () => {
      // Those added meanwhile (a hello, another process) stay.
      this.#state.pending = this.#state.pending.filter((p) => !checked.has(p.text));
      this.#checked = [...this.#checked.filter((t) => !checked.has(t)), ...checked]
        .slice(-MAX_CHECKED);
      await this.#save();
    });
    return dodged;
  }

  // The waiting checkpoints the CA did not answer for in a look it otherwise answered (`dodged`,
  // from #checkPending, once the look's entries were read): counted with each, kept in
  // HOME/log.json so a restart does not start again from none. Past MAX_DODGED_LOOKS, or at once
  // when it refused our certificate (401, 403) that it had just taken for the look's other
  // questions, it is an alarm: an honest CA answers that question as it answers the others.
  async #dodged(dodged: Array<{ text: string; code: ErrorCode }>): Promise<void> {
    if (!dodged.length) return;
    await this.#serial(async () => {
      const key = await this.#logKey();
      const stored = this.#state.checkpoint
        ? openCheckpoint(this.#state.checkpoint, key)
        : undefined;
      const raised = new Set<string>();
      for (const { text, code } of dodged) {
        const p = this.#state.pending.find((q) => q.text === text);
        if (!p) continue; // checked meanwhile (another process, a hello)
        p.dodged = (p.dodged ?? 0) + 1;
        const refused = code === "ERR_UNAUTHENTICATED" || code === "ERR_FORBIDDEN";
        if (p.dodged < MAX_DODGED_LOOKS && !refused) continue;
        let size: number | string = "unknown";
        try {
          size = openCheckpoint(text, key).size;
        } catch { /* kept only if it opened; said as is */ }
        raised.add(text);
        await this.#raise({
          message: `${p.from} showed a log of ${size} entries that the CA would not prove ` +
            `consistent with the ${stored?.size ?? 0} entries seen before: it answered the ` +
            (refused
              ? `look under your certificate but refused that certificate (${code}) for this ` +
                `one question`
              : `look but not this one question (${code}), ${p.dodged} looks in a row`) +
            `; the CA may show different logs to different people`,
        });
      }
      this.#state.pending = this.#state.pending.filter((p) => !raised.has(p.text));
      this.#checked = [...this.#checked.filter((t) => !raised.has(t)), ...raised]
        .slice(-MAX_CHECKED);
      await this.#save();
    });
    this.requireNoAlarm();
  }

  async #look(name: string, keyFingerprint: string, whole: boolean): Promise<AuditResult> {
    const text = await this.#ca.checkpoint();
    const key = await this.#logKey();
    const checkpoint = openCheckpoint(text, key);
    await this.observe(text, checkpoint);
    const dodged = await this.#checkPending();
    const result = await this.#read(name, keyFingerprint, whole, checkpoint);
    await this.#dodged(dodged);
    return result;
  }

  // The look's entries read, checked and kept (#look).
  async #read(
    name: string,
    keyFingerprint: string,
    whole: boolean,
    checkpoint: Checkpoint,
  ): Promise<AuditResult> {
    return await this.#serial(async () => {
      const own = this.#state.own;
      // Where our key's first certificate is must be known for the entries read before: else
      // (a state an earlier version wrote, another key) they are read again.
      // So must the CRLs among them (`crls`: a state an earlier version wrote did not look).
      const fromStart = whole || own?.name !== name || own.key !== keyFingerprint || !own.crls;
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
      // The last CRL among the entries read (the one members take), and the previous enrollments
      // met. CRLs out of order are noted in `order`: it starts from the newest seen before.
      let newest: { number: bigint; index: number; hash: string; revoked: Set<string> } | undefined;
      const met: LogState["previous"] = [];
      const before = fromStart ? undefined : this.#state.crl;
      const order: CrlOrder = {};
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
            // Not a certificate: a CRL the CA signed, or another leaf; it must still hash to the
            // root either way.
            const crl = signedCrlOf(der, this.#anchor);
            if (crl) {
              // One seen before (taken with its proof, or read by another look) comes first when
              // it was logged before this one.
              const seen = before?.number !== undefined && before.index !== undefined &&
                  before.index < index
                ? { number: BigInt(before.number), index: before.index }
                : undefined;
              if (seen && !(order.highest && order.highest.number >= seen.number)) {
                order.highest = seen;
              }
              noteCrl(order, crl.number, index);
              newest = { ...crl, index, hash: base64(leafHash(der)) };
            }
            continue;
          }
          if (info.commonName !== name) continue;
          if (info.keyFingerprint === keyFingerprint) {
            ownFirst ??= index;
            continue;
          }
          // Another key for our name, logged before our key's first certificate, is a previous
          // enrollment (a lost key replaced by a new invite): harmless once it expired, or while
          // the newest CRL in the log lists it (checked below), as peers then refuse it. One
          // logged after it is a misissuance whatever any CRL says.
          if (ownFirst === undefined) {
            const notAfter = info.notAfter.getTime();
            // Past MAX_ALARMS still valid, they are alarms at once (as below): a CA that logs a
            // flood of them does not grow this list.
            if (notAfter > now && met.length < MAX_ALARMS) {
              met.push({ index, serial: info.serial, fingerprint: info.fingerprint, notAfter });
              continue;
            }
            if (notAfter <= now) continue;
          }
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
      // The entries make the signed checkpoint: a CRL among them out of order is the CA's own
      // evidence (thrown below, once what was read is kept).
      if (order.disorder) await this.#raise({ message: crlDisorder(order.disorder) });
      // Previous enrollments still valid must be on the newest CRL in the log: those met now, and
      // those met before once a newer CRL is logged. (None logged yet: they wait for one; the
      // client takes no CRL that is not logged, so it connects to no one meanwhile.)
      const stored = fromStart ? undefined : this.#state.crl;
      let previous = [...(fromStart ? [] : this.#state.previous), ...met]
        .filter((p) => p.notAfter > now);
      if (previous.length && (newest || met.length)) {
        const listed = newest?.revoked ?? await this.#storedCrl(stored, checkpoint.size);
        if (listed) {
          const unlisted = previous.filter((p) => !listed.has(normalizeSerialHex(p.serial)));
          previous = previous.filter((p) => !unlisted.includes(p));
          for (const p of unlisted) {
            if (foreign.length < MAX_ALARMS) {
              foreign.push({ index: p.index, serial: p.serial, fingerprint: p.fingerprint });
            }
          }
        }
      }
      for (const p of previous.splice(MAX_ALARMS)) {
        if (foreign.length < MAX_ALARMS) {
          foreign.push({ index: p.index, serial: p.serial, fingerprint: p.fingerprint });
        }
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
      this.#state.own = { name, key: keyFingerprint, index: ownFirst, crls: true };
      this.#state.previous = previous;
      const known = this.#state.crl?.number;
      if (newest && (known === undefined || newest.number > BigInt(known))) {
        this.#state.crl = { number: String(newest.number), index: newest.index, hash: newest.hash };
      }
      await this.#save();
      if (order.disorder) this.requireNoAlarm();
      return { entries: read, size: checkpoint.size, foreign };
    });
  }

  // The revoked serials of the newest CRL in the log seen before (fetched again, and checked
  // against the leaf hash kept), if there is one within the tree of `size` entries.
  async #storedCrl(
    stored: LogState["crl"],
    size: number,
  ): Promise<Set<string> | undefined> {
    if (stored?.index === undefined || stored.hash === undefined || stored.index >= size) {
      return undefined;
    }
    const [b64] = await this.#ca.logEntries(stored.index, stored.index + 1);
    const der = new Uint8Array(Buffer.from(b64 ?? "", "base64"));
    const crl = base64(leafHash(der)) === stored.hash ? signedCrlOf(der, this.#anchor) : undefined;
    if (!crl) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `The CA sent another entry ${stored.index} than before`,
      );
    }
    return crl.revoked;
  }

  async #logKey(ca: CaClient = this.#ca): Promise<NoteKey> {
    if (!this.#key) {
      const pem = await ca.logKey();
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

  // The newest CRL of a log at least as large as any we hold: the entries after it, read, make
  // that log's root with it and hold no later CRL. So the CA cannot serve us a CRL it has since
  // replaced in a log we know of.
  #requireHeldAtMost(size: number, key: NoteKey): void {
    const held = openCheckpoint(this.#state.checkpoint!, key).size;
    if (held > size) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `The CA proved its CRL in a log of ${size} entries, smaller than the ${held} this ` +
          "client holds",
        { hint: "ask again: the CA must serve its newest CRL" },
      );
    }
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
      let onDisk:
        | { alarms?: unknown; checkpoint?: unknown; logKey?: unknown; crl?: unknown }
        | null = null;
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
      // Checkpoints another process keeps waiting wait here too, unless this one checked them.
      const theirsPending = pendingIn((onDisk as { pending?: unknown } | null)?.pending)
        .filter((p) => !this.#checked.includes(p.text));
      this.#state.pending = withPending(theirsPending, this.#state.pending);
      if (typeof onDisk?.logKey === "string") this.#state.logKey ??= onDisk.logKey;
      // The newest CRL in the log seen never goes back either: a rollback check rests on it.
      const theirs = crlIn((onDisk as { crl?: unknown } | null)?.crl);
      const ours = this.#state.crl?.number;
      if (theirs?.number && (ours === undefined || BigInt(theirs.number) > BigInt(ours))) {
        this.#state.crl = theirs;
      }
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
    this.#state.pending = withPending(this.#state.pending, [{ text: other, from: "the CA" }]);
  }
}

// Where a parsed HOME/log.json says our key's first certificate is among the `size` entries read,
// if it says so soundly.
function ownIn(own: unknown, size: number): LogState["own"] {
  const { name, key, index, crls } = (own ?? {}) as {
    name?: unknown;
    key?: unknown;
    index?: unknown;
    crls?: unknown;
  };
  if (typeof name !== "string" || typeof key !== "string") return undefined;
  const looked = crls === true ? { crls: true } : {};
  if (index === undefined) return { name, key, ...looked };
  return Number.isSafeInteger(index) && (index as number) >= 0 && (index as number) < size
    ? { name, key, index: index as number, ...looked }
    : undefined;
}

/** The CRLs the CA signed among log entries read in order, as CRL numbers must go. */
interface CrlOrder {
  /** The highest numbered of those read so far, or known to come before them. */
  highest?: { number: bigint; index: number };
  /** The first whose number is not above every earlier one's (`after`): the CA's evidence. */
  disorder?: { index: number; number: bigint; after: bigint };
  /** Entries past this index are after the CRL served: the first CRL among them is `later`. */
  after?: number;
  /** The number of the first CRL read past `after`. */
  later?: bigint;
}

// Notes in `order` the CRL numbered `number` at entry `index`, the next read.
function noteCrl(order: CrlOrder, number: bigint, index: number): void {
  if (order.after !== undefined && index > order.after) order.later ??= number;
  // ca/log.ts logs a CRL only above every one logged: one that is not (the same number with
  // another list, an older CRL again) can take a revocation back from those who take the last.
  if (order.highest && number <= order.highest.number) {
    order.disorder ??= { index, number, after: order.highest.number };
  } else {
    order.highest = { number, index };
  }
}

// The alarm for a CRL logged out of order.
function crlDisorder(d: { index: number; number: bigint; after: bigint }): string {
  return `the CA logged CRL number ${d.number} (entry ${d.index}) after one numbered ` +
    `${d.after}: CRL numbers in its log must increase, and a CRL that does not can take a ` +
    `revocation back`;
}

// The checkpoints waiting, as a parsed HOME/log.json keeps them, if sound.
function pendingIn(pending: unknown): LogState["pending"] {
  if (!Array.isArray(pending)) return [];
  return withPending(
    [],
    pending.filter((p: unknown) =>
      typeof (p as { text?: unknown })?.text === "string" &&
      typeof (p as { from?: unknown })?.from === "string"
    ).map((p: { text: string; from: string; dodged?: unknown }) => {
      const { text, from, dodged } = p;
      return Number.isSafeInteger(dodged) && (dodged as number) > 0
        ? { text, from, dodged: dodged as number }
        : { text, from };
    }),
  );
}

// `pending` with `added` after it, each checkpoint once, the last MAX_PENDING.
function withPending(
  pending: LogState["pending"],
  added: LogState["pending"],
): LogState["pending"] {
  const all = [...pending, ...added];
  return all.filter((p, i) => all.findIndex((q) => q.text === p.text) === i).map((p) => {
    // The looks counted by this process or another of the home: the most of them.
    const dodged = Math.max(0, ...all.filter((q) => q.text === p.text).map((q) => q.dodged ?? 0));
    return dodged > 0 ? { ...p, dodged } : p;
  }).slice(-MAX_PENDING);
}

/** Codes of a call's failure that tell nothing of the CA's log (see unanswered). */
const UNANSWERED: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  // No reply, one cut short or not JSON, or a status without the JSON body every refusal of the
  // service has (docs/API.md "Errors"): a busy or restarting service's 502/503, say.
  "ERR_NETWORK",
  "ERR_RATE_LIMITED", // 429: busy
  "ERR_INTERNAL", // 500: the service failing
  "ERR_QUOTA", // 507: out of room
  "ERR_UNAUTHENTICATED", // 401, 403: our own certificate refused, not the question
  "ERR_FORBIDDEN",
  "ERR_PEER_REJECTED", // the service's certificate refused by us before asking
  "ERR_LOCK_TIMEOUT", // HOME/log.json busy here
  "ERR_FILE",
]);

/** Of those, the failures on our side: never counted against the CA (see #dodged). */
const LOCAL: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "ERR_PEER_REJECTED",
  "ERR_LOCK_TIMEOUT",
  "ERR_FILE",
]);

// Whether `error`, thrown while a checkpoint was being checked, means the CA did not answer the
// question (or could not be asked), rather than answering without a proof: then the checkpoint
// waits, with no alarm. Any other refusal, in the service's words, is its answer.
function unanswered(error: unknown): boolean {
  return error instanceof E2eError && (requestUnsent(error) || UNANSWERED.has(error.code));
}

// The newest CRL seen, as a parsed HOME/log.json keeps it, if sound.
function crlIn(crl: unknown): LogState["crl"] {
  const { number, index, hash } = (crl ?? {}) as {
    number?: unknown;
    index?: unknown;
    hash?: unknown;
  };
  if (
    typeof number !== "string" || !/^\d{1,49}$/.test(number) || !Number.isSafeInteger(index) ||
    typeof hash !== "string"
  ) return undefined;
  return { number, index: index as number, hash };
}

// The previous enrollments a parsed HOME/log.json keeps, if sound.
function previousIn(previous: unknown): LogState["previous"] {
  if (!Array.isArray(previous)) return [];
  return previous.filter((p) =>
    Number.isSafeInteger(p?.index) && typeof p?.serial === "string" &&
    typeof p?.fingerprint === "string" && Number.isFinite(p?.notAfter)
  ).slice(0, MAX_ALARMS);
}

// What a call asks of the service's own certificate (client/ca_client.ts ServiceRevocation),
// against the CRL `crl` about to be taken: not listed on it, and it signed recently.
function serviceCheck(crl: RevocationList): ServiceRevocation {
  return {
    isRevoked: (serial) => crl.revoked.has(normalizeSerialHex(serial)),
    ensureRecent: () => {
      const now = Date.now();
      if (
        now - crl.thisUpdate.getTime() > SERVICE_CRL_WINDOW_MS ||
        (crl.nextUpdate !== undefined && now >= crl.nextUpdate.getTime())
      ) {
        return Promise.reject(
          new E2eError(
            "ERR_PEER_REJECTED",
            `Cannot check the CA service's certificate: the CRL it sent was signed at ` +
              `${crl.thisUpdate.toISOString()}, over ${SERVICE_CRL_WINDOW_MS / 3_600_000} h ago`,
          ),
        );
      }
      return Promise.resolve();
    },
  };
}

// The CRL `der` if it is one the CA signed, with a number: its number and revoked serials.
function signedCrlOf(
  der: Uint8Array,
  anchor: TrustAnchor,
): { number: bigint; revoked: Set<string> } | undefined {
  if (!looksLikeCrl(der)) return undefined;
  try {
    const crl = parseCrlDer(der, anchor.x509);
    return crl.number === undefined ? undefined : { number: crl.number, revoked: crl.revoked };
  } catch {
    return undefined; // not signed by the CA: a leaf like any other
  }
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64");
}

// The well-formed alarms of a parsed HOME/log.json: a stray value must not hide the others.
function alarmsIn(read: { alarms?: unknown } | null): LogAlarm[] {
  return Array.isArray(read?.alarms)
    ? read.alarms.filter((a: unknown) =>
      typeof a === "object" && a !== null && typeof (a as LogAlarm).message === "string"
    ).slice(0, MAX_ALARMS + 1)
    : [];
}
