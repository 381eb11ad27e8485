import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { e2eError } from "./_test_util.ts";
import { decodeFrame, encodeFrame } from "./frames.ts";
import {
  checkRoomName,
  decodeList,
  decodeMessage,
  decodeRoomFrame,
  encodeList,
  encodeMessage,
  isRoomIdOf,
  isRoomName,
  keyFingerprintOf,
  listHash,
  MAX_MEMBERS,
  type MemberList,
  publicKeyOf,
  ROOM_ID_PATTERN,
  roomIdFor,
  type RoomMessage,
  signList,
  signMessage,
  spkiOf,
  verifyList,
  verifyMessage,
} from "./room.ts";
import { keyFingerprint } from "./x509.ts";

const ROOM_ID = "0123456789abcdef".repeat(2);
const MESSAGE: RoomMessage = {
  roomId: ROOM_ID,
  room: "#team",
  author: "alice",
  seq: 3,
  version: 2,
  text: "hello \u0000 \u202e team",
};

function keys(): Array<[string, { privateKey: KeyObject; publicKey: KeyObject }]> {
  return [
    ["EC P-256", generateKeyPairSync("ec", { namedCurve: "P-256" })],
    ["RSA 2048", generateKeyPairSync("rsa", { modulusLength: 2048 })],
    ["Ed25519", generateKeyPairSync("ed25519")],
  ];
}

function list(key: KeyObject, names = ["alice", "bob"]): MemberList {
  return {
    roomId: ROOM_ID,
    room: "#team",
    creator: "alice",
    version: 2,
    members: names.map((name) => ({ name, key: spkiOf(key), since: 1 })),
    change: { name: "bob", change: "joined" },
  };
}

function malformed(why: string | RegExp): (e: unknown) => boolean {
  return e2eError(
    "ERR_BAD_REQUEST",
    typeof why === "string" ? `Malformed room frame: ${why}` : why,
  );
}

Deno.test("room names start with # and follow the user-name rule", () => {
  assert.ok(isRoomName("#team"));
  assert.ok(isRoomName("#a-b_c9"));
  for (const bad of ["team", "#", "#Team", "##team", "#a.b", "#" + "a".repeat(64), "# team"]) {
    assert.ok(!isRoomName(bad), bad);
  }
  assert.throws(
    () => checkRoomName("team"),
    e2eError("ERR_NAME_INVALID", 'Invalid room name "team"'),
  );
});

Deno.test("roomIdFor() makes a fresh id bound to its creator, which isRoomIdOf() tells from any other creator's", () => {
  const id = roomIdFor("alice");
  assert.match(id, ROOM_ID_PATTERN);
  assert.notEqual(roomIdFor("alice"), id);
  assert.equal(isRoomIdOf(id, "alice"), true);
  for (const creator of ["mallory", "alic", "alice2"]) assert.equal(isRoomIdOf(id, creator), false);
  // The same random half under another creator is another id.
  assert.equal(isRoomIdOf(id.slice(0, 16) + roomIdFor("mallory").slice(16), "alice"), false);
  // Ids made before (128 random bits) are bound to no one.
  assert.equal(isRoomIdOf(ROOM_ID, "alice"), false);
  assert.equal(isRoomIdOf(id.toUpperCase(), "alice"), false);
});

Deno.test("encodeMessage() is the canonical JSON array after its label, and decodeMessage() reads it back", () => {
  const bytes = encodeMessage(MESSAGE);
  assert.equal(
    new TextDecoder().decode(bytes),
    `["e2e-chat room message v1","${ROOM_ID}","#team","alice",3,2,"hello \\u0000 \u202e team"]`,
  );
  assert.deepEqual(decodeMessage(bytes), MESSAGE);
});

Deno.test("decodeMessage() refuses bytes that are not canonical, or another label", () => {
  const spaced = new TextEncoder().encode(
    `["e2e-chat room message v1", "${ROOM_ID}","#team","alice",3,2,"hi"]`,
  );
  assert.throws(() => decodeMessage(spaced), malformed("not in canonical form"));
  const float = new TextEncoder().encode(
    `["e2e-chat room message v1","${ROOM_ID}","#team","alice",3.0,2,"hi"]`,
  );
  assert.throws(() => decodeMessage(float), malformed("not in canonical form"));
  const list = encodeList({ roomId: ROOM_ID, room: "#t", creator: "a", version: 1, members: [] });
  assert.throws(() => decodeMessage(list), malformed("not a e2e-chat room message v1"));
  assert.throws(() => decodeMessage(new Uint8Array([0xff])), malformed("not canonical JSON"));
});

Deno.test("encodeList() then decodeList() gives the list back; its hash changes with any field", () => {
  const { publicKey } = generateKeyPairSync("ed25519");
  const l = list(publicKey);
  assert.deepEqual(decodeList(encodeList(l)), l);
  const { change: _, ...first } = l;
  assert.deepEqual(decodeList(encodeList(first)), first);
  assert.match(listHash(l), /^[0-9a-f]{64}$/);
  assert.notEqual(listHash(l), listHash(first));
  assert.notEqual(listHash(l), listHash({ ...l, version: 3 }));
  assert.notEqual(listHash(l), listHash({ ...l, members: l.members.slice(0, 1) }));
});

