/**
 * Helpers for end-to-end tests of the CA service: the real service
 * (`ca/main.ts serve`) started as its own process with the permissions of
 * `deno task ca`, the client CLI run with those of `deno task client`, and
 * HTTPS requests made with node:https (mutual TLS, raw bodies).
 *
 * @module
 */
import assert from "node:assert/strict";
import https from "node:https";
import type { TLSSocket } from "node:tls";
import { join } from "node:path";
import { makeCsr, PASSPHRASE, ROOT, runCa, type RunResult } from "./_helpers.ts";

const SERVICE_LINE = /^e2e-chat CA service listening on (https:\/\/127\.0\.0\.1:(\d+))$/m;
const FINGERPRINT_LINE = /^CA fingerprint \(SHA-256\): ([0-9a-f]{64})$/m;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const CLIENT_TIMEOUT_MS = 60_000;

/**
 * The `deno run` flags of a task in deno.json, so the processes started here
 * get exactly the permissions `deno task ca` / `deno task client` give.
 */
async function taskFlags(task: "ca" | "client"): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  const words = String(config.tasks[task]).trim().split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "run"], `task ${task} is not "deno run …"`);
  assert.equal(words.at(-1), `${task}/main.ts`, `task ${task} does not end with its entry point`);
  return words.slice(2, -1);
}

/** The environment every child gets: nothing of ours beyond what `deno` itself needs. */
export function baseEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    // The real HOME keeps Deno's cache warm; E2E_CHAT_HOME keeps e2e-chat out of it.
    HOME: Deno.env.get("HOME") ?? "/root",
    INIT_CWD: ROOT,
    NO_COLOR: "1",
  };
  const denoDir = Deno.env.get("DENO_DIR");
  if (denoDir) env.DENO_DIR = denoDir;
  return { ...env, ...extra };
}

/** Text read from a child's stream as it arrives. */
class TextSink {
  text = "";
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of stream) this.text += decoder.decode(chunk, { stream: true });
      this.text += decoder.decode();
    })().catch(() => {});
  }
}

/** Options of {@linkcode startService}. */
export interface StartOptions {
  /** Arguments after `serve --port 0`, e.g. `["--rendezvous-ttl", "2s"]`. Default: none. */
  args?: string[];
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
}

/** A CA service running as a separate process. */
export class Service {
  /** The CA home (E2E_CHAT_HOME of the service). */
  readonly home: string;
  /** The URL it printed, https://127.0.0.1:PORT. */
  readonly url: string;
  /** Its port. */
  readonly port: number;
  /** The CA fingerprint it printed. */
  readonly fingerprint: string;
  /** The CA certificate, PEM (HOME/ca/ca.crt). */
  readonly caPem: string;
  #child: Deno.ChildProcess;
  #stdout: TextSink;
  #stderr: TextSink;
  #stopped?: Promise<Deno.CommandStatus>;

  /** Wraps a started child whose startup lines have been read. */
  constructor(
    home: string,
    child: Deno.ChildProcess,
    sinks: { stdout: TextSink; stderr: TextSink },
    started: { url: string; port: number; fingerprint: string; caPem: string },
  ) {
    this.home = home;
    this.#child = child;
    this.#stdout = sinks.stdout;
    this.#stderr = sinks.stderr;
    this.url = started.url;
    this.port = started.port;
    this.fingerprint = started.fingerprint;
    this.caPem = started.caPem;
  }

  /** HOME/ca */
  get caDir(): string {
    return join(this.home, "ca");
  }

  /** Everything the service printed on stdout so far. */
  get stdout(): string {
    return this.#stdout.text;
  }

  /** Everything the service logged on stderr so far. */
  get log(): string {
    return this.#stderr.text;
  }

  /** Waits until the log matches `pattern` (log lines are written just after the reply is sent). */
  async waitForLog(pattern: RegExp, timeoutMs = 5_000): Promise<RegExpMatchArray> {
    const until = Date.now() + timeoutMs;
    while (true) {
      const m = pattern.exec(this.log);
      if (m) return m;
      if (Date.now() > until) {
        throw new assert.AssertionError({ message: `log never matched ${pattern}:\n${this.log}` });
      }
      await delay(20);
    }
  }

  /** An HTTPS request to this service, trusting its CA unless `options.ca` says otherwise. */
  request(path: string, options: HttpsRequestOptions = {}): Promise<HttpsReply> {
    return httpsRequest(this.url + path, { ca: this.caPem, ...options });
  }

  /** Sends SIGTERM and waits for the exit (SIGKILL after 10 s); safe to call twice. */
  stop(): Promise<Deno.CommandStatus> {
    this.#stopped ??= stopChild(this.#child, [this.#stdout, this.#stderr]);
    return this.#stopped;
  }
}

