/**
 * Peer protocol v1 (docs/PROTOCOL.md): one JSON object per line, at most
 * 1 MiB. Splitting lines and validating frames live here; what a frame does
 * is the client's business.
 *
 * @module
 */
import { E2eError } from "./errors.ts";
import { decodeRoomFrame, isRoomName, type RoomFrame } from "./room.ts";

/** The protocol version of `hello`. */
export const PROTOCOL_VERSION = 1;
/** The ALPN protocol name peers negotiate. */
export const ALPN = "e2e-chat/1";
/**
 * The ALPN name of protocol v1 with refusals that say why (docs/PROTOCOL.md §1): on a connection
 * that negotiated it, a side that refuses the other may send one `refused` frame in place of its
 * hello. Offered before {@linkcode ALPN}, which an older peer picks: it is told nothing, as before.
 */
export const ALPN_REFUSALS = "e2e-chat/1.1";
/** The ALPN names e2e-chat offers, preferred first. */
export const ALPN_OFFERED: readonly string[] = [ALPN_REFUSALS, ALPN];
/** Longest line, `\n` included. */
export const MAX_LINE_BYTES = 1024 * 1024;
/** Longest message text, in characters. */
export const MAX_TEXT_CHARS = 65_536;
/** Largest decoded chunk of a file. */
export const MAX_CHUNK_BYTES = 768 * 1024;
/** Largest raw payload after a `bin` frame. */
export const MAX_BINARY_BYTES = 1024 * 1024;
/** The longest checkpoint a hello may carry. */
export const MAX_CHECKPOINT_CHARS = 4096;

/** The feature a peer lists in its hello when it accepts `bin` frames. */
export const FEATURE_BINARY = "bin";
/**
 * The feature a peer lists in its hello when its `file` frames are offers: the
 * sender streams only after an `accept`, and a `decline` ends the offer.
 */
export const FEATURE_OFFER = "offer";
/**
 * The feature a peer lists in its hello when it takes `acks` frames: the
 * messages of one read are acknowledged together, one frame for many.
 */
export const FEATURE_ACKS = "acks";
/** The most ids one `acks` frame carries. */
export const MAX_ACK_IDS = 1024;
/**
 * The feature a peer lists in its hello when it takes a file's SHA-256 at the
 * end: a `file` frame to it may leave out `sha256`, and then its `end` frame
 * carries it, so the sender hashes as the data streams instead of reading the
 * whole file once before the first byte.
 */
export const FEATURE_SHA256_AT_END = "sha256-at-end";
/** The longest reason a `decline` carries. */
export const MAX_REASON_CHARS = 500;

/** Every frame of protocol v1. */
export type Frame =
  | { type: "hello"; v: number; features?: string[]; checkpoint?: string }
  | { type: "msg"; id: string; text: string }
  | { type: "ack"; id: string }
  | { type: "acks"; ids: string[] }
  // `sha256` is left out of `file` (and then carried by `end`) to a peer that lists "sha256-at-end".
  | { type: "file"; id: string; name: string; size: number; sha256?: string; room?: string }
  | { type: "chunk"; id: string; data: string }
  | { type: "bin"; id: string; size: number }
  | { type: "end"; id: string; sha256?: string }
  | { type: "accept"; id: string }
  | { type: "got"; id: string; bytes: number }
  | { type: "decline"; id: string; reason: string }
  | { type: "bye" }
  | { type: "error"; message: string }
  // In place of the hello, on a connection that negotiated ALPN_REFUSALS: a code, never detail.
  | { type: "refused"; reason: string }
  // Rooms (docs/PROTOCOL.md §9); lib/room.ts validates the body.
  | { type: "room"; body: RoomFrame };

const ID = /^[A-Za-z0-9_.-]{1,64}$/;
const REFUSAL_REASON = /^[a-z0-9-]{1,32}$/;

/**
 * Encodes a frame as one line.
 *
 * @example
 * ```ts
 * import { encodeFrame } from "./frames.ts";
 * encodeFrame({ type: "msg", id: "1", text: "hi" }); // '{"type":"msg","id":"1","text":"hi"}\n'
 * ```
 */
