/**
 * Rooms on the wire (docs/PROTOCOL.md §9): the one owner of the signed room
 * formats — the member list the creator signs, the room message its author
 * signs, their canonical encodings, and the `room` frame bodies that carry
 * them. What a room does with them is the client's business (client/rooms.ts).
 *
 * A canonical encoding is the JSON text of an array of the fields in a fixed
 * order, after a domain label (`e2e-chat room message v1`, `e2e-chat room
 * members v1`): JSON.stringify of the same values always gives the same bytes,
 * and the label keeps a signature over one from ever passing as the other.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  createHash,
  createPublicKey,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from "node:crypto";
import { E2eError } from "./errors.ts";
import { isValidName } from "./names.ts";

/** The feature a peer lists in its hello when it takes `room` frames. */
export const FEATURE_ROOMS = "rooms";
/** The most members a room has, the creator included. */
export const MAX_MEMBERS = 50;
/** Longest room message text, in characters (as a 1:1 message). */
export const MAX_ROOM_TEXT_CHARS = 65_536;
/** A room name: `#`, then the characters of a user name. */
export const ROOM_NAME_PATTERN: RegExp = /^#[a-z0-9][a-z0-9_-]{0,62}$/;
/**
 * A room id: 32 lowercase hex characters, made by the creator with {@linkcode roomIdFor} (64
 * random bits, then 64 bits that bind them to the creator's name).
 */
export const ROOM_ID_PATTERN: RegExp = /^[0-9a-f]{32}$/;
/** The most sequence numbers one `want` frame asks for. */
export const MAX_WANT = 64;
/** Longest public key (SPKI DER, base64) in a member list: RSA 4096 is about 740. */
const MAX_KEY_CHARS = 1400;
/** Longest signature (base64): RSA 4096 is 684. */
const MAX_SIG_CHARS = 1400;
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

const MESSAGE_LABEL = "e2e-chat room message v1";
const ID_LABEL = "e2e-chat room id v1";
const LIST_LABEL = "e2e-chat room members v1";

/** How a member joined or went, as the creator's signed list says. */
export type MemberChange = "joined" | "left" | "removed";

/** One member of a room. */
export interface RoomMember {
  /** The user name. */
  name: string;
  /** The public key of the member's certificate: SPKI DER, base64. */
  key: string;
  /** The list version that added the member (its messages carry versions from here). */
  since: number;
}

/** The member list, as the creator signs it. */
export interface MemberList {
  /** The room id. */
  roomId: string;
  /** The room name, `#name`. */
  room: string;
  /** Who created the room (the only one who changes the list). */
  creator: string;
  /** Starts at 1, one more with each change. */
  version: number;
  /** The members, sorted by name, the creator among them. */
  members: RoomMember[];
  /** What changed from the version before. Default: nothing (the first list). */
  change?: { name: string; change: MemberChange };
}

/** A member list with the creator's signature. */
export interface SignedList extends MemberList {
  /** The creator's signature over {@linkcode encodeList}, base64. */
  sig: string;
}

/** A room message, as its author signs it. */
export interface RoomMessage {
  /** The room id. */
  roomId: string;
  /** The room name, `#name`. */
  room: string;
  /** Who wrote it. */
  author: string;
  /** The author's sequence number in this room: 1, 2, 3, … */
  seq: number;
  /** The member-list version the author held when it wrote this. */
  version: number;
  /** The text. */
  text: string;
}

/** A room message with its author's signature. */
export interface SignedMessage extends RoomMessage {
  /** The author's signature over {@linkcode encodeMessage}, base64. */
  sig: string;
}

/** The body of a `room` frame. */
export type RoomFrame =
  | { op: "invite"; list: SignedList }
  | { op: "join"; roomId: string }
  | { op: "leave"; roomId: string }
  | { op: "list"; list: SignedList }
  | { op: "msg"; m: SignedMessage; to?: string[]; fill?: boolean }
  | { op: "state"; roomId: string; version: number; seen: Record<string, number> }
  | { op: "want"; roomId: string; author: string; seqs: number[] };

