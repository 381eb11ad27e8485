/**
 * The mailbox: what the service keeps for members who are not online
 * (docs/API.md §mailbox, docs/SECURITY.md §mailbox). It stores opaque CMS
 * items (lib/cms.ts makes them; the service cannot read them) with the little
 * it must know to deliver them: an id, sender, recipient, size and times.
 *
 * Caps (defaults; `ca serve` flags change them): an item at most
 * {@linkcode DEFAULT_MAILBOX_LIMITS}.maxItemBytes (an 8 MiB file plus CMS
 * overhead); per recipient at most 200 items and 64 MiB waiting; 1 GiB for all
 * recipients together, a quarter of it for one sender's items; each item
 * kept 7 days at most (then deleted, never delivered). An item is on disk,
 * fsynced, before its POST is answered, so a service killed at any moment
 * keeps every item it acknowledged; it is deleted when the recipient
 * acknowledges it.
 *
 * A post is idempotent: the same bytes from the same sender for the same recipient (a post retried
 * after the service did not answer it: CMS is randomized, so two sends never share their bytes)
 * get the record of the copy kept, or of the copy fetched less than {@linkcode RECENTLY_MS} ago,
 * and are not stored twice.
 *
 * Layout (ca/home.ts): HOME/ca/mailbox/RECIPIENT/ID.cms (the item) and
 * ID.json (its record), 0700 folders and 0600 files. The record is written
 * after the item, so an item exists exactly when its record does; a lone
 * `.cms` left by a crash is removed at start.
 *
 * @module
 */
import { join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, syncDir, writeFileAtomic } from "../lib/fs.ts";
import type { MailboxRecord } from "../lib/mailbox_record.ts";
import { checkName } from "../lib/names.ts";
import { sha256Hex } from "../lib/x509.ts";
import type { CaPaths } from "./home.ts";

/** The limits of the mailbox. */
export interface MailboxLimits {
  /** Largest item, bytes. */
  maxItemBytes: number;
  /** Items waiting for one recipient. */
  maxItems: number;
  /** Bytes waiting for one recipient. */
  maxBytes: number;
  /**
   * Bytes waiting for all recipients together: members cannot fill the disk the CA commits
   * its certificates on, however many they are.
   */
  maxTotalBytes: number;
  /**
   * Bytes one sender's items take, for all recipients together: without it, one member
   * posting to offline members one after another filled the total and refused everyone else's
   * items for up to the time to live. Default: a quarter of `maxTotalBytes`, at least
   * `maxItemBytes`.
   */
  maxSenderBytes?: number;
  /** How long an item is kept, ms. */
  ttlMs: number;
}

/** Overhead of CMS around the content: certificates, recipient info, signature, header. */
export const CMS_OVERHEAD_BYTES = 64 * 1024;

/** 8 MiB files (plus overhead), 200 items and 64 MiB per recipient, 1 GiB in all, 7 days. */
export const DEFAULT_MAILBOX_LIMITS: Readonly<MailboxLimits> = {
  maxItemBytes: 8 * 1024 * 1024 + CMS_OVERHEAD_BYTES,
  maxItems: 200,
  maxBytes: 64 * 1024 * 1024,
  maxTotalBytes: 1024 * 1024 * 1024,
  ttlMs: 7 * 86_400_000,
};

/**
 * How long the record of a fetched (deleted) item still answers a post of the same bytes, ms: a
 * sender retries when the service answers again, and its recipient may have fetched the first
 * copy in the meantime. In memory only; at most 10,000 records (the oldest of the sender who has
 * most go first).
 */
export const RECENTLY_MS = 60 * 60_000;
// Records of fetched items kept for RECENTLY_MS, at most. Past it, the oldest of the sender who
// has most go first: members posting to each other and fetching cannot push out another sender's
// records (whose retry would then be stored twice, and shown as a replay).
const MAX_RECENT = 10_000;

/**
 * Options of {@linkcode Mailbox.open}: its limits (each by default
 * {@linkcode DEFAULT_MAILBOX_LIMITS}'s), its clock and a test's cap on recent records.
 */
export interface MailboxOpenOptions extends Partial<MailboxLimits> {
  /** The clock, ms since the epoch. Default: `Date.now`. */
  now?: () => number;
  /**
   * For tests: records of fetched items kept at most (see {@linkcode RECENTLY_MS}), so a test
   * fills them with a few posts. Default: 10,000.
   */
  maxRecent?: number;
}

/** How often expired items are swept at most, ms (half the time to live when that is shorter). */
const SWEEP_MS = 60_000;

/** What the service knows of an item (all of it): the record of lib/mailbox_record.ts. */
export type ItemRecord = MailboxRecord;

const ID = /^[0-9a-f]{32}$/;

