/**
 * User names: the one rule every layer shares.
 *
 * @module
 */
import { E2eError } from "./errors.ts";

/** A valid user name: lowercase letters, digits, `.`, `_`, `-`; starts with a letter or digit; at most 63 characters. */
export const NAME_PATTERN: RegExp = /^[a-z0-9][a-z0-9._-]{0,62}$/;

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
      hint: "use 1-63 characters: a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    });
  }
  return name;
}
