/**
 * Mailbox items: the one owner of their format (docs/PROTOCOL.md §8).
 *
 * An item is CMS (RFC 5652) that `openssl cms` itself makes and opens, through
 * lib/openssl.ts: an AuthEnvelopedData (RFC 5083, AES-256-GCM) for the
 * recipient's certificate — ECDH with the SHA-256 KDF (RFC 5753) for an EC key,
 * RSA-OAEP with SHA-256 for an RSA key — whose content is the DER of a
 * SignedData (SHA-256) by the sender, whose content in turn is the item's
 * canonical bytes ({@linkcode encodeItem}): a magic line, one JSON header line
 * binding version, id, from, to, kind and time, then the payload as raw bytes.
 *
 * OpenSSL 3.0 can neither sign CMS with an Ed25519 key (no default digest) nor
 * encrypt to one (Ed25519 does no key agreement), so both ends need an EC or RSA
 * key: {@linkcode checkCmsKey} says so with `ERR_KEY_REJECTED`, never a
 * weaker fallback.
 *
 * Secrets: the plaintext goes to openssl on stdin and comes back on stdout,
 * never in a file or argv; a private key is read from its own 0600 file, its
 * passphrase through `-passin env:` only. Certificates (public) are written to
 * openssl's private temporary folder.
 *
 * @module
 */
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { children, decodeOid, readDer, Tag } from "./der.ts";
import { E2eError } from "./errors.ts";
import { checkName } from "./names.ts";
import { openssl, OpensslError, PASSPHRASE_ARG } from "./openssl.ts";

/** The first line of an item's signed content. */
const MAGIC = "e2e-chat mailbox item\n";
/** The version the header carries. */
export const ITEM_VERSION = 1;
/** Largest header line, in bytes (a receipt lists up to {@linkcode MAX_RECEIPT_IDS} ids). */
const MAX_HEADER_BYTES = 8 * 1024;
/** Most item ids one receipt acknowledges. */
export const MAX_RECEIPT_IDS = 100;
/** id-ct-authEnvelopedData (RFC 5083): the only content type an item has. */
const AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23";
/** id-aes256-GCM: the only content encryption an item has. */
const AES_256_GCM = "2.16.840.1.101.3.4.1.46";

/** What an item carries. */
export type ItemKind = "message" | "file" | "receipt" | "room";

/** The signed content of a mailbox item. */
export interface MailboxItem {
  /** Random 128 bits, hex, chosen by the sender; the recipient refuses it twice. */
  id: string;
  /** The sender's user name (must be the signer's certificate's). */
  from: string;
  /** The recipient's user name. */
  to: string;
  /** What it carries. */
  kind: ItemKind;
  /** When the sender made it. */
  sent: Date;
  /** The text (message), the file's bytes (file), nothing (receipt). */
  payload: Uint8Array;
  /** The file's name (file only). */
  name?: string;
  /** The item ids a receipt acknowledges (receipt only). */
  acks?: string[];
}

/** The form of an item id: 32 lowercase hex digits. */
export const ITEM_ID = /^[0-9a-f]{32}$/;

/**
 * A new random item id (128 bits, hex).
 *
 * @example
 * ```ts
 * import { newItemId } from "./cms.ts";
 * console.log(newItemId().length); // 32
 * ```
 */
export function newItemId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

/**
 * The canonical bytes of an item: the magic line, a JSON header line (keys in a
 * fixed order), then the payload as it is. {@linkcode decodeItem} reads it back.
 *
 * @example
 * ```ts
 * import { decodeItem, encodeItem, newItemId } from "./cms.ts";
 * const bytes = encodeItem({
 *   id: newItemId(), from: "alice", to: "bob", kind: "message", sent: new Date(),
 *   payload: new TextEncoder().encode("hi"),
 * });
 * console.log(decodeItem(bytes).kind); // "message"
 * ```
 */
