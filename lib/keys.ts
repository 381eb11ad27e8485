/**
 * Private keys and certificate requests made by openssl, for the CA and the
 * clients alike. Keys are written 0600 and never leave the folder given.
 *
 * @module
 */
import { createPrivateKey } from "node:crypto";
import { dirname, join } from "node:path";
import { E2eError } from "./errors.ts";
import { removeStaleEntries, type StaleTempOptions, syncDir, writeFileAtomic } from "./fs.ts";
import { openssl, PASSPHRASE_ARG } from "./openssl.ts";

/** Every key type e2e-chat makes. */
export type KeyType = "rsa-4096" | "rsa-2048" | "ec-p256" | "ed25519";

/** Options of {@linkcode generateKey}. */
export interface GenerateKeyOptions {
  /** Encrypt the key with AES-256 under this passphrase. Default: unencrypted. */
  passphrase?: string;
  /**
   * How the key is encrypted: "genpkey" is openssl genpkey's own `-aes-256-cbc` (PBKDF2 with
   * openssl's default 2048 iterations, what the CA key has always used); "scrypt" is
   * {@linkcode encryptKey}'s format. Default: "genpkey".
   */
  kdf?: "genpkey" | "scrypt";
}

/**
 * Generates a private key of `type` at `path` (mode 0600) with openssl genpkey;
 * refuses to replace an existing file. The key is made in a private scratch
 * folder beside `path` and linked into place, so it never exists half-written
 * or with a wider mode; the file and then its folder are fsynced, so it
 * survives a power cut once this returns.
 *
 * @example
 * ```ts
 * import { generateKey } from "./keys.ts";
 * await generateKey("/tmp/key.pem", "ec-p256");
 * ```
 */
