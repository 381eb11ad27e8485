/**
 * Rooms: group chat over the members' pairwise connections (docs/PROTOCOL.md
 * §9). The creator signs the member list; every message is signed by its
 * author over its canonical encoding (lib/room.ts), so any member may pass
 * another's message on, and every receiver checks it against the author's key
 * in the signed list (itself checked against the key pinned in peers.json).
 * Per author, messages are shown in sequence order; a gap is asked of the
 * other members, and reported as `room_gap` when none of them has it.
 *
 * The signed list is also the members' consent to be connected to each other:
 * of two members, the one whose name sorts first invites the other through
 * the CA, and the other accepts, with every check of a 1:1 chat (client/chat.ts).
 *
 * State kept in HOME/rooms/ROOMID.json (0600): the signed list, the creator's
 * key, our sequence number, how far each author's messages were shown and the
 * creator's pending invitations. A change of membership or invitations is
 * durable (fsynced, with its folder) before anyone is told of it; how far
 * messages were shown is written a moment later, not fsynced. The texts of
 * recent messages (for other members' gaps) stay in memory only.
 *
 * The room invitations that wait for our answer, and those we declined, are kept in
 * HOME/room-invitations.json (0600, written atomically and fsynced before the change is told),
 * bounded in number and dropped after {@linkcode INVITATIONS_KEEP_MS}: a declined invitation does
 * not come back after a restart, and a waiting one is not lost. One restored holds no signed list
 * nor key: it is joined once its creator is connected again (see {@linkcode Rooms.join}). The
 * rooms we left are kept there too, to tell their creator again while it counts us in.
 *
 * @module
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { dirname, join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDirSync, readUpToSync, syncDirSync, writeFileAtomicSync } from "../lib/fs.ts";
import { checkName, isValidName } from "../lib/names.ts";
import {
  checkRoomName,
  decodeRoomFrame,
  isRoomIdOf,
  isRoomName,
  keyFingerprintOf,
  listHash,
  MAX_MEMBERS,
  MAX_ROOM_TEXT_CHARS,
  MAX_WANT,
  type MemberList,
  publicKeyOf,
  type RoomFrame,
  roomIdFor,
  type RoomMember,
  type SignedList,
  type SignedMessage,
  signList,
  signMessage,
  spkiOf,
  verifyList,
  verifyMessage,
} from "../lib/room.ts";
import type { CoreEvent } from "./events.ts";
import type { History } from "./history.ts";
import type { PeerConnection } from "./peer.ts";

/** Recent messages of a room kept in memory for other members' gaps. */
export const ROOM_BUFFER = 512;
/** …and at most this many characters of text in all (a room of long messages keeps fewer). */
const ROOM_BUFFER_CHARS = 8 * 1024 * 1024;
/** How long a gap in an author's sequence waits to be filled before `room_gap`, ms. */
export const GAP_WAIT_MS = 3_000;
/** The most missing sequence numbers one `room_gap` lists (its `count` says how many in all). */
const MAX_GAP_LISTED = 1000;
/** Messages held back per author while an earlier one is missing. */
export const MAX_HELD = 256;
/**
 * Runs of late messages shown below where an author was taken up, apart from it (not right below
 * it or one shown so), remembered per author as ranges of numbers: one that would start another
 * run past these is not shown (with a warning). Counted in runs, not messages: fills come lowest
 * first, and an honest run of more than 256 was cut short and reported missing though it came.
 */
const MAX_LATE_SHOWN = 256;
/**
 * …and at most this many characters of them per room, all authors together: a creator may list
 * up to 50 members of its own making and sign as each (256 × 50 texts of 65,536 characters).
 */
export const MAX_HELD_CHARS = 8 * 1024 * 1024;
/**
 * Messages signed under a list newer than ours, held apart until it is here, per room (the
 * oldest go first), and at most this many characters of them.
 */
const MAX_PROVISIONAL = 256;
const MAX_PROVISIONAL_CHARS = 8 * 1024 * 1024;
/** Asked below an author's take-up floor of one connection: the lowest number, and the top of that window. */
type AskedBelow = { lowest: number; top: number };
/** Messages held apart under a newer list from one sender (its oldest go). */
export const MAX_PROVISIONAL_PER_SENDER = 32;
/** Asks for a newer list remembered per room (by connection and version; the oldest go). */
const MAX_ASKED_VERSIONS = 8;
/** Room invitations one connection may send us (more are refused). */
const MAX_INVITES_PER_CONNECTION = 16;
/**
 * Room invitations held from one creator (its own oldest goes first): counted by name, so a
 * co-member who reconnects (accepted at once) starts no new count.
 */
const MAX_INVITES_PER_CREATOR = 16;
/** `want` and `state` frames taken from one connection per second (more are dropped). */
const REQUESTS_PER_SECOND = 20;
/** Refusals reported per connection; after that, one line saying more are not shown. */
const MAX_REPORTS = 20;
/**
 * Room invitations held at once, all creators together: past it the creator holding the most
 * gives up its oldest to one holding at least two fewer, else a new one is refused — so neither
 * one creator nor a few together keep the others' out, and none pushes out a fair share. Only a
 * plain waiting invitation is given up (or counted in "the most"): never one we joined.
 */
const MAX_ROOM_INVITES = 32;
/**
 * Invitations declined while their creator was not connected, remembered to tell it, and all those
 * declined, remembered to refuse a join of one (oldest go).
 */
const MAX_DECLINED = 64;
/**
 * Rooms we left, remembered to tell their creator (at its next `state` of the room: a leave sent
 * may be lost with its connection, and one not sent waits for the creator); the oldest go.
 */
const MAX_LEFT = 64;
/**
 * Members who went while we ran, remembered per room (the oldest forgotten first): a creator's
 * lists may add and remove names without end. A late message of one forgotten is refused with a
 * warning instead of dropped without a word.
 */
export const MAX_FORMER = 256;
/** (room, author, seq) keys remembered per connection, to catch a replay on it. */
const MAX_SEEN_PER_CONNECTION = 20_000;
/**
 * ROOMID.seq holds our sequence number twice, in two slots this far apart (two disk sectors), each
 * `SEQ` (20 digits), a space, the first 16 hex of SEQ's SHA-256 and a newline; then the `since` of
 * the membership it counts for (20 digits), a space, the first 16 hex of the SHA-256 of
 * `SEQ SINCE` and a newline (a slot without it, as written before, counts for any).
 */
const SEQ_SLOT = 512;
/** Re-invites of an unreachable co-member back off from this to {@linkcode DIAL_MAX_MS}. */
const DIAL_FIRST_MS = 2_000;
const DIAL_MAX_MS = 60_000;
/**
 * How long a `join` waits for the creator's list before it is no longer under way: a creator
 * that refuses it (a room full, an invitation withdrawn) sends nothing back. After it, a warning
 * says so and the invitation can be declined (or joined again); a list that comes later is still
 * taken.
 */
export const JOIN_WAIT_MS = 10_000;

/**
 * How many times we invite the creator of a room we left, only to tell it (2 s, 4 s, … apart:
 * about two minutes), before waiting for the next connection with it.
 */
export const LEFT_DIAL_TRIES = 6;

/**
 * How long a join sent stays our consent to be put in the room by its creator's answer (7 days):
 * a creator's `state` draws it again (once per connection) only within it.
 */
export const JOIN_KEEP_MS = 7 * 24 * 3600_000;
/**
 * How long an invitation kept in HOME/room-invitations.json is kept: a waiting one from when its
 * creator last offered it, a declined one from when it was declined.
 */
export const INVITATIONS_KEEP_MS = 30 * 24 * 3600_000;
/**
 * HOME/room-invitations.json larger than this is not read (it holds at most 32 waiting and 128
 * declined entries of a few hundred bytes each).
 */
const MAX_INVITATIONS_FILE_BYTES = 256 * 1024;

/**
 * The id of a room message, `ROOMID:AUTHOR@SINCE.SEQ`: unique to one membership of one room, since
 * a member removed and added again (its `SINCE`, the list version that added it, is new) numbers
 * its messages from 1 again, and rooms of the same name (one left, another joined) share a
 * history file of before (client/history.ts keeps each room's by its id now). (Ids were
 * `AUTHOR.SEQ` before; history lines keep theirs.)
 *
 * @example The third message of bob, added by version 2 of the list
 * ```ts
 * import { roomMessageId } from "./rooms.ts";
 * roomMessageId("0".repeat(32), "bob", 2, 3); // "00000000000000000000000000000000:bob@2.3"
 * ```
 */
export function roomMessageId(roomId: string, author: string, since: number, seq: number): string {
  return `${roomId}:${author}@${since}.${seq}`;
}

/**
 * What a face says when the user declined an invitation (`told` false: its creator was not
 * connected, and is told when it offers the room again): the terminal, the JSON face and the page
 * say it alike.
 *
 * @example Worded for a creator not connected
 * ```ts
 * import { declinedText } from "./rooms.ts";
 * declinedText("#team", "ben", false);
 * // 'Declined the invitation to #team from "ben" ("ben" is not connected: told when it offers it again)'
 * ```
 */
export function declinedText(room: string, from: string, told: boolean): string {
  return `Declined the invitation to ${room} from "${from}"${
    told ? "" : ` ("${from}" is not connected: told when it offers it again)`
  }`;
}

/** What rooms need of the chat core. */
export interface RoomHost {
  /** Our user name. */
  readonly self: string;
  /** Our private key, PEM (the key of our certificate). */
  privateKey(): string;
  /** The open connection to `name` (checked, not held back for a changed key), if any. */
  peer(name: string): PeerConnection | undefined;
  /** The key fingerprint pinned for `name` in peers.json, if any. */
  pinned(name: string): string | undefined;
  /** Invites `name` through the CA, as `/chat NAME`; `quiet`: without an `invited` event. */
  invite(name: string, quiet?: boolean): Promise<unknown>;
  /** Accepts `name`'s invitation, as `/accept NAME`. */
  accept(name: string): Promise<unknown>;
  /** Names whose invitation waits for us. */
  invitations(): string[];
  /** Reports an event. */
  emit(event: CoreEvent): void;
  /** Leaves a room frame for `name`, who is not connected, in the CA's mailbox. Default: none. */
  mailbox?(name: string, body: RoomFrame): void;
  /**
   * `names` share no room with us any more: a connection made for a room only closes.
   * Default: none.
   */
  released?(names: string[]): void;
  /**
   * `names` are no longer members of `room` as we know it (or we are not): files offered to them
   * for it and not accepted yet are withdrawn. Default: none.
   */
  gone?(room: string, names: string[]): void;
  /**
   * A message {@linkcode Rooms.fromMailbox} held apart under a newer list (see
   * {@linkcode Rooms.holds}) is no longer held: taken, with the history lines that recorded
   * (this message's and those it let through; none when refused or a copy), or let go (none).
   * Default: none.
   */
  mailboxHeldGone?(id: string, records: RoomHistoryRecord[]): void;
  /** Where room messages are recorded (conversation `#name`, kept by the room's id). */
  history: History;
  /** HOME/rooms. */
  dir: string;
  /**
   * HOME/room-invitations.json: the room invitations that wait and those declined, across
   * restarts. Default: none (kept in memory only).
   */
  invitationsFile?: string;
}

/** A room message's history line, as {@linkcode Rooms.fromMailbox} recorded it (with its ref). */
export interface RoomHistoryRecord {
  /** The message id (its room's id, author, membership and number). */
  id: string;
  /** The room's name. */
  room: string;
  /** The room's id, which names its history file. */
  roomId: string;
  /** Its author. */
  from: string;
  /** Its text. */
  text: string;
  /** Shown after later ones of its author. */
  late?: boolean;
  /** The ref its `room_message` event carried. */
  ref?: string;
}

/** A room as `/room members` shows it. */
export interface RoomInfo {
  /** `#name`. */
  room: string;
  /** The random id the creator chose. */
  roomId: string;
  /** The creator. */
  creator: string;
  /** The member-list version. */
  version: number;
  /** SHA-256 of the list's canonical encoding: every member sees the same. */
  hash: string;
  /** Members and the fingerprints of their keys, by name. */
  members: Array<{ name: string; keyFingerprint: string }>;
}

interface Room {
  list: SignedList;
  creatorKey: string;
  seq: number;
  /**
   * Per author: the next sequence number to show (absent: not known yet, we joined later; their
   * messages wait in `held` until {@linkcode GAP_WAIT_MS} after the first, see `#takeUp`).
   */
  next: Record<string, number>;
  /**
   * Per author we joined after, taken up later than their message 1: where they were taken up,
   * come down over the late messages shown right below it. A message of our membership below it,
   * come late, is shown (once: see `lateShown`).
   */
  floor: Map<string, number>;
  /** Per author with a floor: the numbers below it shown late, not right below it (ranges). */
  lateShown: Map<string, Ranges>;
  /** Per author with a floor: the lowest number below which missing ones were not reported yet. */
  lateReported: Map<string, number>;
  /** Per author: the wait before the numbers missing among those shown late are reported. */
  lateTimers: Map<string, ReturnType<typeof setTimeout>>;
  /** The creator's invitations that wait for a join. */
  invited: Record<string, true>;
  keys: Map<string, KeyObject>;
  /** The fingerprints of the members' keys in the list, by name (for the pin check). */
  fingerprints: Map<string, string>;
  held: Map<string, Map<number, SignedMessage>>;
  /** Characters of the texts in `held`, all authors together… */
  heldChars: number;
  /** …and per author (kept with `held` by hold() and unhold(), never counted again). */
  heldCharsBy: Map<string, number>;
  buffer: Map<string, SignedMessage>;
  bufferChars: number;
  /**
   * Messages signed under a list version newer than ours, with where they came from: taken once
   * that list is here (their author's membership may be another than the one we hold).
   */
  provisional: Provisional[];
  provisionalChars: number;
  /**
   * Of the messages in `held` that came through the mailbox, their item ids by `AUTHOR.SEQ`: the
   * chat keeps those on disk (the CA's copy is gone) until the host hears they went.
   */
  heldMailbox: Map<string, string>;
  /**
   * The newer list versions asked for because of them: of which connection, and when (the last
   * MAX_ASKED_VERSIONS; only asks that went out).
   */
  askedVersions: Array<{ conn: PeerConnection; version: number; at: number }>;
  gaps: Map<string, ReturnType<typeof setTimeout>>;
  untrusted: Set<string>;
  /** Members who went (or went and came back) while we ran: their late messages are dropped. */
  former: Set<string>;
  /**
   * Which of ROOMID.seq's two slots holds the last number made durable (the next write takes
   * the other); undefined until this run wrote the file whole, with both slots.
   */
  seqSlot?: 0 | 1;
}

