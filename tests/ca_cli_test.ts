/**
 * End-to-end tests of the CA command line (`deno task ca`): ca/main.ts run as
 * a separate process with the task's permissions, the real openssl, real
 * files. Certificates are checked with openssl itself, not with our parsers.
 *
 * Test CAs use EC P-256 keys for speed; one test makes the default RSA-4096 CA.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash, createPrivateKey } from "node:crypto";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { openssl, OpensslError, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { pemDecode } from "../lib/pem.ts";
import { type RunResult, sleep, TaskProcess } from "./_harness.ts";
import { argvRecordingOpenssl } from "./_hostile_helpers.ts";
import { caFileNames, readIndexChecked } from "./_ca_files.ts";
import { startService } from "./_service_helpers.ts";
import { exists } from "../lib/fs.ts";
import { assertLeafProfile, inspect, KEY_ID, text, verify } from "./_openssl_view.ts";
import { makeCsr, PASSPHRASE, ROOT, runCa, runCli, snapshot, withTempDir } from "./_helpers.ts";

const DAY_MS = 86_400_000;
const FIXTURES = join(ROOT, "fixtures");
const KEY_HINT = "use RSA (2048 to 4096 bits), EC P-256/P-384 or Ed25519";
const NAME_HINT = "use 1-63 characters: a-z, 0-9, '_', '-', starting with a letter or digit";
const PASSPHRASE_HINT = "set E2E_CHAT_CA_PASSPHRASE or pass --passphrase-file FILE";

// ---------------------------------------------------------------------------
// Helpers

function fixture(file: string): string {
  return join(FIXTURES, file);
}

function caDir(home: string): string {
  return join(home, "ca");
}

/** Creates a test CA (EC P-256) in `home`. */
async function initCa(home: string, ...args: string[]): Promise<RunResult> {
  const result = await runCa(home, ["init", "--key-type", "ec-p256", ...args]);
  assertSuccess(result);
  return result;
}

/** Signs `csrFile` for `name` and returns the PEM printed on stdout. */
async function sign(
  home: string,
  name: string,
  csrFile: string,
  ...args: string[]
): Promise<string> {
  const result = await runCa(home, ["sign", "--name", name, csrFile, ...args]);
  assertSuccess(result);
  return result.stdout;
}

/** Makes a fresh request for `name` with openssl and writes it to `dir/<file>`. */
async function writeCsr(dir: string, file: string, name: string): Promise<string> {
  const { csr } = await makeCsr(name);
  const path = join(dir, file);
  await Deno.writeTextFile(path, csr);
  return path;
}

function assertSuccess(result: RunResult): void {
  assert.equal(
    result.code,
    0,
    `expected success, got exit ${result.code}\nstderr: ${result.stderr}`,
  );
}

/** What a failed run must print: one error line, and maybe one hint line. */
interface ExpectedFailure {
  /** Exit code. */
  code: number;
  /** The error message after `e2e-chat: error: `. */
  error: string;
  /** The exact hint; when absent, any single hint line (or none) is accepted. */
  hint?: string;
}

function assertFailure(result: RunResult, expected: ExpectedFailure): void {
  const context = `stderr: ${JSON.stringify(result.stderr)}`;
  assert.equal(result.code, expected.code, `exit code; ${context}`);
  assert.equal(result.stdout, "", "nothing on stdout");
  const lines = result.stderr.split("\n");
  assert.equal(lines.pop(), "", `stderr ends with a newline; ${context}`);
  assert.equal(lines[0], `e2e-chat: error: ${expected.error}`);
  if (expected.hint !== undefined) {
    assert.deepEqual(lines.slice(1), [`e2e-chat: hint: ${expected.hint}`]);
  } else {
    assert.ok(
      lines.length === 1 || (lines.length === 2 && lines[1].startsWith("e2e-chat: hint: ")),
      `one error line, at most one hint line; ${context}`,
    );
  }
}

/** Runs `run`, which must fail as `expected` and leave every file under `home` as it was. */
async function assertRefused(
  home: string,
  run: () => Promise<RunResult>,
  expected: ExpectedFailure,
): Promise<RunResult> {
  const before = await snapshot(home);
  const result = await run();
  assertFailure(result, expected);
  assert.deepEqual(await snapshot(home), before, "the CA's files are unchanged");
  return result;
}

/** One row of `ca list --json`. */
interface Listed {
  name: string;
  serial: string;
  status: string;
  notAfter: string;
  revokedAt?: string;
  reason?: string;
  fingerprint: string;
}

async function listJson(home: string): Promise<Listed[]> {
  const result = await runCa(home, ["list", "--json"]);
  assertSuccess(result);
  return JSON.parse(result.stdout);
}

function fingerprint(pem: string): string {
  const der = pemDecode(pem, "CERTIFICATE");
  assert.ok(der, "a PEM certificate");
  return createHash("sha256").update(der).digest("hex");
}

// Serials compare as numbers: openssl's index writes whole bytes ("0A…").
function sameSerial(a: string, b: string): boolean {
  return BigInt(`0x${a.replace(/:/g, "")}`) === BigInt(`0x${b.replace(/:/g, "")}`);
}

/** Lists `dir` (not recursive), sorted. */
async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) out.push(entry.name);
  return out.sort();
}

async function mode(path: string): Promise<number> {
  return (await Deno.stat(path)).mode! & 0o777;
}

// ---------------------------------------------------------------------------
// init

Deno.test("ca init creates the CA files with private modes", async () => {
  await withTempDir(async (parent) => {
    const home = join(parent, "home");
    const result = await initCa(home);
    const dir = caDir(home);
    const caPem = await Deno.readTextFile(join(dir, "ca.crt"));
    assert.equal(
      result.stdout.split("\n")[0],
      `Created the CA in ${dir}`,
    );
    assert.match(result.stdout, new RegExp(`fingerprint: ${fingerprint(caPem)} \\(SHA-256\\)`));
    assert.equal(result.stderr, "");
    assert.deepEqual(await names(dir), [
      "ca.crt",
      "ca.key",
      "certs",
      "crl.pem",
      "crlnumber",
      "index.txt",
      "index.txt.attr",
      "openssl.cnf",
      "tmp",
    ]);
    assert.deepEqual(await names(home), [".ca.lock", "ca"]);
    assert.equal(await mode(home), 0o700);
    assert.equal(await mode(join(home, ".ca.lock")), 0o600);
    assert.equal(await mode(dir), 0o700);
    assert.equal(await mode(join(dir, "ca.key")), 0o600);
    assert.equal(await mode(join(dir, "certs")), 0o700);
    assert.equal(await mode(join(dir, "index.txt")), 0o600);
    assert.equal(await Deno.readTextFile(join(dir, "index.txt")), "");
    // The initial CRL is signed by the new CA and lists nothing.
    const crl = await text(["crl", "-in", join(dir, "crl.pem"), "-CAfile", join(dir, "ca.crt")]);
    assert.doesNotMatch(crl, /Serial Number/);
  });
});

Deno.test("ca init makes a self-signed CA certificate with the CA profile", async () => {
  await withTempDir(async (home) => {
    const before = Date.now();
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const ca = await inspect(await Deno.readTextFile(caFile));
    assert.equal(ca.subject, "CN=e2e-chat CA");
    assert.equal(ca.issuer, ca.subject);
    assert.equal(ca.signatureAlgorithm, "ecdsa-with-SHA256");
    assert.equal(ca.publicKey, "256 bit");
    const ext = Object.fromEntries(ca.extensions);
    assert.deepEqual(Object.keys(ext).sort(), [
      "X509v3 Authority Key Identifier",
      "X509v3 Basic Constraints",
      "X509v3 Key Usage",
      "X509v3 Subject Key Identifier",
    ]);
    assert.deepEqual(ext["X509v3 Basic Constraints"], {
      critical: true,
      value: "CA:TRUE, pathlen:0",
    });
    assert.deepEqual(ext["X509v3 Key Usage"], {
      critical: true,
      value: "Certificate Sign, CRL Sign",
    });
    assert.match(ext["X509v3 Subject Key Identifier"].value, KEY_ID);
    assert.equal(
      ext["X509v3 Authority Key Identifier"].value,
      ext["X509v3 Subject Key Identifier"].value,
    );
    assert.equal(ca.notAfter.getTime() - ca.notBefore.getTime(), 1826 * DAY_MS);
    assert.ok(ca.notBefore.getTime() >= Math.floor(before / 1000) * 1000 - 1000);
    const self = await verify(caFile, await Deno.readTextFile(caFile));
    assert.ok(self.ok, self.output);
  });
});

