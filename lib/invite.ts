/**
 * Invite URLs, written by the CA (`deno task ca invite`) and read by the
 * client (`deno task client join`):
 * `e2e-chat://HOST:PORT/NAME?fp=<sha-256 of the CA certificate>&token=<secret>`.
 *
 * This module is the one owner of the format: {@linkcode formatInvite} and
 * {@linkcode parseInvite} are each other's inverse.
 *
 * @module
 */
import { E2eError } from "./errors.ts";
import { isValidName } from "./names.ts";

/** An invite token: 256 random bits, base64url, 43 characters. */
export const TOKEN_PATTERN: RegExp = /^[A-Za-z0-9_-]{43}$/;

const FINGERPRINT_PATTERN = /^[0-9a-f]{64}$/;
const HOST_PATTERN = /^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]{1,253})$/;

/** What an invite says, as {@linkcode formatInvite} takes it. */
export interface InviteFields {
  /** The CA service's host: a DNS name, an IPv4 address or an IPv6 address (brackets optional). */
  host: string;
  /** The CA service's port, 1 to 65535. */
  port: number;
  /** The name the invite enrolls. */
  name: string;
  /** SHA-256 of the CA certificate's DER, 64 lowercase hex characters. */
  fingerprint: string;
  /** The single-use secret. */
  token: string;
}

/** A parsed invite. */
export interface Invite extends InviteFields {
  /** The CA service's host (an IPv6 address without brackets). */
  host: string;
  /** https://HOST:PORT */
  caUrl: string;
}

/**
 * Writes an invite URL; an IPv6 host is put in brackets. Throws `RangeError`
 * for fields that {@linkcode parseInvite} would refuse (the message names the
 * field, never the token).
 *
 * @example
 * ```ts
 * import { formatInvite } from "./invite.ts";
 * const url = formatInvite({
 *   host: "::1",
 *   port: 65433,
 *   name: "alice",
 *   fingerprint: "ab".repeat(32),
 *   token: "A".repeat(43),
 * });
 * console.log(url.startsWith("e2e-chat://[::1]:65433/alice?fp=")); // true
 * ```
 */
export function formatInvite(fields: InviteFields): string {
  const host = fields.host.includes(":") && !fields.host.startsWith("[")
    ? `[${fields.host}]`
    : fields.host;
  if (!HOST_PATTERN.test(host)) throw new RangeError(`Invalid invite host ${JSON.stringify(host)}`);
  if (!Number.isInteger(fields.port) || fields.port < 1 || fields.port > 65535) {
    throw new RangeError(`Invalid invite port ${fields.port}`);
  }
  if (!isValidName(fields.name)) {
    throw new RangeError(`Invalid invite name ${JSON.stringify(fields.name)}`);
  }
  if (!FINGERPRINT_PATTERN.test(fields.fingerprint)) {
    throw new RangeError("Invalid invite fingerprint: expected 64 lowercase hex characters");
  }
  if (!TOKEN_PATTERN.test(fields.token)) throw new RangeError("Invalid invite token");
  return `e2e-chat://${host}:${fields.port}/${fields.name}?fp=${fields.fingerprint}&token=${fields.token}`;
}

/**
 * Parses and checks an invite URL; throws `ERR_INVITE_INVALID`. The error
 * never repeats the URL, which holds a secret.
 *
 * @example
 * ```ts
 * import { parseInvite } from "./invite.ts";
 * const invite = parseInvite(
 *   "e2e-chat://127.0.0.1:65433/alice?fp=" + "ab".repeat(32) + "&token=" + "A".repeat(43),
 * );
 * console.log(invite.caUrl); // https://127.0.0.1:65433
 * ```
 */
export function parseInvite(text: string): Invite {
  const bad = (why: string) =>
    new E2eError("ERR_INVITE_INVALID", `Invalid invite: ${why}`, {
      hint:
        "copy the whole line that `deno task ca invite NAME` printed (on a command line, in quotes)",
    });
  const m = /^e2e-chat:\/\/(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]{1,253}):(\d{1,5})\/([^?#]*)\?([^#]*)$/
    .exec(text.trim());
  if (!m) throw bad("expected e2e-chat://HOST:PORT/NAME?fp=…&token=…");
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad("the port is out of range");
  const name = m[3];
  if (!isValidName(name)) throw bad("the name is not a valid user name");
  const query = new URLSearchParams(m[4]);
  const fingerprint = (query.get("fp") ?? "").replace(/:/g, "").toLowerCase();
  if (!FINGERPRINT_PATTERN.test(fingerprint)) throw bad("fp must be 64 hex characters");
  const token = query.get("token") ?? "";
  if (!TOKEN_PATTERN.test(token)) throw bad("the token is malformed");
  const host = m[1].replace(/^\[|\]$/g, "");
  return { host, port, name, fingerprint, token, caUrl: `https://${m[1]}:${port}` };
}

/**
 * Reads a CA service's address as a user types it — `HOST:PORT` or
 * `https://HOST:PORT` (an IPv6 host in brackets) — and returns the CA URL that
 * invites name, `https://HOST:PORT`. Throws `ERR_USAGE` for anything else.
 *
 * @example
 * ```ts
 * import { parseCaAddress } from "./invite.ts";
 * console.log(parseCaAddress("ca.example.org:65433")); // https://ca.example.org:65433
 * console.log(parseCaAddress("https://[::1]:8443/")); // https://[::1]:8443
 * ```
 */
export function parseCaAddress(text: string): string {
  const m = /^(?:https:\/\/)?(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]{1,253}):(\d{1,5})\/?$/
    .exec(text.trim());
  const port = Number(m?.[2]);
  if (!m || port < 1 || port > 65535) {
    throw new E2eError(
      "ERR_USAGE",
      `A CA address is HOST:PORT or https://HOST:PORT, not ${JSON.stringify(text)}`,
    );
  }
  return `https://${m[1]}:${port}`;
}
