/**
 * The CA's HTTP API, one thin handler per route: parse → validate →
 * authorize → act through the authority → reply — plus the body decoding and
 * error replies the service puts on the wire. docs/API.md is the spec;
 * ca/api_test.ts and tests/ca_service_test.ts check this code against it.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  CRL_CLOCK_SKEW_MS,
  CRL_REPUBLISH_MS,
  normalizeSerialHex,
  parseCrl,
  SERVICE_CRL_WINDOW_MS,
} from "../lib/crl.ts";
import { Backoff, BACKOFF_MAX_MS } from "../lib/backoff.ts";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { type Standing, standingJson } from "../lib/standing.ts";
import { checkName } from "../lib/names.ts";
import { checkPeer, type TrustAnchor } from "../lib/tls.ts";
import { type CertificateInfo, parseCertificate } from "../lib/x509.ts";
import { type CertificateAuthority, issuedAt } from "./authority.ts";
import { issuedBefore } from "./enroll_retry.ts";
import type { InviteStore } from "./invites.ts";
import { type IssuanceLog, MAX_ENTRIES_PAGE } from "./log.ts";
import { isIp } from "./policy.ts";
import type { RateLimiter } from "./rate_limit.ts";
import type { Invitation, Rendezvous } from "./rendezvous.ts";
import type { Mailbox } from "./mailbox.ts";
import { type DiskFloor, SIGNING_BYTES } from "./disk_floor.ts";

/** What the handlers need. */
export interface ApiContext {
  /** The authority, unlocked. */
  ca: CertificateAuthority;
  /** Our CA certificate, to check client certificates. */
  anchor: TrustAnchor;
  /** Enrollment invites. */
  invites: InviteStore;
  /** Pending invitations to talk. */
  rendezvous: Rendezvous;
  /** Enrollment attempts per address. */
  enrollLimiter: RateLimiter;
  /** The issuance log. */
  log: IssuanceLog;
  /** Items kept for members who are offline (ca/mailbox.ts). Default: none (the routes answer 404). */
  mailbox?: Mailbox;
  /** The free-space floor of the CA's disk, for what members make it store. Default: none. */
  disk?: DiskFloor;
  /** Where lines for the CA's admin go (the service's log). Default: nowhere. */
  logLine?: (line: string) => void;
}

/** A request, as the handlers see it. */
export interface ApiRequest {
  /** HTTP method. */
  method: string;
  /** URL path. */
  path: string;
  /** Query parameters. */
  query: URLSearchParams;
  /** The client's address. */
  remoteAddress: string;
  /** The client's certificate, DER, or null. */
  peerDer: Uint8Array | null;
  /** Whether the client prefers JSON to PEM on GET routes. */
  wantsJson: boolean;
  /** The JSON body (already size-limited). */
  json(): Promise<unknown>;
  /** A binary body of `type` (415 otherwise), at most `maxBytes` (413 otherwise). */
  bytes?(type: string, maxBytes: number): Promise<Uint8Array>;
  /** Aborted when the client goes away or the service stops. */
  signal: AbortSignal;
}

/** A reply. */
export interface ApiResponse {
  /** HTTP status. */
  status: number;
  /** Body text. */
  body: string;
  /** A binary body (application/cms), sent instead of `body`. Default: none. */
  bytes?: Uint8Array;
  /** Content type. */
  type:
    | "application/json"
    | "application/x-pem-file"
    | "text/plain; charset=utf-8"
    | "application/cms";
  /** Who the caller was (for the log), when known. */
  user?: string;
  /** More for the log line: names and sizes, never content. Default: none. */
  note?: string;
}

/** Longest long poll, in seconds. */
export const MAX_WAIT_SECONDS = 30;

/** Largest request body, in bytes. */
export const MAX_BODY_BYTES = 64 * 1024;

/**
 * Renewals issued to one member in a day (the last 24 hours), then 429. A client renews about
 * every five days; each renewal adds a certificate to the issuance log for good, a superseded
 * one to every CRL, and a line to the index every revocation copies.
 */
export const RENEWALS_PER_DAY = 10;

/** The HTTP status of each code a refusal can carry; any other is a 500. */
const STATUS: Partial<Record<ErrorCode, number>> = {
  ERR_BAD_REQUEST: 400,
  ERR_DER_INVALID: 400,
  ERR_CSR_INVALID: 400,
  ERR_CSR_SIGNATURE: 400,
  ERR_CSR_NAME_MISMATCH: 400,
  ERR_KEY_REJECTED: 400,
  ERR_NAME_INVALID: 400,
  ERR_DAYS_INVALID: 400,
  ERR_UNAUTHENTICATED: 401,
  ERR_TOKEN_INVALID: 403,
  ERR_FORBIDDEN: 403,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_NAME_TAKEN: 409,
  ERR_TOO_LARGE: 413,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_RATE_LIMITED: 429,
  ERR_QUOTA: 507,
};

