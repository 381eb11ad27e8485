/**
 * The client's own key and certificate request, made locally by openssl.
 * The private key never leaves this machine: it is written 0600 inside a 0700
 * folder and only its request is handed on.
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, writeFileAtomic } from "../lib/fs.ts";
import { checkName } from "../lib/names.ts";
import { generateKey, makeRequest } from "../lib/keys.ts";
import { ClientHome } from "./home.ts";

/** Key types a client can make. */
export const CLIENT_KEY_TYPES = ["ec-p256", "rsa-2048", "ed25519"] as const;
/** A key type of a client. */
export type ClientKeyType = typeof CLIENT_KEY_TYPES[number];

/** Options of {@linkcode makeKeyAndCsr}. */
export interface KeyOptions {
  /** Key type. Default: "ec-p256". */
  keyType?: ClientKeyType;
}

/**
 * Makes a new private key and a certificate request for `name` under `home`;
 * refuses to replace an existing key.
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
  await ensurePrivateDir(home);
  await ensurePrivateDir(paths.dir);
  if (await exists(paths.key)) {
    throw new E2eError("ERR_FILE", `A key already exists at "${paths.key}"`, {
      hint: "use another --home for another identity",
    });
  }
  await generateKey(paths.key, options.keyType ?? "ec-p256");
  const csr = await makeRequest(paths.key, name);
  await writeFileAtomic(paths.csr, csr, { mode: 0o644 });
  return { keyPath: paths.key, csrPath: paths.csr, csr };
}