export function encodeFrame(frame: Frame): string {
  return JSON.stringify(frame) + "\n";
}

/**
 * Parses and validates one line (without its `\n`); throws `ERR_BAD_REQUEST` for anything malformed.
 *
 * @example
 * ```ts
 * import { decodeFrame } from "./frames.ts";
 * decodeFrame('{"type":"ack","id":"7"}'); // { type: "ack", id: "7" }
 * ```
 */
export function decodeFrame(line: string): Frame {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw malformed("not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw malformed("not a JSON object");
  }
  const f = value as Record<string, unknown>;
  switch (f.type) {
    case "hello":
      if (f.v !== PROTOCOL_VERSION) {
        throw malformed(`unsupported version ${String(JSON.stringify(f.v)).slice(0, 32)}`);
      }
      return {
        type: "hello",
        v: PROTOCOL_VERSION,
        features: Array.isArray(f.features)
          ? f.features.filter((x): x is string => typeof x === "string").slice(0, 16)
          : [],
        // The sender's latest signed checkpoint of the CA's issuance log (docs/TRANSPARENCY.md).
        ...(typeof f.checkpoint === "string" && f.checkpoint.length <= MAX_CHECKPOINT_CHARS
          ? { checkpoint: f.checkpoint }
          : {}),
      };
    case "msg":
      if (typeof f.text !== "string" || f.text.length > MAX_TEXT_CHARS) {
        throw malformed("msg needs a text of at most 65536 characters");
      }
      return { type: "msg", id: id(f.id), text: f.text };
    case "ack":
      return { type: "ack", id: id(f.id) };
    case "acks":
      if (!Array.isArray(f.ids) || f.ids.length < 1 || f.ids.length > MAX_ACK_IDS) {
        throw malformed(`acks needs from 1 to ${MAX_ACK_IDS} ids`);
      }
      return { type: "acks", ids: f.ids.map(id) };
    case "end":
      return { type: "end", id: id(f.id), ...digest(f.sha256, "end") };
    case "accept":
      return { type: "accept", id: id(f.id) };
    case "got":
      if (typeof f.bytes !== "number" || !Number.isSafeInteger(f.bytes) || f.bytes < 0) {
        throw malformed("got needs a whole number of bytes");
      }
      return { type: "got", id: id(f.id), bytes: f.bytes };
    case "decline":
      return {
        type: "decline",
        id: id(f.id),
        reason: typeof f.reason === "string" ? f.reason.slice(0, MAX_REASON_CHARS) : "",
      };
    case "file": {
      if (typeof f.name !== "string" || f.name.length === 0 || f.name.length > 1024) {
        throw malformed("file needs a name");
      }
      if (typeof f.size !== "number" || !Number.isSafeInteger(f.size) || f.size < 0) {
        throw malformed("file needs a whole size");
      }
      // A file to a room (docs/PROTOCOL.md §9) names it; the receiver checks the membership.
      if (f.room !== undefined && (typeof f.room !== "string" || !isRoomName(f.room))) {
        throw malformed("file's room must be a room name");
      }
      return {
        type: "file",
        id: id(f.id),
        name: f.name,
        size: f.size,
        ...digest(f.sha256, "file"),
        ...(f.room === undefined ? {} : { room: f.room }),
      };
    }
    case "chunk":
      if (
        typeof f.data !== "string" || f.data.length > Math.ceil(MAX_CHUNK_BYTES / 3) * 4 ||
        !/^[A-Za-z0-9+/]*={0,2}$/.test(f.data) || f.data.length % 4 !== 0
      ) {
        throw malformed("chunk needs base64 data of at most 768 KiB");
      }
      return { type: "chunk", id: id(f.id), data: f.data };
    case "bin":
      if (
        typeof f.size !== "number" || !Number.isInteger(f.size) || f.size < 1 ||
        f.size > MAX_BINARY_BYTES
      ) {
        throw malformed("bin needs a size from 1 to 1048576");
      }
      return { type: "bin", id: id(f.id), size: f.size };
    case "bye":
      return { type: "bye" };
    case "room":
      return { type: "room", body: decodeRoomFrame(f.body) };
    case "error":
      return {
        type: "error",
        message: typeof f.message === "string" ? f.message.slice(0, 500) : "",
      };
    case "refused":
      // A code, so what a peer makes us show is short and printable.
      if (typeof f.reason !== "string" || !REFUSAL_REASON.test(f.reason)) {
        throw malformed("refused needs a reason code of 1 to 32 characters from a-z, 0-9 and -");
      }
      return { type: "refused", reason: f.reason };
    default:
      throw malformed(`unknown frame type ${JSON.stringify(shown(f.type).slice(0, 32))}`);
  }
}

