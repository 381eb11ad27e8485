/**
 * One peer connection after its checks passed: protocol v1 framing, hello,
 * messages, acks and files, with back-pressure both ways so neither side ever
 * holds more than a few frames (or a whole file) in memory.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { TLSSocket } from "node:tls";
import { E2eError } from "../lib/errors.ts";
import {
  ALPN_REFUSALS,
  decodeFrame,
  encodeFrame,
  FEATURE_ACKS,
  FEATURE_BINARY,
  FEATURE_OFFER,
  FEATURE_SHA256_AT_END,
  type Frame,
  LineSplitter,
  MAX_ACK_IDS,
  MAX_BINARY_BYTES,
  MAX_LINE_BYTES,
} from "../lib/frames.ts";
import { FEATURE_ROOMS, type RoomFrame } from "../lib/room.ts";
import { pauseReading, resumeReading } from "../lib/tls.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import type { CoreEvent } from "./events.ts";
import { announcedName, formatSize, hashFile, IncomingFile, receivedName } from "./files.ts";

/** A file a peer offers (or, from an older peer, announces). */
export interface FileOffer {
  /** The transfer id (unique per sender). */
  id: string;
  /** The name as announced (unsafe; for display through a sanitizer only). */
  name: string;
  /** Size in bytes. */
  bytes: number;
  /**
   * SHA-256, 64 lowercase hex, when the offer carries it: a sender whose peer lists
   * "sha256-at-end" sends it with the `end` frame instead (the `file` event has it).
   */
  sha256?: string;
  /** The room it is sent to (a file to a room goes to each member over its own connection). */
  room?: string;
}

/** What to do with a file as it is offered: take it, ask the user, or refuse it (why). */
export type FileVerdict = "accept" | "ask" | { refuse: string };

/** The receiver's rules for incoming files (consent and quotas live with the owner). */
export interface FilePolicy {
  /**
   * The verdict on an offer as it arrives; `canAsk` is false for a peer whose
   * hello did not list "offer" (its data follows at once, so it cannot wait).
   */
  decide(peer: PeerConnection, offer: FileOffer, canAsk: boolean): FileVerdict;
  /** Counts an accepted file against the quotas: returns how to give it back, or why not. */
  take(peer: PeerConnection, offer: FileOffer): (() => void) | { refuse: string };
  /**
   * The id of the room called `room` that we are in, noted with a room's file as it is accepted:
   * the `file` event names it, so that the file is kept in that room's history whatever room of
   * that name we are in when it ends.
   */
  roomId?(room: string): string | undefined;
}

/** The core's event of type `T`: a connection reports a file event with the same fields. */
type EventOf<T extends CoreEvent["type"]> = Extract<CoreEvent, { type: T }>;

/** What a connection reports to its owner. */
export interface PeerEvents {
  /** A message arrived. */
  message(peer: PeerConnection, id: string, text: string): void;
  /** A message or file we sent was acknowledged. */
  delivered(peer: PeerConnection, id: string, ms?: number): void;
  /**
   * A file arrived and matched its SHA-256: `name` is the one it was saved under, `announced` the
   * sender's when that differs. The sender hears it arrived (`ack`) once what this returns
   * resolves (the owner's records of it, on disk); if it rejects, the file is removed, the
   * sender gets no `ack` and the connection closes as for a file that could not be kept.
   */
  file(
    peer: PeerConnection,
    info: Omit<EventOf<"file">, "type" | "from" | "via" | "ref"> & {
      /** The id of the room `room` as it was when the file was accepted (see FilePolicy). */
      roomId?: string;
    },
  ): void | Promise<void>;
  /** Progress of a file transfer. */
  progress(peer: PeerConnection, info: Omit<EventOf<"progress">, "type" | "peer">): void;
  /** A file transfer failed. */
  fileFailed(
    peer: PeerConnection,
    info: Pick<EventOf<"file_failed">, "id" | "reason" | "direction">,
  ): void;
  /** The connection closed. */
  closed(peer: PeerConnection, reason: string): void;
  /** A message from a quarantined peer was dropped (not shown, not acknowledged, not kept). */
  held(peer: PeerConnection, what: "message"): void;
  /** The peer's hello carried its latest checkpoint of the CA's issuance log. */
  checkpoint?(peer: PeerConnection, text: string): void;
  /** The peer offers a file that waits for {@linkcode PeerConnection.acceptOffer}. */
  offer?(peer: PeerConnection, offer: FileOffer): void;
  /** The peer's hello arrived: frames of the features it lists may be sent now. */
  hello?(peer: PeerConnection): void;
  /** A `room` frame arrived (client/rooms.ts checks what it says). */
  room?(peer: PeerConnection, body: RoomFrame): void;
  /** The last byte of a file we send was handed to the connection. */
  fileSent?(
    peer: PeerConnection,
    info: { id: string; name: string; path: string; bytes: number; room?: string },
  ): void;
}

/** Options of {@linkcode PeerConnection}. */
export interface PeerOptions {
  /** Where received files go. */
  downloads: string;
  /** Event sink. */
  events: PeerEvents;
  /** Our latest checkpoint of the issuance log, sent in our hello. Default: none. */
  checkpoint?: string;
  /** The rules for incoming files. Default: every file is taken (no offers asked). */
  files?: FilePolicy;
  /** How long a send may make no progress before it is aborted, ms. Default: 30000. */
  sendStallMs?: number;
  /**
   * How long an accepted file may get no data while we read before it is given up, ms.
   * Default: 5000.
   */
  receiveStallMs?: number;
  /**
   * The window of the rate floor on incoming files, ms: in each, counted as `receiveStallMs` is
   * (only while the wait is the sender's), the accepted files must get `receiveMinBytes` of data
   * in all, or they are given up as too slow. Default: 30000.
   */
  receiveWindowMs?: number;
  /**
   * The bytes of file data each `receiveWindowMs` must bring (see there). Default: 16384 (about
   * 4.4 kbit/s: an 8 kbit/s link passes with room to spare, a byte every few seconds does not).
   */
  receiveMinBytes?: number;
}

const MAX_QUEUED = 32; // frames parsed but not handled before we stop reading
const MAX_INCOMING_FILES = 8;
const MAX_OFFERS = 16; // offers waiting for the user, per connection
const STALL_MS = 5_000;
// A file data trickle (a byte every few seconds passes the stall rule) would hold its quota for
// ever; a rate floor far under any real link's stops it. Counted over a long window, so a slow
// link's bursts and pauses even out.
const RATE_WINDOW_MS = 30_000;
const RATE_MIN_BYTES = 16 * 1024;
const MAX_DROPPED = 2 * MAX_INCOMING_FILES; // files given up whose data may still be on the way
/** How long a send may make no progress (the peer reads nothing) before it is aborted. */
export const SEND_STALL_MS = 30_000;
const HELLO_WAIT_MS = 10_000;
// A peer that lists "offer" reports the bytes it has written with "got" frames; we keep at most
// this much unconfirmed. (A socket's drain is no proof the peer reads: Deno's TLS buffers writes
// without bound, so without this a peer that reads nothing would let us queue a whole file.)
const SEND_WINDOW = 8 * 1024 * 1024;
const GOT_EVERY = 2 * 1024 * 1024; // each "got" costs the receiver a TLS write
const MAX_UNSENT = 1024 * 1024; // bytes we let wait for a peer that does not read
/**
 * Bytes unsent to a peer past which room gap fills for it are dropped: a member that asks
 * (`want`, `state`: a few bytes each) and never reads would otherwise make us hold every answer.
 */
export const MAX_UNSENT_FILL = 16 * 1024 * 1024;
/**
 * Bytes (about) of answers to a peer's room requests — gap fills, and the list or state a `state`
 * asks for — sent over one connection in all, past which more are dropped. (Written as if Deno's
 * TLS took every write at once; measured on Deno 2.9.6, writableLength does show what a peer that
 * truly reads nothing leaves — a pause()d node:tls peer in Deno reads on, into its own memory —
 * and {@linkcode MAX_UNREAD_BYTES} closes the connection past it.)
 */
