/**
 * Every path of a client's home folder, in one place. Nothing else in the
 * client joins a file name onto the home.
 *
 * ```
 * HOME/                 0700
 *   id/                 0700  the identity (client/identity.ts, client/keys.ts)
 *     key.pem           0600  our private key; never sent anywhere
 *     request.csr             the latest certificate request
 *     cert.pem                our certificate
 *     renewal.json      0600  a renewal's reply (certificate, log proof) kept until its log
 *                             check passes (client/identity.ts); then it replaces cert.pem
 *     renewal.lock      0600  held while a process of the home renews (empty)
 *     renewal-asked.json 0600 the renewals asked for with cert.pem's certificate, not finished
 *                             yet: its serial, when each was sent and ended, this home's clock;
 *                             none the CA refused or never got (client/identity.ts)
 *     ca.crt                  the pinned CA certificate
 *     identity.json           name, CA URL, CA fingerprint, key type
 *   joining/            0700  a join not finished yet (client/identity.ts): key.pem and
 *                             identity.json as in id/, kept for a retry; renamed to id/ when done
 *   peers.json          0600  trust on first use (client/trust.ts)
 *   key-changes.json    0600  key changes seen, not trusted nor dismissed yet, per peer: the
 *                             key's fingerprint, when and where seen (client/key_changes.ts)
 *   log.json            0600  the issuance log as we last saw it (client/transparency.ts)
 *   log.json.lock       0600  held while a process of the home writes log.json (empty)
 *   crl-number          0600  the newest CRL number accepted (client/revocation.ts)
 *   downloads/          0700  received files (client/files.ts)
 *   history/            0700  conversations (client/history.ts)
 *   received.json       0600  received files the quotas count across runs (client/files.ts)
 *   uploads/            0700  files from the web page, each in a 0700 folder until sent
 *   mailbox/            0700  the mailbox (client/mailbox.ts)
 *     outbox.json       0600  what we posted and wait a receipt for
 *     seen.json         0600  item ids we received (replays are dropped)
 *     room-owed.json    0600  history lines owed for room messages from the mailbox, until
 *                             synced (client/room_owed.ts; sealed when the key is encrypted)
 *     held/             0700  items held back after a key change (CMS, still sealed)
 *     unsent/           0700  items that wait for the CA service to answer, and write-ahead
 *                             copies of those being posted: one 0600 file each, sealed when
 *                             the key is encrypted, named by the chat that holds it, which
 *                             flocks its OWNER.lock there while it runs
 *                             (client/mailbox_unsent.ts)
 *       unreadable/     0700  files of unsent/ a start could not read, moved aside, never posted
 *   rooms/              0700  rooms we are in (client/rooms.ts), one ROOMID.json each (0600)
 *   room-invitations.json 0600 room invitations waiting for our answer and those we declined
 *                             (client/rooms.ts): kept across restarts, bounded, 30 days at most
 * ```
 *
 * @module
 */
import { join } from "node:path";

/** The files of an identity folder (HOME/id, or the staging folder a join builds it in). */
export class IdFolder {
  /** The folder, 0700. */
  readonly dir: string;
  /** The files under `dir`. */
  constructor(dir: string) {
    this.dir = dir;
  }
  /** The private key, 0600. */
  get key(): string {
    return join(this.dir, "key.pem");
  }
  /** The latest certificate request. */
  get csr(): string {
    return join(this.dir, "request.csr");
  }
  /** Our certificate. */
  get cert(): string {
    return join(this.dir, "cert.pem");
  }
  /** A renewed certificate and its log proof, as the CA sent them, until the log check passes. */
  get renewal(): string {
    return join(this.dir, "renewal.json");
  }
  /**
   * A renewal this home asked for with cert.pem's certificate and has not finished: that
   * certificate's serial and when it was first asked (0600), so a reply that was lost, given again,
   * is known for ours.
   */
  get renewalAsked(): string {
    return join(this.dir, "renewal-asked.json");
  }
  /** Held while a renewal runs: one at a time per home, across processes (empty, 0600). */
  get renewalLock(): string {
    return join(this.dir, "renewal.lock");
  }
  /** The pinned CA certificate. */
  get caCert(): string {
    return join(this.dir, "ca.crt");
  }
  /** Name, CA URL and fingerprint, key type. */
  get record(): string {
    return join(this.dir, "identity.json");
  }
}

