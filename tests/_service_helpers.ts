/**
 * The CA service fixture, on tests/_harness.ts: the real service
 * (`ca/main.ts serve`) started as the `ca` task, invites, users enrolled over
 * HTTP, the client CLI, and HTTPS requests made with node:https (mutual TLS,
 * raw bodies) with the API's error contract.
 *
 * @module
 */
import assert from "node:assert/strict";
import https from "node:https";
import type { TLSSocket } from "node:tls";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { type RunResult, runTask, TaskProcess } from "./_harness.ts";
import { makeCsr, PASSPHRASE, runCa } from "./_helpers.ts";
import { readIndex } from "../ca/store.ts";
import { CaPaths } from "../ca/home.ts";
import { leafExtensions } from "../ca/policy.ts";
import { openssl, PASSPHRASE_ARG } from "../lib/openssl.ts";
import { X509Certificate } from "node:crypto";

const CLIENT_TIMEOUT_MS = 60_000;

const SERVICE_LINE = /^e2e-chat CA service listening on (https:\/\/127\.0\.0\.1:(\d+))$/m;
const FINGERPRINT_LINE = /^CA fingerprint \(SHA-256\): ([0-9a-f]{64})$/m;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/** Options of {@linkcode startService}. */
export interface StartOptions {
  /** Arguments after `serve --port 0`, e.g. `["--rendezvous-ttl", "2s"]`. Default: none. */
  args?: string[];
  /** Variables added to the child environment (e.g. a PATH with a wrapper openssl). Default: none. */
  env?: Record<string, string>;
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
}

/** A CA service (`ca serve --port 0`) running as its own process. */
export class Service {
  /** The process, to kill with any signal. */
  readonly proc: TaskProcess;
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

  private constructor(
    proc: TaskProcess,
    home: string,
    started: { url: string; fingerprint: string; caPem: string },
  ) {
    this.proc = proc;
    this.home = home;
    this.url = started.url;
    this.port = Number(new URL(started.url).port);
    this.fingerprint = started.fingerprint;
    this.caPem = started.caPem;
  }

  /**
   * Starts `ca/main.ts serve --port 0 ...args` on `home` with `passphrase`, as
   * the `ca` task, and waits for it to print its URL and fingerprint. The
   * caller must {@linkcode Service.stop} it; if startup fails it is stopped here.
   */
  static async start(
    home: string,
    passphrase: string,
    options: StartOptions = {},
  ): Promise<Service> {
    const proc = await TaskProcess.start("ca", ["serve", "--port", "0", ...options.args ?? []], {
      env: { E2E_CHAT_HOME: home, E2E_CHAT_CA_PASSPHRASE: passphrase, ...options.env },
      ulimitFiles: options.ulimitFiles,
    });
    try {
      const [url, fingerprint] = await proc.waitFor(
        () => {
          const service = SERVICE_LINE.exec(proc.stdout);
          const fingerprint = FINGERPRINT_LINE.exec(proc.stdout);
          return service && fingerprint ? [service[1], fingerprint[1]] : undefined;
        },
        "the service did not start",
        START_TIMEOUT_MS,
      );
      const caPem = await Deno.readTextFile(join(home, "ca", "ca.crt"));
      return new Service(proc, home, { url, fingerprint, caPem });
    } catch (e) {
      await proc.stop(1_000);
      throw e;
    }
  }

  /** HOME/ca */
  get caDir(): string {
    return join(this.home, "ca");
  }

  /** Everything the service printed on stdout so far. */
  get stdout(): string {
    return this.proc.stdout;
  }

  /** Everything the service logged on stderr so far. */
  get log(): string {
    return this.proc.stderr;
  }

  /** Waits until the log matches `pattern` (log lines are written just after the reply is sent). */
  waitForLog(pattern: RegExp, timeoutMs = 5_000): Promise<RegExpMatchArray> {
    return this.proc.waitFor(
      () => pattern.exec(this.log) ?? undefined,
      `log never matched ${pattern}`,
      timeoutMs,
    );
  }

  /** An HTTPS request to this service, trusting its CA unless `options.ca` says otherwise. */
  request(path: string, options: HttpsRequestOptions = {}): Promise<HttpsReply> {
    return httpsRequest(this.url + path, { ca: this.caPem, ...options });
  }