export const MAX_ANSWER_BYTES = 2 * MAX_UNSENT_FILL;
/**
 * Bytes we hold unsent for one peer (the socket's writableLength, measured on every side a peer
 * connection runs on) past which the connection is closed: a peer that reads nothing while we
 * write to it (acks of its messages, declines of its offers, room traffic we forward) would make
 * us hold every byte. An honest peer stays far below: room fills stop at
 * {@linkcode MAX_UNSENT_FILL}, and a file keeps at most 8 MiB unconfirmed on top.
 */
export const MAX_UNREAD_BYTES = MAX_UNSENT_FILL + SEND_WINDOW;
/**
 * Bytes read (not handled) from a peer we hold because it reads none of our acks, past which its
 * reading stops: no peer holds more than {@linkcode MAX_UNREAD_BYTES} unsent for us, so reading
 * that much lets one that holds us for the same reason (both wrote a lot at once) drain and read
 * us again.
 */
export const HOLD_READ_BYTES = MAX_UNREAD_BYTES;
/**
 * Bytes unsent to a peer past which the faces take no more of the user's input until it reads
 * ({@linkcode PeerConnection.whenWritable}): a script that writes faster than the peer reads is
 * held back, instead of filling memory until {@linkcode MAX_UNREAD_BYTES} cuts the peer off.
 */
export const BACKLOG_BYTES = 4 * 1024 * 1024;
/** Messages whose round trip we time at most (the oldest beyond are delivered without `ms`). */
const MAX_TIMED = 10_000;
const CHUNK_BYTES = 512 * 1024; // within MAX_CHUNK_BYTES (base64)
const BIN_CHUNK_BYTES = MAX_BINARY_BYTES; // fewer, larger frames when raw

let lastIdTime = 0;
// The start of a connection's ids: the time it began, base 36, never the same twice in a process
// (ids are unique per sender: a new connection to the same peer must not repeat the last one's).
function idPrefix(): string {
  lastIdTime = Math.max(Date.now(), lastIdTime + 1);
  return lastIdTime.toString(36);
}

// A byte order mark is kept (and so refused as not JSON), as LineSplitter does: stripped only at
// the start of a read, it would make this path and the line-by-line one disagree.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Part of the raw payload of a `bin` frame. */
interface RawPiece {
  type: "raw";
  id: string;
  bytes: Uint8Array;
}

/** Bad input, failing the connection once the frames before it are handled. */
interface Failure {
  type: "fail";
  error: unknown;
}

/** A checked, connected peer. */
export class PeerConnection {
  /** The peer's user name (from its certificate). */
  readonly name: string;
  /** The peer's certificate. */
  readonly certificate: CertificateInfo;
  /**
   * While true (the peer's key changed and the user has not said /trust), its
   * messages are neither shown nor acknowledged and its files are refused.
   */
  quarantined = false;
  #socket: TLSSocket;
  #options: PeerOptions;
  #lines = new LineSplitter();
  #queue: Promise<void> = Promise.resolve();
  #queued = 0;
  #helloSeen = false;
  #peerFeatures = new Set<string>();
  #sentAt = new Map<string, number>();
  // What we sent and the peer has not acknowledged yet: messages, and files whose end went out.
  // Only these may be acknowledged, each once (no "delivered" for what the peer never got).
  #unacked = new Set<string>();
  #acks: string[] = []; // messages to acknowledge in one `acks` frame at the end of this turn
  #out = ""; // frames after the first of this turn, written together as it ends
  #wroteThisTurn = false;
  #raw?: { id: string; bytes: Uint8Array; at: number };
  #spare: Uint8Array[] = []; // bin payload buffers written out, for the next payloads
  #closed = false;
  #failed = false;
  #broken = false; // no more input is parsed
  #closeReason = "closed";
  #refusal?: string; // the other side refused us, in place of its hello
  #incoming = new Map<string, IncomingFile>();
  #releases = new Map<string, () => void>(); // quota given back if an incoming file fails
  #offers = new Map<string, FileOffer>(); // offered to us, waiting for the user
  #starting = new Set<string>(); // accepted, its partial file being made (not in #incoming yet)
  #startingRooms = new Map<string, string>(); // and the room of one of those, for a room
  #startingGivenUp = new Map<string, string>(); // and those given up meanwhile: why (abortRoomFiles)
  // When data of an incoming file last moved (read, or written out), the file data read and not
  // written yet, and the check that gives up files that get none, or too little (#fileTick).
  #fileDataAt = 0;
  #filePieces = 0;
  // The rate floor's window: file data read in it, and the time in it that was the sender's; when
  // the check last ran, and when the wait was last seen to be ours.
  #windowBytes = 0;
  #windowMs = 0;
  #tickAt = 0;
  #oursAt = 0;
  #heldPaused = false; // reading stopped because the peer reads nothing of ours: its wait
  #unholding = false; // what was held is handled now: counted for the window as it was read
  #fileTimer?: ReturnType<typeof setInterval>;
  #lastUnsent = 0;
  #dropped = new Map<string, number>(); // files given up: the bytes of each that may still come
  #incomingRooms = new Map<string, string>(); // the room of a file being received
  #incomingRoomIds = new Map<string, string>(); // and that room's id when it was accepted
  #sendingRoom?: string; // the room of the file being sent (one at a time)
  #outgoing = new Map<string, Outgoing>(); // offered by us, waiting for an accept
  #withdrawn = new Map<string, string>(); // offers we withdrew, and why: an accept gets a decline
  #sending: Promise<void> = Promise.resolve(); // one file streams at a time
  #hello = Promise.withResolvers<void>();
  #confirmed = new Map<string, Confirmed>(); // "got" of our sends
  // Accepted sends waiting for the one streaming (one at a time), and why the receiver declined
  // one meanwhile ("" until it does): a declined one is not streamed when its turn comes.
  #waitingSends = new Map<string, string>();
  #reported = new Map<string, number>(); // what we last said in "got" of theirs
  #nextId = 1;
  #idPrefix = idPrefix();
  #lastProgress = 0;
  #answered = 0; // bytes (about) of answers to the peer's room requests (see sendRoom)
  #holding = false; // what the peer sends is held until what we wrote drains (#holdIfUnread)
  #held: Uint8Array[] = []; // read while holding, handled once it ends
  #heldBytes = 0;
  #writable?: Promise<void>; // see whenWritable

  /** Wraps a socket whose peer was checked as `name` with `certificate`. */
  constructor(socket: TLSSocket, name: string, certificate: CertificateInfo, options: PeerOptions) {
    this.#socket = socket;
    this.name = name;
    this.certificate = certificate;
    this.#options = options;
  }

  /**
   * The other side's reason code when it refused us in place of its hello (a `refused` frame,
   * docs/PROTOCOL.md §1); undefined otherwise.
   */
  get refusal(): string | undefined {
    return this.#refusal;
  }

  /** Whether the connection is still open (and ours to write to: not ended or destroyed). */
  get open(): boolean {
    return !this.#closed && !this.#ended;
  }

