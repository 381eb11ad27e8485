/**
 * The client's side of the mailbox (docs/PROTOCOL.md §8): messages and files
 * for members who are not connected, sealed end to end with lib/cms.ts and
 * kept by the CA service until the recipient fetches them.
 *
 * Sending: the recipient's certificate comes from the directory (checked by
 * the chat: our CA, the name, not revoked, in the issuance log) and must carry
 * the key we pinned; the item is sealed to it, signed with our key, recorded in
 * the outbox (HOME/mailbox/outbox.json) and posted. A receipt from the
 * recipient (an item of kind "receipt") marks it delivered.
 *
 * Receiving: a fetch at start and a long poll while the chat runs. Each item
 * is opened and checked — decrypts with our key, signature chains to our CA,
 * the signer's certificate names the sender and is not revoked, the item is
 * addressed to us, not older than {@linkcode MAX_ITEM_AGE_MS}, its id not seen
 * before, and the sender's key the one we pinned (a changed key holds the item
 * back, still sealed, until the user trusts the new key). Then, in this order:
 * stored (history or downloads) and its id marked seen, durably; shown; a
 * receipt posted; acknowledged (deleted at the CA). A crash between any two
 * steps never shows an item twice: an id marked seen is only acknowledged (and
 * its receipt posted again) when it comes back. A receipt the service refuses
 * for now (the sender's mailbox full, the service busy or its disk full) is
 * owed: noted with the seen id, durably, the item acknowledged all the same, and
 * the receipt posted later (one for all owed to a sender, less often after each
 * refusal); the user is told once.
 *
 * One item's failure does not stop the others of a look: they are handled, and
 * the look then fails with its error (so the poll backs off; what waits to be sent is
 * posted all the same). Only the service not answering, or our key not unlocking, ends a look at
 * once. An item is handled
 * by one run at a time (by its id: a user trusting a key twice, a service
 * listing an offer again while the user accepts it). A direct item from a sender
 * who sent us a later one before is shown with a warning: the service may have
 * reordered their items (it can also drop one unnoticed: docs/SECURITY.md); one this run failed to
 * handle at an earlier look is said to be held back. An item dated ahead of our clock counts as
 * sent when it arrived, with a warning about its sender's clock.
 *
 * An item that fails a check (one that does not decrypt included: lib/cms.ts tells it apart from
 * our key not unlocking) is refused with a warning and acknowledged, so it does not come back; a
 * replay (an id seen before) is dropped. Only a verdict on the item refuses it: one that cannot be
 * opened now for a cause of ours (openssl killed, no temporary folder), whose signer cannot be
 * checked now (the CA failing), or that cannot be stored now (a disk error, not a quota's refusal;
 * a message whose history line cannot be written and synced) is neither shown nor acknowledged: it
 * stays at the CA and is tried again, and the user is told once for it. One openssl fails on
 * (killed, crashed, timed out: it may be what makes it so) is tried again after 1 min, then 2, 4…
 * (at most hourly), not at every look (HOME/mailbox/retry.json, by the CA's id).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  checkCmsKey,
  decodeItem,
  encodeItem,
  type ItemKind,
  type KeyFile,
  type MailboxItem,
  MAX_RECEIPT_IDS,
  newItemId,
  open,
  seal,
} from "../lib/cms.ts";
import { E2eError } from "../lib/errors.ts";
import { MAX_TEXT_CHARS } from "../lib/frames.ts";
import { ensurePrivateDir, exists, isAtomicTemp, writeFileAtomic } from "../lib/fs.ts";
import { formatSize } from "./files.ts";
import { type TakenUp, type UnsentItem, UnsentStore } from "./mailbox_unsent.ts";
import type { CertificateInfo } from "../lib/x509.ts";
import type { CaClient, MailboxRecord } from "./ca_client.ts";
import type { ClientHome } from "./home.ts";
import type { KeyState } from "./trust.ts";
import { backoffMs, pause } from "./poll.ts";

/** Largest file the mailbox carries, bytes (the service adds CMS overhead to its cap). */
export const MAX_MAILBOX_FILE_BYTES = 8 * 1024 * 1024;
/** Items older than this (the service's 7-day time to live and a day of clock skew) are refused. */
export const MAX_ITEM_AGE_MS = 8 * 86_400_000;
/** How a held file that waits for the user ends its name (HOME/mailbox/held/FROM.ID.offer.cms). */
const OFFER = ".offer.cms";
/**
 * Items held back in HOME/mailbox/held/ from one sender (offers and key changes), at most: each
 * held item has left the CA's quota, so without a cap a sender could fill our disk.
 */
export const MAX_HELD_PER_SENDER = 16;
/** Items held back in HOME/mailbox/held/ in all, at most. */
export const MAX_HELD = 64;
/** A signer check's failures that are a verdict on the signer, which refuse its item. */
const REFUSES_SIGNER = new Set(["ERR_PEER_REJECTED", "ERR_NOT_FOUND"]);
/** Failures of a receipt's post that are tried again later (the receipt is owed meanwhile). */
const RETRY_RECEIPT = new Set(["ERR_NETWORK", "ERR_QUOTA", "ERR_RATE_LIMITED", "ERR_INTERNAL"]);
/**
 * After a sender's receipts were refused `n` times in a row (not for the service being away),
 * the next try waits 1, 2, 4… minutes, at most 30: a sender whose mailbox stays full costs us a
 * sealing and a post that often, not at every look.
 */
function receiptRetryMs(n: number): number {
  return Math.min(30 * 60_000, 60_000 * 2 ** Math.min(Math.max(n - 1, 0), 5));
}
/**
 * A direct item dated more than this ahead of our clock has its sender told of their clock (the
 * item is taken up to a day ahead): two clocks minutes apart are common, hours are not.
 */
const CLOCK_AHEAD_MS = 10 * 60_000;
/**
 * Failures of an item's opening that are openssl's (it crashed, was killed, or hung until its
 * timeout) and not a verdict: the item stays at the CA, and is tried again after a while.
 */
const BACKS_OFF = new Set(["ERR_OPENSSL", "ERR_OPENSSL_TIMEOUT"]);
/**
 * After an item's opening failed `n` times so, the next try waits 1, 2, 4… minutes, at most an
 * hour: an item that makes openssl crash or hang (until its timeout) would otherwise cost that at
 * every look until the CA expires it, 7 days later.
 */
export function itemRetryMs(n: number): number {
  return Math.min(3_600_000, 60_000 * 2 ** Math.min(Math.max(n - 1, 0), 6));
}
/** Items whose tries are spaced out (HOME/mailbox/retry.json), at most (the CA lists 200). */
export const MAX_ITEM_RETRIES = 256;
/** Longest delay a timer takes (setTimeout fires at once past 2^31 - 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long one long poll waits at the CA, in seconds. */
const POLL_WAIT_SECONDS = 25;
/**
 * Between looks while an item is put off (the service then answers each long poll at once, as it
 * lists that item): new items still come within seconds, and the poll does not spin.
 */
const PUT_OFF_LOOK_MS = 3_000;