interface RoomInvite {
  /** `#name`, its id and its creator (who sent it). */
  room: string;
  roomId: string;
  from: string;
  /** The version of the list it came with: the list that adds us must be newer. */
  version: number;
  /** When its creator last offered it (ms since the epoch): kept INVITATIONS_KEEP_MS from it. */
  at: number;
  /**
   * The creator's key (that of the connection it came on), when offered in this run; absent for
   * one restored from HOME/room-invitations.json until offered again.
   */
  key?: string;
  /** Whether we answered it with `join`: only then may a list add us (our consent). */
  joined?: boolean;
  /** When our `join` went (ms since the epoch): it is our consent for JOIN_KEEP_MS from then. */
  joinedAt?: number;
  /** The connection a join went on again at the creator's state (once per connection). */
  resentOn?: PeerConnection;
  /**
   * The connection our `join` went on: while it is the creator's connection, and for
   * JOIN_WAIT_MS, the join is under way and a decline is refused (a decline after the join would
   * tell the creator we declined while its list adds us). It ends with the room joined, with that
   * connection, or when {@linkcode joinTimer} fires.
   */
  joining?: PeerConnection;
  joinTimer?: ReturnType<typeof setTimeout>;
}

/** A message held until the list it was signed under is here (see `Room.provisional`). */
interface Provisional {
  src: { name: string; conn?: PeerConnection };
  m: SignedMessage;
  to: string[];
  fill: boolean;
  /** The mailbox item it came in (kept on disk by the host until it is taken or let go). */
  mailboxId?: string;
}

/** An invitation we declined, remembered (see `#declinedHere`, `#declinesUntold`). */
interface Declined {
  room: string;
  roomId: string;
  from: string;
  /** When it was declined (ms since the epoch). */
  at: number;
}

/**
 * A room we left (not ours), remembered to tell its creator (`from`) while it counts us in: `at`
 * is when we left or last told it; `told`, whether a `leave` went since we left.
 */
interface Left extends Declined {
  told: boolean;
}

/** The rooms of one running chat. */
export class Rooms {
  #host: RoomHost;
  #rooms = new Map<string, Room>(); // by room id
  #invites = new Map<string, RoomInvite>(); // by creator and room id (inviteKey)
  #declinesUntold = new Map<string, Declined>(); // declined, the creator away: to tell it (inviteKey)
  #declinedHere = new Map<string, Declined>(); // all we declined (inviteKey)
  #left = new Map<string, Left>(); // rooms we left, to tell their creator (inviteKey)
  #roomFiles = new Set<string>(); // room ids with a file in HOME/rooms at load (read or skipped)
  #signing?: KeyObject;
  #seen = new WeakMap<PeerConnection, Set<string>>();
  #reports = new WeakMap<PeerConnection, number>();
  #invitesFrom = new WeakMap<PeerConnection, number>();
  #requests = new WeakMap<PeerConnection, { second: number; count: number }>();
  #hellos = new WeakMap<PeerConnection, Set<string>>(); // rooms whose first state came on it
  // Per connection, by `ROOMID AUTHOR@SINCE`: the lowest number asked below an author's take-up
  // floor (asked once, and again only once the floor came down to it: see #askBelowFloor).
  #askedBelow = new WeakMap<PeerConnection, Map<string, AskedBelow>>();
  // Per connection, by `ROOMID AUTHOR`: the authors whose first `want` it sent us (see #firstWant).
  #firstWants = new WeakMap<PeerConnection, Set<string>>();
  #equivocated = new Map<string, true>(); // authors told of as signing two texts under one number
  #connKeys = new WeakMap<PeerConnection, string>(); // the key of each connection's certificate
  #otherKey = new WeakMap<PeerConnection, Set<string>>(); // rooms whose list gives it another key
  #dialing = new Map<string, { timer?: ReturnType<typeof setTimeout>; delay: number }>();
  #dirty = new Set<string>();
  #outbox: Array<{ r: Room; id: string; leave(): void }> = []; // room messages of this turn
  #unreachable = new Set<string>(); // co-members we failed to connect to (said once while they are)
  #mailboxSeen = new Set<string>(); // messages that came through the mailbox (bounded like a connection's)
  #recorded?: RoomHistoryRecord[]; // the history lines #show() writes, while fromMailbox() runs
  #saveTimer?: ReturnType<typeof setTimeout>; // writes #dirty a moment later
  #invitationsDirty = false; // HOME/room-invitations.json is behind (only an invitation's age)
  #restored: RoomInvite[] = []; // waiting invitations read at load, shown again by start()
  #stopped = false;
  #durable = new Map<string, string>(); // by room id: the membership last written durably

  /**
   * Rooms over `host`; {@linkcode load} reads what the home holds.
   *
   * @example
   * ```ts
   * import { Rooms } from "./rooms.ts";
   * // Built by client/chat.ts, which is its host: chat.rooms.create("#team").
   * ```
   */
  constructor(host: RoomHost) {
    this.#host = host;
  }

  /**
   * Reads the rooms kept in HOME/rooms, then the room invitations kept (waiting and declined);
   * a file that does not check out is skipped with a warning.
   */
  async load(): Promise<void> {
    await this.#loadRooms();
    this.#loadInvitations();
  }