// Text for an error message from any JSON value, without calling a peer-supplied toString.
function shown(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === null || typeof value === "object") return typeof value;
  return String(value);
}

// The optional `sha256` of a `file` or `end` frame: absent, or 64 lowercase hex characters.
function digest(value: unknown, type: "file" | "end"): { sha256?: string } {
  if (value === undefined) return {};
  if (typeof value !== "string" || !/^[0-9a-f]{64}$/.test(value)) {
    throw malformed(`${type}'s sha256 must be 64 lowercase hex characters`);
  }
  return { sha256: value };
}

function id(value: unknown): string {
  if (typeof value !== "string" || !ID.test(value)) throw malformed("bad id");
  return value;
}

function malformed(why: string): E2eError {
  return new E2eError("ERR_BAD_REQUEST", `Malformed frame: ${why}`);
}

/**
 * Splits a byte stream into lines of at most {@linkcode MAX_LINE_BYTES}; throws
 * `ERR_TOO_LARGE` as soon as a line is longer, without buffering the rest.
 *
 * @example
 * ```ts
 * import { LineSplitter } from "./frames.ts";
 * const lines = new LineSplitter();
 * lines.push(new TextEncoder().encode('{"type":"bye"}\n')); // ['{"type":"bye"}']
 * ```
 */
export class LineSplitter {
  #parts: Uint8Array[] = [];
  #size = 0;
  // A byte order mark is not JSON: kept, so the frame is refused wherever the line starts.
  #decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

  /** Whether no part of a line is held (the next bytes start a line). */
  get empty(): boolean {
    return this.#parts.length === 0;
  }

  /**
   * Feeds bytes up to the end of the first line they finish: returns that line
   * (or null) and how many bytes were used, so the caller can treat what
   * follows differently (the raw payload of a `bin` frame).
   */
  pushLine(bytes: Uint8Array): { line: string | null; used: number } {
    const nl = bytes.indexOf(0x0a);
    const end = nl < 0 ? bytes.length : nl;
    if (this.#size + end + 1 > MAX_LINE_BYTES) {
      throw new E2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB");
    }
    // A whole line in these bytes (the usual case) is decoded where it lies, without a copy.
    if (nl >= 0 && this.#parts.length === 0) {
      return { line: this.#decode(bytes.subarray(0, nl)), used: nl + 1 };
    }
    this.#parts.push(bytes.subarray(0, end));
    this.#size += end;
    if (nl < 0) return { line: null, used: bytes.length };
    return { line: this.#take(), used: nl + 1 };
  }

  /** Feeds bytes; returns the complete lines they finish. */
  push(bytes: Uint8Array): string[] {
    const lines: string[] = [];
    let start = 0;
    while (start < bytes.length) {
      const nl = bytes.indexOf(0x0a, start);
      const end = nl < 0 ? bytes.length : nl;
      if (this.#size + (end - start) + 1 > MAX_LINE_BYTES) {
        throw new E2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB");
      }
      this.#parts.push(bytes.subarray(start, end));
      this.#size += end - start;
      if (nl < 0) break;
      lines.push(this.#take());
      start = nl + 1;
    }
    return lines;
  }

  #take(): string {
    const line = new Uint8Array(this.#size);
    let offset = 0;
    for (const p of this.#parts) {
      line.set(p, offset);
      offset += p.length;
    }
    this.#parts = [];
    this.#size = 0;
    return this.#decode(line);
  }

  #decode(line: Uint8Array): string {
    try {
      return this.#decoder.decode(line);
    } catch {
      throw new E2eError("ERR_BAD_REQUEST", "Malformed frame: not UTF-8");
    }
  }
}
