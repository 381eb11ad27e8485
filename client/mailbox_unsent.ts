/**
 * Mailbox items that wait for the CA service to answer, on disk: HOME/mailbox/unsent/ (0700),
 * one 0600 file per item, named by a sequence number and the chat that holds it
 * (`0000000001.3f2a9c0d1e4b5a67.json`), so that they survive the chat's quit or crash and are
 * posted, in order, by the next start (client/mailbox.ts).
 *
 * A file is one JSON object: `{"v":1,"to":…,"kind":…,"id":…,"at":…}` with `der` (the sealed
 * item, base64: posted again as it is, the same bytes) once it was sealed, else `payload` (what
 * is to be sealed, base64), and `name` (a file's) and `note` (what the chat reports when it
 * ends) when given. When the client's key is encrypted, the whole object is sealed as history's
 * lines are (client/history.ts): `{"v":1,"e":"<base64 nonce‖ciphertext‖tag>"}`, AES-256-GCM
 * under a key derived from history's, so the recipient's name, the id and the text are no more
 * readable than the conversation. The file name tells only the order and the chat.
 *
 * Two chats may run on one home (a terminal and a web page). A store that holds items holds an
 * exclusive flock(2) on `OWNER.lock` (OWNER: 16 random hex digits, in its files' names too; made
 * under a temp name and locked before it has its name; removed and let go once it holds no item,
 * or closes, the next one under a new OWNER; the kernel lets go when its process ends, however):
 * one handle per chat, whatever the number of its items, and none with none. A new file is made
 * under a number no file of ours has (link(2), never replacing one: the next number when it is
 * taken). A store opening, or {@linkcode UnsentStore.takeUp} later, takes up only the files whose
 * owner's lock nobody holds (what a chat that quit or crashed left; a lock file missing is made
 * and locked first, so that two stores never take up the same files): each is read and given the
 * next number under its own name, in order, while it holds that owner's lock; then they are
 * renamed to those names, the last first, and the owners' lock files removed. A start killed
 * partway so leaves the files it renamed after those it did not, and the next one posts them all
 * in the order they were kept. Never another running chat's items nor its write-ahead copies.
 * Files of the layout before (`0000000001.json`, each held with its own flock by the chat that
 * wrote it) are taken up the same when no flock holds them. A file it read and cannot decode is
 * moved into `unreadable/` once named; one it cannot open now (out of file handles, say) stays,
 * for the next start.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { hkdfSync } from "node:crypto";
import { dirname, join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import {
  ensurePrivateDir,
  type Link,
  placeNew,
  readUpTo,
  syncDir,
  systemReason,
} from "../lib/fs.ts";
import { checkName } from "../lib/names.ts";
import { openText, sealText } from "./history.ts";

/** Items that wait for the CA service at most: one more is refused. */
export const MAX_UNSENT_ITEMS = 100;
/** Bytes (sealed items, or payloads not sealed yet) that wait for the CA service at most. */
export const MAX_UNSENT_BYTES = 32 * 1024 * 1024;

/** An item that waits for the CA service, as it is kept. */
export interface UnsentItem {
  /** The recipient. */
  to: string;
  /** What it is. */
  kind: "message" | "file" | "room";
  /** The item id. */
  id: string;
  /** When it was first kept, ISO 8601. */
  at: string;
  /** A file's name. */
  name?: string;
  /** The sealed item, once it was sealed. */
  der?: Uint8Array;
  /** With `der`: the SHA-256 fingerprint of the recipient's key it was sealed to. */
  sealedTo?: string;
  /** What is to be sealed (dropped once `der` is there). */
  payload?: Uint8Array;
  /** What the chat reports when it ends (the text of a message, a file's path and digest). */
  note?: Record<string, unknown>;
}

/** A file {@linkcode UnsentStore.open} left in place, not loaded, past one of the store's limits. */
export interface OverLimit {
  /** The file. */
  file: string;
  /** Which limit it is past: the count of items, or their bytes. */
  limit: "items" | "bytes";
}

