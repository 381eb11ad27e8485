/**
 * The properties `deno task fuzz` checks with fast-check: every parser and
 * policy that reads what someone else wrote. Each property says what must
 * hold for every input — a parser either returns a value or throws one
 * E2eError with its documented code, never anything else; what is written can
 * be read back; a policy never lets a value escape its bounds.
 *
 * Real inputs seed the mutations: the CSR fixtures made by fixtures/make.ts,
 * and a CRL signed here by a key made with node:crypto (so the fuzz needs no
 * process and no permission but reading fixtures/).
 *
 * @module
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { generateKeyPairSync, sign, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { E2eError } from "../../lib/errors.ts";
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  LineSplitter,
  MAX_BINARY_BYTES,
  MAX_LINE_BYTES,
} from "../../lib/frames.ts";
import { formatInvite, parseInvite } from "../../lib/invite.ts";
import { children, readDer } from "../../lib/der.ts";
import { parseCsr } from "../../lib/csr.ts";
import { parseCrl } from "../../lib/crl.ts";
import { certificateUsage } from "../../lib/x509.ts";
import { pemEncode } from "../../lib/pem.ts";
import { checkName, isValidName } from "../../lib/names.ts";
import { tlv } from "../../lib/_der_builder.ts";
import { leafHash, MerkleTree, verifyConsistency, verifyInclusion } from "../../lib/merkle.ts";
import { checkBodyHeaders, errorReply, MAX_BODY_BYTES, parseJsonBody } from "../../ca/api.ts";
import { safeFileName } from "../../client/files.ts";
import {
  decodeList,
  decodeMessage,
  encodeList,
  encodeMessage,
  type MemberList,
  type RoomMessage,
  signMessage,
  spkiOf,
  verifyMessage,
} from "../../lib/room.ts";

/** One property and how many cases it gets at scale 1. */
export interface FuzzProperty {
  /** A short name, for `--only`. */
  name: string;
  /** Cases at scale 1. */
  runs: number;
  /** The property. */
  property: fc.IProperty<never> | fc.IProperty<unknown[]>;
}

const FIXTURES = fileURLToPath(new URL("../../fixtures/", import.meta.url));

/** Asserts that `fn` returns, or throws an E2eError whose code is one of `codes`. */
function returnsOrRefuses<T>(fn: () => T, codes: readonly string[]): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof E2eError)) throw new Error(`threw a non-E2eError: ${e}`, { cause: e });
    if (!codes.includes(e.code)) throw new Error(`threw ${e.code}: ${e.message}`, { cause: e });
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Frames

const idArb = fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/);
const hexArb = fc.stringMatching(/^[0-9a-f]{64}$/);
const base64Arb = fc.uint8Array({ maxLength: 96 }).map((b) => btoa(String.fromCharCode(...b)));
const textArb = fc.string({ unit: "binary", maxLength: 200 });

// Spread into plain objects: fast-check may build records without a prototype.
const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.array(fc.string({ maxLength: 12 }), { maxLength: 16 }).map((features) => ({
    type: "hello" as const,
    v: 1,
    features,
  })),
  fc.record({ type: fc.constant("msg" as const), id: idArb, text: textArb }),
  fc.record({ type: fc.constant("ack" as const), id: idArb }),
  // sha256-at-end: an end may carry the digest its file frame left out.
  fc.record({ type: fc.constant("end" as const), id: idArb, sha256: hexArb }, {
    requiredKeys: ["type", "id"],
  }),
  fc.record({
    type: fc.constant("file" as const),
    id: idArb,
    name: fc.string({ unit: "binary", minLength: 1, maxLength: 64 }),
    size: fc.maxSafeNat(),
    sha256: hexArb,
  }, { requiredKeys: ["type", "id", "name", "size"] }).chain((f) =>
    fc.option(fc.constantFrom("#team", "#a-b_1"), { nil: undefined }).map((room) =>
      room === undefined ? f : { ...f, room }
    )
  ),
  fc.record({ type: fc.constant("chunk" as const), id: idArb, data: base64Arb }),
  fc.record({
    type: fc.constant("bin" as const),
    id: idArb,
    size: fc.integer({ min: 1, max: MAX_BINARY_BYTES }),
  }),
  fc.constant({ type: "bye" as const }),
  fc.record({ type: fc.constant("error" as const), message: fc.string({ maxLength: 500 }) }),
).map((f) => ({ ...f }) as Frame);

