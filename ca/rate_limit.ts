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
 * A key that is an IPv6 address counts for its /64 ({@linkcode rateKey}): a host
 * is given a /64 and takes any address in it, so one per attempt if it likes.
 *
 * @module
 */

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
   * Counts a hit for `key` (an IPv6 address counts for its /64: {@linkcode rateKey}); returns the
   * ms to wait when over the limit, else 0.
   */
  hit(key: string): number {
    key = rateKey(key);
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

/**
 * The key a hit counts for: an IPv6 address stands for its /64 (`2001:db8:1:2::/64`), an
 * IPv4-mapped one (`::ffff:192.0.2.7`) for its IPv4 address, however either is written (case,
 * leading zeros, `::`, a zone); any other key stands for itself.
 *
 * @example
 * ```ts
 * import { rateKey } from "./rate_limit.ts";
 * console.log(rateKey("2001:DB8:1:2:aaaa::1")); // "2001:db8:1:2::/64"
 * console.log(rateKey("::ffff:192.0.2.7")); // "192.0.2.7"
 * console.log(rateKey("alice")); // "alice"
 * ```
 */
export function rateKey(key: string): string {
  const groups = ipv6Groups(key);
  if (!groups) return key;
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return [groups[6] >> 8, groups[6] & 255, groups[7] >> 8, groups[7] & 255].join(".");
  }
  return groups.slice(0, 4).map((g) => g.toString(16)).join(":") + "::/64";
}

// The eight 16-bit groups of an IPv6 address, or undefined when `text` is not one.
function ipv6Groups(text: string): number[] | undefined {
  if (!text.includes(":")) return undefined;
  let address = text.toLowerCase().replace(/%.*$/, "");
  // A dotted IPv4 tail (::ffff:192.0.2.7) is two groups.
  const dotted = /^(.*:)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  if (dotted) {
    const o = dotted.slice(2).map(Number);
    if (o.some((n) => n > 255)) return undefined;
    address = `${dotted[1]}${((o[0] << 8) | o[1]).toString(16)}:${
      ((o[2] << 8) | o[3]).toString(16)
    }`;
  }
  const halves = address.split("::");
  if (halves.length > 2) return undefined;
  const split = (part: string) => (part === "" ? [] : part.split(":"));
  const head = split(halves[0]);
  const tail = halves.length === 2 ? split(halves[1]) : [];
  // "::" stands for one group or more; without it there are eight.
  const zeros = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (halves.length === 2 ? zeros < 1 : head.length !== 8) return undefined;
  const all = [...head, ...Array<string>(zeros).fill("0"), ...tail];
  if (!all.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return all.map((g) => parseInt(g, 16));
}
