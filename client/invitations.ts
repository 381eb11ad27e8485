/**
 * Invitations addressed to us, learnt from the CA's rendezvous (the original's
 * OP_ACC_COMM) as a long poll, so an invitation shows up at once.
 *
 * @module
 */
import type { CaClient, InvitationReply, RelayRequestReply } from "./ca_client.ts";
import { backoffMs, pause } from "./poll.ts";

/** How long one long poll waits at the CA, in seconds. */
const POLL_WAIT_SECONDS = 25;

/** Options of {@linkcode Invitations}. */
export interface InvitationsOptions {
  /** Called once for each new invitation (a repeated one from someone whose invitation we still hold is not new). */
  onInvite: (invitation: InvitationReply) => void;
  /** Called when the CA cannot be reached (once per run of failures). */
  onWarning: (message: string) => void;
  /** Called for each request to come to the relay, where a peer we invited waits. Default: none. */
  onRelay?: (request: RelayRequestReply) => void;
}

/** The invitations we hold, and the poll that brings new ones. */
export class Invitations {
  #ca: Pick<CaClient, "pending">;
  #options: InvitationsOptions;
  #held = new Map<string, InvitationReply>();
  #stopped = new AbortController();
  #running = false;

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
  constructor(ca: Pick<CaClient, "pending">, options: InvitationsOptions) {
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
      for (const i of invitations) this.#held.set(i.from, i);
      invitation = this.#current(name);
    }
    return invitation;
  }

  /** Forgets the invitation from `name` (it was used). */
  delete(name: string): void {
    this.#held.delete(name);
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

  async #poll(): Promise<void> {
    const stopped = this.#stopped.signal;
    let cursor = 0;
    let failures = 0;
    while (!stopped.aborted) {
      try {
        const { invitations, relays, cursor: next } = await this.#ca.pending(
          cursor,
          POLL_WAIT_SECONDS,
        );
        cursor = next;
        failures = 0;
        for (const r of relays ?? []) if (!stopped.aborted) this.#options.onRelay?.(r);
        for (const i of invitations) {
          if (stopped.aborted) return;
          // A repeat (the sender invited again) updates the one we hold without a second notice.
          const repeat = this.#current(i.from) !== undefined;
          this.#held.set(i.from, i);
          if (!repeat) this.#options.onInvite(i);
        }
      } catch (e) {
        if (stopped.aborted) return;
        if (failures++ === 0) {
          this.#options.onWarning(
            `Cannot check for invitations: ${e instanceof Error ? e.message : e}`,
          );
        }
        await pause(backoffMs(failures), stopped);
      }
    }
  }
}
