/**
 * Helpers for end-to-end tests of the chat: users joined with real invites
 * through the real client, chat clients run as `client/main.ts chat --json`
 * processes with the `client` task's permissions and read as JSON events, and
 * raw mutual-TLS peers (node:tls) and `openssl s_client` to speak the wire
 * protocol by hand.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import tls from "node:tls";
import { openssl } from "../lib/openssl.ts";
import { ROOT, runCa } from "./_helpers.ts";
import {
  assertSuccess,
  makeInvite,
  runClient,
  type Service,
  underUlimit,
} from "./_service_helpers.ts";

/** How long a test waits for an event it expects. */
export const EVENT_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

const encoder = new TextEncoder();

/** One JSON event of `client chat --json` (docs/PROTOCOL.md §6). */
export type ChatEvent = Record<string, unknown> & { type: string };

/** A predicate on events, or the fields an event must have. */
export type EventMatch = ((e: ChatEvent) => boolean) | Record<string, unknown>;

function matcher(match: EventMatch): (e: ChatEvent) => boolean {
  if (typeof match === "function") return match;
  return (e) => Object.entries(match).every(([k, v]) => e[k] === v);
}

/** The `deno run` flags of the `client` task in deno.json. */
export async function clientTaskFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  const words = String(config.tasks.client).trim().split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "run"]);
  assert.equal(words.at(-1), "client/main.ts");
  return words.slice(2, -1);
}

/** The files of a joined user. */
export interface User {
  /** The user name. */
  name: string;
  /** The user's home (`--home`). */
  home: string;
  /** HOME/id/cert.pem */
  certPath: string;
  /** HOME/id/key.pem */
  keyPath: string;
  /** HOME/id/ca.crt */
  caPath: string;
}

/** The user whose home is `home`. */
export function userAt(name: string, home: string): User {
  const id = join(home, "id");
  return {
    name,
    home,
    certPath: join(id, "cert.pem"),
    keyPath: join(id, "key.pem"),
    caPath: join(id, "ca.crt"),
  };
}

/** Invites `name` with `ca invite` and joins into `home` with `client join`, as a user would. */
export async function joinUser(service: Service, name: string, home: string): Promise<User> {
  const invite = await makeInvite(service.home, name);
  assertSuccess(await runClient(home, ["join", invite]), `client join (${name})`);
  return userAt(name, home);
}

/** What `client whoami --json` says. */
export interface Whoami {
  name: string;
  fingerprint: string;
  keyFingerprint: string;
  serial: string;
}

/** Runs `client whoami --json` for `user`. */
export async function whoami(user: User): Promise<Whoami> {
  const result = await runClient(user.home, ["whoami", "--json"]);
  assertSuccess(result, `client whoami (${user.name})`);
  return JSON.parse(result.stdout) as Whoami;
}

/** Runs `ca revoke NAME|SERIAL` on the service's home. */
export async function revoke(service: Service, nameOrSerial: string): Promise<void> {
  assertSuccess(await runCa(service.home, ["revoke", nameOrSerial]), `ca revoke ${nameOrSerial}`);
}

