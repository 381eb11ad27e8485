import assert from "node:assert/strict";
import { e2eError } from "./_test_util.ts";
import {
  ALPN,
  ALPN_REFUSALS,
  decodeFrame,
  encodeFrame,
  FEATURE_ACKS,
  FEATURE_BINARY,
  FEATURE_OFFER,
  FEATURE_SHA256_AT_END,
  type Frame,
  LineSplitter,
  MAX_ACK_IDS,
  MAX_BINARY_BYTES,
  MAX_CHUNK_BYTES,
  MAX_LINE_BYTES,
  MAX_REASON_CHARS,
  MAX_TEXT_CHARS,
  PROTOCOL_VERSION,
} from "./frames.ts";

const encoder = new TextEncoder();
const SHA = "0123456789abcdef".repeat(4);

function malformed(why: string): (e: unknown) => boolean {
  return e2eError("ERR_BAD_REQUEST", `Malformed frame: ${why}`);
}

function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

// ---------------------------------------------------------------------------
// constants: docs/PROTOCOL.md §2–3

Deno.test("frames use the constants of docs/PROTOCOL.md", () => {
  assert.equal(PROTOCOL_VERSION, 1);
  assert.equal(ALPN, "e2e-chat/1");
  assert.equal(ALPN_REFUSALS, "e2e-chat/1.1");
  assert.equal(MAX_LINE_BYTES, 1_048_576);
  assert.equal(MAX_TEXT_CHARS, 65_536);
  assert.equal(MAX_CHUNK_BYTES, 768 * 1024);
  assert.equal(MAX_BINARY_BYTES, 1024 * 1024);
  assert.equal(FEATURE_BINARY, "bin");
  assert.equal(FEATURE_OFFER, "offer");
  assert.equal(FEATURE_ACKS, "acks");
  assert.equal(MAX_ACK_IDS, 1024);
  assert.equal(FEATURE_SHA256_AT_END, "sha256-at-end");
});

Deno.test("decodeFrame() reads an acks frame of 1 and of 1024 ids", () => {
  assert.deepEqual(decodeFrame('{"type":"acks","ids":["m1"]}'), { type: "acks", ids: ["m1"] });
  const ids = Array.from({ length: MAX_ACK_IDS }, (_, i) => `m${i}`);
  assert.deepEqual(decodeFrame(JSON.stringify({ type: "acks", ids })), { type: "acks", ids });
});

Deno.test("decodeFrame() keeps at most 500 characters of a decline's reason, and '' when it is not a string", () => {
  const long = decodeFrame(JSON.stringify({ type: "decline", id: "f", reason: "r".repeat(900) }));
  assert.deepEqual(long, { type: "decline", id: "f", reason: "r".repeat(MAX_REASON_CHARS) });
  assert.deepEqual(decodeFrame('{"type":"decline","id":"f","reason":7}'), {
    type: "decline",
    id: "f",
    reason: "",
  });
});

// ---------------------------------------------------------------------------
// encodeFrame and decodeFrame: every frame type

const EVERY_FRAME: Frame[] = [
  { type: "hello", v: 1, features: ["bin"] },
  { type: "msg", id: "m-1", text: "hi ✓ 🙂\nsecond line" },
  { type: "ack", id: "m-1" },
  { type: "file", id: "f.1", name: "report.pdf", size: 12_345, sha256: SHA },
  { type: "file", id: "f.2", name: "plan.bin", size: 1, sha256: SHA, room: "#team" },
  { type: "chunk", id: "f.1", data: "aGVsbG8=" },
  { type: "bin", id: "f.1", size: 524_288 },
  { type: "end", id: "f.1" },
  // sha256-at-end: the offer without the digest, the end with it.
  { type: "file", id: "f.3", name: "big.iso", size: 4_294_967_296 },
  { type: "end", id: "f.3", sha256: SHA },
  { type: "accept", id: "f.1" },
  { type: "got", id: "f.1", bytes: 1_048_576 },
  { type: "decline", id: "f.1", reason: "Declined by the user" },
  { type: "bye" },
  { type: "error", message: "Malformed frame: bad id" },
  { type: "refused", reason: "not-invited" },
];

