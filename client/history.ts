/**
 * Conversation history: one append-only file of JSON lines per conversation
 * under HOME/history/ (0700 folder, 0600 files), so a restarted client (terminal
 * or page) shows the last messages. A room's conversation is kept by its name
 * and its room id (`#team@ROOMID`), so two rooms of one name (a room left and
 * another joined, two creators' #team) never share one; a file of before, kept
 * by the name alone, is still read (never written) for a room of that name,
 * without the lines whose ids name another room. Files are rotated at a
 * bounded size (one older file is kept); a torn last line (a crash in the
 * middle of a write) is skipped with a warning, never fatal. docs/PROTOCOL.md
 * §7 is the format.
 *
 * When the client's key is encrypted, the lines of each write (everything
 * recorded in one turn of the event loop) are sealed together with
 * AES-256-GCM (a fresh 96-bit nonce per write, the conversation's name as
 * associated data, so a record cannot be moved to another conversation) and
 * stay one JSON line, `{"e":"<base64 nonce‖ciphertext‖tag>"}` whose plaintext
 * is one or more records separated by `\n`: appending, rotation and the
 * torn-line rule are unchanged, and plain and sealed lines can follow each
 * other in a file (a key encrypted later, or decrypted).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, readUpTo, syncDir, systemReason } from "../lib/fs.ts";
import { jsonLine } from "../lib/lines.ts";
import { receivedName } from "./files.ts";

/** One message or file of a conversation, as the faces show it. */
export interface HistoryEntry {
  /** The id the sender gave it (ids are unique per sender, not across senders). */
  id: string;
  /**
   * When it was sent (ours) or received, ISO 8601: what the faces order by. Lines of earlier
   * versions gave a mailbox item its sender's claimed time here.
   */
  at: string;
  /** A mailbox item's sending time as its sender claims it, ISO 8601 (not checked beyond ±days). */
  sent?: string;
  /** Who wrote it. */
  from: string;
  /** Who it went to. */
  to: string;
  /** A text message or a file. */
  kind: "message" | "file";
  /** The text of a message. */
  text?: string;
  /**
   * A file: its name (a received one's: the name it was saved under, its path's), the name its
   * sender announced when that differs (unsafe: sanitize), where it is stored (received) or was
   * read from (sent), size, digest.
   */
  file?: { name: string; announced?: string; path?: string; bytes: number; sha256?: string };
  /** For what we sent: "sent", then "delivered" once acknowledged. */
  state?: "sent" | "delivered";
  /** The round trip of a delivered message, in milliseconds. */
  ms?: number;
  /** A room message shown after later ones of its author (one a member withheld): "(late)". */
  late?: true;
  /**
   * What this client calls a received item: unique among its items, the same in the event that
   * showed it live (docs/PROTOCOL.md §6, §7). None for ours, nor in lines of earlier versions.
   */
  ref?: string;
}

/** A file sent or received, as a history line records it. */
interface FileFields {
  id: string;
  from: string;
  to: string;
  name: string;
  announced?: string;
  path?: string;
  bytes: number;
  sha256?: string;
}

/** A line of a history file. */
type HistoryRecord =
  | {
    t: "msg";
    id: string;
    at: string;
    sent?: string;
    from: string;
    to: string;
    text: string;
    ref?: string;
    late?: true;
  }
  | FileFields & { t: "file"; at: string; sent?: string; ref?: string }
  | { t: "ack"; id: string; at: string; ms?: number }
  | { t: "acks"; ids: string[]; at: string; ms?: Array<number | null> };

/** Options of {@linkcode History}. */
export interface HistoryOptions {
  /** Our own name (to tell sent from received). */
  self: string;
  /** A file is rotated once it grows past this many bytes. Default: 4 MiB. */
  maxBytes?: number;
  /** Called with a message when a file had a torn or unreadable line. Default: none. */
  onWarning?: (message: string) => void;
  /**
   * The 32-byte key of sealed lines (AES-256-GCM): sealed lines are read with it, and new lines
   * sealed with it unless `seal` is false. Default: none — lines are written plain, and sealed
   * ones cannot be read.
   */
  key?: Uint8Array;
  /** Seal new lines with `key`. Default: true (when there is a key). */
  seal?: boolean;
  /**
   * The id of the room called `room` (`#name`) that we are in now, if any: a room's history is
   * kept by its id (a file sent in it, `/history #name`). Default: none — a file or message
   * addressed to a room is kept by the room's name alone, and a room is read as when we are in
   * no room of its name (the one of that name written last).
   */
  roomId?: (room: string) => string | undefined;
}

