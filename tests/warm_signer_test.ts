/**
 * The `openssl ca` runs a CA service keeps started ahead (CertificateAuthority
 * keepOpensslWarm(), issue #14): what they leave running and on disk, whether a
 * certificate they sign is the one a cold signing would have made, what a
 * request of another form or other days gets, and what a crash leaves behind.
 * Real openssl, real processes: the runs are found in /proc by their working
 * folder (a signing folder under the CA home).
 *
 * @module
 */
import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { readIndex } from "../ca/store.ts";
import { children, type DerNode, readDer, Tag } from "../lib/der.ts";
import { openssl } from "../lib/openssl.ts";
import { pemDecode } from "../lib/pem.ts";
import { sleep, waitUntil, withTempDir } from "./_harness.ts";
import { makeCsr, newKeyPem, PASSPHRASE } from "./_helpers.ts";
import { enrollUser, initCa, startService } from "./_service_helpers.ts";

const DAY_MS = 86_400_000;

/** A process whose working folder is under `home`: an openssl run of the CA. */
interface Run {
  pid: number;
  args: string[];
  cwd: string;
}

// Deno's permissions keep /proc from a test without --allow-all: a shell reads it (--allow-run).
const PROC_SCRIPT =
  `find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$ROOT*" -printf '%h\\t%l\\n' |
while IFS="$(printf '\\t')" read -r d c; do
  printf '%s\\t%s\\t' "\${d#/proc/}" "$c"; tr '\\0' ' ' < "$d/cmdline"; echo
done`;

/** The live processes working in a folder under `home` (zombies and others' are skipped). */
async function runsUnder(home: string): Promise<Run[]> {
  const root = Deno.realPathSync(home) + "/";
  const out = await new Deno.Command("sh", {
    args: ["-c", PROC_SCRIPT],
    env: { ROOT: root },
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).map((line) => {
    const [pid, cwd, cmdline] = line.split("\t");
    return { pid: Number(pid), cwd, args: cmdline.trim().split(" ") };
  });
}

/** What a process of ours has in its environment (read by a shell, as above). */
async function environOf(pid: number): Promise<string[]> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `tr '\\0' '\\n' < /proc/${pid}/environ`],
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean);
}

/** The runs started ahead: `openssl ca` reading its extensions from stdin. */
async function warmRuns(home: string): Promise<Run[]> {
  return (await runsUnder(home)).filter((r) =>
    /openssl$/.test(r.args[0]) &&
    r.args.includes("/dev/stdin") && r.args.includes("ca")
  );
}

/** Waits until `n` runs started ahead wait in `home`, and returns them. */
async function waitForWarm(home: string, n: number): Promise<Run[]> {
  let runs: Run[] = [];
  await waitUntil(
    async () => (runs = await warmRuns(home)).length === n,
    `${n} runs started ahead`,
    20_000,
  );
  return runs;
}

/** The names in HOME/ca/tmp/signing. */
function signingFolders(home: string): string[] {
  try {
    return [...Deno.readDirSync(join(home, "ca", "tmp", "signing"))].map((e) => e.name).sort();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

/** A CA (EC P-256) keeping openssl warm; its runs are stopped afterwards, whatever happens. */
async function withWarmCa(
  fn: (ca: CertificateAuthority, home: string) => Promise<void>,
  options: { idleMs?: number } = {},
): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    ca.keepOpensslWarm(options);
    try {
      await fn(ca, home);
    } finally {
      await ca.stopWarmOpenssl();
    }
  });
}

/** The parts of a certificate's TBS a profile is made of, as DER. */
function profile(pem: string): {
  issuer: DerNode;
  subject: DerNode;
  extensions: DerNode;
  notBefore: Date;
  notAfter: Date;
} {
  const der = pemDecode(pem, "CERTIFICATE");
  assert.ok(der);
  const tbs = children(children(readDer(der), Tag.SEQUENCE)[0], Tag.SEQUENCE);
  const [, , , issuer, validity, subject, , extensions] = tbs;
  const x509 = new X509Certificate(pem);
  assert.equal(validity.tag, Tag.SEQUENCE);
  return {
    issuer,
    subject,
    extensions,
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
  };
}