/** The mailbox of a CA home. */
export class Mailbox {
  #paths: CaPaths;
  /** The limits in force. */
  readonly limits: MailboxLimits;
  #boxes = new Map<string, Map<string, ItemRecord>>();
  #waiters = new Map<string, Set<() => void>>();
  // Posts under way per recipient (checked, not yet stored): they count against the quota.
  #posting = new Map<string, { items: number; bytes: number }>();
  // Bytes of the items stored, and of the posts under way, for all recipients.
  #stored = 0;
  #postingBytes = 0;
  // Bytes of each sender's items, stored or under way.
  #bySender = new Map<string, number>();
  #timer?: ReturnType<typeof setInterval>;
  #now: () => number;
  // Posts under way, by sender, recipient and SHA-256.
  #storing = new Map<string, Promise<ItemRecord>>();
  // Records of items fetched lately: by sender, then by recipient and SHA-256, oldest first.
  #recent = new Map<string, Map<string, { record: ItemRecord; until: number }>>();
  #recentCount = 0;
  #maxRecent: number;

  private constructor(
    paths: CaPaths,
    limits: MailboxLimits,
    now: () => number,
    maxRecent: number,
  ) {
    this.#paths = paths;
    this.limits = limits;
    this.#now = now;
    this.#maxRecent = maxRecent;
  }

