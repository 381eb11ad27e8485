/**
 * Invites: single-use, expiring enrollment tokens bound to one name. Only a
 * SHA-256 of each token is stored, so the files alone enroll nobody.
 *
 * The state lives in two 0600 files (docs/CA.md, "Invites"): `invites.json`, a
 * snapshot, and `invites.journal`, one JSON line per change since that
 * snapshot. A store keeps the state in memory and, under the invites lock,
 * reads only what other processes appended since it last looked, then appends
 * its own change: a redemption costs two short appends, not two rewrites of
 * every invite. The CLI's `create` rewrites the snapshot (compaction), so new
 * invites work in a running service without a restart.
 *
 * A token is used when the CA's index holds the serial of the certificate
 * issued with it: the redemption's `claim` record, fsynced before the index
 * line is appended, names that serial, so a crash anywhere never uses up a
 * token without its certificate and never lets it issue a second one.
 *
 * The operator lists invites ({@linkcode InviteStore.list}) by a short id, the
 * start of the token's hash, and withdraws open ones
 * ({@linkcode InviteStore.cancel}): a fsynced `cancel` record, after which the
 * token is refused like a used one.
 *
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import { readUpToSync, syncDir, writeFileAtomic } from "../lib/fs.ts";
import { type LockOptions, withLock } from "../lib/lock.ts";
import { TOKEN_PATTERN } from "../lib/invite.ts";
import { checkName } from "../lib/names.ts";
import { normalizeSerialHex } from "../lib/x509.ts";
import type { CaPaths } from "./home.ts";
import { locked, readIndex } from "./store.ts";

/** One stored invite. */
export interface InviteRecord {
  /** SHA-256 of the token, lowercase hex. */
  hash: string;
  /** The name the token enrolls. */
  name: string;
  /** When it was made, ISO 8601. */
  createdAt: string;
  /** When it stops working, ISO 8601. */
  expiresAt: string;
  /** When it was used, ISO 8601. */
  usedAt?: string;
  /** When the operator cancelled it, ISO 8601: from then on it enrolls nobody. */
  cancelledAt?: string;
  /** Set while an enrollment with this token is under way. */
  reservedUntil?: string;
  /**
   * The serial of a certificate being issued with this token: the token is
   * used once the CA's index holds it, and free again if it never will.
   */
  serial?: string;
  /**
   * When that serial was claimed (its commit), ISO 8601: a service that died before it wrote
   * `used` takes this as the time of use when it starts again.
   */
  claimedAt?: string;
}

/** One line of the journal. */
type JournalRecord =
  | { op: "begin"; id: string }
  | { op: "reserve"; hash: string; until: string }
  | { op: "release"; hash: string }
  | { op: "claim"; hash: string; serial: string; at?: string }
  | { op: "used"; hash: string; at: string }
  | { op: "cancel"; hash: string; at: string };

/** The snapshot file: the old `invites.json` format, plus the id of the journal that follows it. */
interface Snapshot {
  invites: InviteRecord[];
  journal?: string;
}

/** What became of an invite, as {@linkcode InviteStore.list} reports it. */
export type InviteStatus = "open" | "used" | "expired" | "cancelled";

/**
 * One invite as {@linkcode InviteStore.list} reports it (and `ca invites --json`
 * prints it): never the token, which is not stored.
 */
export interface ListedInvite {
  /** The short id: the first {@linkcode INVITE_ID_LENGTH} hex characters of the token's SHA-256. */
  id: string;
  /** The name the invite enrolls. */
  name: string;
  /**
   * open (usable, or an enrollment with it under way), used, expired or
   * cancelled; used wins over cancelled and expired, and cancelled over expired.
   */
  status: InviteStatus;
  /** When it was made, ISO 8601. */
  createdAt: string;
  /** When it stops (or stopped) working, ISO 8601. */
  expiresAt: string;
  /** When it was used, ISO 8601, for used ones. */
  usedAt?: string;
  /** The serial of the certificate it got, uppercase hex, for used ones when the journal knows it. */
  serial?: string;
  /** When it was cancelled, ISO 8601, for cancelled ones. */
  cancelledAt?: string;
}