  /** Sends SIGTERM and waits for the exit (SIGKILL after 10 s); safe to call twice. */
  stop(): Promise<Deno.CommandStatus> {
    return this.proc.stop(STOP_TIMEOUT_MS);
  }
}

/** Creates an EC P-256 CA in `home` with `ca init` (fast, unlike the default RSA-4096). */
export async function initCa(home: string): Promise<void> {
  assertSuccess(await runCa(home, ["init", "--key-type", "ec-p256"]), "ca init");
}

/** Starts the service of the CA in `home` with the test passphrase (see {@linkcode Service.start}). */
export function startService(home: string, options: StartOptions = {}): Promise<Service> {
  return Service.start(home, PASSPHRASE, options);
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
export function runClient(home: string, args: string[]): Promise<RunResult> {
  return runTask("client", args, { env: { E2E_CHAT_HOME: home }, timeoutMs: CLIENT_TIMEOUT_MS });
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
        const text = new TextDecoder().decode(Buffer.concat(chunks));
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
 * matching it, when given); a 403 `ERR_FORBIDDEN` or 401 `ERR_UNAUTHENTICATED` may carry
 * `standing` too.
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
  // `standing` only on a refusal of the caller's own certificate (docs/API.md "Errors"): revoked
  // or superseded (403), or expired (401).
  const standing = (status === 403 && code === "ERR_FORBIDDEN" ||
    status === 401 && code === "ERR_UNAUTHENTICATED") &&
    (body.error as { standing?: unknown } | undefined)?.standing !== undefined;
  assert.deepEqual(
    Object.keys(body.error ?? {}).sort(),
    standing ? ["code", "message", "standing"] : ["code", "message"],
    context,
  );
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

/** The serials the CA's index holds for `name` (any status). */
export async function serialsOf(service: Service, name: string): Promise<string[]> {
  return (await readIndex(new CaPaths(service.home))).filter((e) => e.name === name)
    .map((e) => e.serial);
}

/**
 * Whether the CA's index holds a valid certificate for `name` now: from then on a reply to its
 * enrollment is on its way (the commit's last step; a test's relay cuts or holds it).
 */
export function committedFor(service: Service, name: string): () => boolean {
  const index = new CaPaths(service.home).index;
  const holds = new RegExp(`^V\t.*\t/CN=${name}$`, "m");
  return () => {
    try {
      return holds.test(Deno.readTextFileSync(index));
    } catch {
      return false;
    }
  };
}

/**
 * A certificate for `name` signed by the service's CA key but valid only in
 * 2020: issued by `openssl ca` in a copy of HOME/ca at `copy`, so the live
 * database never hears of it. For `keyPem`'s key when given, else a new one.
 */
export async function expiredCertificate(
  service: Pick<Service, "caDir">,
  copy: string,
  name: string,
  keyPem?: string,
): Promise<{ cert: string; key: string }> {
  await Deno.mkdir(join(copy, "certs"), { recursive: true });
  for (
    const file of ["ca.key", "ca.crt", "openssl.cnf", "index.txt", "index.txt.attr", "crlnumber"]
  ) {
    await Deno.copyFile(join(service.caDir, file), join(copy, file));
  }
  const { csr, key } = await makeCsr(name, keyPem ? { keyPem } : {});
  await Deno.writeTextFile(join(copy, "request.csr"), csr);
  await Deno.writeTextFile(join(copy, "leaf.cnf"), leafExtensions(name, "ec"));
  await openssl([
    ...["ca", "-config", "openssl.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"],
    ...["-passin", PASSPHRASE_ARG, "-batch", "-notext", "-in", "request.csr", "-out", "cert.pem"],
    ...["-startdate", "20200101000000Z", "-enddate", "20200108000000Z"],
    ...["-extfile", "leaf.cnf", "-extensions", "leaf"],
  ], { cwd: copy, passphrase: PASSPHRASE, timeoutMs: 10_000 });
  const cert = await Deno.readTextFile(join(copy, "cert.pem"));
  assert.ok(new X509Certificate(cert).validToDate < new Date(), "the certificate is not expired");
  return { cert, key };
}
