/**
 * Helpers for the hostile-input, fault and security-review tests: a seeded
 * random generator, a bounded pool, snapshots compared with a readable diff,
 * a real TLS ClientHello to cut in half, the one-line error a CLI must print,
 * and task processes (the CA service, `client chat --json`) started with an
 * environment of the test's choosing — a wrapper `openssl` first on PATH — and
 * killable with any signal.
 *
 * @module
 */
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { join } from "node:path";
import { ROOT, type RunResult } from "./_helpers.ts";
import {
  baseEnv,
  type HttpsReply,
  httpsRequest,
  type HttpsRequestOptions,
} from "./_service_helpers.ts";

const encoder = new TextEncoder();

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
// Concurrency and time

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

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

import { within } from "./_chat_helpers.ts";
export { within };

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

// ---------------------------------------------------------------------------
// TLS by hand

/**
 * The bytes of a real TLS ClientHello (what node:tls sends first, ALPN
 * e2e-chat/1 offered), captured by a plain TCP server of our own.
 */
export function captureClientHello(): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => {
      socket.once("data", (bytes: Uint8Array) => {
        resolve(new Uint8Array(bytes));
        socket.destroy();
        server.close();
      });
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const client = tls.connect({
        host: "127.0.0.1",
        port: (server.address() as net.AddressInfo).port,
        rejectUnauthorized: false,
        ALPNProtocols: ["e2e-chat/1"],
      });
      client.on("error", () => {});
    });
  });
}

/** A plain TCP connection that may be held open; `closed` resolves when the peer closes it. */
export interface HeldConnection {
  /** The connection. */
  conn: Deno.TcpConn;
  /** Resolves with the time the other side closed (or reset) it. */
  closed: Promise<number>;
  /** Whether the other side closed it. */
  isClosed(): boolean;
  /** Closes our side. */
  close(): void;
}

/** Opens a TCP connection to 127.0.0.1:`port`, writes `bytes` (if any) and keeps reading. */
export async function holdTcp(port: number, bytes?: Uint8Array): Promise<HeldConnection> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  if (bytes?.length) await conn.write(bytes).catch(() => 0);
  let done = false;
  const closed = (async () => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      while (await conn.read(buffer) !== null) { /* drain whatever it says */ }
    } catch { /* reset */ }
    done = true;
    return Date.now();
  })();
  return {
    conn,
    closed,
    isClosed: () => done,
    close: () => {
      try {
        conn.close();
      } catch { /* closed already */ }
    },
  };
}

// ---------------------------------------------------------------------------
// Processes

/** The `deno run` flags of a task in deno.json (what `deno task ca|client` grants). */
export async function taskFlags(task: "ca" | "client"): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  const words = String(config.tasks[task]).trim().split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "run"]);
  assert.equal(words.at(-1), `${task}/main.ts`);
  return words.slice(2, -1);
}

/** The environment of a child: PATH, HOME (for Deno's cache), NO_COLOR, then `extra`. */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  return baseEnv(extra);
}

/** Options of {@linkcode TaskProcess.start}. */
export interface TaskOptions {
  /** Variables added to {@linkcode childEnv}. Default: none. */
  env?: Record<string, string>;
  /** Working directory (also INIT_CWD). Default: the repository root. */
  cwd?: string;
  /** Keep stdin open for {@linkcode TaskProcess.send}. Default: false (no stdin). */
  stdin?: boolean;
  /** Milliseconds before a one-shot run is killed ({@linkcode runTask}). Default: 60000. */
  timeoutMs?: number;
}

/** `ca/main.ts` or `client/main.ts` run as its own process with its task's permissions. */
export class TaskProcess {
  /** Every JSON object printed on stdout, in order. */
  readonly events: Array<Record<string, unknown>> = [];
  #child: Deno.ChildProcess;
  #stdin?: WritableStreamDefaultWriter<Uint8Array>;
  #stdout = "";
  #stderr = "";
  #claimed = new Set<Record<string, unknown>>();
  #readers: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;