function hex(node: DerNode): string {
  return Array.from(node.raw, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A request for `subject` made with an openssl config of our own (string_mask, multi-valued RDNs). */
async function rawCsr(
  key: string,
  subject: string,
  options: { stringMask?: string; multivalue?: boolean } = {},
): Promise<string> {
  return await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "key.pem"), key);
    await Deno.writeTextFile(
      join(dir, "req.cnf"),
      `[ req ]\ndistinguished_name = dn\nstring_mask = ${
        options.stringMask ?? "utf8only"
      }\n[ dn ]\n`,
    );
    const args = ["req", "-new", "-key", "key.pem", "-config", "req.cnf", "-subj", subject];
    if (options.multivalue) args.push("-multivalue-rdn");
    const { stdout } = await openssl(args, { cwd: dir });
    return new TextDecoder().decode(stdout);
  });
}

// ---------------------------------------------------------------------------
// what runs, and what a run holds

Deno.test("a CA keeping openssl warm has two openssl ca runs started ahead after a signing, each in a signing folder of its own, and stops them and removes their folders when told to", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    ca.keepOpensslWarm();
    try {
      assert.deepEqual(await warmRuns(home), [], "a run starts only when signings come in");
      const { csr } = await makeCsr("alice");
      await ca.sign(csr, "alice");
      const runs = await waitForWarm(home, 2);
      const folders = new Set(runs.map((r) => r.cwd));
      assert.equal(folders.size, 2, "each run has a folder of its own");
      for (const folder of folders) {
        assert.match(folder, /\/ca\/tmp\/signing\/[0-9a-f-]{36}$/);
      }
      assert.deepEqual(signingFolders(home).length, 2, "nothing else is left in signing/");
    } finally {
      await ca.stopWarmOpenssl();
    }
    assert.deepEqual(await warmRuns(home), []);
    assert.deepEqual(signingFolders(home), []);
  });
});

Deno.test("a run started ahead holds the CA key encrypted (0600) under a secret that is in its environment only: never in argv, never on disk, and the plain CA key is nowhere on disk", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr } = await makeCsr("alice");
    await ca.sign(csr, "alice");
    const runs = await waitForWarm(home, 2);
    const plain = createPrivateKey({
      key: await Deno.readTextFile(ca.paths.key),
      passphrase: PASSPHRASE,
    }).export({ type: "pkcs8", format: "der" });
    const plainB64 = plain.toString("base64");
    for (const run of runs) {
      const environ = await environOf(run.pid);
      const secret = environ.find((v) => v.startsWith("E2E_CHAT_PASSIN="))?.slice(16);
      assert.ok(secret && secret.length >= 40, "a long random secret in the environment");
      assert.ok(!environ.some((v) => v.includes(PASSPHRASE)), "never the CA passphrase");
      assert.ok(!run.args.some((a) => a.includes(secret)), "the secret is not in argv");
      assert.ok(run.args.includes("env:E2E_CHAT_PASSIN"));
      const copy = join(run.cwd, "key.pem");
      assert.equal(Deno.statSync(copy).mode! & 0o777, 0o600);
      const pem = Deno.readTextFileSync(copy);
      assert.match(pem, /ENCRYPTED/);
      assert.ok(!pem.includes(secret));
      // Which is the CA key, for whoever holds both (the service's own user only).
      const copied = createPrivateKey({ key: pem, passphrase: secret })
        .export({ type: "pkcs8", format: "der" });
      assert.ok(copied.equals(plain));
      // The secret and the plain key are in no file of the home.
      for (const file of walk(home)) {
        const text = new TextDecoder().decode(Deno.readFileSync(file));
        assert.ok(!text.includes(secret), `the secret is in ${file}`);
        assert.ok(!text.includes(plainB64.slice(0, 40)), `the plain CA key is in ${file}`);
      }
    }
  });
});

function* walk(dir: string): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* walk(path);
    else if (entry.isFile) yield path;
  }
}