for (const frame of EVERY_FRAME) {
  Deno.test(`encodeFrame() writes a "${frame.type}" frame as one line that decodeFrame() reads back`, () => {
    const line = encodeFrame(frame);
    assert.ok(line.endsWith("\n"));
    assert.equal(line.indexOf("\n"), line.length - 1, "exactly one newline, at the end");
    assert.deepEqual(JSON.parse(line), frame);
    assert.deepEqual(decodeFrame(line.slice(0, -1)), frame);
  });
}

Deno.test("encodeFrame() escapes newlines inside a text, so a message is still one line", () => {
  const line = encodeFrame({ type: "msg", id: "1", text: "a\nb\r\nc\u2028" });
  assert.equal(line.split("\n").length, 2);
  assert.equal(line, '{"type":"msg","id":"1","text":"a\\nb\\r\\nc\u2028"}\n');
});

Deno.test("decodeFrame() reads a refusal's reason only as a short lowercase code", () => {
  assert.deepEqual(decodeFrame('{"type":"refused","reason":"some-future-code2"}'), {
    type: "refused",
    reason: "some-future-code2",
  });
  for (const reason of ["", "Not-Invited", "not invited", "x".repeat(33), "\u001b[2J", 7, null]) {
    assert.throws(
      () => decodeFrame(JSON.stringify({ type: "refused", reason })),
      malformed("refused needs a reason code of 1 to 32 characters from a-z, 0-9 and -"),
      String(reason),
    );
  }
});

/** A hello without features: `features` is absent or empty. */
function assertPlainHello(frame: Frame): void {
  assert.equal(frame.type, "hello");
  const { features, ...rest } = frame as Frame & { features?: string[] };
  assert.deepEqual(rest, { type: "hello", v: 1 });
  assert.ok(features === undefined || features.length === 0, `features ${features}`);
}

Deno.test("decodeFrame() reads the examples of docs/PROTOCOL.md", () => {
  assertPlainHello(decodeFrame('{"type":"hello","v":1}'));
  assert.deepEqual(decodeFrame('{"type":"msg","id":"1","text":"hi from s_client"}'), {
    type: "msg",
    id: "1",
    text: "hi from s_client",
  });
});

Deno.test("decodeFrame() ignores extra fields and returns only those of the frame", () => {
  assert.deepEqual(
    decodeFrame('{"type":"ack","id":"7","extra":true,"text":"x","v":2}'),
    { type: "ack", id: "7" },
  );
  assert.deepEqual(decodeFrame('{"type":"bye","id":"!!","message":"x"}'), { type: "bye" });
  assertPlainHello(decodeFrame('{"v":1,"type":"hello","more":[1,2]}'));
});

Deno.test("decodeFrame() accepts ids of 1 and 64 characters from [A-Za-z0-9_.-]", () => {
  for (const id of ["a", "Z", "0", "_", ".", "-", "aZ09_.-", "x".repeat(64)]) {
    assert.deepEqual(decodeFrame(JSON.stringify({ type: "ack", id })), { type: "ack", id });
  }
});

Deno.test("decodeFrame() accepts a text of exactly 65536 characters and an empty text", () => {
  const text = "x".repeat(MAX_TEXT_CHARS);
  assert.equal(
    (decodeFrame(JSON.stringify({ type: "msg", id: "1", text })) as { text: string })
      .text,
    text,
  );
  assert.deepEqual(decodeFrame('{"type":"msg","id":"1","text":""}'), {
    type: "msg",
    id: "1",
    text: "",
  });
});

Deno.test("decodeFrame() accepts file sizes from 0 to 2^53-1", () => {
  for (const size of [0, 1, Number.MAX_SAFE_INTEGER]) {
    const frame = { type: "file", id: "f", name: "a", size, sha256: SHA } as const;
    assert.deepEqual(decodeFrame(JSON.stringify(frame)), frame);
  }
});

Deno.test("decodeFrame() accepts a file name of 1024 characters and any characters in it", () => {
  for (const name of ["n".repeat(1024), "../../etc/passwd", "a\u0000b", "é🙂"]) {
    const frame = { type: "file", id: "f", name, size: 1, sha256: SHA } as const;
    assert.deepEqual(decodeFrame(JSON.stringify(frame)), frame);
  }
});

