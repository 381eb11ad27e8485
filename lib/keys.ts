/**
 * Private keys and certificate requests made by openssl, for the CA and the
 * clients alike. Keys are written 0600 and never leave the folder given.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { openssl, PASSPHRASE_ARG } from "./openssl.ts";

/** Every key type e2e-chat makes. */
export type KeyType = "rsa-4096" | "rsa-2048" | "ec-p256" | "ed25519";

/** Options of {@linkcode generateKey}. */
export interface GenerateKeyOptions {
  /** Encrypt the key with AES-256 under this passphrase. Default: unencrypted. */
  passphrase?: string;
}

/**
 * Generates a private key of `type` at `path` (mode 0600) with openssl genpkey;
 * refuses to replace an existing file. The key is made in a private scratch
 * folder beside `path` and linked into place, so it never exists half-written
 * or with a wider mode.
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
  if (options.passphrase !== undefined) args.push("-aes-256-cbc", "-pass", PASSPHRASE_ARG);
  const scratch = await Deno.makeTempDir({ dir: dirname(path), prefix: ".keygen-" });
  try {
    await openssl([...args, "-out", "key.pem"], { cwd: scratch, passphrase: options.passphrase });
    await Deno.chmod(join(scratch, "key.pem"), 0o600);
    await Deno.link(join(scratch, "key.pem"), path); // link() fails rather than clobber a key
  } finally {
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
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
    `/CN=${commonName.replace(/[\\/+=]/g, (c) => `\\${c}`)}`,
    "-config",
    "/dev/null",
  ], { passphrase: options.passphrase });
  return new TextDecoder().decode(stdout);
}

const ALGORITHMS: Record<KeyType, string[]> = {
  "rsa-4096": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
  "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  "ec-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "ed25519": ["-algorithm", "ED25519"],
};
