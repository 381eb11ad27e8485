import assert from "node:assert/strict";
import { children, decodeOid, decodeString, DerError, type DerNode, readDer, Tag } from "./der.ts";

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

/** An element with tag `tag` and contents `value` (the header is not needed by the decoders). */
function node(tag: number, value: Uint8Array): DerNode {
  return { tag, raw: value, value };
}

function derError(message: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof DerError, `expected a DerError, got ${e}`);
    assert.match(e.message, message);
    return true;
  };
}

Deno.test("readDer() reads a short-form element and exposes its header and contents", () => {
  const input = bytes(0x04, 0x03, 1, 2, 3);
  const element = readDer(input);
  assert.equal(element.tag, Tag.OCTET_STRING);
  assert.deepEqual(element.raw, input);
  assert.deepEqual(element.value, bytes(1, 2, 3));
});

Deno.test("readDer() reads an empty element", () => {
  const element = readDer(bytes(0x05, 0x00));
  assert.equal(element.tag, Tag.NULL);
  assert.equal(element.value.length, 0);
});

Deno.test("readDer() reads long-form lengths of one and two octets", () => {
  const one = new Uint8Array(3 + 200);
  one.set([0x04, 0x81, 200]);
  assert.equal(readDer(one).value.length, 200);

  const two = new Uint8Array(4 + 300);
  two.set([0x04, 0x82, 0x01, 0x2c]);
  const element = readDer(two);
  assert.equal(element.value.length, 300);
  assert.equal(element.raw.length, 304);
});

Deno.test("readDer() refuses an indefinite length", () => {
  assert.throws(
    () => readDer(bytes(0x30, 0x80, 0x05, 0x00, 0x00, 0x00)),
    derError(/^Indefinite lengths are not DER$/),
  );
});

Deno.test("readDer() refuses a long-form length that fits in the short form", () => {
  assert.throws(() => readDer(bytes(0x04, 0x81, 0x01, 0xaa)), derError(/^Non-minimal DER length$/));
});

Deno.test("readDer() refuses a long-form length with a leading zero octet", () => {
  const input = new Uint8Array(4 + 200);
  input.set([0x04, 0x82, 0x00, 200]);
  assert.throws(() => readDer(input), derError(/^Non-minimal DER length$/));
});

Deno.test("readDer() refuses a length of more than four octets", () => {
  assert.throws(
    () => readDer(bytes(0x04, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00)),
    derError(/^DER length too large$/),
  );
});

Deno.test("readDer() refuses a huge length that runs past the input", () => {
  assert.throws(
    () => readDer(bytes(0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00)),
    derError(/^Truncated DER element$/),
  );
});

Deno.test("readDer() refuses contents shorter than the length says", () => {
  assert.throws(() => readDer(bytes(0x04, 0x03, 1, 2)), derError(/^Truncated DER element$/));
});

Deno.test("readDer() refuses a length whose octets are cut off", () => {
  assert.throws(() => readDer(bytes(0x04, 0x82, 0x01)), derError(/^Truncated DER length$/));
});

Deno.test("readDer() refuses an input too short to hold a header", () => {
  assert.throws(() => readDer(bytes()), derError(/^Truncated DER element$/));
  assert.throws(() => readDer(bytes(0x30)), derError(/^Truncated DER element$/));
});

Deno.test("readDer() refuses trailing bytes after the element", () => {
  assert.throws(
    () => readDer(bytes(0x05, 0x00, 0x00)),
    derError(/^Trailing bytes after the DER element$/),
  );
});

Deno.test("readDer() refuses high tag numbers", () => {
  assert.throws(
    () => readDer(bytes(0x1f, 0x81, 0x00, 0x00)),
    derError(/^High tag numbers are not supported$/),
  );
});

Deno.test("children() lists the elements of a constructed element in order", () => {
  const seq = readDer(bytes(0x30, 0x07, 0x02, 0x01, 0x05, 0x04, 0x02, 0xaa, 0xbb));
  const [integer, octets, ...rest] = children(seq, Tag.SEQUENCE);
  assert.equal(rest.length, 0);
  assert.equal(integer.tag, Tag.INTEGER);
  assert.deepEqual(integer.value, bytes(0x05));
  assert.equal(octets.tag, Tag.OCTET_STRING);
  assert.deepEqual(octets.value, bytes(0xaa, 0xbb));
});

Deno.test("children() returns nothing for an empty sequence", () => {
  assert.deepEqual(children(readDer(bytes(0x30, 0x00))), []);
});

Deno.test("children() refuses an element with another tag than expected", () => {
  assert.throws(
    () => children(readDer(bytes(0x31, 0x00)), Tag.SEQUENCE),
    derError(/^Expected tag 0x30, found 0x31$/),
  );
});

Deno.test("children() refuses a primitive element", () => {
  assert.throws(
    () => children(readDer(bytes(0x04, 0x02, 0x05, 0x00))),
    derError(/^Element is not constructed$/),
  );
});

Deno.test("children() refuses a truncated child", () => {
  assert.throws(
    () => children(readDer(bytes(0x30, 0x03, 0x04, 0x05, 0x00))),
    derError(/^Truncated DER element$/),
  );
});

Deno.test("children() refuses more than 10000 elements", () => {
  const count = 10_001;
  const input = new Uint8Array(4 + 2 * count);
  input.set([0x30, 0x82, (2 * count) >> 8, (2 * count) & 0xff]);
  for (let i = 0; i < count; i++) input.set([0x05, 0x00], 4 + 2 * i);
  assert.throws(() => children(readDer(input)), derError(/^Too many elements$/));
});