Deno.test("decodeFrame() accepts base64 chunk data: empty, padded, and the largest allowed (768 KiB)", () => {
  const largest = btoa("\u00ff".repeat(MAX_CHUNK_BYTES));
  assert.equal(largest.length, 1_048_576);
  for (const data of ["", "AAAA", "AA==", "AAA=", "+/+/", largest]) {
    const frame = { type: "chunk", id: "c", data } as const;
    assert.deepEqual(decodeFrame(JSON.stringify(frame)), frame);
  }
});

Deno.test("decodeFrame() keeps the string features of a hello, at most 16, and [] when there are none", () => {
  const features = (line: string) => (decodeFrame(line) as { features?: string[] }).features;
  assert.deepEqual(features('{"type":"hello","v":1,"features":["bin","x"]}'), ["bin", "x"]);
  assert.deepEqual(features('{"type":"hello","v":1,"features":["bin",1,null,{},["y"],"z"]}'), [
    "bin",
    "z",
  ]);
  const many = Array.from({ length: 40 }, (_, i) => `f${i}`);
  assert.deepEqual(
    features(JSON.stringify({ type: "hello", v: 1, features: many })),
    many.slice(0, 16),
  );
  for (const none of ['"bin"', "{}", "null", "7"]) {
    const got = features(`{"type":"hello","v":1,"features":${none}}`);
    assert.ok(got === undefined || got.length === 0, none);
  }
});

Deno.test("decodeFrame() accepts bin sizes from 1 to 1 MiB", () => {
  for (const size of [1, 1000, MAX_BINARY_BYTES]) {
    assert.deepEqual(decodeFrame(JSON.stringify({ type: "bin", id: "b", size })), {
      type: "bin",
      id: "b",
      size,
    });
  }
});

Deno.test("decodeFrame() keeps at most 500 characters of an error message, and '' when it is not a string", () => {
  const long = decodeFrame(JSON.stringify({ type: "error", message: "m".repeat(2000) }));
  assert.deepEqual(long, { type: "error", message: "m".repeat(500) });
  for (const message of [undefined, null, 42, {}, ["x"]]) {
    assert.deepEqual(decodeFrame(JSON.stringify({ type: "error", message })), {
      type: "error",
      message: "",
    });
  }
});

// ---------------------------------------------------------------------------
// decodeFrame: every malformed case is ERR_BAD_REQUEST with its message

