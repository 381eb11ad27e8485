/**
 * A per-address limit on attempts (enrollment), so a token cannot be guessed
 * at speed and one client cannot keep the CA busy.
 *
 * @module
 */

/** A fixed-window counter per key: at most `limit` hits per `windowMs`. */
export class RateLimiter {
  #limit: number;
  #windowMs: number;
  #hits = new Map<string, { start: number; count: number }>();

  /** At most `limit` hits per key per `windowMs`. */
  constructor(limit: number, windowMs: number) {
    this.#limit = limit;
    this.#windowMs = windowMs;
  }

  /** Counts a hit for `key`; returns the ms to wait when over the limit, else 0. */
  hit(key: string): number {
    const now = Date.now();
    if (this.#hits.size > 10_000) {
      for (const [k, v] of this.#hits) if (now - v.start >= this.#windowMs) this.#hits.delete(k);
    }
    const entry = this.#hits.get(key);
    if (!entry || now - entry.start >= this.#windowMs) {
      this.#hits.set(key, { start: now, count: 1 });
      return 0;
    }
    entry.count++;
    return entry.count > this.#limit ? entry.start + this.#windowMs - now : 0;
  }
}
