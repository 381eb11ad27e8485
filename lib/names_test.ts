import assert from "node:assert/strict";
import { E2eError } from "./errors.ts";
import { checkName, isValidName, NAME_PATTERN, RESERVED_NAMES } from "./names.ts";

Deno.test("checkName() returns a valid name unchanged", () => {
  for (
    const name of [
      "alice",
      "a",
      "0a",
      "bob-2",
      "carol_smith",
      "dave_x",
      "localhost2",
      "x0",
      "x".repeat(63),
      "9lives",
      "a-",
    ]
  ) {
    assert.equal(checkName(name), name);
    assert.ok(NAME_PATTERN.test(name), name);
    assert.ok(isValidName(name), name);
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
    "a.b", // no dots: a name is never a domain
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

Deno.test("checkName() refuses names a host could be reached by: dotted names, IPv4 look-alikes and reserved names", () => {
  const hostLike = [
    "carol.smith", // dotted, like every DNS name with a domain
    "example.com",
    "127.0.0.1",
    "a.",
    "0", // https://0 is 0.0.0.0
    "127",
    "2130706433", // https://2130706433 is 127.0.0.1
    "0177",
    "0x7f000001", // https://0x7f000001 is 127.0.0.1
    "0x",
    "xn--", // an IDNA A-label's prefix: a URL parser refuses it bare
    "xn--pple-43d", // shown by browsers as "аpple", with a Cyrillic а
    "ab--c", // any label with hyphens 3rd and 4th is reserved by IDNA (RFC 5890)
    ...RESERVED_NAMES,
  ];
  for (const name of hostLike) {
    assert.equal(isValidName(name), false, name);
    assert.throws(() => checkName(name), (e) => {
      assert.ok(e instanceof E2eError, name);
      assert.equal(e.code, "ERR_NAME_INVALID");
      assert.equal(e.message, `Invalid name ${JSON.stringify(name)}`);
      return true;
    });
  }
  // Every IPv4 look-alike here is one to the WHATWG URL parser, which is what curl and browsers use.
  for (const name of ["0", "127", "2130706433", "0177", "0x7f000001"]) {
    assert.match(new URL(`https://${name}/`).hostname, /^\d+\.\d+\.\d+\.\d+$/, name);
  }
  assert.ok(RESERVED_NAMES.has("localhost"));
});