/** A refusal as it goes on the wire. */
export interface ErrorReply extends ApiResponse {
  /** The error code (ERR_INTERNAL for anything that is not an E2eError). */
  code: ErrorCode;
  /** Extra headers: retry-after for 429, connection: close for 413. */
  headers: Record<string, string>;
}

/**
 * The reply for a failure, as docs/API.md specifies: a status from the code and
 * `{"error": {"code", "message"}}`; a 500 says only "Internal error".
 *
 * @example
 * ```ts
 * import { E2eError } from "../lib/errors.ts";
 * import { errorReply } from "./api.ts";
 * const reply = errorReply(new E2eError("ERR_NOT_FOUND", 'No route "/x"'));
 * console.log(reply.status, reply.body); // 404 {"error":{"code":"ERR_NOT_FOUND","message":"No route \"/x\""}}
 * ```
 */
export function errorReply(e: unknown): ErrorReply {
  const error = e instanceof E2eError
    ? e
    : new E2eError("ERR_INTERNAL", "Internal error", { cause: e });
  const status = STATUS[error.code] ?? 500;
  // A failure of ours says nothing more to the caller (docs/API.md); the service log names its code.
  const message = status === 500 ? "Internal error" : error.message;
  const code = status === 500 ? "ERR_INTERNAL" : error.code;
  const headers: Record<string, string> = {};
  if (error.code === "ERR_RATE_LIMITED") headers["retry-after"] = "60";
  if (error.code === "ERR_TOO_LARGE") headers["connection"] = "close";
  // Why the caller's own certificate is refused, for its client to say (lib/standing.ts).
  const standing = error instanceof NotCurrentError && error.standing
    ? { standing: standingJson(error.standing) }
    : {};
  return {
    ...json(status, { error: { code, message, ...standing } }),
    code: error.code,
    headers,
  };
}

/**
 * Refuses a body before it is read: a content type other than
 * `application/json` (415) or a declared length over {@linkcode MAX_BODY_BYTES} (413).
 *
 * @example
 * ```ts
 * import { checkBodyHeaders } from "./api.ts";
 * checkBodyHeaders("application/json; charset=utf-8", 120);
 * ```
 */
export function checkBodyHeaders(contentType: string | undefined, length: number): void {
  const type = (contentType ?? "").split(";")[0].trim().toLowerCase();
  if (type !== "application/json") {
    throw new E2eError("ERR_UNSUPPORTED_MEDIA_TYPE", "The body must be application/json");
  }
  if (length > MAX_BODY_BYTES) throw tooLarge();
}

/**
 * Decodes a whole request body: the checks of {@linkcode checkBodyHeaders} on
 * its real length, then strict UTF-8 JSON (400 otherwise).
 *
 * @example
 * ```ts
 * import { parseJsonBody } from "./api.ts";
 * parseJsonBody("application/json", new TextEncoder().encode('{"to":"bob"}')); // { to: "bob" }
 * ```
 */
export function parseJsonBody(contentType: string | undefined, bytes: Uint8Array): unknown {
  checkBodyHeaders(contentType, bytes.length);
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new E2eError("ERR_BAD_REQUEST", "The body is not valid JSON");
  }
}

/**
 * The error for a body over {@linkcode MAX_BODY_BYTES}.
 *
 * @example
 * ```ts
 * import { tooLarge } from "./api.ts";
 * console.log(tooLarge().code); // ERR_TOO_LARGE
 * ```
 */
export function tooLarge(): E2eError {
  return new E2eError("ERR_TOO_LARGE", `The body is larger than ${MAX_BODY_BYTES} bytes`);
}

/** Routes the request to its handler; throws E2eError for every refusal. */
export async function handle(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const { method, path } = req;
  if (path === "/v1/ca") return only(method, "GET") ?? pem(ctx.anchor.pem);
  if (path === "/v1/crl") return only(method, "GET") ?? pem(await crl(ctx));
  if (path === "/v1/enroll") return only(method, "POST") ?? await enroll(ctx, req);
  if (path === "/v1/renew") return only(method, "POST") ?? await renew(ctx, req);
  if (path === "/v1/rendezvous") {
    if (method === "POST") return await offer(ctx, req);
    return only(method, "GET") ?? await pending(ctx, req);
  }
  const taken = /^\/v1\/rendezvous\/(\d{1,16})$/.exec(path);
  if (taken) return only(method, "DELETE") ?? await takeUp(ctx, req, Number(taken[1]));
  if (path.startsWith("/v1/log/")) return only(method, "GET") ?? await logRoute(ctx, req);
  if (path === "/v1/mailbox" || path.startsWith("/v1/mailbox/")) {
    return await mailboxRoute(ctx, req);
  }
  const m = /^\/v1\/certs\/([^/]+)$/.exec(path);
  if (m) return only(method, "GET") ?? await lookup(ctx, req, decodePathName(m[1]));
  throw new E2eError("ERR_NOT_FOUND", `No route ${JSON.stringify(path)}`);
}