  /** Sends hello and starts reading. */
  start(): void {
    this.#socket.setNoDelay(true);
    this.#socket.on("data", (bytes: Uint8Array) => this.#onData(bytes));
    this.#socket.on("error", (e: Error) => {
      this.#closeReason = e.message;
    });
    this.#socket.on("close", () => this.#onClose());
    this.#socket.on("timeout", () => this.#onStall());
    const checkpoint = this.#options.checkpoint;
    this.#write({
      type: "hello",
      v: 1,
      features: [FEATURE_BINARY, FEATURE_OFFER, FEATURE_ROOMS, FEATURE_ACKS, FEATURE_SHA256_AT_END],
      ...(checkpoint === undefined ? {} : { checkpoint }),
    });
  }

  /** Sends a message; returns its id. */
  sendMessage(text: string): string {
    const id = this.#id();
    this.#sentAt.set(id, performance.now());
    this.#unacked.add(id);
    // Halved in one pass, not trimmed one by one: deleting a Map's oldest entry each time costs
    // a scan over the deleted ones before it.
    if (this.#sentAt.size > 2 * MAX_TIMED) {
      this.#sentAt = new Map([...this.#sentAt].slice(-MAX_TIMED));
    }
    this.#write({ type: "msg", id, text });
    return id;
  }

  /**
   * Undefined while under {@linkcode BACKLOG_BYTES} wait unsent to the peer; past that, a
   * promise that resolves once a quarter of it is left, or the connection closed. A peer that
   * reads none of it for `sendStallMs` (30 s) is cut off, as a stalled file send is, with the
   * reason `"bob" reads nothing: …`. A slow reader is waited for as long as it makes progress.
   */
  whenWritable(): Promise<void> | undefined {
    if (this.#closed || this.#ended || this.#unsent <= BACKLOG_BYTES) return undefined;
    this.#writable ??= this.#backlogDrained().finally(() => (this.#writable = undefined));
    return this.#writable;
  }

  async #backlogDrained(): Promise<void> {
    const stallMs = this.#options.sendStallMs ?? SEND_STALL_MS;
    let least = this.#unsent;
    let moved = Date.now();
    while (!this.#closed && !this.#ended && this.#unsent > BACKLOG_BYTES / 4) {
      // Drained, closed, or a look at how far it got every 50 ms.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.#socket.off("drain", done);
          this.#socket.off("close", done);
          resolve();
        };
        const timer = setTimeout(done, 50);
        this.#socket.on("drain", done);
        this.#socket.on("close", done);
      });
      const unsent = this.#unsent;
      if (unsent < least) {
        least = unsent;
        moved = Date.now();
      } else if (Date.now() - moved > stallMs) {
        this.#closeReason = this.#unreadReason(unsent);
        this.#socket.destroy();
      }
    }
  }

  /** Whether the peer's hello listed "rooms" (it takes `room` frames). */
  get rooms(): boolean {
    return this.#peerFeatures.has(FEATURE_ROOMS);
  }

  /**
   * Sends a `room` frame to a peer that takes them; false when it does not, or is gone, or when
   * it answers the peer's request (a gap fill; `answer`: a list or state a `state` asked for)
   * past what one connection is answered ({@linkcode MAX_ANSWER_BYTES}).
   */
  sendRoom(body: RoomFrame, options: { answer?: boolean } = {}): boolean {
    if (!this.#peerFeatures.has(FEATURE_ROOMS) || this.#closed) return false;
    // Dropped, a fill is asked for again or shown as a gap: nothing is lost that was not already.
    const fill = body.op === "msg" && body.fill === true;
    if (fill && this.#unsent > MAX_UNSENT_FILL) {
      return false;
    }
    if (fill || options.answer) {
      if (this.#answered > MAX_ANSWER_BYTES) return false;
      // About its size: the text, or the list's keys, and the rest of the frame.
      this.#answered += 1024 +
        (body.op === "msg"
          ? Buffer.byteLength(body.m.text)
          : body.op === "list"
          ? body.list.members.length * 1500
          : 0);
    }
    this.#write({ type: "room", body });
    return true;
  }

  /** The files this peer offered that wait for the user's answer. */
  get offers(): FileOffer[] {
    return [...this.#offers.values()];
  }

  /**
   * Offers a file; resolves with the offer once its `file` frame is written.
   * The file streams in the background once the peer accepts (at once to a peer
   * whose hello did not list "offer"); `fileSent`, `progress` and `fileFailed`
   * report how it goes.
   */
  async sendFile(path: string, options: { room?: string } = {}): Promise<FileOffer> {
    // Held open from here: what streams is what was hashed, even if the path is removed.
    const file = await Deno.open(path);
    try {
      return await this.#offer(path, file, options.room);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  async #offer(path: string, file: Deno.FsFile, room?: string): Promise<FileOffer> {
    // Its features say whether the file frame is an offer or the start of the data, and
    // whether its SHA-256 goes first (a whole pass over the file before the first byte) or last.
    const heard = await Promise.race([
      this.#hello.promise.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), HELLO_WAIT_MS).unref?.()),
    ]);
    if (!heard || this.#closed) {
      throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
    }
    const info = await file.stat();
    const { sha256, size } = this.#peerFeatures.has(FEATURE_SHA256_AT_END)
      ? { sha256: undefined, size: info.size }
      : await hashFile(file);
    if (this.#closed) throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
    // Each waiting offer holds its file open; the receiver takes no more waiting offers anyway.
    if (this.#outgoing.size >= MAX_OFFERS) {
      throw new E2eError(
        "ERR_USAGE",
        `${MAX_OFFERS} files already wait for "${this.name}" to accept them`,
      );
    }
    // A peer that does not list "offer" confirms nothing it receives, so a file to it is only
    // as large as the window we allow unconfirmed (else it could make us buffer a whole file).
    if (!this.#peerFeatures.has(FEATURE_OFFER) && size > SEND_WINDOW) {
      throw new E2eError(
        "ERR_TOO_LARGE",
        `"${this.name}" does not confirm what it receives (its hello does not list "offer"): ` +
          `files to it are limited to ${formatSize(SEND_WINDOW)}, and this one is ${
            formatSize(size)
          }`,
        { hint: "an up-to-date e2e-chat client takes larger files" },
      );
    }
    if (room !== undefined && !this.#peerFeatures.has(FEATURE_ROOMS)) {
      throw new E2eError("ERR_USAGE", `"${this.name}" does not take room frames nor room files`);
    }
    const id = this.#id();
    const out: Outgoing = {
      path,
      file,
      name: announcedName(path),
      size,
      sha256,
      modified: info.mtime?.getTime(),
      room,
    };
    const inRoom = room === undefined ? {} : { room };
    const digest = sha256 === undefined ? {} : { sha256 };
    // Not awaited: a peer that does not read must never block the one who sends.
    this.#write({ type: "file", id, name: out.name, size, ...digest, ...inRoom });
    if (this.#peerFeatures.has(FEATURE_OFFER)) this.#outgoing.set(id, out);
    else this.#startSending(id, out);
    return { id, name: out.name, bytes: size, ...digest, ...inRoom };
  }

  /**
   * Withdraws the files offered to this peer for `room` that it has not accepted yet (it is no
   * longer a member): `fileFailed` says why, and an accept that comes for one is answered with
   * a `decline` that carries `reason`, the data never sent.
   */
  withdrawOffers(room: string, reason: string): void {
    for (const [id, out] of this.#outgoing) {
      if (out.room !== room) continue;
      this.#outgoing.delete(id);
      out.file.close();
      this.#withdrawn.set(id, reason);
      // Remembered for the last few only: an accept of an older one is malformed, as before.
      if (this.#withdrawn.size > MAX_OFFERS) {
        this.#withdrawn.delete(this.#withdrawn.keys().next().value!);
      }
      this.#options.events.fileFailed(this, {
        id,
        reason: `withdrawn: ${reason}`,
        direction: "out",
      });
    }
  }

  /**
   * Refuses the files this peer offered us for `room` that wait for the user's answer (it is no
   * longer a member, or we are not): `fileFailed` says why, and the peer gets a `decline`.
   */
  refuseOffers(room: string, reason: string): void {
    for (const offer of [...this.#offers.values()]) {
      if (offer.room !== room) continue;
      this.#offers.delete(offer.id);
      this.#refuse(offer, reason);
    }
  }

  /**
   * Gives up the files this peer sends us for `room` that are under way (it is no longer a
   * member, or we are not): nothing of them is kept, `fileFailed` says why, and the peer gets a
   * `decline` so that it stops; what it already sent of them is skipped.
   */
  abortRoomFiles(room: string, reason: string): Promise<void> {
    // Accepted, their partial files still being made: given up once they are (#take).
    for (const [id, of] of this.#startingRooms) {
      if (of === room) this.#startingGivenUp.set(id, reason);
    }
    return this.#giveUpFiles(
      reason,
      `given up: ${reason}`,
      (id) => this.#incomingRooms.get(id) === room,
    );
  }

  /** Accepts the file `id` this peer offered: counts it, answers `accept`, receives it. */
  async acceptOffer(id: string): Promise<void> {
    const refused = await this.#take(this.#takeOffer(id), true);
    if (refused) throw new E2eError("ERR_FORBIDDEN", `File refused: ${refused}`);
  }

  /** Declines the file `id` this peer offered. */
  declineOffer(id: string): void {
    this.#takeOffer(id);
    this.#write({ type: "decline", id, reason: "declined by the user" });
  }

  // The offer `id` that waits for the user, no longer waiting.
  #takeOffer(id: string): FileOffer {
    const offer = this.#offers.get(id);
    if (!offer) {
      throw new E2eError(
        "ERR_NOT_FOUND",
        `No file offer ${JSON.stringify(id)} from "${this.name}"`,
      );
    }
    this.#offers.delete(id);
    return offer;
  }

  #startSending(id: string, out: Outgoing): void {
    this.#waitingSends.set(id, "");
    this.#sending = this.#sending.then(async () => {
      const declined = this.#waitingSends.get(id);
      this.#waitingSends.delete(id);
      try {
        if (declined) {
          throw new E2eError("ERR_FORBIDDEN", `"${this.name}" declined it: ${declined}`);
        }
        await this.#stream(id, out);
        this.#options.events.fileSent?.(this, {
          id,
          name: out.name,
          path: out.path,
          bytes: out.size,
          ...(out.room === undefined ? {} : { room: out.room }),
        });
      } catch (e) {
        this.#options.events.fileFailed(this, {
          id,
          reason: e instanceof Error ? e.message : String(e),
          direction: "out",
        });
      } finally {
        out.file.close();
      }
    });
  }

  // Streams an accepted file. Every write waits for the socket to drain, and to a peer that
  // offers, at most SEND_WINDOW bytes go unconfirmed by its "got"; each wait lasts at most
  // sendStallMs, then the send is aborted.
  async #stream(id: string, out: Outgoing): Promise<void> {
    this.#sendingRoom = out.room;
    const file = out.file;
    // Raw bytes after a "bin" frame when the peer said it takes them; else base64 in JSON.
    const binary = this.#peerFeatures.has(FEATURE_BINARY);
    const windowed = this.#peerFeatures.has(FEATURE_OFFER);
    const confirmed: Confirmed = { bytes: 0, sent: 0 };
    // Before any await: a decline from here on is this send's (#waitingSends let it go).
    this.#confirmed.set(id, confirmed);
    try {
      await file.seek(0, Deno.SeekMode.Start);
      await this.#streamFrom(id, out, file, binary, windowed ? confirmed : undefined);
    } finally {
      this.#confirmed.delete(id);
    }
  }

  async #streamFrom(
    id: string,
    out: Outgoing,
    file: Deno.FsFile,
    binary: boolean,
    confirmed?: Confirmed,
  ): Promise<void> {
    const size = out.size;
    const step = binary ? BIN_CHUNK_BYTES : CHUNK_BYTES;
    // To a peer that takes the SHA-256 at the end, the file is hashed as it streams.
    const hash = out.sha256 === undefined ? createHash("sha256") : undefined;
    let sent = 0;
    // The next chunk is read from disk while the one before goes out.
    let next = readChunk(file, Math.min(step, size));
    const declined = () => {
      const why = this.#confirmed.get(id)?.declined;
      if (why !== undefined) {
        throw new E2eError("ERR_FORBIDDEN", `"${this.name}" declined it: ${why}`);
      }
    };
    while (sent < size) {
      if (this.#closed) {
        throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
      }
      declined();
      while (confirmed && sent - confirmed.bytes >= SEND_WINDOW) {
        await this.#waitForGot(confirmed);
        declined();
      }
      const chunk = await next;
      if (chunk === null) break;
      const n = chunk.length;
      sent += n;
      if (confirmed) confirmed.sent = sent;
      next = readChunk(file, Math.min(step, size - sent));
      hash?.update(chunk);
      if (binary) {
        this.#write({ type: "bin", id, size: n });
        await this.#writeRawAsync(chunk);
      } else {
        await this.#writeAsync({
          type: "chunk",
          id,
          data: Buffer.from(chunk.buffer, chunk.byteOffset, n).toString("base64"),
        });
      }
      this.#progress(id, sent, size, "out");
    }
    // With the SHA-256 at the end, the digest is of what went out: a file changed meanwhile
    // would arrive torn yet verified. Its size and modification time since the offer tell.
    // (A digest sent up front is checked by the receiver, as before.)
    const now = hash ? await file.stat() : undefined;
    if (
      sent !== size ||
      (now && (now.size !== size || now.mtime?.getTime() !== out.modified))
    ) {
      throw new E2eError("ERR_FILE", "The file changed while it was being sent");
    }
    declined();
    this.#unacked.add(id); // its ack may come once the end is out
    await this.#writeAsync({ type: "end", id, ...(hash ? { sha256: hash.digest("hex") } : {}) });
  }

  /** Says bye and closes. */
  close(reason = "closed"): void {
    if (this.#closed) return;
    this.#closeReason = reason;
    this.#flushAcks(); // messages already shown are acknowledged before the bye
    this.#write({ type: "bye" });
    this.#flush();
    this.#socket.end();
  }

  #id(): string {
    return `${this.#idPrefix}-${this.#nextId++}`;
  }

  // The first frame of a turn leaves at once (a lone message or ack waits for nothing); those
  // after it leave together when the turn ends, so a burst of messages or acks is one write.
  #write(frame: Frame): void {
    if (this.#closed || this.#ended) return;
    if (this.#wroteThisTurn || this.#out !== "") {
      if (this.#out === "") queueMicrotask(() => this.#flush());
      this.#out += encodeFrame(frame);
      return;
    }
    this.#wroteThisTurn = true;
    queueMicrotask(() => (this.#wroteThisTurn = false));
    this.#socket.write(encodeFrame(frame));
    this.#limitUnread();
  }

  // Hands the frames of this turn to the socket (before anything else is written or it ends).
  #flush(): void {
    const out = this.#out;
    if (out === "") return;
    this.#out = "";
    if (this.#closed || this.#ended) return;
    this.#socket.write(out);
    this.#limitUnread();
  }

  // A peer that reads nothing while we write to it is cut off once we hold MAX_UNREAD_BYTES for
  // it: nothing more is written, read or handled for it, and both sides see the connection close.
  #limitUnread(): void {
    const held = this.#socket.writableLength;
    if (held <= MAX_UNREAD_BYTES) return;
    this.#closeReason = this.#unreadReason(held);
    this.#socket.destroy();
  }

  #unreadReason(held: number): string {
    return `"${this.name}" reads nothing: closed with ${formatSize(held)} unsent to it`;
  }

  // Whether our side is done (we said bye or error, or the socket is gone): nothing more is
  // written, and what the peer still sends is neither shown nor acknowledged.
  get #ended(): boolean {
    return this.#socket.destroyed || this.#socket.writableEnded;
  }

  // Bytes (about) we hold for the peer that it has not read yet.
  get #unsent(): number {
    return this.#socket.writableLength + this.#out.length;
  }

  // Waits for the socket to drain, so a large file never piles up in memory.
  async #writeAsync(frame: Frame): Promise<void> {
    await this.#writeRawAsync(encodeFrame(frame));
  }

  async #writeRawAsync(data: string | Uint8Array): Promise<void> {
    if (this.#closed || this.#ended) {
      throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
    }
    this.#flush();
    const more = this.#socket.write(data);
    this.#limitUnread();
    if (more) return;
    await this.#progressOrAbort(
      (done) => {
        this.#socket.on("drain", done);
        this.#socket.on("close", done);
        return () => {
          this.#socket.off("drain", done);
          this.#socket.off("close", done);
        };
      },
    );
  }

  // Waits until the peer confirms more of a file, at most sendStallMs.
  async #waitForGot(confirmed: Confirmed): Promise<void> {
    await this.#progressOrAbort((done) => {
      confirmed.wake = done;
      this.#socket.on("close", done);
      return () => {
        confirmed.wake = undefined;
        this.#socket.off("close", done);
      };
    });
    if (this.#closed || this.#socket.destroyed) {
      throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
    }
  }

  // Resolves when `watch` calls done; after sendStallMs without it, aborts the connection.
  async #progressOrAbort(watch: (done: () => void) => () => void): Promise<void> {
    const stallMs = this.#options.sendStallMs ?? SEND_STALL_MS;
    const moved = await new Promise<boolean>((resolve) => {
      let unwatch = () => {};
      const timer = setTimeout(() => {
        unwatch();
        resolve(false);
      }, stallMs);
      unwatch = watch(() => {
        clearTimeout(timer);
        unwatch();
        resolve(true);
      });
    });
    if (moved) return;
    // The peer read nothing for that long. In the middle of a frame nothing else can be
    // said on this stream, so the connection goes: both sides see it, and nothing waits.
    const why = `sending made no progress for ${stallMs / 1000} s: "${this.name}" reads nothing`;
    this.#closeReason = why;
    this.#socket.destroy();
    throw new E2eError("ERR_NETWORK", `Aborted: ${why}`);
  }

  #onData(bytes: Uint8Array): void {
    if (this.#holding) {
      this.#held.push(bytes);
      this.#heldBytes += bytes.length;
      // Not parsed yet, so all of it counts as the file's (a slow link sending both ways holds).
      if (!this.#unholding) this.#windowBytes += bytes.length;
      if (this.#heldBytes > HOLD_READ_BYTES) {
        pauseReading(this.#socket);
        this.#heldPaused = true;
      }
      return;
    }
    let offset = 0;
    let text = true; // until the bytes up to a newline fail to decode as text in one go
    try {
      while (offset < bytes.length && !this.#broken) {
        if (!this.#raw && text && this.#lines.empty) {
          const used = this.#wholeLines(bytes.subarray(offset));
          offset += used;
          if (used > 0) continue;
          text = false; // the line-by-line path below, for the rest of these bytes
          if (offset >= bytes.length) break;
        }
        if (this.#raw) {
          // The payload of a "bin" frame: bytes, not lines. Gathered into one buffer (at most
          // 1 MiB) as the TLS records arrive, so the file gets one write per frame: a write of
          // 64 KiB costs Deno's file thread several times what its share of 1 MiB does.
          const raw = this.#raw;
          this.#fileDataAt = Date.now();
          const take = Math.min(raw.bytes.length - raw.at, bytes.length - offset);
          if (!this.#unholding) this.#windowBytes += take;
          raw.bytes.set(bytes.subarray(offset, offset + take), raw.at);
          offset += take;
          raw.at += take;
          if (raw.at === raw.bytes.length) {
            this.#raw = undefined;
            this.#enqueue({ type: "raw", id: raw.id, bytes: raw.bytes });
          }
          continue;
        }
        const { line, used } = this.#lines.pushLine(bytes.subarray(offset));
        offset += used;
        if (line === null) continue;
        const frame = decodeFrame(line);
        if (frame.type === "bin") this.#startRaw(frame);
        this.#enqueue(frame);
      }
    } catch (e) {
      // Bad input fails the connection in order: frames before it are still handled.
      this.#broken = true;
      this.#enqueue({ type: "fail", error: e });
    }
  }

  // The complete lines at the start of `bytes` decoded in one go (the usual case: a burst of
  // messages or acks); returns how many bytes they took. Stops after a `bin` frame, whose payload
  // follows as bytes, and leaves everything to the line-by-line path when the bytes up to the
  // last newline are not all text.
  #wholeLines(bytes: Uint8Array): number {
    const last = bytes.lastIndexOf(0x0a);
    if (last < 0 || last + 1 > MAX_LINE_BYTES) return 0;
    let text: string;
    try {
      text = utf8.decode(bytes.subarray(0, last));
    } catch {
      return 0; // a payload after a `bin` frame, or not UTF-8: line by line says which
    }
    let start = 0;
    while (start <= text.length && !this.#broken) {
      let nl = text.indexOf("\n", start);
      if (nl < 0) nl = text.length;
      const frame = decodeFrame(text.slice(start, nl));
      start = nl + 1;
      if (frame.type === "bin") {
        this.#startRaw(frame);
        this.#enqueue(frame);
        return Buffer.byteLength(text.slice(0, nl)) + 1;
      }
      this.#enqueue(frame);
    }
    return last + 1;
  }

  // Decided as the line is read, not in the queue: the bytes that follow are the payload.
  // A payload under half the maximum gets a buffer of its own size: a peer's burst of tiny
  // frames must not make us set aside 1 MiB for each (memory far beyond the bytes it sends).
  #startRaw(frame: Frame & { type: "bin" }): void {
    const buffer = frame.size < MAX_BINARY_BYTES / 2
      ? new Uint8Array(frame.size)
      : this.#spare.pop() ?? new Uint8Array(MAX_BINARY_BYTES);
    this.#raw = { id: frame.id, bytes: buffer.subarray(0, frame.size), at: 0 };
  }

  #enqueue(item: Frame | RawPiece | Failure): void {
    const piece = item.type === "raw" || item.type === "chunk";
    if (piece) {
      this.#filePieces++;
      this.#fileDataAt = Date.now();
      // A raw piece's bytes were counted as they were read; a chunk's count once it is whole.
      if (item.type === "chunk" && !this.#unholding) {
        this.#windowBytes += Math.floor(item.data.length * 3 / 4);
      }
    }
    // The other side's refusal in place of its hello (docs/PROTOCOL.md §1), where it negotiated
    // one: taken at once, as its close follows at once, and what is queued is not handled after
    // a close. Nothing after it is read; we close too.
    if (
      item.type === "refused" && this.#queued === 0 && !this.#helloSeen &&
      this.#socket.alpnProtocol === ALPN_REFUSALS
    ) {
      this.#refusal = item.reason;
      this.#closeReason = `it refused us: ${item.reason}`;
      this.#broken = true;
      this.#socket.end();
      return;
    }
    // Messages and acks need no await: with nothing queued before them they are
    // handled at once, without a promise per frame (most of a chat's traffic).
    if (
      this.#queued === 0 && this.#helloSeen &&
      (item.type === "msg" || item.type === "ack" || item.type === "acks")
    ) {
      if (this.#closed || this.#failed || this.#ended) return;
      try {
        this.#handleNow(item);
      } catch (e) {
        this.#fail(e);
      }
      return;
    }
    this.#queued++;
    if (this.#queued >= MAX_QUEUED) {
      pauseReading(this.#socket);
      this.#watch();
    }
    this.#queue = this.#queue.then(async () => {
      if (this.#closed || this.#failed || this.#ended) return;
      try {
        if (item.type === "fail") throw item.error;
        if (item.type === "raw") await this.#handleRaw(item);
        else await this.#handle(item);
      } catch (e) {
        this.#fail(e);
      } finally {
        if (piece) {
          this.#filePieces--;
          this.#fileDataAt = Date.now();
        }
        this.#queued--;
        this.#maybeResume();
      }
    });
  }

  async #handleRaw(piece: RawPiece): Promise<void> {
    const file = this.#incoming.get(piece.id);
    if (!file && this.#dropped.has(piece.id)) return; // counted at its bin frame
    if (!file) throw malformed("binary data for a file never announced");
    await file.write(piece.bytes);
    // Written: its buffer takes the next payload (fewer allocations, less garbage collection).
    if (this.#spare.length < 4 && piece.bytes.buffer.byteLength === MAX_BINARY_BYTES) {
      this.#spare.push(new Uint8Array(piece.bytes.buffer));
    }
    this.#progress(piece.id, file.received, file.size, "in");
    this.#reportGot(piece.id, file.received);
  }

  async #handle(frame: Frame): Promise<void> {
    if (this.#refusal !== undefined) return; // what came after a refusal is not read
    if (!this.#helloSeen) {
      if (frame.type !== "hello") throw malformed("the first frame must be hello");
      this.#helloSeen = true;
      this.#peerFeatures = new Set(frame.features ?? []);
      this.#hello.resolve();
      if (frame.checkpoint !== undefined) this.#options.events.checkpoint?.(this, frame.checkpoint);
      this.#options.events.hello?.(this);
      return;
    }
    const events = this.#options.events;
    switch (frame.type) {
      case "hello":
        throw malformed("a second hello");
      case "refused":
        throw malformed("a refusal after the hello");
      case "msg":
      case "ack":
      case "acks":
        return this.#handleNow(frame);
      case "file": {
        if (this.quarantined) {
          throw new E2eError(
            "ERR_FORBIDDEN",
            "Files are refused until your changed key is trusted",
          );
        }
        // Accepted and still opening its partial file counts too: a second offer taken then
        // would take the id's place, its first partial file and quota never given back.
        if (
          this.#incoming.has(frame.id) || this.#offers.has(frame.id) ||
          this.#starting.has(frame.id)
        ) {
          throw malformed("a file id used twice");
        }
        const offering = this.#peerFeatures.has(FEATURE_OFFER);
        if (!offering && this.#incoming.size >= MAX_INCOMING_FILES) {
          throw malformed("too many files at once");
        }
        const offer: FileOffer = {
          id: frame.id,
          name: frame.name,
          bytes: frame.size,
          ...(frame.sha256 === undefined ? {} : { sha256: frame.sha256 }),
          ...(frame.room === undefined ? {} : { room: frame.room }),
        };
        const verdict = this.#options.files?.decide(this, offer, offering) ?? "accept";
        if (verdict === "accept") {
          const refused = await this.#take(offer, offering);
          if (refused && !offering) throw refusal(refused);
        } else if (verdict === "ask" && offering) {
          if (this.#offers.size >= MAX_OFFERS) {
            this.#refuse(offer, `${MAX_OFFERS} offers already wait for an answer`);
          } else {
            this.#offers.set(offer.id, offer);
            events.offer?.(this, offer);
          }
        } else {
          const why = verdict === "ask"
            ? 'it was not offered (the sender\'s hello does not list "offer")'
            : verdict.refuse;
          if (offering) this.#refuse(offer, why);
          else {
            events.fileFailed(this, { id: offer.id, reason: `refused: ${why}`, direction: "in" });
            throw refusal(why);
          }
        }
        return;
      }
      case "accept": {
        const withdrawn = this.#withdrawn.get(frame.id);
        if (withdrawn !== undefined) {
          this.#withdrawn.delete(frame.id);
          this.#write({ type: "decline", id: frame.id, reason: `withdrawn: ${withdrawn}` });
          return;
        }
        const out = this.#outgoing.get(frame.id);
        if (!out) throw malformed("an accept for a file never offered");
        this.#outgoing.delete(frame.id);
        this.#startSending(frame.id, out);
        return;
      }
      case "got": {
        // Unknown ids are a file that just finished or failed here: nothing to wake.
        const confirmed = this.#confirmed.get(frame.id);
        // Never more than we sent: a peer confirming bytes it never got (and reading nothing)
        // would open the window for the whole file, all of it held in memory for it.
        const bytes = confirmed ? Math.min(frame.bytes, confirmed.sent) : 0;
        if (confirmed && bytes > confirmed.bytes) {
          confirmed.bytes = bytes;
          confirmed.wake?.();
        }
        return;
      }
      case "decline": {
        // One we stream: the receiver gave up on it (it got no data for a while), we stop.
        const streaming = this.#confirmed.get(frame.id);
        if (streaming) {
          streaming.declined = frame.reason || "no reason given";
          streaming.wake?.();
          return;
        }
        // One waiting its turn behind the one streaming (the receiver gave up on both): it is
        // not streamed when its turn comes.
        if (this.#waitingSends.has(frame.id)) {
          this.#waitingSends.set(frame.id, frame.reason || "no reason given");
          return;
        }
        // One we no longer wait for (it is done) is not the peer's mistake.
        this.#withdrawn.delete(frame.id);
        const out = this.#outgoing.get(frame.id);
        if (!out) return await this.#withdrawnBySender(frame.id, frame.reason);
        this.#outgoing.delete(frame.id);
        out.file.close();
        events.fileFailed(this, {
          id: frame.id,
          reason: `"${this.name}" declined it: ${frame.reason || "no reason given"}`,
          direction: "out",
        });
        return;
      }
      case "bin":
        // Its payload follows as "raw" pieces (see #onData); the file must be announced.
        if (!this.#incoming.has(frame.id)) {
          if (this.#dropped.has(frame.id)) return this.#skip(frame.id, frame.size);
          throw malformed("binary data for a file never announced");
        }
        return;
      case "chunk": {
        const file = this.#incoming.get(frame.id);
        if (!file && this.#dropped.has(frame.id)) {
          return this.#skip(frame.id, Buffer.byteLength(frame.data, "base64"));
        }
        if (!file) throw malformed("a chunk for a file never announced");
        await file.write(Buffer.from(frame.data, "base64"));
        this.#progress(frame.id, file.received, file.size, "in");
        this.#reportGot(frame.id, file.received);
        return;
      }
      case "end": {
        const file = this.#incoming.get(frame.id);
        // Given up (it stalled): the sender had sent it all meanwhile. Nothing is kept, no ack.
        if (!file && this.#dropped.delete(frame.id)) return;
        if (!file) throw malformed("an end for a file never announced");
        const room = this.#incomingRooms.get(frame.id);
        const roomId = this.#incomingRoomIds.get(frame.id);
        const release = this.#takeIncoming(frame.id);
        try {
          // The SHA-256 comes once: with the file frame (as before), or (sha256-at-end) here.
          if ((file.sha256 === undefined) === (frame.sha256 === undefined)) {
            await file.abort();
            throw malformed(
              file.sha256 === undefined
                ? "an end without the sha256 its file frame left out"
                : "an end with a second sha256",
            );
          }
          const path = await file.finish(frame.sha256);
          try {
            // As a message from the mailbox: acknowledged only once its owner's records of it
            // (quota ledger, history line) are on disk, or a crash after the ack loses them.
            await events.file(this, {
              id: frame.id,
              // The name it was saved under is the one shown and downloaded under.
              ...receivedName(file.announced, path),
              path,
              bytes: file.size,
              sha256: file.sha256!,
              ...(room === undefined ? {} : { room }),
              ...(roomId === undefined ? {} : { roomId }),
            });
          } catch (e) {
            await Deno.remove(path).catch(() => {}); // not kept: the sender hears no ack
            throw e;
          }
          this.#write({ type: "ack", id: frame.id });
        } catch (e) {
          release?.();
          events.fileFailed(this, {
            id: frame.id,
            reason: e instanceof Error ? e.message : String(e),
            direction: "in",
          });
          throw e;
        }
        return;
      }
      case "room":
        // A peer whose key changed is not heard in rooms either, until the user trusts it.
        if (this.quarantined) return;
        events.room?.(this, frame.body);
        return;
      case "bye":
        this.#closeReason = "the peer said bye";
        this.#flushAcks();
        this.#flush();
        this.#socket.end();
        return;
      case "error":
        this.#closeReason = `the peer reported an error: ${frame.message}`;
        this.#flushAcks();
        this.#flush();
        this.#socket.end();
        return;
    }
  }

  #delivered(id: string, now: number): void {
    const at = this.#sentAt.get(id);
    this.#sentAt.delete(id);
    this.#options.events.delivered(this, id, at === undefined ? undefined : now - at);
  }

  // Messages and acknowledgements: handled without a promise (most of a chat's traffic).
  #handleNow(frame: Frame & { type: "msg" | "ack" | "acks" }): void {
    const events = this.#options.events;
    switch (frame.type) {
      case "msg":
        if (this.quarantined) {
          events.held(this, "message");
          return;
        }
        // Acknowledged before it is shown (showing may block on a slow terminal or pipe): at
        // once, or to a peer that takes `acks`, with the others of this read in one frame.
        if (this.#peerFeatures.has(FEATURE_ACKS)) this.#ack(frame.id);
        else {
          this.#write({ type: "ack", id: frame.id });
          this.#holdIfUnread();
        }
        events.message(this, frame.id, frame.text);
        return;
      case "ack":
        this.#acknowledged([frame.id]);
        return;
      case "acks":
        this.#acknowledged(frame.ids);
        return;
    }
  }

  // Reports `ids` delivered, if each is one we sent that waits for its ack (and is named once):
  // otherwise the whole frame is refused, and nothing of it reported.
  #acknowledged(ids: string[]): void {
    for (let i = 0; i < ids.length; i++) {
      if (!this.#unacked.delete(ids[i])) {
        for (let j = 0; j < i; j++) this.#unacked.add(ids[j]);
        throw malformed("an ack for an id not sent, or acknowledged already");
      }
    }
    const now = performance.now();
    for (const id of ids) this.#delivered(id, now);
  }

  // Acknowledges a message in an `acks` frame: a lone message at once, before it is shown; the
  // messages of one read together as the turn ends; those that waited in the queue (we were
  // busy) together once this turn of the event loop is over.
  #ack(id: string): void {
    const first = this.#acks.push(id) === 1;
    if (this.#acks.length >= MAX_ACK_IDS) this.#flushAcks();
    else if (!first) return;
    else if (this.#queued > 0) setTimeout(() => this.#flushAcks(), 0);
    else if (this.#wroteThisTurn) queueMicrotask(() => this.#flushAcks());
    else this.#flushAcks();
  }

  #flushAcks(): void {
    if (this.#acks.length === 0) return;
    const ids = this.#acks;
    this.#acks = [];
    this.#write({ type: "acks", ids });
    this.#flush(); // before the events of this turn reach a (maybe slow) stdout
    this.#holdIfUnread();
  }

  // A peer that sends but never reads would grow our unsent acks without end: what it sends is
  // held, unhandled (so no more acks), until what we wrote drains. Up to HOLD_READ_BYTES of it is
  // still read, then reading stops: a peer that holds ours for the same reason (both wrote a lot
  // at once) drains meanwhile, and reads us again — stopping at once could leave both waiting.
  #holdIfUnread(): void {
    if (this.#unsent > MAX_UNSENT && !this.#holding) {
      this.#holding = true; // one drain listener, however many acks wait
      this.#watch();
      this.#socket.once("drain", () => {
        this.#holding = false;
        this.#unhold();
        this.#maybeResume();
      });
    }
  }

  // Handles what was read while held, in order; held again on the way, the rest waits again.
  #unhold(): void {
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    this.#unholding = true;
    try {
      for (const bytes of held) this.#onData(bytes);
    } finally {
      this.#unholding = false;
    }
  }

  // Tells a sender that waits for it (one that offers) how much of file `id` is written.
  #reportGot(id: string, bytes: number): void {
    if (!this.#peerFeatures.has(FEATURE_OFFER)) return;
    const last = this.#reported.get(id) ?? 0;
    if (bytes - last < GOT_EVERY) return;
    this.#reported.set(id, bytes);
    this.#write({ type: "got", id, bytes });
  }

  // Counts and starts an accepted file, then (to a peer that offers) answers accept;
  // returns why it was refused instead, after telling both sides.
  async #take(offer: FileOffer, offering: boolean): Promise<string | undefined> {
    const taken = this.#options.files?.take(this, offer) ?? (() => {});
    let why = typeof taken === "function" ? undefined : taken.refuse;
    if (!why && this.#incoming.size >= MAX_INCOMING_FILES) {
      why = `${MAX_INCOMING_FILES} files are already being received from "${this.name}"`;
    }
    if (why) {
      if (typeof taken === "function") taken();
      if (offering) this.#refuse(offer, why);
      else {
        this.#options.events.fileFailed(this, {
          id: offer.id,
          reason: `refused: ${why}`,
          direction: "in",
        });
      }
      return why;
    }
    const release = taken as () => void;
    // The room's id as it is now, when it is accepted: the file goes to that room's history.
    const roomId = offer.room === undefined ? undefined : this.#options.files?.roomId?.(offer.room);
    this.#starting.add(offer.id);
    if (offer.room !== undefined) this.#startingRooms.set(offer.id, offer.room);
    try {
      const file = await IncomingFile.start(
        this.#options.downloads,
        offer.name,
        offer.bytes,
        offer.sha256,
      );
      // Its room's files given up (abortRoomFiles) while the partial file was made: given up too,
      // as those under way were (the sender told to stop, what it sends of it skipped).
      const givenUp = this.#startingGivenUp.get(offer.id);
      if (givenUp !== undefined && !this.#closed) {
        this.#dropped.set(offer.id, offer.bytes);
        if (this.#dropped.size > MAX_DROPPED) {
          this.#dropped.delete(this.#dropped.keys().next().value!);
        }
        this.#write({ type: "decline", id: offer.id, reason: givenUp });
        await file.abort();
        release();
        const reason = `given up: ${givenUp}`;
        this.#options.events.fileFailed(this, { id: offer.id, reason, direction: "in" });
        return reason;
      }
      // Closed while the partial file was made: #onClose aborted what it found, not this one.
      if (this.#closed) {
        await file.abort();
        throw new E2eError(
          "ERR_NETWORK",
          `Cannot receive ${JSON.stringify(announcedName(offer.name))} from "${this.name}": ` +
            `the connection closed`,
        );
      }
      this.#incoming.set(offer.id, file);
      this.#releases.set(offer.id, release);
      if (offer.room !== undefined) {
        this.#incomingRooms.set(offer.id, offer.room);
        if (roomId !== undefined) this.#incomingRoomIds.set(offer.id, roomId);
      }
    } catch (e) {
      release();
      throw e;
    } finally {
      this.#starting.delete(offer.id);
      this.#startingRooms.delete(offer.id);
      this.#startingGivenUp.delete(offer.id);
    }
    if (offering) this.#write({ type: "accept", id: offer.id });
    this.#watch();
    // The first file's clocks start now; one more accepted does not restart the others'.
    if (this.#incoming.size === 1) {
      this.#fileDataAt = this.#tickAt = Date.now();
      this.#windowBytes = this.#windowMs = 0;
    }
    if (this.#fileTimer === undefined) {
      const every = Math.min(1_000, this.#receiveStallMs / 5, this.#receiveWindowMs / 5);
      this.#fileTimer = setInterval(() => this.#fileTick(), every);
    }
    return undefined;
  }

  // A decline from the sender of a file we accepted and have nothing of yet: it withdrew the
  // offer (we are no longer in the room it was for), so we stop waiting for the data.
  // Takes the incoming file `id` out of every table that holds it; returns its quota's release.
  #takeIncoming(id: string): (() => void) | undefined {
    this.#incoming.delete(id);
    this.#incomingRooms.delete(id);
    this.#incomingRoomIds.delete(id);
    this.#reported.delete(id);
    const release = this.#releases.get(id);
    this.#releases.delete(id);
    return release;
  }

  async #withdrawnBySender(id: string, reason: string): Promise<void> {
    const file = this.#incoming.get(id);
    if (!file || file.received > 0) return;
    const release = this.#takeIncoming(id);
    await file.abort();
    release?.();
    this.#options.events.fileFailed(this, {
      id,
      reason: `"${this.name}" withdrew it: ${reason || "no reason given"}`,
      direction: "in",
    });
  }

  // Declines an offer on our side's rules: the peer gets the reason, and so does our user.
  #refuse(offer: FileOffer, why: string): void {
    this.#options.events.fileFailed(this, {
      id: offer.id,
      reason: `refused: ${why}`,
      direction: "in",
    });
    this.#write({ type: "decline", id: offer.id, reason: `refused: ${why}` });
  }

  #maybeResume(): void {
    if (this.#queued < MAX_QUEUED / 2 && !this.#closed && !this.#broken) {
      // Our pause: not the sender's time for the stall rule, nor for the rate floor unless it was
      // the peer's doing (it reads nothing of ours).
      if (this.#socket.isPaused()) {
        this.#fileDataAt = Date.now();
        if (!this.#heldPaused) this.#oursAt = this.#fileDataAt;
      }
      // While what we wrote waits (declines, acks), what the peer sends is held, not handled;
      // it is still read up to HOLD_READ_BYTES (see #holdIfUnread).
      if (this.#unsent > MAX_UNSENT) this.#holdIfUnread();
      if (!this.#holding || this.#heldBytes <= HOLD_READ_BYTES) {
        resumeReading(this.#socket);
        this.#heldPaused = false;
      }
    }
  }

  get #receiveStallMs(): number {
    return this.#options.receiveStallMs ?? STALL_MS;
  }

  get #receiveWindowMs(): number {
    return this.#options.receiveWindowMs ?? RATE_WINDOW_MS;
  }

  // Any frame, ours or the peer's, keeps the socket's own timeout (#watch) from firing: a sender
  // could keep an accepted file half-written for ever with a frame now and then. So incoming
  // files that get no data for receiveStallMs are given up — counted only while the wait is the
  // sender's: not while we stopped reading (our queue is full, or we hold what it sends because it
  // reads nothing of ours), nor while what it sent waits to be written, nor while what we wrote
  // (a "got" it may wait for) is still being read by it. So are files that get less than
  // receiveMinBytes in a receiveWindowMs (a trickle, which the stall rule never sees), counted
  // only while we do not wait for ourselves (a full queue, a slow disk): a peer that reads nothing
  // of ours, or reads it slowly, would otherwise be spared for as long as it likes. (A sender that
  // waits that long for a "got" aborts its send itself, after its own 30 s.)
  #fileTick(): void {
    if (this.#closed || this.#incoming.size === 0) {
      clearInterval(this.#fileTimer);
      this.#fileTimer = undefined;
      return;
    }
    const now = Date.now();
    const since = Math.max(this.#tickAt, this.#oursAt); // the sender's time runs from there
    this.#tickAt = now;
    const unsent = this.#socket.writableLength;
    const reading = unsent > 0 && unsent !== this.#lastUnsent;
    this.#lastUnsent = unsent;
    const minBytes = this.#options.receiveMinBytes ?? RATE_MIN_BYTES;
    const ours = (this.#socket.isPaused() && !this.#heldPaused) || this.#filePieces > 0;
    if (ours) this.#oursAt = now;
    if (this.#holding || this.#socket.isPaused() || this.#filePieces > 0 || reading) {
      this.#fileDataAt = now;
    }
    if (now - this.#fileDataAt >= this.#receiveStallMs) {
      const seconds = this.#receiveStallMs / 1000;
      this.#giveUpFiles(
        `stalled: no data for ${seconds} s`,
        `no data from "${this.name}" for ${seconds} s: given up`,
      ).catch(() => {});
    } else if (!ours && (this.#windowMs += now - since) >= this.#receiveWindowMs) {
      const least = `${formatSize(minBytes)} in ${this.#receiveWindowMs / 1000} s`;
      if (this.#windowBytes < minBytes) {
        this.#giveUpFiles(
          `too slow: under ${least}`,
          `too slow: "${this.name}" sent under ${least}: given up`,
        ).catch(() => {});
      }
      this.#windowBytes = this.#windowMs = 0;
    }
  }

  // Gives up the incoming files (they stalled, or trickled): nothing kept, the quota given back,
  // our user told (`why`), and the sender told with a decline (`reason`) so that it stops. What
  // it already sent of them is skipped; the connection stays.
  async #giveUpFiles(
    reason: string,
    why: string,
    which: (id: string) => boolean = () => true,
  ): Promise<void> {
    const files = [...this.#incoming].filter(([id]) => which(id));
    // All at once, before the first await: data of any of them handled meanwhile is skipped.
    const releases = files.map(([id, file]) => {
      this.#dropped.set(id, file.size - file.received);
      if (this.#dropped.size > MAX_DROPPED) {
        this.#dropped.delete(this.#dropped.keys().next().value!);
      }
      const release = this.#takeIncoming(id);
      this.#write({ type: "decline", id, reason });
      return release;
    });
    for (const [i, [id, file]] of files.entries()) {
      await file.abort();
      releases[i]?.();
      this.#options.events.fileFailed(this, { id, reason: why, direction: "in" });
    }
  }

  // Data of a file given up: read and dropped, up to the bytes it had left.
  #skip(id: string, bytes: number): void {
    const left = this.#dropped.get(id)! - bytes;
    if (left < 0) throw malformed("more file data than announced");
    this.#dropped.set(id, left);
  }

  // A peer that goes silent in the middle of a file, or while we hold its data back,
  // is given up on. (Deno's node:tls can miss the close of a socket paused for
  // back-pressure; without this such a transfer would hang for ever.)
  #watch(): void {
    this.#socket.setTimeout(STALL_MS); // the one "timeout" listener is #onStall
  }

  #onStall(): void {
    const held = this.#holding || this.#socket.isPaused();
    if (this.#incoming.size > 0 || held) {
      // Held back because it reads nothing of what we wrote (acks, declines), it is told so.
      this.#closeReason = held && this.#socket.writableNeedDrain
        ? this.#unreadReason(this.#socket.writableLength)
        : `the peer sent nothing for ${STALL_MS / 1000} s in the middle of a transfer`;
      this.#socket.destroy();
    } else {
      this.#socket.setTimeout(0);
    }
  }

  #progress(id: string, bytes: number, total: number, direction: "in" | "out"): void {
    const now = Date.now();
    if (bytes < total && now - this.#lastProgress < 250) return;
    this.#lastProgress = now;
    const room = direction === "in" ? this.#incomingRooms.get(id) : this.#sendingRoom;
    this.#options.events.progress(this, {
      id,
      bytes,
      total,
      direction,
      ...(room === undefined ? {} : { room }),
    });
  }

  // Malformed input: one error frame, then the connection closes. The client goes on.
  #fail(e: unknown): void {
    if (this.#closed || this.#failed) return;
    this.#failed = true;
    const message = e instanceof E2eError ? e.message : "Internal error";
    this.#closeReason = `closed after bad input: ${message}`;
    this.#flushAcks(); // the frames before the bad one were handled: their messages shown
    // Our disk's trouble (it names our folders: the downloads folder, those above it) is for our
    // user, whether a file failed to start or to end; the peer hears less.
    const told = e instanceof E2eError && e.code === "ERR_FILE"
      ? "The receiver could not keep the file"
      : message;
    this.#write({ type: "error", message: told });
    this.#flush();
    this.#socket.end();
    pauseReading(this.#socket);
    setTimeout(() => this.#socket.destroy(), 2_000).unref?.();
  }

  async #onClose(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#fileTimer);
    this.#fileTimer = undefined;
    await this.#queue.catch(() => {});
    for (const [id, file] of this.#incoming) {
      await file.abort();
      this.#releases.get(id)?.();
      this.#options.events.fileFailed(this, {
        id,
        reason: "the connection closed",
        direction: "in",
      });
    }
    this.#incoming.clear();
    this.#incomingRooms.clear();
    this.#releases.clear();
    for (const out of this.#outgoing.values()) out.file.close();
    for (const id of [...this.#offers.keys(), ...this.#outgoing.keys()]) {
      this.#options.events.fileFailed(this, {
        id,
        reason: "the connection closed",
        direction: this.#offers.has(id) ? "in" : "out",
      });
    }
    this.#offers.clear();
    this.#outgoing.clear();
    this.#hello.resolve();
    this.#options.events.closed(this, this.#closeReason);
  }
}

