import assert from "node:assert/strict";
import { join } from "node:path";
import { E2eError } from "./errors.ts";
import { resolveHome, resolveUserPath } from "./home.ts";

/** Runs `fn` with environment variables set (or removed, for undefined), restoring them afterwards. */
function withEnv(vars: Record<string, string | undefined>, fn: () => void): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const apply = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  };
  apply(vars);
  try {
    fn();
  } finally {
    apply(saved);
  }
}

Deno.test("resolveUserPath() keeps an absolute path as it is", () => {
  withEnv({ INIT_CWD: "/somewhere/else" }, () => {
    assert.equal(resolveUserPath("/etc/req.csr"), "/etc/req.csr");
  });
});

Deno.test("resolveUserPath() resolves a relative path from INIT_CWD, the user's folder", () => {
  withEnv({ INIT_CWD: "/home/alice/project" }, () => {
    assert.equal(resolveUserPath("req.csr"), "/home/alice/project/req.csr");
    assert.equal(resolveUserPath("../x/req.csr"), "/home/alice/x/req.csr");
  });
});

Deno.test("resolveUserPath() falls back to the current folder without INIT_CWD", () => {
  for (const initCwd of [undefined, ""]) {
    withEnv({ INIT_CWD: initCwd }, () => {
      assert.equal(resolveUserPath("req.csr"), join(Deno.cwd(), "req.csr"));
    });
  }
});

Deno.test("resolveHome() prefers the --home flag over E2E_CHAT_HOME and HOME", () => {
  withEnv({ E2E_CHAT_HOME: "/env/home", HOME: "/home/alice", INIT_CWD: "/work" }, () => {
    assert.equal(resolveHome("/flag/home"), "/flag/home");
    assert.equal(resolveHome("rel"), "/work/rel");
  });
});

Deno.test("resolveHome() uses E2E_CHAT_HOME when there is no flag", () => {
  withEnv({ E2E_CHAT_HOME: "/env/home", HOME: "/home/alice" }, () => {
    assert.equal(resolveHome(undefined), "/env/home");
    assert.equal(resolveHome(""), "/env/home");
  });
});

Deno.test("resolveHome() defaults to ~/.e2e-chat", () => {
  withEnv({ E2E_CHAT_HOME: undefined, HOME: "/home/alice" }, () => {
    assert.equal(resolveHome(undefined), "/home/alice/.e2e-chat");
  });
});

Deno.test("resolveHome() refuses to guess when HOME is not set", () => {
  withEnv({ E2E_CHAT_HOME: undefined, HOME: undefined }, () => {
    assert.throws(() => resolveHome(undefined), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, "ERR_HOME");
      assert.equal(e.message, "Cannot find a home directory: HOME is not set");
      assert.match(e.hint ?? "", /--home/);
      return true;
    });
  });
});

Deno.test("resolveUserPath() ignores an INIT_CWD inherited from an outer run when it runs outside the project folder (a compiled binary, deno run from elsewhere)", async () => {
  const dir = await Deno.makeTempDir();
  const before = Deno.cwd();
  try {
    Deno.chdir(dir);
    withEnv({ INIT_CWD: "/home/alice/other-project" }, () => {
      assert.equal(resolveUserPath("req.csr"), join(Deno.realPathSync(dir), "req.csr"));
      assert.equal(resolveHome("ca-home"), join(Deno.realPathSync(dir), "ca-home"));
    });
  } finally {
    Deno.chdir(before);
    await Deno.remove(dir, { recursive: true });
  }
});
