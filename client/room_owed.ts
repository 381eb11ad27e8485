/**
 * The history lines owed for room messages that came through the mailbox: the room shows such a
 * message (and its state, `HOME/rooms/ROOMID.json`, says so a moment later) before its lines are
 * synced in the history, and the CA's copy is deleted only once they are. Kept, by mailbox item
 * id, in `HOME/mailbox/room-owed.json` (0600; sealed like the history when the client's key is
 * encrypted), written durably before the room's state is, so that a failed history write followed
 * by a restart records the lines when the item is tried again, not nothing (r130).
 *
 * @module
 */
import { hkdfSync } from "node:crypto";
import { dirname } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDirSync, syncDirSync, systemReason, writeFileAtomicSync } from "../lib/fs.ts";
import { openText, sealText } from "./history.ts";
import type { RoomHistoryRecord } from "./rooms.ts";

/** Items whose lines are owed, at most: the oldest is forgotten first. */
export const MAX_ROOM_OWED_ITEMS = 256;

const AAD = "e2e-chat room owed v1";

/**
 * The owed lines of a home.
 *
 * @example
 * ```ts
 * import { RoomOwed } from "./room_owed.ts";
 * const dir = await Deno.makeTempDir();
 * const owed = new RoomOwed(`${dir}/room-owed.json`);
 * owed.put("item-1", [{ id: "m", room: "#team", roomId: "r", from: "ann", text: "hi" }]);
 * console.log(new RoomOwed(`${dir}/room-owed.json`).get("item-1")?.length); // 1
 * ```
 */
export class RoomOwed {
  #file: string;
  #key?: Uint8Array;
  #seal: boolean;
  #items = new Map<string, RoomHistoryRecord[]>();
  /** Where a `file` that could not be read was moved aside by the constructor, if it was. */
  readonly setAside?: string;

  /**
   * Reads `file` (none when it is missing); `key` is history's, `seal` whether to seal. One that
   * cannot be read, is not JSON or does not open with `key` (a home joined again with a new key:
   * history's key comes from the private key, so none will ever open it) is moved aside to
   * `FILE.unreadable-TIME`, never overwritten nor deleted, and `onWarning` says where
   * ({@linkcode setAside}); throws `ERR_FILE` only when it cannot be moved: taken for none, the
   * next line owed would overwrite the lines it keeps (their only copy).
   */
  constructor(
    file: string,
    options: { key?: Uint8Array; seal?: boolean; onWarning?: (message: string) => void } = {},
  ) {
    this.#file = file;
    // Its own key: history's key never seals anything but history.
    this.#key = options.key &&
      new Uint8Array(hkdfSync("sha256", options.key, new Uint8Array(0), AAD, 32));
    this.#seal = Boolean(this.#key) && (options.seal ?? true);
    // Never the parser's message, nor as the cause: it quotes the file's text.
    const why = this.#unreadable();
    if (why === undefined) return;
    let aside: string;
    try {
      aside = moveAside(file);
    } catch (e) {
      throw new E2eError(
        "ERR_FILE",
        `Cannot read "${file}": ${why}, and cannot move it aside: ${systemReason(e)}`,
        {
          cause: e,
          hint:
            "repair it, or move it aside to give up the history lines of room messages it keeps",
        },
      );
    }
    this.setAside = aside;
    options.onWarning?.(
      `Cannot read "${file}": ${why}; it was moved aside to "${aside}", with the history lines ` +
        `of room messages it kept, and the chat goes on without them`,
    );
  }

  // Takes up `file`'s items; returns why it cannot (missing: none, and undefined).
  #unreadable(): string | undefined {
    let data: unknown;
    try {
      data = JSON.parse(Deno.readTextFileSync(this.#file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      // Never the parser's message: it quotes the file's text.
      return e instanceof SyntaxError ? "it is not JSON" : systemReason(e);
    }
    const sealed = (data as { e?: unknown })?.e;
    if (typeof sealed === "string") {
      if (!this.#key) return "it is sealed, and no key was given to open it";
      try {
        data = JSON.parse(openText(this.#key, AAD, sealed));
      } catch {
        return "it does not open with this key";
      }
    }
    const items = (data as { items?: unknown })?.items;
    if (!Array.isArray(items)) return undefined;
    for (const it of items.slice(-MAX_ROOM_OWED_ITEMS)) {
      if (typeof it?.id !== "string" || !Array.isArray(it.records)) continue;
      const records = (it.records as Array<Record<string, unknown>>).filter((r) =>
        ["id", "room", "roomId", "from", "text"].every((k) => typeof r?.[k] === "string") &&
        (r.late === undefined || typeof r.late === "boolean") &&
        (r.ref === undefined || typeof r.ref === "string")
      ) as unknown as RoomHistoryRecord[];
      if (records.length) this.#items.set(it.id, records);
    }
    return undefined;
  }

  /** The lines owed for mailbox item `id`, if any. */
  get(id: string): RoomHistoryRecord[] | undefined {
    return this.#items.get(id);
  }

  /**
   * Owes `records` for item `id`: in memory at once, on disk (synced) before this returns.
   * Returns false when the disk write failed (the lines are still kept in memory).
   */
  put(id: string, records: RoomHistoryRecord[]): boolean {
    this.#items.delete(id);
    this.#items.set(id, records);
    if (this.#items.size > MAX_ROOM_OWED_ITEMS) {
      this.#items.delete(this.#items.keys().next().value!);
    }
    try {
      this.#write();
      return true;
    } catch {
      return false;
    }
  }

  /** The lines of item `id` are synced in the history: no longer owed. */
  drop(id: string): void {
    if (!this.#items.delete(id)) return;
    try {
      // A line left behind is harmless (used only if its item comes from the CA again).
      if (this.#items.size) this.#write(false);
      else Deno.removeSync(this.#file);
    } catch { /* tried again at the next write */ }
  }

  #write(durable = true): void {
    const plain = JSON.stringify({
      v: 1,
      items: [...this.#items].map(([id, records]) => ({ id, records })),
    });
    const text = this.#seal && this.#key
      ? JSON.stringify({ v: 1, e: sealText(this.#key, AAD, plain) })
      : plain;
    ensurePrivateDirSync(dirname(this.#file), { durable });
    writeFileAtomicSync(this.#file, text + "\n", { mode: 0o600, durable, syncDir: durable });
  }
}

// Moves `file` to a new name beside it, `FILE.unreadable-TIME`, synced: a hard link never
// overwrites; without links (vfat, some shares) the name is claimed first with O_EXCL.
function moveAside(file: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  for (let n = 0; n < 100; n++) {
    const to = `${file}.unreadable-${stamp}${n ? `-${n}` : ""}`;
    let linked = true;
    try {
      Deno.linkSync(file, to);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) continue;
      if (!(e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotSupported)) {
        throw e;
      }
      linked = false;
    }
    if (linked) {
      Deno.removeSync(file);
    } else {
      try {
        Deno.openSync(to, { write: true, createNew: true, mode: 0o600 }).close();
      } catch (e) {
        if (e instanceof Deno.errors.AlreadyExists) continue;
        throw e;
      }
      try {
        Deno.renameSync(file, to);
      } catch (e) {
        Deno.removeSync(to); // the name claimed, empty
        throw e;
      }
    }
    syncDirSync(dirname(file));
    return to;
  }
  throw new Deno.errors.AlreadyExists(`names "${file}.unreadable-${stamp}…" are taken`);
}
