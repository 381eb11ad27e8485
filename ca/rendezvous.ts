/**
 * The rendezvous: the original's OP_INIT_COMM / OP_ACC_COMM. "alice wants to
 * talk to bob and listens on host:port" is kept in memory until it expires,
 * and bob learns of it at once through a long poll.
 *
 * Offers are rate-limited ({@linkcode OFFERS_PER_PAIR_PER_MINUTE} from one
 * sender to one recipient, {@linkcode OFFERS_PER_SENDER_PER_MINUTE} from one
 * sender in all), so a member cannot spam another with invitations; a repeated
 * offer replaces the earlier one, and clients show it once. An invitation its
 * recipient took up is not listed again (to another of its clients, or its next start).
 * An invitation made for a key its recipient no longer holds (it joined again with a
 * new one) lapses: it is not listed, and its inviter is told ({@linkcode Lapse}).
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { RateLimiter } from "./rate_limit.ts";

/**
 * Offers one sender may make to one recipient per minute: generous, since a
 * client re-invites after every dropped connection; what a flood of them
 * shows the recipient is one invitation (clients show a repeat once).
 */
export const OFFERS_PER_PAIR_PER_MINUTE = 60;
/** Offers one sender may make per minute, to anyone. */
export const OFFERS_PER_SENDER_PER_MINUTE = 240;

/**
 * Ids a rendezvous may hand out per millisecond since it started and stay below the first id of
 * a rendezvous started later (ids are safe integers until the year 2248). Offers are
 * rate-limited far below it.
 */
const ID_SLOTS_PER_MS = 1024;

/** One pending invitation to talk. */
export interface Invitation {
  /** Increasing id, the cursor of long polls (still increasing after the service restarts). */
  id: number;
  /** Who wants to talk. */
  from: string;
  /** To whom. */
  to: string;
  /** Where `from` listens; absent when it does not listen (reached through the relay only). */
  host?: string;
  /** Where `from` listens; absent when it does not listen. */
  port?: number;
  /** When it expires. */
  expiresAt: Date;
  /**
   * The key fingerprint of `to`'s certificate that `from` was given, the only key its client
   * admits; absent: not known (any).
   */
  key?: string;
  /**
   * Whether `to` took it up ({@linkcode Rendezvous.taken}): no longer listed to `to`, whose
   * other clients (or its next start) would show it as new; the relay still joins its parties.
   */
  taken?: boolean;
}

/** A request that `to` (the inviter) come to the relay, where `from` waits for it. */
export interface RelayRequest {
  /** Increasing id, from the same sequence as invitations (one cursor for both). */
  id: number;
  /** The invitation the relay session is for. */
  invitation: number;
  /** Who waits at the relay (the invitation's recipient). */
  from: string;
  /** Who is asked to come (the inviter). */
  to: string;
  /** When the request lapses. */
  expiresAt: Date;
  /** Whether the inviter's long poll has returned it (set by the API). */
  delivered: boolean;
}

/**
 * An invitation that lapsed before its recipient took it up: it was made for a key the recipient
 * no longer holds. Its inviter is told, through its long poll, so that it can invite the new key.
 */
export interface Lapse {
  /** Increasing id, from the same sequence as invitations (one cursor for all). */
  id: number;
  /** The invitation that lapsed. */
  invitation: number;
  /** Who made it (and is told). */
  inviter: string;
  /** To whom it was made. */
  invitee: string;
  /** Why: the recipient's certificate now carries another key. */
  reason: "key-changed";
  /** When the invitation would have expired (the notice goes then). */
  expiresAt: Date;
}

/** Options of {@linkcode Rendezvous.offer}. */
export interface OfferOptions {
  /**
   * Where `from` listens for `to`, host and port together. Default: neither (`from` does not
   * listen, and is reached through the relay).
   */
  host?: string;
  /** The port `from` listens on, with {@linkcode OfferOptions.host}. Default: none. */
  port?: number;
  /**
   * The key fingerprint of the recipient's certificate that the inviter was given: once the
   * recipient holds another key, the invitation lapses ({@linkcode Rendezvous.dropStale}).
   * Default: none (it never lapses so).
   */
  key?: string;
}