/**
 * Whether `name` is a room name (`#` and a user name's characters).
 *
 * @example
 * ```ts
 * import { isRoomName } from "./room.ts";
 * isRoomName("#team"); // true
 * isRoomName("team"); // false
 * ```
 */
export function isRoomName(name: string): boolean {
  return ROOM_NAME_PATTERN.test(name);
}

/**
 * Returns `name` when it is a room name; else throws `ERR_NAME_INVALID`.
 *
 * @example
 * ```ts
 * import { checkRoomName } from "./room.ts";
 * checkRoomName("#team"); // "#team"
 * ```
 */
export function checkRoomName(name: string): string {
  if (!isRoomName(name)) {
    throw new E2eError(
      "ERR_NAME_INVALID",
      `Invalid room name ${JSON.stringify(name.slice(0, 80))}`,
      { hint: "a room name is # then lowercase letters, digits, _ or -, e.g. #team" },
    );
  }
  return name;
}

/**
 * A new room id for a room `creator` makes: 16 random hex characters, then the first 16 hex of
 * the SHA-256 of a label, `creator` and those random ones. Messages and lists name the room by
 * its id alone, so the id is bound to its creator: another member cannot make a room with the id
 * of someone else's (it would take a name the CA gave someone else, or about 2^64 tries per id).
 *
 * @example
 * ```ts
 * import { isRoomIdOf, roomIdFor } from "./room.ts";
 * const id = roomIdFor("alice");
 * isRoomIdOf(id, "alice"); // true
 * isRoomIdOf(id, "mallory"); // false
 * ```
 */
export function roomIdFor(creator: string): string {
  const nonce = randomBytes(8).toString("hex");
  return nonce + idBinding(nonce, creator);
}

/**
 * Whether the room id `id` was made by {@linkcode roomIdFor} for `creator`. Ids made before
 * (128 random bits) are not: rooms saved with one still load, but no invitation names one.
 *
 * @example
 * ```ts
 * import { isRoomIdOf } from "./room.ts";
 * isRoomIdOf("0123456789abcdef0123456789abcdef", "alice"); // false
 * ```
 */
export function isRoomIdOf(id: string, creator: string): boolean {
  return ROOM_ID_PATTERN.test(id) && idBinding(id.slice(0, 16), creator) === id.slice(16);
}

function idBinding(nonce: string, creator: string): string {
  return createHash("sha256").update(JSON.stringify([ID_LABEL, creator, nonce])).digest("hex")
    .slice(0, 16);
}

/**
 * The canonical bytes an author signs for a room message.
 *
 * @example
 * ```ts
 * import { encodeMessage } from "./room.ts";
 * const m = { roomId: "0".repeat(32), room: "#team", author: "alice", seq: 1, version: 1, text: "hi" };
 * new TextDecoder().decode(encodeMessage(m)); // '["e2e-chat room message v1","000…",…,"hi"]'
 * ```
 */
export function encodeMessage(m: RoomMessage): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify([MESSAGE_LABEL, m.roomId, m.room, m.author, m.seq, m.version, m.text]),
  );
}

/**
 * Reads the canonical bytes of a room message back; throws `ERR_BAD_REQUEST`
 * for anything {@linkcode encodeMessage} would not have written.
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage } from "./room.ts";
 * const m = { roomId: "0".repeat(32), room: "#team", author: "alice", seq: 1, version: 1, text: "hi" };
 * decodeMessage(encodeMessage(m)); // m
 * ```
 */
export function decodeMessage(bytes: Uint8Array): RoomMessage {
  const a = parseArray(bytes, MESSAGE_LABEL, 7);
  const m = message({
    roomId: a[1],
    room: a[2],
    author: a[3],
    seq: a[4],
    version: a[5],
    text: a[6],
  });
  requireCanonical(bytes, encodeMessage(m));
  return m;
}

/**
 * The canonical bytes the creator signs for a member list.
 *
 * @example
 * ```ts
 * import { encodeList } from "./room.ts";
 * encodeList({ roomId: "0".repeat(32), room: "#team", creator: "alice", version: 1, members: [] });
 * ```
 */