Deno.test("decodeOid() decodes a short OID", () => {
  assert.equal(decodeOid(readDer(bytes(0x06, 0x03, 0x55, 0x04, 0x03))), "2.5.4.3");
});

Deno.test("decodeOid() decodes multi-byte arcs", () => {
  // 1.2.840.113549.1.9.14 (extensionRequest): 840 and 113549 take two and three octets.
  const oid = bytes(0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e);
  assert.equal(decodeOid(readDer(oid)), "1.2.840.113549.1.9.14");
  // 1.2.840.10045.4.3.2 (ecdsa-with-SHA256).
  const ecdsa = bytes(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02);
  assert.equal(decodeOid(readDer(ecdsa)), "1.2.840.10045.4.3.2");
});

Deno.test("decodeOid() splits the first octet into the first two arcs", () => {
  assert.equal(decodeOid(node(Tag.OID, bytes(0x00))), "0.0");
  assert.equal(decodeOid(node(Tag.OID, bytes(0x27))), "0.39");
  assert.equal(decodeOid(node(Tag.OID, bytes(0x28))), "1.0");
  assert.equal(decodeOid(node(Tag.OID, bytes(0x2b, 0x65, 0x70))), "1.3.101.112");
  assert.equal(decodeOid(node(Tag.OID, bytes(0x50))), "2.0");
  // Under arc 2 the second arc may exceed 39: 2.999 is encoded as 1079 = 0x88 0x37.
  assert.equal(decodeOid(node(Tag.OID, bytes(0x88, 0x37, 0x03))), "2.999.3");
});

Deno.test("decodeOid() refuses an element that is not an OID", () => {
  assert.throws(
    () => decodeOid(node(Tag.OCTET_STRING, bytes(0x55, 0x04, 0x03))),
    derError(/^Invalid OBJECT IDENTIFIER$/),
  );
});

Deno.test("decodeOid() refuses an empty or oversized OID", () => {
  assert.throws(() => decodeOid(node(Tag.OID, bytes())), derError(/^Invalid OBJECT IDENTIFIER$/));
  assert.throws(
    () => decodeOid(node(Tag.OID, new Uint8Array(65).fill(0x01))),
    derError(/^Invalid OBJECT IDENTIFIER$/),
  );
});

Deno.test("decodeOid() refuses an OID whose last arc is cut off", () => {
  assert.throws(
    () => decodeOid(node(Tag.OID, bytes(0x2a, 0x86))),
    derError(/^Truncated OBJECT IDENTIFIER$/),
  );
});

Deno.test("decodeOid() refuses an arc with a leading 0x80 octet, which DER forbids", () => {
  // 2.5.4.3 with its last arc padded: 55 04 80 03. openssl refuses this encoding too.
  assert.throws(() => decodeOid(node(Tag.OID, bytes(0x55, 0x04, 0x80, 0x03))), derError(/./));
});

Deno.test("decodeOid() refuses an arc too large for a safe integer", () => {
  const huge = bytes(0x2a, ...new Array(9).fill(0xff), 0x7f);
  assert.throws(
    () => decodeOid(node(Tag.OID, huge)),
    derError(/^OBJECT IDENTIFIER arc too large$/),
  );
});

Deno.test("decodeString() decodes UTF8String, including non-ASCII text", () => {
  const text = "Zoë 😀";
  assert.equal(decodeString(node(Tag.UTF8_STRING, new TextEncoder().encode(text))), text);
});

Deno.test("decodeString() decodes PrintableString, IA5String and T61String as octets", () => {
  const ascii = new TextEncoder().encode("alice-1");
  assert.equal(decodeString(node(Tag.PRINTABLE_STRING, ascii)), "alice-1");
  assert.equal(decodeString(node(Tag.IA5_STRING, ascii)), "alice-1");
  assert.equal(decodeString(node(Tag.T61_STRING, bytes(0x61, 0xe9))), "a\u00e9");
});

Deno.test("decodeString() decodes BMPString as UTF-16BE", () => {
  assert.equal(
    decodeString(node(Tag.BMP_STRING, bytes(0x00, 0x61, 0x00, 0xe9, 0x26, 0x03))),
    "aé☃",
  );
});

Deno.test("decodeString() decodes UniversalString as UTF-32BE, beyond the BMP", () => {
  assert.equal(
    decodeString(node(Tag.UNIVERSAL_STRING, bytes(0, 0, 0, 0x61, 0, 0x01, 0xf6, 0x00))),
    "a😀",
  );
});

Deno.test("decodeString() refuses a UniversalString whose length is not a multiple of 4", () => {
  assert.throws(
    () => decodeString(node(Tag.UNIVERSAL_STRING, bytes(0, 0, 0x61))),
    derError(/^Invalid UniversalString$/),
  );
});

Deno.test("decodeString() reports every malformed string as a DerError", () => {
  // The module promises that hostile input fails with a DerError, not a TypeError or RangeError.
  const malformed: Array<[string, DerNode]> = [
    ["truncated UTF-8", node(Tag.UTF8_STRING, bytes(0x61, 0xc3))],
    ["odd-length BMPString", node(Tag.BMP_STRING, bytes(0x00, 0x61, 0x00))],
    ["UniversalString beyond U+10FFFF", node(Tag.UNIVERSAL_STRING, bytes(0xff, 0xff, 0xff, 0xff))],
  ];
  for (const [what, element] of malformed) {
    assert.throws(() => decodeString(element), (e) => {
      assert.ok(e instanceof DerError, `${what}: expected a DerError, got ${e}`);
      return true;
    });
  }
});

Deno.test("decodeString() refuses types that are not strings", () => {
  assert.throws(
    () => decodeString(node(Tag.OCTET_STRING, bytes(0x61))),
    derError(/^Unsupported string type 0x4$/),
  );
});
