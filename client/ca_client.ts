/**
 * Talking to the CA service. Every call opens TLS pinned to our CA, checks in
 * our own code that the server is the CA service (before a byte of the request
 * is sent), then speaks HTTP/1.1 on that connection. Only the first contact of
 * `join` is unpinned, and it sends nothing secret.
 *
 * @module
 */
import http from "node:http";
import type tls from "node:tls";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import {
  bootstrapOptions,
  checkService,
  clientOptions,
  connectTls,
  type Credentials,
  peerCertificateDer,
  type TrustAnchor,
} from "../lib/tls.ts";
import { isValidName } from "../lib/names.ts";
import { printable } from "../lib/printable.ts";
import { parseStanding, type Standing } from "../lib/standing.ts";
import { type CertificateInfo, parseCertificate, sha256Hex } from "../lib/x509.ts";
import { pemDecode } from "../lib/pem.ts";
import type { LogProofJson } from "../lib/log_proof.ts";
import type { MailboxRecord } from "../lib/mailbox_record.ts";
import { dialRelay } from "./relay.ts";

/** A certificate as the API returns it. */
export interface CertificateReply {
  name: string;
  certificate: string;
  fingerprint: string;
  keyFingerprint: string;
  serial: string;
  notAfter: string;
  /** Its index in the CA's issuance log. */
  logIndex?: number;
  /** Its inclusion proof in the CA's issuance log (lib/log_proof.ts). */
  log?: LogProofJson;
  /**
   * `POST /v1/renew` only: when the CA issued this certificate, ISO 8601, when that was before
   * the request (nothing signed for it: a retry, or a renewal from another home with our key).
   * Older services never send it.
   */
  issuedEarlier?: string;
}

/** An invitation to talk, as the API returns it. */
export interface InvitationReply {
  id: number;
  from: string;
  /** Where `from` listens; absent when it does not (reached through the relay only). */
  host?: string;
  /** Where `from` listens; absent when it does not. */
  port?: number;
  expiresAt: string;
  peer: CertificateReply;
}

/**
 * Our invitation `invitation` to `to` lapsed before `to` took it up: `to` joined again with a new
 * key since (`reason` "key-changed"; docs/API.md).
 */
export interface LapseReply {
  id: number;
  invitation: number;
  to: string;
  reason: string;
}

/** A request to come to the relay, where `from` waits for us (docs/API.md "Relay"). */
export interface RelayRequestReply {
  id: number;
  /** The id of our invitation to `from`. */
  invitation: number;
  from: string;
}

const TIMEOUT_MS = 15_000;
const MAX_REPLY_BYTES = 64 * 1024 * 1024; // a CRL of a long-lived CA can be large

/**
 * Fetches the CA certificate from `caUrl` without trusting anything yet, and
 * returns it only if its SHA-256 equals `fingerprint` (from the invite).
 * Throws `ERR_FINGERPRINT_MISMATCH` otherwise.
 *
 * @example
 * ```ts
 * import { fetchCaCertificate } from "./ca_client.ts";
 * const pem = await fetchCaCertificate("https://127.0.0.1:65433", "ab".repeat(32));
 * ```
 */
export async function fetchCaCertificate(caUrl: string, fingerprint: string): Promise<string> {
  const reply = await call(new URL("/v1/ca", caUrl), { method: "GET" }, undefined);
  const der = reply.status === 200 ? pemDecode(reply.body, "CERTIFICATE") : null;
  if (!der) throw new E2eError("ERR_NETWORK", `The CA service at ${caUrl} sent no CA certificate`);
  const actual = sha256Hex(der);
  if (actual !== fingerprint) {
    throw new E2eError(
      "ERR_FINGERPRINT_MISMATCH",
      `The CA at ${caUrl} has fingerprint ${actual}, but the invite says ${fingerprint}`,
      { hint: "someone may be intercepting the connection; nothing was sent. Ask the admin." },
    );
  }
  return reply.body;
}

