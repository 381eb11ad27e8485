/**
 * Revocation state of a chat client: the CA's CRL, verified with the pinned CA
 * key, fetched at start, refreshed every few minutes and before any connection
 * when it is over a minute old. It fails closed: without a CRL that is still
 * current, no peer is accepted. The CA service's own certificate asks more: a
 * CRL signed within {@linkcode SERVICE_CRL_WINDOW_MS} ({@linkcode Revocation.ensureRecent}).
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import {
  CRL_CLOCK_SKEW_MS as SKEW_MS,
  CRL_REPUBLISH_MS,
  normalizeSerialHex,
  parseCrl,
  SERVICE_CRL_WINDOW_MS as WINDOW_MS,
} from "../lib/crl.ts";
import { E2eError } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/fs.ts";

/** How old a CRL may be before a new connection fetches it again. */
export const CRL_MAX_AGE_MS = 60_000;
/** How often the CRL is fetched in the background. */
export const CRL_REFRESH_MS = 5 * 60_000;
// After a failed fetch, none for this long: a flood of (refused) connection attempts cannot
// turn into a flood of CRL requests.
const RETRY_AFTER_FAILURE_MS = 5_000;
/**
 * How old a CRL (its thisUpdate) may be and still clear the CA service's own TLS certificate:
 * three times the service's republishing ({@linkcode CRL_REPUBLISH_MS}), so a clock off by up to
 * two hours, or a lost refresh, does not refuse an honest service. Whoever kept a revoked service
 * key can replay the last CRL from before the revocation, which does not list it, for this long
 * at most, not until that CRL's nextUpdate (7 days). Peers are checked against any current CRL:
 * a service that is down keeps no one from direct chats.
 */
export const SERVICE_CRL_WINDOW_MS: number = WINDOW_MS;
/**
 * How far ahead of this machine's clock a CRL's thisUpdate may be and still clear the CA
 * service's certificate, ms: more means this clock is behind, which would let an old CRL (a
 * replay) look recent for as much longer.
 */
export const CRL_CLOCK_SKEW_MS: number = SKEW_MS;
// A CRL without nextUpdate is taken as current for a week.
const DEFAULT_VALIDITY_MS = 7 * 86_400_000;

/** Options of {@linkcode Revocation}. */
export interface RevocationOptions {
  /** Fetches the CRL, PEM (from the CA service). */
  fetch: () => Promise<string>;
  /** The CA certificate the CRL must be signed by. */
  issuer: X509Certificate;
  /** Called after every successful refresh (to drop peers revoked meanwhile). */
  onUpdate?: () => void;
  /** Called with a message when a refresh fails. */
  onWarning?: (message: string) => void;
  /**
   * Where the newest CRL number accepted is kept across runs (HOME/crl-number), so that a
   * later run refuses an older CRL too. Default: none (the number is held in memory only).
   */
  numberFile?: string;
}

/** The CRL a client holds, and whether it is current. */
export class Revocation {
  #options: RevocationOptions;
  #revoked = new Set<string>();
  #superseded = new Set<string>();
  #fetchedAt = 0;
  #validUntil = 0;
  #signedAt = 0;
  #number?: bigint;
  #failedAt = 0;
  #failure?: E2eError; // why the last fetch failed, when it says (its hint is the one to give)
  #fetching?: Promise<void>;
  #timer?: ReturnType<typeof setInterval>;

  /**
   * Revocation state fed by `options.fetch`; nothing is fetched until {@linkcode refresh}.
   *
   * @example
   * ```ts
   * import { X509Certificate } from "node:crypto";
   * import { Revocation } from "./revocation.ts";
   * const issuer = new X509Certificate(await Deno.readTextFile("ca.crt"));
   * const revocation = new Revocation({
   *   fetch: () => Deno.readTextFile("crl.pem"),
   *   issuer,
   * });
   * await revocation.refresh();
   * revocation.requireCurrent();
   * console.log(revocation.isRevoked("1A2B"));
   * ```
   */
  constructor(options: RevocationOptions) {
    this.#options = options;
  }