const MALFORMED: Array<[what: string, line: string, why: string]> = [
  ["an empty line", "", "not JSON"],
  ["invalid JSON", '{"type":"bye"', "not JSON"],
  ["two JSON values", '{"type":"bye"} {"type":"bye"}', "not JSON"],
  ["a JSON string", '"bye"', "not a JSON object"],
  ["a JSON number", "1", "not a JSON object"],
  ["JSON null", "null", "not a JSON object"],
  ["a JSON array", '[{"type":"bye"}]', "not a JSON object"],
  ["an object without type", "{}", 'unknown frame type "undefined"'],
  ["an unknown type", '{"type":"shutdown"}', 'unknown frame type "shutdown"'],
  ["a type in another case", '{"type":"BYE"}', 'unknown frame type "BYE"'],
  ["a numeric type", '{"type":7}', 'unknown frame type "7"'],
  ["a prototype key as type", '{"type":"__proto__"}', 'unknown frame type "__proto__"'],
  [
    "a long unknown type (quoted, at most 32 characters)",
    JSON.stringify({ type: "t".repeat(100) }),
    `unknown frame type "${"t".repeat(32)}"`,
  ],
  ["hello without v", '{"type":"hello"}', "unsupported version undefined"],
  ["hello v 2", '{"type":"hello","v":2}', "unsupported version 2"],
  ["hello v 0", '{"type":"hello","v":0}', "unsupported version 0"],
  ["hello v as a string", '{"type":"hello","v":"1"}', 'unsupported version "1"'],
  ["msg without text", '{"type":"msg","id":"1"}', "msg needs a text of at most 65536 characters"],
  [
    "msg with a numeric text",
    '{"type":"msg","id":"1","text":5}',
    "msg needs a text of at most 65536 characters",
  ],
  [
    "msg with a text of 65537 characters",
    JSON.stringify({ type: "msg", id: "1", text: "x".repeat(MAX_TEXT_CHARS + 1) }),
    "msg needs a text of at most 65536 characters",
  ],
  ["msg without id", '{"type":"msg","text":"hi"}', "bad id"],
  ["ack without id", '{"type":"ack"}', "bad id"],
  ["acks without ids", '{"type":"acks"}', "acks needs from 1 to 1024 ids"],
  ["acks with no ids", '{"type":"acks","ids":[]}', "acks needs from 1 to 1024 ids"],
  [
    "acks with ids that are not a list",
    '{"type":"acks","ids":"a,b"}',
    "acks needs from 1 to 1024 ids",
  ],
  [
    "acks with 1025 ids",
    JSON.stringify({ type: "acks", ids: Array.from({ length: 1025 }, (_, i) => `m${i}`) }),
    "acks needs from 1 to 1024 ids",
  ],
  ["acks with a bad id among good ones", '{"type":"acks","ids":["m1",7]}', "bad id"],
  ["ack with an empty id", '{"type":"ack","id":""}', "bad id"],
  ["ack with a numeric id", '{"type":"ack","id":7}', "bad id"],
  [
    "ack with an id of 65 characters",
    JSON.stringify({ type: "ack", id: "x".repeat(65) }),
    "bad id",
  ],
  ["ack with a space in the id", '{"type":"ack","id":"a b"}', "bad id"],
  ["ack with a slash in the id", '{"type":"ack","id":"../x"}', "bad id"],
  ["ack with a newline after the id", '{"type":"ack","id":"a\\n"}', "bad id"],
  ["ack with a non-ASCII id", '{"type":"ack","id":"é"}', "bad id"],
  ["end without id", '{"type":"end"}', "bad id"],
  ["accept without id", '{"type":"accept"}', "bad id"],
  ["got without bytes", '{"type":"got","id":"f"}', "got needs a whole number of bytes"],
  [
    "got with negative bytes",
    '{"type":"got","id":"f","bytes":-1}',
    "got needs a whole number of bytes",
  ],
  ["decline with a bad id", '{"type":"decline","id":"../x","reason":"no"}', "bad id"],
  ["chunk without id", '{"type":"chunk","data":""}', "bad id"],
  [
    "file without id",
    JSON.stringify({ type: "file", name: "a", size: 1, sha256: SHA }),
    "bad id",
  ],
  [
    "file without name",
    JSON.stringify({ type: "file", id: "f", size: 1, sha256: SHA }),
    "file needs a name",
  ],
  [
    "file with an empty name",
    JSON.stringify({ type: "file", id: "f", name: "", size: 1, sha256: SHA }),
    "file needs a name",
  ],
  [
    "file with a name of 1025 characters",
    JSON.stringify({ type: "file", id: "f", name: "n".repeat(1025), size: 1, sha256: SHA }),
    "file needs a name",
  ],
  [
    "file with a numeric name",
    JSON.stringify({ type: "file", id: "f", name: 1, size: 1, sha256: SHA }),
    "file needs a name",
  ],
  [
    "file without size",
    JSON.stringify({ type: "file", id: "f", name: "a", sha256: SHA }),
    "file needs a whole size",
  ],
  [
    "file with a negative size",
    JSON.stringify({ type: "file", id: "f", name: "a", size: -1, sha256: SHA }),
    "file needs a whole size",
  ],
  [
    "file with a fractional size",
    JSON.stringify({ type: "file", id: "f", name: "a", size: 1.5, sha256: SHA }),
    "file needs a whole size",
  ],
  [
    "file with a size of 2^53",
    `{"type":"file","id":"f","name":"a","size":9007199254740992,"sha256":"${SHA}"}`,
    "file needs a whole size",
  ],
  [
    "file with a size as a string",
    JSON.stringify({ type: "file", id: "f", name: "a", size: "1", sha256: SHA }),
    "file needs a whole size",
  ],
  [
    "file with an uppercase sha256",
    JSON.stringify({ type: "file", id: "f", name: "a", size: 1, sha256: SHA.toUpperCase() }),
    "file's sha256 must be 64 lowercase hex characters",
  ],
  [
    "file with a sha256 of 63 characters",
    JSON.stringify({ type: "file", id: "f", name: "a", size: 1, sha256: SHA.slice(1) }),
    "file's sha256 must be 64 lowercase hex characters",
  ],
  [
    "file with a sha256 of 65 characters",
    JSON.stringify({ type: "file", id: "f", name: "a", size: 1, sha256: SHA + "0" }),
    "file's sha256 must be 64 lowercase hex characters",
  ],
  [
    "file with a sha256 of null",
    JSON.stringify({ type: "file", id: "f", name: "a", size: 1, sha256: null }),
    "file's sha256 must be 64 lowercase hex characters",
  ],
  [
    "end with an uppercase sha256",
    JSON.stringify({ type: "end", id: "f", sha256: SHA.toUpperCase() }),
    "end's sha256 must be 64 lowercase hex characters",
  ],
  [
    "end with a numeric sha256",
    JSON.stringify({ type: "end", id: "f", sha256: 1 }),
    "end's sha256 must be 64 lowercase hex characters",
  ],
  [
    "chunk without data",
    '{"type":"chunk","id":"c"}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with numeric data",
    '{"type":"chunk","id":"c","data":1}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with base64url data",
    '{"type":"chunk","id":"c","data":"-_-_"}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with unpadded data",
    '{"type":"chunk","id":"c","data":"AAA"}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with three padding characters",
    '{"type":"chunk","id":"c","data":"A==="}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with padding in the middle",
    '{"type":"chunk","id":"c","data":"AA==AAAA"}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  [
    "chunk with whitespace in the data",
    '{"type":"chunk","id":"c","data":"AAAA AAA"}',
    "chunk needs base64 data of at most 768 KiB",
  ],
  ["bin without size", '{"type":"bin","id":"b"}', "bin needs a size from 1 to 1048576"],
  ["bin of size 0", '{"type":"bin","id":"b","size":0}', "bin needs a size from 1 to 1048576"],
  [
    "bin of negative size",
    '{"type":"bin","id":"b","size":-5}',
    "bin needs a size from 1 to 1048576",
  ],
  [
    "bin of 1 MiB + 1",
    '{"type":"bin","id":"b","size":1048577}',
    "bin needs a size from 1 to 1048576",
  ],
  [
    "bin of fractional size",
    '{"type":"bin","id":"b","size":2.5}',
    "bin needs a size from 1 to 1048576",
  ],
  [
    "bin with a size as a string",
    '{"type":"bin","id":"b","size":"9"}',
    "bin needs a size from 1 to 1048576",
  ],
  ["bin without id", '{"type":"bin","size":9}', "bad id"],
  [
    "chunk with more than 768 KiB of data",
    JSON.stringify({ type: "chunk", id: "c", data: "AAAA".repeat(262_145) }),
    "chunk needs base64 data of at most 768 KiB",
  ],
];

