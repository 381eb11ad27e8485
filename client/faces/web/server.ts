/**
 * The web face (`deno task client web`): an HTTP server on 127.0.0.1 that
 * serves one page (static/), carries core events out and typed operations in
 * over a WebSocket, and moves files between the page and the core (upload by
 * POST into a private temp folder, download of received files). The security
 * model, each defence and its test are in docs/WEB.md.
 *
 * Caps and deadlines (it is bound to loopback, so only local processes reach it —
 * but any local user's process can, so a flood must not take the client down):
 * - {@linkcode MAX_WEB_CONNECTIONS} connections at once (fewer when few file
 *   descriptors are free: a quarter of the chat's listener budget, at least 8,
 *   `Chat.listenerBudget`); at the cap it stops listening, so the kernel refuses
 *   what comes, and listens again below it (lib/connections.ts), and
 *   {@linkcode WEB_IDLE_MS} of inactivity at most
 *   (the heartbeat keeps a page's WebSocket busy). node:http, not Deno.serve:
 *   Deno.serve's accept loop throws an uncaught error when the process runs out
 *   of descriptors (denoland/deno#10148), which ended the whole client;
 * - {@linkcode MAX_IN_FLIGHT} requests at once (503 beyond), WebSockets excluded;
 * - {@linkcode MAX_SOCKETS} WebSockets at once (503 beyond);
 * - {@linkcode MAX_SESSIONS} sessions; the oldest is dropped beyond;
 * - an upload: at most {@linkcode MAX_UPLOAD_BYTES}, {@linkcode MAX_UPLOADS} at once,
 *   and {@linkcode UPLOAD_IDLE_MS} at most between two chunks of its body;
 * - a WebSocket message from the page: at most {@linkcode MAX_WS_MESSAGE_BYTES};
 * - the send queue of a WebSocket: at most {@linkcode MAX_WS_BUFFERED_BYTES}
 *   buffered, else it is closed (the page reconnects and gets a fresh snapshot);
 * - a heartbeat every {@linkcode HEARTBEAT_MS}, so the page notices a lost client.
 *
 * @module
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { Duplex } from "node:stream";
import { Readable } from "node:stream";
import type { Socket } from "node:net";
import { basename, join } from "node:path";
import { WebSocketServer } from "ws";
import {
  type ConnectionGuard,
  deadline,
  guardConnections,
  listenerShare,
} from "../../../lib/connections.ts";
import { E2eError } from "../../../lib/errors.ts";
import { checkName } from "../../../lib/names.ts";
import { printable } from "../../../lib/printable.ts";
import { checkRoomName, isRoomName } from "../../../lib/room.ts";
import type { Chat } from "../../chat.ts";
import type { ChatEvent, CoreEvent } from "../../events.ts";
import { safeFileName } from "../../files.ts";
import type { HistoryEntry } from "../../history.ts";
import type { KeyChange } from "../../key_changes.ts";
import { declinedText } from "../../rooms.ts";
import { ROOM_ACTIONS, type RoomAction } from "../commands.ts";

/** Connections open at once, at most (the page needs a few; a flood gets no more). */
export const MAX_WEB_CONNECTIONS = 64;
/** Inactivity allowed on a connection, in ms. */
export const WEB_IDLE_MS = 30_000;
/** From accept to the end of the first request's headers, in ms, however slowly they trickle. */
export const WEB_HEADERS_MS = 10_000;
/** Requests handled at once, WebSockets excluded. */
export const MAX_IN_FLIGHT = 64;
/** WebSockets open at once (tabs of the page). */
export const MAX_SOCKETS = 16;
/** Sessions kept; the oldest is forgotten beyond. */
export const MAX_SESSIONS = 32;
/** Largest upload. */
export const MAX_UPLOAD_BYTES = 4 * 1024 ** 3;
/** Uploads at once. */
export const MAX_UPLOADS = 4;
/** Longest wait between two chunks of an upload's body. */
export const UPLOAD_IDLE_MS = 30_000;
/** Largest WebSocket message from the page (65,536 characters of text, JSON-escaped). */
export const MAX_WS_MESSAGE_BYTES = 512 * 1024;
/** Largest send queue of one WebSocket. */
export const MAX_WS_BUFFERED_BYTES = 8 * 1024 * 1024;
/** How often the server says it is alive. */
export const HEARTBEAT_MS = 2_000;
/** How long a download ticket lasts (it is used once). */
export const TICKET_MS = 60_000;
/** Download tickets outstanding at once; the oldest is forgotten beyond. */
export const MAX_TICKETS = 64;

/**
 * The session cookie's name is this prefix and the port: browsers keep one cookie per name for
 * all ports of 127.0.0.1, so two runs (two identities) open in one browser would else replace
 * each other's, and the first page's uploads and downloads would get 401.
 */
