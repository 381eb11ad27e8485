/**
 * The chat core: a typed API over a mutual-TLS listener that admits only the
 * peers we invited, the rendezvous with the CA (the original's OP_INIT_COMM /
 * OP_ACC_COMM), our own checks of every peer after the handshake, trust on
 * first use, messages and files. Methods take values and return values or
 * throw {@linkcode E2eError}; what happens meanwhile goes out as events. The
 * faces (terminal, JSON, web) turn people's input into these calls.
 *
 * @module
 */
import { createHash } from "node:crypto";
import tls from "node:tls";
import { newItemId } from "../lib/cms.ts";
import {
  connectionBudget,
  type ConnectionGuard,
  deadline,
  freeDescriptors,
  guardConnections,
  ListenerGroup,
} from "../lib/connections.ts";
import { E2eError } from "../lib/errors.ts";
import { readUpTo, removeStaleTemps, systemReason } from "../lib/fs.ts";
import { ALPN_OFFERED, ALPN_REFUSALS, encodeFrame, MAX_TEXT_CHARS } from "../lib/frames.ts";
import { checkName } from "../lib/names.ts";
import { removeStaleKeygens } from "../lib/keys.ts";
import { isRoomName } from "../lib/room.ts";
import { pemDecode } from "../lib/pem.ts";
import {
  checkPeer,
  clientOptions,
  connectTls,
  peerCertificateDer,
  serverOptions,
} from "../lib/tls.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import {
  type CaClient,
  CertificateRefused,
  type CertificateReply,
  type InvitationReply,
  ownCertificateWords,
  unaskedRenewalWords,
} from "./ca_client.ts";
import { checkDirectoryAnswer } from "./directory.ts";
import type { CoreEvent, PeerSummary, Via } from "./events.ts";
import {
  announcedName,
  DEFAULT_FILE_LIMITS,
  type FileLimits,
  FileQuota,
  formatSize,
  IncomingFile,
  receivedName,
  removeStalePartials,
  safeFileName,
} from "./files.ts";
import { History, type HistoryEntry } from "./history.ts";
import type { Identity } from "./identity.ts";
import { Invitations } from "./invitations.ts";
import { type KeyChange, KeyChanges } from "./key_changes.ts";
import { MailboxClient, type MailboxHost, MAX_MAILBOX_FILE_BYTES } from "./mailbox.ts";
import { type FileOffer, type FilePolicy, PeerConnection, type PeerEvents } from "./peer.ts";
import { Renewal, type RenewalOptions } from "./renewal.ts";
import { Revocation } from "./revocation.ts";
import { type RoomHistoryRecord, Rooms } from "./rooms.ts";
import { RoomOwed } from "./room_owed.ts";
import { RoomHeld } from "./room_held.ts";
import { LogMonitor } from "./transparency.ts";
import type { RelayMode } from "./relay.ts";
import { type KeyState, safetyNumber, TrustStore } from "./trust.ts";

/** Options of {@linkcode Chat.start}. */
export interface ChatOptions {
  /** Where to listen. Default: 127.0.0.1. */
  listenHost?: string;
  /** Port to listen on; 0 picks one. Default: 0. */
  listenPort?: number;
  /** Where received files go. Default: HOME/downloads. */
  downloads?: string;
  /** A first event listener (more with {@linkcode Chat.on}). Default: none. */
  onEvent?: (event: CoreEvent) => void;
  /**
   * The background renewal of our certificate (client/renewal.ts); its `clock` is for tests
   * only. Default: renew once a third of the life is left, retry with backoff from 30 s to
   * 30 min, warn after 3 failures in a row or below a tenth of the life (at once for a renewal
   * kept because its log check failed).
   */
  renewal?: Omit<RenewalOptions, "onWarning" | "tellAtOnce">;
  /** Auto-accept size and quotas of incoming files. Default: {@linkcode DEFAULT_FILE_LIMITS}. */
  files?: Partial<FileLimits>;
  /** How long a file we send may make no progress before it is aborted, ms. Default: 30000. */
  sendStallMs?: number;
  /**
   * How we reach a peer whose invitation we accept: "auto" tries the address it
   * names for {@linkcode DIRECT_TIMEOUT_MS}, then the CA's relay; "always" goes to
   * the relay at once; "never" connects directly or fails. Default: "auto".
   */
  relay?: RelayMode;
  /** Do not listen: peers we invite reach us through the CA's relay only. Default: false. */
  noListen?: boolean;
  /**
   * The address our invitations name instead of the listener's (a port forwarded
   * to it from outside a NAT). Default: the listener's address.
   */
  advertise?: { host: string; port: number };
}

/** A listener of core events. */
export type ChatListener = (event: CoreEvent) => void;

/** Handshake, and then our checks of the peer, each within this of its start (ms). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** How long a refused peer has to read our `refused` frame before its socket is destroyed. */
const REFUSAL_LINGER_MS = 2_000;
/** With `relay: "auto"`, how long a direct connection may take before we go to the relay (ms). */
export const DIRECT_TIMEOUT_MS = 3_000;
/** How often the chat reads new entries of the CA's issuance log, looking for our name. */
export const LOG_WATCH_MS = 5 * 60_000;
/** After a failed look: tries again after 5, 10, 20 and 40 s. */
const LOG_RETRY_MS = 5_000;
const LOG_RETRIES = 4;
/** Connections the listener holds at once from one address (the total: {@linkcode ListenerBudget}). */
const MAX_CONNECTIONS_PER_ADDRESS = 128;

/**
 * The connections this process's listeners (the chat's, and a face's server: the web page's)
 * may hold together: a quarter of the descriptors free at the chat's start, counted once
 * (lib/connections.ts `connectionBudget`); the other three quarters stay for files being
 * received, the history, openssl's pipes for the mailbox, the CA client's connections and
 * connections refused at a cap. The chat's listener takes three quarters of it (at least 8),
 * a face's server the rest.
 */
export interface ListenerBudget {
  /** Connections in all. */
  readonly connections: number;
  /** The listeners of this process: once a burst of refusals at one is over, all listen again. */
  readonly group: ListenerGroup;
}

interface Connected {
  conn: PeerConnection;
  trust: KeyState;
  blocked: boolean;
  via: Via;
}

/** A running chat client. */
export class Chat {
  #id: Identity;
  #ca: CaClient;
  #downloads: string;
  #trust: TrustStore;
  #keyChanges: KeyChanges;
  #server: tls.Server;
  #guard?: ConnectionGuard;
  #budget: ListenerBudget;
  #listen = "";
  #listeners = new Set<ChatListener>();
  #invited = new Map<
    string,
    { keyFingerprint: string; fingerprint: string; expires: number; id: number; at: number }
  >();
  #inviting = new Map<string, Promise<void>>();
  // Our meeting at the relay under way with a peer, one at a time: its `again` is the invitation
  // of a request that came meanwhile, met once it ends (#meetAtRelay).
  #meeting = new Map<string, { again?: number }>();
  // Invitations we made again after a lapse (#lapsed): one per invitation of the user or a room,
  // so a CA that says each lapsed cannot make us invite at network speed.
  #remadeAfterLapse = new Set<string>();
  #invitations: Invitations;
  #revocation: Revocation;
  #peers = new Map<string, Connected>();
  // Connections we dialled whose peer has not said hello yet (not connected: #attach).
  #admitting = new Map<PeerConnection, { hello(): void; closed(reason: string): void }>();
  #history: History;
  #roomPosts = new Map<string, Promise<unknown>>(); // per member: the last room post to the mailbox
  // Room messages from the mailbox that the room showed but whose history lines are not synced
  // yet, by item id, kept on disk before the room's state says shown (client/room_owed.ts):
  // recorded again when the item is tried again (the room takes it for a copy then), after a
  // restart too.
  #roomOwed: RoomOwed;
  #roomHeld: RoomHeld;
  #log: LogMonitor;
  #watchTimer?: ReturnType<typeof setInterval>;
  #retryTimer?: ReturnType<typeof setTimeout>;
  #watching = false;
  #stopped = false;
  #renewal: Renewal;
  #keptRenewals = new WeakSet<object>(); // failures that left a renewal kept: told at once
  #quota: FileQuota;
  #sendStallMs?: number;
  #mailbox!: MailboxClient;
  #firstSeen = new Set<string>(); // names whose key the mailbox pinned in this run
  #roomOnly = new Set<string>(); // peers connected for a room only (not by the user's own /chat)
  #away?: number; // since when the CA service does not answer our looks (until one does)
  #rooms: Rooms;
  #relay: RelayMode;
  #noListen: boolean;
  #advertise?: { host: string; port: number };