/**
 * Fetches the CRL (PEM) from `caUrl` without trusting anything yet, for a join: signed by the
 * CA, it needs no trusted channel, and is checked against the CA certificate once that is pinned
 * (client/revocation.ts). Throws `ERR_NETWORK` when it cannot be had.
 *
 * @example
 * ```ts
 * import { fetchCrl } from "./ca_client.ts";
 * const pem = await fetchCrl("https://127.0.0.1:65433");
 * ```
 */
export async function fetchCrl(caUrl: string): Promise<string> {
  const reply = await call(new URL("/v1/crl", caUrl), { method: "GET" }, undefined);
  if (reply.status !== 200) throw apiError(reply);
  return reply.body;
}

/**
 * The CA's refusal of our own certificate (403 `ERR_FORBIDDEN`, or 401 `ERR_UNAUTHENTICATED` for
 * an expired one) with why, when the service said (docs/API.md "Errors": `standing`); its hint
 * says what to do ({@linkcode ownCertificateWords}). An older service's refusal is a plain
 * {@linkcode E2eError}.
 *
 * @example
 * ```ts
 * import { CertificateRefused } from "./ca_client.ts";
 * const e = new CertificateRefused("The CA refused: …", { status: "revoked" });
 * console.log(e.code, e.standing.status); // ERR_FORBIDDEN revoked
 * ```
 */
export class CertificateRefused extends E2eError {
  /** Why the CA no longer takes our certificate. */
  readonly standing: Standing;

  /**
   * The CA's refusal, `message` as the service's words are shown, with its `standing`; `code` is
   * the service's (default `ERR_FORBIDDEN`; `ERR_UNAUTHENTICATED` for an expired certificate).
   */
  constructor(
    message: string,
    standing: Standing,
    options: { hint?: string; code?: "ERR_FORBIDDEN" | "ERR_UNAUTHENTICATED" } = {},
  ) {
    super(options.code ?? "ERR_FORBIDDEN", message, { hint: options.hint });
    this.standing = standing;
  }
}

/**
 * Why the CA no longer takes `held`, our certificate, in a user's words, and what to do: a
 * superseded one names the newer one, and tells a renewal from another home (the same key: `renew`
 * fetches it; one the user did not make means someone else holds the key) from a new key for our
 * name (someone else may hold it now).
 *
 * @example
 * ```ts
 * import { ownCertificateWords } from "./ca_client.ts";
 * const held = { commonName: "bob", serial: "1A" };
 * const { message, hint } = ownCertificateWords(held, {
 *   status: "superseded",
 *   by: { serial: "2B", sameKey: false },
 * });
 * console.log(`${message}\n${hint}`);
 * ```
 */
export function ownCertificateWords(
  held: Pick<CertificateInfo, "commonName" | "serial">,
  standing: Standing,
): { message: string; hint: string } {
  const name = held.commonName;
  const newInvite = `ask your admin for a new invite (deno task ca invite ${name}) and join ` +
    "with it in another --home";
  switch (standing.status) {
    case "expired":
      return {
        message: `Your certificate expired on ${standing.notAfter.toISOString()}`,
        hint: `an expired certificate cannot be renewed: ${newInvite}`,
      };
    case "revoked":
      return {
        message: "Your certificate is on the CA's revocation list",
        hint: `the admin revoked it: if you should still be a member, ${newInvite}`,
      };
    case "superseded": {
      const by = standing.by;
      if (!by) {
        return {
          message: `Your certificate (serial ${held.serial}) was superseded by another for ` +
            `"${name}", which is no longer valid either`,
          hint: newInvite,
        };
      }
      const newer = `A newer certificate for "${name}" was issued (serial ${by.serial})`;
      const older = `this home holds an older one (serial ${held.serial})`;
      return by.sameKey
        ? {
          message: `${newer}, for this same key: ${older}`,
          // A renewal needs nothing but the key and certificate, so one we did not make is a
          // thief's: the hint must not only steer toward adopting it.
          hint: "if you renewed it from another home, use that home, or fetch the newer " +
            "certificate here with deno task client renew; if you did not, your key is in " +
            `someone else's hands: tell your admin to revoke it (deno task ca revoke ${name} ` +
            `--reason keyCompromise) and give you a new invite (deno task ca invite ${name}), ` +
            "and join with it in another --home",
        }
        : {
          message: `${newer}, for another key: ${older}`,
          hint: `if you joined again from another home, use that one; if not, ${newInvite}, ` +
            `and tell them: someone else may now hold "${name}"`,
        };
    }
  }
}