function decodePathName(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new E2eError("ERR_NAME_INVALID", "Invalid name: not valid percent-encoding");
  }
}

// What the service knows of the CRL it hands out.
interface CrlState {
  /** crl.pem as last read, and its thisUpdate in ms (undefined: unreadable, or no CRL of ours). */
  text?: string;
  signedAt?: number;
  /** The signing under way, shared by every request meanwhile. */
  signing?: Promise<string>;
  /** Signings failed in a row, the last one's error, and when the next may start. */
  backoff: Backoff;
  error?: unknown;
  notBefore: number;
}

const crlStates = new WeakMap<ApiContext, CrlState>();

async function crl(ctx: ApiContext): Promise<string> {
  // crl.pem is rewritten on every revocation; signed again once its thisUpdate is an hour old,
  // once for all the requests that ask meanwhile (anyone may ask; each signing uses the CA key):
  // clients trust the service's own certificate only on a CRL a few hours old at most
  // (SERVICE_CRL_WINDOW_MS). Its thisUpdate, not crl.pem's mtime: a CA home copied without
  // `cp -a` gives an old CRL a new mtime, and clients refuse it whatever the mtime.
  const state = crlStates.get(ctx) ?? { backoff: new Backoff(), notBefore: 0 };
  crlStates.set(ctx, state);
  const text = await Deno.readTextFile(ctx.ca.paths.crl).catch(() => undefined);
  if (text !== state.text) {
    state.text = text;
    state.signedAt = thisUpdateOf(ctx, text);
  }
  const usable = state.signedAt === undefined ? undefined : text;
  const now = Date.now();
  // One dated ahead of this clock (signed before the clock was put back, e.g. by NTP after
  // running fast) would be handed out until it is an hour old by this clock, while members
  // with a right clock refuse it (CRL_CLOCK_SKEW_MS ahead): signed again at once, numbered
  // above it all the same (ca/authority.ts: a CRL number never goes down).
  const ahead = usable === undefined ? 0 : state.signedAt! - now;
  const current = now - state.signedAt! <= CRL_REPUBLISH_MS && ahead <= CRL_CLOCK_SKEW_MS / 2;
  if (usable !== undefined && current) return usable;
  // A signing that failed (a broken openssl.cnf, a full disk) is tried again after 10, 20, 40 s
  // … at most every 5 min, not by every request (each one ran openssl under the CA lock, where
  // enrollments wait); meanwhile the last CRL is handed out: still current, and clearing the
  // service for 2 h more (before, every GET /v1/crl answered 500, and joins failed at once).
  if (!state.signing && now < state.notBefore) {
    if (usable !== undefined) return usable;
    throw state.error;
  }
  if (!state.signing && ahead > CRL_CLOCK_SKEW_MS / 2 && state.backoff.failures === 0) {
    ctx.logLine?.(
      `e2e-chat-ca: the CRL in crl.pem is dated ${Math.round(ahead / 60_000)} min ahead of this ` +
        `machine's clock (signed at ${new Date(state.signedAt!).toISOString()}): signing a new ` +
        `one; was the clock put back? Members refuse a CRL over ${
          CRL_CLOCK_SKEW_MS / 60_000
        } min ahead of theirs`,
    );
  }
  state.signing ??= freshCrl(ctx, state, usable).finally(() => (state.signing = undefined));
  return await state.signing;
}

// Signs a new CRL, keeping the retry state; when that fails, hands out `last` (or throws). The
// admin hears of it once per run of failures, and again when a signing works.
async function freshCrl(ctx: ApiContext, state: CrlState, last?: string): Promise<string> {
  try {
    const text = await ctx.ca.crl();
    const failures = state.backoff.failures;
    state.backoff.reset();
    state.notBefore = 0;
    state.error = undefined;
    if (failures > 0) ctx.logLine?.(crlSignedAgain(failures));
    return text;
  } catch (e) {
    const wait = state.backoff.next();
    state.notBefore = Date.now() + wait;
    state.error = e;
    if (state.backoff.failures === 1) {
      ctx.logLine?.(crlNotSigned(e, wait, last === undefined ? undefined : state.signedAt));
    }
    if (last === undefined) throw e;
    return last;
  }
}

// The log line of a CRL signed after `failures` failed signings.
function crlSignedAgain(failures: number): string {
  const attempts = failures === 1 ? "1 failed attempt" : `${failures} failed attempts`;
  return `e2e-chat-ca: signed a new CRL again, after ${attempts}`;
}