/** JSON objects that look like frames: a known type and fields of any JSON kind. */
const frameLikeArb = fc.record({
  type: fc.constantFrom("hello", "msg", "ack", "end", "file", "chunk", "bin", "bye", "error", "x"),
  v: fc.jsonValue(),
  id: fc.oneof(idArb, fc.jsonValue()),
  text: fc.oneof(textArb, fc.jsonValue()),
  name: fc.jsonValue(),
  size: fc.oneof(fc.integer(), fc.double(), fc.jsonValue()),
  sha256: fc.oneof(hexArb, fc.string()),
  data: fc.oneof(base64Arb, fc.string()),
  features: fc.jsonValue(),
  message: fc.jsonValue(),
}, { requiredKeys: ["type"] }).map((o) => JSON.stringify(o));

const frameProperties: FuzzProperty[] = [
  {
    name:
      "frames: decodeFrame() of any text returns a frame that re-encodes to itself, or refuses with ERR_BAD_REQUEST",
    runs: 20_000,
    property: fc.property(
      fc.oneof(textArb, fc.json(), frameLikeArb),
      (line) => {
        const frame = returnsOrRefuses(() => decodeFrame(line), ["ERR_BAD_REQUEST"]);
        if (frame) assert.deepEqual(decodeFrame(encodeFrame(frame).slice(0, -1)), frame);
      },
    ),
  },
  {
    name: "frames: every valid frame survives encodeFrame() then decodeFrame(), on one line",
    runs: 15_000,
    property: fc.property(frameArb, (frame) => {
      const line = encodeFrame(frame);
      assert.equal(line.indexOf("\n"), line.length - 1);
      assert.deepEqual(decodeFrame(line.slice(0, -1)), frame);
    }),
  },
  {
    name: "frames: a stream of frames split at any points gives the same lines as in one piece",
    runs: 5_000,
    property: fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 12 }),
      (frames, cuts) => {
        const bytes = new TextEncoder().encode(frames.map(encodeFrame).join(""));
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const splitter = new LineSplitter();
        const lines: string[] = [];
        let start = 0;
        for (const p of [...points, bytes.length]) {
          // A copy, as a socket hands out fresh buffers.
          lines.push(...splitter.push(bytes.slice(start, p)));
          start = p;
        }
        assert.deepEqual(lines.map(decodeFrame), frames);
      },
    ),
  },
  {
    name: "frames: every single split point of a small stream gives the same lines",
    runs: 2_000,
    property: fc.property(fc.array(frameArb, { minLength: 1, maxLength: 3 }), (frames) => {
      const bytes = new TextEncoder().encode(frames.map(encodeFrame).join(""));
      for (let p = 0; p <= bytes.length; p += Math.max(1, Math.floor(bytes.length / 64))) {
        const splitter = new LineSplitter();
        const lines = [...splitter.push(bytes.slice(0, p)), ...splitter.push(bytes.slice(p))];
        assert.deepEqual(lines.map(decodeFrame), frames, `split at ${p}`);
      }
    }),
  },
  {
    name:
      "frames: LineSplitter on random bytes returns lines or refuses with ERR_BAD_REQUEST or ERR_TOO_LARGE",
    runs: 10_000,
    property: fc.property(
      fc.array(fc.uint8Array({ maxLength: 256 }), { maxLength: 8 }),
      (chunks) => {
        const splitter = new LineSplitter();
        for (const chunk of chunks) {
          const lines = returnsOrRefuses(() => splitter.push(chunk), [
            "ERR_BAD_REQUEST",
            "ERR_TOO_LARGE",
          ]);
          if (!lines) return;
          for (const line of lines) {
            assert.ok(!line.includes("\n"));
            assert.ok(new TextEncoder().encode(line).length < MAX_LINE_BYTES);
          }
        }
      },
    ),
  },
];

