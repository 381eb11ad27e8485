/**
 * The events of the chat, one JSON object each: what the core reports and what
 * the faces add in answer to a command. The JSON face writes them as they are,
 * one per line (docs/PROTOCOL.md §6 is their spec); the terminal and the web
 * page render them.
 *
 * @module
 */
import type { HistoryEntry } from "./history.ts";
import type { KeyChangeVia } from "./key_changes.ts";
import type { KeyState } from "./trust.ts";

/** A peer as the core reports it. */
export interface PeerSummary {
  /** The peer's user name. */
  name: string;
  /** What we know of its key; "changed" while a key change is not trusted yet. */
  trust: KeyState;
  /** SHA-256 of its certificate. */
  fingerprint: string;
  /** SHA-256 of its public key. */
  keyFingerprint: string;
  /** How the connection runs: straight to the peer, or spliced by the CA's relay. */
  via?: Via;
}

/** How a peer connection runs: straight between the peers, or spliced by the CA's relay. */
export type Via = "direct" | "relay";

/** What the core reports, as it happens. */
export type CoreEvent =
  | { type: "ready"; name: string; listen: string; fingerprint: string }
  | { type: "invite"; from: string }
  | { type: "invited"; to: string; fingerprint: string }
  | {
    type: "connected";
    peer: string;
    fingerprint: string;
    keyFingerprint: string;
    trust: KeyState;
    via: Via;
  }
  // `ref`: this client's name for a received item, the same in its history entry (§7).
  | { type: "message"; from: string; text: string; id: string; via?: "mailbox"; ref?: string }
  | { type: "sent"; to: string; id: string; text?: string; file?: string; room?: string }
  | { type: "queued"; to: string; id: string; text?: string; file?: string }
  | { type: "delivered"; to: string; id: string; ms?: number }
  | {
    type: "file";
    from: string;
    id: string;
    /** The name the file was saved under (`path`'s, a "(1)" included). */
    name: string;
    /** The name its sender announced, only when it differs from `name` (unsafe: sanitize). */
    announced?: string;
    path: string;
    bytes: number;
    sha256: string;
    via?: "mailbox";
    room?: string;
    ref?: string;
  }
  | {
    type: "progress";
    peer: string;
    id: string;
    bytes: number;
    total: number;
    direction: "in" | "out";
    room?: string;
  }
  | {
    type: "file_offer";
    from: string;
    id: string;
    /** The name the file is saved under (safeFileName of the one announced), before a "(1)". */
    name: string;
    bytes: number;
    /** Only when the offer carried it (an older peer, the mailbox); the `file` event always does. */
    sha256?: string;
    via?: "mailbox";
    room?: string;
  }
  | {
    type: "file_failed";
    peer: string;
    id: string;
    direction: "in" | "out";
    reason: string;
    message: string;
  }
  | { type: "disconnected"; peer: string; reason: string }
  // A key other than the one pinned for `peer` was presented: on a connection (with `connected`
  // trust "changed"), a mailbox item (held back) or a room's member list (`room`; its member
  // silenced). Kept (client/key_changes.ts) until that key is trusted or the change dismissed.
  | {
    type: "key_changed";
    peer: string;
    keyFingerprint: string;
    via: KeyChangeVia;
    room?: string;
  }
  // Rooms (docs/PROTOCOL.md §9).
  | { type: "room_invite"; room: string; from: string }
  // A waiting invitation given up to bound them (docs/PROTOCOL.md §9): it cannot be joined now.
  | { type: "room_invite_dropped"; room: string; from: string; reason: string }
  // `roomId`: which room of that name (one left and another joined may share it).
  | { type: "room_joined"; room: string; roomId: string; members: string[] }
  // `late`: shown after later messages of its author (one a member withheld, §9).
  | {
    type: "room_message";
    room: string;
    from: string;
    text: string;
    id: string;
    ref?: string;
    late?: true;
  }
  | { type: "room_member"; room: string; name: string; change: "joined" | "left" | "removed" }
  // `missing`: the first 1,000 numbers at most; `count`: how many in all.
  | { type: "room_gap"; room: string; from: string; missing: number[]; count: number }
  // `about: "identity"`: about our own certificate (its renewal, or one this home did not make),
  // which a face keeps in view apart from what peers cause (the page: docs/WEB.md). `peer`: the
  // member whose connection or invitation it is about, when it is one (a face shows it on that
  // conversation; a name quoted in `message` may be anyone's, quoted by anyone).
  | { type: "warning"; message: string; about?: "identity"; peer?: string }
  // The CA service answers again after looks at it got no answer (warned), since `since` (ISO).
  | { type: "ca_back"; since: string; message: string }
  | { type: "log_alarm"; message: string; serial?: string; fingerprint?: string };

/** What a face adds: answers to commands, errors, and leaving. */
export type FaceEvent =
  // `/room invite` went: the invitation is on its way to `to` (over a connection to them).
  | { type: "room_invited"; room: string; to: string }
  | { type: "safety"; peer: string; number: string }
  | { type: "peers"; peers: Array<{ name: string; trust: KeyState; current: boolean }> }
  | { type: "error"; message: string }
  | { type: "history"; peer: string; entries: HistoryEntry[] }
  | { type: "help"; text: string }
  | {
    type: "room_members";
    room: string;
    version: number;
    hash: string;
    creator: string;
    members: Array<{ name: string; keyFingerprint: string }>;
  }
  | {
    type: "rooms";
    rooms: Array<{ room: string; members: number; version: number }>;
    invitations: string[];
  }
  | { type: "bye" };

/** Every event of the JSON face (docs/PROTOCOL.md §6). */
export type ChatEvent = CoreEvent | FaceEvent;
