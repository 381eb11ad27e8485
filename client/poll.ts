/**
 * What the client's long polls of the CA share (client/invitations.ts,
 * client/mailbox.ts): the pause after a failed look, longer after each failure
 * in a row, which ends at once when the poll is stopped.
 *
 * @module
 */

/** The longest pause between two looks after failures, in ms. */
export const MAX_BACKOFF_MS = 30_000;

/**
 * The pause after `failures` failed looks in a row: 2, 4, 8, 16, then 30 s.
 *
 * @example
 * ```ts
 * import { backoffMs } from "./poll.ts";
 * console.log(backoffMs(1), backoffMs(10)); // 2000 30000
 * ```
 */
export function backoffMs(failures: number): number {
  return Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(failures, 5));
}

/**
 * Waits `ms`, or less when `signal` aborts first; leaves no timer behind.
 *
 * @example
 * ```ts
 * import { pause } from "./poll.ts";
 * const stop = new AbortController();
 * setTimeout(() => stop.abort(), 10);
 * await pause(60_000, stop.signal); // over after 10 ms
 * ```
 */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}
