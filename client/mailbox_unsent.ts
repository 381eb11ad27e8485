/**
 * Mailbox items that wait for the CA service to answer, on disk: HOME/mailbox/unsent/ (0700),
 * one 0600 file per item, named by a sequence number (`0000000001.json`), so that they survive
 * the chat's quit or crash and are posted, in order, by the next start (client/mailbox.ts).
 *
 * A file is one JSON object: `{"v":1,"to":…,"kind":…,"id":…,"at":…}` with `der` (the sealed
 * item, base64: posted again as it is, the same bytes) once it was sealed, else `payload` (what
 * is to be sealed, base64), and `name` (a file's) and `note` (what the chat reports when it
 * ends) when given. When the client's key is encrypted, the whole object is sealed as history's
 * lines are (client/history.ts): `{"v":1,"e":"<base64 nonce‖ciphertext‖tag>"}`, AES-256-GCM
 * under a key derived from history's, so the recipient's name, the id and the text are no more
 * readable than the conversation. The file name tells only the order.
 *
 * Two chats may run on one home (a terminal and a web page): a new file is made under a number
 * no file has (link(2), never replacing one: the next number when it is taken), and each file is
 * held with an exclusive flock(2) by the store that wrote it, or that resumed it, while it is
 * open (the kernel lets go when its process ends, however). A store opening resumes only the
 * files nobody holds: what a chat that quit or crashed left, never another running chat's items
 * nor its write-ahead copies. A file it read and cannot decode is moved into `unreadable/` once
 * named; one it cannot open now (out of file handles, say) stays, for the next start. Each held
 * file keeps one handle open: up to {@linkcode MAX_UNSENT_ITEMS} per store (one lock per store
 * would need the owner in each file's name, a change of layout not made yet).
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
const NAME = /^\d{10}\.json$/;
const MAX_SEQ = 9_999_999_999;

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
  // By item id; `durable` once it was synced with its name (a write-ahead copy is not); `held`,
  // the open file whose flock tells other stores it is ours.
  #files = new Map<
    string,
    { file: string; bytes: number; durable: boolean; held?: Deno.FsFile }
  >();

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
   * Opens the store in `dir` (created, inside `parent`, on the first {@linkcode keep}) and reads
   * what it holds, oldest first: the files no other open store holds (another chat's, running on
   * the same home), which it holds from now on. A file that cannot be read (torn, foreign, no
   * regular file, larger than any item) is moved into `dir/unreadable/` and named there in
   * `unreadable` (so a next start does not name it again); one past the limits is named in
   * `overLimit` and left in place, not held; one it cannot open, lock or read now (out of file
   * handles, no permission) is named in `unopened`, left in place and not resumed: only what it
   * read and could not decode is unreadable.
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
  ): Promise<
    {
      store: UnsentStore;
      items: UnsentItem[];
      unreadable: string[];
      overLimit: OverLimit[];
      unopened: Unopened[];
    }
  > {
    const store = new UnsentStore(dir, parent, options);
    const items: UnsentItem[] = [];
    const unreadable: string[] = [];
    const overLimit: OverLimit[] = [];
    const unopened: Unopened[] = [];
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => NAME.test(n)).sort();
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new E2eError("ERR_FILE", `Cannot read "${dir}"`, { cause: e });
      }
    }
    let total = 0;
    for (const name of names) {
      const file = join(dir, name);
      store.#seq = Math.max(store.#seq, Number(name.slice(0, 10)));
      const claimed = await claimItemFile(file, store.#maxBytes);
      if (!claimed) continue; // another running chat's, or gone meanwhile
      if ("error" in claimed) {
        unopened.push({ file, reason: systemReason(claimed.error) });
        continue; // not resumed now: tried again at the next start
      }
      const item = store.#decode(claimed.text);
      if (!item || store.#files.has(item.id)) {
        // Named once: a torn write-ahead copy (a power cut) would be named at every start.
        unreadable.push(await moveAside(dir, name));
        claimed.held?.close();
        continue;
      }
      if (store.#files.size >= store.#maxItems || total + weight(item) > store.#maxBytes) {
        overLimit.push({
          file,
          limit: store.#files.size >= store.#maxItems ? "items" : "bytes",
        });
        claimed.held?.close(); // another chat on this home may take it
        continue;
      }
      total += weight(item);
      store.#files.set(item.id, {
        file,
        bytes: weight(item),
        durable: true,
        held: claimed.held,
      });
      items.push(item);
    }
    return { store, items, unreadable, overLimit, unopened };
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
    if (!this.#made) {
      // Made, durably and private, the first time an item is kept (not at every keep).
      await ensurePrivateDir(this.#parent, { durable: true });
      await ensurePrivateDir(this.#dir, { durable: true });
      this.#made = true;
    }
    const text = this.#encode(item);
    let file = before?.file;
    let held: Deno.FsFile;
    if (file) {
      held = await writeHeld(file, text, { durable, createNew: false });
      before?.held?.close(); // the file it replaced
    } else {
      // The next number no file has: another chat on this home may have taken ours meanwhile.
      for (;;) {
        if (this.#seq >= MAX_SEQ) throw this.#full();
        file = join(this.#dir, `${String(++this.#seq).padStart(10, "0")}.json`);
        try {
          held = await writeHeld(file, text, { durable, createNew: this.#link });
          break;
        } catch (e) {
          if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
        }
      }
    }
    if (this.#closed) {
      held.close(); // kept after close(): it waits for the next open
      this.#files.set(item.id, { file, bytes, durable });
    } else {
      this.#files.set(item.id, { file, bytes, durable, held });
    }
  }

  /** Forgets the item `id`, durably (a next start must not post it again). */
  async drop(id: string): Promise<void> {
    const f = this.#files.get(id);
    if (!f) return;
    this.#files.delete(id);
    await Deno.remove(f.file).catch(() => {});
    f.held?.close(); // once removed: no other store can take it up meanwhile
    // A copy that was never synced needs no synced removal: should it come back after a power
    // cut, its post is made again. The service stores those bytes once only while it remembers
    // the first copy (until an hour after its recipient fetched it, ca/mailbox.ts RECENTLY_MS);
    // past that, the recipient gets it again and drops it as replayed (its id is seen).
    if (f.durable) await syncDir(this.#dir).catch(() => {});
  }

  /**
   * Lets go of its files (they wait for the next open, by this chat or another on this home);
   * an item kept after it is written and let go at once. The store stays usable.
   */
  close(): void {
    this.#closed = true;
    for (const f of this.#files.values()) {
      f.held?.close();
      f.held = undefined;
    }
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

// Writes `text` to `path` (a sibling temp file renamed, or with `createNew` linked, into place)
// and returns it open, holding its flock: taken before it has its name, so that no other store
// reads it as left by a chat that is gone.
async function writeHeld(
  path: string,
  text: string,
  options: { durable: boolean; createNew: Link | false },
): Promise<Deno.FsFile> {
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  const bytes = new TextEncoder().encode(text);
  const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
  try {
    await file.tryLock(true); // a name nobody else knows: taken at once
    let written = 0;
    while (written < bytes.length) written += await file.write(bytes.subarray(written));
    if (options.durable) await file.sync();
    if (options.createNew) {
      // Never replaces another's: a name taken is AlreadyExists, as link(2) says.
      if (!await placeNew(tmp, path, { link: options.createNew, lockPlaceholder: true })) {
        throw new Deno.errors.AlreadyExists(path);
      }
    } else {
      await Deno.rename(tmp, path);
    }
    if (options.durable) await syncDir(dirname(path));
    return file;
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

// Takes an item's file up: its text, and the file held (its flock), or undefined when another
// store holds it (another chat running on this home) or it went meanwhile, or the error that kept
// it from being opened, locked or read (out of file handles, a lock the file system refuses, no
// permission): that file is not unreadable, only not now, and stays in place. The text is "" for
// one that is no regular file (a symbolic link, a FIFO that would block the start, a device that
// never ends) or is larger than any item we write: a file restored or planted there must neither
// hang nor exhaust the start. Base64 twice (sealed) is 16/9 of the bytes; the rest is the item's
// fields and note.
async function claimItemFile(
  path: string,
  maxBytes: number,
): Promise<{ text: string; held?: Deno.FsFile } | { error: unknown } | undefined> {
  const cap = maxBytes * 2 + 1024 * 1024;
  // A file replaced or removed between our open and our lock is looked at again, by its name.
  for (let tries = 0; tries < 3; tries++) {
    let file: Deno.FsFile | undefined;
    try {
      const link = await Deno.lstat(path);
      if (!link.isFile) return { text: "" };
      file = await Deno.open(path);
      if (!await file.tryLock(true)) {
        file.close();
        return undefined;
      }
      const info = await file.stat();
      const now = await Deno.lstat(path);
      if (info.ino !== now.ino || info.dev !== now.dev) {
        file.close();
        continue;
      }
      if (!info.isFile || info.size > cap) return { text: "", held: file };
      const bytes = await readUpTo(file, info.size + 1);
      // It grew meanwhile: not one of ours.
      const text = bytes.length > info.size ? "" : new TextDecoder().decode(bytes);
      return { text, held: file };
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
