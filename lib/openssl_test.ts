import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { E2eError } from "./errors.ts";
import { exists } from "./fs.ts";
import { openssl, OpensslError, opensslProgram, PASSPHRASE_ARG, startOpenssl } from "./openssl.ts";

const decoder = new TextDecoder();

/** Runs `fn` with environment variables set (or removed, for undefined), restoring them afterwards. */
async function withEnv<T>(
  vars: Record<string, string | undefined>,
  fn: () => Promise<T>,
): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const apply = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values)) {
      v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    }
  };
  apply(vars);
  try {
    return await fn();
  } finally {
    apply(saved);
  }
}

async function withScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-openssl-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * A stand-in for openssl that prints its environment, working directory and arguments, also
 * writes the working directory to `dir/cwd.txt`, then exits `code`.
 */
async function writeEnvDumper(dir: string, code = 0): Promise<string> {
  const path = join(dir, "fake-openssl");
  const script = [
    "#!/bin/sh",
    "env",
    'echo "cwd=$(pwd)"',
    'echo "args=$*"',
    `pwd > '${join(dir, "cwd.txt")}'`,
    `exit ${code}`,
  ];
  await Deno.writeTextFile(path, script.join("\n") + "\n", { mode: 0o755 });
  await Deno.chmod(path, 0o755);
  return path;
}

function parseDump(stdout: Uint8Array): { env: Map<string, string>; cwd: string; args: string } {
  const env = new Map<string, string>();
  let cwd = "";
  let args = "";
  for (const line of decoder.decode(stdout).split("\n")) {
    if (line.startsWith("cwd=")) cwd = line.slice(4);
    else if (line.startsWith("args=")) args = line.slice(5);
    else if (line.includes("=")) {
      env.set(line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1));
    }
  }
  return { env, cwd, args };
}

async function gone(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true;
    throw e;
  }
}

Deno.test("openssl() runs the real openssl and returns its output", async () => {
  const { stdout, stderr } = await openssl(["version"]);
  assert.match(decoder.decode(stdout), /^OpenSSL 3\./);
  assert.equal(typeof stderr, "string");
});

Deno.test("openssl() delivers stdin, as text and as bytes", async () => {
  const text = "hello openssl\n";
  const fromText = await openssl(["dgst", "-sha256", "-r"], { stdin: text });
  assert.equal(
    decoder.decode(fromText.stdout).split(" ")[0],
    createHash("sha256").update(text).digest("hex"),
  );
  // More than a pipe buffer, so a partial write would show.
  const big = new Uint8Array(1 << 20).map((_, i) => (i * 31) & 0xff);
  const fromBytes = await openssl(["dgst", "-sha256", "-r"], { stdin: big });
  assert.equal(
    decoder.decode(fromBytes.stdout).split(" ")[0],
    createHash("sha256").update(big).digest("hex"),
  );
});

Deno.test("openssl() refuses a passphrase that appears in the arguments, before running anything", async () => {
  await withEnv({ E2E_CHAT_OPENSSL: "/nonexistent/openssl" }, async () => {
    for (const args of [["pkey", "-passin", "pass:hunter22"], ["pkey", "hunter22"]]) {
      await assert.rejects(
        () => openssl(args, { passphrase: "hunter22" }),
        (e) => {
          assert.ok(e instanceof TypeError);
          assert.equal(e.message, "A passphrase must never be passed as an openssl argument");
          assert.ok(!e.message.includes("hunter22"));
          return true;
        },
      );
    }
  });
});

Deno.test("openssl() hands the passphrase over through env:E2E_CHAT_PASSIN", async () => {
  await withScratch(async (dir) => {
    const passphrase = "correct horse battery";
    await openssl(
      [
        "genpkey",
        "-algorithm",
        "ED25519",
        "-aes-256-cbc",
        "-pass",
        PASSPHRASE_ARG,
        "-out",
        "k.pem",
      ],
      { cwd: dir, passphrase },
    );
    assert.match(await Deno.readTextFile(join(dir, "k.pem")), /ENCRYPTED PRIVATE KEY/);
    await openssl(["pkey", "-in", "k.pem", "-passin", PASSPHRASE_ARG, "-noout"], {
      cwd: dir,
      passphrase,
    });
    await assert.rejects(
      () =>
        openssl(["pkey", "-in", "k.pem", "-passin", PASSPHRASE_ARG, "-noout"], {
          cwd: dir,
          passphrase: "wrong passphrase",
        }),
      (e) => {
        assert.ok(e instanceof OpensslError);
        assert.equal(e.badPassphrase, true);
        return true;
      },
    );
  });
});

Deno.test("openssl() reports a non-zero exit as OpensslError, keeping stderr out of the message", async () => {
  await assert.rejects(
    () => openssl(["x509", "-in", "no-such-file.pem", "-noout"]),
    (e) => {
      assert.ok(e instanceof OpensslError);
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_OPENSSL");
      assert.equal(e.exitCode, 1);
      assert.equal(e.message, "openssl x509 failed with exit code 1");
      assert.match(e.stderr, /no-such-file\.pem/);
      assert.equal(e.detail, e.stderr);
      assert.ok(!e.message.includes("no-such-file"));
      assert.equal(e.badPassphrase, false);
      return true;
    },
  );
});

Deno.test("openssl() reports a missing program as ERR_OPENSSL_MISSING", async () => {
  await withEnv({ E2E_CHAT_OPENSSL: "/nonexistent/openssl" }, async () => {
    await assert.rejects(() => openssl(["version"]), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_OPENSSL_MISSING");
      assert.equal(e.message, 'Cannot find the openssl program "/nonexistent/openssl"');
      assert.match(e.hint ?? "", /E2E_CHAT_OPENSSL/);
      return true;
    });
  });
});

