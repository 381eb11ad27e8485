/**
 * The web face (`deno task client web`): an HTTP server on 127.0.0.1 that
 * serves one page (static/), carries core events out and typed operations in
 * over a WebSocket, and moves files between the page and the core (upload by
 * POST into a private temp folder, download of received files). The security
 * model, each defence and its test are in docs/WEB.md.
 *
 * Caps and deadlines (Deno.serve has no connection cap or header deadline of
 * its own; it is bound to loopback, so only local processes reach it):
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
import { basename, join } from "node:path";
import { E2eError } from "../../../lib/errors.ts";
import { checkName } from "../../../lib/names.ts";
import { checkRoomName, isRoomName } from "../../../lib/room.ts";
import type { Chat } from "../../chat.ts";
import type { ChatEvent, CoreEvent } from "../../events.ts";
import { safeFileName } from "../../files.ts";
import type { HistoryEntry } from "../../history.ts";

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

const SESSION_COOKIE = "e2e_session";

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
  | { op: "invite" | "accept" | "verify" | "trust" | "close" | "safety"; name: string }
  | { op: "send"; name: string; text: string }
  | { op: "history"; name: string; limit?: number }
  | { op: "acceptFile" | "declineFile"; name: string; file: string }
  | { op: "room"; action: RoomAction; room: string; name?: string };

/** What the page's `room` operation does (client/rooms.ts). */
type RoomAction = "create" | "invite" | "join" | "leave" | "remove" | "members";
const ROOM_ACTIONS: readonly string[] = ["create", "invite", "join", "leave", "remove", "members"];

/** Options of {@linkcode WebServer.start}. */
export interface WebServerOptions {
  /** Port on 127.0.0.1; 0 picks one. Default: 0. */
  port?: number;
  /** Where uploads wait (0700) until they are sent. Default: HOME/uploads. */
  uploads?: string;
  /** Notices from before the server started (a renewal), shown on every page. Default: none. */
  notices?: string[];
}

