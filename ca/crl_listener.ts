/**
 * The CRL over plain HTTP, for tools that follow a certificate's CRL
 * distribution point (`openssl verify -crl_download`, browsers, curl): they
 * fetch it with plain HTTP and read DER. A CRL is signed by the CA, so
 * carrying it without TLS is safe (RFC 5280 §4.2.1.13); the worst a network
 * attacker can do is replay an older CRL, which expires at its `nextUpdate`
 * (7 days at most).
 *
 * It answers `GET /crl.der` (DER, `application/pkix-crl`) and `GET /crl.pem`
 * and nothing else, one request per connection. Caps and deadlines: at most
 * the share of the process's descriptor budget it is given (see
 * {@linkcode crlConnections}: at most {@linkcode CRL_MAX_CONNECTIONS}),
 * {@linkcode CRL_MAX_PER_ADDRESS} from one address, and each connection is
 * closed {@linkcode CRL_CONNECTION_MS} after it was accepted, whatever it
 * sends. At its cap it keeps its port and closes what comes at once
 * (lib/connections.ts).
 *
 * @module
 */
import http from "node:http";
import type { Socket } from "node:net";
import {
  deadline,
  guardConnections,
  type ListenerGroup,
  listenerShare,
} from "../lib/connections.ts";
import { E2eError } from "../lib/errors.ts";
import { pemDecode } from "../lib/pem.ts";
import type { ReplyBudget } from "../lib/reply_budget.ts";
import { type ApiContext, handle } from "./api.ts";
import { CRL_URL_PATH } from "./policy.ts";

/** Connections the CRL listener holds at once, at most (it may get fewer: {@linkcode crlConnections}). */
export const CRL_MAX_CONNECTIONS = 64;
/** Connections it holds at once from one address. */
export const CRL_MAX_PER_ADDRESS = 8;
/** From accept to the end of the reply, in ms: the whole exchange. */
export const CRL_CONNECTION_MS = 10_000;

/**
 * The CRL listener's share of `budget`, the connections the whole service may hold (one budget
 * for the process's descriptors, lib/connections.ts `connectionBudget`): a quarter of it,
 * between `MIN_CONNECTIONS` (8) and {@linkcode CRL_MAX_CONNECTIONS}. The HTTPS API gets the rest.
 *
 * @example
 * ```ts
 * import { crlConnections } from "./crl_listener.ts";
 * console.log(crlConnections(57)); // 14
 * ```
 */
export function crlConnections(budget: number): number {
  return listenerShare(budget, CRL_MAX_CONNECTIONS);
}

/** Options of {@linkcode startCrlListener}. */
export interface CrlListenerOptions {
  /** The service's budget for unread replies, which the CRL's replies count against. Default: none. */
  replies?: ReplyBudget;
  /** Connections it holds at once. Default: {@linkcode CRL_MAX_CONNECTIONS}. */
  maxConnections?: number;
  /** The other listeners of the process (lib/connections.ts). Default: none. */
  group?: ListenerGroup;
}

/** A running CRL listener. */
export interface CrlListener {
  /** Its port. */
  port: number;
  /** Stops it and closes every connection. */
  close(): Promise<void>;
}

/**
 * Starts the CRL listener on host:port (0 picks a port). The CRL comes from
 * the API's `GET /v1/crl`, which signs it again when an hour old.
 *
 * @example
 * ```ts
 * import { startCrlListener } from "./crl_listener.ts";
 * // const crl = await startCrlListener(ctx, "127.0.0.1", 65434, (line) => console.error(line));
 * ```
 */