// The log line of a first failed signing, tried again in `waitMs`; `signedAt`: the last CRL's
// thisUpdate, handed out meanwhile (undefined: there is none to hand out).
function crlNotSigned(error: unknown, waitMs: number, signedAt?: number): string {
  const handed = signedAt === undefined
    ? "and crl.pem holds no CRL to hand out instead: GET /v1/crl fails"
    : `handing out the last one, signed at ${new Date(signedAt).toISOString()}: members ` +
      `take no CRL over ${(CRL_REPUBLISH_MS + CRL_CLOCK_SKEW_MS) / 60_000} min old (a member ` +
      `starting then has none, and connects to nobody), and refuse this service once it is ` +
      `over ${SERVICE_CRL_WINDOW_MS / 3_600_000} h old (at ${
        new Date(signedAt + SERVICE_CRL_WINDOW_MS).toISOString()
      })`;
  return `e2e-chat-ca: cannot sign a new CRL: ${error instanceof Error ? error.message : error}; ` +
    `${handed}; trying again in ${waitMs / 1000} s, then less often (at most every ${
      BACKOFF_MAX_MS / 60_000
    } min)`;
}

// The thisUpdate of `text` in ms, if it is a CRL signed by our CA.
function thisUpdateOf(ctx: ApiContext, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  try {
    return parseCrl(text, ctx.anchor.x509).thisUpdate.getTime();
  } catch {
    return undefined;
  }
}

async function enroll(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const wait = ctx.enrollLimiter.hit(req.remoteAddress);
  if (wait) {
    throw new E2eError("ERR_RATE_LIMITED", "Too many enrollment attempts from this address", {
      hint: `retry in ${Math.ceil(wait / 1000)} s`,
    });
  }
  const body = object(await req.json());
  const csr = text(body.csr, "csr");
  let issued: { name: string; certificate: CertificateInfo };
  try {
    // A request the policy refuses is refused before the token is reserved.
    await ctx.ca.checkRequest(csr, await ctx.invites.nameOf(body.token));
    // Below the disk's free-space floor nothing is stored for a member (ca/disk_floor.ts).
    const written = ctx.disk?.reserve(SIGNING_BYTES);
    issued = await ctx.invites.redeem(body.token, async (name, claim) => {
      // The admin invited this name: a new key replaces a lost one. The token is used exactly
      // when the certificate is committed: its serial is claimed on disk before the index line.
      const beforeCommit = (c: CertificateInfo) => claim(c.serial);
      return { name, ...(await ctx.ca.sign(csr, name, { replace: true, beforeCommit })) };
    }).finally(() => written?.());
  } catch (e) {
    // A retry of a join whose reply was lost gets the same certificate again (ca/enroll_retry.ts);
    // anything else gets the refusal it had.
    if (!(e instanceof E2eError) || e.code !== "ERR_TOKEN_INVALID") throw e;
    const again = await issuedBefore(ctx.ca, ctx.invites, body.token, csr);
    if (!again) throw e;
    return { ...json(200, await logged(ctx, again.certificate)), user: again.name, note: "again" };
  }
  return { ...json(200, await logged(ctx, issued.certificate)), user: issued.name };
}

async function renew(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  // A caller whose certificate a renewal for its own key superseded may ask again: a renewal
  // whose reply was lost (below). Any other one is refused as on every route.
  const caller = await clientCertificate(ctx, req, { superseded: true });
  const current = await ctx.ca.isCurrent(caller.serial);
  if (!current && !await ctx.ca.keyIsCurrent(caller.serial)) throw await notCurrent(ctx, caller);
  const user = caller.commonName;
  const body = object(await req.json());
  const csr = text(body.csr, "csr");
  if (!current) return await renewedBefore(ctx, caller, csr, await notCurrent(ctx, caller));
  // Before: one member renewing in a loop got 18 a second, each one a CRL entry and a log entry.
  const issued = renewalsOf(ctx, user);
  if (issued.length >= RENEWALS_PER_DAY) {
    throw new E2eError(
      "ERR_RATE_LIMITED",
      `Too many renewals for "${user}": ${RENEWALS_PER_DAY} in a day`,
      { hint: `retry in ${Math.ceil((issued[0] + DAY_MS - Date.now()) / 60_000)} min` },
    );
  }
  const written = ctx.disk?.reserve(SIGNING_BYTES);
  let certificate: CertificateInfo;
  try {
    // Renewal keeps the key: a stolen certificate must not be able to swap in the thief's key.
    // (A new key needs the admin: a new invite, or ca sign --replace.) And it is allowed by the
    // caller's certificate only while that is valid (`renews`): a revocation confirmed meanwhile
    // (the body is read after the check) stops it.
    ({ certificate } = await ctx.ca.sign(csr, user, {
      replace: false,
      renews: caller.serial,
    }).finally(() => written?.()));
  } catch (e) {
    // Superseded meanwhile: by the same request sent twice at once, which gets what the first got.
    if (!(e instanceof E2eError) || e.code !== "ERR_FORBIDDEN") throw e;
    return await renewedBefore(ctx, caller, csr, e);
  }
  issued.push(Date.now());
  return { ...json(200, await logged(ctx, certificate)), user };
}