// ---------------------------------------------------------------------------
// Invites and names

const nameArb = fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,62}$/).filter(isValidName);
const hostArb = fc.oneof(
  fc.domain(),
  fc.ipV4(),
  // IPv6 with an embedded dotted IPv4 (::ffff:1.2.3.4) is not an invite host: lib/invite.ts
  // HOST_PATTERN takes hex and colons only, and `ca invite` never writes one.
  fc.ipV6().filter((h) => !h.includes(".")).map((h) => `[${h}]`),
);
const inviteFieldsArb = fc.record({
  host: hostArb,
  port: fc.integer({ min: 1, max: 65535 }),
  name: nameArb,
  fingerprint: hexArb,
  token: fc.stringMatching(/^[A-Za-z0-9_-]{43}$/),
});

const inviteProperties: FuzzProperty[] = [
  {
    name: "invite: formatInvite() then parseInvite() gives back every field",
    runs: 10_000,
    property: fc.property(inviteFieldsArb, (fields) => {
      const parsed = parseInvite(formatInvite(fields));
      assert.equal(parsed.host, fields.host.replace(/^\[|\]$/g, ""));
      assert.deepEqual(
        [parsed.port, parsed.name, parsed.fingerprint, parsed.token],
        [fields.port, fields.name, fields.fingerprint, fields.token],
      );
      assert.equal(parseInvite(formatInvite({ ...fields, host: parsed.host })).caUrl, parsed.caUrl);
    }),
  },
  {
    name:
      "invite: parseInvite() of any text, or of a mutated invite, returns a valid invite or refuses with ERR_INVITE_INVALID, never echoing the token",
    runs: 10_000,
    property: fc.property(
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 300 }),
        fc.tuple(inviteFieldsArb, fc.nat(), fc.string({ unit: "binary", maxLength: 4 })).map(
          ([fields, at, insert]) => {
            const text = formatInvite(fields);
            const i = at % (text.length + 1);
            return text.slice(0, i) + insert + text.slice(i + 1);
          },
        ),
      ),
      (text) => {
        try {
          const invite = parseInvite(text);
          assert.ok(isValidName(invite.name), invite.name);
          assert.ok(invite.port >= 1 && invite.port <= 65535);
          assert.match(invite.caUrl, /^https:\/\//);
        } catch (e) {
          if (!(e instanceof E2eError) || e.code !== "ERR_INVITE_INVALID") throw e;
          const token = /token=([A-Za-z0-9_-]{10,})/.exec(text)?.[1];
          if (token) assert.ok(!e.message.includes(token) && !(e.hint ?? "").includes(token));
        }
      },
    ),
  },
  {
    name:
      "names: checkName() accepts exactly what isValidName() does, and never a dotted, numeric or reserved name",
    runs: 10_000,
    property: fc.property(
      fc.oneof(fc.string({ maxLength: 70 }), nameArb, fc.domain(), fc.ipV4()),
      (name) => {
        const ok = returnsOrRefuses(() => checkName(name), ["ERR_NAME_INVALID"]) !== undefined;
        assert.equal(ok, isValidName(name));
        if (ok) {
          assert.ok(!name.includes(".") && !/^\d+$/.test(name) && name !== "localhost");
          // A URL parser must read it as a host name, never as an address.
          assert.equal(new URL(`https://${name}/`).hostname, name);
        }
      },
    ),
  },
];

// ---------------------------------------------------------------------------
// DER, CSR, CRL: random mutations of real inputs