for (const [kind, pair] of keys()) {
  Deno.test(`with a ${kind} key, a signature verifies over the same message and list, and over no other`, () => {
    const signed = signMessage(MESSAGE, pair.privateKey);
    assert.ok(verifyMessage(signed, pair.publicKey));
    for (
      const other of [
        { ...signed, text: "hello team" },
        { ...signed, seq: 4 },
        { ...signed, version: 1 },
        { ...signed, author: "bob" },
        { ...signed, room: "#other" },
        { ...signed, roomId: "f".repeat(32) },
        { ...signed, sig: signed.sig.slice(4) },
        { ...signed, sig: "" },
      ]
    ) {
      assert.ok(!verifyMessage(other, pair.publicKey), JSON.stringify(other).slice(0, 80));
    }
    const l = signList(list(pair.publicKey), pair.privateKey);
    assert.ok(verifyList(l, pair.publicKey));
    assert.ok(!verifyList({ ...l, version: 3 }, pair.publicKey));
    assert.ok(!verifyList({ ...l, members: l.members.slice(0, 1) }, pair.publicKey));
    // A signature over a message is never one over a list, and the reverse.
    assert.ok(!verifyList({ ...l, sig: signed.sig }, pair.publicKey));
    assert.ok(!verifyMessage({ ...signed, sig: l.sig }, pair.publicKey));
    const { publicKey: stranger } = generateKeyPairSync("ed25519");
    assert.ok(!verifyMessage(signed, stranger));
  });
}

Deno.test("a member's key round-trips as SPKI base64, with the fingerprint of lib/x509.ts", () => {
  const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = spkiOf(publicKey);
  assert.equal(keyFingerprintOf(spki), keyFingerprint(publicKey));
  assert.equal(keyFingerprint(publicKeyOf(spki)), keyFingerprint(publicKey));
  assert.throws(() => publicKeyOf("AAAA"), malformed("a member's key is not a public key"));
});

Deno.test("room frames survive encodeFrame() then decodeFrame()", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const bodies = [
    { op: "invite" as const, list: signList(list(publicKey), privateKey) },
    { op: "join" as const, roomId: ROOM_ID },
    { op: "leave" as const, roomId: ROOM_ID },
    { op: "list" as const, list: signList(list(publicKey), privateKey) },
    { op: "msg" as const, m: signMessage(MESSAGE, privateKey), to: ["alice", "bob"], fill: true },
    { op: "state" as const, roomId: ROOM_ID, version: 2, seen: { alice: 0, bob: 7 } },
    { op: "want" as const, roomId: ROOM_ID, author: "bob", seqs: [1, 2] },
  ];
  for (const body of bodies) {
    const line = encodeFrame({ type: "room", body }).slice(0, -1);
    const frame = decodeFrame(line);
    assert.equal(frame.type, "room");
    assert.deepEqual(JSON.parse(JSON.stringify(frame)), { type: "room", body });
  }
});

Deno.test("decodeRoomFrame() refuses malformed bodies with a clear ERR_BAD_REQUEST", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const good = signList(list(publicKey), privateKey);
  const m = signMessage(MESSAGE, privateKey);
  const many = Array.from({ length: MAX_MEMBERS + 1 }, (_, i) => ({
    name: `u${String(i).padStart(3, "0")}`,
    key: good.members[0].key,
    since: 1,
  }));
  const cases: Array<[unknown, string | RegExp]> = [
    ["x", "room frame is not a JSON object"],
    [{ op: "shout" }, 'unknown room op "shout"'],
    [{ op: "join", roomId: "ABC" }, "bad room id"],
    [{ op: "list", list: { ...good, members: many } }, "a room has at most 50 members, not 51"],
    [{ op: "list", list: { ...good, members: [] } }, "a member list needs members"],
    [
      { op: "list", list: { ...good, members: [...good.members].reverse() } },
      "members must be sorted by name, each once",
    ],
    [
      { op: "list", list: { ...good, members: [good.members[0], good.members[0]] } },
      "members must be sorted by name, each once",
    ],
    [{ op: "list", list: { ...good, creator: "carol" } }, "the creator is not a member"],
    [
      { op: "list", list: { ...good, members: [{ ...good.members[0], since: 9 }] } },
      "a member added after the list's version",
    ],
    [{ op: "list", list: { ...good, sig: "" } }, "bad signature"],
    [{ op: "list", list: { ...good, change: { name: "bob", change: "left?" } } }, /a change is/],
    [{ op: "msg", m: { ...m, text: "x".repeat(65_537) } }, /at most 65536 characters/],
    [{ op: "msg", m: { ...m, seq: 0 } }, "bad sequence number"],
    [{ op: "msg", m: { ...m, seq: 1.5 } }, "bad sequence number"],
    [{ op: "msg", m: { ...m, author: "Alice" } }, "bad user name"],
    [{ op: "msg", m: { ...m, room: "team" } }, "bad room name"],
    [{ op: "msg", m, to: Array(51).fill("bob") }, "to lists at most 50 names"],
    [{ op: "msg", m, fill: "yes" }, "fill must be true or false"],
    [{ op: "want", roomId: ROOM_ID, author: "bob", seqs: [] }, /want asks for 1 to 64/],
    [{ op: "want", roomId: ROOM_ID, author: "bob", seqs: Array(65).fill(1) }, /want asks for/],
    [{ op: "state", roomId: ROOM_ID, version: 1, seen: { bob: -1 } }, "bad sequence number"],
    [{ op: "state", roomId: ROOM_ID, version: 0, seen: {} }, "bad list version"],
  ];
  for (const [body, why] of cases) {
    assert.throws(() => decodeRoomFrame(body), malformed(why), JSON.stringify(body).slice(0, 80));
  }
});