export async function generateKey(
  path: string,
  type: KeyType,
  options: GenerateKeyOptions = {},
): Promise<void> {
  const args = ["genpkey", ...ALGORITHMS[type]];
  const scrypt = options.passphrase !== undefined && options.kdf === "scrypt";
  if (options.passphrase !== undefined && !scrypt) {
    args.push("-aes-256-cbc", "-pass", PASSPHRASE_ARG);
  }
  const scratch = await Deno.makeTempDir({ dir: dirname(path), prefix: KEYGEN_PREFIX });
  try {
    if (scrypt) {
      // The plain key goes from one openssl to the other through memory, never a file.
      const { stdout } = await openssl(args);
      await Deno.writeTextFile(
        join(scratch, "key.pem"),
        await encryptKey(new TextDecoder().decode(stdout), options.passphrase!),
        { mode: 0o600 },
      );
    } else {
      await openssl([...args, "-out", "key.pem"], { cwd: scratch, passphrase: options.passphrase });
    }
    await Deno.chmod(join(scratch, "key.pem"), 0o600);
    {
      // The key's bytes, then its name, durable: it may be the only copy.
      using file = await Deno.open(join(scratch, "key.pem"), { read: true });
      await file.sync();
    }
    await Deno.link(join(scratch, "key.pem"), path); // link() fails rather than clobber a key
  } finally {
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
  await syncDir(dirname(path));
}

// The scratch folder generateKey makes beside a key: Deno.makeTempDir's name with this prefix.
const KEYGEN_PREFIX = ".keygen-";
const KEYGEN_SCRATCH = /^\.keygen-[0-9a-zA-Z]+$/;

/**
 * Whether `name` is one {@linkcode generateKey} gives its scratch folder: what a key generation
 * killed before its key's link leaves beside the key, never a folder of anyone's.
 *
 * @example
 * ```ts
 * import { isKeygenScratch } from "./keys.ts";
 * isKeygenScratch(".keygen-a1B2c3"); // true
 * isKeygenScratch("keygen"); // false
 * ```
 */
export function isKeygenScratch(name: string): boolean {
  return KEYGEN_SCRATCH.test(name);
}

/**
 * Removes the scratch folders {@linkcode generateKey} left in `dir` when killed before its key's
 * link (a key in one is no one's: its link never came): only folders named as it names them
 * ({@linkcode isKeygenScratch}) and last modified before `options.before` (default: a minute
 * before this process started; another process may be making a key now). Returns how many it
 * removed; a missing folder holds none.
 *
 * @example At a start, beside removeStaleTemps
 * ```ts
 * import { removeStaleKeygens } from "./keys.ts";
 * await removeStaleKeygens("/tmp/alice/id");
 * ```
 */
export function removeStaleKeygens(
  dir: string,
  options: StaleTempOptions = {},
): Promise<number> {
  return removeStaleEntries(dir, { named: isKeygenScratch, folders: true }, options);
}

/**
 * Makes a certificate request (PEM) for `commonName` signed by the key at `keyPath`
 * (encrypted under `options.passphrase`, if given; default: an unencrypted key).
 *
 * @example
 * ```ts
 * import { makeRequest } from "./keys.ts";
 * const csr = await makeRequest("/tmp/key.pem", "alice");
 * ```
 */
export async function makeRequest(
  keyPath: string,
  commonName: string,
  options: { passphrase?: string } = {},
): Promise<string> {
  const { stdout } = await openssl([
    "req",
    "-new",
    "-key",
    keyPath,
    ...(options.passphrase === undefined ? [] : ["-passin", PASSPHRASE_ARG]),
    "-subj",
    subject(commonName),
    "-config",
    "/dev/null",
  ], { passphrase: options.passphrase });
  return new TextDecoder().decode(stdout);
}

/** Options of {@linkcode generateKeyAndRequest}. */
export interface KeyAndRequestOptions {
  /** Key type. Default: "ec-p256". */
  type?: KeyType;
  /** Encrypt the key file under this passphrase ({@linkcode encryptKey}'s format). Default: unencrypted. */
  passphrase?: string;
}

/** A new key and its certificate request. */
export interface KeyAndRequest {
  /** The certificate request, PEM. */
  csr: string;
  /** The private key, unencrypted PEM: in memory only (the file holds it encrypted, if asked). */
  key: string;
}

/**
 * Makes a new private key and a certificate request for `commonName` in one openssl run
 * (`openssl req -newkey`, where {@linkcode generateKey} and {@linkcode makeRequest} take two),
 * and writes the key to `path`: mode 0600, fsynced, encrypted under `options.passphrase` by
 * {@linkcode encryptKey} if one is given. The plain key goes from openssl to us through memory,
 * never a file. Refuses to replace an existing file.
 *
 * @example
 * ```ts
 * import { generateKeyAndRequest } from "./keys.ts";
 * const { csr } = await generateKeyAndRequest("/tmp/key.pem", "alice", { type: "ed25519" });
 * ```
 */
export async function generateKeyAndRequest(
  path: string,
  commonName: string,
  options: KeyAndRequestOptions = {},
): Promise<KeyAndRequest> {
  const { stdout } = await openssl([
    ...["req", "-new", ...NEW_KEY[options.type ?? "ec-p256"], "-noenc", "-keyout", "-"],
    ...["-subj", subject(commonName), "-config", "/dev/null"],
  ]);
  const text = new TextDecoder().decode(stdout);
  const key = /-----BEGIN PRIVATE KEY-----\r?\n[\s\S]*?-----END PRIVATE KEY-----\r?\n/.exec(text)
    ?.[0];
  const csr =
    /-----BEGIN CERTIFICATE REQUEST-----\r?\n[\s\S]*?-----END CERTIFICATE REQUEST-----\r?\n/
      .exec(text)?.[0];
  if (!key || !csr) {
    throw new E2eError("ERR_OPENSSL", "openssl req printed no key and request");
  }
  const file = options.passphrase === undefined ? key : await encryptKey(key, options.passphrase);
  // The one copy of the key, and its name: durable before its request goes anywhere.
  await writeFileAtomic(path, file, { mode: 0o600, createNew: true, syncDir: true });
  return { csr, key };
}

/**
 * The key-derivation parameters of {@linkcode encryptKey}: scrypt with N = 2^14, r = 8, p = 5
 * (one of OWASP's equivalent scrypt settings). N stays at 2^14 because openssl refuses, when
 * reading a key, any scrypt setting that needs more than 32 MiB; p = 5 buys the work back.
 */
export const KEY_SCRYPT = { N: 16384, r: 8, p: 5 } as const;

/**
 * Encrypts the private key `pem` under `passphrase`: PKCS#8 (`ENCRYPTED PRIVATE KEY`), PBES2 with
 * scrypt ({@linkcode KEY_SCRYPT}) and AES-256-CBC, made by `openssl pkcs8 -topk8`. Readable by
 * `openssl pkey -passin …` and node:crypto's `createPrivateKey({ key, passphrase })`.
 *
 * @example
 * ```ts
 * import { encryptKey } from "./keys.ts";
 * const encrypted = await encryptKey(await Deno.readTextFile("/tmp/key.pem"), "a long passphrase");
 * ```
 */
export async function encryptKey(pem: string, passphrase: string): Promise<string> {
  const { stdout } = await openssl([
    ...["pkcs8", "-topk8", "-scrypt"],
    ...["-scrypt_N", String(KEY_SCRYPT.N), "-scrypt_r", String(KEY_SCRYPT.r)],
    ...["-scrypt_p", String(KEY_SCRYPT.p), "-v2", "aes-256-cbc", "-passout", PASSPHRASE_ARG],
  ], { stdin: pem, passphrase });
  return new TextDecoder().decode(stdout);
}

/** Whether the PEM `text` holds an encrypted private key. */
export function isEncryptedKey(text: string): boolean {
  return /-----BEGIN (ENCRYPTED PRIVATE KEY|[A-Z ]*PRIVATE KEY-----\r?\nProc-Type: 4,ENCRYPTED)/
    .test(text);
}

/** Options of {@linkcode unlockKey}. */
export interface UnlockKeyOptions {
  /** The passphrase of an encrypted key. Default: none (the key must be unencrypted). */
  passphrase?: string;
  /** How the key is named in messages. Default: `the key "<path>"`. */
  what?: string;
}

/**
 * Reads the private key at `path` and returns it unencrypted, PEM, in memory only: an
 * unencrypted key as it is on disk, an encrypted one decrypted with `options.passphrase`
 * (PKCS#8). Throws `ERR_PASSPHRASE_REQUIRED` for an encrypted key without a passphrase and
 * `ERR_BAD_PASSPHRASE` for a wrong one.
 *
 * @example
 * ```ts
 * import { unlockKey } from "./keys.ts";
 * const pem = await unlockKey("/tmp/key.pem", { passphrase: "a long passphrase" });
 * ```
 */
export async function unlockKey(path: string, options: UnlockKeyOptions = {}): Promise<string> {
  const text = await Deno.readTextFile(path);
  if (!isEncryptedKey(text)) return text;
  const what = options.what ?? `the key "${path}"`;
  if (options.passphrase === undefined) {
    throw new E2eError("ERR_PASSPHRASE_REQUIRED", `Cannot unlock ${what}: it is encrypted`);
  }
  try {
    return createPrivateKey({ key: text, format: "pem", passphrase: options.passphrase })
      .export({ type: "pkcs8", format: "pem" }).toString();
  } catch {
    // One error whatever failed (wrong passphrase or a damaged file): nothing to learn from it.
    throw new E2eError("ERR_BAD_PASSPHRASE", `Cannot unlock ${what}: wrong passphrase`);
  }
}

const ALGORITHMS: Record<KeyType, string[]> = {
  "rsa-4096": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
  "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  "ec-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "ed25519": ["-algorithm", "ED25519"],
};

// `openssl req -newkey` takes the algorithm by its lower-case name.
const NEW_KEY: Record<KeyType, string[]> = {
  "rsa-4096": ["-newkey", "rsa", "-pkeyopt", "rsa_keygen_bits:4096"],
  "rsa-2048": ["-newkey", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"],
  "ec-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "ed25519": ["-newkey", "ed25519"],
};

// `-subj /CN=…` with openssl's special characters escaped.
function subject(commonName: string): string {
  return `/CN=${commonName.replace(/[\\/+=]/g, (c) => `\\${c}`)}`;
}