/** How many hex characters of the token's hash make an invite's short id. */
export const INVITE_ID_LENGTH = 8;
// The shortest id prefix `cancel` takes: shorter hex is read as a name only.
const MIN_ID_PREFIX = 8; // the whole short id: a shorter hex word is a name, never a guess at an id

/** Records a certificate's serial as the one issued with a token (see {@linkcode InviteStore.redeem}). */
export type Claim = (serial: string) => Promise<void>;

// The token's shape belongs to the invite format.
export { TOKEN_PATTERN } from "../lib/invite.ts";

// How long a reservation keeps others away. A live redemption renews its own every third of
// this, so only one whose process died lapses (and the service drops those when it starts).
const RESERVATION_MS = 10 * 60_000;
const DAY_MS = 86_400_000;
// A journal this long is folded into the snapshot by the next redemption.
const COMPACT_BYTES = 1 << 20;

// One message for every bad token, so a caller learns nothing from the difference.
const INVALID = "Invalid, used or expired invite token";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Options of an {@linkcode InviteStore}. */
export interface InviteStoreOptions {
  /**
   * How long a reservation holds without renewal, ms (default ten minutes). A
   * redemption renews its own every third of this while it runs.
   */
  reservationMs?: number;
  /**
   * How long after its use a token still finds the certificate it issued, for a
   * retry whose reply was lost ({@linkcode InviteStore.issuedWith}), ms (default
   * a day, also the most: a compaction forgets an invite a day after its use).
   */
  retryMs?: number;
  /**
   * How to wait for the invites lock and, in {@linkcode InviteStore.cancel},
   * the CA lock (say, a notice when one is held). Default: 60 s, silently.
   */
  lock?: LockOptions;
}

/** Invites of the CA at `paths`. */
export class InviteStore {
  #paths: CaPaths;
  #reservationMs: number;
  #retryMs: number;
  #lock: LockOptions;
  #records = new Map<string, InviteRecord>();
  // What was read: the snapshot's and the journal's inode, and how far into the journal.
  #snapshotKey = "";
  #journalHead: string | null = "";
  #journalId = "";
  #offset = 0;
  // Claims waiting for one shared append and fsync (group commit).
  #claims: Array<{ record: JournalRecord; resolve(): void; reject(e: unknown): void }> = [];
  #flushing = false;

  /** The store of the CA at `paths`. */
  constructor(paths: CaPaths, options: InviteStoreOptions = {}) {
    this.#paths = paths;
    this.#reservationMs = options.reservationMs ?? RESERVATION_MS;
    this.#retryMs = Math.min(options.retryMs ?? DAY_MS, DAY_MS);
    this.#lock = options.lock ?? {};
  }

