/**
 * Invite URLs: `e2e-chat://HOST:PORT/NAME?fp=<sha-256 of the CA certificate>&token=<secret>`.
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { NAME_PATTERN } from "../lib/names.ts";

/** A parsed invite. */
export interface Invite {
  /** The CA service's host (an IPv6 address without brackets). */
  host: string;
  /** The CA service's port. */
  port: number;
  /** The name the invite enrolls. */
  name: string;
  /** SHA-256 of the CA certificate's DER, 64 lowercase hex characters. */
  fingerprint: string;
  /** The single-use secret. */
  token: string;
  /** https://HOST:PORT */
  caUrl: string;
}

/**
 * Parses and checks an invite URL. The error never repeats the URL, which holds a secret.
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
      hint: "copy the whole line that `deno task ca invite NAME` printed, in quotes",
    });
  const m = /^e2e-chat:\/\/(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]{1,253}):(\d{1,5})\/([^?#]*)\?([^#]*)$/
    .exec(text.trim());
  if (!m) throw bad("expected e2e-chat://HOST:PORT/NAME?fp=…&token=…");
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad("the port is out of range");
  const name = m[3];
  if (!NAME_PATTERN.test(name)) throw bad("the name is not a valid user name");
  const query = new URLSearchParams(m[4]);
  const fingerprint = (query.get("fp") ?? "").replace(/:/g, "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(fingerprint)) throw bad("fp must be 64 hex characters");
  const token = query.get("token") ?? "";
  if (!/^[A-Za-z0-9_-]{43}$/.test(token)) throw bad("the token is malformed");
  const host = m[1].replace(/^\[|\]$/g, "");
  return { host, port, name, fingerprint, token, caUrl: `https://${m[1]}:${port}` };
}