/** Options of {@linkcode UnsentStore.open}. */
export interface UnsentStoreOptions {
  /**
   * History's 32-byte key (client/identity.ts historyKey): sealed files are read with a key
   * derived from it, and new files sealed unless `seal` is false. Default: none (plain files).
   */
  key?: Uint8Array;
  /** Seal new files. Default: true when there is a key. */
  seal?: boolean;
  /** Items at most. Default: {@linkcode MAX_UNSENT_ITEMS}. */
  maxItems?: number;
  /** Bytes at most. Default: {@linkcode MAX_UNSENT_BYTES}. */
  maxBytes?: number;
  /** Makes a hard link (tests stand in a folder without them). Default: `Deno.link`. */
  link?: Link;
}

/** A file {@linkcode UnsentStore.open} could not open (or lock, or read), left in place. */
export interface Unopened {
  /** The file. */
  file: string;
  /** The system's words, e.g. "Too many open files". */
  reason: string;
}

const AAD = "e2e-chat mailbox unsent v1";
// An item's file: its number, and the owner id of the store that holds it.
const ITEM = /^(\d{10})\.([0-9a-f]{16})\.json$/;
// An item's file of the layout before: held with a flock of its own by the chat that wrote it.
const OLD_ITEM = /^(\d{10})\.json$/;
// The lock file of a store, by its owner id.
const LOCK = /^([0-9a-f]{16})\.lock$/;
const MAX_SEQ = 9_999_999_999;

/** What a store found to take up: its items, and the files it named. */
export interface TakenUp {
  /** The items taken up, oldest first: held by this store from now on. */
  items: UnsentItem[];
  /** Files it read and could not decode, moved into `unreadable/`: where they are now. */
  unreadable: string[];
  /** Files past its limits, left in place, not taken up. */
  overLimit: OverLimit[];
  /** Files it could not open, lock or read now, left in place. */
  unopened: Unopened[];
}

// A file being taken up: its item, where it is, and the name of ours it is renamed to.
interface Taking {
  item: UnsentItem;
  from: string;
  to: string;
}

// A file of the folder that may be taken up: an item of another store, or of the layout before.
interface Candidate {
  name: string;
  seq: number;
  owner?: string; // none: the layout before
}

/** The unsent items of one home, in the order they were kept. */
export class UnsentStore {
  #dir: string;
  #parent: string;
  #made = false; // the folders exist: made by this store
  #key?: Uint8Array;
  #seal: boolean;
  #maxItems: number;
  #maxBytes: number;
  #link: Link;
  #seq = 0;
  #closed = false;
  // Its owner id: in the names of its files, and of the lock file it holds (#lock) while open.
  #owner = newOwner();
  #lock?: Deno.FsFile;
  #locking?: Promise<void>;
  #taking?: Promise<TakenUp>;
  #busy = 0; // keeps under way
  // By item id; `durable` once it was synced with its name (a write-ahead copy is not).
  #files = new Map<string, { file: string; bytes: number; durable: boolean }>();

