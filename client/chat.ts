/**
 * The chat core, shared by the terminal and the JSON interfaces: a mutual-TLS
 * listener that admits only the peers we invited, the rendezvous with the CA
 * (the original's OP_INIT_COMM / OP_ACC_COMM), our own checks of every peer
 * after the handshake, trust on first use, messages and files.
 *
 * @module
 */
import tls from "node:tls";
import { E2eError } from "../lib/errors.ts";
import { ALPN, MAX_TEXT_CHARS } from "../lib/frames.ts";
import { resolveUserPath } from "../lib/home.ts";
import { checkName } from "../lib/names.ts";
import { pemDecode } from "../lib/pem.ts";
import { normalizeSerialHex, parseCrl } from "../lib/crl.ts";
import {
  checkPeer,
  clientOptions,
  connectTls,
  guardConnections,
  peerCertificateDer,
  serverOptions,
} from "../lib/tls.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import type { CaClient, CertificateReply, InvitationReply } from "./ca_client.ts";
import { removeStalePartials } from "./files.ts";
import type { Identity } from "./identity.ts";
import { PeerConnection, type PeerEvents } from "./peer.ts";
import { type KeyState, safetyNumber, TrustStore } from "./trust.ts";

/** Every event the core reports (docs/PROTOCOL.md §6). */
export type ChatEvent =
  | { type: "ready"; name: string; listen: string; fingerprint: string }
  | { type: "invite"; from: string }
  | { type: "invited"; to: string; fingerprint: string }
  | {
    type: "connected";
    peer: string;
    fingerprint: string;
    keyFingerprint: string;
    trust: KeyState;
  }
  | { type: "message"; from: string; text: string; id: string }
  | { type: "sent"; to: string; id: string }
  | { type: "delivered"; to: string; id: string; ms?: number }
  | { type: "file"; from: string; name: string; path: string; bytes: number; sha256: string }
  | {
    type: "progress";
    peer: string;
    id: string;
    bytes: number;
    total: number;
    direction: "in" | "out";
  }
  | { type: "safety"; peer: string; number: string }
  | { type: "peers"; peers: Array<{ name: string; trust: KeyState; current: boolean }> }
  | { type: "disconnected"; peer: string; reason: string }
  | { type: "warning"; message: string }
  | { type: "error"; message: string }
  | { type: "help"; text: string }
  | { type: "bye" };

/** Options of {@linkcode Chat.start}. */
export interface ChatOptions {
  /** Where to listen. Default: 127.0.0.1, a free port. */
  listenHost?: string;
  /** Port to listen on; 0 picks one. Default: 0. */
  listenPort?: number;
  /** Where received files go. */
  downloads: string;
  /** The home folder (peers.json lives there). */
  home: string;
  /** Event sink. */
  onEvent: (event: ChatEvent) => void;
}

/** The commands, for /help. */
export const HELP = `/chat NAME          invite NAME (through the CA) and wait for them
/accept NAME        connect to NAME, who invited you
TEXT                send to the current peer
/msg NAME TEXT      send to NAME
/file [NAME] PATH   send a file
/peers              connected peers
/fingerprint NAME   the safety number to compare with NAME out of band
/verify NAME        mark NAME's key as verified (after comparing)
/trust NAME         accept NAME's new key after a key change warning
/close NAME         close the connection to NAME
/quit               leave`;

const CRL_MAX_AGE_MS = 60_000;
const CRL_REFRESH_MS = 5 * 60_000;
const HANDSHAKE_TIMEOUT_MS = 10_000;

interface Connected {
  conn: PeerConnection;
  trust: KeyState;
  blocked: boolean;
}

/** A running chat client. */
export class Chat {
  #id: Identity;
  #ca: CaClient;
  #options: ChatOptions;
  #trust: TrustStore;
  #server: tls.Server;
  #listen = "";
  #invited = new Map<string, { keyFingerprint: string; expires: number }>();
  #inviting = new Map<string, Promise<void>>();
  #invitations = new Map<string, InvitationReply>();
  #peers = new Map<string, Connected>();
  #current?: string;
  #revoked = new Set<string>();
  #crlAt = 0;
  #crlValidUntil = 0;
  #crlFailedAt = 0;
  #crlFetch?: Promise<void>;
  #stopped = new AbortController();
  #timers: Array<ReturnType<typeof setInterval>> = [];