Deno.test("ca init --cn and --days set the CA's subject and validity", async () => {
  await withTempDir(async (home) => {
    await initCa(home, "--cn", "Acme Chat/Ops CA", "--days", "30");
    const ca = await inspect(await Deno.readTextFile(join(caDir(home), "ca.crt")));
    assert.equal(ca.subject, "CN=Acme Chat/Ops CA");
    assert.equal(ca.notAfter.getTime() - ca.notBefore.getTime(), 30 * DAY_MS);
  });
});

Deno.test("ca init makes an Ed25519 CA whose certificates verify", async () => {
  await withTempDir(async (home) => {
    assertSuccess(await runCa(home, ["init", "--key-type", "ed25519"]));
    const caFile = join(caDir(home), "ca.crt");
    const ca = await inspect(await Deno.readTextFile(caFile));
    assert.equal(ca.signatureAlgorithm, "ED25519");
    const pem = await sign(home, "alice", fixture("alice-ec.csr"));
    const cert = await inspect(pem);
    assert.equal(cert.signatureAlgorithm, "ED25519");
    assertLeafProfile(cert, ca, "alice", "Digital Signature, Key Agreement");
    const result = await verify(caFile, pem);
    assert.ok(result.ok, result.output);
  });
});

Deno.test("ca init defaults to an RSA-4096 key signed with SHA-256", async () => {
  await withTempDir(async (home) => {
    const result = await runCa(home, ["init"]);
    assertSuccess(result);
    assert.equal(
      result.stderr,
      "e2e-chat: generating an RSA-4096 key (this can take a few seconds)\n",
    );
    const ca = await inspect(await Deno.readTextFile(join(caDir(home), "ca.crt")));
    assert.equal(ca.publicKey, "4096 bit");
    assert.equal(ca.signatureAlgorithm, "sha256WithRSAEncryption");
    assert.equal(ca.notAfter.getTime() - ca.notBefore.getTime(), 1826 * DAY_MS);
  });
});

Deno.test("ca init encrypts the CA key with the passphrase", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const keyFile = join(caDir(home), "ca.key");
    const pem = await Deno.readTextFile(keyFile);
    assert.match(pem, /^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/);
    const args = ["pkey", "-in", keyFile, "-passin", PASSPHRASE_ARG, "-noout"];
    await openssl(args, { passphrase: PASSPHRASE });
    await assert.rejects(
      openssl(args, { passphrase: "not the passphrase" }),
      (e) => e instanceof OpensslError && e.badPassphrase,
    );
  });
});

Deno.test("ca init refuses to overwrite an existing CA", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await assertRefused(home, () => runCa(home, ["init", "--key-type", "ec-p256"]), {
      code: 1,
      error: `Cannot create a CA: "${caDir(home)}" already exists`,
      hint: "use another --home, or remove that folder to start over",
    });
  });
});

Deno.test("ca init on an existing CA says so before it asks for a passphrase or makes a key", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const result = await assertRefused(
      home,
      () => runCa(home, ["init"], { env: { E2E_CHAT_CA_PASSPHRASE: "" } }),
      {
        code: 1,
        error: `Cannot create a CA: "${caDir(home)}" already exists`,
        hint: "use another --home, or remove that folder to start over",
      },
    );
    assert.ok(!result.stderr.includes("generating"), result.stderr);
  });
});

Deno.test("ca init --days 0 says so before it asks for a passphrase", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    assertFailure(
      await runCa(home, ["init", "--days", "0"], { env: { E2E_CHAT_CA_PASSPHRASE: "" } }),
      {
        code: 1,
        error: 'Invalid validity "0": use whole days from 1 to 36500',
      },
    );
    assert.equal(await exists(home), false, "nothing was made");
  });
});

Deno.test("ca init with a --cn of 65 characters says so before it asks for a passphrase or makes a key", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    assertFailure(
      await runCa(home, ["init", "--cn", "x".repeat(65)], { env: { E2E_CHAT_CA_PASSPHRASE: "" } }),
      {
        code: 2,
        error: "Invalid CA common name: use 1 to 64 printable characters",
      },
    );
    assert.equal(await exists(home), false, "nothing was made");
  });
});

Deno.test("ca init without a passphrase on a non-terminal writes nothing", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    const result = await runCli("ca/main.ts", ["init", "--key-type", "ec-p256"], {
      env: { E2E_CHAT_HOME: home },
    });
    assertFailure(result, {
      code: 1,
      error: "New CA passphrase required and stdin is not a terminal",
      hint: PASSPHRASE_HINT,
    });
    assert.deepEqual(await names(dir), [], "not even the home folder is created");
  });
});

