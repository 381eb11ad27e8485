/**
 * Key changes seen and neither trusted nor dismissed yet, kept in the home (`key-changes.json`,
 * 0600) so that a restart of the client does not forget one: whoever presented another key for
 * a peer (on a connection, a mailbox item, a room's member list) cannot take the warning away by
 * leaving, nor by waiting for the client to stop. Per peer, the keys seen (their fingerprints)
 * and when each was last seen: trusting one key clears that key's record only, so trusting the
 * peer's real new key does not clear the record of an impostor's other key.
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { systemReason, writeFileAtomic } from "../lib/fs.ts";

/** Where a key change was seen. */
export type KeyChangeVia = "connection" | "mailbox" | "room";

/** A key change seen and not trusted nor dismissed yet. */
export interface KeyChange {
  /** The peer whose key it is not. */
  peer: string;
  /** SHA-256 of the public key seen (64 lowercase hex). */
  keyFingerprint: string;
  /** When it was last seen (ISO). */
  at: string;
  /** Where it was last seen. */
  via: KeyChangeVia;
}

/** Keys seen on a connection or a mailbox item kept per peer: the oldest goes first. */
export const MAX_KEY_CHANGES_PER_PEER = 4;
/**
 * Keys a room's member list gave a peer kept per peer, apart: the oldest goes first. A room's
 * creator may list any key (no certificate needed), so these never push out the others.
 */
export const MAX_ROOM_KEY_CHANGES_PER_PEER = 4;
/**
 * Key changes kept in all: the oldest of a room's lists goes first, then the oldest (each of
 * the others needs a certificate of the CA).
 */
export const MAX_KEY_CHANGES = 256;

const VIAS: readonly string[] = ["connection", "mailbox", "room"];

/**
 * The key changes of a home: one file, read at start and written (atomically, 0600) after each
 * change, in order.
 *
 * @example Keeping a key change across runs
 * ```ts
 * import { KeyChanges } from "./key_changes.ts";
 * const dir = await Deno.makeTempDir();
 * const changes = await KeyChanges.load(`${dir}/key-changes.json`);
 * await changes.record({ peer: "bob", keyFingerprint: "ab".repeat(32), via: "mailbox" });
 * const again = await KeyChanges.load(`${dir}/key-changes.json`);
 * console.log(again.list("bob").length); // 1
 * ```
 */
export class KeyChanges {
  #file: string;
  #changes: KeyChange[] = [];
  #saving: Promise<void> = Promise.resolve();

  private constructor(file: string) {
    this.#file = file;
  }

  /**
   * Loads the key changes kept in `file` (none when it is missing; malformed records skipped).
   * Throws `ERR_FILE` when the file cannot be read or is not JSON: taken for none, the next
   * change written would overwrite the warnings it keeps.
   */
  static async load(file: string): Promise<KeyChanges> {
    const store = new KeyChanges(file);
    let data: unknown;
    try {
      data = JSON.parse(await Deno.readTextFile(file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return store;
      // Never the parser's message, nor as the cause: it quotes the file's text.
      const syntax = e instanceof SyntaxError;
      throw new E2eError(
        "ERR_FILE",
        `Cannot read "${file}": ${syntax ? "it is not JSON" : systemReason(e)}`,
        {
          cause: syntax ? undefined : e,
          hint: `repair it, or move it aside to forget the key changes it keeps`,
        },
      );
    }
    const changes = (data as { changes?: unknown } | undefined)?.changes;
    if (Array.isArray(changes)) {
      for (const c of changes.slice(-4 * MAX_KEY_CHANGES)) {
        if (
          typeof c?.peer === "string" && c.peer.length <= 64 &&
          typeof c.keyFingerprint === "string" && /^[0-9a-f]{64}$/.test(c.keyFingerprint) &&
          typeof c.at === "string" && !Number.isNaN(Date.parse(c.at)) && VIAS.includes(c.via)
        ) {
          store.#changes.push({
            peer: c.peer,
            keyFingerprint: c.keyFingerprint,
            at: c.at,
            via: c.via,
          });
        }
      }
    }
    store.#changes = store.#changes.slice(-MAX_KEY_CHANGES);
    return store;
  }

  /** The key changes kept (of `peer` only, when given), oldest first. */
  list(peer?: string): KeyChange[] {
    return this.#changes.filter((c) => peer === undefined || c.peer === peer).map((c) => ({
      ...c,
    }));
  }

  /**
   * Records that `change.keyFingerprint` was presented as `change.peer`'s key (now, unless `at`
   * says when); the promise settles once it is on disk.
   */
  record(change: Omit<KeyChange, "at"> & { at?: Date }): Promise<void> {
    const { peer, keyFingerprint } = change;
    const before = this.#changes.find((c) =>
      c.peer === peer && c.keyFingerprint === keyFingerprint
    );
    // A key seen on a connection or a mailbox item stays such when a room's list gives it later:
    // else a creator could make it one of the records that go first.
    const via = before && before.via !== "room" ? before.via : change.via;
    this.#changes = this.#changes.filter((c) => c !== before);
    this.#changes.push({ peer, keyFingerprint, via, at: (change.at ?? new Date()).toISOString() });
    const room = via === "room";
    const alike = this.#changes.filter((c) => c.peer === peer && (c.via === "room") === room);
    if (alike.length > (room ? MAX_ROOM_KEY_CHANGES_PER_PEER : MAX_KEY_CHANGES_PER_PEER)) {
      this.#changes = this.#changes.filter((c) => c !== alike[0]);
    }
    if (this.#changes.length > MAX_KEY_CHANGES) {
      const first = this.#changes.find((c) => c.via === "room") ?? this.#changes[0];
      this.#changes = this.#changes.filter((c) => c !== first);
    }
    return this.#save();
  }

  /**
   * Clears the record of `keyFingerprint` for `peer` (trusted, or dismissed by the user); all of
   * the peer's when no key is named. Returns whether there was one; the promise settles once
   * it is on disk.
   */
  async clear(peer: string, keyFingerprint?: string): Promise<boolean> {
    const before = this.#changes.length;
    this.#changes = this.#changes.filter((c) =>
      c.peer !== peer || (keyFingerprint !== undefined && c.keyFingerprint !== keyFingerprint)
    );
    if (this.#changes.length === before) return false;
    await this.#save();
    return true;
  }

  // One write after the other, each of the whole list as it is then.
  #save(): Promise<void> {
    const saved = this.#saving.then(() =>
      writeFileAtomic(
        this.#file,
        JSON.stringify({ v: 1, changes: this.#changes }, null, 2) + "\n",
        { mode: 0o600, syncDir: true },
      )
    );
    this.#saving = saved.catch(() => {});
    return saved;
  }
}