  async #loadRooms(): Promise<void> {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = await Array.fromAsync(Deno.readDir(this.#host.dir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const entry of entries) {
      const m = /^([0-9a-f]{32})\.json$/.exec(entry.name);
      if (!entry.isFile || !m) continue;
      this.#roomFiles.add(m[1]);
      try {
        const data = JSON.parse(await Deno.readTextFile(join(this.#host.dir, entry.name)));
        const body = decodeRoomFrame({ op: "list", list: data.list });
        if (body.op !== "list" || body.list.roomId !== m[1]) throw new Error("not its room");
        const list = body.list;
        if (typeof data.creatorKey !== "string") throw new Error("no creator key");
        if (!verifyList(list, publicKeyOf(data.creatorKey))) throw new Error("bad signature");
        if (!list.members.some((x) => x.name === this.#host.self)) throw new Error("not a member");
        let seq = safeCount(data.seq);
        // Not the number of another membership of ours: added back, ROOMID.json (the new since,
        // seq 0) is durable before ROOMID.seq is, and a power cut between them left the old one.
        const since = list.members.find((x) => x.name === this.#host.self)!.since;
        try {
          seq = Math.max(seq, readSeq(Deno.readFileSync(this.#seqFile(list.roomId)), since));
        } catch { /* no seq file yet */ }
        const next: Record<string, number> = Object.create(null);
        for (const [k, v] of Object.entries(data.next ?? {})) {
          if (list.members.some((x) => x.name === k)) next[k] = Math.max(1, nextCount(v));
        }
        // Where an author we joined after was taken up (absent in files of before: none).
        const floor = new Map<string, number>();
        for (const [k, v] of Object.entries(data.floor ?? {})) {
          const f = nextCount(v);
          if (k in next && f > 1 && f <= next[k]) floor.set(k, f);
        }
        // The numbers below it shown late (absent in files of before: none).
        // Ranges [LO, HI]; plain numbers, as written before, are read as ranges of one.
        const lateShown = new Map<string, Ranges>();
        for (const [k, v] of Object.entries(data.lateShown ?? {})) {
          const f = floor.get(k);
          if (f === undefined || !Array.isArray(v)) continue;
          const shown: Ranges = [];
          for (const x of v.slice(0, MAX_LATE_SHOWN * 2)) {
            const [lo, hi] = Array.isArray(x) ? [x[0], x[1]].map(safeCount) : [x, x].map(safeCount);
            if (lo < 1 || hi < lo || hi >= f - 1) continue;
            if (shown.length <= MAX_LATE_SHOWN) addRange(shown, lo, hi);
          }
          shown.splice(MAX_LATE_SHOWN);
          if (shown.length) lateShown.set(k, shown);
        }
        // Below which missing ones were reported (absent in files of before: none, reported
        // again).
        const lateReported = new Map<string, number>();
        for (const [k, v] of Object.entries(data.lateReported ?? {})) {
          const f = floor.get(k);
          const n = safeCount(v);
          if (f !== undefined && n >= 1 && n <= f) lateReported.set(k, n);
        }
        const invited: Record<string, true> = Object.create(null);
        for (const k of Object.keys(data.invited ?? {})) invited[k] = true;
        const room = this.#newRoom(list, data.creatorKey, {
          seq,
          next,
          floor,
          lateShown,
          lateReported,
          invited,
        });
        // Checked again at each start: which members are silenced is not kept on disk.
        this.#checkKeys(list, room);
        this.#rooms.set(list.roomId, room);
      } catch (e) {
        this.#host.emit({
          type: "warning",
          message: `Skipped the room file "${entry.name}": ${e instanceof Error ? e.message : e}`,
        });
      }
    }
  }

  /**
   * Shows again (`room_invite`) each room invitation restored from the last run, and connects to
   * the members of every room we are in (the name that sorts first invites).
   */
  start(): void {
    for (const i of this.#restored) {
      if (this.#invites.get(inviteKey(i.from, i.roomId)) !== i) continue; // answered meanwhile
      this.#host.emit({ type: "room_invite", room: i.room, from: i.from });
    }
    this.#restored = [];
    for (const r of this.#rooms.values()) this.#connectMembers(r);
    const self = this.#host.self;
    for (const l of this.#left.values()) {
      if (!l.told && self < l.from && !this.#host.peer(l.from)) this.#dial(l.from);
    }
  }

  /** Stops re-invites, gap and join timers; writes what is unsaved. */
  // deno-lint-ignore require-await
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const d of this.#dialing.values()) clearTimeout(d.timer);
    for (const r of this.#rooms.values()) {
      for (const t of [...r.gaps.values(), ...r.lateTimers.values()]) clearTimeout(t);
    }
    for (const i of this.#invites.values()) clearTimeout(i.joinTimer);
    this.#flush();
    if (this.#invitationsDirty) this.#saveInvitationsOrWarn();
  }

  // --- the commands

  /** Creates the room `room` (`#name`) with us as its creator and only member. */
  // Async for its callers; its state is written synchronously (see #saveDurable).
  // deno-lint-ignore require-await
  async create(room: string): Promise<RoomInfo> {
    checkRoomName(room);
    if (this.#byName(room)) throw new E2eError("ERR_USAGE", `You are already in ${room}`);
    const self = this.#host.self;
    const list = signList({
      roomId: roomIdFor(self),
      room,
      creator: self,
      version: 1,
      members: [{ name: self, key: this.#ownKey(), since: 1 }],
    }, this.#key());
    const r = this.#newRoom(list, this.#ownKey());
    r.next[self] = 1;
    this.#rooms.set(list.roomId, r);
    try {
      this.#saveDurable(r);
    } catch (e) {
      this.#rooms.delete(list.roomId);
      throw e;
    }
    if (this.#dropInvites(room)) this.#saveInvitationsOrWarn();
    this.#host.emit({ type: "room_joined", room, roomId: list.roomId, members: [self] });
    return this.members(room);
  }

  /**
   * Invites `name` to `room` (creator only). Over an open connection the signed
   * invitation goes at once; otherwise `name` is invited to connect first (as
   * `/chat NAME`) and the room invitation follows their accept.
   */
  async invite(room: string, name: string): Promise<void> {
    const r = this.#joined(room);
    checkName(name);
    this.#requireCreator(r, "adds members");
    if (name === this.#host.self) throw new E2eError("ERR_USAGE", `You are in ${room} already`);
    if (r.list.members.some((m) => m.name === name)) {
      throw new E2eError("ERR_USAGE", `"${name}" is in ${room} already`);
    }
    if (r.list.members.length >= MAX_MEMBERS) {
      throw new E2eError("ERR_USAGE", `${room} has ${MAX_MEMBERS} members, the most a room has`);
    }
    // Durable before it is made known (the command's answer, `invited`, the invitation itself):
    // a creator back from a power cut without it would refuse the invitee's join.
    const had = r.invited[name];
    r.invited[name] = true;
    try {
      this.#saveDurable(r);
    } catch (e) {
      if (!had) delete r.invited[name];
      throw e;
    }
    // Connected: it goes now (or with their hello). Else they are invited to connect first,
    // and the room invitation goes once they have accepted.
    const conn = this.#host.peer(name);
    if (conn) conn.sendRoom({ op: "invite", list: r.list });
    else await this.#host.invite(name);
  }

  /**
   * Accepts the invitation to `room` (from `creator`, needed when invitations to two rooms of
   * that name wait): the creator adds us, and `room_joined` follows. Until then (or until the
   * connection to the creator ends, or {@linkcode JOIN_WAIT_MS} pass without an answer: a warning
   * says so) the join is under way, and {@linkcode decline} of the same invitation fails with
   * `ERR_CONFLICT`, as a join of one declined does. The creator must be connected: an invitation
   * restored after a restart is joined once its creator is connected again, and the list that
   * answers is checked with the key of that connection (so a creator revoked or expired since
   * cannot answer, and one that withdrew the invitation meanwhile does not).
   */
  join(room: string, creator?: string): void {
    checkRoomName(room);
    if (creator !== undefined) checkName(creator);
    if (this.#byName(room)) throw new E2eError("ERR_USAGE", `You are in ${room} already`);
    const invite = this.#pick(room, creator, "join");
    const from = invite.from;
    const conn = this.#host.peer(from);
    if (!conn || !this.#sendJoin(invite, conn)) {
      throw new E2eError("ERR_NOT_FOUND", `Not connected to "${from}", who invited you`, {
        hint: `connect to "${from}" first (/chat ${from}, or accept an invitation from "${from}")`,
      });
    }
  }

  // Sends `join` for `invite` on `conn`, its creator's connection: under way from now until the
  // list comes, the connection ends, or JOIN_WAIT_MS pass. Whether it was sent.
  #sendJoin(invite: RoomInvite, conn: PeerConnection): boolean {
    const { room, from } = invite;
    // Kept before it goes (HOME/room-invitations.json): a creator that takes it counts us in,
    // and sends us the room's state, not the invitation, from then on; back from a restart, we
    // answer that state with the join again (#notIn), as our consent was given.
    // (A leave of the room kept from before is not told any more: this join is newer.)
    const had = invite.joined === true;
    const wasLeft = this.#left.delete(inviteKey(from, invite.roomId));
    if (!had || wasLeft) {
      invite.joined = true;
      invite.joinedAt = Date.now();
      this.#saveInvitationsOrWarn();
    }
    if (!conn.sendRoom({ op: "join", roomId: invite.roomId })) {
      if (!had && invite.joined) {
        invite.joined = undefined;
        invite.joinedAt = undefined;
        this.#invitationsDirty = true;
      }
      return false;
    }
    invite.joined = true;
    invite.joining = conn;
    clearTimeout(invite.joinTimer);
    // A creator that refuses a join says nothing: after a while the join is no longer under way.
    invite.joinTimer = setTimeout(() => {
      invite.joinTimer = undefined;
      if (invite.joining !== conn) return;
      invite.joining = undefined;
      if (this.#invites.get(inviteKey(from, invite.roomId)) !== invite) return;
      if (this.#host.peer(from) !== conn) return; // the connection ended: said by `disconnected`
      this.#host.emit({
        type: "warning",
        message: `"${from}" did not answer your join of ${room} in ${JOIN_WAIT_MS / 1000} s ` +
          `(the room may be full, or "${from}" withdrew the invitation): ` +
          `/room join ${room} ${from} asks again, /room decline ${room} ${from} declines it`,
      });
    }, JOIN_WAIT_MS);
    return true;
  }

  /**
   * Declines the invitation to `room` (from `creator`, needed when invitations to two rooms of
   * that name wait): it is dropped, and its creator is told with a `leave` for the room, on which
   * it stops offering it (until it invites us again). A creator not connected now is told at
   * its next hello: when it offers the invitation again (not shown then), or, when it took a
   * join of ours whose answering list was lost, when it sends us the room's state as to a member
   * (it then removes us as one who leaves; so too when a leave told is lost with its connection).
   * `told`: whether the creator was told now. The decline is durable
   * (HOME/room-invitations.json) before the creator is told or this returns.
   *
   * @example
   * ```ts ignore
   * const { from, told } = chat.rooms.decline("#team", "ben");
   * ```
   */
  decline(room: string, creator?: string): { from: string; told: boolean } {
    checkRoomName(room);
    if (creator !== undefined) checkName(creator);
    const invite = this.#pick(room, creator, "decline");
    if (invite.joining && this.#host.peer(invite.from) === invite.joining) {
      throw new E2eError(
        "ERR_CONFLICT",
        `A join of the invitation to ${room} from "${invite.from}" is under way`,
        {
          hint: `once you are in ${room}, /room leave ${room}; with no answer from ` +
            `"${invite.from}" in ${JOIN_WAIT_MS / 1000} s, it can be declined`,
        },
      );
    }
    const key = inviteKey(invite.from, invite.roomId);
    const declined: Declined = {
      room: invite.room,
      roomId: invite.roomId,
      from: invite.from,
      at: Date.now(),
    };
    // Durable before anyone is told (kept as not told until the creator is): back from a
    // restart, the invitation its creator offers again is answered, not shown.
    const before = [new Map(this.#invites), new Map(this.#declinedHere)] as const;
    const untoldBefore = new Map(this.#declinesUntold);
    this.#invites.delete(key);
    // Remembered, so that a join of it pressed meanwhile (another tab) says it was declined.
    remember(this.#declinedHere, key, declined, MAX_DECLINED);
    remember(this.#declinesUntold, key, declined, MAX_DECLINED);
    try {
      this.#saveInvitations();
    } catch (e) {
      [this.#invites, this.#declinedHere] = before;
      this.#declinesUntold = untoldBefore;
      throw e;
    }
    clearTimeout(invite.joinTimer);
    const told = this.#host.peer(invite.from)?.sendRoom({
      op: "leave",
      roomId: invite.roomId,
    }) === true;
    if (told) {
      this.#declinesUntold.delete(key);
      this.#saveInvitationsOrWarn();
    }
    return { from: invite.from, told };
  }

  /** The room invitations that wait, each with its creator, by room name and then creator. */
  invitations(): Array<{ room: string; from: string }> {
    return [...this.#invites.values()]
      .map((i) => ({ room: i.room, from: i.from }))
      .sort((a, b) => a.room < b.room ? -1 : a.room > b.room ? 1 : a.from < b.from ? -1 : 1);
  }

  // The one invitation to `room` (from `creator`) that `/room ACTION` is about.
  #pick(room: string, creator: string | undefined, action: "join" | "decline"): RoomInvite {
    const all = this.#invitesTo(room);
    const invites = all.filter((i) => creator === undefined || i.from === creator);
    const declined = [...this.#declinedHere.values()]
      .findLast((d) => d.room === room && (creator === undefined || d.from === creator));
    if (invites.length === 0 && action === "join" && declined) {
      throw new E2eError(
        "ERR_CONFLICT",
        `You declined the invitation to ${room} from "${declined.from}"`,
        { hint: `"${declined.from}" can invite you again` },
      );
    }
    if (invites.length === 0) {
      throw new E2eError(
        "ERR_NOT_FOUND",
        `No invitation to ${room}${creator === undefined ? "" : ` from "${creator}"`}`,
        all.length ? { hint: choices(room, all, action) } : {},
      );
    }
    // Never guessed: a member could send an invitation to a room of the same name to be the one
    // joined.
    if (invites.length > 1) {
      throw new E2eError("ERR_USAGE", twoInvitations(room, invites), {
        hint: `name the creator: ${choices(room, invites, action)}`,
      });
    }
    return invites[0];
  }

  /**
   * Leaves `room`: the creator is told (and publishes the new list); we keep nothing of it but
   * the leave itself (HOME/room-invitations.json), told again when the creator, away now or the
   * leave lost, next sends the room's state.
   */
  // deno-lint-ignore require-await
  async leave(room: string): Promise<void> {
    const r = this.#joined(room);
    const self = this.#host.self;
    if (r.list.creator === self && r.list.members.length > 1) {
      throw new E2eError("ERR_USAGE", `You created ${room}: remove the others before you leave`);
    }
    const former = r.list.members.map((m) => m.name);
    const { creator, roomId } = r.list;
    const key = inviteKey(creator, roomId);
    // Kept durably before the room is forgotten, to tell the creator while it counts us in: a
    // leave sent may be lost with its connection, and a creator away is told when next connected
    // (its `state` of the room, #notIn). Only a leave kept so is ever sent for a room we do not
    // hold: a room file skipped at load never makes us leave. (A kill in between leaves both; the
    // room's file wins at load.)
    if (creator !== self) {
      const before = new Map(this.#left);
      remember(
        this.#left,
        key,
        { room, roomId, from: creator, at: Date.now(), told: false },
        MAX_LEFT,
      );
      try {
        this.#saveInvitations();
      } catch (e) {
        this.#left = before;
        throw e;
      }
    }
    // Forgotten durably before the creator is told: back from a power cut, we would take
    // ourselves for a member of a room whose creator removed us.
    this.#forget(r);
    const told = creator === self || this.#host.peer(creator)?.sendRoom({ op: "leave", roomId });
    const left = this.#left.get(key);
    if (told && left) {
      // Kept as told (a restart would otherwise connect to the creator again to tell it).
      left.told = true;
      this.#saveInvitationsOrWarn();
    }
    this.#host.gone?.(room, former.filter((n) => n !== self));
    this.#release(former);
    if (!told) {
      this.#host.emit({
        type: "warning",
        message: `"${creator}", who created ${room}, is not connected: "${creator}" is told ` +
          `you left when you are next connected (until then the others keep you in its member ` +
          `list; you get nothing of it)`,
      });
      if (self < creator) this.#dial(creator);
    }
    this.#host.emit({ type: "room_member", room, name: self, change: "left" });
  }

  /** Removes `name` from `room` (creator only): a new list without them goes to every member. */
  // deno-lint-ignore require-await
  async remove(room: string, name: string): Promise<void> {
    const r = this.#joined(room);
    checkName(name);
    this.#requireCreator(r, "removes members");
    if (name === this.#host.self) {
      throw new E2eError("ERR_USAGE", `You cannot remove yourself: /room leave ${room}`);
    }
    if (!r.list.members.some((m) => m.name === name)) {
      if (r.invited[name]) {
        // Withdrawn durably: back from a power cut, we would admit them after all.
        delete r.invited[name];
        try {
          this.#saveDurable(r);
        } catch (e) {
          r.invited[name] = true;
          throw e;
        }
        return;
      }
      throw new E2eError("ERR_NOT_FOUND", `"${name}" is not in ${room}`);
    }
    this.#publish(r, r.list.members.filter((m) => m.name !== name), {
      name,
      change: "removed",
    });
  }

  /** The members of `room`, their key fingerprints, and the list's version and hash. */
  members(room: string): RoomInfo {
    const r = this.#joined(room);
    return {
      room,
      roomId: r.list.roomId,
      creator: r.list.creator,
      version: r.list.version,
      hash: listHash(r.list),
      members: r.list.members.map((m) => ({
        name: m.name,
        keyFingerprint: keyFingerprintOf(m.key),
      })),
    };
  }

  /** The rooms we are in, and those we are invited to. */
  list(): {
    rooms: Array<{ room: string; members: number; version: number }>;
    invitations: string[];
  } {
    return {
      rooms: [...this.#rooms.values()].map((r) => ({
        room: r.list.room,
        members: r.list.members.length,
        version: r.list.version,
      })).sort((a, b) => (a.room < b.room ? -1 : 1)),
      // Each name once: when several share it, /room join says whose they are.
      invitations: [...new Set([...this.#invites.values()].map((i) => i.room))],
    };
  }

  /** The id of the room called `room` that we are in, if any (its history is kept by it). */
  idOf(room: string): string | undefined {
    return this.#byName(room)?.list.roomId;
  }

  /** Whether we are in `room`. */
  has(room: string): boolean {
    return this.#byName(room) !== undefined;
  }

  /**
   * The key fingerprints the member lists of our rooms give `name`, with each room: a first
   * contact with `name` through the mailbox with another key is held back as a changed key, and
   * pins nothing (a dishonest CA may certify the name again with a key of its own, which pinned
   * would silence the listed member in the room; a creator may list a key nobody holds).
   *
   * @example
   * ```ts ignore
   * chat.rooms.listedKeys("dave"); // [{ room: "#team", keyFingerprint: "…" }]
   * ```
   */
  listedKeys(name: string): Array<{ room: string; keyFingerprint: string }> {
    const out: Array<{ room: string; keyFingerprint: string }> = [];
    if (name === this.#host.self) return out;
    for (const r of this.#rooms.values()) {
      const m = r.list.members.find((x) => x.name === name);
      if (m) out.push({ room: r.list.room, keyFingerprint: keyFingerprintOf(m.key) });
    }
    return out;
  }

  /** Whether `name` is in the member list we hold for `room` (false when we are not in it). */
  isMember(room: string, name: string): boolean {
    const r = this.#byName(room);
    return r !== undefined && this.#member(r, name);
  }

  /**
   * Sends `text` to `room`, signed, to every member connected now (the others
   * get it from them); returns its id (see {@linkcode roomMessageId}).
   */
  send(room: string, text: string): string {
    const r = this.#joined(room);
    if (text.length > MAX_ROOM_TEXT_CHARS) {
      throw new E2eError(
        "ERR_USAGE",
        `Message too long: ${text.length} characters, at most ${MAX_ROOM_TEXT_CHARS}`,
      );
    }
    const self = this.#host.self;
    const seq = r.seq + 1;
    const m = signMessage({
      roomId: r.list.roomId,
      room,
      author: self,
      seq,
      version: r.list.version,
      text,
    }, this.#key());
    r.seq = seq;
    r.next[self] = seq + 1;
    this.#remember(r, m);
    const since = r.list.members.find((x) => x.name === self)!.since;
    const id = roomMessageId(r.list.roomId, self, since, seq);
    const targets = this.#connectedMembers(r, [self]);
    const to = [self, ...targets.map((c) => c.name)];
    // It leaves at the end of this turn, once the number is durable: a restarted author never
    // reuses a sequence number.
    this.#queueSend(r, id, () => {
      this.#host.history.roomMessage({ id, room, roomId: r.list.roomId, from: self, text });
      this.#host.emit({ type: "sent", to: room, id, text });
      for (const conn of targets) conn.sendRoom({ op: "msg", m, to });
      // Members not connected now get it through the mailbox (they drop what also comes otherwise):
      // those whose pinned key is the listed one. The mailbox seals to the key the CA's directory
      // gives for the name, held to the pin: one never met would be pinned to whatever key a
      // dishonest CA gives (they get it from the others when connected).
      for (const member of r.list.members) {
        if (to.includes(member.name) || !this.#pinnedAsListed(r, member)) continue;
        this.#host.mailbox?.(member.name, { op: "msg", m, to });
      }
    });
    this.#save(r);
    return id;
  }

  // Our room messages of one turn leave together at its end, after one fdatasync of each room's
  // sequence number for all of them (a burst costs one sync, not one a message).
  #queueSend(r: Room, id: string, leave: () => void): void {
    if (this.#outbox.length === 0) queueMicrotask(() => this.#sendQueued());
    this.#outbox.push({ r, id, leave });
  }

  #sendQueued(): void {
    const queued = this.#outbox;
    this.#outbox = [];
    const failed = new Map<Room, unknown>();
    for (const r of new Set(queued.map((q) => q.r))) {
      if (this.#rooms.get(r.list.roomId) !== r) continue; // left in the same turn: nothing leaves
      try {
        this.#saveSeq(r);
      } catch (e) {
        failed.set(r, e);
      }
    }
    for (const { r, id, leave } of queued) {
      if (this.#rooms.get(r.list.roomId) !== r) continue;
      if (!failed.has(r)) {
        leave();
        continue;
      }
      const e = failed.get(r);
      this.#host.emit({
        type: "warning",
        message: `Not sent to ${r.list.room} (${id}): cannot save the room's sequence number: ${
          e instanceof Error ? e.message : String(e)
        }`,
      });
    }
  }

  // --- what the chat core tells us

  /** A connection's hello arrived: exchange room state, and send the invitations it waits for. */
  hello(conn: PeerConnection): void {
    this.#unreachable.delete(conn.name);
    if (!conn.rooms) return;
    // The creator of a room we left, connected: its `state` of the room (sent at its hello while
    // it counts us in) is answered with the leave (#notIn). Whether or not it comes, there is
    // nothing more to connect for: a creator that removed us, deleted the room or is hostile
    // never sends one, and would otherwise be invited (and accepted) for 30 days.
    let moot = false;
    for (const l of this.#left.values()) {
      if (l.from !== conn.name || l.told) continue;
      l.told = true;
      moot = true;
    }
    if (moot) this.#saveInvitationsOrWarn();
    for (const r of this.#rooms.values()) {
      if (this.#member(r, conn.name)) {
        if (this.#listed(r, conn)) this.#sendState(r, conn);
      } else if (r.invited[conn.name] && r.list.creator === this.#host.self) {
        conn.sendRoom({ op: "invite", list: r.list });
      }
    }
  }

  /** `name` disconnected: the member whose name sorts first invites again. */
  disconnected(name: string): void {
    if (this.#stopped) return;
    if (this.#wanted(name) && this.#host.self < name) this.#dial(name);
  }

  /**
   * An invitation from `name` arrived: accepted at once when `name` is a member
   * of a room we are in (the signed list is our consent). Returns whether it was.
   */
  invited(name: string): boolean {
    if (!this.#wanted(name) || this.#host.peer(name)) return false;
    this.#host.accept(name).catch((e) => {
      // Said once until a connection works, or they share no room with us any more (so this
      // holds co-members only, however many names a creator's lists bring and take away).
      if (this.#unreachable.has(name) || !this.#wanted(name)) return;
      this.#unreachable.add(name);
      this.#warn(`Cannot connect to "${name}", a room member`, e);
    });
    return true;
  }

  /**
   * A room message `from` left for us in the CA's mailbox (the mailbox checked that `from`
   * signed the item; the room checks the author's own signature, the membership and the order).
   * Anything else, or a refusal, is a warning. Returns the history lines it recorded (this
   * message's and the held ones it let through, none when it waits or is a copy): the caller
   * makes them durable before the CA's copy is deleted, and records them again if that fails.
   * `options.id` is the item's id: one held apart under a newer list is named by it in
   * {@linkcode holds} and the host's `mailboxHeldGone`.
   */
  fromMailbox(from: string, payload: string, options: { id?: string } = {}): RoomHistoryRecord[] {
    const recorded: RoomHistoryRecord[] = this.#recorded = [];
    try {
      const body = decodeRoomFrame(JSON.parse(payload));
      if (body.op !== "msg") throw refused(`a room frame "${body.op}" through the mailbox`);
      this.#onMessage({ name: from }, body.m, body.to ?? [], true, options.id);
    } catch (e) {
      this.#warn(`Refused a room message from "${from}" through the mailbox`, e);
    } finally {
      this.#recorded = undefined;
    }
    return recorded;
  }

  /**
   * Whether the mailbox item `id` (given to {@linkcode fromMailbox}) is held apart, until the
   * list it was signed under is here or until its author's earlier messages are (a gap): the
   * caller keeps it on disk before the CA's copy goes, and hears of it again through
   * `mailboxHeldGone`.
   */
  holds(id: string): boolean {
    for (const r of this.#rooms.values()) {
      if (r.provisional.some((p) => p.mailboxId === id)) return true;
      for (const held of r.heldMailbox.values()) if (held === id) return true;
    }
    return false;
  }

  /** A `room` frame from a connected peer. Refusals are reported as warnings and change nothing. */
  receive(conn: PeerConnection, body: RoomFrame): void {
    try {
      switch (body.op) {
        case "invite":
          return this.#onInvite(conn, body.list);
        case "join":
          return this.#onJoin(conn, body.roomId);
        case "leave":
          return this.#onLeave(conn, body.roomId);
        case "list":
          return this.#onList(conn, body.list);
        case "msg":
          return this.#onMessage(
            { name: conn.name, conn },
            body.m,
            body.to ?? [],
            body.fill === true,
          );
        case "state":
          return this.#onState(conn, body);
        case "want":
          return this.#onWant(conn, body);
      }
    } catch (e) {
      this.#refuse(conn, e);
    }
  }

  // --- frames

  #onInvite(conn: PeerConnection, list: SignedList): void {
    const self = this.#host.self;
    if (list.creator !== conn.name) throw refused("an invitation not from the room's creator");
    const sent = (this.#invitesFrom.get(conn) ?? 0) + 1;
    this.#invitesFrom.set(conn, sent);
    if (sent > MAX_INVITES_PER_CONNECTION) {
      throw refused(`more than ${MAX_INVITES_PER_CONNECTION} room invitations on one connection`);
    }
    const creatorKey = spkiOf(conn.certificate.x509.publicKey);
    if (!verifyList(list, publicKeyOf(creatorKey))) {
      throw refused("an invitation whose member list the creator did not sign");
    }
    if (list.members.find((m) => m.name === conn.name)?.key !== creatorKey) {
      throw refused("an invitation whose member list gives its creator another key");
    }
    // Lists and messages name the room by its id alone: one bound to another creator would
    // stand for (and be refused in favour of) that creator's room.
    if (!isRoomIdOf(list.roomId, list.creator)) {
      throw refused(
        `an invitation to ${list.room} whose room id is not one "${list.creator}" made`,
      );
    }
    if (list.members.some((m) => m.name === self)) return; // we are in it already
    const held = this.#rooms.get(list.roomId);
    if (held?.list.creator === list.creator) return;
    if (held) {
      throw refused(
        `an invitation to ${list.room} with the room id of ${held.list.room}, created by ` +
          `"${held.list.creator}"`,
      );
    }
    if (this.#byName(list.room)) {
      throw refused(`an invitation to another room called ${list.room}, which you are in`);
    }
    const key = inviteKey(list.creator, list.roomId);
    // Offered again: the creator does not count us in, so a leave of it kept has nothing to tell.
    if (this.#left.delete(key)) this.#invitationsDirty = true;
    // Declined while its creator was away: it is told now, and the offer is not shown again
    // (nor when the leave cannot go now: it is told with the next offer).
    if (this.#declinesUntold.has(key)) return this.#tellDecline(conn, key);
    const had = this.#invites.get(key);
    if (had) {
      // The same invitation again (sent at every hello), maybe one restored from the last run:
      // the key of this connection now checks the list that answers a join.
      if (list.version >= had.version) {
        had.key = creatorKey;
        had.version = list.version;
      }
      had.at = Date.now();
      this.#invitationsDirty = true; // written with the next change (only its age moved)
      return;
    }
    // Bounded per creator, by name: its own oldest goes (one of the same name first: it made
    // another room of that name since). When all are taken, the creator holding the most gives
    // up its oldest if it holds at least two more than this one (two members together could
    // otherwise hold all 32 and keep every other creator's out); else a new one is refused.
    // Only a plain waiting one ever goes: one we joined (the join under way, or kept as our
    // consent) is ours to decline, and a flood of invitations must not lose it.
    const theirs = [...this.#invites].filter(([, i]) => i.from === conn.name);
    const sameName = theirs.find(([, i]) => i.room === list.room);
    if (sameName?.[1].joined) {
      throw refused(
        `an invitation to another room called ${list.room}, whose invitation from ` +
          `"${conn.name}" you joined (/room decline ${list.room} ${conn.name} declines that one)`,
      );
    }
    const replaced = sameName ??
      (theirs.length >= MAX_INVITES_PER_CREATOR ? theirs.find(([, i]) => !i.joined) : undefined);
    if (!replaced && theirs.length >= MAX_INVITES_PER_CREATOR) {
      throw refused(
        `an invitation to ${list.room}: "${conn.name}" has ${MAX_INVITES_PER_CREATOR} ` +
          `invitations you joined or that wait, the most one creator may`,
      );
    }
    const most = replaced || this.#invites.size < MAX_ROOM_INVITES
      ? undefined
      : this.#oldestOfMost(theirs.filter(([, i]) => !i.joined).length + 2);
    const gone = replaced?.[0] ?? most;
    if (gone !== undefined) {
      const old = this.#invites.get(gone)!;
      const from = old.from;
      clearTimeout(old.joinTimer);
      this.#invites.delete(gone);
      this.#host.emit({
        type: "room_invite_dropped",
        room: old.room,
        from,
        reason: replaced
          ? (replaced[1].room === list.room
            ? `"${from}" invites you to another room called ${list.room}`
            : `"${from}" has ${MAX_INVITES_PER_CREATOR} invitations waiting, the most one creator may`)
          : `${MAX_ROOM_INVITES} room invitations wait, and "${from}" holds the most`,
      });
    } else if (this.#invites.size >= MAX_ROOM_INVITES) {
      throw refused(
        `an invitation to ${list.room}: ${MAX_ROOM_INVITES} room invitations wait already ` +
          `(join or decline some: /room join, /room decline)`,
      );
    }
    this.#invites.set(key, {
      room: list.room,
      roomId: list.roomId,
      from: conn.name,
      version: list.version,
      at: Date.now(),
      key: creatorKey,
    });
    this.#declinedHere.delete(key); // invited again
    // Durable before it is shown: back from a restart, it still waits.
    this.#saveInvitationsOrWarn();
    this.#host.emit({ type: "room_invite", room: list.room, from: conn.name });
    const same = this.#invitesTo(list.room);
    if (same.length > 1) {
      this.#host.emit({
        type: "warning",
        message: `${twoInvitations(list.room, same)}: ${choices(list.room, same)}`,
      });
    }
  }

  #onJoin(conn: PeerConnection, roomId: string): void {
    const r = this.#rooms.get(roomId);
    if (!r || r.list.creator !== this.#host.self) {
      throw refused("a join for a room you did not create");
    }
    if (this.#member(r, conn.name)) {
      // In already (the list that answered its join was lost: it restarted, or its connection
      // ended): the list again, as that answer; not to another key than the listed one.
      if (this.#listed(r, conn) && this.#allow(conn)) {
        conn.sendRoom({ op: "list", list: r.list }, { answer: true });
      }
      return;
    }
    if (!r.invited[conn.name]) throw refused(`a join to ${r.list.room} without an invitation`);
    if (r.list.members.length >= MAX_MEMBERS) {
      throw refused(`a join to ${r.list.room}, which has ${MAX_MEMBERS} members`);
    }
    delete r.invited[conn.name];
    const member: RoomMember = {
      name: conn.name,
      key: spkiOf(conn.certificate.x509.publicKey),
      since: r.list.version + 1,
    };
    const members = [...r.list.members, member].sort((a, b) => (a.name < b.name ? -1 : 1));
    this.#publish(r, members, { name: conn.name, change: "joined" });
  }

  #onLeave(conn: PeerConnection, roomId: string): void {
    const r = this.#rooms.get(roomId);
    if (!r || r.list.creator !== this.#host.self) return; // not ours to change
    if (conn.name === this.#host.self) return;
    if (this.#member(r, conn.name) && !this.#listed(r, conn)) return;
    if (!this.#member(r, conn.name)) {
      // From one we invited: the invitation is declined, and not offered again at each hello.
      if (!r.invited[conn.name]) return;
      delete r.invited[conn.name];
      this.#saveDurableOrWarn(r);
      this.#host.emit({
        type: "warning",
        message: `"${conn.name}" declined the invitation to ${r.list.room}`,
      });
      return;
    }
    this.#publish(r, r.list.members.filter((m) => m.name !== conn.name), {
      name: conn.name,
      change: "left",
    });
  }

  #onList(conn: PeerConnection, list: SignedList): void {
    const self = this.#host.self;
    const r = this.#rooms.get(list.roomId);
    if (!r) {
      // Our join answered: the invitation named this creator and pinned its key.
      const invite = this.#invites.get(inviteKey(list.creator, list.roomId));
      // A room we left, or never knew; or one we declined while its creator took our join.
      if (!invite) {
        return this.#notIn(conn, list.roomId, list.members.some((m) => m.name === self));
      }
      // One restored from the last run and not offered again holds no key: the list that
      // answers its join is taken from its creator's own connection, with that connection's key.
      const key = invite.key ??
        (conn.name === invite.from ? spkiOf(conn.certificate.x509.publicKey) : undefined);
      if (key === undefined) return; // passed on by a member: the creator's own copy is taken
      if (
        list.creator !== invite.from || !verifyList(list, publicKeyOf(key)) ||
        list.members.find((m) => m.name === list.creator)?.key !== key
      ) {
        throw refused(`a member list of ${list.room} the creator did not sign`);
      }
      // The list that adds us follows the invitation's: an older one that had us (a member
      // removed and invited again) would put us back, unasked, among members since removed.
      if (list.version <= invite.version) {
        throw refused(`a member list of ${list.room} no newer than the invitation to it`);
      }
      const me = list.members.find((m) => m.name === self);
      if (!me) return;
      // Only the answer to our join: a list sent unasked would put us in the room, and connect
      // us to its members, without our consent.
      if (!this.#joinKept(invite)) {
        throw refused(`a member list of ${list.room} that adds you before you joined`);
      }
      if (me.key !== this.#ownKey()) {
        throw refused(`a member list of ${list.room} with another key for you`);
      }
      const room = this.#newRoom(list, key);
      this.#checkKeys(list, room);
      room.next[self] = 1;
      this.#rooms.set(list.roomId, room);
      const dropped = this.#dropInvites(list.room);
      // In it again: a leave of before is not told any more.
      const wasLeft = this.#left.delete(inviteKey(list.creator, list.roomId));
      // Durable (with the creator's key) before anyone hears we are in: a client killed right
      // after `room_joined` comes back in the room. (The invitation after: a restart in between
      // finds both, and drops the invitation to a room it is in, and the leave of a room whose
      // file it has.)
      this.#saveDurableOrWarn(room);
      if (dropped || wasLeft) this.#saveInvitationsOrWarn();
      this.#host.emit({
        type: "room_joined",
        room: list.room,
        roomId: list.roomId,
        members: list.members.map((m) => m.name),
      });
      for (const c of this.#connectedMembers(room, [self])) this.#sendState(room, c);
      this.#connectMembers(room);
      return;
    }
    if (!this.#member(r, conn.name)) {
      throw refused(`a member list of ${r.list.room} from a non-member`);
    }
    if (list.creator !== r.list.creator || !verifyList(list, publicKeyOf(r.creatorKey))) {
      throw refused(`a member list of ${r.list.room} the creator did not sign`);
    }
    if (list.room !== r.list.room) throw refused("a member list that renames the room");
    if (list.version <= r.list.version) {
      if (
        list.version === r.list.version && list.sig !== r.list.sig &&
        listHash(list) !== listHash(r.list)
      ) {
        throw refused(
          `two different member lists of ${r.list.room} signed as version ${list.version}`,
        );
      }
      return; // one we have, or older
    }
    const me = list.members.find((m) => m.name === self);
    if (me && me.key !== this.#ownKey()) {
      throw refused(`a member list of ${list.room} with another key for you`);
    }
    // A member added (or added again) since our list came in a later version: one back with
    // the `since` of a membership that ended would bring its messages of then back as new
    // (same ids), replayable by anyone who kept them.
    const had = new Map(r.list.members.map((m) => [m.name, m.since]));
    const back = list.members.find((m) => had.get(m.name) !== m.since && m.since <= r.list.version);
    if (back) {
      throw refused(
        `a member list of ${list.room} that adds "${back.name}" as of version ${back.since}, ` +
          `not newer than your version ${r.list.version} (old messages would come back as new)`,
      );
    }
    this.#apply(r, list);
  }

  // A message from a connection, or (no `conn`) from the mailbox.
  #onMessage(
    src: { name: string; conn?: PeerConnection },
    m: SignedMessage,
    to: string[],
    fill: boolean,
    mailboxId?: string,
  ): void {
    const conn = src;
    const r = this.#rooms.get(m.roomId);
    if (!r) return; // a room we left: nothing of it is shown
    if (!this.#member(r, conn.name)) throw refused(`a message of ${r.list.room} from a non-member`);
    if (src.conn && !this.#listed(r, src.conn)) return; // said once, by #listed
    // Signed under a list newer than ours: the author's membership in it may not be the one we
    // hold (removed and added back, numbering from 1 again), and taken now its numbers would be
    // copies (or "two different messages") of the old membership's, or shown under its ids. Held
    // apart until that list is here; it is asked for.
    if (m.version > r.list.version) {
      // Checked against the author's key in our list when they are listed: a member's made-up
      // messages held unchecked pushed out real ones (through the mailbox, the CA's copy gone).
      const listed = r.list.members.find((x) => x.name === m.author);
      if (listed && !verifyMessage(m, this.#memberKey(r, listed))) {
        throw refused(`a message in ${r.list.room} by "${m.author}" with a bad signature`);
      }
      return this.#holdProvisional(r, { src, m, to, fill, mailboxId });
    }
    const author = r.list.members.find((x) => x.name === m.author);
    // Passed on before the sender had the list without them: not the sender's fault.
    const late = r.former.has(m.author) && (!author || m.version < author.since);
    if (late) return;
    if (!author) throw refused(`a message in ${r.list.room} by "${m.author}", not a member`);
    if (r.untrusted.has(author.name) || this.#unpinned(r, author)) {
      throw refused(
        `a message in ${r.list.room} by "${m.author}", whose key is not the one you pinned`,
      );
    }
    if (m.room !== r.list.room) throw refused(`a message of ${r.list.room} under another name`);
    if (m.version < author.since) {
      throw refused(`a message in ${r.list.room} by "${m.author}" from before they joined`);
    }
    // Nor from before we did: no member passes us those (fills start at our `since`), so one is
    // a member replaying what it kept — shown as new, and setting where we take the author up,
    // it would have the author's current messages refused as too far ahead, for good.
    const self = r.list.members.find((x) => x.name === this.#host.self);
    if (self && m.version < self.since) {
      throw refused(`a message in ${r.list.room} by "${m.author}" from before you joined`);
    }
    if (!verifyMessage(m, this.#memberKey(r, author))) {
      throw refused(
        `a message in ${r.list.room} claiming to be by "${m.author}" whose signature does not verify`,
      );
    }
    if (m.author === this.#host.self) return; // ours, passed back
    // A member removed and added again starts again at 1: its `since` tells the two apart.
    const key = roomMessageId(m.roomId, m.author, author.since, m.seq);
    const seen = src.conn ? this.#seenOn(src.conn) : this.#mailboxSeen;
    const next = r.next[m.author];
    // Below where we took the author up, not shown yet (and of our membership, checked above).
    const floor = r.floor.get(m.author);
    const belowFloor = floor !== undefined && m.seq < floor &&
      !inRanges(r.lateShown.get(m.author), m.seq);
    // Past MAX_LATE_SHOWN runs shown apart (said by #showLate), one that starts another is not
    // shown: a bound on what is kept of them (in ROOMID.json too), which an author signing every
    // other number below the floor would otherwise grow without end.
    const lateFull = belowFloor && m.seq < floor - 1 &&
      !extendsRange(r.lateShown.get(m.author), m.seq) &&
      (r.lateShown.get(m.author)?.length ?? 0) >= MAX_LATE_SHOWN;
    const duplicate = lateFull || !belowFloor && (
          (next !== undefined && m.seq < next) || r.held.get(m.author)?.has(m.seq) ||
          r.buffer.has(`${m.author}.${m.seq}`)
        );
    if (duplicate) {
      // Another text (or version) signed under a number we hold: the author equivocates (members
      // would show different texts under one id). The first here stays; said once per author.
      const had = r.buffer.get(`${m.author}.${m.seq}`) ?? r.held.get(m.author)?.get(m.seq);
      if (had && had.sig !== m.sig && (had.text !== m.text || had.version !== m.version)) {
        const who = `${r.list.roomId} ${m.author}@${author.since}`;
        if (!this.#equivocated.has(who)) {
          remember(this.#equivocated, who, true, MAX_FORMER);
          this.#host.emit({
            type: "warning",
            message: `"${m.author}" signed two different messages as number ${m.seq} in ` +
              `${r.list.room} (one came from "${conn.name}"): members may show either under ` +
              `one id; the first you got is the one shown`,
          });
        }
      }
      // Passed on by several members is normal; the same message twice on one connection is not.
      if (!fill && seen.has(key)) {
        throw refused(`a replay of message ${m.seq} by "${m.author}" in ${r.list.room}`);
      }
      // Bounded here too: a member may sign fills of every number below its own next one.
      seen.add(key);
      if (seen.size > MAX_SEEN_PER_CONNECTION) seen.delete(seen.values().next().value!);
      return;
    }
    // At most MAX_HELD wait per author: the lowest, which are shown first. (A bound on the distance
    // from the next one expected instead left a member who missed more than that many — away while
    // the room was busy — deaf to the author for good: every later message was too far ahead.)
    const waiting = r.held.get(m.author);
    if (waiting && waiting.size >= MAX_HELD && m.seq > Math.max(...waiting.keys())) {
      throw refused(`message ${m.seq} by "${m.author}" in ${r.list.room}, too far ahead`);
    }
    // One that must wait (not the next one) fits in the room's characters held, or the highest of
    // the author holding most makes room: that may be this one, refused then.
    if ((next === undefined || m.seq > next) && !belowFloor && !this.#makeRoomToHold(r, m)) {
      throw refused(
        `message ${m.seq} by "${m.author}" in ${r.list.room}: more than ${MAX_HELD_CHARS} ` +
          `characters of messages there wait for earlier ones, most of them by "${m.author}"`,
      );
    }
    seen.add(key);
    if (seen.size > MAX_SEEN_PER_CONNECTION) seen.delete(seen.values().next().value!);
    this.#remember(r, m);
    // Passed on to the members the sender did not reach.
    const reached = new Set([...to, m.author, conn.name, this.#host.self]);
    const targets = this.#connectedMembers(r, [...reached]).filter((c) => {
      const member = r.list.members.find((x) => x.name === c.name)!;
      return member.since <= m.version;
    });
    if (targets.length) {
      const hint = [...new Set([...to, m.author, this.#host.self, ...targets.map((c) => c.name)])]
        .slice(0, MAX_MEMBERS);
      for (const c of targets) c.sendRoom({ op: "msg", m, to: hint });
    }
    if (belowFloor) return this.#showLate(r, m, floor);
    if (hold(r, m) > MAX_HELD) this.#dropHighest(r, m.author);
    // Joined after them: where we take them up waits for the earlier messages of our membership.
    if (next === undefined) this.#takeUp(r, m.author);
    else this.#drain(r, m.author);
    // Still waiting for earlier ones, and the CA's copy goes: the host keeps it on disk (holds).
    if (mailboxId && r.held.get(m.author)?.get(m.seq) === m) {
      r.heldMailbox.set(`${m.author}.${m.seq}`, mailboxId);
    }
  }

  // The held message `seq` of `author` went (`record`: shown, with that history line; none: let
  // go): when it came through the mailbox, the host hears it, so its copy on disk can go.
  #heldGone(r: Room, author: string, seq: number, record?: RoomHistoryRecord): void {
    const id = r.heldMailbox.get(`${author}.${seq}`);
    if (id === undefined) return;
    r.heldMailbox.delete(`${author}.${seq}`);
    this.#host.mailboxHeldGone?.(id, record ? [record] : []);
  }

  // Holds `p` until the list of its version is here (bounded: the oldest go, and come again as
  // fills once the list is here, or are reported as a gap), and asks for that list: of the
  // member it came from, or (through the mailbox) of the creator, once per version.
  #holdProvisional(r: Room, p: Provisional): void {
    const { m } = p;
    if (r.provisional.some((x) => x.m.sig === p.m.sig)) return;
    r.provisional.push(p);
    r.provisionalChars += m.text.length;
    // Past the bounds the oldest of the sender holding the most goes (its own past
    // MAX_PROVISIONAL_PER_SENDER): one member's cannot push out the others'.
    const count = (name: string) => r.provisional.filter((x) => x.src.name === name).length;
    while (
      r.provisional.length > MAX_PROVISIONAL || r.provisionalChars > MAX_PROVISIONAL_CHARS ||
      count(p.src.name) > MAX_PROVISIONAL_PER_SENDER
    ) {
      const counts = new Map<string, number>();
      for (const x of r.provisional) counts.set(x.src.name, (counts.get(x.src.name) ?? 0) + 1);
      let [most, mostN] = [p.src.name, counts.get(p.src.name) ?? 0];
      for (const [name, n] of counts) if (n > mostN) [most, mostN] = [name, n];
      const i = r.provisional.findIndex((x) => x.src.name === most);
      const gone = r.provisional.splice(i, 1)[0];
      r.provisionalChars -= gone.m.text.length;
      if (gone.mailboxId) this.#host.mailboxHeldGone?.(gone.mailboxId, []);
    }
    const conn = p.src.conn ?? this.#host.peer(r.list.creator);
    if (!conn || conn.name === this.#host.self || !this.#listed(r, conn)) return;
    // Once per connection and version (one that claims a version far ahead answers for its own
    // asks only: the highest ever asked, of anyone, had every other ask of a list we missed
    // wait), and again of it after GAP_WAIT_MS without the list.
    const now = Date.now();
    const asked = r.askedVersions.some((a) =>
      a.conn === conn && a.version >= m.version && now - a.at < GAP_WAIT_MS
    );
    if (asked || !this.#sendState(r, conn)) return;
    r.askedVersions = r.askedVersions.filter((a) => a.conn !== conn || a.version > m.version);
    r.askedVersions.push({ conn, version: m.version, at: now });
    if (r.askedVersions.length > MAX_ASKED_VERSIONS) r.askedVersions.shift();
  }

  // The held messages whose list is here now, taken as if they came now (in the order they came).
  #takeProvisional(r: Room): void {
    const ready = r.provisional.filter((p) => p.m.version <= r.list.version);
    if (ready.length === 0) return;
    r.provisional = r.provisional.filter((p) => p.m.version > r.list.version);
    r.provisionalChars = r.provisional.reduce((n, p) => n + p.m.text.length, 0);
    r.askedVersions = r.askedVersions.filter((a) => a.version > r.list.version);
    for (const { src, m, to, fill, mailboxId } of ready) {
      // The lines it records are handed to the host with its item: the disk's copy of it goes
      // once they are synced.
      const outer = this.#recorded;
      const recorded: RoomHistoryRecord[] = [];
      if (mailboxId) this.#recorded = recorded;
      try {
        if (this.#rooms.get(r.list.roomId) === r) this.#onMessage(src, m, to, fill, mailboxId);
      } catch (e) {
        if (src.conn) this.#refuse(src.conn, e);
        else this.#warn(`Refused a room message from "${src.name}" through the mailbox`, e);
      } finally {
        if (mailboxId) {
          this.#recorded = outer;
          outer?.push(...recorded);
          // Held again for a gap in its author's messages: the host hears of it when that ends.
          if (!this.holds(mailboxId)) this.#host.mailboxHeldGone?.(mailboxId, recorded);
        }
      }
    }
  }

  #onState(conn: PeerConnection, f: Extract<RoomFrame, { op: "state" }>): void {
    const r = this.#rooms.get(f.roomId);
    if (!r) return this.#notIn(conn, f.roomId);
    if (!this.#member(r, conn.name) || !this.#listed(r, conn)) return;
    // The first state of each room on a connection (its hello sends one per room we share) is not
    // counted against the flood budget: a member sharing more than 20 rooms with us had the
    // states of the others dropped for good. Bounded by the rooms we share.
    let hello = this.#hellos.get(conn);
    if (!hello) this.#hellos.set(conn, hello = new Set());
    const first = !hello.has(r.list.roomId);
    hello.add(r.list.roomId);
    if (!first && !this.#allow(conn)) return;
    // Lists first: messages are passed on only between members who hold the same list.
    if (f.version < r.list.version) {
      return void conn.sendRoom({ op: "list", list: r.list }, { answer: true });
    }
    // It holds our list or a newer one (which has us, or it would not send us its state).
    this.#askBelowFloor(r, conn);
    if (f.version > r.list.version) return void this.#sendState(r, conn, true);
    const member = r.list.members.find((x) => x.name === conn.name)!;
    for (const m of r.buffer.values()) {
      if (m.author === conn.name || m.version < member.since) continue;
      if (!this.#member(r, m.author)) continue;
      if (m.seq > (f.seen[m.author] ?? 0)) conn.sendRoom({ op: "msg", m, fill: true });
    }
  }

  // A `state` or `list` of room `roomId`, which we are not in, from `conn`. From its creator,
  // a state (and a list that has us: `member`) counts us as a member. A room we left (kept in
  // #left) is told again with a `leave`: the creator was away when we left, or the leave was
  // lost. Else it took our join, and the list that answered it was lost (the connection ended,
  // or we restarted). A decline not told yet is told now (the creator removes us, as one who
  // leaves), and so is one told whose leave was lost; a join kept, not answered, is sent again
  // (the creator answers with its list), and a waiting invitation's clock starts again.
  // Keyed by the creator's name and a room id bound to it: a member cannot stand for the creator,
  // and nothing but our own decline or join is sent, to the creator alone.
  #notIn(conn: PeerConnection, roomId: string, member = true): void {
    const key = inviteKey(conn.name, roomId);
    // A room we left: the creator still counts us in (away when we left, or the leave was lost).
    const left = this.#left.get(key);
    if (left) {
      if (!member || this.#host.peer(conn.name) !== conn || !this.#allow(conn)) return;
      if (!conn.sendRoom({ op: "leave", roomId })) return;
      const first = !left.told;
      left.told = true;
      left.at = Date.now(); // kept while the creator counts us in
      if (first) this.#saveInvitationsOrWarn();
      else this.#invitationsDirty = true;
      return;
    }
    if (this.#declinesUntold.has(key)) return this.#tellDecline(conn, key);
    // Told, but the leave was lost with the connection (sent is not received): told again.
    if (this.#declinedHere.has(key)) {
      if (member && this.#allow(conn)) conn.sendRoom({ op: "leave", roomId });
      return;
    }
    const invite = this.#invites.get(key);
    if (!invite || !member || this.#host.peer(conn.name) !== conn) return;
    // The creator counts us in: as good as an offer of the invitation, which it will not send
    // again (its 30 days count from now).
    invite.at = Date.now();
    this.#invitationsDirty = true;
    // Our join's consent is kept JOIN_KEEP_MS from when it went, not refreshed by her state: a
    // creator cannot pull us in whenever she likes. Sent again once per connection, and not
    // "under way" then: a creator that never answers cannot keep Decline refused with states.
    if (!this.#joinKept(invite) || invite.joining === conn || invite.resentOn === conn) return;
    if (!this.#allow(conn)) return;
    invite.resentOn = conn;
    conn.sendRoom({ op: "join", roomId: invite.roomId });
  }

  // Whether our join of `invite` is still our consent (JOIN_KEEP_MS from when it went); one
  // older is forgotten (the invitation waits to be joined again or declined).
  #joinKept(invite: RoomInvite): boolean {
    if (invite.joined && Date.now() - (invite.joinedAt ?? invite.at) > JOIN_KEEP_MS) {
      invite.joined = undefined;
      invite.joinedAt = undefined;
      this.#invitationsDirty = true;
    }
    return invite.joined === true;
  }

  // Tells the creator on `conn` of the decline `key` (not told yet) with a `leave`; forgotten
  // as not told once sent.
  #tellDecline(conn: PeerConnection, key: string): void {
    const declined = this.#declinesUntold.get(key);
    if (!declined || !conn.sendRoom({ op: "leave", roomId: declined.roomId })) return;
    this.#declinesUntold.delete(key);
    this.#saveInvitationsOrWarn();
  }

  #onWant(conn: PeerConnection, f: Extract<RoomFrame, { op: "want" }>): void {
    const r = this.#rooms.get(f.roomId);
    if (!r || !this.#member(r, conn.name) || !this.#listed(r, conn)) return;
    if (!this.#firstWant(r, conn, f.author) && !this.#allow(conn)) return;
    const member = r.list.members.find((x) => x.name === conn.name)!;
    for (const seq of f.seqs) {
      const m = r.buffer.get(`${f.author}.${seq}`);
      if (m && m.version >= member.since) conn.sendRoom({ op: "msg", m, fill: true });
    }
  }

  // --- order and gaps

  // Shows an author's held messages that are next in sequence; asks for a gap, or reports it.
  #drain(r: Room, author: string): void {
    const held = r.held.get(author);
    if (!held) return;
    let next = r.next[author];
    const since = r.list.members.find((x) => x.name === author)?.since ?? 0;
    while (held.has(next)) {
      this.#heldGone(r, author, next, this.#show(r, unhold(r, author, next)!, since));
      next++;
    }
    r.next[author] = next;
    this.#save(r);
    const timer = r.gaps.get(author);
    if (held.size === 0) {
      clearTimeout(timer);
      r.gaps.delete(author);
      return;
    }
    if (timer !== undefined) return;
    const first = Math.min(...held.keys());
    const missing = range(next, Math.min(first, next + MAX_WANT));
    for (const c of this.#connectedMembers(r, [this.#host.self])) {
      c.sendRoom({ op: "want", roomId: r.list.roomId, author, seqs: missing });
    }
    r.gaps.set(
      author,
      setTimeout(() => {
        r.gaps.delete(author);
        const h = r.held.get(author);
        if (!h?.size || this.#rooms.get(r.list.roomId) !== r) return;
        const lowest = Math.min(...h.keys());
        const from = r.next[author];
        if (lowest > from) {
          // Counted, and listed up to a bound: a member may sign its next message as number
          // 2^53 - 1, and an array of every number skipped took the client's memory.
          this.#host.emit({
            type: "room_gap",
            room: r.list.room,
            from: author,
            missing: range(from, Math.min(lowest, from + MAX_GAP_LISTED)),
            count: lowest - from,
          });
          r.next[author] = lowest;
        }
        this.#drain(r, author);
      }, GAP_WAIT_MS),
    );
  }

  #show(r: Room, m: SignedMessage, since: number, late = false): RoomHistoryRecord {
    const id = roomMessageId(r.list.roomId, m.author, since, m.seq);
    const record = {
      id,
      room: r.list.room,
      roomId: r.list.roomId,
      from: m.author,
      text: m.text,
      ...(late ? { late } : {}),
    };
    const ref = this.#host.history.roomMessage(record);
    const recorded = { ...record, ...(ref === undefined ? {} : { ref }) };
    this.#recorded?.push(recorded);
    this.#host.emit({
      type: "room_message",
      room: r.list.room,
      from: m.author,
      text: m.text,
      id,
      ...(ref === undefined ? {} : { ref }),
      ...(late ? { late } : {}),
    });
    return recorded;
  }

  // An author we joined after (`next` unknown), whose messages are held: the first of our
  // membership we get is not where their messages of our membership start (a member may pass
  // on a later one first, or reach us before the author's own copies of the earlier ones do).
  // The numbers below the lowest held are asked for (members answer with those of our
  // membership only), and the author is taken up GAP_WAIT_MS after their first message came,
  // from the lowest held then; at once from their message 1.
  #takeUp(r: Room, author: string): void {
    const held = r.held.get(author);
    if (!held?.size) return;
    const lowest = Math.min(...held.keys());
    if (lowest === 1) {
      clearTimeout(r.gaps.get(author));
      r.gaps.delete(author);
      r.next[author] = 1;
      return this.#drain(r, author);
    }
    if (r.gaps.has(author)) return;
    const seqs = range(Math.max(1, lowest - MAX_WANT), lowest);
    for (const c of this.#connectedMembers(r, [this.#host.self])) {
      if (c.sendRoom({ op: "want", roomId: r.list.roomId, author, seqs })) {
        this.#askedOn(c).set(this.#belowKey(r, author), { lowest: seqs[0], top: lowest });
      }
    }
    r.gaps.set(
      author,
      setTimeout(() => {
        r.gaps.delete(author);
        const h = r.held.get(author);
        if (!h?.size || this.#rooms.get(r.list.roomId) !== r || author in r.next) return;
        const from = Math.min(...h.keys());
        r.next[author] = from;
        if (from > 1) r.floor.set(author, from);
        this.#drain(r, author);
        this.#save(r);
        if (from > 1) this.#askAllBelowFloor(r, author);
      }, GAP_WAIT_MS),
    );
  }

  // A message of our membership below where we took its author up, not shown yet, come after we
  // did: shown now (out of order: later ones were shown). The floor comes down over the numbers
  // shown right below it; the others shown are remembered (fills come in any order, the lowest
  // first from a member's buffer), and those missing between them and the floor are reported
  // GAP_WAIT_MS after the first shown apart, unless they came meanwhile. One reported and come
  // later still is shown too.
  #showLate(r: Room, m: SignedMessage, floor: number): void {
    const author = m.author;
    const since = r.list.members.find((x) => x.name === author)?.since ?? 0;
    // Marked (not a warning): later messages of its author were shown before it.
    this.#show(r, m, since, true);
    const shown = r.lateShown.get(author) ?? [];
    const runs = shown.length;
    addRange(shown, m.seq, m.seq);
    let f = floor;
    const last = shown.at(-1);
    if (last && last[1] === f - 1) [f] = shown.pop()!;
    if (f > 1) r.floor.set(author, f);
    else r.floor.delete(author);
    if (shown.length) r.lateShown.set(author, shown);
    else r.lateShown.delete(author);
    if (f > 1) this.#askAllBelowFloor(r, author);
    if (shown.length === MAX_LATE_SHOWN && runs < MAX_LATE_SHOWN) {
      this.#host.emit({
        type: "warning",
        message: `Messages of "${author}" in ${r.list.room} came late in ${MAX_LATE_SHOWN} runs ` +
          `apart from the others: more that come apart so are not shown`,
      });
    }
    if (shown.length && !r.lateTimers.has(author)) {
      r.lateTimers.set(author, setTimeout(() => this.#reportLate(r, author), GAP_WAIT_MS));
    }
    this.#save(r);
  }

  // Reports the numbers missing between the lowest of `author`'s shown late and the floor (those
  // not reported before).
  #reportLate(r: Room, author: string): void {
    r.lateTimers.delete(author);
    const floor = r.floor.get(author);
    const shown = r.lateShown.get(author);
    if (this.#rooms.get(r.list.roomId) !== r || floor === undefined || !shown?.length) return;
    this.#askAllBelowFloor(r, author, true);
    const lowest = shown[0][0];
    const upTo = Math.min(floor, r.lateReported.get(author) ?? floor);
    r.lateReported.set(author, Math.min(lowest, upTo));
    this.#save(r); // kept: a restart does not report them again
    // The numbers between the ranges (and above the last), below upTo.
    let count = 0;
    const missing: number[] = [];
    for (let i = 0; i < shown.length; i++) {
      const from = shown[i][1] + 1;
      const to = Math.min(upTo, i + 1 < shown.length ? shown[i + 1][0] : upTo);
      if (to <= from) continue;
      count += to - from;
      for (let n = from; n < to && missing.length < MAX_GAP_LISTED; n++) missing.push(n);
    }
    this.#host.emit({ type: "room_gap", room: r.list.room, from: author, missing, count });
  }

  // The highest held message of `author` is let go; out of the buffer too, so that it is taken
  // when it comes again.
  #dropHighest(r: Room, author: string): void {
    const held = r.held.get(author);
    if (!held?.size) return;
    const highest = Math.max(...held.keys());
    unhold(r, author, highest);
    this.#heldGone(r, author, highest);
    const dropped = r.buffer.get(`${author}.${highest}`);
    if (dropped) {
      r.buffer.delete(`${author}.${highest}`);
      r.bufferChars -= dropped.text.length;
    }
  }

  // Makes room for `m` to wait within MAX_HELD_CHARS: the author who holds the most characters
  // (`m` counted) lets its highest go, until it fits. False when that would be `m` itself.
  // The authors' counts are kept as messages come and go: an attacker past the bound would
  // otherwise have each new message recount every held text (50 authors × 256).
  #makeRoomToHold(r: Room, m: SignedMessage): boolean {
    while (r.heldChars + m.text.length > MAX_HELD_CHARS) {
      let most = m.author;
      let mostChars = (r.heldCharsBy.get(m.author) ?? 0) + m.text.length;
      for (const [author, chars] of r.heldCharsBy) {
        if (chars > mostChars) [most, mostChars] = [author, chars];
      }
      if (most === m.author) {
        const theirs = r.held.get(m.author);
        if (!theirs?.size || m.seq > Math.max(...theirs.keys())) return false;
      }
      this.#dropHighest(r, most);
    }
    return true;
  }

  // --- membership

  // The creator's change: the new list, signed, applied here and sent to every member (and to
  // the one removed, so it knows).
  #publish(r: Room, members: RoomMember[], change: MemberList["change"]): void {
    const list = signList({
      roomId: r.list.roomId,
      room: r.list.room,
      creator: r.list.creator,
      version: r.list.version + 1,
      members,
      change,
    }, this.#key());
    // To each name of the old list or the new one, on a connection with a key one of them gives
    // it (the one removed, the one who joined): not to a second certificate the CA made for it.
    const keys = new Map<string, Set<string>>();
    for (const m of [...r.list.members, ...members]) {
      if (m.name === this.#host.self) continue;
      keys.set(m.name, (keys.get(m.name) ?? new Set()).add(m.key));
    }
    // Sent once durable here (back from a power cut, we would sign another list as this
    // version, which members refuse), and before our state frames, which then meet it.
    this.#apply(r, list, () => {
      for (const [name, listed] of keys) {
        const conn = this.#host.peer(name);
        if (conn && listed.has(this.#keyOf(conn))) conn.sendRoom({ op: "list", list });
      }
    });
  }

  // A newer list, checked: who joined and who went, and (when it is us who went) the end.
  // Durable here before anyone is told (`announce`, then events and state frames).
  #apply(r: Room, list: SignedList, announce?: () => void): void {
    const self = this.#host.self;
    const before = new Map(r.list.members.map((m) => [m.name, m]));
    const after = new Map(list.members.map((m) => [m.name, m]));
    const room = list.room;
    const changeOf = (name: string, fallback: "joined" | "removed") =>
      list.change?.name === name ? list.change.change : fallback;
    if (!after.has(self)) {
      try {
        this.#forget(r);
      } catch (e) {
        this.#warn(`Cannot forget ${room}`, e);
      }
      announce?.();
      this.#host.emit({ type: "room_member", room, name: self, change: changeOf(self, "removed") });
      this.#host.gone?.(room, [...before.keys()].filter((n) => n !== self));
      this.#release([...before.keys()]);
      return;
    }
    r.list = list;
    const events: CoreEvent[] = [];
    for (const [name, old] of before) {
      const now = after.get(name);
      if (now && now.since === old.since && now.key === old.key) continue;
      // Gone (or gone and added again): nothing more is taken under the old membership.
      delete r.next[name];
      r.floor.delete(name);
      r.lateShown.delete(name);
      r.lateReported.delete(name);
      clearTimeout(r.lateTimers.get(name));
      r.lateTimers.delete(name);
      r.heldChars -= r.heldCharsBy.get(name) ?? 0;
      for (const seq of r.held.get(name)?.keys() ?? []) this.#heldGone(r, name, seq);
      r.held.delete(name);
      r.heldCharsBy.delete(name);
      for (const [k, m] of r.buffer) {
        if (m.author !== name) continue;
        r.buffer.delete(k);
        r.bufferChars -= m.text.length;
      }
      r.keys.delete(name);
      r.fingerprints.delete(name);
      r.former.delete(name); // to the end: the oldest go first
      r.former.add(name);
      if (r.former.size > MAX_FORMER) r.former.delete(r.former.values().next().value!);
      clearTimeout(r.gaps.get(name));
      r.gaps.delete(name);
      if (!now) events.push({ type: "room_member", room, name, change: changeOf(name, "removed") });
    }
    let renumber = false;
    for (const [name, m] of after) {
      const old = before.get(name);
      if (old && old.since === m.since && old.key === m.key) continue;
      r.next[name] = 1; // we were there before they came: from their first message
      // Us, added back (removed and added again while away): our messages are numbered from 1
      // again, as the others take us up (the id's SINCE tells the two memberships apart).
      if (name === self) [r.seq, renumber] = [0, true];
      events.push({ type: "room_member", room, name, change: "joined" });
    }
    try {
      this.#saveDurable(r);
      // Our number, made durable after the list that renews it (a power cut in between leaves
      // the old, higher one: a gap at the others, never a number used twice), before any send.
      if (renumber) {
        r.seqSlot = undefined; // both slots: the file holds the larger of the two
        this.#saveSeq(r);
      }
    } catch (e) {
      this.#warn("Cannot save the rooms", e);
    }
    announce?.();
    for (const e of events) this.#host.emit(e);
    this.#host.gone?.(room, [...before.keys()].filter((n) => !after.has(n)));
    this.#checkKeys(list, r);
    // Before our state: what they would fill of those is then a copy here.
    this.#takeProvisional(r);
    for (const c of this.#connectedMembers(r, [self])) this.#sendState(r, c);
    this.#connectMembers(r);
    this.#release([...before.keys()].filter((n) => !after.has(n)));
  }

  // Those of `names` who share no room with us any more: their room-only connections may go.
  #release(names: string[]): void {
    const gone = names.filter((n) => n !== this.#host.self && !this.#coMember(n));
    for (const n of gone) this.#unreachable.delete(n);
    if (gone.length) this.#host.released?.(gone);
  }

  // A member whose key in the list is not the key pinned for them is not heard in the room.
  #checkKeys(list: SignedList, r: Room): void {
    for (const m of list.members) {
      if (m.name === this.#host.self) continue;
      const pinned = this.#host.pinned(m.name);
      if (pinned && pinned !== keyFingerprintOf(m.key)) {
        if (!r.untrusted.has(m.name)) {
          const keyFingerprint = keyFingerprintOf(m.key);
          const room = list.room;
          this.#host.emit({ type: "key_changed", peer: m.name, keyFingerprint, via: "room", room });
        }
        r.untrusted.add(m.name);
        this.#host.emit({
          type: "warning",
          message: `The member list of ${list.room} gives "${m.name}" another key than the one ` +
            `you pinned: nothing from "${m.name}" is shown in ${list.room}`,
        });
      } else r.untrusted.delete(m.name);
    }
  }

  // Synchronous, so that nothing tells of it before it is durable.
  #forget(r: Room): void {
    this.#rooms.delete(r.list.roomId);
    for (const t of [...r.gaps.values(), ...r.lateTimers.values()]) clearTimeout(t);
    this.#dirty.delete(r.list.roomId);
    for (const file of [this.#file(r.list.roomId), this.#seqFile(r.list.roomId)]) {
      try {
        Deno.removeSync(file);
      } catch { /* never written */ }
    }
    this.#durable.delete(r.list.roomId);
    // A room we left that came back after a power cut: we would take ourselves for a member.
    try {
      syncDirSync(this.#host.dir);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  // --- connections among members

  #connectMembers(r: Room): void {
    if (this.#stopped) return;
    const self = this.#host.self;
    const waiting = new Set(this.#host.invitations());
    for (const m of r.list.members) {
      if (m.name === self || this.#host.peer(m.name)) continue;
      if (self < m.name) this.#dial(m.name);
      else if (waiting.has(m.name)) this.invited(m.name);
    }
  }

  // Invites a co-member through the CA; again, backing off, while they are not connected.
  #dial(name: string): void {
    if (this.#dialing.has(name)) return;
    const state: { timer?: ReturnType<typeof setTimeout>; delay: number } = {
      delay: DIAL_FIRST_MS,
    };
    this.#dialing.set(name, state);
    let tries = 0;
    const attempt = () => {
      if (this.#stopped || this.#host.peer(name) || !this.#wanted(name)) {
        this.#dialing.delete(name);
        return;
      }
      // Only to tell a leave: a few tries, then its creator is told when next connected.
      if (!this.#coMember(name) && ++tries > LEFT_DIAL_TRIES) {
        this.#dialing.delete(name);
        this.#host.emit({
          type: "warning",
          message: `"${name}" did not connect after ${LEFT_DIAL_TRIES} invitations: stopped ` +
            `inviting "${name}" to say you left; "${name}" is told when you are next connected`,
        });
        return;
      }
      this.#host.invite(name, true).catch(() => {/* the CA away: tried again below */});
      state.timer = setTimeout(attempt, state.delay);
      state.delay = Math.min(state.delay * 2, DIAL_MAX_MS);
    };
    attempt();
  }

  #coMember(name: string): boolean {
    for (const r of this.#rooms.values()) if (this.#member(r, name)) return true;
    return false;
  }

  // Whether we connect to `name` of ourselves (its automatic invitation accepted at once, or ours
  // sent): a co-member, or the creator of a room we left and have not told yet (a connection
  // brings its `state` of the room, which our `leave` answers; the creator then removes us and
  // closes the connection, made for rooms only).
  #wanted(name: string): boolean {
    if (this.#coMember(name)) return true;
    for (const l of this.#left.values()) if (l.from === name && !l.told) return true;
    return false;
  }

  // --- helpers

  #newRoom(
    list: SignedList,
    creatorKey: string,
    kept: {
      seq?: number;
      next?: Record<string, number>;
      floor?: Map<string, number>;
      lateShown?: Map<string, Ranges>;
      lateReported?: Map<string, number>;
      invited?: Record<string, true>;
    } = {},
  ): Room {
    return {
      list,
      creatorKey,
      seq: kept.seq ?? 0,
      next: kept.next ?? Object.create(null),
      floor: kept.floor ?? new Map(),
      lateShown: kept.lateShown ?? new Map(),
      lateReported: kept.lateReported ?? new Map(),
      lateTimers: new Map(),
      invited: kept.invited ?? Object.create(null),
      keys: new Map(),
      fingerprints: new Map(),
      held: new Map(),
      heldChars: 0,
      heldCharsBy: new Map(),
      buffer: new Map(),
      bufferChars: 0,
      provisional: [],
      provisionalChars: 0,
      heldMailbox: new Map(),
      askedVersions: [],
      gaps: new Map(),
      untrusted: new Set(),
      former: new Set(),
    };
  }

  /**
   * Undefined while every connected member of `room` takes more at once; else a promise that
   * resolves once they do ({@linkcode PeerConnection.whenWritable}).
   */
  whenWritable(room: string): Promise<void> | undefined {
    const r = this.#byName(room);
    if (!r) return undefined;
    const waits = this.#connectedMembers(r, [this.#host.self]).map((c) => c.whenWritable())
      .filter((w) => w !== undefined);
    return waits.length ? Promise.all(waits).then(() => {}) : undefined;
  }

  #joined(room: string): Room {
    checkRoomName(room);
    const r = this.#byName(room);
    if (!r) {
      throw new E2eError("ERR_NOT_FOUND", `You are not in ${room}`, {
        hint: this.#invitesTo(room).length ? `/room join ${room}` : `/room create ${room}`,
      });
    }
    return r;
  }

  // The key of the oldest invitation of the creator holding the most (the first to reach that
  // count on ties), when it holds at least `atLeast`.
  #oldestOfMost(atLeast: number): string | undefined {
    // Plain waiting invitations only: one we joined is never given up, nor counted.
    const count = new Map<string, number>();
    for (const i of this.#invites.values()) {
      if (!i.joined) count.set(i.from, (count.get(i.from) ?? 0) + 1);
    }
    let from: string | undefined;
    for (const [name, n] of count) if (n >= atLeast && n > (count.get(from!) ?? 0)) from = name;
    if (from === undefined) return undefined;
    for (const [key, i] of this.#invites) if (i.from === from && !i.joined) return key;
    return undefined;
  }

  // The invitations that wait to rooms called `room`, oldest first.
  #invitesTo(room: string): RoomInvite[] {
    return [...this.#invites.values()].filter((i) => i.room === room);
  }

  // In a room called `room` now: the invitations to others of that name cannot be taken up.
  // Whether any was dropped (the caller writes HOME/room-invitations.json).
  #dropInvites(room: string): boolean {
    let dropped = false;
    for (const [k, i] of this.#invites) {
      if (i.room !== room) continue;
      clearTimeout(i.joinTimer);
      this.#invites.delete(k);
      dropped = true;
    }
    return dropped;
  }

  #byName(room: string): Room | undefined {
    for (const r of this.#rooms.values()) if (r.list.room === room) return r;
    return undefined;
  }

  #requireCreator(r: Room, what: string): void {
    if (r.list.creator !== this.#host.self) {
      throw new E2eError(
        "ERR_FORBIDDEN",
        `Only the creator of ${r.list.room}, "${r.list.creator}", ${what}`,
      );
    }
  }

  #member(r: Room, name: string): boolean {
    return r.list.members.some((m) => m.name === name);
  }

  #memberKey(r: Room, m: RoomMember): KeyObject {
    let key = r.keys.get(m.name);
    if (!key) r.keys.set(m.name, key = publicKeyOf(m.key));
    return key;
  }

  // Whether a key is pinned for `m` now, and it is not the one the list gives `m`: pins are made
  // while we run (a first 1:1 connection, the mailbox, /trust), not only when a list arrives.
  #unpinned(r: Room, m: RoomMember): boolean {
    const pinned = this.#host.pinned(m.name);
    if (pinned === undefined || m.name === this.#host.self) return false;
    let fingerprint = r.fingerprints.get(m.name);
    if (fingerprint === undefined) {
      r.fingerprints.set(m.name, fingerprint = keyFingerprintOf(m.key));
    }
    return pinned !== fingerprint;
  }

  // Whether the key pinned for `m` is the key the list gives `m`.
  #pinnedAsListed(r: Room, m: RoomMember): boolean {
    const pinned = this.#host.pinned(m.name);
    if (pinned === undefined) return false;
    let fingerprint = r.fingerprints.get(m.name);
    if (fingerprint === undefined) {
      r.fingerprints.set(m.name, fingerprint = keyFingerprintOf(m.key));
    }
    return pinned === fingerprint;
  }

  // Open connections, taking rooms, to members other than `except`: each with the key the
  // creator's list gives that member.
  #connectedMembers(r: Room, except: string[]): PeerConnection[] {
    const out: PeerConnection[] = [];
    for (const m of r.list.members) {
      if (except.includes(m.name)) continue;
      const c = this.#host.peer(m.name);
      if (c?.rooms && this.#listed(r, c, m)) out.push(c);
    }
    return out;
  }

  // Whether `conn`'s certificate carries the key the creator's signed list gives its member
  // (`m`, found by name when not given). A CA may certify a name twice, with another key: the
  // room's text goes only to the key its creator listed, and nothing of the room is taken from
  // another. Said once per connection and room.
  #listed(r: Room, conn: PeerConnection, m?: RoomMember): boolean {
    const member = m ?? r.list.members.find((x) => x.name === conn.name);
    if (!member) return false;
    if (this.#keyOf(conn) === member.key) return true;
    let told = this.#otherKey.get(conn);
    if (!told) this.#otherKey.set(conn, told = new Set());
    if (!told.has(r.list.roomId)) {
      told.add(r.list.roomId);
      this.#host.emit({
        type: "warning",
        message: `The connection to "${conn.name}" has another key than the member list of ` +
          `${r.list.room} gives "${conn.name}": nothing of ${r.list.room} goes to it or is ` +
          `taken from it (/room members ${r.list.room} shows the listed key's fingerprint)`,
      });
    }
    return false;
  }

  // The key of `conn`'s certificate (SPKI, base64), worked out once per connection.
  #keyOf(conn: PeerConnection): string {
    let key = this.#connKeys.get(conn);
    if (key === undefined) this.#connKeys.set(conn, key = spkiOf(conn.certificate.x509.publicKey));
    return key;
  }

  // Whether it went out.
  #sendState(r: Room, conn: PeerConnection, answer = false): boolean {
    const seen: Record<string, number> = {};
    // The last shown, a take-up floor or not: what is below a floor is asked with `want`
    // (#askBelowFloor). Giving 0 for it had every member resend all it kept of the author at
    // each state, for good when the author wrote before we joined (the floor never comes down).
    for (const [author, next] of Object.entries(r.next)) seen[author] = next - 1;
    seen[this.#host.self] = r.seq;
    return conn.sendRoom({ op: "state", roomId: r.list.roomId, version: r.list.version, seen }, {
      answer,
    });
  }

  // What an author wrote since we joined, below where we took them up, may still come: the 64
  // numbers under the floor (less those shown late) are asked of `conn`, once; the next 64 (below
  // the lowest asked) once fills of ours brought the floor down to the lowest asked, or those shown
  // late reach it, or (`timed`: GAP_WAIT_MS after fills began, #reportLate) some of the last 64
  // came: one number no member has no longer stops those below it being asked. Members answer only
  // with what is of our membership; what we have is dropped as a copy; what is missing between
  // those shown late and the floor is reported (#reportLate). Bounded: one `want` per connection
  // and author, and one more per window of 64 of which something was shown.
  #askBelowFloor(r: Room, conn: PeerConnection, only?: string, timed = false): void {
    for (const [author, floor] of r.floor) {
      if (only !== undefined && author !== only) continue;
      const asked = this.#askedOn(conn);
      const key = this.#belowKey(r, author);
      const last = asked.get(key);
      const shown = r.lateShown.get(author);
      const shownLowest = shown?.[0]?.[0] ?? floor;
      let top = floor;
      if (last !== undefined && floor > last.lowest) {
        if (last.lowest <= 1) continue;
        const reached = shownLowest <= last.lowest;
        const some = timed && shownLowest < last.top;
        if (!reached && !some) continue;
        top = last.lowest;
      }
      const seqs = range(Math.max(1, top - MAX_WANT), top).filter((n) => !inRanges(shown, n));
      if (seqs.length === 0) continue;
      if (!conn.sendRoom({ op: "want", roomId: r.list.roomId, author, seqs })) continue;
      asked.set(key, { lowest: seqs[0], top });
    }
  }

  #askAllBelowFloor(r: Room, author: string, timed = false): void {
    for (const c of this.#connectedMembers(r, [this.#host.self])) {
      this.#askBelowFloor(r, c, author, timed);
    }
  }

  #askedOn(conn: PeerConnection): Map<string, AskedBelow> {
    let asked = this.#askedBelow.get(conn);
    if (!asked) this.#askedBelow.set(conn, asked = new Map());
    return asked;
  }

  #belowKey(r: Room, author: string): string {
    const since = r.list.members.find((x) => x.name === author)?.since ?? 0;
    return `${r.list.roomId} ${author}@${since}`;
  }

  #remember(r: Room, m: SignedMessage): void {
    const key = `${m.author}.${m.seq}`;
    if (r.buffer.has(key)) return;
    r.buffer.set(key, m);
    r.bufferChars += m.text.length;
    while (r.buffer.size > ROOM_BUFFER || r.bufferChars > ROOM_BUFFER_CHARS) {
      const [oldest, old] = r.buffer.entries().next().value!;
      r.buffer.delete(oldest);
      r.bufferChars -= old.text.length;
    }
  }

  #seenOn(conn: PeerConnection): Set<string> {
    let seen = this.#seen.get(conn);
    if (!seen) this.#seen.set(conn, seen = new Set());
    return seen;
  }

  // Whether this is `conn`'s first `want` of a listed author in `r`: taken outside the rate
  // (#allow). A newcomer asks below every author's take-up floor at once at a hello, one `want`
  // each; past the rate the rest were dropped while she counted them asked. Bounded: one per
  // author and room shared, per connection.
  #firstWant(r: Room, conn: PeerConnection, author: string): boolean {
    if (!r.list.members.some((x) => x.name === author)) return false;
    let firsts = this.#firstWants.get(conn);
    if (!firsts) this.#firstWants.set(conn, firsts = new Set());
    const key = `${r.list.roomId} ${author}`;
    if (firsts.has(key)) return false;
    firsts.add(key);
    return true;
  }

  // Whether a connection's `want` or `state` is taken now (a bounded rate per connection).
  #allow(conn: PeerConnection): boolean {
    const second = Math.floor(Date.now() / 1000);
    const r = this.#requests.get(conn);
    if (!r || r.second !== second) {
      this.#requests.set(conn, { second, count: 1 });
      return true;
    }
    return ++r.count <= REQUESTS_PER_SECOND;
  }