/** `promise`, or `fallback` after `ms`; the timer never outlives the race. */
export async function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<F>((resolve) => timer = setTimeout(() => resolve(fallback), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Calls `check` every 20 ms until it returns true; throws after `ms`. */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  what: string,
  ms = EVENT_TIMEOUT_MS,
): Promise<void> {
  const until = Date.now() + ms;
  while (!await check()) {
    if (Date.now() > until) throw new assert.AssertionError({ message: `timed out: ${what}` });
    await sleep(20);
  }
}

/** Options of {@linkcode ChatClient.start}. */
export interface ChatStartOptions {
  /** More arguments after `chat --json --home H`. Default: none. */
  args?: string[];
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
}

/**
 * `client/main.ts chat --json --home H` as its own process: lines go to its
 * stdin, and every JSON line of its stdout is kept as an event.
 */
export class ChatClient {
  /** The user it runs as. */
  readonly user: User;
  /** Every event so far, in order. */
  readonly events: ChatEvent[] = [];
  /** Lines of stdout that were not JSON (there should be none). */
  readonly junk: string[] = [];
  /** The `ready` event. */
  ready!: ChatEvent;
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #claimed = new Set<ChatEvent>();
  #wake: Array<() => void> = [];
  #stderr = "";
  #ended = false;
  #readers: Promise<void>;
  #status: Promise<Deno.CommandStatus>;

  private constructor(user: User, child: Deno.ChildProcess) {
    this.user = user;
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#status = child.status;
    this.#readers = Promise.all([this.#readStdout(), this.#readStderr()]).then(() => {});
  }

  /** Starts the chat client of `user` and waits for its `ready` event. */
  static async start(user: User, options: ChatStartOptions = {}): Promise<ChatClient> {
    const [command, args] = underUlimit(options.ulimitFiles, Deno.execPath(), [
      "run",
      "--quiet",
      ...await clientTaskFlags(),
      join(ROOT, "client/main.ts"),
      "chat",
      "--json",
      "--home",
      user.home,
      ...options.args ?? [],
    ]);
    const child = new Deno.Command(command, {
      args,
      cwd: ROOT,
      clearEnv: true,
      env: {
        PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
        HOME: Deno.env.get("HOME") ?? "/root",
        INIT_CWD: ROOT,
        NO_COLOR: "1",
        ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
      },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const client = new ChatClient(user, child);
    try {
      client.ready = await client.expect({ type: "ready" });
    } catch (e) {
      await client.stop();
      throw e;
    }
    return client;
  }

  /** The user name. */
  get name(): string {
    return this.user.name;
  }

  /** The listening port from `ready`. */
  get port(): number {
    return Number(String(this.ready.listen).split(":").at(-1));
  }

  /** What the process wrote on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Its exit status, when it exits. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /** Writes one line to its stdin. */
  async send(line: string): Promise<void> {
    await this.#stdin.write(encoder.encode(line + "\n"));
  }

  /** The index the next event will have: pass it to {@linkcode since}. */
  mark(): number {
    return this.events.length;
  }

  /** The events from index `mark` on that match. */
  since(mark: number, match: EventMatch = () => true): ChatEvent[] {
    return this.events.slice(mark).filter(matcher(match));
  }

  /**
   * Waits for the first event that matches and was not returned before, and
   * returns it; fails with everything seen after `ms`.
   */
  async expect(match: EventMatch, ms = EVENT_TIMEOUT_MS): Promise<ChatEvent> {
    const test = matcher(match);
    const until = Date.now() + ms;
    while (true) {
      const found = this.events.find((e) => !this.#claimed.has(e) && test(e));
      if (found) {
        this.#claimed.add(found);
        return found;
      }
      const left = until - Date.now();
      if (left <= 0 || this.#ended) {
        throw new assert.AssertionError({
          message: `${this.name} did not see ${
            typeof match === "function" ? match.toString() : JSON.stringify(match)
          }${this.#ended ? " (its output ended)" : ""}\n${this.describe()}`,
        });
      }
      await within(new Promise<void>((resolve) => this.#wake.push(resolve)), left, undefined);
    }
  }

  /** Asserts that no event from `mark` on matches, after waiting `ms` for one. */
  async expectNone(mark: number, match: EventMatch, ms = 500): Promise<void> {
    await sleep(ms);
    const found = this.since(mark, match);
    assert.deepEqual(found, [], `${this.name} showed what it should not\n${this.describe()}`);
  }

  /** Events and stderr, for failure messages. */
  describe(): string {
    return `events of ${this.name}:\n${
      this.events.map((e) => "  " + JSON.stringify(e).slice(0, 400)).join("\n")
    }\nstderr of ${this.name}:\n${this.#stderr}`;
  }

  /** Sends a signal (SIGKILL to simulate a crash) and waits for the exit. */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    try {
      this.#child.kill(signal);
    } catch { /* already gone */ }
    return await this.#status;
  }

  /** Says /quit, waits for the exit (SIGKILL after 5 s) and its output; safe to call twice. */
  async stop(): Promise<void> {
    await within(this.send("/quit").catch(() => {}), 1_000, undefined);
    await this.#stdin.close().catch(() => {});
    const status = await within(this.#status, STOP_TIMEOUT_MS, null);
    if (!status) await this.kill("SIGKILL");
    await within(this.#readers, STOP_TIMEOUT_MS, undefined);
  }

  async #readStdout(): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    const take = (line: string) => {
      if (!line) return;
      try {
        const event = JSON.parse(line);
        if (event && typeof event.type === "string") this.events.push(event as ChatEvent);
        else this.junk.push(line);
      } catch {
        this.junk.push(line);
      }
    };
    try {
      for await (const chunk of this.#child.stdout) {
        pending += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          take(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
        this.#notify();
      }
      take(pending + decoder.decode());
    } catch { /* killed */ }
    this.#ended = true;
    this.#notify();
  }

  async #readStderr(): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of this.#child.stderr) {
        this.#stderr += decoder.decode(chunk, { stream: true });
      }
    } catch { /* killed */ }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const w of wake) w();
  }
}

/** Stops every client, whatever state it is in. */
export async function stopAll(clients: Array<ChatClient | undefined>): Promise<void> {
  await Promise.all(clients.map((c) => c?.stop()));
}

/**
 * The original's flow between two running clients: `from` says `/chat TO`, `to`
 * sees the invitation and says `/accept FROM`; resolves with both `connected`
 * events once each side has one.
 */
export async function connect(
  from: ChatClient,
  to: ChatClient,
): Promise<{ atFrom: ChatEvent; atTo: ChatEvent }> {
  await from.send(`/chat ${to.name}`);
  await from.expect({ type: "invited", to: to.name });
  await to.expect({ type: "invite", from: from.name });
  await to.send(`/accept ${from.name}`);
  const atTo = await to.expect({ type: "connected", peer: from.name });
  const atFrom = await from.expect({ type: "connected", peer: to.name });
  return { atFrom, atTo };
}

/** Options of {@linkcode RawPeer.connect}. */
export interface RawPeerOptions {
  /** Client certificate, PEM. Default: none. */
  cert?: string;
  /** Client key, PEM. Default: none. */
  key?: string;
  /** ALPN protocols offered. Default: ["e2e-chat/1"]; [] offers none. */
  alpn?: string[];
  /** Highest TLS version. Default: TLSv1.3. */
  maxVersion?: tls.SecureVersion;
}

/**
 * A peer that speaks the wire protocol by hand over node:tls: what it writes
 * is sent as is, and every line it receives is kept. It does not check the
 * listener's certificate: these tests are about what the listener accepts.
 */
export class RawPeer {
  /** Every complete line received (binary payloads make lines that are not JSON). */
  readonly lines: string[] = [];
  /** Every byte received, in order. */
  readonly chunks: Uint8Array[] = [];
  /** Bytes received in all. */
  received = 0;
  /** Whether the TLS handshake completed from our side. */
  secure = false;
  /** The first socket error, if any. */
  error?: Error;
  /** Resolves when the socket closed. */
  readonly closed: Promise<void>;
  #socket: tls.TLSSocket;
  #pending = "";
  #wake: Array<() => void> = [];
  #isClosed = false;

  private constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    socket.on("secureConnect", () => this.secure = true);
    socket.on("data", (bytes: Uint8Array) => {
      this.received += bytes.length;
      this.chunks.push(new Uint8Array(bytes));
      this.#pending += new TextDecoder().decode(bytes);
      let nl: number;
      while ((nl = this.#pending.indexOf("\n")) >= 0) {
        this.lines.push(this.#pending.slice(0, nl));
        this.#pending = this.#pending.slice(nl + 1);
      }
      this.#notify();
    });
    socket.on("error", (e: Error) => this.error ??= e);
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        this.#isClosed = true;
        this.#notify();
        resolve();
      })
    );
  }

  /** Opens a connection to 127.0.0.1:`port` and starts reading. */
  static connect(port: number, options: RawPeerOptions = {}): RawPeer {
    const alpn = options.alpn ?? ["e2e-chat/1"];
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      ...(options.cert ? { cert: options.cert, key: options.key } : {}),
      ...(alpn.length ? { ALPNProtocols: alpn } : {}),
      maxVersion: options.maxVersion ?? "TLSv1.3",
      minVersion: "TLSv1.2",
      rejectUnauthorized: false,
    });
    return new RawPeer(socket);
  }

  /** Whether the socket closed. */
  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** The lines received that are JSON objects (a binary payload can make others). */
  get frames(): Array<Record<string, unknown>> {
    return this.lines.flatMap((l) => {
      try {
        const value = JSON.parse(l);
        return value && typeof value === "object" && !Array.isArray(value) ? [value] : [];
      } catch {
        return [];
      }
    });
  }

  /** Every byte received so far, as one array. */
  bytes(): Uint8Array {
    const all = new Uint8Array(this.received);
    let offset = 0;
    for (const c of this.chunks) {
      all.set(c, offset);
      offset += c.length;
    }
    return all;
  }

  /** Writes text (frames with their `\n`, or anything else) as is. */
  write(text: string | Uint8Array): void {
    if (!this.#socket.destroyed) this.#socket.write(text);
  }

  /** Waits for a received frame with these fields; returns it. */
  async expectFrame(
    fields: Record<string, unknown>,
    ms = EVENT_TIMEOUT_MS,
  ): Promise<Record<string, unknown>> {
    const until = Date.now() + ms;
    while (true) {
      const found = this.frames.find((f) => Object.entries(fields).every(([k, v]) => f[k] === v));
      if (found) return found;
      const left = until - Date.now();
      if (left <= 0 || this.#isClosed) {
        throw new assert.AssertionError({
          message: `no frame ${JSON.stringify(fields)}; got ${JSON.stringify(this.lines)}${
            this.#isClosed ? " and the connection closed" : ""
          } (error: ${this.error?.message})`,
        });
      }
      await within(new Promise<void>((resolve) => this.#wake.push(resolve)), left, undefined);
    }
  }

  /** Waits until the connection is closed; fails after `ms`. */
  async expectClosed(ms = EVENT_TIMEOUT_MS): Promise<void> {
    const closed = await within(this.closed.then(() => true), ms, false);
    assert.ok(closed, `the connection stayed open; got ${JSON.stringify(this.lines)}`);
  }

  /** Closes our side at once. */
  destroy(): void {
    this.#socket.destroy();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const w of wake) w();
  }
}

/** What `openssl s_client` printed and how it ended. */
export interface SClientResult {
  /** Standard output (the peer's lines, with -quiet). */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** Exit code (null when it had to be killed). */
  code: number | null;
}

/** Options of {@linkcode sClient}. */
export interface SClientOptions {
  /** Client certificate file. Default: none. */
  cert?: string;
  /** Client key file. Default: none. */
  key?: string;
  /** CA file to check the listener with. Default: none. */
  caFile?: string;
  /** Lines written to stdin, each after `gapMs`; a function is awaited in its place. Default: none. */
  lines?: Array<string | (() => Promise<void>)>;
  /** Milliseconds between lines, and before stdin is closed. Default: 300. */
  gapMs?: number;
  /** Milliseconds before it is killed. Default: 10000. */
  timeoutMs?: number;
}

/**
 * Runs `openssl s_client -connect 127.0.0.1:PORT -alpn e2e-chat/1 -tls1_3 -quiet`
 * (as docs/PROTOCOL.md §2 shows), writes `lines` to its stdin one by one,
 * closes stdin, and waits for it to exit (killing it after `timeoutMs`).
 */
export async function sClient(port: number, options: SClientOptions = {}): Promise<SClientResult> {
  const args = ["s_client", "-connect", `127.0.0.1:${port}`, "-alpn", "e2e-chat/1", "-tls1_3"];
  if (options.cert) args.push("-cert", options.cert, "-key", options.key ?? options.cert);
  if (options.caFile) args.push("-CAfile", options.caFile);
  args.push("-quiet");
  const child = new Deno.Command("openssl", {
    args,
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", SSL_CERT_FILE: "/dev/null" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  const gap = options.gapMs ?? 300;
  const writer = child.stdin.getWriter();
  for (const line of options.lines ?? []) {
    await sleep(gap);
    if (typeof line === "function") await line();
    else await writer.write(encoder.encode(line + "\n")).catch(() => {});
  }
  await sleep(gap);
  await writer.close().catch(() => {});
  const out = await within(output, options.timeoutMs ?? 10_000, null);
  if (!out) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    const killed = await output;
    const decoder = new TextDecoder();
    return {
      stdout: decoder.decode(killed.stdout),
      stderr: decoder.decode(killed.stderr),
      code: null,
    };
  }
  const decoder = new TextDecoder();
  return { stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr), code: out.code };
}

/** A self-signed certificate for `name` (CN and SAN, like ours) over the key in `keyPath`. */
export async function selfSigned(name: string, keyPath: string): Promise<string> {
  const { stdout } = await openssl([
    "req",
    "-new",
    "-x509",
    "-key",
    keyPath,
    "-config",
    "/dev/null",
    "-subj",
    `/CN=${name}`,
    "-addext",
    `subjectAltName=DNS:${name}`,
    "-addext",
    "extendedKeyUsage=clientAuth,serverAuth",
    "-days",
    "1",
  ], { timeoutMs: 10_000 });
  return new TextDecoder().decode(stdout);
}