const CSR_FIXTURES = ["alice-ec.csr", "bob-rsa2048.csr", "carol-ed25519.csr", "dave-ec384.csr"];

function derOf(pem: string): Uint8Array {
  const body = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
}

/** Mutations of `seeds`: bytes flipped, set, inserted or cut, and truncations. */
function mutated(seeds: Uint8Array[]): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({
    at: fc.nat(),
    kind: fc.constantFrom("flip", "set", "insert", "delete", "truncate"),
    byte: fc.integer({ min: 0, max: 255 }),
    bit: fc.integer({ min: 0, max: 7 }),
  });
  return fc.tuple(fc.constantFrom(...seeds), fc.array(edit, { minLength: 1, maxLength: 4 })).map(
    ([seed, edits]) => {
      let bytes = Uint8Array.from(seed);
      for (const e of edits) {
        const i = e.at % Math.max(1, bytes.length);
        if (e.kind === "flip" && bytes.length) bytes[i] ^= 1 << e.bit;
        else if (e.kind === "set" && bytes.length) bytes[i] = e.byte;
        else if (e.kind === "insert") {
          bytes = Uint8Array.from([...bytes.slice(0, i), e.byte, ...bytes.slice(i)]);
        } else if (e.kind === "delete") {
          bytes = Uint8Array.from([...bytes.slice(0, i), ...bytes.slice(i + 1)]);
        } else bytes = bytes.slice(0, i);
      }
      return bytes;
    },
  );
}