Deno.test("runs started ahead and left unused are stopped after idleMs, and their folders removed", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr } = await makeCsr("alice");
    await ca.sign(csr, "alice");
    await waitForWarm(home, 2);
    await waitUntil(
      async () => (await warmRuns(home)).length === 0,
      "the idle runs to stop",
      15_000,
    );
    await waitUntil(() => signingFolders(home).length === 0, "their folders to go", 5_000);
  }, { idleMs: 1_500 });
});

Deno.test("stopWarmOpenssl() called while a signing starts runs ahead leaves no openssl run and no signing folder once the signing is settled", async () => {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    ca.keepOpensslWarm();
    const { csr } = await makeCsr("alice");
    const signing = ca.sign(csr, "alice");
    // The first folder made is the signing's own or a run's: the runs are starting.
    await waitUntil(() => signingFolders(home).length > 0, "a signing folder", 10_000);
    await ca.stopWarmOpenssl();
    await signing;
    assert.deepEqual(await warmRuns(home), []);
    assert.deepEqual(await runsUnder(home), []);
    assert.deepEqual(signingFolders(home), []);
    // A signing after the stop starts none.
    const { csr: bob } = await makeCsr("bob");
    await ca.sign(bob, "bob");
    await sleep(300);
    assert.deepEqual(await warmRuns(home), []);
    assert.deepEqual(signingFolders(home), []);
  });
});

// ---------------------------------------------------------------------------
// the certificates they sign

Deno.test("a warm-signed certificate has the subject bytes, issuer and extensions of a cold-signed one, and ends its days after the signing", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr, key } = await makeCsr("alice");
    // The first signing is cold: nothing was started ahead yet.
    const cold = (await ca.sign(csr, "alice")).certificate;
    const runs = await waitForWarm(home, 2);
    const startedBy = Date.now();
    await sleep(1_100); // a run's start date is its own, not the signing's
    const renewal = await makeCsr("alice", { keyPem: key });
    const before = Date.now();
    const { certificate: warm, superseded } = await ca.sign(renewal.csr, "alice");
    assert.deepEqual(superseded, [cold.serial]);
    const left = (await warmRuns(home)).map((r) => r.pid);
    assert.equal(
      runs.filter((r) => !left.includes(r.pid)).length,
      1,
      "one of the runs started ahead signed it",
    );

    const c = profile(cold.pem);
    const w = profile(warm.pem);
    assert.equal(hex(w.subject), hex(c.subject));
    assert.equal(hex(w.subject), "3010310e300c06035504030c05616c696365"); // CN=alice, UTF8String
    assert.equal(hex(w.issuer), hex(c.issuer));
    assert.equal(hex(w.extensions), hex(c.extensions));
    assert.ok(warm.x509.verify(ca.certificate.x509.publicKey));
    assert.notEqual(warm.serial, cold.serial);
    // notAfter: the signing's time and 7 days; notBefore: five minutes before the run started.
    assert.ok(Math.abs(w.notAfter.getTime() - (before + 7 * DAY_MS)) < 60_000);
    assert.ok(w.notBefore.getTime() <= startedBy - 5 * 60_000 + 1_000);
    assert.ok(w.notBefore.getTime() >= cold.notBefore.getTime() - 1_000);
    const index = await readIndex(ca.paths);
    assert.deepEqual(index.map((e) => [e.status, e.serial, e.name]), [
      ["R", cold.serial, "alice"],
      ["V", warm.serial, "alice"],
    ]);
  });
});