  private constructor(dir: string, parent: string, options: UnsentStoreOptions) {
    this.#dir = dir;
    this.#parent = parent;
    // Its own key: history's key never seals anything but history.
    this.#key = options.key && new Uint8Array(
      hkdfSync("sha256", options.key, new Uint8Array(0), "e2e-chat mailbox unsent v1", 32),
    );
    this.#seal = Boolean(this.#key) && (options.seal ?? true);
    this.#maxItems = options.maxItems ?? MAX_UNSENT_ITEMS;
    this.#maxBytes = options.maxBytes ?? MAX_UNSENT_BYTES;
    this.#link = options.link ?? Deno.link;
  }

  /**
   * Opens the store in `dir` (created, inside `parent`, on the first {@linkcode keep}) and takes
   * up what it holds, oldest first, as {@linkcode takeUp} does: the files of no running store
   * (another chat's, running on the same home), which it holds from now on.
   *
   * @example
   * ```ts
   * import { UnsentStore } from "./mailbox_unsent.ts";
   * const { store, items } = await UnsentStore.open("/tmp/alice/mailbox/unsent", "/tmp/alice/mailbox");
   * await store.keep({ to: "bob", kind: "message", id: "1", at: new Date().toISOString(), payload: new Uint8Array([104, 105]) });
   * console.log(items.length, store.size); // 0 1
   * store.close(); // its files wait for the next open
   * ```
   */
  static async open(
    dir: string,
    parent: string,
    options: UnsentStoreOptions = {},
  ): Promise<{ store: UnsentStore } & TakenUp> {
    const store = new UnsentStore(dir, parent, options);
    return { store, ...await store.takeUp() };
  }

  /**
   * Takes up the files of `dir` that no running store holds (left by a chat that quit or
   * crashed, this one's excepted), oldest first, within its limits: each is renamed to a name of
   * this store's, after its own, and held from now on. A file that cannot be read (torn, foreign,
   * no regular file, larger than any item) is moved into `dir/unreadable/` and named there in
   * `unreadable` (so a next start does not name it again); one past the limits is named in
   * `overLimit` and left in place, not held; one it cannot open, lock or read now (out of file
   * handles, no permission) is named in `unopened`, left in place and not taken up: only what it
   * read and could not decode is unreadable. Does nothing once closed; one call at a time (a
   * second while one runs gets its answer).
   */
  takeUp(): Promise<TakenUp> {
    if (this.#closed) {
      return Promise.resolve({ items: [], unreadable: [], overLimit: [], unopened: [] });
    }
    this.#taking ??= this.#takeUp().finally(() => {
      this.#taking = undefined;
      this.#letGoIfEmpty();
    });
    return this.#taking;
  }

  async #takeUp(): Promise<TakenUp> {
    const dir = this.#dir;
    const found: TakenUp = { items: [], unreadable: [], overLimit: [], unopened: [] };
    const candidates: Candidate[] = [];
    const locks = new Set<string>();
    try {
      for (const { name } of Deno.readDirSync(dir)) {
        const lock = LOCK.exec(name)?.[1];
        if (lock && lock !== this.#owner) locks.add(lock);
        const m = ITEM.exec(name) ?? OLD_ITEM.exec(name);
        if (!m) continue;
        const seq = Number(m[1]);
        this.#seq = Math.max(this.#seq, seq); // ours go after every file seen
        if (m[2] !== this.#owner) candidates.push({ name, seq, owner: m[2] });
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new E2eError("ERR_FILE", `Cannot read "${dir}"`, { cause: e });
      }
    }
    candidates.sort((a, b) => a.seq - b.seq || (a.owner ?? "").localeCompare(b.owner ?? ""));
    const owners = new Map<string, OwnerLockState>();
    // The lock file of a chat killed with none of its items left on disk: removed.
    for (const c of candidates) if (c.owner) locks.delete(c.owner);
    for (const owner of locks) {
      const lock = await lockOwner(dir, owner);
      if (lock instanceof OwnerLock) await lock.release();
    }
    let total = 0;
    for (const f of this.#files.values()) total += f.bytes;
    // Two steps, so that a start killed at any point leaves every recipient's items in order:
    // each file is read and given our next number, in order; then they are renamed, the last
    // first. Killed partway, it leaves those it renamed (numbered after every file it saw) after
    // those it did not, in the order they were kept. The owners' locks (and the flocks of the
    // layout before) are held from a file's reading to the end, so that no other store takes up
    // a file that is to be ours.
    const held: Deno.FsFile[] = [];
    const taking: Taking[] = [];
    try {
      for (const { name, owner } of candidates) {
        let lock = owner ? owners.get(owner) : undefined;
        if (owner && !lock) owners.set(owner, lock = await lockOwner(dir, owner));
        if (lock === "held") continue; // another running chat's
        const claimed = lock && "error" in lock
          ? lock
          : await claimItemFile(join(dir, name), this.#maxBytes, { lock: !owner });
        if (claimed && "held" in claimed && claimed.held) held.push(claimed.held);
        const next = await this.#claim(found, name, claimed, total, taking);
        if (next) {
          taking.push(next);
          total += weight(next.item);
        }
      }
      const renamed: Taking[] = [];
      for (const t of taking.toReversed()) {
        if (this.#closed) break; // closed meanwhile: the rest is left for the next start
        try {
          await Deno.rename(t.from, t.to);
          renamed.unshift(t);
        } catch (e) {
          found.unopened.push({ file: t.from, reason: systemReason(e) });
        }
      }
      for (const { item, to } of renamed) {
        this.#files.set(item.id, { file: to, bytes: weight(item), durable: true });
        found.items.push(item);
      }
    } finally {
      for (const file of held) file.close(); // ours by their names now
      for (const lock of owners.values()) if (lock instanceof OwnerLock) await lock.release();
    }
    // The renames, durable: a power cut must not bring back a name another start takes up.
    if (found.items.length) await syncDir(dir).catch(() => {});
    return found;
  }

  // One file to take up, read as `claimed` (while no other store may take it), after those in
  // `taking`: decoded, and given our next number (renamed to it by #takeUp); or named
  // unreadable, past the limits, or unopened.
  async #claim(
    found: TakenUp,
    name: string,
    claimed: Claimed,
    total: number,
    taking: Taking[],
  ): Promise<Taking | undefined> {
    const file = join(this.#dir, name);
    if (!claimed) return undefined; // another running chat's, or gone meanwhile
    if ("error" in claimed) {
      found.unopened.push({ file, reason: systemReason(claimed.error) });
      return undefined; // not taken up now: tried again at the next start
    }
    const item = this.#decode(claimed.text);
    if (!item || this.#files.has(item.id) || taking.some((t) => t.item.id === item.id)) {
      // Named once: a torn write-ahead copy (a power cut) would be named at every start.
      found.unreadable.push(await moveAside(this.#dir, name));
      return undefined;
    }
    const count = this.#files.size + taking.length;
    if (count >= this.#maxItems || total + weight(item) > this.#maxBytes) {
      found.overLimit.push({ file, limit: count >= this.#maxItems ? "items" : "bytes" });
      return undefined; // another chat on this home may take it
    }
    // Ours from now on: under our name (our lock held first), after every number seen.
    if (this.#closed) return undefined; // closed meanwhile: left for the next start
    try {
      await this.#holdLock();
      if (this.#seq >= MAX_SEQ) throw this.#full();
    } catch (e) {
      found.unopened.push({ file, reason: systemReason(e) });
      return undefined;
    }
    return { item, from: file, to: join(this.#dir, this.#name(++this.#seq)) };
  }

  // The name of our file numbered `seq`.
  #name(seq: number): string {
    return `${String(seq).padStart(10, "0")}.${this.#owner}.json`;
  }

  // The folders, made durably and private the first time (not at every keep).
  async #makeDirs(): Promise<void> {
    if (this.#made) return;
    await ensurePrivateDir(this.#parent, { durable: true });
    await ensurePrivateDir(this.#dir, { durable: true });
    this.#made = true;
  }

  // Holds our lock file (from our first file on, until close()): made under a temp name and
  // locked before it has its name, so that no other store takes it for a chat that is gone.
  // Once: two keeps at once wait for the same.
  #holdLock(): Promise<void> {
    if (this.#lock || this.#closed) return Promise.resolve();
    this.#locking ??= this.#makeLock().finally(() => this.#locking = undefined);
    return this.#locking;
  }

  async #makeLock(): Promise<void> {
    await this.#makeDirs();
    const tmp = join(this.#dir, `.${crypto.randomUUID()}.tmp`);
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      await file.tryLock(true); // a name nobody else knows: taken at once
      await Deno.rename(tmp, join(this.#dir, `${this.#owner}.lock`)); // our id: nobody else's
    } catch (e) {
      file.close();
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
    this.#lock = file;
    if (this.#closed) this.#letGo(); // closed meanwhile: let go at once
  }

  /** How many items it holds. */
  get size(): number {
    return this.#files.size;
  }

  /** Its limits: items and bytes at most. */
  get limits(): { maxItems: number; maxBytes: number } {
    return { maxItems: this.#maxItems, maxBytes: this.#maxBytes };
  }

  /**
   * Keeps `item` (or replaces its earlier copy, in its place), durably: on disk, name and all,
   * before it resolves. Throws `ERR_QUOTA` when a new item would pass the limits. With
   * `durable: false` (a write-ahead copy, kept only while its post is on the way) it is written
   * and named without fsync: it outlives a crash of this process, not a power cut. A new item
   * gets a file of its own, never one another store (another chat on this home) made meanwhile.
   */
  async keep(item: UnsentItem, options: { durable?: boolean } = {}): Promise<void> {
    const durable = options.durable ?? true;
    const before = this.#files.get(item.id);
    const bytes = weight(item);
    if (!before) {
      if (this.#files.size >= this.#maxItems) {
        throw new E2eError(
          "ERR_QUOTA",
          `${this.#files.size} items already wait for the CA service to answer, at most ${this.#maxItems}`,
          { hint: "send it again when the CA service answers" },
        );
      }
      let total = bytes;
      for (const f of this.#files.values()) total += f.bytes;
      if (total > this.#maxBytes) {
        throw new E2eError(
          "ERR_QUOTA",
          `the items that wait for the CA service to answer would take ${total} bytes, at most ${this.#maxBytes}`,
          { hint: "send it again when the CA service answers" },
        );
      }
    }
    // An eleventh digit would name a file no start reads (a file restored or put there with the
    // last number): the item would be lost, silently, having been said to wait.
    if (!before && this.#seq >= MAX_SEQ) throw this.#full();
    // In flight: our lock is not let go meanwhile (see #letGoIfEmpty).
    this.#busy++;
    try {
      await this.#makeDirs();
      await this.#holdLock(); // before the file has our name
      const text = this.#encode(item);
      let file = before?.file;
      if (file) {
        await writeItem(file, text, { durable, createNew: false });
      } else {
        // The next number no file of ours has (one restored there, say, is never replaced).
        for (;;) {
          if (this.#seq >= MAX_SEQ) throw this.#full();
          file = join(this.#dir, this.#name(++this.#seq));
          try {
            await writeItem(file, text, { durable, createNew: this.#link });
            break;
          } catch (e) {
            if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
          }
        }
      }
      this.#files.set(item.id, { file, bytes, durable });
    } finally {
      this.#busy--;
      this.#letGoIfEmpty();
    }
  }

  /** Forgets the item `id`, durably (a next start must not post it again). */
  async drop(id: string): Promise<void> {
    const f = this.#files.get(id);
    if (!f) return;
    this.#files.delete(id);
    await Deno.remove(f.file).catch(() => {});
    // A copy that was never synced needs no synced removal: should it come back after a power
    // cut, its post is made again. The service stores those bytes once only while it remembers
    // the first copy (until an hour after its recipient fetched it, ca/mailbox.ts RECENTLY_MS);
    // past that, the recipient gets it again and drops it as replayed (its id is seen).
    if (f.durable) await syncDir(this.#dir).catch(() => {});
    this.#letGoIfEmpty();
  }

  /**
   * Lets go of its files (they wait for the next open, or {@linkcode takeUp}, of this chat or
   * another on this home): its lock file is removed and let go. An item kept after it is written
   * and not held. The store stays usable.
   */
  close(): void {
    this.#closed = true;
    this.#letGo();
  }

  // Lets go of our lock once we hold no file and none is under way (a keep, a take-up): a
  // running chat with nothing waiting holds no handle and leaves nothing in the folder. The
  // next lock is made under a new owner id: whoever made our old lock file again, to take up
  // files of ours that are gone, removes that name, never our new one.
  #letGoIfEmpty(): void {
    if (this.#files.size || this.#busy || this.#taking || this.#locking) return;
    this.#letGo();
  }

  #letGo(): void {
    const lock = this.#lock;
    this.#lock = undefined;
    if (!lock) return;
    // Removed first: whoever opened it meanwhile finds it held, then gone. A store that takes up
    // our files makes it again.
    try {
      Deno.removeSync(join(this.#dir, `${this.#owner}.lock`));
    } catch { /* gone: made again by whoever takes our files up */ }
    lock.close();
    this.#owner = newOwner();
  }

  #full(): E2eError {
    return new E2eError(
      "ERR_FILE",
      `Cannot keep a mailbox item in "${this.#dir}": its files are numbered up to ${MAX_SEQ}`,
      { hint: `move the files of "${this.#dir}" that are not sent away` },
    );
  }

  #encode(item: UnsentItem): string {
    const plain = JSON.stringify({
      v: 1,
      to: item.to,
      kind: item.kind,
      id: item.id,
      at: item.at,
      ...(item.name === undefined ? {} : { name: item.name }),
      ...(item.der
        ? { der: b64(item.der), sealedTo: item.sealedTo }
        : item.payload
        ? { payload: b64(item.payload) }
        : {}),
      ...(item.note === undefined ? {} : { note: item.note }),
    });
    if (!this.#seal || !this.#key) return plain + "\n";
    return JSON.stringify({ v: 1, e: sealText(this.#key, AAD, plain) }) + "\n";
  }

  #decode(text: string): UnsentItem | undefined {
    try {
      let o = JSON.parse(text);
      if (typeof o?.e === "string") {
        if (!this.#key) return undefined;
        o = JSON.parse(openText(this.#key, AAD, o.e)); // throws if not ours: unreadable
      }
      const kinds = ["message", "file", "room"];
      if (
        o?.v !== 1 || typeof o.to !== "string" || !kinds.includes(o.kind) ||
        typeof o.id !== "string" || typeof o.at !== "string" ||
        (o.name !== undefined && typeof o.name !== "string") ||
        (typeof o.der !== "string" && typeof o.payload !== "string") ||
        (typeof o.der === "string" && typeof o.sealedTo !== "string") ||
        (o.note !== undefined && (typeof o.note !== "object" || o.note === null))
      ) return undefined;
      checkName(o.to); // a member's name, or unreadable (posted to nobody else)
      return {
        to: o.to,
        kind: o.kind,
        id: o.id,
        at: o.at,
        ...(o.name === undefined ? {} : { name: o.name }),
        ...(typeof o.der === "string"
          ? { der: unb64(o.der), sealedTo: o.sealedTo }
          : { payload: unb64(o.payload) }),
        ...(o.note === undefined ? {} : { note: o.note }),
      };
    } catch {
      return undefined;
    }
  }
}

// A new owner id: 16 hex digits, random.
function newOwner(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

// Writes `text` to `path` (a sibling temp file renamed, or with `createNew` linked, into place).
async function writeItem(
  path: string,
  text: string,
  options: { durable: boolean; createNew: Link | false },
): Promise<void> {
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  const bytes = new TextEncoder().encode(text);
  try {
    {
      using file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
      let written = 0;
      while (written < bytes.length) written += await file.write(bytes.subarray(written));
      if (options.durable) await file.sync();
    }
    if (options.createNew) {
      // Never replaces another's: a name taken is AlreadyExists, as link(2) says.
      if (!await placeNew(tmp, path, { link: options.createNew })) {
        throw new Deno.errors.AlreadyExists(path);
      }
    } else {
      await Deno.rename(tmp, path);
    }
    if (options.durable) await syncDir(dirname(path));
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

// The lock of another store, by its owner id: held by us now (its files are ours to take up),
// held by a running store ("held"), or the error that kept us from opening or locking it.
type OwnerLockState = OwnerLock | "held" | { error: unknown };

// Another store's lock file, held by us while we take up its files.
class OwnerLock {
  #path: string;
  #file: Deno.FsFile;

  constructor(path: string, file: Deno.FsFile) {
    this.#path = path;
    this.#file = file;
  }

  // Removes the lock file (still ours: another store that opens it meanwhile finds it held, then
  // gone, and makes it again) and lets go.
  async release(): Promise<void> {
    await Deno.remove(this.#path).catch(() => {});
    this.#file.close();
  }
}

// Takes the lock of the store `owner` in `dir`, if no running store holds it: its lock file,
// made when missing (a store that quit removed it; so that two stores taking up its files
// exclude each other all the same), and looked at again when replaced or removed between our
// open and our lock.
async function lockOwner(dir: string, owner: string): Promise<OwnerLockState> {
  const path = join(dir, `${owner}.lock`);
  for (let tries = 0; tries < 3; tries++) {
    let file: Deno.FsFile | undefined;
    try {
      // Not a FIFO, a device or a link planted there: open(2) would follow it.
      const link = await Deno.lstat(path).catch((e) => {
        if (e instanceof Deno.errors.NotFound) return undefined;
        throw e;
      });
      if (link && !link.isFile) return { error: new Error(`Not a regular file: "${path}"`) };
      file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o600 });
      if (!await file.tryLock(true)) {
        file.close();
        return "held";
      }
      const info = await file.stat();
      const now = await Deno.lstat(path);
      if (info.ino === now.ino && info.dev === now.dev) return new OwnerLock(path, file);
      file.close();
    } catch (e) {
      file?.close();
      if (!(e instanceof Deno.errors.NotFound)) return { error: e };
    }
  }
  return "held"; // replaced again and again: someone is at it
}

// A file read to be taken up: its text (and, of the layout before, the file held by its flock),
// undefined when another store holds it or it went meanwhile, or the error that kept it from
// being opened, locked or read.
type Claimed = { text: string; held?: Deno.FsFile } | { error: unknown } | undefined;

// Reads an item's file to take it up: with `lock` (the layout before, one flock per file) taking
// its flock first, and held. Undefined when another store holds it (another chat running on this
// home) or it went meanwhile, or the error that kept it from being opened, locked or read (out of
// file handles, a lock the file system refuses, no permission): that file is not unreadable, only
// not now, and stays in place. The text is "" for one that is no regular file (a symbolic link, a
// FIFO that would block the start, a device that never ends) or is larger than any item we
// write: a file restored or planted there must neither hang nor exhaust the start. Base64 twice
// (sealed) is 16/9 of the bytes; the rest is the item's fields and note.
async function claimItemFile(
  path: string,
  maxBytes: number,
  options: { lock: boolean },
): Promise<Claimed> {
  const cap = maxBytes * 2 + 1024 * 1024;
  // A file replaced or removed between our open and our lock is looked at again, by its name.
  for (let tries = 0; tries < 3; tries++) {
    let file: Deno.FsFile | undefined;
    try {
      const link = await Deno.lstat(path);
      if (!link.isFile) return { text: "" };
      file = await Deno.open(path);
      if (options.lock && !await file.tryLock(true)) {
        file.close();
        return undefined;
      }
      const info = await file.stat();
      const now = await Deno.lstat(path);
      if (info.ino !== now.ino || info.dev !== now.dev) {
        file.close();
        continue;
      }
      let text = "";
      if (info.isFile && info.size <= cap) {
        const bytes = await readUpTo(file, info.size + 1);
        // It grew meanwhile: not one of ours.
        if (bytes.length <= info.size) text = new TextDecoder().decode(bytes);
      }
      if (options.lock) return { text, held: file };
      file.close();
      return { text };
    } catch (e) {
      file?.close();
      if (e instanceof Deno.errors.NotFound) {
        if (file) continue;
        return undefined;
      }
      return { error: e };
    }
  }
  return undefined;
}

// Moves the file `name` of `dir` that cannot be read into `dir/unreadable/` (0700), under a name
// not taken there; returns where it is now (where it was, if it could not be moved).
async function moveAside(dir: string, name: string): Promise<string> {
  const from = join(dir, name);
  const aside = join(dir, "unreadable");
  try {
    await ensurePrivateDir(aside);
    for (let n = 0;; n++) {
      const to = join(aside, n ? `${name}.${n}` : name);
      try {
        await Deno.lstat(to);
        continue; // taken: one moved here earlier
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      await Deno.rename(from, to);
      return to;
    }
  } catch {
    return from;
  }
}

// What an item counts against the byte limit.
function weight(item: UnsentItem): number {
  return (item.der ?? item.payload)?.length ?? 0;
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64");
}

function unb64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, "base64"));
}