// A retry of a renewal whose reply was lost, as enrollment has one (docs/API.md "POST
// /v1/renew"): the caller's certificate was superseded by one for the same key, and it asks for
// that key again — the TLS handshake and the request's signature prove it holds that key. It
// gets the name's current certificate again; nothing is signed, nor counted against the cap.
// Anything else gets `refusal`.
async function renewedBefore(
  ctx: ApiContext,
  caller: CertificateInfo,
  csr: string,
  refusal: E2eError,
): Promise<ApiResponse> {
  const user = caller.commonName;
  // Checked again: the body came after the first check, as slowly as the caller liked.
  if (!await ctx.ca.keyIsCurrent(caller.serial)) throw refusal;
  const current = await ctx.ca.current(user);
  if (!current || current.keyFingerprint !== caller.keyFingerprint) throw refusal;
  const { request } = await ctx.ca.checkRequest(csr, user);
  if (request.keyFingerprint !== current.keyFingerprint) throw refusal;
  // Said, with when: a client that did not ask for it (its key copied and renewed elsewhere)
  // tells its user, while one whose reply was lost knows it asked.
  const issuedEarlier = issuedAt(current).toISOString();
  return { ...json(200, { ...await logged(ctx, current), issuedEarlier }), user, note: "again" };
}

const DAY_MS = 86_400_000;
const renewals = new WeakMap<ApiContext, Map<string, number[]>>();

// When `user`'s renewals of the last day were issued, oldest first (the caller adds the next).
function renewalsOf(ctx: ApiContext, user: string): number[] {
  const all = renewals.get(ctx) ?? new Map<string, number[]>();
  renewals.set(ctx, all);
  const since = Date.now() - DAY_MS;
  const times = (all.get(user) ?? []).filter((t) => t > since);
  all.set(user, times);
  return times;
}

async function lookup(ctx: ApiContext, req: ApiRequest, name: string): Promise<ApiResponse> {
  const user = await authenticate(ctx, req);
  const certificate = await directory(ctx, name);
  if (req.wantsJson) return { ...json(200, await logged(ctx, certificate)), user };
  return { ...pem(certificate.pem), user };
}

async function offer(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const user = await authenticate(ctx, req);
  const body = object(await req.json());
  // The body comes after the check, as slowly as the caller likes: checked again.
  await authenticate(ctx, req);
  const to = text(body.to, "to");
  if (to === user) throw new E2eError("ERR_BAD_REQUEST", "Cannot rendezvous with yourself");
  // No port: the sender does not listen, and is reached through the relay only.
  const port = body.port;
  if (
    port !== undefined &&
    (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535)
  ) {
    throw new E2eError("ERR_BAD_REQUEST", 'Field "port" must be a whole number from 1 to 65535');
  }
  if (port === undefined && body.host !== undefined) {
    throw new E2eError("ERR_BAD_REQUEST", 'Field "host" needs a "port"');
  }
  const host = port === undefined
    ? undefined
    : body.host === undefined
    ? req.remoteAddress
    : text(body.host, "host");
  if (
    host !== undefined && !isIp(host) &&
    !/^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$/.test(host)
  ) {
    throw new E2eError("ERR_BAD_REQUEST", 'Field "host" must be an IP address or a host name');
  }
  const certificate = await directory(ctx, to);
  // Made for the key the directory gives now: it lapses if `to` joins again with another.
  const invitation = ctx.rendezvous.offer(user, to, {
    host,
    port,
    key: certificate.keyFingerprint,
  });
  return {
    ...json(200, {
      id: invitation.id,
      to,
      expiresAt: invitation.expiresAt.toISOString(),
      peer: await logged(ctx, certificate),
    }),
    user,
  };
}

async function pending(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const { commonName: user, keyFingerprint: key } = await authenticated(ctx, req);
  const after = ctx.rendezvous.cursor(
    wholeNumber(req.query.get("after") ?? "0", "after", Number.MAX_SAFE_INTEGER),
  );
  const wait = wholeNumber(req.query.get("wait") ?? "0", "wait", MAX_WAIT_SECONDS);
  // Invitations made for a key the caller no longer holds (it joined again) are none of its
  // clients' to use: they lapse, and their inviters are told (below, in their own polls).
  ctx.rendezvous.dropStale(user, key);
  const found = (await ctx.rendezvous.wait(user, after, wait * 1000, req.signal))
    .filter((i) => i.key === undefined || i.key === key);
  const invitations = [];
  for (const i of found) {
    const certificate = await ctx.ca.current(i.from);
    if (!certificate) continue; // revoked since it asked
    invitations.push({
      id: i.id,
      from: i.from,
      ...(i.port === undefined ? {} : { host: i.host, port: i.port }),
      expiresAt: i.expiresAt.toISOString(),
      peer: await logged(ctx, certificate),
    });
  }
  // Someone waits for us at the relay (docs/API.md "Relay"); listed only when there is one.
  const asked = ctx.rendezvous.relays(user, after);
  for (const r of asked) r.delivered = true;
  const relays = asked.map((r) => ({ id: r.id, invitation: r.invitation, from: r.from }));
  // Our invitations that lapsed (docs/API.md); listed only when there is one.
  const gone = ctx.rendezvous.lapses(user, after);
  const lapsed = gone.map((l) => ({
    id: l.id,
    invitation: l.invitation,
    to: l.invitee,
    reason: l.reason,
  }));
  const cursor = [...found, ...asked, ...gone].reduce((max, i) => Math.max(max, i.id), after);
  return {
    ...json(200, {
      invitations,
      ...(relays.length ? { relays } : {}),
      ...(lapsed.length ? { lapsed } : {}),
      cursor,
    }),
    user,
  };
}