  /**
   * Opens the mailbox under `paths` (made on first use), drops what a crash left
   * half-written and what expired, and sweeps expired items every minute until
   * {@linkcode Mailbox.close}.
   *
   * @example
   * ```ts ignore
   * import { CaPaths } from "./home.ts";
   * import { Mailbox } from "./mailbox.ts";
   * const mailbox = await Mailbox.open(new CaPaths("/tmp/ca-home"));
   * const item = await mailbox.post("alice", "bob", new Uint8Array([0x30, 0x00]));
   * console.log(mailbox.list("bob")[0].id === item.id); // true
   * mailbox.close();
   * ```
   */
  static async open(
    paths: CaPaths,
    options: MailboxOpenOptions = {},
  ): Promise<Mailbox> {
    const { now, maxRecent, ...limits } = options;
    const box = new Mailbox(
      paths,
      { ...DEFAULT_MAILBOX_LIMITS, ...limits },
      now ?? Date.now,
      maxRecent ?? MAX_RECENT,
    );
    await ensurePrivateDir(paths.mailbox);
    for await (const entry of Deno.readDir(paths.mailbox)) {
      if (entry.isDirectory) await box.#load(entry.name);
    }
    await box.sweep();
    // A short time to live (tests, small teams) is swept sooner than every minute.
    const every = Math.min(SWEEP_MS, Math.max(1_000, box.limits.ttlMs / 2));
    box.#timer = setInterval(() => box.sweep().catch(() => {}), every);
    Deno.unrefTimer(box.#timer);
    return box;
  }

  /** Stops the sweep and ends every long poll. */
  close(): void {
    clearInterval(this.#timer);
    for (const set of this.#waiters.values()) for (const wake of set) wake();
  }

  /**
   * Stores `item` from `from` for `to`, durably, and wakes `to`'s long poll.
   * Throws `ERR_TOO_LARGE` above the item cap and `ERR_QUOTA` when `to` has too
   * much waiting.
   */
  async post(from: string, to: string, item: Uint8Array): Promise<ItemRecord> {
    checkName(from);
    checkName(to);
    if (item.length === 0) throw new E2eError("ERR_BAD_REQUEST", "The mailbox item is empty");
    if (item.length > this.limits.maxItemBytes) {
      throw new E2eError(
        "ERR_TOO_LARGE",
        `The mailbox item is ${item.length} bytes; the mailbox takes at most ${this.limits.maxItemBytes}`,
      );
    }
    const sha256 = sha256Hex(item);
    const key = `${from}/${to}/${sha256}`;
    const same = this.#storing.get(key) ?? this.#same(from, to, sha256);
    if (same) return await same;
    const storing = this.#store(from, to, item, sha256);
    this.#storing.set(key, storing);
    try {
      return await storing;
    } finally {
      this.#storing.delete(key);
    }
  }

  // The record of the same bytes from `from` for `to`, kept or fetched lately, if there is one.
  #same(from: string, to: string, sha256: string): Promise<ItemRecord> | undefined {
    const now = this.#now();
    for (const r of this.#boxes.get(to)?.values() ?? []) {
      if (r.sha256 === sha256 && r.from === from && Date.parse(r.expiresAt) > now) {
        return Promise.resolve(r);
      }
    }
    const recent = this.#recent.get(from)?.get(`${to}/${sha256}`);
    return recent && recent.until > now ? Promise.resolve(recent.record) : undefined;
  }

  async #store(from: string, to: string, item: Uint8Array, sha256: string): Promise<ItemRecord> {
    await this.#expire(to);
    const box = this.#box(to);
    const posting = this.#posting.get(to) ?? { items: 0, bytes: 0 };
    const waiting = [...box.values()].reduce((n, r) => n + r.size, 0) + posting.bytes;
    const items = box.size + posting.items;
    if (items >= this.limits.maxItems) {
      throw new E2eError(
        "ERR_QUOTA",
        `The mailbox of "${to}" is full: ${items} items wait, at most ${this.limits.maxItems}`,
        { hint: `try again once "${to}" has fetched them` },
      );
    }
    if (waiting + item.length > this.limits.maxBytes) {
      throw new E2eError(
        "ERR_QUOTA",
        `The mailbox of "${to}" is full: ${waiting} bytes wait, and ${item.length} more would exceed ${this.limits.maxBytes}`,
        { hint: `try again once "${to}" has fetched them` },
      );
    }
    const total = this.#stored + this.#postingBytes;
    if (total + item.length > this.limits.maxTotalBytes) {
      throw new E2eError(
        "ERR_QUOTA",
        `The mailbox is full: ${total} bytes wait for all members, and ${item.length} more would exceed ${this.limits.maxTotalBytes}`,
        { hint: "try again once members have fetched theirs (the CA's --mailbox-total)" },
      );
    }
    const mine = this.#bySender.get(from) ?? 0;
    // A quarter of the total, and never less than one largest item (a small --mailbox-total).
    const maxSender = this.limits.maxSenderBytes ??
      Math.max(Math.floor(this.limits.maxTotalBytes / 4), this.limits.maxItemBytes);
    if (mine + item.length > maxSender) {
      throw new E2eError(
        "ERR_QUOTA",
        `Your items waiting in the mailbox take ${mine} bytes, and ${item.length} more would exceed ${maxSender}`,
        { hint: "try again once your recipients have fetched them" },
      );
    }
    const now = this.#now();
    const record: ItemRecord = {
      id: newId(),
      from,
      to,
      size: item.length,
      postedAt: new Date(now).toISOString(),
      expiresAt: new Date(now + this.limits.ttlMs).toISOString(),
      sha256,
    };
    const dir = this.#paths.mailboxOf(to);
    // Counted from now on: posts that come at once must not all fit the same room.
    posting.items++;
    posting.bytes += item.length;
    this.#posting.set(to, posting);
    this.#postingBytes += item.length;
    this.#charge(from, item.length);
    try {
      await ensurePrivateDir(dir, { durable: true });
      // The item first, then its record: a crash between them leaves an orphan, not a hole.
      await writeFileAtomic(join(dir, `${record.id}.cms`), item, { mode: 0o600, durable: true });
      await writeFileAtomic(
        join(dir, `${record.id}.json`),
        JSON.stringify(record) + "\n",
        { mode: 0o600, durable: true },
      );
      // Both names durable before the sender hears "queued" (one fsync of the folder).
      await syncDir(dir);
      this.#keep(box, record);
    } finally {
      this.#postingBytes -= item.length;
      this.#charge(from, -item.length);
      posting.items--;
      posting.bytes -= item.length;
      if (posting.items === 0) this.#posting.delete(to);
    }
    for (const wake of this.#waiters.get(to) ?? []) wake();
    return record;
  }

  /** The items waiting for `to`, oldest first (expired ones are gone). */
  list(to: string): ItemRecord[] {
    const now = this.#now();
    return [...this.#box(to).values()]
      .filter((r) => Date.parse(r.expiresAt) > now)
      .sort((a, b) => a.postedAt.localeCompare(b.postedAt));
  }

  /** The items for `to`, once there is one, or after `waitMs`, or when `signal` aborts. */
  async wait(to: string, waitMs: number, signal?: AbortSignal): Promise<ItemRecord[]> {
    await this.#expire(to);
    if (this.list(to).length > 0 || waitMs <= 0 || signal?.aborted) return this.list(to);
    await new Promise<void>((resolve) => {
      const set = this.#waiters.get(to) ?? new Set();
      this.#waiters.set(to, set);
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        set.delete(done);
        if (set.size === 0) this.#waiters.delete(to);
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      signal?.addEventListener("abort", done, { once: true });
      set.add(done);
    });
    return this.list(to);
  }

  /** The item `id` for `to`; `ERR_NOT_FOUND` when there is none (or it is someone else's). */
  async read(to: string, id: string): Promise<Uint8Array> {
    const record = this.#find(to, id);
    try {
      return await Deno.readFile(join(this.#paths.mailboxOf(to), `${record.id}.cms`));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw notFound(id);
      throw e;
    }
  }

  /** Deletes the item `id` of `to` (the recipient's acknowledgement); returns its record. */
  async remove(to: string, id: string): Promise<ItemRecord> {
    const record = this.#find(to, id);
    await this.#delete(record);
    if (record.sha256) this.#remember(record);
    return record;
  }

  // Remembers the record of a fetched item for a retry of its post; past the bound, the oldest
  // record of the sender who has most goes (on a tie, this sender's): only a sender's own records
  // push its records out, or another's while that one has more.
  #remember(record: ItemRecord): void {
    const until = Math.min(this.#now() + RECENTLY_MS, Date.parse(record.expiresAt));
    const key = `${record.to}/${record.sha256}`;
    let mine = this.#recent.get(record.from);
    if (!mine) this.#recent.set(record.from, mine = new Map());
    if (!mine.delete(key)) this.#recentCount++;
    mine.set(key, { record, until });
    while (this.#recentCount > this.#maxRecent) {
      let most: [string, Map<string, unknown>] = [record.from, mine];
      for (const entry of this.#recent) if (entry[1].size > most[1].size) most = entry;
      const [sender, records] = most;
      records.delete(records.keys().next().value!);
      this.#recentCount--;
      if (records.size === 0) this.#recent.delete(sender);
    }
  }

  /** Deletes every expired item. */
  async sweep(): Promise<void> {
    for (const to of this.#boxes.keys()) await this.#expire(to);
    const now = this.#now();
    for (const [sender, records] of this.#recent) {
      for (const [k, r] of records) {
        if (r.until > now) continue;
        records.delete(k);
        this.#recentCount--;
      }
      if (records.size === 0) this.#recent.delete(sender);
    }
  }

  #find(to: string, id: string): ItemRecord {
    const record = ID.test(id) ? this.#boxes.get(to)?.get(id) : undefined;
    if (!record || Date.parse(record.expiresAt) <= this.#now()) throw notFound(id);
    return record;
  }

  #box(to: string): Map<string, ItemRecord> {
    let box = this.#boxes.get(to);
    if (!box) {
      box = new Map();
      this.#boxes.set(to, box);
    }
    return box;
  }

  #keep(box: Map<string, ItemRecord>, record: ItemRecord): void {
    if (!box.has(record.id)) {
      this.#stored += sizeOf(record);
      this.#charge(record.from, sizeOf(record));
    }
    box.set(record.id, record);
  }

  #charge(from: string, bytes: number): void {
    const left = (this.#bySender.get(from) ?? 0) + bytes;
    if (left > 0) this.#bySender.set(from, left);
    else this.#bySender.delete(from);
  }

  async #expire(to: string): Promise<void> {
    const now = this.#now();
    for (const record of [...this.#boxes.get(to)?.values() ?? []]) {
      if (Date.parse(record.expiresAt) <= now) await this.#delete(record);
    }
  }

  async #delete(record: ItemRecord): Promise<void> {
    const dir = this.#paths.mailboxOf(record.to);
    if (this.#boxes.get(record.to)?.delete(record.id)) {
      this.#stored -= sizeOf(record);
      this.#charge(record.from, -sizeOf(record));
    }
    // The record first: once it is gone the item no longer exists, even if the next step fails.
    await Deno.remove(join(dir, `${record.id}.json`)).catch(() => {});
    await Deno.remove(join(dir, `${record.id}.cms`)).catch(() => {});
  }

  // One recipient's folder as a crash left it: records with their items; the rest removed.
  async #load(to: string): Promise<void> {
    try {
      checkName(to);
    } catch {
      return; // not ours
    }
    const dir = this.#paths.mailboxOf(to);
    const names = new Set<string>();
    for await (const entry of Deno.readDir(dir)) if (entry.isFile) names.add(entry.name);
    const box = this.#box(to);
    for (const name of names) {
      const m = /^([0-9a-f]{32})\.json$/.exec(name);
      if (!m) continue;
      try {
        const record = JSON.parse(await Deno.readTextFile(join(dir, name))) as ItemRecord;
        if (record.id === m[1] && record.to === to && names.has(`${m[1]}.cms`)) {
          this.#keep(box, record);
          continue;
        }
      } catch { /* unreadable: removed below */ }
      await Deno.remove(join(dir, name)).catch(() => {});
    }
    for (const name of names) {
      const m = /^([0-9a-f]{32})\.cms$/.exec(name);
      const orphan = m ? !box.has(m[1]) : name.endsWith(".tmp");
      if (orphan) await Deno.remove(join(dir, name)).catch(() => {});
    }
  }
}

// A record's size as the total counts it (a record read back from disk is not trusted blindly).
function sizeOf(record: ItemRecord): number {
  return Number.isSafeInteger(record.size) && record.size > 0 ? record.size : 0;
}

function newId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

function notFound(id: string): E2eError {
  return new E2eError("ERR_NOT_FOUND", `No mailbox item ${JSON.stringify(id)} for you`);
}