  /** Creates an invite for `name` valid for `ttlMs`; returns the token (shown once, never stored). */
  async create(name: string, ttlMs: number): Promise<{ token: string; expiresAt: Date }> {
    checkName(name);
    const token = randomBytes(32).toString("base64url");
    const now = Date.now();
    const expiresAt = new Date(now + ttlMs);
    await this.#locked(async () => {
      this.#records.set(hashToken(token), {
        hash: hashToken(token),
        name,
        createdAt: new Date(now).toISOString(),
        expiresAt: expiresAt.toISOString(),
      });
      // A new invite is rare and must survive a crash: fold the journal into a new snapshot.
      await this.#compact(now);
    });
    return { token, expiresAt };
  }

  /**
   * Redeems `token`: runs `enroll` with the invite's name and a `claim`
   * function, and marks the token used only when `enroll` succeeds (a request
   * refused by the policy leaves the invite usable). The lock is held only to
   * read and append, not while `enroll` signs, so enrollments with different
   * tokens run side by side. A reservation in the journal keeps another process
   * from redeeming the same token meanwhile. The redemption renews it while
   * `enroll` runs, however long that takes (a queue, a held CA lock), so it
   * never lapses under a live enrollment; one left by a crash is dropped when
   * the service starts again, and lapses after ten minutes.
   *
   * `enroll` passes the new certificate's serial to `claim` before the CA
   * commits it (the authority's `beforeCommit`): `claim` resolves once that is
   * on disk, so the token is used exactly when the certificate exists; it
   * rejects with `ERR_TOKEN_INVALID` when the token was used meanwhile (a
   * redemption stalled past its reservation). An
   * `enroll` that never claims has the token marked used, durably, after it
   * returns.
   */
  async redeem<T>(
    token: unknown,
    enroll: (name: string, claim: Claim) => Promise<T>,
  ): Promise<T> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    const hash = hashToken(token);
    const name = await this.#locked(async () => {
      const now = Date.now();
      const record = this.#records.get(hash);
      if (!record || !await this.#usable(record, now)) {
        throw new E2eError("ERR_TOKEN_INVALID", INVALID);
      }
      const until = new Date(now + this.#reservationMs).toISOString();
      await this.#append([{ op: "reserve", hash, until }]);
      return record.name;
    });
    let claimed: string | undefined;
    const claim: Claim = (serial) => {
      claimed = serial;
      return this.#claim(hash, serial);
    };
    let result: T;
    const renewal = this.#renewing(hash);
    try {
      result = await enroll(name, claim);
    } catch (e) {
      await renewal.stop();
      // The claim stays: if its certificate did reach the index (enroll failed after the commit),
      // the token is used after all, from now: its retries end a day after, like any use's.
      await this.#locked(async () => {
        const used = claimed !== undefined &&
          (await this.#issuedSerials()).has(normalizeSerialHex(claimed));
        const at = new Date().toISOString();
        await this.#append([used ? { op: "used", hash, at } : { op: "release", hash }]);
      }).catch(() => {});
      throw e;
    }
    await renewal.stop();
    const at = new Date().toISOString();
    if (claimed !== undefined) {
      // Already decided by the index; this line only spares readers a look there, so a
      // failure to write it fails nothing.
      await this.#locked(() => this.#append([{ op: "used", hash, at }])).catch(() => {});
    } else {
      await this.#locked(() => this.#append([{ op: "used", hash, at }], { durable: true }));
    }
    return result;
  }

  /**
   * The name an unused, unexpired, uncancelled `token` enrolls; `ERR_TOKEN_INVALID` otherwise.
   * Reads only: lets a request be checked before the token is reserved.
   */
  async nameOf(token: unknown): Promise<string> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    const hash = hashToken(token);
    // Known in memory is enough for a first check: redeem() checks again under the lock.
    const record = this.#records.get(hash) ??
      await this.#locked(() => Promise.resolve(this.#records.get(hash)));
    if (
      !record || record.usedAt || record.cancelledAt || Date.parse(record.expiresAt) <= Date.now()
    ) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    return record.name;
  }

  /**
   * The name and serial of the certificate a used `token` issued, while a retry of
   * its redemption may still be answered with it: from the moment the CA's index
   * holds the serial of the token's claim until a day (`retryMs`) after its use.
   * Undefined for any other token — unknown, unused, reserved by a redemption not
   * yet committed, or used longer ago — so a caller can tell nothing apart.
   * Reads only: nothing is appended, nothing is reserved.
   */
  async issuedWith(token: unknown): Promise<{ name: string; serial: string } | undefined> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) return undefined;
    const hash = hashToken(token);
    return await this.#locked(async () => {
      const record = this.#records.get(hash);
      if (!record || record.serial === undefined) return undefined;
      // No "used" line yet: the redemption is committing right now, or was killed after it.
      if (record.usedAt && Date.parse(record.usedAt) + this.#retryMs <= Date.now()) {
        return undefined;
      }
      // The claim counts only once the index holds its serial (the rule, docs/CA.md "Invites").
      const serial = normalizeSerialHex(record.serial);
      if (!(await this.#issuedSerials()).has(serial)) return undefined;
      return { name: record.name, serial };
    });
  }

  /** Every stored invite as of now (the snapshot with the journal applied), oldest first. */
  async records(): Promise<InviteRecord[]> {
    return await this.#locked(() =>
      Promise.resolve([...this.#records.values()].map((r) => ({ ...r })))
    );
  }

  /**
   * Every invite the store holds with what became of it: open ones first, then
   * the others, each group oldest first. Reads only.
   */
  async list(): Promise<ListedInvite[]> {
    return await this.#locked(async () => {
      const now = Date.now();
      const issued = await this.#issuedByNormalSerial();
      const rows = [...this.#records.values()].map((r) => listed(r, now, issued));
      // A stable sort keeps the records' order (oldest first) inside each group.
      return rows.sort((a, b) => (a.status === "open" ? 0 : 1) - (b.status === "open" ? 0 : 1));
    });
  }

  /**
   * Cancels the open invites for the name `nameOrId` (when any invite, open or
   * not, has that name), or else the one invite whose short id starts with
   * `nameOrId` (at least four hex characters, any case): each
   * gets a `cancel` record, fsynced before this returns, and its token is
   * refused from then on like a used one. Returns the invites cancelled, as
   * {@linkcode InviteStore.list} reports them now.
   *
   * Throws `ERR_INVITE_NOT_OPEN` when nothing open matches (an unknown name or
   * id, or one used, expired or cancelled already), and
   * `ERR_INVITE_AMBIGUOUS`, naming the matches, when an id prefix fits more
   * than one invite; either way nothing changes.
   *
   * Holds the CA lock as well as the invites lock: no commit is under way then,
   * so a claim the index does not hold belongs to an enrollment that failed,
   * and every later claim sees the cancellation and is refused. A token is thus
   * either used (its certificate is in the index) or cancelled, never both.
   */
  async cancel(nameOrId: string): Promise<ListedInvite[]> {
    return await locked(this.#paths, () =>
      this.#locked(async () => {
        const now = Date.now();
        const issued = await this.#issuedByNormalSerial();
        const all = [...this.#records.values()];
        const open = (r: InviteRecord) => listed(r, now, issued).status === "open";
        // A name the store knows is never read as an id: "cafe" must not cancel another's invite.
        const named = all.filter((r) => r.name === nameOrId);
        let targets = named.filter(open);
        const prefix = nameOrId.toLowerCase();
        if (!named.length && new RegExp(`^[0-9a-f]{${MIN_ID_PREFIX},64}$`).test(prefix)) {
          const matches = all.filter((r) => r.hash.startsWith(prefix));
          if (matches.length > 1) {
            // More than the short id, which they share: enough to tell them apart.
            const names = matches.map((r) => `${r.hash.slice(0, 16)} (${JSON.stringify(r.name)})`);
            throw new E2eError(
              "ERR_INVITE_AMBIGUOUS",
              `Cannot cancel: id ${JSON.stringify(nameOrId)} fits ${matches.length} invites: ` +
                names.join(", "),
              { hint: "give more of the id, as `deno task ca invites` shows it" },
            );
          }
          targets = matches.filter(open);
          if (matches.length === 1 && !targets.length) {
            const { id, name, status } = listed(matches[0], now, issued);
            throw new E2eError(
              "ERR_INVITE_NOT_OPEN",
              `Cannot cancel: invite ${id} for ${JSON.stringify(name)} is ${status}`,
            );
          }
        }
        if (!targets.length) {
          throw new E2eError(
            "ERR_INVITE_NOT_OPEN",
            `Cannot cancel: no open invite for ${JSON.stringify(nameOrId)}`,
            { hint: "`deno task ca invites` lists them; cancel takes a NAME or an invite's ID" },
          );
        }
        const at = new Date(now).toISOString();
        await this.#append(targets.map((r) => ({ op: "cancel", hash: r.hash, at })), {
          durable: true,
        });
        return targets.map((r) => listed(r, now, issued));
      }), this.#lock);
  }

  /**
   * Drops every reservation, settles every claim against the index and
   * compacts: the service calls this when it starts, since a reservation left
   * behind can only come from a service that died mid-enrollment.
   */
  async clearReservations(): Promise<void> {
    await this.#locked(async () => {
      const now = Date.now();
      // A process killed in a commit may have left an index line that is not on disk yet:
      // made durable before we settle claims by it (else a power cut could take back the
      // certificate after we marked its token used).
      try {
        using index = await Deno.open(this.#paths.index, { read: true });
        await index.sync();
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      const issued = await this.#issuedSerials();
      for (const record of this.#records.values()) {
        delete record.reservedUntil;
        if (record.serial !== undefined && !record.usedAt) {
          // Used when it was claimed (the retry window runs from then), not now; a claim
          // written before claims had a time is taken as used now.
          if (issued.has(normalizeSerialHex(record.serial))) {
            record.usedAt = record.claimedAt ?? new Date(now).toISOString();
          } else {
            delete record.serial;
            delete record.claimedAt;
          }
        }
      }
      await this.#compact(now);
    });
  }

  // Whether `record` may be redeemed now. A claim not followed by "used" is settled by the index.
  async #usable(record: InviteRecord, now: number): Promise<boolean> {
    if (record.usedAt || record.cancelledAt || Date.parse(record.expiresAt) <= now) return false;
    if (Date.parse(record.reservedUntil ?? "") > now) return false;
    if (record.serial !== undefined) {
      if ((await this.#issuedSerials()).has(normalizeSerialHex(record.serial))) return false;
    }
    return true;
  }

  async #issuedSerials(): Promise<Set<string>> {
    return new Set((await this.#issuedByNormalSerial()).keys());
  }

  // The index's serials as written there ("0A…"), by their normalized form.
  async #issuedByNormalSerial(): Promise<Map<string, string>> {
    const entries = await readIndex(this.#paths).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    });
    return new Map(entries.map((e) => [normalizeSerialHex(e.serial), e.serial]));
  }

  // Renews the reservation of `hash` every third of its time until stopped. stop() waits for a
  // renewal under way, so none lands after the redemption's own release or used line.
  #renewing(hash: string): { stop(): Promise<void> } {
    let pending: Promise<void> = Promise.resolve();
    const timer = setInterval(() => {
      pending = pending.then(() =>
        this.#locked(() => {
          const until = new Date(Date.now() + this.#reservationMs).toISOString();
          return this.#append([{ op: "reserve", hash, until }]);
        })
      ).catch(() => {}); // a failed renewal leaves the reservation to lapse, as a crash would
    }, Math.max(1, Math.floor(this.#reservationMs / 3)));
    return {
      stop: async () => {
        clearInterval(timer);
        await pending;
      },
    };
  }

  // Whether a claim may go in: the token is not used, by a "used" line or by another claim
  // whose certificate the index holds. A reservation keeps others away only while it is renewed:
  // a redemption stalled past it (a stopped process, a wall clock stepped forward) may find its
  // token used meanwhile, and then its certificate must not be committed. Called under the
  // invites lock, from the authority's commit (under the CA lock), so the index cannot change.
  async #claimable(claim: JournalRecord): Promise<boolean> {
    if (claim.op !== "claim") return false;
    const record = this.#records.get(claim.hash);
    if (!record || record.usedAt || record.cancelledAt) return false;
    if (record.serial === undefined || normalizeSerialHex(record.serial) === claim.serial) {
      return true;
    }
    return !(await this.#issuedSerials()).has(normalizeSerialHex(record.serial));
  }

  // Claims go in one append and one fsync with every other claim made meanwhile.
  #claim(hash: string, serial: string): Promise<void> {
    const record: JournalRecord = {
      op: "claim",
      hash,
      serial: normalizeSerialHex(serial),
      at: new Date().toISOString(),
    };
    return new Promise<void>((resolve, reject) => {
      this.#claims.push({ record, resolve, reject });
      // A microtask later, so the claims of one batch (made in one turn) share the fsync.
      if (!this.#flushing) {
        this.#flushing = true;
        queueMicrotask(() => this.#flushClaims());
      }
    });
  }

  async #flushClaims(): Promise<void> {
    try {
      while (this.#claims.length) {
        const batch = this.#claims.splice(0);
        try {
          const taken = await this.#locked(async () => {
            const taken = [];
            for (const c of batch) {
              if (await this.#claimable(c.record)) taken.push(c);
              else c.reject(new E2eError("ERR_TOKEN_INVALID", INVALID));
            }
            if (taken.length) {
              await this.#append(taken.map((c) => c.record), { durable: true });
            }
            return taken;
          });
          for (const c of taken) c.resolve();
        } catch (e) {
          for (const c of batch) c.reject(e);
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  // Runs `fn` under the invites lock with the state brought up to date.
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    return withLock(this.#paths.invitesLock, async () => {
      await this.#refresh();
      return await fn();
    }, this.#lock);
  }

  // Reads what changed on disk since the last look: the journal's new lines, or everything
  // when a compaction replaced the files. A replaced file is told by the snapshot's inode, size
  // and time and by the journal's first line (its random id), not by inodes alone: a new file
  // may get an old one's number back. Call only under the lock.
  async #refresh(): Promise<void> {
    // Synchronous calls on purpose: a handful of small local reads, a few µs each, run three
    // times per enrollment, where each asynchronous one costs ~40 µs of CPU.
    let snapshot = "none";
    try {
      const i = Deno.statSync(this.#paths.invites);
      snapshot = `${i.ino}:${i.size}:${i.mtime?.getTime()}`;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    let file: Deno.FsFile | undefined;
    try {
      file = Deno.openSync(this.#paths.invitesJournal, { read: true, write: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    try {
      const size = file ? file.statSync().size : 0;
      const head = file ? firstLine(file) : null;
      if (snapshot !== this.#snapshotKey || head !== this.#journalHead || size < this.#offset) {
        const state = await readSnapshot(this.#paths.invites);
        this.#records = new Map(state.invites.map((r) => [r.hash, r]));
        this.#journalId = state.journal ?? "";
        this.#snapshotKey = snapshot;
        this.#journalHead = head;
        this.#offset = 0;
      }
      if (!file || size === this.#offset) return;
      file.seekSync(this.#offset, Deno.SeekMode.Start);
      const bytes = readUpToSync(file, size - this.#offset);
      const complete = bytes.lastIndexOf(0x0a) + 1;
      for (const line of decoder.decode(bytes.subarray(0, complete)).split("\n")) {
        if (line) this.#apply(JSON.parse(line) as JournalRecord);
      }
      this.#offset += complete;
      if (complete < bytes.length) {
        // A line without its newline: an append cut short by a crash (appends hold the lock).
        file.truncateSync(this.#offset);
      }
    } finally {
      file?.close();
    }
  }

  // The journal's effect on the state. A journal that does not follow this snapshot
  // (a compaction died between writing the two files) was already folded into it.
  #apply(r: JournalRecord): void {
    if (r.op === "begin") {
      this.#journalId = this.#journalId === r.id ? r.id : `stale:${r.id}`;
      return;
    }
    if (this.#journalId.startsWith("stale:")) return;
    const record = this.#records.get(r.hash);
    if (!record) return;
    if (r.op === "reserve") record.reservedUntil = r.until;
    else if (r.op === "release") delete record.reservedUntil;
    else if (r.op === "claim") {
      record.serial = r.serial;
      if (r.at) record.claimedAt = r.at;
      else delete record.claimedAt;
    } else if (r.op === "used") {
      delete record.reservedUntil;
      record.usedAt ??= r.at;
    } else if (r.op === "cancel") record.cancelledAt ??= r.at;
  }

  // Appends `records` (applying them to the state); fsyncs when `durable`. Call only under the lock.
  async #append(records: JournalRecord[], options: { durable?: boolean } = {}): Promise<void> {
    if (this.#journalHead === null || this.#journalId.startsWith("stale:")) {
      // No journal yet (a fresh CA, or a home from before the journal), or one a compaction
      // killed half-way left behind: start one.
      await this.#compact(Date.now());
    } else if (this.#offset > COMPACT_BYTES) {
      await this.#compact(Date.now());
    }
    const bytes = encoder.encode(records.map((r) => JSON.stringify(r) + "\n").join(""));
    using file = Deno.openSync(this.#paths.invitesJournal, { append: true });
    let n = 0;
    while (n < bytes.length) n += file.writeSync(bytes.subarray(n));
    if (options.durable) await file.sync();
    this.#offset += bytes.length;
    for (const r of records) this.#apply(r);
  }

  // Writes the whole state as a new snapshot, then an empty journal that names it. Drops invites
  // used, cancelled or expired over a day ago (a token the store no longer knows is refused as
  // well). Call only under the lock.
  async #compact(now: number): Promise<void> {
    const kept = [...this.#records.values()].filter((r) =>
      Date.parse(r.usedAt ?? r.cancelledAt ?? r.expiresAt) > now - DAY_MS || r.reservedUntil ||
      (r.serial !== undefined && !r.usedAt)
    );
    const id = crypto.randomUUID();
    const snapshot: Snapshot = { invites: kept, journal: id };
    // Snapshot first: killed before the journal is replaced, the old journal's id no longer
    // matches, and what it holds is in the snapshot already.
    // Each name made durable before the next file is written (POSIX does not order renames).
    await writeFileAtomic(this.#paths.invites, JSON.stringify(snapshot, null, 1) + "\n", {
      mode: 0o600,
    });
    await syncDir(this.#paths.dir);
    await writeFileAtomic(
      this.#paths.invitesJournal,
      JSON.stringify({ op: "begin", id } satisfies JournalRecord) + "\n",
      { mode: 0o600 },
    );
    await syncDir(this.#paths.dir);
    // Read back as any other process would see them.
    this.#snapshotKey = "";
    await this.#refresh();
  }
}

// The journal's "begin" line, or "" when it has none whole.
function firstLine(file: Deno.FsFile): string {
  file.seekSync(0, Deno.SeekMode.Start);
  const head = readUpToSync(file, 128);
  const nl = head.indexOf(0x0a);
  return nl < 0 ? "" : decoder.decode(head.subarray(0, nl));
}

// The snapshot, or the whole state of a home from before the journal (the same format).
async function readSnapshot(path: string): Promise<Snapshot> {
  try {
    const data = JSON.parse(await Deno.readTextFile(path));
    return {
      invites: Array.isArray(data?.invites) ? data.invites : [],
      journal: typeof data?.journal === "string" ? data.journal : undefined,
    };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { invites: [] };
    throw e;
  }
}

// An invite as list() reports it; `issued` maps the index's serials, normalized, to their form
// there (the form `ca list` prints).
function listed(r: InviteRecord, now: number, issued: Map<string, string>): ListedInvite {
  const claimed = r.serial !== undefined && issued.has(normalizeSerialHex(r.serial));
  const status: InviteStatus = r.usedAt || claimed
    ? "used"
    : r.cancelledAt
    ? "cancelled"
    : Date.parse(r.expiresAt) <= now
    ? "expired"
    : "open";
  const row: ListedInvite = {
    id: shortId(r.hash),
    name: r.name,
    status,
    createdAt: r.createdAt,
    expiresAt: r.expiresAt,
  };
  if (status === "used") {
    if (r.usedAt) row.usedAt = r.usedAt;
    if (r.serial !== undefined) {
      row.serial = issued.get(normalizeSerialHex(r.serial)) ?? normalizeSerialHex(r.serial);
    }
  }
  if (status === "cancelled") row.cancelledAt = r.cancelledAt;
  return row;
}

function shortId(hash: string): string {
  return hash.slice(0, INVITE_ID_LENGTH);
}

function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/**
 * Parses a duration like "90s", "30m", "24h" or "7d" into milliseconds.
 *
 * @example
 * ```ts
 * import { parseDuration } from "./invites.ts";
 * parseDuration("24h"); // 86400000
 * ```
 */
export function parseDuration(text: string): number {
  const m = /^(\d{1,6})([smhd])$/.exec(text);
  if (!m || Number(m[1]) === 0) {
    throw new E2eError("ERR_USAGE", `Invalid duration ${JSON.stringify(text)}`, {
      hint: "use a number and a unit: 90s, 30m, 24h, 7d",
    });
  }
  return Number(m[1]) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "s"];
}
