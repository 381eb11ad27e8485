/**
 * User names: the one rule every layer shares.
 *
 * A user's name is also the DNS name in their certificate's SAN, and the
 * team CA is trusted by clients that may be pointed at it (README.md's curl
 * examples). So a name must never be one that a host could be reached by:
 * no dots (no `example.com`, no `127.0.0.1`), nothing an URL parser reads as an
 * IPv4 address (`2130706433`, `0x7f000001`), and no reserved or special-use
 * name (`localhost`, RFC 6761 and friends).
 *
 * @module
 */
import { E2eError } from "./errors.ts";

/** The characters of a user name: lowercase letters, digits, `_`, `-`; starts with a letter or digit; at most 63 characters. */
export const NAME_PATTERN: RegExp = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Names a host may be reached by, which no user may hold (RFC 6761, 6762, 7686, 8375, 9476; ICANN's "internal"). */
export const RESERVED_NAMES: ReadonlySet<string> = new Set([
  "localhost",
  "localdomain",
  "localhost-localdomain",
  "ip6-localhost",
  "ip6-loopback",
  "broadcasthost",
  "local",
  "test",
  "invalid",
  "example",
  "onion",
  "alt",
  "arpa",
  "internal",
  "home",
  "lan",
  "wpad",
  "isatap",
]);

// What WHATWG URL parsing reads as an IPv4 address in a single label: decimal, 0x hex, octal.
const IPV4_LOOKALIKE = /^(?:\d+|0x[0-9a-f]*)$/;

// Hyphens as the 3rd and 4th characters: a label IDNA reserves (RFC 5890 §2.3.1), such as an
// `xn--` A-label, which a URL parser refuses when it is not valid Punycode and a browser shows
// as other characters when it is.
const RESERVED_LDH = /^..--/;

/**
 * Whether `name` is a valid user name: {@linkcode NAME_PATTERN}, not a number
 * or hex number (an IPv4 address to a URL parser), not a reserved name, not a
 * label IDNA reserves (`xn--…`: hyphens 3rd and 4th).
 *
 * @example
 * ```ts
 * import { isValidName } from "./names.ts";
 * isValidName("alice"); // true
 * isValidName("localhost"); // false
 * ```
 */
export function isValidName(name: string): boolean {
  return NAME_PATTERN.test(name) && !IPV4_LOOKALIKE.test(name) && !RESERVED_NAMES.has(name) &&
    !RESERVED_LDH.test(name);
}

/**
 * Returns `name` if it is a valid user name, else throws `ERR_NAME_INVALID`.
 *
 * @example
 * ```ts
 * import { checkName } from "./names.ts";
 * checkName("alice"); // "alice"
 * ```
 */
export function checkName(name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw new E2eError("ERR_NAME_INVALID", `Invalid name ${JSON.stringify(name)}`, {
      hint: "use 1-63 characters: a-z, 0-9, '_', '-', starting with a letter or digit",
    });
  }
  if (!isValidName(name)) {
    throw new E2eError("ERR_NAME_INVALID", `Invalid name ${JSON.stringify(name)}`, {
      hint:
        "use 1-63 characters: a-z, 0-9, '_', '-', starting with a letter or digit; not a number, a reserved host name such as localhost, nor '--' as 3rd and 4th characters (xn--)",
    });
  }
  return name;
}

/**
 * A NAME given on the command line (ca and client): one that no member can have is a usage
 * mistake (ERR_USAGE, README: exit 2), with checkName's message and hint.
 */
export function nameArgument(text: string): string {
  try {
    return checkName(text);
  } catch (e) {
    if (!(e instanceof E2eError)) throw e;
    throw new E2eError("ERR_USAGE", e.message, { cause: e, hint: e.hint });
  }
}