export async function startCrlListener(
  ctx: ApiContext,
  host: string,
  port: number,
  log: (line: string) => void,
  options: CrlListenerOptions = {},
): Promise<CrlListener> {
  const replies = options.replies;
  const stopping = new AbortController();
  const sockets = new Set<Socket>();
  // One request per connection: the reply says "connection: close", but the server would still
  // answer, and hold in memory, every request sent after it at once.
  const answered = new WeakSet<Socket>();
  const server = http.createServer((req, res) => {
    if (answered.has(req.socket) || req.socket.destroyed) return void req.socket.destroy();
    answered.add(req.socket);
    serveCrl(ctx, stopping.signal, req, res, log, replies).catch(() => res.destroy());
  });
  const guard = guardConnections(server, {
    maxConnections: options.maxConnections ?? CRL_MAX_CONNECTIONS,
    maxPerAddress: CRL_MAX_PER_ADDRESS,
    handshakeMs: 0,
    onRefused: (message) => log(`e2e-chat-ca: CRL listener: ${message}`),
    group: options.group,
  });
  server.on("connection", (socket: Socket) => {
    deadline(socket, CRL_CONNECTION_MS);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await guard.listen(port, host).catch((e) => {
    guard.stop();
    throw new E2eError("ERR_NETWORK", `Cannot listen on ${host}:${port} for the CRL`, {
      cause: e,
      hint: listenHint(e, "--crl-port"),
    });
  });
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      stopping.abort();
      guard.stop();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

async function serveCrl(
  ctx: ApiContext,
  stopping: AbortSignal,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  log: (line: string) => void,
  replies?: ReplyBudget,
): Promise<void> {
  const remoteAddress = (req.socket.remoteAddress ?? "").replace(/^::ffff:/, "");
  const path = (req.url ?? "/").split("?")[0];
  let status: number;
  let type = "text/plain; charset=utf-8";
  let body: Uint8Array | string;
  if (path !== CRL_URL_PATH && path !== "/crl.pem") {
    [status, body] = [404, "Not found: this port serves only /crl.der and /crl.pem\n"];
  } else if (req.method !== "GET" && req.method !== "HEAD") {
    [status, body] = [405, "Method not allowed: use GET\n"];
  } else {
    try {
      const reply = await handle(ctx, {
        method: "GET",
        path: "/v1/crl",
        query: new URLSearchParams(),
        remoteAddress,
        peerDer: null,
        wantsJson: false,
        json: () => Promise.reject(new E2eError("ERR_BAD_REQUEST", "No body here")),
        signal: stopping,
      });
      status = 200;
      if (path === "/crl.pem") {
        [type, body] = ["application/x-pem-file", reply.body];
      } else {
        const der = pemDecode(reply.body, "X509 CRL");
        if (!der) throw new E2eError("ERR_INTERNAL", "The CRL is not PEM");
        [type, body] = ["application/pkix-crl", der];
      }
    } catch (e) {
      [status, body] = [500, "Internal error\n"];
      log(`e2e-chat-ca: internal error: ${e instanceof Error ? e.stack : e}`);
    }
  }
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const sent = req.method === "HEAD" ? 0 : bytes.length;
  // Counted until the client has taken it; nothing goes out on a connection closed instead.
  if (!replies || replies.admit(req.socket, res, sent)) {
    res.writeHead(status, {
      "content-type": type,
      "content-length": String(bytes.length),
      "cache-control": status === 200 ? "max-age=300" : "no-store",
      "x-content-type-options": "nosniff",
      "connection": "close",
    });
    res.end(req.method === "HEAD" ? undefined : bytes);
  }
  const shown = path === CRL_URL_PATH || path === "/crl.pem" ? path : "(other)";
  log(`e2e-chat-ca: ${remoteAddress} ${req.method} ${shown} ${status} (crl listener)`);
}

/**
 * The hint for a listener of `ca serve` that cannot start: its port is taken (`flag` 0 picks a
 * free one), or `--host` is not an address of this machine (a host name members use, say).
 *
 * @example
 * ```ts
 * import { listenHint } from "./crl_listener.ts";
 * listenHint(Object.assign(new Error("in use"), { code: "EADDRINUSE" }), "--port");
 * ```
 */
export function listenHint(e: unknown, flag: string): string {
  return (e as { code?: unknown })?.code === "EADDRINUSE"
    ? `is another service using that port? stop it, or pick a free port with ${flag} PORT ` +
      "and keep it at every start (members' invites and certificates name it)"
    : "--host takes an address of this machine (0.0.0.0 for all of them); " +
      "the name members reach it by goes in --name";
}