Deno.test("ca init refuses a passphrase shorter than 8 characters", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    const result = await runCa(home, ["init", "--key-type", "ec-p256"], {
      env: { E2E_CHAT_CA_PASSPHRASE: "seven77" },
    });
    assertFailure(result, {
      code: 1,
      error: "New CA passphrase too short: use at least 8 characters",
    });
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("ca init reads --passphrase-file relative to the working directory", async () => {
  await withTempDir(async (dir) => {
    const secret = "from a file 5678";
    await Deno.writeTextFile(join(dir, "pass.txt"), `${secret}\nignored second line\n`);
    const args = ["--home", "home", "--passphrase-file", "pass.txt"];
    assertSuccess(
      await runCli("ca/main.ts", ["init", "--key-type", "ec-p256", ...args], { cwd: dir }),
    );
    const keyFile = join(dir, "home", "ca", "ca.key");
    await openssl(["pkey", "-in", keyFile, "-passin", PASSPHRASE_ARG, "-noout"], {
      passphrase: secret,
    });
    // The same file unlocks the CA for signing.
    const signed = await runCli(
      "ca/main.ts",
      ["sign", "--name", "alice", fixture("alice-ec.csr"), ...args],
      { cwd: dir },
    );
    assertSuccess(signed);
    assert.match(signed.stdout, /^-----BEGIN CERTIFICATE-----\n/);
  });
});

Deno.test("ca init --home beats E2E_CHAT_HOME", async () => {
  await withTempDir(async (dir) => {
    const fromEnv = join(dir, "env-home");
    const fromFlag = join(dir, "flag-home");
    assertSuccess(
      await runCa(fromEnv, ["init", "--key-type", "ec-p256", "--home", fromFlag]),
    );
    assert.deepEqual(await names(dir), ["flag-home"]);
    assert.deepEqual(await listJson(fromFlag), []);
    assertFailure(await runCa(fromEnv, ["list"]), {
      code: 1,
      error: `No CA in "${join(fromEnv, "ca")}"`,
      hint: `E2E_CHAT_HOME names this home ("${fromEnv}"): unset it or pass --home DIR to use ` +
        "the CA's, or create a CA here with `deno task ca init`",
    });
  });
});

Deno.test("ca commands on a home without a CA say when E2E_CHAT_HOME chose it, and ask no passphrase", async () => {
  await withTempDir(async (dir) => {
    // README's terminals export E2E_CHAT_HOME for a member's client; the admin's ca commands
    // run there must not only suggest making a CA in the member's home.
    const member = join(dir, "alice");
    await Deno.mkdir(member, { mode: 0o700 });
    const fromEnv = `E2E_CHAT_HOME names this home ("${member}"): unset it or pass --home DIR ` +
      "to use the CA's, or create a CA here with `deno task ca init`";
    for (const args of [["list"], ["invite", "bob"], ["invites"], ["revoke", "bob"], ["crl"]]) {
      await assertRefused(
        member,
        () => runCa(member, args, { env: { E2E_CHAT_CA_PASSPHRASE: "" } }),
        {
          code: 1,
          error: `No CA in "${join(member, "ca")}"`,
          hint: fromEnv,
        },
      );
    }
    assertFailure(await runCa(member, ["list", "--home", member]), {
      code: 1,
      error: `No CA in "${join(member, "ca")}"`,
      hint: "create one with `deno task ca init`, or pass the right --home",
    });
  });
});

Deno.test("ca init refuses an unknown key type", async () => {
  await withTempDir(async (home) => {
    const result = await runCa(home, ["init", "--key-type", "rsa-1024"]);
    assertFailure(result, {
      code: 2,
      error: 'Unknown key type "rsa-1024"',
      hint: "use one of rsa-4096, ec-p256, ed25519",
    });
    assert.deepEqual(await names(home), []);
  });
});

// ---------------------------------------------------------------------------
// sign

Deno.test("ca sign prints a certificate that openssl verifies against ca.crt", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const before = Date.now();
    const result = await runCa(home, ["sign", "--name", "alice", fixture("alice-ec.csr")]);
    const after = Date.now();
    assertSuccess(result);
    assert.equal(result.stderr, "");
    const pem = result.stdout;
    assert.match(
      pem,
      /^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n$/,
    );
    const checked = await verify(caFile, pem);
    assert.ok(checked.ok, checked.output);

    const [cert, ca] = await Promise.all([inspect(pem), inspect(await Deno.readTextFile(caFile))]);
    assertLeafProfile(cert, ca, "alice", "Digital Signature, Key Agreement");
    assert.equal(cert.signatureAlgorithm, "ecdsa-with-SHA256");
    // Seven days from now; notBefore is never in the future (a behind clock still accepts it).
    const start = Math.floor(before / 1000) * 1000;
    assert.ok(cert.notAfter.getTime() >= start + 7 * DAY_MS, cert.notAfter.toISOString());
    assert.ok(cert.notAfter.getTime() <= after + 7 * DAY_MS, cert.notAfter.toISOString());
    assert.ok(cert.notBefore.getTime() <= before);
    // Random serials of at least 64 bits (CA/B Forum baseline), never a counter.
    assert.ok(BigInt(`0x${cert.serial}`) >= 2n ** 63n, `serial ${cert.serial} has 64 bits`);

    const index = await readIndexChecked(home);
    assert.equal(index.length, 1);
    assert.equal(index[0].status, "V");
    assert.equal(index[0].name, "alice");
    assert.ok(sameSerial(index[0].serial, cert.serial));
    assert.equal(
      await Deno.readTextFile(join(caDir(home), "certs", `${index[0].serial}.pem`)),
      pem,
      "the CA keeps what it printed",
    );
  });
});

Deno.test("ca sign sets every extension itself, whatever the request asks for", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const ca = await inspect(await Deno.readTextFile(caFile));
    const mallory = await sign(home, "mallory", fixture("ca-true.csr"));
    const odd = await sign(home, "odd", fixture("odd-ext.csr"));
    const usage = "Digital Signature, Key Agreement";
    assertLeafProfile(await inspect(mallory), ca, "mallory", usage);
    assertLeafProfile(await inspect(odd), ca, "odd", usage);
    assert.doesNotMatch(
      await text(["x509", "-noout", "-text"], odd),
      /10\.0\.0\.1|example\.com|Code Signing/,
    );
  });
});

Deno.test("ca sign gives a request asking for CA:TRUE a certificate that cannot issue", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const { csr, key } = await makeCsr("mallory", {
      addext: ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign"],
    });
    await Deno.writeTextFile(join(home, "mallory.csr"), csr);
    const mallory = await sign(home, "mallory", join(home, "mallory.csr"));
    // mallory uses her certificate and key as a CA for a certificate of her own making.
    const forged = await withTempDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "mallory.pem"), mallory);
      await Deno.writeTextFile(join(dir, "mallory.key"), key);
      await Deno.writeTextFile(join(dir, "eve.csr"), (await makeCsr("eve")).csr);
      const args = ["x509", "-req", "-in", "eve.csr", "-CA", "mallory.pem", "-CAkey"];
      args.push("mallory.key", "-set_serial", "1", "-days", "1");
      const { stdout } = await openssl(args, { cwd: dir });
      return new TextDecoder().decode(stdout);
    });
    const result = await withTempDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "mallory.pem"), mallory);
      await Deno.writeTextFile(join(dir, "eve.pem"), forged);
      const args = ["verify", "-CAfile", caFile, "-untrusted", "mallory.pem", "eve.pem"];
      return await openssl(args, { cwd: dir }).then(() => "OK", (e) => String(e.stderr));
    });
    assert.match(result, /invalid CA certificate/);
  });
});

Deno.test("ca sign accepts RSA-2048, Ed25519 and EC P-384 requests", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const ca = await inspect(await Deno.readTextFile(caFile));
    const cases = [
      { name: "bob", file: "bob-rsa2048.csr", usage: "Digital Signature, Key Encipherment" },
      { name: "carol", file: "carol-ed25519.csr", usage: "Digital Signature" },
      { name: "dave", file: "dave-ec384.csr", usage: "Digital Signature, Key Agreement" },
    ];
    const pems = await Promise.all(cases.map((c) => sign(home, c.name, fixture(c.file))));
    for (const [i, c] of cases.entries()) {
      assertLeafProfile(await inspect(pems[i]), ca, c.name, c.usage);
      const checked = await verify(caFile, pems[i]);
      assert.ok(checked.ok, checked.output);
    }
    const listed = await listJson(home);
    assert.deepEqual(listed.map((r) => [r.name, r.status]).sort(), [
      ["bob", "valid"],
      ["carol", "valid"],
      ["dave", "valid"],
    ]);
  });
});

Deno.test("ca sign --days sets the validity", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const before = Date.now();
    const cert = await inspect(await sign(home, "alice", fixture("alice-ec.csr"), "--days", "30"));
    const after = Date.now();
    assert.ok(cert.notAfter.getTime() >= Math.floor(before / 1000) * 1000 + 30 * DAY_MS);
    assert.ok(cert.notAfter.getTime() <= after + 30 * DAY_MS);
  });
});

Deno.test("ca sign without --days on a CA with 5 days left issues a certificate that ends with the CA, to the day", async () => {
  await withTempDir(async (home) => {
    await initCa(home, "--days", "5");
    const ca = await inspect(await Deno.readTextFile(join(caDir(home), "ca.crt")));
    const cert = await inspect(await sign(home, "alice", fixture("alice-ec.csr")));
    const left = ca.notAfter.getTime() - cert.notAfter.getTime();
    assert.ok(
      left >= 0 && left <= DAY_MS,
      `alice until ${cert.notAfter.toISOString()}, CA until ${ca.notAfter.toISOString()}`,
    );
  });
});

Deno.test("ca sign --out writes the certificate to a file relative to the working directory", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    await initCa(home);
    const result = await runCa(
      home,
      ["sign", "--name", "alice", fixture("alice-ec.csr"), "--out", "alice.pem"],
      { cwd: dir },
    );
    assertSuccess(result);
    assert.equal(result.stdout, "");
    const path = join(dir, "alice.pem");
    const pem = await Deno.readTextFile(path);
    assert.equal(await mode(path), 0o644);
    const [entry] = await readIndexChecked(home);
    assert.equal(
      pem,
      await Deno.readTextFile(join(caDir(home), "certs", `${entry.serial}.pem`)),
    );
    assert.equal(
      result.stderr,
      `e2e-chat: issued serial ${entry.serial} to "alice" → ${path}\n`,
    );
  });
});

