/**
 * One peer connection after its checks passed: protocol v1 framing, hello,
 * messages, acks and files, with back-pressure both ways so neither side ever
 * holds more than a few frames (or a whole file) in memory.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { TLSSocket } from "node:tls";
import { E2eError } from "../lib/errors.ts";
import {
  decodeFrame,
  encodeFrame,
  FEATURE_BINARY,
  type Frame,
  LineSplitter,
} from "../lib/frames.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import { announcedName, hashFile, IncomingFile } from "./files.ts";

/** What a connection reports to its owner. */
export interface PeerEvents {
  /** A message arrived. */
  message(peer: PeerConnection, id: string, text: string): void;
  /** A message or file we sent was acknowledged. */
  delivered(peer: PeerConnection, id: string, ms?: number): void;
  /** A file arrived and matched its SHA-256. */
  file(
    peer: PeerConnection,
    info: { id: string; name: string; path: string; bytes: number; sha256: string },
  ): void;
  /** Progress of a file transfer. */
  progress(
    peer: PeerConnection,
    info: { id: string; bytes: number; total: number; direction: "in" | "out" },
  ): void;
  /** A file transfer failed. */
  fileFailed(
    peer: PeerConnection,
    info: { id: string; reason: string; direction: "in" | "out" },
  ): void;
  /** The connection closed. */
  closed(peer: PeerConnection, reason: string): void;
  /** A message from a quarantined peer was held back (not shown, not acknowledged). */
  held(peer: PeerConnection, what: "message"): void;
  /** The peer's hello carried its latest checkpoint of the CA's issuance log. */
  checkpoint?(peer: PeerConnection, text: string): void;
}

/** Options of {@linkcode PeerConnection}. */
export interface PeerOptions {
  /** Where received files go. */
  downloads: string;
  /** Event sink. */
  events: PeerEvents;
  /** Our latest checkpoint of the issuance log, sent in our hello. Default: none. */
  checkpoint?: string;
}