export function encodeItem(item: MailboxItem): Uint8Array {
  checkItem(item);
  const header = JSON.stringify({
    v: ITEM_VERSION,
    id: item.id,
    from: item.from,
    to: item.to,
    kind: item.kind,
    sent: item.sent.toISOString(),
    ...(item.kind === "file" ? { name: item.name } : {}),
    ...(item.kind === "receipt" ? { acks: item.acks } : {}),
    bytes: item.payload.length,
  });
  const head = new TextEncoder().encode(MAGIC + header + "\n");
  const out = new Uint8Array(head.length + item.payload.length);
  out.set(head);
  out.set(item.payload, head.length);
  return out;
}

/**
 * Reads the canonical bytes of an item; throws `ERR_BAD_REQUEST` for anything
 * else (a wrong magic, version, field, or length).
 *
 * @example
 * ```ts
 * import { decodeItem } from "./cms.ts";
 * try {
 *   decodeItem(new TextEncoder().encode("not an item"));
 * } catch (e) {
 *   console.log((e as Error).message); // Not a mailbox item: no header
 * }
 * ```
 */
export function decodeItem(bytes: Uint8Array): MailboxItem {
  const magic = new TextEncoder().encode(MAGIC);
  const end = bytes.indexOf(0x0a, magic.length);
  if (
    end < 0 || end - magic.length > MAX_HEADER_BYTES ||
    !magic.every((b, i) => bytes[i] === b)
  ) {
    throw bad("no header");
  }
  let h: Record<string, unknown>;
  try {
    h = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(magic.length, end)),
    );
  } catch {
    throw bad("the header is not JSON");
  }
  if (typeof h !== "object" || h === null || Array.isArray(h)) {
    throw bad("the header is not an object");
  }
  if (h.v !== ITEM_VERSION) throw bad(`version ${JSON.stringify(h.v)} is not ${ITEM_VERSION}`);
  const kind = h.kind as ItemKind;
  const keys = ["v", "id", "from", "to", "kind", "sent", "bytes"];
  if (kind === "file") keys.push("name");
  if (kind === "receipt") keys.push("acks");
  if (Object.keys(h).length !== keys.length || !keys.every((k) => k in h)) {
    throw bad("unexpected header fields");
  }
  const payload = bytes.slice(end + 1);
  if (h.bytes !== payload.length) throw bad("the payload length differs from the header");
  if (typeof h.sent !== "string" || Number.isNaN(Date.parse(h.sent))) throw bad("no valid time");
  const item: MailboxItem = {
    id: h.id as string,
    from: h.from as string,
    to: h.to as string,
    kind,
    sent: new Date(h.sent),
    payload,
  };
  if (kind === "file") item.name = h.name as string;
  if (kind === "receipt") item.acks = h.acks as string[];
  checkItem(item);
  return item;
}

function checkItem(item: MailboxItem): void {
  if (typeof item.id !== "string" || !ITEM_ID.test(item.id)) {
    throw bad("the id is not 32 hex digits");
  }
  try {
    checkName(item.from);
    checkName(item.to);
  } catch {
    throw bad("a name is invalid");
  }
  if (!["message", "file", "receipt", "room"].includes(item.kind)) throw bad("unknown kind");
  if (Number.isNaN(item.sent.getTime())) throw bad("no valid time");
  if (item.kind === "message" || item.kind === "room") {
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(item.payload);
    } catch {
      throw bad("the text is not UTF-8");
    }
  }
  if (item.kind === "file" && !validFileName(item.name)) throw bad("the file name is invalid");
  if (item.kind === "receipt") {
    const acks = item.acks;
    if (
      !Array.isArray(acks) || acks.length < 1 || acks.length > MAX_RECEIPT_IDS ||
      !acks.every((a) => typeof a === "string" && ITEM_ID.test(a)) || item.payload.length !== 0
    ) {
      throw bad("the receipt's ids are invalid");
    }
  }
}

function validFileName(name: unknown): boolean {
  // No path separators and no control characters (the receiver sanitizes again).
  return typeof name === "string" && name.length > 0 && name.length <= 255 &&
    ![...name].some((c) => c === "/" || c === "\\" || c.charCodeAt(0) < 0x20 || c === "\x7f");
}

