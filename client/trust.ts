/**
 * Keys you can check: trust on first use of every peer's key, and safety
 * numbers to compare out of band. Kept in `HOME/peers.json` (0600).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { writeFileAtomic } from "../lib/fs.ts";
import { ClientHome } from "./home.ts";

/** What we know of a peer's key. */
export interface PeerRecord {
  /** SHA-256 of the peer's public key, as first seen (or last trusted). */
  keyFingerprint: string;
  /** When it was first seen. */
  firstSeen: string;
  /** Whether the user compared the safety number and said `/verify`. */
  verified: boolean;
}

/** The verdict on a key seen now. */
export type KeyState = "new" | "known" | "verified" | "changed";

/** The peers.json file. */
export class TrustStore {
  #file: string;
  // No prototype: a peer may be called "constructor" or "__proto__".
  #peers: Record<string, PeerRecord> = Object.create(null);

  private constructor(file: string) {
    this.#file = file;
  }

  /** Loads (or starts) the store under `home`. */
  static async load(home: string): Promise<TrustStore> {
    const store = new TrustStore(new ClientHome(home).peers);
    try {
      const data = JSON.parse(await Deno.readTextFile(store.#file));
      if (data && typeof data.peers === "object" && data.peers !== null) {
        for (const [name, record] of Object.entries(data.peers)) {
          store.#peers[name] = record as PeerRecord;
        }
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return store;
  }

  /** Records a key seen for `name` when it is the first; says how it compares with what we knew. */
  async observe(name: string, keyFingerprint: string): Promise<KeyState> {
    const known = this.#peers[name];
    if (!known) {
      this.#peers[name] = { keyFingerprint, firstSeen: new Date().toISOString(), verified: false };
      await this.#save();
      return "new";
    }
    if (known.keyFingerprint !== keyFingerprint) return "changed";
    return known.verified ? "verified" : "known";
  }

  /** Accepts `keyFingerprint` as `name`'s key from now on (after a change); it is not verified. */
  async trust(name: string, keyFingerprint: string): Promise<void> {
    this.#peers[name] = { keyFingerprint, firstSeen: new Date().toISOString(), verified: false };
    await this.#save();
  }

  /** Marks `name`'s current key as verified. Returns false when we know no key for them. */
  async verify(name: string): Promise<boolean> {
    const known = this.#peers[name];
    if (!known) return false;
    known.verified = true;
    await this.#save();
    return true;
  }

  /** What we know of `name`. */
  get(name: string): PeerRecord | undefined {
    return this.#peers[name];
  }

  async #save(): Promise<void> {
    // The folder too: a pin lost to a power cut would be trust on first use again, a silent
    // downgrade (and a /verify the user made would be forgotten).
    await writeFileAtomic(this.#file, JSON.stringify({ peers: this.#peers }, null, 2) + "\n", {
      mode: 0o600,
      syncDir: true,
    });
  }
}

/**
 * The safety number of two users: SHA-512 over both names and key fingerprints
 * in name order, shown as 60 digits in groups of five. Both sides get the same.
 *
 * @example
 * ```ts
 * import { safetyNumber } from "./trust.ts";
 * safetyNumber({ name: "alice", key: "aa".repeat(32) }, { name: "bob", key: "bb".repeat(32) });
 * ```
 */
export function safetyNumber(
  a: { name: string; key: string },
  b: { name: string; key: string },
): string {
  const [first, second] = [a, b].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  const digest = createHash("sha512")
    .update(
      `e2e-chat safety number v1\n${first.name}\n${first.key}\n${second.name}\n${second.key}\n`,
    )
    .digest();
  // 12 groups of 5 digits, each from its own 5 bytes of the digest (40 bits mod 100000).
  const groups: string[] = [];
  for (let i = 0; i < 12; i++) {
    let n = 0n;
    for (const byte of digest.subarray(i * 5, i * 5 + 5)) n = (n << 8n) | BigInt(byte);
    groups.push(String(n % 100000n).padStart(5, "0"));
  }
  return groups.join(" ");
}
