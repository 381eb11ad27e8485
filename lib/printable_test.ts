import assert from "node:assert/strict";
import { printable, shortened } from "./printable.ts";

Deno.test("printable() shows control characters and the line and paragraph separators escaped, and drops bidi controls", () => {
  assert.equal(
    printable("a\u001b[2J\nb\tc\u0085d\u2028e\u2029f\u202eg\u2066h"),
    "a\\x1b[2J\\nb\\tc\\x85d\\u2028e\\u2029fgh",
  );
});

Deno.test("printable() leaves an ordinary message as it is, two or three spaces in a row included", () => {
  for (const text of ["see you at 10 — ok?  fine", "a   b", "Grüße, 你好 👨‍👩‍👧 🇫🇷 ❤️", "می‌خواهم"]) {
    assert.equal(printable(text), text);
  }
});

Deno.test("printable() shows every Unicode blank and filler as a space, and a run of more than three as three", () => {
  const blanks = [" ", "\u00a0", "\u1680", "\u2000", "\u2007", "\u200a", "\u202f", "\u205f"]
    .concat(["\u3000", "\u2800", "\u3164", "\u115f", "\u1160", "\uffa0"]);
  for (const blank of blanks) {
    const name = `U+${blank.codePointAt(0)!.toString(16).padStart(4, "0")}`;
    assert.equal(printable(`a${blank}b`), "a b", name);
    assert.equal(
      printable(`hi${blank.repeat(62)}09:41 <bob> hello`),
      "hi   09:41 <bob> hello",
      name,
    );
  }
  assert.equal(printable(`a${blanks.join("")}b`), "a   b");
});

Deno.test("printable() drops the invisible characters of no width and keeps one joiner of a run", () => {
  const invisible = ["\u200b", "\u2060", "\u2062", "\ufeff", "\u00ad", "\u034f", "\u180e"]
    .concat(["\u17b4", "\u{1d173}"]);
  for (const c of invisible) assert.equal(printable(`a${c.repeat(100)}b`), "ab");
  // Spaces on both sides of invisible ones are one run of blanks.
  assert.equal(printable(`a  ${"\u200b".repeat(50)}  b`), "a   b");
  assert.equal(printable(`x${"\u200d".repeat(100)}y`), "x\u200dy");
  assert.equal(printable(`x${"\u200c\u200d".repeat(50)}y`), "x\u200cy");
});

Deno.test("printable() keeps at most four combining marks on a character (Vietnamese, pointed Hebrew, Hindi and emoji keep theirs) and drops the rest of a stack", () => {
  for (
    const text of [
      "Tiếng Việt",
      "e\u0323\u0302",
      "שָׁלוֹם",
      "בְּרֵאשִׁית",
      "हिन्दी क्षत्रिय",
      "1\ufe0f\u20e3 👁️‍🗨️",
    ]
  ) {
    assert.equal(printable(text), text);
  }
  assert.equal(printable("a" + "\u0301".repeat(100) + "b"), "a" + "\u0301".repeat(4) + "b");
  assert.equal(
    printable("Z" + "\u0336\u0337\u0338\u0489".repeat(30) + "algo"),
    "Z\u0336\u0337\u0338\u0489algo",
  );
  // Joiners between the marks do not split the stack; the ones left become one joiner.
  assert.equal(
    printable("a" + "\u0301\u200d".repeat(50) + "b"),
    "a" + "\u0301\u200d".repeat(4) + "b",
  );
});

Deno.test("shortened() keeps a text no longer than the limit, and cuts a longer one at whole characters with a note of how many were left out", () => {
  assert.equal(shortened("abcd", 4), "abcd");
  assert.equal(shortened("😀".repeat(4), 4), "😀".repeat(4)); // 8 UTF-16 units, 4 characters
  assert.equal(
    shortened("a".repeat(65_536), 2_000),
    `${"a".repeat(2_000)}… (63536 more characters not shown)`,
  );
  assert.equal(shortened("😀".repeat(5), 3), "😀😀😀… (2 more characters not shown)");
});