const DEFAULT_MAX_BYTES = 4 * 1024 * 1024;

let isoMs = NaN;
let iso = "";
// Now, ISO 8601: a busy conversation records many lines in one millisecond.
function isoNow(): string {
  const now = Date.now();
  if (now !== isoMs) {
    isoMs = now;
    iso = new Date(now).toISOString();
  }
  return iso;
}
const MAX_OPEN_FILES = 8; // conversations whose file stays open for appending
const encoder = new TextEncoder();

/** The history folder of one client. */
export class History {
  #dir: string;
  #options: HistoryOptions;
  #queue: Promise<void> = Promise.resolve();
  #pending = new Map<string, string[]>();
  #acks = new Map<string, { ids: string[]; ms: Array<number | null> }>(); // written as one line
  #scheduled = false;
  #sizes = new Map<string, number>();
  #handles = new Map<string, Deno.FsFile>(); // open for appending, per conversation
  #dirReady = false;
  #failures = new Map<string, number>(); // writes that failed, per conversation
  #lastError = new Map<string, unknown>(); // the error of each conversation's last failed write
  #persisting = new Map<string, number>(); // persist() calls under way, per conversation
  #named = new Set<string>(); // conversations whose file's name persist() made durable
  // When this History began: a torn tail written since is no earlier run's (see #write).
  #since = Date.now();

  /**
   * The history under `dir` (created 0700 on the first write).
   *
   * @example
   * ```ts
   * import { History } from "./history.ts";
   * const history = new History("/tmp/alice/history", { self: "alice" });
   * history.message({ id: "1", from: "alice", to: "bob", text: "hi" });
   * await history.flush();
   * console.log(await history.read("bob", 10));
   * ```
   */
  constructor(dir: string, options: HistoryOptions) {
    this.#dir = dir;
    this.#options = options;
  }