const MAX_QUEUED = 32; // frames parsed but not handled before we stop reading
const MAX_INCOMING_FILES = 8;
const STALL_MS = 5_000;
const MAX_UNSENT = 1024 * 1024; // bytes we let wait for a peer that does not read
const CHUNK_BYTES = 512 * 1024; // within MAX_CHUNK_BYTES (base64) and MAX_BINARY_BYTES (bin)

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
  #raw?: { id: string; size: number; remaining: number; pieces: Uint8Array[] };
  #closed = false;
  #failed = false;
  #broken = false; // no more input is parsed
  #closeReason = "closed";
  #incoming = new Map<string, IncomingFile>();
  #nextId = 1;
  #lastProgress = 0;

  /** Wraps a socket whose peer was checked as `name` with `certificate`. */
  constructor(socket: TLSSocket, name: string, certificate: CertificateInfo, options: PeerOptions) {
    this.#socket = socket;
    this.name = name;
    this.certificate = certificate;
    this.#options = options;
  }

  /** Whether the connection is still open. */
  get open(): boolean {
    return !this.#closed;
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
      features: [FEATURE_BINARY],
      ...(checkpoint === undefined ? {} : { checkpoint }),
    });
  }

  /** Sends a message; returns its id. */
  sendMessage(text: string): string {
    const id = this.#id();
    this.#sentAt.set(id, performance.now());
    if (this.#sentAt.size > 10_000) this.#sentAt.delete(this.#sentAt.keys().next().value!);
    this.#write({ type: "msg", id, text });
    return id;
  }

  /** Streams a file in chunks; resolves with its id when the last chunk is written. */
  async sendFile(path: string): Promise<string> {
    const id = this.#id();
    const { sha256, size } = await hashFile(path);
    await this.#writeAsync({ type: "file", id, name: announcedName(path), size, sha256 });
    using file = await Deno.open(path);
    // Raw bytes after a "bin" frame when the peer said it takes them; else base64 in JSON.
    const binary = this.#peerFeatures.has(FEATURE_BINARY);
    let sent = 0;
    while (sent < size) {
      if (this.#closed) {
        throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
      }
      const buffer = new Uint8Array(Math.min(CHUNK_BYTES, size - sent));
      const n = await file.read(buffer);
      if (n === null) break;
      sent += n;
      if (binary) {
        this.#write({ type: "bin", id, size: n });
        await this.#writeRawAsync(buffer.subarray(0, n));
      } else {
        await this.#writeAsync({
          type: "chunk",
          id,
          data: Buffer.from(buffer.buffer, 0, n).toString("base64"),
        });
      }
      this.#progress(id, sent, size, "out");
    }
    if (sent !== size) throw new E2eError("ERR_FILE", "The file changed while it was being sent");
    await this.#writeAsync({ type: "end", id });
    return id;
  }

  /** Says bye and closes. */
  close(reason = "closed"): void {
    if (this.#closed) return;
    this.#closeReason = reason;
    this.#write({ type: "bye" });
    this.#socket.end();
  }

  #id(): string {
    return `${Date.now().toString(36)}-${this.#nextId++}`;
  }

  #write(frame: Frame): boolean {
    if (this.#closed || this.#socket.destroyed) return false;
    return this.#socket.write(encodeFrame(frame));
  }

  // Waits for the socket to drain, so a large file never piles up in memory.
  async #writeAsync(frame: Frame): Promise<void> {
    await this.#writeRawAsync(encodeFrame(frame));
  }

  async #writeRawAsync(data: string | Uint8Array): Promise<void> {
    if (this.#closed || this.#socket.destroyed) {
      throw new E2eError("ERR_NETWORK", `The connection to "${this.name}" closed`);
    }
    if (this.#socket.write(data)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.#socket.off("drain", done);
        this.#socket.off("close", done);
        resolve();
      };
      this.#socket.on("drain", done);
      this.#socket.on("close", done);
    });
  }

  #onData(bytes: Uint8Array): void {
    let offset = 0;
    try {
      while (offset < bytes.length && !this.#broken) {
        if (this.#raw) {
          // The payload of a "bin" frame: bytes, not lines. Gathered whole (at most 1 MiB),
          // so the file gets one write per frame rather than one per TLS record.
          const raw = this.#raw;
          const take = Math.min(raw.remaining, bytes.length - offset);
          raw.pieces.push(bytes.subarray(offset, offset + take));
          offset += take;
          raw.remaining -= take;
          if (raw.remaining === 0) {
            this.#raw = undefined;
            this.#enqueue({ type: "raw", id: raw.id, bytes: concat(raw.pieces, raw.size) });
          }
          continue;
        }
        const { line, used } = this.#lines.pushLine(bytes.subarray(offset));
        offset += used;
        if (line === null) continue;
        const frame = decodeFrame(line);
        // Decided here, not in the queue: the bytes that follow are the payload.
        if (frame.type === "bin") {
          this.#raw = { id: frame.id, size: frame.size, remaining: frame.size, pieces: [] };
        }
        this.#enqueue(frame);
      }
    } catch (e) {
      // Bad input fails the connection in order: frames before it are still handled.
      this.#broken = true;
      this.#enqueue({ type: "fail", error: e });
    }
  }

  #enqueue(item: Frame | RawPiece | Failure): void {
    // Messages and acks need no await: with nothing queued before them they are
    // handled at once, without a promise per frame (most of a chat's traffic).
    if (this.#queued === 0 && (item.type === "msg" || item.type === "ack") && this.#helloSeen) {
      if (this.#closed || this.#failed) return;
      this.#handle(item).catch((e) => this.#fail(e));
      return;
    }
    this.#queued++;
    if (this.#queued >= MAX_QUEUED) {
      this.#socket.pause();
      this.#watch();
    }
    this.#queue = this.#queue.then(async () => {
      if (this.#closed || this.#failed) return;
      try {
        if (item.type === "fail") throw item.error;
        if (item.type === "raw") await this.#handleRaw(item);
        else await this.#handle(item);
      } catch (e) {
        this.#fail(e);
      } finally {
        this.#queued--;
        this.#maybeResume();
      }
    });
  }

  async #handleRaw(piece: RawPiece): Promise<void> {
    const file = this.#incoming.get(piece.id);
    if (!file) throw malformed("binary data for a file never announced");
    await file.write(piece.bytes);
    this.#progress(piece.id, file.received, file.size, "in");
  }

  async #handle(frame: Frame): Promise<void> {
    if (!this.#helloSeen) {
      if (frame.type !== "hello") throw malformed("the first frame must be hello");
      this.#helloSeen = true;
      this.#peerFeatures = new Set(frame.features ?? []);
      if (frame.checkpoint !== undefined) this.#options.events.checkpoint?.(this, frame.checkpoint);
      return;
    }
    const events = this.#options.events;
    switch (frame.type) {
      case "hello":
        throw malformed("a second hello");
      case "msg":
        if (this.quarantined) {
          events.held(this, "message");
          return;
        }
        // Acknowledge first: showing the message may block on a slow terminal or pipe.
        this.#write({ type: "ack", id: frame.id });
        // A peer that sends but never reads would grow our unsent acks without end.
        if (this.#socket.writableLength > MAX_UNSENT) {
          this.#socket.pause();
          this.#watch();
          this.#socket.once("drain", () => this.#maybeResume());
        }
        events.message(this, frame.id, frame.text);
        return;
      case "ack":
        {
          const at = this.#sentAt.get(frame.id);
          this.#sentAt.delete(frame.id);
          events.delivered(this, frame.id, at === undefined ? undefined : performance.now() - at);
        }
        return;
      case "file": {
        if (this.quarantined) {
          throw new E2eError(
            "ERR_FORBIDDEN",
            "Files are refused until your changed key is trusted",
          );
        }
        if (this.#incoming.has(frame.id)) throw malformed("a file id used twice");
        if (this.#incoming.size >= MAX_INCOMING_FILES) throw malformed("too many files at once");
        const file = await IncomingFile.start(
          this.#options.downloads,
          frame.name,
          frame.size,
          frame.sha256,
        );
        this.#incoming.set(frame.id, file);
        this.#watch();
        return;
      }
      case "bin":
        // Its payload follows as "raw" pieces (see #onData); the file must be announced.
        if (!this.#incoming.has(frame.id)) {
          throw malformed("binary data for a file never announced");
        }
        return;
      case "chunk": {
        const file = this.#incoming.get(frame.id);
        if (!file) throw malformed("a chunk for a file never announced");
        await file.write(Buffer.from(frame.data, "base64"));
        this.#progress(frame.id, file.received, file.size, "in");
        return;
      }
      case "end": {
        const file = this.#incoming.get(frame.id);
        if (!file) throw malformed("an end for a file never announced");
        this.#incoming.delete(frame.id);
        try {
          const path = await file.finish();
          events.file(this, {
            id: frame.id,
            name: file.announced,
            path,
            bytes: file.size,
            sha256: file.sha256,
          });
          this.#write({ type: "ack", id: frame.id });
        } catch (e) {
          events.fileFailed(this, {
            id: frame.id,
            reason: e instanceof Error ? e.message : String(e),
            direction: "in",
          });
          throw e;
        }
        return;
      }
      case "bye":
        this.#closeReason = "the peer said bye";
        this.#socket.end();
        return;
      case "error":
        this.#closeReason = `the peer reported an error: ${frame.message}`;
        this.#socket.end();
        return;
    }
  }

  #maybeResume(): void {
    if (
      this.#queued < MAX_QUEUED / 2 && this.#socket.writableLength <= MAX_UNSENT &&
      !this.#closed && !this.#broken
    ) {
      this.#socket.resume();
    }
  }

  // A peer that goes silent in the middle of a file, or while we hold its data back,
  // is given up on. (Deno's node:tls can miss the close of a socket paused for
  // back-pressure; without this such a transfer would hang for ever.)
  #watch(): void {
    this.#socket.setTimeout(STALL_MS); // the one "timeout" listener is #onStall
  }

  #onStall(): void {
    if (this.#incoming.size > 0 || this.#socket.isPaused()) {
      this.#closeReason = `the peer sent nothing for ${
        STALL_MS / 1000
      } s in the middle of a transfer`;
      this.#socket.destroy();
    } else {
      this.#socket.setTimeout(0);
    }
  }

  #progress(id: string, bytes: number, total: number, direction: "in" | "out"): void {
    const now = Date.now();
    if (bytes < total && now - this.#lastProgress < 250) return;
    this.#lastProgress = now;
    this.#options.events.progress(this, { id, bytes, total, direction });
  }

  // Malformed input: one error frame, then the connection closes. The client goes on.
  #fail(e: unknown): void {
    if (this.#closed || this.#failed) return;
    this.#failed = true;
    const message = e instanceof E2eError ? e.message : "Internal error";
    this.#closeReason = `closed after bad input: ${message}`;
    this.#write({ type: "error", message });
    this.#socket.end();
    this.#socket.pause();
    setTimeout(() => this.#socket.destroy(), 2_000).unref?.();
  }

  async #onClose(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue.catch(() => {});
    for (const [id, file] of this.#incoming) {
      await file.abort();
      this.#options.events.fileFailed(this, {
        id,
        reason: "the connection closed",
        direction: "in",
      });
    }
    this.#incoming.clear();
    this.#options.events.closed(this, this.#closeReason);
  }
}

function concat(pieces: Uint8Array[], size: number): Uint8Array {
  if (pieces.length === 1) return pieces[0];
  const out = new Uint8Array(size);
  let offset = 0;
  for (const p of pieces) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function malformed(why: string): E2eError {
  return new E2eError("ERR_BAD_REQUEST", `Malformed frame: ${why}`);
}
