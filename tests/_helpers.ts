/**
 * Shared test helpers: temporary homes, real certificate requests made by the
 * real openssl, and the real CLI run as a separate process with the same
 * permissions `deno task` gives it.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openssl } from "../lib/openssl.ts";

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

/** The passphrase every test CA uses. */
export const PASSPHRASE = "test passphrase 1234";

/** Permissions of `deno task ca` / `deno task client` (see deno.json). */
const TASK_FLAGS = [
  "--allow-run=openssl",
  "--allow-env=E2E_CHAT_HOME,E2E_CHAT_CA_PASSPHRASE,E2E_CHAT_OPENSSL,E2E_CHAT_DEBUG,HOME,INIT_CWD,PATH",
  "--allow-read",
  "--allow-write",
];

/** Runs `fn` with a fresh temporary folder, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Key types a test request can have. */
export type TestKeyType =
  | "ec-p256"
  | "ec-p384"
  | "ec-p521"
  | "ed25519"
  | "ed448"
  | "rsa-1024"
  | "rsa-2048";

const KEYGEN: Record<TestKeyType, string[]> = {
  "ec-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "ec-p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
  "ec-p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
  "ed25519": ["-algorithm", "ED25519"],
  "ed448": ["-algorithm", "ED448"],
  "rsa-1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
  "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
};

/** Options of {@linkcode makeCsr}. */
export interface CsrOptions {
  /** Key type. Default: "ec-p256". */
  keyType?: TestKeyType;
  /** Subject in openssl's -subj syntax. Default: `/CN=<name>`. */
  subject?: string;
  /** Extra `-addext` values, e.g. "basicConstraints=critical,CA:TRUE". Default: none. */
  addext?: string[];
  /** Reuse this private key (PEM) instead of making one. Default: a new key. */
  keyPem?: string;
}

/** Makes a real key and CSR with openssl; returns both as PEM. */
export async function makeCsr(
  name: string,
  options: CsrOptions = {},
): Promise<{ csr: string; key: string }> {
  return await withTempDir(async (dir) => {
    if (options.keyPem) {
      await Deno.writeTextFile(join(dir, "key.pem"), options.keyPem);
    } else {
      await openssl(["genpkey", ...KEYGEN[options.keyType ?? "ec-p256"], "-out", "key.pem"], {
        cwd: dir,
      });
    }
    const args = ["req", "-new", "-key", "key.pem", "-config", "/dev/null", "-utf8"];
    args.push("-subj", options.subject ?? `/CN=${name}`);
    for (const ext of options.addext ?? []) args.push("-addext", ext);
    const { stdout } = await openssl(args, { cwd: dir });
    return {
      csr: new TextDecoder().decode(stdout),
      key: await Deno.readTextFile(join(dir, "key.pem")),
    };
  });
}

/** What a CLI run produced. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode runCli}. */
export interface RunOptions {
  /** Environment variables added to a minimal environment. Default: none. */
  env?: Record<string, string>;
  /** Text for stdin. Default: no stdin. */
  stdin?: string;
  /** Working directory of the process (also INIT_CWD). Default: the repository root. */
  cwd?: string;
}

/** Runs `deno run <task permissions> <entry> ...args` as a real process. */
export async function runCli(
  entry: "ca/main.ts" | "client/main.ts",
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const cwd = options.cwd ?? ROOT;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...TASK_FLAGS, join(ROOT, entry), ...args],
    cwd,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/root",
      INIT_CWD: cwd,
      NO_COLOR: "1",
      ...options.env,
    },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(options.stdin)).catch(() => {});
    await w.close().catch(() => {});
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs the CA CLI against `home` with the test passphrase in its environment. */
export function runCa(home: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runCli("ca/main.ts", args, {
    ...options,
    env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE, ...options.env },
  });
}

/** A snapshot of every file under `dir` (path → content), to prove nothing changed. */
export async function snapshot(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  async function walk(d: string) {
    for await (const entry of Deno.readDir(d)) {
      const path = join(d, entry.name);
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile) files.set(path, await Deno.readTextFile(path));
    }
  }
  await walk(dir);
  return files;
}