/** The layout of a client home. */
export class ClientHome {
  /** The home folder itself. */
  readonly root: string;
  /** HOME/id. */
  readonly id: IdFolder;
  /** HOME/joining: the identity folder a join builds, kept while the join is unfinished. */
  readonly joining: IdFolder;

  /**
   * The layout under `root`.
   *
   * @example
   * ```ts
   * import { ClientHome } from "./home.ts";
   * const home = new ClientHome("/tmp/alice");
   * console.log(home.id.key); // /tmp/alice/id/key.pem
   * ```
   */
  constructor(root: string) {
    this.root = root;
    this.id = new IdFolder(join(root, "id"));
    this.joining = new IdFolder(join(root, "joining"));
  }
  /** The trust store (TOFU pins and verified marks), 0600. */
  get peers(): string {
    return join(this.root, "peers.json");
  }
  /** Key changes neither trusted nor dismissed yet (client/key_changes.ts), 0600. */
  get keyChanges(): string {
    return join(this.root, "key-changes.json");
  }
  /** Where received files go unless `--downloads` says otherwise. */
  get downloads(): string {
    return join(this.root, "downloads");
  }
  /** What we know of the CA's issuance log: the latest checkpoint and how far we audited. */
  get logState(): string {
    return join(this.root, "log.json");
  }
  /** The newest CRL number accepted (client/revocation.ts): an older CRL is a replay. */
  get crlNumber(): string {
    return join(this.root, "crl-number");
  }
  /** The files received that the quotas count across runs (client/files.ts). */
  get received(): string {
    return join(this.root, "received.json");
  }
  /** Files from the web page wait here (0700), each only until it is sent. */
  get uploads(): string {
    return join(this.root, "uploads");
  }
  /** Rooms we are in: member lists and sequence numbers, one file per room (0700). */
  get rooms(): string {
    return join(this.root, "rooms");
  }
  /** Room invitations that wait and those declined, kept across restarts (0600). */
  get roomInvitations(): string {
    return join(this.root, "room-invitations.json");
  }
  /** Conversation history, one file per conversation. */
  get history(): string {
    return join(this.root, "history");
  }
  /** The mailbox's state (client/mailbox.ts), 0700. */
  get mailbox(): string {
    return join(this.root, "mailbox");
  }
  /** Items we posted and wait a receipt for, 0600. */
  get mailboxOutbox(): string {
    return join(this.mailbox, "outbox.json");
  }
  /** Ids of items we received, kept past their time to live, 0600. */
  get mailboxSeen(): string {
    return join(this.mailbox, "seen.json");
  }
  /** History lines owed for room messages from the mailbox (client/room_owed.ts), 0600. */
  get mailboxRoomOwed(): string {
    return join(this.mailbox, "room-owed.json");
  }
  /** Room messages held apart until their member list is here (client/room_held.ts), 0700. */
  get mailboxRoomHeld(): string {
    return join(this.mailbox, "room-held");
  }
  /** Items openssl failed on, tried again less often (client/mailbox.ts), 0600. */
  get mailboxRetry(): string {
    return join(this.mailbox, "retry.json");
  }
  /** Items held back after a key change, still sealed, 0700. */
  get mailboxHeld(): string {
    return join(this.mailbox, "held");
  }
  /** Items that wait for the CA service to answer (client/mailbox_unsent.ts), 0700. */
  get mailboxUnsent(): string {
    return join(this.mailbox, "unsent");
  }
}