function bad(why: string): E2eError {
  return new E2eError("ERR_BAD_REQUEST", `Not a mailbox item: ${why}`);
}

/** A private key in its file, for openssl to read. */
export interface KeyFile {
  /** The PEM key file (0600). */
  path: string;
  /** Its passphrase when encrypted; handed over as `-passin env:` only. Default: none. */
  passphrase?: string;
}

/** Options of {@linkcode seal}. */
export interface SealOptions {
  /** The sender's key. */
  key: KeyFile;
  /** The sender's certificate, PEM (goes into the SignedData). */
  signerCert: string;
  /** The recipient's certificate, PEM (the item is encrypted to its key). */
  recipientCert: string;
}

/** Options of {@linkcode open}. */
export interface OpenOptions {
  /** The recipient's key. */
  key: KeyFile;
  /** The recipient's certificate, PEM. */
  recipientCert: string;
  /** The CA certificate, PEM: the signer's certificate must chain to it. */
  caCert: string;
}

/** What {@linkcode open} found inside an item. */
export interface Opened {
  /** The signed content (decode with {@linkcode decodeItem}). */
  content: Uint8Array;
  /** The certificate that signed it, PEM (checked against the CA only: name, key and revocation are the caller's). */
  signerCert: string;
}

/**
 * The key type of a certificate, if the mailbox can use it: "ec" or "rsa".
 * Throws `ERR_KEY_REJECTED` for Ed25519 (and anything else) with what to do.
 *
 * @example
 * ```ts ignore
 * import { checkCmsKey } from "./cms.ts";
 * checkCmsKey(await Deno.readTextFile("/tmp/alice/id/cert.pem"), "your key");
 * ```
 */
export function checkCmsKey(certPem: string, whose: string): "ec" | "rsa" {
  const type = new X509Certificate(certPem).publicKey.asymmetricKeyType;
  if (type === "ec" || type === "rsa") return type;
  throw new E2eError(
    "ERR_KEY_REJECTED",
    `The mailbox needs an EC or RSA key, and ${whose} is ${type ?? "of an unknown type"}`,
    {
      // Only the key's owner can change it: a sender is not told to re-enroll for a recipient.
      hint: "OpenSSL 3.0 cannot sign or encrypt CMS with Ed25519; " +
        (whose === "your key"
          ? "re-enroll with --key-type ec-p256 to use the mailbox"
          : "only a direct chat reaches them until they re-enroll with --key-type ec-p256"),
    },
  );
}

/**
 * Seals `content` for the recipient: SignedData by the sender inside
 * AuthEnvelopedData (AES-256-GCM) for the recipient; returns the DER.
 *
 * @example
 * ```ts ignore
 * import { seal } from "./cms.ts";
 * const der = await seal(new TextEncoder().encode("hi"), {
 *   key: { path: "/tmp/alice/id/key.pem" },
 *   signerCert: await Deno.readTextFile("/tmp/alice/id/cert.pem"),
 *   recipientCert: await Deno.readTextFile("/tmp/bob-cert.pem"),
 * });
 * ```
 */
export async function seal(content: Uint8Array, options: SealOptions): Promise<Uint8Array> {
  checkCmsKey(options.signerCert, "your key");
  const recipient = checkCmsKey(options.recipientCert, "the recipient's key");
  return await withCwd(async (cwd) => {
    await Deno.writeTextFile(join(cwd, "signer.pem"), options.signerCert);
    await Deno.writeTextFile(join(cwd, "recipient.pem"), options.recipientCert);
    const { passphrase } = options.key;
    const signed = await run(
      [
        "cms",
        "-sign",
        "-binary",
        "-nodetach",
        "-md",
        "sha256",
        "-signer",
        "signer.pem",
        "-inkey",
        options.key.path,
        ...(passphrase === undefined ? [] : ["-passin", PASSPHRASE_ARG]),
        "-outform",
        "DER",
      ],
      { cwd, stdin: content, passphrase },
      "sign",
    );
    // RFC 5753's SHA-256 KDF (openssl defaults to SHA-1); OAEP with SHA-256 for RSA.
    const keyopts = recipient === "ec"
      ? ["-keyopt", "ecdh_kdf_md:sha256"]
      : ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"];
    return await run(
      [
        "cms",
        "-encrypt",
        "-binary",
        "-aes-256-gcm",
        "-recip",
        "recipient.pem",
        ...keyopts,
        "-outform",
        "DER",
      ],
      { cwd, stdin: signed },
      "encrypt",
    );
  });
}