Deno.test("a request whose subject is CN=name in another form is signed cold, with the subject CN=name as UTF8String, and leaves the runs started ahead unused", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("zed");
    await ca.sign(first, "zed");
    const runs = (await waitForWarm(home, 2)).map((r) => r.pid).sort();
    // A key for each name: the CA certifies a key for one name at a time.
    const forms: Array<[string, Promise<string>]> = [
      ["printable", rawCsr(newKeyPem(), "/CN=alice", { stringMask: "default" })],
      ["extra attribute", rawCsr(newKeyPem(), "/O=Evil Corp/CN=bob")],
      ["multi-valued RDN", rawCsr(newKeyPem(), "/CN=carol+O=Evil Corp", { multivalue: true })],
      ["trailing attribute", rawCsr(newKeyPem(), "/CN=dave/OU=x")],
    ];
    const names = ["alice", "bob", "carol", "dave"];
    for (const [i, [form, csr]] of forms.entries()) {
      const { certificate } = await ca.sign(await csr, names[i]);
      const expected = new TextEncoder().encode(names[i]);
      const atv = [0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, expected.length, ...expected];
      const name = [0x30, atv.length + 4, 0x31, atv.length + 2, 0x30, atv.length, ...atv];
      assert.deepEqual([...profile(certificate.pem).subject.raw], name, form);
      assert.equal(certificate.x509.subject, `CN=${names[i]}`, form);
    }
    assert.deepEqual((await warmRuns(home)).map((r) => r.pid).sort(), runs, "no run was used");
  });
});

// ---------------------------------------------------------------------------
// crashes

/** A CA service with two runs started ahead (after one enrollment), killed with SIGKILL. */
async function killedWithRunsAhead(home: string): Promise<Run[]> {
  await initCa(home);
  const service = await startService(home);
  try {
    await enrollUser(service, "alice");
    const runs = await waitForWarm(home, 2);
    service.proc.kill("SIGKILL");
    assert.equal((await service.proc.status).signal, "SIGKILL");
    return runs;
  } finally {
    await service.stop();
  }
}

Deno.test("a CA service killed with SIGKILL leaves no openssl run behind: its runs started ahead see their stdin close and exit", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await killedWithRunsAhead(home);
    await waitUntil(
      async () => (await runsUnder(home)).length === 0,
      "the orphans to exit",
      10_000,
    );
  });
});

/** The CA key copies (key.pem) of signing folders. */
function keyCopies(home: string): string[] {
  return signingFolders(home).map((f) => join(home, "ca", "tmp", "signing", f, "key.pem"))
    .filter((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
}

Deno.test("a CA service restarted after a SIGKILL removes the CA key copies its predecessor's runs started ahead left in signing folders", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    const runs = await killedWithRunsAhead(home);
    await waitUntil(
      async () => (await runsUnder(home)).length === 0,
      "the orphans to exit",
      10_000,
    );
    const left = runs.map((r) => join(r.cwd, "key.pem"));
    assert.deepEqual(keyCopies(home).sort(), left.sort(), "the crash left both copies");
    const service = await startService(home);
    try {
      await enrollUser(service, "bob");
      for (const copy of left) {
        assert.equal(await Deno.stat(copy).then(() => true, () => false), false, `${copy} is left`);
      }
    } finally {
      await service.stop();
    }
    assert.deepEqual(keyCopies(home), [], "no copy of the CA key outlives the service");
  });
});

// ---------------------------------------------------------------------------
// failures, concurrency, days

Deno.test("a signing whose run started ahead died is signed again cold: the request gets its certificate, and nothing is left behind", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("zed");
    await ca.sign(first, "zed");
    const runs = await waitForWarm(home, 2);
    for (const run of runs) Deno.kill(run.pid, "SIGKILL");
    const { csr } = await makeCsr("alice");
    const { certificate } = await ca.sign(csr, "alice");
    assert.equal(certificate.x509.subject, "CN=alice");
    assert.ok(certificate.x509.verify(ca.certificate.x509.publicKey));
    const index = await readIndex(ca.paths);
    assert.deepEqual(index.filter((e) => e.name === "alice").map((e) => [e.status, e.serial]), [
      ["V", certificate.serial],
    ]);
    // And the next one, whichever way it is signed.
    const { csr: bob } = await makeCsr("bob");
    assert.equal((await ca.sign(bob, "bob")).certificate.x509.subject, "CN=bob");
    // Only the runs started for the next signings are left.
    const left = await waitForWarm(home, 2);
    assert.ok(left.every((r) => !runs.some((old) => old.pid === r.pid)));
    assert.deepEqual(signingFolders(home).sort(), left.map((r) => r.cwd.split("/").pop()).sort());
  });
});