/**
 * What to tell a member whose renewal got a certificate for its key that a renewal this home did
 * not make was issued (`name`, its name; `issuedAt`, when): it is taken, as it is for our key,
 * but a renewal needs nothing but the key and certificate, so one we did not make may be a
 * thief's (docs/SECURITY.md).
 *
 * @example
 * ```ts
 * import { unaskedRenewalWords } from "./ca_client.ts";
 * const { message, hint } = unaskedRenewalWords("bob", new Date("2026-12-02T09:41:07Z"));
 * console.log(`${message}\n${hint}`);
 * ```
 */
export function unaskedRenewalWords(
  name: string,
  issuedAt: Date,
): { message: string; hint: string } {
  return {
    message: `A certificate for your key was issued at ${issuedAt.toISOString()} by a renewal ` +
      "this home did not make; this home uses it now",
    hint: "if you did not renew from another home, your key is in someone else's hands: have " +
      `your admin revoke it (deno task ca revoke ${name} --reason keyCompromise) and give you a ` +
      `new invite (deno task ca invite ${name}), and join with it in another --home`,
  };
}

/** A client of the CA API, pinned to our CA, optionally with our own certificate. */
export class CaClient {
  #base: string;
  #anchor: TrustAnchor;
  #own?: Credentials;
  #revocation?: ServiceRevocation;

  /** A client for the service at `caUrl` that trusts `anchor` only. */
  constructor(caUrl: string, anchor: TrustAnchor, own?: Credentials) {
    this.#base = caUrl;
    this.#anchor = anchor;
    this.#own = own;
  }

  /**
   * Refuses from now on a service whose TLS certificate is on `revocation`'s CRL (the client's
   * client/revocation.ts), and asks nothing but the CRL of a service before a recent CRL is
   * held: one that withheld it could otherwise pose as the service with a revoked key. The CRL
   * itself is still fetched from such a service: signed by the CA, it needs no trusted channel
   * (as on the plain-HTTP CRL listener), and a client that could not fetch it would fail closed
   * for good.
   */
  checkServiceRevocation(revocation: ServiceRevocation): void {
    this.#revocation = revocation;
  }

  /** Authenticates later requests with `own` instead (after a renewal). */
  useCredentials(own: Credentials): void {
    this.#own = own;
  }

  /** POST /v1/enroll */
  async enroll(token: string, csr: string): Promise<CertificateReply> {
    return await this.#json("POST", "/v1/enroll", { token, csr }) as CertificateReply;
  }

