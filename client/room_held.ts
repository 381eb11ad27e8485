/**
 * Room messages from the mailbox held apart until the member list they were signed under is here,
 * or until their author's earlier messages are (client/rooms.ts `holds`): the CA's copy is deleted
 * once the item is here, synced, so that a chat that stops (or is killed) while one is held takes
 * it up again at its next start instead of losing it. One file per mailbox item in
 * `HOME/mailbox/room-held/` (0600, the folder 0700; sealed like the history when the client's key
 * is encrypted), removed once the room took the message (its history lines synced) or let it go.
 *
 * Why on disk and not left at the CA until shown: left there, it would be fetched and opened again
 * at every look (and keep the long poll from waiting), count against its sender's quota in our
 * mailbox, and the room's bound per sender would have a flood's items churn through the CA forever.
 *
 * @module
 */
import { createHash, hkdfSync } from "node:crypto";
import { join } from "node:path";
import { ensurePrivateDirSync, writeFileAtomicSync } from "../lib/fs.ts";
import { openText, sealText } from "./history.ts";
import { MAX_HELD, MAX_HELD_CHARS, MAX_PROVISIONAL_PER_SENDER } from "./rooms.ts";

/**
 * Items kept from one sender, at most: as many as a room holds of one author, those waiting for
 * the author's earlier ones ({@linkcode MAX_HELD}) and those under a newer list
 * ({@linkcode MAX_PROVISIONAL_PER_SENDER}); the oldest go. Fewer, and a copy the room still held
 * would go from disk, so that a restart lost it.
 */
export const MAX_ROOM_HELD_PER_SENDER = MAX_HELD + MAX_PROVISIONAL_PER_SENDER;
/** Items kept in all, at most (two senders' whole backlogs): the oldest of the sender holding the
 * most go. */
export const MAX_ROOM_HELD = 512;
/** Characters of the items' room frames kept in all, at most (two rooms' worth of held
 * messages): the same go. */
export const MAX_ROOM_HELD_CHARS = 2 * MAX_HELD_CHARS;

const AAD = "e2e-chat room held v1";

/** A room message from the mailbox, held: its item id, its sender and the room frame it carried. */
export interface RoomHeldItem {
  /** The mailbox item id. */
  id: string;
  /** Its sender (checked by the mailbox). */
  from: string;
  /** The room frame, JSON, as {@linkcode Rooms.fromMailbox} takes it. */
  payload: string;
}

/**
 * The held room messages of a home.
 *
 * @example
 * ```ts
 * import { RoomHeld } from "./room_held.ts";
 * const dir = await Deno.makeTempDir();
 * const held = new RoomHeld(`${dir}/room-held`);
 * held.put({ id: "0123456789abcdef0123456789abcdef", from: "ann", payload: "{}" });
 * console.log(new RoomHeld(`${dir}/room-held`).items().length); // 1
 * ```
 */
export class RoomHeld {
  #dir: string;
  #key?: Uint8Array;
  #seal: boolean;
  #items = new Map<string, RoomHeldItem>(); // by id, oldest first

  /** Reads `dir` (what cannot be read is skipped); `key` is history's, `seal` whether to seal. */
  constructor(dir: string, options: { key?: Uint8Array; seal?: boolean } = {}) {
    this.#dir = dir;
    // Its own key: history's key never seals anything but history.
    this.#key = options.key &&
      new Uint8Array(hkdfSync("sha256", options.key, new Uint8Array(0), AAD, 32));
    this.#seal = Boolean(this.#key) && (options.seal ?? true);
    let found: Array<{ item: RoomHeldItem; at: number }> = [];
    try {
      for (const e of Deno.readDirSync(dir)) {
        if (!e.isFile || !/^[0-9a-f]{32}\.json$/.test(e.name)) continue;
        const read = this.#read(join(dir, e.name));
        if (read && fileName(read.item.id) === e.name) found.push(read);
      }
    } catch { /* none */ }
    found = found.sort((a, b) => a.at - b.at);
    for (const { item } of found) this.#items.set(item.id, item);
  }

  /** The items held, oldest first. */
  items(): RoomHeldItem[] {
    return [...this.#items.values()];
  }

  /**
   * Keeps `item`, synced, folder and all (throws when it cannot: the CA's copy must stay). Past
   * the bounds, the oldest of its sender (or of the sender holding the most) is forgotten.
   */
  put(item: RoomHeldItem): void {
    const plain = JSON.stringify({ v: 1, ...item, at: Date.now() });
    const text = this.#seal && this.#key
      ? JSON.stringify({ v: 1, e: sealText(this.#key, AAD, plain) })
      : plain;
    ensurePrivateDirSync(this.#dir, { durable: true });
    writeFileAtomicSync(join(this.#dir, fileName(item.id)), text + "\n", {
      mode: 0o600,
      durable: true,
      syncDir: true,
    });
    this.#items.delete(item.id);
    this.#items.set(item.id, item);
    const theirs = this.items().filter((i) => i.from === item.from);
    if (theirs.length > MAX_ROOM_HELD_PER_SENDER) this.drop(theirs[0].id);
    // As the room does in memory (client/rooms.ts #holdProvisional): the oldest of the sender
    // holding the most goes, so others' floods, each within the room's bound, cannot push out
    // an honest sender's item the room still holds (a restart would lose it).
    while (this.#items.size > MAX_ROOM_HELD || this.#chars() > MAX_ROOM_HELD_CHARS) {
      const counts = new Map<string, number>();
      for (const i of this.#items.values()) counts.set(i.from, (counts.get(i.from) ?? 0) + 1);
      let [most, mostN] = [item.from, counts.get(item.from) ?? 0];
      for (const [name, n] of counts) if (n > mostN) [most, mostN] = [name, n];
      this.drop(this.items().find((i) => i.from === most)!.id);
    }
  }

  #chars(): number {
    let n = 0;
    for (const i of this.#items.values()) n += i.payload.length;
    return n;
  }

  /** Item `id` is no longer held (taken, its lines synced, or let go). */
  drop(id: string): void {
    this.#items.delete(id);
    try {
      Deno.removeSync(join(this.#dir, fileName(id)));
    } catch { /* gone already; one left behind is taken up as a copy at the next start */ }
  }

  #read(path: string): { item: RoomHeldItem; at: number } | undefined {
    try {
      let data = JSON.parse(Deno.readTextFileSync(path));
      if (typeof data?.e === "string") {
        if (!this.#key) return undefined;
        data = JSON.parse(openText(this.#key, AAD, data.e));
      }
      const { id, from, payload, at } = data ?? {};
      if (typeof id !== "string" || typeof from !== "string" || typeof payload !== "string") {
        return undefined;
      }
      return { item: { id, from, payload }, at: typeof at === "number" ? at : 0 };
    } catch {
      return undefined; // not ours to read
    }
  }
}

// An item id names its file through a hash: ids are the sender's to choose.
function fileName(id: string): string {
  return createHash("sha256").update(id).digest("hex").slice(0, 32) + ".json";
}
