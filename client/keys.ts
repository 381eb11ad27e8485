/**
 * The client's own key and certificate request, made locally by openssl.
 * The private key never leaves this machine: it is written 0600 inside a 0700
 * folder and only its request is handed on.
 *
 * @module
 */
import { createPrivateKey, type KeyObject } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, removeStaleTemps, writeFileAtomic } from "../lib/fs.ts";
import { checkName } from "../lib/names.ts";
import {
  encryptKey,
  generateKeyAndRequest,
  makeRequest,
  removeStaleKeygens,
  unlockKey,
} from "../lib/keys.ts";
import { ClientHome } from "./home.ts";

/** Key types a client can make. */
export const CLIENT_KEY_TYPES = ["ec-p256", "rsa-2048", "ed25519"] as const;
/** A key type of a client. */
export type ClientKeyType = typeof CLIENT_KEY_TYPES[number];

/**
 * The client key type of `key`; throws `ERR_KEY_REJECTED` for a key no client makes.
 *
 * @example
 * ```ts
 * import { createPrivateKey, generateKeyPairSync } from "node:crypto";
 * import { clientKeyType } from "./keys.ts";
 * const { privateKey } = generateKeyPairSync("ed25519");
 * console.log(clientKeyType(privateKey)); // "ed25519"
 * ```
 */
export function clientKeyType(key: KeyObject): ClientKeyType {
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === "ed25519") return "ed25519";
  if (key.asymmetricKeyType === "ec" && details.namedCurve === "prime256v1") return "ec-p256";
  if (key.asymmetricKeyType === "rsa" && details.modulusLength === 2048) return "rsa-2048";
  throw new E2eError("ERR_KEY_REJECTED", "The key in this home is not one a client makes", {
    hint: `clients use ${CLIENT_KEY_TYPES.join(", ")} keys; join in another --home`,
  });
}

/** Options of {@linkcode makeKeyAndCsr}. */
export interface KeyOptions {
  /**
   * Key type. Default: "ec-p256" for a new key; for a key alone that an earlier run left, its own
   * type (a type given that is not the key's is refused: the key is not replaced).
   */
  keyType?: ClientKeyType;
  /** Encrypt the key under this passphrase (scrypt, AES-256; lib/keys.ts). Default: unencrypted. */
  passphrase?: string;
}

/**
 * Makes a new private key and a certificate request for `name` under `home`;
 * refuses to replace an existing key. A key alone (a run killed between its key and its
 * request: no request, no identity) gets its request for `name` made again instead.
 *
 * @example
 * ```ts
 * import { makeKeyAndCsr } from "./keys.ts";
 * const { csrPath } = await makeKeyAndCsr("/tmp/alice-home", "alice");
 * ```
 */
export async function makeKeyAndCsr(
  home: string,
  name: string,
  options: KeyOptions = {},
): Promise<{ keyPath: string; csrPath: string; csr: string }> {
  checkName(name);
  const paths = new ClientHome(home).id;
  // Durable folders: the key in them is the only copy.
  await ensurePrivateDir(home, { durable: true });
  await ensurePrivateDir(paths.dir, { durable: true });
  // The temporary files of writes killed before their rename (an earlier csr's key, cut short),
  // and the scratch folders of key generations killed before their key's link.
  await removeStaleTemps(paths.dir);
  await removeStaleKeygens(paths.dir);
  if (await exists(paths.key)) {
    // A csr killed between its key and its request left the key alone, no identity: its request
    // is made again (the key was never handed on, so any name may have it).
    if (!await exists(paths.csr) && !await exists(paths.record) && !await exists(paths.cert)) {
      const pem = await unlockKey(paths.key, {
        passphrase: options.passphrase,
        what: `the key "${paths.key}"`,
      });
      const have = clientKeyType(createPrivateKey(pem));
      if (options.keyType !== undefined && options.keyType !== have) {
        // Not replaced: a key is the one thing here that cannot be made again.
        throw new E2eError(
          "ERR_USAGE",
          `"${paths.key}" is the ${have} key an earlier csr left without its request, not ${options.keyType}`,
          {
            hint: `run csr again with --key-type ${have} (or without --key-type) to make its ` +
              `request, or remove "${paths.key}" to make a new ${options.keyType} key`,
          },
        );
      }
      const csr = await makeRequest(paths.key, name, { passphrase: options.passphrase });
      await writeFileAtomic(paths.csr, csr, { mode: 0o644, syncDir: true });
      return { keyPath: paths.key, csrPath: paths.csr, csr };
    }
    throw new E2eError("ERR_FILE", `A key already exists at "${paths.key}"`, {
      hint: "use another --home for another identity",
    });
  }
  const { csr } = await generateKeyAndRequest(paths.key, name, {
    type: options.keyType ?? "ec-p256",
    passphrase: options.passphrase,
  });
  // Durable with its name, as the key is: it is what the user hands on next.
  await writeFileAtomic(paths.csr, csr, { mode: 0o644, syncDir: true });
  return { keyPath: paths.key, csrPath: paths.csr, csr };
}

/** Options of {@linkcode changePassphrase}. */
export interface ChangePassphraseOptions {
  /** The current passphrase, when the key is encrypted. Default: none (an unencrypted key). */
  passphrase?: string;
  /** The new passphrase. Default: none — the key is stored unencrypted. */
  newPassphrase?: string;
}

/**
 * Re-encrypts `HOME/id/key.pem` under a new passphrase, or stores it unencrypted when none is
 * given. The new file is written beside the key and renamed over it, so a crash leaves either
 * the old key or the new one, each readable; the key itself (and so the certificate) is the same.
 * Throws `ERR_BAD_PASSPHRASE` when `passphrase` does not unlock the key.
 *
 * @example
 * ```ts
 * import { changePassphrase } from "./keys.ts";
 * await changePassphrase("/tmp/alice", { passphrase: "old passphrase", newPassphrase: "new one!" });
 * ```
 */
export async function changePassphrase(
  home: string,
  options: ChangePassphraseOptions = {},
): Promise<{ keyPath: string; encrypted: boolean }> {
  const { key } = new ClientHome(home).id;
  if (!await exists(key)) {
    throw new E2eError("ERR_NOT_ENROLLED", `No key at "${key}"`, {
      hint: "join first: deno task client join",
    });
  }
  const plain = await unlockKey(key, { passphrase: options.passphrase, what: `your key "${key}"` });
  const next = options.newPassphrase === undefined
    ? plain
    : await encryptKey(plain, options.newPassphrase);
  // The folder too: after a power cut the passphrase in force is the one we reported.
  await writeFileAtomic(key, next, { mode: 0o600, syncDir: true });
  return { keyPath: key, encrypted: options.newPassphrase !== undefined };
}