for (const [what, line, why] of MALFORMED) {
  Deno.test(`decodeFrame() refuses ${what}`, () => {
    assert.throws(() => decodeFrame(line), malformed(why));
  });
}

Deno.test("decodeFrame() refuses a type that cannot be turned into text with ERR_BAD_REQUEST, not a TypeError", () => {
  // A peer controls every byte of the line: no input may escape as another error.
  for (
    const line of [
      '{"type":{"toString":1}}',
      '{"type":{"toString":{},"valueOf":{}}}',
      '{"type":{}}',
      '{"type":[]}',
      '{"type":null}',
    ]
  ) {
    assert.throws(() => decodeFrame(line), e2eError("ERR_BAD_REQUEST", /^Malformed frame: /), line);
  }
});

// ---------------------------------------------------------------------------
// LineSplitter

Deno.test("LineSplitter returns nothing until a line ends, then the whole line without its newline", () => {
  const lines = new LineSplitter();
  assert.deepEqual(lines.push(bytes('{"type":')), []);
  assert.deepEqual(lines.push(bytes('"by')), []);
  assert.deepEqual(lines.push(bytes('e"}\n')), ['{"type":"bye"}']);
  assert.deepEqual(lines.push(new Uint8Array()), []);
});

Deno.test("LineSplitter returns every line of a chunk that holds several, and keeps the rest", () => {
  const lines = new LineSplitter();
  assert.deepEqual(lines.push(bytes("one\ntwo\nthree\nfo")), ["one", "two", "three"]);
  assert.deepEqual(lines.push(bytes("ur\n\nsix\n")), ["four", "", "six"]);
});