/** Options of {@linkcode Rendezvous}. */
export interface RendezvousOptions {
  /** How long an invitation stays, in ms. Default: 300000 (5 minutes). */
  ttlMs?: number;
  /** Pending invitations one user may have made at once. Default: 64. */
  maxPerUser?: number;
  /** Offers per minute from one sender to one recipient. Default: {@linkcode OFFERS_PER_PAIR_PER_MINUTE}. */
  offersPerPairPerMinute?: number;
  /** Offers per minute from one sender. Default: {@linkcode OFFERS_PER_SENDER_PER_MINUTE}. */
  offersPerSenderPerMinute?: number;
}

/** Pending invitations, with waiters woken when one arrives for them. */
export class Rendezvous {
  readonly ttlMs: number;
  #maxPerUser: number;
  // Ids go on increasing across restarts of the service: they start from the clock, with room
  // for ID_SLOTS_PER_MS ids a millisecond. A member's long poll keeps its cursor through a
  // restart, and an id from 1 would be at or below it (what came next would never be seen).
  #nextId = Date.now() * ID_SLOTS_PER_MS;
  #pending: Invitation[] = [];
  #relays: RelayRequest[] = [];
  #lapses: Lapse[] = [];
  #waiters = new Map<string, Set<() => void>>();
  #perPair: RateLimiter;
  #perSender: RateLimiter;