Deno.test("ca sign reads the request from stdin when the file is -", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const result = await runCa(home, ["sign", "--name", "alice", "-"], {
      stdin: await Deno.readTextFile(fixture("alice-ec.csr")),
    });
    assertSuccess(result);
    const checked = await verify(join(caDir(home), "ca.crt"), result.stdout);
    assert.ok(checked.ok, checked.output);
    assert.equal((await inspect(result.stdout)).subject, "CN=alice");
  });
});

Deno.test("ca sign issues certificates whatever the first digit of the random serial", async () => {
  // One serial in eight starts with a 0 nibble ("0A…"): signing many names meets some.
  await withTempDir(async (home) => {
    await initCa(home);
    const count = 32;
    const files = await Promise.all(
      Array.from({ length: count }, (_, i) => writeCsr(home, `u${i}.csr`, `u${i}`)),
    );
    const failures: string[] = [];
    for (let batch = 0; batch < count; batch += 4) {
      const results = await Promise.all(
        files.slice(batch, batch + 4).map((file, j) =>
          runCa(home, ["sign", "--name", `u${batch + j}`, file])
        ),
      );
      for (const r of results) if (r.code !== 0) failures.push(r.stderr.trim());
    }
    assert.deepEqual(failures, [], `${failures.length} of ${count} signings failed`);
    const index = await readIndexChecked(home);
    assert.equal(index.filter((e) => e.status === "V").length, count);
  });
});

// Every refusal: exit code, the one error line (and hint), and nothing changed on disk.
Deno.test("ca sign refuses bad input with one error line and leaves the CA unchanged", async (t) => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const refuse = (args: string[], expected: ExpectedFailure, env?: Record<string, string>) =>
      assertRefused(home, () => runCa(home, ["sign", ...args], { env, cwd: dir }), expected);
    const nameMismatch = (found: string, name: string) =>
      `Cannot sign request: it has ${found}, not "${name}"`;

    await t.step("a file that is text but no request (garbage.csr)", async () => {
      await refuse(["--name", "alice", fixture("garbage.csr")], {
        code: 1,
        error: "Invalid certificate request: not one PEM CERTIFICATE REQUEST block, nor DER",
      });
    });
    await t.step("a truncated request (truncated.csr)", async () => {
      await refuse(["--name", "alice", fixture("truncated.csr")], {
        code: 1,
        error: "Invalid certificate request: Truncated DER element",
      });
    });
    await t.step("binary bytes (not-pem.csr)", async () => {
      await refuse(["--name", "alice", fixture("not-pem.csr")], {
        code: 1,
        error: "Invalid certificate request: not one PEM CERTIFICATE REQUEST block, nor DER",
      });
    });
    await t.step("a request whose signature does not verify (bad-signature.csr)", async () => {
      await refuse(["--name", "alice", fixture("bad-signature.csr")], {
        code: 1,
        error: "Cannot sign request: its signature does not verify",
      });
    });
    await t.step("a CSR whose CN differs from the name (cn-mismatch.csr)", async () => {
      await refuse(["--name", "alice", fixture("cn-mismatch.csr")], {
        code: 1,
        error: nameMismatch('common name "eve"', "alice"),
      });
    });
    await t.step("a CSR with two common names (two-cn.csr)", async () => {
      await refuse(["--name", "alice", fixture("two-cn.csr")], {
        code: 1,
        error: nameMismatch('common names "alice", "admin"', "alice"),
      });
    });
    await t.step("a CSR without a common name (no-cn.csr)", async () => {
      await refuse(["--name", "nobody", fixture("no-cn.csr")], {
        code: 1,
        error: nameMismatch("no common name", "nobody"),
      });
    });
    await t.step("a look-alike non-ASCII CN signed as alice (non-ascii.csr)", async () => {
      await refuse(["--name", "alice", fixture("non-ascii.csr")], {
        code: 1,
        error: nameMismatch('common name "ålice"', "alice"),
      });
    });
    for (const bad of ["ålice", "../evil", "A B", "-x", ""]) {
      await t.step(`the invalid name ${JSON.stringify(bad)}`, async () => {
        await refuse([`--name=${bad}`, fixture("alice-ec.csr")], {
          code: 2, // a usage mistake (README), as in the client
          error: bad === "" ? "sign needs --name NAME" : `Invalid name ${JSON.stringify(bad)}`,
          ...(bad === "" ? {} : { hint: NAME_HINT }),
        });
      });
    }
    await t.step("an RSA-1024 key (rsa1024.csr)", async () => {
      await refuse(["--name", "weak", fixture("rsa1024.csr")], {
        code: 1,
        error: "Cannot sign request: an RSA key of 1024 bits is too weak (at least 2048)",
        hint: KEY_HINT,
      });
    });
    await t.step("an EC P-521 key (ec-p521.csr)", async () => {
      // The request's signature is valid (openssl req -verify agrees): the key is what is refused.
      await refuse(["--name", "curve", fixture("ec-p521.csr")], {
        code: 1,
        error: 'Cannot sign request: the EC curve "secp521r1" is not allowed',
        hint: KEY_HINT,
      });
    });
    await t.step("an Ed448 key (ed448.csr)", async () => {
      await refuse(["--name", "ed448", fixture("ed448.csr")], {
        code: 1,
        error: 'Cannot sign request: keys of type "ed448" are not allowed',
        hint: KEY_HINT,
      });
    });
    await t.step("--days 0", async () => {
      await refuse(["--name", "alice", fixture("alice-ec.csr"), "--days", "0"], {
        code: 1,
        error: 'Invalid validity "0": use whole days from 1 to 1825',
      });
    });
    await t.step("--days beyond the CA's own end of validity", async () => {
      await refuse(["--name", "alice", fixture("alice-ec.csr"), "--days", "1826"], {
        code: 1,
        error: 'Invalid validity "1826": use whole days from 1 to 1825',
      });
    });
    await t.step("--days abc", async () => {
      await refuse(["--name", "alice", fixture("alice-ec.csr"), "--days", "abc"], {
        code: 2,
        error: '--days takes a whole number, not "abc"',
      });
    });
    await t.step("a missing request file, named as found from the folder it ran in", async () => {
      await refuse(["--name", "alice", "missing.csr"], {
        code: 1,
        error: `Cannot read "${join(dir, "missing.csr")}"`,
        hint: "no such file (a relative path starts in the folder you ran deno task in)",
      });
    });
    await t.step("a wrong passphrase, without revoking the old certificate", async () => {
      const wrong = "wrong passphrase 9876";
      const { csr } = await makeCsr("alice");
      await Deno.writeTextFile(join(dir, "alice2.csr"), csr);
      for (const file of [fixture("alice-ec.csr"), "alice2.csr"]) {
        const result = await refuse(
          ["--name", "alice", file, "--replace"],
          { code: 1, error: "Cannot unlock the CA key: wrong passphrase" },
          { E2E_CHAT_CA_PASSPHRASE: wrong },
        );
        assert.ok(!result.stderr.includes(wrong), "the passphrase is never echoed");
      }
    });
    await t.step("no passphrase on a non-terminal", async () => {
      await refuse(["--name", "alice", fixture("alice-ec.csr")], {
        code: 1,
        error: "CA passphrase required and stdin is not a terminal",
        hint: PASSPHRASE_HINT,
      }, { E2E_CHAT_CA_PASSPHRASE: "" });
    });

    const listed = await listJson(home);
    assert.deepEqual(listed.map((r) => [r.name, r.status]), [["alice", "valid"]]);
  });
});

// ---------------------------------------------------------------------------
// one valid certificate per name

Deno.test("ca sign refuses a new key for a name that has a valid certificate", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [first] = await readIndexChecked(home);
    const other = await writeCsr(home, "alice2.csr", "alice");
    await assertRefused(home, () => runCa(home, ["sign", "--name", "alice", other]), {
      code: 1,
      error: 'Cannot sign request: name "alice" already has a valid certificate',
      hint: `pass --replace to revoke it (serial ${first.serial}) and issue one for the new key`,
    });
  });
});

