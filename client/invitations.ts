/**
 * Invitations addressed to us, learnt from the CA's rendezvous (the original's
 * OP_ACC_COMM) as a long poll, so an invitation shows up at once.
 *
 * @module
 */
import { isValidName } from "../lib/names.ts";
import type { CaClient, InvitationReply, LapseReply, RelayRequestReply } from "./ca_client.ts";
import { backoffMs, pause } from "./poll.ts";

/** How long one long poll waits at the CA, in seconds. */
const POLL_WAIT_SECONDS = 25;
/**
 * Invitations held at once. An honest CA holds one per sender (a new one replaces it), so this
 * is a large team's worth; a hostile CA's answers beyond it are ignored (expired ones go first).
 */
export const MAX_HELD_INVITATIONS = 1024;
/** Relay requests taken from one answer of the CA, one per invitation (more are ignored). */
export const MAX_RELAYS_PER_ANSWER = 1024;

/** Ids of invitations we took up remembered in one run (past it, the oldest are forgotten). */
const MAX_USED_REMEMBERED = 4096;

/** Options of {@linkcode Invitations}. */
export interface InvitationsOptions {
  /** Called once for each new invitation (a repeated one from someone whose invitation we still hold is not new). */
  onInvite: (invitation: InvitationReply) => void;
  /** Called when the CA cannot be reached (once per run of failures). */
  onWarning: (message: string) => void;
  /** Called for each request to come to the relay, where a peer we invited waits. Default: none. */
  onRelay?: (request: RelayRequestReply) => void;
  /**
   * Called for each invitation of ours that lapsed at the CA before its recipient took it up (it
   * joined again with a new key). Default: none.
   */
  onLapsed?: (lapse: LapseReply) => void;
  /**
   * Called when the CA answers again after failures, with the time (ms since the epoch) of the
   * first failure: it may have restarted, and lost the invitations made before then that it held
   * in memory (ca/rendezvous.ts). Default: none.
   */
  onBack?: (since: number) => void;
  /** Called with the error of the first failed look of a run of failures. Default: none. */
  onAway?: (error: unknown) => void;
}

/** The invitations we hold, and the poll that brings new ones. */
export class Invitations {
  #ca: Pick<CaClient, "pending"> & Partial<Pick<CaClient, "taken">>;
  #options: InvitationsOptions;
  #held = new Map<string, InvitationReply>();
  // Taken up in this run: never held or shown again, whatever the CA still lists (it may not
  // have heard of it yet, or a cursor that starts over lists all it holds again).
  #used = new Set<number>();
  #telling = new Set<Promise<void>>(); // the CA being told of invitations we took up
  #stopped = new AbortController();
  #running = false;
  #warned = false; // about ignored invitations, once per run of answers that have some

  /**
   * Invitations from the CA behind `ca`; the poll starts with {@linkcode start}.
   *
   * @example
   * ```ts
   * import { Invitations } from "./invitations.ts";
   * import { Identity } from "./identity.ts";
   * const id = await Identity.load("/tmp/bob");
   * const invitations = new Invitations(id.client(), {
   *   onInvite: (i) => console.log(`${i.from} wants to chat`),
   *   onWarning: (m) => console.error(m),
   * });
   * invitations.start();
   * ```
   */
  constructor(
    ca: Pick<CaClient, "pending"> & Partial<Pick<CaClient, "taken">>,
    options: InvitationsOptions,
  ) {
    this.#ca = ca;
    this.#options = options;
  }