  /**
   * Records a text message we sent or received (written soon, in order, at the time it is
   * recorded; `sent`: a mailbox item's claimed sending time, kept apart). Returns the ref of a
   * received one (its event carries it too: {@linkcode HistoryEntry.ref}).
   */
  message(
    m: { id: string; from: string; to: string; text: string; sent?: Date },
  ): string | undefined {
    const ref = this.#ref(m.from);
    this.#append(this.#peerOf(m), {
      t: "msg",
      id: m.id,
      at: isoNow(),
      ...(m.sent ? { sent: m.sent.toISOString() } : {}),
      from: m.from,
      to: m.to,
      text: m.text,
      ...(ref === undefined ? {} : { ref }),
    });
    return ref;
  }

  /**
   * Records a message of a room (`room`, `#name`, whose id is `roomId`) we wrote or received;
   * `late`: shown after later ones of its author; `ref`: the ref of the same message recorded
   * before (a line whose persist() failed, recorded again). Returns the ref of a received one.
   */
  roomMessage(
    m: {
      id: string;
      room: string;
      roomId: string;
      from: string;
      text: string;
      at?: Date;
      late?: boolean;
      ref?: string;
    },
  ): string | undefined {
    const ref = m.ref ?? this.#ref(m.from); // given: a line recorded again keeps its event's
    this.#append(roomKey(m.room, m.roomId), {
      t: "msg",
      id: m.id,
      at: m.at ? m.at.toISOString() : isoNow(),
      from: m.from,
      to: m.room,
      text: m.text,
      ...(ref === undefined ? {} : { ref }),
      ...(m.late ? { late: true } : {}),
    });
    return ref;
  }

  /**
   * Records a file we sent or received (at the time it is recorded; `sent`: a mailbox item's
   * claimed sending time, kept apart). Returns the ref of a received one.
   */
  file(f: FileFields & { sent?: Date; roomId?: string }): string | undefined {
    const ref = this.#ref(f.from);
    this.#append(this.#peerOf(f), {
      t: "file",
      id: f.id,
      at: isoNow(),
      ...(f.sent ? { sent: f.sent.toISOString() } : {}),
      from: f.from,
      to: f.to,
      name: f.name,
      ...(f.announced === undefined ? {} : { announced: f.announced }),
      ...(f.path === undefined ? {} : { path: f.path }),
      bytes: f.bytes,
      ...(f.sha256 === undefined ? {} : { sha256: f.sha256 }),
      ...(ref === undefined ? {} : { ref }),
    });
    return ref;
  }

  // A received item's ref, so that no two of this client's items share one (a peer's ids may
  // repeat; the page tells its live items from history entries by this).
  #ref(from: string): string | undefined {
    return from === this.#options.self ? undefined : nextRef();
  }

  /**
   * Records that `peer` acknowledged what we sent as `id`. The acknowledgements of one turn
   * are one `acks` line, after the other lines of that turn.
   */
  delivered(peer: string, id: string, ms?: number): void {
    const acks = this.#acks.get(peer);
    if (acks) {
      acks.ids.push(id);
      acks.ms.push(ms ?? null);
    } else this.#acks.set(peer, { ids: [id], ms: [ms ?? null] });
    this.#schedule(false);
  }

  /**
   * The last `limit` entries of the conversation with `peer`, oldest first. For a room
   * (`#name`): the room of that name we are in now, else the one of that name written last.
   * A mailbox item recorded twice (a crash before its id was marked seen) is read once.
   */
  async read(peer: string, limit = 50): Promise<HistoryEntry[]> {
    await this.flush();
    const entries: HistoryEntry[] = [];
    const ours = new Map<string, HistoryEntry>(); // our latest entry of each id, for acks
    const key = await this.#readKey(peer);
    const roomId = key === peer ? undefined : key.slice(peer.length + 1);
    // A room's file of before (kept by its name) first, then its own: lines of before ids named
    // their room can be told from no other room's, and are read too.
    const sources: Array<[string, string]> = roomId === undefined ? [] : [
      [this.#file(peer, 1), peer],
      [this.#file(peer, 0), peer],
    ];
    sources.push([this.#file(key, 1), key], [this.#file(key, 0), key]);
    for (const [file, aad] of sources) {
      for (const record of await this.#records(file, aad)) {
        if (
          aad !== key && record.t !== "ack" && record.t !== "acks" &&
          ROOM_ID_PREFIX.test(record.id) && !record.id.startsWith(`${roomId}:`)
        ) continue; // another room of that name
        if (record.t === "ack" || record.t === "acks") {
          const ids = record.t === "ack" ? [record.id] : record.ids;
          for (const [i, id] of ids.entries()) {
            const entry = ours.get(id);
            if (!entry) continue;
            entry.state = "delivered";
            const ms = record.t === "ack" ? record.ms : record.ms?.[i];
            if (typeof ms === "number") entry.ms = ms;
          }
          continue;
        }
        const entry: HistoryEntry = record.t === "msg"
          ? {
            id: record.id,
            at: record.at,
            from: record.from,
            to: record.to,
            kind: "message",
            text: record.text,
          }
          : {
            id: record.id,
            at: record.at,
            from: record.from,
            to: record.to,
            kind: "file",
            file: {
              // A received file by the name it was saved under, in lines of earlier versions
              // too (they kept the announced one as its name).
              ...(record.from !== this.#options.self && record.path !== undefined
                ? receivedName(record.announced ?? record.name, record.path)
                : { name: record.name }),
              path: record.path,
              bytes: record.bytes,
              sha256: record.sha256,
            },
          };
        if (typeof record.sent === "string") entry.sent = record.sent;
        if (typeof record.ref === "string") entry.ref = record.ref;
        if (record.t === "msg" && record.late === true) entry.late = true;
        if (record.from === this.#options.self) {
          entry.state = "sent";
          ours.set(record.id, entry);
        }
        entries.push(entry);
      }
    }
    // A mailbox item (its `sent` kept) stored again after a crash between its synced line and
    // its id marked seen has two lines: the last is kept (the one shown, whose ref its event
    // carried). Only lines of the same item: the same sender, id, time sent, and text (or file
    // digest). A sender chooses its ids, and one seen is forgotten once its item is too old to
    // be taken (8 days), while its line stays: an id used again then is another item, and must
    // not hide the first one's line (r130).
    const kept = new Set<string>();
    const once = entries.reverse().filter((e) => {
      if (e.sent === undefined || e.from === this.#options.self) return true;
      const key = JSON.stringify([e.kind, e.from, e.id, e.sent, e.text ?? e.file?.sha256 ?? null]);
      if (kept.has(key)) return false;
      kept.add(key);
      return true;
    }).reverse();
    return once.slice(Math.max(0, once.length - limit));
  }

  /**
   * Where a file `from` sent as the mailbox item `item.id` (sent at `item.sent`, whose digest is
   * `item.sha256`) was saved, by the last history line of that item, and that line's ref;
   * undefined when none records it. A mailbox item stored before a crash that came before its id
   * was marked seen is taken again: its file is there already (the caller checks it still is).
   */
  async savedFile(
    from: string,
    item: { id: string; sent?: Date; sha256: string },
  ): Promise<{ path: string; ref?: string } | undefined> {
    await this.flush();
    const sent = item.sent?.toISOString();
    let found: { path: string; ref?: string } | undefined;
    for (const file of [this.#file(from, 1), this.#file(from, 0)]) {
      for (const r of await this.#records(file, from, { quiet: true })) {
        if (
          r.t === "file" && r.id === item.id && r.from === from && r.sent === sent &&
          r.sha256 === item.sha256 && r.path !== undefined
        ) found = { path: r.path, ...(r.ref === undefined ? {} : { ref: r.ref }) };
      }
    }
    return found;
  }

  /** The conversations on disk, the most recent first, with the time of their last write. */
  async conversations(): Promise<Array<{ name: string; last: string }>> {
    await this.flush();
    const out: Array<{ name: string; last: string }> = [];
    try {
      for await (const entry of Deno.readDir(this.#dir)) {
        const m = /^(.+)\.jsonl$/.exec(entry.name);
        if (!entry.isFile || !m) continue;
        const decoded = decodedName(m[1]);
        if (decoded === undefined) continue; // not a name #file() makes
        const name = roomOfKey(decoded) ?? decoded;
        const info = await Deno.stat(join(this.#dir, entry.name));
        const last = (info.mtime ?? new Date(0)).toISOString();
        // A room's files of before and of other rooms of its name: one conversation, `#name`.
        const seen = out.find((c) => c.name === name);
        if (!seen) out.push({ name, last });
        else if (last > seen.last) seen.last = last;
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return out.sort((a, b) => b.last.localeCompare(a.last));
  }

  // Where `peer`'s conversation is read from: a room's by its id (the room of that name we are
  // in, else the one of that name written last); a peer's, or a room with no file of its id (only
  // one of before), by its name.
  async #readKey(peer: string): Promise<string> {
    if (!peer.startsWith("#")) return peer;
    const id = this.#options.roomId?.(peer);
    if (id !== undefined) return roomKey(peer, id);
    let last: { key: string; at: number } | undefined;
    try {
      for await (const entry of Deno.readDir(this.#dir)) {
        const m = /^(.+)\.jsonl$/.exec(entry.name);
        const key = m ? decodedName(m[1]) : undefined;
        if (!entry.isFile || key === undefined || roomOfKey(key) !== peer) continue;
        const at = (await Deno.stat(join(this.#dir, entry.name))).mtime?.getTime() ?? 0;
        if (!last || at > last.at) last = { key, at };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return last?.key ?? peer;
  }

  /** Resolves once everything recorded so far is written. */
  async flush(): Promise<void> {
    if (this.#pending.size || this.#acks.size) this.#schedule(true);
    await this.#queue;
  }

  /**
   * Writes everything recorded so far, then syncs the file of `conversation` (and its name) to
   * disk: for a record whose loss would lose what it holds (a mailbox item, deleted at the CA
   * once stored). Throws `ERR_FILE` when a record of `conversation` could not be written since
   * the call, or synced; those records are not kept (recording them again tries again), and the
   * caller tells the user, not a history warning.
   */
  async persist(conversation: string): Promise<void> {
    const failures = this.#failures.get(conversation) ?? 0;
    const failed = () => (this.#failures.get(conversation) ?? 0) !== failures;
    this.#persisting.set(conversation, (this.#persisting.get(conversation) ?? 0) + 1);
    try {
      if (this.#pending.size || this.#acks.size) this.#schedule(true);
      const synced = this.#queue.then(() => failed() ? undefined : this.#sync(conversation));
      this.#queue = synced.catch(() => {});
      let error: unknown = await synced.then(() => undefined, (e) => e ?? "failed");
      if (failed()) error = this.#lastError.get(conversation);
      if (error === undefined) return;
      throw new E2eError(
        "ERR_FILE",
        `Cannot write the history of "${conversation}" in "${this.#dir}": ${systemReason(error)}`,
        { cause: error },
      );
    } finally {
      const n = this.#persisting.get(conversation)!;
      if (n > 1) this.#persisting.set(conversation, n - 1);
      else this.#persisting.delete(conversation);
    }
  }

  /** {@linkcode persist} for the history of the room `room` whose id is `roomId`. */
  async persistRoom(room: string, roomId: string): Promise<void> {
    await this.persist(roomKey(room, roomId));
  }

  // fsync of a conversation's file, and once of its name in the folder (and the folder's).
  async #sync(peer: string): Promise<void> {
    const open = this.#handles.get(peer);
    if (open) await open.sync();
    else {
      using file = await Deno.open(this.#file(peer, 0), { read: true });
      await file.sync();
    }
    if (!this.#named.has(peer)) {
      await ensurePrivateDir(this.#dir, { durable: true });
      await syncDir(this.#dir);
      this.#named.add(peer);
    }
  }

  // The conversation: the other party, or the room (its name starts with "#"; by its id: the
  // one given, else that of the room of that name we are in). A room's with no id is recorded
  // nowhere: the history file of before, by the name alone, is read but never written again.
  #peerOf(m: { from: string; to: string; roomId?: string }): string | undefined {
    if (m.to.startsWith("#")) {
      const id = m.roomId ?? this.#options.roomId?.(m.to);
      return id === undefined ? undefined : roomKey(m.to, id);
    }
    return m.from === this.#options.self ? m.to : m.from;
  }

  #file(peer: string, generation: 0 | 1): string {
    // Names are [a-z0-9._-] (and '#', '@' and a room id for rooms); encoding keeps any name
    // inside the folder.
    const base = encodeURIComponent(peer).replace(/^\./, "%2E");
    return join(this.#dir, generation === 0 ? `${base}.jsonl` : `${base}.jsonl.1`);
  }

  // Records of one turn of the event loop leave in one write per conversation (sealed together).
  #append(peer: string | undefined, record: HistoryRecord): void {
    if (peer === undefined) return; // see #peerOf
    const json = jsonLine(record); // one line for any reader of the file, whatever a peer sent
    const lines = this.#pending.get(peer);
    if (lines) lines.push(json);
    else this.#pending.set(peer, [json]);
    this.#schedule(false);
  }

  // What one write appends: the records, each a line, or sealed together as one line.
  #lines(peer: string, records: string[]): string {
    const { key } = this.#options;
    if (!key || this.#options.seal === false) return records.join("\n") + "\n";
    return JSON.stringify({ e: seal(key, peer, records.join("\n")) }) + "\n";
  }

  /** Closes the files kept open for appending (they are opened again when needed). */
  close(): void {
    for (const handle of this.#handles.values()) handle.close();
    this.#handles.clear();
  }

  #schedule(now: boolean): void {
    if (this.#scheduled && !now) return;
    this.#scheduled = true;
    const write = async () => {
      this.#scheduled = false;
      // Acknowledgements come after the lines of their turn (a message goes before its ack).
      for (const [peer, { ids, ms }] of this.#acks) {
        const acks = ms.some((x) => x !== null)
          ? { t: "acks", at: isoNow(), ids, ms }
          : { t: "acks", at: isoNow(), ids };
        const records = this.#pending.get(peer);
        if (records) records.push(JSON.stringify(acks));
        else this.#pending.set(peer, [JSON.stringify(acks)]);
      }
      this.#acks.clear();
      const batch = [...this.#pending];
      this.#pending.clear();
      // Each conversation's write on its own: one that fails does not lose the others'.
      let warning: unknown;
      for (const [peer, records] of batch) {
        try {
          await this.#write(peer, this.#lines(peer, records));
        } catch (e) {
          this.#failures.set(peer, (this.#failures.get(peer) ?? 0) + 1);
          this.#lastError.set(peer, e);
          // A persist() waiting for this conversation throws it: its caller tells the user.
          if (!this.#persisting.has(peer)) warning ??= e;
        }
      }
      if (warning !== undefined) throw warning;
    };
    this.#queue = this.#queue.then(
      now ? write : () => new Promise<void>((r) => setTimeout(r, 0)).then(write),
    )
      .catch((e) =>
        this.#options.onWarning?.(`Cannot write history: ${e instanceof Error ? e.message : e}`)
      );
  }

  async #write(peer: string, text: string): Promise<void> {
    if (!text) return;
    if (!this.#dirReady) {
      await ensurePrivateDir(this.#dir);
      this.#dirReady = true;
    }
    const file = this.#file(peer, 0);
    const bytes = encoder.encode(text);
    let size = this.#sizes.get(peer);
    let out = bytes;
    if (size === undefined) {
      size = await Deno.stat(file).then((i) => i.size, () => 0);
      if (size > 0 && !(await endsWithNewline(file, size))) {
        // A crash mid-write left a torn line: cut off (synced), or every read after our next
        // record would take it for a damaged line. One written since this History began is no
        // earlier run's (another chat on this home, writing it now): ours goes on a line of its
        // own after it.
        const whole = await cutTornTail(file, this.#since);
        if (whole === undefined) out = encoder.encode("\n" + text);
        else size = whole;
      }
    }
    if (size > 0 && size + out.length > (this.#options.maxBytes ?? DEFAULT_MAX_BYTES)) {
      this.#handles.get(peer)?.close();
      this.#handles.delete(peer);
      await Deno.rename(file, this.#file(peer, 1));
      this.#named.delete(peer); // two names changed: the next persist() syncs the folder again
      size = 0;
      out = bytes;
    }
    // Kept open: a busy conversation costs one write per turn, not an open and a close too.
    let handle = this.#handles.get(peer);
    if (!handle) {
      handle = await Deno.open(file, { append: true, create: true, mode: 0o600 });
      if (this.#handles.size >= MAX_OPEN_FILES) {
        const [oldest, old] = this.#handles.entries().next().value!;
        old.close();
        this.#handles.delete(oldest);
      }
      this.#handles.set(peer, handle);
    }
    try {
      // Synchronous: a turn's records are a small append to a local file, where an asynchronous
      // write costs a thread hand-off (CPU and a wake-up on another core) per turn.
      let n = 0;
      while (n < out.length) n += handle.writeSync(out.subarray(n));
    } catch (e) {
      handle.close();
      this.#handles.delete(peer);
      this.#sizes.delete(peer); // measured again: part of the write may have landed
      throw e;
    }
    this.#sizes.set(peer, size + out.length);
  }

  async #records(
    file: string,
    peer: string,
    options: { quiet?: boolean } = {},
  ): Promise<HistoryRecord[]> {
    const warn = options.quiet ? undefined : this.#options.onWarning;
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const lines = text.split("\n");
    const out: HistoryRecord[] = [];
    let bad = 0;
    let sealed = 0;
    for (const [i, line] of lines.entries()) {
      if (!line) continue;
      const opened = this.#open(line, peer);
      // A sealed line holds the records of one write, one per line.
      const records = opened === null
        ? undefined
        : opened === line
        ? [parseRecord(line)]
        : opened.split("\n").map(parseRecord);
      if (records?.every((r) => r !== undefined)) out.push(...records as HistoryRecord[]);
      else if (opened === null) sealed++;
      else if (i === lines.length - 1) {
        warn?.(`Skipped a torn last line in "${file}" (a write cut short)`);
      } else bad++;
    }
    if (bad) warn?.(`Skipped ${bad} unreadable line(s) in "${file}"`);
    if (sealed) {
      warn?.(
        `Skipped ${sealed} encrypted line(s) in "${file}" that this key cannot open`,
      );
    }
    return out;
  }

  // The JSON of a line: a plain line as it is, a sealed one opened (null when it cannot be).
  #open(line: string, peer: string): string | null {
    if (!line.startsWith('{"e":')) return line;
    let e: unknown;
    try {
      e = JSON.parse(line).e;
    } catch {
      return line; // torn: parseRecord refuses it, and the torn-line rule applies
    }
    const { key } = this.#options;
    if (typeof e !== "string" || !key) return null;
    try {
      return open(key, peer, e);
    } catch {
      return null;
    }
  }
}

const NONCE_BYTES = 12;
const TAG_BYTES = 16;

function seal(key: Uint8Array, peer: string, text: string): string {
  return sealText(key, `e2e-chat history v1\n${peer}`, text);
}

function open(key: Uint8Array, peer: string, sealed: string): string {
  return openText(key, `e2e-chat history v1\n${peer}`, sealed);
}

/**
 * `text` sealed with AES-256-GCM under `key`, with `aad` as associated data: base64 of a fresh
 * 96-bit nonce, the ciphertext and the tag. The client's one sealing of what it keeps on disk
 * (history's lines, mailbox items that wait: client/mailbox_unsent.ts).
 */
export function sealText(key: Uint8Array, aad: string, text: string): string {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(text, "utf8"), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]).toString("base64");
}

/** What {@linkcode sealText} sealed with `key` and `aad`; throws if anything differs. */
export function openText(key: Uint8Array, aad: string, sealed: string): string {
  const bytes = Buffer.from(sealed, "base64");
  if (bytes.length < NONCE_BYTES + TAG_BYTES) throw new RangeError("too short");
  const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, NONCE_BYTES));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
  return Buffer.concat([
    decipher.update(bytes.subarray(NONCE_BYTES, bytes.length - TAG_BYTES)),
    decipher.final(),
  ]).toString("utf8");
}

async function endsWithNewline(file: string, size: number): Promise<boolean> {
  const handle = await Deno.open(file, { read: true });
  try {
    await handle.seek(size - 1, Deno.SeekMode.Start);
    const last = new Uint8Array(1);
    return (await handle.read(last)) === 1 && last[0] === 0x0a;
  } finally {
    handle.close();
  }
}

/** A room's conversation: `#name@ROOMID` (both checked by lib/room.ts; '@' is in neither). */
function roomKey(room: string, roomId: string): string {
  return `${room}@${roomId}`;
}

// Cuts the torn line at the end of `file` off, back to its last newline, and syncs it; returns
// the size left. Undefined, leaving it, when the file was written since `since` (ms).
async function cutTornTail(file: string, since: number): Promise<number | undefined> {
  using handle = await Deno.open(file, { read: true, write: true });
  const info = await handle.stat();
  if ((info.mtime?.getTime() ?? Infinity) > since) return undefined;
  let end = info.size;
  while (end > 0) {
    const start = Math.max(0, end - 64 * 1024);
    await handle.seek(start, Deno.SeekMode.Start);
    const part = await readUpTo(handle, end - start);
    const nl = part.lastIndexOf(0x0a);
    if (nl >= 0) {
      end = start + nl + 1;
      break;
    }
    end = start;
  }
  await handle.truncate(end);
  await handle.sync();
  return end;
}

/** The room name of a conversation {@linkcode roomKey} made, else undefined. */
function roomOfKey(key: string): string | undefined {
  return /^(#[^@]+)@[0-9a-f]{32}$/.exec(key)?.[1];
}

// The id of a room message (`ROOMID:AUTHOR@SINCE.SEQ`) names its room; one of before does not.
const ROOM_ID_PREFIX = /^[0-9a-f]{32}:/;

function decodedName(encoded: string): string | undefined {
  try {
    return decodeURIComponent(encoded);
  } catch {
    return undefined;
  }
}

function parseRecord(line: string): HistoryRecord | undefined {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!r || typeof r !== "object" || typeof r.at !== "string") return undefined;
  if (r.t === "acks") {
    const ok = Array.isArray(r.ids) && r.ids.every((x) => typeof x === "string") &&
      (r.ms === undefined || (Array.isArray(r.ms) && r.ms.length === r.ids.length));
    return ok ? r as HistoryRecord : undefined;
  }
  if (typeof r.id !== "string") return undefined;
  const str = (k: string) => typeof r[k] === "string";
  if (r.t === "msg" && str("from") && str("to") && str("text")) return r as HistoryRecord;
  // Optional fields too: the faces take a path and a digest as strings.
  const maybe = (k: string) => r[k] === undefined || str(k);
  if (
    r.t === "file" && str("from") && str("to") && str("name") && typeof r.bytes === "number" &&
    maybe("path") && maybe("sha256") && maybe("announced")
  ) {
    return r as HistoryRecord;
  }
  if (r.t === "ack") return r as HistoryRecord;
  return undefined;
}

// A received item's ref: this process's 64 random bits, then a count (so no two items of a
// client share one, across its runs too); a randomBytes() call per message cost more than the
// rest of a received message's history record (about 0.7 µs against 0.2).
const REF_PREFIX = randomBytes(8).toString("base64url");
let refCount = 0;

function nextRef(): string {
  return REF_PREFIX + (refCount++).toString(36);
}