  private constructor(
    id: Identity,
    options: ChatOptions,
    state: { trust: TrustStore; log: LogMonitor; ca: CaClient; keyChanges: KeyChanges },
  ) {
    const { trust, log } = state;
    this.#keyChanges = state.keyChanges;
    this.#id = id;
    // One CA client for everything (log, CRL, invitations), so a renewal moves them all at once.
    this.#ca = state.ca;
    this.#downloads = options.downloads ?? id.home.downloads;
    this.#trust = trust;
    this.#log = log;
    this.#quota = new FileQuota(this.#downloads, { ...DEFAULT_FILE_LIMITS, ...options.files }, {
      ledger: id.home.received,
    });
    this.#sendStallMs = options.sendStallMs;
    this.#relay = options.relay ?? "auto";
    this.#noListen = options.noListen ?? false;
    this.#advertise = options.advertise;
    if (this.#noListen && this.#relay === "never") {
      throw new E2eError("ERR_USAGE", "A client that does not listen needs the relay", {
        hint: "leave out --relay never, or --no-listen",
      });
    }
    if (options.onEvent) this.#listeners.add(options.onEvent);
    this.#server = tls.createServer(this.#serverTls());
    this.#budget = { connections: connectionBudget(freeDescriptors()), group: new ListenerGroup() };
    const warn = (message: string) => this.#emit({ type: "warning", message });
    this.#renewal = new Renewal(() => this.#id.certificate, () => this.#renew(), {
      ...options.renewal,
      onWarning: (message) => this.#emit({ type: "warning", message, about: "identity" }),
      tellAtOnce: (e) => this.#keptRenewals.has(e as object),
    });
    this.#revocation = new Revocation({
      fetch: () => log.loggedCrl(), // the newest CRL in the issuance log, proved there
      issuer: id.anchor.x509,
      onUpdate: () => this.#dropRevoked(),
      onWarning: warn,
      numberFile: id.home.crlNumber,
    });
    // Sealed when the key is encrypted; a key decrypted later still reads what was sealed.
    this.#roomOwed = new RoomOwed(id.home.mailboxRoomOwed, {
      key: id.historyKey(),
      seal: id.keyEncrypted,
      onWarning: warn, // one it cannot read is moved aside, and said
    });
    this.#roomHeld = new RoomHeld(id.home.mailboxRoomHeld, {
      key: id.historyKey(),
      seal: id.keyEncrypted,
    });
    this.#history = new History(id.home.history, {
      self: id.name,
      onWarning: warn,
      key: id.historyKey(),
      seal: id.keyEncrypted,
      roomId: (room) => this.#rooms.idOf(room), // a room's history is kept by its id
    });
    // A room member's invitation is accepted by the rooms (the signed list is the consent).
    this.#rooms = new Rooms({
      self: id.name,
      privateKey: () => this.#id.credentials.key,
      peer: (name) => {
        const p = this.#peers.get(name);
        return p && p.conn.open && !p.blocked ? p.conn : undefined;
      },
      pinned: (name) => this.#trust.get(name)?.keyFingerprint,
      // Connections the rooms make are theirs: they close once no room is shared any more.
      // (A room's own invitation of someone, `/room invite`, is the user's act: not quiet.)
      invite: (name, quiet) => {
        const invited = this.invite(name, { quiet });
        if (quiet) this.#roomOnly.add(name);
        return invited;
      },
      accept: (name) => {
        const accepted = this.accept(name);
        this.#roomOnly.add(name);
        return accepted;
      },
      released: (names) => {
        for (const name of names) {
          if (!this.#roomOnly.delete(name)) continue;
          this.#peers.get(name)?.conn.close("no longer in a room with you");
        }
      },
      // A file offered to a member for a room they are no longer in is not sent if they accept;
      // one they offered for it is refused, not left for the user to accept, and one they are
      // sending for it is given up (not kept as a file of another room of that name).
      gone: (room, names) => {
        for (const name of names) {
          const conn = this.#peers.get(name)?.conn;
          conn?.withdrawOffers(room, `"${name}" is not in ${room} any more`);
          conn?.refuseOffers(room, `"${name}" is not in ${room} any more`);
          conn?.abortRoomFiles(room, `"${name}" is not in ${room} any more`).catch(() => {});
        }
      },
      invitations: () => this.#invitations.names(),
      emit: (event) => this.#emit(event),
      // A member not connected gets the room's message through the CA's mailbox, sealed to them,
      // one post after the other: the CA hands items over in the order they came, and a member
      // who first hears of an author through the mailbox starts at the first it is given.
      mailbox: (name, body) => {
        const posted = (this.#roomPosts.get(name) ?? Promise.resolve())
          .then(() => {
            // Held while the CA service does not answer: left when it answers again, in order.
            const later = this.#mailboxOutcome({ to: name, kind: "room", id: "" });
            const bytes = new TextEncoder().encode(JSON.stringify(body));
            return this.#mailbox.send(name, "room", bytes, { later }).catch(later);
          });
        this.#roomPosts.set(name, posted);
        posted.then(() => {
          if (this.#roomPosts.get(name) === posted) this.#roomPosts.delete(name);
        });
      },
      mailboxHeldGone: (id, records) => this.#roomHeldGone(id, records),
      history: this.#history,
      dir: id.home.rooms,
      invitationsFile: id.home.roomInvitations,
    });
    this.#invitations = new Invitations(this.#ca, {
      onInvite: (i) => this.#rooms.invited(i.from) || this.#emit({ type: "invite", from: i.from }),
      onWarning: warn,
      onRelay: (r) => this.#meetAtRelay(r.invitation, r.from),
      onLapsed: (l) => this.#lapsed(l.invitation, l.to),
      onBack: (since) => {
        this.#caBack();
        this.#inviteAgain(since);
      },
      onAway: (e) => this.#caAway(e),
    });
  }

  /**
   * Fetches the CRL, starts listening and polling the CA for invitations; emits `ready`. A start
   * that fails lets go of what it started (the port, timers) and throws the error that stopped it.
   *
   * @example Two lines of a chat
   * ```ts
   * import { Chat } from "./chat.ts";
   * import { Identity } from "./identity.ts";
   * const chat = await Chat.start(await Identity.load("/tmp/alice"), {
   *   onEvent: (e) => e.type === "message" && console.log(`${e.from}: ${e.text}`),
   * });
   * await chat.invite("bob");
   * // … once bob has accepted:
   * chat.send("bob", "hello bob");
   * await chat.stop();
   * ```
   */
  static async start(id: Identity, options: ChatOptions = {}): Promise<Chat> {
    let emit: (alarm: { message: string; serial?: string; fingerprint?: string }) => void =
      () => {};
    const ca = id.client();
    const log = await LogMonitor.open(id.home.logState, id.anchor, ca, {
      onAlarm: (alarm) => emit(alarm),
    });
    const chat = new Chat(id, options, {
      trust: await TrustStore.load(id.home.root),
      keyChanges: await KeyChanges.load(id.home.keyChanges),
      log,
      ca,
    });
    emit = (alarm) => chat.#emit({ type: "log_alarm", ...alarm });
    try {
      // A CA service whose TLS certificate is on the CRL we hold is refused (lib/tls.ts).
      ca.checkServiceRevocation(chat.#revocation);
      await removeStalePartials(chat.#downloads);
      // And the temporary files of writes killed before their rename: they would pile up there,
      // and count as held items (client/mailbox.ts). Only those older than this process's start
      // (less a minute): another chat on this home may be writing one now (lib/fs.ts
      // removeStaleTemps).
      const home = id.home;
      const dirs = [home.root, home.id.dir, home.mailbox, home.mailboxHeld, home.mailboxRoomHeld];
      for (const dir of [...dirs, home.rooms]) {
        await removeStaleTemps(dir).catch(() => {}); // litter only: never a reason not to start
      }
      // A key generation killed before its key's link leaves a folder (lib/keys.ts generateKey).
      await removeStaleKeygens(home.id.dir).catch(() => {});
      const unreadable = await chat.#quota.load();
      if (unreadable) chat.#emit({ type: "warning", message: unreadable });
      await chat.#revocation.refresh();
      // Our own certificate no longer taken (revoked, superseded, expired): the CA would refuse
      // all we ask of it, so it is said now, with why, not as warnings after `ready`.
      const refused = ownCertificateRefused(id, chat.#revocation);
      if (refused) throw refused;
      if (!chat.#noListen) {
        await chat.#listenOn(options.listenHost ?? "127.0.0.1", options.listenPort ?? 0);
      }
      chat.#mailbox = await MailboxClient.load(chat.#mailboxHost(), id.home);
      chat.#revocation.start();
      await chat.#rooms.load();
      chat.#invitations.start();
      chat.#emit({
        type: "ready",
        name: id.name,
        listen: chat.#listen,
        fingerprint: id.certificate.fingerprint,
      });
      // Standing alarms are shown again at every start: nobody can miss them.
      for (const alarm of log.alarms) emit(alarm);
      chat.#watchLog();
      chat.#watchTimer = setInterval(() => chat.#watchLog(), LOG_WATCH_MS);
      chat.#renewal.start();
      chat.#takeUpRoomHeld();
      // After `ready`: what waited in the mailbox comes now, then as it arrives.
      chat.#mailbox.start();
      chat.#rooms.start();
    } catch (e) {
      // What it started (the listener, its guard, timers, the mailbox's lock) is let go: else
      // the port stays taken and the process cannot exit. The error that stopped it is said.
      await chat.stop().catch(() => {});
      throw e;
    }
    return chat;
  }

  // The room messages from the mailbox an earlier run held apart (client/room_held.ts): given to
  // the rooms again, as if they came now. Ones taken before it stopped are copies, let go; ones
  // whose lines were owed have them recorded.
  #takeUpRoomHeld(): void {
    for (const held of this.#roomHeld.items()) {
      const owed = this.#roomOwed.get(held.id);
      if (owed) {
        for (const r of owed) this.#history.roomMessage(r);
        this.#roomHeldGone(held.id, owed);
        continue;
      }
      const records = this.#rooms.fromMailbox(held.from, held.payload, { id: held.id });
      if (!this.#rooms.holds(held.id)) this.#roomHeldGone(held.id, records);
    }
  }

  // A room message held apart is no longer: its lines (if it was shown) are owed on disk until
  // synced in the history, then its copy in HOME/mailbox/room-held/ goes. Not synced now (a disk
  // error): both stay, and the next start records the lines.
  #roomHeldGone(id: string, records: RoomHistoryRecord[]): void {
    if (records.length === 0) return this.#roomHeld.drop(id);
    if (!this.#roomOwed.put(id, records)) return;
    const rooms = new Map(records.map((r) => [r.roomId, r.room]));
    Promise.all([...rooms].map(([roomId, room]) => this.#history.persistRoom(room, roomId)))
      .then(() => {
        this.#roomHeld.drop(id);
        this.#roomOwed.drop(id);
      }, () => {});
  }

  /** Our user name. */
  get name(): string {
    return this.#id.name;
  }

  /** Our identity (certificate, CA). */
  get identity(): Identity {
    return this.#id;
  }

  /** The connections this process's listeners share, and their group (a face's server takes its part). */
  get listenerBudget(): ListenerBudget {
    return this.#budget;
  }

  /** Where we listen, HOST:PORT ("" when we do not listen). */
  get listen(): string {
    return this.#listen;
  }

  /** Where received files go. */
  get downloads(): string {
    return this.#downloads;
  }

  /** The rooms we are in (client/rooms.ts): create, invite, join, send… */
  get rooms(): Rooms {
    return this.#rooms;
  }

  /** Adds an event listener; returns a function that removes it. */
  on(listener: ChatListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Invites `name` through the CA (our listener's address goes to them, or none
   * when we do not listen: they come through the relay) and admits exactly the
   * key the directory names. Resolves with that certificate's fingerprint once
   * the CA recorded the invitation; emits `invited` (unless `quiet`: a room's own
   * invitation of a member, client/rooms.ts, repeated while they are away).
   */
  async invite(name: string, options: { quiet?: boolean } = {}): Promise<{ fingerprint: string }> {
    checkName(name);
    this.#remadeAfterLapse.delete(name);
    return await this.#invite(name, options);
  }

  // invite(), also for an invitation made again by this client (after the CA was away, or a lapse).
  async #invite(name: string, options: { quiet?: boolean }): Promise<{ fingerprint: string }> {
    this.#roomOnly.delete(name); // the user's own: it stays when rooms no longer need it
    if (name === this.#id.name) throw new E2eError("ERR_USAGE", "You cannot chat with yourself");
    this.#log.requireNoAlarm();
    const host = this.#advertise?.host ?? this.#listen.slice(0, this.#listen.lastIndexOf(":"));
    const port = this.#advertise?.port ??
      Number(this.#listen.slice(this.#listen.lastIndexOf(":") + 1));
    const at = Date.now(); // the CA may have recorded it from now on
    // A fast peer may connect before the CA's reply reaches us: the listener waits for it.
    const offered = (this.#noListen ? this.#ca.offer(name) : this.#ca.offer(
      name,
      port,
      host === "0.0.0.0" || host === "::" ? undefined : host,
    ))
      .then(async (reply) => {
        const cert = await this.#checkDirectory(reply.peer, name);
        this.#invited.set(name, {
          keyFingerprint: cert.keyFingerprint,
          fingerprint: cert.fingerprint,
          expires: Date.parse(reply.expiresAt),
          id: reply.id,
          at,
        });
        return cert;
      });
    const settled = offered.then(() => {}, () => {});
    this.#inviting.set(name, settled);
    try {
      const cert = await offered;
      if (!options.quiet) this.#emit({ type: "invited", to: name, fingerprint: cert.fingerprint });
      return { fingerprint: cert.fingerprint };
    } finally {
      // Only our own entry: a second invitation of the same name may have replaced it.
      if (this.#inviting.get(name) === settled) this.#inviting.delete(name);
    }
  }

  /**
   * Accepts `name`'s invitation: connects to the address it names (or through
   * the CA's relay, as the `relay` option says) with our certificate and checks
   * the peer (our CA, the name, the directory's key, not revoked, in the log).
   * Resolves once connected (after the `connected` event).
   */
  async accept(name: string): Promise<PeerSummary> {
    checkName(name);
    this.#roomOnly.delete(name); // the user's own: it stays when rooms no longer need it
    this.#log.requireNoAlarm();
    const invitation = await this.#invitations.find(name);
    if (!invitation) {
      throw new E2eError("ERR_NOT_FOUND", `No invitation from "${name}"`, {
        hint: `ask them to invite "${this.#id.name}"`,
      });
    }
    // Acted upon: a new invitation from them is news again, whatever comes of this one, and
    // this one is not shown again.
    this.#invitations.used(invitation);
    const expected = await this.#checkDirectory(invitation.peer, name);
    await this.#revocation.ensureFresh();
    let reached = invitation;
    const { socket, via } = await this.#reach(name, invitation).catch(async (e) => {
      // The CA restarted since it showed us the invitation, and lost it: the inviter made it
      // again once the CA answered (#inviteAgain). The one the CA holds now is tried once.
      const again = await this.#invitations.find(name).catch(() => undefined);
      // Acted upon, whichever it is: find() holds what the CA lists, and a held invitation
      // would make the next one from them a repeat, never shown.
      this.#invitations.delete(name);
      if (!again || again.id === invitation.id) throw e;
      this.#invitations.used(again);
      reached = again;
      return await this.#reach(name, again);
    });
    let cert: CertificateInfo;
    let reason: Refusal | undefined; // what the listener is told if we refuse it
    try {
      if (!ALPN_OFFERED.includes(socket.alpnProtocol || "")) {
        throw new E2eError("ERR_PEER_REJECTED", "The peer does not speak e2e-chat/1");
      }
      reason = this.#refusal(socket, name, expected.keyFingerprint);
      cert = this.#checkPeerSocket(socket, name, expected.keyFingerprint);
      reason = undefined; // a check that fails for want of the CA says nothing of the listener
      reason = await this.#notLogged(cert, expected.fingerprint);
      if (reason) throw new E2eError("ERR_PEER_REJECTED", NOT_LOGGED[reason]);
    } catch (e) {
      refuse(socket, reason);
      throw e;
    }
    const attached = await this.#attach(socket, name, cert, via, true);
    // Its inviter admitted us: the CA lists it to none of our clients again (told in the
    // background, so it costs the connection no time; an accept that failed leaves it listed).
    this.#invitations.tell(reached);
    return attached;
  }

  // The peer TLS to the inviter: directly to the address it names, or inside a connection
  // through the relay — the same TLS options, and the same checks after (in accept()).
  async #reach(
    name: string,
    invitation: InvitationReply,
  ): Promise<{ socket: tls.TLSSocket; via: Via }> {
    const options = clientOptions(this.#id.anchor, {
      own: this.#id.credentials,
      alpn: [...ALPN_OFFERED],
      tls13Only: true,
    });
    const { host, port } = invitation;
    let direct = "";
    if (port !== undefined && host !== undefined && this.#relay !== "always") {
      try {
        const socket = await connectTls(
          { ...options, host, port },
          this.#relay === "never" ? HANDSHAKE_TIMEOUT_MS : DIRECT_TIMEOUT_MS,
        );
        return { socket, via: "direct" };
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        if (this.#relay === "never") {
          throw new E2eError(
            "ERR_NETWORK",
            `Cannot connect to "${name}" at ${host}:${port}: ${why}`,
            {
              hint: "without --relay never, the CA's relay is tried next",
            },
          );
        }
        direct = ` at ${host}:${port} (${why}), nor`;
      }
    } else if (this.#relay === "never") {
      throw new E2eError(
        "ERR_NETWORK",
        `Cannot connect to "${name}" directly: it does not listen, and is reached through the relay only`,
        { hint: "leave out --relay never" },
      );
    }
    let outer: tls.TLSSocket | undefined;
    try {
      outer = await this.#ca.relay(invitation.id);
      const socket = await connectTls({ ...options, socket: outer }, HANDSHAKE_TIMEOUT_MS);
      return { socket, via: "relay" };
    } catch (e) {
      outer?.destroy();
      throw new E2eError(
        "ERR_NETWORK",
        `Cannot connect to "${name}"${direct} through the relay: ${
          e instanceof Error ? e.message : e
        }`,
        { cause: e },
      );
    }
  }

  // The CA answers again after failures that began at `since`: it may have restarted, and the
  // invitations it held in memory are gone (ca/rendezvous.ts); without them, whom we invited
  // would never hear of it, or reach us through the relay. Ours made before `since` that are
  // pending are made again (a new expiry); a repeat to a client that held one is not shown there
  // twice. One made since then was made to the CA that answers now.
  #inviteAgain(since: number): void {
    if (this.#stopped) return;
    const now = Date.now();
    for (const [name, { expires, at }] of this.#invited) {
      if (expires <= now || at >= since) continue;
      if (this.#peers.has(name) || this.#inviting.has(name)) continue;
      const roomOnly = this.#roomOnly.has(name); // invite() forgets it: a room's stays the room's
      this.#invite(name, { quiet: true }).then(
        () =>
          roomOnly || this.#emit({
            type: "warning",
            message: `Invited "${name}" again: the CA service did not answer for a while, ` +
              `and may have lost the invitation`,
          }),
        (e) =>
          this.#emit({
            type: "warning",
            message: `Could not invite "${name}" again after the CA service was away: ${
              e instanceof Error ? e.message : e
            }`,
          }),
      );
      if (roomOnly) this.#roomOnly.add(name);
    }
  }

  // Our invitation `invitation` of `name` lapsed at the CA, which says `name` joined again with a
  // new key since, which our listener would not admit, and shows it to none of their clients. So
  // the one we hold is made again, for the key the directory gives now (it is a change: its
  // connection says so, §4) — quietly for a room's, and with a warning for the user's own. Only
  // when the directory does give another key, and once per invitation of the user's (or a
  // room's): a CA that says so of each would otherwise have us invite at network speed.
  #lapsed(invitation: number, name: string): void {
    const lapsed = this.#invited.get(name);
    if (this.#stopped || lapsed?.id !== invitation) return;
    this.#invited.delete(name);
    if (this.#inviting.has(name)) return; // a newer invitation is being made
    const roomOnly = this.#roomOnly.has(name); // invite() forgets it: a room's stays the room's
    const notAgain = (why: string) =>
      this.#emit({
        type: "warning",
        message: `Your invitation of "${name}" lapsed ${why}: it is not made again; ` +
          `invite "${name}" again if you still mean to`,
      });
    if (this.#remadeAfterLapse.has(name)) return notAgain("again at the CA");
    this.#ca.lookup(name)
      .then((reply) => this.#checkDirectory(reply, name))
      .then(async (current) => {
        // Invited anew meanwhile (by the user, or a room): that one stands.
        if (this.#stopped || this.#invited.has(name) || this.#inviting.has(name)) return;
        if (current.keyFingerprint === lapsed.keyFingerprint) {
          return notAgain(
            "at the CA, though the CA's directory still gives the key it was made for",
          );
        }
        this.#remadeAfterLapse.add(name);
        const again = this.#invite(name, { quiet: true });
        if (roomOnly) this.#roomOnly.add(name);
        await again;
        if (roomOnly) return;
        this.#emit({
          type: "warning",
          message: `Invited "${name}" again: "${name}" joined again with a new key since your ` +
            `invitation; compare the safety number once you are connected`,
        });
      })
      .catch((e) =>
        this.#emit({
          type: "warning",
          peer: name,
          message: `Your invitation of "${name}" lapsed at the CA, and inviting again failed: ${
            e instanceof Error ? e.message : e
          }`,
        })
      );
  }

  // A peer we invited waits for us at the relay: we go there, and run the peer TLS inside as
  // its server, admitted by the same #admit as our listener's connections.
  #meetAtRelay(invitation: number, name: string, waited = false): void {
    const invited = this.#invited.get(name);
    // The CA recorded our invitation before it answered us, and we record it only after the
    // directory's checks: a quick peer can accept it, and ask us to the relay, in between.
    const inviting = this.#inviting.get(name);
    if (inviting && !waited && invited?.id !== invitation) {
      inviting.then(() => this.#meetAtRelay(invitation, name, true));
      return;
    }
    if (!invited || invited.id !== invitation || this.#relay === "never" || this.#stopped) return;
    // One meeting with a peer at a time: a spliced session counts against our relay sessions
    // until its handshake ends, so a peer that waits again and again without a word of TLS would
    // otherwise hold them all (ca/relay.ts). A request meanwhile is met once this one ends.
    const under = this.#meeting.get(name);
    if (under) return void (under.again = invitation);
    const meeting: { again?: number } = {};
    this.#meeting.set(name, meeting);
    let outer: tls.TLSSocket | undefined;
    this.#ca.relay(invitation).then(async (socket) => {
      outer = socket;
      if (this.#stopped) throw new Error("stopped");
      const inner = new tls.TLSSocket(socket, { isServer: true, ...this.#serverTls() });
      inner.once("close", () => socket.destroy());
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("timed out")), HANDSHAKE_TIMEOUT_MS);
        inner.once("secure", () => {
          clearTimeout(timer);
          // Until the peer connection takes it: a reset closes it, and #admit's checks stop.
          inner.on("error", () => {});
          resolve();
        });
        inner.once("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
      }).catch((e) => {
        inner.destroy();
        throw e;
      });
      await this.#admit(inner, "relay");
    }).catch((e) => {
      outer?.destroy();
      if (this.#stopped) return;
      this.#emit({
        type: "warning",
        message: `Cannot meet "${name}" at the relay: ${e instanceof Error ? e.message : e}`,
      });
    }).finally(() => {
      this.#meeting.delete(name);
      if (meeting.again !== undefined) this.#meetAtRelay(meeting.again, name);
    });
  }

  /**
   * Sends `text` to the connected peer `name`; returns the message id (`sent`
   * now, `delivered` when acknowledged). To a member who is not connected it
   * goes through the mailbox in the background ({@linkcode Chat.sendToMailbox}):
   * `queued` once the CA holds it, or a `warning` naming the id if it was refused.
   */
  send(name: string, text: string): string {
    checkName(name);
    if (text.length > MAX_TEXT_CHARS) {
      throw new E2eError(
        "ERR_USAGE",
        `Message too long: ${text.length} characters, at most ${MAX_TEXT_CHARS}`,
        { hint: "send it as a file" },
      );
    }
    if (!this.#peers.get(name)?.conn.open) {
      const id = newItemId();
      this.sendToMailbox(name, text, id).catch((e) =>
        this.#emit({
          type: "warning",
          message: `Message ${id} to "${name}" was not queued: ${
            e instanceof Error ? e.message : e
          }`,
        })
      );
      return id;
    }
    const id = this.#connected(name).sendMessage(text);
    this.#history.message({ id, from: this.#id.name, to: name, text });
    this.#emit({ type: "sent", to: name, id, text });
    return id;
  }

  /**
   * Posts `text` for `name` to the CA's mailbox, sealed and signed for them
   * (client/mailbox.ts); resolves with the id once the CA holds it (`queued`),
   * and `delivered` follows when their receipt comes back. Throws what the CA or
   * the checks refuse: `ERR_QUOTA`, `ERR_NOT_FOUND` (not a member),
   * `ERR_FORBIDDEN` (their key changed), `ERR_KEY_REJECTED` (an Ed25519 key).
   * While the CA service does not answer, it resolves at once with a `warning`
   * that the message waits, and `queued` (or a `warning` that it was not sent)
   * follows when the service answers again.
   */
  async sendToMailbox(name: string, text: string, id: string = newItemId()): Promise<string> {
    checkName(name);
    if (name === this.#id.name) throw new E2eError("ERR_USAGE", "You cannot chat with yourself");
    if (text.length > MAX_TEXT_CHARS) {
      throw new E2eError(
        "ERR_USAGE",
        `Message too long: ${text.length} characters, at most ${MAX_TEXT_CHARS}`,
        { hint: "send it as a file" },
      );
    }
    this.#log.requireNoAlarm();
    const note = { text };
    const later = this.#mailboxOutcome({ to: name, kind: "message", id, note });
    const { held } = await this.#mailbox.send(name, "message", new TextEncoder().encode(text), {
      id,
      later,
      note,
    });
    if (held) this.#waits(`Message ${id} to "${name}"`);
    else later();
    return id;
  }

  // How an item for the mailbox ends: `queued` (and history) once the CA holds it, else a
  // warning. From its `note`, so that an item an earlier run held ends the same way.
  #mailboxOutcome(
    item: { to: string; kind: string; id: string; name?: string; note?: Record<string, unknown> },
  ): (e?: unknown) => void {
    const { to, id, note = {} } = item;
    if (item.kind === "message") {
      const text = String(note.text ?? "");
      return (e) => {
        if (e !== undefined) return this.#notSent(`Message ${id} to "${to}"`, e);
        this.#history.message({ id, from: this.#id.name, to, text });
        this.#emit({ type: "queued", to, id, text });
      };
    }
    if (item.kind === "file") {
      const name = item.name ?? "";
      return (e) => {
        if (e !== undefined) {
          return this.#notSent(`File ${JSON.stringify(name)} (${id}) to "${to}"`, e);
        }
        const file = { name, bytes: Number(note.bytes), sha256: String(note.sha256) };
        const path = typeof note.path === "string" ? { path: note.path } : {};
        this.#history.file({ id, from: this.#id.name, to, ...file, ...path });
        this.#emit({ type: "queued", to, id, file: name });
      };
    }
    return (e) =>
      e === undefined || this.#emit({
        type: "warning",
        message: `A room message for "${to}" could not be left in the mailbox: ${
          e instanceof Error ? e.message : e
        }`,
      });
  }

  // An item for the mailbox waits for the CA service to answer again (client/mailbox.ts send).
  #waits(what: string): void {
    this.#emit({
      type: "warning",
      message: `${what} is not sent yet: the CA service does not answer. ` +
        `It is sent when the service answers again`,
    });
  }

  // An item held for the mailbox was not sent after all (refused, or the chat stopped first).
  #notSent(what: string, e: unknown): void {
    const why = e instanceof E2eError && e.hint ? `${e.message}: ${e.hint}` : e;
    this.#emit({
      type: "warning",
      message: `${what} was not sent: ${why instanceof Error ? why.message : why}`,
    });
  }

  /**
   * Offers the file at `path` to the connected peer `name`; resolves with the
   * transfer id as soon as the offer is written. The file streams in the
   * background once they accept: `progress`, then `sent` (all of it handed to
   * the connection) and `delivered` (their SHA-256 matched), or `file_failed`
   * (declined, refused, or aborted after no progress for a while).
   */
  async sendFile(name: string, path: string): Promise<string> {
    if (isRoomName(name)) return await this.#fileToRoom(name, path);
    checkName(name);
    if (!this.#peers.get(name)?.conn.open) return await this.#fileToMailbox(name, path);
    const conn = this.#connected(name);
    try {
      const info = await Deno.stat(path);
      if (!info.isFile) throw new Error("not a file");
      using _file = await Deno.open(path);
    } catch {
      throw new E2eError("ERR_FILE", `Cannot read ${JSON.stringify(path)}`);
    }
    const offer = await conn.sendFile(path);
    return offer.id;
  }

  /**
   * The files connected peers offered that wait for an answer, each under the name it would be
   * saved under (as the `file_offer` event names it), not the one announced.
   */
  offers(): Array<FileOffer & { from: string }> {
    return [
      ...[...this.#peers].flatMap(([from, p]) => p.conn.offers.map((o) => ({ from, ...o }))),
      ...this.#mailbox.offers(),
    ].map((o) => ({ ...o, name: safeFileName(o.name) }));
  }

  /**
   * Accepts the file `id` that `name` offered: it is received into the downloads
   * folder (`file` when it arrived). Throws `ERR_FORBIDDEN` when a quota or the
   * free-space floor refuses it now (the peer is told too).
   */
  async acceptFile(name: string, id: string): Promise<void> {
    checkName(name);
    if (this.#mailbox.hasOffer(name, id)) return await this.#mailbox.acceptOffer(id);
    await this.#offerer(name).acceptOffer(id);
  }

  /** Declines the file `id` that `name` offered (a connected peer is told). */
  async declineFile(name: string, id: string): Promise<void> {
    checkName(name);
    if (this.#mailbox.hasOffer(name, id)) return await this.#mailbox.declineOffer(id);
    this.#offerer(name).declineOffer(id);
  }

  #offerer(name: string): PeerConnection {
    const p = this.#peers.get(name);
    if (!p || !p.conn.open) throw new E2eError("ERR_NOT_FOUND", `Not connected to "${name}"`);
    return p.conn;
  }

  /** Marks `name`'s key as verified (after comparing the safety number out of band). */
  async verify(name: string): Promise<void> {
    checkName(name);
    const p = this.#peers.get(name);
    if (p?.blocked) {
      throw new E2eError("ERR_USAGE", `"${name}" has a changed key`, {
        hint: `trust the new key of "${name}" first`,
      });
    }
    if (!await this.#trust.verify(name)) {
      throw new E2eError("ERR_NOT_FOUND", `No key known for "${name}"`);
    }
    if (p) p.trust = "verified";
  }

  /**
   * Accepts the new key of `name` after a key change: the connected peer's key,
   * else the directory's current one, only when it is a key the user was shown (a key
   * change kept for them, or the signer of a mailbox item held back from them): else
   * `ERR_FINGERPRINT_MISMATCH`, naming both. Mailbox items held back from them are read then.
   */
  async trust(name: string): Promise<void> {
    checkName(name);
    const p = this.#peers.get(name);
    if (!p) {
      const pinned = this.#trust.get(name);
      // Never pinned: a first contact held back (its key not the one a room's list gives them)
      // is let in once the key said changed is the directory's, or (that warning dismissed) the
      // key an item still held back from them is signed with: else that item is stranded.
      const said = !pinned &&
        (this.#keyChanges.list(name).length > 0 || this.#mailbox.heldFrom(name) > 0);
      if (!pinned && !said) throw new E2eError("ERR_NOT_FOUND", `No key known for "${name}"`);
      const current = await this.#checkDirectory(await this.#ca.lookup(name), name);
      const shownKeys = this.#keyChanges.list(name).map((c) => c.keyFingerprint);
      const shown = shownKeys.includes(current.keyFingerprint) ||
        await this.#mailbox.holdsKey(name, current.keyFingerprint);
      if (!pinned && !shown) {
        throw new E2eError("ERR_NOT_FOUND", `No key change of "${name}" to their current key`);
      }
      // Pinned already: only a key the user was shown is pinned, never whatever the directory
      // gives now (a dishonest CA could swap it between the warning and this /trust).
      if (pinned && current.keyFingerprint !== pinned.keyFingerprint && !shown) {
        const hex = (fp: string) => JSON.stringify(fp.slice(0, 16));
        const was = shownKeys.length
          ? `the key you were shown is ${shownKeys.map(hex).join(", then ")}`
          : `no key change of theirs was shown to you (the key pinned is ${
            hex(pinned.keyFingerprint)
          })`;
        throw new E2eError(
          "ERR_FINGERPRINT_MISMATCH",
          `Cannot trust "${name}": the directory gives the key ${
            hex(current.keyFingerprint)
          }, but ${was}`,
          { hint: `compare the safety number with "${name}" when they connect, then trust again` },
        );
      }
      // The same key: nothing to accept (and its verified mark stays).
      if (current.keyFingerprint !== pinned?.keyFingerprint) {
        await this.#trust.trust(name, current.keyFingerprint);
      }
      await this.#keyChanges.clear(name, current.keyFingerprint);
      await this.#mailbox.release(name);
      return;
    }
    await this.#trust.trust(name, p.conn.certificate.keyFingerprint);
    // That key's change only: another key seen for them (an impostor's) stays said.
    await this.#keyChanges.clear(name, p.conn.certificate.keyFingerprint);
    p.blocked = false;
    p.conn.quarantined = false;
    p.trust = "known";
    await this.#mailbox.release(name);
  }

  /**
   * The key changes seen and neither trusted nor dismissed yet (of `name` only, when given),
   * oldest first: kept across restarts (client/key_changes.ts).
   */
  keyChanges(name?: string): KeyChange[] {
    return this.#keyChanges.list(name);
  }

  /**
   * Dismisses the key change of `name` to the key `keyFingerprint` (the user read the warning):
   * it is no longer kept. Mailbox items held back from `name` stay held, and a `warning` says so
   * (`trust` still reads them). Throws ERR_NOT_FOUND when there is none such.
   */
  async dismissKeyChange(name: string, keyFingerprint: string): Promise<void> {
    checkName(name);
    if (!(await this.#keyChanges.clear(name, keyFingerprint))) {
      throw new E2eError(
        "ERR_NOT_FOUND",
        `No key change of "${name}" to the key ${JSON.stringify(keyFingerprint.slice(0, 64))}`,
      );
    }
    const held = this.#mailbox.heldFrom(name);
    if (held) {
      const one = held === 1;
      this.#emit({
        type: "warning",
        peer: name,
        message: `${one ? "A mailbox item" : `${held} mailbox items`} from "${name}" ` +
          `${one ? "is" : "are"} still held back: ${one ? "its" : "their"} key changed. ` +
          `Compare the safety number, then trust the new key to read ${one ? "it" : "them"}.`,
      });
    }
  }

  /** Closes the connection to `name`. */
  close(name: string): void {
    checkName(name);
    const p = this.#peers.get(name);
    if (!p) throw new E2eError("ERR_NOT_FOUND", `Not connected to "${name}"`);
    p.conn.close("closed by you");
  }

  /** The connected peers, oldest connection first. */
  peers(): PeerSummary[] {
    return [...this.#peers].map(([name, p]) => ({
      name,
      trust: p.blocked ? "changed" : p.trust,
      fingerprint: p.conn.certificate.fingerprint,
      keyFingerprint: p.conn.certificate.keyFingerprint,
      via: p.via,
    }));
  }

  /**
   * Undefined while `name` (a connected peer, or the members of a room) takes more of our input
   * at once; past 4 MiB unsent, a promise that resolves once it has read most of it, or its
   * connection closed ({@linkcode PeerConnection.whenWritable}): the faces wait for it before
   * the next line.
   */
  whenWritable(name: string): Promise<void> | undefined {
    if (isRoomName(name)) return this.rooms.whenWritable(name);
    return this.#peers.get(name)?.conn.whenWritable();
  }

  /** Whether `name` is connected. */
  isConnected(name: string): boolean {
    return this.#peers.has(name);
  }

  /** Whether we pinned a key for `name` (talked before; a file to them may go by mailbox). */
  isKnown(name: string): boolean {
    return this.#trust.get(name) !== undefined;
  }

  /** Standing alarms about the CA's issuance log (docs/TRANSPARENCY.md). */
  logAlarms(): Array<{ message: string; serial?: string; fingerprint?: string }> {
    return this.#log.alarms;
  }

  /** Names of those whose invitation waits for us to accept. */
  invitations(): string[] {
    return this.#invitations.names();
  }

  /** The safety number to compare with `name` out of band (their key: connected, or pinned). */
  safetyNumber(name: string): string {
    checkName(name);
    const key = this.#peers.get(name)?.conn.certificate.keyFingerprint ??
      this.#trust.get(name)?.keyFingerprint;
    if (!key) {
      throw new E2eError("ERR_NOT_FOUND", `No key known for "${name}"`, { hint: "connect first" });
    }
    return safetyNumber({ name: this.#id.name, key: this.#id.certificate.keyFingerprint }, {
      name,
      key,
    });
  }

  /** The last `limit` messages and files of the conversation with `name`, oldest first. */
  async history(name: string, limit = 50): Promise<HistoryEntry[]> {
    if (!isRoomName(name)) checkName(name);
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new E2eError(
        "ERR_USAGE",
        `History length must be a positive whole number, not ${limit}`,
      );
    }
    return await this.#history.read(name, limit);
  }

  /** The conversations kept in the history, the most recent first. */
  async conversations(): Promise<Array<{ name: string; last: string }>> {
    return await this.#history.conversations();
  }

  /** Closes every connection, the listener, the CRL refresh and the CA poll. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#watchTimer);
    clearTimeout(this.#retryTimer);
    this.#renewal.stop();
    this.#invitations.stop();
    this.#mailbox?.stop();
    this.#revocation.stop();
    await this.#rooms.stop();
    const open = [...this.#admitting.keys(), ...[...this.#peers.values()].map((p) => p.conn)];
    for (const conn of open) conn.close("we quit");
    this.#guard?.stop(); // else it would listen again after the close
    // Give peers a moment to read our bye, and the CA to hear of invitations we took up; then
    // stop waiting for them.
    await Promise.race([
      Promise.all([
        new Promise<void>((resolve) => this.#server.close(() => resolve())),
        this.#invitations.told(),
      ]),
      new Promise<void>((resolve) => setTimeout(resolve, 1_000)),
    ]);
    await this.#history.flush();
    this.#history.close();
    await this.#quota.flush();
  }

  // A file to a room: offered to each member over its own connection, as a file to a peer is
  // (consent, quotas), marked with the room; members not connected now are named in a warning.
  // Resolves with the first transfer's id (each member's transfer has its own).
  async #fileToRoom(room: string, path: string): Promise<string> {
    const members = this.#rooms.members(room).members.map((m) => m.name)
      .filter((n) => n !== this.#id.name);
    try {
      if (!(await Deno.stat(path)).isFile) throw new Error("not a file");
    } catch {
      throw new E2eError("ERR_FILE", `Cannot read ${JSON.stringify(path)}`);
    }
    const ids: string[] = [];
    const missed: string[] = [];
    for (const name of members) {
      const p = this.#peers.get(name);
      if (!p?.conn.open || p.blocked || !p.conn.rooms) {
        missed.push(name);
        continue;
      }
      try {
        ids.push((await p.conn.sendFile(path, { room })).id);
      } catch (e) {
        missed.push(name);
        this.#emit({
          type: "warning",
          message: `${room}: the file was not offered to "${name}": ${
            e instanceof Error ? e.message : e
          }`,
        });
      }
    }
    if (missed.length) {
      this.#emit({
        type: "warning",
        message: `${room}: the file goes only to members connected now; not to ${
          missed.map((n) => `"${n}"`).join(", ")
        }`,
      });
    }
    if (!ids.length) {
      throw new E2eError("ERR_NOT_FOUND", `No member of ${room} is connected to take the file`);
    }
    const info = await Deno.stat(path);
    this.#history.file({
      id: ids[0],
      from: this.#id.name,
      to: room,
      name: announcedName(path),
      path,
      bytes: info.size,
    });
    return ids[0];
  }

  // A file for a member who is not connected: read whole (up to the mailbox's cap) and posted.
  async #fileToMailbox(name: string, path: string): Promise<string> {
    let bytes: Uint8Array;
    try {
      const info = await Deno.stat(path);
      if (!info.isFile) throw new Error("not a file");
      if (info.size > MAX_MAILBOX_FILE_BYTES) {
        throw new E2eError(
          "ERR_TOO_LARGE",
          `File too large for the mailbox: ${formatSize(info.size)}, at most ${
            formatSize(MAX_MAILBOX_FILE_BYTES)
          }`,
          { hint: `send it while "${name}" is online` },
        );
      }
      bytes = await Deno.readFile(path);
    } catch (e) {
      if (e instanceof E2eError) throw e;
      throw new E2eError("ERR_FILE", `Cannot read ${JSON.stringify(path)}`);
    }
    this.#log.requireNoAlarm();
    const fileName = announcedName(path);
    const id = newItemId();
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const note = { path, bytes: bytes.length, sha256 };
    const later = this.#mailboxOutcome({ to: name, kind: "file", id, name: fileName, note });
    const { held } = await this.#mailbox.send(name, "file", bytes, {
      name: fileName,
      id,
      later,
      note,
    });
    if (held) this.#waits(`File ${JSON.stringify(fileName)} (${id}) to "${name}"`);
    else later();
    return id;
  }

  // A first contact with `name` through the mailbox (no key pinned): when a room we are in lists
  // `name` with another key than `keyFingerprint`, the room's list and the CA disagree. Either may
  // be the dishonest one (a CA's second certificate for the name, or a creator who lists a key
  // nobody holds), so it is no verdict on the item: it is a changed key (held back, still sealed,
  // until `/trust NAME`), and nothing is pinned meanwhile. Returns the room whose list disagrees.
  #listedElsewhere(name: string, keyFingerprint: string): string | undefined {
    if (this.#trust.get(name)) return undefined; // pinned: the pin decides
    return this.#rooms.listedKeys(name).find((l) => l.keyFingerprint !== keyFingerprint)?.room;
  }

  // What the mailbox needs of the chat: keys, the directory, our checks, and its news.
  #mailboxHost(): MailboxHost {
    return {
      self: this.#id.name,
      ca: this.#ca,
      key: () => this.#id.keyFile(),
      certificate: () => this.#id.certificate.pem,
      caCertificate: this.#id.anchor.pem,
      directory: async (name) => {
        return await this.#checkDirectory(await this.#ca.lookup(name), name);
      },
      fresh: () => this.#revocation.ensureFresh(),
      checkSigner: async (pem, name) => {
        // Revoked only as superseded is no verdict on its key: the sender renewed since (the
        // key check below takes it only when its key is still the name's). Any other reason
        // (a compromise) refuses, whatever key the name has now.
        const cert = checkPeer(pemDecode(pem, "CERTIFICATE"), this.#id.anchor, {
          name,
          isRevoked: (s) => this.#revocation.isRevoked(s) && !this.#revocation.isSuperseded(s),
        });
        // Like a peer's certificate, it must be in the issuance log: the directory's current one
        // (proved), or an earlier one for the same key (renewed since it was signed). One
        // superseded by a certificate for another key is refused: a key replaced (after a theft,
        // say) must not vouch for what was signed with it.
        const current = await this.#checkDirectory(await this.#ca.lookup(name), name);
        if (current.keyFingerprint !== cert.keyFingerprint) {
          throw new E2eError(
            "ERR_PEER_REJECTED",
            this.#revocation.isRevoked(cert.serial)
              ? `serial ${cert.serial} was superseded by a certificate for another key`
              : `the key is not the one the directory names for "${name}"`,
          );
        }
        return cert;
      },
      observe: async (name, key) => {
        const listed = this.#listedElsewhere(name, key);
        const state = listed === undefined ? await this.#trust.observe(name, key) : "changed";
        if (listed !== undefined) {
          this.#emit({
            type: "warning",
            peer: name,
            message: `The key of "${name}" is not the one the member list of ${listed} gives ` +
              `them (/room members ${listed} shows it)`,
          });
        }
        if (state === "new") this.#firstSeen.add(name);
        if (state === "changed") {
          this.#emit({ type: "key_changed", peer: name, keyFingerprint: key, via: "mailbox" });
        }
        return state;
      },
      store: async (item) => {
        // Kept in the order it arrived, with the time it arrived (what the history and the page
        // order by): the sending time is the sender's claim (up to a day ahead, 8 days back),
        // and a peer could place its item anywhere among ours with it. Kept apart, as `sent`.
        const sent = item.sent;
        // A room's message: the room checks its author's signature and shows it in order.
        if (item.kind === "room") {
          // Its history lines are its only copy once the CA's is deleted: on disk, synced, or it
          // stays at the CA. The room has shown it by then: tried again, it is recorded again.
          let records = this.#roomOwed.get(item.id);
          if (records) { for (const r of records) this.#history.roomMessage(r); }
          else {
            const payload = new TextDecoder().decode(item.payload);
            records = this.#rooms.fromMailbox(item.from, payload, { id: item.id });
            // Held apart until its member list is here: on disk, synced, before the CA's copy
            // goes, or it stays at the CA (a stop while it is held must not lose it).
            if (this.#rooms.holds(item.id)) {
              try {
                this.#roomHeld.put({ id: item.id, from: item.from, payload });
              } catch (e) {
                throw new E2eError(
                  "ERR_FILE",
                  `Cannot keep a room message from "${item.from}" that waits for its member ` +
                    `list in "${this.#id.home.mailboxRoomHeld}": ${systemReason(e)}`,
                  { cause: e },
                );
              }
              return () => {};
            }
            // Owed on disk before the room's state (written a moment later) says it was shown:
            // a restart before its lines are synced must not take it for a copy and record
            // nothing. When that write fails too, they are owed in memory.
            if (records.length && !this.#roomOwed.put(item.id, records)) {
              this.#emit({
                type: "warning",
                peer: item.from,
                message: `Cannot keep the history lines of a room message from "${item.from}" in ` +
                  `"${this.#id.home.mailboxRoomOwed}": they are owed in memory only until the ` +
                  `history is written, and lost if the client stops before`,
              });
            }
          }
          const rooms = new Map(records.map((r) => [r.roomId, r.room]));
          for (const [roomId, room] of rooms) await this.#history.persistRoom(room, roomId);
          this.#roomOwed.drop(item.id);
          return () => {};
        }
        if (item.kind === "message") {
          const text = new TextDecoder().decode(item.payload);
          const ref = this.#history.message({
            id: item.id,
            from: item.from,
            to: this.#id.name,
            text,
            sent,
          });
          // Its only copy once the CA's is deleted: on disk, synced, or it stays at the CA.
          await this.#history.persist(item.from);
          return () =>
            this.#emit({
              type: "message",
              from: item.from,
              text,
              id: item.id,
              via: "mailbox",
              ref,
            });
        }
        const size = item.payload.length;
        const sha256 = createHash("sha256").update(item.payload).digest("hex");
        // Stored before a crash (or a failed write) that came before its id was marked seen: its
        // file is kept and its line synced already. That copy is the one shown, not a second one.
        const kept = await this.#savedMailboxFile(item.from, { id: item.id, sent, sha256, size });
        if (kept) {
          const file = { id: item.id, ...receivedName(item.name!, kept.path), ...kept };
          return () =>
            this.#emit({
              type: "file",
              from: item.from,
              ...file,
              bytes: size,
              sha256,
              via: "mailbox",
            });
        }
        // Files that need consent came as offers first (askFirst); here only the quotas decide.
        const refused = this.#quota.refusal(item.from, size);
        if (refused) throw new E2eError("ERR_FORBIDDEN", `file ${item.id} refused: ${refused}`);
        const giveBack = this.#quota.take(item.from, size);
        let path: string;
        try {
          const incoming = await IncomingFile.start(this.#downloads, item.name!, size, sha256);
          try {
            await incoming.write(item.payload);
            path = await incoming.finish();
          } catch (e) {
            await incoming.abort();
            throw e;
          }
        } catch (e) {
          giveBack();
          throw e;
        }
        const file = { id: item.id, ...receivedName(item.name!, path), path, bytes: size, sha256 };
        let ref: string | undefined;
        try {
          // As a message's: counted for the quotas and its line synced, or the item stays at the
          // CA (and the file goes, its share of the quotas given back: stored again when it is
          // tried again). As a direct file's (#peerEvents).
          await this.#quota.stored(item.from, path, size);
          ref = this.#history.file({ from: item.from, to: this.#id.name, ...file, sent });
          await this.#history.persist(item.from);
        } catch (e) {
          this.#quota.unstored(item.from, path, size);
          await Deno.remove(path).catch(() => {});
          giveBack();
          throw e;
        }
        return () => this.#emit({ type: "file", from: item.from, ...file, via: "mailbox", ref });
      },
      delivered: (to, id) => {
        this.#history.delivered(to, id);
        this.#emit({ type: "delivered", to, id });
      },
      // As for a peer's file: taken without asking only from a pinned key, up to --auto-accept.
      // A key first seen in this run is "new" for all it sends in this run, as a peer's key is
      // for the whole of its first connection (a message first must not pin it for the file).
      askFirst: (from, bytes, state) =>
        state === "new" || this.#firstSeen.has(from) || bytes > this.#quota.limits.autoAccept,
      offer: (from, offer) =>
        this.#emit({
          type: "file_offer",
          from,
          ...offer,
          name: safeFileName(offer.name), // the name it is saved under, shown before consent
          via: "mailbox",
        }),
      warning: (message) => this.#emit({ type: "warning", message }),
      away: (e) => this.#caAway(e),
      back: () => this.#caBack(),
      // Held items are kept sealed as the history is (an encrypted key); an earlier run's end
      // as this run's do.
      unsentKey: { key: this.#id.historyKey(), seal: this.#id.keyEncrypted },
      resume: (item) => this.#mailboxOutcome(item),
    };
  }

  // The file of a mailbox item that an earlier try stored and recorded (same sender, id, sending
  // time and digest), if it is still where its history line says, with that digest: its path and
  // that line's ref. Undefined when there is none to take: then it is stored as a new one.
  async #savedMailboxFile(
    from: string,
    item: { id: string; sent?: Date; sha256: string; size: number },
  ): Promise<{ path: string; ref?: string } | undefined> {
    // A history that cannot be read keeps no copy we could find: stored as a new one, whose line's
    // write then says what is wrong.
    const saved = await this.#history.savedFile(from, item).catch(() => undefined);
    if (!saved) return undefined;
    try {
      if (!(await Deno.lstat(saved.path)).isFile) return undefined; // no link followed
      // Read and write: a FIFO put in its place meanwhile (a shared folder) cannot block the open.
      using file = await Deno.open(saved.path, { read: true, write: true });
      const info = await file.stat();
      if (!info.isFile || info.size !== item.size) return undefined;
      const bytes = await readUpTo(file, item.size);
      return createHash("sha256").update(bytes).digest("hex") === item.sha256 ? saved : undefined;
    } catch {
      return undefined; // gone, moved, unreadable: stored again
    }
  }

  // A look at the CA service (invitations, mailbox) got no answer: the user was warned, and is
  // told once, by `ca_back`, when one answers again. A refusal is an answer.
  #caAway(e: unknown): void {
    if (e instanceof E2eError && e.code === "ERR_NETWORK") this.#away ??= Date.now();
  }

  #caBack(): void {
    if (this.#away === undefined || this.#stopped) return;
    const since = this.#away;
    this.#away = undefined;
    const s = Math.round((Date.now() - since) / 1000);
    const gap = s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
    this.#emit({
      type: "ca_back",
      since: new Date(since).toISOString(),
      message: `The CA service answers again (after ${gap} without an answer)`,
    });
  }

  #serverTls(): tls.TlsOptions {
    return serverOptions(this.#id.credentials, this.#id.anchor, {
      requireCert: true,
      alpn: [...ALPN_OFFERED],
      tls13Only: true,
    });
  }

  // A new certificate for our key, in the issuance log, presented from now on: by the listener
  // (new handshakes; connected peers keep their sessions), by new outgoing connections and to
  // the CA. The key is the same, so peers' pins stay valid. A renewal whose log check fails is
  // kept (id/renewal.json) and our CA client is back on the certificate peers see, which the CA
  // refuses now, superseded: said at once, and the next attempt (with backoff) checks the kept
  // one again rather than asking for another.
  async #renew(): Promise<void> {
    let id: Identity;
    try {
      id = await this.#id.renew({
        ca: this.#ca,
        log: this.#log,
        // Taken (it is for our key), but a renewal needs only the key and certificate: one this
        // home did not make may be a thief's, and the user must hear of it.
        onEarlier: ({ issuedAt, asked }) => {
          if (asked) return; // a lost reply of ours, given again
          const { message, hint } = unaskedRenewalWords(this.#id.name, issuedAt);
          this.#emit({ type: "warning", message: `${message}: ${hint}`, about: "identity" });
        },
      });
    } catch (e) {
      if (!(await this.#id.renewalPending())) throw e;
      const kept = new E2eError(
        e instanceof E2eError ? e.code : "ERR_FILE", // not the CA's answer: our own files
        "the CA renewed it, but the new certificate is not proved yet to be in the CA's " +
          `issuance log (${e instanceof Error ? e.message : e}): it is kept in id/renewal.json ` +
          "and checked again at each next attempt; until then the CA refuses the certificate " +
          "in use, which it superseded",
        { cause: e },
      );
      this.#keptRenewals.add(kept);
      throw kept;
    }
    this.#id = id;
    this.#server.setSecureContext(this.#serverTls());
  }

  async #listenOn(host: string, port: number): Promise<void> {
    // It stops listening at its cap (the kernel refuses what comes, holding no descriptor here)
    // rather than accept and close: a burst of those ran the process out of descriptors, and
    // Deno's accept loop then stops for good.
    const guard = guardConnections(this.#server, {
      maxConnections: Math.max(
        8,
        this.#budget.connections - Math.floor(this.#budget.connections / 4),
      ),
      maxPerAddress: MAX_CONNECTIONS_PER_ADDRESS,
      handshakeMs: HANDSHAKE_TIMEOUT_MS,
      onRefused: (message) => this.#emit({ type: "warning", message: `Listener: ${message}` }),
      group: this.#budget.group,
    });
    this.#guard = guard;
    this.#server.on("secureConnection", (socket: tls.TLSSocket) => {
      this.#admit(socket).catch((e) => {
        socket.destroy();
        // An admitted peer that left before its hello (#attach): said once, never connected.
        if (e instanceof E2eError && !this.#stopped) {
          this.#emit({ type: "warning", message: e.message });
        }
      });
    });
    await guard.listen(port, host).catch((e) => {
      guard.stop();
      throw new E2eError("ERR_NETWORK", `Cannot listen on ${host}:${port}`, {
        cause: e,
        hint: "is that port in use, or the address not this machine's? " +
          "leave --listen out to take a free port on 127.0.0.1",
      });
    });
    const address = this.#server.address() as { address: string; port: number };
    this.#listen = `${host}:${address.port}`;
  }

  // The listener admits only a peer we invited, with the key the directory gave us.
  async #admit(socket: tls.TLSSocket, via: Via = "direct"): Promise<void> {
    const admitted = deadline(socket, HANDSHAKE_TIMEOUT_MS);
    let cert: CertificateInfo;
    let name: string;
    let reason: Refusal | undefined; // what a member is told if we refuse it
    try {
      // As before an outgoing connection: a CRL over a minute old is fetched again first.
      await this.#revocation.ensureFresh();
      this.#log.requireNoAlarm();
      if (!ALPN_OFFERED.includes(socket.alpnProtocol || "")) {
        throw new E2eError("ERR_PEER_REJECTED", "no ALPN e2e-chat/1");
      }
      // A member's certificate of our CA, valid now (else it is told nothing).
      name = checkPeer(peerCertificateDer(socket), this.#id.anchor).commonName;
      await this.#inviting.get(name);
      const invited = this.#invited.get(name);
      reason = invited && invited.expires >= Date.now()
        ? this.#refusal(socket, name, invited.keyFingerprint)
        : this.#refusal(socket, name) ?? "not-invited";
      if (!invited || reason) throw new E2eError("ERR_PEER_REJECTED", `not admitted: ${name}`);
      cert = this.#checkPeerSocket(socket, name, invited.keyFingerprint);
      reason = undefined; // a check that fails for want of the CA says nothing of the member
      reason = await this.#notLogged(cert, invited.fingerprint);
      if (reason) throw new E2eError("ERR_PEER_REJECTED", NOT_LOGGED[reason]);
    } catch {
      // Refused: nothing they sent is read or shown.
      refuse(socket, reason);
      return;
    }
    admitted();
    this.#invited.delete(name);
    await this.#attach(socket, name, cert, via);
  }

  // Why the member's certificate on `socket` would be refused as `name` with `keyFingerprint` (any
  // key when undefined), as a `refused` frame says it; undefined when it would not be (or for a
  // reason that is not said: then #checkPeerSocket refuses it, and the peer is told nothing).
  #refusal(socket: tls.TLSSocket, name: string, keyFingerprint?: string): Refusal | undefined {
    let presented: CertificateInfo;
    try {
      presented = checkPeer(peerCertificateDer(socket), this.#id.anchor);
    } catch {
      return undefined;
    }
    if (presented.commonName !== name) return "name-mismatch";
    if (this.#revocation.isRevoked(presented.serial)) {
      return this.#revocation.isSuperseded(presented.serial) ? "superseded" : "revoked";
    }
    if (keyFingerprint !== undefined && presented.keyFingerprint !== keyFingerprint) {
      return "key-changed";
    }
    return undefined;
  }

  #checkPeerSocket(socket: tls.TLSSocket, name: string, keyFingerprint: string): CertificateInfo {
    return checkPeer(peerCertificateDer(socket), this.#id.anchor, {
      name,
      keyFingerprint,
      isRevoked: (s) => this.#revocation.isRevoked(s),
    });
  }

  // The directory's certificate for `name`: ours, that name, not revoked, and in the issuance log.
  async #checkDirectory(reply: CertificateReply, name: string): Promise<CertificateInfo> {
    return await checkDirectoryAnswer(reply, name, {
      anchor: this.#id.anchor,
      revocation: this.#revocation,
      log: this.#log,
    });
  }

  // Undefined when the certificate a peer presents is in the log too: the one the directory
  // proved, or (after a renewal) the directory's current one, proved again. Else why not:
  // `superseded` for one older than the directory's (the CA keeps one certificate a name: the
  // peer renewed elsewhere, or joined again, and this one is not on our CRL yet), `not-logged`
  // for a newer one (which the CA did not log). Older: a notAfter no later (it is the signing's
  // time and its --days, to the second), or an earlier notBefore (one signed long before with
  // more days); notBefore alone will not do: it is backdated from when the signing openssl
  // started (ca/authority.ts), so signings a moment apart share it, or even swap it.
  // Throws when that cannot be told (the CA does not answer, or its answer is not usable): that
  // is no finding about the peer.
  async #notLogged(
    cert: CertificateInfo,
    proved: string,
  ): Promise<"superseded" | "not-logged" | undefined> {
    if (cert.fingerprint === proved) return undefined;
    const current = await this.#checkDirectory(
      await this.#ca.lookup(cert.commonName),
      cert.commonName,
    );
    if (current.fingerprint === cert.fingerprint) return undefined;
    const older = cert.notAfter.getTime() <= current.notAfter.getTime() ||
      cert.notBefore.getTime() < current.notBefore.getTime();
    return older ? "superseded" : "not-logged";
  }

  // New entries of the log, looking for certificates for our name that are not ours.
  // A look that fails (the CA away or busy) is tried again soon, not only at the next interval.
  #watchLog(retry = 0): void {
    if (this.#watching) return;
    this.#watching = true;
    this.#log.watch(this.#id.name, this.#id.certificate.keyFingerprint).catch((e) => {
      if (e instanceof E2eError && e.code === "ERR_LOG_ALARM") return; // reported as log_alarm
      if (retry === 0) {
        this.#emit({
          type: "warning",
          message: `Cannot check the CA's issuance log: ${e instanceof Error ? e.message : e}`,
        });
      }
      if (retry < LOG_RETRIES && !this.#stopped) {
        this.#retryTimer = setTimeout(() => this.#watchLog(retry + 1), LOG_RETRY_MS * 2 ** retry);
      }
    }).finally(() => (this.#watching = false));
  }

  // A checked connection becomes the current one for `name` once the peer's hello arrives, on
  // either side. When we dialled (`dialled`), the hello shows that the peer admitted us: its
  // listener checks us after the TLS handshake our side already calls complete, and refuses by
  // closing. When we admitted the peer (our listener, or the relay as its server), it checks us
  // as we check it, and its hello says it is content. A close or a silence before it: never
  // connected (no `connected`, no `disconnected`), and the returned promise rejects saying why.
  async #attach(
    socket: tls.TLSSocket,
    name: string,
    cert: CertificateInfo,
    via: Via,
    dialled = false,
  ): Promise<PeerSummary> {
    const trust = await this.#trust.observe(name, cert.keyFingerprint);
    const conn = new PeerConnection(socket, name, cert, {
      downloads: this.#downloads,
      events: this.#peerEvents(),
      checkpoint: this.#log.latest,
      files: this.#filePolicy(),
      sendStallMs: this.#sendStallMs,
    });
    conn.quarantined = trust === "changed";
    if (trust === "changed") {
      this.#emit({
        type: "key_changed",
        peer: name,
        keyFingerprint: cert.keyFingerprint,
        via: "connection",
      });
    }
    const admitted = Promise.withResolvers<PeerSummary>();
    const refused = (why: string) =>
      admitted.reject(
        dialled
          ? new E2eError("ERR_PEER_REJECTED", `"${name}" did not admit us: ${why}`, {
            hint: `the invitation may be one "${name}" no longer holds: ask for a new one`,
          })
          : new E2eError(
            conn.refusal === undefined ? "ERR_NETWORK" : "ERR_PEER_REJECTED",
            `Not connected to "${name}": ${why}`,
          ),
      );
    // A close we are not told of (the socket gone silent) ends the wait as well.
    const timer = setTimeout(() => {
      refused(`no hello within ${HANDSHAKE_TIMEOUT_MS / 1000} s`);
      conn.close("no hello");
    }, HANDSHAKE_TIMEOUT_MS);
    this.#admitting.set(conn, {
      hello: () => admitted.resolve(this.#current(conn, trust, via)),
      closed: (reason) =>
        refused(
          conn.refusal !== undefined
            ? (dialled ? "" : "it refused us: ") + refusalWords(conn.refusal)
            : (dialled ? "it closed the connection" : "the connection closed") +
              " before its hello" + (reason === "closed" ? "" : ` (${reason})`),
        ),
    });
    conn.start();
    try {
      return await admitted.promise;
    } finally {
      clearTimeout(timer);
      this.#admitting.delete(conn);
    }
  }

  // `conn` is the connection to its peer from now on (one it replaces closes, and says nothing).
  #current(conn: PeerConnection, trust: KeyState, via: Via): PeerSummary {
    const { name, certificate: cert } = conn;
    const blocked = conn.quarantined;
    const old = this.#peers.get(name)?.conn;
    this.#peers.set(name, { conn, trust, blocked, via });
    old?.close("replaced by a new connection");
    this.#emit({
      type: "connected",
      peer: name,
      fingerprint: cert.fingerprint,
      keyFingerprint: cert.keyFingerprint,
      trust,
      via,
    });
    if (blocked) {
      this.#emit({
        type: "warning",
        message:
          `WARNING: the key of "${name}" CHANGED since you last talked. It may be someone else. ` +
          `Nothing will be sent to or accepted from "${name}" until you compare the safety number ` +
          `out of band and trust the new key.`,
      });
    }
    return {
      name,
      trust,
      fingerprint: cert.fingerprint,
      keyFingerprint: cert.keyFingerprint,
      via,
    };
  }

  // Consent and quotas: a file is taken without asking only up to the auto-accept size and
  // from a pinned key (known or verified, not new); quotas and the free-space floor refuse.
  #filePolicy(): FilePolicy {
    const limits = this.#quota.limits;
    return {
      decide: (peer, offer, canAsk) => {
        if (offer.room !== undefined && !this.#rooms.isMember(offer.room, peer.name)) {
          return { refuse: `"${peer.name}" is not a member of ${offer.room} here` };
        }
        const refused = this.#quota.refusal(peer.name, offer.bytes);
        if (refused) return { refuse: refused };
        const p = this.#peers.get(peer.name);
        const pinned = p?.conn === peer && !p.blocked &&
          (p.trust === "known" || p.trust === "verified");
        if (pinned && offer.bytes <= limits.autoAccept) return "accept";
        if (canAsk) return "ask";
        return {
          refuse: `"${peer.name}" sends files without asking (its hello does not list "offer"): ` +
            `such files are taken only up to ${formatSize(limits.autoAccept)} from a pinned key, ` +
            `and this one is ${formatSize(offer.bytes)}${
              pinned ? "" : ` from a key first seen now`
            }; a peer that lists "offer" waits for the user to accept`,
        };
      },
      take: (peer, offer) => {
        // Asked when it came; the room's list may have changed since.
        if (offer.room !== undefined && !this.#rooms.isMember(offer.room, peer.name)) {
          return { refuse: `"${peer.name}" is not a member of ${offer.room} here` };
        }
        const refused = this.#quota.refusal(peer.name, offer.bytes);
        return refused ? { refuse: refused } : this.#quota.take(peer.name, offer.bytes);
      },
      roomId: (room) => this.#rooms.idOf(room),
    };
  }

  #peerEvents(): PeerEvents {
    return {
      message: (p, id, text) => {
        const ref = this.#history.message({ id, from: p.name, to: this.#id.name, text });
        this.#emit({ type: "message", from: p.name, text, id, ref });
      },
      delivered: (p, id, ms) => {
        const rounded = ms === undefined ? undefined : Math.round(ms * 1000) / 1000;
        this.#history.delivered(p.name, id, rounded);
        this.#emit({
          type: "delivered",
          to: p.name,
          id,
          ...(rounded === undefined ? {} : { ms: rounded }),
        });
      },
      // The peer acknowledges the file once this resolves: the file counts for the quotas and
      // has its history line, both synced, so a crash after the sender hears it arrived loses
      // neither. Either failing, the file is not kept (the peer removes it, the sender hears no
      // ack), as a mailbox file whose line cannot be written.
      file: async (p, f) => {
        // A room's file is kept in the history of the room it was accepted for (by its id).
        // (None noted: we were in no room of that name as it was accepted; it is kept nowhere.)
        const { roomId, ...shown } = f;
        let ref: string | undefined;
        try {
          await this.#quota.stored(p.name, f.path, f.bytes);
          if (f.room === undefined) {
            ref = this.#history.file({ from: p.name, to: this.#id.name, ...f });
            await this.#history.persist(p.name);
          } else if (roomId !== undefined) {
            ref = this.#history.file({ from: p.name, to: f.room, ...f });
            await this.#history.persistRoom(f.room, roomId);
          }
        } catch (e) {
          this.#quota.unstored(p.name, f.path, f.bytes);
          throw e;
        }
        this.#emit({ type: "file", from: p.name, ...shown, ref });
      },
      progress: (p, info) => this.#emit({ type: "progress", peer: p.name, ...info }),
      fileFailed: (p, info) =>
        this.#emit({
          type: "file_failed",
          peer: p.name,
          id: info.id,
          direction: info.direction,
          reason: info.reason,
          message: `File ${info.id} ${
            info.direction === "in" ? "from" : "to"
          } "${p.name}" failed: ${info.reason}`,
        }),
      // The name it would be saved under, not the one announced: what the user consents to is
      // what lands (a name padded with blanks or invisible characters shows its extension).
      offer: (p, offer) =>
        this.#emit({ type: "file_offer", from: p.name, ...offer, name: safeFileName(offer.name) }),
      fileSent: (p, info) => {
        // A room's file went into the room's history once, when it was offered.
        if (info.room === undefined) {
          this.#history.file({ from: this.#id.name, to: p.name, ...info });
        }
        this.#emit({
          type: "sent",
          to: p.name,
          id: info.id,
          file: info.name,
          ...(info.room === undefined ? {} : { room: info.room }),
        });
      },
      held: (p) =>
        this.#emit({
          type: "warning",
          message: `Did not show a message from "${p.name}": its key changed. ` +
            `Compare the safety number, then trust the new key to hear from them; ` +
            `that message is not kept (${p.name} can send it again).`,
        }),
      // A CA showing this peer another log than ours is caught here (log_alarm).
      checkpoint: (p, text) => {
        this.#log.observePeer(text, p.name).catch((e) => {
          if (e instanceof E2eError && e.code === "ERR_LOG_ALARM") return;
          this.#emit({
            type: "warning",
            message: `"${p.name}" sent a checkpoint that was not checked: ${
              e instanceof Error ? e.message : e
            }`,
          });
        });
      },
      hello: (p) => {
        this.#admitting.get(p)?.hello(); // a connection we dialled: `connected` now
        this.#rooms.hello(p);
      },
      room: (p, body) => this.#rooms.receive(p, body),
      closed: (p, reason) => {
        const admitting = this.#admitting.get(p);
        if (admitting) return admitting.closed(reason); // never connected: accept() says why
        const ours = this.#peers.get(p.name);
        // A connection replaced by a newer one: the newer one's state is the peer's, and a
        // `disconnected` now (maybe after the newer one's `connected`) would show it offline.
        if (ours?.conn !== p) return;
        this.#peers.delete(p.name);
        // Cut with no bye through the relay: the relay is the CA service's (restarted, maybe).
        if (ours.via === "relay" && reason === "closed") {
          reason = `the connection through the CA service's relay was cut ` +
            `(the service or "${p.name}" went away)`;
        }
        this.#emit({ type: "disconnected", peer: p.name, reason });
        if (!this.#peers.has(p.name)) this.#rooms.disconnected(p.name);
      },
    };
  }

  #connected(name: string): PeerConnection {
    const p = this.#peers.get(name);
    if (!p || !p.conn.open) {
      throw new E2eError("ERR_NOT_FOUND", `Not connected to "${name}"`, {
        hint: `invite "${name}", or accept their invitation`,
      });
    }
    if (p.blocked) {
      throw new E2eError("ERR_FORBIDDEN", `Not sent: the key of "${name}" changed`, {
        hint: "compare the safety number, then trust the new key",
      });
    }
    return p.conn;
  }

  // A peer revoked while connected is dropped now, not at its next connection.
  #dropRevoked(): void {
    for (const [name, p] of this.#peers) {
      if (this.#revocation.isRevoked(p.conn.certificate.serial)) {
        p.conn.close("its certificate was revoked");
        this.#emit({
          type: "warning",
          peer: name,
          message: `"${name}" was revoked by the CA: disconnected`,
        });
      }
    }
  }

  #emit(event: CoreEvent): void {
    // Kept before anyone hears of it: a face that asks for the key changes then finds this one.
    if (event.type === "key_changed") {
      const { peer, keyFingerprint, via } = event;
      this.#keyChanges.record({ peer, keyFingerprint, via }).catch((e) =>
        this.#emit({
          type: "warning",
          message: `Cannot keep the key change of "${peer}": ${systemReason(e)}`,
          peer,
        })
      );
    }
    for (const listener of this.#listeners) listener(event);
  }
}

// Why the CA no longer takes our certificate, with what to do; undefined while it does. The CA
// says which (revoked, superseded, expired: lib/standing.ts); an older service only that it is
// "revoked or superseded", and our own clock and CRL say the rest.
function ownCertificateRefused(
  id: Identity,
  revocation: Revocation,
  now: number = Date.now(),
): E2eError | undefined {
  const held = id.certificate;
  const refusal = revocation.refusal;
  let standing = refusal instanceof CertificateRefused ? refusal.standing : undefined;
  if (standing?.status !== "expired" && held.notAfter.getTime() <= now) {
    standing = { status: "expired", notAfter: held.notAfter };
  }
  if (!standing && revocation.isRevoked(held.serial)) standing = { status: "revoked" };
  if (standing) {
    const { message, hint } = ownCertificateWords(held, standing);
    return new E2eError("ERR_FORBIDDEN", message, { hint, cause: refusal });
  }
  // An older service, which does not say which: both, as it said.
  return refusal &&
    new E2eError("ERR_FORBIDDEN", "The CA refuses your certificate: it was revoked or superseded", {
      cause: refusal,
    });
}

/** Why one side refuses the other, as its `refused` frame says it (docs/PROTOCOL.md §1). */
type Refusal =
  | "not-invited"
  | "revoked"
  | "key-changed"
  | "name-mismatch"
  | "not-logged"
  | "superseded";

