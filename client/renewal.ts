/**
 * Renewal in the background, as step's `renew --daemon` does it: a client that
 * runs for days renews its certificate once a third of its life is left,
 * retries with exponential backoff while the CA is away, and tells the user
 * only when renewal keeps failing (or little life is left). The chat core owns
 * one {@linkcode Renewal}; what renewing means (asking the CA, checking the
 * issuance log, swapping credentials) is the function it is given.
 *
 * @module
 */

/** The validity of a certificate, as the schedule needs it. */
export interface Validity {
  /** Start of validity. */
  notBefore: Date;
  /** End of validity. */
  notAfter: Date;
}

/** Options of {@linkcode Renewal}. */
export interface RenewalOptions {
  /** Renew once this fraction of the certificate's life is left. Default: 1/3. */
  threshold?: number;
  /**
   * The schedule is looked at again at least this often, ms, so that a machine that slept
   * past the renewal time renews soon after it wakes. Default: 600000 (10 minutes).
   */
  checkMs?: number;
  /** The wait after the first failure, ms; it doubles with each failure in a row. Default: 30000. */
  retryMs?: number;
  /** The longest wait between two attempts, ms. Default: 1800000 (30 minutes). */
  maxRetryMs?: number;
  /**
   * Failures in a row before the user is told (at each failure from then on). Also told at
   * every failure once less than a tenth of the life is left. Default: 3.
   */
  warnAfter?: number;
  /**
   * Whether a failure is told at once, the first of its kind in a row, however few failed before
   * it (the chat: a renewal the CA answered whose log check failed, which leaves the CA refusing
   * the certificate in use). Later ones follow `warnAfter`. Default: none is.
   */
  tellAtOnce?: (error: unknown) => boolean;
  /** Called with a message for the user when renewal keeps failing. Default: none. */
  onWarning?: (message: string) => void;
  /**
   * Test-only: the clock the schedule reads (TLS checks keep the real one), so a test can make a
   * certificate look old without waiting days. Default: Date.now.
   */
  clock?: () => number;
}

/** Below this fraction of life left, every failure is reported. */
const URGENT = 1 / 10;

/** Fraction of `validity` still ahead at `now` (0 once expired). */
export function lifeLeft(validity: Validity, now: number): number {
  const start = validity.notBefore.getTime();
  const end = validity.notAfter.getTime();
  return Math.max(0, (end - now) / (end - start));
}

/**
 * Keeps a certificate renewed while the client runs.
 *
 * @example
 * ```ts
 * import { Renewal } from "./renewal.ts";
 * import { Identity } from "./identity.ts";
 * let id = await Identity.load("/tmp/alice");
 * const renewal = new Renewal(() => id.certificate, async () => {
 *   id = await id.renew();
 * }, { onWarning: (m) => console.error(m) });
 * renewal.start();
 * // … when the client quits:
 * renewal.stop();
 * ```
 */
export class Renewal {
  #current: () => Validity;
  #renew: () => Promise<void>;
  #options: RenewalOptions;
  #timer?: ReturnType<typeof setTimeout>;
  #failures = 0;
  #toldAtOnce = false; // since the last success
  #running = false;
  #stopped = false;

  /**
   * A renewal of the certificate `current()` returns, by `renew()` (which must make
   * `current()` return the new certificate when it resolves).
   */
  constructor(current: () => Validity, renew: () => Promise<void>, options: RenewalOptions = {}) {
    this.#current = current;
    this.#renew = renew;
    this.#options = options;
  }

  /** Failures in a row since the last success. */
  get failures(): number {
    return this.#failures;
  }

  /** Starts the schedule: the first look is now. */
  start(): void {
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Stops the schedule (an attempt under way finishes, and nothing follows it). */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #now(): number {
    return (this.#options.clock ?? Date.now)();
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    // setTimeout takes at most 2^31-1 ms; the check interval keeps waits far below that.
    this.#timer = setTimeout(() => void this.#tick(), Math.max(0, ms));
  }

  async #tick(): Promise<void> {
    if (this.#running || this.#stopped) return;
    const threshold = this.#options.threshold ?? 1 / 3;
    const checkMs = this.#options.checkMs ?? 600_000;
    const cert = this.#current();
    const now = this.#now();
    const left = lifeLeft(cert, now);
    if (left > threshold) {
      const life = cert.notAfter.getTime() - cert.notBefore.getTime();
      const due = cert.notAfter.getTime() - threshold * life;
      this.#schedule(Math.min(checkMs, due - now + 1));
      return;
    }
    this.#running = true;
    try {
      await this.#renew();
      this.#failures = 0;
      this.#toldAtOnce = false;
      this.#schedule(0); // looks at the new certificate's schedule
    } catch (e) {
      this.#failures++;
      const warnAfter = this.#options.warnAfter ?? 3;
      const leftNow = lifeLeft(this.#current(), this.#now());
      const atOnce = !this.#toldAtOnce && this.#options.tellAtOnce?.(e) === true;
      if (atOnce) this.#toldAtOnce = true;
      if (this.#failures >= warnAfter || leftNow < URGENT || atOnce) {
        const until = this.#current().notAfter.toISOString();
        this.#options.onWarning?.(
          `Cannot renew your certificate (${this.#failures} attempt${
            this.#failures === 1 ? "" : "s"
          } failed; it ${leftNow === 0 ? "expired" : "expires"} ${until}): ${
            e instanceof Error ? e.message : e
          }`,
        );
      }
      const base = this.#options.retryMs ?? 30_000;
      const max = this.#options.maxRetryMs ?? 1_800_000;
      const wait = Math.min(max, base * 2 ** Math.min(30, this.#failures - 1));
      // A little jitter, so that clients cut off together do not come back together.
      this.#schedule(wait * (0.8 + 0.2 * Math.random()));
    } finally {
      this.#running = false;
    }
  }
}