/**
 * Opens an item sealed for us: decrypts it (the GCM tag refuses any change) and
 * verifies the signature and the signer's chain to our CA. Throws
 * `ERR_PEER_REJECTED` for an item that does not open or verify, or is not
 * AES-256-GCM AuthEnvelopedData as {@linkcode seal} makes it (a verdict on the
 * item), `ERR_BAD_PASSPHRASE` only when our key itself does not unlock, and
 * another code when our side failed (openssl killed, not started or timed out:
 * `ERR_OPENSSL…`; no temporary folder, a full disk: `ERR_FILE`), which says
 * nothing of the item.
 *
 * @example
 * ```ts ignore
 * import { open } from "./cms.ts";
 * const { content, signerCert } = await open(der, {
 *   key: { path: "/tmp/bob/id/key.pem" },
 *   recipientCert: await Deno.readTextFile("/tmp/bob/id/cert.pem"),
 *   caCert: await Deno.readTextFile("/tmp/bob/id/ca.crt"),
 * });
 * ```
 */
export async function open(der: Uint8Array, options: OpenOptions): Promise<Opened> {
  checkCmsKey(options.recipientCert, "your key");
  // Only what seal() makes: openssl would also decrypt AES-CBC EnvelopedData, whose padding
  // check fails as "bad decrypt", the words of a wrong passphrase, and answers a padding oracle.
  const sealing = sealedAs(der);
  if (sealing) {
    throw new E2eError("ERR_PEER_REJECTED", NOT_OPENING, {
      detail: `not AES-256-GCM AuthEnvelopedData: ${sealing}`,
    });
  }
  return await withCwd(async (cwd) => {
    await Deno.writeTextFile(join(cwd, "recipient.pem"), options.recipientCert);
    await Deno.writeTextFile(join(cwd, "ca.pem"), options.caCert);
    const { passphrase } = options.key;
    const signed = await run(
      [
        "cms",
        "-decrypt",
        "-binary",
        "-inform",
        "DER",
        "-recip",
        "recipient.pem",
        "-inkey",
        options.key.path,
        ...(passphrase === undefined ? [] : ["-passin", PASSPHRASE_ARG]),
      ],
      { cwd, stdin: der, passphrase },
      "decrypt",
      options.key,
    );
    // -purpose any: our certificates are for TLS (no S/MIME usage); the chain to our CA is
    // checked, and the name, key and revocation by the caller.
    const content = await run(
      [
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-CAfile",
        "ca.pem",
        "-purpose",
        "any",
        "-signer",
        "signer.pem",
      ],
      { cwd, stdin: signed },
      "verify",
    );
    const signerCert = await Deno.readTextFile(join(cwd, "signer.pem"));
    return { content, signerCert };
  });
}

// Runs `fn` in a private temporary folder. A file system error in it (no temp folder, a full
// disk) is `ERR_FILE`, which names our side, never the item.
async function withCwd<T>(fn: (cwd: string) => Promise<T>): Promise<T> {
  let cwd: string | undefined;
  try {
    cwd = await Deno.makeTempDir({ prefix: "e2e-chat-cms-" });
    await Deno.chmod(cwd, 0o700);
    return await fn(cwd);
  } catch (e) {
    if (Object.values(Deno.errors).some((c) => e instanceof c)) {
      throw new E2eError(
        "ERR_FILE",
        cwd === undefined
          ? `Cannot make a temporary folder for openssl: ${(e as Error).message}`
          : `Cannot use openssl's temporary folder "${cwd}": ${(e as Error).message}`,
        { cause: e },
      );
    }
    throw e;
  } finally {
    if (cwd !== undefined) await Deno.remove(cwd, { recursive: true }).catch(() => {});
  }
}