// The recipient of invitation `id` took it up: it is not listed to them again (docs/API.md).
async function takeUp(ctx: ApiContext, req: ApiRequest, id: number): Promise<ApiResponse> {
  const user = await authenticate(ctx, req);
  // Someone else's invitation gets the same answer as none (as at the relay).
  if (!ctx.rendezvous.taken(id, user)) {
    throw new E2eError("ERR_NOT_FOUND", `No pending invitation ${id}`);
  }
  return { ...json(200, { taken: id }), user };
}

/** A caller of `GET /v1/relay`, authorized: a current member and a party of the invitation. */
export interface RelayParty {
  /** The caller's name. */
  user: string;
  /** The invitation the relay session is for. */
  invitation: Invitation;
  /** The other party's name. */
  peer: string;
  /** The serial of the caller's certificate (hex), to cut the session once it is revoked. */
  serial: string;
}

/**
 * Authorizes a request to be joined at the relay (docs/API.md "Relay"): a
 * client certificate of a current member (401/403), a pending invitation
 * (`?invitation=ID`, 404 when there is none) and the caller one of its two
 * parties (403 otherwise).
 */
export async function relayParty(ctx: ApiContext, req: ApiRequest): Promise<RelayParty> {
  const { commonName: user, serial } = await authenticated(ctx, req);
  const id = wholeNumber(req.query.get("invitation") ?? "", "invitation", Number.MAX_SAFE_INTEGER);
  const invitation = ctx.rendezvous.get(id);
  // Someone else's invitation gets the same answer as none: whether another member's invitation
  // is pending is not the caller's to learn.
  if (!invitation || (user !== invitation.from && user !== invitation.to)) {
    throw new E2eError("ERR_NOT_FOUND", `No pending invitation ${id}`);
  }
  // The other party must still be a member (revoked since the invitation: no session).
  const peer = user === invitation.from ? invitation.to : invitation.from;
  if (!await ctx.ca.current(peer)) {
    throw new E2eError("ERR_NOT_FOUND", `No valid certificate for "${peer}" in the directory`);
  }
  return { user, invitation, peer, serial };
}

/** The caller's name, from a client certificate issued by us, unexpired and current in our database. */
async function authenticate(ctx: ApiContext, req: ApiRequest): Promise<string> {
  return (await authenticated(ctx, req)).commonName;
}

/** The caller's client certificate, checked as {@linkcode authenticate} says. */
async function authenticated(ctx: ApiContext, req: ApiRequest): Promise<CertificateInfo> {
  const info = await clientCertificate(ctx, req);
  if (!await ctx.ca.isCurrent(info.serial)) throw await notCurrent(ctx, info);
  return info;
}

// The caller's certificate is ours but no longer current: the message stays the one older clients
// show; `standing` says which of the three it is, and for a superseded one the name's certificate
// now (its serial and whether the key is the caller's: what the holder of that key may know, and
// needs, to tell a renewal from another home from a new key for its name). An expired one is
// refused with 401 and its own message (clientCertificate), unless it was revoked or superseded
// before it expired: then it is refused as here.
class NotCurrentError extends E2eError {
  readonly standing?: Standing;
  constructor(
    standing?: Standing,
    code: ErrorCode = "ERR_FORBIDDEN",
    message = "The client certificate is revoked or superseded",
  ) {
    super(code, message);
    this.standing = standing;
  }
}

async function notCurrent(ctx: ApiContext, caller: CertificateInfo): Promise<E2eError> {
  const serial = normalizeSerialHex(caller.serial);
  const entry = (await ctx.ca.database()).findLast((e) => normalizeSerialHex(e.serial) === serial);
  if (!entry) return new NotCurrentError();
  if (entry.status === "R" && entry.reason !== "superseded") {
    return new NotCurrentError({ status: "revoked" });
  }
  if (entry.status === "R") {
    const now = await ctx.ca.current(entry.name).catch(() => undefined);
    return new NotCurrentError({
      status: "superseded",
      ...(now
        ? { by: { serial: now.serial, sameKey: now.keyFingerprint === caller.keyFingerprint } }
        : {}),
    });
  }
  return new NotCurrentError({ status: "expired", notAfter: entry.expires });
}