/** What the mailbox needs of the chat: keys, checks, and where its news goes. */
export interface MailboxHost {
  /** Our name. */
  self: string;
  /** The CA client (mailbox routes). */
  ca: Pick<CaClient, "mailboxPost" | "mailboxList" | "mailboxFetch" | "mailboxDelete">;
  /** Our key file. */
  key: () => KeyFile;
  /** Our current certificate, PEM. */
  certificate: () => string;
  /** Our CA's certificate, PEM. */
  caCertificate: string;
  /** `name`'s current certificate from the directory, checked (our CA, name, not revoked, logged). */
  directory: (name: string) => Promise<CertificateInfo>;
  /**
   * Checks a signer's certificate: our CA, names `name`, not revoked, and its key the one of
   * `name`'s current certificate in the directory (which is in the issuance log); throws otherwise.
   */
  checkSigner: (pem: string, name: string) => Promise<CertificateInfo>;
  /** Makes the revocation list fresh enough to check a certificate (throws when it cannot). */
  fresh: () => Promise<void>;
  /** Pins `name`'s key on first use; says how it compares (client/trust.ts). */
  observe: (name: string, keyFingerprint: string) => Promise<KeyState>;
  /**
   * Stores a message or a file (history, downloads) and returns what shows it, called once
   * its id is marked seen; throws `ERR_FORBIDDEN` when a quota refuses a file.
   */
  store: (item: MailboxItem) => Promise<() => void>;
  /** Our item `id` to `to` was fetched and stored by them. */
  delivered: (to: string, id: string) => void;
  /** Whether a file of `bytes` from `from`, whose key is `state`, waits for the user first. */
  askFirst: (from: string, bytes: number, state: KeyState) => boolean;
  /** A file waits for the user (`acceptOffer` or `declineOffer`). */
  offer: (from: string, offer: MailboxOffer) => void;
  /** Something the user should know. */
  warning: (message: string) => void;
  /** The first failed look of a run of failures failed with `error`. Default: none. */
  away?: (error: unknown) => void;
  /** A look succeeded after failures. Default: none. */
  back?: () => void;
  /**
   * How items that wait for the CA service are kept on disk (client/mailbox_unsent.ts):
   * history's key, and whether new files are sealed with it. Default: plain files.
   */
  unsentKey?: { key?: Uint8Array; seal?: boolean };
  /** The clock that spaces out the tries of an item openssl fails on, ms. Default: `Date.now`. */
  clock?: () => number;
  /**
   * An item an earlier run kept for the CA service (it quit or crashed first): what hears how
   * it ends, as `later` of {@linkcode MailboxClient.send} did. Default: nothing hears.
   */
  resume?: (item: Readonly<UnsentItem>) => (error?: unknown) => void;
}

/** A file that waits for the user: it came from a key first seen with it. */
export interface MailboxOffer {
  /** The item id (the file's id). */
  id: string;
  /** Its (announced) file name. */
  name: string;
  /** Its size. */
  bytes: number;
  /** Its SHA-256, hex. */
  sha256: string;
}

/** An item we posted and wait a receipt for. */
interface OutboxEntry {
  to: string;
  kind: ItemKind;
  postedAt: string;
  expiresAt?: string;
}

/**
 * An item of {@linkcode MailboxClient.send} until the CA service confirmed it: kept (in
 * HOME/mailbox/unsent/, durably) before its first post, so that a crash whose post's answer was
 * lost still posts it again; held when the service did not answer, and posted when it answers
 * again, after any before it for the same recipient; by this run or the next.
 */
interface Unsent {
  to: string;
  kind: "message" | "file" | "room";
  payload?: Uint8Array;
  name?: string;
  id: string;
  /** The sealed item once its post was tried: posted again as it is, the same bytes. */
  der?: Uint8Array;
  /** With `der`: the fingerprint of the recipient's key it was sealed to. */
  sealedTo?: string;
  /** What the sender reports when it ends, kept with it. */
  note?: Record<string, unknown>;
  /** When it was first kept, ISO 8601; "" for an item of post(), which is never kept. */
  at: string;
  /** It is on disk: durably, or (`"ahead"`) as a write-ahead copy, not synced. */
  kept?: boolean | "ahead";
  /** Its sender was told it waits (or an earlier run was): `later` says how it ends. */
  told?: boolean;
  /** Hears how it ended, once told: posted (no error), or not (the error). */
  later: (error?: unknown) => void;
  /** How it ended before its sender was told it waits: the error that refused it. */
  failed?: { error: unknown };
}

/** How {@linkcode MailboxClient.send} ended: posted, or held until the CA service answers. */
export interface SendOutcome {
  /** The item id. */
  id: string;
  /** True when it waits for the CA service to answer again (its `later` says how it ends). */
  held: boolean;
}

/** An item id we received: when to forget it, and whether the CA was told we have it. */
interface SeenEntry {
  from: string;
  /** Its sending time plus {@linkcode MAX_ITEM_AGE_MS}. */
  until: number;
  acked: boolean;
  /** Its receipt is still to be posted (refused for now). */
  owed?: boolean;
  /** A direct item (a message or a file): its time orders the sender's direct items. */
  direct?: boolean;
  /**
   * With `direct`: its time for that order, ms since the epoch: its sending time, or its arrival
   * when dated ahead (a sender's clock ahead must not make their next items look reordered).
   * Absent from entries of earlier versions: the sending time (`until` less the max age). Its
   * sending time is kept too (`until` less the max age): a next item that is itself dated ahead
   * is compared with it.
   */
  at?: number;
}

/** An item whose opening failed without a verdict (openssl's failure): tried again at `next`. */
interface ItemRetry {
  /** Failures in a row. */
  fails: number;
  /** Not tried again before, ms since the epoch (the host's clock). */
  next: number;
}

/** A sender whose receipts the service refused lately (not for being away). */
interface ReceiptRetry {
  /** Refusals in a row. */
  fails: number;
  /** Not tried again before, ms since the epoch. */
  next: number;
  /** The user was told. */
  told: boolean;
}

/** The mailbox of a running chat. */
export class MailboxClient {
  #host: MailboxHost;
  #home: ClientHome;
  #outbox: Record<string, OutboxEntry> = Object.create(null);
  #seen: Record<string, SeenEntry> = Object.create(null);
  #busy = new Set<string>();
  // Items being handled, by item id: a second run for the same id waits for the first.
  #inflight = new Map<string, Promise<void>>();
  // Offers being accepted: a copy listed by the CA meanwhile is a replay, as while it waited.
  #accepting = new Set<string>();
  // The CA's ids of items listed to this run that failed to be handled (kept while listed): when
  // one comes after a later item of its sender, it was held back (by the service, or our failure).
  #retried = new Set<string>();
  #receiptRetry = new Map<string, ReceiptRetry>();
  // By the CA's id: items openssl failed on, tried again less often (HOME/mailbox/retry.json).
  #itemRetry = new Map<string, ItemRetry>();
  // Ids of items that could not be stored now (a disk error), said once each until one is.
  #unstored = new Set<string>();
  // Failures said already: the look they end is not said again.
  #toldErrors = new WeakSet<object>();
  // Files that wait for the user, each still sealed in HOME/mailbox/held/FROM.ID.offer.cms.
  #offers = new Map<string, MailboxOffer & { from: string; path: string; until: number }>();
  #stopped = new AbortController();
  #running = false;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  // The items of send() not confirmed yet, in the order they were made; each recipient's go out
  // in this order, one at a time (#lane).
  #unsent: Unsent[] = [];
  #lanes = new Map<string, Promise<unknown>>(); // by recipient: the last of its posts queued
  #aways = 0; // posts the service did not answer, so far
  #flushing = false;
  #store!: UnsentStore;
  #found?: TakenUp; // what the start found in HOME/mailbox/unsent/: said by start()
  #said = new Set<string>(); // files of HOME/mailbox/unsent/ named in a warning, once each