Deno.test("ca sign --replace revokes the old certificate as superseded", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const oldPem = await sign(home, "alice", fixture("alice-ec.csr"));
    const [old] = await readIndexChecked(home);
    const other = await writeCsr(home, "alice2.csr", "alice");
    const result = await runCa(home, ["sign", "--name", "alice", other, "--replace"]);
    assertSuccess(result);
    assert.equal(result.stderr, `e2e-chat: revoked serial ${old.serial} (superseded)\n`);
    const listed = await listJson(home);
    assert.equal(listed.length, 2);
    assert.equal(listed[0].serial, old.serial);
    assert.equal(listed[0].status, "revoked");
    assert.equal(listed[0].reason, "superseded");
    assert.equal(listed[1].status, "valid");
    assert.equal(listed[1].fingerprint, fingerprint(result.stdout));
    // The published CRL already names the superseded certificate.
    const caFile = join(caDir(home), "ca.crt");
    const crl = await Deno.readTextFile(join(caDir(home), "crl.pem"));
    const revoked = await verify(caFile, oldPem, crl);
    assert.ok(!revoked.ok);
    assert.match(revoked.output, /certificate revoked/);
    const current = await verify(caFile, result.stdout, crl);
    assert.ok(current.ok, current.output);
  });
});

Deno.test("ca sign with the same key supersedes the old certificate without --replace", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [old] = await readIndexChecked(home);
    const result = await runCa(home, ["sign", "--name", "alice", fixture("alice-ec.csr")]);
    assertSuccess(result);
    assert.equal(result.stderr, `e2e-chat: revoked serial ${old.serial} (superseded)\n`);
    const index = await readIndexChecked(home);
    assert.deepEqual(index.map((e) => e.status), ["R", "V"]);
    assert.equal(index[0].reason, "superseded");
  });
});

/** Asserts `ca sign` refuses alice's request `csr`: its key's certificate `serial` was revoked as keyCompromise. */
async function assertSigningRefusedAsCompromised(
  home: string,
  csr: string,
  serial: string,
): Promise<void> {
  await assertRefused(
    home,
    () => runCa(home, ["sign", "--name", "alice", csr]),
    {
      code: 1,
      error: `Cannot sign request: its key's certificate (serial ${serial}) was revoked as ` +
        "keyCompromise: that key is never certified again",
      hint: "make a new key (a join in another home makes one) and sign a request from it",
    },
  );
}

Deno.test("ca sign refuses a key a certificate of which was revoked as keyCompromise, unless --allow-compromised-key", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [old] = await readIndexChecked(home);
    assertSuccess(await runCa(home, ["revoke", "alice", "--reason", "keyCompromise"]));
    await assertSigningRefusedAsCompromised(home, fixture("alice-ec.csr"), old.serial);
    const forced = await runCa(home, [
      "sign",
      "--name",
      "alice",
      fixture("alice-ec.csr"),
      "--allow-compromised-key",
    ]);
    assertSuccess(forced);
    assert.deepEqual((await readIndexChecked(home)).map((e) => e.status), ["R", "V"]);
  });
});

Deno.test("ca sign refuses a key revoked as compromised by hand with openssl ca -crl_compromise: the CRL says keyCompromise, index.txt keyTime", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [old] = await readIndexChecked(home);
    // A learner revokes with openssl alone, in the CA's folder (docs/CA.md): with the date the
    // key was compromised, which openssl records as "keyTime" and lists as keyCompromise.
    await openssl([
      ...["ca", "-config", "openssl.cnf", "-revoke", join("certs", `${old.serial}.pem`)],
      ...["-crl_compromise", "20260101000000Z", "-cert", "ca.crt", "-keyfile", "ca.key"],
      ...["-passin", PASSPHRASE_ARG],
    ], { passphrase: PASSPHRASE, cwd: caDir(home) });
    assertSuccess(await runCa(home, ["crl"]));
    const crl = await openssl(["crl", "-noout", "-text"], {
      stdin: await Deno.readTextFile(join(caDir(home), "crl.pem")),
    });
    assert.match(new TextDecoder().decode(crl.stdout), /Key Compromise/);
    await assertSigningRefusedAsCompromised(home, fixture("alice-ec.csr"), old.serial);
  });
});

Deno.test("ca sign refuses an RSA key revoked as keyCompromise offered again with another public exponent: the same modulus, whose factors the thief holds", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const genpkey = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    const stolen = new TextDecoder().decode((await openssl(genpkey)).stdout);
    const csrOf = async (key: string, file: string) => {
      await Deno.writeTextFile(`${file}.key`, key);
      const req = ["req", "-new", "-key", `${file}.key`, "-subj", "/CN=alice"];
      await Deno.writeFile(file, (await openssl(req)).stdout);
      return file;
    };
    await sign(home, "alice", await csrOf(stolen, join(home, "alice.csr")));
    const [old] = await readIndexChecked(home);
    assertSuccess(await runCa(home, ["revoke", "alice", "--reason", "keyCompromise"]));
    // The same n (p and q known to whoever holds the key), e = 65539 instead of 65537.
    const other = await csrOf(withExponent(stolen, 65539n), join(home, "other.csr"));
    await assertSigningRefusedAsCompromised(home, other, old.serial);
  });
});

/** The RSA private key `pem` with public exponent `e` instead of its own: same n, p and q. */
function withExponent(pem: string, e: bigint): string {
  const jwk = createPrivateKey(pem).export({ format: "jwk" });
  const big = (s?: string) => BigInt(`0x${Buffer.from(s!, "base64url").toString("hex")}`);
  const b64 = (n: bigint) => {
    const hex = n.toString(16);
    return Buffer.from(hex.length % 2 ? `0${hex}` : hex, "hex").toString("base64url");
  };
  const [p, q] = [big(jwk.p), big(jwk.q)];
  const phi = (p - 1n) * (q - 1n);
  const inverse = (a: bigint, m: bigint) => {
    let [r0, r1, s0, s1] = [a % m, m, 1n, 0n];
    while (r1) {
      const t = r0 / r1;
      [r0, r1, s0, s1] = [r1, r0 - t * r1, s1, s0 - t * s1];
    }
    if (r0 !== 1n) throw new RangeError("the exponent is not coprime with phi(n)");
    return ((s0 % m) + m) % m;
  };
  const d = inverse(e, phi);
  return createPrivateKey({
    key: { ...jwk, e: b64(e), d: b64(d), dp: b64(d % (p - 1n)), dq: b64(d % (q - 1n)) },
    format: "jwk",
  }).export({ type: "pkcs8", format: "pem" }) as string;
}

Deno.test("ca revoke SERIAL --reason keyCompromise of a certificate a renewal for the same key superseded leaves no valid certificate for that key, and the key is refused from then on", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    // Renewed for the same key (what POST /v1/renew does): the first one is superseded.
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [first, renewed] = await readIndexChecked(home);
    assert.deepEqual([first.status, first.reason, renewed.status], ["R", "superseded", "V"]);
    // The incident report names the serial the thief used: the first one.
    const revoked = await runCa(home, ["revoke", first.serial, "--reason", "keyCompromise"]);
    const after = await readIndexChecked(home);
    const signed = await runCa(home, ["sign", "--name", "alice", fixture("alice-ec.csr")]);
    assert.deepEqual(
      {
        valid: after.filter((e) => e.status === "V").map((e) => e.serial),
        signedAgain: signed.code === 0,
      },
      { valid: [], signedAgain: false },
      `the compromised key keeps serial ${renewed.serial} valid and is certified again ` +
        `(ca revoke said: ${JSON.stringify(revoked.stderr.trim())})`,
    );
  });
});

Deno.test("ca invite with a name no member can have is a usage mistake: exit 2 (README), as in the client", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const run = await runCa(home, ["invite", "Bad"]);
    assertFailure(run, { code: 2, error: 'Invalid name "Bad"', hint: NAME_HINT });
  });
});

// ---------------------------------------------------------------------------
// revoke and crl