/** What the peer confirmed ("got") of a file we stream, and what we sent of it. */
interface Confirmed {
  bytes: number;
  sent: number;
  wake?: () => void;
  /** Why the receiver declined it while it streamed: the send stops. */
  declined?: string;
}

/** A file we offered, waiting for the peer's accept. */
interface Outgoing {
  path: string;
  file: Deno.FsFile;
  name: string;
  size: number;
  /** Announced up front; undefined when it goes in the `end` frame (hashed as it streams). */
  sha256?: string;
  /** Its modification time when offered, ms (a change after that fails the send). */
  modified?: number;
  room?: string;
}

// A file refused from a peer that streams without asking: its data is already on the way,
// so the connection ends with an error frame that says why.
function refusal(why: string): E2eError {
  return new E2eError("ERR_FORBIDDEN", `File refused: ${why}`);
}

// Up to `want` bytes of `file` from where it is, in a buffer of their own (the socket may still
// hold the one before); null at its end. A read left pending when a send fails rejects quietly.
function readChunk(file: Deno.FsFile, want: number): Promise<Uint8Array | null> {
  if (want === 0) return Promise.resolve(null);
  const buffer = new Uint8Array(want);
  const read = file.read(buffer).then((n) => (n === null ? null : buffer.subarray(0, n)));
  read.catch(() => {});
  return read;
}

function malformed(why: string): E2eError {
  return new E2eError("ERR_BAD_REQUEST", `Malformed frame: ${why}`);
}