  /**
   * POST /v1/renew. `options.onServiceDate` is given the service's clock when it answered (its
   * HTTP `Date` header, ms, to the second), when the reply, a refusal included, carries one: a
   * renewal compares the issuance times the CA gives with its own attempts' in the CA's time.
   */
  async renew(csr: string, options: RenewCallOptions = {}): Promise<CertificateReply> {
    return await this.#json(
      "POST",
      "/v1/renew",
      { csr },
      undefined,
      options.onServiceDate,
    ) as CertificateReply;
  }

  /** GET /v1/certs/{name} */
  async lookup(name: string): Promise<CertificateReply> {
    return await this.#json("GET", `/v1/certs/${encodeURIComponent(name)}`) as CertificateReply;
  }

  /** POST /v1/rendezvous (no port: we do not listen, and are reached through the relay) */
  async offer(
    to: string,
    port?: number,
    host?: string,
  ): Promise<{ id: number; to: string; expiresAt: string; peer: CertificateReply }> {
    const where = port === undefined ? {} : { port, ...(host ? { host } : {}) };
    return await this.#json("POST", "/v1/rendezvous", { to, ...where }) as {
      id: number;
      to: string;
      expiresAt: string;
      peer: CertificateReply;
    };
  }

  /** GET /v1/rendezvous?after=…&wait=… */
  async pending(
    after = 0,
    waitSeconds = 0,
  ): Promise<
    {
      invitations: InvitationReply[];
      relays?: RelayRequestReply[];
      lapsed?: LapseReply[];
      cursor: number;
    }
  > {
    const path = `/v1/rendezvous?after=${after}&wait=${waitSeconds}`;
    return await this.#json("GET", path, undefined, (waitSeconds + 15) * 1000) as {
      invitations: InvitationReply[];
      relays?: RelayRequestReply[];
      lapsed?: LapseReply[];
      cursor: number;
    };
  }

  /** DELETE /v1/rendezvous/{id}: we took up that invitation to us (not listed to us again). */
  async taken(invitation: number): Promise<void> {
    await this.#json("DELETE", `/v1/rendezvous/${invitation}`);
  }

  /** GET /v1/relay?invitation=ID, upgraded: the connection spliced to the other party's. */
  async relay(invitation: number, timeoutMs?: number): Promise<tls.TLSSocket> {
    if (!this.#own) {
      throw new E2eError("ERR_NOT_ENROLLED", "The relay needs our certificate");
    }
    const revocation = this.#revocation;
    // A recent CRL first: without one, "not on the CRL" means nothing, and whoever holds a
    // revoked service key need only withhold it (or replay one from before the revocation).
    await revocation?.ensureRecent();
    return await dialRelay(this.#base, this.#anchor, invitation, {
      own: this.#own,
      timeoutMs,
      isRevoked: revocation && ((serial) => revocation.isRevoked(serial)),
    });
  }

  /** GET /v1/crl (PEM) */
  async crl(): Promise<string> {
    const reply = await call(new URL("/v1/crl", this.#base), { method: "GET" }, {
      anchor: this.#anchor,
      own: this.#own,
    });
    if (reply.status !== 200) throw apiError(reply, this.#own);
    return reply.body;
  }

  /**
   * GET /v1/log/crl: the newest CRL in the issuance log (PEM) and its inclusion proof, unchecked
   * (client/transparency.ts `LogMonitor.loggedCrl` checks them). A service too old to log its
   * CRLs has no such route: `ERR_PEER_REJECTED` saying so.
   */
  async loggedCrl(): Promise<{ crl: string; log: unknown }> {
    const reply = await call(new URL("/v1/log/crl", this.#base), {
      method: "GET",
      accept: "application/json",
    }, this.#tls());
    if (reply.status === 404 && /No route/.test(reply.body)) {
      throw new E2eError(
        "ERR_PEER_REJECTED",
        "The CA service does not put its CRLs in its issuance log (it has no GET /v1/log/crl): " +
          "it runs an earlier e2e-chat than this client, which takes only a logged CRL",
        {
          hint: "ask the admin to update the CA service; until then this client checks no " +
            "revocation, so it connects to no one",
        },
      );
    }
    if (reply.status !== 200) throw apiError(reply, this.#own);
    const body = parseJson(reply.body) as { crl?: unknown; log?: unknown };
    if (typeof body?.crl !== "string") {
      throw new E2eError("ERR_LOG_INVALID", "The CA sent no CRL with its log proof");
    }
    return { crl: body.crl, log: body.log };
  }

  /**
   * A client of the same service, as the same member, that checks the service's certificate
   * against `revocation` (a CRL being checked) instead of the CRL held, or against none: for
   * fetching and checking the CRL itself, which would otherwise wait on itself (see
   * {@linkcode checkServiceRevocation}).
   */
  forCrl(revocation?: ServiceRevocation): CaClient {
    const client = new CaClient(this.#base, this.#anchor, this.#own);
    if (revocation) client.checkServiceRevocation(revocation);
    return client;
  }

  /** GET /v1/log/key: the log key's certificate (PEM) */
  async logKey(): Promise<string> {
    return await this.#text("/v1/log/key");
  }

  /** GET /v1/log/checkpoint: the latest signed checkpoint */
  async checkpoint(): Promise<string> {
    return await this.#text("/v1/log/checkpoint");
  }

  /** GET /v1/log/entries: certificates (base64 DER) start ≤ i < end, possibly fewer */
  async logEntries(start: number, end: number): Promise<string[]> {
    const reply = await this.#json("GET", `/v1/log/entries?start=${start}&end=${end}`) as {
      entries?: unknown;
    };
    if (!Array.isArray(reply?.entries) || !reply.entries.every((e) => typeof e === "string")) {
      throw new E2eError("ERR_LOG_INVALID", "The CA sent log entries that are not a list");
    }
    return reply.entries;
  }

  /** GET /v1/log/consistency: the proof (base64 hashes) from size first to second */
  async consistency(first: number, second: number): Promise<unknown> {
    const reply = await this.#json("GET", `/v1/log/consistency?first=${first}&second=${second}`);
    return (reply as { hashes?: unknown })?.hashes;
  }

  /** POST /v1/mailbox/{name}: posts a mailbox item (CMS, DER); the service's record of it. */
  async mailboxPost(name: string, item: Uint8Array): Promise<MailboxRecord> {
    const reply = await call(new URL(`/v1/mailbox/${encodeURIComponent(name)}`, this.#base), {
      method: "POST",
      body: item,
      contentType: "application/cms",
      accept: "application/json",
      timeoutMs: MAILBOX_TIMEOUT_MS,
    }, this.#tls());
    if (reply.status !== 200) throw apiError(reply, this.#own);
    return parseJson(reply.body) as MailboxRecord;
  }

  /** GET /v1/mailbox?wait=…: the items waiting for us (records only). */
  async mailboxList(waitSeconds = 0): Promise<MailboxRecord[]> {
    const reply = await this.#json(
      "GET",
      `/v1/mailbox?wait=${waitSeconds}`,
      undefined,
      (waitSeconds + 15) * 1000,
    ) as { items?: unknown };
    if (!Array.isArray(reply?.items)) {
      throw new E2eError("ERR_NETWORK", "The CA sent a mailbox list that is not a list");
    }
    // What the mailbox reads of a record (its id and sender), checked here: a hostile or broken
    // service's `null` must not become a TypeError in every look.
    reply.items.forEach((record: unknown, i) => {
      const why = recordProblem(record);
      if (why) {
        throw new E2eError(
          "ERR_NETWORK",
          `The CA sent a mailbox list whose record ${i + 1} is not one: ${why}`,
        );
      }
    });
    return reply.items as MailboxRecord[];
  }

  /** GET /v1/mailbox/items/{id}: one item (CMS, DER). */
  async mailboxFetch(id: string): Promise<Uint8Array> {
    const reply = await call(
      new URL(`/v1/mailbox/items/${encodeURIComponent(id)}`, this.#base),
      { method: "GET", timeoutMs: MAILBOX_TIMEOUT_MS },
      this.#tls(),
    );
    if (reply.status !== 200) throw apiError(reply, this.#own);
    return reply.bytes;
  }

  /** DELETE /v1/mailbox/items/{id}: acknowledges (deletes) an item of ours. */
  async mailboxDelete(id: string): Promise<void> {
    await this.#json("DELETE", `/v1/mailbox/items/${encodeURIComponent(id)}`);
  }

  async #text(path: string): Promise<string> {
    const reply = await call(new URL(path, this.#base), { method: "GET" }, this.#tls());
    if (reply.status !== 200) throw apiError(reply, this.#own);
    return reply.body;
  }

  async #json(
    method: string,
    path: string,
    body?: unknown,
    timeoutMs?: number,
    onServiceDate?: (ms: number) => void,
  ): Promise<unknown> {
    const reply = await call(new URL(path, this.#base), {
      method,
      body: body === undefined ? undefined : JSON.stringify(body),
      accept: "application/json",
      timeoutMs,
    }, this.#tls());
    if (reply.date !== undefined) onServiceDate?.(reply.date);
    if (reply.status !== 200) throw apiError(reply, this.#own);
    return parseJson(reply.body);
  }

  #tls(): Pinned {
    return { anchor: this.#anchor, own: this.#own, revocation: this.#revocation };
  }
}

/** Options of {@linkcode CaClient.renew}. */
export interface RenewCallOptions {
  /** Given the service's `Date` header (ms) when its reply has one. Default: none. */
  onServiceDate?: (ms: number) => void;
}

/** A mailbox item as the service describes it (docs/API.md §mailbox; lib/mailbox_record.ts). */
export type { MailboxRecord };

// Why `record`, listed by the service, is not a mailbox record, if it is not.
function recordProblem(record: unknown): string | undefined {
  if (typeof record !== "object" || record === null || Array.isArray(record)) {
    return record === null ? "null" : Array.isArray(record) ? "a list" : typeof record;
  }
  const { id, from } = record as Record<string, unknown>;
  if (typeof id !== "string" || !/^[0-9a-f]{32}$/.test(id)) return "its id is not 32 hex digits";
  if (typeof from !== "string" || !isValidName(from)) return "its sender is not a user name";
  return undefined;
}

/**
 * What to do when the service cannot be reached. Most often it is restarting or stopped for a
 * while; a CA that moved (the one case for move-ca) is rare, and the admin says so.
 */
const UNREACHABLE_HINT = "the service is most likely restarting or stopped for a while: " +
  "try again in a moment (a running chat keeps looking, and says when it answers again); " +
  "if it lasts, ask your admin. Only if they say the CA moved: " +
  "deno task client move-ca NEW_HOST:PORT";
/** The same, for `join`'s first contact: there is no CA to move yet, only the invite's address. */
const UNREACHABLE_JOIN_HINT = "the service is most likely restarting or stopped for a while: " +
  "try again in a moment; if it lasts, check the address in the invite with your admin";

/** How long a mailbox upload or download may take (up to ~8 MiB), ms. */
const MAILBOX_TIMEOUT_MS = 60_000;

function parseJson(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    throw new E2eError("ERR_NETWORK", "The CA service sent a reply that is not JSON");
  }
}

/**
 * The CRL a {@linkcode CaClient} checks the service's own certificate against
 * (client/revocation.ts `Revocation`).
 */
export interface ServiceRevocation {
  /** Whether `serial` is on the CRL held. */
  isRevoked(serial: string): boolean;
  /**
   * Fetches the CRL unless a recent one is held (signed within a few of the service's republishing
   * intervals); throws `ERR_PEER_REJECTED` unless one is then. An older CRL, though current for
   * peers, could be one whoever kept a revoked service key replays from before the revocation.
   */
  ensureRecent(): Promise<void>;
}

// What a call trusts: our CA only, a service certificate not on the CRL held (a recent one),
// and our own certificate to show.
interface Pinned {
  anchor: TrustAnchor;
  own?: Credentials;
  revocation?: ServiceRevocation;
}

interface Reply {
  status: number;
  body: string;
  bytes: Uint8Array;
  /** Seconds, from a 429's retry-after. */
  retryAfter?: number;
  /** The service's clock when it answered (its `Date` header, ms), when it sent one. */
  date?: number;
}

// The service's refusal of a call as an E2eError; `own`, the certificate we called with, is the one
// a refusal of our certificate speaks of. A 4xx is marked (requestRefused).
function apiError(reply: Reply, own?: Credentials): E2eError {
  const error = describeError(reply, own);
  if (reply.status >= 400 && reply.status < 500) refusedErrors.add(error);
  return error;
}

function describeError(reply: Reply, own?: Credentials): E2eError {
  let code: ErrorCode = "ERR_NETWORK";
  let message = `The CA service answered ${reply.status}`;
  let standing: Standing | undefined;
  try {
    const e = JSON.parse(reply.body).error;
    if (reply.status === 403 && e?.code === "ERR_FORBIDDEN") standing = parseStanding(e.standing);
    // An expired certificate is refused before anything is looked up, with 401 (docs/API.md).
    if (reply.status === 401 && e?.code === "ERR_UNAUTHENTICATED") {
      const expired = parseStanding(e.standing);
      if (expired?.status === "expired") standing = expired;
    }
    if (typeof e?.code === "string" && typeof e?.message === "string") {
      code = e.code as ErrorCode;
      // The service's words, shown on our terminal: printable, and not a page of them.
      const words = printable(e.message.slice(0, 500));
      // A 500 is the service failing, not refusing: what was asked may have been done.
      message = reply.status === 500
        ? `The CA service failed (${reply.status}): ${words}`
        : `The CA refused: ${words}`;
    }
  } catch { /* not JSON: keep the status */ }
  if (standing) {
    let words: { message: string; hint: string } | undefined;
    try {
      words = own && ownCertificateWords(parseCertificate(own.cert), standing);
    } catch { /* our own certificate unreadable: the refusal without a hint */ }
    if (standing.status === "expired") {
      // The service's words ("was not accepted") say less than ours: it expired, and when.
      return new CertificateRefused(words?.message ?? message, standing, {
        hint: words?.hint,
        code: "ERR_UNAUTHENTICATED",
      });
    }
    return new CertificateRefused(message, standing, { hint: words?.hint });
  }
  const wait = reply.retryAfter;
  return new E2eError(code, message, {
    hint: code === "ERR_RATE_LIMITED" && wait !== undefined
      ? `the CA takes only so many of these a minute: retry in ${wait} s`
      : reply.status === 500
      ? "its log says why; the same command can be run again once it is fixed"
      : undefined,
  });
}

function ignore(): void {}

// Errors of calls that failed before any byte of the request was written (below).
const unsentErrors = new WeakSet<object>();
// Errors of calls the service answered with a 4xx (apiError).
const refusedErrors = new WeakSet<object>();

/**
 * Whether `error`, thrown by a {@linkcode CaClient} call, is the service's refusal of it: a 4xx,
 * which changes nothing (docs/API.md "Errors"), so the request did not issue anything. False for
 * anything else: a 5xx (it may have failed after it acted), a reply lost, no connection.
 *
 * @example
 * ```ts
 * import { CaClient, requestRefused } from "./ca_client.ts";
 * declare const ca: CaClient;
 * await ca.renew("csr").catch((e) => console.log(requestRefused(e))); // true: 400 ERR_CSR_INVALID
 * ```
 */
export function requestRefused(error: unknown): boolean {
  return typeof error === "object" && error !== null && refusedErrors.has(error);
}

function unsent<T>(error: T): T {
  if (typeof error === "object" && error !== null) unsentErrors.add(error);
  return error;
}

/**
 * Whether `error`, thrown by a {@linkcode CaClient} call, came before any of the request was sent:
 * no connection (refused, no route, no TLS handshake) or the service's certificate refused. The
 * service then cannot have acted on it. False for anything else, a reply lost included.
 *
 * @example
 * ```ts
 * import { CaClient, requestUnsent } from "./ca_client.ts";
 * declare const ca: CaClient;
 * await ca.renew("csr").catch((e) => console.log(requestUnsent(e))); // true: nothing listens
 * ```
 */
export function requestUnsent(error: unknown): boolean {
  return typeof error === "object" && error !== null && unsentErrors.has(error);
}

async function call(
  url: URL,
  request: {
    method: string;
    body?: string | Uint8Array;
    contentType?: string;
    accept?: string;
    timeoutMs?: number;
  },
  pinned: Pinned | undefined,
): Promise<Reply> {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 443);
  const timeoutMs = request.timeoutMs ?? TIMEOUT_MS;
  const options = pinned
    ? clientOptions(pinned.anchor, { own: pinned.own, servername: host })
    : bootstrapOptions(); // checked by fingerprint afterwards
  let socket: tls.TLSSocket;
  try {
    socket = await connectTls({ ...options, host, port }, TIMEOUT_MS);
  } catch (e) {
    throw unsent(
      new E2eError("ERR_NETWORK", `Cannot reach the CA service at ${url.origin}`, {
        cause: e,
        detail: e instanceof Error ? e.message : String(e),
        hint: pinned ? UNREACHABLE_HINT : UNREACHABLE_JOIN_HINT,
      }),
    );
  }
  if (pinned) {
    const revocation = pinned.revocation;
    const check = () => {
      checkService(peerCertificateDer(socket), pinned.anchor, {
        isRevoked: revocation && ((serial) => revocation.isRevoked(serial)),
        origin: url.origin,
      });
    };
    try {
      check();
      // Then a recent CRL (see relay()), and the certificate checked against it; after the
      // connection, so that a service that cannot be reached is said so (ERR_NETWORK).
      if (revocation) {
        // A reset meanwhile must not go unheard (the request then fails as not answered).
        socket.on("error", ignore);
        await revocation.ensureRecent().finally(() => socket.off("error", ignore));
        check();
      }
    } catch (e) {
      socket.destroy();
      throw unsent(e);
    }
  }
  return await new Promise<Reply>((resolve, reject) => {
    const headers: Record<string, string> = { connection: "close" };
    if (request.accept) headers.accept = request.accept;
    const body = typeof request.body === "string"
      ? new TextEncoder().encode(request.body)
      : request.body;
    if (body) {
      headers["content-type"] = request.contentType ?? "application/json";
      headers["content-length"] = String(body.length);
    }
    const req = http.request({
      host,
      port,
      method: request.method,
      path: url.pathname + url.search,
      headers,
      createConnection: () => socket as never,
      timeout: timeoutMs,
    }, (res) => {
      const chunks: Uint8Array[] = [];
      let size = 0;
      res.on("data", (c: Uint8Array) => {
        size += c.length;
        if (size > MAX_REPLY_BYTES) {
          res.destroy();
          reject(new E2eError("ERR_NETWORK", "The CA service sent too large a reply"));
        } else chunks.push(c);
      });
      res.on("end", () => {
        const all = new Uint8Array(size);
        let o = 0;
        for (const c of chunks) {
          all.set(c, o);
          o += c.length;
        }
        const retryAfter = Number(res.headers["retry-after"]);
        const date = Date.parse(String(res.headers.date ?? ""));
        resolve({
          ...(Number.isFinite(date) ? { date } : {}),
          status: res.statusCode ?? 0,
          body: new TextDecoder().decode(all),
          bytes: all,
          ...(Number.isInteger(retryAfter) && retryAfter > 0 && retryAfter <= 3600
            ? { retryAfter }
            : {}),
        });
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (e) =>
      reject(
        new E2eError("ERR_NETWORK", `The CA service at ${url.origin} did not answer`, {
          cause: e,
          hint: "it may be restarting or busy: try again in a moment; if it lasts, ask your admin",
        }),
      ));
    req.end(body);
  });
}