async function stopChild(child: Deno.ChildProcess, sinks: TextSink[]): Promise<Deno.CommandStatus> {
  try {
    child.kill("SIGTERM");
  } catch { /* it has exited already */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS);
  });
  let status = await Promise.race([child.status, timedOut]);
  clearTimeout(timer);
  if (status === null) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone in the meantime */ }
    status = await child.status;
  }
  await Promise.all(sinks.map((s) => s.done));
  return status;
}

/** `command args`, or, with `files`, the same run by sh under `ulimit -n files`. */
export function underUlimit(
  files: number | undefined,
  command: string,
  args: string[],
): [string, string[]] {
  if (files === undefined) return [command, args];
  return ["sh", ["-c", `ulimit -n ${files} && exec "$0" "$@"`, command, ...args]];
}

/** Creates an EC P-256 CA in `home` with `ca init` (fast, unlike the default RSA-4096). */
export async function initCa(home: string): Promise<void> {
  assertSuccess(await runCa(home, ["init", "--key-type", "ec-p256"]), "ca init");
}

/**
 * Starts `ca/main.ts serve --port 0` on `home` as a process with the `ca`
 * task's permissions and waits for it to print its URL and fingerprint. The
 * caller must {@linkcode Service.stop} it; if startup fails it is killed here.
 */