export function encodeList(l: MemberList): Uint8Array {
  return new TextEncoder().encode(JSON.stringify([
    LIST_LABEL,
    l.roomId,
    l.room,
    l.creator,
    l.version,
    l.members.map((m) => [m.name, m.key, m.since]),
    l.change ? [l.change.name, l.change.change] : null,
  ]));
}

/**
 * Reads the canonical bytes of a member list back; throws `ERR_BAD_REQUEST`
 * for anything {@linkcode encodeList} would not have written.
 *
 * @example
 * ```ts
 * import { decodeList, encodeList } from "./room.ts";
 * const l = { roomId: "0".repeat(32), room: "#team", creator: "alice", version: 1, members: [] };
 * decodeList(encodeList(l)); // l
 * ```
 */
export function decodeList(bytes: Uint8Array): MemberList {
  const a = parseArray(bytes, LIST_LABEL, 7);
  const members = a[5];
  const change = a[6];
  const l = memberList({
    roomId: a[1],
    room: a[2],
    creator: a[3],
    version: a[4],
    members: Array.isArray(members)
      ? members.map((m) =>
        Array.isArray(m) && m.length === 3 ? { name: m[0], key: m[1], since: m[2] } : m
      )
      : members,
    ...(change === null
      ? {}
      : { change: Array.isArray(change) ? { name: change[0], change: change[1] } : change }),
  }, false);
  requireCanonical(bytes, encodeList(l));
  return l;
}

/**
 * The hash of a member list every member can compare: SHA-256 of its
 * canonical encoding, 64 lowercase hex characters.
 *
 * @example
 * ```ts
 * import { listHash } from "./room.ts";
 * listHash({ roomId: "0".repeat(32), room: "#team", creator: "alice", version: 1, members: [] });
 * ```
 */
export function listHash(l: MemberList): string {
  return createHash("sha256").update(encodeList(l)).digest("hex");
}

/**
 * Signs `m` with the author's private key.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signMessage } from "./room.ts";
 * const { privateKey } = generateKeyPairSync("ed25519");
 * const m = { roomId: "0".repeat(32), room: "#team", author: "alice", seq: 1, version: 1, text: "hi" };
 * signMessage(m, privateKey).sig; // base64
 * ```
 */
export function signMessage(m: RoomMessage, key: KeyObject): SignedMessage {
  const plain = message(m);
  return { ...plain, sig: signBytes(encodeMessage(plain), key) };
}

/**
 * Whether the signature of `m` was made over its canonical encoding by the
 * private key of `key` (the author's public key). Never throws.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signMessage, verifyMessage } from "./room.ts";
 * const { privateKey, publicKey } = generateKeyPairSync("ed25519");
 * const m = { roomId: "0".repeat(32), room: "#team", author: "alice", seq: 1, version: 1, text: "hi" };
 * verifyMessage(signMessage(m, privateKey), publicKey); // true
 * ```
 */
export function verifyMessage(m: SignedMessage, key: KeyObject): boolean {
  return verifyBytes(encodeMessage(m), m.sig, key);
}

/**
 * Signs a member list with the creator's private key.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signList } from "./room.ts";
 * const { privateKey } = generateKeyPairSync("ed25519");
 * signList({ roomId: "0".repeat(32), room: "#team", creator: "alice", version: 1, members: [] }, privateKey);
 * ```
 */
export function signList(l: MemberList, key: KeyObject): SignedList {
  const plain = memberList(l, false);
  return { ...plain, sig: signBytes(encodeList(plain), key) };
}

/**
 * Whether `l` carries the signature of `key` (the creator's public key) over
 * its canonical encoding. Never throws.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signList, verifyList } from "./room.ts";
 * const { privateKey, publicKey } = generateKeyPairSync("ed25519");
 * const l = { roomId: "0".repeat(32), room: "#team", creator: "alice", version: 1, members: [] };
 * verifyList(signList(l, privateKey), publicKey); // true
 * ```
 */
export function verifyList(l: SignedList, key: KeyObject): boolean {
  return verifyBytes(encodeList(l), l.sig, key);
}