Deno.test("eight signings at once, with runs started ahead, each get their own certificate for their own name and key, all committed", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("zed");
    await ca.sign(first, "zed");
    await waitForWarm(home, 2);
    const names = Array.from({ length: 8 }, (_, i) => `user${i}`);
    const csrs = await Promise.all(names.map((n) => makeCsr(n)));
    const issued = await Promise.all(names.map((n, i) => ca.sign(csrs[i].csr, n)));
    const serials = new Set<string>();
    for (const [i, { certificate }] of issued.entries()) {
      assert.equal(certificate.x509.subject, `CN=${names[i]}`);
      assert.equal(certificate.x509.subjectAltName, `DNS:${names[i]}`);
      const key = createPrivateKey(csrs[i].key);
      assert.ok(certificate.x509.checkPrivateKey(key), `${names[i]} has its own key`);
      serials.add(certificate.serial);
    }
    assert.equal(serials.size, 8);
    const index = await readIndex(ca.paths);
    for (const [i, { certificate }] of issued.entries()) {
      assert.ok(index.some((e) => e.serial === certificate.serial && e.name === names[i]));
    }
  });
});

Deno.test("a signing of other days than the runs started ahead is signed cold with its own days, and the runs started next are of its days", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("zed");
    await ca.sign(first, "zed", { days: 3 });
    const threeDay = await waitForWarm(home, 2);
    assert.ok(threeDay.every((r) => r.args.join(" ").includes("-days 3 ")));
    const { csr } = await makeCsr("alice");
    const before = Date.now();
    const { certificate } = await ca.sign(csr, "alice");
    assert.ok(Math.abs(certificate.notAfter.getTime() - (before + 7 * DAY_MS)) < 60_000);
    // A service certificate's renewal (30 days) must not keep the members' signings cold.
    await waitUntil(
      async () => (await warmRuns(home)).filter((r) => r.args.includes("7")).length === 2,
      "two runs of 7 days started ahead",
      10_000,
    );
  });
});

/** Signs `csr` for `name` once two runs wait, and checks that one of them signed it. */
async function signWarm(
  ca: CertificateAuthority,
  home: string,
  csr: string,
  name: string,
): Promise<Awaited<ReturnType<CertificateAuthority["sign"]>>> {
  const runs = await waitForWarm(home, 2);
  const issued = await ca.sign(csr, name);
  const left = (await warmRuns(home)).map((r) => r.pid);
  assert.equal(runs.filter((r) => !left.includes(r.pid)).length, 1, "a run started ahead signed");
  return issued;
}

Deno.test("a warm-signed certificate ignores the extensions a request asks for, as a cold-signed one does", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first, key } = await makeCsr("alice");
    const cold = (await ca.sign(first, "alice")).certificate;
    const { csr } = await makeCsr("alice", {
      keyPem: key,
      addext: [
        "basicConstraints=critical,CA:TRUE",
        "subjectAltName=DNS:evil.example",
        "keyUsage=critical,keyCertSign",
        "crlDistributionPoints=URI:http://evil.example/crl.der",
      ],
    });
    const { certificate } = await signWarm(ca, home, csr, "alice");
    assert.equal(certificate.x509.ca, false);
    assert.equal(certificate.x509.subjectAltName, "DNS:alice");
    assert.equal(hex(profile(certificate.pem).extensions), hex(profile(cold.pem).extensions));
  });
});

Deno.test("runs started ahead sign for an Ed25519 CA and an RSA-4096 CA as for an EC one", async () => {
  for (const keyType of ["ed25519", "rsa-4096"] as const) {
    await withTempDir(async (home) => {
      const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType });
      ca.keepOpensslWarm();
      try {
        const { csr: first } = await makeCsr("zed");
        await ca.sign(first, "zed");
        const { csr } = await makeCsr("alice");
        const { certificate } = await signWarm(ca, home, csr, "alice");
        assert.ok(certificate.x509.verify(ca.certificate.x509.publicKey), keyType);
        assert.equal(certificate.x509.subject, "CN=alice");
      } finally {
        await ca.stopWarmOpenssl();
      }
    });
  }
});