Deno.test("ca revoke by name records the reason and ca crl lists the serial", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const caFile = join(caDir(home), "ca.crt");
    const [bob, alice] = await Promise.all([
      sign(home, "bob", fixture("bob-rsa2048.csr")),
      sign(home, "alice", fixture("alice-ec.csr")),
    ]);
    const serial = (await readIndexChecked(home)).find((e) => e.name === "bob")!.serial;
    const result = await runCa(home, ["revoke", "bob", "--reason", "keyCompromise"]);
    assertSuccess(result);
    assert.equal(
      result.stdout,
      `Revoked serial ${serial} of "bob" (keyCompromise); the CRL is updated\n`,
    );
    const row = (await listJson(home)).find((r) => r.name === "bob")!;
    assert.equal(row.status, "revoked");
    assert.equal(row.reason, "keyCompromise");

    const printed = await runCa(home, ["crl"]);
    assertSuccess(printed);
    const crl = printed.stdout;
    assert.match(crl, /^-----BEGIN X509 CRL-----\n[A-Za-z0-9+/=\n]+-----END X509 CRL-----\n$/);
    const { stderr } = await openssl(["crl", "-CAfile", caFile, "-noout"], { stdin: crl });
    assert.match(stderr, /verify OK/);
    const crlText = await text(["crl", "-noout", "-text"], crl);
    const listedSerials = [...crlText.matchAll(/Serial Number: ([0-9A-F]+)/g)].map((m) => m[1]);
    assert.equal(listedSerials.length, 1);
    assert.ok(sameSerial(listedSerials[0], serial));
    assert.match(crlText, /Key Compromise/);
    assert.equal(await Deno.readTextFile(join(caDir(home), "crl.pem")), crl, "crl.pem is kept");

    const revoked = await verify(caFile, bob, crl);
    assert.ok(!revoked.ok);
    assert.match(revoked.output, /certificate revoked/);
    const valid = await verify(caFile, alice, crl);
    assert.ok(valid.ok, valid.output);
  });
});

Deno.test("ca revoke by serial revokes that certificate", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    const [entry] = await readIndexChecked(home);
    const result = await runCa(home, ["revoke", entry.serial.toLowerCase()]);
    assertSuccess(result);
    assert.equal(
      result.stdout,
      `Revoked serial ${entry.serial} of "alice" (unspecified); the CRL is updated\n`,
    );
    const [after] = await readIndexChecked(home);
    assert.equal(after.status, "R");
    const crlText = await text(["crl", "-noout", "-text", "-in", join(caDir(home), "crl.pem")]);
    const listed = [...crlText.matchAll(/Serial Number: ([0-9A-F]+)/g)].map((m) => m[1]);
    assert.ok(listed.some((s) => sameSerial(s, entry.serial)), crlText);
  });
});

Deno.test("ca revoke refuses an unknown name, a second revocation and an unknown reason", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "bob", fixture("bob-rsa2048.csr"));
    const [entry] = await readIndexChecked(home);
    const notFound = (what: string) => ({
      code: 1,
      error: `Cannot revoke: no valid certificate for ${JSON.stringify(what)}`,
      hint: "see `deno task ca list` for names and serials",
    });
    await assertRefused(home, () => runCa(home, ["revoke", "nobody"]), notFound("nobody"));
    // A usage mistake (README: exit 2), as for `compromised`, a word people try.
    await assertRefused(home, () => runCa(home, ["revoke", "bob", "--reason", "compromised"]), {
      code: 2,
      error: 'Unknown revocation reason "compromised"',
    });
    await assertRefused(home, () => runCa(home, ["revoke", "bob", "--reason", "bogus"]), {
      code: 2,
      error: 'Unknown revocation reason "bogus"',
    });
    assertSuccess(await runCa(home, ["revoke", "bob"]));
    await assertRefused(home, () => runCa(home, ["revoke", "bob"]), notFound("bob"));
    await assertRefused(home, () => runCa(home, ["revoke", entry.serial]), {
      code: 1,
      error: `Cannot revoke: serial ${entry.serial} is already revoked`,
    });
  });
});

// ---------------------------------------------------------------------------
// list

Deno.test("ca invite --url without a port says what it takes", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    assertFailure(await runCa(home, ["invite", "alice", "--url", "ca.example.org"]), {
      code: 2,
      error: '--url takes HOST:PORT, not "ca.example.org"',
      hint: "the address members reach the CA service at, e.g. --url ca.example.org:65433",
    });
  });
});

Deno.test("ca invite with no service running says the invite names the default address", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const result = await runCa(home, ["invite", "alice"]);
    assertSuccess(result);
    assert.match(result.stdout, /^e2e-chat:\/\/127\.0\.0\.1:65433\/alice\?fp=[0-9a-f]{64}&token=/);
    assert.equal(
      result.stderr,
      "e2e-chat: warning: no CA service runs on this home, so the invite names 127.0.0.1:65433; " +
        "if members reach the service elsewhere, make it again with --url HOST:PORT " +
        "(this one stays valid until it expires)\n" +
        "e2e-chat: hint: members can enroll only while it runs: deno task ca serve\n",
    );
    // With --url, or while the service runs, the address is known: nothing to warn about.
    const given = await runCa(home, ["invite", "bob", "--url", "ca.example.org:443"]);
    assertSuccess(given);
    assert.equal(given.stderr, "");
  });
});

Deno.test("ca serve --host with an address not of this machine says what --host and --name take", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    assertFailure(await runCa(home, ["serve", "--host", "192.0.2.1", "--port", "0"]), {
      code: 1,
      error: "Cannot listen on 192.0.2.1:0 for the CRL",
      hint: "--host takes an address of this machine (0.0.0.0 for all of them); " +
        "the name members reach it by goes in --name",
    });
  });
});

Deno.test("ca serve starts on a CA made with --days 20, and gives its own certificate what the CA has left, to the day", async () => {
  await withTempDir(async (home) => {
    await initCa(home, "--days", "20");
    const service = await startService(home);
    try {
      const ca = await inspect(await Deno.readTextFile(join(caDir(home), "ca.crt")));
      const own = await inspect(await Deno.readTextFile(join(caDir(home), "service", "cert.pem")));
      assert.equal(own.subject, "CN=e2e-chat service");
      const left = ca.notAfter.getTime() - own.notAfter.getTime();
      assert.ok(
        left >= 0 && left <= DAY_MS,
        `service until ${own.notAfter.toISOString()}, CA until ${ca.notAfter.toISOString()}`,
      );
    } finally {
      await service.stop();
    }
  });
});

Deno.test("ca list shows every certificate as a table and as JSON", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const pems: Record<string, string> = {};
    pems.alice = await sign(home, "alice", fixture("alice-ec.csr"));
    pems.bob = await sign(home, "bob", fixture("bob-rsa2048.csr"));
    assertSuccess(await runCa(home, ["revoke", "bob", "--reason", "affiliationChanged"]));

    // list needs no passphrase: it never touches the key.
    const json = await runCli("ca/main.ts", ["list", "--json"], { env: { E2E_CHAT_HOME: home } });
    assertSuccess(json);
    const rows: Listed[] = JSON.parse(json.stdout);
    assert.deepEqual(rows.map((r) => [r.name, r.status]), [["alice", "valid"], [
      "bob",
      "revoked",
    ]]);
    for (const row of rows) {
      const cert = await inspect(pems[row.name]);
      assert.ok(sameSerial(row.serial, cert.serial));
      assert.match(row.serial, /^[0-9A-F]+$/);
      assert.equal(row.notAfter, cert.notAfter.toISOString());
      assert.match(row.fingerprint, /^[0-9a-f]{64}$/);
      assert.equal(row.fingerprint, fingerprint(pems[row.name]));
    }
    assert.equal(rows[0].revokedAt, undefined);
    assert.equal(rows[1].reason, "affiliationChanged");
    assert.ok(Math.abs(Date.parse(rows[1].revokedAt!) - Date.now()) < 60_000);

    const table = await runCa(home, ["list"]);
    assertSuccess(table);
    const lines = table.stdout.trimEnd().split("\n").map((l) => l.split(/ {2,}/));
    assert.deepEqual(lines[0], ["NAME", "SERIAL", "STATUS", "NOT AFTER", "SHA-256 FINGERPRINT"]);
    assert.deepEqual(
      lines.slice(1),
      rows.map((r) => [r.name, r.serial, r.status, r.notAfter, r.fingerprint]),
    );
  });
});