  /** An empty rendezvous. */
  constructor(options: RendezvousOptions = {}) {
    this.ttlMs = options.ttlMs ?? 300_000;
    this.#maxPerUser = options.maxPerUser ?? 64;
    this.#perPair = new RateLimiter(
      options.offersPerPairPerMinute ?? OFFERS_PER_PAIR_PER_MINUTE,
      60_000,
    );
    this.#perSender = new RateLimiter(
      options.offersPerSenderPerMinute ?? OFFERS_PER_SENDER_PER_MINUTE,
      60_000,
    );
  }

  /**
   * Records that `from` wants to talk to `to` at `options.host`:`options.port` (neither: `from`
   * does not listen, and is reached through the relay), replacing an earlier offer between
   * them; throws `ERR_RATE_LIMITED` past the per-pair or per-sender limit.
   */
  offer(from: string, to: string, options: OfferOptions = {}): Invitation {
    const { host, port } = options;
    // Names cannot hold a space, so "from to" is one pair.
    const wait = Math.max(this.#perSender.hit(from), this.#perPair.hit(`${from} ${to}`));
    if (wait) {
      throw new E2eError("ERR_RATE_LIMITED", `Too many invitations to "${to}"`, {
        hint: `retry in ${Math.ceil(wait / 1000)} s`,
      });
    }
    this.#prune();
    this.#pending = this.#pending.filter((i) => !(i.from === from && i.to === to));
    if (this.#pending.filter((i) => i.from === from).length >= this.#maxPerUser) {
      this.#pending.splice(this.#pending.findIndex((i) => i.from === from), 1);
    }
    const invitation: Invitation = {
      id: this.#nextId++,
      from,
      to,
      ...(host !== undefined && port !== undefined ? { host, port } : {}),
      expiresAt: new Date(Date.now() + this.ttlMs),
      ...(options.key === undefined ? {} : { key: options.key }),
    };
    this.#pending.push(invitation);
    for (const wake of this.#waiters.get(to) ?? []) wake();
    return invitation;
  }

  /**
   * A client's cursor (`after`) as this rendezvous reads it: one above every id it has handed out
   * comes from a run of the service whose clock was ahead of this one's (set back since), and
   * starts over from 0 — else what comes next would be numbered at or below it, and never seen.
   */
  cursor(after: number): number {
    return after >= this.#nextId ? 0 : after;
  }

  /** The unexpired invitations for `to` with an id above `after` that `to` did not take up. */
  pending(to: string, after = 0): Invitation[] {
    this.#prune();
    return this.#pending.filter((i) => i.to === to && i.id > after && !i.taken);
  }

  /**
   * Records that `to` took up its invitation `id` (accepted it): it is not listed again, while
   * the relay may still join its parties until it expires. False when `to` has no such
   * invitation (expired, replaced by a newer offer, lost in a restart, or someone else's).
   */
  taken(id: number, to: string): boolean {
    const invitation = this.get(id);
    if (!invitation || invitation.to !== to) return false;
    invitation.taken = true;
    return true;
  }

  /**
   * Drops the invitations for `to` made for a key other than `key`, its current one (it joined
   * again with a new key since), whether it took them up or not: none of its clients can use
   * them, and the relay no longer joins their parties. Each inviter is told once ({@linkcode
   * lapses}), and its long poll wakes.
   */
  dropStale(to: string, key: string): void {
    this.#prune();
    const stale = this.#pending.filter((i) => i.to === to && i.key !== undefined && i.key !== key);
    if (!stale.length) return;
    this.#pending = this.#pending.filter((i) => !stale.includes(i));
    for (const i of stale) {
      this.#lapses.push({
        id: this.#nextId++,
        invitation: i.id,
        inviter: i.from,
        invitee: to,
        reason: "key-changed",
        expiresAt: i.expiresAt,
      });
      for (const wake of this.#waiters.get(i.from) ?? []) wake();
    }
  }

  /** The unexpired lapses of invitations `inviter` made, with an id above `after`. */
  lapses(inviter: string, after = 0): Lapse[] {
    this.#prune();
    return this.#lapses.filter((l) => l.inviter === inviter && l.id > after);
  }

  /** The unexpired invitation with this id, if any. */
  get(id: number): Invitation | undefined {
    this.#prune();
    return this.#pending.find((i) => i.id === id);
  }

  /**
   * Asks the inviter of `invitation` to come to the relay, where its recipient
   * waits for `ms`; the inviter's long poll wakes with it. A repeated request
   * for the same invitation replaces the earlier one.
   */
  requestRelay(invitation: Invitation, ms: number): RelayRequest {
    this.#prune();
    this.#relays = this.#relays.filter((r) => r.invitation !== invitation.id);
    const request = {
      id: this.#nextId++,
      invitation: invitation.id,
      from: invitation.to,
      to: invitation.from,
      expiresAt: new Date(Date.now() + ms),
      delivered: false,
    };
    this.#relays.push(request);
    for (const wake of this.#waiters.get(request.to) ?? []) wake();
    return request;
  }

  /** The unexpired relay requests for `to` with an id above `after`. */
  relays(to: string, after = 0): RelayRequest[] {
    this.#prune();
    return this.#relays.filter((r) => r.to === to && r.id > after);
  }

  /**
   * Waits up to `ms` (or until `signal` aborts) for an invitation, a relay
   * request or a lapse for `to` above `after`; returns the invitations
   * ({@linkcode relays} has the relay requests, {@linkcode lapses} the lapses).
   */
  async wait(to: string, after: number, ms: number, signal?: AbortSignal): Promise<Invitation[]> {
    const now = this.pending(to, after);
    const news = now.length || this.relays(to, after).length || this.lapses(to, after).length;
    if (news || ms <= 0 || signal?.aborted) return now;
    await new Promise<void>((resolve) => {
      const set = this.#waiters.get(to) ?? new Set();
      this.#waiters.set(to, set);
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        if (!set.size) this.#waiters.delete(to);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
    return this.pending(to, after);
  }

  /** Wakes every waiter (at shutdown). */
  wakeAll(): void {
    for (const set of this.#waiters.values()) for (const wake of [...set]) wake();
  }

  #prune(): void {
    const now = Date.now();
    this.#pending = this.#pending.filter((i) => i.expiresAt.getTime() > now);
    this.#relays = this.#relays.filter((r) => r.expiresAt.getTime() > now);
    this.#lapses = this.#lapses.filter((l) => l.expiresAt.getTime() > now);
  }
}