/** A CA key and self-signed certificate made here (ECDSA P-256), and a CRL it signed revoking `serials`. */
function crlFixture(serials: number[]): { issuer: X509Certificate; crlDer: Uint8Array } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const ascii = (t: string) => new TextEncoder().encode(t);
  // Minimal DER integers: one byte below 0x80, else two (a leading zero keeps them positive).
  const int = (n: number) =>
    tlv(0x02, n < 0x80 ? Uint8Array.of(n) : Uint8Array.of(n >> 8, n & 0xff).slice(n >> 8 ? 0 : 1));
  const ecdsaSha256 = tlv(0x30, Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2));
  const name = tlv(
    0x30,
    tlv(0x31, tlv(0x30, Uint8Array.of(0x06, 0x03, 0x55, 0x04, 0x03), tlv(0x0c, ascii("fuzz CA")))),
  );
  const time = (d: Date) =>
    tlv(0x17, ascii(d.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z"));
  const now = Date.now();
  const spki = new Uint8Array(publicKey.export({ type: "spki", format: "der" }));
  const signed = (tbs: Uint8Array) =>
    tlv(0x30, tbs, ecdsaSha256, tlv(0x03, Uint8Array.of(0), sign("sha256", tbs, privateKey)));
  const certTbs = tlv(
    0x30,
    tlv(0xa0, int(2)),
    int(1),
    ecdsaSha256,
    name,
    tlv(0x30, time(new Date(now - 86_400_000)), time(new Date(now + 86_400_000))),
    name,
    spki,
  );
  const issuer = new X509Certificate(pemEncode(signed(certTbs), "CERTIFICATE"));
  const entries = serials.map((s) => tlv(0x30, int(s), time(new Date(now - 3_600_000))));
  const crlTbs = tlv(
    0x30,
    int(1),
    ecdsaSha256,
    name,
    time(new Date(now - 3_600_000)),
    time(new Date(now + 86_400_000)),
    ...(entries.length ? [tlv(0x30, ...entries)] : []),
    // crlExtensions: authorityKeyIdentifier (empty, never read) and cRLNumber 0x1234.
    tlv(
      0xa0,
      tlv(
        0x30,
        tlv(0x30, Uint8Array.of(0x06, 0x03, 0x55, 0x1d, 0x23), tlv(0x04, tlv(0x30))),
        tlv(0x30, Uint8Array.of(0x06, 0x03, 0x55, 0x1d, 0x14), tlv(0x04, int(0x1234))),
      ),
    ),
  );
  return { issuer, crlDer: signed(crlTbs) };
}

/**
 * The tbsCertificate extensions of a member's certificate as the CA writes them (ca/policy.ts),
 * in a certificate whose signature is never checked: certificateUsage() reads only extensions.
 */
function memberCertificateDer(): Uint8Array {
  const oid = (...bytes: number[]) => tlv(0x06, Uint8Array.from(bytes));
  const critical = Uint8Array.of(0x01, 0x01, 0xff);
  const extension = (id: Uint8Array, value: Uint8Array, isCritical = false) =>
    tlv(0x30, id, ...(isCritical ? [critical] : []), tlv(0x04, value));
  const extensions = tlv(
    0x30,
    extension(oid(0x55, 0x1d, 0x13), tlv(0x30), true), // basicConstraints CA:FALSE
    extension(oid(0x55, 0x1d, 0x0f), tlv(0x03, Uint8Array.of(0x03, 0x88)), true), // digitalSignature, keyAgreement
    extension(
      oid(0x55, 0x1d, 0x25),
      tlv(
        0x30,
        oid(0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01),
        oid(0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02),
      ),
    ),
    extension(oid(0x55, 0x1d, 0x11), tlv(0x30, tlv(0x82, new TextEncoder().encode("alice")))),
  );
  const tbs = tlv(
    0x30,
    tlv(0xa0, tlv(0x02, Uint8Array.of(2))),
    tlv(0x02, Uint8Array.of(1)),
    tlv(0xa3, extensions),
  );
  return tlv(0x30, tbs, tlv(0x30), tlv(0x03, Uint8Array.of(0)));
}

async function derProperties(): Promise<FuzzProperty[]> {
  const csrs = await Promise.all(
    CSR_FIXTURES.map(async (f) => derOf(await Deno.readTextFile(join(FIXTURES, f)))),
  );
  const revoked = [1, 2, 0x1234, 0x7f00];
  const { issuer, crlDer } = crlFixture(revoked);
  // The seed itself must read right, or every mutation below tests nothing.
  const seedCrl = parseCrl(pemEncode(crlDer, "X509 CRL"), issuer);
  assert.deepEqual([...seedCrl.revoked].sort(), ["1", "1234", "2", "7F00"]);
  assert.equal(seedCrl.number, 0x1234n);
  const certDer = memberCertificateDer();
  const seedUsage = certificateUsage(certDer);
  assert.deepEqual([...seedUsage.keyUsage!], ["digitalSignature", "keyAgreement"]);
  assert.equal(seedUsage.extendedKeyUsage?.size, 2);
  for (const csr of csrs) assert.ok(parseCsr(csr).commonNames.length === 1);
  return [
    {
      name:
        "der: readDer() of a mutated CSR returns a node whose children stay inside it, or refuses with ERR_DER_INVALID",
      runs: 10_000,
      property: fc.property(fc.oneof(mutated(csrs), fc.uint8Array({ maxLength: 64 })), (bytes) => {
        const node = returnsOrRefuses(() => readDer(bytes), ["ERR_DER_INVALID"]);
        if (!node) return;
        assert.ok(node.raw.length <= bytes.length);
        const kids = returnsOrRefuses(() => children(node), ["ERR_DER_INVALID"]);
        for (const k of kids ?? []) assert.ok(k.raw.length <= node.raw.length);
      }),
    },
    {
      name: "csr: parseCsr() of a mutated real request reads it or refuses with an ERR_CSR_* code",
      runs: 5_000,
      property: fc.property(mutated(csrs), fc.boolean(), (bytes, asPem) => {
        const input = asPem ? pemEncode(bytes, "CERTIFICATE REQUEST") : bytes;
        const request = returnsOrRefuses(() => parseCsr(input), [
          "ERR_CSR_INVALID",
          "ERR_CSR_SIGNATURE",
          "ERR_DER_INVALID",
          "ERR_KEY_REJECTED",
        ]);
        // A request that still parses must still be signed by its own key: a mutation that
        // kept it valid changed nothing the signature covers.
        if (request) assert.ok(request.commonNames.length <= 16);
      }),
    },
    {
      name:
        "crl: parseCrl() reads a real CRL's revoked serials, and a mutated one is read the same or refused with ERR_PEER_REJECTED",
      runs: 5_000,
      property: fc.property(mutated([crlDer]), (bytes) => {
        const crl = returnsOrRefuses(
          () => parseCrl(pemEncode(bytes, "X509 CRL"), issuer),
          ["ERR_PEER_REJECTED"],
        );
        // A mutation that leaves the signature valid cannot have changed what is revoked.
        if (crl) assert.deepEqual([...crl.revoked].sort(), ["1", "1234", "2", "7F00"]);
        // Nor its number (a replay's defence in client/revocation.ts).
        if (crl) assert.equal(crl.number, 0x1234n);
      }),
    },
    {
      name:
        "x509: certificateUsage() of a mutated member certificate reads dotted OIDs or refuses with ERR_FILE",
      runs: 5_000,
      property: fc.property(mutated([certDer]), (bytes) => {
        const usage = returnsOrRefuses(() => certificateUsage(bytes), ["ERR_FILE"]);
        if (!usage) return;
        for (const oid of usage.unknownCritical) assert.match(oid, /^\d+(\.\d+)+$/);
        for (const oid of usage.extendedKeyUsage ?? []) assert.match(oid, /^\d+(\.\d+)+$/);
      }),
    },
  ];
}

// ---------------------------------------------------------------------------
// API bodies, file names, Merkle proofs

// Control characters, and bidi controls that make "exe.txt" show as "txt.exe".
// deno-lint-ignore no-control-regex
const UNSAFE_CHARACTER = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/;

const otherProperties: FuzzProperty[] = [
  {
    name:
      "api: parseJsonBody() of any bytes and content type returns JSON or refuses with 400, 413 or 415, and errorReply() never leaks a non-E2eError",
    runs: 10_000,
    property: fc.property(
      fc.oneof(
        fc.constant("application/json"),
        fc.constant("application/json; charset=utf-8"),
        fc.string({ maxLength: 40 }),
      ),
      fc.oneof(
        fc.uint8Array({ maxLength: 128 }),
        fc.json().map((j) => new TextEncoder().encode(j)),
        fc.nat({ max: 2 * MAX_BODY_BYTES }).map((n) => new Uint8Array(n).fill(0x20)),
      ),
      (type, bytes) => {
        try {
          checkBodyHeaders(type, bytes.length);
          const value = parseJsonBody(type, bytes);
          assert.equal(
            JSON.stringify(value),
            JSON.stringify(JSON.parse(new TextDecoder().decode(bytes))),
          );
        } catch (e) {
          const reply = errorReply(e);
          assert.ok([400, 413, 415].includes(reply.status), `${reply.status} ${reply.body}`);
          assert.equal(JSON.parse(reply.body).error.code, reply.code);
        }
        assert.equal(errorReply(new Error("secret detail")).body.includes("secret"), false);
      },
    ),
  },
  {
    name:
      "files: safeFileName() never leaves the downloads folder, has no control or bidi character, and is idempotent",
    runs: 20_000,
    property: fc.property(
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 300 }),
        fc.array(
          fc.constantFrom(
            "..",
            ".",
            "/",
            "\\",
            "\u0000",
            "\u202e",
            " ",
            "a",
            "é",
            "😀",
            "CON",
            "x".repeat(60), // moves the 200-byte cut
            "\u2800", // blank fillers and invisible characters
            "\u3164",
            "\u200b",
            "\ud800", // a lone surrogate
          ),
          {
            maxLength: 40,
          },
        ).map((parts) => parts.join("")),
      ),
      (name) => {
        const safe = safeFileName(name);
        assert.ok(safe.length > 0);
        assert.ok(!/[/\\]/.test(safe), safe);
        assert.ok(!UNSAFE_CHARACTER.test(safe), safe);
        assert.ok(safe !== "." && safe !== ".." && !safe.startsWith("."), safe);
        assert.ok(new TextEncoder().encode(safe).length <= 200);
        assert.equal(join("/downloads", safe), `/downloads/${safe}`);
        assert.equal(safeFileName(safe), safe, "not idempotent");
      },
    ),
  },
  {
    name:
      "merkle: every inclusion and consistency proof verifies, and fails for another leaf, root or size",
    runs: 1_500,
    property: fc.property(
      fc.array(fc.uint8Array({ maxLength: 8 }), { minLength: 1, maxLength: 40 }),
      fc.nat(),
      fc.nat(),
      (leaves, a, b) => {
        // Distinct leaves (their index first): with two equal leaves one proof rightly serves both.
        const tree = new MerkleTree(leaves.map((l, i) => leafHash(Uint8Array.of(i, ...l))));
        const size = tree.size;
        const index = a % size;
        const root = tree.root();
        const proof = tree.inclusionProof(index);
        assert.ok(verifyInclusion(index, size, tree.leaf(index), proof, root));
        const other = tree.leaf(index).slice();
        other[0] ^= 1;
        assert.equal(verifyInclusion(index, size, other, proof, root), false);
        if (size > 1) {
          assert.equal(
            verifyInclusion((index + 1) % size, size, tree.leaf(index), proof, root),
            false,
          );
        }
        const first = 1 + (b % size);
        const consistency = tree.consistencyProof(first);
        assert.ok(verifyConsistency(first, size, tree.root(first), root, consistency));
        if (first < size) {
          const wrong = root.slice();
          wrong[31] ^= 0x80;
          assert.equal(verifyConsistency(first, size, tree.root(first), wrong, consistency), false);
        }
      },
    ),
  },
];