/** The web face's server. */
export class WebServer {
  #chat: Chat;
  #server: Deno.HttpServer<Deno.NetAddr>;
  #token: Uint8Array;
  #sessions = new Set<string>();
  #sockets = new Set<WebSocket>();
  #inFlight = 0;
  #uploads = 0;
  #uploadDir: string;
  #notices: string[];
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
    this.#notices = [...options.notices ?? []];
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: options.port ?? 0,
      onListen: () => {},
    }, (request, info) => this.#handle(request, info));
    this.#port = this.#server.addr.port;
    this.#unsubscribe = chat.on((e) => {
      // A page that connects later still sees the recent warnings (in its snapshot).
      if (e.type === "warning") this.#keepNotice(e.message);
      this.#broadcast(this.#outgoing(e));
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
    try {
      return new WebServer(chat, options, { uploads, assets });
    } catch (e) {
      throw new E2eError("ERR_NETWORK", `Cannot serve the page on 127.0.0.1:${options.port ?? 0}`, {
        hint: "choose another --port, or leave it out",
        cause: e,
      });
    }
  }

  /** The port it listens on (127.0.0.1). */
  get port(): number {
    return this.#port;
  }

  /** The URL to open: it holds this run's token, exchanged for a session cookie. */
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
    await this.#server.shutdown();
  }

  async #handle(request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response> {
    // Defence in depth: the listener is on 127.0.0.1, so the peer is always local.
    if (info.remoteAddr.hostname !== "127.0.0.1") return text(403, "Forbidden");
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
    if (url.pathname === "/ws" && upgrade) return this.#socket(request);
    if (this.#inFlight >= MAX_IN_FLIGHT) return text(503, "Busy");
    this.#inFlight++;
    try {
      if (request.method === "POST" && url.pathname === "/upload") {
        return await this.#upload(request, url);
      }
      if (request.method !== "GET" && request.method !== "HEAD") {
        return text(405, "Method not allowed");
      }
      if (url.pathname.startsWith("/download/")) return await this.#download(url);
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

  // The printed URL's token becomes an HttpOnly, SameSite=Strict cookie, and leaves the address bar.
  #exchange(request: Request, url: URL): Response {
    const given = url.searchParams.get("token") ?? "";
    if (request.method !== "GET" || !sameSecret(given, hex(this.#token))) {
      return new Response(UNAUTHORIZED_PAGE, {
        status: 401,
        headers: { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8" },
      });
    }
    const session = hex(randomBytes(32));
    this.#sessions.add(session);
    if (this.#sessions.size > MAX_SESSIONS) {
      this.#sessions.delete(this.#sessions.values().next().value!);
    }
    return new Response(null, {
      status: 303,
      headers: {
        ...SECURITY_HEADERS,
        location: "/",
        "set-cookie": `${SESSION_COOKIE}=${session}; HttpOnly; SameSite=Strict; Path=/`,
      },
    });
  }

  #session(request: Request): string | undefined {
    for (const part of (request.headers.get("cookie") ?? "").split(";")) {
      const [k, v] = part.trim().split("=", 2);
      if (k === SESSION_COOKIE && v && this.#sessions.has(v)) return v;
    }
    return undefined;
  }

  #socket(request: Request): Response {
    if (this.#sockets.size >= MAX_SOCKETS) return text(503, "Too many pages open");
    const { socket, response } = Deno.upgradeWebSocket(request, { idleTimeout: 0 });
    socket.onopen = () => {
      this.#sockets.add(socket);
      this.#snapshot(socket).catch(() => socket.close(1011, "snapshot failed"));
    };
    socket.onclose = () => this.#sockets.delete(socket);
    socket.onerror = () => this.#sockets.delete(socket);
    socket.onmessage = (m) => {
      if (typeof m.data !== "string" || m.data.length > MAX_WS_MESSAGE_BYTES) {
        socket.close(1009, "message too large or not text");
        return;
      }
      this.#operate(socket, m.data);
    };
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) response.headers.set(k, v);
    return response;
  }

  async #snapshot(socket: WebSocket): Promise<void> {
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
      rooms: chat.rooms.list(),
      offers: chat.offers(),
      conversations,
      notices: this.#notices,
      alarms: chat.logAlarms(),
      history: true,
    });
  }

  async #operate(socket: WebSocket, data: string): Promise<void> {
    let re: unknown = null;
    try {
      const parsed = JSON.parse(data);
      re = typeof parsed?.id === "number" || typeof parsed?.id === "string" ? parsed.id : null;
      const result = await this.#run(parseOperation(parsed));
      send(socket, { type: "reply", re, ok: true, ...(result === undefined ? {} : { result }) });
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
        return {
          id: isRoomName(op.name) ? chat.rooms.send(op.name, op.text) : chat.send(op.name, op.text),
        };
      case "room":
        return await this.#room(op);
      case "verify":
        return await chat.verify(op.name);
      case "trust":
        return await chat.trust(op.name);
      case "close":
        return chat.close(op.name);
      case "safety":
        return { number: chat.safetyNumber(op.name) };
      case "acceptFile":
        return await chat.acceptFile(op.name, op.file);
      case "declineFile":
        return chat.declineFile(op.name, op.file);
      case "history": {
        const entries = await chat.history(op.name, op.limit ?? 50);
        return { entries: entries.map((e) => this.#withDownload(e)) };
      }
    }
  }

  async #room(op: Extract<Operation, { op: "room" }>): Promise<unknown> {
    const rooms = this.#chat.rooms;
    switch (op.action) {
      case "create":
        return await rooms.create(op.room);
      case "invite":
        return await rooms.invite(op.room, op.name!);
      case "join":
        return rooms.join(op.room);
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
    if (this.#notices.length > 20) this.#notices.shift();
  }

  #outgoing(e: CoreEvent): ChatEvent | Record<string, unknown> {
    if (e.type === "file") return { ...e, download: downloadHref(e.path) };
    return e;
  }

  // POST /upload?to=NAME&name=FILE: the body goes to a private folder under its own
  // (sanitised) name, since the peer sees the name of the file we send; then it is sent and removed.
  async #upload(request: Request, url: URL): Promise<Response> {
    const to = checkName(url.searchParams.get("to") ?? "");
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

  // GET /download/NAME: only a regular file directly inside the downloads folder.
  async #download(url: URL): Promise<Response> {
    let name: string;
    try {
      name = decodeURIComponent(url.pathname.slice("/download/".length));
    } catch {
      return text(404, "Not found");
    }
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
  if (v.op === "room") {
    if (typeof v.action !== "string" || !ROOM_ACTIONS.includes(v.action)) {
      throw new E2eError("ERR_BAD_REQUEST", "Not a room action");
    }
    const room = checkRoomName(typeof v.room === "string" ? v.room : "");
    const needsName = v.action === "invite" || v.action === "remove";
    return {
      op: "room",
      action: v.action as RoomAction,
      room,
      ...(needsName ? { name: checkName(typeof v.name === "string" ? v.name : "") } : {}),
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
    case "verify":
    case "trust":
    case "close":
    case "safety":
      return { op: v.op, name };
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

function errorReply(e: unknown): { code: string; message: string; hint?: string } {
  if (e instanceof E2eError) {
    return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
  }
  return { code: "ERR_INTERNAL", message: e instanceof Error ? e.message : String(e) };
}

// A slow page cannot make us buffer without end: past the cap its socket is closed.
function send(ws: WebSocket, event: unknown): void {
  if (ws.readyState !== WebSocket.OPEN) return;
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