Deno.test("stopWarmOpenssl() waits for the runs the idle timer is stopping: none of them, nor its folder, outlives it", async () => {
  await withTempDir(async (dir) => {
    // An openssl whose runs started ahead have their output pipes outlive them by four seconds
    // (a child of their own keeps them): stopping one takes that long.
    const wrapper = join(dir, "openssl");
    const real = (await new Deno.Command("sh", { args: ["-c", "command -v openssl"] }).output())
      .stdout;
    await Deno.writeTextFile(
      wrapper,
      `#!/bin/sh\ncase "$*" in *"-extfile /dev/stdin"*) (sleep 4) & ;; esac\nexec '${
        new TextDecoder().decode(real).trim()
      }' "$@"\n`,
      { mode: 0o755 },
    );
    const home = join(dir, "home");
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const { csr } = await makeCsr("alice");
    const before = Deno.env.get("E2E_CHAT_OPENSSL");
    Deno.env.set("E2E_CHAT_OPENSSL", wrapper);
    ca.keepOpensslWarm({ idleMs: 1_500 });
    try {
      await ca.sign(csr, "alice");
      await waitForWarm(home, 2);
      // The idle timer has stopped both (killed, their folders not yet removed).
      await waitUntil(async () => (await warmRuns(home)).length === 0, "the idle stop", 5_000);
      await ca.stopWarmOpenssl();
      assert.deepEqual(signingFolders(home), [], "a folder outlived stopWarmOpenssl()");
    } finally {
      if (before === undefined) Deno.env.delete("E2E_CHAT_OPENSSL");
      else Deno.env.set("E2E_CHAT_OPENSSL", before);
      await ca.stopWarmOpenssl();
    }
  });
});

Deno.test("a run started ahead that dies while it waits makes way: the next signing starts two again, and the one after is signed warm", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("zed");
    await ca.sign(first, "zed");
    const runs = await waitForWarm(home, 2);
    for (const run of runs) Deno.kill(run.pid, "SIGKILL");
    await waitUntil(async () => (await warmRuns(home)).length === 0, "the runs to die", 5_000);
    const { csr: alice } = await makeCsr("alice");
    await ca.sign(alice, "alice");
    const { csr: bob } = await makeCsr("bob");
    const { certificate } = await signWarm(ca, home, bob, "bob");
    assert.equal(certificate.x509.subject, "CN=bob");
  });
});

Deno.test("a CA service stopped with SIGTERM right after an enrollment stops its runs started ahead and leaves no folder or key copy behind", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    const service = await startService(home);
    try {
      await enrollUser(service, "alice");
      // Stopped while the runs it starts are still starting, or just started.
      service.proc.kill("SIGTERM");
      assert.equal((await service.proc.status).code, 0);
    } finally {
      await service.stop();
    }
    assert.deepEqual(await runsUnder(home), []);
    assert.deepEqual(signingFolders(home), []);
  });
});

Deno.test("a replacement signed warm revokes the old certificate as superseded and commits the new key's", async () => {
  await withWarmCa(async (ca, home) => {
    const { csr: first } = await makeCsr("alice");
    const old = (await ca.sign(first, "alice")).certificate;
    const next = await makeCsr("alice");
    const runs = await waitForWarm(home, 2);
    const { certificate, superseded } = await ca.sign(next.csr, "alice", { replace: true });
    const left = (await warmRuns(home)).map((r) => r.pid);
    assert.equal(runs.filter((r) => !left.includes(r.pid)).length, 1, "a run started ahead signed");
    assert.deepEqual(superseded, [old.serial]);
    assert.ok(certificate.x509.checkPrivateKey(createPrivateKey(next.key)));
    const index = await readIndex(ca.paths);
    assert.deepEqual(index.map((e) => [e.status, e.serial, e.reason ?? ""]), [
      ["R", old.serial, "superseded"],
      ["V", certificate.serial, ""],
    ]);
  });
});
