import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { e2eError, withTempDir } from "./_test_util.ts";
import {
  encryptKey,
  generateKey,
  generateKeyAndRequest,
  isEncryptedKey,
  isKeygenScratch,
  makeRequest,
  removeStaleKeygens,
  unlockKey,
} from "./keys.ts";
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

Deno.test("generateKeyAndRequest() makes each key type and a request for it in one openssl run: the request verifies, names the CN and carries the key written 0600", async () => {
  await withTempDir(async (dir) => {
    for (const type of ["ec-p256", "ed25519", "rsa-2048"] as const) {
      const path = join(dir, `${type}.pem`);
      const { csr, key } = await generateKeyAndRequest(path, "alice", { type });
      assert.equal(await Deno.readTextFile(path), key);
      assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
      assert.equal(createPrivateKey(key).asymmetricKeyType, type.split("-")[0]);
      const shown = new TextDecoder().decode(
        (await openssl(["req", "-verify", "-noout", "-subject", "-pubkey"], { stdin: csr })).stdout,
      );
      assert.match(shown, /^subject=CN ?= ?alice$/m);
      assert.ok(
        shown.includes(publicPem(key)),
        `${type}: the request carries the key's public key`,
      );
    }
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      ["ec-p256.pem", "ed25519.pem", "rsa-2048.pem"],
      "nothing else left",
    );
  });
});

Deno.test("generateKeyAndRequest() with a passphrase writes the key under scrypt (openssl pkey opens it) and returns it plain in memory only", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "key.pem");
    const { csr, key } = await generateKeyAndRequest(path, "alice", { passphrase: PASSPHRASE });
    const text = await Deno.readTextFile(path);
    assert.ok(isEncryptedKey(text));
    assert.ok(!text.includes(key.split("\n")[1]), "the plain key is not in the file");
    assert.match(
      new TextDecoder().decode((await openssl(["asn1parse", "-in", path])).stdout),
      /:scrypt/,
    );
    assert.equal(publicPem(await unlockKey(path, { passphrase: PASSPHRASE })), publicPem(key));
    assert.match(csr, /^-----BEGIN CERTIFICATE REQUEST-----/);
  });
});

Deno.test("generateKeyAndRequest() refuses to replace an existing file and leaves it as it was", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "key.pem");
    await Deno.writeTextFile(path, "an older key");
    await assert.rejects(generateKeyAndRequest(path, "alice"), Deno.errors.AlreadyExists);
    assert.equal(await Deno.readTextFile(path), "an older key");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["key.pem"]);
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

Deno.test("removeStaleKeygens() removes the scratch folders key generations killed before their key's link left, older than the given time, and nothing else", async () => {
  await withTempDir(async (dir) => {
    const old = new Date(Date.now() - 3_600_000);
    const folder = async (name: string, at?: Date) => {
      const path = join(dir, name);
      await Deno.mkdir(path);
      await Deno.writeTextFile(join(path, "key.pem"), "left");
      if (at) await Deno.utime(path, at, at);
      return path;
    };
    const stale = await folder(".keygen-a1B2c3", old);
    const young = await folder(".keygen-d4E5f6"); // another process may be making a key now
    const someones = await folder(".keygen-x.y", old); // not a name generateKey gives
    await Deno.writeTextFile(join(dir, ".keygen-f1le"), "a file, not a folder");
    const removed = await removeStaleKeygens(dir, { before: Date.now() - 60_000 });
    assert.equal(removed, 1);
    const left = new Set<string>();
    for await (const entry of Deno.readDir(dir)) left.add(join(dir, entry.name));
    assert.ok(!left.has(stale), "the stale scratch folder is gone");
    for (const path of [young, someones, join(dir, ".keygen-f1le")]) {
      assert.ok(left.has(path), `removed: ${path}`);
    }
    assert.equal(await removeStaleKeygens(join(dir, "missing")), 0, "a missing folder holds none");
    assert.ok(isKeygenScratch(".keygen-a1B2c3") && !isKeygenScratch(".keygen-x.y"));
  });
});
