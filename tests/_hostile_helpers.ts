/**
 * Helpers for the hostile-input, fault and security-review tests: a seeded
 * random generator, a bounded pool, snapshots compared with a readable diff,
 * the one-line error a CLI must print, and the real openssl behind a wrapper
 * that records its argv.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { CaService, type ServeOptions } from "../ca/service.ts";
import { makeCsr, PASSPHRASE } from "./_helpers.ts";
import { type RunResult, withTempDir } from "./_harness.ts";

// ---------------------------------------------------------------------------
// Randomness that a failure can reproduce

/** A small seeded generator (mulberry32): the same seed gives the same cases on every run. */
export class SeededRandom {
  #state: number;

  /** A generator starting from `seed`. */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** A whole number in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

// ---------------------------------------------------------------------------
// Concurrency

/** Runs `fn` over `items` with at most `limit` at a time; results keep the order of `items`. */
export async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

// ---------------------------------------------------------------------------
// Files

/**
 * Asserts that two snapshots (tests/_helpers.ts `snapshot`) hold the same
 * files with the same contents, except paths matching `allow`; the message
 * lists what was added, removed or changed.
 */
export function assertSameFiles(
  before: Map<string, string>,
  after: Map<string, string>,
  what: string,
  allow?: RegExp,
): void {
  const changes: string[] = [];
  for (const [path, content] of before) {
    if (allow?.test(path)) continue;
    if (!after.has(path)) changes.push(`removed ${path}`);
    else if (after.get(path) !== content) changes.push(`changed ${path}`);
  }
  for (const path of after.keys()) {
    if (!allow?.test(path) && !before.has(path)) changes.push(`added ${path}`);
  }
  assert.deepEqual(changes, [], `${what}: the files changed`);
}

/** Every path under `dir`, relative, folders ending with "/" (empty when `dir` does not exist). */
export async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string, prefix: string) {
    for await (const entry of Deno.readDir(d)) {
      const rel = prefix + entry.name;
      if (entry.isDirectory) {
        out.push(rel + "/");
        await walk(join(d, entry.name), rel + "/");
      } else {
        out.push(rel);
      }
    }
  }
  try {
    await walk(dir, "");
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/** The permission bits of `path`. */
export async function modeOf(path: string): Promise<number> {
  return (await Deno.stat(path)).mode! & 0o777;
}

// ---------------------------------------------------------------------------
// The CLI's error contract

/**
 * Asserts a refused CLI run: non-zero exit, nothing on stdout, and on stderr
 * exactly one `e2e-chat: error: …` line (and at most one `e2e-chat: hint: …`)
 * — no stack trace — that repeats none of `secrets`.
 */
export function assertCliError(result: RunResult, what: string, secrets: string[] = []): void {
  const context =
    `${what}: exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
  assert.notEqual(result.code, 0, context);
  assert.equal(result.stdout, "", context);
  const lines = result.stderr.split("\n");
  assert.equal(lines.pop(), "", `${context}\n(stderr does not end with a newline)`);
  assert.ok(lines.length === 1 || lines.length === 2, `${context}\n(not one error line)`);
  assert.match(lines[0], /^e2e-chat: error: \S/, context);
  assert.doesNotMatch(lines[0], /unexpected failure/, context);
  if (lines.length === 2) assert.match(lines[1], /^e2e-chat: hint: \S/, context);
  for (const secret of secrets.filter(Boolean)) {
    assert.ok(
      !result.stderr.includes(secret) && !result.stdout.includes(secret),
      `${what}: echoed`,
    );
  }
}

/** Where the real openssl is: `command -v openssl`, asked before any wrapper is on PATH. */
export async function realOpenssl(): Promise<string> {
  const out = await new Deno.Command("sh", { args: ["-c", "command -v openssl"] }).output();
  const path = new TextDecoder().decode(out.stdout).trim();
  assert.ok(out.success && path.startsWith("/"), "openssl is not on PATH");
  return path;
}

/**
 * A stand-in openssl in `dir/bin` that appends its arguments to
 * `dir/openssl-argv.log`, then runs the real one (found before the wrapper is
 * on PATH); `env` puts it first on PATH for a child.
 */
export async function argvRecordingOpenssl(
  dir: string,
): Promise<{ argvLog: string; env: { PATH: string } }> {
  const real = await realOpenssl();
  const path = join(dir, "bin");
  const argvLog = join(dir, "openssl-argv.log");
  await Deno.mkdir(path);
  await Deno.writeTextFile(
    join(path, "openssl"),
    `#!/bin/sh\nprintf '%s\\n' "$*" >> '${argvLog}'\nexec '${real}' "$@"\n`,
    { mode: 0o755 },
  );
  return { argvLog, env: { PATH: `${path}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` } };
}

/** A member's key and certificate, issued by a {@linkcode ServiceWorld}'s CA. */
export interface Member {
  name: string;
  key: string;
  cert: string;
}

/** A CA service in-process on an EC CA of its own, its log lines, and members to issue. */
export interface ServiceWorld {
  service: CaService;
  ca: CertificateAuthority;
  /** The CA certificate, PEM. */
  anchor: string;
  logs: string[];
  member(name: string): Promise<Member>;
}

/** Runs `fn` against a fresh {@linkcode ServiceWorld} (port 0, `options` added); closes it after. */
export async function withServiceWorld(
  fn: (world: ServiceWorld) => Promise<void>,
  options: ServeOptions = {},
): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const logs: string[] = [];
    const service = await CaService.start(ca, { port: 0, log: (l) => logs.push(l), ...options });
    const member = async (name: string) => {
      const { csr, key } = await makeCsr(name);
      return { name, key, cert: (await ca.sign(csr, name)).certificate.pem };
    };
    try {
      await fn({ service, ca, anchor: ca.certificate.pem, logs, member });
    } finally {
      await service.close();
    }
  });
}
