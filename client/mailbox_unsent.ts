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
 * @module
 */
import { Buffer } from "node:buffer";
import { hkdfSync } from "node:crypto";
import { join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, readUpTo, syncDir, writeFileAtomic } from "../lib/fs.ts";
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
  #seq = 0;
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
  }

  /**
   * Opens the store in `dir` (created, inside `parent`, on the first {@linkcode keep}) and reads
   * what it holds, oldest first. A file that cannot be read (torn, foreign, no regular file, larger
   * than any item) is named in `unreadable`, one past the limits in `overLimit`; both are left.
   *
   * @example
   * ```ts
   * import { UnsentStore } from "./mailbox_unsent.ts";
   * const { store, items } = await UnsentStore.open("/tmp/alice/mailbox/unsent", "/tmp/alice/mailbox");
   * await store.keep({ to: "bob", kind: "message", id: "1", at: new Date().toISOString(), payload: new Uint8Array([104, 105]) });
   * console.log(items.length, store.size); // 0 1
   * ```
   */
  static async open(
    dir: string,
    parent: string,
    options: UnsentStoreOptions = {},
  ): Promise<
    { store: UnsentStore; items: UnsentItem[]; unreadable: string[]; overLimit: OverLimit[] }
  > {
    const store = new UnsentStore(dir, parent, options);
    const items: UnsentItem[] = [];
    const unreadable: string[] = [];
    const overLimit: OverLimit[] = [];
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
      const item = store.#decode(await readItemFile(file, store.#maxBytes));
      if (!item || store.#files.has(item.id)) {
        unreadable.push(file);
        continue;
      }
      if (store.#files.size >= store.#maxItems) {
        overLimit.push({ file, limit: "items" });
        continue;
      }
      if (total + weight(item) > store.#maxBytes) {
        overLimit.push({ file, limit: "bytes" });
        continue;
      }
      total += weight(item);
      store.#files.set(item.id, { file, bytes: weight(item), durable: true });
      items.push(item);
    }
    return { store, items, unreadable, overLimit };
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
   * and named without fsync: it outlives a crash of this process, not a power cut.
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
    if (!before && this.#seq >= MAX_SEQ) {
      throw new E2eError(
        "ERR_FILE",
        `Cannot keep a mailbox item in "${this.#dir}": its files are numbered up to ${MAX_SEQ}`,
        { hint: `move the files of "${this.#dir}" that are not sent away` },
      );
    }
    if (!this.#made) {
      // Made, durably and private, the first time an item is kept (not at every keep).
      await ensurePrivateDir(this.#parent, { durable: true });
      await ensurePrivateDir(this.#dir, { durable: true });
      this.#made = true;
    }
    const file = before?.file ?? join(this.#dir, `${String(++this.#seq).padStart(10, "0")}.json`);
    await writeFileAtomic(file, this.#encode(item), { mode: 0o600, durable, syncDir: durable });
    this.#files.set(item.id, { file, bytes, durable });
  }

  /** Forgets the item `id`, durably (a next start must not post it again). */
  async drop(id: string): Promise<void> {
    const f = this.#files.get(id);
    if (!f) return;
    this.#files.delete(id);
    await Deno.remove(f.file).catch(() => {});
    // A copy that was never synced needs no synced removal: should it come back after a power
    // cut, its post is made again, and the service keeps one.
    if (f.durable) await syncDir(this.#dir).catch(() => {});
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

// The text of an item's file, or "" for one that is no regular file (a symbolic link, a FIFO that
// would block the start, a device that never ends) or is larger than any item we write: a file
// restored or planted there must neither hang nor exhaust the start. Base64 twice (sealed) is
// 16/9 of the bytes; the rest is the item's fields and note.
async function readItemFile(path: string, maxBytes: number): Promise<string> {
  const cap = maxBytes * 2 + 1024 * 1024;
  try {
    if (!(await Deno.lstat(path)).isFile) return "";
    using file = await Deno.open(path);
    const info = await file.stat();
    if (!info.isFile || info.size > cap) return "";
    const bytes = await readUpTo(file, info.size + 1);
    return bytes.length > info.size ? "" : new TextDecoder().decode(bytes); // it grew meanwhile
  } catch {
    return "";
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
