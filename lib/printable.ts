/**
 * Text from someone else (a peer, the CA service) made safe to print on a
 * terminal: it must not drive the terminal or fake a line of ours.
 *
 * @module
 */

/**
 * `text` with control characters (newlines included) shown escaped and the
 * bidi controls that could reorder what is shown dropped.
 *
 * @example
 * ```ts
 * import { printable } from "./printable.ts";
 * printable("hi\u001b[2J\nthere"); // "hi\\x1b[2J\\nthere"
 * ```
 */
export function printable(text: string): string {
  return text
    .replace(/[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/g, "")
    .replace(
      // deno-lint-ignore no-control-regex
      /[\u0000-\u001f\u007f-\u009f]/g,
      (c) =>
        c === "\n"
          ? "\\n"
          : c === "\t"
          ? "\\t"
          : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
    );
}