  #key(): KeyObject {
    return this.#signing ??= createPrivateKey(this.#host.privateKey());
  }

  #ownKey(): string {
    return spkiOf(createPublicKey(this.#key()));
  }

  #refuse(conn: PeerConnection, e: unknown): void {
    const n = (this.#reports.get(conn) ?? 0) + 1;
    this.#reports.set(conn, n);
    if (n > MAX_REPORTS + 1) return;
    this.#host.emit({
      type: "warning",
      message: n > MAX_REPORTS
        ? `More room frames from "${conn.name}" were refused; not shown`
        : `${e instanceof Error ? e.message : e} (from "${conn.name}")`,
    });
  }

  #warn(what: string, e: unknown): void {
    this.#host.emit({ type: "warning", message: `${what}: ${e instanceof Error ? e.message : e}` });
  }

  // --- state on disk

  #file(roomId: string): string {
    return join(this.#host.dir, `${roomId}.json`);
  }

  #seqFile(roomId: string): string {
    return join(this.#host.dir, `${roomId}.seq`);
  }

  // Our sequence number, durable before the message leaves (synchronously: no await between it
  // and the send). A number that went back after a power cut would be used again for another
  // text: members who had the first would drop the second as a copy, the others would show it,
  // so members would silently hold different histories. So the number's bytes are fdatasynced,
  // and its name too (a folder fsync) when the file is new. Each write after the first of a run
  // overwrites one of two slots in place (one fdatasync, about 0.8 ms here, against 2 ms for a
  // temp file, its rename and a folder fsync): the slot the last write did not take, so a write
  // torn by a power cut spoils only that slot, and the other still holds the number made durable
  // before (whatever numbers a turn's burst skipped over: not the slot of SEQ's parity).
  #saveSeq(r: Room): void {
    const file = this.#seqFile(r.list.roomId);
    if (r.seqSlot !== undefined) {
      try {
        using f = Deno.openSync(file, { write: true });
        const slot = r.seqSlot === 0 ? 1 : 0;
        f.seekSync(slot * SEQ_SLOT, Deno.SeekMode.Start);
        writeAllSync(f, seqSlot(r.seq, this.#ownSince(r)));
        f.syncDataSync();
        r.seqSlot = slot;
        return;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e; // removed under us: written whole
      }
    }
    // Whole: a temp file with both slots, fsynced, renamed, and its folder fsynced.
    const one = seqSlot(r.seq, this.#ownSince(r));
    const bytes = new Uint8Array(SEQ_SLOT + one.length);
    bytes.set(one, 0);
    bytes.set(one, SEQ_SLOT);
    const tmp = `${file}.tmp`;
    const write = () => {
      using f = Deno.openSync(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
      writeAllSync(f, bytes);
      f.syncDataSync();
    };
    try {
      write();
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      Deno.mkdirSync(this.#host.dir, { recursive: true, mode: 0o700 });
      syncDirSync(dirname(this.#host.dir));
      write();
    }
    Deno.renameSync(tmp, file);
    syncDirSync(this.#host.dir);
    r.seqSlot = 0; // both hold it: the next write takes slot 1
  }

  // The version of the list that added us (the membership our sequence number counts for).
  #ownSince(r: Room): number {
    return r.list.members.find((x) => x.name === this.#host.self)?.since ?? 0;
  }

  // How far messages were shown: written a moment later (one write for a burst), not fsynced.
  #save(r: Room): void {
    this.#dirty.add(r.list.roomId);
    this.#saveTimer ??= setTimeout(() => this.#flush(), 20);
  }

  // Membership and invitations (and whatever else changed): durable before this returns. All
  // room files are written with synchronous calls, so that no event, frame or answer can tell of
  // a change in between, and no older write lands after a newer one.
  #saveDurable(r: Room): void {
    this.#dirty.delete(r.list.roomId);
    this.#write(r);
  }

  #saveDurableOrWarn(r: Room): void {
    try {
      this.#saveDurable(r);
    } catch (e) {
      this.#warn("Cannot save the rooms", e);
    }
  }

  #flush(): void {
    clearTimeout(this.#saveTimer);
    this.#saveTimer = undefined;
    const ids = [...this.#dirty];
    this.#dirty.clear();
    try {
      for (const id of ids) {
        const r = this.#rooms.get(id);
        if (r) this.#write(r);
      }
    } catch (e) {
      this.#warn("Cannot save the rooms", e);
    }
  }

  // Durable (bytes and name) when the list or the pending invitations are not those last
  // written durably: a list rolled back by a power cut would have us connect to, and send our
  // messages to, a member the creator removed, until another member passes the newer list on; a
  // room we joined would be lost, with the creator's key we pinned; an invitation we made would
  // be refused when taken up, one we withdrew taken up after all. Not otherwise: how far each
  // author was shown moves with every message, and our sequence number has its own file.
  #write(r: Room): void {
    const id = r.list.roomId;
    const membership = `${r.list.version} ${Object.keys(r.invited).sort().join(",")}`;
    const durable = this.#durable.get(id) !== membership;
    ensurePrivateDirSync(this.#host.dir, { durable: true });
    const data = {
      v: 1,
      list: r.list,
      creatorKey: r.creatorKey,
      seq: r.seq,
      next: r.next,
      // Kept so that a message withheld past the take-up is shown late after a restart too.
      ...(r.floor.size ? { floor: Object.fromEntries(r.floor) } : {}),
      ...(r.lateShown.size
        ? { lateShown: Object.fromEntries([...r.lateShown].map(([k, v]) => [k, v])) }
        : {}),
      ...(r.lateReported.size ? { lateReported: Object.fromEntries(r.lateReported) } : {}),
      invited: r.invited,
    };
    writeFileAtomicSync(this.#file(id), JSON.stringify(data) + "\n", {
      mode: 0o600,
      durable,
      syncDir: durable,
    });
    if (durable) this.#durable.set(id, membership);
  }

  // --- invitations on disk (HOME/room-invitations.json)

  // The invitations kept by the last run: waiting ones (without their lists: see join()), those
  // declined, those declined and not told yet. Bounded as in memory, expired ones dropped; an
  // entry that does not check out is skipped, a file that does not is skipped with a warning.
  #loadInvitations(): void {
    const file = this.#host.invitationsFile;
    if (file === undefined) return;
    let data: Record<string, unknown>;
    try {
      using f = Deno.openSync(file);
      const bytes = readUpToSync(f, MAX_INVITATIONS_FILE_BYTES + 1);
      if (bytes.length > MAX_INVITATIONS_FILE_BYTES) {
        throw new Error(`larger than ${MAX_INVITATIONS_FILE_BYTES} bytes`);
      }
      data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      if (typeof data !== "object" || data === null) throw new Error("not an object");
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      return this.#warn(`Skipped the room invitations file "${file}"`, e);
    }
    const now = Date.now();
    // `bound`: its room id must be bound to its creator (a room we left may be one of before).
    const entries = (value: unknown, max: number, bound = true) => {
      const out: Array<
        Declined & { version: number; told: boolean; joined: boolean; joinedAt?: number }
      > = [];
      for (const x of Array.isArray(value) ? value.slice(-max) : []) {
        const { room, roomId, from, at, version, told, joined, joinedAt } = (x ?? {}) as Record<
          string,
          unknown
        >;
        if (
          typeof room !== "string" || !isRoomName(room) || typeof from !== "string" ||
          !isValidName(from) || typeof roomId !== "string" ||
          !(bound ? isRoomIdOf(roomId, from) : /^[0-9a-f]{32}$/.test(roomId)) ||
          typeof at !== "number" || !Number.isFinite(at) || now - at > INVITATIONS_KEEP_MS
        ) continue;
        // A clock set back since: its age counts from now.
        out.push({
          room,
          roomId,
          from,
          at: Math.min(at, now),
          version: safeCount(version),
          told: told === true,
          joined: joined === true,
          // One kept by the version before (no joinedAt): its consent counts from its offer.
          ...(typeof joinedAt === "number" && Number.isFinite(joinedAt)
            ? { joinedAt: Math.min(joinedAt, now) }
            : {}),
        });
      }
      return out;
    };
    for (const { room, roomId, from, at, told } of entries(data.left, MAX_LEFT, false)) {
      // A room whose file is here (read, or skipped after an error) we did not leave: killed
      // between keeping the leave and forgetting the room, or in it again since.
      if (this.#roomFiles.has(roomId) || from === this.#host.self) continue;
      remember(this.#left, inviteKey(from, roomId), { room, roomId, from, at, told }, MAX_LEFT);
    }
    for (
      const [kept, into] of [[data.declined, this.#declinedHere], [
        data.untold,
        this.#declinesUntold,
      ]] as const
    ) {
      for (const { room, roomId, from, at } of entries(kept, MAX_DECLINED)) {
        remember(into, inviteKey(from, roomId), { room, roomId, from, at }, MAX_DECLINED);
      }
    }
    for (
      const { room, roomId, from, at, version, joined, joinedAt } of entries(
        data.waiting,
        MAX_ROOM_INVITES,
      )
    ) {
      // Joined before the restart: its join is sent again when the creator, which took it,
      // sends the room's state (#notIn), within JOIN_KEEP_MS of when it went.
      const i: RoomInvite = {
        room,
        roomId,
        from,
        at,
        version,
        ...(joined ? { joined, joinedAt: joinedAt ?? at } : {}),
      };
      const key = inviteKey(i.from, i.roomId);
      // One offered already (a connection came before the file was read) is newer.
      if (this.#invites.has(key)) continue;
      if (this.#declinedHere.has(key) || this.#declinesUntold.has(key)) continue;
      if (this.#rooms.has(i.roomId) || this.#byName(i.room) || i.version < 1) continue;
      // As #onInvite keeps them: one per creator and name, MAX_INVITES_PER_CREATOR per creator.
      const same = [...this.#invites].find(([, o]) => o.from === i.from && o.room === i.room);
      if (same && !this.#restored.includes(same[1])) continue;
      if (same) {
        this.#invites.delete(same[0]);
        this.#restored = this.#restored.filter((o) => o !== same[1]);
      }
      const theirs = [...this.#invites.values()].filter((o) => o.from === i.from).length;
      if (theirs >= MAX_INVITES_PER_CREATOR || this.#invites.size >= MAX_ROOM_INVITES) continue;
      this.#invites.set(key, i);
      this.#restored.push(i);
    }
  }

  // Writes HOME/room-invitations.json durably (the file and its name), dropping expired
  // declines; throws when it cannot.
  #saveInvitations(): void {
    this.#invitationsDirty = false;
    const file = this.#host.invitationsFile;
    if (file === undefined) return;
    const now = Date.now();
    const kept = (m: Map<string, Declined>) => {
      for (const [k, d] of m) if (now - d.at > INVITATIONS_KEEP_MS) m.delete(k);
      return [...m.values()].map(({ room, roomId, from, at }) => ({ room, roomId, from, at }));
    };
    const data = {
      v: 1,
      waiting: [...this.#invites.values()].map((
        { room, roomId, from, version, at, joined, joinedAt },
      ) => ({
        room,
        roomId,
        from,
        version,
        at,
        ...(joined ? { joined, joinedAt } : {}),
      })),
      declined: kept(this.#declinedHere),
      untold: kept(this.#declinesUntold),
      left: [...this.#left].flatMap(([k, { room, roomId, from, at, told }]) => {
        if (now - at <= INVITATIONS_KEEP_MS) return [{ room, roomId, from, at, told }];
        this.#left.delete(k);
        return [];
      }),
    };
    writeFileAtomicSync(file, JSON.stringify(data) + "\n", {
      mode: 0o600,
      durable: true,
      syncDir: true,
    });
  }

  #saveInvitationsOrWarn(): void {
    try {
      this.#saveInvitations();
    } catch (e) {
      this.#invitationsDirty = true;
      this.#warn("Cannot save the room invitations", e);
    }
  }
}

// `key` → `value` as the newest of `m`; its oldest goes past `max`.
function remember<T>(m: Map<string, T>, key: string, value: T, max: number): void {
  m.delete(key);
  m.set(key, value);
  if (m.size > max) m.delete(m.keys().next().value!);
}

function inviteKey(creator: string, roomId: string): string {
  return `${creator} ${roomId}`;
}

// "Two invitations to #team wait, from "ben" and "mallory"" (the creators sorted).
function twoInvitations(room: string, invites: RoomInvite[]): string {
  const names = invites.map((i) => `"${i.from}"`).sort();
  const from = names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names.at(-1)}` : names[0];
  return `${names.length === 2 ? "Two" : names.length} invitations to ${room} wait, from ${from}`;
}

// "/room join #team ben, or /room join #team mallory"
function choices(room: string, invites: RoomInvite[], action: "join" | "decline" = "join"): string {
  const commands = invites.map((i) => i.from).sort().map((n) => `/room ${action} ${room} ${n}`);
  return commands.length > 1
    ? `${commands.slice(0, -1).join(", ")}, or ${commands.at(-1)}`
    : commands[0];
}

// `m` held back until the messages before it come, counted in its room's and author's characters;
// how many of its author's wait now.
function hold(r: Room, m: SignedMessage): number {
  let held = r.held.get(m.author);
  if (!held) r.held.set(m.author, held = new Map());
  held.set(m.seq, m);
  r.heldChars += m.text.length;
  r.heldCharsBy.set(m.author, (r.heldCharsBy.get(m.author) ?? 0) + m.text.length);
  return held.size;
}

// The held message `seq` of `author`, no longer held (and no longer counted).
function unhold(r: Room, author: string, seq: number): SignedMessage | undefined {
  const held = r.held.get(author);
  const m = held?.get(seq);
  if (!held || !m) return undefined;
  held.delete(seq);
  r.heldChars -= m.text.length;
  const left = r.heldCharsBy.get(author)! - m.text.length;
  if (held.size) r.heldCharsBy.set(author, left);
  else r.heldCharsBy.delete(author);
  return m;
}

/** Numbers as sorted ranges `[LO, HI]`, disjoint and not adjacent. */
type Ranges = Array<[number, number]>;

// Whether `n` is in one of `rs`.
function inRanges(rs: Ranges | undefined, n: number): boolean {
  return rs?.some(([lo, hi]) => lo <= n && n <= hi) === true;
}

// Whether `n` is in or right beside one of `rs` (taking it starts no new range).
function extendsRange(rs: Ranges | undefined, n: number): boolean {
  return rs?.some(([lo, hi]) => lo - 1 <= n && n <= hi + 1) === true;
}

// Adds `lo`…`hi` to `rs`, merging the ranges it touches.
function addRange(rs: Ranges, lo: number, hi: number): void {
  let i = 0;
  while (i < rs.length && rs[i][1] < lo - 1) i++;
  let j = i;
  while (j < rs.length && rs[j][0] <= hi + 1) {
    lo = Math.min(lo, rs[j][0]);
    hi = Math.max(hi, rs[j][1]);
    j++;
  }
  rs.splice(i, j - i, [lo, hi]);
}

function refused(why: string): E2eError {
  return new E2eError("ERR_FORBIDDEN", `Refused ${why}`);
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}

// One slot of ROOMID.seq (see SEQ_SLOT). Its first line alone is what was written before (and
// what a client of before reads), so that going back a version never reuses a number.
function seqSlot(seq: number, since: number): Uint8Array {
  const digits = String(seq).padStart(20, "0");
  const check = createHash("sha256").update(digits).digest("hex").slice(0, 16);
  const of = String(since).padStart(20, "0");
  const tag = createHash("sha256").update(`${digits} ${of}`).digest("hex").slice(0, 16);
  return new TextEncoder().encode(`${digits} ${check}\n${of} ${tag}\n`);
}

// The number ROOMID.seq holds for our membership `since`: the larger of its two slots that check
// out and count for it (a slot of another membership is left out; one without the `since` line, as
// written before, or whose line a power cut tore, counts), or the plain number written before the
// slots; 0 when none does.
function readSeq(bytes: Uint8Array, since: number): number {
  const text = new TextDecoder().decode(bytes);
  if (/^\d{1,16}$/.test(text)) return safeCount(Number(text));
  let seq = 0;
  for (const at of [0, SEQ_SLOT]) {
    const slot = new TextDecoder().decode(bytes.subarray(at, at + 76));
    const m = /^(\d{20}) [0-9a-f]{16}\n/.exec(slot);
    if (!m) continue;
    const whole = new TextDecoder().decode(seqSlot(Number(m[1]), since));
    if (whole.slice(0, 38) !== m[0]) continue;
    const tag = /^(\d{20}) [0-9a-f]{16}\n$/.exec(slot.slice(38));
    const of = tag ? new TextDecoder().decode(seqSlot(Number(m[1]), Number(tag[1]))) : undefined;
    if (of === slot && Number(tag![1]) !== since) continue; // another membership's
    seq = Math.max(seq, safeCount(Number(m[1])));
  }
  return seq;
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let n = 0; n < bytes.length;) n += file.writeSync(bytes.subarray(n));
}

// How far an author was shown, as written: past a message numbered 2^53 - 1 (the largest a frame
// takes) it is 2^53, which is kept (read as 0, the author's messages would all be shown again).
function nextCount(value: unknown): number {
  return value === Number.MAX_SAFE_INTEGER + 1 ? value : safeCount(value);
}

function safeCount(value: unknown): number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : 0;
}