const SESSION_COOKIE = "e2e_session_";
/** The WebSocket subprotocol of the page; the page key travels as a second one, `key.HEX`. */
const WS_PROTOCOL = "e2e-chat";
/** The header an upload carries the page key in. */
const KEY_HEADER = "x-e2e-chat-key";

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join("; ");

/** Headers on every answer: no framing, no sniffing, no caching, no referrer. */
const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": CSP,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
};

/** Notices (and, apart, warnings about our certificate) kept for the snapshot of a page. */
const MAX_KEPT_NOTICES = 20;

const STATIC: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
};

const UNAUTHORIZED_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>e2e-chat</title></head>
<body><h1>e2e-chat</h1><p>Open the URL the client printed (<code>deno task client web</code>).</p></body></html>
`;

/** An operation from the page: `{id, op, …}`; the answer is `{type:"reply", re:id, …}`. */
type Operation =
  | { op: "invite" | "accept" | "close" | "safety"; name: string }
  // `keyFingerprint`: the key whose change the user dismisses (another key's change stays).
  | { op: "dismissKeyChange"; name: string; keyFingerprint: string }
  // `number`: the safety number the page showed, which the key must still have.
  | { op: "verify" | "trust"; name: string; number: string }
  | { op: "send"; name: string; text: string }
  | { op: "history"; name: string; limit?: number }
  | { op: "acceptFile" | "declineFile"; name: string; file: string }
  | { op: "download"; file: string }
  | { op: "room"; action: RoomAction; room: string; name?: string };

/** Options of {@linkcode WebServer.start}. */
export interface WebServerOptions {
  /** Port on 127.0.0.1; 0 picks one. Default: 0. */
  port?: number;
  /** Where uploads wait (0700) until they are sent. Default: HOME/uploads. */
  uploads?: string;
  /** Notices from before the server started, shown on every page. Default: none. */
  notices?: string[];
  /**
   * Warnings about our own certificate from before the server started (a renewal at start), shown
   * on every page apart from the notices. Default: none.
   */
  identityNotices?: string[];
}

/** The web face's server. */
export class WebServer {
  #chat: Chat;
  #server: http.Server;
  #wss: WebSocketServer;
  #guard: ConnectionGuard;
  #connections = new Set<Socket>();
  #token: Uint8Array;
  // Session id (the cookie) → page key (from the URL fragment, kept in the tab's sessionStorage).
  #sessions = new Map<string, string>();
  // One-time download tickets → the file name and when they lapse.
  #tickets = new Map<string, { file: string; expires: number }>();
  #sockets = new Set<PageSocket>();
  #inFlight = 0;
  #uploads = 0;
  #uploadDir: string;
  #notices: string[];
  #identityNotices: string[]; // warnings about our certificate: apart, so peers cannot push them out
  #static: Map<string, Uint8Array>;
  #heartbeat: ReturnType<typeof setInterval>;
  #unsubscribe: () => void;
  #port = 0;

  private constructor(
    chat: Chat,
    options: WebServerOptions,
    files: { uploads: string; assets: Map<string, Uint8Array> },
  ) {
    this.#chat = chat;
    this.#token = new Uint8Array(randomBytes(32));
    this.#uploadDir = files.uploads;
    this.#static = files.assets;
    this.#notices = (options.notices ?? []).map(printable);
    this.#identityNotices = (options.identityNotices ?? []).map(printable);
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: MAX_WS_MESSAGE_BYTES,
      handleProtocols: (offered: Set<string>) => offered.has(WS_PROTOCOL) ? WS_PROTOCOL : false,
    });
    this.#wss.on("headers", (headers: string[]) => {
      for (const [k, v] of Object.entries(SECURITY_HEADERS)) headers.push(`${k}: ${v}`);
    });
    this.#server = http.createServer((req, res) => {
      this.#serveNode(req, res).catch(() => res.destroy());
    });
    this.#server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Uint8Array) => {
      this.#upgrade(req, socket as Socket, head).catch(() => socket.destroy());
    });
    // A few for the page: a quarter of the connections the chat's listeners share (the chat's
    // listener takes the rest), in the same group, so a burst at either makes both listen anew.
    const budget = chat.listenerBudget;
    this.#guard = guardConnections(this.#server, {
      maxConnections: listenerShare(budget.connections, MAX_WEB_CONNECTIONS),
      maxPerAddress: MAX_WEB_CONNECTIONS,
      handshakeMs: 0,
      onRefused: (message) => this.#keepNotice(`The page's server: ${message}`),
      group: budget.group,
    });
    this.#server.on("connection", (socket: Socket) => {
      this.#connections.add(socket);
      socket.once("close", () => this.#connections.delete(socket));
      socket.setTimeout(WEB_IDLE_MS, () => socket.destroy());
      headerDeadlines.set(socket, deadline(socket, WEB_HEADERS_MS));
    });
    this.#unsubscribe = chat.on((e) => {
      const out = this.#outgoing(e);
      // A page that connects later still sees the recent warnings (in its snapshot), and that
      // the CA service answers again after them (else a page opened then shows only the outage).
      if (out.type === "warning" && out.about === "identity") {
        this.#identityNotices.push(out.message);
        if (this.#identityNotices.length > MAX_KEPT_NOTICES) this.#identityNotices.shift();
      } else if (out.type === "warning" || out.type === "ca_back") this.#keepNotice(out.message);
      this.#broadcast(out);
    });
    this.#heartbeat = setInterval(() => this.#broadcast({ type: "alive" }), HEARTBEAT_MS);
  }

  /**
   * Serves the page for `chat` on 127.0.0.1; print {@linkcode WebServer.url} for the user.
   *
   * @example Serve the page of a running chat
   * ```ts
   * import { Chat } from "../../chat.ts";
   * import { Identity } from "../../identity.ts";
   * import { WebServer } from "./server.ts";
   * const chat = await Chat.start(await Identity.load("/tmp/alice"));
   * const web = await WebServer.start(chat);
   * console.log(web.url); // http://127.0.0.1:PORT/session?token=…
   * ```
   */
  static async start(chat: Chat, options: WebServerOptions = {}): Promise<WebServer> {
    const assets = new Map<string, Uint8Array>();
    for (const { file } of Object.values(STATIC)) {
      assets.set(file, await Deno.readFile(new URL(`./static/${file}`, import.meta.url)));
    }
    const uploads = options.uploads ?? chat.identity.home.uploads;
    await Deno.mkdir(uploads, { recursive: true, mode: 0o700 });
    await Deno.chmod(uploads, 0o700);
    const web = new WebServer(chat, options, { uploads, assets });
    try {
      await web.#guard.listen(options.port ?? 0, "127.0.0.1");
    } catch (e) {
      await web.stop();
      throw new E2eError("ERR_NETWORK", `Cannot serve the page on 127.0.0.1:${options.port ?? 0}`, {
        hint: "choose another --port, or leave it out",
        cause: e,
      });
    }
    web.#port = (web.#server.address() as { port: number }).port;
    return web;
  }

  /** The port it listens on (127.0.0.1). */
  get port(): number {
    return this.#port;
  }

  /** The URL to open: it holds this run's token, exchanged for a session cookie and a page key. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}/session?token=${hex(this.#token)}`;
  }

  /** A notice for every page, now and on later connections. */
  notice(message: string): void {
    this.#keepNotice(message);
    this.#broadcast({ type: "warning", message });
  }

  /** Closes every WebSocket and the server. */
  async stop(): Promise<void> {
    clearInterval(this.#heartbeat);
    this.#unsubscribe();
    for (const ws of this.#sockets) ws.close(1001, "the client is stopping");
    this.#guard.stop(); // else it would listen again after the close
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    // Give the close frames a moment to leave; then every connection goes.
    await new Promise((resolve) => setTimeout(resolve, 50));
    for (const socket of this.#connections) socket.destroy();
    this.#wss.close();
    await closed;
  }

  // node:http in, the fetch-style handler, node:http out (the body streams with back-pressure;
  // a client that goes away cancels it, which closes a download's file).
  async #serveNode(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    headerDeadlines.get(req.socket)?.();
    const handled = await this.#handle(toRequest(req), req.socket.remoteAddress ?? "");
    // An upgrade that node did not see as one (no "Connection: Upgrade").
    const response = handled === UPGRADE ? text(400, "Bad WebSocket request") : handled;
    const headers: Record<string, string> = {};
    response.headers.forEach((v, k) => (headers[k] = v));
    if (!headers["content-length"]) {
      // Our own small answers (page, JSON, text) go whole, with their length; only downloads
      // (which state theirs) stream.
      const body = new Uint8Array(await response.arrayBuffer());
      res.writeHead(response.status, { ...headers, "content-length": String(body.length) });
      res.end(req.method === "HEAD" ? undefined : body);
      return;
    }
    res.writeHead(response.status, headers);
    if (!response.body || req.method === "HEAD") {
      await response.body?.cancel();
      res.end();
      return;
    }
    const reader = response.body.getReader();
    res.once("close", () => reader.cancel().catch(() => {}));
    try {
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        if (res.destroyed) return;
        if (!res.write(value)) {
          await new Promise<void>((resolve) => {
            res.once("drain", resolve);
            res.once("close", resolve);
          });
        }
      }
      res.end();
    } finally {
      reader.releaseLock();
    }
  }

  // The WebSocket: the same checks as any request (address, Host, session, Origin, page key),
  // then ws takes the socket.
  async #upgrade(req: http.IncomingMessage, socket: Socket, head: Uint8Array): Promise<void> {
    headerDeadlines.get(socket)?.();
    const refusal = await this.#handle(toRequest(req), socket.remoteAddress ?? "");
    if (refusal !== UPGRADE) {
      const body = new Uint8Array(await refusal.arrayBuffer());
      const lines = [`HTTP/1.1 ${refusal.status} ${http.STATUS_CODES[refusal.status] ?? ""}`];
      refusal.headers.forEach((v, k) => lines.push(`${k}: ${v}`));
      lines.push(`content-length: ${body.length}`, "connection: close", "", "");
      socket.end(new Uint8Array([...new TextEncoder().encode(lines.join("\r\n")), ...body]));
      return;
    }
    // The page's heartbeat and the buffered-amount cap watch the WebSocket from now on.
    socket.setTimeout(0);
    this.#wss.handleUpgrade(req, socket, head, (ws: PageSocket) => this.#socket(ws));
  }

  async #handle(request: Request, remoteAddress: string): Promise<Response | typeof UPGRADE> {
    // Defence in depth: the listener is on 127.0.0.1, so the peer is always local.
    if (remoteAddress.replace(/^::ffff:/, "") !== "127.0.0.1") return text(403, "Forbidden");
    // DNS rebinding: a page of another site resolved to 127.0.0.1 still says its own Host.
    if (!this.#hostOk(request.headers.get("host"))) return text(421, "Misdirected request");
    const url = new URL(request.url);
    if (url.pathname === "/session") return this.#exchange(request, url);
    const session = this.#session(request);
    if (!session) {
      return new Response(UNAUTHORIZED_PAGE, {
        status: 401,
        headers: { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8" },
      });
    }
    const changes = !["GET", "HEAD"].includes(request.method);
    const upgrade = request.headers.get("upgrade")?.toLowerCase() === "websocket";
    if ((changes || upgrade) && !this.#originOk(request)) {
      return text(403, "Cross-origin request refused");
    }
    // The cookie goes to every port of 127.0.0.1, so it is not enough on its own: whatever acts
    // or reads also carries the page key, which only our page's own tab knows.
    if (url.pathname === "/ws" && upgrade) {
      const offered = (request.headers.get("sec-websocket-protocol") ?? "").split(",")
        .map((p) => p.trim());
      const key = offered.find((p) => p.startsWith("key."))?.slice(4) ?? "";
      if (!offered.includes(WS_PROTOCOL) || !this.#keyOk(key)) {
        return text(403, "The page key is missing or wrong: open the URL the client printed");
      }
      if (this.#sockets.size >= MAX_SOCKETS) return text(503, "Too many pages open");
      return UPGRADE;
    }
    if (this.#inFlight >= MAX_IN_FLIGHT) return text(503, "Busy");
    this.#inFlight++;
    try {
      if (request.method === "POST" && url.pathname === "/upload") {
        if (!this.#keyOk(request.headers.get(KEY_HEADER) ?? "")) {
          return json(403, { error: { message: "The page key is missing or wrong" } });
        }
        return await this.#upload(request, url);
      }
      if (request.method !== "GET" && request.method !== "HEAD") {
        return text(405, "Method not allowed");
      }
      if (url.pathname.startsWith("/download/")) return await this.#download(url, url.searchParams);
      const asset = STATIC[url.pathname];
      if (!asset) return text(404, "Not found");
      return new Response(this.#static.get(asset.file)!.slice(), {
        headers: { ...SECURITY_HEADERS, "content-type": asset.type },
      });
    } finally {
      this.#inFlight--;
    }
  }

  #hostOk(host: string | null): boolean {
    return host === `127.0.0.1:${this.#port}` || host === `localhost:${this.#port}`;
  }

  // State changes and the WebSocket come only from our own page: its Origin, same-origin fetch.
  #originOk(request: Request): boolean {
    const origin = request.headers.get("origin");
    const site = request.headers.get("sec-fetch-site");
    if (site !== null && site !== "same-origin") return false;
    return origin === `http://127.0.0.1:${this.#port}` ||
      origin === `http://localhost:${this.#port}`;
  }

  // The printed URL's token becomes an HttpOnly, SameSite=Strict cookie and a page key in the
  // fragment (never sent to a server; the page moves it to sessionStorage), and leaves the address bar.
  #exchange(request: Request, url: URL): Response {
    const given = url.searchParams.get("token") ?? "";
    if (request.method !== "GET" || !sameSecret(given, hex(this.#token))) {
      return new Response(UNAUTHORIZED_PAGE, {
        status: 401,
        headers: { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8" },
      });
    }
    const session = hex(randomBytes(32));
    const key = hex(randomBytes(32));
    this.#sessions.set(session, key);
    if (this.#sessions.size > MAX_SESSIONS) {
      this.#sessions.delete(this.#sessions.keys().next().value!);
    }
    const cookie = `${SESSION_COOKIE}${this.#port}=${session}; HttpOnly; SameSite=Strict; Path=/`;
    if (request.headers.get("sec-fetch-site") === "cross-site") {
      // The URL followed from another site's page: a redirect keeps the navigation cross-site,
      // so the SameSite=Strict cookie would not go with it (the 401 page, the key left in the
      // address bar). A page of ours that moves on starts a navigation of our own instead.
      const next = `<!doctype html>\n<html lang="en"><head><meta charset="utf-8">` +
        `<meta http-equiv="refresh" content="0; url=/#key=${key}"><title>e2e-chat</title></head>` +
        `<body><p>Opening the chat page…</p></body></html>\n`;
      return new Response(next, {
        headers: {
          ...SECURITY_HEADERS,
          "content-type": "text/html; charset=utf-8",
          "set-cookie": cookie,
        },
      });
    }
    return new Response(null, {
      status: 303,
      headers: { ...SECURITY_HEADERS, location: `/#key=${key}`, "set-cookie": cookie },
    });
  }

  #session(request: Request): string | undefined {
    for (const part of (request.headers.get("cookie") ?? "").split(";")) {
      const [k, v] = part.trim().split("=", 2);
      if (k === `${SESSION_COOKIE}${this.#port}` && v && this.#sessions.has(v)) return v;
    }
    return undefined;
  }

  // The key of any live session: a tab keeps its key while a later exchange in the same browser
  // replaces the (shared) cookie.
  #keyOk(given: string): boolean {
    let ok = false;
    for (const key of this.#sessions.values()) ok = sameSecret(given, key) || ok;
    return ok;
  }

  #socket(socket: PageSocket): void {
    this.#sockets.add(socket);
    socket.onclose = () => this.#sockets.delete(socket);
    socket.onerror = () => this.#sockets.delete(socket);
    socket.onmessage = (m) => {
      if (typeof m.data !== "string" || m.data.length > MAX_WS_MESSAGE_BYTES) {
        socket.close(1009, "message too large or not text");
        return;
      }
      this.#operate(socket, m.data);
    };
    this.#snapshot(socket).catch(() => socket.close(1011, "snapshot failed"));
  }

  async #snapshot(socket: PageSocket): Promise<void> {
    const chat = this.#chat;
    const id = chat.identity;
    const conversations = await chat.conversations();
    send(socket, {
      type: "snapshot",
      identity: {
        name: id.name,
        fingerprint: id.certificate.fingerprint,
        keyFingerprint: id.certificate.keyFingerprint,
        notAfter: id.certificate.notAfter.toISOString(),
        caUrl: id.caUrl,
        caFingerprint: id.caFingerprint,
      },
      listen: chat.listen,
      peers: chat.peers(),
      invitations: chat.invitations(),
      rooms: chat.rooms.list().rooms,
      // Each with its creator (and only here): two may name rooms alike, and a card joins one.
      roomInvitations: chat.rooms.invitations(),
      offers: chat.offers(),
      conversations,
      notices: this.#notices,
      identityNotices: this.#identityNotices,
      // Each key change (a connection's, a mailbox item's, a room list's) until the user trusts
      // that key or dismisses it, kept by the core across restarts: whoever presented the key
      // cannot take the warning away by leaving.
      keyChanges: chat.keyChanges(),
      alarms: chat.logAlarms().map((a) => ({ ...a, message: printable(a.message) })),
      history: true,
    });
  }

  async #operate(socket: PageSocket, data: string): Promise<void> {
    let re: unknown = null;
    try {
      const parsed = JSON.parse(data);
      re = typeof parsed?.id === "number" || typeof parsed?.id === "string" ? parsed.id : null;
      const op = parseOperation(parsed);
      const result = await this.#run(op);
      const done = answered(op, result);
      send(socket, { type: "reply", re, ok: true, ...(result === undefined ? {} : { result }) });
      if (done) this.#broadcast(done);
    } catch (e) {
      send(socket, { type: "reply", re, ok: false, error: errorReply(e) });
    }
  }

  async #run(op: Operation): Promise<unknown> {
    const chat = this.#chat;
    switch (op.op) {
      case "invite":
        return await chat.invite(op.name);
      case "accept":
        return await chat.accept(op.name);
      case "send":
        if (isRoomName(op.name)) return { id: chat.rooms.send(op.name, op.text) };
        // Someone not connected: through the mailbox, awaited so a refusal is the reply's error.
        if (!chat.isConnected(op.name)) return { id: await chat.sendToMailbox(op.name, op.text) };
        return { id: chat.send(op.name, op.text) };
      case "room":
        return await this.#room(op);
      case "verify":
        this.#sameKey(op);
        return await chat.verify(op.name);
      case "trust":
        // Checked in the same turn as trust() takes the connection's key: nothing comes between.
        this.#sameKey(op);
        await chat.trust(op.name);
        return { keyChanges: chat.keyChanges(op.name) }; // another key's change stays
      case "dismissKeyChange":
        await chat.dismissKeyChange(op.name, op.keyFingerprint);
        return { keyChanges: chat.keyChanges(op.name) };
      case "close":
        return chat.close(op.name);
      case "safety":
        return { number: chat.safetyNumber(op.name) };
      case "acceptFile":
        return await chat.acceptFile(op.name, op.file);
      case "declineFile":
        return chat.declineFile(op.name, op.file);
      case "download":
        return { href: this.#ticket(op.file) };
      case "history": {
        const entries = await chat.history(op.name, op.limit ?? 50);
        return { entries: entries.map((e) => this.#withDownload(e)) };
      }
    }
  }

  // "Mark verified" and "Trust new key" are about the safety number the page showed: a key that
  // changed since (again, or trusted in another tab) would be taken unseen.
  #sameKey(op: { name: string; number: string }): void {
    if (this.#chat.safetyNumber(op.name) === op.number) return;
    throw new E2eError(
      "ERR_FINGERPRINT_MISMATCH",
      `The key of "${op.name}" changed since its safety number was shown`,
      { hint: `compare the safety number shown now with "${op.name}"` },
    );
  }

  // A download link for the page: the file's route with a one-time ticket (a link cannot carry
  // the page key in a header, and the key itself must not end up in the browser's history).
  #ticket(file: string): string {
    const now = Date.now();
    for (const [t, v] of this.#tickets) if (v.expires < now) this.#tickets.delete(t);
    const ticket = hex(randomBytes(32));
    this.#tickets.set(ticket, { file, expires: now + TICKET_MS });
    if (this.#tickets.size > MAX_TICKETS) {
      this.#tickets.delete(this.#tickets.keys().next().value!);
    }
    return `${downloadHref(file)}?ticket=${ticket}`;
  }

  async #room(op: Extract<Operation, { op: "room" }>): Promise<unknown> {
    const rooms = this.#chat.rooms;
    switch (op.action) {
      case "create":
        return await rooms.create(op.room);
      case "invite":
        return await rooms.invite(op.room, op.name!);
      case "join":
        return rooms.join(op.room, op.name);
      case "decline":
        return rooms.decline(op.room, op.name);
      case "leave":
        return await rooms.leave(op.room);
      case "remove":
        return await rooms.remove(op.room, op.name!);
      case "members":
        return rooms.members(op.room);
    }
  }

  // A received file gets the address the page downloads it from.
  #withDownload(e: HistoryEntry): HistoryEntry & { download?: string } {
    const path = e.file?.path;
    if (e.kind !== "file" || !path || e.from === this.#chat.name) return e;
    return { ...e, download: downloadHref(path) };
  }

  #keepNotice(message: string): void {
    this.#notices.push(message);
    if (this.#notices.length > MAX_KEPT_NOTICES) this.#notices.shift();
  }

  // The words of a notice, an alarm or a reason, which may quote a peer (a reason it gave, the
  // name of its file), as the terminal prints them (lib/printable.ts): no bidi control to reorder
  // the line, no control character. A message's text is the peer's own, drawn as it is.
  #outgoing(e: CoreEvent): ChatEvent | (ChatEvent & { download: string }) {
    switch (e.type) {
      case "file":
        return { ...e, download: downloadHref(e.path) };
      case "warning":
      case "file_failed":
      case "log_alarm":
        return { ...e, message: printable(e.message) };
      case "disconnected":
        return { ...e, reason: printable(e.reason) };
      default:
        return e;
    }
  }

  // POST /upload?to=NAME&name=FILE: the body goes to a private folder under its own
  // (sanitised) name, since the peer sees the name of the file we send; then it is sent and removed.
  async #upload(request: Request, url: URL): Promise<Response> {
    const given = url.searchParams.get("to") ?? "";
    let to: string;
    try {
      to = isRoomName(given) ? given : checkName(given);
    } catch (e) {
      // An answer that says why (a throw here used to reset the connection).
      return json(400, { error: errorReply(e) });
    }
    const name = safeFileName(url.searchParams.get("name") ?? "file");
    const length = Number(request.headers.get("content-length") ?? "0");
    if (length > MAX_UPLOAD_BYTES) return json(413, { error: { message: "File too large" } });
    if (!request.body) return json(400, { error: { message: "No file" } });
    if (this.#uploads >= MAX_UPLOADS) return json(503, { error: { message: "Too many uploads" } });
    this.#uploads++;
    const dir = await Deno.makeTempDir({ dir: this.#uploadDir, prefix: "up-" });
    try {
      await Deno.chmod(dir, 0o700);
      const path = join(dir, name);
      await receive(request.body, path);
      const id = await this.#chat.sendFile(to, path);
      return json(200, { id, name });
    } catch (e) {
      return json(e instanceof E2eError && e.code === "ERR_TOO_LARGE" ? 413 : 400, {
        error: errorReply(e),
      });
    } finally {
      this.#uploads--;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  // GET /download/NAME?ticket=T: only a regular file directly inside the downloads folder, with
  // a ticket the page asked for over its WebSocket for that very name, used once.
  async #download(url: URL, query: URLSearchParams): Promise<Response> {
    let name: string;
    try {
      name = decodeURIComponent(url.pathname.slice("/download/".length));
    } catch {
      return text(404, "Not found");
    }
    const ticket = this.#tickets.get(query.get("ticket") ?? "");
    if (!ticket || ticket.file !== name || ticket.expires < Date.now()) {
      return text(403, "Ask the page for this download again");
    }
    this.#tickets.delete(query.get("ticket")!);
    if (!name || name !== basename(name) || name.startsWith(".") || name.includes("\\")) {
      return text(404, "Not found");
    }
    const path = join(this.#chat.downloads, name);
    try {
      const info = await Deno.lstat(path);
      if (!info.isFile) return text(404, "Not found");
      const file = await Deno.open(path);
      // The file opened must be the one looked at: a symlink swapped in between is not followed.
      const opened = await file.stat();
      if (opened.dev !== info.dev || opened.ino !== info.ino || !opened.isFile) {
        file.close();
        return text(404, "Not found");
      }
      return new Response(file.readable, {
        headers: {
          ...SECURITY_HEADERS,
          "content-type": "application/octet-stream",
          "content-length": String(info.size),
          "content-disposition": `attachment; filename*=UTF-8''${encodeRFC5987(name)}`,
        },
      });
    } catch {
      return text(404, "Not found");
    }
  }

  #broadcast(event: unknown): void {
    for (const ws of this.#sockets) send(ws, event);
  }
}

function parseOperation(value: unknown): Operation {
  const v = value as Record<string, unknown>;
  if (!v || typeof v !== "object" || typeof v.op !== "string") {
    throw new E2eError("ERR_BAD_REQUEST", "Not an operation");
  }
  if (v.op === "download") {
    if (typeof v.file !== "string" || !v.file || v.file !== basename(v.file)) {
      throw new E2eError("ERR_BAD_REQUEST", "Not a file name");
    }
    return { op: "download", file: v.file };
  }
  if (v.op === "room") {
    if (typeof v.action !== "string" || !(ROOM_ACTIONS as readonly string[]).includes(v.action)) {
      throw new E2eError("ERR_BAD_REQUEST", "Not a room action");
    }
    const room = checkRoomName(typeof v.room === "string" ? v.room : "");
    const needsName = v.action === "invite" || v.action === "remove";
    // join and decline: the invitation's creator, when given (two may share the room's name).
    const mayName = (v.action === "join" || v.action === "decline") && v.name !== undefined;
    return {
      op: "room",
      action: v.action as RoomAction,
      room,
      ...(needsName || mayName
        ? { name: checkName(typeof v.name === "string" ? v.name : "") }
        : {}),
    };
  }
  // Messages and history also go to rooms (#name).
  const raw = typeof v.name === "string" ? v.name : "";
  const name = (v.op === "send" || v.op === "history") && raw.startsWith("#")
    ? checkRoomName(raw)
    : checkName(raw);
  switch (v.op) {
    case "invite":
    case "accept":
    case "close":
    case "safety":
      return { op: v.op, name };
    case "dismissKeyChange":
      if (typeof v.keyFingerprint !== "string" || !/^[0-9a-f]{64}$/.test(v.keyFingerprint)) {
        throw new E2eError("ERR_BAD_REQUEST", "Not a key fingerprint");
      }
      return { op: v.op, name, keyFingerprint: v.keyFingerprint };
    case "verify":
    case "trust":
      // Without the number the user compared, the core would take whatever key it holds now.
      if (typeof v.number !== "string") {
        throw new E2eError("ERR_BAD_REQUEST", "Not a safety number", {
          hint: "compare the safety number shown, then press the button again",
        });
      }
      return { op: v.op, name, number: v.number };
    case "send":
      if (typeof v.text !== "string" || !v.text.trim()) {
        throw new E2eError("ERR_USAGE", "Nothing to send");
      }
      return { op: "send", name, text: v.text };
    case "acceptFile":
    case "declineFile":
      if (typeof v.file !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(v.file)) {
        throw new E2eError("ERR_BAD_REQUEST", "Not a file id");
      }
      return { op: v.op, name, file: v.file };
    case "history": {
      const limit = typeof v.limit === "number" && Number.isInteger(v.limit)
        ? Math.min(Math.max(v.limit, 1), 500)
        : 50;
      return { op: "history", name, limit };
    }
    default:
      throw new E2eError("ERR_BAD_REQUEST", `Unknown operation ${JSON.stringify(v.op)}`);
  }
}

/**
 * What an operation changed that every tab shows and the core has no event for (a card answered,
 * a key verified or trusted): said to every tab, the one that asked included, after its reply,
 * so the other tabs drop the card or the warning instead of keeping it until they reload.
 */
function answered(op: Operation, result: unknown): Answered | undefined {
  switch (op.op) {
    case "acceptFile":
    case "declineFile":
      return {
        type: "offer_answered",
        from: op.name,
        id: op.file,
        accepted: op.op === "acceptFile",
      };
    case "verify":
      return { type: "trusted", peer: op.name, trust: "verified" };
    case "trust":
      return { type: "trusted", peer: op.name, trust: "known", ...(result as KeyChangesLeft) };
    case "dismissKeyChange":
      return {
        type: "key_change_dismissed",
        peer: op.name,
        keyFingerprint: op.keyFingerprint,
        ...(result as KeyChangesLeft),
      };
    case "room": {
      if (op.action !== "decline") return undefined;
      const { from, told } = result as { from: string; told: boolean };
      // Worded as the terminal words it.
      return {
        type: "room_declined",
        room: op.room,
        from,
        told,
        message: declinedText(op.room, from, told),
      };
    }
    default:
      return undefined;
  }
}

/** The page's own events, from {@linkcode answered} (docs/WEB.md, "WebSocket messages"). */
// The key changes of a peer still kept after a trust or a dismissal (those of other keys).
type KeyChangesLeft = { keyChanges: KeyChange[] };

type Answered =
  | { type: "offer_answered"; from: string; id: string; accepted: boolean }
  | { type: "trusted"; peer: string; trust: "verified" | "known"; keyChanges?: KeyChange[] }
  | { type: "key_change_dismissed"; peer: string; keyFingerprint: string; keyChanges: KeyChange[] }
  | { type: "room_declined"; room: string; from: string; told: boolean; message: string };

function errorReply(e: unknown): { code: string; message: string; hint?: string } {
  if (e instanceof E2eError) {
    return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
  }
  return { code: "ERR_INTERNAL", message: e instanceof Error ? e.message : String(e) };
}

// A slow page cannot make us buffer without end: past the cap its socket is closed.
function send(ws: PageSocket, event: unknown): void {
  if (ws.readyState !== OPEN) return;
  if (ws.bufferedAmount > MAX_WS_BUFFERED_BYTES) {
    ws.close(1013, "too far behind");
    return;
  }
  ws.send(JSON.stringify(event));
}

async function receive(body: ReadableStream<Uint8Array>, path: string): Promise<void> {
  using file = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
  const reader = body.getReader();
  let size = 0;
  try {
    while (true) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const next = await Promise.race([
        reader.read(),
        new Promise<never>((_, reject) =>
          timer = setTimeout(
            () => reject(new E2eError("ERR_NETWORK", "The upload stalled")),
            UPLOAD_IDLE_MS,
          )
        ),
      ]).finally(() => clearTimeout(timer));
      if (next.done) break;
      size += next.value.length;
      if (size > MAX_UPLOAD_BYTES) throw new E2eError("ERR_TOO_LARGE", "File too large");
      let n = 0;
      while (n < next.value.length) n += await file.write(next.value.subarray(n));
    }
  } finally {
    reader.releaseLock();
  }
}

/** What the server uses of a ws WebSocket (npm:ws ships no types of its own). */
interface PageSocket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  onmessage: ((m: { data: unknown }) => void) | null;
  onclose: (() => void) | null;
  onerror: (() => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** WebSocket.OPEN. */
const OPEN = 1;

/** What `#handle` says of a WebSocket request that passed every check. */
const UPGRADE = Symbol("upgrade");

const headerDeadlines = new WeakMap<Socket, () => void>();

// A node:http request as a fetch Request (the handler is written against the fetch API).
function toRequest(req: http.IncomingMessage): Request {
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : v);
  }
  const method = req.method ?? "GET";
  const body = method === "GET" || method === "HEAD"
    ? null
    : Readable.toWeb(req) as unknown as ReadableStream<Uint8Array>;
  return new Request(new URL(req.url ?? "/", "http://127.0.0.1"), {
    method,
    headers,
    body,
    // @ts-ignore: a streamed request body (fetch's "duplex", not in every lib.dom)
    duplex: "half",
  });
}

function downloadHref(path: string): string {
  return `/download/${encodeURIComponent(basename(path))}`;
}

function encodeRFC5987(name: string): string {
  return encodeURIComponent(name).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16)}`);
}

function sameSecret(a: string, b: string): boolean {
  // Equal-length digests, so the comparison takes the same time whatever was given.
  const da = createHash("sha256").update(a).digest();
  const db = createHash("sha256").update(b).digest();
  return timingSafeEqual(da, db);
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function text(status: number, body: string): Response {
  return new Response(body + "\n", {
    status,
    headers: { ...SECURITY_HEADERS, "content-type": "text/plain; charset=utf-8" },
  });
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...SECURITY_HEADERS, "content-type": "application/json" },
  });
}