  private constructor(child: Deno.ChildProcess, stdin: boolean) {
    this.#child = child;
    if (stdin) this.#stdin = child.stdin.getWriter();
    this.#status = child.status.then((s) => {
      this.#exited = true;
      return s;
    });
    this.#readers = Promise.all([this.#read(child.stdout, true), this.#read(child.stderr, false)])
      .then(() => {});
  }

  /** Starts `task`'s entry point with `args`. */
  static async start(
    task: "ca" | "client",
    args: string[],
    options: TaskOptions = {},
  ): Promise<TaskProcess> {
    const cwd = options.cwd ?? ROOT;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", ...await taskFlags(task), join(ROOT, task, "main.ts"), ...args],
      cwd,
      clearEnv: true,
      env: childEnv({ INIT_CWD: cwd, ...options.env }),
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    return new TaskProcess(child, options.stdin ?? false);
  }

  /** Its process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Everything on stdout so far. */
  get stdout(): string {
    return this.#stdout;
  }

  /** Everything on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Resolves with the exit status. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /** Whether it has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Polls `check` every 20 ms until it returns a value; fails after `ms` or when the process ends. */
  async waitFor<T>(check: () => T | undefined, what: string, ms = 15_000): Promise<T> {
    const until = Date.now() + ms;
    while (true) {
      const value = check();
      if (value !== undefined) return value;
      if (Date.now() > until || this.#exited) {
        await within(this.#readers, 1_000, undefined);
        const found = check();
        if (found !== undefined) return found;
        throw new assert.AssertionError({
          message: `${what}: not seen${this.#exited ? " (the process exited)" : ""}\nstdout: ${
            this.#stdout.slice(-4000)
          }\nstderr: ${this.#stderr.slice(-4000)}`,
        });
      }
      await sleep(20);
    }
  }

  /** Waits for the first JSON event with these fields (or passing this test) not returned before. */
  expect(
    match: Record<string, unknown> | ((e: Record<string, unknown>) => boolean),
    ms = 15_000,
  ): Promise<Record<string, unknown>> {
    const test = typeof match === "function"
      ? match
      : (e: Record<string, unknown>) => Object.entries(match).every(([k, v]) => e[k] === v);
    return this.waitFor(
      () => {
        const found = this.events.find((e) => !this.#claimed.has(e) && test(e));
        if (found) this.#claimed.add(found);
        return found;
      },
      `event ${typeof match === "function" ? match.toString() : JSON.stringify(match)}`,
      ms,
    );
  }

  /** Writes one line to stdin. */
  async send(line: string): Promise<void> {
    assert.ok(this.#stdin, "started without stdin");
    await this.#stdin.write(encoder.encode(line + "\n"));
  }

  /** Sends `signal` (if it still runs). */
  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.#child.kill(signal);
    } catch { /* it has exited */ }
  }

  /**
   * Ends it: closes stdin (after `/quit` for a chat), sends SIGTERM, SIGKILL
   * after `ms`; waits for its output. Safe to call twice.
   */
  async stop(ms = 10_000): Promise<Deno.CommandStatus> {
    if (this.#stdin) {
      await within(this.send("/quit").catch(() => {}), 1_000, undefined);
      await this.#stdin.close().catch(() => {});
      this.#stdin = undefined;
      await within(this.#status, 3_000, undefined);
    }
    this.kill("SIGTERM");
    if (!await within(this.#status, ms, undefined)) this.kill("SIGKILL");
    const status = await this.#status;
    await within(this.#readers, 5_000, undefined);
    return status;
  }

  async #read(stream: ReadableStream<Uint8Array>, isStdout: boolean): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    try {
      for await (const chunk of stream) {
        const text = decoder.decode(chunk, { stream: true });
        if (!isStdout) {
          this.#stderr += text;
          continue;
        }
        this.#stdout += text;
        pending += text;
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          this.#take(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      }
    } catch { /* killed */ }
    if (isStdout && pending) this.#take(pending);
  }

  #take(line: string): void {
    if (!line.startsWith("{")) return;
    try {
      const value = JSON.parse(line);
      if (value && typeof value === "object") this.events.push(value);
    } catch { /* not an event */ }
  }
}

/** Runs `task` with `args` to the end (killed after `timeoutMs`) and returns what it printed. */
export async function runTask(
  task: "ca" | "client",
  args: string[],
  options: TaskOptions = {},
): Promise<RunResult & { signal: Deno.Signal | null }> {
  const proc = await TaskProcess.start(task, args, { ...options, stdin: false });
  if (!await within(proc.status, options.timeoutMs ?? 60_000, undefined)) proc.kill("SIGKILL");
  const status = await proc.stop(1_000);
  return { code: status.code, signal: status.signal, stdout: proc.stdout, stderr: proc.stderr };
}

const SERVICE_LINE = /^e2e-chat CA service listening on (https:\/\/127\.0\.0\.1:(\d+))$/m;
const FINGERPRINT_LINE = /^CA fingerprint \(SHA-256\): ([0-9a-f]{64})$/m;

/** A CA service process that a test may kill with any signal (tests/_service_helpers.ts only stops). */
export class ServiceProcess {
  /** The process. */
  readonly proc: TaskProcess;
  /** The CA home. */
  readonly home: string;
  /** https://127.0.0.1:PORT */
  readonly url: string;
  /** Its port. */
  readonly port: number;
  /** The CA certificate, PEM. */
  readonly caPem: string;

  private constructor(proc: TaskProcess, home: string, url: string, caPem: string) {
    this.proc = proc;
    this.home = home;
    this.url = url;
    this.port = Number(new URL(url).port);
    this.caPem = caPem;
  }

  /** Starts `ca serve --port 0 ...args` on `home` with the test passphrase (and `options.env`). */
  static async start(
    home: string,
    passphrase: string,
    options: { args?: string[]; env?: Record<string, string> } = {},
  ): Promise<ServiceProcess> {
    const proc = await TaskProcess.start("ca", ["serve", "--port", "0", ...options.args ?? []], {
      env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: passphrase, ...options.env },
    });
    try {
      const url = await proc.waitFor(
        () => FINGERPRINT_LINE.test(proc.stdout) ? SERVICE_LINE.exec(proc.stdout)?.[1] : undefined,
        "the service's URL",
        30_000,
      );
      const caPem = await Deno.readTextFile(join(home, "ca", "ca.crt"));
      return new ServiceProcess(proc, home, url, caPem);
    } catch (e) {
      await proc.stop(1_000);
      throw e;
    }
  }

  /** What it logged on stderr. */
  get log(): string {
    return this.proc.stderr;
  }

  /** An HTTPS request trusting its CA. */
  request(path: string, options: HttpsRequestOptions = {}): Promise<HttpsReply> {
    return httpsRequest(this.url + path, { ca: this.caPem, ...options });
  }
}

/** Where the real openssl is: `command -v openssl`, asked before any wrapper is on PATH. */
export async function realOpenssl(): Promise<string> {
  const out = await new Deno.Command("sh", { args: ["-c", "command -v openssl"] }).output();
  const path = new TextDecoder().decode(out.stdout).trim();
  assert.ok(out.success && path.startsWith("/"), "openssl is not on PATH");
  return path;
}
