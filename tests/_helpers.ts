/**
 * Fixtures on top of tests/_harness.ts: real certificate requests made by the
 * real openssl, the CLI run to the end, and snapshots of a folder.
 *
 * @module
 */
import { generateKeyPairSync } from "node:crypto";
import type { Socket } from "node:net";
import { join } from "node:path";
import { openssl } from "../lib/openssl.ts";
import { ROOT, type RunResult, runTask, withTempDir } from "./_harness.ts";

export { ROOT, type RunResult, withTempDir };

/** The passphrase every test CA uses. */
export const PASSPHRASE = "test passphrase 1234";

/** Key types a test request can have. */
export type TestKeyType =
  | "ec-p256"
  | "ec-p384"
  | "ec-p521"
  | "ed25519"
  | "ed448"
  | "rsa-1024"
  | "rsa-2048";

/** The `openssl genpkey` arguments of each key type. */
export const KEYGEN: Record<TestKeyType, string[]> = {
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

/**
 * A new EC P-256 private key (PKCS#8 PEM), made in-process: for many requests at once, each with a
 * key of its own (the CA certifies a key for one name at a time), without an openssl run each.
 */
export function newKeyPem(): string {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return privateKey.export({ type: "pkcs8", format: "pem" }) as string;
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

/** Options of {@linkcode runCli}. */
export interface RunOptions {
  /** Environment variables added to a minimal environment. Default: none. */
  env?: Record<string, string>;
  /** Text for stdin. Default: no stdin. */
  stdin?: string;
  /** Working directory of the process (also INIT_CWD). Default: the repository root. */
  cwd?: string;
  /** The process's umask. Default: ours. */
  umask?: number;
}

/** Runs `deno run <task permissions> <entry> ...args` as a real process. */
export function runCli(
  entry: "ca/main.ts" | "client/main.ts",
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  return runTask(entry === "ca/main.ts" ? "ca" : "client", args, options);
}

/** Runs the CA CLI against `home` with the test passphrase in its environment. */
export function runCa(home: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runCli("ca/main.ts", args, {
    ...options,
    env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE, ...options.env },
  });
}

/**
 * A snapshot of every file under `dir` (path → content), to prove nothing changed. It leaves out
 * a CA's `tmp/signing/`: the openssl runs a CA service keeps started ahead come and go there on
 * their own (ca/authority.ts `keepOpensslWarm`). A process may still be finishing a write (an
 * atomic write's temporary file comes and goes): the tree is read until two reads 50 ms apart
 * agree (for at most 5 s), so a snapshot shows a settled tree, not one caught mid-write.
 */
export async function snapshot(dir: string): Promise<Map<string, string>> {
  let last = await readTree(dir);
  for (const deadline = Date.now() + 5_000; Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    const next = await readTree(dir);
    if (sameFiles(last, next)) return next;
    last = next;
  }
  return last;
}

async function readTree(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  async function walk(d: string) {
    for await (const entry of Deno.readDir(d)) {
      const path = join(d, entry.name);
      if (entry.isDirectory && path.endsWith(join("tmp", "signing"))) continue;
      try {
        if (entry.isDirectory) await walk(path);
        else if (entry.isFile) files.set(path, await Deno.readTextFile(path));
      } catch (error) {
        // Gone between the listing and the read: a write in progress, which the next read settles.
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
    }
  }
  await walk(dir);
  return files;
}

function sameFiles(a: Map<string, string>, b: Map<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [path, content] of a) if (b.get(path) !== content) return false;
  return true;
}

/**
 * Writes `total` bytes to `socket` in 1 MiB writes, each once the last was taken; stops when the
 * socket closes. Returns how many were taken.
 */
export async function flood(socket: Socket, total: number): Promise<number> {
  const chunk = new Uint8Array(1024 * 1024);
  const closed = new Promise<false>((resolve) => socket.once("close", () => resolve(false)));
  let taken = 0;
  while (taken < total && !socket.destroyed) {
    const written = new Promise<boolean>((resolve) => socket.write(chunk, (e) => resolve(!e)));
    if (!await Promise.race([written, closed])) break;
    taken += chunk.length;
  }
  return taken;
}

/** Copies the folder `from` to `to`, files and folders (new folders 0700). */
export async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true, mode: 0o700 });
  for await (const entry of Deno.readDir(from)) {
    const [src, dst] = [join(from, entry.name), join(to, entry.name)];
    if (entry.isDirectory) await copyTree(src, dst);
    else await Deno.copyFile(src, dst);
  }
}