/**
 * The caller's client certificate: issued by us, unexpired, for a valid name (401 otherwise).
 * An expired one of ours that was revoked or superseded before it expired is refused as an
 * unexpired one would be (403, its standing: revoked, or superseded and by what), not as
 * expired; with `superseded`, one superseded is returned instead (renew's retry decides).
 */
async function clientCertificate(
  ctx: ApiContext,
  req: ApiRequest,
  options: { superseded?: boolean } = {},
): Promise<CertificateInfo> {
  if (!req.peerDer) {
    throw new E2eError("ERR_UNAUTHENTICATED", "This route needs a client certificate", {
      hint: "enroll first: deno task client join INVITE",
    });
  }
  let expired: CertificateInfo | undefined;
  try {
    const info = checkPeer(req.peerDer, ctx.anchor);
    checkName(info.commonName);
    return info;
  } catch (e) {
    expired = expiredMember(req.peerDer, ctx.anchor);
    if (!expired) {
      throw new E2eError("ERR_UNAUTHENTICATED", "The client certificate was not accepted", {
        cause: e,
      });
    }
  }
  // "Expired" would have its holder ask for a new invite: wrong for one a renewal elsewhere (or
  // a lost renewal's reply) superseded, or one revoked.
  const refusal = await notCurrent(ctx, expired);
  const standing = refusal instanceof NotCurrentError ? refusal.standing : undefined;
  if (standing?.status === "superseded" && options.superseded) return expired;
  if (standing?.status === "superseded" || standing?.status === "revoked") throw refusal;
  throw new NotCurrentError(
    { status: "expired", notAfter: expired.notAfter },
    "ERR_UNAUTHENTICATED",
    "The client certificate was not accepted",
  );
}

// A member's certificate of ours that is refused only because it expired, parsed: its 401 says so
// in `standing` (unless the index says it was revoked or superseded before), so that its holder
// is told to ask for a new invite. The same 401 and message as before, for older clients.
function expiredMember(der: Uint8Array, anchor: TrustAnchor): CertificateInfo | undefined {
  try {
    const { notAfter } = parseCertificate(pemEncode(der, "CERTIFICATE"));
    if (notAfter.getTime() >= Date.now()) return undefined;
    const info = checkPeer(der, anchor, { now: notAfter });
    checkName(info.commonName);
    return info;
  } catch {
    return undefined; // not one of our members' certificates, expired or not
  }
}

async function directory(ctx: ApiContext, name: string): Promise<CertificateInfo> {
  checkName(name);
  const certificate = await ctx.ca.current(name);
  if (!certificate) {
    throw new E2eError("ERR_NOT_FOUND", `No valid certificate for "${name}" in the directory`);
  }
  return certificate;
}

// GET /v1/log/…: the issuance log, for members (docs/API.md §log).
async function logRoute(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const user = await authenticate(ctx, req);
  const q = (name: string) => wholeNumber(req.query.get(name) ?? "", name, Number.MAX_SAFE_INTEGER);
  const { text: checkpointText, checkpoint } = await ctx.log.checkpoint();
  const size = checkpoint.size;
  const within = (value: number, field: string, min: number, max: number) => {
    if (value < min || value > max) {
      throw new E2eError(
        "ERR_BAD_REQUEST",
        `Parameter ${
          JSON.stringify(field)
        } must be from ${min} to ${max} (the log has ${size} entries)`,
      );
    }
    return value;
  };
  switch (req.path) {
    case "/v1/log/checkpoint":
      return { status: 200, body: checkpointText, type: "text/plain; charset=utf-8", user };
    case "/v1/log/key":
      return { ...pem(await Deno.readTextFile(ctx.ca.paths.logCert)), user };
    case "/v1/log/entries": {
      const start = within(q("start"), "start", 0, size);
      const end = Math.min(within(q("end"), "end", start, size), start + MAX_ENTRIES_PAGE);
      const entries = (await ctx.log.entries(start, end)).map((der) =>
        Buffer.from(der).toString("base64")
      );
      return { ...json(200, { entries }), user };
    }
    case "/v1/log/proof": {
      const treeSize = within(q("size"), "size", 1, size);
      const index = within(q("index"), "index", 0, treeSize - 1);
      const hashes = ctx.log.inclusionProof(index, treeSize).map((h) =>
        Buffer.from(h).toString("base64")
      );
      return { ...json(200, { index, size: treeSize, hashes }), user };
    }
    case "/v1/log/crl": {
      // The CRL members use: the newest one in the log, with its inclusion proof (one signed
      // again when an hour old is logged before it is served). /v1/crl stays the plain file.
      await crl(ctx);
      const latest = await ctx.log.latestCrl();
      if (!latest) throw new E2eError("ERR_NOT_FOUND", "The issuance log holds no CRL yet");
      return { ...json(200, { crl: pemEncode(latest.der, "X509 CRL"), log: latest.log }), user };
    }
    case "/v1/log/consistency": {
      const second = within(q("second"), "second", 0, size);
      const first = within(q("first"), "first", 0, second);
      const hashes = ctx.log.consistencyProof(first, second).map((h) =>
        Buffer.from(h).toString("base64")
      );
      return { ...json(200, { hashes }), user };
    }
  }
  throw new E2eError("ERR_NOT_FOUND", `No route ${JSON.stringify(req.path)}`);
}

