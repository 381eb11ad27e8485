/**
 * Chat fixtures on tests/_harness.ts (whose ChatClient drives `client chat
 * --json`): users joined with real invites through the real client, and raw
 * mutual-TLS peers (node:tls) and `openssl s_client` to speak the wire
 * protocol by hand.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import tls from "node:tls";
import { openssl } from "../lib/openssl.ts";
import { concurrentSteps, EVENT_TIMEOUT_MS, sleep, Wakeup, within } from "./_harness.ts";
import { runCa } from "./_helpers.ts";
import {
  assertSuccess,
  initCa,
  makeInvite,
  runClient,
  type Service,
  startService,
} from "./_service_helpers.ts";

const encoder = new TextEncoder();

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
  const result = await runClient(home, ["join", invite]);
  // A 500 says only "Internal error" to the client: its stack is in the service's log.
  const internal = result.code === 0 ? "" : internalErrors(service.log);
  assertSuccess(
    result,
    `client join (${name})${
      internal
        ? `
${internal}`
        : ""
    }`,
  );
  return userAt(name, home);
}

// The service's "internal error" lines with the stack that follows each (the last three).
function internalErrors(log: string): string {
  const parts = log.split(/(?=e2e-chat-ca: internal error)/).filter((p) =>
    p.startsWith("e2e-chat-ca: internal error")
  );
  return parts.slice(-3).map((p) => p.split("\ne2e-chat-ca: ")[0]).join("\n");
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
  #wake = new Wakeup();
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
      this.#wake.notify();
    });
    socket.on("error", (e: Error) => this.error ??= e);
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        this.#isClosed = true;
        this.#wake.notify();
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
      await this.#wake.wait(left);
    }
  }

  /** Waits until the connection is closed; fails after `ms`. */
  async expectClosed(ms = EVENT_TIMEOUT_MS): Promise<void> {
    const closed = await within(this.closed.then(() => true), ms, false);
    assert.ok(closed, `the connection stayed open; got ${JSON.stringify(this.lines)}`);
  }

  /** Stops reading (the other side's writes pile up until it gives up), or starts again. */
  pause(paused = true): void {
    if (paused) this.#socket.pause();
    else this.#socket.resume();
  }

  /** Closes our side at once. */
  destroy(): void {
    this.#socket.destroy();
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

/**
 * Runs `scenarios` at once as steps of `t` against one real CA service (a fresh
 * EC P-256 CA in a temporary folder): each gets a scene made by `scene` in its
 * own folder, closed after it, even when another fails.
 */
export async function runScenarios<S extends { close(): Promise<void> }>(
  t: Deno.TestContext,
  scenarios: ReadonlyArray<readonly [string, (scene: S) => Promise<void>]>,
  scene: (service: Service, dir: string) => S,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-scenarios-" });
  let service: Service | undefined;
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--enroll-rate", "1000"] });
    const running = service;
    await concurrentSteps(
      t,
      scenarios.map(([name, fn], i) => [
        name,
        async () => {
          const sceneDir = join(dir, `scene-${i}`);
          await Deno.mkdir(sceneDir);
          const s = scene(running, sceneDir);
          try {
            await fn(s);
          } finally {
            await s.close();
          }
        },
      ]),
    );
  } finally {
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