  private constructor(host: MailboxHost, home: ClientHome) {
    this.#host = host;
    this.#home = home;
  }

  /**
   * Loads the outbox and the seen ids under `home`.
   *
   * @example
   * ```ts ignore
   * import { MailboxClient } from "./mailbox.ts";
   * const mailbox = await MailboxClient.load(host, new ClientHome("/tmp/bob"));
   * mailbox.start(); // fetches what waits, then long-polls
   * ```
   */
  static async load(host: MailboxHost, home: ClientHome): Promise<MailboxClient> {
    const m = new MailboxClient(host, home);
    m.#outbox = await readRecord(home.mailboxOutbox, "items");
    m.#seen = await readRecord(home.mailboxSeen, "seen");
    // A look at the CA's list drops those no longer there; a broken file only spaces out nothing.
    const retries = await readRecord<ItemRetry>(home.mailboxRetry, "items").catch(() => ({}));
    for (const [id, r] of Object.entries(retries).slice(-MAX_ITEM_RETRIES)) {
      if (Number.isSafeInteger(r?.fails) && Number.isFinite(r?.next)) {
        m.#itemRetry.set(id, { fails: r.fails, next: r.next });
      }
    }
    m.#boundRetries(m.#now());
    // What an earlier run could not post: it goes first, in order, once the CA service answers.
    const { store, ...found } = await UnsentStore.open(
      home.mailboxUnsent,
      home.mailbox,
      host.unsentKey,
    );
    m.#store = store;
    m.#found = found;
    m.#adopt(found.items);
    return m;
  }