/** Content type of a mailbox item. */
export const CMS_TYPE = "application/cms";

// The mailbox (docs/API.md §mailbox): members only; an item is read and deleted by its
// recipient alone. The service never sees inside an item.
async function mailboxRoute(ctx: ApiContext, req: ApiRequest): Promise<ApiResponse> {
  const mailbox = ctx.mailbox;
  if (!mailbox) throw new E2eError("ERR_NOT_FOUND", `No route ${JSON.stringify(req.path)}`);
  const user = await authenticate(ctx, req);
  const { method, path } = req;
  if (path === "/v1/mailbox") {
    only(method, "GET");
    const wait = wholeNumber(req.query.get("wait") ?? "0", "wait", MAX_WAIT_SECONDS);
    const items = await mailbox.wait(user, wait * 1000, req.signal);
    return { ...json(200, { items }), user, note: `${items.length} items` };
  }
  const item = /^\/v1\/mailbox\/items\/([^/]+)$/.exec(path);
  if (item) {
    const id = item[1];
    if (method === "DELETE") {
      const record = await mailbox.remove(user, id);
      return { ...json(200, { deleted: record.id }), user, note: `from ${record.from}` };
    }
    only(method, "GET");
    const bytes = await mailbox.read(user, id);
    return { status: 200, body: "", bytes, type: CMS_TYPE, user, note: `${bytes.length} bytes` };
  }
  const to = /^\/v1\/mailbox\/([^/]+)$/.exec(path);
  if (!to) throw new E2eError("ERR_NOT_FOUND", `No route ${JSON.stringify(path)}`);
  only(method, "POST");
  const name = decodePathName(to[1]);
  if (name === user) throw new E2eError("ERR_BAD_REQUEST", "Cannot post to your own mailbox");
  // Only members have a mailbox: a name without a valid certificate is refused (404).
  await directory(ctx, name);
  if (!req.bytes) throw new E2eError("ERR_UNSUPPORTED_MEDIA_TYPE", `The body must be ${CMS_TYPE}`);
  const body = await req.bytes(CMS_TYPE, mailbox.limits.maxItemBytes);
  // The body comes after the check, as slowly as the caller likes: checked again.
  await authenticate(ctx, req);
  const written = ctx.disk?.reserve(body.length);
  const record = await mailbox.post(user, name, body).finally(() => written?.());
  return { ...json(200, record), user, note: `to ${name} ${record.size} bytes` };
}

// A certificate as the API sends it, with its proof of being in the issuance log.
async function logged(ctx: ApiContext, c: CertificateInfo) {
  const der = pemDecode(c.pem, "CERTIFICATE")!;
  const log = await ctx.log.proofOf(der);
  return { ...certificateJson(c), logIndex: log.index, log };
}

function certificateJson(c: CertificateInfo) {
  return {
    name: c.commonName,
    certificate: c.pem,
    fingerprint: c.fingerprint,
    keyFingerprint: c.keyFingerprint,
    serial: c.serial,
    notAfter: c.notAfter.toISOString(),
  };
}

function only(method: string, allowed: string): undefined {
  if (method !== allowed) {
    throw new E2eError(
      "ERR_METHOD_NOT_ALLOWED",
      `Method ${method} is not allowed here; use ${allowed}`,
    );
  }
  return undefined;
}

function object(value: unknown): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new E2eError("ERR_BAD_REQUEST", "The body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

function text(value: unknown, field: string): string {
  if (typeof value !== "string" || value.length === 0) {
    throw new E2eError(
      "ERR_BAD_REQUEST",
      `Field ${JSON.stringify(field)} must be a non-empty string`,
    );
  }
  return value;
}

function wholeNumber(value: string, field: string, max: number): number {
  if (!/^\d{1,16}$/.test(value) || Number(value) > max) {
    throw new E2eError(
      "ERR_BAD_REQUEST",
      `Parameter ${JSON.stringify(field)} must be a whole number up to ${max}`,
    );
  }
  return Number(value);
}

function json(status: number, value: unknown): ApiResponse {
  return { status, body: JSON.stringify(value) + "\n", type: "application/json" };
}

function pem(text: string): ApiResponse {
  return { status: 200, body: text, type: "application/x-pem-file" };
}