// ---------------------------------------------------------------------------
// invites

/** One row of `ca invites --json` (docs/CA.md, "Invites"). */
interface ListedInvite {
  id: string;
  name: string;
  status: string;
  createdAt: string;
  expiresAt: string;
  usedAt?: string;
  serial?: string;
  cancelledAt?: string;
}

/** Makes an invite for `name` and returns its token. */
async function inviteToken(home: string, name: string, ...args: string[]): Promise<string> {
  const result = await runCa(home, ["invite", name, "--url", "ca.example.org:443", ...args]);
  assertSuccess(result);
  const token = /[?&]token=([A-Za-z0-9_-]{43})$/m.exec(result.stdout)?.[1];
  assert.ok(token, result.stdout);
  return token;
}

function shortId(token: string): string {
  return createHash("sha256").update(token).digest("hex").slice(0, 8);
}

async function invitesJson(home: string, ...args: string[]): Promise<ListedInvite[]> {
  const result = await runCa(home, ["invites", ...args, "--json"]);
  assertSuccess(result);
  return JSON.parse(result.stdout);
}

Deno.test("ca invites lists every invite, open ones first, as a table and as JSON, and never a token", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const none = await runCa(home, ["invites"]);
    assertSuccess(none);
    assert.equal(none.stdout, "No invites (deno task ca invite NAME makes one)\n");
    assert.deepEqual(await invitesJson(home), []);
    const tokens: Record<string, string> = {};
    for (const name of ["carol", "alice", "bob"]) tokens[name] = await inviteToken(home, name);
    assertSuccess(await runCa(home, ["invites", "cancel", "carol"]));

    // invites needs no passphrase: it never touches the key.
    const json = await runCli("ca/main.ts", ["invites", "--json"], {
      env: { E2E_CHAT_HOME: home },
    });
    assertSuccess(json);
    const rows: ListedInvite[] = JSON.parse(json.stdout);
    assert.deepEqual(rows.map((r) => [r.id, r.name, r.status]), [
      [shortId(tokens.alice), "alice", "open"],
      [shortId(tokens.bob), "bob", "open"],
      [shortId(tokens.carol), "carol", "cancelled"],
    ]);
    for (const r of rows) {
      assert.ok(Date.parse(r.createdAt) <= Date.now());
      assert.ok(Math.abs(Date.parse(r.expiresAt) - (Date.parse(r.createdAt) + DAY_MS)) < 1_000);
    }
    assert.ok(Date.parse(rows[2].cancelledAt!) >= Date.parse(rows[2].createdAt));

    const table = await runCa(home, ["invites"]);
    assertSuccess(table);
    const lines = table.stdout.trimEnd().split("\n").map((l) => l.split(/ {2,}/));
    assert.deepEqual(lines[0], [
      "ID",
      "NAME",
      "STATUS",
      "CREATED",
      "EXPIRES",
      "USED/CANCELLED",
      "SERIAL",
    ]);
    assert.deepEqual(
      lines.slice(1),
      rows.map((r) =>
        [r.id, r.name, r.status, r.createdAt, r.expiresAt, r.cancelledAt].filter(Boolean)
      ),
    );
    for (const token of Object.values(tokens)) {
      for (const out of [json.stdout, table.stdout]) {
        assert.ok(!out.includes(token), "never a token");
        const hash = createHash("sha256").update(token).digest("hex");
        assert.ok(!out.includes(hash.slice(0, 9)), "no more of its hash than the id");
      }
    }
  });
});

Deno.test("ca invites cancel withdraws the open invites for a NAME, or the one an ID starts, and says which", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const first = await inviteToken(home, "alice");
    const second = await inviteToken(home, "alice");
    const bob = await inviteToken(home, "bob");

    const byName = await runCa(home, ["invites", "cancel", "alice"]);
    assertSuccess(byName);
    assert.equal(
      byName.stdout,
      `Cancelled invite ${shortId(first)} for "alice"\n` +
        `Cancelled invite ${shortId(second)} for "alice"\n`,
    );
    assert.equal(byName.stderr, "");
    // On disk: a cancel line for each in the journal.
    const journal = await Deno.readTextFile(join(caDir(home), "invites.journal"));
    const cancels = journal.trim().split("\n").map((l) => JSON.parse(l)).filter((l) =>
      l.op === "cancel"
    );
    assert.deepEqual(cancels.map((l) => l.hash.slice(0, 8)), [shortId(first), shortId(second)]);

    const byId = await runCa(home, ["invites", "cancel", shortId(bob), "--json"]);
    assertSuccess(byId);
    const [row]: ListedInvite[] = JSON.parse(byId.stdout);
    assert.deepEqual([row.id, row.name, row.status], [shortId(bob), "bob", "cancelled"]);
    assert.deepEqual((await invitesJson(home)).map((r) => r.status), [
      "cancelled",
      "cancelled",
      "cancelled",
    ]);
  });
});

Deno.test("ca invites cancel with nothing open, or an id that fits two invites, exits 1 with its code's message and changes nothing", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const token = await inviteToken(home, "alice");
    assertSuccess(await runCa(home, ["invites", "cancel", "alice"]));
    await assertRefused(home, () => runCa(home, ["invites", "cancel", "alice"]), {
      code: 1,
      error: 'Cannot cancel: no open invite for "alice"',
      hint: "`deno task ca invites` lists them; cancel takes a NAME or an invite's ID",
    });
    await assertRefused(home, () => runCa(home, ["invites", "cancel", shortId(token)]), {
      code: 1,
      error: `Cannot cancel: invite ${shortId(token)} for "alice" is cancelled`,
    });
    // Two invites whose ids share a prefix (hashes chosen: no token would make them on purpose).
    const at = (ms: number) => new Date(Date.now() + ms).toISOString();
    const invites = ["abcdabcd1", "abcdabcd2"].map((start, i) => ({
      hash: start.padEnd(64, String(i + 1)),
      name: ["dave", "erin"][i],
      createdAt: at(0),
      expiresAt: at(DAY_MS),
    }));
    await Deno.writeTextFile(join(caDir(home), "invites.json"), JSON.stringify({ invites }), {
      mode: 0o600,
    });
    await assertRefused(home, () => runCa(home, ["invites", "cancel", "abcdabcd"]), {
      code: 1,
      error: 'Cannot cancel: id "abcdabcd" fits 2 invites: abcdabcd11111111 ("dave"), ' +
        'abcdabcd22222222 ("erin")',
      hint: "give more of the id, as `deno task ca invites` shows it",
    });
    await assertRefused(home, () => runCa(home, ["invites", "cancel"]), {
      code: 2,
      error: "invites takes no argument, or cancel NAME|ID",
    });
  });
});