/**
 * The public key of a member list entry (SPKI DER, base64) as a KeyObject;
 * throws `ERR_BAD_REQUEST` when it is not one.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { publicKeyOf, spkiOf } from "./room.ts";
 * const { publicKey } = generateKeyPairSync("ed25519");
 * publicKeyOf(spkiOf(publicKey)).asymmetricKeyType; // "ed25519"
 * ```
 */
export function publicKeyOf(spki: string): KeyObject {
  try {
    return createPublicKey({ key: Buffer.from(spki, "base64"), format: "der", type: "spki" });
  } catch {
    throw malformed("a member's key is not a public key");
  }
}

/**
 * A public key as a member list holds it: SPKI DER, base64.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { spkiOf } from "./room.ts";
 * spkiOf(generateKeyPairSync("ed25519").publicKey);
 * ```
 */
export function spkiOf(key: KeyObject): string {
  return Buffer.from(key.export({ type: "spki", format: "der" })).toString("base64");
}

/**
 * The fingerprint of a member's key (SHA-256 of its SPKI DER, as
 * lib/x509.ts's keyFingerprint), 64 lowercase hex characters.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { keyFingerprintOf, spkiOf } from "./room.ts";
 * keyFingerprintOf(spkiOf(generateKeyPairSync("ed25519").publicKey)).length; // 64
 * ```
 */
export function keyFingerprintOf(spki: string): string {
  return createHash("sha256").update(Buffer.from(spki, "base64")).digest("hex");
}

/**
 * Validates the body of a `room` frame (any JSON value); throws
 * `ERR_BAD_REQUEST` for anything malformed or out of bounds. Signatures are
 * not checked here: that needs the room's keys (client/rooms.ts).
 *
 * @example
 * ```ts
 * import { decodeRoomFrame } from "./room.ts";
 * decodeRoomFrame({ op: "join", roomId: "0".repeat(32) }); // { op: "join", roomId: "000…" }
 * ```
 */
export function decodeRoomFrame(value: unknown): RoomFrame {
  const f = object(value, "room frame");
  switch (f.op) {
    case "invite":
    case "list":
      return { op: f.op, list: signedList(f.list) };
    case "join":
    case "leave":
      return { op: f.op, roomId: roomId(f.roomId) };
    case "msg": {
      const m = message(f.m);
      const out: RoomFrame = { op: "msg", m: { ...m, sig: sig(object(f.m, "message").sig) } };
      if (f.to !== undefined) {
        if (!Array.isArray(f.to) || f.to.length > MAX_MEMBERS) {
          throw malformed(`to lists at most ${MAX_MEMBERS} names`);
        }
        out.to = f.to.map(name);
      }
      if (f.fill !== undefined) {
        if (typeof f.fill !== "boolean") throw malformed("fill must be true or false");
        out.fill = f.fill;
      }
      return out;
    }
    case "state": {
      const seen = object(f.seen, "seen");
      const entries = Object.entries(seen);
      if (entries.length > MAX_MEMBERS) throw malformed(`seen lists at most ${MAX_MEMBERS} names`);
      const out: Record<string, number> = Object.create(null);
      for (const [k, v] of entries) out[name(k)] = seq(v, true);
      return { op: "state", roomId: roomId(f.roomId), version: version(f.version), seen: out };
    }
    case "want": {
      if (!Array.isArray(f.seqs) || f.seqs.length === 0 || f.seqs.length > MAX_WANT) {
        throw malformed(`want asks for 1 to ${MAX_WANT} sequence numbers`);
      }
      return {
        op: "want",
        roomId: roomId(f.roomId),
        author: name(f.author),
        seqs: f.seqs.map((s) => seq(s)),
      };
    }
    default:
      throw malformed(
        `unknown room op ${
          JSON.stringify(typeof f.op === "string" ? f.op.slice(0, 32) : typeof f.op)
        }`,
      );
  }
}

// --- validation of each part

function message(value: unknown): RoomMessage {
  const m = object(value, "message");
  if (typeof m.text !== "string" || m.text.length > MAX_ROOM_TEXT_CHARS) {
    throw malformed(`a room message needs a text of at most ${MAX_ROOM_TEXT_CHARS} characters`);
  }
  return {
    roomId: roomId(m.roomId),
    room: roomName(m.room),
    author: name(m.author),
    seq: seq(m.seq),
    version: version(m.version),
    text: m.text,
  };
}

