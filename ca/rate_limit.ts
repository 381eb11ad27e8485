/**
 * A per-key limit on attempts (enrollment per address, invitations per sender
 * and pair), so a token cannot be guessed at speed and one client cannot keep
 * the CA busy.
 *
 * Each hit costs O(1) amortized, however many keys there are: window starts
 * are queued in order, so expired windows are always at the front and are
 * dropped from there, never by a sweep of the whole table; past
 * {@linkcode MAX_KEYS} the window that started first is forgotten.
 *
 * A key that is an IPv6 address counts for its /64 ({@linkcode addressKey}): a host
 * is given a /64 and takes any address in it, so one per attempt if it likes.
 *
 * @module
 */
import { addressKey } from "../lib/connections.ts";

/** Keys remembered at most; past it the key whose window started first is dropped. */
export const MAX_KEYS = 10_000;

/** A fixed-window counter per key: at most `limit` hits per `windowMs`. */
export class RateLimiter {
  #limit: number;
  #windowMs: number;
  #maxKeys: number;
  #hits = new Map<string, { start: number; count: number }>();
  // Window starts in order; an item whose key has since started a newer window is stale.
  #queue: Array<{ key: string; start: number }> = [];
  #head = 0;

  /** At most `limit` hits per key per `windowMs`, remembering at most `maxKeys` keys (default {@linkcode MAX_KEYS}). */
  constructor(limit: number, windowMs: number, maxKeys = MAX_KEYS) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#maxKeys = maxKeys;
  }

  /** How many keys are remembered now. */
  get size(): number {
    return this.#hits.size;
  }

  /**
   * Counts a hit for `key` (an IPv6 address counts for its /64: {@linkcode addressKey}); returns the
   * ms to wait when over the limit, else 0.
   */
  hit(key: string): number {
    key = addressKey(key);
    const now = Date.now();
    while (this.#head < this.#queue.length) {
      const first = this.#queue[this.#head];
      if (now - first.start < this.#windowMs && this.#hits.size <= this.#maxKeys) break;
      this.#dropFirst();
    }
    const entry = this.#hits.get(key);
    if (!entry || now - entry.start >= this.#windowMs) {
      this.#hits.set(key, { start: now, count: 1 });
      this.#queue.push({ key, start: now });
      if (this.#hits.size > this.#maxKeys) this.#dropOldestLive();
      return 0;
    }
    entry.count++;
    return entry.count > this.#limit ? entry.start + this.#windowMs - now : 0;
  }

  #dropFirst(): void {
    const { key, start } = this.#queue[this.#head++];
    if (this.#hits.get(key)?.start === start) this.#hits.delete(key);
    // Compact now and then, so the array does not grow for ever.
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #dropOldestLive(): void {
    const size = this.#hits.size;
    while (this.#head < this.#queue.length && this.#hits.size === size) this.#dropFirst();
  }
}
