import assert from "node:assert/strict";
import { E2eError } from "./errors.ts";
import { checkName, NAME_PATTERN } from "./names.ts";

Deno.test("checkName() returns a valid name unchanged", () => {
  for (
    const name of [
      "alice",
      "a",
      "0",
      "bob-2",
      "carol.smith",
      "dave_x",
      "x".repeat(63),
      "9lives",
      "a-",
    ]
  ) {
    assert.equal(checkName(name), name);
    assert.ok(NAME_PATTERN.test(name), name);
  }
});

Deno.test("checkName() refuses names outside the pattern with ERR_NAME_INVALID", () => {
  const invalid = [
    "", // empty
    "../evil", // path traversal
    "a/b",
    "A B", // uppercase and space
    "Alice", // uppercase
    "-x", // looks like an option
    ".hidden",
    "_x",
    "x".repeat(64), // one too long
    "zoë", // non-ASCII
    "аlice", // Cyrillic a
    "alice\n", // a trailing newline must not slip past `$`
    "alice\u0000",
    "a b",
    "al:ice",
  ];
  for (const name of invalid) {
    assert.throws(() => checkName(name), (e) => {
      assert.ok(e instanceof E2eError, JSON.stringify(name));
      assert.equal(e.code, "ERR_NAME_INVALID");
      assert.equal(e.message, `Invalid name ${JSON.stringify(name)}`);
      assert.match(e.hint ?? "", /1-63 characters/);
      return true;
    });
  }
});