export async function startService(home: string, options: StartOptions = {}): Promise<Service> {
  const [command, args] = underUlimit(options.ulimitFiles, Deno.execPath(), [
    "run",
    "--quiet",
    ...await taskFlags("ca"),
    join(ROOT, "ca/main.ts"),
    "serve",
    "--port",
    "0",
    ...options.args ?? [],
  ]);
  const child = new Deno.Command(command, {
    args,
    cwd: ROOT,
    clearEnv: true,
    env: baseEnv({ E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const sinks = { stdout: new TextSink(child.stdout), stderr: new TextSink(child.stderr) };
  try {
    const until = Date.now() + START_TIMEOUT_MS;
    let exited = false;
    child.status.then(() => exited = true);
    while (!(SERVICE_LINE.test(sinks.stdout.text) && FINGERPRINT_LINE.test(sinks.stdout.text))) {
      if (exited || Date.now() > until) {
        await Promise.all([sinks.stdout.done, sinks.stderr.done].map((p) => timeout(p, 1_000)));
        throw new assert.AssertionError({
          message:
            `the service did not start\nstdout: ${sinks.stdout.text}\nstderr: ${sinks.stderr.text}`,
        });
      }
      await delay(20);
    }
    const [, url, port] = SERVICE_LINE.exec(sinks.stdout.text)!;
    const [, fingerprint] = FINGERPRINT_LINE.exec(sinks.stdout.text)!;
    const caPem = await Deno.readTextFile(join(home, "ca", "ca.crt"));
    return new Service(home, child, sinks, { url, port: Number(port), fingerprint, caPem });
  } catch (e) {
    await stopChild(child, [sinks.stdout, sinks.stderr]);
    throw e;
  }
}

/**
 * Runs `fn` with a fresh temporary folder holding a new CA (in `dir/ca-home`)
 * and its service running; stops the service and removes the folder afterwards.
 * `dir` is the test's scratch space (client homes, CSR files).
 */
export async function withService<T>(
  fn: (service: Service, dir: string) => Promise<T>,
  options: StartOptions = {},
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-service-test-" });
  let service: Service | undefined;
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, options);
    return await fn(service, dir);
  } finally {
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Runs `ca invite NAME ...args` against `home` and returns the invite line (without its newline). */
export async function makeInvite(home: string, name: string, ...args: string[]): Promise<string> {
  const result = await runCa(home, ["invite", name, ...args]);
  assertSuccess(result, `ca invite ${name}`);
  return result.stdout.trimEnd();
}

/** The token of an invite line. */
export function inviteToken(invite: string): string {
  const token = new URL(invite.replace(/^e2e-chat:/, "https:")).searchParams.get("token");
  assert.ok(token, `no token in ${invite}`);
  return token;
}

/** Runs `client/main.ts ...args` with the `client` task's permissions and E2E_CHAT_HOME=`home`. */
export async function runClient(home: string, args: string[]): Promise<RunResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...await taskFlags("client"), join(ROOT, "client/main.ts"), ...args],
    cwd: ROOT,
    clearEnv: true,
    env: baseEnv({ E2E_CHAT_HOME: home }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS),
  }).spawn();
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** A user enrolled over HTTP: its key and certificate, PEM, for mutual TLS. */
export interface EnrolledUser {
  /** The user name. */
  name: string;
  /** Private key, PEM. */
  key: string;
  /** Certificate, PEM. */
  cert: string;
  /** The JSON reply of POST /v1/enroll. */
  reply: Record<string, string>;
}

/** Invites `name` with the CLI and enrolls an EC P-256 key for it with POST /v1/enroll. */
export async function enrollUser(service: Service, name: string): Promise<EnrolledUser> {
  const [invite, { csr, key }] = await Promise.all([makeInvite(service.home, name), makeCsr(name)]);
  const reply = await service.request("/v1/enroll", {
    method: "POST",
    json: { token: inviteToken(invite), csr },
  });
  assert.equal(reply.status, 200, `enroll ${name}: ${reply.body}`);
  const json = reply.json() as Record<string, string>;
  return { name, key, cert: json.certificate, reply: json };
}

/** Options of {@linkcode httpsRequest}. */
export interface HttpsRequestOptions {
  /** HTTP method. Default: "GET". */
  method?: string;
  /** Request headers. Default: none beyond those the body implies. */
  headers?: Record<string, string>;
  /** A value sent as a JSON body with `content-type: application/json`. Default: no body. */
  json?: unknown;
  /**
   * A raw body sent as is (no content-type unless given in `headers`; chunked
   * when `headers` has transfer-encoding, else with a content-length). Default: no body.
   */
  body?: string | Uint8Array;
  /** CA certificates (PEM) trusted for the server. Default: none (the system's). */
  ca?: string;
  /** Client certificate, PEM. Default: none. */
  cert?: string;
  /** Client key, PEM. Default: none. */
  key?: string;
  /** Refuse a server the `ca` does not vouch for (name included). Default: true. */
  rejectUnauthorized?: boolean;
  /** Milliseconds before the request is abandoned. Default: 15000. */
  timeoutMs?: number;
}

/** What an HTTPS request got back. */
export interface HttpsReply {
  /** HTTP status. */
  status: number;
  /** Response headers (lower-case names). */
  headers: Record<string, string | string[] | undefined>;
  /** The body, as text. */
  body: string;
  /** The TLS version negotiated, e.g. "TLSv1.3". */
  protocol: string | null;
  /** The server's certificate, DER. */
  serverCertificate: Uint8Array | null;
  /** The body parsed as JSON (throws when it is not JSON). */
  json(): unknown;
}

/** One HTTPS request with node:https — a new connection each time, like curl. */
export function httpsRequest(url: string, options: HttpsRequestOptions = {}): Promise<HttpsReply> {
  const target = new URL(url);
  const headers: Record<string, string> = { ...options.headers };
  let body: Uint8Array | undefined;
  if (options.json !== undefined) {
    body = new TextEncoder().encode(JSON.stringify(options.json));
    headers["content-type"] ??= "application/json";
  } else if (options.body !== undefined) {
    body = typeof options.body === "string" ? new TextEncoder().encode(options.body) : options.body;
  }
  const chunked = Object.keys(headers).some((h) => h.toLowerCase() === "transfer-encoding");
  if (body && !chunked) headers["content-length"] ??= String(body.length);
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: target.hostname,
      port: Number(target.port),
      path: target.pathname + target.search,
      method: options.method ?? "GET",
      headers,
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      rejectUnauthorized: options.rejectUnauthorized ?? true,
      agent: false,
      timeout: options.timeoutMs ?? 15_000,
    }, (res) => {
      const socket = res.socket as TLSSocket;
      const protocol = socket.getProtocol?.() ?? null;
      const peer = socket.getPeerCertificate?.(false);
      const serverCertificate = peer && "raw" in peer && peer.raw ? new Uint8Array(peer.raw) : null;
      const chunks: Uint8Array[] = [];
      res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        const text = new TextDecoder().decode(concat(chunks));
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: text,
          protocol,
          serverCertificate,
          json: () => JSON.parse(text),
        });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`${url} did not answer in time`)));
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * Asserts a refusal as docs/API.md states it: `status`, a JSON content type and
 * exactly `{"error":{"code","message"}}` with that code (and that message, or one
 * matching it, when given).
 */
export function assertApiError(
  reply: HttpsReply,
  status: number,
  code: string,
  message?: string | RegExp,
): void {
  const context = `${reply.status} ${reply.body}`;
  assert.equal(reply.status, status, context);
  assert.match(String(reply.headers["content-type"]), /^application\/json\b/, context);
  const body = reply.json() as { error?: { code?: unknown; message?: unknown } };
  assert.deepEqual(Object.keys(body), ["error"], context);
  assert.deepEqual(Object.keys(body.error ?? {}).sort(), ["code", "message"], context);
  assert.equal(body.error?.code, code, context);
  assert.equal(typeof body.error?.message, "string", context);
  assert.ok((body.error?.message as string).length > 0, context);
  if (typeof message === "string") assert.equal(body.error?.message, message, context);
  if (message instanceof RegExp) assert.match(body.error?.message as string, message, context);
}

/** Asserts a CLI run exited 0, showing its output when not. */
export function assertSuccess(result: RunResult, what: string): void {
  assert.equal(
    result.code,
    0,
    `${what}: exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`,
  );
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `promise`, or undefined when it takes longer than `ms`. */
export async function timeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<undefined>((resolve) => timer = setTimeout(() => resolve(undefined), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.length;
  }
  return all;
}