Deno.test("openssl() stops a child that runs past timeoutMs with ERR_OPENSSL_TIMEOUT", async () => {
  const started = Date.now();
  await assert.rejects(
    // A TLS server on an ephemeral loopback port waits for clients forever.
    () => openssl(["s_server", "-accept", "127.0.0.1:0", "-nocert"], { timeoutMs: 300 }),
    (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_OPENSSL_TIMEOUT");
      assert.equal(e.message, "openssl s_server did not finish in time");
      return true;
    },
  );
  assert.ok(Date.now() - started < 10_000, "the child was stopped soon after the timeout");
});

Deno.test("opensslProgram() is openssl unless E2E_CHAT_OPENSSL names another", async () => {
  await withEnv({ E2E_CHAT_OPENSSL: undefined }, async () => {
    assert.equal(opensslProgram(), "openssl");
    await withEnv(
      { E2E_CHAT_OPENSSL: "" },
      () => Promise.resolve(assert.equal(opensslProgram(), "openssl")),
    );
    await withEnv(
      { E2E_CHAT_OPENSSL: "/opt/openssl/bin/openssl" },
      () => Promise.resolve(assert.equal(opensslProgram(), "/opt/openssl/bin/openssl")),
    );
  });
});

Deno.test("openssl() gives the child a clean environment: none of our variables, no passphrase unless asked", async () => {
  await withScratch(async (dir) => {
    const program = await writeEnvDumper(dir);
    await withEnv(
      {
        E2E_CHAT_OPENSSL: program,
        E2E_CHAT_CA_PASSPHRASE: "leaky secret",
        E2E_CHAT_TEST_MARKER: "1",
      },
      async () => {
        const plain = parseDump((await openssl(["version"])).stdout);
        assert.equal(plain.env.get("SSL_CERT_FILE"), "/dev/null");
        assert.equal(plain.env.get("PATH"), Deno.env.get("PATH"));
        assert.equal(plain.env.has("E2E_CHAT_CA_PASSPHRASE"), false);
        assert.equal(plain.env.has("E2E_CHAT_TEST_MARKER"), false);
        assert.equal(plain.env.has("E2E_CHAT_OPENSSL"), false);
        assert.equal(plain.env.has("E2E_CHAT_PASSIN"), false);
        assert.equal(plain.env.has("HOME"), false);

        const withPass = parseDump(
          (await openssl(["pkey", "-passin", PASSPHRASE_ARG], { passphrase: "s3cret pass" }))
            .stdout,
        );
        assert.equal(withPass.env.get("E2E_CHAT_PASSIN"), "s3cret pass");
        assert.equal(withPass.args, "pkey -passin env:E2E_CHAT_PASSIN");
      },
    );
  });
});

Deno.test("openssl() runs in a private temp folder that is removed afterwards, even on failure", async () => {
  await withScratch(async (dir) => {
    const ok = await writeEnvDumper(dir, 0);
    await withEnv({ E2E_CHAT_OPENSSL: ok }, async () => {
      await openssl(["version"]);
    });
    const cwd = (await Deno.readTextFile(join(dir, "cwd.txt"))).trim();
    assert.match(cwd, /e2e-chat-openssl-/);
    assert.equal(await gone(cwd), true);

    const failing = await writeEnvDumper(dir, 3);
    await withEnv({ E2E_CHAT_OPENSSL: failing }, async () => {
      await assert.rejects(() => openssl(["version"]), (e) => {
        assert.ok(e instanceof OpensslError);
        assert.equal(e.exitCode, 3);
        assert.equal(e.message, "openssl version failed with exit code 3");
        return true;
      });
    });
    const failedCwd = (await Deno.readTextFile(join(dir, "cwd.txt"))).trim();
    assert.notEqual(failedCwd, cwd);
    assert.equal(await gone(failedCwd), true);
  });
});

Deno.test("openssl() runs in the given cwd and leaves it in place", async () => {
  await withScratch(async (dir) => {
    const program = await writeEnvDumper(dir);
    await withEnv({ E2E_CHAT_OPENSSL: program }, async () => {
      const { cwd } = parseDump((await openssl(["version"], { cwd: dir })).stdout);
      assert.equal(await Deno.realPath(cwd), await Deno.realPath(dir));
      assert.equal(await gone(dir), false);
    });
  });
});

Deno.test("startOpenssl() starts the child at once, and finish() hands it the rest of its stdin", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const run = startOpenssl(["enc", "-base64", "-out", "out.txt"], { cwd: dir, stdin: "abc" });
    // openssl opens its output before it reads any input: the child runs before finish().
    for (let i = 0; i < 500 && !(await exists(join(dir, "out.txt"))); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(await exists(join(dir, "out.txt")), "the child started before finish()");
    await run.finish("def");
    assert.equal(await Deno.readTextFile(join(dir, "out.txt")), "YWJjZGVm\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("startOpenssl() finish() reports a failed run as openssl() does", async () => {
  const run = startOpenssl(["pkey", "-in", "/dev/stdin"], { cwd: Deno.cwd(), stdin: "not a " });
  await assert.rejects(run.finish("key"), (e) => {
    assert.ok(e instanceof OpensslError);
    assert.equal(e.message, "openssl pkey failed with exit code 1");
    return true;
  });
});

Deno.test("startOpenssl() cancel() stops a child that still waits for its input", async () => {
  const run = startOpenssl(["enc", "-base64"], { cwd: Deno.cwd(), stdin: "abc" });
  await run.cancel(); // returns once the child is gone: the test's sanitizers check no process is left
});
