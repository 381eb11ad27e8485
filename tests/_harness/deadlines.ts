/**
 * Deadlines for tests, bench and demo: one contract for "this, or give up
 * after so long", and one sleep.
 *
 * @module
 */
import assert from "node:assert/strict";

/**
 * `promise`, or `fallback` once `ms` have passed; the timer never outlives the
 * race, and `promise` is left running.
 *
 * @example Give a child three seconds to exit
 * ```ts
 * import { within } from "./deadlines.ts";
 * const status = await within(new Promise<number>(() => {}), 10, null);
 * // status === null
 * ```
 */
export async function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<F>((resolve) => timer = setTimeout(() => resolve(fallback), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Thrown by {@linkcode deadline} when time is up. */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}

const LATE: unique symbol = Symbol("late");

/**
 * `promise`, or a {@linkcode DeadlineError} "timed out waiting for `what`"
 * once `ms` have passed (the same race as {@linkcode within}).
 *
 * @example Fail a step that hangs
 * ```ts
 * import { deadline } from "./deadlines.ts";
 * await deadline(Promise.resolve("ready"), 1_000, "the service");
 * ```
 */
export async function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  const result = await within(promise, ms, LATE);
  if (result === LATE) throw new DeadlineError(`timed out waiting for ${what}`);
  return result as T;
}

/**
 * Resolves after `ms`.
 *
 * @example
 * ```ts
 * import { sleep } from "./deadlines.ts";
 * await sleep(1);
 * ```
 */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Calls `check` every 20 ms until it returns true; throws an AssertionError
 * "timed out: `what`" after `ms` (default 15 s).
 *
 * @example
 * ```ts
 * import { waitUntil } from "./deadlines.ts";
 * const start = Date.now();
 * await waitUntil(() => Date.now() - start > 30, "30 ms to pass", 1_000);
 * ```
 */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  what: string,
  ms = 15_000,
): Promise<void> {
  const until = Date.now() + ms;
  while (!await check()) {
    if (Date.now() > until) throw new assert.AssertionError({ message: `timed out: ${what}` });
    await sleep(20);
  }
}

/**
 * Wakes whoever waits for "something new" (a line, an event, an exit): a
 * waiter re-checks its condition after each {@linkcode Wakeup.notify}.
 *
 * @example
 * ```ts
 * import { Wakeup } from "./deadlines.ts";
 * const news = new Wakeup();
 * setTimeout(() => news.notify(), 1);
 * await news.wait(1_000);
 * ```
 */
export class Wakeup {
  #waiters: Array<() => void> = [];

  /** Resolves at the next {@linkcode notify}, or after `ms`. */
  wait(ms: number): Promise<void> {
    return within(new Promise<void>((resolve) => this.#waiters.push(resolve)), ms, undefined);
  }

  /** Wakes every waiter. */
  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}