  /**
   * Whether the CA refused the last fetch because it no longer takes our certificate
   * (`ERR_FORBIDDEN`: revoked, superseded or expired): it then gives us no CRL, and refuses all
   * else we ask. {@linkcode refusal} says which, when the CA said.
   */
  get refusedUs(): boolean {
    return this.#failure?.code === "ERR_FORBIDDEN";
  }

  /**
   * The CA's refusal of our certificate when {@linkcode refusedUs}: a `CertificateRefused`
   * (client/ca_client.ts) carries its `standing`, when the service said why.
   */
  get refusal(): E2eError | undefined {
    return this.refusedUs ? this.#failure : undefined;
  }

  /**
   * Whether `serial` is on the CRL because another certificate replaced it (reason
   * `superseded`: a renewal, or a new key for its name) rather than for a compromise.
   */
  isSuperseded(serial: string): boolean {
    return this.#superseded.has(normalizeSerialHex(serial));
  }

  /** Whether `serial` (hex, any case, leading zeros or not) is on the CRL. */
  isRevoked(serial: string): boolean {
    return this.#revoked.has(normalizeSerialHex(serial));
  }

  /**
   * Throws `ERR_PEER_REJECTED` unless the CRL held is still current (fail closed); or, when
   * the CA refused to give one because it no longer takes our certificate (revoked, replaced,
   * expired: the CRL comes from the members-only issuance log), that refusal itself.
   */
  requireCurrent(now: number = Date.now()): void {
    if (now >= this.#validUntil) {
      const refused = this.#failure?.code;
      if (refused === "ERR_FORBIDDEN" || refused === "ERR_UNAUTHENTICATED") throw this.#failure;
      throw new E2eError(
        "ERR_PEER_REJECTED",
        "Cannot check revocation: no current CRL from the CA",
        { hint: this.#failure?.hint ?? "is the CA service reachable?" },
      );
    }
  }

  /**
   * Throws `ERR_PEER_REJECTED` unless the CRL held is current and signed within
   * {@linkcode SERVICE_CRL_WINDOW_MS}, and not over {@linkcode CRL_CLOCK_SKEW_MS} in the future:
   * what the CA service's own certificate is checked against.
   */
  requireRecent(now: number = Date.now()): void {
    this.requireCurrent(now);
    const signed = `the newest CRL it sent was signed at ${new Date(this.#signedAt).toISOString()}`;
    const clock = `this machine's clock (now ${new Date(now).toISOString().slice(0, 19)}Z)`;
    // Signed in the future: this clock is behind, and would let a replayed CRL look recent.
    if (this.#signedAt - now > CRL_CLOCK_SKEW_MS) {
      throw new E2eError(
        "ERR_PEER_REJECTED",
        `Cannot check the CA service's certificate: ${signed}, ${
          Math.round((this.#signedAt - now) / 60_000)
        } min ahead of ${clock}`,
        { hint: "check this machine's clock (and time zone), or ask the admin to check the CA's" },
      );
    }
    if (now - this.#signedAt > SERVICE_CRL_WINDOW_MS) {
      throw new E2eError(
        "ERR_PEER_REJECTED",
        `Cannot check the CA service's certificate: ${signed}, over ${
          SERVICE_CRL_WINDOW_MS / 3_600_000
        } h ago`,
        {
          hint:
            `if ${clock} is right, the service signs a new CRL every ${
              CRL_REPUBLISH_MS / 60_000
            } minutes: try again in a moment; one that keeps sending an old CRL may be someone ` +
            "who kept an old service key (tell the admin)",
        },
      );
    }
  }

  /**
   * For a call to the CA service: fetches the CRL unless one signed within
   * {@linkcode SERVICE_CRL_WINDOW_MS} is held (not again within 5 s of the last fetch, whatever it
   * brought); then requires one ({@linkcode requireRecent}).
   */
  async ensureRecent(): Promise<void> {
    const now = Date.now();
    if (now - this.#signedAt > SERVICE_CRL_WINDOW_MS || now >= this.#validUntil) {
      if (now - this.#fetchedAt >= RETRY_AFTER_FAILURE_MS) await this.refresh();
    }
    this.requireRecent();
  }

  /** Fetches the CRL again when the one held is over a minute old; then requires it current. */
  async ensureFresh(): Promise<void> {
    if (Date.now() - this.#fetchedAt > CRL_MAX_AGE_MS) await this.refresh();
    this.requireCurrent();
  }

  /**
   * Fetches and verifies the CRL. One fetch at a time; none within 5 s of a failure.
   * A failure is reported through `onWarning`, never thrown.
   */
  async refresh(): Promise<void> {
    if (this.#fetching) return await this.#fetching;
    if (Date.now() - this.#failedAt < RETRY_AFTER_FAILURE_MS) return;
    this.#fetching = this.#fetch().finally(() => (this.#fetching = undefined));
    return await this.#fetching;
  }

  /** Refreshes every {@linkcode CRL_REFRESH_MS} until {@linkcode stop}. */
  start(): void {
    this.#timer ??= setInterval(() => this.refresh().catch(() => {}), CRL_REFRESH_MS);
  }

  /** Stops the background refresh. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async #fetch(): Promise<void> {
    try {
      const crl = parseCrl(await this.#options.fetch(), this.#options.issuer);
      // A CRL older than the one held (a replay by whoever holds the service's TLS key) would
      // un-revoke what was revoked since: it is refused, and the one held stays. Held here, or
      // by an earlier run of this home, or another process of it (numberFile): a client that
      // just started holds nothing yet.
      const kept = await readNumber(this.#options.numberFile);
      const held = kept === undefined || (this.#number !== undefined && this.#number > kept)
        ? this.#number
        : kept;
      if (held !== undefined && (crl.number === undefined || crl.number < held)) {
        throw new Error(`CRL number ${crl.number ?? "none"} is older than the one held`);
      }
      this.#failure = undefined;
      this.#number = crl.number;
      this.#revoked = crl.revoked;
      this.#superseded = crl.superseded;
      this.#fetchedAt = Date.now();
      this.#signedAt = crl.thisUpdate.getTime();
      this.#validUntil = crl.nextUpdate?.getTime() ??
        crl.thisUpdate.getTime() + DEFAULT_VALIDITY_MS;
      // Kept after it is taken: a number that cannot be written (a full disk) must not keep
      // an older CRL in force; only a later run's defence is weaker, and it says so.
      if (this.#options.numberFile && crl.number !== undefined && crl.number !== kept) {
        await writeFileAtomic(this.#options.numberFile, `${crl.number}\n`, { mode: 0o600 })
          .catch((e) =>
            this.#options.onWarning?.(
              `Cannot keep the CRL number in "${this.#options.numberFile}": ${
                e instanceof Error ? e.message : e
              }`,
            )
          );
      }
    } catch (e) {
      this.#failedAt = Date.now();
      this.#failure = e instanceof E2eError ? e : undefined;
      // The CA no longer taking our certificate is what every call then says (requireCurrent):
      // not a warning about the CRL first.
      if (
        this.#failure?.code === "ERR_FORBIDDEN" || this.#failure?.code === "ERR_UNAUTHENTICATED"
      ) {
        return;
      }
      this.#options.onWarning?.(`Cannot refresh the CRL: ${e instanceof Error ? e.message : e}`);
      return;
    }
    this.#options.onUpdate?.();
  }
}

// The CRL number kept in `file`; undefined when there is none (or it cannot be read, or is not
// a number: then the CRL is taken as by a client that just started).
async function readNumber(file: string | undefined): Promise<bigint | undefined> {
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return undefined;
  }
  // At most 20 octets (lib/crl.ts): 49 decimal digits.
  return /^\d{1,49}\n?$/.test(text) ? BigInt(text.trim()) : undefined;
}