Deno.test("LineSplitter handles a line split into single bytes", () => {
  const lines = new LineSplitter();
  const out: string[] = [];
  for (const b of bytes("ab\ncd\n")) out.push(...lines.push(Uint8Array.of(b)));
  assert.deepEqual(out, ["ab", "cd"]);
});

Deno.test("LineSplitter joins a multi-byte UTF-8 character split across chunks", () => {
  const text = "é🙂€";
  const all = bytes(`${text}\n`);
  assert.equal(all.length, 2 + 4 + 3 + 1);
  // Cut inside every character: after the first byte of é, the second of 🙂, the first of €.
  for (const cuts of [[1], [3], [4], [7], [1, 3, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    const lines = new LineSplitter();
    const out: string[] = [];
    let start = 0;
    for (const cut of [...cuts, all.length]) {
      out.push(...lines.push(all.subarray(start, cut)));
      start = cut;
    }
    assert.deepEqual(out, [text], `cuts ${cuts}`);
  }
});

Deno.test("LineSplitter accepts a line of exactly 1 MiB, newline included", () => {
  const lines = new LineSplitter();
  const body = new Uint8Array(MAX_LINE_BYTES - 1).fill(0x61);
  // In uneven pieces, the way a socket delivers them.
  assert.deepEqual(lines.push(body.subarray(0, 65_537)), []);
  assert.deepEqual(lines.push(body.subarray(65_537)), []);
  const out = lines.push(bytes("\n"));
  assert.equal(out.length, 1);
  assert.equal(out[0].length, MAX_LINE_BYTES - 1);
  // And it starts afresh after it.
  assert.deepEqual(lines.push(bytes("next\n")), ["next"]);
});

Deno.test("LineSplitter accepts a 1 MiB line delivered in one chunk together with the next line", () => {
  const lines = new LineSplitter();
  const chunk = new Uint8Array(MAX_LINE_BYTES + 3);
  chunk.fill(0x62, 0, MAX_LINE_BYTES - 1);
  chunk.set(bytes("\nz\n"), MAX_LINE_BYTES - 1);
  const out = lines.push(chunk);
  assert.equal(out.length, 2);
  assert.equal(out[0].length, MAX_LINE_BYTES - 1);
  assert.equal(out[1], "z");
});

Deno.test("LineSplitter refuses a line of 1 MiB + 1 with ERR_TOO_LARGE as soon as the byte past the limit arrives", () => {
  const lines = new LineSplitter();
  const body = new Uint8Array(MAX_LINE_BYTES - 1).fill(0x61);
  assert.deepEqual(lines.push(body), []);
  // One more content byte: the line cannot end within 1 MiB any more, so it fails now,
  // before any newline comes and without waiting for the rest.
  assert.throws(
    () => lines.push(Uint8Array.of(0x61)),
    e2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB"),
  );
});

Deno.test("LineSplitter refuses a 1 MiB + 1 line in one chunk, newline included", () => {
  const lines = new LineSplitter();
  const chunk = new Uint8Array(MAX_LINE_BYTES + 1).fill(0x61);
  chunk[MAX_LINE_BYTES] = 0x0a;
  assert.throws(
    () => lines.push(chunk),
    e2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB"),
  );
});

Deno.test("LineSplitter refuses a huge chunk without a newline at once", () => {
  const lines = new LineSplitter();
  assert.throws(
    () => lines.push(new Uint8Array(4 * MAX_LINE_BYTES)),
    e2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB"),
  );
});

Deno.test("LineSplitter counts the limit per line, not per stream", () => {
  const lines = new LineSplitter();
  const line = new Uint8Array(MAX_LINE_BYTES).fill(0x63);
  line[MAX_LINE_BYTES - 1] = 0x0a;
  for (let i = 0; i < 3; i++) assert.equal(lines.push(line).length, 1);
});

Deno.test("LineSplitter refuses invalid UTF-8 with ERR_BAD_REQUEST", () => {
  const invalid = [
    Uint8Array.of(0xff, 0x0a),
    Uint8Array.of(0x61, 0xc3, 0x0a), // truncated é
    Uint8Array.of(0xc0, 0xaf, 0x0a), // overlong "/"
    Uint8Array.of(0xed, 0xa0, 0x80, 0x0a), // a UTF-16 surrogate
    Uint8Array.of(0xf4, 0x90, 0x80, 0x80, 0x0a), // above U+10FFFF
  ];
  for (const chunk of invalid) {
    const lines = new LineSplitter();
    assert.throws(
      () => lines.push(chunk),
      e2eError("ERR_BAD_REQUEST", "Malformed frame: not UTF-8"),
      `${[...chunk]}`,
    );
  }
});

Deno.test("LineSplitter refuses a character cut by the newline, even when the next chunk completes it", () => {
  const lines = new LineSplitter();
  assert.throws(
    () => lines.push(Uint8Array.of(0x61, 0xf0, 0x9f, 0x0a)),
    e2eError("ERR_BAD_REQUEST", "Malformed frame: not UTF-8"),
  );
});

// ---------------------------------------------------------------------------
// LineSplitter.pushLine: one line at a time, for frames followed by raw bytes

Deno.test("LineSplitter.pushLine() stops after the first line and says how many bytes it used", () => {
  const lines = new LineSplitter();
  const chunk = bytes('{"type":"bin","id":"b","size":3}\nXYZ{"type":"bye"}\n');
  const first = lines.pushLine(chunk);
  assert.deepEqual(first, { line: '{"type":"bin","id":"b","size":3}', used: 33 });
  // The caller takes the 3 raw bytes itself, then goes on with lines.
  assert.equal(new TextDecoder().decode(chunk.subarray(first.used, first.used + 3)), "XYZ");
  assert.deepEqual(lines.pushLine(chunk.subarray(first.used + 3)), {
    line: '{"type":"bye"}',
    used: 15,
  });
});

Deno.test("LineSplitter.pushLine() keeps a partial line across calls, and shares it with push()", () => {
  const lines = new LineSplitter();
  assert.deepEqual(lines.pushLine(bytes('{"type"')), { line: null, used: 7 });
  assert.deepEqual(lines.pushLine(new Uint8Array()), { line: null, used: 0 });
  assert.deepEqual(lines.pushLine(bytes(':"bye"}\nrest')), { line: '{"type":"bye"}', used: 8 });
  assert.deepEqual(lines.pushLine(bytes("ab")), { line: null, used: 2 });
  assert.deepEqual(lines.push(bytes("c\nd\n")), ["abc", "d"]);
});

Deno.test("LineSplitter.pushLine() accepts exactly 1 MiB and refuses 1 MiB + 1 with ERR_TOO_LARGE", () => {
  const ok = new LineSplitter();
  const body = new Uint8Array(MAX_LINE_BYTES - 1).fill(0x61);
  assert.deepEqual(ok.pushLine(body), { line: null, used: body.length });
  const done = ok.pushLine(bytes("\n"));
  assert.equal(done.line?.length, MAX_LINE_BYTES - 1);

  const tooLong = new LineSplitter();
  tooLong.pushLine(body);
  assert.throws(
    () => tooLong.pushLine(Uint8Array.of(0x61)),
    e2eError("ERR_TOO_LARGE", "Malformed frame: line longer than 1 MiB"),
  );
});

Deno.test("LineSplitter.pushLine() refuses invalid UTF-8 with ERR_BAD_REQUEST", () => {
  assert.throws(
    () => new LineSplitter().pushLine(Uint8Array.of(0x7b, 0xff, 0x7d, 0x0a)),
    e2eError("ERR_BAD_REQUEST", "Malformed frame: not UTF-8"),
  );
});

Deno.test("decodeFrame() refuses a file whose room is not a room name", () => {
  for (const room of ["team", "#Team", "", 7, "#" + "a".repeat(100)]) {
    const line = JSON.stringify({ type: "file", id: "f", name: "a", size: 1, sha256: SHA, room });
    assert.throws(() => decodeFrame(line), /file's room must be a room name/, String(room));
  }
});