const NOT_OPENING = "The mailbox item does not open with your key (altered, or not for you)";

// Why `der` is not sealed as seal() seals (AuthEnvelopedData, AES-256-GCM), if it is not.
function sealedAs(der: Uint8Array): string | undefined {
  try {
    const [type, content] = children(readDer(der), Tag.SEQUENCE);
    const contentType = decodeOid(type);
    if (contentType !== AUTH_ENVELOPED_DATA) return `content type ${contentType}`;
    if (content?.tag !== Tag.CONTEXT_0) return "no content";
    const [inner] = children(content);
    // AuthEnvelopedData: version, [0] originatorInfo OPTIONAL, recipientInfos SET, then
    // authEncryptedContentInfo: contentType, contentEncryptionAlgorithm, ...
    const fields = children(inner, Tag.SEQUENCE);
    const info = fields[fields[1]?.tag === Tag.CONTEXT_0 ? 3 : 2];
    if (!info) return "no encrypted content";
    const [, algorithm] = children(info, Tag.SEQUENCE);
    const cipher = decodeOid(algorithm && children(algorithm, Tag.SEQUENCE)[0]);
    return cipher === AES_256_GCM ? undefined : `content encryption ${cipher}`;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

async function run(
  args: string[],
  options: { cwd: string; stdin: Uint8Array; passphrase?: string },
  step: "sign" | "encrypt" | "decrypt" | "verify",
  key?: KeyFile,
): Promise<Uint8Array> {
  try {
    return (await openssl(args, options)).stdout;
  } catch (e) {
    if (!(e instanceof OpensslError)) throw e;
    // openssl's words for a key it cannot unlock ("bad decrypt") are also those of an item that
    // does not decrypt: when decrypting, our key alone says which one failed.
    if (
      e.badPassphrase && (step === "sign" || (step === "decrypt" && !(await unlocks(key!))))
    ) {
      throw new E2eError("ERR_BAD_PASSPHRASE", "Cannot unlock your key for the mailbox", {
        cause: e,
      });
    }
    if ((step === "decrypt" || step === "verify") && aboutTheItem(e)) {
      // One generic refusal: which check failed is in the detail, not the message.
      throw new E2eError(
        "ERR_PEER_REJECTED",
        step === "decrypt"
          ? NOT_OPENING
          : "The mailbox item's signature does not verify against our CA",
        { cause: e, detail: e.stderr },
      );
    }
    // Our side failed (openssl killed, a file of ours it could not read, a disk error): no word
    // on the item, which a caller must not refuse for it.
    throw new E2eError("ERR_OPENSSL", `Cannot ${step} the mailbox item here: ${e.message}`, {
      cause: e,
      detail: e.stderr,
    });
  }
}

/**
 * Whether openssl's failure is its verdict on the item's bytes: `openssl cms` exits 4 when it
 * cannot decrypt or verify them, and 2 "Error reading SMIME Content Info" when they are no CMS
 * (stdin is the item; it says other words for a file of ours it cannot read). Any other end —
 * killed, out of memory, an argument or file of ours — says nothing of the item.
 */
function aboutTheItem(e: OpensslError): boolean {
  if (e.signal) return false;
  return (e.exitCode === 4 && /^(Error decrypting CMS|CMS Verification failure)/.test(e.stderr)) ||
    (e.exitCode === 2 && /^Error reading SMIME Content Info/.test(e.stderr));
}

// Whether openssl reads the private key of `key` (with its passphrase).
async function unlocks(key: KeyFile): Promise<boolean> {
  const { path, passphrase } = key;
  try {
    await openssl(
      [
        "pkey",
        "-in",
        path,
        ...(passphrase === undefined ? [] : ["-passin", PASSPHRASE_ARG]),
        "-noout",
      ],
      { passphrase },
    );
    return true;
  } catch (e) {
    if (e instanceof OpensslError) return false;
    throw e;
  }
}