  private constructor(id: Identity, options: ChatOptions, trust: TrustStore) {
    this.#id = id;
    this.#ca = id.client();
    this.#options = options;
    this.#trust = trust;
    this.#server = tls.createServer(
      serverOptions(id.credentials, id.anchor, {
        requireCert: true,
        alpn: [ALPN],
        tls13Only: true,
      }),
    );
  }

  /** Starts listening and polling the CA; emits `ready`. */
  static async start(id: Identity, options: ChatOptions): Promise<Chat> {
    await removeStalePartials(options.downloads);
    const chat = new Chat(id, options, await TrustStore.load(options.home));
    await chat.#refreshCrl();
    await chat.#listenOn(options.listenHost ?? "127.0.0.1", options.listenPort ?? 0);
    chat.#timers.push(setInterval(() => chat.#refreshCrl().catch(() => {}), CRL_REFRESH_MS));
    chat.#poll();
    chat.#emit({
      type: "ready",
      name: id.name,
      listen: chat.#listen,
      fingerprint: id.certificate.fingerprint,
    });
    return chat;
  }

  /** Runs one line of input: a command or a message. Errors become `error` events. */
  async input(line: string): Promise<boolean> {
    try {
      return await this.#input(line);
    } catch (e) {
      this.#emit({ type: "error", message: e instanceof Error ? e.message : String(e) });
      return true;
    }
  }

  /** Closes every connection, the listener and the CA poll. */
  async close(): Promise<void> {
    this.#stopped.abort();
    for (const t of this.#timers) clearInterval(t);
    for (const { conn } of this.#peers.values()) conn.close("we quit");
    // Give peers a moment to read our bye; then stop waiting for them.
    await Promise.race([
      new Promise<void>((resolve) => this.#server.close(() => resolve())),
      new Promise<void>((resolve) => setTimeout(resolve, 1_000)),
    ]);
  }

  async #input(line: string): Promise<boolean> {
    const text = line.replace(/\r$/, "");
    if (!text.startsWith("/")) {
      if (!text.trim()) return true;
      if (!this.#current) {
        throw new E2eError("ERR_USAGE", "No current peer: /chat NAME or /accept NAME first");
      }
      this.#send(this.#current, text);
      return true;
    }
    const [command, ...args] = text.split(" ");
    const arg = (i: number, what = "NAME") => {
      if (!args[i]) throw new E2eError("ERR_USAGE", `${command} needs ${what}`);
      return args[i];
    };
    switch (command) {
      case "/chat":
        await this.#invite(checkName(arg(0)));
        return true;
      case "/accept":
        await this.#accept(checkName(arg(0)));
        return true;
      case "/msg":
        arg(1, "NAME TEXT");
        this.#send(checkName(args[0]), args.slice(1).join(" "));
        return true;
      case "/file": {
        arg(0, "PATH");
        // "/file NAME PATH" when the first word is a connected peer; else all of it is the path.
        const named = args.length >= 2 && this.#peers.has(args[0]);
        const [name, path] = named
          ? [args[0], args.slice(1).join(" ")]
          : [this.#current, args.join(" ")];
        if (!name) throw new E2eError("ERR_USAGE", "No current peer: /file NAME PATH");
        await this.#sendFile(name, resolveUserPath(path));
        return true;
      }
      case "/peers":
        this.#emit({
          type: "peers",
          peers: [...this.#peers].map(([name, p]) => ({
            name,
            trust: p.blocked ? "changed" : p.trust,
            current: name === this.#current,
          })),
        });
        return true;
      case "/fingerprint": {
        const name = checkName(arg(0));
        const key = this.#peers.get(name)?.conn.certificate.keyFingerprint ??
          this.#trust.get(name)?.keyFingerprint;
        if (!key) throw new E2eError("ERR_NOT_FOUND", `No key known for "${name}": connect first`);
        const number = safetyNumber({
          name: this.#id.name,
          key: this.#id.certificate.keyFingerprint,
        }, { name, key });
        this.#emit({ type: "safety", peer: name, number });
        return true;
      }
      case "/verify": {
        const name = checkName(arg(0));
        const p = this.#peers.get(name);
        if (p?.blocked) {
          throw new E2eError("ERR_USAGE", `"${name}" has a changed key: /trust ${name} first`);
        }
        if (!await this.#trust.verify(name)) {
          throw new E2eError("ERR_NOT_FOUND", `No key known for "${name}"`);
        }
        if (p) p.trust = "verified";
        this.#emit({ type: "warning", message: `"${name}" is now verified` });
        return true;
      }
      case "/trust": {
        const name = checkName(arg(0));
        const p = this.#peers.get(name);
        if (!p) throw new E2eError("ERR_NOT_FOUND", `Not connected to "${name}"`);
        await this.#trust.trust(name, p.conn.certificate.keyFingerprint);
        p.blocked = false;
        p.conn.quarantined = false;
        p.trust = "known";
        this.#emit({ type: "warning", message: `Now trusting the new key of "${name}"` });
        return true;
      }
      case "/close": {
        const name = checkName(arg(0));
        const p = this.#peers.get(name);
        if (!p) throw new E2eError("ERR_NOT_FOUND", `Not connected to "${name}"`);
        p.conn.close("closed by you");
        return true;
      }
      case "/help":
        this.#emit({ type: "help", text: HELP });
        return true;
      case "/quit":
        return false;
      default:
        throw new E2eError("ERR_USAGE", `Unknown command ${JSON.stringify(command)}: see /help`);
    }
  }

  // /chat: announce our listener to the CA and admit exactly that peer's key.
  async #invite(name: string): Promise<void> {
    if (name === this.#id.name) throw new E2eError("ERR_USAGE", "You cannot chat with yourself");
    const host = this.#listen.slice(0, this.#listen.lastIndexOf(":"));
    const port = Number(this.#listen.slice(this.#listen.lastIndexOf(":") + 1));
    // A fast peer may connect before the CA's reply reaches us: the listener waits for it.
    const offered = this.#ca.offer(
      name,
      port,
      host === "0.0.0.0" || host === "::" ? undefined : host,
    )
      .then((reply) => {
        const cert = this.#checkDirectory(reply.peer, name);
        this.#invited.set(name, {
          keyFingerprint: cert.keyFingerprint,
          expires: Date.parse(reply.expiresAt),
        });
        return cert;
      });
    this.#inviting.set(name, offered.then(() => {}, () => {}));
    try {
      const cert = await offered;
      this.#emit({ type: "invited", to: name, fingerprint: cert.fingerprint });
    } finally {
      this.#inviting.delete(name);
    }
  }

  // /accept: connect to the address from the invitation with our certificate.
  async #accept(name: string): Promise<void> {
    let invitation = this.#invitations.get(name);
    if (invitation && Date.parse(invitation.expiresAt) <= Date.now()) {
      this.#invitations.delete(name);
      invitation = undefined;
    }
    if (!invitation) {
      const { invitations } = await this.#ca.pending(0, 0);
      for (const i of invitations) this.#invitations.set(i.from, i);
      invitation = this.#invitations.get(name);
    }
    if (!invitation) {
      throw new E2eError(
        "ERR_NOT_FOUND",
        `No invitation from "${name}": ask them to /chat ${this.#id.name}`,
      );
    }
    const expected = this.#checkDirectory(invitation.peer, name);
    if (Date.now() - this.#crlAt > CRL_MAX_AGE_MS) await this.#refreshCrl();
    this.#requireCurrentCrl();
    const options = clientOptions(this.#id.anchor, {
      own: this.#id.credentials,
      alpn: [ALPN],
      tls13Only: true,
    });
    let socket: tls.TLSSocket;
    try {
      socket = await connectTls(
        { ...options, host: invitation.host, port: invitation.port },
        HANDSHAKE_TIMEOUT_MS,
      );
    } catch (e) {
      throw new E2eError(
        "ERR_NETWORK",
        `Cannot connect to "${name}" at ${invitation.host}:${invitation.port}: ${
          e instanceof Error ? e.message : e
        }`,
      );
    }
    let cert: CertificateInfo;
    try {
      if (socket.alpnProtocol !== ALPN) {
        throw new E2eError("ERR_PEER_REJECTED", "The peer does not speak e2e-chat/1");
      }
      cert = this.#checkPeerSocket(socket, name, expected.keyFingerprint);
    } catch (e) {
      socket.destroy();
      throw e;
    }
    this.#invitations.delete(name);
    await this.#attach(socket, name, cert);
  }

  async #listenOn(host: string, port: number): Promise<void> {
    guardConnections(this.#server, { handshakeMs: HANDSHAKE_TIMEOUT_MS, idleMs: 0 });
    this.#server.on("secureConnection", (socket: tls.TLSSocket) => {
      this.#admit(socket).catch(() => socket.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      this.#server.once(
        "error",
        (e) =>
          reject(new E2eError("ERR_NETWORK", `Cannot listen on ${host}:${port}`, { cause: e })),
      );
      this.#server.listen(port, host, () => resolve());
    });
    const address = this.#server.address() as { address: string; port: number };
    this.#listen = `${host}:${address.port}`;
  }

  // The listener admits only a peer we invited, with the key the directory gave us.
  async #admit(socket: tls.TLSSocket): Promise<void> {
    socket.setTimeout(HANDSHAKE_TIMEOUT_MS, () => socket.destroy());
    let cert: CertificateInfo;
    let name: string;
    // As before an outgoing connection: a CRL over a minute old is fetched again first.
    if (Date.now() - this.#crlAt > CRL_MAX_AGE_MS) await this.#refreshCrl();
    try {
      this.#requireCurrentCrl();
      if (socket.alpnProtocol !== ALPN) {
        throw new E2eError("ERR_PEER_REJECTED", "no ALPN e2e-chat/1");
      }
      const presented = checkPeer(peerCertificateDer(socket), this.#id.anchor, {
        isRevoked: (s) => this.#isRevoked(s),
      });
      name = presented.commonName;
      await this.#inviting.get(name);
      const invited = this.#invited.get(name);
      if (!invited || invited.expires < Date.now()) {
        throw new E2eError("ERR_PEER_REJECTED", `not invited: ${name}`);
      }
      cert = this.#checkPeerSocket(socket, name, invited.keyFingerprint);
    } catch {
      // Refused: nothing they sent is read or shown.
      socket.destroy();
      return;
    }
    socket.setTimeout(0);
    this.#invited.delete(name);
    await this.#attach(socket, name, cert);
  }

  #checkPeerSocket(socket: tls.TLSSocket, name: string, keyFingerprint: string): CertificateInfo {
    return checkPeer(peerCertificateDer(socket), this.#id.anchor, {
      name,
      keyFingerprint,
      isRevoked: (s) => this.#isRevoked(s),
    });
  }

  #checkDirectory(reply: CertificateReply, name: string): CertificateInfo {
    const der = typeof reply?.certificate === "string"
      ? pemDecode(reply.certificate, "CERTIFICATE")
      : null;
    return checkPeer(der, this.#id.anchor, { name, isRevoked: (s) => this.#isRevoked(s) });
  }

  async #attach(socket: tls.TLSSocket, name: string, cert: CertificateInfo): Promise<void> {
    const trust = await this.#trust.observe(name, cert.keyFingerprint);
    this.#peers.get(name)?.conn.close("replaced by a new connection");
    const conn = new PeerConnection(socket, name, cert, {
      downloads: this.#options.downloads,
      events: this.#peerEvents(),
    });
    const blocked = trust === "changed";
    conn.quarantined = blocked;
    this.#peers.set(name, { conn, trust, blocked });
    this.#current = name;
    conn.start();
    this.#emit({
      type: "connected",
      peer: name,
      fingerprint: cert.fingerprint,
      keyFingerprint: cert.keyFingerprint,
      trust,
    });
    if (blocked) {
      this.#emit({
        type: "warning",
        message:
          `WARNING: the key of "${name}" CHANGED since you last talked. It may be someone else. ` +
          `Nothing will be sent to or accepted from "${name}" until you compare /fingerprint ${name} out of band and type /trust ${name}.`,
      });
    }
  }

  #peerEvents(): PeerEvents {
    return {
      message: (p, id, text) => this.#emit({ type: "message", from: p.name, text, id }),
      delivered: (p, id, ms) =>
        this.#emit({
          type: "delivered",
          to: p.name,
          id,
          ...(ms === undefined ? {} : { ms: Math.round(ms * 1000) / 1000 }),
        }),
      file: (p, f) => this.#emit({ type: "file", from: p.name, ...f }),
      progress: (p, info) => this.#emit({ type: "progress", peer: p.name, ...info }),
      fileFailed: (p, info) =>
        this.#emit({
          type: "warning",
          message: `File ${info.id} ${
            info.direction === "in" ? "from" : "to"
          } "${p.name}" failed: ${info.reason}`,
        }),
      held: (p) =>
        this.#emit({
          type: "warning",
          message: `Held back a message from "${p.name}": its key changed. ` +
            `Compare /fingerprint ${p.name}, then /trust ${p.name} to hear from them.`,
        }),
      closed: (p, reason) => {
        if (this.#peers.get(p.name)?.conn === p) {
          this.#peers.delete(p.name);
          if (this.#current === p.name) this.#current = [...this.#peers.keys()].at(-1);
        }
        this.#emit({ type: "disconnected", peer: p.name, reason });
      },
    };
  }

  #connected(name: string): PeerConnection {
    const p = this.#peers.get(name);
    if (!p || !p.conn.open) {
      throw new E2eError(
        "ERR_NOT_FOUND",
        `Not connected to "${name}": /chat ${name} or /accept ${name}`,
      );
    }
    if (p.blocked) {
      throw new E2eError(
        "ERR_FORBIDDEN",
        `Not sent: the key of "${name}" changed. Compare /fingerprint ${name}, then /trust ${name}`,
      );
    }
    return p.conn;
  }

  #send(name: string, text: string): void {
    if (text.length > MAX_TEXT_CHARS) {
      throw new E2eError(
        "ERR_USAGE",
        `Message too long: ${text.length} characters, at most ${MAX_TEXT_CHARS}; send it as a /file`,
      );
    }
    const conn = this.#connected(name);
    const id = conn.sendMessage(text);
    this.#current = name;
    this.#emit({ type: "sent", to: name, id });
  }

  async #sendFile(name: string, path: string): Promise<void> {
    const conn = this.#connected(name);
    try {
      const info = await Deno.stat(path);
      if (!info.isFile) throw new Error("not a file");
    } catch {
      throw new E2eError("ERR_FILE", `Cannot read ${JSON.stringify(path)}`);
    }
    const id = await conn.sendFile(path);
    this.#emit({ type: "sent", to: name, id });
  }

  // Fail closed: without a CRL that is still current, revocation cannot be checked.
  #requireCurrentCrl(): void {
    if (Date.now() >= this.#crlValidUntil) {
      throw new E2eError(
        "ERR_PEER_REJECTED",
        "Cannot check revocation: no current CRL from the CA",
        {
          hint: "is the CA service reachable?",
        },
      );
    }
  }

  #isRevoked(serial: string): boolean {
    return this.#revoked.has(normalizeSerialHex(serial));
  }

  async #refreshCrl(): Promise<void> {
    // One fetch at a time, and not again within 5 s of a failure: connection attempts
    // (even a flood of refused ones) cannot turn into a flood of CRL requests.
    if (this.#crlFetch) return await this.#crlFetch;
    if (Date.now() - this.#crlFailedAt < 5_000) return;
    this.#crlFetch = this.#fetchCrl().finally(() => (this.#crlFetch = undefined));
    return await this.#crlFetch;
  }

  async #fetchCrl(): Promise<void> {
    try {
      const crl = parseCrl(await this.#ca.crl(), this.#id.anchor.x509);
      this.#revoked = crl.revoked;
      this.#crlAt = Date.now();
      this.#crlValidUntil = crl.nextUpdate?.getTime() ?? crl.thisUpdate.getTime() + 7 * 86_400_000;
      // A peer revoked while connected is dropped now, not at its next connection.
      for (const [name, p] of this.#peers) {
        if (this.#isRevoked(p.conn.certificate.serial)) {
          p.conn.close("its certificate was revoked");
          this.#emit({ type: "warning", message: `"${name}" was revoked by the CA: disconnected` });
        }
      }
    } catch (e) {
      this.#crlFailedAt = Date.now();
      this.#emit({
        type: "warning",
        message: `Cannot refresh the CRL: ${e instanceof Error ? e.message : e}`,
      });
    }
  }

  // The original's OP_ACC_COMM, as a long poll: learn of invitations at once.
  async #poll(): Promise<void> {
    let cursor = 0;
    let failures = 0;
    while (!this.#stopped.signal.aborted) {
      try {
        const { invitations, cursor: next } = await this.#ca.pending(cursor, 25);
        cursor = next;
        failures = 0;
        for (const i of invitations) {
          if (this.#stopped.signal.aborted) return;
          this.#invitations.set(i.from, i);
          this.#emit({ type: "invite", from: i.from });
        }
      } catch (e) {
        if (this.#stopped.signal.aborted) return;
        if (failures++ === 0) {
          this.#emit({
            type: "warning",
            message: `Cannot reach the CA for invitations: ${e instanceof Error ? e.message : e}`,
          });
        }
        await new Promise((r) =>
          setTimeout(r, Math.min(30_000, 1000 * 2 ** Math.min(failures, 5)))
        );
      }
    }
  }

  #emit(event: ChatEvent): void {
    this.#options.onEvent(event);
  }
}