// ---------------------------------------------------------------------------
// Rooms (lib/room.ts): the canonical encodings and the room frame bodies

const roomKeys = generateKeyPairSync("ed25519");
const roomMessageArb: fc.Arbitrary<RoomMessage> = fc.record({
  roomId: fc.stringMatching(/^[0-9a-f]{32}$/),
  room: nameArb.map((n) => `#${n}`),
  author: nameArb,
  seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  version: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  text: fc.string({ unit: "binary", maxLength: 300 }),
}).map((m) => ({ ...m }));
const memberListArb: fc.Arbitrary<MemberList> = fc.record({
  roomId: fc.stringMatching(/^[0-9a-f]{32}$/),
  room: nameArb.map((n) => `#${n}`),
  creator: nameArb,
  version: fc.integer({ min: 1, max: 1000 }),
  names: fc.uniqueArray(nameArb, { minLength: 1, maxLength: 50 }),
  change: fc.option(fc.record({
    name: nameArb,
    change: fc.constantFrom("joined" as const, "left" as const, "removed" as const),
  })),
}).map(({ names, change, ...l }) => ({
  ...l,
  members: [...names].sort().map((name) => ({
    name,
    key: spkiOf(roomKeys.publicKey),
    since: 1,
  })),
  ...(change ? { change: { ...change } } : {}),
}));

