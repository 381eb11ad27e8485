/**
 * A CA that misbehaves, for the tests that must catch it: it uses its own key
 * and its own database, with none of e2e-chat's rules.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeItem, newItemId, seal } from "../lib/cms.ts";
import { CaPaths } from "../ca/home.ts";
import { withLock } from "../lib/lock.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { makeCsr, PASSPHRASE, runCa } from "./_helpers.ts";
import { assertSuccess, type Service } from "./_service_helpers.ts";
import type { User } from "./_chat_helpers.ts";

const CA_ENV = { E2E_CHAT_CA_PASSPHRASE: PASSPHRASE };

/**
 * Signs a certificate for `name` with `keyPem`'s key straight through `openssl ca`
 * in the CA's own folder, with none of e2e-chat's rules: it goes into the
 * database (and so, at the next commit, into the log) and revokes nothing.
 */
export async function signBehindTheirBacks(
  service: Service,
  name: string,
  keyPem: string,
): Promise<string> {
  const caDir = join(service.home, "ca");
  const { csr } = await makeCsr(name, { keyPem });
  await Deno.writeTextFile(join(caDir, "evil.csr"), csr);
  await Deno.writeTextFile(
    join(caDir, "evil.cnf"),
    `[ leaf ]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n` +
      `extendedKeyUsage = clientAuth, serverAuth\nsubjectAltName = DNS:${name}\n`,
  );
  // Under the CA's lock, like any writer of its database: the service may be signing too.
  const paths = new CaPaths(service.home);
  // openssl ca rewrites index.txt into a new file: like the CA's own commits (ca/store.ts), a new
  // generation before and after, so that a running service's index cache reads it again.
  const bump = () =>
    Deno.writeTextFile(paths.generation, crypto.randomUUID() + "\n", { mode: 0o600 });
  await withLock(paths.lock, async () => {
    await bump();
    await openssl([
      ...["ca", "-config", "openssl.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-batch"],
      ...["-passin", PASSPHRASE_ARG, "-in", "evil.csr", "-subj", `/CN=${name}`],
      ...[
        "-extfile",
        "evil.cnf",
        "-extensions",
        "leaf",
        "-days",
        "2",
        "-notext",
        "-out",
        "evil.pem",
      ],
    ], { cwd: caDir, passphrase: PASSPHRASE });
    await bump();
  });
  const pem = await Deno.readTextFile(join(caDir, "evil.pem"));
  for (const f of ["evil.csr", "evil.cnf", "evil.pem"]) await Deno.remove(join(caDir, f));
  return pem;
}

/** Any commit makes the CA bring its log level with its database. */
export async function commitSomething(service: Service): Promise<void> {
  assertSuccess(await runCa(service.home, ["crl"], { env: CA_ENV }), "ca crl");
}

/**
 * A mailbox message item to `to` that says it is from `from`, sealed (signed) with the key at
 * `signer.keyPath` and its certificate `signer.cert`, e.g. one the CA signed behind their backs.
 */
export async function sealedMessageAs(
  from: string,
  signer: { keyPath: string; cert: string },
  to: User,
  text: string,
): Promise<Uint8Array> {
  return await seal(
    encodeItem({
      id: newItemId(),
      from,
      to: to.name,
      kind: "message",
      sent: new Date(),
      payload: new TextEncoder().encode(text),
    }),
    {
      key: { path: signer.keyPath },
      signerCert: signer.cert,
      recipientCert: await Deno.readTextFile(to.certPath),
    },
  );
}

/** POSTs the sealed item `der` to `to`'s mailbox as the holder of `client`; the CA takes it (200). */
export async function postItem(
  service: Service,
  to: string,
  der: Uint8Array,
  client: { cert: string; key: string },
): Promise<void> {
  const posted = await service.request(`/v1/mailbox/${to}`, {
    method: "POST",
    body: der,
    headers: { "content-type": "application/cms" },
    cert: client.cert,
    key: client.key,
  });
  assert.equal(posted.status, 200, posted.body);
}
