import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { parseCsr } from "../lib/csr.ts";
import { E2eError } from "../lib/errors.ts";
import { keyFingerprint } from "../lib/x509.ts";
import { withTempDir } from "../tests/_helpers.ts";
import { makeKeyAndCsr } from "./keys.ts";
import { ClientHome } from "./home.ts";

function mode(info: Deno.FileInfo): number {
  return (info.mode ?? 0) & 0o777;
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) out.push(entry.name);
  return out.sort();
}

Deno.test("ClientHome keeps the identity in HOME/id", () => {
  const paths = new ClientHome("/h").id;
  assert.equal(paths.dir, "/h/id");
  assert.equal(paths.key, "/h/id/key.pem");
  assert.equal(paths.csr, "/h/id/request.csr");
});

Deno.test("makeKeyAndCsr() writes a 0600 key in a 0700 folder and a request naming the name", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "alice-home");
    const { keyPath, csrPath, csr } = await makeKeyAndCsr(home, "alice");
    const paths = new ClientHome(home).id;
    assert.equal(keyPath, paths.key);
    assert.equal(csrPath, paths.csr);
    assert.equal(mode(await Deno.stat(home)), 0o700);
    assert.equal(mode(await Deno.stat(paths.dir)), 0o700);
    assert.equal(mode(await Deno.stat(keyPath)), 0o600);
    assert.equal(await Deno.readTextFile(csrPath), csr);
    assert.deepEqual(await names(paths.dir), ["key.pem", "request.csr"], "no scratch left");

    const keyPem = await Deno.readTextFile(keyPath);
    assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    const request = parseCsr(csr);
    assert.deepEqual(request.commonNames, ["alice"]);
    assert.deepEqual(request.subject, [["2.5.4.3", "alice"]]);
    assert.equal(request.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.equal(request.keyFingerprint, keyFingerprint(createPublicKey(createPrivateKey(keyPem))));
  });
});

Deno.test("makeKeyAndCsr() makes RSA 2048 and Ed25519 keys on request", async () => {
  await withTempDir(async (dir) => {
    const rsa = parseCsr(
      (await makeKeyAndCsr(join(dir, "rsa"), "bob", { keyType: "rsa-2048" })).csr,
    );
    assert.equal(rsa.publicKey.asymmetricKeyType, "rsa");
    assert.equal(rsa.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
    const ed = parseCsr(
      (await makeKeyAndCsr(join(dir, "ed"), "carol", { keyType: "ed25519" })).csr,
    );
    assert.equal(ed.publicKey.asymmetricKeyType, "ed25519");
    assert.deepEqual(ed.commonNames, ["carol"]);
  });
});

Deno.test("makeKeyAndCsr() tightens an existing home to 0700", async () => {
  await withTempDir(async (home) => {
    await Deno.chmod(home, 0o755);
    await makeKeyAndCsr(home, "alice");
    assert.equal(mode(await Deno.stat(home)), 0o700);
  });
});

Deno.test("makeKeyAndCsr() refuses to replace an existing key", async () => {
  await withTempDir(async (home) => {
    const first = await makeKeyAndCsr(home, "alice");
    const key = await Deno.readTextFile(first.keyPath);
    await assert.rejects(() => makeKeyAndCsr(home, "alice"), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_FILE");
      assert.equal(e.message, `A key already exists at "${first.keyPath}"`);
      assert.equal(e.hint, "use another --home for another identity");
      return true;
    });
    assert.equal(await Deno.readTextFile(first.keyPath), key);
    assert.equal(await Deno.readTextFile(first.csrPath), first.csr);
    assert.deepEqual(await names(new ClientHome(home).id.dir), ["key.pem", "request.csr"]);
  });
});

Deno.test("makeKeyAndCsr() with an encrypted key left alone (killed before its request) asks its passphrase, then makes its request again", async () => {
  await withTempDir(async (home) => {
    const passphrase = "a csr passphrase 17";
    const first = await makeKeyAndCsr(home, "alice", { passphrase });
    await Deno.remove(first.csrPath);
    await assert.rejects(() => makeKeyAndCsr(home, "alice"), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_PASSPHRASE_REQUIRED");
      return true;
    });
    assert.ok(!(await names(new ClientHome(home).id.dir)).includes("request.csr"));
    const again = await makeKeyAndCsr(home, "alice", { passphrase });
    const key = createPrivateKey({ key: await Deno.readTextFile(first.keyPath), passphrase });
    assert.equal(
      parseCsr(again.csr).keyFingerprint,
      keyFingerprint(createPublicKey(key)),
    );
    assert.equal(await Deno.readTextFile(again.csrPath), again.csr);
  });
});

Deno.test("makeKeyAndCsr() removes the scratch folder of a key generation an earlier run was killed in, and makes the key", async () => {
  await withTempDir(async (home) => {
    const dir = new ClientHome(home).id.dir;
    const scratch = join(dir, ".keygen-a1B2c3");
    await Deno.mkdir(scratch, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(join(scratch, "key.pem"), "a key that was never linked", {
      mode: 0o600,
    });
    const old = new Date(Date.now() - 3_600_000);
    await Deno.utime(scratch, old, old);
    await makeKeyAndCsr(home, "alice");
    assert.deepEqual((await names(dir)).sort(), ["key.pem", "request.csr"]);
  });
});

Deno.test("makeKeyAndCsr() refuses an invalid name before writing anything", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    for (const name of ["../evil", "A B", "-x", "", "x".repeat(64), "zoë"]) {
      await assert.rejects(() => makeKeyAndCsr(home, name), (e) => {
        assert.ok(e instanceof E2eError);
        assert.equal(e.code, "ERR_NAME_INVALID");
        assert.equal(e.message, `Invalid name ${JSON.stringify(name)}`);
        return true;
      });
    }
    assert.deepEqual(await names(dir), []);
  });
});
