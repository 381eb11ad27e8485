import assert from "node:assert/strict";
import { pemDecode, pemEncode } from "./pem.ts";

Deno.test("pemDecode() decodes a single block", () => {
  assert.deepEqual(
    pemDecode("-----BEGIN X-----\nAQID\n-----END X-----\n", "X"),
    Uint8Array.of(1, 2, 3),
  );
});

Deno.test("pemDecode() ignores text around the block and whitespace inside it", () => {
  const text = "Subject: alice\r\n-----BEGIN X-----\r\n AQ\tID \r\n-----END X-----\r\ntrailer\n";
  assert.deepEqual(pemDecode(text, "X"), Uint8Array.of(1, 2, 3));
});

Deno.test("pemDecode() accepts padded base64", () => {
  assert.deepEqual(pemDecode("-----BEGIN X-----\nAQ==\n-----END X-----", "X"), Uint8Array.of(1));
  assert.deepEqual(pemDecode("-----BEGIN X-----\nAQI=\n-----END X-----", "X"), Uint8Array.of(1, 2));
});

Deno.test("pemDecode() decodes an empty block to no bytes", () => {
  assert.deepEqual(pemDecode("-----BEGIN X-----\n-----END X-----\n", "X"), new Uint8Array());
});

Deno.test("pemDecode() returns null when there is no block with the label", () => {
  assert.equal(pemDecode("no PEM here", "X"), null);
  assert.equal(pemDecode("-----BEGIN Y-----\nAQID\n-----END Y-----\n", "X"), null);
});

Deno.test("pemDecode() does not take a longer label for the one asked", () => {
  const request = "-----BEGIN CERTIFICATE REQUEST-----\nAQID\n-----END CERTIFICATE REQUEST-----\n";
  assert.equal(pemDecode(request, "CERTIFICATE"), null);
  assert.deepEqual(pemDecode(request, "CERTIFICATE REQUEST"), Uint8Array.of(1, 2, 3));
});

Deno.test("pemDecode() returns null for a block without its END line", () => {
  assert.equal(pemDecode("-----BEGIN X-----\nAQID\n", "X"), null);
  assert.equal(pemDecode("-----BEGIN X-----\nAQID\n-----END Y-----\n", "X"), null);
});

Deno.test("pemDecode() refuses two blocks with the label", () => {
  const block = "-----BEGIN X-----\nAQID\n-----END X-----\n";
  assert.equal(pemDecode(block + block, "X"), null);
  assert.equal(pemDecode(block + "-----BEGIN X-----\nBAUG\n", "X"), null);
});

Deno.test("pemDecode() returns null for invalid base64", () => {
  for (
    const body of [
      "AQI", // not a multiple of 4
      "AQ!D", // character outside the alphabet
      "A===", // too much padding
      "AQ==AQID", // padding in the middle
      "AQ-_", // base64url is not PEM
    ]
  ) {
    assert.equal(pemDecode(`-----BEGIN X-----\n${body}\n-----END X-----\n`, "X"), null, body);
  }
});

Deno.test("pemEncode() writes 64-character lines between BEGIN and END", () => {
  const der = new Uint8Array(100).map((_, i) => i);
  const pem = pemEncode(der, "CERTIFICATE");
  const lines = pem.split("\n");
  assert.equal(lines[0], "-----BEGIN CERTIFICATE-----");
  // 100 bytes are 136 base64 characters: 64 + 64 + 8.
  assert.deepEqual(lines.slice(1, 4).map((l) => l.length), [64, 64, 8]);
  assert.equal(lines[4], "-----END CERTIFICATE-----");
  assert.equal(lines[5], "");
  assert.equal(lines.length, 6);
});

Deno.test("pemEncode() and pemDecode() round-trip every length and every byte value", () => {
  for (const length of [0, 1, 2, 3, 47, 48, 49, 256]) {
    const der = new Uint8Array(length).map((_, i) => (i * 37 + length) & 0xff);
    assert.deepEqual(pemDecode(pemEncode(der, "X"), "X"), der, `length ${length}`);
  }
});

Deno.test("pemEncode() handles inputs larger than one chunk of String.fromCharCode", () => {
  const der = new Uint8Array(0x8000 * 2 + 5).map((_, i) => i & 0xff);
  assert.deepEqual(pemDecode(pemEncode(der, "BIG"), "BIG"), der);
});
