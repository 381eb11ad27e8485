/**
 * Text from someone else (a peer, the CA service) made safe to print on a
 * terminal: it must not drive the terminal or fake a line of ours.
 *
 * @module
 */

// Bidi controls: they could reorder what is shown around them.
const BIDI = /[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/g;
// Invisible characters of no width that a line of chat never needs (zero-width space, word joiner,
// BOM, soft hyphen, Khmer inherent vowels, invisible operators, …): a terminal shows some of them as
// a blank, so they could pad a line by an amount only the terminal knows.
const INVISIBLE = /[\u00ad\u034f\u17b4\u17b5\u180e\u200b\u2060-\u2064\ufeff\u{1d173}-\u{1d17a}]/gu;
// Characters that show as blank space without being an ASCII space: Unicode spaces and the blank
// "letters" (Braille blank, Hangul fillers) that pass for nothing in a line.
const BLANK = /[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\u2800\u3164\u115f\u1160\uffa0]/g;
// More than this many blanks in a row are shown as this many: two or three spaces are someone's
// typing, sixty are padding meant to push text to where the terminal wraps it.
const MAX_BLANKS = 3;
const BLANK_RUN = new RegExp(` {${MAX_BLANKS + 1},}`, "g");
// Combining marks on one character: Vietnamese puts two on a letter, pointed Hebrew three; more
// than this many are stacked (Zalgo text) to spill over the rows above and below, or to widen a row
// on a terminal that draws marks apart. A run of marks (the joiners and format characters between
// them included) keeps its first four.
const MAX_MARKS = 4;
const MARK_RUN = /\p{M}[\p{M}\p{Cf}]*/gu;
const MARK = /\p{M}/u;
// Joiners (emoji sequences, Persian and Indic writing) are kept, one at a time.
const JOINER_RUN = /([\u200c\u200d])[\u200c\u200d]+/g;
// Control characters (newlines included), and the line and paragraph separators.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

/**
 * `text` with control characters (newlines included) shown escaped, the bidi
 * controls that could reorder what is shown and the invisible characters of no
 * width dropped, at most four combining marks kept on a character, every blank
 * (Unicode spaces, U+2800, the Hangul fillers) shown as a space and a run of
 * more than three of them as three.
 *
 * @example Escaped and collapsed
 * ```ts
 * import { printable } from "./printable.ts";
 * printable("hi\u001b[2J\nthere"); // "hi\\x1b[2J\\nthere"
 * printable("hi" + "\u2800".repeat(60) + "you"); // "hi   you"
 * printable("a" + "\u0301".repeat(100)); // "a" + "\u0301".repeat(4)
 * ```
 */
export function printable(text: string): string {
  return text
    .replace(BIDI, "")
    .replace(INVISIBLE, "")
    .replace(MARK_RUN, (run) => {
      let marks = 0;
      return run.length <= MAX_MARKS ? run : Array.from(run)
        .filter((c) => !MARK.test(c) || ++marks <= MAX_MARKS).join("");
    })
    .replace(BLANK, " ")
    .replace(BLANK_RUN, " ".repeat(MAX_BLANKS))
    .replace(JOINER_RUN, "$1")
    .replace(
      CONTROL,
      (c) =>
        c === "\n"
          ? "\\n"
          : c === "\t"
          ? "\\t"
          : c > "\u00ff"
          ? `\\u${c.charCodeAt(0).toString(16)}`
          : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
    );
}

/**
 * `text` cut to its first `max` characters (code points) and a note of how
 * many were left out, or `text` itself when it is no longer.
 *
 * @example A long text
 * ```ts
 * import { shortened } from "./printable.ts";
 * shortened("a".repeat(10), 4); // "aaaa… (6 more characters not shown)"
 * ```
 */
export function shortened(text: string, max: number): string {
  if (text.length <= max) return text; // UTF-16 units: never fewer than code points
  const chars = Array.from(text);
  if (chars.length <= max) return text;
  return `${chars.slice(0, max).join("")}… (${chars.length - max} more characters not shown)`;
}
