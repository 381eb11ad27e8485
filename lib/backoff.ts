/**
 * One retry schedule for work that keeps failing: wait 10, 20, 40 s … and at
 * most 5 min between tries, so a broken setup costs a try (and a log line) now
 * and then, not one at every request or tick.
 *
 * @module
 */

/** The first wait after a failure, in ms. */
export const BACKOFF_FIRST_MS = 10_000;
/** The most the wait grows to, in ms. */
export const BACKOFF_MAX_MS = 300_000;

/** Options of {@linkcode Backoff}. */
export interface BackoffOptions {
  /** The wait after the first failure, in ms, doubled at each one after. Default: 10 s. */
  firstMs?: number;
  /** The most the wait grows to, in ms. Default: 5 min. */
  maxMs?: number;
}

/**
 * Failures in a row and the wait each asks before the next try: doubled at each
 * failure, up to a ceiling; a success starts it over.
 *
 * @example 10, 20, 40 s … at most 5 min
 * ```ts
 * import { Backoff } from "./backoff.ts";
 * const backoff = new Backoff();
 * backoff.next(); // 10_000
 * backoff.next(); // 20_000
 * backoff.reset(); // it worked
 * ```
 */
export class Backoff {
  #firstMs: number;
  #maxMs: number;
  #failures = 0;

  /** A schedule with no failure yet. */
  constructor(options: BackoffOptions = {}) {
    this.#firstMs = options.firstMs ?? BACKOFF_FIRST_MS;
    this.#maxMs = options.maxMs ?? BACKOFF_MAX_MS;
  }

  /** Failures since the last {@linkcode Backoff.reset}. */
  get failures(): number {
    return this.#failures;
  }

  /** Counts a failure; returns how long to wait before the next try, in ms. */
  next(): number {
    return Math.min(this.#firstMs * 2 ** this.#failures++, this.#maxMs);
  }

  /** A success: the next failure waits the first wait again. */
  reset(): void {
    this.#failures = 0;
  }
}