  /** Names of those whose invitation we hold and that has not expired. */
  names(now: number = Date.now()): string[] {
    return [...this.#held.values()].filter((i) => Date.parse(i.expiresAt) > now).map((i) => i.from);
  }

  /**
   * The current invitation from `name`: the one held, else one asked of the CA now.
   * Undefined when there is none (or it expired).
   */
  async find(name: string): Promise<InvitationReply | undefined> {
    let invitation = this.#current(name);
    if (!invitation) {
      const { invitations } = await this.#ca.pending(0, 0);
      this.#take(invitations, false);
      invitation = this.#current(name);
    }
    return invitation;
  }

  /** Forgets the invitation from `name` (it was used). */
  delete(name: string): void {
    this.#held.delete(name);
  }

  /**
   * Forgets `invitation`, which we took up (accepted): it is not held or shown again in this
   * run, and a newer one from the same sender is news again.
   */
  used(invitation: InvitationReply): void {
    if (this.#held.get(invitation.from)?.id === invitation.id) this.#held.delete(invitation.from);
    if (this.#used.size >= MAX_USED_REMEMBERED) this.#used.clear();
    this.#used.add(invitation.id);
  }

  /**
   * Tells the CA, in the background, that we took up `invitation` (`DELETE /v1/rendezvous/ID`):
   * it lists it to none of our clients again, so a client started later does not show it as
   * new. A failure is ignored (the invitation expired, or the CA lost it in a restart).
   */
  tell(invitation: InvitationReply): void {
    if (!this.#ca.taken) return;
    const told = this.#ca.taken(invitation.id).catch(() => {});
    this.#telling.add(told);
    told.then(() => this.#telling.delete(told));
  }

  /** Resolves once the CA was told (or failed to be) of every invitation we took up. */
  async told(): Promise<void> {
    await Promise.all([...this.#telling]);
  }

  /** Starts the long poll (once). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#poll();
  }

  /** Stops the long poll. */
  stop(): void {
    this.#stopped.abort();
  }

  #current(name: string): InvitationReply | undefined {
    const invitation = this.#held.get(name);
    if (invitation && Date.parse(invitation.expiresAt) <= Date.now()) {
      this.#held.delete(name);
      return undefined;
    }
    return invitation;
  }

  // Holds the invitations of one answer of the CA, each replacing an earlier one from the same
  // sender; with `notify`, a new one (not a repeat of one held) is reported. Whatever the CA
  // sends, at most MAX_HELD_INVITATIONS are held: malformed ones, and new ones beyond that once
  // the expired are gone, are ignored with one warning.
  #take(invitations: unknown, notify: boolean): void {
    const now = Date.now();
    let ignored = 0;
    let swept = false;
    for (const i of Array.isArray(invitations) ? invitations as unknown[] : []) {
      if (notify && this.#stopped.signal.aborted) return;
      if (!isInvitation(i)) {
        ignored++;
        continue;
      }
      if (this.#used.has(i.id)) continue; // taken up already: not new, nor current
      const held = this.#held.get(i.from);
      if (!held && this.#held.size >= MAX_HELD_INVITATIONS) {
        if (!swept) {
          swept = true;
          for (const [from, h] of this.#held) {
            if (!(Date.parse(h.expiresAt) > now)) this.#held.delete(from);
          }
        }
        if (this.#held.size >= MAX_HELD_INVITATIONS) {
          ignored++;
          continue;
        }
      }
      // A repeat (the sender invited again) updates the one we hold without a second notice.
      const repeat = held !== undefined && Date.parse(held.expiresAt) > now;
      this.#held.set(i.from, i);
      if (notify && !repeat) this.#options.onInvite(i);
    }
    if (ignored && !this.#warned) {
      const what = ignored === 1 ? "invitation" : "invitations";
      this.#options.onWarning(
        `Ignored ${ignored} ${what} from the CA: malformed, or beyond the ` +
          `${MAX_HELD_INVITATIONS} held at once`,
      );
    }
    this.#warned = ignored > 0;
  }

  async #poll(): Promise<void> {
    const stopped = this.#stopped.signal;
    let cursor = 0;
    let failures = 0;
    let since = 0; // when the first failure of a run was seen
    while (!stopped.aborted) {
      try {
        // After failures, a look that returns at once: the CA is known to be back now, not at
        // the end of a long poll.
        const { invitations, relays, lapsed, cursor: next } = await this.#ca.pending(
          cursor,
          failures ? 0 : POLL_WAIT_SECONDS,
        );
        if (Number.isSafeInteger(next) && next >= 0) cursor = next;
        if (failures) this.#options.onBack?.(since);
        failures = 0;
        // One request per invitation in an answer, and so many: each opens a connection.
        const met = new Set<number>();
        for (const r of Array.isArray(relays) ? relays : []) {
          if (stopped.aborted || met.size >= MAX_RELAYS_PER_ANSWER) break;
          if (typeof r !== "object" || r === null || !Number.isSafeInteger(r.invitation)) continue;
          if (typeof r.from !== "string" || met.has(r.invitation)) continue;
          met.add(r.invitation);
          this.#options.onRelay?.(r);
        }
        // As many as relay requests: one per invitation we made.
        let told = 0;
        for (const l of Array.isArray(lapsed) ? lapsed : []) {
          if (stopped.aborted || told >= MAX_RELAYS_PER_ANSWER) break;
          if (typeof l !== "object" || l === null || !Number.isSafeInteger(l.invitation)) continue;
          if (typeof l.to !== "string" || !isValidName(l.to)) continue;
          told++;
          this.#options.onLapsed?.(l);
        }
        this.#take(invitations, true);
      } catch (e) {
        if (stopped.aborted) return;
        if (failures++ === 0) {
          since = Date.now();
          this.#options.onAway?.(e);
          this.#options.onWarning(
            `Cannot check for invitations: ${e instanceof Error ? e.message : e}`,
          );
        }
        await pause(backoffMs(failures), stopped);
      }
    }
  }
}

// An invitation as the CA's answer must give it: from a valid name, with an expiry.
function isInvitation(i: unknown): i is InvitationReply {
  if (typeof i !== "object" || i === null) return false;
  const { from, expiresAt } = i as Partial<InvitationReply>;
  return typeof from === "string" && isValidName(from) && typeof expiresAt === "string";
}