/** Objects that look like room frame bodies: a known op and fields of any JSON kind. */
const roomBodyLikeArb = fc.record({
  op: fc.constantFrom("invite", "join", "leave", "list", "msg", "state", "want", "x"),
  roomId: fc.oneof(fc.stringMatching(/^[0-9a-f]{32}$/), fc.jsonValue()),
  author: fc.oneof(nameArb, fc.jsonValue()),
  seqs: fc.oneof(fc.array(fc.integer({ min: -2, max: 100 }), { maxLength: 70 }), fc.jsonValue()),
  version: fc.oneof(fc.integer(), fc.jsonValue()),
  seen: fc.oneof(fc.dictionary(nameArb, fc.integer()), fc.jsonValue()),
  m: fc.oneof(roomMessageArb.map((m) => ({ ...m, sig: "AAAA" })), fc.jsonValue()),
  to: fc.oneof(fc.array(nameArb, { maxLength: 60 }), fc.jsonValue()),
  fill: fc.jsonValue(),
  list: fc.oneof(memberListArb.map((l) => ({ ...l, sig: "AAAA" })), fc.jsonValue()),
}, { requiredKeys: ["op"] });

const roomProperties: FuzzProperty[] = [
  {
    name:
      "room: decodeFrame() of a room frame with any body gives one that re-encodes to itself, or refuses with ERR_BAD_REQUEST",
    runs: 10_000,
    property: fc.property(fc.oneof(fc.jsonValue(), roomBodyLikeArb), (body) => {
      const line = JSON.stringify({ type: "room", body });
      const frame = returnsOrRefuses(() => decodeFrame(line), ["ERR_BAD_REQUEST"]);
      if (frame) assert.deepEqual(decodeFrame(encodeFrame(frame).slice(0, -1)), frame);
    }),
  },
  {
    name: "room: encodeMessage() then decodeMessage() gives every field back",
    runs: 5_000,
    property: fc.property(roomMessageArb, (m) => {
      assert.deepEqual(decodeMessage(encodeMessage(m)), m);
    }),
  },
  {
    name: "room: encodeList() then decodeList() gives every field back",
    runs: 1_000,
    property: fc.property(memberListArb, (l) => {
      assert.deepEqual(decodeList(encodeList(l)), l);
    }),
  },
  {
    name:
      "room: decodeMessage() and decodeList() of any bytes give what re-encodes to those bytes, or refuse with ERR_BAD_REQUEST",
    runs: 5_000,
    property: fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc.json().map((t) => new TextEncoder().encode(t)),
        roomMessageArb.map((m) => encodeMessage(m).map((b, i) => (i === 30 ? b ^ 1 : b))),
      ),
      (bytes) => {
        const m = returnsOrRefuses(() => decodeMessage(bytes), ["ERR_BAD_REQUEST"]);
        if (m) assert.deepEqual(encodeMessage(m), bytes);
        const l = returnsOrRefuses(() => decodeList(bytes), ["ERR_BAD_REQUEST"]);
        if (l) assert.deepEqual(encodeList(l), bytes);
      },
    ),
  },
  {
    name:
      "room: a message's signature verifies for it, and for no message that differs in one field",
    runs: 500,
    property: fc.property(
      roomMessageArb,
      fc.constantFrom("roomId", "room", "author", "seq", "version", "text"),
      (m, field) => {
        const signed = signMessage(m, roomKeys.privateKey);
        assert.ok(verifyMessage(signed, roomKeys.publicKey));
        const other = { ...signed } as Record<string, unknown>;
        const v = other[field];
        other[field] = typeof v === "number"
          ? (v === 1 ? 2 : v - 1)
          : field === "roomId"
          ? (v === "0".repeat(32) ? "1".repeat(32) : "0".repeat(32))
          : `${v}x`;
        assert.ok(!verifyMessage(other as unknown as typeof signed, roomKeys.publicKey));
      },
    ),
  },
];

/**
 * Every property, in the order `deno task fuzz` runs them.
 *
 * @example
 * ```ts
 * import { allProperties } from "./properties.ts";
 * console.log((await allProperties()).length);
 * ```
 */
export async function allProperties(): Promise<FuzzProperty[]> {
  return [
    ...frameProperties,
    ...inviteProperties,
    ...await derProperties(),
    ...otherProperties,
    ...roomProperties,
  ];
}