Deno.test("ca invites cancel waits for the CA lock another process holds, says so once on stderr, then cancels", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await inviteToken(home, "alice");
    // A real flock on the CA lock, held by this process as another command would hold it.
    const lock = await Deno.open(join(home, ".ca.lock"), { read: true, write: true });
    let held = true;
    let child: TaskProcess | undefined;
    try {
      await lock.lock(true);
      child = await spawnCa(home, ["invites", "cancel", "alice"]);
      const notice =
        "e2e-chat: waiting for the CA lock (another e2e-chat command is using this CA)…\n";
      await child.waitFor(
        () => child!.stderr.includes(notice) || undefined,
        "the waiting notice",
        30_000,
      );
      assert.equal(child.exited, false, "still waiting");
      assert.equal(child.stdout, "");
      lock.close();
      held = false;
      const { code } = await child.status;
      await child.drained;
      assert.equal(code, 0, child.stderr);
      assert.equal(child.stderr, notice, "told once");
      assert.match(child.stdout, /^Cancelled invite [0-9a-f]{8} for "alice"\n$/);
    } finally {
      if (held) lock.close();
      await child?.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// concurrency and crashes

Deno.test("ca sign run by 12 processes at once issues 12 distinct certificates", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    const names12 = Array.from({ length: 12 }, (_, i) => `user${i}`);
    const files = await Promise.all(names12.map((n) => writeCsr(home, `${n}.csr`, n)));
    const results = await Promise.all(
      names12.map((n, i) => runCa(home, ["sign", "--name", n, files[i]])),
    );
    for (const r of results) assertSuccess(r);
    const certs = await Promise.all(results.map((r) => inspect(r.stdout)));
    assert.equal(new Set(certs.map((c) => c.serial)).size, 12, "serials are distinct");

    const index = await readIndexChecked(home);
    assert.equal(index.length, 12);
    assert.ok(index.every((e) => e.status === "V"));
    assert.deepEqual(index.map((e) => e.name).sort(), [...names12].sort());
    const listed = await listJson(home);
    assert.deepEqual(
      listed.map((r) => [r.name, r.serial, r.status]),
      index.map((e) => [e.name, e.serial, "valid"]),
    );
    for (const [i, c] of certs.entries()) {
      const row = listed.find((r) => r.name === names12[i])!;
      assert.ok(sameSerial(row.serial, c.serial));
      assert.equal(row.fingerprint, fingerprint(results[i].stdout));
    }
  });
});

/** Starts the CA CLI without waiting for it, so that a test can kill it. */
function spawnCa(home: string, args: string[]): Promise<TaskProcess> {
  return TaskProcess.start("ca", args, {
    env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE },
  });
}

/** The committed database is whole: every file parses, every entry's certificate verifies. */
async function assertConsistent(home: string): Promise<void> {
  const dir = caDir(home);
  const caFile = join(dir, "ca.crt");
  // Outside tmp/ only the final files exist; an atomic write's temp file is never a final name.
  for (const name of await names(dir)) {
    assert.ok(
      caFileNames(home).includes(name) || /^\.[0-9a-f-]{36}\.tmp$/.test(name),
      `stray ${name}`,
    );
  }
  const index = await readIndexChecked(home);
  assert.equal(new Set(index.map((e) => e.serial)).size, index.length, "serials are unique");
  for (const name of new Set(index.map((e) => e.name))) {
    const valid = index.filter((e) => e.name === name && e.status === "V");
    assert.ok(valid.length <= 1, `at most one valid certificate for ${name}`);
  }
  const certFiles = await names(join(dir, "certs"));
  for (const entry of index) {
    assert.ok(certFiles.includes(`${entry.serial}.pem`), `certs/${entry.serial}.pem exists`);
  }
  // Every file in certs/ (even one no entry names yet) is a whole certificate of this CA.
  if (certFiles.length) {
    await openssl(["verify", "-CAfile", caFile, ...certFiles.map((f) => join(dir, "certs", f))]);
  }
  assert.match(await Deno.readTextFile(join(dir, "crlnumber")), /^([0-9A-F]{2})+\n$/);
  await openssl(["crl", "-in", join(dir, "crl.pem"), "-CAfile", caFile, "-noout"]);
}

Deno.test("ca sign killed at any moment leaves a consistent database", async () => {
  await withTempDir(async (home) => {
    await initCa(home);
    await sign(home, "alice", fixture("alice-ec.csr"));
    // The same key each time: a run that gets far enough also revokes (supersedes) the last one.
    const victim = await writeCsr(home, "victim.csr", "victim");
    // A sign takes about 100 ms here (deno start-up, then the transaction); the kills spread over it.
    const delays = [0, 20, 35, 45, 55, 65, 75, 85, 95, 105, 120, 140, 170, 220, 300];
    const outcomes = { killed: 0, killedInTransaction: 0, finished: 0 };
    const failures: string[] = [];
    for (const delay of delays) {
      const child = await spawnCa(home, ["sign", "--name", "victim", victim]);
      await sleep(delay);
      child.kill("SIGKILL"); // unless it had already exited
      const { code, signal } = await child.status;
      await child.drained;
      const stderr = child.stderr;
      if (signal === "SIGKILL") {
        outcomes.killed++;
        if ((await names(join(caDir(home), "tmp"))).length) outcomes.killedInTransaction++;
      } else if (code === 0) {
        outcomes.finished++;
      } else {
        failures.push(`after ${delay} ms: ${stderr.trim()}`);
      }
      await assertConsistent(home);
    }
    // A run that was not killed never fails because of an earlier crash (a stale lock, a torn file).
    assert.deepEqual(failures, [], JSON.stringify(outcomes));
    assert.ok(outcomes.killed > 0, JSON.stringify(outcomes));
    // Afterwards the CA works: the lock is free and the database is usable.
    assertSuccess(await runCa(home, ["sign", "--name", "victim", victim]));
    assertSuccess(await runCa(home, ["sign", "--name", "bob", fixture("bob-rsa2048.csr")]));
    await assertConsistent(home);
    const index = await readIndexChecked(home);
    const listed = await listJson(home);
    assert.deepEqual(listed.map((r) => r.serial), index.map((e) => e.serial));
    const valid = listed.filter((r) => r.status === "valid").map((r) => r.name).sort();
    assert.deepEqual(valid, ["alice", "bob", "victim"]);
  });
});

// ---------------------------------------------------------------------------
// secrets

Deno.test("ca never puts the passphrase in openssl's argv or in its output", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "home");
    // A stand-in openssl that records its arguments, then runs the real one.
    const { argvLog: log, env } = await argvRecordingOpenssl(dir);
    const fileSecret = "file secret 24680";
    await Deno.writeTextFile(join(dir, "pass.txt"), `${fileSecret}\n`);
    const wrong = "wrong passphrase 13579";
    const other = await writeCsr(dir, "alice2.csr", "alice");

    const results: RunResult[] = [];
    const run = async (args: string[], extra: Record<string, string> = {}) => {
      const result = await runCa(home, args, { env: { ...env, ...extra }, cwd: dir });
      results.push(result);
      return result;
    };
    assertSuccess(await run(["init", "--key-type", "ec-p256"]));
    assertSuccess(await run(["sign", "--name", "alice", fixture("alice-ec.csr")]));
    assertSuccess(await run(["sign", "--name", "alice", other, "--replace"]));
    assertSuccess(await run(["sign", "--name", "bob", fixture("bob-rsa2048.csr")]));
    assertSuccess(await run(["revoke", "bob"]));
    assertSuccess(await run(["crl"]));
    assertSuccess(await run(["list"]));
    const debugs: Record<string, string>[] = [{}, { E2E_CHAT_DEBUG: "1" }];
    for (const debug of debugs) {
      const refused = await run(
        ["sign", "--name", "carol", fixture("carol-ed25519.csr")],
        { E2E_CHAT_CA_PASSPHRASE: wrong, ...debug },
      );
      assert.equal(refused.code, 1);
    }
    const fileHome = join(dir, "file-home");
    const withFile = ["--home", fileHome, "--passphrase-file", "pass.txt"];
    assertSuccess(await run(["init", "--key-type", "ec-p256", ...withFile]));
    assertSuccess(await run(["sign", "--name", "alice", fixture("alice-ec.csr"), ...withFile]));

    const argv = await Deno.readTextFile(log);
    assert.match(argv, /-passin env:E2E_CHAT_PASSIN/, "the stand-in openssl was used");
    for (const secret of [PASSPHRASE, wrong, fileSecret]) {
      assert.ok(!argv.includes(secret), `${JSON.stringify(secret)} in openssl's argv`);
      for (const r of results) {
        assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), "in the CLI's output");
      }
      for (const h of [home, fileHome]) {
        for (const [path, content] of await snapshot(h)) {
          assert.ok(!content.includes(secret), `in ${path}`);
        }
      }
    }
  });
});