const REFUSALS: Record<Refusal, string> = {
  "not-invited": "it holds no current invitation of ours",
  "revoked": "it finds our certificate revoked",
  "key-changed": "our key is not the one it expected of us",
  "name-mismatch": "it expected someone else at this address",
  "not-logged": "the CA's directory and issuance log give it another certificate of ours",
  "superseded": "the CA's directory and issuance log give it a newer certificate of ours, " +
    "which superseded this one: we renewed, or joined again, elsewhere",
};

const NOT_LOGGED = {
  "not-logged": "The peer's certificate is not the one the CA's directory and issuance log give",
  "superseded": "The peer's certificate was superseded: the CA's directory and issuance log " +
    "give a newer one",
};

// A refusal's code with what it means (a code we do not know, from a newer peer, as it is: the
// frame allows only a-z, 0-9 and -).
function refusalWords(code: string): string {
  const words = Object.hasOwn(REFUSALS, code) ? REFUSALS[code as Refusal] : undefined;
  return words ? `${code} (${words})` : code;
}

// Refuses the peer on `socket` after the handshake: nothing it sent is read. A member refused for
// a `reason` hears it in one `refused` frame in place of our hello, if its ALPN says it reads one
// (an older peer is told nothing, as before, and the socket goes at once); the socket then stays
// REFUSAL_LINGER_MS, unread: destroyed with its input unread at once, it would reset the
// connection, which can lose the frame before the peer reads it.
function refuse(socket: tls.TLSSocket, reason: Refusal | undefined): void {
  if (reason === undefined || socket.alpnProtocol !== ALPN_REFUSALS || socket.destroyed) {
    socket.destroy();
    return;
  }
  socket.on("error", () => {});
  socket.end(encodeFrame({ type: "refused", reason }));
  setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref?.();
}