function signedList(value: unknown): SignedList {
  const l = memberList(value, true);
  return { ...l, sig: sig(object(value, "member list").sig) };
}

function memberList(value: unknown, fromWire: boolean): MemberList {
  const l = object(value, "member list");
  if (!Array.isArray(l.members) || l.members.length === 0 && fromWire) {
    throw malformed("a member list needs members");
  }
  if (l.members.length > MAX_MEMBERS) {
    throw malformed(`a room has at most ${MAX_MEMBERS} members, not ${l.members.length}`);
  }
  const v = version(l.version);
  const members = l.members.map((x): RoomMember => {
    const m = object(x, "member");
    if (typeof m.key !== "string" || m.key.length > MAX_KEY_CHARS || !BASE64.test(m.key)) {
      throw malformed("a member needs a key (SPKI DER, base64)");
    }
    const since = version(m.since);
    if (since > v) throw malformed("a member added after the list's version");
    return { name: name(m.name), key: m.key, since };
  });
  for (let i = 1; i < members.length; i++) {
    if (!(members[i - 1].name < members[i].name)) {
      throw malformed("members must be sorted by name, each once");
    }
  }
  const creator = name(l.creator);
  if (fromWire && !members.some((m) => m.name === creator)) {
    throw malformed("the creator is not a member");
  }
  const out: MemberList = {
    roomId: roomId(l.roomId),
    room: roomName(l.room),
    creator,
    version: v,
    members,
  };
  if (l.change !== undefined) {
    const c = object(l.change, "change");
    if (c.change !== "joined" && c.change !== "left" && c.change !== "removed") {
      throw malformed('a change is "joined", "left" or "removed"');
    }
    out.change = { name: name(c.name), change: c.change };
  }
  return out;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function object(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw malformed(`${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function roomId(value: unknown): string {
  if (typeof value !== "string" || !ROOM_ID_PATTERN.test(value)) throw malformed("bad room id");
  return value;
}

function roomName(value: unknown): string {
  if (typeof value !== "string" || !isRoomName(value)) throw malformed("bad room name");
  return value;
}

function name(value: unknown): string {
  if (typeof value !== "string" || !isValidName(value)) throw malformed("bad user name");
  return value;
}

function seq(value: unknown, zero = false): number {
  if (
    typeof value !== "number" || !Number.isSafeInteger(value) || value < (zero ? 0 : 1) ||
    value > MAX_SEQ
  ) {
    throw malformed("bad sequence number");
  }
  return value;
}

function version(value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    throw malformed("bad list version");
  }
  return value;
}

function sig(value: unknown): string {
  if (
    typeof value !== "string" || value.length === 0 || value.length > MAX_SIG_CHARS ||
    !BASE64.test(value)
  ) {
    throw malformed("bad signature");
  }
  return value;
}

function parseArray(bytes: Uint8Array, label: string, length: number): unknown[] {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw malformed("not canonical JSON");
  }
  if (!Array.isArray(value) || value.length !== length || value[0] !== label) {
    throw malformed(`not a ${label}`);
  }
  return value;
}

function requireCanonical(bytes: Uint8Array, again: Uint8Array): void {
  if (bytes.length !== again.length || !bytes.every((b, i) => b === again[i])) {
    throw malformed("not in canonical form");
  }
}

// Ed25519 signs the message itself; EC and RSA keys sign its SHA-256.
function hashFor(key: KeyObject): string | null {
  return key.asymmetricKeyType === "ed25519" || key.asymmetricKeyType === "ed448" ? null : "sha256";
}

function signBytes(bytes: Uint8Array, key: KeyObject): string {
  return Buffer.from(sign(hashFor(key), bytes, key)).toString("base64");
}

function verifyBytes(bytes: Uint8Array, signature: string, key: KeyObject): boolean {
  try {
    return verify(hashFor(key), bytes, key, Buffer.from(signature, "base64"));
  } catch {
    return false;
  }
}

function malformed(why: string): E2eError {
  return new E2eError("ERR_BAD_REQUEST", `Malformed room frame: ${why}`);
}