  // Items an earlier run (or another chat on this home, gone) kept for the CA service: held
  // by this one from now on, posted in order once the service answers.
  #adopt(items: UnsentItem[]): void {
    for (const item of items) {
      this.#unsent.push({
        ...item,
        kept: true,
        told: true,
        later: this.#host.resume?.(item) ?? (() => {}),
      });
    }
  }

  // Says what a take-up of HOME/mailbox/unsent/ found and did not take (a file left in place,
  // tried again at each take-up, once), and ends the items that waited too long.
  #tell(found: TakenUp): void {
    const fresh = <T extends { file: string }>(list: T[]) =>
      list.filter(({ file }) => !this.#said.has(file) && this.#said.add(file));
    for (const file of found.unreadable) {
      this.#host.warning(`Cannot read a mailbox item that waits to be sent: "${file}"`);
    }
    // Once, not for each: out of file handles, it may be most of them.
    const [first, ...more] = fresh(found.unopened);
    if (first) {
      this.#host.warning(
        more.length
          ? `Cannot open ${
            more.length + 1
          } mailbox items that wait to be sent: ${first.reason}; they stay in "${this.#home.mailboxUnsent}" and are tried at the next start`
          : `Cannot open a mailbox item that waits to be sent: ${first.reason}; it stays in "${first.file}" and is tried at the next start`,
      );
    }
    const { maxItems, maxBytes } = this.#store.limits;
    for (const { file, limit } of fresh(found.overLimit)) {
      this.#host.warning(
        limit === "items"
          ? `Not kept: too many unsent mailbox items (limit ${maxItems}), left in "${file}"`
          : `Not kept: the unsent mailbox items take too many bytes (limit ${
            formatSize(maxBytes)
          }), left in "${file}"`,
      );
    }
    // The recipient refuses an item sent more than MAX_ITEM_AGE_MS ago: one that waited a week
    // ends here, not there.
    const ids = new Set(found.items.map((i) => i.id));
    for (const job of this.#unsent.filter((u) => ids.has(u.id))) {
      if (Date.now() - Date.parse(job.at) < MAX_ITEM_AGE_MS - 86_400_000) continue;
      this.#settle(
        job,
        new E2eError("ERR_NETWORK", "it waited more than 7 days for the CA service to answer", {
          hint: "send it again",
        }),
      ).catch(() => {});
    }
  }

  // Takes up, while this chat runs, the items another chat on this home left when it quit (or
  // was killed): one look at the folder, and one try of each other chat's lock, at each answered
  // look of the mailbox, so they need not wait for the next start.
  async #takeUp(): Promise<void> {
    let found: TakenUp;
    try {
      found = await this.#store.takeUp();
    } catch {
      return; // the folder cannot be read now: its items wait for the next look, or start
    }
    this.#adopt(found.items);
    this.#tell(found);
  }

  /**
   * Offers again the files that still wait for the user (from an earlier run), then fetches
   * what waits now and long-polls until {@linkcode stop}; reports expired sends.
   */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#reportExpired();
    if (this.#found) this.#tell(this.#found);
    this.#found = undefined;
    this.#offerHeld().catch((e) =>
      this.#host.warning(
        `Cannot read the files that wait for you: ${e instanceof Error ? e.message : e}`,
      )
    ).finally(() => this.#poll());
  }

  /** The files that wait for the user. */
  offers(): Array<MailboxOffer & { from: string }> {
    return [...this.#offers.values()].map(({ path: _, until: __, ...o }) => o);
  }

  /** Whether `from` offered the file `id` through the mailbox. */
  hasOffer(from: string, id: string): boolean {
    return this.#offers.get(id)?.from === from;
  }

  /**
   * Takes the file `id` that waits for the user: stored (quotas permitting), shown, and its
   * receipt sent. Throws `ERR_NOT_FOUND` for no such offer, `ERR_FORBIDDEN` when refused now.
   */
  async acceptOffer(id: string): Promise<void> {
    const offer = this.#offers.get(id);
    if (!offer) throw new E2eError("ERR_NOT_FOUND", `No file offer ${JSON.stringify(id)}`);
    this.#accepting.add(id);
    this.#offers.delete(id);
    try {
      const der = await Deno.readFile(offer.path);
      await this.#process(der, { from: offer.from, release: offer.path, accepted: true });
    } catch (e) {
      // Not taken for now (no answer from the service, a disk error): it still waits, unless it
      // was refused (its file removed) or taken meanwhile.
      if (!this.#offers.has(id) && !this.#seen[id] && await exists(offer.path)) {
        this.#offers.set(id, offer);
      }
      throw e;
    } finally {
      this.#accepting.delete(id);
    }
  }

  /** Declines the file `id` that waits for the user: it is removed, unread. */
  async declineOffer(id: string): Promise<void> {
    const offer = this.#offers.get(id);
    if (!offer) throw new E2eError("ERR_NOT_FOUND", `No file offer ${JSON.stringify(id)}`);
    this.#offers.delete(id);
    await Deno.remove(offer.path).catch(() => {});
    // Seen: the same item posted again (a CA that kept a copy) is a replay, not a new offer.
    this.#seen[id] = { from: offer.from, until: offer.until, acked: true };
    await this.#saveSeen();
  }

  // The offers of an earlier run: opened again (to show what they are) and offered.
  async #offerHeld(): Promise<void> {
    const dir = this.#home.mailboxHeld;
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(OFFER));
    } catch { /* none held */ }
    for (const file of names.sort()) {
      const path = join(dir, file);
      const opened = await open(await Deno.readFile(path), {
        key: this.#host.key(),
        recipientCert: this.#host.certificate(),
        caCert: this.#host.caCertificate,
      }).catch(() => undefined);
      if (!opened) continue;
      this.#announce(decodeItem(opened.content), path);
    }
  }

  #announce(item: MailboxItem, path: string): void {
    const offer = {
      id: item.id,
      name: item.name!,
      bytes: item.payload.length,
      sha256: createHash("sha256").update(item.payload).digest("hex"),
    };
    this.#offers.set(item.id, {
      ...offer,
      from: item.from,
      path,
      until: item.sent.getTime() + MAX_ITEM_AGE_MS,
    });
    this.#host.offer(item.from, offer);
  }

  /**
   * Stops the long poll (a request under way is left to finish). Items still held for the CA
   * service stay on disk for the next start, which posts them; a warning says how many.
   */
  stop(): void {
    if (this.#stopped.signal.aborted) return;
    this.#stopped.abort();
    for (const t of this.#timers) clearTimeout(t);
    // Its items' files wait for the next start, of this chat or another running on this home.
    this.#store.close();
    const n = this.held;
    if (n) {
      this.#host.warning(
        `${n === 1 ? "1 mailbox item is" : `${n} mailbox items are`} not sent yet: ` +
          `the CA service did not answer. They are sent when the chat starts again and it answers`,
      );
    }
  }

  /** How many items wait for the CA service to answer again. */
  get held(): number {
    return this.#unsent.filter((u) => u.told).length;
  }

  /** Ids of our items that wait for a receipt, with their recipient. */
  pending(): Array<{ id: string; to: string }> {
    return Object.entries(this.#outbox).map(([id, e]) => ({ id, to: e.to }));
  }

  /**
   * Seals `payload` for `to` and posts it; resolves with the item id once the CA
   * stored it. Throws `ERR_FORBIDDEN` when `to`'s key changed, `ERR_KEY_REJECTED`
   * for an Ed25519 key on either side, and what the CA refuses (`ERR_QUOTA`,
   * `ERR_TOO_LARGE`, `ERR_NOT_FOUND`).
   */
  async post(
    to: string,
    kind: "message" | "file" | "room",
    payload: Uint8Array,
    name?: string,
    id: string = newItemId(),
  ): Promise<string> {
    await this.#post({ to, kind, payload, name, id, at: "", later: () => {} }, false);
    return id;
  }

  /**
   * Like {@linkcode post}, but the item is on disk (HOME/mailbox/unsent/, durably) before its
   * first post and until the service confirmed it (a chat that dies meanwhile posts it again at
   * its next start), and one the CA service did not answer for (`ERR_NETWORK`) is held and posted
   * when the service answers again. A recipient's items go out in the order their sends were
   * made: one made while earlier ones to `to` are held or under way waits behind them. Resolves
   * `held: true` when it waits, and `later` says how it ends. Items still held when
   * the chat stops are posted by its next start, and end in the `resume` of its host, with their
   * `note`. Arrives once all the same: the same sealed bytes are posted again, which the service
   * keeps once while it remembers the first copy (ca/mailbox.ts RECENTLY_MS), and the recipient
   * shows an item id once (a later copy is dropped as replayed). Throws what
   * {@linkcode post} throws otherwise, and `ERR_QUOTA` when no more can be held
   * (client/mailbox_unsent.ts).
   */
  async send(
    to: string,
    kind: "message" | "file" | "room",
    payload: Uint8Array,
    options: {
      name?: string;
      id?: string;
      later: (error?: unknown) => void;
      note?: Record<string, unknown>;
    },
  ): Promise<SendOutcome> {
    const { name, id = newItemId(), later, note } = options;
    const at = new Date().toISOString();
    const job: Unsent = { to, kind, payload, name, id, later, note, at };
    // Its place in line, now: a send made later to `to` goes after it, whatever answers first.
    this.#unsent.push(job);
    const aways = this.#aways;
    return await this.#lane(to, async () => {
      const stopped = this.#stopped.signal.aborted;
      let away: unknown;
      // Posted behind the items before it for `to`, unless a post got no answer while it queued:
      // the service is away, and it waits with them (once stopped, it is tried: nothing waits).
      if (this.#unsent.includes(job) && (this.#aways === aways || stopped)) {
        away = await this.#drain(to, job);
      }
      if (!this.#unsent.includes(job)) {
        if (job.failed) throw job.failed.error;
        return { id, held: false };
      }
      if (stopped) {
        await this.#settle(job, away);
        throw away;
      }
      // On disk before the user hears it waits: a quit or a crash now does not lose it.
      if (job.kept !== true) {
        try {
          await this.#keep(job);
        } catch (e) {
          await this.#settle(job, e);
          throw e;
        }
      }
      job.told = true;
      return { id, held: true };
    });
  }

  // Runs `fn` after what was queued for `to` before it: the posts to one recipient, one at a time.
  async #lane<T>(to: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.#lanes.get(to) ?? Promise.resolve()).then(fn);
    const last = run.catch(() => {});
    this.#lanes.set(to, last);
    try {
      return await run;
    } finally {
      if (this.#lanes.get(to) === last) this.#lanes.delete(to);
    }
  }

  // In `to`'s lane: posts its items in order, up to `last` (else all of them), while the CA
  // service answers; one refused for good ends with its error and the next is tried. Returns the
  // error of the post that got no answer, if one did not.
  async #drain(to: string, last?: Unsent): Promise<unknown> {
    for (;;) {
      // `last` may have ended meanwhile (its receipt came): what follows it is not ours to post.
      if (last ? !this.#unsent.includes(last) : this.#stopped.signal.aborted) return undefined;
      const job = this.#unsent.find((u) => u.to === to);
      if (!job) return undefined;
      let error: unknown;
      try {
        await this.#post(job, true);
      } catch (e) {
        if (away(e)) {
          this.#aways++;
          return e;
        }
        error = e;
      }
      await this.#settle(job, error);
    }
  }

  // Writes `job` to HOME/mailbox/unsent/ (sealed once it is: only the bytes posted again).
  async #keep(job: Unsent, durable = true): Promise<void> {
    await this.#store.keep({
      to: job.to,
      kind: job.kind,
      id: job.id,
      at: job.at,
      ...(job.name === undefined ? {} : { name: job.name }),
      ...(job.der ? { der: job.der, sealedTo: job.sealedTo } : { payload: job.payload }),
      ...(job.note === undefined ? {} : { note: job.note }),
    }, { durable });
    job.kept = durable || "ahead";
  }

  // Posts the held items, each recipient's in order, while the CA service answers.
  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (!this.#stopped.signal.aborted) {
        const next = this.#unsent.find((u) => u.told);
        if (!next) return;
        if (await this.#lane(next.to, () => this.#drain(next.to))) return;
      }
    } finally {
      this.#flushing = false;
    }
  }

  // An item is done: posted (or its receipt came), or refused; said once, after it left the disk
  // (a next start must not post it, nor say it again): through `later` once its sender was told
  // it waits, else through send().
  async #settle(job: Unsent, error?: unknown): Promise<void> {
    const i = this.#unsent.indexOf(job);
    if (i < 0) return;
    this.#unsent.splice(i, 1);
    await this.#store.drop(job.id);
    if (job.told) job.later(error);
    else if (error !== undefined) job.failed = { error };
  }

  // Seals (once) and posts `job`. With `hold`, a post the CA did not answer keeps its outbox
  // entry: it may have arrived, and its receipt may come.
  async #post(job: Unsent, hold: boolean): Promise<void> {
    const host = this.#host;
    const { to, kind, id } = job;
    // The recipient is checked at every try, not only when sealing: while an item waited, their
    // key may have been replaced (lost, or stolen) or their certificate revoked, and what was
    // sealed to the old key must not go out as if nothing happened.
    checkCmsKey(host.certificate(), "your key");
    await host.fresh();
    const cert = await host.directory(to);
    checkCmsKey(cert.pem, `the key of "${to}"`);
    const changed = () =>
      new E2eError("ERR_FORBIDDEN", `Not sent: the key of "${to}" changed`, {
        hint: "compare the safety number, then trust the new key",
      });
    if (await host.observe(to, cert.keyFingerprint) === "changed") throw changed();
    if (job.der && job.sealedTo !== cert.keyFingerprint) throw changed();
    if (!job.der) {
      job.sealedTo = cert.keyFingerprint;
      job.der = await this.#seal({
        id,
        from: host.self,
        to,
        kind,
        sent: new Date(),
        payload: job.payload!,
        ...(job.name === undefined ? {} : { name: job.name }),
      }, cert.pem);
      // On disk before the first post (write-ahead): should the chat die before the service's
      // answer, a next start posts these bytes again (which the service keeps once while it
      // remembers the first copy; the recipient drops a later one as replayed), not a second
      // sealing of the item. Not synced (no fsync on a send's path): it outlives a crash, not a
      // power cut; once the item must wait, it is kept durably. Past the unsent limits, or with a
      // disk refusing it, a send the service answers still goes: it is kept, or refused, only
      // when it must wait.
      if (job.at) {
        try {
          await this.#keep(job, job.told === true);
        } catch (e) {
          if (job.told) throw e;
        }
      }
      job.payload = undefined;
    }
    const der = job.der;
    // A room's message needs no receipt: the room shows it, and its sequence number says what
    // is missing (docs/PROTOCOL.md §9).
    if (kind === "room") {
      await host.ca.mailboxPost(to, der);
      return;
    }
    // In the outbox before the post: a receipt may come back before the post's reply does.
    if (!this.#outbox[id]) {
      this.#outbox[id] = { to, kind, postedAt: new Date().toISOString() };
      await this.#saveOutbox();
    }
    let record: MailboxRecord;
    try {
      record = await host.ca.mailboxPost(to, der);
    } catch (e) {
      if (!(hold && away(e))) {
        delete this.#outbox[id];
        await this.#saveOutbox();
      }
      throw e;
    }
    const entry = this.#outbox[id];
    if (entry) {
      // The service's word, never past what the recipient accepts (a dishonest service that
      // dropped the item would answer "2999" and the sender would never hear it was not
      // delivered), nor unparseable.
      const when = expiry({ ...entry, expiresAt: String(record.expiresAt) });
      entry.expiresAt = Number.isFinite(when) ? new Date(when).toISOString() : undefined;
      await this.#saveOutbox();
      // Told when it expires unread, not only at the next poll.
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#reportExpired();
      }, Math.min(MAX_TIMER_MS, Math.max(0, expiry(entry) - Date.now()) + 500));
      Deno.unrefTimer(timer);
      this.#timers.add(timer);
    }
  }

  /** Opens the items held back from `name` again (after the user trusted their new key). */
  async release(name: string): Promise<void> {
    for (const path of this.#heldPaths(name)) {
      // Gone: released meanwhile (the user trusted the key twice at once).
      const der = await readIfThere(path);
      if (der) await this.#process(der, { from: name, release: path });
    }
  }

  /** How many items from `name` are held back for a changed key (files that wait not counted). */
  heldFrom(name: string): number {
    return this.#heldPaths(name).length;
  }

  /**
   * Whether an item held back from `name` for a changed key is signed with the key
   * `keyFingerprint` by a certificate that passes the signer check (so that key is the one the
   * directory gives `name` now): a key the user may trust to read it once the warning of its
   * change was dismissed, or that item would be stranded.
   */
  async holdsKey(name: string, keyFingerprint: string): Promise<boolean> {
    const paths = this.#heldPaths(name);
    if (paths.length) await this.#host.fresh();
    for (const path of paths) {
      const der = await readIfThere(path);
      if (!der) continue;
      let signer: CertificateInfo;
      try {
        const opened = await open(der, {
          key: this.#host.key(),
          recipientCert: this.#host.certificate(),
          caCert: this.#host.caCertificate,
        });
        let item: MailboxItem;
        try {
          item = decodeItem(opened.content);
        } catch {
          continue; // our parser's verdict on its bytes
        }
        if (item.from !== name || item.to !== this.#host.self) continue;
        signer = await this.#host.checkSigner(opened.signerCert, name);
      } catch (e) {
        // A verdict on the item or its signer (refused when let in) vouches for no key; our key
        // not unlocking, or the CA not answering, is said.
        if (e instanceof E2eError && REFUSES_SIGNER.has(e.code)) continue;
        throw e;
      }
      if (signer.keyFingerprint === keyFingerprint) return true;
    }
    return false;
  }

  // The items held back from `name` for a changed key, oldest id first.
  #heldPaths(name: string): string[] {
    const dir = this.#home.mailboxHeld;
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
        n.startsWith(`${name}.`) && n.endsWith(".cms") && !n.endsWith(OFFER)
      );
    } catch { /* none held */ }
    return names.sort().map((n) => join(dir, n));
  }

  /**
   * Fetches and handles what waits for us now, after at most `waitSeconds` of
   * long poll (what {@linkcode start} does in a loop), then posts the receipts
   * owed. Throws when the CA cannot be reached or refuses; an item that fails its
   * checks is a warning instead. An item that cannot be handled now (its fetch
   * refused, a disk error) stays at the CA and does not stop the others: they are
   * handled first, then its error is thrown.
   */
  async check(waitSeconds = 0): Promise<void> {
    const { failed } = await this.#look(waitSeconds);
    if (failed) throw failed.error;
  }

  // check(), but an item's failure (the service answered) is returned once the look is done, and
  // `later` says in how many ms the first item whose try was put off is due.
  async #look(waitSeconds: number): Promise<{ failed?: { error: unknown }; later?: number }> {
    const items = await this.#host.ca.mailboxList(waitSeconds);
    const listed = new Set(items.map((r) => r.id));
    for (const id of this.#retried) if (!listed.has(id)) this.#retried.delete(id);
    let retriesChanged = false;
    for (const id of this.#itemRetry.keys()) {
      if (!listed.has(id)) retriesChanged = this.#itemRetry.delete(id);
    }
    const now = this.#now();
    if (this.#boundRetries(now)) retriesChanged = true;
    const due = items.filter((r) => (this.#itemRetry.get(r.id)?.next ?? 0) <= now);
    let later: number | undefined;
    for (const r of items) {
      const next = this.#itemRetry.get(r.id)?.next ?? 0;
      if (next > now) later = Math.min(later ?? Infinity, next - now);
    }
    // Once for the look, not once for each item that would fail the same way.
    if (due.length) await this.#host.fresh();
    let failed: { error: unknown } | undefined;
    try {
      for (const record of due) {
        if (this.#stopped.signal.aborted) return {};
        try {
          await this.#fetch(record);
          if (this.#itemRetry.delete(record.id)) retriesChanged = true;
        } catch (e) {
          this.#retried.add(record.id);
          // The service away, or our key not unlocking: every item after it would fail alike.
          if (away(e) || (e instanceof E2eError && e.code === "ERR_BAD_PASSPHRASE")) throw e;
          if (e instanceof E2eError && BACKS_OFF.has(e.code)) {
            this.#putOff(record, e);
            retriesChanged = true;
          } else if (this.#itemRetry.delete(record.id)) retriesChanged = true;
          failed ??= { error: e };
        }
      }
    } finally {
      if (retriesChanged) await this.#saveRetries().catch(() => {});
    }
    await this.#payReceipts();
    this.#reportExpired();
    return { failed, later };
  }

  #now(): number {
    return this.#host.clock?.() ?? Date.now();
  }

  // No try is put off further than its spacing from `now`: a `next` written while the clock ran
  // ahead (or edited in retry.json) would otherwise hide its item until the CA drops it. Returns
  // whether any was brought nearer.
  #boundRetries(now: number): boolean {
    let changed = false;
    for (const [id, r] of this.#itemRetry) {
      const latest = now + itemRetryMs(r.fails);
      if (r.next > latest) {
        this.#itemRetry.set(id, { fails: r.fails, next: latest });
        changed = true;
      }
    }
    return changed;
  }

  // The item `record` openssl failed on (`e`) is tried again later, less often after each
  // failure; the user is told once for it, with when.
  #putOff(record: MailboxRecord, e: E2eError): void {
    const fails = (this.#itemRetry.get(record.id)?.fails ?? 0) + 1;
    this.#itemRetry.delete(record.id);
    this.#itemRetry.set(record.id, { fails, next: this.#now() + itemRetryMs(fails) });
    if (this.#itemRetry.size > MAX_ITEM_RETRIES) {
      this.#itemRetry.delete(this.#itemRetry.keys().next().value!);
    }
    this.#toldErrors.add(e);
    if (fails > 1) return;
    this.#host.warning(
      `${e.message} in ${itemRetryMs(1) / 60_000} min, then less often (at most hourly) ` +
        `while the CA service keeps it`,
    );
  }

  async #saveRetries(): Promise<void> {
    await ensurePrivateDir(this.#home.mailbox);
    await writeFileAtomic(
      this.#home.mailboxRetry,
      JSON.stringify({ items: Object.fromEntries(this.#itemRetry) }) + "\n",
      { mode: 0o600 },
    );
  }

  async #poll(): Promise<void> {
    const stopped = this.#stopped.signal;
    let failures = 0;
    let wait = 0; // the first look returns at once: what waited while we were away
    while (!stopped.aborted) {
      try {
        const { failed, later } = await this.#look(wait);
        if (!failed) {
          wait = this.#nextWait();
          if (failures) this.#host.back?.();
          failures = 0;
        }
        // The service answered: what waits to be sent goes, even when an item of ours failed
        // (one the service cannot read now must not hold back our own sends).
        await this.#takeUp();
        await this.#flush();
        if (failed) throw failed.error;
        // An item put off is still listed, so the service answers the long poll at once: the
        // next look comes when it is due, or after a short pause for what else comes (a long
        // poll's time would have every new item wait up to 25 s while one is put off, for days).
        if (later !== undefined) {
          await pause(Math.min(later, PUT_OFF_LOOK_MS, wait * 1000), stopped);
          wait = 0;
        }
      } catch (e) {
        if (stopped.aborted) return;
        // The next look returns at once: the CA is known to be back then, not a long poll later.
        wait = 0;
        if (failures++ === 0) {
          this.#host.away?.(e);
          // An item not stored was said for itself.
          if (!(e instanceof Object && this.#toldErrors.has(e))) {
            this.#host.warning(
              `Cannot check the mailbox: ${e instanceof Error ? e.message : e}`,
            );
          }
        }
        await pause(backoffMs(failures), stopped);
      }
    }
  }

  async #fetch(record: MailboxRecord): Promise<void> {
    if (this.#busy.has(record.id)) return;
    this.#busy.add(record.id);
    try {
      const der = await this.#host.ca.mailboxFetch(record.id);
      await this.#process(der, { from: record.from, caId: record.id });
    } finally {
      this.#busy.delete(record.id);
    }
  }

  // One item, fetched (caId) or held back earlier (release): checked, stored, shown,
  // receipted, acknowledged — in that order.
  async #process(
    der: Uint8Array,
    at: { from: string; caId?: string; release?: string; accepted?: boolean },
  ) {
    const host = this.#host;
    const done = async () => {
      if (at.caId) await host.ca.mailboxDelete(at.caId);
      if (at.release) await Deno.remove(at.release).catch(() => {});
    };
    let item: MailboxItem;
    let signer: CertificateInfo;
    // Not a refusal when it fails: the item stays at the CA and is tried again.
    await host.fresh();
    try {
      const key = host.key();
      const opened = await open(der, {
        key,
        recipientCert: host.certificate(),
        caCert: host.caCertificate,
      });
      try {
        item = decodeItem(opened.content);
      } catch (e) {
        // Our own parser's verdict on the item's bytes.
        if (e instanceof E2eError) throw new E2eError("ERR_PEER_REJECTED", e.message);
        throw e;
      }
      try {
        signer = await host.checkSigner(opened.signerCert, item.from);
      } catch (e) {
        // Refused only on a verdict on the signer (its certificate refused, or no member of that
        // name): the CA busy or failing, or our log check, say nothing of the item.
        if (!(e instanceof E2eError && REFUSES_SIGNER.has(e.code))) throw e;
        const why = e.detail ?? e.message;
        throw new E2eError("ERR_PEER_REJECTED", `its signer's certificate is refused: ${why}`);
      }
      if (item.to !== host.self) {
        throw new E2eError("ERR_PEER_REJECTED", `it is addressed to "${item.to}"`);
      }
      // The CA cannot read what it carries: the peer protocol's limit is checked here.
      if (
        item.kind === "message" && item.payload.length > MAX_TEXT_CHARS &&
        new TextDecoder().decode(item.payload).length > MAX_TEXT_CHARS
      ) {
        throw new E2eError(
          "ERR_PEER_REJECTED",
          `its text is longer than ${MAX_TEXT_CHARS} characters`,
        );
      }
      const age = Date.now() - item.sent.getTime();
      if (age > MAX_ITEM_AGE_MS || age < -86_400_000) {
        throw new E2eError("ERR_PEER_REJECTED", `it was sent at ${item.sent.toISOString()}`);
      }
    } catch (e) {
      // Not the item's fault: it stays at the CA and is tried again. Only a verdict on the item
      // refuses (and deletes) it: openssl's (lib/cms.ts), our parser's, or our checks'.
      if (e instanceof E2eError && (e.code === "ERR_BAD_PASSPHRASE" || e.code === "ERR_NETWORK")) {
        throw e;
      }
      if (!(e instanceof E2eError && e.code === "ERR_PEER_REJECTED")) {
        throw new E2eError(
          e instanceof E2eError ? e.code : "ERR_INTERNAL",
          `${e instanceof Error ? e.message : e}; the mailbox item said to be from ` +
            `"${at.from}" stays ${at.release ? "held" : "at the CA"} and is tried again`,
          { cause: e, hint: e instanceof E2eError ? e.hint : undefined },
        );
      }
      host.warning(
        `Refused a mailbox item said to be from "${at.from}": ${
          e instanceof Error ? e.message : e
        }`,
      );
      await done();
      return;
    }
    // One run at a time for an item: a second (the same held item released twice at once, a copy
    // the CA lists again while the user accepts it) waits, then finds it seen.
    let waited = false;
    for (let run; (run = this.#inflight.get(item.id));) {
      waited = true;
      await run;
    }
    let finish = () => {};
    this.#inflight.set(item.id, new Promise<void>((resolve) => finish = resolve));
    try {
      if (waited && at.release && !(await exists(at.release))) return; // the other one released it
      await this.#handle(item, signer, der, at, done);
    } finally {
      this.#inflight.delete(item.id);
      finish();
    }
  }

  // #process() past the checks, for an item no other run handles.
  async #handle(
    item: MailboxItem,
    signer: CertificateInfo,
    der: Uint8Array,
    at: { from: string; caId?: string; release?: string; accepted?: boolean },
    done: () => Promise<void>,
  ): Promise<void> {
    const host = this.#host;
    const seen = this.#seen[item.id];
    const offered = this.#offers.has(item.id) || this.#accepting.has(item.id);
    if (seen?.acked || (offered && !at.accepted)) {
      host.warning(`Dropped a replayed mailbox item from "${item.from}" (${item.id})`);
      await done();
      return;
    }
    const direct = item.kind === "message" || item.kind === "file";
    if (!seen) {
      // The key must be the one we pinned; a changed key holds the item back, still sealed.
      const state = await host.observe(item.from, signer.keyFingerprint);
      const asks = item.kind === "file" && !at.accepted &&
        host.askFirst(item.from, item.payload.length, state);
      const full = (state === "changed" || asks) && !at.release && this.#heldFull(item.from);
      if (full) {
        host.warning(`Refused a mailbox item from "${item.from}": ${full}`);
        await done();
        return;
      }
      if (state === "changed") {
        if (!at.release) await this.#hold(item, der);
        host.warning(
          `Held back a mailbox item from "${item.from}": its key changed. ` +
            `Compare the safety number, then trust the new key to read it.`,
        );
        if (at.caId) await host.ca.mailboxDelete(at.caId);
        return;
      }
      // Consent: a file from a key first seen with it (or over the auto-accept size) waits for
      // the user, as a peer's offer does (docs/PROTOCOL.md §3); sealed, in the held folder. The
      // CA's copy can go.
      if (asks) {
        await ensurePrivateDir(this.#home.mailbox, { durable: true });
        await ensurePrivateDir(this.#home.mailboxHeld, { durable: true });
        const path = join(this.#home.mailboxHeld, `${item.from}.${item.id}${OFFER}`);
        // The CA's copy goes next: ours must be there after a power cut, name and all.
        await writeFileAtomic(path, der, { mode: 0o600, syncDir: true });
        this.#announce(item, path);
        if (at.caId) await host.ca.mailboxDelete(at.caId);
        return;
      }
      // Direct items come in the order they were sent (the sender posts them one at a time);
      // the service can reorder them, and this says so. Not an item the user let in late. One
      // this run failed to handle at an earlier look is said to be held back: the service can
      // fail its fetch on purpose as well as by accident.
      const later = direct && at.caId ? this.#sentLater(item) : undefined;
      const retried = at.caId !== undefined && this.#retried.has(at.caId);
      const ahead = item.sent.getTime() - Date.now();
      let show = () => {};
      try {
        if (item.kind !== "receipt") {
          show = await host.store(item);
        } else {
          for (const id of item.acks ?? []) {
            if (this.#outbox[id]?.to !== item.from) continue;
            delete this.#outbox[id];
            // Held after a post that got no answer, yet it arrived: it was posted.
            const held = this.#unsent.find((u) => u.id === id);
            if (held) await this.#settle(held);
            host.delivered(item.from, id);
          }
          await this.#saveOutbox();
        }
      } catch (e) {
        // Not a refusal (a disk error, say): not stored, so neither shown nor acknowledged; the
        // item stays at the CA (or held) and is tried again at the next look. Said once for it.
        if (!(e instanceof E2eError && e.code === "ERR_FORBIDDEN")) {
          if (direct && !at.accepted) this.#unstoredWarning(item, at.caId !== undefined, e);
          throw e;
        }
        await done();
        // The user accepting a file hears why it was refused as the answer.
        if (at.accepted && e instanceof E2eError) {
          throw new E2eError(e.code, `File refused: ${e.message}`, { hint: e.hint });
        }
        host.warning(
          `Refused a mailbox item from "${item.from}": ${e instanceof Error ? e.message : e}`,
        );
        return;
      }
      this.#unstored.delete(item.id);
      this.#seen[item.id] = {
        from: item.from,
        until: item.sent.getTime() + MAX_ITEM_AGE_MS,
        acked: false,
        ...(direct ? { direct: true, at: Math.min(item.sent.getTime(), Date.now()) } : {}),
      };
      try {
        await this.#saveSeen();
      } catch (e) {
        // Not seen, neither shown nor acknowledged: the next look stores it again (the history
        // keeps one line of a mailbox item: client/history.ts read()) and shows it. Left in
        // memory, the next look took it for stored before and acknowledged it, never shown.
        delete this.#seen[item.id];
        throw e;
      }
      show();
      if (direct && ahead > CLOCK_AHEAD_MS) {
        host.warning(
          `A mailbox ${item.kind} from "${item.from}" is dated ${item.sent.toISOString()}, ` +
            `${formatAhead(ahead)} ahead of this machine's clock: their clock (or this one) is off`,
        );
      }
      if (later !== undefined) {
        host.warning(
          retried
            ? `A mailbox ${item.kind} from "${item.from}" sent at ${item.sent.toISOString()} ` +
              `was held back: it failed at an earlier look (said then), and one they sent ` +
              `later, at ${new Date(later).toISOString()}, came first: ` +
              `the CA service may have reordered or held back their items`
            : `A mailbox ${item.kind} from "${item.from}" sent at ${item.sent.toISOString()} came ` +
              `after one they sent later, at ${new Date(later).toISOString()}: ` +
              `the CA service may have reordered or held back their items`,
        );
      }
    }
    // Stored (now or before a crash): the receipt, then the acknowledgement. A receipt refused for
    // now is owed, durably, before the CA's copy goes: posted later with the others owed to them.
    const entry = this.#seen[item.id];
    let awayError: unknown;
    if (item.kind !== "receipt" && item.kind !== "room" && entry.owed !== false) {
      entry.owed = true;
      awayError = await this.#payReceipts(item.from, [item.id]);
      if (entry.owed) await this.#saveSeen();
    }
    await done();
    entry.acked = true;
    await this.#saveSeen();
    // The service did not answer: the look ends here (what follows would fail alike).
    if (awayError !== undefined) throw awayError;
  }

  // Tells the user, once for the item, that it is not shown yet for `e`, and where it waits.
  #unstoredWarning(item: MailboxItem, atCa: boolean, e: unknown): void {
    if (e instanceof Object) this.#toldErrors.add(e);
    if (this.#unstored.has(item.id)) return;
    this.#unstored.add(item.id);
    this.#host.warning(
      `${e instanceof Error ? e.message : e}. The mailbox ${item.kind} from "${item.from}" ` +
        `is not shown yet: it stays ${
          atCa ? "at the CA service" : "held"
        } and is tried again until it can be stored`,
    );
  }

  // The latest time of a direct item from `item`'s sender seen before, if later than `item`'s
  // sending time. An item dated ahead of our clock is compared by claimed sending times (its
  // sender's clock is ahead now: their earlier items were dated by it too); any other by `at`
  // (the sending time, or the arrival of one dated ahead), so one item dated ahead does not make
  // its sender's next items, dated right, look reordered.
  #sentLater(item: MailboxItem): number | undefined {
    const ahead = item.sent.getTime() > Date.now();
    let latest = -Infinity;
    for (const e of Object.values(this.#seen)) {
      if (e.direct && e.from === item.from) {
        const sent = e.until - MAX_ITEM_AGE_MS; // `until` is always the sending time plus it
        latest = Math.max(latest, ahead ? sent : e.at ?? sent);
      }
    }
    return latest > item.sent.getTime() ? latest : undefined;
  }

  /**
   * Posts the receipts owed: to `to` for `ids` (an item just stored), else for every seen item
   * whose receipt is owed, one receipt per sender (of up to
   * MAX_RECEIPT_IDS ids). A sender whose receipts were refused lately waits its turn. A refusal
   * for now leaves them owed and tells the user once; one for good is a warning, and they are no
   * longer owed. Returns the error of a post the service did not answer (after which no other is
   * tried); throws when the seen ids cannot be saved.
   */
  async #payReceipts(to?: string, ids?: string[]): Promise<unknown> {
    const owed = new Map<string, string[]>();
    if (to && ids) owed.set(to, ids);
    else {
      // Acknowledged or not: an acknowledgement whose answer was lost leaves the item unlisted
      // though not marked acknowledged, and its receipt must go all the same. Not one being
      // handled now: that run posts it.
      for (const [id, e] of Object.entries(this.#seen)) {
        if (!e.owed || this.#inflight.has(id)) continue;
        owed.set(e.from, [...owed.get(e.from) ?? [], id]);
      }
    }
    const now = Date.now();
    let changed = false;
    try {
      for (const [sender, all] of owed) {
        const retry = this.#receiptRetry.get(sender);
        if (retry && retry.next > now) continue;
        let refused: E2eError | undefined;
        for (let i = 0; i < all.length && !refused; i += MAX_RECEIPT_IDS) {
          const batch = all.slice(i, i + MAX_RECEIPT_IDS);
          try {
            await this.#receipt(sender, batch);
          } catch (e) {
            if (away(e)) return e;
            if (e instanceof E2eError && RETRY_RECEIPT.has(e.code)) {
              refused = e;
              continue;
            }
            this.#host.warning(
              `Cannot send a receipt to "${sender}": ${e instanceof Error ? e.message : e}`,
            );
          }
          // Posted, or refused for good: no longer owed.
          for (const id of batch) if (this.#seen[id]) this.#seen[id].owed = false;
          changed = true;
        }
        if (!refused) {
          this.#receiptRetry.delete(sender);
          continue;
        }
        const fails = (retry?.fails ?? 0) + 1;
        this.#receiptRetry.set(sender, {
          fails,
          next: Date.now() + receiptRetryMs(fails),
          told: true,
        });
        if (!retry?.told) {
          this.#host.warning(
            `Cannot send a receipt to "${sender}" now: ${refused.message}. What they sent you ` +
              `is shown; the receipt is sent later, and until then they are not told it arrived`,
          );
        }
      }
    } finally {
      if (changed && !ids) await this.#saveSeen();
    }
    return undefined;
  }

  async #receipt(to: string, ids: string[]): Promise<void> {
    const cert = await this.#host.directory(to);
    const der = await this.#seal({
      id: newItemId(),
      from: this.#host.self,
      to,
      kind: "receipt",
      sent: new Date(),
      payload: new Uint8Array(),
      acks: ids,
    }, cert.pem);
    await this.#host.ca.mailboxPost(to, der);
  }

  async #seal(item: MailboxItem, recipientCert: string): Promise<Uint8Array> {
    return await seal(encodeItem(item), {
      key: this.#host.key(),
      signerCert: this.#host.certificate(),
      recipientCert,
    });
  }

  // Why one more item from `from` cannot be held back now, if it cannot.
  #heldFull(from: string): string | undefined {
    let names: string[] = [];
    try {
      // Not the temporary file of a write cut short (a held item's, killed before its rename).
      names = [...Deno.readDirSync(this.#home.mailboxHeld)].map((e) => e.name)
        .filter((n) => !isAtomicTemp(n));
    } catch { /* none held */ }
    const theirs = names.filter((n) => n.startsWith(`${from}.`)).length;
    if (theirs >= MAX_HELD_PER_SENDER) {
      return `${theirs} items from them already wait for you, at most ${MAX_HELD_PER_SENDER}`;
    }
    if (names.length >= MAX_HELD) {
      return `${names.length} items already wait for you, at most ${MAX_HELD}`;
    }
    return undefined;
  }

  async #hold(item: MailboxItem, der: Uint8Array): Promise<void> {
    await ensurePrivateDir(this.#home.mailbox, { durable: true });
    await ensurePrivateDir(this.#home.mailboxHeld, { durable: true });
    // The only copy once the CA's is deleted: durable, name and all.
    await writeFileAtomic(join(this.#home.mailboxHeld, `${item.from}.${item.id}.cms`), der, {
      mode: 0o600,
      syncDir: true,
    });
  }

  // The long poll's wait: shorter when one of our items expires sooner, so it is reported then.
  #nextWait(): number {
    let wait = POLL_WAIT_SECONDS;
    for (const e of Object.values(this.#outbox)) {
      if (!e.expiresAt) continue;
      const s = Math.ceil((expiry(e) - Date.now()) / 1000) + 1;
      wait = Math.max(1, Math.min(wait, s));
    }
    return wait;
  }

  #reportExpired(): void {
    const now = Date.now();
    let changed = false;
    for (const [id, e] of Object.entries(this.#outbox)) {
      if (expiry(e) > now) continue;
      delete this.#outbox[id];
      changed = true;
      this.#host.warning(
        `Not delivered: the ${e.kind} ${id} to "${e.to}" expired in the mailbox with no receipt`,
      );
    }
    if (changed) this.#saveOutbox().catch(() => {});
  }

  async #saveOutbox(): Promise<void> {
    await ensurePrivateDir(this.#home.mailbox);
    await writeFileAtomic(
      this.#home.mailboxOutbox,
      JSON.stringify({ items: this.#outbox }) + "\n",
      {
        mode: 0o600,
      },
    );
  }

  async #saveSeen(): Promise<void> {
    const now = Date.now();
    for (const [id, e] of Object.entries(this.#seen)) if (e.until < now) delete this.#seen[id];
    await ensurePrivateDir(this.#home.mailbox);
    await writeFileAtomic(this.#home.mailboxSeen, JSON.stringify({ seen: this.#seen }) + "\n", {
      mode: 0o600,
    });
  }
}

/**
 * When an item we posted expires unread: the service's `expiresAt`, but never later than the
 * recipient accepts it (sent `MAX_ITEM_AGE_MS` ago), and that when the service's is unparseable.
 */
function expiry(e: OutboxEntry): number {
  const latest = Date.parse(e.postedAt) + MAX_ITEM_AGE_MS;
  const said = e.expiresAt === undefined ? NaN : Date.parse(e.expiresAt);
  return Number.isFinite(said) && said < latest ? said : latest;
}

// `ms` ahead, in words: "12 h", "25 min".
function formatAhead(ms: number): string {
  return ms >= 3_600_000 ? `${Math.round(ms / 360_000) / 10} h` : `${Math.round(ms / 60_000)} min`;
}

// The CA service did not answer (or could not be reached): it may later.
function away(e: unknown): boolean {
  return e instanceof E2eError && e.code === "ERR_NETWORK";
}

// A held item's bytes; undefined when it is gone (let in or refused meanwhile).
async function readIfThere(path: string): Promise<Uint8Array | undefined> {
  return await Deno.readFile(path).catch((e) => {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  });
}

async function readRecord<T>(path: string, field: string): Promise<Record<string, T>> {
  const out: Record<string, T> = Object.create(null);
  try {
    const data = JSON.parse(await Deno.readTextFile(path))?.[field];
    if (data && typeof data === "object") Object.assign(out, data);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new E2eError("ERR_FILE", `Cannot read "${path}"`, { cause: e });
    }
  }
  return out;
}
