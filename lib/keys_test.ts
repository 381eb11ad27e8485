import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { e2eError, withTempDir } from "./_test_util.ts";
import { encryptKey, generateKey, isEncryptedKey, makeRequest, unlockKey } from "./keys.ts";
import { openssl } from "./openssl.ts";

const PASSPHRASE = "a long enough passphrase";

function publicPem(pem: string): string {
  return createPublicKey(createPrivateKey(pem)).export({ type: "spki", format: "pem" }).toString();
}

Deno.test("generateKey() with kdf scrypt writes a PKCS#8 key under scrypt and AES-256-CBC that openssl and unlockKey() open", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "key.pem");
    await generateKey(path, "ed25519", { passphrase: PASSPHRASE, kdf: "scrypt" });
    const text = await Deno.readTextFile(path);
    assert.ok(isEncryptedKey(text));
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const asn1 = new TextDecoder().decode((await openssl(["asn1parse", "-in", path])).stdout);
    assert.match(asn1, /:scrypt/);
    assert.match(asn1, /:aes-256-cbc/);
    await openssl(["pkey", "-in", path, "-passin", "env:E2E_CHAT_PASSIN", "-noout"], {
      passphrase: PASSPHRASE,
    });
    const plain = await unlockKey(path, { passphrase: PASSPHRASE });
    assert.match(plain, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.ok(!isEncryptedKey(plain));
    const csr = await makeRequest(path, "alice", { passphrase: PASSPHRASE });
    assert.match(csr, /^-----BEGIN CERTIFICATE REQUEST-----/);
    assert.ok([...Deno.readDirSync(dir)].every((e) => e.name === "key.pem"), "scratch left");
  });
});

Deno.test("unlockKey() returns a plain key as it is, refuses an encrypted one without a passphrase, and says only 'wrong passphrase' for a wrong one", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "key.pem");
    await generateKey(path, "ec-p256");
    const plain = await Deno.readTextFile(path);
    assert.equal(await unlockKey(path), plain);
    assert.equal(await unlockKey(path, { passphrase: "ignored for a plain key" }), plain);

    const sealed = join(dir, "sealed.pem");
    await Deno.writeTextFile(sealed, await encryptKey(plain, PASSPHRASE));
    assert.equal(publicPem(await unlockKey(sealed, { passphrase: PASSPHRASE })), publicPem(plain));
    await assert.rejects(
      unlockKey(sealed, { what: "the test key" }),
      e2eError("ERR_PASSPHRASE_REQUIRED", "Cannot unlock the test key: it is encrypted"),
    );
    await assert.rejects(
      unlockKey(sealed, { passphrase: "not it" }),
      e2eError("ERR_BAD_PASSPHRASE", `Cannot unlock the key "${sealed}": wrong passphrase`, {
        never: ["not it"],
      }),
    );
    // A damaged file is the same one error: nothing to learn from the difference.
    const text = await Deno.readTextFile(sealed);
    await Deno.writeTextFile(sealed, text.replace(/\n[A-Za-z0-9+/]{8}/, "\nAAAAAAAA"));
    await assert.rejects(
      unlockKey(sealed, { passphrase: PASSPHRASE }),
      e2eError("ERR_BAD_PASSPHRASE", `Cannot unlock the key "${sealed}": wrong passphrase`),
    );
  });
});

Deno.test("isEncryptedKey() knows PKCS#8 and traditional encrypted keys from plain ones", () => {
  assert.ok(isEncryptedKey("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII…"));
  assert.ok(
    isEncryptedKey("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: …"),
  );
  assert.ok(!isEncryptedKey("-----BEGIN PRIVATE KEY-----\nMII…"));
  assert.ok(!isEncryptedKey("-----BEGIN EC PRIVATE KEY-----\nMHcC…"));
});
