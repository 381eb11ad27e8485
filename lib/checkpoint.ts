/**
 * Tree heads of the issuance log: checkpoints in the C2SP tlog-checkpoint format
 * (origin line, tree size, base64 root hash, optional extension lines), signed as
 * a C2SP signed note with an Ed25519 key. This module alone writes and reads them.
 *
 * ```
 * e2e-chat/4f6c…9a                       ← origin: names the log
 * 42                                     ← tree size
 * 3q2+7w…=                               ← base64 root hash
 *
 * — e2e-chat/4f6c…9a Ab3x…==             ← "— " name, base64(key id ‖ signature)
 * ```
 *
 * The key id is the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import { E2eError } from "./errors.ts";

/** A tree head. */
export interface Checkpoint {
  /** Names the log, unique to it. */
  origin: string;
  /** How many entries the tree has. */
  size: number;
  /** Its RFC 6962 root hash (32 bytes). */
  root: Uint8Array;
}

/** A note signer or verifier: a key name and an Ed25519 key. */
export interface NoteKey {
  /** The key's name (no spaces, no "+"). */
  name: string;
  /** An Ed25519 key: private to sign, public to verify. */
  key: KeyObject;
}

const ED25519 = 0x01;
const DASH = "\u2014 ";
const MAX_NOTE_BYTES = 16 * 1024;

function invalid(why: string): E2eError {
  return new E2eError("ERR_LOG_INVALID", `Invalid checkpoint: ${why}`);
}

/**
 * The checkpoint body, exactly as C2SP writes it (each line ends with "\n").
 *
 * @example
 * ```ts
 * import { formatCheckpoint } from "./checkpoint.ts";
 * formatCheckpoint({ origin: "example.com/log", size: 0, root: new Uint8Array(32) });
 * // "example.com/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
 * ```
 */
export function formatCheckpoint(c: Checkpoint): string {
  if (!c.origin || /[\s]/.test(c.origin)) throw new TypeError("An origin is one word");
  if (!Number.isSafeInteger(c.size) || c.size < 0) throw new TypeError("A size is a whole number");
  if (c.root.length !== 32) throw new TypeError("A root hash is 32 bytes");
  return `${c.origin}\n${c.size}\n${Buffer.from(c.root).toString("base64")}\n`;
}

/**
 * Reads a checkpoint body (extension lines after the third are allowed and ignored).
 * Throws `ERR_LOG_INVALID`.
 *
 * @example
 * ```ts
 * import { parseCheckpoint } from "./checkpoint.ts";
 * parseCheckpoint("example.com/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").size; // 0
 * ```
 */
export function parseCheckpoint(body: string): Checkpoint {
  if (!body.endsWith("\n")) throw invalid("it does not end with a newline");
  const [origin, size, root] = body.slice(0, -1).split("\n");
  if (!origin || /\s/.test(origin)) throw invalid("no origin line");
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size ?? "") || !Number.isSafeInteger(Number(size))) {
    throw invalid("the tree size is not a number");
  }
  const bytes = /^[A-Za-z0-9+/]{43}=$/.test(root ?? "") ? Buffer.from(root, "base64") : null;
  if (!bytes || bytes.length !== 32) throw invalid("the root hash is not 32 bytes of base64");
  return { origin, size: Number(size), root: new Uint8Array(bytes) };
}

/**
 * The 4-byte key id of an Ed25519 note key.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { noteKeyId } from "./checkpoint.ts";
 * const { publicKey } = generateKeyPairSync("ed25519");
 * noteKeyId("example.com/log", publicKey).length; // 4
 * ```
 */
export function noteKeyId(name: string, publicKey: KeyObject): Uint8Array {
  const raw = rawPublicKey(publicKey);
  return new Uint8Array(
    createHash("sha256").update(`${name}\n`).update(new Uint8Array([ED25519])).update(raw)
      .digest().subarray(0, 4),
  );
}

/**
 * The verifier key string of a note key, `name+hex(key id)+base64(0x01 ‖ public key)`.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { verifierKey } from "./checkpoint.ts";
 * const { publicKey } = generateKeyPairSync("ed25519");
 * console.log(verifierKey("example.com/log", publicKey));
 * ```
 */
export function verifierKey(name: string, publicKey: KeyObject): string {
  const id = Buffer.from(noteKeyId(name, publicKey)).toString("hex");
  const key = Buffer.concat([new Uint8Array([ED25519]), rawPublicKey(publicKey)]);
  return `${name}+${id}+${key.toString("base64")}`;
}

/**
 * Signs a note body (text ending in "\n") with an Ed25519 private key.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signNote } from "./checkpoint.ts";
 * const { privateKey } = generateKeyPairSync("ed25519");
 * signNote("hello\n", { name: "example.com/log", key: privateKey });
 * ```
 */
export function signNote(body: string, signer: NoteKey): string {
  checkNoteText(body);
  checkKeyName(signer.name);
  const publicKey = signer.key.type === "private" ? createPublicKey(signer.key) : signer.key;
  const signature = sign(null, Buffer.from(body), signer.key);
  const blob = Buffer.concat([noteKeyId(signer.name, publicKey), signature]).toString("base64");
  return `${body}\n${DASH}${signer.name} ${blob}\n`;
}

/**
 * Checks a signed note against a verifier's key and returns its body. Signature
 * lines of other keys are ignored; a line of this key that does not verify, or
 * none at all, throws `ERR_LOG_INVALID`.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { openNote, signNote } from "./checkpoint.ts";
 * const { privateKey, publicKey } = generateKeyPairSync("ed25519");
 * const note = signNote("hello\n", { name: "log", key: privateKey });
 * openNote(note, { name: "log", key: publicKey }); // "hello\n"
 * ```
 */
export function openNote(text: string, verifier: NoteKey): string {
  if (new TextEncoder().encode(text).length > MAX_NOTE_BYTES) throw invalid("the note is too long");
  const split = text.lastIndexOf("\n\n");
  if (split < 0 || !text.endsWith("\n")) throw invalid("no signature block");
  const body = text.slice(0, split + 1);
  checkNoteText(body);
  const id = noteKeyId(verifier.name, verifier.key);
  let verified = false;
  for (const line of text.slice(split + 2, -1).split("\n")) {
    if (!line.startsWith(DASH)) throw invalid("a signature line does not start with an em dash");
    const [name, blob, extra] = line.slice(DASH.length).split(" ");
    if (!name || !blob || extra !== undefined || !/^[A-Za-z0-9+/]+=*$/.test(blob)) {
      throw invalid("a malformed signature line");
    }
    const bytes = Buffer.from(blob, "base64");
    if (name !== verifier.name || !Buffer.from(bytes.subarray(0, 4)).equals(id)) continue;
    if (
      bytes.length !== 4 + 64 || !verify(null, Buffer.from(body), verifier.key, bytes.subarray(4))
    ) {
      throw invalid("the log's signature does not verify");
    }
    verified = true;
  }
  if (!verified) throw invalid("not signed by the log's key");
  return body;
}

/**
 * Signs a checkpoint: its body as a signed note.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { signCheckpoint } from "./checkpoint.ts";
 * const { privateKey } = generateKeyPairSync("ed25519");
 * signCheckpoint({ origin: "log", size: 0, root: new Uint8Array(32) }, { name: "log", key: privateKey });
 * ```
 */
export function signCheckpoint(c: Checkpoint, signer: NoteKey): string {
  return signNote(formatCheckpoint(c), signer);
}

/**
 * Verifies a signed checkpoint and reads it; its origin must be the key's name.
 * Throws `ERR_LOG_INVALID`.
 *
 * @example
 * ```ts
 * import { generateKeyPairSync } from "node:crypto";
 * import { openCheckpoint, signCheckpoint } from "./checkpoint.ts";
 * const { privateKey, publicKey } = generateKeyPairSync("ed25519");
 * const text = signCheckpoint({ origin: "log", size: 1, root: new Uint8Array(32) }, {
 *   name: "log",
 *   key: privateKey,
 * });
 * openCheckpoint(text, { name: "log", key: publicKey }).size; // 1
 * ```
 */
export function openCheckpoint(text: string, verifier: NoteKey): Checkpoint {
  const checkpoint = parseCheckpoint(openNote(text, verifier));
  if (checkpoint.origin !== verifier.name) throw invalid("the origin is not this log's");
  return checkpoint;
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== "ed25519") throw new TypeError("A note key is an Ed25519 key");
  const jwk = pub.export({ format: "jwk" });
  return new Uint8Array(Buffer.from(jwk.x as string, "base64url"));
}

function checkKeyName(name: string): void {
  if (!name || /[\s+]/.test(name)) {
    throw new TypeError(`Invalid note key name ${JSON.stringify(name)}`);
  }
}

function checkNoteText(body: string): void {
  // deno-lint-ignore no-control-regex
  if (!body.endsWith("\n") || /[\u0000-\u0009\u000b-\u001f\u007f]/.test(body)) {
    throw invalid("the text has control characters or does not end with a newline");
  }
  if (body.includes("\n\n")) throw invalid("the text has a blank line");
}
